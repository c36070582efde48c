"""Two Mosquitto brokers bridged (``vsm/#`` both ways, QoS 1), agents on each: converged.

The topology for scaling past one broker (docs/operations.md): agents on
broker A and agents on broker B see each other's presence, deltas, digests
and repairs through the bridge, and converge.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.brokers import MosquittoFactory, mosquitto_factory  # noqa: F401
from support.mesh import AgentProcess, covers, poll_statuses, target_of, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]


def test_agents_on_two_bridged_brokers_converge(
    mosquitto_factory: MosquittoFactory, tmp_path: Path
) -> None:
    a, b = mosquitto_factory.bridged_pair()
    agents = [
        AgentProcess(tmp_path, name, broker.url, mesh="br", protocol="5")
        for name, broker in (("on-a0", a), ("on-a1", a), ("on-b0", b), ("on-b1", b))
    ]
    names = {x.name for x in agents}
    try:
        started = time.monotonic()
        for agent in agents:
            agent.start()

        def formed() -> bool:
            statuses = poll_statuses(agents)
            return all(
                s is not None and names - {x.name} <= set(s["replication"]["online_peers"])
                for x, s in zip(agents, statuses, strict=True)
            )

        wait_until(formed, 60, "agents on both brokers to see each other", poll=0.5)
        print(f"4 agents on 2 bridged brokers formed a mesh in {time.monotonic() - started:.1f} s")

        def vvs() -> list[dict[str, int]]:
            return [s["replication"]["vv"] if s else {} for s in poll_statuses(agents)]

        # Every agent writes (readings, its report); the mesh can form before
        # the first write of the last agent to start has reached anyone.
        def written() -> dict[str, int] | None:
            target = target_of(vvs())
            return target if set(target) == names else None

        target = wait_until(written, 20, "every agent's first write")
        t0 = time.monotonic()
        wait_until(
            lambda: all(covers(vv, target) for vv in vvs()), 20, "convergence across the bridge"
        )
        print(f"converged across the bridge in {time.monotonic() - t0:.2f} s")
        for status in poll_statuses(agents):
            assert status is not None
            assert status["replication"]["refused"].get("internal-error", 0) == 0
    except BaseException:
        for agent in agents:
            print(f"--- {agent.name}\n{agent.log_tail(20)}")
        raise
    finally:
        for agent in agents:
            agent.stop()
