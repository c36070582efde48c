"""Our own dot counters across restarts: a dot is never minted twice.

Theory of operation
-------------------
A dot ``(node, n)`` names one update of one replica, and every replica takes
two updates with the same dot to be the same update: a join keeps one. A
replica that mints a dot again with other content *forks* it: the peers that
hold the old content never take the new one, and the mesh diverges without
anyone noticing. A replica mints ``1 + `` the highest counter of its own in its
state, and restarts from its store, so a store that lost its tail (a power
loss under ``synchronous=NORMAL``, a disk that acknowledged a flush it did not
do, an old ``node.db`` restored from a backup, a wiped data directory) would
mint the lost counters again. Two rules prevent that:

1. **Reservation ahead** (works with no peer at all). A counter is used only
   below a durable reservation (:meth:`Store.reserve_seqs`): when a commit
   uses a counter within ``RESERVE_AHEAD / 2`` of the reservation, the same
   commit raises it to that counter ``+ RESERVE_AHEAD`` (fsynced even under
   ``NORMAL``). After a restart the replica mints only above the
   reservation. The reservation is written well before the counters it
   covers are used, so a store that loses its most recent writes still holds
   one above every counter it published.
2. **Learning from the mesh** (covers a wiped store or an old backup, whose
   reservation is lost or old). Every peer's digest holds the highest counter
   of ours that it has seen. Before its first mint after a start, the
   replica waits, bounded, for the digests of the peers that are online and
   for anti-entropy to bring back what they hold of ours (our lost updates are
   ordinary deltas of our origin), then mints above the highest counter any
   of them claimed.

A claim is accepted only up to :data:`MAX_DOT_JUMP` above what the replica
knows of itself (its highest counter and its reservation): a malicious member
cannot push our next counter near 2**63 and exhaust the counters. (So a wiped
store learns at most ``MAX_DOT_JUMP`` counters back from the mesh.)

Counters above every claim and the replica's own highest counter, up to the
reservation, were never published: the first commit after the start *skips*
them with a context-only delta (:meth:`CausalCRDT.skip`), so that peers'
causal readiness never waits for them. Counters a peer claims but has not
sent back stay open (no skip): that peer holds them, and repairs carry them.

Nothing here does I/O: the replicator feeds in counters and digests.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ._context import MAX_COUNTER, CausalContext
from ._errors import MalformedError

__all__ = [
    "MAX_DOT_JUMP",
    "RESERVE_AHEAD",
    "DotClaim",
    "OwnDots",
    "claimed_counter",
    "plan_claim",
    "reservation_after",
]

MAX_DOT_JUMP: Final = 1 << 40
"""The most a peer may move a node's highest counter past what a replica knows
of it: a claim of ours at start-up (here), or any delta (the dot rules,
``CrdtDocument.admit``). 35 years of 1,000 writes a second, so that a wiped
store of a long-lived node learns all its counters back, and 2**23 times
below the counter limit, so that no member can exhaust a node's counters."""

RESERVE_AHEAD: Final = 1024
"""Counters reserved ahead of use; one reservation write per ~RESERVE_AHEAD/2 counters."""


def reservation_after(last: int, reserved: int) -> int | None:
    """The reservation a commit using counters up to ``last`` must write, or None.

    None while ``last`` stays more than ``RESERVE_AHEAD // 2`` below
    ``reserved``; else ``last + RESERVE_AHEAD`` (capped at the largest counter).
    """
    if last <= reserved - RESERVE_AHEAD // 2:
        return None
    return min(last + RESERVE_AHEAD, MAX_COUNTER)


def claimed_counter(node: str, digest: Any) -> int | None:
    """Our highest counter in a peer's causal-context digest (parsed, or its
    CBOR value); None if it is malformed."""
    if digest is None:
        return None
    if isinstance(digest, CausalContext):
        return digest.max(node)
    try:
        return CausalContext.from_cbor(digest).max(node)
    except MalformedError:
        return None


@dataclass(frozen=True, slots=True)
class DotClaim:
    """What a replica does before its first mint after a start.

    Mint above ``floor``; first commit the skip of counters ``skip[0]..skip[1]``
    (None: nothing to skip). ``learned`` is the highest counter accepted
    from the peers (0: none), ``refused`` the peers whose claim broke
    :data:`MAX_DOT_JUMP`.
    """

    floor: int
    skip: tuple[int, int] | None
    learned: int
    refused: tuple[str, ...]


def plan_claim(*, own: int, reserved: int, claims: Mapping[str, int]) -> DotClaim:
    """Decide the first counter after a start (see the module docstring).

    ``own`` is the replica's highest counter in its state now (after recovery
    and whatever anti-entropy brought back), ``reserved`` its stored
    reservation, ``claims`` each online peer's highest counter of ours.
    """
    known = max(own, reserved)
    accepted = {peer: c for peer, c in claims.items() if c <= known + MAX_DOT_JUMP}
    refused = tuple(sorted(peer for peer in claims if peer not in accepted))
    learned = max(accepted.values(), default=0)
    held = max(own, learned)  # someone holds every counter up to here
    skip = (held + 1, reserved) if reserved > held else None
    return DotClaim(floor=max(known, learned), skip=skip, learned=learned, refused=refused)


