"""SSH to a remote host: Fabric (paramiko) for commands, OpenSSH for rsync and interactive use.

Both check the host key against the same known_hosts file. For a Lambda instance that file
is its own (one per instance id, because Lambda reuses IPs across customers) and the key is
pinned the first time fractal reaches the instance; it never goes into ~/.ssh/known_hosts.
For an `ssh` executor host the user's own known_hosts (or the one they name) decides, and
an unknown key is refused rather than silently trusted (Fabric's default).
"""
from __future__ import annotations

import dataclasses
import logging
import shlex
import socket
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from fractal.records import atomic_path

if TYPE_CHECKING:  # importing fabric costs ~0.3 s; only remote runs pay it
    import fabric

log = logging.getLogger(__name__)


class RemoteError(RuntimeError):
    """A remote run failed for a reason the message explains (not the stage's own exit code)."""


class HostKeyError(RemoteError):
    """The host's key is not the pinned one (or not known at all): never retried."""


@dataclasses.dataclass
class Target:
    """Where a remote stage runs, as both Fabric and OpenSSH reach it."""
    label: str  # for messages, e.g. "lambda instance 1a2b3c4d (gpu_1x_a100_sxm4, us-west-1)"
    host: str  # a host name, an IP or an ~/.ssh/config alias
    user: str = ""
    port: int = 0
    identity_file: str = ""
    known_hosts: Path | None = None  # None: the user's ~/.ssh/known_hosts
    pin_new_keys: bool = False  # record the key of a host not yet in known_hosts (first contact)
    ssh_config: Path | None = None  # a generated config that rsync and `ssh -F` use
    alias: str = ""  # the Host name in ssh_config
    price_cents_per_hour: int = 0  # 0: unknown (no cost report)
    still_there: Callable[[], bool] | None = None  # False when the host is known to be gone for good

    def ssh_args(self) -> list[str]:
        """The options of an `ssh` command line (no destination)."""
        if self.ssh_config is not None:
            return ["-F", str(self.ssh_config)]
        args = ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.port:
            args += ["-p", str(self.port)]
        if self.identity_file:
            args += ["-i", str(Path(self.identity_file).expanduser())]
        if self.known_hosts is not None:
            args += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        return args

    def destination(self) -> str:
        if self.alias:
            return self.alias
        return f"{self.user}@{self.host}" if self.user else self.host

    def rsync_shell(self) -> str:
        """The value of rsync's -e option."""
        return shlex.join(["ssh", *self.ssh_args()])

    def connect(self, timeout: float = 15.0) -> fabric.Connection:
        """An open Fabric connection that has checked the host key."""
        import fabric
        import paramiko

        kwargs: dict[str, Any] = {}
        if self.identity_file:
            kwargs["key_filename"] = [str(Path(self.identity_file).expanduser())]
        # A Lambda target has its own generated config; the user's ~/.ssh/config (a `Host *`
        # ProxyJump, say) must not reroute it. An ssh-executor host may be an alias from it.
        config = fabric.Config(overrides={"load_ssh_configs": self.ssh_config is None})
        conn = fabric.Connection(self.host, user=self.user or None, port=self.port or None, config=config,
                                 connect_timeout=int(timeout), connect_kwargs=kwargs)
        client = conn.client
        if self.known_hosts is not None:
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            self.known_hosts.touch(mode=0o600, exist_ok=True)
            client.load_host_keys(str(self.known_hosts))
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(_Pin(self) if self.pin_new_keys else _Refuse(self))
        try:
            conn.open()
        except RemoteError:
            conn.close()
            raise
        except paramiko.BadHostKeyException as e:
            conn.close()
            raise HostKeyError(
                f"{self.label}: the host key of {e.hostname} changed since it was pinned in "
                f"{self.known_hosts or '~/.ssh/known_hosts'}; refusing to connect (if the host was really "
                "reinstalled, delete that entry)") from None
        except paramiko.AuthenticationException as e:
            conn.close()
            raise RemoteError(f"{self.label}: SSH authentication as {conn.user} failed ({e}); check the key "
                              f"({self.identity_file or 'ssh defaults'})") from None
        except (OSError, paramiko.SSHException) as e:
            conn.close()
            raise RemoteError(f"{self.label}: cannot connect to {self.host}:{conn.port} ({e})") from None
        return conn


class _Refuse:
    def __init__(self, target: Target):
        self.target = target

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        where = self.target.known_hosts or "~/.ssh/known_hosts"
        raise HostKeyError(f"{self.target.label}: the host key of {hostname} is not in {where}; connect once "
                          f"with `ssh {self.target.destination()}` and check the fingerprint, or name a "
                          "known_hosts file in the ssh section of .fractal/executor.yaml")


class _Pin:
    """Trust on first use, written to the target's own known_hosts file."""

    def __init__(self, target: Target):
        self.target = target

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        assert self.target.known_hosts is not None
        client.get_host_keys().add(hostname, key.get_name(), key)
        client.save_host_keys(str(self.target.known_hosts))
        log.info("%s: pinned host key %s %s in %s", self.target.label, key.get_name(),
                 key.fingerprint if hasattr(key, "fingerprint") else "", self.target.known_hosts)


def write_ssh_config(path: Path, alias: str, host: str, user: str, port: int, identity_file: str,
                     known_hosts: Path) -> None:
    """An OpenSSH config block that checks the host key strictly against `known_hosts` only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"Host {alias}", f"  HostName {host}", f"  User {user}", f"  Port {port}",
        f"  IdentityFile {Path(identity_file).expanduser()}", "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {known_hosts}", "  GlobalKnownHostsFile /dev/null",
        "  StrictHostKeyChecking yes", "  BatchMode yes", "  ConnectTimeout 15",
        "  ServerAliveInterval 15", "  ServerAliveCountMax 4", "",
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def wait_for_ssh(host: str, port: int, deadline: float, poll: float = 1.0) -> None:
    """Until the port answers with an SSH banner (sshd starts a little after `active`)."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                s.settimeout(5)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError as e:
            last = e
        time.sleep(poll)
    raise RemoteError(f"{host}:{port} did not answer SSH in time ({last})")


def rsync(target: Target, args: list[str], compress: bool, what: str, files: str | None = None) -> None:
    """Runs rsync over the target's ssh; `files` feeds `--files-from=-`. Progress only on a
    terminal."""
    import sys
    # --timeout: rsync gives up after 120 s without I/O (ssh's ServerAlive options notice a dead
    # link within a minute; this bounds a peer that is alive but stuck)
    cmd = ["rsync", "-a", "--partial", "--timeout=120", "-e", target.rsync_shell()]
    if compress:
        cmd.append("-z")
    progress = sys.stderr.isatty()
    if progress:
        cmd.append("--info=progress2")
    proc = subprocess.run([*cmd, *args], input=files if files is not None else "",
                          stdout=None if progress else subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RemoteError(f"{target.label}: rsync ({what}) failed with exit code {proc.returncode}: "
                          f"{proc.stderr.strip()[-2000:]}")
