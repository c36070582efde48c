"""S1 operations: the unit plugin API and the built-in simulated units.

A *unit* is a sensor/actuator loop. Write one as a class::

    class Pump:
        readings = (ReadingSpec("flow", unit="l/min", resolution=0.5),)
        commands = (CommandSpec("speed", minimum=0, maximum=100),)

        async def run(self, ctx: UnitContext) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.apply, ctx)
                while True:
                    ctx.emit("flow", read_flow())
                    await trio.sleep(1)

        async def apply(self, ctx):
            async for command in ctx.commands():
                set_speed(command.value)

or as an async function with :func:`unit`::

    @unit(readings=[ReadingSpec("t")])
    async def thermometer(ctx: UnitContext) -> None: ...

Units are registered from config (``[[units]] kind = ...``): a built-in kind
(``simulated-sensor``, ``simulated-actuator``, ``firmware-bridge``), a name in
the ``vsm_edge.units`` entry-point group, or ``package.module:attribute``. The attribute is a unit
class, a :func:`unit`-decorated function, or a factory; it is called with
``(name, options)`` and must return a unit. Optionally a unit has
``async def probe(self) -> bool`` for S3* audits, ``def status(self)`` (a JSON-able
mapping shown as ``detail`` in its status entry) and ``confirms_commands = True``
when it reports each command's outcome with :meth:`UnitContext.complete` (then
:meth:`Runtime.execute_command` returns that outcome, not just the admission).

A unit whose readings and commands are known only once it runs (a device that
describes itself in a handshake) declares them then with
:meth:`UnitContext.declare`.

A firmware-bridge unit plugs in here: the bridge describes each device's
capabilities as plain readings and commands, which become a unit's
:class:`ReadingSpec` and :class:`CommandSpec` (see :func:`unit_from_description`;
the built-in kinds are in agent/units/: simulated.py, firmware.py).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .._errors import UnitError
from .event import HIGH, LOW, NORMAL, Scalar

__all__ = [
    "Command",
    "CommandResult",
    "CommandSpec",
    "ReadingSpec",
    "Unit",
    "UnitContext",
    "load_unit",
    "unit",
    "unit_from_description",
]

ENTRY_POINT_GROUP = "vsm_edge.units"
PRIORITIES = {"low": LOW, "normal": NORMAL, "high": HIGH}


@dataclass(frozen=True, slots=True)
class ReadingSpec:
    """A reading a unit emits.

    ``resolution`` bins values for S4's variety (None: no bins); ``period_s``
    says the reading is periodic, so S3* audits flag the unit when it falls
    silent (None: reported on change only, never stale).
    """

    name: str
    unit: str = ""
    resolution: float | None = None
    priority: int = NORMAL
    period_s: float | None = None


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command a unit accepts. ``kind`` is number, bool or text; numbers may have bounds."""

    name: str
    kind: str = "number"
    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: Scalar) -> str | None:
        if self.kind == "number":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
            ):
                return f"expects a finite number, got {value!r}"
            if self.minimum is not None and value < self.minimum:
                return f"below minimum {self.minimum:g}"
            if self.maximum is not None and value > self.maximum:
                return f"above maximum {self.maximum:g}"
        elif self.kind == "bool" and not isinstance(value, bool):
            return f"expects true or false, got {value!r}"
        elif self.kind == "text" and not isinstance(value, str):
            return f"expects text, got {value!r}"
        return None


@dataclass(frozen=True, slots=True)
class Command:
    """A command on its way to (or delivered to) a unit."""

    target: str  # unit name
    name: str
    value: Scalar
    issuer: str
    requested: Scalar = None  # the value asked for, before S2 damping
    id: int = 0

    @property
    def key(self) -> str:
        return f"{self.target}.{self.name}"


@dataclass(frozen=True, slots=True)
class CommandResult:
    """The outcome of submitting a command: accepted (with the value applied) or refused."""

    accepted: bool
    reason: str = ""
    value: Scalar = None
    damped: bool = False
    command: Command | None = field(default=None, compare=False)


class UnitContext(Protocol):
    """What the runtime hands a unit."""

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def random(self) -> random.Random: ...

    def emit(self, reading: str, value: float, *, priority: int | None = None) -> bool:
        """Report a reading (non-blocking). False when S3 attenuation dropped or folded it."""
        ...

    def commands(self) -> AsyncIterator[Command]:
        """The commands that passed S5, S2 and S3 for this unit, in order."""
        ...

    async def command(self, target: str, name: str, value: Scalar) -> CommandResult:
        """Issue a command to another unit (through S5 policy, S2, S3)."""
        ...

    def pain(self, intensity: float, reason: str = "") -> None:
        """Raise an algedonic pain signal from this unit."""
        ...

    def clear_pain(self, reason: str = "") -> int:
        """The condition behind this unit's pain is over: acknowledge its active pain
        alarms and raise a pleasure signal (when there were any). Returns how many
        alarms were acknowledged."""
        ...

    def declare(
        self,
        readings: Iterable[ReadingSpec] | None = None,
        commands: Iterable[CommandSpec] | None = None,
    ) -> None:
        """Replace the declared readings and/or commands while running (None keeps
        them). Raises :class:`UnitError` for a duplicate name."""
        ...

    def complete(self, command: Command, error: str | None = None) -> None:
        """Report the outcome of ``command`` (None: carried out; else why not), for
        units with ``confirms_commands = True``."""
        ...


