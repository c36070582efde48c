"""Three hosts in network namespaces: agents find the broker and each other by mDNS.

Host h0 runs an agent with ``broker = "embedded"`` (amqtt, listening on h0's
bridge address and advertised as ``_mqtt._tcp``); h1 and h2 run agents with
``broker = "mdns"``. Discovery runs on each host's own address only, inside
namespaces this test creates (tests/support/netns.py): nothing reaches the
machine's real network. Then h2 is unplugged from the bridge for a while
(it falls behind), plugged back in, and the mesh converges.

Skipped when not root (a failure under CI=true if root should work).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.mesh import AgentProcess, covers, poll_statuses, target_of, wait_until
from support.netns import Host, NetnsNetwork, netns_network

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(120),
]

CUT_S = 4.0
# Reads a loopback status endpoint from inside a namespace (stdlib only: fast to start).
FETCH = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/status', timeout=5)"
    ".read().decode())"
)


@pytest.fixture
def net() -> Iterator[NetnsNetwork]:
    network = netns_network(3)
    try:
        yield network
    finally:
        network.destroy()


def agent_on(net: NetnsNetwork, host: Host, workdir: Path, broker: str) -> AgentProcess:
    def fetch(port: int) -> dict[str, Any] | None:
        proc = net.run(
            host, [sys.executable, "-I", "-c", FETCH, str(port)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return None
        doc: dict[str, Any] = json.loads(proc.stdout)
        return doc

    return AgentProcess(
        workdir,
        f"n{host.index}",
        broker,
        mesh=f"ns{os.getpid()}",
        discovery=[host.address],
        launcher=lambda argv: net.command(host, argv),
        fetch=fetch,
    )


def test_agents_discover_broker_and_peers_by_mdns_and_converge_after_a_cut(
    net: NetnsNetwork, tmp_path: Path
) -> None:
    h0, h1, h2 = net.hosts
    agents = [
        agent_on(net, h0, tmp_path, "embedded"),
        agent_on(net, h1, tmp_path, "mdns"),
        agent_on(net, h2, tmp_path, "mdns"),
    ]
    names = {a.name for a in agents}
    try:
        started = time.monotonic()
        for agent in agents:
            agent.start()

        def formed() -> list[dict[str, Any]] | None:
            statuses = poll_statuses(agents)
            for agent, status in zip(agents, statuses, strict=True):
                if status is None:
                    return None
                others = names - {agent.name}
                if not others <= set(status["replication"]["online_peers"]):
                    return None  # not yet connected through the broker
                if not others <= set(status.get("discovery", {}).get("peers", {})):
                    return None  # not yet seen by mDNS
            return [s for s in statuses if s is not None]

        statuses = wait_until(formed, 60, "the mesh to form over mDNS", poll=0.5)
        print(f"3 hosts: broker and peers found by mDNS, mesh formed "
              f"{time.monotonic() - started:.1f} s after start")  # fmt: skip
        broker_url = f"mqtt://{h0.address}:"
        for agent, status in zip(agents, statuses, strict=True):
            seen = status["discovery"]["peers"]
            for other in agents:
                if other is not agent:
                    index = int(other.name[1:])
                    assert seen[other.name]["addresses"] == [net.hosts[index].address]
                    # every agent advertises the broker it uses: h0's embedded one
                    assert str(seen[other.name]["broker"]).startswith(broker_url)
        for agent in agents[1:]:
            assert f"broker mqtt://{h0.address}:" in agent.log_path.read_text()

        # Unplug h2: it no longer hears the mesh, which keeps writing.
        net.cut(h2)
        cut_at = time.monotonic()
        time.sleep(CUT_S)
        by_n1 = agents[1].status()
        cut_off = agents[2].status()
        assert by_n1 is not None
        assert cut_off is not None
        n1_seq = by_n1["replication"]["vv"]["n1"]
        assert cut_off["replication"]["vv"].get("n1", 0) < n1_seq, "h2 was not cut off"
        net.heal(h2)
        print(f"h2 cut off for {time.monotonic() - cut_at:.1f} s: it fell behind n1 by "
              f"{n1_seq - cut_off['replication']['vv'].get('n1', 0)} updates")  # fmt: skip

        healed = time.monotonic()
        target = target_of(s["replication"]["vv"] for s in poll_statuses(agents) if s is not None)

        def converged() -> bool:
            statuses = poll_statuses(agents)
            return all(s is not None and covers(s["replication"]["vv"], target) for s in statuses)

        wait_until(converged, 40, "the mesh to converge after the heal", poll=0.5)
        print(f"healed: converged {time.monotonic() - healed:.1f} s after plugging h2 back in")
    except BaseException:
        for agent in agents:
            print(f"--- {agent.name}\n{agent.log_tail(20)}")
        raise
    finally:
        for agent in agents:
            agent.stop()
