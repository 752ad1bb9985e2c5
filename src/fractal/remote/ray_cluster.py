"""A Ray cluster across one run's Lambda instances (lambda.nodes > 1), started and stopped over SSH.

Each node gets the stage's workspace and remote environment exactly as a one-instance run
makes them (RemoteRun.provision: the same sync, the same venv), then `ray start --block`,
detached in a session of its own: the head first (`--head --port lambda.ray_port`), then
every other node joining the head at its private IP. The stage then runs on the head as a
one-instance run does, with FRACTAL_RAY_ADDRESS naming the head, so label and probe fan out
over every node (execution/cluster.py) while the other stages run on the head alone.

What it buys: one command takes label and probe to K machines with the no-leak guarantees of
one (lambda_run releases every instance in its `finally`, whatever fails here), and no
tracked param changes, so DVC sees the same stage as a local run. Where it stops: the nodes
talk over the region's private network, unencrypted and unauthenticated as Ray always does
(Lambda's firewall rules govern public ingress; acquire_more keeps the nodes in one region);
a node lost mid-stage is not replaced (its batches rerun on the others); stopping a node
kills its `ray start` session (process group), nothing else of the user's on that machine.
"""
from __future__ import annotations

import dataclasses
import logging
import shlex

from fractal.dvcfile import StageSpec
from fractal.remote.config import LambdaSettings, RemoteSettings
from fractal.remote.executor import RemoteRun
from fractal.remote.ssh import RemoteError, Target

log = logging.getLogger(__name__)

JOIN_SECONDS = 180.0  # for every node to join once all are started (seconds each on a real instance)

# How many nodes are alive, waiting up to argv[3] s for argv[2] of them (run with the env's python).
_WAIT_FOR_NODES = (
    "import sys, time, ray\n"
    "ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\n"
    "alive = lambda: sum(n['Alive'] for n in ray.nodes())\n"
    "deadline = time.time() + float(sys.argv[3])\n"
    "while alive() < int(sys.argv[2]) and time.time() < deadline: time.sleep(0.5)\n"
    "print(alive())\n")


@dataclasses.dataclass
class Node:
    run: RemoteRun  # its workspace, environment and connection
    ip: str  # the address the other nodes reach it at (the instance's private IP)
    pid: int = 0  # of its detached `ray start --block`: the id of the process group of its daemons


class RayCluster:
    def __init__(self, nodes: list[tuple[Target, str]], remote: RemoteSettings, spec: StageSpec, stage: str,
                 settings: LambdaSettings):
        self.stage = stage
        self.settings = settings
        self.nodes = [Node(RemoteRun(target, remote, spec, f"{stage}-ray", []), ip) for target, ip in nodes]
        self.address = f"{self.nodes[0].ip}:{settings.ray_port}"

    def start(self) -> None:
        """Every node provisioned and started, then waits until all have joined; raises
        RemoteError (one line, naming the node and its log) otherwise."""
        for i, node in enumerate(self.nodes):
            node.run.provision()
            python = f"{node.run.env}/bin/python"
            r = node.run.command(f"{shlex.quote(python)} -c 'import ray'")
            if r.exited != 0:
                raise RemoteError(f"{node.run.target.label}: lambda.nodes = {len(self.nodes)} starts a Ray cluster, "
                                  "but Ray is not installed in the remote environment: set remote.setup to "
                                  "\"pip install '.[ray]'\" in .fractal/executor.yaml")
            node.pid = self._start_node(node, i)
        head = self.nodes[0].run
        r = head.command(f"{shlex.quote(head.env + '/bin/python')} -c {shlex.quote(_WAIT_FOR_NODES)} "
                         f"{self.address} {len(self.nodes)} {JOIN_SECONDS:g}", timeout=JOIN_SECONDS + 120)
        alive = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
        if r.exited != 0 or not alive.isdigit() or int(alive) < len(self.nodes):
            raise RemoteError(f"lambda.nodes = {len(self.nodes)}: {alive or 'no'} Ray node(s) of "
                              f"{len(self.nodes)} joined the cluster at {self.address} within {JOIN_SECONDS:g} s "
                              f"({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else 'see each node log'}; "
                              f"logs: {', '.join(n.run.run_dir + '/log on ' + n.run.target.label for n in self.nodes)})")
        log.info("%s: a Ray cluster of %d nodes at %s", self.stage, len(self.nodes), self.address)

    def _start_node(self, node: Node, index: int) -> int:
        port = self.settings.ray_port
        args = ["start", "--block", "--node-ip-address", node.ip, "--disable-usage-stats",
                # a port of its own per node, so that two nodes may share a host (the tests' loopback)
                "--dashboard-agent-listen-port", str(port + 1 + index)]
        args += ["--head", "--port", str(port), "--include-dashboard=false"] if index == 0 else ["--address", self.address]
        if self.settings.ray_cpus:
            args += ["--num-cpus", str(self.settings.ray_cpus)]
        run = node.run
        command = shlex.join([f"{run.env}/bin/python", "-m", "ray.scripts.scripts", *args])
        r = run.command(f"set -e; mkdir -p {shlex.quote(run.run_dir)}; cd {shlex.quote(run.run_dir)}; "
                        f"RAY_USAGE_STATS_ENABLED=0 nohup setsid {command} > log 2>&1 < /dev/null & echo $! > pid; echo $!")
        if r.exited != 0 or not r.stdout.strip().isdigit():
            raise RemoteError(f"{run.target.label}: could not start a Ray node: {r.stderr.strip()}")
        return int(r.stdout.strip())

    def stop(self) -> None:
        """Stops every node started (the other nodes first, the head last), going on past errors:
        the instances are terminated next anyway; this matters for a kept or named instance."""
        for node in reversed(self.nodes):
            if not node.pid:
                node.run.close()
                continue
            g = f"-{node.pid}"
            try:
                node.run.command(f"kill -TERM -- {g} 2>/dev/null || exit 0; for i in $(seq 75); do "
                                 f"kill -0 -- {g} 2>/dev/null || exit 0; sleep 0.2; done; kill -KILL -- {g}; true",
                                 timeout=60)
                node.pid = 0
            except RemoteError as e:
                log.warning("%s: could not stop its Ray node (%s)", node.run.target.label, e)
            finally:
                node.run.close()
