"""Home Assistant MQTT discovery: payload rules, and an agent over a real Mosquitto."""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401

from vsm_edge.agent import ConfigError, parse_config
from vsm_edge.agent.integrations.homeassistant import (
    CommandInfo,
    ReadingInfo,
    availability_topic,
    command_messages,
    command_topic,
    discovery_messages,
    is_birth,
    object_id,
    parse_command,
    serve_homeassistant,
    state_payload,
    state_topic,
)
from vsm_edge.agent.mesh.node import Agent
from vsm_edge.sync import MqttSettings, MqttTransport

# HA: <discovery_prefix>/<component>/[<node_id>/]<object_id>/config, ids [a-zA-Z0-9_-]
TOPIC = re.compile(
    r"^(?P<prefix>[A-Za-z0-9_/-]+)/(?P<component>sensor|binary_sensor)/"
    r"(?P<node_id>[a-zA-Z0-9_-]+)/(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)
REQUIRED = {"name", "unique_id", "state_topic", "device", "availability_topic"}
TEMPLATE = re.compile(r"^\{\{ value_json((?:\.[a-z_]+|\[\"[^\"]*\"\])+) \}\}$")


def resolve(template: str, state: dict[str, Any]) -> Any:
    """Evaluate the `{{ value_json.a["b"] }}` subset of Jinja that our configs use."""
    match = TEMPLATE.match(template)
    assert match, template
    value: Any = state
    for part in re.findall(r"\.([a-z_]+)|\[(\"[^\"]*\")\]", match.group(1)):
        key = part[0] or json.loads(part[1])
        value = value[key]
    return value


READINGS = [
    ReadingInfo("temp", "celsius", "°C"),
    ReadingInfo("humidity", "percent", "%"),
    ReadingInfo("door.main", "open state", ""),  # characters HA ids do not allow
]


def test_discovery_topics_and_keys_follow_home_assistant_rules() -> None:
    messages = discovery_messages("homeassistant", "plant", "n1", READINGS)
    assert len(messages) == len(READINGS) + 4
    unique_ids = set()
    state = json.loads(
        state_payload(
            {"temp.celsius": 21.5, "humidity.percent": 40.0, "door.main.open state": 1.0},
            [{"id": "a1", "source": "s1.temp", "intensity": 0.7, "reason": "hot"}],
            safe_mode=False,
            variety_ratio=0.8,
        )
    )
    for topic, payload in messages:
        match = TOPIC.match(topic)
        assert match, topic
        assert match["prefix"] == "homeassistant"
        assert match["node_id"] == "vsm_plant_n1"
        config = json.loads(payload)
        assert set(config) >= REQUIRED, topic
        assert config["unique_id"] not in unique_ids
        unique_ids.add(config["unique_id"])
        assert config["unique_id"].endswith(match["object_id"])
        assert config["state_topic"] == state_topic("plant", "n1")
        assert config["availability_topic"] == availability_topic("plant", "n1")
        assert config["device"]["identifiers"] == ["vsm_plant_n1"]
        value = resolve(config["value_template"], state)
        if match["component"] == "binary_sensor":
            assert value in (config["payload_on"], config["payload_off"])
        else:
            assert isinstance(value, float)
    by_object = {TOPIC.match(t)["object_id"]: json.loads(p) for t, p in messages}  # type: ignore[index]
    assert by_object["r_temp_celsius"]["unit_of_measurement"] == "°C"
    assert "unit_of_measurement" not in by_object["r_door_main_open_state"]
    assert by_object["alarm"]["device_class"] == "problem"
    assert resolve(by_object["alarm"]["value_template"], state) == "ON"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40)),
        max_size=6,
        unique=True,
    ),
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
)
def test_any_reading_names_give_valid_topics_and_unique_ids(
    names: list[tuple[str, str]], node: str
) -> None:
    infos = [ReadingInfo(u, r) for u, r in names]
    messages = discovery_messages("ha", "m", node, infos)
    for topic, _ in messages:
        assert TOPIC.match(topic), topic
    ids = [json.loads(p)["unique_id"] for _, p in messages]
    keys = {i.key for i in infos}
    # distinct keys may collapse to one object id ("a.b" and "a_b"); then the ids say so
    if len({object_id(f"r_{k}") for k in keys}) == len(keys):
        assert len(set(ids)) == len(ids)


