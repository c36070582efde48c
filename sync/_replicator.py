"""The replicator: gossip over MQTT, with signatures, presence and a durable store.

Theory of operation
-------------------
The replicator is the thin Trio adapter around the sans-I/O
:class:`~vsm_edge.sync._gossip.Gossip` core. It owns the topics, the
envelopes (every message is a signed COSE_Sign1, optionally encrypted), the
peer table, the hybrid logical clock and the store.

Topics (docs/protocol.md §4), for mesh ``M`` and node ``N``::

    vsm/M/d/N         deltas, QoS 1             (broadcast)
    vsm/M/sv/N        digests, QoS 0            (broadcast)
    vsm/M/to/N        repair requests and answers, first-contact digests,
                      chunks, addressed to N, QoS 1
    vsm/M/presence/N  retained presence; the last will says "offline"
    vsm/M/alg/N       algedonic signals, QoS 1, latest retained (application)
    vsm/M/policy      admin-signed policy, retained (application)
    vsm/M/cmd/N       remote commands addressed to N, QoS 1 (application)
    vsm/M/cmdr/N      command outcomes addressed to the issuer N, QoS 1 (application)

Ingress, for every message: the pure core of ``_ingress`` applies the
channel's row of its table (topic, envelope, kind, retained, the sender's key,
signature, the *ingress check* (the agent's gateway), the CPU budget); the
replicator then runs the receive rule of the HLC (a stamp too far ahead is
refused), hands a presence to the peer table, has the core decrypt and
decode any other body, and dispatches it to the gossip core or the
application. Anything refused is counted by reason and dropped;
anti-entropy repairs what a drop loses.

Durability: :meth:`Replicator.mutate` returns only after the delta is in the
store's log (SQLite, committed), so an acknowledged update survives a kill -9.
A local delta of a CRDT document joins the document (what digests and repairs
read) and leaves for the mesh only after that commit: our own dots are never
published before they are durable. Remote updates are captured by periodic
snapshots (after a crash, anti-entropy re-fetches the rest). Deltas that
cannot be published (no broker) go to the store's outbox, bounded by count,
bytes and age, and are sent again, re-signed, when the broker is back; what
the bound drops, anti-entropy repairs.

Dots: before its first mint after a start the replicator claims its counters
(reservation ahead plus what online peers hold of ours, see ``_dots``), so a
store that lost its tail never mints a dot again.

Store faults: a write that fails (disk full, I/O error; not one of the store's
own bounds) puts the replicator in a *store fault*: logged once at ERROR,
reported to :meth:`Replicator.observe_store_faults` observers, and local
writes are refused (:class:`StoreFaultError`) before anything changes. A task
retries a probe write, the clock's pending ceiling and the snapshots with
backoff; when they succeed the fault clears and writes resume. Nothing in the
fault path stops replication or the goodbye: peers still get our digests and
repairs, and the "offline" presence still goes out at shutdown.

Why one module over ~600 lines: it is the I/O adapter that owns the transport,
the store and the tasks around the pure cores (gossip, ingress); every task
shares its peer table and outbox. The decisions live in the cores.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ._astore import AsyncStore
from ._backoff import Backoff
from ._cbor import dumps, loads
from ._documents import CrdtDocument, YjsDocument
from ._dots import OwnDots
from ._envelope import Envelope, sign_envelope
from ._errors import StoreError, StoreFullError, SyncError, WireError
from ._faults import StoreFault, StoreFaults
from ._gossip import Broadcast, Direct, Gossip, GossipConfig, Joined
from ._hlc import ClockDriftError, HybridLogicalClock, Timestamp
from ._ingress import (
    CLEARED,
    OVERWRITTEN,
    Admitted,
    CpuBudget,
    Ignored,
    Ingress,
    IngressCheck,
    Refused,
)
from ._keys import MeshKey, NodeKey
from ._store import Store
from ._transport import Message, Transport, TransportError, Will

__all__ = [
    "KeyBinding",
    "PeerInfo",
    "Replicator",
    "ReplicatorConfig",
    "StoreFault",
    "policy_topic",
    "presence_topic",
]

log = logging.getLogger("vsm_edge.sync.replicator")

Document = CrdtDocument[Any] | YjsDocument

_QOS = {"delta": 1, "digest": 0, "repair": 1, "chunk": 1}

#: How often the replicator checks whether the clock's ceiling needs raising.
CEILING_CHECK_S = 0.25
#: The shortest interval between two re-publications of our overwritten presence.
PRESENCE_HEAL_S = 2.0
#: A full peer table evicts an online peer only after this long without a message.
EVICT_SILENT_S = 60.0

# Bytes a faulted store must find room for before local writes resume: a few
# group commits, so that a disk on the edge of full is not taken for a working one.
PROBE_ROOM = 64 * 1024


def policy_topic(mesh: str) -> str:
    """The retained admin-signed policy of ``mesh`` (docs/protocol.md §4.1)."""
    return f"vsm/{mesh}/policy"


def presence_topic(mesh: str, node: str) -> str:
    return f"vsm/{mesh}/presence/{node}"


@dataclass(frozen=True, slots=True)
class ReplicatorConfig:
    """Who we are and how we gossip; times in seconds."""

    mesh: str
    node: str
    zone: str = "default"
    broker_url: str = ""
    gossip: GossipConfig = field(default_factory=GossipConfig)
    snapshot_interval: float = 2.0
    publishers: int = 4  # concurrent QoS 1 publishes in flight
    outgoing_capacity: int = 1024  # queued outgoing messages before spilling to the outbox
    max_envelope: int = 256 * 1024
    max_peers: int = 1024  # presences kept; when full, the offline peer seen longest ago goes
    # Each sender's gossip may take this share of one core (a token bucket
    # of CPU seconds with this burst); past it its deltas, repairs and chunks
    # are refused "cpu-budget" until it refills. Digests and the answers to
    # our own repairs are exempt (they are how anti-entropy repairs the rest).
    cpu_share: float = 0.25
    cpu_burst: float = 1.0
    outbox_retry: float = 1.0
    goodbye_timeout: float = 1.0  # at shutdown, for the "offline" presence to be acknowledged
    # Before the first mint: wait at most claim_timeout for online peers'
    # digests (and the return of what they hold of ours); with no peer online,
    # claim_settle after our presence is out (retained presences arrive first).
    claim_timeout: float = 5.0
    claim_settle: float = 0.5
    fault_retry: Backoff = field(  # retries of a faulted store
        default_factory=lambda: Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    )

    def __post_init__(self) -> None:
        for name, value in (("mesh", self.mesh), ("node", self.node)):
            if not value or any(c in value for c in "/+#") or len(value) > 64:
                raise ValueError(f"{name} {value!r} must be 1..64 chars without / + #")
        for name in ("snapshot_interval", "outbox_retry", "goodbye_timeout", "claim_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0 <= self.claim_settle <= self.claim_timeout:
            raise ValueError("claim_settle must be in 0..claim_timeout")
        if not 0 < self.cpu_share <= 1 or self.cpu_burst <= 0:
            raise ValueError("cpu_share must be in (0, 1] and cpu_burst > 0")
        if self.publishers < 1 or self.outgoing_capacity < 1 or self.max_peers < 1:
            raise ValueError("publishers, outgoing_capacity and max_peers must be >= 1")


class KeyBinding(Protocol):
    """Whether ``node`` may be bound to key id ``kid`` (its presence); ``bound``
    is the key id it is bound to now, if any. A refusal reason, or None."""

    def __call__(self, node: str, kid: bytes, bound: bytes | None, /) -> str | None: ...


class Blame(Protocol):
    """Told when a validly signed message from ``sender`` broke a rule no
    honest node breaks (``reason``): the gateway's evidence against it."""

    def __call__(self, sender: str, reason: str, /) -> None: ...


