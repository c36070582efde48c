"""The SQLite store on real database files: schema, delta log, compaction, outbox, errors."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.sync import (
    AsyncStore,
    HybridLogicalClock,
    OverflowPolicy,
    Store,
    StoreConfig,
    StoreCorruptError,
    StoreError,
    StoreFaultError,
    StoreFullError,
    StoreVersionError,
    SyncError,
)
from vsm_edge.sync._store import APPLICATION_ID, SCHEMA_VERSION

pytestmark = pytest.mark.integration


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "node.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    with Store.open(db) as s:
        yield s


def join_lists(blobs: Sequence[bytes]) -> bytes:
    """A join for test deltas: each blob is comma-separated ids; join = sorted union."""
    ids = sorted({int(x) for b in blobs for x in b.decode().split(",")})
    return ",".join(map(str, ids)).encode()


def blob(*ids: int) -> bytes:
    return ",".join(map(str, ids)).encode()


# -- opening, schema, errors --------------------------------------------------


def test_open_creates_a_wal_database_with_schema_version(db: Path) -> None:
    Store.open(db).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    finally:
        conn.close()


def test_reopen_keeps_data(db: Path) -> None:
    with Store.open(db) as s:
        s.append_delta("d", "a", 1, 1, b"x")
        s.put_snapshot("d", b"state", digest=b"dg", cover={"a": 1})
    with Store.open(db) as s:
        snap = s.get_snapshot("d")
        assert snap is not None
        assert (snap.state, snap.digest, dict(snap.cover)) == (b"state", b"dg", {"a": 1})
        assert [e.delta for e in s.deltas_after("d", "a", 0).entries] == [b"x"]


def test_newer_schema_is_rejected_with_a_clear_error(db: Path) -> None:
    Store.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreVersionError, match="newer") as info:
        Store.open(db)
    assert (info.value.found, info.value.supported) == (SCHEMA_VERSION + 1, SCHEMA_VERSION)


def test_foreign_sqlite_database_is_rejected(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorruptError, match="not a vsm-edge store"):
        Store.open(db)


def test_an_empty_file_is_a_truncated_store_not_a_new_one(db: Path) -> None:
    db.write_bytes(b"")
    with pytest.raises(StoreCorruptError, match="is empty") as info:
        Store.open(db)
    assert info.value.path == str(db)
    assert str(db) in str(info.value)
    assert "\n" not in str(info.value)
    assert db.stat().st_size == 0  # left as it was found, for whoever investigates
    assert sorted(p.name for p in db.parent.iterdir()) == ["node.db"]


def test_a_missing_file_is_a_new_store_created_whole(db: Path) -> None:
    with Store.open(db) as s:
        assert db.stat().st_size > 0  # never an empty file, even before the first commit
        s.append_delta("d", "a", 1, 1, b"x")
    assert sorted(p.name for p in db.parent.iterdir()) == ["node.db"]  # no temporary left
    with Store.open(db) as s:
        assert [e.delta for e in s.deltas_after("d", "a", 0).entries] == [b"x"]


def test_the_agent_refuses_to_start_on_an_empty_store_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "node.db").write_bytes(b"")
    (tmp_path / "node.toml").write_text(
        f'[node]\nid = "n"\ndata_dir = "{data}"\n[status]\nport = 0\n'
        '[discovery]\nenabled = false\n[broker]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent", "run", "--config", str(tmp_path / "node.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"vsm-edge run: {data / 'node.db'} is empty (0 bytes): the store was truncated and its "
        "data is lost; restore it from a backup, or delete the file to start a new store"
    ]
    assert (data / "node.db").stat().st_size == 0


def test_garbage_file_is_a_corrupt_store(db: Path) -> None:
    db.write_bytes(b"this is not an sqlite file" * 200)
    with pytest.raises(StoreCorruptError):
        Store.open(db)


def test_damaged_pages_are_reported_as_corruption(db: Path) -> None:
    with Store.open(db) as s, s.transaction():
        for i in range(1, 400):
            s.append_delta("d", "a", i, i, bytes([i % 256]) * 300)
    data = bytearray(db.read_bytes())
    assert len(data) > 8 * 4096
    for offset in range(2 * 4096, 6 * 4096, 7):  # scribble over b-tree pages 3..6
        data[offset] ^= 0x5A
    db.write_bytes(bytes(data))

    def open_and_read() -> None:
        with Store.open(db) as s:
            s.integrity_check()
            s.deltas_after("d", "a", 0)

    with pytest.raises(StoreCorruptError):  # at open, or at the check: never sqlite3
        open_and_read()


def test_second_process_cannot_open_the_same_store(db: Path) -> None:
    with Store.open(db, StoreConfig(busy_timeout_s=0.05)) as s:
        s.append_delta("d", "a", 1, 1, b"x")
        with pytest.raises(StoreError, match="in use"):
            Store.open(db, StoreConfig(busy_timeout_s=0.05))


def test_closed_store_raises_store_error(db: Path) -> None:
    s = Store.open(db)
    s.close()
    s.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        s.append_delta("d", "a", 1, 1, b"x")


def test_store_errors_are_sync_errors() -> None:
    assert issubclass(StoreError, SyncError)
    assert issubclass(StoreCorruptError, StoreError)
    assert issubclass(StoreFullError, StoreError)
    assert issubclass(StoreVersionError, StoreError)
    assert issubclass(StoreFaultError, StoreError)


def cap_pages(store: Store, extra: int = 0) -> None:
    """Let the database grow by ``extra`` pages at most: SQLite's own "disk is full"."""
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def uncap_pages(store: Store) -> None:
    store._conn.execute("PRAGMA max_page_count = 1073741823")


