"""The node's VSM status as typed values: what ``vsm-edge status --json`` shows.

:func:`~vsm_edge.agent.vsm.runtime.build_status` reads one runtime at one
instant into a :class:`VsmStatus` (frozen, slotted dataclasses all the way
down); ``to_json()`` gives the status document served at ``GET /status``,
written to ``vsm-state.json`` at shutdown and carried by ``demo --json``::

    {"node": NodeInfo, "s1": S1Status, ..., "s5": S5Status,
     "algedonic": AlgedonicStatus, "peers": [PeerStatus], <sections>}

and ``VsmStatus.from_json`` reads such a document back (the CLI reads the
endpoint's answer so). The sections are what other parts add through
:meth:`Runtime.set_status_section <vsm_edge.agent.vsm.runtime.Runtime.set_status_section>`
(the agent adds ``gateway``, ``replication``, ``store`` and ``discovery``, typed
in :mod:`vsm_edge.agent.mesh.status`); the VSM knows them only as values with
a ``to_json()``. The JSON of every type is fixed field by field (see
:mod:`.record`); tests/test_status_types.py holds it to the document the
untyped code produced.

Most fields are typed through; the open-ended ones are ``Mapping[str, Any]``
and say so: a unit's ``detail`` (whatever the unit's own ``status()`` returns)
and a confirming unit's ``last_outcome`` (the runtime's record of the last
command the unit completed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from .._errors import StatusError
from .bus import ChannelStatistics
from .event import Scalar
from .record import OMIT_NONE, StatusRecord, dump, expect_object, kind_of

__all__ = [
    "AlarmStatus",
    "AlgedonicCounters",
    "AlgedonicStatus",
    "AnomalyStatus",
    "AttenuationStatus",
    "BreakerStatus",
    "BudgetStatus",
    "ChannelStatus",
    "CommandsConfirmed",
    "IdentityStatus",
    "LeaseStatus",
    "NodeInfo",
    "OscillationStatus",
    "OutboundStatus",
    "PatternStatus",
    "PatternsStatus",
    "PeerStatus",
    "PolicyStatus",
    "RawSection",
    "S1Status",
    "S2Status",
    "S3Status",
    "S4Status",
    "S5Status",
    "SectionError",
    "StatusRecord",
    "StatusSection",
    "TargetStatus",
    "TaskStatus",
    "UnitStatus",
    "VsmStatus",
]

VSM_KEYS = ("node", "s1", "s2", "s3", "s4", "s5", "algedonic", "peers")


# -- the parts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskStatus(StatusRecord):
    """A supervised task (a unit or a subsystem loop): ``state`` running/restarting/..."""

    state: str
    starts: int
    restarts: int
    crashes: int
    last_error: str


@dataclass(frozen=True, slots=True)
class BudgetStatus(StatusRecord):
    """One S3 token bucket."""

    tokens: float
    capacity: float
    refill_per_s: float
    passed: int


# One bus channel's counters: the bus's own record, typed for the status too.
ChannelStatus = ChannelStatistics


@dataclass(frozen=True, slots=True)
class NodeInfo(StatusRecord):
    """Who and how long: the ``node`` key (``status_port`` None while not serving)."""

    id: str
    mesh: str
    zone: str
    uptime_s: float
    hlc: str
    safe_mode: bool
    status_port: int | None
    published: int
    tasks: Mapping[str, TaskStatus]


@dataclass(frozen=True, slots=True)
class CommandsConfirmed(StatusRecord):
    """A unit that confirms its commands (``confirms_commands``): outcomes so far.

    ``last_outcome`` is the runtime's record of the last one (``id``,
    ``command``, ``value``, ``ok``, ``error``, ``at_s``), kept as a mapping.
    """

    commands_confirmed: int
    commands_failed: int
    last_outcome: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class UnitStatus(StatusRecord):
    """One S1 unit. In JSON, ``task`` and ``confirmed`` are spread into the unit's object.

    ``task`` is None before the supervisor started the unit; ``confirmed`` is
    None for a unit that does not confirm commands; ``detail`` is None for a
    unit without a ``status()`` method, else what it returned (open-ended:
    plugin code decides; ``{"error": ...}`` when it raised).
    """

    kind: str
    task: TaskStatus | None
    readings: tuple[str, ...]
    commands: tuple[str, ...]
    emitted: int
    attenuated: int
    blocked: int
    commands_applied: int
    confirmed: CommandsConfirmed | None = None
    detail: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **(self.task.to_json() if self.task is not None else {}),
            "readings": list(self.readings),
            "commands": list(self.commands),
            "emitted": self.emitted,
            "attenuated": self.attenuated,
            "blocked": self.blocked,
            "commands_applied": self.commands_applied,
            **(self.confirmed.to_json() if self.confirmed is not None else {}),
            **({"detail": dump(self.detail)} if self.detail is not None else {}),
        }

    @classmethod
    def from_json(cls, obj: object, path: str = "status") -> Self:
        items = expect_object(obj, path)
        flat = _Flat.from_json(items, path)
        return cls(
            flat.kind,
            TaskStatus.from_json(items, path) if "state" in items else None,
            flat.readings,
            flat.commands,
            flat.emitted,
            flat.attenuated,
            flat.blocked,
            flat.commands_applied,
            CommandsConfirmed.from_json(items, path) if "commands_confirmed" in items else None,
            flat.detail,
        )


@dataclass(frozen=True, slots=True)
class _Flat(StatusRecord):
    """The keys of a unit's object that are not its task's nor its confirmations."""

    kind: str
    readings: tuple[str, ...]
    commands: tuple[str, ...]
    emitted: int
    attenuated: int
    blocked: int
    commands_applied: int
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class S1Status(StatusRecord):
    """S1 operations: the units, and S1's budget, variety and bus channel."""

    units: Mapping[str, UnitStatus]
    budget: BudgetStatus | None
    variety_bits: float | None
    channel: ChannelStatus | None


