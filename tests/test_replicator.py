"""The replicator end to end: gossip, envelopes, presence, store, outbox.

Fast scenarios run on the in-memory broker; the real ones on a Mosquitto
process with SQLite stores in temporary directories.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pycrdt
import pytest
import trio
import trio.testing
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401

from vsm_edge.sync import (
    AsyncStore,
    CausalLWWRegister,
    CrdtDocument,
    GossipConfig,
    HybridLogicalClock,
    MemoryBroker,
    MeshKey,
    MqttSettings,
    MqttTransport,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    StoreHighWaterMark,
    Transport,
    Will,
    YjsDocument,
    sign_envelope,
)
from vsm_edge.sync._cbor import dumps

FAST = GossipConfig(batch_interval=0.005, digest_interval=0.2, repair_timeout=0.5)
Factory = Callable[[str, Will], Transport]


def memory_factory(broker: MemoryBroker) -> Factory:
    return lambda name, will: broker.transport(name, will=will)


def mosquitto_transport(port: int) -> Factory:
    def make(name: str, will: Will) -> Transport:
        return MqttTransport(
            MqttSettings(client_id=name, port=port, will=will, protocol="5", keepalive=5)
        )

    return make


class Node:
    """One replicator with an ORMap document ("mesh") and a Yjs document ("notes")."""

    def __init__(self, rep: Replicator, store: AsyncStore | None) -> None:
        self.rep = rep
        self.store = store
        self.scope = trio.CancelScope()

    @property
    def mesh(self) -> CrdtDocument[ORMap]:
        doc = self.rep.docs["mesh"]
        assert isinstance(doc, CrdtDocument)
        return doc

    def value(self) -> dict[Any, Any]:
        return self.mesh.state.value()

    async def put(self, key: str, value: Any) -> None:
        node, clock = self.rep.node, self.rep.clock
        await self.rep.mutate(
            "mesh",
            lambda m: m.update(
                node, key, CausalLWWRegister, lambda r: r.set(node, clock.now(), value)
            ),
        )


@asynccontextmanager
async def open_node(
    nursery: trio.Nursery,
    name: str,
    factory: Factory,
    *,
    data: Path | None = None,
    seed: bytes | None = None,
    mesh_key: MeshKey | None = None,
    gossip: GossipConfig = FAST,
    cpu_share: float = 0.25,
    cpu_burst: float = 1.0,
) -> AsyncIterator[Node]:
    store = await AsyncStore.open(data / f"{name}.db") if data is not None else None
    clock = HybridLogicalClock(
        name, high_water=StoreHighWaterMark(store.sync) if store is not None else None
    )
    key = NodeKey(seed or name.encode().ljust(32, b"\0"))
    docs = {
        "mesh": CrdtDocument("mesh", ORMap),
        "notes": YjsDocument("notes", {"text": pycrdt.Text}),
    }
    rep = Replicator(
        ReplicatorConfig(
            mesh="test", node=name, gossip=gossip, snapshot_interval=0.2,
            cpu_share=cpu_share, cpu_burst=cpu_burst,
        ),
        key,
        clock,
        lambda will: factory(name, will),
        docs,
        store=store,
        mesh_key=mesh_key,
    )
    node = Node(rep, store)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with node.scope:
                await rep.run(task_status=task_status)
        finally:
            if store is not None:
                with trio.CancelScope(shield=True):
                    await store.aclose()

    await nursery.start(run)
    try:
        yield node
    finally:
        node.scope.cancel()
        await trio.lowlevel.checkpoint()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait until ``predicate()``; return the seconds it took. Fails after ``timeout``."""
    start = trio.current_time()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return trio.current_time() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def same(nodes: list[Node]) -> bool:
    values = [n.value() for n in nodes]
    return all(v == values[0] for v in values) and bool(values[0])


async def test_three_nodes_converge_on_the_memory_broker() -> None:
    broker = MemoryBroker(seed=1)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", memory_factory(broker)) as a,
            open_node(nursery, "b", memory_factory(broker)) as b,
            open_node(nursery, "c", memory_factory(broker)) as c,
        ):
            nodes = [a, b, c]
            await until(lambda: all(len(n.rep.online_peers()) == 2 for n in nodes), 5, "presence")
            for i in range(20):
                await nodes[i % 3].put(f"k{i % 7}", i)
            await until(lambda: same(nodes), 5, "convergence")
            assert len(a.value()) == 7
            assert a.rep.statistics()["refused"] == {}
        nursery.cancel_scope.cancel()


