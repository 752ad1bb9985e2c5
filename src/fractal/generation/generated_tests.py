"""Generated tests: the test cases the code model itself wrote, as plain data.

    records, stats = build_generated_tests(problems, samples_by_problem, test_case_limit)

These are what execution-agreement rankers (CodeT, SRank) rank with; they are never the
problem's real tests. Two sources:
- replay: the recorded test-case samples of microsoft/CodeT
  (HumanEval_codegen16B_..._test_case.jsonl), one line per test-generation prompt; lines
  map to problems through CodeT's prompts (HumanEval_for_test_case_generation.jsonl) by
  their exact text, as CodeT's `map_task_id_for_test_case` does (entry points alone are
  ambiguous: 158 names for 164 problems).
- transformers / vllm (or generate: the generate section's backend): CodeT's prompt
  (`codet_test_prompt`) sampled from the generate section's model through the generation
  backends; completion style continues the prompt's `assert `, chat style (instruct
  models) sends the prompt as the message and takes the fences out of the answer.

Parsing follows CodeT's `PostProcessor.test_case_extract` exactly (split on "assert ",
keep parts naming the entry point, cut at CodeT's stop tokens, keep what compiles), then
keeps the first `test_case_limit` of each sample, as CodeT's agreement does. Each of those
is then read as SRank reads it (FSoft-AI4Code/SRank-CodeRanker execution/utils.py
`convert_test_case_to_input_output`, `srank_sides`: its text rules, quirks included): an
input text naming `entry_point(` and an expected text, from `INPUT == EXPECTED` (either
side; blanks around the `==`) or `INPUT is True / False / None`. An input that is a call
of the entry point on plain data (literals and arithmetic on them, `60 * 15`, folded by
`fold_literal` with size limits) is that call's plain data; any other input
(`round(f(x), 2)`, `f(x)[0]`, `decode_cyclic(encode_cyclic('abc'))`, `f(x)` naming a
variable) is its expression text, which the probe evaluates in the candidate's module
inside the sandbox, as SRank evaluates it in the candidate's; nothing model-written runs
here. An expected text that folds to plain data makes a test; one that does not
(`____`, a variable, a call: SRank evaluates it against the problem's stub) leaves the
input without a test, as SRank keeps it: the rankers that cluster on outputs (SRank,
MBR-exec) see it, CodeT's test sets do not. What SRank keeps nothing of is counted, not
kept (`!=`, `<`, `is 2`, a bare call, `f(1)==2` without blanks, `____(f(1) == 2)`).
Where CodeT's cut leaves statements after the assert (`import numpy as np`, a stray
docstring), the assert alone is read (SRank would join them into the expected text and lose
the test); CodeT runs those lines too, and fails the test for every candidate when they
raise (an import of django).

Record (data/generated_tests.jsonl, one line per problem, in problems order):
    {"problem_id", "inputs": [call, ...], "tests": [{"input", "expected", "count"}, ...],
     "asserts": [source, ...]}
`inputs` are the distinct calls, as wire.encode_call writes them ([args, kwargs], plain data);
`tests` the distinct (input, expected) pairs, each pointing at its input, with `count`,
how many times the model wrote it (CodeT's and SRank's scores weigh a test by it); an input
is wire.encode_expression's {"expr": text} where it is not a call on plain data;
`asserts[j]` is the first source text that gave tests[j]. A problem whose samples hold
no usable assert has empty lists: of the recorded CodeGen-16B HumanEval samples, 9
problems have no assert CodeT would run, and 4 more no assert SRank reads a test from
(`assert ____(fib(2) == 1)`), so 13 have no test; HumanEval/45's and 115's only tests are
ones no candidate can pass (`assert _____, triangle_area(1, 1) == 0.5`, read by SRank as
the input `_____, triangle_area(1, 1)`; `max_fill(grid, capacity) == 42`, whose names are
not defined). CodeT's ranking is the same either way.

MBPP: the problem's prompt shows its real test asserts; the test-generation prompt does
not. It is built from the task text and the reference solution's `def` line (the name
and parameters only), so no real test reaches a generated test (the candidates themselves
were sampled from the prompt that shows the real asserts).
"""
from __future__ import annotations

import ast
import builtins
import dataclasses
import json
import math
import operator
import re
from pathlib import Path
from typing import Any, Iterable

from fractal.execution.wire import encode_call, encode_expression, encode_plain
from fractal.records import Problem

