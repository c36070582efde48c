"""Home Assistant MQTT discovery: an agent's readings and alarms as HA entities (opt-in).

With ``[homeassistant] enabled = true`` the agent opens a second MQTT
connection to its broker (client id ``{node}-ha``) and publishes, retained:

* one discovery config per entity on
  ``{prefix}/{component}/vsm_{mesh}_{node}/{object_id}/config`` — a sensor per
  S1 reading (its unit, and the device class the unit declares or its unit of
  measure implies, only as pairs HA accepts: :func:`sensor_classes`), a
  ``problem`` binary sensor for the node's alarms, diagnostic sensors for its
  pain and variety ratio and a diagnostic binary sensor for safe mode — all
  grouped under one HA device (``identifiers: ["vsm_{mesh}_{node}"]``), each
  with a ``default_entity_id`` (HA 2025.10 deprecated ``object_id``);
* the state of all of them as one JSON object on ``vsm-edge/{mesh}/{node}/state``
  (each entity reads its key with ``value_template``), at most once per
  ``state_interval_s``, from the first reading on, each value rounded to its
  reading's resolution (:func:`rounded`);
* an empty retained config for an entity announced before and gone now (its
  unit removed from the config, a reading or command no longer declared,
  commands turned off), so HA deletes it: the topics announced are kept in
  ``{data_dir}/homeassistant.json`` across restarts (:meth:`HomeAssistantPublisher._removed`);
* availability on ``vsm-edge/{mesh}/{node}/availability``: "online" when
  connected, "offline" as the connection's last will — the node's presence,
  in plain text, since HA cannot read the signed presence envelope.

With ``[homeassistant] commands = true`` it also announces each unit command
as an entity HA can use (:func:`command_messages`: ``number`` for a number,
``switch`` for a bool, ``select`` for text with options, ``text`` for other
text), with a ``command_topic``
``vsm-edge/{mesh}/{node}/cmd/{unit}/{command}``, and subscribes to those
topics. HA cannot sign envelopes, so a command arriving there runs *locally*,
as issuer ``homeassistant``, through the same S1/S2/S3/S5 checks as any
local command (:func:`parse_command` checks the payload first); whoever may
publish on those topics at the broker may command the node's units.

HA announces itself with a birth message, "online" on ``{prefix}/status``;
the agent subscribes to it and republishes every config and the state, so
entities come back after HA restarts even without retained configs. The
payload builders are pure (this module's functions; tested against HA's
topic and key rules); :class:`HomeAssistantPublisher` is the Trio edge.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from vsm_edge.sync import Timestamp, Transport, TransportError, Will

if TYPE_CHECKING:
    from ..config.schema import AgentConfig
    from ..mesh.node import Agent
    from ..vsm.runtime import Runtime

__all__ = [
    "MEMORY_FILE",
    "SENSOR_DEVICE_CLASSES",
    "CommandInfo",
    "HomeAssistantPublisher",
    "ReadingInfo",
    "availability_topic",
    "command_messages",
    "command_topic",
    "derive_device_class",
    "discovery_messages",
    "entity_slug",
    "is_birth",
    "object_id",
    "parse_command",
    "read_memory",
    "rounded",
    "sensor_classes",
    "serve_homeassistant",
    "state_payload",
    "state_topic",
    "write_memory",
]

log = logging.getLogger("vsm_edge.agent.homeassistant")

_SAFE = re.compile(r"[^A-Za-z0-9_-]")
MAX_ENTITIES = 256
VERSION = "0.1.0"
MAX_COMMAND_PAYLOAD = 256  # bytes of a command from HA
MAX_RUNNING_COMMANDS = 16  # commands from HA executing at once; more are dropped (counted)
_TOPIC_UNSAFE = frozenset("/+#")


@dataclass(frozen=True, slots=True)
class ReadingInfo:
    """One S1 reading as HA sees it: ``{unit}.{reading}``, its unit of measurement, the
    resolution its values are rounded to, and the device/state class it declares."""

    unit: str
    reading: str
    unit_of_measurement: str = ""
    resolution: float | None = None
    device_class: str | None = None
    state_class: str | None = None

    @property
    def key(self) -> str:
        return f"{self.unit}.{self.reading}"


@dataclass(frozen=True, slots=True)
class CommandInfo:
    """One unit command as HA sees it: kind ``number``, ``bool`` or ``text``, number bounds."""

    unit: str
    command: str
    kind: str = "number"
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.unit}.{self.command}"


def object_id(text: str) -> str:
    """``text`` made into an HA object id: only ``[A-Za-z0-9_-]`` (others become ``_``)."""
    return _SAFE.sub("_", text)[:128] or "_"


def entity_slug(text: str) -> str:
    """``text`` made into the object part of an HA entity id: lowercase ``[a-z0-9_]``,
    no leading, trailing or doubled ``_`` (HA's ``cv.entity_id`` rule)."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:200] or "vsm"


def _device_id(mesh: str, node: str) -> str:
    return object_id(f"vsm_{mesh}_{node}")


# Home Assistant's sensor device classes this module emits: the units HA accepts for
# each and the state classes it allows (HA core, homeassistant/components/sensor/const.py:
# DEVICE_CLASS_UNITS, DEVICE_CLASS_STATE_CLASSES; the UnitOf* enums of homeassistant/const.py).
# Only units HA has accepted for years are listed (newer ones such as mW or kV are left
# out), so an older HA takes them too. A class or a unit not listed is not emitted.
_MEASUREMENT = frozenset({"measurement"})
_TOTALS = frozenset({"total", "total_increasing"})
_ANY_STATE = _MEASUREMENT | _TOTALS
_PRESSURE = frozenset({"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"})
_DATA_SIZE = frozenset(
    {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB",
     "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"}
)  # fmt: skip
_DATA_RATE = frozenset(
    {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s",
     "KiB/s", "MiB/s", "GiB/s"}
)  # fmt: skip
SENSOR_DEVICE_CLASSES: Mapping[str, tuple[frozenset[str], frozenset[str]]] = {
    "temperature": (frozenset({"°C", "°F", "K"}), _MEASUREMENT),
    "humidity": (frozenset({"%"}), _MEASUREMENT),
    "moisture": (frozenset({"%"}), _MEASUREMENT),
    "battery": (frozenset({"%"}), _MEASUREMENT),
    "power": (frozenset({"W", "kW", "MW", "GW", "TW", "BTU/h"}), _MEASUREMENT),
    "voltage": (frozenset({"mV", "V"}), _MEASUREMENT),
    "current": (frozenset({"mA", "A"}), _MEASUREMENT),
    "pressure": (_PRESSURE, _MEASUREMENT),
    "atmospheric_pressure": (_PRESSURE, _MEASUREMENT),
    "frequency": (frozenset({"Hz", "kHz", "MHz", "GHz"}), _MEASUREMENT),
    "illuminance": (frozenset({"lx"}), _MEASUREMENT),
    "co2": (frozenset({"ppm"}), _MEASUREMENT),
    "data_size": (_DATA_SIZE, _ANY_STATE),
    "data_rate": (_DATA_RATE, _MEASUREMENT),
    "energy": (frozenset({"Wh", "kWh", "MWh", "MJ", "GJ"}), _TOTALS),
    "duration": (frozenset({"d", "h", "min", "s", "ms"}), _ANY_STATE),
}
# a device class from the unit of measure alone, where the unit says it unambiguously
_BY_UNIT: Mapping[str, str] = {
    **dict.fromkeys(("°C", "°F", "K"), "temperature"),
    **dict.fromkeys(("W", "kW", "MW", "GW", "TW"), "power"),
    **dict.fromkeys(("mV", "V"), "voltage"),
    **dict.fromkeys(("mA", "A"), "current"),
    **dict.fromkeys(_PRESSURE, "pressure"),
    **dict.fromkeys(("Hz", "kHz", "MHz", "GHz"), "frequency"),
    "lx": "illuminance",
    **dict.fromkeys(_DATA_SIZE, "data_size"),
    **dict.fromkeys(_DATA_RATE, "data_rate"),
    **dict.fromkeys(("Wh", "kWh", "MWh"), "energy"),
    **dict.fromkeys(("ms", "s", "min", "h", "d"), "duration"),
}
# units shared by several classes: the class only when the reading's name says which
_BY_NAME: Mapping[str, tuple[tuple[str, str], ...]] = {
    "%": (("humid", "humidity"), ("battery", "battery"), ("moisture", "moisture")),
    "ppm": (("co2", "co2"),),
}
_DEFAULT_STATE_CLASS = {"energy": "total_increasing"}  # else "measurement"


def derive_device_class(unit_of_measurement: str, name: str) -> str | None:
    """HA's device class of a reading from its unit (and, for ``%``/``ppm``, its name):
    None where the unit does not say it unambiguously."""
    if unit_of_measurement in _BY_UNIT:
        return _BY_UNIT[unit_of_measurement]
    lowered = name.lower()
    for word, device_class in _BY_NAME.get(unit_of_measurement, ()):
        if word in lowered:
            return device_class
    return None


def sensor_classes(info: ReadingInfo) -> dict[str, str]:
    """``unit_of_measurement``, ``device_class`` and ``state_class`` of a reading's sensor.

    The declared device class, else one derived from the unit; emitted only when
    HA allows the unit for it (:data:`SENSOR_DEVICE_CLASSES`). The declared state
    class when the device class allows it, else the class's default (``measurement``;
    ``total_increasing`` for energy).
    """
    unit = info.unit_of_measurement
    device_class = info.device_class or derive_device_class(unit, info.key)
    out: dict[str, str] = {}
    if unit:
        out["unit_of_measurement"] = unit
    states = _ANY_STATE
    allowed = SENSOR_DEVICE_CLASSES.get(device_class or "")
    if device_class is not None and allowed is not None and unit in allowed[0]:
        out["device_class"] = device_class
        states = allowed[1]
    else:
        device_class = None
    default = _DEFAULT_STATE_CLASS.get(device_class or "", "measurement")
    out["state_class"] = info.state_class if info.state_class in states else default
    return out


DEFAULT_DECIMALS = 3
"""Decimal places of a reading whose unit declares no resolution."""


def rounded(value: float, resolution: float | None) -> float:
    """``value`` to the nearest multiple of ``resolution``, printed with the resolution's
    decimals (0.5 -> 21.5, 0.1 -> 21.9, 1 -> 22.0); without one, to
    :data:`DEFAULT_DECIMALS` decimal places."""
    if resolution is None or not (0 < resolution < math.inf):
        return round(value, DEFAULT_DECIMALS)
    steps = value / resolution
    if not math.isfinite(steps):  # a huge value at a tiny resolution: nothing to round
        return value
    exponent = Decimal(repr(float(resolution))).normalize().as_tuple().exponent
    decimals = min(12, max(0, -exponent)) if isinstance(exponent, int) else DEFAULT_DECIMALS
    return round(round(steps) * resolution, decimals)


def state_topic(mesh: str, node: str) -> str:
    return f"vsm-edge/{mesh}/{node}/state"


def availability_topic(mesh: str, node: str) -> str:
    return f"vsm-edge/{mesh}/{node}/availability"


def _device(mesh: str, node: str) -> dict[str, Any]:
    return {
        "identifiers": [_device_id(mesh, node)],
        "name": f"vsm-edge {node}",
        "manufacturer": "vsm-edge",
        "model": f"agent (mesh {mesh})",
        "sw_version": VERSION,
    }


def _entity(
    prefix: str, mesh: str, node: str, component: str, obj: str, entity: str, name: str
) -> tuple[str, dict[str, Any]]:
    """(config topic, the keys every entity has): ``unique_id`` ``{device}_{obj}`` (as
    before), ``default_entity_id`` ``{component}.{device}_{entity}`` (HA 2025.10's
    replacement of ``object_id``), the availability topic, device and origin."""
    device_id = _device_id(mesh, node)
    payload = {
        "name": name,
        "unique_id": f"{device_id}_{obj}",
        "default_entity_id": f"{component}.{entity_slug(f'{device_id}_{entity}')}",
        "availability_topic": availability_topic(mesh, node),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": _device(mesh, node),
        "origin": {"name": "vsm-edge", "sw_version": VERSION},
    }
    return f"{prefix}/{component}/{device_id}/{obj}/config", payload


def _encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()


def _discovery(
    prefix: str, mesh: str, node: str, readings: Iterable[ReadingInfo]
) -> list[tuple[str, bytes, str]]:
    """(topic, payload, unit: "" for the node's own entities) of every sensor config."""
    out = []
    state = {"state_topic": state_topic(mesh, node)}
    for info in list(readings)[:MAX_ENTITIES]:
        topic, payload = _entity(
            prefix, mesh, node, "sensor", object_id(f"r_{info.key}"), info.key, info.key
        )
        payload.update(state)
        payload["value_template"] = "{{ value_json.readings[" + json.dumps(info.key) + "] }}"
        payload.update(sensor_classes(info))
        out.append((topic, _encode(payload), info.unit))
    node_entities: list[tuple[str, str, str, dict[str, Any]]] = [
        ("binary_sensor", "alarm", "alarm", {
            "device_class": "problem", "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{{ value_json.alarm }}",
            "json_attributes_topic": state_topic(mesh, node),
            "json_attributes_template": "{{ {'alarms': value_json.alarms} | tojson }}",
        }),
        ("sensor", "pain", "pain", {
            "value_template": "{{ value_json.pain }}", "state_class": "measurement",
            "entity_category": "diagnostic",
        }),
        ("sensor", "variety_ratio", "variety ratio", {
            "value_template": "{{ value_json.variety_ratio }}", "state_class": "measurement",
            "entity_category": "diagnostic",
        }),
        ("binary_sensor", "safe_mode", "safe mode", {
            "payload_on": "ON", "payload_off": "OFF",
            "value_template": "{{ value_json.safe_mode }}", "entity_category": "diagnostic",
        }),
    ]  # fmt: skip
    for component, obj, name, keys in node_entities:
        topic, payload = _entity(prefix, mesh, node, component, obj, obj, name)
        payload.update(state)
        payload.update(keys)
        out.append((topic, _encode(payload), ""))
    return out


def discovery_messages(
    prefix: str, mesh: str, node: str, readings: Iterable[ReadingInfo]
) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) of every discovery config of one node (pure).

    At most :data:`MAX_ENTITIES` readings are announced (the rest are left
    out and logged by the caller).
    """
    return [(topic, payload) for topic, payload, _ in _discovery(prefix, mesh, node, readings)]


def state_payload(
    readings: Mapping[str, float],
    alarms: Iterable[Mapping[str, Any]],
    *,
    safe_mode: bool,
    variety_ratio: float,
    resolutions: Mapping[str, float | None] | None = None,
) -> bytes:
    """The JSON state every entity of the node reads (pure).

    ``alarms`` are the node's own active alarms (``id``, ``source``,
    ``intensity``, ``reason``); ``alarm`` is "ON" while one is pain. Each
    reading is :func:`rounded` to its resolution in ``resolutions`` (by
    ``unit.reading``; none: :data:`DEFAULT_DECIMALS` places); a value that is
    not finite is left out (JSON has no NaN).
    """
    resolutions = resolutions or {}
    active = [
        {
            "id": str(a.get("id", "")),
            "source": str(a.get("source", "")),
            "intensity": a.get("intensity"),
            "reason": str(a.get("reason", "")),
        }
        for a in alarms
    ][:32]
    pain = max(
        (float(a["intensity"]) for a in active if isinstance(a["intensity"], int | float)),
        default=0.0,
    )
    values = {
        key: rounded(float(value), resolutions.get(key))
        for key, value in readings.items()
        if math.isfinite(value)
    }
    return json.dumps(
        {
            "readings": values,
            "alarm": "ON" if active else "OFF",
            "alarms": active,
            "pain": round(pain, 4),
            "safe_mode": "ON" if safe_mode else "OFF",
            "variety_ratio": round(variety_ratio, 4),
        },
        sort_keys=True,
        ensure_ascii=False,
    ).encode()


def command_topic(mesh: str, node: str, unit: str, command: str) -> str:
    return f"vsm-edge/{mesh}/{node}/cmd/{unit}/{command}"


MAX_TEXT = 255  # HA's limit of a text entity's max length
NUMBER_RANGE = 1e9  # a number's missing bound: HA needs both
DEFAULT_STEP = 0.001  # a number's step when the command declares none (HA's smallest)
COMMAND_COMPONENTS = frozenset({"number", "switch", "text", "select", "button"})
PRESS = "PRESS"  # a button's payload (HA's default payload_press)


def _bounds(info: CommandInfo) -> tuple[float, float]:
    low = info.minimum if info.minimum is not None else -NUMBER_RANGE
    high = info.maximum if info.maximum is not None else NUMBER_RANGE
    return low, high


def _commandable(info: CommandInfo) -> bool:
    """Can HA reach this command: names usable as topic levels, a kind HA has an entity
    for, a number range HA accepts (min < max)."""
    if info.kind == "number":
        low, high = _bounds(info)
        if not low < high:
            return False
    return (
        info.kind in ("number", "bool", "text", "trigger")
        and bool(info.unit)
        and bool(info.command)
        and not _TOPIC_UNSAFE & set(info.unit + info.command)
    )


def _commands(
    prefix: str, mesh: str, node: str, commands: Iterable[CommandInfo]
) -> list[tuple[str, bytes, str]]:
    out = []
    for info in [c for c in commands if _commandable(c)][:MAX_ENTITIES]:
        if info.kind == "number":
            component = "number"
        elif info.kind == "bool":
            component = "switch"
        elif info.kind == "trigger":
            component = "button"
        else:
            component = "select" if info.options else "text"
        obj = object_id(f"c_{info.key}")
        topic, payload = _entity(prefix, mesh, node, component, obj, info.key, info.key)
        payload["command_topic"] = command_topic(mesh, node, info.unit, info.command)
        payload["retain"] = False
        if component == "button":
            payload["payload_press"] = PRESS
        else:
            payload["optimistic"] = True
        if component == "number":
            payload["min"], payload["max"] = _bounds(info)
            payload["step"] = info.step if info.step is not None else DEFAULT_STEP
            payload["mode"] = "box"
        elif component == "switch":
            payload["payload_on"] = "true"
            payload["payload_off"] = "false"
        elif component == "select":
            payload["options"] = list(info.options or ())
        elif component == "text":
            payload["max"] = MAX_TEXT
        out.append((topic, _encode(payload), info.unit))
    return out


def command_messages(
    prefix: str, mesh: str, node: str, commands: Iterable[CommandInfo]
) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) of the discovery config of each unit command (pure).

    ``number`` (bounds as declared, a missing bound is +-1e9 as HA needs both;
    ``step`` as declared, else 0.001), ``switch`` (payloads ``true`` /
    ``false``), ``select`` for a text command with ``options``, else ``text``
    (at most 255 characters, HA's limit), ``button`` for a trigger (payload
    ``PRESS``); each but the button optimistic (the unit's state is its
    readings), at most :data:`MAX_ENTITIES`. Commands whose names cannot be
    topic levels (``/``, ``+``, ``#``), or numbers whose bounds leave no range,
    are left out.
    """
    return [(topic, payload) for topic, payload, _ in _commands(prefix, mesh, node, commands)]


