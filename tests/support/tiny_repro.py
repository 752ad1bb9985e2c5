"""One real `dvc repro` of the tiny default profile (12 problems x 10 samples), tracked on a
real MLflow server on loopback, shared by every end-to-end test that starts from it
(tests/conftest.py's session fixtures `mlflow_server` and `tiny_repro`).

What it buys: the repro is the suite's most expensive step (two minutes on a loaded 2-core
machine) and test_pipeline.py and test_tracking.py each ran one of their own, from the same
params and code. Where it stops: the shared repository is read-only. A test that changes it
(an `exp run`, a queue) works on `copy_reproduced(...)`, a copy with its own DVC cache, so that
no test's runs land in another's run-cache and every assertion about which stages ran holds in
any test order. Tests whose first repro must run from other params (test_probe.py's, the BYO
formats, the transformers backend) keep their own.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from repo_copy import copy_repo, shrink_default_profile

ALL_STAGES = ["embed", "generate", "gentests", "label", "prepare", "probe", "rank", "report", "train"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` (SQLite backend, proxied artifacts) on a free loopback port."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 300) -> "MlflowServer":
        """Starts it and waits for /health; RuntimeError with the server's log if it does not
        answer. The wait is long because on a loaded 2-core machine (load 15) the server took
        over 120 s to answer; on a quiet one it answers in seconds."""
        log = open(self.work / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.work}/mlflow.db",
             "--artifacts-destination", str(self.work / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.work / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer: {(self.work / 'server.log').read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=30)


def tracking_env(server: str, **extra: str) -> dict[str, str]:
    """The environment of a user tracking on `server` (experiment "tiny"), none of this
    process's DVC_/MLFLOW_ settings leaking in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    return {**env, "FRACTAL_EXECUTOR": "local", "HF_HUB_OFFLINE": "1", "MLFLOW_TRACKING_URI": server,
            "MLFLOW_EXPERIMENT_NAME": "tiny", **extra}


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """stdout + stderr of a command that must succeed (its tail in the assertion if not)."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout + r.stderr


def ran(output: str) -> list[str]:
    """The stages DVC ran, in its order, from the output of `dvc repro` / `dvc exp run`."""
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class TinyRepro:
    """The reproduced repository (read-only), the stages its one `dvc repro` ran in DVC's
    order, and the MLflow server it was tracked on."""
    repo: Path
    first_ran: list[str]
    server: str


def reproduce_tiny(work: Path, server: str) -> TinyRepro:
    """A fresh copy of the repository, the default profile shrunk, committed, a local DVC
    remote (work/dvc-store) as default, `dvc repro` tracked on `server`, its results committed."""
    repo = work / "repo"
    copy_repo(repo)
    shrink_default_profile(repo)
    run(["dvc", "remote", "add", "-f", "-d", "local", str(work / "dvc-store")], repo, tracking_env(server))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny")
    first = ran(run(["dvc", "repro"], repo, tracking_env(server)))
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "tiny results")
    return TinyRepro(repo, first, server)


def copy_reproduced(src: Path, dst: Path) -> Path:
    """A copy of a reproduced repository (git history, DVC cache and outputs) for a test that
    changes it. DVC's .dvc/tmp (state database, locks, the experiment queue's broker) stays
    behind: DVC remakes it, rehashing the outputs once."""
    shutil.copytree(src, dst, symlinks=True, ignore=lambda folder, names: ["tmp"] if Path(folder) == src / ".dvc" else [])
    return dst
