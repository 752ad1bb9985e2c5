"""The atomic writers every output goes through: a file or a folder is the old one or the
new one, never half of either."""
from __future__ import annotations

import os

import pytest

from fractal.records import atomic_folder, atomic_path


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
