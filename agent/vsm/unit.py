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
(``simulated-sensor``, ``simulated-actuator``, ``firmware-bridge``, ``system``,
``onewire``, ``exec``...), a name in the ``vsm_edge.units`` entry-point group,
``package.module:attribute`` (importable, or found in the node's
``plugin_dirs``) or ``file.py:attribute`` (a file next to the config). The
public page is docs/units.md. The attribute is a unit
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
the built-in kinds are in agent/units/: simulated, firmware, system, onewire,
exec, modbus, mqtt_source).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import math
import random
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
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
    "file_kind",
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
    silent (None: reported on change only, never stale). ``device_class`` and
    ``state_class`` say what the reading measures in Home Assistant's terms
    (``"temperature"``, ``"measurement"``...; None: derived from ``unit`` where
    unambiguous — docs/homeassistant.md); nothing else in the VSM reads them.
    """

    name: str
    unit: str = ""
    resolution: float | None = None
    priority: int = NORMAL
    period_s: float | None = None
    device_class: str | None = None
    state_class: str | None = None


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A command a unit accepts. ``kind`` is number, bool, text or trigger (a command
    that takes no value: its value is None, a push button); numbers may have bounds.

    ``step`` is a number's granularity, a hint for user interfaces (a Home
    Assistant ``number``); values off the step are not refused. ``options``
    makes a text command take one of a finite set of values (refused
    otherwise; a Home Assistant ``select``).
    """

    name: str
    kind: str = "number"
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    options: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.options is not None:
            options: object = self.options  # from config or a description: any JSON
            if not isinstance(options, tuple | list) or not all(
                isinstance(o, str) for o in options
            ):
                raise UnitError(f"command {self.name}: options must be a list of strings")
            if self.kind != "text" or not options or len(set(options)) != len(options):
                raise UnitError(f"command {self.name}: options need kind text and distinct values")
            object.__setattr__(self, "options", tuple(options))
        if self.step is not None and (
            isinstance(self.step, bool)
            or not isinstance(self.step, int | float)
            or not self.step > 0
            or not math.isfinite(self.step)
        ):
            raise UnitError(f"command {self.name}: step must be a number > 0")

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
        elif self.kind == "trigger" and value is not None:
            return f"takes no value, got {value!r}"
        elif self.options is not None and value not in self.options:
            return f"expects one of {', '.join(self.options)}, got {str(value)[:32]!r}"
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
    def node(self) -> str:
        """The id of the node the unit runs on."""
        ...

    @property
    def options(self) -> Mapping[str, Any]: ...

    @property
    def random(self) -> random.Random:
        """A generator seeded from the unit name (the same on every node; mix in
        :attr:`node` to differ per node)."""
        ...

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

    ``description`` is ``{"readings": [{"name", "unit"?, "resolution"?,
    "device_class"?, "state_class"?}], "commands": [{"name", "kind"?,
    "minimum"?, "maximum"?, "step"?, "options"?}]}``; ``run`` is the
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
    "system": "vsm_edge.agent.units.system:SystemUnit",
    "onewire": "vsm_edge.agent.units.onewire:OneWireUnit",
    "exec": "vsm_edge.agent.units.exec:ExecUnit",
    "modbus": "vsm_edge.agent.units.modbus:ModbusUnit",
    "mqtt-source": "vsm_edge.agent.units.mqtt_source:MqttSourceUnit",
}


