"""The one protocol every replicated type of vsm_edge.sync implements.

Pure types (counters, registers, sets, maps) are immutable values: every
mutator returns a *delta*, a value of the same type holding only what the
mutation changed, and ``merge`` returns a new value. Apply a local mutation
as ``state = state.merge(delta)`` and ship ``delta`` to peers.

``YDoc`` (pycrdt/Yjs) is the one in-place replica: a Yjs document is a
mutable Rust object that cannot be copied short of re-encoding the whole
document, so ``YDoc.merge`` applies the update in place and returns the same
object. Its deltas (:class:`YUpdate`) are frozen values and merging updates
is pure. Writing ``state = state.merge(delta)`` is correct for both kinds.

Anti-entropy, for every type::

    d = receiver.digest()                 # small, sent to the peer
    delta = sender.delta_since(d)         # what the receiver lacks
    receiver = receiver.merge(delta)      # now covers the sender

Causal readiness: ``delta.is_ready(local_digest)`` tells the gossip layer
whether merging ``delta`` now keeps causal delivery (see each type); merging
a delta that is not ready is still *correct* (convergence does not depend on
it) but leaves gaps in the digest that anti-entropy will fill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

__all__ = ["DeltaCRDT", "Digest"]

D = TypeVar("D", bound="Digest")
Delta = TypeVar("Delta")


class Digest(Protocol):
    """A frozen summary of what a replica has seen (a version vector,
    causal context or Yjs state vector)."""

    def covers(self, other: Self) -> bool:
        """True when this replica has seen everything ``other`` has."""
        ...

    def to_cbor(self) -> Any: ...


class DeltaCRDT(Protocol[D, Delta]):
    """What the gossip layer may rely on. ``D`` is the digest type, ``Delta``
    the delta type (the type itself for every pure CRDT)."""

    def merge(self, other: Delta, /) -> Self:
        """Join a delta (or a full state) and return the joined value."""
        ...

    def digest(self) -> D:
        """A frozen digest of everything merged so far."""
        ...

    def delta_since(self, digest: D, /) -> Delta:
        """The smallest delta that brings a replica with ``digest`` up to date."""
        ...

    def value(self) -> Any:
        """The plain value the application reads."""
        ...

    def to_cbor(self) -> Any:
        """A CBOR-ready plain object (docs/protocol.md §3)."""
        ...

    @classmethod
    def from_cbor(cls, obj: Any, /) -> Self:
        """Strict inverse of ``to_cbor``; raises ``MalformedError``."""
        ...


if TYPE_CHECKING:  # mypy checks that every type implements the protocol
    from ._causal import AWSet, CausalLWWRegister, CCounter, MVRegister, ORMap
    from ._context import CausalContext, VersionVector
    from ._counters import GCounter, LWWRegister, PNCounter
    from ._ydoc import StateVector, YDoc, YUpdate

    def _conformance(
        a: AWSet, m: MVRegister, c: CausalLWWRegister, cc: CCounter, o: ORMap,
        g: GCounter, p: PNCounter, w: LWWRegister, y: YDoc, u: YUpdate,
    ) -> None:
        _a: DeltaCRDT[CausalContext, AWSet] = a
        _m: DeltaCRDT[CausalContext, MVRegister] = m
        _c: DeltaCRDT[CausalContext, CausalLWWRegister] = c
        _cc: DeltaCRDT[CausalContext, CCounter] = cc
        _o: DeltaCRDT[CausalContext, ORMap] = o
        _g: DeltaCRDT[VersionVector, GCounter] = g
        _p: DeltaCRDT[VersionVector, PNCounter] = p
        _w: DeltaCRDT[VersionVector, LWWRegister] = w
        _y: DeltaCRDT[StateVector, YUpdate] = y
        _d1: Digest = CausalContext()
        _d2: Digest = VersionVector()
        _d3: Digest = StateVector()
