"""The README's main job, run as a user runs it: `vsm-edge demo --json`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_demo_forms_a_mesh_survives_the_script_and_converges() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "demo", "--nodes", "3", "--duration", "10",
         "--json"],
        capture_output=True, text=True, timeout=170, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    progress = proc.stderr
    for step in ("mesh formed", "broker restart", "partition", "alarm", "converged"):
        assert step in progress, progress
    assert summary["nodes"] == 3
    assert summary["converged"] is True
    assert summary["messages"] > 0
    assert summary["bytes"] > 0
    conv = summary["convergence_ms"]
    assert conv["updates"] > 0
    assert 0 <= conv["p50"] <= conv["p99"]
    alarm = summary["alarm_propagation_ms"]
    assert alarm["heard_by"] == 2
    assert alarm["p50"] <= alarm["p99"]
    # acknowledged on n2: every node holds it acknowledged (mesh state)
    assert alarm["ack"]["by"] == "n2"
    assert sorted(alarm["ack"]["per_node_ms"]) == ["n1", "n2", "n3"]
    assert "acknowledged on all 3 nodes" in progress
    # an operator on n2's host commands n1's vent: in range done, out of range refused
    first, second = summary["commands"]
    assert (first["value"], first["status"]) == (40, "done"), first
    assert (second["value"], second["status"]) == (140, "refused"), second
    assert "above maximum 100" in second["why"]
    statuses = summary["statuses"]
    assert len(statuses) == 3
    for status in statuses:
        for key in ("node", "s1", "s2", "s3", "s4", "s5", "algedonic", "peers", "gateway"):
            assert key in status, key
        assert status["gateway"]["allow"] > 0
        assert len(status["replication"]["online_peers"]) == 2
    # n1's simulated microcontroller: its readings went MCU -> bridge -> S1 -> both peers
    device = summary["device"]
    assert device["node"] == "n1", device
    assert device["connected"] is True
    assert device["readings"] == ["temperature", "humidity"]
    assert device["readings_received"] > 0
    assert device["peers_holding_readings"] == ["n2", "n3"]
    # the flooding sensor on n2 was attenuated by S3 and its pain is visible
    n2 = next(s for s in statuses if s["node"]["id"] == "n2")
    attenuation = n2["s3"]["attenuation"]
    assert sum(attenuation["dropped"].values()) + sum(attenuation["aggregated"].values()) > 0
