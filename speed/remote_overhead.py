"""What running an unchanged stage on a warm Lambda instance adds over running it locally:
sync up, start, stream, fetch and check the outputs. Target: at most 5 s.

    python speed/remote_overhead.py                  # 5 repeats, 50 MB dep, 5 MB of outputs
    python speed/remote_overhead.py --repeats 10 --dep-mb 200

The "instance" is fractal's Lambda double (the REST API in this process) whose address is a
real OpenSSH server on loopback, so the figures leave out the network: each SSH round trip
to a real instance adds its latency (5-100 ms), and the first sync and the final fetch
move bytes at the link's speed instead of loopback's. The breakdown prints how many round
trips each phase makes, to scale the figure to a given link. On the machine fractal was
developed on, every SSH command also paid ~0.2 s for the login user's ~/.bashrc (pyenv
init), which Lambda's Ubuntu image does not have for non-interactive shells.

The stage reads its dep, sleeps --work seconds and writes a file output and a directory
output. Warm-up (not timed): `fractal lambda launch`, one remote run (builds the remote
environment, sends the dep). Then, --repeats times each and interleaved: `fractal run
bench` with FRACTAL_EXECUTOR=local and with FRACTAL_EXECUTOR=lambda, as DVC would call
it. Figures are wall-clock medians and depend on what else the machine is doing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the double is test support
from support.double import LambdaDouble, LoopbackSSHD, make_keypair  # noqa: E402

STAGE = '''\
import os, pathlib, sys, time
data = pathlib.Path("data/big.bin").read_bytes()
time.sleep(float(sys.argv[1]))
out = pathlib.Path("out")
(out / "shards").mkdir(parents=True, exist_ok=True)
tmp = out / "model.bin.tmp"
tmp.write_bytes(data[: int(sys.argv[2])])
os.replace(tmp, out / "model.bin")
for i in range(10):
    (out / "shards" / f"{i}.txt").write_text(str(i) * 1000)
print("bench: done", flush=True)
'''

DVC_YAML = '''\
stages:
  bench:
    cmd: fractal run bench {work} {out_bytes}
    deps: [stages/bench.py, data/big.bin]
    outs: [out/model.bin, out/shards]
'''

# Round trips per phase on a warm instance (see RemoteRun.execute): connect = SSH handshake +
# one command; sync = one rsync (its own SSH connection); start = one command; run = one
# streamed command (log + exit code + checksums); fetch = one rsync.
ROUND_TRIPS = {"connect": "handshake + 1", "sync": "handshake + rsync", "start": "1", "run": "1 (streamed)",
               "fetch": "handshake + rsync"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dep-mb", type=float, default=50.0, help="size of the stage's data dep")
    ap.add_argument("--out-mb", type=float, default=5.0, help="size of the stage's file output")
    ap.add_argument("--work", type=float, default=0.5, help="seconds the stage itself works")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fractal-remote-bench-"))
    key, public_key = make_keypair(tmp)
    api_key = "bench-" + secrets.token_hex(16)
    repo = make_repo(tmp / "repo", args)
    with LoopbackSSHD(tmp / "sshd", [public_key]) as sshd, LambdaDouble({api_key}, boot_seconds=0.5) as double:
        (repo / ".fractal").mkdir()
        (repo / ".fractal" / "executor.yaml").write_text(json.dumps({
            "executor": "lambda",
            "lambda": {"instance_types": ["gpu_1x_a100_sxm4"], "ssh_user": sshd.user, "ssh_port": sshd.port,
                       "ssh_key": str(key), "poll_seconds": 0.2, "watchdog": False},
            "remote": {"root": str(tmp / "remote"), "python": sys.executable, "setup": "", "compress": False},
        }))
        env = dict(os.environ, LAMBDA_API_KEY=api_key, FRACTAL_LAMBDA_API_URL=double.url,
                   FRACTAL_HOME=str(tmp / "home"))
        env.pop("FRACTAL_EXECUTOR", None)
        try:
            t0 = time.monotonic()
            call(["fractal", "lambda", "launch"], repo, env)
            launch_s = time.monotonic() - t0
            t0 = time.monotonic()
            first = call(["fractal", "run", "bench", str(args.work), str(int(args.out_mb * 2 ** 20))], repo, env)
            first_s = time.monotonic() - t0
            local, remote, phases = [], [], []
            for _ in range(args.repeats):
                for where, times in (("local", local), ("lambda", remote)):
                    t0 = time.monotonic()
                    out = call(["fractal", "run", "bench", str(args.work), str(int(args.out_mb * 2 ** 20))], repo,
                               dict(env, FRACTAL_EXECUTOR=where))
                    times.append(time.monotonic() - t0)
                    if where == "lambda":
                        phases.append(parse_phases(out))
        finally:
            subprocess.run(["fractal", "lambda", "terminate", "--all"], cwd=repo, env=env, capture_output=True)
        leaked = double.running()

    print(f"remote overhead on a warm instance (loopback sshd + Lambda double; dep {args.dep_mb:g} MB, "
          f"outputs {args.out_mb:g} MB + 10 small files, stage work {args.work:g} s, {args.repeats} repeats)")
    print(f"  launch + boot + pin host key (double, 0.5 s boot): {launch_s:6.2f} s")
    print(f"  first remote run (env setup, full sync):            {first_s:6.2f} s  {parse_phases(first)}")
    print(f"  local  `fractal run`, median:                       {statistics.median(local):6.2f} s "
          f"(min {min(local):.2f}, max {max(local):.2f})")
    print(f"  remote `fractal run`, median:                       {statistics.median(remote):6.2f} s "
          f"(min {min(remote):.2f}, max {max(remote):.2f})")
    overhead = statistics.median(remote) - statistics.median(local)
    print(f"  overhead (remote - local), median:                  {overhead:6.2f} s   target <= 5 s: "
          f"{'met' if overhead <= 5 else 'NOT met'}")
    print("  remote phases, median s (round trips on a warm instance):")
    for name in phases[0]:
        values = [p[name] for p in phases if name in p]
        print(f"    {name:<8} {statistics.median(values):5.2f}   {ROUND_TRIPS.get(name, '')}")
    print(f"  instances left running in the double: {len(leaked)}")
    return 0 if not leaked else 1


def make_repo(repo: Path, args: argparse.Namespace) -> Path:
    (repo / "stages").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "stages" / "bench.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(work=args.work, out_bytes=int(args.out_mb * 2 ** 20)))
    (repo / "data" / "big.bin").write_bytes(os.urandom(int(args.dep_mb * 2 ** 20)))
    (repo / ".gitignore").write_text(".fractal/\n/data/big.bin\n/out\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    return repo


def call(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def parse_phases(output: str) -> dict[str, float]:
    line = next((ln for ln in output.splitlines() if re.search(r"connect [\d.]+ s", ln)), "")
    return {name: float(value) for name, value in re.findall(r"(\w+) ([\d.]+) s", line.split(": ", 2)[-1])}


if __name__ == "__main__":
    sys.exit(main())
