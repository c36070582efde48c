"""Agents for the security tests: configs, start/stop, a rogue node, waiting.

Import explicitly: ``from support.security import agent_config, running_agents``.
Agents run in-process (real store, real runtime, real gateway) on the
in-memory broker or on a real Mosquitto (``url=``).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from vsm_edge.agent import AgentConfig, parse_config
from vsm_edge.agent.mesh.node import Agent
from vsm_edge.sync import (
    CausalLWWRegister,
    CrdtDocument,
    GossipConfig,
    HybridLogicalClock,
    MemoryBroker,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    Transport,
    Will,
)

__all__ = ["Rogue", "agent_config", "mesh_keys", "running_agents", "wait_until"]

WAIT = 20.0  # bound on any one wait


def agent_config(
    tmp: Path,
    node: str,
    *,
    mesh: str = "m",
    security: dict[str, Any] | None = None,
    admin_keys: Sequence[bytes] = (),
    key_file: Path | None = None,
    sensor_period_s: float = 0.1,
) -> AgentConfig:
    """A small agent: one simulated sensor, no mDNS, no status port."""
    node_table: dict[str, Any] = {"id": node, "mesh": mesh, "data_dir": str(tmp / node)}
    if key_file is not None:
        node_table["key_file"] = str(key_file)
    data: dict[str, Any] = {
        "node": node_table,
        "discovery": {"enabled": False},
        "status": {"enabled": False},
        "s5": {"admin_keys": [k.hex() for k in admin_keys]},
        "security": dict(security or {}),
        "units": [
            {
                "name": "temp",
                "kind": "simulated-sensor",
                "options": {"period_s": sensor_period_s, "mean": 20.0, "noise": 1.0},
            }
        ],
    }
    return parse_config(data, base=tmp)


@asynccontextmanager
async def running_agents(
    configs: Sequence[AgentConfig],
    *,
    broker: MemoryBroker | None = None,
    url: str | None = None,
) -> AsyncIterator[list[Agent]]:
    """Start one :class:`Agent` per config (memory broker or ``url``); stop them all after."""
    agents: list[Agent] = []
    async with trio.open_nursery() as nursery:
        for config in configs:
            factory: Callable[[Will], Transport] | None = None
            if broker is not None:
                factory = _memory_factory(broker, config.node.id)
            agent = Agent(config, transport_factory=factory, broker_url=url, protocol="5")
            with trio.fail_after(WAIT):
                await nursery.start(agent.run)
            agents.append(agent)
        try:
            yield agents
        finally:
            for agent in agents:
                agent.stop()
            with trio.move_on_after(10):
                for agent in agents:
                    await agent.stopped()
            nursery.cancel_scope.cancel()


def _memory_factory(broker: MemoryBroker, node: str) -> Callable[[Will], Transport]:
    return lambda will: broker.transport(node, will=will)


async def wait_until(
    predicate: Callable[[], bool], what: str, *, timeout: float = WAIT, step: float = 0.05
) -> float:
    """Poll ``predicate`` until it holds; the seconds it took. Fails naming ``what``."""
    start = time.monotonic()
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(step)
        return time.monotonic() - start
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def mesh_keys(agent: Agent) -> set[str]:
    """The keys of the agent's replicated ``mesh`` document."""
    assert agent.replicator is not None
    doc = agent.replicator.docs["mesh"]
    assert isinstance(doc, CrdtDocument)
    return {str(k) for k in doc.state.value()}


class Rogue:
    """A validly keyed node (a real :class:`Replicator`) that floods the mesh with deltas."""

    def __init__(
        self, node: str, mesh: str, factory: Callable[[Will], Transport], key: NodeKey
    ) -> None:
        self.node = node
        self.clock = HybridLogicalClock(node)
        self.doc: CrdtDocument[ORMap] = CrdtDocument("mesh", ORMap)
        self.replicator = Replicator(
            ReplicatorConfig(mesh=mesh, node=node, gossip=GossipConfig(batch_interval=0.001)),
            key,
            self.clock,
            factory,
            {"mesh": self.doc},
        )
        self.written = 0

    async def put(self, key: str, value: Any) -> None:
        node, clock = self.node, self.clock
        await self.replicator.mutate(
            "mesh",
            lambda m: m.update(
                node, f"{node}/{key}", CausalLWWRegister, lambda r: r.set(node, clock.now(), value)
            ),
        )
        self.written += 1

    async def flood(self, rate: float, *, key: str = "flood") -> None:
        """Write ``key`` at about ``rate`` writes a second until cancelled."""
        interval = 1.0 / rate
        i = 0
        while True:
            i += 1
            await self.put(key, i)
            await trio.sleep(interval)
