"""A seeded, deterministic in-memory network that loses, duplicates and
reorders messages; for convergence tests of anything that gossips.

    net = NetSim(seed=7, loss=0.3, duplicate=0.2)
    net.send("a", "b", payload)
    for src, dst, payload in net.drain():   # random order, bounded
        ...

``deliver`` hands out one queued message picked at random (so order is never
FIFO), drops it with probability ``loss`` and, with probability
``duplicate``, leaves a copy queued to be delivered again later. Everything
is decided by ``random.Random(seed)``: the same seed and the same calls give
the same run. ``statistics()`` counts what happened.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["NetSim", "NetStats"]

P = TypeVar("P")


@dataclass
class NetStats:
    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    duplicated: int = 0


class NetSim(Generic[P]):
    def __init__(
        self,
        seed: int,
        *,
        loss: float = 0.2,
        duplicate: float = 0.1,
        max_queue: int = 100_000,
    ) -> None:
        if not (0 <= loss < 1 and 0 <= duplicate < 1):
            raise ValueError("loss and duplicate are probabilities below 1")
        self._rng = random.Random(seed)
        self.loss = loss
        self.duplicate = duplicate
        self.max_queue = max_queue
        self._queue: list[tuple[str, str, P]] = []
        self._stats = NetStats()

    def send(self, src: str, dst: str, payload: P) -> None:
        if len(self._queue) >= self.max_queue:
            raise OverflowError("NetSim queue is full (a test loop is unbounded?)")
        self._stats.sent += 1
        self._queue.append((src, dst, payload))

    def pending(self) -> int:
        return len(self._queue)

    def deliver(self) -> tuple[str, str, P] | None:
        """One message picked at random, or None when it was lost or the
        queue is empty (check ``pending()`` to tell them apart)."""
        if not self._queue:
            return None
        i = self._rng.randrange(len(self._queue))
        msg = self._queue[i]
        if self._rng.random() < self.duplicate:
            self._stats.duplicated += 1  # the copy stays queued
        else:
            self._queue[i] = self._queue[-1]
            self._queue.pop()
        if self._rng.random() < self.loss:
            self._stats.dropped += 1
            return None
        self._stats.delivered += 1
        return msg

    def drain(self, limit: int = 1_000_000) -> Iterator[tuple[str, str, P]]:
        """Deliver until the queue is empty (at most ``limit`` attempts)."""
        for _ in range(limit):
            if not self._queue:
                return
            msg = self.deliver()
            if msg is not None:
                yield msg
        raise RuntimeError("NetSim.drain did not finish within its limit")

    def statistics(self) -> NetStats:
        return NetStats(**vars(self._stats))
