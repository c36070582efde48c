"""The store under Trio: every call runs in a worker thread, never on the loop.

One :class:`~vsm_edge.sync.Store` connection is shared by the worker threads;
the store's own lock serialises them, and a ``CapacityLimiter(1)`` keeps at
most one worker thread busy with (or waiting on) the store, so a burst of
calls queues in Trio rather than as blocked threads. Calls are not abandoned
on cancellation: a commit that started finishes, and its caller's
cancellation is delivered after it (Trio's ``to_thread.run_sync`` default), so
"acknowledged" still means "committed".
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec, TypeVar

import trio

from ._store import (
    CompactionResult,
    DeltaRun,
    LogEntry,
    OutboxMessage,
    Snapshot,
    Store,
    StoreConfig,
    StoreStatistics,
)

__all__ = ["AsyncStore"]

P = ParamSpec("P")
T = TypeVar("T")


class AsyncStore:
    """A Trio face of :class:`Store`; methods mirror it and raise the same errors."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._limiter = trio.CapacityLimiter(1)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        config: StoreConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> AsyncStore:
        """Open the store in a worker thread (see :meth:`Store.open`)."""
        opener = functools.partial(Store.open, path, config, clock=clock)
        store = await trio.to_thread.run_sync(opener)
        return cls(store)

    async def run_sync(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` in the store's worker thread.

        Use it for several calls in one transaction::

            def step(store: Store) -> int:
                with store.transaction():
                    store.append_delta(...)
                    return store.enqueue(...)

            msg_id = await astore.run_sync(step, astore.sync)
        """
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )

    async def aclose(self) -> None:
        await self.run_sync(self.sync.close)

    async def __aenter__(self) -> AsyncStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- mirrors of the synchronous API ----------------------------------------

    async def put_snapshot(
        self, doc: str, state: bytes, *, digest: bytes, cover: Mapping[str, int]
    ) -> None:
        await self.run_sync(self.sync.put_snapshot, doc, state, digest=digest, cover=cover)

    async def get_snapshot(self, doc: str) -> Snapshot | None:
        return await self.run_sync(self.sync.get_snapshot, doc)

    async def append_delta(
        self, doc: str, origin: str, first_seq: int, last_seq: int, delta: bytes
    ) -> bool:
        return await self.run_sync(self.sync.append_delta, doc, origin, first_seq, last_seq, delta)

    async def deltas_after(
        self, doc: str, origin: str, after_seq: int, *, max_bytes: int | None = None
    ) -> DeltaRun:
        return await self.run_sync(
            self.sync.deltas_after, doc, origin, after_seq, max_bytes=max_bytes
        )

    async def uncovered_deltas(self, doc: str) -> list[LogEntry]:
        return await self.run_sync(self.sync.uncovered_deltas, doc)

    async def compact(
        self, doc: str, join: Callable[[Sequence[bytes]], bytes] | None = None
    ) -> CompactionResult:
        return await self.run_sync(self.sync.compact, doc, join)

    async def enqueue(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> int:
        return await self.run_sync(self.sync.enqueue, topic, payload, qos=qos, retain=retain)

    async def peek(self, limit: int = 1, *, after_id: int = 0) -> list[OutboxMessage]:
        return await self.run_sync(self.sync.peek, limit, after_id=after_id)

    async def ack(self, *ids: int) -> int:
        return await self.run_sync(self.sync.ack, *ids)

    async def statistics(self) -> StoreStatistics:
        return await self.run_sync(self.sync.statistics)

    async def reserved_seq(self, doc: str, origin: str) -> int:
        return await self.run_sync(self.sync.reserved_seq, doc, origin)

    async def reserve_seqs(self, doc: str, origin: str, through: int) -> None:
        await self.run_sync(self.sync.reserve_seqs, doc, origin, through)

    async def probe(self, room: int = 0) -> None:
        await self.run_sync(self.sync.probe, room)
