"""``vsm-edge demo``: a local mesh of agents, as separate processes, on one broker.

The script, for a run of ``--duration D`` seconds after the mesh has formed:

* every node runs simulated sensors; node ``n2``'s temperature sensor starts
  flooding (1000 readings/s) about 0.2 D after it starts (S3 attenuates it,
  pain reaches S5);
* node ``n1`` also has a (simulated) microcontroller: ``vsm-edge simulate-device``
  on a pseudo-terminal, read through the firmware bridge by a ``firmware-bridge``
  unit, whose readings reach the other nodes through the mesh (skipped, with a
  note, when no pty can be opened);
* at 0.25 D the broker restarts (the embedded one for real; an external
  ``--broker`` is made unreachable for the same time instead);
* from 0.45 D to 0.65 D the last node is partitioned from the broker;
* at 0.75 D an operator raises a critical alarm on ``n1`` (an emergency stop)
  and the demo times its arrival at every peer; then an operator on ``n2``
  acknowledges it and the demo times until every node holds it acknowledged
  (alarms are mesh state: the acknowledgement travels); then an operator on
  ``n2`` commands ``n1``'s vent (``vsm-edge command n1 vent open 40``: signed
  by n2's key, granted by the demo's admin-signed policy, outcome back to n2)
  and once more out of range (refused by n1's S1 with the reason);
* at D it takes every node's version vector and waits until every node covers
  all of them: *converged* means every update made before D reached every node.

Each agent connects through a small TCP proxy owned by the demo, which is how
partitions and outages are made without touching the broker. Everything lives
in a temporary directory, removed at the end (``--keep`` keeps it).

Why one module over ~600 lines: the demo is one script (start, flood, outage,
partition, alarm, check), read top to bottom; its parts are used nowhere else.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import trio

from vsm_edge.sync import NodeKey, save_node_key

from .._errors import AgentError, StatusClientError, StatusError
from ..mesh.broker import EmbeddedBroker
from ..mesh.status import GatewayStatus, NodeStatus, ReplicationStatus
from ..vsm.s5 import CommandGrant
from ..web.client import StatusClient
from .admin import sign_zone_policy
from .demo_device import DemoDevice, start_device

__all__ = ["add_demo_command", "cmd_demo"]

MESH = "demo"
SETUP_TIMEOUT_S = 60.0
SETTLE_TIMEOUT_S = 30.0
ALARM_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.25


def add_demo_command(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="a local mesh of agents on an embedded broker (the README's main job)"
    )
    demo.add_argument("--nodes", type=int, default=5, help="number of agents, 2-50 (default 5)")
    demo.add_argument(
        "--duration",
        type=float,
        default=30.0,
        help="seconds of scripted run after the mesh formed, >= 10 (default 30)",
    )
    demo.add_argument(
        "--broker", help="use this broker (mqtt://HOST:PORT) instead of embedding one"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON summary on stdout")
    demo.add_argument("--keep", action="store_true", help="keep the working directory")
    demo.set_defaults(handler=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    if not 2 <= args.nodes <= 50:
        raise AgentError("--nodes must be between 2 and 50")
    if not (math.isfinite(args.duration) and args.duration >= 10):
        raise AgentError("--duration must be at least 10 seconds")
    demo = Demo(args.nodes, args.duration, args.broker, as_json=args.json, keep=args.keep)
    summary = trio.run(demo.run)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    return 0 if summary["converged"] else 1


# -- a cuttable TCP proxy ------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:port to the broker; ``cut()`` drops and refuses connections."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._cut = False
        self._scopes: set[trio.CancelScope] = set()

    def cut(self) -> None:
        self._cut = True
        for scope in list(self._scopes):
            scope.cancel()

    def heal(self) -> None:
        self._cut = False

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self._cut:
                return
            try:
                upstream = await trio.open_tcp_stream(*self.target)
            except OSError:
                return
            async with upstream:
                with trio.CancelScope() as scope:
                    self._scopes.add(scope)
                    try:
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(_pump, client, upstream, nursery.cancel_scope)
                            nursery.start_soon(_pump, upstream, client, nursery.cancel_scope)
                    finally:
                        self._scopes.discard(scope)


async def _pump(src: trio.SocketStream, dst: trio.SocketStream, scope: trio.CancelScope) -> None:
    try:
        while data := await src.receive_some(65536):
            await dst.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    scope.cancel()


# -- the demo ----------------------------------------------------------------------------


@dataclass
class _Node:
    name: str
    data_dir: Path
    config: Path
    proxy: TcpProxy
    process: trio.Process | None = None
    log: TextIO | None = None
    client: StatusClient | None = None
    document: dict[str, Any] = field(default_factory=dict)  # the last status, as served
    status: NodeStatus | None = None  # the same, read

    @property
    def replication(self) -> ReplicationStatus | None:
        """The last status's replication section (None before one, or if it was broken)."""
        rep = None if self.status is None else self.status.replication
        return rep if isinstance(rep, ReplicationStatus) else None


