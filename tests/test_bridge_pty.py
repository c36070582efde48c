"""The bridge against the device simulator over real pseudo-terminals (real time, bounded)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import trio

from vsm_edge.bridge import (
    CommandRejected,
    HostConfig,
    SensorReading,
    SerialBridge,
    UnitKind,
)
from vsm_edge.bridge.simulator import DeviceSimulator, Faults

pytestmark = pytest.mark.integration


async def start(nursery: trio.Nursery, sim: DeviceSimulator, **kw: object) -> SerialBridge:
    path = await nursery.start(sim.run)
    bridge = SerialBridge(sim.link or path, **kw)  # type: ignore[arg-type]
    await nursery.start(bridge.run)
    return bridge


async def test_handshake_and_readings_flow_into_an_s1_unit() -> None:
    sim = DeviceSimulator(interval=0.02, seed=1)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim)
            info = await bridge.wait_connected()
            assert info.device_id == "sim-1"
            units = {u.unit_id: u for u in bridge.units()}
            assert units["sim-1/temperature"].kind is UnitKind.SENSOR
            assert units["sim-1/temperature"].unit == "°C"
            assert units["sim-1/fan"].kind is UnitKind.ACTUATOR
            # a stand-in S1 unit per sensor: collects what the bridge delivers
            s1: dict[str, list[SensorReading]] = defaultdict(list)
            while (
                min((len(s1[u]) for u in ("sim-1/temperature", "sim-1/humidity")), default=0) < 10
            ):
                reading = await bridge.readings.receive()
                s1[reading.unit_id].append(reading)
            for unit_id, readings in s1.items():
                desc = units[unit_id]
                assert all(desc.minimum <= r.value <= desc.maximum for r in readings)  # type: ignore[operator]
                seqs = [r.seq for r in readings]
                assert seqs == sorted(seqs)
            stats = bridge.statistics().session
            assert stats.frames_rejected == {}
            assert stats.frames_lost == 0
            nursery.cancel_scope.cancel()


async def test_command_reaches_the_simulator_and_is_acked() -> None:
    sim = DeviceSimulator(interval=0.5)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim)
            await bridge.wait_connected()
            await bridge.command("fan", 42)
            assert sim.actuator_values == {"fan": 42}
            await bridge.command("valve", 1.0)
            assert sim.actuator_values["valve"] == 1.0
            with pytest.raises(CommandRejected, match="out_of_range"):
                await bridge.command("valve", 2)
            assert sim.stats.commands_applied == 2
            nursery.cancel_scope.cancel()


async def test_garbage_and_truncated_frames_are_counted_and_resynchronised() -> None:
    sim = DeviceSimulator(interval=0.01, seed=7, faults=Faults(garbage=0.3, truncate=0.3))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim)
            await bridge.wait_connected()
            good = 0
            while good < 100:
                r = await bridge.readings.receive()
                assert -40 <= r.value <= 125  # every delivered reading is intact
                good += 1
            # every injected fault is one rejected frame on the host, no more, no less
            while True:
                rejected = sum(bridge.statistics().session.frames_rejected.values())
                injected = sim.stats.garbage_injected + sim.stats.truncated_injected
                assert rejected <= injected
                if rejected == injected:
                    break
                await trio.sleep(0.001)
            assert injected >= 20
            assert bridge.statistics().session.frames_lost == 0  # resynchronised every time
            nursery.cancel_scope.cancel()


async def test_crc_errors_are_nacked_and_commands_retransmitted() -> None:
    # Per attempt a command gets through with p = 0.75 * 0.85 * 0.85 = 0.54; 16
    # attempts all fail with p < 1e-5, so a CommandTimeout here means a bug.
    faults = Faults(corrupt_rx=0.25, corrupt_tx=0.15, drop_acks=0.15)
    sim = DeviceSimulator(interval=0.05, seed=3, faults=faults)
    cfg = HostConfig(command_timeout=0.1, command_attempts=16)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim, config=cfg)
            await bridge.wait_connected()
            for value in range(30):
                await bridge.command("fan", value)
            assert sim.actuator_values["fan"] == 29
            assert sim.stats.commands_applied == 30  # carried out exactly once each
            host = bridge.statistics().session
            dev = sim.statistics().session
            assert sim.stats.corrupted_rx > 0
            assert dev["frames_rejected"].get("crc", 0) + dev["frames_rejected"].get("cobs", 0) > 0
            assert host.nacks_received > 0  # the device said so ...
            assert host.retransmissions > 0  # ... and the host sent again
            assert host.frames_rejected.get("crc", 0) > 0  # the device's damaged frames
            assert host.nacks_sent > 0
            assert host.commands_failed == 0
            nursery.cancel_scope.cancel()


async def test_unplug_and_replug_the_bridge_recovers(tmp_path: Path) -> None:
    link = str(tmp_path / "ttyVSM0")
    sim = DeviceSimulator(interval=0.05, link=link, faults=Faults(unplug_for=0.3))
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim, reopen_initial=0.02, reopen_max=0.2)
            await bridge.wait_connected()
            first_pty = sim.path
            await bridge.command("fan", 1)
            sim.unplug()
            while bridge.device is not None:
                await trio.sleep(0.01)
            assert not os.path.exists(link)  # noqa: ASYNC240  # the device node is gone while unplugged
            await bridge.wait_connected()
            assert sim.path != first_pty or sim.stats.plugs == 2
            await bridge.command("fan", 2)
            assert sim.actuator_values["fan"] == 2
            stats = bridge.statistics()
            assert stats.opens == 2
            assert stats.open_failures >= 1
            assert stats.session.handshakes == 2
            assert stats.session.links_lost == 1
            nursery.cancel_scope.cancel()


async def test_byte_at_a_time_delivery() -> None:
    sim = DeviceSimulator(interval=0.01, seed=2)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim, read_size=1)
            await bridge.wait_connected()
            for _ in range(40):
                await bridge.readings.receive()
            await bridge.command("fan", 7)
            stats = bridge.statistics().session
            assert stats.frames_rejected == {}
            assert stats.bytes_received >= stats.frames_received * 10
            nursery.cancel_scope.cancel()


async def test_version_mismatch_is_reported_not_connected() -> None:
    sim = DeviceSimulator(versions=(2, 3), hello_interval=0.05)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            bridge = await start(nursery, sim)
            while bridge.statistics().last_error is None:
                await trio.sleep(0.01)
            assert "[2, 3]" in str(bridge.statistics().last_error)
            assert bridge.device is None
            nursery.cancel_scope.cancel()


async def test_simulator_runs_as_a_process(tmp_path: Path) -> None:
    link = str(tmp_path / "ttySIM")
    proc = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
        [sys.executable, "-m", "vsm_edge.bridge.simulator", "--interval", "0.05",
         "--link", link, "--duration", "60", "--sensor", "pressure:hPa:900:1100:1013:5:30:0.2",
         "--actuator", "heater:W:0:2000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with trio.fail_after(20):
            assert proc.stdout is not None
            printed = await trio.to_thread.run_sync(proc.stdout.readline)
            assert printed.strip() == link
            async with trio.open_nursery() as nursery:
                bridge = SerialBridge(link)
                await nursery.start(bridge.run)
                info = await bridge.wait_connected()
                assert [c.name for c in info.sensors] == ["pressure"]
                reading = await bridge.readings.receive()
                assert reading.unit_id == "sim-1/pressure"
                assert reading.unit == "hPa"
                assert 900 <= reading.value <= 1100
                await bridge.command("heater", 1500)
                nursery.cancel_scope.cancel()
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["commands_applied"] == 1
