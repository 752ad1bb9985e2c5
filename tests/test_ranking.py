"""The rank statistics against hand-computed cases, and the rank stage on a tiny synthetic run."""
from __future__ import annotations

import csv
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fractal.ranking import (ScoredProblem, auroc, bootstrap_means, evaluate, interval, join, pass_at_k,
                             reliability, roc_curve, score_histogram, summary, top_k_hit)
from fractal.records import Label, Problem, Score, write_jsonl

REPO = Path(__file__).resolve().parents[1]


def problem(pid: str, scores: list[float], passed: list[bool], statuses: list[str] | None = None) -> ScoredProblem:
    statuses = statuses or ["passed" if p else "failed" for p in passed]
    return ScoredProblem(pid, "test", np.arange(len(scores)), np.array(scores, dtype=float),
                         np.array(passed, dtype=bool), statuses)


# pass@k ---------------------------------------------------------------------------------

def test_pass_at_k_hand_cases():
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # k = 1 is the pass rate
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 8, 3) == 1.0  # fewer failures than picks: a pass is certain
    assert pass_at_k(100, 1, 100) == 1.0


def test_pass_at_k_matches_enumeration():
    # Every way of drawing k of n candidates without replacement, counted directly.
    passed = [1, 0, 0, 1, 0, 0]
    for k in range(1, len(passed) + 1):
        draws = list(itertools.combinations(passed, k))
        expected = sum(any(d) for d in draws) / len(draws)
        assert pass_at_k(len(passed), sum(passed), k) == pytest.approx(expected)


def test_pass_at_k_matches_chen_product_form_at_large_n():
    # The numerically stable form from Chen et al. 2021, for n where C(n, k) is huge.
    n, c, k = 200, 37, 50
    expected = 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))
    assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12)


def test_pass_at_k_rejects_impossible_arguments():
    with pytest.raises(ValueError, match="n=5, c=6"):
        pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match="k=6"):
        pass_at_k(5, 1, 6)


# critic top-k with ties --------------------------------------------------------------------

def test_top1_is_share_of_passes_in_tied_top_group():
    scores = np.array([0.5, 0.5, 0.5, 0.1])
    passed = np.array([False, True, False, True])
    assert top_k_hit(scores, passed, 1) == pytest.approx(1 / 3)
    assert top_k_hit(scores, passed, 2) == pytest.approx(2 / 3)  # 1 - C(2,2)/C(3,2)
    assert top_k_hit(scores, passed, 3) == 1.0
    assert top_k_hit(scores, passed, 4) == 1.0


def test_top1_without_ties_is_the_best_candidate():
    scores = np.array([0.2, 0.9, 0.4])
    assert top_k_hit(scores, np.array([True, False, True]), 1) == 0.0
    assert top_k_hit(scores, np.array([False, True, False]), 1) == 1.0
    assert top_k_hit(scores, np.array([True, False, False]), 2) == 0.0
    assert top_k_hit(scores, np.array([False, False, True]), 2) == 1.0


def test_pass_above_the_tied_group_is_certain():
    scores = np.array([0.9, 0.5, 0.5, 0.5])
    passed = np.array([True, False, False, False])
    assert top_k_hit(scores, passed, 2) == 1.0


def test_top_k_matches_average_over_every_tie_break():
    # Expected value over a uniform random tie-break = the mean over all orders of equal scores.
    rng = np.random.default_rng(3)
    for _ in range(20):
        scores = rng.integers(0, 3, size=6).astype(float)
        passed = rng.random(6) < 0.3
        for k in range(1, 7):
            hits = []
            for perm in itertools.permutations(range(6)):
                # Stable sort by descending score on a permuted order = one random tie-break.
                order = sorted(perm, key=lambda i: -scores[i])
                hits.append(passed[order[:k]].any())
            assert top_k_hit(scores, passed, k) == pytest.approx(np.mean(hits)), (scores, passed, k)


# AUROC --------------------------------------------------------------------------------------

def test_auroc_hand_case_with_a_tie():
    # Pairs (pass, fail): (.9,.8)=1 (.9,.1)=1 (.8,.8)=.5 (.8,.1)=1 -> 3.5 / 4
    assert auroc(np.array([0.9, 0.8, 0.8, 0.1]), np.array([1, 1, 0, 0], dtype=bool)) == pytest.approx(0.875)


