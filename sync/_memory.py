"""An in-memory broker and transports: the fake beside the paho adapter.

:class:`MemoryBroker` keeps the MQTT semantics the gossip layer relies on
(topic filters with ``+`` and ``#``, retained messages delivered on subscribe
with ``retain`` set, the last will on an unclean end, QoS 1 acknowledgement,
QoS downgrade to the subscription's) and adds knobs for tests: message loss,
duplication and reordering (probabilities drawn from one seeded
``random.Random``), partitions, forced disconnects, a broker stop/start, and
withheld PUBACKs. :class:`MemoryTransport` implements the same
:class:`~vsm_edge.sync.Transport` interface as the paho adapter, including the
reconnect loop with backoff, so the same contract tests run against both.

Sessions are clean: while a client is away nothing is queued for it, and its
transport restores its subscriptions on reconnect (as the paho adapter does
when the broker reports no session). Each connected client has a broker-side
queue bounded by ``max_queued`` (Mosquitto's ``max_queued_messages``); beyond
it the broker drops, and counts.
"""

from __future__ import annotations

import random as _random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from ._backoff import Backoff
from ._topics import topic_matches, validate_filter, validate_topic
from ._transport import (
    ConnectionEvents,
    ConnectionLostError,
    Message,
    NotConnectedError,
    Overflow,
    PayloadTooLargeError,
    TransportState,
    TransportStatistics,
    Will,
)

__all__ = ["MemoryBroker", "MemoryBrokerStatistics", "MemoryTransport"]

DEFAULT_MAX_PAYLOAD = 1 << 20


class _Unavailable(Exception):
    """The broker refuses a connection (stopped, or the client is partitioned)."""


class _Ack:
    __slots__ = ("done", "lost")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.lost = False


class _Link:
    """One client connection as the broker sees it."""

    def __init__(self, client_id: str, will: Will | None) -> None:
        self.client_id = client_id
        self.will = will
        self.subs: dict[str, int] = {}
        self.queue: deque[Message] = deque()
        self.wake = trio.Event()
        self.lost = trio.Event()
        self.lost_reason = ""
        self.held: list[Message] = []
        self.acks: set[_Ack] = set()


@dataclass(frozen=True, slots=True)
class MemoryBrokerStatistics:
    """What the fake broker did, including what its fault knobs did."""

    connected: int
    retained: int
    routed: int  # messages published to the broker (including wills)
    delivered: int  # copies queued for subscribers
    dropped_faults: int  # lost to the ``drop`` knob
    dropped_queue_full: int  # lost because a client's queue was full
    duplicated: int
    reordered: int
    wills_published: int


