"""The warm worker that runs candidates, one forked process per candidate.

This file runs as a script inside the sandbox (see isolation.py), so there it imports the
standard library only and never `fractal`. The plain data and the frames it speaks are
wire.py's, whose source the labeler puts in the worker's config (`_wire_from_source`).

Three kinds of process, all in the sandbox's PID namespace:
- the warden (PID 1): talks to the labeler, watches the running candidate (wall time,
  user CPU time and memory of its whole process tree), kills every process the candidate
  started, wipes the scratch and the System V IPC objects, and checks that nothing of the
  worker was changed;
- the zygote, the warden's child, forked once before the first task: it holds the
  preloaded modules and the decoded test inputs, and only forks a child per candidate
  and reaps it;
- the candidate's process, the zygote's child, and whatever it starts.
Why two: after a fork, every page either process writes is copied (a page fault, slow
on a VM), and the warden's own work (pipes, polling, JSON) writes hundreds of pages a
candidate. The zygote writes a few dozen between two forks; the warden never forks
but once, so it copies nothing.

What a label depends on: its own candidate alone. The design buys that as follows.
- Fresh pipes: the zygote makes a candidate's three pipes (code in, results out, output
  out) for that fork only and hands the warden its ends over a UNIX socket (SCM_RIGHTS).
  What a candidate does to its pipes (O_NONBLOCK, F_SETPIPE_SZ, closing them) dies with
  them, and nothing a dead process wrote can reach the next candidate's results.
- Nobody's code in reach: the code goes from the warden down the candidate's own pipe to
  the child; the zygote, of which every later candidate is a copy, never holds it, and
  it is never restarted (a restarted one would be a copy of a warden that holds the code
  of the tasks it received). A worker whose zygote is gone is replaced whole.
- Fresh limits: each child sets all its resource limits, nice value, scheduling policy
  and CPU affinity from the record the worker took when it started, not from what it
  inherited; what it cannot set back (a hard limit lowered) means the zygote was
  tampered with.
- Tampering noticed: candidates run as the worker's uid (as root, a uid of its own per
  worker; as another user, the only uid of the user namespace), so they may prlimit,
  setpriority, sched_setaffinity or kill the zygote and the warden (the warden, PID 1,
  ignores signals sent from inside). After each candidate, once all its processes are
  dead, the warden compares its own and the zygote's limits, nice value, affinity and
  policy with the record. Any change, a dead or stuck zygote, or processes that cannot
  be killed: the warden answers that candidate's task {"end": "worker", "replace": 1}
  and exits, and the pool starts a fresh worker, runs the candidate once more and
  charges it (`crashed`) if it breaks that one too (pool.py). Since the check runs
  between every two candidates, no candidate ever runs on a worker another changed.
- The tree's memory: every _CHECK_EVERY the warden sums, over the candidate's processes,
  resident anonymous memory beyond what each shares with the zygote, resident shared
  memory, the memfds they hold (mapped or not), System V segments and the tmpfs scratch
  and /dev/shm; over `memory_bytes`, the run ends `memory`. The same pass sums the
  tree's user CPU time for the CPU limits (system time, mostly the kernel zeroing the
  memory a candidate allocates, is bounded by the memory and wall limits instead).
- The wall limit does not count the time the candidate was ready to run but the machine
  ran others (/proc/<pid>/schedstat), up to _WAIT_CREDIT times the limit: it is there for
  candidates that wait, and load must not make slow correct code a timeout.
- Output never fails a candidate: stdout and stderr are read and thrown away (counted);
  only the results, which the labeler parses, have a cap (`max_result_bytes`).
Where it stops: candidates share a uid with the warden and zygote, so tampering is
noticed and undone (the worker replaced), not prevented; a change that leaves the
recorded values as they were (ioprio, timer slack of another process) is not noticed.
The memory is sampled, so a burst shorter than _CHECK_EVERY can exceed the limit (each
process's address space is still capped); a memfd mapped and then closed is counted only
while mapped. POSIX message queues cannot be made (RLIMIT_MSGQUEUE is 0): nothing in the
sandbox could list them to remove them. No cgroup: on the machine this was built on the
memory controller is on cgroup v1 and the v2 hierarchy has only hugetlb
(/sys/fs/cgroup/unified/cgroup.controllers), and a non-root user has no
delegated subtree; the accounting above works wherever /proc does.

Trust: neither the warden nor the zygote executes candidate code. They hold only the test
*inputs*, never the tests or the reference solution, so nothing a candidate can reach
(memory, files) reveals the expected answers. The child reports the values the entry
point returned as plain data; the trusted labeler replays the real tests against those
values (judge.py). Whatever the child writes is therefore only data: a forged frame can
at most claim a return value, which is the same as returning it.

Protocol with the labeler (stdin/stdout of the warden): frames whose bodies are messages,
a JSON header line and bytes (wire.py). The labeler sends tasks (the JSON, then the
candidate's code object, marshalled, or nothing when the source is in the JSON), and
{"stop": id} to end a running task whose verdict it already knows. A task carries its
problem's test inputs the first time this worker sees that problem. For each task the
warden answers one frame: a JSON header line, then the raw bytes the child wrote to its
result pipe (the child's own frames, parsed by the labeler: wire.parse_frames). A
candidate still running after 50 ms also gets progress frames (header {"id", "progress":
1}) with its results so far, at intervals that double (50 ms, 100 ms, ...), so that the
labeler, which parses the whole payload each time, parses it a dozen times at most.
"""
from __future__ import annotations

