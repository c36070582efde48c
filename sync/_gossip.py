"""Gossip and anti-entropy as a sans-I/O state machine.

Theory of operation
-------------------
Each node replicates a set of named documents (delta-CRDTs, Yjs documents).
This core decides *what* to send and *when*; an adapter (see ``_replicator``)
owns the clock, the transport, the signatures and the topics. Inputs are
method calls with the current time in seconds; outputs are frozen actions
collected by :meth:`Gossip.drain`. Nothing here blocks or does I/O.

Three flows keep replicas converging whatever the network does:

1. **Eager push.** A local mutation's delta is queued; queued deltas leave as
   one batch at the next tick if no batch left in the last ``batch_interval``,
   else ``batch_interval`` after the previous batch, or at once when the batch
   reaches ``batch_max_bytes``: at most one batch per interval under load, and
   no added wait for a lone update. A batch is broadcast once (MQTT QoS 1).

2. **Causal delivery.** A received delta is joined only when it is causally
   ready (Almeida et al. 2018, §6): the document decides, because it knows its
   own causal context (for a delta-CRDT: the context holds every earlier dot
   of the delta's origin; for a Yjs document: no pending structs). A delta that
   is not ready is buffered (bounded) and retried after every later join, and
   a repair is requested from its sender. Duplicates and reordering are
   therefore harmless: joins are idempotent and order only delays.

3. **Pull anti-entropy.** Each node broadcasts its digests (version
   vectors) every ``digest_interval`` while the mesh has at most
   ``digest_fanout`` nodes, and every ``digest_interval * nodes /
   digest_fanout`` in a larger one: the mesh as a whole sends about
   ``digest_fanout`` digests per ``digest_interval`` whatever its size, so a
   node handles O(1) digests a second instead of O(N) (at 50 nodes the
   every-node-every-second schedule cost more CPU than the whole workload).
   Any peer's digest reveals what a node lacks, so detection stays as fast.
   Each period is jittered (x0.5 to x1.5, seeded by the node id) so that nodes
   that started or reconnected together do not stay in step.
   A node that sees a peer's digest covering something it lacks sends that
   peer a *repair request* carrying its own digest; the peer answers, on the
   requester's direct topic, with
   ``delta_since(digest)``: the delta-interval the requester misses. Answers
   larger than ``chunk_size`` travel as a chunked transfer, reassembled (with
   bounds and a timeout) before the join.

   A digest races the eager pushes that it already counts, so a node compares
   its state with a peer's digest only once that digest is ``digest_interval``
   old (anything in it should have arrived by push by then) — except for the
   first digest of a peer, which is acted on at once so that a fresh or
   restarted node catches up without waiting. A node that hears from
   a peer for the first time sends it its own digest directly, so both learn
   at once what the other has. At most one repair is in flight per node (a
   fresh joiner does not ask twenty peers for the same state); a lost answer
   is given up after ``repair_timeout`` and the next digest retries.

Eager push makes the common case fast; pull anti-entropy makes loss,
partitions, restarts and late joiners converge without an unbounded queue:
whatever a bounded buffer had to drop, the next digest exchange repairs.

Peers' latest digests also give *causal stability*: the pointwise minimum of
the digests of every live peer and ourselves. Documents may garbage-collect
metadata (e.g. removal records) that is stable.

Why one module: the three flows share the per-peer state and the document
table; they are one state machine, driven by one set of inputs.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from ._dots import MAX_DOT_JUMP
from ._errors import MalformedError, SyncError, WireError

__all__ = [
    "MAX_DOT_JUMP",
    "ApplyOutcome",
    "Broadcast",
    "Direct",
    "DotRuleError",
    "Gossip",
    "GossipConfig",
    "GossipDocument",
    "Joined",
    "Offer",
]

KIND_DELTA = "delta"
KIND_DIGEST = "digest"
KIND_REPAIR = "repair"
KIND_CHUNK = "chunk"

#: Nodes whose signed digests are remembered per document (oldest forgotten).
MAX_SIGNED_NODES = 4096


class DotRuleError(MalformedError):
    """A well-formed delta that breaks the dot rules (docs/protocol.md §3.4).

    ``reason`` names the rule; ``blame`` is true when no honest sender could
    have sent it (the adapter then adds evidence against the sender).
    """

    def __init__(self, reason: str, detail: str, *, blame: bool) -> None:
        super().__init__(detail)
        self.reason = reason
        self.blame = blame


@dataclass(frozen=True, slots=True)
class Offer:
    """Who offers a delta to a document, for its admission rule (the dot rules).

    ``relayed`` is true for the answer to a repair this node asked ``sender``
    for: only such an answer may carry other nodes' dots. ``signed(node)`` is
    the highest counter ``node`` itself signed for this document (in its own
    digest or deltas), 0 when it never told us. ``receiver`` is this node's
    id. The document calls ``vouch(counter)`` with the highest counter of the
    sender's own dots in a delta it admits: the sender signed those itself.
    """

    sender: str
    relayed: bool
    signed: Callable[[str], int]
    receiver: str
    vouch: Callable[[int], None]


class ApplyOutcome(Enum):
    """What a document did with a delta it was offered."""

    APPLIED = "applied"  # joined (possibly a no-op duplicate)
    NOT_READY = "not-ready"  # causally not ready: left untouched (or held pending)


class GossipDocument(Protocol):
    """What the gossip core needs from a replicated document.

    Digests are opaque to the core except through these methods; they must be
    CBOR-ready plain values (see docs/protocol.md §3).
    """

    @property
    def name(self) -> str: ...

    def digest(self) -> Any:
        """The document's current digest (a version vector), CBOR-ready."""
        ...

    def parse_digest(self, raw: Any) -> Any:
        """Decode and check a digest from the wire (the CBOR value of :meth:`digest`).

        The only method that sees a peer's raw digest: it raises MalformedError
        on anything outside the documented limits, and what it returns is what
        :meth:`lacks`, :meth:`delta_since` and :meth:`compact` take, which
        never raise on it. The core parses every digest when it arrives, so a
        bad one is refused then, never later from a timer.
        """
        ...

    def lacks(self, remote_digest: Any) -> bool:
        """True when ``remote_digest`` (parsed) covers an update this replica lacks."""
        ...

    def own_counter(self, remote_digest: Any, node: str) -> int:
        """The highest counter of ``node``'s own dots in ``remote_digest`` (parsed);
        0 for a document without per-node counters."""
        ...

    def delta_since(self, remote_digest: Any) -> bytes | None:
        """Encoded delta that brings a replica at ``remote_digest`` (parsed) up
        to date, or None when it lacks nothing."""
        ...

    def apply(self, data: bytes, offer: Offer | None = None) -> ApplyOutcome:
        """Join an encoded delta or state if it is admitted and causally ready.

        ``offer`` says who offers it (None: already admitted, e.g. a retry of
        a buffered delta, or our own store at start). Raises DotRuleError when
        the delta breaks the dot rules for that offer, MalformedError (or
        another WireError) when ``data`` does not decode; the document is then
        unchanged.
        """
        ...

    def compact(self, stable: list[Any]) -> None:
        """Drop metadata covered by every (parsed) digest in ``stable`` (may be a no-op).

        ``stable`` holds the digests of *live* peers only, so a peer that was
        away may come back below what was compacted: ``delta_since`` must then
        answer with the full state (a full-state join needs no removal
        records), never with a partial delta that would miss a removal.
        """
        ...


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Tunables; times in seconds, sizes in bytes."""

    batch_interval: float = 0.010
    batch_max_bytes: int = 64 * 1024
    digest_interval: float = 1.0
    digest_fanout: int = 4  # digests per digest_interval the whole mesh aims at
    repair_timeout: float = 2.0
    chunk_size: int = 120 * 1024  # chunk data; the envelope stays below 128 KiB
    max_pending: int = 1024  # buffered not-ready deltas (oldest dropped, counted)
    max_transfers: int = 8  # concurrent incoming chunked transfers
    max_transfer_bytes: int = 64 * 1024 * 1024
    transfer_timeout: float = 30.0
    # A peer silent this long (or three of its digest periods, if longer) no
    # longer holds back GC.
    peer_timeout: float = 10.0
    # Repair answers per requester: a token bucket of this rate and burst;
    # an answer costs max(1, its bytes / repair_answer_unit) tokens (may go
    # into debt), so a requester gets at most about rate * unit bytes a second.
    repair_answer_rate: float = 1.0
    repair_answer_burst: float = 3.0
    repair_answer_unit: int = 1024 * 1024

    def __post_init__(self) -> None:
        for name in (
            "batch_interval",
            "digest_interval",
            "repair_timeout",
            "transfer_timeout",
            "peer_timeout",
            "repair_answer_rate",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"gossip.{name} must be > 0")
        for name in (
            "batch_max_bytes",
            "chunk_size",
            "max_pending",
            "max_transfers",
            "digest_fanout",
            "repair_answer_burst",
            "repair_answer_unit",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"gossip.{name} must be >= 1")
        if self.max_transfer_bytes < self.chunk_size:
            raise ValueError("gossip.max_transfer_bytes must be >= gossip.chunk_size")


# -- actions (outputs) -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``body`` (CBOR-ready) of ``kind`` to every peer."""

    kind: str
    body: Any


