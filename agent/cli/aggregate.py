"""The aggregator role: ``vsm-edge aggregate --broker URL --mesh M [--mesh M2 ...]``.

The aggregator joins each mesh as a peer that owns no S1 unit: per mesh a
:class:`~vsm_edge.sync.Replicator` (its own node id and key, its own MQTT
connection) with the agents' ingress rule (``gateway_check``, retained
messages included), replicating the ``mesh`` document like any agent. So it
verifies every envelope (signature, replay, quarantines, the arbitrator's
MAYBE cases; its zone admits every key), merges the deltas, repairs gaps by
anti-entropy and sees presence and algedonic signals. It joins the alarm
records of the ``mesh`` document into each mesh's alarm ledger (the agents'
rule, ``vsm/alarm_ledger.py``) and writes nothing into the meshes but its
presence and, when an operator acknowledges an alarm on its dashboard, its own
acknowledgement record ``{aggregator}/a/{id}``, which every agent joins. What
it holds it serves on ``--http HOST:PORT`` (default 127.0.0.1:7790)::

    GET /dashboard (and /)   the dashboard (the same page as an agent's)
    GET /view.json           the merged view of every mesh (agent/web/view.py)
    GET /metrics             Prometheus: per node and per mesh (agent/web/metrics.py)
    GET /health              {"ok": true, "meshes": [...]}
    POST /alarm/{id}/ack     the dashboard's acknowledge button: acknowledges mesh-wide
                             ({id}: any unique prefix; 404 unknown, 409 ambiguous)
    POST /command            with --commands only (loopback only): a command to a
                             unit of a node of a joined mesh, signed with the
                             aggregator's key (agent/web/command_route.py)

Every other route answers GET and HEAD only (agent/web/http.py). The server has
no authentication: the acknowledge route is open only while it listens on a
loopback address, or with ``--allow-ack`` (then anyone who reaches it can
acknowledge alarms: give it an address only operators reach); otherwise it
answers 403. A POST must carry ``Content-Type: application/json`` (415), so a
page of another site cannot make a browser send one. The aggregator keeps no
store: after a restart it re-learns the meshes from retained presence and
anti-entropy (an acknowledgement it answered is in the mesh once an agent
has it).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import logging
import os
import re
import signal as signal_module
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import trio

from vsm_edge.models import Gateway, GatewayConfig, LazyArbitrator, ModelError
from vsm_edge.sync import (
    CausalLWWRegister,
    CrdtDocument,
    Envelope,
    HybridLogicalClock,
    Inbound,
    MqttSettings,
    MqttTransport,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    SyncError,
    Transport,
    Will,
    load_node_key,
    save_node_key,
    thaw,
    wall_clock_ms,
)

from .._errors import AgentError
from ..mesh.commands import CommandError, CommandOutcome, Commands
from ..mesh.ingress import OPEN_ZONE, gateway_check
from ..mesh.schema import MESH_DOC, alarm_key, alarm_record_in, alarm_record_value, parse_key
from ..vsm.alarm_ledger import AlarmLedger
from ..vsm.algedonic import Signal, decode_peer_signal
from ..vsm.settings import AlgedonicConfig
from ..web.command_route import CommandServer
from ..web.http import (
    BodyReader,
    HttpError,
    HttpResponse,
    ReadOnlyServer,
    json_response,
    require_json_post,
)
from ..web.metrics import view_families
from ..web.routes import dashboard_response, metrics_response
from ..web.view import (
    History,
    LagTracker,
    alarm_entry,
    build_view,
    mesh_nodes,
    mesh_observers,
)

__all__ = ["Aggregator", "AggregatorConfig", "add_aggregate_command", "cmd_aggregate"]

log = logging.getLogger("vsm_edge.agent.aggregate")

MAX_MESHES = 64
SIGNALS_PER_NODE = 32
MAX_SIGNAL_NODES = 4096
RECENT_ALARM_S = 600.0
LEDGER_UPKEEP_S = 10.0
_ALGEDONIC = AlgedonicConfig()  # the agents' defaults: what is critical, the retention


_ACK = re.compile(r"^/alarm/([0-9a-fA-F]{1,32})/ack$")


def _default_id() -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"agg-{host}"[:64] or "aggregator"


@dataclass(frozen=True, slots=True)
class AggregatorConfig:
    """Where to listen and what to join. Raises ValueError on a bad value."""

    broker_url: str
    meshes: tuple[str, ...] = ("default",)
    node: str = field(default_factory=_default_id)
    http_host: str = "127.0.0.1"
    http_port: int = 7790
    key_file: Path | None = None
    protocol: str = "auto"
    keepalive_s: int = 30
    allow_ack: bool = False  # the acknowledge route beyond loopback (module docstring)
    commands: bool = False  # POST /command (loopback only)

    def __post_init__(self) -> None:
        if "://" not in self.broker_url:
            raise ValueError(f"broker must be mqtt[s]://HOST:PORT, got {self.broker_url!r}")
        if not self.meshes or len(self.meshes) > MAX_MESHES:
            raise ValueError(f"give 1 to {MAX_MESHES} meshes")
        if len(set(self.meshes)) != len(self.meshes):
            raise ValueError("a mesh is named twice")
        for name in (*self.meshes, self.node):
            if not name or len(name) > 64 or not all(c.isalnum() or c in "-_" for c in name):
                raise ValueError(f"{name!r}: ids are 1-64 characters of A-Z a-z 0-9 _ -")
        if not 0 <= self.http_port < 65536:
            raise ValueError(f"http port {self.http_port} is not a TCP port")
        if self.commands and not _loopback(self.http_host):
            raise ValueError(
                f"--commands serves POST /command without authentication: give a loopback "
                f"--http address (127.0.0.1:PORT), not {self.http_host}"
            )


class _Mesh:
    """One joined mesh: its replicator, gateway, document, lag and heard signals."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.doc: CrdtDocument[ORMap] = CrdtDocument(MESH_DOC, ORMap)
        self.lag = LagTracker()
        self.signals: dict[str, dict[str, Signal]] = {}  # node -> id -> latest good news
        self.replicator: Replicator | None = None
        self.gateway: Gateway | None = None
        self.ledger: AlarmLedger | None = None
        self.commands: Commands | None = None


