"""What the report is made from, read once from the stage outputs.

metrics/rank.json comes in two layouts, and both read into the same Results:
- per ranker: {"rankers": {name: {"top1": {value, low, high}, "pass_at_k": {k: {...}}, ...}}};
- the first one: random_pass_at_1 / critic_top1 / oracle_pass_at_n with pass_at_k and
  critic_at_k beside them, read as the rankers random, critic and oracle.
plots/rank/pass_at_k.csv has a column k, then per ranker NAME and, where it has an interval,
NAME_low and NAME_high. The per-problem table marks each ranker's pick in a NAME_pick column.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from fractal.labels import METRIC_KEY_OF_STATUS
from fractal.records import STATUSES, Label, Score, read_jsonl

# The files a report reads, relative to the repository (dvc.yaml lists them as the deps).
RANK_METRICS = "metrics/rank.json"
LABEL_METRICS = "metrics/label.json"
TRAIN_METRICS = "metrics/train.json"
PASS_AT_K = "plots/rank/pass_at_k.csv"
CALIBRATION = "plots/rank/calibration.csv"
SCORE_HISTOGRAM = "plots/rank/score_histogram.csv"
ROC = "plots/rank/roc.csv"
TRAIN_CURVES = "plots/train"
PROBLEMS = "reports/rank_problems.csv"
LABELS = "data/labels.jsonl"
SCORES = "data/scores.jsonl"


@dataclasses.dataclass
class Estimate:
    value: float | None
    low: float | None = None
    high: float | None = None


@dataclasses.dataclass
class Ranker:
    name: str
    top1: Estimate
    pass_at_k: dict[int, Estimate]


@dataclasses.dataclass
class Candidates:
    """One problem's candidates for the per-problem picture: the critic's scores, which pass,
    and each ranker's pick (sample index)."""

    problem_id: str
    samples: list[int]
    scores: list[float]
    passed: list[bool]
    picks: dict[str, int]


@dataclasses.dataclass
class Results:
    rankers: dict[str, Ranker]  # in the order rank.json lists them
    curve: list[dict[str, float | None]]  # pass_at_k.csv rows
    curve_series: list[str]  # the rankers pass_at_k.csv has a column for
    calibration: list[dict[str, float | None]]
    histogram: list[dict[str, float | None]]
    roc: list[dict[str, float | None]]
    status_counts: dict[str, int]  # per label status (the labels' names, not the metric keys)
    folds: dict[int, list[dict[str, Any]]]  # fold -> its epochs' history
    candidates: list[Candidates]
    label: dict[str, Any]  # metrics/label.json
    train: dict[str, Any]  # metrics/train.json
    rank: dict[str, Any]  # metrics/rank.json
    md5: dict[str, str]  # input file -> md5, so a reader can check what the page shows


def _estimate(obj: Any) -> Estimate:
    if isinstance(obj, dict):
        return Estimate(_number(obj.get("value")), _number(obj.get("low")), _number(obj.get("high")))
    return Estimate(_number(obj))


def _number(x: Any) -> float | None:
    if x is None or x == "":
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def rankers_of(rank: dict[str, Any]) -> dict[str, Ranker]:
    """The rankers in a rank.json document, in either layout (module docstring)."""
    if "rankers" in rank:
        return {name: Ranker(name, _estimate(r.get("top1")),
                             {int(k): _estimate(v) for k, v in (r.get("pass_at_k") or {}).items()})
                for name, r in rank["rankers"].items()}
    missing = [k for k in ("random_pass_at_1", "critic_top1", "oracle_pass_at_n") if k not in rank]
    if missing:
        raise ValueError(f"{RANK_METRICS}: neither a `rankers` section nor {', '.join(missing)}; "
                         "rerun `dvc repro rank`")
    oracle = _estimate(rank["oracle_pass_at_n"])
    return {
        "random": Ranker("random", _estimate(rank["random_pass_at_1"]),
                         {int(k): _estimate(v) for k, v in rank.get("pass_at_k", {}).items()}),
        "critic": Ranker("critic", _estimate(rank["critic_top1"]),
                         {int(k): _estimate(v) for k, v in rank.get("critic_at_k", {}).items()}),
        "oracle": Ranker("oracle", oracle, {}),
    }


