"""Testing aids for code built on vsm_edge.sync: the in-memory broker and the Transport contract.

:class:`MemoryBroker` and :class:`MemoryTransport` are a deterministic
in-process broker and its client (unit tests, property tests on simulated
networks). :data:`CONTRACT` is the behaviour every :class:`Transport` must
have (ordering, QoS 1 acknowledgements, retained messages, last wills,
reconnection with restored subscriptions, overflow policies, argument
checks), written once as async checks against a :class:`Harness`: a
transport of your own (another broker client, a bridge) passes when every
check passes on a harness that drives it. vsm-edge's own suite runs them on
the memory broker and on a real Mosquitto with MQTT 5 and 3.1.1
(tests/test_transport_contract.py)::

    for check in CONTRACT:
        await check(MemoryHarness())

A check raises :class:`AssertionError` (or the transport's error) when the
transport breaks the contract; each wait is bounded by :data:`WAIT` seconds.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import trio

from ._backoff import Backoff
from ._memory import MemoryBroker, MemoryBrokerStatistics, MemoryTransport
from ._transport import (
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

__all__ = [
    "CONTRACT",
    "FAST",
    "WAIT",
    "Check",
    "Harness",
    "MemoryBroker",
    "MemoryBrokerStatistics",
    "MemoryHarness",
    "MemoryTransport",
    "connected",
]

# Quick reconnects, so checks of restarts stay short.
FAST = Backoff(initial=0.02, maximum=0.2)
WAIT = 10.0  # bound on any one wait in a check


class Harness(Protocol):
    """Makes transports to one broker and injects the faults the contract talks about."""

    name: str

    def transport(self, client_id: str, **options: Any) -> Transport: ...
    def crash(self, transport: Transport) -> None: ...
    async def stop_broker(self) -> None: ...
    async def start_broker(self) -> None: ...
    def hold_acks(self) -> None: ...
    def release_acks(self) -> None: ...


class MemoryHarness:
    """:class:`Harness` over a :class:`MemoryBroker`."""

    name = "memory"

    def __init__(self) -> None:
        self.broker = MemoryBroker(seed=1)

    def transport(self, client_id: str, **options: Any) -> Transport:
        options.setdefault("backoff", FAST)
        return MemoryTransport(self.broker, client_id, **options)

    def crash(self, transport: Transport) -> None:
        self.broker.disconnect(transport.client_id)

    async def stop_broker(self) -> None:
        await trio.lowlevel.checkpoint()
        self.broker.stop()

    async def start_broker(self) -> None:
        await trio.lowlevel.checkpoint()
        self.broker.start()

    def hold_acks(self) -> None:
        self.broker.hold_acks()

    def release_acks(self) -> None:
        self.broker.release_acks()


async def connected(nursery: trio.Nursery, *transports: Transport) -> None:
    """Start each transport's service and wait until all are connected."""
    for t in transports:
        await nursery.start(t.run)
    with trio.fail_after(WAIT):
        for t in transports:
            await t.wait_connected()


class _Raised:
    value: Any = None


@contextlib.contextmanager
def _raises(kind: type[BaseException], match: str | None = None) -> Iterator[_Raised]:
    raised = _Raised()
    try:
        yield raised
    except kind as exc:
        if match is not None and not re.search(match, str(exc)):
            raise AssertionError(f"{kind.__name__} {exc!s} does not match {match!r}") from exc
        raised.value = exc
        return
    raise AssertionError(f"{kind.__name__} not raised")


async def _until(condition: Callable[[], bool]) -> None:
    # A transport's state and counters have no event to wait on: poll, bounded.
    with trio.fail_after(WAIT):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def _fail(message: str) -> None:
    raise AssertionError(message)


async def receive(t: Transport, n: int = 1) -> list[Message]:
    with trio.fail_after(WAIT):
        return [await t.messages.receive() for _ in range(n)]


async def nothing_more(t: Transport, wait: float = 0.2) -> None:
    with trio.move_on_after(wait):
        extra = await t.messages.receive()
        _fail(f"unexpected message {extra}")


async def check_publish_subscribe_with_wildcards_and_qos(h: Harness) -> None:
    pub = h.transport("pub")
    sub = h.transport("sub")
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


async def check_order_is_kept_for_one_publisher(h: Harness) -> None:
    pub = h.transport("pub")
    sub = h.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/m/d/#")
        for i in range(200):
            await pub.publish("vsm/m/d/pub", i.to_bytes(2, "big"), qos=i % 2)
        got = await receive(sub, 200)
        assert [int.from_bytes(m.payload, "big") for m in got] == list(range(200))
        nursery.cancel_scope.cancel()


async def check_concurrent_qos1_publishes_all_acknowledged(h: Harness) -> None:
    pub = h.transport("pub", max_inflight=8)
    sub = h.transport("sub")
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


async def check_retained_message_reaches_late_subscriber_flagged(h: Harness) -> None:
    pub = h.transport("pub")
    late = h.transport("late")
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


async def check_last_will_on_crash_not_on_clean_disconnect(h: Harness) -> None:
    will = Will("vsm/m/presence/n1", b"offline", qos=1, retain=True)
    node = h.transport("n1", will=will)
    clean = h.transport("n2", will=Will("vsm/m/presence/n2", b"offline"))
    watcher = h.transport("watcher")
    async with trio.open_nursery() as nursery:
        await connected(nursery, watcher)
        await watcher.subscribe("vsm/m/presence/+")
        async with trio.open_nursery() as inner:
            await connected(inner, node, clean)
            h.crash(node)
            assert await receive(watcher) == [Message("vsm/m/presence/n1", b"offline", 1, False)]
            inner.cancel_scope.cancel()  # n2 (and the reconnected n1) leave cleanly
        await nothing_more(watcher, 0.3)
        assert clean.state is TransportState.CLOSED
        nursery.cancel_scope.cancel()


