"""Selection strategies and their metrics: how much better than a random pick is the critic's
top pick, how far is it from the oracle, and how sure are we.

Every evaluated problem has N labelled candidates, each with a critic score. Per problem:
- random pass@1 is the expected value of a random pick, c/n (c passing of n);
- critic top-1 picks the highest score. Ties are broken by a uniform random choice and we
  report its expected value, the share of passes in the tied top group. Always taking the
  lowest sample index would also be unbiased (samples are i.i.d., so an index carries no
  information), but it adds noise that the expected value averages away for free;
- oracle pass@N is 1 when any candidate passes.
Rates are means over problems; intervals come from resampling problems (the unit that was
sampled from the benchmark), 95 % percentile intervals, one shared set of resamples so the
critic - random difference is a paired bootstrap.

numpy only: the statistics are short enough to read and test by hand.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from fractal.labels import status_counts
from fractal.records import STATUSES, Label, Problem, Score, atomic_path

LEVEL = 0.95  # confidence of every interval


@dataclasses.dataclass
class ScoredProblem:
    """One evaluated problem: its candidates' scores and labels, ordered by sample index."""

    problem_id: str
    split: str
    samples: np.ndarray  # int, sample indices, ascending
    scores: np.ndarray  # float, the critic's score per candidate
    passed: np.ndarray  # bool
    statuses: list[str]
    fold: int = 0

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def c(self) -> int:
        return int(self.passed.sum())


