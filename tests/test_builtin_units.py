"""The built-in kinds ``system``, ``onewire`` and ``exec`` on real parts.

``system`` and ``onewire`` read a real file tree laid out as procfs and sysfs
(``proc_root``/``sys_root`` point at it); ``exec`` runs real programs (small
Python scripts and coreutils). Each runs inside a real runtime: readings
reach the bus with their units of measure, a failing source raises pain once
and clears it when it reads again.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from support.vsm import config, running

from vsm_edge.agent import Runtime, UnitError, load_unit
from vsm_edge.agent.units.exec import ExecUnit, parse_output
from vsm_edge.agent.units.onewire import OneWireError, OneWireUnit, parse_w1_slave
from vsm_edge.agent.units.system import SystemUnit

WAIT_S = 20.0  # a bound on waiting for what a poll every 50 ms shows at once

LOADAVG = "0.52 0.34 0.25 2/345 6789\n"
STAT_1 = "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n"
STAT_2 = "cpu  175 0 125 900 0 0 0 0 0 0\ncpu0 175 0 125 900 0 0 0 0 0 0\n"  # 100 busy, 100 idle
MEMINFO = "MemTotal:        4000 kB\nMemFree:          500 kB\nMemAvailable:    1000 kB\n"
NET_DEV = (
    "Inter-|   Receive                                                |  Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs"
    " drop fifo colls carrier compressed\n"
    "    lo:  999 9 0 0 0 0 0 0  999 9 0 0 0 0 0 0\n"
    "  eth0: 1234 10 0 0 0 0 0 0 5678 20 0 0 0 0 0 0\n"
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def host_tree(root: Path) -> Path:
    """A file tree laid out as /proc and /sys of a host with one hwmon chip and a zone."""
    write(root / "proc" / "loadavg", LOADAVG)
    write(root / "proc" / "stat", STAT_1)
    write(root / "proc" / "meminfo", MEMINFO)
    write(root / "proc" / "net" / "dev", NET_DEV)
    hw = root / "sys" / "class" / "hwmon" / "hwmon0"
    write(hw / "name", "coretemp\n")
    write(hw / "temp1_input", "45500\n")
    write(hw / "temp1_label", "Package id 0\n")
    write(hw / "temp2_input", "41000\n")  # no label: named after the input
    write(hw / "fan1_input", "1200\n")
    zone = root / "sys" / "class" / "thermal" / "thermal_zone0"
    write(zone / "type", "cpu-thermal\n")
    write(zone / "temp", "47250\n")
    return root


def w1_tree(root: Path) -> Path:
    devices = root / "sys" / "bus" / "w1" / "devices"
    write(devices / "28-000000000001" / "temperature", "21437\n")
    write(  # an older kernel: only w1_slave
        devices / "28-000000000002" / "w1_slave",
        "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n",
    )
    write(devices / "w1_bus_master1" / "name", "w1_bus_master1\n")  # not a sensor
    return root


def readings_of(rt: Runtime) -> dict[tuple[str, str], float]:
    """The latest value of each (unit, reading) the runtime admitted, as it arrives."""
    latest: dict[tuple[str, str], float] = {}
    rt.on_reading.append(
        lambda unit, reading, value, stamp: latest.update({(unit, reading): value})
    )
    return latest


def alarms(rt: Runtime, unit: str) -> list[tuple[str, str, bool]]:
    """(valence, reason, acked) of the unit's alarms, oldest first."""
    return [
        (a.signal.valence, a.signal.reason, a.acked_at is not None)
        for a in rt.algedonic.alarms.values()
        if a.signal.source == f"s1.{unit}"
    ]


async def until(predicate: Callable[[], Any], what: str) -> Any:
    with trio.move_on_after(WAIT_S):
        while not (result := predicate()):
            await trio.sleep(0.02)
        return result
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def cfg(kind: str, options: dict[str, Any], name: str = "u") -> Any:
    return config({"units": [{"name": name, "kind": kind, "options": options}]})


# -- system -------------------------------------------------------------------------


