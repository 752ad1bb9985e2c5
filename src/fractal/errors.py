"""The one exception base for conditions the user can fix.

A UserError's message is complete advice in one line per problem: the file, line or
params key, and what to do. `fractal run` and `python -m fractal.stage` print it as that
line instead of a traceback; everything else (a bug) keeps its traceback. FRACTAL_DEBUG=1
(or `fractal run --traceback`) keeps the traceback for a UserError too.
"""
from __future__ import annotations

import os

DEBUG_ENV = "FRACTAL_DEBUG"


class UserError(Exception):
    """Raised for a condition the user can act on (bad params, a missing or malformed input
    file, an unreachable store); its message says what to do."""


def debug() -> bool:
    """True when tracebacks are wanted even for a UserError."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
