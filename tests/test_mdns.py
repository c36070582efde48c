"""ZeroconfDiscovery with real python-zeroconf sockets, on 127.0.0.1 only.

Several nodes run in one Trio process, each with its own Zeroconf bound to the
loopback address (multicast looped back by the kernel; nothing is sent on the
host's external interfaces). Every test uses its own mesh id, so parallel runs
and other tests on this host do not see each other's peers.
"""

from __future__ import annotations

import os
import secrets
import threading
import time

import pytest
import trio
from zeroconf import IPVersion, RecordUpdate, RecordUpdateListener, ServiceInfo, Zeroconf
from zeroconf._protocol.outgoing import DNSOutgoing
from zeroconf._utils.time import current_time_millis

from vsm_edge.sync import (
    Advertisement,
    DiscoveryError,
    DiscoveryTiming,
    PeerEventKind,
    RunStamp,
    TxtRecordError,
    ZeroconfDiscovery,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LO = ["127.0.0.1"]
TIMING = DiscoveryTiming(refresh_interval=1.0, gone_after=3.5, rescan_interval=5.0)


def mesh_id() -> str:
    return f"t{os.getpid()}{secrets.token_hex(3)}"


def node(name: str, mesh: str, *, run: RunStamp | None = None, **kw: object) -> ZeroconfDiscovery:
    adv = Advertisement(
        node=name, key_id=name.encode() * 4, mesh=mesh, zone=f"zone-{name}", run=run
    )
    return ZeroconfDiscovery(adv, interfaces=LO, timing=TIMING, **kw)  # type: ignore[arg-type]


async def wait_for(predicate: object, seconds: float) -> None:
    assert callable(predicate)
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.05)


async def test_nodes_on_loopback_discover_each_other_and_a_broker() -> None:
    mesh = mesh_id()
    a = node("a", mesh, broker_port=1883, port=8080)
    b = node("b", mesh)
    c = node("c", mesh)
    loop_thread = threading.get_ident()
    events: list[tuple[str, str]] = []

    async def watch() -> None:
        async for event in a.events:
            events.append((event.kind.value, event.peer.node))

    async with trio.open_nursery() as outer:
        outer.start_soon(watch)
        async with trio.open_nursery() as nursery:
            for d in (a, b):
                nursery.start_soon(d.run)
            c_scope = trio.CancelScope()

            async def run_c() -> None:
                with c_scope:
                    await c.run()

            nursery.start_soon(run_c)
            await wait_for(lambda: all(len(d.peers()) == 2 for d in (a, b, c)), 20)
            assert threading.get_ident() == loop_thread

            seen_by_b = b.peers()["a"]
            assert seen_by_b.advertisement == a.advertisement  # every TXT field
            assert seen_by_b.addresses == ("127.0.0.1",)
            assert seen_by_b.port == 8080
            assert c.peers()["b"].advertisement.zone == "zone-b"

            with trio.fail_after(10):
                assert await b.find_broker() == "mqtt://127.0.0.1:1883"

            c_scope.cancel()  # c leaves: its goodbye reaches a and b at once
            await wait_for(lambda: "c" not in a.peers() and "c" not in b.peers(), 3.0)
            assert a.statistics().goodbyes == 1
            nursery.cancel_scope.cancel()
    assert sorted(events[:2]) == [("appeared", "b"), ("appeared", "c")]
    assert events[2] == ("gone", "c")
    # a and b stop together: whether a saw b's goodbye first is a race, so only
    # check that nothing but b's departure can follow
    assert set(events[3:]) <= {(PeerEventKind.GONE.value, "b")}


def records_of(info: ServiceInfo) -> DNSOutgoing:
    """An answer with every record of ``info`` (TTL as registered)."""
    out = DNSOutgoing(0x8400, True)  # a response, authoritative
    for record in (info.dns_pointer(), info.dns_service(), info.dns_text(), *info.dns_addresses()):
        out.add_answer_at_time(record, 0)
    return out


async def open_listener(record_listener: RecordUpdateListener | None = None) -> Zeroconf:
    """A bare Zeroconf on 127.0.0.1: sends hand-made packets, caches what it hears."""
    zc = await trio.to_thread.run_sync(lambda: Zeroconf(interfaces=LO, ip_version=IPVersion.V4Only))
    if record_listener is not None:
        zc.add_listener(record_listener, None)
    return zc


async def test_a_late_answer_of_a_departed_run_does_not_bring_it_back() -> None:
    # The answer a node queued before its goodbye and sent after it (and the
    # receivers drop the repeated goodbyes as duplicates): the same run stamp,
    # so it is late news. A new run of the node is heard at once.
    mesh = mesh_id()
    a, c = node("a", mesh), node("c", mesh)
    sender = await open_listener()
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(a.run)
            async with trio.open_nursery() as c_nursery:
                await c_nursery.start(c.run)
                await wait_for(lambda: "c" in a.peers(), 20)
                late = records_of(c._service_info())
                c_nursery.cancel_scope.cancel()
            await wait_for(lambda: "c" not in a.peers(), 3.0)
            sender.send(late)
            await wait_for(lambda: a.statistics().stale >= 1, 5)  # it arrived, and was ignored
            assert "c" not in a.peers()
            c_again = node("c", mesh)
            nursery.start_soon(c_again.run)
            await wait_for(lambda: "c" in a.peers(), 20)
            assert a.peers()["c"].advertisement == c_again.advertisement
            assert a.statistics().goodbyes == 1
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(sender.close)


