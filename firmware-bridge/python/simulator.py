"""A device simulator on a pseudo-terminal: ``python -m vsm_edge.bridge.simulator``.

It opens a pty pair, prints the path of the slave side (the "device" a bridge
opens) and speaks the protocol as firmware does, with a :class:`DeviceSession`:
hello until acknowledged, periodic readings of configurable sensors (a sine
wave plus seeded Gaussian noise, sent as float32 as an MCU would), actuators
that acknowledge commands, heartbeats. Seeded faults: garbage bursts and
truncated frames between frames, bit flips in sent or received frames, dropped
ACKs, and unplugging (the pty is destroyed and, after a pause, recreated; a
``--link`` symlink always points to the current one, like /dev/serial/by-id).
``--pace-baud`` holds every frame for its time on a real line at that speed.
As a process, SIGUSR1 unplugs the device (it comes back after ``--unplug-for``);
SIGINT or SIGTERM stop it, printing its statistics as JSON on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import struct
import sys
import termios
import time
import tty
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import trio

from ._connection import NeedData
from ._errors import BridgeError, TransportError
from ._messages import Channel, MessageType, Value
from ._session import CommandReceived, DeviceConfig, DeviceSession, SessionState

__all__ = ["ActuatorModel", "DeviceSimulator", "Faults", "SensorModel", "main"]


@dataclass(frozen=True, slots=True)
class SensorModel:
    """A simulated sensor: ``base + amplitude * sin(2πt / period) + N(0, noise)``."""

    name: str
    unit: str = ""
    minimum: float = -1e6
    maximum: float = 1e6
    base: float = 0.0
    amplitude: float = 0.0
    period: float = 60.0
    noise: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> SensorModel:
        """``NAME[:UNIT[:MIN:MAX[:BASE[:AMPLITUDE[:PERIOD[:NOISE]]]]]]``."""
        parts = spec.split(":")
        name, unit = parts[0], parts[1] if len(parts) > 1 else ""
        nums = [float(p) for p in parts[2:]]
        keys = ["minimum", "maximum", "base", "amplitude", "period", "noise"]
        return cls(name, unit, **dict(zip(keys, nums, strict=False)))


@dataclass(frozen=True, slots=True)
class ActuatorModel:
    name: str
    unit: str = ""
    minimum: float = 0.0
    maximum: float = 100.0

    @classmethod
    def parse(cls, spec: str) -> ActuatorModel:
        """``NAME[:UNIT[:MIN:MAX]]``."""
        parts = spec.split(":")
        nums = [float(p) for p in parts[2:]]
        return cls(parts[0], parts[1] if len(parts) > 1 else "", *nums)


DEFAULT_SENSORS = (
    SensorModel("temperature", "°C", -40, 125, 21.0, 3.0, 60.0, 0.05),
    SensorModel("humidity", "%RH", 0, 100, 45.0, 10.0, 90.0, 0.5),
)
DEFAULT_ACTUATORS = (ActuatorModel("fan", "%", 0, 100), ActuatorModel("valve", "", 0, 1))


@dataclass(frozen=True, slots=True)
class Faults:
    """Fault probabilities (per frame, once a session is established) and the unplug schedule."""

    garbage: float = 0.0  # a burst of random bytes and a delimiter before a frame
    truncate: float = 0.0  # a cut-off copy of a frame before it
    corrupt_tx: float = 0.0  # one bit flipped in a frame sent
    corrupt_rx: float = 0.0  # one bit flipped in a frame received (the device NACKs it)
    drop_acks: float = 0.0  # an ACK never sent
    unplug_every: float | None = None  # seconds between unplugs
    unplug_for: float = 0.5  # seconds the device stays away


_NO_FAULTS = Faults()


@dataclass(slots=True)
class SimulatorStatistics:
    plugs: int = 0
    readings_sent: int = 0
    commands_applied: int = 0
    garbage_injected: int = 0
    truncated_injected: int = 0
    corrupted_tx: int = 0
    corrupted_rx: int = 0
    acks_dropped: int = 0
    bytes_sent: int = 0
    session: dict[str, object] = field(default_factory=dict)


def _float32(x: float) -> float:
    value: float = struct.unpack("<f", struct.pack("<f", x))[0]
    return value


def _flip(frame: bytearray, rng: random.Random) -> None:
    """Flip one bit of a non-delimiter byte without creating a 0x00."""
    while True:
        i = rng.randrange(len(frame) - 1) if len(frame) > 1 else 0
        bit = 1 << rng.randrange(8)
        if frame[i] ^ bit:
            frame[i] ^= bit
            return


class DeviceSimulator:
    """The simulated device. ``await nursery.start(sim.run)`` returns the pty path."""

    def __init__(
        self,
        *,
        device_id: str = "sim-1",
        firmware: str = "vsm-sim 1.0",
        sensors: Sequence[SensorModel] = DEFAULT_SENSORS,
        actuators: Sequence[ActuatorModel] = DEFAULT_ACTUATORS,
        interval: float = 0.1,
        faults: Faults | None = None,
        seed: int = 0,
        link: str | None = None,
        max_frame: int = 256,
        versions: tuple[int, ...] = (1,),
        hello_interval: float = 0.5,
        pace_baud: int | None = None,
        latency_probe: bool = False,
    ) -> None:
        self.sensors = tuple(sensors)
        self.actuators = tuple(actuators)
        sensor_channels = [
            Channel(i + 1, s.name, s.unit, s.minimum, s.maximum) for i, s in enumerate(self.sensors)
        ]
        if latency_probe:
            sensor_channels.append(Channel(100, "probe", "ns"))
        self.config = DeviceConfig(
            device_id,
            firmware,
            tuple(sensor_channels),
            tuple(
                Channel(50 + i, a.name, a.unit, a.minimum, a.maximum)
                for i, a in enumerate(self.actuators)
            ),
            versions=versions,
            max_frame=max_frame,
            hello_interval=hello_interval,
        )
        self.interval = interval
        self.faults = faults or Faults()
        self.rng = random.Random(seed)  # noqa: S311 (simulation, not secrets)
        self.link = link
        self.pace_baud = pace_baud
        self.latency_probe = latency_probe
        self.path: str | None = None
        self.actuator_values: dict[str, Value] = {}
        self.stats = SimulatorStatistics()
        self.session: DeviceSession | None = None
        self._unplug = trio.Event()

    def unplug(self) -> None:
        """Pull the cable now (the pty is destroyed and recreated after ``unplug_for``)."""
        self._unplug.set()

    def statistics(self) -> SimulatorStatistics:
        if self.session is not None:
            self.stats.session = asdict(self.session.statistics())
        return self.stats

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Plug, serve, unplug, for ever; ``task_status.started(path)`` after the first plug."""
        started = False
        linked = False
        while True:
            try:
                master, slave = os.openpty()
            except OSError as exc:
                raise TransportError(f"cannot open a pseudo-terminal: {exc}") from exc
            try:
                # Raw at once: the line discipline must not touch our bytes even
                # before the bridge opens (and configures) the slave side.
                tty.setraw(slave, termios.TCSANOW)
                self.path = os.ttyname(slave)
                if self.link:
                    tmp = f"{self.link}.tmp{os.getpid()}"
                    try:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                        os.symlink(self.path, tmp)
                        os.replace(tmp, self.link)
                    except OSError as exc:
                        with contextlib.suppress(OSError):
                            os.unlink(tmp)
                        raise TransportError(f"cannot create the link {self.link}: {exc}") from exc
                    linked = True
                self.stats.plugs += 1
                if not started:
                    started = True
                    task_status.started(self.path)
                await self._plugged(master)
            finally:
                if linked and self.link:
                    linked = False
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.link)
                os.close(slave)
                with contextlib.suppress(OSError):
                    os.close(master)
            await trio.sleep(self.faults.unplug_for)

    async def _plugged(self, master: int) -> None:
        stream = trio.lowlevel.FdStream(os.dup(master))
        session = self.session = DeviceSession(self.config)
        session.start(trio.current_time())
        self._unplug = trio.Event()
        wake = trio.Event()
        send_lock = trio.Lock()

        async def flush() -> None:
            async with send_lock:
                for kind, frame in session.frames_to_send():
                    await self._write(stream, kind, frame)

        async def reader() -> None:
            nonlocal wake
            pending = bytearray()
            while True:
                try:
                    data = await stream.receive_some(4096)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await trio.sleep(0.05)  # EIO while no slave is open: keep waiting
                    continue
                pending += data
                while (idx := pending.find(0)) >= 0:
                    frame = bytearray(pending[: idx + 1])
                    del pending[: idx + 1]
                    if (
                        len(frame) > 1
                        and self._established()
                        and self.rng.random() < self.faults.corrupt_rx
                    ):
                        _flip(frame, self.rng)
                        self.stats.corrupted_rx += 1
                    session.receive_data(bytes(frame), trio.current_time())
                if len(pending) > 4 * self.config.max_frame:
                    session.receive_data(bytes(pending), trio.current_time())
                    pending.clear()
                self._apply(session)
                await flush()
                wake.set()

        async def ticker() -> None:
            nonlocal wake
            next_sample = trio.current_time()
            while True:
                deadline = min(session.next_deadline() or math.inf, next_sample)
                with trio.move_on_at(deadline):
                    await wake.wait()
                wake = trio.Event()
                now = trio.current_time()
                session.handle_timer(now)
                if now >= next_sample:
                    next_sample = now + self.interval
                    self._sample(session, now)
                await flush()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(ticker)
            deadline = math.inf
            if self.faults.unplug_every is not None:
                deadline = trio.current_time() + self.faults.unplug_every
            with trio.move_on_at(deadline):
                await self._unplug.wait()
            nursery.cancel_scope.cancel()
        await stream.aclose()

    def _established(self) -> bool:
        return self.session is not None and self.session.state is SessionState.CONNECTED

    def _apply(self, session: DeviceSession) -> None:
        while not isinstance(ev := session.next_event(), NeedData):
            if isinstance(ev, CommandReceived):
                cmd = ev.command
                act = next(a for a in self.config.actuators if a.id == cmd.channel)
                self.actuator_values[act.name] = cmd.value
                self.stats.commands_applied += 1
                session.respond(cmd)

    def _sample(self, session: DeviceSession, now: float) -> None:
        session.set_time(now)
        for i, s in enumerate(self.sensors):
            value = s.base + s.amplitude * math.sin(2 * math.pi * now / s.period)
            value += self.rng.gauss(0.0, s.noise) if s.noise else 0.0
            value = _float32(min(max(value, s.minimum), s.maximum))
            if session.send_reading(i + 1, value):
                self.stats.readings_sent += 1
        if self.latency_probe and session.send_reading(100, time.monotonic_ns(), stamp=False):
            self.stats.readings_sent += 1

    async def _write(self, stream: trio.lowlevel.FdStream, kind: MessageType, frame: bytes) -> None:
        # Faults only on an established session: the host flushes the tty's input
        # queue when it opens the port, which would hide faults injected before.
        f = self.faults if self._established() else _NO_FAULTS
        rng = self.rng
        if kind is MessageType.ACK and rng.random() < f.drop_acks:
            self.stats.acks_dropped += 1
            return
        out = bytearray()
        if rng.random() < f.garbage:
            out += bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 24))) + b"\x00"
            self.stats.garbage_injected += 1
        if len(frame) > 3 and rng.random() < f.truncate:
            out += frame[: rng.randrange(1, len(frame) - 1)] + b"\x00"
            self.stats.truncated_injected += 1
        body = bytearray(frame)
        if len(frame) > 1 and rng.random() < f.corrupt_tx:
            _flip(body, rng)
            self.stats.corrupted_tx += 1
        out += body
        if self.pace_baud:
            await trio.sleep(len(out) * 10 / self.pace_baud)  # start bit + 8 data + stop bit
        try:
            await stream.send_all(bytes(out))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise TransportError(f"pty write failed: {exc}") from exc
        self.stats.bytes_sent += len(out)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vsm-edge simulate-device",
        description="A firmware simulator on a pseudo-terminal (prints the device path).",
    )
    p.add_argument("--device-id", default="sim-1")
    p.add_argument("--firmware", default="vsm-sim 1.0")
    p.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="NAME[:UNIT[:MIN:MAX[:BASE[:AMP[:PERIOD[:NOISE]]]]]]",
        help="a sensor (repeatable; default: temperature and humidity)",
    )
    p.add_argument(
        "--actuator",
        action="append",
        default=[],
        metavar="NAME[:UNIT[:MIN:MAX]]",
        help="an actuator (repeatable; default: fan and valve)",
    )
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link", help="keep a symlink at this path to the current pty")
    p.add_argument("--max-frame", type=int, default=256)
    p.add_argument("--pace-baud", type=int, help="hold each frame for its time at this baud rate")
    p.add_argument("--garbage", type=float, default=0.0, help="probability per frame")
    p.add_argument("--truncate", type=float, default=0.0, help="probability per frame")
    p.add_argument("--corrupt-tx", type=float, default=0.0, help="probability per frame")
    p.add_argument("--corrupt-rx", type=float, default=0.0, help="probability per frame")
    p.add_argument("--drop-acks", type=float, default=0.0, help="probability per ACK")
    p.add_argument("--unplug-every", type=float, help="seconds between unplugs")
    p.add_argument("--unplug-for", type=float, default=0.5, help="seconds unplugged")
    p.add_argument("--latency-probe", action="store_true", help="add a sensor of monotonic ns")
    p.add_argument("--no-sensors", action="store_true", help="no simulated sensors (probe only)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until interrupted (or ``--duration``); prints the path first."""
    args = build_parser().parse_args(argv)
    try:
        sim = DeviceSimulator(
            device_id=args.device_id,
            firmware=args.firmware,
            sensors=()
            if args.no_sensors
            else [SensorModel.parse(s) for s in args.sensor] or DEFAULT_SENSORS,
            actuators=[ActuatorModel.parse(a) for a in args.actuator] or DEFAULT_ACTUATORS,
            interval=args.interval,
            faults=Faults(
                args.garbage,
                args.truncate,
                args.corrupt_tx,
                args.corrupt_rx,
                args.drop_acks,
                args.unplug_every,
                args.unplug_for,
            ),
            seed=args.seed,
            link=args.link,
            max_frame=args.max_frame,
            pace_baud=args.pace_baud,
            latency_probe=args.latency_probe,
        )
    except (BridgeError, ValueError) as exc:
        print(f"simulate-device: {exc}", file=sys.stderr)
        return 2

    async def amain() -> None:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal(
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
            ) -> None:
                with trio.open_signal_receiver(
                    signal.SIGINT, signal.SIGTERM, signal.SIGUSR1
                ) as signals:
                    task_status.started()  # before the path is printed: signals are ours
                    async for signum in signals:
                        if signum == signal.SIGUSR1:
                            sim.unplug()  # pull the cable; it is plugged back after --unplug-for
                        else:
                            nursery.cancel_scope.cancel()

            await nursery.start(stop_on_signal)
            path = await nursery.start(sim.run)
            print(args.link or path, flush=True)
            if args.link:
                print(f"(current pty: {path})", file=sys.stderr, flush=True)
            if args.duration is not None:
                await trio.sleep(args.duration)
                nursery.cancel_scope.cancel()

    try:
        trio.run(amain)
    except (TransportError, ExceptionGroup) as exc:  # Trio's nurseries wrap what they raise
        leaves = _leaves(exc)
        if not all(isinstance(e, TransportError) for e in leaves):
            raise
        print(f"simulate-device: {leaves[0]}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(sim.statistics()), default=str), file=sys.stderr)
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


if __name__ == "__main__":
    raise SystemExit(main())
