"""CBOR for the bridge: deterministic encoding, strict bounded decoding of a subset.

Encoding goes through cbor2 (``canonical=True``: shortest integers, lengths and
floats, sorted map keys; RFC 8949 §4.2.1 for the keys the protocol uses).

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

import cbor2

from ._errors import MessageError

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "dumps", "loads"]

MAX_DEPTH = 4
MAX_ITEMS = 512

_HALF = struct.Struct(">e")
_SINGLE = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` deterministically."""
    try:
        return cbor2.dumps(obj, canonical=True)
    except Exception as exc:  # cbor2 raises several types; none may leak
        raise MessageError(f"cannot encode as CBOR: {exc}") from None


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
            if type(key) is not int and type(key) is not str:
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
