"""Reading latency from the device simulator to an S1 event, through the real unit.

The path measured: ``vsm-edge simulate-device`` (its own process, a real
pseudo-terminal) -> the agent's ``firmware-bridge`` unit (SerialBridge, the
session, the unit's reading loop) -> ``ctx.emit`` -> S3 admission -> the
HLC-stamped event on the runtime's bus. The simulator's latency probe is a
sensor whose value is CLOCK_MONOTONIC in ns, taken just before the frame starts
"transmitting"; with ``--pace-baud 115200`` the simulator then holds the frame
for its time on a real 115200 baud line (10 bits a byte; a pty has no baud rate
of its own). The runtime's ``on_reading`` hook runs once the event is on the
bus and compares with the same clock. (S4 sees the event one S1 reorder window,
50 ms by default, later: by design, not measured here.)

Also measured without pacing (the software path alone), and the bridge alone
(SerialBridge.readings, no runtime) for comparison with bench_bridge.py.

Usage: python bench/bench_device_unit.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import trio

from vsm_edge.agent import Runtime, parse_config
from vsm_edge.bridge import Reading, SerialBridge, encode_frame
from vsm_edge.sync import Timestamp

INTERVAL_S = 0.02
SKIP = 5  # the first readings may have queued during the handshake


def _simulator(link: str, samples: int, pace: int | None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "vsm_edge.agent", "simulate-device", "--no-sensors",
           "--latency-probe", "--interval", str(INTERVAL_S), "--link", link,
           "--duration", str(samples * INTERVAL_S + 60)]  # fmt: skip
    if pace:
        cmd += ["--pace-baud", str(pace)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


async def through_the_unit(samples: int, pace: int | None) -> tuple[list[float], dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "ttyBENCH")
        proc = _simulator(link, samples, pace)
        try:
            assert proc.stdout is not None
            await trio.to_thread.run_sync(proc.stdout.readline)
            cfg = parse_config(
                {
                    "node": {"id": "bench", "data_dir": tmp},
                    "status": {"enabled": False},
                    "units": [{"name": "mcu", "kind": "firmware-bridge",
                               "options": {"device": link}}],
                }
            )  # fmt: skip
            runtime = Runtime(cfg, write_state=False)
            latencies: list[float] = []
            skip = SKIP
            done = trio.Event()

            def on_reading(unit: str, reading: str, value: float, stamp: Timestamp) -> None:
                nonlocal skip
                now = time.monotonic_ns()
                if reading != "probe" or done.is_set():
                    return
                if skip:
                    skip -= 1
                    return
                latencies.append((now - int(value)) / 1e6)
                if len(latencies) >= samples:
                    done.set()

            runtime.on_reading.append(on_reading)
            async with trio.open_nursery() as nursery:
                await nursery.start(runtime.run)
                with trio.fail_after(samples * INTERVAL_S * 3 + 30):
                    await done.wait()
                entry = runtime.status().s1.units["mcu"].to_json()
                runtime.stop()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return latencies, entry


async def bridge_alone(samples: int, pace: int | None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "ttyBENCH")
        proc = _simulator(link, samples, pace)
        try:
            assert proc.stdout is not None
            await trio.to_thread.run_sync(proc.stdout.readline)
            latencies: list[float] = []
            async with trio.open_nursery() as nursery:
                bridge = SerialBridge(link)
                await nursery.start(bridge.run)
                await bridge.wait_connected()
                skip = SKIP
                while len(latencies) < samples:
                    reading = await bridge.readings.receive()
                    now = time.monotonic_ns()
                    if skip:
                        skip -= 1
                        continue
                    latencies.append((now - int(reading.value)) / 1e6)
                nursery.cancel_scope.cancel()
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    return latencies


def summary(xs: list[float]) -> str:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=100)
    return (
        f"n={len(xs)} p50={q[49]:.3f} ms p90={q[89]:.3f} ms p99={q[98]:.3f} ms max={xs[-1]:.3f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100 samples per case instead of 500")
    args = ap.parse_args()
    samples = 100 if args.quick else 500
    print(f"bench_device_unit on {platform.python_implementation()} {platform.python_version()}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs; one probe reading every "
          f"{INTERVAL_S * 1000:.0f} ms; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
    probe = encode_frame(Reading(1000, 100, time.monotonic_ns(), 123456))
    wire_ms = len(probe) * 10 / 115200 * 1000
    print(f"probe frame: {len(probe)} bytes, {wire_ms:.3f} ms on a 115200 baud line")
    for pace in (115200, None):
        label = "paced at 115200 baud" if pace else "pty, no pacing      "
        lat, entry = trio.run(through_the_unit, samples, pace)
        rejected = entry["detail"]["bridge"]["session"]["frames_rejected"]
        print(f"simulator -> S1 event (firmware-bridge unit), {label}: {summary(lat)}"
              f"  [emitted {entry['emitted']}, attenuated {entry['attenuated']}, "
              f"frames rejected {rejected or 0}]")  # fmt: skip
        alone = trio.run(bridge_alone, samples, pace)
        print(f"simulator -> SerialBridge.readings (no runtime), {label}: {summary(alone)}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
