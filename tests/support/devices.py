"""Helpers for the firmware-bridge unit tests: a fake serial port with a fake device
beside it (MockClock tests), a device on a real pseudo-terminal whose firmware the
test drives, and the device simulator as a real process."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import trio.testing

from vsm_edge.bridge import (
    NEED_DATA,
    Channel,
    CommandReceived,
    DeviceConfig,
    DeviceSession,
    NackReason,
    SerialStream,
    SessionEstablished,
    TransportError,
)

DEVICE = DeviceConfig(
    "fake-1",
    "1.0",
    (Channel(1, "temp", "°C", -40, 125), Channel(2, "rh", "%RH", 0, 100)),
    (Channel(9, "fan", "%", 0, 100),),
)


class _HostEnd:
    """The host side of a memory stream as a SerialStream (EOF means unplugged)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def receive_some(self, max_bytes: int) -> bytes:
        try:
            data = await self._stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"fake port: {exc!r}") from None
        if not data:
            raise TransportError("fake port: end of file (unplugged)")
        return bytes(data)

    async def send_all(self, data: bytes) -> None:
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"fake port: {exc!r}") from None

    async def aclose(self) -> None:
        await self._stream.aclose()


@dataclass
class FakePort:
    """An :data:`~vsm_edge.bridge.Opener` whose device is a :class:`DeviceSession`
    sending one reading per sensor every ``interval`` s and answering commands
    (ACK, or NACK ``nack`` when set, or nothing when ``answer`` is False).

    ``unplug()`` ends the current link; opens fail while ``present`` is False.
    """

    nursery: trio.Nursery
    config: DeviceConfig = DEVICE
    interval: float = 0.1
    answer: bool = True
    nack: NackReason | None = None
    present: bool = True
    opens: int = 0
    applied: list[tuple[str, Any]] = field(default_factory=list)
    _cancel: trio.CancelScope | None = None

    async def __call__(self, path: str, baud: int) -> SerialStream:
        await trio.lowlevel.checkpoint()
        if not self.present:
            raise TransportError(f"cannot open {path}: No such file or directory")
        self.opens += 1
        host, device = trio.testing.memory_stream_pair()
        scope = self._cancel = trio.CancelScope()
        self.nursery.start_soon(self._device, device, scope)
        return _HostEnd(host)

    def unplug(self) -> None:
        self.present = False
        if self._cancel is not None:
            self._cancel.cancel()

    async def _device(self, stream: Any, scope: trio.CancelScope) -> None:
        session = DeviceSession(self.config)
        with scope:
            session.start(trio.current_time())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker, stream, session)
                while data := await stream.receive_some(4096):
                    session.receive_data(data, trio.current_time())
                    while (ev := session.next_event()) is not NEED_DATA:
                        if isinstance(ev, CommandReceived) and self.answer:
                            cmd = ev.command
                            if self.nack is None:
                                name = next(a.name for a in self.config.actuators
                                            if a.id == cmd.channel)  # fmt: skip
                                self.applied.append((name, cmd.value))
                            session.respond(cmd, self.nack)
                    await _flush(stream, session)
                nursery.cancel_scope.cancel()
        await stream.aclose()  # the host sees end of file: unplugged

    async def _ticker(self, stream: Any, session: DeviceSession) -> None:
        next_reading = trio.current_time()
        value = 0
        while True:
            deadline = min(session.next_deadline() or math.inf, next_reading)
            await trio.sleep_until(deadline)
            now = trio.current_time()
            session.handle_timer(now)
            if now >= next_reading:
                next_reading = now + self.interval
                session.set_time(now)
                value += 1
                for ch in self.config.sensors:
                    session.send_reading(ch.id, float(value % 50))
            await _flush(stream, session)


async def _flush(stream: Any, session: DeviceSession) -> None:
    data = session.data_to_send()
    if data:
        await stream.send_all(data)


# -- a device on a real pseudo-terminal, driven by the test ----------------------------------


