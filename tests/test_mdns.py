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

import pytest
import trio

from vsm_edge.sync import (
    Advertisement,
    DiscoveryError,
    DiscoveryTiming,
    PeerEventKind,
    ZeroconfDiscovery,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

LO = ["127.0.0.1"]
TIMING = DiscoveryTiming(refresh_interval=1.0, gone_after=3.5, rescan_interval=5.0)


def mesh_id() -> str:
    return f"t{os.getpid()}{secrets.token_hex(3)}"


def node(name: str, mesh: str, **kw: object) -> ZeroconfDiscovery:
    adv = Advertisement(node=name, key_id=name.encode() * 4, mesh=mesh, zone=f"zone-{name}")
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


async def test_same_node_in_same_mesh_is_a_name_conflict() -> None:
    mesh = mesh_id()
    first = node("dup", mesh)
    second = node("dup", mesh)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        with trio.fail_after(15), pytest.raises(DiscoveryError, match="already advertised"):
            await second.run()
        nursery.cancel_scope.cancel()


async def test_find_broker_needs_a_running_discovery() -> None:
    with pytest.raises(DiscoveryError, match="not running"):
        await node("x", mesh_id()).find_broker()


@pytest.mark.parametrize("interfaces", [[], "127.0.0.1", ["not-an-ip"], ["::1"], ["0.0.0.0"]])
def test_bad_interfaces_are_refused(interfaces: object) -> None:
    adv = Advertisement(node="n", key_id=b"k1", mesh="m", zone="z")
    with pytest.raises(DiscoveryError):
        ZeroconfDiscovery(adv, interfaces=interfaces)  # type: ignore[arg-type]
