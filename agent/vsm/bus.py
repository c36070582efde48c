"""The event bus: bounded per-subsystem channels with reorder windows.

Theory of operation
-------------------
Every subsystem (S1..S5 and the algedonic channel) reads one :class:`Channel`.
Publishing routes an event, by its ``kind``, to the channels subscribed to that
kind. A channel is a :class:`ReorderBuffer` (pure, time passed in) behind a
small Trio wrapper.

The reorder buffer holds each event for ``window_s`` after its arrival and
releases held events in HLC order ``(wall, logical, node)``, so events that
arrive out of order by less than the window are delivered in order. Within the
buffer:

* an event equal in content to one seen among the last ``dedup_capacity``
  events is a *duplicate* and is dropped (counted). The lookup is keyed by
  the event's HLC stamp ``(wall, logical, node)`` (a clock never issues a stamp
  twice) and confirmed by comparing the whole content, so it costs one small
  tuple hash rather than a hash of the content;
* a signal with ``intensity >= bypass_intensity`` (0.95) skips the window and is
  delivered at once (counted as *bypassed*);
* an event older than one already released is *late*: it is delivered at once
  rather than lost (counted), since order can no longer be kept for it;
* when more than ``window_capacity`` events are held, the oldest is released
  early (counted): under load the window shrinks, order is still kept;
* ``capacity`` bounds everything the channel holds (held + released but not yet
  received). At capacity the overflow policy decides: ``drop-oldest`` evicts the
  oldest undelivered event, ``drop-newest`` refuses the new one, ``block`` makes
  the sender wait (``send_nowait`` raises :class:`trio.WouldBlock`).
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from vsm_edge.sync import HybridLogicalClock

from .event import NORMAL, Event, Scalar, Subsystem
from .record import StatusRecord

__all__ = [
    "BusStatistics",
    "Channel",
    "ChannelStatistics",
    "EventBus",
    "OverflowPolicy",
    "ReorderBuffer",
]


class OverflowPolicy(enum.StrEnum):
    DROP_OLDEST = "drop-oldest"
    DROP_NEWEST = "drop-newest"
    BLOCK = "block"


@dataclass(frozen=True, slots=True)
class ChannelStatistics(StatusRecord):
    """One channel's counters; also its entry in the status (``ChannelStatus``)."""

    name: str
    capacity: int
    window_s: float
    overflow: str
    held: int
    ready: int
    received: int
    delivered: int
    duplicates: int
    dropped: int
    late: int
    bypassed: int
    released_early: int
    high_water: int
    waiting_senders: int


ACCEPTED = 0
DUPLICATE = 1
FULL = 2

_Entry = tuple[tuple[int, int, str], int, float, Event]


def _key(event: Event) -> tuple[int, int, str]:
    hlc = event.hlc
    return (hlc.wall, hlc.logical, hlc.node)


