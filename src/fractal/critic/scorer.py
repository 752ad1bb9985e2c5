"""Scoring candidates with a trained critic loaded from its directory (models/critic, or
the copy MLflow registers: critic.json and each fold's best.pt are all it needs).

The inputs and models are rebuilt from critic.json (critic/config.py) with the functions
the train stage used (crossfit.build_inputs, model.build_model, train.predict), so on the
same problems and generations the scores equal data/scores.jsonl:
- a problem that a fold scored in cross-fitting is scored by that fold's best model
  (Score.fold is that fold), so the score still comes from a critic that never saw it;
- a problem no fold scored (a new problem, or one the folds=0 protocol fitted on) gets the
  mean of every fold's best model's probability, with Score.fold = NEW_PROBLEM_FOLD (-1).

Head critics judge a candidate against its siblings (critic/features.py), so pass every
candidate of a problem: a subset gets other features, hence other scores.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from fractal.critic.config import CONFIG_FILE, HOW_TO_GET, CriticConfig, CriticConfigError
from fractal.critic.crossfit import Inputs, build_inputs
from fractal.critic.embed import LAYOUT as EMBEDDING_LAYOUT, Encoder
from fractal.critic.model import build_head, build_model, resolve_device
from fractal.critic.train import predict
from fractal.records import Generation, Problem, Score

NEW_PROBLEM_FOLD = -1  # Score.fold of a score averaged over all folds' critics


class Critic:
    """A trained critic: one model per cross-fitting fold.

    The encoder (and tokenizer) and a head critic's fold models are loaded once, on first
    use or by `load_models`, and kept: scoring a few candidates at a time (the registered
    model's predict) then costs their embeddings, not a model load per call. A fine-tuned
    critic's folds are whole backbones, so they are loaded a fold at a time per call and
    not kept (memory stays one backbone)."""

    def __init__(self, directory: Path, config: CriticConfig, device: str | None):
        self.directory = directory
        self.config = config  # critic.json
        self.device, self.precision, self._autocast = resolve_device(config.precision, device)
        self.encoder = Encoder(config.backbone, config.max_length, config.prompt_tokens)
        self._heads: dict[int, torch.nn.Module] = {}  # fold index -> its best head, once loaded

    def load_models(self) -> None:
        """Loads now what scoring keeps (the tokenizer; for a head critic the encoder and
        every fold's head), so the first score is as fast as the next."""
        self.encoder.tokenizer
        if self.config.method == "head":
            self.encoder.model
            for fold in self.config.folds:
                self._head(fold.index)

    def score(self, problems: list[Problem], generations: list[Generation],
              cache_dir: str | Path | None = None) -> list[Score]:
        """One Score per generation, sorted by (problem_id, sample) like the train stage's.

        `cache_dir`: the embedding cache of the head critic (the train stage's is
        .fractal/train/embeddings; passing it reuses what training embedded). None embeds
        in memory and keeps nothing.
        """
        problem_of = {p.problem_id: p for p in problems}
        unknown = next((g for g in generations if g.problem_id not in problem_of), None)
        if unknown is not None:
            raise ValueError(f"{unknown.problem_id} sample {unknown.sample}: its problem is not among the problems "
                             f"given to Critic.score; pass the problems the generations were made for")
        if not generations:
            return []
        index_of: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(generations):
            index_of[g.problem_id].append(i)
        fold_of = {pid: f.index for f in self.config.folds for pid in f.scored}
        new = [i for pid, idx in index_of.items() if pid not in fold_of for i in idx]

        probability: dict[int, float] = {}
        fold_given: dict[int, int] = {}
        total_new = np.zeros(len(new))
        inputs = build_inputs(self.config, problem_of, generations, cache_dir, encoder=self.encoder)
        batch_size = self.config.batch_size
        for fold in tqdm(self.config.folds, desc="score", unit="fold", leave=False):
            # The same candidates in the same order as train_fold scored: the same batches.
            scored = [i for pid in fold.scored for i in index_of.get(pid, [])]
            if not scored and not new:
                continue
            model = self._fold_model(fold.index, inputs)
            if scored:
                p = predict(model, inputs.batches, scored, batch_size, self.device, self._autocast)
                probability.update(zip(scored, p.tolist()))
                fold_given.update((i, fold.index) for i in scored)
            if new:
                total_new += predict(model, inputs.batches, new, batch_size, self.device, self._autocast)
            del model
        mean_new = total_new / len(self.config.folds)
        probability.update(zip(new, mean_new.tolist()))
        fold_given.update((i, NEW_PROBLEM_FOLD) for i in new)

        scores = [Score(problem_id=g.problem_id, sample=g.sample, score=probability[i], fold=fold_given[i])
                  for i, g in enumerate(generations)]
        scores.sort(key=lambda s: (s.problem_id, s.sample))
        return scores

    def _fold_model(self, index: int, inputs: Inputs) -> torch.nn.Module:
        if self.config.method == "head":
            return self._head(index)
        return self._load_fold(index, lambda state: build_model(self.config, inputs))

    def _head(self, index: int) -> torch.nn.Module:
        if index not in self._heads:  # as wide as its checkpoint's standardisation buffers
            self._heads[index] = self._load_fold(index, lambda state: build_head(self.config, len(state["mean"])))
        return self._heads[index]

    def _load_fold(self, index: int, build: Callable[[dict], torch.nn.Module]) -> torch.nn.Module:
        path = self.directory / f"fold-{index}" / "best.pt"
        state = torch.load(path, map_location=self.device, weights_only=True)
        try:
            model = build(state["model"]).to(self.device)
            model.load_state_dict(state["model"])
        except (RuntimeError, KeyError) as e:
            raise ValueError(f"{path}: its weights do not fit the critic {self.directory / CONFIG_FILE} describes "
                             f"({str(e)[:300]}); the directory mixes two trainings, {HOW_TO_GET}") from None
        model.eval()
        return model


def load_critic(directory: str | Path, device: str | None = None) -> Critic:
    """The critic exported by the train stage (crossfit.export) to `directory`: its
    critic.json (CriticConfig.read) and every fold's best weights. `device`: where to score
    (default: the GPU when there is one, else the CPU)."""
    directory = Path(directory)
    config = CriticConfig.read(directory / CONFIG_FILE)
    if config.method == "head" and config.embedding_layout != EMBEDDING_LAYOUT:
        # Its weights read vectors this fractal no longer makes: scoring would be silently wrong.
        raise CriticConfigError(f"{directory / CONFIG_FILE}: trained on embeddings of layout "
                                f"{config.embedding_layout!r}, and this fractal embeds {EMBEDDING_LAYOUT!r}; "
                                "retrain it (`dvc repro train`), or score it with the fractal version that trained it")
    for fold in config.folds:
        best = directory / f"fold-{fold.index}" / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(f"{best}: missing ({CONFIG_FILE} lists fold {fold.index}); {HOW_TO_GET}")
    return Critic(directory, config, device)
