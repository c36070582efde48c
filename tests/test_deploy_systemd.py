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

Sensors: the commented drop-in ``vsm-edge.service.d/sensors.conf.example``
must parse next to the unit (``systemd-analyze verify`` reads drop-in folders
beside a unit file) and open I2C, GPIO, SPI and USB serial; the unit's /proc
options, mounted for real in a private mount namespace as systemd would, must
leave the host-wide files of the ``system`` unit kind readable.
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
SENSORS = ROOT / "deploy" / "systemd" / "vsm-edge.service.d" / "sensors.conf.example"
# what the system unit kind reads from /proc (psutil reads the same files)
SYSTEM_KIND_PROC_FILES = ("loadavg", "stat", "meminfo", "net/dev")


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


def _local_copy(tmp_path: Path, *, sensors: bool = False) -> Path:
    """The unit with this venv's binary; ``sensors``: with the drop-in installed beside it."""
    exe = Path(sys.executable).parent / "vsm-edge"
    if not exe.exists():
        pytest.skip(f"{exe} is missing (run through scripts/test.sh)")
    text = UNIT.read_text().replace("/opt/vsm-edge/bin/vsm-edge", str(exe))
    path = tmp_path / "vsm-edge.service"
    path.write_text(text)
    if sensors:
        drop_ins = tmp_path / "vsm-edge.service.d"
        drop_ins.mkdir()
        (drop_ins / "sensors.conf").write_text(SENSORS.read_text())
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


def test_unit_says_what_sensors_need_and_where_the_drop_in_is() -> None:
    text = UNIT.read_text()
    assert "vsm-edge.service.d/sensors.conf.example" in text
    for bus in ("I2C", "GPIO", "SPI"):
        assert bus in text
    assert SENSORS.exists()
    assert not SENSORS.name.endswith(".conf"), "systemd would read a .conf in the repo's folder"
    doc = (ROOT / "docs" / "deploy.md").read_text()
    assert "sensors.conf.example" in doc
    assert "216/GROUP" in doc  # a missing group stops the service: the docs say so


def test_sensors_drop_in_opens_the_buses_and_adds_their_groups() -> None:
    drop_in = parse_unit(SENSORS.read_text())
    assert set(drop_in) == {"Service"}, "a drop-in of the service section only"
    service = drop_in["Service"]
    groups = set(" ".join(service["SupplementaryGroups"]).split())
    assert {"dialout", "gpio", "i2c"} <= groups
    allowed = dict(v.split() for v in service["DeviceAllow"])
    for device in ("char-i2c", "char-gpiochip", "char-spi", "char-ttyUSB", "char-ttyACM"):
        assert allowed.get(device) == "rw", device
    assert service["ProcSubset"] == ["all"]
    # it loosens devices, groups and /proc only: the rest of the hardening stays
    assert set(service) == {"SupplementaryGroups", "DeviceAllow", "ProcSubset"}


def test_systemd_analyze_verify_accepts_the_unit_with_the_sensors_drop_in(
    tmp_path: Path,
) -> None:
    tool = require_tool("systemd-analyze", "/usr/bin/systemd-analyze")
    path = _local_copy(tmp_path, sensors=True)
    proc = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    # the drop-in was read: a misspelt key in it is reported with its file name
    drop_in = tmp_path / "vsm-edge.service.d" / "sensors.conf"
    drop_in.write_text(drop_in.read_text().replace("ProcSubset=", "ProcSubst="))
    bad = subprocess.run(
        [tool, "verify", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert f"{drop_in}:" in bad.stderr
    assert "Unknown key 'ProcSubst'" in bad.stderr
    drop_in.write_text(SENSORS.read_text())
    # merged with the unit: the devices are in the unit's device ACL, and still rated OK
    security = subprocess.run(
        [tool, "security", "--offline=true", "--no-pager", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", security.stdout)
    if match is None:
        pytest.skip(f"this systemd-analyze has no offline security check: {security.stderr[:200]}")
    acl = next(line for line in security.stdout.splitlines() if "DeviceAllow=" in line)
    for device in ("char-i2c:rw", "char-gpiochip:rw", "char-spi:rw", "char-ttyUSB:rw"):
        assert device in acl, acl
    print(f"with sensors.conf: exposure {match.group(1)} {match.group(2)}")
    assert match.group(2) in ("OK", "SAFE"), security.stdout[-3000:]


def _proc_mount_options(service: dict[str, list[str]]) -> str:
    """The proc mount options systemd derives from ProtectProc= and ProcSubset=."""
    options = []
    protect = service.get("ProtectProc", ["default"])[-1]
    if protect != "default":
        options.append(f"hidepid={protect}")
    if service.get("ProcSubset", ["all"])[-1] == "pid":
        options.append("subset=pid")
    return ",".join(options) or "defaults"


def test_unit_leaves_the_system_kinds_proc_files_readable(tmp_path: Path) -> None:
    unshare = require_tool("unshare", "/usr/bin/unshare")
    service = parse_unit(UNIT.read_text())["Service"]
    options = _proc_mount_options(service)
    mnt = tmp_path / "proc"
    mnt.mkdir()
    # as systemd does for the service: a proc instance with the unit's options, mounted
    # in a private mount (and pid) namespace; then read the files as the unit would
    check = " ; ".join(
        f'if [ -r "{mnt}/{name}" ] && head -c1 "{mnt}/{name}" >/dev/null; then echo "ok {name}"; '
        f'else echo "missing {name}"; fi'
        for name in SYSTEM_KIND_PROC_FILES
    )
    script = f'mount -t proc -o {options} proc "{mnt}" || exit 99; {check}'
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    proc = subprocess.run(
        [unshare, *userns, "--mount", "--pid", "--fork", "sh", "-c", script],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a proc instance here ({options}): {proc.stderr.strip()[:200]}")
    print(f"proc mounted with {options}: {proc.stdout.split()}")
    assert proc.stdout.split("\n")[:-1] == [f"ok {name}" for name in SYSTEM_KIND_PROC_FILES], (
        f"{options}: {proc.stdout}"
    )


def test_proc_subset_pid_would_hide_them(tmp_path: Path) -> None:
    """The check above can fail: with ProcSubset=pid the same files are gone."""
    unshare = require_tool("unshare", "/usr/bin/unshare")
    mnt = tmp_path / "proc"
    mnt.mkdir()
    script = f'mount -t proc -o hidepid=invisible,subset=pid proc "{mnt}" || exit 99; ls "{mnt}"'
    userns = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    proc = subprocess.run(
        [unshare, *userns, "--mount", "--pid", "--fork", "sh", "-c", script],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a proc instance with subset=pid here: {proc.stderr[:200]}")
    names = set(proc.stdout.split())
    assert "self" in names
    assert not {"loadavg", "stat", "meminfo"} & names, names


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
