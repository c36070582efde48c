"""The protocol messages: frozen values, and their CBOR payloads.

A payload is one CBOR map with small unsigned integer keys (one byte each on
the wire). Key 0 is the message type, key 1 the sender's sequence number; the
other keys depend on the type (PROTOCOL.md §4 has the table). Decoding is
strict: unknown types, unknown or missing keys, wrong types and out-of-range
values raise :class:`MessageError`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeAlias

from . import _cbor
from ._errors import FrameError, MessageError
from ._framing import DEFAULT_MAX_FRAME, frame_payload, unframe

__all__ = [
    "PROTOCOL_VERSION",
    "Ack",
    "Channel",
    "Command",
    "Error",
    "Heartbeat",
    "Hello",
    "HelloAck",
    "Key",
    "Message",
    "MessageType",
    "Nack",
    "NackReason",
    "Reading",
    "Value",
    "decode_frame",
    "decode_payload",
    "encode_frame",
    "encode_payload",
]

PROTOCOL_VERSION = 1

Value: TypeAlias = int | float

# Limits, shared with the C reference (vsm_bridge.h).
MAX_CHANNELS = 16  # per list (sensors, actuators)
MAX_VERSIONS = 8
MAX_NAME = 32  # device_id, channel names, firmware (UTF-8 bytes)
MAX_UNIT = 16
MAX_DETAIL = 64
MIN_MAX_FRAME = 32
MAX_MAX_FRAME = 4096
MIN_HEARTBEAT_MS = 100
MAX_HEARTBEAT_MS = 60_000
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT16_MAX = 0xFFFF
_UINT32_MAX = 0xFFFF_FFFF
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+\Z")


class MessageType(IntEnum):
    HELLO = 0
    HELLO_ACK = 1
    READING = 2
    COMMAND = 3
    ACK = 4
    NACK = 5
    HEARTBEAT = 6
    ERROR = 7


class Key(IntEnum):
    """Map keys of a message payload."""

    TYPE = 0
    SEQ = 1
    VERSION = 2  # hello: array of versions offered; hello-ack: the version chosen
    DEVICE_ID = 3
    FIRMWARE = 4
    MAX_FRAME = 5
    SENSORS = 6
    ACTUATORS = 7
    HEARTBEAT_MS = 8
    CHANNEL = 9
    VALUE = 10
    TIME_MS = 11
    REF = 12
    REASON = 13
    DETAIL = 14
    CODE = 15


class ChannelKey(IntEnum):
    """Map keys of a channel description inside a hello."""

    ID = 0
    NAME = 1
    UNIT = 2
    MIN = 3
    MAX = 4


class NackReason(IntEnum):
    CRC = 0  # the frame failed its COBS or CRC-16 check; REF absent
    MALFORMED = 1  # intact frame, invalid message
    UNSUPPORTED_VERSION = 2
    NO_SESSION = 3  # a message other than hello before the handshake
    UNKNOWN_CHANNEL = 4
    OUT_OF_RANGE = 5
    BUSY = 6
    FAILED = 7  # the actuator could not carry the command out
    TOO_LARGE = 8  # the frame exceeded the receiver's max_frame


@dataclass(frozen=True, slots=True)
class Channel:
    """One sensor or actuator a device declares: id, name, unit and optional range."""

    id: int
    name: str
    unit: str = ""
    minimum: Value | None = None
    maximum: Value | None = None

    def accepts(self, value: Value) -> bool:
        """Whether ``value`` lies inside the declared range."""
        return (self.minimum is None or value >= self.minimum) and (
            self.maximum is None or value <= self.maximum
        )


@dataclass(frozen=True, slots=True)
class Hello:
    """Device → host, first message: who the device is and what it can do."""

    seq: int
    versions: tuple[int, ...]
    device_id: str
    firmware: str
    max_frame: int
    sensors: tuple[Channel, ...] = ()
    actuators: tuple[Channel, ...] = ()


@dataclass(frozen=True, slots=True)
class HelloAck:
    """Host → device: the version chosen, the negotiated max_frame, the heartbeat period."""

    seq: int
    version: int
    max_frame: int
    heartbeat_ms: int


@dataclass(frozen=True, slots=True)
class Reading:
    """Device → host: one sensor value (``time_ms``: device uptime, optional)."""

    seq: int
    channel: int
    value: Value
    time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """Host → device: set an actuator; answered by Ack or Nack with ``ref`` = ``seq``."""

    seq: int
    channel: int
    value: Value


@dataclass(frozen=True, slots=True)
class Ack:
    """Device → host: the command with sequence number ``ref`` was carried out."""

    seq: int
    ref: int


@dataclass(frozen=True, slots=True)
class Nack:
    """Either way: a message was refused (``ref`` its seq) or a frame was damaged (no ref)."""

    seq: int
    reason: NackReason
    ref: int | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Either way: the sender is alive (sent when idle for one heartbeat period)."""

    seq: int
    time_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Error:
    """Device → host: a fault on the device (``code`` device-defined, see PROTOCOL.md)."""

    seq: int
    code: int
    channel: int | None = None
    detail: str | None = None


