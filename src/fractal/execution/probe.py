"""probe_candidates: every distinct candidate run on its problem's generated test inputs.

    records = probe_candidates(problems, generations, generated_tests, params, sandbox)

What execution-agreement rankers need (CodeT, SRank, MBR-exec): per candidate, what it
returned on each input the model's own tests call (its output signature) and which of
those tests it passes. The problem's real tests never come in.

An input is a call of the entry point on plain data or, where the model's assert wraps
or builds the call (`round(f(x), 2)`, `f(x)[0]`, `g(f(x))`), that expression's text,
evaluated in the candidate's module by the worker's child (worker.py `_invoke`) under the
same per-call limit, as SRank evaluates it; its value comes back as plain data all the same.

How it runs: in the label stage's sandbox (the label section's limits, its warm workers,
`WorkerPool`), one fork per candidate for all its inputs; identical programs of a problem
run once. Passing is decided here, outside the candidate, as judge.py decides: the values
come back as plain data and are compared with `==` against the tests' expected values
(so 1 == 1.0 and [1] != (1,), as CodeT's `assert f(x) == expected` would have it), so no
`__eq__` or forged frame of a candidate reaches another candidate's record, or even its own
verdict beyond the values it returned.

A CPU limit per call (`probe.timeout`, CodeT's 0.1 s per test): the worker's child gives
each call that much user CPU time of its own (an ITIMER_VIRTUAL timer, worker.py
`_call_timer`), reports a call over it as a timeout and goes on with the next, so a
candidate that loops on some inputs still takes one run. A call the timer cannot stop (a long
C call, time in the kernel) is killed at twice its limit by a second timer (SIGPROF), and
is a timeout; the warden's CPU limit for the run (every call's limit, and one more) stops
a candidate that resets the signals. When a run stops at input i that way (or crashes, or
hits the output limit) after inputs before i returned, this driver runs the candidate
again from i; a call that fails while first in its run is recorded ("!timeout", ...) and
the rest of its range runs next, split in two. Reruns go in rounds over the warm pool.
What it costs: a timed-out call its 0.1 s of CPU, once; where it stops: a wall-clock
sleeper spends up to `probe.wall_timeout` (plus the calls' CPU limits) per run.

Record (data/probe.jsonl, one line per generation, in generations order):
    {"problem_id", "sample", "outputs": [sig, ...], "passed": [test index, ...], "status"}
`outputs[i]` is the value returned on inputs[i] as canonical compact JSON of its plain
form (sets and dicts sorted, so equal values have equal signatures), "#" + sha256 of that
text when it is longer than `probe.signature_chars`, or "!" + what happened instead: an
exception's type name, "timeout", "crashed", "memory", "output_limit", "malformed".
`status` is "ok" when the module loaded, else the whole run's failure ("syntax_error",
"error", "timeout", "memory", "crashed", "output_limit"), and then every output is "!"
+ that (an exception at load: "!" + its type name). A problem without generated inputs
runs nothing: its candidates get no outputs and status "ok" (or "syntax_error").

Results are cached by content (program, inputs, tests, limits) under `probe.cache_dir`
(SQLite, committed about every second), so a killed probe resumes where it stopped.
"""
from __future__ import annotations

import collections
import hashlib
import json
import signal
import sqlite3
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

from fractal.execution.cache import cached_or_run
from fractal.execution.judge import _exception_status, _name, end_status
from fractal.execution.labeler import _compile, _cores, _groups
from fractal.execution.pool import WorkerPool
from fractal.execution.wire import decode_plain, encode_plain, parse_frames
from fractal.params import LabelParams, ProbeParams
from fractal.records import Generation, Problem

# Bump when a change here can change a record, so old cache entries are not reused.
PROBE_VERSION = "fractal-probe-2"  # 2: per-call CPU timer in the child


# ---------------------------------------------------------------------------------------
# Signatures and comparison, on decoded (exact builtin) values
# ---------------------------------------------------------------------------------------
def _text(plain: Any) -> str:
    return json.dumps(plain, sort_keys=True, separators=(",", ":"))


