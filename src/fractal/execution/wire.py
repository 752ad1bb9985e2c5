"""The wire: how values and messages cross between the labeler and its sandboxed workers.

One definition for both sides. The labeler imports this file as fractal.execution.wire;
the worker, a script in a sandbox that holds no fractal, gets its source in its config
(pool.py) and runs it as the module `fractal_wire` (worker.py). So it imports the
standard library only, and nothing in it may depend on where it runs.

Plain data, what a value crosses as: `encode_plain` turns a value into JSON-able data
built from exact builtin types only, `decode_plain` turns that back into exact builtin
values (None, bool, int, float, complex, str, bytes, bytearray, list, tuple, dict, set,
frozenset) plus `Opaque`, this module's stand-in for any other object, so no value from a
candidate can carry a method of its own (a rigged `__eq__`, `__bool__` or `__hash__`) into
the judge. Test inputs cross the other way as `encode_call`'s text (or
`encode_expression`'s, for a generated input that is an expression).

Frames, how bytes cross a pipe: a 4-byte big-endian length, then the body (`frame`,
`write_frame`; `read_frame` for a blocking fd, `take_frames` for what a non-blocking one
has delivered so far). Between the labeler and a worker's warden a frame's body is a
message: a JSON header line, then raw bytes (`message`, `read_message`). A candidate's
process reports each result as a frame of one JSON object (`parse_frames`).
"""
from __future__ import annotations

import base64
import json
import json.encoder
import os
import struct

HEADER = struct.Struct(">I")  # a frame's length
_MAX_SAFE_INT = 2**53  # beyond it an int is sent as hex text: JSON readers may round it


# ---------------------------------------------------------------------------------------
# Plain data: encoding
# ---------------------------------------------------------------------------------------
def encode_plain(value, depth: int = 0, order=None):
    """A JSON-able form of `value` built from exact builtin types only.

    Lists are JSON arrays; every other container or special value is a one-key object
    ({"t": tuple items}, {"d": [[k, v], ...]}, {"s": set}, {"F": frozenset}, {"b": bytes as
    base64}, {"B": bytearray}, {"c": [re, im]}, {"i": big int in hex}, {"o": [type name,
    truthiness]} for anything else, an `Opaque` included). Subclasses of builtins (numpy
    floats, namedtuples, Counters) are read through the base type's own slots, so their
    overridden methods do not decide the value. Nested deeper than 100: ValueError.
    `order`, a key function on encoded items: set items, and dict items by their key, in
    that order, so that equal values have one encoding (probe.py's signatures).
    """
    if depth > 100:
        raise ValueError("nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        return value if -_MAX_SAFE_INT < value < _MAX_SAFE_INT else {"i": hex(value)}
    if t is float:
        return value
    if t is list:
        return [encode_plain(v, depth + 1, order) for v in value]
    if t is tuple:
        return {"t": [encode_plain(v, depth + 1, order) for v in value]}
    if t is dict:
        return {"d": _items(value.items(), depth, order)}
    if t is set or t is frozenset:
        return {"s" if t is set else "F": _members(value, depth, order)}
    if t is bytes:
        return {"b": base64.b64encode(value).decode("ascii")}
    if t is bytearray:
        return {"B": base64.b64encode(bytes(value)).decode("ascii")}
    if t is complex:
        return {"c": [value.real, value.imag]}
    if t is Opaque:
        return {"o": [value.type_name, value.truthy]}
    # Subclasses of builtins: take the value through the base type.
    if isinstance(value, bool):
        return bool.__bool__(value)
    if isinstance(value, int):
        return encode_plain(int.__index__(value), depth + 1, order)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, tuple):
        return {"t": [encode_plain(v, depth + 1, order) for v in tuple.__iter__(value)]}
    if isinstance(value, list):
        return [encode_plain(v, depth + 1, order) for v in list.__iter__(value)]
    if isinstance(value, dict):
        return {"d": _items(dict.items(value), depth, order)}
    if isinstance(value, (set, frozenset)):
        return {"s" if isinstance(value, set) else "F": _members(set.__iter__(set(value)), depth, order)}
    # numpy scalars (np.int64, np.bool_) behave like the Python scalar they hold.
    if t.__module__ == "numpy" and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        return encode_plain(value.item(), depth + 1, order)
    try:
        truthy = bool(value)
    except Exception:
        truthy = True
    return {"o": [type_name(value), truthy]}


def _items(items, depth: int, order) -> list:
    pairs = [[encode_plain(k, depth + 1, order), encode_plain(v, depth + 1, order)] for k, v in items]
    return sorted(pairs, key=lambda kv: order(kv[0])) if order else pairs


