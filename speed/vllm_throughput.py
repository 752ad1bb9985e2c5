"""Throughput of the vLLM backend: samples/s and tokens/s, comparable to the reference's
8,150 samples (163 MBPP train + validation problems x 50) in 90 s on one A100.

By default the model has Qwen2.5-Coder-1.5B-Instruct's architecture (28 layers, hidden
1536, 12 query / 2 key-value heads, vocabulary 151,936) with random weights (vLLM's
load_format=dummy: no download), and every sample is exactly --output-tokens long
(ignore_eos), so the figure measures the engine, not what a model happens to write. The
prompts are the real MBPP chat prompts through fractal's VLLMBackend, exactly as the
generate stage sends them, tokenized by a stand-in byte-level tokenizer as large as Qwen's.

    python speed/vllm_throughput.py                      # 163 problems x 50, 256 tokens each
    python speed/vllm_throughput.py --output-tokens 150 --n 50
    python speed/vllm_throughput.py --model Qwen/Qwen2.5-Coder-1.5B-Instruct --natural
        # the real weights (downloaded), samples end where the model ends them
    python speed/vllm_throughput.py --lengths data/generations.jsonl
        # random weights, each sample as long as the recorded one (n_tokens of a real run)
    python speed/vllm_throughput.py --seed-mode engine    # one engine seed: vLLM's batched sampler

A fixed length measures the engine; natural lengths (--natural, --lengths) are what a run
costs, since most samples end well before max_tokens. Engine start (weights, KV cache,
CUDA graphs) is printed apart from sampling.

Needs a CUDA GPU and vllm (pip install 'fractal[gpu]').
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # tiny_model.py builds the stand-in tokenizer and config

from fractal.benchmarks import load_mbpp  # noqa: E402
from fractal.generation.vllm_backend import VLLMBackend  # noqa: E402
from fractal.params import GenerateParams  # noqa: E402

REFERENCE = {"samples": 8150, "seconds": 90.0, "gpu": "A100"}

# Qwen2.5-Coder-1.5B(-Instruct)'s config.json, the parts that set the cost of a token.
QWEN25_CODER_15B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rope_theta=1000000.0,
)
QWEN25_VOCAB = 151936


def random_model_dir(out: Path) -> Path:
    """config.json of the 1.5B architecture and a tokenizer of its vocabulary size; no
    weights (vLLM fills them with random values)."""
    from tiny_model import _write_portable, build_tokenizer, qwen2_config

    tokenizer = build_tokenizer(pad_vocab_to=QWEN25_VOCAB)
    config = qwen2_config(QWEN25_VOCAB, dtype="bfloat16", eos_token_id=tokenizer.eos_token_id, **QWEN25_CODER_15B)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_portable(out)
    return out


def _prompt_tokens(problems: list, model: str) -> float:
    from transformers import AutoTokenizer

    from fractal.generation.model_source import resolve_model
    from fractal.generation.prompts import encode_prompt, render_prompt

    tok = AutoTokenizer.from_pretrained(resolve_model(model))
    lengths = [len(encode_prompt(tok, render_prompt(p, "chat", tok), "chat")) for p in problems]
    return sum(lengths) / max(len(lengths), 1)


def _recorded_lengths(problems: list, path: str, n: int) -> tuple[list, list[int]]:
    """Each problem repeated once per recorded sample (at most n), and those samples'
    n_tokens, in the same order."""
    by_problem: dict[str, list[int]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            g = json.loads(line)
            if g.get("n_tokens"):
                by_problem.setdefault(g["problem_id"], []).append(int(g["n_tokens"]))
    out, lengths = [], []
    for p in problems:
        for t in by_problem.get(p.problem_id, [])[:n]:
            out.append(p)
            lengths.append(t)
    if not out:
        raise SystemExit(f"{path}: no n_tokens recorded for these problems (a replayed run records none)")
    return out, lengths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random",
                    help="random (the 1.5B architecture, random weights) or a hub id / local directory")
    ap.add_argument("--problems", type=int, default=163, help="MBPP train + validation problems, in id order")
    ap.add_argument("--n", type=int, default=50, help="samples per problem")
    ap.add_argument("--output-tokens", type=int, default=256, help="tokens per sample")
    ap.add_argument("--natural", action="store_true",
                    help="let samples end at the end token (real weights) instead of a fixed length")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    ap.add_argument("--max-model-len", type=int, default=2048)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed-mode", choices=("request", "engine"), default="request",
                    help="generate.seed_mode: a seed per request (the default) or one engine seed")
    ap.add_argument("--max-num-seqs", type=int, default=0, help="generate.max_num_seqs (0: vLLM's default)")
    ap.add_argument("--lengths", help="a generations.jsonl of a real run: each sample is as long as its "
                                      "n_tokens there (random weights, natural lengths)")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    problems = [p for p in load_mbpp("local", str(REPO / "data/raw")) if p.split in ("train", "validation")]
    problems = problems[: args.problems]
    with tempfile.TemporaryDirectory(prefix="fractal-vllm-bench-") as tmp:
        engine_args, sampling_args, per_request = {}, {}, None
        model = args.model
        if model == "random":
            model = str(random_model_dir(Path(tmp) / "qwen2.5-coder-1.5b-random"))
            engine_args["load_format"] = "dummy"
        if args.lengths:
            problems, lengths = _recorded_lengths(problems, args.lengths, args.n)
            args.n = 1  # one request a sample, each of its own length (the prompt's KV cache is shared)
            sampling_args.update(ignore_eos=True)
            per_request = [dict(min_tokens=t, max_tokens=t) for t in lengths]
        elif not args.natural:
            sampling_args.update(ignore_eos=True, min_tokens=args.output_tokens)
        params = GenerateParams(
            backend="vllm", model=model, n=args.n, seed=0, prompt_style="chat", stop=[],
            temperature=args.temperature, top_p=0.95, max_tokens=args.output_tokens, dtype=args.dtype,
            gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
            seed_mode=args.seed_mode, max_num_seqs=args.max_num_seqs,
        )
        backend = VLLMBackend(engine_args=engine_args, sampling_args=sampling_args, per_request_sampling=per_request)
        prompt_tokens = _prompt_tokens(problems, model)
        t0 = time.perf_counter()
        records = list(backend.generate(problems, params))
        total = time.perf_counter() - t0

    import torch

    seconds = backend.timings["sampling_s"]
    tokens = sum(r.n_tokens or 0 for r in records)
    ref_rate = REFERENCE["samples"] / REFERENCE["seconds"]
    figures = {
        "gpu": torch.cuda.get_device_name(0),
        "model": args.model,
        "lengths": args.lengths or ("natural" if args.natural else f"fixed {args.output_tokens}"),
        "seed_mode": args.seed_mode,
        "problems": len(problems),
        "samples": len(records),
        "output_tokens": tokens,
        "mean_prompt_tokens": round(prompt_tokens, 1),
        "sampling_s": round(seconds, 2),
        "engine_start_s": round(backend.timings["engine_start_s"], 2),
        "total_s": round(total, 2),
        "samples_per_s": round(len(records) / seconds, 1),
        "tokens_per_s": round(tokens / seconds),
        "reference_samples_per_s": round(ref_rate, 1),
        "seconds_for_8150_samples": round(REFERENCE["samples"] / (len(records) / seconds), 1),
    }
    print(f"\nvLLM backend on {figures['gpu']}: {figures['samples']} samples of "
          f"{tokens / max(len(records), 1):.0f} tokens ({figures['problems']} problems x {args.n}, "
          f"prompts of {prompt_tokens:.0f} tokens on average)")
    print(f"  sampling      {seconds:8.1f} s   {figures['samples_per_s']:8.1f} samples/s   "
          f"{figures['tokens_per_s']:8d} tokens/s")
    print(f"  engine start  {figures['engine_start_s']:8.1f} s   (load, KV cache, CUDA graphs; once per stage)")
    print(f"  8,150 samples would take {figures['seconds_for_8150_samples']:.1f} s of sampling; the reference: "
          f"{REFERENCE['seconds']:.0f} s on one {REFERENCE['gpu']} ({ref_rate:.1f} samples/s)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