def curve_series(header: list[str]) -> list[str]:
    """The rankers a pass_at_k.csv header has columns for: every column but k and the
    _low / _high companions of another column."""
    names = set(header)
    return [c for c in header if c != "k" and not (
        (c.endswith("_low") and c[:-4] in names) or (c.endswith("_high") and c[:-5] in names))]


def read_csv(path: Path) -> list[dict[str, float | None]]:
    """A CSV of numbers (empty cells: None); a text cell stays text."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; rerun `dvc repro rank`")
    with path.open(newline="", encoding="utf-8") as f:
        return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _cell(v: str) -> Any:
    try:
        return _number(v)
    except ValueError:
        return v


def status_counts(rank: dict[str, Any], label: dict[str, Any]) -> dict[str, int]:
    """Candidates per label status over the ranked problems, under the labels' own names."""
    counts = rank.get("statuses") or label.get("all", {}).get("statuses") or {}
    label_name = {v: k for k, v in METRIC_KEY_OF_STATUS.items()}
    return {label_name.get(k, k): int(v) for k, v in counts.items()}


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_results(root: Path = Path(".")) -> Results:
    rank = json.loads((root / RANK_METRICS).read_text())
    label = json.loads((root / LABEL_METRICS).read_text()) if (root / LABEL_METRICS).is_file() else {}
    train = json.loads((root / TRAIN_METRICS).read_text()) if (root / TRAIN_METRICS).is_file() else {}
    curve = read_csv(root / PASS_AT_K)
    with (root / PASS_AT_K).open(encoding="utf-8") as f:
        header = next(csv.reader(f))
    folds = {}
    for path in sorted((root / TRAIN_CURVES).glob("fold-*.json")):
        folds[int(path.stem.split("-")[1])] = json.loads(path.read_text())
    problems = read_csv(root / PROBLEMS)
    inputs = [RANK_METRICS, LABEL_METRICS, TRAIN_METRICS, PASS_AT_K, CALIBRATION, SCORE_HISTOGRAM, PROBLEMS,
              LABELS, SCORES]
    return Results(
        rankers=rankers_of(rank), curve=curve, curve_series=curve_series(header),
        calibration=read_csv(root / CALIBRATION), histogram=read_csv(root / SCORE_HISTOGRAM),
        roc=read_csv(root / ROC) if (root / ROC).is_file() else [],
        status_counts=status_counts(rank, label), folds=folds,
        candidates=candidates(problems, read_jsonl(root / LABELS, Label), read_jsonl(root / SCORES, Score)),
        label=label, train=train, rank=rank,
        md5={p: _md5(root / p) for p in inputs if (root / p).is_file()},
    )


def candidates(problems: list[dict[str, Any]], labels: list[Label], scores: list[Score]) -> list[Candidates]:
    """Per ranked problem (rows of the per-problem table), its scored candidates in sample
    order and each ranker's pick (the table's NAME_pick columns)."""
    passed = {(lab.problem_id, lab.sample): lab.passed for lab in labels}
    by_problem: dict[str, list[Score]] = defaultdict(list)
    for s in scores:
        by_problem[s.problem_id].append(s)
    out = []
    for row in problems:
        pid = str(row["problem_id"])
        rows = sorted(by_problem.get(pid, []), key=lambda s: s.sample)
        if not rows:
            raise ValueError(f"{PROBLEMS}: problem {pid} has no scores in {SCORES}; rerun `dvc repro`")
        picks = {k[:-len("_pick")]: int(v) for k, v in row.items() if k.endswith("_pick") and v is not None}
        out.append(Candidates(pid, [s.sample for s in rows], [s.score for s in rows],
                              [passed[(pid, s.sample)] for s in rows], picks))
    return out


def histogram_statuses(rows: list[dict[str, Any]]) -> list[str]:
    """The label statuses a score_histogram.csv has a column for, in STATUSES order."""
    return [s for s in STATUSES if rows and s in rows[0]]