def _members(members, depth: int, order) -> list:
    encoded = [encode_plain(v, depth + 1, order) for v in members]
    return sorted(encoded, key=order) if order else encoded


def type_name(obj) -> str:
    """The name of obj's type, at most 80 characters, whatever the type does to its name."""
    try:
        name = type(obj).__name__
        return name[:80] if type(name) is str else "object"
    except Exception:
        return "object"


def encode_call(args: tuple, kwargs: dict) -> str:
    """One call's inputs as the labeler records them and the worker replays them: the JSON
    text of [args, kwargs], plain data (ValueError or RecursionError if they are not)."""
    return json.dumps([encode_plain(list(args)), encode_plain(dict(kwargs))], allow_nan=True)


def encode_expression(text: str) -> str:
    """A generated input that is an expression rather than a call on plain data
    (`round(f(1.5), 2)`, `f(x)[0]`, `decode_cyclic(encode_cyclic('abc'))`): the JSON text of
    {"expr": text}. The worker evaluates the text in the candidate's module (its names, its
    builtins), as SRank evaluates the assert's text there; its value crosses back as plain
    data like a call's."""
    return json.dumps({"expr": text})


def decode_call(encoded):
    """One call as the worker replays it, from its item in a JSON list of encoded calls:
    (args, kwargs) of plain data, or the expression's text (a str)."""
    if isinstance(encoded, dict):
        text = encoded.get("expr")
        if type(text) is not str:
            raise MalformedPlainData("a call object needs an 'expr' text")
        return text
    args, kwargs = encoded
    return decode_plain(args), decode_plain(kwargs)


# json.dumps(obj, allow_nan=True) without building an encoder for every call: a candidate's
# process, whose first json.dumps would write twice the pages this one does, encodes each
# result with it. No circular check is needed: what is encoded is a fresh tree from
# encode_plain.
_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, json.encoder.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ": ", ", ",
    False, False, True)


def dumps(plain) -> str:
    """The JSON text of encode_plain's output, as json.dumps(plain, allow_nan=True) writes it."""
    return "".join(_ENCODER(plain, 0)) if _ENCODER else json.dumps(plain, allow_nan=True)


# ---------------------------------------------------------------------------------------
# Plain data: decoding
# ---------------------------------------------------------------------------------------
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
    """The value a JSON-parsed encoding stands for (see encode_plain)."""
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


# ---------------------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------------------
def frame(body: bytes) -> bytes:
    """body with its length in front: one frame."""
    return HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_frame(fd: int, body: bytes) -> None:
    write_all(fd, frame(body))


def read_exact(fd: int, n: int) -> bytes | None:
    """n bytes from a blocking fd; None at end of file."""
    data = b""
    while len(data) < n:
        more = os.read(fd, n - len(data))
        if not more:
            return None
        data += more
    return data


def read_frame(fd: int) -> bytes | None:
    """The next frame's body from a blocking fd; None at end of file."""
    head = read_exact(fd, HEADER.size)
    return None if head is None else read_exact(fd, HEADER.unpack(head)[0])


def split_frames(data: bytes | bytearray) -> tuple[list[bytes], int]:
    """The bodies of the complete frames at the start of data, and where the rest begins."""
    bodies = []
    i = 0
    while i + 4 <= len(data):
        (n,) = HEADER.unpack_from(data, i)
        if len(data) < i + 4 + n:
            break
        bodies.append(bytes(data[i + 4 : i + 4 + n]))
        i += 4 + n
    return bodies, i


def take_frames(buf: bytearray) -> list[bytes]:
    """The bodies of the complete frames in buf (what a pipe has delivered so far), which
    are removed from it; an incomplete last frame stays for the next read."""
    bodies, end = split_frames(buf)
    del buf[:end]
    return bodies


def message(header: dict, payload: bytes = b"") -> bytes:
    """A frame's body between the labeler and a warden: a JSON header line, then raw bytes
    (a task's code object; a run's results, as its process wrote them)."""
    return json.dumps(header).encode() + b"\n" + payload


def read_message(body: bytes) -> tuple[dict, bytes]:
    header, _, payload = body.partition(b"\n")
    return json.loads(header), payload


def parse_frames(payload: bytes) -> tuple[list[dict], bool]:
    """A candidate's reports (frames of one JSON object each, as its process wrote them), and
    whether the stream was well formed to its end."""
    bodies, end = split_frames(payload)
    frames = []
    for body in bodies:
        try:
            obj = json.loads(body)
        except (ValueError, RecursionError):
            return frames, False
        if type(obj) is not dict or len(obj) != 1:
            return frames, False
        frames.append(obj)
    return frames, end == len(payload)
