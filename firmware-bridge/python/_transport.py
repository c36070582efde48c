"""The serial port behind one small interface, opened without ever blocking Trio.

:func:`open_serial` opens the device path with ``O_NONBLOCK``, sets raw 8N1 at
the requested speed with termios, and wraps the descriptor in
``trio.lowlevel.FdStream`` (reads wait with ``wait_readable``). A raw descriptor
is enough here: the line discipline is all a USB-serial adapter or a
pseudo-terminal needs, and pyserial's blocking API would need a thread.
Every failure is a :class:`TransportError`.
"""

from __future__ import annotations

import os
import termios
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ._errors import TransportError

__all__ = ["Opener", "SerialStream", "configure_raw", "open_serial"]


class SerialStream(Protocol):
    """What the bridge needs of a serial port (a fake in tests, a tty here)."""

    async def receive_some(self, max_bytes: int) -> bytes: ...

    async def send_all(self, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


Opener = Callable[[str, int], Awaitable[SerialStream]]


def configure_raw(fd: int, baud: int) -> None:
    """Raw mode, 8 data bits, no parity, one stop bit, no flow control, ``baud``."""
    speed = getattr(termios, f"B{baud}", None)
    if speed is None:
        raise TransportError(f"unsupported baud rate {baud}")
    try:
        iflag, oflag, cflag, lflag, _, _, cc = termios.tcgetattr(fd)
        iflag &= ~(
            termios.IGNBRK
            | termios.BRKINT
            | termios.PARMRK
            | termios.ISTRIP
            | termios.INLCR
            | termios.IGNCR
            | termios.ICRNL
            | termios.IXON
            | termios.IXOFF
            | termios.IXANY
        )
        oflag &= ~termios.OPOST
        lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        cflag &= ~(termios.CSIZE | termios.PARENB | termios.CSTOPB | termios.CRTSCTS)
        cflag |= termios.CS8 | termios.CREAD | termios.CLOCAL
        cc[termios.VMIN] = 1
        cc[termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, speed, speed, cc])
    except (termios.error, OSError) as exc:
        raise TransportError(f"cannot configure the serial line: {exc}") from exc


class _TtyStream:
    """A configured tty descriptor as a SerialStream; OS errors become TransportError."""

    def __init__(self, fd: int, path: str) -> None:
        self._stream = trio.lowlevel.FdStream(fd)
        self.path = path

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(f"{self.path}: read failed ({exc.__cause__ or exc})") from exc
        if not data:
            raise TransportError(f"{self.path}: end of file (device gone)")
        return data

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(f"{self.path}: write failed ({exc.__cause__ or exc})") from exc

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_serial(path: str, baud: int = 115200) -> SerialStream:
    """Open and configure the serial device at ``path``; raises TransportError."""
    await trio.lowlevel.checkpoint()
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TransportError(f"cannot open {path}: {exc.strerror}") from exc
    if not os.isatty(fd):
        os.close(fd)
        raise TransportError(f"{path} is not a terminal device")
    try:
        configure_raw(fd, baud)
        termios.tcflush(fd, termios.TCIOFLUSH)  # drop what was queued before we came
    except TransportError:
        os.close(fd)
        raise
    except (termios.error, OSError) as exc:
        os.close(fd)
        raise TransportError(f"cannot configure {path}: {exc}") from exc
    return _TtyStream(fd, path)