class OwnDots:
    """Our own counters in the CRDT documents of one replica (module docstring).

    The replicator's bookkeeping, without I/O: the stored ``reserved``
    counters, the ``floor`` to mint above and the skip the first commit
    carries (set by :meth:`claim`), and the local deltas minted but not
    committed yet (*in flight*: the next mint must see them, digests and
    repairs must not).
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self.reserved: dict[str, int] = {}
        self.floor: dict[str, int] = {}
        self.claimed = False
        self._skips: dict[str, tuple[int, int]] = {}
        self._inflight: dict[str, list[Any]] = {}
        # (the state it was made from, that state joined with the first n
        # deltas in flight, n): a burst of concurrent mints costs one join
        # each, and a lone mint none.
        self._base: dict[str, tuple[Any, Any, int]] = {}

    # -- the claim, before the first mint ----------------------------------------

    def claims(
        self, doc: str, peer_digests: Mapping[str, Mapping[str, Any]], online: Collection[str]
    ) -> dict[str, int]:
        """Each online peer's highest counter of ours in ``doc``, from its latest digest."""
        out: dict[str, int] = {}
        for peer in online:
            counter = claimed_counter(self.node, peer_digests.get(peer, {}).get(doc))
            if counter is not None:
                out[peer] = counter
        return out

    def settled(
        self,
        own: Mapping[str, int],
        peer_digests: Mapping[str, Mapping[str, Any]],
        online: Collection[str],
    ) -> bool:
        """True once every online peer's digest of every document in ``own`` (our
        highest counter there now) is in, and what they hold of ours is back."""
        for doc, counter in own.items():
            if any(doc not in peer_digests.get(peer, {}) for peer in online):
                return False
            plan = plan_claim(
                own=counter, reserved=self.reserved.get(doc, 0),
                claims=self.claims(doc, peer_digests, online),
            )  # fmt: skip
            if counter < plan.learned:
                return False
        return True

    def claim(
        self,
        own: Mapping[str, int],
        peer_digests: Mapping[str, Mapping[str, Any]],
        online: Collection[str],
    ) -> dict[str, DotClaim]:
        """Fix the floor and the skip of every document in ``own``; writes may begin."""
        plans = {}
        for doc, counter in own.items():
            plan = plan_claim(
                own=counter, reserved=self.reserved.get(doc, 0),
                claims=self.claims(doc, peer_digests, online),
            )  # fmt: skip
            self.floor[doc] = plan.floor
            if plan.skip is not None:
                self._skips[doc] = plan.skip
            plans[doc] = plan
        self.claimed = True
        return plans

    # -- minting ---------------------------------------------------------------------

    def take_skip(self, doc: str) -> tuple[int, int] | None:
        """The counters the next commit of ``doc`` must skip (then no longer pending)."""
        return self._skips.pop(doc, None)

    def keep_skip(self, doc: str, skip: tuple[int, int]) -> None:
        """The skip did not commit: the next commit carries it."""
        self._skips.setdefault(doc, skip)

    def base(self, doc: str, state: Any) -> Any:
        """The value a local mutation of ``doc`` is made against: ``state`` (what is
        committed), the deltas in flight, and the floor."""
        inflight = self._inflight.get(doc)
        if inflight:
            cached = self._base.get(doc)
            joined, n = (cached[1], cached[2]) if cached and cached[0] is state else (state, 0)
            for delta in inflight[n:]:
                joined = joined.merge(delta)
            self._base[doc] = (state, joined, len(inflight))
            state = joined
        floor = self.floor.get(doc, 0)
        if state.context.max(self.node) < floor:
            # Counters up to the floor may be held by a peer that has not sent
            # them back yet: mint above them, without claiming to have them.
            state = state.merge(type(state).skip(self.node, floor, floor))
        return state

    def add_inflight(self, doc: str, delta: Any) -> None:
        self._inflight.setdefault(doc, []).append(delta)

    def committed(self, doc: str, deltas: list[Any], before: Any, after: Any) -> None:
        """``deltas`` committed and joined, in order: the state went from ``before`` to
        ``after``. No longer in flight; the next mint's base is kept when it can be."""
        inflight = self._inflight.get(doc, [])
        cached = self._base.get(doc)
        k = len(deltas)
        self.drop_inflight(doc, deltas)
        if (
            cached is not None
            and cached[0] is before
            and cached[2] >= k
            and all(a is b for a, b in zip(inflight, deltas, strict=False))
        ):
            # cached = before + inflight[:n] = after + inflight[k:n], the new [:n-k]
            self._base[doc] = (after, cached[1], cached[2] - k)

    def drop_inflight(self, doc: str, deltas: Collection[Any]) -> None:
        """``deltas`` (by identity) committed or failed: no longer in flight."""
        self._base.pop(doc, None)
        gone = {id(d) for d in deltas}
        left = [d for d in self._inflight.get(doc, []) if id(d) not in gone]
        if left:
            self._inflight[doc] = left
        else:
            self._inflight.pop(doc, None)

    def reservations(self, used: Iterable[tuple[str, int]]) -> dict[str, int]:
        """The reservations a commit using ``(doc, last counter)`` pairs must write."""
        out: dict[str, int] = {}
        for doc, last in used:
            through = reservation_after(last, max(self.reserved.get(doc, 0), out.get(doc, 0)))
            if through is not None:
                out[doc] = through
        return out

    def reserved_through(self, doc: str, through: int) -> None:
        """A reservation was committed."""
        self.reserved[doc] = max(self.reserved.get(doc, 0), through)
