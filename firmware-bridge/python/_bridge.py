"""SerialBridge: the Trio service that keeps one device connected.

``run`` opens the serial device, drives a :class:`HostSession` over it, and
when the link breaks (unplugged, closed, unreadable) reopens the same path
with exponential backoff, for ever. Readings go into a bounded channel
(:attr:`SerialBridge.readings`; when the consumer falls behind the oldest are
dropped and counted, so the reader never blocks the line); commands return
when acknowledged or raise a :class:`CommandError`.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from ._connection import NeedData
from ._errors import CommandError, TransportError
from ._messages import Error, Value
from ._session import (
    CommandCompleted,
    CommandFailed,
    DeviceConnected,
    DeviceErrorReported,
    DeviceInfo,
    DeviceLost,
    HandshakeFailed,
    HostConfig,
    HostSession,
    ReadingReceived,
    SessionStatistics,
)
from ._transport import Opener, SerialStream, open_serial
from ._units import SensorReading, UnitDescription, describe_units

__all__ = ["BridgeStatistics", "SerialBridge"]


@dataclass(frozen=True, slots=True)
class BridgeStatistics:
    path: str
    connected: bool
    opens: int
    open_failures: int
    readings_dropped: int
    last_error: str | None
    session: SessionStatistics = field(default_factory=SessionStatistics)
    device_errors: int = 0  # ERROR messages the device sent (the last 64 in device_errors)


@dataclass(slots=True)
class _Waiter:
    event: trio.Event = field(default_factory=trio.Event)
    error: CommandError | None = None


class SerialBridge:
    """Connects one serial device to S1.

    ``path`` is reopened after every failure, so a stable name
    (``/dev/serial/by-id/...`` or the simulator's ``--link``) survives replugs.
    ``opener`` is the serial adapter (a fake in unit tests).
    """

    def __init__(
        self,
        path: str,
        *,
        baud: int = 115200,
        config: HostConfig | None = None,
        readings_buffer: int = 256,
        reopen_initial: float = 0.05,
        reopen_max: float = 2.0,
        opener: Opener = open_serial,
        read_size: int = 4096,
    ) -> None:
        self.path = path
        self._baud = baud
        self._session = HostSession(config)
        self._opener = opener
        self._reopen_initial = reopen_initial
        self._reopen_max = reopen_max
        self._read_size = read_size
        self._readings_tx, self.readings = trio.open_memory_channel[SensorReading](readings_buffer)
        self._waiters: dict[int, _Waiter] = {}
        self._connected = trio.Event()
        self._changed = trio.Event()
        self._wake = trio.Event()
        self._send_lock = trio.Lock()
        self._stream: SerialStream | None = None
        self._opens = 0
        self._open_failures = 0
        self._dropped = 0
        self._last_error: str | None = None
        self.device_errors: deque[Error] = deque(maxlen=64)
        self._device_errors = 0

    # -- public ------------------------------------------------------------------------

    @property
    def device(self) -> DeviceInfo | None:
        """The connected device, or None."""
        return self._session.device

    def units(self) -> tuple[UnitDescription, ...]:
        """The S1 units of the connected device (empty when none is connected)."""
        info = self._session.device
        return describe_units(info) if info is not None else ()

    async def wait_connected(self) -> DeviceInfo:
        """Wait until a device has completed the handshake; return it."""
        while True:
            info = self._session.device
            if info is not None:
                await trio.lowlevel.checkpoint()
                return info
            await self._connected.wait()

    async def wait_device_changed(self, current: DeviceInfo | None) -> DeviceInfo | None:
        """Wait until the connected device is no longer ``current``; return the new one.

        Returns at once if it already differs. A change is a handshake, a new
        handshake of a restarted device (a new :class:`DeviceInfo`, whose
        channels may differ), or a lost link (None).
        """
        while self._session.device is current:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()
        return self._session.device

    async def command(self, channel: int | str, value: Value) -> None:
        """Set actuator ``channel`` (id or name) to ``value``; return once the device acks.

        Raises NotConnectedError, CommandRejected (locally: unknown actuator or
        value outside the declared range; or the device's NACK and its reason),
        CommandTimeout (no answer after the configured attempts), QueueFullError.
        Cancelling the call does not withdraw a command already queued.
        """
        token = self._session.submit_command(channel, value, trio.current_time())
        waiter = self._waiters[token] = _Waiter()
        self._wake.set()
        try:
            await waiter.event.wait()
        finally:
            self._waiters.pop(token, None)
        if waiter.error is not None:
            raise waiter.error

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            self.path,
            self._session.device is not None,
            self._opens,
            self._open_failures,
            self._dropped,
            self._last_error,
            self._session.statistics(),
            self._device_errors,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the device for ever (cancel to stop). Started at once; see wait_connected."""
        task_status.started()
        delay = self._reopen_initial
        while True:
            try:
                stream = await self._opener(self.path, self._baud)
            except TransportError as exc:
                self._open_failures += 1
                self._last_error = str(exc)
                await trio.sleep(delay)
                delay = min(delay * 2, self._reopen_max)
                continue
            self._opens += 1
            handshakes = self._session.statistics().handshakes
            try:
                reason = await self._serve(stream)
            finally:
                self._stream = None
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            self._last_error = reason
            self._session.connection_lost(reason, trio.current_time())
            self._dispatch()
            if self._session.statistics().handshakes > handshakes:
                delay = self._reopen_initial  # it worked for a while: retry quickly
            await trio.sleep(delay)
            delay = min(delay * 2, self._reopen_max)

    # -- internals -----------------------------------------------------------------------

    async def _serve(self, stream: SerialStream) -> str:
        reason = "closed"
        self._stream = stream

        async with trio.open_nursery() as nursery:

            async def guard(fn: Callable[[SerialStream], Awaitable[None]]) -> None:
                nonlocal reason
                try:
                    await fn(stream)
                except TransportError as exc:
                    reason = str(exc)
                    nursery.cancel_scope.cancel()

            nursery.start_soon(guard, self._reader)
            nursery.start_soon(guard, self._ticker)
        return reason

    async def _reader(self, stream: SerialStream) -> None:
        while True:
            data = await stream.receive_some(self._read_size)
            self._session.receive_data(data, trio.current_time())
            self._dispatch()
            await self._flush(stream)
            self._wake.set()  # deadlines may have moved

    async def _ticker(self, stream: SerialStream) -> None:
        while True:
            deadline = self._session.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            self._session.handle_timer(trio.current_time())
            self._dispatch()
            await self._flush(stream)

    async def _flush(self, stream: SerialStream) -> None:
        async with self._send_lock:
            data = self._session.data_to_send()
            if data:
                await stream.send_all(data)

    def _dispatch(self) -> None:
        while not isinstance(ev := self._session.next_event(), NeedData):
            if isinstance(ev, ReadingReceived):
                self._deliver(ev)
            elif isinstance(ev, CommandCompleted | CommandFailed):
                waiter = self._waiters.get(ev.token)
                if waiter is not None:
                    if isinstance(ev, CommandFailed):
                        waiter.error = ev.error
                    waiter.event.set()
            elif isinstance(ev, DeviceConnected):
                self._connected.set()
                self._changed.set()
                self._changed = trio.Event()
            elif isinstance(ev, DeviceLost):
                self._connected = trio.Event()
                self._last_error = ev.reason
                self._changed.set()
                self._changed = trio.Event()
            elif isinstance(ev, DeviceErrorReported):
                self.device_errors.append(ev.error)
                self._device_errors += 1
            elif isinstance(ev, HandshakeFailed):
                self._last_error = str(ev.error)

    def _deliver(self, ev: ReadingReceived) -> None:
        r = ev.reading
        info = self._session.device
        assert info is not None
        reading = SensorReading(
            f"{info.device_id}/{ev.channel.name}",
            info.device_id,
            r.channel,
            r.value,
            ev.channel.unit,
            r.seq,
            r.time_ms,
            trio.current_time(),
        )
        try:
            self._readings_tx.send_nowait(reading)
        except trio.WouldBlock:
            # The consumer is behind: drop the oldest reading, keep the newest.
            with contextlib.suppress(trio.WouldBlock):
                self.readings.receive_nowait()
            self._dropped += 1
            try:
                self._readings_tx.send_nowait(reading)
            except trio.WouldBlock:
                self._dropped += 1
