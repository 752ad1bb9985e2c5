"""Training the critic, one fold at a time, by one of two fitters:
- `train_fold`, minibatch epochs with early stopping on the validation problems: the head
  (default, CPU: a small MLP on features of frozen, cached encoder embeddings,
  critic/features.py) and the fine-tuned backbone (full / lora, GPU, a one-logit head);
- `fit_head` (train.head_fit: lbfgs), the head fitted full-batch by L-BFGS: the features
  are few and the rows ~10k, so the whole fit set is one batch and a fold fits in a second.
  Deterministic and fast, for quick experiments; on the default profile it scored about one
  point of top-1 below the epoch loop (over three fold seeds), whose early stopping and
  dropout regularise more.

The models themselves are built in critic/model.py; the fitters get a function that builds one.

`train_fold` keeps a checkpoint per epoch (model, optimizer, history) in `run_dir`; a
killed run resumes from the last complete epoch and, because every epoch's randomness is
seeded from (seed, fold, epoch), ends exactly where an uninterrupted run would have.
`fit_head` keeps each fitted fold; a killed run fits the rest again, deterministically.
"""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fractal.critic.folds import Fold
from fractal.params import TrainParams
from fractal.ranking import auroc  # None when the validation problems have one class only
from fractal.records import atomic_path


@dataclass
class Batches:
    """Turns a list of candidate indices into model inputs."""
    make: Callable[[list[int]], dict]
    lengths: np.ndarray | None = None  # token lengths: batch by length when given


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    scores: dict[int, float] = field(default_factory=dict)  # candidate index -> probability


def _epoch_batches(indices: list[int], batch_size: int, rng: np.random.Generator,
                   lengths: np.ndarray | None) -> list[list[int]]:
    idx = np.array(indices)
    rng.shuffle(idx)
    if lengths is not None:
        # Sort within chunks of 50 batches by length: little padding, still shuffled.
        chunk = batch_size * 50
        idx = np.concatenate([sorted(idx[i:i + chunk], key=lambda j: lengths[j]) for i in range(0, len(idx), chunk)])
    batches = [idx[i:i + batch_size].tolist() for i in range(0, len(idx), batch_size)]
    rng.shuffle(batches)
    return batches


def predict(model: nn.Module, batches: Batches, indices: list[int], batch_size: int,
             device: str, autocast: torch.dtype | None) -> np.ndarray:
    """The critic's probabilities (sigmoid of its logits) for the candidates `indices`, in
    their order; batched by length when the batches know the lengths."""
    model.eval()
    out = np.zeros(len(indices), dtype=np.float64)
    order = np.argsort(batches.lengths[indices]) if batches.lengths is not None else np.arange(len(indices))
    with torch.inference_mode():
        for s in range(0, len(indices), batch_size):
            pos = order[s:s + batch_size]
            inputs = {k: v.to(device) for k, v in batches.make([indices[p] for p in pos]).items()}
            with torch.autocast(device_type=device.split(":")[0], dtype=autocast, enabled=autocast is not None):
                logits = model(**inputs)
            out[pos] = torch.sigmoid(logits.float()).cpu().numpy()
    return out


def _shown(value: float | None) -> str:
    # auroc is None when the validation problems' candidates all pass or all fail.
    return "n/a (one class)" if value is None else f"{value:.4f}"


def _fault_injection_step() -> int:
    # For the resume test: FRACTAL_FAULT_KILL_AT_STEP=N sends SIGKILL to this process at
    # global optimizer step N, the way an OOM killer or a lost machine would.
    return int(os.environ.get("FRACTAL_FAULT_KILL_AT_STEP", "0"))


# What a head checkpoint says fitted it: a checkpoint of an older fitter in the same run
# directory (same params and data, so the same run key) is not taken for a fitted fold.
HEAD_FITTER = "lbfgs-full-batch"
HEAD_MAX_ITERATIONS = 1000  # a cap only: folds of the default profile converge in 80-300
_head_evaluations = 0  # loss evaluations of fit_head in this process, for the fault injection


