"""The algedonic channel: pain and pleasure that bypass the hierarchy.

Theory of operation
-------------------
A :class:`Signal` has an intensity in [0, 1], a valence (pain or pleasure), a
source and an HLC stamp; its id is a content hash. :class:`AlgedonicCore` is
pure (``now`` in seconds is an argument) and decides what happens to each
signal:

* *hedonic adaptation*: each (node, source) keeps a baseline, an EWMA of its
  pain intensities (``baseline_alpha``). A pain signal is *salient* when its
  intensity is at least ``baseline + salience``; chronic low pain from one
  source stops alarming, a jump above it still does. Pleasure signals, and
  critical signals (intensity >= ``critical``, 0.95), are always salient.
* *storm limiting*: more than ``storm_signals`` salient signals within
  ``storm_window_s`` start a storm: the signals that follow are folded into one
  storm alarm (counted) until the rate falls to half the threshold. A critical
  signal is never folded: it is always delivered.
* a delivered signal becomes an *alarm* (bounded list, ``max_alarms``) that an
  operator acknowledges; a critical alarm still unacknowledged after
  ``escalate_after_s`` (30 s) is escalated once: re-sent at intensity 1.0,
  locally and to the mesh.

Locally raised signals that are delivered also go to the mesh outbound queue;
signals injected from peers are delivered locally and never re-broadcast.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import math
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from vsm_edge.sync import Timestamp, WireError, cbor_dumps, cbor_loads

from .settings import AlgedonicConfig
from .status import AlarmStatus, OutboundStatus

__all__ = [
    "Alarm",
    "AlgedonicCore",
    "AlgedonicPort",
    "Delivery",
    "Signal",
    "SignalError",
    "decode_peer_signal",
]

log = logging.getLogger("vsm_edge.agent.algedonic")

PAIN = "pain"
PLEASURE = "pleasure"
MAX_SIGNAL_BYTES = 4096
MAX_BASELINES = 4096  # (node, source) pairs remembered for hedonic adaptation
_SOURCE = re.compile(r"^[A-Za-z0-9_.:/-]{1,128}$")


class SignalError(ValueError):
    """A signal from outside (a peer, the operator) is malformed."""


@dataclass(frozen=True, slots=True)
class Signal:
    node: str
    source: str
    intensity: float
    valence: str
    hlc: Timestamp
    reason: str = ""
    escalated: bool = False
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.intensity, float) and 0.0 <= self.intensity <= 1.0):
            raise SignalError(f"intensity must be a number in [0, 1], got {self.intensity!r}")
        if self.valence not in (PAIN, PLEASURE):
            raise SignalError(f"valence must be pain or pleasure, got {self.valence!r}")
        if not _SOURCE.match(self.source):
            raise SignalError(
                f"source must be 1-128 characters of A-Z a-z 0-9 _ . : / -, got {self.source!r}"
            )
        if not (0 < len(self.node) <= 64) or len(self.reason) > 512:
            raise SignalError("node must be 1-64 characters and reason at most 512")
        if not self.id:
            object.__setattr__(self, "id", self.content_id())

    def content_id(self) -> str:
        body = cbor_dumps(self._content())
        return hashlib.blake2b(body, digest_size=16).hexdigest()

    def _content(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "src": self.source,
            "i": self.intensity,
            "v": self.valence,
            "hlc": self.hlc.packed,
            "why": self.reason,
            "esc": self.escalated,
        }

    @property
    def pain(self) -> bool:
        return self.valence == PAIN

    def to_cbor(self) -> dict[str, Any]:
        """The plain-CBOR form (the payload the mesh port's signer wraps)."""
        return self._content()

    def encode(self) -> bytes:
        return cbor_dumps(self._content())

    @classmethod
    def from_cbor(cls, obj: object) -> Signal:
        """Strict inverse of :meth:`to_cbor`; raises :class:`SignalError`."""
        if not isinstance(obj, dict) or set(obj) != {"node", "src", "i", "v", "hlc", "why", "esc"}:
            raise SignalError("signal: wrong shape")
        node, src, i, hlc = obj["node"], obj["src"], obj["i"], obj["hlc"]
        if not isinstance(node, str) or not isinstance(src, str) or not isinstance(obj["v"], str):
            raise SignalError("signal: node, source and valence must be text")
        if isinstance(i, bool) or not isinstance(i, int | float) or not math.isfinite(i):
            raise SignalError("signal: intensity must be a number")
        if (
            type(hlc) is not int
            or not isinstance(obj["why"], str)
            or not isinstance(obj["esc"], bool)
        ):
            raise SignalError("signal: bad hlc, reason or escalation flag")
        try:
            stamp = Timestamp.unpack(hlc, node)
        except ValueError as exc:
            raise SignalError(f"signal: {exc}") from None
        return cls(node, src, float(i), obj["v"], stamp, obj["why"], obj["esc"])

    @classmethod
    def decode(cls, data: bytes) -> Signal:
        if len(data) > MAX_SIGNAL_BYTES:
            raise SignalError(f"signal of {len(data)} bytes exceeds {MAX_SIGNAL_BYTES}")
        try:
            obj = cbor_loads(data, max_size=MAX_SIGNAL_BYTES)
        except WireError as exc:
            raise SignalError(f"signal: invalid CBOR: {exc}") from None
        return cls.from_cbor(obj)


def decode_peer_signal(sender: str, body: object) -> tuple[Signal | None, str | None]:
    """``(signal, None)`` from the body of ``sender``'s ``alg`` message, or ``(None, reason)``.

    The refusal reasons, counted by the replicator: ``alg:malformed`` (the map
    breaks docs/protocol.md §5: its shape, a type, an intensity outside [0, 1],
    a source, a reason too long...) and ``alg:wrong-node`` (signed by ``sender``
    for another node: a node speaks only for itself).
    """
    try:
        signal = Signal.from_cbor(body)
    except SignalError as exc:
        log.debug("algedonic signal from %s refused: %s", sender, exc)
        return None, "alg:malformed"
    if signal.node != sender:
        log.debug("algedonic signal from %s refused: raised by %s", sender, signal.node)
        return None, "alg:wrong-node"
    return signal, None


@dataclass(slots=True)
class Alarm:
    """A delivered signal the operator can acknowledge (mutable bookkeeping)."""

    signal: Signal
    raised_at: float
    remote: bool
    critical: bool
    acked_at: float | None = None
    escalated_at: float | None = None
    folded: int = 0  # storm alarms: how many signals were folded into it

    def snapshot(self, now: float) -> AlarmStatus:
        s = self.signal
        return AlarmStatus(
            id=s.id,
            node=s.node,
            source=s.source,
            intensity=s.intensity,
            valence=s.valence,
            reason=s.reason,
            critical=self.critical,
            remote=self.remote,
            age_s=round(now - self.raised_at, 3),
            acked=self.acked_at is not None,
            escalated=self.escalated_at is not None,
            folded=self.folded,
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the core decided for one signal."""

    alarm: Alarm | None  # delivered to S5 (None: adapted away or folded into a storm)
    to_mesh: bool
    storm_started: Alarm | None = None
    adapted: bool = False
    folded: bool = False


class AlgedonicCore:
    """Pure decisions: adaptation, storms, alarms, acknowledgement, escalation."""

    def __init__(self, config: AlgedonicConfig, node: str) -> None:
        self.config = config
        self.node = node
        self.baselines: dict[tuple[str, str], float] = {}
        self.alarms: OrderedDict[str, Alarm] = OrderedDict()
        self._recent: deque[float] = deque()
        self.storm: Alarm | None = None
        self.storms = 0
        self.received = 0
        self.delivered = 0
        self.adapted = 0
        self.folded = 0
        self.escalations = 0
        self.duplicates = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        # (deadline, alarm id) of critical alarms that may need escalating
        self._escalation_queue: list[tuple[float, str]] = []
        self._critical_active: dict[str, float] = {}
        self._critical_max = 0.0
        self._critical_dirty = False

    def is_critical(self, signal: Signal) -> bool:
        return signal.pain and signal.intensity >= self.config.critical

    def offer(
        self,
        signal: Signal,
        now: float,
        *,
        remote: bool = False,
        storm_signal: Callable[[], Signal] | None = None,
    ) -> Delivery:
        """Decide for one signal; ``storm_signal()`` makes the storm alarm if one starts."""
        cfg = self.config
        if signal.id in self._seen:
            self.duplicates += 1
            return Delivery(None, to_mesh=False)
        self._seen[signal.id] = None
        if len(self._seen) > 4 * cfg.max_alarms:
            self._seen.popitem(last=False)
        self.received += 1
        critical = self.is_critical(signal)
        if signal.pain and not critical and not signal.escalated:
            key = (signal.node, signal.source)
            baseline = self.baselines.get(key, 0.0)
            if key not in self.baselines and len(self.baselines) >= MAX_BASELINES:
                del self.baselines[next(iter(self.baselines))]  # forget the oldest source
            self.baselines[key] = baseline + cfg.baseline_alpha * (signal.intensity - baseline)
            if signal.intensity < baseline + cfg.salience:
                self.adapted += 1
                return Delivery(None, to_mesh=False, adapted=True)
        # storm limiting over salient signals
        recent = self._recent
        recent.append(now)
        while recent and now - recent[0] > cfg.storm_window_s:
            recent.popleft()
        started: Alarm | None = None
        if self.storm is None and len(recent) > cfg.storm_signals:
            self.storms += 1
            if storm_signal is not None:
                started = self._store(storm_signal(), now, remote=False, critical=False)
                self.storm = started
        elif self.storm is not None and len(recent) <= cfg.storm_signals // 2:
            self.storm = None
        if self.storm is not None and not critical and started is None:
            self.storm.folded += 1
            self.folded += 1
            return Delivery(None, to_mesh=False, folded=True)
        if started is not None and not critical:
            started.folded += 1
            self.folded += 1
            return Delivery(None, to_mesh=False, storm_started=started, folded=True)
        alarm = self._store(signal, now, remote=remote, critical=critical)
        return Delivery(alarm, to_mesh=not remote, storm_started=started)

    def _store(self, signal: Signal, now: float, *, remote: bool, critical: bool) -> Alarm:
        self.delivered += 1
        alarm = Alarm(signal, now, remote, critical)
        self.alarms[signal.id] = alarm
        if critical:
            self._critical_active[signal.id] = signal.intensity
            self._critical_dirty = True
            if not signal.escalated:
                deadline = now + self.config.escalate_after_s
                heapq.heappush(self._escalation_queue, (deadline, signal.id))
        while len(self.alarms) > self.config.max_alarms:
            self._evict()
        return alarm

    def _evict(self) -> None:
        # acknowledged first, then non-critical, then the oldest
        for rank in (0, 1, 2):
            for key, alarm in self.alarms.items():
                if (
                    rank == 2
                    or (rank == 0 and alarm.acked_at is not None)
                    or (rank == 1 and not alarm.critical)
                ):
                    del self.alarms[key]
                    if self._critical_active.pop(key, None) is not None:
                        self._critical_dirty = True
                    return

    def ack(self, alarm_id: str, now: float) -> Alarm | None:
        """Acknowledge; returns the alarm (None for an unknown id). Idempotent."""
        alarm = self.alarms.get(alarm_id)
        if alarm is None:
            matches = (
                [a for k, a in self.alarms.items() if k.startswith(alarm_id)]
                if len(alarm_id) >= 6
                else []
            )
            if len(matches) != 1:
                return None
            alarm = matches[0]
        if alarm.acked_at is None:
            alarm.acked_at = now
            if self._critical_active.pop(alarm.signal.id, None) is not None:
                self._critical_dirty = True
        return alarm

    def _escalatable(self, alarm: Alarm | None) -> bool:
        return (
            alarm is not None
            and alarm.critical
            and alarm.acked_at is None
            and alarm.escalated_at is None
            and not alarm.signal.escalated
        )

    def due_escalations(self, now: float) -> list[Alarm]:
        """Critical unacknowledged alarms older than ``escalate_after_s``; marks them escalated."""
        out = []
        queue = self._escalation_queue
        while queue and queue[0][0] <= now:
            _, alarm_id = heapq.heappop(queue)
            alarm = self.alarms.get(alarm_id)
            if alarm is not None and self._escalatable(alarm):
                alarm.escalated_at = now
                self.escalations += 1
                out.append(alarm)
        return out

    def next_escalation(self) -> float:
        """When the next escalation is due (``inf`` when none is pending)."""
        queue = self._escalation_queue
        while queue and not self._escalatable(self.alarms.get(queue[0][1])):
            heapq.heappop(queue)  # acknowledged or evicted since: forget it
        return queue[0][0] if queue else math.inf

    def critical_pain(self) -> float:
        """The highest intensity among unacknowledged critical alarms (0 when none)."""
        if self._critical_dirty:
            self._critical_max = max(self._critical_active.values(), default=0.0)
            self._critical_dirty = False
        return self._critical_max

    def active(self) -> Iterator[Alarm]:
        return (a for a in self.alarms.values() if a.acked_at is None)


def escalated(signal: Signal, stamp: Timestamp) -> Signal:
    """The escalation of ``signal``: intensity 1.0, a new stamp and id."""
    return replace(signal, intensity=1.0, escalated=True, hlc=stamp, id="")


class AlgedonicPort:
    """The mesh side of the algedonic channel (wired to MQTT by the agent process).

    Outgoing signals (QoS 1, latest retained, signed by the transport's
    envelope) are read with :meth:`receive` or ``async for``. The queue holds
    ``capacity`` non-critical signals (oldest dropped and counted when full);
    pending critical signals are kept one per source, a newer one replacing
    an older one still queued (the retained MQTT topic keeps the latest
    anyway), so a critical signal is never dropped for lack of room and the
    queue stays bounded. Signals received from peers go in through the
    runtime's ``inject_remote``.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[Signal] = deque()
        self._critical: OrderedDict[str, Signal] = OrderedDict()
        self._lot = trio.lowlevel.ParkingLot()
        self.sent = 0
        self.dropped = 0
        self.superseded = 0

    def put(self, signal: Signal, critical: bool) -> None:
        if critical:
            key = f"{signal.node}/{signal.source}"
            if key in self._critical:
                self.superseded += 1
                del self._critical[key]
            self._critical[key] = signal
        else:
            if len(self._queue) >= self.capacity:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(signal)
        self._lot.unpark_all()

    def receive_nowait(self) -> Signal:
        """The next outgoing signal (critical first); raises trio.WouldBlock when none."""
        if self._critical:
            _, signal = self._critical.popitem(last=False)
        elif self._queue:
            signal = self._queue.popleft()
        else:
            raise trio.WouldBlock
        self.sent += 1
        return signal

    async def receive(self) -> Signal:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                signal = self.receive_nowait()
            except trio.WouldBlock:
                await self._lot.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return signal

    def __aiter__(self) -> AlgedonicPort:
        return self

    async def __anext__(self) -> Signal:
        return await self.receive()

    def statistics(self) -> OutboundStatus:
        return OutboundStatus(
            pending=len(self._queue) + len(self._critical),
            sent=self.sent,
            dropped=self.dropped,
            superseded=self.superseded,
        )
