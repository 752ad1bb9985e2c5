"""gentests: the test cases the code model wrote, per problem, as plain data
-> data/generated_tests.jsonl, metrics/gentests.json"""
import dataclasses

from fractal import params
from fractal.generation.generated_tests import generated_tests
from fractal.records import Problem, read_jsonl, write_json, write_jsonl

p = params.load("gentests")
problems = [x for x in read_jsonl("data/problems.jsonl", Problem) if x.split != "prompt"]
records, stats = generated_tests(problems, p, params.load("generate"))
write_jsonl("data/generated_tests.jsonl", records)
with_tests = [r for r in records if r["tests"]]
metrics = {
    **dataclasses.asdict(stats),
    "problems": len(records),
    "problems_with_tests": len(with_tests),
    "tests_per_problem": sum(len(r["tests"]) for r in records) / max(1, len(records)),
    "inputs_per_problem": sum(len(r["inputs"]) for r in records) / max(1, len(records)),
}
write_json("metrics/gentests.json", metrics)


def some(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (f" and {len(ids) - 5} more" if len(ids) > 5 else "") if ids else "none"


print(f"gentests: {len(records)} problems, {len(with_tests)} with >= 1 test, "
      f"{metrics['tests_per_problem']:.1f} tests and {metrics['inputs_per_problem']:.1f} inputs per problem; "
      f"{stats.blank_samples} of {stats.samples} samples blank; of {stats.asserts} asserts, "
      f"{stats.dropped_comparison} dropped (not `... f(...) ... == value`), {stats.expressions} with an expression "
      f"as input (not a call on plain data); "
      f"no assert: {some(stats.without_asserts)}; no test: {some(stats.without_tests)}")
if p.source == "none":
    print("gentests: source none: CodeT, SRank and MBR-exec tie on every problem (a uniform pick)")
