"""The vLLM backend.

On a machine with a CUDA GPU and vllm installed, it runs on the tiny Qwen2 model and must
agree with the transformers backend. Everywhere, the code around vLLM (the requests it is
given, the records made from its outputs) runs against a recording double of vLLM's
documented API (LLM, SamplingParams, RequestOutput, CompletionOutput) put in place of the
module, so CI without a GPU still exercises it.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
import types
from typing import Any

import pytest

from fractal.benchmarks import load_mbpp
from fractal.generation import get_backend
from fractal.generation.prompts import encode_prompt, render_prompt
from fractal.generation.sampling import problem_seed
from fractal.params import GenerateParams, ParamsError
from tiny_model import build_tiny_model


def _gpu_reason() -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'fractal[gpu]' on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU: vLLM needs one"
    return None


@pytest.fixture(scope="module")
def problems():
    return [p for p in load_mbpp("local") if p.split == "train"][:3]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


# ---- a recording double of vLLM's API ------------------------------------------------------

ANSWER = "```python\ndef f(x):\n    return x\n```"


@dataclasses.dataclass
class _Logprob:
    logprob: float


@dataclasses.dataclass
class _Completion:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, _Logprob]] | None


@dataclasses.dataclass
class _RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[_Completion]


class _FakeVLLM(types.ModuleType):
    """Answers every sample with ANSWER; returns samples out of index order (as vLLM may);
    even samples carry cumulative_logprob, odd ones only per-token logprobs."""

    def __init__(self) -> None:
        super().__init__("vllm")
        self.engine_args: dict[str, Any] = {}
        self.requests: list[Any] = []
        self.sampling: list[Any] = []
        fake = self

        class SamplingParams:
            def __init__(self, **kw: Any) -> None:
                self.__dict__.update(kw)

        class LLM:
            def __init__(self, **kw: Any) -> None:
                fake.engine_args = kw

            def generate(self, requests: list[Any], sampling: list[Any], use_tqdm: bool = True) -> list[Any]:
                fake.requests, fake.sampling = requests, sampling
                outs = []
                for req, sp in zip(requests, sampling):
                    comps = []
                    for i in reversed(range(sp.n)):
                        tokens = [5, 6, 7]
                        lps = [{t: _Logprob(-0.5)} for t in tokens]
                        comps.append(_Completion(i, ANSWER, tokens, -1.5 if i % 2 == 0 else None, lps))
                    outs.append(_RequestOutput(req["prompt_token_ids"], comps))
                return outs

        self.LLM = LLM
        self.SamplingParams = SamplingParams


def test_vllm_requests_and_records_against_its_api(model_dir, problems, monkeypatch):
    from transformers import AutoTokenizer

    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=4, prompt_style="chat", stop=["\n```\n"],
                            temperature=0.8, top_p=0.9, max_tokens=64, seed=3, max_model_len=512)
    gens = list(get_backend("vllm").generate(problems, params))

    assert fake.engine_args["model"] == str(model_dir) and fake.engine_args["max_model_len"] == 512
    assert fake.engine_args["seed"] == 3 and fake.engine_args["dtype"] == "auto"
    tok = AutoTokenizer.from_pretrained(model_dir)
    want_ids = [encode_prompt(tok, render_prompt(p, "chat", tok), "chat") for p in problems]
    assert [r["prompt_token_ids"] for r in fake.requests] == want_ids
    for p, sp in zip(problems, fake.sampling):
        assert (sp.n, sp.temperature, sp.top_p, sp.max_tokens, sp.stop) == (4, 0.8, 0.9, 64, ["\n```\n"])
        assert sp.seed == problem_seed(3, p.problem_id) and sp.logprobs == 0

    assert [(g.problem_id, g.sample) for g in gens] == [(p.problem_id, i) for p in problems for i in range(4)]
    assert all(g.program == "def f(x):\n    return x\n" and g.completion == ANSWER for g in gens)
    assert all(g.backend == "vllm" and g.model == str(model_dir) and g.n_tokens == 3 for g in gens)
    assert all(g.logprob == pytest.approx(-1.5) for g in gens)  # from cumulative_logprob or the per-token ones


def test_vllm_greedy_sends_top_p_one_and_no_stop_when_none(model_dir, problems, monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=1, prompt_style="chat", stop=[], temperature=0.0)
    list(get_backend("vllm").generate(problems[:1], params))
    (sp,) = fake.sampling
    assert sp.temperature == 0.0 and sp.top_p == 1.0 and sp.stop is None
    assert "max_model_len" not in fake.engine_args


def test_vllm_engine_seed_mode_leaves_requests_unseeded_and_engine_knobs_reach_the_engine(model_dir, problems,
                                                                                           monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=2, prompt_style="chat", stop=[], seed=7,
                            seed_mode="engine", max_num_seqs=128, prefix_caching=False)
    list(get_backend("vllm").generate(problems, params))
    assert all(sp.seed is None for sp in fake.sampling)  # the engine's generator: vLLM's batched sampler
    assert fake.engine_args["seed"] == 7 and fake.engine_args["max_num_seqs"] == 128
    assert fake.engine_args["enable_prefix_caching"] is False
    # The default: each request seeded from the problem; vLLM's own max_num_seqs; prefix caching on.
    list(get_backend("vllm").generate(problems, GenerateParams(backend="vllm", model=str(model_dir), n=2,
                                                               prompt_style="chat", stop=[], seed=7)))
    assert [sp.seed for sp in fake.sampling] == [problem_seed(7, p.problem_id) for p in problems]
    assert "max_num_seqs" not in fake.engine_args and fake.engine_args["enable_prefix_caching"] is True


def test_vllm_missing_says_how_to_install(model_dir, problems, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm raises ImportError
    params = GenerateParams(backend="vllm", model=str(model_dir), n=1, prompt_style="chat", stop=[])
    with pytest.raises(ParamsError, match=r"fractal\[gpu\]"):
        list(get_backend("vllm").generate(problems[:1], params))


def test_vllm_tensor_parallel_size_reaches_the_engine(model_dir, problems, monkeypatch):
    fake = _FakeVLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=2, prompt_style="chat", stop=[],
                            tensor_parallel_size=4)
    list(get_backend("vllm").generate(problems, params))
    assert fake.engine_args["tensor_parallel_size"] == 4
    list(get_backend("vllm").generate(problems, dataclasses.replace(params, tensor_parallel_size=1)))
    assert "tensor_parallel_size" not in fake.engine_args  # vLLM's default: one GPU


class _FakeRayDataLLM:
    """ray.data (from_items) and ray.data.llm (vLLMEngineProcessorConfig, build_processor) as
    documented: the processor answers every row with ANSWER, tokens [5, 6, 7] at -0.5 each
    (token ids as strings, as they may come back through Arrow), rows in reverse order."""

    def __init__(self) -> None:
        self.config: dict[str, Any] = {}
        self.rows: list[dict[str, Any]] = []
        fake = self
        self.data = types.ModuleType("ray.data")
        self.llm = types.ModuleType("ray.data.llm")
        self.data.llm = self.llm
        self.data.from_items = lambda rows: list(rows)

        def config(**kw: Any) -> dict[str, Any]:
            fake.config = kw
            return kw

        class Done:
            def __init__(self, rows: list[dict[str, Any]]) -> None:
                self.rows = rows

            def take_all(self) -> list[dict[str, Any]]:
                return self.rows

        def build_processor(cfg: dict[str, Any]):
            def run(ds: list[dict[str, Any]]) -> Done:
                fake.rows = ds
                return Done([{**row, "generated_text": ANSWER, "generated_tokens": [5, 6, 7],
                              "logprobs": [{str(t): {"logprob": -0.5}} for t in (5, 6, 7)]} for row in reversed(ds)])
            return run

        self.llm.vLLMEngineProcessorConfig = config
        self.llm.build_processor = build_processor


def test_vllm_data_parallel_runs_ray_data_llm_replicas_with_the_same_records(model_dir, problems, monkeypatch,
                                                                             tmp_path):
    from transformers import AutoTokenizer

    monkeypatch.chdir(tmp_path)  # no .fractal/executor.yaml: no cluster named, Ray Data starts Ray here
    monkeypatch.delenv("FRACTAL_RAY_ADDRESS", raising=False)
    fake, ray_data = _FakeVLLM(), _FakeRayDataLLM()
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setitem(sys.modules, "ray.data", ray_data.data)
    monkeypatch.setitem(sys.modules, "ray.data.llm", ray_data.llm)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=3, prompt_style="chat", stop=["\n```\n"],
                            temperature=0.8, top_p=0.9, max_tokens=64, seed=3, max_model_len=512,
                            tensor_parallel_size=2, data_parallel_size=4)
    gens = list(get_backend("vllm").generate(problems, params))

    assert fake.engine_args == {}  # no engine in this process: the replicas are Ray Data's
    cfg = ray_data.config
    assert cfg["model_source"] == str(model_dir) and cfg["concurrency"] == 4 and cfg["batch_size"] % 3 == 0
    assert cfg["engine_kwargs"]["tensor_parallel_size"] == 2 and cfg["engine_kwargs"]["max_model_len"] == 512
    assert "model" not in cfg["engine_kwargs"]
    assert (cfg["chat_template_stage"], cfg["tokenize_stage"], cfg["detokenize_stage"]) == (False, False, False)
    tok = AutoTokenizer.from_pretrained(model_dir)
    want_ids = [encode_prompt(tok, render_prompt(p, "chat", tok), "chat") for p in problems]
    rows = ray_data.rows
    assert [(r["problem"], r["sample"]) for r in rows] == [(i, j) for i in range(len(problems)) for j in range(3)]
    assert [r["tokenized_prompt"] for r in rows] == [want_ids[r["problem"]] for r in rows]
    sp = [r["sampling_params"] for r in rows]
    assert all((s["n"], s["temperature"], s["top_p"], s["max_tokens"], s["stop"], s["logprobs"])
               == (1, 0.8, 0.9, 64, ["\n```\n"], 0) for s in sp)
    assert [s["seed"] for s in sp] == [problem_seed(3, f"{problems[r['problem']].problem_id}#{r['sample']}")
                                       for r in rows]
    assert len({s["seed"] for s in sp}) == len(sp)  # every sample its own stream

    # The records of one engine's run: problems in order, samples 0..n-1, the same fields.
    assert [(g.problem_id, g.sample) for g in gens] == [(p.problem_id, i) for p in problems for i in range(3)]
    assert all(g.program == "def f(x):\n    return x\n" and g.completion == ANSWER for g in gens)
    assert all(g.backend == "vllm" and g.n_tokens == 3 and g.logprob == pytest.approx(-1.5) for g in gens)


def test_vllm_data_parallel_engine_seed_mode_leaves_rows_unseeded(model_dir, problems, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRACTAL_RAY_ADDRESS", raising=False)
    ray_data = _FakeRayDataLLM()
    monkeypatch.setitem(sys.modules, "vllm", _FakeVLLM())
    monkeypatch.setitem(sys.modules, "ray.data", ray_data.data)
    monkeypatch.setitem(sys.modules, "ray.data.llm", ray_data.llm)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=2, prompt_style="chat", stop=[], seed=7,
                            seed_mode="engine", data_parallel_size=2)
    list(get_backend("vllm").generate(problems[:1], params))
    assert [r["sampling_params"]["seed"] for r in ray_data.rows] == [None, None]
    assert ray_data.config["engine_kwargs"]["seed"] == 7


def test_vllm_data_parallel_without_ray_data_says_what_to_install(model_dir, problems, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", _FakeVLLM())
    monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data raises ImportError
    params = GenerateParams(backend="vllm", model=str(model_dir), n=1, prompt_style="chat", stop=[],
                            data_parallel_size=2)
    with pytest.raises(ParamsError, match=r"generate.data_parallel_size.*ray\[data,llm\]"):
        list(get_backend("vllm").generate(problems[:1], params))


# ---- the real engine, where there is a GPU --------------------------------------------------


def _gpus_reason(count: int) -> str | None:
    reason = _gpu_reason()
    if reason:
        return f"needs CUDA GPUs ({count}) and vllm: {reason}"
    import torch

    found = torch.cuda.device_count()
    return None if found >= count else f"needs CUDA GPUs: {count} (found {found})"


@pytest.mark.gpu
@pytest.mark.skipif(_gpus_reason(2) is not None, reason=str(_gpus_reason(2)))
def test_vllm_tensor_parallel_on_two_gpus_gives_one_gpus_greedy_programs(model_dir, problems):
    common = dict(backend="vllm", model=str(model_dir), n=1, prompt_style="chat", stop=[], max_tokens=64,
                  temperature=0.0, dtype="float32", gpu_memory_utilization=0.3, max_model_len=1024)
    one = list(get_backend("vllm").generate(problems, GenerateParams(**common)))
    two = list(get_backend("vllm").generate(problems, GenerateParams(**common, tensor_parallel_size=2)))
    assert [g.program for g in one] == [g.program for g in two]


@pytest.mark.gpu
@pytest.mark.skipif(_gpus_reason(2) is not None or importlib.util.find_spec("ray") is None,
                    reason=str(_gpus_reason(2) or "needs ray[data,llm]"))
def test_vllm_data_parallel_on_two_gpus_through_ray_data_llm(model_dir, problems, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRACTAL_RAY_ADDRESS", raising=False)
    params = GenerateParams(backend="vllm", model=str(model_dir), n=4, prompt_style="chat", stop=[], max_tokens=64,
                            temperature=1.0, top_p=1.0, dtype="bfloat16", gpu_memory_utilization=0.3,
                            max_model_len=1024, data_parallel_size=2)
    first = list(get_backend("vllm").generate(problems, params))
    again = list(get_backend("vllm").generate(problems[1:2], params))
    assert [(g.problem_id, g.sample) for g in first] == [(p.problem_id, i) for p in problems for i in range(4)]
    assert all(g.n_tokens and g.logprob is not None for g in first)
    # seeded per sample: a problem's samples do not depend on the others or on the replicas
    assert [g.completion for g in first if g.problem_id == problems[1].problem_id] == [g.completion for g in again]

@pytest.mark.gpu
@pytest.mark.skipif(_gpu_reason() is not None, reason=str(_gpu_reason()))
def test_vllm_on_the_tiny_model_agrees_with_transformers(tmp_path, problems):
    # A model taught the answers, so greedy decoding has clear winners that bf16 and fp32 agree on.
    teach = [(p.prompt, f"```python\n{p.reference}```") for p in problems]
    model_dir = build_tiny_model(tmp_path / "taught", teach=teach, steps=150)
    common = dict(model=str(model_dir), prompt_style="chat", stop=[], max_tokens=200, temperature=0.0, seed=0)
    vllm_gens = list(get_backend("vllm").generate(
        problems, GenerateParams(backend="vllm", n=2, dtype="bfloat16", gpu_memory_utilization=0.3,
                                 max_model_len=1024, **common)))
    hf_gens = list(get_backend("transformers").generate(
        problems, GenerateParams(backend="transformers", n=1, device="cpu", **common)))
    assert len(vllm_gens) == 2 * len(problems)
    for hf in hf_gens:
        ours = [g for g in vllm_gens if g.problem_id == hf.problem_id]
        assert all(g.program == hf.program for g in ours)
        assert all(g.n_tokens == hf.n_tokens for g in ours)
        assert all(g.logprob == pytest.approx(hf.logprob, abs=0.5) for g in ours)

    # Sampling: n samples per problem, seeded per problem.
    sampled = GenerateParams(backend="vllm", n=8, temperature=1.0, top_p=1.0, dtype="bfloat16",
                             gpu_memory_utilization=0.3, max_model_len=1024,
                             **{k: v for k, v in common.items() if k != "temperature"})
    first = list(get_backend("vllm").generate(problems, sampled))
    again = list(get_backend("vllm").generate(problems[1:2], sampled))
    assert [g.sample for g in first] == list(range(8)) * len(problems)
    assert [g.completion for g in first if g.problem_id == problems[1].problem_id] == [g.completion for g in again]
