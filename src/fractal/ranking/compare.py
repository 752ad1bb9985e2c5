"""Every ranker on the same labels, counted by one rule, with paired bootstrap intervals.

Top-1 is counted as CodeT and SRank count it (their get_result_of_sorted_solutions): the
expected pass rate of a uniform pick among the SAMPLES tied at the top score (duplicates
of a program count as often as they were sampled). A problem where a ranker gives every
candidate the same score (e.g. CodeT with no passing test) therefore counts c/n, which is
exactly the random-pick fallback both papers use.

pass@k picks k DISTINCT programs: candidates are merged by normalised program (a
program's score is the highest of its samples', its label the majority of theirs), then
the k highest-scored programs are taken, ties broken uniformly (metrics.top_k_hit). The
random ranker's pass@k is so the chance that k distinct programs drawn at random include
a pass; a ranker whose top k repeats one program gains nothing from the repeats.

Every rate is a mean over problems; one set of bootstrap resamples of the problems serves
every column, so differences (against random, against the best training-free ranker) and
the gap closed towards the oracle are paired.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np

from fractal.ranking.metrics import LEVEL, _estimate, _gap, _none_if_nan, bootstrap_means, top_k_hit


@dataclasses.dataclass
class RankedProblem:
    """One problem's candidates: labels, programs (for distinct picks) and every ranker's scores."""

    problem_id: str
    samples: np.ndarray
    passed: np.ndarray  # bool
    programs: list[str]
    scores: dict[str, np.ndarray]  # ranker name -> one score per candidate

    @property
    def n(self) -> int:
        return len(self.samples)


def distinct_programs(programs: list[str], scores: np.ndarray, passed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(score, passed) per distinct program: its best sample's score, its samples' majority label."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(programs):
        groups[p].append(i)
    s = np.array([scores[idx].max() for idx in groups.values()])
    y = np.array([passed[idx].mean() > 0.5 for idx in groups.values()])
    return s, y


def problem_values(p: RankedProblem, names: list[str], ks: list[int]) -> list[float]:
    """The per-problem row the means are taken of: top-1 per ranker, then pass@k per ranker and k."""
    row = [top_k_hit(p.scores[name], p.passed, 1) for name in names]
    merged = {name: distinct_programs(p.programs, p.scores[name], p.passed) for name in names}
    for name in names:
        s, y = merged[name]
        row += [top_k_hit(s, y, min(k, len(s))) for k in ks]
    return row


def compare(problems: list[RankedProblem], names: list[str], training_free: list[str], ks: list[int],
            resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """metrics/rank.json's "rankers" entry and what goes beside it.

    `training_free` are the rankers that learn nothing from labels; the best of them by
    top-1 (random excluded) is the bar the learned ones are held to. pass@k is reported for
    each k in `ks` up to the smallest N (a problem with fewer distinct programs than k takes
    all of them, which then hits if any passes).
    """
    if not problems:
        raise ValueError("no problems to rank")
    if "random" not in names:
        raise ValueError("the comparison needs the random ranker: every difference is taken against it")
    n_min = min(p.n for p in problems)
    ks = sorted({k for k in ks if 1 <= k <= n_min})
    values = np.array([problem_values(p, names, ks) + [float(p.passed.any())] for p in problems])
    point = values.mean(0)
    draws = bootstrap_means(values, resamples, seed)
    top = {name: i for i, name in enumerate(names)}
    at_k = {(name, k): len(names) + j * len(ks) + m for j, name in enumerate(names) for m, k in enumerate(ks)}
    oracle = values.shape[1] - 1
    candidates = [n for n in training_free if n != "random"]
    best = max(candidates, key=lambda n: point[top[n]]) if candidates else "random"

    def diff(a: int, b: int) -> dict[str, Any]:
        d = draws[:, a] - draws[:, b]
        return {**_estimate(float(point[a] - point[b]), d), "share_not_better": float(np.mean(d <= 0))}

    rankers = {}
    for name in names:
        i = top[name]
        gap = _gap(point[[i]], point[[top["random"]]], point[[oracle]])[0]
        rankers[name] = {
            "trained": name not in training_free,
            "top1": _estimate(float(point[i]), draws[:, i]),
            "pass_at_k": {str(k): _estimate(float(point[at_k[name, k]]), draws[:, at_k[name, k]]) for k in ks},
            "vs_random": diff(i, top["random"]),
            "vs_best_untrained": diff(i, top[best]),
            "gap_closed": _estimate(_none_if_nan(gap), _gap(draws[:, i], draws[:, top["random"]], draws[:, oracle])),
        }
    return {
        "rankers": rankers,
        "best_untrained": best,
        "oracle_pass_at_n": _estimate(float(point[oracle]), draws[:, oracle]),
        "n_problems": len(problems),
        "ks": ks,
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL},
    }


def pass_at_k_rows(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """plots/rank/pass_at_k.csv: one row per k, a column per ranker and its interval, and the oracle."""
    rows = []
    for k in comparison["ks"]:
        row: dict[str, Any] = {"k": k}
        for name, r in comparison["rankers"].items():
            est = r["pass_at_k"][str(k)]
            row[name], row[f"{name}_low"], row[f"{name}_high"] = est["value"], est["low"], est["high"]
        row["oracle"] = comparison["oracle_pass_at_n"]["value"]
        rows.append(row)
    return rows


def pick_rows(problems: list[RankedProblem], names: list[str]) -> list[dict[str, Any]]:
    """reports/rank_picks.csv: per problem, each ranker's pick (the lowest sample index of its
    tied top group), how many tie there, and its expected hit (what top-1 averages)."""
    rows = []
    for p in problems:
        row: dict[str, Any] = {"problem_id": p.problem_id, "n": p.n, "c": int(p.passed.sum())}
        for name in names:
            s = p.scores[name]
            tied = s == s.max()
            row[f"{name}_pick"] = int(p.samples[np.flatnonzero(tied)[0]])
            row[f"{name}_ties"] = int(tied.sum())
            row[f"{name}_hit"] = top_k_hit(s, p.passed, 1)
        rows.append(row)
    return rows


def table(comparison: dict[str, Any]) -> str:
    """The comparison as a text table, for the log and the README."""
    def pct(e: dict[str, Any], signed: bool = False) -> str:
        if e["value"] is None:
            return "n/a"
        fmt = "{:+.1f}" if signed else "{:.1f}"
        v = fmt.format(e["value"] * 100)
        return v if e["low"] is None else f"{v} [{e['low'] * 100:.1f}, {e['high'] * 100:.1f}]"

    best = comparison["best_untrained"]
    lines = [f"rank: {comparison['n_problems']} problems; top-1 in % [95 % bootstrap interval]; "
             f"differences paired, best training-free ranker: {best}",
             f"  {'ranker':<16} {'top-1':<20} {'vs random':<22} {'vs ' + best:<22} gap closed"]
    for name, r in comparison["rankers"].items():
        lines.append(f"  {name:<16} {pct(r['top1']):<20} {pct(r['vs_random'], True):<22} "
                     f"{pct(r['vs_best_untrained'], True):<22} {pct(r['gap_closed'])}")
    lines.append(f"  oracle           {pct(comparison['oracle_pass_at_n'])}")
    return "\n".join(lines)
