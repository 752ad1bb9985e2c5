"""fractal: best-of-N code selection with a learned critic."""

__version__ = "0.1.0"