def test_state_payload_and_birth_message() -> None:
    state = json.loads(state_payload({}, [], safe_mode=True, variety_ratio=1.23456))
    assert state == {
        "readings": {}, "alarm": "OFF", "alarms": [], "pain": 0.0, "safe_mode": "ON",
        "variety_ratio": 1.2346,
    }  # fmt: skip
    assert is_birth("homeassistant", "homeassistant/status", b"online")
    assert is_birth("homeassistant", "homeassistant/status", b"online\n")
    assert not is_birth("homeassistant", "homeassistant/status", b"offline")
    assert not is_birth("homeassistant", "other/status", b"online")


def test_config_section_is_opt_in_and_checked() -> None:
    assert parse_config({"node": {"id": "n"}}).homeassistant.enabled is False
    cfg = parse_config({"node": {"id": "n"}, "homeassistant": {"enabled": True}})
    assert cfg.homeassistant.discovery_prefix == "homeassistant"
    with pytest.raises(ConfigError, match=r"homeassistant\.discovery_prefix"):
        parse_config({"node": {"id": "n"}, "homeassistant": {"discovery_prefix": "ha/#"}})
    with pytest.raises(ConfigError, match=r"homeassistant\.colour: unknown key"):
        parse_config({"node": {"id": "n"}, "homeassistant": {"colour": 1}})


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_agent_announces_entities_and_republishes_on_birth(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    config = parse_config(
        {
            "node": {"id": "ha1", "mesh": "home", "data_dir": str(tmp_path / "data")},
            "broker": {"url": mosquitto.url},
            "discovery": {"enabled": False},
            "status": {"enabled": False},
            "homeassistant": {"enabled": True, "state_interval_s": 0.5},
            "units": [
                {"name": "temp", "kind": "simulated-sensor",
                 "options": {"reading": "celsius", "period_s": 0.1}},
            ],
        }
    )  # fmt: skip
    watcher = MqttTransport(MqttSettings.from_url(mosquitto.url, client_id="ha-watcher"))
    configs: dict[str, list[dict[str, Any]]] = {}
    states: list[dict[str, Any]] = []
    availability: list[bytes] = []

    async def collect() -> None:
        async for message in watcher.messages:
            if message.topic.endswith("/config"):
                configs.setdefault(message.topic, []).append(json.loads(message.payload))
            elif message.topic == state_topic("home", "ha1"):
                states.append(json.loads(message.payload))
            elif message.topic == availability_topic("home", "ha1"):
                availability.append(message.payload)

    async def until(predicate: Any, what: str, timeout: float = 15) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await watcher.wait_connected()
        await watcher.subscribe("homeassistant/#", qos=1)
        await watcher.subscribe("vsm-edge/#", qos=1)
        nursery.start_soon(collect)
        # composed as `vsm-edge run` composes it (cli/run.py)
        agent = Agent(config, broker_url=mosquitto.url, extensions=(serve_homeassistant,))
        await nursery.start(agent.run)
        await until(lambda: len(configs) == 5, "5 configs")  # 1 reading + 4 node entities
        await until(lambda: any(s["readings"].get("temp.celsius") for s in states), "a reading")
        assert availability[-1] == b"online"
        sensor = configs["homeassistant/sensor/vsm_home_ha1/r_temp_celsius/config"][0]
        assert sensor["unique_id"] == "vsm_home_ha1_r_temp_celsius"
        latest = states[-1]
        assert resolve(sensor["value_template"], latest) == latest["readings"]["temp.celsius"]
        before = {t: len(v) for t, v in configs.items()}
        # HA restarts: its birth message makes the agent announce every entity again
        await watcher.publish("homeassistant/status", b"online", qos=1)
        await until(
            lambda: all(len(configs[t]) > before[t] for t in before), "configs republished"
        )
        agent.stop()
        await agent.stopped()
        await until(lambda: availability[-1] == b"offline", "offline on stop")
        nursery.cancel_scope.cancel()


# -- commands from Home Assistant (opt-in) ------------------------------------------------

COMMANDS = [
    CommandInfo("valve", "set", "number", 0.0, 10.0),
    CommandInfo("pump", "on", "bool"),
    CommandInfo("panel", "say", "text"),
    CommandInfo("fan", "speed", "number"),  # no bounds
    CommandInfo("bad/unit", "set", "number"),  # not a topic level: left out
]
COMMAND_CONFIG = re.compile(
    r"^homeassistant/(?P<component>number|switch|text)/vsm_home_ha1/(?P<object_id>c_[\w-]+)/config$"
)


def test_command_entities_follow_home_assistant_rules() -> None:
    messages = dict(command_messages("homeassistant", "home", "ha1", COMMANDS))
    assert len(messages) == 4
    seen = {}
    for topic, raw in messages.items():
        match = COMMAND_CONFIG.match(topic)
        assert match, topic
        payload = json.loads(raw)
        assert payload["unique_id"] == f"vsm_home_ha1_{match['object_id']}"
        assert payload["availability_topic"] == availability_topic("home", "ha1")
        assert payload["optimistic"] is True
        seen[payload["name"]] = (match["component"], payload)
    names = ("valve.set", "pump.on", "panel.say", "fan.speed")
    number, switch, text, fan = (seen[k] for k in names)
    assert number[0] == "number"
    assert (number[1]["min"], number[1]["max"]) == (0.0, 10.0)
    assert number[1]["command_topic"] == command_topic("home", "ha1", "valve", "set")
    assert (fan[1]["min"], fan[1]["max"]) == (-1e9, 1e9)
    assert switch[0] == "switch"
    assert (switch[1]["payload_on"], switch[1]["payload_off"]) == ("true", "false")
    assert text[0] == "text"


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("vsm-edge/home/ha1/cmd/valve/set", b"4", ("valve", "set", 4)),
        ("vsm-edge/home/ha1/cmd/valve/set", b"2.5", ("valve", "set", 2.5)),
        ("vsm-edge/home/ha1/cmd/pump/on", b"ON", ("pump", "on", True)),
        ("vsm-edge/home/ha1/cmd/pump/on", b"false", ("pump", "on", False)),
        ("vsm-edge/home/ha1/cmd/panel/say", "héllo".encode(), ("panel", "say", "héllo")),
    ],
)
def test_a_command_from_home_assistant_parses(
    topic: str, payload: bytes, expected: tuple[str, str, Any]
) -> None:
    known = {c.key: c for c in COMMANDS}
    assert parse_command("home", "ha1", topic, payload, known) == expected