def test_auroc_extremes_and_undefined():
    assert auroc(np.array([0.9, 0.1]), np.array([True, False])) == 1.0
    assert auroc(np.array([0.1, 0.9]), np.array([True, False])) == 0.0
    assert auroc(np.array([0.5, 0.5, 0.5]), np.array([True, False, False])) == 0.5
    assert auroc(np.array([0.5, 0.7]), np.array([True, True])) is None
    assert auroc(np.array([0.5, 0.7]), np.array([False, False])) is None


def test_auroc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=60) / 4  # many ties
    passed = rng.random(60) < 0.4
    pos, neg = scores[passed], scores[~passed]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert auroc(scores, passed) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_roc_curve_ends_and_area():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 10, size=200) / 9
    passed = rng.random(200) < scores
    pts = roc_curve(scores, passed)
    assert (pts[0]["fpr"], pts[0]["tpr"]) == (0.0, 0.0)
    assert (pts[-1]["fpr"], pts[-1]["tpr"]) == (1.0, 1.0)
    fpr, tpr = np.array([p["fpr"] for p in pts]), np.array([p["tpr"] for p in pts])
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # Trapezoids through the tie-group corners give exactly the tie-aware AUROC.
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(auroc(scores, passed))


def test_roc_curve_is_thinned():
    rng = np.random.default_rng(2)
    scores = rng.random(5000)
    pts = roc_curve(scores, rng.random(5000) < scores, max_points=50)
    assert len(pts) <= 50
    assert (pts[-1]["fpr"], pts[-1]["tpr"]) == (1.0, 1.0)


# bootstrap ------------------------------------------------------------------------------------

def test_bootstrap_matches_plain_resampling_loop():
    values = np.array([[0.0, 1.0], [1.0, 1.0], [0.5, 0.0], [0.25, 1.0], [1.0, 0.0]])
    draws = bootstrap_means(values, resamples=50, seed=7)
    idx = np.random.default_rng(7).integers(0, 5, size=(50, 5))
    for b in range(50):
        np.testing.assert_allclose(draws[b], values[idx[b]].mean(axis=0))


def test_bootstrap_is_deterministic_per_seed():
    values = np.random.default_rng(0).random((30, 3))
    np.testing.assert_array_equal(bootstrap_means(values, 100, 1), bootstrap_means(values, 100, 1))
    assert not np.array_equal(bootstrap_means(values, 100, 1), bootstrap_means(values, 100, 2))


def test_bootstrap_interval_of_two_problems():
    # Two problems, rates 0 and 1: resampled means are 0, 1/2, 1 with chance 1/4, 1/2, 1/4,
    # so the 2.5 and 97.5 percentiles of 2000 draws are 0 and 1.
    draws = bootstrap_means(np.array([[0.0], [1.0]]), 2000, seed=0)[:, 0]
    assert set(np.unique(draws)) == {0.0, 0.5, 1.0}
    assert abs(np.mean(draws == 0.5) - 0.5) < 0.05
    assert interval(draws) == (0.0, 1.0)


def test_interval_percentiles_and_undefined():
    assert interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert interval(np.array([np.nan, np.nan])) == (None, None)
    assert interval(np.r_[np.arange(101.0), np.nan]) == pytest.approx((2.5, 97.5))


def test_paired_difference_is_exact_when_critic_adds_a_constant():
    # Each problem: critic always hits, random pass@1 is 1/4 -> difference 3/4 in every resample.
    problems = [problem(f"p{i}", [0.9, 0.1, 0.2, 0.3], [True, False, False, False]) for i in range(5)]
    problems += [problem(f"q{i}", [0.1, 0.9, 0.2, 0.3], [False, True, False, False]) for i in range(5)]
    m = evaluate(problems, ks=[1], resamples=200).metrics
    d = m["critic_minus_random"]
    assert (d["value"], d["low"], d["high"]) == pytest.approx((0.75, 0.75, 0.75))
    assert d["share_not_better"] == 0.0
    assert m["gap_closed"]["value"] == pytest.approx(1.0)


# evaluate -------------------------------------------------------------------------------------

