"""The session state machines, driven directly with explicit times (no I/O)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.bridge import messages

from vsm_edge.bridge import (
    NEED_DATA,
    Channel,
    Command,
    CommandCompleted,
    CommandFailed,
    CommandReceived,
    CommandRejected,
    CommandTimeout,
    Connection,
    DeviceConfig,
    DeviceConnected,
    DeviceLost,
    DeviceSession,
    HandshakeFailed,
    HostConfig,
    HostSession,
    Nack,
    NackReason,
    NotConnectedError,
    QueueFullError,
    Reading,
    ReadingReceived,
    Role,
    SessionEstablished,
    SessionLost,
    SessionState,
    encode_frame,
)

SENSORS = (Channel(1, "temp", "°C", -40, 125), Channel(2, "rh", "%", 0, 100))
ACTUATORS = (Channel(10, "fan", "%", 0, 100),)


def device(**kw: object) -> DeviceSession:
    cfg = DeviceConfig("dev-1", "1.0", SENSORS, ACTUATORS, **kw)  # type: ignore[arg-type]
    return DeviceSession(cfg)


def events(session: HostSession | DeviceSession) -> list[object]:
    out = []
    while (ev := session.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def pump(a: HostSession | DeviceSession, b: HostSession | DeviceSession, now: float) -> None:
    """Deliver everything each side has to send, until both are quiet."""
    for _ in range(10):
        x, y = a.data_to_send(), b.data_to_send()
        if not x and not y:
            return
        if x:
            b.receive_data(x, now)
        if y:
            a.receive_data(y, now)


def connected(**host_kw: object) -> tuple[HostSession, DeviceSession]:
    host = HostSession(HostConfig(**host_kw))  # type: ignore[arg-type]
    dev = device()
    dev.start(0.0)
    pump(host, dev, 0.0)
    assert isinstance(events(host)[0], DeviceConnected)
    assert isinstance(events(dev)[0], SessionEstablished)
    return host, dev


def test_handshake_negotiates_version_and_max_frame() -> None:
    host = HostSession(HostConfig(versions=(1, 2, 3), max_frame=512, heartbeat_ms=500))
    dev = DeviceSession(DeviceConfig("d", "f", SENSORS, ACTUATORS, versions=(1, 2), max_frame=64))
    dev.start(0.0)
    pump(host, dev, 0.0)
    (ev,) = events(host)
    assert isinstance(ev, DeviceConnected)
    assert ev.info.version == 2
    assert ev.info.max_frame == 64
    assert host.state is dev.state is SessionState.CONNECTED
    (est,) = events(dev)
    assert isinstance(est, SessionEstablished)
    assert (est.ack.version, est.ack.max_frame, est.ack.heartbeat_ms) == (2, 64, 500)
    assert dev.heartbeat == 0.5


def test_no_common_version_is_refused_clearly() -> None:
    host = HostSession(HostConfig(versions=(1,)))
    dev = DeviceSession(DeviceConfig("d", "f", versions=(7, 8)))
    dev.start(0.0)
    pump(host, dev, 0.0)
    (ev,) = events(host)
    assert isinstance(ev, HandshakeFailed)
    assert "[7, 8]" in str(ev.error)
    assert host.state is SessionState.HANDSHAKE
    (dev_ev,) = events(dev)
    assert isinstance(dev_ev, HandshakeFailed)
    assert dev.state is SessionState.HANDSHAKE
    # the device keeps offering its hello, once per hello_interval
    assert dev.next_deadline() == pytest.approx(0.5)


def test_device_retries_hello_until_answered() -> None:
    dev = device(hello_interval=0.5)
    dev.start(0.0)
    assert dev.data_to_send()  # delimiter + hello
    dev.handle_timer(0.4)
    assert dev.data_to_send() == b""
    dev.handle_timer(0.5)
    assert dev.data_to_send()  # hello again
    assert dev.statistics().frames_sent == 2


def test_message_outside_a_session_gets_no_session_and_device_says_hello() -> None:
    host, dev = connected()
    # the host restarts: a new session object knows nothing
    host = HostSession()
    dev.send_reading(1, 20)
    host.receive_data(dev.data_to_send(), 1.0)
    assert events(host) == []
    dev.receive_data(host.data_to_send(), 1.0)
    assert isinstance(events(dev)[0], SessionLost)
    assert dev.state is SessionState.HANDSHAKE
    pump(host, dev, 1.0)
    assert isinstance(events(host)[0], DeviceConnected)


def test_readings_flow_and_unknown_channels_are_refused() -> None:
    host, dev = connected()
    dev.set_time(0.2)
    dev.send_reading(1, 21.5)
    dev.send_reading(99, 1)
    host.receive_data(dev.data_to_send(), 0.2)
    (ev,) = events(host)
    assert isinstance(ev, ReadingReceived)
    assert ev.reading.value == 21.5
    assert ev.reading.time_ms == 200
    assert ev.channel.name == "temp"
    assert host.statistics().readings_rejected == 1
    assert host.statistics().nacks_sent == 1


def test_command_acked() -> None:
    host, dev = connected()
    token = host.submit_command("fan", 40, 0.1)
    dev.receive_data(host.data_to_send(), 0.1)
    (ev,) = events(dev)
    assert isinstance(ev, CommandReceived)
    assert ev.command.value == 40
    dev.respond(ev.command)
    host.receive_data(dev.data_to_send(), 0.1)
    assert events(host) == [CommandCompleted(token)]


def test_lost_ack_is_retransmitted_and_carried_out_once() -> None:
    host, dev = connected(command_timeout=0.25)
    token = host.submit_command(10, 70, 1.0)
    assert host.next_deadline() == 1.25
    dev.receive_data(host.data_to_send(), 1.0)
    (ev,) = events(dev)
    dev.respond(ev.command)  # type: ignore[attr-defined]
    dev.data_to_send()  # the ACK is lost on the line
    host.handle_timer(1.2499)
    assert host.data_to_send() == b""
    host.handle_timer(1.25)
    again = host.data_to_send()
    dev.receive_data(again, 1.25)
    assert events(dev) == []  # a duplicate: answered again, not carried out again
    assert dev.statistics().duplicates == 1
    host.receive_data(dev.data_to_send(), 1.25)
    assert events(host) == [CommandCompleted(token)]
    assert host.statistics().retransmissions == 1


def test_damaged_command_is_nacked_and_retransmitted_at_once() -> None:
    host, dev = connected()
    token = host.submit_command("fan", 5, 2.0)
    frame = bytearray(host.data_to_send())
    frame[3] ^= 0x10  # a bit error on the line
    dev.receive_data(bytes(frame), 2.0)
    assert dev.statistics().frames_rejected == {"crc": 1}
    nack = dev.data_to_send()
    host.receive_data(nack, 2.001)
    assert host.statistics().nacks_received == 1
    dev.receive_data(host.data_to_send(), 2.001)  # retransmitted before any timeout
    (ev,) = events(dev)
    dev.respond(ev.command)  # type: ignore[attr-defined]
    host.receive_data(dev.data_to_send(), 2.002)
    assert events(host) == [CommandCompleted(token)]


def test_command_times_out_after_the_configured_attempts() -> None:
    host, _dev = connected(command_timeout=0.25, command_attempts=4, heartbeat_ms=10_000)
    token = host.submit_command("fan", 1, 0.0)
    t = 0.0
    sent = 0
    while (deadline := host.next_deadline()) is not None and deadline < 10:
        t = deadline
        sent += bool(host.data_to_send())
        host.handle_timer(t)
        evs = events(host)
        if evs:
            break
    assert t == 1.0
    assert sent == 4
    (ev,) = evs
    assert isinstance(ev, CommandFailed)
    assert ev.token == token
    assert isinstance(ev.error, CommandTimeout)
    assert ev.error.attempts == 4


def test_device_refusal_reaches_the_caller() -> None:
    host, dev = connected()
    token = host.submit_command("fan", 1, 0.0)
    dev.receive_data(host.data_to_send(), 0.0)
    (ev,) = events(dev)
    dev.respond(ev.command, NackReason.FAILED, "motor stalled")  # type: ignore[attr-defined]
    host.receive_data(dev.data_to_send(), 0.0)
    (done,) = events(host)
    assert isinstance(done, CommandFailed)
    assert isinstance(done.error, CommandRejected)
    assert (done.error.reason, done.error.detail) == ("failed", "motor stalled")
    assert done.token == token


def test_device_checks_range_itself() -> None:
    _, dev = connected()
    conn = Connection(Role.HOST)
    dev.receive_data(conn.send(Command(500, 10, 1000)), 0.0)
    assert events(dev) == []
    back = Connection(Role.HOST)
    back.receive_data(dev.data_to_send())
    nack = back.next_event()
    assert isinstance(nack, Nack)
    assert (nack.reason, nack.ref) == (NackReason.OUT_OF_RANGE, 500)


def test_local_command_checks() -> None:
    host = HostSession(HostConfig(max_pending_commands=2))
    with pytest.raises(NotConnectedError):
        host.submit_command("fan", 1, 0.0)
    host, _ = connected(max_pending_commands=2)
    with pytest.raises(CommandRejected, match="unknown_channel"):
        host.submit_command("pump", 1, 0.0)
    with pytest.raises(CommandRejected, match="out_of_range"):
        host.submit_command("fan", 101, 0.0)
    with pytest.raises(CommandRejected, match="unknown_channel"):
        host.submit_command("temp", 1, 0.0)  # a sensor is not an actuator
    host.submit_command("fan", 1, 0.0)
    host.submit_command("fan", 2, 0.0)
    with pytest.raises(QueueFullError):
        host.submit_command("fan", 3, 0.0)


def test_link_timeout_fails_pending_commands_and_both_ends_start_over() -> None:
    host, dev = connected(heartbeat_ms=1000, link_timeout_beats=3, command_attempts=100)
    token = host.submit_command("fan", 1, 0.0)
    queued = host.submit_command("fan", 2, 0.0)
    host.data_to_send()
    # nothing more arrives from the device
    seen: list[object] = []
    t = 0.0
    while not any(isinstance(e, DeviceLost) for e in seen):
        deadline = host.next_deadline()
        assert deadline is not None
        t = deadline
        host.handle_timer(t)
        host.data_to_send()
        seen += events(host)
    assert t == 3.0
    failed = [e for e in seen if isinstance(e, CommandFailed)]
    assert [e.token for e in failed] == [token, queued]
    assert all(isinstance(e.error, NotConnectedError) for e in failed)
    assert host.state is SessionState.HANDSHAKE
    assert host.statistics().links_lost == 1
    with pytest.raises(NotConnectedError):
        host.submit_command("fan", 1, t)
    dev.handle_timer(3.0)
    assert isinstance(events(dev)[0], SessionLost)
    pump(host, dev, 3.0)
    assert isinstance(events(host)[0], DeviceConnected)


def test_idle_sides_send_heartbeats() -> None:
    host, dev = connected(heartbeat_ms=1000)
    assert host.next_deadline() == 1.0
    host.handle_timer(1.0)
    beat = host.data_to_send()
    assert beat
    dev.receive_data(beat, 1.0)
    dev.handle_timer(1.0)
    host.receive_data(dev.data_to_send(), 1.0)
    assert host.statistics().frames_received == 2  # the hello and the device's heartbeat
    assert host.state is SessionState.CONNECTED


def test_noise_burst_gets_one_nack_per_interval() -> None:
    host, _ = connected(nack_interval=0.1)
    for i in range(20):
        host.receive_data(bytes([0x07, 0x55, 0x00]), 1.0 + i * 0.001)
    assert host.statistics().frames_rejected == {"cobs": 20}
    assert host.statistics().nacks_sent == 1
    host.receive_data(bytes([0x07, 0x55, 0x00]), 1.2)
    assert host.statistics().nacks_sent == 2


def test_sequence_gaps_are_counted_as_lost_frames() -> None:
    host, _ = connected()
    conn = Connection(Role.DEVICE)
    for seq in (5, 6, 9, 9, 7, 10):  # 7 and 8 lost; a repeated 9; a late 7
        host.receive_data(conn.send(Reading(seq, 1, 0)), 0.0)
    # after the hello (seq 0): 1-4 lost, then 7-8 lost
    assert host.statistics().frames_lost == 6


def test_device_refuses_an_ack_above_its_max_frame() -> None:
    dev = DeviceSession(DeviceConfig("d", "f", max_frame=64))
    dev.start(0.0)
    dev.data_to_send()
    from vsm_edge.bridge import HelloAck

    dev.receive_data(encode_frame(HelloAck(0, 1, 256, 1000)), 0.0)
    assert dev.state is SessionState.HANDSHAKE
    assert events(dev) == []


def test_lost_hello_ack_is_repaired_by_the_first_command() -> None:
    host = HostSession()
    dev = device()
    dev.start(0.0)
    host.receive_data(dev.data_to_send(), 0.0)
    assert isinstance(events(host)[0], DeviceConnected)
    host.data_to_send()  # the HELLO_ACK is lost: the host is connected, the device is not
    token = host.submit_command("fan", 3, 0.01)
    dev.receive_data(host.data_to_send(), 0.01)
    assert dev.state is SessionState.HANDSHAKE
    # the device answers NACK(no_session) and its hello at once; the host acks the
    # hello and sends the command again
    pump(host, dev, 0.02)
    assert dev.state is SessionState.CONNECTED
    evs = events(dev)
    assert isinstance(evs[0], SessionEstablished)
    assert isinstance(evs[1], CommandReceived)
    dev.respond(evs[1].command)  # type: ignore[attr-defined]
    pump(host, dev, 0.03)
    assert CommandCompleted(token) in events(host)


# -- fuzz: whatever arrives, and whenever, the sessions never raise -------------------

_inputs = st.lists(
    st.one_of(
        messages.map(lambda m: encode_frame(m, 4096)),
        st.binary(max_size=40),
        st.just(b"\x00"),
    ),
    max_size=25,
)


@given(_inputs, st.lists(st.floats(0, 5), min_size=25, max_size=25))
@settings(max_examples=200)
def test_fuzz_sessions_never_raise(chunks: list[bytes], steps: list[float]) -> None:
    host, dev = connected()
    t = 0.0
    for chunk, step in zip(chunks, steps, strict=False):
        t += step
        for side in (host, dev):
            side.receive_data(chunk, t)
            events(side)
            side.handle_timer(t)
            events(side)
            side.data_to_send()
        if host.state is SessionState.CONNECTED and host.device and host.device.actuators:
            with contextlib.suppress(QueueFullError, CommandRejected):
                host.submit_command(host.device.actuators[0].id, 1, t)
    pump(host, dev, t + 10)
