"""The runtime: composes the bus, S1..S5 and the algedonic channel under a supervisor.

Each subsystem runs in its own nursery under :class:`Supervisor`: a crashing
unit or subsystem loop is restarted with backoff and raises pain while the
rest keep running. ``run`` returns after a graceful stop (``stop()``,
SIGTERM/SIGINT when ``handle_signals``) that runs the flush hooks within
``runtime.shutdown_timeout_s`` (5 s).

Seams for the agent process (the mesh, the store, the gateway):

* ``algedonic_port`` — outgoing signals for ``vsm/{mesh}/alg/{node}``;
  :meth:`Runtime.inject_remote_signal` for signals received from peers;
* :meth:`Runtime.update_peer` / :meth:`Runtime.local_report` — the S4 mesh view
  from replicated state, and what to replicate about this node;
* :meth:`Runtime.accept_policy` — a signed policy document from ``vsm/{mesh}/policy``;
* ``leases`` with :meth:`Runtime.acquire_lease`, :meth:`Runtime.merge_leases` and
  ``on_lease_delta`` callbacks — the S2 lease CRDT to gossip;
* :meth:`Runtime.breaker` — S3 circuit breakers for external dependencies;
* :meth:`Runtime.add_flush_hook` — called with the status at shutdown;
* :meth:`Runtime.set_status_section` — extra status keys (``gateway``);
* :meth:`Runtime.execute_command` — a command and, for units that confirm
  commands (a device behind the firmware bridge), the unit's outcome;
* :meth:`Runtime.add_service` — a task started with the subsystems (the status
  endpoint, composed by whoever builds the process: the runtime does no network
  I/O of its own).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import random
import signal as signal_module
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import trio

from vsm_edge.sync import ClockDriftError, HybridLogicalClock, Timestamp, wall_clock_ms

from .._errors import PolicyError, UnitError
from .algedonic import PAIN, PLEASURE, Alarm, AlgedonicCore, AlgedonicPort, Signal, escalated
from .bus import Channel, EventBus
from .event import HIGH, Event, Scalar, Subsystem
from .lease import LeaseMap
from .patterns import (
    CascadeDetector,
    ClockSkewDetector,
    Pattern,
    PatternLog,
    VarietyOverflowDetector,
)
from .s2 import Coordination, Oscillation
from .s3 import Admission, CircuitBreaker, Control
from .s4 import Anomaly, Intelligence, MeshView, PeerReport
from .s5 import Identity, PolicyEngine, Recommendation
from .settings import UnitConfig, VsmConfig
from .status import (
    AlgedonicCounters,
    AlgedonicStatus,
    AnomalyStatus,
    BudgetStatus,
    ChannelStatus,
    CommandsConfirmed,
    IdentityStatus,
    LeaseStatus,
    NodeInfo,
    OscillationStatus,
    PolicyStatus,
    S1Status,
    S2Status,
    S3Status,
    S4Status,
    S5Status,
    SectionError,
    StatusSection,
    UnitStatus,
    VsmStatus,
)
from .supervisor import Crash, Supervisor
from .unit import Command, CommandResult, CommandSpec, ReadingSpec, Unit, load_unit

__all__ = ["Runtime"]

log = logging.getLogger("vsm_edge.agent.runtime")

_new_event = tuple.__new__  # builds an Event without NamedTuple's Python-level __new__

COMMAND_QUEUE = 64
COMMAND_CONFIRM_TIMEOUT_S = 10.0
MAX_BINS = 4096  # cached category names per reading
EXEMPT_S = 10.0
SAFE_MODE_TICK_S = 0.5
PATTERN_PAIN = {
    "variety-overflow": 0.6,
    "variety-warning": 0.3,
    "oscillation": 0.5,
    "cascade": 0.9,
    "clock-skew": 0.5,
}
FlushHook = Callable[[VsmStatus], Awaitable[None]]
# started with ``nursery.start``: reports a value (or None) through task_status
Service = Callable[..., Awaitable[None]]


class _UnitRecord:
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
    """The :class:`UnitContext` the runtime hands each unit."""

    def __init__(self, runtime: Runtime, record: _UnitRecord, options: Mapping[str, Any]) -> None:
        self._runtime = runtime
        self._record = record
        self._options = options
        self._random = random.Random(record.name)  # noqa: S311 - simulation, not crypto
        # a partial (C) rather than a method: emit is the hot path of every unit
        self.emit: Callable[..., bool] = functools.partial(runtime._emit, record)

    @property
    def name(self) -> str:
        return self._record.name

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
        return await self._runtime.execute_command(target, name, value, issuer=self._record.name)

    def pain(self, intensity: float, reason: str = "") -> None:
        self._runtime.raise_signal(f"s1.{self._record.name}", intensity, reason)

    def clear_pain(self, reason: str = "") -> int:
        return self._runtime.clear_pain(f"s1.{self._record.name}", reason)

    def declare(
        self,
        readings: Iterable[ReadingSpec] | None = None,
        commands: Iterable[CommandSpec] | None = None,
    ) -> None:
        self._record.declare(readings, commands)
        if commands is not None:
            runtime = self._runtime
            runtime.s4.set_repertoire(sum(len(r.commands) for r in runtime.units.values()))

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
            "at_s": round(trio.current_time() - self._runtime.started_at, 3),
        }
        waiter = record.waiters.get(command.id)
        if waiter is not None:
            waiter[1][0] = error
            waiter[0].set()


class Runtime:
    """One node's VSM: build it from a config, then ``nursery.start(runtime.run)``.

    The config is anything that provides :class:`~vsm_edge.agent.vsm.settings.VsmConfig`
    (the agent's :class:`~vsm_edge.agent.config.schema.AgentConfig` does).

    ``wall_clock`` gives the HLC its physical time (ms); tests on MockClock pass
    a function of ``trio.current_time()``. ``units`` adds units built in code to
    those of the config.
    """

    def __init__(
        self,
        config: VsmConfig,
        *,
        wall_clock: Callable[[], int] = wall_clock_ms,
        clock: HybridLogicalClock | None = None,
        units: Mapping[str, Unit] | None = None,
        handle_signals: bool = False,
        write_state: bool = True,
        public_key: str = "",
    ) -> None:
        self.config = config
        self.node = config.node.id
        self.wall_clock = wall_clock
        self.hlc = clock or HybridLogicalClock(self.node, wall_clock)
        self.handle_signals = handle_signals
        self.write_state = write_state
        bus_cfg = config.bus
        self.bus = EventBus(
            self.hlc,
            {
                s: Channel(
                    str(s),
                    capacity=c.capacity,
                    window_s=c.window_ms / 1000.0,
                    overflow=c.overflow,
                    # at most half the capacity waits in the window: past that the
                    # window shrinks (order kept) before anything is dropped
                    window_capacity=max(1, c.capacity // 2),
                    dedup_capacity=bus_cfg.dedup_capacity,
                    bypass_intensity=bus_cfg.bypass_intensity,
                )
                for s, c in bus_cfg.channels.items()
            },
        )
        self.bus.subscribe(Subsystem.S1, ["command"])
        self.bus.subscribe(Subsystem.S2, ["command"])
        self.bus.subscribe(Subsystem.S3, ["response"])
        self.bus.subscribe(Subsystem.S4, ["reading", "aggregate"])
        self.bus.subscribe(Subsystem.S5, ["anomaly", "pattern", "audit", "policy"])
        self.bus.subscribe(Subsystem.ALGEDONIC, ["signal"])
        self.identity = Identity(self.node, config.node.mesh, config.node.zone, public_key)
        self.supervisor = Supervisor(config.runtime, self._on_crash)
        self.algedonic = AlgedonicCore(config.algedonic, self.node)
        self.algedonic_port = AlgedonicPort(config.algedonic.outbound_capacity)
        self.s5 = PolicyEngine(config.s5, self.identity)
        self.mesh_view = MeshView(config.s4.peer_stale_s)
        self.patterns = PatternLog()
        self._overflow = VarietyOverflowDetector(config.s4.warning_ratio, config.s4.overflow_ratio)
        self._cascade = CascadeDetector(config.s4.cascade_window_s)
        self._skew = ClockSkewDetector(config.s4.clock_skew_s)
        self.leases = LeaseMap()
        self.on_lease_delta: list[Callable[[LeaseMap], None]] = []
        # (unit, reading, value, stamp) for each admitted reading: the agent
        # replicates the latest ones (rate-limited) into the mesh state.
        self.on_reading: list[Callable[[str, str, float, Timestamp], None]] = []
        self._units_pending: dict[str, tuple[str, Unit, Mapping[str, Any]]] = {}
        for uc in config.units:
            self._units_pending[uc.name] = (uc.kind, _load(uc), uc.options)
        for name, made in (units or {}).items():
            if name in self._units_pending:
                raise UnitError(f"unit {name!r} is defined twice")
            self._units_pending[name] = ("code", made, {})
        self.units: dict[str, _UnitRecord] = {}
        self._flush_hooks: list[FlushHook] = []
        self._status_sections: dict[str, Callable[[], StatusSection]] = {}
        self._services: list[tuple[str, Service]] = []
        self.service_values: dict[str, Any] = {}  # name -> what the service reported started
        self._stop = trio.Event()
        self._started = trio.Event()
        self._alarm_wakeup = trio.lowlevel.ParkingLot()
        self.started_at = 0.0
        self.first_event_at: float | None = None
        self.algedonic_latencies: deque[float] = deque(maxlen=4096)
        self.s5_heard: deque[tuple[float, Signal]] = deque(maxlen=256)
        self._command_ids = 0
        self._episodes_seen = 0
        self._now: Callable[[], float] = trio.current_time
        self.s2: Coordination = Coordination(config.s2)
        # S3 and S4 need "now": made in run(); placeholders keep the types simple
        self.s3: Control = Control(config.s3, 0.0)
        self.s4: Intelligence = Intelligence(config.s4, 0.0)
        self._bind_hot_path()

    def _bind_hot_path(self) -> None:
        # bound methods looked up once: _emit runs for every reading
        self._env_add = self.s4.environment.add
        self._admit = self.s3.admit_reading
        self._stamp = self.hlc.now
        self._publish_now = self.bus.publish

    # -- life cycle -------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`stop` (or a signal); then flush within the shutdown timeout."""
        now = trio.current_time()
        self.started_at = now
        # one call instead of trio.current_time()'s three, on the hot path
        self._now = trio.lowlevel.current_clock().current_time
        self.s3 = Control(self.config.s3, now)
        self.s4 = Intelligence(self.config.s4, now)
        self._bind_hot_path()
        for name, (kind, made, _options) in self._units_pending.items():
            self.units[name] = _UnitRecord(name, kind, made)
        self.s4.set_repertoire(sum(len(r.commands) for r in self.units.values()))
        if self.config.s5.policy_file is not None and self.config.s5.policy_file.exists():
            self.accept_policy(self.config.s5.policy_file.read_bytes(), raise_errors=False)
        try:
            async with trio.open_nursery() as root:
                if self.handle_signals:  # first, so no signal finds Python's default handler
                    await root.start(self._watch_signals)
                for name, body in (
                    ("algedonic", self._algedonic_subsystem),
                    ("s5", self._s5_subsystem),
                    ("s4", self._s4_subsystem),
                    ("s3", self._s3_subsystem),
                    ("s2", self._s2_subsystem),
                    ("s1", self._s1_subsystem),
                ):
                    await root.start(self._subsystem, name, body)
                for name, start in self._services:
                    self.service_values[name] = await root.start(start)
                self._started.set()
                task_status.started(self)
                await self._stop.wait()
                root.cancel_scope.cancel()
        finally:
            with trio.move_on_after(self.config.runtime.shutdown_timeout_s) as scope:
                scope.shield = True
                await self._flush()

    def stop(self) -> None:
        """Ask for a graceful stop (idempotent)."""
        self._stop.set()

    async def wait_started(self) -> None:
        await self._started.wait()

    def add_flush_hook(self, hook: FlushHook) -> None:
        """``await hook(status)`` at shutdown (the store connects here)."""
        self._flush_hooks.append(hook)

    def add_service(self, name: str, start: Service) -> None:
        """Start ``await nursery.start(start)`` with the subsystems (before :meth:`run`).

        What the service reports started is kept in ``service_values[name]``
        (the status endpoint: its port).
        """
        self._services.append((name, start))

    @property
    def status_port(self) -> int | None:
        """The port of the status endpoint, once a service named ``status`` runs."""
        port = self.service_values.get("status")
        return port if isinstance(port, int) else None

    def set_status_section(self, key: str, provider: Callable[[], StatusSection]) -> None:
        """Add a top-level status key (e.g. ``gateway``): ``provider()`` gives its typed value.

        The value only needs a ``to_json()``; the mesh's sections are typed in
        :mod:`vsm_edge.agent.mesh.status`. Setting a key again replaces its provider.
        """
        self._status_sections[key] = provider

    async def _flush(self) -> None:
        status = self.status()
        if self.write_state:  # first: local and quick, so a slow hook cannot starve it
            data_dir = self.config.node.data_dir
            document = status.to_json()
            try:
                await trio.to_thread.run_sync(_write_json, data_dir / "vsm-state.json", document)
            except OSError as exc:  # a full disk must not turn a clean stop into a crash
                log.error("could not write %s: %s", data_dir / "vsm-state.json", exc)  # noqa: TRY400
        for hook in self._flush_hooks:
            try:
                await hook(status)
            except Exception as exc:  # one broken hook must not stop the others
                log.error("flush hook %r failed: %r", hook, exc)  # noqa: TRY400

    async def _watch_signals(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.open_signal_receiver(signal_module.SIGTERM, signal_module.SIGINT) as signals:
            task_status.started()
            async for _ in signals:
                self.stop()
                return

    async def _subsystem(
        self,
        name: str,
        body: Callable[[trio.Nursery], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One nursery per subsystem; its loops are supervised inside it."""
        async with trio.open_nursery() as nursery:
            await body(nursery)
            task_status.started()

    def _supervise(
        self, nursery: trio.Nursery, name: str, group: str, fn: Callable[[], Awaitable[None]]
    ) -> None:
        nursery.start_soon(self.supervisor.supervise, name, group, fn)

    def _on_crash(self, crash: Crash) -> None:
        intensity = min(0.9, 0.5 + 0.1 * (crash.crashes - 1))
        self.raise_signal(
            f"{crash.group}.{crash.name}",
            intensity,
            f"crashed ({crash.error}); restart #{crash.crashes} "
            f"at +{crash.next_start - crash.at:.2f} s",
        )
        if crash.group == "s1":
            self._failure(Subsystem.S1, f"{crash.name} crashed")

    # -- S1: units ------------------------------------------------------------------------

    async def _s1_subsystem(self, nursery: trio.Nursery) -> None:
        for name, record in self.units.items():
            options = self._units_pending[name][2]
            ctx = _Context(self, record, options)

            async def run_unit(record: _UnitRecord = record, ctx: _Context = ctx) -> None:
                await record.unit.run(ctx)

            self._supervise(nursery, name, "s1", run_unit)
        self._supervise(nursery, "s1.bus", "s1", self._s1_loop)

    async def _s1_loop(self) -> None:
        """Commands delivered to S1 units: part of the variety the system deploys."""
        channel = self.bus.channels[Subsystem.S1]
        responses = self.s4.responses
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                responses.add(event.category, now)

    def _emit(
        self, record: _UnitRecord, reading: str, value: float, priority: int | None = None
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
            s3 = self.s3
            episodes = s3.attenuation_episodes
            if episodes != self._episodes_seen:
                self._episodes_seen = episodes
                self._attenuation_started(record.name, now)
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

    def _attenuation_started(self, source: str, now: float) -> None:
        self._response("attenuate", f"s1 over budget (first: {source})")
        self.raise_signal(
            "s3.attenuation",
            self.config.s3.attenuation_pain,
            f"S1 budget exhausted; attenuating (first over budget: {source})",
        )
        self._failure(Subsystem.S3, "S1 budget exhausted")

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
        key = f"{target}.{name}"
        record = self.units.get(target)
        if record is None or name not in record.commands:
            return self._refused(key, f"s1: no unit {target!r} with command {name!r}")
        problem = record.commands[name].check(value)
        if problem is not None:
            return self._refused(key, f"s1: {key} {problem}")
        reason = self.s5.check_command(key, value)
        if reason is not None:
            return self._refused(key, reason)
        now = trio.current_time()
        damping, oscillation = self.s2.command(key, issuer, value, now)
        if oscillation is not None:
            self._oscillation(oscillation)
        if damping.suppressed is not None:
            self._response("damp", key)
            return CommandResult(False, damping.suppressed, damping.value, damped=True)
        reason = self.s3.authorize(subsystem, now)
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
            self._response("damp", key)
        self._publish(
            self.bus.event("command", issuer, key, damping.value, category=f"command:{key}")
        )
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
        self._response("refuse", command.key)
        return CommandResult(False, reason, result.value, result.damped, command)

    def _refused(self, key: str, reason: str) -> CommandResult:
        self._response("refuse", key)
        return CommandResult(False, reason)

    # -- S2 --------------------------------------------------------------------------------

    async def _s2_subsystem(self, nursery: trio.Nursery) -> None:
        self._supervise(nursery, "s2.bus", "s2", self._s2_loop)

    async def _s2_loop(self) -> None:
        channel = self.bus.channels[Subsystem.S2]
        meter = self.s4.variety[Subsystem.S2]
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                damped = self.s2.is_damped(str(event.name), now)
                meter.add(f"{event.category}:{'damped' if damped else 'free'}", now)

    def _oscillation(self, o: Oscillation) -> None:
        self._pattern(Pattern("oscillation", "alarm", o.target, f"{o.rule}: {o.detail}", o.at))
        self._failure(Subsystem.S2, f"oscillation on {o.target}")

    def acquire_lease(self, resource: str, ttl_s: float | None = None) -> LeaseMap:
        """Claim ``resource`` mesh-wide; returns the delta (also given to ``on_lease_delta``).

        Raises :class:`LeaseHeldError` when a live lease of another node is known.
        """
        ttl_ms = int(1000 * (ttl_s if ttl_s is not None else self.config.s2.lease_ttl_s))
        delta = self.leases.acquire(resource, self.node, self.hlc.now(), ttl_ms)
        self.leases = self.leases.merge(delta)
        for callback in self.on_lease_delta:
            callback(delta)
        return delta

    def merge_leases(self, delta: LeaseMap) -> None:
        """Merge a lease delta or state received from the mesh."""
        self.leases = self.leases.merge(delta)

    def lease_holder(self, resource: str) -> str | None:
        return self.leases.holder(resource, self.hlc.now())

    # -- S3 --------------------------------------------------------------------------------

    async def _s3_subsystem(self, nursery: trio.Nursery) -> None:
        self._supervise(nursery, "s3.bus", "s3", self._s3_loop)
        self._supervise(nursery, "s3.aggregate", "s3", self._aggregate_loop)
        self._supervise(nursery, "s3.audit", "s3", self._audit_loop)

    async def _s3_loop(self) -> None:
        channel = self.bus.channels[Subsystem.S3]
        meter = self.s4.variety[Subsystem.S3]
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                meter.add(event.category, now)

    async def _aggregate_loop(self) -> None:
        interval = self.config.s3.aggregate_interval_s
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for agg in self.s3.flush(now):
                self._response("aggregate", f"{agg.source}.{agg.name}")
                self._publish(
                    self.bus.event(
                        "aggregate",
                        agg.source,
                        agg.name,
                        agg.mean,
                        category=f"{agg.source}.{agg.name}:aggregate",
                        attrs=(("count", agg.count), ("max", agg.maximum), ("min", agg.minimum)),
                    )
                )

    async def _audit_loop(self) -> None:
        interval = self.config.s3.audit_interval_s
        while True:
            await trio.sleep(interval)
            probes: dict[str, bool] = {}
            async with trio.open_nursery() as nursery:
                for name, record in self.units.items():
                    probe = getattr(record.unit, "probe", None)
                    if probe is not None:
                        nursery.start_soon(self._probe, name, probe, probes)
            now = trio.current_time()
            states = {
                n: self.supervisor.tasks[n].state for n in self.units if n in self.supervisor.tasks
            }
            readers = [
                n for n, r in self.units.items() if any(s.period_s for s in r.specs.values())
            ]
            for finding in self.s3.audit(now, states, probes, readers):
                self._response("audit", finding.unit)
                self._publish(
                    self.bus.event(
                        "audit",
                        "s3",
                        finding.unit,
                        finding.problem,
                        category=f"audit:{finding.unit}",
                    )
                )
                self.raise_signal(f"s3.audit.{finding.unit}", 0.5, finding.problem)
                self._failure(Subsystem.S1, f"audit: {finding.unit} {finding.problem}")

    async def _probe(
        self, name: str, probe: Callable[[], Awaitable[bool]], out: dict[str, bool]
    ) -> None:
        with trio.move_on_after(1.0):
            try:
                out[name] = bool(await probe())
            except Exception:  # a probe that raises is a failed probe
                out[name] = False
            return
        out[name] = False

    def breaker(self, name: str) -> CircuitBreaker:
        """The S3 circuit breaker of external dependency ``name`` (created on first use).

        Call :meth:`breaker_failure` / ``breaker(name).success()`` around calls.
        """
        return self.s3.breaker(name)

    def breaker_failure(self, name: str) -> bool:
        """Record a failure of dependency ``name``; True when it opened the breaker (with pain)."""
        opened = self.s3.breaker(name).failure(trio.current_time())
        if opened:
            self._response("breaker", name)
            self.raise_signal(f"s3.breaker.{name}", 0.7, f"circuit breaker for {name} opened")
            self._failure(Subsystem.S3, f"breaker {name} opened")
        return opened

    # -- S4 --------------------------------------------------------------------------------

    async def _s4_subsystem(self, nursery: trio.Nursery) -> None:
        self._supervise(nursery, "s4.bus", "s4", self._s4_loop)
        self._supervise(nursery, "s4.evaluate", "s4", self._evaluate_loop)

    async def _s4_loop(self) -> None:
        channel = self.bus.channels[Subsystem.S4]
        s4 = self.s4
        meter = s4.variety[Subsystem.S4]
        observe = s4.anomalies.observe
        while True:
            batch = await channel.receive_batch(8192)
            now = trio.current_time()
            counts: dict[str, int] = {}
            get = counts.get
            for event in batch:
                category = event.category
                counts[category] = get(category, 0) + 1
                value = event.value
                if type(value) is float or type(value) is int:
                    anomaly = observe(event.source, event.name, value, now)
                    if anomaly is not None:
                        self._anomaly(anomaly)
            meter.add_counts(counts, now)

    def _anomaly(self, anomaly: Anomaly) -> None:
        self.s4.note_anomaly(anomaly)
        self._publish(
            self.bus.event(
                "anomaly",
                "s4",
                anomaly.name,
                anomaly.z,
                category=f"anomaly:{anomaly.key}",
                priority=HIGH,
            )
        )

    async def _evaluate_loop(self) -> None:
        interval = self.config.s4.evaluate_interval_s
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            s4 = self.s4
            ratio = s4.ratio(now)
            found = self._overflow.evaluate(
                ratio, s4.environment.entropy(now), s4.system_variety(now), now
            )
            if found is not None:
                self._pattern(found)
                if found.name == "variety-overflow":
                    self._failure(Subsystem.S4, "variety overflow")

    def update_peer(self, report: PeerReport) -> None:
        """Feed the S4 mesh view from replicated state (the gossip layer calls this)."""
        now = trio.current_time()
        self.mesh_view.update(report, now)
        skew = self._skew.observe(report.node, report.hlc_wall_ms, self.wall_clock(), now)
        if skew is not None:
            self._pattern(skew)

    def local_report(self) -> PeerReport:
        """What this node replicates about itself for its peers' mesh views."""
        now = trio.current_time()
        active = [a for a in self.algedonic.active() if not a.remote]
        worst = max((a.signal.intensity for a in active if a.signal.pain), default=0.0)
        return PeerReport(
            self.node,
            self.identity.zone,
            self.hlc.now().wall,
            round(1.0 - worst, 4),
            self.s5.safe_mode,
            round(self.s4.ratio(now), 4),
            tuple(a.signal.id for a in active)[:256],
        )

    # -- S5 ----------------------------------------------------------------------------------

    async def _s5_subsystem(self, nursery: trio.Nursery) -> None:
        self._supervise(nursery, "s5.bus", "s5", self._s5_loop)
        self._supervise(nursery, "s5.safe-mode", "s5", self._safe_mode_loop)

    async def _s5_loop(self) -> None:
        channel = self.bus.channels[Subsystem.S5]
        meter = self.s4.variety[Subsystem.S5]
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                meter.add(event.category, now)
                if event.kind == "anomaly":
                    self._arbitrate(event, now)

    def _arbitrate(self, event: Event, now: float) -> None:
        """S4 says a source is anomalous; if S3 is attenuating it, S5 decides who wins."""
        if not self.s3.attenuating:
            return
        source = event.name.split(".", 1)[0]
        z = float(event.value) if isinstance(event.value, int | float) else 0.0
        decision = self.s5.arbitrate(
            Recommendation("s3", source, "attenuate", self.s3.load_share(source)),
            Recommendation("s4", source, "watch", z),
        )
        self._response("arbitrate", f"{source}:{decision.winner.source}")
        if decision.winner.source == "s4":
            self.s3.exempt_source(source, now + EXEMPT_S)

    async def _safe_mode_loop(self) -> None:
        while True:
            await trio.sleep(SAFE_MODE_TICK_S)
            self._evaluate_safe_mode()

    def _evaluate_safe_mode(self) -> None:
        now = trio.current_time()
        changed = self.s5.evaluate(now)
        if changed is True:
            self.s3.set_scale(0.5)
            self._response("safe-mode", "enter")
            self._publish(
                self.bus.event(
                    "policy", "s5", "safe-mode", True, category="safe-mode:on", priority=HIGH
                )
            )
        elif changed is False:
            self.s3.set_scale(1.0)
            self._publish(
                self.bus.event("policy", "s5", "safe-mode", False, category="safe-mode:off")
            )
            self.raise_signal("s5.safe-mode", 0.5, "left safe mode", valence=PLEASURE)

    def accept_policy(self, document: bytes, *, raise_errors: bool = True) -> bool:
        """Install an admin-signed policy document; PolicyError (counted) when refused."""
        try:
            policy = self.s5.accept_policy(document)
        except PolicyError as exc:
            self.raise_signal("s5.policy", 0.4, f"policy refused: {exc}")
            if raise_errors:
                raise
            return False
        self._publish(
            self.bus.event(
                "policy", "s5", "policy", policy.version, category=f"policy:v{policy.version}"
            )
        )
        return True

    # -- the algedonic channel --------------------------------------------------------------

    async def _algedonic_subsystem(self, nursery: trio.Nursery) -> None:
        self._supervise(nursery, "algedonic.s5", "algedonic", self._algedonic_loop)
        self._supervise(nursery, "algedonic.escalation", "algedonic", self._escalation_loop)

    def raise_signal(
        self, source: str, intensity: float, reason: str = "", *, valence: str = PAIN
    ) -> Alarm | None:
        """Raise a local algedonic signal; its alarm when delivered, None when adapted or folded.

        Raises :class:`SignalError` for an intensity outside [0, 1] or a bad source.
        """
        now = trio.current_time()
        sig = Signal(self.node, source, float(intensity), valence, self.hlc.now(), reason[:512])
        return self._offer(sig, now, remote=False)

    def inject_remote_signal(self, sig: Signal) -> Alarm | None:
        """A signal received from a peer (already verified by the transport).

        Updates the HLC (a stamp too far ahead is refused: clock-skew pattern),
        checks the peer's clock skew, then delivers it to S5 like a local one
        but never re-broadcasts it. Returns the alarm, or None when refused,
        duplicated, adapted or folded.
        """
        now = trio.current_time()
        skew = self._skew.observe(sig.node, sig.hlc.wall, self.wall_clock(), now)
        if skew is not None:
            self._pattern(skew)
        try:
            self.hlc.update(sig.hlc)
        except ClockDriftError:
            return None
        return self._offer(sig, now, remote=True)

    def _storm_signal(self) -> Signal:
        return Signal(
            self.node,
            "algedonic.storm",
            0.8,
            PAIN,
            self.hlc.now(),
            f"more than {self.config.algedonic.storm_signals} signals in "
            f"{self.config.algedonic.storm_window_s:g} s",
        )

    def _offer(self, sig: Signal, now: float, *, remote: bool) -> Alarm | None:
        delivery = self.algedonic.offer(sig, now, remote=remote, storm_signal=self._storm_signal)
        if delivery.storm_started is not None:
            self._deliver(delivery.storm_started, to_mesh=True)
            self._pattern(
                Pattern(
                    "algedonic-storm",
                    "alarm",
                    "algedonic",
                    delivery.storm_started.signal.reason,
                    now,
                ),
                signal=False,
            )
        if delivery.alarm is not None:
            self._deliver(delivery.alarm, to_mesh=delivery.to_mesh)
        return delivery.alarm

    def _deliver(self, alarm: Alarm, *, to_mesh: bool) -> None:
        sig = alarm.signal
        self._publish(
            Event(
                "signal",
                sig.source,
                sig.valence,
                sig.id,
                sig.hlc,
                HIGH,
                f"{sig.valence}:{sig.source}",
                sig.intensity if sig.pain else 0.0,
            )
        )
        if to_mesh:
            self.algedonic_port.put(sig, alarm.critical)
        if alarm.critical:
            self._alarm_wakeup.unpark_all()

    async def _algedonic_loop(self) -> None:
        """S5's direct line: signals reach S5 here, bypassing S2-S4."""
        channel = self.bus.channels[Subsystem.ALGEDONIC]
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                alarm = self.algedonic.alarms.get(str(event.value))
                if alarm is None:
                    continue
                self.algedonic_latencies.append(now - alarm.raised_at)
                self.s5_heard.append((now, alarm.signal))
                if alarm.signal.pain:
                    self.s5.hear_pain(alarm.signal.intensity, now)
            self._update_critical_pain()
            self._evaluate_safe_mode()

    def _update_critical_pain(self) -> None:
        self.s5.set_critical_pain(self.algedonic.critical_pain())

    async def _escalation_loop(self) -> None:
        while True:
            deadline = self.algedonic.next_escalation()
            with trio.move_on_at(deadline):
                await self._alarm_wakeup.park()
            now = trio.current_time()
            for alarm in self.algedonic.due_escalations(now):
                sig = escalated(alarm.signal, self.hlc.now())
                self._offer(sig, now, remote=False)

    def ack_alarm(self, alarm_id: str) -> Alarm | None:
        """Acknowledge an alarm (by id or a unique prefix of 6+ characters); None if unknown."""
        alarm = self.algedonic.ack(alarm_id, trio.current_time())
        if alarm is not None:
            self._update_critical_pain()
        return alarm

    def clear_pain(self, source: str, reason: str = "") -> int:
        """The condition behind ``source``'s pain is over: acknowledge this node's
        active pain alarms from ``source`` and, if there were any, raise a
        pleasure signal (intensity 0.3) saying why. Returns how many were acked."""
        now = trio.current_time()
        ids = [
            a.signal.id
            for a in self.algedonic.active()
            if a.signal.pain and a.signal.source == source and a.signal.node == self.node
        ]
        for alarm_id in ids:
            self.algedonic.ack(alarm_id, now)
        if ids:
            self._update_critical_pain()
            self.raise_signal(source, 0.3, reason or "recovered", valence=PLEASURE)
        return len(ids)

    # -- helpers ----------------------------------------------------------------------------

    def _publish(self, event: Event) -> None:
        # a full block-policy channel refuses: counted in the channel's statistics
        with contextlib.suppress(trio.WouldBlock):
            self.bus.publish(event)

    def _response(self, action: str, subject: str) -> None:
        now = trio.current_time()
        self.s4.responses.add(action, now)
        self._publish(
            self.bus.event("response", "s3", action, subject, category=f"response:{action}")
        )

    def _failure(self, subsystem: Subsystem, detail: str) -> None:
        found = self._cascade.failure(subsystem, detail, trio.current_time())
        if found is not None:
            self._pattern(found)

    def _pattern(self, pattern: Pattern, *, signal: bool = True) -> None:
        self.patterns.add(pattern)
        self._publish(
            self.bus.event(
                "pattern",
                "s4",
                pattern.name,
                pattern.detail,
                category=f"pattern:{pattern.name}",
                priority=HIGH,
            )
        )
        if signal and pattern.name in PATTERN_PAIN:
            self.raise_signal(f"pattern.{pattern.name}", PATTERN_PAIN[pattern.name], pattern.detail)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> VsmStatus:
        """The node's status now: the VSM and the added sections (``status().to_json()``
        is the document of ``vsm-edge status --json``; see :mod:`.status`)."""
        return build_status(self, trio.current_time(), self._status_sections)


def _unique(specs: Iterable[Any], unit: str, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        if spec.name in out:
            raise UnitError(f"unit {unit} declares {what} {spec.name!r} twice")
        out[spec.name] = spec
    return out


def _load(uc: UnitConfig) -> Unit:
    return load_unit(uc.name, uc.kind, uc.options)


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as f:
            json.dump(obj, f, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a half-written file only takes space
        raise


# -- the status of a runtime (the types are in status.py) -------------------------------


def build_status(
    rt: Runtime, now: float, sections: Mapping[str, Callable[[], StatusSection]]
) -> VsmStatus:
    """The status of ``rt`` at ``now`` (Trio time), with each section ``provider()`` gives.

    A provider that raises gives a :class:`SectionError` (a broken section
    must not break the status).
    """
    bus = rt.bus.statistics()
    channels = {name: ChannelStatus.of(c) for name, c in bus.channels.items()}
    variety = {str(s): round(v.entropy(now), 4) for s, v in rt.s4.variety.items()}
    budgets = rt.s3.budget_statuses(now)
    return VsmStatus(
        node=NodeInfo(
            id=rt.node,
            mesh=rt.identity.mesh,
            zone=rt.identity.zone,
            uptime_s=round(now - rt.started_at, 3),
            hlc=str(rt.hlc.last),
            safe_mode=rt.s5.safe_mode,
            status_port=rt.status_port,
            published=bus.published,
            tasks={n: t.snapshot() for n, t in sorted(rt.supervisor.tasks.items())},
        ),
        s1=S1Status(
            units={name: _unit(rt, r) for name, r in sorted(rt.units.items())},
            budget=budgets.get("s1"),
            variety_bits=variety.get("s1"),
            channel=channels.get("s1"),
        ),
        s2=S2Status(
            damped=rt.s2.damped_targets(now),
            targets=rt.s2.target_statuses(),
            oscillations=tuple(
                OscillationStatus(o.target, o.rule, o.issuers, o.at, o.detail)
                for o in rt.s2.oscillations
            ),
            budget=budgets.get("s2"),
            variety_bits=variety.get("s2"),
            channel=channels.get("s2"),
            leases={
                r: LeaseStatus(lease.holder, lease.expires_ms)
                for r, lease in rt.leases.entries.items()
            },
        ),
        s3=S3Status(
            budgets=budgets,
            attenuation=rt.s3.attenuation_status(now),
            refused_commands=rt.s3.refused_commands,
            breakers={n: b.snapshot() for n, b in sorted(rt.s3.breakers.items())},
            variety_bits=variety.get("s3"),
            channel=channels.get("s3"),
        ),
        s4=_s4(rt, now, variety, budgets.get("s4"), channels.get("s4")),
        s5=_s5(rt, now, budgets.get("s5"), variety.get("s5"), channels.get("s5")),
        algedonic=_algedonic(rt, now, channels.get("algedonic")),
        peers=tuple(rt.mesh_view.peers(now)),
        sections=_sections(sections),
    )


def _unit(rt: Runtime, r: _UnitRecord) -> UnitStatus:
    task = rt.supervisor.tasks.get(r.name)
    return UnitStatus(
        kind=r.kind,
        task=task.snapshot() if task is not None else None,
        readings=tuple(r.specs),
        commands=tuple(r.commands),
        emitted=r.emitted,
        attenuated=r.attenuated,
        blocked=r.blocked,
        commands_applied=r.commands_applied,
        confirmed=(
            CommandsConfirmed(r.commands_confirmed, r.commands_failed, r.last_outcome)
            if r.confirms
            else None
        ),
        detail=_unit_detail(r.unit),
    )


def _unit_detail(unit: object) -> Mapping[str, Any] | None:
    status = getattr(unit, "status", None)
    if status is None:
        return None
    try:
        detail = status()
    except Exception as exc:  # a unit's broken status must not break the node's
        return {"error": repr(exc)}
    if not isinstance(detail, Mapping):
        return {"error": f"status() returned {type(detail).__name__}, not a mapping"}
    return detail


def _s4(
    rt: Runtime,
    now: float,
    variety: Mapping[str, float],
    budget: BudgetStatus | None,
    channel: ChannelStatus | None,
) -> S4Status:
    s4 = rt.s4
    return S4Status(
        variety=variety,
        environment_bits=round(s4.environment.entropy(now), 4),
        system_bits=round(s4.system_variety(now), 4),
        variety_ratio=round(s4.ratio(now), 4),
        anomalies=s4.anomalies.count,
        recent_anomalies=tuple(
            AnomalyStatus(a.name, a.value, round(a.mean, 4), round(a.z, 2), a.at)
            for a in s4.recent_anomalies[-8:]
        ),
        variety_bits=variety.get("s4"),
        budget=budget,
        channel=channel,
        patterns=rt.patterns.snapshot(),
    )


def _s5(
    rt: Runtime,
    now: float,
    budget: BudgetStatus | None,
    variety_bits: float | None,
    channel: ChannelStatus | None,
) -> S5Status:
    s5 = rt.s5
    identity, policy = s5.identity, s5.policy
    return S5Status(
        identity=IdentityStatus(identity.node, identity.mesh, identity.zone, identity.public_key),
        policy=PolicyStatus(
            version=policy.version,
            signer=s5.policy_signer,
            allowed=tuple(policy.allowed_commands),
            denied=tuple(policy.denied_commands),
            zone=policy.zone is not None,
            rejected=s5.rejected_policies,
            last_rejection=s5.last_rejection,
        ),
        safe_mode=s5.safe_mode,
        safe_mode_entries=s5.safe_mode_entries,
        pain_level=round(s5.pain_level(now), 4),
        refusals=s5.refusals,
        arbitrations=dict(s5.arbitrations),
        budget=budget,
        variety_bits=variety_bits,
        channel=channel,
    )


def _algedonic(rt: Runtime, now: float, channel: ChannelStatus | None) -> AlgedonicStatus:
    core = rt.algedonic
    return AlgedonicStatus(
        alarms=tuple(a.snapshot(now) for a in reversed(core.alarms.values()))[:64],
        active=sum(1 for _ in core.active()),
        baselines={f"{n}/{s}": round(b, 4) for (n, s), b in sorted(core.baselines.items())},
        storm=None if core.storm is None else core.storm.snapshot(now),
        counters=AlgedonicCounters(
            received=core.received,
            delivered=core.delivered,
            adapted=core.adapted,
            folded=core.folded,
            storms=core.storms,
            escalations=core.escalations,
            duplicates=core.duplicates,
        ),
        channel=channel,
        outbound=rt.algedonic_port.statistics(),
    )


def _sections(providers: Mapping[str, Callable[[], StatusSection]]) -> dict[str, StatusSection]:
    out: dict[str, StatusSection] = {}
    for key, provider in providers.items():
        try:
            out[key] = provider()
        except Exception as exc:  # a broken provider must not break status
            out[key] = SectionError(repr(exc))
    return out
