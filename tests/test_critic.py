"""The critic: folds never mix problems, training is repeatable, and a killed train stage
resumes to the same result as an uninterrupted one."""
import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fractal.critic.config import CriticConfig, CriticConfigError
from fractal.critic.crossfit import export, fit_and_score
from fractal.critic.folds import Fold, make_folds
from fractal.critic.model import Head
from fractal.critic.scorer import NEW_PROBLEM_FOLD, load_critic
from fractal.critic.train import Batches, train_fold
from fractal.params import TrainParams
from fractal.records import Generation, Label, MissingInput, Problem, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def toy_data(n_problems=8, n_samples=8, seed=0):
    """Problems `add k`; a candidate passes when it adds (a clear, learnable signal)."""
    rng = random.Random(seed)
    problems, generations, labels = [], [], []
    for i in range(n_problems):
        pid = f"toy/{i}"
        prompt = f"def add{i}(a, b):\n    \"\"\"Return a plus b plus {i}.\"\"\"\n"
        problems.append(Problem(pid, "toy", "train" if i < n_problems // 2 else "test", prompt, f"add{i}",
                                f"def check(c):\n    assert c(1, 2) == {3 + i}\n", prompt + f"    return a + b + {i}\n"))
        for s in range(n_samples):
            good = rng.random() < 0.5
            body = f"    return a + b + {i}\n" if good else rng.choice(
                [f"    return a - b - {i}\n", "    return None\n", f"    return a * b * {i}\n", "    pass\n"])
            generations.append(Generation(pid, s, body, prompt + body, "replay", "toy"))
            labels.append(Label(pid, s, "passed" if good else "failed", good, 0.01))
    return problems, generations, labels


def test_cross_fitting_folds_are_disjoint_by_problem():
    problems, _, _ = toy_data(10)
    folds = make_folds(problems, 5, [], [], 0.2, seed=0)
    scored = [pid for f in folds for pid in f.scored]
    assert sorted(scored) == sorted(p.problem_id for p in problems)  # every problem scored once
    for f in folds:
        assert not set(f.fit) & set(f.scored) and not set(f.validation) & set(f.scored)
        assert not set(f.fit) & set(f.validation) and f.validation


def test_split_protocol_fits_on_fit_splits_and_scores_eval_splits():
    problems, _, _ = toy_data(8)
    [fold] = make_folds(problems, 0, ["train"], ["test"], 0.25, seed=0)
    assert sorted(fold.fit + fold.validation) == [f"toy/{i}" for i in range(4)]
    assert fold.scored == [f"toy/{i}" for i in range(4, 8)]


def test_head_critic_learns_and_is_repeatable(tmp_path):
    problems, generations, labels = toy_data()
    params = TrainParams(folds=2, epochs=15, patience=15, batch_size=16, lr=3e-3, hidden=32,
                         features=["embedding", "centered", "consensus"])
    a = fit_and_score(problems, generations, labels, params, tmp_path / "a")
    b = fit_and_score(problems, generations, labels, params, tmp_path / "b")
    assert [s.score for s in a.scores] == [s.score for s in b.scores]
    assert len(a.scores) == len(generations)
    y = np.array([lab.passed for lab in labels])
    s = np.array([x.score for x in a.scores])  # both sorted by (problem, sample)
    assert s[y].mean() > s[~y].mean() + 0.1  # it learned something that transfers across problems