async def check_publish_when_not_connected_raises(h: Harness) -> None:
    t = h.transport("lonely")
    with _raises(NotConnectedError):
        await t.publish("vsm/m/d/x", b"x", qos=1)
    with _raises(NotConnectedError):
        await t.publish("vsm/m/d/x", b"x", qos=0)
    async with trio.open_nursery() as nursery:
        await connected(nursery, t)
        await h.stop_broker()
        await _until(lambda: t.state is not TransportState.CONNECTED)
        with _raises(NotConnectedError):
            await t.publish("vsm/m/d/x", b"x", qos=1)
        assert t.statistics().connections_lost == 1
        nursery.cancel_scope.cancel()


async def check_reconnects_after_broker_restart_and_restores_subscriptions(
    h: Harness,
) -> None:
    pub = h.transport("pub")
    sub = h.transport("sub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/m/d/+")
        await h.stop_broker()
        await trio.sleep(0.1)  # a few failed attempts
        await h.start_broker()
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


async def check_qos1_publish_returns_only_after_puback(h: Harness) -> None:
    pub = h.transport("pub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub)
        h.hold_acks()
        try:
            with trio.move_on_after(0.3) as waited:
                await pub.publish("vsm/m/d/n1", b"x", qos=1)
            assert waited.cancelled_caught, "publish returned without a PUBACK"
            assert pub.statistics().messages_out == 0
        finally:
            h.release_acks()
        with trio.fail_after(WAIT):
            await pub.publish("vsm/m/d/n1", b"y", qos=1)
        assert pub.statistics().messages_out == 1
        nursery.cancel_scope.cancel()


async def check_connection_lost_before_puback_raises(h: Harness) -> None:
    pub = h.transport("pub")
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub)
        h.hold_acks()
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
                h.crash(pub)
            assert len(outcome) == 1
            assert pub.statistics().inflight == 0
        finally:
            h.release_acks()
        nursery.cancel_scope.cancel()


async def _incoming_overflow_policy(h: Harness, overflow: Overflow) -> None:
    pub = h.transport("pub")
    sub = h.transport("sub", incoming_capacity=4, overflow=overflow)
    async with trio.open_nursery() as nursery:
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/#")
        for i in range(50):
            await pub.publish("vsm/m/d/pub", i.to_bytes(1, "big"), qos=1)
        if overflow is Overflow.DROP_NEWEST:
            # everything reaches the subscriber; nobody reads
            await _until(lambda: sub.statistics().messages_in >= 50)
            got = await receive(sub, 4)
            await nothing_more(sub)
            assert [m.payload[0] for m in got] == [0, 1, 2, 3]
            assert sub.statistics().messages_dropped == 46
        else:
            got = await receive(sub, 50)
            assert [m.payload[0] for m in got] == list(range(50))
            assert sub.statistics().messages_dropped == 0
        nursery.cancel_scope.cancel()


async def check_incoming_overflow_backpressure(h: Harness) -> None:
    await _incoming_overflow_policy(h, Overflow.BACKPRESSURE)


async def check_incoming_overflow_drop_newest(h: Harness) -> None:
    await _incoming_overflow_policy(h, Overflow.DROP_NEWEST)


async def check_unsubscribe_stops_delivery(h: Harness) -> None:
    pub = h.transport("pub")
    sub = h.transport("sub")
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


async def check_bad_arguments_are_rejected_before_sending(h: Harness) -> None:
    t = h.transport("t", max_payload=16)
    async with trio.open_nursery() as nursery:
        await connected(nursery, t)
        for topic in ["", "vsm/+", "vsm/#", "a\x00b"]:
            with _raises(InvalidTopicError):
                await t.publish(topic, b"x")
        for topic_filter in ["", "vsm/#/x", "vsm/a+"]:
            with _raises(InvalidTopicError):
                await t.subscribe(topic_filter)
        with _raises(PayloadTooLargeError) as too_large:
            await t.publish("vsm/x", b"y" * 17, qos=1)
        assert (too_large.value.size, too_large.value.limit) == (17, 16)
        with _raises(ValueError, match="qos"):
            await t.publish("vsm/x", b"y", qos=2)
        with _raises(ValueError, match="qos"):
            await t.subscribe("vsm/x", qos=2)
        await t.publish("vsm/x", b"y" * 16, qos=1)  # the limit itself is fine
        assert t.statistics().messages_out == 1
        nursery.cancel_scope.cancel()


async def check_run_twice_at_once_is_refused(h: Harness) -> None:
    t = h.transport("t")
    async with trio.open_nursery() as nursery:
        await connected(nursery, t)
        with _raises(RuntimeError, match="already running"):
            await t.run()
        nursery.cancel_scope.cancel()
    assert t.state is TransportState.CLOSED


Check = Callable[[Harness], Awaitable[None]]

# Every check, in a stable order; ``check.__name__`` names it.
CONTRACT: tuple[Check, ...] = (
    check_publish_subscribe_with_wildcards_and_qos,
    check_order_is_kept_for_one_publisher,
    check_concurrent_qos1_publishes_all_acknowledged,
    check_retained_message_reaches_late_subscriber_flagged,
    check_last_will_on_crash_not_on_clean_disconnect,
    check_publish_when_not_connected_raises,
    check_reconnects_after_broker_restart_and_restores_subscriptions,
    check_qos1_publish_returns_only_after_puback,
    check_connection_lost_before_puback_raises,
    check_incoming_overflow_backpressure,
    check_incoming_overflow_drop_newest,
    check_unsubscribe_stops_delivery,
    check_bad_arguments_are_rejected_before_sending,
    check_run_twice_at_once_is_refused,
)