import builtins
import fcntl
import gc
import json
import marshal
import os
import resource
import select
import signal
import socket
import struct
import sys
import time
import types


def _wire_from_source(source: str) -> types.ModuleType:
    """execution/wire.py, run from the source the labeler put in the worker's config, as
    the module `fractal_wire`. In sys.modules, the zygote and the children reach it
    without a path lookup (the sandbox has no fractal to find)."""
    module = types.ModuleType("fractal_wire")
    exec(compile(source, "fractal_wire", "exec"), module.__dict__)
    sys.modules["fractal_wire"] = module
    return module


if __name__ == "__main__":  # the sandboxed worker (pool.py runs this file with `python -c`)
    wire = _wire_from_source(json.loads(sys.argv[1])["wire_source"])
else:  # the labeler, which reads this file's constants (pool.py) and builds a Warden in tests
    from fractal.execution import wire

_RESULT_FD = 3
_PROGRESS_AFTER = 0.05  # seconds a candidate runs before its partial results are sent
_PROGRESS_EVERY = 0.05
_MUTE = 0.001  # seconds the warden leaves the result and output pipes after reading them
_ZYGOTE_TIMEOUT = 10.0  # seconds for the zygote to fork or reap before it counts as stuck
_SWEEP_TIMEOUT = 10.0  # seconds for killed processes to be gone before the worker counts as stuck
_STATUS = struct.Struct(">i")


# ---------------------------------------------------------------------------------------
# The child: runs one candidate. Everything after the candidate's first line is untrusted.
# ---------------------------------------------------------------------------------------
def _frame(obj) -> None:
    """One report of the candidate's process to the labeler (see wire.parse_frames)."""
    try:
        body = wire.dumps(obj).encode()
    except Exception:
        body = json.dumps({"r": {"o": ["unencodable", True]}}).encode()
    try:
        wire.write_frame(_RESULT_FD, body)
    except OSError:
        pass


