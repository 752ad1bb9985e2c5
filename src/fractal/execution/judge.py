"""Deciding pass/fail outside the candidate's process.

The choice: the benchmark's own tests run here, in the labeler, against a stand-in for
the candidate that returns the values the candidate returned in the sandbox.

1. Recording (`plan_tests`, once per problem): the tests run with the reference solution,
   and every call they make to the entry point is recorded as plain data (positional and
   keyword arguments). `random` is seeded, so tests with random inputs (HumanEval/32,
   /38, /53) make the same calls every time. The reference's runtime sets the time limit.
2. Execution (sandbox, worker.py): the candidate's program runs, then its entry point is
   called with each recorded input; each return value (or exception type) comes back as
   plain data. The sandbox never holds the tests, the expected values or the reference.
3. Judging (`judge`): the tests run again with the reference's namespace (so helpers the
   tests use, like HumanEval's `poly` or `encode_cyclic`, are the reference's, not the
   candidate's) and the stand-in replays the candidate's values in order.

What this buys: no `__eq__`, exit code, printed text, frame walk or patched builtin in the
candidate's process can reach the verdict, because the comparisons happen here on exact
builtin values; and the candidate cannot read expected answers to hard-code them.

Problems the tests cannot judge (`TestPlan.status`, per problem in metrics/label.json):
- `untestable`: the tests pass when every call answers a wrong stand-in (an object equal to
  nothing, and None): empty tests, a `check` that never calls the candidate, no assertion
  reached. Every candidate would pass, so none is run; all are excluded from pass rates.
- `reference_failed`: the reference fails its own tests, so recording with it stops at the
  failure. The inputs are recorded again without it (below) and candidates are judged on
  them, but the problem is excluded from pass rates: its tests or its reference are wrong.
- no reference (`Problem.reference == ""`): the inputs are recorded without one: the tests
  run with a recorder that answers every call with a stand-in and with assertions that
  cannot stop them (`assert x` becomes "evaluate x"), and the prompt's helpers (HumanEval's
  `poly`) as their namespace. That works when the tests' inputs do not depend on earlier
  outputs and nothing but an assertion fails on a wrong value (the run must end cleanly,
  twice alike); then the problem is `recorded_without_reference` and counts; otherwise
  `no_reference`: excluded, its candidates not run. Its time limit is the floor.

Limits of the choice (documented, checked where possible):
- Test inputs must not depend on earlier outputs; recording twice and comparing catches
  non-determinism, and the replay checks each call's arguments against the recording.
- Arguments must be plain data (true of HumanEval and MBPP's function tests). A problem
  whose tests pass objects (a class instance, a function) raises an error naming it.
- Effects other than the return value (mutating an argument in place, printing) are not
  seen by the tests. No HumanEval test looks at them.
- A returned object that is not plain data (a generator, an ndarray) equals nothing and
  keeps only its truth value; numpy scalars and subclasses of builtins keep their value.
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import io
import random
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from fractal.execution.wire import MalformedPlainData, decode_plain, encode_call, parse_frames
from fractal.records import Problem

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,79}")
TEST_SEED = 0


class UnreplayableTests(ValueError):
    pass


# A problem's status: whether its candidates are judged, and whether it counts in pass rates.
JUDGED = ("ok", "recorded_without_reference", "reference_failed")
COUNTED = ("ok", "recorded_without_reference")


@dataclass
class TestPlan:
    problem: Problem
    calls: list[str]  # each call's [args, kwargs], encoded (wire.encode_call)
    reference_seconds: float  # reference program + all its test calls, wall time (0: none ran)
    reference_passed: bool
    reference_code: Any  # the namespace the tests see: the reference, or the prompt's helpers
    tests_code: Any
    status: str = "ok"  # ok | recorded_without_reference | reference_failed | no_reference | untestable
    why: str = ""  # for a status other than ok, in a few words

    @property
    def calls_json(self) -> str:
        return "[" + ",".join(self.calls) + "]"

    def time_limit(self, factor: float, floor: float, cap: float) -> float:
        return round(min(cap, max(floor, factor * self.reference_seconds)), 3)  # to the ms: readable details


class _Missing(BaseException):
    """The candidate's process ended before it returned from this call."""


