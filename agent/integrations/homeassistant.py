"""Home Assistant MQTT discovery: an agent's readings and alarms as HA entities (opt-in).

With ``[homeassistant] enabled = true`` the agent opens a second MQTT
connection to its broker (client id ``{node}-ha``) and publishes, retained:

* one discovery config per entity on
  ``{prefix}/{component}/vsm_{mesh}_{node}/{object_id}/config`` — a sensor per
  S1 reading, a ``problem`` binary sensor for the node's alarms, sensors for
  its pain and variety ratio, a binary sensor for safe mode — all grouped
  under one HA device (``identifiers: ["vsm_{mesh}_{node}"]``);
* the state of all of them as one JSON object on ``vsm-edge/{mesh}/{node}/state``
  (each entity reads its key with ``value_template``), at most once per
  ``state_interval_s``;
* availability on ``vsm-edge/{mesh}/{node}/availability``: "online" when
  connected, "offline" as the connection's last will — the node's presence,
  in plain text, since HA cannot read the signed presence envelope.

With ``[homeassistant] commands = true`` it also announces each unit command
as an entity HA can use (:func:`command_messages`: ``number`` for a number,
``switch`` for a bool, ``text`` for text), with a ``command_topic``
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
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from vsm_edge.sync import Timestamp, Transport, TransportError, Will

if TYPE_CHECKING:
    from ..config.schema import AgentConfig
    from ..mesh.node import Agent
    from ..vsm.runtime import Runtime

__all__ = [
    "CommandInfo",
    "HomeAssistantPublisher",
    "ReadingInfo",
    "availability_topic",
    "command_messages",
    "command_topic",
    "discovery_messages",
    "is_birth",
    "object_id",
    "parse_command",
    "serve_homeassistant",
    "state_payload",
    "state_topic",
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
    """One S1 reading as HA sees it: ``{unit}.{reading}`` and its unit of measurement."""

    unit: str
    reading: str
    unit_of_measurement: str = ""

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

    @property
    def key(self) -> str:
        return f"{self.unit}.{self.command}"


def object_id(text: str) -> str:
    """``text`` made into an HA object id: only ``[A-Za-z0-9_-]`` (others become ``_``)."""
    return _SAFE.sub("_", text)[:128] or "_"


def _device_id(mesh: str, node: str) -> str:
    return object_id(f"vsm_{mesh}_{node}")


def state_topic(mesh: str, node: str) -> str:
    return f"vsm-edge/{mesh}/{node}/state"


def availability_topic(mesh: str, node: str) -> str:
    return f"vsm-edge/{mesh}/{node}/availability"


def discovery_messages(
    prefix: str, mesh: str, node: str, readings: Iterable[ReadingInfo]
) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) of every discovery config of one node (pure).

    At most :data:`MAX_ENTITIES` readings are announced (the rest are left
    out and logged by the caller).
    """
    device_id = _device_id(mesh, node)
    device = {
        "identifiers": [device_id],
        "name": f"vsm-edge {node}",
        "manufacturer": "vsm-edge",
        "model": f"agent (mesh {mesh})",
        "sw_version": VERSION,
    }
    common = {
        "state_topic": state_topic(mesh, node),
        "availability_topic": availability_topic(mesh, node),
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device,
        "origin": {"name": "vsm-edge", "sw_version": VERSION},
    }

    def config(component: str, obj: str, name: str, **keys: Any) -> tuple[str, bytes]:
        unique = f"{device_id}_{obj}"
        payload = {"name": name, "unique_id": unique, "object_id": unique, **common, **keys}
        topic = f"{prefix}/{component}/{device_id}/{obj}/config"
        return topic, json.dumps(payload, sort_keys=True).encode()

    out = []
    for info in list(readings)[:MAX_ENTITIES]:
        keys: dict[str, Any] = {
            "value_template": "{{ value_json.readings[" + json.dumps(info.key) + "] }}",
            "state_class": "measurement",
        }
        if info.unit_of_measurement:
            keys["unit_of_measurement"] = info.unit_of_measurement
        out.append(config("sensor", object_id(f"r_{info.key}"), info.key, **keys))
    out.append(
        config(
            "binary_sensor", "alarm", "alarm",
            device_class="problem", payload_on="ON", payload_off="OFF",
            value_template="{{ value_json.alarm }}",
            json_attributes_topic=state_topic(mesh, node),
            json_attributes_template="{{ {'alarms': value_json.alarms} | tojson }}",
        )
    )  # fmt: skip
    out.append(
        config(
            "sensor", "pain", "pain",
            value_template="{{ value_json.pain }}", state_class="measurement",
        )
    )  # fmt: skip
    out.append(
        config(
            "sensor", "variety_ratio", "variety ratio",
            value_template="{{ value_json.variety_ratio }}", state_class="measurement",
        )
    )  # fmt: skip
    out.append(
        config(
            "binary_sensor", "safe_mode", "safe mode",
            payload_on="ON", payload_off="OFF", value_template="{{ value_json.safe_mode }}",
        )
    )  # fmt: skip
    return out


