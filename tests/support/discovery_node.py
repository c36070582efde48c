"""A discovery node in its own process (for the network-namespace test).

``python -m support.discovery_node --address IP --node N --mesh M [--broker-port P]
[--find-broker]`` runs :class:`ZeroconfDiscovery` on ``IP`` only and prints one
JSON object per line: ``{"ready": true}`` once advertised, one object per peer
event (``event``, ``node``, ``zone``, ``mesh``, ``key_id`` hex, ``version``,
``broker``, ``addresses``), and ``{"broker": URL}`` when ``--find-broker`` found
one. It runs until killed.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio

from vsm_edge.sync import Advertisement, DiscoveryTiming, PeerEvent, ZeroconfDiscovery


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def describe(event: PeerEvent) -> dict[str, object]:
    adv = event.peer.advertisement
    return {
        "event": event.kind.value,
        "node": adv.node,
        "zone": adv.zone,
        "mesh": adv.mesh,
        "key_id": adv.key_id.hex(),
        "version": adv.version,
        "broker": adv.broker,
        "addresses": list(event.peer.addresses),
    }


async def main(args: argparse.Namespace) -> None:
    adv = Advertisement(
        node=args.node,
        key_id=bytes.fromhex(args.key_id),
        mesh=args.mesh,
        zone=args.zone,
        broker=args.broker_url,
    )
    timing = DiscoveryTiming(
        refresh_interval=args.refresh, gone_after=args.gone_after, rescan_interval=10 * args.refresh
    )
    discovery = ZeroconfDiscovery(
        adv, interfaces=[args.address], broker_port=args.broker_port, timing=timing
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run)
        emit({"ready": True})

        async def find_broker() -> None:
            with trio.fail_after(30):
                emit({"broker": await discovery.find_broker()})

        if args.find_broker:
            nursery.start_soon(find_broker)
        async for event in discovery.events:
            emit(describe(event))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--zone", default="z")
    parser.add_argument("--key-id", default="00112233")
    parser.add_argument("--broker-url", default=None)
    parser.add_argument("--broker-port", type=int, default=None)
    parser.add_argument("--find-broker", action="store_true")
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument("--gone-after", type=float, default=3.5)
    trio.run(main, parser.parse_args())