class _Diverged(BaseException):
    """The tests made a call the recording does not have."""


class CandidateRaised(Exception):
    """Base of the stand-ins for exceptions the candidate raised."""


def _run_tests(problem: Problem, reference_ns: dict, candidate: Callable, tests_code: Any) -> None:
    # The tests see the reference's names (helpers), with the entry point replaced; the
    # reference's own functions keep their namespace, so a recursive reference calls
    # itself, not the stand-in.
    ns = dict(reference_ns)
    state = random.getstate()
    random.seed(TEST_SEED)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if problem.test_style == "check":
                exec(tests_code, ns)
                ns["check"](candidate)
            elif problem.test_style == "asserts":
                ns[problem.entry_point] = candidate
                exec(tests_code, ns)
            else:
                raise UnreplayableTests(f"{problem.problem_id}: unknown test_style {problem.test_style!r} (check or asserts)")
    finally:
        random.setstate(state)


class _Wrong:
    """A wrong answer: equal to nothing, the answer of every call in the stand-in runs."""

    def __eq__(self, other):
        return False

    __hash__ = object.__hash__

    def __repr__(self):
        return "<wrong answer>"


class _OutOfTime(BaseException):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Stops tests that loop on a stand-in's answer (`while candidate(x) != y`); only in
    the main thread, where signals are delivered."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _cannot_fail(problem: Problem, helpers_code: Any, tests_code: Any, budget: float) -> bool:
    """Whether the tests pass whatever the candidate answers (a wrong object, or None)."""
    for wrong in (_Wrong(), None):
        ns: dict = {"__name__": "__reference__"}
        try:
            with _deadline(budget):
                exec(helpers_code, ns)
                _run_tests(problem, ns, lambda *args, **kwargs: wrong, tests_code)
        except BaseException:  # noqa: BLE001 - any failure (or a loop) shows they can fail
            return False
    return True


class _SoftAsserts(ast.NodeTransformer):
    # `assert x` becomes `x`, its exception swallowed: with stand-in answers the tests go on
    # to make every call they would make with right ones.
    def visit_Assert(self, node: ast.Assert) -> ast.AST:
        handler = ast.ExceptHandler(type=ast.Name("Exception", ast.Load()), name=None, body=[ast.Pass()])
        return ast.Try(body=[ast.Expr(node.test)], handlers=[handler], orelse=[], finalbody=[])


def _record_blind(problem: Problem, helpers_code: Any, budget: float) -> list[str]:
    """The calls the tests make, recorded without a reference (see the module docstring);
    UnreplayableTests when that cannot be trusted."""
    tree = ast.fix_missing_locations(_SoftAsserts().visit(ast.parse(problem.tests)))
    soft = compile(tree, f"<tests {problem.problem_id}>", "exec", optimize=0)
    runs = []
    for _ in range(2):
        calls: list[str] = []
        unplain: list[str] = []

        def recorder(*args, **kwargs):
            try:
                calls.append(encode_call(args, kwargs))
            except (ValueError, RecursionError) as e:  # noted here: a soft assert would swallow it
                unplain.append(str(e))
            return _Wrong()

        ns: dict = {"__name__": "__reference__"}
        try:
            with _deadline(budget):
                exec(helpers_code, ns)
                _run_tests(problem, ns, recorder, soft)
        except UnreplayableTests:
            raise
        except BaseException as e:  # noqa: BLE001
            raise UnreplayableTests(f"the tests fail on a wrong answer outside an assertion ({type(e).__name__}), "
                                    "so the inputs after it cannot be recorded without a reference") from None
        if unplain or any('{"o":' in c for c in calls):
            raise UnreplayableTests("the tests pass arguments that are not plain data (the function's own answers?)") from None
        runs.append(calls)
    if runs[0] != runs[1]:
        raise UnreplayableTests("the tests call the function with different inputs on each run")
    return runs[0]


