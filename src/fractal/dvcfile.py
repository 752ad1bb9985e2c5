"""dvc.yaml, the one place fractal reads it: a stage's address, its declared paths, and DVC's
own view of it.

- `load_stage`: what a remote run needs to know of a stage: the paths to sync up (deps, params
  files, persistent outs) and the outputs to bring back (outs, metrics, plots).
- `dvc_stage`: DVC's own Stage object (hashes, params values, resolved paths), for lineage.
- `declared_outputs`: every (stage, output path) the file declares, for lineage lookups.

A plain dvc.yaml is read as YAML (fast: importing DVC costs about a second). A templated one
(vars, ${...}, foreach, matrix) is resolved by DVC itself, so only such stages pay it; where
the answer is DVC's own (hashes), DVC is asked. Where it stops: `declared_outputs` reads the
plain file only (a templated stage's outputs are not listed).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any, Iterator

import yaml


class StageError(ValueError):
    pass


@dataclasses.dataclass
class Output:
    path: str  # relative to the repository root
    persist: bool = False  # DVC keeps it between runs: the remote run starts from it


@dataclasses.dataclass
class StageSpec:
    name: str
    deps: list[str]  # paths relative to the repository root: deps and params files
    outs: list[Output]

    @property
    def uploads(self) -> list[str]:
        return sorted({*self.deps, *(o.path for o in self.outs if o.persist)})


def stage_address(stage: str) -> tuple[Path, str]:
    """(dvc.yaml, stage name) for `fractal run <stage>`: DVC_STAGE when DVC runs us (it also
    covers foreach entries and dvc.yaml files in subdirectories), else the script's name."""
    address = os.environ.get("DVC_STAGE") or stage
    if ":" in address:
        file, name = address.rsplit(":", 1)
        return Path(file), name
    return Path("dvc.yaml"), address


def load_stage(stage: str, root: Path | None = None) -> StageSpec:
    root = root or Path.cwd()
    dvcfile, name = stage_address(stage)
    path = root / dvcfile
    if not path.exists():
        raise StageError(f"{path}: not found; a remote run reads the stage's deps and outs from it "
                         "(run `fractal run` from the repository root, as dvc.yaml's cmd does)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise StageError(f"{path}: not valid YAML ({e})") from None
    stages = doc.get("stages") or {}
    base = name.split("@", 1)[0]
    entry = stages.get(base)
    if entry is None:
        raise StageError(f"{path}: no stage `{base}` (stages: {', '.join(stages) or 'none'}); a remote stage must "
                         "be declared in dvc.yaml so fractal knows what to sync and what to bring back")
    if "vars" in doc or "foreach" in entry or "matrix" in entry or "${" in yaml.safe_dump(entry):
        return _resolved_by_dvc(root, stage, name)
    wdir = Path(dvcfile.parent, entry.get("wdir", "."))
    deps = [_local(wdir, p, path, name) for p in declared_paths(entry.get("deps"))]
    deps += [_local(wdir, p, path, name) for p in _params_files(entry.get("params"))]
    outs = []
    for section in ("outs", "metrics", "plots"):
        for item in entry.get(section) or []:
            out_path, opts = _path_and_options(item)
            outs.append(Output(_local(wdir, out_path, path, name), persist=bool(opts.get("persist", False))))
    return StageSpec(name=name, deps=deps, outs=outs)


def _resolved_by_dvc(root: Path, stage_name: str, name: str) -> StageSpec:
    from dvc.dependency.param import ParamsDependency

    with dvc_stage(stage_name, root) as stage:
        root_dir = Path(stage.repo.root_dir)
        deps = [_relative(Path(d.fs_path), root_dir, d.def_path) for d in stage.deps
                if isinstance(d, ParamsDependency) or d.protocol == "local"]
        outs = [Output(_relative(Path(o.fs_path), root_dir, o.def_path), persist=o.persist) for o in stage.outs]
    return StageSpec(name=name, deps=deps, outs=outs)


@contextlib.contextmanager
def dvc_stage(stage: str, root: Path | None = None) -> Iterator[Any]:
    """DVC's own Stage object for `stage` (addressed as `stage_address` does), valid while its
    Repo is open: templating, wdir and params resolved by DVC, hashes as DVC computes them."""
    from dvc.repo import Repo

    root = root or Path.cwd()
    dvcfile, name = stage_address(stage)
    with Repo(str(root)) as repo:  # DVC reads relative targets from the cwd: the target is absolute
        [found] = repo.stage.collect(f"{(root / dvcfile).resolve()}:{name}")
        yield found


def declared_outputs(root: Path) -> list[tuple[str, str]]:
    """(stage, output path) for every output root/dvc.yaml declares (outs, metrics, plots), read
    as plain YAML; none when the file is missing or not YAML."""
    try:
        doc = yaml.safe_load((root / "dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    return [(name, path) for name, entry in (doc.get("stages") or {}).items()
            for section in ("outs", "metrics", "plots") for path in declared_paths((entry or {}).get(section))]


def declared_paths(items: Any) -> list[str]:
    """The paths of a dvc.yaml deps/outs/metrics/plots list (entries with options included)."""
    return [_path_and_options(i)[0] for i in items or []]


def _path_and_options(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and len(item) == 1:
        [(path, opts)] = item.items()
        return str(path), opts or {}
    raise StageError(f"unexpected entry in dvc.yaml: {item!r}")


def _params_files(items: Any) -> list[str]:
    files = []
    for item in items or []:
        if isinstance(item, str):
            files.append("params.yaml")
        elif isinstance(item, dict):
            files.extend(str(k) for k in item)
    return sorted(set(files))


def _local(wdir: Path, p: str, dvcfile: Path, stage: str) -> str:
    if "://" in p:
        raise StageError(f"{dvcfile}: stage {stage}: {p} is not a local path; remote executors sync local "
                         "files only (run this stage locally: FRACTAL_EXECUTOR=local)")
    full = Path(os.path.normpath(wdir / p))
    if full.is_absolute() or full.parts[:1] == ("..",):
        raise StageError(f"{dvcfile}: stage {stage}: {p} is outside the repository; a remote run can only "
                         "sync paths inside it")
    return full.as_posix()


def _relative(path: Path, root: Path, shown: str) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        raise StageError(f"{shown} is outside the repository {root}; a remote run can only sync paths inside it") from None
