"""Session state machines for both ends of the link (sans-I/O, time passed in).

Theory of operation. The device opens a session by sending HELLO (retried every
``hello_interval`` until answered); the host picks the highest protocol version
both offer, the smaller of the two ``max_frame`` values, and the heartbeat
period, and answers HELLO_ACK. A host that hears anything but HELLO outside a
session answers NACK(no_session), which sends the device back to HELLO.

Commands are stop-and-wait: one in flight, the rest queued (bounded). The
host retransmits the in-flight command, byte for byte with the same ``seq``,
after ``command_timeout`` or at once on NACK(crc) without ``ref`` (the device
saw a damaged frame), up to ``command_attempts`` transmissions; then the
command fails with :class:`CommandTimeout`. The device remembers the ``seq`` of
the last command and its answer, so a retransmission is answered again but
carried out once (exactly once while the device stays up; at least once
across a device reboot, since the host retransmits after the new HELLO).

Both ends send HEARTBEAT when they have sent nothing for one period, and
consider the link lost after ``link_timeout_beats`` periods without a valid
frame. Damaged or invalid frames are counted and answered with a NACK, at most
one per ``nack_interval`` so that a burst of line noise cannot cause a storm.

State table (host)::

    AWAIT_HELLO --HELLO, version in common--> CONNECTED   (send HELLO_ACK)
    AWAIT_HELLO --HELLO, no common version--> AWAIT_HELLO (send NACK unsupported_version)
    AWAIT_HELLO --any other message---------> AWAIT_HELLO (send NACK no_session)
    CONNECTED   --HELLO (device rebooted)---> CONNECTED   (send HELLO_ACK, resend command)
    CONNECTED   --link timeout / lost-------> AWAIT_HELLO (fail queued commands)

Why one module: the host and device machines are two ends of one
handshake; each rule is read next to its counterpart.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from ._connection import NEED_DATA, Connection, FrameRejected, NeedData, Role
from ._errors import (
    CommandError,
    CommandRejected,
    CommandTimeout,
    FrameError,
    MessageError,
    NotConnectedError,
    ProtocolError,
    QueueFullError,
)
from ._framing import DEFAULT_MAX_FRAME
from ._messages import (
    MAX_DETAIL,
    PROTOCOL_VERSION,
    Ack,
    Channel,
    Command,
    Error,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    MessageType,
    Nack,
    NackReason,
    Reading,
    Value,
    validate,
)

__all__ = [
    "CommandCompleted",
    "CommandFailed",
    "CommandReceived",
    "DeviceConfig",
    "DeviceConnected",
    "DeviceErrorReported",
    "DeviceInfo",
    "DeviceLost",
    "DeviceSession",
    "HandshakeFailed",
    "HostConfig",
    "HostSession",
    "ReadingReceived",
    "SessionEstablished",
    "SessionLost",
    "SessionState",
    "SessionStatistics",
]

_SEQ_MASK = 0xFFFF


class SessionState(Enum):
    HANDSHAKE = "handshake"  # host: waiting for HELLO; device: waiting for HELLO_ACK
    CONNECTED = "connected"


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What the host knows of the connected device after the handshake."""

    device_id: str
    firmware: str
    version: int
    max_frame: int
    heartbeat_ms: int
    sensors: tuple[Channel, ...]
    actuators: tuple[Channel, ...]

    def sensor(self, key: int | str) -> Channel | None:
        """The sensor with this id or name, or None."""
        return _find(self.sensors, key)

    def actuator(self, key: int | str) -> Channel | None:
        """The actuator with this id or name, or None."""
        return _find(self.actuators, key)


def _find(channels: tuple[Channel, ...], key: int | str) -> Channel | None:
    for ch in channels:
        if ch.id == key if isinstance(key, int) else ch.name == key:
            return ch
    return None


# -- host events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceConnected:
    info: DeviceInfo


@dataclass(frozen=True, slots=True)
class ReadingReceived:
    reading: Reading
    channel: Channel


@dataclass(frozen=True, slots=True)
class CommandCompleted:
    token: int


@dataclass(frozen=True, slots=True)
class CommandFailed:
    token: int
    error: CommandError


@dataclass(frozen=True, slots=True)
class DeviceErrorReported:
    error: Error


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    error: ProtocolError


@dataclass(frozen=True, slots=True)
class DeviceLost:
    reason: str


