"""End to end with the default (replay) profile, shrunk: a real `dvc repro` in a copy of the
repository (the session's `tiny_repro`, tests/conftest.py), then what DVC reruns when a param
changes."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.tiny_repro import copy_reproduced

pytestmark = pytest.mark.slow


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "FRACTAL_EXECUTOR": "local", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"dvc {' '.join(args)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout + run.stderr


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def _stages() -> set[str]:
    import yaml

    return set(yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"])


@pytest.mark.skipif(not {"gentests", "probe"} <= _stages(),
                    reason="train and rank read data/generated_tests.jsonl and data/probe.jsonl: needs the gentests and "
                           "probe stages of issue 19 (items 1-2) in dvc.yaml")
def test_tiny_default_profile_end_to_end(tiny_repro, tmp_path):
    # The first repro is the session's (tests/support/tiny_repro.py: the same shrunk profile,
    # tracked on an MLflow server); what follows changes the repository, so runs on a copy,
    # in which MLflow tracking goes where the environment says (unset: the repository's mlflow.db).
    repo = copy_reproduced(tiny_repro.repo, tmp_path / "repo")
    first = tiny_repro.first_ran
    assert sorted(first) == sorted(["prepare", "generate", "label", "gentests", "probe", "embed", "train", "rank", "report"])
    assert first.index("embed") < first.index("train") < first.index("rank") and first.index("probe") < first.index("train")
    label = json.loads((repo / "metrics/label.json").read_text())
    assert label["all"]["candidates"] == 120 and 0 < label["all"]["pass_rate"] < 1
    rank = json.loads((repo / "metrics/rank.json").read_text())
    assert rank["n_problems"] == 12 and rank["critic"]["n_samples_per_problem"] == 10
    for name in ("random", "codet", "srank", "critic", "hybrid"):
        assert rank["rankers"][name]["top1"]["value"] <= rank["oracle_pass_at_n"]["value"]
    assert (repo / "models/critic/critic.json").exists() and (repo / "models/hybrid/critic.json").exists()
    assert list((repo / "plots/rank").iterdir()) and list((repo / "data/embeddings").iterdir())

    assert ran(dvc(repo, "repro")) == []  # nothing changed: nothing runs
    shown = dvc(repo, "metrics", "show")
    assert "rank.json" in shown and "headline.json" in shown
    assert "failed to load" not in shown  # no metrics key named `error` (DVC's own failure marker)
    assert (repo / "reports/results.html").is_file() and (repo / "timings/label.jsonl").is_file()

    # The embeddings are a stage of their own: another training seed reuses them.
    assert ran(dvc(repo, "exp", "run", "-S", "train.seed=1")) == ["train", "rank", "report"]
    assert ran(dvc(repo, "exp", "run", "-S", "rank.seed=1")) == ["rank", "report"]
    again = ran(dvc(repo, "exp", "run", "-S", "generate.n=8"))
    assert {"generate", "label", "embed", "train", "rank", "report"} <= set(again)