def fit_head(fold: Fold, index_of: dict[str, list[int]], labels: np.ndarray, build_model: Callable[[], nn.Module],
             features: torch.Tensor, batches: Batches, params: TrainParams, run_dir: Path) -> FoldResult:
    """Fits one fold's head critic full-batch and scores the fold's problems.

    The objective is the (class-balanced, as `balance` says) log loss over every fit
    candidate at once plus an L2 penalty of weight_decay / 2 on the weights, minimised by
    L-BFGS with a strong-Wolfe line search to its tolerances. What this buys: a fit that is
    deterministic and about a second for all folds on one core, with no learning rate,
    batch size, epoch budget or early stopping to choose (lr, batch_size, epochs and
    patience are the fine-tuning loop's). Where it stops: dropout is not applied (a noisy
    objective defeats the line search; weight_decay regularises instead), the fit set must
    fit in memory as one tensor, and the validation problems only report (one history row:
    the fitted head's training and validation metrics), they choose nothing."""
    global _head_evaluations
    fit = [i for pid in fold.fit for i in index_of[pid]]
    val = [i for pid in fold.validation for i in index_of[pid]]
    scored = [i for pid in fold.scored for i in index_of[pid]]
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "best.pt"
    # Seeded here, before the model's initial weights are drawn: a fold fits the same
    # whether or not the folds before it were fitted in this process.
    torch.manual_seed(params.seed * 1_000_003 + fold.index * 1009)
    model = build_model().to("cpu")
    state = torch.load(done, map_location="cpu", weights_only=False) if done.exists() else None
    if state is not None and state.get("fitter") == HEAD_FITTER:
        model.load_state_dict(state["model"])
        history = state["history"]
        print(f"train: fold {fold.index}: fitted already ({done})")
    else:
        for stale in run_dir.glob("*.pt"):  # an older fitter's epochs: not this fit's history
            stale.unlink()
        model.train(False)  # no dropout: the objective must be deterministic for the line search
        x, y = features[fit], torch.tensor(labels[fit], dtype=torch.float32)
        n_pos = float(y.sum())
        pos_weight = (len(fit) - n_pos) / max(n_pos, 1.0) if params.balance else 1.0
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight))
        weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]  # not the biases
        opt = torch.optim.LBFGS([p for p in model.parameters() if p.requires_grad], lr=1.0,
                                max_iter=HEAD_MAX_ITERATIONS, history_size=20, line_search_fn="strong_wolfe")
        kill_at, evaluations, t0 = _fault_injection_step(), 0, time.time()

        def closure() -> torch.Tensor:
            nonlocal evaluations
            global _head_evaluations
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            penalty = params.weight_decay / 2 * sum((w ** 2).sum() for w in weights)
            (loss + penalty).backward()
            evaluations += 1
            _head_evaluations += 1
            if kill_at and _head_evaluations == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return loss + penalty

        opt.step(closure)
        with torch.no_grad():
            train_loss = float(loss_fn(model(x), y))
        p_val = _probabilities(model, features[val])
        y_val = labels[val]
        eps = 1e-7
        history = [{"fold": fold.index, "epoch": 1, "train_loss": train_loss,
                    "val_loss": float(-np.mean(y_val * np.log(p_val + eps) + (1 - y_val) * np.log(1 - p_val + eps))),
                    "val_auroc": auroc(p_val, y_val), "val_accuracy": float(np.mean((p_val > 0.5) == y_val)),
                    "evaluations": evaluations, "seconds": round(time.time() - t0, 2)}]
        row = history[0]
        with atomic_path(run_dir / "epoch-000.pt") as tmp:
            torch.save({"model": model.state_dict(), "epoch": 0, "history": history, "fitter": HEAD_FITTER}, tmp)
        with atomic_path(done) as tmp:  # last: its presence says the fold is fitted
            torch.save({"model": model.state_dict(), "epoch": 0, "metrics": row, "history": history,
                        "fitter": HEAD_FITTER}, tmp)
        print(f"train: fold {fold.index}: fitted in {evaluations} L-BFGS evaluations: loss {train_loss:.4f} "
              f"val loss {row['val_loss']:.4f} val AUROC {_fmt(row['val_auroc'])} acc {row['val_accuracy']:.3f}")
    # Scored in the batches the scorer (critic/scorer.py) uses, so its scores equal these.
    p_scored = predict(model, batches, scored, params.batch_size, "cpu", None)
    return FoldResult(fold.index, 1, history, dict(zip(scored, p_scored.tolist())))


