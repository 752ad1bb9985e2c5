"""End to end with the transformers backend: `dvc repro` of the whole pipeline (prepare ->
generate -> label -> train -> rank) in a copy of the repository, on a tiny Qwen2 model
built by the test and taught the answers of the problems it is asked, partly, so that its
samples both pass and fail: it is taught each problem's reference answer and the same
answer with a wrong last line, equally often."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fractal.benchmarks import load_mbpp
from fractal.records import Generation, Label, read_jsonl
from repo_copy import copy_repo as _copy_repo
from tiny_model import build_tiny_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
LIMIT = 12  # MBPP's first 12 problems by id: 7 few-shot prompt problems (skipped) and 5 test problems


def _tiny_profile(model_dir: Path) -> dict:
    profile = yaml.safe_load((REPO / "profiles/mbpp-qwen-reference.yaml").read_text())
    profile["prepare"].update(limit=LIMIT)
    profile["generate"].update(backend="transformers", model=str(model_dir), n=8, temperature=1.0, top_p=1.0,
                               max_tokens=200, batch_size=8, dtype="float32", max_model_len=0)
    profile["generate"]["device"] = "cpu"
    profile["label"].update(workers=2)
    profile["train"].update(backbone="minilm", method="head", folds=2, epochs=5, patience=2, batch_size=16, seed=0)
    profile["rank"].update(ks=[1, 2, 4, 8], bootstrap=100)
    return profile


def test_dvc_repro_with_the_transformers_backend(tmp_path):
    problems = [p for p in load_mbpp("local", str(REPO / "data/raw"))[:LIMIT] if p.split != "prompt"]
    teach = [(p.prompt, f"```python\n{p.reference.rstrip()}\n```") for p in problems]
    teach += [(p.prompt, f"```python\n{p.reference.rstrip()} + 1\n```") for p in problems]
    model_dir = build_tiny_model(tmp_path / "tiny-qwen2", teach=teach, steps=100)
    repo = tmp_path / "repo"
    _copy_repo(repo)
    (repo / "params.yaml").write_text(yaml.safe_dump(_tiny_profile(model_dir), sort_keys=False))

    env = {**os.environ, "FRACTAL_EXECUTOR": "local", "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}
    run = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"dvc repro failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"

    generations = read_jsonl(repo / "data/generations.jsonl", Generation)
    assert [(g.problem_id, g.sample) for g in generations] == [(p.problem_id, i) for p in problems for i in range(8)]
    assert all(g.backend == "transformers" and g.logprob is not None and g.n_tokens for g in generations)
    labels = read_jsonl(repo / "data/labels.jsonl", Label)
    passed = [lab.passed for lab in labels]
    assert len(labels) == len(generations) and any(passed) and not all(passed)
    rank = json.loads((repo / "metrics/rank.json").read_text())
    assert rank, "metrics/rank.json is empty"