def parse_command(
    mesh: str, node: str, topic: str, payload: bytes, commands: Mapping[str, CommandInfo]
) -> tuple[str, str, Any]:
    """``(unit, command, value)`` of a command HA sent on ``topic``; raises ValueError.

    ``commands`` maps ``unit.command`` to what the node declares. The
    payload is at most :data:`MAX_COMMAND_PAYLOAD` bytes of UTF-8: a finite
    number for a number command, ``true``/``false`` (or ``ON``/``OFF``) for a
    bool, the text for text. The unit's own checks (bounds...) come after.
    """
    prefix = f"vsm-edge/{mesh}/{node}/cmd/"
    if not topic.startswith(prefix) or topic[len(prefix) :].count("/") != 1:
        raise ValueError(f"not a command topic: {topic!r}")
    unit, command = topic[len(prefix) :].split("/")
    info = commands.get(f"{unit}.{command}")
    if info is None:
        raise ValueError(f"no unit {unit!r} with command {command!r}")
    if len(payload) > MAX_COMMAND_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes, more than {MAX_COMMAND_PAYLOAD}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("payload is not UTF-8") from None
    if info.kind == "trigger":
        if text.strip() != PRESS:
            raise ValueError(f"{info.key} is a button: expects {PRESS}, got {text[:32]!r}")
        return unit, command, None
    if info.kind == "bool":
        word = text.strip().lower()
        if word not in ("true", "false", "on", "off"):
            raise ValueError(f"{info.key} expects true or false, got {text[:32]!r}")
        return unit, command, word in ("true", "on")
    if info.kind == "number":
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{info.key} expects a number, got {text[:32]!r}") from None
        if not math.isfinite(number):
            raise ValueError(f"{info.key} expects a finite number")
        return unit, command, int(number) if number.is_integer() and abs(number) < 2**53 else number
    if info.options is not None and text not in info.options:
        raise ValueError(f"{info.key} expects one of {', '.join(info.options)}, got {text[:32]!r}")
    return unit, command, text


