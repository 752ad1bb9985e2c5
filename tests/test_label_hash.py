"""data/labels.jsonl hashes the same for the same inputs and params, whatever the machine or
run: the wall-clock durations go to timings/label.jsonl, which nothing depends on."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from fractal.records import Generation, Label, Problem, read_jsonl, write_jsonl

ROOT = Path(__file__).resolve().parent.parent

CHECK = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
PROGRAMS = [  # passed, failed, error, syntax_error, passed (a duplicate: labelled once, copied)
    "def add(a, b):\n    return a + b\n",
    "def add(a, b):\n    return a - b\n",
    "def add(a, b):\n    return a / 0\n",
    "def add(a, b) return a\n",
    "def add(a, b):\n    return a + b\n",
]


def _label_in(ws: Path) -> subprocess.CompletedProcess:
    problem = Problem("t/add", "toy", "test", "def add(a, b):\n", "add", CHECK, "def add(a, b):\n    return a + b\n")
    write_jsonl(ws / "data/problems.jsonl", [problem])
    write_jsonl(ws / "data/generations.jsonl",
                [Generation("t/add", i, "", p, "replay", "toy") for i, p in enumerate(PROGRAMS)])
    # Each workspace its own label cache: both runs really execute every program.
    (ws / "params.yaml").write_text(yaml.safe_dump({"label": {"workers": 2, "cache_dir": str(ws / "cache")}}))
    return subprocess.run([sys.executable, str(ROOT / "stages/label.py")], cwd=ws, capture_output=True, text=True,
                          timeout=600)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_labelling_twice_gives_the_same_md5_and_the_timings_apart(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for ws in (first, second):
        run = _label_in(ws)
        assert run.returncode == 0, run.stderr[-3000:]
    labels = read_jsonl(first / "data/labels.jsonl", Label)
    assert [lab.status for lab in labels] == ["passed", "failed", "error", "syntax_error", "passed"]
    assert _md5(first / "data/labels.jsonl") == _md5(second / "data/labels.jsonl")
    assert all("duration" not in json.loads(line) for line in (first / "data/labels.jsonl").read_text().splitlines())

    timings = read_jsonl(first / "timings/label.jsonl")
    assert [(t["problem_id"], t["sample"]) for t in timings] == [("t/add", i) for i in range(len(PROGRAMS))]
    assert all(t["duration"] > 0 for t in timings if t["sample"] != 3)  # a syntax error never runs
    metrics = json.loads((first / "metrics/label.json").read_text())
    assert metrics["all"]["statuses"] == {"failed": 1, "passed": 2, "runtime_error": 1, "syntax_error": 1}


def test_a_timeout_detail_names_a_derived_limit_by_its_rule_not_its_measured_seconds():
    # A limit from the reference's runtime (factor x measured seconds) differs between machines and
    # loads; params' own limits are the same everywhere, so they keep their seconds.
    from fractal.execution.labeler import stable_detail
    from fractal.params import LabelParams

    p = LabelParams(timeout_factor=10.0, timeout_cpu_floor=0.5, timeout_calls_cpu_floor=0.2, timeout_floor=5.0,
                    timeout_cap=10.0)
    assert stable_detail(("timeout", "CPU limit 0.229s in the test calls"), p) == \
        stable_detail(("timeout", "CPU limit 0.386s in the test calls"), p) == \
        ("timeout", "CPU limit 10x the reference's runtime in the test calls")
    assert stable_detail(("timeout", "limit 7.3s"), p) == ("timeout", "limit 10x the reference's runtime")
    for fixed in ("CPU limit 0.2s in the test calls", "CPU limit 0.5s", "limit 5s", "limit 10s"):
        assert stable_detail(("timeout", fixed), p) == ("timeout", fixed)
    assert stable_detail(("failed", "assertion"), p) == ("failed", "assertion")