def join(problems: list[Problem], labels: list[Label], scores: list[Score]) -> list[ScoredProblem]:
    """The problems present in `scores`, each with every candidate's label and score.

    Labels of problems without scores (the critic's training problems) are ignored. A scored
    problem must have a label for exactly the samples that were scored: a candidate left out
    of either side would bias the comparison.
    """
    split_of = {p.problem_id: p.split for p in problems}
    label_of: dict[tuple[str, int], Label] = {}
    for lab in labels:
        key = (lab.problem_id, lab.sample)
        if key in label_of:
            raise ValueError(f"labels: {lab.problem_id} sample {lab.sample} is labelled twice; rerun `dvc repro label`")
        label_of[key] = lab
    by_problem: dict[str, list[Score]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for s in scores:
        key = (s.problem_id, s.sample)
        if key in seen:
            raise ValueError(f"scores: {s.problem_id} sample {s.sample} is scored twice; rerun `dvc repro train`")
        seen.add(key)
        if not math.isfinite(s.score):
            raise ValueError(f"scores: {s.problem_id} sample {s.sample} has score {s.score}; the critic must give a finite score")
        by_problem[s.problem_id].append(s)
    labelled_samples: dict[str, set[int]] = defaultdict(set)
    for pid, sample in label_of:
        labelled_samples[pid].add(sample)

    out = []
    for pid in sorted(by_problem):
        if pid not in split_of:
            raise ValueError(f"scores: problem {pid} is not in problems.jsonl; were the scores made from another benchmark? "
                             "rerun `dvc repro train`")
        rows = sorted(by_problem[pid], key=lambda s: s.sample)
        scored = {s.sample for s in rows}
        missing_labels = sorted(scored - labelled_samples[pid])
        missing_scores = sorted(labelled_samples[pid] - scored)
        if missing_labels or missing_scores:
            raise ValueError(f"problem {pid}: samples {missing_labels[:5] or missing_scores[:5]} are "
                             f"{'scored but not labelled' if missing_labels else 'labelled but not scored'}; "
                             "labels and scores come from different runs, rerun `dvc repro rank`")
        labs = [label_of[(pid, s.sample)] for s in rows]
        folds = {s.fold for s in rows}
        if len(folds) > 1:
            raise ValueError(f"scores: problem {pid} is scored by several folds {sorted(folds)}; each problem must be "
                             "scored by the one critic that never saw it")
        out.append(ScoredProblem(
            problem_id=pid,
            split=split_of[pid],
            samples=np.array([s.sample for s in rows], dtype=np.int64),
            scores=np.array([s.score for s in rows], dtype=np.float64),
            passed=np.array([lab.passed for lab in labs], dtype=bool),
            statuses=[lab.status for lab in labs],
            fold=folds.pop(),
        ))
    if not out:
        raise ValueError("scores: no scored problems; check train.eval_splits / train.folds in params.yaml")
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples with c passes (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k picks without replacement include a pass."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    # Python integers are exact and int / int rounds once, so no product trick is needed.
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def top_k_hit(scores: np.ndarray, passed: np.ndarray, k: int) -> float:
    """Chance that the k highest-scored candidates include a pass, ties broken at random.

    Candidates scored above the k-th highest score are all taken; the remaining picks are
    drawn uniformly from the group tied at that score, which is pass@k within the group.
    For k = 1 this is the share of passes among the tied top candidates.
    """
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"top-k needs 1 <= k <= n, got k={k}, n={n}")
    kth = np.sort(scores)[::-1][k - 1]
    above = scores > kth
    if passed[above].any():
        return 1.0
    tied = scores == kth
    return pass_at_k(int(tied.sum()), int(passed[tied].sum()), k - int(above.sum()))


def auroc(scores: np.ndarray, passed: np.ndarray) -> float | None:
    """Area under the ROC curve: the chance that a passing candidate outscores a failing one,
    ties counting one half (Mann-Whitney U from average ranks). None without both classes."""
    scores = np.asarray(scores, dtype=np.float64)
    passed = np.asarray(passed, dtype=bool)
    n_pos = int(passed.sum())
    n_neg = len(passed) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Ranks 1..n; every member of a tie group gets the group's mean rank.
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = mean_rank[inverse]
    u = ranks[passed].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Means of each column of `values` (problems x metrics) over `resamples` resamples of
    the problems with replacement: shape (resamples, metrics). Every column sees the same
    resamples, so differences and ratios of columns are paired."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    # How often each problem is drawn in each resample; a matrix product then gives the means.
    offsets = (np.arange(resamples) * n)[:, None]
    counts = np.bincount((idx + offsets).ravel(), minlength=resamples * n).reshape(resamples, n)
    return counts @ values / n


def interval(draws: np.ndarray) -> tuple[float | None, float | None]:
    """The central 95 % percentile interval of bootstrap draws, ignoring undefined (nan) ones."""
    draws = np.asarray(draws, dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return None, None
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def _estimate(value: float | None, draws: np.ndarray) -> dict[str, float | None]:
    low, high = interval(draws)
    return {"value": value, "low": low, "high": high}


def _gap(critic: np.ndarray, random: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    # Undefined (nan) where the oracle is no better than random: every problem all-pass or all-fail.
    denom = oracle - random
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (critic - random) / np.where(denom > 0, denom, 1.0), np.nan)


def _none_if_nan(x: float) -> float | None:
    return None if not math.isfinite(x) else float(x)


@dataclasses.dataclass
class Ranking:
    """Everything the rank stage writes: the metrics document, the per-problem table and
    the plot tables (each a list of rows, one dict per CSV line)."""

    metrics: dict[str, Any]
    problems: list[dict[str, Any]]
    pass_at_k: list[dict[str, Any]]
    roc: list[dict[str, Any]]
    calibration: list[dict[str, Any]]
    score_histogram: list[dict[str, Any]]


def evaluate(problems: list[ScoredProblem], ks: list[int], resamples: int = 2000, seed: int = 0,
             calibration_bins: int = 10, histogram_bins: int = 20) -> Ranking:
    """Random, critic and oracle selection over `problems`, with bootstrap intervals, pass@k and
    critic@k for each k in `ks` up to the smallest N, AUROC, calibration and plot tables."""
    if not problems:
        raise ValueError("no scored problems to rank")
    if resamples < 1:
        raise ValueError(f"params.yaml: rank.bootstrap must be at least 1, got {resamples}")
    n_min = min(p.n for p in problems)
    n_max = max(p.n for p in problems)
    bad = [k for k in ks if k < 1]
    if bad:
        raise ValueError(f"params.yaml: rank.ks must be positive, got {bad}")
    ks_used = sorted({k for k in ks if k <= n_min})

    # One column per rate, one row per problem; every rate is a mean over problems.
    columns = ["random", "critic", "oracle"] + [f"pass@{k}" for k in ks_used] + [f"critic@{k}" for k in ks_used]
    values = np.array([
        [p.c / p.n, top_k_hit(p.scores, p.passed, 1), float(p.c > 0)]
        + [pass_at_k(p.n, p.c, k) for k in ks_used]
        + [top_k_hit(p.scores, p.passed, k) for k in ks_used]
        for p in problems
    ])
    point = values.mean(axis=0)
    draws = bootstrap_means(values, resamples, seed)
    col = {name: i for i, name in enumerate(columns)}
    rnd, crit, orc = (col["random"], col["critic"], col["oracle"])

    diff_draws = draws[:, crit] - draws[:, rnd]
    gap_point = _gap(point[[crit]], point[[rnd]], point[[orc]])[0]

    all_scores = np.concatenate([p.scores for p in problems])
    all_passed = np.concatenate([p.passed for p in problems])
    per_problem_auroc = [auroc(p.scores, p.passed) for p in problems]
    defined = [a for a in per_problem_auroc if a is not None]
    calibration = reliability(all_scores, all_passed, calibration_bins)
    n_cand = len(all_scores)

    metrics: dict[str, Any] = {
        "n_problems": len(problems),
        "n_samples_per_problem": n_min,
        "n_candidates": n_cand,
        "problems_with_a_pass_and_a_fail": int(sum(0 < p.c < p.n for p in problems)),
        "random_pass_at_1": _estimate(float(point[rnd]), draws[:, rnd]),
        "critic_top1": _estimate(float(point[crit]), draws[:, crit]),
        "oracle_pass_at_n": _estimate(float(point[orc]), draws[:, orc]),
        "critic_minus_random": {
            **_estimate(float(point[crit] - point[rnd]), diff_draws),
            # One-sided bootstrap evidence: the share of resamples where the critic is no better.
            "share_not_better": float(np.mean(diff_draws <= 0)),
        },
        "gap_closed": _estimate(_none_if_nan(gap_point), _gap(draws[:, crit], draws[:, rnd], draws[:, orc])),
        "pass_at_k": {str(k): _estimate(float(point[col[f"pass@{k}"]]), draws[:, col[f"pass@{k}"]]) for k in ks_used},
        "critic_at_k": {str(k): _estimate(float(point[col[f"critic@{k}"]]), draws[:, col[f"critic@{k}"]]) for k in ks_used},
        "auroc": {
            "pooled": auroc(all_scores, all_passed),
            "within_problem_mean": float(np.mean(defined)) if defined else None,
            "within_problem_n": len(defined),
        },
        "calibration": {
            "ece": float(sum(b["count"] * abs(b["observed"] - b["predicted"]) for b in calibration) / n_cand),
            "brier": float(np.mean((all_scores - all_passed) ** 2)),
        },
        "statuses": status_counts(s for p in problems for s in p.statuses),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL},
    }
    if n_max != n_min:
        metrics["n_samples_max"] = n_max

    curve = []
    for k in ks_used:
        row: dict[str, Any] = {"k": k}
        for method, key in (("random", "pass_at_k"), ("critic", "critic_at_k")):
            est = metrics[key][str(k)]
            row[method] = est["value"]
            row[f"{method}_low"], row[f"{method}_high"] = est["low"], est["high"]
        row["oracle"] = metrics["oracle_pass_at_n"]["value"]
        curve.append(row)

    return Ranking(
        metrics=metrics,
        problems=[_problem_row(p, a) for p, a in zip(problems, per_problem_auroc)],
        pass_at_k=curve,
        roc=roc_curve(all_scores, all_passed),
        calibration=calibration,
        score_histogram=score_histogram(all_scores, [s for p in problems for s in p.statuses], histogram_bins),
    )


def _problem_row(p: ScoredProblem, problem_auroc: float | None) -> dict[str, Any]:
    top = p.scores == p.scores.max()
    # The pick shown is the lowest sample index in the tied top group; critic_hit is the
    # expected value over that group, the number the metrics average.
    pick = int(np.flatnonzero(top)[0])
    return {
        "problem_id": p.problem_id,
        "split": p.split,
        "fold": p.fold,
        "n": p.n,
        "c": p.c,
        "random_pass_at_1": p.c / p.n,
        "critic_pick": int(p.samples[pick]),
        "critic_score": float(p.scores[pick]),
        "critic_status": p.statuses[pick],
        "top_ties": int(top.sum()),
        "critic_hit": top_k_hit(p.scores, p.passed, 1),
        "oracle": int(p.c > 0),
        "auroc": problem_auroc,
    }


def roc_curve(scores: np.ndarray, passed: np.ndarray, max_points: int = 200) -> list[dict[str, float]]:
    """ROC points (fpr, tpr) at each distinct score threshold, from (0, 0) to (1, 1).

    Long curves are thinned to about `max_points` points evenly spaced along the thresholds,
    so the plot file stays small; the exact AUROC is in the metrics. `chance` is the diagonal.
    """
    scores = np.asarray(scores, dtype=np.float64)
    passed = np.asarray(passed, dtype=bool)
    n_pos, n_neg = int(passed.sum()), int((~passed).sum())
    if n_pos == 0 or n_neg == 0:
        return []
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], passed[order]
    # The last position of each run of equal scores: a threshold takes a whole tie group.
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    tpr = np.r_[0.0, np.cumsum(y)[ends] / n_pos]
    fpr = np.r_[0.0, np.cumsum(~y)[ends] / n_neg]
    thresholds = np.r_[np.inf, s[ends]]
    keep = np.arange(len(tpr))
    if len(keep) > max_points:
        keep = np.unique(np.linspace(0, len(tpr) - 1, max_points).round().astype(int))
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "chance": float(fpr[i]),
             "threshold": float(thresholds[i]) if math.isfinite(thresholds[i]) else None} for i in keep]


