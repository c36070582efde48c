"""Ingress benchmark: what one inbound message costs the replicator, by case.

    .venv/bin/python bench/bench_ingress.py [--seconds S] [--no-verify] [--against FILE]

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

``--against FILE`` also loads the replicator of another ``sync/_replicator.py``
(``git show REV:sync/_replicator.py > /tmp/old.py``; it must import what this
tree's sync package has) and runs its batches interleaved with this tree's,
printing both and the median of the paired ratios (this / other): the fair
before/after on a shared machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
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


def build(cls: type[Any] = Replicator) -> Any:
    broker = MemoryBroker(seed=1)
    clock = HybridLogicalClock("me", _wall)
    return cls(
        ReplicatorConfig(mesh=MESH, node="me"),
        NodeKey(bytes(range(2, 34))),
        clock,
        lambda will: broker.transport("me", will=will),
        {"mesh": CrdtDocument("mesh", ORMap)},
        on_app=lambda channel, sender, body, envelope: None,
    )


def seal(key: NodeKey, kind: str, body: Any, hlc: int) -> bytes:
    return sign_envelope(cbor_dumps(body), key, hlc=hlc, kind=kind, nonce=os.urandom(8))


def cases(rep: Any) -> dict[str, Message]:
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


def batch(receive: Callable[[Message], None], message: Message) -> float:
    start = time.process_time()
    for _ in range(BATCH):
        receive(message)
    return (time.process_time() - start) / BATCH


def measure(seconds: float, classes: dict[str, type[Any]]) -> dict[str, dict[str, list[float]]]:
    """CPU seconds per message: version -> case -> one sample per batch."""
    reps = {version: build(cls) for version, cls in classes.items()}
    messages = {version: cases(rep) for version, rep in reps.items()}
    names = list(next(iter(messages.values())))
    cpu: dict[str, dict[str, list[float]]] = {v: {n: [] for n in names} for v in reps}
    for version, rep in reps.items():  # warm up
        for message in messages[version].values():
            batch(rep._receive, message)
    order = list(reps)
    deadline = time.perf_counter() + seconds * len(names)
    while time.perf_counter() < deadline:
        for name in names:
            for version in order:
                cpu[version][name].append(batch(reps[version]._receive, messages[version][name]))
        order.reverse()  # neither version always runs first
    return cpu


def verify_cost() -> float:
    envelope = decode_envelope(seal(PEER, "delta", [["other", b"\x80"]], _wall() << 16))
    samples = []
    for _ in range(50):
        start = time.process_time()
        for _ in range(BATCH):
            envelope.verify(PEER.public_key)
        samples.append((time.process_time() - start) / BATCH)
    return statistics.median(samples)


def load_replicator(path: Path) -> type[Any]:
    """The Replicator class of another _replicator.py, as a module of this sync package."""
    spec = importlib.util.spec_from_file_location("vsm_edge.sync._replicator_against", path)
    assert spec is not None, path
    assert spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    cls: type[Any] = module.Replicator
    return cls


def report(cpu: dict[str, dict[str, list[float]]]) -> None:
    versions = list(cpu)
    head = "".join(f"{v + ' µs':>12}{'min':>8}" for v in versions)
    paired = f"{'this/' + versions[1]:>12}" if len(versions) == 2 else ""
    print(f"{'case':<16}{head}{paired}{'batches':>9}")
    for name in cpu[versions[0]]:
        row = "".join(
            f"{statistics.median(cpu[v][name]) * 1e6:>12.2f}{min(cpu[v][name]) * 1e6:>8.2f}"
            for v in versions
        )
        if paired:
            ratios = [a / b for a, b in zip(cpu["this"][name], cpu[versions[1]][name], strict=True)]
            row += f"{statistics.median(ratios):>12.3f}"
        print(f"{name:<16}{row}{len(cpu[versions[0]][name]):>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per case (default 2)")
    parser.add_argument("--no-verify", action="store_true", help="skip the Ed25519 verify")
    parser.add_argument("--against", type=Path, help="another sync/_replicator.py to compare")
    args = parser.parse_args()
    verify = verify_cost()
    if args.no_verify:
        Envelope.verify = lambda self, public_key: None  # type: ignore[method-assign]
    classes: dict[str, type[Any]] = {"this": Replicator}
    if args.against is not None:
        classes["other"] = load_replicator(args.against)

    async def run() -> dict[str, dict[str, list[float]]]:
        return measure(args.seconds, classes)

    cpu = trio.run(run)
    print(f"# bench_ingress  python {platform.python_version()}  cpus {os.cpu_count()}  "
          f"{platform.machine()}  load {os.getloadavg()[0]:.2f}")  # fmt: skip
    if args.against is not None:
        print(f"# other: {args.against}")
    report(cpu)
    print(f"# CPU µs per message, median and minimum over batches of {BATCH}")
    if args.no_verify:
        print("# --no-verify: signatures were not checked")
    print(f"# the Ed25519 verify of one envelope alone: {verify * 1e6:.2f} µs (median)")


if __name__ == "__main__":
    main()
