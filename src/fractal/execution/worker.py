"""The warm worker that runs candidates, one forked process per candidate.

This file runs as a script inside the sandbox (see isolation.py), so it imports the
standard library only and never `fractal`. The labeler also imports `encode_plain` from
it, so that both sides speak the same plain-data format.

Three kinds of process, all in the sandbox's PID namespace:
- the warden (PID 1): talks to the labeler, watches the running candidate (wall and CPU
  time, output size), kills every process the candidate started, wipes the scratch;
- the zygote, the warden's child: a copy of the warden taken once (preloaded modules,
  decoded test inputs), which only forks a child per candidate and reaps it;
- the candidate's process, the zygote's child, and whatever it starts.
Why two: after a fork, every page either process writes is copied (a page fault, slow
on a VM), and the warden's own work (pipes, polling, JSON) writes hundreds of pages a
candidate. The zygote writes a few dozen between two forks; the warden never forks
(but to replace a zygote), so it copies nothing.

Trust: neither the warden nor the zygote executes candidate code. They hold only the test
*inputs*, never the tests or the reference solution, so nothing a candidate can reach
(memory, files) reveals the expected answers. The child reports the values the entry
point returned as plain data; the trusted labeler replays the real tests against those
values (judge.py). Whatever the child writes is therefore only data: a forged frame can
at most claim a return value, which is the same as returning it. The warden, as PID 1,
cannot be killed from inside the namespace; a candidate that kills (or stops) the
zygote costs a new zygote, forked from the warden, and nothing else.

Protocol with the labeler (stdin/stdout of the warden): frames of a 4-byte big-endian
length and a body. The labeler sends tasks (a JSON line, then the candidate's code
object, marshalled, or nothing when the source is in the JSON), and {"stop": id} to end
a running task whose verdict it already knows. A task carries its problem's test inputs
the first time this worker sees that problem. For each task the warden answers one
frame: a JSON header line, then the raw bytes the child wrote to its result pipe (the
child's own length-prefixed JSON frames, parsed by the labeler). A candidate still
running after 50 ms also gets progress frames (header {"id", "progress": 1}) with its
results so far.
"""
from __future__ import annotations

import base64
import builtins
import gc
import json
import json.encoder
import marshal
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
_MUTE = 0.001  # seconds the warden leaves the result and output pipes after reading them
_ZYGOTE_TIMEOUT = 10.0  # seconds for the zygote to fork or reap before it counts as stuck
_STATUS = struct.Struct(">i")


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


def _read_exact(fd: int, n: int) -> bytes | None:
    """n bytes from a blocking fd; None at end of file."""
    data = b""
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            return None
        data += more
    return data


# ---------------------------------------------------------------------------------------
# The child: runs one candidate. Everything after the candidate's first line is untrusted.
# ---------------------------------------------------------------------------------------
# json.dumps(obj, allow_nan=True) without building an encoder for every call: a child's
# first json.dumps writes twice the pages this one does. No circular check is needed:
# what is encoded is a fresh tree from encode_plain.
_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, json.encoder.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ": ", ", ",
    False, False, True)


def _dumps(obj) -> str:
    return "".join(_ENCODER(obj, 0)) if _ENCODER else json.dumps(obj, allow_nan=True)


def _frame(obj) -> None:
    try:
        body = _dumps(obj).encode()
    except Exception:
        body = json.dumps({"r": {"o": ["unencodable", True]}}).encode()
    try:
        _send(_RESULT_FD, body)
    except OSError:
        pass


def _exc_name(e: BaseException) -> str:
    return _type_name(e)


def _vm_bytes() -> int:
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 100).split()[0]) * resource.getpagesize()
    finally:
        os.close(fd)


