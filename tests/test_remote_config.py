"""Where a stage runs (.fractal/executor.yaml, FRACTAL_EXECUTOR) and what a remote run reads
from dvc.yaml (deps to sync, outs to bring back)."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from fractal.remote.config import ConfigError, load_config
from fractal.dvcfile import StageError, load_stage
from fractal.remote.executor import workspace_name


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("FRACTAL_EXECUTOR", "FRACTAL_EXECUTOR_CONFIG", "DVC_EXP_NAME", "DVC_STAGE", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_no_file_means_everything_runs_locally(tmp_path):
    cfg = load_config(start=tmp_path)
    assert cfg.source is None and cfg.executor_for("train") == "local"


def test_per_stage_executors_and_lambda_overrides(tmp_path):
    write(tmp_path / ".fractal/executor.yaml", """
        executor: local
        stages:
          generate: lambda
          train: {executor: lambda, instance_types: [gpu_1x_h100_pcie], keep_instance: true}
        lambda:
          instance_types: [gpu_1x_a100_sxm4, gpu_1x_a10]
          regions: us-east-1
        remote: {env: [HF_TOKEN]}
    """)
    cfg = load_config(start=tmp_path)
    assert [cfg.executor_for(s) for s in ("prepare", "generate", "train")] == ["local", "lambda", "lambda"]
    assert cfg.lambda_for("generate").instance_types == ["gpu_1x_a100_sxm4", "gpu_1x_a10"]
    assert cfg.lambda_for("train").instance_types == ["gpu_1x_h100_pcie"]
    assert cfg.lambda_for("train").keep_instance and not cfg.lambda_for("generate").keep_instance
    assert cfg.lambda_.regions == ["us-east-1"] and cfg.remote.env == ["HF_TOKEN"]


def test_environment_variable_wins_over_the_file(tmp_path, monkeypatch):
    write(tmp_path / ".fractal/executor.yaml", "stages: {train: lambda}\n")
    monkeypatch.setenv("FRACTAL_EXECUTOR", "local")
    assert load_config(start=tmp_path).executor_for("train") == "local"
    monkeypatch.setenv("FRACTAL_EXECUTOR", "gpu")
    with pytest.raises(ConfigError, match="FRACTAL_EXECUTOR='gpu'"):
        load_config(start=tmp_path).executor_for("train")


def test_queued_experiment_workspaces_find_the_repository_file(tmp_path):
    """DVC runs queued experiments in .dvc/tmp/exps/<tmp>/, below the repository."""
    write(tmp_path / ".fractal/executor.yaml", "executor: lambda\n")
    nested = tmp_path / ".dvc/tmp/exps/tmpabc123"
    nested.mkdir(parents=True)
    cfg = load_config(start=nested)
    assert cfg.source == tmp_path / ".fractal/executor.yaml" and cfg.executor_for("x") == "lambda"


@pytest.mark.parametrize("text, message", [
    ("lamda: {}\n", "unknown key `lamda` (did you mean `lambda`?)"),
    ("lambda: {instance_type: [a]}\n", "unknown key `lambda.instance_type` (did you mean `lambda.instance_types`?)"),
    ("stages: {train: gpu}\n", "stages.train: 'gpu' is not an executor"),
    ("stages: {train: {executor: lambda, region: x}}\n", "unknown key `stages.train.region`"),
    ("lambda: {keep_instance: yes please}\n", "lambda.keep_instance should be true or false"),
    ("remote: {reconnect_minutes: soon}\n", "remote.reconnect_minutes should be a number"),
    ("- just a list\n", "expected a mapping"),
])
def test_mistakes_name_the_file_and_key(tmp_path, text, message):
    path = write(tmp_path / ".fractal/executor.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(start=tmp_path)
    assert str(path) in str(e.value) and message in str(e.value)


def test_workspace_name_is_per_experiment_else_per_workspace(tmp_path, monkeypatch):
    a, b = tmp_path / "a" / "repo", tmp_path / "b" / "repo"
    a.mkdir(parents=True), b.mkdir(parents=True)
    assert workspace_name(a) != workspace_name(b)
    assert workspace_name(a) == workspace_name(a)
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-bass")
    monkeypatch.setenv("DVC_ROOT", str(a))
    queued = tmp_path / "a/repo/.dvc/tmp/exps/tmpxyz"
    assert workspace_name(queued) == "repo-exp-tidy-bass"
    monkeypatch.setenv("DVC_EXP_NAME", "other exp/../x")
    assert workspace_name(queued) == "repo-exp-other-exp-..-x"  # one path component, no spaces


DVC_YAML = """
    stages:
      train:
        cmd: fractal run train
        deps:
          - stages/train.py
          - src/fractal/critic
        params:
          - train
          - extra.yaml:
              - lr
        outs:
          - models/critic
          - checkpoints:
              persist: true
        metrics:
          - metrics/train.json:
              cache: false
        plots:
          - plots/train:
              cache: false
      sub:
        cmd: fractal run sub
        wdir: sub
        deps: [in.txt]
        outs: [../out.txt]
