"""MLflow lineage and DVC data versioning, for real: a `mlflow server` on loopback started by
the test, a real `dvc repro` / `dvc exp run --queue` / `dvc queue start -j 2` of the tiny
default profile, a local DVC remote and a DVC SSH remote (dvc-ssh) on the loopback sshd."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from fractal import tracking
from fractal.records import Generation, Problem, Score, read_jsonl
from support.tiny_repro import copy_reproduced
from support.tiny_repro import git as _git, ran as _ran, run as _run, tracking_env as _env


# ---------------------------------------------------------------------------------------
# Small pieces
# ---------------------------------------------------------------------------------------
def test_queued_experiments_log_to_the_repository_they_belong_to(tmp_path):
    exp_dir = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    exp_dir.mkdir(parents=True)
    assert tracking.repo_root(exp_dir) == (tmp_path / "repo").resolve()
    assert tracking.repo_root(tmp_path) == tmp_path.resolve()


def test_default_store_is_sqlite_in_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_a_tracking_uri_is_shown_without_its_password():
    assert tracking._safe_uri("https://ann:s3cret@mlflow.example.com/x") == "https://ann:***@mlflow.example.com/x"
    assert "s3cret" not in tracking._safe_uri("postgresql://ann:s3cret@db:5432/mlflow")
    assert tracking._safe_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_metrics_are_the_numbers_of_a_metrics_file_flattened(tmp_path):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"all": {"pass_rate": 0.25, "n": 3, "name": "x"}, "ok": True, "nan": float("nan")}))
    assert tracking._metrics_of(path) == {"all.pass_rate": 0.25, "all.n": 3.0}


def test_an_unusable_store_stops_the_stage_before_it_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/a-file/mlflow.db")
    ran = []
    assert tracking.tracked("label", lambda: ran.append(1) or 0) == 2
    assert not ran and "MLFLOW_TRACKING_URI" in capsys.readouterr().err


def test_a_copied_or_moved_repository_keeps_its_own_artifacts(tmp_path, monkeypatch):
    """MLflow stores absolute artifact locations; the repository's own store follows it."""
    import shutil

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    old = tmp_path / "old"
    old.mkdir()
    (tmp_path / "checkpoint.txt").write_text("weights")
    with tracking.store_lock(old):
        client, exp_id = tracking.open_store(old)
    run_id = client.create_run(exp_id).info.run_id
    client.log_artifact(run_id, str(tmp_path / "checkpoint.txt"), "checkpoints")
    assert client.get_run(run_id).info.artifact_uri.startswith((old / "mlartifacts").as_uri())

    new = tmp_path / "new"
    shutil.copytree(old, new)
    shutil.rmtree(old)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri sets it: a new process here
    with tracking.store_lock(new):
        client, _ = tracking.open_store(new)
    run = client.get_run(run_id)
    assert run.info.artifact_uri == f"{(new / 'mlartifacts').as_uri()}/{run_id}/artifacts"
    assert client.get_experiment(exp_id).artifact_location == (new / "mlartifacts").as_uri()
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoints/checkpoint.txt",
                                                dst_path=str(tmp_path / "got"), tracking_uri=tracking.tracking_uri(new))
    assert Path(local).read_text() == "weights"
    assert not old.exists()


