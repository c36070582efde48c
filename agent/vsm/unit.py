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
the built-in ``firmware-bridge`` kind is in ``_device_unit.py``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

from .._errors import UnitError
from .event import HIGH, LOW, NORMAL, Scalar

__all__ = [
    "Command",
    "CommandResult",
    "CommandSpec",
    "ReadingSpec",
    "SimulatedActuator",
    "SimulatedSensor",
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


# -- built-in units -----------------------------------------------------------


def _opt(options: Mapping[str, Any], key: str, default: float, name: str) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnitError(f"unit {name}: option {key} must be a number, got {value!r}")
    return float(value)


class SimulatedSensor:
    """A seeded noisy sensor: ``mean + drift*t + gauss(0, noise)`` every ``period_s``.

    Flood mode (``flood_rate`` > 0, from ``flood_after_s``) emits ``flood_rate``
    readings a second with ``flood_noise`` instead, as a faulty sensor would,
    at low priority (``flood_priority``) so S3 may drop them.

    Options: reading ("value"), unit, period_s (1.0), mean (20.0), noise (0.5),
    drift (0.0 per second), resolution (1.0), seed (from the name), flood_rate
    (0), flood_after_s (0), flood_noise (25.0), flood_priority ("low").
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        known = {
            "reading",
            "unit",
            "period_s",
            "mean",
            "noise",
            "drift",
            "resolution",
            "seed",
            "flood_rate",
            "flood_after_s",
            "flood_noise",
            "flood_priority",
        }
        unknown = set(options) - known
        if unknown:
            raise UnitError(f"unit {name}: unknown option {sorted(unknown)[0]!r}")
        self.reading = str(options.get("reading", "value"))
        self.period_s = _opt(options, "period_s", 1.0, name)
        self.mean = _opt(options, "mean", 20.0, name)
        self.noise = _opt(options, "noise", 0.5, name)
        self.drift = _opt(options, "drift", 0.0, name)
        resolution = _opt(options, "resolution", 1.0, name)
        self.flood_rate = _opt(options, "flood_rate", 0.0, name)
        self.flood_after_s = _opt(options, "flood_after_s", 0.0, name)
        self.flood_noise = _opt(options, "flood_noise", 25.0, name)
        priority = options.get("flood_priority", "low")
        if priority not in PRIORITIES:
            raise UnitError(f"unit {name}: flood_priority must be low, normal or high")
        self.flood_priority = PRIORITIES[priority]
        if self.period_s <= 0 or self.flood_rate < 0 or resolution <= 0:
            raise UnitError(f"unit {name}: period_s and resolution must be > 0, flood_rate >= 0")
        seed = options.get("seed", zlib.crc32(name.encode()))
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UnitError(f"unit {name}: seed must be an integer")
        self.rng = random.Random(seed)  # noqa: S311 - simulation, not crypto
        self.readings: tuple[ReadingSpec, ...] = (
            ReadingSpec(
                self.reading, str(options.get("unit", "")), resolution, period_s=self.period_s
            ),
        )
        self.commands: tuple[CommandSpec, ...] = ()
        self.emitted = 0

    def sample(self, t: float, flooding: bool) -> float:
        noise = self.flood_noise if flooding else self.noise
        return self.mean + self.drift * t + self.rng.gauss(0.0, noise)

    async def run(self, ctx: UnitContext) -> None:
        start = trio.current_time()
        next_normal = start
        while True:
            now = trio.current_time()
            flooding = self.flood_rate > 0 and now - start >= self.flood_after_s
            if flooding:
                # 100 ticks a second, each with its share of the flood
                per_tick = self.flood_rate / 100
                n = int(per_tick) + (1 if self.rng.random() < per_tick % 1 else 0)
                for _ in range(n):
                    ctx.emit(
                        self.reading, self.sample(now - start, True), priority=self.flood_priority
                    )
                self.emitted += n
                await trio.sleep(0.01)
                continue
            if now >= next_normal:
                ctx.emit(self.reading, self.sample(now - start, False))
                self.emitted += 1
                next_normal += self.period_s
            wake = next_normal
            if self.flood_rate > 0:
                wake = min(wake, start + self.flood_after_s)
            await trio.sleep_until(wake)


class SimulatedActuator:
    """An actuator with one numeric command (``set``) that reports its state.

    Options: command ("set"), reading ("state"), minimum, maximum, initial (0.0).
    ``history`` keeps ``(trio time, applied value, issuer)`` for inspection.
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"command", "reading", "minimum", "maximum", "initial"}
        if unknown:
            raise UnitError(f"unit {name}: unknown option {sorted(unknown)[0]!r}")
        self.command_name = str(options.get("command", "set"))
        self.reading = str(options.get("reading", "state"))
        lo = options.get("minimum")
        hi = options.get("maximum")
        self.commands: tuple[CommandSpec, ...] = (
            CommandSpec(
                self.command_name,
                "number",
                None if lo is None else _opt(options, "minimum", 0, name),
                None if hi is None else _opt(options, "maximum", 0, name),
            ),
        )
        self.readings: tuple[ReadingSpec, ...] = (ReadingSpec(self.reading),)
        self.value = _opt(options, "initial", 0.0, name)
        self.history: list[tuple[float, float, str]] = []

    async def run(self, ctx: UnitContext) -> None:
        ctx.emit(self.reading, self.value)
        async for command in ctx.commands():
            assert isinstance(command.value, int | float)
            self.value = float(command.value)
            self.history.append((trio.current_time(), self.value, command.issuer))
            ctx.emit(self.reading, self.value)


def _firmware_bridge(name: str, options: Mapping[str, Any]) -> Unit:
    from ..units.firmware import FirmwareBridgeUnit  # the bridge loads only when used

    return FirmwareBridgeUnit(name, options)


BUILTIN: dict[str, Callable[[str, Mapping[str, Any]], Unit]] = {
    "simulated-sensor": SimulatedSensor,
    "simulated-actuator": SimulatedActuator,
    "firmware-bridge": _firmware_bridge,
}


def _resolve(kind: str) -> Any:
    if kind in BUILTIN:
        return BUILTIN[kind]
    if ":" in kind:
        module_name, _, attr = kind.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UnitError(f"unit kind {kind!r}: cannot import {module_name}: {exc}") from None
        try:
            return getattr(module, attr)
        except AttributeError:
            raise UnitError(f"unit kind {kind!r}: {module_name} has no {attr}") from None
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            try:
                return ep.load()
            except Exception as exc:  # a broken plugin must not take the agent down
                raise UnitError(f"unit kind {kind!r}: entry point failed to load: {exc}") from None
    raise UnitError(
        f"unknown unit kind {kind!r} (built-in: {', '.join(BUILTIN)}; or a "
        f"'{ENTRY_POINT_GROUP}' entry point, or module:attribute)"
    )


def load_unit(name: str, kind: str, options: Mapping[str, Any]) -> Unit:
    """Instantiate the unit ``kind`` as ``name``. Raises :class:`UnitError`."""
    factory = _resolve(kind)
    try:
        made = factory(name, options)
    except UnitError:
        raise
    except Exception as exc:  # plugin constructors raise anything
        raise UnitError(f"unit {name} ({kind}) failed to start: {exc!r}") from None
    if not isinstance(made, Unit):
        raise UnitError(f"unit {name} ({kind}): {made!r} is not a unit (readings, commands, run)")
    return made
