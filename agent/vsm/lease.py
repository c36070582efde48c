"""A lease CRDT: mesh-wide claims on shared resources with HLC expiry.

Theory of operation
-------------------
State is a map ``resource -> Lease(holder, granted, expires_ms)``. ``granted``
is the HLC stamp of the acquire (or release); merge keeps, per resource, the
lease with the greatest ``granted`` stamp (last writer wins, ties impossible
because stamps carry the node id). Merge is therefore a per-key max: pure,
commutative, associative and idempotent.

A lease is *held* at HLC wall time ``t`` when ``t < expires_ms``. A release is a
lease whose ``expires_ms`` equals its grant time. Acquiring checks the local
replica; two nodes that acquire concurrently without having seen each other
both believe they hold it until they merge, after which both agree on the one
with the greater stamp. So leases give eventual exclusivity, not linearizable
mutual exclusion: the holder should re-check :meth:`LeaseMap.holder` after a
round of gossip before a long or irreversible action.

The map itself does not travel: the node<->mesh seam replicates each lease as
an LWW register of the mesh document and merges a lease heard there in as a
one-entry map.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass

from vsm_edge.sync import Timestamp

__all__ = ["Lease", "LeaseHeldError", "LeaseMap"]

_NAME = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


class LeaseHeldError(Exception):
    """The resource is held by another node until ``expires_ms``."""

    def __init__(self, resource: str, holder: str, expires_ms: int) -> None:
        self.resource = resource
        self.holder = holder
        self.expires_ms = expires_ms
        super().__init__(f"{resource} is held by {holder} until HLC wall {expires_ms} ms")


@dataclass(frozen=True, slots=True, order=True)
class Lease:
    granted: Timestamp
    holder: str
    expires_ms: int

    def held_at(self, wall_ms: int) -> bool:
        return wall_ms < self.expires_ms


class LeaseMap:
    """An immutable lease map; mutators return deltas, merge returns a new map."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, Lease] | None = None) -> None:
        self._entries: Mapping[str, Lease] = types.MappingProxyType(dict(entries or {}))

    @property
    def entries(self) -> Mapping[str, Lease]:
        return self._entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LeaseMap) and dict(self._entries) == dict(other._entries)

    def __hash__(self) -> int:
        return hash(frozenset(self._entries.items()))

    def __repr__(self) -> str:
        return f"LeaseMap({dict(self._entries)!r})"

    # -- queries --------------------------------------------------------------

    def holder(self, resource: str, now: Timestamp) -> str | None:
        lease = self._entries.get(resource)
        if lease is None or not lease.held_at(now.wall):
            return None
        return lease.holder

    # -- mutators (return deltas) ----------------------------------------------

    def acquire(self, resource: str, holder: str, now: Timestamp, ttl_ms: int) -> LeaseMap:
        """A delta granting ``resource`` to ``holder`` for ``ttl_ms`` from ``now`` (also renews).

        Raises :class:`LeaseHeldError` when another holder's lease is live at ``now``.
        """
        if not _NAME.match(resource):
            raise ValueError(f"invalid resource name {resource!r}")
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be > 0")
        current = self._entries.get(resource)
        if current is not None and current.holder != holder and current.held_at(now.wall):
            raise LeaseHeldError(resource, current.holder, current.expires_ms)
        if current is not None and now <= current.granted:
            raise ValueError("acquire stamp must be newer than the current lease")
        return LeaseMap({resource: Lease(now, holder, now.wall + ttl_ms)})

    def release(self, resource: str, holder: str, now: Timestamp) -> LeaseMap:
        """A delta releasing ``resource`` (empty when ``holder`` does not hold it)."""
        current = self._entries.get(resource)
        if current is None or current.holder != holder or now <= current.granted:
            return LeaseMap()
        return LeaseMap({resource: Lease(now, holder, now.wall)})

    # -- join --------------------------------------------------------------------

    def merge(self, other: LeaseMap) -> LeaseMap:
        merged = dict(self._entries)
        for resource, lease in other._entries.items():
            mine = merged.get(resource)
            # leases are totally ordered (stamp first), so the max is a join
            if mine is None or lease > mine:
                merged[resource] = lease
        return LeaseMap(merged)