def test_system_reads_every_source_of_a_procfs_and_sysfs_tree(tmp_path: Path) -> None:
    root = host_tree(tmp_path)
    unit = SystemUnit("host", {"proc_root": str(root), "sys_root": str(root), "disks": ["/"]})
    first = unit.poll()
    assert first.problems == {}
    assert "cpu_percent" not in first.values  # no delta yet
    write(root / "proc" / "stat", STAT_2)
    got = unit.poll()
    assert got.problems == {}
    values = {name: (v.value, v.unit) for name, v in got.values.items()}
    assert values["load_1"] == (0.52, "")
    assert values["load_5"] == (0.34, "")
    assert values["load_15"] == (0.25, "")
    assert values["cpu_percent"] == (50.0, "%")
    assert values["memory_used_percent"] == (75.0, "%")
    assert values["memory_available"] == (1024000.0, "B")
    assert values["temp_coretemp_Package_id_0"] == (45.5, "°C")
    assert values["temp_coretemp_temp2"] == (41.0, "°C")
    assert values["thermal_0_cpu-thermal"] == (47.25, "°C")
    assert values["fan_coretemp_fan1"] == (1200.0, "RPM")
    assert values["net_eth0_rx_bytes"] == (1234.0, "B")
    assert values["net_eth0_tx_bytes"] == (5678.0, "B")
    assert "net_lo_rx_bytes" not in values  # loopback unless asked for
    st = os.statvfs("/")
    assert values["disk_root_free"] == (float(st.f_bavail * st.f_frsize), "B")
    assert 0.0 <= values["disk_root_used_percent"][0] <= 100.0


def test_system_without_hwmon_or_thermal_has_no_such_readings_and_no_problem(
    tmp_path: Path,
) -> None:
    root = host_tree(tmp_path)
    for part in ("hwmon", "thermal"):
        for p in sorted((root / "sys" / "class" / part).rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
    got = SystemUnit("host", {"proc_root": str(root), "sys_root": str(root)}).poll()
    assert got.problems == {}
    assert not [r for r in got.values if r.startswith(("temp_", "thermal_", "fan_"))]


def test_system_sources_and_interfaces_select_what_is_read(tmp_path: Path) -> None:
    root = host_tree(tmp_path)
    unit = SystemUnit(
        "host",
        {"proc_root": str(root), "sources": ["network"], "interfaces": ["lo"]},
    )
    assert sorted(unit.poll().values) == ["net_lo_rx_bytes", "net_lo_tx_bytes"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sources": ["load", "gpu"]}, "unit host: option sources has 'gpu'"),
        ({"period_s": 0}, "unit host: option period_s must be > 0"),
        ({"disks": "/"}, "unit host: option disks must be a list"),
        ({"proc": "/"}, "unit host: unknown option 'proc'"),
        ({"pain_intensity": 2}, "unit host: option pain_intensity must be <= 1"),
    ],
)
def test_system_refuses_bad_options_naming_them(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UnitError) as err:
        load_unit("host", "system", options)
    assert str(err.value).startswith(message.replace("unit host:", "unit host (system):"))