def is_birth(prefix: str, topic: str, payload: bytes) -> bool:
    """Is this Home Assistant's birth message ("online" on ``{prefix}/status``)?"""
    return topic == f"{prefix}/status" and payload.strip() == b"online"


# -- the Trio edge -----------------------------------------------------------------------


Execute = Callable[[str, str, Any], Awaitable[str]]
"""``execute(unit, command, value)``: run a command from HA locally; its outcome status."""

SnapshotValue = tuple[list[ReadingInfo], dict[str, float], list[dict[str, Any]], bool, float]
Snapshot = Callable[[], SnapshotValue]
"""``() -> (reading infos, latest values by key, active alarms, safe mode, variety ratio)``."""


class HomeAssistantPublisher:
    """Publishes discovery configs and state for one node (see the module docstring)."""

    def __init__(
        self,
        *,
        prefix: str,
        mesh: str,
        node: str,
        interval_s: float,
        transport_factory: Callable[[Will], Transport],
        snapshot: Snapshot,
        commands: Callable[[], list[CommandInfo]] | None = None,
        execute: Execute | None = None,
        units: Callable[[], Iterable[str]] | None = None,
        memory: Path | None = None,
    ) -> None:
        self.prefix = prefix
        # which units the node runs now (None: those with readings or commands)
        self.units = units
        # the file remembering what was announced, across restarts (None: this run only)
        self.memory = memory
        # HA's commands: announced and taken only when both are given
        self.commands = commands if execute is not None else None
        self.execute = execute
        self.commands_run: dict[str, int] = {}  # outcome status -> count
        self.commands_refused = 0  # malformed or unknown, before running
        self.commands_dropped = 0  # past MAX_RUNNING_COMMANDS
        self._running = 0
        self.mesh = mesh
        self.node = node
        self.interval_s = interval_s
        self.snapshot = snapshot
        will = Will(topic=availability_topic(mesh, node), payload=b"offline", qos=1, retain=True)
        self.transport = transport_factory(will)
        self.configs_published = 0
        self.configs_removed = 0
        self.births = 0
        self.states_published = 0
        self._announced: dict[str, bytes] = {}  # topic -> payload, as the broker has it
        self._recorded: dict[str, str] = {}  # topic -> its unit ("": the node's), ever announced
        self._live: set[str] = set()  # announced in this run
        self._warned: set[str] = set()  # readings whose device class HA would refuse
        self._republish = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The transport outlives our own tasks by one publish: a clean
        # disconnect sends no last will, so we say "offline" ourselves first.
        transport_scope = trio.CancelScope(shield=True)

        async def run_transport(*, task_status: trio.TaskStatus[None]) -> None:
            with transport_scope:
                await self.transport.run(task_status=task_status)

        if self.memory is not None:
            self._recorded = await trio.to_thread.run_sync(read_memory, self.memory)
        async with trio.open_nursery() as outer:
            await outer.start(run_transport)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._listen, nursery)
                    nursery.start_soon(self._publish_loop)
                    task_status.started()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                    try:
                        topic = availability_topic(self.mesh, self.node)
                        await self.transport.publish(topic, b"offline", qos=1, retain=True)
                    except TransportError:
                        pass
                transport_scope.cancel()

    async def _listen(self, nursery: trio.Nursery) -> None:
        async for message in self.transport.messages:
            if is_birth(self.prefix, message.topic, message.payload):
                self.births += 1
                self._announced.clear()  # HA restarted: announce everything again
                self._republish.set()
            elif self.commands is not None:
                self._command(nursery, message.topic, message.payload)

    def _command(self, nursery: trio.Nursery, topic: str, payload: bytes) -> None:
        assert self.commands is not None
        known = {c.key: c for c in self.commands() if _commandable(c)}
        try:
            unit, command, value = parse_command(self.mesh, self.node, topic, payload, known)
        except ValueError as exc:
            self.commands_refused += 1
            log.info("command from home assistant refused: %s", exc)
            return
        if self._running >= MAX_RUNNING_COMMANDS:
            self.commands_dropped += 1
            log.warning("command from home assistant dropped: %d running", self._running)
            return
        self._running += 1
        nursery.start_soon(self._run_command, unit, command, value)

    async def _run_command(self, unit: str, command: str, value: Any) -> None:
        assert self.execute is not None
        try:
            status = await self.execute(unit, command, value)
        finally:
            self._running -= 1
        self.commands_run[status] = self.commands_run.get(status, 0) + 1

    async def _publish_loop(self) -> None:
        subscribed = False
        while True:
            await self.transport.wait_connected()
            try:
                if not subscribed:
                    await self.transport.subscribe(f"{self.prefix}/status", qos=1)
                    if self.commands is not None:
                        topics = f"vsm-edge/{self.mesh}/{self.node}/cmd/+/+"
                        await self.transport.subscribe(topics, qos=1)
                    subscribed = True
                await self.transport.publish(
                    availability_topic(self.mesh, self.node), b"online", qos=1, retain=True
                )
                while True:
                    await self._publish_once()
                    self._republish = trio.Event()
                    with trio.move_on_after(self.interval_s):
                        await self._republish.wait()
            except TransportError as exc:
                log.debug("home assistant publish failed: %s", exc)
                self._announced.clear()  # the broker may have lost them: announce again
                await trio.sleep(0.5)

    async def _publish_once(self) -> None:
        infos, values, alarms, safe_mode, ratio = self.snapshot()
        for info in infos:
            if (
                info.device_class
                and info.key not in self._warned
                and sensor_classes(info).get("device_class") != info.device_class
            ):
                self._warned.add(info.key)
                log.warning("home assistant: %s declares device_class %r, which HA does not "
                            "take with unit %r: left out", info.key, info.device_class,
                            info.unit_of_measurement)  # fmt: skip
        configs = _discovery(self.prefix, self.mesh, self.node, infos)
        commands = self.commands() if self.commands is not None else []
        configs += _commands(self.prefix, self.mesh, self.node, commands)
        current = {topic: (payload, unit) for topic, payload, unit in configs}
        present = set(self.units()) if self.units is not None else None
        if present is None:
            present = {i.unit for i in infos} | {c.unit for c in commands}
        changed = False
        for topic, unit in list(self._recorded.items()):
            if topic in current or not self._removed(topic, unit, present):
                continue
            await self.transport.publish(topic, b"", qos=1, retain=True)  # HA removes it
            del self._recorded[topic]
            self._live.discard(topic)
            self._announced.pop(topic, None)
            self.configs_removed += 1
            changed = True
        for topic, (payload, unit) in current.items():
            if self._announced.get(topic) == payload:
                continue
            await self.transport.publish(topic, payload, qos=1, retain=True)
            self._announced[topic] = payload
            self._live.add(topic)
            self.configs_published += 1
            if self._recorded.get(topic) != unit:
                self._recorded[topic] = unit
                changed = True
        if changed and self.memory is not None:
            await self._remember()
        if infos and not values:
            return  # no reading yet: HA would show every sensor as a template error
        resolutions = {i.key: i.resolution for i in infos}
        state = state_payload(
            values, alarms, safe_mode=safe_mode, variety_ratio=ratio, resolutions=resolutions
        )
        await self.transport.publish(state_topic(self.mesh, self.node), state, qos=1, retain=True)
        self.states_published += 1

    def _removed(self, topic: str, unit: str, present: set[str]) -> bool:
        """Is an announced entity, not announced now, gone for good? Its unit is no
        longer on the node; or it was announced in this run and no longer is (a reading
        the unit stopped declaring); or it is a command and commands are off. A unit
        that has not declared its readings yet (a device's handshake) keeps them."""
        if unit and unit not in present:
            return True
        if topic in self._live:
            return True
        component = topic[len(self.prefix) + 1 :].partition("/")[0]
        return self.commands is None and component in COMMAND_COMPONENTS

    async def _remember(self) -> None:
        assert self.memory is not None
        try:
            await trio.to_thread.run_sync(write_memory, self.memory, dict(self._recorded))
        except OSError as exc:
            log.warning("cannot remember the home assistant entities in %s: %s",
                        self.memory, exc)  # fmt: skip