def _set_limits(limits: dict) -> None:
    # Relative to what this process maps, the zygote's mapping (a worker that preloaded
    # torch must not fail every candidate with MemoryError).
    mem = _vm_bytes() + limits["memory_bytes"]
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_processes"], limits["max_processes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_bytes"], limits["max_file_bytes"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _child(body: bytes, zygote: "Zygote") -> None:
    # Until the candidate's code starts, this is the worker's own (trusted) code.
    os.setsid()
    os.dup2(zygote.devnull, 0)
    os.dup2(zygote.out_w, 1)
    os.dup2(zygote.out_w, 2)
    if zygote.res_w != _RESULT_FD:
        os.dup2(zygote.res_w, _RESULT_FD)
    os.closerange(_RESULT_FD + 1, 65536)  # the zygote's and the warden's pipes among them
    os.chdir(zygote.scratch)
    _set_dumpable(True)  # so that /proc/self stays readable to the candidate
    _set_limits(zygote.limits)
    gc.enable()
    # sys.stdin/stdout/stderr already wrap fds 0, 1 and 2, now /dev/null and the output pipe.

    problem_id, entry_point, code_bytes, source = marshal.loads(body)
    # Decoded in the zygote before this process existed, so nothing the candidate patches
    # touches the inputs; each call has objects of its own, so a call that mutates its
    # arguments changes no other.
    calls = zygote.calls[problem_id]
    try:
        if code_bytes:
            code = marshal.loads(code_bytes)  # compiled by the labeler (which found no syntax error)
        else:
            code = compile(source, "candidate.py", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError) as e:  # ValueError: NUL bytes in source
        _frame({"syntax": _exc_name(e)})
        return
    except BaseException as e:  # MemoryError, RecursionError from a pathological program
        _frame({"x": _exc_name(e)})
        return
    # The candidate gets its own copy of the builtins module (also under `import builtins`),
    # so patching `len` or `isinstance` there does not break this harness, whose functions
    # keep the real one. (A candidate that digs the real one out can only garble its own
    # report, which is plain data judged outside.) Both modules were made by the zygote;
    # each child has its own pristine copy of them.
    sys.modules["builtins"] = zygote.builtins
    module = zygote.module
    sys.modules["__candidate__"] = module
    env = module.__dict__
    try:
        exec(code, env)
    except BaseException as e:
        _frame({"x": _exc_name(e)})
        return
    _frame({"load": 1})
    fn = env.get(entry_point)
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
# The zygote
# ---------------------------------------------------------------------------------------
_libc = None


def _prctl(option: int, arg: int) -> None:
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _set_dumpable(on: bool) -> None:
    _prctl(4, 1 if on else 0)  # PR_SET_DUMPABLE


