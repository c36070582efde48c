"""Frames on the serial line: COBS(payload ‖ CRC-16) followed by one 0x00.

Theory of operation. COBS (Cheshire and Baker, 1999) rewrites a byte string so
that it contains no 0x00, at a cost of at most one byte in 254; 0x00 can then
delimit frames. A receiver that joins the line mid-frame, or loses bytes, throws
away at most the frame in progress and is resynchronised by the next delimiter.
The CRC-16 is CRC-16/IBM-3740 (often called CRC-16/CCITT-FALSE): polynomial
0x1021, initial value 0xFFFF, no reflection, no final XOR, check value 0x29B1
for the ASCII bytes ``123456789``. It is appended most significant byte first
and covers the CBOR payload only. The non-zero initial value makes leading
zero bytes count, which an all-zero initial value (XMODEM) would not.

``max_frame`` bounds the COBS-encoded frame, delimiter excluded: the bytes a
receiver must buffer. A payload of at most :func:`max_payload` bytes always fits.
"""

from __future__ import annotations

import binascii

from ._errors import FrameError

__all__ = [
    "CRC_CHECK",
    "DEFAULT_MAX_FRAME",
    "FrameSplitter",
    "cobs_decode",
    "cobs_encode",
    "crc16",
    "frame_payload",
    "max_payload",
    "unframe",
]

DEFAULT_MAX_FRAME = 256
CRC_CHECK = 0x29B1  # crc16(b"123456789")
_MIN_BODY = 3  # one payload byte and the two CRC bytes


def crc16(data: bytes | bytearray | memoryview, crc: int = 0xFFFF) -> int:
    """CRC-16/IBM-3740 of ``data`` (``crc`` continues an earlier computation)."""
    # binascii.crc_hqx is exactly this CRC (poly 0x1021, MSB first) given init 0xFFFF.
    return binascii.crc_hqx(data, crc)


def max_payload(max_frame: int) -> int:
    """The largest payload whose frame fits in ``max_frame`` bytes whatever its content."""
    return max_frame - 2 - -(-max_frame // 254)


def cobs_encode(data: bytes | bytearray) -> bytes:
    """COBS-encode ``data`` (no delimiter added). A final run of exactly 254
    non-zero bytes is not followed by a 0x01 code, as in the original paper."""
    out = bytearray()
    parts = bytes(data).split(b"\x00")
    last = len(parts) - 1
    for i, part in enumerate(parts):
        n = len(part)
        pos = 0
        while n - pos >= 254:
            out.append(0xFF)
            out += part[pos : pos + 254]
            pos += 254
        if i != last or pos == 0 or pos != n:
            out.append(n - pos + 1)
            out += part[pos:]
    return bytes(out)


def cobs_decode(data: bytes | bytearray) -> bytes:
    """Decode one COBS block sequence (no delimiter); raises FrameError("cobs")."""
    if 0 in data:
        raise FrameError("cobs", "0x00 inside a COBS frame")
    out = bytearray()
    i = 0
    n = len(data)
    while i < n:
        code = data[i]
        end = i + code
        if end > n:
            raise FrameError("cobs", f"COBS block of {code - 1} bytes runs past the frame end")
        out += data[i + 1 : end]
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def frame_payload(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The wire bytes for ``payload``: COBS(payload ‖ CRC-16) ‖ 0x00.

    Raises FrameError("long") when the encoded frame exceeds ``max_frame``.
    """
    crc = crc16(payload)
    encoded = cobs_encode(payload + bytes((crc >> 8, crc & 0xFF)))
    if len(encoded) > max_frame:
        raise FrameError("long", f"frame of {len(encoded)} bytes exceeds max_frame {max_frame}")
    return encoded + b"\x00"


def unframe(frame: bytes | bytearray, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The payload of one frame given without its delimiter; checks length, COBS and CRC.

    Raises FrameError with ``reason`` "long", "cobs", "short" or "crc".
    """
    if len(frame) > max_frame:
        raise FrameError("long", f"frame of {len(frame)} bytes exceeds max_frame {max_frame}")
    body = cobs_decode(frame)
    if len(body) < _MIN_BODY:
        raise FrameError("short", f"frame body of {len(body)} bytes is shorter than 3")
    payload = body[:-2]
    expected = crc16(payload)
    got = (body[-2] << 8) | body[-1]
    if got != expected:
        raise FrameError("crc", f"CRC-16 mismatch: frame has {got:#06x}, payload {expected:#06x}")
    return payload


class FrameSplitter:
    """Cuts a byte stream into frames at each 0x00, with a bounded buffer.

    A run of more than ``max_frame`` bytes without a delimiter is discarded up
    to the next delimiter and reported once as an overlong frame. The buffer
    holds at most ``max_frame`` bytes plus the chunk last fed.
    """

    __slots__ = ("_buf", "_discarding", "_pos", "max_frame")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos >= len(self._buf) // 2:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_frame(self) -> bytes | FrameError | None:
        """The next frame (without delimiter), a FrameError("long"), or None for "need data"."""
        buf = self._buf
        while True:
            pos = self._pos
            idx = buf.find(0, pos)
            if self._discarding:
                if idx < 0:
                    buf.clear()
                    self._pos = 0
                    return None
                self._pos = idx + 1
                self._discarding = False
                continue
            if idx < 0:
                if len(buf) - pos > self.max_frame:
                    buf.clear()
                    self._pos = 0
                    self._discarding = True
                    return FrameError("long", f"no delimiter within {self.max_frame} bytes")
                return None
            self._pos = idx + 1
            if idx - pos > self.max_frame:
                return FrameError("long", f"frame of {idx - pos} bytes exceeds {self.max_frame}")
            if idx > pos:
                return bytes(buf[pos:idx])
            # Empty frames (two delimiters in a row) are idle fill, not errors.

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf) - self._pos
