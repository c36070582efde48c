"""The ``mqtt-source`` unit kind: readings from devices that already publish on MQTT.

zigbee2mqtt (``zigbee2mqtt/<device>``: ``{"temperature": 21.3, ...}``), Tasmota
(``tele/<device>/SENSOR``: ``{"DS18B20": {"Temperature": 21.3}, ...}``) and
Shelly (Gen2 ``<device>/status/switch:0``: ``{"apower": 8.5, ...}``) publish JSON
state; each reading names a topic and a dotted field path into it. Commands
publish a payload template to a command topic.

Theory of operation
-------------------
- **Parse once, at the edge.** :func:`extract` is pure: bytes in, a finite
  float out, or :class:`PayloadError` with the reason. Payloads are bounded
  (``max_payload_bytes``), must be UTF-8, then JSON (with an empty path a
  plain-text payload such as Tasmota's ``ON`` is the value itself). The field
  may be a number, a boolean (1/0), a numeric string or a string in the
  reading's ``map`` (default ``ON`` = 1, ``OFF`` = 0). Anything else is a
  counted refusal; a payload that is junk (too big, not UTF-8, not JSON, a
  field of the wrong type) also raises pain once, cleared by the next good value.
  A message without the field (a device's partial update) is only counted.
- **Templates are substituted, never formatted.** A command's ``payload`` is
  any TOML value; every string that is exactly ``"{value}"`` is replaced by
  the commanded value (bools by ``true_value``/``false_value``), then the whole
  is JSON-encoded. A value cannot break out of its place in the document.
- **The broker** is the unit's own (``broker``, required: units do not know the
  agent's broker), reached with the project's Trio MQTT transport
  (:class:`vsm_edge.sync.MqttTransport`: reconnects with backoff, subscriptions
  kept across reconnects). Unreachable for ``pain_after_s``: pain once; back:
  cleared.

Options: ``broker`` (``mqtt://[user:password@]host[:port]`` or ``mqtts://``),
``client_id`` (default ``vsm-source-<unit>-<random>``), ``qos`` (0 or 1: for
subscriptions and command publishes, default 1), ``max_payload_bytes``
(65536), ``pain_after_s`` (5), ``pain_intensity`` (0.5), ``readings`` (a list
of ``name``, ``topic``, ``path``, ``unit``, ``resolution``, ``map``) and
``commands`` (a list of ``name``, ``topic``, ``payload`` (``"{value}"``),
``kind`` (number, bool, text), ``minimum``, ``maximum``, ``true_value``,
``false_value``, ``retain``). See docs/unit-kinds.md.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from .._errors import UnitError
from ..vsm.unit import Command, CommandSpec, ReadingSpec, UnitContext

__all__ = [
    "MAX_COMMANDS",
    "MAX_READINGS",
    "MqttSourceUnit",
    "PayloadError",
    "Source",
    "extract",
    "render",
]

MAX_READINGS = 64
MAX_COMMANDS = 32
MAX_PATH_SEGMENTS = 16
MAX_TEXT = 256  # a text command value, a numeric string in a payload
DEFAULT_MAP: Mapping[str, float] = {"ON": 1.0, "OFF": 0.0}
PLACEHOLDER = "{value}"
REFUSALS = ("too large", "not UTF-8", "not JSON", "missing field", "not a number")


class PayloadError(Exception):
    """A payload gave no value: ``kind`` is one of :data:`REFUSALS`; ``junk`` is
    False for a well-formed message that simply lacks the field (counted, not painful)."""

    def __init__(self, reason: str, kind: str) -> None:
        super().__init__(reason)
        assert kind in REFUSALS
        self.kind = kind
        self.junk = kind != "missing field"


@dataclass(frozen=True, slots=True)
class Source:
    """Where one reading comes from: a topic and a field path into its JSON payload."""

    name: str
    topic: str
    path: tuple[str, ...] = ()
    map: Mapping[str, float] = field(default_factory=lambda: DEFAULT_MAP)


def extract(source: Source, payload: bytes, limit: int = 65536) -> float:
    """The value ``source`` names in ``payload``. Raises :class:`PayloadError` only."""
    if len(payload) > limit:
        raise PayloadError(
            f"payload of {len(payload)} bytes is over the {limit}-byte limit", "too large"
        )
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8", "not UTF-8") from None
    try:
        document: Any = json.loads(text)
    except (ValueError, RecursionError):
        if source.path:
            raise PayloadError("payload is not JSON", "not JSON") from None
        document = text.strip()
    node = document
    for i, segment in enumerate(source.path):
        where = ".".join(source.path[: i + 1])
        if isinstance(node, dict):
            if segment not in node:
                raise PayloadError(f"no field {where}", "missing field")
            node = node[segment]
        elif isinstance(node, list) and segment.isdigit() and len(segment) <= 6:
            index = int(segment)
            if index >= len(node):
                raise PayloadError(f"no field {where}", "missing field")
            node = node[index]
        else:
            raise PayloadError(f"{where}: the payload has no object there", "missing field")
    return _number(node, ".".join(source.path) or "payload", source.map)


def _number(node: Any, where: str, mapping: Mapping[str, float]) -> float:
    if node is None:  # zigbee2mqtt sends null for a value it does not know yet
        raise PayloadError(f"{where}: null", "missing field")
    if isinstance(node, bool):
        return 1.0 if node else 0.0
    if isinstance(node, int | float):
        try:
            value = float(node)
        except OverflowError:
            raise PayloadError(f"{where}: number out of range", "not a number") from None
    elif isinstance(node, str):
        if node in mapping:
            return mapping[node]
        if len(node) > MAX_TEXT:
            raise PayloadError(f"{where}: a string of {len(node)} characters", "not a number")
        try:
            value = float(node)
        except ValueError:
            reason = f"{where}: {node[:32]!r} is not a number or a mapped state"
            raise PayloadError(reason, "not a number") from None
    else:
        kind = type(node).__name__.replace("dict", "object")
        raise PayloadError(f"{where}: a {kind}, not a number", "not a number")
    if not math.isfinite(value):
        raise PayloadError(f"{where}: not a finite number", "not a number")
    return value


def render(template: Any, value: Any) -> bytes:
    """``template`` with every string that is exactly ``"{value}"`` replaced by
    ``value``, JSON-encoded. Raises :class:`UnitError` for what JSON cannot hold."""

    def substitute(node: Any) -> Any:
        if isinstance(node, str):
            return value if node == PLACEHOLDER else node
        if isinstance(node, list):
            return [substitute(x) for x in node]
        if isinstance(node, dict):
            return {k: substitute(v) for k, v in node.items()}
        return node

    try:
        return json.dumps(substitute(template), separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise UnitError(f"cannot encode the payload: {exc}") from None


# --- options -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CommandTarget:
    spec: CommandSpec
    topic: str
    template: Any
    true_value: Any
    false_value: Any
    retain: bool


def _str(table: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise UnitError(f"{where}: {key} must be a non-empty string, got {value!r}")
    return value


def _num(table: Mapping[str, Any], key: str, default: float | None, where: str) -> float | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnitError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _topic(table: Mapping[str, Any], where: str) -> str:
    from vsm_edge.sync import InvalidTopicError, validate_topic

    topic = _str(table, "topic", where)
    try:
        validate_topic(topic)
    except InvalidTopicError as exc:
        raise UnitError(f"{where}: topic {topic!r}: {exc}") from None
    return topic


def _keys(table: Any, allowed: set[str], where: str) -> None:
    if not isinstance(table, Mapping):
        raise UnitError(f"{where}: expected a table, got {table!r}")
    unknown = set(table) - allowed
    if unknown:
        raise UnitError(f"{where}: unknown key {sorted(unknown)[0]!r}")


def _list(options: Mapping[str, Any], key: str, limit: int, where: str) -> list[Any]:
    value = options.get(key, [])
    if not isinstance(value, list):
        raise UnitError(f"{where}: {key} must be a list of tables")
    if len(value) > limit:
        raise UnitError(f"{where}: at most {limit} {key}, got {len(value)}")
    return value


def _reading(table: Any, where: str) -> tuple[Source, ReadingSpec]:
    _keys(table, {"name", "topic", "path", "unit", "resolution", "map"}, where)
    name = _str(table, "name", where)
    where = f"{where} ({name})"
    path_text = _str(table, "path", where, default="")
    path = tuple(path_text.split(".")) if path_text else ()
    if len(path) > MAX_PATH_SEGMENTS or any(not s for s in path):
        raise UnitError(f"{where}: path must be dotted names (at most {MAX_PATH_SEGMENTS})")
    mapping = table.get("map", DEFAULT_MAP)
    if not isinstance(mapping, Mapping) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in mapping.values()
    ):
        raise UnitError(f"{where}: map must be a table of state = number")
    resolution = _num(table, "resolution", None, where)
    if resolution is not None and resolution <= 0:
        raise UnitError(f"{where}: resolution must be > 0")
    source = Source(
        name, _topic(table, where), path, {str(k): float(v) for k, v in mapping.items()}
    )
    return source, ReadingSpec(name, _str(table, "unit", where, default=""), resolution)


def _command(table: Any, qos: int, where: str) -> _CommandTarget:
    allowed = {"name", "topic", "payload", "kind", "minimum", "maximum", "true_value",
               "false_value", "retain"}  # fmt: skip
    _keys(table, allowed, where)
    name = _str(table, "name", where)
    where = f"{where} ({name})"
    kind = table.get("kind", "number")
    if kind not in ("number", "bool", "text"):
        raise UnitError(f"{where}: kind must be number, bool or text, got {kind!r}")
    template = table.get("payload", PLACEHOLDER)
    render(template, 0)  # a template JSON cannot hold fails here, at load
    retain = table.get("retain", False)
    if not isinstance(retain, bool):
        raise UnitError(f"{where}: retain must be true or false")
    spec = CommandSpec(name, kind, _num(table, "minimum", None, where),
                       _num(table, "maximum", None, where))  # fmt: skip
    return _CommandTarget(
        spec, _topic(table, where), template,
        table.get("true_value", True), table.get("false_value", False), retain,
    )  # fmt: skip


class MqttSourceUnit:
    """Readings from JSON devices on an MQTT broker; commands published to them."""

    confirms_commands = True
    _KEYS = frozenset({"broker", "client_id", "qos", "max_payload_bytes", "pain_after_s",
                       "pain_intensity", "readings", "commands"})  # fmt: skip

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        from vsm_edge.sync import MqttSettings

        where = f"unit {name}"
        unknown = set(options) - self._KEYS
        if unknown:
            raise UnitError(f"{where}: unknown option {sorted(unknown)[0]!r}")
        broker = options.get("broker")
        if not isinstance(broker, str) or not broker:
            raise UnitError(
                f"{where}: broker is required (mqtt://host:port of the devices' broker; "
                "a unit is not told the agent's)"
            )
        qos = options.get("qos", 1)
        if qos not in (0, 1) or isinstance(qos, bool):
            raise UnitError(f"{where}: qos must be 0 or 1")
        self.qos = int(qos)
        limit = options.get("max_payload_bytes", 65536)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1 << 20:
            raise UnitError(f"{where}: max_payload_bytes must be within 1..1048576")
        self.max_payload = limit
        pain_after = _num(options, "pain_after_s", 5.0, where)
        pain = _num(options, "pain_intensity", 0.5, where)
        if pain_after is None or pain_after < 0 or pain is None or not 0 < pain <= 1:
            raise UnitError(f"{where}: pain_after_s must be >= 0, pain_intensity in (0, 1]")
        self.pain_after_s, self.pain_intensity = pain_after, pain
        client_id = options.get("client_id", f"vsm-source-{name}-{secrets.token_hex(3)}")
        if not isinstance(client_id, str):
            raise UnitError(f"{where}: client_id must be a string")
        try:
            # the transport's own bound (1 MiB) stays above ours, so a payload over
            # max_payload_bytes arrives and is counted; the broker drops bigger ones
            self.settings = MqttSettings.from_url(broker, client_id=client_id, session_expiry=0)
        except ValueError as exc:
            raise UnitError(f"{where}: broker: {exc}") from None
        self.broker = f"{self.settings.host}:{self.settings.port}"
        readings = [
            _reading(t, f"{where}: readings[{i}]")
            for i, t in enumerate(_list(options, "readings", MAX_READINGS, where))
        ]
        commands = [
            _command(t, self.qos, f"{where}: commands[{i}]")
            for i, t in enumerate(_list(options, "commands", MAX_COMMANDS, where))
        ]
        if not readings and not commands:
            raise UnitError(f"{where}: give at least one reading or command")
        for what, names in (("readings", [s.name for s, _ in readings]),
                            ("commands", [c.spec.name for c in commands])):  # fmt: skip
            if len(set(names)) != len(names):
                raise UnitError(f"{where}: two {what} have one name")
        self.readings: tuple[ReadingSpec, ...] = tuple(spec for _, spec in readings)
        self.commands: tuple[CommandSpec, ...] = tuple(c.spec for c in commands)
        self._by_topic: dict[str, list[Source]] = {}
        for source, _ in readings:
            self._by_topic.setdefault(source.topic, []).append(source)
        self._targets = {c.spec.name: c for c in commands}
        self.values: dict[str, float] = {}
        self.messages = self.published = 0
        self.refusals: dict[str, int] = {}  # PayloadError.kind -> count
        self.last_refusal: str | None = None
        self._junk_pain = self._broker_pain = False
        self._transport: Any = None

    def status(self) -> dict[str, Any]:
        state = None if self._transport is None else self._transport.state.value
        return {"broker": self.broker, "connection": state, "messages": self.messages,
                "published": self.published, "refusals": dict(self.refusals),
                "last_refusal": self.last_refusal}  # fmt: skip

    async def probe(self) -> bool:
        return not (self._junk_pain or self._broker_pain)

    async def run(self, ctx: UnitContext) -> None:
        from vsm_edge.sync import MqttTransport

        transport = MqttTransport(self.settings, random=ctx.random.random)
        self._transport = transport
        for topic in self._by_topic:
            await transport.subscribe(topic, qos=self.qos)
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            nursery.start_soon(self._watch_broker, ctx, transport)
            nursery.start_soon(self._apply, ctx, transport)
            async for message in transport.messages:
                self._receive(ctx, message.topic, message.payload)

    def _receive(self, ctx: UnitContext, topic: str, payload: bytes) -> None:
        self.messages += 1
        good = False
        for source in self._by_topic.get(topic, ()):
            try:
                value = extract(source, payload, self.max_payload)
            except PayloadError as exc:
                self._refuse(ctx, source, exc)
                continue
            good = True
            self.values[source.name] = value
            ctx.emit(source.name, value)
        if good and self._junk_pain:
            self._junk_pain = False
            ctx.clear_pain(f"mqtt-source: good values on {topic} again")

    def _refuse(self, ctx: UnitContext, source: Source, exc: PayloadError) -> None:
        self.refusals[exc.kind] = self.refusals.get(exc.kind, 0) + 1
        self.last_refusal = f"{source.topic} ({source.name}): {exc}"
        if exc.junk and not self._junk_pain:
            self._junk_pain = True
            ctx.pain(self.pain_intensity, f"mqtt-source: refused {self.last_refusal}")

    async def _watch_broker(self, ctx: UnitContext, transport: Any) -> None:
        while True:
            with trio.move_on_after(self.pain_after_s):
                await transport.wait_connected()
            if not self._broker_pain and transport.state.value != "connected":
                self._broker_pain = True
                ctx.pain(self.pain_intensity, f"mqtt-source: broker {self.broker} unreachable")
            await transport.wait_connected()
            if self._broker_pain:
                self._broker_pain = False
                ctx.clear_pain(f"mqtt-source: broker {self.broker} reachable again")
            await transport.wait_disconnected()

    async def _apply(self, ctx: UnitContext, transport: Any) -> None:
        async for command in ctx.commands():
            await self._publish(ctx, transport, command)

    async def _publish(self, ctx: UnitContext, transport: Any, command: Command) -> None:
        from vsm_edge.sync import TransportError

        target = self._targets.get(command.name)
        if target is None:  # the runtime delivers only declared commands
            ctx.complete(command, f"no command {command.name!r}")
            return
        value: Any = command.value
        if isinstance(value, bool):
            value = target.true_value if value else target.false_value
        elif isinstance(value, str) and len(value) > MAX_TEXT:
            ctx.complete(command, f"text longer than {MAX_TEXT} characters")
            return
        try:
            payload = render(target.template, value)
            await transport.publish(target.topic, payload, qos=self.qos, retain=target.retain)
        except (UnitError, TransportError) as exc:
            ctx.complete(command, f"publishing to {target.topic}: {exc}")
            return
        self.published += 1
        ctx.complete(command)
