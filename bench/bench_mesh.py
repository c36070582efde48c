"""Mesh benchmarks on a loopback Mosquitto, every node a separate OS process; printed figures.

Bench nodes are lightweight: one process runs one :class:`Replicator` (the
agents' ``mesh`` ORMap document, a SQLite store with ``synchronous=FULL`` unless
``--no-store``, MQTT 5) and is driven through stdin/stdout JSON lines. Full
agents (``vsm-edge run``) are used where the agent itself is measured (RSS,
algedonic latency); twenty full agents idle at ~0.9 of a core on this 2-core
machine, so fifty of them would measure the CPU, not the mesh.

    python bench/bench_mesh.py latency   [--nodes 5,20,50] [--duration 20] [--total-rate 20]
    python bench/bench_mesh.py catchup   [--keys 10000] [--holders 3] [--runs 3]
    python bench/bench_mesh.py wire      [--keys 10000] [--updates 20]
    python bench/bench_mesh.py throughput [--duration 10] [--concurrency 16]
    python bench/bench_mesh.py rss       [--minutes 10] [--keys 10000] [--peers 20]
    python bench/bench_mesh.py algedonic [--alarms 100] [--rate 5]
    python bench/bench_mesh.py all       (everything, rss for --minutes)

What each measures is in its function's docstring. Every phase is bounded by
a timeout; sizes are arguments. Each bench prints the load average before it
starts, because this machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

MESH = "bench"
PHASE_TIMEOUT = 120.0


# =============================================================================================
# The bench node (a child process): python bench/bench_mesh.py node --port P --node N ...
# =============================================================================================


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rss_kb(pid: int | None = None) -> int:
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def node_main(args: argparse.Namespace) -> None:
    import trio

    from vsm_edge.sync import (
        AsyncStore,
        CausalLWWRegister,
        CrdtDocument,
        GossipConfig,
        HybridLogicalClock,
        MqttSettings,
        MqttTransport,
        NodeKey,
        ORMap,
        Replicator,
        ReplicatorConfig,
        StoreHighWaterMark,
        thaw,
    )

    node = args.node
    started_wall = time.time()
    if args.data:
        Path(args.data).mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        store = None
        if args.data:
            store = await AsyncStore.open(Path(args.data) / "node.db")
        clock = HybridLogicalClock(
            node, high_water=StoreHighWaterMark(store.sync) if store is not None else None
        )
        doc: CrdtDocument[ORMap] = CrdtDocument("mesh", ORMap)
        samples: list[tuple[str, int, float]] = []  # origin, index, latency ms
        joined = [0]
        expect = [args.expect_keys, 0.0]  # keys to wait for, time the wait began

        def on_change(name: str, delta: Any, local: bool) -> None:
            if local:
                return
            now_us = time.time_ns() // 1000
            for key, value in delta.value().items():
                joined[0] += 1
                plain = thaw(value)
                if isinstance(plain, list) and len(plain) == 3 and plain[0] == "t":
                    origin = key.partition("/")[0]
                    samples.append((origin, plain[2], (now_us - plain[1]) / 1000.0))
            if expect[0] and len(doc.state) >= expect[0]:
                emit(
                    {
                        "caught_up": True,
                        "keys": len(doc.state),
                        "wall": time.time(),
                        "since_run_s": time.monotonic() - expect[1],
                    }
                )
                expect[0] = 0

        doc.observe(on_change)

        def transport(will: Any) -> MqttTransport:
            return MqttTransport(
                MqttSettings(
                    client_id=node,
                    port=args.port,
                    will=will,
                    protocol="5",
                    keepalive=30,
                    max_inflight=args.inflight,
                )
            )

        gossip = GossipConfig(
            batch_interval=args.batch_ms / 1000.0, digest_interval=args.digest_ms / 1000.0
        )
        rep = Replicator(
            ReplicatorConfig(mesh=MESH, node=node, gossip=gossip),
            NodeKey.generate(),
            clock,
            transport,
            {"mesh": doc},
            store=store,
        )

        async def put(key: str, value: Any) -> None:
            await rep.mutate(
                "mesh",
                lambda m: m.update(
                    node, key, CausalLWWRegister, lambda r: r.set(node, clock.now(), value)
                ),
            )

        async def write(
            rate: float, duration: float, concurrency: int, overwrite: list[int] | None
        ) -> None:
            counter = [0]
            deadline = trio.current_time() + duration

            async def one() -> None:
                i = counter[0] = counter[0] + 1
                if overwrite is not None:  # a new reading in one of our seeded keys
                    key = f"{node}/s{overwrite[1] + random.randrange(overwrite[0])}"
                    await put(key, [round(random.gauss(21.5, 2), 1), int(time.time() * 1000)])
                else:
                    await put(f"{node}/u{i}", ["t", time.time_ns() // 1000, i])

            start = trio.current_time()
            if rate > 0:  # Poisson-ish: random phase, fixed mean interval
                await trio.sleep(random.uniform(0, 1.0 / rate))
                while trio.current_time() < deadline:
                    await one()
                    await trio.sleep(random.expovariate(rate))
            else:  # as fast as acknowledgements allow, `concurrency` writers at once

                async def loop() -> None:
                    while trio.current_time() < deadline:
                        await one()

                async with trio.open_nursery() as nursery:
                    for _ in range(concurrency):
                        nursery.start_soon(loop)
            emit({"wrote": counter[0], "seconds": trio.current_time() - start})

        async def seed(keys: int, offset: int) -> None:
            start = trio.current_time()
            for i in range(offset, offset + keys):
                # a value shaped like an agent's reading: [value, wall ms]
                await put(
                    f"{node}/s{i}", [round(random.gauss(21.5, 2), 1), int(time.time() * 1000)]
                )
                if i % 256 == 0:
                    await trio.sleep(0.01)  # let batches leave: no 10k-delta backlog
            emit({"seeded": keys, "seconds": trio.current_time() - start})

        async def commands(nursery: trio.Nursery) -> None:
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    nursery.cancel_scope.cancel()
                    return
                cmd = json.loads(line)
                what = cmd["cmd"]
                if what == "write":
                    nursery.start_soon(
                        write,
                        cmd["rate"],
                        cmd["duration"],
                        cmd.get("concurrency", 1),
                        cmd.get("overwrite"),
                    )
                elif what == "seed":
                    nursery.start_soon(seed, cmd["keys"], cmd.get("offset", 0))
                elif what == "update_one":
                    await put(cmd["key"], cmd["value"])
                    emit({"updated": cmd["key"]})
                elif what == "report":
                    stats = rep.statistics()
                    emit(
                        {
                            "report": {
                                "samples": samples if cmd.get("samples", True) else [],
                                "joined": joined[0],
                                "keys": len(doc.state),
                                "vv": doc.state.digest().vv,
                                "stats": stats,
                                "rss_kb": rss_kb(),
                            }
                        }
                    )
                elif what == "clear":
                    samples.clear()
                    joined[0] = 0
                elif what == "exit":
                    nursery.cancel_scope.cancel()
                    return

        async def online_watch() -> None:
            last = -1
            while True:
                n = len(rep.online_peers())
                if n != last:
                    emit({"online": n})
                    last = n
                await trio.sleep(0.05)

        try:
            async with trio.open_nursery() as nursery:
                expect[1] = time.monotonic()
                await nursery.start(rep.run)
                await rep.transport.wait_connected()
                emit(
                    {
                        "ready": True,
                        "since_start_s": time.time() - started_wall,
                        "connected_since_run_s": time.monotonic() - expect[1],
                    }
                )
                nursery.start_soon(commands, nursery)
                nursery.start_soon(online_watch)
        finally:
            if store is not None:
                with trio.CancelScope(shield=True):
                    await store.aclose()

    trio.run(main)


# =============================================================================================
# Raw paho roles (the throughput baseline): python bench/bench_mesh.py paho --role pub|sink
# =============================================================================================


def paho_main(args: argparse.Namespace) -> None:
    import queue

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-paho-{args.role}-{os.getpid()}",
        protocol=MQTTProtocolVersion.MQTTv5,
    )
    client.max_inflight_messages_set(args.inflight)
    connected = threading.Event()
    inbox: queue.SimpleQueue[float] = queue.SimpleQueue()
    acked = threading.Semaphore(0)
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.on_message = lambda c, u, m: inbox.put(time.perf_counter())
    client.on_publish = lambda c, u, mid, rc, p: acked.release()
    client.connect("127.0.0.1", args.port)
    client.loop_start()
    try:
        if not connected.wait(30):
            raise SystemExit("paho: no CONNACK")
        if args.role == "sink":
            client.subscribe("bench/raw", qos=1)
            time.sleep(0.3)
            emit({"ready": True})
            first = inbox.get(timeout=PHASE_TIMEOUT)
            last, received = first, 1
            while received < args.count:
                try:
                    last = inbox.get(timeout=5.0)
                except queue.Empty:
                    break
                received += 1
            emit({"received": received, "seconds": last - first})
        else:
            payload = bytes.fromhex(sys.stdin.readline().strip())
            start = time.perf_counter()
            for _ in range(args.count):
                client.publish("bench/raw", payload, qos=1)
            for _ in range(args.count):
                acked.acquire(timeout=PHASE_TIMEOUT)
            emit({"sent": args.count, "seconds": time.perf_counter() - start})
    finally:
        client.disconnect()
        client.loop_stop()


# =============================================================================================
# The driver
# =============================================================================================


class Proc:
    """A child process driven by JSON lines (stdin commands, stdout events)."""

    def __init__(self, argv: list[str], name: str, log: Path) -> None:
        self.name = name
        self.started = time.time()
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for raw in self.proc.stdout:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                with self._cond:
                    self.lines.append(obj)
                    self._cond.notify_all()

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def wait(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = PHASE_TIMEOUT,
        *,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first line from index ``after`` on matching ``predicate``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    if predicate(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._thread.is_alive()):
                    raise TimeoutError(f"{self.name}: no matching line (see its log)")
                self._cond.wait(min(left, 1.0))

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def last_online(self) -> int:
        with self._cond:
            for line in reversed(self.lines):
                if "online" in line:
                    return int(line["online"])
        return 0

    def request(self, what: str, reply: str, **cmd: Any) -> Any:
        """Send command ``what``; return the value of ``reply`` in the first answer that has it."""
        mark = self.mark()
        self.send(cmd=what, **cmd)
        return self.wait(lambda x: reply in x, after=mark)[reply]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send(cmd="exit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired, ValueError):
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._thread.join(5)
        self._log.close()


class Bench:
    """A working directory, a Mosquitto, and the processes started in it."""

    def __init__(self, name: str, keep: bool) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"vsm-bench-{name}-"))
        self.keep = keep
        self.procs: list[Proc] = []
        from support.brokers import Mosquitto

        # Deep per-client queues: measure the mesh, not Mosquitto's drop policy.
        self.broker = Mosquitto(
            self.workdir, extra_config="max_queued_messages 100000\nmax_inflight_messages 100\n"
        )
        self.broker.start()

    def node(
        self,
        name: str,
        *,
        store: bool = True,
        expect_keys: int = 0,
        batch_ms: float = 10.0,
        inflight: int = 20,
    ) -> Proc:
        argv = [
            sys.executable,
            __file__,
            "node",
            "--port",
            str(self.broker.port),
            "--node",
            name,
            "--batch-ms",
            str(batch_ms),
            "--inflight",
            str(inflight),
            "--expect-keys",
            str(expect_keys),
        ]
        if store:
            argv += ["--data", str(self.workdir / name)]
        proc = Proc(argv, name, self.workdir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def nodes(self, count: int, prefix: str = "n", **options: Any) -> list[Proc]:
        nodes = [self.node(f"{prefix}{i}", **options) for i in range(count)]
        for n in nodes:
            n.wait(lambda x: "ready" in x)
        return nodes

    def close(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: p.close(), self.procs))
        self.broker.stop()
        if self.keep:
            print(f"  (kept {self.workdir})")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


@contextmanager
def bench(name: str, keep: bool) -> Iterator[Bench]:
    b = Bench(name, keep)
    try:
        yield b
    finally:
        b.close()


def wait_formed(nodes: Sequence[Proc], timeout: float = PHASE_TIMEOUT) -> float:
    start = time.monotonic()
    want = len(nodes) - 1
    while not all(n.last_online() >= want for n in nodes):
        if time.monotonic() - start > timeout:
            raise TimeoutError(
                f"mesh of {len(nodes)} did not form: {[n.last_online() for n in nodes]}"
            )
        time.sleep(0.1)
    return time.monotonic() - start


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(values: Sequence[float], unit: str = "ms") -> str:
    if not values:
        return "no samples"
    return (
        f"p50 {pct(values, 0.5):.1f} {unit}, p99 {pct(values, 0.99):.1f} {unit}, "
        f"max {max(values):.1f} {unit} (n={len(values)})"
    )


def machine() -> str:
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"load average {' '.join(load)} on {os.cpu_count()} CPUs"


def header(title: str) -> None:
    print(f"\n== {title}  [{time.strftime('%Y-%m-%d %H:%M:%S')}, {machine()}]", flush=True)


def proc_cpu_s(pid: int) -> float:
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


# -- latency ------------------------------------------------------------------------------------


def bench_latency(args: argparse.Namespace) -> None:
    """Update -> all peers: every node writes at total_rate/N updates/s (random phase,
    exponential gaps) for ``duration`` s; each receiver timestamps every join against the
    writer's wall clock (same machine). An update's "all peers" latency is the largest of
    its N-1 receipts; p50/p99 are over updates that reached every peer."""
    for count in args.nodes:
        header(f"latency: update -> all peers, {count} bench nodes")
        with bench(f"latency{count}", args.keep) as b:
            t0 = time.monotonic()
            nodes = b.nodes(count)
            formed = wait_formed(nodes)
            print(
                f"  {count} node processes started and formed in {time.monotonic() - t0:.1f} s "
                f"(formation {formed:.1f} s after the last was ready)"
            )
            time.sleep(2.0)  # first digests, first-contact repairs: let them settle
            rate = args.total_rate / count
            cpu0 = sum(proc_cpu_s(n.proc.pid) for n in nodes)
            t1 = time.monotonic()
            marks = [n.mark() for n in nodes]
            for n in nodes:
                n.send(cmd="write", rate=rate, duration=args.duration)
            for n, mark in zip(nodes, marks, strict=True):
                n.wait(lambda x: "wrote" in x, args.duration + 60, after=mark)
            time.sleep(3.0)  # the last updates arrive
            busy = (sum(proc_cpu_s(n.proc.pid) for n in nodes) - cpu0) / (time.monotonic() - t1)
            reports = [n.request("report", "report") for n in nodes]
            wrote = sum(int(n.wait(lambda x: "wrote" in x)["wrote"]) for n in nodes)
            per_update: dict[tuple[str, int], list[float]] = {}
            receipts: list[float] = []
            for r in reports:
                for origin, index, latency in r["samples"]:
                    per_update.setdefault((origin, index), []).append(latency)
                    receipts.append(latency)
            everywhere = [max(v) for v in per_update.values() if len(v) == count - 1]
            print(
                f"  wrote {wrote} updates ({args.total_rate:g}/s over the mesh, "
                f"{rate:.2f}/s per node) for {args.duration:g} s; "
                f"{len(everywhere)} reached all {count - 1} peers"
            )
            print(f"  update -> all peers: {summary(everywhere)}")
            print(f"  update -> one peer:  {summary(receipts)}")
            print(
                f"  CPU of the node processes while writing: {busy:.2f} cores "
                f"({busy / count * 1000:.0f} ms/s per node)"
            )


# -- catch-up -----------------------------------------------------------------------------------


def bench_catchup(args: argparse.Namespace) -> None:
    """A mesh of ``holders`` nodes holds ``keys`` keys (split among them, values shaped like
    agent readings); a fresh node (empty store) joins. Printed: from its MQTT connection to
    holding every key (the repair: first-contact digests, one repair request, a chunked
    state transfer), and from its process start (adds Python start-up and imports)."""
    header(f"catch-up: a fresh node joins a mesh holding {args.keys} keys")
    with bench("catchup", args.keep) as b:
        holders = b.nodes(args.holders, prefix="h")
        wait_formed(holders)
        per = args.keys // args.holders
        marks = [h.mark() for h in holders]
        for i, h in enumerate(holders):
            h.send(cmd="seed", keys=per, offset=i * per)
        seeded = [
            h.wait(lambda x: "seeded" in x, after=m) for h, m in zip(holders, marks, strict=True)
        ]
        total = per * args.holders
        deadline = time.monotonic() + PHASE_TIMEOUT
        while any(h.request("report", "report", samples=False)["keys"] < total for h in holders):
            if time.monotonic() > deadline:
                raise TimeoutError("holders did not converge")
            time.sleep(0.5)
        print(
            f"  {args.holders} holders seeded {total} keys "
            f"({max(s['seconds'] for s in seeded):.1f} s) and converged"
        )
        from_connect: list[float] = []
        from_start: list[float] = []
        for run in range(args.runs):
            fresh = b.node(f"fresh{run}", expect_keys=total)
            ready = fresh.wait(lambda x: "ready" in x)
            done = fresh.wait(lambda x: "caught_up" in x, 60)
            from_connect.append(done["since_run_s"] - ready["connected_since_run_s"])
            from_start.append(done["wall"] - fresh.started)
            report = fresh.request("report", "report", samples=False)
            stats = report["stats"]["gossip"]
            print(
                f"  run {run + 1}: caught up {report['keys']} keys "
                f"{from_connect[-1] * 1000:.0f} ms after connecting, "
                f"{from_start[-1]:.2f} s after its process started "
                f"(repairs requested {stats['repairs_requested']}, chunks received "
                f"{stats['chunks_received']}, bytes in {report['stats']['transport']['bytes_in']})"
            )
            fresh.close()
        print(
            f"  catch-up after connecting: median {statistics.median(from_connect) * 1000:.0f} ms, "
            f"max {max(from_connect) * 1000:.0f} ms over {args.runs} runs"
        )
        print(f"  catch-up from process start: median {statistics.median(from_start):.2f} s")


# -- wire bytes ---------------------------------------------------------------------------------


class Sniffer:
    """A paho client in this process counting payload bytes per topic class."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.lock = threading.Lock()
        self.messages: list[tuple[str, str, int]] = []  # topic, envelope kind, bytes
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-sniffer")
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: connected.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        connected.wait(10)
        self.client.subscribe(f"vsm/{MESH}/#", qos=1)
        time.sleep(0.3)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        from vsm_edge.sync import WireError, decode_envelope

        try:
            kind = decode_envelope(bytes(message.payload)).kind
        except WireError:
            kind = "?"
        with self.lock:
            self.messages.append((message.topic, kind, len(message.payload)))

    def take(self) -> list[tuple[str, str, int]]:
        with self.lock:
            out, self.messages = self.messages, []
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def bench_wire(args: argparse.Namespace) -> None:
    """Bytes on the wire (MQTT payloads: the signed COSE envelopes) for a one-key update in
    a document of ``keys`` keys, against a full-state gossip baseline: the bytes of the
    full state as our own state transfer sends it (to a fresh node), which is what a
    state-based protocol sends for every update."""
    header(f"wire bytes: one-key update vs full state, {args.keys} keys")
    with bench("wire", args.keep) as b:
        holder = b.nodes(1, prefix="h")[0]
        mark = holder.mark()
        holder.send(cmd="seed", keys=args.keys)
        holder.wait(lambda x: "seeded" in x, after=mark)
        sniffer = Sniffer(b.broker.port)
        try:
            time.sleep(1.5)
            sniffer.take()
            fresh = b.node("fresh", expect_keys=args.keys)
            fresh.wait(lambda x: "caught_up" in x, 60)
            time.sleep(0.5)
            transfer = [
                n
                for t, kind, n in sniffer.take()
                if t == f"vsm/{MESH}/to/fresh" and kind in ("delta", "chunk")
            ]
            full = sum(transfer)
            updates: list[int] = []
            digests: list[int] = []
            for i in range(args.updates):
                time.sleep(0.3)
                sniffer.take()
                holder.request(
                    "update_one",
                    "updated",
                    key=f"h0/s{i}",
                    value=[22.0 + i, int(time.time() * 1000)],
                )
                time.sleep(0.2)
                seen = sniffer.take()
                updates += [n for t, _, n in seen if t == f"vsm/{MESH}/d/h0"]
                digests += [n for t, _, n in seen if t.startswith(f"vsm/{MESH}/sv/")]
        finally:
            sniffer.close()
        one = statistics.median(updates)
        print(
            f"  full state at {args.keys} keys, as transferred to a fresh node: {full} bytes "
            f"in {len(transfer)} messages"
        )
        print(
            f"  one-key update: median {one:.0f} bytes (min {min(updates)}, max {max(updates)},"
            f" n={len(updates)}) in one delta envelope"
        )
        if digests:
            print(
                f"  a digest (version vector of 2 nodes), sent every 1 s: "
                f"{statistics.median(digests):.0f} bytes"
            )
        print(f"  ratio full state / one-key update: {full / one:.0f}x fewer bytes")


