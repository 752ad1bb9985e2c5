"""The rankers against hand-computed scores on tiny pass matrices, the one-table comparison,
and no leakage: blanking the problems' real tests and reference changes no feature or score."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from fractal.critic.crossfit import fit_and_score
from fractal.ranking.candidates import build_candidates
from fractal.ranking.compare import RankedProblem, compare, pass_at_k_rows, pick_rows
from fractal.ranking.rankers import (TRAINING_FREE, Candidates, codet, execution_features, is_stub, majority,
                                     majority_nostub, mbr_exec, srank)
from fractal.params import TrainParams
from fractal.records import Generation, Label, Problem


def sig(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def cands(outputs, passed, weights, programs=None, run_ok=None, test_inputs=None) -> Candidates:
    n = len(outputs)
    return Candidates(
        problem_id="p", samples=np.arange(n), programs=programs or [f"prog{i}" for i in range(n)],
        stubs=np.zeros(n, dtype=bool), run_ok=np.array(run_ok if run_ok is not None else [True] * n),
        outputs=[tuple(o) for o in outputs], passed=[frozenset(p) for p in passed],
        test_inputs=np.array(test_inputs if test_inputs is not None else list(range(len(weights))), dtype=np.int64),
        test_weights=np.array(weights, dtype=np.float64))


def test_codet_dual_agreement_by_hand():
    # Three generated tests; the model wrote test 0 twice. A and B pass {0, 1} (one group of
    # two: (2 + 1) x sqrt 2), C passes {2} alone (1 x 1), D passes nothing (unranked: 0), E
    # passes {0, 1} but its run did not come back, which CodeT counts as no pass.
    c = cands(outputs=[["1", "2", "9"]] * 5, passed=[{0, 1}, {0, 1}, {2}, set(), {0, 1}], weights=[2, 1, 1],
              run_ok=[True, True, True, True, False], test_inputs=[0, 1, 2])
    assert codet(c) == pytest.approx([3 * math.sqrt(2), 3 * math.sqrt(2), 1.0, 0.0, 0.0])


def test_codet_counts_duplicate_samples_in_the_group():
    # CodeT expands each solution by how often it was sampled: two samples of one program
    # make a group of two, as two different programs passing the same tests do.
    same = cands(outputs=[[]] * 3, passed=[{0}, {0}, {1}], weights=[1, 1], programs=["a", "a", "b"])
    assert codet(same) == pytest.approx([math.sqrt(2), math.sqrt(2), 1.0])


def test_srank_by_hand():
    # Three inputs; tests: input 0 -> 1 (written once), input 1 -> 2 (twice), input 2 -> 3 (once).
    out = {"A": [1, 2, 3], "B": [1, 2, 3], "C": [1, 2, 4], "D": ["!ValueError", 2, 5], "E": [7, 7, 7], "F": []}
    sigs = [[v if isinstance(v, str) else sig(v) for v in o] for o in out.values()]
    sigs[5] = ["!run_failed"] * 3
    passed = [{0, 1, 2}, {0, 1, 2}, {0, 1}, {1}, set(), set()]
    c = cands(sigs, passed, weights=[1, 2, 1], programs=["a", "b", "c", "d", "e", "f"],
              run_ok=[True, True, True, True, True, False])
    # Valid clusters {A, B}, {C}, {D} (E is constant, F's run failed): sizes 2/4, 1/4, 1/4 of the
    # distinct valid programs; matched shares of the 4 written outputs 4/4, 3/4, 2/4, so
    # V = [.5, .1875, .125]. Overlaps: AB-C 2/3 (inputs 0, 1), AB-D 1/3 (input 1; D raised
    # on 0), C-D 1/3. Score = overlap @ V.
    # AB: .5 + 2/3 x .1875 + 1/3 x .125; C: 2/3 x .5 + .1875 + 1/3 x .125; D: 1/3 x .5 + 1/3 x .1875 + .125.
    assert srank(c) == pytest.approx([2 / 3, 2 / 3, 0.5625, 1 / 6 + 0.0625 + 0.125, 0.0, 0.0])


def test_srank_counts_distinct_programs_and_treats_all_raising_as_constant():
    # Two samples of one program are one program in the cluster size; a candidate raising on
    # every input is constant (SRank compares the value alone, and raising records None).
    c = cands([["1", "2"], ["1", "2"], ["1", "3"], ["!E", "!E"], ["null", "!E"]],
              [{0, 1}, {0, 1}, {0}, set(), set()], weights=[1, 1], programs=["a", "a", "b", "x", "y"])
    # Valid: {a} (1 distinct), {b} (1); None-then-raise is constant as well. V = [.5 x 1, .5 x .5].
    # overlap({a}, {b}) = 1/2.
    assert srank(c) == pytest.approx([0.5 + 0.125, 0.5 + 0.125, 0.25 + 0.25, 0.0, 0.0])


def test_execution_rankers_tie_everything_without_generated_tests():
    c = cands([[]] * 4, [set()] * 4, weights=[])
    for ranker in (mbr_exec, codet, srank):
        scores = ranker(c)
        assert np.all(scores == scores[0])  # a uniform pick: top-1 counts c/n
    x = execution_features(c)
    assert np.all(x == 0)  # the hybrid then sees only its consensus features


def test_mbr_exec_and_majority():
    c = cands([["1"], ["1"], ["2"], ["1"]], [set()] * 4, weights=[], programs=["a", "b", "c", "a"],
              run_ok=[True, True, True, False])
    assert mbr_exec(c).tolist() == [2, 2, 1, 0]  # the failed run is no vote
    assert majority(c).tolist() == [2, 1, 1, 2]
    c.stubs = np.array([True, False, False, True])
    assert majority_nostub(c).tolist() == [0, 1, 1, 0]


def test_stub_detection():
    assert is_stub('def f(x):\n    """Doc."""\n    pass\n', "f")
    assert is_stub("def f(x):\n    ...\n", "f")
    assert is_stub("def f(x):\n    return\n", "f")
    assert is_stub("def f(x):\n    raise NotImplementedError()\n", "f")
    assert not is_stub("def f(x):\n    return x\n", "f")
    assert not is_stub("def f(x):\n    return x +\n", "f")  # does not parse: no stub, it fails


def test_compare_counts_top1_on_tied_samples_and_pass_at_k_on_distinct_programs():
    # One problem, 4 samples: programs a, a, b, c; only c passes. The "dup" ranker scores a
    # highest: its top 2 distinct programs are a and b (no pass), while its top-1 is 0.
    # "tie" scores all equal: top-1 = c/n = 1/4, pass@2 over 3 distinct programs = 2/3.
    p = RankedProblem("p", np.arange(4), np.array([False, False, False, True]), ["a", "a", "b", "c"],
                      {"random": np.zeros(4), "dup": np.array([3.0, 3.0, 2.0, 1.0]), "good": np.array([0, 0, 0, 1.0])})
    cmp = compare([p], ["random", "dup", "good"], ["random", "dup"], ks=[1, 2, 3], resamples=50)
    r = cmp["rankers"]
    assert r["random"]["top1"]["value"] == pytest.approx(0.25)
    assert r["random"]["pass_at_k"]["2"]["value"] == pytest.approx(2 / 3)
    assert r["dup"]["top1"]["value"] == 0 and r["dup"]["pass_at_k"]["2"]["value"] == 0
    assert r["dup"]["pass_at_k"]["3"]["value"] == 1
    assert r["good"]["top1"]["value"] == 1 and r["good"]["vs_random"]["value"] == pytest.approx(0.75)
    assert cmp["best_untrained"] == "dup" and r["good"]["vs_best_untrained"]["value"] == 1
    assert r["good"]["gap_closed"]["value"] == pytest.approx(1.0)
    assert r["good"]["trained"] and not r["dup"]["trained"]
    row = pass_at_k_rows(cmp)[1]
    assert row["k"] == 2 and row["random"] == pytest.approx(2 / 3) and "good_low" in row and row["oracle"] == 1
    picks = pick_rows([p], ["dup", "good"])[0]
    assert picks["dup_pick"] == 0 and picks["dup_ties"] == 2 and picks["good_pick"] == 3 and picks["good_hit"] == 1

    def keys(d):
        return [k for k, v in d.items()] + [k2 for v in d.values() if isinstance(v, dict) for k2 in keys(v)]
    assert "error" not in keys(cmp)  # DVC reads an `error` key as its own error marker


# --- no leakage -----------------------------------------------------------------------------

def toy(n_problems=8, n_samples=8, seed=0):
    """Problems `add k` with real tests and a reference; generated tests written by 'the model'
    (some of them wrong); probe records computed by running the toy programs in-process."""
    rng = np.random.default_rng(seed)
    problems, generations, labels, generated, probe = [], [], [], {}, {}
    for i in range(n_problems):
        pid = f"toy/{i}"
        prompt = f"def add{i}(a, b):\n    \"\"\"Return a plus b plus {i}.\"\"\"\n"
        problems.append(Problem(pid, "toy", "test", prompt, f"add{i}", f"def check(c):\n    assert c(1, 2) == {3 + i}\n",
                                prompt + f"    return a + b + {i}\n"))
        calls = [(1, 2), (0, 0), (5, 1)]
        gen_inputs = [json.dumps([list(a), {}]) for a in calls] if i % 4 else []  # every 4th: no usable test
        tests = ([{"input": j, "expected": a + b + i} for j, (a, b) in enumerate(calls)]
                 + [{"input": 0, "expected": 3}]) if gen_inputs else []  # the last one is wrong for i > 0
        generated[pid] = {"problem_id": pid, "inputs": gen_inputs, "tests": tests, "asserts": []}
        for s in range(n_samples):
            body = [f"    return a + b + {i}\n", f"    return a - b - {i}\n", "    return None\n",
                    "    pass\n", "    return a + b\n"][int(rng.integers(0, 5)) if s > 1 else s]  # a pass and a fail in each
            generations.append(Generation(pid, s, body, prompt + body, "replay", "toy"))
            ns: dict = {}
            exec(prompt + body, ns)
            outs = [ns[f"add{i}"](*c) for c in calls] if gen_inputs else []
            good = body == f"    return a + b + {i}\n"
            labels.append(Label(pid, s, "passed" if good else "failed", good, 0.01))
            probe[pid, s] = {"problem_id": pid, "sample": s, "outputs": [sig(o) for o in outs],
                             "passed": [t for t, test in enumerate(tests) if outs[test["input"]] == test["expected"]],
                             "status": "ok"}
    return problems, generations, labels, generated, probe


def features_and_scores(problems, generations, labels, generated, probe, embeddings, tmp_path, name):
    cands = build_candidates(problems, generations, generated, probe, embeddings)
    free = {pid: {r: f(c).tolist() for r, f in TRAINING_FREE.items()} for pid, c in cands.items()}
    execution = np.zeros((len(generations), 8), dtype=np.float32)
    row = {(g.problem_id, g.sample): r for r, g in enumerate(generations)}
    for c in cands.values():
        execution[[row[c.problem_id, int(s)] for s in c.samples]] = execution_features(c)
    params = TrainParams(folds=2, epochs=3, patience=3, batch_size=16, hidden=8, features=["consensus", "execution"])
    run = fit_and_score(problems, generations, labels, params, tmp_path / name, embeddings, execution)
    return free, execution, [s.score for s in run.scores]


def test_real_tests_and_reference_reach_no_feature_or_score(tmp_path):
    problems, generations, labels, generated, probe = toy()
    embeddings = np.random.default_rng(1).normal(size=(len(generations), 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    before = features_and_scores(problems, generations, labels, generated, probe, embeddings, tmp_path, "a")
    blanked = [dataclasses.replace(p, tests="", reference="") for p in problems]
    after = features_and_scores(blanked, generations, labels, generated, probe, embeddings, tmp_path, "b")
    assert before[0] == after[0]  # every training-free ranker's scores
    assert np.array_equal(before[1], after[1])  # the hybrid's execution features
    assert before[2] == after[2]  # the hybrid critic's cross-fitted scores
    assert any(len(set(v["codet"])) > 1 for v in before[0].values())  # the scores are not trivially constant