class ReorderBuffer:
    """The pure core of a channel: de-duplication, reorder window, capacity.

    Held events live in a FIFO while they arrive in HLC order (the common case:
    O(1) per event) and in a heap when they arrive out of order; release takes
    the smaller head of the two once its window has passed.
    """

    __slots__ = (
        "_due",
        "_fifo",
        "_heap",
        "_held",
        "_last",
        "_ready",
        "_ring",
        "_seen",
        "_seq",
        "_tail",
        "bypass_intensity",
        "bypassed",
        "capacity",
        "dedup_capacity",
        "delivered",
        "dropped",
        "duplicates",
        "high_water",
        "late",
        "received",
        "released_early",
        "window_capacity",
        "window_s",
    )

    def __init__(
        self,
        *,
        capacity: int,
        window_s: float,
        window_capacity: int | None = None,
        dedup_capacity: int = 4096,
        bypass_intensity: float = 0.95,
    ) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        if window_s < 0:
            raise ValueError("window_s must be >= 0")
        self.capacity = capacity
        self.window_s = window_s
        self.window_capacity = min(window_capacity or capacity, capacity)
        self.dedup_capacity = dedup_capacity
        self.bypass_intensity = bypass_intensity
        self._fifo: deque[Event] = deque()
        self._due: deque[float] = deque()  # the FIFO's deadlines
        self._heap: list[_Entry] = []
        self._held = 0
        self._ready: deque[Event] = deque()
        # HLC stamp -> event; the ring remembers insertion order for eviction (a
        # deque: evicting through next(iter(dict)) would scan deleted slots)
        self._seen: dict[tuple[int, int, str], Event] = {}
        self._ring: deque[tuple[int, int, str]] = deque()
        self._seq = 0
        self._tail: tuple[int, int, str] = (-1, -1, "")
        self._last: tuple[int, int, str] = (-1, -1, "")
        self.received = 0
        self.delivered = 0
        self.duplicates = 0
        self.dropped = 0
        self.late = 0
        self.bypassed = 0
        self.released_early = 0
        self.high_water = 0

    def __len__(self) -> int:
        return self._held + len(self._ready)

    @property
    def held(self) -> int:
        return self._held

    @property
    def ready(self) -> int:
        return len(self._ready)

    @property
    def full(self) -> bool:
        return self._held + len(self._ready) >= self.capacity

    def offer(self, event: Event, now: float) -> int:
        """Take ``event`` (ACCEPTED), or say it is a DUPLICATE, or that the buffer is FULL.

        A FULL answer leaves the buffer unchanged; the caller applies its
        overflow policy (:meth:`evict_oldest`, :meth:`refuse`, or waiting).
        """
        hlc = event.hlc
        key = (hlc.wall, hlc.logical, hlc.node)
        seen = self._seen
        previous = seen.get(key)
        if previous is not None and previous == event:
            self.duplicates += 1
            return DUPLICATE
        size = self._held + len(self._ready)
        if size >= self.capacity:
            return FULL
        self.received += 1
        seen[key] = event
        ring = self._ring
        ring.append(key)
        if len(ring) > self.dedup_capacity:
            old = ring.popleft()
            if old != key:
                seen.pop(old, None)
        if event.intensity >= self.bypass_intensity:
            self.bypassed += 1
            self._ready.append(event)
        elif key < self._last:
            self.late += 1
            self._ready.append(event)
        else:
            if key >= self._tail:
                # in order: two flat deques, no per-event container for the GC to track
                self._tail = key
                self._fifo.append(event)
                self._due.append(now + self.window_s)
            else:
                self._seq += 1
                heapq.heappush(self._heap, (key, self._seq, now + self.window_s, event))
            self._held += 1
            if self._held > self.window_capacity:
                if self._heap:
                    self._ready.append(self._pop_head())
                else:  # _pop_head inlined: under load this runs for every event
                    head = self._fifo.popleft()
                    self._due.popleft()
                    self._held -= 1
                    stamp = head.hlc
                    self._last = (stamp.wall, stamp.logical, stamp.node)
                    self._ready.append(head)
                self.released_early += 1
        size += 1
        if size > self.high_water:
            self.high_water = size
        return ACCEPTED

    def _head(self) -> tuple[bool, float] | None:
        """Where the next held event is (True: the FIFO) and its deadline."""
        fifo, heap = self._fifo, self._heap
        if fifo:
            if heap and heap[0][0] < _key(fifo[0]):
                return False, heap[0][2]
            return True, self._due[0]
        if heap:
            return False, heap[0][2]
        return None

    def _pop_head(self) -> Event:
        if not self._heap:  # the common case: only the FIFO holds events
            event = self._fifo.popleft()
            self._due.popleft()
            self._held -= 1
            self._last = _key(event)
            return event
        head = self._head()
        assert head is not None
        if head[0]:
            event = self._fifo.popleft()
            self._due.popleft()
            self._last = _key(event)
        else:
            key, _seq, _deadline, event = heapq.heappop(self._heap)
            self._last = key
        self._held -= 1
        return event

    def evict_oldest(self) -> Event | None:
        """Drop the oldest undelivered event (the drop-oldest policy); counted.

        An intense signal (one that bypassed the window: a critical alarm) is
        kept while a held event can go instead; only a channel full of them
        loses its oldest.
        """
        ready = self._ready
        if ready and ready[0].intensity >= self.bypass_intensity and self._held:
            event = self._pop_head()
        elif ready:
            event = ready.popleft()
        elif self._held:
            event = self._pop_head()
        else:
            return None
        self.dropped += 1
        return event

    def refuse(self) -> None:
        """Count an event refused at capacity (the drop-newest policy)."""
        self.dropped += 1

    def pop_ready(self, now: float, limit: int) -> list[Event]:
        """Events deliverable at ``now``: released ones, then held ones whose window passed."""
        out: list[Event] = []
        ready = self._ready
        while ready and len(out) < limit:
            out.append(ready.popleft())
        fifo, due, heap = self._fifo, self._due, self._heap
        if not heap:
            # fast path: everything held is in arrival order
            n = 0
            room = limit - len(out)
            while fifo and n < room and due[0] <= now:
                out.append(fifo.popleft())
                due.popleft()
                n += 1
            if n:
                self._held -= n
                self._last = _key(out[-1])
        else:
            while len(out) < limit:
                head = self._head()
                if head is None or head[1] > now:
                    break
                out.append(self._pop_head())
        self.delivered += len(out)
        return out

    def next_deadline(self) -> float:
        """When the next event becomes deliverable (``-inf`` if one is now, ``inf`` if empty)."""
        if self._ready:
            return -math.inf
        head = self._head()
        return math.inf if head is None else head[1]


