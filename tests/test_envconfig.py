"""VSM_* environment variables -> the agent's config (agent/config/env.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.agent import ConfigError
from vsm_edge.agent.config.env import (
    ENV_VARS,
    RUN_ENV_VARS,
    config_from_env,
    env_table,
    overlay,
)

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_sets_its_key(tmp_path: Path) -> None:
    env = {
        "VSM_NODE_ID": "pi-7",
        "VSM_MESH": "greenhouses",
        "VSM_ZONE": "north",
        "VSM_DATA_DIR": "/data",
        "VSM_KEY_FILE": "/data/keys/node.key",
        "VSM_BROKER_URL": "mqtts://broker.example:8883",
        "VSM_BROKER_TLS": "yes",
        "VSM_BROKER_CA_FILE": "/etc/ssl/ca.pem",
        "VSM_BROKER_CERT_FILE": "/data/client.pem",
        "VSM_BROKER_KEY_FILE": "/data/client.key",
        "VSM_BROKER_USERNAME": "pi-7",
        "VSM_BROKER_PASSWORD_FILE": "/data/password",
        "VSM_BROKER_KEEPALIVE_S": "15",
        "VSM_DISCOVERY_ENABLED": "on",
        "VSM_DISCOVERY_INTERFACES": "eth0, 10.0.0.9",
        "VSM_STATUS_ENABLED": "1",
        "VSM_STATUS_PORT": "7788",
        "VSM_S5_ADMIN_KEYS": ",".join(["ab" * 32, "cd" * 32]),
        "VSM_S5_POLICY_FILE": "/data/policy.cose",
        "VSM_SHUTDOWN_TIMEOUT_S": "4.5",
        "VSM_HOMEASSISTANT_ENABLED": "true",
        "VSM_HOMEASSISTANT_PREFIX": "ha",
        "VSM_HOMEASSISTANT_COMMANDS": "true",
        "VSM_UNITS": '[{"name": "temp", "kind": "simulated-sensor", "options": {"mean": 20}}]',
    }
    assert set(env) == {v.name for v in ENV_VARS}, "the test covers every variable"
    lookups: list[str] = []

    def addresses(name: str) -> list[str]:
        lookups.append(name)
        return {"eth0": ["192.168.1.20"]}.get(name, [])

    config = config_from_env(env, interface_addresses=addresses, cwd=tmp_path)
    assert lookups == ["eth0"]
    assert (config.node.id, config.node.mesh, config.node.zone) == ("pi-7", "greenhouses", "north")
    assert config.node.data_dir == Path("/data")
    assert config.node.key_file == Path("/data/keys/node.key")
    broker = config.broker
    assert broker.url == "mqtts://broker.example:8883"
    assert broker.tls is True
    assert broker.ca_file == Path("/etc/ssl/ca.pem")
    assert (broker.cert_file, broker.key_file) == (
        Path("/data/client.pem"),
        Path("/data/client.key"),
    )
    assert (broker.username, broker.password_file) == ("pi-7", Path("/data/password"))
    assert broker.keepalive_s == 15
    assert config.discovery.enabled is True
    assert config.discovery.interfaces == ("192.168.1.20", "10.0.0.9")
    assert (config.status.enabled, config.status.port) == (True, 7788)
    assert config.s5.admin_keys == (bytes.fromhex("ab" * 32), bytes.fromhex("cd" * 32))
    assert config.s5.policy_file == Path("/data/policy.cose")
    assert config.runtime.shutdown_timeout_s == 4.5
    assert config.homeassistant.enabled is True
    assert config.homeassistant.discovery_prefix == "ha"
    assert config.homeassistant.commands is True
    assert [(u.name, u.kind, dict(u.options)) for u in config.units] == [
        ("temp", "simulated-sensor", {"mean": 20})
    ]


def test_variables_override_the_base_file_key_by_key(tmp_path: Path) -> None:
    base = tmp_path / "node.toml"
    base.write_text(
        '[node]\nid = "from-file"\nmesh = "m1"\ndata_dir = "state"\n'
        '[broker]\nurl = "mqtt://a:1883"\nkeepalive_s = 60\n'
        '[[units]]\nname = "temp"\nkind = "simulated-sensor"\n'
    )
    config = config_from_env(
        {"VSM_CONFIG": str(base), "VSM_BROKER_URL": "mqtt://b:1884", "VSM_NODE_ID": "n9"}
    )
    assert config.node.id == "n9"
    assert config.node.mesh == "m1"  # kept from the file
    assert config.node.data_dir == tmp_path / "state"  # relative to the file
    assert config.broker.url == "mqtt://b:1884"
    assert config.broker.keepalive_s == 60  # the rest of [broker] is kept
    assert [u.name for u in config.units] == ["temp"]


def test_discovery_interfaces_auto_takes_every_non_loopback_address() -> None:
    asked: list[str] = []

    def addresses(name: str) -> list[str]:
        asked.append(name)
        return ["192.168.1.9", "10.0.0.2", "192.168.1.9"] if name == "*" else []

    config = config_from_env(
        {"VSM_NODE_ID": "n", "VSM_DISCOVERY_INTERFACES": "auto"}, interface_addresses=addresses
    )
    assert asked == ["*"]
    assert config.discovery.interfaces == ("10.0.0.2", "192.168.1.9")
    with pytest.raises(ConfigError, match="auto: this host has no non-loopback IPv4 address"):
        config_from_env({"VSM_NODE_ID": "n", "VSM_DISCOVERY_INTERFACES": "auto"})


def test_interface_lookup_on_this_host() -> None:
    from vsm_edge.agent.config.env import interface_ipv4_addresses

    assert "127.0.0.1" in interface_ipv4_addresses("lo")
    assert "127.0.0.1" not in interface_ipv4_addresses("*")
    assert interface_ipv4_addresses("no-such-if0") == []


def test_node_id_falls_back_to_the_balena_device_name() -> None:
    assert env_table({"BALENA_DEVICE_NAME_AT_INIT": "cool-river"})["node"]["id"] == "cool-river"
    config = config_from_env({"BALENA_DEVICE_NAME_AT_INIT": "cool-river", "VSM_NODE_ID": "x1"})
    assert config.node.id == "x1"  # VSM_NODE_ID wins
    # a name that is not a valid node id is not used
    assert "node" not in env_table({"BALENA_DEVICE_NAME_AT_INIT": "not a valid id!"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "config error: VSM_NODE_ID: required"),
        ({"VSM_NODE_ID": "a/b"}, "config error: VSM_NODE_ID (node.id): must be 1-64 characters"),
        (
            {"VSM_NODE_ID": "n", "VSM_STATUS_PORT": "70000"},
            "config error: VSM_STATUS_PORT (status.port): must be <= 65535, got 70000",
        ),
        (
            {"VSM_NODE_ID": "n", "VSM_STATUS_PORT": "seven"},
            "config error: VSM_STATUS_PORT (status.port): expected an integer, got 'seven'",
        ),
        (
            {"VSM_NODE_ID": "n", "VSM_BROKER_TLS": "maybe"},
            "config error: VSM_BROKER_TLS (broker.tls): expected true or false",
        ),
        (
            {"VSM_NODE_ID": "n", "VSM_BROKER_URL": "http://x"},
            "config error: VSM_BROKER_URL (broker.url): must be",
        ),
        ({"VSM_NODE_ID": "n", "VSM_NODEID": "typo"}, "config error: VSM_NODEID: unknown variable"),
        (
            {"VSM_NODE_ID": "n", "VSM_DISCOVERY_INTERFACES": "wlan9"},
            "config error: VSM_DISCOVERY_INTERFACES (discovery.interfaces): interface 'wlan9' "
            "has no IPv4 address",
        ),
        (
            {"VSM_NODE_ID": "n", "VSM_DISCOVERY_INTERFACES": "bad name!"},
            "is neither an IP address nor an interface name",
        ),
        (
            {"VSM_NODE_ID": "n", "VSM_S5_ADMIN_KEYS": "abcd"},
            "config error: VSM_S5_ADMIN_KEYS (s5.admin_keys[0]): expected 64 hex digits",
        ),
        (
            {"VSM_NODE_ID": "n", "VSM_SHUTDOWN_TIMEOUT_S": "30"},
            "config error: VSM_SHUTDOWN_TIMEOUT_S (runtime.shutdown_timeout_s): must be <= 5",
        ),
        ({"VSM_NODE_ID": "n", "VSM_MESH": "x" * 5000}, "longer than 4096 characters"),
    ],
)
def test_bad_variables_are_named_in_the_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env(env)
    assert message in str(info.value)


def test_empty_variables_count_as_unset_and_script_variables_are_ignored() -> None:
    config = config_from_env(
        {"VSM_NODE_ID": "n1", "VSM_MESH": "", "VSM_EDGE_VENV": "/x", "VSM_LOG_LEVEL": "DEBUG"}
    )
    assert config.node.mesh == "default"


def test_base_file_errors_name_vsm_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="VSM_CONFIG: cannot read"):
        config_from_env({"VSM_CONFIG": str(tmp_path / "missing.toml")})
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\n")
    with pytest.raises(ConfigError, match=r"VSM_CONFIG: .*invalid TOML"):
        config_from_env({"VSM_CONFIG": str(bad)})


def test_overlay_merges_tables_and_replaces_values() -> None:
    base = {"a": {"x": 1, "y": {"z": 2}}, "b": [1, 2], "c": 3}
    over = {"a": {"y": {"w": 4}}, "b": [9], "d": 5}
    assert overlay(base, over) == {"a": {"x": 1, "y": {"z": 2, "w": 4}}, "b": [9], "c": 3, "d": 5}
    assert base == {"a": {"x": 1, "y": {"z": 2}}, "b": [1, 2], "c": 3}  # untouched


_names = st.sampled_from([v.name for v in ENV_VARS] + ["VSM_OTHER", "HOME", "VSM_CONFIG"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_names, st.text(max_size=80), max_size=8))
def test_any_environment_is_a_config_or_a_config_error(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "VSM_CONFIG"}  # no file reads here
    env = {k: v.replace("\x00", "") for k, v in env.items()}
    try:
        config_from_env(
            env, interface_addresses=lambda name: ["10.0.0.1"] if name == "eth0" else []
        )
    except ConfigError as exc:
        message = str(exc)
    else:
        message = "config error: (accepted)"
    assert message.startswith("config error: ")


def test_docs_list_every_variable() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    documented = set(re.findall(r"`(VSM_[A-Z0-9_]+)`", doc))
    expected = {v.name for v in ENV_VARS} | set(RUN_ENV_VARS)
    assert expected <= documented, expected - documented
    unknown = documented - expected - {"VSM_EDGE_VENV"}
    assert not unknown, f"docs/deploy.md names variables the agent does not read: {unknown}"


@pytest.mark.integration
def test_run_env_reports_a_bad_variable_and_exits_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "run", "--env"],
        env={"VSM_NODE_ID": "n1", "VSM_STATUS_PORT": "99999", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "VSM_STATUS_PORT (status.port): must be <= 65535" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "run"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "give --config FILE, or --env" in missing.stderr
