"""The ``mqtt-source`` unit kind: its payload decoder and templates (pure, fuzzed), its
options, and the unit in a runtime against a real Mosquitto with zigbee2mqtt-, Tasmota-
and Shelly-shaped devices played by a test client. Real time, each test bounded."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from support.vsm import config, running

from vsm_edge.agent import Runtime, UnitError
from vsm_edge.agent.units.mqtt_source import (
    REFUSALS,
    MqttSourceUnit,
    PayloadError,
    Source,
    extract,
    render,
)
from vsm_edge.agent.vsm.unit import load_unit
from vsm_edge.sync import MqttSettings, MqttTransport

# Payloads shaped as the projects document them: zigbee2mqtt's device state
# (an Aqara WSDCGQ11LM on zigbee2mqtt/<friendly name>), Tasmota's telemetry
# (tele/<topic>/SENSOR with a DS18B20) and its STATUS 8 answer, Tasmota's
# plain-text POWER state, and a Shelly Plus 1PM's (Gen2) switch status.
Z2M = (b'{"battery":100,"humidity":58.12,"linkquality":96,"pressure":1012.5,'
       b'"temperature":21.85,"voltage":3025}')  # fmt: skip
TASMOTA_SENSOR = (b'{"Time":"2024-01-01T12:00:00","DS18B20":{"Id":"01144A0CB2AA",'
                  b'"Temperature":19.6},"TempUnit":"C"}')  # fmt: skip
TASMOTA_STATUS8 = (b'{"StatusSNS":{"Time":"2024-01-01T12:00:00","DS18B20":'
                   b'{"Id":"01144A0CB2AA","Temperature":19.7},"TempUnit":"C"}}')  # fmt: skip
SHELLY = (b'{"id":0,"source":"init","output":true,"apower":8.5,"voltage":230.1,'
          b'"current":0.05,"aenergy":{"total":12.345,"by_minute":[0.0,0.0,0.0],'
          b'"minute_ts":1700000000},"temperature":{"tC":41.2,"tF":106.2}}')  # fmt: skip


def _source(path: str, topic: str = "t") -> Source:
    return Source("r", topic, tuple(path.split(".")) if path else ())


# --- the decoder ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "path", "value"),
    [
        (Z2M, "temperature", 21.85),
        (Z2M, "humidity", 58.12),
        (TASMOTA_SENSOR, "DS18B20.Temperature", 19.6),
        (TASMOTA_STATUS8, "StatusSNS.DS18B20.Temperature", 19.7),
        (b"ON", "", 1.0),  # Tasmota stat/<topic>/POWER: plain text, the default map
        (b"OFF", "", 0.0),
        (b"21.5", "", 21.5),
        (b'"12.5"', "", 12.5),  # a numeric string
        (SHELLY, "output", 1.0),  # a bool
        (SHELLY, "temperature.tC", 41.2),
        (SHELLY, "aenergy.total", 12.345),
        (SHELLY, "aenergy.by_minute.1", 0.0),  # a list index
    ],
)
def test_extract_reads_device_payloads(payload: bytes, path: str, value: float) -> None:
    assert extract(_source(path), payload) == value


@pytest.mark.parametrize(
    ("payload", "path", "kind", "reason"),
    [
        (b"x" * 70000, "", "too large", "payload of 70000 bytes is over the 65536-byte limit"),
        (b"\xff\xfe", "", "not UTF-8", "payload is not UTF-8"),
        (b"{not json", "temperature", "not JSON", "payload is not JSON"),
        (Z2M, "illuminance", "missing field", "no field illuminance"),
        (b'{"temperature":null}', "temperature", "missing field", "temperature: null"),
        (SHELLY, "aenergy.by_minute.7", "missing field", "no field aenergy.by_minute.7"),
        (SHELLY, "temperature", "not a number", "temperature: a object, not a number"),
        (b'{"t":"warm"}', "t", "not a number", "t: 'warm' is not a number or a mapped state"),
        (b'{"t":1e999}', "t", "not a number", "t: not a finite number"),
        (b'{"t":"NaN"}', "t", "not a number", "t: not a finite number"),
        (b"[" * 5000 + b"]" * 5000, "a", "not JSON", "payload is not JSON"),
        (b'{"t":' + b"9" * 400 + b"}", "t", "not a number", "t: number out of range"),
    ],
)
def test_extract_refuses_with_one_error_type(
    payload: bytes, path: str, kind: str, reason: str
) -> None:
    with pytest.raises(PayloadError) as info:
        extract(_source(path), payload)
    assert info.value.kind == kind
    assert str(info.value) == reason


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=4),
    max_leaves=20,
)  # fmt: skip
PATHS = st.lists(st.sampled_from(["a", "b", "0", "1", "temperature", "Temperature"]),
                 max_size=4).map(lambda p: Source("r", "t", tuple(p)))  # fmt: skip


@given(PATHS, st.binary(max_size=300))
def test_extract_fuzz_bytes_give_a_finite_value_or_a_payload_error(
    source: Source, payload: bytes
) -> None:
    try:
        value = extract(source, payload, limit=200)
    except PayloadError as exc:
        kind = exc.kind
    else:
        assert math.isfinite(value)
        return
    assert kind in REFUSALS


@given(PATHS, JSON)
def test_extract_fuzz_json_documents(source: Source, document: Any) -> None:
    payload = json.dumps(document).encode()  # NaN and Infinity too, as Python writes them
    for chunk in (payload, payload[: len(payload) // 2]):  # whole, and cut short
        try:
            value = extract(source, chunk)
        except PayloadError:
            continue
        assert math.isfinite(value)


def test_render_substitutes_typed_values_and_nothing_else() -> None:
    assert render({"state": "{value}"}, "ON") == b'{"state":"ON"}'
    assert render("{value}", 21.5) == b"21.5"
    assert render({"params": {"id": 0, "on": "{value}"}}, True) == b'{"params":{"id":0,"on":true}}'
    assert render("TOGGLE", 1) == b'"TOGGLE"'
    # a value cannot leave its place: quotes and braces stay inside the string
    hostile = '"}, "brightness": 255, "x": {"'
    assert json.loads(render({"state": "{value}", "n": 1}, hostile)) == {"state": hostile, "n": 1}
    assert render({"s": "pre {value} post"}, 5) == b'{"s":"pre {value} post"}'  # exact only
    with pytest.raises(UnitError, match="cannot encode the payload"):
        render("{value}", math.nan)


# --- options ----------------------------------------------------------------------------

READING = {"name": "t", "topic": "zigbee2mqtt/room", "path": "temperature"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"readings": [READING]}, "broker is required"),
        ({"broker": "http://x", "readings": [READING]}, "broker URL must start with mqtt://"),
        ({"broker": "mqtt://127.0.0.1:1883"}, "at least one reading or command"),
        ({"broker": "mqtt://h", "readings": [{**READING, "topic": "zigbee2mqtt/#"}]},
         "topic 'zigbee2mqtt/#'"),
        ({"broker": "mqtt://h", "readings": [{**READING, "path": "a..b"}]},
         "path must be dotted names"),
        ({"broker": "mqtt://h", "readings": [{**READING, "map": {"ON": "yes"}}]},
         "map must be a table of state = number"),
        ({"broker": "mqtt://h", "readings": [READING, READING]}, "two readings have one name"),
        ({"broker": "mqtt://h", "commands": [{"name": "c", "topic": "x/set", "kind": "colour"}]},
         "kind must be number, bool or text"),
        ({"broker": "mqtt://h", "qos": 2, "readings": [READING]}, "qos must be 0 or 1"),
        ({"broker": "mqtt://h", "readings": [{**READING, "unit": 3}]}, "unit must be a non-empty"),
        ({"broker": "mqtt://h", "readings": [READING] * 65}, "at most 64 readings"),
        ({"broker": "mqtt://h", "topic": "x", "readings": [READING]}, "unknown option 'topic'"),
    ],
)  # fmt: skip
def test_bad_options_are_one_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UnitError, match=message):
        load_unit("src", "mqtt-source", options)


# --- against Mosquitto --------------------------------------------------------------


def _options(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "broker": url,
        "pain_after_s": 0.5,
        "readings": [
            {"name": "room_temp", "topic": "zigbee2mqtt/living_room", "path": "temperature",
             "unit": "°C", "resolution": 0.1},
            {"name": "room_humidity", "topic": "zigbee2mqtt/living_room", "path": "humidity",
             "unit": "%"},
            {"name": "tank_temp", "topic": "tele/boiler/SENSOR", "path": "DS18B20.Temperature",
             "unit": "°C"},
            {"name": "boiler_power", "topic": "stat/boiler/POWER"},
            {"name": "plug_power", "topic": "shellyplus1pm-a8032ab12345/status/switch:0",
             "path": "apower", "unit": "W"},
        ],
        "commands": [
            {"name": "plug", "topic": "zigbee2mqtt/plug/set", "kind": "bool",
             "payload": {"state": "{value}"}, "true_value": "ON", "false_value": "OFF"},
            {"name": "boiler", "topic": "cmnd/boiler/POWER", "kind": "bool",
             "true_value": 1, "false_value": 0},
            {"name": "relay", "topic": "shellyplus1pm-a8032ab12345/rpc", "kind": "bool",
             "payload": {"id": 1, "src": "vsm-edge", "method": "Switch.Set",
                         "params": {"id": 0, "on": "{value}"}}},
            {"name": "brightness", "topic": "zigbee2mqtt/lamp/set", "minimum": 0,
             "maximum": 254, "payload": {"brightness": "{value}"}},
        ],
        **extra,
    }  # fmt: skip


@asynccontextmanager
async def device(url: str, nursery: trio.Nursery) -> AsyncIterator[MqttTransport]:
    """A client playing the devices: publishes their state, hears their commands."""
    transport = MqttTransport(MqttSettings.from_url(url, client_id="devices", session_expiry=0))
    await transport.subscribe("zigbee2mqtt/+/set")
    await transport.subscribe("cmnd/#")
    await transport.subscribe("+/rpc")
    await nursery.start(transport.run)
    await transport.wait_connected()
    yield transport


def _unit(rt: Runtime) -> MqttSourceUnit:
    made = rt.units["src"].unit
    assert isinstance(made, MqttSourceUnit)
    return made


def _pain(rt: Runtime) -> list[tuple[str, bool]]:
    return [
        (a.signal.valence, a.acked_at is not None)
        for a in rt.algedonic.alarms.values()
        if a.signal.source == "s1.src"
    ]


async def _until(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.integration
async def test_readings_from_device_payloads_and_commands_to_device_topics(
    mosquitto: Mosquitto,
) -> None:
    cfg = config({"units": [{"name": "src", "kind": "mqtt-source",
                             "options": _options(mosquitto.url)}]})  # fmt: skip
    with trio.fail_after(60):
        async with running(cfg) as rt, trio.open_nursery() as nursery:
            async with device(mosquitto.url, nursery) as dev:
                src = _unit(rt)
                await _until(lambda: src.status()["connection"] == "connected", "subscribed")
                await dev.publish("zigbee2mqtt/living_room", Z2M, qos=1)
                await dev.publish("tele/boiler/SENSOR", TASMOTA_SENSOR, qos=1)
                await dev.publish("stat/boiler/POWER", b"ON", qos=1)
                await dev.publish("shellyplus1pm-a8032ab12345/status/switch:0", SHELLY, qos=1)
                await _until(lambda: len(src.values) == 5, "five readings")
                assert src.values == {"room_temp": 21.85, "room_humidity": 58.12,
                                      "tank_temp": 19.6, "boiler_power": 1.0,
                                      "plug_power": 8.5}  # fmt: skip
                assert rt.status().s1.units["src"].emitted >= 5

                # commands reach the device topics, payloads from the templates
                for name, value in (("plug", True), ("boiler", False), ("relay", True),
                                    ("brightness", 128)):  # fmt: skip
                    result = await rt.execute_command("src", name, value)
                    assert result.accepted, result.reason
                heard: dict[str, bytes] = {}
                with trio.fail_after(10):
                    async for message in dev.messages:
                        heard[message.topic] = message.payload
                        if len(heard) == 4:
                            break
                assert heard == {
                    "zigbee2mqtt/plug/set": b'{"state":"ON"}',
                    "cmnd/boiler/POWER": b"0",
                    "shellyplus1pm-a8032ab12345/rpc":
                        b'{"id":1,"src":"vsm-edge","method":"Switch.Set",'
                        b'"params":{"id":0,"on":true}}',
                    "zigbee2mqtt/lamp/set": b'{"brightness":128}',
                }  # fmt: skip
                refused = await rt.execute_command("src", "brightness", 300)
                assert not refused.accepted
                assert "above maximum 254" in refused.reason
                assert src.status()["published"] == 4

                # junk is counted and painful; the next good value clears the pain
                await dev.publish("zigbee2mqtt/living_room", b"\xff\x00junk", qos=1)
                await _until(lambda: ("pain", False) in _pain(rt), "pain")
                alarm = next(a for a in rt.algedonic.alarms.values()
                             if a.signal.source == "s1.src")  # fmt: skip
                assert alarm.signal.reason == (
                    "mqtt-source: refused zigbee2mqtt/living_room (room_temp): payload is not UTF-8"
                )
                # a partial update only counts (no second pain)
                await dev.publish("zigbee2mqtt/living_room", b'{"linkquality":90}', qos=1)
                await _until(lambda: src.refusals.get("missing field") == 2, "counted")
                await dev.publish("zigbee2mqtt/living_room", b" " * 70000, qos=1)
                await _until(lambda: src.refusals.get("too large") == 2, "too large")
                await dev.publish("zigbee2mqtt/living_room", Z2M.replace(b"21.85", b"22.0"),
                                  qos=1)  # fmt: skip
                await _until(lambda: src.values["room_temp"] == 22.0, "a good value")
                await _until(lambda: _pain(rt)[-1:] == [("pleasure", False)], "cleared")
                assert _pain(rt) == [("pain", True), ("pleasure", False)]
                assert src.refusals == {"not UTF-8": 2, "missing field": 2, "too large": 2}
                nursery.cancel_scope.cancel()
            rt.stop()


@pytest.mark.integration
async def test_an_unreachable_broker_is_pain_until_it_returns(mosquitto: Mosquitto) -> None:
    mosquitto.stop()
    cfg = config({"units": [{"name": "src", "kind": "mqtt-source",
                             "options": _options(mosquitto.url)}]})  # fmt: skip
    with trio.fail_after(60):
        async with running(cfg) as rt:
            await _until(lambda: ("pain", False) in _pain(rt), "pain")
            alarm = next(a for a in rt.algedonic.alarms.values() if a.signal.source == "s1.src")
            assert (
                alarm.signal.reason == f"mqtt-source: broker 127.0.0.1:{mosquitto.port} unreachable"
            )
            refused = await rt.execute_command("src", "plug", True)
            assert not refused.accepted
            assert "not connected" in refused.reason
            await trio.to_thread.run_sync(mosquitto.start)
            await _until(lambda: _pain(rt)[-1:] == [("pleasure", False)], "cleared")
            assert _pain(rt) == [("pain", True), ("pleasure", False)]
            rt.stop()
