"""On-instance autostop (opt-in: lambda.autostop_minutes): a stdlib-only process that fractal
starts on the instance, detached, which terminates the instance through the Lambda API once
no stage has run there for `idle_minutes` (or at `max_age_hours`), whether or not the machine
that launched it is awake.

Why it needs the API key: shutting the OS down does not stop the bill, only the API's
terminate does (docs/lambda.md, "A sleeping laptop: the on-instance autostop"), and the API
has no per-instance key. So the key travels (as SkyPilot's autodown copies it): fractal sends
it on this script's stdin, the script keeps it in memory only (never on disk, never on a
command line), and anyone who can log in to the instance as its user could read it from this
process's memory. That is the trade-off the opt-in accepts; with it off, the watchdog on your
own machine is the only safeguard and it cannot act while that machine sleeps.

Busy means: a stage's process is alive under <root>/runs (no rc file yet). The idle clock
restarts at every fractal connection (prepare touches <root>/autostop/beat) and whenever a
stage's log or exit code is written.

    python3 - <api_url> <instance_id> <root> <idle_minutes> <max_age_hours> <poll_seconds>   (key on stdin)
"""
from __future__ import annotations

import glob
import json
import os
import sys
import time
import urllib.error
import urllib.request


def _call(api_url: str, key: str, method: str, path: str, body: object = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api_url.rstrip("/") + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}
    except (OSError, ValueError):
        return 0, {}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def last_activity(root: str, started: float) -> tuple[bool, float]:
    """(a stage is running now, when anything last happened)"""
    busy, last = False, started
    for pid_file in glob.glob(os.path.join(root, "runs", "*", "*", "pid")):
        run = os.path.dirname(pid_file)
        for name in ("log", "rc"):
            try:
                last = max(last, os.path.getmtime(os.path.join(run, name)))
            except OSError:
                pass
        if not os.path.exists(os.path.join(run, "rc")):
            try:
                busy = busy or _alive(int(open(pid_file).read().strip()))
            except (OSError, ValueError):
                pass
    try:
        last = max(last, os.path.getmtime(os.path.join(root, "autostop", "beat")))
    except OSError:
        pass
    return busy, last


def main(argv: list[str]) -> int:
    api_url, instance_id, root = argv[0], argv[1], argv[2]
    idle_s, max_age_s, poll = float(argv[3]) * 60, float(argv[4]) * 3600, float(argv[5])
    key = sys.stdin.readline().strip()
    started = time.time()
    unreachable_since = None
    while True:
        time.sleep(poll)
        status, doc = _call(api_url, key, "GET", f"/instances/{instance_id}")
        state = (doc.get("data") or {}).get("status")
        if status == 404 or state in ("terminating", "terminated", "preempted") or status == 401:
            return 0  # already gone (or the key was revoked): nothing left to do
        if status == 0:
            unreachable_since = unreachable_since or time.time()
            if time.time() - unreachable_since > 3600:
                return 1
            continue
        unreachable_since = None
        busy, last = last_activity(root, started)
        now = time.time()
        reason = ""
        if max_age_s and now - started >= max_age_s:
            reason = f"older than {max_age_s / 3600:g} h"
        elif not busy and idle_s and now - last >= idle_s:
            reason = f"idle {(now - last) / 60:.1f} min"
        if reason:
            status, doc = _call(api_url, key, "POST", "/instance-operations/terminate", {"instance_ids": [instance_id]})
            sys.stderr.write(f"autostop: terminating {instance_id} ({reason}): HTTP {status}\n")
            sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