class RecordLog(RecordUpdateListener):
    """Notes (expired?) for every record under one instance name (zeroconf's loop)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name.lower()
        self.notes: list[bool] = []

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if self.name in (record.name.lower(), getattr(record, "alias", "").lower()):
                self.notes.append(record.is_expired(now))


async def test_leaving_sends_no_queued_answer_after_the_goodbye() -> None:
    # An answer zeroconf queued (multicast answers wait 20-120 ms, or a second)
    # and due right after the goodbye is dropped, not sent.
    mesh = mesh_id()
    c = node("c", mesh)
    log = RecordLog(c.advertisement.service_name)
    listener = await open_listener(log)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(c.run)
            await wait_for(lambda: bool(log.notes), 5)  # it caches c's announcement
            zc, info = c._zc, c._service_info()
            assert zc is not None
            assert zc.loop is not None
            answer = {info.dns_pointer(): {info.dns_service(), info.dns_text()}}
            due = current_time_millis() + 100  # sent 120-220 ms from now
            zc.loop.call_soon_threadsafe(zc.out_queue.async_add, due, answer)
            leaving = time.monotonic()
            nursery.cancel_scope.cancel()
        assert time.monotonic() - leaving > 0.25  # the three goodbyes went out
        await trio.sleep(0.3)
        goodbye = log.notes.index(True)
        assert not any(not expired for expired in log.notes[goodbye:]), log.notes
    finally:
        await trio.to_thread.run_sync(listener.close)


async def test_same_node_in_same_mesh_is_a_name_conflict() -> None:
    mesh = mesh_id()
    first = node("dup", mesh)
    second = node("dup", mesh)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with trio.fail_after(15), pytest.raises(DiscoveryError, match="already advertised"):
            await second.run()
        nursery.cancel_scope.cancel()


def register_without_probing(zc: Zeroconf, info: ServiceInfo) -> None:
    """zeroconf registration minus the probes: what happens when the defender's
    unicast answer to a probe went to another socket sharing port 5353."""
    zc.register_service(info, allow_name_change=False, cooperating_responders=True)


async def run_and_note_the_end(
    d: ZeroconfDiscovery, ended: list[tuple[ZeroconfDiscovery, DiscoveryError]]
) -> None:
    try:
        await d.run()
    except DiscoveryError as exc:
        ended.append((d, exc))


@pytest.mark.parametrize("older", ["first", "second"])
async def test_name_conflict_missed_by_probing_is_settled_by_the_run_stamps(
    monkeypatch: pytest.MonkeyPatch, older: str
) -> None:
    monkeypatch.setattr(ZeroconfDiscovery, "_register", staticmethod(register_without_probing))
    mesh = mesh_id()
    stamps = {"older": RunStamp(1_000, bytes(8)), "newer": RunStamp(2_000, bytes(8))}
    first = node("dup", mesh, run=stamps["older" if older == "first" else "newer"])
    second = node("dup", mesh, run=stamps["older" if older == "second" else "newer"])
    winner, loser = (first, second) if older == "first" else (second, first)
    observer = node("obs", mesh)
    ended: list[tuple[ZeroconfDiscovery, DiscoveryError]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(observer.run)
        nursery.start_soon(run_and_note_the_end, first, ended)
        await wait_for(lambda: "dup" in observer.peers(), 10)
        nursery.start_soon(run_and_note_the_end, second, ended)
        await wait_for(lambda: bool(ended), 10)
        [(who, error)] = ended
        assert who is loser  # and the winner runs on
        assert "already advertised by another host" in str(error)
        assert "a run started at 1000 ms (ours: 2000 ms) keeps the name" in str(error)
        # the mesh ends up with the winner's record, also after the loser's goodbye
        # and past the loser's own-name questions and the winner's defence
        await wait_for(lambda: observer.peers()["dup"].advertisement == winner.advertisement, 10)
        await trio.sleep(3.0)
        assert observer.peers()["dup"].advertisement == winner.advertisement
        assert len(ended) == 1
        nursery.cancel_scope.cancel()


async def test_find_broker_needs_a_running_discovery() -> None:
    with pytest.raises(DiscoveryError, match="not running"):
        await node("x", mesh_id()).find_broker()


def test_a_record_too_large_once_stamped_is_refused_up_front() -> None:
    adv = Advertisement(
        node="n" * 30, key_id=bytes(64), mesh="m" * 32, zone="z" * 64, broker="mqtt://" + "h" * 158
    )  # 396 bytes: fits without the run stamp, not with it
    with pytest.raises(TxtRecordError, match="exceeds 400"):
        ZeroconfDiscovery(adv, interfaces=LO)


@pytest.mark.parametrize("interfaces", [[], "127.0.0.1", ["not-an-ip"], ["::1"], ["0.0.0.0"]])
def test_bad_interfaces_are_refused(interfaces: object) -> None:
    adv = Advertisement(node="n", key_id=b"k1", mesh="m", zone="z")
    with pytest.raises(DiscoveryError):
        ZeroconfDiscovery(adv, interfaces=interfaces)  # type: ignore[arg-type]
