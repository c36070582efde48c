"""The runtime: composes the bus, S1..S5 and the algedonic channel under a supervisor.

Each subsystem runs in its own nursery under :class:`Supervisor`: a crashing
unit or subsystem loop is restarted with backoff and raises pain while the
rest keep running. ``run`` returns after a graceful stop (``stop()``,
SIGTERM/SIGINT when ``handle_signals``) that runs the flush hooks within
``runtime.shutdown_timeout_s`` (5 s).

The work is done by parts, one per subsystem, which share a
:class:`~.kernel.Kernel` (the bus, the HLC, the supervisor, S2..S5 and the
publish/response/failure/pattern services) and know nothing of the runtime:
:class:`~.operations.Operations` (S1: units, readings, commands),
:class:`~.coordination_loops.CoordinationLoops` (S2, leases),
:class:`~.control_loops.ControlLoops` (S3: aggregates, audits, breakers),
:class:`~.intelligence_loops.IntelligenceLoops` (S4: anomalies, variety
overflow, mesh view), :class:`~.policy_loops.PolicyLoops` (S5: arbitration,
safe mode, policy) and :class:`~.alarms.Alarms` (the algedonic channel's
delivery). The runtime builds them, starts and stops them, and is the one
object the rest of the agent holds. Why :class:`Runtime` has more than ~25
methods: most of them are one-line delegations to the parts, or properties
reading their state, that keep its public API (the seams below, used by
mesh/, web/, cli/ and the tests) on one object. Why the module is ~700
lines: :func:`build_status` (the last ~110) reads the runtime and every part
into the types of :mod:`.status`; anywhere else it would import the runtime
back, a cycle.

Seams for the agent process (the mesh, the store, the gateway):

* ``algedonic_port`` — outgoing signals for ``vsm/{mesh}/alg/{node}``;
  :meth:`Runtime.inject_remote_signal` for signals received from peers;
* :meth:`Runtime.update_peer` / :meth:`Runtime.local_report` — the S4 mesh view
  from replicated state, and what to replicate about this node;
  :meth:`Runtime.peer_clock` for each message received live (clock skew);
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

import json
import logging
import os
import signal as signal_module
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from vsm_edge.sync import HybridLogicalClock, wall_clock_ms

from .._errors import ConfigError, PolicyError, UnitError
from .alarm_ledger import AlarmEntry
from .alarms import Alarms
from .algedonic import PAIN, Alarm, AlgedonicCore, AlgedonicPort, Signal
from .bus import Channel, EventBus
from .control_loops import ControlLoops
from .coordination_loops import CoordinationLoops
from .event import Scalar, Subsystem
from .intelligence_loops import IntelligenceLoops
from .kernel import Kernel
from .lease import LeaseMap
from .operations import COMMAND_CONFIRM_TIMEOUT_S, Operations, PendingUnit, UnitRecord
from .patterns import CascadeDetector, ClockSkewDetector, VarietyOverflowDetector
from .policy_loops import PolicyLoops
from .s2 import Coordination
from .s3 import CircuitBreaker, Control
from .s4 import Intelligence, MeshView, PeerReport
from .s5 import Identity, PolicyEngine, verify_policy
from .settings import BusConfig, UnitConfig, VsmConfig
from .status import (
    AlarmStatus,
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
from .unit import CommandResult, Unit, load_unit

__all__ = ["Runtime"]

log = logging.getLogger("vsm_edge.agent.runtime")

FlushHook = Callable[[VsmStatus], Awaitable[None]]
# started with ``nursery.start``: reports a value (or None) through task_status
Service = Callable[..., Awaitable[None]]


class Runtime:
    """One node's VSM: build it from a config, then ``nursery.start(runtime.run)``.

    The config is anything with the sections the VSM reads
    (:class:`~vsm_edge.agent.vsm.settings.VsmConfig`): an ``AgentConfig``.

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
        self.bus = _event_bus(config.bus, self.hlc)
        self.identity = Identity(self.node, config.node.mesh, config.node.zone, public_key)
        self.supervisor = Supervisor(config.runtime, self._on_crash)
        self.s2 = Coordination(config.s2)
        self.s5 = PolicyEngine(config.s5, self.identity)
        self.mesh_view = MeshView(config.s4.peer_stale_s)
        self._kernel = kernel = Kernel(
            bus=self.bus,
            hlc=self.hlc,
            supervisor=self.supervisor,
            s2=self.s2,
            # S3 and S4 need "now": made anew in run(); placeholders keep the types simple
            s3=Control(config.s3, 0.0),
            s4=Intelligence(config.s4, 0.0),
            s5=self.s5,
            cascade=CascadeDetector(config.s4.cascade_window_s),
            raise_signal=self.raise_signal,
        )
        self.patterns = kernel.patterns
        self._policy = PolicyLoops(kernel)
        self._alarms = Alarms(
            kernel,
            AlgedonicCore(config.algedonic, self.node),
            AlgedonicPort(config.algedonic.outbound_capacity),
            evaluate_safe_mode=self._policy.evaluate_safe_mode,
            wall_clock=wall_clock,
            retention_s=config.algedonic.retention_s,
        )
        # The algedonic part itself: the mesh reads and writes its alarm ledger.
        self.alarms = self._alarms
        self.algedonic = self._alarms.core
        self.algedonic_port = self._alarms.port
        self.algedonic_latencies = self._alarms.latencies
        self.s5_heard = self._alarms.s5_heard
        self._intelligence = IntelligenceLoops(
            kernel,
            evaluate_interval_s=config.s4.evaluate_interval_s,
            overflow=VarietyOverflowDetector(config.s4.warning_ratio, config.s4.overflow_ratio),
            identity=self.identity,
            mesh_view=self.mesh_view,
            skew=ClockSkewDetector(config.s4.clock_skew_s),
            alarms=self._alarms.ledger,
        )
        self._coordination = CoordinationLoops(kernel, self.node, lease_ttl_s=config.s2.lease_ttl_s)
        self.on_lease_delta = self._coordination.on_lease_delta
        self._operations = Operations(
            kernel,
            _load_units(config.units, units or {}, config.node.plugin_dirs),
            attenuation_pain=config.s3.attenuation_pain,
            clear_pain=self._alarms.clear_pain,
            node=config.node.id,
        )
        self.units = self._operations.units  # filled when the runtime starts
        # (unit, reading, value, stamp) for each admitted reading: the agent
        # replicates the latest ones (rate-limited) into the mesh state.
        self.on_reading = self._operations.on_reading
        self._control = ControlLoops(
            kernel,
            self.units,
            aggregate_interval_s=config.s3.aggregate_interval_s,
            audit_interval_s=config.s3.audit_interval_s,
        )
        self._flush_hooks: list[FlushHook] = []
        self._status_sections: dict[str, Callable[[], StatusSection]] = {}
        self._services: list[tuple[str, Service]] = []
        self.service_values: dict[str, Any] = {}  # name -> what the service reported started
        self._stop = trio.Event()
        self._started = trio.Event()
        self.started_at = 0.0

    # -- the state the parts keep -------------------------------------------------------

    @property
    def s3(self) -> Control:
        return self._kernel.s3

    @property
    def s4(self) -> Intelligence:
        return self._kernel.s4

    @property
    def leases(self) -> LeaseMap:
        """The S2 lease CRDT as this node knows it (a new value after each merge)."""
        return self._coordination.leases

    @property
    def first_event_at(self) -> float | None:
        """When the first reading was published (trio time), None before."""
        return self._operations.first_event_at

    # -- life cycle -------------------------------------------------------------------

    async def run(
        self, *, task_status: trio.TaskStatus[Runtime] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until :meth:`stop` (or a signal); then flush within the shutdown timeout.

        Raises :class:`ConfigError` when ``s5.policy_file`` is set but cannot be read or
        is not a policy signed by one of ``s5.admin_keys``.
        """
        now = trio.current_time()
        self.started_at = now
        self._kernel.start(Control(self.config.s3, now), Intelligence(self.config.s4, now))
        self._operations.start(now)
        policy_file = self.config.s5.policy_file
        if policy_file is not None:
            try:
                document = policy_file.read_bytes()
            except OSError as exc:  # a policy the operator named must not be skipped unseen
                raise ConfigError(
                    "s5.policy_file",
                    f"cannot read {policy_file}: {exc.strerror or exc}; "
                    "write it with `vsm-edge policy sign`, or remove the key",
                ) from exc
            try:
                mesh = verify_policy(document, self.config.s5.admin_keys).mesh
            except PolicyError as exc:  # a policy that cannot count must not start unseen
                raise ConfigError(
                    "s5.policy_file",
                    f"{policy_file} is refused: {exc}; write it with `vsm-edge policy sign` "
                    "and an admin key listed in s5.admin_keys, or remove the key",
                ) from None
            if mesh not in ("*", self.identity.mesh):
                raise ConfigError(
                    "s5.policy_file",
                    f"{policy_file} is for mesh {mesh!r}, not {self.identity.mesh!r}",
                )
            # verified: a refusal now can only be "not newer" than a kept policy
            self.accept_policy(document, raise_errors=False)
        try:
            async with trio.open_nursery() as root:
                if self.handle_signals:  # first, so no signal finds Python's default handler
                    await root.start(self._watch_signals)
                for name, body in (
                    ("algedonic", self._alarms.subsystem),
                    ("s5", self._policy.subsystem),
                    ("s4", self._intelligence.subsystem),
                    ("s3", self._control.subsystem),
                    ("s2", self._coordination.subsystem),
                    ("s1", self._operations.subsystem),
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

    def _on_crash(self, crash: Crash) -> None:
        intensity = min(0.9, 0.5 + 0.1 * (crash.crashes - 1))
        self.raise_signal(
            f"{crash.group}.{crash.name}",
            intensity,
            f"crashed ({crash.error}); restart #{crash.crashes} "
            f"at +{crash.next_start - crash.at:.2f} s",
        )
        if crash.group == "s1":
            self._kernel.failure(Subsystem.S1, f"{crash.name} crashed")

    # -- S1: commands (Operations) ------------------------------------------------------

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
        return self._operations.submit_command(
            target, name, value, issuer=issuer, subsystem=subsystem
        )

    async def execute_command(
        self,
        target: str,
        name: str,
        value: Scalar,
        *,
        issuer: str = "operator",
        timeout_s: float = COMMAND_CONFIRM_TIMEOUT_S,
    ) -> CommandResult:
        """:meth:`submit_command`, then, for a unit that confirms commands, its
        outcome (refused when it failed or did not answer within ``timeout_s``);
        see :meth:`Operations.execute_command`."""
        return await self._operations.execute_command(
            target, name, value, issuer=issuer, timeout_s=timeout_s
        )

    def confirms_commands(self, unit: str) -> bool:
        """Whether ``unit`` reports each command's outcome (``confirms_commands``)."""
        record = self._operations.units.get(unit)
        return record is not None and record.confirms

    # -- S2: leases (CoordinationLoops) -------------------------------------------------

    def acquire_lease(self, resource: str, ttl_s: float | None = None) -> LeaseMap:
        """Claim ``resource`` mesh-wide; returns the delta (also given to ``on_lease_delta``).

        Raises :class:`LeaseHeldError` when a live lease of another node is known.
        """
        return self._coordination.acquire_lease(resource, ttl_s)

    def merge_leases(self, delta: LeaseMap) -> None:
        """Merge a lease delta or state received from the mesh."""
        self._coordination.merge_leases(delta)

    def lease_holder(self, resource: str) -> str | None:
        """The node holding a live lease on ``resource``, or None."""
        return self._coordination.lease_holder(resource)

    # -- S3: breakers (ControlLoops) ----------------------------------------------------

    def breaker(self, name: str) -> CircuitBreaker:
        """The S3 circuit breaker of external dependency ``name`` (created on first use).

        Call :meth:`breaker_failure` / ``breaker(name).success()`` around calls.
        """
        return self._control.breaker(name)

    def breaker_failure(self, name: str) -> bool:
        """Record a failure of dependency ``name``; True when it opened the breaker (with pain)."""
        return self._control.breaker_failure(name)

    # -- S4: the mesh view (IntelligenceLoops) ------------------------------------------

    def update_peer(self, report: PeerReport) -> None:
        """Feed the S4 mesh view from replicated state (the gossip layer calls this)."""
        self._intelligence.update_peer(report)

    def peer_clock(self, peer: str, sent_ms: int, received_ms: int) -> None:
        """A message of ``peer`` received live (the mesh calls this for each):
        its envelope's HLC wall time and our wall clock at receipt, in ms. S4's
        clock-skew pattern comes from these alone (:class:`.patterns.ClockSkewDetector`)."""
        self._intelligence.peer_clock(peer, sent_ms, received_ms)

    def local_report(self) -> PeerReport:
        """What this node replicates about itself for its peers' mesh views."""
        return self._intelligence.local_report()

    # -- S5: policy (PolicyLoops) -------------------------------------------------------

    def accept_policy(self, document: bytes, *, raise_errors: bool = True) -> bool:
        """Install an admin-signed policy document; PolicyError (counted) when refused."""
        return self._policy.accept_policy(document, raise_errors=raise_errors)

    # -- the algedonic channel (Alarms) -------------------------------------------------

    def raise_signal(
        self, source: str, intensity: float, reason: str = "", *, valence: str = PAIN
    ) -> Alarm | None:
        """Raise a local algedonic signal; its alarm when delivered, None when adapted or folded.

        Raises :class:`SignalError` for an intensity outside [0, 1] or a bad source.
        """
        return self._alarms.raise_signal(source, intensity, reason, valence=valence)

    def inject_remote_signal(self, sig: Signal) -> Alarm | None:
        """A signal received from a peer (already verified by the transport): to S5, never
        re-broadcast. None when refused (clock too far ahead), duplicated, adapted or folded."""
        return self._alarms.inject_remote_signal(sig)

    def ack_alarm(self, alarm_id: str) -> AlarmEntry | None:
        """Acknowledge an alarm mesh-wide (by id or a unique prefix); None if unknown.
        ``await alarms.persist_now()`` makes it durable."""
        return self._alarms.ack_alarm(alarm_id)

    def clear_pain(self, source: str, reason: str = "") -> int:
        """The condition behind ``source``'s pain is over: clear this node's
        active pain alarms from ``source`` mesh-wide and, if there were any,
        raise a pleasure signal (intensity 0.3, good news) saying why. Returns
        how many were cleared."""
        return self._alarms.clear_pain(source, reason)

    # -- status -----------------------------------------------------------------------------

    def status(self) -> VsmStatus:
        """The node's status now: the VSM and the added sections (``status().to_json()``
        is the document of ``vsm-edge status --json``; see :mod:`.status`)."""
        return build_status(self, trio.current_time(), self._status_sections)


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


def _event_bus(config: BusConfig, hlc: HybridLogicalClock) -> EventBus:
    """The bus with one channel per subsystem, each subscribed to the kinds it handles."""
    bus = EventBus(
        hlc,
        {
            s: Channel(
                str(s),
                capacity=c.capacity,
                window_s=c.window_ms / 1000.0,
                overflow=c.overflow,
                # at most half the capacity waits in the window: past that the
                # window shrinks (order kept) before anything is dropped
                window_capacity=max(1, c.capacity // 2),
                dedup_capacity=config.dedup_capacity,
                bypass_intensity=config.bypass_intensity,
            )
            for s, c in config.channels.items()
        },
    )
    bus.subscribe(Subsystem.S1, ["command"])
    bus.subscribe(Subsystem.S2, ["command"])
    bus.subscribe(Subsystem.S3, ["response"])
    bus.subscribe(Subsystem.S4, ["reading", "aggregate"])
    bus.subscribe(Subsystem.S5, ["anomaly", "pattern", "audit", "policy"])
    bus.subscribe(Subsystem.ALGEDONIC, ["signal"])
    return bus


def _load_units(
    configured: Iterable[UnitConfig], made: Mapping[str, Unit], plugin_dirs: Sequence[Path]
) -> dict[str, PendingUnit]:
    """The units of the config, loaded (``module:attribute`` kinds found in
    ``plugin_dirs`` too), then those built in code.

    Raises :class:`UnitError` for a unit that cannot be loaded or a name used twice.
    """
    pending = {
        uc.name: PendingUnit(
            uc.kind, load_unit(uc.name, uc.kind, uc.options, plugin_dirs=plugin_dirs), uc.options
        )
        for uc in configured
    }
    for name, unit in made.items():
        if name in pending:
            raise UnitError(f"unit {name!r} is defined twice")
        pending[name] = PendingUnit("code", unit, {})
    return pending


# -- the status of a runtime (the types are in status.py) -------------------------------


def build_status(
    rt: Runtime, now: float, sections: Mapping[str, Callable[[], StatusSection]]
) -> VsmStatus:
    """The status of ``rt`` at ``now`` (Trio time), with each section ``provider()`` gives.

    A provider that raises gives a :class:`SectionError` (a broken section
    must not break the status).
    """
    bus = rt.bus.statistics()
    channels = dict(bus.channels)
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


def _unit(rt: Runtime, r: UnitRecord) -> UnitStatus:
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
    core, part = rt.algedonic, rt.alarms
    ledger = part.ledger
    wall = rt.wall_clock()
    newest = sorted(ledger.alarms(), key=lambda e: e.signal.hlc if e.signal else 0, reverse=True)
    return AlgedonicStatus(
        alarms=tuple(_alarm_status(rt, e, wall) for e in newest[:64]),
        active=sum(1 for _ in ledger.active()),
        critical=tuple(e.id for e in ledger.critical_active()),
        events=tuple(_event_status(rt, s, wall) for s in reversed(part.events))[:16],
        ledger={
            "alarms": len(ledger.entries),
            "refused": ledger.refused,
            "forgotten": ledger.forgotten,
            "pending_writes": ledger.pending_writes,
        },
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


def _alarm_status(rt: Runtime, entry: AlarmEntry, wall_ms: int) -> AlarmStatus:
    sig = entry.signal
    assert sig is not None
    local = rt.algedonic.alarms.get(entry.id)
    acked, cleared = entry.acked, entry.cleared
    return AlarmStatus(
        id=sig.id,
        node=sig.node,
        source=sig.source,
        intensity=sig.intensity,
        valence=sig.valence,
        reason=sig.reason,
        critical=entry.critical,
        remote=sig.node != rt.node,
        age_s=round(max(0, wall_ms - sig.hlc.wall) / 1000.0, 3),
        acked=entry.settled is not None,
        escalated=sig.escalated or (local is not None and local.escalated_at is not None),
        folded=0 if local is None else local.folded,
        state=entry.state,
        acked_by=None if acked is None else acked.node,
        acked_at_ms=None if acked is None else acked.wall,
        cleared_by=None if cleared is None else cleared.node,
        cleared_at_ms=None if cleared is None else cleared.wall,
    )


def _event_status(rt: Runtime, sig: Signal, wall_ms: int) -> AlarmStatus:
    return AlarmStatus(
        id=sig.id,
        node=sig.node,
        source=sig.source,
        intensity=sig.intensity,
        valence=sig.valence,
        reason=sig.reason,
        critical=False,
        remote=sig.node != rt.node,
        age_s=round(max(0, wall_ms - sig.hlc.wall) / 1000.0, 3),
        acked=False,
        escalated=False,
        folded=0,
        state="event",
    )
