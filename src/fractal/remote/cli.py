"""`fractal lambda ...`: what users did by hand on Lambda Cloud, with the same safety as runs.

  types                      instance types: price, regions with capacity now
  launch [--type T] [--region R]   launch (first preference with capacity), wait, pin the host key
  wait INSTANCE              wait until active and reachable over SSH (pins the host key)
  ssh-config [INSTANCE...]   OpenSSH config blocks with the pinned known_hosts (--write: to a file)
  ssh INSTANCE [CMD...]      ssh in (or run CMD) with the pinned host key
  sync INSTANCE [--stage S]  rsync this workspace (files git knows, a stage's deps) to the instance
  status                     instances, uptime, cost so far; warns about what is billing
  terminate INSTANCE... | --all   terminate (--all: every instance fractal launched)
  watchdog [--once]          apply the idle/age limits until no launched instance is left
  double [--dir D]           (dev tool, from a clone) a local stand-in for Lambda (API + sshd) to dry-run remote stages

INSTANCE is an id, a unique id prefix or a name; it may be left out when fractal launched
exactly one instance that is still running.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("fractal.remote.cli")


def add_lambda_parser(sub: Any) -> None:
    """Registers `fractal lambda` on the top-level subparsers (imports nothing heavy)."""
    p = sub.add_parser("lambda", help="Lambda Cloud instances: launch, wait, ssh, sync, status, terminate",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cmds = p.add_subparsers(dest="lambda_command", required=True)

    c = cmds.add_parser("types", help="instance types, prices and regions with capacity")
    c.add_argument("--available", action="store_true", help="only types with capacity somewhere")
    c.set_defaults(func=_guarded(_types))

    c = cmds.add_parser("launch", help="launch an instance (kept until terminated or idle past the limit)")
    c.add_argument("--type", action="append", dest="types", metavar="TYPE",
                   help="instance type, in preference order (repeat); default: lambda.instance_types")
    c.add_argument("--region", action="append", dest="regions", metavar="REGION",
                   help="region, in preference order (repeat); default: lambda.regions, else any with capacity")
    c.add_argument("--no-wait", action="store_true", help="return once launched, without waiting for it to boot")
    c.add_argument("--idle-minutes", type=float, help="terminate after this long without a fractal run, ssh or "
                   "sync (default: lambda.idle_minutes; 0: never)")
    c.add_argument("--max-age-hours", type=float, help="terminate at this age (default: lambda.max_age_hours; 0: never)")
    c.set_defaults(func=_guarded(_launch))

    c = cmds.add_parser("wait", help="wait until an instance is active and answers SSH; pin its host key")
    c.add_argument("instance", nargs="?")
    c.set_defaults(func=_guarded(_wait))

    c = cmds.add_parser("ssh-config", help="OpenSSH config for instances (pinned known_hosts per instance)")
    c.add_argument("instances", nargs="*")
    c.add_argument("--write", action="store_true",
                   help="write $FRACTAL_HOME/lambda/ssh_config and print the Include line for ~/.ssh/config")
    c.set_defaults(func=_guarded(_ssh_config))

    c = cmds.add_parser("ssh", help="ssh to an instance (or run a command there)")
    c.add_argument("instance", nargs="?")
    c.add_argument("command", nargs=argparse.REMAINDER)
    c.set_defaults(func=_guarded(_ssh))

    c = cmds.add_parser("sync", help="rsync this workspace to an instance (what a remote run syncs)")
    c.add_argument("instance", nargs="?")
    c.add_argument("--stage", help="also sync this stage's deps from dvc.yaml")
    c.set_defaults(func=_guarded(_sync))

    c = cmds.add_parser("status", help="instances with uptime and cost so far")
    c.set_defaults(func=_guarded(_status))

    c = cmds.add_parser("terminate", help="terminate instances")
    c.add_argument("instances", nargs="*")
    c.add_argument("--all", action="store_true", help="every instance fractal launched")
    c.set_defaults(func=_guarded(_terminate))

    c = cmds.add_parser("watchdog", help="apply idle/age limits while launched instances live")
    c.add_argument("--once", action="store_true", help="check once and exit")
    c.add_argument("--interval", type=float, help="seconds between checks (default: lambda.watchdog_seconds)")
    c.set_defaults(func=_guarded(_watchdog))

    # The double is test support (tests/support/double.py), not part of the installed package:
    # from a clone this runs that script, its options (--dir, --boot-seconds, --no-rate-limits)
    # passed through as written (no "-" options of its own here, so argparse keeps them all).
    c = cmds.add_parser("double", prefix_chars="+", add_help=False,
                        help="(dev tool, from a clone) run a local stand-in for Lambda (API + loopback sshd) until Ctrl-C")
    c.add_argument("args", nargs="*")
    c.set_defaults(func=_guarded(_double))


def _guarded(handler: Any) -> Any:
    """Every failure becomes one line that says what to do, not a traceback."""
    def run(args: argparse.Namespace) -> int:
        from fractal.remote.api import LambdaAPIError
        from fractal.remote.config import ConfigError
        from fractal.remote.executor import configure_logging
        from fractal.remote.ssh import RemoteError

        configure_logging()
        try:
            # First, so a command's own last line (sync's remote directory) stays last; not for
            # status (it shows cost per instance), ssh-config (its output is a config file),
            # double and watchdog (they talk to no account or run unattended).
            if args.lambda_command not in ("status", "ssh-config", "double", "watchdog"):
                _print_billing()
            return handler(args)
        except (LambdaAPIError, ConfigError, RemoteError) as e:
            for line in str(e).splitlines():  # a ConfigError: one per problem in the executor file
                print(f"fractal lambda {args.lambda_command}: {line}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
    return run


def _print_billing() -> None:
    """The last line of every `fractal lambda` command: what bills now and what it cost so far."""
    from fractal.remote.instances import Registry, client_for
    from fractal.remote.config import load_config

    try:
        client = client_for(load_config().lambda_)
        line = billing_summary(client.instances(), Registry().read())
    except Exception as e:  # noqa: BLE001 (a summary must never turn a success into a failure)
        line = f"could not list what bills now ({str(e)[:300]})"
    print(f"fractal lambda: {line}", file=sys.stderr)


def billing_summary(instances: list[Any], ours: dict[str, Any], now: float | None = None) -> str:
    """'N instance(s) billing, $X so far, $Y/h together', counting cost so far for those
    fractal launched (the API does not say when an instance was launched)."""
    now = time.time() if now is None else now
    live = [i for i in instances if not i.gone]
    if not live:
        return "no instances running: nothing is billing"
    per_hour = sum(i.price_cents_per_hour for i in live) / 100
    known = [i for i in live if i.id in ours]
    so_far = sum(i.price_cents_per_hour / 100 * (now - ours[i.id]["launched_at"]) / 3600 for i in known)
    text = f"{len(live)} instance(s) billing, ${per_hour:.2f}/h together; ${so_far:.2f} so far"
    if len(known) < len(live):
        text += f" for fractal's {len(known)} (the other {len(live) - len(known)}: not launched by fractal, cost unknown)"
    return text + "; `fractal lambda status` lists them"


class _Context:
    """Config, client and registry, made on first use (no API call for `--help`)."""

    def __init__(self) -> None:
        from fractal.remote.config import load_config
        from fractal.remote.instances import Registry, client_for

        self.cfg = load_config()
        self.settings = self.cfg.lambda_
        self.client = client_for(self.settings)
        self.registry = Registry()

    def reap(self) -> None:
        from fractal.remote.instances import reap
        for instance_id, reason in reap(self.client, self.registry):
            print(f"terminated {instance_id}: {reason}", file=sys.stderr)

    def instance(self, ref: str | None) -> Any:
        from fractal.remote.instances import find_instance
        from fractal.remote.ssh import RemoteError

        if ref:
            return find_instance(self.client, ref)
        ours = self.registry.read()
        live = [i for i in self.client.instances() if i.id in ours and not i.gone]
        if len(live) == 1:
            return live[0]
        raise RemoteError(f"name the instance: fractal launched {len(live)} that are running "
                          "(`fractal lambda status` lists them)")

    def target(self, inst: Any) -> Any:
        from fractal.remote.instances import local_ssh_key, target_for
        from fractal.remote.ssh import RemoteError

        if not inst.ready:
            raise RemoteError(f"instance {inst.id} is {inst.status}; `fractal lambda wait {inst.id[:8]}` first")
        key, _ = local_ssh_key(self.settings)
        return target_for(inst, self.settings, key, self.client)


def _types(args: argparse.Namespace) -> int:
    ctx = _Context()
    offers = sorted(ctx.client.instance_types().values(), key=lambda o: o.price_cents_per_hour)
    print(f"{'type':<24} {'$/h':>7}  {'description':<28} regions with capacity")
    for o in offers:
        if args.available and not o.regions_with_capacity:
            continue
        regions = ", ".join(o.regions_with_capacity) or "(none: sold out)"
        print(f"{o.name:<24} {o.price_cents_per_hour / 100:>7.2f}  {o.description:<28} {regions}")
    return 0


def _launch(args: argparse.Namespace) -> int:
    import dataclasses

    from fractal.remote.instances import ensure_ssh_key, launch, local_ssh_key, shielded, start_watchdog, terminate

    ctx = _Context()
    ctx.reap()
    settings = dataclasses.replace(
        ctx.settings, instance_types=args.types or ctx.settings.instance_types,
        regions=args.regions or ctx.settings.regions,
        idle_minutes=ctx.settings.idle_minutes if args.idle_minutes is None else args.idle_minutes,
        max_age_hours=ctx.settings.max_age_hours if args.max_age_hours is None else args.max_age_hours)
    _, public_key = local_ssh_key(settings)
    key_name = ensure_ssh_key(ctx.client, public_key)
    launched = launch(ctx.client, settings, key_name, keep=True, registry=ctx.registry, lease=False)
    if settings.watchdog:
        start_watchdog()
    print(launched.instance_id)
    limits = [text for text in (
        f"after {settings.idle_minutes:g} min without a fractal run, ssh or sync" if settings.idle_minutes else "",
        f"at {settings.max_age_hours:g} h old" if settings.max_age_hours else "") if text]
    when = f"{'; or '.join(limits)} (--idle-minutes, --max-age-hours); or" if limits else "only"
    print(f"it is terminated {when} by `fractal lambda terminate {launched.instance_id[:8]}`", file=sys.stderr)
    if args.no_wait:
        return 0
    args.instance = launched.instance_id
    try:
        return _wait(args, ctx)
    except BaseException:  # it never became usable (or Ctrl-C while booting): do not leave it billing
        with shielded():
            terminate(ctx.client, [launched.instance_id], ctx.registry, "launch did not complete")
        raise


def _wait(args: argparse.Namespace, ctx: _Context | None = None) -> int:
    from fractal.remote.instances import wait_ready, wait_reachable

    ctx = ctx or _Context()
    inst = ctx.instance(args.instance)
    timeout = ctx.settings.boot_timeout_minutes * 60
    inst = wait_ready(ctx.client, inst.id, timeout, ctx.settings.poll_seconds)
    target = ctx.target(inst)
    wait_reachable(target, time.monotonic() + timeout)
    if ctx.settings.autostop_minutes and inst.id in ctx.registry.read():
        from fractal.remote.lambda_run import install_autostop
        install_autostop(target, ctx.cfg.remote, ctx.settings, inst.id, ctx.client.base_url)
    print(f"{inst.id} is active at {inst.ip}; `fractal lambda ssh {inst.id[:8]}` to log in", file=sys.stderr)
    return 0


def _ssh_config(args: argparse.Namespace) -> int:
    from fractal.remote.instances import lambda_home

    ctx = _Context()
    if args.instances:
        instances = [ctx.instance(r) for r in args.instances]
    else:
        ours = ctx.registry.read()
        instances = [i for i in ctx.client.instances() if i.id in ours and i.ready]
    blocks = [ctx.target(i).ssh_config.read_text() for i in instances]
    text = "\n".join(blocks)
    if args.write:
        path = lambda_home() / "ssh_config"
        path.write_text(text)
        print(f"wrote {path}; add this line at the top of ~/.ssh/config:\n  Include {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _ssh(args: argparse.Namespace) -> int:
    """ssh runs as a child, not in place of this process: the session holds the instance for
    as long as it lasts (the idle limit cannot end it), and lets go when it ends."""
    import signal
    import subprocess

    from fractal.remote.instances import holding

    ctx = _Context()
    inst = ctx.instance(args.instance)
    target = ctx.target(inst)
    command = [c for c in args.command if c != "--"]
    argv = ["ssh", *target.ssh_args(), "-o", "BatchMode=no", target.destination(), *command]
    sys.stdout.flush()
    with holding(ctx.registry, inst.id, "ssh"):
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the remote shell
        try:
            return subprocess.call(argv)
        finally:
            signal.signal(signal.SIGINT, old)


def _sync(args: argparse.Namespace) -> int:
    from fractal.dvcfile import StageSpec, load_stage
    from fractal.remote.executor import RemoteRun
    from fractal.remote.instances import holding

    ctx = _Context()
    inst = ctx.instance(args.instance)
    target = ctx.target(inst)
    spec = load_stage(args.stage) if args.stage else StageSpec(name="", deps=[], outs=[])
    run = RemoteRun(target, ctx.cfg.remote, spec, args.stage or "sync", [])
    with holding(ctx.registry, inst.id, "sync"):
        run.conn = target.connect()
        try:
            run.prepare()
            run.push()
        finally:
            run.conn.close()
    print(run.work)
    return 0


def _status(args: argparse.Namespace) -> int:
    from fractal.remote.executor import format_duration

    ctx = _Context()
    ctx.reap()
    ours = ctx.registry.read()
    instances = [i for i in ctx.client.instances() if not i.gone]
    if not instances:
        print("no instances running: nothing is billing")
        return 0
    now = time.time()
    from fractal.remote.instances import _holder_alive, holders
    print(f"{'id':<10} {'name':<24} {'type':<20} {'region':<14} {'status':<9} {'ip':<15} {'uptime':>9} "
          f"{'cost':>8}  note")
    per_hour = 0.0
    for i in instances:
        entry = ours.get(i.id)
        per_hour += i.price_cents_per_hour / 100
        if entry:
            up = now - entry["launched_at"]
            uptime, cost = format_duration(up), f"${i.price_cents_per_hour / 100 * up / 3600:.2f}"
            note = ("adopted (fractal's tags, its record was lost)" if entry.get("adopted")
                    else "kept" if entry.get("keep") else "launched by a run")
            users = [h for h in holders(entry).values() if _holder_alive(h)]
            if users:
                note += ", in use by " + ", ".join(f"{h.get('what', 'run')} (pid {h['pid']})" for h in users)
            elif entry.get("idle_minutes"):
                left = entry["idle_minutes"] - (now - entry["last_used"]) / 60
                note += f", idle; terminated in {max(left, 0):.0f} min"
        else:
            uptime, cost, note = "?", "?", "not launched by fractal (no limits apply)"
        print(f"{i.id[:8]:<10} {i.name[:24]:<24} {i.type_name:<20} {i.region:<14} {i.status:<9} {i.ip or '-':<15} "
              f"{uptime:>9} {cost:>8}  {note}")
    print(f"warning: {billing_summary(instances, ours, now)}; `fractal lambda terminate ID` (or --all for "
          "fractal's) stops them", file=sys.stderr)
    return 0


def _terminate(args: argparse.Namespace) -> int:
    """Goes on past errors (terminate() retries each with backoff) and ends with what is still
    running; the exit code is 1 if anything fractal was asked to stop still runs."""
    from fractal.remote.instances import terminate
    from fractal.remote.ssh import RemoteError

    ctx = _Context()
    if args.all == bool(args.instances):
        raise RemoteError("name instances to terminate, or --all for every instance fractal launched")
    if args.all:
        try:
            ctx.reap()  # also adopts fractal's instances the registry lost
        except Exception as e:  # noqa: BLE001 (terminate what is recorded even if listing fails)
            print(f"fractal lambda terminate: could not check the limits first ({e})", file=sys.stderr)
        ids = [k for k, e in ctx.registry.read().items() if not e.get("pending")]
    else:
        ids = [ctx.instance(r).id for r in args.instances]
    left = terminate(ctx.client, ids, ctx.registry, "asked by `fractal lambda terminate`")
    for instance_id in ids:
        if instance_id not in left:
            print(f"terminated {instance_id}")
    if not left:
        print("nothing fractal launched is running" if args.all else "all named instances are terminating")
        return 0
    ours = ctx.registry.read()
    print(f"still running ({len(left)}): run `fractal lambda terminate --all` again, or terminate them in "
          "Lambda's console (https://cloud.lambda.ai/instances)")
    print(f"  {'id':<34} {'name':<24} {'type':<20} {'$/h':>6}")
    for instance_id in left:
        e = ours.get(instance_id, {})
        print(f"  {instance_id:<34} {e.get('name', '?')[:24]:<24} {e.get('type', '?'):<20} "
              f"{e.get('price_cents_per_hour', 0) / 100:>6.2f}")
    return 1


def _watchdog(args: argparse.Namespace) -> int:
    from fractal.remote.instances import watch
    return watch(once=args.once, sleep=args.interval)


def _double(args: argparse.Namespace) -> int:
    """Replaces this process with tests/support/double.py of the checkout fractal runs from."""
    from pathlib import Path

    script = Path(__file__).resolve().parents[3] / "tests" / "support" / "double.py"
    if not script.is_file():
        print(f"fractal lambda double: {script} not found; the double is a dev tool that runs from a clone of the "
              "repository (pip install -e . there), not from an installed package", file=sys.stderr)
        return 2
    os.execv(sys.executable, [sys.executable, str(script), *args.args])
    return 0  # not reached
