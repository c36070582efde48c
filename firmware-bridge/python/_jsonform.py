"""The JSON form of messages, as used by ``vectors.json`` and the C test tool.

Field names follow the dataclasses; ``type`` is the lower-case message type,
a NACK ``reason`` is its lower-case name, and optional fields are left out
when absent. JSON keeps ints and floats apart (``21`` vs ``21.0``), as CBOR does.
"""

from __future__ import annotations

from typing import Any

from ._errors import MessageError
from ._messages import (
    Ack,
    Channel,
    Command,
    Error,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    Nack,
    NackReason,
    Reading,
    validate,
)

__all__ = ["message_from_json", "message_to_json"]

_NAMES: dict[type[Any], str] = {
    Hello: "hello",
    HelloAck: "hello_ack",
    Reading: "reading",
    Command: "command",
    Ack: "ack",
    Nack: "nack",
    Heartbeat: "heartbeat",
    Error: "error",
}
_TYPES = {name: cls for cls, name in _NAMES.items()}


def _channel_to_json(ch: Channel) -> dict[str, Any]:
    out: dict[str, Any] = {"id": ch.id, "name": ch.name, "unit": ch.unit}
    if ch.minimum is not None:
        out["min"] = ch.minimum
    if ch.maximum is not None:
        out["max"] = ch.maximum
    return out


def message_to_json(msg: Message) -> dict[str, Any]:
    """The JSON object (a dict) for ``msg``."""
    out: dict[str, Any] = {"type": _NAMES[type(msg)], "seq": msg.seq}
    if isinstance(msg, Hello):
        out["versions"] = list(msg.versions)
        out["device_id"] = msg.device_id
        out["firmware"] = msg.firmware
        out["max_frame"] = msg.max_frame
        out["sensors"] = [_channel_to_json(c) for c in msg.sensors]
        out["actuators"] = [_channel_to_json(c) for c in msg.actuators]
        return out
    if isinstance(msg, Nack):
        out["reason"] = msg.reason.name.lower()
    for name in ("version", "max_frame", "heartbeat_ms", "channel", "value", "code", "ref"):
        if hasattr(msg, name) and getattr(msg, name) is not None:
            out[name] = getattr(msg, name)
    for name in ("time_ms", "detail"):
        if getattr(msg, name, None) is not None:
            out[name] = getattr(msg, name)
    return out


def _channel_from_json(obj: Any) -> Channel:
    return Channel(obj["id"], obj["name"], obj["unit"], obj.get("min"), obj.get("max"))


def message_from_json(obj: dict[str, Any]) -> Message:
    """The message for a JSON object; raises MessageError."""
    try:
        cls = _TYPES[obj["type"]]
        fields = {k: v for k, v in obj.items() if k != "type"}
        if cls is Hello:
            fields["versions"] = tuple(fields["versions"])
            fields["sensors"] = tuple(_channel_from_json(c) for c in fields["sensors"])
            fields["actuators"] = tuple(_channel_from_json(c) for c in fields["actuators"])
        if cls is Nack:
            fields["reason"] = NackReason[fields["reason"].upper()]
        msg: Message = cls(**fields)
    except (KeyError, TypeError, AttributeError) as exc:
        raise MessageError(f"not a message in JSON form: {exc}") from None
    return validate(msg)