async def test_a_sender_past_its_cpu_budget_is_refused_and_repairs_still_converge() -> None:
    # a grants each sender almost no CPU for unsolicited messages: b's pushes
    # are refused "cpu-budget", but the answers to a's own repairs are exempt.
    broker = MemoryBroker(seed=5)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", memory_factory(broker), cpu_share=1e-9, cpu_burst=1e-9) as a,
            open_node(nursery, "b", memory_factory(broker)) as b,
        ):
            await until(lambda: len(a.rep.online_peers()) == 1, 5, "presence")
            for i in range(30):
                await b.put(f"k{i}", i)
            await until(lambda: same([a, b]) and len(a.value()) == 30, 10, "convergence")
            assert a.rep.statistics()["refused"].get("cpu-budget", 0) > 0
            assert b.rep.statistics()["refused"].get("cpu-budget", 0) == 0
        nursery.cancel_scope.cancel()


async def test_the_clock_ceiling_is_kept_ahead_off_the_event_loop(tmp_path: Path) -> None:
    broker = MemoryBroker(seed=6)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", memory_factory(broker), data=tmp_path) as a:
            for i in range(12):  # 3 s of writes: the ceiling must move at least twice
                await a.put(f"k{i}", i)
                await trio.sleep(0.25)
            stats = a.rep.clock.statistics()
            assert stats.ceiling_ahead_writes >= 1
            assert a.store is not None
            assert await a.store.run_sync(a.store.sync.hlc_ceiling) > a.rep.clock.last.wall
        nursery.cancel_scope.cancel()


async def test_partition_heals_through_anti_entropy() -> None:
    broker = MemoryBroker(seed=2)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", memory_factory(broker)) as a,
            open_node(nursery, "b", memory_factory(broker)) as b,
        ):
            await until(lambda: len(a.rep.online_peers()) == 1, 5, "presence")
            broker.partition("b")
            for i in range(10):
                await a.put(f"a{i}", i)
                await b.put(f"b{i}", i)
            await trio.sleep(0.3)
            assert not same([a, b])
            broker.heal("b")
            await until(lambda: same([a, b]), 10, "convergence after the partition")
            assert len(a.value()) == 20
        nursery.cancel_scope.cancel()


async def test_a_node_that_stops_cleanly_is_seen_offline() -> None:
    # A clean DISCONNECT makes the broker drop the will: the replicator must
    # retract its retained "online" presence itself on the way out.
    broker = MemoryBroker(seed=9)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", memory_factory(broker)) as a:
            async with open_node(nursery, "b", memory_factory(broker)):
                await until(lambda: a.rep.online_peers() == ["b"], 5, "presence")
            await until(lambda: a.rep.online_peers() == [], 5, "b seen offline")
            assert a.rep.peers["b"].online is False
            assert broker.statistics().wills_published == 0  # it said so itself
        nursery.cancel_scope.cancel()


async def test_mutate_is_a_checkpoint_without_a_store() -> None:
    # A writer looping on mutate() must not starve the batcher, the receiver
    # and the publishers (they flushed only at the 64 KiB batch cap).
    broker = MemoryBroker(seed=10)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", memory_factory(broker)) as a:
            with trio.testing.assert_checkpoints():
                await a.put("k", 1)
            with trio.testing.assert_checkpoints():
                await a.rep.mutate("mesh", lambda m: type(m)())  # no change: still one
        nursery.cancel_scope.cancel()


@pytest.mark.integration
async def test_broadcast_deltas_leave_in_order(mosquitto: Mosquitto) -> None:
    # One origin's batches must reach a peer in the order they were made:
    # reordered, each early batch is buffered and costs a repair round trip.
    factory = mosquitto_transport(mosquitto.port)
    small = GossipConfig(batch_interval=0.005, batch_max_bytes=512, digest_interval=0.2)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", factory, gossip=small) as a,
            open_node(nursery, "b", factory) as b,
        ):
            await until(lambda: a.rep.online_peers() == ["b"], 5, "presence")
            # The broker holds its PUBACKs while a writes: many small batches
            # queue up at once, and leave when it thaws.
            mosquitto.freeze()
            try:
                for i in range(300):
                    await a.put(f"k{i}", i)
                    if i % 10 == 0:
                        await trio.sleep(0.01)
            finally:
                mosquitto.thaw()
            await until(lambda: len(b.value()) == 300, 10, "replication")
            assert a.rep.gossip.statistics().counters["batches_sent"] > 20
            stats = b.rep.gossip.statistics().counters
            assert stats["deltas_buffered"] == 0  # none arrived before its predecessor
        nursery.cancel_scope.cancel()


