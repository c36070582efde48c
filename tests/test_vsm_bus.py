"""The event bus: reorder windows, de-duplication, overflow policies, statistics."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.agent import (
    Channel,
    Event,
    EventBus,
    OverflowPolicy,
    ReorderBuffer,
    Subsystem,
    content_id,
)
from vsm_edge.sync import HybridLogicalClock, Timestamp

ACCEPTED, DUPLICATE, FULL = 0, 1, 2


def ev(
    wall: int, logical: int = 0, node: str = "n", value: float = 0.0, intensity: float = 0.0
) -> Event:
    return Event("reading", "u", "x", value, Timestamp(wall, logical, node), 1, "u.x", intensity)


@settings(max_examples=200)
@given(
    stamps=st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 3), st.sampled_from("abc")),
        unique=True,
        max_size=60,
    ),
    jitter=st.lists(st.floats(0, 0.049), min_size=60, max_size=60),
)
def test_events_reordered_within_the_window_come_out_in_hlc_order(
    stamps: list[tuple[int, int, str]], jitter: list[float]
) -> None:
    buf = ReorderBuffer(capacity=1000, window_s=0.05)
    # arrival order: by wall time plus up to 49 ms of network jitter (window is 50 ms)
    arrivals = sorted(
        ((w / 1000 + j, (w, lo, n)) for (w, lo, n), j in zip(stamps, jitter, strict=False))
    )
    out: list[Event] = []
    for at, (w, lo, n) in arrivals:
        out += buf.pop_ready(at, 10_000)
        assert buf.offer(ev(w, lo, n), at) == ACCEPTED
    out += buf.pop_ready(math.inf, 10_000)
    keys = [(e.hlc.wall, e.hlc.logical, e.hlc.node) for e in out]
    assert keys == sorted(keys)
    assert len(out) == len(stamps)
    assert buf.late == 0


def test_an_event_is_held_exactly_one_window() -> None:
    buf = ReorderBuffer(capacity=10, window_s=0.5)
    buf.offer(ev(2), 10.0)
    buf.offer(ev(1), 10.2)  # out of order, arrives later: delivered first
    assert buf.pop_ready(10.499, 10) == []
    # the head is wall 1 (it arrived at 10.2): wall 2 waits behind it until 10.7
    assert buf.next_deadline() == pytest.approx(10.7)
    assert [e.hlc.wall for e in buf.pop_ready(10.5, 10)] == []
    assert [e.hlc.wall for e in buf.pop_ready(10.7, 10)] == [1, 2]


def test_duplicates_are_dropped_and_counted() -> None:
    buf = ReorderBuffer(capacity=10, window_s=0.0)
    assert buf.offer(ev(1), 0) == ACCEPTED
    assert buf.offer(ev(1), 0) == DUPLICATE
    assert buf.pop_ready(0, 10)
    assert buf.offer(ev(1), 1) == DUPLICATE  # remembered after delivery too
    assert buf.offer(ev(1, value=2.0), 1) == ACCEPTED  # same stamp, other content: not a duplicate
    assert buf.duplicates == 2


def test_dedup_memory_is_bounded() -> None:
    buf = ReorderBuffer(capacity=100, window_s=0.0, dedup_capacity=3)
    for w in range(5):
        buf.offer(ev(w), 0)
    buf.pop_ready(0, 100)
    assert buf.offer(ev(4), 0) == DUPLICATE
    assert buf.offer(ev(0), 0) == ACCEPTED  # forgotten: beyond the last 3


def test_late_events_are_delivered_not_lost() -> None:
    buf = ReorderBuffer(capacity=10, window_s=0.1)
    buf.offer(ev(5), 0)
    assert len(buf.pop_ready(0.1, 10)) == 1
    buf.offer(ev(3), 0.2)
    assert buf.late == 1
    assert [e.hlc.wall for e in buf.pop_ready(0.2, 10)] == [3]


def test_intense_signals_bypass_the_window() -> None:
    buf = ReorderBuffer(capacity=10, window_s=1.0)
    buf.offer(ev(1), 0)
    buf.offer(ev(2, intensity=0.95), 0)
    buf.offer(ev(3, intensity=0.94), 0)
    assert [e.hlc.wall for e in buf.pop_ready(0, 10)] == [2]
    assert buf.bypassed == 1


def test_window_capacity_releases_early_keeping_order() -> None:
    buf = ReorderBuffer(capacity=10, window_s=1.0, window_capacity=2)
    for w in (3, 1, 2):
        buf.offer(ev(w), 0)
    assert buf.released_early == 1
    assert [e.hlc.wall for e in buf.pop_ready(0, 10)] == [1]
    assert [e.hlc.wall for e in buf.pop_ready(1, 10)] == [2, 3]


def test_eviction_spares_critical_signals_while_it_can() -> None:
    buf = ReorderBuffer(capacity=3, window_s=1.0)
    buf.offer(ev(1, intensity=0.99), 0)  # bypassed: ready at once
    buf.offer(ev(2), 0)
    buf.offer(ev(3), 0)
    assert buf.evict_oldest() == ev(2)
    assert buf.evict_oldest() == ev(3)
    assert buf.evict_oldest() == ev(1, intensity=0.99)  # nothing else left to drop


def test_capacity_is_reported_full() -> None:
    buf = ReorderBuffer(capacity=2, window_s=1.0)
    buf.offer(ev(1), 0)
    buf.offer(ev(2), 0)
    assert buf.offer(ev(3), 0) == FULL
    assert buf.evict_oldest() == ev(1)
    assert buf.offer(ev(3), 0) == ACCEPTED
    assert buf.dropped == 1
    assert buf.high_water == 2


@pytest.mark.parametrize(
    ("policy", "kept"),
    [(OverflowPolicy.DROP_OLDEST, [2, 3]), (OverflowPolicy.DROP_NEWEST, [1, 2])],
)
async def test_channel_overflow_policies(policy: OverflowPolicy, kept: list[int]) -> None:
    ch = Channel("t", capacity=2, window_s=0.0, overflow=policy)
    assert ch.send_nowait(ev(1))
    assert ch.send_nowait(ev(2))
    assert ch.send_nowait(ev(3)) == (policy is OverflowPolicy.DROP_OLDEST)
    assert [e.hlc.wall for e in await ch.receive_batch()] == kept
    assert ch.statistics().dropped == 1


async def test_channel_block_policy_makes_the_sender_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ch = Channel("t", capacity=1, window_s=0.25, overflow=OverflowPolicy.BLOCK)
    ch.send_nowait(ev(1))
    with pytest.raises(trio.WouldBlock):
        ch.send_nowait(ev(2))
    t0 = trio.current_time()
    sent_at: list[float] = []

    async def sender() -> None:
        await ch.send(ev(2))
        sent_at.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        first = await ch.receive_batch()
        assert trio.current_time() - t0 == pytest.approx(0.25)
        second = await ch.receive_batch()
    assert [e.hlc.wall for e in first + second] == [1, 2]
    assert sent_at == [pytest.approx(0.25)]
    assert trio.current_time() - t0 == pytest.approx(0.5)


async def test_bus_routes_by_kind_and_stamps_with_the_hlc(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = HybridLogicalClock("n", lambda: 1000)
    chans = {s: Channel(str(s), capacity=10, window_s=0.05) for s in (Subsystem.S2, Subsystem.S4)}
    bus = EventBus(clock, chans)
    bus.subscribe(Subsystem.S4, ["reading"])
    bus.subscribe(Subsystem.S2, ["reading", "command"])
    a = bus.event("reading", "u", "x", 1.0)
    b = bus.event("command", "op", "valve.set", 2.0)
    assert a.hlc < b.hlc
    assert a.category == "u.x"
    assert bus.publish(a) == 2
    assert bus.publish(b) == 1
    assert bus.publish(bus.event("nothing", "u", "y", 0)) == 0
    t0 = trio.current_time()
    got = await chans[Subsystem.S2].receive_batch()
    assert trio.current_time() - t0 == pytest.approx(0.05)
    assert got == [a, b]
    stats = bus.statistics()
    assert (stats.published, stats.unrouted) == (3, 1)
    assert stats.channels["s4"].received == 1


def test_content_id_is_a_stable_hash_of_the_canonical_content() -> None:
    a = ev(1, value=1.5)
    assert a.id == content_id(Event(*a))
    assert len(a.id) == 32
    assert a.id != ev(1, value=1.25).id
    assert a.id != ev(1, node="m", value=1.5).id
