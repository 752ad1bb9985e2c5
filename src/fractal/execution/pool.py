"""A pool of warm sandboxed workers, fed tasks over pipes.

Workers come in groups that differ in what they preload (the light group, one worker per
core, and a heavy group for candidates that import numpy or torch); a task names its
group and only that group's workers run it. All groups start at once and a worker takes
tasks as soon as it is ready, so the heavy workers' slow imports overlap the light work.
Each worker gets up to two tasks at a time, so it starts the next candidate while the
labeler judges the last.

A worker that dies, stops answering, or finds itself tampered with (worker.py: it then
answers its task with {"end": "worker", "replace": 1} and exits) is replaced, as often as
that happens: there is no ceiling a few hostile candidates could reach to stop the stage.
The tasks queued behind the one it was running are sent again; that one is run once more,
on whichever worker takes it next, and charged (the end `worker`) only if it breaks a
worker again. So a candidate that breaks workers costs its own label and two restarts,
and no other candidate is charged for a worker it did not break.
"""
from __future__ import annotations

import collections
import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

from fractal.execution import wire, worker as worker_module
from fractal.execution.isolation import Sandbox, make_sandbox
from fractal.params import LabelParams

_DEPTH = 2  # tasks queued per worker
_SLACK = 10.0  # seconds beyond a task's longest run (_longest) before a silent worker counts as hung
_START_TIMEOUT = 60.0
_WIRE = ("id", "problem_id", "entry_point", "time_limit", "cpu_limit", "calls_cpu_limit", "call_cpu_limit", "max_output_bytes",
         "max_result_bytes")


def _longest(task: dict) -> float:
    """The longest a task can run: its wall limit plus the time waited for a CPU that the
    warden does not count (worker._WAIT_CREDIT times the limit at most)."""
    return (1 + worker_module._WAIT_CREDIT) * task["time_limit"]


class WorkerStartError(RuntimeError):
    pass


class _Worker:
    """One sandboxed worker process. It starts in the background: `info` is None until
    its ready frame has arrived (see `WorkerPool.run`)."""

    def __init__(self, index: int, group: int, params: LabelParams, log_dir: Path, preload: list[str]):
        self.index = index
        self.group = group
        self.preload = preload
        self.sandbox: Sandbox = make_sandbox(params, index)
        config = {
            "scratch": self.sandbox.scratch,
            "preload": preload,
            "uid": self.sandbox.uid,
            "wire_source": Path(wire.__file__).read_text(encoding="utf-8"),  # the worker imports no fractal
            "limits": {
                "memory_bytes": params.memory_mb * 1024 * 1024,
                "max_processes": params.max_processes,
                "max_file_bytes": params.scratch_mb * 1024 * 1024,
                "recursion_limit": params.recursion_limit,
            },
        }
        script = Path(worker_module.__file__).read_text(encoding="utf-8")
        argv = self.sandbox.prefix + [sys.executable, "-s", "-B", "-c", script, json.dumps(config)]
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"worker-{index}.log"
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=self.sandbox.env or None,  # bwrap clears the environment inside itself
            cwd=self.sandbox.cwd,
            start_new_session=True,  # a Ctrl-C reaches the labeler, which stops the workers
        )
        self.fd = self.proc.stdout.fileno()
        os.set_blocking(self.fd, False)
        self.buf = bytearray()
        self.inflight: collections.deque[dict] = collections.deque()
        self.started = time.monotonic()
        self.head_since = self.started
        self.info: dict | None = None
        self.known_problems: set[str] = set()  # whose test inputs this worker has

    def take_ready(self, frames: list[bytes]) -> list[bytes]:
        """Consumes the ready frame at the head of `frames` (if not ready yet)."""
        if self.info is None and frames:
            self.info, _ = wire.read_message(frames[0])
            self.head_since = time.monotonic()
            return frames[1:]
        return frames

    def start_failed(self, why: str) -> WorkerStartError:
        self.kill()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        return WorkerStartError(f"sandboxed worker {self.index} {why}; its log {self.log_path} ends with:\n{tail}")

    def _read_frames(self) -> list[bytes] | None:
        """Complete frames read so far; None once the worker has closed its end."""
        closed = False
        while True:
            try:
                b = os.read(self.fd, 1 << 20)
            except BlockingIOError:
                break
            if not b:
                closed = True
                break
            self.buf += b
        frames = wire.take_frames(self.buf)
        if closed and not frames:
            return None
        return frames

    def send(self, task: dict) -> None:
        """The task's JSON line, then its code object (marshalled) if the labeler compiled
        it, else the source goes in the JSON; the test inputs go along the first time."""
        if not self.inflight:
            self.head_since = time.monotonic()
        self.inflight.append(task)
        header = {k: task[k] for k in _WIRE if k in task}
        if task["problem_id"] not in self.known_problems:
            header["calls"] = task["calls"]
            self.known_problems.add(task["problem_id"])
        code = task.get("code", b"")
        if not code:
            header["program"] = task["program"]
        self.proc.stdin.write(wire.frame(wire.message(header, code)))
        self.proc.stdin.flush()

    def kill(self, grace: float = 0.0) -> None:
        """Stops the worker: with grace, by closing its input (it exits when idle, so its
        CPU time is accounted to us); then, or at once, by killing bwrap, whose
        --die-with-parent takes the whole sandbox down with it."""
        if grace and self.proc.poll() is None and not self.inflight:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        self.log.close()