def hand_problems() -> list[ScoredProblem]:
    return [
        # c=1 of 4; critic's top is the pass
        problem("a", [0.9, 0.2, 0.3, 0.1], [True, False, False, False]),
        # c=2 of 4; top two tied, one passes -> critic 1/2
        problem("b", [0.7, 0.7, 0.1, 0.2], [False, True, True, False]),
        # c=0: nobody can solve it
        problem("c", [0.5, 0.4, 0.3, 0.2], [False, False, False, False],
                ["error", "timeout", "failed", "syntax_error"]),
        # c=4: everybody solves it
        problem("d", [0.6, 0.6, 0.6, 0.6], [True, True, True, True]),
    ]


def test_evaluate_hand_computed_rates():
    m = evaluate(hand_problems(), ks=[1, 2, 4, 5], resamples=500, seed=0).metrics
    random = (1 / 4 + 2 / 4 + 0 + 1) / 4
    critic = (1 + 1 / 2 + 0 + 1) / 4
    oracle = 3 / 4
    assert m["n_problems"] == 4 and m["n_samples_per_problem"] == 4 and m["n_candidates"] == 16
    assert m["problems_with_a_pass_and_a_fail"] == 2
    assert m["random_pass_at_1"]["value"] == pytest.approx(random)
    assert m["critic_top1"]["value"] == pytest.approx(critic)
    assert m["oracle_pass_at_n"]["value"] == pytest.approx(oracle)
    assert m["critic_minus_random"]["value"] == pytest.approx(critic - random)
    assert m["gap_closed"]["value"] == pytest.approx((critic - random) / (oracle - random))
    assert list(m["pass_at_k"]) == ["1", "2", "4"]  # k=5 > n is skipped
    # pass@2: a 1 - C(3,2)/C(4,2) = 1/2; b 1 - C(2,2)/C(4,2) = 5/6; c 0; d 1
    assert m["pass_at_k"]["2"]["value"] == pytest.approx((1 / 2 + 5 / 6 + 0 + 1) / 4)
    # critic@2: a 1; b the tied top two are both picked -> 1; c 0; d 1
    assert m["critic_at_k"]["2"]["value"] == pytest.approx(3 / 4)
    assert m["pass_at_k"]["4"]["value"] == pytest.approx(oracle)
    assert m["critic_at_k"]["4"]["value"] == pytest.approx(oracle)
    for name in ("random_pass_at_1", "critic_top1", "oracle_pass_at_n", "gap_closed"):
        assert m[name]["low"] <= m[name]["value"] <= m[name]["high"], name
    # AUROC is defined within a and b only (c and d have one class); a = 1, and in
    # b: passes {.7, .1} vs fails {.7, .2}: (.7,.7)=.5 (.7,.2)=1 (.1,.7)=0 (.1,.2)=0 -> 1.5/4
    assert m["auroc"]["within_problem_n"] == 2
    assert m["auroc"]["within_problem_mean"] == pytest.approx((1 + 1.5 / 4) / 2)
    assert m["statuses"] == {"runtime_error": 1, "failed": 6, "passed": 7, "syntax_error": 1, "timeout": 1}


def test_evaluate_per_problem_table():
    rows = {r["problem_id"]: r for r in evaluate(hand_problems(), ks=[1], resamples=10).problems}
    assert rows["b"]["critic_pick"] == 0 and rows["b"]["top_ties"] == 2 and rows["b"]["critic_hit"] == 0.5
    assert rows["b"]["critic_status"] == "failed" and rows["b"]["critic_score"] == 0.7
    assert rows["a"]["critic_hit"] == 1.0 and rows["a"]["c"] == 1 and rows["a"]["random_pass_at_1"] == 0.25
    assert rows["c"]["oracle"] == 0 and rows["c"]["auroc"] is None and rows["c"]["critic_status"] == "error"
    assert rows["d"]["top_ties"] == 4 and rows["d"]["critic_pick"] == 0


def test_gap_closed_undefined_when_oracle_equals_random():
    problems = [problem("a", [0.1, 0.2], [True, True]), problem("b", [0.3, 0.4], [False, False])]
    m = evaluate(problems, ks=[1], resamples=100).metrics
    assert m["gap_closed"] == {"value": None, "low": None, "high": None}
    assert "n/a" in summary(m)


def test_evaluate_pass_at_k_curve_rows():
    curve = evaluate(hand_problems(), ks=[4, 1, 2], resamples=50).pass_at_k
    assert [r["k"] for r in curve] == [1, 2, 4]
    assert curve[-1]["random"] == pytest.approx(curve[-1]["oracle"])
    assert all(r["random_low"] <= r["random"] <= r["random_high"] for r in curve)


