"""The algedonic channel's delivery: signals raised here or heard from peers, on to S5 and the mesh.

:class:`~.algedonic.AlgedonicCore` decides (adaptation, storms, alarms,
escalation); this part carries its decisions out. A delivered signal is
published on the bus as a ``signal`` event of high priority, which only the
algedonic channel takes: S5 hears it there directly, bypassing S2-S4 (the
latency is recorded), and safe mode is evaluated again. A locally raised
signal also goes to ``port`` (the mesh's ``vsm/{mesh}/alg/{node}``); a critical
alarm wakes the escalation loop, which re-sends it once at intensity 1.0 when
nobody acknowledged it within ``escalate_after_s``.
A storm (too many salient signals) is delivered as one storm alarm and
reported as the ``algedonic-storm`` pattern (without pain of its own).

What an alarm *is* (raised, acknowledged, cleared, by whom) is the mesh's
:class:`~.alarm_ledger.AlarmLedger`: a delivered pain signal is entered there
(raised by us, or heard from its origin), acknowledgements and clearings are
our records in it, and records from peers are merged in
(:meth:`Alarms.merge_record`); S5's critical pain is the ledger's, so safe
mode follows the replicated alarm state. A pleasure signal is *good news*: it
reaches S5 like any signal and is listed as a recent event, never as an
alarm. The ledger's upkeep (retention, the bound on our own alarms) runs here
every ``LEDGER_UPKEEP_S``; the mesh writes our changed records
(:meth:`Alarms.take_writes`) and removes our expired ones.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import trio

from vsm_edge.sync import ClockDriftError

from .alarm_ledger import AlarmEntry, AlarmLedger, AlarmRecord
from .algedonic import PAIN, PLEASURE, Alarm, AlgedonicCore, AlgedonicPort, Signal, escalated
from .event import HIGH, Event, Subsystem
from .kernel import Kernel
from .patterns import Pattern

__all__ = ["AlarmLookupError", "Alarms"]

LEDGER_UPKEEP_S = 10.0
MAX_EVENTS = 64  # good news kept for the status


class AlarmLookupError(LookupError):
    """An alarm id prefix that names no alarm (``ambiguous`` False) or several."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        self.prefix = prefix
        self.matches = matches
        self.ambiguous = len(matches) > 1
        what = (
            f"{len(matches)} alarms start with {prefix!r}; give more of the id"
            if self.ambiguous
            else f"no alarm with an id starting {prefix!r}"
        )
        super().__init__(what)


