"""One static HTML page with the results: the headline table, the pictures inlined as SVG,
and the md5 of every file it was made from. It loads nothing (no script, font or image from
anywhere), so it reads the same offline, attached to a paper draft or mailed.

Also the headline metrics: the few numbers a `dvc exp show` table should show.
"""
from __future__ import annotations

import html
from typing import Any

from fractal.records import atomic_path
from fractal.report.figures import colours, expected_calibration_error
from fractal.report.results import Results

CAPTIONS = {
    "top1": "Share of problems whose top-1 pick passes its tests, per ranker. Bars: the point estimate; "
            "whiskers: 95% percentile intervals from resampling problems.",
    "pass_at_k": "pass@k: the chance that k picks include a passing candidate (random: unbiased estimate "
                 "from all n samples; a ranker: its top k). Log k axis, so k = 1 reads as well as k = 100.",
    "per_problem": "Each dot is one candidate at its critic score; green ones pass. A ring marks each ranker's "
                   "pick (a circle when the pick passes, a square when it fails). Only problems with both a "
                   "passing and a failing candidate are shown: elsewhere every pick is equally good.",
    "calibration": "Reliability diagram: candidates binned by critic score; the red strokes are each bin's "
                   "gap to the diagonal. ECE is the count-weighted mean gap.",
    "score_histogram": "Where each label status's candidates fall on the critic's score, as shares of that "
                       "status (so rare statuses compare by shape).",
    "roc": "ROC of the critic's scores over all candidates pooled (thinned to about 200 points).",
    "training": "The critic's training curves: every cross-fitting fold, per metric.",
}
TITLES = {"top1": "Top-1 per ranker", "pass_at_k": "pass@k", "per_problem": "Picks, problem by problem",
          "calibration": "Calibration", "score_histogram": "Scores by label status", "roc": "ROC",
          "training": "Training"}


def headline(results: Results) -> dict[str, Any]:
    """The numbers a reader wants first: each ranker's top-1 with its interval, and what the
    labels allow over every labelled problem (metrics/label.json `all`): the mean pass rate of
    a candidate and the oracle (share of problems with a passing candidate)."""
    label_all = results.label.get("all", {})
    return {
        "top1": {name: {"value": r.top1.value, "low": r.top1.low, "high": r.top1.high}
                 for name, r in results.rankers.items()},
        "label": {"pass_rate": label_all.get("pass_rate"), "oracle": label_all.get("oracle")},
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _svg_body(svg: str) -> str:
    """The <svg> element alone (no XML prolog or DOCTYPE), to inline in HTML."""
    return svg[svg.index("<svg"):]


def page(results: Results, figures: dict[str, str], title: str = "fractal: best-of-N selection results") -> str:
    e = html.escape
    r = results.rank
    rows = "".join(
        f"<tr><td><span class=sw style='background:{_colour(name, results)}'></span>{e(name)}</td>"
        f"<td class=num>{_pct(k.top1.value)}</td><td class=num>{_pct(k.top1.low)} – {_pct(k.top1.high)}</td></tr>"
        for name, k in results.rankers.items())
    ece, gap = expected_calibration_error(results.calibration) if results.calibration else (None, None)
    facts = [
        ("problems ranked", r.get("n_problems")),
        ("candidates per problem", r.get("n_samples_per_problem")),
        ("problems with a pass and a fail", r.get("problems_with_a_pass_and_a_fail")),
        ("AUROC of critic scores (pooled)", _fmt((r.get("auroc") or {}).get("pooled"))),
        ("expected calibration error", _fmt(ece)),
        ("critic validation AUROC (train)", _fmt(results.train.get("val_auroc"))),
        ("bootstrap", ", ".join(f"{k} {v}" for k, v in sorted((r.get("bootstrap") or {}).items()))),
        ("label statuses", ", ".join(f"{k} {v}" for k, v in sorted(results.status_counts.items()))),
    ]
    fact_rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in facts if v not in (None, ""))
    sections = "".join(
        f"<section id='{name}'><h2>{e(TITLES[name])}</h2><figure>{_svg_body(svg)}"
        f"<figcaption>{e(CAPTIONS[name])}</figcaption></figure></section>"
        for name, svg in figures.items())
    md5 = "".join(f"<tr><td><code>{e(p)}</code></td><td><code>{h}</code></td></tr>" for p, h in results.md5.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1120px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
td, th {{ padding: .25em .8em; text-align: left; border-bottom: 1px solid #eee; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.sw {{ display: inline-block; width: .9em; height: .9em; margin-right: .5em; vertical-align: -1px; }}
figure {{ margin: 0; }} figure svg {{ max-width: 100%; height: auto; }}
figcaption {{ color: #555; font-size: .92em; margin: .4em 0 1.5em; }}
.grid {{ display: flex; gap: 3em; flex-wrap: wrap; }}
</style></head>
<body>
<h1>{e(title)}</h1>
<div class=grid>
<div><h2>Top-1 pass rate</h2><table><tr><th>ranker</th><th>top-1</th><th>95% interval</th></tr>{rows}</table></div>
<div><h2>Setting</h2><table>{fact_rows}</table></div>
</div>
{sections}
<section id=inputs><h2>Made from</h2><p>The md5 of each file this page was made from (as <code>md5sum</code> prints it; DVC's
dvc.lock records the same for files):</p><table>{md5}</table></section>
</body></html>
"""


def _fmt(x: float | None) -> str | None:
    return None if x is None else f"{x:.3f}"


def _colour(name: str, results: Results) -> str:
    return colours(list(results.rankers))[name]


def write_page(path: str, results: Results, figures: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(page(results, figures), encoding="utf-8")
