"""The `fractal` command.

  fractal run STAGE      run stages/STAGE.py where the executor says (local by default),
                         recorded as an MLflow run; this is what dvc.yaml calls
  fractal profile NAME   use profiles/NAME.yaml as params.yaml
  fractal check [FILE]   validate params.yaml or a profile without running anything
  fractal lambda ...     Lambda Cloud instances: launch, wait, ssh-config, sync, status, terminate
  fractal lineage ...    where a metric or checkpoint came from
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from fractal.remote.config import ConfigError, load_config
    from fractal.remote.executor import run_stage  # local, ssh or lambda: .fractal/executor.yaml, FRACTAL_EXECUTOR
    from fractal.tracking import tracked

    try:
        executor = load_config().executor_for(args.stage)
    except ConfigError:
        executor = "?"  # run_stage reports the problem
    return tracked(args.stage, lambda: run_stage(args.stage, args.args), executor)


def _profile(args: argparse.Namespace) -> int:
    profiles = sorted(p.stem for p in Path("profiles").glob("*.yaml") if not p.stem.endswith(".executor"))
    src = Path("profiles") / f"{args.name}.yaml"
    if not src.exists():
        print(f"fractal profile: no profiles/{args.name}.yaml; profiles: {', '.join(profiles)}", file=sys.stderr)
        return 2
    from fractal import params

    for section in params.SECTIONS:  # refuse a profile with a typo before it replaces anything
        params.load(section, src)
    Path("params.yaml").write_text(src.read_text())
    print(f"params.yaml is now profiles/{args.name}.yaml; `dvc repro` reruns what it changes")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Validates a params file without running anything (no GPU or download needed)."""
    from fractal import params
    from fractal.generation.check import check_generate
    from fractal.generation.model_source import check_model_spec

    errors, notes, loaded = [], [], {}
    for section in params.SECTIONS:
        try:
            loaded[section] = params.load(section, args.params)
        except params.ParamsError as e:
            errors.append(str(e))
    if "generate" in loaded:
        found = check_generate(loaded["generate"])
        errors += found.errors
        notes += found.notes
    if "train" in loaded and loaded["train"].backbone != "minilm":
        problem = check_model_spec(loaded["train"].backbone, "train.backbone")
        errors += [problem] if problem else []
    for note in notes:
        print(f"note: {note}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"{args.params}: {'ok' if not errors else f'{len(errors)} error(s)'}")
    return 1 if errors else 0


def _lineage(args: argparse.Namespace) -> int:
    from fractal.tracking import TrackingError, lineage

    try:
        print(lineage(args.target))
    except TrackingError as e:
        print(f"fractal lineage: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # MLflow's own errors (no such run or model version) are clear enough
        print(f"fractal lineage: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fractal", description="best-of-N code selection with a learned critic")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one pipeline stage (what dvc.yaml calls)")
    run.add_argument("stage", help="prepare | generate | label | train | rank")
    run.add_argument("args", nargs=argparse.REMAINDER, help="passed on to the stage script")
    run.set_defaults(func=_run)
    profile = sub.add_parser("profile", help="copy profiles/NAME.yaml over params.yaml")
    profile.add_argument("name")
    profile.set_defaults(func=_profile)
    check = sub.add_parser("check", help="validate params.yaml (or a profile) without running anything")
    check.add_argument("params", nargs="?", default="params.yaml")
    check.set_defaults(func=_check)
    where = sub.add_parser("lineage", help="where a metric, output or registered critic came from")
    where.add_argument("target", help="metrics/rank.json[:KEY], an output path (models/critic), "
                                      "models:/critic/N, or an MLflow run id")
    where.set_defaults(func=_lineage)
    from fractal.remote.cli import add_lambda_parser  # `fractal lambda ...`
    add_lambda_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