Message: TypeAlias = Hello | HelloAck | Reading | Command | Ack | Nack | Heartbeat | Error

_TYPE_OF: dict[type[Any], MessageType] = {
    Hello: MessageType.HELLO,
    HelloAck: MessageType.HELLO_ACK,
    Reading: MessageType.READING,
    Command: MessageType.COMMAND,
    Ack: MessageType.ACK,
    Nack: MessageType.NACK,
    Heartbeat: MessageType.HEARTBEAT,
    Error: MessageType.ERROR,
}


# -- validation (shared by encode and decode) ---------------------------------


def _uint(value: Any, what: str, maximum: int, minimum: int = 0) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise MessageError(f"{what} must be an integer in [{minimum}, {maximum}], not {value!r}")
    return value


def _value(value: Any, what: str) -> Value:
    if type(value) is int:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise MessageError(f"{what} {value} does not fit in 64 signed bits")
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise MessageError(f"{what} must be finite, not {value!r}")
        return value
    raise MessageError(f"{what} must be an integer or a float, not {type(value).__name__}")


def _text(value: Any, what: str, max_bytes: int, *, name: bool = False, empty: bool = False) -> str:
    if type(value) is not str:
        raise MessageError(f"{what} must be a text string")
    size = len(value.encode("utf-8"))
    if size > max_bytes or (size == 0 and not empty):
        raise MessageError(f"{what} must be 1 to {max_bytes} UTF-8 bytes, not {size}")
    if name and not _NAME_RE.match(value):
        raise MessageError(f"{what} {value!r} may only use A-Z a-z 0-9 . _ -")
    if not name and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise MessageError(f"{what} contains control characters")
    return value


def _check_channels(channels: Any, what: str, seen: set[int]) -> None:
    if type(channels) is not tuple or len(channels) > MAX_CHANNELS:
        raise MessageError(f"{what} must be a list of at most {MAX_CHANNELS} channels")
    names: set[str] = set()
    for ch in channels:
        if type(ch) is not Channel:
            raise MessageError(f"{what} entries must be channels")
        _uint(ch.id, "channel id", 255)
        _text(ch.name, "channel name", MAX_NAME, name=True)
        _text(ch.unit, "channel unit", MAX_UNIT, empty=True)
        if ch.minimum is not None:
            _value(ch.minimum, "channel minimum")
        if ch.maximum is not None:
            _value(ch.maximum, "channel maximum")
        if ch.minimum is not None and ch.maximum is not None and ch.minimum > ch.maximum:
            raise MessageError(f"channel {ch.name}: minimum above maximum")
        if ch.id in seen:
            raise MessageError(f"channel id {ch.id} declared twice")
        if ch.name in names:
            raise MessageError(f"channel name {ch.name!r} declared twice in {what}")
        seen.add(ch.id)
        names.add(ch.name)


