"""Fixtures for the remote executor tests: a real OpenSSH server on loopback, the Lambda API
double, and a tiny git + DVC repository whose one stage (`fractal run toy`) can run anywhere.

The sshd is Debian's openssh-server, started by the tests as a child process with its own
config, host key and authorized_keys in a temp dir (CI installs it: apt-get install
openssh-server rsync). Test modules import these fixtures with `from conftest_remote import *`.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from fractal.remote.double import LambdaDouble, LoopbackSSHD, make_keypair

__all__ = ["sshd_client_key", "sshd", "lambda_double", "lambda_env", "lambda_repo", "run_fractal", "ToyRepo",
           "FRACTAL_SRC"]

FRACTAL_SRC = Path(__file__).resolve().parents[1] / "src"

_missing = [tool for tool in ("sshd", "rsync", "ssh", "ssh-keygen", "git")
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]


@pytest.fixture(scope="session")
def sshd_client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The key the tests log in with: (private key path, public key line)."""
    return make_keypair(tmp_path_factory.mktemp("client-key"))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, sshd_client_key: tuple[Path, str]) -> LoopbackSSHD:
    if _missing:
        pytest.skip(f"needs {', '.join(_missing)} (apt-get install openssh-server rsync git)")
    server = LoopbackSSHD(tmp_path_factory.mktemp("sshd"), [sshd_client_key[1]]).start()
    yield server
    server.stop()


@pytest.fixture
def lambda_double() -> LambdaDouble:
    """The Lambda API double; a test fails if it leaves any instance running."""
    double = LambdaDouble({"lk-" + secrets.token_hex(20)}, boot_seconds=0.3, terminate_seconds=0.1).start()
    double.api_key = next(iter(double.api_keys))  # type: ignore[attr-defined]
    yield double
    leaked = double.running()
    double.stop()
    assert not leaked, f"instances left running in the Lambda double: {leaked}"


@pytest.fixture
def lambda_env(lambda_double: LambdaDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of a user whose Lambda is the double, with state in a temp FRACTAL_HOME."""
    for name in ("FRACTAL_EXECUTOR", "FRACTAL_EXECUTOR_CONFIG", "DVC_EXP_NAME", "DVC_STAGE", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAMBDA_API_KEY", lambda_double.api_key)
    monkeypatch.setenv("FRACTAL_LAMBDA_API_URL", lambda_double.url)
    monkeypatch.setenv("FRACTAL_HOME", str(tmp_path / "fractal-home"))
    return dict(os.environ)


TOY_STAGE = '''\
"""toy: uppercases data/input.txt -> out/result.txt, out/parts/, metrics.json"""
import json, os, pathlib, sys, time

import yaml

steps = yaml.safe_load(open("params.yaml"))["toy"]["steps"]
cfg = json.load(open("data/config.json"))
print(f"toy running in {os.getcwd()} on {os.uname().nodename}", flush=True)
print(f"TOY_SECRET={os.environ.get('TOY_SECRET', '-')} api key visible: {'LAMBDA_API_KEY' in os.environ}")
for i in range(steps):
    print(f"step {i}", flush=True)
    time.sleep(cfg.get("sleep", 0))
out = pathlib.Path("out")
(out / "parts").mkdir(parents=True, exist_ok=True)
if cfg.get("fail"):
    (out / "result.txt").write_text("half")
    print("toy: failing on purpose", file=sys.stderr)
    sys.exit(3)
(out / "result.txt").write_text(open("data/input.txt").read().upper())
for j in range(3):
    (out / "parts" / f"{j}.txt").write_text(str(j) * 1000)
json.dump({"chars": len(open("data/input.txt").read()), "where": os.getcwd()}, open("metrics.json", "w"))
print("toy: done", flush=True)
'''

TOY_DVC = '''\
stages:
  toy:
    cmd: fractal run toy
    deps:
      - stages/toy.py
      - data/input.txt
      - data/config.json
    params:
      - toy.steps
    outs:
      - out/result.txt
      - out/parts
    metrics:
      - metrics.json:
          cache: false
'''


class ToyRepo:
    """A git + DVC repository with one stage, configured to run it on the double."""

    def __init__(self, path: Path, remote_root: Path):
        self.path = path
        self.remote_root = remote_root

    def write_config(self, executor: str = "lambda", **lambda_settings: object) -> None:
        cfg = {"executor": executor, "lambda": self.lambda_settings | lambda_settings, "remote": self.remote,
               "ssh": self.ssh}
        (self.path / ".fractal").mkdir(exist_ok=True)
        (self.path / ".fractal" / "executor.yaml").write_text(json.dumps(cfg, indent=1))

    def set_stage(self, **config: object) -> None:
        (self.path / "data" / "config.json").write_text(json.dumps(config))

    def outputs(self) -> dict[str, object]:
        """Each output: its content, or None when absent."""
        result = self.path / "out" / "result.txt"
        parts = self.path / "out" / "parts"
        metrics = self.path / "metrics.json"
        return {"out/result.txt": result.read_text() if result.exists() else None,
                "out/parts": sorted(p.name for p in parts.iterdir()) if parts.exists() else None,
                "metrics.json": metrics.read_text() if metrics.exists() else None}

    def assert_complete_or_absent(self) -> None:
        out = self.outputs()
        assert out["out/result.txt"] in (None, "HELLO FRACTAL\n"), out
        assert out["out/parts"] in (None, ["0.txt", "1.txt", "2.txt"]), out
        if out["out/parts"]:
            assert all((self.path / "out/parts" / f"{j}.txt").read_text() == str(j) * 1000 for j in range(3))


@pytest.fixture
def lambda_repo(tmp_path: Path, lambda_env: dict[str, str], sshd: LoopbackSSHD,
                sshd_client_key: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> ToyRepo:
    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "stages" / "toy.py").write_text(TOY_STAGE)
    (repo / "dvc.yaml").write_text(TOY_DVC)
    (repo / "params.yaml").write_text("toy:\n  steps: 2\n")
    (repo / "data" / "input.txt").write_text("hello fractal\n")
    (repo / ".gitignore").write_text(".fractal/\n")
    toy = ToyRepo(repo, tmp_path / "remote")
    toy.set_stage(sleep=0)
    toy.lambda_settings = {
        "instance_types": ["gpu_1x_a100_sxm4"], "ssh_user": sshd.user, "ssh_port": sshd.port,
        "ssh_key": str(sshd_client_key[0]), "poll_seconds": 0.1, "watchdog": False, "boot_timeout_minutes": 1, "retry_seconds": 0.05,
    }
    toy.remote = {"root": str(toy.remote_root), "python": sys.executable, "setup": "", "compress": False,
                  "reconnect_minutes": 0.5}
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_pub}\n")
    toy.ssh = {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "identity_file": str(sshd_client_key[0]),
               "known_hosts": str(known_hosts)}
    toy.write_config()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "toy"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    return toy


def run_fractal(args: list[str], cwd: Path, on_line: Callable[[str, subprocess.Popen[str]], None] | None = None,
                timeout: float = 120, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Runs a command (`fractal ...` or `dvc ...`) as a real process, stdout and stderr merged;
    on_line sees each line as it arrives (to cut the connection or press Ctrl-C mid-stage)."""
    proc = subprocess.Popen(args, cwd=cwd, env=env or dict(os.environ), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc)
        rc = proc.wait()
    finally:
        timer.cancel()
    return rc, "".join(lines)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


__all__ += ["wait_until", "TOY_STAGE", "TOY_DVC"]
