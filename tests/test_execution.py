"""The labeler's parts: plain data, the judge, the cache, isolation choice, end to end."""
from __future__ import annotations

import collections
import dataclasses
import enum
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from fractal.execution import label_candidates
from fractal.execution import isolation as isolation_module
from fractal.execution.cache import VERDICT_PARAMS, LabelCache, label_key, limits_of
from fractal.execution.judge import UnreplayableTests, judge, plan_tests
from fractal.execution.wire import MalformedPlainData, Opaque, decode_plain, encode_plain
from fractal.params import LabelParams
from fractal.records import Generation, Problem


def roundtrip(value):
    return decode_plain(json.loads(json.dumps(encode_plain(value))))


# ------------------------------------------------------------------------------------------
# plain data
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**70, -(3**50), 1.5, -0.0, float("inf"), "héllo\x00", b"\x00\xff", bytearray(b"ab"),
    [1, [2, (3, 4)]], (1,), (), {"a": 1, (1, 2): [3]}, {1, 2, (3, "x")}, frozenset({1}), 3 + 4j, {"k": {"n": None}},
])
def test_plain_roundtrip_keeps_value_and_exact_type(value):
    back = roundtrip(value)
    assert back == value and type(back) is type(value)


def test_plain_nan_survives():
    assert math.isnan(roundtrip(float("nan")))


