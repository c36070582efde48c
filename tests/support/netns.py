"""Real multi-host networks for tests: Linux network namespaces on a veth bridge.

    with NetnsNetwork.create(3) as net:        # 3 hosts + 1 bridge namespace
        proc = net.popen(net.hosts[0], [sys.executable, "-m", "some.module"])
        net.cut(net.hosts[1])                   # unplug host 1 (its bridge port goes down)
        net.heal(net.hosts[1])

Every interface lives inside namespaces this module creates (names carry the pid
and a random tag, so parallel runs do not clash); nothing is attached to the
host's own network, so multicast and test traffic cannot leave the sandbox.
The addresses are on a private /24 that exists only on the bridge.
:func:`netns_skip_reason` says why a test must skip (not root, no ``ip``); under
``CI=true`` a machine that should be able to run the tests but cannot fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

__all__ = ["Host", "NetnsNetwork", "netns_network", "netns_skip_reason", "require_netns"]

SUBNET = "10.231.7"  # /24, only ever inside the test's own namespaces
IP_TIMEOUT_S = 10.0


def netns_skip_reason() -> str | None:
    """Why namespace tests cannot run here, or None when they can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network-namespace tests need root"
    if _ip_path() is None:
        return "the `ip` command (iproute2) is missing"
    return None


def require_netns() -> None:
    """Skip the calling test when namespaces are unavailable (it is a failure under CI)."""
    reason = netns_skip_reason()
    if reason is not None:
        pytest.skip(reason)


def _ip_path() -> str | None:
    return shutil.which("ip") or next(
        (p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip") if os.access(p, os.X_OK)), None
    )


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace on the bridge: ``address`` is its IPv4 address on ``iface``."""

    index: int
    netns: str
    address: str
    iface: str = "eth0"
    bridge_port: str = ""


@dataclass
class NetnsNetwork:
    """N hosts (namespaces) whose ``eth0`` are ports of one bridge in its own namespace."""

    tag: str
    bridge_netns: str
    hosts: list[Host] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, n_hosts: int, *, prefix: str = "vsm") -> NetnsNetwork:
        """Create the bridge namespace and ``n_hosts`` host namespaces (1 <= n <= 200).

        Raises ``RuntimeError`` with ``ip``'s message when a step fails (after
        removing what was created).
        """
        if not 1 <= n_hosts <= 200:
            raise ValueError("n_hosts must be in 1..200")
        tag = f"{prefix}{os.getpid()}{secrets.token_hex(2)}"
        net = cls(tag=tag, bridge_netns=f"{tag}-br")
        try:
            net._build(n_hosts)
        except BaseException:
            net.destroy()
            raise
        return net

    def _build(self, n_hosts: int) -> None:
        br = self.bridge_netns
        self._add_netns(br)
        self.ip("-n", br, "link", "add", "br0", "type", "bridge")
        self.ip("-n", br, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        self.ip("-n", br, "link", "set", "br0", "up")
        for i in range(n_hosts):
            ns = f"{self.tag}-h{i}"
            self._add_netns(ns)
            port = f"p{i}"
            host = Host(i, ns, f"{SUBNET}.{i + 1}", "eth0", port)
            # Both ends are created inside namespaces: no name ever exists in
            # the root namespace, where parallel runs could clash.
            self.ip(
                "-n", br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns
            )
            self.ip("-n", br, "link", "set", port, "master", "br0")
            self.ip("-n", br, "link", "set", port, "up")
            self.ip("-n", ns, "link", "set", "lo", "up")
            self.ip("-n", ns, "addr", "add", f"{host.address}/24", "dev", "eth0")
            self.ip("-n", ns, "link", "set", "eth0", "multicast", "on")
            self.ip("-n", ns, "link", "set", "eth0", "up")
            self.hosts.append(host)

    def _add_netns(self, name: str) -> None:
        self.ip("netns", "add", name)
        self._namespaces.append(name)

    # -- running things --------------------------------------------------------

    @staticmethod
    def ip(*args: str) -> str:
        """Run ``ip ARGS``; raises RuntimeError with its stderr on failure."""
        ip = _ip_path()
        if ip is None:
            raise RuntimeError("the `ip` command is missing")
        proc = subprocess.run(
            [ip, *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc.stdout

    def command(self, host: Host, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside ``host``'s namespace."""
        ip = _ip_path()
        assert ip is not None
        return [ip, "netns", "exec", host.netns, *argv]

    def popen(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host`` (kwargs go to ``subprocess.Popen``)."""
        return subprocess.Popen(self.command(host, argv), **kwargs)

    def run(
        self, host: Host, argv: Sequence[str], *, timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in ``host`` to completion (bounded by ``timeout``)."""
        return subprocess.run(self.command(host, argv), timeout=timeout, check=False, **kwargs)

    # -- faults ----------------------------------------------------------------

    def cut(self, host: Host) -> None:
        """Unplug ``host``: its bridge port goes down (its own eth0 loses carrier)."""
        self.ip("-n", self.bridge_netns, "link", "set", host.bridge_port, "down")

    def heal(self, host: Host) -> None:
        """Plug ``host`` back in."""
        self.ip("-n", self.bridge_netns, "link", "set", host.bridge_port, "up")

    # -- teardown ----------------------------------------------------------------

    def destroy(self) -> None:
        """Delete every namespace created (their veths go with them); idempotent."""
        errors = []
        while self._namespaces:
            name = self._namespaces.pop()
            try:
                self.ip("netns", "delete", name)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
        if errors:
            raise RuntimeError("; ".join(errors))

    def __enter__(self) -> NetnsNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def netns_network(n_hosts: int) -> NetnsNetwork:
    """Create a network, or skip (fail under ``CI=true``) when this machine cannot.

    For use in a fixture; pair it with ``destroy()`` in the finalizer::

        @pytest.fixture
        def net():
            network = netns_network(3)
            yield network
            network.destroy()
    """
    require_netns()
    try:
        return NetnsNetwork.create(n_hosts)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"root and `ip` are here but namespaces do not work: {exc}")
        pytest.skip(f"network namespaces do not work here: {exc}")
