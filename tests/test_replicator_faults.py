"""The replicator when its store fails, and across restarts that lost the store's tail.

In-process replicators on the in-memory broker with real SQLite files; a full
disk is SQLite's own ``max_page_count`` limit (the same SQLITE_FULL a full
file system gives; tests/test_store_faults.py fills a real tmpfs).
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from vsm_edge.sync import (
    RESERVE_AHEAD,
    AsyncStore,
    CausalLWWRegister,
    CrdtDocument,
    GossipConfig,
    HybridLogicalClock,
    MemoryBroker,
    MemoryHighWaterMark,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    Store,
    StoreError,
    StoreFault,
    StoreFaultError,
    StoreHighWaterMark,
)
from vsm_edge.sync._backoff import Backoff

pytestmark = pytest.mark.integration

FAST = GossipConfig(batch_interval=0.005, digest_interval=0.2, repair_timeout=0.5)


class Node:
    def __init__(self, rep: Replicator, store: AsyncStore | None) -> None:
        self.rep = rep
        self.store = store
        self.scope = trio.CancelScope()
        self.closed = trio.Event()

    @property
    def mesh(self) -> CrdtDocument[ORMap]:
        doc = self.rep.docs["mesh"]
        assert isinstance(doc, CrdtDocument)
        return doc

    def value(self) -> dict[Any, Any]:
        return self.mesh.state.value()

    def own_max(self) -> int:
        return self.mesh.state.digest().max(self.rep.node)

    async def put(self, key: str, value: Any) -> None:
        node, clock = self.rep.node, self.rep.clock
        await self.rep.mutate(
            "mesh",
            lambda m: m.update(
                node, key, CausalLWWRegister, lambda r: r.set(node, clock.now(), value)
            ),
        )


class FailingMark(MemoryHighWaterMark):
    def __init__(self) -> None:
        super().__init__()
        self.full = False

    def store(self, wall_ms: int) -> None:
        if self.full:
            raise StoreError("hlc ceiling: disk full", cause="disk-full")
        super().store(wall_ms)


@asynccontextmanager
async def open_node(
    nursery: trio.Nursery,
    name: str,
    broker: MemoryBroker,
    *,
    data: Path | None = None,
    mark: Any = None,
) -> AsyncIterator[Node]:
    """A replicator; on exit it is stopped and its store closed before this returns."""
    store = await AsyncStore.open(data / f"{name}.db") if data is not None else None
    if mark is None and store is not None:
        mark = StoreHighWaterMark(store.sync)
    clock = HybridLogicalClock(name, high_water=mark)
    config = ReplicatorConfig(
        mesh="test",
        node=name,
        gossip=FAST,
        snapshot_interval=0.2,
        claim_settle=0.1,
        fault_retry=Backoff(initial=0.05, maximum=0.2, jitter=0.0),
    )
    rep = Replicator(
        config,
        NodeKey(name.encode().ljust(32, b"\0")),
        clock,
        lambda will: broker.transport(name, will=will),
        {"mesh": CrdtDocument("mesh", ORMap)},
        store=store,
    )
    node = Node(rep, store)

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with node.scope:
                await rep.run(task_status=task_status)
        finally:
            with trio.CancelScope(shield=True):
                if store is not None:
                    await store.aclose()
                node.closed.set()

    await nursery.start(run)
    try:
        yield node
    finally:
        node.scope.cancel()
        with trio.CancelScope(shield=True):
            await node.closed.wait()


async def until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


def cap_pages(store: Store, extra: int = 0) -> None:
    """Let the database grow by ``extra`` pages at most: SQLite's own "disk is full"."""
    (pages,) = store._conn.execute("PRAGMA page_count").fetchone()
    store._conn.execute(f"PRAGMA max_page_count = {pages + extra}")


def uncap_pages(store: Store) -> None:
    store._conn.execute("PRAGMA max_page_count = 1073741823")


def same(a: Node, b: Node) -> bool:
    return a.mesh.state.digest() == b.mesh.state.digest() and a.value() == b.value()