class Aggregator:
    """``await nursery.start(aggregator.run)`` returns the HTTP port; runs until cancelled.

    ``transport_factory(mesh, will)`` overrides the MQTT transport (tests use
    the in-memory broker). Raises AgentError for an unusable key or address.
    """

    def __init__(
        self,
        config: AggregatorConfig,
        *,
        transport_factory: Callable[[str, Will], Transport] | None = None,
        wall_clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.config = config
        self.node = config.node
        self._transport_factory = transport_factory
        self._wall_clock = wall_clock
        self.meshes = {name: _Mesh(name) for name in config.meshes}
        self.server: _AggregatorServer | None = None
        self.port: int | None = None
        self.history = History()

    # -- the service -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        key = await trio.to_thread.run_sync(self._load_key)
        clock = HybridLogicalClock(self.node, self._wall_clock)
        async with trio.open_nursery() as nursery:
            for mesh in self.meshes.values():
                mesh.gateway = Gateway(
                    # every key: the aggregator observes, the agents enforce their zones
                    zone=OPEN_ZONE,
                    replay_key=os.urandom(32),
                    arbitrator=_lazy_arbitrator(),
                    config=GatewayConfig(),
                    now_ms=self._wall_clock(),
                )
                mesh.ledger = AlarmLedger(
                    self.node,
                    critical=_ALGEDONIC.critical,
                    retention_s=_ALGEDONIC.retention_s,
                    max_per_writer=_ALGEDONIC.max_alarms,
                )
                mesh.doc.observe(self._observer(mesh))
                mesh.replicator = Replicator(
                    ReplicatorConfig(mesh=mesh.name, node=self.node),
                    key,
                    clock,
                    self._factory(mesh.name),
                    {MESH_DOC: mesh.doc},
                    ingress=self._ingress(mesh),
                    on_app=self._on_app(mesh),
                )
                mesh.commands = Commands(
                    self.node,
                    None,  # the aggregator owns no unit: it only issues commands
                    functools.partial(_publish_addressed, mesh.replicator),
                    wall_clock=self._wall_clock,
                )
                await nursery.start(mesh.replicator.run)
                await nursery.start(mesh.commands.run)
            cfg = self.config
            self.server = _AggregatorServer(
                self.routes(),
                cfg.http_host,
                cfg.http_port,
                self.command if cfg.commands else None,
            )
            self.server.aggregator = self
            self.server.allow_ack = cfg.allow_ack or _is_loopback(cfg.http_host)
            self.port = await nursery.start(self.server.run)
            nursery.start_soon(self._record_history)
            task_status.started(self.port)

    async def _record_history(self) -> None:
        """One point a second, viewed or not: a page loaded later draws the past minutes;
        every ``LEDGER_UPKEEP_S`` the alarm ledgers' retention rule."""
        upkeep_at = trio.current_time() + LEDGER_UPKEEP_S
        while True:
            self.history.record(self.view())
            if trio.current_time() >= upkeep_at:
                upkeep_at = trio.current_time() + LEDGER_UPKEEP_S
                for mesh in self.meshes.values():
                    if mesh.ledger is not None and mesh.replicator is not None:
                        for alarm_id in mesh.ledger.expired(self._wall_clock()):
                            await self._remove_record(mesh.replicator, alarm_id)
            await trio.sleep(self.history.interval_ms / 1000)

    # -- alarms: acknowledged here, for the whole mesh ---------------------------------------

    def resolve_alarm(self, prefix: str) -> tuple[_Mesh, str]:
        """The mesh and id of the one alarm ``prefix`` starts; HttpError 404 / 409."""
        found = [
            (mesh, alarm_id)
            for mesh in self.meshes.values()
            if mesh.ledger is not None
            for alarm_id in mesh.ledger.resolve(prefix)
        ]
        if not found:
            raise HttpError(404, f"no alarm with an id starting {prefix}")
        if len(found) > 1:
            some = ", ".join(sorted(i for _, i in found)[:5])
            raise HttpError(
                409,
                f"alarm id prefix {prefix} is ambiguous: {len(found)} alarms start with it "
                f"({some}); give more digits",
            )
        return found[0]

    async def acknowledge(self, prefix: str) -> dict[str, Any]:
        """Acknowledge the alarm ``prefix`` names, mesh-wide: our record in its mesh."""
        mesh, alarm_id = self.resolve_alarm(prefix)
        replicator, ledger = mesh.replicator, mesh.ledger
        assert replicator is not None
        assert ledger is not None
        entry = ledger.acknowledge(alarm_id, replicator.clock.now())
        assert entry is not None
        node = self.node
        for written_id, record in ledger.take_dirty():
            key, value = alarm_key(node, written_id), alarm_record_value(record)

            def mutate(state: ORMap, key: str = key, value: Any = value) -> ORMap:
                stamp = replicator.clock.now()
                return state.update(
                    node, key, CausalLWWRegister, lambda r: r.set(node, stamp, value)
                )

            try:
                await replicator.mutate(MESH_DOC, mutate)
            except SyncError as exc:
                ledger.mark_dirty(written_id)
                raise HttpError(503, f"the acknowledgement could not be sent: {exc}") from None
        return {"id": alarm_id, "mesh": mesh.name, "acked": True, "state": entry.state}

    async def _remove_record(self, replicator: Replicator, alarm_id: str) -> None:
        key, node = alarm_key(self.node, alarm_id), self.node
        try:
            await replicator.mutate(MESH_DOC, lambda state: state.remove(node, key))
        except SyncError as exc:
            log.debug("could not remove %s: %s", key, exc)

    def routes(self) -> dict[str, Callable[[], HttpResponse]]:
        return {
            "/": dashboard_response,
            "/dashboard": dashboard_response,
            "/view.json": lambda: json_response(self.view(with_history=True)),
            "/metrics": lambda: metrics_response(view_families(self.view())),
            "/health": lambda: json_response(
                {"ok": True, "node": self.node, "meshes": list(self.meshes)}
            ),
        }

    async def command(
        self, node: str, unit: str, cmd: str, value: Any, timeout_s: float
    ) -> CommandOutcome:
        """Command ``unit.cmd`` on ``node``, in the one joined mesh that knows it.

        Raises CommandError when no mesh, or more than one, has ``node`` as a peer.
        """
        found = [
            m for m in self.meshes.values()
            if m.replicator is not None and node in m.replicator.peers
        ]  # fmt: skip
        if len(found) != 1:
            where = "no joined mesh" if not found else f"meshes {[m.name for m in found]}"
            raise CommandError(f"node {node!r} is known in {where}")
        commands = found[0].commands
        assert commands is not None
        return await commands.issue(node, unit, cmd, value, timeout_s=timeout_s)

    def _load_key(self) -> NodeKey:
        path = self.config.key_file
        try:
            if path is None:
                return NodeKey.generate()  # a new identity per run: it owns no data
            if not path.exists():
                save_node_key(NodeKey.generate(), path)
            return load_node_key(path)
        except SyncError as exc:
            raise AgentError(f"aggregator key: {exc}") from exc

    def _factory(self, mesh: str) -> Callable[[Will], Transport]:
        if self._transport_factory is not None:
            factory = self._transport_factory
            return lambda will: factory(mesh, will)
        url = self.config.broker_url
        options: dict[str, Any] = {
            "keepalive": self.config.keepalive_s,
            "protocol": self.config.protocol,
        }

        def make(will: Will) -> Transport:
            # one connection per mesh: client ids must differ
            client_id = f"{self.node}.{mesh}"[:128]
            try:
                settings = MqttSettings.from_url(url, client_id=client_id, will=will, **options)
            except ValueError as exc:
                raise AgentError(str(exc)) from None
            return MqttTransport(settings)

        return make

    # -- ingress, as an agent does it ------------------------------------------------------

    def _ingress(self, mesh: _Mesh) -> Callable[[Inbound], str | None]:
        def check(inbound: Inbound) -> str | None:
            gateway = mesh.gateway
            assert gateway is not None
            return gateway_check(gateway, inbound)  # the agents' rule; it knows no admin key

        return check

    def _observer(self, mesh: _Mesh) -> Callable[[str, Any, bool], None]:
        def joined(doc: str, delta: Any, local: bool) -> None:
            if local:
                return
            now_ms = self._wall_clock()
            for key, frozen in delta.value().items():
                if isinstance(key, str):
                    mesh.lag.observe(key, thaw(frozen), now_ms)
                info = parse_key(key)
                if info is None or info.kind != "alarm" or mesh.ledger is None:
                    continue
                record = alarm_record_in(delta, key, info.origin)  # as on the agents
                if record is None:
                    mesh.ledger.refused += 1
                else:
                    mesh.ledger.merge(info.origin, info.name, record)

        return joined

    def _on_app(self, mesh: _Mesh) -> Callable[[str, str, Any, Envelope], str | None]:
        def heard(channel: str, sender: str, body: Any, envelope: Envelope) -> str | None:
            if channel in ("cmd", "cmdr") and mesh.commands is not None:
                if channel == "cmdr":
                    return mesh.commands.on_outcome(sender, body)
                return mesh.commands.on_command(sender, envelope.kid, body)
            if channel != "alg":
                return None  # a policy is for the agents to enforce
            sig, refused = decode_peer_signal(sender, body)
            if sig is None:
                return refused  # counted by the replicator
            if sig.pain:
                if mesh.ledger is not None and self._wall_clock() - sig.hlc.wall < (
                    mesh.ledger.retention_ms
                ):
                    mesh.ledger.hear(sig)  # known before its record arrives by gossip
                return None
            per_node = mesh.signals.get(sender)
            if per_node is None:
                if len(mesh.signals) >= MAX_SIGNAL_NODES:
                    del mesh.signals[next(iter(mesh.signals))]
                per_node = mesh.signals[sender] = {}
            per_node.pop(sig.id, None)
            per_node[sig.id] = sig
            while len(per_node) > SIGNALS_PER_NODE:
                del per_node[next(iter(per_node))]
            return None

        return heard

    # -- the merged view --------------------------------------------------------------------

    def view(self, now_ms: int | None = None, *, with_history: bool = False) -> dict[str, Any]:
        """The merged view of every joined mesh (the document of ``GET /view.json``)."""
        now_ms = self._wall_clock() if now_ms is None else now_ms
        meshes: list[dict[str, Any]] = []
        nodes: list[dict[str, Any]] = []
        alarms: list[dict[str, Any]] = []
        observers: list[dict[str, Any]] = []
        for mesh in self.meshes.values():
            replicator = mesh.replicator
            online = (
                {n: p.online for n, p in replicator.peers.items()} if replicator is not None else {}
            )
            online.pop(self.node, None)
            values = {k: thaw(v) for k, v in mesh.doc.state.value().items()}
            mesh_view = mesh_nodes(mesh.name, values, now_ms=now_ms, online=online, lag=mesh.lag)
            nodes += mesh_view
            observers += mesh_observers(mesh.name, mesh_view, online)
            for node, signals in mesh.signals.items():
                for sig in signals.values():  # good news: events
                    age_s = max(0.0, (now_ms - sig.hlc.wall) / 1000.0)
                    if age_s < RECENT_ALARM_S:
                        alarms.append(
                            alarm_entry(
                                mesh=mesh.name,
                                node=node,
                                id=sig.id,
                                source=sig.source,
                                intensity=sig.intensity,
                                valence=sig.valence,
                                reason=sig.reason,
                                age_s=round(age_s, 3),
                                critical=False,
                                acked=None,
                            )
                        )
            for entry in mesh.ledger.alarms() if mesh.ledger is not None else ():
                raised = entry.signal
                if raised is None or entry.cleared is not None:
                    continue
                acked = entry.acked
                alarms.append(
                    alarm_entry(
                        mesh=mesh.name,
                        node=raised.node,
                        id=raised.id,
                        source=raised.source,
                        intensity=raised.intensity,
                        valence=raised.valence,
                        reason=raised.reason,
                        age_s=round(max(0.0, (now_ms - raised.hlc.wall) / 1000.0), 3),
                        critical=entry.critical,
                        acked=acked is not None,
                        acked_by=None if acked is None else acked.node,
                        acked_ms=None if acked is None else acked.wall,
                    )
                )
            if replicator is not None:
                gateway = mesh.gateway
                meshes.append(
                    {
                        "mesh": mesh.name,
                        "online_peers": [p for p in replicator.online_peers() if p != self.node],
                        "replication": {
                            **replicator.statistics(),
                            "latency_ms": mesh.lag.all(),
                            "keys": len(values),
                            "vv": dict(mesh.doc.state.digest().vv),
                        },
                        "gateway": dict(gateway.statistics()) if gateway is not None else {},
                    }
                )
        out = build_view(
            "aggregator",
            self.node,
            now_ms,
            meshes,
            nodes,
            alarms,
            observers,
            commands=self.config.commands,
        )
        if with_history:
            out["history"] = self.history.export()
        return out


class _AggregatorServer(CommandServer):
    """The read-only routes, ``POST /alarm/{id}/ack`` and, with ``--commands``,
    ``POST /command`` (see the module doc)."""

    aggregator: Aggregator | None = None
    allow_ack = False

    def __init__(
        self, routes: Mapping[str, Callable[[], HttpResponse]], host: str, port: int, issue: Any
    ) -> None:
        super().__init__(routes, host, port, issue)
        self.commands_enabled = issue is not None

    async def handle(self, request: h11.Request, read_body: BodyReader) -> HttpResponse:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if path == "/command":
            if not self.commands_enabled:  # without --commands: a read-only server's answer
                return await ReadOnlyServer.handle(self, request, read_body)
            return await super().handle(request, read_body)  # CommandServer checks it
        match = _ACK.match(path)
        if match is None:
            return await super().handle(request, read_body)
        if request.method != b"POST":
            raise HttpError(405, f"method {request.method.decode('ascii', 'replace')} not "
                            "allowed (use POST)")  # fmt: skip
        require_json_post(request)
        if not self.allow_ack or self.aggregator is None:
            raise HttpError(
                403,
                "this aggregator listens beyond loopback without --allow-ack: acknowledge "
                f"on the alarm's node (vsm-edge alarm ack {match.group(1)} on its host)",
            )
        return json_response(await self.aggregator.acknowledge(match.group(1).lower()))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


# -- the command ---------------------------------------------------------------------------


def add_aggregate_command(sub: Any) -> None:
    from .run import add_log_options

    agg = sub.add_parser(
        "aggregate", help="join meshes as an observer; serve their merged view and a dashboard"
    )
    agg.add_argument("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://...)")
    agg.add_argument(
        "--mesh",
        action="append",
        dest="meshes",
        metavar="MESH",
        help="a mesh to join (repeat for more; default: default)",
    )
    agg.add_argument("--id", default=None, help="the aggregator's node id (default agg-HOSTNAME)")
    agg.add_argument(
        "--http",
        default="127.0.0.1:7790",
        metavar="HOST:PORT",
        help="where to serve the dashboard, /view.json and /metrics (read-only; "
        "default 127.0.0.1:7790; port 0: any free port)",
    )
    agg.add_argument(
        "--allow-ack",
        action="store_true",
        help="let the dashboard acknowledge alarms although --http is not a loopback "
        "address (anyone who reaches it can then acknowledge)",
    )
    agg.add_argument("--key", type=Path, help="keep the aggregator's key in this file")
    agg.add_argument(
        "--commands",
        action="store_true",
        help="also serve POST /command (remote commands signed with the aggregator's key, "
        "as the policy grants it); only on a loopback --http address",
    )
    agg.add_argument("--port-file", type=Path, help="write the bound HTTP port here")
    agg.add_argument("--protocol", choices=("auto", "5", "3.1.1"), default="auto")
    add_log_options(agg)
    agg.set_defaults(handler=cmd_aggregate)


def cmd_aggregate(args: argparse.Namespace) -> int:
    from .run import configure_logging

    configure_logging(args)
    host, _, port = args.http.rpartition(":")
    try:
        config = AggregatorConfig(
            broker_url=args.broker,
            meshes=tuple(args.meshes or ("default",)),
            node=args.id or _default_id(),
            http_host=host.strip("[]") or "127.0.0.1",
            http_port=int(port),
            key_file=args.key,
            protocol=args.protocol,
            allow_ack=args.allow_ack,
            commands=args.commands,
        )
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    trio.run(_serve, config, args.port_file)
    return 0


async def _serve(config: AggregatorConfig, port_file: Path | None) -> None:
    aggregator = Aggregator(config)
    with trio.open_signal_receiver(signal_module.SIGTERM, signal_module.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(aggregator.run)
            if port_file is not None:
                await trio.Path(port_file).write_text(f"{port}\n")
            host = config.http_host if ":" not in config.http_host else f"[{config.http_host}]"
            print(
                f"vsm-edge: aggregator {config.node} on {', '.join(config.meshes)}; "
                f"dashboard at http://{host}:{port}/dashboard",
                file=sys.stderr,
                flush=True,
            )
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


async def _publish_addressed(
    replicator: Replicator, channel: str, body: dict[str, Any], to: str
) -> None:
    await replicator.publish_app(channel, body, retain=False, to=to)


def _lazy_arbitrator() -> LazyArbitrator | None:
    """The shipped model, checked now and built on the first MAYBE; None (DENY) if unusable."""
    try:
        return LazyArbitrator()
    except ModelError as exc:
        log.warning("arbitrator unavailable (%s): %s; MAYBE decisions will DENY", exc.reason, exc)
        return None
