"""Hybrid logical clock (Kulkarni, Demirbas et al., 2014).

Theory of operation
-------------------
A timestamp is ``(wall, logical)``: ``wall`` is the largest physical time (in
milliseconds) this node has heard of, ``logical`` counts events that share
that ``wall``. The rules are the paper's, with ``pt`` the physical clock:

* send / local event::

      l' = max(l, pt)
      c' = c + 1 if l' == l else 0

* receive of a remote ``(l_m, c_m)``::

      l' = max(l, l_m, pt)
      c' = max(c, c_m) + 1   if l' == l == l_m
           c + 1             if l' == l
           c_m + 1           if l' == l_m
           0                 otherwise

Timestamps are totally ordered by ``(wall, logical, node)``: the node id only
breaks ties between different nodes' equal stamps.

On the wire a stamp is one unsigned 64-bit integer, 48 bits of wall
milliseconds above 16 bits of logical counter (:meth:`Timestamp.packed`).
The counter never wraps: when it would pass 0xFFFF the clock *borrows the next
millisecond* (``wall + 1``, ``logical = 0``), which keeps the order and moves
the clock at most a few milliseconds ahead of physical time under a storm of
events within one millisecond.

Drift: a remote stamp whose wall time is more than ``max_offset_ms`` ahead of
our physical clock is rejected with :class:`ClockDriftError` (and counted) so
one node with a broken clock cannot drag the whole mesh into the future. With
that rule ``l - pt`` stays bounded by ``max_offset_ms`` for every node.

Restarts: the clock must never run backwards across a reboot, even when the
physical clock did (no RTC on a Raspberry Pi until NTP syncs). The clock keeps
a persisted *ceiling*: no stamp it issues has a wall time at or above the
ceiling without first raising the ceiling to ``wall + reserve_ms`` and
persisting it. After a restart the clock starts from the stored ceiling, so
every new stamp is above every stamp issued before. The cost is one durable
write per ``reserve_ms`` of clock progress and, after a restart, a clock up to
``reserve_ms`` ahead of physical time (well inside ``max_offset_ms``).

That durable write happens wherever :meth:`~HybridLogicalClock.now` runs,
which for an agent is the event loop. So a caller with a worker thread keeps
the stored ceiling ahead instead (:meth:`~HybridLogicalClock.ceiling_ahead`,
``store_ceiling`` in its thread, ``ceiling_stored`` back on the loop: the
replicator does, every 250 ms, up to ``4 * reserve_ms`` ahead), and stamping
writes only at start and when that keeper fell behind; the stored ceiling
never goes down, whichever write lands last. After a restart the clock may
then be up to ``4 * reserve_ms`` ahead of physical time (4 s by default).

A ceiling that cannot be written (a full disk) makes :meth:`~HybridLogicalClock.now`
raise by default. A process whose every event is stamped cannot live with that,
so ``defer_ceiling_errors=True`` keeps the clock running instead: the failure is
recorded (:attr:`~HybridLogicalClock.ceiling_error`, counted), the ceiling is
raised in memory only, and the write is tried again at the next crossing (about
every ``reserve_ms``) or by :meth:`~HybridLogicalClock.persist_ceiling`. The
first write that succeeds stores a ceiling above every stamp issued meanwhile.
Until then a crash, followed by a physical clock that restarts *behind* those
stamps, could issue a stamp again: the caller must treat a pending ceiling as a
store fault (the agent refuses local writes then, so no stored value carries
such a stamp).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from ._errors import SyncError

__all__ = [
    "MAX_LOGICAL",
    "MAX_WALL_MS",
    "ClockDriftError",
    "FileHighWaterMark",
    "HighWaterMark",
    "HybridLogicalClock",
    "MemoryHighWaterMark",
    "Timestamp",
    "wall_clock_ms",
]

WALL_BITS = 48
LOGICAL_BITS = 16
MAX_WALL_MS = (1 << WALL_BITS) - 1
MAX_LOGICAL = (1 << LOGICAL_BITS) - 1


class _Stamp(NamedTuple):
    wall: int
    logical: int
    node: str


class Timestamp(_Stamp):
    """One HLC stamp ``(wall, logical, node)``: an immutable named tuple,
    ordered by ``(wall, logical, node)``. Construction validates the ranges;
    the clock builds its own stamps without re-validating (hot path).
    """

    __slots__ = ()

    def __new__(cls, wall: int, logical: int, node: str = "") -> Timestamp:
        if type(wall) is not int or not 0 <= wall <= MAX_WALL_MS:
            raise ValueError(f"HLC wall time {wall!r} outside 0..2**48-1 ms")
        if type(logical) is not int or not 0 <= logical <= MAX_LOGICAL:
            raise ValueError(f"HLC logical counter {logical!r} outside 0..65535")
        return _new_stamp(cls, (wall, logical, node))

    @property
    def packed(self) -> int:
        """The 64-bit wire form: 48 bits of wall ms, then 16 bits of logical."""
        return (self[0] << LOGICAL_BITS) | self[1]

    @classmethod
    def unpack(cls, value: int, node: str = "") -> Timestamp:
        """Inverse of :attr:`packed`. Raises ValueError outside 0..2**64-1."""
        if type(value) is not int or not 0 <= value < (1 << 64):
            raise ValueError(f"packed HLC {value!r} is not an unsigned 64-bit integer")
        return _new_stamp(cls, (value >> LOGICAL_BITS, value & MAX_LOGICAL, node))

    def __str__(self) -> str:
        return f"{self[0]}.{self[1]:05d}@{self[2]}"

    def __repr__(self) -> str:
        return f"Timestamp(wall={self[0]}, logical={self[1]}, node={self[2]!r})"


_new_stamp = tuple.__new__


ZERO = Timestamp(0, 0, "")


class ClockDriftError(ValueError):
    """A remote stamp is further ahead of our physical clock than allowed.

    ``remote`` is the offending stamp, ``physical_ms`` our physical time when
    it arrived, ``max_offset_ms`` the bound it broke.
    """

    def __init__(self, remote: Timestamp, physical_ms: int, max_offset_ms: int) -> None:
        self.remote = remote
        self.physical_ms = physical_ms
        self.max_offset_ms = max_offset_ms
        super().__init__(
            f"remote HLC {remote} is {remote.wall - physical_ms} ms ahead of the local "
            f"physical clock (max offset {max_offset_ms} ms); stamp rejected"
        )


class HighWaterMark(Protocol):
    """Where the clock keeps its ceiling across restarts."""

    def load(self) -> int:
        """The stored ceiling in wall ms, 0 when nothing was stored."""
        ...

    def store(self, wall_ms: int) -> None:
        """Durably store a new ceiling (must not return before it is durable)."""
        ...


class MemoryHighWaterMark:
    """A high-water mark that lives as long as the object (tests, ephemeral nodes)."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self.writes = 0

    def load(self) -> int:
        return self.value

    def store(self, wall_ms: int) -> None:
        self.value = wall_ms
        self.writes += 1


