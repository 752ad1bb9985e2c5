"""Problem sources: each benchmark turns its raw files into Problem records."""
from __future__ import annotations

from fractal.benchmarks.humaneval import load_humaneval
from fractal.benchmarks.mbpp import load_mbpp
from fractal.benchmarks.split import assign_splits
from fractal.params import ParamsError, PrepareParams
from fractal.records import Problem


def load_problems(params: PrepareParams, raw_dir: str = "data/raw") -> list[Problem]:
    """The benchmark named in params, with every problem's split set."""
    if params.benchmark == "humaneval":
        problems = load_humaneval(params.source, params.prompt_variant, raw_dir)
        problems = assign_splits(problems, params.split.seed, params.split.validation, params.split.test)
    elif params.benchmark == "mbpp":
        problems = load_mbpp(params.source, raw_dir)  # keeps MBPP's official splits
    else:
        raise ParamsError(f"params.yaml: `prepare.benchmark` is {params.benchmark!r}; choose humaneval or mbpp")
    if params.limit:
        problems = problems[: params.limit]
    return problems


__all__ = ["load_problems", "assign_splits", "load_humaneval", "load_mbpp"]
