"""The warm worker that runs candidates, one forked child per candidate.

This file runs as a script inside the sandbox (see isolation.py), so it imports the
standard library only and never `fractal`. The labeler also imports `encode_plain` from
it, so that both sides speak the same plain-data format.

Trust: the worker itself never executes candidate code; each candidate runs in a child
forked from it. The worker holds only the test *inputs*, never the tests or the reference
solution, so nothing a candidate can reach (memory, files) reveals the expected answers.
The child reports the values the entry point returned as plain data; the trusted
labeler replays the real tests against those values (judge.py). Whatever the child
writes is therefore only data: a forged frame can at most claim a return value, which is
the same as returning it.

Protocol with the labeler (stdin/stdout of this process): frames of a 4-byte big-endian
length and a body. The labeler sends JSON tasks, and {"stop": id} to end a running task
whose verdict it already knows. For each task the worker answers one frame: a JSON
header line, then the raw bytes the child wrote to its result pipe (the child's own
length-prefixed JSON frames, parsed by the labeler). A candidate still running after
50 ms also gets progress frames (header {"id", "progress": 1}) with its results so far.
"""
from __future__ import annotations

import base64
import builtins
import gc
import json
import os
import resource
import select
import signal
import struct
import sys
import time
import types

_HEADER = struct.Struct(">I")
_MAX_SAFE_INT = 2**53
_RESULT_FD = 3
_PROGRESS_AFTER = 0.05  # seconds a candidate runs before its partial results are sent
_PROGRESS_EVERY = 0.05


