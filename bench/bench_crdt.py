"""CRDT benchmarks: merges per second per type, and the size of a one-key
delta against the full state of a 10,000-key ORMap and a 10,000-key Yjs map.

Run: ``.venv/bin/python bench/bench_crdt.py`` (about 20-35 s on 2 cores).
Prints what it measured on this machine; asserts nothing about speed.
"""

from __future__ import annotations

import gc
import platform
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pycrdt

from vsm_edge.sync import (
    AWSet,
    CausalLWWRegister,
    CCounter,
    GCounter,
    LWWRegister,
    MVRegister,
    ORMap,
    PNCounter,
    Timestamp,
    YDoc,
)
from vsm_edge.sync._cbor import dumps

KEYS = 10_000
BUDGET_S = 1.0  # per measurement


def rate(label: str, deltas: list[Any], state: Any) -> Any:
    """Merge ``deltas`` one by one into ``state`` (cycling) for ~BUDGET_S."""
    n = 0
    start = time.perf_counter()
    deadline = start + BUDGET_S
    s = state
    while time.perf_counter() < deadline:
        for d in deltas:
            s = s.merge(d)
        n += len(deltas)
    elapsed = time.perf_counter() - start
    print(f"  {label:<58} {n / elapsed:>12,.0f} merges/s")
    return s


def fresh_deltas(make: Callable[[Any, int], Any], base: Any, count: int) -> list[Any]:
    """``count`` successive mutation deltas of node 'w' on top of ``base``."""
    out = []
    s = base
    for i in range(count):
        d = make(s, i)
        s = s.merge(d)
        out.append(d)
    return out


def build_map(n: int) -> ORMap:
    m = ORMap()
    for i in range(n):
        m = m.merge(m.update("a", f"key-{i:05d}", CausalLWWRegister,
                             lambda r, i=i: r.set("a", Timestamp(1_700_000_000_000 + i, 0, "a"),
                                                  {"temp": 21.5, "ok": True})))
    return m


