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
  (a directory's ends in .dir), computed with DVC's own hashing, so they match dvc.lock.
Params are the stage's params as dvc.yaml lists them; metrics are the numbers in its
metrics files. An output directory holding a critic (critic.json) also gets each epoch's
checkpoint with its validation metrics, and the critic is registered as a version of the
"critic" model whose tags carry the same lineage.

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
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

TRACKING_ENV = "FRACTAL_TRACKING"
EXPERIMENT = "fractal"  # MLFLOW_EXPERIMENT_NAME overrides it
CRITIC_MODEL = "critic"  # the registered model's name
_TAG_VALUE_MAX = 5000


class TrackingError(RuntimeError):
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


def open_store(root: Path) -> tuple[Any, str]:
    """(MlflowClient, experiment id), creating and migrating the store if needed. Call it
    holding store_lock."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(root)
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
    from dvc.repo import Repo

    from fractal.remote.dvcfile import stage_address

    root = root or Path.cwd()
    dvcfile, name = stage_address(stage)
    record = StageRecord(stage=name)
    with Repo(str(root)) as repo:
        [dvc_stage] = repo.stage.collect(f"{(root / dvcfile).resolve()}:{name}")
        for dep in dvc_stage.deps:
            if isinstance(dep, ParamsDependency):
                record.params.update(_flatten(dep.get_hash().value or {}))
            elif dep.exists:
                record.deps[dep.def_path] = dep.get_hash().value
        for out in dvc_stage.outs:
            if not out.exists:
                continue
            record.outs[out.def_path] = out.get_hash().value
            path = Path(out.fs_path)
            if out.metric and path.is_file():
                record.metrics.update(_metrics_of(path))
            if path.is_dir() and (path / "critic.json").is_file():
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
    """Runs the stage and records it; the stage's exit code is returned unchanged. A store
    that cannot be opened stops the stage before it runs (nothing would be traceable)."""
    if not enabled():
        return run()
    root = repo_root()
    try:
        with store_lock(root):
            open_store(root)
    except TrackingError as e:
        print(f"fractal run: {e}", file=sys.stderr)
        return 2
    start = time.time()
    rc = run()
    try:
        run_id = record_stage(stage, rc, start, time.time(), executor)
        print(f"fractal run: {stage} recorded in MLflow run {run_id} ({_safe_uri(tracking_uri(root))})", file=sys.stderr)
    except Exception as e:  # the outputs are written: losing the record must not lose them
        print(f"fractal run: warning: {stage} ran but could not be recorded in MLflow "
              f"({type(e).__name__}: {str(e)[:500]})", file=sys.stderr)
    return rc


def record_stage(stage: str, rc: int, start: float, end: float, executor: str = "local") -> str:
    from mlflow.entities import Metric, Param

    cwd = Path.cwd()
    root = repo_root(cwd)
    record = describe_stage(stage, cwd)
    key, command = invocation()
    lineage = {**git_state(cwd), "dvc.exp_name": os.environ.get("DVC_EXP_NAME", ""),
               "dvc.baseline_rev": os.environ.get("DVC_EXP_BASELINE_REV", ""), "fractal.invocation": key}
    tags = {**lineage, "fractal.stage": record.stage, "fractal.executor": executor,
            **{f"dvc.dep.{p}": h for p, h in record.deps.items()},
            **{f"dvc.out.{p}": h for p, h in record.outs.items()}}
    ms = int(end * 1000)
    with store_lock(root):
        client, exp_id = open_store(root)
        parent = _parent_run(client, exp_id, key, command, lineage, int(start * 1000))
        run = client.create_run(exp_id, start_time=int(start * 1000), run_name=record.stage,
                                tags={"mlflow.parentRunId": parent, **_clip(tags)})
        run_id = run.info.run_id
        params = [Param(k, _text(v)) for k, v in sorted(record.params.items())]
        metrics = [Metric(k, v, ms, 0) for k, v in sorted(record.metrics.items())]
        for i in range(0, max(len(params), len(metrics)), 100):
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        if rc == 0:
            for critic_dir in record.critic_dirs:
                log_critic(client, run_id, cwd / critic_dir, critic_dir, {**lineage, **{
                    f"dvc.dep.{p}": h for p, h in record.deps.items() if p.startswith("data/")}})
        client.set_terminated(run_id, "FINISHED" if rc == 0 else "FAILED", end_time=ms)
        client.set_terminated(parent, "FINISHED" if rc == 0 else "FAILED", end_time=ms)
        client.set_tag(parent, "fractal.stages", _stages_so_far(client, exp_id, parent))
    return run_id


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
    metrics/rank.json:critic_top1.value, models/critic, data/labels.jsonl), a registered
    critic (models:/critic/3 or critic/3) or an MLflow run id."""
    import re

    root = repo_root()
    with store_lock(root):
        client, exp_id = open_store(root)
    model = re.fullmatch(r"(?:models:/)?([\w.-]+)/(\d+)", target)
    if model and not Path(target).exists():
        version = client.get_model_version(model.group(1), model.group(2))
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
    return [stage for stage, out in _outs_by_stage(Path.cwd()) if out == path]


def _all_outs(root: Path) -> list[str]:
    return sorted({out for _, out in _outs_by_stage(root)})


def _outs_by_stage(root: Path) -> list[tuple[str, str]]:
    """(stage, output path) for every output dvc.yaml declares (plain dvc.yaml files)."""
    import yaml

    try:
        doc = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    from fractal.remote.dvcfile import declared_paths

    return [(name, path) for name, entry in (doc.get("stages") or {}).items()
            for section in ("outs", "metrics", "plots") for path in declared_paths((entry or {}).get(section))]


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
def log_critic(client: Any, run_id: str, directory: Path, shown: str, lineage: dict[str, str]) -> Any:
    """Each epoch's checkpoint with its validation metrics at its epoch step; then the critic
    (every fold's best weights and critic.json) as a pyfunc model, registered as a version of
    CRITIC_MODEL with the run's lineage in its tags. Returns the ModelVersion."""
    import mlflow
    import torch
    from mlflow.entities import Metric

    folds = sorted(p for p in directory.glob("fold-*") if p.is_dir())
    for fold_dir in folds:
        metrics = []
        for ckpt in sorted(fold_dir.glob("epoch-*.pt")):
            state = torch.load(ckpt, map_location="cpu", weights_only=False)
            epoch = int(state.get("epoch", 0)) + 1
            for k, v in (state.get("metrics") or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("fold", "epoch") and v == v:
                    metrics.append(Metric(f"{fold_dir.name}/{k}", float(v), int(time.time() * 1000), epoch))
            client.log_artifact(run_id, str(ckpt), f"checkpoints/{fold_dir.name}")
        for i in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[i:i + 500])
    config = json.loads((directory / "critic.json").read_text())
    with tempfile.TemporaryDirectory(prefix="fractal-critic-") as tmp, \
            mlflow.start_run(run_id=run_id, nested=True), _quiet():
        info = mlflow.pyfunc.log_model(name=CRITIC_MODEL, python_model=CriticModel(),
                                       artifacts={"critic": str(_best_only(directory, Path(tmp) / "critic"))},
                                       pip_requirements=[f"fractal=={_version()}"])
    tags = {**lineage, "fractal.run_id": run_id, "fractal.dvc_out": shown,
            "critic.best_epochs": json.dumps(config.get("best_epochs", {})),
            "critic.method": str(config.get("method", "")), "critic.backbone": str(config.get("backbone", ""))}
    version = mlflow.register_model(info.model_uri, CRITIC_MODEL, tags=_clip(tags))
    client.set_tag(run_id, "critic.model_version", str(version.version))
    return version


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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fractal")
    except PackageNotFoundError:
        return "0"


with warnings.catch_warnings():  # MLflow's own import warns about type hints of its classes
    warnings.simplefilter("ignore", UserWarning)
    try:
        import mlflow.pyfunc as _pyfunc

        _PythonModel = _pyfunc.PythonModel
    except ImportError:  # tracking is optional for the library
        _PythonModel = object


class CriticModel(_PythonModel):
    """The registered critic: `mlflow.pyfunc.load_model("models:/critic/N").predict(df)` with
    one row per candidate (columns problem_id, sample, prompt, program; text optional)
    returns the critic's probability of passing for each row, in row order."""

    def load_context(self, context: Any) -> None:
        from fractal.critic.scorer import load_critic

        self.critic = load_critic(context.artifacts["critic"])


def _predict(self: CriticModel, context: Any, model_input: Any, params: dict | None = None) -> Any:
    import numpy as np

    from fractal.records import Generation, Problem

    rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
    problems: dict[str, Problem] = {}
    generations = []
    for r in rows:
        pid = str(r["problem_id"])
        problems.setdefault(pid, Problem(pid, "", "", r["prompt"], "", "", "", text=r.get("text") or ""))
        generations.append(Generation(pid, int(r["sample"]), "", r["program"], "", ""))
    scores = {(s.problem_id, s.sample): s.score for s in self.critic.score(list(problems.values()), generations)}
    return np.array([scores[g.problem_id, g.sample] for g in generations])


# Set after the class exists: MLflow inspects a predict defined in the class body for a
# type-hinted schema and warns on every import when it finds none.
CriticModel.predict = _predict
