"""Replay: imports recorded samples of a real model as generations.

The file is in CodeT's format: one JSON line per prompt, {"prompt": ..., "samples": [...]}.
Lines are matched to problems by prompt text; completions are cut at the stop sequences;
when fewer samples are asked for than were recorded, a seeded subsample is taken.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from fractal.generation.postprocess import build_program, cut_at_stop
from fractal.params import GenerateParams, ParamsError
from fractal.records import Generation, Problem


def _key(prompt: str) -> str:
    # Recorded prompts may differ from ours in trailing whitespace only.
    return prompt.strip()


def load_recorded(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params.yaml: `generate.replay_file` is {str(path)!r}, which does not exist")
    recorded: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                obj = json.loads(line)
                recorded[_key(obj["prompt"])] = list(obj["samples"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{lineno}: expected {{'prompt': str, 'samples': [str]}} ({e})") from None
    return recorded


class ReplayBackend:
    name = "replay"

    def generate(self, problems: list[Problem], params: GenerateParams) -> Iterator[Generation]:
        recorded = load_recorded(params.replay_file)
        missing = [p.problem_id for p in problems if _key(p.prompt) not in recorded]
        if missing:
            raise ValueError(
                f"{params.replay_file}: no recorded samples for {len(missing)} problem(s) "
                f"(first: {missing[0]}); prompts must match prepare's prompt text "
                f"(for HumanEval set prepare.prompt_variant: codet)"
            )
        for p in tqdm(problems, desc="replay", unit="problem"):
            samples = recorded[_key(p.prompt)]
            if params.n > len(samples):
                raise ParamsError(
                    f"params.yaml: `generate.n` is {params.n} but {params.replay_file} has only "
                    f"{len(samples)} samples for {p.problem_id}"
                )
            if params.n < len(samples):
                # Seeded per problem, so a problem's subsample does not depend on the others.
                rng = random.Random(f"{params.seed}:{p.problem_id}")
                chosen = sorted(rng.sample(range(len(samples)), params.n))
            else:
                chosen = list(range(len(samples)))
            for i, j in enumerate(chosen):
                completion = cut_at_stop(samples[j], params.stop)
                yield Generation(
                    problem_id=p.problem_id,
                    sample=i,
                    completion=samples[j],
                    program=build_program(p, completion, "completion"),
                    backend=self.name,
                    model=params.model,
                )
