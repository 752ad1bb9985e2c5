"""A local stand-in for Lambda Cloud: the REST API (as Lambda's published OpenAPI document
for v1 describes it) and "instances" that are a real sshd on loopback.

Test support, not part of the installed package: the tests, speed/remote_overhead.py and the
dry run of docs/lambda.md (`python tests/support/double.py`: a pipeline's remote stages run
end to end without spending money) use it. Standard library only, so it runs as a script. The API part keeps the documented envelopes, statuses
(booting -> active, terminating -> terminated; `unhealthy` and `preempted` on request),
error codes and HTTP statuses, and misbehaves as the real API does:
- rate limits: HTTP 429 (no body) when calls come faster than `request_rate` per second
  (a token bucket of `request_burst`) or launches faster than one per `launch_interval` s;
  the real values are about 1/s and 12 s (REAL_REQUEST_RATE, REAL_LAUNCH_INTERVAL), off by
  default so tests stay fast;
- terminating an instance that is already terminating answers `global/unknown` (HTTP 500,
  "An unknown error occurred."), as SkyPilot PR #3410 saw; the doc is silent on the status;
- `inject` answers the next calls slowly, with a 5xx gateway page instead of the JSON
  envelope, or not at all (connection closed), before or *after* the call took effect: a
  launch whose response is lost still bills, as on the real API.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import http.server
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_TYPES = {
    "gpu_1x_a10": ("1x A10 (24 GB PCIe)", 75, ["us-west-1", "us-east-1"]),
    "gpu_1x_a100_sxm4": ("1x A100 (40 GB SXM4)", 129, ["us-west-1", "us-east-1"]),
    "gpu_1x_h100_pcie": ("1x H100 (80 GB PCIe)", 249, ["us-west-1"]),
    "gpu_8x_h100_sxm5": ("8x H100 (80 GB SXM5)", 2392, []),
}
REGIONS = {"us-west-1": "California, USA", "us-east-1": "Virginia, USA", "europe-central-1": "Germany"}
REAL_REQUEST_RATE = 1.0  # requests per second (Lambda documents "about 1 request/s")
REAL_LAUNCH_INTERVAL = 12.0  # seconds between launches ("launch about 1 per 12 s")
GATEWAY_PAGE = b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"


@dataclasses.dataclass
class _Fault:
    method: str
    path_prefix: str
    status: int  # 0: close the connection without answering
    code: str | None
    times: int
    delay: float = 0.0  # seconds before answering (a client with a shorter timeout gives up)
    html: bool = False  # a gateway's HTML page instead of the JSON envelope
    after: bool = False  # the call takes effect first; only its answer is replaced


@dataclasses.dataclass
class _Instance:
    id: str
    name: str
    type_name: str
    region: str
    ssh_key_names: list[str]
    tags: list[dict[str, str]]
    launched: float
    terminated_at: float | None = None
    forced: str = ""  # "unhealthy" or "preempted", set by a test


class LambdaDouble:
    """The Lambda Cloud API on http://127.0.0.1:<port>/api/v1, in a thread of this process."""

    def __init__(self, api_keys: set[str], ssh_host: str = "127.0.0.1", *, private_ip: str = "10.0.0.2",
                 boot_seconds: float = 0.5,
                 terminate_seconds: float = 0.3, launch_interval: float = 0.0, request_rate: float = 0.0,
                 request_burst: int = 3):
        self.api_keys = set(api_keys)
        self.ssh_host = ssh_host
        self.private_ip = private_ip  # every instance's (a test of a Ray cluster across "instances": 127.0.0.1)
        self.boot_seconds = boot_seconds
        self.terminate_seconds = terminate_seconds
        self.launch_interval = launch_interval  # the real API: about 12 s between launches (0: no limit)
        self.request_rate = request_rate  # the real API: about 1 per second (0: no limit)
        self.request_burst = request_burst
        self._tokens = float(request_burst)
        self._tokens_at = time.monotonic()
        self.types = {name: {"description": d, "price": p} for name, (d, p, _) in DEFAULT_TYPES.items()}
        self.capacity: dict[str, list[str]] = {name: list(r) for name, (_, _, r) in DEFAULT_TYPES.items()}
        self.ssh_keys: dict[str, dict[str, str]] = {}
        self.instances: dict[str, _Instance] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) of every call
        self._faults: list[_Fault] = []
        self._last_launch = 0.0
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test controls -------------------------------------------------------------------

    def inject(self, method: str, path_prefix: str, status: int, code: str | None = None, times: int = 1, *,
               delay: float = 0.0, html: bool = False, after: bool = False) -> None:
        """The next `times` calls matching method and path answer `status` (with `code` in the
        error envelope; 429 answers have no documented body, so none is sent). status 0 closes
        the connection without an answer; `html` sends a gateway page instead of the envelope;
        `delay` answers late; `after` lets the call take effect before its answer is replaced
        (a lost launch response: the instance exists and bills, the client never hears its id)."""
        self._faults.append(_Fault(method, path_prefix, status, code, times, delay, html, after))

    def slow(self, method: str, path_prefix: str, delay: float, times: int = 1) -> None:
        """The next `times` matching calls take effect and answer normally, `delay` s late."""
        self._faults.append(_Fault(method, path_prefix, 200, None, times, delay, after=True))

    def set_status(self, instance_id: str, status: str) -> None:
        """An instance turns `unhealthy` (still billing, not usable) or is `preempted` (gone,
        no longer billing); "" returns it to the normal life cycle."""
        assert status in ("", "unhealthy", "preempted"), status
        with self._lock:
            self.instances[instance_id].forced = status

    def running(self) -> list[str]:
        """Ids of instances that bill: anything launched and not yet terminating."""
        with self._lock:
            return [i.id for i in self.instances.values() if i.terminated_at is None and i.forced != "preempted"]

    def status_of(self, inst: _Instance) -> str:
        now = time.monotonic()
        if inst.terminated_at is not None:
            return "terminated" if now - inst.terminated_at >= self.terminate_seconds else "terminating"
        if inst.forced:
            return inst.forced
        return "active" if now - inst.launched >= self.boot_seconds else "booting"

    # -- server --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the double first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/v1"

    def start(self) -> LambdaDouble:
        double = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # the request line is the tests' business
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, doc = double._dispatch(method, self.path, self.headers.get("Authorization", ""), body)
                if status == 0:  # a lost response: the connection closes without a word
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                payload = b"" if doc is None else doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                self.send_response(status)
                if isinstance(doc, bytes):
                    self.send_header("Content-Type", "text/html")
                elif doc is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(OSError):  # a client that gave up waiting has closed its end
                    self.wfile.write(payload)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="lambda-double",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LambdaDouble:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- the API -------------------------------------------------------------------------

    def _dispatch(self, method: str, path: str, auth: str, raw: bytes) -> tuple[int, Any]:
        path = path.split("?", 1)[0]
        status, doc = self._answer(method, path, auth, raw)
        with self._lock:
            self.requests.append((method, path, status))
        return status, doc

    def _answer(self, method: str, path: str, auth: str, raw: bytes) -> tuple[int, Any]:
        if not path.startswith("/api/v1/"):
            return _error(404, "global/object-does-not-exist", f"no route {path}")
        route = path[len("/api/v1"):]
        if not self._authorized(auth):
            return _error(401, "global/invalid-api-key", "API key was invalid, expired, or deleted.",
                          "Check your API key or create a new one, then try again.")
        if not self._take_token():
            return 429, None
        fault = None
        with self._lock:
            for f in self._faults:
                if f.times > 0 and f.method == method and route.startswith(f.path_prefix):
                    f.times -= 1
                    fault = f
                    break
        if fault is not None and not fault.after:
            time.sleep(fault.delay)
            return _faulty(fault)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return _error(400, "global/invalid-parameters", "request body is not JSON")
        with self._lock:
            answer = self._route(method, route, body)
        if fault is not None:
            time.sleep(fault.delay)
            return answer if fault.status == 200 else _faulty(fault)
        return answer

    def _take_token(self) -> bool:
        """The general rate limit, as a token bucket: `request_burst` calls at once, then
        `request_rate` per second."""
        if not self.request_rate:
            return True
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.request_burst, self._tokens + (now - self._tokens_at) * self.request_rate)
            self._tokens_at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True

    def _authorized(self, auth: str) -> bool:
        scheme, _, value = auth.partition(" ")
        if scheme == "Bearer":
            return value in self.api_keys
        if scheme == "Basic":
            try:
                user, _, _ = base64.b64decode(value).decode().partition(":")
            except ValueError:
                return False
            return user in self.api_keys
        return False

    def _route(self, method: str, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        if method == "GET" and route == "/instance-types":
            return _ok({name: {"instance_type": self._type(name),
                               "regions_with_capacity_available": [_region(r) for r in self.capacity.get(name, [])]}
                        for name in self.types})
        if method == "GET" and route == "/regions":
            return _ok([_region(r) for r in REGIONS])
        if method == "GET" and route == "/instances":
            return _ok([self._instance(i) for i in self.instances.values() if self.status_of(i) != "terminated"])
        if method == "GET" and route.startswith("/instances/"):
            inst = self.instances.get(route.rsplit("/", 1)[1])
            if inst is None:
                return _error(404, "global/object-does-not-exist", "Instance does not exist.")
            return _ok(self._instance(inst))
        if method == "POST" and route == "/instance-operations/launch":
            return self._launch(body)
        if method == "POST" and route == "/instance-operations/terminate":
            return self._terminate(body)
        if method == "GET" and route == "/ssh-keys":
            return _ok(list(self.ssh_keys.values()))
        if method == "POST" and route == "/ssh-keys":
            name, public_key = body.get("name"), body.get("public_key")
            if not isinstance(name, str) or not name or len(name) > 64:
                return _error(400, "global/invalid-parameters", "name is required (at most 64 characters)")
            if any(k["name"] == name for k in self.ssh_keys.values()):
                return _error(400, "global/invalid-parameters", f"an SSH key named {name} already exists")
            if not public_key:
                return _error(400, "global/invalid-parameters", "the double does not generate key pairs")
            key = {"id": secrets.token_hex(16), "name": name, "public_key": public_key}
            self.ssh_keys[key["id"]] = key
            return _ok(key)
        if method == "DELETE" and route.startswith("/ssh-keys/"):
            if self.ssh_keys.pop(route.rsplit("/", 1)[1], None) is None:
                return _error(404, "global/object-does-not-exist", "SSH key does not exist.")
            return _ok({})
        return _error(404, "global/object-does-not-exist", f"no route {method} {route}")

    def _launch(self, body: dict[str, Any]) -> tuple[int, Any]:
        now = time.monotonic()
        if self.launch_interval and now - self._last_launch < self.launch_interval:
            return 429, None  # checked before the body, as a gateway's limiter would
        type_name, region = body.get("instance_type_name"), body.get("region_name")
        key_names = body.get("ssh_key_names")
        if body.get("quantity", 1) != 1:
            return _error(400, "global/invalid-parameters", "quantity must be 1")
        if not isinstance(key_names, list) or len(key_names) != 1:
            return _error(400, "global/invalid-parameters", "ssh_key_names must name exactly one key")
        if len(body.get("name") or "") > 64:
            return _error(400, "global/invalid-parameters", "name is longer than 64 characters")
        if type_name not in self.types:
            return _error(400, "global/object-does-not-exist", f"Instance type {type_name} does not exist.")
        if region not in REGIONS:
            return _error(400, "global/object-does-not-exist", f"Region {region} does not exist.")
        if not any(k["name"] == key_names[0] for k in self.ssh_keys.values()):
            return _error(400, "global/object-does-not-exist", f"SSH key {key_names[0]} does not exist.")
        if region not in self.capacity.get(type_name, []):
            return _error(400, "instance-operations/launch/insufficient-capacity",
                          "Not enough capacity to fulfill launch request.",
                          "Choose an instance type with more availability, or try again later.")
        self._last_launch = now
        inst = _Instance(id=secrets.token_hex(16), name=body.get("name") or "", type_name=type_name,
                         region=region, ssh_key_names=list(key_names), tags=list(body.get("tags") or []),
                         launched=now)
        self.instances[inst.id] = inst
        return _ok({"instance_ids": [inst.id]})

    def _terminate(self, body: dict[str, Any]) -> tuple[int, Any]:
        ids = body.get("instance_ids")
        if not isinstance(ids, list) or not ids:
            return _error(400, "global/invalid-parameters", "instance_ids must be a non-empty list")
        missing = [i for i in ids if i not in self.instances or self.status_of(self.instances[i]) == "terminated"]
        if missing:
            return _error(404, "global/object-does-not-exist", f"Instance {missing[0]} does not exist.")
        if any(self.status_of(self.instances[i]) == "terminating" for i in ids):
            return _error(500, "global/unknown", "An unknown error occurred.")  # SkyPilot PR #3410
        now = time.monotonic()
        for i in ids:
            if self.instances[i].terminated_at is None:
                self.instances[i].terminated_at = now
        return _ok({"terminated_instances": [self._instance(self.instances[i]) for i in ids]})

    def _type(self, name: str) -> dict[str, Any]:
        t = self.types[name]
        gpus = int(name.split("_")[1].rstrip("x"))
        return {"name": name, "description": t["description"], "gpu_description": t["description"].split(" ", 1)[1],
                "price_cents_per_hour": t["price"],
                "specs": {"vcpus": 30 * gpus, "memory_gib": 200 * gpus, "storage_gib": 512 * gpus, "gpus": gpus}}

    def _instance(self, inst: _Instance) -> dict[str, Any]:
        status = self.status_of(inst)
        d: dict[str, Any] = {
            "id": inst.id, "name": inst.name, "status": status, "hostname": f"{inst.id[:8]}.cloud.lambda.local",
            "region": _region(inst.region), "instance_type": self._type(inst.type_name),
            "ssh_key_names": inst.ssh_key_names, "file_system_names": [], "tags": inst.tags,
            "jupyter_url": None, "jupyter_token": None,
            "actions": {"terminate": {"available": status in ("active", "booting", "unhealthy")},
                        "restart": {"available": status == "active"}},
        }
        if status != "booting":  # the API leaves ip out while an instance boots
            d["ip"] = self.ssh_host
            d["private_ip"] = self.private_ip
        return d


def _faulty(f: _Fault) -> tuple[int, Any]:
    if f.status in (0, 429):
        return f.status, None
    if f.html:
        return f.status, GATEWAY_PAGE
    return _error(f.status, f.code or "provider/internal-unavailable", "injected fault")


def _ok(data: Any) -> tuple[int, Any]:
    return 200, {"data": data}


def _error(status: int, code: str, message: str, suggestion: str = "") -> tuple[int, Any]:
    err = {"code": code, "message": message}
    if suggestion:
        err["suggestion"] = suggestion
    return status, {"error": err}


def _region(name: str) -> dict[str, str]:
    return {"name": name, "description": REGIONS.get(name, name)}


class LoopbackSSHD:
    """A real OpenSSH server on 127.0.0.1:<free port>, run as a child of this process with its
    own config, host key and authorized_keys in `workdir` (nothing system-wide is touched
    except that sshd insists on its privilege-separation directory, /run/sshd)."""

    def __init__(self, workdir: str | os.PathLike, authorized_keys: list[str]):
        self.workdir = Path(workdir)
        self.authorized_keys = authorized_keys
        self.port = 0
        self.user = _current_user()
        self.proc: subprocess.Popen[bytes] | None = None
        self.host_key_pub = ""

    def start(self, timeout: float = 10.0) -> LoopbackSSHD:
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        if not Path(sshd).exists():
            raise RuntimeError("sshd not found: install Debian's openssh-server (apt-get install openssh-server rsync)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        host_key = self.workdir / "ssh_host_ed25519_key"
        if not host_key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        self.host_key_pub = (self.workdir / "ssh_host_ed25519_key.pub").read_text().strip()
        (self.workdir / "authorized_keys").write_text("\n".join(self.authorized_keys) + "\n")
        self.port = _free_port()
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
            f"PidFile {self.workdir / 'sshd.pid'}", f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "StrictModes no", "PrintMotd no", "MaxStartups 100", "MaxSessions 50",
            "Subsystem sftp internal-sftp", "LogLevel ERROR", "",
        ]))
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=open(self.workdir / "sshd.log", "ab"),
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited ({self.proc.returncode}): {(self.workdir / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not answer on 127.0.0.1:{self.port} within {timeout} s")

    def drop_connections(self) -> int:
        """Kills the per-connection sshd children (as a network drop would end them); the
        listener stays up. Returns how many it killed."""
        assert self.proc is not None
        killed = 0
        for pid in _children(self.proc.pid):
            try:
                os.kill(pid, 9)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> LoopbackSSHD:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGTERM when the process that started it
    dies, however it dies (kill -9 included), so a double's sshd never outlives the double."""
    import ctypes
    import signal
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _current_user() -> str:
    import getpass
    return getpass.getuser()


def make_keypair(directory: str | os.PathLike, name: str = "id_ed25519") -> tuple[Path, str]:
    """An unencrypted ed25519 key pair in `directory`: (private key path, public key line)."""
    path = Path(directory) / name
    if not path.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fractal-double", "-f", str(path)],
                       check=True)
    return path, path.with_suffix(".pub").read_text().strip()


def main(argv: list[str] | None = None) -> int:
    """The double with the real API's rate limits, its sshd a child that dies with it (Ctrl-C,
    SIGTERM, SIGHUP or kill -9), and settings under which the remote side installs the project
    the way `pip install .` does on a real instance (offline: no build isolation, no deps)."""
    import signal
    import tempfile

    parser = argparse.ArgumentParser(prog="python tests/support/double.py",
                                     description="run a local stand-in for Lambda (API + loopback sshd) until Ctrl-C")
    parser.add_argument("--boot-seconds", type=float, default=5.0)
    parser.add_argument("--dir", help="where to keep the double's sshd config and keys (created; default: a temp dir)")
    parser.add_argument("--no-rate-limits", action="store_true", help="answer as fast as asked (Lambda allows about "
                        "1 request/s and 1 launch per 12 s)")
    args = parser.parse_args(argv)
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="fractal-double-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    key, public_key = make_keypair(workdir, "client_ed25519")
    api_key = "double-" + secrets.token_hex(8)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGINT too: a shell's `cmd &` starts it ignored
        signal.signal(s, stop)
    rate = 0.0 if args.no_rate_limits else REAL_REQUEST_RATE
    interval = 0.0 if args.no_rate_limits else REAL_LAUNCH_INTERVAL
    try:
        with LoopbackSSHD(workdir / "sshd", [public_key]) as sshd, \
                LambdaDouble({api_key}, boot_seconds=args.boot_seconds, request_rate=rate,
                             launch_interval=interval) as double:
            # The venv's own bundled setuptools (ensurepip's) shadows the system's newer one and
            # cannot build a wheel without `wheel`; removed, the system's builds the project offline.
            setup = "pip uninstall -y -q setuptools || true; pip install --no-deps --no-build-isolation --no-index -q ."
            print("\n".join([
                "A local stand-in for Lambda is running (Ctrl-C stops it). In another shell:",
                f"  export FRACTAL_LAMBDA_API_URL={double.url}",
                f"  export LAMBDA_API_KEY={api_key}   # the double's own key, not a Lambda one",
                f"  export FRACTAL_HOME={workdir / 'home'}",
                "and in .fractal/executor.yaml:",
                f"  lambda: {{ssh_user: {sshd.user}, ssh_port: {sshd.port}, ssh_key: {key}, poll_seconds: 1, "
                "retry_seconds: 1}",
                "  remote: {root: " + str(workdir / "remote") + ", python: " + sys.executable + ", setup: '"
                + setup + "'}",
                f"(rate limits as Lambda's: {rate:g} request/s, one launch per {interval:g} s; --no-rate-limits "
                "turns them off)",
            ]), flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                left = double.running()
                print(f"\nstopping the double ({len(left)} instance(s) were still running in it)", flush=True)
    except KeyboardInterrupt:  # while starting
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
