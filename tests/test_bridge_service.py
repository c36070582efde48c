"""SerialBridge over the in-memory fake serial port, on Trio's MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from support.bridge import fake_device

from vsm_edge.bridge import (
    Channel,
    CommandTimeout,
    DeviceConfig,
    DeviceSession,
    HostConfig,
    NotConnectedError,
    SerialBridge,
    SerialStream,
    SessionState,
    TransportError,
    UnitKind,
)

CONFIG = DeviceConfig(
    "fake-1", "1.0", (Channel(1, "temp", "°C", -40, 125),), (Channel(9, "fan", "%", 0, 100),)
)


class FakePort:
    """An opener handing out memory stream pairs; fails the first ``failures`` opens."""

    def __init__(self, nursery: trio.Nursery, *, failures: int = 0, answer: bool = True) -> None:
        self.nursery = nursery
        self.failures = failures
        self.answer = answer
        self.attempts: list[float] = []
        self.sessions: list[DeviceSession] = []

    async def __call__(self, path: str, baud: int) -> SerialStream:
        await trio.lowlevel.checkpoint()
        self.attempts.append(trio.current_time())
        if self.failures:
            self.failures -= 1
            raise TransportError(f"cannot open {path}: No such file or directory")
        host_side, device_side = trio.testing.memory_stream_pair()
        session = DeviceSession(CONFIG)
        self.sessions.append(session)
        self.nursery.start_soon(fake_device, device_side, session, self.answer)
        return host_side


async def test_command_acked_and_units_described(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery)
        bridge = SerialBridge("/dev/fake", opener=port)
        await nursery.start(bridge.run)
        info = await bridge.wait_connected()
        assert info.device_id == "fake-1"
        units = bridge.units()
        assert [(u.unit_id, u.kind) for u in units] == [
            ("fake-1/temp", UnitKind.SENSOR),
            ("fake-1/fan", UnitKind.ACTUATOR),
        ]
        await bridge.command("fan", 55)
        assert bridge.statistics().session.commands_completed == 1
        nursery.cancel_scope.cancel()


async def test_command_fails_after_the_bounded_retransmissions(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery, answer=False)
        cfg = HostConfig(command_timeout=0.25, command_attempts=5, heartbeat_ms=5000)
        bridge = SerialBridge("/dev/fake", opener=port, config=cfg)
        await nursery.start(bridge.run)
        await bridge.wait_connected()
        t0 = trio.current_time()
        with pytest.raises(CommandTimeout) as info:
            await bridge.command("fan", 1)
        assert info.value.attempts == 5
        assert trio.current_time() - t0 == pytest.approx(1.25)
        assert bridge.statistics().session.retransmissions == 4
        nursery.cancel_scope.cancel()


async def test_reopens_with_exponential_backoff(autojump_clock: trio.testing.MockClock) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery, failures=4)
        bridge = SerialBridge("/dev/fake", opener=port, reopen_initial=0.05, reopen_max=0.3)
        await nursery.start(bridge.run)
        await bridge.wait_connected()
        gaps = [b - a for a, b in zip(port.attempts, port.attempts[1:], strict=False)]
        assert gaps == pytest.approx([0.05, 0.1, 0.2, 0.3])
        assert bridge.statistics().open_failures == 4
        nursery.cancel_scope.cancel()


async def test_not_connected_is_immediate() -> None:
    bridge = SerialBridge("/dev/nothing")
    with pytest.raises(NotConnectedError):
        await bridge.command("fan", 1)


async def test_slow_consumer_loses_the_oldest_readings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery)
        bridge = SerialBridge("/dev/fake", opener=port, readings_buffer=4)
        await nursery.start(bridge.run)
        await bridge.wait_connected()
        dev = port.sessions[0]
        while dev.state is not SessionState.CONNECTED:
            await trio.sleep(0.001)
        for i in range(10):
            assert dev.send_reading(1, i)
        # the fake device flushes on its next wake-up (a heartbeat tick at most 1 s away)
        await trio.sleep(1.5)
        values = [bridge.readings.receive_nowait().value for _ in range(4)]
        assert values == [6, 7, 8, 9]
        assert bridge.statistics().readings_dropped == 6
        nursery.cancel_scope.cancel()
