"""S3's loops: aggregates of attenuated readings, S3* audits of the units, circuit breakers.

S3 takes the regulatory responses from its bus channel (their categories are
S3's variety). While S1 is over budget, S3 folds readings into aggregates
(:meth:`~.s3.Control.fold`, called on S1's hot path); every
``aggregate_interval_s`` they are published as ``aggregate`` events. Every
``audit_interval_s`` the S3* audit probes the units that can be probed (1 s
each, concurrently) and reports each finding (a crashed, failing or silent
unit) as an ``audit`` event, pain and an S1 failure. Circuit breakers guard
the node's external dependencies; opening one raises pain. The arithmetic is
:class:`~.s3.Control`'s; this part carries it out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import trio

from .event import Subsystem
from .kernel import Kernel
from .operations import UnitRecord
from .s3 import CircuitBreaker

__all__ = ["PROBE_TIMEOUT_S", "ControlLoops"]

PROBE_TIMEOUT_S = 1.0


class ControlLoops:
    """S3 at work: its bus loop, the aggregates, the S3* audit and the breakers.

    ``units`` is S1's table of unit records, read by the audit.
    """

    def __init__(
        self,
        kernel: Kernel,
        units: Mapping[str, UnitRecord],
        *,
        aggregate_interval_s: float,
        audit_interval_s: float,
    ) -> None:
        self._kernel = kernel
        self._units = units
        self._aggregate_interval_s = aggregate_interval_s
        self._audit_interval_s = audit_interval_s

    async def subsystem(self, nursery: trio.Nursery) -> None:
        self._kernel.supervise(nursery, "s3.bus", "s3", self._s3_loop)
        self._kernel.supervise(nursery, "s3.aggregate", "s3", self._aggregate_loop)
        self._kernel.supervise(nursery, "s3.audit", "s3", self._audit_loop)

    def breaker(self, name: str) -> CircuitBreaker:
        """The S3 circuit breaker of external dependency ``name`` (created on first use).

        Call :meth:`breaker_failure` / ``breaker(name).success()`` around calls.
        """
        return self._kernel.s3.breaker(name)

    def breaker_failure(self, name: str) -> bool:
        """Record a failure of dependency ``name``; True when it opened the breaker (with pain)."""
        k = self._kernel
        opened = k.s3.breaker(name).failure(trio.current_time())
        if opened:
            k.response("breaker", name)
            k.raise_signal(f"s3.breaker.{name}", 0.7, f"circuit breaker for {name} opened")
            k.failure(Subsystem.S3, f"breaker {name} opened")
        return opened

    async def _s3_loop(self) -> None:
        channel = self._kernel.bus.channels[Subsystem.S3]
        meter = self._kernel.s4.variety[Subsystem.S3]
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                meter.add(event.category, now)

    async def _aggregate_loop(self) -> None:
        k = self._kernel
        interval = self._aggregate_interval_s
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for agg in k.s3.flush(now):
                k.response("aggregate", f"{agg.source}.{agg.name}")
                k.publish(
                    k.bus.event(
                        "aggregate",
                        agg.source,
                        agg.name,
                        agg.mean,
                        category=f"{agg.source}.{agg.name}:aggregate",
                        attrs=(("count", agg.count), ("max", agg.maximum), ("min", agg.minimum)),
                    )
                )

    async def _audit_loop(self) -> None:
        interval = self._audit_interval_s
        while True:
            await trio.sleep(interval)
            probes = await self._probe_all()
            self._audit(trio.current_time(), probes)

    async def _probe_all(self) -> dict[str, bool]:
        probes: dict[str, bool] = {}
        async with trio.open_nursery() as nursery:
            for name, record in self._units.items():
                probe = getattr(record.unit, "probe", None)
                if probe is not None:
                    nursery.start_soon(self._probe, name, probe, probes)
        return probes

    def _audit(self, now: float, probes: dict[str, bool]) -> None:
        k = self._kernel
        tasks = k.supervisor.tasks
        units = self._units
        states = {n: tasks[n].state for n in units if n in tasks}
        readers = [n for n, r in units.items() if any(s.period_s for s in r.specs.values())]
        for finding in k.s3.audit(now, states, probes, readers):
            k.response("audit", finding.unit)
            k.publish(
                k.bus.event(
                    "audit", "s3", finding.unit, finding.problem, category=f"audit:{finding.unit}"
                )
            )
            k.raise_signal(f"s3.audit.{finding.unit}", 0.5, finding.problem)
            k.failure(Subsystem.S1, f"audit: {finding.unit} {finding.problem}")

    async def _probe(
        self, name: str, probe: Callable[[], Awaitable[bool]], out: dict[str, bool]
    ) -> None:
        with trio.move_on_after(PROBE_TIMEOUT_S):
            try:
                out[name] = bool(await probe())
            except Exception:  # a probe that raises is a failed probe
                out[name] = False
            return
        out[name] = False
