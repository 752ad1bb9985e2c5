"""Fitting the critic on labelled candidates and scoring held-out problems.

`fit_and_score` builds the critic's inputs once (cached embeddings for the head critic,
token ids for fine-tuning), then trains one critic per fold (critic/folds.py) with the
loop in critic/train.py; every scored candidate comes from a critic that never saw its
problem.

The inputs are built by `build_inputs` here and the models by critic/model.py, both from
the critic's config (critic/config.py, what critic.json records), so the scorer
(critic/scorer.py) rebuilds exactly what was trained.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from fractal.critic.config import CONFIG_FILE, METHODS, CriticConfig
from fractal.critic.embed import LAYOUT as EMBEDDING_LAYOUT, Encoder, embed
from fractal.critic.features import build_features
from fractal.critic.folds import make_folds
from fractal.critic.inputs import critic_input, encode, pad_batch
from fractal.critic.model import build_model, resolve_device
from fractal.critic.train import Batches, FoldResult, fit_head, train_fold
from fractal.params import ParamsError, TrainParams
from fractal.records import Generation, Label, Problem, Score, atomic_folder


@dataclass
class CriticRun:
    scores: list[Score]
    folds: list[FoldResult]
    config: CriticConfig  # what a scorer needs to rebuild the critic


def run_key(params: TrainParams, problems: list[Problem], generations: list[Generation], labels: list[Label],
            *arrays: np.ndarray | None) -> str:
    """Identifies a training run by its params and data (and the given feature arrays: the
    embeddings, the execution features), so a rerun finds its checkpoints and a changed
    input never resumes from another run's."""
    h = hashlib.sha256(json.dumps(asdict(params), sort_keys=True).encode())
    for rec in (*problems, *generations, *labels):
        h.update(json.dumps(asdict(rec), sort_keys=True).encode())
    for a in arrays:
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


@dataclass
class Inputs:
    """The critic's inputs for a list of candidates, one row (or token sequence) each."""
    batches: Batches
    features: torch.Tensor | None = None  # head: the feature matrix
    pad_token_id: int | None = None  # full / lora


def build_inputs(config: CriticConfig, problem_of: dict[str, Problem], generations: list[Generation],
                 cache_dir: str | Path | None, embeddings: np.ndarray | None = None,
                 execution: np.ndarray | None = None, encoder: Encoder | None = None) -> Inputs:
    """Head: frozen embeddings (given, one row per generation, as the embed stage wrote them,
    or computed with the cache in `cache_dir`, None for none) turned into features, with the
    `execution` features where config.features asks for them; full / lora: token ids,
    batched by length. Features of a candidate depend on every candidate of its problem in
    `generations` (critic/features.py). `encoder`: the backbone's tokenizer and encoder,
    already loaded (a scorer keeps one across calls)."""
    if config.method not in METHODS:
        raise ParamsError(f"params.yaml: `train.method` is {config.method!r}; choose {', '.join(METHODS)}")
    items = [critic_input(problem_of[g.problem_id], g) for g in generations]
    encoder = encoder or Encoder(config.backbone, config.max_length, config.prompt_tokens)
    tokenizer = encoder.tokenizer
    if config.method == "head":
        n_tokens = [len(t) for t in tokenizer([it.code for it in items], add_special_tokens=False)["input_ids"]]
        emb = embeddings if embeddings is not None else embed(
            items, config.backbone, config.max_length, config.prompt_tokens, config.embed_batch_size, cache_dir, encoder)
        x = torch.tensor(build_features(emb, [g.problem_id for g in generations], [it.code for it in items],
                                        n_tokens, config.features, execution))
        return Inputs(Batches(make=lambda b: {"x": x[b]}), features=x)

    ids = [encode(tokenizer, it, config.max_length, config.prompt_tokens) for it in items]
    lengths = np.array([len(t) for t in ids])
    pad = tokenizer.pad_token_id
    return Inputs(Batches(make=lambda b: pad_batch([ids[i] for i in b], pad), lengths=lengths), pad_token_id=pad)


