"""Ingress benchmark: what one inbound message costs the replicator, by case.

    .venv/bin/python bench/bench_ingress.py [--seconds S]

Drives :meth:`Replicator._receive` (the whole ingress path: topic, envelope,
key, signature, clock, decode, dispatch) in process, with no broker and no
gateway, on messages built with the project's wire format. Prints what it
measured on this machine (nothing is asserted):

    valid delta      a signed live delta of a document the receiver does not
                     replicate (every check, the body decoded, nothing merged)
    valid digest     a signed live digest of the replicated document
    retained alg     a signed retained algedonic signal (to a no-op handler)
    junk             131 KB of zeros on a delta topic: refused by the outline check
    unknown key      a signed delta from a key no presence announced
    own echo         our own broadcast, echoed back by the broker

The cases run in turn in batches of 200 messages until the time is up, so
each case sees the same machine; a figure is the median (and the minimum)
over batches of CPU time per message (time.process_time: the machine is
shared). Runs about 6 x --seconds (default 2 s).

``--no-verify`` replaces the Ed25519 verify with a no-op (every signature
passes), so that the Python cost of the valid paths shows without the ~40 µs
of the crypto and its noise.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import trio

from vsm_edge.sync import (
    CrdtDocument,
    Envelope,
    HybridLogicalClock,
    MemoryBroker,
    Message,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    cbor_dumps,
    decode_envelope,
    sign_envelope,
)

MESH = "bench"
BATCH = 200
PEER = NodeKey(bytes(range(32)))
STRANGER = NodeKey(bytes(range(1, 33)))


def _wall() -> int:
    return 1_700_000_000_000


def build() -> Replicator:
    broker = MemoryBroker(seed=1)
    clock = HybridLogicalClock("me", _wall)
    rep = Replicator(
        ReplicatorConfig(mesh=MESH, node="me"),
        NodeKey(bytes(range(2, 34))),
        clock,
        lambda will: broker.transport("me", will=will),
        {"mesh": CrdtDocument("mesh", ORMap)},
        on_app=lambda channel, sender, body, envelope: None,
    )
    return rep


def seal(key: NodeKey, kind: str, body: Any, hlc: int) -> bytes:
    return sign_envelope(cbor_dumps(body), key, hlc=hlc, kind=kind, nonce=os.urandom(8))


def cases(rep: Replicator) -> dict[str, Message]:
    hlc = _wall() << 16
    presence = {
        "node": "p1",
        "pk": PEER.public_key,
        "inc": hlc,
        "state": "online",
        "zone": "default",
        "mesh": MESH,
        "broker": "",
    }
    rep._receive(Message(f"vsm/{MESH}/presence/p1", seal(PEER, "presence", presence, hlc), 1, True))
    assert "p1" in rep.peers, rep.statistics()["refused"]
    digest = {"mesh": rep.docs["mesh"].digest()}
    alg = {"id": "x", "source": "s", "intensity": 0.5, "valence": "pain", "reason": "r"}
    return {
        "valid delta": Message(
            f"vsm/{MESH}/d/p1", seal(PEER, "delta", [["other", b"\x80"]], hlc + 1), 1, False
        ),
        "valid digest": Message(
            f"vsm/{MESH}/sv/p1", seal(PEER, "digest", digest, hlc + 2), 0, False
        ),
        "retained alg": Message(f"vsm/{MESH}/alg/p1", seal(PEER, "alg", alg, hlc + 3), 1, True),
        "junk": Message(f"vsm/{MESH}/d/p1", bytes(131_000), 1, False),
        "unknown key": Message(
            f"vsm/{MESH}/d/p1", seal(STRANGER, "delta", [["other", b"\x80"]], hlc), 1, False
        ),
        "own echo": Message(f"vsm/{MESH}/d/me", b"ignored", 1, False),
    }


def measure(seconds: float) -> tuple[dict[str, list[float]], dict[str, int], dict[str, Any]]:
    rep = build()
    messages = cases(rep)
    cpu: dict[str, list[float]] = {name: [] for name in messages}

    def batch(message: Message) -> float:
        receive: Callable[[Message], None] = rep._receive
        start = time.process_time()
        for _ in range(BATCH):
            receive(message)
        return (time.process_time() - start) / BATCH

    for message in messages.values():  # warm up
        batch(message)
    before = dict(rep.statistics()["refused"])
    deadline = time.perf_counter() + seconds * len(messages)
    while time.perf_counter() < deadline:
        for name, message in messages.items():
            cpu[name].append(batch(message))
    stats = rep.statistics()
    return cpu, before, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case (default 2)")
    parser.add_argument("--no-verify", action="store_true", help="skip the Ed25519 verify")
    args = parser.parse_args()
    if args.no_verify:
        Envelope.verify = lambda self, public_key: None  # type: ignore[method-assign]
    cpu, _, stats = trio.run(_run, args.seconds)
    verify = verify_cost()
    print(f"# bench_ingress  python {platform.python_version()}  cpus {os.cpu_count()}  "
          f"{platform.machine()}  load {os.getloadavg()[0]:.2f}")  # fmt: skip
    print(f"{'case':<16}{'CPU µs/msg':>11}{'min µs':>9}{'msgs/CPU-s':>12}{'batches':>9}")
    for name, samples in cpu.items():
        med = statistics.median(samples)
        print(f"{name:<16}{med * 1e6:>11.2f}{min(samples) * 1e6:>9.2f}{1 / med:>12,.0f}"
              f"{len(samples):>9}")  # fmt: skip
    if args.no_verify:
        print("# --no-verify: signatures were not checked")
    print(f"# of which the Ed25519 verify of one envelope: {verify * 1e6:.2f} µs (median)")
    print(f"# refused: {stats['refused']}")
    print(f"# counts: { {k: v for k, v in stats['counts'].items() if k.startswith('in_')} }")


def verify_cost() -> float:
    envelope = decode_envelope(seal(PEER, "delta", [["other", b"\x80"]], _wall() << 16))
    samples = []
    for _ in range(50):
        start = time.process_time()
        for _ in range(BATCH):
            envelope.verify(PEER.public_key)
        samples.append((time.process_time() - start) / BATCH)
    return statistics.median(samples)


async def _run(seconds: float) -> tuple[dict[str, list[float]], dict[str, int], dict[str, Any]]:
    return measure(seconds)


if __name__ == "__main__":
    main()
