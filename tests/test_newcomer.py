"""Every bad input a new user tried (issue 11), and more: each fails early, with one line that
names the file and the key (or line), in seconds, and touches nothing it should not.

Each case edits the default params.yaml (as a user would, by text) or an input file in a
scratch workspace (stages/ and data/raw linked from this repository), then runs `fractal
check` or `fractal run STAGE` there. speed/bad_inputs.py runs the same cases and prints
the table of what the user sees and how long it took.
"""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BOUND_S = 30.0  # far above what a case takes (under 2 s on a loaded 2-core machine); far below a hub's 55 s of retries


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Case:
    name: str  # the bad input, as the table shows it
    expect: str  # what the one line must name (the key, or the file and line)
    edits: tuple[tuple[str, str], ...] = ()  # (text in the default params.yaml, what the user wrote instead)
    command: tuple[str, ...] = ("check",)  # `fractal ...`
    env: dict[str, str] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)  # path in the workspace -> content
    workspace: bool = True  # False: run in an empty directory (not a repository)


def _problem_line() -> str:
    return json.dumps({"problem_id": "HumanEval/0", "benchmark": "humaneval", "split": "test", "prompt": "def f():\n",
                       "entry_point": "f", "tests": "def check(c):\n    pass\n", "reference": "def f():\n    pass\n"})


REPLAY = "data/raw/codet-humaneval/HumanEval_codegen16B_temp0.8_topp0.95_num100_max300_code_solution.jsonl"

