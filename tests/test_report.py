"""The report: read both rank.json layouts, the pictures and the offline page, the headline
metrics; checked on small files written here (the pipeline test runs the real stage)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fractal.labels import status_counts
from fractal.records import Label, Score, write_json, write_jsonl
from fractal.report import headline, load_results, write_figures, write_page
from fractal.report.figures import colours, expected_calibration_error
from fractal.report.results import curve_series, rankers_of
from fractal.ranking import evaluate, join, write_csv
from fractal.records import Problem

ROOT = Path(__file__).resolve().parent.parent


def _workspace(tmp_path: Path) -> Path:
    """The rank stage's real outputs for 6 problems x 8 candidates, plus the train and label
    outputs the report reads."""
    problems, labels, scores = [], [], []
    statuses = ["passed", "failed", "error", "syntax_error", "timeout"]
    for i in range(6):
        pid = f"P/{i}"
        problems.append(Problem(pid, "toy", "test", "def f():", "f", "", ""))
        for s in range(8):
            status = "passed" if (s + i) % 3 == 0 and i != 5 else statuses[1 + (s + i) % 4]
            labels.append(Label(pid, s, status, status == "passed", 0.01 * s, ""))
            scores.append(Score(pid, s, (0.9 if status == "passed" else 0.3) - 0.02 * s, 0))
    ranking = evaluate(join(problems, labels, scores), [1, 2, 4, 8], 200, 0)
    write_json(tmp_path / "metrics/rank.json", ranking.metrics)
    write_csv(tmp_path / "plots/rank/pass_at_k.csv", ranking.pass_at_k)
    write_csv(tmp_path / "plots/rank/calibration.csv", ranking.calibration)
    write_csv(tmp_path / "plots/rank/score_histogram.csv", ranking.score_histogram)
    write_csv(tmp_path / "plots/rank/roc.csv", ranking.roc)
    write_csv(tmp_path / "reports/rank_problems.csv", ranking.problems)
    write_jsonl(tmp_path / "data/labels.jsonl", labels)
    write_jsonl(tmp_path / "data/scores.jsonl", scores)
    write_json(tmp_path / "metrics/label.json", {"all": {"pass_rate": 0.3, "oracle": 5 / 6, "statuses": status_counts(
        lab.status for lab in labels)}})
    write_json(tmp_path / "metrics/train.json", {"val_auroc": 0.7})
    for fold in range(2):
        write_json(tmp_path / f"plots/train/fold-{fold}.json",
                   [{"epoch": e, "fold": fold, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_auroc": 0.5 + e / 20}
                    for e in range(1, 5)])
    return tmp_path


def test_the_first_rank_layout_reads_as_three_rankers(tmp_path):
    results = load_results(_workspace(tmp_path))
    assert list(results.rankers) == ["random", "critic", "oracle"]
    assert results.rankers["critic"].top1.value == results.rank["critic_top1"]["value"]
    assert results.rankers["oracle"].top1.value == pytest.approx(5 / 6)
    assert results.curve_series == ["random", "critic", "oracle"]
    assert results.status_counts["error"] > 0 and "runtime_error" not in results.status_counts
    assert {c.problem_id for c in results.candidates} == {f"P/{i}" for i in range(6)}
    assert all(set(c.picks) == {"critic"} for c in results.candidates)


def test_the_per_ranker_layout_reads_every_ranker():
    rank = {"rankers": {name: {"top1": {"value": v, "low": v - 0.1, "high": v + 0.1},
                               "pass_at_k": {"1": {"value": v}, "5": {"value": v + 0.2}}}
                        for name, v in (("random", 0.2), ("codet", 0.4), ("hybrid", 0.45), ("oracle", 0.7))}}
    rankers = rankers_of(rank)
    assert list(rankers) == ["random", "codet", "hybrid", "oracle"]
    assert rankers["codet"].top1.low == pytest.approx(0.3) and rankers["hybrid"].pass_at_k[5].value == 0.65
    header = ["k", "random", "random_low", "random_high", "codet", "codet_low", "codet_high", "oracle"]
    assert curve_series(header) == ["random", "codet", "oracle"]


def test_each_ranker_keeps_its_colour_and_unknown_ones_get_distinct_colours():
    a = colours(["random", "critic", "oracle"])
    b = colours(["oracle", "newcomer", "critic", "another", "random"])
    assert a["critic"] == b["critic"] and a["random"] == b["random"] and a["oracle"] == b["oracle"]
    assert len(set(b.values())) == 5


def test_ece_from_bins_by_hand():
    rows = [{"predicted": 0.2, "observed": 0.1, "count": 30}, {"predicted": 0.8, "observed": 0.9, "count": 10}]
    ece, gap = expected_calibration_error(rows)
    # (30 * 0.1 + 10 * 0.1) / 40 = 0.1; signed (30 * 0.1 - 10 * 0.1) / 40 = 0.05: over-confident
    assert ece == pytest.approx(0.1) and gap == pytest.approx(0.05)


def test_pictures_and_page_are_offline_deterministic_and_say_the_result(tmp_path):
    results = load_results(_workspace(tmp_path))
    first = write_figures(results, tmp_path / "plots/report")
    again = write_figures(results, tmp_path / "again")
    assert set(first) == {"top1", "pass_at_k", "per_problem", "calibration", "score_histogram", "roc", "training"}
    assert first == again  # the same inputs give the same bytes: DVC sees a change only when results change
    ece, _ = expected_calibration_error(results.calibration)
    assert results.rank["calibration"]["ece"] == pytest.approx(ece)  # the title's ECE is the metric's
    write_page(str(tmp_path / "reports/results.html"), results, first)
    page = (tmp_path / "reports/results.html").read_text()
    # Nothing is fetched: no script, no external src or href, no CSS import.
    assert "<script" not in page and not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page.replace("url(#", "")
    assert page.count("<svg") == len(first)
    critic = results.rankers["critic"].top1.value
    assert f"{100 * critic:.1f}%" in page
    assert results.md5["data/labels.jsonl"] in page


def test_headline_holds_each_rankers_top1_and_the_labels_limits(tmp_path):
    results = load_results(_workspace(tmp_path))
    h = headline(results)
    assert set(h["top1"]) == {"random", "critic", "oracle"}
    assert h["top1"]["critic"] == {"value": results.rank["critic_top1"]["value"],
                                   "low": results.rank["critic_top1"]["low"], "high": results.rank["critic_top1"]["high"]}
    assert h["label"] == {"pass_rate": 0.3, "oracle": pytest.approx(5 / 6)}


def test_no_metrics_file_has_a_key_named_error(tmp_path):
    """DVC reads a key `error` as its own failure marker and warns on every `dvc metrics show`."""
    ws = _workspace(tmp_path)

    def keys(obj):
        return [k for key, v in obj.items() for k in [key, *keys(v)]] if isinstance(obj, dict) else []

    for path in ("metrics/rank.json", "metrics/label.json"):
        assert "error" not in keys(json.loads((ws / path).read_text())), path


def test_the_report_stage_runs_in_a_workspace(tmp_path):
    ws = _workspace(tmp_path)
    run = subprocess.run([sys.executable, str(ROOT / "stages/report.py")], cwd=ws, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (ws / "reports/results.html").is_file() and len(list((ws / "plots/report").glob("*.svg"))) == 7
    assert json.loads((ws / "metrics/headline.json").read_text())["label"]["pass_rate"] == 0.3