@dataclass(frozen=True, slots=True)
class Direct:
    """Send ``body`` (CBOR-ready) of ``kind`` to one peer."""

    to: str
    kind: str
    body: Any


@dataclass(frozen=True, slots=True)
class Joined:
    """An event: a delta from ``sender`` was joined into ``doc``."""

    doc: str
    sender: str
    size: int
    direct: bool


Action = Broadcast | Direct


@dataclass(slots=True)
class _Peer:
    last_seen: float
    digests: dict[str, Any] = field(default_factory=dict)  # latest, by document
    # the latest digests not compared yet, and when they become old enough
    unchecked: dict[str, Any] = field(default_factory=dict)
    check_at: float = float("inf")


@dataclass(slots=True)
class _Transfer:
    started: float
    count: int
    parts: dict[int, bytes]
    size: int = 0


@dataclass(slots=True)
class _Stats:
    batches_sent: int = 0
    deltas_queued: int = 0
    deltas_applied: int = 0
    deltas_buffered: int = 0
    pending_dropped: int = 0
    duplicates: int = 0
    malformed: int = 0
    dot_rule: int = 0
    unknown_doc: int = 0
    digests_sent: int = 0
    repairs_requested: int = 0
    repairs_served: int = 0
    repairs_limited: int = 0
    chunks_sent: int = 0
    chunks_received: int = 0
    transfers_completed: int = 0
    transfers_dropped: int = 0


