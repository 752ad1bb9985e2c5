"""rank: every ranker's pick against a random pick and the oracle, on the scored problems,
in one table; and the critic's ROC and calibration
-> metrics/rank.json, plots/rank/*.csv, reports/rank_problems.csv, reports/rank_picks.csv"""
import numpy as np

from fractal import params
from fractal.critic.embed import load_embeddings
from fractal.ranking import evaluate, join, write_csv
from fractal.ranking.candidates import build_candidates, read_generated_tests, read_probe
from fractal.ranking.compare import RankedProblem, compare, pass_at_k_rows, pick_rows, table
from fractal.ranking.rankers import LEARNED, TRAINING_FREE
from fractal.records import Generation, Label, Problem, Score, read_jsonl, write_json

p = params.load("rank")
t = params.load("train")
problems = read_jsonl("data/problems.jsonl", Problem)
labels = read_jsonl("data/labels.jsonl", Label)
learned = {name: join(problems, labels, read_jsonl(path, Score))
           for name, path in zip(LEARNED, ("data/scores.jsonl", "data/hybrid_scores.jsonl"))}
scored = {name: {sp.problem_id: sp for sp in sps} for name, sps in learned.items()}

generations = read_jsonl("data/generations.jsonl", Generation)
embeddings = load_embeddings("data/embeddings", [(g.problem_id, g.sample) for g in generations],
                             {"backbone": t.backbone, "max_length": t.max_length, "prompt_tokens": t.prompt_tokens})
candidates = build_candidates(problems, generations, read_generated_tests("data/generated_tests.jsonl"),
                              read_probe("data/probe.jsonl"), embeddings)  # generated tests, never the real ones

# The problems every learned ranker scored (all of them when cross-fitted).
common = sorted(set.intersection(*(set(s) for s in scored.values())))
ranked = []
for pid in common:
    c, critic = candidates[pid], scored["critic"][pid]
    if not np.array_equal(c.samples, critic.samples):
        raise ValueError(f"{pid}: the scored samples differ from the probed ones; rerun `dvc repro train`")
    scores = {name: ranker(c) for name, ranker in TRAINING_FREE.items()}
    scores.update({name: scored[name][pid].scores for name in LEARNED})
    ranked.append(RankedProblem(pid, c.samples, critic.passed, c.programs, scores))

names = list(TRAINING_FREE) + list(LEARNED)
ks = params.rank_ks(p.ks, max((len(r.samples) for r in ranked), default=0))  # `auto`: 1, 2, 3, 5, 10, ... up to N
comparison = compare(ranked, names, list(TRAINING_FREE), ks, p.bootstrap, p.seed)
critic = evaluate(learned["critic"], ks, p.bootstrap, p.seed, p.calibration_bins, p.histogram_bins)
# The critic's own report stays beside the table (AUROC, calibration, statuses).
critic_metrics = {k: v for k, v in critic.metrics.items() if k != "bootstrap"}
metrics = {**comparison, "critic": critic_metrics}
write_json("metrics/rank.json", metrics)
write_csv("plots/rank/pass_at_k.csv", pass_at_k_rows(comparison))
write_csv("plots/rank/roc.csv", critic.roc)
write_csv("plots/rank/calibration.csv", critic.calibration)
write_csv("plots/rank/score_histogram.csv", critic.score_histogram)
write_csv("reports/rank_problems.csv", critic.problems)
write_csv("reports/rank_picks.csv", pick_rows(ranked, names))
print(table(comparison))
