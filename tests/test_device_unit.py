"""The firmware-bridge S1 unit on Trio's MockClock, its device a fake beside the real pty
(the real pseudo-terminals and processes are in test_device_unit_pty.py)."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from support.devices import FakePort
from support.vsm import config, running

from vsm_edge.agent import FirmwareBridgeUnit, Runtime, UnitError, load_unit
from vsm_edge.agent.vsm.status import UnitStatus
from vsm_edge.bridge import NackReason


def _bench(rt: Runtime) -> UnitStatus:
    """The status of the unit ``bench``."""
    return rt.status().s1.units["bench"]


def _unit(port: FakePort, **options: Any) -> FirmwareBridgeUnit:
    return FirmwareBridgeUnit("bench", {"device": "/dev/fake", **options}, opener=port)


def _alarms(rt: Runtime) -> list[tuple[str, str, bool]]:
    """(valence, reason, acked) of the unit's alarms, oldest first."""
    return [
        (a.signal.valence, a.signal.reason, a.acked_at is not None)
        for a in rt.algedonic.alarms.values()
        if a.signal.source == "s1.bench"
    ]


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({}, "device"),
        ({"device": ""}, "device"),
        ({"device": "/dev/x", "bogus": 1}, "bogus"),
        ({"device": "/dev/x", "baud": 12345}, "baud"),
        ({"device": "/dev/x", "baud": "fast"}, "baud"),
        ({"device": "/dev/x", "sensors": "temp"}, "sensors"),
        ({"device": "/dev/x", "sensors": ["t", "t"]}, "sensors"),
        ({"device": "/dev/x", "actuators": [1]}, "actuators"),
        ({"device": "/dev/x", "resolution": 0}, "resolution"),
        ({"device": "/dev/x", "resolution": {"temp": -1}}, "resolution"),
        ({"device": "/dev/x", "period_s": 0}, "period_s"),
        ({"device": "/dev/x", "pain_after_s": -1}, "pain_after_s"),
        ({"device": "/dev/x", "pain_intensity": 1.5}, "pain_intensity"),
        ({"device": "/dev/x", "heartbeat_ms": 50}, "heartbeat_ms"),
        ({"device": "/dev/x", "max_frame": 128}, "max_frame"),
        ({"device": "/dev/x", "command_attempts": 0}, "command_attempts"),
        ({"device": "/dev/x", "command_timeout_s": 0}, "command_timeout_s"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options: dict[str, Any], key: str) -> None:
    with pytest.raises(UnitError, match=key):
        load_unit("bench", "firmware-bridge", options)


def test_built_in_kind_from_config() -> None:
    cfg = config(
        {"units": [{"name": "bench", "kind": "firmware-bridge",
                    "options": {"device": "/dev/ttyUSB7", "baud": 57600}}]}
    )  # fmt: skip
    unit = load_unit(cfg.units[0].name, cfg.units[0].kind, cfg.units[0].options)
    assert isinstance(unit, FirmwareBridgeUnit)
    assert (unit.device, unit.baud) == ("/dev/ttyUSB7", 57600)
    assert unit.readings == ()
    assert unit.commands == ()


async def test_device_channels_become_readings_and_commands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery, interval=0.1)
        async with running(config(), {"bench": _unit(port)}) as rt:
            assert _bench(rt).readings == ()
            await trio.sleep(1.0)
            entry = _bench(rt)
            assert entry.readings == ("temp", "rh")
            assert entry.commands == ("fan",)
            record = rt.units["bench"]
            assert record.specs["temp"].unit == "°C"
            assert record.specs["temp"].resolution == pytest.approx(165 / 100)  # range/100
            assert (record.commands["fan"].minimum, record.commands["fan"].maximum) == (0, 100)
            assert entry.emitted >= 2 * 8  # two sensors at 10 Hz for ~0.9 s
            detail = entry.detail
            assert detail is not None
            assert detail["connected"] is True
            assert detail["device_id"] == "fake-1"
            assert detail["bridge"]["session"]["handshakes"] == 1
            assert detail["readings_received"] == entry.emitted
            # the readings reached S4 as categories of this unit
            assert rt.s4.environment.entropy(trio.current_time()) > 0

            # a command: S1 checks the declared range before S5/S2/S3, the device acks
            ok = await rt.execute_command("bench", "fan", 40)
            assert ok.accepted, ok.reason
            assert port.applied == [("fan", 40)]
            refused = await rt.execute_command("bench", "fan", 140)
            assert not refused.accepted
            assert refused.reason == "s1: bench.fan above maximum 100"
            assert port.applied == [("fan", 40)]
            entry = _bench(rt)
            assert entry.confirmed is not None
            assert (entry.confirmed.commands_confirmed, entry.confirmed.commands_failed) == (1, 0)
            assert entry.confirmed.last_outcome is not None
            assert entry.confirmed.last_outcome["ok"] is True
            rt.stop()
        nursery.cancel_scope.cancel()