# CodeT's STOP_TOKEN (src/postprocess.py): a test case ends at the first of these.
CODET_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
MAX_ASSERT_CHARS = 10_000  # longer asserts are dropped: no model writes a useful one that long


def codet_extract(content: str, entry_point: str) -> list[str]:
    """The assert statements CodeT takes from one sample, in order (its
    `test_case_extract`, quirks included: a part that does not name the entry point, or
    that does not compile inside a try block, is dropped, e.g. `assert \\n f(1) == 2`)."""
    def truncate(text: str) -> str:
        for stop in CODET_STOP:
            if stop in text:
                text = text.split(stop)[0]
        return text.strip()

    parts = [f"assert {part}".strip() for part in f"assert {content}".split("assert ")
             if entry_point.strip() in part and len(part.strip()) > 0]
    return [t for t in map(truncate, parts) if _compiles_like_codet(t)]


def _compiles_like_codet(test_case: str) -> bool:
    if len(test_case.strip()) < 1 or "assert" not in test_case:
        return False
    block = "try:\n    " + test_case.replace("\n", "\n    ") + "\nexcept:\n    pass\n"
    try:
        compile(block, "", "exec", dont_inherit=True)
        return True
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
        return False


@dataclasses.dataclass
class ParsedAssert:
    call: str  # wire.encode_call's JSON text
    expected: Any  # encode_plain's form; None with has_expected False
    source: str
    trailing: bool = False  # statements followed the assert (CodeT would run them too)
    has_expected: bool = True  # False: the call is a generated input without a test


MAX_FOLDED = 10_000  # items or characters a folded `*`, and digits a folded `**`, may make
_FOLD_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
                ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_FOLD_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


