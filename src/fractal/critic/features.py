"""Features the head critic learns from, built on frozen embeddings.

A critic that must generalise to unseen problems does better judging a candidate against
its siblings than in isolation, so besides the candidate's own embedding it can see:
- centered: the embedding minus its problem's mean embedding (what sets it apart);
- consensus: how typical it is among the N candidates of its problem (cosine to the
  problem's mean embedding, share of identical programs, relative length). Like majority
  voting, this uses no labels, only the other candidates of the same problem;
- execution: what the candidate did on the model's own generated tests, against its
  siblings (ranking/rankers.py execution_features: CodeT and SRank scores relative to the
  problem's best, MBR-exec cluster share, tests passed, raised / failed / constant output,
  whether the problem has generated tests). These are the hybrid critic's extra inputs.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

FEATURES = ("embedding", "centered", "consensus", "execution")


from fractal.ranking.rankers import normalized_code as _normalized_code


def build_features(embeddings: np.ndarray, problem_ids: list[str], codes: list[str],
                   n_tokens: list[int], which: list[str], execution: np.ndarray | None = None) -> np.ndarray:
    """One row per candidate: the `which` groups side by side. `execution` (one row per
    candidate, ranking.rankers.EXECUTION_FEATURES) is needed only when `which` names it."""
    unknown = [w for w in which if w not in FEATURES]
    if unknown:
        raise ValueError(f"params.yaml: `train.features` has {unknown[0]!r}; choose from {', '.join(FEATURES)}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, pid in enumerate(problem_ids):
        groups[pid].append(i)
    centered = np.zeros_like(embeddings)
    consensus = np.zeros((len(problem_ids), 3), dtype=np.float32)
    for pid, idx in groups.items():
        # In float64: the problem's mean is then the same whatever order its candidates come
        # in (a float32 sum is not), so a scorer given them shuffled gets the same features.
        e = embeddings[idx].astype(np.float64)
        mean = e.mean(0)
        centered[idx] = e - mean
        norm = np.linalg.norm(mean) or 1.0
        consensus[idx, 0] = e @ mean / norm
        counts = Counter(_normalized_code(codes[i]) for i in idx)
        consensus[idx, 1] = [np.log(counts[_normalized_code(codes[i])]) / np.log(max(len(idx), 2)) for i in idx]
        lengths = np.array([n_tokens[i] for i in idx], dtype=np.float32)
        consensus[idx, 2] = (lengths - lengths.mean()) / (lengths.std() + 1e-6)
    if "execution" in which and execution is None:
        raise ValueError("params.yaml: `train.features` asks for execution features, but no probe results were given; "
                         "the train stage reads them from data/probe.jsonl")
    parts = {"embedding": embeddings, "centered": centered, "consensus": consensus, "execution": execution}
    return np.concatenate([parts[w] for w in which], axis=1).astype(np.float32)
