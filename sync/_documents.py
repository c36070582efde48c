"""Replicated documents: a CRDT or a Yjs document as the gossip core sees it.

:class:`CrdtDocument` holds one causal CRDT value (usually an :class:`ORMap`)
and :class:`YjsDocument` one pycrdt document; both implement
:class:`~vsm_edge.sync._gossip.GossipDocument` (digest, lacks, delta_since,
apply, compact) over encoded bytes, and call observers after every change.

Garbage collection and peers that come back: ``compact`` drops removal
records that every *live* peer has seen. A peer that was away may come back
below that point; a partial delta would then miss a removal it needs. So the
document remembers the union of every context it compacted at (the *floor*)
and answers a digest that does not cover the floor with its full state: a
full-state join needs no removal records (entries whose dots the sender's
context holds but its store lacks are removed by the join itself).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from ._causal import CausalCRDT
from ._cbor import DEFAULT_MAX_ITEMS, dumps, loads
from ._context import CausalContext
from ._gossip import MAX_DOT_JUMP, ApplyOutcome, DotRuleError, Offer
from ._ydoc import RootType, StateVector, YDoc, YUpdate

__all__ = ["ChangeObserver", "CrdtDocument", "YjsDocument"]

C = TypeVar("C", bound=CausalCRDT)

#: ``observer(document_name, delta, local)`` after every change: ``delta`` is
#: the decoded delta that was joined, ``local`` whether it was our own mutation.
ChangeObserver = Callable[[str, Any, bool], None]

#: The largest encoded state a document accepts (a stored snapshot, a chunked
#: state transfer), matching :attr:`GossipConfig.max_transfer_bytes`' default.
#: Deltas are smaller: the envelope limit bounds them before they get here.
MAX_STATE_BYTES = 64 * 1024 * 1024


def _loads_state(data: bytes, max_size: int) -> Any:
    """Decode a delta or a whole state: bounded by ``max_size`` bytes.

    The CBOR decoder's defaults (256 KiB, 131,072 items) suit one envelope; a
    state of 10,000 keys is about 500 KB and 150,000 items, so a snapshot or
    transfer uses the document's bound, with at most one item per input byte
    (every CBOR data item takes at least one), which the size already bounds.
    """
    return loads(data, max_size=max_size, max_items=max(DEFAULT_MAX_ITEMS, len(data)))


class CrdtDocument(Generic[C]):
    """A named causal-CRDT replica (e.g. an ORMap) exchanged as CBOR deltas."""

    def __init__(
        self,
        name: str,
        kind: type[C],
        state: C | None = None,
        *,
        max_state_bytes: int = MAX_STATE_BYTES,
    ) -> None:
        self._name = name
        self.kind = kind
        self.max_state_bytes = max_state_bytes
        self._state: C = state if state is not None else kind()
        # The encoding of the current state, once made (a full-state answer or
        # a snapshot): a quiet mesh serves joiners without re-encoding. Any new
        # state clears it (the ``state`` setter).
        self._encoded: bytes | None = None
        self._floor = CausalContext()
        self._observers: list[ChangeObserver] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> C:
        return self._state

    @state.setter
    def state(self, value: C) -> None:
        self._state = value
        self._encoded = None

    def observe(self, observer: ChangeObserver) -> None:
        self._observers.append(observer)

    # -- local mutations -------------------------------------------------------

    def mutate(self, mutator: Callable[[C], C]) -> tuple[C, bytes]:
        """Apply ``mutator(state) -> delta`` locally; return the delta and its bytes."""
        delta = mutator(self.state)
        if type(delta) is not self.kind:
            raise TypeError(f"mutator returned {type(delta).__name__}, not {self.kind.__name__}")
        self.state = self.state.merge(delta)
        data = dumps(delta.to_cbor())
        for observer in self._observers:
            observer(self._name, delta, True)
        return delta, data

    def encode_state(self) -> bytes:
        if self._encoded is None:
            self._encoded = dumps(self._state.to_cbor())
        return self._encoded

    def remember_encoding(self, state: C, data: bytes) -> None:
        """Keep ``data`` (encoded elsewhere, e.g. off the event loop) if ``state`` is current."""
        if state is self._state:
            self._encoded = data

    def decode(self, data: bytes) -> C:
        """Decode a delta or state of this document's kind; raises MalformedError."""
        return self.kind.from_cbor(_loads_state(data, self.max_state_bytes))

    def load(self, data: bytes) -> None:
        """Replace the state with a stored snapshot (at start-up)."""
        self.state = self.decode(data)

    # -- GossipDocument ----------------------------------------------------------

    def digest(self) -> Any:
        return self.state.digest().to_cbor()

    def parse_digest(self, raw: Any) -> CausalContext:
        return CausalContext.from_cbor(raw)

    def lacks(self, remote_digest: CausalContext) -> bool:
        return not self.state.digest().covers(remote_digest)

    def own_counter(self, remote_digest: CausalContext, node: str) -> int:
        return remote_digest.max(node)

    def delta_since(self, remote_digest: CausalContext) -> bytes | None:
        remote = remote_digest
        if self._floor and not remote.covers(self._floor):
            return self.encode_state()  # see the module docstring
        if not remote:
            # A fresh peer: everything, and the full state is exactly that (and
            # may already be encoded).
            return None if self._state.is_bottom() else self.encode_state()
        delta = self.state.delta_since(remote)
        if delta.is_bottom():
            return None
        return dumps(delta.to_cbor())

    def apply(self, data: bytes, offer: Offer | None = None) -> ApplyOutcome:
        delta = self.decode(data)
        if offer is not None:
            self.admit(delta.digest(), offer)
        if not delta.is_ready(self.state.digest()):
            return ApplyOutcome.NOT_READY
        self.state = self.state.merge(delta)
        for observer in self._observers:
            observer(self._name, delta, False)
        return ApplyOutcome.APPLIED

    def admit(self, context: CausalContext, offer: Offer) -> None:
        """The dot rules (docs/protocol.md §3.4); raises DotRuleError.

        1. No node's counter moves more than ``MAX_DOT_JUMP`` past the most we
           know of it: our own context, or what the node signed itself in a
           digest (blamed: no honest node gets near it).
        2. A pushed delta (``offer.relayed`` false) carries only its sender's
           dots (blamed): otherwise a member could mint another node's future
           dots and so suppress its later writes.
        3. A repair answer may carry other nodes' dots: ours (how a node whose
           store lost its tail learns its counter back) and those of nodes
           that never told us their counter, up to rule 1; those of a node
           that did, only up to what it signed or what we hold. Honest relays
           race the node's own digest, so this refusal is not blamed: the next
           digest exchange asks again.
        """
        local = self.state.digest()
        for node in context.nodes():
            top = context.max(node)
            mine = local.max(node)
            if top <= mine:
                continue
            signed = offer.signed(node)
            known = max(mine, signed)
            if top > known + MAX_DOT_JUMP:
                raise DotRuleError(
                    "dot-jump",
                    f"{node}'s counter {top} is more than {MAX_DOT_JUMP} past {known}",
                    blame=True,
                )
            if node == offer.sender:
                offer.vouch(top)
                continue
            if not offer.relayed:
                raise DotRuleError(
                    "foreign-dots",
                    f"a pushed delta from {offer.sender} carries {node}'s dots",
                    blame=True,
                )
            if node != offer.receiver and signed and top > known:
                raise DotRuleError(
                    "unsigned-dots",
                    f"{offer.sender} relays {node}'s counter {top}, past the {known} "
                    f"{node} signed",
                    blame=False,
                )

    def compact(self, stable: list[CausalContext]) -> None:
        if not stable:
            return
        meet = stable[0]
        for digest in stable[1:]:
            meet = meet & digest
        compacted = self.state.compact(meet)
        if compacted is not self.state:
            self._floor = self._floor | (meet & self.state.digest())
            self.state = compacted

    def own_seqs(self, delta: C, node: str) -> tuple[int, int] | None:
        """The first and last sequence numbers (dots) of ``node`` in ``delta``."""
        ranges = delta.context.ranges().get(node)
        if not ranges:
            return None
        return ranges[0], ranges[-1]


