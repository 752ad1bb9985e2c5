"""A content-addressed store of labels, so a rerun executes only what is new.

Keyed by sha256 of (labeler version, program, entry point, tests, reference, limits).
SQLite in WAL mode: two label stages can read and write it at once, and every result is
committed within about a second, so a killed stage resumes where it stopped.

Each verdict records how it was obtained (`isolation`: bwrap, or none for a run that let
candidates run unconfined, where one can forge anything). A confined run takes only
confined verdicts and reruns the rest, replacing them; an unconfined run takes either.
Entries from before the column was added count as unconfined.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import time
from pathlib import Path
from typing import Callable, Protocol

from fractal.params import LabelParams
from fractal.records import Generation, Problem

# Bump when a change to the labeler can change a label, so old entries are not reused.
LABELER_VERSION = "fractal-execution-3"  # 3: problem statuses, no-reference recording


# The label params that can change a verdict, listed once: they key the cache, and they
# are the label stage's params in dvc.yaml (with label.isolation, which changes no verdict
# but the stage's metrics; tests/test_execution.py checks that the two agree). Not among
# them: workers, isolation, cache_dir, the preloads and hide_paths.
VERDICT_PARAMS = ("timeout_factor", "timeout_floor", "timeout_cap", "timeout_cpu_floor", "timeout_calls_cpu_floor",
                  "memory_mb", "max_output_bytes", "max_result_bytes", "max_processes", "scratch_mb",
                  "recursion_limit")


def limits_of(params: LabelParams) -> dict:
    """The params that can change a label (VERDICT_PARAMS), by name."""
    return {name: getattr(params, name) for name in VERDICT_PARAMS}


def label_key(problem: Problem, program: str, limits: dict) -> str:
    doc = [LABELER_VERSION, problem.entry_point, problem.test_style, problem.tests, problem.reference, program, limits]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()


class Store(Protocol):
    """A content-addressed store of results: LabelCache, probe.ProbeCache."""

    def get_many(self, keys: list[str]) -> dict: ...

    def close(self) -> None: ...


def cached_or_run(stage: str, keys: list[str], generations: list[Generation], cache: Store,
                  run: Callable[[list[tuple[str, Generation]]], dict], cache_note: str = "") -> dict:
    """Each distinct key's result (keys[i] is generations[i]'s): the cache's where it has
    one, else `run`'s, which gets every other key once, with the first generation that has
    it, as (key, generation) pairs. Says on stderr how many there are of each; closes the
    cache, whose writes `run` makes as it goes (so a killed stage resumes)."""
    first_of: dict[str, Generation] = {}
    for key, g in zip(keys, generations):
        first_of.setdefault(key, g)
    try:
        known = cache.get_many(list(first_of))
        todo = [(key, g) for key, g in first_of.items() if key not in known]
        print(f"{stage}: {len(generations)} candidates, {len(first_of)} distinct programs, {len(known)} in the "
              f"cache{cache_note}, {len(todo)} to run", file=sys.stderr)
        if todo:
            known.update(run(todo))
    finally:
        cache.close()
    return known


class LabelCache:
    def __init__(self, cache_dir: str | Path, isolation: str):
        if isolation not in ("bwrap", "none"):
            raise ValueError(f"LabelCache: isolation is {isolation!r}; bwrap or none")
        self.isolation = isolation
        path = Path(cache_dir)
        path.mkdir(parents=True, exist_ok=True)
        self.path = path / "labels.sqlite"
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS labels (key TEXT PRIMARY KEY, status TEXT NOT NULL,"
            " detail TEXT NOT NULL, duration REAL NOT NULL, isolation TEXT NOT NULL DEFAULT 'none')"
        )
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(labels)")}
        if "isolation" not in columns:  # a cache from before: its verdicts' confinement is unknown
            try:
                self.db.execute("ALTER TABLE labels ADD COLUMN isolation TEXT NOT NULL DEFAULT 'none'")
            except sqlite3.OperationalError:  # another stage added it meanwhile
                pass
        self.pending: list[tuple[str, str, str, float, str]] = []
        self.last_flush = time.monotonic()

    def get_many(self, keys: list[str]) -> dict[str, tuple[str, str, float]]:
        out = {}
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            confined = " AND isolation = 'bwrap'" if self.isolation == "bwrap" else ""
            rows = self.db.execute(
                f"SELECT key, status, detail, duration FROM labels WHERE key IN ({','.join('?' * len(chunk))})"
                + confined, chunk
            )
            for key, status, detail, duration in rows:
                out[key] = (status, detail, duration)
        return out

    def put(self, key: str, status: str, detail: str, duration: float) -> None:
        self.pending.append((key, status, detail, duration, self.isolation))
        if len(self.pending) >= 500 or time.monotonic() - self.last_flush > 1.0:
            self.flush()

    def flush_if_due(self) -> None:
        if self.pending and time.monotonic() - self.last_flush > 0.5:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with self.db:
                self.db.executemany("INSERT OR REPLACE INTO labels (key, status, detail, duration, isolation)"
                                    " VALUES (?, ?, ?, ?, ?)", self.pending)
            self.pending.clear()
        self.last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
        self.db.close()
