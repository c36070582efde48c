"""The mesh's sections of the node status, and :class:`NodeStatus`, the whole of it.

The agent adds six top-level keys to the VSM's status
(:meth:`Runtime.set_status_section <vsm_edge.agent.vsm.runtime.Runtime.set_status_section>`):

* ``gateway`` (:class:`GatewayStatus`): the ingress guard and its gateway's decisions;
* ``replication`` (:class:`ReplicationStatus`): the replicator, its transport,
  the replication latency of peers' readings, the mesh document's version vector;
* ``store`` (:class:`StoreStatus`): whether the store takes writes, and what is held;
* ``broker`` (:class:`BrokerStatus`): the connection to the MQTT broker (connected,
  reconnecting, refused and why);
* ``discovery`` (:class:`DiscoveryStatus`): peers found by mDNS (while discovery runs);
* ``commands`` (:class:`CommandsStatus`): remote commands run and issued (``mesh.commands``).

:class:`NodeStatus` is the node's status as readers want it: the VSM part
(:class:`~vsm_edge.agent.vsm.status.VsmStatus`) and these sections typed
(each None while absent, a :class:`~vsm_edge.agent.vsm.status.SectionError`
when its provider raised). ``NodeStatus.from_json`` reads the document the
status endpoint serves (the CLI does); ``to_json()`` gives it back, key for key.

The parts made from the sync and models libraries' statistics (plain dicts
there: those libraries know nothing of the agent) are read with ``from_json``
where they enter (:class:`ReplicatorStatistics`, :class:`GatewayCounts`, a
store fault); a counter set named by a library and not read here (the gossip
counters) stays a ``Mapping[str, int]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self, TypeVar

from ..vsm.record import OMIT_NONE, StatusRecord, expect_object
from ..vsm.status import SectionError, SectionParser, StatusSection, VsmStatus

if TYPE_CHECKING:
    from vsm_edge.sync import DiscoveryStatistics, TransportStatistics, ZeroconfDiscovery

__all__ = [
    "BrokerStatus",
    "CommandRecordStatus",
    "CommandsStatus",
    "DiscoveredPeer",
    "DiscoveryCounters",
    "DiscoveryStatus",
    "GatewayCounts",
    "GatewayStatus",
    "LatencyStatus",
    "NodeStatus",
    "QuarantineStatus",
    "ReplicationStatus",
    "ReplicatorStatistics",
    "StoreFaultStatus",
    "StoreStatus",
    "TransportStatus",
    "ZonePolicyStatus",
]


# -- gateway ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayCounts(StatusRecord):
    """The gateway's own counters (``Gateway.statistics()`` of vsm_edge.models)."""

    allow: int
    deny: int
    maybe: int
    reasons: Mapping[str, int]
    quarantined: int
    peers: int


@dataclass(frozen=True, slots=True)
class ZonePolicyStatus(StatusRecord):
    """The zone in force: from policy ``version``, its ``epoch``, Bloom ``filters`` and ``bits``."""

    version: int
    epoch: int
    filters: int
    bits: int


@dataclass(frozen=True, slots=True)
class QuarantineStatus(StatusRecord):
    peer: str
    reason: str
    since_ms: int
    until_ms: int


@dataclass(frozen=True, slots=True)
class GatewayStatus(StatusRecord):
    """The ``gateway`` section: decisions, the arbitrator, the zone, quarantines, proposals.

    ``allow`` + ``deny`` is every decision, ``maybe`` those the arbitrator made;
    ``zone`` is "open" or "policy"; ``proposals`` maps a peer to the nodes
    proposing its quarantine.
    """

    allow: int
    deny: int
    maybe: int
    reasons: Mapping[str, int]
    quarantined: int
    peers: int
    arbitrator: bool
    arbitrator_state: str
    arbitrator_error: str | None
    zone: str
    zone_policy: ZonePolicyStatus | None
    zone_problem: str | None
    quarantine: tuple[QuarantineStatus, ...]
    proposals: Mapping[str, tuple[str, ...]]
    proposal_checks: Mapping[str, int]
    retained_refused: Mapping[str, int]


# -- replication and store -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransportStatus(StatusRecord):
    """The MQTT transport (``state`` connected, connecting...)."""

    state: str
    protocol: str
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    reconnects: int
    messages_dropped: int


@dataclass(frozen=True, slots=True)
class StoreFaultStatus(StatusRecord):
    """Why the store refuses writes (sync's ``StoreFault``), for ``for_s`` seconds now."""

    cause: str
    message: str
    operation: str
    since_ms: int
    for_s: float
    failures: int
    last_message: str