def fold_literal(node: ast.expr) -> Any:
    """The value of a literal, or of arithmetic on literals (`60 * 15`, `'a' + 'b'`, `[2, 1 + 2]`,
    `2 ** 10`), computed without running anything else: names, calls, attributes and
    subscripts raise ValueError, as do a `*` or `**` that would build more than MAX_FOLDED
    items or digits. What the model writes as arithmetic it means as the value
    (`assert factorize(60 * 15) == [2, 2, 3, 3, 5, 5]`); SRank evaluates the same text."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [fold_literal(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ValueError("** in a dict display")
        return {fold_literal(k): fold_literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and type(node.op) in _FOLD_UNARY:
        return _FOLD_UNARY[type(node.op)](_number(fold_literal(node.operand)))
    if isinstance(node, ast.BinOp) and type(node.op) in _FOLD_BINARY:
        left, right = fold_literal(node.left), fold_literal(node.right)
        if isinstance(node.op, ast.Mult):
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and type(times) in (int, bool) and len(seq) * times > MAX_FOLDED:
                    raise ValueError("too large")
        if isinstance(node.op, ast.Pow):
            left, right = _number(left), _number(right)
            if abs(right) > 1 and abs(left) > 1 and abs(right) * math.log10(abs(left)) > MAX_FOLDED:
                raise ValueError("too large")
        try:
            return _FOLD_BINARY[type(node.op)](left, right)
        except (TypeError, ZeroDivisionError, OverflowError) as e:
            raise ValueError(str(e)) from None
    raise ValueError(f"not plain data: {type(node).__name__}")


def _number(v: Any) -> Any:
    if type(v) not in (int, float, complex, bool):
        raise ValueError("not a number")
    return v


def srank_sides(source: str, stub: str, entry_point: str) -> tuple[str, str] | None:
    """SRank's reading of one assert (execution/utils.py `convert_test_case_to_input_output`,
    text rules and quirks included): (input text, expected text), or None where SRank
    keeps nothing. Docstrings and newlines go; a last comma-separated part that is a value
    is an assert message and goes; one pair of parentheses around the comparison goes; then
    `assert INPUT == EXPECTED` with blanks around the first `==` (so `f(1)==2` is dropped),
    or, where no `==` appears, `assert INPUT is True|False|None`; the sides swap when the
    expected one names `entry_point(`; the input must name `entry_point(` (`x.f(1)` does)
    and compile after the problem's stub (`stub` + `pass`, SRank's prompt + `pass`). SRank
    evaluates the message with eval; here it is a message when it folds to plain data or
    names a builtin, so nothing runs."""
    text = re.sub("'''.*?'''", "", source, flags=re.DOTALL)
    text = re.sub('""".*?"""', "", text, flags=re.DOTALL)
    text = text.replace("\n", "")
    if "," in text:
        parts = text.split(",")
        if _is_value(parts[-1]):
            text = ",".join(parts[:-1])
    comparison = text.lstrip("assert").strip()  # lstrip of the letters, as SRank does
    if comparison.startswith("(") and comparison.endswith(")"):
        text = f"assert {comparison[1:-1]}"
    if "==" in text:
        match = re.match(r"assert\s+(.*?)\s+(==)\s+(.+)", text)
    else:
        match = re.match(r"assert\s+(.*?)\s+(is)\s+(True|False|None)", text)
    if not match:
        return None
    input_text, _, expected_text = match.groups()
    called = re.compile(re.escape(entry_point) + r"\(.*?\)")  # SRank's pattern, its name escaped
    if called.search(expected_text):
        input_text, expected_text = expected_text, input_text
    if not called.search(input_text) or not input_text.strip():
        return None
    try:
        compile(stub + f"\n    pass\n{input_text}", "", "exec", dont_inherit=True)
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
        return None
    return input_text, expected_text


def _is_value(text: str) -> bool:
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    if isinstance(node, ast.Name):
        return node.id in dir(builtins)
    try:
        fold_literal(node)
        return True
    except (ValueError, TypeError, RecursionError, MemoryError, OverflowError):
        return False


def parse_assert(source: str, entry_point: str, stub: str = "") -> ParsedAssert | str:
    """One assert as SRank reads it (`srank_sides`), or why it is dropped: "comparison"
    (SRank keeps nothing of it). The input is a plain call (`f(args)` on plain data after
    folding: `wire.encode_call`) or else SRank's input text (`round(f(x), 2)`, `f(x)[0]`,
    `f(x)` naming a variable: `wire.encode_expression`), which the probe evaluates in the
    candidate's module in the sandbox, as SRank does; nothing of it runs here. A
    ParsedAssert whose expected value is not plain data has `has_expected` False: its
    input is kept without a test, as SRank keeps it. `stub`: the problem's (`test_stub`);
    by default a bare `def entry_point(*args, **kwargs):`."""
    if len(source) > MAX_ASSERT_CHARS:
        return "comparison"
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        tree = None
    trailing = tree is not None and len(tree.body) > 1
    # Where CodeT's cut leaves statements after the assert (`import numpy as np`, `x = f`),
    # the assert alone is read: SRank joins the lines first, which would put them into the
    # expected text and lose the test (30 asserts of the recorded file; a chat model's
    # fenced answer often ends so).
    text = (ast.get_source_segment(source, tree.body[0]) or source) if trailing else source
    sides = srank_sides(text, stub or f"def {entry_point}(*args, **kwargs):", entry_point)
    if sides is None:
        return "comparison"
    input_text, expected_text = sides
    try:
        node = ast.parse(input_text.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return "comparison"  # compiles after the stub only as statements (`f(1); g(2)`)
    try:
        encoded_call = _plain_call(node, entry_point)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError):
        # ValueError also: an int literal beyond Python's digit limit
        try:
            encoded_call = encode_expression(ast.unparse(node))  # one text per expression, whatever its layout
        except (ValueError, RecursionError, MemoryError):
            return "comparison"
    try:
        encoded_expected = encode_plain(fold_literal(ast.parse(expected_text.strip(), mode="eval").body))
        json.dumps(encoded_expected)  # NaN and inf are fine (allow_nan); nothing else can fail
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError, OverflowError):
        return ParsedAssert(encoded_call, None, source, trailing=trailing, has_expected=False)
    return ParsedAssert(encoded_call, encoded_expected, source, trailing=trailing)


def _plain_call(node: ast.expr, entry_point: str) -> str:
    """`entry_point(args)` on plain data as wire.encode_call's text; ValueError otherwise."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == entry_point):
        raise ValueError("not a plain call of the entry point")
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise ValueError("* or ** arguments")
    args = [fold_literal(a) for a in node.args]
    kwargs = {k.arg: fold_literal(k.value) for k in node.keywords}
    return encode_call(tuple(args), kwargs)


@dataclasses.dataclass
class GenerationStats:
    samples: int = 0
    blank_samples: int = 0  # whitespace only
    asserts: int = 0  # CodeT's asserts within the limit
    kept: int = 0  # of those, tests (before deduplication)
    kept_with_trailing_code: int = 0  # of those, asserts that more statements followed
    dropped_comparison: int = 0
    expressions: int = 0  # of the tests and inputs, asserts whose input is an expression (not a plain call)
    inputs_only: int = 0  # asserts whose call is kept as an input, the expected value not being plain data
    without_asserts: list[str] = dataclasses.field(default_factory=list)  # problem ids: CodeT finds no assert
    without_tests: list[str] = dataclasses.field(default_factory=list)  # problem ids: no assert kept


