"""VSM_UNITS: the [[units]] array from one environment variable (agent/config/env.py).

A balena device has no file to edit: its units come from a fleet or device
variable holding JSON or TOML. The value is read like the ``[[units]]`` of a
node.toml (same keys, same checks), replaces the base file's units, and any
mistake in it is one ``config error: VSM_UNITS ...`` line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from support.env_agent import env_agent

from vsm_edge.agent import ConfigError
from vsm_edge.agent.config.env import MAX_UNITS_VALUE, config_from_env, env_table

UNITS_JSON = json.dumps(
    [
        {"name": "air-temp", "kind": "simulated-sensor", "options": {"mean": 21.5, "unit": "°C"}},
        {"name": "fan", "kind": "simulated-actuator"},
    ]
)
UNITS_TOML = """
[[units]]
name = "air-temp"
kind = "simulated-sensor"
[units.options]
mean = 21.5
unit = "°C"

[[units]]
name = "fan"
kind = "simulated-actuator"
"""
UNITS_TOML_ONE_LINE = (
    'units = [{name = "air-temp", kind = "simulated-sensor", options = {mean = 21.5, '
    'unit = "°C"}}, {name = "fan", kind = "simulated-actuator"}]'
)


@pytest.mark.parametrize("text", [UNITS_JSON, UNITS_TOML, UNITS_TOML_ONE_LINE])
def test_units_from_json_toml_or_one_line_toml_are_the_same_units(text: str) -> None:
    config = config_from_env({"VSM_NODE_ID": "n1", "VSM_UNITS": text})
    assert [(u.name, u.kind) for u in config.units] == [
        ("air-temp", "simulated-sensor"),
        ("fan", "simulated-actuator"),
    ]
    assert dict(config.units[0].options) == {"mean": 21.5, "unit": "°C"}
    assert dict(config.units[1].options) == {}


def test_units_are_the_same_as_those_of_a_node_toml(tmp_path: Path) -> None:
    from vsm_edge.agent.config.loader import load_config

    node = tmp_path / "node.toml"
    node.write_text('[node]\nid = "n1"\n' + UNITS_TOML)
    from_file = load_config(node).units
    assert config_from_env({"VSM_NODE_ID": "n1", "VSM_UNITS": UNITS_JSON}).units == from_file


def test_units_replace_those_of_the_base_file(tmp_path: Path) -> None:
    base = tmp_path / "node.toml"
    base.write_text('[node]\nid = "n1"\n[[units]]\nname = "old"\nkind = "simulated-sensor"\n')
    config = config_from_env({"VSM_CONFIG": str(base), "VSM_UNITS": UNITS_JSON})
    assert [u.name for u in config.units] == ["air-temp", "fan"]
    # "[]" says: no units; an empty variable counts as unset (the file's units stay)
    assert config_from_env({"VSM_CONFIG": str(base), "VSM_UNITS": "[]"}).units == ()
    kept = config_from_env({"VSM_CONFIG": str(base), "VSM_UNITS": "  "})
    assert [u.name for u in kept.units] == ["old"]


def test_units_is_a_top_level_key_of_the_table() -> None:
    table = env_table({"VSM_UNITS": '[{"name": "a", "kind": "k"}]'})
    assert table == {"units": [{"name": "a", "kind": "k"}]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[{"name": "a", "kind": ', "config error: VSM_UNITS: invalid JSON: "),
        ("[[units]]\nname = ", "config error: VSM_UNITS: invalid TOML: "),
        ('{"units": []}', "config error: VSM_UNITS: got dict: expected a JSON array"),
        ('name = "a"', "config error: VSM_UNITS: TOML key 'name' is not units"),
        ('units = "a"', "config error: VSM_UNITS: got str: expected a JSON array"),
        ('["a"]', "config error: VSM_UNITS (units[0]): expected a table, got a string"),
        ('[{"name": "a"}]', "config error: VSM_UNITS (units[0].kind): required"),
        ('[{"kind": "k"}]', "config error: VSM_UNITS (units[0].name): required"),
        (
            '[{"name": "a", "kind": "k"}, {"name": "a", "kind": "k"}]',
            "config error: VSM_UNITS (units[1].name): duplicate unit name 'a'",
        ),
        ('[{"name": "a", "kind": "k", "colour": 1}]', "VSM_UNITS (units[0].colour): unknown key"),
        (
            '[{"name": "a", "kind": "k", "options": 5}]',
            "config error: VSM_UNITS (units[0].options): expected a table",
        ),
        (
            '[{"name": "a", "kind": "k", "options": {"x": null}}]',
            "config error: VSM_UNITS (units[0].options.x): null is not allowed",
        ),
        ('[{"name": "a", "kind": "k", "options": {"x": NaN}}]', "VSM_UNITS: invalid JSON"),
        ('[{"name": "a b", "kind": "k"}]', "config error: VSM_UNITS (units[0].name): "),
        ("[" + " " * MAX_UNITS_VALUE + "]", "VSM_UNITS (units): longer than 65536 characters"),
        (
            '[{"name": "a", "kind": "k", "options": {"x": ' + "[" * 5000 + "]" * 5000 + "}}]",
            "config error: VSM_UNITS: invalid JSON: arrays or tables nested too deeply",
        ),
        (
            "units = " + "[" * 5000 + "]" * 5000,
            "config error: VSM_UNITS: invalid TOML: arrays or tables nested too deeply",
        ),
        (
            '[{"name": "a", "kind": "k", "options": {"x": ' + "[" * 40 + "]" * 40 + "}}]",
            "[0][0]): nested deeper than 32",
        ),
    ],
)
def test_bad_units_are_one_error_naming_vsm_units(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env({"VSM_NODE_ID": "n1", "VSM_UNITS": text})
    assert message in str(info.value)
    assert "\n" not in str(info.value).split(" (expected")[0].strip()


def test_units_longer_than_other_variables_are_accepted() -> None:
    units = [
        {"name": f"u{i}", "kind": "simulated-sensor", "options": {"mean": float(i)}}
        for i in range(100)
    ]
    text = json.dumps(units)
    assert len(text) > 4096  # the limit of the other variables
    assert len(config_from_env({"VSM_NODE_ID": "n1", "VSM_UNITS": text}).units) == 100


@pytest.mark.integration
def test_run_env_reports_bad_units_in_one_line_and_exits_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "run", "--env"],
        env={"VSM_NODE_ID": "n1", "VSM_UNITS": '[{"name": "a"}]', "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith("config error: VSM_UNITS (units[0].kind): required"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
def test_run_env_runs_the_units_of_vsm_units(tmp_path: Path, mosquitto: Mosquitto) -> None:
    env = {
        "VSM_NODE_ID": "env1",
        "VSM_MESH": "envunits",
        "VSM_DATA_DIR": str(tmp_path / "state"),
        "VSM_BROKER_URL": mosquitto.url,
        "VSM_DISCOVERY_ENABLED": "false",
        "VSM_STATUS_PORT": "0",
        "VSM_UNITS": UNITS_TOML_ONE_LINE,
    }
    with env_agent(env, tmp_path / "state", tmp_path) as status:
        deadline = time.monotonic() + 30
        while True:
            units = status()["s1"]["units"]
            if {"air-temp", "fan"} <= set(units) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert {"air-temp", "fan"} <= set(units), units


def test_a_base_file_nested_too_deeply_is_a_config_error(tmp_path: Path) -> None:
    """tomllib recurses: a deep file was a RecursionError traceback, for a file or VSM_CONFIG."""
    from vsm_edge.agent.config.loader import load_config

    deep = tmp_path / "node.toml"
    deep.write_text('[node]\nid = "n1"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="invalid TOML: arrays or tables nested too deeply"):
        load_config(deep)
    with pytest.raises(ConfigError, match=r"VSM_CONFIG: .*nested too deeply"):
        config_from_env({"VSM_CONFIG": str(deep)})