@dataclass(frozen=True, slots=True)
class LatencyStatus(StatusRecord):
    """Replication latency of peers' readings, ms: only ``count`` while there is none."""

    count: int
    p50: float | None = field(default=None, metadata=OMIT_NONE)
    p99: float | None = field(default=None, metadata=OMIT_NONE)
    max: float | None = field(default=None, metadata=OMIT_NONE)
    mean: float | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, slots=True)
class ReplicatorStatistics(StatusRecord):
    """The replicator's own statistics (sync's ``Replicator.statistics()``, read here).

    ``gossip`` holds the gossip core's counters by the names sync gives them.
    """

    node: str
    incarnation: int
    transport: TransportStatus
    gossip: Mapping[str, int]
    refused: Mapping[str, int]
    counts: Mapping[str, int]
    hlc: str
    store_fault: StoreFaultStatus | None
    writes_refused: int
    store_faults: int
    store_recoveries: int
    dot_floor: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ReplicationStatus(StatusRecord):
    """The ``replication`` section: the replicator's statistics and what the agent measures.

    In JSON, ``replicator``'s keys are spread into the section's object, then
    come the agent's: ``latency_ms``, the peers online, the mesh document's
    ``keys``, ``digest`` and version vector ``vv``, ``alarms_heard_ms`` the
    arrival latency of peers' alarms and ``alarms_s5_ms`` the same up to S5.
    """

    replicator: ReplicatorStatistics
    latency_ms: LatencyStatus
    online_peers: tuple[str, ...]
    keys: int
    digest: str
    vv: Mapping[str, int]
    alarms_heard_ms: Mapping[str, float]
    alarms_s5_ms: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        measured = super(ReplicationStatus, self).to_json()
        del measured["replicator"]
        return {**self.replicator.to_json(), **measured}

    @classmethod
    def from_json(cls, obj: object, path: str = "status") -> Self:
        items = expect_object(obj, path)
        measured = _Measured.from_json(items, path)
        return cls(
            ReplicatorStatistics.from_json(items, path),
            measured.latency_ms,
            measured.online_peers,
            measured.keys,
            measured.digest,
            measured.vv,
            measured.alarms_heard_ms,
            measured.alarms_s5_ms,
        )


@dataclass(frozen=True, slots=True)
class _Measured(StatusRecord):
    """The keys of the ``replication`` object that the agent adds."""

    latency_ms: LatencyStatus
    online_peers: tuple[str, ...]
    keys: int
    digest: str
    vv: Mapping[str, int]
    alarms_heard_ms: Mapping[str, float]
    alarms_s5_ms: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class StoreStatus(StatusRecord):
    """The ``store`` section: ``ok`` while the store takes writes; what a fault holds back."""

    ok: bool
    fault: StoreFaultStatus | None
    faults: int
    recoveries: int
    writes_refused: int
    readings_held: int
    readings_replaced: int
    rounds_held: int


# -- broker -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerStatus(StatusRecord):
    """The ``broker`` section: the connection to the MQTT broker at ``address``.

    ``state`` is ``connected``; ``connecting`` (the first attempt, not failed
    yet); ``reconnecting`` (attempts failed or the connection was lost:
    ``attempts`` failed in a row, the next in ``next_attempt_in_s``,
    ``last_error`` the last failure); ``refused`` (the broker answered and said
    no: ``refused`` is its reason, e.g. "Bad user name or password" or "Not
    authorized"; the agent keeps retrying); or ``stopped``. ``since_ms`` (wall
    clock, ms) is when the connection came up while connected, else when it
    went down (or the agent started). The counters are the transport's since
    the agent started.
    """

    address: str
    state: str
    protocol: str | None
    since_ms: int | None
    attempts: int
    next_attempt_in_s: float | None
    refused: str | None
    last_error: str | None
    connects: int
    reconnects: int
    connect_failures: int
    connections_lost: int

    @classmethod
    def of(
        cls, stats: TransportStatistics, address: str, *, now: float, wall_ms: int
    ) -> BrokerStatus:
        """From the transport's statistics; ``now`` is Trio's clock, ``wall_ms`` the wall's."""
        state = stats.state.value
        if state == "connected":
            since = stats.connected_since
        else:
            since = stats.disconnected_since
            if state in ("idle", "closed"):
                state = "connecting" if state == "idle" else "stopped"
            elif stats.refused is not None:
                state = "refused"
            elif stats.attempts or stats.connections_lost:
                state = "reconnecting"
            else:
                state = "connecting"
        next_in = None
        if stats.next_attempt_at is not None:
            next_in = round(max(stats.next_attempt_at - now, 0.0), 3)
        return cls(
            address=address,
            state=state,
            protocol=stats.protocol,
            since_ms=None if since is None else wall_ms - round((now - since) * 1000),
            attempts=stats.attempts,
            next_attempt_in_s=next_in,
            refused=stats.refused,
            last_error=stats.last_error,
            connects=stats.connects,
            reconnects=stats.reconnects,
            connect_failures=stats.connect_failures,
            connections_lost=stats.connections_lost,
        )


