"""Lambda instance lifecycle: launch (with fallbacks), wait, reuse, terminate, reap.

Every instance fractal launches is recorded in $FRACTAL_HOME/lambda/instances.json (default
~/.fractal) with when it was launched, when it was last used, whether the user asked to keep
it and the limits it was launched under; the record is written as "pending" under the
instance's name before the launch request, so no answer, however lost, leaves an instance
nobody knows. Instances carry the tags launched-by=fractal and fractal-owner=<user>@<host>;
one with this user's tags that the registry lost is adopted. Each run, `fractal lambda ssh`
session and sync is a holder of the instance it uses (never overwriting another's); `reap`
terminates a recorded instance that is past its age limit, idle past its idle limit with no
live holder, adopted and unused, or launched by a run that died without terminating it. Every `fractal lambda` command and
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

from fractal.records import atomic_path
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
            with atomic_path(self.path) as tmp:
                tmp.write_text(json.dumps(state, indent=1, sort_keys=True))

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


# -- holders: who is using an instance right now -------------------------------------------
#
# A registry entry's "holders" maps a token to {pid, host, since, beat}: one per run, `fractal
# lambda ssh` session or sync using the instance, added when it starts and removed when it
# ends, never overwritten by another. An instance is idle only when no holder is alive: on this
# machine a holder is alive while its process is; a holder on another machine (a shared
# FRACTAL_HOME) while its heartbeat is younger than HOLDER_STALE_SECONDS.

HEARTBEAT_SECONDS = 30.0
HOLDER_STALE_SECONDS = 300.0


def _holder_alive(holder: dict[str, Any] | None, now: float | None = None) -> bool:
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        beat = float(holder.get("beat") or holder.get("since") or 0)
        return (time.time() if now is None else now) - beat < HOLDER_STALE_SECONDS
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holders(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The entry's holders (an entry written before holders existed has one "lease")."""
    found = dict(entry.get("holders") or {})
    if entry.get("lease"):
        found.setdefault("lease", entry["lease"])
    return found


def _new_holder(what: str) -> tuple[str, dict[str, Any]]:
    now = time.time()
    return secrets.token_hex(6), {"pid": os.getpid(), "host": socket.gethostname(), "since": now, "beat": now,
                                  "what": what}


def hold(registry: Registry, instance_id: str, what: str) -> str:
    """Adds a holder for this process; returns its token (for let_go). An instance fractal has
    no record of (the user's own) gets no record: it is never terminated anyway."""
    token, holder = _new_holder(what)
    with registry.locked() as state:
        entry = state.get(instance_id)
        if entry is not None:
            entry["holders"] = {**holders(entry), token: holder}
            entry.pop("lease", None)
            entry["last_used"] = time.time()
    return token


def let_go(registry: Registry, instance_id: str, token: str) -> None:
    """Removes one holder; the idle clock starts now."""
    with registry.locked() as state:
        entry = state.get(instance_id)
        if entry is not None:
            entry["holders"] = {k: v for k, v in holders(entry).items() if k != token}
            entry.pop("lease", None)
            entry["last_used"] = time.time()


@contextlib.contextmanager
def holding(registry: Registry, instance_id: str, what: str, token: str | None = None) -> Iterator[str]:
    """Holds the instance for the block (or adopts `token`, taken earlier), with a heartbeat."""
    token = token or hold(registry, instance_id, what)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError), registry.locked() as state:
                holder = (state.get(instance_id) or {}).get("holders", {}).get(token)
                if holder is not None:
                    holder["beat"] = time.time()

    thread = threading.Thread(target=beat, name=f"heartbeat-{instance_id[:8]}", daemon=True)
    thread.start()
    try:
        yield token
    finally:
        stop.set()
        let_go(registry, instance_id, token)


def owner() -> str:
    """Who launched an instance, as its `fractal-owner` tag says: the registry that should
    know it is this user's on this machine."""
    return f"{getpass.getuser()}@{socket.gethostname()}"[:64]


def fractal_tags() -> dict[str, str]:
    return {"launched-by": "fractal", "fractal-owner": owner()}


def is_ours(inst: Instance) -> bool:
    tags = {t.get("key"): t.get("value") for t in inst.raw.get("tags") or [] if isinstance(t, dict)}
    return tags.get("launched-by") == "fractal" and tags.get("fractal-owner") == owner()


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
    holder: str = ""  # the token of this process's holder, when launched with lease=True


