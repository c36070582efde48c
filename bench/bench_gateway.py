"""Ingress benchmark: Bloom filters (ours vs rbloom), the gateway, the int8 arbitrator.

Prints what it measured; asserts nothing. Every loop is bounded in count.

    python bench/bench_gateway.py            # everything (about a minute or two)
    python bench/bench_gateway.py --quick    # smaller counts, 5 held-out episodes

rbloom (``pip install rbloom``) is optional: without it that column is skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from vsm_edge.models import (
    CLASSES,
    FEATURE_NAMES,
    BloomFilter,
    Gateway,
    GatewayConfig,
    ReplayConfig,
    derive_key,
    false_positive_rate,
    load_arbitrator,
)
from vsm_edge.models.traffic_sim import (
    SECRET,
    make_dataset,
    score,
    simulate_episode,
)

KEY = derive_key(b"bench mesh secret, 32 bytes long", "nonce")


def pct(samples: Sequence[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000.0  # ns -> us


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}/s"


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# -- 1. Bloom filters -------------------------------------------------------------


def bench_bloom(capacity: int, probes: int) -> None:
    print(f"\n== Bloom filters: capacity {capacity:,}, target fp 1%, {probes:,} probes")
    rng = random.Random(1)
    members = [rng.randbytes(16) for _ in range(capacity)]
    others = [rng.randbytes(17) for _ in range(probes)]  # never members
    mixed = members[: probes // 2] + others[: probes // 2]

    ours = BloomFilter.for_capacity(capacity, 0.01, KEY)
    t_add = best_of(3, lambda: ours.add_many(members))
    t_batch = best_of(3, lambda: ours.contains_many(mixed))
    t_scalar = best_of(1, lambda: [x in ours for x in mixed])
    fp_ours = float(ours.contains_many(others).mean())
    theory = false_positive_rate(ours.num_bits, ours.num_hashes, capacity)
    print(f"  ours     m={ours.num_bits:,} k={ours.num_hashes} keyed BLAKE2b")
    print(f"    add_many        {rate(capacity, t_add)}")
    print(f"    contains_many   {rate(len(mixed), t_batch)}  (vectorised, keyed)")
    print(f"    `x in f` loop   {rate(len(mixed), t_scalar)}  (per-message path)")
    print(f"    fp at capacity  measured {fp_ours:.5f}  theory {theory:.5f}")

    try:
        import rbloom
    except ImportError:
        print("  rbloom   not installed (pip install rbloom): skipped")
        return
    try:
        ver = importlib.metadata.version("rbloom")
    except importlib.metadata.PackageNotFoundError:
        ver = "?"

    def keyed(item: bytes) -> int:
        digest = hashlib.blake2b(item, digest_size=16, key=KEY).digest()
        return int.from_bytes(digest, "little", signed=True)

    for label, hash_func in (("default hash()", None), ("keyed BLAKE2b hash_func", keyed)):
        if hash_func is None:
            rb = rbloom.Bloom(capacity, 0.01)
        else:
            rb = rbloom.Bloom(capacity, 0.01, hash_func=hash_func)
        t_add = best_of(3, lambda rb=rb: rb.update(members))
        t_look = best_of(3, lambda rb=rb: [x in rb for x in mixed])
        fp = sum(x in rb for x in others) / len(others)
        try:
            rb.save_bytes()
            serialisable = "yes"
        except (ValueError, TypeError) as exc:
            serialisable = f"no ({exc})"
        print(f"  rbloom {ver} with {label}: m={rb.size_in_bits:,}")
        print(f"    update          {rate(capacity, t_add)}")
        print(f"    `x in f` loop   {rate(len(mixed), t_look)}  (rbloom has no batch lookup)")
        print(f"    fp at capacity  measured {fp:.5f}")
        print(f"    save_bytes      {serialisable}")


# -- 2. the gateway -----------------------------------------------------------------


def bench_gateway(arbitrator: object, episodes: int) -> None:
    print(f"\n== Gateway decisions (int8 arbitrator on MAYBE), {episodes} simulated episodes")
    zone_key = derive_key(SECRET, "zone")
    traffic = []
    zones = []
    for seed in range(9_000, 9_000 + episodes):
        events, zone = simulate_episode(seed)
        traffic.append([e.inbound for e in events])
        zones.append(zone)

    def run(config: GatewayConfig, title: str) -> None:
        latencies: list[int] = []
        maybe_lat: list[int] = []
        counts: dict[str, int] = {}
        total_time = 0.0
        for events, zone in zip(traffic, zones, strict=True):
            zone_filter = BloomFilter.for_capacity(max(16, 2 * len(zone)), 1e-9, zone_key)
            zone_filter.add_many(zone)
            gateway = Gateway(
                zone=zone_filter,
                replay_key=derive_key(SECRET, "nonce"),
                arbitrator=arbitrator,  # type: ignore[arg-type]
                config=config,
                now_ms=events[0].received_ms,
            )
            clock = time.perf_counter_ns
            start = time.perf_counter()
            for msg in events:
                t0 = clock()
                decision = gateway.decide(msg)
                dt = clock() - t0
                latencies.append(dt)
                if decision.maybe:
                    maybe_lat.append(dt)
            total_time += time.perf_counter() - start
            for k, v in gateway.statistics()["reasons"].items():  # type: ignore[attr-defined]
                counts[k] = counts.get(k, 0) + v
        n = len(latencies)
        print(f"  {title}: {n:,} decisions, {rate(n, total_time)} (loop included)")
        print(
            f"    latency us: p50 {pct(latencies, 0.5):.1f}  p99 {pct(latencies, 0.99):.1f}"
            f"  p99.9 {pct(latencies, 0.999):.1f}  max {max(latencies) / 1000:.0f}"
        )
        if maybe_lat:
            print(
                f"    MAYBE (arbitrator) decisions: {len(maybe_lat):,}, latency us p50 "
                f"{pct(maybe_lat, 0.5):.1f}  p99 {pct(maybe_lat, 0.99):.1f}"
            )
        print(f"    reasons: {json.dumps(dict(sorted(counts.items())))}")

    run(
        GatewayConfig(replay=ReplayConfig(capacity=20_000, fp_rate=1e-3, exact_capacity=2_048)),
        "deployment-like filters (20k/period, fp 1e-3, exact 2048)",
    )
    run(
        GatewayConfig(replay=ReplayConfig(capacity=1, fp_rate=0.5, exact_capacity=0)),
        "saturated 8-bit nonce filter, no exact set (every unproven hit a MAYBE)",
    )


# -- 3. the arbitrator ---------------------------------------------------------------


def bench_arbitrator(arbitrator: object, calls: int) -> None:
    from vsm_edge.models import Arbitrator

    assert isinstance(arbitrator, Arbitrator)
    print(f"\n== Arbitrator inference ({arbitrator.runtime}), {calls:,} calls")
    rng = np.random.default_rng(2)
    meta = arbitrator.metadata
    noise = rng.standard_normal((256, len(FEATURE_NAMES)))
    vectors = np.asarray(meta["mean"]) + noise * np.asarray(meta["std"])
    rows = [v.tolist() for v in vectors]
    quantized = [arbitrator.quantize(r).copy() for r in rows]
    clock = time.perf_counter_ns
    invoke: list[int] = []
    full: list[int] = []
    for i in range(calls):
        q = quantized[i % 256]
        t0 = clock()
        arbitrator.invoke_quantized(q)
        invoke.append(clock() - t0)
    for i in range(calls):
        r = rows[i % 256]
        t0 = clock()
        arbitrator.classify(r)
        full.append(clock() - t0)
    print(
        f"  int8 set_tensor+invoke+get_tensor: p50 {pct(invoke, 0.5):.2f} us  "
        f"p99 {pct(invoke, 0.99):.2f} us  mean {statistics.fmean(invoke) / 1000:.2f} us"
    )
    print(
        f"  classify (standardise+quantize+invoke+dequantize): p50 {pct(full, 0.5):.2f} us  "
        f"p99 {pct(full, 0.99):.2f} us"
    )


def bench_accuracy(arbitrator: object, limit: int | None) -> None:
    from vsm_edge.models import Arbitrator

    assert isinstance(arbitrator, Arbitrator)
    seeds = list(arbitrator.metadata.get("held_out_seeds", []))[:limit]
    print(f"\n== Held-out accuracy of the shipped int8 model ({len(seeds)} held-out episodes)")
    t = time.perf_counter()
    data = make_dataset(seeds)
    figures = score(data.y, arbitrator.predict(data.x), data.profiles)
    took = time.perf_counter() - t
    print(f"  {figures['samples']:,} vectors ({took:.0f} s to simulate and score)")
    print(f"  accuracy {figures['accuracy']:.4f}")
    for name in CLASSES:
        p = figures["precision"][name]  # type: ignore[index]
        r = figures["recall"][name]  # type: ignore[index]
        d = figures["deny_rate"][name]  # type: ignore[index]
        n = figures["support"][name]  # type: ignore[index]
        print(f"  {name:10s} n={n:6d}  precision {p:.4f}  recall {r:.4f}  denied {d:.4f}")
    print(f"  honest peers with skewed clocks allowed: {figures['allow_rate_honest_skewed']:.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts")
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cores")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"numpy {np.__version__}; load average {load} (the machine is shared: read p99s with it)")
    bench_bloom(50_000 if args.quick else 200_000, 50_000 if args.quick else 200_000)
    arbitrator = load_arbitrator()
    bench_gateway(arbitrator, 2 if args.quick else 6)
    bench_arbitrator(arbitrator, 20_000 if args.quick else 100_000)
    bench_accuracy(arbitrator, 5 if args.quick else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
