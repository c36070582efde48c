"""Discovery's pure core (TXT codec, peer table, broker choice) and the in-memory fake."""

from __future__ import annotations

import contextlib
import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.sync import (
    Advertisement,
    BrokerCandidate,
    DiscoveryError,
    DiscoveryTiming,
    MemoryDiscovery,
    MemoryDiscoveryNetwork,
    NameClaim,
    Peer,
    PeerEvent,
    PeerEventKind,
    PeerTable,
    RunStamp,
    SyncError,
    TxtRecordError,
    choose_broker,
    decode_txt,
    encode_txt,
    resolve_name_claim,
)
from vsm_edge.sync._discovery import MAX_TXT_BYTES, RECOMMENDED_TXT_BYTES, broker_url
from vsm_edge.sync._name_claim import MAX_STARTED_MS

KEY = bytes(range(16))
RUN = RunStamp(1_796_000_000_123, bytes.fromhex("00ff10203040a0b0"))


def adv(node: str = "n1", mesh: str = "m", **kw: object) -> Advertisement:
    fields: dict[str, object] = {"key_id": KEY, "zone": "z1", **kw}
    return Advertisement(node=node, mesh=mesh, **fields)  # type: ignore[arg-type]


def peer(
    node: str = "n1", mesh: str = "m", addresses: tuple[str, ...] = ("10.0.0.1",), **kw: object
) -> Peer:
    a = adv(node, mesh, **kw)
    return Peer(a, addresses, 0, a.service_name)


def txt(*items: bytes) -> bytes:
    return b"".join(bytes([len(i)]) + i for i in items)


# -- TXT record ---------------------------------------------------------------------


def test_txt_round_trip_and_exact_bytes() -> None:
    a = adv(broker="mqtt://10.0.0.5:1883")
    raw = encode_txt(a)
    assert raw == txt(
        b"v=1", b"n=n1", b"k=AAECAwQFBgcICQoLDA0ODw", b"m=m", b"z=z1", b"b=mqtt://10.0.0.5:1883"
    )
    assert decode_txt(raw) == a
    assert a.instance == "n1@m"
    assert a.service_name == "n1@m._vsm-edge._tcp.local."


def test_run_stamp_round_trip_and_exact_bytes() -> None:
    a = adv(broker="mqtt://10.0.0.5:1883", run=RUN)
    raw = encode_txt(a)
    assert raw == txt(
        b"v=1",
        b"n=n1",
        b"k=AAECAwQFBgcICQoLDA0ODw",
        b"m=m",
        b"z=z1",
        b"b=mqtt://10.0.0.5:1883",
        b"t=1796000000123",
        b"r=00ff10203040a0b0",
    )
    assert decode_txt(raw) == a
    assert decode_txt(raw).run == RUN
    # a record without the stamp (a node that predates it) still decodes
    assert decode_txt(encode_txt(adv())).run is None
    # upper-case hex, leading zeros and the largest time are accepted
    base = [b"v=1", b"n=n1", b"k=AAEC", b"m=m", b"z=z1"]
    assert decode_txt(txt(*base, b"R=00FF10203040A0B0", b"t=001796000000123")).run == RUN
    largest = txt(*base, b"t=" + str(MAX_STARTED_MS).encode(), b"r=" + b"0" * 16)
    assert decode_txt(largest).run == RunStamp(MAX_STARTED_MS, bytes(8))


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([b"t=1"], "come together"),
        ([b"r=00ff10203040a0b0"], "come together"),
        ([b"t", b"r=00ff10203040a0b0"], "missing or has no value"),
        ([b"t=1", b"r"], "missing or has no value"),
        ([b"t=-1", b"r=00ff10203040a0b0"], "start time"),
        ([b"t=1.5", b"r=00ff10203040a0b0"], "start time"),
        ([b"t=" + b"9" * 16, b"r=00ff10203040a0b0"], "start time"),
        ([b"t=" + str(MAX_STARTED_MS + 1).encode(), b"r=00ff10203040a0b0"], "0..281474976710655"),
        ([b"t=1", b"r=00ff10203040a0"], "16 hex digits"),  # 7 bytes
        ([b"t=1", b"r=00ff10203040a0b0c0"], "16 hex digits"),  # 9 bytes
        ([b"t=1", b"r=00ff10203040a0bg"], "16 hex digits"),
        ([b"t=1", b"r=+0ff10203040a0b0"], "16 hex digits"),
        ([b"t=1", b"r=00ff\xc3\xa9203040a0b"], "not ASCII"),
    ],
)
def test_decode_rejects_bad_run_stamps(items: list[bytes], message: str) -> None:
    base = [b"v=1", b"n=n1", b"k=AAEC", b"m=m", b"z=z1"]
    with pytest.raises(TxtRecordError, match=message):
        decode_txt(txt(*base, *items))


