"""The critic: folds never mix problems, training is repeatable, and a killed train stage
resumes to the same result as an uninterrupted one."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from fractal.critic.crossfit import fit_and_score
from fractal.critic.folds import make_folds
from fractal.params import TrainParams
from fractal.records import Generation, Label, Problem, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def toy_data(n_problems=8, n_samples=8, seed=0):
    """Problems `add k`; a candidate passes when it adds (a clear, learnable signal)."""
    rng = random.Random(seed)
    problems, generations, labels = [], [], []
    for i in range(n_problems):
        pid = f"toy/{i}"
        prompt = f"def add{i}(a, b):\n    \"\"\"Return a plus b plus {i}.\"\"\"\n"
        problems.append(Problem(pid, "toy", "train" if i < n_problems // 2 else "test", prompt, f"add{i}",
                                f"def check(c):\n    assert c(1, 2) == {3 + i}\n", prompt + f"    return a + b + {i}\n"))
        for s in range(n_samples):
            good = rng.random() < 0.5
            body = f"    return a + b + {i}\n" if good else rng.choice(
                [f"    return a - b - {i}\n", "    return None\n", f"    return a * b * {i}\n", "    pass\n"])
            generations.append(Generation(pid, s, body, prompt + body, "replay", "toy"))
            labels.append(Label(pid, s, "passed" if good else "failed", good, 0.01))
    return problems, generations, labels


def test_cross_fitting_folds_are_disjoint_by_problem():
    problems, _, _ = toy_data(10)
    folds = make_folds(problems, 5, [], [], 0.2, seed=0)
    scored = [pid for f in folds for pid in f.scored]
    assert sorted(scored) == sorted(p.problem_id for p in problems)  # every problem scored once
    for f in folds:
        assert not set(f.fit) & set(f.scored) and not set(f.validation) & set(f.scored)
        assert not set(f.fit) & set(f.validation) and f.validation


def test_split_protocol_fits_on_fit_splits_and_scores_eval_splits():
    problems, _, _ = toy_data(8)
    [fold] = make_folds(problems, 0, ["train"], ["test"], 0.25, seed=0)
    assert sorted(fold.fit + fold.validation) == [f"toy/{i}" for i in range(4)]
    assert fold.scored == [f"toy/{i}" for i in range(4, 8)]


def test_head_critic_learns_and_is_repeatable(tmp_path):
    problems, generations, labels = toy_data()
    params = TrainParams(folds=2, epochs=15, patience=15, batch_size=16, lr=3e-3, hidden=32,
                         features=["embedding", "centered", "consensus"])
    a = fit_and_score(problems, generations, labels, params, tmp_path / "a")
    b = fit_and_score(problems, generations, labels, params, tmp_path / "b")
    assert [s.score for s in a.scores] == [s.score for s in b.scores]
    assert len(a.scores) == len(generations)
    y = np.array([lab.passed for lab in labels])
    s = np.array([x.score for x in a.scores])  # both sorted by (problem, sample)
    assert s[y].mean() > s[~y].mean() + 0.1  # it learned something that transfers across problems


def workspace(tmp_path: Path, name: str, params: dict) -> Path:
    ws = tmp_path / name
    problems, generations, labels = toy_data(8, 12)
    write_jsonl(ws / "data/problems.jsonl", problems)
    write_jsonl(ws / "data/generations.jsonl", generations)
    write_jsonl(ws / "data/labels.jsonl", labels)
    (ws / "params.yaml").write_text(yaml.safe_dump({"train": params}))
    return ws


def run_train(ws: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages/train.py")], cwd=ws, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def result(ws: Path) -> tuple[dict, list]:
    metrics = json.loads((ws / "metrics/train.json").read_text())
    metrics.pop("seconds")
    scores = (ws / "data/scores.jsonl").read_text()
    return metrics, scores


def test_killed_train_resumes_to_the_same_result(tmp_path):
    params = {"folds": 2, "epochs": 4, "patience": 4, "batch_size": 8, "hidden": 16}
    whole = workspace(tmp_path, "whole", params)
    assert run_train(whole).returncode == 0

    killed = workspace(tmp_path, "killed", params)
    # Fold 0 fits on 3 problems x 12 samples / batches of 8 = 5 steps an epoch: step 8 is in
    # the middle of epoch 2.
    first = run_train(killed, FRACTAL_FAULT_KILL_AT_STEP="8")
    assert first.returncode == -9, first.stderr[-2000:]
    assert not (killed / "metrics/train.json").exists() and not (killed / "models/critic").exists()
    second = run_train(killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "fold 0: resuming after epoch 1" in second.stdout
    assert result(killed) == result(whole)