def test_a_full_disk_is_a_store_error_with_its_cause_not_a_bound(store: Store) -> None:
    store.append_delta("d", "a", 1, 1, b"x")
    cap_pages(store)
    with pytest.raises(StoreError) as caught:
        store.append_delta("d", "a", 2, 2, b"y" * 100_000)
    assert caught.value.cause == "disk-full"
    assert not isinstance(caught.value, StoreFullError)  # not one of our bounds
    assert "full" in str(caught.value)
    assert store.log_spans("d")["a"].last_seq == 1  # nothing of it committed
    uncap_pages(store)
    store.append_delta("d", "a", 2, 2, b"y" * 100_000)
    with pytest.raises(StoreFullError) as bound:
        store.append_delta("d", "a", 3, 3, b"z" * (store.config.max_delta_bytes + 1))
    assert bound.value.cause == "bound"


def test_probe_fails_on_a_disk_without_room_and_leaves_nothing(store: Store) -> None:
    cap_pages(store, extra=2)
    store.probe()  # one small row still fits
    with pytest.raises(StoreError) as caught:
        store.probe(room=64 * 1024)
    assert caught.value.cause == "disk-full"
    uncap_pages(store)
    store.probe(room=64 * 1024)
    assert store.documents() == []
    assert store.log_spans("") == {}
    with pytest.raises(ValueError, match="room"):
        store.probe(room=-1)


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_seq_reservations_never_go_down_and_survive_reopen(
    db: Path, synchronous: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(Store, "_fsync_wal", lambda self: calls.append(self.path))
    cfg = StoreConfig(synchronous=synchronous)  # type: ignore[arg-type]
    with Store.open(db, cfg) as s:
        assert s.reserved_seq("mesh", "n1") == 0
        s.reserve_seqs("mesh", "n1", 1024)
        s.reserve_seqs("mesh", "n1", 10)  # lower: a no-op
        s.reserve_seqs("other", "n1", 7)
        s.reserve_seqs("mesh", "n2", 3)
        # Like the HLC ceiling: fsynced even under NORMAL.
        assert len(calls) == (4 if synchronous == "NORMAL" else 0)
    with Store.open(db, cfg) as s:
        assert s.reserved_seq("mesh", "n1") == 1024
        assert s.reserved_seq("other", "n1") == 7
        assert s.reserved_seq("mesh", "n2") == 3
        with pytest.raises(ValueError, match="through"):
            s.reserve_seqs("mesh", "n1", -1)


def test_blob_and_name_bounds(db: Path) -> None:
    cfg = StoreConfig(max_delta_bytes=10, max_snapshot_bytes=20, max_name_bytes=8)
    with Store.open(db, cfg) as s:
        with pytest.raises(StoreFullError) as info:
            s.append_delta("d", "a", 1, 1, b"x" * 11)
        assert info.value.limit == "max_delta_bytes"
        s.append_delta("d", "a", 1, 1, b"x" * 10)
        with pytest.raises(StoreFullError, match="max_snapshot_bytes"):
            s.put_snapshot("d", b"s" * 21, digest=b"", cover={})
        with pytest.raises(StoreFullError, match="max_name_bytes"):
            s.append_delta("d" * 9, "a", 2, 2, b"x")
        with pytest.raises(ValueError, match="first_seq"):
            s.append_delta("d", "a", 3, 2, b"x")
        with pytest.raises(ValueError, match="first_seq"):
            s.append_delta("d", "a", 0, 2, b"x")
        with pytest.raises(TypeError):
            s.append_delta("d", "a", 5, 5, "text")  # type: ignore[arg-type]


def test_failed_transaction_commits_nothing(store: Store) -> None:
    class Boom(Exception):
        pass

    def fail_midway() -> None:
        with store.transaction():
            store.append_delta("d", "a", 1, 1, b"x")
            store.enqueue("t", b"payload")
            raise Boom

    with pytest.raises(Boom):
        fail_midway()
    assert store.deltas_after("d", "a", 0).entries == ()
    assert store.peek(10) == []
    assert store.statistics().outbox_messages == 0


def test_nested_transactions_commit_once(store: Store) -> None:
    before = store.statistics().commits
    with store.transaction():
        store.append_delta("d", "a", 1, 1, b"x")
        with store.transaction():
            store.append_delta("d", "a", 2, 2, b"y")
    assert store.statistics().commits == before + 1
    assert len(store.deltas_after("d", "a", 0).entries) == 2


def test_store_is_usable_from_several_threads(store: Store) -> None:
    errors: list[BaseException] = []

    def worker(origin: str) -> None:
        try:
            for i in range(1, 51):
                store.append_delta("d", origin, i, i, b"x")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"o{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {o: s.entries for o, s in store.log_spans("d").items()} == {
        f"o{n}": 50 for n in range(4)
    }