class Zygote:
    """Forks one child per candidate and reaps it; messages from the warden on `ctl`:
    b"C" problem id, newline, test inputs (JSON) - decode and keep them; b"T" task -
    fork a child for it and answer its pid; b"R" - reap that child (the warden has killed
    it) and answer its wait status. Answers are 4-byte signed integers on `answers`."""

    def __init__(self, ctl: int, answers: int, res_w: int, out_w: int, devnull: int, scratch: str, limits: dict):
        self.ctl = ctl
        self.answers = answers
        self.res_w = res_w
        self.out_w = out_w
        self.devnull = devnull
        self.scratch = scratch
        self.limits = limits
        self.calls: dict[str, list] = {}
        self.builtins = types.ModuleType("builtins")
        self.builtins.__dict__.update(builtins.__dict__)
        self.module = types.ModuleType("__candidate__")  # a real module, so pickle finds its functions
        self.module.__file__ = "candidate.py"
        self.module.__builtins__ = self.builtins
        sys.argv = ["candidate.py"]
        sys.setrecursionlimit(limits["recursion_limit"])
        # The candidate's signal dispositions, set once here rather than in every child
        # (a first signal.signal() in a child writes ~100 pages): a candidate may kill
        # the zygote with them, which costs a new zygote, nothing more.
        for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big file is an OSError, not a kill
        if "random" in sys.modules:
            # Candidates that use `random` unseeded get the same numbers in every run, so
            # their labels are reproducible (as PYTHONHASHSEED makes set order).
            sys.modules["random"].seed(0)
        self.fork = os.fork
        if len(os.listdir("/proc/self/task")) == 1:
            import ctypes

            # libc's fork() skips Python's at-fork hooks (threading's and random's), which
            # write ~100 pages that the child then copies; with one thread there is no
            # lock another thread could hold, which is what they are for. PyDLL: called
            # holding the GIL, so the child starts holding it, as after os.fork.
            self.fork = ctypes.PyDLL(None, use_errno=True).fork

    def serve(self) -> None:
        # Nothing the zygote allocates is garbage; the children collect their own.
        gc.disable()
        gc.collect()
        gc.freeze()
        child = 0
        while True:
            head = _read_exact(self.ctl, 5)
            if head is None:
                return
            kind = head[:1]
            body = _read_exact(self.ctl, _HEADER.unpack_from(head, 1)[0])
            if body is None:
                return
            if kind == b"T":
                child = self.fork()
                if child == 0:
                    try:
                        _child(body, self)
                    finally:
                        os._exit(0)
                os.write(self.answers, _STATUS.pack(child))  # negative: fork failed
            elif kind == b"R":
                os.write(self.answers, _STATUS.pack(self._reap(child)))
            elif kind == b"C":
                from fractal_plain_decode import decode_plain  # type: ignore  # installed by main()

                problem_id, _, calls = body.partition(b"\n")
                self.calls[problem_id.decode()] = [(decode_plain(args), decode_plain(kwargs))
                                                   for args, kwargs in json.loads(calls)]
                gc.freeze()

    def _reap(self, child: int) -> int:
        status = -1
        while True:  # the child is dead or dying: the warden has killed it
            try:
                pid, st = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == child:
                status = st
                break
        for _ in _reaped():  # siblings a candidate made with clone(CLONE_PARENT), if dead already
            pass
        return status