def main() -> None:
    print(f"bench_crdt on {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}")
    print("\nMerges/s (one mutation delta at a time into a replica):")
    rate("GCounter (8 nodes)",
         fresh_deltas(lambda s, i: s.increment(f"n{i % 8}"), GCounter(), 200), GCounter())
    rate("PNCounter (8 nodes)",
         fresh_deltas(lambda s, i: s.increment(f"n{i % 8}", 1 if i % 3 else -1), PNCounter(),
                      200), PNCounter())
    rate("LWWRegister",
         fresh_deltas(lambda s, i: s.set(Timestamp(10 + i, 0, "w"), i), LWWRegister(), 200),
         LWWRegister())
    aw_base = AWSet()
    for i in range(1000):
        aw_base = aw_base.merge(aw_base.add("a", i))
    rate("AWSet add into a 1,000-element set",
         fresh_deltas(lambda s, i: s.add("w", 5000 + i), aw_base, 200), aw_base)
    rate("AWSet remove from a 1,000-element set",
         fresh_deltas(lambda s, i: s.remove("w", i), aw_base, 200), aw_base)
    rate("MVRegister write",
         fresh_deltas(lambda s, i: s.write("w", i), MVRegister(), 200), MVRegister())
    rate("CausalLWWRegister set",
         fresh_deltas(lambda s, i: s.set("w", Timestamp(10 + i, 0, "w"), i),
                      CausalLWWRegister(), 200), CausalLWWRegister())
    rate("CCounter increment (8 nodes)",
         fresh_deltas(lambda s, i: s.increment(f"n{i % 8}"), CCounter(), 200), CCounter())

    t0 = time.perf_counter()
    big = build_map(KEYS)
    build_s = time.perf_counter() - t0
    print(f"  (built a {KEYS:,}-key ORMap of CausalLWWRegisters by {KEYS:,} update+merge steps "
          f"in {build_s:.2f} s: {KEYS / build_s:,.0f} steps/s while growing)")
    one_key = fresh_deltas(
        lambda s, i: s.update("w", f"key-{(i * 37) % KEYS:05d}", CausalLWWRegister,
                              lambda r: r.set("w", Timestamp(1_800_000_000_000 + i, 0, "w"),
                                              {"temp": 22.0, "ok": False})), big, 200)
    after = rate(f"ORMap: one-key LWW overwrite into a {KEYS:,}-key map", one_key, big)
    nested = fresh_deltas(
        lambda s, i: s.update("w", f"key-{i % KEYS:05d}", AWSet, lambda t: t.add("w", i)),
        big, 200)
    rate(f"ORMap: one-key nested AWSet add into a {KEYS:,}-key map", nested, big)
    # What a copy-on-write dict state would pay per merge, for comparison.
    flat = dict(big._index.items())
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < BUDGET_S / 3:
        dict(flat)
        reps += 1
    print(f"  {'(reference: copying a 10k-entry dict, per copy)':<58} "
          f"{(time.perf_counter() - t0) / reps * 1e6:>12,.1f} us")
    removals = fresh_deltas(lambda s, i: s.remove("w", f"key-{i:05d}"), big, 200)
    rate(f"ORMap: one-key removal from a {KEYS:,}-key map", removals, big)

    # Anti-entropy on the big map: a peer that lacks the last 200 writes.
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < BUDGET_S:
        after.delta_since(big.digest())
        reps += 1
    print(f"  {'ORMap delta_since (peer lacks 200 one-key writes)':<58} "
          f"{reps / (time.perf_counter() - t0):>12,.0f} calls/s")
    t0 = time.perf_counter()
    reps = 0
    while time.perf_counter() - t0 < BUDGET_S:
        full = big.merge(after)
        reps += 1
    print(f"  {'ORMap full-state merge of two 10k-key replicas (200 apart)':<58} "
          f"{reps / (time.perf_counter() - t0):>12,.0f} merges/s")
    assert full == big.merge(after.delta_since(big.digest())) == after

    docs = YDoc({"m": pycrdt.Map}, client_id=1)
    remote = YDoc({"m": pycrdt.Map}, client_id=2)
    y_deltas = [docs.mutate(lambda y, i=i: y.root("m").__setitem__(f"k{i % 50}", i))
                for i in range(200)]
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < BUDGET_S:
        r = YDoc({"m": pycrdt.Map}, client_id=3)
        for d in y_deltas:
            r.merge(d)
        n += len(y_deltas)
    print(f"  {'YDoc: one-key Yjs map update':<58} "
          f"{n / (time.perf_counter() - t0):>12,.0f} merges/s")
    del remote

    print(f"\nOne-key delta vs full state, {KEYS:,} keys (CBOR / Yjs update bytes):")
    state_bytes = len(dumps(after.to_cbor()))
    delta = after.update("z", "key-00042", CausalLWWRegister,
                         lambda r: r.set("z", Timestamp(1_900_000_000_000, 0, "z"),
                                         {"temp": 23.0, "ok": True}))
    delta_bytes = len(dumps(delta.to_cbor()))
    print(f"  ORMap (CausalLWWRegister values): full {state_bytes:,} B, one-key delta "
          f"{delta_bytes:,} B, ratio {100 * delta_bytes / state_bytes:.3f} %")
    since = after.merge(delta).delta_since(after.digest())
    print(f"  ORMap delta_since(peer missing that one write): "
          f"{len(dumps(since.to_cbor())):,} B")

    ydoc = YDoc({"m": pycrdt.Map}, client_id=7)
    ydoc.mutate(lambda y: y.root("m").update(
        {f"key-{i:05d}": {"temp": 21.5, "ok": True} for i in range(KEYS)}))
    y_state = len(dumps(ydoc.to_cbor()))
    before = ydoc.digest()
    y_delta = ydoc.mutate(lambda y: y.root("m").__setitem__("key-00042", {"temp": 23.0,
                                                                         "ok": True}))
    y_delta_bytes = len(dumps(y_delta.to_cbor()))
    print(f"  Yjs map (pycrdt {pycrdt.__version__}): full {y_state:,} B, one-key delta "
          f"{y_delta_bytes:,} B, ratio {100 * y_delta_bytes / y_state:.3f} %")
    y_since = len(dumps(ydoc.delta_since(before).to_cbor()))
    print(f"  Yjs delta_since(state vector before the write): {y_since:,} B "
          f"(carries the whole delete set)")

    gc.collect()
    tracemalloc.start()
    kept = build_map(KEYS)
    gc.collect()
    used, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"\nMemory of a {KEYS:,}-key ORMap state (tracemalloc): {used / 1e6:.1f} MB, "
          f"{used / KEYS:,.0f} B per key ({len(kept):,} entries)")


if __name__ == "__main__":
    main()
