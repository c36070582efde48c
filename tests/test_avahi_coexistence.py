"""python-zeroconf next to the host's avahi-daemon (balenaOS, network_mode: host).

Inside network namespaces (never the host's own network), a stand-in binds
UDP 5353 exactly as avahi-core/socket.c does (tests/support/avahi_standin.py):
bind first, then SO_REUSEADDR + SO_REUSEPORT, as root. The discovery node runs
next to it as another user (nobody), as the container's user would. We check:

* with avahi's default (``disallow-other-stacks=no``) our node starts, two
  hosts find each other, and the stand-in still hears the mesh's mDNS traffic
  (both stacks receive every multicast packet);
* with ``disallow-other-stacks=yes`` our node cannot bind, and the agent's
  message names the avahi setting to change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.netns import NetnsNetwork, netns_network

from vsm_edge.agent.mesh.mdns_host import AVAHI_HINT, explain_mdns_error

pytestmark = [pytest.mark.integration, pytest.mark.netns, pytest.mark.timeout(90)]

TESTS = Path(__file__).resolve().parent
NOBODY = 65534


@pytest.fixture
def net() -> Iterator[NetnsNetwork]:
    network = netns_network(2)
    try:
        yield network
    finally:
        network.destroy()


def _as_nobody(argv: list[str]) -> list[str]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is missing")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]


def _node_argv(address: str, node: str, mesh: str) -> list[str]:
    return [
        sys.executable, "-m", "support.discovery_node", "--address", address, "--node", node,
        "--mesh", mesh, "--refresh", "1.0", "--gone-after", "5",
    ]  # fmt: skip


class _Lines:
    """JSON lines of a child's stdout, read by a thread (buffered lines hide from select)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(json.loads(raw))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Kill the child (if still running), then close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._thread.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def wait(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: any(pred(x) for x in self.lines) or self.proc.poll() is not None,
                timeout=timeout,
            )
            if ok and any(pred(x) for x in self.lines):
                return
        err = b""
        if self.proc.poll() is not None and self.proc.stderr is not None:
            err = self.proc.stderr.read()
        raise AssertionError(f"not seen within {timeout} s: {self.lines} {err[-2000:]!r}")


def test_discovery_shares_udp_5353_with_avahi(net: NetnsNetwork) -> None:
    h0, h1 = net.hosts
    mesh = f"av{os.getpid()}"
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    avahi = net.popen(
        h0, [sys.executable, "-m", "support.avahi_standin", "--address", h0.address],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=TESTS,
    )  # fmt: skip
    avahi_lines = _Lines(avahi)
    procs = [avahi_lines]
    try:
        avahi_lines.wait(lambda x: bool(x.get("ready")), 10)
        a = net.popen(
            h0, _as_nobody(_node_argv(h0.address, "a", mesh)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=TESTS,
        )  # fmt: skip
        b = net.popen(
            h1, _node_argv(h1.address, "b", mesh),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=TESTS,
        )  # fmt: skip
        procs += [_Lines(a), _Lines(b)]
        for lines, other in ((procs[1], "b"), (procs[2], "a")):
            lines.wait(lambda x, o=other: x.get("event") == "appeared" and x["node"] == o, 25)
        # the "avahi" socket kept receiving, including our service's packets
        avahi_lines.wait(lambda x: int(x.get("vsm", 0)) > 0, 10)
    finally:
        for lines in procs:
            lines.close()


def test_exclusive_avahi_fails_our_bind_with_a_message_naming_the_setting(
    net: NetnsNetwork,
) -> None:
    h0, _ = net.hosts
    env = dict(os.environ, PYTHONPATH=str(TESTS))
    avahi = net.popen(
        h0,
        [sys.executable, "-m", "support.avahi_standin", "--address", h0.address,
         "--disallow-other-stacks"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=TESTS,
    )  # fmt: skip
    avahi_lines = _Lines(avahi)
    try:
        avahi_lines.wait(lambda x: bool(x.get("ready")), 10)
        node = net.popen(
            h0, _as_nobody(_node_argv(h0.address, "a", "m")),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=TESTS,
        )  # fmt: skip
        _, err = node.communicate(timeout=30)
        message = err.decode(errors="replace")
        assert node.returncode != 0
        assert "DiscoveryError" in message, message[-2000:]
        assert "Address already in use" in message, message[-2000:]
        line = next(x for x in message.splitlines() if "cannot open mDNS sockets" in x)
        explained = explain_mdns_error(line)
        assert AVAHI_HINT in explained
        assert "disallow-other-stacks=no" in explained
    finally:
        avahi_lines.close()


def test_explain_leaves_other_errors_alone() -> None:
    assert explain_mdns_error("cannot register x: name taken") == "cannot register x: name taken"
    assert AVAHI_HINT in explain_mdns_error("OSError: [Errno 98] Address in use")
