"""The atomic writers every output goes through: a file or a folder is the old one or the
new one, never half of either."""
from __future__ import annotations

import os

import pytest

from fractal import records
from fractal.records import atomic_folder, atomic_path, move_into_place


def test_atomic_path_replaces_only_on_success(tmp_path):
    out = tmp_path / "sub" / "x.json"
    with atomic_path(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new" and oct(out.stat().st_mode & 0o777) == "0o644"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert out.read_text() == "new" and os.listdir(out.parent) == ["x.json"]


def test_atomic_folder_swaps_the_whole_folder_or_nothing(tmp_path):
    out = tmp_path / "models" / "critic"
    with atomic_folder(out) as tmp:
        (tmp / "a.pt").write_text("1")
    assert os.listdir(out) == ["a.pt"] and oct(out.stat().st_mode & 0o777) == "0o755"
    with atomic_folder(out) as tmp:
        (tmp / "b.pt").write_text("2")
    assert os.listdir(out) == ["b.pt"]  # the old folder's files are gone with it
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "c.pt").write_text("half")
        raise RuntimeError("killed")
    assert os.listdir(out) == ["b.pt"] and os.listdir(out.parent) == ["critic"]  # no temporary left


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename aside"])
def test_move_into_place_takes_the_place_of_whatever_is_there(tmp_path, monkeypatch, exchange):
    # As the remote executor brings fetched outputs in: a folder where a file was, a file
    # where a folder was, a folder where a link to one was (the link goes, not its target);
    # with the one-step exchange and with its fallback (another OS, an old kernel).
    if not exchange:
        monkeypatch.setattr(records, "_exchange", lambda a, b: False)
    staging, work = tmp_path / "staging", tmp_path / "work"
    staging.mkdir()
    work.mkdir()
    (staging / "model").mkdir()
    (staging / "model" / "w.pt").write_text("new")
    (work / "model").write_text("an old file")
    move_into_place(staging / "model", work / "model")
    assert os.listdir(work / "model") == ["w.pt"] and not (staging / "model").exists()

    (staging / "report.json").write_text("{}")
    move_into_place(staging / "report.json", work / "model")
    assert (work / "model").read_text() == "{}"

    target = tmp_path / "cache" / "dir"
    target.mkdir(parents=True)
    (target / "keep").write_text("the cache's")
    (work / "linked").symlink_to(target)
    (staging / "linked").mkdir()
    move_into_place(staging / "linked", work / "linked")
    assert not (work / "linked").is_symlink() and os.listdir(work / "linked") == []
    assert (target / "keep").read_text() == "the cache's"
    assert sorted(os.listdir(work)) == ["linked", "model"] and os.listdir(staging) == []  # nothing old left
