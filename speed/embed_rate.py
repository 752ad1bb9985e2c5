"""The embed stage's encoder throughput, today's layout against the joint one it replaced,
on the same candidates in one run: candidates/s, encoder tokens/s, peak RSS and the ratio.

Each measurement runs in a fresh child process (so its peak RSS is its own and no model
warmth carries over), old and new alternating so the machine's load falls on both alike.
- joint: one (prompt, code) pair per distinct input, [CLS] prompt [SEP] code [SEP], sorted
  by length, `batch` at a time (the embed stage before the prompt+code layout);
- split: critic/embed.py's embed, prompt once per problem and code once per distinct program.

    python speed/embed_rate.py [--problems 12] [--reps 2] [--batch 32]

It reads data/problems.jsonl and data/generations.jsonl (`dvc checkout` or `dvc repro generate`)
and the candidates of --problems problems spread over the file; it writes nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def candidates(n_problems: int):
    from fractal.critic.inputs import critic_input
    from fractal.records import Generation, Problem, read_jsonl

    problems = read_jsonl("data/problems.jsonl", Problem)
    problems = problems[::max(1, len(problems) // n_problems)][:n_problems]  # spread over the benchmark
    problem_of = {q.problem_id: q for q in problems}
    generations = [g for g in read_jsonl("data/generations.jsonl", Generation) if g.problem_id in problem_of]
    return [critic_input(problem_of[g.problem_id], g) for g in generations]


def one(path: str, n_problems: int, batch: int) -> dict:
    """Embeds the sample once by `path` in this process; seconds count tokenizing and encoding, not the model load."""
    from fractal.critic.embed import Encoder, embed
    from fractal.critic.inputs import encode

    items = candidates(n_problems)
    encoder = Encoder("minilm", 384, 128)
    encoder.model, encoder.tokenizer  # loaded before the clock starts
    t = time.perf_counter()
    if path == "joint":
        distinct = list({(it.prompt, it.code): it for it in items}.values())
        ids = sorted((encode(encoder.tokenizer, it, 384, 128) for it in distinct), key=len)
        for start in range(0, len(ids), batch):
            encoder.batch(ids[start:start + batch])
        seconds = time.perf_counter() - t
        tokens = sum(map(len, ids))
    else:
        from fractal.critic.inputs import encode_texts

        embed(items, "minilm", 384, 128, batch, None, encoder)
        seconds = time.perf_counter() - t
        prompts, codes = sorted({it.prompt for it in items}), sorted({it.code for it in items})
        tokens = (sum(map(len, encode_texts(encoder.tokenizer, prompts, encoder.limit("prompt"))))
                  + sum(map(len, encode_texts(encoder.tokenizer, codes, encoder.limit("code")))))
    return {"path": path, "seconds": seconds, "candidates": len(items), "tokens": tokens,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=12)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--one", choices=("joint", "split"), help=argparse.SUPPRESS)  # a child's single measurement
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.problems, args.batch)))
        return
    runs: dict[str, list[dict]] = {"joint": [], "split": []}
    for rep in range(args.reps):
        for path in ("joint", "split") if rep % 2 == 0 else ("split", "joint"):
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, __file__, "--one", path, "--problems", str(args.problems),
                                  "--batch", str(args.batch)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.splitlines()[-1])
            r["load"] = load
            runs[path].append(r)
            print(f"{path:5s} {r['seconds']:7.1f} s  {r['candidates'] / r['seconds']:6.1f} candidates/s  "
                  f"{r['tokens'] / r['seconds']:7.0f} tokens/s  ({r['tokens']} tokens)  "
                  f"peak RSS {r['peak_rss_mib']:5.0f} MiB  load {load:.2f}", flush=True)
    med = {p: statistics.median(r["seconds"] for r in rs) for p, rs in runs.items()}
    print(f"split is {med['joint'] / med['split']:.2f}x the joint path's candidates/s "
          f"(median of {args.reps}; {runs['split'][0]['candidates']} candidates of {args.problems} problems)")


if __name__ == "__main__":
    main()
