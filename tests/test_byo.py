"""Bring your own problems and samples: the problem schemas, the replay formats, the cut
each format needs, and rank.ks: auto (the end-to-end runs are in test_byo_pipeline.py)."""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from fractal.benchmarks import load_problems
from fractal.benchmarks.sources import hub_rows
from fractal.generation import get_backend
from fractal.generation.postprocess import CODET_STOP, cut_at_stop
from fractal.generation.replay import detect_format, load_recorded, task_key
from fractal.params import GenerateParams, ParamsError, PrepareParams, SplitParams, rank_ks
from fractal.records import Problem

ROOT = Path(__file__).resolve().parents[1]
F = ROOT / "tests" / "fixtures" / "byo"


def he(**kw) -> list[Problem]:
    return load_problems(PrepareParams(**{"problems_file": str(F / "humaneval-mini.jsonl"),
                                          "prompt_variant": "original", **kw}), ROOT)


def replay(problems, path, **kw):
    return list(get_backend("replay").generate(problems, GenerateParams(replay_file=str(path), **kw)))


# --- problems -----------------------------------------------------------------------------

def test_humaneval_schema_from_a_local_file():
    problems = he()
    assert [p.problem_id for p in problems][:4] == ["HumanEval/0", "HumanEval/2", "HumanEval/4", "HumanEval/7"]
    p = problems[0]
    assert p.test_style == "check" and p.entry_point == "has_close_elements" and ">>>" in p.prompt
    assert p.reference.startswith(p.prompt) and "return False" in p.reference
    codet = he(prompt_variant="codet")[0]  # CodeT's prompt by task_id; the reference keeps the file's
    assert ">>>" not in codet.prompt and codet.reference == p.reference


def test_a_problem_without_canonical_solution_has_no_reference(tmp_path):
    rows = [json.loads(line) for line in (F / "humaneval-mini.jsonl").read_text().splitlines()[:2]]
    del rows[0]["canonical_solution"]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    problems = load_problems(PrepareParams(benchmark="mine", problems_file=str(path), prompt_variant="original"))
    assert [p.reference == "" for p in problems] == [True, False] and problems[0].benchmark == "mine"


def test_humanevalplus_layout_keeps_its_extended_tests():
    plus = load_problems(PrepareParams(benchmark="humaneval+", problems_file=str(F / "humanevalplus-mini.jsonl"),
                                       prompt_variant="original"), ROOT)
    base = {p.problem_id: p for p in he()}
    assert len(plus) == 10 and all(p.benchmark == "humaneval+" for p in plus)
    assert all(p.tests.startswith(base[p.problem_id].tests.rstrip()) and "inputs = " in p.tests for p in plus)


def test_mbpp_schema_official_split_and_mbppplus_extended_tests():
    mbpp = load_problems(PrepareParams(benchmark="mbpp", problems_file=str(F / "mbpp-mini.json")), ROOT)
    assert {p.problem_id: p.split for p in mbpp} == {
        "MBPP/11": "test", "MBPP/12": "test", "MBPP/14": "test", "MBPP/16": "test",
        "MBPP/554": "validation", "MBPP/555": "validation", "MBPP/602": "train", "MBPP/603": "train"}
    plus = load_problems(PrepareParams(benchmark="mbpp+", problems_file=str(F / "mbppplus-mini.jsonl")), ROOT)
    p2 = plus[0]
    assert p2.problem_id == "MBPP/2" and p2.entry_point == "similar_elements" and p2.test_style == "asserts"
    assert p2.tests.count("assert") == 5  # 3 base asserts + 2 extended: `test` replaces test_list
    assert "prompt" not in {p.split for p in plus}  # auto: seeded for everything but MBPP itself
    forced = load_problems(PrepareParams(benchmark="mbpp+", problems_file=str(F / "mbppplus-mini.jsonl"),
                                         split=SplitParams(rule="mbpp")), ROOT)
    assert forced[0].split == "prompt"