def validate(msg: Message) -> Message:
    """Check every field of ``msg`` against the protocol's types and limits."""
    _uint(msg.seq, "seq", _UINT16_MAX)
    if type(msg) is Reading:
        _uint(msg.channel, "channel", 255)
        _value(msg.value, "value")
        if msg.time_ms is not None:
            _uint(msg.time_ms, "time_ms", _UINT32_MAX)
    elif type(msg) is Command:
        _uint(msg.channel, "channel", 255)
        _value(msg.value, "value")
    elif type(msg) is Ack:
        _uint(msg.ref, "ref", _UINT16_MAX)
    elif type(msg) is Heartbeat:
        if msg.time_ms is not None:
            _uint(msg.time_ms, "time_ms", _UINT32_MAX)
    elif type(msg) is Nack:
        if type(msg.reason) is not NackReason:
            raise MessageError(f"unknown NACK reason {msg.reason!r}")
        if msg.ref is not None:
            _uint(msg.ref, "ref", _UINT16_MAX)
        if msg.detail is not None:
            _text(msg.detail, "detail", MAX_DETAIL, empty=True)
    elif type(msg) is Error:
        _uint(msg.code, "error code", _UINT16_MAX)
        if msg.channel is not None:
            _uint(msg.channel, "channel", 255)
        if msg.detail is not None:
            _text(msg.detail, "detail", MAX_DETAIL, empty=True)
    elif type(msg) is HelloAck:
        _uint(msg.version, "version", _UINT16_MAX, 1)
        _uint(msg.max_frame, "max_frame", MAX_MAX_FRAME, MIN_MAX_FRAME)
        _uint(msg.heartbeat_ms, "heartbeat_ms", MAX_HEARTBEAT_MS, MIN_HEARTBEAT_MS)
    elif type(msg) is Hello:
        if type(msg.versions) is not tuple or not 1 <= len(msg.versions) <= MAX_VERSIONS:
            raise MessageError(f"versions must list 1 to {MAX_VERSIONS} protocol versions")
        for v in msg.versions:
            _uint(v, "version", _UINT16_MAX, 1)
        _text(msg.device_id, "device_id", MAX_NAME, name=True)
        _text(msg.firmware, "firmware", MAX_NAME)
        _uint(msg.max_frame, "max_frame", MAX_MAX_FRAME, MIN_MAX_FRAME)
        seen: set[int] = set()
        _check_channels(msg.sensors, "sensors", seen)
        _check_channels(msg.actuators, "actuators", seen)
    else:
        raise MessageError(f"not a protocol message: {type(msg).__name__}")
    return msg


# -- encoding -------------------------------------------------------------------


def _channel_map(ch: Channel) -> dict[int, Any]:
    out: dict[int, Any] = {ChannelKey.ID: ch.id, ChannelKey.NAME: ch.name, ChannelKey.UNIT: ch.unit}
    if ch.minimum is not None:
        out[ChannelKey.MIN] = ch.minimum
    if ch.maximum is not None:
        out[ChannelKey.MAX] = ch.maximum
    return out


