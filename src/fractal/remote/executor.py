"""A stage on a remote host (an SSH host, or a Lambda instance lambda_run acquired): `RemoteRun`.
fractal.dispatch decides where a stage runs; this module runs it there.

A remote run, in order: connect (Fabric) -> make the remote directories and look for the
environment -> rsync the files git tracks plus the stage's deps to a working directory unique
to this DVC experiment -> build the remote environment if this is its first use -> start the
stage detached (setsid, log to a file, exit code to a file) -> stream the log, reattaching if
the connection drops -> compute the outputs' sizes and SHA-256 there -> rsync them into a
staging directory here -> check them against that manifest -> move each into place with a
rename, so an output is either complete or absent. DVC then hashes the outputs as if the
stage had run locally.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from fractal.dvcfile import StageSpec, load_stage
from fractal.records import move_into_place
from fractal.remote.config import ConfigError, ExecutorConfig, RemoteSettings, SSHSettings
from fractal.remote.ssh import HostKeyError, RemoteError, Target, rsync

if TYPE_CHECKING:
    import fabric

log = logging.getLogger(__name__)

# Never sent to a remote host, whatever remote.env says: it controls the whole Lambda account.
NEVER_FORWARDED = ("LAMBDA_API_KEY",)
FORWARDED_DVC_VARS = ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "DVC_STAGE")
ENV_FILES = ("pyproject.toml", "setup.py", "setup.cfg", "requirements.txt", "requirements-gpu.txt")


def stage_command(stage: str, argv: list[str], python: str) -> list[str]:
    """The same command wherever the stage runs."""
    return [python, f"stages/{stage}.py", *argv]


def run_on_ssh_host(stage: str, argv: list[str], cfg: ExecutorConfig) -> int:
    target = ssh_target(cfg.ssh, cfg.source)
    spec = load_stage(stage)
    t0 = time.monotonic()
    rc = RemoteRun(target, cfg.remote, spec, stage, argv).execute()
    log.info("%s ran on %s in %s", stage, target.label, format_duration(time.monotonic() - t0))
    return rc


def ssh_target(s: SSHSettings, source: Path | None) -> Target:
    if not s.host:
        raise ConfigError(f"{source or '.fractal/executor.yaml'}: the ssh executor needs `ssh.host` (a host name "
                          "or an ~/.ssh/config alias)")
    return Target(label=f"ssh host {s.host}", host=s.host, user=s.user, port=s.port, identity_file=s.identity_file,
                  known_hosts=Path(s.known_hosts).expanduser() if s.known_hosts else None)


def configure_logging() -> None:
    logger = logging.getLogger("fractal.remote")
    if not any(getattr(h, "_fractal", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("fractal: %(message)s"))
        handler._fractal = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def workspace_name(cwd: Path | None = None) -> str:
    """The remote working directory's name: one per DVC experiment (DVC_EXP_NAME, set for
    `dvc exp run` and queued experiments) and otherwise one per local workspace path."""
    cwd = (cwd or Path.cwd()).resolve()
    exp = os.environ.get("DVC_EXP_NAME", "")
    project = Path(os.environ.get("DVC_ROOT") or cwd).name
    if exp:
        return _slug(f"{project}-exp-{exp}")
    return _slug(f"{project}-ws-{hashlib.sha256(str(cwd).encode()).hexdigest()[:12]}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:100]


def format_duration(seconds: float) -> str:
    """A span of time for a person: 4.2 s, 3m07s, 1h02m03s."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _q(path: str) -> str:
    return shlex.quote(path)


@dataclasses.dataclass
class Result:
    exited: int
    stdout: str
    stderr: str


class _Dropped(RemoteError):
    """The SSH connection went away; the remote stage itself may be fine."""


