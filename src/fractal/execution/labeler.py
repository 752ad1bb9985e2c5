"""label_candidates: every generation executed (once per distinct program) and judged."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import marshal
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from fractal.execution.cache import LabelCache, cached_or_run, label_key, limits_of
from fractal.execution.isolation import mode_of
from fractal.execution.judge import COUNTED, JUDGED, TestPlan, judge, plan_tests
from fractal.execution.pool import WorkerPool
from fractal.params import LabelParams
from fractal.records import Generation, Label, Problem



_LIMIT = re.compile(r"^((?:CPU )?limit )([0-9.e+-]+)s(.*)$")


def stable_detail(verdict: tuple[str, str], params: LabelParams) -> tuple[str, str]:
    """A timeout's detail names its limit. A limit set by params (a floor, the cap) keeps its
    seconds; one derived from the reference's measured runtime is named by its rule, since
    the measured runtime changes with the machine and its load, and a detail that carried it
    would make data/labels.jsonl differ between machines for the same inputs and params."""
    status, detail = verdict
    m = _LIMIT.match(detail) if status == "timeout" else None
    if m is None:
        return verdict
    fixed = {round(x, 3) for x in (params.timeout_floor, params.timeout_cpu_floor, params.timeout_calls_cpu_floor,
                                   params.timeout_cap)}
    if float(m.group(2)) in fixed:
        return verdict
    return status, f"{m.group(1)}{params.timeout_factor:g}x the reference's runtime{m.group(3)}"

def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def label_candidates(problems: list[Problem], generations: list[Generation], params: LabelParams,
                     execute: Callable | None = None) -> list[Label]:
    """One Label per generation, in the order of `generations`.

    Identical programs of a problem run once; labels already in the cache (same program,
    tests, reference and limits, obtained at least as confined as this run) are not run
    again. Candidates of a problem whose tests cannot judge them (`untestable`,
    `no_reference`: see judge.py) are not run: status error, detail "excluded: STATUS";
    problem_statuses() says which problems those are, and which count in pass rates.
    `execute` runs what the cache lacks, as `_execute` does here (cluster.py: on Ray).
    """
    by_id = {p.problem_id: p for p in problems}
    missing = sorted({g.problem_id for g in generations} - set(by_id))
    if missing:
        raise ValueError(f"{len(missing)} generation(s) name problems that are not given (first: {missing[0]}); "
                         "were generations made from another prepare output?")
    limits = limits_of(params)
    keys = [label_key(by_id[g.problem_id], g.program, limits) for g in generations]
    cache = LabelCache(params.cache_dir, mode_of(params))
    known = cached_or_run("label", keys, generations, cache,
                          lambda todo: (execute or _execute)(todo, by_id, params, cache),
                          cache_note=f" ({cache.isolation})")
    plans = plan_problems([by_id[pid] for pid in sorted({g.problem_id for g in generations})])
    _list_odd_problems(plans)
    labels = []
    for key, g in zip(keys, generations):
        plan = plans[g.problem_id]
        if plan.status not in JUDGED:
            labels.append(Label(g.problem_id, g.sample, "error", False, 0.0, f"excluded: {plan.status}"))
            continue
        status, detail, duration = known[key]
        labels.append(Label(g.problem_id, g.sample, status, status == "passed", duration, detail))
    return labels


_plans: dict[str, TestPlan] = {}


def plan_problems(problems: list[Problem]) -> dict[str, TestPlan]:
    """Each problem's recorded test calls and status (judge.plan_tests), once per process
    and problem content."""
    out = {}
    for problem in tqdm(problems, desc="label: record tests", unit="problem", leave=False):
        memo = json.dumps(dataclasses.asdict(problem), sort_keys=True)
        if memo not in _plans:
            _plans[memo] = plan_tests(problem)
        out[problem.problem_id] = _plans[memo]
    return out


def problem_statuses(problems: list[Problem]) -> dict[str, tuple[str, str]]:
    """(status, why) of every problem: ok, recorded_without_reference (both count in pass
    rates), reference_failed (judged, not counted), untestable, no_reference (not run)."""
    return {pid: (plan.status, plan.why) for pid, plan in plan_problems(problems).items()}


def _list_odd_problems(plans: dict[str, TestPlan]) -> None:
    by_status: dict[str, list[str]] = {}
    for pid, plan in plans.items():
        if plan.status != "ok":
            by_status.setdefault(plan.status, []).append(pid)
    for status, pids in sorted(by_status.items()):
        plan = plans[pids[0]]
        effect = ("counted in the pass rates" if status in COUNTED else
                  "judged, excluded from the pass rates" if status in JUDGED else "not run, excluded from the pass rates")
        print(f"label: {len(pids)} problem(s) {status} ({plan.why}; {effect}): {', '.join(pids[:20])}"
              f"{' ...' if len(pids) > 20 else ''}", file=sys.stderr)


def _execute(todo: list[tuple[str, Generation]], by_id: dict[str, Problem], params: LabelParams,
             cache: LabelCache) -> dict[str, tuple[str, str, float]]:
    n_workers = params.workers or _cores()
    groups, group_of = _groups([g.program for _, g in todo], params, n_workers)
    out: dict[str, tuple[str, str, float]] = {}
    start = time.monotonic()
    # The workers start (and import their preloads) while the tests are recorded and the
    # programs compiled here.
    with WorkerPool(params, groups, Path(params.cache_dir) / "logs") as pool:
        plans = plan_problems([by_id[pid] for pid in sorted({g.problem_id for _, g in todo})])
        calls_json = {pid: plan.calls_json for pid, plan in plans.items()}
        tasks = []
        for i, (key, g) in enumerate(todo):
            plan = plans[g.problem_id]
            if plan.status not in JUDGED:
                continue  # nothing to learn from running it (label_candidates says why)
            code, syntax = _compile(g.program)
            if syntax:
                # Compiling runs none of the candidate's code, so it need not go to the
                # sandbox (the child would report the same error from the same compiler).
                out[key] = ("syntax_error", syntax, 0.0)
                cache.put(key, "syntax_error", syntax, 0.0)
                continue
            tasks.append({
                "id": i,
                "key": key,
                "group": group_of[i],
                "problem_id": g.problem_id,
                "program": g.program,
                "code": code,
                "entry_point": plan.problem.entry_point,
                "calls": calls_json[g.problem_id],
                "time_limit": plan.time_limit(params.timeout_factor, params.timeout_floor, params.timeout_cap),
                "cpu_limit": plan.time_limit(params.timeout_factor, params.timeout_cpu_floor, params.timeout_cap),
                "calls_cpu_limit": plan.time_limit(params.timeout_factor, params.timeout_calls_cpu_floor,
                                                   params.timeout_cap),
                "max_output_bytes": params.max_output_bytes,
                "max_result_bytes": params.max_result_bytes,
            })
        if not tasks:
            return out
        verdicts: dict[tuple, tuple[str, str]] = {}  # same outputs of the same problem: same verdict
        passed = 0
        done = [0] * len(groups)
        finished = [0.0] * len(groups)
        with tqdm(total=len(tasks), desc="label", unit="program", smoothing=0.05) as bar:
            for task, header, payload in pool.run(tasks, idle=cache.flush_if_due):
                plan = plans[task["problem_id"]]
                if header.get("progress"):
                    if judge(plan, header, payload, task["time_limit"], partial=True) is not None:
                        pool.stop(task)
                    continue
                # The whole header but its id and duration: a timeout's or a worker's
                # detail is the candidate's own, never another's with the same results.
                memo = (task["problem_id"], payload,
                        json.dumps({k: v for k, v in header.items() if k not in ("id", "duration")}, sort_keys=True))
                verdict = verdicts.get(memo)
                if verdict is None:
                    verdict = stable_detail(judge(plan, header, payload, task["time_limit"]), params)
                    verdicts[memo] = verdict
                status, detail = verdict
                duration = float(header.get("duration", 0.0))
                out[task["key"]] = (status, detail, duration)
                cache.put(task["key"], status, detail, duration)
                passed += status == "passed"
                done[task["group"]] += 1
                finished[task["group"]] = time.monotonic() - start
                bar.update(1)
                bar.set_postfix(passed=passed, refresh=False)
    elapsed = time.monotonic() - start
    timings = [f"{done[g]} on {n} worker(s) done after {finished[g]:.1f}s"
               + (f" (preloading {len(preload) - len(params.preload)} heavy modules)" if len(preload) > len(params.preload) else "")
               for g, (preload, n) in enumerate(groups)]
    print(f"label: ran {len(tasks)} programs in {elapsed:.1f}s ({len(tasks) / max(elapsed, 1e-9):.0f}/s) "
          f"on {sum(n for _, n in groups)} sandboxed workers: {'; '.join(timings)}", file=sys.stderr)
    return out


def _compile(program: str) -> tuple[bytes, str]:
    """(the code object, marshalled; the syntax error's type name): one of them is empty.
    The sandbox runs the code object, so it does not parse and compile every program
    again; compiling runs none of the candidate's code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarnings of model code are not ours to print
        try:
            code = compile(program, "candidate.py", "exec", dont_inherit=True, optimize=0)
        except (SyntaxError, ValueError, OverflowError) as e:  # ValueError: NUL bytes
            return b"", type(e).__name__
        except (MemoryError, RecursionError):
            return b"", ""  # let the sandbox find out what this program is
    return marshal.dumps(code), ""


_IMPORT = re.compile(r"^[ \t]*(?:import|from)[ \t]+([A-Za-z_][\w.]*)", re.M)


def _imports(program: str) -> set[str]:
    names = set()
    for dotted in _IMPORT.findall(program):
        parts = dotted.split(".")
        names.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return names


def _groups(programs: list[str], params: LabelParams, n_workers: int) -> tuple[list[tuple[list[str], int]], list[int]]:
    """Worker groups, as (preload, workers), and each program's group: light candidates
    go to `n_workers` workers with the small preload; those importing a heavy package go
    to workers that preloaded the packages (and the submodules of them, like
    sklearn.metrics) that those candidates import. Forking from a worker that holds torch
    costs tens of milliseconds, so light candidates never do; the heavy group starts with
    the light one, so its slow imports overlap light work."""
    heavy_tops = {m.split(".")[0] for m in params.preload_heavy}
    wanted: set[str] = set()
    is_heavy = []
    for program in programs:
        names = {n for n in _imports(program) if n.split(".")[0] in heavy_tops}
        wanted |= names
        is_heavy.append(bool(names))
    n_heavy_programs = sum(is_heavy)
    groups: list[tuple[list[str], int]] = []
    light = heavy = -1
    if n_heavy_programs < len(programs):
        light = len(groups)
        groups.append((list(params.preload), n_workers))
    if n_heavy_programs:
        tops = {n for n in wanted if "." not in n and importlib.util.find_spec(n)}
        listed = [m for m in params.preload_heavy if m.split(".")[0] in tops]
        # Submodules only of installed allow-listed packages; a name that does not exist
        # fails to import in the worker, which ignores it.
        extra = sorted(n for n in wanted if "." in n and n.split(".")[0] in tops and n not in listed and n.count(".") <= 2)
        # Workers in proportion to the heavy share of the work, at least one.
        heavy = len(groups)
        groups.append((list(params.preload) + listed + extra,
                       min(n_workers, math.ceil(n_workers * n_heavy_programs / len(programs)))))
    return groups, [heavy if h else light for h in is_heavy]