def _helpers(problem: Problem) -> Any:
    """Without a reference, the tests' namespace is the prompt's (HumanEval's helpers)."""
    try:
        return compile(problem.prompt, f"<prompt {problem.problem_id}>", "exec", optimize=0)
    except (SyntaxError, ValueError):
        return compile("", f"<prompt {problem.problem_id}>", "exec")


def _record(problem: Problem, reference_code: Any, tests_code: Any) -> tuple[list[str], bool, float]:
    ns: dict = {"__name__": "__reference__"}
    start = time.perf_counter()
    exec(reference_code, ns)
    fn = ns.get(problem.entry_point)
    if not callable(fn):
        raise UnreplayableTests(f"{problem.problem_id}: the reference defines no function {problem.entry_point!r}")
    calls: list[str] = []

    def recorder(*args, **kwargs):
        try:
            calls.append(encode_call(args, kwargs))
        except (ValueError, RecursionError) as e:
            raise UnreplayableTests(f"{problem.problem_id}: the tests pass an argument that is not plain data ({e})") from None
        return fn(*args, **kwargs)

    passed = True
    try:
        _run_tests(problem, ns, recorder, tests_code)
    except UnreplayableTests:
        raise
    except Exception:
        passed = False
    seconds = time.perf_counter() - start
    for c in calls:
        if '{"o":' in c:
            raise UnreplayableTests(f"{problem.problem_id}: the tests pass an argument that is not plain data")
    return calls, passed, seconds


class _DropAssertMessages(ast.NodeTransformer):
    # `assert ok, f"got {candidate(x)}"` calls the candidate again, on inputs the recording
    # may not have, but only once the assert has failed: the message cannot change a verdict.
    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.msg = None
        return node


def compile_tests(problem: Problem) -> Any:
    tree = _DropAssertMessages().visit(ast.parse(problem.tests))
    # optimize=0: asserts stay even when the labeler itself runs under `python -O`.
    return compile(tree, f"<tests {problem.problem_id}>", "exec", optimize=0)


# Seconds the stand-in runs of a problem's tests may take (they run in the labeler).
_STAND_IN_BUDGET = 10.0


def plan_tests(problem: Problem) -> TestPlan:
    """Records the calls the tests make, with the reference solution (or without one, see
    the module docstring), times them, and decides the problem's status."""
    try:
        tests_code = compile_tests(problem)
        if not problem.reference.strip():
            return _plan_without_reference(problem, tests_code)
        reference_code = compile(problem.reference, f"<reference {problem.problem_id}>", "exec", optimize=0)
    except SyntaxError as e:
        raise UnreplayableTests(f"{problem.problem_id}: the reference or the tests do not compile ({e})") from None
    first, passed, seconds = _record(problem, reference_code, tests_code)
    second, _, seconds2 = _record(problem, reference_code, tests_code)
    if first != second:
        raise UnreplayableTests(f"{problem.problem_id}: the tests call the function with different inputs on each run "
                            "(not seeded by `random`), so they cannot be replayed")
    plan = TestPlan(problem, first, min(seconds, seconds2), passed, reference_code, tests_code)
    budget = min(_STAND_IN_BUDGET, 1.0 + 20 * plan.reference_seconds)
    if _cannot_fail(problem, reference_code, tests_code, budget):
        plan.status, plan.why = "untestable", "the tests pass whatever the function returns"
    elif not passed:
        plan.status, plan.why = "reference_failed", "the reference solution fails its own tests"
        try:  # the recording stopped at the failure: record every input without the reference
            plan.calls = _record_blind(problem, reference_code, budget)
        except UnreplayableTests as e:
            plan.why += f"; its inputs are those made before the failure ({e})"
    return plan