def _why(exc: BaseException) -> str:
    """An exception as one line: its type and message, newlines folded."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _attribute(kind: str, module: ModuleType, attr: str, where: str) -> Any:
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UnitError(f"unit kind {kind!r}: {where} has no {attr}") from None


def _import(kind: str, path: str, plugin_dirs: Sequence[Path] = ()) -> Any:
    """``package.module:attribute``; the top-level package may be in ``plugin_dirs``."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise UnitError(f"unit kind {kind!r}: expected module:attribute or file.py:attribute")
    try:
        if plugin_dirs:
            _import_from_dirs(module_name.partition(".")[0], plugin_dirs)
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UnitError(f"unit kind {kind!r}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the plugin's own code failed while importing
        raise UnitError(
            f"unit kind {kind!r}: importing {module_name} failed: {_why(exc)}"
        ) from None
    return _attribute(kind, module, attr, module_name)


def _import_from_dirs(top: str, plugin_dirs: Sequence[Path]) -> None:
    """Make the top-level module ``top`` importable from ``plugin_dirs`` (searched in
    order, before sys.path) without changing sys.path: its package's submodules
    then import through the package's own ``__path__``."""
    if top in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec(top, [str(d) for d in plugin_dirs])
    if spec is None or spec.loader is None:
        return  # not in the plugin dirs: the ordinary import path decides
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(top, None)
        raise


def _import_file(kind: str, file: Path, attr: str) -> Any:
    """``attribute`` of the Python file ``file`` (loaded once per file, not via sys.path)."""
    file = file.resolve()
    name = f"_vsm_unit_file_{zlib.crc32(str(file).encode()):08x}_{file.stem}"
    module = sys.modules.get(name)
    if module is None:
        if not file.is_file():
            raise UnitError(f"unit kind {kind!r}: no such file {file}")
        spec = importlib.util.spec_from_file_location(name, file)
        if spec is None or spec.loader is None:
            raise UnitError(f"unit kind {kind!r}: cannot load {file} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and typing look their module up
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # the plugin's own code: anything
            sys.modules.pop(name, None)
            raise UnitError(f"unit kind {kind!r}: loading {file} failed: {_why(exc)}") from None
    return _attribute(kind, module, attr, file.name)


def file_kind(kind: str) -> tuple[Path, str] | None:
    """``(file, attribute)`` when ``kind`` names a Python file (``file.py:Class``), else None."""
    module, sep, attr = kind.rpartition(":")
    if sep and module.endswith(".py"):
        return Path(module), attr
    return None


def _resolve(kind: str, plugin_dirs: Sequence[Path]) -> Any:
    if kind in BUILTIN_KINDS:
        return _import(kind, BUILTIN_KINDS[kind])
    in_file = file_kind(kind)
    if in_file is not None:
        return _import_file(kind, *in_file)
    if ":" in kind:
        return _import(kind, kind, plugin_dirs)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            try:
                return ep.load()
            except Exception as exc:  # a broken plugin must not take the agent down
                raise UnitError(
                    f"unit kind {kind!r}: entry point failed to load: {_why(exc)}"
                ) from None
    raise UnitError(
        f"unknown unit kind {kind!r} (built-in: {', '.join(BUILTIN_KINDS)}; or a "
        f"'{ENTRY_POINT_GROUP}' entry point, module:attribute or file.py:attribute)"
    )


def load_unit(
    name: str,
    kind: str,
    options: Mapping[str, Any],
    *,
    plugin_dirs: Sequence[Path] = (),
) -> Unit:
    """Instantiate the unit ``kind`` as ``name``.

    ``kind`` is a built-in kind, an entry point's name, ``module:attribute``
    (the top-level module looked for in ``plugin_dirs`` first, then on
    sys.path) or ``file.py:attribute`` (a file path, relative to the working
    directory: the config loader makes it relative to the config file).
    Raises :class:`UnitError`, one line naming the unit, the kind and the cause.
    """
    try:
        factory = _resolve(kind, plugin_dirs)
    except UnitError as exc:
        raise UnitError(f"unit {name}: {exc}") from None
    try:
        made = factory(name, options)
    except UnitError as exc:
        text = " ".join(str(exc).split())
        text = text.removeprefix(f"unit {name}: ")
        raise UnitError(f"unit {name} ({kind}): {text}") from None
    except Exception as exc:  # plugin constructors raise anything
        raise UnitError(f"unit {name} ({kind}) failed to start: {_why(exc)}") from None
    if not isinstance(made, Unit):
        raise UnitError(f"unit {name} ({kind}): {made!r} is not a unit (readings, commands, run)")
    return made
