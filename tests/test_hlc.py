"""The hybrid logical clock: a table from the algorithm, then properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsm_edge.sync import (
    MAX_LOGICAL,
    ClockDriftError,
    FileHighWaterMark,
    HybridLogicalClock,
    MemoryHighWaterMark,
    StoreError,
    Timestamp,
)


class FakeWall:
    def __init__(self, ms: int = 0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


# In the style of CockroachDB's hlc_test.go: each row is (physical time, event,
# expected stamp). Event is "send" or a remote (wall, logical) being received.
TABLE: list[tuple[int, str | tuple[int, int], tuple[int, int]]] = [
    (1, "send", (1, 0)),  # wall moves ahead: logical resets
    (1, "send", (1, 1)),  # same ms: logical ticks
    (0, "send", (1, 2)),  # physical clock went backwards: HLC does not
    (1, (1, 3), (1, 4)),  # remote equal wall, higher logical: max + 1
    (1, (0, 9), (1, 5)),  # remote behind: local + 1
    (5, (4, 9), (5, 0)),  # physical ahead of both: reset
    (5, (10, 5), (10, 6)),  # remote ahead (within max offset): remote + 1
    (10, (10, 5), (10, 7)),  # equal walls: max(local, remote) + 1
    (10, (10, 99), (10, 100)),
    (10, "send", (10, 101)),
    (11, "send", (11, 0)),  # wall moves to 11
    (11, (11, 0), (11, 1)),
    (11, (9, 70), (11, 2)),
    (12, (11, 65000), (12, 0)),
]


def test_table_from_the_algorithm() -> None:
    wall = FakeWall()
    clock = HybridLogicalClock("a", wall)
    for physical, event, expected in TABLE:
        wall.ms = physical
        got = clock.now() if event == "send" else clock.update(Timestamp(*event, node="b"))
        assert (got.wall, got.logical) == expected, (physical, event)
        assert got.node == "a"


def test_logical_counter_borrows_the_next_millisecond_instead_of_wrapping() -> None:
    wall = FakeWall(7)
    clock = HybridLogicalClock("a", wall)
    clock.update(Timestamp(7, MAX_LOGICAL - 1, "b"))
    assert clock.last == Timestamp(7, MAX_LOGICAL, "a")
    nxt = clock.now()
    assert nxt == Timestamp(8, 0, "a")
    assert clock.statistics().borrowed_ms == 1
    # and a received stamp at the counter's ceiling does the same
    assert clock.update(Timestamp(8, MAX_LOGICAL, "b")) == Timestamp(9, 0, "a")


def test_remote_stamp_too_far_ahead_is_rejected_and_counted() -> None:
    wall = FakeWall(1_000)
    clock = HybridLogicalClock("a", wall, max_offset_ms=500)
    before = clock.now()
    clock.update(Timestamp(1_500, 0, "b"))  # exactly at the bound: accepted
    with pytest.raises(ClockDriftError) as err:
        clock.update(Timestamp(1_501 + 500, 0, "b"))
    assert err.value.max_offset_ms == 500
    assert "ahead" in str(err.value)
    assert clock.statistics().rejected_drift == 1
    assert clock.last > before
    assert clock.last.wall == 1_500  # untouched by the rejection


def test_total_order_breaks_ties_by_node() -> None:
    assert Timestamp(5, 1, "a") < Timestamp(5, 1, "b") < Timestamp(5, 2, "a")
    assert Timestamp(6, 0, "a") > Timestamp(5, MAX_LOGICAL, "z")


@given(st.integers(0, 2**48 - 1), st.integers(0, MAX_LOGICAL))
def test_packing_round_trips_and_preserves_order(wall: int, logical: int) -> None:
    ts = Timestamp(wall, logical)
    assert Timestamp.unpack(ts.packed) == ts
    assert ts.packed < 2**64
    if logical < MAX_LOGICAL:
        assert Timestamp(wall, logical + 1).packed > ts.packed


def test_invalid_stamps_are_refused() -> None:
    with pytest.raises(ValueError, match="wall"):
        Timestamp(2**48, 0)
    with pytest.raises(ValueError, match="logical"):
        Timestamp(0, 2**16)
    with pytest.raises(ValueError, match="64-bit"):
        Timestamp.unpack(2**64)
    clock = HybridLogicalClock("a", lambda: -1)
    with pytest.raises(ValueError, match="wall clock"):
        clock.now()


# -- properties -------------------------------------------------------------

MAX_OFFSET = 1_000
steps = st.lists(
    st.tuples(
        st.integers(-50, 200),  # physical clock step (may go backwards)
        st.one_of(
            st.none(),  # a local/send event
            st.tuples(st.integers(-5_000, MAX_OFFSET + 200), st.integers(0, MAX_LOGICAL)),
        ),
    ),
    max_size=200,
)


@given(steps)
def test_stamps_are_strictly_monotonic_and_drift_is_bounded(
    events: list[tuple[int, tuple[int, int] | None]],
) -> None:
    wall = FakeWall(10_000)
    clock = HybridLogicalClock("a", wall, max_offset_ms=MAX_OFFSET)
    last = clock.now()
    highest_physical = wall.ms
    for step, remote in events:
        wall.ms = max(0, wall.ms + step)
        highest_physical = max(highest_physical, wall.ms)
        if remote is None:
            ts = clock.now()
        else:
            r = Timestamp(max(0, wall.ms + remote[0]), remote[1], "b")
            try:
                ts = clock.update(r)
            except ClockDriftError:
                assert r.wall - wall.ms > MAX_OFFSET
                continue
            assert ts > r  # a receive is after its send
            assert (ts.wall, ts.logical) > (r.wall, r.logical)
        assert (ts.wall, ts.logical) > (last.wall, last.logical)  # monotonic
        # drift above the highest physical time seen: bounded by max_offset
        # (+1 ms per borrowed millisecond)
        assert ts.wall - highest_physical <= MAX_OFFSET + clock.statistics().borrowed_ms
        last = ts


@given(st.lists(st.integers(0, 3), min_size=1, max_size=30))
def test_two_clocks_exchanging_messages_preserve_causality(order: list[int]) -> None:
    wall_a, wall_b = FakeWall(100), FakeWall(50)  # b's physical clock is behind
    a = HybridLogicalClock("a", wall_a)
    b = HybridLogicalClock("b", wall_b)
    for i, kind in enumerate(order):
        wall_a.ms += i % 3
        if kind == 0:
            sent = a.now()
            assert b.update(sent) > sent
        elif kind == 1:
            sent = b.now()
            assert a.update(sent) > sent
        elif kind == 2:
            assert a.now() > a.last.__class__(0, 0)
        else:
            wall_b.ms += 7


def test_ceiling_survives_a_restart_with_a_clock_that_went_backwards(tmp_path) -> None:
    mark = FileHighWaterMark(tmp_path / "hlc")
    wall = FakeWall(50_000)
    first = HybridLogicalClock("a", wall, high_water=mark, reserve_ms=100)
    issued = [first.now() for _ in range(5)]
    wall.ms = 50_250
    issued.append(first.now())
    writes = first.statistics().ceiling_writes
    assert writes == 2  # once at start, once when wall passed the reserve
    # reboot with the physical clock back at 0 (no RTC yet)
    wall.ms = 0
    second = HybridLogicalClock("a", wall, high_water=mark, reserve_ms=100)
    after = second.now()
    assert all(after > ts for ts in issued)
    assert after.wall - max(ts.wall for ts in issued) <= 100


def test_ceiling_is_written_once_per_reserve_not_per_stamp() -> None:
    mark = MemoryHighWaterMark()
    wall = FakeWall(1_000)
    clock = HybridLogicalClock("a", wall, high_water=mark, reserve_ms=1_000)
    for i in range(10_000):
        wall.ms = 1_000 + i // 5  # 5 stamps per ms, 2 s of time
        clock.now()
    assert mark.writes == 2
    assert mark.value > clock.last.wall


def test_corrupt_high_water_file_is_an_error_not_a_reset(tmp_path) -> None:
    path = tmp_path / "hlc"
    path.write_text("garbage")
    with pytest.raises(ValueError, match="corrupt"):
        HybridLogicalClock("a", FakeWall(1), high_water=FileHighWaterMark(path))


class FailingMark(MemoryHighWaterMark):
    """A mark whose store() fails while ``full`` (a full disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def store(self, wall_ms: int) -> None:
        if self.full:
            raise StoreError("disk full", cause="disk-full")
        super().store(wall_ms)


def test_a_ceiling_that_cannot_be_stored_stops_the_clock_by_default() -> None:
    mark, wall = FailingMark(), FakeWall(1_000)
    clock = HybridLogicalClock("a", wall, high_water=mark, reserve_ms=100)
    clock.now()  # stores the ceiling 1_100
    mark.full = True
    clock.now()  # below the stored ceiling: no write needed
    wall.ms = 2_000
    with pytest.raises(StoreError, match="disk full"):
        clock.now()
    assert clock.ceiling_error is None  # nothing deferred: the caller got the error


def test_deferred_ceiling_errors_keep_the_clock_running_and_are_retried() -> None:
    mark, wall = FailingMark(), FakeWall(1_000)
    clock = HybridLogicalClock(
        "a", wall, high_water=mark, reserve_ms=100, defer_ceiling_errors=True
    )
    issued = [clock.now()]  # stores the ceiling 1_100
    stored = mark.value
    mark.full = True
    for ms in range(2_000, 2_400, 10):  # four crossings of the reserve
        wall.ms = ms
        issued.append(clock.now())
    assert issued == sorted(issued)
    assert isinstance(clock.ceiling_error, StoreError)
    stats = clock.statistics()
    assert stats.ceiling_pending
    assert stats.ceiling_failures == 4  # one attempt per crossing, not per stamp
    assert mark.value == stored
    with pytest.raises(StoreError):
        clock.persist_ceiling()  # still full
    mark.full = False
    clock.persist_ceiling()
    assert clock.ceiling_error is None
    assert mark.value > max(ts.wall for ts in issued)  # the invariant is back
    clock.persist_ceiling()  # nothing pending: no write
    assert mark.writes == 2


def test_a_deferred_failure_clears_at_the_next_crossing_that_stores() -> None:
    mark, wall = FailingMark(), FakeWall(1_000)
    clock = HybridLogicalClock(
        "a", wall, high_water=mark, reserve_ms=100, defer_ceiling_errors=True
    )
    mark.full = True
    wall.ms = 2_000
    clock.now()
    assert clock.ceiling_error is not None
    mark.full = False
    wall.ms = 2_200
    after = clock.now()
    assert clock.ceiling_error is None
    assert mark.value > after.wall


def test_the_ceiling_can_be_kept_ahead_so_that_stamping_does_not_write_it() -> None:
    now = [1_000_000]
    mark = MemoryHighWaterMark()
    clock = HybridLogicalClock("n", lambda: now[0], high_water=mark, reserve_ms=1_000)
    clock.now()  # the first stamp after start stores the ceiling itself
    assert clock.statistics().ceiling_writes == 1
    now[0] += 100
    ahead = clock.ceiling_ahead()  # the stored ceiling is within 2 s: store one ahead
    assert ahead == now[0] + 4_000
    clock.store_ceiling(ahead)
    clock.ceiling_stored(ahead)
    assert mark.load() == ahead
    for _ in range(30):  # 3 s of stamps: all below the ceiling kept ahead
        now[0] += 100
        clock.now()
    stats = clock.statistics()
    assert stats.ceiling_writes == 2
    assert stats.ceiling_ahead_writes == 1
    assert clock.ceiling_ahead() is not None  # within 2 s again: time to store the next
    clock.ceiling_stored(ahead - 1)  # an older, lower write reported late changes nothing
    assert clock.statistics().ceiling_ahead_writes == 1