def to_map(msg: Message) -> dict[int, Any]:
    """The CBOR map of ``msg`` (integer keys), after validation."""
    validate(msg)
    out: dict[int, Any] = {Key.TYPE: int(_TYPE_OF[type(msg)]), Key.SEQ: msg.seq}
    if type(msg) is Reading:
        out[Key.CHANNEL] = msg.channel
        out[Key.VALUE] = msg.value
        if msg.time_ms is not None:
            out[Key.TIME_MS] = msg.time_ms
    elif type(msg) is Command:
        out[Key.CHANNEL] = msg.channel
        out[Key.VALUE] = msg.value
    elif type(msg) is Ack:
        out[Key.REF] = msg.ref
    elif type(msg) is Heartbeat:
        if msg.time_ms is not None:
            out[Key.TIME_MS] = msg.time_ms
    elif type(msg) is Nack:
        out[Key.REASON] = int(msg.reason)
        if msg.ref is not None:
            out[Key.REF] = msg.ref
        if msg.detail is not None:
            out[Key.DETAIL] = msg.detail
    elif type(msg) is Error:
        out[Key.CODE] = msg.code
        if msg.channel is not None:
            out[Key.CHANNEL] = msg.channel
        if msg.detail is not None:
            out[Key.DETAIL] = msg.detail
    elif type(msg) is HelloAck:
        out[Key.VERSION] = msg.version
        out[Key.MAX_FRAME] = msg.max_frame
        out[Key.HEARTBEAT_MS] = msg.heartbeat_ms
    elif type(msg) is Hello:
        out[Key.VERSION] = list(msg.versions)
        out[Key.DEVICE_ID] = msg.device_id
        out[Key.FIRMWARE] = msg.firmware
        out[Key.MAX_FRAME] = msg.max_frame
        out[Key.SENSORS] = [_channel_map(c) for c in msg.sensors]
        out[Key.ACTUATORS] = [_channel_map(c) for c in msg.actuators]
    return {int(k): v for k, v in out.items()}


def encode_payload(msg: Message) -> bytes:
    """The deterministic CBOR payload of ``msg``; raises MessageError if invalid."""
    return _cbor.dumps(to_map(msg))


