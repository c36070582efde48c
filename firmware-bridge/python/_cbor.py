"""CBOR for the bridge: deterministic encoding, strict bounded decoding of a subset.

Encoding is our own, deterministic per RFC 8949 §4.2.1: integers and lengths in
their shortest form; floats in the shortest of half, single and double that
holds the value exactly; map keys sorted by the bytewise order of their
encodings. It is not cbor2's ``canonical=True``: cbor2 5.9's C encoder writes
every half in [32768, 65504] (exponent 15, 2,048 values with the signs) as a
float32, so the C reference codec, which is right, re-encoded such a value in
two bytes where Python had written five (caught by the differential test;
the value 60000.0 is now a shared vector).

Decoding is our own, because the bridge accepts only the subset a
microcontroller produces and the C reference decodes, and must bound its work:
unsigned and negative integers, byte and text strings (UTF-8 checked), arrays,
maps with integer or text keys (no duplicates), false, true, null and half,
single and double floats. Rejected: tags (cbor2 would build arbitrary objects,
shared references and cycles from them), indefinite lengths, undefined, other
simple values, reserved encodings, trailing bytes, nesting deeper than
``max_depth`` and more than ``max_items`` data items. Every failure raises
:class:`MessageError`.
"""

from __future__ import annotations

import struct
from typing import Any

from ._errors import MessageError

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "dumps", "encode_float", "loads"]

MAX_DEPTH = 4
MAX_ITEMS = 512

