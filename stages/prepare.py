"""prepare: the benchmark's problems, each with its split -> data/problems.jsonl"""
from collections import Counter

from fractal import params
from fractal.benchmarks import load_problems
from fractal.records import write_jsonl

p = params.load("prepare")
problems = load_problems(p)
write_jsonl("data/problems.jsonl", problems)
print(f"prepare: {len(problems)} {p.benchmark} problems, splits {dict(Counter(x.split for x in problems))}")
