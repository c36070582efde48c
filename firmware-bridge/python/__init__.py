"""vsm_edge.bridge: the serial link to microcontroller firmware.

Layers, from the wire up (the protocol is specified in firmware-bridge/PROTOCOL.md):

- framing and messages: :func:`encode_frame`, :func:`decode_frame`, the frozen
  message values (:class:`Hello`, :class:`Reading`, :class:`Command`, ...);
- :class:`Connection`: an h11-style sans-I/O connection (``receive_data``,
  ``next_event``, ``send``);
- :class:`HostSession` / :class:`DeviceSession`: the session state machines
  (handshake, retransmission, heartbeats), time passed in;
- :class:`SerialBridge`: the Trio service over a real serial device, which
  reopens the port after an unplug, delivers :class:`SensorReading` values and
  carries out :meth:`SerialBridge.command`;
- :func:`describe_units`: the device's channels as S1 unit descriptions.

Imports nothing else of vsm_edge. Every error raised on purpose is a
:class:`BridgeError`.
"""

from ._bridge import BridgeStatistics, SerialBridge
from ._connection import NEED_DATA, Connection, FrameRejected, NeedData, Role
from ._errors import (
    BridgeError,
    CommandError,
    CommandRejected,
    CommandTimeout,
    FrameError,
    MessageError,
    NotConnectedError,
    ProtocolError,
    QueueFullError,
    TransportError,
)
from ._framing import CRC_CHECK, DEFAULT_MAX_FRAME, cobs_decode, cobs_encode, crc16, max_payload
from ._jsonform import message_from_json, message_to_json
from ._messages import (
    PROTOCOL_VERSION,
    Ack,
    Channel,
    Command,
    Error,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    MessageType,
    Nack,
    NackReason,
    Reading,
    Value,
    decode_frame,
    decode_payload,
    encode_frame,
    encode_payload,
)
from ._session import (
    CommandCompleted,
    CommandFailed,
    CommandReceived,
    DeviceConfig,
    DeviceConnected,
    DeviceErrorReported,
    DeviceInfo,
    DeviceLost,
    DeviceSession,
    HandshakeFailed,
    HostConfig,
    HostSession,
    ReadingReceived,
    SessionEstablished,
    SessionLost,
    SessionState,
    SessionStatistics,
)
from ._transport import Opener, SerialStream, configure_raw, open_serial
from ._units import SensorReading, UnitDescription, UnitKind, describe_units

__all__ = [
    "CRC_CHECK",
    "DEFAULT_MAX_FRAME",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Ack",
    "BridgeError",
    "BridgeStatistics",
    "Channel",
    "Command",
    "CommandCompleted",
    "CommandError",
    "CommandFailed",
    "CommandReceived",
    "CommandRejected",
    "CommandTimeout",
    "Connection",
    "DeviceConfig",
    "DeviceConnected",
    "DeviceErrorReported",
    "DeviceInfo",
    "DeviceLost",
    "DeviceSession",
    "Error",
    "FrameError",
    "FrameRejected",
    "HandshakeFailed",
    "Heartbeat",
    "Hello",
    "HelloAck",
    "HostConfig",
    "HostSession",
    "Message",
    "MessageError",
    "MessageType",
    "Nack",
    "NackReason",
    "NeedData",
    "NotConnectedError",
    "Opener",
    "ProtocolError",
    "QueueFullError",
    "Reading",
    "ReadingReceived",
    "Role",
    "SensorReading",
    "SerialBridge",
    "SerialStream",
    "SessionEstablished",
    "SessionLost",
    "SessionState",
    "SessionStatistics",
    "TransportError",
    "UnitDescription",
    "UnitKind",
    "Value",
    "cobs_decode",
    "cobs_encode",
    "configure_raw",
    "crc16",
    "decode_frame",
    "decode_payload",
    "describe_units",
    "encode_frame",
    "encode_payload",
    "max_payload",
    "message_from_json",
    "message_to_json",
    "open_serial",
]
