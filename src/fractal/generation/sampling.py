"""What the real backends share about sampling: seeds, validation, and a one-line summary."""
from __future__ import annotations

import hashlib

from fractal.generation.postprocess import stop_sequences
from fractal.params import GenerateParams, ParamsError


def problem_seed(seed: int, problem_id: str) -> int:
    """A seed per problem, so a problem's samples do not depend on which other problems
    are generated with it (a `prepare.limit`, a different batch) nor on their order."""
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def check_sampling(params: GenerateParams) -> list[str]:
    """What is wrong with the sampling settings, as messages naming the params key."""
    errors = []
    if params.n < 1:
        errors.append(f"params.yaml: `generate.n` is {params.n}; it must be at least 1")
    if params.temperature < 0:
        errors.append(f"params.yaml: `generate.temperature` is {params.temperature}; use 0 (greedy) or more")
    if not 0 < params.top_p <= 1:
        errors.append(f"params.yaml: `generate.top_p` is {params.top_p}; it must be in (0, 1]")
    if params.max_tokens < 1:
        errors.append(f"params.yaml: `generate.max_tokens` is {params.max_tokens}; it must be at least 1")
    if params.batch_size < 1:
        errors.append(f"params.yaml: `generate.batch_size` is {params.batch_size}; it must be at least 1")
    if params.stop != "auto" and not (isinstance(params.stop, list) and all(isinstance(s, str) and s for s in params.stop)):
        errors.append(f"params.yaml: `generate.stop` must be auto or a list of non-empty strings, got {params.stop!r}")
    if params.dtype not in ("auto", "float32", "bfloat16", "float16"):
        errors.append(f"params.yaml: `generate.dtype` is {params.dtype!r}; choose auto, float32, bfloat16 or float16")
    if params.device not in ("auto", "cpu", "cuda"):
        errors.append(f"params.yaml: `generate.device` is {params.device!r}; choose auto, cpu or cuda")
    if not 0 < params.gpu_memory_utilization <= 1:
        errors.append(f"params.yaml: `generate.gpu_memory_utilization` is {params.gpu_memory_utilization}; "
                      f"it must be in (0, 1]")
    if params.max_model_len < 0:
        errors.append(f"params.yaml: `generate.max_model_len` is {params.max_model_len}; use 0 (the model's) or more")
    return errors


def require_valid(params: GenerateParams) -> None:
    errors = check_sampling(params)
    if errors:
        raise ParamsError("; ".join(errors))


def describe(params: GenerateParams) -> str:
    """One line for the log: what will be sampled, and how."""
    how = "greedy" if params.temperature == 0 else f"temperature {params.temperature}, top_p {params.top_p}"
    return (f"{params.model} ({params.prompt_style} prompts): {params.n} samples per problem, {how}, "
            f"at most {params.max_tokens} tokens, stop {stop_sequences(params)!r}, seed {params.seed}"
            + (" (one engine seed)" if params.backend == "vllm" and params.seed_mode == "engine" else ""))
