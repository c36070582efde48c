"""Quarantine in the agent: how fast honest agents quarantine a flooding node.

Two honest agents (whole ``Agent`` objects: SQLite store, VSM runtime,
replicator, ingress guard) and a rogue with a valid key (a real
``Replicator``) flooding the ``mesh`` document with deltas, on the in-memory
broker (the transport is not what is measured: the detector's rates are).
For each flood rate it prints the seconds from the first flood write to each
honest node's quarantine, how many writes the rogue made until then, and
whether a write made after both quarantines was merged anywhere.
Asserts nothing. Bounded: each rate gives up after ``--limit`` seconds.

    python bench/bench_quarantine.py                 # rates 30, 100, 400 /s
    python bench/bench_quarantine.py --rates 50 200
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from vsm_edge.agent import parse_config
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
)


def config(tmp: Path, node: str) -> Any:
    return parse_config(
        {
            "node": {"id": node, "mesh": "m", "data_dir": str(tmp / node)},
            "discovery": {"enabled": False},
            "status": {"enabled": False},
            "units": [{"name": "temp", "kind": "simulated-sensor", "options": {"period_s": 0.1}}],
        },
        base=tmp,
    )


def keys_of(agent: Agent) -> set[str]:
    assert agent.replicator is not None
    doc = agent.replicator.docs["mesh"]
    assert isinstance(doc, CrdtDocument)
    return {str(k) for k in doc.state.value()}


async def one_rate(rate: float, limit: float) -> dict[str, Any]:
    broker = MemoryBroker(seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        agents = [
            Agent(
                config(Path(tmp), n), transport_factory=lambda w, n=n: broker.transport(n, will=w)
            )
            for n in ("a", "b")
        ]
        async with trio.open_nursery() as nursery:
            for agent in agents:
                await nursery.start(agent.run)
            while True:  # until both hear each other
                if all(f"{o}/report" in keys_of(x) for x, o in zip(agents, "ba", strict=True)):
                    break
                await trio.sleep(0.05)
            clock = HybridLogicalClock("z")
            doc: CrdtDocument[ORMap] = CrdtDocument("mesh", ORMap)
            rogue = Replicator(
                ReplicatorConfig(mesh="m", node="z", gossip=GossipConfig(batch_interval=0.001)),
                NodeKey.generate(),
                clock,
                lambda w: broker.transport("z", will=w),
                {"mesh": doc},
            )
            await nursery.start(rogue.run)
            written = 0

            async def put(key: str, value: int) -> None:
                nonlocal written
                await rogue.mutate(
                    "mesh",
                    lambda m: m.update(
                        "z", f"z/{key}", CausalLWWRegister, lambda r: r.set("z", clock.now(), value)
                    ),
                )
                written += 1

            async def flood() -> None:
                i = 0
                while True:
                    i += 1
                    await put("flood", i)
                    await trio.sleep(1.0 / rate)

            start = time.monotonic()
            at: dict[str, float] = {}
            nursery.start_soon(flood)
            with trio.move_on_after(limit):
                while len(at) < len(agents):
                    for agent in agents:
                        gw = agent.gateway
                        assert gw is not None
                        if agent.node not in at and gw.detector.quarantined():
                            at[agent.node] = time.monotonic() - start
                    await trio.sleep(0.01)
            written_at_quarantine = written
            for i in range(10):
                await put("after", i)
            await trio.sleep(1.0)
            leaked = [x.node for x in agents if "z/after" in keys_of(x)]
            for agent in agents:
                agent.stop()
            nursery.cancel_scope.cancel()
    return {
        "rate": rate,
        "quarantined_s": at,
        "writes_before": written_at_quarantine,
        "leaked_after": leaked,
    }


async def main(rates: list[float], limit: float) -> None:
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{len(rates)} flood rates, limit {limit:g} s each")  # fmt: skip
    for rate in rates:
        r = await one_rate(rate, limit)
        times = ", ".join(f"{n} {t:.2f} s" for n, t in sorted(r["quarantined_s"].items()))
        missing = {"a", "b"} - set(r["quarantined_s"])
        print(
            f"flood {rate:>6g} writes/s: quarantined by {times or 'nobody'}"
            f"{' (not by ' + ', '.join(sorted(missing)) + ')' if missing else ''}; "
            f"rogue writes until then {r['writes_before']}; "
            f"writes after the quarantine merged by: {r['leaked_after'] or 'nobody'}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[30.0, 100.0, 400.0])
    parser.add_argument("--limit", type=float, default=30.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    trio.run(main, args.rates, args.limit)
