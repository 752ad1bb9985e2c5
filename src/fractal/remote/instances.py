"""Lambda instance lifecycle: launch (with fallbacks), wait, reuse, terminate, reap.

Every instance fractal launches is recorded in $FRACTAL_HOME/lambda/instances.json (default
~/.fractal) with when it was launched, when it was last used, whether the user asked to keep
it and the limits it was launched under. A run holds a lease on the instance it uses (its pid);
`reap` terminates a recorded instance that is past its age limit, idle past its idle limit,
or was launched by a run that died without terminating it. Every `fractal lambda` command and
every remote run reaps first, and a detached watchdog (`fractal lambda watchdog`) reaps every
minute for as long as recorded instances live, so a forgotten instance stops billing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import getpass
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from fractal.remote.api import INSUFFICIENT_CAPACITY, Instance, LambdaAPIError, LambdaClient, Retry
from fractal.remote.config import LambdaSettings, fractal_home
from fractal.remote.ssh import HostKeyError, RemoteError, Target, wait_for_ssh, write_ssh_config

log = logging.getLogger(__name__)


def lambda_home() -> Path:
    return fractal_home() / "lambda"


def client_for(settings: LambdaSettings) -> LambdaClient:
    return LambdaClient.from_environment(base_url=settings.api_url or None,
                                         retry=Retry(first_wait=settings.retry_seconds))


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Cleanup that a second Ctrl-C must not cut short (it would leave an instance billing)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in signals}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# -- the registry of launched instances ---------------------------------------------------


class Registry:
    """instances.json, read and written under an exclusive lock (runs and the watchdog share it)."""

    def __init__(self, path: Path | None = None):
        self.path = path or lambda_home() / "instances.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self._read()
            yield state
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
            tmp.replace(self.path)

    def read(self) -> dict[str, dict[str, Any]]:
        with self.locked() as state:
            return json.loads(json.dumps(state))

    def _read(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            return json.loads(self.path.read_text())
        except ValueError:
            broken = self.path.with_suffix(f".broken-{int(time.time())}")
            self.path.replace(broken)
            log.warning("%s was not valid JSON; moved it to %s (check `fractal lambda status` for instances "
                        "it listed)", self.path, broken)
            return {}


def _lease_alive(lease: dict[str, Any] | None) -> bool:
    if not lease:
        return False
    if lease.get("host") != socket.gethostname():
        return True  # another machine's run: only the age limit can judge it
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _new_lease() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


# -- SSH key ------------------------------------------------------------------------------


def local_ssh_key(settings: LambdaSettings) -> tuple[Path, str]:
    """(private key, public key line): the configured key, else ~/.ssh/id_ed25519 or id_rsa,
    else a key generated for fractal under $FRACTAL_HOME/lambda."""
    if settings.ssh_key:
        path = Path(settings.ssh_key).expanduser()
        if not path.exists() or not Path(f"{path}.pub").exists():
            raise RemoteError(f"lambda.ssh_key = {settings.ssh_key}: need both {path} and {path}.pub "
                              f"(create them with `ssh-keygen -t ed25519 -f {path}`)")
    else:
        candidates = [Path("~/.ssh/id_ed25519").expanduser(), Path("~/.ssh/id_rsa").expanduser()]
        found = [p for p in candidates if p.exists() and Path(f"{p}.pub").exists()]
        path = found[0] if found else lambda_home() / "id_ed25519"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fractal-{getpass.getuser()}",
                            "-f", str(path)], check=True)
            log.info("generated an SSH key for Lambda instances: %s", path)
    return path, Path(f"{path}.pub").read_text().strip()


def ensure_ssh_key(client: LambdaClient, public_key: str) -> str:
    """The name under which Lambda knows `public_key`, registering it when missing."""
    ours = public_key.split()[:2]
    for key in client.ssh_keys():
        if (key.get("public_key") or "").split()[:2] == ours:
            return key["name"]
    import hashlib
    digest = hashlib.sha256(ours[1].encode()).hexdigest()[:8]
    name = f"fractal-{getpass.getuser()}-{socket.gethostname()}-{digest}"[:64]
    client.add_ssh_key(name, public_key)
    log.info("registered your SSH public key with Lambda as %s", name)
    return name


# -- launch, wait, terminate ----------------------------------------------------------------


@dataclasses.dataclass
class Launched:
    instance_id: str
    type_name: str
    region: str
    price_cents_per_hour: int


def launch(client: LambdaClient, settings: LambdaSettings, key_name: str, *, keep: bool,
           registry: Registry, lease: bool) -> Launched:
    """Launches the first type/region in the preference lists that has capacity, trying the
    next one on insufficient capacity, and records it (with a lease for this process)."""
    offers = client.instance_types()
    unknown = [t for t in settings.instance_types if t not in offers]
    if unknown:
        log.warning("lambda.instance_types: Lambda has no type %s (see `fractal lambda types`)", ", ".join(unknown))
    tried: list[str] = []
    for type_name in settings.instance_types:
        offer = offers.get(type_name)
        if offer is None:
            continue
        regions = settings.regions or offer.regions_with_capacity
        for region in regions:
            if region not in offer.regions_with_capacity:
                tried.append(f"{type_name} in {region} (no capacity listed)")
                continue
            name = f"{settings.name_prefix}-{getpass.getuser()}-{secrets.token_hex(3)}"[:64]
            try:
                instance_id = client.launch(region, type_name, key_name, name=name,
                                            tags={"launched-by": "fractal"})
            except LambdaAPIError as e:
                if e.code == INSUFFICIENT_CAPACITY:
                    log.info("no capacity for %s in %s; trying the next preference", type_name, region)
                    tried.append(f"{type_name} in {region} (insufficient capacity at launch)")
                    continue
                raise
            except BaseException:
                # Interrupted mid-call: the API may have launched it without our hearing the id.
                with shielded():
                    _terminate_by_name(client, name)
                raise
            now = time.time()
            with registry.locked() as state:
                state[instance_id] = {
                    "id": instance_id, "name": name, "type": type_name, "region": region,
                    "price_cents_per_hour": offer.price_cents_per_hour, "launched_at": now, "last_used": now,
                    "keep": keep, "idle_minutes": settings.idle_minutes, "max_age_hours": settings.max_age_hours,
                    "api_url": client.base_url, "lease": _new_lease() if lease else None,
                    "watchdog_seconds": settings.watchdog_seconds,
                }
            log.info("launched %s (%s in %s, $%.2f/h): %s", name, type_name, region,
                     offer.price_cents_per_hour / 100, instance_id)
            return Launched(instance_id, type_name, region, offer.price_cents_per_hour)
    capacity = {t: offers[t].regions_with_capacity for t in settings.instance_types if t in offers}
    raise LambdaAPIError(
        INSUFFICIENT_CAPACITY,
        f"no capacity for any preference ({'; '.join(tried) or 'none of the types exist'}); capacity now: "
        f"{json.dumps(capacity)}", status=None, call="launch")


def _terminate_by_name(client: LambdaClient, name: str) -> None:
    try:
        ids = [i.id for i in client.instances() if i.name == name and not i.gone]
        if ids:
            client.terminate(ids)
            log.info("terminated %s, launched by an interrupted call", name)
    except (LambdaAPIError, OSError) as e:
        log.error("could not check for an instance named %s after an interrupted launch (%s); check "
                  "`fractal lambda status`", name, e)


def wait_ready(client: LambdaClient, instance_id: str, timeout_s: float, poll_s: float) -> Instance:
    """Polls until the instance is active with an IP; raises if it is gone or time runs out."""
    from tqdm import tqdm

    deadline = time.monotonic() + timeout_s
    with tqdm(desc=f"instance {instance_id[:8]} booting", bar_format="{desc} {elapsed}", disable=None,
              file=sys.stderr) as bar:
        while True:
            inst = client.instance(instance_id)
            bar.set_description_str(f"instance {instance_id[:8]} {inst.status}")
            bar.update(0)
            if inst.ready:
                return inst
            if inst.gone:
                raise RemoteError(f"instance {instance_id} became {inst.status} while booting")
            if time.monotonic() + poll_s > deadline:
                raise RemoteError(f"instance {instance_id} not active after {timeout_s / 60:.0f} min "
                                  "(lambda.boot_timeout_minutes); terminating it")
            time.sleep(poll_s)


def terminate(client: LambdaClient, instance_ids: list[str], registry: Registry, reason: str) -> None:
    """Terminates and forgets; an instance already gone is only forgotten."""
    for instance_id in instance_ids:
        try:
            client.terminate([instance_id])
            log.info("terminated instance %s (%s)", instance_id, reason)
        except LambdaAPIError as e:
            if e.code != "global/object-does-not-exist":
                raise
        with registry.locked() as state:
            state.pop(instance_id, None)


def target_for(inst: Instance, settings: LambdaSettings, ssh_key: Path, client: LambdaClient | None = None) -> Target:
    """The SSH target of an instance: its own pinned known_hosts and a generated ssh config."""
    home = lambda_home()
    known_hosts = home / "known_hosts" / inst.id
    alias = f"lambda-{inst.id[:8]}"
    config = home / "ssh" / f"{inst.id}.config"
    assert inst.ip, "target_for needs an active instance"
    write_ssh_config(config, alias, inst.ip, settings.ssh_user, settings.ssh_port, str(ssh_key), known_hosts)

    def still_there() -> bool:
        if client is None:
            return True
        try:
            return not client.instance(inst.id).gone
        except LambdaAPIError as e:
            return e.code != "global/object-does-not-exist"

    return Target(label=f"lambda instance {inst.id[:8]} ({inst.type_name}, {inst.region})", host=inst.ip,
                  user=settings.ssh_user, port=settings.ssh_port, identity_file=str(ssh_key),
                  known_hosts=known_hosts, pin_new_keys=True, ssh_config=config, alias=alias,
                  price_cents_per_hour=inst.price_cents_per_hour, still_there=still_there)


def wait_reachable(target: Target, deadline: float) -> None:
    """Until sshd answers, then pins the host key with a first connection."""
    wait_for_ssh(target.host, target.port or 22, deadline)
    while True:
        try:
            target.connect().close()
            return
        except HostKeyError:
            raise
        except RemoteError:
            # sshd may accept TCP before it accepts our key (cloud-init is still writing it)
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


# -- acquiring an instance for a run --------------------------------------------------------


@dataclasses.dataclass
class Acquired:
    instance: Instance
    launched: bool  # by this run: terminate it at the end unless keep
    keep: bool
    ssh_key: Path
    started: float  # time.time() from which this run pays for the instance


def acquire(client: LambdaClient, settings: LambdaSettings, registry: Registry) -> Acquired:
    """The instance a run uses: the one named in lambda.instance, else an idle instance
    fractal launched earlier and kept (of a preferred type), else a new one."""
    ssh_key, public_key = local_ssh_key(settings)
    if settings.instance:
        inst = find_instance(client, settings.instance)
        if not inst.ready:
            raise RemoteError(f"lambda.instance = {settings.instance}: instance {inst.id} is {inst.status}, "
                              "not active")
        with registry.locked() as state:
            if inst.id in state:
                state[inst.id]["lease"] = _new_lease()
        return Acquired(inst, launched=False, keep=True, ssh_key=ssh_key, started=time.time())
    live = {i.id: i for i in client.instances()}
    with registry.locked() as state:
        for entry in sorted(state.values(), key=lambda e: -e["last_used"]):
            inst = live.get(entry["id"])
            if (inst is not None and inst.ready and entry.get("keep") and not _lease_alive(entry.get("lease"))
                    and entry["type"] in settings.instance_types):
                entry["lease"] = _new_lease()
                log.info("reusing instance %s (%s, %s)", inst.name or inst.id, inst.type_name, inst.region)
                return Acquired(inst, launched=False, keep=True, ssh_key=ssh_key, started=time.time())
    key_name = ensure_ssh_key(client, public_key)
    launched = launch(client, settings, key_name, keep=settings.keep_instance, registry=registry, lease=True)
    started = time.time()
    try:
        if settings.watchdog:
            start_watchdog()
        inst = wait_ready(client, launched.instance_id, settings.boot_timeout_minutes * 60, settings.poll_seconds)
    except BaseException:
        with shielded():
            terminate(client, [launched.instance_id], registry, "it did not come up")
        raise
    return Acquired(inst, launched=True, keep=settings.keep_instance, ssh_key=ssh_key, started=started)


def release(client: LambdaClient, acquired: Acquired, registry: Registry) -> None:
    """Ends this run's use: terminates what it launched unless kept, else marks it idle."""
    if acquired.launched and not acquired.keep:
        terminate(client, [acquired.instance.id], registry, "the run that launched it ended")
        return
    with registry.locked() as state:
        entry = state.get(acquired.instance.id)
        if entry is not None:
            entry["lease"] = None
            entry["last_used"] = time.time()


