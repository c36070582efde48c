"""S4 intelligence: temporal variety, the variety ratio, anomalies, the mesh view.

Pure: every method takes ``now`` (seconds).

Temporal variety
----------------
Each subsystem's variety is the Shannon entropy (bits) of the categories of
the events it handled, each event weighted by ``exp(-(now - t) / tau)`` with
``tau`` the subsystem's time scale (S1 1 s, S2 10 s, S3 60 s, S4 300 s, S5
1800 s). Instead of decaying every count at every event, a new event gets
weight ``exp((t - t0) / tau)``: proportions (all that entropy needs) are the
same, and counts are rebased (and negligible categories forgotten) when the
exponent grows past a bound. Categories are bounded: past ``max_categories``
new ones fold into ``~other``.

The variety ratio compares the environment with the system (Ashby):
``V(env)`` is the variety of the readings S1 sees (category
``unit.reading:bin`` with bins of the reading's declared resolution), and
``V(sys)`` is the variety the system deploys in response: the larger of the
entropy of its observed regulatory responses (commands, damping, attenuation,
refusals, arbitration) and ``log2`` of its response repertoire (declared
commands plus those regulatory actions), never below
``min_system_variety_bits``. ``ratio = V(env) / V(sys)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .._errors import AgentError
from .event import Subsystem
from .settings import S4Config
from .status import PeerStatus

__all__ = [
    "Anomaly",
    "AnomalyDetector",
    "DecayingEntropy",
    "Intelligence",
    "MeshView",
    "PeerReport",
    "PeerReportError",
]

_REBASE = 30.0  # rebase when weights reach e**30
_OTHER = "~other"


class DecayingEntropy:
    """Shannon entropy of categories with exponential forgetting (time scale ``tau`` s).

    Additions are counted in a pending table and folded into the decayed
    counts at most every ``tau / 100`` seconds (and before every read), with
    the weight of the fold time: a relative weight error of at most 1 %, for
    one dictionary update per event instead of an ``exp``.
    """

    __slots__ = (
        "_counts",
        "_pending",
        "_pending_at",
        "_quantum",
        "_t0",
        "_total",
        "max_categories",
        "tau",
    )

    def __init__(self, tau: float, max_categories: int = 1024, now: float = 0.0) -> None:
        if tau <= 0:
            raise ValueError("tau must be > 0")
        if max_categories < 2:
            raise ValueError("max_categories must be >= 2")
        self.tau = tau
        self.max_categories = max_categories
        self._counts: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._pending_at = now
        self._quantum = tau / 100
        self._total = 0.0
        self._t0 = now

    def add(self, category: str, now: float, count: float = 1.0) -> None:
        pending = self._pending
        pending[category] = pending.get(category, 0.0) + count
        if now - self._pending_at >= self._quantum or len(pending) >= self.max_categories:
            self._fold(now)

    def add_counts(self, counts: Mapping[str, int], now: float) -> None:
        """Add a batch of category counts observed at ``now``."""
        pending = self._pending
        for category, n in counts.items():
            pending[category] = pending.get(category, 0.0) + n
        if now - self._pending_at >= self._quantum or len(pending) >= self.max_categories:
            self._fold(now)

    def _fold(self, now: float) -> None:
        exponent = (now - self._t0) / self.tau
        if exponent > _REBASE:
            self._rebase(now)
            exponent = 0.0
        weight = math.exp(exponent)
        counts = self._counts
        limit = self.max_categories - 1  # one slot is kept for ~other
        added = 0.0
        for category, n in self._pending.items():
            if category not in counts and len(counts) >= limit:
                category = _OTHER
            w = n * weight
            counts[category] = counts.get(category, 0.0) + w
            added += w
        self._total += added
        self._pending.clear()
        self._pending_at = now

    def _rebase(self, now: float) -> None:
        factor = math.exp(-(now - self._t0) / self.tau)
        kept = {c: w * factor for c, w in self._counts.items() if w * factor > 1e-9}
        self._counts = kept
        self._total = sum(kept.values())
        self._t0 = now

    def weight(self, now: float) -> float:
        """The decayed number of events (events in the last ``tau``, roughly)."""
        self._fold(now)
        return self._total * math.exp(-(now - self._t0) / self.tau)

    def entropy(self, now: float) -> float:
        """Bits. Zero with no events or a single category."""
        self._fold(now)
        if (now - self._t0) / self.tau > _REBASE:
            self._rebase(now)
        total = self._total
        if total <= 0 or self.weight(now) < 1e-6:
            return 0.0
        h = 0.0
        for w in self._counts.values():
            if w > 0:
                p = w / total
                h -= p * math.log2(p)
        return max(0.0, h)

    def categories(self) -> int:
        self._fold(self._pending_at)
        return len(self._counts)


@dataclass(frozen=True, slots=True)
class Anomaly:
    key: tuple[str, str]  # (source, reading)
    value: float
    mean: float
    z: float
    at: float

    @property
    def name(self) -> str:
        return f"{self.key[0]}.{self.key[1]}"


class _Stat:
    __slots__ = ("mean", "n", "var")

    def __init__(self, value: float) -> None:
        self.mean = value
        self.var = 0.0
        self.n = 1


class AnomalyDetector:
    """EWMA mean and variance per key; an anomaly when ``|x - mean| / sd >= z`` after warm-up.

    The statistics are updated after the test, so a single spike does not hide
    itself; values flagged as anomalies are folded in too (the baseline adapts
    to a lasting change rather than alarming forever).
    """

    def __init__(self, alpha: float, z: float, warmup: int, max_keys: int = 4096) -> None:
        self.alpha = alpha
        self.z = z
        self.warmup = warmup
        self.max_keys = max_keys
        # source -> reading -> statistics (two lookups, no key tuple per reading)
        self._stats: dict[str, dict[str, _Stat]] = {}
        self._keys = 0
        self.count = 0

    def observe(self, source: str, reading: str, value: float, now: float) -> Anomaly | None:
        per = self._stats.get(source)
        stat = None if per is None else per.get(reading)
        if stat is None:
            if self._keys < self.max_keys:
                self._stats.setdefault(source, {})[reading] = _Stat(value)
                self._keys += 1
            return None
        anomaly = None
        diff = value - stat.mean
        if stat.n >= self.warmup:
            sd = math.sqrt(stat.var)
            z = abs(diff) / sd if sd > 1e-12 else (0.0 if diff == 0 else math.inf)
            if z >= self.z:
                anomaly = Anomaly((source, reading), value, stat.mean, z, now)
                self.count += 1
        a = self.alpha
        incr = a * diff
        stat.mean += incr
        stat.var = (1 - a) * (stat.var + diff * incr)
        stat.n += 1
        return anomaly

    def baseline(self, source: str, reading: str) -> tuple[float, float] | None:
        stat = self._stats.get(source, {}).get(reading)
        return None if stat is None else (stat.mean, math.sqrt(stat.var))


class PeerReportError(AgentError):
    """A peer report from replicated state is malformed."""


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What one peer tells the mesh about its VSM (carried in replicated state).

    The lead's gossip layer builds these from replicated state and calls
    :meth:`MeshView.update`; :meth:`to_cbor`/:meth:`from_cbor` give its
    plain-CBOR form.
    """

    node: str
    zone: str
    hlc_wall_ms: int
    health: float  # 0 (failing) .. 1 (well)
    safe_mode: bool
    variety_ratio: float
    alarms: tuple[str, ...]  # ids of unacknowledged alarms

    def to_cbor(self) -> dict[str, object]:
        return {
            "node": self.node,
            "zone": self.zone,
            "hlc": self.hlc_wall_ms,
            "health": self.health,
            "safe": self.safe_mode,
            "ratio": self.variety_ratio,
            "alarms": list(self.alarms),
        }

    @classmethod
    def from_cbor(cls, obj: object) -> PeerReport:
        """Strict; raises :class:`PeerReportError` on any malformed field."""
        if not isinstance(obj, dict) or set(obj) != {
            "node",
            "zone",
            "hlc",
            "health",
            "safe",
            "ratio",
            "alarms",
        }:
            raise PeerReportError("peer report: wrong shape")
        node, zone, hlc = obj["node"], obj["zone"], obj["hlc"]
        health, safe, ratio, alarms = obj["health"], obj["safe"], obj["ratio"], obj["alarms"]
        if not (
            isinstance(node, str)
            and 0 < len(node) <= 64
            and isinstance(zone, str)
            and len(zone) <= 64
        ):
            raise PeerReportError("peer report: bad node or zone")
        if type(hlc) is not int or not 0 <= hlc < 1 << 48:
            raise PeerReportError("peer report: bad hlc")
        if not isinstance(health, int | float) or isinstance(health, bool) or not 0 <= health <= 1:
            raise PeerReportError("peer report: bad health")
        if not isinstance(ratio, int | float) or isinstance(ratio, bool) or not 0 <= ratio < 1e6:
            raise PeerReportError("peer report: bad ratio")
        if not isinstance(safe, bool):
            raise PeerReportError("peer report: bad safe flag")
        if not (
            isinstance(alarms, list)
            and len(alarms) <= 256
            and all(isinstance(a, str) and len(a) <= 64 for a in alarms)
        ):
            raise PeerReportError("peer report: bad alarms")
        return cls(node, zone, hlc, float(health), safe, float(ratio), tuple(alarms))


