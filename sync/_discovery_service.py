"""The Trio side of discovery: the event pump and timers shared by every
implementation, and :class:`MemoryDiscovery`, the in-memory fake.

The fake runs the same :class:`~vsm_edge.sync._discovery.PeerTable` as the
mDNS adapter, on Trio's clock (so ``MockClock`` tests are exact), over a
:class:`MemoryDiscoveryNetwork` that models one multicast domain: a query
reaches every reachable node, every answer reaches every reachable node, and
a cut node hears and is heard by no one.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import trio

from ._discovery import (
    Advertisement,
    BrokerCandidate,
    DiscoveryStatistics,
    DiscoveryTiming,
    Peer,
    PeerEvent,
    PeerTable,
    choose_broker,
)
from ._errors import DiscoveryError

__all__ = ["MemoryDiscovery", "MemoryDiscoveryNetwork"]


class _TableService:
    """A PeerTable driven by Trio: jittered ticks, and events pumped to a bounded channel."""

    def __init__(
        self,
        advertisement: Advertisement,
        *,
        timing: DiscoveryTiming | None,
        event_buffer: int,
        rng: random.Random | None,
    ) -> None:
        if event_buffer < 1:
            raise ValueError("event_buffer must be at least 1")
        self.advertisement = advertisement
        self.timing = timing or DiscoveryTiming()
        self._table = PeerTable(advertisement, self.timing)
        self._send, self._receive = trio.open_memory_channel[PeerEvent](event_buffer)
        self._changed = trio.Event()
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not secrets
        self._started = False

    @property
    def events(self) -> trio.MemoryReceiveChannel[PeerEvent]:
        return self._receive

    def peers(self) -> Mapping[str, Peer]:
        return self._table.peers()

    def statistics(self) -> DiscoveryStatistics:
        return self._table.statistics()

    def _claim_run(self) -> None:
        if self._started:
            raise RuntimeError("run() can be called only once")
        self._started = True

    def _notify(self) -> None:
        self._changed.set()

    async def _pump_events(self) -> None:
        while True:
            event = self._table.next_event()
            if event is None:
                await self._changed.wait()
                self._changed = trio.Event()
                continue
            await self._send.send(event)

    async def _tick_forever(self) -> None:
        interval = self.timing.refresh_interval
        while True:
            await trio.sleep(interval * self._rng.uniform(0.8, 1.2))
            result = self._table.tick(trio.current_time())
            if result.gone:
                self._notify()
            if result.query:
                await self._query()

    async def _query(self) -> None:
        raise NotImplementedError


class MemoryDiscoveryNetwork:
    """One simulated multicast domain for :class:`MemoryDiscovery` nodes."""

    def __init__(self) -> None:
        self._members: dict[str, MemoryDiscovery] = {}
        self._cut: set[str] = set()
        self._brokers: dict[str, BrokerCandidate] = {}
        self.brokers_changed = trio.Event()

    def cut(self, node: str) -> None:
        """``node`` hears and is heard by no one until :meth:`heal`."""
        self._cut.add(node)

    def heal(self, node: str) -> None:
        self._cut.discard(node)

    def advertise_broker(self, candidate: BrokerCandidate) -> None:
        self._brokers[candidate.instance] = candidate
        self.brokers_changed.set()
        self.brokers_changed = trio.Event()

    def withdraw_broker(self, instance: str) -> None:
        self._brokers.pop(instance, None)

    def brokers(self) -> list[BrokerCandidate]:
        return list(self._brokers.values())

    def _reachable(self, node: str) -> list[MemoryDiscovery]:
        if node in self._cut:
            return []
        return [m for n, m in self._members.items() if n != node and n not in self._cut]

    def _join(self, member: MemoryDiscovery) -> None:
        node = member.advertisement.node
        if node in self._members:
            raise DiscoveryError(f"node {node!r} is already advertised on this network")
        self._members[node] = member
        for other in self._reachable(node):  # the announcement
            other._hear(member.record)

    def _leave(self, member: MemoryDiscovery) -> None:
        node = member.advertisement.node
        for other in self._reachable(node):  # the goodbye
            other._goodbye(member.record.instance)
        self._members.pop(node, None)

    def _query(self, asker: MemoryDiscovery) -> None:
        node = asker.advertisement.node
        responders = self._reachable(node)
        listeners = [*responders, asker]
        for responder in responders:  # multicast answers: every reachable node hears them
            for listener in listeners:
                if listener is not responder:
                    listener._hear(responder.record)


class MemoryDiscovery(_TableService):
    """An in-memory :class:`~vsm_edge.sync.Discovery` for tests of its callers."""

    def __init__(
        self,
        network: MemoryDiscoveryNetwork,
        advertisement: Advertisement,
        *,
        addresses: tuple[str, ...] = ("127.0.0.1",),
        port: int = 0,
        timing: DiscoveryTiming | None = None,
        event_buffer: int = 64,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(advertisement, timing=timing, event_buffer=event_buffer, rng=rng)
        self.network = network
        self.record = Peer(advertisement, addresses, port, advertisement.service_name)

    def _hear(self, peer: Peer) -> None:
        self._table.heard(peer, trio.current_time())
        self._notify()

    def _goodbye(self, instance: str) -> None:
        self._table.goodbye(instance, trio.current_time())
        self._notify()

    async def _query(self) -> None:
        self.network._query(self)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._claim_run()
        self.network._join(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump_events)
                nursery.start_soon(self._tick_forever)
                self._table.tick(trio.current_time())
                self.network._query(self)  # the start-up query
                task_status.started()
        finally:
            self.network._leave(self)
            self._send.close()

    async def find_broker(self) -> str:
        if not self._started:
            raise DiscoveryError("discovery is not running: start run() first")
        while True:
            best = choose_broker(self.network.brokers(), self.advertisement.mesh)
            if best is not None:
                return best.url
            await self.network.brokers_changed.wait()
