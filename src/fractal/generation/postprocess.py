"""Turning what a model wrote into the program that will be run."""
from __future__ import annotations

import re

from fractal.records import Problem


def cut_at_stop(completion: str, stops: list[str]) -> str:
    """Cuts a completion at the first occurrence of any stop sequence (CodeT's rule)."""
    end = len(completion)
    for s in stops:
        i = completion.find(s)
        if i != -1:
            end = min(end, i)
    return completion[:end]


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(answer: str, entry_point: str = "") -> str:
    """Pulls the program out of a chat answer.

    Prefers a fenced block that defines the entry point, then the first fenced block,
    then the answer from the first top-level `def`/`import`/`from` on.
    """
    blocks = _FENCE.findall(answer)
    if blocks:
        for b in blocks:
            if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.M):
                return b.rstrip() + "\n"
        return blocks[0].rstrip() + "\n"
    m = re.search(r"^(def |import |from |class )", answer, re.M)
    return (answer[m.start():] if m else answer).rstrip() + "\n"


def build_program(problem: Problem, completion: str, prompt_style: str) -> str:
    """The program the labeler runs: prompt + completion for completion-style models,
    the extracted code for chat models."""
    if prompt_style == "completion":
        return problem.prompt + completion
    return extract_code(completion, problem.entry_point)
