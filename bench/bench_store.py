"""Cost of a durable commit in the node store, on this machine's disk.

Prints calls/s (each mutating call is one commit) and deltas/s for
single-delta transactions and batched ones (FULL and NORMAL), outbox
enqueue+ack round trips, the repair query, and the Trio wrapper's overhead.
Each figure is measured for a bounded time.

    python bench/bench_store.py [--dir DIR] [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from vsm_edge.sync import AsyncStore, Store, StoreConfig

DELTA = os.urandom(200)  # a typical one-key delta inside its envelope is ~100-300 bytes


def measure(label: str, seconds: float, step: Callable[[], int]) -> None:
    """Run ``step`` (returns items done) until ``seconds`` pass; print rates."""
    done = calls = 0
    lat: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        done += step()
        lat.append(time.perf_counter() - t0)
        calls += 1
    elapsed = time.perf_counter() - start
    lat.sort()
    p50 = lat[len(lat) // 2] * 1e3
    p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
    print(
        f"{label:<46} {calls / elapsed:>9.0f} calls/s {done / elapsed:>9.0f} items/s"
        f"   p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"
    )


def bench_commits(base: Path, seconds: float) -> None:
    for sync in ("FULL", "NORMAL"):
        for batch in (1, 10, 100):
            path = base / f"commit-{sync}-{batch}.db"
            with Store.open(path, StoreConfig(synchronous=sync)) as s:  # type: ignore[arg-type]
                seq = [0]

                def step(s: Store = s, batch: int = batch, seq: list[int] = seq) -> int:
                    with s.transaction():
                        for _ in range(batch):
                            seq[0] += 1
                            s.append_delta("doc", "node-a", seq[0], seq[0], DELTA)
                    return batch

                measure(f"append_delta {sync:<6} batch {batch:>3}", seconds, step)


def bench_outbox(base: Path, seconds: float) -> None:
    for sync in ("FULL", "NORMAL"):
        with Store.open(base / f"outbox-{sync}.db", StoreConfig(synchronous=sync)) as s:  # type: ignore[arg-type]

            def step(s: Store = s) -> int:
                s.ack(s.enqueue("vsm/m/d/node-a", DELTA))
                return 1

            measure(f"outbox enqueue+ack {sync:<6} (2 commits)", seconds, step)


def bench_query(base: Path, seconds: float) -> None:
    with Store.open(base / "query.db") as s:
        with s.transaction():
            for origin in range(20):
                for i in range(1, 1001):
                    s.append_delta("doc", f"node-{origin}", i, i, DELTA)
        after = [900]

        def step(s: Store = s) -> int:
            run = s.deltas_after("doc", "node-7", after[0])
            return len(run.entries)

        measure("deltas_after (100 of 20k entries)", seconds, step)


def bench_async(base: Path, seconds: float) -> None:
    async def main() -> None:
        async with await AsyncStore.open(base / "async.db") as s:
            lat: list[float] = []
            seq = 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                seq += 1
                t0 = time.perf_counter()
                await s.append_delta("doc", "node-a", seq, seq, DELTA)
                lat.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            print(
                f"{'AsyncStore.append_delta FULL batch   1':<46} {seq / elapsed:>9.0f} calls/s"
                f"{'':>20}   p50 {statistics.median(lat) * 1e3:6.3f} ms"
            )

    trio.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", default=None, help="directory on the disk to measure")
    parser.add_argument("--seconds", type=float, default=1.5, help="time per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vsm-bench-store-") as tmp:
        base = Path(tmp)
        print(f"store benchmark in {base} ({args.seconds} s per figure, 200-byte deltas)")
        bench_commits(base, args.seconds)
        bench_outbox(base, args.seconds)
        bench_query(base, args.seconds)
        bench_async(base, args.seconds)


if __name__ == "__main__":
    main()
