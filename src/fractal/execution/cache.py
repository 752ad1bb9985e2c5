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
import time
from pathlib import Path

from fractal.params import LabelParams
from fractal.records import Problem

# Bump when a change to the labeler can change a label, so old entries are not reused.
LABELER_VERSION = "fractal-execution-3"  # 3: problem statuses, no-reference recording


def limits_of(params: LabelParams) -> dict:
    """The params that can change a label (not workers, isolation or cache_dir)."""
    return {
        "timeout_factor": params.timeout_factor,
        "timeout_floor": params.timeout_floor,
        "timeout_cpu_floor": params.timeout_cpu_floor,
        "timeout_calls_cpu_floor": params.timeout_calls_cpu_floor,
        "timeout_cap": params.timeout_cap,
        "memory_mb": params.memory_mb,
        "max_output_bytes": params.max_output_bytes,
        "max_result_bytes": params.max_result_bytes,
        "max_processes": params.max_processes,
        "scratch_mb": params.scratch_mb,
        "recursion_limit": params.recursion_limit,
    }


def label_key(problem: Problem, program: str, limits: dict) -> str:
    doc = [LABELER_VERSION, problem.entry_point, problem.test_style, problem.tests, problem.reference, program, limits]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode("utf-8", "surrogatepass")).hexdigest()


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