def test_evaluate_rejects_bad_params():
    with pytest.raises(ValueError, match="rank.ks"):
        evaluate(hand_problems(), ks=[0, 1])
    with pytest.raises(ValueError, match="rank.bootstrap"):
        evaluate(hand_problems(), ks=[1], resamples=0)


# calibration and histograms --------------------------------------------------------------------

def test_reliability_bins():
    scores = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    passed = np.array([False, True, False, True, True])
    rows = reliability(scores, passed, bins=10)
    assert [(r["bin_low"], r["count"]) for r in rows] == [(0.0, 1), (0.1, 2), (0.9, 2)]
    assert rows[1]["predicted"] == pytest.approx(0.15) and rows[1]["observed"] == 0.5
    assert rows[2]["predicted"] == pytest.approx(0.975) and rows[2]["observed"] == 1.0


def test_reliability_rejects_scores_that_are_not_probabilities():
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        reliability(np.array([-2.0, 3.0]), np.array([True, False]))


def test_score_histogram_shares_per_status():
    rows = score_histogram(np.array([0.1, 0.1, 0.9, 0.6]), ["passed", "failed", "passed", "timeout"], bins=2)
    assert [r["score"] for r in rows] == [0.25, 0.75]
    assert [r["passed"] for r in rows] == [0.5, 0.5]
    assert [r["failed"] for r in rows] == [1.0, 0.0]
    assert [r["timeout"] for r in rows] == [0.0, 1.0]
    assert [r["failing"] for r in rows] == [0.5, 0.5]
    assert [r["memory"] for r in rows] == [0.0, 0.0]


# join ----------------------------------------------------------------------------------------

def records(n_problems: int = 3, n: int = 4):
    problems = [Problem(f"P/{i}", "t", "train" if i == 0 else "test", "", "f", "", "") for i in range(n_problems)]
    labels = [Label(p.problem_id, s, "passed" if s == 0 else "failed", s == 0, 0.1) for p in problems for s in range(n)]
    scores = [Score(p.problem_id, s, 0.5 + 0.1 * (s == 0), fold=1) for p in problems[1:] for s in range(n)]
    return problems, labels, scores


def test_join_keeps_only_scored_problems():
    problems, labels, scores = records()
    joined = join(problems, labels, scores[::-1])
    assert [p.problem_id for p in joined] == ["P/1", "P/2"]
    assert joined[0].samples.tolist() == [0, 1, 2, 3]
    assert joined[0].passed.tolist() == [True, False, False, False]
    assert joined[0].split == "test" and joined[0].fold == 1


def test_join_names_the_mismatch():
    problems, labels, scores = records()
    with pytest.raises(ValueError, match="P/1: samples \\[3\\] are labelled but not scored"):
        join(problems, labels, [s for s in scores if (s.problem_id, s.sample) != ("P/1", 3)])
    with pytest.raises(ValueError, match="P/2: samples \\[0\\] are scored but not labelled"):
        join(problems, [x for x in labels if (x.problem_id, x.sample) != ("P/2", 0)], scores)
    with pytest.raises(ValueError, match="P/1 sample 0 is scored twice"):
        join(problems, labels, scores + scores[:1])
    with pytest.raises(ValueError, match="not in problems.jsonl"):
        join(problems[:2], labels, scores)
    with pytest.raises(ValueError, match="finite"):
        join(problems, labels, scores + [Score("P/1", 9, math.nan)])
    with pytest.raises(ValueError, match="no scored problems"):
        join(problems, labels, [])


# the stage -------------------------------------------------------------------------------------