async def test_device_nack_and_silence_are_the_command_result(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery, nack=NackReason.BUSY)
        unit = _unit(port, command_timeout_s=0.2, command_attempts=3)
        async with running(config(), {"bench": unit}) as rt:
            await trio.sleep(1.0)
            busy = await rt.execute_command("bench", "fan", 10)
            assert not busy.accepted
            assert busy.reason == "s1: bench: device refused fan: busy"
            port.answer = False
            t0 = trio.current_time()
            silent = await rt.execute_command("bench", "fan", 20)
            assert trio.current_time() - t0 == pytest.approx(0.6)  # 3 transmissions x 0.2 s
            assert silent.reason == "s1: bench: device did not answer fan (3 transmissions)"
            # submit_command alone reports the admission, not the outcome
            queued = rt.submit_command("bench", "fan", 30)
            assert queued.accepted
            await trio.sleep(1.0)
            entry = _bench(rt)
            assert entry.confirmed is not None
            assert (entry.confirmed.commands_confirmed, entry.confirmed.commands_failed) == (0, 3)
            assert port.applied == []
            rt.stop()
        nursery.cancel_scope.cancel()


async def test_pain_while_the_device_is_away_cleared_when_it_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery, present=False)
        async with running(config(), {"bench": _unit(port, pain_after_s=1.5)}) as rt:
            t0 = trio.current_time()
            await trio.sleep(1.4)
            assert _alarms(rt) == []  # within the grace period
            await trio.sleep(0.2)
            ((valence, reason, acked),) = _alarms(rt)
            assert (valence, acked) == ("pain", False)
            assert reason.startswith("device /dev/fake away for 1.5 s (cannot open /dev/fake")
            failed = await rt.execute_command("bench", "fan", 1)
            assert "device not connected" in failed.reason or "no unit" in failed.reason
            port.present = True
            await trio.sleep(3.0)  # the bridge's backoff is at most 2 s
            alarms = _alarms(rt)
            assert [(v, a) for v, _, a in alarms] == [("pain", True), ("pleasure", False)]
            assert alarms[1][1].startswith("device fake-1 back on /dev/fake after")
            detail = _bench(rt).detail
            assert (detail["connected"], detail["connects"], detail["pains"]) == (True, 1, 1)

            # unplugged: the link ends, the bridge reopens, pain after the grace period
            port.unplug()
            await trio.sleep(0.1)
            detail = _bench(rt).detail
            assert detail["connected"] is False
            assert detail["disconnects"] == 1
            away = await rt.execute_command("bench", "fan", 1)
            assert away.reason.startswith("s1: bench: device not connected")
            await trio.sleep(1.5)
            assert [(v, a) for v, _, a in _alarms(rt)][-1] == ("pain", False)
            port.present = True
            await trio.sleep(3.0)
            assert [(v, a) for v, _, a in _alarms(rt)][-2:] == [("pain", True), ("pleasure", False)]
            assert _bench(rt).detail["connects"] == 2
            assert rt.algedonic.critical_pain() == 0.0
            assert trio.current_time() - t0 < 12
            rt.stop()
        nursery.cancel_scope.cancel()


async def test_pinned_channels_are_declared_up_front_and_checked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery, present=False)
        unit = _unit(port, sensors=["temp", "pressure"], actuators=["fan"], resolution=0.5,
                     period_s=0.1, pain_after_s=60)  # fmt: skip
        async with running(config(), {"bench": unit}) as rt:
            entry = _bench(rt)
            assert (entry.readings, entry.commands) == (("temp", "pressure"), ("fan",))
            assert rt.units["bench"].specs["temp"].period_s == 0.1
            port.present = True
            await trio.sleep(1.0)
            detail = _bench(rt).detail
            assert detail["missing"] == ["sensor pressure"]
            assert detail["ignored"] == ["rh"]  # the device has it; the config did not ask
            assert detail["readings_ignored"] > 0
            assert rt.units["bench"].specs["temp"].unit == "°C"  # filled in from the HELLO
            assert rt.units["bench"].specs["temp"].resolution == 0.5  # the option wins
            ((valence, reason, _),) = _alarms(rt)
            assert valence == "pain"
            assert reason == "device fake-1 on /dev/fake lacks sensor pressure"
            rt.stop()
        nursery.cancel_scope.cancel()


async def test_a_restarted_unit_opens_a_fresh_bridge(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        port = FakePort(nursery)
        unit = _unit(port)
        async with running(config(), {"bench": unit}) as rt:
            await trio.sleep(1.0)
            first = unit.bridge
            assert "bench" in rt.supervisor.tasks  # supervised like any unit
            assert first is not None
            assert first.device is not None
            rt.stop()
        async with running(config(), {"bench": unit}) as rt:
            await trio.sleep(1.0)
            assert unit.bridge is not first
            assert _bench(rt).detail["connected"] is True
            assert port.opens == 2
            rt.stop()
        nursery.cancel_scope.cancel()