# -- discovery --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveredPeer(StatusRecord):
    addresses: tuple[str, ...]
    port: int
    zone: str
    broker: str | None


@dataclass(frozen=True, slots=True)
class DiscoveryCounters(StatusRecord):
    """The discovery table's counters (sync's ``DiscoveryStatistics``, field for field)."""

    live: int
    gone: int
    heard: int
    queries: int
    skipped_queries: int
    goodbyes: int
    stale: int
    expired: int
    foreign_mesh: int
    rejected: int
    overflow: int
    events: int
    last_error: str

    @classmethod
    def of(cls, stats: DiscoveryStatistics) -> DiscoveryCounters:
        return cls(**{f.name: getattr(stats, f.name) for f in dataclasses.fields(cls)})


@dataclass(frozen=True, slots=True)
class DiscoveryStatus(StatusRecord):
    """The ``discovery`` section: peers found by mDNS (node -> where), and the counters."""

    peers: Mapping[str, DiscoveredPeer]
    statistics: DiscoveryCounters

    @classmethod
    def of(cls, discovery: ZeroconfDiscovery) -> DiscoveryStatus:
        return cls(
            peers={
                node: DiscoveredPeer(
                    addresses=tuple(peer.addresses),
                    port=peer.port,
                    zone=peer.advertisement.zone,
                    broker=peer.advertisement.broker,
                )
                for node, peer in sorted(discovery.peers().items())
            },
            statistics=DiscoveryCounters.of(discovery.statistics()),
        )


# -- the whole ---------------------------------------------------------------------------

# -- commands ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandRecordStatus(StatusRecord):
    """One outcome, as the ``commands`` section lists it (``issuer``: who asked)."""

    id: str
    issuer: str
    node: str
    target: str  # unit.command
    status: str
    why: str
    at: int


@dataclass(frozen=True, slots=True)
class CommandsStatus(StatusRecord):
    """The ``commands`` section: outcomes counted by role and status, the latest ones.

    ``executed`` counts commands this node ran for others (and itself) by
    outcome; ``issued`` the commands it sent by outcome (``timed-out``
    included); ``duplicates`` redeliveries answered from memory; ``refused``
    messages refused before any outcome (malformed, not for this node,
    queue full), by reason.
    """

    executed: Mapping[str, int]
    issued: Mapping[str, int]
    duplicates: int
    refused: Mapping[str, int]
    recent: tuple[CommandRecordStatus, ...]


SECTIONS: Mapping[str, SectionParser] = {
    "gateway": SectionError.parse(GatewayStatus.from_json),
    "replication": SectionError.parse(ReplicationStatus.from_json),
    "store": SectionError.parse(StoreStatus.from_json),
    "broker": SectionError.parse(BrokerStatus.from_json),
    "discovery": SectionError.parse(DiscoveryStatus.from_json),
    "commands": SectionError.parse(CommandsStatus.from_json),
}
"""How each mesh section is read from JSON (an ``{"error": ...}`` object is a SectionError)."""

_S = TypeVar("_S", bound=StatusSection)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """One agent's status: ``vsm`` and, read from its sections, the mesh's (see the module)."""

    vsm: VsmStatus

    @property
    def gateway(self) -> GatewayStatus | SectionError | None:
        return self._section("gateway", GatewayStatus)

    @property
    def replication(self) -> ReplicationStatus | SectionError | None:
        return self._section("replication", ReplicationStatus)

    @property
    def store(self) -> StoreStatus | SectionError | None:
        return self._section("store", StoreStatus)

    @property
    def broker(self) -> BrokerStatus | SectionError | None:
        return self._section("broker", BrokerStatus)

    @property
    def commands(self) -> CommandsStatus | SectionError | None:
        return self._section("commands", CommandsStatus)

    @property
    def discovery(self) -> DiscoveryStatus | SectionError | None:
        return self._section("discovery", DiscoveryStatus)

    def _section(self, key: str, kind: type[_S]) -> _S | SectionError | None:
        value = self.vsm.sections.get(key)
        if value is None or isinstance(value, kind | SectionError):
            return value
        raise TypeError(f"status section {key!r} is a {type(value).__name__}, not {kind.__name__}")

    def to_json(self) -> dict[str, Any]:
        """The status document (``GET /status``)."""
        return self.vsm.to_json()

    @classmethod
    def from_json(cls, obj: object, path: str = "status") -> NodeStatus:
        """Read a status document; raises :class:`~vsm_edge.agent.StatusError` naming the place."""
        return cls(VsmStatus.from_json(obj, path, SECTIONS))