def _check_probabilities(scores: np.ndarray) -> None:
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(f"scores: range [{scores.min():.3g}, {scores.max():.3g}] is not in [0, 1]; scores.jsonl must hold "
                         "the critic's probability of passing (apply a sigmoid to logits in the critic)")


def reliability(scores: np.ndarray, passed: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """A reliability diagram: candidates binned by score into `bins` equal bins on [0, 1];
    per non-empty bin the mean score (predicted), the pass rate (observed) and the count.
    `ideal` repeats the prediction so the perfect-calibration diagonal can be drawn beside it."""
    scores = np.asarray(scores, dtype=np.float64)
    passed = np.asarray(passed, dtype=bool)
    if bins < 1:
        raise ValueError(f"params.yaml: rank.calibration_bins must be at least 1, got {bins}")
    _check_probabilities(scores)
    which = np.minimum((scores * bins).astype(int), bins - 1)  # a score of exactly 1 joins the top bin
    rows = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            predicted = float(scores[mask].mean())
            rows.append({"bin_low": b / bins, "bin_high": (b + 1) / bins, "predicted": predicted,
                         "observed": float(passed[mask].mean()), "ideal": predicted, "count": int(mask.sum())})
    return rows


def score_histogram(scores: np.ndarray, statuses: list[str], bins: int = 20) -> list[dict[str, Any]]:
    """Scores by label status: one row per bin on [0, 1], one column per status in STATUSES
    (and `failing`, every status but passed) holding the share of that status's candidates that
    fall in the bin, so rare and common statuses compare by shape. Zero for absent statuses."""
    scores = np.asarray(scores, dtype=np.float64)
    if bins < 1:
        raise ValueError(f"params.yaml: rank.histogram_bins must be at least 1, got {bins}")
    _check_probabilities(scores)
    unknown = sorted(set(statuses) - set(STATUSES))
    if unknown:
        raise ValueError(f"labels: unknown status {unknown[0]!r}; known: {', '.join(STATUSES)}")
    which = np.minimum((scores * bins).astype(int), bins - 1)
    status_arr = np.array(statuses)
    groups = {s: status_arr == s for s in STATUSES}
    groups["failing"] = status_arr != "passed"
    rows = []
    for b in range(bins):
        row: dict[str, Any] = {"score": (b + 0.5) / bins, "bin_low": b / bins, "bin_high": (b + 1) / bins}
        for name, mask in groups.items():
            total = int(mask.sum())
            row[name] = float(np.sum(mask & (which == b)) / total) if total else 0.0
        rows.append(row)
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Writes rows (dicts with the same keys) as CSV, atomically; None becomes an empty cell."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def summary(metrics: dict[str, Any]) -> str:
    """A small table of the headline numbers, for the log and the README."""
    def pct(e: dict, signed: bool = False) -> str:
        if e["value"] is None:
            return f"{'n/a':>8}"
        v = f"{e['value'] * 100:+7.1f}" if signed else f"{e['value'] * 100:7.1f}"
        if e["low"] is None:
            return v
        return f"{v}  [{e['low'] * 100:5.1f}, {e['high'] * 100:5.1f}]"

    m = metrics
    a = m["auroc"]
    lines = [
        f"rank: {m['n_problems']} problems x {m['n_samples_per_problem']} candidates "
        f"({m['problems_with_a_pass_and_a_fail']} with both a pass and a fail)",
        f"  rates in %, [{m['bootstrap']['level']:.0%} bootstrap interval over problems]",
        f"  random pass@1   {pct(m['random_pass_at_1'])}",
        f"  critic top-1    {pct(m['critic_top1'])}",
        f"  oracle pass@N   {pct(m['oracle_pass_at_n'])}",
        f"  critic - random {pct(m['critic_minus_random'], signed=True)}  (percentage points, paired)",
        f"  gap closed      {pct(m['gap_closed'])}",
    ]
    auc = "n/a" if a["pooled"] is None else f"{a['pooled']:.3f}"
    within = "n/a" if a["within_problem_mean"] is None else f"{a['within_problem_mean']:.3f}"
    lines.append(f"  AUROC {auc} pooled, {within} mean within {a['within_problem_n']} problems; "
                 f"ECE {m['calibration']['ece']:.3f}")
    if m["pass_at_k"]:
        ks = list(m["pass_at_k"])
        lines.append("  k        " + "".join(f"{k:>7}" for k in ks))
        lines.append("  pass@k   " + "".join(f"{m['pass_at_k'][k]['value'] * 100:7.1f}" for k in ks))
        lines.append("  critic@k " + "".join(f"{m['critic_at_k'][k]['value'] * 100:7.1f}" for k in ks))
    return "\n".join(lines)