def _read(path: str) -> bytes:
    """A small file's bytes (/proc): raw syscalls, as this runs a few times a candidate."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                return b"".join(chunks)
            chunks.append(b)
    finally:
        os.close(fd)


def _vm_bytes() -> int:
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        return int(os.read(fd, 100).split()[0]) * resource.getpagesize()
    finally:
        os.close(fd)


# Every resource limit Linux has, by name: the worker records them all when it starts,
# each candidate gets them afresh from that record, and the warden checks after each
# candidate that neither it nor the zygote has had one changed.
_RLIMITS = {name: getattr(resource, name) for name in (
    "RLIMIT_CPU", "RLIMIT_FSIZE", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_CORE", "RLIMIT_RSS", "RLIMIT_NPROC",
    "RLIMIT_NOFILE", "RLIMIT_MEMLOCK", "RLIMIT_AS", "RLIMIT_LOCKS", "RLIMIT_SIGPENDING", "RLIMIT_MSGQUEUE",
    "RLIMIT_NICE", "RLIMIT_RTPRIO", "RLIMIT_RTTIME") if hasattr(resource, name)}


class Record:
    """What the worker's processes were like when it started: resource limits, nice
    value, CPU affinity and scheduling policy. A candidate shares the worker's uid, so it
    may change these on the warden or the zygote (prlimit, setpriority,
    sched_setaffinity); it cannot hide that it did (see Warden.tampered)."""

    def __init__(self) -> None:
        self.limits = {r: resource.getrlimit(r) for r in _RLIMITS.values()}
        self.limits_text = _read("/proc/self/limits")  # one read compares them all
        self.nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.affinity = os.sched_getaffinity(0)
        self.policy = os.sched_getscheduler(0)

    def differs(self, pid: int) -> str:
        """'' if process `pid` (0: this one) is as recorded, else what changed."""
        if _read(f"/proc/{pid or 'self'}/limits") != self.limits_text:
            for name, r in _RLIMITS.items():
                if resource.prlimit(pid, r) != self.limits[r]:
                    return f"its {name} was changed"
            return "its resource limits were changed"
        if os.getpriority(os.PRIO_PROCESS, pid) != self.nice:
            return "its nice value was changed"
        if os.sched_getaffinity(pid) != self.affinity:
            return "its CPU affinity was changed"
        if os.sched_getscheduler(pid) != self.policy:
            return "its scheduling policy was changed"
        return ""


def _fresh_limits(zygote: "Zygote") -> str:
    """Sets this (child) process's limits from the worker's record, not from what it
    inherited from the zygote; '' or what could not be set (the zygote was tampered with:
    a hard limit lowered, nice raised)."""
    limits, record = zygote.limits, zygote.record
    # Address space relative to what this process maps, the zygote's mapping (a worker
    # that preloaded torch must not fail every candidate with MemoryError).
    mem = _vm_bytes() + limits["memory_bytes"]
    wanted = dict(record.limits)
    wanted[resource.RLIMIT_AS] = (mem, mem)
    wanted[resource.RLIMIT_NPROC] = (limits["max_processes"],) * 2
    wanted[resource.RLIMIT_FSIZE] = (zygote.file_bytes,) * 2
    wanted[resource.RLIMIT_CORE] = (0, 0)
    wanted[resource.RLIMIT_NOFILE] = (256, 256)
    if hasattr(resource, "RLIMIT_MSGQUEUE"):
        # No POSIX message queue can be made (they would outlive the candidate, in the
        # worker's IPC namespace, where nothing lists them without a mount).
        wanted[resource.RLIMIT_MSGQUEUE] = (0, 0)
    for name, r in _RLIMITS.items():
        try:
            resource.setrlimit(r, wanted[r])
        except (ValueError, OSError):
            return f"the zygote's {name} was lowered"
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) != record.nice:
            os.setpriority(os.PRIO_PROCESS, 0, record.nice)
        if os.sched_getscheduler(0) != record.policy:
            os.sched_setscheduler(0, record.policy, os.sched_param(0))
        if os.sched_getaffinity(0) != record.affinity:
            os.sched_setaffinity(0, record.affinity)
    except OSError:
        return "the zygote's priority or scheduling was changed"
    return ""


_TASK_FD = 4  # in the child: the read end of the pipe its code comes down


def _child(problem_id: str, task_r: int, res_w: int, out_w: int, zygote: "Zygote") -> None:
    # Until the candidate's code starts, this is the worker's own (trusted) code.
    os.setsid()
    # The pipes are this candidate's own (the zygote made them for this fork): nothing an
    # earlier candidate did to its pipes (O_NONBLOCK, F_SETPIPE_SZ, closing) is here.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (out_w, res_w, task_r)]
    os.dup2(zygote.devnull, 0)
    os.dup2(high[0], 1)
    os.dup2(high[0], 2)
    os.dup2(high[1], _RESULT_FD)
    os.dup2(high[2], _TASK_FD)
    os.closerange(_TASK_FD + 1, 65536)  # the zygote's and the warden's fds among them
    os.chdir(zygote.scratch)
    _set_dumpable(True)  # so that /proc/self stays readable to the candidate
    broken = _fresh_limits(zygote)
    # The code comes from the warden straight to this process: the zygote, which every
    # later candidate is a copy of, never holds it.
    chunks = []
    while True:
        b = os.read(_TASK_FD, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(_TASK_FD)
    if broken:
        _frame({"tampered": broken})
        return
    gc.enable()
    # sys.stdin/stdout/stderr already wrap fds 0, 1 and 2, now /dev/null and the output pipe.

    entry_point, code_bytes, source, call_cpu_limit = marshal.loads(b"".join(chunks))
    del chunks
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
        _frame({"syntax": wire.type_name(e)})
        return
    except BaseException as e:  # MemoryError, RecursionError from a pathological program
        _frame({"x": wire.type_name(e)})
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
        _frame({"x": wire.type_name(e)})
        return
    _frame({"load": 1})
    fn = env.get(entry_point)
    if fn is None:
        _frame({"x": "NameError"})
        return
    if call_cpu_limit:
        _call_timer(call_cpu_limit, calls, fn, env)
        return
    for call in calls:
        try:
            value = _invoke(fn, env, call)
            try:
                encoded = wire.encode_plain(value)
            except (RecursionError, ValueError):
                encoded = {"o": [wire.type_name(value), True]}
            _frame({"r": encoded})
        except BaseException as e:
            _frame({"x": wire.type_name(e)})
    _frame({"done": 1})


def _invoke(fn, env: dict, call):
    """One generated input's value: the entry point called on plain data, or an expression's
    text (wire.encode_expression) evaluated in the candidate's module, so `round(f(x), 2)`
    or `decode_cyclic(encode_cyclic('abc'))` runs the candidate's own functions. Compiled
    here, inside the call's limits: a pathological text is that call's exception."""
    if type(call) is str:
        return eval(compile(call, "<generated input>", "eval", dont_inherit=True), env)
    args, kwargs = call
    return fn(*args, **kwargs)


class _CallTimeout(BaseException):
    """Raised into a call that has used its own CPU limit (a task's `call_cpu_limit`)."""


def _call_timer(limit: float, calls: list, fn, env: dict) -> None:
    """The calls, each with `limit` seconds of user CPU time of its own (ITIMER_VIRTUAL),
    as CodeT's time_limit gives each test: a call over it is reported {"t": 1} and the next
    one starts, so a candidate that loops on some inputs costs one run, not a run per input.
    The timer fires again every _CALL_TIMER_REPEAT while the call goes on, and a call it
    fired in is a timeout whatever it then returns, so a call that swallows the exception
    (a bare `except:` in a loop) gains nothing. What the timer cannot stop (a long C call,
    a candidate resetting the signal) a second timer does: a call still running after
    _CALL_KILL_AFTER times its limit of CPU (user and system: ITIMER_PROF) is killed by
    SIGPROF, which the probe counts as that call's timeout; the warden's CPU limit for the
    whole run is the last resort."""
    state = {"armed": False, "over": False}

    def expire(signum, frame):
        if state["armed"]:
            state["over"] = True
            raise _CallTimeout

    signal.signal(signal.SIGVTALRM, expire)
    signal.signal(signal.SIGPROF, signal.SIG_DFL)  # terminates the process
    for call in calls:
        state["over"] = False
        try:
            state["armed"] = True
            signal.setitimer(signal.ITIMER_PROF, limit * _CALL_KILL_AFTER)
            signal.setitimer(signal.ITIMER_VIRTUAL, limit, _CALL_TIMER_REPEAT)
            value = _invoke(fn, env, call)
            state["armed"] = False
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
        except BaseException as e:
            state["armed"] = False
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
            _frame({"t": 1} if state["over"] else {"x": wire.type_name(e)})
            continue
        if state["over"]:
            _frame({"t": 1})
            continue
        try:
            encoded = wire.encode_plain(value)
        except (RecursionError, ValueError):
            encoded = {"o": [wire.type_name(value), True]}
        _frame({"r": encoded})
    _frame({"done": 1})


_CALL_TIMER_REPEAT = 0.01  # seconds of CPU between two more expiries of a call's timer
_CALL_KILL_AFTER = 2.0  # a call the timer cannot stop is killed at this many times its limit


# ---------------------------------------------------------------------------------------
# The zygote
# ---------------------------------------------------------------------------------------
_libc = None


def _libc_call(name: str, *args: int) -> int:
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return getattr(_libc, name)(*args)


def _prctl(option: int, arg: int) -> None:
    if _libc_call("prctl", option, arg, 0, 0, 0) != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def _set_dumpable(on: bool) -> None:
    _prctl(4, 1 if on else 0)  # PR_SET_DUMPABLE


class Zygote:
    """Forks one child per candidate and reaps it; messages from the warden on `ctl`:
    b"C" problem id, newline, test inputs (JSON) - decode and keep them; b"T" problem id -
    make the candidate's three pipes, fork a child, and answer its pid with the warden's
    ends of the pipes (its code, its results, its output); b"R" - reap that child (the
    warden has killed it) and any other child that has ended, and answer its wait status.
    Answers are 4-byte signed integers on the `answers` socket."""

    def __init__(self, ctl: int, answers: int, devnull: int, scratch: str, limits: dict, record: Record,
                 file_bytes: int):
        self.ctl = ctl
        self.answers = answers
        self.devnull = devnull
        self.scratch = scratch
        self.limits = limits
        self.record = record
        self.file_bytes = file_bytes
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
        # the zygote with them, which costs it its label (the worker is replaced).
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
            message = wire.read_frame(self.ctl)
            if message is None:
                return
            kind, body = message[:1], message[1:]
            if kind == b"T":
                task_r, task_w = os.pipe()
                res_r, res_w = os.pipe()
                out_r, out_w = os.pipe()
                child = self.fork()
                if child == 0:
                    try:
                        _child(body.decode(), task_r, res_w, out_w, self)
                    finally:
                        os._exit(0)
                for fd in (task_r, res_w, out_w):
                    os.close(fd)
                theirs = [task_w, res_r, out_r] if child > 0 else []
                socket.send_fds(self.answers, [_STATUS.pack(child)], theirs)  # negative: fork failed
                for fd in (task_w, res_r, out_r):
                    os.close(fd)
            elif kind == b"R":
                socket.send_fds(self.answers, [_STATUS.pack(self._reap(child))], [])
            elif kind == b"C":
                problem_id, _, calls = body.partition(b"\n")
                self.calls[problem_id.decode()] = [wire.decode_call(c) for c in json.loads(calls)]
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


_TICK = os.sysconf("SC_CLK_TCK")
_CHECK_EVERY = 0.02  # seconds between two measurements of a running candidate's tree
_WAIT_CREDIT = 5.0  # the wall limit grows by the time waited for a CPU, up to this many times itself




def _kib(status: bytes, field: bytes) -> int:
    i = status.find(field)
    return int(status[i + len(field) :].split(None, 1)[0]) * 1024 if i >= 0 else 0


class Warden:
    def __init__(self, as_init: bool, scratch: str, limits: dict, from_labeler: int, to_labeler: int):
        self.as_init = as_init
        self.me = os.getpid()
        self.scratch = scratch
        self.limits = limits
        # In the sandbox every file a candidate can write is on a size-limited tmpfs, so
        # RLIMIT_FSIZE needs only stop a memfd, whose memory the tree's accounting counts.
        file_bytes = limits.get("max_file_bytes", resource.RLIM_INFINITY)
        self.file_bytes = max(file_bytes, 2 * limits.get("memory_bytes", 0)) if as_init else file_bytes
        self.record = Record()
        self.from_labeler = from_labeler
        self.to_labeler = to_labeler
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.statuses: dict[int, int] = {}
        self.inbox = bytearray()
        self.tasks: list[tuple[dict, bytes]] = []
        self.stops: set[int] = set()
        self.closed = False
        self.calls: dict[str, str] = {}  # test inputs (JSON) of every problem seen
        self.zygote = 0  # its pid; 0: none running
        self.zygote_knows: set[str] = set()
        self.ctl = self.answers = -1
        self.broken = ""  # why this worker must be replaced ('' while it is sound)

    # -- the labeler --------------------------------------------------------------------
    def pump(self) -> None:
        """Reads what the labeler sent: tasks queue up, stops mark a task to end."""
        b = os.read(self.from_labeler, 1 << 16)
        if not b:
            self.closed = True
        self.inbox += b
        for body in wire.take_frames(self.inbox):
            msg, code = wire.read_message(body)
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
        """Forks the zygote, once, before the first task: it is a copy of a warden that
        has received no candidate's code. It is never restarted: a worker whose zygote
        is gone is replaced whole (a restarted one would be a copy of a warden that holds
        the code of the tasks it has received)."""
        ctl_r, ctl_w = os.pipe()
        ans_theirs, ans_mine = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            try:
                ans_mine.close()
                for fd in (self.from_labeler, self.to_labeler, ctl_w):
                    os.close(fd)
                Zygote(ctl_r, ans_theirs, self.devnull, self.scratch, self.limits, self.record, self.file_bytes).serve()
            finally:
                os._exit(0)
        os.close(ctl_r)
        ans_theirs.close()
        self.zygote, self.ctl, self.answers = pid, ctl_w, ans_mine
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
        """Kills the zygote; its children, if any, come to the warden."""
        if self.zygote:
            try:
                os.kill(self.zygote, signal.SIGKILL)
                os.waitpid(self.zygote, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self._forget_zygote()

    def _forget_zygote(self) -> None:
        if self.ctl >= 0:
            try:
                os.close(self.ctl)
            except OSError:  # closed by close()
                pass
            self.answers.close()
        self.zygote, self.ctl = 0, -1

    def _tell(self, kind: bytes, body: bytes) -> None:
        wire.write_frame(self.ctl, kind + body)

    def _answer(self) -> tuple[int, list[int]] | None:
        """The zygote's next answer and the fds that came with it; None if it died or did
        not answer in time."""
        if not select.select([self.answers], [], [], _ZYGOTE_TIMEOUT)[0]:
            return None
        data, fds, _, _ = socket.recv_fds(self.answers, _STATUS.size, 3)
        while data and len(data) < _STATUS.size:
            more = self.answers.recv(_STATUS.size - len(data))
            if not more:
                break
            data += more
        if len(data) < _STATUS.size:
            for fd in fds:
                os.close(fd)
            return None
        return _STATUS.unpack(data)[0], fds

    def _spawn(self, problem_id: str) -> tuple[int, list[int]] | None:
        """Has the zygote fork a child; its pid and the warden's ends of its pipes, or
        None (the worker is then broken)."""
        if not self.zygote:
            self.broken = self.broken or "the zygote is gone"
            return None
        try:
            if problem_id not in self.zygote_knows:
                self._tell(b"C", problem_id.encode() + b"\n" + self.calls[problem_id].encode())
                self.zygote_knows.add(problem_id)
            self._tell(b"T", problem_id.encode())
            got = self._answer()
        except OSError:  # BrokenPipeError: the zygote is gone
            got = None
        if got is not None and got[0] > 0 and len(got[1]) == 3:
            return got
        if got is not None:
            for fd in got[1]:
                os.close(fd)
        self.broken = "the zygote died, hung or could not fork"
        self.stop_zygote()
        self._sweep()
        return None

    # -- one candidate ------------------------------------------------------------------
    def run(self, task: dict, code: bytes) -> tuple[dict, bytes]:
        problem_id = task["problem_id"]
        if "calls" in task:
            self.calls[problem_id] = task["calls"]
        body = marshal.dumps((task["entry_point"], code, "" if code else task["program"],
                              float(task.get("call_cpu_limit") or 0.0)))
        self.statuses.clear()
        start = time.monotonic()
        spawned = self._spawn(problem_id)
        if spawned is None:
            return {"end": "worker", "code": 0, "duration": 0.0, "detail": self.broken}, b""
        pid, (task_w, res_r, out_r) = spawned
        try:
            try:
                wire.write_all(task_w, body)
            except OSError:
                pass  # the child died before reading it: its end says why
            os.close(task_w)
            os.set_blocking(res_r, False)
            os.set_blocking(out_r, False)
            header, payload = self._watch(task, pid, start, res_r, out_r)
            status = self.kill_all(pid, exited=header["end"] == "exit")
        finally:
            os.close(res_r)
            os.close(out_r)
        if header["end"] == "exit" and status is not None:
            if os.WIFSIGNALED(status):
                header["end"] = "signal"
                header["code"] = os.WTERMSIG(status)
            else:
                header["code"] = os.WEXITSTATUS(status)
        self.wipe_scratch()
        if not self.broken:
            self.broken = self.tampered()
        if not self.broken and payload[4:].startswith(b'{"tampered"'):
            # The child found the zygote's limits changed before the candidate began (or
            # the candidate wrote this itself: then it is charged as for tampering).
            self.broken = "a candidate tampered with the worker: the zygote's limits were changed"
        if self.broken:
            return {"end": "worker", "code": 0, "duration": header["duration"], "detail": self.broken}, b""
        return header, payload

    def tampered(self) -> str:
        """'' if the warden and the zygote are as the worker started (limits, priority,
        scheduling), else what a candidate changed."""
        for pid, who in ((0, "warden"), (self.zygote, "zygote")):
            if who == "zygote" and not pid:
                return "the zygote is gone"
            try:
                why = self.record.differs(pid)
            except OSError as e:
                why = f"it cannot be inspected ({e.strerror})"
            if why:
                return f"a candidate tampered with the worker: the {who}: {why}"
        return ""

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
        self._reap()  # (notices a zygote the candidate killed)
        if self.zygote:
            try:
                os.kill(self.zygote, signal.SIGCONT)  # a candidate may have stopped it
                self._tell(b"R", b"")
                got = self._answer()
                status = got[0] if got else None
            except OSError:
                status = None
            if status is None or status == -1:
                status = None
                if self.zygote:
                    self.broken = self.broken or "the zygote did not reap a candidate"
                self.stop_zygote()
        if not (exited and others == [child] and status is not None):
            # (Otherwise the child had exited and nothing else was there, so nothing can
            # have been made since: the zygote has reaped it.)
            self._sweep()
        return status if status is not None else self.statuses.get(child)

    def _sweep(self) -> None:
        """Kills and reaps until no process but the warden and the zygote is left."""
        start = time.monotonic()
        asked = False
        while True:
            self._reap()
            others = self._others()
            if not others:
                return
            waited = time.monotonic() - start
            if waited > 0.02 and not asked and self.zygote:
                # Zombies only the zygote can reap: siblings a candidate made with
                # CLONE_PARENT, killed meanwhile. (It waits for all its children to end.)
                asked = True
                try:
                    self._tell(b"R", b"")
                    self._answer()
                except OSError:
                    pass
            if waited > _SWEEP_TIMEOUT:
                # Killed processes not gone in that time (a process freeing gigabytes on a
                # loaded machine takes a second): a stuck zygote. The worker is replaced.
                self.broken = self.broken or "a candidate's processes could not be killed and reaped"
                self.stop_zygote()
                if waited > 2 * _SWEEP_TIMEOUT:
                    return
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.001 if waited < 0.05 else 0.01)

    def _reap(self) -> None:
        for pid, status in _reaped():
            self.statuses[pid] = status
            if pid == self.zygote:  # a candidate killed it
                self.broken = self.broken or "a candidate killed the zygote"
                self._forget_zygote()

    def wipe_scratch(self) -> None:
        for root in (self.scratch, "/dev/shm" if self.as_init else None):
            if root and os.path.isdir(root):
                try:
                    os.chmod(root, 0o1777)  # a candidate may have locked it (where it owns it)
                except OSError:
                    pass
                _wipe(root)
        if self.as_init:
            # System V IPC: the sandbox's namespace is the worker's, so what one candidate
            # made (it has the worker's uid, so the warden may remove it) the next would see.
            left = _remove_sysv_ipc()
            if left:
                self.broken = self.broken or f"a candidate's System V IPC objects could not be removed ({left})"

    def usage(self, pids: list[int]) -> tuple[int, float, float]:
        """(bytes, user CPU seconds, seconds waited for a CPU) of the candidate's process
        tree `pids`: anonymous and shared memory resident in each process beyond what it
        shares with the zygote, memfds they hold (mapped or not), System V segments, and
        the tmpfs scratch and /dev/shm; the user time of all of them; the longest any of
        them has been runnable but not running (the machine was busy elsewhere)."""
        base = 0
        if self.zygote:
            try:
                base = _kib(_read(f"/proc/{self.zygote}/status"), b"RssAnon:")
            except OSError:
                pass
        total, ticks, memfds, waited = 0, 0, {}, 0
        for pid in pids:
            try:
                stat = _read(f"/proc/{pid}/stat")
                status = _read(f"/proc/{pid}/status")
                fds = os.listdir(f"/proc/{pid}/fd")
                schedstat = _read(f"/proc/{pid}/schedstat").split()
            except OSError:
                continue
            ticks += int(stat[stat.rfind(b")") + 2 :].split()[11])  # utime
            if len(schedstat) > 1:
                waited = max(waited, int(schedstat[1]))  # ns on a run queue
            total += max(0, _kib(status, b"RssAnon:") - base) + _kib(status, b"RssShmem:")
            for fd in fds:
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:"):
                        st = os.stat(f"/proc/{pid}/fd/{fd}")
                        memfds[st.st_ino] = st.st_blocks * 512
                except OSError:
                    pass
        total += sum(memfds.values())
        if self.as_init:
            try:
                for line in _read("/proc/sysvipc/shm").splitlines()[1:]:
                    total += int(line.split()[14])  # rss
            except (OSError, IndexError, ValueError):
                pass
            for root in (self.scratch, "/dev/shm"):
                try:
                    st = os.statvfs(root)
                    total += (st.f_blocks - st.f_bfree) * st.f_frsize
                except OSError:
                    pass
        return total, ticks / _TICK, waited / 1e9

    def _watch(self, task: dict, pid: int, start: float, res_r: int, out_r: int) -> tuple[dict, bytes]:
        """Watches the candidate's run until it ends (see _Watch); its header and results."""
        # The child stays the zygote's (a zombie at worst) until the warden has the zygote
        # reap it, so its pid cannot be reused meanwhile.
        pidfd = os.pidfd_open(pid)
        try:
            watch = _Watch(self, task, start, pidfd, res_r, out_r)
            watch.until_end()
        finally:
            os.close(pidfd)
        return watch.outcome()


class _Watch:
    """One candidate's run as the warden watches it, from its start to its end. Each turn
    of the loop (`until_end`) takes these steps, in this order:
    1. `unmute`: listen to the result and output pipes again once their mute is over;
    2. `measure`, every _CHECK_EVERY and at the wall deadline: the tree's memory, user CPU
       time and time waited for a CPU; over the memory or the CPU limit ends the run, and
       the time waited moves the wall deadline;
    3. past the wall deadline, the run ends `timeout`;
    4. `report`: the results not yet shown to the labeler go to it, when a report is due;
    5. `wait`: poll until the next step is due, and read what came (the labeler, the
       child's exit, its results, its output).
    Once the child has exited, `drain` reads what it left in the result pipe; `outcome` is
    the header and the results the warden answers the task with."""

    def __init__(self, warden: Warden, task: dict, start: float, pidfd: int, res_r: int, out_r: int):
        self.warden, self.task, self.start = warden, task, start
        self.pidfd, self.res_r, self.out_r = pidfd, res_r, out_r
        # The wall limit is for candidates that wait (sleep, block): time a candidate's
        # process spent ready to run while the machine ran others does not count, so a
        # loaded machine does not turn slow correct code into a timeout (up to
        # _WAIT_CREDIT times the limit: a minute at most with the default cap).
        self.deadline = start + task["time_limit"]
        # The CPU-time limit: a busy candidate is stopped once it has used `cpu_limit` of
        # user CPU time, however loaded the machine (on a loaded one, the wall limit would
        # stop it having computed less). User time: the kernel's time zeroing the memory
        # a candidate allocates (a second for 1 GB on a VM) is bounded by the memory and
        # wall limits, and must not make a legitimate allocation a timeout. Measured over
        # the whole tree every _CHECK_EVERY, with the tree's memory.
        self.cpu_limit = task.get("cpu_limit", task["time_limit"])
        self.cpu_timeout = False
        self.used = 0.0  # the tree's user CPU seconds at the last measurement
        self.next_check = start + _CHECK_EVERY
        # Once the child's first frame arrives (its module has loaded: imports done), the
        # test calls get `calls_cpu_limit` more at most. Frames the candidate forges early
        # only shorten its own time.
        self.calls_cpu_limit = task.get("calls_cpu_limit")
        self.in_calls = False
        self.result = bytearray()
        self.out_bytes = 0
        self.end: str | None = None
        self.detail = ""
        self.reported = 0  # bytes of results already shown to the labeler
        self.next_report = start + _PROGRESS_AFTER
        self.report_every = _PROGRESS_EVERY
        # After reading the pipes, leave them for a millisecond: a child writes a frame
        # per call, and waking for each costs more than the whole wait (the pipes hold
        # what comes meanwhile; the child's exit still wakes us at once).
        self.muted_until = 0.0
        self.poller = select.poll()
        for fd in (res_r, out_r, pidfd, warden.from_labeler):
            self.poller.register(fd, select.POLLIN)

    def until_end(self) -> None:
        while self.end is None:
            now = time.monotonic()
            self.unmute(now)
            if (now >= self.next_check or now >= self.deadline) and self.measure():
                break
            left = self.deadline - now
            if left <= 0:
                self.end = "timeout"
                break
            waiting = self.report(now)
            self.wait(now, left, waiting)
        if self.end == "exit":
            self.drain()

    def unmute(self, now: float) -> None:
        if self.muted_until and now >= self.muted_until:
            self.poller.register(self.res_r, select.POLLIN)
            self.poller.register(self.out_r, select.POLLIN)
            self.muted_until = 0.0

    def mute(self) -> None:
        self.poller.unregister(self.res_r)
        self.poller.unregister(self.out_r)
        self.muted_until = time.monotonic() + _MUTE

    def measure(self) -> bool:
        """The tree's usage against the limits; True if it ends the run."""
        memory, self.used, waited = self.warden.usage(self.warden._others())
        limit = self.task["time_limit"]
        self.deadline = self.start + limit + min(waited, _WAIT_CREDIT * limit)
        if self.used >= self.cpu_limit:
            self.end, self.cpu_timeout = "timeout", True
            return True
        memory_limit = self.warden.limits["memory_bytes"]
        if memory > memory_limit:
            self.end, self.detail = "memory", f"the candidate's processes held {memory >> 20} MB"
            return True
        self.next_check = time.monotonic() + _CHECK_EVERY
        return False

    def report(self, now: float) -> bool:
        """Shows the labeler the results so far if a report is due; whether results wait
        for the next one."""
        if len(self.result) <= self.reported:
            return False
        if now < self.next_report:
            return True
        # A slow candidate: let the labeler judge what it has so far, so a wrong early
        # answer ends the run instead of waiting out the limit. The labeler parses the
        # whole payload each time, so the reports come ever more rarely (50 ms, then 100,
        # 200...): a run of T seconds costs it log2(T / 50 ms) parses at most.
        progress = wire.message({"id": self.task["id"], "progress": 1}, bytes(self.result))
        wire.write_frame(self.warden.to_labeler, progress)
        self.reported = len(self.result)
        self.next_report = now + self.report_every
        self.report_every *= 2
        return False

    def wait(self, now: float, left: float, waiting: bool) -> None:
        """Polls until the next step is due (the next measurement, the deadline, the next
        report if results wait for it, the end of the mute) and reads what came."""
        wait = min(left, max(0.0, self.next_check - now))
        if waiting:
            wait = min(wait, max(0.0, self.next_report - now))
        if self.muted_until:
            wait = min(wait, self.muted_until - now)
        read = False
        for fd, _ in self.poller.poll(max(1, int(wait * 1000))):
            if fd == self.warden.from_labeler:
                self.hear_labeler()
            elif fd == self.pidfd:
                self.end = "exit"
            elif fd == self.res_r:
                self.read_results()
                read = True
            else:
                # Output is counted and thrown away: printing never fails a candidate (its
                # CPU and wall limits bound how much it prints).
                self.out_bytes += len(_read_some(self.out_r))
                read = True
        if read and not self.muted_until:
            self.mute()

    def hear_labeler(self) -> None:
        """Takes in what the labeler sent: other tasks queue up; a stop of this one ends it."""
        warden = self.warden
        warden.pump()
        if self.task["id"] in warden.stops:
            self.end = "stopped"
        if warden.closed:
            self.poller.unregister(warden.from_labeler)

    def read_results(self) -> None:
        if not self.result and self.calls_cpu_limit is not None:
            # The first frame: the module has loaded, the test calls begin.
            calls_end = self.used + self.calls_cpu_limit
            if calls_end < self.cpu_limit:
                self.cpu_limit, self.in_calls = calls_end, True
        self.result += _read_some(self.res_r)
        if len(self.result) > self.task["max_result_bytes"]:
            self.end = "output_limit"

    def drain(self) -> None:
        # The child is gone; what it wrote is in the pipe (its own children, still alive,
        # may add more until they die next: that is not its result).
        while len(self.result) <= self.task["max_result_bytes"]:
            b = _read_some(self.res_r)
            if not b:
                break
            self.result += b

    def outcome(self) -> tuple[dict, bytes]:
        duration = time.monotonic() - self.start
        header = {"end": self.end, "code": 0, "duration": round(duration, 4), "output_bytes": self.out_bytes}
        if self.detail:
            header["detail"] = self.detail
        if self.cpu_timeout:
            header["cpu_limit"] = self.calls_cpu_limit if self.in_calls else self.cpu_limit
            header["in_calls"] = self.in_calls
        return header, bytes(self.result[: self.task["max_result_bytes"]])


def _read_some(fd: int) -> bytes:
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


_IPC_RMID = 0


def _remove_sysv_ipc() -> int:
    """Removes every System V shared memory segment, message queue and semaphore set of
    this IPC namespace; how many could not be."""
    left = 0
    for table, call in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:
            lines = _read(f"/proc/sysvipc/{table}").splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            ident = int(line.split()[1])
            if _libc_call(call, ident, _IPC_RMID, 0, 0) != 0:
                left += 1
    return left


def _wipe(root: str) -> None:
    """Empties `root`, however deep the tree a candidate left in it: iteratively (no
    recursion to overflow), by directory fd and name (no path grows past PATH_MAX), each
    directory scanned once. It stays on root's filesystem: what the sandbox mounted inside
    the scratch (an interpreter that lives under /tmp, bound read-only at its own path) is
    not the candidate's, and walking it after every candidate would cost a venv's whole
    tree each time."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    root_dev = os.fstat(fd).st_dev
    try:
        pending = _unlink_files(fd)  # subdirectories of the directory `fd` is, still to empty
        frames: list[tuple[list[str], str]] = []  # above it: (their pending, its name)
        while True:
            if pending:
                name = pending.pop()
                try:
                    os.chmod(name, 0o700, dir_fd=fd)  # a candidate may have made it unreadable
                except OSError:
                    pass
                try:
                    down = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    continue
                if os.fstat(down).st_dev != root_dev:  # a mount point: not ours to empty
                    os.close(down)
                    continue
                os.close(fd)
                fd = down
                frames.append((pending, name))
                pending = _unlink_files(fd)
                continue
            if not frames:
                return
            pending, name = frames.pop()
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = up
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError:
                pass
    finally:
        os.close(fd)


def _unlink_files(fd: int) -> list[str]:
    """Unlinks every entry of directory `fd` but its subdirectories, which it returns."""
    dirs = []
    try:
        entries = list(os.scandir(fd))
    except OSError:
        return dirs
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                dirs.append(e.name)
            else:
                os.unlink(e.name, dir_fd=fd)
        except OSError:
            pass
    return dirs


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
              signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGXCPU, signal.SIGXFSZ):
        signal.signal(s, signal.SIG_IGN)
    as_init = os.getpid() == 1
    if not as_init:
        _prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans (setsid ones too) come back to us
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != os.path.abspath(config["scratch"])]
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
    wire.write_frame(to_labeler, wire.message({"ready": os.getpid(), "as_init": as_init, "uid": os.getuid()}))
    while True:
        item = warden.next_task()
        if item is None:
            warden.close()  # the zygote's CPU time then counts among the warden's children
            return
        task, code = item
        header, payload = warden.run(task, code)
        warden.stops.discard(task["id"])
        header["id"] = task["id"]
        if warden.broken:
            # This worker is not sound any more: its last candidate is charged (or run
            # again, by the pool, on a fresh worker) and the worker goes.
            header["replace"] = 1
            print(f"worker: replacing myself after task {task['id']}: {warden.broken}", file=sys.stderr, flush=True)
        wire.write_frame(to_labeler, wire.message(header, payload))
        if warden.broken:
            warden.stop_zygote()
            return


if __name__ == "__main__":
    main()
