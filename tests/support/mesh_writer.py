"""A mesh member whose acknowledgements can be seen: for the kill -9 test.

``python -m support.mesh_writer --port P --mesh M --node W --data DIR --count N``
runs a :class:`Replicator` (Mosquitto on 127.0.0.1:P, MQTT 5) with a SQLite
store in DIR and the agents' ``mesh`` document. It prints JSON lines:

* ``{"ready": true, "keys": [...], "seq": S}`` once recovery is done: its own
  keys found in the store (snapshot + log) and its highest own sequence number;
* ``{"ack": KEY, "seq": S}`` for each key, printed only *after*
  ``await replicator.mutate(...)`` returned (the update is acknowledged);
* ``{"status": {...}}`` every 0.25 s: version vector, digest fingerprint,
  online peers, key count.

With ``--same-key`` it overwrites the one key ``W/PREFIX`` with 1..N
instead; ``--watch KEY`` adds that key's value to the status lines.
After ``N`` keys (``--interval`` seconds apart) it keeps running until
SIGTERM (graceful) or SIGKILL. The key is kept in DIR, so a restart is the
same node.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from vsm_edge.agent.mesh.node import _digest_fingerprint
from vsm_edge.sync import (
    AsyncStore,
    CausalLWWRegister,
    CrdtDocument,
    HybridLogicalClock,
    MqttSettings,
    MqttTransport,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    StoreHighWaterMark,
    load_node_key,
    save_node_key,
    thaw,
)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


def own_keys(doc: CrdtDocument[ORMap], node: str) -> list[str]:
    return sorted(k for k in doc.state.value() if isinstance(k, str) and k.startswith(f"{node}/"))


async def main(args: argparse.Namespace) -> None:
    data = Path(args.data)
    key_path = data / "writer.key"
    if not key_path.exists():
        save_node_key(NodeKey.generate(), key_path)
    key = load_node_key(key_path)
    store = await AsyncStore.open(data / "node.db")
    node = args.node
    clock = HybridLogicalClock(node, high_water=StoreHighWaterMark(store.sync))
    doc: CrdtDocument[ORMap] = CrdtDocument("mesh", ORMap)

    def transport(will: Any) -> MqttTransport:
        return MqttTransport(
            MqttSettings(client_id=node, port=args.port, will=will, protocol="5", keepalive=5)
        )

    rep = Replicator(
        ReplicatorConfig(mesh=args.mesh, node=node), key, clock, transport, {"mesh": doc},
        store=store,
    )  # fmt: skip
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(rep.run)
            emit({"ready": True, "keys": own_keys(doc, node), "seq": doc.state.digest().max(node)})

            async def stop_on_sigterm() -> None:
                with trio.open_signal_receiver(signal.SIGTERM) as signals:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

            def watched() -> Any:
                if args.watch is None:
                    return None
                value = doc.state.value().get(args.watch)
                return None if value is None else thaw(value)

            async def report() -> None:
                while True:
                    emit({"status": {
                        "vv": doc.state.digest().vv,
                        "digest": _digest_fingerprint(doc.state),
                        "online": rep.online_peers(),
                        "keys": len(doc.state),
                        "counts": rep.statistics()["counts"],
                        "watch": watched(),
                    }})  # fmt: skip
                    await trio.sleep(0.25)

            nursery.start_soon(stop_on_sigterm)
            nursery.start_soon(report)
            start = doc.state.digest().max(node) + 1
            for i in range(start, start + args.count):
                name = f"{node}/{args.prefix}" if args.same_key else f"{node}/{args.prefix}{i}"

                def put(m: ORMap, name: str = name, i: int = i) -> ORMap:
                    return m.update(
                        node, name, CausalLWWRegister, lambda r: r.set(node, clock.now(), i)
                    )

                delta = await rep.mutate("mesh", put)
                seqs = doc.own_seqs(delta, node)
                emit({"ack": name, "seq": seqs[1] if seqs else None})
                if args.interval > 0:
                    await trio.sleep(args.interval)
                else:
                    await trio.lowlevel.checkpoint()
            emit({"done": True})
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mesh", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--prefix", default="k")
    parser.add_argument("--same-key", action="store_true", help="overwrite one key N times")
    parser.add_argument("--watch", default=None, help="report this key's value")
    trio.run(main, parser.parse_args())