@pytest.mark.parametrize(
    ("started_ms", "nonce"),
    [
        (-1, bytes(8)),
        (MAX_STARTED_MS + 1, bytes(8)),
        (True, bytes(8)),
        (1.0, bytes(8)),
        (1, bytes(7)),
        (1, bytes(9)),
        (1, "00" * 8),
    ],
)
def test_run_stamp_is_validated(started_ms: object, nonce: object) -> None:
    with pytest.raises(TxtRecordError):
        RunStamp(started_ms, nonce)  # type: ignore[arg-type]


def test_name_claim_tie_break() -> None:
    old = RunStamp(1_000, bytes.fromhex("ffffffffffffffff"))
    new = RunStamp(2_000, bytes(8))
    same_time_small = RunStamp(2_000, bytes.fromhex("00000000000000ff"))
    same_time_large = RunStamp(2_000, bytes.fromhex("0100000000000000"))
    assert resolve_name_claim(new, new) is NameClaim.OURS
    # the older start time wins, whatever the nonces
    assert resolve_name_claim(new, old) is NameClaim.YIELD
    assert resolve_name_claim(old, new) is NameClaim.KEEP
    # equal start times: the smaller nonce (unsigned, big-endian) wins
    assert resolve_name_claim(same_time_large, same_time_small) is NameClaim.YIELD
    assert resolve_name_claim(same_time_small, same_time_large) is NameClaim.KEEP
    # a claim without a stamp comes from a node that will not yield: we do
    assert resolve_name_claim(old, None) is NameClaim.YIELD


@settings(max_examples=200)
@given(
    st.integers(0, MAX_STARTED_MS),
    st.binary(min_size=8, max_size=8),
    st.integers(0, MAX_STARTED_MS),
    st.binary(min_size=8, max_size=8),
)
def test_exactly_one_side_of_a_name_conflict_yields(t1: int, n1: bytes, t2: int, n2: bytes) -> None:
    a, b = RunStamp(t1, n1), RunStamp(t2, n2)
    verdicts = {resolve_name_claim(a, b), resolve_name_claim(b, a)}
    if a == b:
        assert verdicts == {NameClaim.OURS}
    else:
        assert verdicts == {NameClaim.KEEP, NameClaim.YIELD}
        older = a if (t1, n1) < (t2, n2) else b
        assert resolve_name_claim(older, b if older is a else a) is NameClaim.KEEP


def test_typical_txt_record_fits_the_recommended_200_bytes() -> None:
    a = Advertisement(
        node="sensor-kitchen-0042",
        key_id=bytes(32),  # a full Ed25519-sized key id
        mesh="plant-7",
        zone="building-a",
        broker="mqtts://192.168.100.200:8883",
        run=RunStamp(MAX_STARTED_MS, bytes(8)),
    )
    assert len(encode_txt(a)) <= RECOMMENDED_TXT_BYTES