@dataclass(slots=True)
class PeerInfo:
    """What we know of a peer, from its presence and its traffic."""

    node: str
    kid: bytes
    public_key: bytes
    incarnation: int
    zone: str
    online: bool
    last_seen: float  # trio time of the last accepted message
    hlc: int  # packed HLC of its latest presence
    broker: str = ""

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "node": self.node,
            "kid": self.kid.hex(),
            "zone": self.zone,
            "online": self.online,
            "incarnation": self.incarnation,
            "last_seen_s": round(now - self.last_seen, 3),
        }


AppHandler = Callable[[str, str, Any, Envelope], str | None]
"""``handler(channel, sender, body, envelope)`` for "alg", "policy", "cmd" and "cmdr" messages.

It decodes ``body``; it returns None when it took the message, else the
reason it refused it, which the replicator counts (``statistics()["refused"]``).
"""


class Replicator:
    """Replicates ``docs`` with the mesh through ``transport`` (see module docstring).

    ``transport_factory(will)`` builds the transport with our last will (the
    signed "offline" presence). ``store`` (optional) makes local updates
    durable and holds the outbox. ``ingress`` is the gateway; without one,
    every correctly signed message is accepted. ``on_app`` receives algedonic
    and policy messages (and may refuse them: :data:`AppHandler`).
    ``randbytes`` supplies nonces and IVs.
    """

    def __init__(
        self,
        config: ReplicatorConfig,
        key: NodeKey,
        clock: HybridLogicalClock,
        transport_factory: Callable[[Will], Transport],
        docs: Mapping[str, Document],
        *,
        store: AsyncStore | None = None,
        ingress: IngressCheck | None = None,
        blame: Blame | None = None,
        key_binding: KeyBinding | None = None,
        on_app: AppHandler | None = None,
        mesh_key: MeshKey | None = None,
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.config = config
        self.key = key
        self.clock = clock
        self.docs: dict[str, Document] = dict(docs)
        self.store = store
        self.blame = blame
        self.key_binding = key_binding
        self.on_app = on_app
        self.mesh_key = mesh_key
        self._randbytes = randbytes
        self.node = config.node
        self.mesh = config.mesh
        self._prefix = f"vsm/{config.mesh}/"
        self.incarnation = clock.now().packed  # grows across restarts (persisted HLC)
        self._counts: Counter[str] = Counter()
        self._faults = StoreFaults()
        self._will_payload = self._seal("presence", self._presence_body(online=False))
        self.transport = transport_factory(self._will())
        self.gossip = Gossip(self.node, self.docs, config.gossip, now=0.0)
        self.peers: dict[str, PeerInfo] = {}
        self._by_kid: dict[bytes, str] = {}
        # Presences refused by the key binding (or displaced by a tentative
        # one), kept to be bound later if the binding changes (a new zone):
        # node -> kid -> (body, envelope HLC); at most 2 keys per node.
        self._alternates: dict[str, dict[bytes, tuple[dict[str, Any], int]]] = {}
        self._out_send, self._out_recv = trio.open_memory_channel[tuple[str, str, Any, int]](
            config.outgoing_capacity
        )
        # Our broadcast deltas go through one publisher, in order: concurrent
        # publishers would let batch n+1 overtake batch n (Trio runs ready
        # tasks in random order), and a receiver would buffer it and ask for
        # a repair it does not need.
        self._delta_send, self._delta_recv = trio.open_memory_channel[tuple[str, str, Any, int]](
            config.outgoing_capacity
        )
        # Broadcast deltas that could not be published, on their way to the outbox.
        self._spill_send, self._spill_recv = trio.open_memory_channel[tuple[str, bytes]](
            config.outgoing_capacity
        )
        self._wake = trio.Event()
        self._outbox_wake = trio.Event()
        # Changes per document; a snapshot clears "dirty" only if no change
        # happened while it was being written (and a cancelled one clears nothing).
        self._changes: Counter[str] = Counter()
        self._snapshotted: Counter[str] = Counter()
        self._seq_cover: dict[str, tuple[str, int]] = {}  # doc -> (origin, last own seq)
        # Group commit of local deltas (see _make_durable).
        self._commit_queue: list[_Pending] = []
        self._committing = False
        self._commit_done = trio.Event()
        self._dots = OwnDots(self.node)  # our counters, and the deltas in flight
        self._claimed = trio.Event()
        self._fault_wake = trio.Event()
        self._recovered = trio.Event()
        self._recovered.set()
        self._refused: Counter[str] = Counter()
        # The ingress checks (sync/_ingress.py), reading our peer table; see
        # ReplicatorConfig.cpu_share for the budget.
        self._inlet = Ingress(
            config.mesh,
            config.node,
            node_of=self._by_kid,
            peers=self.peers,
            awaits=self.gossip.awaits,
            budget=CpuBudget(config.cpu_share, config.cpu_burst, 2 * config.max_peers),
            check=ingress,
            mesh_key=mesh_key,
            max_envelope=config.max_envelope,
        )
        self._charge: list[str] = []  # the sender the message in hand is charged to
        self._started = trio.Event()
        self._announced = trio.Event()  # our presence (and key) is at the broker
        self._presence_sent = b""  # the payload of our latest presence
        self._presence_heal = trio.Event()
        self._running = False

    # -- public API ---------------------------------------------------------------

    @property
    def ingress(self) -> IngressCheck | None:
        """The ingress check (gateway) the ingress core asks, as given."""
        return self._inlet.check

    def observe_store_faults(self, observer: Callable[[StoreFault | None], None]) -> None:
        """Call ``observer(fault)`` when a store fault begins, ``observer(None)`` when it ends."""
        self._faults.observers.append(observer)

    @property
    def store_fault(self) -> StoreFault | None:
        """The current store fault (local writes are refused), or None."""
        return self._faults.fault

    async def mutate(self, doc: str, mutator: Callable[[Any], Any]) -> Any:
        """Apply a local mutation of ``doc``; return its delta once it is durable.

        ``mutator`` gets the document's state (a CRDT value, or the YDoc) and
        returns a delta (for a YDoc: edits it in place and returns None). The
        delta is committed to the store's log before this returns; a CRDT
        delta joins the document, and any delta leaves for the mesh, only
        after that commit. Concurrent calls share one commit. The first call
        after a start waits for the dot claim (module docstring). Raises
        SyncError for an unknown document; StoreFaultError, before changing
        anything, while the store is faulted; StoreError when the commit
        fails (a CRDT update is then not applied, not acknowledged and not
        sent; a YDoc keeps the edit in memory); TypeError when a CRDT
        mutator returns a value of another type.
        """
        document = self.docs.get(doc)
        if document is None:
            raise SyncError(f"unknown document {doc!r}")
        if isinstance(document, CrdtDocument):
            return await self._mutate_crdt(doc, document, mutator)
        self._faults.refuse_if_faulted()
        before = document.ydoc.digest()[document.ydoc.client_id]
        delta, data = document.mutate(mutator)
        after = document.ydoc.digest()[document.ydoc.client_id]
        if after <= before:
            await trio.lowlevel.checkpoint()
            return delta  # nothing changed
        origin = f"{self.node}#{document.ydoc.client_id}"
        pending = _Pending(doc, origin, before + 1, after, data)
        await self._commit(pending)
        if pending.error is not None:
            raise pending.error
        return delta

    async def _mutate_crdt(
        self, doc: str, document: CrdtDocument[Any], mutator: Callable[[Any], Any]
    ) -> Any:
        if not self._claimed.is_set():
            await self._claimed.wait()
        self._faults.refuse_if_faulted()
        skip = self._dots.take_skip(doc)
        queue: list[_Pending] = []
        if skip is not None:  # counters nobody used: the first commit skips them (_dots)
            value = document.kind.skip(self.node, *skip)
            queue.append(_Pending(doc, self.node, *skip, dumps(value.to_cbor()), value))
            self._dots.add_inflight(doc, value)
        try:
            delta = mutator(self._dots.base(doc, document.state))
            if type(delta) is not document.kind:
                kind = document.kind.__name__
                raise TypeError(f"mutator returned {type(delta).__name__}, not {kind}")  # noqa: TRY301
        except BaseException:
            self._unskip(queue)
            raise
        seqs = document.own_seqs(delta, self.node)
        if seqs is None:
            self._unskip(queue)
            await trio.lowlevel.checkpoint()
            return delta  # nothing changed
        pending = _Pending(doc, self.node, seqs[0], seqs[1], dumps(delta.to_cbor()), delta)
        self._dots.add_inflight(doc, delta)
        # Queued together, with no checkpoint between: one transaction holds both.
        self._commit_queue.extend(queue)
        await self._commit(pending)
        for entry in queue:
            if entry.error is not None:
                self._dots.keep_skip(doc, (entry.first, entry.last))
        if pending.error is not None:
            raise pending.error
        return delta

    def _unskip(self, queue: list[_Pending]) -> None:
        """The skip does not go with this mutation: the next one carries it."""
        for entry in queue:
            self._dots.drop_inflight(entry.doc, [entry.delta])
            self._dots.keep_skip(entry.doc, (entry.first, entry.last))

    async def _commit(self, pending: _Pending) -> None:
        if self.store is None:
            batch, self._commit_queue = [*self._commit_queue, pending], []
            self._release(batch)
            await trio.lowlevel.checkpoint()  # an async call is a checkpoint, store or not
        else:
            await self._make_durable(pending)

    async def _make_durable(self, pending: _Pending) -> None:
        """Commit ``pending`` to the store's log with whatever else is waiting (group commit).

        The first caller that finds no commit running commits the whole queue
        in one transaction (one fsync) and releases it; callers that arrive
        meanwhile queue for the next one. Shielded: a commit that started
        finishes, and a caller's cancellation is delivered after it, so
        "acknowledged" still means "committed".
        """
        assert self.store is not None
        self._commit_queue.append(pending)
        with trio.CancelScope(shield=True):
            while not pending.done:
                if self._committing:
                    await self._commit_done.wait()
                    continue
                batch, self._commit_queue = self._commit_queue, []
                self._committing = True
                error: SyncError | None = None
                committed = False
                reserve = self._dots.reservations(
                    (e.doc, e.last) for e in batch if e.delta is not None
                )
                try:
                    await self.store.run_sync(
                        _append_all, self.store.sync, batch, self.node, reserve
                    )
                    committed = True
                except SyncError as exc:
                    error = exc
                finally:
                    self._committing = False
                    if not committed and error is None:  # a bug: the leader re-raises it
                        error = SyncError("the group commit failed unexpectedly")
                    for entry in batch:
                        if error is not None and entry.error is None:
                            entry.error = error
                    if committed:
                        for doc, through in reserve.items():
                            self._dots.reserved_through(doc, through)
                    self._release(batch)
                    done, self._commit_done = self._commit_done, trio.Event()
                    done.set()
                if error is not None:
                    self._store_failed(error, "commit")

    def _release(self, batch: list[_Pending]) -> None:
        """Join committed deltas and hand them to the gossip core, in commit order."""
        now = trio.current_time()
        failed: dict[str, list[Any]] = {}
        joined: dict[str, tuple[Any, list[Any]]] = {}  # doc -> (state before, deltas)
        for entry in batch:
            entry.done = True
            if entry.error is not None:
                if entry.delta is not None:
                    failed.setdefault(entry.doc, []).append(entry.delta)
                continue
            document = self.docs[entry.doc]
            if entry.delta is not None and isinstance(document, CrdtDocument):
                joined.setdefault(entry.doc, (document.state, []))[1].append(entry.delta)
                document.mutate(_returning(entry.delta))
            self._changes[entry.doc] += 1
            if self.store is not None:
                origin, seq = self._seq_cover.get(entry.doc, (entry.origin, 0))
                last = max(seq, entry.last) if origin == entry.origin else entry.last
                self._seq_cover[entry.doc] = (entry.origin, last)
            self.gossip.local_update(entry.doc, entry.data, now)
        for doc, deltas in failed.items():
            self._dots.drop_inflight(doc, deltas)
        for doc, (before, deltas) in joined.items():
            document = self.docs[doc]
            assert isinstance(document, CrdtDocument)
            self._dots.committed(doc, deltas, before, document.state)
        self._wake.set()

    async def publish_app(
        self, channel: str, body: Any, *, retain: bool, to: str | None = None
    ) -> None:
        """Publish an application message, signed, QoS 1: "alg" or "policy", or
        "cmd" / "cmdr" addressed ``to`` a node (never retained).

        Raises TransportError when the broker is unreachable (the caller owns
        the retry: algedonic signals are re-sent until acknowledged);
        ValueError for an unknown channel or a missing or bad addressee.
        """
        if channel in ("cmd", "cmdr"):
            if to is None or not to or any(c in to for c in "/+#") or len(to) > 64 or retain:
                raise ValueError(f"{channel} needs an addressee node id and is never retained")
            topic = f"{self._prefix}{channel}/{to}"
        elif to is not None:
            raise ValueError(f"{channel} is not addressed")
        elif channel == "alg":
            topic = f"{self._prefix}alg/{self.node}"
        elif channel == "policy":
            topic = policy_topic(self.mesh)
        else:
            raise ValueError(f"unknown application channel {channel!r}")
        await self.transport.publish(topic, self._seal(channel, body), qos=1, retain=retain)
        self._count_out(channel)

    def online_peers(self) -> list[str]:
        return sorted(name for name, p in self.peers.items() if p.online)

    def statistics(self) -> dict[str, Any]:
        g = self.gossip.statistics()
        t = self.transport.statistics()
        return {
            "node": self.node,
            "incarnation": self.incarnation,
            "transport": {
                "state": t.state.value,
                "protocol": t.protocol,
                "messages_in": t.messages_in,
                "messages_out": t.messages_out,
                "bytes_in": t.bytes_in,
                "bytes_out": t.bytes_out,
                "reconnects": t.reconnects,
                "messages_dropped": t.messages_dropped,
            },
            "gossip": {"peers": g.peers, "pending": g.pending, **g.counters},
            "refused": dict(self._refused),
            "counts": dict(self._counts),
            "hlc": str(self.clock.last),
            "store_fault": (
                None if (f := self._faults.fault) is None else f.as_json(trio.current_time())
            ),
            "writes_refused": self._faults.refused,
            "store_faults": self._faults.faults,
            "store_recoveries": self._faults.recoveries,
            "dot_floor": dict(self._dots.floor),
        }

    # -- the service ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: recover, connect, gossip; flush state on the way out."""
        if self._running:
            raise RuntimeError("Replicator.run() is already running")
        self._running = True
        await self._recover()
        # The transport outlives the other tasks by the goodbye: a clean
        # DISCONNECT makes the broker drop our will, so without an explicit
        # "offline" presence peers would see us online until we come back.
        transport_scope = trio.CancelScope(shield=True)

        async def run_transport(task_status: trio.TaskStatus[None]) -> None:
            with transport_scope:
                await self.transport.run(task_status=task_status)

        try:
            async with trio.open_nursery() as outer:
                await outer.start(run_transport)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._receiver)
                        nursery.start_soon(self._connection_watch)
                        nursery.start_soon(self._ticker)
                        nursery.start_soon(self._presence_keeper)
                        nursery.start_soon(self._publisher, self._delta_recv)
                        for _ in range(self.config.publishers):
                            nursery.start_soon(self._publisher, self._out_recv)
                        nursery.start_soon(self._store_watch)
                        nursery.start_soon(self._claim_dots)
                        nursery.start_soon(self._ceiling_keeper)
                        if self.store is not None:
                            nursery.start_soon(self._snapshotter)
                            nursery.start_soon(self._spiller)
                            nursery.start_soon(self._outbox_drainer)
                        self._started.set()
                        task_status.started()
                finally:
                    with trio.CancelScope(shield=True):
                        try:
                            await self._goodbye()
                        finally:  # whatever happened, the transport must not outlive us
                            transport_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._flush_snapshots()

    async def _goodbye(self) -> None:
        """Publish our "offline" presence (retained), bounded by ``goodbye_timeout``."""
        if not self._announced.is_set():
            return  # never announced: nothing to retract
        try:
            payload = self._seal("presence", self._presence_body(online=False))
        except (SyncError, OSError, ValueError) as exc:
            # Signed at start, our last will says the same thing.
            log.warning("cannot seal the offline presence (%s); sending the last will", exc)
            payload = self._will_payload
        with trio.move_on_after(self.config.goodbye_timeout):
            try:
                await self.transport.publish(
                    presence_topic(self.mesh, self.node), payload, qos=1, retain=True
                )
                self._count_out("presence")
            except TransportError:
                pass  # disconnected: the broker already published our will

    async def _recover(self) -> None:
        if self.store is None:
            return
        for name, document in self.docs.items():
            snapshot = await self.store.get_snapshot(name)
            if snapshot is not None:
                try:
                    document.load(snapshot.state)
                except WireError as exc:
                    raise SyncError(f"stored snapshot of {name!r} is unreadable: {exc}") from exc
            for entry in await self.store.uncovered_deltas(name):
                document.apply(entry.delta)
            if isinstance(document, CrdtDocument):
                self._seq_cover[name] = (self.node, document.state.digest().max(self.node))
                self._dots.reserved[name] = await self.store.reserved_seq(name, self.node)

    async def _claim_dots(self) -> None:
        """Before the first mint: claim our counters (module ``_dots``), then let writes in."""
        docs = {n: d for n, d in self.docs.items() if isinstance(d, CrdtDocument)}

        def own() -> dict[str, int]:
            return {name: d.state.digest().max(self.node) for name, d in docs.items()}

        def online() -> list[str]:
            return [name for name, p in self.peers.items() if p.online]

        with trio.move_on_after(self.config.claim_timeout):
            await self._announced.wait()
            settle_at = trio.current_time() + self.config.claim_settle
            # Polled: digests, repairs and presences (the ingress path) all move
            # the condition, and only in the first seconds after a start.
            while True:
                peers = online()
                if not peers and trio.current_time() >= settle_at:
                    break
                if peers and self._dots.settled(own(), self.gossip.peer_digests(), peers):
                    break
                await trio.sleep(0.05)
        plans = self._dots.claim(own(), self.gossip.peer_digests(), online())
        for name, plan in plans.items():
            for peer in plan.refused:
                self._counts["dot_claims_refused"] += 1
                log.warning(
                    "%s claims a counter of ours in %s beyond MAX_DOT_JUMP: ignored", peer, name
                )
            if plan.learned:
                log.info("%s: minting above %d (learned %d from peers)", name, plan.floor,
                         plan.learned)  # fmt: skip
        self._claimed.set()

    # -- store faults (module _faults) -------------------------------------------

    def _store_failed(self, exc: BaseException, operation: str) -> None:
        if self._faults.failed(exc, operation, trio.current_time(), self.clock.physical_ms()):
            self._recovered = trio.Event()
            self._fault_wake.set()

    async def _store_watch(self) -> None:
        """Notice the clock's failed ceiling writes; retry a faulted store until it works."""
        attempt = 0
        faulted = False
        worked_since = trio.current_time()
        while True:
            if self._faults.fault is None:
                error = self.clock.ceiling_error
                if error is None:
                    self._fault_wake = trio.Event()
                    # The clock cannot wake us (it fails inside any caller): look each second.
                    with trio.move_on_after(1.0):
                        await self._fault_wake.wait()
                    continue
                self._store_failed(error, "hlc ceiling")
            if not faulted:
                faulted = True
                # A store that fails again soon after it recovered (a disk on
                # the edge of full) keeps backing off: no fast flapping.
                relapse = trio.current_time() - worked_since < self.config.fault_retry.maximum
                attempt = attempt + 1 if relapse else 0
            await trio.sleep(self.config.fault_retry.ceiling(attempt))
            try:
                await self._try_writes()
            except (SyncError, OSError) as exc:
                self._store_failed(exc, "retry")
                attempt += 1
                continue
            faulted = False
            worked_since = trio.current_time()
            self._faults.cleared(worked_since)
            self._recovered.set()
            self._outbox_wake.set()

    async def _ceiling_keeper(self) -> None:
        """Keep the clock's stored ceiling ahead, in the store's worker thread,
        so that stamping (on the loop) does not write it (HLC.ceiling_ahead)."""
        while True:
            await trio.sleep(CEILING_CHECK_S)
            ceiling = self.clock.ceiling_ahead()
            if ceiling is None or self._faults.fault is not None:
                continue
            try:
                if self.store is not None:
                    await self.store.run_sync(self.clock.store_ceiling, ceiling)
                else:
                    await trio.to_thread.run_sync(self.clock.store_ceiling, ceiling)
            except (SyncError, OSError) as exc:
                self._store_failed(exc, "hlc ceiling")
                continue
            self.clock.ceiling_stored(ceiling)

    async def _try_writes(self) -> None:
        """What must work before the fault clears: the clock's ceiling, a write, snapshots."""
        self.clock.persist_ceiling()  # a deferred failure of a stamp's own write
        ahead = self.clock.ceiling_ahead()  # and the keeper's (_ceiling_keeper)
        if ahead is not None:
            self.clock.store_ceiling(ahead)
            self.clock.ceiling_stored(ahead)
        if self.store is not None:
            await self.store.probe(room=PROBE_ROOM)
            await self._flush_snapshots(strict=True)

    # -- outgoing ---------------------------------------------------------------

    def _presence_body(self, *, online: bool) -> dict[str, Any]:
        return {
            "node": self.node,
            "pk": self.key.public_key,
            "inc": self.incarnation,
            "state": "online" if online else "offline",
            "zone": self.config.zone,
            "mesh": self.mesh,
            "broker": self.config.broker_url,
        }

    def _will(self) -> Will:
        return Will(
            topic=presence_topic(self.mesh, self.node),
            payload=self._will_payload,
            qos=1,
            retain=True,
        )

    def _stamp(self) -> Timestamp:
        try:
            return self.clock.now()
        except (StoreError, OSError) as exc:  # a clock that does not defer ceiling errors
            self._store_failed(exc, "hlc ceiling")
            # Issued before, so below the stored ceiling; (kid, hlc, nonce) stays unique.
            return self.clock.last

    def _seal(self, kind: str, body: Any) -> bytes:
        # Presence is never encrypted: it carries the public key that everyone,
        # outside tools included, verifies this node's envelopes with.
        mesh_key = self.mesh_key if kind != "presence" else None
        iv = self._randbytes(12) if mesh_key is not None else None
        return sign_envelope(
            dumps(body),
            self.key,
            hlc=self._stamp(),
            kind=kind,
            nonce=self._randbytes(8),
            mesh_key=mesh_key,
            iv=iv,
            max_size=self.config.max_envelope,
        )

    def _count_out(self, kind: str) -> None:
        self._counts[f"out_{kind}"] += 1

    def _flush_actions(self) -> None:
        if not self._announced.is_set():
            return  # held in the gossip core until our presence (our key) is out
        for action in self.gossip.drain():
            if isinstance(action, Broadcast):
                channel = "d" if action.kind == "delta" else "sv"
                topic = f"{self._prefix}{channel}/{self.node}"
            else:
                assert isinstance(action, Direct)
                topic = f"{self._prefix}to/{action.to}"
            qos = _QOS.get(action.kind, 1)
            item = (topic, action.kind, action.body, qos)
            ordered = isinstance(action, Broadcast) and action.kind == "delta"
            try:
                (self._delta_send if ordered else self._out_send).send_nowait(item)
            except trio.WouldBlock:
                self._spill(item)

    def _spill(self, item: tuple[str, str, Any, int]) -> None:
        """Keep a broadcast delta we cannot send now; drop the rest (counted)."""
        topic, kind, body, _ = item
        if kind == "delta" and self.store is not None and "/d/" in topic:
            try:
                self._spill_send.send_nowait((topic, dumps(body)))
            except trio.WouldBlock:
                pass
            else:
                self._counts["spilled_to_outbox"] += 1
                return
        self._counts[f"dropped_{kind}"] += 1  # anti-entropy repairs what is dropped

    async def _spiller(self) -> None:
        assert self.store is not None
        async for topic, payload in self._spill_recv:
            try:
                await self.store.enqueue(topic, payload, qos=1)
            except SyncError as exc:  # the delta is in the log: anti-entropy repairs it
                self._counts["outbox_errors"] += 1
                if isinstance(exc, StoreFullError):
                    log.warning("outbox enqueue refused: %s", exc)
                else:
                    self._store_failed(exc, "outbox")
            self._outbox_wake.set()

    async def _publisher(
        self, channel: trio.MemoryReceiveChannel[tuple[str, str, Any, int]]
    ) -> None:
        async for topic, kind, body, qos in channel:
            try:
                payload = self._seal(kind, body)
            except ValueError:  # larger than the envelope limit: a bug upstream
                self._counts["oversized"] += 1
                log.exception("cannot seal %s for %s", kind, topic)
                continue
            try:
                await self.transport.publish(topic, payload, qos=qos)
                self._count_out(kind)
            except TransportError:
                self._spill((topic, kind, body, qos))

    async def _outbox_drainer(self) -> None:
        """Send the outbox when connected, coalescing what queued up.

        Consecutive queued deltas of one topic leave as one envelope of at
        most ``batch_max_bytes`` of deltas: after an outage a node sends its
        backlog as a few batches, not as one message per delta it made
        meanwhile (which its peers' gateways would rightly take for a flood).
        """
        assert self.store is not None
        limit = self.config.gossip.batch_max_bytes
        while True:
            await self._recovered.wait()
            await self.transport.wait_connected()
            try:
                batch = await self.store.peek(64)  # writes: it deletes expired messages
            except StoreError as exc:
                self._store_failed(exc, "outbox")
                await trio.sleep(self.config.outbox_retry)
                continue
            if not batch:
                self._outbox_wake = trio.Event()
                with trio.move_on_after(self.config.outbox_retry):
                    await self._outbox_wake.wait()
                continue
            groups: list[tuple[str, int, list[Any], list[int]]] = []
            size = 0
            for message in batch:
                try:
                    body = loads(message.payload, max_size=self.config.max_envelope)
                except WireError:
                    body = None
                if not isinstance(body, list):  # a delta body is a list of [doc, data]
                    self._counts["outbox_unreadable"] += 1
                    groups.append((message.topic, message.qos, [], [message.id]))
                    size = self.config.max_envelope  # nothing joins it
                    continue
                length = len(message.payload)
                last = groups[-1] if groups else None
                if last is not None and last[0] == message.topic and size + length <= limit:
                    last[2].extend(body)
                    last[3].append(message.id)
                    size += length
                else:
                    groups.append((message.topic, message.qos, list(body), [message.id]))
                    size = length
            for topic, qos, body, ids in groups:
                try:
                    if body:  # an unreadable message is only acknowledged (dropped)
                        payload = self._seal("delta", body)
                        await self.transport.publish(topic, payload, qos=qos)
                except TransportError:
                    await trio.sleep(self.config.outbox_retry)
                    break
                except ValueError:  # past the envelope limit: only a lone oversized delta can be
                    self._counts["outbox_unreadable"] += 1
                try:
                    await self.store.ack(*ids)
                except StoreError as exc:  # sent, not acked: it goes again (receivers dedupe)
                    self._store_failed(exc, "outbox")
                    break
                self._counts["outbox_sent"] += len(ids)
                self._counts["outbox_batches"] += 1

    async def _ticker(self) -> None:
        # Nothing leaves before our presence: peers verify us with its key.
        await self._announced.wait()
        while True:
            now = trio.current_time()
            self.gossip.tick(now)
            for event in self.gossip.events():
                self._joined(event)
            self._flush_actions()
            deadline = self.gossip.next_deadline()
            self._wake = trio.Event()
            with trio.move_on_at(deadline):
                await self._wake.wait()

    async def _connection_watch(self) -> None:
        """On every (re)connection: subscribe, announce presence, send digests."""
        subscribed = False
        while True:
            await self.transport.wait_connected()
            try:
                if not subscribed:  # the transport keeps them across reconnects
                    # Presence first: its retained messages carry the keys
                    # that every later message is verified with.
                    for channel in (
                        "presence/+",
                        "d/+",
                        "sv/+",
                        f"to/{self.node}",
                        "alg/+",
                        f"cmd/{self.node}",
                        f"cmdr/{self.node}",
                    ):
                        await self.transport.subscribe(f"{self._prefix}{channel}", qos=1)
                    await self.transport.subscribe(f"{self._prefix}policy", qos=1)
                    subscribed = True
                await self._publish_presence()
                self._announced.set()
            except TransportError:
                await trio.sleep(0.1)
                continue
            self.gossip.request_digest_now(trio.current_time())
            self._wake.set()
            self._outbox_wake.set()
            await self.transport.wait_disconnected()

    async def _publish_presence(self) -> None:
        payload = self._seal("presence", self._presence_body(online=True))
        self._presence_sent = payload
        await self.transport.publish(
            presence_topic(self.mesh, self.node), payload, qos=1, retain=True
        )
        self._count_out("presence")

    async def _presence_keeper(self) -> None:
        """Re-publish our presence when another one appears on our topic.

        Without broker ACLs anybody can publish a retained presence on our
        topic; peers that pinned our key refuse it, but a peer that restarts
        would hear only that one. At most once per PRESENCE_HEAL_S.
        """
        while True:
            await self._presence_heal.wait()
            self._presence_heal = trio.Event()
            if self._announced.is_set():
                try:
                    await self._publish_presence()
                    self._counts["presence_restored"] += 1
                except TransportError:
                    pass  # the next connection publishes it anyway
            await trio.sleep(PRESENCE_HEAL_S)

    async def _snapshotter(self) -> None:
        while True:
            await trio.sleep(self.config.snapshot_interval)
            await self._flush_snapshots()

    async def _flush_snapshots(self, *, strict: bool = False) -> None:
        """Snapshot every changed document. While the store is faulted only the
        recovery task tries (``strict``: a failing write raises)."""
        if self.store is None or (self._faults.fault is not None and not strict):
            return
        for name, document in self.docs.items():
            changes = self._changes[name]
            if changes == self._snapshotted[name]:
                continue
            cover: dict[str, int] = {}
            if name in self._seq_cover:
                origin, seq = self._seq_cover[name]
                cover[origin] = seq
            digest = dumps(document.digest())  # taken with the state it describes
            try:
                if isinstance(document, CrdtDocument):
                    # The state is an immutable value: encode it off the loop.
                    state = document.state
                    data = await trio.to_thread.run_sync(_encode_state, state)
                    document.remember_encoding(state, data)
                else:
                    data = document.encode_state()
                await self.store.put_snapshot(name, data, digest=digest, cover=cover)
            except SyncError as exc:
                self._counts["snapshot_errors"] += 1
                if isinstance(exc, StoreFullError):  # a bound: the log keeps every delta
                    log.warning("snapshot of %s refused: %s", name, exc)
                    continue
                if strict:
                    raise
                self._store_failed(exc, "snapshot")
                return
            self._snapshotted[name] = changes
            self._counts["snapshots"] += 1

    # -- incoming ---------------------------------------------------------------

    async def _receiver(self) -> None:
        async for message in self.transport.messages:
            self._charge.clear()
            started = time.perf_counter()
            try:
                self._receive(message)
            except Exception:  # a bug must not kill replication; it is logged and counted
                self._refused["internal-error"] += 1
                log.exception("error while handling a message on %s", message.topic)
            if self._charge:
                spent = time.perf_counter() - started
                self._inlet.budget.spend(self._charge[0], spent, trio.current_time(), self.peers)
            self._flush_actions()

    def _refuse(self, reason: str) -> None:
        self._refused[reason] += 1

    def _receive(self, message: Message) -> None:
        """One message: the ingress core admits it, then clock, presence or dispatch."""
        now = trio.current_time()
        outcome = self._inlet.admit(
            message.topic,
            message.payload,
            message.retain,
            presence_sent=self._presence_sent,
            now=now,
            now_ms=self.clock.physical_ms(),
        )
        if not isinstance(outcome, Admitted):
            self._not_admitted(outcome)
            return
        inbound = outcome.inbound
        sender, envelope = inbound.sender, inbound.envelope
        if outcome.rule.charged:
            self._charge.append(sender)
        if not inbound.retained:
            try:
                self.clock.update(envelope.timestamp(sender))
            except ClockDriftError:
                self._refuse("clock-drift")
                return
        if outcome.presence is not None:
            self._on_presence(outcome.presence, envelope, now)
            return
        try:
            body = self._inlet.open(outcome)
        except WireError:
            self._refuse("undecodable-payload")
            return
        peer = self.peers.get(sender)
        if peer is not None:
            peer.last_seen = now
        self._counts[f"in_{envelope.kind}"] += 1
        if outcome.rule.handler == "gossip":
            direct = inbound.channel == "to"
            broken = self.gossip.receive(sender, envelope.kind, body, now, direct=direct)
            for event in self.gossip.events():
                self._joined(event)
            if broken is not None:
                self._refuse(broken.reason)
                log.info("refused deltas from %s: %s", sender, broken)
                if broken.blame and self.blame is not None:
                    self.blame(sender, broken.reason)
        elif self.on_app is not None:  # "alg", "policy", "cmd" or "cmdr"
            refused = self.on_app(inbound.channel, sender, body, envelope)
            if refused is not None:
                self._refuse(refused)

    def _not_admitted(self, outcome: Refused | Ignored) -> None:
        if isinstance(outcome, Refused):
            self._refuse(outcome.reason)
        elif outcome is OVERWRITTEN:
            # Somebody else's presence on our topic (retained, it is what a
            # peer that restarts hears first): put ours back.
            self._counts["presence_overwritten"] += 1
            self._presence_heal.set()
        elif outcome is CLEARED:
            self._counts["in_cleared"] += 1

    def _on_presence(self, body: dict[str, Any], envelope: Envelope, now: float) -> None:
        node = body["node"]
        old = self.peers.get(node)
        if self.key_binding is not None:
            reason = self.key_binding(node, envelope.kid, None if old is None else old.kid)
            if reason is not None:
                self._refuse(f"presence:{reason}")
                self._keep_alternate(node, envelope.kid, body, envelope.hlc)
                return
        # Within one incarnation the broker delivers a node's presence in order
        # (its own publishes, then its will), so only an older incarnation is stale.
        if old is not None and old.kid == envelope.kid and body["inc"] < old.incarnation:
            self._refuse("stale-presence")
            return
        other = self._by_kid.get(envelope.kid)
        if other is not None and other != node:
            if self.peers[other].online:
                self._refuse("presence:key-in-use")  # one key, one node id at a time
                return
            self._unbind(other)
        if old is None and not self._make_room(now):
            self._refuse("peer-table-full")
            return
        self._bind(body, envelope.kid, envelope.hlc, now)

    def _unbind(self, node: str) -> None:
        peer = self.peers.pop(node)
        self._by_kid.pop(peer.kid, None)
        self.gossip.peer_gone(node)

    def _bind(self, body: dict[str, Any], kid: bytes, hlc: int, now: float) -> None:
        node = body["node"]
        online = body["state"] == "online"
        old = self.peers.get(node)
        if old is not None and old.kid != kid:
            self._by_kid.pop(old.kid, None)
            self._keep_alternate(node, old.kid, self._body_of(old), old.hlc)
        self._alternates.get(node, {}).pop(kid, None)
        self.peers[node] = PeerInfo(
            node=node,
            kid=kid,
            public_key=body["pk"],
            incarnation=body["inc"],
            zone=body.get("zone", ""),
            online=online,
            last_seen=now,
            hlc=hlc,
            broker=str(body.get("broker", "")),
        )
        self._by_kid[kid] = node
        self._counts["in_presence"] += 1
        if not online:
            self.gossip.peer_gone(node)

    @staticmethod
    def _body_of(peer: PeerInfo) -> dict[str, Any]:
        return {
            "node": peer.node,
            "pk": peer.public_key,
            "inc": peer.incarnation,
            "state": "online" if peer.online else "offline",
            "zone": peer.zone,
            "broker": peer.broker,
        }

    def _keep_alternate(self, node: str, kid: bytes, body: dict[str, Any], hlc: int) -> None:
        if (
            node not in self.peers
            and node not in self._alternates
            and (len(self._alternates) >= self.config.max_peers)
        ):
            return
        kept = self._alternates.setdefault(node, {})
        kept.pop(kid, None)
        kept[kid] = (body, hlc)
        while len(kept) > 2:
            del kept[next(iter(kept))]

    def _make_room(self, now: float) -> bool:
        """Room for one more peer when the table is full: the offline peer seen
        longest ago goes, else one silent for ``EVICT_SILENT_S`` (a presence
        and nothing since); else there is none."""
        if len(self.peers) < self.config.max_peers:
            return True
        gone = min(self.peers.values(), key=lambda p: (p.online, p.last_seen))
        if gone.online and now - gone.last_seen < EVICT_SILENT_S:
            return False
        self._unbind(gone.node)
        self._alternates.pop(gone.node, None)
        self._counts["peers_evicted"] += 1
        return True

    def rebind(self) -> None:
        """The key binding changed (a new zone): re-check every bound and kept presence."""
        if self.key_binding is None:
            return
        now = trio.current_time()
        for node in sorted(set(self.peers) | set(self._alternates)):
            peer = self.peers.get(node)
            if peer is not None and self.key_binding(node, peer.kid, None) is not None:
                self._unbind(node)
                self._keep_alternate(node, peer.kid, self._body_of(peer), peer.hlc)
                self._counts["peers_unbound"] += 1
                peer = None
            if peer is not None:
                continue
            # the newest kept presence the binding accepts now
            for kid, (body, hlc) in reversed(list(self._alternates.get(node, {}).items())):
                if self.key_binding(node, kid, None) is None and self._make_room(now):
                    self._bind(body, kid, hlc, now)
                    break

    def _joined(self, event: Joined) -> None:
        self._changes[event.doc] += 1


def _returning(delta: Any) -> Callable[[Any], Any]:
    """A mutator that returns a delta minted (and committed) already."""
    return lambda _state: delta


def _encode_state(state: Any) -> bytes:
    return dumps(state.to_cbor())


@dataclass(slots=True)
class _Pending:
    """One local delta on its way to the store's log."""

    doc: str
    origin: str
    first: int
    last: int
    data: bytes
    delta: Any = None  # the CRDT delta itself; None for a Yjs update
    done: bool = False
    error: SyncError | None = None


def _append_all(store: Store, batch: list[_Pending], node: str, reserve: dict[str, int]) -> None:
    """Log ``batch`` and reserve ``node``'s counters in one transaction (worker thread).

    A delta the store refuses before writing anything (too large) fails
    alone; an SQLite error fails the whole transaction (raised).
    """
    with store.transaction():
        for entry in batch:
            try:
                store.append_delta(entry.doc, entry.origin, entry.first, entry.last, entry.data)
            except StoreFullError as exc:
                entry.error = exc
        for doc, through in reserve.items():
            store.reserve_seqs(doc, node, through)
