"""The records that flow between stages, and how they are written to disk.

Every stage reads and writes JSON Lines: one record per line. Writes go to a temporary
file beside the target and are renamed into place, so a killed stage never leaves a half
file that DVC would hash.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, TypeVar

from fractal.errors import UserError


class RecordError(UserError, ValueError):
    """A line of a JSON Lines file that is not valid JSON or not the record it should be."""


class MissingInput(UserError, FileNotFoundError):
    """An input file that is not there (its stage has not run, or the path is wrong)."""


@dataclasses.dataclass
class Problem:
    problem_id: str
    benchmark: str
    split: str  # train / validation / test (or prompt for MBPP's few-shot problems)
    prompt: str  # what the model is shown (HumanEval: the function header + docstring)
    entry_point: str  # the function the tests call
    tests: str  # Python source; calling check(candidate) or plain asserts (see test_style)
    reference: str  # a reference solution: a complete program
    test_style: str = "check"  # "check": tests define check(candidate); "asserts": top-level asserts
    text: str = ""  # the natural-language task (MBPP), empty when the prompt is code


@dataclasses.dataclass
class Generation:
    problem_id: str
    sample: int  # index of the sample within its problem, 0..N-1
    completion: str  # raw text the model wrote
    program: str  # the complete program that will be run (prompt + completion, post-processed)
    backend: str
    model: str
    logprob: float | None = None  # sum of token log-probabilities, where the backend gives them
    n_tokens: int | None = None
    stop: list[str] | None = None  # the stop sequences the completion was cut at (None: not recorded)


STATUSES = ("passed", "failed", "error", "syntax_error", "timeout", "memory", "output_limit", "crashed")


@dataclasses.dataclass
class Label:
    problem_id: str
    sample: int
    status: str  # one of STATUSES
    passed: bool
    # Seconds of wall time the candidate ran: a timing, not a result. It differs between
    # machines and runs, so data/labels.jsonl leaves it out (its md5 then depends only on the
    # inputs and params) and the label stage writes it to timings/label.jsonl instead.
    duration: float = dataclasses.field(default=0.0, metadata={"timing": True})
    detail: str = ""  # short error detail, e.g. the exception type


@dataclasses.dataclass
class Score:
    problem_id: str
    sample: int
    score: float  # the critic's probability that the candidate passes
    fold: int = 0  # which cross-fitting fold's critic gave the score


R = TypeVar("R")


def read_jsonl(path: str | os.PathLike, cls: type[R] | None = None) -> list[Any]:
    """Reads a JSON Lines file; with cls, each line becomes that dataclass.

    Errors name the file and line, and say which fields are wrong.
    """
    out = []
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: no such file (has the stage that writes it run? try `dvc repro`)")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line.rstrip("\r\n"))  # so that a column counts within the line
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno}); fix or remove "
                                  f"that line") from None
            if cls is not None:
                if not isinstance(obj, dict):
                    raise RecordError(f"{path}:{lineno}: not a {cls.__name__} record (a JSON object), got "
                                      f"{type(obj).__name__}; fix or remove that line")
                try:
                    obj = cls(**obj)
                except TypeError as e:
                    fields = ", ".join(f.name for f in dataclasses.fields(cls))
                    raise RecordError(f"{path}:{lineno}: not a {cls.__name__} record ({_why(e)}); its keys are "
                                      f"{fields}") from None
            out.append(obj)
    return out


def _why(e: TypeError) -> str:
    # "Generation.__init__() got an unexpected keyword argument 'x'" -> "unexpected keyword argument 'x'"
    text = str(e)
    return text.split("() ", 1)[1] if "() " in text else text


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path`; renames it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; outputs are for everyone to read
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty temporary folder beside `path`; on success it takes `path`'s place in
    one step (move_into_place), and the old one is deleted. On failure or a kill the old
    folder stays and the temporary one is removed (or, after a kill, left as a dot-folder
    the next call does not reuse)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; outputs are for everyone to read
        move_into_place(tmp, path)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def move_into_place(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Moves src (a file, a folder or a link) to dst, on the same filesystem, whatever is at
    dst: readers see the old one or the new one, never none or half (Linux renameat2
    RENAME_EXCHANGE), and the old one is then deleted (a link is removed, never what it
    points to). For a folder already written elsewhere, as fetched outputs are; atomic_folder
    writes one in place. Where the exchange is not available (another OS, an old kernel) the
    old one is renamed aside first: a kill between the two renames leaves it beside dst
    under a `.old` name."""
    src, dst = Path(src), Path(dst)
    if os.path.lexists(dst) and _exchange(src, dst):
        _remove(src)  # now the old one
        return
    old = None
    if os.path.lexists(dst):
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old / dst.name)
    os.replace(src, dst)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swaps two paths atomically (renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def timing_fields(cls: type) -> tuple[str, ...]:
    """The fields of a record class that are timings (metadata {"timing": True}): measured,
    not computed, so they differ between machines and runs."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("timing"))


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Writes records (dataclasses or dicts) atomically; returns how many were written.
    A dataclass's timing fields are left out, so the file's hash is the same on every machine
    for the same inputs (write_timings keeps them)."""
    n = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for r in records:
            if dataclasses.is_dataclass(r):
                obj = dataclasses.asdict(r)
                for name in timing_fields(type(r)):
                    del obj[name]
            else:
                obj = r
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_timings(path: str | os.PathLike, records: list[Any], keys: tuple[str, ...] = ("problem_id", "sample")) -> int:
    """Writes each record's `keys` and timing fields as JSON Lines: the measurements that
    write_jsonl leaves out of the hashed output, in a file nothing downstream depends on."""
    return write_jsonl(path, ({**{k: getattr(r, k) for k in keys},
                               **{t: getattr(r, t) for t in timing_fields(type(r))}} for r in records))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes one JSON document atomically (metrics files)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
