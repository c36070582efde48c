"""The Transport contract, run against the in-memory fake and a real Mosquitto.

Every test here runs three times: on MemoryBroker, and on a Mosquitto process
with MqttTransport speaking MQTT 5 and forced to 3.1.1.
"""

from __future__ import annotations

import pytest
import trio
from support.brokers import mosquitto_factory  # noqa: F401
from support.transports import WAIT, Harness, connected, transport_harness  # noqa: F401

from vsm_edge.sync import (
    ConnectionLostError,
    InvalidTopicError,
    Message,
    NotConnectedError,
    Overflow,
    PayloadTooLargeError,
    Transport,
    TransportState,
    Will,
)

pytestmark = pytest.mark.integration


async def receive(t: Transport, n: int = 1) -> list[Message]:
    with trio.fail_after(WAIT):
        return [await t.messages.receive() for _ in range(n)]


async def nothing_more(t: Transport, wait: float = 0.2) -> None:
    with trio.move_on_after(wait):
        extra = await t.messages.receive()
        pytest.fail(f"unexpected message {extra}")


async def test_publish_subscribe_with_wildcards_and_qos(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub")
    sub = transport_harness.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/m1/d/+", qos=1)
        await sub.subscribe("vsm/m1/alg/#", qos=0)
        await pub.publish("vsm/m1/d/n1", b"delta", qos=1)
        await pub.publish("vsm/m1/d/n1/extra", b"no: + is one level", qos=1)
        await pub.publish("vsm/m2/d/n1", b"no: other mesh", qos=1)
        await pub.publish("vsm/m1/alg/n1/x", b"alarm", qos=1)  # downgraded to the sub's QoS 0
        await pub.publish("vsm/m1/d/n2", b"qos0", qos=0)
        got = await receive(sub, 3)
        assert got == [
            Message("vsm/m1/d/n1", b"delta", qos=1, retain=False),
            Message("vsm/m1/alg/n1/x", b"alarm", qos=0, retain=False),
            Message("vsm/m1/d/n2", b"qos0", qos=0, retain=False),
        ]
        await nothing_more(sub)
        assert pub.statistics().messages_out == 5
        assert sub.statistics().messages_in == 3
        assert sub.statistics().bytes_in == len(b"delta" + b"alarm" + b"qos0")
        nursery.cancel_scope.cancel()


async def test_order_is_kept_for_one_publisher(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub")
    sub = transport_harness.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/m/d/#")
        for i in range(200):
            await pub.publish("vsm/m/d/pub", i.to_bytes(2, "big"), qos=i % 2)
        got = await receive(sub, 200)
        assert [int.from_bytes(m.payload, "big") for m in got] == list(range(200))
        nursery.cancel_scope.cancel()


async def test_concurrent_qos1_publishes_all_acknowledged(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub", max_inflight=8)
    sub = transport_harness.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/#")

        async def publish(i: int) -> None:
            await pub.publish(f"vsm/m/d/{i}", b"x", qos=1)

        async with trio.open_nursery() as publishers:
            for i in range(64):
                publishers.start_soon(publish, i)
        assert pub.statistics().messages_out == 64
        assert pub.statistics().inflight == 0
        assert sorted(m.topic for m in await receive(sub, 64)) == sorted(
            f"vsm/m/d/{i}" for i in range(64)
        )
        nursery.cancel_scope.cancel()


async def test_retained_message_reaches_late_subscriber_flagged(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub")
    late = transport_harness.transport("late")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, late)
        await pub.publish("vsm/m/presence/n1", b"online v1", qos=1, retain=True)
        await pub.publish("vsm/m/presence/n1", b"online v2", qos=1, retain=True)
        await pub.publish("vsm/m/presence/n2", b"gone", qos=1, retain=True)
        await pub.publish("vsm/m/presence/n2", b"", qos=1, retain=True)  # clears it
        await late.subscribe("vsm/m/presence/+")
        [retained] = await receive(late)
        assert retained == Message("vsm/m/presence/n1", b"online v2", qos=1, retain=True)
        await nothing_more(late)
        # A live message on a subscribed topic is not flagged retained.
        await pub.publish("vsm/m/presence/n1", b"online v3", qos=1, retain=True)
        assert await receive(late) == [Message("vsm/m/presence/n1", b"online v3", 1, False)]
        nursery.cancel_scope.cancel()


async def test_last_will_on_crash_not_on_clean_disconnect(transport_harness: Harness) -> None:
    will = Will("vsm/m/presence/n1", b"offline", qos=1, retain=True)
    node = transport_harness.transport("n1", will=will)
    clean = transport_harness.transport("n2", will=Will("vsm/m/presence/n2", b"offline"))
    watcher = transport_harness.transport("watcher")
    async with trio.open_nursery() as nursery:
        await connected(nursery, watcher)
        await watcher.subscribe("vsm/m/presence/+")
        async with trio.open_nursery() as inner:
            await connected(inner, node, clean)
            transport_harness.crash(node)
            assert await receive(watcher) == [Message("vsm/m/presence/n1", b"offline", 1, False)]
            inner.cancel_scope.cancel()  # n2 (and the reconnected n1) leave cleanly
        await nothing_more(watcher, 0.3)
        assert clean.state is TransportState.CLOSED
        nursery.cancel_scope.cancel()


async def test_publish_when_not_connected_raises(transport_harness: Harness) -> None:
    t = transport_harness.transport("lonely")
    with pytest.raises(NotConnectedError):
        await t.publish("vsm/m/d/x", b"x", qos=1)
    with pytest.raises(NotConnectedError):
        await t.publish("vsm/m/d/x", b"x", qos=0)
    async with trio.open_nursery() as nursery:
        await connected(nursery, t)
        await transport_harness.stop_broker()
        with trio.fail_after(WAIT):
            while t.state is TransportState.CONNECTED:
                await trio.sleep(0.01)
        with pytest.raises(NotConnectedError):
            await t.publish("vsm/m/d/x", b"x", qos=1)
        assert t.statistics().connections_lost == 1
        nursery.cancel_scope.cancel()


async def test_reconnects_after_broker_restart_and_restores_subscriptions(
    transport_harness: Harness,
) -> None:
    pub = transport_harness.transport("pub")
    sub = transport_harness.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/m/d/+")
        await transport_harness.stop_broker()
        await trio.sleep(0.1)  # a few failed attempts
        await transport_harness.start_broker()
        with trio.fail_after(WAIT):
            await pub.wait_connected()
            await sub.wait_connected()
        await pub.publish("vsm/m/d/n1", b"after restart", qos=1)
        assert await receive(sub) == [Message("vsm/m/d/n1", b"after restart", 1, False)]
        stats = sub.statistics()
        assert stats.connects == 2
        assert stats.reconnects == 1
        assert stats.state is TransportState.CONNECTED
        nursery.cancel_scope.cancel()


async def test_qos1_publish_returns_only_after_puback(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub)
        transport_harness.hold_acks()
        try:
            with trio.move_on_after(0.3) as waited:
                await pub.publish("vsm/m/d/n1", b"x", qos=1)
            assert waited.cancelled_caught, "publish returned without a PUBACK"
            assert pub.statistics().messages_out == 0
        finally:
            transport_harness.release_acks()
        with trio.fail_after(WAIT):
            await pub.publish("vsm/m/d/n1", b"y", qos=1)
        assert pub.statistics().messages_out == 1
        nursery.cancel_scope.cancel()


async def test_connection_lost_before_puback_raises(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub)
        transport_harness.hold_acks()
        try:
            outcome: list[BaseException] = []

            async def publish() -> None:
                try:
                    await pub.publish("vsm/m/d/n1", b"x", qos=1)
                except ConnectionLostError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as inner:
                inner.start_soon(publish)
                await trio.sleep(0.1)
                assert pub.statistics().inflight == 1
                transport_harness.crash(pub)
            assert len(outcome) == 1
            assert pub.statistics().inflight == 0
        finally:
            transport_harness.release_acks()
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("overflow", list(Overflow))
async def test_incoming_overflow_policy(transport_harness: Harness, overflow: Overflow) -> None:
    pub = transport_harness.transport("pub")
    sub = transport_harness.transport("sub", incoming_capacity=4, overflow=overflow)
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/#")
        for i in range(50):
            await pub.publish("vsm/m/d/pub", i.to_bytes(1, "big"), qos=1)
        if overflow is Overflow.DROP_NEWEST:
            with trio.fail_after(WAIT):  # everything reaches the subscriber; nobody reads
                while sub.statistics().messages_in < 50:
                    await trio.sleep(0.01)
            got = await receive(sub, 4)
            await nothing_more(sub)
            assert [m.payload[0] for m in got] == [0, 1, 2, 3]
            assert sub.statistics().messages_dropped == 46
        else:
            got = await receive(sub, 50)
            assert [m.payload[0] for m in got] == list(range(50))
            assert sub.statistics().messages_dropped == 0
        nursery.cancel_scope.cancel()


async def test_unsubscribe_stops_delivery(transport_harness: Harness) -> None:
    pub = transport_harness.transport("pub")
    sub = transport_harness.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/a")
        await sub.subscribe("vsm/b")
        await sub.unsubscribe("vsm/a")
        await sub.unsubscribe("vsm/never-subscribed")
        await pub.publish("vsm/a", b"a", qos=1)
        await pub.publish("vsm/b", b"b", qos=1)
        assert [m.topic for m in await receive(sub)] == ["vsm/b"]
        await nothing_more(sub)
        assert sub.statistics().subscriptions == 1
        nursery.cancel_scope.cancel()


async def test_bad_arguments_are_rejected_before_sending(transport_harness: Harness) -> None:
    t = transport_harness.transport("t", max_payload=16)
    async with trio.open_nursery() as nursery:
        await connected(nursery, t)
        for topic in ["", "vsm/+", "vsm/#", "a\x00b"]:
            with pytest.raises(InvalidTopicError):
                await t.publish(topic, b"x")
        for topic_filter in ["", "vsm/#/x", "vsm/a+"]:
            with pytest.raises(InvalidTopicError):
                await t.subscribe(topic_filter)
        with pytest.raises(PayloadTooLargeError) as too_large:
            await t.publish("vsm/x", b"y" * 17, qos=1)
        assert (too_large.value.size, too_large.value.limit) == (17, 16)
        with pytest.raises(ValueError, match="qos"):
            await t.publish("vsm/x", b"y", qos=2)
        with pytest.raises(ValueError, match="qos"):
            await t.subscribe("vsm/x", qos=2)
        await t.publish("vsm/x", b"y" * 16, qos=1)  # the limit itself is fine
        assert t.statistics().messages_out == 1
        nursery.cancel_scope.cancel()


async def test_run_twice_at_once_is_refused(transport_harness: Harness) -> None:
    t = transport_harness.transport("t")
    async with trio.open_nursery() as nursery:
        await connected(nursery, t)
        with pytest.raises(RuntimeError, match="already running"):
            await t.run()
        nursery.cancel_scope.cancel()
    assert t.state is TransportState.CLOSED
