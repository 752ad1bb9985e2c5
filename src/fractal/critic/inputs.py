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
    """Token ids of [CLS] prompt [SEP] code [SEP] (or the model's own pair format)."""
    prompt_ids = tokenizer.encode(item.prompt, add_special_tokens=False)[:prompt_tokens]
    code_ids = tokenizer.encode(item.code, add_special_tokens=False)
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    room = max(max_length - n_special - len(prompt_ids), 0)
    code_ids = code_ids[:room]
    return tokenizer.build_inputs_with_special_tokens(prompt_ids, code_ids)
