"""Plain data: turning the JSON a candidate's process sent back into exact builtin values.

The encoder lives in worker.py (it runs inside the sandbox); this is the decoder. It is
stdlib-only as well, because the worker ships its source into the sandbox to decode the
test inputs there. What comes out is built from exact builtin types only (None, bool,
int, float, complex, str, bytes, bytearray, list, tuple, dict, set, frozenset) plus
`Opaque`, this module's stand-in for any other object, so no value from a candidate can
carry a method of its own (a rigged `__eq__`, `__bool__` or `__hash__`) into the judge.
"""
from __future__ import annotations

import base64


class MalformedPlainData(ValueError):
    pass


class Opaque:
    """A returned object that is not plain data (a generator, an ndarray, a class instance).

    It equals only itself, as the original would equal no expected value built by the
    tests; its truth value is the one the candidate's object had, which is all an
    `assert candidate(...)` looks at.
    """

    __slots__ = ("type_name", "truthy")

    def __init__(self, type_name: str, truthy: bool):
        self.type_name = type_name
        self.truthy = truthy

    def __bool__(self) -> bool:
        return self.truthy

    def __repr__(self) -> str:
        return f"<opaque {self.type_name}>"


def decode_plain(obj):
    """The value a JSON-parsed encoding stands for (see worker.encode_plain)."""
    t = type(obj)
    if obj is None or t in (bool, int, float, str):
        return obj
    if t is list:
        return [decode_plain(v) for v in obj]
    if t is not dict or len(obj) != 1:
        raise MalformedPlainData(f"unexpected {t.__name__}")
    (tag, v), = obj.items()
    if tag == "t":
        return tuple(decode_plain(x) for x in _list(v))
    if tag == "d":
        out = {}
        for pair in _list(v):
            if type(pair) is not list or len(pair) != 2:
                raise MalformedPlainData("dict item is not a pair")
            out[_hashable(decode_plain(pair[0]))] = decode_plain(pair[1])
        return out
    if tag == "s":
        return {_hashable(decode_plain(x)) for x in _list(v)}
    if tag == "F":
        return frozenset(_hashable(decode_plain(x)) for x in _list(v))
    if tag in ("b", "B"):
        if type(v) is not str:
            raise MalformedPlainData("bytes are not base64 text")
        try:
            raw = base64.b64decode(v.encode("ascii"), validate=True)
        except (ValueError, UnicodeEncodeError):
            raise MalformedPlainData("bytes are not base64 text") from None
        return raw if tag == "b" else bytearray(raw)
    if tag == "c":
        v = _list(v)
        if len(v) != 2 or any(type(x) not in (int, float) for x in v):
            raise MalformedPlainData("complex is not [re, im]")
        return complex(v[0], v[1])
    if tag == "i":
        if type(v) is not str:
            raise MalformedPlainData("big int is not hex text")
        try:
            return int(v, 16)
        except ValueError:
            raise MalformedPlainData("big int is not hex text") from None
    if tag == "o":
        v = _list(v)
        if len(v) != 2 or type(v[0]) is not str or type(v[1]) is not bool:
            raise MalformedPlainData("opaque is not [type name, truthiness]")
        return Opaque(v[0][:80], v[1])
    raise MalformedPlainData(f"unknown tag {tag[:20]!r}")


def _list(v) -> list:
    if type(v) is not list:
        raise MalformedPlainData("expected a list")
    return v


def _hashable(v):
    # Lists, dicts and sets cannot be keys; Opaque is hashable by identity, which is fine.
    try:
        hash(v)
    except TypeError:
        raise MalformedPlainData("unhashable key") from None
    return v
