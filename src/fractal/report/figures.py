"""The pictures, as static SVG files written by matplotlib (no browser, no network).

Each ranker keeps one colour in every picture (colours()). The SVGs are byte-identical for
the same inputs: no date in their metadata and a fixed salt for matplotlib's element ids, so
DVC sees them change only when the results do.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from fractal.records import atomic_path  # noqa: E402
from fractal.report.results import Results, histogram_statuses  # noqa: E402

# Rankers the project knows keep their colour whatever else is present; others take the
# remaining colours of the palette in the order they come.
KNOWN_COLOURS = {
    "random": "#7f7f7f", "oracle": "#000000", "critic": "#1f77b4", "hybrid": "#d62728",
    "codet": "#2ca02c", "srank": "#9467bd", "mbr_exec": "#ff7f0e", "majority": "#8c564b",
    "mean_embedding": "#e377c2",
}
SPARE_COLOURS = ["#17becf", "#bcbd22", "#aec7e8", "#98df8a", "#ffbb78", "#c5b0d5", "#c49c94", "#f7b6d2"]
STATUS_COLOURS = {"passed": "#2ca02c", "failed": "#d62728", "error": "#ff7f0e", "syntax_error": "#9467bd",
                  "timeout": "#8c564b", "memory": "#e377c2", "output_limit": "#17becf", "crashed": "#7f7f7f"}
FIGURES = ("top1", "pass_at_k", "per_problem", "calibration", "score_histogram", "roc", "training")


def colours(names: list[str]) -> dict[str, str]:
    spare = iter(SPARE_COLOURS * (1 + len(names) // len(SPARE_COLOURS)))
    return {n: KNOWN_COLOURS.get(n) or next(spare) for n in names}


def _style() -> None:
    plt.rcParams.update({
        "svg.hashsalt": "fractal", "svg.fonttype": "path", "font.size": 10, "axes.titlesize": 11,
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "legend.frameon": False,
    })


def svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": "fractal report"})
    plt.close(fig)
    return buf.getvalue()


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def top1(results: Results) -> Any:
    """Top-1 pass rate per ranker with its 95 % bootstrap interval, best at the top."""
    rankers = list(results.rankers.values())
    col = colours(list(results.rankers))
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rankers) + 1.4))
    y = np.arange(len(rankers))[::-1]
    for yi, r in zip(y, rankers):
        v = r.top1.value or 0.0
        ax.barh(yi, v, color=col[r.name], alpha=0.85, height=0.6)
        if r.top1.low is not None and r.top1.high is not None:
            ax.errorbar(v, yi, xerr=[[v - r.top1.low], [r.top1.high - v]], color="black", capsize=4, lw=1.2)
        ax.text((r.top1.high if r.top1.high is not None else v) + 0.01, yi, _pct(r.top1.value), va="center")
    ax.set_yticks(y, [r.name for r in rankers])
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("share of problems whose picked candidate passes (top-1)")
    ax.set_title(f"Top-1 pass rate per ranker, 95% bootstrap interval ({results.rank.get('n_problems', '?')} problems)")
    ax.grid(axis="y", visible=False)
    return fig


def pass_at_k(results: Results) -> Any:
    """pass@k per ranker on a log k axis, bootstrap intervals as bands."""
    rows = results.curve
    ks = np.array([r["k"] for r in rows], dtype=float)
    col = colours(results.curve_series)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name in results.curve_series:
        vals = np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=float)
        ax.plot(ks, vals, marker="o", ms=4, color=col[name], label=name, lw=1.8,
                ls="--" if name == "oracle" else "-")
        if f"{name}_low" in rows[0]:
            low = np.array([np.nan if r[f"{name}_low"] is None else r[f"{name}_low"] for r in rows], dtype=float)
            high = np.array([np.nan if r[f"{name}_high"] is None else r[f"{name}_high"] for r in rows], dtype=float)
            ax.fill_between(ks, low, high, color=col[name], alpha=0.15, lw=0)
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(int(k)) for k in ks])
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.set_xlabel("k (candidates picked, log scale)")
    ax.set_ylabel("share of problems with a pass among the k")
    ax.set_title("pass@k per ranker (bands: 95% bootstrap intervals)")
    ax.legend(loc="lower right", ncols=2)
    return fig


def per_problem(results: Results, per_row: int = 41) -> Any:
    """Every candidate's critic score, per problem (the ones with both a pass and a fail,
    where a pick can matter), passing ones in green; each ranker's pick ringed in its colour."""
    shown = [c for c in results.candidates if 0 < sum(c.passed) < len(c.passed)]
    shown.sort(key=lambda c: (sum(c.passed) / len(c.passed), c.problem_id))
    rankers = sorted({name for c in shown for name in c.picks})
    col = colours(list(results.rankers) + [r for r in rankers if r not in results.rankers])
    n_rows = max(1, math.ceil(len(shown) / per_row))
    fig, axes = plt.subplots(n_rows, 1, figsize=(14, 2.9 * n_rows + 0.6), squeeze=False)
    for i, ax in enumerate(axes[:, 0]):
        chunk = shown[i * per_row:(i + 1) * per_row]
        for x, c in enumerate(chunk):
            scores, passed = np.array(c.scores), np.array(c.passed)
            jitter = (np.arange(len(scores)) % 7 - 3) * 0.05
            ax.scatter(x + jitter[~passed], scores[~passed], s=6, color="#bbbbbb", lw=0, rasterized=True)
            ax.scatter(x + jitter[passed], scores[passed], s=8, color=STATUS_COLOURS["passed"], lw=0, rasterized=True)
            for name in rankers:
                if name in c.picks and c.picks[name] in c.samples:
                    j = c.samples.index(c.picks[name])
                    ax.scatter(x + jitter[j], scores[j], s=70, facecolors="none", edgecolors=col[name], lw=1.6,
                               marker="o" if passed[j] else "s")
        ax.set_xticks(range(len(chunk)), [c.problem_id.split("/")[-1] for c in chunk], fontsize=7, rotation=90)
        ax.set_xlim(-0.7, min(per_row, len(shown)) - 0.3)
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel("critic score")
        ax.grid(axis="x", visible=False)
    handles = [plt.Line2D([], [], ls="", marker="o", color=STATUS_COLOURS["passed"], label="passing candidate"),
               plt.Line2D([], [], ls="", marker="o", color="#bbbbbb", label="failing candidate")]
    handles += [plt.Line2D([], [], ls="", marker="o", mfc="none", mec=col[n], mew=1.6, ms=9,
                           label=f"{n}'s pick (circle: passes, square: fails)") for n in rankers]
    axes[-1, 0].set_xlabel("problem (those with a pass and a fail, by random pass rate, low to high)")
    axes[0, 0].set_title(f"What was picked against what was passed over: {len(shown)} problems", pad=30)
    axes[0, 0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncols=4)
    return fig


