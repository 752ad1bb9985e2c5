"""transformers: sampling with Hugging Face transformers, on the CPU or one GPU.

A problem's samples are generated together, `generate.batch_size` sequences per call,
each call seeded from `generate.seed` and the problem id, so a problem's samples do not
depend on the other problems. A sample ends at an end-of-sequence token, at the first
stop sequence (which is not kept, as in vLLM) or after `generate.max_tokens` tokens.

Log-probabilities: once sampled, each sample is scored by one more forward pass, summing
the log-probability of its tokens under the model's own distribution (temperature 1, no
top-p), which is what vLLM reports by default; a likelihood ranker can compare them.
torch and transformers are imported only when this backend runs.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from tqdm import tqdm

from fractal.generation.model_source import resolve_model
from fractal.generation.postprocess import build_program, cut_at_stop, stop_sequences
from fractal.generation.prompts import encode_prompt, render_prompt
from fractal.generation.sampling import describe, problem_seed, require_valid
from fractal.params import GenerateParams, ParamsError
from fractal.records import Generation, Problem

# Scoring keeps logits of (rows x new tokens x vocabulary) floats; this many at most at once.
_SCORE_FLOATS = 1 << 27


class TransformersBackend:
    name = "transformers"

    def generate(self, problems: list[Problem], params: GenerateParams) -> Iterator[Generation]:
        require_valid(params)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        path = resolve_model(params.model, params.revision)
        device = _device(params.device)
        dtype = _dtype(params.dtype, device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        eos_ids = _eos_ids(model.generation_config.eos_token_id, tokenizer.eos_token_id)
        if not eos_ids:
            raise ParamsError(f"generate.model {params.model}: neither its tokenizer nor its generation_config.json "
                              f"names an end-of-sequence token; set eos_token in its tokenizer_config.json")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        # Sampling follows generate.* alone, not the model's generation_config.json (its top_k,
        # repetition penalty...), as vLLM's SamplingParams do; only its end tokens are kept.
        model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id)
        print(f"generate: transformers on {device} ({str(dtype).removeprefix('torch.')}): {describe(params)}")

        start, n_samples, n_tokens = time.perf_counter(), 0, 0
        for problem in tqdm(problems, desc="generate", unit="problem"):
            prompt_text = render_prompt(problem, params.prompt_style, tokenizer, params.model)
            prompt_ids = encode_prompt(tokenizer, prompt_text, params.prompt_style)
            first = 0
            while first < params.n:
                rows = min(params.batch_size, params.n - first)
                torch.manual_seed(problem_seed(params.seed, problem.problem_id) + first)
                with torch.inference_mode():
                    tokens, lengths = _sample(model, tokenizer, prompt_ids, rows, params, eos_ids, device)
                    logprobs = _score(model, tokens, len(prompt_ids), lengths)
                for r in range(rows):
                    new = tokens[r, len(prompt_ids): len(prompt_ids) + lengths[r]]
                    text = tokenizer.decode(new, skip_special_tokens=True)
                    completion = cut_at_stop(text, stop_sequences(params))
                    yield Generation(
                        problem_id=problem.problem_id,
                        sample=first + r,
                        completion=completion,
                        program=build_program(problem, completion, params.prompt_style, prompt_text),
                        backend=self.name,
                        model=params.model,
                        logprob=logprobs[r],
                        n_tokens=lengths[r],
                        stop=stop_sequences(params),
                    )
                first += rows
                n_samples, n_tokens = n_samples + rows, n_tokens + sum(lengths)
        seconds = time.perf_counter() - start
        print(f"generate: transformers sampled {n_samples} samples ({n_tokens} tokens) in {seconds:.1f} s: "
              f"{n_samples / max(seconds, 1e-9):.2f} samples/s, {n_tokens / max(seconds, 1e-9):.0f} tokens/s")


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("params.yaml: `generate.device` is cuda but torch sees no CUDA GPU here; "
                          "use device: auto (or cpu), or run the generate stage on a GPU executor")
    return name


def _dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":
        if device == "cpu":
            return torch.float32  # half precision on the CPU is slow, where it works at all
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _eos_ids(*found: Any) -> list[int]:
    ids: list[int] = []
    for f in found:
        for i in f if isinstance(f, (list, tuple)) else [f]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def _stop_criteria(tokenizer: Any, stops: list[str], eos_ids: list[int], prompt_len: int, rows: int) -> Any:
    """A stopping criterion that ends each row at its first end token or stop sequence and
    remembers how many new tokens it kept (`ended_at`)."""
    import torch
    from transformers import StoppingCriteria

    # A stop sequence that appeared is found within its length in tokens (each token is at
    # least one character) plus a few that decode to nothing alone (parts of a character).
    window = max((len(s) for s in stops), default=0) + 4

    class StopAtEndOrText(StoppingCriteria):
        def __init__(self) -> None:
            self.ended_at: list[int | None] = [None] * rows

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            n_new = input_ids.shape[1] - prompt_len
            last = input_ids[:, -1].tolist()  # one device-to-host copy per step, not one per row
            open_rows = [r for r in range(rows) if self.ended_at[r] is None]
            for r in open_rows:
                if last[r] in eos_ids:
                    self.ended_at[r] = n_new
            if stops:
                open_rows = [r for r in open_rows if self.ended_at[r] is None]
                tails = tokenizer.batch_decode(input_ids[open_rows, max(prompt_len, input_ids.shape[1] - window):],
                                               skip_special_tokens=True) if open_rows else []
                for r, tail in zip(open_rows, tails):
                    if any(s in tail for s in stops):
                        self.ended_at[r] = n_new
            return torch.tensor([e is not None for e in self.ended_at], device=input_ids.device)

    return StopAtEndOrText()


def _sample(model: Any, tokenizer: Any, prompt_ids: list[int], rows: int, params: GenerateParams,
            eos_ids: list[int], device: str) -> tuple[Any, list[int]]:
    """`rows` samples of one prompt: the token matrix (prompt + new tokens, padded after a
    row's end) and how many new tokens each row kept."""
    import torch
    from transformers import StoppingCriteriaList

    input_ids = torch.tensor([prompt_ids] * rows, device=device)
    stop = _stop_criteria(tokenizer, stop_sequences(params), eos_ids, len(prompt_ids), rows)
    if params.temperature > 0:
        how = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
    else:
        how = dict(do_sample=False)
    out = model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=params.max_tokens,
        stopping_criteria=StoppingCriteriaList([stop]),
        **how,
    )
    n_new = out.shape[1] - len(prompt_ids)
    return out, [e if e is not None else n_new for e in stop.ended_at]


def _score(model: Any, tokens: Any, prompt_len: int, lengths: list[int]) -> list[float]:
    """Sum of log-probabilities of each row's kept new tokens under the model (temperature 1)."""
    import torch

    n_new = tokens.shape[1] - prompt_len
    if n_new == 0:
        return [0.0] * tokens.shape[0]
    vocab = model.get_output_embeddings().weight.shape[0]
    chunk = max(1, _SCORE_FLOATS // (n_new * vocab))
    sums: list[float] = []
    for start in range(0, tokens.shape[0], chunk):
        seq = tokens[start: start + chunk]
        # Logits at positions prompt_len-1 .. end-1 predict the new tokens.
        logits = model(input_ids=seq, logits_to_keep=n_new + 1).logits[:, :-1].float()
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, seq[:, prompt_len:, None]).squeeze(-1)
        keep = torch.arange(n_new, device=seq.device)[None, :] < torch.tensor(lengths[start: start + chunk],
                                                                              device=seq.device)[:, None]
        sums.extend(torch.where(keep, token_lp, 0.0).sum(dim=1).tolist())
    return sums
