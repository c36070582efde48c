"""The in-memory broker's fault knobs and the reconnect schedule, on virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from vsm_edge.sync import (
    Backoff,
    MemoryBroker,
    Message,
    NotConnectedError,
    TransportState,
    Will,
)


async def _start(nursery: trio.Nursery, *transports: object) -> None:
    for t in transports:
        await nursery.start(t.run)  # type: ignore[attr-defined]
    for t in transports:
        await t.wait_connected()  # type: ignore[attr-defined]


async def _drain(t: object) -> list[Message]:
    out = []
    while True:
        try:
            out.append(t.messages.receive_nowait())  # type: ignore[attr-defined]
        except trio.WouldBlock:
            return out


async def test_reconnect_follows_the_backoff_schedule_exactly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker = MemoryBroker()
    backoff = Backoff(initial=1.0, maximum=8.0, multiplier=2.0, jitter=0.5)
    t = broker.transport("n1", backoff=backoff, random=lambda: 0.0)  # the lowest delays
    broker.stop()
    async with trio.open_nursery() as nursery:
        await nursery.start(t.run)
        # Attempts at 0, then after 0.5, 1, 2, 4, 4 (capped at 8 * 0.5): 0, .5, 1.5, 3.5, 7.5, 11.5
        await trio.sleep(11.0)
        assert t.statistics().connect_failures == 5
        assert t.state is TransportState.BACKOFF
        broker.start()
        await t.wait_connected()
        assert trio.current_time() == 11.5
        assert t.statistics().connects == 1
        # After a lost connection: one short pause, delay(0), then connected again.
        start = trio.current_time()
        broker.disconnect("n1")
        while t.state is TransportState.CONNECTED:
            await trio.lowlevel.checkpoint()
        assert t.state is TransportState.BACKOFF
        await t.wait_connected()
        assert trio.current_time() - start == 0.5
        nursery.cancel_scope.cancel()


async def test_partition_fires_will_and_blocks_reconnect_until_healed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    broker = MemoryBroker()
    node = broker.transport("n1", will=Will("vsm/m/presence/n1", b"offline"))
    watcher = broker.transport("w")
    async with trio.open_nursery() as nursery:
        await _start(nursery, node, watcher)
        await watcher.subscribe("vsm/m/presence/+")
        broker.partition("n1")
        assert await watcher.messages.receive() == Message(
            "vsm/m/presence/n1", b"offline", 1, False
        )
        assert broker.retained["vsm/m/presence/n1"].payload == b"offline"
        await trio.sleep(60)
        assert node.state is not TransportState.CONNECTED
        assert node.statistics().connect_failures > 3
        with pytest.raises(NotConnectedError):
            await node.publish("vsm/x", b"x")
        broker.heal()
        await node.wait_connected()
        assert broker.connected == {"n1", "w"}
        assert broker.statistics().wills_published == 1
        nursery.cancel_scope.cancel()


async def test_drop_duplicate_and_reorder_knobs() -> None:
    broker = MemoryBroker(seed=7)
    pub, sub = broker.transport("p"), broker.transport("s", incoming_capacity=10_000)
    async with trio.open_nursery() as nursery:
        await _start(nursery, pub, sub)
        await sub.subscribe("t/#")
        broker.drop, broker.duplicate, broker.reorder = 0.2, 0.2, 0.2
        for i in range(1000):
            await pub.publish("t/x", i.to_bytes(2, "big"), qos=1)
        broker.flush_held()
        await trio.testing.wait_all_tasks_blocked()
        got = [int.from_bytes(m.payload, "big") for m in await _drain(sub)]
        stats = broker.statistics()
        assert stats.dropped_faults > 100
        assert stats.duplicated > 100
        assert stats.reordered > 50
        assert len(got) == 1000 - stats.dropped_faults + stats.duplicated
        assert got != sorted(got)  # reordered
        assert len(set(got)) < 1000  # some lost
        assert len(got) > len(set(got))  # some twice
        nursery.cancel_scope.cancel()


async def test_broker_queue_bound_drops_and_counts() -> None:
    broker = MemoryBroker(max_queued=10)
    pub = broker.transport("p")
    sub = broker.transport("s", incoming_capacity=1)
    async with trio.open_nursery() as nursery:
        await _start(nursery, pub, sub)
        await sub.subscribe("t")
        for i in range(50):  # no checkpoint lets the subscriber's pump run in between
            broker._publish(broker._links["p"], Message("t", bytes([i]), 0))
        assert broker.statistics().dropped_queue_full == 40
        with trio.fail_after(5):
            got = [(await sub.messages.receive()).payload[0] for _ in range(10)]
        assert got == list(range(10))
        await trio.testing.wait_all_tasks_blocked()
        assert await _drain(sub) == []
        nursery.cancel_scope.cancel()


async def test_stop_drops_everyone_without_wills_and_forgets_retained() -> None:
    broker = MemoryBroker()
    a = broker.transport("a", will=Will("w/a", b"offline"))
    async with trio.open_nursery() as nursery:
        await _start(nursery, a)
        await a.publish("r", b"kept?", qos=1, retain=True)
        broker.stop()
        assert broker.connected == frozenset()
        assert broker.retained == {}
        assert broker.statistics().wills_published == 0
        nursery.cancel_scope.cancel()


async def test_takeover_disconnects_the_older_connection() -> None:
    broker = MemoryBroker()
    first = broker.transport("same", will=Will("w", b"old gone"))
    second = broker.transport("same")
    watcher = broker.transport("watcher")
    async with trio.open_nursery() as nursery:
        await _start(nursery, watcher)
        await watcher.subscribe("w")
        await _start(nursery, first)
        await _start(nursery, second)
        assert (await watcher.messages.receive()).payload == b"old gone"
        assert first.statistics().connections_lost == 1
        nursery.cancel_scope.cancel()


def test_broker_and_transport_reject_bad_options() -> None:
    with pytest.raises(ValueError):
        MemoryBroker(max_queued=0)
    broker = MemoryBroker()
    with pytest.raises(ValueError):
        broker.transport("")
    with pytest.raises(ValueError):
        broker.transport("a", incoming_capacity=0)