# Errors after which the launch may or may not have happened: no answer, a gateway's page, a
# 5xx. The instance is then looked for by its (unique) name before anything else.
def _uncertain(e: LambdaAPIError) -> bool:
    return (e.code in ("fractal/unreachable", "fractal/unexpected-response", "global/unknown")
            or e.code.startswith("provider/") or (e.status or 0) >= 500)


def _entry(inst_id: str, name: str, type_name: str, region: str, price: int, keep: bool,
           settings: LambdaSettings, api_url: str, launched_at: float) -> dict[str, Any]:
    return {"id": inst_id, "name": name, "type": type_name, "region": region, "price_cents_per_hour": price,
            "launched_at": launched_at, "last_used": time.time(), "keep": keep,
            "idle_minutes": settings.idle_minutes, "max_age_hours": settings.max_age_hours, "api_url": api_url,
            "holders": {}, "watchdog_seconds": settings.watchdog_seconds}


def launch(client: LambdaClient, settings: LambdaSettings, key_name: str, *, keep: bool,
           registry: Registry, lease: bool) -> Launched:
    """Launches the first type/region in the preference lists that has capacity, trying the
    next one on insufficient capacity, and records it (with a holder for this process when
    `lease`). Before the request, a "pending" record names the instance: whatever happens to
    the answer or to this process, the instance is found by that name and recorded or
    terminated (here, or by the next reap)."""
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
            pending = f"pending:{name}"
            token, holder = _new_holder("launch")
            with registry.locked() as state:
                state[pending] = {"pending": True, "name": name, "api_url": client.base_url, "since": time.time(),
                                  "keep": keep, "holders": {token: holder}}
            instance_id = ""
            try:
                instance_id = client.launch(region, type_name, key_name, name=name, tags=fractal_tags())
            except LambdaAPIError as e:
                if not _uncertain(e):
                    with registry.locked() as state:
                        state.pop(pending, None)
                    if e.code == INSUFFICIENT_CAPACITY:
                        log.info("no capacity for %s in %s; trying the next preference", type_name, region)
                        tried.append(f"{type_name} in {region} (insufficient capacity at launch)")
                        continue
                    raise
                found = _find_by_name(client, name)
                if found is None:
                    with registry.locked() as state:  # not held: the next reap adopts it if it appears
                        if pending in state:
                            state[pending]["holders"] = {}
                    log.error("launching %s: %s; no instance of that name is listed now (the next `fractal lambda` "
                              "command looks again and terminates it if it appears)", name, e)
                    raise
                instance_id = found.id
                log.warning("the answer to launching %s was lost (%s); found it by name: %s", name, e.code,
                            instance_id)
            except BaseException:
                # Interrupted mid-call: the API may have launched it without our hearing the id.
                with shielded():
                    _terminate_by_name(client, name, registry, pending)
                raise
            try:
                with registry.locked() as state:
                    state.pop(pending, None)
                    state[instance_id] = _entry(instance_id, name, type_name, region, offer.price_cents_per_hour,
                                                keep, settings, client.base_url, time.time())
                    if lease:
                        state[instance_id]["holders"] = {token: holder}
            except BaseException:
                with shielded():
                    terminate(client, [instance_id], registry, "interrupted while recording it")
                    with registry.locked() as state:
                        state.pop(pending, None)
                raise
            log.info("launched %s (%s in %s, $%.2f/h): %s", name, type_name, region,
                     offer.price_cents_per_hour / 100, instance_id)
            return Launched(instance_id, type_name, region, offer.price_cents_per_hour, token if lease else "")
    capacity = {t: offers[t].regions_with_capacity for t in settings.instance_types if t in offers}
    raise LambdaAPIError(
        INSUFFICIENT_CAPACITY,
        f"no capacity for any preference ({'; '.join(tried) or 'none of the types exist'}); capacity now: "
        f"{json.dumps(capacity)}", status=None, call="launch")


def _find_by_name(client: LambdaClient, name: str, tries: int = 3) -> Instance | None:
    """The live instance called `name`, asking a few times (the listing itself may fail)."""
    for attempt in range(tries):
        try:
            return next((i for i in client.instances() if i.name == name and not i.gone), None)
        except LambdaAPIError as e:
            log.warning("looking for instance %s: %s", name, e)
            time.sleep(min(client.retry.first_wait * (attempt + 1), 10))
    return None


