"""The transformers backend on a tiny random Qwen2 model built by the test (no downloads)."""
from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the transformers backend needs torch")

from fractal.benchmarks import load_mbpp  # noqa: E402
from fractal.generation import get_backend  # noqa: E402
from fractal.generation.prompts import encode_prompt, render_prompt  # noqa: E402
from fractal.generation.transformers_backend import _score, _stop_criteria  # noqa: E402
from fractal.params import GenerateParams, ParamsError  # noqa: E402
from fractal.records import Problem  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="module")
def problems():
    return [p for p in load_mbpp("local") if p.split == "train"][:3]


def _params(model_dir, **kw) -> GenerateParams:
    base = dict(backend="transformers", model=str(model_dir), n=3, prompt_style="chat", stop=[],
                temperature=1.0, top_p=0.95, max_tokens=12, batch_size=2, seed=1)
    base.update(kw)
    return GenerateParams(**base)


def test_n_records_per_problem_with_backend_model_logprob_and_tokens(model_dir, problems):
    params = _params(model_dir)
    gens = list(get_backend("transformers").generate(problems, params))
    assert [(g.problem_id, g.sample) for g in gens] == [(p.problem_id, i) for p in problems for i in range(3)]
    for g in gens:
        assert g.backend == "transformers" and g.model == str(model_dir)
        assert 1 <= g.n_tokens <= params.max_tokens
        assert g.logprob is not None and math.isfinite(g.logprob) and g.logprob < 0
        assert isinstance(g.program, str) and isinstance(g.completion, str)


def test_samples_are_seeded_per_problem(model_dir, problems):
    backend = get_backend("transformers")
    params = _params(model_dir)
    together = [g for g in backend.generate(problems, params) if g.problem_id == problems[1].problem_id]
    alone = list(backend.generate([problems[1]], params))
    assert [(g.completion, g.logprob) for g in together] == [(g.completion, g.logprob) for g in alone]
    other_seed = list(backend.generate([problems[1]], _params(model_dir, seed=2)))
    assert [g.completion for g in other_seed] != [g.completion for g in alone]


def test_greedy_samples_are_identical(model_dir, problems):
    gens = list(get_backend("transformers").generate(problems[:1], _params(model_dir, temperature=0.0)))
    assert len({(g.completion, g.n_tokens) for g in gens}) == 1
    assert len({round(g.logprob, 4) for g in gens}) == 1


def test_completion_style_stops_before_stop_sequences(model_dir, problems):
    # Random weights write random bytes; single characters as stop sequences make them stop early.
    stops = ["e", "t", "a", "o", " ", "\n", "(", ")"]
    params = _params(model_dir, prompt_style="completion", stop=stops, n=4, max_tokens=20)
    gens = list(get_backend("transformers").generate(problems[:2], params))
    assert all(not any(s in g.completion for s in stops) for g in gens)
    assert any(g.n_tokens < params.max_tokens for g in gens), "no sample stopped at a stop sequence"
    prompt = "".join(f"# {line}".rstrip() + "\n" for line in problems[0].prompt.splitlines())
    assert gens[0].program == prompt + gens[0].completion


def test_stop_criteria_records_where_each_row_ended(model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompt = tok("x = 1", add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    a = tok("y = 2\ndef f", add_special_tokens=False)["input_ids"]
    b = tok("z = 3", add_special_tokens=False)["input_ids"] + [eos]
    crit = _stop_criteria(tok, ["\ndef"], [eos], len(prompt), 2)
    width = max(len(a), len(b))
    done = None
    for step in range(1, width + 1):
        rows = [prompt + (a + [eos] * width)[:step], prompt + (b + [eos] * width)[:step]]
        done = crit(torch.tensor(rows), None)
    assert done.tolist() == [True, True]
    # Row a ends with the token that completes "\ndef" (not at " f"); row b with its end token.
    a_end = min(k for k in range(1, len(a) + 1) if "\ndef" in tok.decode(a[:k]))
    assert a_end < len(a)
    assert crit.ended_at == [a_end, len(b)]


def test_score_sums_the_kept_tokens_log_probabilities(model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    prompt_len, lengths = 4, [5, 2]
    with torch.inference_mode():
        got = _score(model, tokens, prompt_len, lengths)
        logp = torch.log_softmax(model(input_ids=tokens).logits.float(), dim=-1)
    for r, n in enumerate(lengths):
        want = sum(float(logp[r, t - 1, tokens[r, t]]) for t in range(prompt_len, prompt_len + n))
        assert got[r] == pytest.approx(want, abs=1e-4)


def test_chat_prompt_goes_through_the_tokenizer_template(model_dir, problems):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = render_prompt(problems[0], "chat", tok)
    assert text == f"<|im_start|>user\n{problems[0].prompt}<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_prompt(tok, text, "chat")
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2


def test_chat_without_template_fails_naming_the_key(model_dir, problems):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = None
    with pytest.raises(ParamsError, match="prompt_style"):
        render_prompt(problems[0], "chat", tok)


def test_cuda_device_without_gpu_fails_naming_the_key(model_dir, problems):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; this checks the message on machines without one")
    with pytest.raises(ParamsError, match="generate.device"):
        list(get_backend("transformers").generate(problems[:1], _params(model_dir, device="cuda")))


def test_humaneval_style_code_prompt_is_continued(model_dir):
    problem = Problem(problem_id="T/0", benchmark="humaneval", split="test",
                      prompt="def add(a, b):\n    \"\"\"Adds.\"\"\"\n", entry_point="add",
                      tests="def check(c):\n    assert c(1, 2) == 3\n", reference="")
    gens = list(get_backend("transformers").generate([problem], _params(model_dir, prompt_style="completion", n=2)))
    assert all(g.program.startswith(problem.prompt) for g in gens)