def state_payload(
    readings: Mapping[str, float],
    alarms: Iterable[Mapping[str, Any]],
    *,
    safe_mode: bool,
    variety_ratio: float,
) -> bytes:
    """The JSON state every entity of the node reads (pure).

    ``alarms`` are the node's own active alarms (``id``, ``source``,
    ``intensity``, ``reason``); ``alarm`` is "ON" while one is pain.
    """
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
    return json.dumps(
        {
            "readings": dict(readings),
            "alarm": "ON" if active else "OFF",
            "alarms": active,
            "pain": round(pain, 4),
            "safe_mode": "ON" if safe_mode else "OFF",
            "variety_ratio": round(variety_ratio, 4),
        },
        sort_keys=True,
    ).encode()


def command_topic(mesh: str, node: str, unit: str, command: str) -> str:
    return f"vsm-edge/{mesh}/{node}/cmd/{unit}/{command}"


def _commandable(info: CommandInfo) -> bool:
    """Can HA reach this command: names usable as topic levels, a kind HA has an entity for."""
    return (
        info.kind in ("number", "bool", "text")
        and bool(info.unit)
        and bool(info.command)
        and not _TOPIC_UNSAFE & set(info.unit + info.command)
    )


def command_messages(
    prefix: str, mesh: str, node: str, commands: Iterable[CommandInfo]
) -> list[tuple[str, bytes]]:
    """(topic, JSON payload) of the discovery config of each unit command (pure).

    ``number`` (bounds as declared; a missing bound is +-1e9, HA needs both),
    ``switch`` (payloads ``true`` / ``false``) or ``text``, each optimistic (the
    unit's state is its readings), at most :data:`MAX_ENTITIES`; commands whose
    names cannot be topic levels (``/``, ``+``, ``#``) are left out.
    """
    device_id = _device_id(mesh, node)
    out = []
    for info in [c for c in commands if _commandable(c)][:MAX_ENTITIES]:
        obj = object_id(f"c_{info.key}")
        unique = f"{device_id}_{obj}"
        payload: dict[str, Any] = {
            "name": info.key,
            "unique_id": unique,
            "object_id": unique,
            "command_topic": command_topic(mesh, node, info.unit, info.command),
            "optimistic": True,
            "retain": False,
            "availability_topic": availability_topic(mesh, node),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {"identifiers": [device_id]},
            "origin": {"name": "vsm-edge", "sw_version": VERSION},
        }
        if info.kind == "number":
            component = "number"
            payload["min"] = info.minimum if info.minimum is not None else -1e9
            payload["max"] = info.maximum if info.maximum is not None else 1e9
            payload["mode"] = "box"
            payload["step"] = "any"
        elif info.kind == "bool":
            component = "switch"
            payload["payload_on"] = "true"
            payload["payload_off"] = "false"
        else:
            component = "text"
            payload["max"] = MAX_COMMAND_PAYLOAD
        topic = f"{prefix}/{component}/{device_id}/{obj}/config"
        out.append((topic, json.dumps(payload, sort_keys=True).encode()))
    return out


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
    ) -> None:
        self.prefix = prefix
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
        self.births = 0
        self.states_published = 0
        self._announced: set[str] = set()
        self._republish = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The transport outlives our own tasks by one publish: a clean
        # disconnect sends no last will, so we say "offline" ourselves first.
        transport_scope = trio.CancelScope(shield=True)

        async def run_transport(*, task_status: trio.TaskStatus[None]) -> None:
            with transport_scope:
                await self.transport.run(task_status=task_status)

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
        configs = discovery_messages(self.prefix, self.mesh, self.node, infos)
        if self.commands is not None:
            configs += command_messages(self.prefix, self.mesh, self.node, self.commands())
        for topic, payload in configs:
            if topic in self._announced:
                continue
            await self.transport.publish(topic, payload, qos=1, retain=True)
            self._announced.add(topic)
            self.configs_published += 1
        state = state_payload(values, alarms, safe_mode=safe_mode, variety_ratio=ratio)
        await self.transport.publish(state_topic(self.mesh, self.node), state, qos=1, retain=True)
        self.states_published += 1


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
            ReadingInfo(name, spec.name, spec.unit)
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
            CommandInfo(name, spec.name, spec.kind, spec.minimum, spec.maximum)
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
    )