def _terminate_by_name(client: LambdaClient, name: str, registry: Registry, pending: str) -> None:
    found = _find_by_name(client, name)
    if found is not None:
        left = terminate(client, [found.id], registry, "launched by an interrupted call")
        if left:
            return  # terminate() recorded it; the next reap tries again
    else:
        log.warning("no instance named %s after an interrupted launch; the next `fractal lambda` command "
                    "looks again", name)
        return  # the pending record stays: reap adopts the instance if it appears
    with registry.locked() as state:
        state.pop(pending, None)


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


def terminate(client: LambdaClient, instance_ids: list[str], registry: Registry, reason: str,
              tries: int = 4) -> list[str]:
    """Terminates each instance, going on past errors: a failed call is retried with backoff,
    and an instance seen terminating, terminated or preempted (or unknown to the API) is done,
    whatever the call answered (the API says `global/unknown` to terminating one twice).
    Done ones are forgotten; returns the ids still running (they stay recorded)."""
    left = []
    for instance_id in instance_ids:
        wait = max(client.retry.first_wait, 0.01)
        for attempt in range(1, tries + 1):
            try:
                client.terminate([instance_id])
                log.info("terminated instance %s (%s)", instance_id, reason)
                break
            except LambdaAPIError as e:
                if e.code == "global/object-does-not-exist":
                    break
                error = e
            try:
                if client.instance(instance_id).gone:
                    log.info("instance %s is terminating (%s)", instance_id, reason)
                    break
            except LambdaAPIError as e:
                if e.code == "global/object-does-not-exist":
                    break
            if attempt == tries:
                log.error("could not terminate instance %s after %d tries: %s", instance_id, tries, error)
                left.append(instance_id)
                break
            time.sleep(min(wait, client.retry.max_wait))
            wait *= client.retry.factor
        if instance_id not in left:
            with registry.locked() as state:
                state.pop(instance_id, None)
    return left


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
    holder: str = ""  # this run's token among the instance's holders


def acquire(client: LambdaClient, settings: LambdaSettings, registry: Registry) -> Acquired:
    """The instance a run uses: the one named in lambda.instance, else an idle instance
    fractal launched earlier and kept (of a preferred type), else a new one. The run holds it
    (a holder of its own) until `release`."""
    ssh_key, public_key = local_ssh_key(settings)
    if settings.instance:
        inst = find_instance(client, settings.instance)
        if not inst.ready:
            raise RemoteError(f"lambda.instance = {settings.instance}: instance {inst.id} is {inst.status}, "
                              "not active")
        token = hold(registry, inst.id, "run")
        return Acquired(inst, launched=False, keep=True, ssh_key=ssh_key, started=time.time(), holder=token)
    reused = _reuse_idle(client, settings, registry, ssh_key, 1)
    if reused:
        return reused[0]
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
    return Acquired(inst, launched=True, keep=settings.keep_instance, ssh_key=ssh_key, started=started,
                    holder=launched.holder)


def _reuse_idle(client: LambdaClient, settings: LambdaSettings, registry: Registry, ssh_key: Path, count: int,
                region: str = "", exclude: tuple[str, ...] = ()) -> list[Acquired]:
    """Up to `count` idle instances fractal launched earlier and kept (of a preferred type, in
    `region` when one is given), each now held by this run, most recently used first."""
    live = {i.id: i for i in client.instances()}
    found: list[Acquired] = []
    with registry.locked() as state:
        for entry in sorted((e for e in state.values() if not e.get("pending")), key=lambda e: -e["last_used"]):
            if len(found) == count:
                break
            inst = live.get(entry["id"])
            if (inst is not None and inst.ready and entry.get("keep") and inst.id not in exclude
                    and not any(_holder_alive(h) for h in holders(entry).values())
                    and entry["type"] in settings.instance_types and (not region or inst.region == region)):
                token, holder = _new_holder("run")
                entry["holders"] = {token: holder}
                entry.pop("lease", None)
                log.info("reusing instance %s (%s, %s)", inst.name or inst.id, inst.type_name, inst.region)
                found.append(Acquired(inst, launched=False, keep=True, ssh_key=ssh_key, started=time.time(),
                                      holder=token))
    return found


