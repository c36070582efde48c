"""A seeded simulator of inbound mesh traffic, honest and hostile, for the arbitrator.

Every episode is one receiving node's view of ``duration_s`` seconds of a
mesh: a random mix of peer *profiles*, each generating signed envelopes with
its own clock, timer and habits, delivered over a network with jitter,
occasional long delays (reordering) and MQTT QoS 1 redeliveries. The events
run, in arrival order, through a real :class:`Gateway` (no arbitrator,
``always_features``) so the feature vectors are exactly what the gateway
computes at run time; each vector is labelled with the class of the message.

Profiles (label in brackets):

* ``honest`` [honest]: a Poisson-like rate of 0.1..4 msg/s with gamma
  jitter, bursts of 5..40 messages (gossip catch-up), a per-peer mix of
  kinds (delta, digest, presence, alg, repair) and sizes, a clock within a
  few hundred ms;
* ``honest-skewed`` [honest]: the same with the clock 5..55 s off (either way)
  and drifting;
* ``replay`` [replay]: an attacker re-publishing a victim's captured
  envelopes (valid signatures, the victim's kid and topic) 0.5..55 s after
  capture, at 0.5..50 msg/s for 10..40 s;
* ``flood`` [flood]: a compromised peer (valid key) that behaves honestly
  (labelled honest) and then sends fresh envelopes at 20..500 msg/s, mostly
  of one kind, for 5..40 s;
* ``slow-drip`` [slow-drip]: a compromised peer at an honest-looking
  0.3..3 msg/s but on a machine-regular timer, almost all of one kind
  (repair requests or deltas), constant sizes, with a few forged-signature
  and out-of-zone attempts.

Randomness is a seed (``numpy.random.default_rng``), time is simulated
milliseconds; an episode is a pure function of its seed and options.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ._arbitrator import CLASSES
from ._bloom import BloomFilter, derive_key
from ._gateway import Gateway, GatewayConfig, Inbound
from ._replay import ReplayConfig
from ._zombie import NUM_FEATURES

__all__ = [
    "PROFILES",
    "Dataset",
    "EpisodeMix",
    "SimEvent",
    "make_dataset",
    "run_episode",
    "score",
    "sim_gateway_config",
    "simulate_episode",
]

PROFILES: tuple[str, ...] = (
    "honest",
    "honest-skewed",
    "flood-prelude",
    "replay",
    "flood",
    "slow-drip",
)
HONEST, REPLAY, FLOOD, DRIP = (CLASSES.index(c) for c in ("honest", "replay", "flood", "slow-drip"))
KINDS: tuple[str, ...] = ("delta", "digest", "presence", "alg", "repair")
# ln(size) mean and spread by kind.
_SIZES = {
    "delta": (5.7, 0.9),
    "digest": (4.8, 0.3),
    "presence": (4.1, 0.2),
    "alg": (5.3, 0.5),
    "repair": (4.4, 0.3),
}
EPOCH_MS = 1_700_000_000_000
SECRET = b"vsm-edge traffic simulator key!!"  # a fixed test secret: the sim is not a deployment


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One delivered envelope, its ground truth class and the profile that made it."""

    inbound: Inbound
    label: int
    profile: str


@dataclass(frozen=True, slots=True)
class EpisodeMix:
    """How many peers of each profile an episode draws (inclusive ranges)."""

    honest: tuple[int, int] = (4, 10)
    skewed: tuple[int, int] = (1, 3)
    replay: tuple[int, int] = (1, 2)
    flood: tuple[int, int] = (0, 2)
    drip: tuple[int, int] = (0, 2)


@dataclass
class _Sender:
    """A peer's clock and HLC."""

    kid: bytes
    source: str
    skew_ms: float
    drift: float
    wall: int = 0
    logical: int = 0
    last_arrival: float = 0.0
    stall_until: float = 0.0

    def stamp(self, t_ms: float) -> int:
        local = EPOCH_MS + int(t_ms + self.skew_ms + self.drift * t_ms)
        if local > self.wall:
            self.wall, self.logical = local, 0
        else:
            self.logical += 1
            if self.logical > 0xFFFF:
                self.wall, self.logical = self.wall + 1, 0
        return (self.wall << 16) | self.logical


@dataclass
class _Out:
    events: list[tuple[float, int, SimEvent]] = field(default_factory=list)
    seq: int = 0

    def deliver(self, t_ms: float, event: SimEvent) -> None:
        self.seq += 1
        self.events.append((t_ms, self.seq, event))


