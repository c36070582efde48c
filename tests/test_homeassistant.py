"""Home Assistant MQTT discovery: payload rules, and an agent over a real Mosquitto."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401

from vsm_edge.agent import CommandSpec, ConfigError, UnitError, parse_config
from vsm_edge.agent.integrations.homeassistant import (
    MAX_MEMORY_BYTES,
    MEMORY_FILE,
    CommandInfo,
    HomeAssistantPublisher,
    ReadingInfo,
    availability_topic,
    command_messages,
    command_topic,
    discovery_messages,
    is_birth,
    object_id,
    parse_command,
    read_memory,
    rounded,
    sensor_classes,
    serve_homeassistant,
    state_payload,
    state_topic,
    write_memory,
)
from vsm_edge.agent.mesh.node import Agent
from vsm_edge.sync import MemoryBroker, MqttSettings, MqttTransport

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
        await until(lambda: all(len(configs[t]) > before[t] for t in before), "configs republished")
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


# -- Home Assistant's MQTT discovery schema, as data --------------------------------------
#
# What HA's MQTT integration accepts in a discovery config, for the platforms this
# agent announces. Sources: the HA docs pages of each platform
# (https://www.home-assistant.io/integrations/sensor.mqtt/, binary_sensor.mqtt,
# number.mqtt, switch.mqtt, select.mqtt, text.mqtt, button.mqtt; "Discovery messages"
# and "Using abbreviations" in https://www.home-assistant.io/integrations/mqtt/) and
# HA core's voluptuous schemas (homeassistant/components/mqtt/{sensor,binary_sensor,
# number,switch,select,text}.py, schemas.py, abbreviations.py; sensor/const.py for
# device classes). HA drops unknown keys from a discovery config silently
# (REMOVE_EXTRA), so a key outside ``allowed`` is a bug of ours HA would not report.

COMMON_KEYS = {
    "name", "unique_id", "default_entity_id", "availability_topic", "payload_available",
    "payload_not_available", "device", "origin", "entity_category", "json_attributes_topic",
    "json_attributes_template", "icon", "enabled_by_default", "qos", "encoding",
}  # fmt: skip
PLATFORMS: dict[str, dict[str, set[str]]] = {
    "sensor": {
        "required": {"state_topic"},
        "allowed": {"state_topic", "value_template", "unit_of_measurement", "device_class",
                    "state_class", "expire_after", "force_update", "suggested_display_precision"},
    },
    "binary_sensor": {
        "required": {"state_topic"},
        "allowed": {"state_topic", "value_template", "payload_on", "payload_off",
                    "device_class", "expire_after", "force_update", "off_delay"},
    },
    "number": {
        "required": {"command_topic"},
        "allowed": {"command_topic", "command_template", "state_topic", "value_template",
                    "min", "max", "step", "mode", "optimistic", "retain", "unit_of_measurement",
                    "device_class"},
    },
    "switch": {
        "required": {"command_topic"},
        "allowed": {"command_topic", "state_topic", "value_template", "payload_on",
                    "payload_off", "state_on", "state_off", "optimistic", "retain",
                    "device_class"},
    },
    "select": {
        "required": {"command_topic", "options"},
        "allowed": {"command_topic", "command_template", "state_topic", "value_template",
                    "options", "optimistic", "retain"},
    },
    "text": {
        "required": {"command_topic"},
        "allowed": {"command_topic", "command_template", "state_topic", "value_template",
                    "min", "max", "mode", "pattern", "optimistic", "retain"},
    },
    "button": {
        "required": {"command_topic"},
        "allowed": {"command_topic", "command_template", "payload_press", "retain",
                    "device_class"},
    },
}  # fmt: skip
# a sample of abbreviations.py: a config must use the full names only
ABBREVIATIONS = {
    "avty_t", "cmd_t", "dev", "dev_cla", "def_ent_id", "ent_cat", "json_attr_t", "o",
    "obj_id", "opt", "ops", "pl_avail", "pl_not_avail", "pl_on", "pl_off", "stat_cla",
    "stat_t", "uniq_id", "unit_of_meas", "val_tpl", "ids", "mf", "mdl", "sw",
}  # fmt: skip
# sensor/const.py DEVICE_CLASS_UNITS / DEVICE_CLASS_STATE_CLASSES, for the classes we emit
SENSOR_CLASS_UNITS: dict[str, set[str]] = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "moisture": {"%"},
    "battery": {"%"},
    "power": {"mW", "W", "kW", "MW", "GW", "TW", "BTU/h"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "current": {"mA", "A"},
    "pressure": {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "atmospheric_pressure": {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"},
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "illuminance": {"lx"},
    "co2": {"ppm"},
    "data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB",
                  "ZB", "YB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"},
    "data_rate": {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s",
                  "KiB/s", "MiB/s", "GiB/s"},
    "energy": {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh"},
    "duration": {"d", "h", "min", "s", "ms"},
}  # fmt: skip
SENSOR_CLASS_STATES: dict[str, set[str]] = {
    **{c: {"measurement"} for c in SENSOR_CLASS_UNITS},
    "data_size": {"measurement", "total", "total_increasing"},
    "duration": {"measurement", "total", "total_increasing"},
    "energy": {"total", "total_increasing"},
}
BINARY_SENSOR_CLASSES = {"problem", "safety", "running", "connectivity", "power", "door"}
ENTITY_ID = re.compile(r"^(?P<platform>[a-z_]+)\.(?!_)(?!.*__)[a-z0-9_]+(?<!_)$")


def check_config(component: str, config: dict[str, Any]) -> None:
    """Assert one discovery config against the rules above, field by field."""
    rules = PLATFORMS[component]
    assert not set(config) & ABBREVIATIONS, config
    assert set(config) >= rules["required"] | {"name", "unique_id", "device"}, config
    assert set(config) <= COMMON_KEYS | rules["allowed"], (
        set(config) - COMMON_KEYS - rules["allowed"]
    )
    assert "object_id" not in config  # deprecated in HA 2025.10 for default_entity_id
    match = ENTITY_ID.match(config["default_entity_id"])
    assert match, config["default_entity_id"]
    assert match["platform"] == component
    assert isinstance(config["name"], str)
    assert isinstance(config["unique_id"], str)
    assert config["device"]["identifiers"]
    assert config["device"]["name"]
    assert config["origin"]["name"] == "vsm-edge"
    if "entity_category" in config:
        # HA: sensors cannot be "config" entities
        allowed = (
            {"diagnostic"} if component in ("sensor", "binary_sensor") else {"config", "diagnostic"}
        )
        assert config["entity_category"] in allowed
    if component == "sensor":
        device_class = config.get("device_class")
        if device_class is not None:
            assert config.get("unit_of_measurement") in SENSOR_CLASS_UNITS[device_class], config
            assert config["state_class"] in SENSOR_CLASS_STATES[device_class], config
        assert config.get("state_class", "measurement") in {
            "measurement",
            "total",
            "total_increasing",
        }
    elif component == "binary_sensor":
        assert config.get("device_class", "problem") in BINARY_SENSOR_CLASSES
        assert config["payload_on"] != config["payload_off"]
    elif component == "number":
        low, high, step = config["min"], config["max"], config["step"]
        assert all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in (low, high, step)
        )
        assert low < high  # number.py: "'max' must be > 'min'"
        assert step >= 0.001  # number.py: step is vol.Range(min=1e-3)
        assert config["mode"] in ("auto", "box", "slider")
    elif component == "switch":
        assert config["payload_on"] != config["payload_off"]
    elif component == "select":
        options = config["options"]
        assert isinstance(options, list)
        assert options
        assert all(isinstance(o, str) for o in options)
        assert len(set(options)) == len(options)
    elif component == "text":
        assert 0 <= config.get("min", 0) <= config["max"] <= 255  # MAX_LENGTH_STATE_STATE
        assert config.get("mode", "text") in ("text", "password")
    elif component == "button":
        assert isinstance(config.get("payload_press", "PRESS"), str)
        assert config.get("device_class") in (None, "identify", "restart", "update")


CONFIG_TOPIC = re.compile(
    r"^homeassistant/(?P<component>[a-z_]+)/vsm_home_ha1/(?P<object_id>[A-Za-z0-9_-]+)/config$"
)
RICH_READINGS = [
    ReadingInfo("temp", "celsius", "°C", 0.5),
    ReadingInfo("air", "humidity", "%", 1.0),
    ReadingInfo("sys", "cpu_percent", "%", 1.0),  # % of what: no device class
    ReadingInfo("sys", "net_eth0_rx_bytes", "B", None, "data_size", "total_increasing"),
    ReadingInfo("meter", "power", "W"),
    ReadingInfo("meter", "energy", "kWh"),
    ReadingInfo("meter", "mains", "V", 1.0),
    ReadingInfo("fan", "rpm", "RPM", 50.0),  # no device class for rpm
    ReadingInfo("odd", "t", "C", None, "temperature"),  # declared, but HA refuses "C"
    ReadingInfo("odd", "x", "", None, "no-such-class", "sideways"),
    ReadingInfo("door.main", "open state", ""),
]
RICH_COMMANDS = [
    CommandInfo("valve", "set", "number", 0.0, 10.0, 0.5),
    CommandInfo("fan", "speed", "number"),
    CommandInfo("fan", "low", "number", 5.0, 5.0),  # no range: HA refuses min == max
    CommandInfo("pump", "on", "bool"),
    CommandInfo("panel", "say", "text"),
    CommandInfo("panel", "mode", "text", options=("eco", "comfort", "off")),
    CommandInfo("pump", "flush", "trigger"),
]


def test_every_discovery_config_fits_home_assistants_schema_for_its_platform() -> None:
    messages = discovery_messages("homeassistant", "home", "ha1", RICH_READINGS)
    messages += command_messages("homeassistant", "home", "ha1", RICH_COMMANDS)
    components: dict[str, int] = {}
    entity_ids = set()
    for topic, raw in messages:
        match = CONFIG_TOPIC.match(topic)
        assert match, topic
        config = json.loads(raw)
        check_config(match["component"], config)
        components[match["component"]] = components.get(match["component"], 0) + 1
        entity_ids.add(config["default_entity_id"])
    assert len(entity_ids) == len(messages)
    assert components == {
        "sensor": len(RICH_READINGS) + 2, "binary_sensor": 2,
        "number": 2, "switch": 1, "text": 1, "select": 1, "button": 1,
    }  # fmt: skip


def _configs(messages: list[tuple[str, bytes]]) -> dict[str, dict[str, Any]]:
    return {CONFIG_TOPIC.match(t)["object_id"]: json.loads(p) for t, p in messages}  # type: ignore[index]


def test_discovery_fields_one_by_one() -> None:
    configs = _configs(discovery_messages("homeassistant", "home", "ha1", RICH_READINGS))
    temp = configs["r_temp_celsius"]
    assert temp["default_entity_id"] == "sensor.vsm_home_ha1_temp_celsius"
    assert temp["unique_id"] == "vsm_home_ha1_r_temp_celsius"  # unchanged: HA keeps the entity
    assert (temp["device_class"], temp["unit_of_measurement"], temp["state_class"]) == (
        "temperature", "°C", "measurement",
    )  # fmt: skip
    assert configs["r_air_humidity"]["device_class"] == "humidity"
    assert "device_class" not in configs["r_sys_cpu_percent"]
    rx = configs["r_sys_net_eth0_rx_bytes"]
    assert (rx["device_class"], rx["state_class"]) == ("data_size", "total_increasing")
    assert configs["r_meter_power"]["device_class"] == "power"
    energy = configs["r_meter_energy"]
    assert (energy["device_class"], energy["state_class"]) == ("energy", "total_increasing")
    assert configs["r_meter_mains"]["device_class"] == "voltage"
    assert "device_class" not in configs["r_fan_rpm"]
    odd = configs["r_odd_t"]
    assert "device_class" not in odd
    assert odd["unit_of_measurement"] == "C"
    assert "device_class" not in configs["r_odd_x"]
    assert configs["r_odd_x"]["state_class"] == "measurement"  # "sideways" is not a state class
    door = configs["r_door_main_open_state"]
    assert door["default_entity_id"] == "sensor.vsm_home_ha1_door_main_open_state"
    assert "unit_of_measurement" not in door
    for obj in ("pain", "variety_ratio", "safe_mode"):
        assert configs[obj]["entity_category"] == "diagnostic"
    assert "entity_category" not in configs["alarm"]
    assert configs["alarm"]["default_entity_id"] == "binary_sensor.vsm_home_ha1_alarm"
    commands = _configs(command_messages("homeassistant", "home", "ha1", RICH_COMMANDS))
    assert set(commands) == {
        "c_valve_set",
        "c_fan_speed",
        "c_pump_on",
        "c_panel_say",
        "c_panel_mode",
        "c_pump_flush",
    }
    valve = commands["c_valve_set"]
    assert (valve["min"], valve["max"], valve["step"]) == (0.0, 10.0, 0.5)
    assert valve["default_entity_id"] == "number.vsm_home_ha1_valve_set"
    fan = commands["c_fan_speed"]
    assert (fan["min"], fan["max"], fan["step"]) == (-1e9, 1e9, 0.001)
    assert commands["c_panel_mode"]["options"] == ["eco", "comfort", "off"]
    assert commands["c_panel_mode"]["default_entity_id"] == "select.vsm_home_ha1_panel_mode"
    assert commands["c_panel_say"]["max"] == 255


@pytest.mark.parametrize(
    ("unit", "name", "declared", "state_class", "expected"),
    [
        ("°C", "t.celsius", None, None, ("temperature", "measurement")),
        ("°F", "t.f", None, None, ("temperature", "measurement")),
        ("K", "t.k", None, None, ("temperature", "measurement")),
        ("%", "air.humidity", None, None, ("humidity", "measurement")),
        ("%", "air.rel_humid", None, None, ("humidity", "measurement")),
        ("%", "phone.battery", None, None, ("battery", "measurement")),
        ("%", "soil.moisture", None, None, ("moisture", "measurement")),
        ("%", "sys.cpu_percent", None, None, (None, "measurement")),
        ("W", "m.p", None, None, ("power", "measurement")),
        ("kW", "m.p", None, None, ("power", "measurement")),
        ("V", "m.u", None, None, ("voltage", "measurement")),
        ("mV", "m.u", None, None, ("voltage", "measurement")),
        ("A", "m.i", None, None, ("current", "measurement")),
        ("hPa", "air.p", None, None, ("pressure", "measurement")),
        ("Pa", "air.p", None, None, ("pressure", "measurement")),
        ("Hz", "mains.f", None, None, ("frequency", "measurement")),
        ("lx", "light.l", None, None, ("illuminance", "measurement")),
        ("ppm", "air.co2", None, None, ("co2", "measurement")),
        ("ppm", "air.voc", None, None, (None, "measurement")),
        ("B", "sys.memory_available", None, None, ("data_size", "measurement")),
        ("kB/s", "net.rate", None, None, ("data_rate", "measurement")),
        ("kWh", "m.e", None, None, ("energy", "total_increasing")),
        ("kWh", "m.e", None, "total", ("energy", "total")),
        ("kWh", "m.e", None, "measurement", ("energy", "total_increasing")),  # HA refuses it
        ("s", "job.runtime", None, None, ("duration", "measurement")),
        ("RPM", "fan.speed", None, None, (None, "measurement")),
        ("", "x.y", None, None, (None, "measurement")),
        ("l/min", "pump.flow", None, None, (None, "measurement")),
        ("°C", "x.y", "humidity", None, (None, "measurement")),  # a pair HA refuses
        ("%", "x.y", "humidity", None, ("humidity", "measurement")),
        ("°C", "x.y", "temperature", "total", ("temperature", "measurement")),
        ("", "x.y", None, "total_increasing", (None, "total_increasing")),
    ],
)
def test_device_class_from_the_declared_class_or_the_unit(
    unit: str, name: str, declared: str | None, state_class: str | None,
    expected: tuple[str | None, str],
) -> None:  # fmt: skip
    reading_unit, _, reading = name.partition(".")
    got = sensor_classes(ReadingInfo(reading_unit, reading, unit, None, declared, state_class))
    assert (got.get("device_class"), got["state_class"]) == expected
    assert got.get("unit_of_measurement") == (unit or None)
    if got.get("device_class"):  # and HA takes the pair
        assert unit in SENSOR_CLASS_UNITS[got["device_class"]]
        assert got["state_class"] in SENSOR_CLASS_STATES[got["device_class"]]


@pytest.mark.parametrize(
    ("value", "resolution", "expected"),
    [
        (21.872370876952758, None, 21.872),  # DEFAULT_DECIMALS
        (21.872370876952758, 0.5, 22.0),
        (21.7, 0.5, 21.5),
        (21.872370876952758, 0.1, 21.9),
        (0.30000000000000004, 0.1, 0.3),
        (21.872370876952758, 0.25, 21.75),
        (21.872370876952758, 1.0, 22.0),
        (1234.5, 10.0, 1230.0),
        (-3.14159, 0.01, -3.14),
        (1e-7, None, 0.0),
        (123456789.0, None, 123456789.0),
        (1e308, 1e-12, 1e308),  # value / resolution overflows: left as it is
        (7.0, 1e-20, 7.0),
    ],
)
def test_values_are_rounded_to_the_resolution(
    value: float, resolution: float | None, expected: float
) -> None:
    assert rounded(value, resolution) == expected
    state = json.loads(
        state_payload({"u.r": value}, [], safe_mode=False, variety_ratio=0.0,
                      resolutions={"u.r": resolution})
    )  # fmt: skip
    assert state["readings"]["u.r"] == expected
    assert (
        json.dumps(expected)
        in state_payload(
            {"u.r": value}, [], safe_mode=False, variety_ratio=0.0, resolutions={"u.r": resolution}
        ).decode()
    )


def test_a_value_that_is_not_finite_is_left_out_of_the_state() -> None:
    state = json.loads(
        state_payload({"a.b": math.nan, "a.c": 1.0}, [], safe_mode=False, variety_ratio=0.0)
    )
    assert state["readings"] == {"a.c": 1.0}


def test_command_spec_step_and_options() -> None:
    mode = CommandSpec("mode", "text", options=["eco", "comfort"])  # type: ignore[arg-type]
    assert mode.options == ("eco", "comfort")
    assert mode.check("eco") is None
    assert mode.check("turbo") == "expects one of eco, comfort, got 'turbo'"
    assert CommandSpec("set", step=0.5).check(0.3) is None  # a hint, not enforced
    for bad in (
        {"kind": "number", "options": ("a",)},
        {"kind": "text", "options": ()},
        {"kind": "text", "options": ("a", "a")},
        {"kind": "text", "options": "ab"},
        {"kind": "text", "options": ("a", 1)},
        {"step": 0},
        {"step": math.inf},
        {"step": True},
    ):
        with pytest.raises(UnitError, match=r"options|step"):
            CommandSpec("c", **bad)
    known = {"panel.mode": CommandInfo("panel", "mode", "text", options=("eco", "comfort"))}
    topic = "vsm-edge/home/ha1/cmd/panel/mode"
    assert parse_command("home", "ha1", topic, b"eco", known) == ("panel", "mode", "eco")
    with pytest.raises(ValueError, match="expects one of eco, comfort"):
        parse_command("home", "ha1", topic, b"turbo", known)


def test_the_memory_file_round_trips_and_bad_content_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "data" / MEMORY_FILE
    assert read_memory(path) == {}
    write_memory(path, {"homeassistant/sensor/d/r_a/config": "a"})
    assert read_memory(path) == {"homeassistant/sensor/d/r_a/config": "a"}
    for bad in (b"not json", b"[]", b'{"topics": {"t": 1}}', b'{"topics": []}',
                b" " * (MAX_MEMORY_BYTES + 1)):  # fmt: skip
        path.write_bytes(bad)
        caplog.clear()
        assert read_memory(path) == {}
        assert f"ignoring {path}" in caplog.text


# -- the publisher over an in-memory broker: what it announces, clears and states ----------


async def test_publisher_clears_what_it_no_longer_announces(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broker = MemoryBroker()
    memory = tmp_path / MEMORY_FILE
    infos = [
        ReadingInfo("odd", "t", "C", None, "temperature"),  # a pair HA refuses: said once
        ReadingInfo("temp", "celsius", "°C", 0.5),
        ReadingInfo("hum", "percent", "%"),
    ]
    values: dict[str, float] = {}
    units = {"odd", "temp", "hum", "late"}
    commands = [CommandInfo("valve", "set", "number", 0.0, 10.0)]

    def make(with_commands: bool) -> HomeAssistantPublisher:
        async def execute(unit: str, command: str, value: Any) -> str:
            return "done"

        return HomeAssistantPublisher(
            prefix="homeassistant", mesh="home", node="ha1", interval_s=0.02,
            transport_factory=lambda will: broker.transport("ha1-ha", will=will),
            snapshot=lambda: (list(infos), dict(values), [], False, 0.5),
            commands=lambda: list(commands), execute=execute if with_commands else None,
            units=lambda: sorted(units), memory=memory,
        )  # fmt: skip

    def configs() -> dict[str, bytes]:
        return {t: m.payload for t, m in broker.retained.items() if t.endswith("/config")}

    async def until(predicate: Any) -> None:
        with trio.fail_after(10):
            while not predicate():
                await trio.sleep(0.01)

    state = state_topic("home", "ha1")
    temp = "homeassistant/sensor/vsm_home_ha1/r_temp_celsius/config"
    hum = "homeassistant/sensor/vsm_home_ha1/r_hum_percent/config"
    valve = "homeassistant/number/vsm_home_ha1/c_valve_set/config"
    async with trio.open_nursery() as nursery:
        publisher = make(with_commands=True)
        await nursery.start(publisher.run)
        await until(lambda: len(configs()) == 8)  # 3 readings, 4 node entities, 1 command
        await until(lambda: publisher.configs_published == 8 and memory.exists())
        # readings declared but none seen yet: no state (no "readings": {})
        assert state not in broker.retained
        values["temp.celsius"] = 21.872370876952758
        await until(lambda: state in broker.retained)
        assert json.loads(broker.retained[state].payload)["readings"] == {"temp.celsius": 22.0}
        # a reading the unit stops declaring while running: its config is cleared
        infos.pop()
        await until(lambda: hum not in broker.retained)
        assert publisher.configs_removed == 1
        nursery.cancel_scope.cancel()
    warnings = [r.getMessage() for r in caplog.records if "device_class" in r.getMessage()]
    assert warnings == [
        "home assistant: odd.t declares device_class 'temperature', which HA does not take "
        "with unit 'C': left out"
    ]
    assert set(read_memory(memory)) == set(configs())
    # restart: unit "temp" gone, commands off; "late" has not declared its readings yet
    units.discard("temp")
    late = "homeassistant/sensor/vsm_home_ha1/r_late_x/config"
    write_memory(memory, {**read_memory(memory), late: "late"})
    infos.clear()
    async with trio.open_nursery() as nursery:
        publisher = make(with_commands=False)
        await nursery.start(publisher.run)
        await until(lambda: temp not in configs() and valve not in configs())
        assert publisher.configs_removed == 2
        nursery.cancel_scope.cancel()
    assert set(read_memory(memory)) == set(configs()) | {late}  # kept: "late" may declare it


@pytest.mark.integration
@pytest.mark.timeout(90)
async def test_agent_clears_a_removed_units_entities_over_mosquitto(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    def config(units: list[dict[str, Any]]) -> Any:
        return parse_config(
            {
                "node": {"id": "ha1", "mesh": "home", "data_dir": str(tmp_path / "data")},
                "broker": {"url": mosquitto.url},
                "discovery": {"enabled": False},
                "status": {"enabled": False},
                "homeassistant": {"enabled": True, "state_interval_s": 0.5},
                "units": units,
            }
        )

    temp = {"name": "temp", "kind": "simulated-sensor",
            "options": {"reading": "celsius", "unit": "°C", "resolution": 0.5,
                        "period_s": 0.1}}  # fmt: skip
    air = {"name": "air", "kind": "simulated-sensor",
           "options": {"reading": "humidity", "unit": "%", "mean": 45.0, "noise": 3.0,
                       "resolution": 0.1, "period_s": 0.1}}  # fmt: skip
    watcher = MqttTransport(MqttSettings.from_url(mosquitto.url, client_id="ha-watcher"))
    seen: dict[str, list[bytes]] = {}
    states: list[dict[str, Any]] = []

    async def collect() -> None:
        async for message in watcher.messages:
            if message.topic == state_topic("home", "ha1"):
                states.append(json.loads(message.payload))
            else:
                seen.setdefault(message.topic, []).append(message.payload)

    async def until(predicate: Any, timeout: float = 20) -> None:
        with trio.fail_after(timeout):
            while not predicate():
                await trio.sleep(0.05)

    async def retained_configs(client_id: str) -> dict[str, dict[str, Any]]:
        """What a new client subscribing now gets: the broker's retained configs."""
        fresh = MqttTransport(MqttSettings.from_url(mosquitto.url, client_id=client_id))
        got: dict[str, dict[str, Any]] = {}
        async with trio.open_nursery() as nursery:
            await nursery.start(fresh.run)
            await fresh.wait_connected()
            await fresh.subscribe("homeassistant/#", qos=1)
            # Mosquitto queues a subscription's retained messages before anything
            # published after it: once the marker arrives, every one of them has
            await fresh.publish("homeassistant/zz-marker", b"end", qos=1)
            with trio.fail_after(20):
                async for message in fresh.messages:
                    if message.topic == "homeassistant/zz-marker":
                        break
                    got[message.topic] = json.loads(message.payload)
            nursery.cancel_scope.cancel()
        return got

    air_topic = "homeassistant/sensor/vsm_home_ha1/r_air_humidity/config"
    temp_topic = "homeassistant/sensor/vsm_home_ha1/r_temp_celsius/config"
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        await watcher.wait_connected()
        await watcher.subscribe("homeassistant/+/vsm_home_ha1/#", qos=1)
        await watcher.subscribe(state_topic("home", "ha1"), qos=1)
        nursery.start_soon(collect)

        agent = Agent(config([temp, air]), broker_url=mosquitto.url,
                      extensions=(serve_homeassistant,))  # fmt: skip
        await nursery.start(agent.run)
        await until(lambda: len(states) >= 3)
        agent.stop()
        await agent.stopped()
        # no state before a reading exists; values at the units' resolutions
        assert all(s["readings"] for s in states), states[0]
        for s in states:
            for key, value in s["readings"].items():
                step = 0.5 if key == "temp.celsius" else 0.1
                assert abs(value / step - round(value / step)) < 1e-6, (key, value)
                assert len(repr(value).partition(".")[2]) <= 1, (key, value)
        first = await retained_configs("ha-fresh-1")
        assert len(first) == 6  # 2 readings, 4 node entities
        for topic, cfg in first.items():
            check_config(topic.split("/")[1], cfg)
        assert first[temp_topic]["device_class"] == "temperature"
        assert first[air_topic]["device_class"] == "humidity"
        assert first[air_topic]["default_entity_id"] == "sensor.vsm_home_ha1_air_humidity"
        assert air_topic in read_memory(tmp_path / "data" / MEMORY_FILE)

        # restarted without the unit "air": its config is cleared (an empty retained payload)
        agent = Agent(config([temp]), broker_url=mosquitto.url,
                      extensions=(serve_homeassistant,))  # fmt: skip
        await nursery.start(agent.run)
        await until(lambda: seen[air_topic][-1] == b"")
        agent.stop()
        await agent.stopped()
        second = await retained_configs("ha-fresh-2")
        assert set(second) == set(first) - {air_topic}
        assert air_topic not in read_memory(tmp_path / "data" / MEMORY_FILE)
        assert seen[temp_topic].count(b"") == 0
        nursery.cancel_scope.cancel()


def test_a_trigger_command_is_a_button_that_sends_no_value() -> None:
    (topic, raw), = command_messages(
        "homeassistant", "home", "ha1", [CommandInfo("pump", "flush", "trigger")]
    )
    config = json.loads(raw)
    assert topic == "homeassistant/button/vsm_home_ha1/c_pump_flush/config"
    assert config["payload_press"] == "PRESS"
    assert config["command_topic"] == "vsm-edge/home/ha1/cmd/pump/flush"
    assert "optimistic" not in config  # not a button key
    infos = {"pump.flush": CommandInfo("pump", "flush", "trigger")}
    assert parse_command("home", "ha1", config["command_topic"], b"PRESS", infos) == (
        "pump", "flush", None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="is a button"):
        parse_command("home", "ha1", config["command_topic"], b"1", infos)
