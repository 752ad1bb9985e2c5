"""rank: the critic's top pick against a random pick and the oracle, on the scored problems
-> metrics/rank.json, plots/rank/*.csv, reports/rank_problems.csv"""
from fractal import params
from fractal.ranking import evaluate, join, summary, write_csv
from fractal.records import Label, Problem, Score, read_jsonl, write_json

p = params.load("rank")
problems = join(read_jsonl("data/problems.jsonl", Problem),
                read_jsonl("data/labels.jsonl", Label),
                read_jsonl("data/scores.jsonl", Score))
ranking = evaluate(problems, params.rank_ks(p.ks, max((len(x.passed) for x in problems), default=0)), p.bootstrap, p.seed, p.calibration_bins, p.histogram_bins)
write_json("metrics/rank.json", ranking.metrics)
write_csv("plots/rank/pass_at_k.csv", ranking.pass_at_k)
write_csv("plots/rank/roc.csv", ranking.roc)
write_csv("plots/rank/calibration.csv", ranking.calibration)
write_csv("plots/rank/score_histogram.csv", ranking.score_histogram)
write_csv("reports/rank_problems.csv", ranking.problems)
print(summary(ranking.metrics))
