"""S1 operations at work: the units' records, the context each unit gets, readings and commands.

Each unit runs supervised (a crash restarts it with backoff) with a
:class:`~.unit.UnitContext`. A reading (:meth:`Operations._emit`, the hot path
of every unit, reached through ``ctx.emit``) is binned into its variety
category, counted toward the environment's variety (S4), admitted by S3 (pass,
fold into an aggregate, or drop: the first refusal of an episode raises
``s3.attenuation`` pain) and published on the bus with an HLC stamp; the
``on_reading`` hooks see each reading published. A command
(:meth:`Operations.submit_command`) passes S5 policy, S2 damping and S3's
budget before it reaches the unit's inbox; :meth:`Operations.execute_command`
also waits for the outcome of units that confirm commands.

The hot path looks its collaborators' methods up once (:meth:`Operations.bind`,
again when the runtime starts and remakes S3 and S4) and builds events with
``tuple.__new__``: it runs for every reading.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import trio

from vsm_edge.sync import Timestamp

from .._errors import UnitError
from .event import Event, Scalar, Subsystem
from .kernel import Kernel
from .patterns import Pattern
from .s2 import Oscillation
from .s3 import Admission
from .unit import Command, CommandResult, CommandSpec, ReadingSpec, Unit

__all__ = ["COMMAND_CONFIRM_TIMEOUT_S", "COMMAND_QUEUE", "Operations", "PendingUnit", "UnitRecord"]

COMMAND_QUEUE = 64
COMMAND_CONFIRM_TIMEOUT_S = 10.0
MAX_BINS = 4096  # cached category names per reading

_new_event = tuple.__new__  # builds an Event without NamedTuple's Python-level __new__


class PendingUnit(NamedTuple):
    """A unit loaded (from the config or built in code), to run when the runtime starts."""

    kind: str  # its config kind, or "code"
    unit: Unit
    options: Mapping[str, Any]


class UnitRecord:
    """One unit: what it declared, its command inbox, and its counters (read by status)."""

    def __init__(self, name: str, kind: str, unit: Unit) -> None:
        self.name = name
        self.kind = kind
        self.unit = unit
        self.specs: dict[str, ReadingSpec] = {}
        self.categories: dict[str, str] = {}
        self.bins: dict[str, dict[int, str]] = {}
        self.commands: dict[str, CommandSpec] = {}
        self.declare(unit.readings, unit.commands)
        self.inbox_send, self.inbox_receive = trio.open_memory_channel[Command](COMMAND_QUEUE)
        self.emitted = 0
        self.attenuated = 0
        self.blocked = 0
        self.commands_applied = 0
        self.confirms = bool(getattr(unit, "confirms_commands", False))
        self.commands_confirmed = 0
        self.commands_failed = 0
        self.last_outcome: dict[str, Any] | None = None
        # command id -> [done, error] for callers awaiting the unit's outcome
        self.waiters: dict[int, tuple[trio.Event, list[str | None]]] = {}

    def declare(
        self, readings: Iterable[ReadingSpec] | None, commands: Iterable[CommandSpec] | None
    ) -> None:
        if readings is not None:
            specs = _unique(readings, self.name, "reading")
            self.specs = specs
            self.categories = {r: f"{self.name}.{r}" for r in specs}
            self.bins = {r: self.bins.get(r, {}) for r in specs}
        if commands is not None:
            self.commands = _unique(commands, self.name, "command")


class _Context:
    """The :class:`UnitContext` S1 hands each unit."""

    def __init__(self, ops: Operations, record: UnitRecord, options: Mapping[str, Any]) -> None:
        self._ops = ops
        self._record = record
        self._options = options
        self._random = random.Random(record.name)  # noqa: S311 - simulation, not crypto
        # a partial (C) rather than a method: emit is the hot path of every unit
        self.emit: Callable[..., bool] = functools.partial(ops._emit, record)

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def node(self) -> str:
        return self._ops.node

    @property
    def options(self) -> Mapping[str, Any]:
        return self._options

    @property
    def random(self) -> random.Random:
        return self._random

    async def commands(self) -> Any:  # an async generator of Command
        async for command in self._record.inbox_receive:
            yield command

    async def command(self, target: str, name: str, value: Scalar) -> CommandResult:
        return await self._ops.execute_command(target, name, value, issuer=self._record.name)

    def pain(self, intensity: float, reason: str = "") -> None:
        self._ops._raise_signal(f"s1.{self._record.name}", intensity, reason)

    def clear_pain(self, reason: str = "") -> int:
        return self._ops._clear_pain(f"s1.{self._record.name}", reason)

    def declare(
        self,
        readings: Iterable[ReadingSpec] | None = None,
        commands: Iterable[CommandSpec] | None = None,
    ) -> None:
        self._record.declare(readings, commands)
        if commands is not None:
            self._ops.set_repertoire()

    def complete(self, command: Command, error: str | None = None) -> None:
        record = self._record
        if error is None:
            record.commands_confirmed += 1
        else:
            record.commands_failed += 1
        record.last_outcome = {
            "id": command.id,
            "command": command.name,
            "value": command.value,
            "ok": error is None,
            "error": error,
            "at_s": round(trio.current_time() - self._ops.started_at, 3),
        }
        waiter = record.waiters.get(command.id)
        if waiter is not None:
            waiter[1][0] = error
            waiter[0].set()


class Operations:
    """S1: the units (``units``, filled at :meth:`start`), their readings and their commands.

    ``pending`` are the loaded units by name. ``clear_pain`` is the algedonic
    channel's, for :meth:`UnitContext.clear_pain`; ``attenuation_pain`` is the
    pain S3's attenuation raises; ``node`` is the node id units see.
    :class:`UnitError` is this part's error: a reading a unit did not declare,
    or a declaration naming one twice.
    """

    def __init__(
        self,
        kernel: Kernel,
        pending: Mapping[str, PendingUnit],
        *,
        attenuation_pain: float,
        clear_pain: Callable[[str, str], int],
        node: str = "",
    ) -> None:
        self.node = node
        self._kernel = kernel
        self._raise_signal = kernel.raise_signal
        self._clear_pain = clear_pain
        self._attenuation_pain = attenuation_pain
        self._pending = pending
        self.units: dict[str, UnitRecord] = {}
        # (unit, reading, value, stamp) for each admitted reading: the agent
        # replicates the latest ones (rate-limited) into the mesh state.
        self.on_reading: list[Callable[[str, str, float, Timestamp], None]] = []
        self.first_event_at: float | None = None
        self.started_at = 0.0
        self._command_ids = 0
        self._episodes_seen = 0
        self._now: Callable[[], float] = trio.current_time
        self.bind()

    def bind(self) -> None:
        """Look up the hot path's collaborators (again after S3 and S4 were remade)."""
        # bound methods looked up once: _emit runs for every reading
        kernel = self._kernel
        self._s3 = kernel.s3
        self._env_add = kernel.s4.environment.add
        self._admit = kernel.s3.admit_reading
        self._stamp = kernel.hlc.now
        self._publish_now = kernel.bus.publish

    def start(self, now: float) -> None:
        """The runtime starts at ``now`` (after :meth:`Kernel.start`): make the unit records."""
        self.started_at = now
        # one call instead of trio.current_time()'s three, on the hot path
        self._now = trio.lowlevel.current_clock().current_time
        self.bind()
        for name, pending in self._pending.items():
            self.units[name] = UnitRecord(name, pending.kind, pending.unit)
        self.set_repertoire()

    def set_repertoire(self) -> None:
        """S4's response repertoire counts every command the units declare."""
        self._kernel.s4.set_repertoire(sum(len(r.commands) for r in self.units.values()))

    async def subsystem(self, nursery: trio.Nursery) -> None:
        for name, record in self.units.items():
            ctx = _Context(self, record, self._pending[name].options)

            async def run_unit(record: UnitRecord = record, ctx: _Context = ctx) -> None:
                await record.unit.run(ctx)

            self._kernel.supervise(nursery, name, "s1", run_unit)
        self._kernel.supervise(nursery, "s1.bus", "s1", self._s1_loop)

    async def _s1_loop(self) -> None:
        """Commands delivered to S1 units: part of the variety the system deploys."""
        channel = self._kernel.bus.channels[Subsystem.S1]
        responses = self._kernel.s4.responses
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                responses.add(event.category, now)

    def _emit(
        self, record: UnitRecord, reading: str, value: float, priority: int | None = None
    ) -> bool:
        """A unit's reading: S3 admission, then the bus (the hot path)."""
        spec = record.specs.get(reading)
        if spec is None:
            raise UnitError(f"unit {record.name} emitted undeclared reading {reading!r}")
        if priority is None:
            priority = spec.priority
        now = self._now()
        category: str | None
        if spec.resolution is None:
            category = record.categories[reading]
        else:
            bin_ = math.floor(value / spec.resolution)
            bins = record.bins[reading]
            category = bins.get(bin_)
            if category is None:
                category = f"{record.name}.{reading}:{bin_}"
                if len(bins) < MAX_BINS:
                    bins[bin_] = category
        self._env_add(category, now)
        decision = self._admit(record.name, priority, now)
        if decision is not Admission.PASS:
            s3 = self._s3
            episodes = s3.attenuation_episodes
            if episodes != self._episodes_seen:
                self._episodes_seen = episodes
                self._attenuation_started(record.name)
            if decision is Admission.AGGREGATE:
                s3.fold(record.name, reading, value)
                record.attenuated += 1
                return False
            if decision is Admission.DROP:
                record.attenuated += 1
                return False
        event = _new_event(
            Event,
            ("reading", record.name, reading, value, self._stamp(), priority, category, 0.0, ()),
        )
        try:
            self._publish_now(event, now)
        except trio.WouldBlock:
            record.blocked += 1
            return False
        record.emitted += 1
        if self.first_event_at is None:
            self.first_event_at = now
        if self.on_reading:
            for hook in self.on_reading:
                hook(record.name, reading, value, event.hlc)
        return True

    def _attenuation_started(self, source: str) -> None:
        k = self._kernel
        k.response("attenuate", f"s1 over budget (first: {source})")
        k.raise_signal(
            "s3.attenuation",
            self._attenuation_pain,
            f"S1 budget exhausted; attenuating (first over budget: {source})",
        )
        k.failure(Subsystem.S3, "S1 budget exhausted")

    def submit_command(
        self,
        target: str,
        name: str,
        value: Scalar,
        *,
        issuer: str = "operator",
        subsystem: Subsystem = Subsystem.S1,
    ) -> CommandResult:
        """Send a command to a unit through S5 policy, S2 damping and S3 budgets.

        Returns a :class:`CommandResult`; a refusal carries the reason (which
        subsystem refused, and why). Never blocks.
        """
        k = self._kernel
        key = f"{target}.{name}"
        record = self.units.get(target)
        if record is None or name not in record.commands:
            return self._refused(key, f"s1: no unit {target!r} with command {name!r}")
        problem = record.commands[name].check(value)
        if problem is not None:
            return self._refused(key, f"s1: {key} {problem}")
        reason = k.s5.check_command(key, value)
        if reason is not None:
            return self._refused(key, reason)
        now = trio.current_time()
        damping, oscillation = k.s2.command(key, issuer, value, now)
        if oscillation is not None:
            self._oscillation(oscillation)
        if damping.suppressed is not None:
            k.response("damp", key)
            return CommandResult(False, damping.suppressed, damping.value, damped=True)
        reason = k.s3.authorize(subsystem, now)
        if reason is not None:
            return self._refused(key, reason)
        self._command_ids += 1
        command = Command(target, name, damping.value, issuer, value, self._command_ids)
        try:
            record.inbox_send.send_nowait(command)
        except trio.WouldBlock:
            return self._refused(key, f"s1: {target} command queue full ({COMMAND_QUEUE})")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return self._refused(key, f"s1: {target} is not accepting commands")
        record.commands_applied += 1
        if damping.damped:
            k.response("damp", key)
        k.publish(k.bus.event("command", issuer, key, damping.value, category=f"command:{key}"))
        return CommandResult(True, "", damping.value, damping.damped, command)

    async def execute_command(
        self,
        target: str,
        name: str,
        value: Scalar,
        *,
        issuer: str = "operator",
        timeout_s: float = COMMAND_CONFIRM_TIMEOUT_S,
    ) -> CommandResult:
        """:meth:`submit_command`, then, when the target unit confirms commands
        (``confirms_commands``), wait for its outcome: accepted only when the unit
        carried the command out (a device acknowledged it), else refused with the
        unit's reason, or after ``timeout_s`` without an answer. For other units
        the result is the admission, as :meth:`submit_command` returns it."""
        await trio.lowlevel.checkpoint()
        result = self.submit_command(target, name, value, issuer=issuer)
        record = self.units.get(target)
        if not result.accepted or result.command is None or record is None or not record.confirms:
            return result
        command = result.command
        done, slot = record.waiters[command.id] = (trio.Event(), [None])
        try:
            with trio.move_on_after(timeout_s):
                await done.wait()
        finally:
            del record.waiters[command.id]
        if not done.is_set():
            reason = f"s1: {target} did not confirm {command.key} within {timeout_s:g} s"
        elif slot[0] is not None:
            reason = f"s1: {target}: {slot[0]}"
        else:
            return result
        self._kernel.response("refuse", command.key)
        return CommandResult(False, reason, result.value, result.damped, command)

    def _refused(self, key: str, reason: str) -> CommandResult:
        self._kernel.response("refuse", key)
        return CommandResult(False, reason)

    def _oscillation(self, o: Oscillation) -> None:
        """S2 found a control loop oscillating on a command's target."""
        self._kernel.pattern(
            Pattern("oscillation", "alarm", o.target, f"{o.rule}: {o.detail}", o.at)
        )
        self._kernel.failure(Subsystem.S2, f"oscillation on {o.target}")


def _unique(specs: Iterable[Any], unit: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name in out:
            raise UnitError(f"unit {unit} declares {what} {spec.name!r} twice")
        out[spec.name] = spec
    return out