async def test_concurrent_mutations_share_commits_and_all_survive_a_restart(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker(seed=12)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", memory_factory(broker), data=tmp_path) as a:
            assert a.store is not None
            before = (await a.store.statistics()).commits
            async with trio.open_nursery() as writers:
                for i in range(64):
                    writers.start_soon(a.put, f"k{i}", i)
            commits = (await a.store.statistics()).commits - before
            assert commits < 64  # grouped (each put was acknowledged after its commit)
            a.scope.cancel()
        await trio.sleep(0.1)
        async with open_node(nursery, "a", memory_factory(broker), data=tmp_path) as again:
            assert {f"k{i}" for i in range(64)} <= set(again.value())
        nursery.cancel_scope.cancel()


async def test_yjs_document_replicates_text() -> None:
    broker = MemoryBroker(seed=3)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", memory_factory(broker)) as a,
            open_node(nursery, "b", memory_factory(broker)) as b,
        ):
            await until(lambda: len(b.rep.online_peers()) == 1, 5, "presence")
            await a.rep.mutate("notes", lambda y: y.root("text").insert(0, "hello "))
            await b.rep.mutate("notes", lambda y: y.root("text").insert(0, "world"))

            def texts() -> set[str]:
                out = set()
                for n in (a, b):
                    doc = n.rep.docs["notes"]
                    assert isinstance(doc, YjsDocument)
                    out.add(str(doc.ydoc.root("text")))
                return out

            await until(lambda: len(texts()) == 1, 5, "text convergence")
            (text,) = texts()
            assert sorted(text.replace(" ", "")) == sorted("helloworld")
        nursery.cancel_scope.cancel()


async def test_forged_and_foreign_messages_are_refused() -> None:
    broker = MemoryBroker(seed=4)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", memory_factory(broker)) as a,
            open_node(nursery, "b", memory_factory(broker)) as b,
            open_node(nursery, "c", memory_factory(broker)),
        ):
            await until(lambda: len(b.rep.online_peers()) == 2, 5, "presence")
            rogue = broker.transport("rogue")
            nursery.start_soon(rogue.run)
            await rogue.wait_connected()
            body = dumps([["mesh", b"\x80"]])
            # c's topic, signed by a key nobody announced
            stranger = NodeKey(b"s" * 32)
            await rogue.publish(
                "vsm/test/d/c",
                sign_envelope(body, stranger, hlc=1 << 16, kind="delta", nonce=b"n" * 8),
                qos=1,
            )
            # c's topic, signed with a's key: a is known but is not c
            a_key = NodeKey(b"a".ljust(32, b"\0"))
            await rogue.publish(
                "vsm/test/d/c",
                sign_envelope(body, a_key, hlc=1 << 16, kind="delta", nonce=b"m" * 8),
                qos=1,
            )
            # not an envelope at all
            await rogue.publish("vsm/test/d/c", b"\xff garbage", qos=1)
            await until(lambda: sum(b.rep.statistics()["refused"].values()) >= 3, 5, "refusals")
            refused = b.rep.statistics()["refused"]
            assert refused == {
                "unknown-key": 1,
                "topic-key-mismatch": 1,
                "malformed-envelope": 1,
            }
            assert b.value() == {}
            assert a.value() == {}
        nursery.cancel_scope.cancel()


async def test_encrypted_mesh_converges_and_keyless_node_cannot_read() -> None:
    broker = MemoryBroker(seed=5)
    key = MeshKey(b"k" * 32)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", memory_factory(broker), mesh_key=key) as a,
            open_node(nursery, "b", memory_factory(broker), mesh_key=key) as b,
            open_node(nursery, "c", memory_factory(broker)) as c,
        ):
            await until(lambda: len(c.rep.online_peers()) == 2, 5, "presence")
            await a.put("secret", 42)
            await until(lambda: b.value() == {"secret": 42}, 5, "encrypted replication")
            await trio.sleep(0.3)
            assert c.value() == {}
            assert c.rep.statistics()["refused"].get("undecodable-payload", 0) >= 1
        nursery.cancel_scope.cancel()


