"""A child process for the kill -9 test: writes to a store and acknowledges on stdout.

``python -m support.store_writer DB SYNCHRONOUS`` opens the store, recovers
what it holds (snapshot + uncovered log), prints ``ready N`` with the next id
to write, then loops forever: one transaction logs delta ``i`` (a JSON blob
with ``i`` and an HLC stamp) and enqueues an outbox message for it, and only
*after* the commit returned prints ``i``. Every 20 ids it snapshots the union
of ids, compacts the log with a real join, and acks the oldest outbox messages,
so a kill can land in any of those paths too. The parent kills it with SIGKILL.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from vsm_edge.sync import HybridLogicalClock, Store, StoreConfig

DOC = "doc"
ORIGIN = "w"
TOPIC = "vsm/test/d/w"
OUTBOX_KEEP = 40


def join(blobs: Sequence[bytes]) -> bytes:
    ids: set[int] = set()
    stamps: list[int] = []
    for blob in blobs:
        obj = json.loads(blob)
        ids.update(obj["ids"])
        stamps.append(obj["hlc"])
    return json.dumps({"ids": sorted(ids), "hlc": max(stamps)}).encode()


def recover(store: Store) -> set[int]:
    ids: set[int] = set()
    snap = store.get_snapshot(DOC)
    if snap is not None:
        ids.update(json.loads(snap.state))
    for entry in store.uncovered_deltas(DOC):
        ids.update(json.loads(entry.delta)["ids"])
    return ids


def main(argv: list[str]) -> None:
    path, synchronous = argv[0], argv[1]
    assert synchronous in ("FULL", "NORMAL")
    config = StoreConfig(synchronous=synchronous, log_max_entries=30, join_max_bytes=4096)  # type: ignore[arg-type]
    store = Store.open(path, config)
    clock = HybridLogicalClock(ORIGIN, high_water=store.high_water, reserve_ms=5)
    ids = recover(store)
    i = max(ids, default=0) + 1
    print(f"ready {i}", flush=True)
    while True:
        stamp = clock.now().packed
        blob = json.dumps({"ids": [i], "hlc": stamp}).encode()
        with store.transaction():
            store.append_delta(DOC, ORIGIN, i, i, blob)
            store.enqueue(TOPIC, str(i).encode())
        ids.add(i)
        print(i, flush=True)  # acknowledged: the commit returned
        if i % 20 == 0:
            store.put_snapshot(
                DOC, json.dumps(sorted(ids)).encode(), digest=b"d%d" % i, cover={ORIGIN: i - 5}
            )
            store.compact(DOC, join)
            head = store.peek(10)
            if head and int(head[-1].payload) <= i - OUTBOX_KEEP:
                store.ack(*(m.id for m in head))
        i += 1


if __name__ == "__main__":
    main(sys.argv[1:])
