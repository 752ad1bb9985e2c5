"""train: fit the critic (code only) and the hybrid critic (+ execution on the generated tests)
on labelled candidates of training problems and score held-out problems
-> models/critic/, models/hybrid/, data/scores.jsonl, data/hybrid_scores.jsonl, metrics/train.json, plots/train/,
timings/train.json"""
import dataclasses
import time

import numpy as np

from fractal import params
from fractal.critic.crossfit import export, fit_and_score, run_key
from fractal.critic.embed import load_embeddings
from fractal.ranking.candidates import build_candidates, read_generated_tests, read_probe
from fractal.ranking.rankers import EXECUTION_FEATURES, execution_features
from fractal.records import Generation, Label, Problem, read_jsonl, write_json, write_jsonl

p = params.load("train")
problems = read_jsonl("data/problems.jsonl", Problem)
labels = read_jsonl("data/labels.jsonl", Label)
generations = read_jsonl("data/generations.jsonl", Generation)
candidates = build_candidates(problems, generations, read_generated_tests("data/generated_tests.jsonl"),
                              read_probe("data/probe.jsonl"))  # generated tests, never the real ones
ids = [(g.problem_id, g.sample) for g in generations]
embeddings = load_embeddings("data/embeddings", ids, {"backbone": p.backbone, "max_length": p.max_length,
                                                      "prompt_tokens": p.prompt_tokens})
row_of = {key: r for r, key in enumerate(ids)}
execution = np.zeros((len(ids), len(EXECUTION_FEATURES)), dtype=np.float32)
for c in candidates.values():
    execution[[row_of[c.problem_id, int(s)] for s in c.samples]] = execution_features(c)

t0 = time.time()
metrics = {}
# The hybrid is a head on features whatever train.method says: the execution features are not text.
for name, q, scores_path in (("critic", p, "data/scores.jsonl"),
                             ("hybrid", dataclasses.replace(p, method="head", features=p.hybrid_features),
                              "data/hybrid_scores.jsonl")):
    work_dir = f".fractal/train/{run_key(q, problems, generations, labels, embeddings, execution)}"  # checkpoints to resume from
    run = fit_and_score(problems, generations, labels, q, work_dir, embeddings, execution)
    export(run, work_dir, f"models/{name}")
    write_jsonl(scores_path, run.scores)
    best = [next(h for h in r.history if h["epoch"] == r.best_epoch) for r in run.folds]
    prefix = "" if name == "critic" else "hybrid_"
    # A fold whose validation candidates all pass or all fail has no AUROC (None): the mean
    # is over the folds that have one, and None (null) when none has.
    metrics.update({prefix + key: (float(np.mean(known)) if (known := [b[key] for b in best if b[key] is not None])
                                   else None) for key in ("val_auroc", "val_accuracy", "val_loss")})
    for r in run.folds:
        write_json(f"plots/train/{prefix}fold-{r.fold}.json", r.history)
    auroc = metrics[prefix + "val_auroc"]
    print(f"train {name}: {len(run.folds)} fold(s), validation AUROC "
          + ("n/a (every fold's validation candidates have one class)" if auroc is None else f"{auroc:.4f}"))
metrics.update(folds=len(run.folds), scored_candidates=len(run.scores))
write_json("metrics/train.json", metrics)
seconds = round(time.time() - t0, 1)  # not a metric: it differs on every run and machine
write_json("timings/train.json", {"seconds": seconds})
print(f"train: {seconds:.0f} s")
