"""The node's durable store: SQLite in WAL mode, one database file per node.

Theory of operation
-------------------
Four things live in one file, each in its own table:

``snapshot``
    one opaque CRDT state blob per document, with the opaque CRDT digest it
    corresponds to and the *cover*: for each origin node, the delta-log
    sequence number up to which the snapshot includes that origin's deltas.
``delta_log``
    opaque delta blobs keyed by ``(doc, origin, first_seq, last_seq)``: the
    delta-interval ``first_seq..last_seq`` of ``origin``'s updates (Almeida et
    al.'s delta-intervals). Intervals of one ``(doc, origin)`` never *nest*
    (an interval inside another one is redundant and is not kept), so ordering
    by ``last_seq`` is also ordering by ``first_seq`` and "everything of origin
    j after seq n" is one range scan of the unique index
    ``(doc, origin, last_seq)``: ``last_seq > n``.
``meta``
    small integers: the HLC ceiling (:class:`StoreHighWaterMark`), sequence
    reservations (:meth:`Store.reserve_seqs`) and counters.
``outbox``
    the store-and-forward queue of messages waiting for the broker: FIFO by
    an autoincrement id, deleted only by :meth:`Store.ack` (after the
    transport saw the PUBACK), bounded by count, bytes and age.

Recovery after a crash is ``snapshot`` + every log entry above the cover
(:meth:`Store.uncovered_deltas`), so a log entry above the cover is never
dropped. Compaction joins consecutive intervals (with a join function the
caller supplies, because blobs are opaque here) and trims the oldest entries
*covered* by the snapshot down to the retention bounds; what the trim drops
can no longer be served as a delta repair (:attr:`DeltaRun.contiguous` turns
false) and the gossip layer falls back to a state transfer.

Durability
----------
Every mutation is one ``BEGIN IMMEDIATE ... COMMIT`` transaction and returns
only after ``COMMIT`` returned. In WAL mode:

* ``synchronous=FULL`` (the default) fsyncs the WAL at every commit: an
  acknowledged mutation survives a process kill *and* a power loss (given a
  disk that honours flushes).
* ``synchronous=NORMAL`` writes the WAL at every commit (into the OS page
  cache) but fsyncs only at checkpoints: an acknowledged mutation survives a
  process kill (``kill -9``: the kernel still holds and later writes the
  pages), but a power loss or kernel crash may lose the last commits; the
  database stays consistent either way. A commit that wrote the HLC ceiling
  or a sequence reservation is always followed by an fsync of the WAL (what
  ``FULL`` does), because a clock running backwards, or a counter used twice,
  is worse than a lost update.

The database is opened with ``locking_mode=EXCLUSIVE``: one process (one node)
owns the file; a second opener gets a :class:`StoreError`. A new store is
built under a temporary name and linked into place whole, so an empty file at
the path is a truncated store (:class:`StoreCorruptError`), never a new one.

Threads: one connection, ``check_same_thread=False``, every use under one
re-entrant lock, so the synchronous API is safe from any thread and
:class:`AsyncStore` can run calls in Trio's worker threads.

Why one module: the four tables share one connection and one transaction
discipline, and the crash-recovery invariants above span them.
"""

from __future__ import annotations

import errno
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar

from ._errors import StoreCorruptError, StoreError, StoreFullError, StoreVersionError
from ._hlc import MAX_WALL_MS

__all__ = [
    "SCHEMA_VERSION",
    "CompactionResult",
    "DeltaRun",
    "LogEntry",
    "LogSpan",
    "LogStatistics",
    "OutboxMessage",
    "OverflowPolicy",
    "Snapshot",
    "Store",
    "StoreConfig",
    "StoreHighWaterMark",
    "StoreStatistics",
]

SCHEMA_VERSION: Final = 1
# PRAGMA application_id: "vsmE", so a foreign SQLite file is told apart from ours.
APPLICATION_ID: Final = 0x76736D45
MAX_SEQ: Final = (1 << 63) - 1