class MemoryBroker:
    """An MQTT broker in memory, with fault knobs for tests.

    ``drop``, ``duplicate`` and ``reorder`` are probabilities applied to each
    live delivery to each subscriber (not to retained messages sent on
    subscribe). A reordered message is held back and delivered right after the
    next message to the same subscriber (or by :meth:`flush_held`).
    """

    def __init__(self, *, seed: int = 0, max_queued: int = 1000) -> None:
        if max_queued < 1:
            raise ValueError("max_queued must be >= 1")
        self.drop = 0.0
        self.duplicate = 0.0
        self.reorder = 0.0
        self._random = _random.Random(seed)  # noqa: S311 (fault injection, not security)
        self._max_queued = max_queued
        self._running = True
        self._partitioned: set[str] = set()
        self._holding_acks = False
        self._held_acks: list[_Ack] = []
        self._retained: dict[str, Message] = {}
        self._links: dict[str, _Link] = {}
        self._routed = 0
        self._delivered = 0
        self._dropped_faults = 0
        self._dropped_queue_full = 0
        self._duplicated = 0
        self._reordered = 0
        self._wills = 0

    # --- knobs ---------------------------------------------------------------

    def transport(self, client_id: str, **options: object) -> MemoryTransport:
        """A new :class:`MemoryTransport` on this broker (options as its constructor's)."""
        return MemoryTransport(self, client_id, **options)  # type: ignore[arg-type]

    @property
    def connected(self) -> frozenset[str]:
        """Client ids with a live connection."""
        return frozenset(self._links)

    @property
    def retained(self) -> dict[str, Message]:
        """A copy of the retained store."""
        return dict(self._retained)

    def partition(self, *client_ids: str) -> None:
        """Cut these clients off: their connections drop (wills fire), reconnects fail."""
        self._partitioned.update(client_ids)
        for client_id in client_ids:
            link = self._links.get(client_id)
            if link is not None:
                self._sever(link, "partitioned", will=True)

    def heal(self, *client_ids: str) -> None:
        """End the partition of these clients (of all when none is named)."""
        if client_ids:
            self._partitioned.difference_update(client_ids)
        else:
            self._partitioned.clear()

    def disconnect(self, client_id: str, *, will: bool = True) -> None:
        """Drop one client's connection now, as a network failure would (will fires)."""
        link = self._links.get(client_id)
        if link is not None:
            self._sever(link, "disconnected by the broker", will=will)

    def stop(self, *, keep_retained: bool = False) -> None:
        """The broker goes down: every connection drops (no wills), reconnects fail."""
        self._running = False
        for link in list(self._links.values()):
            self._sever(link, "broker stopped", will=False)
        if not keep_retained:
            self._retained.clear()

    def start(self) -> None:
        """The broker is back."""
        self._running = True

    def hold_acks(self) -> None:
        """Withhold PUBACKs (messages are still routed) until :meth:`release_acks`."""
        self._holding_acks = True

    def release_acks(self) -> None:
        """Send the withheld PUBACKs and stop withholding."""
        self._holding_acks = False
        for ack in self._held_acks:
            ack.done.set()
        self._held_acks.clear()

    def flush_held(self) -> None:
        """Deliver every message the ``reorder`` knob is holding back."""
        for link in self._links.values():
            held, link.held = link.held, []
            for message in held:
                self._enqueue(link, message)

    def statistics(self) -> MemoryBrokerStatistics:
        """A snapshot of the broker's counters."""
        return MemoryBrokerStatistics(
            connected=len(self._links),
            retained=len(self._retained),
            routed=self._routed,
            delivered=self._delivered,
            dropped_faults=self._dropped_faults,
            dropped_queue_full=self._dropped_queue_full,
            duplicated=self._duplicated,
            reordered=self._reordered,
            wills_published=self._wills,
        )

    # --- the transports' side -------------------------------------------------

    def _attach(self, client_id: str, will: Will | None) -> _Link:
        if not self._running:
            raise _Unavailable("connection refused: broker stopped")
        if client_id in self._partitioned:
            raise _Unavailable("connection timed out: partitioned from the broker")
        old = self._links.get(client_id)
        if old is not None:
            self._sever(old, "session taken over", will=True)
        link = _Link(client_id, will)
        self._links[client_id] = link
        return link

    def _detach(self, link: _Link) -> None:
        """A clean DISCONNECT: no will."""
        if self._links.get(link.client_id) is link:
            self._sever(link, "disconnected", will=False)

    def _sever(self, link: _Link, reason: str, *, will: bool) -> None:
        if self._links.get(link.client_id) is link:
            del self._links[link.client_id]
        if link.lost.is_set():
            return
        link.lost_reason = reason
        link.lost.set()
        link.wake.set()
        for ack in link.acks:
            if not ack.done.is_set():
                ack.lost = True
                ack.done.set()
        link.acks.clear()
        if will and link.will is not None:
            self._wills += 1
            w = link.will
            self._route(Message(w.topic, w.payload, w.qos, w.retain))

    def _subscribe(self, link: _Link, topic_filter: str, qos: int) -> None:
        link.subs[topic_filter] = qos
        for topic, message in self._retained.items():
            if topic_matches(topic_filter, topic):
                self._enqueue(
                    link, Message(topic, message.payload, min(qos, message.qos), retain=True)
                )

    def _publish(self, link: _Link, message: Message) -> _Ack:
        ack = _Ack()
        self._route(message)
        if message.qos == 0:
            ack.done.set()
        elif self._holding_acks:
            self._held_acks.append(ack)
            link.acks.add(ack)
        else:
            ack.done.set()
        return ack

    def _route(self, message: Message) -> None:
        self._routed += 1
        if message.retain:
            if message.payload:
                self._retained[message.topic] = Message(
                    message.topic, message.payload, message.qos, retain=True
                )
            else:
                self._retained.pop(message.topic, None)
        for link in list(self._links.values()):
            granted = [q for f, q in link.subs.items() if topic_matches(f, message.topic)]
            if granted:
                live = Message(message.topic, message.payload, min(message.qos, max(granted)))
                self._deliver(link, live)

    def _deliver(self, link: _Link, message: Message) -> None:
        rng = self._random
        if self.drop and rng.random() < self.drop:
            self._dropped_faults += 1
            return
        copies = 1
        if self.duplicate and rng.random() < self.duplicate:
            copies = 2
            self._duplicated += 1
        for _ in range(copies):
            if self.reorder and not link.held and rng.random() < self.reorder:
                link.held.append(message)
                self._reordered += 1
                continue
            self._enqueue(link, message)
            held, link.held = link.held, []
            for late in held:
                self._enqueue(link, late)

    def _enqueue(self, link: _Link, message: Message) -> None:
        if len(link.queue) >= self._max_queued:
            self._dropped_queue_full += 1
            return
        self._delivered += 1
        link.queue.append(message)
        link.wake.set()


