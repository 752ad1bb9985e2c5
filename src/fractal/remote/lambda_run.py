"""A stage on a Lambda instance: reap, acquire (reuse or launch), run, release, report cost.

Whatever happens after the launch (the stage fails, the connection cannot be restored, Ctrl-C,
SIGTERM from `dvc queue kill`), the `finally` below terminates what this run launched unless
lambda.keep_instance says otherwise, with further signals ignored until that is done. While
the stage runs, this run is one holder of the instance (with a heartbeat); others may hold it
too (`dvc queue start -j 2` on one named instance), and it is idle only when none is left.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import shlex
import sys
import time

from fractal.dvcfile import StageSpec, load_stage
from fractal.remote.config import RAY_ADDRESS_ENV, ExecutorConfig, LambdaSettings, RemoteSettings
from fractal.remote.executor import RemoteRun, format_duration, remote_script
from fractal.remote.instances import (Acquired, Registry, acquire, acquire_more, client_for, holding, reap, release,
                                      shielded, target_for, wait_reachable)
from fractal.remote.ray_cluster import RayCluster
from fractal.remote.ssh import Target

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Billing:
    """What one stage's run on Lambda cost: what tracking.record_stage logs to MLflow."""
    instance_id: str  # of the (head) instance the stage ran on
    instance_type: str
    region: str
    seconds: float  # from acquiring the instance (its launch, for one launched by the run) to release
    price_cents_per_hour: int  # of all the run's instances together
    nodes: int = 1  # instances (lambda.nodes)

    @property
    def cost_usd(self) -> float:
        return self.price_cents_per_hour / 100 * self.seconds / 3600


last_billing: Billing | None = None  # set by run_on_lambda, read by fractal.tracking in the same process


def run_on_lambda(stage: str, argv: list[str], cfg: ExecutorConfig) -> int:
    global last_billing
    settings = cfg.lambda_for(stage)
    spec = load_stage(stage)  # before anything bills: a stage fractal cannot read fails here
    client = client_for(settings)
    registry = Registry()
    reap(client, registry)
    acquired = acquire(client, settings, registry)
    more: list[Acquired] = []  # the other nodes of a Ray cluster (lambda.nodes > 1)
    rc: int | None = None
    try:
        with contextlib.ExitStack() as held:
            held.enter_context(holding(registry, acquired.instance.id, "run", token=acquired.holder or None))
            if settings.nodes > 1:
                more = acquire_more(client, settings, registry, acquired.instance, settings.nodes - 1)
                for other in more:
                    held.enter_context(holding(registry, other.instance.id, "run", token=other.holder))
            targets = []
            for each in (acquired, *more):
                target = target_for(each.instance, settings, each.ssh_key, client)
                if each.launched:
                    wait_reachable(target, time.monotonic() + settings.boot_timeout_minutes * 60)
                    if settings.autostop_minutes:
                        install_autostop(target, cfg.remote, settings, each.instance.id, client.base_url)
                targets.append(target)
            env = {}
            if more:
                cluster = RayCluster([(t, a.instance.private_ip or a.instance.ip or "") for t, a in
                                      zip(targets, (acquired, *more))], cfg.remote, spec, stage, settings)
                held.callback(_stop_shielded, cluster)
                cluster.start()
                env[RAY_ADDRESS_ENV] = cluster.address
            rc = RemoteRun(targets[0], cfg.remote, spec, stage, argv, env=env).execute()
            return rc
    finally:
        with shielded():
            left = [i for each in (acquired, *more) for i in release(client, each, registry)]
            inst = acquired.instance
            seconds = time.time() - acquired.started
            price = sum(each.instance.price_cents_per_hour for each in (acquired, *more))
            last_billing = Billing(inst.id, inst.type_name, inst.region, seconds, price, nodes=1 + len(more))
            mine = acquired.launched and not acquired.keep
            if left:
                fate = "STILL RUNNING (terminate failed): `fractal lambda terminate --all`"
            elif more:
                fate = (f"{1 + len(more)} instances ({', '.join(e.instance.id[:8] for e in (acquired, *more))}) "
                        + ("launched for it and terminated" if mine and all(e.launched for e in more)
                           else "released: those it launched terminated, the others still running"))
            else:
                fate = ("instance launched for it and terminated" if mine
                        else "instance still running: `fractal lambda terminate " + inst.id[:8] + "` when done")
            interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
            outcome = "finished" if rc == 0 else "stopped" if interrupted else "failed"
            log.info("%s %s on %s (%s, %s) after %s: about $%.2f at $%.2f/h; %s", stage, outcome,
                     inst.name or inst.id[:8], inst.type_name, inst.region, format_duration(seconds),
                     last_billing.cost_usd, price / 100, fate)


def _stop_shielded(cluster: RayCluster) -> None:
    with shielded():
        cluster.stop()


def install_autostop(target: Target, remote: RemoteSettings, settings: LambdaSettings, instance_id: str,
                     api_url: str) -> None:
    """Starts autostop.py on the instance, detached, with the API key on its stdin only (see
    autostop.py for the trade-off). Its log: <remote.root>/autostop/<instance id>/log there."""
    from fractal.remote.api import load_api_key

    key, _ = load_api_key()
    run = RemoteRun(target, remote, StageSpec(name="", deps=[], outs=[]), "autostop", [])
    try:
        run.conn = run._connect()
        run.prepare()
        where = f"{run.root}/autostop/{instance_id}"
        poll = max(0.5, min(60.0, settings.autostop_minutes * 60 / 4))
        args = shlex.join([api_url, instance_id, run.root, f"{settings.autostop_minutes:g}",
                           f"{settings.max_age_hours:g}", f"{poll:g}"])
        # `read` and `printf` are shell builtins: the key is on no command line, in no file
        r = run.command(f"bash -c {shlex.quote(_autostop_launcher(where, remote.python, args))}",
                        stdin=remote_script("autostop.py") + "\0" + key + "\n")
        if r.exited != 0:
            log.warning("%s: could not start the on-instance autostop (%s); only the watchdog here applies the "
                        "limits", target.label, r.stderr.strip())
        else:
            log.info("%s: on-instance autostop after %g min without a stage (lambda.autostop_minutes; it holds "
                     "your API key in memory there)", target.label, settings.autostop_minutes)
    finally:
        run.close()


def _autostop_launcher(where: str, python: str, args: str) -> str:
    """A shell script reading `<autostop.py source>\\0<key>\\n` from stdin: the source goes to a
    file, the key into a variable and from there to the detached process's stdin."""
    q = shlex.quote
    return (f"set -e; umask 077; mkdir -p {q(where)}; cd {q(where)}; "
            "IFS= read -r -d '' SRC || true; printf '%s' \"$SRC\" > autostop.py; IFS= read -r KEY; "
            f"printf '%s\\n' \"$KEY\" | nohup setsid {python} autostop.py {args} > log 2>&1 & echo started")