def _arrival(rng: np.random.Generator, sender: _Sender, t: float) -> float:
    """When a message sent at ``t`` arrives: network jitter, and now and then a
    reconnect that holds the sender's queue back for 0.5..3 s. One MQTT
    connection keeps a sender's messages in order, so arrivals never overtake."""
    if rng.random() < 0.005:
        sender.stall_until = t + float(rng.uniform(500, 3_000))
    arrive = max(t, sender.stall_until) + float(rng.lognormal(math.log(10.0), 0.6))
    arrive = max(arrive, sender.last_arrival + 0.05)
    sender.last_arrival = arrive
    return arrive


def _size(rng: np.random.Generator, kind: str) -> int:
    mu, sd = _SIZES[kind]
    return int(min(60_000, max(16, rng.lognormal(mu, sd))))


def _send(
    rng: np.random.Generator,
    out: _Out,
    sender: _Sender,
    t: float,
    kind: str,
    size: int,
    label: int,
    profile: str,
    dup_p: float,
    captured: list[tuple[float, Inbound]] | None,
) -> None:
    hlc = sender.stamp(t)
    nonce = rng.bytes(12)
    arrive = _arrival(rng, sender, t)
    msg = Inbound(sender.kid, hlc, nonce, kind, True, size, int(EPOCH_MS + arrive), sender.source)
    out.deliver(arrive, SimEvent(msg, label, profile))
    if captured is not None:
        captured.append((t, msg))
    if dup_p and rng.random() < dup_p:  # a QoS 1 redelivery of the same envelope
        again = arrive + float(rng.uniform(50, 2_000))
        dup = Inbound(
            sender.kid, hlc, nonce, kind, True, size, int(EPOCH_MS + again), sender.source
        )
        out.deliver(again, SimEvent(dup, label, profile))


def _honest(
    rng: np.random.Generator,
    out: _Out,
    sender: _Sender,
    start: float,
    end: float,
    *,
    label: int = HONEST,
    profile: str = "honest",
    captured: list[tuple[float, Inbound]] | None = None,
) -> None:
    rate = float(np.exp(rng.uniform(math.log(0.1), math.log(4.0))))
    shape = float(rng.uniform(1.0, 6.0)) if rng.random() < 0.8 else float(rng.uniform(6.0, 60.0))
    burst_p = float(rng.uniform(0.0, 0.05))
    mix = rng.dirichlet([3.0, 2.0, 1.0, 0.4, 0.8])
    dup_p = float(rng.uniform(0.0, 0.01))
    t = start
    while True:
        t += float(rng.gamma(shape, 1_000.0 / rate / shape))
        if t >= end:
            return
        count = 1
        if rng.random() < min(1.0, burst_p / rate):  # about burst_p bursts a second
            count = int(rng.integers(5, 41))
        spread = float(rng.uniform(20, 300))
        for i in range(count):
            at = t + (spread * i / count if count > 1 else 0.0)
            kind = KINDS[int(rng.choice(len(KINDS), p=mix))]
            _send(rng, out, sender, at, kind, _size(rng, kind), label, profile, dup_p, captured)


def _flood(rng: np.random.Generator, out: _Out, sender: _Sender, start: float, end: float) -> None:
    rate = float(np.exp(rng.uniform(math.log(20.0), math.log(500.0))))
    single = rng.random() < 0.7
    main = KINDS[int(rng.choice([0, 1, 4]))]
    size = _size(rng, main) if rng.random() < 0.5 else int(rng.integers(16, 64))
    t = start
    while True:
        t += float(rng.exponential(1_000.0 / rate))
        if t >= end:
            return
        kind = main if single else KINDS[int(rng.integers(0, len(KINDS)))]
        _send(rng, out, sender, t, kind, size, FLOOD, "flood", 0.0, None)


