"""train: fit the critic on labelled candidates of training problems and score held-out
problems -> models/critic/, data/scores.jsonl, metrics/train.json, plots/train/, timings/train.json"""
import time

import numpy as np

from fractal import params
from fractal.critic.crossfit import export, fit_and_score, run_key
from fractal.records import Generation, Label, Problem, read_jsonl, write_json, write_jsonl

p = params.load("train")
problems = read_jsonl("data/problems.jsonl", Problem)
generations = read_jsonl("data/generations.jsonl", Generation)
labels = read_jsonl("data/labels.jsonl", Label)

t0 = time.time()
work_dir = f".fractal/train/{run_key(p, problems, generations, labels)}"  # checkpoints to resume from
run = fit_and_score(problems, generations, labels, p, work_dir)
export(run, work_dir, "models/critic")
write_jsonl("data/scores.jsonl", run.scores)

best = [next(h for h in r.history if h["epoch"] == r.best_epoch) for r in run.folds]
metrics = {key: float(np.mean([b[key] for b in best])) for key in ("val_auroc", "val_accuracy", "val_loss")}
metrics.update(folds=len(run.folds), scored_candidates=len(run.scores))
write_json("metrics/train.json", metrics)
seconds = round(time.time() - t0, 1)  # not a metric: it differs on every run and machine
write_json("timings/train.json", {"seconds": seconds})
for r in run.folds:
    write_json(f"plots/train/fold-{r.fold}.json", r.history)
print(f"train: {len(run.folds)} fold(s), validation AUROC {metrics['val_auroc']:.4f}, "
      f"accuracy {metrics['val_accuracy']:.3f}, {seconds:.0f} s")
