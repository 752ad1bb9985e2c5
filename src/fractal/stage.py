"""`python -m fractal.stage stages/NAME.py ARGS...`: runs a stage script exactly as
`python stages/NAME.py ARGS...` would (same argv, same sys.path[0], run as __main__), except
that an error the user can fix (fractal.errors.UserError) prints one line and exits 2
instead of printing a traceback. `fractal run` starts local stages this way; FRACTAL_DEBUG=1
keeps the traceback.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

from fractal.errors import UserError, debug


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m fractal.stage stages/NAME.py [ARGS...]", file=sys.stderr)
        return 2
    script = Path(argv[0])
    sys.argv = [str(script), *argv[1:]]
    sys.path[0] = str(script.resolve().parent)  # what `python stages/NAME.py` puts first
    try:
        runpy.run_path(str(script), run_name="__main__")
    except UserError as e:
        if debug():
            raise
        for line in str(e).splitlines():  # one line per problem (a ParamsError may hold several)
            print(f"{script.stem}: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