CASES = [
    # The issue's own cases
    Case("generate.n: 0", "`generate.n`", (("n: 100 ", "n: 0 "),)),
    Case("generate.n: -5", "`generate.n`", (("n: 100 ", "n: -5 "),)),
    Case("train.features: [consenus]", "`train.features`", (("features: [consensus]", "features: [consenus]"),)),
    Case("train.backbone: minilmm (offline)", "`train.backbone`", (("backbone: minilm ", "backbone: minilmm "),),
         env={"HF_HUB_OFFLINE": "1"}),
    Case("train.backbone: minilmm (hub unreachable)", "`train.backbone`",
         (("backbone: minilm ", "backbone: minilmm "),), env={"HF_ENDPOINT": "http://127.0.0.1:{port}"}),
    Case("train.lr: 1e-3", "`train.lr`", (("lr: 0.001", "lr: 1e-3"),)),
    Case("YAML syntax error", "params.yaml:9:3: not valid YAML", (("  source: local", "  source: [local"),)),
    Case("prepare.split.test: 0.95", "`prepare.split.test`", (("    test: 0.35", "    test: 0.95"),)),
    Case("prepare.benchmark: humaneva", "`prepare.benchmark`", (("benchmark: humaneval ", "benchmark: humaneva "),)),
    Case("label.isolation: bwarp", "`label.isolation`", (("isolation: auto ", "isolation: bwarp "),)),
    Case("prepare.source: hub (offline), fractal check", "`prepare.source`", (("source: local ", "source: hub "),),
         env={"HF_ENDPOINT": "http://127.0.0.1:{port}"}),
    Case("prepare.source: hub (offline), fractal run prepare", "`prepare.source`",
         (("source: local ", "source: hub "),), command=("run", "prepare"), env={"HF_ENDPOINT": "http://127.0.0.1:{port}"}),
    Case("MLFLOW_TRACKING_URI at a closed port, fractal run prepare", "MLFLOW_TRACKING_URI", command=("run", "prepare"),
         env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:{port}", "FRACTAL_TRACKING": "on"}),
    Case("fractal run prepare outside a repository", "repository root", command=("run", "prepare"),
         env={"FRACTAL_TRACKING": "on"}, workspace=False),
    Case("generate.n: 0, fractal run generate (stage start)", "`generate.n`", (("n: 100 ", "n: 0 "),),
         command=("run", "generate")),
    Case("malformed replay line, fractal run generate", "bad-replay.jsonl:2:",
         ((REPLAY, "bad-replay.jsonl"),), command=("run", "generate"),
         files={"data/problems.jsonl": _problem_line() + "\n",
                "bad-replay.jsonl": json.dumps({"prompt": "def f():\n", "samples": ["  pass\n"]}) + "\n{oops\n"}),
    Case("malformed generations line, fractal run label", "data/generations.jsonl:1:", command=("run", "label"),
         files={"data/problems.jsonl": _problem_line() + "\n",
                "data/generations.jsonl": json.dumps({"problem_id": "HumanEval/0", "sampel": 0}) + "\n"}),
    Case("generations missing, fractal run label", "data/generations.jsonl", command=("run", "label"),
         files={"data/problems.jsonl": _problem_line() + "\n"}),
    # More of the same kinds
    Case("train.lrr: 0.1 (unknown key)", "`train.lrr`", (("lr: 0.001", "lrr: 0.1"),)),
    Case("trian: (unknown section)", "`trian`", (("\ntrain:\n", "\ntrian:\n"),)),
    Case("generate.backend: replai", "`generate.backend`", (("backend: replay ", "backend: replai "),)),
    Case("generate.replay_file: a missing file", "`generate.replay_file`", ((REPLAY, "data/raw/nowhere.jsonl"),)),
    Case("generate.n: ten", "`generate.n`", (("n: 100 ", "n: ten "),)),
    Case("generate.top_p: 1.5", "`generate.top_p`", (("top_p: 0.95", "top_p: 1.5"),)),
    Case("prepare.split.validation: -0.1", "`prepare.split.validation`", (("validation: 0.15", "validation: -0.1"),)),
    Case("prepare.limit: -1", "`prepare.limit`", (("limit: 0 ", "limit: -1 "),)),
    Case("train.method: heads", "`train.method`", (("method: head ", "method: heads "),)),
    Case("train.folds: 1", "`train.folds`", (("folds: 5 ", "folds: 1 "),)),
    Case("train.epochs: 2.0", "`train.epochs`", (("epochs: 30", "epochs: 2.0"),)),
    Case("train.fit_splits: [trian, validation]", "`train.fit_splits`",
         (("fit_splits: [train, validation]", "fit_splits: [trian, validation]"),)),
    Case("train.backbone: ./models/none (a missing directory)", "`train.backbone`",
         (("backbone: minilm ", "backbone: ./models/none "),)),
    Case("rank.ks: [0, 1]", "`rank.ks`", (("ks: auto ", "ks: [0, 1] "),)),
    Case("label.timeout_cap: 0.1 (below the floor)", "`label.timeout_cap`", (("timeout_cap: 10.0", "timeout_cap: 0.1"),)),
]


@dataclasses.dataclass
class Outcome:
    rc: int
    lines: list[str]  # what the user is told: stderr's lines, less `fractal check`'s notes and summary
    seconds: float  # wall
    cpu_seconds: float  # user + system of the command and everything it waited for (does not grow with load)
    created: list[str]  # what appeared in a directory that is not a repository


def attempt(case: Case, root: Path) -> Outcome:
    """Runs one case in a fresh workspace under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    port = closed_port()
    if case.workspace:
        (root / "data").mkdir()
        (root / "stages").symlink_to(REPO / "stages")
        (root / "data" / "raw").symlink_to(REPO / "data" / "raw")
        text = (REPO / "params.yaml").read_text()
        for old, new in case.edits:
            assert old in text, f"{case.name}: {old!r} is not in params.yaml any more"
            text = text.replace(old, new, 1)
        (root / "params.yaml").write_text(text)
        for rel, content in case.files.items():
            (root / rel).write_text(content)
    before = set(os.listdir(root))
    env = {**os.environ, "FRACTAL_TRACKING": "off", "FRACTAL_EXECUTOR": "local"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("HF_HUB_OFFLINE", None)
    env.update({k: v.format(port=port) for k, v in case.env.items()})
    start, cpu = time.monotonic(), _children_cpu()
    run = subprocess.run([sys.executable, "-m", "fractal.cli", *case.command], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    seconds, cpu = time.monotonic() - start, _children_cpu() - cpu
    told = [line for line in run.stderr.splitlines() if line.strip()]
    return Outcome(run.returncode, told, seconds, cpu, sorted(set(os.listdir(root)) - before))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_fails_early_with_one_line(case, tmp_path):
    out = attempt(case, tmp_path / "ws")
    assert out.rc != 0, f"{case.name}: exited 0"
    assert len(out.lines) == 1, f"{case.name}: expected one line, got:\n" + "\n".join(out.lines)
    assert case.expect in out.lines[0], out.lines[0]
    assert "Traceback" not in out.lines[0]
    assert out.seconds < BOUND_S, f"{case.name}: {out.seconds:.1f} s"
    assert out.created == [], f"{case.name}: created {out.created}"


def test_traceback_on_request(tmp_path):
    """FRACTAL_DEBUG=1 keeps the traceback of an error the user can fix."""
    case = next(c for c in CASES if c.name.startswith("malformed generations"))
    out = attempt(dataclasses.replace(case, env={"FRACTAL_DEBUG": "1"}), tmp_path / "ws")
    assert out.rc != 0 and any("Traceback" in line for line in out.lines)
    assert any("RecordError" in line and "data/generations.jsonl:1:" in line for line in out.lines)


def test_traceback_flag(tmp_path):
    """`fractal run --traceback` keeps the traceback of a params problem found before the stage."""
    case = next(c for c in CASES if c.name.startswith("generate.n: 0, fractal run generate"))
    out = attempt(dataclasses.replace(case, command=("run", "--traceback", "generate")), tmp_path / "ws")
    assert out.rc != 0 and out.lines[0].startswith("Traceback")
    assert any("ParamsError" in line and "`generate.n` is 0" in line for line in out.lines)


def test_yaml_error_is_reported_once(tmp_path):
    case = next(c for c in CASES if c.name == "YAML syntax error")
    ws = tmp_path / "ws"
    attempt(case, ws)  # writes the workspace
    run = subprocess.run([sys.executable, "-m", "fractal.cli", "check"], cwd=ws, capture_output=True, text=True)
    assert (run.stdout + run.stderr).count("not valid YAML") == 1


def test_read_jsonl_names_file_and_line(tmp_path):
    from fractal.records import Generation, MissingInput, RecordError, read_jsonl

    path = tmp_path / "generations.jsonl"
    path.write_text('{"problem_id": "a"}\n')
    with pytest.raises(RecordError, match=rf"{path}:1: not a Generation record \(missing 5 required positional"):
        read_jsonl(path, Generation)
    path.write_text("\n[1, 2]\n")
    with pytest.raises(RecordError, match=rf"{path}:2: not a Generation record \(a JSON object\), got list"):
        read_jsonl(path, Generation)
    path.write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(RecordError, match=rf"{path}:2: not valid JSON \(Expecting value at column 7\)"):
        read_jsonl(path)
    with pytest.raises(MissingInput, match="no such file.*dvc repro"):
        read_jsonl(tmp_path / "absent.jsonl")


def test_store_check_accepts_any_http_answer_and_refuses_silence(monkeypatch):
    """A server that answers, even with an error status, is there; one that accepts the
    connection and says nothing fails after STORE_PROBE_SECONDS, not after MLflow's retries."""
    import http.server
    import threading

    from fractal.tracking import STORE_PROBE_SECONDS, TrackingError, check_store

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)  # 501 to every GET
    threading.Thread(target=server.handle_request, daemon=True).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{server.server_port}/")
    check_store()
    server.server_close()

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # connections complete in the kernel; nothing ever reads or answers
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://user:secret@127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(TrackingError, match="MLFLOW_TRACKING_URI is http://user:\\*\\*\\*@127.0.0.1") as e:
            check_store()
        assert time.monotonic() - start < STORE_PROBE_SECONDS + BOUND_S and "secret" not in str(e.value)
