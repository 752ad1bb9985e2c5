"""What the critic reads: the problem prompt and the candidate's code, tokenized with a
truncation policy that keeps the code.

The prompt is cut first (to at most `prompt_tokens`), then the code from its end, so a
long docstring never pushes the candidate out of the window.
"""
from __future__ import annotations

from dataclasses import dataclass

from fractal.records import Generation, Problem


@dataclass
class CriticInput:
    prompt: str
    code: str


def critic_input(problem: Problem, generation: Generation) -> CriticInput:
    program = generation.program
    # Completion-style programs repeat the prompt; the critic sees it once.
    code = program[len(problem.prompt):] if program.startswith(problem.prompt) else program
    return CriticInput(prompt=problem.text or problem.prompt, code=code)


def encode(tokenizer, item: CriticInput, max_length: int, prompt_tokens: int) -> list[int]:
    """Token ids of the (prompt, code) pair in the model's own pair format, e.g.
    [CLS] prompt [SEP] code [SEP]."""
    enc = tokenizer(item.prompt, add_special_tokens=False, return_offsets_mapping=True)
    prompt = item.prompt
    if len(enc["input_ids"]) > prompt_tokens:
        prompt = item.prompt[: enc["offset_mapping"][prompt_tokens][0]]
    return tokenizer(prompt, item.code, truncation="only_second", max_length=max_length)["input_ids"]