def _drip(rng: np.random.Generator, out: _Out, sender: _Sender, start: float, end: float) -> None:
    period = 1_000.0 / float(np.exp(rng.uniform(math.log(0.3), math.log(3.0))))
    cv = float(rng.uniform(0.01, 0.12))
    main = "repair" if rng.random() < 0.5 else "delta"
    purity = float(rng.uniform(0.9, 1.0))
    size = _size(rng, main)
    bad_p = float(rng.uniform(0.0, 0.05))
    t = start
    while True:
        t += max(1.0, period * (1.0 + cv * float(rng.standard_normal())))
        if t >= end:
            return
        kind = main if rng.random() < purity else KINDS[int(rng.integers(0, len(KINDS)))]
        if rng.random() < bad_p:
            forged = rng.random() < 0.5
            kid = sender.kid if forged else rng.bytes(32)  # a key outside the zone
            hlc = sender.stamp(t)
            arrive = _arrival(rng, sender, t)
            msg = Inbound(
                kid,
                hlc,
                rng.bytes(12),
                kind,
                not forged,
                size,
                int(EPOCH_MS + arrive),
                sender.source,
            )
            out.deliver(arrive, SimEvent(msg, DRIP, "slow-drip"))
            continue
        _send(rng, out, sender, t, kind, size, DRIP, "slow-drip", 0.0, None)


def _replay(
    rng: np.random.Generator,
    out: _Out,
    captured: Sequence[tuple[float, Inbound]],
    start: float,
    end: float,
) -> None:
    rate = float(np.exp(rng.uniform(math.log(1.0), math.log(50.0))))
    sent = [at for at, _ in captured]  # sorted by the caller
    t = start
    while True:
        t += float(rng.exponential(1_000.0 / rate))
        if t >= end:
            return
        lo, hi = bisect.bisect_left(sent, t - 55_000), bisect.bisect_right(sent, t - 500)
        if lo >= hi:
            continue
        victim = captured[int(rng.integers(lo, hi))][1]
        arrive = t + float(rng.lognormal(math.log(10.0), 0.6))
        msg = Inbound(
            victim.kid,
            victim.hlc,
            victim.nonce,
            victim.kind,
            True,
            victim.size,
            int(EPOCH_MS + arrive),
            victim.source,
        )
        out.deliver(arrive, SimEvent(msg, REPLAY, "replay"))


def simulate_episode(
    seed: int, *, duration_s: float = 120.0, mix: EpisodeMix | None = None
) -> tuple[list[SimEvent], frozenset[bytes]]:
    """One episode's delivered envelopes in arrival order, and the zone (kids admitted)."""
    rng = np.random.default_rng(seed)
    mix = mix or EpisodeMix()
    end = duration_s * 1_000.0
    out = _Out()
    zone: set[bytes] = set()

    def count(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    def sender(i: int, skew: float, drift: float) -> _Sender:
        kid = rng.bytes(32)
        zone.add(kid)
        return _Sender(kid, f"node-{i}", skew, drift)

    peers = 0
    victims: list[list[tuple[float, Inbound]]] = []
    for _ in range(count(mix.honest)):
        s = sender(peers, float(rng.normal(0, 200)), float(rng.uniform(-5e-5, 5e-5)))
        peers += 1
        captured: list[tuple[float, Inbound]] = []
        victims.append(captured)
        _honest(rng, out, s, float(rng.uniform(0, 20_000)), end, captured=captured)
    for _ in range(count(mix.skewed)):
        skew = float(rng.uniform(5_000, 55_000)) * (1 if rng.random() < 0.5 else -1)
        s = sender(peers, skew, float(rng.uniform(-2e-4, 2e-4)))
        peers += 1
        _honest(rng, out, s, float(rng.uniform(0, 20_000)), end, profile="honest-skewed")
    for _ in range(count(mix.flood)):
        s = sender(peers, float(rng.normal(0, 300)), 0.0)
        peers += 1
        switch = float(rng.uniform(15_000, min(90_000, end * 0.75)))
        _honest(rng, out, s, float(rng.uniform(0, 10_000)), switch, profile="flood-prelude")
        _flood(rng, out, s, switch, min(end, switch + float(rng.uniform(5_000, 40_000))))
    for _ in range(count(mix.drip)):
        s = sender(peers, float(rng.normal(0, 1_000)), 0.0)
        peers += 1
        _drip(rng, out, s, float(rng.uniform(0, 20_000)), end)
    # Replayers need captured traffic: generated last, from the victims' logs.
    for _ in range(count(mix.replay)):
        if not victims:
            break
        captured = victims[int(rng.integers(0, len(victims)))]
        captured.sort(key=lambda item: item[0])
        start = float(rng.uniform(20_000, max(20_001, end - 15_000)))
        _replay(rng, out, captured, start, min(end, start + float(rng.uniform(10_000, 40_000))))
    out.events.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in out.events], frozenset(zone)


