"""S2's loop and the mesh-wide leases.

S2 takes the commands delivered to S1 from its bus channel; each counts toward
S2's variety as damped or free (whether S2 is damping its target). The damping
itself happens on the command path (:meth:`~.s2.Coordination.command`, called
by :class:`~.operations.Operations`). Leases are S2's mesh-wide coordination:
:class:`~.lease.LeaseMap` is a CRDT, so a claim is a delta handed to the
``on_lease_delta`` callbacks (the gossip layer) and a delta from the mesh is
merged.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .event import Subsystem
from .kernel import Kernel
from .lease import LeaseMap

__all__ = ["CoordinationLoops"]


class CoordinationLoops:
    """S2 at work: its bus loop and the lease CRDT (``leases``, replaced on each merge).

    ``node`` holds the leases this node claims, for ``lease_ttl_s`` unless told otherwise.
    """

    def __init__(self, kernel: Kernel, node: str, *, lease_ttl_s: float) -> None:
        self._kernel = kernel
        self._node = node
        self._lease_ttl_s = lease_ttl_s
        self.leases = LeaseMap()
        self.on_lease_delta: list[Callable[[LeaseMap], None]] = []

    async def subsystem(self, nursery: trio.Nursery) -> None:
        self._kernel.supervise(nursery, "s2.bus", "s2", self._s2_loop)

    def acquire_lease(self, resource: str, ttl_s: float | None = None) -> LeaseMap:
        """Claim ``resource`` mesh-wide; returns the delta (also given to ``on_lease_delta``).

        Raises :class:`LeaseHeldError` when a live lease of another node is known.
        """
        ttl_ms = int(1000 * (ttl_s if ttl_s is not None else self._lease_ttl_s))
        delta = self.leases.acquire(resource, self._node, self._kernel.hlc.now(), ttl_ms)
        self.leases = self.leases.merge(delta)
        for callback in self.on_lease_delta:
            callback(delta)
        return delta

    def merge_leases(self, delta: LeaseMap) -> None:
        """Merge a lease delta or state received from the mesh."""
        self.leases = self.leases.merge(delta)

    def lease_holder(self, resource: str) -> str | None:
        """The node holding a live lease on ``resource``, or None."""
        return self.leases.holder(resource, self._kernel.hlc.now())

    async def _s2_loop(self) -> None:
        channel = self._kernel.bus.channels[Subsystem.S2]
        meter = self._kernel.s4.variety[Subsystem.S2]
        s2 = self._kernel.s2
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                damped = s2.is_damped(str(event.name), now)
                meter.add(f"{event.category}:{'damped' if damped else 'free'}", now)
