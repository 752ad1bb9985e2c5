"""Test support that is not part of the installed package: the Lambda API double and the
loopback sshd (double.py, also the dev tool behind docs/lambda.md's dry run) and the toy
repository and process helpers of the remote tests (remote.py). tests/conftest.py turns them
into fixtures."""