_SCHEMA: Final = (
    """CREATE TABLE snapshot (
        doc TEXT PRIMARY KEY,
        digest BLOB NOT NULL,
        state BLOB NOT NULL,
        written_at REAL NOT NULL
    )""",
    """CREATE TABLE snapshot_cover (
        doc TEXT NOT NULL,
        origin TEXT NOT NULL,
        seq INTEGER NOT NULL CHECK (seq >= 0),
        PRIMARY KEY (doc, origin)
    ) WITHOUT ROWID""",
    """CREATE TABLE delta_log (
        id INTEGER PRIMARY KEY,
        doc TEXT NOT NULL,
        origin TEXT NOT NULL,
        first_seq INTEGER NOT NULL,
        last_seq INTEGER NOT NULL,
        size INTEGER NOT NULL,
        delta BLOB NOT NULL,
        CHECK (1 <= first_seq AND first_seq <= last_seq)
    )""",
    "CREATE UNIQUE INDEX delta_log_by_origin ON delta_log (doc, origin, last_seq)",
    """CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
    """CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        size INTEGER NOT NULL,
        qos INTEGER NOT NULL CHECK (qos IN (0, 1, 2)),
        retain INTEGER NOT NULL CHECK (retain IN (0, 1)),
        enqueued_at REAL NOT NULL
    )""",
    "CREATE INDEX outbox_by_age ON outbox (enqueued_at)",
)
_TABLES: Final = frozenset({"snapshot", "snapshot_cover", "delta_log", "meta", "outbox"})

# meta keys
_HLC_CEILING: Final = "hlc_ceiling"
_OUTBOX_DROPPED: Final = "outbox_dropped"
_OUTBOX_DROPPED_BYTES: Final = "outbox_dropped_bytes"
_OUTBOX_EXPIRED: Final = "outbox_expired"
_LOG_TRIMMED: Final = "log_trimmed"
_WRITE_PROBES: Final = "write_probes"
# "reserved_seq:{origin}:{doc}" (an origin never contains ":")
_RESERVED_SEQ: Final = "reserved_seq:"

T = TypeVar("T")


class OverflowPolicy(Enum):
    """What :meth:`Store.enqueue` does when the outbox is at a bound."""

    DROP_OLDEST = "drop-oldest"
    """Delete the oldest messages until the new one fits; counted in statistics."""
    REJECT = "reject"
    """Raise :class:`StoreFullError` and keep the queue as it is."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Bounds and durability of a :class:`Store` (all sizes in bytes).

    ``log_max_entries``/``log_max_bytes`` bound, per document, the delta-log
    entries that the snapshot covers (the retention for repairs); entries
    above the snapshot's cover are never dropped, so take snapshots to bound
    them (see :meth:`Store.log_statistics`).
    """

    synchronous: Literal["FULL", "NORMAL"] = "FULL"
    max_name_bytes: int = 255
    max_digest_bytes: int = 64 * 1024
    max_delta_bytes: int = 256 * 1024
    max_snapshot_bytes: int = 64 * 1024 * 1024
    max_payload_bytes: int = 256 * 1024
    log_max_entries: int = 10_000
    log_max_bytes: int = 8 * 1024 * 1024
    join_max_bytes: int = 64 * 1024
    outbox_max_messages: int = 10_000
    outbox_max_bytes: int = 16 * 1024 * 1024
    outbox_max_age_s: float = 24 * 3600.0
    outbox_overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST
    busy_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        if self.synchronous not in ("FULL", "NORMAL"):
            raise ValueError("synchronous must be 'FULL' or 'NORMAL'")
        for name in (
            "max_name_bytes",
            "max_digest_bytes",
            "max_delta_bytes",
            "max_snapshot_bytes",
            "max_payload_bytes",
            "log_max_entries",
            "log_max_bytes",
            "join_max_bytes",
            "outbox_max_messages",
            "outbox_max_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.max_payload_bytes > self.outbox_max_bytes:
            raise ValueError("max_payload_bytes must not exceed outbox_max_bytes")
        if not (self.outbox_max_age_s > 0 and math.isfinite(self.outbox_max_age_s)):
            raise ValueError("outbox_max_age_s must be a positive number of seconds")
        if self.busy_timeout_s < 0:
            raise ValueError("busy_timeout_s must not be negative")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A document's stored state: opaque ``state`` and ``digest``, and its cover."""

    doc: str
    state: bytes
    digest: bytes
    cover: Mapping[str, int]
    written_at: float


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One delta-interval of ``origin``'s updates ``first_seq..last_seq``."""

    doc: str
    origin: str
    first_seq: int
    last_seq: int
    delta: bytes


@dataclass(frozen=True, slots=True)
class DeltaRun:
    """The answer to "everything of ``origin`` after ``after_seq``".

    ``contiguous`` is true when the entries cover every seq from
    ``after_seq + 1`` to ``through`` without a gap (so they are a valid
    repair); ``truncated`` when ``max_bytes`` stopped the scan early (ask
    again with ``after_seq=through``). ``through`` is the last seq returned
    (``after_seq`` when nothing was).
    """

    entries: tuple[LogEntry, ...]
    after_seq: int
    through: int
    contiguous: bool
    truncated: bool


@dataclass(frozen=True, slots=True)
class LogSpan:
    """What the log holds for one origin: lowest first_seq, highest last_seq, entries."""

    first_seq: int
    last_seq: int
    entries: int


@dataclass(frozen=True, slots=True)
class LogStatistics:
    entries: int
    bytes: int
    uncovered_entries: int
    uncovered_bytes: int


