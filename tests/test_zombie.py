"""Zombie detection: rules, quarantine lifecycle and events, bounded state, pure features."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.models import (
    FEATURE_NAMES,
    Observation,
    Quarantine,
    ZombieConfig,
    ZombieDetector,
)

T0 = 1_700_000_000_000


def fresh(
    d: ZombieDetector, source: str, t: int, *, kind: str = "delta", size: int = 100
) -> Quarantine | None:
    return d.observe(source, Observation.FRESH, kind=kind, hlc=t << 16, size=size, now_ms=t)


def test_flood_is_quarantined_and_released_after_the_term() -> None:
    d = ZombieDetector(ZombieConfig(quarantine_ms=60_000))
    t = T0
    for _ in range(60):  # a minute of honest-looking traffic
        t += 1_000
        assert fresh(d, "z", t) is None
    first = None
    while first is None:
        t += 5  # 200 msg/s
        first = fresh(d, "z", t)
    assert first.reason == "flood"
    assert t - (T0 + 60_000) <= 2_000
    assert d.is_quarantined("z", t)
    events = d.pop_events()
    assert [(e.kind, e.reason) for e in events] == [("quarantined", "flood")]
    assert len(events[0].features) == len(FEATURE_NAMES)
    assert d.pop_events() == []
    assert not d.is_quarantined("z", t + 60_000)  # expired
    assert [(e.kind, e.reason) for e in d.pop_events()] == [("released", "expired")]


def test_honest_rates_and_bursts_are_not_quarantined() -> None:
    d = ZombieDetector()
    t = T0
    for minute in range(10):
        for i in range(120):  # 2 msg/s
            t += 500
            assert fresh(d, "h", t, kind=("delta", "digest", "presence")[i % 3]) is None
        for _ in range(40):  # a catch-up burst of 40 in 200 ms, every minute
            t += 5
            assert fresh(d, "h", t) is None, minute
    assert d.quarantined() == ()


def test_repair_storm_is_quarantined() -> None:
    d = ZombieDetector()
    t, hit = T0, None
    for _ in range(400):
        t += 80  # 12.5 repair requests a second
        hit = hit or fresh(d, "r", t, kind="repair")
    assert hit is not None
    assert hit.reason == "repair-storm"


def test_duplicates_never_quarantine() -> None:
    d = ZombieDetector()
    for i in range(10_000):
        d.observe("v", Observation.DUPLICATE, kind="delta", hlc=0, size=1, now_ms=T0 + i)
    assert d.quarantined() == ()


def test_forgeries_quarantine_only_when_sources_are_authenticated() -> None:
    for enabled in (False, True):
        d = ZombieDetector(ZombieConfig(quarantine_on_bad=enabled, bad_limit=10))
        for i in range(30):
            d.observe("f", Observation.FORGED, kind="delta", hlc=0, size=1, now_ms=T0 + i * 100)
        assert d.is_quarantined("f", T0 + 3_000) is enabled


def test_peer_state_is_bounded_and_quarantine_survives_eviction() -> None:
    d = ZombieDetector(ZombieConfig(max_peers=4, max_quarantined=2))
    d.quarantine("p0", "manual", T0)
    for i in range(10):
        fresh(d, f"p{i}", T0 + i)
    stats = d.statistics()
    assert stats["peers"] == 4
    assert stats["peers_evicted"] == 6
    assert d.is_quarantined("p0", T0 + 10)
    d.quarantine("p1", "manual", T0)
    assert d.quarantine("p2", "manual", T0) is None  # table full
    assert d.statistics()["quarantines_refused"] == 1
    assert d.release("p1", T0 + 20)
    assert not d.release("p1", T0 + 20)


def test_events_are_bounded() -> None:
    d = ZombieDetector(ZombieConfig(max_events=3))
    for i in range(5):
        d.quarantine(f"q{i}", "manual", T0)
    assert len(d.pop_events()) == 3
    assert d.statistics()["events_dropped"] == 2


def test_features_are_pure_and_shaped() -> None:
    d = ZombieDetector()
    t = T0
    for i in range(100):
        t += 700 + (i % 7) * 50
        fresh(d, "a", t, kind=("delta", "digest")[i % 2], size=100 + i)
    before = d.features("a", hlc=(t + 10) << 16, size=120, now_ms=t + 10)
    again = d.features("a", hlc=(t + 10) << 16, size=120, now_ms=t + 10)
    assert before == again  # reading does not count the message
    named = dict(zip(FEATURE_NAMES, before, strict=True))
    assert named["warmup"] == 1.0
    assert named["kind_entropy"] > 0.9
    assert named["hlc_regress"] == 0.0
    replayed = dict(
        zip(
            FEATURE_NAMES,
            d.features("a", hlc=(t - 30_000) << 16, size=120, now_ms=t + 10),
            strict=True,
        )
    )
    assert replayed["hlc_regress"] == 1.0
    assert replayed["log_hlc_lag_s"] > 3.0
    newcomer = d.features("nobody", hlc=T0 << 16, size=10, now_ms=T0)
    assert dict(zip(FEATURE_NAMES, newcomer, strict=True))["warmup"] == 0.0


BOUNDS = {
    "log_rate_1s": (0, 10),
    "log_rate_10s": (0, 10),
    "log_rate_ratio": (-5, 8),
    "kind_entropy": (0, 3),
    "duplicate_ratio": (0, 1),
    "skew_mean": (-2, 2),
    "skew_deviation": (-2, 2),
    "interarrival_cv": (0, 4),
    "repair_share": (0, 1),
    "log_bad_attempts": (0, 8),
    "hlc_regress": (0, 1),
    "log_hlc_lag_s": (0, 5),
    "log_size_ratio": (-4, 4),
    "size_deviation": (0, 4),
    "kind_repeat": (0, 1),
    "warmup": (0, 1),
}


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(list(Observation)),
            st.integers(0, 5_000),  # time step
            st.text(max_size=12),  # kind
            st.integers(0, 2**64 - 1),  # hlc
            st.integers(0, 2**20),  # size
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=60,
    )
)
def test_features_stay_finite_and_bounded(
    steps: list[tuple[Observation, int, str, int, int, str]],
) -> None:
    assert set(BOUNDS) == set(FEATURE_NAMES)
    d = ZombieDetector(ZombieConfig(max_peers=2))
    t = T0
    for obs, step, kind, hlc, size, source in steps:
        t += step
        d.observe(source, obs, kind=kind, hlc=hlc, size=size, now_ms=t)
        vector = d.features(source, hlc=hlc, size=size, now_ms=t)
        for name, value in zip(FEATURE_NAMES, vector, strict=True):
            lo, hi = BOUNDS[name]
            assert math.isfinite(value), name
            assert lo <= value <= hi, (name, value)


def test_signed_rule_breaking_quarantines_after_five_messages() -> None:
    det = ZombieDetector(ZombieConfig())
    for i in range(4):
        assert det.observe("m", Observation.INVALID, kind="foreign-dots", hlc=0, size=0,
                           now_ms=1_000 + i) is None  # fmt: skip
    q = det.observe("m", Observation.INVALID, kind="foreign-dots", hlc=0, size=0, now_ms=1_010)
    assert q is not None
    assert q.reason == "invalid"
    assert det.is_quarantined("m", 1_020)
    assert not det.is_quarantined("honest", 1_020)
