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
from support.devices import simulator_process
from support.vsm import config, running

from vsm_edge.agent import Runtime
from vsm_edge.agent._cli import main as cli_main
from vsm_edge.sync import MemoryBroker

pytestmark = pytest.mark.integration


def _bench(link: Path, **options: Any) -> dict[str, Any]:
    return {"name": "bench", "kind": "firmware-bridge",
            "options": {"device": str(link), "reopen_max_s": 0.2, **options}}  # fmt: skip


def _unit(rt: Runtime) -> dict[str, Any]:
    entry: dict[str, Any] = rt.status()["s1"]["units"]["bench"]
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
    from vsm_edge.agent._node import Agent

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
                assert a.runtime.status()["s1"]["units"]["bench"]["emitted"] > 0
                a.stop()
                b.stop()
        sim.stop()
