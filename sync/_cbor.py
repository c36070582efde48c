"""Deterministic CBOR encoding and bounded, strict decoding (the one CBOR door of sync).

Every module of vsm_edge.sync encodes and decodes through here, so that the
deterministic-encoding rules and the input limits live in one place.

Theory of operation
-------------------
*Encoding* follows RFC 8949 §4.2.1, "core deterministic encoding":
integers, lengths and tags in their shortest form; floats in the shortest of
half, single or double precision that keeps the value exactly (NaN as
``f97e00``); definite lengths only; map keys sorted by the **bytewise
lexicographic order of their deterministic encodings**. That last rule is
not what ``cbor2.dumps(canonical=True)`` does: cbor2 5.x sorts keys
length-first (the older RFC 7049 "canonical CBOR" rule), so ``{10, -1, 100}``
comes out as ``0a 20 1864`` where §4.2.1 wants ``0a 1864 20``. The encoder is
therefore our own, in Python: about as fast as cbor2's canonical mode on small
maps, about three times slower on a 5,000-key map (bench/bench_wire.py).

The data model is deliberately small: ``None``, ``bool``, ``int`` in
``-2**64 .. 2**64-1`` (no bignums), ``float``, ``str``, ``bytes``, lists and
tuples (arrays), mappings whose keys are ``int``, ``str`` or ``bytes``, and
``cbor2.CBORTag`` for the few tags a caller explicitly allows (COSE's 16 and
18). Anything else is a ``TypeError`` at encoding time rather than a surprise
on another node.

*Decoding* is cbor2's C decoder behind a pure-Python well-formedness scan of
the whole input. cbor2 has no depth or item limits, ignores trailing bytes and
keeps the last of duplicate map keys, so the scan runs first and rejects:

* input longer than ``max_size`` bytes, more than ``max_items`` data items
  (every head counts: integers, strings, arrays, maps, tags, simple values,
  floats) or containers (arrays, maps, tags) nested deeper than ``max_depth``
  (:class:`LimitExceededError`);
* truncated input and trailing bytes after the item; indefinite-length items
  and stray breaks; reserved additional-information values; integers, lengths
  and tag numbers not in their shortest form; tags not in ``tags``; simple
  values other than ``false``, ``true`` and ``null``; map keys that are not an
  integer, byte string or text string; duplicate map keys
  (:class:`MalformedError`). cbor2 then rejects invalid UTF-8.

Because keys are restricted to integers and strings and every head must be in
shortest form, two keys are equal exactly when their encodings are equal, so
the scan detects duplicates by comparing bytes (and Python-level collisions
such as ``1``/``1.0``/``True`` cannot occur). Map key *order* and float width
are not checked: signatures cover the exact bytes, and other encoders (pycose,
JavaScript libraries) do not all sort keys or shorten floats.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any

import cbor2

from ._errors import LimitExceededError, MalformedError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_SIZE",
    "MIN_ARG",
    "CBORTag",
    "check",
    "dumps",
    "encode_head",
    "loads",
]

CBORTag = cbor2.CBORTag

DEFAULT_MAX_SIZE = 256 * 1024
"""Largest accepted input in bytes (256 KiB)."""
DEFAULT_MAX_DEPTH = 32
"""Deepest accepted nesting of arrays, maps and tags."""
DEFAULT_MAX_ITEMS = 131_072
"""Most data items accepted in one input (each head counts once)."""

_UINT64_LIMIT = 1 << 64

# ---------------------------------------------------------------- encoding

# Precomputed one-byte heads: _SMALL_HEAD[major][n] for n < 24.
_SMALL_HEAD = [[bytes(((major << 5) | n,)) for n in range(24)] for major in range(8)]
_U8 = struct.Struct(">BB")
_U16 = struct.Struct(">BH")
_U32 = struct.Struct(">BI")
_U64 = struct.Struct(">BQ")
_F16 = struct.Struct(">e")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")
_NAN = b"\xf9\x7e\x00"


def encode_head(major: int, value: int) -> bytes:
    """The shortest head for ``major`` type and argument ``value`` (< 2**64)."""
    if value < 24:
        return _SMALL_HEAD[major][value]
    initial = major << 5
    if value < 0x100:
        return _U8.pack(initial | 24, value)
    if value < 0x10000:
        return _U16.pack(initial | 25, value)
    if value < 0x100000000:
        return _U32.pack(initial | 26, value)
    return _U64.pack(initial | 27, value)


def _encode_int(value: int) -> bytes:
    if value >= 0:
        if value >= _UINT64_LIMIT:
            raise ValueError(f"integer {value} does not fit in 64 bits (no bignums)")
        return encode_head(0, value)
    if value < -_UINT64_LIMIT:
        raise ValueError(f"integer {value} does not fit in 64 bits (no bignums)")
    return encode_head(1, -1 - value)


def _encode_float(value: float) -> bytes:
    if value != value:  # NaN: one canonical form (RFC 8949 §4.2.2)
        return _NAN
    try:
        half = _F16.pack(value)
    except OverflowError:
        pass
    else:
        if _F16.unpack(half)[0] == value:
            return b"\xf9" + half
    try:
        single = _F32.pack(value)
    except OverflowError:
        pass
    else:
        if _F32.unpack(single)[0] == value:
            return b"\xfa" + single
    return b"\xfb" + _F64.pack(value)


def _encode_key(key: object) -> bytes:
    if isinstance(key, str):
        data = key.encode()
        return encode_head(3, len(data)) + data
    if isinstance(key, bool):
        raise TypeError("map keys must be int, str or bytes, not bool")
    if isinstance(key, int):
        return _encode_int(key)
    if isinstance(key, (bytes, bytearray, memoryview)):
        data = bytes(key)
        return encode_head(2, len(data)) + data
    raise TypeError(f"map keys must be int, str or bytes, not {type(key).__name__}")


def _encode(obj: object, out: bytearray, depth: int) -> None:
    if isinstance(obj, str):
        data = obj.encode()
        out.extend(encode_head(3, len(data)))
        out.extend(data)
    elif isinstance(obj, bool):  # before int: bool is an int subclass
        out.extend(b"\xf5" if obj else b"\xf4")
    elif isinstance(obj, int):
        out.extend(_encode_int(obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        out.extend(encode_head(2, len(data)))
        out.extend(data)
    elif obj is None:
        out.extend(b"\xf6")
    elif isinstance(obj, float):
        out.extend(_encode_float(obj))
    elif isinstance(obj, (list, tuple)):
        if depth == 0:
            raise ValueError("nesting deeper than max_depth (or a cycle)")
        out.extend(encode_head(4, len(obj)))
        for item in obj:
            _encode(item, out, depth - 1)
    elif isinstance(obj, Mapping):
        if depth == 0:
            raise ValueError("nesting deeper than max_depth (or a cycle)")
        pairs = sorted((_encode_key(k), v) for k, v in obj.items())
        out.extend(encode_head(5, len(pairs)))
        previous = None
        for key, value in pairs:
            if key == previous:  # e.g. b"k" and bytearray(b"k") in one dict
                raise ValueError(f"duplicate map key {key.hex()}")
            previous = key
            out.extend(key)
            _encode(value, out, depth - 1)
    elif isinstance(obj, CBORTag):
        if depth == 0:
            raise ValueError("nesting deeper than max_depth (or a cycle)")
        tag = obj.tag
        if type(tag) is not int or not 0 <= tag < _UINT64_LIMIT:
            raise ValueError(f"invalid CBOR tag number {tag!r}")
        out.extend(encode_head(6, tag))
        _encode(obj.value, out, depth - 1)
    else:
        raise TypeError(f"cannot encode {type(obj).__name__} as CBOR (see the _cbor data model)")


def dumps(obj: object, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """Encode ``obj`` in RFC 8949 §4.2.1 core deterministic encoding.

    Equal values always give equal bytes. Raises ``TypeError`` for a value
    outside the data model (see the module docstring) and ``ValueError`` for an
    integer beyond 64 bits or nesting deeper than ``max_depth`` (which also
    catches cycles). Strings that are not valid Unicode raise
    ``UnicodeEncodeError`` (a ``ValueError``).
    """
    out = bytearray()  # one growing buffer: no object per encoded piece
    _encode(obj, out, max_depth)
    return bytes(out)


# ---------------------------------------------------------------- decoding

# The smallest argument that needs 1, 2, 4 or 8 following bytes.
MIN_ARG = (24, 0x100, 0x10000, 0x100000000)
# Simple values in the data model: false, true, null.
_SIMPLE_OK = frozenset((20, 21, 22))
_NO_TAGS: frozenset[int] = frozenset()


def _scan(data: bytes, max_depth: int, max_items: int, tags: frozenset[int]) -> int:
    """Check that ``data`` starts with one well-formed item within the limits.

    An iterative walk over the heads (no recursion, so no input can blow the
    Python stack); linear in the number of items. Returns the end offset of
    the item.
    """
    end = len(data)
    pos = 0
    items = 0
    # The innermost open container: children still expected (maps count keys
    # and values, so a key is expected whenever the count is even) and, for a
    # map, the encoded keys seen so far. Enclosing containers wait on `stack`.
    rem = 0
    keys: set[bytes] | None = None
    stack: list[tuple[int, set[bytes] | None]] = []
    from_bytes = int.from_bytes
    while True:
        if pos >= end:
            raise MalformedError(f"truncated CBOR: item expected at offset {pos}")
        start = pos
        initial = data[pos]
        major = initial >> 5
        info = initial & 0x1F
        pos += 1
        items += 1
        if items > max_items:
            raise LimitExceededError(
                f"CBOR input has more than {max_items} items", limit="items", maximum=max_items
            )
        if info < 24:
            arg = info
        elif info < 28:
            width = 1 << (info - 24)
            nxt = pos + width
            if nxt > end:
                raise MalformedError(f"truncated CBOR: head at offset {start} cut short")
            arg = data[pos] if width == 1 else from_bytes(data[pos:nxt], "big")
            pos = nxt
            if major != 7 and arg < MIN_ARG[info - 24]:
                raise MalformedError(f"non-shortest integer or length at offset {start}")
        elif info == 31:
            raise MalformedError(f"indefinite length or break at offset {start} is not allowed")
        else:
            raise MalformedError(f"reserved additional information {info} at offset {start}")

        if major <= 3:
            if major >= 2:
                pos += arg
                if pos > end:
                    raise MalformedError(f"truncated CBOR: string at offset {start} cut short")
            if keys is not None and not rem & 1:
                key = data[start:pos]
                if key in keys:
                    raise MalformedError(f"duplicate map key at offset {start}")
                keys.add(key)
        else:
            if keys is not None and not rem & 1:
                raise MalformedError(
                    f"map key at offset {start} is not an integer, byte string or text string"
                )
            if major <= 6:
                if len(stack) >= max_depth:
                    raise LimitExceededError(
                        f"CBOR nesting deeper than {max_depth}", limit="depth", maximum=max_depth
                    )
                if major == 6:
                    if arg not in tags:
                        raise MalformedError(f"unexpected CBOR tag {arg} at offset {start}")
                    count = 1
                else:
                    count = arg if major == 4 else arg * 2
                if count:
                    if count > end - pos:  # every child needs at least one byte
                        raise MalformedError(
                            f"truncated CBOR: container at offset {start} declares {count} items"
                        )
                    if items + count > max_items:
                        raise LimitExceededError(
                            f"CBOR input has more than {max_items} items",
                            limit="items",
                            maximum=max_items,
                        )
                    stack.append((rem, keys))
                    rem = count
                    keys = set() if major == 5 else None
                    continue
            elif info < 24:
                if info not in _SIMPLE_OK:
                    raise MalformedError(f"simple value {info} at offset {start} is not allowed")
            elif info == 24:
                raise MalformedError(f"simple value {arg} at offset {start} is not allowed")
            # else: a half, single or double float

        # One item is complete: close every container it completes.
        while True:
            if not stack:
                return pos
            rem -= 1
            if rem:
                break
            rem, keys = stack.pop()


def check(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    tags: frozenset[int] = _NO_TAGS,
) -> None:
    """Run the size check and the well-formedness scan of :func:`loads` only."""
    if len(data) > max_size:
        raise LimitExceededError(
            f"CBOR input of {len(data)} bytes exceeds {max_size}", limit="size", maximum=max_size
        )
    used = _scan(data, max_depth, max_items, tags)
    if used != len(data):
        raise MalformedError(f"{len(data) - used} trailing bytes after the CBOR item")


def loads(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
    tags: frozenset[int] = _NO_TAGS,
) -> Any:
    """Decode exactly one CBOR item from ``data``, strictly and within limits.

    Arrays decode to lists, maps to dicts, allowed tags to ``CBORTag``. Raises
    :class:`LimitExceededError` when ``data`` is longer than ``max_size``
    bytes, nests deeper than ``max_depth`` or holds more than ``max_items``
    items, and :class:`MalformedError` for anything else the module docstring
    lists (and for invalid UTF-8). Never raises a cbor2 error.
    """
    if type(data) is not bytes:
        data = bytes(data)
    check(data, max_size=max_size, max_depth=max_depth, max_items=max_items, tags=tags)
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many types; none may leak
        raise MalformedError(f"invalid CBOR: {exc}") from None