def test_oversized_advertisements_are_refused() -> None:
    # the largest legal fields together pass MAX_TXT_BYTES
    with pytest.raises(TxtRecordError):
        Advertisement(
            node="n" * 30,
            key_id=bytes(64),
            mesh="m" * 32,
            zone="z" * 64,
            broker="mqtt://" + "h" * 193,
        )
    with pytest.raises(TxtRecordError, match="broker"):
        adv(broker="mqtt://" + "h" * 200)
    with pytest.raises(TxtRecordError, match="DNS label"):
        adv(node="n" * 40, mesh="m" * 30)
    with pytest.raises(TxtRecordError, match="key id"):
        adv(key_id=bytes(65))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("node", ""),
        ("node", "has space"),
        ("node", "dot.ted"),
        ("mesh", "x" * 65),
        ("zone", "ünï"),
        ("broker", "http://x"),
        ("broker", "mqtt://a b"),
        ("version", 0),
        ("version", True),
        ("key_id", b""),
    ],
)
def test_invalid_fields_raise_txt_record_error(field: str, value: object) -> None:
    with pytest.raises(TxtRecordError):
        adv(**{field: value})


def test_decode_follows_rfc_6763_rules() -> None:
    base = [b"v=1", b"n=n1", b"k=AAEC", b"m=m", b"z=z1"]
    # unknown keys ignored, empty strings allowed, keys case-insensitive
    assert decode_txt(txt(b"", b"X-future=1", *[i.upper()[:1] + i[1:] for i in base])).node == "n1"
    # a repeated key: only the first counts
    assert decode_txt(txt(*base, b"n=other")).node == "n1"
    assert decode_txt(txt(b"n=first", *base)).node == "first"
    assert decode_txt(txt(*base)).broker is None


@pytest.mark.parametrize(
    "raw",
    [
        txt(b"v=1", b"n=n1", b"k=AAEC", b"m=m"),  # zone missing
        txt(b"v=1", b"n", b"k=AAEC", b"m=m", b"z=z"),  # boolean attribute for n
        txt(b"v=x", b"n=n1", b"k=AAEC", b"m=m", b"z=z"),
        txt(b"v=1", b"n=n1", b"k=!!", b"m=m", b"z=z"),
        txt(b"v=1", b"n=n1", b"k=A", b"m=m", b"z=z"),  # 1 char is not base64
        txt(b"v=1", b"n=n\xff", b"k=AAEC", b"m=m", b"z=z"),
        txt(b"=1", b"v=1"),
        b"\x05v=1",  # truncated
        b"\x01" * (MAX_TXT_BYTES + 1),
    ],
)
def test_decode_rejects_bad_records(raw: bytes) -> None:
    with pytest.raises(TxtRecordError):
        decode_txt(raw)


@settings(max_examples=300)
@given(st.binary(max_size=MAX_TXT_BYTES + 20))
def test_any_bytes_decode_or_raise_txt_record_error(data: bytes) -> None:
    with contextlib.suppress(TxtRecordError):  # anything else fails the test
        decode_txt(data)


