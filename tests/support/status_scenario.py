"""A deterministic runtime whose status has every part filled in (for the status-type tests).

:func:`busy_runtime` runs on Trio's MockClock: sensors (one floods, so S3
attenuates), two controllers fighting over an actuator (S2 damps them), a
crashing unit (restarts), a unit with a ``status()`` detail that confirms its
commands (one ok, one failed), a unit whose ``status()`` raises, a spiking
sensor (an S4 anomaly), a signed policy, peers (one with a skewed clock), a
remote alarm, an operator alarm acknowledged, an open circuit breaker and two
leases. Everything is seeded or virtual-time, so two runs give the same status.

``tests/vectors/status-vsm.json`` is the status of this runtime as the code
before the typed status produced it (``python tests/support/status_scenario.py``
writes it again; do that only on purpose: the test compares against it).

``tests/vectors/status-agent.json`` holds, from the same code, the mesh
sections: ``agent`` the whole status of a live agent (two agents on the
in-memory broker: real store, replicator, gateway; timing-dependent, so the
test compares its shape and its round trip), ``gateway`` the section of a
deterministic ingress guard (a zone installed, a quarantine, a proposal) and
``discovery`` the section made from a stand-in discovery table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import hypothesis  # noqa: F401 - its Trio plugin makes the scheduler's order seedable, as under pytest
import nacl.signing
import trio
import trio.testing

HERE = Path(__file__).resolve().parent
VECTOR = HERE.parent / "vectors" / "status-vsm.json"
AGENT_VECTOR = HERE.parent / "vectors" / "status-agent.json"
ADMIN = nacl.signing.SigningKey(bytes(range(32)))  # fixed: the signer's id is in the status


class Gadget:
    """Confirms its commands (the first applied, the rest failed) and reports a detail."""

    readings = ()
    confirms_commands = True

    def __init__(self) -> None:
        from vsm_edge.agent import CommandSpec

        self.commands = (CommandSpec("set", "number", 0, 10),)
        self.done = 0

    async def run(self, ctx: Any) -> None:
        async for command in ctx.commands():
            self.done += 1
            ctx.complete(command, None if self.done == 1 else "device refused")

    def status(self) -> dict[str, Any]:
        return {"done": self.done, "firmware": "1.2.3", "nested": {"ok": True, "list": [1, 2]}}


class BrokenStatus:
    """A unit whose ``status()`` raises: its detail becomes the error."""

    readings = ()
    commands = ()

    async def run(self, ctx: Any) -> None:
        await trio.sleep_forever()

    def status(self) -> dict[str, Any]:
        raise RuntimeError("status exploded")


@asynccontextmanager
async def busy_runtime() -> AsyncIterator[Any]:
    """The runtime described above, running, after its scripted 12 virtual seconds."""
    from support.vsm import config, running, wall_clock
    from vsm_edge.agent import (
        LOW,
        PeerReport,
        Policy,
        ReadingSpec,
        Signal,
        UnitContext,
        sign_policy,
        unit,
    )

    @unit()
    async def heater(ctx: UnitContext) -> None:
        while True:
            await ctx.command("valve", "set", 20.0)
            await trio.sleep(1.0)

    @unit()
    async def cooler(ctx: UnitContext) -> None:
        await trio.sleep(0.5011)
        while True:
            await ctx.command("valve", "set", 25.0)
            await trio.sleep(1.0)

    @unit(readings=[ReadingSpec("x")])
    async def crasher(ctx: UnitContext) -> None:
        ctx.emit("x", 1.0)
        await trio.sleep(1.0)
        raise RuntimeError("sensor bus fault")

    @unit(readings=[ReadingSpec("level")])
    async def spiky(ctx: UnitContext) -> None:
        for i in range(40):
            ctx.emit("level", 10.0 + ctx.random.gauss(0.0, 0.1))
            await trio.sleep(0.1)
            if i == 30:
                ctx.emit("level", 50.0)
        await trio.sleep_forever()

    @unit(readings=[ReadingSpec("value")])
    async def flood(ctx: UnitContext) -> None:
        # 1000 low-priority readings a second from 1 s to 4 s: S3 attenuates, then recovers
        await trio.sleep(1.0)
        for _ in range(3000):
            ctx.emit("value", 20.0 + ctx.random.gauss(0.0, 25.0), priority=LOW)
            await trio.sleep(0.001)
        await trio.sleep_forever()

    @unit()
    async def operator(ctx: UnitContext) -> None:
        await trio.sleep(2.0)
        await ctx.command("gadget", "set", 3)
        await ctx.command("gadget", "set", 4)
        await trio.sleep_forever()

    cfg = config(
        {
            "s3": {"breaker_failures": 2},
            "s5": {"admin_keys": [bytes(ADMIN.verify_key).hex()]},
            "units": [
                # the seed a simulated sensor took from its name alone when the
                # vector was captured (now it takes the node id too)
                {
                    "name": "t1",
                    "kind": "simulated-sensor",
                    "options": {"mean": 21.0, "seed": 1532276279},
                },
                {"name": "valve", "kind": "simulated-actuator"},
            ],
        }
    )
    units = {
        "heater": heater(),
        "cooler": cooler(),
        "crasher": crasher(),
        "spiky": spiky(),
        "flood": flood(),
        "operator": operator(),
        "gadget": Gadget(),
        "mute": BrokenStatus(),
    }
    async with running(cfg, units) as rt:
        policy = Policy(version=3, mesh="test", denied_commands=("valve.open",))
        rt.accept_policy(sign_policy(policy, ADMIN))
        await trio.sleep(6.0137)  # odd times: nothing else wakes then
        rt.update_peer(PeerReport("n2", "lab", wall_clock(), 0.9, False, 0.5, ("abc",)))
        rt.update_peer(PeerReport("n3", "lab", wall_clock() + 31_000, 1.0, True, 1.5, ()))
        rt.peer_clock("n3", wall_clock() + 31_000, wall_clock())  # n3's live envelope: skewed
        stamp = rt.hlc.now().__class__(wall_clock(), 0, "n2")
        rt.inject_remote_signal(Signal("n2", "s1.pump", 0.6, "pain", stamp, reason="dry run"))
        alarm = rt.raise_signal("operator.estop", 0.97, "stop it")
        assert alarm is not None
        rt.raise_signal("operator.note", 0.4, "look")
        await trio.sleep(0.5011)
        rt.ack_alarm(alarm.signal.id)
        rt.breaker_failure("broker")
        rt.breaker_failure("broker")
        rt.breaker("serial")
        rt.acquire_lease("pump", ttl_s=30)
        peer_lease = rt.leases.__class__().acquire(
            "door", "n2", rt.hlc.now().__class__(wall_clock() + 1, 0, "n2"), 60_000
        )
        rt.merge_leases(peer_lease)
        await trio.sleep(5.4731)
        yield rt


def capture() -> dict[str, Any]:
    """The status JSON of :func:`busy_runtime` (as ``/status`` serves it)."""
    out: dict[str, Any] = {}

    async def main() -> None:
        async with busy_runtime() as rt:
            status = rt.status()
            doc = status if isinstance(status, dict) else status.to_json()
            out.update(json.loads(json.dumps(doc)))

    # Trio runs the tasks woken at one virtual instant in a random order; its
    # generator, seeded, makes that order (so the HLC stamps, alarm ids and
    # entropies) the same on every run. Private, but only a test's business.
    trio._core._run._r.seed(20_240_601)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return out


def agent_document() -> dict[str, Any]:
    """A fresh copy of the live agent's status document in ``status-agent.json``."""
    doc: dict[str, Any] = json.loads(AGENT_VECTOR.read_text())["agent"]
    return doc