def expected_calibration_error(rows: list[dict[str, Any]]) -> tuple[float, float]:
    """(ECE, signed gap) from reliability bins: the count-weighted mean of |observed - predicted|
    and of (predicted - observed), positive when the scores promise more passes than happen."""
    total = sum(r["count"] for r in rows)
    if not total:
        return math.nan, math.nan
    ece = sum(r["count"] * abs(r["observed"] - r["predicted"]) for r in rows) / total
    gap = sum(r["count"] * (r["predicted"] - r["observed"]) for r in rows) / total
    return ece, gap


def calibration(results: Results) -> Any:
    """Reliability diagram: observed pass rate against the mean score per bin, the diagonal
    as perfect calibration, ECE and its direction in the title, candidates per bin below."""
    rows = results.calibration
    ece, gap = expected_calibration_error(rows)
    verdict = "over-confident: scores promise more passes than happen" if gap > 0.02 else \
        "under-confident: more pass than the scores say" if gap < -0.02 else "close to calibrated"
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(6.5, 6.8), height_ratios=[3, 1], sharex=True)
    pred = [r["predicted"] for r in rows]
    obs = [r["observed"] for r in rows]
    ax.plot([0, 1], [0, 1], ls="--", color="#7f7f7f", label="perfect calibration")
    ax.plot(pred, obs, marker="o", color=KNOWN_COLOURS["critic"], label="critic")
    for r in rows:
        ax.plot([r["predicted"]] * 2, [r["predicted"], r["observed"]], color="#d62728", alpha=0.5, lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed pass rate")
    ax.set_title(f"Reliability of the critic's scores: ECE {ece:.3f}\n({verdict})")
    ax.legend(loc="upper left")
    widths = [r["bin_high"] - r["bin_low"] for r in rows]
    axc.bar([r["bin_low"] for r in rows], [r["count"] for r in rows], width=widths, align="edge",
            color=KNOWN_COLOURS["critic"], alpha=0.5, edgecolor="white")
    axc.set_ylabel("candidates")
    axc.set_xlabel("critic score (bin mean)")
    return fig


def score_histogram(results: Results) -> Any:
    """One panel per label status (all of them, empty ones say so): where its candidates'
    scores fall, as shares of that status's candidates."""
    rows = results.histogram
    statuses = histogram_statuses(rows)
    n_cols = 4
    n_rows = math.ceil(len(statuses) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(13, 2.6 * n_rows + 0.5), sharex=True, squeeze=False)
    for ax, status in zip(axes.ravel(), statuses):
        n = results.status_counts.get(status, 0)
        widths = [r["bin_high"] - r["bin_low"] for r in rows]
        ax.bar([r["bin_low"] for r in rows], [r[status] for r in rows], width=widths, align="edge",
               color=STATUS_COLOURS.get(status, "#7f7f7f"), edgecolor="white", lw=0.5)
        ax.set_title(f"{status} ({n} candidates)" if n else f"{status} (no candidates)")
        ax.set_xlim(0, 1)
        if not n:
            ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center", color="#7f7f7f")
    for ax in axes.ravel()[len(statuses):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("critic score")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of the status")
    fig.suptitle("Critic scores by label status", y=1.0)
    return fig


def roc(results: Results) -> Any:
    rows = results.roc
    auroc = (results.rank.get("auroc") or {}).get("pooled")
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="#7f7f7f", label="chance")
    ax.plot([r["fpr"] for r in rows], [r["tpr"] for r in rows], color=KNOWN_COLOURS["critic"],
            label="critic" + (f" (AUROC {auroc:.3f})" if auroc is not None else ""))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC of the critic's scores (all candidates pooled)")
    ax.legend(loc="lower right")
    return fig


TRAIN_METRIC_LABELS = {"train_loss": "training loss", "val_loss": "validation loss",
                       "val_auroc": "validation AUROC", "val_accuracy": "validation accuracy"}


def training(results: Results) -> Any:
    """One panel per training metric, one line per cross-fitting fold."""
    metrics = [m for m in TRAIN_METRIC_LABELS if any(m in e for h in results.folds.values() for e in h)]
    fig, axes = plt.subplots(1, max(1, len(metrics)), figsize=(3.4 * max(1, len(metrics)), 3.4), squeeze=False)
    spare = plt.get_cmap("viridis")
    for ax, metric in zip(axes[0], metrics):
        for i, (fold, history) in enumerate(sorted(results.folds.items())):
            epochs = [e["epoch"] for e in history if metric in e]
            values = [e[metric] for e in history if metric in e]
            colour = spare(i / max(1, len(results.folds) - 1) * 0.9)
            ax.plot(epochs, values, color=colour, lw=1.4, label=f"fold {fold}")
        ax.set_title(TRAIN_METRIC_LABELS[metric])
        ax.set_xlabel("epoch")
        ax.set_ylabel(TRAIN_METRIC_LABELS[metric])
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Critic training, every cross-fitting fold", y=1.02)
    return fig


def write_figures(results: Results, directory: str | Path) -> dict[str, str]:
    """Writes every figure as DIRECTORY/NAME.svg (atomically); returns name -> SVG text."""
    _style()
    makers = {"top1": top1, "pass_at_k": pass_at_k, "per_problem": per_problem, "calibration": calibration,
              "score_histogram": score_histogram, "roc": roc, "training": training}
    out = {}
    for name in FIGURES:
        if name == "roc" and not results.roc:
            continue
        text = svg(makers[name](results))
        with atomic_path(Path(directory) / f"{name}.svg") as tmp:
            tmp.write_text(text, encoding="utf-8")
        out[name] = text
    return out