class MemoryTransport:
    """A :class:`~vsm_edge.sync.Transport` on a :class:`MemoryBroker`."""

    def __init__(
        self,
        broker: MemoryBroker,
        client_id: str,
        *,
        will: Will | None = None,
        backoff: Backoff | None = None,
        random: Callable[[], float] = _random.random,
        max_inflight: int = 20,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        incoming_capacity: int = 1024,
        overflow: Overflow = Overflow.BACKPRESSURE,
    ) -> None:
        if not client_id:
            raise ValueError("client_id must not be empty")
        if max_inflight < 1 or max_payload < 0 or incoming_capacity < 1:
            raise ValueError("max_inflight and incoming_capacity must be >= 1, max_payload >= 0")
        if will is not None:
            validate_topic(will.topic)
        self._broker = broker
        self._client_id = client_id
        self._will = will
        self._backoff = backoff or Backoff()
        self._random = random
        self._max_payload = max_payload
        self._overflow = overflow
        self._inflight = trio.Semaphore(max_inflight)
        self._send, self._receive = trio.open_memory_channel[Message](incoming_capacity)
        self._wanted: dict[str, int] = {}
        self._link: _Link | None = None
        self._state = TransportState.IDLE
        self._events = ConnectionEvents()
        self._running = False
        self._messages_in = self._bytes_in = self._messages_out = self._bytes_out = 0
        self._dropped = self._connects = self._connect_failures = self._lost = 0
        self._waiting_acks = 0
        self._last_error: str | None = None
        self._connected_since: float | None = None
        self._disconnected_since: float | None = None
        self._attempts = 0
        self._next_attempt_at: float | None = None

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def messages(self) -> trio.MemoryReceiveChannel[Message]:
        return self._receive

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Stay connected to the broker until cancelled (see :class:`Transport`)."""
        if self._running:
            raise RuntimeError(f"transport {self._client_id!r} is already running")
        self._running = True
        attempt = 0
        self._disconnected_since = trio.current_time()
        try:
            task_status.started()
            while True:
                self._state = TransportState.CONNECTING
                await trio.lowlevel.checkpoint()
                try:
                    link = self._broker._attach(self._client_id, self._will)
                except _Unavailable as exc:
                    self._connect_failures += 1
                    self._attempts += 1
                    self._last_error = str(exc)
                    await self._back_off(self._backoff.delay(attempt, self._random()))
                    attempt += 1
                    continue
                attempt = self._attempts = 0
                self._connected_since, self._disconnected_since = trio.current_time(), None
                self._connects += 1
                self._link = link
                for topic_filter, qos in self._wanted.items():
                    self._broker._subscribe(link, topic_filter, qos)
                self._state = TransportState.CONNECTED
                self._events.mark_connected()
                try:
                    await self._pump(link)
                finally:
                    self._link = None
                    self._connected_since, self._disconnected_since = None, trio.current_time()
                    self._events.mark_disconnected()
                    if not link.lost.is_set():  # we are being cancelled: leave cleanly
                        self._broker._detach(link)
                    else:
                        self._lost += 1
                        self._last_error = f"connection lost: {link.lost_reason}"
                # A short pause even after a loss, so a flapping broker is not hammered.
                await self._back_off(self._backoff.delay(0, self._random()))
        finally:
            self._running = False
            self._state = TransportState.CLOSED

    async def _back_off(self, delay: float) -> None:
        self._state = TransportState.BACKOFF
        self._next_attempt_at = trio.current_time() + delay
        try:
            await trio.sleep(delay)
        finally:
            self._next_attempt_at = None

    async def _pump(self, link: _Link) -> None:
        while not link.lost.is_set():
            if not link.queue:
                link.wake = trio.Event()
                await link.wake.wait()
                continue
            message = link.queue.popleft()
            self._messages_in += 1
            self._bytes_in += len(message.payload)
            if self._overflow is Overflow.BACKPRESSURE:
                await self._send.send(message)
            else:
                try:
                    self._send.send_nowait(message)
                except trio.WouldBlock:
                    self._dropped += 1

    async def wait_connected(self) -> None:
        """Return once connected with every subscription in place."""
        await self._events.wait_connected()

    async def wait_disconnected(self) -> None:
        """Return once the current connection has ended (at once when not connected)."""
        await self._events.wait_disconnected()

    def _require_link(self) -> _Link:
        link = self._link
        if link is None or link.lost.is_set() or self._state is not TransportState.CONNECTED:
            raise NotConnectedError(f"{self._client_id}: not connected to the broker")
        return link

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish; for QoS 1 return after the PUBACK (see :class:`Transport`)."""
        validate_topic(topic)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        payload = bytes(payload)
        if len(payload) > self._max_payload:
            raise PayloadTooLargeError(len(payload), self._max_payload)
        message = Message(topic, payload, qos, retain)
        if qos == 0:
            await trio.lowlevel.checkpoint()
            self._broker._publish(self._require_link(), message)
        else:
            async with self._inflight:
                ack = self._broker._publish(self._require_link(), message)
                self._waiting_acks += 1
                try:
                    await ack.done.wait()
                finally:
                    self._waiting_acks -= 1
                if ack.lost:
                    raise ConnectionLostError(
                        f"{self._client_id}: connection lost before the PUBACK for {topic!r}"
                    )
        self._messages_out += 1
        self._bytes_out += len(payload)

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Add a subscription kept across reconnects (see :class:`Transport`)."""
        validate_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        await trio.lowlevel.checkpoint()
        self._wanted[topic_filter] = qos
        link = self._link
        if link is not None and not link.lost.is_set():
            self._broker._subscribe(link, topic_filter, qos)

    async def unsubscribe(self, topic_filter: str) -> None:
        """Remove a subscription."""
        validate_filter(topic_filter)
        await trio.lowlevel.checkpoint()
        self._wanted.pop(topic_filter, None)
        link = self._link
        if link is not None:
            link.subs.pop(topic_filter, None)

    def statistics(self) -> TransportStatistics:
        return TransportStatistics(
            state=self._state,
            protocol="memory",
            messages_in=self._messages_in,
            bytes_in=self._bytes_in,
            messages_out=self._messages_out,
            bytes_out=self._bytes_out,
            messages_dropped=self._dropped,
            connects=self._connects,
            connect_failures=self._connect_failures,
            connections_lost=self._lost,
            inflight=self._waiting_acks,
            subscriptions=len(self._wanted),
            last_error=self._last_error,
            connected_since=self._connected_since,
            disconnected_since=self._disconnected_since,
            attempts=self._attempts,
            next_attempt_at=self._next_attempt_at,
        )

    def subscriptions(self) -> Iterable[str]:
        """The filters this transport keeps subscribed."""
        return tuple(self._wanted)
