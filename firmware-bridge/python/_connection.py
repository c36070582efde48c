"""The h11-style connection: bytes in, events out; events in, bytes out.

No I/O and no clock: :meth:`Connection.receive_data` feeds bytes read from the
line, :meth:`Connection.next_event` returns the next decoded message, a
:class:`FrameRejected` for a damaged or invalid frame (the line is noisy; that
is an event, not an exception), or :data:`NEED_DATA`; :meth:`Connection.send`
turns a message into the bytes to write. The session state machines
(``_session.py``) are built on top.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, final

from ._errors import FrameError, MessageError
from ._framing import DEFAULT_MAX_FRAME, FrameSplitter, unframe
from ._messages import (
    Ack,
    Command,
    Error,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    Nack,
    Reading,
    decode_payload,
    encode_frame,
)

__all__ = ["NEED_DATA", "Connection", "ConnectionStatistics", "FrameRejected", "NeedData", "Role"]


class Role(Enum):
    HOST = "host"
    DEVICE = "device"


@final
class NeedData:
    """Sentinel type: no complete frame is buffered."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame was cut from the stream but rejected; ``error`` says why."""

    error: FrameError | MessageError
    size: int


# Which messages each role may receive.
_ACCEPTS: dict[Role, tuple[type[Message], ...]] = {
    Role.HOST: (Hello, Reading, Ack, Nack, Heartbeat, Error),
    Role.DEVICE: (HelloAck, Command, Nack, Heartbeat),
}


@dataclass(slots=True)
class ConnectionStatistics:
    frames_received: int = 0
    frames_rejected: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0


class Connection:
    """One end of the serial link.

    ``max_frame`` is what this end accepts (its advertised limit);
    ``peer_max_frame`` is what the peer accepts, which bounds :meth:`send` and
    is raised or lowered by the session after the hello.
    """

    def __init__(
        self,
        role: Role,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        peer_max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        self.role = role
        self.max_frame = max_frame
        self.peer_max_frame = peer_max_frame
        self._splitter = FrameSplitter(max_frame)
        self._accepts = _ACCEPTS[role]
        self.stats = ConnectionStatistics()

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes read from the line (any split: whole frames, halves, single bytes)."""
        self.stats.bytes_received += len(data)
        self._splitter.feed(data)

    def next_event(self) -> Message | FrameRejected | NeedData:
        """The next message or rejected frame, or NEED_DATA."""
        frame = self._splitter.next_frame()
        if frame is None:
            return NEED_DATA
        if isinstance(frame, FrameError):
            return self._reject(frame, self.max_frame + 1)
        try:
            msg = decode_payload(unframe(frame, self.max_frame))
        except (FrameError, MessageError) as exc:
            return self._reject(exc, len(frame))
        if not isinstance(msg, self._accepts):
            return self._reject(
                MessageError(f"{type(msg).__name__} is not sent to the {self.role.value}"),
                len(frame),
            )
        self.stats.frames_received += 1
        return msg

    def _reject(self, error: FrameError | MessageError, size: int) -> FrameRejected:
        key = error.reason if isinstance(error, FrameError) else "message"
        self.stats.frames_rejected[key] += 1
        return FrameRejected(error, size)

    def send(self, msg: Message) -> bytes:
        """The wire bytes of ``msg``; raises MessageError if it is invalid, too large
        for the peer, or not one this role sends."""
        if isinstance(msg, self._accepts) and not isinstance(msg, Nack | Heartbeat):
            raise MessageError(f"the {self.role.value} does not send {type(msg).__name__}")
        data = encode_frame(msg, self.peer_max_frame)
        self.stats.frames_sent += 1
        self.stats.bytes_sent += len(data)
        return data