class Demo:
    def __init__(
        self, nodes: int, duration: float, broker: str | None, *, as_json: bool, keep: bool
    ) -> None:
        self.count = nodes
        self.duration = duration
        self.external = broker
        self.as_json = as_json
        self.keep = keep
        self.out = sys.stderr if as_json else sys.stdout
        self.t0 = time.monotonic()
        self.nodes: list[_Node] = []
        self.events: list[dict[str, Any]] = []
        self.device: DemoDevice | None = None
        self.device_note = ""

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=self.out, flush=True)

    def note(self, what: str, **detail: Any) -> None:
        self.events.append({"t_s": round(time.monotonic() - self.t0, 2), "event": what, **detail})

    async def run(self) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix="vsm-edge-demo-"))
        try:
            async with trio.open_nursery() as nursery:
                summary = await self._run(nursery, workdir)
                nursery.cancel_scope.cancel()
            return summary
        finally:
            if self.device is not None:
                with trio.CancelScope(shield=True):
                    await self.device.stop()
            for node in self.nodes:
                if node.log is not None:
                    node.log.close()
            if self.keep:
                self.say(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)

    async def _run(self, nursery: trio.Nursery, workdir: Path) -> dict[str, Any]:
        broker: EmbeddedBroker | None = None
        if self.external:
            parts = urlsplit(self.external)
            if parts.scheme != "mqtt" or not parts.hostname:
                raise AgentError("--broker must be mqtt://HOST:PORT")
            host, port, protocol = parts.hostname, parts.port or 1883, "auto"
            self.say(f"using the broker at {self.external}")
        else:
            broker = EmbeddedBroker(host="127.0.0.1", log_path=workdir / "broker.log")
            url = await nursery.start(broker.run)
            parts = urlsplit(url)
            host, port, protocol = parts.hostname or "127.0.0.1", parts.port or 1883, "3.1.1"
            self.say(f"embedded broker (amqtt) at {url}")
        device = await start_device("n1", workdir)
        if isinstance(device, DemoDevice):
            self.device = device
            self.say(f"a simulated microcontroller for n1 on {device.path}")
        else:
            self.device_note = device
            self.say(f"no simulated device: {device}; continuing without it")
        # The demo is its own admin: node keys made here, and a signed policy that
        # grants every node's key the commands of every node's vent.
        admin = NodeKey.generate()
        keys = {f"n{i}": NodeKey.generate() for i in range(1, self.count + 1)}
        grants = [CommandGrant(key.kid, ("*",), ("vent.*",)) for key in keys.values()]
        policy = workdir / "policy.cbor"
        policy.write_bytes(
            sign_zone_policy(None, admin.seed, mesh=MESH, version=1, grants=grants)
        )
        for i in range(1, self.count + 1):
            proxy = TcpProxy(host, port)
            await nursery.start(proxy.run)
            name = f"n{i}"
            data_dir = workdir / name
            data_dir.mkdir()
            save_node_key(keys[name], data_dir / "node.key")
            config = workdir / f"{name}.toml"
            config.write_text(
                self._config(name, data_dir, proxy.port)
                + f'\n[s5]\nadmin_keys = ["{admin.public_key.hex()}"]\n'
                f'policy_file = "{policy}"\n'
            )
            self.nodes.append(_Node(name, data_dir, config, proxy))
        for node in self.nodes:
            node.log = (node.data_dir / "agent.log").open("w")
            node.process = await trio.lowlevel.open_process(
                [sys.executable, "-m", "vsm_edge.agent", "run", "--config", str(node.config),
                 "--protocol", protocol, "--log-level", "WARNING"],
                stdout=node.log, stderr=node.log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        self.say(f"started {self.count} agents as separate processes (logs in {workdir})")
        formed = await self._wait_mesh()
        if not formed:
            self.say("the mesh did not form in time; stopping")
            await self._stop_all()
            return self._summary(converged=False, settle_s=None, alarm={}, formed=False)
        self.say(f"mesh formed: every node sees {self.count - 1} peers; scripted run of "
                 f"{self.duration:g} s starts")  # fmt: skip
        start = trio.current_time()
        await self._script(start, broker)
        vvs = [rep.vv for n in self.nodes if (rep := n.replication) is not None]
        target: dict[str, int] = {}
        for vv in vvs:
            for origin, seq in vv.items():
                target[origin] = max(target.get(origin, 0), seq)
        self.say(f"end of script: waiting until every node holds all {sum(target.values())} "
                 "updates made so far")  # fmt: skip
        settle_start = trio.current_time()
        converged = await self._wait_covers(target)
        settle_s = trio.current_time() - settle_start if converged else None
        if converged:
            self.say(f"converged: all {self.count} nodes hold every update ({settle_s:.2f} s after "
                     "the end of the script)")  # fmt: skip
        else:
            self.say("NOT converged within the settle timeout")
        await self._poll_all()
        await self._stop_all()
        summary = self._summary(
            converged=converged, settle_s=settle_s, alarm=self._alarm_report, formed=True
        )
        if not self.as_json:
            self._print_report(summary)
        return summary

    def _config(self, name: str, data_dir: Path, port: int) -> str:
        flood = name == "n2"
        temp_extra = (
            f"flood_rate = 1000.0\nflood_after_s = {0.2 * self.duration:.1f}\n" if flood else ""
        )
        return f"""\
[node]
id = "{name}"
mesh = "{MESH}"
zone = "lab"
data_dir = "{data_dir}"

[broker]
url = "mqtt://127.0.0.1:{port}"
keepalive_s = 5

[discovery]
enabled = true
interfaces = ["127.0.0.1"]

[status]
enabled = true
host = "127.0.0.1"
port = 0

[[units]]
name = "temp"
kind = "simulated-sensor"
[units.options]
reading = "celsius"
mean = 21.5
noise = 0.4
period_s = 0.2
resolution = 0.5
{temp_extra}
[[units]]
name = "humidity"
kind = "simulated-sensor"
[units.options]
reading = "percent"
mean = 45.0
noise = 2.0
period_s = 1.0
resolution = 5.0

[[units]]
name = "vent"
kind = "simulated-actuator"
[units.options]
command = "open"
minimum = 0
maximum = 100
confirm = true
""" + (self.device.unit_toml() if self.device is not None and name == self.device.node else "")

    # -- polling ---------------------------------------------------------------------

    async def _client(self, node: _Node) -> StatusClient | None:
        if node.client is None:
            port_file = node.data_dir / "status.port"
            try:
                port = int((await trio.Path(port_file).read_text()).strip())
            except (OSError, ValueError):
                return None
            node.client = StatusClient(f"http://127.0.0.1:{port}", timeout_s=5.0)
        return node.client

    async def _poll(self, node: _Node) -> bool:
        client = await self._client(node)
        if client is None:
            return False
        try:
            document = await trio.to_thread.run_sync(client.status)
            status = NodeStatus.from_json(document)
        except (StatusClientError, StatusError):
            return False
        node.document, node.status = document, status
        return True

    @staticmethod
    def _reconnects(node: _Node) -> int:
        rep = node.replication
        if rep is None or rep.replicator.transport.state != "connected":
            return 0
        return rep.replicator.transport.reconnects

    async def _poll_all(self) -> None:
        async with trio.open_nursery() as nursery:
            for node in self.nodes:
                nursery.start_soon(self._poll, node)

    def _dead(self) -> list[str]:
        return [n.name for n in self.nodes if n.process is None or n.process.poll() is not None]

    async def _wait_mesh(self) -> bool:
        with trio.move_on_after(SETUP_TIMEOUT_S):
            while True:
                dead = self._dead()
                if dead:
                    self.say(f"agent(s) {', '.join(dead)} exited; see their agent.log")
                    return False
                await self._poll_all()
                ready = [
                    n for n in self.nodes
                    if (rep := n.replication) is not None
                    and len(rep.online_peers) == self.count - 1
                ]  # fmt: skip
                if len(ready) == self.count:
                    return True
                await trio.sleep(POLL_S)
        return False

    async def _wait_covers(self, target: dict[str, int]) -> bool:
        with trio.move_on_after(SETTLE_TIMEOUT_S):
            while True:
                await self._poll_all()
                if all(
                    (rep := n.replication) is not None
                    and all(rep.vv.get(o, 0) >= s for o, s in target.items())
                    for n in self.nodes
                ):  # fmt: skip
                    return True
                await trio.sleep(POLL_S)
        return False

    # -- the script ----------------------------------------------------------------------

    async def _at(self, start: float, fraction: float) -> None:
        await trio.sleep_until(start + fraction * self.duration)
        await self._poll_all()
        keys = [rep.keys if (rep := n.replication) else 0 for n in self.nodes]
        self.note("progress", keys=keys)

    async def _script(self, start: float, broker: EmbeddedBroker | None) -> None:
        self._alarm_report: dict[str, Any] = {}
        self._command_report: list[dict[str, Any]] = []
        await self._at(start, 0.2)
        self.say("n2's temperature sensor floods (1000 readings/s; S3 should attenuate it)")
        await self._at(start, 0.25)
        outage = max(1.0, 0.05 * self.duration)
        if broker is not None:
            self.say(f"broker restart: stopping the embedded broker for {outage:.1f} s")
            self.note("broker-restart", downtime_s=outage)
            await broker.restart(downtime=outage)
        else:
            self.say(f"broker outage: every agent cut from the broker for {outage:.1f} s")
            self.note("broker-outage", downtime_s=outage)
            for node in self.nodes:
                node.proxy.cut()
            await trio.sleep(outage)
            for node in self.nodes:
                node.proxy.heal()
        self.say("broker back")
        await self._at(start, 0.45)
        victim = self.nodes[-1]
        self.say(f"partition: {victim.name} cut off from the broker")
        self.note("partition", node=victim.name)
        before = self._reconnects(victim)
        victim.proxy.cut()
        await self._at(start, 0.65)
        victim.proxy.heal()
        healed = trio.current_time()
        self.say(f"partition healed: {victim.name} reconnects")
        self.note("heal", node=victim.name)
        # Its transport retries with exponential backoff (0.1 s doubling, with
        # jitter), so after a few seconds cut off it may take a while to come
        # back: say when it did, since the alarm that follows must reach it too.
        alarm_at = start + 0.75 * self.duration
        with trio.move_on_at(alarm_at):
            # polling another process's status endpoint: no event to wait on
            while not (await self._poll(victim) and self._reconnects(victim) > before):  # noqa: ASYNC110
                await trio.sleep(POLL_S)
            took = trio.current_time() - healed
            self.say(f"{victim.name} reconnected {took:.1f} s after the heal (its backoff)")
            self.note("reconnected", node=victim.name, after_heal_s=round(took, 2))
        if self._reconnects(victim) <= before:
            self.say(f"{victim.name} has not reconnected yet (backoff); the alarm goes out anyway")
        await self._at(start, 0.75)
        await self._alarm()
        await trio.sleep_until(start + self.duration)
        await self._poll_all()

    async def _alarm(self) -> None:
        origin = self.nodes[0]
        client = await self._client(origin)
        assert client is not None
        try:
            answer = await trio.to_thread.run_sync(
                lambda: client.raise_alarm(0.97, "operator.estop", "demo: emergency stop")
            )
        except StatusClientError as exc:
            self.say(f"could not raise the alarm: {exc}")
            return
        alarm_id = str(answer.get("id", ""))
        self.say(f"operator raised a critical alarm on {origin.name} (id {alarm_id[:12]})")
        self.note("alarm", node=origin.name, id=alarm_id)
        heard: dict[str, int] = {}
        with trio.move_on_after(ALARM_TIMEOUT_S):
            while len(heard) < self.count - 1:
                await self._poll_all()
                for node in self.nodes[1:]:
                    rep = node.replication
                    ms = None if rep is None else rep.alarms_heard_ms.get(alarm_id)
                    if ms is not None:
                        heard[node.name] = int(ms)
                await trio.sleep(0.1)
        values = sorted(heard.values())
        self._alarm_report = {
            "id": alarm_id,
            "heard_by": len(heard),
            "peers": self.count - 1,
            "per_node_ms": heard,
            **_pcts(values),
        }
        if len(heard) == self.count - 1:
            self.say(f"the alarm reached all {len(heard)} peers: p50 {_pcts(values)['p50']} ms, "
                     f"max {values[-1]} ms")  # fmt: skip
        else:
            self.say(f"the alarm reached {len(heard)} of {self.count - 1} peers")
        if self.count > 1 and alarm_id:
            self._alarm_report["ack"] = await self._acknowledge(alarm_id)
        if self.count > 1:
            self._command_report = await self._commands()

    async def _commands(self) -> list[dict[str, Any]]:
        """An operator on n2's host commands n1's vent: once in range, once out of it."""
        by, target = self.nodes[1], self.nodes[0]
        client = await self._client(by)
        assert client is not None
        out: list[dict[str, Any]] = []
        for value in (40, 140):
            line = f"vsm-edge command {target.name} vent open {value} (on {by.name}'s host)"
            sent = trio.current_time()
            try:
                outcome = await trio.to_thread.run_sync(
                    functools.partial(client.command, target.name, "vent", "open", value)
                )
            except StatusClientError as exc:
                self.say(f"{line}: {exc}")
                out.append({"value": value, "error": str(exc)})
                continue
            took = round((trio.current_time() - sent) * 1000)
            why = f": {outcome['why']}" if outcome.get("why") else ""
            self.say(f"{line}: {outcome['status']}{why} ({took} ms)")
            out.append({"value": value, "status": outcome["status"], "why": outcome.get("why"),
                        "ms": took})  # fmt: skip
        return out

    async def _acknowledge(self, alarm_id: str) -> dict[str, Any]:
        """An operator on n2 acknowledges the alarm; time until every node holds that."""
        by = self.nodes[1]
        client = await self._client(by)
        assert client is not None
        sent = trio.current_time()
        try:
            await trio.to_thread.run_sync(lambda: client.ack_alarm(alarm_id[:8]))
        except StatusClientError as exc:
            self.say(f"could not acknowledge the alarm on {by.name}: {exc}")
            return {"by": by.name, "error": str(exc)}
        self.say(f"operator on {by.name} acknowledged it (vsm-edge alarm ack {alarm_id[:8]})")
        acked: dict[str, float] = {}
        with trio.move_on_after(ALARM_TIMEOUT_S):
            while len(acked) < self.count:
                await self._poll_all()
                for node in self.nodes:
                    if node.name in acked or node.status is None:
                        continue
                    for alarm in node.status.vsm.algedonic.alarms:
                        if alarm.id == alarm_id and alarm.acked_by == by.name:
                            acked[node.name] = round((trio.current_time() - sent) * 1000)
                await trio.sleep(0.05)
        if len(acked) == self.count:
            self.say(f"acknowledged on all {self.count} nodes {max(acked.values()):.0f} ms after "
                     f"the operator's command (polled every 50 ms)")  # fmt: skip
        else:
            missing = [n.name for n in self.nodes if n.name not in acked]
            self.say(f"acknowledged on {len(acked)} of {self.count} nodes; not on {missing}")
        return {"by": by.name, "nodes": len(acked), "per_node_ms": acked}

    async def _stop_all(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT_S):
            for node in self.nodes:
                if node.process is not None:
                    await node.process.wait()
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.kill()
                await node.process.wait()

    # -- the report -----------------------------------------------------------------------

    def _summary(
        self, *, converged: bool, settle_s: float | None, alarm: dict[str, Any], formed: bool
    ) -> dict[str, Any]:
        receipts: list[float] = []
        by_update: dict[tuple[str, int], list[float]] = {}
        for node in self.nodes:
            try:
                samples = json.loads((node.data_dir / "replication-samples.json").read_text())
            except (OSError, ValueError):
                continue
            for key, written, latency in samples:
                receipts.append(float(latency))
                by_update.setdefault((str(key), int(written)), []).append(float(latency))
        everywhere = sorted(max(v) for v in by_update.values() if len(v) == self.count - 1)
        reps = [rep for n in self.nodes if (rep := n.replication) is not None]
        messages = sum(rep.replicator.transport.messages_out for rep in reps)
        nbytes = sum(rep.replicator.transport.bytes_out for rep in reps)
        return {
            "nodes": self.count,
            "duration_s": self.duration,
            "broker": self.external or "embedded amqtt",
            "mesh_formed": formed,
            "converged": converged,
            "settle_s": None if settle_s is None else round(settle_s, 3),
            "convergence_ms": {**_pcts(everywhere), "updates": len(everywhere)},
            "receipt_latency_ms": _pcts(sorted(receipts)),
            "alarm_propagation_ms": alarm,
            "commands": getattr(self, "_command_report", []),
            "messages": messages,
            "bytes": nbytes,
            "events": self.events,
            "statuses": [n.document for n in self.nodes],
            "device": self.device.report(
                {n.name: None if n.status is None else n.status.vsm for n in self.nodes},
                {n.name: n.data_dir / "replication-samples.json" for n in self.nodes},
            )
            if self.device is not None
            else {"node": None, "note": self.device_note},
        }

    def _print_report(self, summary: dict[str, Any]) -> None:
        out = self.out
        print("", file=out)
        print(f"{'NODE':<5} {'KEYS':>5} {'PEERS':>5} {'PAIN':>7} {'SAFE':>5} "
              f"{'VARIETY':>7} {'ATTEN.':>7} {'ALARMS':>6} {'GW ALLOW':>8} {'GW DENY':>7} "
              f"{'MSGS OUT':>8}", file=out)  # fmt: skip
        for node in self.nodes:
            print(_report_row(node), file=out)
        conv = summary["convergence_ms"]
        alarm = summary["alarm_propagation_ms"]
        print("", file=out)
        print(f"converged: {summary['converged']}   messages: {summary['messages']}   "
              f"bytes: {summary['bytes']}", file=out)  # fmt: skip
        if conv.get("updates"):
            print(f"update -> all peers: p50 {conv['p50']} ms, p99 {conv['p99']} ms "
                  f"({conv['updates']} updates seen by every peer)", file=out)  # fmt: skip
        if alarm.get("heard_by"):
            print(f"operator alarm -> peers: p50 {alarm.get('p50')} ms, p99 {alarm.get('p99')} "
                  f"ms ({alarm['heard_by']}/{alarm['peers']} peers)", file=out)  # fmt: skip
        ack = alarm.get("ack") or {}
        if ack.get("per_node_ms"):
            print(f"acknowledged on {ack['by']} -> held acknowledged by {ack['nodes']} nodes "
                  f"within {max(ack['per_node_ms'].values()):.0f} ms", file=out)  # fmt: skip
        for command in summary["commands"]:
            if "status" in command:
                print(f"command n2 -> n1 vent.open {command['value']}: {command['status']} "
                      f"in {command['ms']} ms", file=out)  # fmt: skip
        device = summary["device"]
        if device.get("node"):
            rep = device["replication_ms"]
            print(f"device on {device['node']} ({device['device_id']}, "
                  f"{'/'.join(device['readings'])}): {device['readings_received']} readings "
                  f"MCU -> bridge -> S1; held by {len(device['peers_holding_readings'])}/"
                  f"{self.count - 1} peers (p50 {rep.get('p50', '-')} ms)", file=out)  # fmt: skip
        else:
            print(f"device: none ({device['note']})", file=out)


def _report_row(node: _Node) -> str:
    """One node's line of the final table ("-" where its status says nothing)."""
    st, rep = node.status, node.replication
    if st is None:
        cells = ("-", 0, _fmt(0.0), "off", "-", 0, 0, "-", "-", "-")
        widths = (5, 5, 7, 5, 7, 7, 6, 8, 7, 8)
        row = " ".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True))
        return f"{node.name:<5} {row}"
    gw = st.gateway if isinstance(st.gateway, GatewayStatus) else None
    att = st.vsm.s3.attenuation
    dropped = sum(att.dropped.values()) + sum(att.aggregated.values())
    alarms = [a for a in st.vsm.algedonic.alarms if not a.acked]
    return (
        f"{node.name:<5} {rep.keys if rep else '-':>5} {len(rep.online_peers) if rep else 0:>5} "
        f"{_fmt(max((a.intensity for a in alarms), default=0.0)):>7} "
        f"{'ON' if st.vsm.node.safe_mode else 'off':>5} "
        f"{_fmt(st.vsm.s4.variety_ratio):>7} {dropped:>7} "
        f"{len(alarms):>6} {gw.allow if gw else '-':>8} {gw.deny if gw else '-':>7} "
        f"{rep.replicator.transport.messages_out if rep else '-':>8}"
    )


def _pcts(values: list[float] | list[int]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(float(ordered[min(len(ordered) - 1, int(q * len(ordered)))]), 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(float(ordered[-1]), 1)}


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) and not isinstance(value, bool) else "-"
