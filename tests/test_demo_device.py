"""The demo's simulated microcontroller: started as a process, or a clear reason why not."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest
import trio
from support.status_scenario import agent_document

from vsm_edge.agent import parse_config
from vsm_edge.agent.cli.demo_device import DemoDevice, start_device
from vsm_edge.agent.vsm.status import VsmStatus

pytestmark = pytest.mark.integration


async def test_the_device_starts_prints_its_path_and_gives_a_unit(tmp_path: Path) -> None:
    with trio.fail_after(30):
        device = await start_device("n1", tmp_path)
        assert isinstance(device, DemoDevice), device
        try:
            assert device.path == str(tmp_path / "tty-n1-bench")
            assert os.path.realpath(device.path).startswith("/dev/pts/")  # noqa: ASYNC240
            toml = '[node]\nid = "n1"\n' + device.unit_toml()
            cfg = parse_config(tomllib.loads(toml))
            (unit,) = cfg.units
            assert (unit.name, unit.kind, unit.options["device"]) == (
                "bench", "firmware-bridge", device.path,
            )  # fmt: skip
        finally:
            await device.stop()
    assert device.process.returncode == 0


async def test_no_device_is_a_reason_not_a_failure(tmp_path: Path) -> None:
    (tmp_path / "tty-n1-bench").mkdir()  # the link cannot be made: the simulator refuses
    with trio.fail_after(30):
        reason = await start_device("n1", tmp_path)
    assert isinstance(reason, str)
    assert "cannot create the link" in reason


def test_report_counts_the_peers_holding_the_readings(tmp_path: Path) -> None:
    device = DemoDevice("n1", "/tmp/x", None, None)  # type: ignore[arg-type]
    samples = {
        "n2": [["n1/r/bench.temperature", 1, 30.0], ["n3/r/temp.celsius", 1, 5.0]],
        "n3": [["n1/r/bench.humidity", 1, 10.0], ["n1/r/bench.temperature", 2, 20.0]],
        "n4": [["n2/r/temp.celsius", 1, 1.0]],
    }
    files = {}
    for node, rows in samples.items():
        files[node] = tmp_path / f"{node}.json"
        files[node].write_text(json.dumps(rows))
    files["n5"] = tmp_path / "missing.json"  # a node that wrote nothing is skipped
    doc = agent_document()  # a live agent's status (captured), its unit made the device's
    doc["s1"]["units"] = {"bench": dict(
        doc["s1"]["units"]["temp"], readings=["temperature", "humidity"], emitted=9,
        detail={"device_id": "mcu", "connected": True, "readings_received": 9},
    )}  # fmt: skip
    report = device.report({"n1": VsmStatus.from_json(doc), "n2": None}, files)
    assert report["peers_holding_readings"] == ["n2", "n3"]
    assert report["replicated_updates"] == 3
    assert report["replication_ms"] == {"p50": 20.0, "p99": 30.0, "max": 30.0}
    assert (report["readings_received"], report["device_id"]) == (9, "mcu")
    assert (report["readings"], report["emitted"]) == (["temperature", "humidity"], 9)
    absent = device.report({"n1": None}, {})  # no status from the device's node
    assert (absent["readings"], absent["emitted"], absent["device_id"]) == ([], 0, None)
