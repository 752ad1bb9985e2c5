"""MBPP sanitized: 427 problems with official splits by task_id; tests are plain asserts."""
from __future__ import annotations

import json
import re
from pathlib import Path

from fractal.params import ParamsError
from fractal.records import Problem

RAW_FILE = "mbpp/sanitized-mbpp.json"


def official_split(task_id: int) -> str:
    if 1 <= task_id <= 10:
        return "prompt"
    if 11 <= task_id <= 510:
        return "test"
    if 511 <= task_id <= 600:
        return "validation"
    return "train"


def _rows(source: str, raw_dir: str) -> list[dict]:
    if source == "local":
        return json.loads((Path(raw_dir) / RAW_FILE).read_text(encoding="utf-8"))
    if source == "hub":
        import datasets

        ds = datasets.load_dataset("google-research-datasets/mbpp", "sanitized")
        return [dict(r) for split in ds.values() for r in split]
    raise ParamsError(f"params.yaml: `prepare.source` is {source!r}; choose local or hub")


def _entry_point(code: str, tests: list[str]) -> str:
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, re.M)
    for name in defined:  # the function the asserts call
        if any(re.search(rf"\b{name}\s*\(", t) for t in tests):
            return name
    return defined[-1] if defined else ""


def load_mbpp(source: str, raw_dir: str = "data/raw") -> list[Problem]:
    problems = []
    for r in _rows(source, raw_dir):
        tests = list(r["test_list"])
        imports = list(r.get("test_imports") or [])
        problems.append(
            Problem(
                problem_id=f"MBPP/{r['task_id']}",
                benchmark="mbpp",
                split=official_split(int(r["task_id"])),
                # The reference experiment's prompt: the task, then the asserts to pass.
                prompt=r["prompt"] + "\nYour code should pass these tests:\n\n" + "\n".join(tests) + "\n",
                entry_point=_entry_point(r["code"], tests),
                tests="\n".join(imports + tests) + "\n",
                reference=r["code"],
                test_style="asserts",
                text=r["prompt"],
            )
        )
    return sorted(problems, key=lambda p: int(p.problem_id.split("/")[1]))
