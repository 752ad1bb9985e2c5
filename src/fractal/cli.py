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
import os
import sys
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    """Checks that this is a repository, every params value and the MLflow store, in that
    order and before any work; then runs the stage. An error the user can fix is one line."""
    from fractal import params
    from fractal.errors import DEBUG_ENV, UserError, debug
    from fractal.remote.config import ConfigError, load_config

    if args.traceback:
        os.environ[DEBUG_ENV] = "1"  # the stage's own process keeps its traceback too
    script = Path("stages") / f"{args.stage}.py"
    if not script.is_file():  # before anything writes here (the MLflow store, .fractal/)
        known = ", ".join(sorted(p.stem for p in Path("stages").glob("*.py"))) or "none here"
        print(f"fractal run: {script} not found in {Path.cwd()}: run it from the repository root, where dvc.yaml "
              f"is (stages: {known})", file=sys.stderr)
        return 2
    try:
        config = load_config()
        executor = config.executor_for(args.stage)
        where = config.executor_for
    except ConfigError:
        executor, where = "?", (lambda section: "local")  # run_stage reports the problem
    try:
        if args.stage in params.SECTIONS:  # a pipeline stage: every value of the file, before any work; the files
            # and models its own section names (another section's may be outputs of the stages before it)
            _, errors = params.validate(params.PARAMS_FILE,
                                        machine=lambda section: section == args.stage and where(section) == "local")
            if errors:
                raise params.ParamsError(errors)
        from fractal.dispatch import run_stage  # local, ssh or lambda: .fractal/executor.yaml, FRACTAL_EXECUTOR
        from fractal.tracking import tracked  # imports MLflow only when tracking, in a thread while the stage runs

        return tracked(args.stage, lambda: run_stage(args.stage, args.args), executor)
    except UserError as e:
        if debug():
            raise
        for line in str(e).splitlines():
            print(f"fractal run {args.stage}: {line}", file=sys.stderr)
        return 2


def _profile(args: argparse.Namespace) -> int:
    profiles = sorted(p.stem for p in Path("profiles").glob("*.yaml") if not p.stem.endswith(".executor"))
    src = Path("profiles") / f"{args.name}.yaml"
    if not src.exists():
        print(f"fractal profile: no profiles/{args.name}.yaml; profiles: {', '.join(profiles)}", file=sys.stderr)
        return 2
    from fractal import params

    _, errors = params.validate(src, machine=False)  # refuse a profile with a typo before it replaces anything
    if errors:  # (not the files and models it names: those are checked where its stages run)
        for error in errors:
            print(f"fractal profile: {error}", file=sys.stderr)
        return 2
    Path("params.yaml").write_text(src.read_text())
    print(f"params.yaml is now profiles/{args.name}.yaml; `dvc repro` reruns what it changes")
    return 0


def _check(args: argparse.Namespace) -> int:
    """Validates a params file without running anything (no GPU or download needed): every
    value, and the files and models it names for the stages that run on this machine."""
    from fractal import params
    from fractal.generation.check import check_generate
    from fractal.generation.model_source import check_model_spec
    from fractal.remote.config import ConfigError, load_config

    plan = Path(args.params).with_suffix(".executor.yaml")  # a profile's own executor file, if it has one
    try:
        where = load_config(plan if Path(args.params).parent.name == "profiles" and plan.is_file() else None).executor_for
    except ConfigError as e:  # one line per problem in the executor file
        for line in str(e).splitlines():
            print(f"note: {line}")
        print("note: checking as if every stage ran here")
        where = lambda section: "local"  # noqa: E731
    loaded, errors = params.validate(args.params, machine=lambda section: where(section) == "local")
    notes = [f"{section} runs on the {where(section)} executor: its files and models are checked there, at its start"
             for section in params.SECTIONS if where(section) != "local"]
    if "generate" in loaded:
        found = check_generate(loaded["generate"])
        errors += found.errors
        notes += found.notes
    if "train" in loaded and where("train") != "local" and loaded["train"].backbone != params.PACKAGED_BACKBONE:
        problem = check_model_spec(loaded["train"].backbone, "train.backbone")  # its spelling, at least
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
    run.add_argument("--traceback", action="store_true",
                     help="show the traceback of an error the user can fix (also FRACTAL_DEBUG=1)")
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
