"""Label on a real Ray cluster on loopback: a head and a second node (`ray start`, one CPU
each, separate processes), started once for the module. `dvc repro label` of the tiny
profile on the cluster writes the same data/labels.jsonl, byte for byte, as a local run,
also when the second node's raylet is killed in the middle of the stage, and when the driver
is killed and the stage rerun (which takes the finished batches from the label cache). A
cluster of its own, whose one node is killed under the driver, checks that the stage then
fails at once naming the address."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from fractal.execution.cluster import ClusterError, batches_of, executor_for
from fractal.records import Generation
from repo_copy import copy_repo, shrink_default_profile
from support.remote import wait_until

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install -e '.[ray]'")
psutil = pytest.importorskip("psutil", reason="psutil comes with ray; it finds the second node's raylet")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_start(temp_dir: str, log: Path, *args: str) -> subprocess.Popen:
    """One node, in its own process group (`--block`: this process is the node; its
    group holds every daemon of it, so teardown stops exactly these)."""
    env = {**os.environ, "RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "4",
           "RAY_USAGE_STATS_ENABLED": "0"}
    argv = ["ray", "start", "--block", "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir,
            "--object-store-memory", "100000000", "--dashboard-agent-listen-port", str(_free_port()),
            "--disable-usage-stats", *args]
    return subprocess.Popen(argv, stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if not any(True for p in psutil.process_iter(["pid"]) if _group(p) == proc.pid):
            return


def _group(p) -> int | None:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return None


class _Cluster:
    """A head and a second node, started in a thread, so that the local run the tests
    compare with runs meanwhile; `ready()` waits for both nodes."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="frray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
        self.log = Path(self.temp_dir) / "nodes.log"
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self.nodes: list[subprocess.Popen] = []
        self.failed = ""
        self.thread = threading.Thread(target=self._start, args=(port,), daemon=True)
        self.thread.start()

    def _start(self, port: int) -> None:
        wait_for = ("import ray, sys, time; ray.init(address=sys.argv[1], logging_level='ERROR'); t = time.time()\n"
                    "while sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]) and time.time() - t < 90: time.sleep(0.2)\n"
                    "sys.exit(sum(n['Alive'] for n in ray.nodes()) < int(sys.argv[2]))")
        try:
            self.nodes.append(_ray_start(self.temp_dir, self.log, "--head", "--port", str(port), "--include-dashboard=false"))
            for n in (1, 2):
                if n == 2:
                    self.nodes.append(_ray_start(self.temp_dir, self.log, "--address", self.address))
                if subprocess.run([sys.executable, "-c", wait_for, self.address, str(n)], timeout=150).returncode:
                    self.failed = f"{n} Ray node(s) did not come up"
                    return
        except Exception as e:  # said by ready()
            self.failed = f"{type(e).__name__}: {e}"

    def ready(self) -> "_Cluster":
        self.thread.join(timeout=300)
        assert not self.thread.is_alive() and not self.failed, \
            f"{self.failed or 'the cluster did not start in 300 s'}; {self.log}:\n{self.log.read_text()[-3000:]}"
        return self

    def stop(self) -> None:
        self.thread.join(timeout=300)
        for node in reversed(self.nodes):
            _stop(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = _Cluster()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def tiny():
    """The tiny profile's repository after a local `dvc repro label`, and its labels."""
    repo = Path(tempfile.mkdtemp(prefix="frray-repo-"))
    copy_repo(repo)
    shrink_default_profile(repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], cwd=repo, check=True)
    out = _repro(repo, "label")
    assert "Ray cluster" not in out
    yield repo, (repo / "data/labels.jsonl").read_bytes()
    shutil.rmtree(repo, ignore_errors=True)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "FRACTAL_RAY_ADDRESS"}
    return {**env, "FRACTAL_EXECUTOR": "local", "FRACTAL_TRACKING": "off", "HF_HUB_OFFLINE": "1", **extra}