class Alarms:
    """Raise, inject, deliver, escalate and acknowledge algedonic signals.

    ``core`` decides, ``port`` queues the signals for the mesh;
    ``evaluate_safe_mode`` is S5's, called after each batch S5 hears. A
    signal's stamp is when it was raised, not when it arrived (a retained or
    relayed signal is old by design), so it says nothing of the peer's clock:
    S4 measures clock skew from live envelopes
    (:meth:`~.intelligence_loops.IntelligenceLoops.peer_clock`).
    :class:`SignalError` is this part's error (a malformed signal).
    """

    def __init__(
        self,
        kernel: Kernel,
        core: AlgedonicCore,
        port: AlgedonicPort,
        *,
        evaluate_safe_mode: Callable[[], None],
        wall_clock: Callable[[], int],
        retention_s: float,
    ) -> None:
        self._kernel = kernel
        self._node = core.node
        self._evaluate_safe_mode = evaluate_safe_mode
        self._wall_clock = wall_clock
        self.core = core
        self.port = port
        self.ledger = AlarmLedger(
            core.node,
            critical=core.config.critical,
            retention_s=retention_s,
            max_per_writer=core.config.max_alarms,
        )
        self.retention_ms = int(retention_s * 1000)
        self.events: deque[Signal] = deque(maxlen=MAX_EVENTS)  # good news, newest last
        self._removals: set[str] = set()  # our expired records, for the mesh to remove
        # Set by the mesh: makes our changed records durable (awaited before an
        # operator is told "raised" or "acknowledged"); False when the store refused.
        self.persist: Callable[[], Awaitable[bool]] | None = None
        self.latencies: deque[float] = deque(maxlen=4096)  # raised -> heard by S5 (s)
        self.s5_heard: deque[tuple[float, Signal]] = deque(maxlen=256)
        self._wakeup = trio.lowlevel.ParkingLot()

    async def subsystem(self, nursery: trio.Nursery) -> None:
        self._kernel.supervise(nursery, "algedonic.s5", "algedonic", self._s5_line)
        self._kernel.supervise(nursery, "algedonic.escalation", "algedonic", self._escalate)
        self._kernel.supervise(nursery, "algedonic.ledger", "algedonic", self._upkeep)

    def raise_signal(
        self, source: str, intensity: float, reason: str = "", *, valence: str = PAIN
    ) -> Alarm | None:
        """Raise a local algedonic signal; its alarm when delivered, None when adapted or folded.

        Raises :class:`SignalError` for an intensity outside [0, 1] or a bad source.
        """
        now = trio.current_time()
        sig = Signal(
            self._node, source, float(intensity), valence, self._kernel.hlc.now(), reason[:512]
        )
        return self._offer(sig, now, remote=False)

    def inject_remote_signal(self, sig: Signal) -> Alarm | None:
        """A signal received from a peer (already verified by the transport).

        Updates the HLC (a stamp too far ahead is refused), then delivers it
        to S5 like a local one but never re-broadcasts it. Returns the alarm, or None when refused,
        duplicated, adapted or folded.
        """
        now = trio.current_time()
        if self._wall_clock() - sig.hlc.wall > self.retention_ms:
            return None  # e.g. a retained signal of an alarm long forgotten: not news
        try:
            self._kernel.hlc.update(sig.hlc)
        except ClockDriftError:
            return None
        return self._offer(sig, now, remote=True)

    def resolve(self, prefix: str) -> str:
        """The one alarm id ``prefix`` starts; raises :class:`AlarmLookupError`."""
        matches = self.ledger.resolve(prefix)
        if len(matches) != 1:
            raise AlarmLookupError(prefix, sorted(matches)[:8])
        return matches[0]

    def ack_alarm(self, alarm_id: str) -> AlarmEntry | None:
        """Acknowledge an alarm mesh-wide (by id or a unique prefix); None if unknown.

        Our acknowledgement record joins the ledger and goes to the mesh;
        ``await persist()`` makes it durable. Idempotent.
        """
        try:
            alarm_id = self.resolve(alarm_id)
        except AlarmLookupError:
            return None
        entry = self.ledger.acknowledge(alarm_id, self._kernel.hlc.now())
        self._settled(alarm_id)
        return entry

    def clear_alarm(self, alarm_id: str) -> AlarmEntry | None:
        """Clear an alarm mesh-wide (its condition is over); None if unknown."""
        try:
            alarm_id = self.resolve(alarm_id)
        except AlarmLookupError:
            return None
        entry = self.ledger.clear(alarm_id, self._kernel.hlc.now())
        self._settled(alarm_id)
        return entry

    def merge_record(self, writer: str, alarm_id: str, record: AlarmRecord) -> None:
        """A peer's record of an alarm (read from the mesh document by the mesh)."""
        entry = self.ledger.merge(writer, alarm_id, record)
        if entry is not None and entry.settled is not None:
            self._settled(alarm_id)
        elif entry is not None and entry.critical:
            self._update_critical_pain()

    def take_writes(self) -> tuple[list[tuple[str, AlarmRecord]], list[str]]:
        """Our records to write to the mesh, and the ids of our records to remove."""
        removals, self._removals = sorted(self._removals), set()
        return self.ledger.take_dirty(), removals

    async def persist_now(self) -> bool:
        """Make our changed records durable; False when the store refused them (they
        stay pending and are written when it takes writes again). True without a mesh."""
        if self.persist is None:
            await trio.lowlevel.checkpoint()
            return True
        return await self.persist()

    def _settled(self, alarm_id: str) -> None:
        self.core.ack(alarm_id, trio.current_time())  # no escalation of a settled alarm
        self._update_critical_pain()
        self._evaluate_safe_mode()

    def clear_pain(self, source: str, reason: str = "") -> int:
        """The condition behind ``source``'s pain is over: clear this node's
        active pain alarms from ``source`` (mesh-wide) and, if there were any,
        raise a pleasure signal (intensity 0.3, good news) saying why. Returns
        how many were cleared."""
        ids = [
            e.id
            for e in self.ledger.active()
            if e.signal is not None
            and e.signal.source == source
            and e.signal.node == self._node
        ]
        stamp = self._kernel.hlc.now()
        for alarm_id in ids:
            self.ledger.clear(alarm_id, stamp)
            self.core.ack(alarm_id, trio.current_time())
        if ids:
            self._update_critical_pain()
            self.raise_signal(source, 0.3, reason or "recovered", valence=PLEASURE)
        return len(ids)

    async def _s5_line(self) -> None:
        """S5's direct line: signals reach S5 here, bypassing S2-S4."""
        channel = self._kernel.bus.channels[Subsystem.ALGEDONIC]
        s5 = self._kernel.s5
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                alarm = self.core.alarms.get(str(event.value))
                if alarm is None:
                    continue
                self.latencies.append(now - alarm.raised_at)
                self.s5_heard.append((now, alarm.signal))
                if alarm.signal.pain:
                    s5.hear_pain(alarm.signal.intensity, now)
            self._update_critical_pain()
            self._evaluate_safe_mode()

    def _storm_signal(self) -> Signal:
        return Signal(
            self._node,
            "algedonic.storm",
            0.8,
            PAIN,
            self._kernel.hlc.now(),
            f"more than {self.core.config.storm_signals} signals in "
            f"{self.core.config.storm_window_s:g} s",
        )

    def _offer(self, sig: Signal, now: float, *, remote: bool) -> Alarm | None:
        delivery = self.core.offer(sig, now, remote=remote, storm_signal=self._storm_signal)
        if delivery.storm_started is not None:
            self._deliver(delivery.storm_started, to_mesh=True)
            self._kernel.pattern(
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
        self._kernel.publish(
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
        if not sig.pain:
            self.events.append(sig)
        elif sig.node == self._node and not alarm.remote:
            self.ledger.raise_(sig)
        else:
            entry = self.ledger.hear(sig)
            if entry is not None and entry.settled is not None:
                self.core.ack(sig.id, trio.current_time())  # acknowledged mesh-wide already
        if to_mesh:
            self.port.put(sig, alarm.critical)
        if alarm.critical:
            self._update_critical_pain()
            self._wakeup.unpark_all()

    def _update_critical_pain(self) -> None:
        self._kernel.s5.set_critical_pain(self.ledger.critical_pain())

    async def _upkeep(self) -> None:
        """Every ``LEDGER_UPKEEP_S``: the retention rule and the bound on our own alarms."""
        while True:
            await trio.sleep(LEDGER_UPKEEP_S)
            stamp = self._kernel.hlc.now()
            for alarm_id in self.ledger.overflow(stamp):
                self.core.ack(alarm_id, trio.current_time())
            before = self.ledger.critical_pain()
            self._removals.update(self.ledger.expired(self._wall_clock()))
            if self.ledger.critical_pain() != before:
                self._update_critical_pain()

    async def _escalate(self) -> None:
        while True:
            deadline = self.core.next_escalation()
            with trio.move_on_at(deadline):
                await self._wakeup.park()
            now = trio.current_time()
            for alarm in self.core.due_escalations(now):
                if alarm.signal.node != self._node:
                    continue  # a peer's alarm: its origin escalates it
                sig = escalated(alarm.signal, self._kernel.hlc.now())
                self._offer(sig, now, remote=False)