def _plan_without_reference(problem: Problem, tests_code: Any) -> TestPlan:
    helpers = _helpers(problem)
    plan = TestPlan(problem, [], 0.0, False, helpers, tests_code, "recorded_without_reference",
                    "no reference solution: inputs recorded with stand-in answers")
    if _cannot_fail(problem, helpers, tests_code, _STAND_IN_BUDGET):
        plan.status, plan.why = "untestable", "the tests pass whatever the function returns"
        return plan
    try:
        plan.calls = _record_blind(problem, helpers, _STAND_IN_BUDGET)
    except UnreplayableTests as e:
        plan.status, plan.why = "no_reference", f"no reference solution, and {e}"
    return plan


def _name(raw: Any) -> str:
    if type(raw) is str and _NAME.fullmatch(raw):
        return raw
    return "Exception"


def _exception_status(name: str) -> tuple[str, str]:
    if name == "MemoryError":
        return "memory", name
    return "error", name


def end_status(header: dict, limit: float) -> tuple[str, str]:
    """The status when the candidate's process stopped before the tests had their answers."""
    end = header.get("end")
    if end == "timeout":
        if "cpu_limit" in header:
            where = " in the test calls" if header.get("in_calls") else ""
            return "timeout", f"CPU limit {header['cpu_limit']:g}s{where}"
        return "timeout", f"limit {limit:g}s"
    if end == "memory":  # the process tree's memory (worker.py, Warden.usage)
        return "memory", header.get("detail", "memory limit")
    if end == "output_limit":
        return "output_limit", f"{header.get('output_bytes', 0)} bytes of output"
    if end == "signal":
        return "crashed", f"signal {header.get('code')}"
    if end == "worker":
        return "crashed", header.get("detail", "worker died")
    if end == "stopped":  # not reached: a run is stopped only once its results decide
        return "error", "stopped early"
    return "error", f"exited with code {header.get('code')} before the tests finished"


_exception_types: dict[str, type] = {}


def _stand_in(name: str) -> BaseException:
    cls = _exception_types.get(name)
    if cls is None:
        base = getattr(builtins, name, None)
        bases = (CandidateRaised, base) if isinstance(base, type) and issubclass(base, Exception) else (CandidateRaised,)
        cls = type(name, bases, {})
        _exception_types[name] = cls
    return cls(f"raised by the candidate")


def judge(plan: TestPlan, header: dict, payload: bytes, limit: float, partial: bool = False) -> tuple[str, str] | None:
    """(status, detail) for one execution of a candidate. With partial (the candidate is
    still running), None unless the results so far already decide the verdict."""
    frames, _ = parse_frames(payload)
    if not frames:
        return None if partial else end_status(header, limit)
    first = frames[0]
    if "syntax" in first:
        return "syntax_error", _name(first["syntax"])
    if "x" in first:
        return _exception_status(_name(first["x"]))
    if "load" not in first:
        return "error", "malformed result"
    results = [f for f in frames[1:] if "r" in f or "x" in f]
    i = 0

    def candidate(*args, **kwargs):
        nonlocal i
        if i >= len(plan.calls) or encode_call(args, kwargs) != plan.calls[i]:
            raise _Diverged
        if i >= len(results):
            raise _Missing
        frame = results[i]
        i += 1
        if "r" in frame:
            return decode_plain(frame["r"])
        raise _stand_in(_name(frame["x"]))

    ns: dict = {"__name__": "__reference__"}
    try:
        exec(plan.reference_code, ns)
        _run_tests(plan.problem, ns, candidate, plan.tests_code)
    except _Missing:
        return None if partial else end_status(header, limit)
    except _Diverged:
        return "error", "tests diverged from their recording"
    except CandidateRaised as e:
        return _exception_status(type(e).__name__)
    except MalformedPlainData:
        return "error", "malformed result"
    except AssertionError:
        return "failed", "assertion"
    except Exception as e:  # the tests choked on the value (None - 1, len(5), ...)
        return "failed", f"{type(e).__name__} in tests"
    return "passed", ""
