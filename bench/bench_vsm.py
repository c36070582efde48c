"""VSM benchmarks: event-bus throughput S1 -> S4, algedonic latency to S5, start to first event.

Prints what it measured (never asserts a timing). Bounded: about half a minute.

    python bench/bench_vsm.py            # all three
    python bench/bench_vsm.py --quick    # smaller counts

Throughput runs on one core (one Trio thread, one process: the producing
unit, S3 admission, the bus and S4 share it), three times; the median and the
best run are printed (the machine's two cores are shared, so single runs
vary), with Python's default GC thresholds and with a raised first threshold
(the events held in the S4 window make the cyclic GC run often). The S1
budget is raised for the throughput run so that S3 attenuation does not cap
it: it measures the bus and the subsystems' work, not the budget.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import trio

from vsm_edge.agent import ReadingSpec, Runtime, UnitContext, parse_config, unit


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- 1. throughput ---------------------------------------------------------------------


async def throughput(n: int, chunk: int) -> dict[str, Any]:
    marks: dict[str, float] = {}
    samples: list[tuple[float, int]] = []  # (time, events S4 has taken) during the run
    holder: dict[str, Runtime] = {}

    @unit(readings=[ReadingSpec("v", resolution=1.0)])
    async def producer(ctx: UnitContext) -> None:
        # a unit emitting as fast as it can, yielding to Trio every `chunk` readings
        await trio.sleep(0.1)  # let every subsystem reach its receive loop
        s4 = holder["rt"].bus.channels["s4"]
        marks["t0"] = time.perf_counter()
        emit = ctx.emit
        for start in range(0, n, chunk):
            for i in range(start, min(n, start + chunk)):
                emit("v", float(i % 97))
            await trio.lowlevel.checkpoint()
            samples.append((time.perf_counter(), s4.statistics().delivered))
        marks["published"] = time.perf_counter()
        await trio.sleep_forever()

    cfg = parse_config(
        {
            "node": {"id": "bench"},
            "status": {"enabled": False},
            "s3": {"budgets": {"s1": {"capacity": 1e12, "refill_per_s": 1e12}}},
        }
    )
    rt = holder["rt"] = Runtime(cfg, units={"producer": producer()}, write_state=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        s4 = rt.bus.channels["s4"]
        deadline = trio.current_time() + 120  # bounded, whatever happens
        while (st := s4.statistics()).delivered + st.dropped < n:
            if trio.current_time() > deadline:
                raise RuntimeError(f"S4 saw {st.delivered} of {n} events in 120 s")
            await trio.sleep(0.001)
        t_end = time.perf_counter()
        stats = s4.statistics()
        emitted = rt.units["producer"].emitted
        rt.stop()
    assert emitted == n
    # steady state: between a quarter and three quarters of the run, every event
    # S4 took had been stamped, admitted, routed and reordered on the way
    (ta, da), (tb, db) = samples[len(samples) // 4], samples[3 * len(samples) // 4]
    return {
        "events": n,
        "publish_rate": n / (marks["published"] - marks["t0"]),
        "delivery_rate": (db - da) / (tb - ta),
        "end_to_end_s": t_end - marks["t0"],
        "window_s": stats.window_s,
        "high_water": stats.high_water,
        "dropped": stats.dropped,
        "released_early": stats.released_early,
    }


# -- 2. algedonic latency --------------------------------------------------------------------


async def algedonic_latency(n: int, spacing_s: float) -> dict[str, Any]:
    cfg = parse_config(
        {
            "node": {"id": "bench"},
            "status": {"enabled": False},
            # measure delivery, not storm limiting or adaptation
            "algedonic": {"storm_signals": 1_000_000, "salience": 0.0, "max_alarms": 65536},
        }
    )
    rt = Runtime(cfg, write_state=False)
    results: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        for label, intensity in (
            ("pain 0.5 (10 ms window)", 0.5),
            ("critical 0.99 (bypass)", 0.99),
        ):
            rt.algedonic_latencies.clear()
            for i in range(n):
                rt.raise_signal(f"bench.s{i % 64}", intensity, "bench")
                await trio.sleep(spacing_s)
            await trio.sleep(0.05)
            lat = [x * 1000 for x in rt.algedonic_latencies]
            results[label] = {
                "n": len(lat),
                "p50_ms": statistics.median(lat),
                "p99_ms": pct(lat, 0.99),
                "max_ms": max(lat),
            }
        rt.stop()
    return results


# -- 3. start to first event -------------------------------------------------------------------

CHILD = r"""
import time, sys
t_start = float(sys.argv[1])
import trio
from vsm_edge.agent import Runtime, parse_config
t_imported = time.time()
async def main():
    cfg = parse_config({"node": {"id": "bench"}, "status": {"enabled": False},
                        "units": [{"name": "t1", "kind": "simulated-sensor"}]})
    rt = Runtime(cfg, write_state=False)
    t_run = time.time()
    async with trio.open_nursery() as n:
        await n.start(rt.run)
        while rt.first_event_at is None:
            await trio.sleep(0.0005)
        t_first = time.time()
        rt.stop()
    print(t_imported - t_start, t_first - t_run, t_first - t_start)