# -- HLC high-water mark ------------------------------------------------------


@pytest.mark.parametrize("synchronous", ["FULL", "NORMAL"])
def test_hlc_ceiling_survives_restart(db: Path, synchronous: str) -> None:
    cfg = StoreConfig(synchronous=synchronous)  # type: ignore[arg-type]
    wall = [1_000_000]
    with Store.open(db, cfg) as s:
        assert s.high_water.load() == 0
        clock = HybridLogicalClock("n", lambda: wall[0], high_water=s.high_water)
        last = max(clock.now() for _ in range(10))
    wall[0] = 0  # the physical clock went back across the reboot
    with Store.open(db, cfg) as s:
        assert s.high_water.load() > last.wall
        assert HybridLogicalClock("n", lambda: wall[0], high_water=s.high_water).now() > last


def test_hlc_ceiling_never_goes_down(db: Path) -> None:
    # The replicator's worker thread keeps it ahead while a stamp on the loop
    # may store one too: a late, lower write must not lower it.
    with Store.open(db) as s:
        s.write_hlc_ceiling(5_000)
        s.write_hlc_ceiling(4_000)
        assert s.hlc_ceiling() == 5_000
    with Store.open(db) as s:
        assert s.high_water.load() == 5_000


def test_hlc_ceiling_is_fsynced_even_under_normal(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    monkeypatch.setattr(Store, "_fsync_wal", lambda self: calls.append(self.path))
    with Store.open(db, StoreConfig(synchronous="NORMAL")) as s:
        s.append_delta("d", "a", 1, 1, b"x")
        assert calls == []  # an ordinary NORMAL commit is not fsynced
        s.high_water.store(123)
        assert len(calls) == 1
        with s.transaction():  # inside a batch: fsynced after the outer commit
            s.high_water.store(456)
            s.append_delta("d", "a", 2, 2, b"y")
            assert len(calls) == 1
        assert len(calls) == 2
        assert s.high_water.load() == 456
    with pytest.raises(ValueError, match="ceiling"):
        Store.open(db).high_water.store(-1)


# -- delta log ----------------------------------------------------------------


def test_deltas_after_returns_everything_after_seq(store: Store) -> None:
    for i in range(1, 6):
        store.append_delta("d", "a", i, i, blob(i))
    store.append_delta("d", "b", 1, 1, blob(100))
    run = store.deltas_after("d", "a", 2)
    assert [(e.first_seq, e.last_seq) for e in run.entries] == [(3, 3), (4, 4), (5, 5)]
    assert (run.through, run.contiguous, run.truncated) == (5, True, False)
    assert store.deltas_after("d", "a", 5).entries == ()
    assert store.deltas_after("d", "a", 5).contiguous
    assert store.deltas_after("other", "a", 0).entries == ()


def test_deltas_after_is_one_indexed_range_scan(store: Store) -> None:
    plan = store._conn.execute(
        "EXPLAIN QUERY PLAN SELECT first_seq, last_seq, delta FROM delta_log "
        "WHERE doc = ? AND origin = ? AND last_seq > ? ORDER BY last_seq",
        ("d", "a", 3),
    ).fetchall()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "USING INDEX delta_log_by_origin (doc=? AND origin=? AND last_seq>?)" in detail
    assert "TEMP B-TREE" not in detail  # no sort step


def test_gaps_and_straddling_intervals(store: Store) -> None:
    store.append_delta("d", "a", 1, 4, blob(1, 2, 3, 4))
    store.append_delta("d", "a", 7, 8, blob(7, 8))
    run = store.deltas_after("d", "a", 2)  # 1..4 straddles: included
    assert [(e.first_seq, e.last_seq) for e in run.entries] == [(1, 4), (7, 8)]
    assert not run.contiguous  # 5..6 missing
    assert store.deltas_after("d", "a", 6).contiguous
    assert not store.deltas_after("d", "a", 5).contiguous


def test_duplicates_and_contained_intervals_are_not_stored(store: Store) -> None:
    assert store.append_delta("d", "a", 1, 5, blob(1, 5))
    assert not store.append_delta("d", "a", 1, 5, blob(1, 5))  # duplicate
    assert not store.append_delta("d", "a", 2, 3, blob(2, 3))  # inside 1..5
    assert store.append_delta("d", "a", 4, 9, blob(4, 9))  # overlaps: kept
    assert store.append_delta("d", "a", 0 + 1, 12, blob(1, 12))  # contains both
    assert [(e.first_seq, e.last_seq) for e in store.deltas_after("d", "a", 0).entries] == [
        (1, 12)
    ]


def test_max_bytes_pages_a_repair(store: Store) -> None:
    for i in range(1, 11):
        store.append_delta("d", "a", i, i, b"x" * 100)
    run = store.deltas_after("d", "a", 0, max_bytes=350)
    assert [e.last_seq for e in run.entries] == [1, 2, 3]
    assert run.truncated
    assert run.through == 3
    run = store.deltas_after("d", "a", run.through, max_bytes=1)  # at least one entry
    assert [e.last_seq for e in run.entries] == [4]


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(st.integers(1, 30), st.integers(0, 6)).map(lambda t: (t[0], t[0] + t[1])),
        max_size=25,
    ),
    st.integers(0, 36),
)
def test_log_keeps_coverage_without_nesting(intervals: list[tuple[int, int]], after: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, Store.open(Path(tmp) / "p.db") as s:
        for first, last in intervals:
            s.append_delta("d", "a", first, last, blob(*range(first, last + 1)))
        stored = [(e.first_seq, e.last_seq) for e in s.deltas_after("d", "a", 0).entries]
        # no interval nests inside another, and they are ordered by both ends
        assert stored == sorted(stored)
        assert [f for f, _ in stored] == sorted(f for f, _ in stored)
        assert len({f for f, _ in stored}) == len(stored)
        # nothing appended was lost
        covered = {i for f, la in stored for i in range(f, la + 1)}
        assert covered == {i for f, la in intervals for i in range(f, la + 1)}
        # the query returns exactly the intervals reaching past `after`
        run = s.deltas_after("d", "a", after)
        assert [(e.first_seq, e.last_seq) for e in run.entries] == [
            iv for iv in stored if iv[1] > after
        ]
        wanted = {i for i in covered if i > after}
        got = {i for e in run.entries for i in range(e.first_seq, e.last_seq + 1) if i > after}
        assert got == wanted
        expect_contiguous = all(i in covered for i in range(after + 1, max(wanted, default=0)))
        assert run.contiguous == expect_contiguous


# -- snapshots and compaction ---------------------------------------------------


def test_uncovered_deltas_are_what_recovery_replays(store: Store) -> None:
    for i in range(1, 8):
        store.append_delta("d", "a", i, i, blob(i))
    store.append_delta("d", "b", 1, 2, blob(1, 2))
    store.put_snapshot("d", b"S", digest=b"", cover={"a": 4})
    got = [(e.origin, e.first_seq, e.last_seq) for e in store.uncovered_deltas("d")]
    assert got == [("a", 5, 5), ("a", 6, 6), ("a", 7, 7), ("b", 1, 2)]
    stats = store.log_statistics("d")
    assert (stats.entries, stats.uncovered_entries) == (8, 4)
    assert store.documents() == ["d"]


def test_compaction_joins_consecutive_deltas(store: Store) -> None:
    for i in [1, 2, 3, 5, 6]:
        store.append_delta("d", "a", i, i, blob(i))
    store.append_delta("d", "b", 1, 1, blob(9))
    result = store.compact("d", join_lists)
    assert (result.joined_entries, result.join_results) == (5, 2)
    entries = store.deltas_after("d", "a", 0).entries
    assert [(e.first_seq, e.last_seq, e.delta) for e in entries] == [
        (1, 3, b"1,2,3"),
        (5, 6, b"5,6"),
    ]
    assert store.deltas_after("d", "b", 0).entries[0].delta == b"9"


def test_compaction_join_respects_the_size_cap(db: Path) -> None:
    with Store.open(db, StoreConfig(join_max_bytes=250)) as s:
        for i in range(1, 7):
            s.append_delta("d", "a", i, i, b"x" * 100)
        s.compact("d", lambda blobs: b"".join(blobs)[:100])
        assert [(e.first_seq, e.last_seq) for e in s.deltas_after("d", "a", 0).entries] == [
            (1, 2),
            (3, 4),
            (5, 6),
        ]
        # a join that grows past the cap keeps the parts
        s.append_delta("d", "b", 1, 1, b"y")
        s.append_delta("d", "b", 2, 2, b"y")
        s.compact("d", lambda blobs: b"z" * 1000)
        assert len(s.deltas_after("d", "b", 0).entries) == 2


def test_trim_drops_only_covered_entries_oldest_first(db: Path) -> None:
    with Store.open(db, StoreConfig(log_max_entries=5)) as s:
        for i in range(1, 11):
            s.append_delta("d", "a", i, i, blob(i))
        result = s.compact("d")
        assert result.trimmed_entries == 0
        assert result.over_bound
        s.put_snapshot("d", b"S", digest=b"", cover={"a": 3})  # trims in the same commit
        assert [e.last_seq for e in s.deltas_after("d", "a", 0).entries] == list(range(4, 11))
        assert not s.deltas_after("d", "a", 0).contiguous  # a repair from 0 needs a state transfer
        assert s.compact("d").over_bound
        s.put_snapshot("d", b"S", digest=b"", cover={"a": 10})
        assert [e.last_seq for e in s.deltas_after("d", "a", 0).entries] == list(range(6, 11))
        assert not s.compact("d").over_bound
        assert s.statistics().log_trimmed == 5


def test_trim_by_bytes(db: Path) -> None:
    with Store.open(db, StoreConfig(log_max_bytes=250)) as s:
        for i in range(1, 6):
            s.append_delta("d", "a", i, i, b"x" * 100)
        s.put_snapshot("d", b"S", digest=b"", cover={"a": 5})
        assert s.log_statistics("d").bytes == 200


# -- outbox ---------------------------------------------------------------------


def test_outbox_is_fifo_with_peek_and_ack(store: Store) -> None:
    ids = [store.enqueue("t", f"m{i}".encode(), qos=1) for i in range(5)]
    assert ids == sorted(ids)
    head = store.peek(2)
    assert [m.payload for m in head] == [b"m0", b"m1"]
    assert [m.payload for m in store.peek(2)] == [b"m0", b"m1"]  # peek removes nothing
    assert [m.payload for m in store.peek(2, after_id=head[-1].id)] == [b"m2", b"m3"]
    assert store.ack(head[0].id, head[1].id) == 2
    assert store.ack(head[0].id) == 0  # already acked: not an error
    assert [m.payload for m in store.peek(10)] == [b"m2", b"m3", b"m4"]
    stats = store.statistics()
    assert (stats.outbox_messages, stats.outbox_bytes) == (3, 6)


def test_outbox_survives_reopen(db: Path) -> None:
    with Store.open(db) as s:
        s.enqueue("t", b"a", retain=True)
        s.enqueue("u", b"b", qos=0)
    with Store.open(db) as s:
        got = [(m.topic, m.payload, m.qos, m.retain) for m in s.peek(5)]
        assert got == [("t", b"a", 1, True), ("u", b"b", 0, False)]
        assert s.statistics().outbox_bytes == 2


def test_outbox_count_bound_drops_oldest_and_counts(db: Path) -> None:
    with Store.open(db, StoreConfig(outbox_max_messages=3)) as s:
        for i in range(5):
            s.enqueue("t", bytes([i]))
        assert [m.payload for m in s.peek(10)] == [b"\x02", b"\x03", b"\x04"]
        stats = s.statistics()
        assert (stats.outbox_dropped, stats.outbox_dropped_bytes, stats.outbox_messages) == (
            2,
            2,
            3,
        )
    with Store.open(db, StoreConfig(outbox_max_messages=3)) as s:
        assert s.statistics().outbox_dropped == 2  # counters are durable


def test_outbox_byte_bound_drops_oldest(db: Path) -> None:
    cfg = StoreConfig(outbox_max_bytes=100, max_payload_bytes=60)
    with Store.open(db, cfg) as s:
        s.enqueue("t", b"a" * 40)
        s.enqueue("t", b"b" * 40)
        s.enqueue("t", b"c" * 50)  # 130 > 100: the oldest goes
        assert [m.payload[:1] for m in s.peek(10)] == [b"b", b"c"]
        s.enqueue("t", b"d" * 60)  # 150 > 100: b (40) and c (50) go... only as needed
        assert [m.payload[:1] for m in s.peek(10)] == [b"d"]
        assert s.statistics().outbox_dropped == 3
        with pytest.raises(StoreFullError) as info:
            s.enqueue("t", b"e" * 61)
        assert info.value.limit == "max_payload_bytes"


def test_outbox_reject_policy_raises_and_keeps_the_queue(db: Path) -> None:
    cfg = StoreConfig(outbox_max_messages=2, outbox_overflow=OverflowPolicy.REJECT)
    with Store.open(db, cfg) as s:
        s.enqueue("t", b"1")
        s.enqueue("t", b"2")
        with pytest.raises(StoreFullError) as info:
            s.enqueue("t", b"3")
        assert info.value.limit == "outbox_max_messages"
        assert [m.payload for m in s.peek(5)] == [b"1", b"2"]
        assert s.statistics().outbox_messages == 2
        assert s.statistics().outbox_dropped == 0


def test_outbox_age_bound_with_injected_clock(db: Path) -> None:
    clock = FakeClock(1_000.0)
    with Store.open(db, StoreConfig(outbox_max_age_s=60.0), clock=clock) as s:
        s.enqueue("t", b"old")
        clock.now += 30
        s.enqueue("t", b"mid")
        clock.now += 30.5  # "old" is 60.5 s old now
        assert [m.payload for m in s.peek(10)] == [b"mid"]
        assert s.statistics().outbox_expired == 1
        clock.now += 100
        assert s.expire_outbox() == 1
        assert s.peek(10) == []
        assert s.statistics().outbox_bytes == 0


def test_outbox_bad_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="qos"):
        store.enqueue("t", b"x", qos=3)
    with pytest.raises(ValueError, match="limit"):
        store.peek(0)
    assert store.ack() == 0


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="synchronous"):
        StoreConfig(synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="outbox_max_age_s"):
        StoreConfig(outbox_max_age_s=0)
    with pytest.raises(ValueError, match="positive"):
        StoreConfig(outbox_max_messages=0)