def test_fractal_run_imports_mlflow_only_when_tracking():
    """`import mlflow.pyfunc` alone takes seconds: the tracking module (imported by every
    `fractal run`) leaves it to the moment it logs, and the pyfunc class to registration."""
    code = ("import sys, fractal.tracking as t; assert 'mlflow' not in sys.modules, 'tracking imported mlflow'; "
            "t.CriticModel; assert 'mlflow.pyfunc' in sys.modules; print(t.CriticModel.__module__)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["fractal.registered_critic"]  # where critics pickled as tracking.CriticModel find it


def test_a_store_that_cannot_be_written_stops_the_stage_before_mlflow_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/missing-folder/mlflow.db")
    ran = []
    assert tracking.tracked("label", lambda: ran.append(1) or 0) == 2
    err = capsys.readouterr().err
    assert not ran and "missing-folder is not a folder" in err and "FRACTAL_TRACKING=off" in err


def test_tracking_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FRACTAL_TRACKING", "off")
    assert tracking.tracked("label", lambda: 7) == 7
    assert not (tmp_path / "mlflow.db").exists()


# ---------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------
# The MLflow server (`mlflow_server`) and the tiny profile's tracked repro (`tiny_repro`) are
# session fixtures (tests/conftest.py, tests/support/tiny_repro.py): test_pipeline.py starts
# from the same repro.


@pytest.fixture(scope="module")
def tiny_repo(tiny_repro):
    """The default profile shrunk, reproduced once with tracking on the server (read-only)."""
    assert sorted(tiny_repro.first_ran) == sorted(["prepare", "generate", "label", "gentests", "probe", "embed", "train",
                                                   "rank", "report"])
    return tiny_repro.repo


def _client(server: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server, server)
    return client, client.get_experiment_by_name("tiny").experiment_id


@pytest.mark.slow
def test_a_repro_is_one_parent_run_with_a_child_per_stage_carrying_its_lineage(tiny_repo, mlflow_server):
    client, exp = _client(mlflow_server)
    parents = client.search_runs([exp], filter_string="tags.`fractal.parent` = 'true' and tags.`dvc.exp_name` = ''")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["fractal.command"].endswith("repro")
    children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    by_stage = {r.data.tags["fractal.stage"]: r for r in children}
    stages = ["embed", "generate", "gentests", "label", "prepare", "probe", "rank", "report", "train"]
    assert sorted(by_stage) == stages and len(children) == len(stages)

    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    commit = _git(tiny_repo, "rev-parse", "HEAD~1")  # the commit the repro ran on
    for stage, run in by_stage.items():
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["git.commit"] == commit and tags["git.dirty"] == "false", stage
        assert tags["fractal.executor"] == "local" and tags["dvc.exp_name"] == ""
        # What a drift between two machines may come from, in every run.
        assert tags["env.python"] == sys.version.split()[0], stage
        assert all(tags[f"env.{d}"] not in ("", "not installed") for d in ("torch", "transformers", "dvc", "mlflow"))
        assert tags["env.cpu"] and tags["env.gpu"]
        for entry in lock[stage].get("deps", []):
            assert tags[f"dvc.dep.{entry['path']}"] == entry["md5"], (stage, entry["path"])
        for entry in lock[stage].get("outs", []):
            assert tags[f"dvc.out.{entry['path']}"] == entry["md5"], (stage, entry["path"])
        for key, value in lock[stage].get("params", {}).get("params.yaml", {}).items():
            flat = tracking._flatten({key: value})
            assert {k: run.data.params[k] for k in flat} == {k: tracking._text(v) for k, v in flat.items()}
    rank = json.loads((tiny_repo / "metrics/rank.json").read_text())
    assert by_stage["rank"].data.metrics["rankers.critic.top1.value"] == pytest.approx(rank["rankers"]["critic"]["top1"]["value"])
    label = json.loads((tiny_repo / "metrics/label.json").read_text())
    assert by_stage["label"].data.metrics["all.pass_rate"] == pytest.approx(label["all"]["pass_rate"])


@pytest.mark.slow
def test_each_epoch_checkpoint_is_logged_and_the_best_critic_is_registered(tiny_repo, mlflow_server):
    import mlflow
    import pandas as pd

    client, exp = _client(mlflow_server)
    [train] = client.search_runs([exp], filter_string="tags.`fractal.stage` = 'train' and tags.`dvc.exp_name` = ''")
    run_id = train.info.run_id
    history = json.loads((tiny_repo / "plots/train/fold-0.json").read_text())
    logged = client.get_metric_history(run_id, "fold-0/val_auroc")
    assert [m.step for m in logged] == [row["epoch"] for row in history]
    assert [m.value for m in logged] == pytest.approx([row["val_auroc"] for row in history])
    checkpoints = [f.path for f in client.list_artifacts(run_id, "checkpoints/fold-0")]
    assert checkpoints == [f"checkpoints/fold-0/epoch-{i:03d}.pt" for i in range(len(history))]

    version = client.get_model_version(tracking.CRITIC_MODEL, train.data.tags["critic.model_version"])
    assert version.run_id == run_id
    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]["train"]
    for entry in lock["deps"]:
        if entry["path"].startswith("data/"):
            assert version.tags[f"dvc.dep.{entry['path']}"] == entry["md5"]
    assert version.tags["git.commit"] == train.data.tags["git.commit"]

    # The registered critic scores like the DVC-tracked checkpoint did.
    problems = {p.problem_id: p for p in read_jsonl(tiny_repo / "data/problems.jsonl", Problem)}
    generations = read_jsonl(tiny_repo / "data/generations.jsonl", Generation)
    frame = pd.DataFrame([{"problem_id": g.problem_id, "sample": g.sample, "prompt": problems[g.problem_id].prompt,
                           "text": problems[g.problem_id].text, "program": g.program} for g in generations])
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/{tracking.CRITIC_MODEL}/{version.version}")
    predicted = model.predict(frame)
    tracked = {(s.problem_id, s.sample): s.score for s in read_jsonl(tiny_repo / "data/scores.jsonl", Score)}
    assert list(predicted) == pytest.approx([tracked[g.problem_id, g.sample] for g in generations], abs=1e-6)


