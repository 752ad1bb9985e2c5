"""label: run every candidate against its problem's tests in the sandbox
-> data/labels.jsonl, metrics/label.json"""
from fractal import params
from fractal.execution import label_candidates
from fractal.labels import pass_rates
from fractal.records import Generation, Problem, read_jsonl, write_json, write_jsonl

p = params.load("label")
problems = read_jsonl("data/problems.jsonl", Problem)
generations = read_jsonl("data/generations.jsonl", Generation)
labels = label_candidates(problems, generations, p)
write_jsonl("data/labels.jsonl", labels)
metrics = pass_rates(problems, labels)
write_json("metrics/label.json", metrics)
for split, m in metrics.items():
    print(f"label: {split:>10}: {m['problems']:4d} problems, pass rate {m['pass_rate']:.2%}, "
          f"oracle {m['oracle']:.2%}")
