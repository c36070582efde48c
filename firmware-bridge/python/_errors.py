"""The exception tree of vsm_edge.bridge.

Everything this package raises on purpose is a :class:`BridgeError`. Bytes from
the serial line that cannot be decoded raise :class:`FrameError` (the frame
itself is damaged) or :class:`MessageError` (the frame is intact but its CBOR
payload is not a valid message); no ``cbor2``, ``termios`` or ``OSError``
escapes the package.

::

    BridgeError
    ├── FrameError            COBS structure, CRC-16, length
    ├── MessageError          CBOR well-formedness, limits, message schema
    ├── ProtocolError         a valid message at the wrong moment; no common version
    ├── TransportError        the serial device could not be opened, read or written
    └── CommandError          a command did not complete
        ├── CommandRejected   the device answered NACK (``reason``, ``detail``)
        ├── CommandTimeout    no answer after ``attempts`` transmissions
        ├── NotConnectedError no device session (never connected, or the link was lost)
        └── QueueFullError    too many commands are already waiting
"""

from __future__ import annotations

__all__ = [
    "BridgeError",
    "CommandError",
    "CommandRejected",
    "CommandTimeout",
    "FrameError",
    "MessageError",
    "NotConnectedError",
    "ProtocolError",
    "QueueFullError",
    "TransportError",
]


class BridgeError(Exception):
    """Base of every exception raised on purpose by vsm_edge.bridge."""


class FrameError(BridgeError):
    """The bytes between two delimiters are not an intact frame.

    ``reason`` is one of ``"cobs"``, ``"crc"``, ``"short"``, ``"long"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class MessageError(BridgeError):
    """An intact frame whose payload is not a valid protocol message."""


class ProtocolError(BridgeError):
    """The peer broke the session rules (for example: no protocol version in common)."""


class TransportError(BridgeError):
    """The serial device could not be opened, configured, read or written."""


class CommandError(BridgeError):
    """A command did not complete; see the subclasses."""


class CommandRejected(CommandError):
    """The device (or the local check of its declared capabilities) refused the command."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(f"command rejected: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail


class CommandTimeout(CommandError):
    """The command was sent ``attempts`` times and never acknowledged."""

    def __init__(self, attempts: int) -> None:
        super().__init__(f"command not acknowledged after {attempts} transmissions")
        self.attempts = attempts


class NotConnectedError(CommandError):
    """There is no device session: not connected yet, or the link was lost."""


class QueueFullError(CommandError):
    """The bounded queue of pending commands is full."""
