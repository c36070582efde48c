"""MQTT transport benchmark: our Trio adapter vs raw paho (threaded loop), printed figures.

Every client runs in its own OS process (two paho clients in one process are
much slower: see DESIGN.md). Two measurements per broker and implementation:

- throughput: one process publishes N QoS 1 messages (20 in flight) to a topic
  another process subscribes to (QoS 1); printed are the publisher's rate until
  the last PUBACK and the subscriber's rate from first to last message (and
  how many the broker dropped, if it did);
- round trip: one process publishes a QoS 1 ping, a second echoes it back as a
  QoS 1 pong; printed are p50/p99 of the round trip over M sequential pings.

Brokers: a loopback Mosquitto started here, and the embedded amqtt broker.
Bounded: fixed counts, and every phase has a timeout.

    python bench/bench_mqtt.py                  # everything (a few minutes)
    python bench/bench_mqtt.py --messages 2000 --pings 300 --brokers mosquitto
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PHASE_TIMEOUT = 120.0
WINDOW = 20  # QoS 1 messages in flight, both implementations
WARMUP = 50
IDLE = 5.0  # a subscriber that hears nothing this long has all it will get


def emit(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


# --- roles: our adapter ---------------------------------------------------------------


def adapter_role(role: str, port: int, count: int, payload: int, protocol: str) -> None:
    import trio

    from vsm_edge.sync import MqttSettings, MqttTransport

    async def main() -> None:
        settings = MqttSettings(
            client_id=f"bench-{role}-{os.getpid()}",
            port=port,
            protocol=protocol,  # type: ignore[arg-type]
            max_inflight=WINDOW,
            incoming_capacity=4096,
        )
        t = MqttTransport(settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(t.run)
            with trio.fail_after(30):
                await t.wait_connected()
            if role == "sink":
                await t.subscribe("bench/t", qos=1)
                print("ready", flush=True)
                first = last = 0.0
                received = 0
                while received < count:
                    with trio.move_on_after(IDLE if received else PHASE_TIMEOUT) as idle:
                        await t.messages.receive()
                    if idle.cancelled_caught:
                        break  # the broker dropped some: report what came
                    last = time.perf_counter()
                    received += 1
                    if received == 1:
                        first = last
                emit({"received": received, "seconds": last - first})
            elif role == "pub":
                body = b"x" * payload
                next_i = 0

                async def worker() -> None:
                    nonlocal next_i
                    while next_i < count:
                        next_i += 1
                        await t.publish("bench/t", body, qos=1)

                start = time.perf_counter()
                async with trio.open_nursery() as workers:
                    for _ in range(WINDOW):
                        workers.start_soon(worker)
                emit({"sent": count, "seconds": time.perf_counter() - start})
            elif role == "echo":
                await t.subscribe("bench/ping", qos=1)
                print("ready", flush=True)
                for _ in range(count + WARMUP):
                    m = await t.messages.receive()
                    await t.publish("bench/pong", m.payload, qos=1)
            elif role == "ping":
                await t.subscribe("bench/pong", qos=1)
                rtts = []
                for i in range(count + WARMUP):
                    start = time.perf_counter()
                    await t.publish("bench/ping", i.to_bytes(4, "big") + b"x" * payload, qos=1)
                    await t.messages.receive()
                    if i >= WARMUP:
                        rtts.append(time.perf_counter() - start)
                emit({"rtts": rtts})
            nursery.cancel_scope.cancel()

    trio.run(main)


# --- roles: raw paho with its threaded loop ------------------------------------------------


def paho_role(role: str, port: int, count: int, payload: int, protocol: str) -> None:
    import queue

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    version = MQTTProtocolVersion.MQTTv311 if protocol == "3.1.1" else MQTTProtocolVersion.MQTTv5
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-paho-{role}-{os.getpid()}", protocol=version
    )
    client.max_inflight_messages_set(WINDOW)
    connected = threading.Event()
    inbox: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    acked = threading.Semaphore(0)
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.on_message = lambda c, u, m: inbox.put(m.payload)
    client.on_publish = lambda c, u, mid, rc, p: acked.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(30):
            raise SystemExit("paho: no CONNACK")
        if role in ("sink", "echo", "ping"):
            topic = {"sink": "bench/t", "echo": "bench/ping", "ping": "bench/pong"}[role]
            client.subscribe(topic, qos=1)
            time.sleep(0.2)  # the SUBACK
        if role == "sink":
            print("ready", flush=True)
            inbox.get(timeout=PHASE_TIMEOUT)
            first = last = time.perf_counter()
            received = 1
            while received < count:
                try:
                    inbox.get(timeout=IDLE)
                except queue.Empty:
                    break  # the broker dropped some: report what came
                last = time.perf_counter()
                received += 1
            emit({"received": received, "seconds": last - first})
        elif role == "pub":
            body = b"x" * payload
            start = time.perf_counter()
            for _ in range(count):
                client.publish("bench/t", body, qos=1)
            for _ in range(count):
                acked.acquire(timeout=PHASE_TIMEOUT)
            emit({"sent": count, "seconds": time.perf_counter() - start})
        elif role == "echo":
            print("ready", flush=True)
            for _ in range(count + WARMUP):
                client.publish("bench/pong", inbox.get(timeout=PHASE_TIMEOUT), qos=1)
        elif role == "ping":
            rtts = []
            for i in range(count + WARMUP):
                start = time.perf_counter()
                info = client.publish("bench/ping", i.to_bytes(4, "big") + b"x" * payload, qos=1)
                info.wait_for_publish(PHASE_TIMEOUT)
                inbox.get(timeout=PHASE_TIMEOUT)
                if i >= WARMUP:
                    rtts.append(time.perf_counter() - start)
            emit({"rtts": rtts})
    finally:
        client.disconnect()
        client.loop_stop()


# --- the driver ------------------------------------------------------------------------------


def spawn(
    impl: str, role: str, port: int, count: int, payload: int, protocol: str
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--impl", impl, "--port", str(port),
         "--count", str(count), "--payload", str(payload), "--protocol", protocol],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def result_of(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=PHASE_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark process failed ({proc.returncode}): {out}")
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def wait_ready(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        raise RuntimeError(f"benchmark process did not get ready: {line!r}")


def throughput(
    impl: str, port: int, n: int, payload: int, protocol: str
) -> tuple[float, float, int]:
    sink = spawn(impl, "sink", port, n, payload, protocol)
    try:
        wait_ready(sink)
        pub = result_of(spawn(impl, "pub", port, n, payload, protocol))
        received = result_of(sink)
    finally:
        sink.kill()
    got = received["received"]
    return n / pub["seconds"], got / max(received["seconds"], 1e-9), n - got


def round_trip(impl: str, port: int, m: int, payload: int, protocol: str) -> tuple[float, float]:
    echo = spawn(impl, "echo", port, m, payload, protocol)
    try:
        wait_ready(echo)
        rtts = sorted(result_of(spawn(impl, "ping", port, m, payload, protocol))["rtts"])
        echo.wait(timeout=PHASE_TIMEOUT)
    finally:
        echo.kill()
    p50 = statistics.median(rtts)
    p99 = rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]
    return p50 * 1000, p99 * 1000


def start_mosquitto(workdir: Path, *, nodelay: bool) -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.brokers import Mosquitto

    # A deep per-client queue: measure the clients, not Mosquitto's drop policy
    # (its default, max_queued_messages 1000, drops when a subscriber lags).
    broker = Mosquitto(workdir, nodelay=nodelay, extra_config="max_queued_messages 100000\n")
    broker.start()
    return broker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--payload", type=int, default=64)
    # mosquitto: with set_tcp_nodelay true; mosquitto-default: Mosquitto's default (Nagle on)
    parser.add_argument("--brokers", default="mosquitto,mosquitto-default,amqtt")
    parser.add_argument("--impls", default="adapter,paho")
    # internal: one role in a child process
    parser.add_argument("--role")
    parser.add_argument("--impl")
    parser.add_argument("--port", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--protocol", default="auto")
    args = parser.parse_args()
    if args.role:
        role_fn = adapter_role if args.impl == "adapter" else paho_role
        role_fn(args.role, args.port, args.count, args.payload, args.protocol)
        return

    import trio

    from vsm_edge.agent.mesh.broker import EmbeddedBroker

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores; payload {args.payload} B, "
          f"QoS 1, window {WINDOW}; {args.messages} messages, {args.pings} pings")  # fmt: skip
    columns = ("publish/s", "deliver/s", "rtt p50", "rtt p99")
    header = f"{'broker':<19}{'client':<22}" + "".join(f"{c:>10}" for c in columns)
    print(header)
    print("-" * len(header))
    for broker_name in args.brokers.split(","):
        if broker_name.startswith("mosquitto"):
            workdir = Path(tempfile.mkdtemp(prefix="bench-mqtt-"))
            nodelay = broker_name == "mosquitto"
            mosq = start_mosquitto(workdir, nodelay=nodelay)
            port, protocol, stop = mosq.port, "auto", mosq.stop
            label = "mosquitto" if nodelay else "mosquitto (Nagle)"
            # With Nagle a round trip can take ~90 ms: fewer pings keep it bounded.
            n, m = args.messages, args.pings if nodelay else max(args.pings // 5, 100)
        else:
            embedded = EmbeddedBroker()
            trio.run(embedded.start)
            port, protocol = embedded.port, "3.1.1"
            label = "amqtt (embedded)"
            # amqtt is far slower: fewer messages keep the run bounded.
            n, m = max(args.messages // 5, 200), max(args.pings // 3, 100)

            def stop(embedded: EmbeddedBroker = embedded) -> None:
                trio.run(embedded.stop)

        try:
            for impl in args.impls.split(","):
                client = "vsm-edge (paho+Trio)" if impl == "adapter" else "paho threaded"
                pub_rate, sub_rate, lost = throughput(impl, port, n, args.payload, protocol)
                p50, p99 = round_trip(impl, port, m, args.payload, protocol)
                note = f"  ({lost} dropped by the broker)" if lost else ""
                print(f"{label:<19}{client:<22}{pub_rate:>10.0f}{sub_rate:>10.0f}"
                      f"{p50:>8.2f}ms{p99:>8.2f}ms{note}", flush=True)  # fmt: skip
        finally:
            stop()


if __name__ == "__main__":
    main()