def fit_and_score(problems: list[Problem], generations: list[Generation], labels: list[Label],
                  params: TrainParams, work_dir: str | Path, embeddings: np.ndarray | None = None,
                  execution: np.ndarray | None = None) -> CriticRun:
    """Cross-fits the critic `params` describe. `embeddings` (the embed stage's, one row per
    generation) spare the encoder; `execution` (ranking.rankers.execution_features, one row
    per generation) feeds the hybrid critic. Labels are read only as training targets."""
    torch.manual_seed(params.seed)
    work_dir = Path(work_dir)
    problem_of = {p.problem_id: p for p in problems}
    passed = {(lab.problem_id, lab.sample): lab.passed for lab in labels}
    missing = [g for g in generations if (g.problem_id, g.sample) not in passed]
    if missing:
        raise ValueError(f"data/labels.jsonl has no label for {missing[0].problem_id} sample {missing[0].sample}; "
                         f"rerun the label stage")
    y = np.array([float(passed[g.problem_id, g.sample]) for g in generations])
    index_of: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(generations):
        index_of[g.problem_id].append(i)
    folds = make_folds([problem_of[pid] for pid in index_of], params.folds, params.fit_splits,
                       params.eval_splits, params.val_fraction, params.seed)
    device, precision, autocast = resolve_device(params.precision)
    config = CriticConfig.from_params(params, precision, folds, EMBEDDING_LAYOUT)
    # A head is a tiny MLP: threads only add synchronisation (ruinous on a loaded machine).
    torch.set_num_threads(1 if config.method == "head" else max(torch.get_num_threads(), 1))
    inputs = build_inputs(config, problem_of, generations, work_dir.parent / "embeddings", embeddings, execution)

    results = []
    for fold in folds:
        fit = [i for pid in fold.fit for i in index_of[pid]]
        if config["method"] == "head" and params.head_fit == "lbfgs":  # few features: one batch (critic/train.py)
            results.append(fit_head(fold, index_of, y, partial(build_model, config, inputs, fit), inputs.features,
                                    inputs.batches, params, work_dir / f"fold-{fold.index}"))
            continue
        results.append(train_fold(fold, index_of, y, partial(build_model, config, inputs, fit), inputs.batches,
                                  params, work_dir / f"fold-{fold.index}", device, autocast))
    scores = [Score(problem_id=generations[i].problem_id, sample=generations[i].sample, score=s, fold=r.fold)
              for r in results for i, s in sorted(r.scores.items())]
    scores.sort(key=lambda s: (s.problem_id, s.sample))
    return CriticRun(scores, results, config)


def _timeless(metrics: dict) -> dict:
    """An epoch's metrics without its wall-clock seconds, which differ on every run: the
    exported checkpoints, and so models/'s DVC hashes, are then the same for the same run."""
    return {k: v for k, v in metrics.items() if k != "seconds"}


def export(run: CriticRun, work_dir: str | Path, out_dir: str | Path) -> None:
    """Writes the DVC-tracked critic: per fold, each epoch's weights and the best, plus
    critic.json. Written beside out_dir and swapped in (records.atomic_folder), so a kill
    leaves the old folder or the new one, never none or half."""
    import shutil

    work_dir = Path(work_dir)
    with atomic_folder(out_dir) as tmp:
        for r in run.folds:
            src, dst = work_dir / f"fold-{r.fold}", tmp / f"fold-{r.fold}"
            dst.mkdir()
            for ckpt in sorted(src.glob("epoch-*.pt")):
                state = torch.load(ckpt, map_location="cpu", weights_only=False)
                torch.save({"model": state["model"], "epoch": state["epoch"], "metrics": _timeless(state["history"][-1])},
                           dst / ckpt.name)
            best = torch.load(src / "best.pt", map_location="cpu", weights_only=False)
            best["metrics"] = _timeless(best["metrics"])
            if "history" in best:  # the L-BFGS fit keeps its one-row history there
                best["history"] = [_timeless(h) for h in best["history"]]
            torch.save(best, dst / "best.pt")
        config = replace(run.config, best_epochs={r.fold: r.best_epoch for r in run.folds})
        config.write(tmp / CONFIG_FILE)
