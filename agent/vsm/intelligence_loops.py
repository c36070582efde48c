"""S4's loops: anomalies in the readings, the variety ratio over time, and the mesh view.

S4 takes every admitted reading (and S3's aggregates) from its bus channel in
large batches: each category counts toward the environment's variety, and
each numeric value goes through the EWMA/z-score anomaly detector; an anomaly
is published (high priority) for S5. Every ``evaluate_interval_s`` the variety
ratio is checked for the overflow patterns. From the mesh, :meth:`update_peer`
feeds the peer table (a peer whose last report is old is "stale" there);
:meth:`peer_clock` measures a peer's clock skew from a message received live
(never from a report's stamp: that is its age); :meth:`local_report` is what
this node replicates about itself. The arithmetic is
:class:`~.s4.Intelligence`'s; this part carries it out.
"""

from __future__ import annotations

import trio

from .alarm_ledger import AlarmLedger
from .event import HIGH, Subsystem
from .kernel import Kernel
from .patterns import ClockSkewDetector, VarietyOverflowDetector
from .s4 import Anomaly, MeshView, PeerReport
from .s5 import Identity

__all__ = ["IntelligenceLoops"]


class IntelligenceLoops:
    """S4 at work: its bus loop, the overflow evaluation, and the mesh view's seams.

    ``overflow`` is evaluated every ``evaluate_interval_s``; ``skew`` takes
    the stamps of live messages (:meth:`peer_clock`); ``alarms`` (the alarm
    ledger) is read for this node's active alarms.
    """

    def __init__(
        self,
        kernel: Kernel,
        *,
        evaluate_interval_s: float,
        overflow: VarietyOverflowDetector,
        identity: Identity,
        mesh_view: MeshView,
        skew: ClockSkewDetector,
        alarms: AlarmLedger,
    ) -> None:
        self._kernel = kernel
        self._evaluate_interval_s = evaluate_interval_s
        self._overflow = overflow
        self._identity = identity
        self._mesh_view = mesh_view
        self._skew = skew
        self._alarms = alarms

    async def subsystem(self, nursery: trio.Nursery) -> None:
        self._kernel.supervise(nursery, "s4.bus", "s4", self._s4_loop)
        self._kernel.supervise(nursery, "s4.evaluate", "s4", self._evaluate_loop)

    def update_peer(self, report: PeerReport) -> None:
        """Feed the S4 mesh view from replicated state (the gossip layer calls this).

        The report may be old (read back after a restart, relayed by another
        peer): its stamp is not checked against our clock.
        """
        self._mesh_view.update(report, trio.current_time())

    def peer_clock(self, peer: str, sent_ms: int, received_ms: int) -> None:
        """A message of ``peer`` received live: its envelope's HLC wall time and
        our wall clock at receipt (ms); a clock-skew pattern when they are too far apart."""
        skew = self._skew.observe(peer, sent_ms, received_ms, trio.current_time())
        if skew is not None:
            self._kernel.pattern(skew)

    def local_report(self) -> PeerReport:
        """What this node replicates about itself for its peers' mesh views."""
        k = self._kernel
        now = trio.current_time()
        node = self._identity.node
        active = sorted(
            (e.signal for e in self._alarms.active() if e.signal and e.signal.node == node),
            key=lambda s: s.hlc,
        )
        worst = max((s.intensity for s in active), default=0.0)
        return PeerReport(
            self._identity.node,
            self._identity.zone,
            k.hlc.now().wall,
            round(1.0 - worst, 4),
            k.s5.safe_mode,
            round(k.s4.ratio(now), 4),
            tuple(s.id for s in active)[-256:],
        )

    async def _s4_loop(self) -> None:
        channel = self._kernel.bus.channels[Subsystem.S4]
        s4 = self._kernel.s4
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
        k = self._kernel
        k.s4.note_anomaly(anomaly)
        k.publish(
            k.bus.event(
                "anomaly",
                "s4",
                anomaly.name,
                anomaly.z,
                category=f"anomaly:{anomaly.key}",
                priority=HIGH,
            )
        )

    async def _evaluate_loop(self) -> None:
        interval = self._evaluate_interval_s
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            s4 = self._kernel.s4
            ratio = s4.ratio(now)
            found = self._overflow.evaluate(
                ratio, s4.environment.entropy(now), s4.system_variety(now), now
            )
            if found is not None:
                self._kernel.pattern(found)
                if found.name == "variety-overflow":
                    self._kernel.failure(Subsystem.S4, "variety overflow")