def test_a_row_is_its_prompt_and_its_code_each_embedded_alone(tmp_path, monkeypatch):
    """[prompt; code] / sqrt(2), each half the encoder's own embedding of that text alone,
    whatever else shares its batch; each distinct text embedded once; a cached rerun loads no model."""
    import fractal.critic.embed as embed_module
    from fractal.critic.embed import Encoder, embed
    from fractal.critic.inputs import CriticInput, encode_texts

    prompts = ["def f(x):\n    \"\"\"Add one.\"\"\"\n", "def g(s):\n    \"\"\"Reverse s.\"\"\"\n"]
    codes = ["    return x + 1\n", "    return s[::-1]\n" + "    # long\n" * 40, "    return x + 1\n"]
    items = [CriticInput(prompts[0], codes[0]), CriticInput(prompts[0], codes[1]), CriticInput(prompts[1], codes[2]),
             CriticInput(prompts[1], codes[1]), CriticInput(prompts[0], codes[0])]
    encoder = Encoder("minilm", 64, 8)
    seen = []
    batch = encoder.batch
    monkeypatch.setattr(encoder, "batch", lambda ids: seen.extend(ids) or batch(ids))
    rows = embed(items, "minilm", 64, 8, 2, tmp_path / "cache", encoder)
    assert len(seen) == 2 + 2  # two prompts, two distinct codes (codes[0] == codes[2])

    def alone(text, limit):  # one text, batch of one: no neighbour, no padding
        return batch(encode_texts(encoder.tokenizer, [text], limit))[0]

    assert len(encode_texts(encoder.tokenizer, [prompts[0]], 10)[0]) == 10  # the prompt is cut to 8 + 2 specials
    for it, row in zip(items, rows):
        want = np.concatenate([alone(it.prompt, 10), alone(it.code, 64)]) / np.sqrt(2)
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-6)
    np.testing.assert_array_equal(rows[0, 384:], rows[2, 384:])  # the same code, two problems: one vector

    monkeypatch.setattr(embed_module, "load_encoder", lambda *a: pytest.fail("everything was cached"))
    np.testing.assert_array_equal(embed(items, "minilm", 64, 8, 2, tmp_path / "cache"), rows)


def test_embeddings_of_the_joint_layout_are_refused(tmp_path):
    from fractal.critic.embed import INDEX, load_embeddings, save_embeddings

    save_embeddings(tmp_path, np.eye(2, dtype=np.float32), [("a", 0), ("a", 1)], {"backbone": "minilm"})
    np.testing.assert_array_equal(load_embeddings(tmp_path, [("a", 1)], {"backbone": "minilm"}), [[0, 1]])
    index = json.loads((tmp_path / INDEX).read_text())
    del index["layout"]  # as the embed stage wrote them before the prompt+code layout
    (tmp_path / INDEX).write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"index\.json: vectors of layout 'joint.*dvc repro embed"):
        load_embeddings(tmp_path, [("a", 1)])


def workspace(tmp_path: Path, name: str, params: dict) -> Path:
    ws = tmp_path / name
    problems, generations, labels = toy_data(8, 12)
    write_jsonl(ws / "data/problems.jsonl", problems)
    write_jsonl(ws / "data/generations.jsonl", generations)
    write_jsonl(ws / "data/labels.jsonl", labels)
    # What the train stage reads besides: no generated tests (the hybrid's execution features
    # are then zero), and the embed stage's output, made by the real stage.
    write_jsonl(ws / "data/generated_tests.jsonl",
                [{"problem_id": p.problem_id, "inputs": [], "tests": [], "asserts": []} for p in problems])
    write_jsonl(ws / "data/probe.jsonl", [{"problem_id": g.problem_id, "sample": g.sample, "outputs": [], "passed": [],
                                           "status": "ok"} for g in generations])
    (ws / "params.yaml").write_text(yaml.safe_dump({"train": params}))
    embedded = subprocess.run([sys.executable, str(ROOT / "stages/embed.py")], cwd=ws, capture_output=True, text=True,
                              timeout=600)
    assert embedded.returncode == 0, embedded.stderr[-2000:]
    return ws


def run_train(ws: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "stages/train.py")], cwd=ws, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=600)


def result(ws: Path) -> tuple[dict, list]:
    metrics = json.loads((ws / "metrics/train.json").read_text())
    assert "seconds" not in metrics  # a timing, in timings/train.json: metrics compare across runs
    scores = (ws / "data/scores.jsonl").read_text()
    return metrics, scores


