"""The alarm ledger: every node's word on every alarm, folded into one mesh-wide state.

Theory of operation
-------------------
An *alarm* is a delivered pain signal (:mod:`.algedonic`); its mesh-wide id
is the signal's content hash, the same on every node, and a new occurrence of
the same condition is a new signal with a new stamp, hence a new id. What the
mesh knows of an alarm is a set of *records*, one per writer, each written
only by its writer (in the mesh document each is the writer's own register,
``{writer}/a/{id}``):

* the origin's record carries the signal (the raise) and may carry its own
  acknowledgement or clearing;
* any other node's record carries its acknowledgement (``acked``, an HLC
  stamp) and/or its clearing (``cleared``).

The ledger joins them: an alarm is *cleared* when any record says so, else
*acknowledged* when any record says so, else *raised*; who and when is the
earliest such stamp (HLC order, so every replica names the same node). A
writer's record only grows (:meth:`AlarmRecord.join` keeps the earliest
stamp of each kind and never drops one), so once any replica acknowledged or
cleared an alarm, every replica that hears of it agrees, whatever order the
records arrive in and however often the raise is re-delivered: the join is
commutative, associative and idempotent. Acknowledged and cleared alarms are
*settled*; S5's safe mode follows the unsettled critical ones
(:meth:`AlarmLedger.critical_pain`), so every node that holds the same records
agrees why it is (not) in safe mode.

Garbage collection (the rule docs/operations.md states): an alarm settled
more than ``retention_s`` ago (by the settling stamp's wall time), or settled
and raised more than twice ``retention_s`` ago (so that a settling stamp far
in the future cannot pin it), is forgotten by every replica, and each writer
removes its own record of it from the mesh document; a record of an alarm
whose raise is unknown (an *orphan*: the origin already removed it, or it
never arrived) is removed by its writer
once its own stamp is older than ``retention_s``. A late record of a
forgotten alarm is not taken back in. An acknowledgement or clearing stamped
before the raise it answers is not counted once the raise is known (every
replica that knows the raise ignores it alike).

Bounds. Records come from the mesh document, which bounds them (its state
limit): the ledger takes every one, so that it stays a function of the
document, the same on every replica whatever order records arrive in (a bound
that refused by arrival order would let one member make two honest replicas
disagree). Alarms *heard* on the algedonic channel before their record
arrives are bounded: from an origin that already has ``max_per_writer`` known
alarms, or beyond ``max_entries`` in all, they are refused (counted) and known
when their record arrives; one member raising critical signal after signal
fills its own share, never the room of the others' alarms. An origin that
holds more than ``max_per_writer`` unsettled alarms of its own clears the
oldest non-critical ones itself.

Pure: no clock reads (``now_ms`` is an argument), no I/O. The mesh
(:mod:`vsm_edge.agent.mesh.schema`) encodes records; the VSM's
:class:`~.alarms.Alarms` part raises, acknowledges and reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from vsm_edge.sync import Timestamp

from .algedonic import Signal

__all__ = ["AlarmEntry", "AlarmLedger", "AlarmRecord"]


def _earliest(a: Timestamp | None, b: Timestamp | None) -> Timestamp | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


@dataclass(frozen=True, slots=True)
class AlarmRecord:
    """One writer's word on one alarm: the raise (origin only), its ack, its clearing.

    Stamps carry the writer as their node. A record only grows: :meth:`join`.
    """

    signal: Signal | None = None
    acked: Timestamp | None = None
    cleared: Timestamp | None = None

    def join(self, other: AlarmRecord) -> AlarmRecord:
        return AlarmRecord(
            self.signal if self.signal is not None else other.signal,
            _earliest(self.acked, other.acked),
            _earliest(self.cleared, other.cleared),
        )

    @property
    def newest_ms(self) -> int:
        """The wall time of the newest stamp it holds (its age, for orphans)."""
        stamps = [s.wall for s in (self.acked, self.cleared) if s is not None]
        if self.signal is not None:
            stamps.append(self.signal.hlc.wall)
        return max(stamps, default=0)


@dataclass(slots=True)
class AlarmEntry:
    """The joined state of one alarm (mutable bookkeeping of the ledger)."""

    id: str
    records: dict[str, AlarmRecord] = field(default_factory=dict)
    signal: Signal | None = None  # known from the origin's record or a heard signal
    critical: bool = False

    @property
    def acked(self) -> Timestamp | None:
        """The earliest acknowledgement (its node says who), or None.

        Once the raise is known, a stamp older than it is no answer to it and
        is not counted (a member stamping its acknowledgement at wall 0 would
        otherwise have every replica forget the alarm at the next upkeep).
        """
        out: Timestamp | None = None
        for record in self.records.values():
            out = _earliest(out, self._after_raise(record.acked))
        return out

    @property
    def cleared(self) -> Timestamp | None:
        out: Timestamp | None = None
        for record in self.records.values():
            out = _earliest(out, self._after_raise(record.cleared))
        return out

    def _after_raise(self, stamp: Timestamp | None) -> Timestamp | None:
        signal = self.signal
        if stamp is None or signal is None:
            return stamp
        raised = signal.hlc
        return stamp if (stamp.wall, stamp.logical) >= (raised.wall, raised.logical) else None

    @property
    def settled(self) -> Timestamp | None:
        """When it was first acknowledged or cleared (None while it is active)."""
        return _earliest(self.acked, self.cleared)

    @property
    def state(self) -> str:
        if self.cleared is not None:
            return "cleared"
        if self.acked is not None:
            return "acknowledged"
        return "raised"

    @property
    def active(self) -> bool:
        return self.signal is not None and self.settled is None


class AlarmLedger:
    """The joined records of every alarm this node knows (module docstring).

    ``node`` is this node: its own records are the ones it writes to the mesh
    (:meth:`take_dirty`) and removes when they expire (:meth:`expired`).
    ``critical`` is the intensity from which a pain signal is critical.
    """

    def __init__(
        self,
        node: str,
        *,
        critical: float,
        retention_s: float,
        max_per_writer: int = 256,
        max_entries: int = 8192,
    ) -> None:
        self.node = node
        self.critical = critical
        self.retention_ms = int(retention_s * 1000)
        self.max_per_writer = max_per_writer
        self.max_entries = max_entries
        self.entries: dict[str, AlarmEntry] = {}
        self._per_origin: dict[str, int] = {}  # entries whose signal is known, by its node
        self._forgotten: dict[str, int] = {}  # id -> wall ms it was forgotten at
        self._dirty: set[str] = set()  # ids of our own records to (re)write
        self.refused = 0  # records refused: over a bound, or of a forgotten alarm
        self.forgotten = 0
        self.changes = 0  # bumped on every change of any entry's state

    # -- writing (this node) -----------------------------------------------------------

    def raise_(self, signal: Signal) -> AlarmEntry:
        """Our own pain signal, delivered: the raise record (we are its origin)."""
        return self._mine(signal.id, AlarmRecord(signal=signal), signal)

    def acknowledge(self, alarm_id: str, stamp: Timestamp) -> AlarmEntry | None:
        """Our acknowledgement of a known alarm (idempotent: the earliest stays)."""
        if alarm_id not in self.entries:
            return None
        return self._mine(
            alarm_id, AlarmRecord(acked=self._not_before_raise(alarm_id, stamp)), None
        )

    def clear(self, alarm_id: str, stamp: Timestamp) -> AlarmEntry | None:
        """Our word that the alarm's condition is over."""
        if alarm_id not in self.entries:
            return None
        return self._mine(
            alarm_id, AlarmRecord(cleared=self._not_before_raise(alarm_id, stamp)), None
        )

    def _not_before_raise(self, alarm_id: str, stamp: Timestamp) -> Timestamp:
        """``stamp``, or the raise's own time when our clock is behind it (a raise
        heard from a retained message does not advance the HLC): never a stamp
        that :attr:`AlarmEntry.acked` would not count."""
        signal = self.entries[alarm_id].signal
        if signal is None or (stamp.wall, stamp.logical) >= (signal.hlc.wall, signal.hlc.logical):
            return stamp
        return Timestamp(signal.hlc.wall, signal.hlc.logical, stamp.node)

    def _mine(self, alarm_id: str, record: AlarmRecord, signal: Signal | None) -> AlarmEntry:
        entry = self._entry(alarm_id, force=True)
        assert entry is not None
        if signal is not None and entry.signal is None:
            self._learn_signal(entry, signal)
        old = entry.records.get(self.node)
        new = record if old is None else old.join(record)
        if new != old:
            self._set(entry, self.node, new)
            self._dirty.add(alarm_id)
        return entry

    def take_dirty(self) -> list[tuple[str, AlarmRecord]]:
        """Our records changed since the last call (to write to the mesh), oldest id order."""
        out = []
        for alarm_id in sorted(self._dirty):
            entry = self.entries.get(alarm_id)
            if entry is not None and self.node in entry.records:
                out.append((alarm_id, entry.records[self.node]))
        self._dirty.clear()
        return out

    def mark_dirty(self, alarm_id: str) -> None:
        """Write our record of ``alarm_id`` again (a write that the store refused)."""
        self._dirty.add(alarm_id)

    @property
    def pending_writes(self) -> int:
        return len(self._dirty)

    # -- reading (the mesh and the algedonic channel) -------------------------------------

    def merge(self, writer: str, alarm_id: str, record: AlarmRecord) -> AlarmEntry | None:
        """A record from the mesh (``writer``'s register); None when refused.

        The caller checked the encoding and that ``writer`` wrote it; a signal
        in it must be ``writer``'s own (only the origin raises).
        """
        if alarm_id in self._forgotten:
            self.refused += 1
            return None
        if record.signal is not None and (
            record.signal.node != writer or record.signal.id != alarm_id
        ):
            self.refused += 1
            return None
        # No bound here: the document bounds its records (module docstring).
        entry = self._entry(alarm_id, force=True)
        assert entry is not None
        if record.signal is not None and entry.signal is None:
            self._learn_signal(entry, record.signal)
        old = entry.records.get(writer)
        new = record if old is None else old.join(record)
        if new != old:
            self._set(entry, writer, new)
        return entry

    def hear(self, signal: Signal) -> AlarmEntry | None:
        """A delivered pain signal heard on the algedonic channel (ours or a peer's).

        Makes the alarm known before its origin's record arrives by gossip;
        adds no record. None for a forgotten alarm.
        """
        if signal.id in self._forgotten:
            return None
        if signal.id not in self.entries and (
            len(self.entries) >= self.max_entries
            or self._per_origin.get(signal.node, 0) >= self.max_per_writer
        ):
            self.refused += 1  # a member raising alarm after alarm: bounded, by origin first
            return None
        entry = self._entry(signal.id, force=True)
        assert entry is not None
        if entry.signal is None:
            self._learn_signal(entry, signal)
        return entry

    def _learn_signal(self, entry: AlarmEntry, signal: Signal) -> None:
        if entry.signal is None:
            self._per_origin[signal.node] = self._per_origin.get(signal.node, 0) + 1
        entry.signal = signal
        entry.critical = signal.pain and signal.intensity >= self.critical
        self.changes += 1

    def _entry(self, alarm_id: str, *, force: bool) -> AlarmEntry | None:
        entry = self.entries.get(alarm_id)
        if entry is None and force:
            entry = self.entries[alarm_id] = AlarmEntry(alarm_id)
        return entry

    def _set(self, entry: AlarmEntry, writer: str, record: AlarmRecord) -> None:
        entry.records[writer] = record
        self.changes += 1

    # -- queries ---------------------------------------------------------------------

    def get(self, alarm_id: str) -> AlarmEntry | None:
        return self.entries.get(alarm_id)

    def resolve(self, prefix: str) -> list[str]:
        """The ids of known alarms (with a signal) that start with ``prefix``."""
        if prefix in self.entries and self.entries[prefix].signal is not None:
            return [prefix]
        return [k for k, e in self.entries.items() if k.startswith(prefix) and e.signal]

    def alarms(self) -> Iterator[AlarmEntry]:
        """Known alarms (with their signal), in no particular order."""
        return (e for e in self.entries.values() if e.signal is not None)

    def active(self) -> Iterator[AlarmEntry]:
        return (e for e in self.entries.values() if e.active)

    def critical_pain(self) -> float:
        """The highest intensity among active critical alarms (0 when none)."""
        return max(
            (e.signal.intensity for e in self.critical_active() if e.signal is not None),
            default=0.0,
        )

    def critical_active(self) -> list[AlarmEntry]:
        """The active critical alarms: why S5 is (or may go) in safe mode."""
        return [e for e in self.entries.values() if e.critical and e.active]

    # -- upkeep ------------------------------------------------------------------------

    def overflow(self, stamp: Timestamp) -> list[str]:
        """Clear our oldest non-critical active alarms beyond ``max_per_writer``; their ids."""
        mine = [
            e
            for e in self.entries.values()
            if e.active and e.signal is not None and e.signal.node == self.node
        ]
        excess = len(mine) - self.max_per_writer
        if excess <= 0:
            return []
        mine.sort(key=lambda e: (e.critical, e.signal.hlc if e.signal else stamp))
        out = []
        for entry in mine[:excess]:
            if entry.critical:
                break
            self.clear(entry.id, stamp)
            out.append(entry.id)
        return out

    def expired(self, now_ms: int) -> list[str]:
        """Forget what the retention rule says is over; the ids of our records to remove.

        Settled alarms whose settling stamp is older than the retention (or whose
        raise is older than twice the retention), and orphan records older than it.
        """
        horizon = now_ms - self.retention_ms
        ours = []
        for alarm_id, entry in list(self.entries.items()):
            settled = entry.settled
            if entry.signal is not None:
                old = settled is not None and (
                    settled.wall < horizon or entry.signal.hlc.wall < horizon - self.retention_ms
                )
            else:
                old = all(r.newest_ms < horizon for r in entry.records.values())
            if not old:
                continue
            if self.node in entry.records:
                ours.append(alarm_id)
            del self.entries[alarm_id]
            if entry.signal is not None:
                origin = entry.signal.node
                self._per_origin[origin] -= 1
                if not self._per_origin[origin]:
                    del self._per_origin[origin]
            self._dirty.discard(alarm_id)
            self._forgotten[alarm_id] = now_ms
            self.forgotten += 1
            self.changes += 1
        # a forgotten id is remembered for a second retention: its late records stay out
        for alarm_id, at in list(self._forgotten.items()):
            if at < horizon:
                del self._forgotten[alarm_id]
        return ours