# Run by the venv's python: fractal is hidden first (this machine has it installed, and the
# venv sees the system's packages), so the model's code can only come from its artifacts.
_FRESH_LOAD = """
import importlib.util, json, os, sys
sys.path[:] = [p for p in sys.path if not os.path.isfile(os.path.join(p or '.', 'fractal', '__init__.py'))]
assert importlib.util.find_spec('fractal') is None, 'fractal is still importable'
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_json(sys.argv[2], orient='records')
print(json.dumps({'scores': [float(x) for x in model.predict(frame)],
                  'code': sys.modules['fractal'].__file__}))
"""


@pytest.mark.slow
def test_the_registered_critic_loads_in_a_fresh_venv_from_its_own_artifacts(tiny_repo, mlflow_server, tmp_path):
    """A `python -m venv --system-site-packages` venv (torch, mlflow... from the system, fast
    to make) in which fractal is not importable; the model is read from a downloaded copy of
    its artifacts, in a folder outside the repository."""
    import mlflow
    from mlflow.models import Model

    client, exp = _client(mlflow_server)
    [train] = client.search_runs([exp], filter_string="tags.`fractal.stage` = 'train' and tags.`dvc.exp_name` = ''")
    version = train.data.tags["critic.model_version"]
    champion = client.get_model_version_by_alias(tracking.CRITIC_MODEL, tracking.CHAMPION)
    assert champion.version == version and champion.tags["critic.val_auroc"] == repr(train.data.metrics["val_auroc"])

    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{tracking.CRITIC_MODEL}/{version}",
                                                     dst_path=str(tmp_path / "model")))
    requirements = (local / "requirements.txt").read_text().split()
    assert not any(r.split("==")[0] in ("fractal", "fractal-best-of-n") for r in requirements)
    from importlib.metadata import version as installed
    for r in requirements:  # every pin is what trained it, so it installs where that did
        name, _, pin = r.partition("==")
        if pin:
            assert installed(name) == pin, r
    meta = Model.load(str(local / "MLmodel"))
    assert [c.name for c in meta.signature.inputs.inputs] == ["problem_id", "sample", "prompt", "program", "text"]
    example = json.loads((local / meta.saved_input_example_info["artifact_path"]).read_text())
    assert example["columns"][:4] == ["problem_id", "sample", "prompt", "program"] and example["data"]

    problems = {p.problem_id: p for p in read_jsonl(tiny_repo / "data/problems.jsonl", Problem)}
    generations = read_jsonl(tiny_repo / "data/generations.jsonl", Generation)
    rows = [{"problem_id": g.problem_id, "sample": g.sample, "prompt": problems[g.problem_id].prompt,
             "text": problems[g.problem_id].text, "program": g.program} for g in generations]
    (tmp_path / "frame.json").write_text(json.dumps(rows))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",) and not k.startswith("MLFLOW_")}
    run = subprocess.run([str(venv / "bin/python"), "-c", _FRESH_LOAD, str(local), str(tmp_path / "frame.json")],
                         cwd=tmp_path, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["code"].startswith(str(local))  # the code came with the model
    tracked = {(s.problem_id, s.sample): s.score for s in read_jsonl(tiny_repo / "data/scores.jsonl", Score)}
    assert got["scores"] == pytest.approx([tracked[g.problem_id, g.sample] for g in generations], abs=1e-6)


@pytest.mark.slow
def test_lineage_answers_where_a_metric_and_a_checkpoint_came_from(tiny_repo, mlflow_server):
    client, exp = _client(mlflow_server)
    [rank] = client.search_runs([exp], filter_string="tags.`fractal.stage` = 'rank' and tags.`dvc.exp_name` = ''")
    out = _run(["fractal", "lineage", "metrics/rank.json:rankers.critic.top1.value"], tiny_repo, _env(mlflow_server))
    value = json.loads((tiny_repo / "metrics/rank.json").read_text())["rankers"]["critic"]["top1"]["value"]
    assert f"rankers.critic.top1.value = {value}" in out
    assert rank.info.run_id in out and rank.data.tags["git.commit"] in out
    assert rank.data.tags["mlflow.parentRunId"] in out and "rank.seed=0" in out
    assert rank.data.tags["dvc.dep.data/scores.jsonl"] in out

    [train] = client.search_runs([exp], filter_string="tags.`fractal.stage` = 'train' and tags.`dvc.exp_name` = ''")
    out = _run(["fractal", "lineage", f"models:/critic/{train.data.tags['critic.model_version']}"], tiny_repo,
               _env(mlflow_server))
    assert train.info.run_id in out and train.data.tags["dvc.dep.data/labels.jsonl"] in out


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_data_and_reproduces_nothing(tiny_repo, mlflow_server, tmp_path):
    env = _env(mlflow_server)
    _run(["dvc", "push"], tiny_repo, env)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(tiny_repo), str(clone)], check=True)
    _run(["dvc", "pull"], clone, env)
    assert (clone / "models/critic/critic.json").exists() and (clone / "data/labels.jsonl").exists()
    assert "up to date" in _run(["dvc", "status"], clone, env)
    assert _ran(_run(["dvc", "repro"], clone, env)) == []


