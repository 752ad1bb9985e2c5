"""End to end: `dvc repro` / `fractal run` of a toy stage on the Lambda double, whose instances
are a real sshd on loopback; and the faults a remote run must survive. After each test the
double must have no instance running (the lambda_double fixture fails the test otherwise),
each output must be complete or absent, and the API key must appear in no output or file."""
from __future__ import annotations

import glob
import json
import os
import signal
from pathlib import Path

import pytest

from support.remote import run_fractal, wait_until
from fractal.remote.agent import alive


def assert_key_never_shown(double, repo, *texts: str) -> None:
    key = double.api_key
    for text in texts:
        assert key not in text
    for root in (Path(os.environ["FRACTAL_HOME"]), repo.remote_root, repo.path):
        for path in root.rglob("*"):
            if path.is_file() and ".git" not in path.parts:
                assert key.encode() not in path.read_bytes(), path


def launches(double) -> int:
    return len([1 for m, p, s in double.requests if p.endswith("/launch") and s == 200])


def remote_runs(repo) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(repo.remote_root / "runs" / "*" / "toy-*")))


def test_dvc_repro_on_lambda_gives_what_a_local_run_gives(lambda_repo, lambda_double):
    rc, out = run_fractal(["dvc", "repro"], lambda_repo.path)
    assert rc == 0, out
    assert "launched fractal-" in out and "terminated instance" in out
    assert "toy finished on fractal-" in out and "about $" in out and "$1.29/h" in out
    assert "step 0" in out and "step 1" in out  # the log, streamed
    outputs = lambda_repo.outputs()
    assert outputs["out/result.txt"] == "HELLO FRACTAL\n" and outputs["out/parts"] == ["0.txt", "1.txt", "2.txt"]
    assert json.loads(outputs["metrics.json"])["where"].startswith(str(lambda_repo.remote_root))  # ran remotely
    assert launches(lambda_double) == 1 and lambda_double.running() == []
    remote_lock = (lambda_repo.path / "dvc.lock").read_text()

    # Where a stage ran is not part of its hash: a local run finds nothing to do ...
    env = dict(os.environ, FRACTAL_EXECUTOR="local")
    rc, out = run_fractal(["dvc", "status"], lambda_repo.path, env=env)
    assert rc == 0 and "up to date" in out, out
    # ... and forced, it writes the same hashes (metrics.json records where it ran, so it is
    # not cached and not hashed in dvc.lock beyond its presence)
    rc, out = run_fractal(["dvc", "repro", "-f"], lambda_repo.path, env=env)
    assert rc == 0, out
    local_lock = (lambda_repo.path / "dvc.lock").read_text()
    strip = lambda lock: [line for line in lock.splitlines() if "metrics.json" not in line]  # noqa: E731
    assert _outs_hashes(remote_lock) == _outs_hashes(local_lock)
    assert strip(remote_lock)[:3] == strip(local_lock)[:3]
    assert_key_never_shown(lambda_double, lambda_repo, out)


def _outs_hashes(lock: str) -> dict[str, str]:
    import yaml
    stage = yaml.safe_load(lock)["stages"]["toy"]
    return {o["path"]: o["md5"] for o in stage["outs"] if o["path"] != "metrics.json"}


def test_ssh_executor_runs_the_stage_on_the_named_host(lambda_repo, lambda_double):
    lambda_repo.write_config(executor="ssh")
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert "toy ran on ssh host 127.0.0.1" in out and launches(lambda_double) == 0
    assert lambda_repo.outputs()["out/result.txt"] == "HELLO FRACTAL\n"


def test_a_warm_kept_instance_is_reused_then_terminated_by_the_user(lambda_repo, lambda_double):
    lambda_repo.write_config(keep_instance=True)
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert "still running: `fractal lambda terminate" in out
    [instance_id] = lambda_double.running()
    (lambda_repo.path / "data" / "input.txt").write_text("second run\n")
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert "reusing instance" in out and "setting up the remote environment" not in out
    assert launches(lambda_double) == 1 and lambda_double.running() == [instance_id]
    assert lambda_repo.outputs()["out/result.txt"] == "SECOND RUN\n"
    rc, status = run_fractal(["fractal", "lambda", "status"], lambda_repo.path)
    assert rc == 0 and instance_id[:8] in status and "kept" in status and "billing" in status
    rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
    assert rc == 0 and instance_id in out
    assert wait_until(lambda: lambda_double.running() == [])
    assert_key_never_shown(lambda_double, lambda_repo, status, out)


