"""The one small interface between the gossip layer and a message broker.

Two implementations stand behind :class:`Transport`: the paho-mqtt adapter
(:class:`~vsm_edge.sync.MqttTransport`, a real broker) and the in-memory fake
(:class:`~vsm_edge.sync.MemoryBroker` / :class:`~vsm_edge.sync.MemoryTransport`).
The same contract tests run against both, so what is promised here is what the
fake promises too:

- ``run()`` is the service: it connects, reconnects with backoff and jitter,
  restores subscriptions, and disconnects cleanly (no last will) when cancelled.
- ``await publish(..., qos=1)`` returns only once the broker acknowledged the
  message (PUBACK). A store-and-forward outbox may delete a message then.
- A publish while not connected raises :class:`NotConnectedError`; a QoS 1
  publish whose connection drops before the PUBACK raises
  :class:`ConnectionLostError` (delivery unknown). The transport never
  retransmits on its own: retry is the caller's, so at-least-once is explicit
  and a subscriber may see a message twice.
- Incoming messages arrive on one bounded memory channel (``messages``); what
  happens when it is full is the explicit :class:`Overflow` policy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

import trio

from ._errors import SyncError

__all__ = [
    "ConnectionLostError",
    "InvalidTopicError",
    "Message",
    "NotConnectedError",
    "Overflow",
    "PayloadTooLargeError",
    "PublishRefusedError",
    "SubscriptionRefusedError",
    "Transport",
    "TransportError",
    "TransportState",
    "TransportStatistics",
    "Will",
]


# --- exceptions -------------------------------------------------------------


class TransportError(SyncError):
    """Base of the errors raised by a :class:`Transport`."""


class NotConnectedError(TransportError):
    """The transport has no connection to the broker at the moment of the call."""


class ConnectionLostError(TransportError):
    """The connection dropped before the broker acknowledged the message.

    Delivery is unknown: the broker may or may not have the message. Retrying is
    safe for idempotent payloads (every CRDT delta is).
    """


class PublishRefusedError(TransportError):
    """The broker answered a QoS 1 publish with a failure reason code (MQTT 5)."""

    def __init__(self, topic: str, reason_code: int, reason: str) -> None:
        super().__init__(f"broker refused publish to {topic!r}: {reason} (0x{reason_code:02x})")
        self.topic = topic
        self.reason_code = reason_code
        self.reason = reason


class SubscriptionRefusedError(TransportError):
    """The broker refused a subscription (SUBACK failure code)."""

    def __init__(self, topic_filter: str, reason_code: int, reason: str) -> None:
        super().__init__(
            f"broker refused subscription {topic_filter!r}: {reason} (0x{reason_code:02x})"
        )
        self.topic_filter = topic_filter
        self.reason_code = reason_code
        self.reason = reason


class InvalidTopicError(TransportError, ValueError):
    """A topic name or filter breaks the MQTT rules (empty, wildcards misplaced, too long)."""


class PayloadTooLargeError(TransportError, ValueError):
    """The payload is larger than the transport's configured ``max_payload``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"payload of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


# --- values -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One application message received from the broker.

    ``retain`` is true only when the broker delivered the message from its
    retained store (on subscribing); live messages arrive with ``retain`` false,
    whatever flag their publisher set.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Will:
    """The last will the broker publishes if the connection ends without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class TransportState(enum.Enum):
    """Where a transport's service loop is."""

    IDLE = "idle"  # run() not started
    CONNECTING = "connecting"  # opening the socket, waiting for CONNACK, restoring subscriptions
    CONNECTED = "connected"  # session ready: publishes go out, subscriptions are in place
    BACKOFF = "backoff"  # waiting before the next connection attempt
    CLOSED = "closed"  # run() has returned


class Overflow(enum.Enum):
    """What a transport does when the incoming channel is full.

    ``BACKPRESSURE`` stops reading from the broker until the consumer catches up:
    nothing is lost here, the broker buffers (and applies its own limits, e.g.
    Mosquitto's ``max_queued_messages``); a consumer stalled past the keepalive
    costs the connection, and the PUBACKs for our own publishes wait too, since
    they share the socket. ``DROP_NEWEST`` keeps reading and drops the message
    that does not fit, counted in ``statistics().messages_dropped``; the gossip
    layer's anti-entropy repairs what was dropped.
    """

    BACKPRESSURE = "backpressure"
    DROP_NEWEST = "drop-newest"