def test_rank_stage_writes_every_output(tmp_path: Path):
    # Issue 19: the rank stage now compares every ranker, so it also reads the generations,
    # the generated tests, the probe, the embeddings and the hybrid's scores.
    from fractal.critic.embed import save_embeddings
    from fractal.records import Generation

    rng = np.random.default_rng(5)
    problems, generations, labels, scores, hybrid, tests, probe = [], [], [], [], [], [], []
    for i in range(12):
        pid = f"S/{i}"
        problems.append(Problem(pid, "t", "test", "", "f", "", ""))
        rate = rng.random()
        has_tests = i % 4 != 0
        tests.append({"problem_id": pid, "inputs": ["[[1],{}]"] if has_tests else [],
                      "tests": [{"input": 0, "expected": 2}] if has_tests else [], "asserts": []})
        for s in range(6):
            ok = bool(rng.random() < rate)
            body = "def f(x):\n    return x + 1\n" if ok else f"def f(x):\n    return x * {s}\n"
            generations.append(Generation(pid, s, body, body, "replay", "t"))
            labels.append(Label(pid, s, "passed" if ok else "failed", ok, 0.1))
            scores.append(Score(pid, s, float(np.clip(0.3 + 0.4 * ok + rng.normal(0, 0.2), 0, 1)), fold=i % 3))
            hybrid.append(Score(pid, s, float(np.clip(0.3 + 0.5 * ok + rng.normal(0, 0.1), 0, 1)), fold=i % 3))
            probe.append({"problem_id": pid, "sample": s, "outputs": (["2"] if ok else [str(s)]) if has_tests else [],
                          "passed": [0] if ok and has_tests else [], "status": "ok"})
    write_jsonl(tmp_path / "data/problems.jsonl", problems)
    write_jsonl(tmp_path / "data/generations.jsonl", generations)
    write_jsonl(tmp_path / "data/labels.jsonl", labels)
    write_jsonl(tmp_path / "data/scores.jsonl", scores)
    write_jsonl(tmp_path / "data/hybrid_scores.jsonl", hybrid)
    write_jsonl(tmp_path / "data/generated_tests.jsonl", tests)
    write_jsonl(tmp_path / "data/probe.jsonl", probe)
    vectors = rng.normal(size=(len(generations), 4))
    save_embeddings(tmp_path / "data/embeddings", vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                    [(g.problem_id, g.sample) for g in generations],
                    {"backbone": "minilm", "max_length": 384, "prompt_tokens": 128})
    (tmp_path / "params.yaml").write_text("rank:\n  ks: [1, 3, 10]\n  bootstrap: 300\n")

    out = subprocess.run([sys.executable, str(REPO / "stages/rank.py")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "hybrid" in out.stdout and "gap closed" in out.stdout

    m = json.loads((tmp_path / "metrics/rank.json").read_text())
    assert m["n_problems"] == 12 and m["critic"]["n_samples_per_problem"] == 6
    assert set(m["rankers"]) == {"random", "majority", "majority_nostub", "embedding_mean", "mbr_exec", "codet",
                                 "srank", "critic", "hybrid"}
    assert list(m["rankers"]["codet"]["pass_at_k"]) == ["1", "3"] and list(m["critic"]["pass_at_k"]) == ["1", "3"]
    assert m["bootstrap"]["resamples"] == 300
    assert m["rankers"]["critic"]["top1"]["value"] == pytest.approx(m["critic"]["critic_top1"]["value"])
    assert m["rankers"]["random"]["top1"]["value"] == pytest.approx(m["critic"]["random_pass_at_1"]["value"])

    def keys(d: dict) -> list[str]:
        return [k for k in d] + [k2 for v in d.values() if isinstance(v, dict) for k2 in keys(v)]
    assert "error" not in keys(m)  # DVC reads an `error` key as its own error marker

    def read(path: str) -> list[dict]:
        with (tmp_path / path).open(newline="") as f:
            return list(csv.DictReader(f))

    curve = read("plots/rank/pass_at_k.csv")
    assert [r["k"] for r in curve] == ["1", "3"] and {"srank", "srank_low", "srank_high", "oracle"} <= set(curve[0])
    assert read("plots/rank/roc.csv")[-1]["tpr"] == "1.0"
    assert sum(int(r["count"]) for r in read("plots/rank/calibration.csv")) == 72
    assert len(read("plots/rank/score_histogram.csv")) == 20
    table = read("reports/rank_problems.csv")
    assert [r["problem_id"] for r in table] == sorted(p.problem_id for p in problems)
    assert np.mean([float(r["critic_hit"]) for r in table]) == pytest.approx(m["critic"]["critic_top1"]["value"])
    picks = read("reports/rank_picks.csv")
    assert [r["problem_id"] for r in picks] == sorted(p.problem_id for p in problems)
    assert np.mean([float(r["codet_hit"]) for r in picks]) == pytest.approx(m["rankers"]["codet"]["top1"]["value"])