class PtyDevice:
    """A device on a real pseudo-terminal in this process: ``await nursery.start(dev.run)``
    returns the path the host opens (``/dev/pts/N``).

    The test owns the firmware: :meth:`restart` boots it again with another
    HELLO without unplugging (as a re-flashed or misbehaving device does), and
    :meth:`send_readings` sends one reading per sensor. It answers commands
    with an ACK and keeps the session's timers (HELLO retries, heartbeats).
    """

    def __init__(self, config: DeviceConfig) -> None:
        self.session = DeviceSession(config)
        self.path = ""
        self._connected = trio.Event()
        self._wake = trio.Event()
        self._send_lock = trio.Lock()
        self._stream: trio.lowlevel.FdStream | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        master, slave = os.openpty()
        try:
            tty.setraw(slave, termios.TCSANOW)  # before the host opens it, as the simulator does
            self.path = os.ttyname(slave)
            # holding the slave open too: the master never reads EIO between host opens
            async with trio.lowlevel.FdStream(master) as stream, trio.open_nursery() as nursery:
                self._stream = stream
                self.session.start(trio.current_time())
                nursery.start_soon(self._reader, stream)
                nursery.start_soon(self._ticker)
                task_status.started(self.path)
        finally:
            os.close(slave)

    async def restart(self, config: DeviceConfig) -> None:
        """Boot again with ``config``: a new session, whose first frames are its HELLO."""
        self.session = DeviceSession(config)
        self._connected = trio.Event()
        self.session.start(trio.current_time())
        await self._flush()
        self._wake.set()

    async def wait_connected(self) -> None:
        """Until the host has answered the current session's HELLO."""
        await self._connected.wait()

    async def send_readings(self, value: float) -> int:
        """One reading of ``value`` per sensor of the current session; how many were sent."""
        session = self.session
        session.set_time(trio.current_time())
        sent = sum(session.send_reading(ch.id, value) for ch in session.config.sensors)
        await self._flush()
        return sent

    async def _reader(self, stream: trio.lowlevel.FdStream) -> None:
        while True:
            data = await stream.receive_some(4096)
            session = self.session
            session.receive_data(data, trio.current_time())
            while (ev := session.next_event()) is not NEED_DATA:
                if isinstance(ev, SessionEstablished):
                    self._connected.set()
                elif isinstance(ev, CommandReceived):
                    session.respond(ev.command)
            await self._flush()
            self._wake.set()

    async def _ticker(self) -> None:
        while True:
            with trio.move_on_at(self.session.next_deadline() or math.inf):
                await self._wake.wait()
            self._wake = trio.Event()
            self.session.handle_timer(trio.current_time())
            await self._flush()

    async def _flush(self) -> None:
        assert self._stream is not None
        async with self._send_lock:
            data = self.session.data_to_send()
            if data:
                await self._stream.send_all(data)


# -- the simulator as a process ----------------------------------------------------------


@dataclass
class SimulatorProcess:
    proc: subprocess.Popen[str]
    path: str

    def unplug(self) -> None:
        """SIGUSR1: the simulator pulls its cable (back after its --unplug-for)."""
        self.proc.send_signal(signal.SIGUSR1)

    def stop(self) -> dict[str, Any]:
        """SIGINT; returns the statistics it printed (asserts a clean exit)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=20)
        assert self.proc.returncode == 0, err
        stats: dict[str, Any] = json.loads(err.strip().splitlines()[-1])
        return stats


@contextmanager
def simulator_process(link: Path, *args: str) -> Iterator[SimulatorProcess]:
    """``vsm-edge simulate-device --link LINK ARGS`` as a process; yields once it printed
    the device path (its first stdout line, which must be the link)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsm_edge.agent", "simulate-device", "--link", str(link), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    sim = SimulatorProcess(proc, "")
    try:
        assert proc.stdout is not None
        sim.path = proc.stdout.readline().strip()
        assert sim.path == str(link), (sim.path, proc.stderr.read() if proc.stderr else "")
        yield sim
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=20)
