"""Per-peer behaviour: features, zombie rules and the quarantine list.

Theory of operation
-------------------
Every inbound envelope is *observed* against its source (the peer that
delivered it; the agent passes the node id of the MQTT topic, or the kid).
Per peer we keep a few exponentially decayed statistics, O(1) memory and time
per message:

* event rates over ~1 s and ~10 s and a long baseline (~10 min, starting at a
  prior) of *fresh* messages, so replays injected by somebody else cannot
  inflate a peer's rate;
* decayed counts of message kinds (at most :data:`MAX_KINDS` kinds tracked,
  the rest pooled), giving a Shannon entropy;
* the duplicate ratio (an EWMA of "this envelope had been seen");
* the HLC skew (HLC wall time minus our clock): its mean and mean deviation;
* the inter-arrival time's mean and mean deviation (a bot's timer is regular,
  people and sensors are not), and likewise the sizes' spread and how often a
  message repeats the previous one's kind (machine-made traffic is uniform);
* the rate of repair requests; a decayed count of forged-signature and
  out-of-zone attempts; the newest HLC seen; the mean log size.

:meth:`ZombieDetector.features` turns that state plus one message into the
fixed vector :data:`FEATURE_NAMES` that the arbitrator reads. It does not
count the message itself, so a vector means the same at training and at
run time (computed before the message is observed).

Zombie rules (explainable, thresholds in :class:`ZombieConfig`): each fresh
message that arrives while a rule holds adds one unit of *evidence* (decayed
over ~10 s); at ``evidence_threshold`` the peer is quarantined for
``quarantine_ms``. The rules are a *flood* (the ~10 s rate at least
``flood_rate`` and at least ``flood_ratio`` times the peer's own baseline) and
a *repair storm* (repair requests at least ``repair_storm_rate`` per second
over ~10 s). An *invalid* message (validly signed, so attributable, but
breaking a rule no honest node breaks, such as minting another node's dots)
adds ``invalid_evidence`` units at once. Forged signatures and out-of-zone
kids quarantine only when ``quarantine_on_bad`` is set: do that only where the
broker authenticates the source (per-client topic ACLs), or anybody could get
an honest peer quarantined by forging messages in its name. Duplicates never
quarantine, for the same reason (anybody can replay a peer's old envelopes);
they are dropped by the replay check anyway.

State is bounded: at most ``max_peers`` peers (least recently seen evicted,
counted), at most ``max_quarantined`` quarantines (a separate table, so
evicting statistics never lifts a quarantine), at most ``max_events`` pending
events (older ones dropped, counted).
"""

from __future__ import annotations

import enum
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = [
    "FEATURE_NAMES",
    "MAX_KINDS",
    "Observation",
    "Quarantine",
    "ZombieConfig",
    "ZombieDetector",
    "ZombieEvent",
]

FEATURE_NAMES: Final[tuple[str, ...]] = (
    "log_rate_1s",  # ln(1 + fresh messages/s over ~1 s), [0, 10]
    "log_rate_10s",  # ln(1 + fresh messages/s over ~10 s), [0, 10]
    "log_rate_ratio",  # ln((rate_10s + 0.05) / (baseline + 0.05)), clipped to [-5, 8]
    "kind_entropy",  # bits, [0, 3]
    "duplicate_ratio",  # EWMA of "already seen", [0, 1]
    "skew_mean",  # mean (HLC wall - our clock) / max offset, [-2, 2]
    "skew_deviation",  # (this message's skew - mean skew) / max offset, [-2, 2]
    "interarrival_cv",  # mean |gap - mean gap| / mean gap, [0, 4]
    "repair_share",  # repair requests / all fresh messages (10 s rates), [0, 1]
    "log_bad_attempts",  # ln(1 + decayed forged + out-of-zone count), [0, 8]
    "hlc_regress",  # 1 if this HLC is not above the newest seen from the peer
    "log_hlc_lag_s",  # ln(1 + seconds this HLC is behind the newest seen), [0, 5]
    "log_size_ratio",  # ln(1 + size) - mean ln(1 + size), [-4, 4]
    "size_deviation",  # EWMA of |ln(1 + size) - mean|: 0 for machine-made constant sizes, [0, 4]
    "kind_repeat",  # EWMA of "same kind as the previous message", [0, 1]
    "warmup",  # min(1, fresh messages seen / 50)
)
NUM_FEATURES: Final = len(FEATURE_NAMES)
MAX_KINDS: Final = 8
MAX_SOURCE: Final = 128
_OTHER: Final = "\x00other"
_TAU_1S: Final = 1_000.0
_TAU_10S: Final = 10_000.0
_TAU_KIND: Final = 60_000.0
_TAU_BAD: Final = 60_000.0
_TAU_EVIDENCE: Final = 10_000.0
_ALPHA: Final = 0.1  # per-message EWMA weight (skew, gaps, sizes)
_ALPHA_DUP: Final = 0.05
_WARMUP: Final = 50.0


