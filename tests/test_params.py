import pytest

from fractal import params


def write(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_reads_section_with_nested_and_defaults(tmp_path):
    path = write(tmp_path, "prepare:\n  benchmark: mbpp\n  split:\n    seed: 3\n")
    p = params.load("prepare", path)
    assert p.benchmark == "mbpp" and p.split.seed == 3 and p.split.test == 0.35


def test_unknown_key_is_named_with_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(params.ParamsError, match=r"unknown key `train.lrr`.*did you mean `train.lr`"):
        params.load("train", path)


def test_unknown_nested_key(tmp_path):
    path = write(tmp_path, "prepare:\n  split:\n    sed: 1\n")
    with pytest.raises(params.ParamsError, match=r"`prepare.split.sed`"):
        params.load("prepare", path)


def test_unknown_section(tmp_path):
    path = write(tmp_path, "trian:\n  lr: 0.1\n")
    with pytest.raises(params.ParamsError, match=r"unknown section `trian`.*did you mean `train`"):
        params.load("train", path)


def test_wrong_type(tmp_path):
    path = write(tmp_path, "generate:\n  n: ten\n")
    with pytest.raises(params.ParamsError, match=r"`generate.n` must be int"):
        params.load("generate", path)


def test_int_accepted_for_float(tmp_path):
    assert params.load("train", write(tmp_path, "train:\n  lr: 1\n")).lr == 1.0


def test_repo_params_and_profiles_are_valid():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for path in [root / "params.yaml", *sorted((root / "profiles").glob("*.yaml"))]:
        if path.name.endswith(".executor.yaml"):
            continue
        for section in params.SECTIONS:
            params.load(section, path)