@settings(max_examples=200)
@given(st.data())
def test_truncated_and_bit_flipped_records(data: st.DataObject) -> None:
    raw = encode_txt(adv(broker="mqtt://10.1.2.3:1883", run=RUN))
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.integers(0, len(raw) * 8 - 1), max_size=4))
    mutated = bytearray(raw[:cut] if data.draw(st.booleans()) else raw)
    for bit in flips:
        if bit // 8 < len(mutated):
            mutated[bit // 8] ^= 1 << (bit % 8)
    with contextlib.suppress(TxtRecordError):  # anything else fails the test
        decode_txt(bytes(mutated))


def test_discovery_errors_are_sync_errors() -> None:
    assert issubclass(TxtRecordError, DiscoveryError)
    assert issubclass(DiscoveryError, SyncError)


# -- peer table ---------------------------------------------------------------------

TIMING = DiscoveryTiming(refresh_interval=10, gone_after=25, rescan_interval=60, forget_after=100)


def drain(table: PeerTable) -> list[tuple[str, str]]:
    out = []
    while (event := table.next_event()) is not None:
        out.append((event.kind.value, event.peer.node))
    return out


def test_table_appear_update_gone_reappear() -> None:
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a"), 0)
    t.heard(peer("b"), 0)
    assert drain(t) == [("appeared", "a"), ("appeared", "b")]
    t.heard(peer("a"), 5)  # same record: a refresh, no event
    assert drain(t) == []
    t.heard(peer("a", zone="z2"), 6)
    assert drain(t) == [("updated", "a")]
    assert t.seen("b@m._vsm-edge._tcp.local.", 20)  # b refreshed by a bare record
    assert t.tick(31).gone == ()  # a last heard at 6: 25 s is not yet more than gone_after
    assert t.tick(32).gone == ("a",)
    assert drain(t) == [("gone", "a")]
    assert set(t.peers()) == {"b"}
    assert not t.seen("a@m._vsm-edge._tcp.local.", 33)  # gone: must be resolved again
    t.heard(peer("a"), 33)
    assert drain(t) == [("appeared", "a")]


def test_table_live_peer_by_instance() -> None:
    t = PeerTable(adv("me"), TIMING)
    assert t.live_peer("a@m._vsm-edge._tcp.local.") is None
    t.heard(peer("a"), 0)
    live = t.live_peer("a@m._vsm-edge._tcp.local.")
    assert live is not None
    assert live.node == "a"
    t.goodbye("a@m._vsm-edge._tcp.local.", 1)
    assert t.live_peer("a@m._vsm-edge._tcp.local.") is None


def test_table_ignores_self_and_foreign_meshes_and_bounds_peers() -> None:
    t = PeerTable(adv("me"), DiscoveryTiming(max_peers=2))
    t.heard(peer("me"), 0)
    t.heard(peer("x", mesh="other"), 0)
    t.heard(peer("a"), 0)
    t.heard(peer("b"), 0)
    t.heard(peer("c"), 0)
    assert drain(t) == [("appeared", "a"), ("appeared", "b")]
    stats = t.statistics()
    assert (stats.foreign_mesh, stats.overflow, stats.live) == (1, 1, 2)


def test_goodbye_reports_gone_at_once() -> None:
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a"), 0)
    drain(t)
    t.goodbye("a@m._vsm-edge._tcp.local.", 1)
    t.goodbye("a@m._vsm-edge._tcp.local.", 1)  # twice: once
    t.goodbye("unknown._vsm-edge._tcp.local.", 1)
    assert drain(t) == [("gone", "a")]
    assert t.statistics().goodbyes == 1


def test_records_of_a_run_that_said_goodbye_are_late_and_ignored() -> None:
    # A node's answer queued before its goodbye and sent after it carries the
    # same run stamp: it must not bring the peer back. A restart (new stamp) does.
    old_run, new_run = RUN, RunStamp(RUN.started_ms + 5_000, bytes(8))
    instance = "a@m._vsm-edge._tcp.local."
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a", run=old_run), 0)
    assert drain(t) == [("appeared", "a")]
    t.goodbye(instance, 1)
    t.heard(peer("a", run=old_run), 2)  # late
    assert "a" not in t.peers()
    assert not t.seen(instance, 2)
    assert drain(t) == [("gone", "a")]
    t.heard(peer("a", run=new_run), 3)  # the restart
    t.heard(peer("a", run=old_run), 4)  # late, and older than what we have
    assert t.peers()["a"].advertisement.run == new_run
    assert drain(t) == [("appeared", "a")]
    stats = t.statistics()
    assert (stats.goodbyes, stats.stale, stats.heard) == (1, 2, 2)


def test_a_goodbye_after_expiry_also_ends_the_run_and_expiry_alone_does_not() -> None:
    instance = "a@m._vsm-edge._tcp.local."
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a", run=RUN), 0)
    assert drain(t) == [("appeared", "a")]
    t.tick(TIMING.gone_after + 1)  # silent: gone, but the run may be alive (a partition)
    assert drain(t) == [("gone", "a")]
    t.heard(peer("a", run=RUN), 30)
    assert drain(t) == [("appeared", "a")]
    t.tick(60)
    assert drain(t) == [("gone", "a")]
    t.goodbye(instance, 61)  # already gone: no second event, not counted
    t.heard(peer("a", run=RUN), 62)
    assert "a" not in t.peers()
    assert drain(t) == []
    assert (t.statistics().goodbyes, t.statistics().stale) == (0, 1)


def test_a_peer_without_run_stamp_is_heard_again_after_its_goodbye() -> None:
    # it cannot be told apart from its successor (nodes that predate the stamp)
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a"), 0)
    t.goodbye("a@m._vsm-edge._tcp.local.", 1)
    t.heard(peer("a"), 2)
    assert "a" in t.peers()
    assert t.statistics().stale == 0


def test_events_are_coalesced_for_a_slow_consumer() -> None:
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a"), 0)
    t.goodbye("a@m._vsm-edge._tcp.local.", 1)  # appeared and went before anyone looked
    t.heard(peer("b"), 0)
    assert drain(t) == [("appeared", "b")]
    t.heard(peer("b", zone="z2"), 2)
    t.heard(peer("b", zone="z3"), 3)
    event = t.next_event()
    assert event is not None
    assert event.kind is PeerEventKind.UPDATED
    assert event.peer.advertisement.zone == "z3"
    assert t.next_event() is None


def test_gone_event_carries_last_known_state() -> None:
    t = PeerTable(adv("me"), TIMING)
    t.heard(peer("a", zone="z9"), 0)
    drain(t)
    t.tick(26)
    event = t.next_event()
    assert event == PeerEvent(PeerEventKind.GONE, peer("a", zone="z9"))


def test_query_decisions() -> None:
    t = PeerTable(adv("me"), TIMING)
    assert t.tick(0).query  # first tick: a start-up query
    assert not t.tick(10).query  # alone, rescan not due
    assert t.tick(60).query  # rescan_interval
    t.heard(peer("a"), 61)
    assert not t.tick(65).query  # a heard 4 s ago: fresh
    assert t.tick(71).query  # a heard 10 s ago: stale, ask
    t.heard(peer("a"), 72)
    assert not t.tick(75).query  # someone's query refreshed it: skip ours
    t.tick(100)  # a is gone now
    assert t.tick(110).query  # gone peers keep us querying (that finds healed partitions)
    assert t.tick(200).query
    t.tick(201)  # forgotten after forget_after
    assert t.statistics().gone == 0
    assert not t.tick(210).query
    stats = t.statistics()
    assert (stats.queries, stats.skipped_queries) == (6, 5)


def test_timing_is_validated() -> None:
    with pytest.raises(ValueError, match="gone_after"):
        DiscoveryTiming(refresh_interval=10, gone_after=11)
    with pytest.raises(ValueError, match="rescan"):
        DiscoveryTiming(refresh_interval=10, gone_after=30, rescan_interval=5)


# -- brokers ------------------------------------------------------------------------------


def test_choose_broker_prefers_our_mesh_then_priority_weight_name() -> None:
    plain = BrokerCandidate("b1", ("10.0.0.9",), 1883)
    ours = BrokerCandidate("b2", ("10.0.0.8",), 1883, priority=5, mesh="m")
    other = BrokerCandidate("b3", ("10.0.0.7",), 1883, mesh="other")
    heavy = BrokerCandidate("b0", ("10.0.0.6",), 1884, priority=5, weight=10, mesh="m")
    assert choose_broker([plain, other], "m") == plain
    assert choose_broker([plain, ours, other], "m") == ours
    assert choose_broker([plain, ours, heavy], "m") == heavy
    assert choose_broker([other], "m") is None
    assert choose_broker([BrokerCandidate("x", (), 1883)], "m") is None


def test_broker_url() -> None:
    assert broker_url(["fe80::1", "10.0.0.1"], 1883) == "mqtt://10.0.0.1:1883"
    assert broker_url(["fe80::1"], 8883, "mqtts") == "mqtts://[fe80::1]:8883"
    with pytest.raises(DiscoveryError):
        broker_url(["0.0.0.0"], 1883)
    with pytest.raises(DiscoveryError):
        broker_url(["10.0.0.1"], 0)


# -- the in-memory fake, on virtual time ----------------------------------------------------

FAST = DiscoveryTiming(
    refresh_interval=1.0, gone_after=3.0, rescan_interval=10.0, forget_after=60.0
)


async def collect(d: MemoryDiscovery, into: list[tuple[str, str]]) -> None:
    async for event in d.events:
        into.append((event.kind.value, event.peer.node))


async def test_memory_discovery_finds_loses_and_refinds_peers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryDiscoveryNetwork()
    nodes = [
        MemoryDiscovery(net, adv(f"n{i}"), timing=FAST, rng=random.Random(i)) for i in range(3)
    ]
    seen: dict[str, list[tuple[str, str]]] = {f"n{i}": [] for i in range(3)}
    async with trio.open_nursery() as nursery:
        for d in nodes:
            await nursery.start(d.run)
            nursery.start_soon(collect, d, seen[d.advertisement.node])
        await trio.sleep(0.5)
        for d in nodes:
            assert set(d.peers()) == {f"n{i}" for i in range(3)} - {d.advertisement.node}
        net.cut("n2")
        t_cut = trio.current_time()
        while "n2" in nodes[0].peers():
            await trio.sleep(0.1)
        waited = trio.current_time() - t_cut
        # n2 was last heard at most one jittered interval before the cut, and the
        # silence is noticed at the first tick after gone_after
        jittered = FAST.refresh_interval * 1.2
        assert FAST.gone_after - jittered <= waited <= FAST.gone_after + jittered + 0.2
        assert not nodes[2].peers()  # the cut node lost everyone too
        net.heal("n2")
        while len(nodes[2].peers()) < 2 or "n2" not in nodes[1].peers():
            await trio.sleep(0.1)
        assert trio.current_time() - t_cut - waited < 2 * FAST.refresh_interval * 1.2 + 0.5
        nursery.cancel_scope.cancel()
    both = [("appeared", "n1"), ("appeared", "n2")]
    assert sorted(seen["n0"][:2]) == both
    assert seen["n0"][2:] == [("gone", "n2"), ("appeared", "n2")]
    assert sorted(seen["n2"][:2]) == [("appeared", "n0"), ("appeared", "n1")]
    assert sorted(seen["n2"][2:4]) == [("gone", "n0"), ("gone", "n1")]
    assert sorted(seen["n2"][4:]) == [("appeared", "n0"), ("appeared", "n1")]


async def test_memory_discovery_goodbye_on_exit_and_broker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryDiscoveryNetwork()
    a = MemoryDiscovery(net, adv("a"), timing=FAST)
    b = MemoryDiscovery(net, adv("b"), timing=FAST)
    with pytest.raises(DiscoveryError, match="not running"):
        await a.find_broker()
    async with trio.open_nursery() as outer:
        await outer.start(a.run)
        async with trio.open_nursery() as inner:
            await inner.start(b.run)
            assert set(a.peers()) == {"b"}
            inner.cancel_scope.cancel()
        assert a.peers() == {}  # goodbye: gone at once, not after gone_after
        assert a.statistics().goodbyes == 1

        async def advertise_later() -> None:
            await trio.sleep(2)
            net.advertise_broker(BrokerCandidate("other", ("10.0.0.2",), 1883, mesh="x"))
            net.advertise_broker(BrokerCandidate("ours", ("10.0.0.1",), 1883, mesh="m"))

        outer.start_soon(advertise_later)
        with trio.fail_after(5):
            assert await a.find_broker() == "mqtt://10.0.0.1:1883"
        assert trio.current_time() == pytest.approx(2, abs=0.01)
        outer.cancel_scope.cancel()
    with pytest.raises(RuntimeError, match="once"):
        await a.run()


async def test_events_channel_is_bounded_and_closes_with_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryDiscoveryNetwork()
    watcher = MemoryDiscovery(net, adv("w"), timing=FAST, event_buffer=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(watcher.run)
        others = [MemoryDiscovery(net, adv(f"o{i}"), timing=FAST) for i in range(5)]
        for o in others:
            await nursery.start(o.run)
        await trio.sleep(0.1)
        assert len(watcher.peers()) == 5  # the table keeps up; events wait for the consumer
        got = [await watcher.events.receive() for _ in range(5)]
        assert {e.peer.node for e in got} == {f"o{i}" for i in range(5)}
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.EndOfChannel):
        await watcher.events.receive()
