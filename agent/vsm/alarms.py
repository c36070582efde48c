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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from vsm_edge.sync import ClockDriftError

from .algedonic import PAIN, PLEASURE, Alarm, AlgedonicCore, AlgedonicPort, Signal, escalated
from .event import HIGH, Event, Subsystem
from .kernel import Kernel
from .patterns import Pattern

__all__ = ["Alarms"]


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
    ) -> None:
        self._kernel = kernel
        self._node = core.node
        self._evaluate_safe_mode = evaluate_safe_mode
        self.core = core
        self.port = port
        self.latencies: deque[float] = deque(maxlen=4096)  # raised -> heard by S5 (s)
        self.s5_heard: deque[tuple[float, Signal]] = deque(maxlen=256)
        self._wakeup = trio.lowlevel.ParkingLot()

    async def subsystem(self, nursery: trio.Nursery) -> None:
        self._kernel.supervise(nursery, "algedonic.s5", "algedonic", self._s5_line)
        self._kernel.supervise(nursery, "algedonic.escalation", "algedonic", self._escalate)

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
        try:
            self._kernel.hlc.update(sig.hlc)
        except ClockDriftError:
            return None
        return self._offer(sig, now, remote=True)

    def ack_alarm(self, alarm_id: str) -> Alarm | None:
        """Acknowledge an alarm (by id or a unique prefix of 6+ characters); None if unknown."""
        alarm = self.core.ack(alarm_id, trio.current_time())
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
            for a in self.core.active()
            if a.signal.pain and a.signal.source == source and a.signal.node == self._node
        ]
        for alarm_id in ids:
            self.core.ack(alarm_id, now)
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
        if to_mesh:
            self.port.put(sig, alarm.critical)
        if alarm.critical:
            self._wakeup.unpark_all()

    def _update_critical_pain(self) -> None:
        self._kernel.s5.set_critical_pain(self.core.critical_pain())

    async def _escalate(self) -> None:
        while True:
            deadline = self.core.next_escalation()
            with trio.move_on_at(deadline):
                await self._wakeup.park()
            now = trio.current_time()
            for alarm in self.core.due_escalations(now):
                sig = escalated(alarm.signal, self._kernel.hlc.now())
                self._offer(sig, now, remote=False)
