"""The replay window: exact recent set, rotating Bloom pair, coverage of the whole window."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.models import ReplayConfig, ReplayVerdict, ReplayWindow

KEY = b"k" * 32
T0 = 1_700_000_000_000
A = F = 60_000  # max age, max ahead


def hlc(wall_ms: int, logical: int = 0) -> int:
    return wall_ms << 16 | logical


def window(**kw: int | float) -> ReplayWindow:
    return ReplayWindow(KEY, ReplayConfig(**kw), now_ms=T0)  # type: ignore[arg-type]


def test_fresh_then_immediate_repeat_is_a_certain_replay() -> None:
    w = window()
    assert w.check(b"kid", hlc(T0), b"nonce-1", T0) is ReplayVerdict.FRESH
    assert w.check(b"kid", hlc(T0), b"nonce-1", T0 + 5) is ReplayVerdict.REPLAY
    # Any field changed: a different envelope.
    assert w.check(b"kid", hlc(T0), b"nonce-2", T0 + 5) is ReplayVerdict.FRESH
    assert w.check(b"kid", hlc(T0, 1), b"nonce-1", T0 + 5) is ReplayVerdict.FRESH
    assert w.check(b"kie", hlc(T0), b"nonce-1", T0 + 5) is ReplayVerdict.FRESH


def test_age_bounds() -> None:
    w = window()
    now = T0 + 100_000
    assert w.check(b"k", hlc(now - A), b"n1", now) is ReplayVerdict.FRESH
    assert w.check(b"k", hlc(now - A - 1), b"n2", now) is ReplayVerdict.TOO_OLD
    assert w.check(b"k", hlc(now + F), b"n3", now) is ReplayVerdict.FRESH
    assert w.check(b"k", hlc(now + F + 1), b"n4", now) is ReplayVerdict.TOO_FAR_AHEAD


def test_entry_is_remembered_for_the_longest_replay_that_passes_the_age_check() -> None:
    # Stamped F ahead when it arrived at r, replayed when exactly A old: W = A + F later.
    for exact, want in ((8192, ReplayVerdict.REPLAY), (0, ReplayVerdict.MAYBE)):
        w = window(exact_capacity=exact)
        r = T0 + 12_345  # not aligned with rotations
        assert w.check(b"k", hlc(r + F), b"n", r) is ReplayVerdict.FRESH
        for t in range(r, r + A + F, 7_000):  # traffic keeps the window rotating
            w.check(b"other", hlc(t), t.to_bytes(8, "big"), t)
        assert w.check(b"k", hlc(r + F), b"n", r + A + F) is want
        assert w.rotations >= 1


def test_bloom_false_positive_is_resolved_by_the_exact_set() -> None:
    # An 8-bit filter (6 hashes) saturates at once: nearly every lookup is a hit.
    w = window(capacity=1, fp_rate=0.5, exact_capacity=1000)
    for i in range(30):
        assert w.check(b"k", hlc(T0 + i), bytes([i]), T0 + i) is ReplayVerdict.FRESH
    assert w.bloom_fp_resolved > 20


def test_unresolved_hit_is_maybe_when_the_exact_set_overflowed() -> None:
    w = window(capacity=1, fp_rate=0.5, exact_capacity=2)
    verdicts = [w.check(b"k", hlc(T0 + i), bytes([i]), T0 + i) for i in range(30)]
    assert ReplayVerdict.MAYBE in verdicts
    assert w.exact_evictions == 28
    # A repeat of an entry still in the exact set stays certain.
    assert w.check(b"k", hlc(T0 + 29), bytes([29]), T0 + 30) is ReplayVerdict.REPLAY


def test_clock_stepping_back_does_not_reopen_the_window() -> None:
    w = window()
    late = T0 + 500_000
    assert w.check(b"k", hlc(late), b"n", late) is ReplayVerdict.FRESH
    # Our clock jumps back 10 minutes: time in the window stays at `late`.
    assert w.check(b"k", hlc(late - 100_000), b"m", T0) is ReplayVerdict.TOO_OLD
    assert w.check(b"k", hlc(late), b"n", T0) is ReplayVerdict.REPLAY
    assert w.now_ms == late


def test_long_silence_clears_both_filters() -> None:
    w = window(exact_capacity=0)
    w.check(b"k", hlc(T0), b"n", T0)
    w.advance(T0 + 10 * (A + F))
    assert w.statistics()["current_fill"] == 0
    assert w.statistics()["previous_fill"] == 0


def test_bounds_are_enforced() -> None:
    w = window()
    with pytest.raises(ValueError):
        w.check(b"k" * 65, hlc(T0), b"n", T0)
    with pytest.raises(ValueError):
        w.check(b"k", 1 << 64, b"n", T0)
    with pytest.raises(ValueError):
        ReplayConfig(max_age_ms=0)


@settings(max_examples=150)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40_000),  # time step
            st.booleans(),  # repeat an earlier envelope?
            st.integers(0, 10**6),  # which one / nonce seed
            st.integers(-70_000, 70_000),  # sender clock offset
        ),
        min_size=1,
        max_size=80,
    ),
    st.sampled_from([0, 3, 64]),
)
def test_no_replay_is_ever_called_fresh(
    steps: list[tuple[int, bool, int, int]], exact: int
) -> None:
    """The safety property: a repeat that passes the age checks is never FRESH."""
    w = ReplayWindow(KEY, ReplayConfig(capacity=50, fp_rate=0.01, exact_capacity=exact), now_ms=T0)
    now = T0
    accepted: list[tuple[bytes, int, bytes]] = []
    for step, repeat, pick, offset in steps:
        now += step
        if repeat and accepted:
            kid, stamp, nonce = accepted[pick % len(accepted)]
            verdict = w.check(kid, stamp, nonce, now)
            assert verdict is not ReplayVerdict.FRESH
        else:
            entry = (b"kid%d" % (pick % 3), hlc(max(0, now + offset)), pick.to_bytes(4, "big"))
            if entry in accepted:
                continue
            verdict = w.check(*entry, now)
            if verdict in (ReplayVerdict.FRESH, ReplayVerdict.MAYBE):
                accepted.append(entry)