# -- throughput ---------------------------------------------------------------------------------


def bench_throughput(args: argparse.Namespace) -> None:
    """Sustained replicated updates/s from one writer node to one reader node (the writer
    runs ``concurrency`` tasks calling ``mutate`` back to back for ``duration`` s; the
    reader counts joined updates), with and without the store; then raw paho (threaded
    loop, QoS 1, 20 in flight) publishing the same number of messages, each the size of a
    one-update delta envelope, between two processes on the same broker."""
    header("throughput: replicated updates/s vs raw paho")
    with bench("throughput", args.keep) as b:
        results: dict[str, float] = {}
        for label, store in (
            ("replicator, store synchronous=FULL", True),
            ("replicator, no store", False),
        ):
            writer = b.node(f"w{int(store)}", store=store)
            reader = b.node(f"r{int(store)}", store=False)
            for n in (writer, reader):
                n.wait(lambda x: "ready" in x)
            wait_formed([writer, reader])
            time.sleep(1.0)
            mark = writer.mark()
            cpu = [proc_cpu_s(writer.proc.pid), proc_cpu_s(reader.proc.pid)]
            t0 = time.monotonic()
            writer.send(cmd="write", rate=0, duration=args.duration, concurrency=args.concurrency)
            wrote = writer.wait(lambda x: "wrote" in x, args.duration + 60, after=mark)
            deadline = time.monotonic() + 60
            while True:
                got = reader.request("report", "report", samples=True)
                if got["vv"].get(writer.name, 0) >= wrote["wrote"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            elapsed = time.monotonic() - t0
            cpu = [proc_cpu_s(writer.proc.pid) - cpu[0], proc_cpu_s(reader.proc.pid) - cpu[1]]
            mine = {(s[0], s[1]): s[2] for s in got["samples"] if s[0] == writer.name}
            received = len(mine)
            lat = list(mine.values())
            # the reader's rate: updates over the time from the first write to the last receipt
            span = wrote["seconds"] + max(0.0, pct(lat, 1.0) / 1000.0) if lat else elapsed
            rate = received / span
            results[label] = rate
            print(
                f"  {label}: writer acknowledged {wrote['wrote']} updates in "
                f"{wrote['seconds']:.1f} s ({wrote['wrote'] / wrote['seconds']:.0f}/s); reader "
                f"joined {received} ({rate:.0f}/s); write->join {summary(lat)}; CPU writer "
                f"{cpu[0] / elapsed:.2f}, reader {cpu[1] / elapsed:.2f} cores"
            )
            stats = writer.request("report", "report", samples=False)["stats"]
            print(
                f"    writer: {stats['gossip']['batches_sent']} delta batches "
                f"({wrote['wrote'] / max(1, stats['gossip']['batches_sent']):.1f} updates each), "
                f"{stats['transport']['bytes_out']} payload bytes out"
            )
            writer.close()
            reader.close()
        # The raw paho baseline: one-update envelopes, one message per update.
        sample = b.node("sample", store=False)
        sample.wait(lambda x: "ready" in x)
        sniffer = Sniffer(b.broker.port)
        sniffer.take()
        sample.request(
            "update_one", "updated", key="sample/u1", value=["t", time.time_ns() // 1000, 1]
        )
        time.sleep(0.5)
        size = next(n for t, _, n in sniffer.take() if t.endswith("/d/sample"))
        sniffer.close()
        count = max(1000, int(max(results.values()) * args.duration))
        port = str(b.broker.port)
        sink = Proc(
            [
                sys.executable,
                __file__,
                "paho",
                "--role",
                "sink",
                "--port",
                port,
                "--count",
                str(count),
            ],
            "paho-sink",
            b.workdir / "sink.log",
        )
        b.procs.append(sink)
        sink.wait(lambda x: "ready" in x)
        pub = Proc(
            [
                sys.executable,
                __file__,
                "paho",
                "--role",
                "pub",
                "--port",
                port,
                "--count",
                str(count),
            ],
            "paho-pub",
            b.workdir / "pub.log",
        )
        b.procs.append(pub)
        assert pub.proc.stdin is not None
        pub.proc.stdin.write(os.urandom(size).hex() + "\n")
        pub.proc.stdin.flush()
        sent = pub.wait(lambda x: "sent" in x)
        got = sink.wait(lambda x: "received" in x)
        raw = got["received"] / max(got["seconds"], 1e-9)
        print(
            f"  raw paho: {count} messages of {size} bytes (a one-update envelope), "
            f"published in {sent['seconds']:.2f} s ({count / sent['seconds']:.0f}/s), "
            f"received {got['received']} at {raw:.0f}/s"
        )
        for label, rate in results.items():
            print(f"  ratio {label} / raw paho: {rate / raw:.2f}")


# -- algedonic ------------------------------------------------------------------------------------


def bench_algedonic(args: argparse.Namespace) -> None:
    """Two full agents (``vsm-edge run``) on Mosquitto; ``alarms`` operator alarms raised on
    A (``POST /alarm``, intensity 0.9, a distinct source each so hedonic adaptation and storm
    folding do not apply) at ``rate``/s. B's status gives, per alarm, the time from its raise
    on A (the signal's HLC wall time) to its arrival at B, and to B's S5 taking it off the
    algedonic channel (same machine, same clock)."""
    header(f"algedonic: operator alarm on A -> B's S5, {args.alarms} alarms at {args.rate:g}/s")
    from support.mesh import AgentProcess, wait_until

    workdir = Path(tempfile.mkdtemp(prefix="vsm-bench-alg-"))
    from support.brokers import Mosquitto

    broker = Mosquitto(workdir)
    broker.start()
    agents = [AgentProcess(workdir, name, broker.url, protocol="5") for name in ("A", "B")]
    try:
        for agent in agents:
            agent.start()
        a, b_ = agents
        wait_until(
            lambda: (
                (s := b_.status())
                and "A" in s["replication"]["online_peers"]
                and (t := a.status())
                and "B" in t["replication"]["online_peers"]
            ),
            60,
            "mesh",
        )
        ids = []
        for i in range(args.alarms):
            ids.append(a.raise_alarm(0.9, f"bench{i}", "bench")["id"])
            time.sleep(1.0 / args.rate)
        time.sleep(1.0)
        status = b_.status()
        assert status is not None
        rep = status["replication"]
        heard = [rep["alarms_heard_ms"][i] for i in ids if i in rep["alarms_heard_ms"]]
        s5 = [rep["alarms_s5_ms"][i] for i in ids if i in rep.get("alarms_s5_ms", {})]
        print(
            f"  {len(heard)}/{len(ids)} alarms arrived at B; raise on A -> arrival at B: "
            f"{summary(heard)}"
        )
        print(f"  raise on A -> B's S5: {summary(s5)}")
    finally:
        for agent in agents:
            agent.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


# -- RSS ------------------------------------------------------------------------------------------


def bench_rss(args: argparse.Namespace) -> None:
    """One full agent (``vsm-edge run``: two simulated sensors, mDNS on 127.0.0.1, the
    gateway with its arbitrator) in a mesh with ``peers`` bench nodes that hold ``keys`` keys
    between them and keep updating them (each peer one random key per second) for
    ``minutes``; the agent's RSS is sampled every 10 s."""
    header(
        f"RSS: an agent holding {args.keys} keys with {args.peers} peers for {args.minutes:g} min"
    )
    from support.mesh import AgentProcess, wait_until

    with bench("rss", args.keep) as b:
        agent = AgentProcess(
            b.workdir,
            "agent",
            b.broker.url,
            mesh=MESH,
            sensors=2,
            discovery=["127.0.0.1"],
            protocol="5",
        )
        agent.start()
        agent.wait_status(60)
        pid = agent.proc.pid if agent.proc else 0
        try:
            print(f"  agent started: RSS {rss_kb(pid) / 1024:.1f} MB")
            peers = b.nodes(args.peers, prefix="p", store=False)
            wait_formed(peers)
            wait_until(
                lambda: (
                    len((agent.status() or {}).get("replication", {}).get("online_peers", []))
                    >= args.peers
                ),
                60,
                "the agent to see its peers",
            )
            print(f"  {args.peers} peers online: agent RSS {rss_kb(pid) / 1024:.1f} MB")
            per = args.keys // args.peers
            marks = [p.mark() for p in peers]
            for i, p in enumerate(peers):
                p.send(cmd="seed", keys=per, offset=i * per)
            for p, m in zip(peers, marks, strict=True):
                p.wait(lambda x: "seeded" in x, after=m)
            total = per * args.peers
            t0 = time.monotonic()
            wait_until(
                lambda: (agent.status() or {}).get("replication", {}).get("keys", 0) >= total,
                max(300.0, total / 10),
                "the agent to hold every key",
                poll=1.0,
            )
            print(
                f"  the agent held all {total} keys {time.monotonic() - t0:.0f} s after the "
                "peers finished seeding"
            )
            print(f"  agent holds {total} keys: RSS {rss_kb(pid) / 1024:.1f} MB")
            for i, p in enumerate(peers):  # new readings in the seeded keys: the count stays
                p.send(cmd="write", rate=1.0, duration=args.minutes * 60, overwrite=[per, i * per])
            samples: list[tuple[float, int]] = []
            start = time.monotonic()
            end = start + args.minutes * 60
            while time.monotonic() < end:
                samples.append((time.monotonic() - start, rss_kb(pid)))
                time.sleep(min(10.0, max(0.0, end - time.monotonic())))
            samples.append((time.monotonic() - start, rss_kb(pid)))
            status = agent.status() or {}
            keys = status.get("replication", {}).get("keys")
            every = max(1, len(samples) // 10)
            print(
                "  agent RSS over time: "
                + ", ".join(f"{t / 60:.1f} min {kb / 1024:.1f} MB" for t, kb in samples[::every])
            )
            print(
                f"  agent RSS after {args.minutes:g} min: {samples[-1][1] / 1024:.1f} MB "
                f"(max {max(kb for _, kb in samples) / 1024:.1f} MB), holding {keys} keys, "
                f"{len(status.get('replication', {}).get('online_peers', []))} peers online"
            )
            peer_rss = [p.request("report", "report", samples=False)["rss_kb"] for p in peers[:3]]
            print(
                f"  for comparison, a bench node (replicator only, no store): "
                f"{statistics.median(peer_rss) / 1024:.1f} MB"
            )
        finally:
            agent.stop()


# =============================================================================================


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    node = sub.add_parser("node")
    node.add_argument("--port", type=int, required=True)
    node.add_argument("--node", required=True)
    node.add_argument("--data", default="")
    node.add_argument("--batch-ms", type=float, default=10.0)
    node.add_argument("--digest-ms", type=float, default=1000.0)
    node.add_argument("--inflight", type=int, default=20)
    node.add_argument("--expect-keys", type=int, default=0)
    paho = sub.add_parser("paho")
    paho.add_argument("--role", choices=("pub", "sink"), required=True)
    paho.add_argument("--port", type=int, required=True)
    paho.add_argument("--count", type=int, required=True)
    paho.add_argument("--inflight", type=int, default=20)

    def sizes(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    for name in ("latency", "catchup", "wire", "throughput", "rss", "algedonic", "all"):
        p = sub.add_parser(name)
        p.add_argument("--keep", action="store_true", help="keep the working directories")
        if name in ("latency", "all"):
            p.add_argument("--nodes", type=sizes, default=[5, 20, 50])
            p.add_argument("--duration", type=float, default=20.0)
            p.add_argument("--total-rate", type=float, default=20.0)
        if name in ("catchup", "wire", "rss", "all"):
            p.add_argument("--keys", type=int, default=10_000)
        if name in ("catchup", "all"):
            p.add_argument("--holders", type=int, default=3)
            p.add_argument("--runs", type=int, default=3)
        if name in ("wire", "all"):
            p.add_argument("--updates", type=int, default=20)
        if name == "throughput":
            p.add_argument("--duration", type=float, default=10.0)
        if name in ("throughput", "all"):
            p.add_argument("--concurrency", type=int, default=16)
        if name in ("rss", "all"):
            p.add_argument("--minutes", type=float, default=10.0)
            p.add_argument("--peers", type=int, default=20)
        if name in ("algedonic", "all"):
            p.add_argument("--alarms", type=int, default=100)
            p.add_argument("--rate", type=float, default=5.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.what == "node":
        node_main(args)
    elif args.what == "paho":
        paho_main(args)
    elif args.what == "all":
        bench_latency(args)
        bench_catchup(args)
        bench_wire(args)
        bench_throughput(args)
        bench_algedonic(args)
        bench_rss(args)
    else:
        {
            "latency": bench_latency,
            "catchup": bench_catchup,
            "wire": bench_wire,
            "throughput": bench_throughput,
            "rss": bench_rss,
            "algedonic": bench_algedonic,
        }[args.what](args)


if __name__ == "__main__":
    main()
