"""vllm: batched sampling with vLLM's offline engine, on a GPU.

Every problem is one request of `generate.n` samples; vLLM schedules all of them at once
(continuous batching, one shared prompt prefix per request, `generate.prefix_caching`).

Seeds (`generate.seed_mode`): `request` (the default) gives each request its own seed,
derived from `generate.seed` and the problem id, so a problem's samples do not depend on
the other problems, their order or the engine's batch settings. It costs speed: vLLM then
samples every seeded sequence with its own generator instead of its batched top-p kernel
(FlashInfer falls back to a sort of the full vocabulary per sequence and step; vLLM PR
#17509). `engine` seeds the engine once (`generate.seed`) and leaves the requests
unseeded: the fast path, reproducible only for the same problems in the same order with
the same engine settings (`max_num_seqs`, `gpu_memory_utilization`, `max_model_len`,
which is why dvc.yaml tracks those too). Prompts are rendered and tokenized by fractal (prompts.py)
with the model's own tokenizer and handed to vLLM as token ids, exactly as the
transformers backend feeds them.

Log-probabilities: vLLM is asked for the sampled tokens' log-probabilities (logprobs=0)
and their sum is recorded; vLLM's V1 engine reports them under the model's own
distribution, before temperature and top-p, as the transformers backend does.
vllm is imported only when this backend runs (`pip install 'fractal[gpu]'`).
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from fractal.generation.model_source import resolve_model
from fractal.generation.postprocess import build_program, stop_sequences
from fractal.generation.prompts import encode_prompt, render_prompt
from fractal.generation.sampling import describe, problem_seed, require_valid
from fractal.params import GenerateParams, ParamsError
from fractal.records import Generation, Problem


class VLLMBackend:
    name = "vllm"

    def __init__(self, engine_args: dict[str, Any] | None = None, sampling_args: dict[str, Any] | None = None,
                 per_request_sampling: list[dict[str, Any]] | None = None):
        """`engine_args` and `sampling_args` go to vllm.LLM and vllm.SamplingParams on top of
        what params.yaml sets, and `per_request_sampling` (one dict per problem) on top of
        those; the throughput benchmark uses them (random weights, fixed or recorded output
        lengths). The pipeline's stage passes none."""
        self.engine_args = dict(engine_args or {})
        self.sampling_args = dict(sampling_args or {})
        self.per_request_sampling = per_request_sampling
        self.timings: dict[str, float] = {}  # of the last run: engine start and sampling, in seconds

    def generate(self, problems: list[Problem], params: GenerateParams) -> Iterator[Generation]:
        require_valid(params)
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise ParamsError(f"params.yaml: `generate.backend` is vllm but vllm cannot be imported ({e}); "
                              f"install it on a CUDA machine with `pip install 'fractal[gpu]'`, or run the "
                              f"generate stage on a GPU executor (see docs/reference-experiment.md)") from None
        from transformers import AutoTokenizer

        path = resolve_model(params.model, params.revision)
        tokenizer = AutoTokenizer.from_pretrained(path)
        prompt_texts = [render_prompt(p, params.prompt_style, tokenizer, params.model) for p in problems]
        requests = [{"prompt_token_ids": encode_prompt(tokenizer, t, params.prompt_style)} for t in prompt_texts]
        engine = {**engine_args(params, path), **self.engine_args}
        print(f"generate: vllm: {describe(params)}")
        t0 = time.perf_counter()
        llm = LLM(**engine)
        t1 = time.perf_counter()
        per_request = self.per_request_sampling or [{}] * len(problems)
        sampling = [
            SamplingParams(**{**sampling_args(params, problem_seed(params.seed, p.problem_id)
                                              if params.seed_mode == "request" else None),
                              **self.sampling_args, **extra})
            for p, extra in zip(problems, per_request, strict=True)
        ]
        outputs = llm.generate(requests, sampling, use_tqdm=True)
        t2 = time.perf_counter()
        self.timings = {"engine_start_s": t1 - t0, "sampling_s": t2 - t1}
        n_samples = sum(len(o.outputs) for o in outputs)
        n_tokens = sum(len(c.token_ids) for o in outputs for c in o.outputs)
        print(f"generate: vllm sampled {n_samples} samples ({n_tokens} tokens) in {t2 - t1:.1f} s: "
              f"{n_samples / max(t2 - t1, 1e-9):.1f} samples/s, {n_tokens / max(t2 - t1, 1e-9):.0f} tokens/s "
              f"(engine start {t1 - t0:.1f} s)")
        yield from records(problems, prompt_texts, outputs, params, self.name)


def engine_args(params: GenerateParams, model_path: str) -> dict[str, Any]:
    """vllm.LLM keyword arguments from the generate section."""
    engine: dict[str, Any] = dict(
        model=model_path,
        dtype=params.dtype,
        seed=params.seed,
        gpu_memory_utilization=params.gpu_memory_utilization,
        enable_prefix_caching=params.prefix_caching,
    )
    if params.max_model_len:
        engine["max_model_len"] = params.max_model_len
    if params.max_num_seqs:
        engine["max_num_seqs"] = params.max_num_seqs
    return engine


def sampling_args(params: GenerateParams, seed: int | None) -> dict[str, Any]:
    """vllm.SamplingParams keyword arguments for one problem's request; seed None: the
    engine's generator (seed_mode engine)."""
    return dict(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p if params.temperature > 0 else 1.0,
        max_tokens=params.max_tokens,
        stop=stop_sequences(params) or None,
        seed=seed,
        logprobs=0,  # the sampled token's log-probability only
    )


def records(problems: list[Problem], prompt_texts: list[str], outputs: list[Any], params: GenerateParams,
            backend: str) -> Iterator[Generation]:
    """Generation records from vLLM's RequestOutputs, which come in the order of the requests."""
    if len(outputs) != len(problems):
        raise RuntimeError(f"vllm returned {len(outputs)} outputs for {len(problems)} prompts")
    for problem, prompt_text, out in zip(problems, prompt_texts, outputs):
        completions = sorted(out.outputs, key=lambda c: c.index)
        if len(completions) != params.n:
            raise RuntimeError(f"vllm returned {len(completions)} samples for {problem.problem_id}, "
                               f"expected generate.n = {params.n}")
        for i, c in enumerate(completions):
            # vLLM has already cut the text before the first stop sequence.
            yield Generation(
                problem_id=problem.problem_id,
                sample=i,
                completion=c.text,
                program=build_program(problem, c.text, params.prompt_style, prompt_text),
                backend=backend,
                model=params.model,
                logprob=_logprob(c),
                n_tokens=len(c.token_ids),
                stop=stop_sequences(params),
            )


def _logprob(completion: Any) -> float | None:
    if completion.cumulative_logprob is not None:
        return float(completion.cumulative_logprob)
    if not completion.logprobs:
        return None
    # One {token id: Logprob} per position, holding at least the sampled token.
    return float(sum(step[tok].logprob for tok, step in zip(completion.token_ids, completion.logprobs)))
