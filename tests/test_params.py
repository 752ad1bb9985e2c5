import re

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


def test_repo_params_and_profiles_are_valid(monkeypatch):
    """params.yaml is valid here, files and models included; a profile is valid in itself (its
    models are checked where its stages run: the reference profile's are on a GPU machine)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # paths in params are relative to the repository root
    assert params.validate(root / "params.yaml")[1] == []
    for path in sorted((root / "profiles").glob("*.yaml")):
        if not path.name.endswith(".executor.yaml"):
            assert params.validate(path, machine=False)[1] == [], path


# ---------------------------------------------------------------------------------------
# The validation rules, as another section would declare them
# ---------------------------------------------------------------------------------------
import dataclasses  # noqa: E402


@dataclasses.dataclass
class ToyParams:
    mode: str = params.param("fast", choices=("fast", "thorough"))
    count: int = params.param(3, min=1)
    share: float = params.param(0.5, min=0, lt=1)
    tags: list[str] = params.param(["a"], choices=lambda: ("a", "b"), min_items=1)
    data: str = params.param("", path="file")
    limit: int = dataclasses.field(default=10, metadata={"max": 100, "check": lambda v, s: (
        f"is {v}, below `toy.count` ({s.count})" if v < s.count else None)})
    model: str = params.param("m", resolves=lambda v, s: None if v == "m" else f"is {v!r}, not on this machine")
    plain: int = 0


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(params.SECTIONS, "toy", ToyParams)
    return lambda tmp_path, text, **kw: params.validate(write(tmp_path, text), ["toy"], **kw)


def test_declared_rules_pass_defaults(toy, tmp_path):
    loaded, errors = toy(tmp_path, "toy: {}\n")
    assert errors == [] and loaded["toy"] == ToyParams()


@pytest.mark.parametrize("text, message", [
    ("mode: fats", r"`toy.mode` is 'fats' \(did you mean 'fast'\?\); choose one of fast, thorough$"),
    ("count: 0", r"`toy.count` is 0; it must be at least 1$"),
    ("share: 1.0", r"`toy.share` is 1.0; it must be less than 1$"),
    ("share: 1e-3", r"`toy.share` must be float, got the text '1e-3' .*; write 0.001$"),
    ("tags: [a, c]", r"`toy.tags` is 'c'; choose one of a, b$"),
    ("tags: []", r"`toy.tags` is \[\]; it needs at least 1 item"),
    ("tags: [a, 3]", r"`toy.tags` item 1: must be str, got 3"),
    ("data: nowhere.txt", r"`toy.data` is 'nowhere.txt', which is not an existing file"),
    ("limit: 2", r"`toy.limit` is 2, below `toy.count` \(3\)$"),
    ("limit: 101", r"`toy.limit` is 101; it must be at most 100$"),
    ("model: elsewhere", r"`toy.model` is 'elsewhere', not on this machine$"),
    ("plain: 1.5", r"`toy.plain` must be int \(a whole number\), got 1.5$"),
    ("plain: true", r"`toy.plain` must be int"),
])
def test_each_rule_gives_one_line_naming_the_key(toy, tmp_path, text, message):
    _, errors = toy(tmp_path, f"toy:\n  {text}\n")
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{tmp_path / 'params.yaml'}: ") and "\n" not in errors[0]
    assert re.search(message, errors[0]), errors[0]


def test_machine_rules_are_skipped_when_asked(toy, tmp_path):
    text = "toy:\n  data: nowhere.txt\n  model: elsewhere\n"
    assert len(toy(tmp_path, text)[1]) == 2
    assert toy(tmp_path, text, machine=False)[1] == []
    assert toy(tmp_path, text, machine=lambda section: section != "toy")[1] == []


def test_every_problem_is_reported_in_one_error(tmp_path):
    (tmp_path / "samples.jsonl").write_text("")
    path = write(tmp_path, f"generate:\n  replay_file: {tmp_path / 'samples.jsonl'}\n  n: 0\n  top_p: 2\n"
                           "train:\n  lr: 1e-3\n  features: [consenus]\n")
    _, errors = params.validate(path)
    assert [e.split("`")[1] for e in errors] == ["generate.n", "generate.top_p", "train.lr", "train.features"]
    with pytest.raises(params.ParamsError) as e:
        params.load("train", path)
    assert e.value.errors == errors[2:] and str(e.value).count("\n") == 1


def test_yaml_error_names_the_line_once(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n  features: [consensus\n  seed: 1\n")
    loaded, errors = params.validate(path)
    assert loaded == {} and len(errors) == 1
    assert re.match(rf"{re.escape(str(path))}:4:\d+: not valid YAML: .*begins at line 3", errors[0]), errors[0]


def test_backbone_resolves_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    params.hub_unreachable.cache_clear()
    path = write(tmp_path, "train:\n  backbone: someone/model\n")
    with pytest.raises(params.ParamsError, match=r"`train.backbone` is 'someone/model': .*HF_HUB_OFFLINE is set"):
        params.load("train", path)
    snapshot = tmp_path / "hub" / "models--someone--model" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert params.load("train", path).backbone == "someone/model"  # in the cache: fine offline
    params.hub_unreachable.cache_clear()
