import json

import pytest

from fractal.generation import get_backend
from fractal.generation.postprocess import cut_at_stop, extract_code
from fractal.params import GenerateParams, ParamsError
from fractal.records import Problem

STOPS = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def problem(pid, prompt):
    return Problem(pid, "toy", "test", prompt, "f", "def check(c): assert c() == 1", prompt + "    return 1\n")


def recorded(tmp_path, rows):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cut_at_first_stop_sequence():
    assert cut_at_stop("    return 1\n\ndef g():\n    pass\nif x:", STOPS) == "    return 1\n"
    assert cut_at_stop("    return 1\n", STOPS) == "    return 1\n"


def test_replay_matches_by_prompt_and_builds_programs(tmp_path):
    prompts = ["def f():\n", "def g():\n"]
    path = recorded(tmp_path, [{"prompt": prompts[1] + "  ", "samples": ["    return 2\nprint(g())"] * 3},
                               {"prompt": prompts[0], "samples": ["    return 1\n#x", "    return 0\n", "    1/0\n"]}])
    gens = list(get_backend("replay").generate([problem("a", prompts[0]), problem("b", prompts[1])],
                                               GenerateParams(replay_file=path, n=3)))
    assert [(g.problem_id, g.sample) for g in gens] == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1), ("b", 2)]
    assert gens[0].program == "def f():\n    return 1"
    assert gens[0].completion == "    return 1\n#x"  # the raw text is kept
    assert gens[3].program == "def g():\n    return 2" and gens[3].backend == "replay"


def test_replay_subsample_is_seeded(tmp_path):
    path = recorded(tmp_path, [{"prompt": "def f():\n", "samples": [f"    return {i}\n" for i in range(20)]}])
    p = [problem("a", "def f():\n")]
    a = [g.program for g in get_backend("replay").generate(p, GenerateParams(replay_file=path, n=5, seed=1))]
    b = [g.program for g in get_backend("replay").generate(p, GenerateParams(replay_file=path, n=5, seed=1))]
    c = [g.program for g in get_backend("replay").generate(p, GenerateParams(replay_file=path, n=5, seed=2))]
    assert a == b and a != c and len(set(a)) == 5


def test_replay_errors_name_the_problem_and_param(tmp_path):
    path = recorded(tmp_path, [{"prompt": "def f():\n", "samples": ["    return 1\n"]}])
    with pytest.raises(ValueError, match="no recorded samples for 1 problem.*first: b"):
        list(get_backend("replay").generate([problem("b", "def zz():\n")], GenerateParams(replay_file=path, n=1)))
    with pytest.raises(ParamsError, match="generate.n"):
        list(get_backend("replay").generate([problem("a", "def f():\n")], GenerateParams(replay_file=path, n=2)))
    with pytest.raises(ParamsError, match="generate.replay_file"):
        list(get_backend("replay").generate([], GenerateParams(replay_file=str(tmp_path / "nope.jsonl"))))


def test_unknown_backend_names_the_key():
    with pytest.raises(ParamsError, match="generate.backend"):
        get_backend("nope")


def test_extract_code_prefers_block_with_entry_point():
    answer = "Here:\n```python\nx = 1\n```\nand\n```python\ndef f(a):\n    return a\n```\n"
    assert extract_code(answer, "f") == "def f(a):\n    return a\n"
    assert extract_code("Sure. def is below\ndef f():\n    return 1\n", "f") == "def f():\n    return 1\n"