HostEvent = (
    DeviceConnected
    | ReadingReceived
    | CommandCompleted
    | CommandFailed
    | DeviceErrorReported
    | HandshakeFailed
    | DeviceLost
)


@dataclass(frozen=True, slots=True)
class HostConfig:
    """Host-side parameters (seconds for durations)."""

    versions: tuple[int, ...] = (PROTOCOL_VERSION,)
    max_frame: int = 1024  # what the host accepts; at least the default 256
    heartbeat_ms: int = 1000
    command_timeout: float = 0.25
    command_attempts: int = 5
    link_timeout_beats: int = 3
    nack_interval: float = 0.1
    max_pending_commands: int = 32

    def __post_init__(self) -> None:
        if self.max_frame < DEFAULT_MAX_FRAME:
            raise ValueError("the host must accept frames of at least 256 bytes")
        if self.command_attempts < 1 or self.max_pending_commands < 1:
            raise ValueError("command_attempts and max_pending_commands must be positive")
        validate(HelloAck(0, max(self.versions), self.max_frame, self.heartbeat_ms))


@dataclass(slots=True)
class SessionStatistics:
    """Counters of one session object (cumulative across reconnections)."""

    state: str = SessionState.HANDSHAKE.value
    handshakes: int = 0
    links_lost: int = 0
    frames_received: int = 0
    frames_rejected: dict[str, int] = field(default_factory=dict)
    frames_lost: int = 0  # gaps in the peer's sequence numbers
    frames_sent: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    nacks_sent: int = 0
    nacks_received: int = 0
    readings: int = 0
    readings_rejected: int = 0
    commands_completed: int = 0
    commands_failed: int = 0
    retransmissions: int = 0
    duplicates: int = 0  # stale ACKs on the host, repeated commands on the device


@dataclass(slots=True)
class _InFlight:
    token: int
    frame: bytes
    seq: int
    attempts: int
    deadline: float


class _Base:
    """What both ends share: sequence numbers, output buffer, NACK rate limit, counters."""

    def __init__(self, conn: Connection, nack_interval: float) -> None:
        self._conn = conn
        self._nack_interval = nack_interval
        self._seq = 0
        self._out: list[tuple[MessageType, bytes]] = []
        self._now = 0.0
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._last_nack = float("-inf")
        self._rx_seq: int | None = None
        self._stats = SessionStatistics()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq = (seq + 1) & _SEQ_MASK
        return seq

    def _emit(self, kind: MessageType, frame: bytes) -> None:
        self._out.append((kind, frame))
        self._last_tx = self._now

    def _send(self, build: Callable[[int], Message]) -> bytes:
        msg = build(self._next_seq())
        frame = self._conn.send(msg)
        self._emit(_kind(msg), frame)
        return frame

    def _nack(self, reason: NackReason, ref: int | None = None, detail: str | None = None) -> bool:
        """Queue a NACK unless one went out less than nack_interval ago; True if queued."""
        if self._now - self._last_nack < self._nack_interval:
            return False
        self._last_nack = self._now
        if detail is not None:
            detail = detail.encode()[:MAX_DETAIL].decode(errors="ignore")
        try:
            self._send(lambda seq: Nack(seq, reason, ref, detail))
        except MessageError:  # the detail does not fit the peer's max_frame
            self._send(lambda seq: Nack(seq, reason, ref))
        self._stats.nacks_sent += 1
        return True

    def _nack_rejected(self, ev: FrameRejected) -> None:
        err = ev.error
        if isinstance(err, FrameError):
            reason = NackReason.TOO_LARGE if err.reason == "long" else NackReason.CRC
            self._nack(reason)
        else:
            self._nack(NackReason.MALFORMED, detail=str(err))

    def _track_seq(self, seq: int) -> None:
        # Count gaps going forward; a repeated or older seq (a retransmission) is
        # not a loss and does not move the mark.
        if self._rx_seq is not None:
            gap = (seq - self._rx_seq - 1) & _SEQ_MASK
            if gap >= 0x8000:
                return
            self._stats.frames_lost += gap
        self._rx_seq = seq

    def data_to_send(self) -> bytes:
        """Bytes to write to the line now (possibly empty)."""
        data = b"".join(frame for _, frame in self._out)
        self._out.clear()
        return data

    def frames_to_send(self) -> list[tuple[MessageType, bytes]]:
        """Like :meth:`data_to_send`, frame by frame with the message type (for fault injection)."""
        out = self._out
        self._out = []
        return out

    def statistics(self) -> SessionStatistics:
        s = self._stats
        c = self._conn.stats
        return SessionStatistics(
            state=s.state,
            handshakes=s.handshakes,
            links_lost=s.links_lost,
            frames_received=c.frames_received,
            frames_rejected=dict(c.frames_rejected),
            frames_lost=s.frames_lost,
            frames_sent=c.frames_sent,
            bytes_received=c.bytes_received,
            bytes_sent=c.bytes_sent,
            nacks_sent=s.nacks_sent,
            nacks_received=s.nacks_received,
            readings=s.readings,
            readings_rejected=s.readings_rejected,
            commands_completed=s.commands_completed,
            commands_failed=s.commands_failed,
            retransmissions=s.retransmissions,
            duplicates=s.duplicates,
        )


