"""Summaries of labelled candidates: pass rates and status counts per split."""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

from fractal.records import Label, Problem

# DVC reads a metrics key named `error` as its own marker of a file it failed to load
# ("failed to load some metrics"), so the status `error` (the program raised) is counted
# under another name in every metrics file. The labels themselves keep the status.
METRIC_KEY_OF_STATUS = {"error": "runtime_error"}


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """How many candidates have each status, keyed for a metrics file (METRIC_KEY_OF_STATUS)."""
    counts = Counter(METRIC_KEY_OF_STATUS.get(s, s) for s in statuses)
    return dict(sorted(counts.items()))


def pass_rates(problems: list[Problem], labels: list[Label],
               excluded: set[str] | frozenset[str] = frozenset()) -> dict[str, dict]:
    """Per split and over all candidates ("all"): the mean pass rate, the oracle (share of
    problems with at least one passing candidate) and the count of each status, over the
    problems not in `excluded` (those whose tests cannot judge their candidates: see
    execution.judge); "excluded" counts the problems left out."""
    split_of = {p.problem_id: p.split for p in problems}
    by_problem: dict[str, list[Label]] = defaultdict(list)
    for lab in labels:
        by_problem[lab.problem_id].append(lab)
    groups: dict[str, list[str]] = defaultdict(list)
    left_out: Counter = Counter()
    for pid in by_problem:
        for split in (split_of[pid], "all"):
            if pid in excluded:
                left_out[split] += 1
                groups.setdefault(split, [])
            else:
                groups[split].append(pid)
    out = {}
    for split, pids in sorted(groups.items()):
        labs = [lab for pid in pids for lab in by_problem[pid]]
        out[split] = {
            "problems": len(pids),
            "candidates": len(labs),
            "pass_rate": sum(lab.passed for lab in labs) / len(labs) if labs else 0.0,
            "oracle": sum(any(lab.passed for lab in by_problem[pid]) for pid in pids) / len(pids) if pids else 0.0,
            "statuses": status_counts(lab.status for lab in labs),
            "excluded": left_out[split],
        }
    return out
