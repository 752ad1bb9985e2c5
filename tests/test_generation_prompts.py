"""Prompts, code extraction, model sources and the generate-section check: no model needed."""
from __future__ import annotations

import json

import pytest

from fractal.generation.check import check_generate
from fractal.generation.model_source import ModelNotFound, check_model_spec, resolve_model
from fractal.generation.postprocess import build_program, extract_code
from fractal.generation.prompts import chat_messages, completion_prompt
from fractal.generation.sampling import check_sampling, problem_seed
from fractal.params import GenerateParams
from fractal.records import Problem

MBPP = Problem(
    problem_id="MBPP/2", benchmark="mbpp", split="train",
    prompt="Write a function to add.\nYour code should pass these tests:\n\nassert add(1, 2) == 3\n",
    entry_point="add", tests="assert add(1, 2) == 3\n", reference="def add(a, b):\n    return a + b\n",
    test_style="asserts", text="Write a function to add.",
)
HUMANEVAL = Problem(
    problem_id="HumanEval/0", benchmark="humaneval", split="test",
    prompt='from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    entry_point="total", tests="def check(c):\n    assert c([1, 2]) == 3\n", reference="",
)


def test_mbpp_chat_prompt_is_the_task_and_its_asserts():
    assert chat_messages(MBPP) == [{"role": "user", "content": MBPP.prompt}]


def test_humaneval_chat_prompt_shows_the_code_to_complete():
    (message,) = chat_messages(HUMANEVAL)
    assert message["role"] == "user" and HUMANEVAL.prompt.rstrip() in message["content"]


def test_completion_prompt_continues_code_and_comments_out_a_task():
    assert completion_prompt(HUMANEVAL) == HUMANEVAL.prompt
    prompt = completion_prompt(MBPP)
    program = build_program(MBPP, "def add(a, b):\n    return a + b\n", "completion", prompt)
    exec(compile(program + MBPP.tests, "<program>", "exec"), {})


@pytest.mark.parametrize("answer", [
    "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```\nIt adds.",
    "```\ndef add(a, b):\n    return a + b\n```",
    "```sh\npip install nothing\n```\n```python\ndef add(a, b):\n    return a + b\n```",
    "```python\ndef helper():\n    pass\n```\n\n```python\ndef add(a, b):\n    return a + b\n```",
    "Sure.\ndef add(a, b):\n    return a + b\n\nThis function returns the sum of a and b.",
    "  ```python\n  def add(a, b):\n      return a + b\n  ```",
])
def test_extracted_code_passes(answer):
    program = build_program(MBPP, answer, "chat")
    exec(compile(program + MBPP.tests, "<program>", "exec"), {})


def test_an_answer_cut_off_inside_a_fence_keeps_what_was_written():
    assert extract_code("```python\ndef add(a, b):\n    return (a", "add") == "def add(a, b):\n    return (a\n"


@pytest.mark.parametrize("answer", [
    "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```",  # the prompt's import is put back
    "```python\n    return sum(xs)\n```",  # the body alone continues the prompt
    "```python\nreturn sum(xs)\n```",  # a dedented body too
])
def test_humaneval_chat_programs_run(answer):
    program = build_program(HUMANEVAL, answer, "chat")
    env: dict = {}
    exec(compile(program + HUMANEVAL.tests, "<program>", "exec"), env)
    env["check"](env["total"])


def test_problem_seed_is_stable_and_differs_by_problem_and_seed():
    assert problem_seed(0, "MBPP/2") == problem_seed(0, "MBPP/2")
    assert len({problem_seed(0, "MBPP/2"), problem_seed(1, "MBPP/2"), problem_seed(0, "MBPP/3")}) == 3
    assert 0 <= problem_seed(7, "x") < 2**31


def test_sampling_checks_name_the_keys():
    bad = GenerateParams(n=0, temperature=-1, top_p=0, max_tokens=0, dtype="fp8", device="tpu", stop=[""])
    keys = " ".join(check_sampling(bad))
    for key in ("generate.n", "temperature", "top_p", "max_tokens", "dtype", "device", "generate.stop"):
        assert key in keys


def test_model_spec_formats():
    assert check_model_spec("Qwen/Qwen2.5-Coder-1.5B-Instruct") is None
    assert "hub id" in check_model_spec("not a model!")
    assert "config.json" in check_model_spec("/nonexistent/models/qwen")
    assert "empty" in check_model_spec("")


def test_local_model_directory_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_missing_local_model_says_where_to_put_the_weights(tmp_path):
    with pytest.raises(ModelNotFound, match="hf download"):
        resolve_model(str(tmp_path / "qwen"))


def test_offline_missing_hub_model_fails_at_once_saying_how_to_download(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFound) as e:
        resolve_model("Qwen/Qwen2.5-Coder-1.5B-Instruct")
    message = str(e.value)
    assert "generate.model" in message and "HF_HUB_OFFLINE" in message
    assert "hf download Qwen/Qwen2.5-Coder-1.5B-Instruct" in message


def test_check_generate_errors_and_notes(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    found = check_generate(GenerateParams(backend="vllm", model="Qwen/Qwen2.5-Coder-1.5B-Instruct",
                                          prompt_style="chat", stop=[]))
    assert found.errors == []
    assert any("not in this machine's Hugging Face cache" in n for n in found.notes)
    found = check_generate(GenerateParams(backend="transformers", model="./no/such/dir", prompt_style="chat",
                                          stop=["\nclass", "\ndef", "\n#", "\nif", "\nprint"]))
    assert any("config.json" in e for e in found.errors)
    assert any("stop" in n for n in found.notes)  # completion-style stops on a chat model
    found = check_generate(GenerateParams(backend="gpt"))
    assert "generate.backend" in found.errors[0]