MEMORY_FILE = "homeassistant.json"
MAX_MEMORY_BYTES = 1 << 20


def read_memory(path: Path) -> dict[str, str]:
    """The config topics announced before (topic -> unit) from ``path``; {} when it
    is missing or unreadable (logged: entities of units removed meanwhile then stay)."""
    try:
        with path.open("rb") as f:
            return _parse_memory(f.read(MAX_MEMORY_BYTES + 1))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring %s: %s", path, exc)
        return {}


def _parse_memory(raw: bytes) -> dict[str, str]:
    if len(raw) > MAX_MEMORY_BYTES:
        raise ValueError(f"more than {MAX_MEMORY_BYTES} bytes")
    doc = json.loads(raw)
    topics = doc.get("topics") if isinstance(doc, dict) else None
    if not isinstance(topics, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in topics.items()
    ):
        raise ValueError("expected {'topics': {topic: unit}}")
    return dict(topics)


def write_memory(path: Path, topics: Mapping[str, str]) -> None:
    """Write ``{"version": 1, "topics": {topic: unit}}`` to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump({"version": 1, "topics": dict(sorted(topics.items()))}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def serve_homeassistant(agent: Agent, runtime: Runtime) -> HomeAssistantPublisher | None:
    """An ``Agent`` extension: publish to Home Assistant if ``[homeassistant] enabled``.

    The publisher runs as the runtime's service ``homeassistant``, on its own
    MQTT client (``{node}-ha``) to the agent's broker.
    """
    if not agent.config.homeassistant.enabled:
        return None

    async def execute(unit: str, command: str, value: Any) -> str:
        # This node's own command (as the CLI's to the local node): recorded in
        # the status section "commands" with issuer "homeassistant".
        outcome = await agent.command(agent.node, unit, command, value, issuer="homeassistant")
        if not outcome.ok:
            log.info("command %s.%s from home assistant %s: %s", unit, command,
                     outcome.status, outcome.why)  # fmt: skip
        return outcome.status

    publisher = publisher_for_agent(
        runtime,
        agent.config,
        agent.transport_factory(client_suffix="-ha"),
        execute=execute if agent.config.homeassistant.commands else None,
    )
    runtime.add_service("homeassistant", publisher.run)
    return publisher


def publisher_for_agent(
    runtime: Runtime,
    config: AgentConfig,
    transport_factory: Callable[[Will], Transport],
    *,
    execute: Execute | None = None,
) -> HomeAssistantPublisher:
    """A publisher fed by a running :class:`~vsm_edge.agent.Runtime` (units, readings, alarms).

    It reads the runtime's typed state directly rather than a status snapshot:
    the state goes out every ``state_interval_s``, and the reading specs it
    needs (units of measurement) are not in the status.
    """
    latest: dict[str, float] = {}

    def on_reading(unit: str, reading: str, value: float, stamp: Timestamp) -> None:
        key = f"{unit}.{reading}"
        if key in latest or len(latest) < MAX_ENTITIES:
            latest[key] = float(value)

    runtime.on_reading.append(on_reading)

    def snapshot() -> SnapshotValue:
        infos = [
            ReadingInfo(
                name, spec.name, spec.unit, spec.resolution, spec.device_class, spec.state_class
            )
            for name, record in sorted(runtime.units.items())
            for spec in record.specs.values()  # declared, also late (a device's handshake)
        ]
        alarms = [
            {
                "id": e.signal.id,
                "source": e.signal.source,
                "intensity": e.signal.intensity,
                "reason": e.signal.reason,
            }
            for e in runtime.alarms.ledger.active()
            if e.signal is not None and e.signal.node == runtime.node
        ]
        ratio = runtime.s4.ratio(trio.current_time())
        return infos, dict(latest), alarms, bool(runtime.s5.safe_mode), float(ratio)

    def commands() -> list[CommandInfo]:
        return [
            CommandInfo(
                name, spec.name, spec.kind, spec.minimum, spec.maximum, spec.step, spec.options
            )
            for name, record in sorted(runtime.units.items())
            for spec in record.commands.values()
        ]

    return HomeAssistantPublisher(
        prefix=config.homeassistant.discovery_prefix,
        mesh=config.node.mesh,
        node=config.node.id,
        interval_s=config.homeassistant.state_interval_s,
        transport_factory=transport_factory,
        snapshot=snapshot,
        commands=commands,
        execute=execute,
        units=lambda: list(runtime.units),
        memory=Path(config.node.data_dir) / MEMORY_FILE,
    )