@dataclass(frozen=True, slots=True)
class CompactionResult:
    joined_entries: int
    join_results: int
    trimmed_entries: int
    trimmed_bytes: int
    entries_after: int
    bytes_after: int
    over_bound: bool
    """True when the log is still above its bounds because entries above the
    snapshot's cover cannot be dropped: take a snapshot."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class StoreStatistics:
    outbox_messages: int
    outbox_bytes: int
    outbox_dropped: int
    outbox_dropped_bytes: int
    outbox_expired: int
    log_trimmed: int
    commits: int
    path: str = field(default="")


class StoreHighWaterMark:
    """The HLC ceiling kept in the store (implements the ``HighWaterMark`` protocol).

    :meth:`store` returns only after the commit is fsynced, whatever the
    store's ``synchronous`` setting (inside :meth:`Store.transaction` the
    ceiling is durable when the outermost block has exited).
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def load(self) -> int:
        return self._store.hlc_ceiling()

    def store(self, wall_ms: int) -> None:
        if not 0 <= wall_ms <= MAX_WALL_MS:
            raise ValueError(f"HLC ceiling {wall_ms!r} outside 0..2**48-1 ms")
        self._store.write_hlc_ceiling(wall_ms)


class Store:
    """A node's SQLite store; see the module docstring.

    Open with :meth:`open`; every method raises :class:`StoreError` (or a
    subtype) instead of an ``sqlite3`` error, and a method that raised
    committed nothing. ``clock`` gives wall-clock seconds for outbox ages
    (inject a fake in tests).
    """

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: str,
        config: StoreConfig,
        clock: Callable[[], float],
    ) -> None:
        self._conn = conn
        self.path = path
        self.config = config
        self._clock = clock
        self._lock = threading.RLock()
        self._depth = 0
        self._commits = 0
        self._fsync_after_commit = False
        self._closed = False
        self._outbox_count = 0
        self._outbox_bytes = 0
        self.high_water = StoreHighWaterMark(self)

    # -- opening and closing -------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> Store:
        """Open (creating if missing) the store at ``path``.

        Raises :class:`StoreCorruptError` when the file is empty (0 bytes: a
        store that was truncated, never a new one), is not a vsm-edge store or
        is damaged, :class:`StoreVersionError` when a newer schema wrote it,
        :class:`StoreError` when another process holds it.
        """
        config = config or StoreConfig()
        spath = os.fspath(path)
        Path(spath).parent.mkdir(parents=True, exist_ok=True)
        try:
            size: int | None = os.stat(spath).st_size
        except FileNotFoundError:
            size = None
        except OSError as exc:
            raise StoreError(f"{spath}: cannot open: {exc.strerror or exc}") from None
        if size is None:
            cls._create(spath, config, clock)
        elif size == 0:
            # SQLite would take an empty file for a new database. A store is
            # never empty on disk (it is created whole, below), so this one was
            # truncated: starting afresh over it would hide the loss.
            raise StoreCorruptError(
                f"{spath} is empty (0 bytes): the store was truncated and its data is lost; "
                "restore it from a backup, or delete the file to start a new store",
                spath,
            )
        return cls._connect(spath, config, clock)

    @classmethod
    def _create(cls, spath: str, config: StoreConfig, clock: Callable[[], float]) -> None:
        """Build a new store beside ``spath`` and link it into place whole.

        So no crash leaves an empty or half-made file at ``spath``. When
        another process created ``spath`` meanwhile, its store is kept.
        """
        tmp = f"{spath}.new-{os.getpid()}"
        _remove_database(tmp)
        try:
            cls._connect(tmp, config, clock).close()  # the schema, checkpointed into the file
            _fsync(tmp)
            try:
                os.link(tmp, spath)  # fails if spath exists: never replaces a store
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not os.path.exists(spath):
                    os.rename(tmp, spath)
            _fsync(os.path.dirname(os.path.abspath(spath)))
        except OSError as exc:
            raise StoreError(f"{spath}: cannot create the store: {exc.strerror or exc}") from None
        finally:
            _remove_database(tmp)

    @classmethod
    def _connect(cls, spath: str, config: StoreConfig, clock: Callable[[], float]) -> Store:
        try:
            conn = sqlite3.connect(
                spath,
                timeout=config.busy_timeout_s,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise _translate(exc, spath, "open") from None
        store = cls(conn, spath, config, clock)
        try:
            store._setup()
        except BaseException:
            conn.close()
            raise
        return store

    def _setup(self) -> None:
        with self._guard("open"):
            c = self._conn
            c.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout_s * 1000)}")
            c.execute("PRAGMA locking_mode = EXCLUSIVE")
            # Reading the header is the first access: a file that is not a
            # database fails here ("file is not a database").
            app_id = c.execute("PRAGMA application_id").fetchone()[0]
            version = c.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
            tables.discard("sqlite_sequence")
            if version > SCHEMA_VERSION:
                raise StoreVersionError(
                    f"{self.path} has schema version {version}, newer than {SCHEMA_VERSION} "
                    "known to this vsm-edge; upgrade vsm-edge or use another data dir",
                    found=version,
                    supported=SCHEMA_VERSION,
                )
            if tables and (app_id != APPLICATION_ID or version == 0):
                raise StoreCorruptError(
                    f"{self.path} is an SQLite database but not a vsm-edge store", self.path
                )
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
            c.execute(f"PRAGMA synchronous = {self.config.synchronous}")
            c.execute("PRAGMA foreign_keys = OFF")
            c.execute("PRAGMA journal_size_limit = 67108864")  # keep the WAL file bounded
            if not tables:
                c.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        c.execute(statement)
                    c.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    c.execute("COMMIT")
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
            elif not tables >= _TABLES:
                raise StoreCorruptError(
                    f"{self.path}: tables {sorted(_TABLES - tables)} are missing", self.path
                )
            self._reload_outbox_totals()

    def close(self) -> None:
        """Close the connection (idempotent). SQLite checkpoints the WAL on close."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.close()
            except sqlite3.Error as exc:
                raise _translate(exc, self.path, "close") from None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several mutations into one atomic, durable commit.

        Re-entrant: mutations called inside run in the outer transaction,
        which commits when the outermost block exits (and rolls back if it
        raises). Nothing is acknowledged before that commit.
        """
        with self._lock:
            self._check_open()
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            with self._guard("transaction"):
                self._conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._rollback()
                raise
            self._depth = 0
            try:
                with self._guard("commit"):
                    self._conn.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            self._commits += 1
            if self._fsync_after_commit:
                self._fsync_after_commit = False
                try:
                    self._fsync_wal()
                except OSError as exc:
                    raise StoreError(
                        f"{self.path}: fsync of the WAL failed: {exc}", cause=_os_cause(exc)
                    ) from None

    def _rollback(self) -> None:
        self._fsync_after_commit = False
        try:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # the original error is the one worth reporting
        with suppress(sqlite3.Error):
            self._reload_outbox_totals()

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _translate(exc, self.path, what) from None

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.path} is closed", cause="closed")

    def _read(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        with self._lock:
            self._check_open()
            with self._guard(what):
                return fn(self._conn)

    # -- snapshots -----------------------------------------------------------

    def put_snapshot(
        self, doc: str, state: bytes, *, digest: bytes, cover: Mapping[str, int]
    ) -> None:
        """Store ``doc``'s full state, replacing the previous snapshot.

        ``cover[origin]`` is the highest delta-log seq of ``origin`` that
        ``state`` includes. Then trims covered log entries above the
        retention bounds (in the same transaction).
        """
        self._name(doc, "doc")
        _blob(state, self.config.max_snapshot_bytes, "max_snapshot_bytes")
        _blob(digest, self.config.max_digest_bytes, "max_digest_bytes")
        rows = []
        for origin, seq in cover.items():
            self._name(origin, "origin")
            _seq(seq, "cover seq", minimum=0)
            rows.append((doc, origin, seq))
        with self.transaction(), self._guard("put_snapshot"):
            c = self._conn
            c.execute(
                "INSERT OR REPLACE INTO snapshot (doc, digest, state, written_at) "
                "VALUES (?, ?, ?, ?)",
                (doc, bytes(digest), bytes(state), self._clock()),
            )
            c.execute("DELETE FROM snapshot_cover WHERE doc = ?", (doc,))
            c.executemany("INSERT INTO snapshot_cover (doc, origin, seq) VALUES (?, ?, ?)", rows)
            self._trim(doc)

    def get_snapshot(self, doc: str) -> Snapshot | None:
        """The stored snapshot of ``doc``, or None."""

        def read(c: sqlite3.Connection) -> Snapshot | None:
            row = c.execute(
                "SELECT state, digest, written_at FROM snapshot WHERE doc = ?", (doc,)
            ).fetchone()
            if row is None:
                return None
            return Snapshot(doc, row[0], row[1], self._cover(doc), row[2])

        return self._read(read, "get_snapshot")

    def _cover(self, doc: str) -> Mapping[str, int]:
        rows = self._conn.execute(
            "SELECT origin, seq FROM snapshot_cover WHERE doc = ? ORDER BY origin", (doc,)
        )
        return MappingProxyType(dict(rows.fetchall()))

    def documents(self) -> list[str]:
        """Names of the documents with a snapshot or log entries, sorted."""
        return self._read(
            lambda c: [
                r[0]
                for r in c.execute(
                    "SELECT doc FROM snapshot UNION SELECT DISTINCT doc FROM delta_log ORDER BY 1"
                )
            ],
            "documents",
        )

    # -- delta log -----------------------------------------------------------

    def append_delta(
        self, doc: str, origin: str, first_seq: int, last_seq: int, delta: bytes
    ) -> bool:
        """Log ``origin``'s delta-interval ``first_seq..last_seq`` of ``doc``.

        Returns False (and stores nothing) when an existing entry already
        contains the interval (a duplicate); entries the new interval
        contains are replaced by it. Durable when it returns.
        """
        self._name(doc, "doc")
        self._name(origin, "origin")
        _seq(first_seq, "first_seq")
        _seq(last_seq, "last_seq")
        if first_seq > last_seq:
            raise ValueError(f"first_seq {first_seq} > last_seq {last_seq}")
        _blob(delta, self.config.max_delta_bytes, "max_delta_bytes")
        with self.transaction(), self._guard("append_delta"):
            return self._insert_interval(doc, origin, first_seq, last_seq, bytes(delta))

    def _insert_interval(
        self, doc: str, origin: str, first_seq: int, last_seq: int, delta: bytes
    ) -> bool:
        c = self._conn
        # No nesting among stored intervals, so the first one ending at or
        # after last_seq is the only candidate that could contain the new one.
        row = c.execute(
            "SELECT first_seq FROM delta_log WHERE doc = ? AND origin = ? AND last_seq >= ? "
            "ORDER BY last_seq LIMIT 1",
            (doc, origin, last_seq),
        ).fetchone()
        if row is not None and row[0] <= first_seq:
            return False
        c.execute(
            "DELETE FROM delta_log WHERE doc = ? AND origin = ? "
            "AND last_seq BETWEEN ? AND ? AND first_seq >= ?",
            (doc, origin, first_seq, last_seq, first_seq),
        )
        c.execute(
            "INSERT INTO delta_log (doc, origin, first_seq, last_seq, size, delta) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (doc, origin, first_seq, last_seq, len(delta), delta),
        )
        return True

    def deltas_after(
        self, doc: str, origin: str, after_seq: int, *, max_bytes: int | None = None
    ) -> DeltaRun:
        """Every logged delta of ``origin`` in ``doc`` with seqs above ``after_seq``.

        One range scan of the ``(doc, origin, last_seq)`` index. With
        ``max_bytes`` the scan stops before the entry that would pass it
        (but always returns at least one entry).
        """
        _seq(after_seq, "after_seq", minimum=0)

        def read(c: sqlite3.Connection) -> DeltaRun:
            cur = c.execute(
                "SELECT first_seq, last_seq, delta FROM delta_log "
                "WHERE doc = ? AND origin = ? AND last_seq > ? ORDER BY last_seq",
                (doc, origin, after_seq),
            )
            entries: list[LogEntry] = []
            through = after_seq
            contiguous = True
            total = 0
            truncated = False
            for first, last, delta in cur:
                if max_bytes is not None and entries and total + len(delta) > max_bytes:
                    truncated = True
                    break
                if first > through + 1:
                    contiguous = False
                entries.append(LogEntry(doc, origin, first, last, delta))
                through = last
                total += len(delta)
            return DeltaRun(tuple(entries), after_seq, through, contiguous, truncated)

        return self._read(read, "deltas_after")

    def log_spans(self, doc: str) -> dict[str, LogSpan]:
        """Per origin, the seq range the log holds for ``doc`` (gaps possible)."""
        return self._read(
            lambda c: {
                origin: LogSpan(first, last, n)
                for origin, first, last, n in c.execute(
                    "SELECT origin, MIN(first_seq), MAX(last_seq), COUNT(*) FROM delta_log "
                    "WHERE doc = ? GROUP BY origin ORDER BY origin",
                    (doc,),
                )
            },
            "log_spans",
        )

    def uncovered_deltas(self, doc: str) -> list[LogEntry]:
        """The log entries above the snapshot's cover: what recovery replays."""

        def read(c: sqlite3.Connection) -> list[LogEntry]:
            cur = c.execute(
                "SELECT l.origin, l.first_seq, l.last_seq, l.delta FROM delta_log AS l "
                "LEFT JOIN snapshot_cover AS s ON s.doc = l.doc AND s.origin = l.origin "
                "WHERE l.doc = ? AND l.last_seq > COALESCE(s.seq, 0) "
                "ORDER BY l.origin, l.last_seq",
                (doc,),
            )
            return [LogEntry(doc, o, f, la, d) for o, f, la, d in cur]

        return self._read(read, "uncovered_deltas")

    def log_statistics(self, doc: str) -> LogStatistics:
        """Entries and bytes of ``doc``'s log, in total and above the snapshot's cover."""

        def read(c: sqlite3.Connection) -> LogStatistics:
            row = c.execute(
                "SELECT COUNT(*), COALESCE(SUM(l.size), 0), "
                "COALESCE(SUM(l.last_seq > COALESCE(s.seq, 0)), 0), "
                "COALESCE(SUM(CASE WHEN l.last_seq > COALESCE(s.seq, 0) "
                "THEN l.size ELSE 0 END), 0) "
                "FROM delta_log AS l LEFT JOIN snapshot_cover AS s "
                "ON s.doc = l.doc AND s.origin = l.origin WHERE l.doc = ?",
                (doc,),
            ).fetchone()
            return LogStatistics(row[0], row[1], row[2], row[3])

        return self._read(read, "log_statistics")

    def compact(
        self, doc: str, join: Callable[[Sequence[bytes]], bytes] | None = None
    ) -> CompactionResult:
        """Compact ``doc``'s log in one transaction.

        With ``join`` (the CRDT join of several encoded deltas into one
        encoded delta, in seq order), runs of adjacent or overlapping
        intervals of one origin are replaced by one joined entry of at most
        ``join_max_bytes`` (counted before joining). Then the oldest entries
        covered by the snapshot are dropped while the log is above
        ``log_max_entries``/``log_max_bytes``. Entries above the cover are
        never dropped: ``over_bound`` says a snapshot is needed.
        """
        self._name(doc, "doc")
        with self.transaction(), self._guard("compact"):
            joined = results = 0
            if join is not None:
                joined, results = self._join_runs(doc, join)
            trimmed, trimmed_bytes = self._trim(doc)
            n, size = self._conn.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM delta_log WHERE doc = ?", (doc,)
            ).fetchone()
            over = n > self.config.log_max_entries or size > self.config.log_max_bytes
            return CompactionResult(joined, results, trimmed, trimmed_bytes, n, size, over)

    def _join_runs(self, doc: str, join: Callable[[Sequence[bytes]], bytes]) -> tuple[int, int]:
        c = self._conn
        cap = min(self.config.join_max_bytes, self.config.max_delta_bytes)
        joined = results = 0
        origins = [
            r[0] for r in c.execute("SELECT DISTINCT origin FROM delta_log WHERE doc = ?", (doc,))
        ]
        for origin in origins:
            rows = c.execute(
                "SELECT id, first_seq, last_seq, size FROM delta_log "
                "WHERE doc = ? AND origin = ? ORDER BY last_seq",
                (doc, origin),
            ).fetchall()
            runs: list[list[tuple[int, int, int, int]]] = []
            for row in rows:
                run = runs[-1] if runs else None
                if (
                    run is not None
                    and row[1] <= run[-1][2] + 1
                    and sum(r[3] for r in run) + row[3] <= cap
                ):
                    run.append(row)
                else:
                    runs.append([row])
            for run in runs:
                if len(run) < 2:
                    continue
                ids = [r[0] for r in run]
                blobs = [
                    c.execute("SELECT delta FROM delta_log WHERE id = ?", (i,)).fetchone()[0]
                    for i in ids
                ]
                merged = join(blobs)
                if not isinstance(merged, bytes | bytearray) or len(merged) > cap:
                    continue  # a join that grew or failed to encode: keep the parts
                c.executemany("DELETE FROM delta_log WHERE id = ?", [(i,) for i in ids])
                c.execute(
                    "INSERT INTO delta_log (doc, origin, first_seq, last_seq, size, delta) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (doc, origin, run[0][1], run[-1][2], len(merged), bytes(merged)),
                )
                joined += len(run)
                results += 1
        return joined, results

    def _trim(self, doc: str) -> tuple[int, int]:
        """Drop the oldest covered entries of ``doc`` while over the bounds."""
        c = self._conn
        n, size = c.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM delta_log WHERE doc = ?", (doc,)
        ).fetchone()
        cfg = self.config
        if n <= cfg.log_max_entries and size <= cfg.log_max_bytes:
            return 0, 0
        cur = c.execute(
            "SELECT l.id, l.size FROM delta_log AS l JOIN snapshot_cover AS s "
            "ON s.doc = l.doc AND s.origin = l.origin "
            "WHERE l.doc = ? AND l.last_seq <= s.seq ORDER BY l.id",
            (doc,),
        )
        victims: list[tuple[int]] = []
        freed = 0
        for row_id, row_size in cur:
            if n - len(victims) <= cfg.log_max_entries and size - freed <= cfg.log_max_bytes:
                break
            victims.append((row_id,))
            freed += row_size
        c.executemany("DELETE FROM delta_log WHERE id = ?", victims)
        if victims:
            self._meta_add(_LOG_TRIMMED, len(victims))
        return len(victims), freed

    # -- HLC ceiling ---------------------------------------------------------

    def _meta_get(self, key: str) -> int:
        row = self._read(
            lambda c: c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone(),
            "meta",
        )
        return 0 if row is None else int(row[0])

    def _meta_add(self, key: str, delta: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = value + excluded.value",
            (key, delta),
        )

    def hlc_ceiling(self) -> int:
        """The stored HLC ceiling in wall ms (0 when none): see ``StoreHighWaterMark``."""
        return self._meta_get(_HLC_CEILING)

    def write_hlc_ceiling(self, wall_ms: int) -> None:
        """Store the HLC ceiling durably; it never goes down (two writers may race)."""
        with self.transaction(), self._guard("hlc ceiling"):
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                (_HLC_CEILING, wall_ms),
            )
            # Under synchronous=NORMAL the commit is not fsynced: ask the
            # outermost transaction to fsync the WAL after its COMMIT (the
            # safety level cannot change inside a transaction).
            self._fsync_after_commit = self.config.synchronous != "FULL"

    # -- sequence reservations ----------------------------------------------

    def reserved_seq(self, doc: str, origin: str) -> int:
        """The highest seq of ``origin`` in ``doc`` reserved so far (0 when none).

        See :meth:`reserve_seqs`; docs/store.md, "Sequence reservations".
        """
        return self._meta_get(f"{_RESERVED_SEQ}{origin}:{doc}")

    def reserve_seqs(self, doc: str, origin: str, through: int) -> None:
        """Durably record that ``origin`` may use seqs of ``doc`` up to ``through``.

        A reservation never goes down (a lower ``through`` is a no-op). Like the
        HLC ceiling, the commit is fsynced whatever ``synchronous`` says (inside
        :meth:`transaction`: when the outermost block has exited), because a
        replica that restarts below a seq it already used would reuse it.
        """
        self._name(doc, "doc")
        self._name(origin, "origin")
        _seq(through, "through", minimum=0)
        with self.transaction(), self._guard("reserve_seqs"):
            self._conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                (f"{_RESERVED_SEQ}{origin}:{doc}", through),
            )
            if self.config.synchronous != "FULL":
                self._fsync_after_commit = True

    def probe(self, room: int = 0) -> None:
        """Commit a small write, after making sure that ``room`` more bytes fit.

        The room check writes a ``room``-byte row and deletes it in the same
        transaction (the pages it took stay in the file, free for the next
        writes), so a nearly full disk that still takes a one-row commit does
        not pass for a working one. Raises :class:`StoreError` when the store
        cannot take the writes (``cause`` says why, e.g. ``"disk-full"``):
        what a caller retries with backoff to find out that a faulted store
        works again.
        """
        if room < 0:
            raise ValueError("room must be >= 0")
        with self.transaction(), self._guard("probe"):
            if room:
                # doc "" names no document (names are non-empty): nothing reads it.
                cur = self._conn.execute(
                    "INSERT INTO delta_log (doc, origin, first_seq, last_seq, size, delta) "
                    "VALUES ('', '', 1, 1, ?, zeroblob(?))",
                    (room, room),
                )
                self._conn.execute("DELETE FROM delta_log WHERE id = ?", (cur.lastrowid,))
            self._meta_add(_WRITE_PROBES, 1)

    def _fsync_wal(self) -> None:
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and removed: the data is in the (synced) main file
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- outbox --------------------------------------------------------------

    def enqueue(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Append a message to the outbox; returns its id (FIFO order).

        Expired messages are removed first. At a bound (count or bytes) the
        configured :class:`OverflowPolicy` applies: drop the oldest messages
        (counted in :meth:`statistics`) or raise :class:`StoreFullError`.
        A payload above ``max_payload_bytes`` raises :class:`StoreFullError`.
        """
        self._name(topic, "topic")
        _blob(payload, self.config.max_payload_bytes, "max_payload_bytes")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        size = len(payload)
        cfg = self.config
        with self.transaction(), self._guard("enqueue"):
            now = self._clock()
            self._expire(now)
            over_count = self._outbox_count + 1 - cfg.outbox_max_messages
            over_bytes = self._outbox_bytes + size - cfg.outbox_max_bytes
            if over_count > 0 or over_bytes > 0:
                if cfg.outbox_overflow is OverflowPolicy.REJECT:
                    limit = "outbox_max_messages" if over_count > 0 else "outbox_max_bytes"
                    raise StoreFullError(
                        f"outbox full ({self._outbox_count} messages, {self._outbox_bytes} "
                        f"bytes; {limit} reached)",
                        limit,
                    )
                self._drop_oldest(max(over_count, 0), max(over_bytes, 0))
            cur = self._conn.execute(
                "INSERT INTO outbox (topic, payload, size, qos, retain, enqueued_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (topic, bytes(payload), size, qos, int(retain), now),
            )
            self._outbox_count += 1
            self._outbox_bytes += size
            assert cur.lastrowid is not None
            return cur.lastrowid

    def _drop_oldest(self, count: int, nbytes: int) -> None:
        c = self._conn
        dropped = freed = 0
        while dropped < count or freed < nbytes:
            rows = c.execute("SELECT id, size FROM outbox ORDER BY id LIMIT 64").fetchall()
            if not rows:
                break
            victims = []
            for row_id, size in rows:
                if dropped >= count and freed >= nbytes:
                    break
                victims.append((row_id,))
                dropped += 1
                freed += size
            c.executemany("DELETE FROM outbox WHERE id = ?", victims)
        self._outbox_count -= dropped
        self._outbox_bytes -= freed
        self._meta_add(_OUTBOX_DROPPED, dropped)
        self._meta_add(_OUTBOX_DROPPED_BYTES, freed)

    def _expire(self, now: float) -> int:
        cutoff = now - self.config.outbox_max_age_s
        c = self._conn
        n, size = c.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE enqueued_at < ?", (cutoff,)
        ).fetchone()
        if n:
            c.execute("DELETE FROM outbox WHERE enqueued_at < ?", (cutoff,))
            self._outbox_count -= n
            self._outbox_bytes -= size
            self._meta_add(_OUTBOX_EXPIRED, n)
        return int(n)

    def expire_outbox(self) -> int:
        """Delete messages older than ``outbox_max_age_s`` now; returns how many."""
        with self.transaction(), self._guard("expire_outbox"):
            return self._expire(self._clock())

    def peek(self, limit: int = 1, *, after_id: int = 0) -> list[OutboxMessage]:
        """The oldest ``limit`` unexpired messages with ``id > after_id``, FIFO.

        Nothing is removed except expired messages: a message stays until
        :meth:`ack` (so a crash between publish and PUBACK resends it).
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        with self.transaction(), self._guard("peek"):
            self._expire(self._clock())
            rows = self._conn.execute(
                "SELECT id, topic, payload, qos, retain, enqueued_at FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [OutboxMessage(i, t, p, q, bool(r), e) for i, t, p, q, r, e in rows]

    def ack(self, *ids: int) -> int:
        """Delete the messages ``ids`` (the broker confirmed them); returns how many existed.

        Acking an unknown id (already acked, dropped or expired) is not an error.
        """
        if not ids:
            return 0
        acked = 0
        with self.transaction(), self._guard("ack"):
            c = self._conn
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                n, size = c.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchone()
                c.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)  # noqa: S608
                self._outbox_count -= n
                self._outbox_bytes -= size
                acked += n
        return acked

    def _reload_outbox_totals(self) -> None:
        n, size = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox"
        ).fetchone()
        self._outbox_count = int(n)
        self._outbox_bytes = int(size)

    # -- inspection ----------------------------------------------------------

    def statistics(self) -> StoreStatistics:
        def read(c: sqlite3.Connection) -> StoreStatistics:
            meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
            return StoreStatistics(
                outbox_messages=self._outbox_count,
                outbox_bytes=self._outbox_bytes,
                outbox_dropped=meta.get(_OUTBOX_DROPPED, 0),
                outbox_dropped_bytes=meta.get(_OUTBOX_DROPPED_BYTES, 0),
                outbox_expired=meta.get(_OUTBOX_EXPIRED, 0),
                log_trimmed=meta.get(_LOG_TRIMMED, 0),
                commits=self._commits,
                path=self.path,
            )

        return self._read(read, "statistics")

    def integrity_check(self) -> None:
        """Run ``PRAGMA integrity_check``; raises :class:`StoreCorruptError` on damage."""
        rows = self._read(lambda c: c.execute("PRAGMA integrity_check").fetchall(), "check")
        if rows != [("ok",)]:
            detail = "; ".join(str(r[0]) for r in rows[:5])
            raise StoreCorruptError(f"{self.path} failed integrity_check: {detail}", self.path)

    # -- validation ----------------------------------------------------------

    def _name(self, value: str, what: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} must be a non-empty string")
        if len(value.encode("utf-8", "surrogatepass")) > self.config.max_name_bytes:
            raise StoreFullError(
                f"{what} {value[:40]!r} is longer than max_name_bytes="
                f"{self.config.max_name_bytes}",
                "max_name_bytes",
            )


