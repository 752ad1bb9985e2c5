"""The `fractal` command.

  fractal run STAGE      run stages/STAGE.py where the executor says (local by default),
                         recorded as an MLflow run; this is what dvc.yaml calls
  fractal lambda ...     Lambda Cloud instances: launch, wait, ssh-config, sync, status, terminate
  fractal lineage ...    where a metric or checkpoint came from
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    script = Path("stages") / f"{args.stage}.py"
    if not script.exists():
        print(f"fractal run: {script} not found (run from the repository root; stages: "
              f"{', '.join(sorted(p.stem for p in Path('stages').glob('*.py')))})", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(script), *args.args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fractal", description="best-of-N code selection with a learned critic")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one pipeline stage (what dvc.yaml calls)")
    run.add_argument("stage", help="prepare | generate | label | train | rank")
    run.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the stage script")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