def test_plain_reads_subclasses_through_their_base_type():
    class Evil(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class Color(enum.IntEnum):
        RED = 2

    Point = collections.namedtuple("Point", "x y")
    assert type(roundtrip(Evil(5))) is int and roundtrip(Evil(5)) == 5 and roundtrip(Evil(5)) != 6
    assert roundtrip(Color.RED) == 2 and type(roundtrip(Color.RED)) is int
    assert roundtrip(Point(1, 2)) == (1, 2) and type(roundtrip(Point(1, 2))) is tuple
    assert roundtrip(collections.Counter("aab")) == {"a": 2, "b": 1}
    np = pytest.importorskip("numpy")
    assert roundtrip(np.int64(3)) == 3 and type(roundtrip(np.int64(3))) is int
    assert type(roundtrip(np.float64(0.5))) is float and type(roundtrip(np.bool_(True))) is bool


def test_plain_other_objects_become_opaque():
    class Yes:
        def __eq__(self, other):
            return True

    gen = roundtrip(x for x in [])
    yes = roundtrip(Yes())
    assert isinstance(gen, Opaque) and isinstance(yes, Opaque)
    assert yes != yes.__class__("Yes", True) and yes == yes and yes != 1 and not (yes == [])
    assert bool(yes) is True


@pytest.mark.parametrize("raw", [{"x": 1}, {"d": [[[1], 2]]}, {"s": [[1]]}, {"b": 5}, {"i": "zz"}, {"t": 1},
                                 {"o": ["T"]}, {"a": 1, "b": 2}, {"c": ["1", 2]}])
def test_plain_rejects_malformed_data(raw):
    with pytest.raises(MalformedPlainData):
        decode_plain(raw)


# ------------------------------------------------------------------------------------------
# The judge, on hand-made child reports (no sandbox needed)
# ------------------------------------------------------------------------------------------
CHECK = Problem("t/add", "t", "test", "", "add",
                "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n",
                "def add(a, b):\n    return a + b\n")


def payload(*frames) -> bytes:
    out = b""
    for f in frames:
        body = json.dumps(f).encode() if not isinstance(f, bytes) else f
        out += struct.pack(">I", len(body)) + body
    return out


EXIT = {"end": "exit", "code": 0, "duration": 0.01}


@pytest.mark.parametrize("frames, header, expected", [
    ([{"load": 1}, {"r": 3}, {"r": 4}, {"done": 1}], EXIT, ("passed", "")),
    ([{"load": 1}, {"r": 3}, {"r": 5}], EXIT, ("failed", "assertion")),
    ([{"load": 1}, {"r": None}], EXIT, ("failed", "assertion")),
    ([{"load": 1}, {"r": "3"}], EXIT, ("failed", "assertion")),
    ([{"load": 1}, {"x": "ZeroDivisionError"}], EXIT, ("error", "ZeroDivisionError")),
    ([{"load": 1}, {"x": "MemoryError"}], EXIT, ("memory", "MemoryError")),
    ([{"syntax": "IndentationError"}], EXIT, ("syntax_error", "IndentationError")),
    ([{"x": "NameError"}], EXIT, ("error", "NameError")),
    ([{"load": 1}, {"r": 3}], {"end": "timeout"}, ("timeout", "limit 3s")),
    ([{"load": 1}], {"end": "output_limit", "output_bytes": 5}, ("output_limit", "5 bytes of output")),
    ([{"load": 1}], {"end": "signal", "code": 11}, ("crashed", "signal 11")),
    ([], {"end": "exit", "code": 0}, ("error", "exited with code 0 before the tests finished")),
    ([{"load": 1}, {"r": {"o": ["Yes", True]}}, {"r": {"o": ["Yes", True]}}], EXIT, ("failed", "assertion")),
    ([{"load": 1}, {"r": {"zz": 1}}], EXIT, ("error", "malformed result")),
    ([{"load": 1}, {"x": "A" * 500}], EXIT, ("error", "Exception")),
    ([{"done": 1}], EXIT, ("error", "malformed result")),
])
def test_judge_statuses(frames, header, expected):
    plan = plan_tests(CHECK)
    assert judge(plan, header, payload(*frames), 3.0) == expected


def test_judge_ignores_garbage_after_valid_frames_and_never_passes_on_it():
    plan = plan_tests(CHECK)
    assert judge(plan, EXIT, payload({"load": 1}, {"r": 3}) + b"\xff\xff\xff", 3.0)[0] != "passed"
    assert judge(plan, EXIT, payload({"load": 1}, b"not json"), 3.0)[0] != "passed"


def test_judge_partial_is_undecided_until_the_results_decide():
    plan = plan_tests(CHECK)
    running = {"end": "running"}
    assert judge(plan, running, payload({"load": 1}, {"r": 3}), 3.0, partial=True) is None
    assert judge(plan, running, payload({"load": 1}, {"r": 0}), 3.0, partial=True) == ("failed", "assertion")


def test_plan_uses_reference_helpers_seeded_random_and_drops_assert_messages():
    problem = Problem("t/zero", "t", "test", "", "find", textwrap.dedent("""
        import random
        def check(candidate):
            for _ in range(20):
                xs = [random.randint(-9, 9) for _ in range(3)]
                got = candidate(list(xs))
                assert helper(xs, got), "wrong: " + str(candidate([9, 9, 9, 9]))
        """), "def helper(xs, got):\n    return got == sorted(xs)\ndef find(xs):\n    return sorted(xs)\n")
    plan = plan_tests(problem)
    assert len(plan.calls) == 20 and plan.reference_passed
    results = [{"r": sorted(decode_plain(json.loads(c)[0])[0])} for c in plan.calls]
    assert judge(plan, EXIT, payload({"load": 1}, *results), 3.0) == ("passed", "")
    # A wrong answer: the message would call the candidate on an unrecorded input; dropped.
    results[3] = {"r": [0]}
    assert judge(plan, EXIT, payload({"load": 1}, *results), 3.0) == ("failed", "assertion")


def test_plan_asserts_style_and_unplain_arguments():
    mbpp = Problem("MBPP/1", "mbpp", "test", "", "square", "import math\nassert square(3) == 9\nassert math.isclose(square(0.5), 0.25)\n",
                   "def square(x):\n    return x * x\n", test_style="asserts")
    plan = plan_tests(mbpp)
    assert len(plan.calls) == 2
    assert judge(plan, EXIT, payload({"load": 1}, {"r": 9}, {"r": 0.25}), 3.0) == ("passed", "")
    bad = Problem("t/obj", "t", "test", "", "f", "class P: pass\nassert f(P()) == 1\n", "def f(p):\n    return 1\n",
                  test_style="asserts")
    with pytest.raises(UnreplayableTests, match="not plain data"):
        plan_tests(bad)


def test_judge_keeps_asserts_under_python_O():
    code = textwrap.dedent("""
        import json, struct
        from fractal.execution.judge import judge, plan_tests
        from fractal.records import Problem
        p = Problem("t", "t", "test", "", "f", "def check(candidate):\\n    assert candidate() == 1\\n", "def f():\\n    return 1\\n")
        body = b"".join(struct.pack(">I", len(b)) + b for b in (b'{"load": 1}', b'{"r": 2}'))
        print(judge(plan_tests(p), {"end": "exit"}, body, 1.0)[0])
    """)
    out = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "failed"


def test_time_limit_from_reference_runtime():
    plan = plan_tests(CHECK)
    plan.reference_seconds = 0.002
    assert plan.time_limit(10, 1.0, 10) == 1.0
    plan.reference_seconds = 0.5
    assert plan.time_limit(10, 1.0, 10) == 5.0
    plan.reference_seconds = 5
    assert plan.time_limit(10, 1.0, 10) == 10


# ------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------
def test_cache_key_and_concurrent_writers(tmp_path):
    limits = limits_of(LabelParams())
    k1 = label_key(CHECK, "prog", limits)
    assert k1 == label_key(CHECK, "prog", dict(limits))
    assert k1 != label_key(CHECK, "prog2", limits)
    assert k1 != label_key(CHECK, "prog", limits_of(LabelParams(timeout_floor=2.0)))
    assert k1 != label_key(CHECK, "prog", limits_of(LabelParams(timeout_cpu_floor=2.0)))
    assert k1 != label_key(CHECK, "prog", limits_of(LabelParams(timeout_calls_cpu_floor=2.0)))
    assert k1 == label_key(CHECK, "prog", limits_of(LabelParams(workers=7, isolation="none")))
    a, b = LabelCache(tmp_path, "bwrap"), LabelCache(tmp_path, "bwrap")
    a.put("k1", "passed", "", 0.1)
    b.put("k2", "failed", "assertion", 0.2)
    a.flush()
    b.flush()
    assert a.get_many(["k1", "k2", "k3"]) == {"k1": ("passed", "", 0.1), "k2": ("failed", "assertion", 0.2)}
    a.close()
    b.close()


def test_dvc_yaml_label_params_are_the_verdict_params():
    # The params that can change a label are listed once (cache.VERDICT_PARAMS, the cache
    # key's): dvc.yaml's label stage lists them, and label.isolation, which changes no
    # verdict but the stage's metrics (how many labels were confined). The other label
    # params change where and how fast candidates run, not how they are judged.
    dvc_yaml = Path(__file__).resolve().parent.parent / "dvc.yaml"
    listed = yaml.safe_load(dvc_yaml.read_text())["stages"]["label"]["params"]
    assert sorted(listed) == sorted([f"label.{name}" for name in VERDICT_PARAMS] + ["label.isolation"])
    neither = {"workers", "preload", "preload_heavy", "hide_paths", "cache_dir"}
    assert {f.name for f in dataclasses.fields(LabelParams)} == set(VERDICT_PARAMS) | {"isolation"} | neither
    assert set(limits_of(LabelParams())) == set(VERDICT_PARAMS)


# ------------------------------------------------------------------------------------------
# isolation choice
# ------------------------------------------------------------------------------------------
def test_refuses_without_isolation(monkeypatch):
    # As on a machine without bubblewrap: the real probe, with `bwrap` not on PATH.
    monkeypatch.setattr(isolation_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(isolation_module, "_probed", {})
    with pytest.raises(RuntimeError, match="label.isolation: none"):
        isolation_module.make_sandbox(LabelParams(isolation="auto"))
    with pytest.raises(RuntimeError, match="Install bubblewrap"):
        isolation_module.make_sandbox(LabelParams(isolation="bwrap"))
    with pytest.raises(ValueError, match="label.isolation"):
        isolation_module.make_sandbox(LabelParams(isolation="docker"))


def test_unsafe_mode_warns_loudly_and_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gens = [Generation("t/add", 0, "", "def add(a, b):\n    return a + b\n", "x", "x"),
            Generation("t/add", 1, "", "def add(a, b):\n    return a * b\n", "x", "x")]
    with pytest.warns(UserWarning, match="UNCONFINED"):
        labels = label_candidates([CHECK], gens, LabelParams(isolation="none", workers=1, cache_dir=str(tmp_path / "c")))
    assert [l.status for l in labels] == ["passed", "failed"]
    assert "UNCONFINED" in capsys.readouterr().err


def test_unsafe_mode_warden_kills_only_its_own_descendants(tmp_path):
    # Without a PID namespace the warden finds leftovers by parentage; with no zygote
    # running it must not take the kernel's children (ppid 0: init, kthreadd) for them.
    from fractal.execution.worker import Warden

    warden = Warden(False, str(tmp_path), {}, -1, -1)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert warden.zygote == 0 and warden.me == os.getpid()  # the pytest process, `child`'s parent
        others = warden._others()
        assert child.pid in others and not {1, 2} & set(others)
    finally:
        child.kill()
        child.wait()
        os.close(warden.devnull)  # (the candidates' pipes are made per candidate, by the zygote)


def test_hidden_paths_cover_project_home_and_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hidden = isolation_module.hidden_paths(LabelParams(cache_dir=str(tmp_path / "cache"), hide_paths=["/srv"]))
    assert str(tmp_path.resolve()) in hidden
    assert os.path.expanduser("~") in hidden or os.path.expanduser("~") == "/"
    assert ("/srv" in hidden) == os.path.exists("/srv")


# ------------------------------------------------------------------------------------------
# End to end in the sandbox
# ------------------------------------------------------------------------------------------
def require_sandbox() -> None:
    """Skips only where bubblewrap is absent and CI is not set; a machine that has bwrap
    (or CI) but cannot start the sandbox fails, so a sandbox that stopped working turns
    the suite red."""
    if shutil.which("bwrap") is None and not os.environ.get("CI"):
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap); CI is not set")
    why = isolation_module._probe_bwrap(LabelParams(), os.geteuid() == 0)
    if why:
        pytest.fail(f"the bwrap sandbox cannot start: {why}")


@pytest.fixture
def sandboxed(tmp_path, monkeypatch):
    require_sandbox()
    monkeypatch.chdir(tmp_path)
    return LabelParams(workers=2, timeout_floor=1.0, timeout_cap=1.0, cache_dir=str(tmp_path / "cache"))


def test_label_candidates_order_dedupe_and_cache(sandboxed, monkeypatch):
    ok = "def add(a, b):\n    return a + b\n"
    wrong = "def add(a, b):\n    return a - b\n"
    loop = "def add(a, b):\n    while True:\n        pass\n"
    mbpp = Problem("MBPP/2", "mbpp", "test", "", "twice", "assert twice(2) == 4\nassert twice('a') == 'aa'\n",
                   "def twice(x):\n    return x + x\n", test_style="asserts")
    gens = [Generation("t/add", i, "", p, "x", "x") for i, p in enumerate([ok, wrong, ok, loop, ok, "def add(a, b) return"])]
    gens.append(Generation("MBPP/2", 0, "", "def twice(x):\n    return 2 * x\n", "x", "x"))
    labels = label_candidates([CHECK, mbpp], gens, sandboxed)
    assert [(l.problem_id, l.sample) for l in labels] == [(g.problem_id, g.sample) for g in gens]
    assert [l.status for l in labels] == ["passed", "failed", "passed", "timeout", "passed", "syntax_error", "passed"]
    assert labels[0].duration == labels[2].duration == labels[4].duration  # one execution for three copies
    assert [l.passed for l in labels] == [s == "passed" for s in (l.status for l in labels)]

    # A rerun and an enlarged sample set execute only what is new.
    ran = []
    import fractal.execution.labeler as labeler_module

    real = labeler_module.WorkerPool

    class CountingPool(real):
        def run(self, tasks, **kw):
            tasks = list(tasks)
            ran.extend(t["program"] for t in tasks)
            return super().run(tasks, **kw)

    monkeypatch.setattr(labeler_module, "WorkerPool", CountingPool)
    again = label_candidates([CHECK, mbpp], gens, sandboxed)
    assert [l.status for l in again] == [l.status for l in labels] and ran == []
    more = gens + [Generation("t/add", 9, "", "def add(a, b):\n    return b + a\n", "x", "x")]
    assert label_candidates([CHECK, mbpp], more, sandboxed)[-1].status == "passed"
    assert ran == ["def add(a, b):\n    return b + a\n"]


def test_slow_candidate_with_an_early_wrong_answer_is_stopped_early(sandboxed):
    problem = Problem("t/slow", "t", "test", "", "f",
                      "def check(candidate):\n    assert candidate(1) == 1\n    assert candidate(2) == 2\n",
                      "def f(x):\n    return x\n")
    slow = "import time\ndef f(x):\n    if x == 2:\n        time.sleep(100)\n    return 0\n"
    label, = label_candidates([problem], [Generation("t/slow", 0, "", slow, "x", "x")], sandboxed)
    assert label.status == "failed" and label.duration < 0.9


def test_cpu_limits_stop_busy_candidates_and_a_sleeping_one_gets_the_wall_limit(sandboxed):
    busy_call = "def add(a, b):\n    while True:\n        pass\n"
    busy_load = "while True:\n    pass\ndef add(a, b):\n    return a + b\n"
    # 0.15 s of CPU loading the module (an import can take that): over the test calls'
    # limit, under the whole run's.
    slow_load = ("import time\nt = time.process_time()\nwhile time.process_time() - t < 0.15:\n    pass\n"
                 "def add(a, b):\n    return a + b\n")
    sleepy = "import time\ndef add(a, b):\n    time.sleep(0.4)\n    return a + b\n"
    params = dataclasses.replace(sandboxed, timeout_floor=3.0, timeout_cap=3.0, timeout_cpu_floor=0.3,
                                 timeout_calls_cpu_floor=0.1)
    gens = [Generation("t/add", i, "", p, "x", "x") for i, p in enumerate([busy_call, busy_load, slow_load, sleepy])]
    busy_call_label, busy_load_label, slow_load_label, sleepy_label = label_candidates([CHECK], gens, params)
    assert (busy_call_label.status, busy_call_label.detail) == ("timeout", "CPU limit 0.1s in the test calls")
    assert (busy_load_label.status, busy_load_label.detail) == ("timeout", "CPU limit 0.3s")
    assert max(busy_call_label.duration, busy_load_label.duration) < 2.0  # long before the 3 s wall limit
    assert slow_load_label.status == "passed"
    assert sleepy_label.status == "passed"  # 0.4 s of sleep is far above the CPU floors, but uses no CPU


def test_a_program_the_labeler_cannot_compile_is_compiled_in_the_sandbox(sandboxed):
    # The parser overflows on this; the labeler leaves it to the sandbox rather than guess.
    nested = "x = " + "-" * 100000 + "1\ndef add(a, b):\n    return a + b\n"
    ok = "def add(a, b):\n    return a + b\n"
    gens = [Generation("t/add", 0, "", nested, "x", "x"), Generation("t/add", 1, "", ok, "x", "x")]
    nested_label, ok_label = label_candidates([CHECK], gens, sandboxed)
    assert nested_label.status in ("memory", "error") and nested_label.detail in ("MemoryError", "RecursionError")
    assert ok_label.status == "passed"


def test_recursive_reference_calls_are_not_test_calls():
    fact = Problem("MBPP/3", "mbpp", "test", "", "fact", "assert fact(5) == 120\nassert fact(1) == 1\n",
                   "def fact(n):\n    return 1 if n < 2 else n * fact(n - 1)\n", test_style="asserts")
    plan = plan_tests(fact)
    assert len(plan.calls) == 2
    assert judge(plan, EXIT, payload({"load": 1}, {"r": 120}, {"r": 1}), 1.0) == ("passed", "")


def test_killed_label_run_resumes_from_the_cache(sandboxed, tmp_path, monkeypatch):
    """A labeler killed mid-run (kill -9) leaves what it finished in the cache; the rerun
    executes only the rest, and the killed run's sandboxes are gone with it."""
    import sqlite3
    import time

    import fractal.execution.labeler as labeler_module

    programs = [f"def add(a, b):\n    return a + b + {i} - {i}\n" for i in range(30)]
    programs.append("import time\ndef add(a, b):\n    time.sleep(2)\n    return a + b\n")  # the first run dies here
    params = LabelParams(workers=1, timeout_floor=5, timeout_cap=5, cache_dir=sandboxed.cache_dir)
    script = textwrap.dedent(f"""
        import sys
        from fractal.execution import label_candidates
        from fractal.params import LabelParams
        from fractal.records import Generation, Problem
        problem = Problem(**{json.dumps(CHECK.__dict__)})
        programs = {programs!r}
        gens = [Generation("t/add", i, "", p, "x", "x") for i, p in enumerate(programs)]
        label_candidates([problem], gens, LabelParams(workers=1, timeout_floor=5, timeout_cap=5,
                                                       cache_dir={sandboxed.cache_dir!r}))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    db = os.path.join(sandboxed.cache_dir, "labels.sqlite")
    deadline = time.monotonic() + 60
    done = 0
    while time.monotonic() < deadline and done < 30:
        time.sleep(0.2)
        if os.path.exists(db):
            try:
                done = sqlite3.connect(db).execute("SELECT COUNT(*) FROM labels").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    proc.kill()
    proc.wait()
    assert done == 30, "the first run never got through its fast candidates"
    if os.geteuid() == 0:  # as root, sandboxed processes run under uids of their own
        left = [1]
        while left and time.monotonic() < deadline + 10:
            # The killed labeler's own uids (other labelers may run on a shared machine).
            first = isolation_module._UID_BASE + (proc.pid % 100_000) * 64
            left = [pid for pid in os.listdir("/proc") if pid.isdigit() and first <= _uid_of(pid) < first + 64]
            time.sleep(0.1)
        assert left == [], "the killed labeler's sandboxes outlived it"

    ran = []
    real = labeler_module.WorkerPool

    class CountingPool(real):
        def run(self, tasks, **kw):
            tasks = list(tasks)
            ran.extend(t["program"] for t in tasks)
            return super().run(tasks, **kw)

    monkeypatch.setattr(labeler_module, "WorkerPool", CountingPool)
    gens = [Generation("t/add", i, "", p, "x", "x") for i, p in enumerate(programs)]
    labels = label_candidates([CHECK], gens, params)
    assert ran == [programs[-1]]
    assert [l.status for l in labels] == ["passed"] * 31


def _uid_of(pid: str) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1