class YjsDocument:
    """A named pycrdt (Yjs) document exchanged as Yjs updates.

    Numbers are JavaScript doubles (``1`` reads back as ``1.0``); an update
    whose dependencies are missing stays pending inside pycrdt, is reported
    as not ready, and triggers a repair.
    """

    def __init__(
        self,
        name: str,
        roots: Mapping[str, RootType],
        *,
        client_id: int | None = None,
        max_state_bytes: int = MAX_STATE_BYTES,
    ):
        self._name = name
        self.max_state_bytes = max_state_bytes
        self.ydoc = YDoc(roots, client_id=client_id)
        self._observers: list[ChangeObserver] = []

    @property
    def name(self) -> str:
        return self._name

    def observe(self, observer: ChangeObserver) -> None:
        self._observers.append(observer)

    def mutate(self, edit: Callable[[YDoc], None]) -> tuple[YUpdate, bytes]:
        update = self.ydoc.mutate(edit)
        for observer in self._observers:
            observer(self._name, update, True)
        return update, dumps(update.to_cbor())

    def encode_state(self) -> bytes:
        return dumps(self.ydoc.to_cbor())

    def load(self, data: bytes) -> None:
        self.ydoc.merge(YUpdate.from_cbor(_loads_state(data, self.max_state_bytes)))

    def digest(self) -> Any:
        return self.ydoc.digest().to_cbor()

    def parse_digest(self, raw: Any) -> StateVector:
        return StateVector.from_cbor(raw)

    def lacks(self, remote_digest: StateVector) -> bool:
        return not self.ydoc.digest().covers(remote_digest)

    def own_counter(self, remote_digest: StateVector, node: str) -> int:
        return 0  # Yjs clocks belong to client ids, not to nodes (docs/security.md)

    def delta_since(self, remote_digest: StateVector) -> bytes | None:
        update = self.ydoc.delta_since(remote_digest)
        if update.is_bottom():
            return None
        return dumps(update.to_cbor())

    def apply(self, data: bytes, offer: Offer | None = None) -> ApplyOutcome:
        # No dot rules: Yjs clocks belong to client ids, which are not bound
        # to node keys (docs/security.md, "what a member can do").
        update = YUpdate.from_cbor(_loads_state(data, self.max_state_bytes))
        before = self.ydoc.digest()
        self.ydoc.merge(update)
        if self.ydoc.pending:
            return ApplyOutcome.NOT_READY
        if self.ydoc.digest() != before:
            for observer in self._observers:
                observer(self._name, update, False)
        return ApplyOutcome.APPLIED

    def compact(self, stable: list[Any]) -> None:
        """Yjs keeps its own compact delete set; nothing to do."""