# -- faults ------------------------------------------------------------------------------------


def test_no_capacity_anywhere_fails_before_anything_bills(lambda_repo, lambda_double):
    lambda_double.capacity = {t: [] for t in lambda_double.capacity}
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 1 and "no capacity for any preference" in out and "instance_types or regions" in out
    assert launches(lambda_double) == 0
    assert lambda_repo.outputs() == {"out/result.txt": None, "out/parts": None, "metrics.json": None}


def test_no_capacity_for_the_first_choice_falls_back_to_the_next(lambda_repo, lambda_double):
    lambda_repo.write_config(instance_types=["gpu_1x_h100_pcie", "gpu_1x_a10"], regions=["us-west-1", "us-east-1"])
    lambda_double.inject("POST", "/instance-operations/launch", 400,
                         code="instance-operations/launch/insufficient-capacity")
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert "no capacity for gpu_1x_h100_pcie in us-west-1; trying the next preference" in out
    assert "(gpu_1x_a10, us-west-1)" in out and "$0.75/h" in out


def test_rate_limited_calls_are_retried(lambda_repo, lambda_double):
    lambda_double.inject("GET", "/instances", 429, times=2)
    lambda_double.inject("POST", "/instance-operations/launch", 429, times=2)
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert out.count("throttled") == 4
    lambda_repo.assert_complete_or_absent()
    assert lambda_repo.outputs()["out/result.txt"] == "HELLO FRACTAL\n"


def test_invalid_key_is_explained_and_never_printed(lambda_repo, lambda_double):
    wrong = "lk-wrong-" + "z" * 30
    env = dict(os.environ, LAMBDA_API_KEY=wrong)
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path, env=env)
    assert rc == 1 and "global/invalid-api-key" in out and "$LAMBDA_API_KEY" in out
    assert wrong not in out and launches(lambda_double) == 0
    assert_key_never_shown(lambda_double, lambda_repo, out)


def test_ssh_drop_mid_stage_reattaches_and_streams_on(lambda_repo, lambda_double, sshd):
    lambda_repo.set_stage(sleep=0.4)
    (lambda_repo.path / "params.yaml").write_text("toy:\n  steps: 6\n")
    dropped = []

    def cut(line, proc):
        if line.startswith("step 1") and not dropped:
            dropped.append(sshd.drop_connections())

    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path, on_line=cut)
    assert rc == 0, out
    assert dropped and dropped[0] > 0
    assert "lost" in out and "reattached" in out
    log = [line for line in out.splitlines() if line.startswith("step ")]
    assert log == [f"step {i}" for i in range(6)]  # each line once: resumed at the byte it stopped
    assert lambda_repo.outputs()["out/parts"] == ["0.txt", "1.txt", "2.txt"]
    lambda_repo.assert_complete_or_absent()


def test_remote_command_failure_brings_nothing_back(lambda_repo, lambda_double):
    lambda_repo.set_stage(fail=True)
    rc, out = run_fractal(["dvc", "repro"], lambda_repo.path)
    assert rc != 0
    assert "failing on purpose" in out and "toy failed on lambda instance" in out and "exit code 3" in out
    assert "terminated instance" in out
    # the remote stage wrote a half out/result.txt before failing; none of it comes back
    assert lambda_repo.outputs() == {"out/result.txt": None, "out/parts": None, "metrics.json": None}


def test_a_stage_that_forgets_an_output_is_an_error(lambda_repo, lambda_double):
    (lambda_repo.path / "dvc.yaml").write_text((lambda_repo.path / "dvc.yaml").read_text()
                                               .replace("- out/parts", "- out/parts\n      - out/never.txt"))
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 1 and "did not write out/never.txt" in out
    assert lambda_repo.outputs() == {"out/result.txt": None, "out/parts": None, "metrics.json": None}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_the_remote_stage_and_terminates(lambda_repo, lambda_double, signum):
    """Ctrl-C in the terminal (SIGINT to the foreground group) or `dvc queue kill` (SIGTERM)."""
    lambda_repo.set_stage(sleep=0.5)
    (lambda_repo.path / "params.yaml").write_text("toy:\n  steps: 8\n")

    def interrupt(line, proc):
        if line.startswith("step 1"):
            os.killpg(proc.pid, signum)

    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path, on_line=interrupt)
    assert rc == 130, out
    assert "stopped the remote stage" in out and "terminated instance" in out and "toy stopped on" in out
    [run] = remote_runs(lambda_repo)
    assert not alive(int((run / "pid").read_text()))  # the remote stage is gone, not just abandoned
    assert "toy: done" not in (run / "log").read_text()
    assert lambda_repo.outputs() == {"out/result.txt": None, "out/parts": None, "metrics.json": None}