def _repro(repo: Path, *args: str, **env: str) -> str:
    run = subprocess.run(["dvc", "repro", *args], cwd=repo, env=_env(**env), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, f"dvc repro {' '.join(args)} failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def _relabel_from_scratch(repo: Path, executor_yaml: str) -> list[str]:
    """Without the label cache, with this (untracked) executor config: the label stage
    alone, forced (its inputs are those of the local run)."""
    shutil.rmtree(repo / ".fractal/label-cache", ignore_errors=True)
    (repo / ".fractal").mkdir(exist_ok=True)
    (repo / ".fractal/executor.yaml").write_text(executor_yaml)
    (repo / "data/labels.jsonl").unlink()
    return ["dvc", "repro", "--single-item", "--force", "label"]


def _ray_processes_of(port: int) -> list[str]:
    """Command lines of live processes of the Ray cluster whose head listens on `port`."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        line = " ".join(p.info["cmdline"] or [])
        if f"127.0.0.1:{port}" in line or ("ray.scripts.scripts start" in line and f"--port {port}" in line):
            found.append(line[:200])
    return found


@pytest.mark.slow
def test_label_on_k_lambda_instances_forms_a_ray_cluster_and_terminates_all(tiny, lambda_double, lambda_env, sshd,
                                                                            sshd_client_key, tmp_path):
    """lambda.nodes = 2: two "instances" of the Lambda double (both this machine's loopback
    sshd), a Ray cluster across them started over SSH, label run on the head with the cluster's
    address: the labels of a local run, byte for byte; both instances terminated; no Ray
    process of that cluster left (it runs before this module's own cluster starts)."""
    repo = tmp_path / "repo"
    shutil.copytree(tiny[0], repo, symlinks=True, ignore=lambda d, names: ["tmp"] if d.endswith("/.dvc") else [])
    lambda_double.private_ip = "127.0.0.1"
    port = _free_port()
    label = {"executor": "lambda", "nodes": 2, "ray_cpus": 1, "ray_port": port}
    config = {"stages": {"label": label},
              "lambda": {"instance_types": ["gpu_1x_a100_sxm4"], "ssh_user": sshd.user, "ssh_port": sshd.port,
                         "ssh_key": str(sshd_client_key[0]), "poll_seconds": 0.1, "watchdog": False,
                         "boot_timeout_minutes": 1, "retry_seconds": 0.05},
              "remote": {"root": str(tmp_path / "remote"), "python": sys.executable, "setup": "", "compress": False}}
    argv = _relabel_from_scratch(repo, json.dumps(config))
    env = {k: v for k, v in _env().items() if k != "FRACTAL_EXECUTOR"}
    run = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert f"a Ray cluster of 2 nodes at 127.0.0.1:{port}" in out, out[-3000:]
    assert f"on the Ray cluster at 127.0.0.1:{port} (2 CPUs on 2 node(s))" in out, out[-3000:]
    assert (repo / "data/labels.jsonl").read_bytes() == tiny[1]
    assert len(lambda_double.instances) == 2 and lambda_double.running() == [], lambda_double.instances
    assert "2 instances" in out and "terminated" in out, out[-2000:]
    assert wait_until(lambda: not _ray_processes_of(port), 10), _ray_processes_of(port)


@pytest.mark.slow
def test_label_on_cluster_is_byte_identical_to_local(cluster, tiny):
    repo, local_labels = tiny
    address = cluster.ready().address
    _relabel_from_scratch(repo, f"ray:\n  address: {address}\n  batch: 8\n")
    out = _repro(repo, "--single-item", "--force", "label")
    assert f"on the Ray cluster at {address} (2 CPUs on 2 node(s))" in out, out[-3000:]
    labels = (repo / "data/labels.jsonl").read_bytes()
    assert labels == local_labels and len(labels.splitlines()) == 120


def _cached_rows(repo: Path) -> int:
    """Rows the label cache has committed (0 before the stage made it)."""
    path = repo / ".fractal/label-cache/labels.sqlite"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM labels").fetchone()[0]
    except sqlite3.OperationalError:  # the table is not made yet
        return 0


def _in_the_cache(out: str) -> tuple[int, int]:
    """(in the cache, to run) from the stage's line
    `label: N candidates, D distinct programs, K in the cache, M to run`."""
    found = re.search(r"label: \d+ candidates, (\d+) distinct programs, (\d+) in the cache.*?, (\d+) to run", out)
    assert found, out[-3000:]
    distinct, known, todo = map(int, found.groups())
    assert known + todo == distinct
    return known, todo


@pytest.mark.slow
def test_driver_killed_then_rerun_resumes_from_the_cache(cluster, tiny):
    """The driver (`fractal run label`, with every process of its session) SIGKILLed once some
    batches are in the label cache: the rerun runs only the rest and writes the local run's labels."""
    repo, local_labels = tiny
    address = cluster.ready().address
    _relabel_from_scratch(repo, f"ray:\n  address: {address}\n  batch: 2\n")
    stage = subprocess.Popen(["fractal", "run", "label"], cwd=repo, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while _cached_rows(repo) < 4:
            assert stage.poll() is None, f"the stage ended before 4 labels were cached:\n{stage.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no 4 labels cached in 300 s"
            time.sleep(0.05)
        os.killpg(stage.pid, signal.SIGKILL)
        first, _ = stage.communicate(timeout=60)
    finally:
        if stage.poll() is None:
            os.killpg(stage.pid, signal.SIGKILL)
    assert "on the Ray cluster at" in first, first[-3000:]
    cached = _cached_rows(repo)
    assert 4 <= cached < 111, cached  # 111 distinct programs in the tiny profile
    assert not (repo / "data/labels.jsonl").exists()
    out = _repro(repo, "--single-item", "--force", "label")
    known, todo = _in_the_cache(out)
    assert known == cached and todo == 111 - cached and f"{todo} programs in" in out, out[-3000:]
    assert (repo / "data/labels.jsonl").read_bytes() == local_labels


@pytest.mark.slow
def test_second_node_killed_mid_stage_same_labels(cluster, tiny):
    """Runs last: the cluster has one node after it."""
    repo, local_labels = tiny
    argv = _relabel_from_scratch(repo, "ray:\n  batch: 4\n")
    second = psutil.Process(cluster.ready().nodes[1].pid)
    raylet = next(p for p in second.children(recursive=True) if p.name() == "raylet")
    stage = subprocess.Popen(argv, cwd=repo, env=_env(FRACTAL_RAY_ADDRESS=cluster.address),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # A sandboxed worker under the second node's raylet: a batch is running there.
        deadline = time.monotonic() + 300
        while not any(p.name() == "bwrap" for p in _descendants(raylet)):
            assert stage.poll() is None and time.monotonic() < deadline, "no batch ever ran on the second node"
            time.sleep(0.02)
        raylet.kill()
        out, _ = stage.communicate(timeout=600)
    finally:
        if stage.poll() is None:
            stage.kill()
    assert stage.returncode == 0, out[-4000:]
    assert "was lost" in out and "running it again" in out, out[-4000:]
    assert (repo / "data/labels.jsonl").read_bytes() == local_labels


@pytest.mark.slow
def test_driver_node_killed_fails_at_once_naming_the_address(tiny):
    """A one-node cluster of its own (`ray start` without --block, so its GCS outlives the
    raylet, as on a head where only the raylet dies): its raylet SIGKILLed while the stage
    runs batches there. Every batch would fail the same way; the stage stops at once, with
    one line naming the address."""
    repo, _ = tiny
    temp_dir = tempfile.mkdtemp(prefix="frray1-", dir="/tmp")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = Path(temp_dir) / "node.log"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    head = subprocess.Popen(["ray", "start", "--head", "--port", str(port), "--num-cpus", "1", "--node-ip-address",
                             "127.0.0.1", "--temp-dir", temp_dir, "--include-dashboard=false", "--disable-usage-stats",
                             "--object-store-memory", "100000000", "--dashboard-agent-listen-port", str(_free_port())],
                            stdout=log.open("ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    stage = None
    try:
        assert head.wait(timeout=300) == 0, log.read_text()[-3000:]
        # The node's daemons stay in the process group `ray start` made (its id: head.pid).
        raylet = next(p for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet" and _group(p) == head.pid)
        argv = _relabel_from_scratch(repo, f"ray:\n  address: {address}\n  batch: 2\n")
        stage = subprocess.Popen(argv, cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True)
        deadline = time.monotonic() + 300
        while not any(p.name() == "bwrap" for p in _descendants(raylet)):
            assert stage.poll() is None and time.monotonic() < deadline, "no batch ever ran on the node"
            time.sleep(0.02)
        raylet.kill()
        killed = time.monotonic()
        out, _ = stage.communicate(timeout=300)
        took = time.monotonic() - killed
    finally:
        if stage is not None and stage.poll() is None:
            stage.kill()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
                time.sleep(3)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert stage.returncode != 0
    assert f"label on the Ray cluster at {address}: the Ray node this process joined (its raylet) died" in out, \
        out[-3000:]
    # A batch that was running there may first come back as lost with its node (NodeDiedError)
    # and be submitted once more; none is rerun again and again (it was up to 5 times each).
    inflight = int(re.search(r"up to (\d+) batches in flight", out).group(1))
    assert out.count("running it again") <= inflight + 1 and "is the cluster healthy" not in out, out[-3000:]
    assert took < 60, f"the stage took {took:.0f} s to stop after its node died"


def _descendants(p) -> list:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


def test_unreachable_cluster_fails_at_once_naming_the_address(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .fractal/executor.yaml above
    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    monkeypatch.setenv("FRACTAL_RAY_ADDRESS", address)
    start = time.monotonic()
    with pytest.raises(ClusterError, match=f"FRACTAL_RAY_ADDRESS: no Ray cluster answers at {address}"):
        executor_for("label")
    assert time.monotonic() - start < 10
    monkeypatch.delenv("FRACTAL_RAY_ADDRESS")
    assert executor_for("label") is None  # no address: the stage runs here


def test_batches_group_problems_and_keep_heavy_imports_apart():
    def item(pid: str, i: int, program: str = "def f(): pass") -> tuple[str, Generation]:
        return f"{pid}-{i}", Generation(pid, i, "", program, "replay", "m")

    todo = ([item("a", i) for i in range(3)] + [item("b", 0, "import numpy as np\n")] + [item("b", i) for i in range(1, 6)]
            + [item("c", i) for i in range(2)] + [item("d", 0, "from torch import nn\n")])
    batches = [(heavy, [key for key, _ in b]) for heavy, b in batches_of(todo, 4, ["numpy", "torch"])]
    # Heavy first (both in one batch), then a (3) alone since b (5) does not fit beside it;
    # b split in 4 + 1, its last program joined by c's two.
    assert batches == [(True, ["b-0", "d-0"]), (False, ["a-0", "a-1", "a-2"]), (False, ["b-1", "b-2", "b-3", "b-4"]),
                       (False, ["b-5", "c-0", "c-1"])]