def touch(registry: Registry, instance_id: str) -> None:
    """Counts as use for the idle limit (`fractal lambda ssh` and `sync` are use too)."""
    with registry.locked() as state:
        if instance_id in state:
            state[instance_id]["last_used"] = time.time()


def find_instance(client: LambdaClient, ref: str) -> Instance:
    """By id, unique id prefix or name."""
    instances = client.instances()
    exact = [i for i in instances if ref in (i.id, i.name)]
    matches = exact or [i for i in instances if i.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise RemoteError(f"no running Lambda instance with id or name {ref!r} (see `fractal lambda status`)")
    raise RemoteError(f"{ref!r} matches {len(matches)} instances; give more of the id")


# -- limits ---------------------------------------------------------------------------------


def reap(client: LambdaClient, registry: Registry, now: float | None = None) -> list[tuple[str, str]]:
    """Terminates recorded instances past their limits; forgets those already gone.
    Returns (instance id, reason) for each termination."""
    now = time.time() if now is None else now
    live = {i.id: i for i in client.instances()}
    doomed: list[tuple[str, str]] = []
    with registry.locked() as state:
        for instance_id, entry in list(state.items()):
            if entry.get("api_url", client.base_url) != client.base_url:
                continue
            inst = live.get(instance_id)
            if inst is None or inst.gone:
                del state[instance_id]
                continue
            busy = _lease_alive(entry.get("lease"))
            if busy:
                entry["last_used"] = now
            elif entry.get("lease"):
                entry["lease"] = None  # its process died
            age_h = (now - entry["launched_at"]) / 3600
            idle_min = (now - entry["last_used"]) / 60
            if entry.get("max_age_hours") and age_h >= entry["max_age_hours"]:
                doomed.append((instance_id, f"{age_h:.1f} h old, over lambda.max_age_hours = {entry['max_age_hours']}"))
            elif not busy and not entry.get("keep"):
                doomed.append((instance_id, "the run that launched it is gone and it was not to be kept"))
            elif not busy and entry.get("idle_minutes") and idle_min >= entry["idle_minutes"]:
                doomed.append((instance_id, f"idle {idle_min:.0f} min, over lambda.idle_minutes = "
                                            f"{entry['idle_minutes']:g}"))
    for instance_id, reason in doomed:
        log.warning("terminating instance %s: %s", instance_id, reason)
        terminate(client, [instance_id], registry, reason)
    return doomed


def start_watchdog() -> None:
    """A detached `fractal lambda watchdog`; it exits when no recorded instance is left."""
    log_path = lambda_home() / "watchdog.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        subprocess.Popen([sys.executable, "-m", "fractal.cli", "lambda", "watchdog"], stdin=subprocess.DEVNULL,
                         stdout=out, stderr=out, start_new_session=True, close_fds=True, cwd=log_path.parent)


def watch(once: bool = False, sleep: float | None = None) -> int:
    """Reaps every few seconds until no recorded instance is left. One watchdog at a time."""
    registry = Registry()
    lock_path = lambda_home() / "watchdog.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another watchdog is on duty
        while True:
            state = registry.read()
            if not state:
                return 0
            for api_url in sorted({e.get("api_url", "") for e in state.values()}):
                try:
                    reap(LambdaClient.from_environment(base_url=api_url or None), registry)
                except (LambdaAPIError, OSError) as e:
                    log.warning("watchdog: %s", e)
            if once:
                return 0
            interval = sleep or min(float(e.get("watchdog_seconds", 60)) for e in state.values())
            time.sleep(interval)