class Observation(enum.Enum):
    """What the gateway learnt about one envelope from a source."""

    FRESH = "fresh"  # signed, in zone, in time, not seen before (or unresolved)
    DUPLICATE = "duplicate"  # seen before (certain or maybe)
    FORGED = "forged"  # the signature did not verify
    OUT_OF_ZONE = "out-of-zone"  # the kid is not in the zone
    STALE = "stale"  # HLC too old or too far ahead
    INVALID = "invalid"  # validly signed, but breaks a rule no honest node breaks


@dataclass(frozen=True, slots=True)
class ZombieConfig:
    """Thresholds and bounds of the detector (module doc)."""

    max_peers: int = 1_024
    max_quarantined: int = 1_024
    max_events: int = 256
    prior_rate: float = 1.0  # messages/s assumed of a peer not seen before
    baseline_tau_ms: float = 600_000.0
    flood_rate: float = 15.0  # fresh messages/s over ~10 s
    flood_ratio: float = 10.0  # times the peer's own baseline
    repair_storm_rate: float = 10.0  # repair requests/s over ~10 s
    invalid_evidence: float = 4.5  # per INVALID message (signed, so attributable): 5 quarantine
    evidence_threshold: float = 20.0
    quarantine_on_bad: bool = False
    bad_limit: float = 20.0
    quarantine_ms: int = 600_000
    max_offset_ms: int = 60_000
    repair_kinds: frozenset[str] = field(default_factory=lambda: frozenset({"repair"}))

    def __post_init__(self) -> None:
        for name in (
            "max_peers",
            "max_quarantined",
            "max_events",
            "quarantine_ms",
            "max_offset_ms",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "prior_rate",
            "baseline_tau_ms",
            "flood_rate",
            "flood_ratio",
            "repair_storm_rate",
            "evidence_threshold",
            "bad_limit",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class Quarantine:
    """One quarantined peer: why, since when, until when."""

    peer: str
    since_ms: int
    until_ms: int
    reason: str


@dataclass(frozen=True, slots=True)
class ZombieEvent:
    """Something the agent should act on: raise pain, propose to the mesh, log.

    ``kind`` is ``"quarantined"`` or ``"released"``; ``features`` is the
    peer's vector (names in :data:`FEATURE_NAMES`) when it was quarantined.
    """

    kind: Literal["quarantined", "released"]
    peer: str
    at_ms: int
    reason: str
    features: tuple[float, ...] = ()


def _clip(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


class _Peer:
    __slots__ = (
        "bad",
        "baseline",
        "dup",
        "evidence",
        "gap_dev",
        "gap_mean",
        "kinds",
        "last_fresh",
        "last_kind",
        "max_hlc",
        "n",
        "r1",
        "r10",
        "repair",
        "repeat",
        "size_dev",
        "size_mean",
        "skew_dev",
        "skew_mean",
        "t_bad",
        "t_evidence",
        "t_rate",
        "why",
    )

    def __init__(self, now: int, prior: float) -> None:
        self.r1 = 0.0
        self.r10 = 0.0
        self.baseline = prior
        self.repair = 0.0
        self.kinds: dict[str, float] = {}
        self.t_rate = now
        self.last_fresh = -1
        self.dup = 0.0
        self.skew_mean = 0.0
        self.skew_dev = 0.0
        self.gap_mean = 0.0
        self.gap_dev = 0.0
        self.size_mean = 0.0
        self.size_dev = 0.0
        self.repeat = 0.0
        self.last_kind = ""
        self.bad = 0.0
        self.t_bad = now
        self.evidence = 0.0
        self.t_evidence = now
        self.max_hlc = -1
        self.n = 0
        self.why = ""


class ZombieDetector:
    """Bounded per-peer behaviour tracking, zombie rules and quarantine (module doc).

    Sans-I/O: every method takes the time in milliseconds; events are pulled
    with :meth:`pop_events`.
    """

    def __init__(self, config: ZombieConfig | None = None) -> None:
        self.config = config or ZombieConfig()
        self._peers: OrderedDict[str, _Peer] = OrderedDict()
        self._quarantine: OrderedDict[str, Quarantine] = OrderedDict()
        self._events: deque[ZombieEvent] = deque()
        self._next_expiry: int | None = None
        self.evicted = 0
        self.events_dropped = 0
        self.quarantines = 0
        self.quarantines_refused = 0

    # -- observations --------------------------------------------------------

    def _peer(self, source: str, now: int) -> _Peer:
        peer = self._peers.get(source)
        if peer is None:
            peer = _Peer(now, self.config.prior_rate)
            self._peers[source] = peer
            if len(self._peers) > self.config.max_peers:
                self._peers.popitem(last=False)
                self.evicted += 1
        else:
            self._peers.move_to_end(source)
        return peer

    def observe(
        self,
        source: str,
        observation: Observation,
        *,
        kind: str,
        hlc: int,
        size: int,
        now_ms: int,
    ) -> Quarantine | None:
        """Count one envelope from ``source``; returns the quarantine it triggered, if any.

        ``hlc`` is the packed u64 (wall ms << 16 | logical). Only FRESH
        messages move rates, kinds, skew and gaps; DUPLICATE moves the
        duplicate ratio; FORGED and OUT_OF_ZONE the bad-attempt count.
        """
        peer = self._peer(source, now_ms)
        cfg = self.config
        if observation is Observation.DUPLICATE:
            peer.dup += _ALPHA_DUP * (1.0 - peer.dup)
            return None
        if observation in (Observation.FORGED, Observation.OUT_OF_ZONE):
            dt = max(0, now_ms - peer.t_bad)
            peer.bad = peer.bad * math.exp(-dt / _TAU_BAD) + 1.0
            peer.t_bad = max(peer.t_bad, now_ms)
            if cfg.quarantine_on_bad and peer.bad >= cfg.bad_limit:
                return self.quarantine(source, observation.value, now_ms)
            return None
        if observation is Observation.STALE:
            return None
        if observation is Observation.INVALID:
            return self._add_evidence(peer, "invalid", cfg.invalid_evidence, source, now_ms)
        # FRESH
        peer.dup -= _ALPHA_DUP * peer.dup
        dt = max(0, now_ms - peer.t_rate)
        d1 = math.exp(-dt / _TAU_1S)
        d10 = math.exp(-dt / _TAU_10S)
        peer.r1 = peer.r1 * d1 + 1000.0 / _TAU_1S
        peer.r10 = peer.r10 * d10 + 1000.0 / _TAU_10S
        tau_b = cfg.baseline_tau_ms
        peer.baseline = peer.baseline * math.exp(-dt / tau_b) + 1000.0 / tau_b
        repair = kind in cfg.repair_kinds
        peer.repair = peer.repair * d10 + (1000.0 / _TAU_10S if repair else 0.0)
        dk = math.exp(-dt / _TAU_KIND)
        kinds = peer.kinds
        for name in kinds:
            kinds[name] *= dk
        slot = kind if (kind in kinds or len(kinds) < MAX_KINDS - 1) else _OTHER
        kinds[slot] = kinds.get(slot, 0.0) + 1.0
        peer.t_rate = max(peer.t_rate, now_ms)

        skew = float((hlc >> 16) - now_ms)
        size_l = math.log1p(max(0, size))
        if peer.n == 0:
            peer.skew_mean = skew
            peer.size_mean = size_l
        else:
            peer.skew_dev += _ALPHA * (abs(skew - peer.skew_mean) - peer.skew_dev)
            peer.skew_mean += _ALPHA * (skew - peer.skew_mean)
            peer.size_dev += _ALPHA * (abs(size_l - peer.size_mean) - peer.size_dev)
            peer.size_mean += _ALPHA * (size_l - peer.size_mean)
            peer.repeat += _ALPHA * ((1.0 if kind == peer.last_kind else 0.0) - peer.repeat)
        peer.last_kind = kind
        if peer.last_fresh >= 0:
            gap = float(max(0, now_ms - peer.last_fresh))
            if peer.n == 1:
                peer.gap_mean = gap
            else:
                peer.gap_dev += _ALPHA * (abs(gap - peer.gap_mean) - peer.gap_dev)
                peer.gap_mean += _ALPHA * (gap - peer.gap_mean)
        peer.last_fresh = max(peer.last_fresh, now_ms)
        peer.max_hlc = max(peer.max_hlc, hlc)
        peer.n += 1

        why = ""
        if peer.r10 >= cfg.flood_rate and peer.r10 >= cfg.flood_ratio * peer.baseline:
            why = "flood"
        elif peer.repair >= cfg.repair_storm_rate:
            why = "repair-storm"
        return self._add_evidence(peer, why, 1.0 if why else 0.0, source, now_ms)

    def _add_evidence(
        self, peer: _Peer, why: str, amount: float, source: str, now_ms: int
    ) -> Quarantine | None:
        de = max(0, now_ms - peer.t_evidence)
        peer.evidence *= math.exp(-de / _TAU_EVIDENCE)
        peer.t_evidence = max(peer.t_evidence, now_ms)
        if amount:
            peer.evidence += amount
            peer.why = why
            if peer.evidence >= self.config.evidence_threshold:
                return self.quarantine(source, why, now_ms)
        return None

    # -- features ------------------------------------------------------------

    def features(self, source: str, *, hlc: int, size: int, now_ms: int) -> tuple[float, ...]:
        """The arbitrator's input for one message from ``source`` (:data:`FEATURE_NAMES`).

        Pure: reads the peer's state decayed to ``now_ms``; the message itself
        is not counted. An unknown peer gives the vector of a newcomer.
        """
        peer = self._peers.get(source)
        if peer is None:
            peer = _Peer(now_ms, self.config.prior_rate)
        return _vector(peer, self.config, hlc=hlc, size=size, now_ms=now_ms)

    # -- quarantine ----------------------------------------------------------

    def quarantine(self, source: str, reason: str, now_ms: int) -> Quarantine | None:
        """Quarantine ``source`` (a rule fired, or the mesh agreed); returns the record.

        Returns the existing record when already quarantined, None when the
        quarantine table is full (counted in ``quarantines_refused``).
        """
        existing = self._quarantine.get(source)
        if existing is not None and existing.until_ms > now_ms:
            return existing
        if existing is None and len(self._quarantine) >= self.config.max_quarantined:
            self.quarantines_refused += 1
            return None
        record = Quarantine(source, now_ms, now_ms + self.config.quarantine_ms, reason)
        self._quarantine[source] = record
        self.quarantines += 1
        if self._next_expiry is None or record.until_ms < self._next_expiry:
            self._next_expiry = record.until_ms
        peer = self._peers.get(source)
        vector: tuple[float, ...] = ()
        if peer is not None:
            vector = _vector(peer, self.config, hlc=peer.max_hlc, size=0, now_ms=now_ms)
            peer.evidence = 0.0
        self._emit(ZombieEvent("quarantined", source, now_ms, reason, vector))
        return record

    def release(self, source: str, now_ms: int, reason: str = "released") -> bool:
        """Lift a quarantine early (an operator or the mesh decided); True if there was one."""
        if self._quarantine.pop(source, None) is None:
            return False
        self._emit(ZombieEvent("released", source, now_ms, reason))
        return True

    def is_quarantined(self, source: str, now_ms: int) -> bool:
        """Whether ``source`` is quarantined at ``now_ms`` (expired quarantines are lifted)."""
        self.expire(now_ms)
        return source in self._quarantine

    def expire(self, now_ms: int) -> None:
        """Lift every quarantine that ended at or before ``now_ms`` (emits ``released``)."""
        if self._next_expiry is None or now_ms < self._next_expiry:
            return
        ended = [q for q in self._quarantine.values() if q.until_ms <= now_ms]
        for q in ended:
            del self._quarantine[q.peer]
            self._emit(ZombieEvent("released", q.peer, now_ms, "expired"))
        self._next_expiry = min((q.until_ms for q in self._quarantine.values()), default=None)

    def quarantined(self) -> tuple[Quarantine, ...]:
        """The current quarantine list, oldest first."""
        return tuple(self._quarantine.values())

    # -- events and statistics ----------------------------------------------

    def _emit(self, event: ZombieEvent) -> None:
        if len(self._events) >= self.config.max_events:
            self._events.popleft()
            self.events_dropped += 1
        self._events.append(event)

    def pop_events(self) -> list[ZombieEvent]:
        """Every event since the last call, oldest first (the agent turns them into actions)."""
        events = list(self._events)
        self._events.clear()
        return events

    def statistics(self) -> dict[str, int]:
        return {
            "peers": len(self._peers),
            "peers_evicted": self.evicted,
            "quarantined": len(self._quarantine),
            "quarantines": self.quarantines,
            "quarantines_refused": self.quarantines_refused,
            "events_dropped": self.events_dropped,
        }


def _vector(
    peer: _Peer, cfg: ZombieConfig, *, hlc: int, size: int, now_ms: int
) -> tuple[float, ...]:
    dt = max(0, now_ms - peer.t_rate)
    d10 = math.exp(-dt / _TAU_10S)
    r1 = peer.r1 * math.exp(-dt / _TAU_1S)
    r10 = peer.r10 * d10
    baseline = peer.baseline * math.exp(-dt / cfg.baseline_tau_ms)
    repair = peer.repair * d10
    total = sum(peer.kinds.values())
    entropy = 0.0
    if total > 0:
        for count in peer.kinds.values():
            if count > 0:
                p = count / total
                entropy -= p * math.log2(p)
    offset = float(cfg.max_offset_ms)
    skew = float((hlc >> 16) - now_ms)
    skew_dev = (skew - peer.skew_mean) / offset if peer.n else 0.0
    cv = peer.gap_dev / peer.gap_mean if peer.n > 2 and peer.gap_mean > 0 else 1.0
    bad = peer.bad * math.exp(-max(0, now_ms - peer.t_bad) / _TAU_BAD)
    regress = 1.0 if peer.n and hlc <= peer.max_hlc else 0.0
    lag_s = max(0, (peer.max_hlc >> 16) - (hlc >> 16)) / 1000.0 if peer.n else 0.0
    size_ratio = math.log1p(max(0, size)) - peer.size_mean if peer.n else 0.0
    return (
        _clip(math.log1p(r1), 0.0, 10.0),
        _clip(math.log1p(r10), 0.0, 10.0),
        _clip(math.log((r10 + 0.05) / (baseline + 0.05)), -5.0, 8.0),
        _clip(entropy, 0.0, 3.0),
        _clip(peer.dup, 0.0, 1.0),
        _clip(peer.skew_mean / offset, -2.0, 2.0),
        _clip(skew_dev, -2.0, 2.0),
        _clip(cv, 0.0, 4.0),
        _clip(repair / (r10 + 1e-9), 0.0, 1.0) if r10 > 1e-6 else 0.0,
        _clip(math.log1p(bad), 0.0, 8.0),
        regress,
        _clip(math.log1p(lag_s), 0.0, 5.0),
        _clip(size_ratio, -4.0, 4.0),
        _clip(peer.size_dev, 0.0, 4.0),
        _clip(peer.repeat, 0.0, 1.0),
        min(1.0, peer.n / _WARMUP),
    )