def _reaped():
    """(pid, status) of every child that has already ended, without waiting for others."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


# ---------------------------------------------------------------------------------------
# The warden
# ---------------------------------------------------------------------------------------
def _children_of(parents: set[int]) -> list[int]:
    """Processes whose parent is in `parents` (orphans come to the warden, a subreaper)."""
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
        if int(fields[1]) in parents:
            out.append(int(name))
    return out


class Warden:
    def __init__(self, as_init: bool, scratch: str, limits: dict, from_labeler: int, to_labeler: int):
        self.as_init = as_init
        self.me = os.getpid()
        self.scratch = scratch
        self.limits = limits
        self.from_labeler = from_labeler
        self.to_labeler = to_labeler
        self.devnull = os.open(os.devnull, os.O_RDWR)
        # The candidates' result and output pipes, for the whole life of the worker: a
        # zygote (and so each child) inherits the write ends. Between two candidates
        # every process but the warden and the zygote is dead, and neither writes, so
        # what is drained then cannot mix into the next candidate's results.
        self.res_r, self.res_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        os.set_blocking(self.res_r, False)
        os.set_blocking(self.out_r, False)
        self.statuses: dict[int, int] = {}
        self.inbox = bytearray()
        self.tasks: list[tuple[dict, bytes]] = []
        self.stops: set[int] = set()
        self.closed = False
        self.calls: dict[str, str] = {}  # test inputs (JSON) of every problem seen
        self.zygote = 0  # its pid; 0: none running
        self.zygote_knows: set[str] = set()
        self.ctl = self.answers = -1

    # -- the labeler --------------------------------------------------------------------
    def pump(self) -> None:
        """Reads what the labeler sent: tasks queue up, stops mark a task to end."""
        b = os.read(self.from_labeler, 1 << 16)
        if not b:
            self.closed = True
        self.inbox += b
        while len(self.inbox) >= 4:
            (n,) = _HEADER.unpack_from(self.inbox)
            if len(self.inbox) < 4 + n:
                break
            body = bytes(self.inbox[4 : 4 + n])
            del self.inbox[: 4 + n]
            header, _, code = body.partition(b"\n")
            msg = json.loads(header)
            if "stop" in msg:
                self.stops.add(msg["stop"])
            else:
                self.tasks.append((msg, code))

    def next_task(self) -> tuple[dict, bytes] | None:
        while not self.tasks and not self.closed:
            self.pump()
        return self.tasks.pop(0) if self.tasks else None

    # -- the zygote ---------------------------------------------------------------------
    def start_zygote(self) -> None:
        ctl_r, ctl_w = os.pipe()
        ans_r, ans_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                for fd in (self.from_labeler, self.to_labeler, self.res_r, self.out_r, ctl_w, ans_r):
                    os.close(fd)
                Zygote(ctl_r, ans_w, self.res_w, self.out_w, self.devnull, self.scratch, self.limits).serve()
            finally:
                os._exit(0)
        os.close(ctl_r)
        os.close(ans_w)
        self.zygote, self.ctl, self.answers = pid, ctl_w, ans_r
        self.zygote_knows = set()

    def close(self) -> None:
        if self.zygote:
            os.close(self.ctl)  # the zygote exits at the end of its input
            try:
                os.waitpid(self.zygote, 0)
            except ChildProcessError:
                pass
            self._forget_zygote()

    def stop_zygote(self) -> None:
        """Kills the zygote (stuck, or made unusable by a candidate); a new one starts
        when the next task comes. Its children, if any, come to the warden."""
        if self.zygote:
            try:
                os.kill(self.zygote, signal.SIGKILL)
                os.waitpid(self.zygote, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._forget_zygote()

    def _forget_zygote(self) -> None:
        if self.answers >= 0:
            for fd in (self.ctl, self.answers):
                try:
                    os.close(fd)
                except OSError:  # closed by close()
                    pass
        self.zygote, self.ctl, self.answers = 0, -1, -1

    def _tell(self, kind: bytes, body: bytes) -> None:
        _write_all(self.ctl, kind + _HEADER.pack(len(body)) + body)

    def _answer(self) -> int | None:
        """The zygote's next answer; None if it died or did not answer in time."""
        if not select.select([self.answers], [], [], _ZYGOTE_TIMEOUT)[0]:
            return None
        data = _read_exact(self.answers, _STATUS.size)
        return None if data is None else _STATUS.unpack(data)[0]

    def _spawn(self, problem_id: str, body: bytes) -> int | None:
        """Has the zygote fork a child for `body`; its pid, or None if that failed twice."""
        for _ in range(2):
            if not self.zygote:
                self.start_zygote()
            try:
                if problem_id not in self.zygote_knows:
                    self._tell(b"C", problem_id.encode() + b"\n" + self.calls[problem_id].encode())
                    self.zygote_knows.add(problem_id)
                self._tell(b"T", body)
                pid = self._answer()
            except OSError:  # BrokenPipeError: the zygote is gone
                pid = None
            if pid is not None and pid > 0:
                return pid
            # The zygote died, hung or could not fork: whatever it started must not run on.
            self.stop_zygote()
            self._sweep()
        return None

    # -- one candidate ------------------------------------------------------------------
    def run(self, task: dict, code: bytes) -> tuple[dict, bytes]:
        problem_id = task["problem_id"]
        if "calls" in task:
            self.calls[problem_id] = task["calls"]
        body = marshal.dumps((problem_id, task["entry_point"], code, "" if code else task["program"]))
        self.statuses.clear()
        start = time.monotonic()
        pid = self._spawn(problem_id, body)
        if pid is None:
            return {"end": "worker", "code": 0, "duration": 0.0, "detail": "could not fork a candidate"}, b""
        header, payload = self._watch(task, pid, start)
        status = self.kill_all(pid, exited=header["end"] == "exit")
        if header["end"] == "exit" and status is not None:
            if os.WIFSIGNALED(status):
                header["end"] = "signal"
                header["code"] = os.WTERMSIG(status)
            else:
                header["code"] = os.WEXITSTATUS(status)
        self.wipe_scratch()
        return header, payload

    def _others(self) -> list[int]:
        """Every process but the warden and the zygote: what a candidate left."""
        if self.as_init:
            # Our PID namespace: its /proc lists only the sandbox's processes.
            return [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if pid != 1 and pid != self.zygote]
        parents = {self.me, self.zygote} if self.zygote else {self.me}  # (ppid 0: the kernel's)
        return [pid for pid in _children_of(parents) if pid != self.zygote]

    def kill_all(self, child: int, exited: bool) -> int | None:
        """Kills every process the candidate started, setsid ones included, and reaps
        them; the candidate's wait status (None if unknown)."""
        others = self._others()
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = None
        if self.zygote:
            try:
                os.kill(self.zygote, signal.SIGCONT)  # a candidate may have stopped it
                self._tell(b"R", b"")
                status = self._answer()
            except OSError:
                status = None
            if status is None or status == -1:
                status = None
                self.stop_zygote()
        if exited and others == [child] and status is not None:
            # The child had exited and nothing else was there, so nothing can have been
            # made since: the zygote has reaped it; only the pipes need emptying.
            for fd in (self.res_r, self.out_r):
                _drain(fd)
        else:
            self._sweep()
        return status if status is not None else self.statuses.get(child)

    def _sweep(self) -> None:
        """Kills and reaps until no process but the warden and the zygote is left, then
        empties the result and output pipes of what the dead wrote."""
        for i in range(1000):
            self._reap()
            others = self._others()
            if not others:
                break
            if i == 100:
                # Still there after 0.1 s: a zombie only the zygote could reap (a sibling
                # a candidate made with CLONE_PARENT) or a stuck zygote. A new one, then.
                self.stop_zygote()
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001)
        self._reap()
        for fd in (self.res_r, self.out_r):
            _drain(fd)

    def _reap(self) -> None:
        for pid, status in _reaped():
            self.statuses[pid] = status
            if pid == self.zygote:  # a candidate killed it
                self._forget_zygote()

    def wipe_scratch(self) -> None:
        for root in (self.scratch, "/dev/shm" if self.as_init else None):
            if root and os.path.isdir(root):
                try:
                    os.chmod(root, 0o1777)  # a candidate may have locked it (where it owns it)
                except OSError:
                    pass
                _wipe(root)

    def _watch(self, task: dict, pid: int, start: float) -> tuple[dict, bytes]:
        deadline = start + task["time_limit"]
        # The CPU-time limit: a busy candidate is stopped once it has used `cpu_limit` of
        # CPU, however loaded the machine (on a loaded one, the wall limit would stop it
        # having computed less). Checked when the child could first have used that much,
        # then again as often as what is left demands: most candidates end before a check.
        cpu_limit = task.get("cpu_limit", task["time_limit"])
        cpu_clock = (~pid << 3) | 2  # Linux: the CPU clock of process `pid` (MAKE_PROCESS_CPUCLOCK)
        cpu_check = start + cpu_limit
        cpu_timeout = False
        # Once the child's first frame arrives (its module has loaded: imports done), the
        # test calls get `calls_cpu_limit` more at most. Frames the candidate forges early
        # only shorten its own time.
        calls_cpu_limit = task.get("calls_cpu_limit")
        in_calls = False
        # The child stays the zygote's (a zombie at worst) until the warden has the zygote
        # reap it, so its pid cannot be reused meanwhile.
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        for fd in (self.res_r, self.out_r, pidfd, self.from_labeler):
            poller.register(fd, select.POLLIN)
        result = bytearray()
        out_bytes = 0
        end = None
        reported = 0  # bytes of results already shown to the labeler
        next_report = start + _PROGRESS_AFTER
        # After reading the pipes, leave them for a millisecond: a child writes a frame
        # per call, and waking for each costs more than the whole wait (the pipes hold
        # what comes meanwhile; the child's exit still wakes us at once).
        muted_until = 0.0
        try:
            while end is None:
                now = time.monotonic()
                if muted_until and now >= muted_until:
                    poller.register(self.res_r, select.POLLIN)
                    poller.register(self.out_r, select.POLLIN)
                    muted_until = 0.0
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
                if muted_until:
                    wait = min(wait, muted_until - now)
                read = False
                for fd, _ in poller.poll(max(1, int(wait * 1000))):
                    if fd == self.from_labeler:
                        self.pump()
                        if task["id"] in self.stops:
                            end = "stopped"
                        if self.closed:
                            poller.unregister(fd)
                    elif fd == pidfd:
                        end = "exit"
                    elif fd == self.res_r:
                        if not result and calls_cpu_limit is not None:
                            calls_end = _cpu_seconds(cpu_clock) + calls_cpu_limit
                            if calls_end < cpu_limit:
                                cpu_limit, in_calls = calls_end, True
                                cpu_check = min(cpu_check, time.monotonic() + calls_cpu_limit)
                        result += _read_some(self.res_r)
                        read = True
                        if len(result) > task["max_result_bytes"]:
                            end = "output_limit"
                    else:
                        out_bytes += len(_read_some(self.out_r))
                        read = True
                        if out_bytes > task["max_output_bytes"]:
                            end = "output_limit"
                if read and not muted_until:
                    poller.unregister(self.res_r)
                    poller.unregister(self.out_r)
                    muted_until = time.monotonic() + _MUTE
            if end == "exit":
                # The child is gone; what it wrote is in the pipe (its own children, still
                # alive, may add more until they die next: that is not its result).
                while len(result) <= task["max_result_bytes"]:
                    b = _read_some(self.res_r)
                    if not b:
                        break
                    result += b
        finally:
            os.close(pidfd)
        duration = time.monotonic() - start
        header = {"end": end, "code": 0, "duration": round(duration, 4), "output_bytes": out_bytes}
        if cpu_timeout:
            header["cpu_limit"] = calls_cpu_limit if in_calls else cpu_limit
            header["in_calls"] = in_calls
        return header, bytes(result[: task["max_result_bytes"]])


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def _drain(fd: int) -> None:
    while _read_some(fd):
        pass


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
    # The decoder goes into sys.modules under a private name, so the zygote can import it
    # without a path lookup.
    decoder = types.ModuleType("fractal_plain_decode")
    exec(compile(config["decoder_source"], "fractal_plain_decode", "exec"), decoder.__dict__)
    sys.modules["fractal_plain_decode"] = decoder
    for name in config["preload"]:
        try:
            __import__(name)
        except Exception:
            pass
    # Objects that exist now are never collected; the children's collections then do not
    # touch (and copy) the pages they live in.
    gc.collect()
    gc.freeze()
    if config.get("uid") is not None:
        # Root only: run candidates as a user of their own, so RLIMIT_NPROC applies
        # (root is exempt from it) and nothing of root's is writable.
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    _prctl(38, 1)  # PR_SET_NO_NEW_PRIVS: no setuid binary can give privileges back
    # Candidates (same uid) cannot ptrace the warden or the zygote, nor open their fds in
    # /proc; a child makes itself dumpable again.
    _set_dumpable(False)
    warden = Warden(as_init, config["scratch"], config["limits"], from_labeler, to_labeler)
    warden.start_zygote()
    _send(to_labeler, json.dumps({"ready": os.getpid(), "as_init": as_init, "uid": os.getuid()}).encode())
    while True:
        item = warden.next_task()
        if item is None:
            warden.close()  # the zygote's CPU time then counts among the warden's children
            return
        task, code = item
        header, payload = warden.run(task, code)
        warden.stops.discard(task["id"])
        header["id"] = task["id"]
        _send(to_labeler, json.dumps(header).encode() + b"\n" + payload)


if __name__ == "__main__":
    main()