# -- real broker, real stores ---------------------------------------------------


@pytest.mark.integration
async def test_mosquitto_mesh_survives_broker_restart_and_node_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    factory = mosquitto_transport(mosquitto.port)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", factory, data=tmp_path) as a,
            open_node(nursery, "b", factory, data=tmp_path) as b,
        ):
            await until(lambda: len(a.rep.online_peers()) == 1, 10, "presence")
            for i in range(10):
                await a.put(f"k{i}", i)
            await until(lambda: same([a, b]), 10, "convergence")

            # Broker down: updates are acknowledged (durable locally) and spill
            # to the outbox; broker back: everything arrives.
            await trio.to_thread.run_sync(mosquitto.stop)
            for i in range(10, 20):
                await a.put(f"k{i}", i)
            await trio.sleep(0.5)
            await trio.to_thread.run_sync(mosquitto.start)
            await until(lambda: len(b.value()) == 20, 20, "convergence after broker restart")
            assert same([a, b])
            counts = a.rep.statistics()["counts"]
            assert counts["spilled_to_outbox"] >= 1  # the outage went through the outbox
            await until(
                lambda: (
                    a.rep.statistics()["counts"].get("outbox_sent", 0)
                    >= counts["spilled_to_outbox"]
                ),
                10,
                "outbox drained",
            )

            # Restart b from its store: state and clock survive.
            before = b.rep.clock.last
            b.scope.cancel()
            await trio.sleep(0.2)
            async with open_node(nursery, "b", factory, data=tmp_path) as b2:
                assert len(b2.value()) == 20  # recovered from the snapshot, before any gossip
                assert b2.rep.clock.now() > before
                await a.put("after-restart", 1)
                await until(lambda: "after-restart" in b2.value(), 10, "gossip after restart")
        nursery.cancel_scope.cancel()


@pytest.mark.integration
async def test_late_joiner_catches_up_over_mosquitto(mosquitto: Mosquitto, tmp_path: Path) -> None:
    factory = mosquitto_transport(mosquitto.port)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", factory, data=tmp_path) as a:
            for i in range(500):
                await a.rep.mutate(
                    "mesh",
                    lambda m, i=i: m.update(
                        "a", f"k{i}", CausalLWWRegister, lambda r: r.set("a", a.rep.clock.now(), i)
                    ),
                )
            async with open_node(nursery, "late", factory) as late:
                took = await until(lambda: len(late.value()) == 500, 15, "catch-up")
                assert same([a, late])
                print(f"late joiner caught up 500 keys in {took:.3f} s")
        nursery.cancel_scope.cancel()


async def test_a_state_larger_than_one_envelope_transfers_and_survives_a_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A state past the CBOR decoder's per-envelope default (256 KiB) reaches a late
    joiner through a chunked transfer and reloads from the store after a restart
    (both once failed: the reassembled state and the snapshot hit the 256 KiB bound)."""
    factory = mosquitto_transport(mosquitto.port)
    filler = "x" * 100
    keys = 2500
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", factory, data=tmp_path) as a:
            next_key = iter(range(keys))

            async def writer() -> None:
                for i in next_key:
                    await a.put(f"k{i}", f"{i}{filler}")

            async with trio.open_nursery() as writers:
                for _ in range(16):
                    writers.start_soon(writer)
            size = len(a.mesh.encode_state())
            assert size > 256 * 1024, size
            async with open_node(nursery, "late", factory) as late:
                await until(lambda: len(late.value()) == keys, 30, "catch-up of a large state")
                assert late.value() == a.value()
                transfers = late.rep.gossip.statistics().counters["transfers_completed"]
                assert transfers >= 1
            a.scope.cancel()  # stopping flushes a snapshot: the restart loads it
        await trio.sleep(0.1)
        async with open_node(nursery, "a", factory, data=tmp_path) as again:
            assert len(again.value()) == keys
            assert again.value()["k7"] == f"7{filler}"
        nursery.cancel_scope.cancel()
