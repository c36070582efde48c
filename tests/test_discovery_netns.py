"""mDNS discovery between three real hosts: network namespaces on a veth bridge.

Each host runs a discovery node as its own OS process (tests/support/
discovery_node.py) bound to its namespace's address. We check that every host
finds the other two with their TXT fields, that a broker advertised as
``_mqtt._tcp`` on one host is found by the others, that a host cut off the
bridge is reported gone within a bounded wait (no goodbye: its cable is
"pulled") and that it reappears once healed. Skipped when not root or without
``ip`` (a failure under CI=true if namespaces should work but do not).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.netns import Host, NetnsNetwork, netns_network

pytestmark = [
    pytest.mark.integration,
    pytest.mark.netns,
    pytest.mark.slow,
    pytest.mark.timeout(120),
]

TESTS = Path(__file__).resolve().parent
REFRESH_S = 1.0
GONE_AFTER_S = 3.5
# gone_after, plus one jittered tick, plus scheduling slack on a busy 2-core machine
GONE_BOUND_S = GONE_AFTER_S + 1.2 * REFRESH_S + 4.0
HEAL_BOUND_S = 2 * 1.2 * REFRESH_S + 6.0


class Node:
    """A child process and the JSON lines it printed (read by a thread)."""

    def __init__(self, proc: subprocess.Popen[bytes], host: Host) -> None:
        self.proc = proc
        self.host = host
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(raw))
                self._cond.notify_all()

    def wait_for(
        self, what: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float
    ) -> float:
        """Wait until predicate(lines) holds; returns the seconds waited."""
        start = time.monotonic()
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.lines), timeout=timeout)
        if not ok:
            raise AssertionError(
                f"h{self.host.index}: {what} not within {timeout} s; saw {self.lines}"
            )
        return time.monotonic() - start

    def events(self, kind: str, node: str) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("event") == kind and x.get("node") == node]


@pytest.fixture
def net() -> Iterator[NetnsNetwork]:
    network = netns_network(3)
    try:
        yield network
    finally:
        network.destroy()


def start_node(net: NetnsNetwork, host: Host, mesh: str, *extra: str) -> Node:
    argv = [
        sys.executable,
        "-m",
        "support.discovery_node",
        "--address",
        host.address,
        "--node",
        f"h{host.index}",
        "--mesh",
        mesh,
        "--zone",
        f"zone-h{host.index}",
        "--key-id",
        f"{host.index:02x}" * 8,
        "--refresh",
        str(REFRESH_S),
        "--gone-after",
        str(GONE_AFTER_S),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    proc = net.popen(host, argv, stdout=subprocess.PIPE, env=env, cwd=TESTS)
    return Node(proc, host)


def test_three_hosts_discover_lose_and_refind_each_other(net: NetnsNetwork) -> None:
    mesh = f"ns{os.getpid()}"
    h0, h1, h2 = net.hosts
    nodes = [
        start_node(
            net, h0, mesh, "--broker-port", "1883", "--broker-url", "mqtt://10.231.7.1:1883"
        ),
        start_node(net, h1, mesh, "--find-broker"),
        start_node(net, h2, mesh, "--find-broker"),
    ]
    try:
        names = [f"h{i}" for i in range(3)]
        for node in nodes:
            me = f"h{node.host.index}"
            others = [n for n in names if n != me]
            node.wait_for(
                "both peers",
                lambda lines, others=others: all(
                    any(x.get("event") == "appeared" and x["node"] == o for x in lines)
                    for o in others
                ),
                20,
            )
            for other in others:
                seen = node.events("appeared", other)[0]
                i = int(other[1:])
                assert seen["zone"] == f"zone-{other}"
                assert seen["mesh"] == mesh
                assert seen["key_id"] == f"{i:02x}" * 8
                assert seen["version"] == 1
                assert seen["addresses"] == [net.hosts[i].address]
                assert seen["broker"] == ("mqtt://10.231.7.1:1883" if i == 0 else None)
        for node in nodes[1:]:
            node.wait_for(
                "the broker",
                lambda lines: any("broker" in x and "event" not in x for x in lines),
                15,
            )
            assert [x["broker"] for x in node.lines if "event" not in x and "broker" in x] == [
                f"mqtt://{h0.address}:1883"
            ]

        # Cut h2 off the bridge: no goodbye can get through.
        net.cut(h2)
        waited = [
            nodes[0].wait_for(
                "h2 gone",
                lambda lines: any(x.get("event") == "gone" and x["node"] == "h2" for x in lines),
                GONE_BOUND_S,
            ),
            nodes[1].wait_for(
                "h2 gone",
                lambda lines: any(x.get("event") == "gone" and x["node"] == "h2" for x in lines),
                GONE_BOUND_S,
            ),
        ]
        nodes[2].wait_for(
            "h0 and h1 gone at h2",
            lambda lines: {x["node"] for x in lines if x.get("event") == "gone"} == {"h0", "h1"},
            GONE_BOUND_S,
        )
        assert not nodes[0].events("gone", "h1")  # the others still see each other
        print(f"cut: h2 reported gone after {max(waited):.1f} s (gone_after {GONE_AFTER_S} s)")

        net.heal(h2)
        t0 = time.monotonic()
        for node in nodes[:2]:
            node.wait_for(
                "h2 back",
                lambda lines: (
                    len([x for x in lines if x.get("event") == "appeared" and x["node"] == "h2"])
                    == 2
                ),
                HEAL_BOUND_S,
            )
        nodes[2].wait_for(
            "h0 and h1 back at h2",
            lambda lines: all(
                len([x for x in lines if x.get("event") == "appeared" and x["node"] == n]) == 2
                for n in ("h0", "h1")
            ),
            HEAL_BOUND_S,
        )
        print(f"heal: all three saw each other again after {time.monotonic() - t0:.1f} s")
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(timeout=10)
            if node.proc.stdout is not None:
                node.proc.stdout.close()
