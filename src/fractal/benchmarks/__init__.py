"""Problem sources: a benchmark's rows, in HumanEval's or MBPP's schema, from a local file
or the hub, turned into Problem records with their splits.

One path for every benchmark: HumanEval and MBPP are files under data/raw like any user's
own; HumanEval+ and MBPP+ are the same schemas with extended tests. What it does not read:
evalplus's release files with `plus_input` lists (their extended tests are inputs whose
expected outputs evalplus computes at evaluation time); use the hub's evalplus/humanevalplus
and evalplus/mbppplus, which carry those tests as code.
"""
from __future__ import annotations

import re
from pathlib import Path

from fractal.benchmarks.humaneval import codet_prompts, from_humaneval_rows
from fractal.benchmarks.mbpp import from_mbpp_rows
from fractal.benchmarks.sources import HUB_DATASETS, hub_rows, read_rows
from fractal.benchmarks.split import apply_split_rule, assign_splits
from fractal.params import ParamsError, PrepareParams
from fractal.records import Problem


# The files under data/raw of the benchmarks that ship with fractal.
OWN_FILES = {"humaneval": "data/raw/human-eval/HumanEval.jsonl.gz", "mbpp": "data/raw/mbpp/sanitized-mbpp.json"}


def _check_own_file(params: PrepareParams) -> None:
    # `benchmark: mbpp` with HumanEval's file left in problems_file would label HumanEval as MBPP.
    for name, path in OWN_FILES.items():
        if Path(params.problems_file) == Path(path) and params.benchmark != name:
            own = f"; set it to {OWN_FILES[params.benchmark]}" if params.benchmark in OWN_FILES else ""
            raise ParamsError(f"params.yaml: `prepare.benchmark` is {params.benchmark} but `prepare.problems_file` "
                              f"is {name}'s file ({path}){own}")


def _schema(rows: list[tuple[str, dict]], asked: str) -> str:
    if asked in ("humaneval", "mbpp"):
        return asked
    if asked != "auto":
        raise ParamsError(f"params.yaml: `prepare.schema` is {asked!r}; choose auto, humaneval or mbpp")
    if not rows:
        raise ParamsError("prepare: the problems source has no rows")
    where, first = rows[0]
    if "test_list" in first:
        return "mbpp"
    if "entry_point" in first and "test" in first:
        return "humaneval"
    raise ParamsError(f"{where}: neither HumanEval's schema (task_id, prompt, entry_point, test) nor MBPP's "
                      f"(task_id, prompt, test_list); fields are {', '.join(sorted(first))}")


def _natural(problem_id: str) -> list:
    # HumanEval/2 before HumanEval/10.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", problem_id)]


def load_problems(params: PrepareParams, root: str | Path = ".") -> list[Problem]:
    """The problems named in params, each with its split set; paths are relative to `root`."""
    root = Path(root)
    if params.source == "local":
        _check_own_file(params)
        rows = read_rows(root / params.problems_file)
    elif params.source == "hub":
        dataset = params.dataset or HUB_DATASETS.get(params.benchmark)
        if not dataset:
            raise ParamsError(f"params.yaml: `prepare.dataset` is empty and benchmark {params.benchmark!r} has no "
                              f"default hub dataset; set it to owner/name[:config]")
        rows = hub_rows(dataset)
    else:
        raise ParamsError(f"params.yaml: `prepare.source` is {params.source!r}; choose local or hub")
    schema = _schema(rows, params.schema)
    if schema == "humaneval":
        if params.prompt_variant == "codet":
            prompts = codet_prompts(root / params.prompts_file)
        elif params.prompt_variant == "original":
            prompts = {}
        else:
            raise ParamsError(f"params.yaml: `prepare.prompt_variant` is {params.prompt_variant!r}; "
                              f"choose codet or original")
        problems = from_humaneval_rows(rows, params.benchmark, prompts)
    else:
        problems = from_mbpp_rows(rows, params.benchmark)
    seen: set[str] = set()
    for p in problems:
        if p.problem_id in seen:
            raise ParamsError(f"prepare: problem id {p.problem_id!r} appears twice in the problems source")
        seen.add(p.problem_id)
    problems.sort(key=lambda p: _natural(p.problem_id))
    problems = apply_split_rule(problems, params.benchmark, params.split)
    if params.limit:
        problems = problems[: params.limit]
    return problems


def load_humaneval(source: str = "local", prompt_variant: str = "codet", raw_dir: str = "data/raw") -> list[Problem]:
    """HumanEval's 164 problems, seeded split (the default profile's prepare)."""
    return load_problems(PrepareParams(source=source, prompt_variant=prompt_variant), Path(raw_dir).parents[1])


def load_mbpp(source: str = "local", raw_dir: str = "data/raw") -> list[Problem]:
    """MBPP sanitized, its official splits."""
    return load_problems(PrepareParams(benchmark="mbpp", source=source, problems_file=OWN_FILES["mbpp"],
                                       prompt_variant="original"), Path(raw_dir).parents[1])


__all__ = ["load_problems", "load_humaneval", "load_mbpp", "assign_splits", "apply_split_rule"]