@dataclass(frozen=True, slots=True)
class TargetStatus(StatusRecord):
    """One S2 target (``unit.command``)."""

    applied: Scalar
    episodes: int
    damped_commands: int
    suppressed: int


@dataclass(frozen=True, slots=True)
class OscillationStatus(StatusRecord):
    """An oscillation S2 detected (``rule`` fight or churn)."""

    target: str
    rule: str
    issuers: tuple[str, ...]
    at: float
    detail: str


@dataclass(frozen=True, slots=True)
class LeaseStatus(StatusRecord):
    holder: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class S2Status(StatusRecord):
    """S2 coordination: damped targets, oscillations, the mesh-wide leases."""

    damped: tuple[str, ...]
    targets: Mapping[str, TargetStatus]
    oscillations: tuple[OscillationStatus, ...]
    budget: BudgetStatus | None
    variety_bits: float | None
    channel: ChannelStatus | None
    leases: Mapping[str, LeaseStatus]


@dataclass(frozen=True, slots=True)
class AttenuationStatus(StatusRecord):
    """S3's attenuation of S1: readings aggregated and dropped, per unit."""

    active: bool
    episodes: int
    aggregated: Mapping[str, int]
    dropped: Mapping[str, int]
    overdraft: int
    exempt: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class BreakerStatus(StatusRecord):
    """One S3 circuit breaker (``state`` closed, open or half-open)."""

    state: str
    consecutive_failures: int
    opens: int
    rejected: int


@dataclass(frozen=True, slots=True)
class S3Status(StatusRecord):
    """S3 control: every budget (by subsystem), attenuation, refusals, breakers."""

    budgets: Mapping[str, BudgetStatus]
    attenuation: AttenuationStatus
    refused_commands: int
    breakers: Mapping[str, BreakerStatus]
    variety_bits: float | None
    channel: ChannelStatus | None


@dataclass(frozen=True, slots=True)
class AnomalyStatus(StatusRecord):
    """An S4 anomaly: ``key`` is ``unit.reading``."""

    key: str
    value: float
    mean: float
    z: float
    at: float


@dataclass(frozen=True, slots=True)
class PatternStatus(StatusRecord):
    name: str
    severity: str
    subject: str
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class PatternsStatus(StatusRecord):
    """Patterns seen: counts by name and the latest few."""

    counts: Mapping[str, int]
    recent: tuple[PatternStatus, ...]


@dataclass(frozen=True, slots=True)
class S4Status(StatusRecord):
    """S4 intelligence: variety per subsystem (bits), the ratio, anomalies, patterns."""

    variety: Mapping[str, float]
    environment_bits: float
    system_bits: float
    variety_ratio: float
    anomalies: int
    recent_anomalies: tuple[AnomalyStatus, ...]
    variety_bits: float | None
    budget: BudgetStatus | None
    channel: ChannelStatus | None
    patterns: PatternsStatus


@dataclass(frozen=True, slots=True)
class IdentityStatus(StatusRecord):
    node: str
    mesh: str
    zone: str
    public_key: str


@dataclass(frozen=True, slots=True)
class PolicyStatus(StatusRecord):
    """The policy in force (``signer`` the admin key id, empty for none)."""

    version: int
    signer: str
    allowed: tuple[str, ...]
    denied: tuple[str, ...]
    zone: bool
    rejected: int
    last_rejection: str


@dataclass(frozen=True, slots=True)
class S5Status(StatusRecord):
    """S5 policy: identity, policy, safe mode, pain, refusals, arbitrations."""

    identity: IdentityStatus
    policy: PolicyStatus
    safe_mode: bool
    safe_mode_entries: int
    pain_level: float
    refusals: int
    arbitrations: Mapping[str, int]
    budget: BudgetStatus | None
    variety_bits: float | None
    channel: ChannelStatus | None


