"""Issue 12: every way an instance was left billing, as a test against the double (which
misbehaves as the real API does). Each of these leaked (or killed a busy instance) before the
fix; after each test the lambda_double fixture fails it if anything is still running.

The last test injects every fault in turn and prints "0 instances left running" with the
number of paths tried."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.remote import run_fractal, wait_until
from fractal.remote.api import LambdaAPIError, LambdaClient, Retry
from fractal.remote.config import LambdaSettings
from fractal.remote.instances import Registry, acquire, ensure_ssh_key, launch, reap, release, terminate

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZXJrZXlmb3J0ZXN0c29ubHlub3RyZWFsMTIzNDU2 me@laptop"


@pytest.fixture
def client(lambda_double, lambda_env) -> LambdaClient:
    return LambdaClient.from_environment(retry=Retry(first_wait=0.01), timeout=1.0)


@pytest.fixture
def key_name(client) -> str:
    return ensure_ssh_key(client, PUBLIC_KEY)


def settings(**kw) -> LambdaSettings:
    return LambdaSettings(**{"poll_seconds": 0.05, "watchdog": False, "retry_seconds": 0.01, **kw})


def cleanup_everything_fractal_knows(client: LambdaClient) -> None:
    """What a user does next: any `fractal lambda` command reaps, `terminate --all` ends the rest."""
    reap(client, Registry())
    terminate(client, list(Registry().read()), Registry(), "test cleanup")


# -- 1. a launch whose answer is lost --------------------------------------------------------

LOST_LAUNCH_ANSWERS = {
    "read timeout": dict(status=200, delay=2.0),  # the client (timeout 1 s) gives up first
    "connection reset": dict(status=0),
    "gateway page": dict(status=502, html=True),
    "5xx envelope": dict(status=503, code="provider/internal-unavailable"),
}


def lose_launch_answer(double, kind: str) -> None:
    f = LOST_LAUNCH_ANSWERS[kind]
    if f.get("delay"):
        double.slow("POST", "/instance-operations/launch", f["delay"])
    else:
        double.inject("POST", "/instance-operations/launch", f["status"], code=f.get("code"),
                      html=f.get("html", False), after=True)


@pytest.mark.parametrize("kind", sorted(LOST_LAUNCH_ANSWERS))
def test_a_launch_whose_answer_is_lost_is_found_by_name_and_recorded(client, key_name, lambda_double, kind):
    lose_launch_answer(lambda_double, kind)
    registry = Registry()
    try:
        got = launch(client, settings(), key_name, keep=False, registry=registry, lease=False)
    except LambdaAPIError:
        got = None
    [instance_id] = lambda_double.running()  # the API did launch it
    assert got is not None and got.instance_id == instance_id, "the launch was not recovered"
    assert instance_id in registry.read()
    reap(client, registry)  # no run holds it and it was not to be kept
    assert lambda_double.running() == []


def test_status_reap_and_terminate_adopt_fractal_instances_the_registry_lost(lambda_repo, lambda_double):
    """kill -9 between the launch request and the registry write, or a deleted ~/.fractal."""
    rc, out = run_fractal(["fractal", "lambda", "launch", "--no-wait"], lambda_repo.path)
    assert rc == 0, out
    [instance_id] = lambda_double.running()
    Registry().path.unlink()  # the record is gone; the instance carries fractal's name and tag
    rc, out = run_fractal(["fractal", "lambda", "status"], lambda_repo.path)
    assert rc == 0 and instance_id[:8] in out
    assert "not launched by fractal" not in out and "adopted" in out
    rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
    assert rc == 0 and instance_id in out
    assert lambda_double.running() == []


def test_a_run_whose_launch_answer_is_lost_still_runs_and_terminates(lambda_repo, lambda_double):
    lambda_double.inject("POST", "/instance-operations/launch", 502, html=True, after=True)
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert "found it by name" in out, out
    assert rc == 0, out
    assert lambda_double.running() == []


# -- 2. leases: several holders, and `fractal lambda ssh` holds one for its whole session -------


def test_two_runs_on_one_named_instance_keep_it_alive_until_both_end(client, key_name, lambda_double, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    registry = Registry()
    got = launch(client, settings(idle_minutes=1), key_name, keep=True, registry=registry, lease=False)
    assert wait_until(lambda: client.instance(got.instance_id).ready)
    s = settings(instance=got.instance_id, ssh_key=str(key), idle_minutes=1)
    first, second = acquire(client, s, registry), acquire(client, s, registry)
    release(client, first, registry)
    later = time.time() + 3600  # an hour on: far past the idle limit
    reap(client, registry, now=later)
    assert lambda_double.running() == [got.instance_id], "terminated while the second run held it"
    release(client, second, registry)
    reap(client, registry, now=later + 3600)
    assert lambda_double.running() == []


def test_an_ssh_session_longer_than_the_idle_limit_keeps_the_instance(lambda_repo, lambda_double):
    rc, out = run_fractal(["fractal", "lambda", "launch", "--idle-minutes", "0.03"], lambda_repo.path)  # 1.8 s
    assert rc == 0, out
    [instance_id] = lambda_double.running()
    session = subprocess.Popen(["fractal", "lambda", "ssh", instance_id[:8], "--", "sleep", "6"],
                               cwd=lambda_repo.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4)
        rc, out = run_fractal(["fractal", "lambda", "status"], lambda_repo.path)  # reaps
        assert lambda_double.running() == [instance_id], "terminated under an open ssh session:\n" + out
        assert "in use" in out
        assert session.wait(timeout=30) == 0
    finally:
        if session.poll() is None:
            session.kill()
    time.sleep(2.5)
    rc, out = run_fractal(["fractal", "lambda", "status"], lambda_repo.path)
    assert "idle" in out and lambda_double.running() == []


# -- 3. terminate goes on past errors ------------------------------------------------------------


def test_terminate_all_goes_on_past_errors_and_already_terminating(lambda_repo, lambda_double):
    client = LambdaClient(lambda_double.api_key, lambda_double.url)
    for _ in range(3):
        rc, out = run_fractal(["fractal", "lambda", "launch", "--no-wait"], lambda_repo.path)
        assert rc == 0, out
    ids = sorted(lambda_double.running())
    client.terminate([ids[0]])  # terminating already: the API answers global/unknown to a second terminate
    lambda_double.terminate_seconds = 30
    lambda_double.inject("POST", "/instance-operations/terminate", 502, html=True)  # and one gateway hiccup
    rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
    assert rc == 0, out
    assert lambda_double.running() == []
    assert "nothing fractal launched is running" in out


def test_terminate_that_cannot_finish_says_what_still_runs_and_fails(lambda_repo, lambda_double):
    rc, out = run_fractal(["fractal", "lambda", "launch", "--no-wait"], lambda_repo.path)
    assert rc == 0, out
    [instance_id] = lambda_double.running()
    lambda_double.inject("POST", "/instance-operations/terminate", 503, code="provider/internal-unavailable",
                         times=100)
    try:
        rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
        assert rc == 1, out
        assert "still running" in out and instance_id[:8] in out
    finally:
        lambda_double._faults.clear()
        LambdaClient(lambda_double.api_key, lambda_double.url).terminate([instance_id])


def _sshd_sessions(pid: int) -> list[int]:
    """The listener's per-connection sshd processes, all the way down (privilege separation
    puts the one that talks to the network below a monitor)."""
    from support.double import _children
    found = []
    for child in _children(pid):
        if Path(f"/proc/{child}/comm").read_text().startswith("sshd"):
            found += [child, *_sshd_sessions(child)]
    return found


# -- 4. a silent network drop during setup fails the stage in bounded time -----------------------


def test_a_silent_drop_during_setup_fails_in_bounded_time_and_terminates(lambda_repo, lambda_double, sshd):
    lambda_repo.remote["setup"] = "echo setup-started; sleep 60"
    lambda_repo.remote["keepalive_seconds"] = 2
    lambda_repo.write_config()
    stopped: list[int] = []
    frozen_at: list[float] = []

    def freeze(line, proc):  # the network goes quiet: the connection stays open, nothing answers
        if "setup-started" in line and not stopped:
            for pid in _sshd_sessions(sshd.proc.pid):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            frozen_at.append(time.monotonic())

    env = dict(os.environ, FRACTAL_TRACKING="off")  # MLflow is not under test (and slow to import under load)
    try:
        rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path, on_line=freeze, timeout=120, env=env)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert stopped, out
    took = time.monotonic() - frozen_at[0]
    assert took < 30, f"{took:.0f} s on the silent connection (keepalive 2 s):\n" + out
    assert rc == 1 and "no answer" in out, out
    assert lambda_double.running() == []


# -- 5. an instance that stops its own bill when the laptop sleeps -------------------------------


def test_on_instance_autostop_terminates_an_idle_instance_without_the_laptop(lambda_repo, lambda_double):
    lambda_repo.write_config(keep_instance=True, autostop_minutes=0.05)  # 3 s
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 0, out
    assert "autostop" in out and lambda_double.api_key not in out
    assert "still running: `fractal lambda terminate" in out  # kept: the run did not terminate it
    [instance_id] = list(lambda_double.instances)
    # the laptop "sleeps": no fractal command, no watchdog (lambda.watchdog is false here)
    assert wait_until(lambda: lambda_double.running() == [], timeout=40), "the instance did not stop itself"
    log = (lambda_repo.remote_root / "autostop" / instance_id / "log").read_text()
    assert "autostop: terminating" in log and "idle" in log
    for path in lambda_repo.remote_root.rglob("*"):  # the key travelled in memory only
        assert not path.is_file() or lambda_double.api_key.encode() not in path.read_bytes(), path


# -- 6. sync deletes what the user deleted ---------------------------------------------------------


def test_sync_deletes_what_was_deleted_here_and_nothing_else(lambda_repo, lambda_double):
    extra = lambda_repo.path / "notes.txt"
    extra.write_text("draft")
    rc, out = run_fractal(["fractal", "lambda", "launch"], lambda_repo.path)
    assert rc == 0, out
    rc, out = run_fractal(["fractal", "lambda", "sync"], lambda_repo.path)
    assert rc == 0, out
    work = Path(out.strip().splitlines()[-1])
    assert (work / "notes.txt").read_text() == "draft"
    (work / "made-there.txt").write_text("a stage wrote this on the instance")
    extra.unlink()
    rc, out = run_fractal(["fractal", "lambda", "sync"], lambda_repo.path)
    assert rc == 0, out
    assert not (work / "notes.txt").exists(), "a file deleted here stayed in the remote workspace"
    assert (work / "made-there.txt").exists() and (work / "stages" / "toy.py").exists()
    rc, out = run_fractal(["fractal", "lambda", "terminate", "--all"], lambda_repo.path)
    assert rc == 0 and lambda_double.running() == []


# -- rate limits at their real values, once ---------------------------------------------------


def test_real_rate_limits_are_waited_out(client, key_name, lambda_double):
    from support.double import REAL_LAUNCH_INTERVAL, REAL_REQUEST_RATE
    lambda_double.request_rate, lambda_double.launch_interval = REAL_REQUEST_RATE, REAL_LAUNCH_INTERVAL
    c = LambdaClient(lambda_double.api_key, lambda_double.url, retry=Retry(first_wait=1.0, jitter=0))
    t0 = time.monotonic()
    for _ in range(6):
        c.instances()
    a = c.launch("us-west-1", "gpu_1x_a10", key_name)
    b = c.launch("us-east-1", "gpu_1x_a10", key_name)
    took = time.monotonic() - t0
    time.sleep(1.0)
    c.terminate([a, b])
    statuses = [s for m, p, s in lambda_double.requests]
    assert statuses.count(429) >= 2 and took >= REAL_LAUNCH_INTERVAL - 0.5
    print(f"real rate limits: 6 GETs and 2 launches took {took:.1f} s, {statuses.count(429)} answers were 429")


# -- every path at once ---------------------------------------------------------------------------


def test_fault_injection_over_every_path_leaves_nothing_running(client, key_name, lambda_double, tmp_path,
                                                                capsys):
    """Every uncertain launch answer, an interrupt at each point of a launch, instances turning
    unhealthy or preempted, terminate errors: after each, what a user would do next (any
    `fractal lambda` command reaps; terminate --all) must leave no instance billing."""
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    s = settings(ssh_key=str(key), boot_timeout_minutes=0.05)
    registry = Registry()
    paths: list[str] = []

    def attempt(name: str, fault) -> None:
        paths.append(name)
        fault()
        try:
            got = acquire(client, s, registry)
            release(client, got, registry)
        except (LambdaAPIError, RuntimeError, KeyboardInterrupt):
            pass
        lambda_double._faults.clear()
        cleanup_everything_fractal_knows(client)
        left = lambda_double.running()
        assert left == [], f"{name}: left {left} running"

    for kind in sorted(LOST_LAUNCH_ANSWERS):
        attempt(f"launch answer lost: {kind}", lambda kind=kind: lose_launch_answer(lambda_double, kind))
    for prefix in ("/instance-types", "/instances", "/ssh-keys"):
        for status, html in ((0, False), (502, True), (503, False), (429, False)):
            attempt(f"GET {prefix} answered {status or 'nothing'}{' (page)' if html else ''}",
                    lambda p=prefix, st=status, h=html: lambda_double.inject("GET", p, st, html=h, times=8))
    attempt("terminate answered a gateway page", lambda: lambda_double.inject(
        "POST", "/instance-operations/terminate", 502, html=True, times=2))
    attempt("terminate answered nothing", lambda: lambda_double.inject(
        "POST", "/instance-operations/terminate", 0, after=True))

    real_launch = LambdaClient.launch
    for point in ("before the request", "after the request", "during the registry write"):
        def interrupt(point=point):
            def patched(self, *a, **kw):
                if point == "before the request":
                    raise KeyboardInterrupt
                result = real_launch(self, *a, **kw)
                if point == "after the request":
                    raise KeyboardInterrupt
                return result
            LambdaClient.launch = patched
            if point == "during the registry write":  # the write of the record after the launch answered
                original = Registry.locked

                def patched_launch(self, *a, **kw):
                    result = real_launch(self, *a, **kw)

                    def locked_then_interrupt(registry):
                        Registry.locked = original
                        raise KeyboardInterrupt
                    Registry.locked = locked_then_interrupt
                    return result
                LambdaClient.launch = patched_launch
        original_locked = Registry.locked
        try:
            attempt(f"Ctrl-C/SIGTERM {point}", interrupt)
        finally:
            LambdaClient.launch = real_launch
            Registry.locked = original_locked

    def turn(status: str):
        real_instance = LambdaClient.instance

        def patched(self, instance_id):
            lambda_double.set_status(instance_id, status)
            LambdaClient.instance = real_instance
            return real_instance(self, instance_id)
        LambdaClient.instance = patched
    for status in ("unhealthy", "preempted"):
        attempt(f"instance {status} while booting", lambda st=status: turn(st))

    cleanup_everything_fractal_knows(client)
    left = lambda_double.running()
    with capsys.disabled():
        print(f"\nfault injection: {len(left)} instances left running after {len(paths)} paths tried")
    assert left == [] and len(paths) >= 20