@pytest.mark.parametrize(
    ("topic", "payload", "why"),
    [
        ("vsm-edge/home/ha2/cmd/valve/set", b"4", "not a command topic"),
        ("vsm-edge/home/ha1/cmd/valve/set/x", b"4", "not a command topic"),
        ("vsm-edge/home/ha1/cmd/valve/open", b"4", "no unit"),
        ("vsm-edge/home/ha1/cmd/valve/set", b"nan", "finite"),
        ("vsm-edge/home/ha1/cmd/valve/set", b"four", "expects a number"),
        ("vsm-edge/home/ha1/cmd/valve/set", b"1" * 257, "more than 256"),
        ("vsm-edge/home/ha1/cmd/pump/on", b"yes", "true or false"),
        ("vsm-edge/home/ha1/cmd/panel/say", b"\xff", "UTF-8"),
    ],
)
def test_a_bad_command_from_home_assistant_is_refused(topic: str, payload: bytes, why: str) -> None:
    known = {c.key: c for c in COMMANDS}
    with pytest.raises(ValueError, match=why):
        parse_command("home", "ha1", topic, payload, known)


@given(st.text(max_size=40), st.binary(max_size=300))
@settings(max_examples=300)
def test_fuzz_parse_command_parses_or_raises_value_error(level: str, payload: bytes) -> None:
    known = {c.key: c for c in COMMANDS}
    for topic in (f"vsm-edge/home/ha1/cmd/{level}", f"vsm-edge/home/ha1/cmd/valve/{level}"):
        with contextlib.suppress(ValueError):
            parse_command("home", "ha1", topic, payload, known)
    for unit in ("valve/set", "pump/on", "panel/say"):
        with contextlib.suppress(ValueError):
            parse_command("home", "ha1", f"vsm-edge/home/ha1/cmd/{unit}", payload, known)


