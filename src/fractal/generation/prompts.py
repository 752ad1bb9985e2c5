"""What the model is shown, in the two styles that match how models were trained.

- completion (base models): the model continues text. A code prompt (HumanEval: the
  function header and docstring) is continued as is; a natural-language task (MBPP) is
  turned into a comment block, so that prompt + completion is still a Python program.
- chat (instruct models): one user message, rendered by the tokenizer's own chat
  template. MBPP's message is the task plus its test asserts (Problem.prompt, the
  reference experiment's prompt); a code prompt is shown in a fenced block to complete.

Both backends render and tokenize prompts here, so they feed a model the same tokens.
"""
from __future__ import annotations

from typing import Any

from fractal.params import ParamsError
from fractal.records import Problem

STYLES = ("completion", "chat")


def completion_prompt(problem: Problem) -> str:
    """The text a base model continues."""
    if not problem.text:  # the prompt is code
        return problem.prompt
    # Comments, not a docstring: task text and asserts may themselves contain quotes.
    return "".join(f"# {line}".rstrip() + "\n" for line in problem.prompt.splitlines())


def chat_messages(problem: Problem) -> list[dict[str, str]]:
    """The conversation an instruct model answers: one user turn, no system prompt (the
    template adds the model's default one, if it has one)."""
    if problem.text:
        content = problem.prompt
    else:
        content = ("Complete the following Python function. Answer with the whole function "
                   "in a ```python code block.\n\n```python\n" + problem.prompt.rstrip("\n") + "\n```\n")
    return [{"role": "user", "content": content}]


def render_prompt(problem: Problem, style: str, tokenizer: Any, model: str = "") -> str:
    """The prompt text in the given style; chat goes through the tokenizer's chat template."""
    if style == "completion":
        return completion_prompt(problem)
    if style == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise ParamsError(
                f"params.yaml: `generate.prompt_style` is chat but the tokenizer of {model or 'the model'} "
                f"has no chat template; use prompt_style: completion for base models"
            )
        return tokenizer.apply_chat_template(chat_messages(problem), tokenize=False, add_generation_prompt=True)
    raise ParamsError(f"params.yaml: `generate.prompt_style` is {style!r}; choose one of {', '.join(STYLES)}")


def encode_prompt(tokenizer: Any, text: str, style: str) -> list[int]:
    """Token ids of a rendered prompt. A chat template already writes every special token
    the model expects; a completion prompt gets the tokenizer's own (e.g. a BOS token)."""
    ids = tokenizer(text, add_special_tokens=(style == "completion"))["input_ids"]
    return list(ids)
