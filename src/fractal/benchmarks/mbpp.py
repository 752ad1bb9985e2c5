"""MBPP's schema: task_id, the task (`prompt` in the sanitized set, `text` in the full one),
test_list (plain asserts), optional test_imports and code (the reference). MBPP sanitized
(427 problems, data/raw/mbpp), MBPP+ (evalplus's extended tests in an extra `test` field,
which then replaces test_list as the tests) and any benchmark in the same fields load here.
"""
from __future__ import annotations

import builtins
import re

from fractal.params import ParamsError
from fractal.records import Problem


def official_split(task_id: int) -> str:
    """MBPP's own split by task_id."""
    if 1 <= task_id <= 10:
        return "prompt"
    if 11 <= task_id <= 510:
        return "test"
    if 511 <= task_id <= 600:
        return "validation"
    return "train"


def _entry_point(code: str, tests: list[str]) -> str:
    defined = re.findall(r"^def\s+(\w+)\s*\(", code, re.M)
    for name in defined:  # the function the asserts call
        if any(re.search(rf"\b{name}\s*\(", t) for t in tests):
            return name
    if defined:
        return defined[-1]
    # No reference: the first function the asserts call that is not a builtin.
    for t in tests:
        for name in re.findall(r"\b([A-Za-z_]\w*)\s*\(", t):
            if not hasattr(builtins, name) and name not in ("isclose",):
                return name
    return ""


def _problem_id(task_id: object) -> str:
    return f"MBPP/{task_id}" if isinstance(task_id, int) or str(task_id).isdigit() else str(task_id)


def from_mbpp_rows(rows: list[tuple[str, dict]], benchmark: str) -> list[Problem]:
    problems = []
    for where, r in rows:
        task = r.get("prompt") or r.get("text")
        tests = r.get("test_list")
        if r.get("task_id") is None or not isinstance(task, str) or not isinstance(tests, list) or not tests:
            raise ParamsError(f"{where}: an MBPP-schema problem needs task_id, prompt (or text) and a "
                              f"non-empty test_list")
        imports = list(r.get("test_imports") or [])
        code = r.get("code") or ""
        extended = r.get("test") if isinstance(r.get("test"), str) and r.get("test").strip() else ""
        problems.append(
            Problem(
                problem_id=_problem_id(r["task_id"]),
                benchmark=benchmark,
                split="test",
                # The reference experiment's prompt: the task, then the asserts to pass.
                prompt=task + "\nYour code should pass these tests:\n\n" + "\n".join(tests) + "\n",
                entry_point=r.get("entry_point") or _entry_point(code, tests),
                tests="\n".join(imports + ([extended] if extended else list(tests))).rstrip("\n") + "\n",
                reference=code,
                test_style="asserts",
                text=task,
            )
        )
    return problems
