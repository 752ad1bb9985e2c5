"""The helper fractal runs on the remote host, sent as source over SSH (`python - ARGS <
agent.py`), so it imports nothing outside the standard library.

    follow LOG RC PID OFFSET [OUT...]
        prints a detached stage's log from byte OFFSET as it grows, until the stage's exit-code
        file RC appears or its process PID is gone without one; then writes one JSON line to
        stderr: {"rc": int | null, "manifest": {...}} (the manifest only when rc is 0), so the
        end of the log, the exit code and the outputs' checksums arrive in one round trip.

The end is the exit-code file, not the process: on hosts whose init is slow to reap orphans
a finished stage lingers as a zombie, which `kill -0` and `tail --pid` count as running.
fractal also imports `manifest` here to check the fetched copy against the remote one.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def file_digest(path: Path) -> list[Any]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return [path.stat().st_size, h.hexdigest()]


def manifest(root: str | os.PathLike, outputs: list[str]) -> dict[str, Any]:
    """{output: {"kind": "file" | "dir" | "missing", "files": {relative path: [size, sha256]}}}"""
    result: dict[str, Any] = {}
    for out in outputs:
        path = Path(root) / out
        if path.is_file():
            result[out] = {"kind": "file", "files": {"": file_digest(path)}}
        elif path.is_dir():
            files = {}
            for dirpath, _, names in os.walk(path):
                for n in names:
                    p = Path(dirpath) / n
                    files[p.relative_to(path).as_posix()] = file_digest(p)
            result[out] = {"kind": "dir", "files": files}
        else:
            result[out] = {"kind": "missing", "files": {}}
    return result


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: signal 0 (which counts zombies as alive)
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True


def follow(log: str, rc_file: str, pid: int, offset: int, poll: float = 0.1) -> int | None:
    """Copies the log to stdout until the stage ends; its exit code, or None if it vanished."""
    out = sys.stdout.buffer
    while not os.path.exists(log):  # the launching shell creates it at once; be patient anyway
        if os.path.exists(rc_file) or not alive(pid):
            break
        time.sleep(poll)
    with open(log, "rb") if os.path.exists(log) else open(os.devnull, "rb") as f:
        f.seek(offset)
        while True:
            # Checked before reading: the stage wrote all its output before its exit code.
            done = os.path.exists(rc_file)
            gone = not done and not alive(pid)
            data = f.read(1 << 16)
            while data:
                out.write(data)
                out.flush()
                data = f.read(1 << 16)
            if done or gone:
                break
            time.sleep(poll)
    if not os.path.exists(rc_file):
        return None
    return int(Path(rc_file).read_text().strip())


def main(argv: list[str]) -> int:
    if argv[:1] == ["follow"]:
        log, rc_file, pid, offset, *outs = argv[1:]
        rc = follow(log, rc_file, int(pid), int(offset))
        result = {"rc": rc, "manifest": manifest(".", outs) if rc == 0 else {}}
        sys.stderr.write(json.dumps(result) + "\n")
        return 0
    sys.stderr.write(f"agent: unknown command {argv[:1]}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
