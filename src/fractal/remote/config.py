"""Where stages run: .fractal/executor.yaml and the FRACTAL_* environment, never params.yaml.

Moving a stage to a GPU must not change its DVC hash, so the choice lives outside the tracked
params: the environment variable FRACTAL_EXECUTOR (local | ssh | lambda, for every stage) or
the untracked file .fractal/executor.yaml, looked up from the working directory upwards so a
queued experiment (run by DVC in .dvc/tmp/exps/...) sees its repository's file. The file is
read by params.py's loader (`params.build`): the same types, coercions, `param(...)` rules and
did-you-mean errors as params.yaml, every problem one line naming the file and the key.

    executor: local                 # stages not listed below
    stages:
      generate: lambda
      train: {executor: lambda, instance_types: [gpu_1x_h100_pcie]}   # lambda keys per stage
    ssh: {host: gpu-box, user: me}  # any host you can `ssh` to
    lambda:
      instance_types: [gpu_1x_a100_sxm4, gpu_1x_h100_pcie]   # preference order
      regions: [us-west-1, us-east-1]                        # preference order; [] = any
      keep_instance: false
    remote: {env: [HF_TOKEN]}
    ray: {address: 10.0.0.5:6379}   # label and probe on this Ray cluster (docs/ray.md); FRACTAL_RAY_ADDRESS wins
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from fractal.params import build, param, unknown_keys

EXECUTORS = ("local", "ssh", "lambda")
CONFIG_NAME = Path(".fractal") / "executor.yaml"
EXECUTOR_ENV = "FRACTAL_EXECUTOR"
CONFIG_ENV = "FRACTAL_EXECUTOR_CONFIG"
RAY_ADDRESS_ENV = "FRACTAL_RAY_ADDRESS"  # wins over ray.address (execution/cluster.py); set by a Lambda cluster's run
HOME_ENV = "FRACTAL_HOME"


class ConfigError(ValueError):
    pass


@dataclasses.dataclass
class SSHSettings:
    host: str = ""  # a host name or an alias from ~/.ssh/config
    user: str = ""  # empty: ssh's default (or the alias's User)
    port: int = 0  # 0: ssh's default (or the alias's Port)
    identity_file: str = ""
    known_hosts: str = ""  # check the host key against this file (empty: ~/.ssh/known_hosts)


@dataclasses.dataclass
class LambdaSettings:
    instance_types: list[str] = param(["gpu_1x_a100_sxm4", "gpu_1x_a100", "gpu_1x_h100_pcie", "gpu_1x_a10"],
                                      single=True)  # preference order
    regions: list[str] = param([], single=True)  # preference order; empty: any region with capacity
    instance: str = ""  # run on this instance (id or name); a run never terminates it
    keep_instance: bool = False  # leave what a run launched running (the idle limit still applies)
    idle_minutes: float = 30.0  # terminate a launched instance nothing has used for this long (0: never)
    max_age_hours: float = 24.0  # terminate a launched instance this old, busy or not (0: never)
    ssh_key: str = ""  # private key; its .pub is registered with Lambda when missing (empty: ~/.ssh/id_ed25519 or id_rsa)
    ssh_user: str = "ubuntu"
    ssh_port: int = 22
    api_url: str = ""  # empty: $FRACTAL_LAMBDA_API_URL, else Lambda's own
    retry_seconds: float = 10.0  # first wait after HTTP 429 (then x1.6 up to 100 s, 6 tries in all)
    boot_timeout_minutes: float = 30.0  # terminate and give up if not active and reachable by then
    poll_seconds: float = 5.0  # between status checks while booting (the API allows ~1 call/s)
    watchdog: bool = True  # a background process that applies the idle/age limits while instances live
    watchdog_seconds: float = 60.0  # how often it checks
    name_prefix: str = "fractal"  # instances are named <prefix>-<user>-<random>
    # On-instance autostop (0: off). Opt-in because it copies the API key to the instance:
    # a process there terminates the instance after this long without a stage running, even
    # while this machine sleeps (docs/lambda.md, "A sleeping laptop: the on-instance autostop").
    autostop_minutes: float = 0.0
    # Above 1: launch (or reuse) this many instances in one region, start a Ray cluster across
    # them over SSH (the head on the first), run the stage on the head with FRACTAL_RAY_ADDRESS
    # set, and terminate all of them at the end (docs/ray.md, "On Lambda"). Needs Ray in the
    # remote environment: remote.setup = "pip install '.[ray]'".
    nodes: int = param(1, min=1, max=64)
    ray_port: int = param(6379, min=1, max=65535)  # the head's GCS port on its private IP
    ray_cpus: int = param(0, min=0)  # CPUs each node offers Ray (0: all of its cores)


@dataclasses.dataclass
class StageEntry(LambdaSettings):
    """A stage's entry in `stages:` written as a mapping: its executor (absent: the file's) and
    lambda keys of its own (absent: the `lambda:` section's)."""
    executor: str = param("local", choices=EXECUTORS)


@dataclasses.dataclass
class RemoteSettings:
    root: str = "~/fractal"  # on the remote host: envs/, work/<workspace>/, runs/
    python: str = "python3"  # the interpreter the remote environment (a venv) is made from
    setup: str = "pip install ."  # run once per environment, inside the venv, in the synced workspace
    env: list[str] = param([], single=True)  # local variables passed to remote stages
    reconnect_minutes: float = 10.0  # keep trying to reattach to a running stage for this long
    compress: bool = True  # rsync -z (worth it over the internet, not on a LAN)
    keepalive_seconds: float = 15.0  # a connection silent this long is probed; no answer in as long: dropped
    setup_timeout_minutes: float = 60.0  # remote.setup (and anything else one command runs) gives up after this


@dataclasses.dataclass
class RaySettings:
    address: str = ""  # host:port of a running cluster's head (`ray start --head`); empty: label and probe run here
    batch: int = param(0, min=0)  # distinct programs per Ray task (0: about 8 tasks per cluster CPU, at most 512)
    inflight: int = param(0, min=0)  # Ray tasks submitted and not yet finished (0: two per cluster CPU)


@dataclasses.dataclass
class ExecutorConfig:
    executor: str = "local"
    stages: dict[str, Any] = dataclasses.field(default_factory=dict)
    ssh: SSHSettings = dataclasses.field(default_factory=SSHSettings)
    lambda_: LambdaSettings = dataclasses.field(default_factory=LambdaSettings)
    remote: RemoteSettings = dataclasses.field(default_factory=RemoteSettings)
    ray: RaySettings = dataclasses.field(default_factory=RaySettings)
    source: Path | None = None  # the file it came from

    def executor_for(self, stage: str) -> str:
        """FRACTAL_EXECUTOR wins over the file, so `FRACTAL_EXECUTOR=local dvc repro` always runs here."""
        env = os.environ.get(EXECUTOR_ENV, "").strip()
        if env:
            if env not in EXECUTORS:
                raise ConfigError(f"{EXECUTOR_ENV}={env!r}: expected one of {', '.join(EXECUTORS)}")
            return env
        entry = self.stages.get(stage)
        if isinstance(entry, dict):
            return entry.get("executor", self.executor)
        return entry or self.executor

    def lambda_for(self, stage: str) -> LambdaSettings:
        entry = self.stages.get(stage)
        if not isinstance(entry, dict):
            return self.lambda_
        overrides = {k: v for k, v in entry.items() if k != "executor"}
        return dataclasses.replace(self.lambda_, **overrides)


def fractal_home() -> Path:
    """Per-user state: the instances fractal launched, pinned host keys, generated ssh config."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".fractal").expanduser()


def find_config(start: Path | None = None) -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit).expanduser()
        if not path.exists():
            raise ConfigError(f"{CONFIG_ENV}={explicit}: no such file")
        return path
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).is_file():
            return d / CONFIG_NAME
    return None


SECTIONS = {"ssh": SSHSettings, "lambda": LambdaSettings, "remote": RemoteSettings, "ray": RaySettings}


def load_config(path: Path | None = None, start: Path | None = None) -> ExecutorConfig:
    """The executor file (or the defaults, without one); every problem in it is one line of
    one ConfigError."""
    path = path or find_config(start)
    if path is None:
        return ExecutorConfig()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    problems = unknown_keys(data, ["executor", "stages", *SECTIONS], "", path)
    cfg = ExecutorConfig(source=path)
    cfg.executor = data.get("executor", "local")
    problems += _not_an_executor(cfg.executor, path, "executor")
    for name, cls in SECTIONS.items():
        section, found = build(cls, data.get(name) or {}, name, path, key_format="{}")
        problems += found
        setattr(cfg, "lambda_" if name == "lambda" else name, section)
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{path}: `stages` should map stage names to an executor")
    for stage, entry in stages.items():
        where = f"stages.{stage}"
        if isinstance(entry, dict):  # its own lambda keys, typed; only those it names override `lambda:`
            own, found = build(StageEntry, entry, where, path, key_format="{}")
            problems += found
            entry = {key: getattr(own, key) for key in entry if hasattr(own, key)}
        else:
            problems += _not_an_executor(entry, path, where)
        cfg.stages[stage] = entry
    if problems:
        raise ConfigError("\n".join(problems))
    return cfg


def _not_an_executor(value: Any, path: Path, where: str) -> list[str]:
    if value in EXECUTORS:
        return []
    return [f"{path}: {where}: {value!r} is not an executor (one of {', '.join(EXECUTORS)})"]