@dataclass(frozen=True, slots=True)
class TransportStatistics:
    """Counters of one transport since it was created (payload bytes only).

    ``attempts``, ``next_attempt_at`` and ``refused`` say how a reconnection
    goes: how many attempts failed in a row, when the next one starts, and the
    broker's own reason when it refused (bad credentials, not authorized);
    ``last_error`` is the last failure or loss, whatever its kind.
    """

    state: TransportState
    protocol: str | None  # "5" or "3.1.1" once negotiated
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    messages_dropped: int  # incoming messages dropped by the overflow policy
    connects: int  # successful connections (CONNACK accepted)
    connect_failures: int
    connections_lost: int
    inflight: int  # QoS 1 publishes waiting for their PUBACK
    subscriptions: int
    last_error: str | None
    # Where the connection stands (times on Trio's clock, ``trio.current_time()``):
    connected_since: float | None = None  # the current connection's CONNACK; None while down
    disconnected_since: float | None = None  # when the last connection ended (or run() began)
    attempts: int = 0  # failed connection attempts since the last success (or since run())
    next_attempt_at: float | None = None  # while in BACKOFF: when the next attempt starts
    refused: str | None = None  # the broker's reason, when the last attempt's CONNACK refused

    @property
    def reconnects(self) -> int:
        """Successful connections after the first one."""
        return max(self.connects - 1, 0)


# --- the interface ----------------------------------------------------------


class Transport(Protocol):
    """A connection to one broker, kept up by its ``run()`` service."""

    @property
    def client_id(self) -> str:
        """The MQTT client id (stable across reconnects)."""
        ...

    @property
    def state(self) -> TransportState:
        """The service loop's current state."""
        ...

    @property
    def messages(self) -> trio.MemoryReceiveChannel[Message]:
        """The bounded channel of incoming messages (one consumer)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and stay connected until cancelled; then disconnect cleanly.

        Reports started at once (the broker may be down: publishes then raise
        :class:`NotConnectedError` until a connection is up).
        """
        ...

    async def wait_connected(self) -> None:
        """Return once connected with every subscription in place."""
        ...

    async def wait_disconnected(self) -> None:
        """Return once the current connection has ended (at once when not connected)."""
        ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish; for QoS 1, return only after the broker's PUBACK.

        Raises :class:`NotConnectedError`, :class:`ConnectionLostError`,
        :class:`PublishRefusedError`, :class:`InvalidTopicError`,
        :class:`PayloadTooLargeError`, or ``ValueError`` for a QoS other than 0/1.
        """
        ...

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Add a subscription, kept across reconnects.

        When connected, returns after the broker's SUBACK (raising
        :class:`SubscriptionRefusedError` on refusal); when not, returns at once
        and the subscription is made on the next connection.
        """
        ...

    async def unsubscribe(self, topic_filter: str) -> None:
        """Remove a subscription (a no-op for one never made)."""
        ...

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        ...


class ConnectionEvents:
    """The connected/disconnected events both transports keep (internal helper).

    ``wait_connected`` and ``wait_disconnected`` of the :class:`Transport`
    protocol, driven by :meth:`mark_connected` / :meth:`mark_disconnected`.
    """

    __slots__ = ("_connected", "_disconnected")

    def __init__(self) -> None:
        self._connected = trio.Event()
        self._disconnected = trio.Event()  # set when the current connection ends

    def mark_connected(self) -> None:
        self._disconnected = trio.Event()
        self._connected.set()

    def mark_disconnected(self) -> None:
        if self._connected.is_set():
            self._connected = trio.Event()
            self._disconnected.set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_disconnected(self) -> None:
        if not self._connected.is_set():
            await trio.lowlevel.checkpoint()
            return
        await self._disconnected.wait()
