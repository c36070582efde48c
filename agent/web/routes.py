"""The agent's web routes: Prometheus metrics, the dashboard and its JSON view.

:func:`install_agent_routes` adds to the agent's loopback status endpoint::

    GET /metrics     Prometheus text format (agent/web/metrics.py)
    GET /view.json   the mesh as this agent sees it (agent/web/view.py)
    GET /dashboard   the dashboard page (also GET /)
    POST /command    a command to a unit of any node (agent/web/command_route.py)

The aggregator serves the same page and the same two documents from its own
read-only server (agent/cli/aggregate.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from vsm_edge.sync import CrdtDocument, thaw, wall_clock_ms

from ..mesh.schema import MESH_DOC
from ..mesh.status import NodeStatus
from ..vsm.record import StatusRecord
from .command_route import command_response
from .http import HttpResponse, json_response
from .status import StatusServer, serve_status
from .view import History, LagTracker, alarm_entry, build_view, mesh_nodes, mesh_observers

if TYPE_CHECKING:
    from ..mesh.node import Agent
    from ..vsm.runtime import Runtime

__all__ = ["dashboard_response", "install_agent_routes", "metrics_response"]


@functools.cache
def _page() -> bytes:
    return resources.files("vsm_edge.agent.web").joinpath("dashboard.html").read_bytes()


def dashboard_response() -> HttpResponse:
    """The dashboard page (plain HTML + JS, no external resource)."""
    return HttpResponse(200, "text/html; charset=utf-8", _page())


def metrics_response(families: Any) -> HttpResponse:
    from .metrics import CONTENT_TYPE, render

    return HttpResponse(200, CONTENT_TYPE, render(families))


def _agent_metrics(runtime: Runtime) -> HttpResponse:
    # prometheus_client (~1.5 MB of RSS) is imported on the first scrape, not at start.
    from .metrics import agent_families

    return metrics_response(agent_families(NodeStatus(runtime.status())))


def agent_view(agent: Agent, runtime: Runtime, now_ms: int | None = None) -> dict[str, Any]:
    """The view document of one agent: itself and the peers in its mesh document."""
    now_ms = wall_clock_ms() if now_ms is None else now_ms
    status = NodeStatus(runtime.status())
    mesh = runtime.identity.mesh
    replicator = agent.replicator
    lag = LagTracker()
    for key, written, _latency in list(agent.samples):
        # the latency measured when the delta was joined, not now
        lag.observe(key, [0, written], written + int(_latency))
    values: dict[str, Any] = {}
    online: dict[str, bool] = {}
    meshes: list[dict[str, Any]] = []
    if replicator is not None:
        doc = replicator.docs.get(MESH_DOC)
        if isinstance(doc, CrdtDocument):
            values = {k: thaw(v) for k, v in doc.state.value().items()}
        online = {name: peer.online for name, peer in replicator.peers.items()}
        meshes.append(
            {
                "mesh": mesh,
                "online_peers": replicator.online_peers(),
                "replication": _section_json(status.replication),
                "gateway": _section_json(status.gateway),
            }
        )
    units = {
        f"{name}.{reading}": spec.unit
        for name, record in runtime.units.items()
        for reading, spec in record.specs.items()
        if spec.unit
    }
    nodes = mesh_nodes(
        mesh,
        values,
        now_ms=now_ms,
        online=online,
        lag=lag,
        self_node=agent.node,
        units={agent.node: units},
    )
    # Every alarm of the mesh this node holds but the cleared ones, with the mesh's
    # acknowledgement state (who and when); good news comes as events.
    algedonic = status.vsm.algedonic
    alarms = [
        alarm_entry(
            mesh=mesh,
            node=a.node,
            id=a.id,
            source=a.source,
            intensity=a.intensity,
            valence=a.valence,
            reason=a.reason,
            age_s=a.age_s,
            critical=a.critical,
            acked=a.acked,
            acked_by=a.acked_by or a.cleared_by,
            acked_ms=a.acked_at_ms or a.cleared_at_ms,
        )
        for a in (*algedonic.alarms, *algedonic.events)
        if a.state != "cleared"
    ]
    observers = mesh_observers(mesh, nodes, online)
    commands = agent.config.status.enabled  # its status endpoint takes POST /command
    return build_view(
        "agent", agent.node, now_ms, meshes, nodes, alarms, observers, commands=commands
    )


def _section_json(section: StatusRecord | None) -> Any:
    """A section's JSON for the view (``{}`` while the agent has none)."""
    return {} if section is None else section.to_json()


def serve_agent(agent: Agent, runtime: Runtime) -> StatusServer | None:
    """The agent's web face (an ``Agent`` extension): its status endpoint, if enabled,
    with /metrics, /view.json, /dashboard and /."""
    config = agent.config
    if not config.status.enabled:
        return None
    server = serve_status(
        runtime, config.status, config.node.data_dir if runtime.write_state else None
    )
    install_agent_routes(agent, runtime, server.routes)

    async def command(obj: Any) -> HttpResponse:
        async def issue(node: str, unit: str, cmd: str, value: Any, timeout_s: float) -> Any:
            return await agent.command(node, unit, cmd, value, timeout_s=timeout_s)

        return await command_response(issue, obj)

    server.post_routes["/command"] = command
    return server


def install_agent_routes(
    agent: Agent, runtime: Runtime, routes: dict[str, Callable[[], HttpResponse]]
) -> None:
    """Register /metrics, /view.json, /dashboard and / in ``routes`` (a status endpoint's).

    The agent keeps its plots' history only while someone looks (a point per
    second at most, when /view.json is asked for): it runs no task for it.
    """
    history = History()

    def view() -> HttpResponse:
        doc = agent_view(agent, runtime)
        history.record(doc)
        doc["history"] = history.export()
        return json_response(doc)

    routes["/metrics"] = functools.partial(_agent_metrics, runtime)
    routes["/view.json"] = view
    routes["/dashboard"] = dashboard_response
    routes["/"] = dashboard_response