@pytest.mark.slow
def test_an_ssh_remote_on_the_loopback_sshd_pushes_and_pulls(tiny_repo, mlflow_server, tmp_path, sshd,
                                                           sshd_client_key):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    # A real host key check: the server's key is known, as it would be for a team's server.
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_pub}\n")
    env = _env(mlflow_server, HOME=str(home))
    store = tmp_path / "ssh-store"
    url = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}{store}"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(tiny_repo), str(clone)], check=True)
    for repo in (tiny_repo, clone):  # --local: the remote and the key stay out of git
        _run(["dvc", "remote", "add", "--local", "team", url], repo, env)
        _run(["dvc", "remote", "modify", "--local", "team", "keyfile", str(sshd_client_key[0])], repo, env)
    try:
        _run(["dvc", "push", "-r", "team"], tiny_repo, env)
    finally:
        _run(["dvc", "remote", "remove", "--local", "team"], tiny_repo, env)
    assert any(store.rglob("*")), "nothing arrived in the SSH remote"
    _run(["dvc", "pull", "-r", "team"], clone, env)
    assert (clone / "models/critic/critic.json").exists()
    assert "up to date" in _run(["dvc", "status"], clone, env)


@pytest.mark.slow
def test_two_queued_experiments_run_at_once_and_land_in_mlflow_apart(tiny_repo, mlflow_server, tmp_path):
    env = _env(mlflow_server)
    # A copy: the queue's runs would otherwise land in the shared repro's run-cache and git refs.
    tiny_repo = copy_reproduced(tiny_repo, tmp_path / "repo")
    for seed in (1, 2):
        _run(["dvc", "exp", "run", "--queue", "-S", f"train.seed={seed}"], tiny_repo, env)
    _run(["dvc", "queue", "start", "-j", "2"], tiny_repo, env)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = _run(["dvc", "queue", "status"], tiny_repo, env)
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(3)
    assert status.count("Success") == 2, status

    client, exp = _client(mlflow_server)
    parents = client.search_runs([exp], filter_string="tags.`fractal.parent` = 'true' and tags.`dvc.exp_name` != ''")
    assert len(parents) == 2
    names = {p.data.tags["dvc.exp_name"] for p in parents}
    assert len(names) == 2
    seeds, scores = set(), set()
    for p in parents:
        children = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{p.info.run_id}'")
        assert sorted(r.data.tags["fractal.stage"] for r in children) == ["rank", "report", "train"]
        [train] = [r for r in children if r.data.tags["fractal.stage"] == "train"]
        assert train.data.tags["dvc.exp_name"] == p.data.tags["dvc.exp_name"] and train.info.status == "FINISHED"
        assert "params.yaml" in train.data.tags["git.changed"]
        seeds.add(train.data.params["train.seed"])
        scores.add(train.data.tags["dvc.out.data/scores.jsonl"])
        version = client.get_model_version(tracking.CRITIC_MODEL, train.data.tags["critic.model_version"])
        assert version.tags["dvc.exp_name"] == p.data.tags["dvc.exp_name"]
    assert seeds == {"1", "2"} and len(scores) == 2