def _json(status: Any) -> Any:
    """A status value as JSON (the code before the typed status gave dicts)."""
    doc = status if isinstance(status, dict) else status.to_json()
    return json.loads(json.dumps(doc))


class StandInDiscovery:
    """What the discovery section reads of a ``ZeroconfDiscovery``: two peers, counters."""

    def peers(self) -> dict[str, Any]:
        from vsm_edge.sync import Advertisement, Peer

        def peer(node: str, broker: str | None, *addresses: str) -> Peer:
            advert = Advertisement(node, node.encode().ljust(8, b"."), "m", "lab", broker)
            return Peer(advert, addresses, 7787, f"{node}._vsm._tcp.local.")

        return {
            "n3": peer("n3", None, "10.0.0.3"),
            "n2": peer("n2", "mqtt://10.0.0.2:1883", "10.0.0.2", "fe80::2"),
        }

    def statistics(self) -> Any:
        from vsm_edge.sync import DiscoveryStatistics

        return DiscoveryStatistics(2, 1, 9, 4, 1, 1, 0, 1, 3, 2, 0, 12, "")


def discovery_section(discovery: Any) -> Any:
    """The ``discovery`` section of ``discovery`` with the code at hand."""
    try:
        from vsm_edge.agent.mesh.status import DiscoveryStatus
    except ImportError:  # the code before the typed status
        from vsm_edge.agent.mesh.node import _discovery_status  # type: ignore[attr-defined]

        return _discovery_status(discovery)
    return DiscoveryStatus.of(discovery)