class MeshView:
    """Peers as seen through replicated state: last report and when it arrived."""

    def __init__(self, stale_s: float, max_peers: int = 1024) -> None:
        self.stale_s = stale_s
        self.max_peers = max_peers
        self._peers: dict[str, tuple[PeerReport, float]] = {}
        self.remote_alarms: dict[str, list[str]] = {}

    def update(self, report: PeerReport, now: float) -> None:
        if report.node not in self._peers and len(self._peers) >= self.max_peers:
            oldest = min(self._peers, key=lambda n: self._peers[n][1])
            del self._peers[oldest]
        self._peers[report.node] = (report, now)

    def remove(self, node: str) -> None:
        self._peers.pop(node, None)

    def peers(self, now: float) -> list[PeerStatus]:
        """Every peer's latest report, by node name, with how long ago it came."""
        return [
            PeerStatus(
                node=node,
                zone=r.zone,
                last_seen_s=round(now - seen, 3),
                stale=now - seen > self.stale_s,
                health=r.health,
                safe_mode=r.safe_mode,
                variety_ratio=r.variety_ratio,
                alarms=tuple(r.alarms),
            )
            for node, (r, seen) in sorted(self._peers.items())
        ]


class Intelligence:
    """S4's core: variety per subsystem, the ratio, anomalies."""

    RESPONSES = ("attenuate", "aggregate", "drop", "damp", "refuse", "arbitrate", "safe-mode")

    def __init__(self, config: S4Config, now: float) -> None:
        self.config = config
        m = config.max_categories
        self.variety = {
            s: DecayingEntropy(config.timescales_s[s], m, now) for s in config.timescales_s
        }
        tau1 = config.timescales_s[Subsystem.S1]
        # S1's variety is the environment's as S1 sees it (readings, before attenuation)
        self.environment = self.variety[Subsystem.S1]
        self.responses = DecayingEntropy(tau1, m, now)
        self.repertoire = len(self.RESPONSES)
        self.anomalies = AnomalyDetector(
            config.anomaly_alpha, config.anomaly_z, config.anomaly_warmup
        )
        self.recent_anomalies: list[Anomaly] = []

    def set_repertoire(self, commands: int) -> None:
        self.repertoire = len(self.RESPONSES) + commands

    def system_variety(self, now: float) -> float:
        return max(
            self.responses.entropy(now),
            math.log2(max(1, self.repertoire)),
            self.config.min_system_variety_bits,
        )

    def ratio(self, now: float) -> float:
        return self.environment.entropy(now) / self.system_variety(now)

    def note_anomaly(self, anomaly: Anomaly) -> None:
        self.recent_anomalies.append(anomaly)
        if len(self.recent_anomalies) > 32:
            del self.recent_anomalies[0]