def test_problem_errors_name_the_file_line_or_key(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x/1", "prompt": "def f():\\n", "entry_point": "f", "test": "def check(c): pass"}\n'
                   '{"task_id": "x/2", "prompt": "def g():\\n", "entry_point": "g"}\n')
    with pytest.raises(ParamsError, match=r"bad.jsonl:2: .*missing or empty: test"):
        load_problems(PrepareParams(benchmark="x", problems_file=str(bad), prompt_variant="original"))
    bad.write_text('{"task_id": "x/1", "question": "?"}\n')
    with pytest.raises(ParamsError, match=r"bad.jsonl:1: neither HumanEval's schema"):
        load_problems(PrepareParams(benchmark="x", problems_file=str(bad)))
    bad.write_text('{"task_id": \n')
    with pytest.raises(ParamsError, match=r"bad.jsonl:1: not valid JSON"):
        load_problems(PrepareParams(benchmark="x", problems_file=str(bad)))
    with pytest.raises(ParamsError, match="prepare.problems_file.*is humaneval's file"):
        load_problems(PrepareParams(benchmark="mbpp"), ROOT)
    with pytest.raises(ParamsError, match="`prepare.split.rule` is 'official'; choose auto, seeded or mbpp"):
        he(split=SplitParams(rule="official"))
    bad.write_text('{"task_id": "mine", "prompt": "p", "test_list": ["assert f()"]}\n')
    with pytest.raises(ParamsError, match="`prepare.split.rule` is mbpp but problem 'mine' has no task number"):
        load_problems(PrepareParams(benchmark="x", problems_file=str(bad), split=SplitParams(rule="mbpp")))


def test_hub_failure_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ParamsError, match=r"prepare.dataset.*could not be loaded from the hub") as e:
        hub_rows("no-such-owner/no-such-dataset-fractal")
    assert "\n" not in str(e.value)


# --- replay formats -----------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [("codet.jsonl", "codet"), ("humaneval-samples.jsonl", "samples"),
                                       ("evalplus-samples.jsonl", "samples"),
                                       ("bigcode-generations.json", "bigcode"), ("multipl-e", "multipl-e")])
def test_formats_are_detected(name, fmt):
    assert detect_format(F / name) == fmt


def test_task_ids_match_across_spellings():
    assert {task_key(t) for t in ("HumanEval/0", "humaneval_0_has_close_elements", "HumanEval_0")} == {"humaneval/0"}
    assert {task_key(t) for t in ("MBPP/2", "Mbpp/2", "mbpp_2_similar_elements")} == {"mbpp/2"}
    assert task_key("HumanEval/10") != task_key("HumanEval/1")


def test_codet_file_keeps_codets_cut(tmp_path):
    problems = he(prompt_variant="codet")
    gens = replay(problems, F / "codet.jsonl", n=5)
    assert len(gens) == 50 and all(g.stop == CODET_STOP for g in gens)
    raw = json.loads((F / "codet.jsonl").read_text().splitlines()[0])["samples"][0]
    assert gens[0].completion == raw and gens[0].program == problems[0].prompt + cut_at_stop(raw, CODET_STOP)
    path = tmp_path / "codet.jsonl"  # CodeT's file holds mostly cut samples: one that is not
    path.write_text(json.dumps({"prompt": problems[0].prompt, "samples": ["    return True\nprint(1)\n"]}) + "\n")
    assert replay(problems[:1], path, n=1)[0].program == problems[0].prompt + "    return True"


def test_samples_completion_is_appended_and_never_cut():
    problems = he()
    gens = replay(problems, F / "humaneval-samples.jsonl", n=5)
    line = json.loads((F / "humaneval-samples.jsonl").read_text().splitlines()[0])
    assert gens[0].stop == [] and gens[0].program == problems[0].prompt + line["completion"]
    # An explicit stop list is applied and recorded.
    cut = replay(problems, F / "humaneval-samples.jsonl", n=5, stop=["\n    return"])
    assert cut[0].stop == ["\n    return"] and "\n    return" not in cut[0].program[len(problems[0].prompt):]


def test_evalplus_solution_is_the_whole_program():
    gens = replay(he(), F / "evalplus-samples.jsonl", n=5)
    line = json.loads((F / "evalplus-samples.jsonl").read_text().splitlines()[0])
    assert gens[0].program == line["solution"] == gens[0].completion