@dataclass(frozen=True, slots=True)
class AlarmStatus(StatusRecord):
    """An alarm (a delivered pain signal, mesh-wide state) or, among ``events``, good news.

    ``state`` is the mesh's (``raised``, ``acknowledged``, ``cleared``);
    ``acked`` is true once acknowledged or cleared, ``acked_by``/``acked_at_ms``
    the first node to acknowledge and the wall time of its HLC stamp,
    ``cleared_by``/``cleared_at_ms`` the same for clearing.
    """

    id: str
    node: str
    source: str
    intensity: float
    valence: str
    reason: str
    critical: bool
    remote: bool
    age_s: float
    acked: bool
    escalated: bool
    folded: int
    state: str = "raised"
    acked_by: str | None = field(default=None, metadata=OMIT_NONE)
    acked_at_ms: int | None = field(default=None, metadata=OMIT_NONE)
    cleared_by: str | None = field(default=None, metadata=OMIT_NONE)
    cleared_at_ms: int | None = field(default=None, metadata=OMIT_NONE)


@dataclass(frozen=True, slots=True)
class AlgedonicCounters(StatusRecord):
    received: int
    delivered: int
    adapted: int
    folded: int
    storms: int
    escalations: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class OutboundStatus(StatusRecord):
    """The algedonic port: signals waiting for the mesh, sent, dropped, superseded."""

    pending: int
    sent: int
    dropped: int
    superseded: int


@dataclass(frozen=True, slots=True)
class AlgedonicStatus(StatusRecord):
    """The algedonic channel: the mesh's latest 64 alarms (newest first), baselines, the storm.

    ``active`` counts the unsettled alarms; ``critical`` names the active
    critical ones (why S5 is, or is about to be, in safe mode); ``events`` is
    the latest good news (pleasure signals), newest first; ``ledger`` counts
    the alarm ledger's upkeep.
    """

    alarms: tuple[AlarmStatus, ...]
    active: int
    baselines: Mapping[str, float]
    storm: AlarmStatus | None
    counters: AlgedonicCounters
    channel: ChannelStatus | None
    outbound: OutboundStatus
    critical: tuple[str, ...] = ()
    events: tuple[AlarmStatus, ...] = ()
    ledger: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerStatus(StatusRecord):
    """A peer in S4's mesh view, from its replicated report."""

    node: str
    zone: str
    last_seen_s: float
    stale: bool
    health: float
    safe_mode: bool
    variety_ratio: float
    alarms: tuple[str, ...]


# -- sections ------------------------------------------------------------------------------


class StatusSection(Protocol):
    """A top-level key added by another part: anything with ``to_json()``."""

    def to_json(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class SectionError(StatusRecord):
    """A section whose provider raised: ``{"error": repr(exc)}`` in its place."""

    error: str

    @classmethod
    def parse(cls, parse: Callable[[object, str], StatusSection]) -> SectionParser:
        """``parse``, except that an object with only ``error`` is a :class:`SectionError`."""

        def section(obj: object, path: str) -> StatusSection:
            if isinstance(obj, Mapping) and set(obj) == {"error"}:
                return cls.from_json(obj, path)
            return parse(obj, path)

        return section


SectionParser = Callable[[object, str], StatusSection]


@dataclass(frozen=True, slots=True)
class RawSection:
    """A section read from JSON that no parser was given for: its JSON, as it was."""

    value: Any

    def to_json(self) -> Any:
        return self.value


# -- the whole ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VsmStatus(StatusRecord):
    """The status of one node's VSM, and the sections other parts added (in order)."""

    node: NodeInfo
    s1: S1Status
    s2: S2Status
    s3: S3Status
    s4: S4Status
    s5: S5Status
    algedonic: AlgedonicStatus
    peers: tuple[PeerStatus, ...]
    sections: Mapping[str, StatusSection] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = {key: dump(getattr(self, key)) for key in VSM_KEYS}
        for key, section in self.sections.items():
            out[key] = section.to_json()
        return out

    @classmethod
    def from_json(
        cls, obj: object, path: str = "status", sections: Mapping[str, SectionParser] | None = None
    ) -> Self:
        """Parse a status document; ``sections`` parses the sections it names (else RawSection)."""
        items = expect_object(obj, path)
        missing = [key for key in VSM_KEYS if key not in items]
        if missing:
            raise StatusError(path, f"missing {missing[0]!r}")
        parsers = sections or {}
        extra: dict[str, StatusSection] = {}
        for key, value in items.items():
            if key not in VSM_KEYS:
                parse = parsers.get(key)
                extra[key] = RawSection(value) if parse is None else parse(value, f"{path}.{key}")
        return cls(
            NodeInfo.from_json(items["node"], f"{path}.node"),
            S1Status.from_json(items["s1"], f"{path}.s1"),
            S2Status.from_json(items["s2"], f"{path}.s2"),
            S3Status.from_json(items["s3"], f"{path}.s3"),
            S4Status.from_json(items["s4"], f"{path}.s4"),
            S5Status.from_json(items["s5"], f"{path}.s5"),
            AlgedonicStatus.from_json(items["algedonic"], f"{path}.algedonic"),
            _peers(items["peers"], f"{path}.peers"),
            extra,
        )


def _peers(obj: object, path: str) -> tuple[PeerStatus, ...]:
    if not isinstance(obj, list):
        raise StatusError(path, f"expected an array, got {kind_of(obj)}")
    return tuple(PeerStatus.from_json(p, f"{path}[{i}]") for i, p in enumerate(obj))
