"""The MQTT transport: paho-mqtt 2.x driven by Trio, never blocking the loop.

Theory of operation
-------------------
paho's external-loop API does the protocol; Trio does the waiting:

- **One paho client per connection.** Every attempt builds a fresh
  ``paho.mqtt.client.Client``, so nothing of a dead connection survives in
  paho: paho's own retransmission of unacknowledged messages never runs, and
  retry belongs to one owner, the caller (the store-and-forward outbox). A QoS 1
  publish whose connection drops fails with :class:`ConnectionLostError`.
- **Non-blocking connect.** Name resolution runs in a worker thread
  (``trio.socket.getaddrinfo``); the TCP connect is a non-blocking
  ``connect_ex`` completed when the socket becomes writable; the TLS handshake
  is driven by ``wait_readable``/``wait_writable``. The connected socket is
  handed to paho through its ``_create_socket`` hook (the one private paho name
  used here; paho is pinned below 3). paho then only queues CONNECT.
- **Three tasks per connection:** the reader waits for ``wait_readable`` and
  calls ``loop_read`` (and drains what TLS already decrypted, ``pending()``),
  the writer waits until paho ``want_write()`` and the socket is writable and
  calls ``loop_write``, and the misc task calls ``loop_misc`` every second for
  keepalive. paho writes inline when the socket accepts the bytes; the writer
  handles the rest. ``on_socket_close`` calls ``trio.lowlevel.notify_closing``
  so no task waits on a closed descriptor.
- **MQTT 5 first.** With ``protocol="auto"`` the first attempt speaks MQTT 5;
  a broker that answers "unsupported protocol version" (an MQTT 3.1.1 broker
  such as amqtt) is retried at once with 3.1.1, remembered for this transport.
- **Sessions and subscriptions.** On MQTT 5 the transport asks for a session
  kept ``session_expiry`` seconds (clean start false), so the broker queues
  QoS 1 messages while it is briefly away. On 3.1.1 sessions are clean (a 3.1.1
  session never expires on the broker). Either way the transport tracks what
  the broker's session holds and, after each CONNACK, subscribes what is
  missing: everything when the broker reports no session (3.1.1, a broker
  restarted without persistence, an expired session). ``state`` becomes
  ``CONNECTED`` only once the subscriptions are in place.
- **Reconnect** waits ``Backoff.delay(attempt, random())`` between failed
  attempts (random and, through Trio's clock, time are injectable) and a short
  ``delay(0)`` after a lost connection, so a flapping broker is not hammered.
- **Incoming messages** go to a bounded memory channel; see :class:`Overflow`.
  With ``BACKPRESSURE`` the reader stops reading while the channel is full
  (what paho already parsed waits in a backlog bounded by one ``loop_read``).

Why one module: the three tasks of a connection share one paho client and
one socket, and the ownership rules above are only readable side by side.
"""

from __future__ import annotations

import errno
import logging
import math
import random as _random
import socket
import ssl
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import paho.mqtt.client as paho
import trio
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ._backoff import Backoff
from ._topics import validate_filter, validate_topic
from ._transport import (
    ConnectionEvents,
    ConnectionLostError,
    Message,
    NotConnectedError,
    Overflow,
    PayloadTooLargeError,
    PublishRefusedError,
    SubscriptionRefusedError,
    TransportError,
    TransportState,
    TransportStatistics,
    Will,
)

__all__ = ["MqttSettings", "MqttTransport"]

log = logging.getLogger("vsm_edge.sync.mqtt")