async def test_system_in_a_runtime_pain_when_a_source_fails_cleared_when_it_reads(
    tmp_path: Path,
) -> None:
    root = host_tree(tmp_path)
    options = {"proc_root": str(root), "sys_root": str(root), "period_s": 0.05}
    async with running(cfg("system", options, "host")) as rt:
        latest = readings_of(rt)
        await until(lambda: ("host", "load_1") in latest, "the first poll")
        write(root / "proc" / "stat", STAT_2)  # the CPU moved: a delta
        await until(lambda: ("host", "cpu_percent") in latest, "a poll with a cpu delta")
        assert latest[("host", "cpu_percent")] == 50.0
        assert latest[("host", "load_1")] == 0.52
        assert latest[("host", "temp_coretemp_Package_id_0")] == 45.5
        specs = rt.units["host"].specs
        assert (specs["temp_coretemp_Package_id_0"].unit, specs["cpu_percent"].unit) == ("°C", "%")
        assert specs["load_1"].period_s == 0.05
        assert alarms(rt, "host") == []

        (root / "proc" / "loadavg").unlink()
        (pain,) = await until(lambda: alarms(rt, "host"), "pain for the missing loadavg")
        assert pain[0] == "pain"
        assert not pain[2]
        assert pain[1].startswith("system: load: ")
        assert "loadavg" in pain[1]
        assert "No such file" in pain[1]
        await until(lambda: rt.units["host"].unit.status()["polls"] >= 5, "more polls")  # type: ignore[attr-defined]
        assert len(alarms(rt, "host")) == 1  # once, not once a poll
        latest.pop(("host", "memory_used_percent"))
        await until(lambda: ("host", "memory_used_percent") in latest, "other sources still read")

        write(root / "proc" / "loadavg", "1.5 1.0 0.5 1/2 3\n")
        await until(lambda: len(alarms(rt, "host")) == 2, "the pain cleared")
        assert [(v, acked) for v, _, acked in alarms(rt, "host")] == [
            ("pain", True),
            ("pleasure", False),
        ]
        await until(lambda: latest[("host", "load_1")] == 1.5, "load read again")
        rt.stop()


async def test_system_malformed_proc_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    root = host_tree(tmp_path)
    write(root / "proc" / "meminfo", "garbage\n")
    got = SystemUnit("host", {"proc_root": str(root), "sys_root": str(root)}).poll()
    assert got.problems == {"memory": "no MemTotal"}
    assert "load_1" in got.values


# -- onewire ------------------------------------------------------------------------


def test_onewire_reads_each_sensor_from_temperature_or_w1_slave(tmp_path: Path) -> None:
    root = w1_tree(tmp_path)
    unit = OneWireUnit("w1", {"sys_root": str(root), "names": {"28-000000000002": "tank"}})
    got = unit.poll()
    assert got.problems == {}
    assert {r: (v.value, v.unit) for r, v in got.values.items()} == {
        "t_28_000000000001": (21.437, "°C"),
        "tank": (23.125, "°C"),
    }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("72 01 4b 46 7f ff 0e 10 57 : crc=57 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n", "CRC"),
        ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n", "two lines"),
        ("00 00 : crc=00 YES\n00 00 t=85000\n", "power-on"),
        ("00 00 : crc=00 YES\n00 00 t=abc\n", "not a temperature"),
    ],
)
def test_w1_slave_failures_are_refused(text: str, problem: str) -> None:
    with pytest.raises(OneWireError, match=problem):
        parse_w1_slave(text)


async def test_onewire_in_a_runtime_crc_failure_is_pain_and_recovery_clears_it(
    tmp_path: Path,
) -> None:
    root = w1_tree(tmp_path)
    slave = root / "sys" / "bus" / "w1" / "devices" / "28-000000000002" / "w1_slave"
    good = slave.read_text()
    options = {"sys_root": str(root), "period_s": 0.05}
    async with running(cfg("onewire", options, "w1")) as rt:
        latest = readings_of(rt)
        await until(lambda: ("w1", "t_28_000000000002") in latest, "both sensors")
        assert latest[("w1", "t_28_000000000001")] == 21.437
        assert rt.units["w1"].specs["t_28_000000000001"].unit == "°C"

        slave.write_text(good.replace("YES", "NO"))
        (pain,) = await until(lambda: alarms(rt, "w1"), "pain for the CRC failure")
        assert pain[1] == "onewire: 28-000000000002: CRC check failed (NO)"
        slave.write_text(good)
        await until(lambda: len(alarms(rt, "w1")) == 2, "the pain cleared")
        assert alarms(rt, "w1")[1][0] == "pleasure"

        # a sensor that leaves the bus is a problem too (it was seen)
        for p in slave.parent.iterdir():
            p.unlink()
        slave.parent.rmdir()
        await until(lambda: len(alarms(rt, "w1")) == 3, "pain for the sensor gone")
        assert alarms(rt, "w1")[2][1] == "onewire: 28-000000000002: not on the bus"
        rt.stop()