async def test_a_full_store_refuses_writes_without_a_trace_then_recovers(tmp_path: Path) -> None:
    broker = MemoryBroker(seed=21)
    heard: list[StoreFault | None] = []
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", broker, data=tmp_path) as a,
            open_node(nursery, "b", broker) as b,
        ):
            assert a.store is not None
            a.rep.observe_store_faults(heard.append)
            await until(lambda: a.rep.online_peers() == ["b"], "presence")
            await a.put("k0", 0)
            await until(lambda: "k0" in b.value(), "k0 at b")
            before = a.mesh.state.digest()
            cap_pages(a.store.sync)
            with pytest.raises(StoreError) as caught:
                await a.put("big", "x" * 100_000)
            assert caught.value.cause == "disk-full"
            # Not applied, not acknowledged, not sent: no trace of it anywhere.
            assert a.mesh.state.digest() == before
            assert "big" not in a.value()
            fault = a.rep.store_fault
            assert fault is not None
            assert (fault.cause, fault.operation) == ("disk-full", "commit")
            assert heard == [fault]
            # Later writes are refused up front, before anything is minted.
            with pytest.raises(StoreFaultError, match="disk-full") as refused:
                await a.put("k1", 1)
            assert refused.value.cause == "disk-full"
            assert a.mesh.state.digest() == before
            assert a.rep.statistics()["writes_refused"] == 1
            # Replication goes on meanwhile: b keeps getting a's digests.
            digests = b.rep.statistics()["counts"].get("in_digest", 0)
            await until(
                lambda: b.rep.statistics()["counts"].get("in_digest", 0) >= digests + 3,
                "three more digests from a",
            )
            assert "big" not in b.value()
            assert b.mesh.state.digest().max("a") == before.max("a")
            uncap_pages(a.store.sync)  # space returns
            await until(lambda: a.rep.store_fault is None, "recovery")
            assert heard == [fault, None]
            await a.put("k1", 1)
            await until(lambda: "k1" in b.value(), "k1 at b")
            stats = a.rep.statistics()
            assert (stats["store_faults"], stats["store_recoveries"]) == (1, 1)
        nursery.cancel_scope.cancel()


async def test_a_delta_leaves_and_can_be_repaired_only_after_its_commit(tmp_path: Path) -> None:
    broker = MemoryBroker(seed=22)
    async with trio.open_nursery() as nursery:
        async with (
            open_node(nursery, "a", broker, data=tmp_path, mark=MemoryHighWaterMark()) as a,
            open_node(nursery, "b", broker) as b,
        ):
            assert a.store is not None
            await until(lambda: a.rep.online_peers() == ["b"], "presence")
            await a.put("k0", 0)
            await until(lambda: same(a, b), "convergence")
            entered, gate = threading.Event(), threading.Event()
            append = a.store.sync.append_delta

            def held_append(*args: Any) -> bool:
                entered.set()
                gate.wait()
                return append(*args)

            a.store.sync.append_delta = held_append  # type: ignore[method-assign]
            queued = a.rep.gossip.statistics().counters["deltas_queued"]
            async with trio.open_nursery() as writer:
                writer.start_soon(a.put, "k1", 1)
                await trio.to_thread.run_sync(entered.wait)
                # The commit is under way: the dot is minted but not durable.
                digests = b.rep.statistics()["counts"].get("in_digest", 0)
                await until(
                    lambda: b.rep.statistics()["counts"].get("in_digest", 0) >= digests + 3,
                    "three digests from a during the commit",
                )
                assert "k1" not in a.value()  # what digests and repairs read
                b_digest = a.mesh.parse_digest(b.mesh.digest())
                assert a.mesh.delta_since(b_digest) is None  # a repair: nothing
                assert a.rep.gossip.statistics().counters["deltas_queued"] == queued
                assert "k1" not in b.value()
                gate.set()
            assert "k1" in a.value()
            await until(lambda: "k1" in b.value(), "k1 at b after the commit")
        nursery.cancel_scope.cancel()


async def test_goodbye_completes_when_the_clock_cannot_store_its_ceiling() -> None:
    # The bug: _goodbye -> _seal -> the HLC ceiling -> StoreError, only
    # TransportError was caught, and the shielded transport ran forever.
    broker = MemoryBroker(seed=24)
    mark = FailingMark()
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "b", broker) as b:
            async with open_node(nursery, "a", broker, mark=mark) as a:
                await until(lambda: b.rep.online_peers() == ["a"], "presence")
                mark.full = True  # a clock that does not defer: now() raises at the ceiling
                await until(lambda: a.rep.store_fault is not None, "the ceiling failing")
                fault = a.rep.store_fault
                assert fault is not None
                assert fault.operation == "hlc ceiling"
                # a keeps gossiping (stamped below the stored ceiling) ...
                digests = b.rep.statistics()["counts"].get("in_digest", 0)
                await until(
                    lambda: b.rep.statistics()["counts"].get("in_digest", 0) >= digests + 2,
                    "digests from a",
                )
                # ... and refuses local writes.
                with pytest.raises(StoreFaultError):
                    await a.put("k", 1)
            # open_node returned: a's run() finished; it said goodbye itself.
            await until(lambda: b.rep.online_peers() == [], "a seen offline")
            assert broker.statistics().wills_published == 0
        nursery.cancel_scope.cancel()