def test_bigcode_lists_follow_problem_order_and_a_subset_is_listed_once(capsys):
    plus = load_problems(PrepareParams(benchmark="mbpp+", problems_file=str(F / "mbppplus-mini.jsonl")), ROOT)
    gens = replay(plus, F / "bigcode-generations.json", n=4)
    lists = json.loads((F / "bigcode-generations.json").read_text())
    assert [g.program for g in gens if g.problem_id == plus[1].problem_id] == lists[1]
    out = capsys.readouterr().out
    assert out.count("left out") == 1 and "1 of 6 problems" in out and plus[5].problem_id in out


def test_multipl_e_uses_its_prompt_and_stop_tokens(tmp_path):
    problems = he()
    gens = replay(problems, F / "multipl-e", n=5)
    with gzip.open(F / "multipl-e" / "HumanEval_0_has_close_elements.json.gz", "rt") as f:
        doc = json.load(f)
    first = [g for g in gens if g.problem_id == "HumanEval/0"][0]
    assert first.stop == doc["stop_tokens"] and first.program.startswith(doc["prompt"])
    assert not any(s in first.program[len(doc["prompt"]):] for s in doc["stop_tokens"])
    # The compact layout (one entry per distinct text, with a count), in a folder with a results file.
    (tmp_path / "HumanEval_2_truncate_number.json").write_text(json.dumps(
        {"name": "HumanEval_2_truncate_number", "prompt": "P", "stop_tokens": [],
         "completions": [{"text": "a", "count": 2}, {"text": "b", "count": 1}]}))
    (tmp_path / "HumanEval_2_truncate_number.results.json").write_text("{}")
    fmt, recorded = load_recorded(tmp_path)
    assert fmt == "multipl-e" and [r.samples for r in recorded] == [["a", "a", "b"]]


def test_malformed_lines_name_file_and_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{"task_id": "HumanEval/0", "completion": 3}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:2: `completion` or `solution` must be a string"):
        replay(he(), path, n=1)
    path.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{oops\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:2: not valid JSON"):
        replay(he(), path, n=1)
    path.write_text('{"question": 1}\n')
    with pytest.raises(ValueError, match=r"samples.jsonl:1: not a known replay format"):
        replay(he(), path, n=1)
    with pytest.raises(ParamsError, match="generate.replay_format"):
        replay(he(), F / "codet.jsonl", n=1, replay_format="csv")


def test_no_matching_problem_is_an_error_naming_the_format():
    with pytest.raises(ValueError, match=r"no recorded samples for 10 problem.*in samples format"):
        replay(he(), F / "mbpp-samples.jsonl", n=1)


# --- rank.ks ------------------------------------------------------------------------------

def test_rank_ks_auto_follows_n():
    assert rank_ks("auto", 1) == [1]
    assert rank_ks("auto", 5) == [1, 2, 3, 5]
    assert rank_ks("auto", 12) == [1, 2, 3, 5, 10, 12]
    assert rank_ks("auto", 100) == [1, 2, 3, 5, 10, 20, 50, 100]  # the old default list
    assert rank_ks("auto", 200) == [1, 2, 3, 5, 10, 20, 50, 100, 200]
    assert rank_ks("auto", 161) == [1, 2, 3, 5, 10, 20, 50, 100, 161]
    assert rank_ks([1, 7], 200) == [1, 7]
    with pytest.raises(ParamsError, match="rank.ks"):
        rank_ks("all", 10)


def test_default_params_keep_the_recorded_run():
    # The default profile's problems and cut are what they were before the schemas and formats.
    from fractal import params

    assert params.load("generate", ROOT / "params.yaml").stop == "auto"
    assert params.load("rank", ROOT / "params.yaml").ks == "auto"
    problems = load_problems(params.load("prepare", ROOT / "params.yaml"), ROOT)
    assert len(problems) == 164 and ">>>" not in problems[0].prompt
    assert os.path.exists(ROOT / params.load("generate", ROOT / "params.yaml").replay_file)


def test_fractal_check_reads_the_replay_file(tmp_path):
    from fractal.generation.check import check_generate

    path = tmp_path / "samples.jsonl"
    path.write_text('{"task_id": "HumanEval/0", "completion": "x"}\n{oops\n')
    assert check_generate(GenerateParams(replay_file=str(path))).errors == [f"{path}:2: not valid JSON "
                                                                            f"(Expecting property name enclosed in double quotes)"]
    assert check_generate(GenerateParams(replay_file=str(F / "multipl-e"))).errors == []
