"""`fractal lambda ...`: the by-hand workflow of docs/lambda.md, against the double and the
loopback sshd: types, launch, status, ssh-config, ssh, sync, terminate."""
from __future__ import annotations

import subprocess

from support.remote import run_fractal, wait_until


def fractal(repo, *args: str) -> tuple[int, str]:
    return run_fractal(["fractal", "lambda", *args], repo.path)


def test_types_show_price_and_capacity(lambda_repo, lambda_double):
    lambda_double.capacity["gpu_1x_a10"] = []
    rc, out = fractal(lambda_repo, "types")
    assert rc == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "1.29" in lines["gpu_1x_a100_sxm4"] and "us-west-1, us-east-1" in lines["gpu_1x_a100_sxm4"]
    assert "sold out" in lines["gpu_1x_a10"]
    rc, out = fractal(lambda_repo, "types", "--available")
    assert "gpu_1x_a10 " not in out and "gpu_8x_h100_sxm5" not in out


def test_the_by_hand_workflow_from_launch_to_terminate(lambda_repo, lambda_double, tmp_path):
    rc, out = fractal(lambda_repo, "launch", "--type", "gpu_1x_h100_pcie")
    assert rc == 0, out
    [instance_id] = lambda_double.running()
    assert instance_id in out and "is active at 127.0.0.1" in out and "pinned host key" in out

    rc, out = fractal(lambda_repo, "status")
    assert rc == 0 and instance_id[:8] in out and "gpu_1x_h100_pcie" in out and "$2.49/h" in out
    assert "kept, idle; terminated in 30 min" in out

    rc, config = fractal(lambda_repo, "ssh-config")
    assert rc == 0 and f"Host lambda-{instance_id[:8]}" in config
    assert f"known_hosts/{instance_id}" in config and "StrictHostKeyChecking yes" in config
    (tmp_path / "ssh_config").write_text(config)
    out = subprocess.run(["ssh", "-F", str(tmp_path / "ssh_config"), f"lambda-{instance_id[:8]}", "echo", "via-config"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout == "via-config\n", out.stderr

    rc, out = fractal(lambda_repo, "ssh", instance_id[:8], "--", "echo", "hello-from-instance")
    assert rc == 0 and "hello-from-instance" in out

    rc, out = fractal(lambda_repo, "sync", "--stage", "toy")  # the only instance: no need to name it
    assert rc == 0, out
    work = out.strip().splitlines()[-1]
    assert work.startswith(str(lambda_repo.remote_root / "work"))
    assert open(f"{work}/stages/toy.py").read() == (lambda_repo.path / "stages/toy.py").read_text()
    assert open(f"{work}/data/input.txt").read() == "hello fractal\n"

    rc, out = fractal(lambda_repo, "terminate", instance_id[:8])
    assert rc == 0 and f"terminated {instance_id}" in out
    assert wait_until(lambda: lambda_double.running() == [])
    rc, out = fractal(lambda_repo, "status")
    assert rc == 0 and "nothing is billing" in out
    assert lambda_double.api_key not in out


def test_launch_without_waiting_then_wait(lambda_repo, lambda_double):
    rc, out = fractal(lambda_repo, "launch", "--no-wait")
    assert rc == 0, out
    [instance_id] = lambda_double.running()
    assert instance_id in out
    rc, out = fractal(lambda_repo, "wait", instance_id)
    assert rc == 0 and "is active" in out
    rc, out = fractal(lambda_repo, "terminate", "--all")
    assert rc == 0
    assert wait_until(lambda: lambda_double.running() == [])


def test_status_warns_about_instances_fractal_did_not_launch(lambda_repo, lambda_double):
    from fractal.remote.api import LambdaClient
    c = LambdaClient(lambda_double.api_key, lambda_double.url)
    c.add_ssh_key("console", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIConsoleKeyConsoleKeyConsoleKeyConsoleKeyCons")
    console = c.launch("us-east-1", "gpu_1x_a10", "console", name="by-hand")
    try:
        rc, out = fractal(lambda_repo, "status")
        assert rc == 0 and "by-hand" in out and "not launched by fractal" in out
        assert "warning: 1 instance(s) billing, $0.75/h" in out
        rc, out = fractal(lambda_repo, "terminate", "--all")  # only fractal's: this one stays
        assert lambda_double.running() == [console]
    finally:
        c.terminate([console])


def test_errors_are_one_line_with_advice(lambda_repo, lambda_double):
    rc, out = fractal(lambda_repo, "ssh", "nonexistent")
    assert rc == 1 and "no running Lambda instance with id or name 'nonexistent'" in out
    assert "Traceback" not in out
    rc, out = fractal(lambda_repo, "terminate")
    assert rc == 1 and "--all" in out


def test_double_command_prints_a_working_setup(tmp_path):
    """`fractal lambda double`: the stand-in a user can dry-run their remote stages against."""
    import os
    import signal
    import urllib.request

    proc = subprocess.Popen(["fractal", "lambda", "double", "--dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(7)]
        exports = dict(line.split("export ", 1)[1].split("#")[0].strip().split("=", 1)
                       for line in lines if "export " in line)
        req = urllib.request.Request(exports["FRACTAL_LAMBDA_API_URL"] + "/instance-types",
                                     headers={"Authorization": f"Bearer {exports['LAMBDA_API_KEY']}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert "gpu_1x_a100_sxm4" in r.read().decode()
        assert any("ssh_port:" in line for line in lines)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=20) == 0
