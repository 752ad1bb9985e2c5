"""What the critic reads: the problem prompt and the candidate's code.

The frozen-encoder (head) critic embeds them apart (`encode_texts`): the prompt once per
problem, cut to `prompt_tokens`, and each distinct code once, cut from its end to
`max_length`, so the prompt costs nothing per candidate and never pushes the code out of
the window. Fine-tuned critics read them as one pair (`encode`): the prompt is cut first
(to at most `prompt_tokens`), then the code from its end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fractal.records import Generation, Problem

if TYPE_CHECKING:
    import torch


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


def encode_texts(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids of each text on its own, in the model's single-text format (e.g. [CLS] text
    [SEP]), cut from the end to `max_length` ids: one batched tokenizer call (the fast
    tokenizer's Rust loop, not one Python call per text)."""
    if not texts:
        return []
    return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]


def pad_batch(sequences: list[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Token id sequences as one right-padded batch: input_ids and the attention_mask that
    hides the padding, as wide as the longest sequence."""
    import torch  # here, not above: the rank stage reads critic_input and needs no torch

    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, :len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}