class Channel:
    """A bounded, reordering, de-duplicating channel read by one subsystem."""

    def __init__(
        self,
        name: str,
        *,
        capacity: int,
        window_s: float,
        overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST,
        window_capacity: int | None = None,
        dedup_capacity: int = 4096,
        bypass_intensity: float = 0.95,
    ) -> None:
        self.name = name
        self.overflow = overflow
        self._core = ReorderBuffer(
            capacity=capacity,
            window_s=window_s,
            window_capacity=window_capacity,
            dedup_capacity=dedup_capacity,
            bypass_intensity=bypass_intensity,
        )
        self._receivers = trio.lowlevel.ParkingLot()
        self._senders = trio.lowlevel.ParkingLot()
        self._wake_at = math.inf
        self._receiving = False  # a receiver is parked (cheaper than len(ParkingLot))

    @property
    def window_s(self) -> float:
        return self._core.window_s

    def has_space(self) -> bool:
        return self.overflow is not OverflowPolicy.BLOCK or not self._core.full

    def send_nowait(self, event: Event, now: float | None = None) -> bool:
        """Offer ``event``; True when it was taken.

        False for a duplicate or an event refused/evicted by the overflow policy.
        Raises :class:`trio.WouldBlock` when full under the ``block`` policy.
        ``now`` (trio time) saves a clock read when the caller has one.
        """
        core = self._core
        if now is None:
            now = trio.current_time()
        result = core.offer(event, now)
        if result == FULL:
            return self._full(event, now)
        if result != ACCEPTED:
            return False
        if self._receiving and core.next_deadline() < self._wake_at:
            self._wake()
        return True

    def _wake(self) -> None:
        # once woken the receiver recomputes its deadline when it runs: until
        # then, further events need not wake it again
        self._receiving = False
        self._receivers.unpark_all()

    def _full(self, event: Event, now: float) -> bool:
        """The overflow policy, for an event the core found no room for."""
        core = self._core
        if self.overflow is OverflowPolicy.BLOCK:
            raise trio.WouldBlock
        if self.overflow is OverflowPolicy.DROP_NEWEST:
            core.refuse()
            return False
        core.evict_oldest()
        if core.offer(event, now) != ACCEPTED:
            return False
        if self._receiving:
            self._wake()
        return True

    async def send(self, event: Event) -> bool:
        """Like :meth:`send_nowait`, but waits for space under the ``block`` policy."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                taken = self.send_nowait(event)
            except trio.WouldBlock:
                await self._senders.park()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return taken

    async def wait_space(self) -> None:
        """Wait until a ``send_nowait`` would not raise WouldBlock."""
        while not self.has_space():
            await self._senders.park()

    async def receive_batch(self, max_items: int = 4096) -> list[Event]:
        """Wait for, then return, up to ``max_items`` deliverable events in order."""
        await trio.lowlevel.checkpoint_if_cancelled()
        core = self._core
        while True:
            batch = core.pop_ready(trio.current_time(), max_items)
            if batch:
                if self._senders:
                    self._senders.unpark_all()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return batch
            self._wake_at = core.next_deadline()
            self._receiving = True
            try:
                with trio.move_on_at(self._wake_at):
                    await self._receivers.park()
            finally:
                self._wake_at = math.inf
                self._receiving = False

    def statistics(self) -> ChannelStatistics:
        c = self._core
        return ChannelStatistics(
            name=self.name,
            capacity=c.capacity,
            window_s=c.window_s,
            overflow=self.overflow.value,
            held=c.held,
            ready=c.ready,
            received=c.received,
            delivered=c.delivered,
            duplicates=c.duplicates,
            dropped=c.dropped,
            late=c.late,
            bypassed=c.bypassed,
            released_early=c.released_early,
            high_water=c.high_water,
            waiting_senders=self._senders.statistics().tasks_waiting,
        )


@dataclass(frozen=True, slots=True)
class BusStatistics:
    published: int
    unrouted: int
    blocked: int  # publishes refused by a full block-policy channel
    channels: dict[str, ChannelStatistics]


class EventBus:
    """HLC stamping plus routing by event kind to subsystem channels.

    ``channels`` maps each subsystem to its channel; :meth:`subscribe` says
    which kinds a subsystem reads. Publishing is synchronous and never blocks
    (``publish``); under the ``block`` policy use :meth:`publish_wait`.
    """

    def __init__(self, clock: HybridLogicalClock, channels: dict[Subsystem, Channel]) -> None:
        self.clock = clock
        self.channels = channels
        self._routes: dict[str, tuple[Channel, ...]] = {}
        self._blocking: set[str] = set()  # kinds routed to a block-policy channel
        self._published = 0
        self._unrouted = 0
        self._blocked = 0
        self._observers: list[Callable[[Event], None]] = []

    def subscribe(self, subsystem: Subsystem, kinds: Iterable[str]) -> Channel:
        channel = self.channels[subsystem]
        for kind in kinds:
            current = self._routes.get(kind, ())
            if channel not in current:
                self._routes[kind] = (*current, channel)
            if channel.overflow is OverflowPolicy.BLOCK:
                self._blocking.add(kind)
        return channel

    def observe(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback`` synchronously on every published event (taps, tests)."""
        self._observers.append(callback)

    def event(
        self,
        kind: str,
        source: str,
        name: str,
        value: Scalar,
        *,
        priority: int = NORMAL,
        category: str = "",
        intensity: float = 0.0,
        attrs: tuple[tuple[str, Scalar], ...] = (),
    ) -> Event:
        """A new event stamped with the local HLC."""
        return Event(
            kind,
            source,
            name,
            value,
            self.clock.now(),
            priority,
            category or f"{source}.{name}",
            intensity,
            attrs,
        )

    def publish(self, event: Event, now: float | None = None) -> int:
        """Route ``event``; returns how many channels took it.

        Raises :class:`trio.WouldBlock` (delivering nowhere) when a routed
        channel with the ``block`` policy is full. ``now`` (trio time) saves a
        clock read when the caller has one.
        """
        kind = event.kind
        routes = self._routes.get(kind, ())
        if not routes:
            self._unrouted += 1
        if kind in self._blocking:
            for channel in routes:
                if channel.overflow is OverflowPolicy.BLOCK and channel._core.full:
                    self._blocked += 1
                    raise trio.WouldBlock
        self._published += 1
        if now is None:
            now = trio.current_time()
        taken = 0
        for channel in routes:
            # Channel.send_nowait, inlined: this is the hot path of every event
            core = channel._core
            result = core.offer(event, now)
            if result == ACCEPTED:
                taken += 1
                if channel._receiving and core.next_deadline() < channel._wake_at:
                    channel._wake()
            elif result == FULL and channel._full(event, now):
                taken += 1
        if self._observers:
            for observer in self._observers:
                observer(event)
        return taken

    async def publish_wait(self, event: Event) -> int:
        """Like :meth:`publish`, waiting for space on ``block`` channels."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                taken = self.publish(event)
            except trio.WouldBlock:
                for channel in self._routes.get(event.kind, ()):
                    await channel.wait_space()
                continue
            await trio.lowlevel.cancel_shielded_checkpoint()
            return taken

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            published=self._published,
            unrouted=self._unrouted,
            blocked=self._blocked,
            channels={str(s): c.statistics() for s, c in self.channels.items()},
        )