class FileHighWaterMark:
    """A high-water mark in a small text file, replaced atomically and fsynced.

    A missing file reads as 0; an unreadable one raises ValueError rather than
    silently restarting the clock from zero.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int:
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return 0
        if not text.isdigit() or int(text) > MAX_WALL_MS:
            raise ValueError(f"HLC high-water file {self.path} is corrupt: {text[:40]!r}")
        return int(text)

    def store(self, wall_ms: int) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hlc-", dir=directory)
        try:
            os.write(fd, f"{wall_ms}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def wall_clock_ms() -> int:
    """The system's real-time clock in integer milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class ClockStatistics:
    issued: int
    received: int
    rejected_drift: int
    borrowed_ms: int
    ceiling_writes: int
    last: Timestamp
    ceiling_failures: int = 0
    ceiling_pending: bool = False  # a deferred ceiling write has not succeeded yet
    ceiling_ahead_writes: int = 0  # of ceiling_writes, those stored ahead off the loop


class HybridLogicalClock:
    """A hybrid logical clock for one node.

    ``wall_clock`` returns physical time in integer milliseconds (pass
    :func:`wall_clock_ms` in production, a fake in tests). ``high_water``
    persists the ceiling described in the module docstring (``reserve_ms``
    defaults to 1 s, or half of ``max_offset_ms`` when that is smaller);
    without one the clock is only monotonic for its own lifetime.
    ``defer_ceiling_errors`` keeps the clock running when the mark cannot
    store (an ``OSError`` or a ``SyncError`` such as ``StoreError``): see
    the module docstring.
    """

    def __init__(
        self,
        node: str,
        wall_clock: Callable[[], int] = wall_clock_ms,
        *,
        max_offset_ms: int = 60_000,
        high_water: HighWaterMark | None = None,
        reserve_ms: int | None = None,
        defer_ceiling_errors: bool = False,
    ) -> None:
        if max_offset_ms <= 0:
            raise ValueError("max_offset_ms must be positive")
        if reserve_ms is None:
            reserve_ms = max(1, min(1_000, max_offset_ms // 2))
        if not 0 < reserve_ms < max_offset_ms:
            raise ValueError("reserve_ms must be positive and below max_offset_ms")
        self.node = node
        self._wall_clock = wall_clock
        self.max_offset_ms = max_offset_ms
        self._high_water = high_water
        self._reserve_ms = reserve_ms
        ceiling = high_water.load() if high_water is not None else 0
        # Every stamp issued before the restart has wall < ceiling, so starting
        # "last" at (ceiling, 0) puts all new stamps above them.
        self._wall = ceiling
        self._logical = 0
        self._ceiling = ceiling
        self._issued = 0
        self._received = 0
        self._rejected = 0
        self._borrowed = 0
        self._ceiling_writes = 0
        self._defer = defer_ceiling_errors
        self._ceiling_error: Exception | None = None
        self._ceiling_failures = 0
        self._ahead_writes = 0

    # -- the two rules -------------------------------------------------------

    def now(self) -> Timestamp:
        """Stamp a local or send event (the paper's send rule)."""
        pt = self._physical()
        wall = max(self._wall, pt)
        logical = self._logical + 1 if wall == self._wall else 0
        self._issued += 1
        return self._commit(wall, logical)

    def update(self, remote: Timestamp) -> Timestamp:
        """Stamp the receipt of ``remote`` (the paper's receive rule).

        Raises :class:`ClockDriftError` (and leaves the clock untouched) when
        ``remote`` is more than ``max_offset_ms`` ahead of physical time.
        """
        pt = self._physical()
        if remote.wall - pt > self.max_offset_ms:
            self._rejected += 1
            raise ClockDriftError(remote, pt, self.max_offset_ms)
        old = self._wall
        wall = max(old, remote.wall, pt)
        if wall == old == remote.wall:
            logical = max(self._logical, remote.logical) + 1
        elif wall == old:
            logical = self._logical + 1
        elif wall == remote.wall:
            logical = remote.logical + 1
        else:
            logical = 0
        self._received += 1
        return self._commit(wall, logical)

    # -- helpers -------------------------------------------------------------

    def _physical(self) -> int:
        pt = self._wall_clock()
        if not 0 <= pt <= MAX_WALL_MS:
            raise ValueError(f"wall clock returned {pt!r}, not ms in 0..2**48-1")
        return pt

    def _commit(self, wall: int, logical: int) -> Timestamp:
        if logical > MAX_LOGICAL:
            # Never wrap: borrow the next millisecond.
            wall += 1
            logical = 0
            self._borrowed += 1
        if wall > MAX_WALL_MS:
            raise OverflowError("HLC wall time passed 2**48-1 ms")
        if wall >= self._ceiling and self._high_water is not None:
            ceiling = min(wall + self._reserve_ms, MAX_WALL_MS)
            try:
                self._high_water.store(ceiling)  # durable before the stamp is used
            except (OSError, SyncError) as exc:
                if not self._defer:
                    raise
                self._ceiling_error = exc  # see the module docstring
                self._ceiling_failures += 1
            else:
                self._ceiling_error = None
                self._ceiling_writes += 1
            self._ceiling = ceiling
        self._wall = wall
        self._logical = logical
        return _new_stamp(Timestamp, (wall, logical, self.node))  # valid by construction

    @property
    def ceiling_error(self) -> Exception | None:
        """Why the latest ceiling write failed while deferred; None once one succeeded."""
        return self._ceiling_error

    def persist_ceiling(self) -> None:
        """Store the in-memory ceiling now, after a deferred failure (else a no-op).

        Raises what the high-water mark raises; on success
        :attr:`ceiling_error` is None again and every stamp issued so far is
        below the stored ceiling.
        """
        if self._ceiling_error is None or self._high_water is None:
            return
        self._high_water.store(self._ceiling)
        self._ceiling_error = None
        self._ceiling_writes += 1

    def ceiling_ahead(self) -> int | None:
        """A ceiling to store *off the event loop* now, or None when not needed yet.

        :meth:`now` stores the ceiling itself when a stamp reaches it, which
        is a durable write wherever ``now`` runs. A caller with a worker
        thread (the replicator) keeps the stored ceiling ahead instead: when
        the clock is within ``2 * reserve_ms`` of the ceiling, this returns
        ``wall + 4 * reserve_ms``; the caller stores it with
        :meth:`store_ceiling` in its thread, then reports it with
        :meth:`ceiling_stored` on the loop. ``now`` then writes only if the
        caller fell behind.
        """
        if self._high_water is None or self._ceiling_error is not None:
            return None
        wall = max(self._wall, self._physical())
        if wall + 2 * self._reserve_ms < self._ceiling:
            return None
        return min(wall + 4 * self._reserve_ms, MAX_WALL_MS)

    def store_ceiling(self, ceiling: int) -> None:
        """Store ``ceiling`` (from :meth:`ceiling_ahead`) durably; any thread.

        Touches only the high-water mark, never the clock's state: call
        :meth:`ceiling_stored` afterwards, on the clock's own thread.
        """
        if self._high_water is not None:
            self._high_water.store(ceiling)

    def ceiling_stored(self, ceiling: int) -> None:
        """``ceiling`` is durable (stored by :meth:`store_ceiling`)."""
        if ceiling > self._ceiling:
            self._ceiling = ceiling
            self._ceiling_writes += 1
            self._ahead_writes += 1

    def physical_ms(self) -> int:
        """The physical clock's reading now (no effect on the HLC)."""
        return self._physical()

    @property
    def last(self) -> Timestamp:
        """The most recent stamp issued or received (no side effects)."""
        return Timestamp(self._wall, self._logical, self.node)

    def statistics(self) -> ClockStatistics:
        return ClockStatistics(
            issued=self._issued,
            received=self._received,
            rejected_drift=self._rejected,
            borrowed_ms=self._borrowed,
            ceiling_writes=self._ceiling_writes,
            last=self.last,
            ceiling_failures=self._ceiling_failures,
            ceiling_pending=self._ceiling_error is not None,
            ceiling_ahead_writes=self._ahead_writes,
        )
