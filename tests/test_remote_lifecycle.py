"""Instance lifecycle against the double: preferences and capacity, SSH key registration,
reuse, and the limits that terminate forgotten instances."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from support.remote import run_fractal, wait_until
from fractal.remote.api import INSUFFICIENT_CAPACITY, LambdaAPIError, LambdaClient, Retry
from fractal.remote.config import LambdaSettings
from fractal.remote import instances
from fractal.remote.instances import (Registry, acquire, acquire_more, ensure_ssh_key, launch, reap, release, terminate,
                                      watch)

PUBLIC_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHVzZXJrZXlmb3J0ZXN0c29ubHlub3RyZWFsMTIzNDU2 me@laptop"


@pytest.fixture
def client(lambda_double, lambda_env) -> LambdaClient:
    return LambdaClient.from_environment(retry=Retry(first_wait=0.01))


@pytest.fixture
def key_name(client) -> str:
    return ensure_ssh_key(client, PUBLIC_KEY)


def settings(**kw) -> LambdaSettings:
    return LambdaSettings(**{"poll_seconds": 0.05, "watchdog": False, **kw})


def test_ssh_key_is_registered_once(client, lambda_double):
    name = ensure_ssh_key(client, PUBLIC_KEY)
    assert ensure_ssh_key(client, PUBLIC_KEY + " other-comment") == name
    assert [k["name"] for k in client.ssh_keys()] == [name]
    assert [p for m, p, s in lambda_double.requests if m == "POST"] == ["/api/v1/ssh-keys"]


def test_first_preference_with_capacity_is_launched(client, key_name, lambda_double):
    lambda_double.capacity["gpu_1x_h100_pcie"] = []
    s = settings(instance_types=["gpu_8x_h100_sxm5", "gpu_1x_h100_pcie", "gpu_1x_a100_sxm4"],
                 regions=["us-east-1", "us-west-1"])
    got = launch(client, s, key_name, keep=False, registry=Registry(), lease=True)
    assert (got.type_name, got.region, got.price_cents_per_hour) == ("gpu_1x_a100_sxm4", "us-east-1", 129)
    terminate(client, [got.instance_id], Registry(), "test")


def test_insufficient_capacity_at_launch_moves_to_the_next_region(client, key_name, lambda_double):
    """/instance-types can be stale: the launch itself may say no capacity."""
    lambda_double.inject("POST", "/instance-operations/launch", 400, code=INSUFFICIENT_CAPACITY)
    s = settings(instance_types=["gpu_1x_a100_sxm4"], regions=["us-west-1", "us-east-1"])
    got = launch(client, s, key_name, keep=False, registry=Registry(), lease=True)
    assert got.region == "us-east-1"
    terminate(client, [got.instance_id], Registry(), "test")


def test_no_capacity_anywhere_launches_nothing_and_says_what_exists(client, key_name, lambda_double):
    lambda_double.capacity = {t: [] for t in lambda_double.capacity}
    lambda_double.capacity["gpu_1x_a10"] = ["europe-central-1"]
    with pytest.raises(LambdaAPIError) as e:
        launch(client, settings(instance_types=["gpu_1x_a100_sxm4", "gpu_1x_h100_pcie"]), key_name, keep=False,
               registry=Registry(), lease=True)
    assert e.value.code == INSUFFICIENT_CAPACITY and "instance_types or regions" in str(e.value)
    assert lambda_double.running() == [] and Registry().read() == {}


def test_quota_exceeded_stops_at_once(client, key_name, lambda_double):
    lambda_double.inject("POST", "/instance-operations/launch", 400, code="global/quota-exceeded")
    with pytest.raises(LambdaAPIError, match="quota"):
        launch(client, settings(), key_name, keep=False, registry=Registry(), lease=True)
    assert len([p for m, p, s in lambda_double.requests if p.endswith("/launch")]) == 1


def test_interrupted_launch_call_terminates_what_it_launched(client, key_name, lambda_double, monkeypatch):
    """Ctrl-C between the API creating the instance and our hearing its id."""
    real = LambdaClient.launch

    def launch_then_interrupt(self, *a, **kw):
        real(self, *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(LambdaClient, "launch", launch_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        launch(client, settings(), key_name, keep=False, registry=Registry(), lease=True)
    assert lambda_double.running() == []


def test_acquire_launches_then_a_kept_instance_is_reused(client, lambda_double, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    s = settings(instance_types=["gpu_1x_a10"], ssh_key=str(key), keep_instance=True)
    registry = Registry()
    first = acquire(client, s, registry)
    assert first.launched and first.instance.ready and first.instance.type_name == "gpu_1x_a10"
    assert [h["pid"] for h in registry.read()[first.instance.id]["holders"].values()] == [os.getpid()]
    release(client, first, registry)
    assert lambda_double.running() == [first.instance.id]  # kept
    second = acquire(client, s, registry)
    assert not second.launched and second.instance.id == first.instance.id
    release(client, second, registry)
    assert lambda_double.running() == [first.instance.id]  # a run never terminates what it did not launch
    terminate(client, [first.instance.id], registry, "test")


def test_a_run_that_launched_terminates_at_release_unless_kept(client, lambda_double, tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    got = acquire(client, settings(ssh_key=str(key)), Registry())
    release(client, got, Registry())
    assert lambda_double.running() == [] and Registry().read() == {}


# -- lambda.nodes > 1: the other nodes of a Ray cluster ---------------------------------------


def _key(tmp_path):
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return str(key)


def test_more_nodes_are_launched_in_the_heads_region_held_and_terminated_at_release(client, lambda_double, tmp_path):
    s = settings(instance_types=["gpu_1x_a10"], ssh_key=_key(tmp_path))
    registry = Registry()
    head = acquire(client, s, registry)
    lambda_double.capacity["gpu_1x_a10"] = ["us-east-1", head.instance.region]  # another region listed first
    more = acquire_more(client, s, registry, head.instance, 2)
    assert len(more) == 2 and all(m.launched and m.instance.ready for m in more)
    assert {m.instance.region for m in more} == {head.instance.region}  # the nodes talk over private IPs
    assert len({head.instance.id, *(m.instance.id for m in more)}) == 3
    assert all([h["pid"] for h in registry.read()[m.instance.id]["holders"].values()] == [os.getpid()] for m in more)
    for each in (head, *more):
        assert release(client, each, registry) == []
    assert lambda_double.running() == [] and Registry().read() == {}


def test_more_nodes_without_capacity_in_the_heads_region_launch_nothing(client, lambda_double, tmp_path):
    s = settings(instance_types=["gpu_1x_a10"], ssh_key=_key(tmp_path))
    registry = Registry()
    head = acquire(client, s, registry)
    lambda_double.capacity["gpu_1x_a10"] = [r for r in ("us-west-1", "us-east-1") if r != head.instance.region]
    with pytest.raises(LambdaAPIError) as e:
        acquire_more(client, s, registry, head.instance, 1)
    assert e.value.code == INSUFFICIENT_CAPACITY
    assert lambda_double.running() == [head.instance.id]
    release(client, head, registry)


def test_interrupted_while_launching_more_nodes_terminates_those_launched(client, lambda_double, tmp_path,
                                                                          monkeypatch):
    s = settings(instance_types=["gpu_1x_a10"], ssh_key=_key(tmp_path))
    registry = Registry()
    head = acquire(client, s, registry)
    calls = []

    def launch_then_ctrl_c(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return launch(*args, **kw)

    monkeypatch.setattr(instances, "launch", launch_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        acquire_more(client, s, registry, head.instance, 3)
    assert len(lambda_double.instances) == 2 and lambda_double.running() == [head.instance.id]
    assert list(registry.read()) == [head.instance.id]
    release(client, head, registry)


def test_a_ray_cluster_that_cannot_start_terminates_every_instance(lambda_repo, lambda_double):
    """lambda.nodes = 3 with a remote environment that has no Ray (Debian's python3): one
    line saying what to set, the stage never started, all three instances terminated."""
    lambda_repo.remote["python"] = "/usr/bin/python3"
    lambda_repo.write_config(nodes=3)
    rc, out = run_fractal(["fractal", "run", "toy"], lambda_repo.path)
    assert rc == 1, out
    assert "Ray is not installed in the remote environment: set remote.setup to \"pip install '.[ray]'\"" in out, out
    assert "toy running" not in out and "Traceback" not in out, out
    assert len(lambda_double.instances) == 3 and lambda_double.running() == [], out
    assert "3 instances" in out, out


def _record(client, key_name, registry, **entry):
    got = launch(client, settings(), key_name, keep=entry.pop("keep", True), registry=registry, lease=False)
    with registry.locked() as state:
        state[got.instance_id].update(entry)
    return got.instance_id


def test_reap_terminates_idle_old_and_orphaned_instances(client, key_name, lambda_double):
    registry = Registry()
    now = time.time()
    idle = _record(client, key_name, registry, last_used=now - 31 * 60, idle_minutes=30)
    old = _record(client, key_name, registry, launched_at=now - 25 * 3600, max_age_hours=24)
    orphan = _record(client, key_name, registry, keep=False,
                     lease={"pid": 2 ** 22 + 12345, "host": os.uname().nodename, "since": now})
    fresh = _record(client, key_name, registry)
    busy = _record(client, key_name, registry, last_used=now - 3600, idle_minutes=30,
                   lease={"pid": os.getpid(), "host": os.uname().nodename, "since": now})
    reasons = dict(reap(client, registry))
    assert set(reasons) == {idle, old, orphan}
    assert "idle" in reasons[idle] and "max_age_hours" in reasons[old] and "not to be kept" in reasons[orphan]
    assert sorted(lambda_double.running()) == sorted([fresh, busy])
    assert registry.read()[busy]["last_used"] >= now  # in use counts as used
    terminate(client, [fresh, busy], registry, "test")


def test_reap_forgets_instances_terminated_elsewhere(client, key_name, lambda_double):
    registry = Registry()
    instance_id = _record(client, key_name, registry)
    client.terminate([instance_id])  # e.g. from Lambda's web console
    time.sleep(lambda_double.terminate_seconds + 0.05)
    assert reap(client, registry) == [] and registry.read() == {}


def test_watchdog_once_applies_the_limits(client, key_name, lambda_double):
    registry = Registry()
    _record(client, key_name, registry, last_used=time.time() - 3600, idle_minutes=30)
    assert watch(once=True) == 0
    assert lambda_double.running() == [] and registry.read() == {}


def test_detached_watchdog_terminates_an_idle_instance_and_exits(client, key_name, lambda_double, lambda_env):
    """What `fractal lambda launch` and runs start: a separate process that outlives them."""
    registry = Registry()
    instance_id = _record(client, key_name, registry, idle_minutes=0.5 / 60, watchdog_seconds=0.2)
    proc = subprocess.Popen([sys.executable, "-m", "fractal.cli", "lambda", "watchdog"], env=lambda_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_until(lambda: lambda_double.running() == [], timeout=20), "watchdog did not terminate it"
        assert proc.wait(timeout=10) == 0  # and left once nothing was left to watch
    finally:
        if proc.poll() is None:
            proc.kill()
    output = proc.stdout.read()
    assert instance_id in output and "idle" in output
    assert lambda_double.api_key not in output


def test_registry_survives_a_corrupt_file(lambda_env, caplog):
    registry = Registry()
    registry.path.parent.mkdir(parents=True, exist_ok=True)
    registry.path.write_text("{not json")
    assert registry.read() == {}
    assert "was not valid JSON" in caplog.text
    assert json.loads(registry.path.read_text()) == {}
