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

Several GPUs. `generate.tensor_parallel_size` GPUs make one engine (vLLM's tensor
parallelism: a model too large for one GPU, e.g. 14B on 8x H100 with 2 or 4 per engine).
`generate.data_parallel_size` engines above 1 run as Ray Data LLM replicas (ray.data.llm,
`concurrency` = data_parallel_size, each with tensor_parallel_size GPUs), on this machine's
GPUs or, with `ray.address` / FRACTAL_RAY_ADDRESS (docs/ray.md), across a Ray cluster's
nodes; the records are the same kind either way. Ray Data's vLLM stage keeps one output per
row, so there each sample is a request of its own (n=1), seeded from `generate.seed`, the
problem id and the sample index (seed_mode request) instead of one request of n per
problem: the samples differ from those of one engine, which is why both sizes are tracked
params. Where it stops: written against vLLM's and Ray Data LLM's documented APIs and
checked here against doubles of them; no GPU run of either (docs/ray.md).
"""
from __future__ import annotations

import dataclasses
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
        per_request = self.per_request_sampling or [{}] * len(problems)
        sampling = [{**sampling_args(params, problem_seed(params.seed, p.problem_id)
                                     if params.seed_mode == "request" else None), **self.sampling_args, **extra}
                    for p, extra in zip(problems, per_request, strict=True)]
        t0 = time.perf_counter()
        if params.data_parallel_size > 1:
            t1 = t0  # the replicas start inside the Ray Data pipeline
            outputs = ray_data_outputs(problems, requests, sampling, engine, params)
        else:
            llm = LLM(**engine)
            t1 = time.perf_counter()
            outputs = llm.generate(requests, [SamplingParams(**kw) for kw in sampling], use_tqdm=True)
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
    if params.tensor_parallel_size > 1:
        engine["tensor_parallel_size"] = params.tensor_parallel_size
    return engine


@dataclasses.dataclass
class SampledOutput:
    """One sample from Ray Data LLM, in the shape `records` reads from vLLM's CompletionOutput."""
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: None = None


@dataclasses.dataclass
class ProblemOutputs:
    """A problem's samples from Ray Data LLM, in the shape of vLLM's RequestOutput."""
    outputs: list[SampledOutput]


def ray_data_outputs(problems: list[Problem], requests: list[dict[str, Any]], sampling: list[dict[str, Any]],
                     engine: dict[str, Any], params: GenerateParams) -> list[ProblemOutputs]:
    """Every problem's samples from `data_parallel_size` vLLM engines run by Ray Data LLM:
    one row per (problem, sample), with n=1 and a seed of its own; rows of a problem are
    consecutive and a batch is a problem's n rows, so a replica gets the prompt n times
    together (its prefix cache shares it)."""
    try:
        from ray.data import from_items
        from ray.data import llm as ray_llm
    except ImportError as e:
        raise ParamsError(f"params.yaml: `generate.data_parallel_size` is {params.data_parallel_size}: its engines "
                          f"run on Ray Data LLM, which cannot be imported ({e}); pip install 'ray[data,llm]' beside "
                          "vllm, or set it to 1") from None
    rows = []
    for i, (problem, request, kw) in enumerate(zip(problems, requests, sampling, strict=True)):
        for j in range(kw["n"]):
            seed = problem_seed(params.seed, f"{problem.problem_id}#{j}") if kw.get("seed") is not None else None
            rows.append({"problem": i, "sample": j, "tokenized_prompt": request["prompt_token_ids"],
                         "sampling_params": {**kw, "n": 1, "seed": seed}})
    config = ray_llm.vLLMEngineProcessorConfig(
        model_source=engine["model"], engine_kwargs={k: v for k, v in engine.items() if k != "model"},
        # whole problems per batch (a multiple of n rows), about 64 rows
        concurrency=params.data_parallel_size, batch_size=params.n * max(1, 64 // params.n),
        # fractal renders and tokenizes the prompts (prompts.py) and the engine returns the text
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)
    # build_processor since Ray 2.5x; build_llm_processor, its older name, before
    build = getattr(ray_llm, "build_processor", None) or ray_llm.build_llm_processor
    cluster = _join_configured_cluster()
    try:
        done = build(config)(from_items(rows)).take_all()
    finally:
        if cluster is not None:
            cluster.shutdown()
    by_problem: list[list[SampledOutput]] = [[] for _ in problems]
    for row in done:
        tokens = [int(t) for t in row["generated_tokens"]]
        by_problem[int(row["problem"])].append(
            SampledOutput(int(row["sample"]), row["generated_text"], tokens, _row_logprob(tokens, row.get("logprobs"))))
    return [ProblemOutputs(outputs) for outputs in by_problem]


def _join_configured_cluster():
    """Ray joined at the cluster named for label and probe (ray.address, FRACTAL_RAY_ADDRESS),
    shipping fractal to its nodes; None without one (Ray Data then starts Ray here)."""
    from fractal.execution.cluster import connect, ray_settings

    settings, where = ray_settings()
    return connect(settings, where) if settings.address else None


def _row_logprob(tokens: list[int], logprobs: Any) -> float | None:
    """The sum of the sampled tokens' log-probabilities from Ray Data LLM's `logprobs` column
    (one {token id: {"logprob": ...}} per position; the ids may come back as strings)."""
    if not logprobs:
        return None
    total = 0.0
    for tok, step in zip(tokens, logprobs, strict=True):
        entry = step.get(tok, step.get(str(tok))) if isinstance(step, dict) else None
        if entry is None:
            return None
        total += float(entry["logprob"])
    return total


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