def test_onewire_no_bus_is_a_problem(tmp_path: Path) -> None:
    got = OneWireUnit("w1", {"sys_root": str(tmp_path)}).poll()
    assert list(got.problems) == ["bus"]
    assert "No such file" in got.problems["bus"]


def test_onewire_refuses_a_bad_sensor_id() -> None:
    with pytest.raises(UnitError, match=r"unit w1 \(onewire\): option sensors has 'x'"):
        load_unit("w1", "onewire", {"sensors": ["x"]})


# -- exec ---------------------------------------------------------------------------


def script(tmp: Path, name: str, body: str) -> list[str]:
    path = tmp / name
    path.write_text(body)
    return [sys.executable, str(path)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("21.5\n", {"value": 21.5}),
        ('{"a": 1, "b-2": 2.5}', {"a": 1.0, "b-2": 2.5}),
    ],
)
def test_exec_output_parsed(text: str, expected: dict[str, float]) -> None:
    assert parse_output(text, "value") == expected


@pytest.mark.parametrize(
    "text", ["", "abc", "[1, 2]", '{"a": "x"}', '{"a b": 1}', "true", '{"a": NaN}']
)
def test_exec_output_refused(text: str) -> None:
    with pytest.raises(Exception, match="output"):
        parse_output(text, "value")


async def test_exec_number_output_is_a_reading_with_its_unit(tmp_path: Path) -> None:
    options = {"argv": ["/bin/echo", "42.5"], "period_s": 0.05, "unit": "W", "reading": "power"}
    async with running(cfg("exec", options, "meter")) as rt:
        latest = readings_of(rt)
        await until(lambda: ("meter", "power") in latest, "the reading")
        assert latest[("meter", "power")] == 42.5
        assert rt.units["meter"].specs["power"].unit == "W"
        rt.stop()


async def test_exec_json_output_gives_a_reading_per_key_and_failure_is_pain(
    tmp_path: Path,
) -> None:
    flag = tmp_path / "fail"
    argv = script(
        tmp_path,
        "probe.py",
        "import json, pathlib, sys\n"
        f"if pathlib.Path({str(flag)!r}).exists():\n"
        "    print('sensor bus stuck', file=sys.stderr); sys.exit(3)\n"
        "print(json.dumps({'temp': 20.5, 'humidity': 41}))\n",
    )
    async with running(cfg("exec", {"argv": argv, "period_s": 0.05}, "probe")) as rt:
        latest = readings_of(rt)
        await until(lambda: ("probe", "humidity") in latest, "both keys")
        assert (latest[("probe", "temp")], latest[("probe", "humidity")]) == (20.5, 41.0)

        flag.write_text("")
        (pain,) = await until(lambda: alarms(rt, "probe"), "pain for exit 3")
        assert pain[1] == f"exec: {sys.executable}: exited with 3: sensor bus stuck"
        flag.unlink()
        await until(lambda: len(alarms(rt, "probe")) == 2, "cleared")
        assert alarms(rt, "probe")[1][0] == "pleasure"
        rt.stop()


async def test_exec_timeout_is_pain(tmp_path: Path) -> None:
    argv = script(tmp_path, "slow.py", "import time\ntime.sleep(30)\n")
    options = {"argv": argv, "period_s": 0.05, "timeout_s": 0.2}
    async with running(cfg("exec", options, "slow")) as rt:
        (pain,) = await until(lambda: alarms(rt, "slow"), "pain for the timeout")
        assert pain[1].endswith("timed out after 0.2 s")
        rt.stop()


async def test_exec_missing_program_is_pain(tmp_path: Path) -> None:
    options = {"argv": [str(tmp_path / "nope")], "period_s": 0.05}
    async with running(cfg("exec", options, "gone")) as rt:
        (pain,) = await until(lambda: alarms(rt, "gone"), "pain for the missing program")
        assert pain[1].startswith(f"exec: {tmp_path / 'nope'}: cannot run: ")
        assert "No such file" in pain[1]
        rt.stop()