_HALF = struct.Struct(">e")
_SINGLE = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_UINT64_LIMIT = 1 << 64


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` deterministically (RFC 8949 §4.2.1); raises MessageError for
    a value outside the data model (``None``, ``bool``, ``int`` in
    ``-2**64 .. 2**64-1``, ``float``, ``str``, ``bytes``, lists and tuples, dicts
    with ``int`` or ``str`` keys) or nested deeper than 16."""
    out = bytearray()
    _encode(obj, out, 16)
    return bytes(out)


def _head(major: int, arg: int, out: bytearray) -> None:
    if arg < 24:
        out.append(major << 5 | arg)
    elif arg < 0x100:
        out += bytes((major << 5 | 24, arg))
    elif arg < 0x10000:
        out.append(major << 5 | 25)
        out += arg.to_bytes(2, "big")
    elif arg < 0x100000000:
        out.append(major << 5 | 26)
        out += arg.to_bytes(4, "big")
    else:
        out.append(major << 5 | 27)
        out += arg.to_bytes(8, "big")


def encode_float(value: float) -> bytes:
    """The shortest of half, single and double that holds ``value`` exactly
    (NaN as ``f97e00``, the infinities as halves)."""
    if value != value:
        return b"\xf9\x7e\x00"
    for head, fmt in ((0xF9, _HALF), (0xFA, _SINGLE)):
        try:
            packed = fmt.pack(value)  # rounds to nearest; raises past the format's range
        except OverflowError:
            continue
        if fmt.unpack(packed)[0] == value:  # -0.0 keeps its sign bit through pack
            return bytes((head,)) + packed
    return b"\xfb" + _DOUBLE.pack(value)


def _encode(obj: Any, out: bytearray, depth: int) -> None:
    kind = type(obj)
    if kind is not int and kind is not bool and isinstance(obj, int):  # IntEnum keys
        obj, kind = int(obj), int
    if kind is int:
        if 0 <= obj < _UINT64_LIMIT:
            _head(0, obj, out)
        elif -_UINT64_LIMIT <= obj < 0:
            _head(1, -1 - obj, out)
        else:
            raise MessageError(f"integer {obj} does not fit in 64 bits")
    elif kind is float:
        out += encode_float(obj)
    elif kind is str:
        raw = _utf8(obj)
        _head(3, len(raw), out)
        out += raw
    elif kind is bytes:
        _head(2, len(obj), out)
        out += obj
    elif obj is None:
        out.append(0xF6)
    elif kind is bool:
        out.append(0xF5 if obj else 0xF4)
    elif depth <= 0:
        raise MessageError("value nested too deeply to encode")
    elif kind is list or kind is tuple:
        _head(4, len(obj), out)
        for item in obj:
            _encode(item, out, depth - 1)
    elif kind is dict:
        if all(type(key) is int and 0 <= key < _UINT64_LIMIT for key in obj):
            # Non-negative integers: numeric order is the order of their encodings
            # (every message map; a longer head starts with a larger byte).
            _head(5, len(obj), out)
            for key in sorted(obj):
                _head(0, key, out)
                _encode(obj[key], out, depth - 1)
            return
        pairs = []
        for key, value in obj.items():
            if not isinstance(key, int | str) or type(key) is bool:
                raise MessageError(f"map key {key!r} is not an integer or a text string")
            encoded = bytearray()
            _encode(key, encoded, 0)
            pairs.append((bytes(encoded), value))
        pairs.sort(key=lambda pair: pair[0])  # bytewise order of the encoded keys
        _head(5, len(pairs), out)
        for key_bytes, value in pairs:
            out += key_bytes
            _encode(value, out, depth - 1)
    else:
        raise MessageError(f"cannot encode {kind.__name__} as CBOR")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8", "strict")
    except UnicodeEncodeError:  # lone surrogates
        raise MessageError("text is not encodable as UTF-8") from None


def loads(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Any:
    """Decode exactly one CBOR item from ``data``; raises MessageError."""
    dec = _Decoder(data, max_items)
    value = dec.item(max_depth)
    if dec.pos != len(data):
        raise MessageError(f"{len(data) - dec.pos} trailing bytes after the CBOR item")
    return value


class _Decoder:
    __slots__ = ("data", "items", "pos")

    def __init__(self, data: bytes, max_items: int) -> None:
        self.data = data
        self.pos = 0
        self.items = max_items

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise MessageError("CBOR item truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def item(self, depth: int) -> Any:
        self.items -= 1
        if self.items < 0:
            raise MessageError("too many CBOR data items")
        data = self.data
        if self.pos >= len(data):
            raise MessageError("CBOR item truncated")
        ib = data[self.pos]
        self.pos += 1
        major = ib >> 5
        ai = ib & 0x1F
        if major == 7:
            return self._simple(ai)
        if ai < 24:
            arg = ai
        elif ai == 24:
            arg = self._take(1)[0]
        elif ai == 25:
            arg = int.from_bytes(self._take(2), "big")
        elif ai == 26:
            arg = int.from_bytes(self._take(4), "big")
        elif ai == 27:
            arg = int.from_bytes(self._take(8), "big")
        elif ai == 31:
            raise MessageError("indefinite-length CBOR items are not accepted")
        else:
            raise MessageError(f"reserved CBOR additional information {ai}")
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self._take(arg)
        if major == 3:
            raw = self._take(arg)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError:
                raise MessageError("CBOR text string is not valid UTF-8") from None
        if major == 6:
            raise MessageError("CBOR tags are not accepted")
        if depth <= 0:
            raise MessageError("CBOR nesting too deep")
        remaining = len(data) - self.pos
        if major == 4:
            if arg > remaining:  # every item takes at least one byte
                raise MessageError("CBOR array longer than its input")
            return [self.item(depth - 1) for _ in range(arg)]
        # major == 5
        if 2 * arg > remaining:
            raise MessageError("CBOR map longer than its input")
        out: dict[Any, Any] = {}
        for _ in range(arg):
            key = self.item(depth - 1)
            if not isinstance(key, int | str) or type(key) is bool:
                raise MessageError("CBOR map key is not an integer or a text string")
            if key in out:
                raise MessageError(f"duplicate CBOR map key {key!r}")
            out[key] = self.item(depth - 1)
        return out

    def _simple(self, ai: int) -> Any:
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            return float(_HALF.unpack(self._take(2))[0])
        if ai == 26:
            return float(_SINGLE.unpack(self._take(4))[0])
        if ai == 27:
            return float(_DOUBLE.unpack(self._take(8))[0])
        raise MessageError(f"CBOR simple value or break (additional information {ai})")