class WorkerPool:
    """Workers in groups: `groups` lists (preload, number of workers) and a task's "group"
    is an index into it."""

    def __init__(self, params: LabelParams, groups: list[tuple[list[str], int]], log_dir: Path):
        self.params = params
        self.log_dir = log_dir
        self.groups = groups
        self.workers: list[_Worker] = []
        try:
            for g, (preload, n) in enumerate(groups):
                for _ in range(n):
                    self.workers.append(_Worker(len(self.workers), g, params, log_dir, preload))
        except BaseException:
            self.close()
            raise
        self.restarts = 0
        self.retried: set[int] = set()  # ids of tasks already run again after breaking a worker

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None and not w.inflight:
                try:
                    w.proc.stdin.close()  # idle workers exit on their own
                except OSError:
                    pass
        for w in self.workers:
            # One still importing its preload (it had no tasks) is not worth waiting for.
            w.kill(grace=5.0 if w.info is not None else 0.0)

    def run(self, tasks: Iterable[dict], idle: Callable[[], None] = lambda: None) -> Iterator[tuple[dict, dict, bytes]]:
        """Yields (task, header, payload) for every task, in completion order; before that,
        for slow tasks, progress items (header["progress"]) with the results so far."""
        pending: list[collections.deque] = [collections.deque() for _ in self.groups]
        for task in tasks:
            pending[task.get("group", 0)].append(task)
        sel = selectors.DefaultSelector()
        for w in self.workers:
            sel.register(w.fd, selectors.EVENT_READ, w)
        try:
            while any(pending) or any(w.inflight for w in self.workers):
                for w in list(self.workers):
                    queue = pending[w.group]
                    while w.info is not None and queue and len(w.inflight) < _DEPTH:
                        task = queue.popleft()
                        try:
                            w.send(task)
                        except (BrokenPipeError, OSError):
                            yield from self._replace(w, sel, pending, "worker died")
                            break
                ready = sel.select(timeout=0.5)
                if not ready:
                    idle()  # nothing to read for a while: a chance to save what is done
                for key, _ in ready:
                    w = key.data
                    frames = w._read_frames()
                    if frames is None:
                        if w.info is None:
                            raise w.start_failed("did not start")
                        yield from self._replace(w, sel, pending, "worker died")
                        continue
                    for frame in w.take_ready(frames):
                        header, payload = wire.read_message(frame)
                        if header.get("progress"):
                            if w.inflight and w.inflight[0]["id"] == header["id"]:
                                yield w.inflight[0], header, payload
                            continue
                        task = w.inflight[0]
                        if header["id"] != task["id"]:
                            raise RuntimeError(f"sandboxed worker {w.index} answered task {header['id']} "
                                               f"while {task['id']} was due; see {w.log_path}")
                        if header.get("replace"):
                            yield from self._replace(w, sel, pending, header.get("detail", "worker broken"))
                            break
                        w.inflight.popleft()
                        w.head_since = time.monotonic()
                        yield task, header, payload
                now = time.monotonic()
                for w in list(self.workers):
                    if w.info is None:
                        if now - w.started > _START_TIMEOUT:
                            raise w.start_failed(f"did not start within {_START_TIMEOUT:g} s")
                    elif w.inflight and now - w.head_since > _longest(w.inflight[0]) + _SLACK:
                        yield from self._replace(w, sel, pending, "worker hung")
        finally:
            sel.close()

    def stop(self, task: dict) -> None:
        """Ends a running task early (its verdict is known from its partial results)."""
        for w in self.workers:
            if w.inflight and w.inflight[0]["id"] == task["id"]:
                try:
                    w.proc.stdin.write(wire.frame(wire.message({"stop": task["id"]})))
                    w.proc.stdin.flush()
                except OSError:
                    pass  # a dead worker is noticed and replaced by run()

    def _replace(self, w: _Worker, sel: selectors.BaseSelector, pending: list[collections.deque], why: str):
        try:
            sel.unregister(w.fd)
        except (KeyError, ValueError):
            pass
        w.kill()
        inflight = list(w.inflight)
        self.restarts += 1
        fresh = _Worker(w.index, w.group, self.params, self.log_dir, w.preload)
        self.workers[self.workers.index(w)] = fresh
        sel.register(fresh.fd, selectors.EVENT_READ, fresh)
        if inflight:
            # The head task was running when the worker went; the rest never started.
            pending[w.group].extendleft(reversed(inflight[1:]))
            head = inflight[0]
            if head["id"] not in self.retried:
                self.retried.add(head["id"])
                pending[w.group].appendleft(head)
            else:
                yield head, {"end": "worker", "code": 0, "duration": 0.0, "detail": why}, b""