def generated_tests_record(problem: Problem, samples: Iterable[str], limit: int, stats: GenerationStats) -> dict:
    """The record of one problem from the model's test-case samples (see the module doc)."""
    inputs: list[str] = []
    input_index: dict[str, int] = {}
    tests: list[dict] = []
    asserts: list[str] = []
    test_index: dict[tuple[int, str], int] = {}
    n_asserts = stats.asserts
    stub = test_stub(problem)
    for sample in samples:
        stats.samples += 1
        if not sample.strip():
            stats.blank_samples += 1
            continue
        for source in codet_extract(sample, problem.entry_point)[:limit]:
            stats.asserts += 1
            parsed = parse_assert(source, problem.entry_point, stub)
            if isinstance(parsed, str):
                stats.dropped_comparison += 1
                continue
            stats.expressions += parsed.call.startswith('{"expr"')
            i = input_index.setdefault(parsed.call, len(inputs))
            if i == len(inputs):
                inputs.append(parsed.call)
            if not parsed.has_expected:
                stats.inputs_only += 1
                continue
            stats.kept += 1
            stats.kept_with_trailing_code += parsed.trailing
            key = (i, json.dumps(parsed.expected, sort_keys=True))
            j = test_index.get(key)
            if j is None:
                test_index[key] = len(tests)
                tests.append({"input": i, "expected": parsed.expected, "count": 1})
                asserts.append(source)
            else:
                tests[j]["count"] += 1
    if stats.asserts == n_asserts:
        stats.without_asserts.append(problem.problem_id)
    if not tests:
        stats.without_tests.append(problem.problem_id)
    return {"problem_id": problem.problem_id, "inputs": inputs, "tests": tests, "asserts": asserts}


def build_generated_tests(problems: list[Problem], samples_by_problem: dict[str, list[str]],
                          limit: int) -> tuple[list[dict], GenerationStats]:
    stats = GenerationStats()
    records = [generated_tests_record(p, samples_by_problem[p.problem_id], limit, stats) for p in problems]
    return records, stats


# ---------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------
def _read_lines(path: Path, what: str) -> list[dict]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file ({what})")
    out = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return out


def load_recorded_tests(test_case_file: str | Path, prompts_file: str | Path,
                        problems: list[Problem]) -> dict[str, list[str]]:
    """{problem_id: recorded test-case samples}: each line of `test_case_file` ({prompt,
    samples}) is mapped to a task id through the exact text of CodeT's test-generation
    prompts in `prompts_file` ({task_id, prompt, ...})."""
    test_case_file, prompts_file = Path(test_case_file), Path(prompts_file)
    task_of = {}
    for row in _read_lines(prompts_file, "CodeT's test-generation prompts"):
        task_of[row["prompt"]] = row["task_id"]
    by_task: dict[str, list[str]] = {}
    for lineno, row in enumerate(_read_lines(test_case_file, "recorded test cases"), 1):
        try:
            prompt, samples = row["prompt"], row["samples"]
        except (KeyError, TypeError):
            raise ValueError(f"{test_case_file}:{lineno}: expected {{'prompt': str, 'samples': [str]}}") from None
        task = task_of.get(prompt)
        if task is None:
            raise ValueError(f"{test_case_file}:{lineno}: its prompt is none of the prompts in {prompts_file}; "
                             "are the two files from the same CodeT release?")
        by_task.setdefault(task, []).extend(samples)
    missing = [p.problem_id for p in problems if p.problem_id not in by_task]
    if missing:
        raise ValueError(f"{test_case_file}: no recorded test cases for {len(missing)} problem(s) "
                         f"(first: {missing[0]}); set gentests.source to a model backend (transformers, vllm), "
                         "or to none to rank without generated tests")
    return by_task


_DEF = re.compile(r"^def\s+([A-Za-z_]\w*)\s*\(.*?\)\s*(->[^:]*)?:", re.M | re.S)


def test_stub(problem: Problem) -> str:
    """The function header and docstring the test-generation prompt shows. HumanEval: the
    problem's prompt. MBPP: the reference's `def` line of the entry point and the task text
    as docstring; never the real test asserts the problem's prompt shows."""
    if problem.text:
        header = _def_line(problem.reference, problem.entry_point)
        text = problem.text.replace('"""', "'''")
        return f'{header}\n    """{text}\n    """\n'
    return problem.prompt.rstrip() + "\n"


