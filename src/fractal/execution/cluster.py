"""Label and probe on a Ray cluster, with the same outputs as a local run.

    execute = executor_for("label")          # None: no cluster named, run here
    labels = label_candidates(problems, generations, p, execute=execute)

Where a stage runs is outside the tracked params (remote/config.py), and so is how wide it
runs: the cluster is named by FRACTAL_RAY_ADDRESS or `ray: {address: HOST:PORT}` in the
untracked .fractal/executor.yaml, never by params.yaml, so dvc.lock and every output are
those of a local run.

How it runs. The driver (the stage's process) does what it does locally: it dedupes the
programs and looks them up in the cache (labeler.py, probe.py). What the cache lacks is cut
into batches of distinct programs, whole problems together where they fit (a worker then
receives a problem's test inputs once, and the judge's memo of identical outputs works
inside the batch), and each batch is one Ray task of one CPU. The task runs the stage's own
local `_execute` on its node, with one of fractal's sandboxed warm workers, in bubblewrap: a
node without it refuses, as a local run does, and the stage fails with that node's one-line
error. Batches of programs that import a heavy package (torch...) take no CPU of Ray's count,
as the local pool starts its heavy workers on top of one light worker per core. A label's
time limit derives from the reference's measured runtime: the driver times each reference
once and every node uses that timing, so no node's load changes a label. The task returns
its records; the driver puts them in its cache as each batch finishes, and the stage
writes its outputs exactly as locally. At most `ray.inflight` tasks are outstanding
(backpressure: the driver and the object store hold only that many batches), and one
progress bar counts programs over the whole cluster.

The nodes run the driver's own fractal: the package travels with the job (Ray's
runtime_env `py_modules`), so no node labels with another labeler version. They need the
same Python dependencies, and bubblewrap.

Faults. A batch whose node dies, or whose Ray worker is killed, is submitted again (Ray
schedules it on a node that is alive) up to `_MAX_RERUNS` times; a batch's records come
back once and whole, so no candidate is lost or recorded twice. A killed driver: every
finished batch is in the label cache (committed about every second), so a rerun runs only
the rest. The driver's own Ray node dying (its local raylet: every batch then fails the same
way) stops the stage at once with a line naming the address, instead of rerunning batches that
cannot run. An address that does not answer fails within `_CONNECT_TIMEOUT` seconds with a
line naming it.

Where it stops: the batch is the unit of rerun, so a lost node costs its running batches
again; each task starts its own warm worker (about 0.2 s here: docs/ray.md), which batches
of hundreds of programs amortize; the nodes keep no cache of their own (the driver's is
the one cache), and Ray Client addresses (ray://) are not supported.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

import fractal
from fractal.errors import UserError
from fractal.params import LabelParams, ProbeParams
from fractal.records import Generation, Problem
from fractal.remote.config import RAY_ADDRESS_ENV as ADDRESS_ENV
from fractal.remote.config import ConfigError, RaySettings, load_config

_CONNECT_TIMEOUT = 5.0  # seconds for the head's port to accept a connection
_MAX_RERUNS = 5  # times one batch is submitted again after its node or worker was lost
_MAX_BATCH = 512  # programs per batch when ray.batch is 0
_BATCHES_PER_CPU = 8  # when ray.batch is 0: enough batches that no CPU idles long at the end


class ClusterError(UserError):
    pass


def ray_settings() -> tuple[RaySettings, str]:
    """The `ray` section of the executor config, with FRACTAL_RAY_ADDRESS over its address,
    and where the address came from (for error messages)."""
    try:
        config = load_config()
    except ConfigError as e:
        raise ClusterError(str(e)) from None
    settings = config.ray
    env = os.environ.get(ADDRESS_ENV, "").strip()
    if env:
        return dataclasses.replace(settings, address=env), ADDRESS_ENV
    return settings, f"{config.source}: ray.address"


def executor_for(stage: str) -> Callable | None:
    """The stage's `_execute` on the configured Ray cluster, or None to run here. Fails at
    once, naming the address, when the cluster does not answer."""
    settings, where = ray_settings()
    if not settings.address:
        return None
    _check_reachable(settings.address, where)
    run = {"label": _label_on_ray, "probe": _probe_on_ray}[stage]
    return functools.partial(run, settings=settings, where=where)


def _check_reachable(address: str, where: str) -> None:
    if address == "auto":
        return  # ray.init finds the local cluster or says it found none
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        raise ClusterError(f"{where}: {address!r} is not HOST:PORT of a Ray head (`ray start --head --port PORT`)")
    try:
        socket.create_connection((host, int(port)), timeout=_CONNECT_TIMEOUT).close()
    except OSError as e:
        raise ClusterError(f"{where}: no Ray cluster answers at {address} ({e.strerror or e}); start one "
                           f"(`ray start --head --port {port}`) or unset it to run here") from None


# ---------------------------------------------------------------------------------------
# The stages' batches, as run on a node
# ---------------------------------------------------------------------------------------
class _NodeCache:
    """What `_execute` on a node writes to instead of a cache: nothing. The records come
    back in the task's result and the driver's cache keeps them."""

    def put(self, *record: Any) -> None:
        pass

    def flush_if_due(self, *args: Any) -> None:
        pass


def _node_dir(stage: str) -> str:
    """The node's own folder for the sandboxed workers' logs (hidden from candidates, as
    a local run's cache_dir is)."""
    path = Path(tempfile.gettempdir()) / f"fractal-ray-{os.getuid()}" / stage
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _label_batch(todo: list[tuple[str, Generation]], by_id: dict[str, Problem], reference_seconds: dict[str, float],
                 params: LabelParams, hidden: list[str]) -> dict[str, tuple[str, str, float]]:
    from fractal.execution import labeler

    # The node records the tests itself (the plans hold code objects), but with the
    # driver's timing of each reference: the time limits, and the timeouts' details,
    # derive from it, so the labels are those the driver would give, whatever the node's load.
    for pid, problem in by_id.items():
        plan = labeler.plan_problems([problem])[pid]
        memo = json.dumps(dataclasses.asdict(problem), sort_keys=True)  # plan_problems' memo key
        labeler._plans[memo] = dataclasses.replace(plan, reference_seconds=reference_seconds[pid])
    params = dataclasses.replace(params, workers=1, cache_dir=_node_dir("label"),
                                 hide_paths=[*params.hide_paths, *hidden])
    return labeler._execute(todo, by_id, params, _NodeCache())


def _probe_batch(todo: list[tuple[str, Generation]], by_id: dict[str, Problem], tests_of: dict[str, dict],
                 params: ProbeParams, sandbox: LabelParams, hidden: list[str]) -> dict[str, tuple]:
    from fractal.execution import probe

    params = dataclasses.replace(params, workers=1, cache_dir=_node_dir("probe"))
    sandbox = dataclasses.replace(sandbox, hide_paths=[*sandbox.hide_paths, *hidden])
    return probe._execute(todo, by_id, tests_of, params, sandbox, _NodeCache())


def _driver_paths(*cache_dirs: str) -> list[str]:
    """The driver's project and caches: hidden on the nodes too, where they exist (on one
    machine, as in the tests, the project is not the Ray worker's working directory)."""
    return [str(Path.cwd().resolve()), *(str(Path(d).resolve()) for d in cache_dirs)]


def _label_on_ray(todo: list[tuple[str, Generation]], by_id: dict[str, Problem], params: LabelParams, cache,
                  *, settings: RaySettings, where: str) -> dict[str, tuple[str, str, float]]:
    from fractal.execution.labeler import plan_problems

    hidden = _driver_paths(params.cache_dir)
    plans = plan_problems([by_id[pid] for pid in sorted({g.problem_id for _, g in todo})])
    seconds = {pid: plan.reference_seconds for pid, plan in plans.items()}
    return _run("label", todo, lambda batch: (by_id_of(batch, by_id), by_id_of(batch, seconds), params, hidden),
                _label_batch, params.preload_heavy, cache, settings, where)


def _probe_on_ray(todo: list[tuple[str, Generation]], by_id: dict[str, Problem], tests_of: dict[str, dict],
                  params: ProbeParams, sandbox: LabelParams, cache, *, settings: RaySettings,
                  where: str) -> dict[str, tuple]:
    hidden = _driver_paths(params.cache_dir, sandbox.cache_dir)
    return _run("probe", todo, lambda batch: (by_id_of(batch, by_id), by_id_of(batch, tests_of), params,
                                              sandbox, hidden), _probe_batch, sandbox.preload_heavy, cache,
                settings, where)


def by_id_of(batch: list[tuple[str, Generation]], table: dict[str, Any]) -> dict[str, Any]:
    """The entries of `table` (problems, generated tests) that a batch's programs need."""
    return {pid: table[pid] for pid in {g.problem_id for _, g in batch}}


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------
def batches_of(todo: list[tuple[str, Generation]], size: int,
               preload_heavy: list[str]) -> list[tuple[bool, list[tuple[str, Generation]]]]:
    """(heavy, batch): consecutive problems' programs together, up to `size` per batch (a
    problem with more is split). Programs that import a heavy package (label.preload_heavy)
    go in batches of their own, first: a batch that holds one starts a worker that imports
    torch and the rest (seconds), which few batches should pay, and early."""
    from fractal.execution.labeler import _imports

    tops = {m.split(".")[0] for m in preload_heavy}
    heavy: dict[str, list[tuple[str, Generation]]] = {}
    light: dict[str, list[tuple[str, Generation]]] = {}
    for item in todo:
        is_heavy = any(n.split(".")[0] in tops for n in _imports(item[1].program))
        (heavy if is_heavy else light).setdefault(item[1].problem_id, []).append(item)
    batches: list[tuple[bool, list[tuple[str, Generation]]]] = []
    for is_heavy, by_problem in ((True, heavy), (False, light)):
        current: list[tuple[str, Generation]] = []
        for items in by_problem.values():
            for i in range(0, len(items), size):
                chunk = items[i : i + size]
                if current and len(current) + len(chunk) > size:
                    batches.append((is_heavy, current))
                    current = []
                current += chunk
        if current:
            batches.append((is_heavy, current))
    return batches


def connect(settings: RaySettings, where: str):
    """The `ray` module, joined to the cluster at settings.address with this fractal shipped
    to its nodes (runtime_env py_modules); fails in one line naming the address. The caller
    calls ray.shutdown()."""
    _check_reachable(settings.address, where)  # at once, not after ray.init's own retries
    try:
        import ray
    except ImportError:
        raise ClusterError(f"{where}: {settings.address}: Ray is not installed here; "
                           "pip install 'fractal-best-of-n[ray]' (or unset it to run here)") from None
    try:
        ray.init(address=settings.address, log_to_driver=False, logging_level=logging.WARNING,
                 runtime_env={"py_modules": [str(Path(fractal.__file__).parent)]})
    except (ConnectionError, RuntimeError) as e:
        raise ClusterError(f"{where}: cannot join the Ray cluster at {settings.address}: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return ray


def _run(stage: str, todo: list[tuple[str, Generation]], args_of: Callable[[list], tuple], node_fn: Callable,
         preload_heavy: list[str], cache, settings: RaySettings, where: str) -> dict[str, tuple]:
    ray = connect(settings, where)
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = settings.batch or max(1, min(_MAX_BATCH, math.ceil(len(todo) / (_BATCHES_PER_CPU * cpus))))
        limit = settings.inflight or 2 * cpus
        batches = batches_of(todo, size, preload_heavy)
        n_heavy = sum(len(batch) for heavy, batch in batches if heavy)
        # Reruns are ours (max_retries=0): counted, and said. A heavy batch takes no CPU of
        # Ray's count, spread over the nodes, as many at a time as the heavy share of the
        # programs of the cluster's CPUs (at least one per node): as a local run starts its
        # heavy workers (labeler._groups) on top of one light worker per core, so that their
        # imports overlap light work instead of holding a core.
        remotes = {False: ray.remote(num_cpus=1, max_retries=0)(node_fn),
                   True: ray.remote(num_cpus=0, max_retries=0, scheduling_strategy="SPREAD")(node_fn)}
        queues: dict[bool, list[int]] = {h: [b for b in range(len(batches))[::-1] if batches[b][0] == h]
                                         for h in (False, True)}
        pending: dict[Any, int] = {}
        reruns = [0] * len(batches)
        out: dict[str, tuple] = {}
        start = time.monotonic()
        nodes = _alive_nodes(ray)
        print(f"{stage}: {len(todo)} programs in {len(batches)} batches of up to {size} on the Ray cluster at "
              f"{settings.address} ({cpus} CPUs on {nodes} node(s)), up to {limit} batches in flight",
              file=sys.stderr)
        with tqdm(total=len(todo), desc=f"{stage} (ray)", unit="program", smoothing=0.05) as bar:
            def submit() -> None:
                for heavy, most in ((True, max(1, nodes, math.ceil(cpus * n_heavy / len(todo)))), (False, limit)):
                    while queues[heavy] and sum(batches[b][0] == heavy for b in pending.values()) < most:
                        b = queues[heavy].pop()
                        pending[remotes[heavy].remote(batches[b][1], *args_of(batches[b][1]))] = b

            submit()
            checked = time.monotonic()
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    b = pending.pop(ref)
                    try:
                        records = ray.get(ref)
                    except ray.exceptions.RayTaskError as e:  # the batch's own code raised: as it would here
                        cause = e.cause if e.cause is not None else e
                        text = str(cause).strip()
                        raise ClusterError(f"{stage} on the Ray cluster at {settings.address}, node {e.ip}: "
                                           f"{text.splitlines()[0] if text else type(cause).__name__}") from None
                    except ray.exceptions.LocalRayletDiedError:  # this machine's node: no rerun can succeed
                        raise ClusterError(f"{stage} on the Ray cluster at {settings.address}: the Ray node this "
                                           "process joined (its raylet) died; restart it (`ray start`) and rerun: "
                                           "finished batches are in the cache") from None
                    except ray.exceptions.RayError as e:  # its node or worker was lost
                        reruns[b] += 1
                        if reruns[b] > _MAX_RERUNS:
                            raise ClusterError(f"{stage} on the Ray cluster at {settings.address}: a batch was lost "
                                               f"{reruns[b]} times ({type(e).__name__}); is the cluster healthy? "
                                               "(`ray status`)") from None
                        print(f"{stage}: a batch of {len(batches[b][1])} programs was lost ({type(e).__name__}); "
                              "running it again", file=sys.stderr)
                        queues[batches[b][0]].append(b)
                        continue
                    for key, record in records.items():
                        out[key] = record
                        cache.put(key, *record)
                    bar.update(len(batches[b][1]))
                cache.flush_if_due()
                if time.monotonic() - checked > 5.0:
                    checked = time.monotonic()
                    nodes = _alive_nodes(ray)
                    bar.set_postfix(nodes=nodes, inflight=len(pending), refresh=False)
                submit()
        elapsed = time.monotonic() - start
        print(f"{stage}: ran {len(todo)} programs on the Ray cluster in {elapsed:.1f}s "
              f"({len(todo) / max(elapsed, 1e-9):.0f}/s), {sum(reruns)} batch(es) rerun after a lost node or worker",
              file=sys.stderr)
        return out
    finally:
        ray.shutdown()


def _alive_nodes(ray) -> int:
    return sum(1 for n in ray.nodes() if n.get("Alive"))
