"""Generation backends behind one interface: each turns problems into Generation records."""
from __future__ import annotations

from fractal.generation.backend import Backend, get_backend

__all__ = ["Backend", "get_backend"]