def test_a_killed_remote_process_is_reported_not_waited_for(lambda_repo, lambda_double):
    lambda_repo.set_stage(sleep=0.5)
    (lambda_repo.path / "params.yaml").write_text("toy:\n  steps: 8\n")

    def kill_remote(line, proc):
        if line.startswith("step 1"):
            [run] = remote_runs(lambda_repo)
            os.killpg(int((run / "pid").read_text()), signal.SIGKILL)  # as the OOM killer would

    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path, on_line=kill_remote)
    assert rc == 1 and "ended without an exit code" in out and "terminated instance" in out
    assert lambda_repo.outputs() == {"out/result.txt": None, "out/parts": None, "metrics.json": None}


@pytest.mark.slow
def test_experiments_get_their_own_remote_directories(lambda_repo, lambda_double):
    """`dvc exp run --temp` runs in .dvc/tmp/exps/...: it finds the repository's executor
    config and works in a remote directory of its own, so queued experiments cannot collide."""
    lambda_repo.write_config(keep_instance=True)
    for name, steps in (("exp-a", 1), ("exp-b", 3)):
        rc, out = run_fractal(["dvc", "exp", "run", "--temp", "-n", name, "-S", f"toy.steps={steps}"],
                              lambda_repo.path)
        assert rc == 0, out
    work = sorted(p.name for p in (lambda_repo.remote_root / "work").iterdir())
    assert work == ["repo-exp-exp-a", "repo-exp-exp-b"]
    rc, out = run_fractal(["dvc", "exp", "show", "--csv"], lambda_repo.path)
    assert "exp-a" in out and "exp-b" in out
    rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
    assert rc == 0
    assert wait_until(lambda: lambda_double.running() == [])


def test_named_variables_are_passed_but_never_the_api_key(lambda_repo, lambda_double, monkeypatch):
    lambda_repo.remote["env"] = ["TOY_SECRET", "LAMBDA_API_KEY"]
    lambda_repo.write_config()
    monkeypatch.setenv("TOY_SECRET", "it's a 'quoted' value")
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert "TOY_SECRET=it's a 'quoted' value api key visible: False" in out
    assert "LAMBDA_API_KEY is never sent to a remote host" in out
    assert_key_never_shown(lambda_double, lambda_repo, out)


@pytest.mark.slow  # two venvs with pip: ~20 s
def test_remote_environment_is_set_up_once_and_a_broken_setup_is_explained(lambda_repo, lambda_double):
    marker = lambda_repo.remote_root / "setup-runs.txt"
    lambda_repo.remote["setup"] = f"python -c 'import sys; print(sys.prefix)' >> {marker}"
    lambda_repo.write_config(keep_instance=True)
    for _ in range(2):
        rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
        assert rc == 0, out
    [prefix] = marker.read_text().splitlines()  # once, and inside the venv it made
    assert prefix.startswith(str(lambda_repo.remote_root / "envs"))
    lambda_repo.remote["setup"] = "echo 'no such package' >&2; exit 7"  # a new setup is a new environment
    lambda_repo.write_config(keep_instance=False)
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 1 and "no such package" in out and "setting up the remote environment failed (exit 7)" in out
    assert "remote.setup" in out
    rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
    assert rc == 0
    assert wait_until(lambda: lambda_double.running() == [])


def test_mlflow_records_what_the_lambda_stage_cost(lambda_repo, lambda_double):
    """Issue 12 item 8: instance type, region, id, seconds billed and cost of a Lambda stage."""
    from mlflow.tracking import MlflowClient

    from fractal.tracking import tracking_uri

    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    [launched] = list(lambda_double.instances)
    client = MlflowClient(tracking_uri(lambda_repo.path))
    [run] = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
             if r.data.tags.get("fractal.stage") == "toy"]
    tags, metrics = run.data.tags, run.data.metrics
    assert tags["fractal.executor"] == "lambda" and tags["lambda.instance_id"] == launched
    assert tags["lambda.instance_type"] == "gpu_1x_a100_sxm4" and tags["lambda.region"] == "us-west-1"
    assert 0 < metrics["lambda.seconds_billed"] < 600
    assert metrics["lambda.cost_usd"] == pytest.approx(1.29 * metrics["lambda.seconds_billed"] / 3600, abs=1e-4)