def _blob(value: Any, limit: int, name: str) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, got {type(value).__name__}")
    if len(value) > limit:
        raise StoreFullError(f"blob of {len(value)} bytes exceeds {name}={limit}", name)


def _seq(value: int, what: str, *, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_SEQ:
        raise ValueError(f"{what} must be an integer in {minimum}..2**63-1, not {value!r}")


_CORRUPT_MARKERS: Final = ("malformed", "not a database", "corrupt", "file is encrypted")
# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF) -> StoreError.cause
_CAUSES: Final = {
    13: "disk-full",  # SQLITE_FULL
    10: "io-error",  # SQLITE_IOERR (and its extended codes)
    8: "read-only",  # SQLITE_READONLY
    5: "busy",  # SQLITE_BUSY
    6: "busy",  # SQLITE_LOCKED
    11: "corrupt",  # SQLITE_CORRUPT
    26: "corrupt",  # SQLITE_NOTADB
    14: "cannot-open",  # SQLITE_CANTOPEN
}


def _cause(exc: sqlite3.Error) -> str:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in _CAUSES:
        return _CAUSES[code & 0xFF]
    name = getattr(exc, "sqlite_errorname", None)
    return name.lower().removeprefix("sqlite_") if isinstance(name, str) else ""


def _os_cause(exc: OSError) -> str:
    return {errno.ENOSPC: "disk-full", errno.EDQUOT: "disk-full", errno.EIO: "io-error",
            errno.EROFS: "read-only"}.get(exc.errno or 0, "os-error")  # fmt: skip


def _remove_database(path: str) -> None:
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        with suppress(FileNotFoundError):
            os.unlink(name)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _translate(exc: sqlite3.Error, path: str, what: str) -> StoreError:
    message = str(exc)
    lowered = message.lower()
    cause = _cause(exc)
    if isinstance(exc, sqlite3.DatabaseError) and (
        cause == "corrupt" or any(m in lowered for m in _CORRUPT_MARKERS)
    ):
        return StoreCorruptError(f"{path}: {what}: database is damaged: {message}", path)
    if cause == "busy" or "locked" in lowered or "busy" in lowered:
        return StoreError(
            f"{path}: {what}: database is in use by another process ({message})", cause="busy"
        )
    return StoreError(f"{path}: {what}: {type(exc).__name__}: {message}", cause=cause)
