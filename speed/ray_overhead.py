"""The label stage on a one-node Ray cluster against the same stage here, in one run: wall
time of each (cold: a fresh cache each), their ratio, the md5 of each run's
data/labels.jsonl, the per-core rate and Ray's cost per batch.

    dvc repro generate                   # data/problems.jsonl, data/generations.jsonl
    python speed/ray_overhead.py    # starts (and stops) its own one-node cluster, one CPU per core

It alternates local, Ray, Ray, local, so a change in the machine's load during the run
weighs on both sides alike, and prints the load average before and after. The per-batch
cost is measured apart: `--probe-batches` batches of one cheap program each, on the
cluster, minus what that program costs here. The goal (issue 16): Ray within 15 % of local.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fractal import params
from fractal.execution import label_candidates
from fractal.execution.cluster import ADDRESS_ENV, executor_for
from fractal.execution.labeler import _cores
from fractal.records import Generation, Problem, read_jsonl, write_jsonl


def _md5(labels) -> str:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "labels.jsonl"
        write_jsonl(path, labels)  # as stages/label.py writes it
        return hashlib.md5(path.read_bytes()).hexdigest()


def _label(problems, generations, p, execute) -> tuple[float, str]:
    with tempfile.TemporaryDirectory(prefix="ray-bench-") as cache:
        start = time.monotonic()
        labels = label_candidates(problems, generations, dataclasses.replace(p, cache_dir=cache), execute=execute)
        return time.monotonic() - start, _md5(labels)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpus", type=int, default=_cores(), help="the node's CPUs, and the local run's workers")
    ap.add_argument("--address", default="", help="use this cluster instead of starting one")
    ap.add_argument("--probe-batches", type=int, default=24)
    args = ap.parse_args()
    p = dataclasses.replace(params.load("label"), workers=args.cpus)
    problems = read_jsonl("data/problems.jsonl", Problem)
    generations = read_jsonl("data/generations.jsonl", Generation)
    node = None
    address = args.address
    if not address:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        temp = tempfile.mkdtemp(prefix="frray-", dir="/tmp")
        address = f"127.0.0.1:{port}"
        node = subprocess.Popen(["ray", "start", "--head", "--block", "--port", str(port), "--num-cpus", str(args.cpus),
                                 "--node-ip-address", "127.0.0.1", "--temp-dir", temp, "--include-dashboard=false",
                                 "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        subprocess.run([sys.executable, "-c", "import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR')",
                        address], check=True, timeout=120)
    os.environ[ADDRESS_ENV] = address
    try:
        on_ray = executor_for("label")
        load0 = os.getloadavg()
        times: dict[str, list[float]] = {"local": [], "ray": []}
        md5s: dict[str, set[str]] = {"local": set(), "ray": set()}
        for side in ("local", "ray", "ray", "local"):
            t, md5 = _label(problems, generations, p, on_ray if side == "ray" else None)
            times[side].append(t)
            md5s[side].add(md5)
            print(f"ray_overhead: {side}: {t:.1f} s, md5 {md5}", file=sys.stderr)
        load1 = os.getloadavg()

        # The cost of one batch: K one-program batches (the first problem's first program,
        # each made distinct by a comment) for two K, so the fixed costs (joining the
        # cluster, starting Ray's workers) cancel, less what the programs cost here.
        first = generations[0]
        prob = [q for q in problems if q.problem_id == first.problem_id]
        k1, k2 = args.probe_batches // 4, args.probe_batches
        progs = lambda k: [dataclasses.replace(first, sample=i, program=first.program + f"\n# {i}\n") for i in range(k)]
        with tempfile.TemporaryDirectory() as d:
            cfg = Path(d) / "executor.yaml"
            cfg.write_text("ray:\n  batch: 1\n")
            os.environ["FRACTAL_EXECUTOR_CONFIG"] = str(cfg)
            one_per_batch = executor_for("label")
            ray_k = [_label(prob, progs(k), p, one_per_batch)[0] for k in (k1, k2)]
            os.environ.pop("FRACTAL_EXECUTOR_CONFIG")
        here_k = [_label(prob, progs(k), dataclasses.replace(p, workers=1), None)[0] for k in (k1, k2)]
        per_batch = ((ray_k[1] - ray_k[0]) * args.cpus - (here_k[1] - here_k[0])) / (k2 - k1)
    finally:
        if node is not None:  # the node's whole process group: every daemon `ray start` began
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
    local, ray_ = sum(times["local"]) / 2, sum(times["ray"]) / 2
    distinct_programs = len({(g.problem_id, g.program) for g in generations})
    print(f"ray_overhead: {len(generations)} candidates, {distinct_programs} distinct programs, {args.cpus} CPUs")
    print(f"ray_overhead: local {local:.1f} s, ray (1 node) {ray_:.1f} s, ratio ray/local {ray_ / local:.3f} "
          f"(local {', '.join(f'{t:.1f}' for t in times['local'])}; ray {', '.join(f'{t:.1f}' for t in times['ray'])})")
    print(f"ray_overhead: md5 local {sorted(md5s['local'])}, ray {sorted(md5s['ray'])}, "
          f"identical: {md5s['local'] == md5s['ray'] and len(md5s['local']) == 1}")
    print(f"ray_overhead: per-core rate (local) {distinct_programs / local / args.cpus:.1f} distinct programs/s")
    print(f"ray_overhead: one-program batches on the cluster: {k1} in {ray_k[0]:.2f} s, {k2} in {ray_k[1]:.2f} s "
          f"({args.cpus} CPUs); here on one worker: {here_k[0]:.2f} s, {here_k[1]:.2f} s; "
          f"Ray's cost per batch (CPU-seconds): {per_batch:.3f} s")
    print(f"ray_overhead: load average {load0[0]:.1f} before, {load1[0]:.1f} after ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
