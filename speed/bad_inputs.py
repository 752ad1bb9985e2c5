"""What a user sees for each bad input of tests/test_newcomer.py, and how long it took.

    python speed/bad_inputs.py [--out FILE]

Runs every case once in a scratch workspace (the same way the test does) and prints a
markdown table: the input, the command, the exit code, the one line the user is told, and
the wall seconds (including the interpreter's start) and the CPU seconds of the command and
its children (which do not grow with the load), with the machine's load average.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from test_newcomer import CASES, attempt  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    load = os.getloadavg()
    rows = ["| # | bad input | command | rc | what the user sees (stderr) | wall s | CPU s |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES, 1):
            out = attempt(case, Path(tmp) / str(i))
            told = "<br>".join(line.replace("|", "\\|") for line in out.lines) or "(nothing)"
            rows.append(f"| {i} | {case.name} | `fractal {' '.join(case.command)}` | {out.rc} | {told} | "
                        f"{out.seconds:.2f} | {out.cpu_seconds:.2f} |")
            print(rows[-1], flush=True)
    end = os.getloadavg()
    table = "\n".join(rows) + (f"\n\nLoad average (1 min) {load[0]:.1f} at the start, {end[0]:.1f} at the end, "
                               f"{os.cpu_count()} cores.\n")
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