def acquire_more(client: LambdaClient, settings: LambdaSettings, registry: Registry, head: Instance,
                 count: int) -> list[Acquired]:
    """`count` more instances beside `head` for a Ray cluster (lambda.nodes): in the head's
    region, since the nodes talk over their private IPs; idle kept ones first, the rest
    launched one after another (the API takes one per call) and only then awaited, so they
    boot together rather than in turn. Each is held by this run until `release`. If a launch
    or a boot fails, or the call is interrupted, what it launched is terminated (and what it
    reused let go) before it raises: the caller releases only what this returns."""
    ssh_key, public_key = local_ssh_key(settings)
    got = _reuse_idle(client, settings, registry, ssh_key, count, region=head.region, exclude=(head.id,))
    launched: list[Launched] = []
    try:
        if len(got) < count:
            key_name = ensure_ssh_key(client, public_key)
            here = dataclasses.replace(settings, instance="", regions=[head.region])
            for _ in range(count - len(got)):
                launched.append(launch(client, here, key_name, keep=settings.keep_instance, registry=registry,
                                       lease=True))
            started = time.time()
            for new in launched:
                inst = wait_ready(client, new.instance_id, settings.boot_timeout_minutes * 60, settings.poll_seconds)
                got.append(Acquired(inst, launched=True, keep=settings.keep_instance, ssh_key=ssh_key,
                                    started=started, holder=new.holder))
    except BaseException:
        with shielded():
            terminate(client, [new.instance_id for new in launched], registry, "its Ray cluster did not come up")
            for a in got:
                if not a.launched:
                    let_go(registry, a.instance.id, a.holder)
        raise
    return got


def release(client: LambdaClient, acquired: Acquired, registry: Registry) -> list[str]:
    """Ends this run's use: terminates what it launched unless kept, else lets go of its
    holder (other holders keep the instance busy). Returns what could not be terminated."""
    if acquired.launched and not acquired.keep:
        return terminate(client, [acquired.instance.id], registry, "the run that launched it ended")
    let_go(registry, acquired.instance.id, acquired.holder)
    return []


def touch(registry: Registry, instance_id: str) -> None:
    """Counts as use for the idle limit."""
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


def adopt(client: LambdaClient, registry: Registry, live: list[Instance]) -> list[str]:
    """Records instances that carry fractal's tags for this user but that the registry does not
    know (a lost launch answer, a run killed before it wrote the record, a deleted ~/.fractal).
    A launch's pending record (its name) says whether it was to be kept: a run's is not, and the
    reap that adopts it terminates it. With no record at all (a deleted ~/.fractal) it is
    treated as kept: the default idle and age limits end it, counted from now, rather than
    killing what may be a user's warm instance at once. An instance whose launcher is alive
    and about to record it is left alone. Returns the adopted ids."""
    adopted = []
    with registry.locked() as state:
        pending = {e["name"]: k for k, e in state.items() if e.get("pending")}
        for inst in live:
            if inst.gone or inst.id in state or not is_ours(inst):
                continue
            key = pending.get(inst.name)
            if key and any(_holder_alive(h) for h in holders(state[key]).values()):
                continue  # its launcher is alive and will record it
            record = state.pop(key) if key else {"since": time.time(), "keep": True}
            state[inst.id] = _entry(inst.id, inst.name, inst.type_name, inst.region, inst.price_cents_per_hour,
                                    bool(record.get("keep")), LambdaSettings(), client.base_url, record["since"])
            state[inst.id]["adopted"] = True
            adopted.append(inst.id)
            log.warning("adopted instance %s (%s): it carries fractal's tags for %s but was not in %s",
                        inst.name, inst.id, owner(), registry.path)
        for key in list(pending.values()):  # launches that died and whose instance never appeared
            entry = state.get(key)
            if entry and not any(_holder_alive(h) for h in holders(entry).values()) \
                    and time.time() - entry["since"] > 600:
                del state[key]
    return adopted


def reap(client: LambdaClient, registry: Registry, now: float | None = None) -> list[tuple[str, str]]:
    """Adopts fractal's unrecorded instances, then terminates recorded instances past their
    limits; forgets those already gone. Returns (instance id, reason) for each termination."""
    now = time.time() if now is None else now
    listing = client.instances()
    adopt(client, registry, listing)
    live = {i.id: i for i in listing}
    doomed: list[tuple[str, str]] = []
    with registry.locked() as state:
        for instance_id, entry in list(state.items()):
            if entry.get("pending") or entry.get("api_url", client.base_url) != client.base_url:
                continue
            inst = live.get(instance_id)
            if inst is None or inst.gone:
                del state[instance_id]
                continue
            alive = {k: h for k, h in holders(entry).items() if _holder_alive(h, now)}
            entry["holders"] = alive  # dead holders' processes are gone
            entry.pop("lease", None)
            busy = bool(alive)
            if busy:
                entry["last_used"] = now
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