trio.run(main)
"""


def start_to_first_event(runs: int) -> dict[str, Any]:
    imports, run_to_first, exec_to_first = [], [], []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, repr(time.time())],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.split()
        a, b, c = map(float, out)
        imports.append(a)
        run_to_first.append(b)
        exec_to_first.append(c)
    return {
        "runs": runs,
        "run_to_first_event_ms_median": statistics.median(run_to_first) * 1000,
        "run_to_first_event_ms_max": max(run_to_first) * 1000,
        "process_start_to_first_event_ms_median": statistics.median(exec_to_first) * 1000,
        "process_start_to_first_event_ms_max": max(exec_to_first) * 1000,
        "imports_ms_median": statistics.median(imports) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 100_000 if args.quick else 400_000
    print(
        f"python {sys.version.split()[0]}, trio {trio.__version__}, pid {os.getpid()}, "
        f"load average {os.getloadavg()[0]:.2f} (2 cores shared)"
    )

    for gc_label, threshold in (
        ("default GC thresholds", None),
        ("gc.set_threshold(10_000)", 10_000),
    ):
        saved = gc.get_threshold()
        if threshold is not None:
            gc.set_threshold(threshold, saved[1], saved[2])
        try:
            runs = [trio.run(throughput, n, 2000) for _ in range(3)]
        finally:
            gc.set_threshold(*saved)
        r = sorted(runs, key=lambda x: x["delivery_rate"])[1]
        if threshold is None:
            print(
                f"\n[1] event bus S1 -> S4, one core, {r['events']} readings per run through S3 "
                f"admission, the bus (HLC stamp, S4 channel with its {r['window_s'] * 1000:.0f} ms "
                f"reorder window) and S4 (variety + EWMA/z-score anomaly per reading); 3 runs each"
            )
        print(f"    {gc_label}:")
        for key, label in (
            ("publish_rate", "S1 publish rate"),
            ("delivery_rate", "S1 -> S4 sustained"),
        ):
            values = sorted(x[key] for x in runs)
            print(
                f"      {label:<19} median {values[1]:>10,.0f} events/s   "
                f"best {values[2]:>10,.0f} events/s"
            )
        print(
            f"      median run: end to end incl. the window {r['end_to_end_s']:.3f} s, "
            f"S4 high water {r['high_water']}, released early {r['released_early']}, "
            f"dropped {r['dropped']}"
        )

    lat = trio.run(algedonic_latency, 400 if args.quick else 1000, 0.002)
    print("\n[2] algedonic latency, raise -> local S5 (real clock, one signal every 2 ms)")
    for label, x in lat.items():
        print(
            f"    {label:<26} n={x['n']:<5} p50 {x['p50_ms']:.3f} ms   p99 {x['p99_ms']:.3f} ms   "
            f"max {x['max_ms']:.3f} ms"
        )

    s = start_to_first_event(3 if args.quick else 5)
    print(f"\n[3] start to first event ({s['runs']} fresh processes, one simulated sensor)")
    print(
        f"    Runtime.run() -> first event   median {s['run_to_first_event_ms_median']:.1f} ms, "
        f"max {s['run_to_first_event_ms_max']:.1f} ms"
    )
    print(
        "    process exec -> first event    median "
        f"{s['process_start_to_first_event_ms_median']:.1f} ms, "
        f"max {s['process_start_to_first_event_ms_max']:.1f} ms "
        f"(imports {s['imports_ms_median']:.0f} ms)"
    )


if __name__ == "__main__":
    main()
