"""Building the rankers' view of each problem from the pipeline's records.

Reads data/generated_tests.jsonl (one line per problem: the generated inputs and tests)
and data/probe.jsonl (one line per generation: its output signature per input and the
tests it passed), in the formats fixed in issue 19, plus the generations and, where a
ranker needs them, the embeddings. Labels and the problems' real tests are not read here:
nothing a ranker sees can carry them.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fractal.critic.inputs import critic_input
from fractal.ranking.rankers import RUN_FAILED, Candidates, is_stub, normalized_code
from fractal.records import Generation, Problem, read_jsonl


def read_generated_tests(path: str | Path) -> dict[str, dict[str, Any]]:
    """problem_id -> {"inputs": [...], "tests": [{"input", "expected"[, "count"]}], ...}."""
    out: dict[str, dict[str, Any]] = {}
    for rec in read_jsonl(path):
        pid = rec["problem_id"]
        if pid in out:
            raise ValueError(f"{path}: problem {pid} appears twice; rerun `dvc repro gentests`")
        for t in rec["tests"]:
            if not 0 <= t["input"] < len(rec["inputs"]):
                raise ValueError(f"{path}: {pid} has a test on input {t['input']} of {len(rec['inputs'])}; "
                                 "rerun `dvc repro gentests`")
        out[pid] = rec
    return out


def read_probe(path: str | Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(problem_id, sample) -> the probe record of that generation."""
    out: dict[tuple[str, int], dict[str, Any]] = {}
    for rec in read_jsonl(path):
        key = (rec["problem_id"], rec["sample"])
        if key in out:
            raise ValueError(f"{path}: {key[0]} sample {key[1]} is probed twice; rerun `dvc repro probe`")
        out[key] = rec
    return out


def build_candidates(problems: list[Problem], generations: list[Generation],
                     generated_tests: dict[str, dict[str, Any]], probe: dict[tuple[str, int], dict[str, Any]],
                     embeddings: np.ndarray | None = None) -> dict[str, Candidates]:
    """problem_id -> Candidates, samples ascending. `embeddings` has one row per generation,
    in `generations` order. A problem missing from generated_tests has no generated test;
    a generation missing from the probe is an error (the probe ran on other generations)."""
    problem_of = {p.problem_id: p for p in problems}
    rows: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(generations):
        rows[g.problem_id].append(i)
    out = {}
    for pid, idx in rows.items():
        idx = sorted(idx, key=lambda i: generations[i].sample)
        problem = problem_of[pid]
        gt = generated_tests.get(pid, {"inputs": [], "tests": []})
        n_inputs = len(gt["inputs"])
        outputs, passed, run_ok = [], [], []
        for i in idx:
            g = generations[i]
            rec = probe.get((pid, g.sample))
            if rec is None:
                raise ValueError(f"data/probe.jsonl has no record for {pid} sample {g.sample}; rerun `dvc repro probe`")
            sigs = list(rec["outputs"])
            ok = rec["status"] == "ok" and len(sigs) == n_inputs
            if len(sigs) != n_inputs:
                if rec["status"] == "ok":
                    raise ValueError(f"data/probe.jsonl: {pid} sample {g.sample} has {len(sigs)} outputs for "
                                     f"{n_inputs} generated inputs; rerun `dvc repro probe`")
                sigs = (sigs + [RUN_FAILED] * n_inputs)[:n_inputs]
            outputs.append(tuple(sigs))
            passed.append(frozenset(rec["passed"]))
            run_ok.append(ok)
        tests = gt["tests"]
        out[pid] = Candidates(
            problem_id=pid,
            samples=np.array([generations[i].sample for i in idx], dtype=np.int64),
            programs=[normalized_code(critic_input(problem, generations[i]).code) for i in idx],
            stubs=np.array([is_stub(generations[i].program, problem.entry_point) for i in idx], dtype=bool),
            run_ok=np.array(run_ok, dtype=bool),
            outputs=outputs,
            passed=passed,
            test_inputs=np.array([t["input"] for t in tests], dtype=np.int64),
            test_weights=np.array([float(t.get("count", 1)) for t in tests], dtype=np.float64),
            embeddings=None if embeddings is None else embeddings[idx],
        )
    return out
