"""Where a stage runs: `fractal run STAGE` picks local, an SSH host or a Lambda instance from
FRACTAL_EXECUTOR or .fractal/executor.yaml (fractal.remote.config) and starts stages/STAGE.py
there with the same argv.

The local case runs the script here through fractal.stage (an error the user can fix prints
one line, not a traceback) and imports nothing of fractal.remote but its config. The remote
cases hand over to fractal.remote: executor.run_on_ssh_host, lambda_run.run_on_lambda.
SIGTERM and SIGHUP unwind a remote run like Ctrl-C (`interrupts_raise`), so what it launched
is terminated; every error a remote run can report is one line and exit code 1.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("fractal.remote")  # what remote.executor.configure_logging shows


def run_stage(stage: str, argv: list[str]) -> int:
    """What `fractal run STAGE ARGS...` does; returns the exit code for DVC."""
    from fractal.remote.config import ConfigError, load_config

    script = Path("stages") / f"{stage}.py"
    if not script.exists():
        known = ", ".join(sorted(p.stem for p in Path("stages").glob("*.py")))
        print(f"fractal run: {script} not found (run from the repository root; stages: {known})", file=sys.stderr)
        return 2
    try:
        cfg = load_config()
        executor = cfg.executor_for(stage)
    except ConfigError as e:
        for line in str(e).splitlines():  # one per problem in the executor file
            print(f"fractal run: {line}", file=sys.stderr)
        return 2
    if executor == "local":
        return subprocess.call([sys.executable, "-m", "fractal.stage", f"stages/{stage}.py", *argv])
    return _run_remote(stage, argv, executor, cfg)


def _run_remote(stage: str, argv: list[str], executor: str, cfg: Any) -> int:
    from fractal.dvcfile import StageError
    from fractal.remote.api import LambdaAPIError
    from fractal.remote.config import ConfigError
    from fractal.remote.executor import configure_logging, run_on_ssh_host
    from fractal.remote.ssh import RemoteError

    configure_logging()
    try:
        with interrupts_raise():
            if executor == "ssh":
                return run_on_ssh_host(stage, argv, cfg)
            from fractal.remote.lambda_run import run_on_lambda
            return run_on_lambda(stage, argv, cfg)
    except KeyboardInterrupt:
        log.error("%s: interrupted", stage)
        return 130
    except (RemoteError, StageError, ConfigError, LambdaAPIError) as e:  # each carries its own advice
        log.error("%s", e)
        return 1


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP (dvc queue kill, a closed terminal) unwind like Ctrl-C, so the
    cleanup that terminates instances runs for them too."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
