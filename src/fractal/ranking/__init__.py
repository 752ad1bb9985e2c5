"""Selecting among a problem's candidates and measuring the selection.

- metrics.py: the statistics (pass@k, top-k with ties, AUROC, paired bootstrap, the
  critic's calibration) and the critic's report (`evaluate`);
- rankers.py: the rankers, each scoring every candidate from label-free features;
- candidates.py: the rankers' view of a problem, built from the probe's records;
- compare.py: every ranker in one table (top-1 as CodeT and SRank count it, pass@k over
  distinct programs, paired intervals).
"""
from fractal.ranking.metrics import (LEVEL, Ranking, ScoredProblem, auroc, bootstrap_means, evaluate, interval, join,
                                     pass_at_k, reliability, roc_curve, score_histogram, summary, top_k_hit, write_csv)

__all__ = ["LEVEL", "Ranking", "ScoredProblem", "auroc", "bootstrap_means", "evaluate", "interval", "join", "pass_at_k",
           "reliability", "roc_curve", "score_histogram", "summary", "top_k_hit", "write_csv"]