def busy_guard(tmp: Path) -> Any:
    """An ingress guard with a zone installed (epoch 2), a quarantine and a proposal."""
    from support.security import agent_config
    from vsm_edge.agent import Policy, Runtime, sign_policy
    from vsm_edge.agent.mesh.ingress import IngressGuard
    from vsm_edge.models import ZonePolicy, derive_key
    from vsm_edge.sync import HybridLogicalClock, NodeKey, PeerInfo

    now = 1_700_000_000_000
    zone_key = derive_key(bytes(range(32)), "zone")
    config = agent_config(
        tmp,
        "me",
        security={"zone": "policy", "quarantine_quorum": 2, "mesh_secret_file": str(tmp / "x")},
        admin_keys=[bytes(ADMIN.verify_key)],
    )
    guard = IngressGuard(
        config,
        node_key=NodeKey(b"me".ljust(32, b".")),
        zone_keys=[zone_key],
        mesh_key=None,
        arbitrator=None,
        arbitrator_error=None,
        wall_clock=lambda: now,
    )
    runtime = Runtime(config, write_state=False)
    peers: dict[str, PeerInfo] = {}
    guard.attach(runtime, peers, HybridLogicalClock("me", lambda: now).now)
    kids = [NodeKey(n.encode().ljust(32, b".")).kid for n in ("a", "b")]
    zone = ZonePolicy.build(kids, [zone_key], epoch=2)
    document = sign_policy(Policy(version=4, mesh="m", zone=zone.to_bytes()), ADMIN)
    assert runtime.accept_policy(document, raise_errors=False)
    guard.policy_changed(runtime, document)
    guard.gateway.detector.quarantine("z", "flood", now)
    return guard


async def live_agent_status(tmp: Path) -> Any:
    """The status of agent ``b`` once ``a``'s readings, report and an alarm reached it."""
    from support.security import agent_config, running_agents, wait_until
    from vsm_edge.sync import MemoryBroker

    configs = [agent_config(tmp, name) for name in ("a", "b")]
    async with running_agents(configs, broker=MemoryBroker(seed=7)) as (a, b):
        assert a.runtime is not None
        assert b.runtime is not None
        await wait_until(lambda: len(b.samples) > 0, "a reading of a at b")
        alarm = a.runtime.raise_signal("operator.estop", 0.97, "test")
        assert alarm is not None
        await wait_until(lambda: alarm.signal.id in b.alarm_heard_latency_ms, "the alarm at b")
        await wait_until(lambda: bool(b.runtime.mesh_view.peers(trio.current_time())), "a's report")
        b.runtime.set_status_section("discovery", lambda: discovery_section(StandInDiscovery()))
        return b.runtime.status()


def capture_agent(tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}

    async def main() -> None:
        out["agent"] = _json(await live_agent_status(tmp / "live"))
        out["gateway"] = _json(busy_guard(tmp).status())
        out["discovery"] = _json(discovery_section(StandInDiscovery()))

    trio.run(main)
    return out


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(HERE.parent))
    VECTOR.write_text(json.dumps(capture(), indent=1) + "\n")
    print(f"wrote {VECTOR}")
    with tempfile.TemporaryDirectory() as tmp:
        AGENT_VECTOR.write_text(json.dumps(capture_agent(Path(tmp)), indent=1) + "\n")
    print(f"wrote {AGENT_VECTOR}")
