"""A running agent does not load what it does not use: a real ``vsm-edge run`` process on
a real Mosquitto keeps numpy, the TFLite runtime and the aggregator's modules out of its
memory until something needs them (their RSS is measured in docs/benchmarks.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from support.mesh import AgentProcess, wait_until

# Shared objects that must not be mapped into an idle agent.
HEAVY_LIBRARIES = ("_multiarray_umath", "openblas", "libLiteRt", "pywrap_litert")


def mapped(pid: int) -> set[str]:
    names: set[str] = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6:
            names.add(parts[5].rsplit("/", 1)[-1])
    return names


@pytest.mark.integration
def test_a_running_agent_maps_neither_numpy_nor_the_tflite_runtime(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    agent = AgentProcess(tmp_path, "lean", mosquitto.url, sensors=2, protocol="5")
    agent.start()
    try:

        def emitted() -> dict[str, Any] | None:
            s = agent.status()
            units = (s or {}).get("s1", {}).get("units", {})
            return s if units and all(u["emitted"] > 0 for u in units.values()) else None

        status = wait_until(emitted, 60, "readings from both sensors")
        gateway = status["gateway"]
        assert (gateway["arbitrator"], gateway["arbitrator_state"]) == (True, "not-loaded")
        assert gateway["maybe"] == 0
        assert agent.proc is not None
        libs = mapped(agent.proc.pid)
        assert "libsqlite3" in " ".join(libs)  # the check sees real mappings
        heavy = sorted(lib for lib in libs if any(h in lib for h in HEAVY_LIBRARIES))
        assert heavy == [], heavy
    finally:
        agent.stop()


def test_the_run_command_imports_only_its_own_modules() -> None:
    code = (
        "import sys; from vsm_edge.agent.cli.main import build_parser; "
        "build_parser('run').parse_args(['run', '--config', 'x.toml']); "
        "import vsm_edge.agent.mesh.node, vsm_edge.agent.web.routes; "
        "heavy = {'numpy', 'prometheus_client', 'vsm_edge.agent.cli.aggregate', "
        "'vsm_edge.agent.cli.demo', 'vsm_edge.agent.cli.admin', 'ai_edge_litert', "
        "'vsm_edge.bridge'}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_help_still_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    for command in ("keygen", "run", "demo", "aggregate", "status", "alarm", "zone", "policy",
                    "simulate-device"):  # fmt: skip
        assert command in out.stdout