def signature(value: Any, max_chars: int) -> str:
    """A decoded value's output signature (see the module doc)."""
    text = _text(encode_plain(value, order=_text))  # sets and dict items sorted: one text per value
    if len(text) > max_chars:
        return "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return text


def _equal(value: Any, expected: Any) -> bool:
    try:
        return bool(value == expected)  # both exact builtin values (or Opaque, equal to nothing)
    except (RecursionError, MemoryError):
        return False


# ---------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------
class ProbeCache:
    """key -> (status, outputs, passed). SQLite in WAL mode, committed about every
    second, so a killed stage loses at most the last second's results."""

    def __init__(self, cache_dir: str | Path):
        path = Path(cache_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path / "probe.sqlite", timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS probe (key TEXT PRIMARY KEY, status TEXT NOT NULL,"
                        " outputs TEXT NOT NULL, passed TEXT NOT NULL)")
        self.pending: list[tuple[str, str, str, str]] = []
        self.last_flush = time.monotonic()

    def get_many(self, keys: list[str]) -> dict[str, tuple[str, list[str], list[int]]]:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            rows = self.db.execute(f"SELECT key, status, outputs, passed FROM probe WHERE key IN "
                                   f"({','.join('?' * len(chunk))})", chunk)
            for key, status, outputs, passed in rows:
                out[key] = (status, json.loads(outputs), json.loads(passed))
        return out

    def put(self, key: str, status: str, outputs: list[str], passed: list[int]) -> None:
        self.pending.append((key, status, json.dumps(outputs), json.dumps(passed)))
        self.flush_if_due(1.0)

    def flush_if_due(self, after: float = 0.5) -> None:
        if self.pending and (len(self.pending) >= 500 or time.monotonic() - self.last_flush > after):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO probe VALUES (?, ?, ?, ?)", self.pending)
            self.pending.clear()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.db.close()


def _limits(params: ProbeParams, sandbox: LabelParams) -> dict:
    """What can change a record (not workers, isolation or cache_dir)."""
    return {"timeout": params.timeout, "load_timeout": params.load_timeout, "wall_timeout": params.wall_timeout,
            "signature_chars": params.signature_chars, "memory_mb": sandbox.memory_mb,
            "max_output_bytes": sandbox.max_output_bytes, "max_result_bytes": sandbox.max_result_bytes,
            "max_processes": sandbox.max_processes, "scratch_mb": sandbox.scratch_mb,
            "recursion_limit": sandbox.recursion_limit}


def probe_key(entry_point: str, program: str, tests: dict, limits: dict) -> str:
    doc = [PROBE_VERSION, entry_point, program, tests["inputs"],
           [[t["input"], t["expected"]] for t in tests["tests"]], limits]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------
@dataclass
class _Job:
    """One distinct program on its problem's inputs, over one run or several."""
    key: str
    generation: Generation
    code: bytes
    inputs: list[str]
    entry_point: str
    expected: list[list[tuple[int, Any]]]  # per input: (test index, decoded expected value)
    outputs: list[str] = field(default_factory=list)
    passed: set[int] = field(default_factory=set)
    status: str = "ok"
    ranges: list[tuple[int, int]] = field(default_factory=list)  # [a, b): inputs still to run

    def record(self) -> tuple[str, list[str], list[int]]:
        return self.status, list(self.outputs), sorted(self.passed)


def probe_candidates(problems: list[Problem], generations: list[Generation], generated_tests: list[dict],
                     params: ProbeParams, sandbox: LabelParams, execute: Callable | None = None) -> list[dict]:
    """One probe record per generation, in the order of `generations` (see the module doc).
    `sandbox`: the label section, whose limits and isolation the runs share. `execute` runs
    what the cache lacks, as `_execute` does here (cluster.py: on Ray)."""
    by_id = {p.problem_id: p for p in problems}
    tests_of = {t["problem_id"]: t for t in generated_tests}
    for g in generations:
        if g.problem_id not in by_id or g.problem_id not in tests_of:
            where = "data/problems.jsonl" if g.problem_id not in by_id else "data/generated_tests.jsonl"
            raise ValueError(f"generation {g.problem_id} #{g.sample} names a problem that {where} does not have; "
                             "were the two made from the same prepare output? (dvc repro)")
    limits = _limits(params, sandbox)
    keys = [probe_key(by_id[g.problem_id].entry_point, g.program, tests_of[g.problem_id], limits)
            for g in generations]
    cache = ProbeCache(params.cache_dir)
    known = cached_or_run("probe", keys, generations, cache,
                          lambda todo: (execute or _execute)(todo, by_id, tests_of, params, sandbox, cache))
    out = []
    for key, g in zip(keys, generations):
        status, outputs, passed = known[key]
        out.append({"problem_id": g.problem_id, "sample": g.sample, "outputs": outputs, "passed": passed,
                    "status": status})
    return out


def _execute(todo: list[tuple[str, Generation]], by_id: dict[str, Problem], tests_of: dict[str, dict],
             params: ProbeParams, sandbox: LabelParams, cache: ProbeCache) -> dict[str, tuple[str, list[str], list[int]]]:
    done: dict[str, tuple[str, list[str], list[int]]] = {}
    expected_of: dict[str, list[list[tuple[int, Any]]]] = {}
    jobs: list[_Job] = []
    for key, g in todo:
        t = tests_of[g.problem_id]
        if g.problem_id not in expected_of:
            per_input: list[list[tuple[int, Any]]] = [[] for _ in t["inputs"]]
            for j, test in enumerate(t["tests"]):
                per_input[test["input"]].append((j, decode_plain(test["expected"])))
            expected_of[g.problem_id] = per_input
        code, syntax = _compile(g.program)
        n = len(t["inputs"])
        if syntax:
            # Compiling runs none of the candidate's code; the sandbox would say the same.
            done[key] = ("syntax_error", ["!syntax_error"] * n, [])
        elif n == 0:
            done[key] = ("ok", [], [])
        else:
            jobs.append(_Job(key, g, code, t["inputs"], by_id[g.problem_id].entry_point, expected_of[g.problem_id],
                             ["!malformed"] * n))
    for key, record in done.items():
        cache.put(key, *record)
    if not jobs:
        return done

    n_workers = params.workers or _cores()
    pool_params = replace(sandbox, workers=n_workers, cache_dir=params.cache_dir)  # hidden from candidates too
    groups, group_of = _groups([j.generation.program for j in jobs], pool_params, n_workers)
    start = time.monotonic()
    runs = calls = 0
    with WorkerPool(pool_params, groups, Path(params.cache_dir) / "logs") as pool, \
            tqdm(total=len(jobs), desc="probe", unit="program", smoothing=0.05) as bar:
        for job in jobs:
            job.ranges = [(0, len(job.inputs))]
        active = list(range(len(jobs)))
        round_no = 0
        while active:
            # One task per pending range; a round ends when all its tasks have.
            tasks = []
            for i in active:
                tasks += [_task(jobs[i], i, r, round_no, group_of[i], params, sandbox) for r in jobs[i].ranges]
                jobs[i].ranges = []
            inflight = collections.Counter(t["job"] for t in tasks)
            again = []
            for task, header, payload in pool.run(tasks, idle=cache.flush_if_due):
                if header.get("progress"):
                    continue  # a probe needs every output: runs go to their end
                i = task["job"]
                job = jobs[i]
                runs += 1
                calls += _take(job, task["range"], header, payload, params)
                inflight[i] -= 1
                if inflight[i]:
                    continue
                if job.ranges:
                    again.append(i)
                else:
                    done[job.key] = job.record()
                    cache.put(job.key, *done[job.key])
                    bar.update(1)
            active = again
            round_no += 1
    elapsed = time.monotonic() - start
    print(f"probe: ran {len(jobs)} programs in {elapsed:.1f}s ({len(jobs) / max(elapsed, 1e-9):.0f}/s), "
          f"{runs} runs ({runs - len(jobs)} after a failed call, in {round_no} rounds), {calls} calls "
          f"({calls / max(elapsed, 1e-9):.0f}/s) on {n_workers} sandboxed workers", file=sys.stderr)
    return done


def _task(job: _Job, index: int, span: tuple[int, int], round_no: int, group: int, params: ProbeParams,
          sandbox: LabelParams) -> dict:
    g = job.generation
    a, b = span
    return {
        "id": (index * 1_000_000 + a) * 1000 + round_no % 1000,  # unique per run
        "job": index,
        "range": span,
        "group": group,
        # The worker keeps each "problem"'s inputs: a run over another range is a problem of its own.
        "problem_id": f"{g.problem_id}@{a}:{b}",
        "program": g.program,
        "code": job.code,
        "entry_point": job.entry_point,
        "calls": "[" + ",".join(job.inputs[a:b]) + "]",
        # Each call has `timeout` of its own in the child; the run's limits leave room for all.
        "time_limit": params.wall_timeout + params.timeout * (b - a),
        "cpu_limit": params.load_timeout + params.timeout * (b - a + 1),
        "calls_cpu_limit": params.timeout * (b - a + 1),
        "call_cpu_limit": params.timeout,
        "max_output_bytes": sandbox.max_output_bytes,
        "max_result_bytes": sandbox.max_result_bytes,
    }


def _take(job: _Job, span: tuple[int, int], header: dict, payload: bytes, params: ProbeParams) -> int:
    """Folds one run over inputs [a, b) into the job and adds the ranges still to run; the
    calls it returned. A run that stops after some calls returned goes on from the
    failing call (a run of its own, so it gets the limit to itself); a call that fails
    first in its run is recorded, and the rest of the range is split in two, so a
    candidate failing on many inputs takes few rounds."""
    a, b = span
    frames, _ = parse_frames(payload)
    first = frames[0] if frames else None
    if first is not None and "load" in first:
        results = [f for f in frames[1:] if "r" in f or "x" in f or "t" in f][: b - a]
        for k, frame in enumerate(results):
            job.outputs[a + k] = _output(frame, job.expected[a + k], job.passed, params)
        stop = a + len(results)
        if stop == b:
            return len(results)
        if header.get("end") == "signal" and header.get("code") == signal.SIGPROF:
            # The child's second per-call timer killed it (worker.py _call_timer): call `stop`
            # ran twice its limit where the first timer could not stop it; a timeout.
            job.outputs[stop] = "!timeout"
            if stop + 1 < b:
                job.ranges.append((stop + 1, b))
            return len(results)
        if results:
            job.ranges.append((stop, b))
        else:
            job.outputs[stop] = "!" + _failure(header)
            job.ranges += _halves(stop + 1, b)
        return len(results)
    # The module did not load (or the run ended before it had).
    if first is not None and "syntax" in first:
        why = "syntax_error"
    elif first is not None and "x" in first:
        status, name = _exception_status(_name(first["x"]))
        why = "memory" if status == "memory" else name
    elif first is None:
        why = _failure(header)
    else:
        why = "malformed"
    if span == (0, len(job.inputs)):  # the first run: the module itself fails
        job.status = why if why in ("syntax_error", "memory", "timeout", "crashed", "output_limit") else "error"
        job.outputs = ["!" + why] * len(job.inputs)
    else:  # it loaded before: count this run's failure against its first input
        job.outputs[a] = "!" + why
        job.ranges += _halves(a + 1, b)
    return 0


def _halves(a: int, b: int) -> list[tuple[int, int]]:
    if b - a <= 0:
        return []
    if b - a == 1:
        return [(a, b)]
    m = (a + b) // 2
    return [(a, m), (m, b)]


def _failure(header: dict) -> str:
    status, _ = end_status(header, 0.0)
    return status if status in ("timeout", "output_limit", "crashed") else "crashed"


def _output(frame: dict, expected: list[tuple[int, Any]], passed: set[int], params: ProbeParams) -> str:
    """The signature of one call's result; the tests on its input it passed go into `passed`."""
    if "t" in frame:
        return "!timeout"  # the call used its own CPU limit (worker.py _call_timer)
    if "x" in frame:
        status, name = _exception_status(_name(frame["x"]))
        return "!memory" if status == "memory" else "!" + name
    try:
        value = decode_plain(frame["r"])
        sig = signature(value, params.signature_chars)
    except (ValueError, RecursionError):  # MalformedPlainData; nested deeper than any encoding
        return "!malformed"
    passed.update(j for j, e in expected if _equal(value, e))
    return sig
