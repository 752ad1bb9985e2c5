"""Rankers: each gives every candidate of one problem a score; the highest-scored is picked.

A ranker reads `Candidates` (features computed without labels: the programs, their
embeddings, and what the probe stage saw them do on the model's own generated tests) and
returns one float per candidate. None of them reads a label or the problem's real tests,
so they can be compared on the labels without leaking them (tests/test_rankers.py blanks
the real tests and checks every score is unchanged).

Training-free rankers, and what each does on a problem with no usable generated test
(all its candidates then tie, so the pick is uniform: the expected pass rate is c/n):
- random: every candidate scores 0, so the pick is uniform (its top-1 is exactly c/n).
- majority: how many candidates have the same normalised program. `majority_nostub`
  gives stubs (a body of only `pass`, `...`, `return`, a docstring) 0: otherwise the
  recorded CodeGen samples' most common program is the stub in most problems. Neither
  reads execution, so both rank with or without generated tests.
- embedding_mean: cosine between the candidate's embedding and its problem's mean
  embedding (the "typical" candidate); also independent of generated tests.
- mbr_exec: the number of candidates whose outputs on every generated input equal this
  one's (MBR-exec's output-equivalence vote); a candidate whose probe run failed scores 0.
  No generated input: all tie.
- codet: CodeT's dual agreement (microsoft/CodeT src/agreement.py): candidates are grouped
  by the set of generated tests they pass; a group scores (tests passed, each counted as
  often as the model wrote it) x sqrt(group size); a candidate passing no test scores 0
  (CodeT leaves it unranked). No passing pair in a problem: all 0, a uniform pick, which is
  CodeT's own fallback (the random pass@k of that problem).
- srank: SRank (FSoft-AI4Code/SRank-CodeRanker reranking/functionality_processing.py):
  valid candidates (the run finished and the outputs are not all equal) are clustered by
  their outputs; cluster i's value is (its distinct programs / all valid distinct
  programs) x (the share of generated expected outputs it matches, counted with
  multiplicity); its score is sum_j overlap(i, j) x value_j, where overlap is the share of
  inputs on which both clusters return the same value without raising (1 on the
  diagonal). Invalid candidates score 0; if none is valid all tie.
Learned rankers (critic, hybrid) come as scores from the train stage.
"""
from __future__ import annotations

import ast
import dataclasses
import math
from collections import Counter, defaultdict
from typing import Callable

import numpy as np

RUN_FAILED = "!run_failed"  # the output signature of an input a failed probe run never reached


def normalized_code(code: str) -> str:
    """The program up to layout: trailing spaces and blank lines do not make it different."""
    return "\n".join(line.rstrip() for line in code.strip().splitlines() if line.strip())


def is_stub(program: str, entry_point: str) -> bool:
    """True when the entry point's body does nothing: only `pass`, `...`, a docstring, a bare
    `return` / `return None` or `raise NotImplementedError`. A program that does not parse
    is no stub (it simply fails)."""
    try:
        tree = ast.parse(program)
    except (SyntaxError, ValueError):
        return False
    defs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point]
    if not defs:
        return False

    def idle(stmt: ast.stmt) -> bool:
        if isinstance(stmt, ast.Pass):
            return True
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            return True  # a docstring or `...`
        if isinstance(stmt, ast.Return):
            return stmt.value is None or (isinstance(stmt.value, ast.Constant) and stmt.value.value is None)
        if isinstance(stmt, ast.Raise) and stmt.exc is not None:
            exc = stmt.exc.func if isinstance(stmt.exc, ast.Call) else stmt.exc
            return isinstance(exc, ast.Name) and exc.id == "NotImplementedError"
        return False

    return all(idle(s) for s in defs[-1].body)


@dataclasses.dataclass
class Candidates:
    """One problem's N candidates, as the rankers see them (no labels, no real tests).

    `outputs[i][j]` is candidate i's output signature on generated input j (data/probe.jsonl);
    `passed[i]` the indices of the generated tests it passes; `test_inputs[t]` which input
    test t calls and `test_weights[t]` how often the model wrote that test.
    """

    problem_id: str
    samples: np.ndarray  # int, ascending
    programs: list[str]  # normalised program text: identical programs are one vote
    stubs: np.ndarray  # bool
    run_ok: np.ndarray  # bool: the probe run reached every generated input
    outputs: list[tuple[str, ...]]
    passed: list[frozenset[int]]
    test_inputs: np.ndarray  # int, per generated test
    test_weights: np.ndarray  # float, per generated test
    embeddings: np.ndarray | None = None  # (N, d), L2-normalised

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def n_inputs(self) -> int:
        return len(self.outputs[0]) if self.outputs else 0

    @property
    def has_tests(self) -> bool:
        return len(self.test_weights) > 0


def random(c: Candidates) -> np.ndarray:
    return np.zeros(c.n)


def majority(c: Candidates) -> np.ndarray:
    votes = Counter(c.programs)
    return np.array([float(votes[p]) for p in c.programs])


