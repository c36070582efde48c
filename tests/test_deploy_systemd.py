"""deploy/systemd: the unit file, verified by systemd's own tools where present.

``systemd-analyze verify`` (skipped with its reason when missing; a failure
under CI=true) checks the syntax and the ExecStart binary (the unit's
/opt path is swapped for this venv's ``vsm-edge``); ``systemd-analyze
security --offline`` rates the hardening. Static checks hold the promises of
docs/deploy.md: a dedicated user, restart on failure, SIGTERM with a stop
timeout above the agent's 5 s flush, and hardening that leaves serial ports
and mDNS usable. A real ``vsm-edge run`` process, started with the unit's
command line, is stopped with SIGTERM and must exit 0 before the unit's
TimeoutStopSec.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.brokers import Mosquitto, mosquitto, mosquitto_factory, require_tool  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy" / "systemd" / "vsm-edge.service"
SYSUSERS = ROOT / "deploy" / "systemd" / "vsm-edge.sysusers.conf"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {raw!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section][key]
    assert len(values) == 1, f"{key} set {len(values)} times"
    return values[0]


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|ms)?", text)
    assert match, text
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value


def _local_copy(tmp_path: Path) -> Path:
    exe = Path(sys.executable).parent / "vsm-edge"
    if not exe.exists():
        pytest.skip(f"{exe} is missing (run through scripts/test.sh)")
    text = UNIT.read_text().replace("/opt/vsm-edge/bin/vsm-edge", str(exe))
    path = tmp_path / "vsm-edge.service"
    path.write_text(text)
    return path


def test_unit_runs_the_agent_as_a_dedicated_user_and_restarts_on_failure() -> None:
    unit = parse_unit(UNIT.read_text())
    service = unit["Service"]
    assert one(unit, "Service", "User") == "vsm-edge"
    assert one(unit, "Service", "Group") == "vsm-edge"
    assert "dialout" in one(unit, "Service", "SupplementaryGroups").split()
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[0].startswith("/")
    assert argv[0].endswith("/vsm-edge")
    assert argv[1] == "run"
    assert argv[argv.index("--config") + 1] == "/etc/vsm-edge/node.toml"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    # the agent flushes within runtime.shutdown_timeout_s (at most 5 s): systemd waits longer
    assert _seconds(one(unit, "Service", "TimeoutStopSec")) > 5
    assert one(unit, "Service", "StateDirectory") == "vsm-edge"
    assert "multi-user.target" in unit["Install"]["WantedBy"]
    assert "network-online.target" in one(unit, "Unit", "Wants")
    assert "User" in service
    assert "DynamicUser" not in service
    users = SYSUSERS.read_text()
    assert re.search(r"^u vsm-edge ", users, re.M)
    assert re.search(r"^m vsm-edge dialout$", users, re.M)


def test_hardening_keeps_serial_ports_and_mdns_usable() -> None:
    service = parse_unit(UNIT.read_text())["Service"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service.get("PrivateDevices", ["no"]) == ["no"], "would hide /dev/ttyUSB*"
    assert service["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in service["DeviceAllow"]}
    assert {"char-ttyUSB", "char-ttyACM"} <= allowed
    families = set(" ".join(service["RestrictAddressFamilies"]).split())
    assert {"AF_INET", "AF_NETLINK"} <= families, "MQTT, mDNS and interface addresses"
    assert "PrivateNetwork" not in service
    assert "IPAddressDeny" not in service
    assert service["CapabilityBoundingSet"] == [""]


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze", "/usr/bin/systemd-analyze")
    path = _local_copy(tmp_path)
    proc = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # unknown keys are only warnings: none allowed
    # and it does catch mistakes: a misspelt key is reported
    broken = tmp_path / "broken.service"
    broken.write_text(path.read_text().replace("KillMode=", "KilMode="))
    bad = subprocess.run(
        [tool, "verify", str(broken)], capture_output=True, text=True, timeout=60, check=False
    )
    assert "Unknown key 'KilMode'" in bad.stderr


def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    tool = require_tool("systemd-analyze", "/usr/bin/systemd-analyze")
    path = _local_copy(tmp_path)
    proc = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", proc.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security check: {proc.stderr[:200]}")
    score, rating = float(match.group(1)), match.group(2)
    print(f"systemd-analyze security: exposure {score} {rating}")
    assert rating in ("OK", "SAFE"), proc.stdout[-3000:]


@pytest.mark.integration
def test_sigterm_stops_the_agent_cleanly_within_the_stop_timeout(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    unit = parse_unit(UNIT.read_text())
    timeout = _seconds(one(unit, "Service", "TimeoutStopSec"))
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nid = "sd1"\nmesh = "sd"\ndata_dir = "{tmp_path / "state"}"\n'
        f'[broker]\nurl = "{mosquitto.url}"\n[discovery]\nenabled = false\n'
        "[status]\nport = 0\n"
        '[[units]]\nname = "temp"\nkind = "simulated-sensor"\n'
    )
    argv[argv.index("--config") + 1] = str(config)
    argv[0:1] = [sys.executable, "-m", "vsm_edge.agent"]  # this venv's agent
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        port_file = tmp_path / "state" / "status.port"
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=timeout)
        took = time.monotonic() - started
        print(f"SIGTERM -> exit {proc.returncode} after {took:.2f} s")
        assert proc.returncode == 0, err.decode()[-2000:]
        assert (tmp_path / "state" / "vsm-state.json").exists()  # flushed on the way out
        # --log-format json: every stderr line that is a log record is one JSON object
        for line in err.decode().splitlines():
            if line.startswith("{"):
                assert line.endswith("}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
