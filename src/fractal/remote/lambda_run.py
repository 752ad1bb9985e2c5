"""A stage on a Lambda instance: reap, acquire (reuse or launch), run, release, report cost.

Whatever happens after the launch (the stage fails, the connection cannot be restored, Ctrl-C,
SIGTERM from `dvc queue kill`), the `finally` below terminates what this run launched unless
lambda.keep_instance says otherwise, with further signals ignored until that is done.
"""
from __future__ import annotations

import logging
import sys
import time

from fractal.remote.config import ExecutorConfig
from fractal.remote.dvcfile import load_stage
from fractal.remote.executor import RemoteRun, _duration
from fractal.remote.instances import Registry, acquire, client_for, reap, release, shielded, target_for, wait_reachable

log = logging.getLogger(__name__)


def run_on_lambda(stage: str, argv: list[str], cfg: ExecutorConfig) -> int:
    settings = cfg.lambda_for(stage)
    spec = load_stage(stage)  # before anything bills: a stage fractal cannot read fails here
    client = client_for(settings)
    registry = Registry()
    reap(client, registry)
    acquired = acquire(client, settings, registry)
    rc: int | None = None
    try:
        target = target_for(acquired.instance, settings, acquired.ssh_key, client)
        if acquired.launched:
            wait_reachable(target, time.monotonic() + settings.boot_timeout_minutes * 60)
        rc = RemoteRun(target, cfg.remote, spec, stage, argv).execute()
        return rc
    finally:
        with shielded():
            release(client, acquired, registry)
            inst = acquired.instance
            seconds = time.time() - acquired.started
            cost = inst.price_cents_per_hour / 100 * seconds / 3600
            fate = ("launched for it and terminated" if acquired.launched and not acquired.keep
                    else "still running: `fractal lambda terminate " + inst.id[:8] + "` when done")
            interrupted = isinstance(sys.exc_info()[1], KeyboardInterrupt)
            outcome = "finished" if rc == 0 else "stopped" if interrupted else "failed"
            log.info("%s %s on %s (%s, %s) after %s: about $%.2f at $%.2f/h; instance %s", stage, outcome,
                     inst.name or inst.id[:8], inst.type_name, inst.region, _duration(seconds), cost,
                     inst.price_cents_per_hour / 100, fate)