def encode_frame(msg: Message, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The wire bytes of ``msg``, delimiter included; raises MessageError if invalid
    or larger than ``max_frame``."""
    try:
        return frame_payload(encode_payload(msg), max_frame)
    except FrameError as exc:
        raise MessageError(str(exc)) from None


# -- decoding -------------------------------------------------------------------

# Allowed keys per type: (required, optional).
_SCHEMA: dict[int, tuple[frozenset[int], frozenset[int]]] = {
    MessageType.HELLO: (
        frozenset(
            {
                Key.TYPE,
                Key.SEQ,
                Key.VERSION,
                Key.DEVICE_ID,
                Key.FIRMWARE,
                Key.MAX_FRAME,
                Key.SENSORS,
                Key.ACTUATORS,
            }
        ),
        frozenset(),
    ),
    MessageType.HELLO_ACK: (
        frozenset({Key.TYPE, Key.SEQ, Key.VERSION, Key.MAX_FRAME, Key.HEARTBEAT_MS}),
        frozenset(),
    ),
    MessageType.READING: (
        frozenset({Key.TYPE, Key.SEQ, Key.CHANNEL, Key.VALUE}),
        frozenset({Key.TIME_MS}),
    ),
    MessageType.COMMAND: (frozenset({Key.TYPE, Key.SEQ, Key.CHANNEL, Key.VALUE}), frozenset()),
    MessageType.ACK: (frozenset({Key.TYPE, Key.SEQ, Key.REF}), frozenset()),
    MessageType.NACK: (
        frozenset({Key.TYPE, Key.SEQ, Key.REASON}),
        frozenset({Key.REF, Key.DETAIL}),
    ),
    MessageType.HEARTBEAT: (frozenset({Key.TYPE, Key.SEQ}), frozenset({Key.TIME_MS})),
    MessageType.ERROR: (
        frozenset({Key.TYPE, Key.SEQ, Key.CODE}),
        frozenset({Key.CHANNEL, Key.DETAIL}),
    ),
}
_CHANNEL_REQUIRED = frozenset({ChannelKey.ID, ChannelKey.NAME, ChannelKey.UNIT})
_CHANNEL_ALLOWED = _CHANNEL_REQUIRED | {ChannelKey.MIN, ChannelKey.MAX}


def _check_key_order(obj: dict[Any, Any]) -> None:
    # Deterministic encoding puts integer keys in ascending order; requiring it
    # lets a microcontroller decode in one pass (and rejects duplicates for free).
    prev = -1
    for key in obj:
        if type(key) is not int or key <= prev:
            raise MessageError("map keys must be unsigned integers in ascending order")
        prev = key


def _channels(raw: Any, what: str) -> tuple[Channel, ...]:
    if type(raw) is not list:
        raise MessageError(f"{what} must be an array")
    out = []
    for entry in raw:
        if type(entry) is not dict:
            raise MessageError(f"{what} entries must be maps")
        _check_key_order(entry)
        keys = entry.keys()
        if not keys >= _CHANNEL_REQUIRED or not keys <= _CHANNEL_ALLOWED:
            raise MessageError(f"{what} entry has keys {sorted(keys, key=str)}")
        out.append(
            Channel(
                entry[ChannelKey.ID],
                entry[ChannelKey.NAME],
                entry[ChannelKey.UNIT],
                entry.get(ChannelKey.MIN),
                entry.get(ChannelKey.MAX),
            )
        )
    return tuple(out)


def from_map(obj: Any) -> Message:
    """The message a decoded CBOR map describes; raises MessageError."""
    if type(obj) is not dict:
        raise MessageError("a message is a CBOR map")
    _check_key_order(obj)
    kind = obj.get(Key.TYPE)
    if type(kind) is not int or kind not in _SCHEMA:
        raise MessageError(f"unknown message type {kind!r}")
    required, optional = _SCHEMA[kind]
    keys = obj.keys()
    if not required <= keys:
        raise MessageError(f"message type {kind} lacks keys {sorted(required - keys)}")
    if not keys <= required | optional:
        raise MessageError(
            f"message type {kind} has unknown keys {sorted(keys - required - optional, key=str)}"
        )
    seq = obj[Key.SEQ]
    msg: Message
    if kind == MessageType.READING:
        msg = Reading(seq, obj[Key.CHANNEL], obj[Key.VALUE], obj.get(Key.TIME_MS))
    elif kind == MessageType.COMMAND:
        msg = Command(seq, obj[Key.CHANNEL], obj[Key.VALUE])
    elif kind == MessageType.ACK:
        msg = Ack(seq, obj[Key.REF])
    elif kind == MessageType.HEARTBEAT:
        msg = Heartbeat(seq, obj.get(Key.TIME_MS))
    elif kind == MessageType.NACK:
        reason = obj[Key.REASON]
        if type(reason) is not int or reason not in NackReason._value2member_map_:
            raise MessageError(f"unknown NACK reason {reason!r}")
        msg = Nack(seq, NackReason(reason), obj.get(Key.REF), obj.get(Key.DETAIL))
    elif kind == MessageType.ERROR:
        msg = Error(seq, obj[Key.CODE], obj.get(Key.CHANNEL), obj.get(Key.DETAIL))
    elif kind == MessageType.HELLO_ACK:
        msg = HelloAck(seq, obj[Key.VERSION], obj[Key.MAX_FRAME], obj[Key.HEARTBEAT_MS])
    else:
        versions = obj[Key.VERSION]
        if type(versions) is not list:
            raise MessageError("hello versions must be an array")
        msg = Hello(
            seq,
            tuple(versions),
            obj[Key.DEVICE_ID],
            obj[Key.FIRMWARE],
            obj[Key.MAX_FRAME],
            _channels(obj[Key.SENSORS], "sensors"),
            _channels(obj[Key.ACTUATORS], "actuators"),
        )
    return validate(msg)


def decode_payload(payload: bytes) -> Message:
    """Decode one CBOR payload into a message; raises MessageError."""
    return from_map(_cbor.loads(payload))


def decode_frame(frame: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> Message:
    """Decode one frame (without its 0x00 delimiter); raises FrameError or MessageError."""
    return decode_payload(unframe(frame, max_frame))