Protocol = Literal["auto", "5", "3.1.1"]
DEFAULT_MAX_PAYLOAD = 1 << 20
# Room for the fixed header, a topic of up to 64 KiB and properties, on top of the payload.
_PACKET_OVERHEAD = 65536 + 1024
_UNSUPPORTED_PROTOCOL = 0x84  # CONNACK reason (MQTT 5); paho maps a 3.1.1 broker's 0x01 to it
# While learning the version (auto), how long an MQTT 5 CONNECT may go unanswered
# before 3.1.1 is tried: a broker answers CONNECT within one round trip.
_V5_PROBE_TIMEOUT = 2.0
_READ_BATCH = 64  # packets read in a row before the reader yields to the loop
# Failed attempts before a transport that never connected warns (INFO until then).
_QUIET_START_ATTEMPTS = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class MqttSettings:
    """How to reach a broker, and the transport's limits.

    ``tls`` is an ``ssl.SSLContext`` (its verification settings apply as they
    are; ``server_hostname`` overrides the name checked, default ``host``).
    ``session_expiry`` (seconds, MQTT 5 only, 0 for clean sessions) is how long
    the broker keeps this client's session and queues its QoS 1 messages while
    it is away. ``max_payload`` bounds outgoing payloads and, on MQTT 5, tells
    the broker the largest packet this client accepts.
    """

    client_id: str
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: Protocol = "auto"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    will: Will | None = None
    keepalive: int = 30
    session_expiry: int = 120
    connect_timeout: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    max_inflight: int = 20
    max_payload: int = DEFAULT_MAX_PAYLOAD
    incoming_capacity: int = 1024
    overflow: Overflow = Overflow.BACKPRESSURE

    def __post_init__(self) -> None:
        if not self.client_id or len(self.client_id.encode()) > 65535:
            raise ValueError("client_id must be a non-empty string (at most 65535 bytes)")
        if self.protocol not in ("auto", "5", "3.1.1"):
            raise ValueError(f"protocol must be 'auto', '5' or '3.1.1', not {self.protocol!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be within 1..65535, not {self.port!r}")
        if not 0 < self.keepalive <= 65535:
            raise ValueError("keepalive must be within 1..65535 seconds")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry must be within 0..4294967295 seconds")
        if not (self.connect_timeout > 0 and math.isfinite(self.connect_timeout)):
            raise ValueError("connect_timeout must be a positive number")
        if not 1 <= self.max_inflight <= 65535:
            raise ValueError("max_inflight must be within 1..65535")
        if not 0 <= self.max_payload <= 256 * 1024 * 1024 - _PACKET_OVERHEAD:
            raise ValueError("max_payload must be within 0..~256 MiB")
        if self.incoming_capacity < 1:
            raise ValueError("incoming_capacity must be >= 1")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        if self.will is not None:
            validate_topic(self.will.topic)
            if self.will.qos not in (0, 1):
                raise ValueError("the will's qos must be 0 or 1")

    @classmethod
    def from_url(cls, url: str, *, client_id: str, **options: Any) -> MqttSettings:
        """Settings from ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...``.

        ``mqtts`` uses TLS with ``ssl.create_default_context()`` unless a ``tls``
        option is given; the default ports are 1883 and 8883. Other options are
        passed on as they are. Raises ``ValueError`` for another scheme.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL must start with mqtt:// or mqtts://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"broker URL has no host: {url!r}")
        secure = parts.scheme == "mqtts"
        options.setdefault("host", parts.hostname)
        options.setdefault("port", parts.port or (8883 if secure else 1883))
        if parts.username is not None:
            options.setdefault("username", urllib.parse.unquote(parts.username))
        if parts.password is not None:
            options.setdefault("password", urllib.parse.unquote(parts.password))
        if secure:
            options.setdefault("tls", ssl.create_default_context())
        return cls(client_id=client_id, **options)


# --- the paho side ------------------------------------------------------------


class _PahoClient(paho.Client):
    """paho's client, fed a socket that Trio connected without blocking."""

    _vsm_socket: socket.socket | None = None

    def _create_socket(self) -> Any:
        # paho's private hook: its own version resolves and connects blocking.
        sock, self._vsm_socket = self._vsm_socket, None
        if sock is None:
            raise ConnectionError("no connected socket was prepared")
        return sock


