"""A copy of this repository in a temporary folder, as a fresh clone would have it."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def copy_repo(dst: Path) -> None:
    """The files git would hand a fresh clone, plus untracked files it does not ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    for rel in (".dvc/config", ".dvcignore"):  # in case they are not tracked yet
        if (REPO / rel).is_file() and not (dst / rel).exists():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dst / rel)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    if not (dst / ".dvc").is_dir():
        subprocess.run(["dvc", "init", "-q"], cwd=dst, check=True)


def shrink_default_profile(repo: Path) -> None:
    """params.yaml of the default profile, shrunk to 12 problems x 10 samples and a short
    3-fold training, so a whole `dvc repro` takes about a minute."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["limit"] = 12
    params["generate"]["n"] = 10
    params["train"].update(folds=3, epochs=4, patience=2, batch_size=16)
    params["rank"].update(ks=[1, 2, 5, 10], bootstrap=200)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