class RemoteRun:
    """One stage on one target; `execute` returns the stage's exit code."""

    def __init__(self, target: Target, settings: RemoteSettings, spec: StageSpec, stage: str, argv: list[str],
                 out: Any = None, on_log: Callable[[bytes], None] | None = None, env: dict[str, str] | None = None):
        self.target = target
        self.settings = settings
        self.spec = spec
        self.stage = stage
        self.argv = argv
        self.out = out if out is not None else getattr(sys.stdout, "buffer", sys.stdout)
        self.on_log = on_log  # tests watch the log go by (to cut the connection mid-stage)
        self.extra_env = dict(env or {})  # set for the stage there (FRACTAL_RAY_ADDRESS on a Lambda cluster's head)
        self.name = workspace_name()
        self.conn: fabric.Connection | None = None
        self.timings: dict[str, float] = {}
        self.root = self.work = self.env = self.run_dir = ""
        self.env_ready = False
        self.peers: list[str] = []
        self.log_offset = 0  # bytes of the remote log shown so far: where a reattached stream resumes
        self.synced_before: list[str] = []  # what the last push sent to this workspace

    # -- phases ---------------------------------------------------------------------------

    def execute(self) -> int:
        pid = 0
        try:
            with self._timed("connect"):
                self.conn = self._connect()
                self.prepare()
            with self._timed("sync"):
                self.push()
            if not self.env_ready:
                with self._timed("setup"):
                    self.setup_env()
            with self._timed("start"):
                pid = self.start()
            with self._timed("run"):
                rc, outputs = self.follow(pid)
            if rc != 0:
                log.error("%s failed on %s with exit code %d (its log: %s/log there)", self.stage,
                          self.target.label, rc, self.run_dir)
                return rc
            with self._timed("fetch"):
                self.fetch(outputs)
            return 0
        except KeyboardInterrupt:
            from fractal.remote.instances import shielded
            if pid:
                with shielded():
                    self.kill(pid)
            raise
        finally:
            if self.conn is not None:
                self.conn.close()
            log.info("%s on %s: %s", self.stage, self.target.label,
                     ", ".join(f"{k} {v:.2f} s" for k, v in self.timings.items()))

    def provision(self) -> None:
        """What `execute` does before it starts the stage: connect, sync the workspace, make
        the environment; the connection stays open for `command` until `close`."""
        self.conn = self._connect()
        self.prepare()
        self.push()
        if not self.env_ready:
            self.setup_env()

    def command(self, cmd: str, stdin: str = "", timeout: float = 300.0) -> Result:
        """A short command on the target (connecting first if need be), its output collected."""
        if self.conn is None:
            self.conn = self._connect()
        return self._run(cmd, stdin, timeout)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _connect(self, timeout: float = 15.0) -> fabric.Connection:
        """A connection with SSH keepalives, so a dead link is noticed by the transport too."""
        conn = self.target.connect(timeout=timeout)
        transport = conn.client.get_transport()
        if transport is not None:
            transport.set_keepalive(max(1, int(self.settings.keepalive_seconds)))
        return conn

    def _probe(self, transport: Any) -> None:
        """Raises _Dropped unless the other side answers within keepalive_seconds: a silent
        network drop leaves the TCP connection open, and only a question finds it out. The
        question is asked from a thread (paramiko can block past its own timeouts on a peer
        that reads nothing), and a link that does not answer is cut, so nothing waits on it."""
        wait = max(self.settings.keepalive_seconds, 1.0)
        answered = threading.Event()

        def ask() -> None:
            with contextlib.suppress(Exception):
                transport.open_session(timeout=wait).close()
                answered.set()

        threading.Thread(target=ask, name="ssh-probe", daemon=True).start()
        if not answered.wait(wait):
            with contextlib.suppress(Exception):
                transport.sock.close()
            raise _Dropped(f"no answer in {wait:g} s (remote.keepalive_seconds)")

    @contextlib.contextmanager
    def _timed(self, phase: str) -> Iterator[None]:
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[phase] = time.monotonic() - t0

    def _channel(self, cmd: str, on_output: Callable[[bytes], None], stdin: bytes = b"",
                 merge_stderr: bool = False, timeout: float | None = None, too_long: str = "") -> tuple[int, bytes]:
        """Runs cmd on a new session channel of the connection, the one way every command here
        goes: stdin is sent and closed, stdout (with stderr when merge_stderr) goes to
        on_output as it comes, stderr is collected; returns (exit status, stderr). A link
        silent for remote.keepalive_seconds is probed; after `timeout` seconds it gives up
        (saying too_long, or how long it waited). Raises _Dropped when the link goes, or when
        the channel closes without an exit status."""
        assert self.conn is not None
        transport = self.conn.client.get_transport()
        try:
            if transport is None or not transport.is_active():
                raise EOFError("transport closed")
            chan = transport.open_session(timeout=15)
            chan.set_combine_stderr(merge_stderr)
            chan.exec_command(cmd)
            if stdin:
                chan.sendall(stdin)  # blocking: a large stdin waits for the remote window
            chan.shutdown_write()
            chan.settimeout(0.1)  # short: stderr is drained between reads of stdout
        except Exception as e:  # OSError, EOFError, paramiko.SSHException: the link is gone
            raise _Dropped(str(e) or type(e).__name__) from None
        err = bytearray()
        deadline = None if timeout is None else time.monotonic() + timeout
        quiet_since = time.monotonic()
        while True:  # stdout until its EOF (or an exit status with nothing left to read)
            try:
                while chan.recv_stderr_ready():
                    err += chan.recv_stderr(1 << 16)
                data = chan.recv(1 << 16)
            except socket.timeout:
                if not transport.is_active():
                    raise _Dropped("transport closed") from None
                if chan.exit_status_ready() and not chan.recv_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise _Dropped(too_long or f"no answer in {timeout:.0f} s") from None
                if time.monotonic() - quiet_since > self.settings.keepalive_seconds:  # make sure the link lives
                    self._probe(transport)
                    quiet_since = time.monotonic()
                continue
            except (OSError, EOFError) as e:
                raise _Dropped(str(e) or type(e).__name__) from None
            if not data:
                break
            quiet_since = time.monotonic()
            on_output(data)
        # Then the rest of stderr and the exit status; a channel that closes (or a link that
        # dies) without them was cut, not finished.
        end = time.monotonic() + 30
        while True:
            try:
                chunk = chan.recv_stderr(1 << 16)
            except socket.timeout:
                chunk = None
            except (OSError, EOFError) as e:
                raise _Dropped(str(e) or type(e).__name__) from None
            if chunk:
                err += chunk
            elif chan.exit_status_ready() and not chan.recv_stderr_ready():
                break
            elif chan.closed or not transport.is_active() or time.monotonic() > end:
                raise _Dropped("the channel ended without an exit status")
            else:
                time.sleep(0.002)  # stderr at EOF answers at once: wait for the status without spinning
        status = chan.recv_exit_status()
        chan.close()
        return status, bytes(err)

    def _run(self, cmd: str, stdin: str = "", timeout: float = 300.0) -> Result:
        """Runs a short command and collects its output. (Fabric's own run feeds stdin a byte
        at a time with a 10 ms pause each: 15 s for a 1.5 kB script, so commands go through
        the channel directly.)"""
        out = bytearray()
        try:
            status, err = self._channel(cmd, out.extend, stdin.encode(), timeout=timeout)
        except _Dropped as e:
            raise _Dropped(f"{self.target.label}: lost the connection ({e})") from None
        return Result(status, out.decode(errors="replace"), err.decode(errors="replace"))

    def prepare(self) -> None:
        """One round trip: directories, the root's absolute path, whether the environment
        exists, and the other workspaces there (rsync copies unchanged files from them)."""
        root = self.settings.root
        root_sh = '"$HOME"/' + _q(root[2:]) if root.startswith("~/") else _q(root)
        env_key = self._env_key()  # self.name and env_key need no quoting: [A-Za-z0-9._-] only
        r = self._run(f"set -e; mkdir -p {root_sh}/work/{self.name} {root_sh}/envs {root_sh}/runs/{self.name}; "
                      f"cd {root_sh}; pwd; test -f envs/{env_key}/.ready && echo ready || echo missing; "
                      f"ls -1t work | head -6; echo {SYNCED_MARK}; cat work/{self.name}/{SYNCED_FILE} 2>/dev/null || true; "
                      "mkdir -p autostop; touch autostop/beat")
        if r.exited != 0:
            raise RemoteError(f"{self.target.label}: cannot create {root} (remote.root): {r.stderr.strip()}")
        lines, _, synced = r.stdout.partition(f"{SYNCED_MARK}\n")
        lines = lines.splitlines()
        self.root = lines[0]
        self.env_ready = lines[1] == "ready"
        self.peers = [f"{self.root}/work/{p}" for p in lines[2:] if p and p != self.name][:5]
        self.synced_before = [p for p in synced.splitlines() if _inside(p)]
        self.work = f"{self.root}/work/{self.name}"
        self.env = f"{self.root}/envs/{env_key}"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_dir = f"{self.root}/runs/{self.name}/{self.stage}-{stamp}-{secrets.token_hex(2)}"

    def _env_key(self) -> str:
        h = hashlib.sha256(f"{self.settings.python}\0{self.settings.setup}".encode())
        for name in ENV_FILES:
            if Path(name).is_file():
                h.update(name.encode() + b"\0" + Path(name).read_bytes())
        return h.hexdigest()[:16]

    def push(self) -> None:
        """rsync the files git knows (tracked, and new ones it does not ignore) and the stage's
        deps; unchanged files are skipped, and files another workspace there already has are
        copied on the remote side instead of sent. A path the last push sent that no longer
        exists here is deleted there (rsync's --delete never acts on --files-from entries), and
        only such paths: what a stage wrote in the workspace stays until its outputs are
        refreshed."""
        files = _git_files()
        missing = [p for p in self.spec.uploads if not os.path.lexists(p)]
        if missing:
            log.warning("%s: deps not present here, not synced: %s", self.stage, ", ".join(missing))
        listing = sorted({*files, *(p for p in self.spec.uploads if os.path.lexists(p))})
        deleted = sorted({p for p in self.synced_before if p not in listing and not os.path.lexists(p)})
        args = ["-r", "--delete", "--delete-missing-args", "--exclude=__pycache__", "--files-from=-", "--from0"]
        args += [f"--copy-dest={p}" for p in self.peers]
        rsync(self.target, args + ["./", f"{self.target.destination()}:{self.work}/"], self.settings.compress,
              "push", files="\0".join(listing + deleted))
        if deleted:
            log.info("%s: deleted in the remote workspace, as here: %s", self.stage, ", ".join(deleted[:10])
                     + (f" and {len(deleted) - 10} more" if len(deleted) > 10 else ""))
        record = "\n".join(p for p in listing if "\n" not in p) + "\n"
        r = self._run(f"cat > {_q(self.work + '/' + SYNCED_FILE)}.tmp && mv {_q(self.work + '/' + SYNCED_FILE)}.tmp "
                      f"{_q(self.work + '/' + SYNCED_FILE)}", stdin=record)
        if r.exited != 0:
            log.warning("%s: could not record what was synced (%s); files deleted here may stay there",
                        self.stage, r.stderr.strip())

    def _scratch(self) -> str:
        base = Path(".dvc/tmp") if Path(".dvc").is_dir() else Path(".fractal/tmp")
        base.mkdir(parents=True, exist_ok=True)
        return str(base)

    def setup_env(self) -> None:
        """Once per (python, setup command, dependency files): a venv that sees the system's
        packages (Lambda's images come with CUDA torch), then remote.setup inside it. A lock
        there keeps two queued experiments from building the same environment at once."""
        log.info("%s: setting up the remote environment %s (once)", self.target.label, self.env)
        env, setup = _q(self.env), self.settings.setup.strip()
        venv = "-m venv --system-site-packages" + ("" if setup else " --without-pip")  # no setup: pip unused
        script = (f"set -e; if [ ! -f {env}/.ready ]; then rm -rf {env}; "
                  f"{self.settings.python} {venv} {env}; . {env}/bin/activate; "
                  f"cd {_q(self.work)}; {setup or 'true'}; touch {env}/.ready; fi")
        rc = self._exec_streaming(f"flock {_q(self.env + '.lock')} bash -c {_q(script)}", sys.stderr)
        if rc != 0:
            raise RemoteError(f"{self.target.label}: setting up the remote environment failed (exit {rc}); "
                              f"check remote.python = {self.settings.python!r} and remote.setup = "
                              f"{self.settings.setup!r} against the output above")

    def _exec_streaming(self, cmd: str, out: Any) -> int:
        """Runs cmd with its output shown as it comes; Ctrl-C here interrupts at once (Fabric's
        run would wait for the remote command to finish). A connection silent for
        remote.keepalive_seconds is probed, and the command gives up after
        remote.setup_timeout_minutes: a dropped network fails it in bounded time."""
        def show(data: bytes) -> None:
            out.write(data.decode(errors="replace"))
            out.flush()

        minutes = self.settings.setup_timeout_minutes
        try:
            status, _ = self._channel(cmd, show, merge_stderr=True, timeout=minutes * 60,
                                      too_long=f"not done after {minutes:g} min (remote.setup_timeout_minutes)")
        except _Dropped as e:
            raise _Dropped(f"{self.target.label}: lost the connection ({e})") from None
        return status

    def _env_file(self) -> str:
        lines = [f"export PYTHONPATH={_q(self.work + '/src')}${{PYTHONPATH:+:$PYTHONPATH}}",
                 "export PYTHONUNBUFFERED=1", "export FRACTAL_EXECUTOR=local"]
        for name in (*FORWARDED_DVC_VARS, *self.settings.env):
            if name in NEVER_FORWARDED:
                log.warning("remote.env: %s is never sent to a remote host", name)
                continue
            if name in os.environ:
                lines.append(f"export {name}={_q(os.environ[name])}")
        lines += [f"export {name}={_q(value)}" for name, value in self.extra_env.items()]
        return "\n".join(lines) + "\n"

    def start(self) -> int:
        """Starts the stage detached from this connection; returns its (process group) id."""
        run, work = _q(self.run_dir), _q(self.work)
        stale = " ".join(_q(o.path) for o in self.spec.outs if not o.persist)
        command = shlex.join(stage_command(self.stage, self.argv, f"{self.env}/bin/python"))
        # The stage's shell reads its environment from a file (secrets stay off command lines)
        # and writes its exit code with a rename, so a half-written one is never read.
        body = '. "$0/env.sh"; "$@"; echo $? > "$0/rc.tmp"; mv "$0/rc.tmp" "$0/rc"'
        r = self._run(
            f"set -e; umask 077; mkdir -p {run}; cat > {run}/env.sh; umask 022; cd {work}; "
            + (f"rm -rf -- {stale}; " if stale else "")
            + f"nohup setsid bash -c {_q(body)} {run} {command} > {run}/log 2>&1 < /dev/null & "
            f"echo $! > {run}/pid; echo $!", stdin=self._env_file())
        if r.exited != 0 or not r.stdout.strip().isdigit():
            raise RemoteError(f"{self.target.label}: could not start the stage: {r.stderr.strip()}")
        log.info("%s: started `%s` on %s (log: %s/log)", self.stage, command, self.target.label, self.run_dir)
        return int(r.stdout.strip())

    def follow(self, pid: int) -> tuple[int, dict[str, Any]]:
        """Streams the log until the stage ends; returns its exit code and, on success, the
        remote manifest of its outputs. A dropped connection is reattached and the log picks
        up at the byte it stopped at."""
        self.log_offset = 0
        while True:
            try:
                result = self._stream(pid)
            except _Dropped as e:
                log.warning("%s: connection to %s lost (%s); the stage keeps running there, reattaching",
                            self.stage, self.target.label, e)
                self._reconnect()
                continue
            if result["rc"] is None:
                raise RemoteError(f"{self.target.label}: the stage's process {pid} ended without an exit code "
                                  f"(killed, or out of memory?); its log: {self.run_dir}/log")
            return int(result["rc"]), result["manifest"]

    def _stream(self, pid: int) -> dict[str, Any]:
        """Copies the log from self.log_offset until the stage ends, through the remote agent:
        {"rc": exit code or None, "manifest": outputs' checksums}."""
        import json

        run, outs = self.run_dir, " ".join(_q(o.path) for o in self.spec.outs)

        def show(data: bytes) -> None:
            self.log_offset += len(data)
            self.out.write(data)
            self.out.flush()
            if self.on_log is not None:
                self.on_log(data)

        status, err = self._channel(
            f"cd {_q(self.work)} && exec {_q(self.env)}/bin/python - follow {_q(run + '/log')} "
            f"{_q(run + '/rc')} {pid} {self.log_offset} {outs}", show, remote_script("agent.py").encode())
        if status == -1:  # paramiko's value for a channel closed without an exit status
            raise _Dropped("the log stream was cut")
        text = err.decode(errors="replace").strip()
        try:
            return json.loads(text.splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteError(f"{self.target.label}: following the stage failed (exit {status}): {text[-2000:]}; "
                              f"check remote.python (the agent needs Python 3.8+)") from None

    def _reconnect(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None
        deadline = time.monotonic() + self.settings.reconnect_minutes * 60
        wait = 1.0
        while True:
            try:
                self.conn = self._connect()
                log.info("%s: reattached to %s", self.stage, self.target.label)
                return
            except HostKeyError:
                raise
            except RemoteError as e:
                if self.target.still_there is not None and not self.target.still_there():
                    raise RemoteError(f"{self.target.label} is gone (terminated or preempted); the stage did "
                                      "not finish") from None
                if time.monotonic() + wait > deadline:
                    raise RemoteError(f"could not reattach to {self.target.label} for "
                                      f"{self.settings.reconnect_minutes:g} min (remote.reconnect_minutes): {e}; "
                                      f"the stage may still be running, its log is {self.run_dir}/log") from None
                time.sleep(wait)
                wait = min(wait * 2, 15.0)

    def kill(self, pid: int) -> None:
        """Stops the stage's whole process group (Ctrl-C here means stop it there)."""
        try:
            if self.conn is None or not self.conn.is_connected:
                self.conn = self.target.connect(timeout=10)
            # `kill -0` counts a zombie as alive (see agent.py): read the state from /proc
            alive = f'[ "$(awk \'{{print $3}}\' /proc/{pid}/stat 2>/dev/null || echo Z)" != Z ]'
            self._run(f"kill -TERM -- -{pid} 2>/dev/null; for i in $(seq 50); do {alive} || exit 0; sleep 0.1; "
                      f"done; kill -KILL -- -{pid} 2>/dev/null; true")
            log.info("%s: stopped the remote stage (process group %d)", self.stage, pid)
        except Exception as e:
            log.warning("%s: could not stop the remote stage (process group %d): %s", self.stage, pid, e)

    def fetch(self, remote_manifest: dict[str, Any]) -> None:
        """rsync the outputs into a staging directory, check them, then rename each into place."""
        from fractal.remote.agent import manifest

        missing = [o for o, m in remote_manifest.items() if m["kind"] == "missing"]
        if missing:
            raise RemoteError(f"{self.stage} exited 0 but did not write {', '.join(missing)} (declared in "
                              "dvc.yaml); nothing was brought back")
        staging = Path(self._scratch()) / f"fractal-fetch-{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            listing = "\0".join(o.path for o in self.spec.outs)
            rsync(self.target, ["-r", "--files-from=-", "--from0", f"{self.target.destination()}:{self.work}/",
                                f"{staging}/"], self.settings.compress, "fetch", files=listing)
            local = manifest(staging, [o.path for o in self.spec.outs])
            bad = [o for o in remote_manifest if local.get(o) != remote_manifest[o]]
            if bad:
                raise RemoteError(f"{self.stage}: the fetched {', '.join(bad)} differ from the remote copy "
                                  "(size or SHA-256); nothing was moved into the workspace, run the stage again")
            for out in self.spec.outs:
                _replace(staging / out.path, Path(out.path))
        finally:
            shutil.rmtree(staging, ignore_errors=True)


SYNCED_FILE = ".fractal-synced"  # in the remote workspace: the paths the last push sent, one a line
SYNCED_MARK = "--fractal-synced--"


def _inside(path: str) -> bool:
    """A relative path that stays inside the workspace (the record is read from the remote)."""
    return bool(path) and not path.startswith("/") and ".." not in Path(path).parts


def remote_script(name: str) -> str:
    """The source of a stdlib-only helper that runs on the remote host."""
    return Path(__file__).with_name(name).read_text()


def _replace(src: Path, dst: Path) -> None:
    """Moves src to dst with renames only: dst is the old version or the new one, never half
    (and a file DVC linked from its cache is replaced, not written through)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    move_into_place(src, dst)


def _git_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise RemoteError(f"{Path.cwd()}: remote runs sync the files git knows, but `git ls-files` failed "
                          f"({getattr(e, 'stderr', b'').decode().strip() or e}); run from the repository root") from None
    return [p for p in out.decode().split("\0") if p and os.path.lexists(p)]