def test_killed_train_resumes_to_the_same_result(tmp_path):
    params = {"folds": 2, "epochs": 4, "patience": 4, "batch_size": 8, "hidden": 16}
    whole = workspace(tmp_path, "whole", params)
    assert run_train(whole).returncode == 0

    killed = workspace(tmp_path, "killed", params)
    # Fold 0 fits on 3 problems x 12 samples / batches of 8 = 5 steps an epoch: step 8 is in
    # the middle of epoch 2.
    first = run_train(killed, FRACTAL_FAULT_KILL_AT_STEP="8")
    assert first.returncode == -9, first.stderr[-2000:]
    assert not (killed / "metrics/train.json").exists() and not (killed / "models/critic").exists()
    second = run_train(killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "fold 0: resuming after epoch 1" in second.stdout
    assert result(killed) == result(whole)


def test_killed_lbfgs_train_resumes_to_the_same_result(tmp_path):
    params = {"folds": 2, "hidden": 16, "head_fit": "lbfgs"}
    whole = workspace(tmp_path, "whole", params)
    done = run_train(whole)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = workspace(tmp_path, "killed", params)
    # head_fit lbfgs: the head is fitted full-batch (critic/train.py fit_head); a kill a few loss evaluations
    # into fold 1 leaves fold 0 fitted, and the rerun keeps it and fits fold 1 afresh.
    fold0 = int(re.search(r"fold 0: fitted in (\d+) L-BFGS evaluations", done.stdout).group(1))
    first = run_train(killed, FRACTAL_FAULT_KILL_AT_STEP=str(fold0 + 3))
    assert first.returncode == -9, first.stderr[-2000:]
    assert not (killed / "metrics/train.json").exists() and not (killed / "models/critic").exists()
    second = run_train(killed)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "fold 0: fitted already" in second.stdout and "fold 1: fitted in" in second.stdout
    assert result(killed) == result(whole)


# --- A trained critic loaded from its exported directory scores like the train stage ---

@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    # Work dirs are siblings so every head critic shares one embedding cache (work_dir.parent).
    return tmp_path_factory.mktemp("critic-runs")


def train_and_export(runs_dir: Path, name: str, params: TrainParams, n_problems: int = 6):
    problems, generations, labels = toy_data(n_problems, 6)
    run = fit_and_score(problems, generations, labels, params, runs_dir / name)
    export(run, runs_dir / name, runs_dir / f"{name}-critic")
    return problems, generations, run, runs_dir / f"{name}-critic"


def assert_same_scores(got, want, tol=1e-6):
    assert [(s.problem_id, s.sample, s.fold) for s in got] == [(s.problem_id, s.sample, s.fold) for s in want]
    assert max(abs(a.score - b.score) for a, b in zip(got, want)) <= tol


@pytest.mark.parametrize("features,folds", [(["embedding"], 2), (["centered"], 3), (["consensus"], 2),
                                            (["embedding", "centered", "consensus"], 2)])
def test_loaded_head_critic_gives_the_train_stage_scores(runs_dir, features, folds):
    params = TrainParams(folds=folds, epochs=3, patience=3, batch_size=16, lr=3e-3, hidden=8, features=features)
    problems, generations, run, critic_dir = train_and_export(runs_dir, f"head-{'-'.join(features)}", params)
    critic = load_critic(critic_dir, device="cpu")
    assert critic.config["features"] == features
    got = critic.score(problems, generations, cache_dir=runs_dir / "embeddings")
    assert len(got) == len(generations) and {s.fold for s in got} == set(range(folds))
    assert_same_scores(got, run.scores)
    # Shuffled input order, same answer: scores follow (problem_id, sample), not the input order.
    shuffled = random.Random(1).sample(generations, len(generations))
    assert_same_scores(critic.score(problems, shuffled, cache_dir=runs_dir / "embeddings"), run.scores)


def test_loaded_head_critic_embeds_afresh_without_a_cache(runs_dir):
    params = TrainParams(folds=2, epochs=3, patience=3, batch_size=16, lr=3e-3, hidden=8,
                         features=["embedding", "consensus"])
    problems, generations, run, critic_dir = train_and_export(runs_dir, "head-nocache", params)
    assert_same_scores(load_critic(critic_dir, device="cpu").score(problems, generations), run.scores)


def test_loaded_head_critic_loads_its_encoder_and_heads_once(runs_dir, monkeypatch):
    """What the registered critic's predict relies on: after load_models, scoring a few
    candidates at a time loads no model again and gives the same scores as all at once."""
    import fractal.critic.embed as embed_module

    params = TrainParams(folds=2, epochs=3, patience=3, batch_size=16, lr=3e-3, hidden=8, features=["consensus"])
    problems, generations, run, critic_dir = train_and_export(runs_dir, "head-once", params)
    critic = load_critic(critic_dir, device="cpu")
    critic.load_models()

    def no_second_load(*args, **kwargs):
        raise AssertionError("the encoder was loaded again")

    monkeypatch.setattr(embed_module, "load_encoder", no_second_load)
    monkeypatch.setattr(embed_module, "load_tokenizer", no_second_load)
    monkeypatch.setattr("fractal.critic.scorer.torch.load", no_second_load)
    got = []
    for p in problems:  # one problem per call, as a user scoring new candidates would
        got += critic.score(problems, [g for g in generations if g.problem_id == p.problem_id])
    assert_same_scores(sorted(got, key=lambda s: (s.problem_id, s.sample)), run.scores)


def test_loaded_full_critic_gives_the_train_stage_scores(runs_dir):
    from tiny_model import build_tiny_model

    backbone = build_tiny_model(runs_dir / "tiny-model")
    params = TrainParams(backbone=str(backbone), method="full", folds=2, epochs=2, patience=2, batch_size=8,
                         max_length=64, prompt_tokens=16)
    problems, generations, run, critic_dir = train_and_export(runs_dir, "full", params)
    got = load_critic(critic_dir, device="cpu").score(problems, generations)
    assert_same_scores(got, run.scores)



def test_loaded_lora_critic_gives_the_train_stage_scores(runs_dir):
    pytest.importorskip("peft", reason="train.method=lora needs peft, in the gpu extra (pip install 'fractal[gpu]')")
    from tiny_model import build_tiny_model

    backbone = build_tiny_model(runs_dir / "tiny-model-lora")
    params = TrainParams(backbone=str(backbone), method="lora", lora_r=4, folds=2, epochs=2, patience=2, batch_size=8,
                         lr=1e-2, max_length=64, prompt_tokens=16)
    problems, generations, run, critic_dir = train_and_export(runs_dir, "lora", params)
    got = load_critic(critic_dir, device="cpu").score(problems, generations)
    assert_same_scores(got, run.scores)


def test_new_problems_get_the_mean_of_all_folds(runs_dir):
    params = TrainParams(folds=2, epochs=3, patience=3, batch_size=16, lr=3e-3, hidden=8, features=["consensus"])
    _, _, run, critic_dir = train_and_export(runs_dir, "head-new", params, n_problems=6)
    problems, generations, _ = toy_data(8, 6)  # toy/6 and toy/7 are new; toy/0..5 as trained
    cache = runs_dir / "embeddings"
    got = load_critic(critic_dir, device="cpu").score(problems, generations, cache_dir=cache)
    old = [s for s in got if s.problem_id not in ("toy/6", "toy/7")]
    assert_same_scores(old, run.scores)
    new = [s for s in got if s.problem_id in ("toy/6", "toy/7")]
    assert len(new) == 12 and all(s.fold == NEW_PROBLEM_FOLD for s in new)

    # Each fold's own score of the new problems: a copy of the critic that says fold k scored them.
    per_fold = []
    for k in range(2):
        copy = runs_dir / f"head-new-as-fold-{k}"
        shutil.copytree(critic_dir, copy)
        config = json.loads((copy / "critic.json").read_text())
        config["folds"][k]["scored"] += ["toy/6", "toy/7"]
        (copy / "critic.json").write_text(json.dumps(config))
        as_k = [s for s in load_critic(copy, device="cpu").score(problems, generations, cache_dir=cache)
                if s.problem_id in ("toy/6", "toy/7")]
        assert all(s.fold == k for s in as_k)
        per_fold.append(np.array([s.score for s in as_k]))
    assert not np.allclose(per_fold[0], per_fold[1])  # two different critics, so the mean means something
    # Scores are float32 from batches of different make-up (a fold scores the new problems with its
    # own, the mean's run with all of them), so sums can differ in the last place: 6e-8 at 0.5.
    np.testing.assert_allclose([s.score for s in new], (per_fold[0] + per_fold[1]) / 2, rtol=0, atol=1e-6)


def test_load_critic_names_the_missing_file(runs_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"critic\.json: missing.*dvc pull models/critic"):
        load_critic(tmp_path)
    params = TrainParams(folds=2, epochs=1, patience=1, batch_size=16, hidden=0, features=["consensus"])
    _, _, _, critic_dir = train_and_export(runs_dir, "head-missing", params)
    (critic_dir / "fold-1" / "best.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"fold-1/best\.pt: missing.*dvc repro train"):
        load_critic(critic_dir)


def test_critic_json_without_the_later_keys_still_loads(runs_dir):
    # critic.json exported before dropout, lora_r, the batch sizes and precision were recorded.
    params = TrainParams(folds=2, epochs=3, patience=3, batch_size=16, lr=3e-3, hidden=8, features=["consensus"])
    problems, generations, run, critic_dir = train_and_export(runs_dir, "head-older", params)
    config = json.loads((critic_dir / "critic.json").read_text())
    for key in ("dropout", "lora_r", "batch_size", "embed_batch_size", "precision"):
        del config[key]
    (critic_dir / "critic.json").write_text(json.dumps(config))
    got = load_critic(critic_dir, device="cpu").score(problems, generations, cache_dir=runs_dir / "embeddings")
    assert_same_scores(got, run.scores)


# --- critic.json: the typed config both training and scoring read ---

# critic.json as the train stage writes it: since dropout, lora_r, the batch sizes and the
# precision were recorded, and since the embeddings' layout was (models registered in MLflow
# hold such files).
TODAY = {"backbone": "minilm", "method": "head", "features": ["consensus", "execution"], "max_length": 384,
         "prompt_tokens": 128, "hidden": 16, "dropout": 0.1, "lora_r": 16, "batch_size": 64, "embed_batch_size": 32,
         "precision": "fp32", "embedding_layout": "prompt+code",
         "folds": [{"index": 0, "fit": ["HumanEval/1", "HumanEval/2"], "validation": ["HumanEval/3"],
                    "scored": ["HumanEval/4"]},
                   {"index": 1, "fit": ["HumanEval/3", "HumanEval/4"], "validation": ["HumanEval/1"],
                    "scored": ["HumanEval/2"]}],
         "best_epochs": {"0": 7, "1": 12}}
# The first exported format: no dropout, lora_r, batch sizes or precision.
FIRST = {k: v for k, v in TODAY.items()
         if k not in ("dropout", "lora_r", "batch_size", "embed_batch_size", "precision", "embedding_layout")}


def test_critic_json_of_today_reads_typed_and_writes_back_byte_identical(tmp_path):
    old = tmp_path / "old" / "critic.json"
    old.parent.mkdir()
    old.write_text(json.dumps(TODAY, indent=2) + "\n")  # what crossfit.export wrote before the config was typed
    config = CriticConfig.read(old)
    assert (config.backbone, config.method, config.features, config.hidden, config.precision) == \
        ("minilm", "head", ["consensus", "execution"], 16, "fp32")
    assert config.folds[1] == Fold(1, ["HumanEval/3", "HumanEval/4"], ["HumanEval/1"], ["HumanEval/2"])
    assert config.best_epochs == {0: 7, 1: 12}
    assert config["folds"] == TODAY["folds"] and config["max_length"] == 384  # indexed like the dict it was
    config.write(tmp_path / "new" / "critic.json")
    # The same bytes, so models/critic keeps its DVC hash.
    assert (tmp_path / "new" / "critic.json").read_bytes() == old.read_bytes()


def test_critic_json_of_the_first_format_reads_with_the_defaults_of_then(tmp_path):
    path = tmp_path / "critic.json"
    path.write_text(json.dumps(FIRST, indent=2) + "\n")
    config = CriticConfig.read(path)
    assert (config.dropout, config.lora_r, config.batch_size, config.embed_batch_size, config.precision) == \
        (0.1, 16, 64, 32, "auto")
    assert config.folds[0].scored == ["HumanEval/4"] and config.best_epochs == {0: 7, 1: 12}


@pytest.mark.parametrize("change,message", [
    ({"hidden": None}, r"critic\.json: `hidden` is missing, and the scorer needs it"),
    ({"max_length": "384"}, r"critic\.json: `max_length` is '384', not a whole number"),
    ({"method": "svm"}, r"critic\.json: `method` is 'svm', not one of head, full, lora"),
    ({"precision": "int8"}, r"critic\.json: `precision` is 'int8', not one of auto, fp32, bf16, fp16"),
    ({"folds": []}, r"critic\.json: `folds` lists no folds"),
    ({"folds": [{"index": 0, "fit": []}]}, r"critic\.json: `folds` item 0 is not a fold"),
    ({"best_epochs": {"zero": 7}}, r"critic\.json: `best_epochs` is .*not fold indices mapped to epochs"),
])
def test_a_wrong_critic_json_names_the_file_and_the_key(tmp_path, change, message):
    stored = {k: v for k, v in {**TODAY, **change}.items() if v is not None}
    path = tmp_path / "critic.json"
    path.write_text(json.dumps(stored))
    with pytest.raises(CriticConfigError, match=message + r".*dvc pull models/critic"):
        CriticConfig.read(path)


def test_a_head_critic_trained_on_the_joint_embeddings_is_refused(runs_dir):
    # critic.json from before the layout was recorded: its head read joint (prompt, code)
    # vectors, which this fractal no longer makes; scoring it would be silently wrong.
    params = TrainParams(folds=2, epochs=1, patience=1, batch_size=16, hidden=0, features=["consensus"])
    _, _, _, critic_dir = train_and_export(runs_dir, "head-joint", params)
    config = json.loads((critic_dir / "critic.json").read_text())
    assert config["embedding_layout"] == "prompt+code"
    del config["embedding_layout"]
    (critic_dir / "critic.json").write_text(json.dumps(config))
    assert CriticConfig.read(critic_dir / "critic.json").embedding_layout == "joint"
    with pytest.raises(CriticConfigError, match=r"critic\.json: trained on embeddings of layout 'joint'.*"
                                                r"'prompt\+code'; retrain it \(`dvc repro train`\)"):
        load_critic(critic_dir)


def test_a_critic_json_that_is_not_json_or_absent_says_so(tmp_path):
    with pytest.raises(MissingInput, match=r"critic\.json: missing"):
        CriticConfig.read(tmp_path / "critic.json")
    (tmp_path / "critic.json").write_text('{"backbone": "minilm",\n')
    with pytest.raises(CriticConfigError, match=r"critic\.json:2: not valid JSON"):
        CriticConfig.read(tmp_path / "critic.json")


def test_a_fold_whose_validation_has_one_class_trains_without_an_auroc(tmp_path, capsys):
    # p/1, the validation problem, has only passing candidates: AUROC is undefined (None).
    index_of = {"p/0": list(range(0, 8)), "p/1": list(range(8, 16)), "p/2": list(range(16, 24))}
    labels = np.array([1.0, 0.0] * 4 + [1.0] * 8 + [0.0, 1.0] * 4)
    x = torch.tensor(np.random.default_rng(0).normal(size=(24, 4)), dtype=torch.float32)
    fold = Fold(0, fit=["p/0"], validation=["p/1"], scored=["p/2"])
    result = train_fold(fold, index_of, labels, lambda: Head(4, 0, 0.0, np.zeros(4), np.ones(4)),
                        Batches(make=lambda b: {"x": x[b]}), TrainParams(epochs=5, patience=1, batch_size=4),
                        tmp_path / "fold-0")
    # No AUROC ever improves on the first epoch's, so it stays the best and patience (1)
    # stops the run after one more epoch.
    assert [row["val_auroc"] for row in result.history] == [None, None]
    assert result.best_epoch == 1
    assert sorted(result.scores) == list(range(16, 24))
    assert "val AUROC n/a (one class)" in capsys.readouterr().out


def test_train_stage_runs_when_no_fold_has_a_validation_auroc(tmp_path):
    # Every problem's candidates all pass or all fail, so every fold's validation set has one class.
    ws = workspace(tmp_path, "one-class", {"folds": 2, "epochs": 2, "patience": 2, "batch_size": 8, "hidden": 4})
    labels = [{**json.loads(line), "passed": int(json.loads(line)["problem_id"][-1]) % 2 == 0}
              for line in (ws / "data/labels.jsonl").read_text().splitlines()]
    (ws / "data/labels.jsonl").write_text("".join(json.dumps(lab) + "\n" for lab in labels))
    done = run_train(ws)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((ws / "metrics/train.json").read_text())
    assert metrics["val_auroc"] is None and metrics["hybrid_val_auroc"] is None
    assert metrics["val_accuracy"] is not None  # accuracy is defined with one class
    assert "validation AUROC n/a" in done.stdout


@pytest.mark.parametrize("head_fit", ["epochs", "lbfgs"])
def test_two_runs_export_byte_identical_critics(runs_dir, head_fit):
    # models/critic is a DVC output: the same run must hash the same, so no wall-clock seconds
    # may reach the exported checkpoints (they stay in plots/train, which is not cached).
    params = TrainParams(folds=2, epochs=2, patience=2, batch_size=16, hidden=8, features=["consensus"],
                         head_fit=head_fit)
    _, _, _, first = train_and_export(runs_dir, f"twice-a-{head_fit}", params)
    _, _, _, second = train_and_export(runs_dir, f"twice-b-{head_fit}", params)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
