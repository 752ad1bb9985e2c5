"""label: run every candidate against its problem's tests in the sandbox
-> data/labels.jsonl, metrics/label.json, timings/label.jsonl"""
from fractal import params
from fractal.execution import label_candidates, problem_statuses
from fractal.execution.cluster import executor_for
from fractal.execution.isolation import mode_of
from fractal.execution.judge import COUNTED
from fractal.labels import pass_rates
from fractal.records import Generation, Problem, read_jsonl, write_json, write_jsonl, write_timings

p = params.load("label")
problems = read_jsonl("data/problems.jsonl", Problem)
generations = read_jsonl("data/generations.jsonl", Generation)
labels = label_candidates(problems, generations, p, execute=executor_for("label"))  # here, or on Ray (docs/ray.md)
write_jsonl("data/labels.jsonl", labels)  # without durations: the same md5 on every machine
write_timings("timings/label.jsonl", labels)
statuses = problem_statuses([q for q in problems if q.problem_id in {g.problem_id for g in generations}])
metrics = pass_rates(problems, labels, excluded={pid for pid, (s, _) in statuses.items() if s not in COUNTED})
# A number, so that MLflow (which logs the metrics files' numbers) shows it too: 0 means
# model code ran unconfined and any of these labels may be forged.
metrics["isolation"] = mode_of(p)
metrics["confined"] = int(mode_of(p) != "none")
metrics["problem_status"] = {pid: s for pid, (s, _) in sorted(statuses.items()) if s != "ok"}
write_json("metrics/label.json", metrics)
for split, m in metrics.items():
    if isinstance(m, dict) and "pass_rate" in m:
        print(f"label: {split:>10}: {m['problems']:4d} problems, pass rate {m['pass_rate']:.2%}, "
              f"oracle {m['oracle']:.2%}" + (f", {m['excluded']} excluded" if m["excluded"] else ""))
if not metrics["confined"]:
    print("label: label.isolation is none: these labels were obtained UNCONFINED (metrics/label.json: confined 0)")
