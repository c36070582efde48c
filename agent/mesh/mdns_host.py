"""Sharing UDP 5353 with the host's mDNS daemon (avahi on balenaOS), and what to say when we cannot.

On balenaOS the host runs avahi-daemon; a container with ``network_mode:
host`` (needed for multicast on the LAN) shares the host's sockets, so the
agent's python-zeroconf and avahi both want UDP 5353. The answer chosen here
(docs/deploy.md "mDNS next to avahi"): **share the port**. avahi binds first
and then sets SO_REUSEADDR and SO_REUSEPORT on its socket unless its config
says ``disallow-other-stacks=yes``; python-zeroconf sets both before it binds.
On Linux two UDP sockets may bind one port when both have SO_REUSEADDR (the
user ids need not match; SO_REUSEPORT groups would need them to), and every
multicast datagram is delivered to each of them, so both stacks hear every
query and answer for their own names. Our records use their own host name
(``vsm-{node}-{mesh}.local``), never the device's, so avahi sees no conflict.

What sharing costs: a *unicast* reply to port 5353 reaches only one of the
sockets. zeroconf asks again with multicast questions, so a lost unicast
answer delays a discovery by one query interval; it does not lose it.

When avahi is set to ``disallow-other-stacks=yes`` the bind fails with
EADDRINUSE: :func:`explain_mdns_error` turns that into an operator's message.
The agent then runs without discovery (a configured broker URL still works).
The test (tests/test_avahi_coexistence.py) binds a socket exactly as
avahi-core/socket.c does inside a network namespace and runs real discovery
nodes next to it.
"""

from __future__ import annotations

__all__ = ["AVAHI_HINT", "explain_mdns_error"]

AVAHI_HINT = (
    "another mDNS stack holds UDP 5353 exclusively (on balenaOS: the host's avahi-daemon "
    "with disallow-other-stacks=yes); set disallow-other-stacks=no in avahi-daemon.conf, "
    "or run without discovery (VSM_DISCOVERY_ENABLED=false) and give VSM_BROKER_URL"
)


def explain_mdns_error(message: str) -> str:
    """``message`` with :data:`AVAHI_HINT` appended when it says the port is taken."""
    lowered = message.lower()
    if "address in use" in lowered or "address already in use" in lowered or "errno 98" in lowered:
        return f"{message} ({AVAHI_HINT})"
    return message