# ---------------------------------------------------------------------------------------
# Plain data: what may cross from a candidate to the labeler.
# ---------------------------------------------------------------------------------------
def encode_plain(value, depth: int = 0):
    """A JSON-able form of `value` built from exact builtin types only.

    Lists are JSON arrays; every other container or special value is a one-key object
    ({"t": tuple items}, {"d": [[k, v], ...]}, {"s": set}, {"F": frozenset}, {"b": bytes as
    base64}, {"B": bytearray}, {"c": [re, im]}, {"i": big int in hex}, {"o": [type name,
    truthiness]} for anything else). Subclasses of builtins (numpy floats, namedtuples,
    Counters) are read through the base type's own slots, so their overridden methods
    do not decide the value.
    """
    if depth > 100:
        raise ValueError("nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -_MAX_SAFE_INT < value < _MAX_SAFE_INT else {"i": hex(value)}
    if t is float:
        return value
    if t is list:
        return [encode_plain(v, depth + 1) for v in value]
    if t is tuple:
        return {"t": [encode_plain(v, depth + 1) for v in value]}
    if t is dict:
        return {"d": [[encode_plain(k, depth + 1), encode_plain(v, depth + 1)] for k, v in value.items()]}
    if t is set:
        return {"s": [encode_plain(v, depth + 1) for v in value]}
    if t is frozenset:
        return {"F": [encode_plain(v, depth + 1) for v in value]}
    if t is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    if t is bytearray:
        return {"B": base64.b64encode(bytes(value)).decode("ascii")}
    if t is complex:
        return {"c": [value.real, value.imag]}
    # Subclasses of builtins: take the value through the base type.
    if isinstance(value, bool):
        return bool.__bool__(value)
    if isinstance(value, int):
        return encode_plain(int.__index__(value), depth + 1)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, tuple):
        return {"t": [encode_plain(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, list):
        return [encode_plain(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, dict):
        return {"d": [[encode_plain(k, depth + 1), encode_plain(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, (set, frozenset)):
        return {"s" if isinstance(value, set) else "F": [encode_plain(v, depth + 1) for v in set.__iter__(set(value))]}
    # numpy scalars (np.int64, np.bool_) behave like the Python scalar they hold.
    if t.__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return encode_plain(value.item(), depth + 1)
    try:
        truthy = bool(value)
    except Exception:
        truthy = True
    return {"o": [_type_name(value), truthy]}


def _type_name(obj) -> str:
    try:
        name = type(obj).__name__
        return name[:80] if type(name) is str else "object"
    except Exception:
        return "object"


# ---------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _send(fd: int, body: bytes) -> None:
    _write_all(fd, _HEADER.pack(len(body)) + body)


# ---------------------------------------------------------------------------------------
# The child: runs one candidate. Everything after the candidate's first line is untrusted.
# ---------------------------------------------------------------------------------------
def _frame(obj) -> None:
    try:
        body = json.dumps(obj, allow_nan=True).encode()
    except Exception:
        body = json.dumps({"r": {"o": ["unencodable", True]}}).encode()
    try:
        _send(_RESULT_FD, body)
    except OSError:
        pass


def _exc_name(e: BaseException) -> str:
    return _type_name(e)


def _vm_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _set_limits(task: dict) -> None:
    mem = task["worker_vm_bytes"] + task["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (task["max_processes"], task["max_processes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (task["max_file_bytes"], task["max_file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _child(task: dict, res_w: int, out_w: int, devnull: int) -> None:
    # Until the candidate's code starts, this is the worker's own (trusted) code.
    if _raw_fork is None and "random" in sys.modules:
        sys.modules["random"].seed(0)  # os.fork's hook reseeded it from the OS
    os.setsid()
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    if res_w != _RESULT_FD:
        os.dup2(res_w, _RESULT_FD)
    os.closerange(_RESULT_FD + 1, 65536)  # the labeler's pipes among them
    for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(s, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file is an OSError, not a kill
    _set_dumpable(True)  # so that /proc/self stays readable to the candidate
    _set_limits(task)
    sys.setrecursionlimit(task["recursion_limit"])
    # sys.stdin/stdout/stderr already wrap fds 0, 1 and 2, now /dev/null and the output pipe.
    sys.argv = ["candidate.py"]

    # Decoded before the candidate runs, so nothing it patches touches the inputs; each
    # call gets objects of its own, so a call that mutates its arguments changes no other.
    from fractal_plain_decode import decode_plain  # type: ignore  # installed by main()

    calls = [(decode_plain(args), decode_plain(kwargs)) for args, kwargs in json.loads(task["calls"])]
    try:
        code = compile(task["program"], "candidate.py", "exec")
    except (SyntaxError, ValueError, OverflowError) as e:  # ValueError: NUL bytes in source
        _frame({"syntax": _exc_name(e)})
        return
    except BaseException as e:  # MemoryError, RecursionError from a pathological program
        _frame({"x": _exc_name(e)})
        return
    # The candidate gets its own copy of the builtins module (also under `import builtins`),
    # so patching `len` or `isinstance` there does not break this harness, whose functions
    # keep the real one. (A candidate that digs the real one out can only garble its own
    # report, which is plain data judged outside.)
    own_builtins = types.ModuleType("builtins")
    own_builtins.__dict__.update(builtins.__dict__)
    sys.modules["builtins"] = own_builtins
    # A real module, so that pickle (multiprocessing) finds the candidate's functions.
    module = types.ModuleType("__candidate__")
    module.__file__ = "candidate.py"
    module.__builtins__ = own_builtins
    sys.modules["__candidate__"] = module
    env = module.__dict__
    try:
        exec(code, env)
    except BaseException as e:
        _frame({"x": _exc_name(e)})
        return
    _frame({"load": 1})
    fn = env.get(task["entry_point"])
    if fn is None:
        _frame({"x": "NameError"})
        return
    for args, kwargs in calls:
        try:
            value = fn(*args, **kwargs)
            try:
                encoded = encode_plain(value)
            except (RecursionError, ValueError):
                encoded = {"o": [_type_name(value), True]}
            _frame({"r": encoded})
        except BaseException as e:
            _frame({"x": _exc_name(e)})
    _frame({"done": 1})


# ---------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------
_libc = None


def _prctl(option: int, arg: int) -> None:
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


_raw_fork = None  # libc's fork(), set by main() when the worker has one thread


def _fork() -> int:
    """fork(), without Python's at-fork hooks where the worker is single-threaded. The
    hooks (threading's and random's) write to ~100 pages that the child then copies, 0.3 ms
    a candidate on a VM with slow page faults; with one thread there is no lock another
    thread could hold, which is what they are for."""
    if _raw_fork is None:
        return os.fork()
    pid = _raw_fork()
    if pid < 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


def _set_dumpable(on: bool) -> None:
    _prctl(4, 1 if on else 0)  # PR_SET_DUMPABLE


def _descendants_of(pid: int) -> list[int]:
    """Children of `pid` (orphans come to us too, as we are a subreaper)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(name))
    return out


class Worker:
    def __init__(self, as_init: bool, scratch: str, from_labeler: int, to_labeler: int):
        self.as_init = as_init
        self.scratch = scratch
        self.from_labeler = from_labeler
        self.to_labeler = to_labeler
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.statuses: dict[int, int] = {}
        self.inbox = bytearray()
        self.tasks: list[dict] = []
        self.stops: set[int] = set()
        self.closed = False

    def pump(self) -> None:
        """Reads what the labeler sent: tasks queue up, stops mark a task to end."""
        b = os.read(self.from_labeler, 1 << 20)
        if not b:
            self.closed = True
        self.inbox += b
        while len(self.inbox) >= 4:
            (n,) = _HEADER.unpack_from(self.inbox)
            if len(self.inbox) < 4 + n:
                break
            msg = json.loads(bytes(self.inbox[4 : 4 + n]))
            del self.inbox[: 4 + n]
            if "stop" in msg:
                self.stops.add(msg["stop"])
            else:
                self.tasks.append(msg)

    def next_task(self) -> dict | None:
        while not self.tasks and not self.closed:
            self.pump()
        return self.tasks.pop(0) if self.tasks else None

    def kill_all(self) -> None:
        """Kills every process the candidate started, setsid ones included, and reaps them."""
        me = os.getpid()
        for _ in range(1000):
            if self.as_init:
                # As PID 1 of the sandbox's PID namespace, kill(-1) reaches every other
                # process in it and nothing outside it.
                try:
                    os.kill(-1, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            else:
                for pid in _descendants_of(me):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            reaped_all = self._reap()
            if reaped_all:
                return
            time.sleep(0.001)

    def _reap(self) -> bool:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            self.statuses[pid] = status

    def wipe_scratch(self) -> None:
        for root in (self.scratch, "/dev/shm" if self.as_init else None):
            if root and os.path.isdir(root):
                try:
                    os.chmod(root, 0o1777)  # a candidate may have locked it (where it owns it)
                except OSError:
                    pass
                _wipe(root)

    def run(self, task: dict) -> tuple[dict, bytes]:
        res_r, res_w = os.pipe()
        out_r, out_w = os.pipe()
        self.statuses.clear()
        # Relative to what this worker maps (a forked child starts with the same), so a
        # worker that preloaded torch does not fail every candidate with MemoryError.
        task["worker_vm_bytes"] = _vm_bytes()
        start = time.monotonic()
        pid = _fork()
        if pid == 0:
            try:
                os.close(res_r)
                os.close(out_r)
                os.chdir(self.scratch)
                _child(task, res_w, out_w, self.devnull)
            finally:
                os._exit(0)
        os.close(res_w)
        os.close(out_w)
        header, payload = self._watch(task, pid, res_r, out_r, start)
        self.kill_all()
        os.close(res_r)
        os.close(out_r)
        if header["end"] == "exit":
            status = self.statuses.get(pid)
            if status is not None and os.WIFSIGNALED(status):
                header["end"] = "signal"
                header["code"] = os.WTERMSIG(status)
            elif status is not None:
                header["code"] = os.WEXITSTATUS(status)
        self.wipe_scratch()
        return header, payload

    def _watch(self, task: dict, pid: int, res_r: int, out_r: int, start: float) -> tuple[dict, bytes]:
        deadline = start + task["time_limit"]
        # The CPU-time limit: a busy candidate is stopped once it has used `cpu_limit` of
        # CPU, however loaded the machine (on a loaded one, the wall limit would stop it
        # having computed less). Checked when the child could first have used that much,
        # then again as often as what is left demands: most candidates end before a check.
        cpu_limit = task.get("cpu_limit", task["time_limit"])
        cpu_clock = (~pid << 3) | 2  # Linux: the CPU clock of process `pid` (MAKE_PROCESS_CPUCLOCK)
        cpu_check = start + cpu_limit
        cpu_timeout = False
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        for fd in (res_r, out_r, pidfd, self.from_labeler):
            poller.register(fd, select.POLLIN)
        result = bytearray()
        out_bytes = 0
        end = None
        reported = 0  # bytes of results already shown to the labeler
        next_report = start + _PROGRESS_AFTER
        try:
            while end is None:
                now = time.monotonic()
                left = deadline - now
                if left <= 0:
                    end = "timeout"
                    break
                if now >= cpu_check:
                    used = _cpu_seconds(cpu_clock)
                    if used >= cpu_limit:
                        end, cpu_timeout = "timeout", True
                        break
                    cpu_check = now + max(0.001, cpu_limit - used)
                if now >= next_report and len(result) > reported:
                    # A slow candidate: let the labeler judge what it has so far, so a
                    # wrong early answer ends the run instead of waiting out the limit.
                    _send(self.to_labeler, json.dumps({"id": task["id"], "progress": 1}).encode() + b"\n" + bytes(result))
                    reported = len(result)
                    next_report = now + _PROGRESS_EVERY
                wait = min(left, max(0.0, next_report - now)) if len(result) > reported else left
                wait = min(wait, max(0.0, cpu_check - now))
                for fd, _ in poller.poll(max(1, int(wait * 1000))):
                    if fd == self.from_labeler:
                        self.pump()
                        if task["id"] in self.stops:
                            end = "stopped"
                        if self.closed:
                            poller.unregister(fd)
                    elif fd == pidfd:
                        end = "exit"
                    elif fd == res_r:
                        b = os.read(res_r, 1 << 16)
                        if not b:
                            poller.unregister(res_r)
                        result += b
                        if len(result) > task["max_result_bytes"]:
                            end = "output_limit"
                    else:
                        b = os.read(out_r, 1 << 16)
                        if not b:
                            poller.unregister(out_r)
                        out_bytes += len(b)
                        if out_bytes > task["max_output_bytes"]:
                            end = "output_limit"
            if end == "exit":
                # The child is gone; what it wrote is in the pipe (or held open by its
                # own children, which die next).
                os.set_blocking(res_r, False)
                try:
                    while len(result) <= task["max_result_bytes"]:
                        b = os.read(res_r, 1 << 16)
                        if not b:
                            break
                        result += b
                except BlockingIOError:
                    pass
        finally:
            os.close(pidfd)
        duration = time.monotonic() - start
        header = {"end": end, "code": 0, "duration": round(duration, 4), "output_bytes": out_bytes}
        if cpu_timeout:
            header["cpu_limit"] = cpu_limit
        return header, bytes(result[: task["max_result_bytes"]])


def _cpu_seconds(clock: int) -> float:
    try:
        return time.clock_gettime(clock)
    except OSError:  # the process has just exited
        return 0.0


def _wipe(root: str) -> None:
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        _remove(path)


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.chmod(path, 0o700)  # a candidate may have made it unreadable
            for entry in os.listdir(path):
                _remove(os.path.join(path, entry))
            os.rmdir(path)
        else:
            os.unlink(path)
    except OSError:
        pass


def main() -> None:
    global _raw_fork
    config = json.loads(sys.argv[1])
    # Take the labeler's pipes off fds 0 and 1, so that nothing the candidate inherits
    # or guesses reaches them; children close them anyway.
    to_labeler = os.dup(1)
    from_labeler = os.dup(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
              signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(s, signal.SIG_IGN)
    as_init = os.getpid() == 1
    if not as_init:
        _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans (setsid ones too) come back to us
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != os.path.abspath(config["scratch"])]
    # The decoder goes into sys.modules under a private name, so the child can import
    # it after the candidate's code ran without a path lookup.
    decoder = types.ModuleType("fractal_plain_decode")
    exec(compile(config["decoder_source"], "fractal_plain_decode", "exec"), decoder.__dict__)
    sys.modules["fractal_plain_decode"] = decoder
    for name in config["preload"]:
        try:
            __import__(name)
        except Exception:
            pass
    # Candidates that use `random` unseeded get the same numbers in every run, so their
    # labels are reproducible (as PYTHONHASHSEED makes set order).
    if "random" in sys.modules:
        sys.modules["random"].seed(0)
    # Objects that exist now are never collected; the children's collections then do not
    # touch (and copy) the pages they live in.
    gc.collect()
    gc.freeze()
    if len(os.listdir("/proc/self/task")) == 1:
        import ctypes

        # PyDLL: called holding the GIL, so the child starts holding it, as after os.fork.
        _raw_fork = ctypes.PyDLL(None, use_errno=True).fork
    if config.get("uid") is not None:
        # Root only: run candidates as a user of their own, so RLIMIT_NPROC applies
        # (root is exempt from it) and nothing of root's is writable.
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: no setuid binary can give privileges back
    _set_dumpable(False)  # candidates (same uid) cannot ptrace us or open /proc/1/fd
    worker = Worker(as_init, config["scratch"], from_labeler, to_labeler)
    _send(to_labeler, json.dumps({"ready": os.getpid(), "as_init": as_init, "uid": os.getuid()}).encode())
    while True:
        task = worker.next_task()
        if task is None:
            return
        header, payload = worker.run(task)
        worker.stops.discard(task["id"])
        header["id"] = task["id"]
        _send(to_labeler, json.dumps(header).encode() + b"\n" + payload)


if __name__ == "__main__":
    main()