def test_commands_are_off_unless_configured() -> None:
    assert parse_config({"node": {"id": "n"}}).homeassistant.commands is False
    cfg = parse_config({"node": {"id": "n"}, "homeassistant": {"commands": True}})
    assert cfg.homeassistant.commands is True


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.parametrize("enabled", [True, False])
async def test_home_assistant_commands_a_unit_locally_when_enabled(
    tmp_path: Path, mosquitto: Mosquitto, enabled: bool
) -> None:
    config = parse_config(
        {
            "node": {"id": "ha1", "mesh": "home", "data_dir": str(tmp_path / "data")},
            "broker": {"url": mosquitto.url},
            "discovery": {"enabled": False},
            "status": {"enabled": False},
            "homeassistant": {"enabled": True, "state_interval_s": 0.5, "commands": enabled},
            "units": [
                {"name": "valve", "kind": "simulated-actuator",
                 "options": {"maximum": 10, "confirm": True}},
            ],
        }
    )  # fmt: skip
    ha = MqttTransport(MqttSettings.from_url(mosquitto.url, client_id="ha-standin"))
    configs: dict[str, dict[str, Any]] = {}

    async def collect() -> None:
        async for message in ha.messages:
            if message.topic.endswith("/config"):
                configs[message.topic] = json.loads(message.payload)

    async def until(predicate: Any, what: str, timeout: float = 15) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.05)

    def recent() -> list[tuple[str, str, str, str]]:
        section = agent.status().commands
        assert section is not None
        assert not isinstance(section, Exception)
        return [(r.issuer, r.target, r.status, r.why) for r in section.recent]

    async with trio.open_nursery() as nursery:
        await nursery.start(ha.run)
        await ha.wait_connected()
        await ha.subscribe("homeassistant/#", qos=1)
        nursery.start_soon(collect)
        agent = Agent(config, broker_url=mosquitto.url, extensions=(serve_homeassistant,))
        await nursery.start(agent.run)
        await until(lambda: len(configs) >= 6 if enabled else len(configs) == 5, "configs")
        numbers = [c for t, c in configs.items() if "/number/" in t]
        topic = command_topic("home", "ha1", "valve", "set")
        if not enabled:
            assert numbers == []
            await ha.publish(topic, b"4", qos=1)
            await trio.sleep(1.0)  # nothing to wait for: a command must *not* run
            assert recent() == []
        else:
            assert [c["command_topic"] for c in numbers] == [topic]
            await ha.publish(topic, b"4", qos=1)
            await until(lambda: len(recent()) == 1, "the command from HA to run")
            await ha.publish(topic, b"99", qos=1)
            await ha.publish(topic, b"four", qos=1)  # refused before it runs: not recorded
            await until(lambda: len(recent()) == 2, "the second command to be refused")
            assert recent() == [
                ("homeassistant", "valve.set", "done", ""),
                ("homeassistant", "valve.set", "refused", "s1: valve.set above maximum 10"),
            ]
        assert agent.runtime is not None
        assert agent.runtime.units["valve"].commands_applied == (1 if enabled else 0)
        agent.stop()
        await agent.stopped()
        nursery.cancel_scope.cancel()