# -- the Trio face ----------------------------------------------------------------


async def test_async_store_runs_off_the_loop(db: Path) -> None:
    async with await AsyncStore.open(db) as s:
        loop_thread = threading.get_ident()
        seen: list[int] = []

        async def append(origin: str) -> None:
            for i in range(1, 21):
                await s.append_delta("d", origin, i, i, blob(i))

        async with trio.open_nursery() as nursery:
            for n in range(5):
                nursery.start_soon(append, f"o{n}")
        await s.run_sync(lambda: seen.append(threading.get_ident()))
        assert seen
        assert seen[0] != loop_thread
        run = await s.deltas_after("d", "o3", 10)
        assert [e.last_seq for e in run.entries] == list(range(11, 21))
        msg_id = await s.enqueue("t", b"p")
        assert [m.id for m in await s.peek(5)] == [msg_id]
        assert await s.ack(msg_id) == 1
        await s.put_snapshot("d", b"S", digest=b"x", cover={"o0": 20})
        snap = await s.get_snapshot("d")
        assert snap is not None
        assert snap.cover["o0"] == 20
        assert len(await s.uncovered_deltas("d")) == 80
        assert (await s.compact("d", join_lists)).join_results == 5  # one run per origin
        assert (await s.statistics()).outbox_messages == 0


async def test_async_store_translates_errors(db: Path) -> None:
    await trio.Path(db).write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreCorruptError):
        await AsyncStore.open(db)