def _kind(msg: Message) -> MessageType:
    return {
        Hello: MessageType.HELLO,
        HelloAck: MessageType.HELLO_ACK,
        Reading: MessageType.READING,
        Command: MessageType.COMMAND,
        Ack: MessageType.ACK,
        Nack: MessageType.NACK,
        Heartbeat: MessageType.HEARTBEAT,
        Error: MessageType.ERROR,
    }[type(msg)]


class HostSession(_Base):
    """The host end: ``receive_data(data, now)``, ``next_event()``, ``data_to_send()``,
    ``submit_command(...)``, and ``handle_timer(now)`` at ``next_deadline()``."""

    def __init__(self, config: HostConfig | None = None) -> None:
        self.config = cfg = config or HostConfig()
        super().__init__(Connection(Role.HOST, max_frame=cfg.max_frame), cfg.nack_interval)
        self.state = SessionState.HANDSHAKE
        self.device: DeviceInfo | None = None
        self._events: deque[HostEvent] = deque()
        self._pending: deque[tuple[int, int, Value]] = deque()
        self._inflight: _InFlight | None = None
        self._token = 0

    # -- input -------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes read from the line at time ``now``; then drain :meth:`next_event`."""
        self._now = now
        self._conn.receive_data(data)
        while True:
            ev = self._conn.next_event()
            if isinstance(ev, NeedData):
                return
            if isinstance(ev, FrameRejected):
                self._nack_rejected(ev)
            else:
                self._on_message(ev)

    def next_event(self) -> HostEvent | NeedData:
        """The next session event, or NEED_DATA."""
        return self._events.popleft() if self._events else NEED_DATA

    def _on_message(self, msg: Message) -> None:
        self._last_rx = self._now
        if type(msg) is Hello:
            self._rx_seq = msg.seq
            self._on_hello(msg)
            return
        self._track_seq(msg.seq)
        if self.state is not SessionState.CONNECTED:
            if type(msg) is not Nack:
                self._nack(NackReason.NO_SESSION, ref=msg.seq)
            return
        device = self.device
        assert device is not None
        if type(msg) is Reading:
            ch = device.sensor(msg.channel)
            if ch is None:
                self._stats.readings_rejected += 1
                self._nack(NackReason.UNKNOWN_CHANNEL, ref=msg.seq)
            else:
                self._stats.readings += 1
                self._events.append(ReadingReceived(msg, ch))
        elif type(msg) is Ack:
            fl = self._inflight
            if fl is not None and msg.ref == fl.seq:
                self._finish(CommandCompleted(fl.token))
            else:
                self._stats.duplicates += 1
        elif type(msg) is Nack:
            self._on_nack(msg)
        elif type(msg) is Error:
            self._events.append(DeviceErrorReported(msg))

    def _on_hello(self, hello: Hello) -> None:
        common = set(hello.versions) & set(self.config.versions)
        if not common:
            self._nack(
                NackReason.UNSUPPORTED_VERSION,
                ref=hello.seq,
                detail=f"host speaks {sorted(self.config.versions)}",
            )
            err = ProtocolError(
                f"device {hello.device_id} offers protocol versions {list(hello.versions)}, "
                f"host speaks {list(self.config.versions)}"
            )
            self._lose("device offered no common protocol version")
            self._events.append(HandshakeFailed(err))
            return
        max_frame = min(hello.max_frame, self.config.max_frame)
        version = max(common)
        self._conn.peer_max_frame = max_frame
        self._send(lambda seq: HelloAck(seq, version, max_frame, self.config.heartbeat_ms))
        self.state = SessionState.CONNECTED
        self._stats.state = self.state.value
        self._stats.handshakes += 1
        self.device = DeviceInfo(
            hello.device_id,
            hello.firmware,
            version,
            max_frame,
            self.config.heartbeat_ms,
            hello.sensors,
            hello.actuators,
        )
        self._events.append(DeviceConnected(self.device))
        if self._inflight is not None:
            # The device may have rebooted and lost the command: send it again now.
            self._retransmit()
        else:
            self._start_next()

    def _on_nack(self, nack: Nack) -> None:
        self._stats.nacks_received += 1
        fl = self._inflight
        if nack.ref is None:
            if fl is not None:
                self._retransmit()
        elif fl is not None and nack.ref == fl.seq:
            if nack.reason is NackReason.NO_SESSION:
                return  # the device will say HELLO; the command goes again after it
            self._finish(
                CommandFailed(fl.token, CommandRejected(nack.reason.name.lower(), nack.detail))
            )
        else:
            self._stats.duplicates += 1

    # -- commands --------------------------------------------------------------------

    def submit_command(self, channel: int | str, value: Value, now: float) -> int:
        """Queue a command for the actuator ``channel`` (id or name); returns its token.

        The outcome arrives later as CommandCompleted or CommandFailed with that
        token. Raises NotConnectedError, CommandRejected (unknown actuator, value
        outside its declared range), QueueFullError, or MessageError (a value that
        is not a finite int or float).
        """
        self._now = now
        if self.state is not SessionState.CONNECTED or self.device is None:
            raise NotConnectedError("no device session")
        ch = self.device.actuator(channel)
        if ch is None:
            raise CommandRejected("unknown_channel", f"device has no actuator {channel!r}")
        validate(Command(0, ch.id, value))
        if not ch.accepts(value):
            raise CommandRejected(
                "out_of_range", f"{value!r} outside [{ch.minimum}, {ch.maximum}] for {ch.name}"
            )
        if len(self._pending) + (self._inflight is not None) >= self.config.max_pending_commands:
            raise QueueFullError(f"{self.config.max_pending_commands} commands already pending")
        self._token += 1
        self._pending.append((self._token, ch.id, value))
        if self._inflight is None:
            self._start_next()
        return self._token

    def _start_next(self) -> None:
        if (
            self._inflight is not None
            or not self._pending
            or self.state is not SessionState.CONNECTED
        ):
            return
        token, channel, value = self._pending.popleft()
        seq = self._next_seq()
        frame = self._conn.send(Command(seq, channel, value))
        self._emit(MessageType.COMMAND, frame)
        self._inflight = _InFlight(token, frame, seq, 1, self._now + self.config.command_timeout)

    def _retransmit(self) -> None:
        fl = self._inflight
        assert fl is not None
        if fl.attempts >= self.config.command_attempts:
            self._finish(CommandFailed(fl.token, CommandTimeout(fl.attempts)))
            return
        fl.attempts += 1
        fl.deadline = self._now + self.config.command_timeout
        self._stats.retransmissions += 1
        self._conn.stats.frames_sent += 1
        self._conn.stats.bytes_sent += len(fl.frame)
        self._emit(MessageType.COMMAND, fl.frame)

    def _finish(self, event: CommandCompleted | CommandFailed) -> None:
        self._inflight = None
        if isinstance(event, CommandCompleted):
            self._stats.commands_completed += 1
        else:
            self._stats.commands_failed += 1
        self._events.append(event)
        self._start_next()

    # -- time and link ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` must next run, or None."""
        times = []
        if self._inflight is not None:
            times.append(self._inflight.deadline)
        if self.state is SessionState.CONNECTED:
            beat = self.config.heartbeat_ms / 1000
            times.append(self._last_tx + beat)
            times.append(self._last_rx + beat * self.config.link_timeout_beats)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Run the timers due at ``now``: retransmission, heartbeat, link timeout."""
        self._now = now
        if self._inflight is not None and now >= self._inflight.deadline:
            self._retransmit()
        if self.state is SessionState.CONNECTED:
            beat = self.config.heartbeat_ms / 1000
            if now - self._last_rx >= beat * self.config.link_timeout_beats:
                self._lose(f"no valid frame from the device for {now - self._last_rx:.3f} s")
            elif now - self._last_tx >= beat:
                self._send(lambda seq: Heartbeat(seq))

    def connection_lost(self, reason: str, now: float) -> None:
        """The serial link broke (unplugged, closed): fail the commands, await a new HELLO."""
        self._now = now
        self._lose(reason)
        conn = Connection(Role.HOST, max_frame=self.config.max_frame)
        conn.stats = self._conn.stats  # counters survive the new connection
        self._conn = conn
        self._rx_seq = None
        self._out.clear()

    def _lose(self, reason: str) -> None:
        was = self.state is SessionState.CONNECTED
        self.state = SessionState.HANDSHAKE
        self._stats.state = self.state.value
        self.device = None
        self._conn.peer_max_frame = DEFAULT_MAX_FRAME
        failed = []
        if self._inflight is not None:
            failed.append(self._inflight.token)
            self._inflight = None
        failed.extend(token for token, _, _ in self._pending)
        self._pending.clear()
        for token in failed:
            self._stats.commands_failed += 1
            self._events.append(CommandFailed(token, NotConnectedError(f"link lost: {reason}")))
        if was:
            self._stats.links_lost += 1
            self._events.append(DeviceLost(reason))


# -- device -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionEstablished:
    ack: HelloAck


@dataclass(frozen=True, slots=True)
class CommandReceived:
    command: Command


@dataclass(frozen=True, slots=True)
class SessionLost:
    reason: str


DeviceEvent = SessionEstablished | CommandReceived | SessionLost | HandshakeFailed


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Device-side parameters: the hello's content and the timers (seconds)."""

    device_id: str
    firmware: str
    sensors: tuple[Channel, ...] = ()
    actuators: tuple[Channel, ...] = ()
    versions: tuple[int, ...] = (PROTOCOL_VERSION,)
    max_frame: int = DEFAULT_MAX_FRAME
    hello_interval: float = 0.5
    link_timeout_beats: int = 3
    nack_interval: float = 0.05

    def __post_init__(self) -> None:
        validate(self.hello(0))

    def hello(self, seq: int) -> Hello:
        return Hello(
            seq,
            self.versions,
            self.device_id,
            self.firmware,
            self.max_frame,
            self.sensors,
            self.actuators,
        )