async def test_goodbye_sends_the_will_when_the_offline_presence_cannot_be_sealed() -> None:
    broker = MemoryBroker(seed=25)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "b", broker) as b:
            async with open_node(nursery, "a", broker) as a:
                await until(lambda: b.rep.online_peers() == ["a"], "presence")
                seal = a.rep._seal

                def failing_seal(kind: str, body: Any) -> bytes:
                    if kind == "presence":
                        raise StoreError("disk full", cause="disk-full")
                    return seal(kind, body)

                a.rep._seal = failing_seal  # type: ignore[method-assign]
            await until(lambda: b.rep.online_peers() == [], "a seen offline")
            assert b.rep.peers["a"].online is False
        nursery.cancel_scope.cancel()


async def test_a_store_that_lost_its_tail_never_mints_a_dot_its_peers_hold(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker(seed=23)
    old = tmp_path / "old.db"
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "b", broker) as b:
            async with open_node(nursery, "a", broker, data=tmp_path) as a:
                for i in range(5):
                    await a.put(f"k{i}", i)
                await until(lambda: "k4" in b.value(), "k4 at b")
            shutil.copy(tmp_path / "a.db", old)  # a backup, taken while a was stopped
            async with open_node(nursery, "a", broker, data=tmp_path) as a:
                for i in range(5, 10):
                    await a.put(f"k{i}", i)
                await until(lambda: "k9" in b.value(), "k9 at b")
            held = b.mesh.state.digest().max("a")  # what the mesh holds of a
            shutil.copy(old, tmp_path / "a.db")  # the backup comes back: the tail is lost
            with Store.open(tmp_path / "a.db") as restored:
                assert restored.log_spans("mesh")["a"].last_seq < held
                # The second run skipped the first run's reservation and used
                # counters above it: the old file's reservation does not cover them.
                assert restored.reserved_seq("mesh", "a") < held
            async with open_node(nursery, "a", broker, data=tmp_path) as a:
                await a.put("new", 1)
                # It learned `held` from b's digest and got k5..k9 back before minting.
                assert a.own_max() == held + 1
                assert {f"k{i}" for i in range(10)} <= set(a.value())
                await until(lambda: same(a, b), "convergence")
                assert b.mesh.state.digest().ranges()["a"] == (1, held + 1)
        nursery.cancel_scope.cancel()


async def test_a_wiped_store_learns_its_counters_back_from_the_mesh(tmp_path: Path) -> None:
    broker = MemoryBroker(seed=26)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "b", broker) as b:
            async with open_node(nursery, "a", broker, data=tmp_path) as a:
                for i in range(7):
                    await a.put(f"k{i}", i)
                await until(lambda: "k6" in b.value(), "k6 at b")
            held = b.mesh.state.digest().max("a")
            (tmp_path / "a.db").unlink()  # no reservation left either
            async with open_node(nursery, "a", broker, data=tmp_path) as a:
                await a.put("new", 1)
                # Waited for b's digest and for b to send a's updates back first.
                assert {f"k{i}" for i in range(7)} <= set(a.value())
                assert a.own_max() == held + 1
                await until(lambda: same(a, b), "convergence")
        nursery.cancel_scope.cancel()


async def test_offline_restart_skips_the_reserved_counters_with_its_first_write(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker(seed=27)
    async with trio.open_nursery() as nursery:
        async with open_node(nursery, "a", broker, data=tmp_path) as a:
            for i in range(3):
                await a.put(f"k{i}", i)
        with Store.open(tmp_path / "a.db") as s:
            reserved = s.reserved_seq("mesh", "a")
        assert reserved == 1 + RESERVE_AHEAD  # the first commit reserved a block
        async with open_node(nursery, "a", broker, data=tmp_path) as a:  # no peer at all
            await a.put("k3", 3)
            assert a.mesh.state.digest().ranges()["a"] == (1, reserved + 1)
            assert a.own_max() == reserved + 1
        with Store.open(tmp_path / "a.db") as s:
            # The skip is in the log like any delta: repairs can serve it.
            spans = s.log_spans("mesh")["a"]
            assert spans.last_seq == reserved + 1
            assert s.deltas_after("mesh", "a", 0).contiguous
        nursery.cancel_scope.cancel()
