"""The remote tests' toy repository and process helpers (fixtures built on them: tests/conftest.py).

The toy is a git + DVC repository whose one stage (`fractal run toy`) can run anywhere: here,
on the loopback sshd, or on a Lambda double's "instance".
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

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
