"""A stand-in for balenaOS's avahi-daemon: binds UDP 5353 exactly as avahi does.

avahi-core/socket.c (avahi_open_socket_ipv4): IP_MULTICAST_TTL 255, IP_TTL
255, IP_MULTICAST_LOOP 1, then ``bind(0.0.0.0:5353)`` *without* reuse options;
only after a successful bind does it set SO_REUSEADDR and SO_REUSEPORT "to make
sure that the user may run other mDNS implementations if he really wants" —
unless ``disallow-other-stacks=yes`` (then no reuse option at all). Then it
joins 224.0.0.251 on each interface. This script does the same (pass
``--disallow-other-stacks`` for the strict setting), then counts the mDNS
packets it hears and prints one JSON line per second: ``{"packets": N,
"vsm": M}`` (M: packets naming ``_vsm-edge._tcp``).

    python -m support.avahi_standin --address 10.231.7.2 [--disallow-other-stacks]

It only listens (it sends nothing), and the tests start it only inside a
network namespace they created (tests/test_avahi_coexistence.py, through
``NetnsNetwork.popen``), joining the group on that namespace's veth address:
never on the host's interfaces.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def open_like_avahi(address: str, disallow_other_stacks: bool) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 255)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 255)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    s.bind(("0.0.0.0", 5353))
    if not disallow_other_stacks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    mreq = socket.inet_aton("224.0.0.251") + socket.inet_aton(address)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    return s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--disallow-other-stacks", action="store_true")
    args = parser.parse_args()
    s = open_like_avahi(args.address, args.disallow_other_stacks)
    s.settimeout(0.2)
    print(json.dumps({"ready": True}), flush=True)
    packets = vsm = 0
    last = time.monotonic()
    while True:
        try:
            data = s.recv(9000)
        except TimeoutError:
            data = b""
        if data:
            packets += 1
            # DNS names are length-prefixed labels: b"\x09_vsm-edge\x04_tcp"
            if b"\x09_vsm-edge\x04_tcp" in data:
                vsm += 1
        if time.monotonic() - last >= 1.0:
            last = time.monotonic()
            print(json.dumps({"packets": packets, "vsm": vsm}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
