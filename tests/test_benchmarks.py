from collections import Counter
from pathlib import Path

from fractal.benchmarks import assign_splits, load_problems
from fractal.params import PrepareParams, SplitParams

ROOT = str(Path(__file__).resolve().parents[1])  # params paths are relative to the repository root


def test_humaneval_uses_codet_prompts_and_package_tests():
    problems = load_problems(PrepareParams(), ROOT)
    assert len(problems) == 164
    p0 = problems[0]
    assert p0.problem_id == "HumanEval/0" and p0.entry_point == "has_close_elements"
    assert "def check(candidate)" in p0.tests
    assert ">>>" not in p0.prompt  # CodeT removed the examples from the docstrings
    original = load_problems(PrepareParams(prompt_variant="original"), ROOT)[0]
    assert ">>>" in original.prompt
    assert Counter(p.split for p in problems) == {"train": 82, "test": 57, "validation": 25}


def test_humaneval_split_is_seeded_and_by_problem():
    a = load_problems(PrepareParams(split=SplitParams(seed=1)), ROOT)
    b = load_problems(PrepareParams(split=SplitParams(seed=1)), ROOT)
    c = load_problems(PrepareParams(split=SplitParams(seed=2)), ROOT)
    assert [p.split for p in a] == [p.split for p in b]
    assert [p.split for p in a] != [p.split for p in c]


def test_split_of_a_problem_does_not_depend_on_the_others():
    problems = load_problems(PrepareParams(), ROOT)
    fewer = assign_splits([p for p in problems if p.problem_id != "HumanEval/5"], 0, 0.15, 0.35)
    # Removing one problem moves at most the problems at the split boundaries.
    moved = sum(a.split != b.split for a, b in zip([p for p in problems if p.problem_id != "HumanEval/5"], fewer))
    assert moved <= 2


def test_mbpp_official_splits():
    problems = load_problems(PrepareParams(benchmark="mbpp", problems_file="data/raw/mbpp/sanitized-mbpp.json"), ROOT)
    assert Counter(p.split for p in problems) == {"test": 257, "train": 120, "validation": 43, "prompt": 7}
    p = next(p for p in problems if p.problem_id == "MBPP/11")
    assert p.test_style == "asserts" and p.entry_point in p.tests
    assert "Your code should pass these tests" in p.prompt and p.text


def test_limit():
    assert len(load_problems(PrepareParams(limit=5), ROOT)) == 5
