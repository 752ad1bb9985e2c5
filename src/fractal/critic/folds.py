"""Which problems each critic fits on, validates on and scores.

Everything is by problem: samples of one problem are never on two sides.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fractal.records import Problem


@dataclass
class Fold:
    index: int
    fit: list[str]  # problem ids the critic learns from
    validation: list[str]  # problem ids for early stopping
    scored: list[str]  # problem ids the critic scores (never seen in fit or validation)


def _order(seed: int, ids: list[str], salt: str) -> list[str]:
    return sorted(ids, key=lambda pid: hashlib.sha256(f"{seed}:{salt}:{pid}".encode()).hexdigest())


def _carve_validation(ids: list[str], fraction: float, seed: int, salt: str) -> tuple[list[str], list[str]]:
    ordered = _order(seed, ids, salt)
    n_val = max(1, round(len(ordered) * fraction)) if len(ordered) > 1 else 0
    return sorted(ordered[n_val:]), sorted(ordered[:n_val])


def make_folds(problems: list[Problem], folds: int, fit_splits: list[str], eval_splits: list[str],
               val_fraction: float, seed: int) -> list[Fold]:
    """Cross-fitting with folds > 0: K folds over all problems, each scored by the critic
    that was fitted on the other K-1. With folds == 0: one critic fitted on fit_splits and
    scoring eval_splits (the MBPP reference protocol)."""
    ids = [p.problem_id for p in problems if p.split != "prompt"]
    if folds > 0:
        if folds < 2 or folds > len(ids):
            raise ValueError(f"params.yaml: `train.folds` is {folds}; use 0 or 2..{len(ids)}")
        ordered = _order(seed, ids, "folds")
        out = []
        for k in range(folds):
            scored = sorted(ordered[k::folds])
            held_out = set(scored)
            rest = [pid for pid in ids if pid not in held_out]
            fit, val = _carve_validation(rest, val_fraction, seed, f"val{k}")
            out.append(Fold(k, fit, val, scored))
        return out
    fit_pool = [p.problem_id for p in problems if p.split in fit_splits]
    scored = sorted(p.problem_id for p in problems if p.split in eval_splits)
    if not fit_pool or not scored:
        raise ValueError(f"params.yaml: `train.fit_splits` {fit_splits} / `train.eval_splits` {eval_splits} "
                         f"select {len(fit_pool)} / {len(scored)} problems; both must be non-empty")
    fit, val = _carve_validation(fit_pool, val_fraction, seed, "val")
    return [Fold(0, fit, val, scored)]
