"""SSH against a real sshd on loopback: host keys pinned per instance, never in the user's
known_hosts; the generated OpenSSH config works for ssh and rsync."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fractal.remote.ssh import RemoteError, Target, rsync, write_ssh_config


def lambda_like_target(sshd, key: Path, known_hosts: Path, config: Path) -> Target:
    write_ssh_config(config, "lambda-test", "127.0.0.1", sshd.user, sshd.port, str(key), known_hosts)
    return Target(label="test instance", host="127.0.0.1", user=sshd.user, port=sshd.port, identity_file=str(key),
                  known_hosts=known_hosts, pin_new_keys=True, ssh_config=config, alias="lambda-test")


def test_first_contact_pins_the_key_in_the_instance_file_only(sshd, sshd_client_key, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the user's ~/.ssh must stay untouched
    known_hosts = tmp_path / "known_hosts" / ("a" * 32)  # one file per instance id
    target = lambda_like_target(sshd, sshd_client_key[0], known_hosts, tmp_path / "a.config")
    conn = target.connect()
    assert conn.run("echo hi", hide=True, in_stream=False).stdout == "hi\n"
    conn.close()
    assert known_hosts.read_text().split()[1:] == sshd.host_key_pub.split()[:2]
    assert known_hosts.read_text().startswith(f"[127.0.0.1]:{sshd.port} ")
    assert not (tmp_path / "home" / ".ssh").exists()
    # OpenSSH with the generated config trusts the pinned key and nothing else
    out = subprocess.run(["ssh", "-F", str(target.ssh_config), "lambda-test", "echo", "openssh"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "openssh\n"


def test_a_changed_host_key_is_refused_by_fabric_and_openssh(sshd, sshd_client_key, tmp_path):
    """An IP reused by another machine must not be trusted because the last one was."""
    known_hosts = tmp_path / "known_hosts"
    other_key = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {Path(f'{other_key}.pub').read_text().split(' ', 2)[0]} "
                           f"{Path(f'{other_key}.pub').read_text().split()[1]}\n")
    target = lambda_like_target(sshd, sshd_client_key[0], known_hosts, tmp_path / "b.config")
    with pytest.raises(RemoteError, match="host key .* changed"):
        target.connect()
    out = subprocess.run(["ssh", "-F", str(target.ssh_config), "lambda-test", "true"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0 and "HOST IDENTIFICATION HAS CHANGED" in out.stderr


def test_ssh_executor_refuses_an_unknown_host_instead_of_trusting_it(sshd, sshd_client_key, tmp_path):
    target = Target(label="ssh host 127.0.0.1", host="127.0.0.1", user=sshd.user, port=sshd.port,
                    identity_file=str(sshd_client_key[0]), known_hosts=tmp_path / "empty_known_hosts")
    with pytest.raises(RemoteError, match="is not in .*empty_known_hosts"):
        target.connect()
    assert (tmp_path / "empty_known_hosts").read_text() == ""


def test_wrong_key_is_an_authentication_error(sshd, tmp_path):
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    target = Target(label="test", host="127.0.0.1", user=sshd.user, port=sshd.port, identity_file=str(stranger),
                    known_hosts=tmp_path / "kh", pin_new_keys=True)
    with pytest.raises(RemoteError, match="authentication .* failed"):
        target.connect()


def test_rsync_over_the_generated_config(sshd, sshd_client_key, tmp_path):
    target = lambda_like_target(sshd, sshd_client_key[0], tmp_path / "kh", tmp_path / "c.config")
    target.connect().close()  # pins the key, as `fractal lambda wait` does
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f.txt").write_text("payload")
    rsync(target, ["-r", f"{src}/", f"{target.destination()}:{tmp_path / 'dst'}/"], compress=True, what="test")
    assert (tmp_path / "dst" / "d" / "f.txt").read_text() == "payload"
    with pytest.raises(RemoteError, match="rsync \\(test\\) failed"):
        rsync(target, [f"{tmp_path / 'missing'}", f"{target.destination()}:{tmp_path / 'dst'}/"], False, "test")
