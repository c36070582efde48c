"""The firmware-bridge unit over real pseudo-terminals: `vsm-edge simulate-device` runs as
a separate process, the agent's runtime (or two whole agents on the in-memory broker)
in this one. Real time, each test bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from support.devices import PtyDevice, simulator_process
from support.vsm import config, running

from vsm_edge.agent import Runtime
from vsm_edge.agent.cli.main import main as cli_main
from vsm_edge.sync import MemoryBroker

pytestmark = pytest.mark.integration


def _bench(link: Path, **options: Any) -> dict[str, Any]:
    return {"name": "bench", "kind": "firmware-bridge",
            "options": {"device": str(link), "reopen_max_s": 0.2, **options}}  # fmt: skip


def _bench_path(device: PtyDevice) -> dict[str, Any]:
    return {"name": "bench", "kind": "firmware-bridge",
            "options": {"device": device.path, "reopen_max_s": 0.2}}  # fmt: skip


def _unit(rt: Runtime) -> dict[str, Any]:
    entry: dict[str, Any] = rt.status().s1.units["bench"].to_json()
    return entry


def _pain(rt: Runtime) -> list[tuple[str, bool]]:
    return [
        (a.signal.valence, a.acked_at is not None)
        for a in rt.algedonic.alarms.values()
        if a.signal.source == "s1.bench"
    ]


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


def test_simulate_device_prints_the_device_path_and_obeys_signals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # without --link it prints the pty itself
    proc = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "simulate-device", "--duration", "0.3"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("/dev/pts/")
    # a bad option is a usage error (in process: the same main() as the console script)
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["simulate-device", "--bogus"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    # with --link: the link is printed and points at a tty; SIGUSR1 pulls the cable
    link = tmp_path / "ttyVSM0"
    with simulator_process(link, "--unplug-for", "0.3") as sim:
        assert os.path.realpath(link).startswith("/dev/pts/")
        first = os.path.realpath(link)
        sim.unplug()
        # the link vanishes while unplugged, then comes back
        t0 = time.monotonic()
        while link.exists() and time.monotonic() - t0 < 5:
            time.sleep(0.01)
        assert not link.exists()
        while not link.exists() and time.monotonic() - t0 < 10:
            time.sleep(0.01)
        assert os.path.realpath(link).startswith("/dev/pts/")
        stats = sim.stop()
    assert stats["plugs"] == 2
    assert first.startswith("/dev/pts/")


async def test_readings_commands_and_a_replug_through_the_runtime(tmp_path: Path) -> None:
    link = tmp_path / "ttyVSM1"
    with simulator_process(link, "--interval", "0.05", "--unplug-for", "0.5") as sim:
        cfg = config({"units": [_bench(link, pain_after_s=0.2)]})
        with trio.fail_after(30):
            async with running(cfg) as rt:
                # readings from the simulator process reach S1
                await _until(lambda: _unit(rt)["emitted"] >= 20, "readings")
                entry = _unit(rt)
                assert entry["readings"] == ["temperature", "humidity"]
                assert entry["commands"] == ["fan", "valve"]
                assert entry["detail"]["device_id"] == "sim-1"
                assert entry["detail"]["bridge"]["session"]["frames_rejected"] == {}
                assert rt.units["bench"].specs["temperature"].unit == "°C"

                # a command reaches the simulator and its ACK is the result
                acked = await rt.execute_command("bench", "fan", 42)
                assert acked.accepted, acked.reason
                nacked = await rt.execute_command("bench", "valve", 2)
                assert nacked.reason == "s1: bench.valve above maximum 1"  # refused in S1

                # unplug: pain once the device has been away 0.2 s; replug clears it
                pains_before = _pain(rt)
                sim.unplug()
                await _until(lambda: not _unit(rt)["detail"]["connected"], "unplugged")
                away = await rt.execute_command("bench", "fan", 7)
                assert away.reason.startswith("s1: bench: device not connected")
                await _until(lambda: ("pain", False) in _pain(rt), "pain")
                await _until(lambda: _unit(rt)["detail"]["connected"], "replugged")
                await _until(lambda: _pain(rt)[-1] == ("pleasure", False), "cleared")
                new = _pain(rt)[len(pains_before) :]
                assert new == [("pain", True), ("pleasure", False)]
                emitted = _unit(rt)["emitted"]
                await _until(lambda: _unit(rt)["emitted"] >= emitted + 10, "readings again")
                again = await rt.execute_command("bench", "fan", 43)
                assert again.accepted, again.reason
                detail = _unit(rt)["detail"]
                assert (detail["connects"], detail["disconnects"]) == (2, 1)
                assert detail["bridge"]["opens"] == 2
                rt.stop()
        stats = sim.stop()
    assert stats["commands_applied"] == 2
    assert stats["plugs"] == 2


async def test_device_readings_replicate_to_another_agent(tmp_path: Path) -> None:
    from vsm_edge.agent.mesh.node import Agent

    link = tmp_path / "ttyVSM2"
    broker = MemoryBroker()

    def agent(name: str, units: list[dict[str, Any]]) -> Agent:
        data_dir = tmp_path / name
        data_dir.mkdir()
        cfg = config(
            {"node": {"id": name}, "discovery": {"enabled": False}, "units": units},
            data_dir=data_dir,
        )
        return Agent(cfg, transport_factory=lambda will: broker.transport(name, will=will))

    with simulator_process(link, "--interval", "0.05") as sim:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                a = await nursery.start(agent("n1", [_bench(link)]).run)
                b = await nursery.start(agent("n2", []).run)
                key = "n1/r/bench.temperature"

                def seen_by_b() -> Any:
                    assert b.replicator is not None
                    return b.replicator.docs["mesh"].state.value().get(key)

                await _until(lambda: seen_by_b() is not None, "replicated", timeout=20)
                value, written_ms = seen_by_b()
                assert -40 <= value <= 125  # the simulator's temperature channel range
                assert isinstance(written_ms, int)
                assert a.runtime is not None
                assert a.runtime.status().s1.units["bench"].emitted > 0
                a.stop()
                b.stop()
        sim.stop()


async def test_a_device_renaming_its_channels_cannot_grow_the_mesh(tmp_path: Path) -> None:
    # A device re-sends HELLO with 16 new sensor names each time (8 times, 128
    # names); the unit declares at most max_channels (default 64) names in its
    # life, so at most 64 reading keys ever enter the replicated mesh document.
    from vsm_edge.agent.mesh.node import Agent
    from vsm_edge.agent.units.firmware import MAX_CHANNELS
    from vsm_edge.bridge import Channel, DeviceConfig

    def firmware(generation: int) -> DeviceConfig:
        sensors = tuple(Channel(i + 1, f"g{generation}_s{i}", "V") for i in range(16))
        return DeviceConfig("churn-1", "1.0", sensors)

    generations = 2 * MAX_CHANNELS // 16
    admitted = {f"n1/r/bench.g{g}_s{i}" for g in range(MAX_CHANNELS // 16) for i in range(16)}
    device = PtyDevice(firmware(0))
    broker = MemoryBroker()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(device.run)
            units = [_bench_path(device)]
            cfg = config(
                {"node": {"id": "n1"}, "discovery": {"enabled": False}, "units": units},
                data_dir=tmp_path,
            )
            agent = Agent(cfg, transport_factory=lambda will: broker.transport("n1", will=will))
            await nursery.start(agent.run)
            runtime = agent.runtime
            assert runtime is not None

            def detail() -> dict[str, Any]:
                entry: dict[str, Any] = dict(runtime.status().s1.units["bench"].detail or {})
                return entry

            def handled() -> int:
                return int(detail()["readings_received"] + detail()["readings_ignored"])

            def bench_keys() -> dict[str, Any]:
                assert agent.replicator is not None
                doc = agent.replicator.docs["mesh"].state.value()
                return {k: v for k, v in doc.items() if k.startswith("n1/r/bench.")}

            sent = 0
            for generation in range(generations):
                if generation:
                    await device.restart(firmware(generation))
                await device.wait_connected()
                names = [f"g{generation}_s{i}" for i in range(16)]
                await _until(lambda n=names: detail()["sensors"] == n, "the unit to see the HELLO")
                sent += await device.send_readings(float(generation))
                await _until(
                    lambda n=sent: handled() == n,
                    "the readings",
                )
            # Readings on an admitted channel: once the second is replicated, the
            # batch that carried the first (and everything before it) is complete.
            await device.restart(firmware(0))
            await device.wait_connected()
            for marker in (1000.0, 1001.0):
                await device.send_readings(marker)
                await _until(
                    lambda m=marker: bench_keys().get("n1/r/bench.g0_s0", [None])[0] == m,
                    "a reading to be replicated",
                    timeout=20,
                )
            assert set(bench_keys()) == admitted
            info = detail()
            assert info["max_channels"] == MAX_CHANNELS
            assert info["channels_refused"] == (generations - MAX_CHANNELS // 16) * 16
            assert info["refused"][-1] == f"sensor g{generations - 1}_s15"
            assert info["readings_ignored"] == (generations - MAX_CHANNELS // 16) * 16
            reasons = [a.signal.reason for a in runtime.algedonic.alarms.values()
                       if a.signal.source == "s1.bench"]  # fmt: skip
            assert reasons == [
                f"device churn-1 on {device.path} declares more than {MAX_CHANNELS} channels; "
                "refused sensor g4_s0, sensor g4_s1, sensor g4_s2, sensor g4_s3 ..."
            ]
            agent.stop()
            nursery.cancel_scope.cancel()
