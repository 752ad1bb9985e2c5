"""generate: N candidate programs per problem -> data/generations.jsonl"""
from fractal import params
from fractal.generation import get_backend
from fractal.records import Problem, read_jsonl, write_jsonl

p = params.load("generate")
problems = [x for x in read_jsonl("data/problems.jsonl", Problem) if x.split != "prompt"]
backend = get_backend(p.backend)
covered: set[str] = set()  # replayed samples may cover only some of the problems


def noting_problems(generations):
    for g in generations:
        covered.add(g.problem_id)
        yield g


n = write_jsonl("data/generations.jsonl", noting_problems(backend.generate(problems, p)))
print(f"generate: {n} candidates for {len(covered)} of {len(problems)} problems ({p.backend}, {p.model})")
