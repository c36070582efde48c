"""HLC stamps per second: local events (now) and receives (update).

Run: .venv/bin/python bench/bench_hlc.py [--seconds S]
Prints what it measured on this machine; no targets are asserted.
"""

from __future__ import annotations

import argparse
import os
import time

from vsm_edge.sync import HybridLogicalClock, MemoryHighWaterMark, Timestamp, wall_clock_ms


def rate(fn, seconds: float) -> tuple[float, int]:
    n = 0
    batch = 10_000
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for _ in range(batch):
            fn()
        n += batch
    return n / (time.perf_counter() - start), n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (default 2)")
    args = parser.parse_args()
    print(f"bench_hlc: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    clock = HybridLogicalClock("n1", wall_clock_ms)
    per_s, n = rate(clock.now, args.seconds)
    print(f"now() with the system clock, no persistence:   {per_s:12,.0f} stamps/s ({n:,} stamps)")

    mark = MemoryHighWaterMark()
    persisted = HybridLogicalClock("n1", wall_clock_ms, high_water=mark)
    per_s, n = rate(persisted.now, args.seconds)
    print(f"now() with a high-water mark (in memory):       {per_s:12,.0f} stamps/s "
          f"({mark.writes} ceiling writes)")

    receiver = HybridLogicalClock("n2", wall_clock_ms)
    remote = Timestamp(wall_clock_ms(), 7, "n1")
    per_s, n = rate(lambda: receiver.update(remote), args.seconds)
    print(f"update(remote) (receive rule):                  {per_s:12,.0f} stamps/s")

    stamp = clock.now()
    per_s, n = rate(lambda: Timestamp.unpack(stamp.packed, "n1"), args.seconds)
    print(f"pack + unpack a stamp:                          {per_s:12,.0f} round trips/s")


if __name__ == "__main__":
    main()