@dataclass(frozen=True, slots=True)
class GossipStatistics:
    peers: int
    pending: int
    queued_bytes: int
    transfers: int
    counters: dict[str, int]


class Gossip:
    """The gossip/anti-entropy state machine of one node.

    ``docs`` are the documents this node replicates. Call :meth:`local_update`
    after each local mutation, :meth:`receive` for each verified message from
    a peer, and :meth:`tick` whenever :meth:`next_deadline` has passed; send
    what :meth:`drain` returns.
    """

    def __init__(
        self,
        node: str,
        docs: Mapping[str, GossipDocument],
        config: GossipConfig | None = None,
        *,
        now: float = 0.0,
    ) -> None:
        self.node = node
        self.docs = dict(docs)
        self.config = config or GossipConfig()
        self._actions: list[Action] = []
        self._events: list[Joined] = []
        self._batch: list[list[Any]] = []  # [[doc, data], ...]
        self._batch_bytes = 0
        self._batch_due: float | None = None  # when the queued batch leaves
        self._last_batch = -float("inf")  # when the previous batch left
        self._next_digest = now  # the first digest goes out at once
        self._peers: dict[str, _Peer] = {}
        # not-ready deltas: key (sender, doc, data) -> arrival time; FIFO bounded
        self._pending: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()
        self._transfers: dict[tuple[str, int], _Transfer] = {}
        self._transfer_ids = itertools.count(1)
        self._repair: tuple[str, float] | None = None  # (peer, sent at)
        # Peers we asked for a repair lately (peer -> when): their direct
        # deltas are answers, which may carry other nodes' dots, even if they
        # arrive after the in-flight marker timed out.
        self._asked: OrderedDict[str, float] = OrderedDict()
        # requester -> (tokens, when): the repair answer budget (GossipConfig)
        self._answer_budget: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # doc -> node -> the highest own counter the node signed in a digest.
        self._signed: dict[str, OrderedDict[str, int]] = {name: OrderedDict() for name in docs}
        self._next_check = float("inf")  # the earliest _Peer.check_at
        # Digest periods are jittered (x0.5..1.5) so that nodes that started, or
        # reconnected, together do not stay in step; seeded by the node id, so a
        # run is reproducible.
        self._jitter = random.Random(zlib.crc32(node.encode()))  # noqa: S311 (not security)
        self._stats = _Stats()

    # -- inputs --------------------------------------------------------------

    def local_update(self, doc: str, data: bytes, now: float) -> None:
        """Queue the encoded delta of a local mutation of ``doc`` for broadcast."""
        if doc not in self.docs:
            raise SyncError(f"unknown document {doc!r}")
        self._batch.append([doc, data])
        self._batch_bytes += len(data)
        self._stats.deltas_queued += 1
        if self._batch_due is None:
            self._batch_due = max(now, self._last_batch + self.config.batch_interval)
        if self._batch_bytes >= self.config.batch_max_bytes:
            self._flush_batch(now)

    def receive(
        self, sender: str, kind: str, body: Any, now: float, *, direct: bool
    ) -> DotRuleError | None:
        """Handle one message from ``sender`` (already verified by the adapter).

        Malformed bodies are counted and dropped (they never raise). Returns
        the first dot-rule violation in the message, if any (its deltas were
        refused), so that the adapter can count it and, when ``blame`` is
        set, hold it against the sender.
        """
        if sender == self.node:
            return None
        peer = self._peers.get(sender)
        if peer is None:
            peer = self._peers[sender] = _Peer(last_seen=now)
            # First contact: tell the newcomer what we have, so that whichever
            # of us is behind can ask for a repair at once.
            self._actions.append(Direct(sender, KIND_DIGEST, self._digests()))
            self._stats.digests_sent += 1
        peer.last_seen = now
        try:
            if kind == KIND_DELTA:
                return self._on_delta(sender, body, now, direct=direct)
            if kind == KIND_DIGEST:
                self._on_digest(sender, peer, body, now)
            elif kind == KIND_REPAIR:
                self._on_repair(sender, body, now)
            elif kind == KIND_CHUNK:
                return self._on_chunk(sender, body, now)
            else:
                self._stats.malformed += 1  # a kind from a newer protocol: ignored
        except WireError:  # MalformedError, or a reassembled transfer past a limit
            self._stats.malformed += 1
        return None

    def peer_gone(self, node: str) -> None:
        """Forget a peer (it went offline): it no longer holds back stability."""
        self._peers.pop(node, None)
        for key in [k for k in self._transfers if k[0] == node]:
            del self._transfers[key]
        if self._repair is not None and self._repair[0] == node:
            self._repair = None

    def tick(self, now: float) -> None:
        """Run the timers that are due at ``now``."""
        # Deadlines are compared as ``now >= start + interval``, the very
        # expression next_deadline() returns, so a tick at a deadline always
        # acts (``now - start >= interval`` can differ by a rounding error).
        if self._batch_due is not None and now >= self._batch_due:
            self._flush_batch(now)
        if now >= self._next_digest:
            self._send_digest()
            self._next_digest = now + self.digest_period() * self._jitter.uniform(0.5, 1.5)
            self._compact(now)
        if now >= self._next_check:
            self._check_aged_digests(now)
        for key, transfer in list(self._transfers.items()):
            if now >= transfer.started + self.config.transfer_timeout:
                del self._transfers[key]
                self._stats.transfers_dropped += 1
        if self._repair is not None and now >= self._repair[1] + self.config.repair_timeout:
            self._repair = None  # lost; the next digest from anyone retries
        while self._asked and next(iter(self._asked.values())) < now - self._answer_window():
            self._asked.popitem(last=False)

    def _answer_window(self) -> float:
        """How long after asking a peer its direct deltas count as the answer."""
        return 4 * self.config.repair_timeout + self.config.transfer_timeout

    def awaits(self, peer: str) -> bool:
        """True while ``peer``'s direct deltas would be the answer to our repair."""
        return peer in self._asked or (self._repair is not None and self._repair[0] == peer)

    def signed_counter(self, doc: str, node: str) -> int:
        """The highest own counter ``node`` signed in a digest of ``doc`` (0: none)."""
        signed = self._signed.get(doc)
        return 0 if signed is None else signed.get(node, 0)

    def _voucher(self, doc: str, node: str) -> Callable[[int], None]:
        def vouch(counter: int) -> None:
            self._note_signed(doc, node, counter)

        return vouch

    def _signed_lookup(self, doc: str) -> Callable[[str], int]:
        signed = self._signed[doc]

        def lookup(node: str) -> int:
            return signed.get(node, 0)

        return lookup

    def digest_period(self) -> float:
        """This node's interval between digest broadcasts (see the theory of operation)."""
        nodes = 1 + len(self._peers)
        return self.config.digest_interval * max(1.0, nodes / self.config.digest_fanout)

    def request_digest_now(self, now: float) -> None:
        """Send digests at the next tick (e.g. right after (re)connecting)."""
        self._next_digest = now

    # -- outputs -------------------------------------------------------------

    def drain(self) -> list[Action]:
        """The actions produced since the last call, in order."""
        actions, self._actions = self._actions, []
        return actions

    def events(self) -> list[Joined]:
        """The join events since the last call (for observers and metrics)."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float:
        """The time at which :meth:`tick` next has something to do."""
        deadline = min(self._next_digest, self._next_check)
        if self._batch_due is not None:
            deadline = min(deadline, self._batch_due)
        if self._repair is not None:
            deadline = min(deadline, self._repair[1] + self.config.repair_timeout)
        for transfer in self._transfers.values():
            deadline = min(deadline, transfer.started + self.config.transfer_timeout)
        return deadline

    def peer_digests(self) -> dict[str, dict[str, Any]]:
        """The latest (parsed) digests heard from each live peer (a copy)."""
        return {name: dict(p.digests) for name, p in self._peers.items()}

    def statistics(self) -> GossipStatistics:
        return GossipStatistics(
            peers=len(self._peers),
            pending=len(self._pending),
            queued_bytes=self._batch_bytes,
            transfers=len(self._transfers),
            counters={k: getattr(self._stats, k) for k in _Stats.__slots__},
        )

    # -- internals -----------------------------------------------------------

    def _flush_batch(self, now: float) -> None:
        if self._batch:
            self._actions.append(Broadcast(KIND_DELTA, self._batch))
            self._stats.batches_sent += 1
            self._last_batch = now
        self._batch = []
        self._batch_bytes = 0
        self._batch_due = None

    def _digests(self) -> dict[str, Any]:
        return {name: doc.digest() for name, doc in self.docs.items()}

    def _send_digest(self) -> None:
        self._actions.append(Broadcast(KIND_DIGEST, self._digests()))
        self._stats.digests_sent += 1

    def _on_delta(
        self, sender: str, body: Any, now: float, *, direct: bool
    ) -> DotRuleError | None:
        items = _expect_pairs(body)
        relayed = direct and self.awaits(sender)
        if direct and self._repair is not None and self._repair[0] == sender:
            self._repair = None  # the answer to our repair request
        progressed: set[str] = set()
        refused: DotRuleError | None = None
        for doc_name, data in items:
            doc = self.docs.get(doc_name)
            if doc is None:
                self._stats.unknown_doc += 1
                continue
            offer = Offer(
                sender,
                relayed,
                self._signed_lookup(doc_name),
                self.node,
                self._voucher(doc_name, sender),
            )
            try:
                outcome = doc.apply(data, offer)
            except DotRuleError as exc:
                self._stats.dot_rule += 1
                refused = refused or exc
                continue
            except WireError:
                self._stats.malformed += 1
                continue
            if outcome is ApplyOutcome.APPLIED:
                self._stats.deltas_applied += 1
                self._events.append(Joined(doc_name, sender, len(data), direct))
                progressed.add(doc_name)
            else:
                self._buffer(sender, doc_name, data, now)
                self._request_repair(sender, self.docs, now)
        # Once per message, not once per joined delta: a batch of n deltas
        # against p pending ones would otherwise cost n * p joins.
        for doc_name in sorted(progressed):
            self._retry_pending(doc_name)
        return refused

    def _buffer(self, sender: str, doc: str, data: bytes, now: float) -> None:
        key = (sender, doc, data)
        if key in self._pending:
            self._stats.duplicates += 1
            return
        self._pending[key] = now
        self._stats.deltas_buffered += 1
        while len(self._pending) > self.config.max_pending:
            self._pending.popitem(last=False)
            self._stats.pending_dropped += 1  # anti-entropy repairs what is dropped

    def _retry_pending(self, doc_name: str) -> None:
        # Passes over the pending deltas in arrival order until one joins
        # nothing: deltas that arrived in order but too early all join in
        # the first pass, so this is usually two passes.
        progress = True
        while progress:
            progress = False
            for key in [k for k in self._pending if k[1] == doc_name]:
                sender, _, data = key
                try:
                    outcome = self.docs[doc_name].apply(data)
                except WireError:  # decoded before, so unexpected; never loop on it
                    del self._pending[key]
                    self._stats.malformed += 1
                    continue
                if outcome is ApplyOutcome.APPLIED:
                    del self._pending[key]
                    self._stats.deltas_applied += 1
                    self._events.append(Joined(doc_name, sender, len(data), False))
                    progress = True

    def _on_digest(self, sender: str, peer: _Peer, body: Any, now: float) -> None:
        if not isinstance(body, dict):
            raise MalformedError("digest body must be a map of document -> digest")
        # Parse every digest first: one bad digest refuses the whole message,
        # and nothing unparsed is ever kept for a timer to trip over later.
        parsed = {
            doc_name: self.docs[doc_name].parse_digest(raw)
            for doc_name, raw in body.items()
            if isinstance(doc_name, str) and doc_name in self.docs
        }
        behind: dict[str, GossipDocument] = {}
        for doc_name, digest in parsed.items():
            doc = self.docs[doc_name]
            self._note_signed(doc_name, sender, doc.own_counter(digest, sender))
            first = doc_name not in peer.digests
            peer.digests[doc_name] = digest
            # See the theory of operation: the first digest at once, later ones
            # once they are older than any push still in flight.
            if first:
                if doc.lacks(digest):
                    behind[doc_name] = doc
            else:  # one pending per document: a younger one waits for the next
                peer.unchecked.setdefault(doc_name, digest)
        if peer.unchecked and peer.check_at == float("inf"):
            peer.check_at = now + self.config.digest_interval
            self._next_check = min(self._next_check, peer.check_at)
        if behind:
            self._request_repair(sender, behind, now)

    def _note_signed(self, doc: str, node: str, counter: int) -> None:
        signed = self._signed[doc]
        if counter > signed.get(node, 0):
            signed[node] = counter
            signed.move_to_end(node)
            while len(signed) > MAX_SIGNED_NODES:
                signed.popitem(last=False)

    def _check_aged_digests(self, now: float) -> None:
        """Compare our state with every peer digest that is now old enough."""
        self._next_check = float("inf")
        for name, peer in self._peers.items():
            if peer.check_at <= now:
                behind = {
                    doc_name: self.docs[doc_name]
                    for doc_name, digest in peer.unchecked.items()
                    if self.docs[doc_name].lacks(digest)
                }
                peer.unchecked = {}
                peer.check_at = float("inf")
                if behind:
                    self._request_repair(name, behind, now)
            self._next_check = min(self._next_check, peer.check_at)

    def _request_repair(self, peer: str, docs: Mapping[str, GossipDocument], now: float) -> None:
        if self._repair is not None:
            return  # one in flight; its answer or its timeout comes first
        wanted = {name: doc.digest() for name, doc in docs.items()}
        self._actions.append(Direct(peer, KIND_REPAIR, wanted))
        self._repair = (peer, now)
        self._asked.pop(peer, None)
        self._asked[peer] = now
        self._stats.repairs_requested += 1

    def _on_repair(self, sender: str, body: Any, now: float) -> None:
        if not isinstance(body, dict):
            raise MalformedError("repair body must be a map of document -> digest")
        parsed = {
            doc_name: self.docs[doc_name].parse_digest(raw)
            for doc_name, raw in body.items()
            if isinstance(doc_name, str) and doc_name in self.docs
        }
        cfg = self.config
        tokens, at = self._answer_budget.pop(sender, (cfg.repair_answer_burst, now))
        tokens = min(cfg.repair_answer_burst, tokens + (now - at) * cfg.repair_answer_rate)
        if tokens < 1.0:
            # Over its budget: no answer. An honest requester's in-flight
            # marker times out and its next digest comparison asks again.
            self._stats.repairs_limited += 1
            self._keep_budget(sender, tokens, now)
            return
        reply: list[list[Any]] = []
        for doc_name, digest in parsed.items():
            data = self.docs[doc_name].delta_since(digest)
            if data is not None:
                reply.append([doc_name, data])
        size = sum(len(d) for _, d in reply)
        self._keep_budget(sender, tokens - max(1.0, size / cfg.repair_answer_unit), now)
        self._stats.repairs_served += 1
        # Always answer (possibly empty) so the requester's in-flight marker clears.
        self._send_direct_delta(sender, reply)

    def _keep_budget(self, peer: str, tokens: float, now: float) -> None:
        self._answer_budget[peer] = (tokens, now)
        while len(self._answer_budget) > MAX_SIGNED_NODES:
            self._answer_budget.popitem(last=False)

    def _send_direct_delta(self, to: str, reply: list[list[Any]]) -> None:
        size = sum(len(d) for _, d in reply)
        if size <= self.config.chunk_size:
            self._actions.append(Direct(to, KIND_DELTA, reply))
            return
        from ._cbor import dumps  # local import: only large replies need it

        blob = dumps(reply)
        step = self.config.chunk_size
        parts = [blob[i : i + step] for i in range(0, len(blob), step)]
        transfer = next(self._transfer_ids)
        for index, part in enumerate(parts):
            self._actions.append(Direct(to, KIND_CHUNK, [transfer, index, len(parts), part]))
        self._stats.chunks_sent += len(parts)

    def _on_chunk(self, sender: str, body: Any, now: float) -> DotRuleError | None:
        if not (
            isinstance(body, list)
            and len(body) == 4
            and all(isinstance(x, int) and not isinstance(x, bool) for x in body[:3])
            and isinstance(body[3], bytes)
        ):
            raise MalformedError("chunk body must be [transfer, index, count, bytes]")
        transfer_id, index, count, data = body
        if not 0 <= index < count or count * self.config.chunk_size > (
            self.config.max_transfer_bytes + self.config.chunk_size
        ):
            raise MalformedError(f"chunk {index}/{count} out of bounds")
        self._stats.chunks_received += 1
        if self._repair is not None and self._repair[0] == sender:
            self._repair = (sender, now)  # progress: do not time the transfer out
        key = (sender, transfer_id)
        transfer = self._transfers.get(key)
        if transfer is None:
            if len(self._transfers) >= self.config.max_transfers:
                oldest = min(self._transfers, key=lambda k: self._transfers[k].started)
                del self._transfers[oldest]
                self._stats.transfers_dropped += 1
            transfer = self._transfers[key] = _Transfer(started=now, count=count, parts={})
        if transfer.count != count:
            del self._transfers[key]
            raise MalformedError("chunk count changed within one transfer")
        if index not in transfer.parts:
            transfer.parts[index] = data
            transfer.size += len(data)
        if transfer.size > self.config.max_transfer_bytes:
            del self._transfers[key]
            self._stats.transfers_dropped += 1
            raise MalformedError("chunked transfer exceeds max_transfer_bytes")
        if len(transfer.parts) == count:
            del self._transfers[key]
            from ._cbor import loads

            blob = b"".join(transfer.parts[i] for i in range(count))
            self._stats.transfers_completed += 1
            return self._on_delta(
                sender, loads(blob, max_size=self.config.max_transfer_bytes), now, direct=True
            )
        return None

    def _compact(self, now: float) -> None:
        timeout = max(self.config.peer_timeout, 3 * self.digest_period())
        live = [p for p in self._peers.values() if now - p.last_seen <= timeout]
        for name, doc in self.docs.items():
            stable = [p.digests[name] for p in live if name in p.digests]
            if len(stable) == len(live):  # every live peer has told us its digest
                doc.compact([doc.parse_digest(doc.digest()), *stable])


def _expect_pairs(body: Any) -> list[tuple[str, bytes]]:
    if not isinstance(body, list):
        raise MalformedError("delta body must be a list of [document, bytes]")
    pairs: list[tuple[str, bytes]] = []
    for item in body:
        if not (
            isinstance(item, list)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], bytes)
        ):
            raise MalformedError("delta body must be a list of [document, bytes]")
        pairs.append((item[0], item[1]))
    return pairs