class DeviceSession(_Base):
    """The device end, as firmware implements it (the simulator runs this).

    Call :meth:`start` once, then ``receive_data``/``next_event``,
    ``handle_timer`` at ``next_deadline``, and answer every CommandReceived
    with :meth:`respond`.
    """

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config
        super().__init__(Connection(Role.DEVICE, max_frame=config.max_frame), config.nack_interval)
        self.state = SessionState.HANDSHAKE
        self.heartbeat = 1.0
        self._events: deque[DeviceEvent] = deque()
        self._last_hello = float("-inf")
        self._last_cmd: int | None = None
        self._last_answer: tuple[MessageType, bytes] | None = None
        self._boot = 0.0

    def start(self, now: float) -> None:
        """Begin (or begin again after a reset): a flushing delimiter, then HELLO."""
        self._now = self._boot = now
        self._emit(MessageType.HEARTBEAT, b"\x00")  # empty frame: resynchronises the host
        self._restart_handshake()

    def uptime_ms(self) -> int:
        return int((self._now - self._boot) * 1000) & 0xFFFF_FFFF

    def _restart_handshake(self) -> None:
        self.state = SessionState.HANDSHAKE
        self._stats.state = self.state.value
        self._conn.peer_max_frame = DEFAULT_MAX_FRAME
        self._send_hello()

    def _send_hello(self) -> None:
        self._last_hello = self._now
        self._send(self.config.hello)

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        self._now = now
        self._conn.receive_data(data)
        while True:
            ev = self._conn.next_event()
            if isinstance(ev, NeedData):
                return
            if isinstance(ev, FrameRejected):
                self._nack_rejected(ev)
            else:
                self._on_message(ev)

    def next_event(self) -> DeviceEvent | NeedData:
        return self._events.popleft() if self._events else NEED_DATA

    def _on_message(self, msg: Message) -> None:
        self._last_rx = self._now
        self._track_seq(msg.seq)
        if type(msg) is HelloAck:
            if msg.version not in self.config.versions or msg.max_frame > self.config.max_frame:
                self._nack(NackReason.UNSUPPORTED_VERSION, ref=msg.seq)
                return
            self._conn.peer_max_frame = msg.max_frame
            self.heartbeat = msg.heartbeat_ms / 1000
            if self.state is not SessionState.CONNECTED:
                self.state = SessionState.CONNECTED
                self._stats.state = self.state.value
                self._stats.handshakes += 1
                self._last_cmd = None
                self._last_answer = None
                self._events.append(SessionEstablished(msg))
        elif type(msg) is Command:
            self._on_command(msg)
        elif type(msg) is Nack:
            self._stats.nacks_received += 1
            if msg.reason is NackReason.NO_SESSION:
                if self.state is SessionState.CONNECTED:
                    self._stats.links_lost += 1
                    self._events.append(SessionLost("host has no session"))
                self._restart_handshake()
            elif msg.reason is NackReason.UNSUPPORTED_VERSION:
                self._events.append(
                    HandshakeFailed(ProtocolError(msg.detail or "unsupported version"))
                )
            elif msg.ref is None and self.state is SessionState.HANDSHAKE:
                self._send_hello()

    def _on_command(self, cmd: Command) -> None:
        if self.state is not SessionState.CONNECTED:
            # The host believes in a session we do not have (its HELLO_ACK was
            # lost): say so, and offer the hello again at once.
            if self._nack(NackReason.NO_SESSION, ref=cmd.seq):
                self._send_hello()
            return
        if cmd.seq == self._last_cmd:
            self._stats.duplicates += 1
            if self._last_answer is not None:  # answer again, do not act again
                self._emit(*self._last_answer)
            return
        self._last_cmd = cmd.seq
        self._last_answer = None
        ch = _find(self.config.actuators, cmd.channel)
        if ch is None:
            self.respond(cmd, NackReason.UNKNOWN_CHANNEL)
        elif not ch.accepts(cmd.value):
            self.respond(cmd, NackReason.OUT_OF_RANGE)
        else:
            self._events.append(CommandReceived(cmd))

    def respond(
        self, cmd: Command, reason: NackReason | None = None, detail: str | None = None
    ) -> None:
        """Answer ``cmd``: ACK when ``reason`` is None, else NACK with that reason."""
        if reason is None:
            kind, frame = MessageType.ACK, self._send(lambda seq: Ack(seq, cmd.seq))
        else:
            kind, frame = (
                MessageType.NACK,
                self._send(lambda seq: Nack(seq, reason, cmd.seq, detail)),
            )
        if cmd.seq == self._last_cmd:
            self._last_answer = (kind, frame)

    def send_reading(self, channel: int, value: Value, *, stamp: bool = True) -> bool:
        """Queue a reading; False (and nothing sent) outside a session."""
        if self.state is not SessionState.CONNECTED:
            return False
        t = self.uptime_ms() if stamp else None
        self._send(lambda seq: Reading(seq, channel, value, t))
        return True

    def send_error(self, code: int, channel: int | None = None, detail: str | None = None) -> bool:
        """Queue an ERROR report; False outside a session."""
        if self.state is not SessionState.CONNECTED:
            return False
        self._send(lambda seq: Error(seq, code, channel, detail))
        return True

    def set_time(self, now: float) -> None:
        """Advance the session's notion of the time (before send_reading)."""
        self._now = now

    def next_deadline(self) -> float | None:
        if self.state is SessionState.HANDSHAKE:
            return self._last_hello + self.config.hello_interval
        return min(
            self._last_tx + self.heartbeat,
            self._last_rx + self.heartbeat * self.config.link_timeout_beats,
        )

    def handle_timer(self, now: float) -> None:
        self._now = now
        if self.state is SessionState.HANDSHAKE:
            if now - self._last_hello >= self.config.hello_interval:
                self._send_hello()
        elif now - self._last_rx >= self.heartbeat * self.config.link_timeout_beats:
            self._stats.links_lost += 1
            self._events.append(SessionLost("no valid frame from the host"))
            self._restart_handshake()
        elif now - self._last_tx >= self.heartbeat:
            self._send(lambda seq: Heartbeat(seq, self.uptime_ms()))
