"""The probe stage's speed on the current profile's stage outputs, cold (a fresh cache):
distinct programs/s and calls/s, in one run.

    dvc repro gentests generate          # data/problems.jsonl, generations.jsonl, generated_tests.jsonl
    python speed/probe_rate.py      # the probe params of params.yaml; --workers N to override

The figures are wall-clock, from the moment the stage's work starts to its last record,
and depend on what else the machine is doing: the machine's load average is printed
with them. The target (issue 19): the default profile's probe in at most 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys
import tempfile
import time

from fractal import params
from fractal.execution.probe import probe_candidates
from fractal.records import Generation, Problem, read_jsonl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=None, help="sandboxed workers (default: probe.workers)")
    args = ap.parse_args()
    probe_params = params.load("probe")
    problems = read_jsonl("data/problems.jsonl", Problem)
    generations = read_jsonl("data/generations.jsonl", Generation)
    tests = read_jsonl("data/generated_tests.jsonl")
    n_inputs = {t["problem_id"]: len(t["inputs"]) for t in tests}
    distinct = {(g.problem_id, g.program) for g in generations}
    calls = sum(n_inputs[pid] for pid, _ in distinct)
    with tempfile.TemporaryDirectory(prefix="probe-bench-") as cache:
        p = dataclasses.replace(probe_params, cache_dir=cache)
        if args.workers is not None:
            p = dataclasses.replace(p, workers=args.workers)
        load_before = os.getloadavg()[0]
        cpu_before = _cpu_seconds()
        start = time.monotonic()
        records = probe_candidates(problems, generations, tests, p, sandbox=params.load("label"))
        elapsed = time.monotonic() - start
        cpu = _cpu_seconds() - cpu_before
    cores = len(os.sched_getaffinity(0))
    print(f"probe_rate: {len(records)} candidates, {len(distinct)} distinct programs, {calls} calls "
          f"(distinct programs x their problem's inputs) in {elapsed:.1f} s on {p.workers or cores} workers, "
          f"{cores} cores: {len(distinct) / elapsed:.0f} distinct programs/s, {calls / elapsed:.0f} calls/s; "
          f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    # The CPU time of this process and of the workers and candidates (all reaped by the time
    # the pool has closed) does not grow with the machine's load: on `cores` idle cores the
    # stage cannot take less than cpu / cores, and takes about that when the work spreads.
    print(f"probe_rate: {cpu:.0f} CPU seconds (driver, workers and candidates): "
          f"{cpu / cores:.0f} s of wall clock on {cores} idle cores at best")
    return 0


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
