"""The agent process's composition, in one Trio run: two agents on the
in-memory broker (the real-process and real-broker versions are in
test_demo.py and the mesh tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from vsm_edge.agent import AgentConfig, parse_config
from vsm_edge.agent.mesh.node import Agent
from vsm_edge.agent.mesh.status import GatewayStatus, ReplicationStatus
from vsm_edge.sync import CrdtDocument, MemoryBroker


def config(name: str, data: Path) -> AgentConfig:
    return parse_config(
        {
            "node": {"id": name, "mesh": "t", "zone": "z", "data_dir": str(data / name)},
            "broker": {"url": "mqtt://127.0.0.1:1"},  # unused: the memory broker
            "discovery": {"enabled": False},
            "status": {"enabled": False},
            "units": [
                {
                    "name": "temp",
                    "kind": "simulated-sensor",
                    "options": {"reading": "celsius", "period_s": 0.05},
                }
            ],
        }
    )


@asynccontextmanager
async def agents(tmp_path: Path, *names: str) -> AsyncIterator[list[Agent]]:
    broker = MemoryBroker(seed=7)
    out: list[Agent] = []
    async with trio.open_nursery() as nursery:
        for name in names:
            agent = Agent(
                config(name, tmp_path),
                transport_factory=lambda will, name=name: broker.transport(name, will=will),
            )
            await nursery.start(agent.run)
            out.append(agent)
        yield out
        for agent in out:
            agent.stop()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out waiting for {what}")


def mesh_value(agent: Agent) -> dict[Any, Any]:
    assert agent.replicator is not None
    doc = agent.replicator.docs["mesh"]
    assert isinstance(doc, CrdtDocument)
    return doc.state.value()


async def test_readings_reports_alarms_and_leases_cross_the_mesh(tmp_path: Path) -> None:
    async with agents(tmp_path, "a", "b") as (a, b):
        assert a.runtime is not None
        assert b.runtime is not None
        # readings replicate, and b measures their replication latency
        await until(lambda: "a/r/temp.celsius" in mesh_value(b), "a's reading at b")
        await until(lambda: len(b.samples) > 0, "latency samples at b")
        # the VSM report feeds b's S4 mesh view
        await until(
            lambda: any(p.node == "a" for p in b.runtime.mesh_view.peers(trio.current_time())),
            "a in b's mesh view",
        )
        # an operator alarm raised on a reaches b's algedonic channel
        alarm = a.runtime.raise_signal("operator.estop", 0.97, "test")
        assert alarm is not None
        await until(
            lambda: any(x.signal.id == alarm.signal.id for x in b.runtime.algedonic.active()),
            "the alarm at b",
        )
        assert b.alarm_heard_latency_ms[alarm.signal.id] >= 0
        # a mesh-wide lease taken on a is seen as a's on b
        a.runtime.acquire_lease("pump", ttl_s=30)
        await until(lambda: b.runtime.lease_holder("pump") == "a", "the lease at b")
        # gateway counts are in the status, every message allowed
        status = b.status()
        assert isinstance(status.gateway, GatewayStatus)
        assert status.gateway.allow > 0
        assert status.gateway.deny == 0
        assert isinstance(status.replication, ReplicationStatus)
        assert status.replication.online_peers == ("a",)


async def test_state_and_key_survive_a_restart(tmp_path: Path) -> None:
    async with agents(tmp_path, "a") as (a,):
        await until(lambda: "a/r/temp.celsius" in mesh_value(a), "a local reading")
        assert a.replicator is not None
        kid = a.replicator.key.kid
        before = dict(mesh_value(a))
    async with agents(tmp_path, "a") as (a2,):
        assert a2.replicator is not None
        assert a2.replicator.key.kid == kid  # the key made on first start is reused
        recovered = mesh_value(a2)
        assert set(before) <= set(recovered)
