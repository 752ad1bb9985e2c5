"""A seeded, problem-level split for benchmarks that have no training split."""
from __future__ import annotations

import hashlib

from fractal.benchmarks.mbpp import official_split
from fractal.params import ParamsError, SplitParams
from fractal.records import Problem


def _rank(seed: int, problem_id: str) -> str:
    # A hash per problem: adding or removing a problem does not move any other problem.
    return hashlib.sha256(f"{seed}:{problem_id}".encode()).hexdigest()


def assign_splits(problems: list[Problem], seed: int, validation: float, test: float) -> list[Problem]:
    """Sorts problems by a seeded hash; the first `test` fraction is test, the next
    `validation` fraction is validation, the rest train."""
    if not (0 <= validation and 0 <= test and validation + test < 1):
        raise ValueError(f"prepare.split: validation ({validation}) + test ({test}) must be in [0, 1)")
    order = sorted(problems, key=lambda p: _rank(seed, p.problem_id))
    n_test = round(len(order) * test)
    n_val = round(len(order) * validation)
    split_of = {}
    for i, p in enumerate(order):
        split_of[p.problem_id] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    for p in problems:
        p.split = split_of[p.problem_id]
    return problems


def apply_split_rule(problems: list[Problem], benchmark: str, split: SplitParams) -> list[Problem]:
    """prepare.split.rule: `mbpp` keeps MBPP's official split by task number; `seeded` is the
    hash split above; `auto` is `mbpp` for MBPP itself and `seeded` for everything else
    (MBPP+ keeps only MBPP's test-range problems, so its official split has no training set)."""
    rule = split.rule
    if rule == "auto":
        rule = "mbpp" if benchmark == "mbpp" else "seeded"
    if rule == "seeded":
        return assign_splits(problems, split.seed, split.validation, split.test)
    if rule == "mbpp":
        for p in problems:
            number = p.problem_id.rsplit("/", 1)[-1]
            if not number.isdigit():
                raise ParamsError(f"params.yaml: `prepare.split.rule` is mbpp but problem {p.problem_id!r} has no "
                                  f"task number; use rule: seeded")
            p.split = official_split(int(number))
        return problems
    raise ParamsError(f"params.yaml: `prepare.split.rule` is {split.rule!r}; choose auto, seeded or mbpp")