@dataclass(frozen=True, slots=True)
class Dataset:
    """Feature vectors ``x`` [n, 16], labels ``y`` [n] (class indices), profiles [n]."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    profiles: tuple[str, ...]


def sim_gateway_config() -> GatewayConfig:
    """The gateway configuration episodes run through (features for every message)."""
    return GatewayConfig(
        replay=ReplayConfig(capacity=20_000, fp_rate=1e-3, exact_capacity=2_048),
        always_features=True,
    )


def run_episode(
    events: Sequence[SimEvent],
    zone: frozenset[bytes],
    *,
    config: GatewayConfig | None = None,
    max_per_peer_class: int = 400,
    seed: int = 0,
) -> Dataset:
    """Run an episode through a real gateway; the labelled feature vectors it computed.

    Samples per (source, class) are capped at ``max_per_peer_class`` (a
    seeded random subset) so floods do not drown the other classes.
    """
    key = derive_key(SECRET, "zone")
    zone_filter = BloomFilter.for_capacity(max(16, len(zone) * 2), 1e-9, key)
    zone_filter.add_many(zone)
    start = events[0].inbound.received_ms if events else 0
    gateway = Gateway(
        zone=zone_filter,
        replay_key=derive_key(SECRET, "nonce"),
        config=config or sim_gateway_config(),
        now_ms=start,
    )
    groups: dict[tuple[str, int], list[tuple[tuple[float, ...], str]]] = {}
    for event in events:
        decision = gateway.decide(event.inbound)
        if decision.features:
            key_ = (event.inbound.source, event.label)
            groups.setdefault(key_, []).append((decision.features, event.profile))
    rng = np.random.default_rng(seed)
    rows: list[tuple[float, ...]] = []
    labels: list[int] = []
    profiles: list[str] = []
    for (_, label), items in sorted(groups.items()):
        if len(items) > max_per_peer_class:
            pick = sorted(rng.choice(len(items), size=max_per_peer_class, replace=False).tolist())
            items = [items[i] for i in pick]
        for features, profile in items:
            rows.append(features)
            labels.append(label)
            profiles.append(profile)
    x = np.asarray(rows, dtype=np.float32).reshape(-1, NUM_FEATURES)
    return Dataset(x, np.asarray(labels, dtype=np.int64), tuple(profiles))


def make_dataset(
    seeds: Iterable[int], *, duration_s: float = 120.0, mix: EpisodeMix | None = None
) -> Dataset:
    """Episodes for every seed, concatenated."""
    parts = []
    for seed in seeds:
        events, zone = simulate_episode(seed, duration_s=duration_s, mix=mix)
        parts.append(run_episode(events, zone, seed=seed))
    if not parts:
        return Dataset(np.empty((0, NUM_FEATURES), np.float32), np.empty(0, np.int64), ())
    return Dataset(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        tuple(profile for p in parts for profile in p.profiles),
    )


def score(
    y_true: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    profiles: Sequence[str],
    *,
    allow_threshold: float = 0.5,
) -> dict[str, object]:
    """Held-out figures for a model's class probabilities ``[n, 4]``.

    ``accuracy`` (argmax vs label), per class ``precision``/``recall``, the
    ``confusion`` matrix (rows true, columns predicted), and the gateway's
    view: ``deny_rate`` per class and ``allow_rate_honest_skewed`` (an
    envelope is allowed when P(honest) >= ``allow_threshold``).
    """
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64).reshape(len(y), len(CLASSES))
    pred = p.argmax(axis=1)
    allow = p[:, HONEST] >= allow_threshold
    n = len(CLASSES)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (y, pred), 1)
    precision: dict[str, float] = {}
    recall: dict[str, float] = {}
    deny_rate: dict[str, float] = {}
    support: dict[str, int] = {}
    for i, name in enumerate(CLASSES):
        tp = int(confusion[i, i])
        predicted = int(confusion[:, i].sum())
        actual = int(confusion[i, :].sum())
        precision[name] = tp / predicted if predicted else float("nan")
        recall[name] = tp / actual if actual else float("nan")
        support[name] = actual
        mask = y == i
        deny_rate[name] = float((~allow[mask]).mean()) if mask.any() else float("nan")
    prof = np.asarray(profiles)
    skewed = prof == "honest-skewed"
    return {
        "samples": len(y),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "precision": precision,
        "recall": recall,
        "support": support,
        "deny_rate": deny_rate,
        "allow_rate_honest_skewed": float(allow[skewed].mean()) if skewed.any() else float("nan"),
        "confusion": confusion.tolist(),
    }