def _probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.train(False)
    with torch.inference_mode():
        return torch.sigmoid(model(x)).double().numpy()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def train_fold(fold: Fold, index_of: dict[str, list[int]], labels: np.ndarray, build_model: Callable[[], nn.Module],
               batches: Batches, params: TrainParams, run_dir: Path, device: str = "cpu",
               autocast: torch.dtype | None = None) -> FoldResult:
    """Fits one fold's critic with early stopping on validation AUROC; returns its history
    and the best epoch's scores for the fold's scored problems."""
    fit = [i for pid in fold.fit for i in index_of[pid]]
    val = [i for pid in fold.validation for i in index_of[pid]]
    scored = [i for pid in fold.scored for i in index_of[pid]]
    run_dir.mkdir(parents=True, exist_ok=True)

    model = build_model().to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=params.weight_decay)
    y = torch.tensor(labels, dtype=torch.float32)
    n_pos = float(labels[fit].sum())
    pos_weight = (len(fit) - n_pos) / max(n_pos, 1.0) if params.balance else 1.0
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos_weight, device=device))

    history: list[dict] = []
    best_auroc, best_epoch, start = -math.inf, -1, 0
    last = sorted(run_dir.glob("epoch-*.pt"))
    if last:
        state = torch.load(last[-1], map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        history, best_auroc, best_epoch = state["history"], state["best_auroc"], state["best_epoch"]
        start = state["epoch"] + 1
        print(f"train: fold {fold.index}: resuming after epoch {state['epoch'] + 1} ({last[-1]})")

    kill_at = _fault_injection_step()
    steps_per_epoch = math.ceil(len(fit) / params.batch_size)
    for epoch in range(start, params.epochs):
        if epoch - best_epoch > params.patience:
            break
        seed = params.seed * 1_000_003 + fold.index * 1009 + epoch
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model.train()
        total, t0 = 0.0, time.time()
        bar = tqdm(_epoch_batches(fit, params.batch_size, rng, batches.lengths), leave=False,
                   desc=f"fold {fold.index} epoch {epoch + 1}", unit="batch")
        for step, b in enumerate(bar):
            inputs = {k: v.to(device) for k, v in batches.make(b).items()}
            with torch.autocast(device_type=device.split(":")[0], dtype=autocast, enabled=autocast is not None):
                logits = model(**inputs)
            loss = loss_fn(logits.float(), y[b].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            if kill_at and epoch * steps_per_epoch + step + 1 == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        p_val = predict(model, batches, val, params.batch_size, device, autocast)
        y_val = labels[val]
        eps = 1e-7
        val_loss = float(-np.mean(y_val * np.log(p_val + eps) + (1 - y_val) * np.log(1 - p_val + eps)))
        row = {"fold": fold.index, "epoch": epoch + 1, "train_loss": total / len(fit), "val_loss": val_loss,
               "val_auroc": auroc(p_val, y_val), "val_accuracy": float(np.mean((p_val > 0.5) == y_val)),
               "seconds": round(time.time() - t0, 2)}
        history.append(row)
        improved = row["val_auroc"] is not None and not math.isnan(row["val_auroc"]) and row["val_auroc"] > best_auroc
        if improved or best_epoch < 0:
            best_auroc, best_epoch = (row["val_auroc"] if improved else best_auroc), epoch
            with atomic_path(run_dir / "best.pt") as tmp:
                torch.save({"model": model.state_dict(), "epoch": epoch, "metrics": row}, tmp)
        with atomic_path(run_dir / f"epoch-{epoch:03d}.pt") as tmp:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
                        "history": history, "best_auroc": best_auroc, "best_epoch": best_epoch}, tmp)
        print(f"train: fold {fold.index} epoch {epoch + 1}: loss {row['train_loss']:.4f} "
              f"val loss {val_loss:.4f} val AUROC {_shown(row['val_auroc'])} acc {row['val_accuracy']:.3f}")

    best = torch.load(run_dir / "best.pt", map_location=device, weights_only=False)
    model.load_state_dict(best["model"])
    p_scored = predict(model, batches, scored, params.batch_size, device, autocast)
    return FoldResult(fold.index, best_epoch + 1, history, dict(zip(scored, p_scored.tolist())))
