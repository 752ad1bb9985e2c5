"""Fixtures shared by test modules: a real OpenSSH server on loopback (`sshd`, logged in to
with `sshd_client_key`), the Lambda API double (`lambda_double`, and `lambda_env`: a user
whose Lambda is the double) and the toy repository configured to run on it (`lambda_repo`).

The sshd is Debian's openssh-server, started by the tests as a child process with its own
config, host key and authorized_keys in a temp dir (CI installs it: apt-get install
openssh-server rsync). The double and the sshd live in tests/support/double.py.

And the end-to-end tests' shared starting point: a real MLflow server on loopback
(`mlflow_server`) and one tracked `dvc repro` of the tiny default profile (`tiny_repro`,
read-only; tests/support/tiny_repro.py says why and how a test that changes it copies it).
"""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.double import LambdaDouble, LoopbackSSHD, make_keypair
from support.remote import TOY_DVC, TOY_STAGE, ToyRepo
from support.tiny_repro import MlflowServer, TinyRepro, reproduce_tiny

_missing = [tool for tool in ("sshd", "rsync", "ssh", "ssh-keygen", "git")
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists()]


@pytest.fixture(scope="session")
def sshd_client_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The key the tests log in with: (private key path, public key line)."""
    return make_keypair(tmp_path_factory.mktemp("client-key"))


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory, sshd_client_key: tuple[Path, str]) -> LoopbackSSHD:
    if _missing:
        pytest.skip(f"needs {', '.join(_missing)} (apt-get install openssh-server rsync git)")
    server = LoopbackSSHD(tmp_path_factory.mktemp("sshd"), [sshd_client_key[1]]).start()
    yield server
    server.stop()


@pytest.fixture
def lambda_double() -> LambdaDouble:
    """The Lambda API double; a test fails if it leaves any instance running."""
    double = LambdaDouble({"lk-" + secrets.token_hex(20)}, boot_seconds=0.3, terminate_seconds=0.1).start()
    double.api_key = next(iter(double.api_keys))  # type: ignore[attr-defined]
    yield double
    leaked = double.running()
    double.stop()
    assert not leaked, f"instances left running in the Lambda double: {leaked}"


@pytest.fixture
def lambda_env(lambda_double: LambdaDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment of a user whose Lambda is the double, with state in a temp FRACTAL_HOME."""
    for name in ("FRACTAL_EXECUTOR", "FRACTAL_EXECUTOR_CONFIG", "DVC_EXP_NAME", "DVC_STAGE", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LAMBDA_API_KEY", lambda_double.api_key)
    monkeypatch.setenv("FRACTAL_LAMBDA_API_URL", lambda_double.url)
    monkeypatch.setenv("FRACTAL_HOME", str(tmp_path / "fractal-home"))
    return dict(os.environ)


@pytest.fixture
def lambda_repo(tmp_path: Path, lambda_env: dict[str, str], sshd: LoopbackSSHD,
                sshd_client_key: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> ToyRepo:
    repo = tmp_path / "repo"
    (repo / "stages").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "stages" / "toy.py").write_text(TOY_STAGE)
    (repo / "dvc.yaml").write_text(TOY_DVC)
    (repo / "params.yaml").write_text("toy:\n  steps: 2\n")
    (repo / "data" / "input.txt").write_text("hello fractal\n")
    (repo / ".gitignore").write_text(".fractal/\n")
    toy = ToyRepo(repo, tmp_path / "remote")
    toy.set_stage(sleep=0)
    toy.lambda_settings = {
        "instance_types": ["gpu_1x_a100_sxm4"], "ssh_user": sshd.user, "ssh_port": sshd.port,
        "ssh_key": str(sshd_client_key[0]), "poll_seconds": 0.1, "watchdog": False, "boot_timeout_minutes": 1, "retry_seconds": 0.05,
    }
    toy.remote = {"root": str(toy.remote_root), "python": sys.executable, "setup": "", "compress": False,
                  "reconnect_minutes": 0.5}
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {sshd.host_key_pub}\n")
    toy.ssh = {"host": "127.0.0.1", "port": sshd.port, "user": sshd.user, "identity_file": str(sshd_client_key[0]),
               "known_hosts": str(known_hosts)}
    toy.write_config()
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=repo, check=True)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "toy"], cwd=repo, check=True)
    monkeypatch.chdir(repo)
    return toy


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The URL of a real MLflow tracking server (SQLite backend, proxied artifacts) on loopback."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        server.start()
    except RuntimeError as e:
        pytest.fail(str(e))
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def tiny_repro(tmp_path_factory: pytest.TempPathFactory, mlflow_server: str) -> TinyRepro:
    """The tiny default profile reproduced once per session, tracked on `mlflow_server`.
    Read-only: a test that changes it works on support.tiny_repro.copy_reproduced(...)."""
    return reproduce_tiny(tmp_path_factory.mktemp("tiny-repro"), mlflow_server)


# Modules that run on one xdist worker together: the two whose hostile batches allocate
# gigabytes (one at a time, their memory limits are not raced by the other's).
_SAME_WORKER = {"test_execution_sandbox": "sandbox", "test_execution_isolation": "sandbox"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups off the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`-n 2 --dist loadgroup`, the README's test command) a module's tests
    run on one worker, so a module-scoped fixture (a Ray cluster, a reproduced repository) is
    built once, as in a serial run; the modules that share the session's `tiny_repro` run on
    one worker together, so that two-minute repro is not done once per worker."""
    shares_repro = {item.module.__name__ for item in items if "tiny_repro" in getattr(item, "fixturenames", ())}
    for item in items:
        module = item.module.__name__
        group = "tiny_repro" if module in shares_repro else _SAME_WORKER.get(module, module)
        item.add_marker(pytest.mark.xdist_group(group))