@runtime_checkable
class Unit(Protocol):
    readings: tuple[ReadingSpec, ...]
    commands: tuple[CommandSpec, ...]

    async def run(self, ctx: UnitContext) -> None: ...


class _FunctionUnit:
    def __init__(
        self,
        fn: Callable[[UnitContext], Awaitable[None]],
        readings: tuple[ReadingSpec, ...],
        commands: tuple[CommandSpec, ...],
    ) -> None:
        self.fn = fn
        self.readings = readings
        self.commands = commands

    async def run(self, ctx: UnitContext) -> None:
        await self.fn(ctx)


class _UnitFactory:
    """What :func:`unit` returns: call it with ``(name, options)`` to get a unit."""

    def __init__(
        self,
        fn: Callable[[UnitContext], Awaitable[None]],
        readings: tuple[ReadingSpec, ...],
        commands: tuple[CommandSpec, ...],
    ) -> None:
        self.fn = fn
        self.readings = readings
        self.commands = commands
        self.__name__ = getattr(fn, "__name__", "unit")

    def __call__(self, name: str = "", options: Mapping[str, Any] | None = None) -> _FunctionUnit:
        return _FunctionUnit(self.fn, self.readings, self.commands)


def unit(
    *, readings: Iterable[ReadingSpec | str] = (), commands: Iterable[CommandSpec | str] = ()
) -> Callable[[Callable[[UnitContext], Awaitable[None]]], _UnitFactory]:
    """Declare an async function ``fn(ctx)`` as a unit with its readings and commands."""
    r = tuple(x if isinstance(x, ReadingSpec) else ReadingSpec(x) for x in readings)
    c = tuple(x if isinstance(x, CommandSpec) else CommandSpec(x) for x in commands)

    def wrap(fn: Callable[[UnitContext], Awaitable[None]]) -> _UnitFactory:
        return _UnitFactory(fn, r, c)

    return wrap


def unit_from_description(
    description: Mapping[str, Any],
    run: Callable[[UnitContext], Awaitable[None]],
) -> Unit:
    """A unit from a plain capability description (the firmware bridge's seam).

    ``description`` is ``{"readings": [{"name", "unit"?, "resolution"?}],
    "commands": [{"name", "kind"?, "minimum"?, "maximum"?}]}``; ``run`` is the
    loop that moves frames between the device and the context.
    """
    try:
        readings = tuple(ReadingSpec(**r) for r in description.get("readings", ()))
        commands = tuple(CommandSpec(**c) for c in description.get("commands", ()))
    except TypeError as exc:
        raise UnitError(f"bad capability description: {exc}") from None
    return _FunctionUnit(run, readings, commands)


# Built-in kinds by import path, resolved like any ``module:attribute`` kind:
# the unit API names them, the implementations live in agent/units/ (which
# imports this module, never the other way), and the firmware bridge (~2 MB
# of RSS) is imported only by an agent that uses it.
BUILTIN_KINDS: Mapping[str, str] = {
    "simulated-sensor": "vsm_edge.agent.units.simulated:SimulatedSensor",
    "simulated-actuator": "vsm_edge.agent.units.simulated:SimulatedActuator",
    "firmware-bridge": "vsm_edge.agent.units.firmware:FirmwareBridgeUnit",
    "modbus": "vsm_edge.agent.units.modbus:ModbusUnit",
    "mqtt-source": "vsm_edge.agent.units.mqtt_source:MqttSourceUnit",
}


def _import(kind: str, path: str) -> Any:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnitError(f"unit kind {kind!r}: cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnitError(f"unit kind {kind!r}: {module_name} has no {attr}") from None


def _resolve(kind: str) -> Any:
    if kind in BUILTIN_KINDS:
        return _import(kind, BUILTIN_KINDS[kind])
    if ":" in kind:
        return _import(kind, kind)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            try:
                return ep.load()
            except Exception as exc:  # a broken plugin must not take the agent down
                raise UnitError(f"unit kind {kind!r}: entry point failed to load: {exc}") from None
    raise UnitError(
        f"unknown unit kind {kind!r} (built-in: {', '.join(BUILTIN_KINDS)}; or a "
        f"'{ENTRY_POINT_GROUP}' entry point, or module:attribute)"
    )


def load_unit(name: str, kind: str, options: Mapping[str, Any]) -> Unit:
    """Instantiate the unit ``kind`` as ``name``. Raises :class:`UnitError` naming the unit."""
    try:
        factory = _resolve(kind)
    except UnitError as exc:
        raise UnitError(f"unit {name}: {exc}") from None
    try:
        made = factory(name, options)
    except UnitError:
        raise
    except Exception as exc:  # plugin constructors raise anything
        raise UnitError(f"unit {name} ({kind}) failed to start: {exc!r}") from None
    if not isinstance(made, Unit):
        raise UnitError(f"unit {name} ({kind}): {made!r} is not a unit (readings, commands, run)")
    return made