async def test_exec_command_passes_the_value_as_one_argument_without_a_shell(
    tmp_path: Path,
) -> None:
    out = tmp_path / "argv.json"
    argv = script(
        tmp_path,
        "set.py",
        f"import json, sys\nopen({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
        "sys.exit(0 if sys.argv[-1] != '13' else 4)\n",
    )
    options = {
        "commands": {
            "label": {"argv": [*argv, "--label", "{value}"], "kind": "text"},
            "level": {"argv": [*argv, "{value}"], "minimum": 0, "maximum": 20},
        }
    }
    async with running(cfg("exec", options, "ctl")) as rt:
        hostile = "x; touch /tmp/pwned $(id) `id` 'q' \"dq\""
        result = await rt.execute_command("ctl", "label", hostile)
        assert result.accepted, result.reason
        assert json.loads(out.read_text()) == ["--label", hostile]  # one argument, verbatim
        assert (await rt.execute_command("ctl", "level", 7)).accepted
        assert json.loads(out.read_text()) == ["7"]
        failed = await rt.execute_command("ctl", "level", 13)
        assert not failed.accepted
        assert failed.reason == f"s1: ctl: {Path(sys.executable).name}: exited with 4"
        refused = await rt.execute_command("ctl", "level", 99)
        assert not refused.accepted
        assert "above maximum 20" in refused.reason
        rt.stop()


async def test_exec_trigger_command_runs_its_program_with_no_value(tmp_path: Path) -> None:
    """A trigger (a push button: Home Assistant's ``button``) takes no value."""
    out = tmp_path / "flushed"
    argv = script(tmp_path, "flush.py", f"open({str(out)!r}, 'a').write('x')\n")
    options = {"commands": {"flush": {"argv": argv, "kind": "trigger"}}}
    async with running(cfg("exec", options, "pump")) as rt:
        done = await rt.execute_command("pump", "flush", None)
        assert done.accepted, done.reason
        assert out.read_text() == "x"
        refused = await rt.execute_command("pump", "flush", 1)
        assert not refused.accepted
        assert "takes no value" in refused.reason
        assert out.read_text() == "x"  # not run
        rt.stop()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"commands": {"go": {"argv": ["x", "{value}"], "kind": "trigger"}}}, "takes no value"),
        ({}, "option argv is required"),
        ({"argv": "echo 1"}, "option argv must be a non-empty list of strings"),
        ({"argv": []}, "option argv must be a non-empty list"),
        ({"argv": ["x"], "timeout_s": 0}, "option timeout_s must be > 0"),
        ({"commands": {"go": {"argv": ["x"], "kind": "float"}}}, "commands.go.kind"),
        ({"commands": {"go": {"argv": ["x"], "shell": True}}}, "unknown key 'shell'"),
    ],
)
def test_exec_refuses_bad_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UnitError) as err:
        load_unit("e", "exec", options)
    assert str(err.value).startswith("unit e (exec): ")
    assert message in str(err.value)


def test_exec_unit_is_confirming() -> None:
    assert ExecUnit("e", {"argv": ["x"]}).confirms_commands is True


async def test_exec_output_past_the_bound_is_refused_and_stderr_keeps_its_tail(
    tmp_path: Path,
) -> None:
    # 1 MB on stdout (more than a pipe holds: read to the end, kept only to the bound)
    big = script(tmp_path, "big.py", "import sys\nsys.stdout.write('1' * 1_000_000)\n")
    noisy = script(
        tmp_path,
        "noisy.py",
        "import sys\nsys.stderr.write('x' * 1_000_000 + ' the end of it')\nsys.exit(2)\n",
    )
    unit = ExecUnit("e", {"argv": big})
    with pytest.raises(Exception, match="output larger than 65536 bytes"):
        await unit.execute(big)
    with pytest.raises(Exception, match=r"exited with 2: x+ the end of it$") as err:
        await unit.execute(noisy)
    assert len(str(err.value)) < 300
