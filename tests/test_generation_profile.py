"""The reference experiment's profile and executor file validate here, without a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fractal import params
from fractal.benchmarks import load_problems
from fractal.generation.check import check_generate
from fractal.generation.model_source import check_model_spec

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "profiles/mbpp-qwen-reference.yaml"
EXECUTOR = REPO / "profiles/mbpp-qwen-reference.executor.yaml"


def test_every_section_loads():
    for section in params.SECTIONS:  # machine=False: its models are checked where its stages run (Lambda)
        params.load(section, PROFILE, machine=False)


def test_generate_section_has_no_errors():
    found = check_generate(params.load("generate", PROFILE, machine=False))
    assert found.errors == []


def test_the_reference_protocol():
    gen = params.load("generate", PROFILE, machine=False)
    assert (gen.backend, gen.model, gen.n, gen.prompt_style) == ("vllm", "Qwen/Qwen2.5-Coder-1.5B-Instruct", 50, "chat")
    train = params.load("train", PROFILE, machine=False)
    assert train.folds == 0 and train.fit_splits == ["train", "validation"] and train.eval_splits == ["test"]
    assert train.method in ("full", "lora") and check_model_spec(train.backbone, "train.backbone") is None
    problems = load_problems(params.load("prepare", PROFILE, machine=False), REPO)
    fit = [p for p in problems if p.split in train.fit_splits]
    scored = [p for p in problems if p.split in train.eval_splits]
    assert (len(fit), len(fit) * gen.n) == (163, 8150)
    assert (len(scored), len(scored) * gen.n) == (257, 12850)
    assert max(params.rank_ks(params.load("rank", PROFILE, machine=False).ks, gen.n)) <= gen.n


def test_every_key_dvc_yaml_names_is_in_the_profile():
    # DVC reads the params a stage lists from params.yaml; a missing one is a broken stage.
    profile = yaml.safe_load(PROFILE.read_text())
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            for dotted in ([key] if isinstance(key, str) else list(key)):
                node = profile
                for part in dotted.split("."):
                    assert isinstance(node, dict) and part in node, f"dvc.yaml stage {name} names {dotted}"
                    node = node[part]


def test_executor_file_runs_generate_and_train_on_lambda(monkeypatch):
    config = pytest.importorskip("fractal.remote.config", reason="fractal.remote is not in this checkout")
    monkeypatch.delenv("FRACTAL_EXECUTOR", raising=False)  # it would override the file
    cfg = config.load_config(EXECUTOR)
    assert cfg.executor_for("generate") == "lambda" and cfg.executor_for("train") == "lambda"
    assert cfg.executor_for("prepare") == "local" and cfg.executor_for("label") == "local"
    assert "[gpu]" in cfg.remote.setup