"""


def test_stage_deps_params_files_and_every_kind_of_output(tmp_path):
    write(tmp_path / "dvc.yaml", DVC_YAML)
    spec = load_stage("train", tmp_path)
    assert spec.deps == ["stages/train.py", "src/fractal/critic", "extra.yaml", "params.yaml"]
    assert [(o.path, o.persist) for o in spec.outs] == [
        ("models/critic", False), ("checkpoints", True), ("metrics/train.json", False), ("plots/train", False)]
    assert "checkpoints" in spec.uploads  # a persistent output goes up so the stage can resume from it
    sub = load_stage("sub", tmp_path)
    assert sub.deps == ["sub/in.txt"] and [o.path for o in sub.outs] == ["out.txt"]


def test_dvc_stage_env_picks_the_stage(tmp_path, monkeypatch):
    write(tmp_path / "dvc.yaml", DVC_YAML)
    monkeypatch.setenv("DVC_STAGE", "sub")
    assert load_stage("train", tmp_path).name == "sub"


def test_unknown_stage_and_paths_outside_the_repository_are_refused(tmp_path):
    write(tmp_path / "dvc.yaml", DVC_YAML)
    with pytest.raises(StageError, match="no stage `rank`"):
        load_stage("rank", tmp_path)
    write(tmp_path / "dvc.yaml", "stages:\n  x:\n    cmd: fractal run x\n    deps: [../secret]\n")
    with pytest.raises(StageError, match="outside the repository"):
        load_stage("x", tmp_path)
    write(tmp_path / "dvc.yaml", "stages:\n  x:\n    cmd: fractal run x\n    deps: [s3://bucket/data]\n")
    with pytest.raises(StageError, match="not a local path"):
        load_stage("x", tmp_path)
    with pytest.raises(StageError, match="dvc.yaml: not found"):
        load_stage("x", tmp_path / "elsewhere")


def test_templated_stages_are_resolved_by_dvc(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    write(tmp_path / "params.yaml", "data_dir: data\nmodels: [a, b]\n")
    write(tmp_path / "dvc.yaml", """
        stages:
          fit:
            foreach: ${models}
            do:
              cmd: fractal run fit ${item}
              deps: ["${data_dir}/train.jsonl"]
              outs: ["models/${item}"]
    """)
    spec = load_stage("fit@b", tmp_path)
    assert spec.deps == ["data/train.jsonl"] and [o.path for o in spec.outs] == ["models/b"]


def test_the_repository_dvc_yaml_is_readable():
    """The pipeline's own stages: every one has outputs to bring back."""
    root = Path(__file__).resolve().parents[1]
    for stage in ("prepare", "generate", "label", "train", "rank"):
        spec = load_stage(stage, root)
        assert spec.outs, stage
        assert f"stages/{stage}.py" in spec.deps
