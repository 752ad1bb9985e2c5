"""How fast the registered critic scores candidates through MLflow, as a user calls it:
loads models:/critic@champion (or --model) from this repository's store and predicts whole
problems' candidates, printing load time and rows per second.

    python speed/critic_predict.py                   # 1 problem x its 100 candidates, then 5 problems
    python speed/critic_predict.py --model models:/critic/1 --problems 1 10

Figures are wall-clock: they depend on the machine and on what else it is doing, so the
load average is printed beside them. Loading the model loads the critic, its encoder and
every fold's head (CriticModel.load_context); a predict call then only embeds and scores
its rows, so the load time is printed apart from the per-row figures.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models:/critic@champion")
    ap.add_argument("--problems", type=int, nargs="+", default=[1, 5], help="problems per predict call")
    args = ap.parse_args()

    import mlflow
    import pandas as pd

    from fractal import tracking
    from fractal.records import Generation, Problem, read_jsonl

    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores")
    root = tracking.repo_root(ROOT)
    with tracking.store_lock(root):
        tracking.open_store(root)
    problems = read_jsonl(root / "data/problems.jsonl", Problem)
    generations = read_jsonl(root / "data/generations.jsonl", Generation)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mlflow.pyfunc.load_model(args.model)
    print(f"load {args.model}: {time.perf_counter() - t0:.1f} s")
    start = 0
    for n in args.problems:
        chosen = {p.problem_id: p for p in problems[start:start + n]}
        start += n
        frame = pd.DataFrame([{"problem_id": g.problem_id, "sample": g.sample, "prompt": chosen[g.problem_id].prompt,
                               "program": g.program, "text": chosen[g.problem_id].text}
                              for g in generations if g.problem_id in chosen])
        t0 = time.perf_counter()
        scores = model.predict(frame)
        seconds = time.perf_counter() - t0
        print(f"predict {len(frame)} rows ({n} problem(s)): {seconds:.1f} s, {len(frame) / seconds:.1f} rows/s, "
              f"scores in [{min(scores):.3f}, {max(scores):.3f}]")
    print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
