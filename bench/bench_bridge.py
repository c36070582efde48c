"""Firmware-bridge benchmarks; prints what it measured.

1. Frames decoded per second by the Python codec (one function call per frame,
   and through the streaming Connection and the HostSession fed 4 KiB chunks)
   and by the C reference codec (byte-at-a-time vb_rx_push, gcc -O2, one core).
2. Reading latency from the device simulator (a separate process on a real
   pseudo-terminal) to the moment a consumer of SerialBridge.readings (the S1
   side) holds the reading: the simulator stamps the reading's value with
   CLOCK_MONOTONIC just before it starts "transmitting", then holds the frame
   for its time on the wire at 115200 baud (10 bits a byte; a pty has no baud
   rate of its own); the consumer compares with the same clock. Also measured
   without pacing: the software path alone.

Usage: python bench/bench_bridge.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

from vsm_edge.bridge import (
    NEED_DATA,
    Channel,
    Connection,
    DeviceConfig,
    DeviceSession,
    HostSession,
    Reading,
    Role,
    SerialBridge,
    decode_frame,
    encode_frame,
)

ROOT = Path(__file__).resolve().parent.parent
C_DIR = ROOT / "firmware-bridge" / "c"
FRAME = encode_frame(Reading(1234, 1, 21.5, 123456))  # a typical reading: 21 bytes


def bench_python(n: int) -> dict[str, float]:
    body = FRAME[:-1]
    t0 = time.perf_counter()
    for _ in range(n):
        decode_frame(body)
    t1 = time.perf_counter()

    stream = FRAME * (4096 // len(FRAME))
    per_chunk = 4096 // len(FRAME)
    chunks = max(1, n // per_chunk)
    conn = Connection(Role.HOST)
    t2 = time.perf_counter()
    got = 0
    for _ in range(chunks):
        conn.receive_data(stream)
        while conn.next_event() is not NEED_DATA:
            got += 1
    t3 = time.perf_counter()
    assert got == chunks * per_chunk

    dev = DeviceSession(DeviceConfig("bench", "1", (Channel(1, "t", "", None, None),)))
    host = HostSession()
    dev.start(0.0)
    host.receive_data(dev.data_to_send(), 0.0)
    dev.receive_data(host.data_to_send(), 0.0)
    while host.next_event() is not NEED_DATA:
        pass
    seq_frames = b"".join(encode_frame(Reading(i % 65536, 1, 21.5, i)) for i in range(per_chunk))
    t4 = time.perf_counter()
    events = 0
    for _ in range(chunks):
        host.receive_data(seq_frames, 0.0)
        while host.next_event() is not NEED_DATA:
            events += 1
    t5 = time.perf_counter()
    return {
        "decode_frame_per_s": n / (t1 - t0),
        "connection_frames_per_s": got / (t3 - t2),
        "host_session_readings_per_s": events / (t5 - t4),
    }


def bench_c(n: int) -> dict[str, float] | None:
    gcc = shutil.which("gcc")
    if gcc is None:
        print("gcc not found: C benchmark skipped", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "vb_tool"
        subprocess.run(
            [gcc, "-std=c99", "-O2", "-I", str(C_DIR / "src"), str(C_DIR / "src" / "vsm_bridge.c"),
             str(C_DIR / "test" / "vb_tool.c"), "-o", str(exe)],
            check=True,
        )  # fmt: skip
        out = subprocess.run(
            [str(exe), "bench", str(n)], input=FRAME.hex() + "\n", capture_output=True,
            text=True, check=True,
        )  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout)
    return result


async def measure_latency(samples: int, interval: float, pace: int | None) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        link = os.path.join(tmp, "ttyBENCH")
        cmd = [sys.executable, "-m", "vsm_edge.bridge.simulator", "--no-sensors",
               "--latency-probe", "--interval", str(interval), "--link", link,
               "--duration", str(samples * interval + 30)]  # fmt: skip
        if pace:
            cmd += ["--pace-baud", str(pace)]
        proc = subprocess.Popen(  # noqa: ASYNC220 (starting it does not block)
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        try:
            assert proc.stdout is not None
            await trio.to_thread.run_sync(proc.stdout.readline)
            latencies: list[float] = []
            async with trio.open_nursery() as nursery:
                bridge = SerialBridge(link)
                await nursery.start(bridge.run)
                await bridge.wait_connected()
                skip = 5  # the first readings may have queued during the handshake
                while len(latencies) < samples:
                    reading = await bridge.readings.receive()
                    now = time.monotonic_ns()
                    if reading.unit_id.endswith("/probe"):
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
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    args = ap.parse_args()
    n = 50_000 if args.quick else 200_000
    print(f"frame under test: {len(FRAME)} bytes on the wire ({FRAME.hex()})")
    py = bench_python(n)
    print(f"python decode_frame (COBS+CRC+CBOR+schema): {py['decode_frame_per_s']:,.0f} frames/s")
    print(
        f"python Connection, 4 KiB chunks:            {py['connection_frames_per_s']:,.0f} frames/s"
    )
    rate = py["host_session_readings_per_s"]
    print(f"python HostSession -> ReadingReceived:      {rate:,.0f} readings/s")
    c = bench_c(n * 20)
    if c is not None:
        print(
            f"C vb_rx_push byte-by-byte decode (-O2):     {c['decode_frames_per_s']:,.0f} frames/s"
        )
        print(
            f"C vb_frame_encode (-O2):                    {c['encode_frames_per_s']:,.0f} frames/s"
        )
    probe = encode_frame(Reading(1000, 100, time.monotonic_ns(), None))
    wire = len(probe)
    ms = wire * 10 / 115200 * 1000
    print(f"115200 baud wire time of one probe frame ({wire} bytes): {ms:.3f} ms")
    samples = 100 if args.quick else 300
    for pace in (115200, None):
        lat = trio.run(measure_latency, samples, 0.02, pace)
        label = "paced at 115200 baud" if pace else "pty, no pacing     "
        print(f"latency simulator -> S1 reading, {label}: {summary(lat)}")


if __name__ == "__main__":
    main()
