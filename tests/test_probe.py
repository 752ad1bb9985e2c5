"""Generated tests (CodeT's parsing, by hand-written cases and on the recorded file) and the
probe (every candidate on the generated inputs, in the real sandbox): per-call limits,
comparison outside the candidate, resuming after SIGKILL, a real `dvc repro`."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fractal.execution.probe import probe_candidates, signature
from fractal.generation.generated_tests import (
    GenerationStats, codet_extract, codet_test_prompt, generated_tests_record, load_recorded_tests, parse_assert,
)
from fractal.params import LabelParams, ProbeParams
from fractal.records import Generation, Problem

REPO = Path(__file__).resolve().parent.parent
RAW = REPO / "data/raw/codet-humaneval"
TEST_CASES = RAW / "HumanEval_codegen16B_temp0.8_topp0.95_num100_max300_test_case.jsonl"
TEST_PROMPTS = RAW / "HumanEval_for_test_case_generation.jsonl"


def problem(pid: str = "t/0", entry: str = "f", prompt: str = "def f(x):\n    \"\"\"Twice x.\"\"\"\n") -> Problem:
    return Problem(pid, "humaneval", "test", prompt, entry, "def check(candidate):\n    assert candidate(1) == 2\n",
                   prompt + "    return 2 * x\n")


def record(samples: list[str], limit: int = 5, entry: str = "f") -> tuple[dict, GenerationStats]:
    stats = GenerationStats()
    return generated_tests_record(problem(entry=entry), samples, limit, stats), stats


# ------------------------------------------------------------------------------------------
# Parsing, by hand
# ------------------------------------------------------------------------------------------
def test_blank_samples_give_no_test_and_are_counted():
    rec, stats = record(["\n", "   \n\t", ""])
    assert rec == {"problem_id": "t/0", "inputs": [], "tests": [], "asserts": []}
    assert stats.blank_samples == 3 and stats.without_asserts == ["t/0"] and stats.without_tests == ["t/0"]


def test_codet_extract_keeps_its_quirks():
    # The sample continues "assert "; parts not naming the entry point go; an assert
    # followed by a newline does not compile in CodeT's try block and goes; a stop token
    # cuts its own part only (the sample is split on "assert " first).
    sample = "f(1) == 2\nassert g(1) == 3\nassert \n    f(2) == 4\nassert f(3) == 6\nprint(f(3))\nassert f(4) == 8"
    assert codet_extract(sample, "f") == ["assert f(1) == 2", "assert f(3) == 6", "assert f(4) == 8"]


def test_only_the_first_limit_asserts_of_each_sample_count():
    sample = "\nassert ".join(f"f({i}) == {2 * i}" for i in range(8))
    rec, stats = record([sample, "f(100) == 200"], limit=5)
    assert [json.loads(c)[0] for c in rec["inputs"]] == [[0], [1], [2], [3], [4], [100]]
    assert stats.asserts == 6 and stats.kept == 6


def test_the_limit_counts_asserts_that_are_then_dropped():
    # CodeT takes the first 5 of what it extracts, `!=` and all; only then are they filtered.
    sample = "f(1) != 3\nassert f(2) is 2\nassert not f(3)\nassert f(4)\nassert f(5) < 1\nassert f(6) == 12"
    rec, stats = record([sample], limit=5)
    assert rec["tests"] == [] and stats.dropped_comparison == 5 and stats.kept == 0


@pytest.mark.parametrize("source", [
    "assert f(1) != 2",
    "assert f(1) is 2",
    "assert f(1) is 1.0",
    "assert True is f(1)",  # SRank reads `is` with the call on the left only
    "assert f(1) in [2]",
    "assert abs(f(1) - 2) < 1e-6",
    "assert ____(f(1) == 2)",  # SRank's input `____(f(1)` does not compile
    "assert f(1)==2",  # SRank's pattern wants blanks around `==`
    "assert f(1) is not None",
    "assert g(1) == 2",  # no call of the entry point
    "assert f(1) == '" + "x" * 20_000 + "'",  # too long to be worth keeping
])
def test_asserts_srank_keeps_nothing_of_are_dropped(source):
    assert parse_assert(source, "f") == "comparison"


@pytest.mark.parametrize("source, text, expected", [
    ("assert round(f(1), 2) == 2", "round(f(1), 2)", 2),
    ("assert f(x) == 2", "f(x)", 2),  # raises NameError in every candidate, as in SRank
    ("assert f([1, 2], key=len) == 2", "f([1, 2], key=len)", 2),
    ("assert f(*[1]) == 2", "f(*[1])", 2),
    ("assert f(list(range(3))) == 2", "f(list(range(3)))", 2),
    ("assert 3 == f(1)[0]", "f(1)[0]", 3),
    ("assert g(f(1)) is True", "g(f(1))", True),
    ("assert x.f(1) is False", "x.f(1)", False),  # SRank's pattern matches `f(` after a dot
    ("assert f('a' * 100_000) == 2", "f('a' * 100000)", 2),  # folded only up to MAX_FOLDED
    ("assert f(10 ** 100_000) == 2", "f(10 ** 100000)", 2),
    ("assert f(__import__('os').system('echo pwned')) == 0", "f(__import__('os').system('echo pwned'))", 0),
])
def test_an_input_that_is_not_a_call_on_plain_data_is_its_expression_text(source, text, expected):
    # The text runs only in the sandbox, in the candidate's module (the probe); nothing here runs it.
    p = parse_assert(source, "f")
    assert json.loads(p.call) == {"expr": text} and p.has_expected and p.expected == expected


def test_srank_quirks_in_reading_an_assert():
    # Both sides call the entry point: SRank takes the right one as the input.
    p = parse_assert("assert f(1) == f(2)", "f")
    assert json.loads(p.call)[0] == [2] and not p.has_expected
    # It splits at the first ` == `: `f(1)` with the expected text `2 == 2`, which is not plain data.
    p = parse_assert("assert f(1) == 2 == 2", "f")
    assert json.loads(p.call)[0] == [1] and not p.has_expected
    # The input must compile after the problem's stub; a message that is a value goes.
    assert parse_assert("assert f(1) == 2, 'two'", "f", "def f(x):\n    # a stub\n").expected == 2
    assert parse_assert("assert f(1 == 2", "f") == "comparison"


def test_literal_equalities_become_plain_data():
    p = parse_assert("assert f([1, 2.5], (3,), k={'a': None}) == {1, 2}, 'a message'", "f")
    assert json.loads(p.call) == [[[1, 2.5], {"t": [3]}], {"d": [["k", {"d": [["a", None]]}]]}]
    assert p.expected == {"s": [1, 2]}
    assert parse_assert("assert -3 == f(-1)", "f").expected == -3  # the expected value on the left
    assert parse_assert("assert (f('a') == 'b')", "f").expected == "b"
    # Arithmetic on literals is folded (SRank evaluates the same text); nothing else is run.
    folded = parse_assert("assert f(60 * 15, 2**3) == [2, 1 + 2, -(4 // 3), 'a' + 'b' * 2]", "f")
    assert json.loads(folded.call)[0] == [900, 8] and folded.expected == [2, 3, -1, "abb"]
    for value, expected in (("True", True), ("False", False), ("None", None)):
        p = parse_assert(f"assert f(1) is {value}", "f")
        assert p.has_expected and p.expected == expected


@pytest.mark.parametrize("source", ["assert f(1) == ____", "assert f(1) == float('inf')", "assert x == f(1)",
                                    "assert f(1) == 1 / 0", "assert f(1) == {[1]: 2}"])
def test_an_expected_value_that_is_not_plain_data_leaves_an_input_without_a_test(source):
    p = parse_assert(source, "f")
    assert not p.has_expected and json.loads(p.call)[0] == [1]
    rec, stats = record([source.removeprefix("assert "), "f(2) == 4"])
    assert [json.loads(c)[0] for c in rec["inputs"]] == [[1], [2]]
    assert rec["tests"] == [{"input": 1, "expected": 4, "count": 1}] and rec["asserts"] == ["assert f(2) == 4"]
    assert stats.inputs_only == 1 and stats.kept == 1
    trailing = parse_assert("assert f(1) == 2\n\nimport numpy as np", "f")
    assert trailing.expected == 2 and trailing.trailing


@pytest.mark.parametrize("text", ["", "Write a function that doubles x."])  # HumanEval's form, MBPP's
def test_generated_tests_read_no_real_test_nor_reference(text):
    # The reading compiles each input after the problem's stub (SRank's check): for MBPP the
    # stub has the reference's `def` line, whose name and parameters cannot change what compiles.
    samples = ["f(1) == 2\nassert round(f(2), 1) == 4\nassert f(x) == 3\nassert f(3) == ____", "f(4)==8"]
    p = dataclasses.replace(problem(), text=text)
    before = generated_tests_record(p, samples, 5, GenerationStats())
    after = generated_tests_record(dataclasses.replace(p, tests="", reference=""), samples, 5, GenerationStats())
    assert before == after and len(before["tests"]) == 3 and len(before["inputs"]) == 4


def test_inputs_and_tests_are_deduplicated_with_counts():
    rec, stats = record(["f(1) == 2\nassert f(1) == 2, 'again'\nassert f(1) == 3\nassert f(2) == 4", "f(1) == 2"])
    assert [json.loads(c)[0] for c in rec["inputs"]] == [[1], [2]]
    assert rec["tests"] == [{"input": 0, "expected": 2, "count": 3}, {"input": 0, "expected": 3, "count": 1},
                            {"input": 1, "expected": 4, "count": 1}]
    assert rec["asserts"] == ["assert f(1) == 2", "assert f(1) == 3", "assert f(2) == 4"]
    assert stats.kept == 5


def test_recorded_lines_map_to_problems_by_prompt_text_not_entry_point(tmp_path):
    # Two problems with the same entry point: only the prompt tells their lines apart.
    a = problem("t/a", "f", "def f(x):\n    \"\"\"Twice x.\"\"\"\n")
    b = problem("t/b", "f", "def f(x):\n    \"\"\"Thrice x.\"\"\"\n")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"task_id": p.problem_id, "prompt": codet_test_prompt(p)}) + "\n"
                               for p in (a, b)))
    cases = tmp_path / "cases.jsonl"
    cases.write_text(json.dumps({"prompt": codet_test_prompt(b), "samples": ["f(1) == 3"]}) + "\n"
                     + json.dumps({"prompt": codet_test_prompt(a), "samples": ["f(1) == 2"]}) + "\n")
    assert load_recorded_tests(cases, prompts, [a, b]) == {"t/a": ["f(1) == 2"], "t/b": ["f(1) == 3"]}


def test_codet_test_prompt_matches_codets_own_prompts():
    from fractal.benchmarks import load_humaneval

    theirs = {r["task_id"]: r["prompt"] for r in map(json.loads, TEST_PROMPTS.open())}
    ours = load_humaneval("local", "codet", str(REPO / "data/raw"))
    same = sum(codet_test_prompt(p) == theirs[p.problem_id] for p in ours)
    assert same == len(ours) == 164


def test_mbpp_test_prompt_shows_no_real_assert():
    from fractal.benchmarks import load_mbpp

    for p in load_mbpp("local", str(REPO / "data/raw"))[:50]:
        prompt = codet_test_prompt(p)
        assert prompt.endswith(f"# check the correctness of {p.entry_point}\nassert ")
        assert f"def {p.entry_point}(" in prompt
        assert not any(line.strip() in prompt for line in p.tests.splitlines() if line.strip().startswith("assert"))


def test_the_recorded_file_as_codet_reads_it():
    from fractal.benchmarks import load_humaneval
    from fractal.generation.generated_tests import build_generated_tests

    problems = load_humaneval("local", "codet", str(REPO / "data/raw"))
    records, stats = build_generated_tests(problems, load_recorded_tests(TEST_CASES, TEST_PROMPTS, problems), 5)
    assert stats.samples == 16400 and 0.45 < stats.blank_samples / stats.samples < 0.5  # "about half"
    assert len(stats.without_asserts) == 9  # CodeT's figure: 9 problems with no usable test
    with_tests = [r for r in records if r["tests"]]
    mean_tests = sum(len(r["tests"]) for r in records) / len(records)
    print(f"recorded file: {len(with_tests)} of {len(records)} problems have >= 1 test; "
          f"{mean_tests:.1f} tests per problem")
    # 151: SRank reads HumanEval/45's `assert _____, triangle_area(1, 1) == 0.5` as a test of the
    # input `_____, triangle_area(1, 1)`, and 115's `max_fill(grid, capacity) == 42` as one, both
    # raising NameError in every candidate.
    assert len(with_tests) == 151 and 35 < mean_tests < 45
    for r in records:
        assert all(0 <= t["input"] < len(r["inputs"]) and t["count"] >= 1 for t in r["tests"])
        assert len(set(r["inputs"])) == len(r["inputs"]) and len(r["asserts"]) == len(r["tests"])


# ------------------------------------------------------------------------------------------
# The probe, in the real sandbox
# ------------------------------------------------------------------------------------------
def generated_for(pid: str, entry: str, asserts: list[str]) -> dict:
    rec = generated_tests_record(problem(pid, entry), ["\nassert ".join(a.removeprefix("assert ") for a in asserts)],
                                 len(asserts), GenerationStats())
    assert len(rec["asserts"]) == len(asserts)
    return rec


def run_probe(tmp_path, programs: list[str], asserts: list[str], entry: str = "f", **kw) -> list[dict]:
    p = problem("t/0", entry)
    gens = [Generation("t/0", i, "", prog, "x", "x") for i, prog in enumerate(programs)]
    params = ProbeParams(workers=kw.pop("workers", 1), cache_dir=str(tmp_path / "probe-cache"), **kw)
    return probe_candidates([p], gens, [generated_for("t/0", entry, asserts)], params, LabelParams())


def test_probe_records_signatures_and_passes_compared_outside(tmp_path):
    asserts = ["assert f(1) == 2", "assert f(2) == 4.0", "assert f(3) == [6]", "assert f(0) == 0"]
    programs = [
        "def f(x):\n    return 2 * x if x != 3 else [6]\n",           # all pass; 4 == 4.0
        "def f(x):\n    return 2 * x if x != 3 else (6,)\n",          # (6,) != [6]
        "def f(x):\n    if x == 2:\n        raise ValueError\n    return {x, 'a'}\n",
        "def f(x)\n    return x\n",
        "import no_such_module\ndef f(x):\n    return x\n",
    ]
    a, b, c, d, e = run_probe(tmp_path, programs, asserts)
    assert a == {"problem_id": "t/0", "sample": 0, "outputs": ["2", "4", "[6]", "0"], "passed": [0, 1, 2, 3],
                 "status": "ok"}
    assert b["outputs"][2] == '{"t":[6]}' and b["passed"] == [0, 1, 3]
    assert c["outputs"][1] == "!ValueError" and c["outputs"][0] == '{"s":["a",1]}' and c["passed"] == []
    assert d["status"] == "syntax_error" and d["outputs"] == ["!syntax_error"] * 4
    assert e["status"] == "error" and e["outputs"] == ["!ModuleNotFoundError"] * 4


def test_an_expression_input_runs_in_the_candidates_module(tmp_path):
    # SRank evaluates the assert's input text in the candidate's module: its helpers, its
    # builtins; the value comes back as plain data and is compared outside, like a call's.
    asserts = ["assert round(f(1), 1) == 0.3", "assert f(2)[0] == 1", "assert g(f('ab')) == 'ab'",
               "assert f(x) == 1", "assert 2 == f(2)"]
    programs = [
        "def f(x):\n    return 0.3 if x == 1 else (1, 0) if x == 2 else x[::-1]\n"
        "def g(s):\n    return s[::-1]\n",
        "def f(x):\n    while x == 1:\n        pass\n    return [x]\n"
        "def g(s):\n    return str(s)\n",
    ]
    good, other = run_probe(tmp_path, programs, asserts, entry="f")
    assert good["outputs"] == ["0.3", "1", '"ab"', "!NameError", '{"t":[1,0]}']
    assert good["passed"] == [0, 1, 2] and good["status"] == "ok"
    # The expression's call keeps the per-call CPU limit; the next input runs.
    assert other["outputs"] == ["!timeout", "2", json.dumps("['ab']"), "!NameError", "[2]"]
    assert other["passed"] == []


def test_the_cpu_limit_is_per_call(tmp_path):
    # Each of these calls uses ~0.06 s of CPU: together over the 0.1 s limit, each under it.
    busy = "def f(x):\n    import time\n    t = time.process_time()\n    while time.process_time() - t < 0.06:\n        pass\n"
    programs = [busy + "    return x\n",
                "def f(x):\n    while x == 2:\n        pass\n    return x\n"]
    asserts = [f"assert f({i}) == {i}" for i in range(5)]
    slow, loop = run_probe(tmp_path, programs, asserts, timeout=0.1)
    assert slow["outputs"] == ["0", "1", "2", "3", "4"] and slow["passed"] == [0, 1, 2, 3, 4]
    assert loop["outputs"] == ["0", "1", "!timeout", "3", "4"] and loop["passed"] == [0, 1, 3, 4]


def test_a_call_that_swallows_its_timeout_is_still_a_timeout(tmp_path):
    # The child's per-call timer raises into the call; a bare `except` that goes on looping,
    # or a call that catches it and returns a value, is a timeout all the same, and the
    # calls after it run as usual. The third resets the signal: the run's own CPU limit
    # stops it, and the driver reruns from there.
    swallow = "def f(x):\n    while x == 2:\n        try:\n            while True:\n                pass\n        except BaseException:\n            pass\n    return x\n"
    catch = "def f(x):\n    if x == 2:\n        try:\n            while True:\n                pass\n        except BaseException:\n            return 4\n    return x\n"
    reset = ("import signal\nsignal.signal(signal.SIGVTALRM, signal.SIG_IGN)\n"
             "def f(x):\n    while x == 2:\n        pass\n    return x\n")
    # A call in C that the timer's exception cannot reach until it returns: killed at twice the limit.
    in_c = "def f(x):\n    if x == 2:\n        return len(str(10 ** 10 ** 8))\n    return x\n"
    asserts = [f"assert f({i}) == {i}" for i in range(5)]
    for out in run_probe(tmp_path, [swallow, catch, reset, in_c], asserts, timeout=0.1):
        assert out["outputs"] == ["0", "1", "!timeout", "3", "4"] and out["passed"] == [0, 1, 3, 4], out


def test_a_timed_out_call_costs_no_rerun(tmp_path, capfd):
    # The timer stops the call in the child and the run goes on: one run per program, in
    # one round (the driver's count), however many calls time out.
    loop = "def f(x):\n    while x % 2:\n        pass\n    return x\n"
    out, = run_probe(tmp_path, [loop], [f"assert f({i}) == {i}" for i in range(6)], timeout=0.1)
    assert out["outputs"] == ["0", "!timeout", "2", "!timeout", "4", "!timeout"]
    assert "1 runs (0 after a failed call, in 1 rounds)" in capfd.readouterr().err


def test_a_hostile_candidate_cannot_forge_a_pass_for_another(tmp_path):
    # The hostile one runs first on the same worker: it leaves a process behind that
    # writes frames claiming the expected values into the result pipe, and returns an
    # object equal to everything. The next candidate is wrong and slow to load.
    hostile = textwrap.dedent("""\
        import json, os, struct
        def frame(obj):
            body = json.dumps(obj).encode()
            return struct.pack(">I", len(body)) + body
        if os.fork() == 0:
            os.setsid()
            import time
            for _ in range(200):
                try:
                    os.write(3, frame({"load": 1}) + frame({"r": 2}) + frame({"r": 4}) + frame({"r": 6}))
                except OSError:
                    pass
                time.sleep(0.005)
            os._exit(0)
        class Always:
            def __eq__(self, other):
                return True
        def f(x):
            return Always()
        """)
    wrong = "import time\ntime.sleep(0.3)\ndef f(x):\n    return -1\n"
    # Frames a candidate forges for itself are values it claims to return: the same as returning them.
    forger = textwrap.dedent("""\
        import json, os, struct
        sent = []
        def f(x):
            if not sent:
                sent.append(1)
                for v in (2, 4, 6, 8, 10):
                    body = json.dumps({"r": v}).encode()
                    os.write(3, struct.pack(">I", len(body)) + body)
            return -1
        """)
    asserts = ["assert f(1) == 2", "assert f(2) == 4", "assert f(3) == 6"]
    h, w, f = run_probe(tmp_path, [hostile, wrong, forger], asserts, workers=1)
    # While the hostile one runs, its own child may win the race to its pipe: then the forged
    # values are the hostile one's own outputs (a claim about itself, as for the forger below).
    # Either way nothing it wrote reaches the candidates after it.
    assert all(o in ('{"o":["Always",true]}', v) for o, v in zip(h["outputs"], ["2", "4", "6"], strict=True))
    assert w["outputs"] == ["-1", "-1", "-1"] and w["passed"] == []
    assert f["outputs"] == ["2", "4", "6"] and f["passed"] == [0, 1, 2]


def test_signatures_are_canonical_and_bounded():
    assert signature({3, 1, 2}, 100) == signature({2, 3, 1}, 100) == '{"s":[1,2,3]}'
    assert signature({"b": 1, "a": 2}, 100) == signature({"a": 2, "b": 1}, 100)
    assert signature(1, 100) != signature(1.0, 100) and signature(True, 100) == "true"
    big = signature(list(range(10_000)), 100)
    assert big.startswith("#") and len(big) == 65 and big == signature(list(range(10_000)), 100)


# ------------------------------------------------------------------------------------------
# SIGKILL mid-stage, then resume: the same bytes as an uninterrupted run
# ------------------------------------------------------------------------------------------
def _stage_dir(d: Path) -> Path:
    """A folder the probe stage runs in: params.yaml and its inputs under data/."""
    from fractal.records import write_jsonl

    p = problem("t/0", "f")
    # 240 distinct, deterministic programs; each sleeps 20 ms, so the stage takes seconds.
    gens = [Generation("t/0", i, "", f"import time\ntime.sleep(0.02)\ndef f(x):\n    return x * {i % 7} + {i}\n",
                       "x", "x") for i in range(240)]
    asserts = [f"assert f({i}) == {3 * i + 3}" for i in range(10)]
    write_jsonl(d / "data/problems.jsonl", [p])
    write_jsonl(d / "data/generations.jsonl", gens)
    write_jsonl(d / "data/generated_tests.jsonl", [generated_for("t/0", "f", asserts)])
    (d / "params.yaml").write_text("probe:\n  workers: 2\n")
    return d


def test_sigkill_mid_probe_resumes_to_the_same_outputs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    stage = lambda d: subprocess.Popen([sys.executable, str(REPO / "stages/probe.py")], cwd=d, env=env,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    whole_dir, killed_dir = _stage_dir(tmp_path / "whole"), _stage_dir(tmp_path / "killed")
    whole = stage(whole_dir)
    assert whole.wait(timeout=300) == 0, whole.stderr.read()[-3000:]

    killed = stage(killed_dir)
    db = killed_dir / ".fractal/probe-cache/probe.sqlite"
    deadline = time.monotonic() + 120
    rows = 0
    while time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.1)
        try:
            with sqlite3.connect(db) as con:
                rows = con.execute("SELECT COUNT(*) FROM probe").fetchone()[0]
        except sqlite3.Error:
            continue
        if rows >= 20:
            break
    assert killed.poll() is None, "the probe finished before it could be killed; give it more work"
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert 20 <= rows < 240 and not (killed_dir / "data/probe.jsonl").exists()

    resumed = stage(killed_dir)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    in_cache = int(err.split(" in the cache")[0].rsplit(", ", 1)[1])
    assert in_cache >= 20
    assert (killed_dir / "data/probe.jsonl").read_bytes() == (whole_dir / "data/probe.jsonl").read_bytes()


# ------------------------------------------------------------------------------------------
# A real `dvc repro` through gentests and probe
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_dvc_repro_runs_gentests_and_probe(tmp_path):
    from repo_copy import copy_repo, shrink_default_profile

    repo = tmp_path / "repo"
    copy_repo(repo)
    shrink_default_profile(repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"], cwd=repo, check=True)
    env = {**os.environ, "FRACTAL_EXECUTOR": "local", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO / "src")}

    def dvc(*args: str) -> str:
        r = subprocess.run(["dvc", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"dvc {' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        return r.stdout + r.stderr

    ran = lambda out: [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    assert sorted(ran(dvc("repro", "probe"))) == ["generate", "gentests", "prepare", "probe"]  # DVC orders siblings as it likes
    tests = [json.loads(line) for line in (repo / "data/generated_tests.jsonl").open()]
    probe = [json.loads(line) for line in (repo / "data/probe.jsonl").open()]
    gens = [json.loads(line) for line in (repo / "data/generations.jsonl").open()]
    assert [t["problem_id"] for t in tests] == [f"HumanEval/{i}" for i in range(12)]
    assert [(r["problem_id"], r["sample"]) for r in probe] == [(g["problem_id"], g["sample"]) for g in gens]
    by_id = {t["problem_id"]: t for t in tests}
    for r in probe:
        assert len(r["outputs"]) == len(by_id[r["problem_id"]]["inputs"])
        assert all(0 <= j < len(by_id[r["problem_id"]]["tests"]) for j in r["passed"])
    assert sum(bool(r["passed"]) for r in probe) > 20
    assert ran(dvc("repro", "probe")) == []
    assert ran(dvc("exp", "run", "-S", "gentests.test_case_limit=2", "probe")) == ["gentests", "probe"]


# ------------------------------------------------------------------------------------------
# The model backends: CodeT's prompt through the transformers backend, on a tiny model
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_generated_tests_from_the_transformers_backend(tmp_path):
    pytest.importorskip("torch", reason="the transformers backend needs torch")
    from tiny_model import build_tiny_model
    from fractal.benchmarks import load_mbpp
    from fractal.generation.generated_tests import generated_tests
    from fractal.params import GenerateParams, GentestsParams

    problems = [p for p in load_mbpp("local", str(REPO / "data/raw")) if p.split == "train"][:2]
    # Taught to answer CodeT's prompt (as a chat message) with a fenced block of asserts,
    # and a line that is not an assert (kept with the last assert, as CodeT keeps it).
    answers = {p.problem_id: f"```python\nassert {p.entry_point}(1) == 1\nassert {p.entry_point}(2) == [2]\n"
                             f"x = {p.entry_point}\n```" for p in problems}
    model = build_tiny_model(tmp_path / "tiny", teach=[(codet_test_prompt(p), answers[p.problem_id])
                                                       for p in problems], steps=300)
    generate = GenerateParams(backend="transformers", model=str(model), device="cpu", dtype="float32", batch_size=4)
    params = GentestsParams(source="generate", samples=4, prompt_style="chat", temperature=0.01, top_p=1.0,
                            max_tokens=48)
    records, stats = generated_tests(problems, params, generate)
    assert stats.samples == 8 and [r["problem_id"] for r in records] == [p.problem_id for p in problems]
    for p, r in zip(problems, records):
        assert [json.loads(c)[0] for c in r["inputs"]] == [[1], [2]]
        assert r["tests"] == [{"input": 0, "expected": 1, "count": 4}, {"input": 1, "expected": [2], "count": 4}]
    assert stats.kept_with_trailing_code == 8
    with pytest.raises(ValueError, match="gentests.source"):
        generated_tests(problems, GentestsParams(source="generate"), GenerateParams(backend="replay"))