def codet_test_prompt(problem: Problem) -> str:
    """CodeT's test-generation prompt: the stub with its docstring (`test_stub`), `pass`,
    then `# check the correctness of {entry_point}` and `assert `."""
    return f"{test_stub(problem)}    pass\n\n# check the correctness of {problem.entry_point}\nassert "


def _def_line(reference: str, entry_point: str) -> str:
    for m in _DEF.finditer(reference):
        if m.group(1) == entry_point:
            return m.group(0)
    return f"def {entry_point}(*args):"


def sample_tests(problems: list[Problem], backend_name: str, generate_params: Any) -> dict[str, list[str]]:
    """{problem_id: completions of CodeT's test prompt}, sampled with a generation backend
    (transformers or vllm) under `generate_params` (a GenerateParams). Completion style: the
    model continues the prompt's `assert `. Chat style (instruct models): the prompt is the
    user's message as it stands, and the fences of a fenced answer are taken out."""
    from fractal.generation.backend import get_backend

    chat = generate_params.prompt_style == "chat"
    # Problem.text non-empty: a chat message is the prompt itself (see prompts.chat_messages).
    prompted = [dataclasses.replace(p, prompt=codet_test_prompt(p), text="tests" if chat else "") for p in problems]
    out: dict[str, list[str]] = {p.problem_id: [] for p in problems}
    for g in get_backend(backend_name).generate(prompted, generate_params):
        out[g.problem_id].append(_FENCE.sub("", g.completion) if chat else g.completion)
    return out


_FENCE = re.compile(r"^[ \t]*```[\w-]*[ \t]*$", re.M)


def generated_tests(problems: list[Problem], params: Any, generate_params: Any) -> tuple[list[dict], GenerationStats]:
    """The generated-tests records of `problems` under the gentests section `params`
    (source replay: the recorded file; transformers / vllm, or generate (generate's own
    backend): the generate section's model, with gentests' sampling params and no stop
    sequences, CodeT's parsing cuts each assert; none: no test for any problem, for samples
    brought without a model or recorded tests)."""
    from fractal.params import ParamsError

    if params.test_case_limit < 1:
        raise ParamsError(f"params.yaml: `gentests.test_case_limit` is {params.test_case_limit}; it must be >= 1")
    if params.samples < 0:
        raise ParamsError(f"params.yaml: `gentests.samples` is {params.samples}; use 0 (all recorded) or more")
    if params.source == "replay":
        samples = load_recorded_tests(params.file, params.prompts_file, problems)
        if params.samples:
            short = [pid for pid, s in samples.items() if len(s) < params.samples]
            if short:
                raise ParamsError(f"params.yaml: `gentests.samples` is {params.samples} but {params.file} has fewer "
                                  f"for {len(short)} problem(s) (first: {short[0]})")
            samples = {pid: s[: params.samples] for pid, s in samples.items()}
    elif params.source == "none":
        # No generated test anywhere: the execution rankers tie on every problem (a uniform
        # pick, their documented fallback); the others rank as always.
        samples = {p.problem_id: [] for p in problems}
    elif params.source in ("transformers", "vllm", "generate"):
        backend = generate_params.backend if params.source == "generate" else params.source
        if backend not in ("transformers", "vllm"):
            raise ParamsError(f"params.yaml: `gentests.source` is generate but `generate.backend` is {backend!r}; "
                              "set gentests.source to replay (recorded test cases) or to transformers / vllm")
        if params.samples < 1:
            raise ParamsError(f"params.yaml: `gentests.samples` must be >= 1 for source {params.source}")
        if params.prompt_style not in ("completion", "chat"):
            raise ParamsError(f"params.yaml: `gentests.prompt_style` is {params.prompt_style!r}; "
                              "choose completion or chat")
        sampling = dataclasses.replace(generate_params, backend=backend, n=params.samples, stop=[],
                                       temperature=params.temperature, top_p=params.top_p,
                                       max_tokens=params.max_tokens, seed=params.seed,
                                       prompt_style=params.prompt_style)
        samples = sample_tests(problems, backend, sampling)
    else:
        raise ParamsError(f"params.yaml: `gentests.source` is {params.source!r}; "
                          "choose replay, generate, transformers, vllm or none")
    return build_generated_tests(problems, samples, params.test_case_limit)