class _ConnectFailed(Exception):
    def __init__(
        self,
        reason: str,
        *,
        reason_code: int | None = None,
        refusal: str | None = None,
        before_connack: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_code = reason_code
        self.refusal = refusal  # the broker's reason, when its CONNACK refused us
        self.before_connack = before_connack  # the socket was open, no CONNACK came


class _PendingPublish:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.error: TransportError | None = None


class _PendingAck:
    __slots__ = ("codes", "done")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.codes: list[ReasonCode] | None = None  # None: the connection was lost


def _reason(code: ReasonCode) -> tuple[int, str]:
    return int(code.value), str(code.getName())


class _Connection:
    """One connection's paho client, socket and waiters."""

    def __init__(
        self,
        transport: MqttTransport,
        client: _PahoClient,
        sock: socket.socket,
        version: MQTTProtocolVersion,
    ) -> None:
        self.transport = transport
        self.version = version
        self.client = client
        self.sock = sock
        self.connack = trio.Event()
        self.refused: tuple[int, str] | None = None
        self.session_present = False
        self.max_packet: int | None = None  # the broker's Maximum Packet Size (MQTT 5)
        self.lost = trio.Event()
        self.lost_reason = ""
        self.publishes: dict[int, _PendingPublish] = {}
        self.acks: dict[int, _PendingAck] = {}
        self.wake_writer = trio.Event()
        self.socket_closed = False
        self.packets = 0  # packets that reached a callback: the reader's progress signal
        self.drained = trio.lowlevel.ParkingLot()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_ack
        client.on_unsubscribe = self._on_ack
        client.on_message = self._on_message
        client.on_socket_close = self._on_socket_close

    # paho callbacks: called synchronously from loop_read/loop_write/loop_misc,
    # in the Trio thread; they never block.

    def _on_connect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            self.refused = _reason(reason_code)
        else:
            self.session_present = bool(flags.session_present)
            # paho does not honour the broker's Receive Maximum by itself.
            receive_max = getattr(properties, "ReceiveMaximum", None)
            inflight = self.transport.settings.max_inflight
            if isinstance(receive_max, int) and receive_max > 0:
                inflight = min(inflight, receive_max)
            self.transport._inflight.total_tokens = inflight
            max_packet = getattr(properties, "MaximumPacketSize", None)
            if isinstance(max_packet, int) and max_packet > 0:
                self.max_packet = max_packet  # a larger PUBLISH would cost the connection
        self.connack.set()

    def _on_disconnect(
        self,
        client: paho.Client,
        userdata: object,
        flags: paho.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if flags.is_disconnect_packet_from_server:
            self.mark_lost(f"broker sent DISCONNECT: {reason_code.getName()}")
        elif reason_code.value == 0x80:  # paho's "unspecified": closed or reset
            self.mark_lost("connection closed or reset")
        else:
            self.mark_lost(f"connection lost: {reason_code.getName()}")

    def _on_publish(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.packets += 1
        pending = self.publishes.pop(mid, None)
        if pending is None:
            return  # QoS 0 (written), or a publisher that gave up
        if reason_code.is_failure:
            code, name = _reason(reason_code)
            pending.error = PublishRefusedError("", code, name)
        pending.done.set()

    def _on_ack(
        self,
        client: paho.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self.packets += 1
        pending = self.acks.pop(mid, None)
        if pending is not None:
            pending.codes = list(reason_codes)
            pending.done.set()

    def _on_message(self, client: paho.Client, userdata: object, msg: paho.MQTTMessage) -> None:
        self.packets += 1
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.transport._dropped += 1
            return
        self.transport._deliver(Message(topic, bytes(msg.payload), int(msg.qos), bool(msg.retain)))

    def _on_socket_close(self, client: paho.Client, userdata: object, sock: Any) -> None:
        trio.lowlevel.notify_closing(sock)  # wakes a reader/writer waiting on it
        self.socket_closed = True

    # our side

    def mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        self.connack.set()
        self.wake_writer.set()
        self.drained.unpark_all()
        for pending in self.publishes.values():
            pending.error = ConnectionLostError(
                f"{self.transport.client_id}: connection lost before the PUBACK ({reason})"
            )
            pending.done.set()
        self.publishes.clear()
        for ack in self.acks.values():
            ack.done.set()
        self.acks.clear()

    def check(self, rc: MQTTErrorCode | int, what: str) -> None:
        """After any paho call: note a failure, and wake the writer if bytes are left."""
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.mark_lost(f"{what}: {paho.error_string(rc)}")
        elif self.socket_closed:
            self.mark_lost(f"{what}: socket closed")
        elif self.client.want_write():
            self.wake_writer.set()

    def close_socket(self) -> None:
        # paho's __del__ closes its socket again, outside Trio: no callback then.
        self.client.on_socket_close = None
        sock = self.sock
        if sock.fileno() != -1:
            trio.lowlevel.notify_closing(sock)
            sock.close()
        self.mark_lost(self.lost_reason or "closed")


# --- the transport --------------------------------------------------------------


class MqttTransport:
    """A :class:`~vsm_edge.sync.Transport` over a real MQTT broker (paho-mqtt under Trio).

    ``random`` (a callable returning floats in ``[0, 1)``) drives the backoff
    jitter; time is Trio's clock.
    """

    def __init__(
        self, settings: MqttSettings, *, random: Callable[[], float] = _random.random
    ) -> None:
        self.settings = settings
        self._random = random
        # The version to speak: fixed by the settings, or learnt (auto: 3.1.1
        # once a broker refused or ignored MQTT 5 and accepted 3.1.1).
        self._protocol: MQTTProtocolVersion | None = {
            "5": MQTTProtocolVersion.MQTTv5,
            "3.1.1": MQTTProtocolVersion.MQTTv311,
        }.get(settings.protocol)
        self._fallback: MQTTProtocolVersion | None = None  # the next attempt's, while learning
        self._spoken: MQTTProtocolVersion | None = None  # on the last accepted connection
        self._inflight = trio.CapacityLimiter(settings.max_inflight)
        self._send, self._receive = trio.open_memory_channel[Message](settings.incoming_capacity)
        self._backlog: deque[Message] = deque()
        self._wanted: dict[str, int] = {}
        self._session: dict[str, int] = {}  # what the broker's session holds
        self._conn: _Connection | None = None
        self._state = TransportState.IDLE
        self._events = ConnectionEvents()
        self._running = False
        self._messages_in = self._bytes_in = self._messages_out = self._bytes_out = 0
        self._dropped = self._connects = self._connect_failures = self._lost = 0
        self._last_error: str | None = None
        self._connected_since: float | None = None
        self._disconnected_since: float | None = None
        self._attempts = 0  # failed attempts since the last connection
        self._next_attempt_at: float | None = None
        self._refused: str | None = None
        # What the log last said about the connection ("connected", "down" or
        # "refused: <reason>"): one line per change, not one per retry.
        self._logged: str | None = None

    @property
    def client_id(self) -> str:
        return self.settings.client_id

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def messages(self) -> trio.MemoryReceiveChannel[Message]:
        return self._receive

    @property
    def protocol(self) -> str | None:
        """The negotiated protocol version, "5" or "3.1.1" (None before the first CONNACK)."""
        if self._spoken is None:
            return None
        return "5" if self._spoken == MQTTProtocolVersion.MQTTv5 else "3.1.1"

    def socket(self) -> socket.socket | None:
        """The current connection's socket (for diagnostics), or None."""
        conn = self._conn
        return conn.sock if conn is not None else None

    def statistics(self) -> TransportStatistics:
        conn = self._conn
        return TransportStatistics(
            state=self._state,
            protocol=self.protocol,
            messages_in=self._messages_in,
            bytes_in=self._bytes_in,
            messages_out=self._messages_out,
            bytes_out=self._bytes_out,
            messages_dropped=self._dropped,
            connects=self._connects,
            connect_failures=self._connect_failures,
            connections_lost=self._lost,
            inflight=len(conn.publishes) if conn is not None else 0,
            subscriptions=len(self._wanted),
            last_error=self._last_error,
            connected_since=self._connected_since,
            disconnected_since=self._disconnected_since,
            attempts=self._attempts,
            next_attempt_at=self._next_attempt_at,
            refused=self._refused,
        )

    # --- the service -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and stay connected until cancelled; then DISCONNECT cleanly."""
        if self._running:
            raise RuntimeError(f"transport {self.client_id!r} is already running")
        self._running = True
        attempt = 0
        self._disconnected_since = trio.current_time()
        try:
            task_status.started()
            while True:
                self._state = TransportState.CONNECTING
                version = self._protocol or self._fallback or MQTTProtocolVersion.MQTTv5
                try:
                    await self._connection(version)
                except _ConnectFailed as exc:
                    if (
                        self._protocol is None
                        and version == MQTTProtocolVersion.MQTTv5
                        and exc.reason_code == _UNSUPPORTED_PROTOCOL
                    ):
                        log.info("%s: the broker does not speak MQTT 5: 3.1.1", self.client_id)
                        self._fallback = MQTTProtocolVersion.MQTTv311
                        continue
                    self._connect_failures += 1
                    self._last_error = exc.reason
                    if (
                        self._protocol is None
                        and exc.before_connack
                        and version == MQTTProtocolVersion.MQTTv5
                    ):
                        # Some 3.1.1 brokers (amqtt) never answer an MQTT 5
                        # CONNECT: try 3.1.1 at once, kept if it is accepted.
                        log.debug("%s: connect failed: %s", self.client_id, exc.reason)
                        self._fallback = MQTTProtocolVersion.MQTTv311
                        continue
                    self._fallback = None
                    self._attempts += 1
                    self._refused = exc.refusal
                    delay = self.settings.backoff.delay(attempt, self._random())
                    self._log_failure(exc, delay)
                    await self._back_off(delay)
                    attempt += 1
                else:
                    attempt = 0
                    delay = self.settings.backoff.delay(0, self._random())
                    self._logged = "down"
                    s = self.settings
                    log.warning(
                        "%s: lost the connection to the broker at %s:%d (%s); "
                        "reconnecting in %.1f s",
                        self.client_id, s.host, s.port, self._last_error, delay,
                    )  # fmt: skip
                    await self._back_off(delay)
        finally:
            self._running = False
            self._next_attempt_at = None
            self._state = TransportState.CLOSED

    async def _back_off(self, delay: float) -> None:
        self._state = TransportState.BACKOFF
        self._next_attempt_at = trio.current_time() + delay
        try:
            await trio.sleep(delay)
        finally:
            self._next_attempt_at = None

    def _log_failure(self, exc: _ConnectFailed, delay: float) -> None:
        """One WARNING when the connection's condition changes, DEBUG for each retry after."""
        s = self.settings
        if exc.refusal is not None:
            condition = f"refused: {exc.refusal}"
            text = f"the broker at {s.host}:{s.port} refused the connection: {exc.refusal}"
        else:
            condition = "down"
            text = f"cannot reach the broker at {s.host}:{s.port}: {exc.reason}"
            if self._connects == 0 and self._attempts < _QUIET_START_ATTEMPTS:
                # Never connected yet: INFO first, WARNING if it lasts. A process
                # that fails to start a moment later then ends with its one line.
                condition = "starting"
        if condition == self._logged:
            level = logging.DEBUG
        else:
            level = logging.INFO if condition == "starting" else logging.WARNING
        self._logged = condition
        log.log(
            level, "%s: %s; reconnecting in %.1f s (attempt %d)",
            self.client_id, text, delay, self._attempts,
        )  # fmt: skip

    async def _connection(self, version: MQTTProtocolVersion) -> None:
        """One connection, from socket to loss. Raises _ConnectFailed before CONNACK."""
        s = self.settings
        v5 = version == MQTTProtocolVersion.MQTTv5
        with trio.move_on_after(s.connect_timeout) as timeout:
            sock = await _open_socket(s.host, s.port, s.tls, s.server_hostname)
        if timeout.cancelled_caught:
            raise _ConnectFailed(f"connect to {s.host}:{s.port} timed out")
        try:
            client = _PahoClient(
                CallbackAPIVersion.VERSION2,
                client_id=s.client_id,
                clean_session=None if v5 else True,
                protocol=version,
                reconnect_on_failure=False,
            )
            client.max_queued_messages = 0
            client.max_inflight_messages = s.max_inflight
            if s.username is not None:
                client.username_pw_set(s.username, s.password)
            if s.will is not None:
                client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
            properties = None
            if v5:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = s.session_expiry
                properties.MaximumPacketSize = s.max_payload + _PACKET_OVERHEAD
            client.connect_async(
                s.host,
                s.port,
                s.keepalive,
                clean_start=s.session_expiry == 0 if v5 else paho.MQTT_CLEAN_START_FIRST_ONLY,
                properties=properties,
            )
            client._vsm_socket = sock
            conn = _Connection(self, client, sock, version)
        except BaseException:
            sock.close()
            raise
        failure: _ConnectFailed | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._read_loop, conn)
                nursery.start_soon(self._write_loop, conn)
                conn.check(client.reconnect(), "sending CONNECT")
                try:
                    failure = await self._establish(conn, version)
                    if failure is None:
                        nursery.start_soon(self._misc_loop, conn)
                        await self._connected_until_lost(conn, version)
                except trio.Cancelled:
                    # Shutting down, connected or not yet: CONNECT may be out,
                    # so say DISCONNECT, or the broker would publish our will.
                    with trio.CancelScope(shield=True):
                        await self._disconnect_cleanly(conn)
                    raise
                nursery.cancel_scope.cancel()
        finally:
            if self._conn is conn:
                self._conn = None
            self._events.mark_disconnected()
            conn.close_socket()
        if failure is not None:
            raise failure

    async def _connected_until_lost(self, conn: _Connection, version: MQTTProtocolVersion) -> None:
        if self._fallback is not None:
            self._protocol = self._fallback  # learnt
        self._fallback = None
        self._spoken = version
        self._conn = conn
        self._connects += 1
        failed, self._attempts, self._refused = self._attempts, 0, None
        self._connected_since, self._disconnected_since = trio.current_time(), None
        self._state = TransportState.CONNECTED
        self._events.mark_connected()
        s = self.settings
        self._logged = "connected"
        log.info(
            "%s: connected to the broker at %s:%d (MQTT %s, session %s%s)",
            self.client_id, s.host, s.port, self.protocol, conn.session_present,
            f", after {failed} failed attempts" if failed else "",
        )  # fmt: skip
        try:
            await conn.lost.wait()
        finally:
            self._connected_since, self._disconnected_since = None, trio.current_time()
        self._lost += 1
        self._last_error = conn.lost_reason

    async def _establish(
        self, conn: _Connection, version: MQTTProtocolVersion
    ) -> _ConnectFailed | None:
        """Wait for CONNACK, then put the subscriptions in place."""
        wait = self.settings.connect_timeout
        if self._protocol is None and version == MQTTProtocolVersion.MQTTv5:
            wait = min(wait, _V5_PROBE_TIMEOUT)
        with trio.move_on_after(wait) as timeout:
            await conn.connack.wait()
            if conn.refused is not None:  # (paho also closes the socket then)
                code, name = conn.refused
                return _ConnectFailed(f"connection refused: {name}", reason_code=code, refusal=name)
            if conn.lost.is_set():
                return _ConnectFailed(
                    f"connection closed before CONNACK: {conn.lost_reason}", before_connack=True
                )
            if not conn.session_present:
                self._session.clear()
            # Reconcile until nothing changes: a subscribe() racing with us only
            # records its filter while we are not CONNECTED.
            while True:
                missing = {f: q for f, q in self._wanted.items() if self._session.get(f) != q}
                extra = [f for f in self._session if f not in self._wanted]
                if not missing and not extra:
                    return None
                if missing:
                    codes = await self._send_subscribe(conn, missing)
                    if codes is None:
                        return _ConnectFailed(
                            f"connection lost while subscribing: {conn.lost_reason}"
                        )
                    for (topic_filter, qos), reason in zip(missing.items(), codes, strict=False):
                        if reason.is_failure:
                            self._wanted.pop(topic_filter, None)
                            self._last_error = str(
                                SubscriptionRefusedError(topic_filter, *_reason(reason))
                            )
                            log.warning("%s: %s", self.client_id, self._last_error)
                        else:
                            self._session[topic_filter] = qos
                if extra:
                    if await self._send_unsubscribe(conn, extra) is None:
                        return _ConnectFailed(
                            f"connection lost while subscribing: {conn.lost_reason}"
                        )
                    for topic_filter in extra:
                        self._session.pop(topic_filter, None)
        assert timeout.cancelled_caught
        if not conn.connack.is_set():
            return _ConnectFailed(f"no CONNACK within {wait:g} s", before_connack=True)
        return _ConnectFailed(f"no SUBACK within {wait:g} s")

    async def _disconnect_cleanly(self, conn: _Connection) -> None:
        """Send DISCONNECT (so the broker drops the will) within a short grace period."""
        if conn.lost.is_set():
            return
        with trio.move_on_after(min(self.settings.connect_timeout, 2.0)):
            conn.client.disconnect()
            while conn.client.want_write() and not conn.lost.is_set() and conn.sock.fileno() >= 0:
                await trio.lowlevel.wait_writable(conn.sock)
                conn.client.loop_write()

    # --- the three loops -----------------------------------------------------------

    async def _read_loop(self, conn: _Connection) -> None:
        client, sock = conn.client, conn.sock
        tls = sock if isinstance(sock, ssl.SSLSocket) else None
        try:
            while not conn.lost.is_set():
                while self._backlog:  # BACKPRESSURE: hand over what paho parsed first
                    await self._send.send(self._backlog[0])
                    self._backlog.popleft()
                if conn.lost.is_set() or sock.fileno() < 0:
                    # Lost while we were parked (paho's keepalive check closes the
                    # socket): a send that completed returns before the pending
                    # cancellation, and waiting on fd -1 would raise ValueError.
                    break
                await trio.lowlevel.wait_readable(sock)
                # paho reads one packet a call when nothing of ours is in
                # flight; read on while packets keep coming (each one we care
                # about fires a callback), up to a bound, before waiting again.
                for _ in range(_READ_BATCH):
                    seen = conn.packets
                    conn.check(client.loop_read(), "reading")
                    if conn.packets == seen or conn.lost.is_set() or self._backlog:
                        break
                # Bytes TLS already decrypted do not make the socket readable again.
                while tls and not conn.lost.is_set() and not self._backlog and tls.pending():
                    conn.check(client.loop_read(), "reading")
        except (trio.ClosedResourceError, OSError, ValueError) as exc:  # ValueError: fd -1
            conn.mark_lost(f"reading: {exc!r}")

    async def _write_loop(self, conn: _Connection) -> None:
        client, sock = conn.client, conn.sock
        try:
            while not conn.lost.is_set():
                await conn.wake_writer.wait()
                conn.wake_writer = trio.Event()
                while client.want_write() and not conn.lost.is_set() and sock.fileno() >= 0:
                    await trio.lowlevel.wait_writable(sock)
                    conn.check(client.loop_write(), "writing")
                conn.drained.unpark_all()
        except (trio.ClosedResourceError, OSError, ValueError) as exc:  # ValueError: fd -1
            conn.mark_lost(f"writing: {exc!r}")

    async def _misc_loop(self, conn: _Connection) -> None:
        while not conn.lost.is_set():
            await trio.sleep(1.0)
            rc = conn.client.loop_misc()  # keepalive: PINGREQ, or give up on a silent broker
            conn.check(rc, "keepalive")

    def _deliver(self, message: Message) -> None:
        self._messages_in += 1
        self._bytes_in += len(message.payload)
        if self._backlog:
            self._backlog.append(message)  # keep the order behind what already waits
            return
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock:
            if self.settings.overflow is Overflow.BACKPRESSURE:
                self._backlog.append(message)
            else:
                self._dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._dropped += 1

    # --- the API --------------------------------------------------------------

    async def wait_connected(self) -> None:
        """Return once connected with every subscription in place."""
        await self._events.wait_connected()

    async def wait_disconnected(self) -> None:
        """Return once the current connection has ended (at once when not connected)."""
        await self._events.wait_disconnected()

    def _require_connection(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.lost.is_set() or self._state is not TransportState.CONNECTED:
            raise NotConnectedError(f"{self.client_id}: not connected to the broker")
        return conn

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> None:
        """Publish; for QoS 1 return only after the broker's PUBACK.

        Raises :class:`NotConnectedError` when not connected,
        :class:`ConnectionLostError` when the connection drops before the
        PUBACK (delivery unknown), :class:`PublishRefusedError` for an MQTT 5
        failure reason code, :class:`InvalidTopicError`,
        :class:`PayloadTooLargeError`, ``ValueError`` for a QoS other than 0/1.
        """
        validate_topic(topic)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        payload = bytes(payload)
        if len(payload) > self.settings.max_payload:
            raise PayloadTooLargeError(len(payload), self.settings.max_payload)
        if qos == 0:
            await trio.lowlevel.checkpoint()
            conn = self._require_connection()
            self._paho_publish(conn, topic, payload, 0, retain)
            # Backpressure for QoS 0: wait while the socket is congested.
            while conn.client.want_write() and not conn.lost.is_set():
                await conn.drained.park()
            if conn.lost.is_set():
                raise ConnectionLostError(f"{self.client_id}: connection lost while sending")
        else:
            pending = _PendingPublish()  # also the limiter's borrower: one token each
            await self._inflight.acquire_on_behalf_of(pending)
            try:
                conn = self._require_connection()
                mid = self._paho_publish(conn, topic, payload, 1, retain)
                conn.publishes[mid] = pending
                try:
                    await pending.done.wait()
                finally:
                    conn.publishes.pop(mid, None)
            finally:
                self._inflight.release_on_behalf_of(pending)
                if pending.error is not None:
                    if isinstance(pending.error, PublishRefusedError):
                        e = pending.error
                        raise PublishRefusedError(topic, e.reason_code, e.reason)
                    raise pending.error
        self._messages_out += 1
        self._bytes_out += len(payload)

    def _paho_publish(
        self, conn: _Connection, topic: str, payload: bytes, qos: int, retain: bool
    ) -> int:
        if conn.max_packet is not None:
            # fixed header (5) + topic (2 + n) + packet id (2) + properties length (1)
            overhead = 10 + len(topic.encode())
            if overhead + len(payload) > conn.max_packet:
                raise PayloadTooLargeError(len(payload), max(conn.max_packet - overhead, 0))
        info = conn.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnectedError(f"{self.client_id}: not connected to the broker")
        if info.rc == MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE:
            raise PayloadTooLargeError(len(payload), self.settings.max_payload)
        conn.check(info.rc, "publishing")
        if conn.lost.is_set():
            raise ConnectionLostError(f"{self.client_id}: connection lost while sending")
        return int(info.mid)

    async def subscribe(self, topic_filter: str, *, qos: int = 1) -> None:
        """Add a subscription, kept across reconnects (see :class:`Transport`)."""
        validate_filter(topic_filter)
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, not {qos!r}")
        self._wanted[topic_filter] = qos
        conn = self._conn
        if conn is None or self._state is not TransportState.CONNECTED:
            await trio.lowlevel.checkpoint()
            return  # made by _establish on the next connection
        codes = await self._send_subscribe(conn, {topic_filter: qos})
        if codes is None:
            return  # connection lost: made on the next one
        if codes and codes[0].is_failure:
            self._wanted.pop(topic_filter, None)
            raise SubscriptionRefusedError(topic_filter, *_reason(codes[0]))
        self._session[topic_filter] = qos

    async def unsubscribe(self, topic_filter: str) -> None:
        """Remove a subscription (a no-op for one never made)."""
        validate_filter(topic_filter)
        self._wanted.pop(topic_filter, None)
        conn = self._conn
        if conn is None or self._state is not TransportState.CONNECTED:
            await trio.lowlevel.checkpoint()
            return
        if topic_filter not in self._session:
            await trio.lowlevel.checkpoint()
            return
        if await self._send_unsubscribe(conn, [topic_filter]) is not None:
            self._session.pop(topic_filter, None)

    async def _send_subscribe(
        self, conn: _Connection, filters: dict[str, int]
    ) -> list[ReasonCode] | None:
        if conn.version == MQTTProtocolVersion.MQTTv5:
            rc, mid = conn.client.subscribe(
                [(f, SubscribeOptions(qos=q)) for f, q in filters.items()]
            )
        else:
            rc, mid = conn.client.subscribe(list(filters.items()))
        return await self._wait_ack(conn, rc, mid, "subscribing")

    async def _send_unsubscribe(
        self, conn: _Connection, filters: list[str]
    ) -> list[ReasonCode] | None:
        rc, mid = conn.client.unsubscribe(filters)
        return await self._wait_ack(conn, rc, mid, "unsubscribing")

    async def _wait_ack(
        self, conn: _Connection, rc: MQTTErrorCode, mid: int | None, what: str
    ) -> list[ReasonCode] | None:
        conn.check(rc, what)
        if conn.lost.is_set() or mid is None:
            await trio.lowlevel.checkpoint()
            return None
        pending = conn.acks[mid] = _PendingAck()
        try:
            await pending.done.wait()
        finally:
            conn.acks.pop(mid, None)
        return pending.codes

    def abort(self) -> None:
        """Close the network connection without DISCONNECT, as a crash would.

        The broker then publishes the last will; ``run()`` reconnects as after
        any lost connection. A no-op when not connected.
        """
        conn = self._conn
        if conn is not None:
            conn.lost_reason = "aborted"
            conn.close_socket()


async def _open_socket(
    host: str, port: int, tls: ssl.SSLContext | None, server_hostname: str | None
) -> socket.socket:
    """Resolve (in a thread), connect without blocking, then the TLS handshake."""
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise _ConnectFailed(f"cannot resolve {host!r}: {exc}") from None
    errors: list[str] = []
    for family, type_, proto, _, address in infos:
        sock = socket.socket(family, type_, proto)
        try:
            err = await _connect_nonblocking(sock, address)
        except BaseException:
            sock.close()
            raise
        if err:
            sock.close()
            errors.append(f"{address[0]!s}:{address[1]!s}: {errno.errorcode.get(err, str(err))}")
            continue
        if tls is None:
            return sock
        return await _tls_handshake(sock, tls, server_hostname or host)
    raise _ConnectFailed(f"cannot connect to {host}:{port}: {'; '.join(errors) or 'no address'}")


async def _connect_nonblocking(sock: socket.socket, address: Any) -> int:
    """Connect; return 0 or the errno. The socket becoming writable ends the wait."""
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(address)
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            await trio.lowlevel.wait_writable(sock)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    except OSError as exc:
        return exc.errno or errno.EIO
    return err


async def _tls_handshake(sock: socket.socket, tls: ssl.SSLContext, hostname: str) -> socket.socket:
    try:
        tls_sock = tls.wrap_socket(sock, server_hostname=hostname, do_handshake_on_connect=False)
    except (ssl.SSLError, ValueError) as exc:
        sock.close()
        raise _ConnectFailed(f"TLS setup failed: {exc}") from None
    try:
        while True:
            try:
                tls_sock.do_handshake()
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(tls_sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(tls_sock)
            else:
                return tls_sock
    except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
        tls_sock.close()
        raise _ConnectFailed(f"TLS handshake with {hostname} failed: {exc}") from None
    except BaseException:
        tls_sock.close()
        raise