def majority_nostub(c: Candidates) -> np.ndarray:
    votes = Counter(p for p, stub in zip(c.programs, c.stubs) if not stub)
    return np.array([0.0 if stub else float(votes[p]) for p, stub in zip(c.programs, c.stubs)])


def embedding_mean(c: Candidates) -> np.ndarray:
    if c.embeddings is None:
        raise ValueError(f"{c.problem_id}: embedding_mean needs the candidates' embeddings (data/embeddings)")
    mean = c.embeddings.mean(0)
    return c.embeddings @ mean / (np.linalg.norm(mean) or 1.0)


def mbr_exec(c: Candidates) -> np.ndarray:
    if c.n_inputs == 0:
        return np.zeros(c.n)
    votes = Counter(o for o, ok in zip(c.outputs, c.run_ok) if ok)
    return np.array([float(votes[o]) if ok else 0.0 for o, ok in zip(c.outputs, c.run_ok)])


def codet(c: Candidates) -> np.ndarray:
    # CodeT counts a pass only when the whole run of the candidate on its test cases came back.
    case_sets = [frozenset(p) if ok else frozenset() for p, ok in zip(c.passed, c.run_ok)]
    group_size = Counter(s for s in case_sets if s)
    return np.array([float(c.test_weights[list(s)].sum()) * math.sqrt(group_size[s]) if s else 0.0
                     for s in case_sets])


def _srank_value(sig: str) -> tuple[bool, str]:
    # SRank records [False, None] for any exception and [True, value] otherwise; its constant-output
    # check compares the value alone, so raising counts as returning None ("null").
    return (False, "null") if sig.startswith("!") else (True, sig)


def srank(c: Candidates) -> np.ndarray:
    if c.n_inputs == 0:
        return np.zeros(c.n)
    values = [tuple(_srank_value(s) for s in o) for o in c.outputs]
    # Invalid: the run failed, or every output has the same value (SRank's check_validity
    # compares the value alone, so raising everywhere is constant too).
    valid = [ok and not (len(v) > 1 and len({x[1] for x in v}) == 1) for v, ok in zip(values, c.run_ok)]
    clusters: dict[tuple, list[int]] = defaultdict(list)
    for i, (v, ok) in enumerate(zip(values, valid)):
        if ok:
            clusters[v].append(i)
    if not clusters:
        return np.zeros(c.n)
    keys = list(clusters)
    distinct = np.array([len({c.programs[i] for i in clusters[k]}) for k in keys], dtype=np.float64)
    size = distinct / distinct.sum()
    total = c.test_weights.sum()
    # Every candidate of a cluster has the same outputs, hence passes the same tests.
    rate = np.array([c.test_weights[list(c.passed[clusters[k][0]])].sum() / total if total else 0.0 for k in keys])
    ok = np.array([[x[0] for x in k] for k in keys], dtype=bool)  # clusters x inputs
    val = [[x[1] for x in k] for k in keys]
    m = len(keys)
    overlap = np.eye(m)
    for a in range(m):
        for b in range(a + 1, m):
            same = sum(ok[a, j] and ok[b, j] and val[a][j] == val[b][j] for j in range(c.n_inputs))
            overlap[a, b] = overlap[b, a] = same / c.n_inputs
    cluster_score = overlap @ (size * rate)
    out = np.zeros(c.n)
    for k, s in zip(keys, cluster_score):
        out[clusters[k]] = s
    return out


# name -> ranker; the learned ones (critic, hybrid) are scores from the train stage.
TRAINING_FREE: dict[str, Callable[[Candidates], np.ndarray]] = {
    "random": random,
    "majority": majority,
    "majority_nostub": majority_nostub,
    "embedding_mean": embedding_mean,
    "mbr_exec": mbr_exec,
    "codet": codet,
    "srank": srank,
}
LEARNED = ("critic", "hybrid")

EXECUTION_FEATURES = ("codet", "srank", "mbr_exec", "tests_passed", "raised", "run_failed", "constant", "has_tests")


def execution_features(c: Candidates) -> np.ndarray:
    """The hybrid critic's execution features, (N, len(EXECUTION_FEATURES)), comparable across
    problems: the agreement scores divided by their problem's maximum (so the problem's
    best candidate has 1 whatever the number of tests), MBR-exec's cluster as a share of
    N, the share of the (frequency-weighted) generated tests passed, the share of inputs
    that raised, whole-run failure, constant output and whether the problem has tests."""
    def rel(x: np.ndarray) -> np.ndarray:
        top = x.max() if x.size else 0.0
        return x / top if top > 0 else np.zeros_like(x)

    total = c.test_weights.sum()
    passed_share = np.array([c.test_weights[list(p)].sum() / total if total else 0.0 for p in c.passed])
    raised = np.array([sum(s.startswith("!") for s in o) / len(o) if o else 0.0 for o in c.outputs])
    constant = np.array([float(len(o) > 1 and len(set(o)) == 1) for o in c.outputs])
    return np.stack([
        rel(codet(c)), rel(srank(c)), mbr_exec(c) / c.n, passed_share, raised,
        (~c.run_ok).astype(np.float64), constant, np.full(c.n, float(c.has_tests)),
    ], axis=1).astype(np.float32)
