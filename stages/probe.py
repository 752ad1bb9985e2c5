"""probe: every distinct candidate run on its problem's generated test inputs, in the
label stage's sandbox -> data/probe.jsonl"""
from fractal import params
from fractal.execution.cluster import executor_for
from fractal.execution.probe import probe_candidates
from fractal.records import Generation, Problem, read_jsonl, write_jsonl

p = params.load("probe")
problems = read_jsonl("data/problems.jsonl", Problem)
generations = read_jsonl("data/generations.jsonl", Generation)
generated_tests = read_jsonl("data/generated_tests.jsonl")
records = probe_candidates(problems, generations, generated_tests, p, sandbox=params.load("label"),
                           execute=executor_for("probe"))  # here, or on Ray (docs/ray.md)
write_jsonl("data/probe.jsonl", records)
ok = sum(r["status"] == "ok" for r in records)
print(f"probe: {len(records)} candidates, {ok} loaded, "
      f"{sum(bool(r['passed']) for r in records)} pass >= 1 generated test")
