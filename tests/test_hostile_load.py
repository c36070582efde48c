"""Load an attacker can cause: a junk flood at one inbox, a broker outage.

Real ``vsm-edge run`` agents (n1, n2) in a closed zone on a private
Mosquitto (``support.adversary``). Both loads are bounded in count and time.
After each the harness checks the invariant: every honest agent alive, no
honest node quarantined, all converged, and an honest write made afterwards
replicates. Reported bugs: honest peers quarantined after the junk flood
(their delayed traffic read as a flood) and after a broker restart (the
store-and-forward burst read as a flood).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import cbor2
import pytest
from support.adversary import (
    MESH,
    Adversary,
    HostileMesh,
    MeshKeeper,
    wait_for,
)
from support.mesh import WriterProcess

from vsm_edge.sync import save_node_key

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

HONEST = ["n1", "n2"]
JUNK_MESSAGES = 1000
JUNK_SIZE = 131_000  # bytes, about; under the 256 KiB envelope limit, so it is decoded
JUNK_SECONDS = 10.0  # the reported rate, 100/s of ~131 KB: ~13 MB/s at the victim's inbox
OUTAGE_S = 30.0  # 150 queued writes; at 15 s (75) the reported quarantine did not show
WRITE_INTERVAL_S = 0.2  # the writer's 5 Hz


@pytest.fixture(scope="module")
def keeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshKeeper]:
    k = MeshKeeper(tmp_path_factory.mktemp("hostile-load"), HONEST, ["mallory", "w"])
    try:
        yield k
    finally:
        k.discard()


def junk(i: int, honest_kid: bytes) -> bytes:
    """~131 KB of unauthenticated CBOR, in turn: the reported junk three times
    in four, and one of three other shapes.

    2: the reported junk, 65,535 x ``[0]`` (131,073 bytes, 131,071 items: the
       costliest decode within the item limit; 66 ms each in the generic
       decoder, which made the reported flood cost 20.9 CPU-seconds), not an
       envelope;
    0: an envelope-shaped COSE_Sign1: a valid header naming a kid nobody
       announced, a random payload and signature;
    1: the same in an honest peer's name (its kid, a random signature): a
       forgery the receiver verifies, attributed to that peer;
    3: an envelope whose payload is nested 40 deep (past the depth limit).
    """
    shape = 2 if i % 4 != 3 else (0, 1, 3)[(i // 4) % 3]
    if shape == 2:
        return cbor2.dumps([[0]] * 65_535)
    header = cbor2.dumps(
        {1: -8, 4: honest_kid if shape == 1 else os.urandom(16), -65537: 1,
         -65538: (int(time.time() * 1000) << 16), -65539: "delta", -65540: os.urandom(16)}
    )  # fmt: skip
    if shape in (0, 1):
        payload = os.urandom(JUNK_SIZE)
    else:
        nested: list[object] = [os.urandom(JUNK_SIZE - 100)]
        for _ in range(40):
            nested = [nested]
        payload = cbor2.dumps(nested)
    return cbor2.dumps(cbor2.CBORTag(18, [header, {}, payload, os.urandom(64)]))


def refused_total(mesh: HostileMesh, name: str) -> int:
    statuses = mesh.statuses()
    assert statuses is not None
    status = statuses[mesh.names.index(name)]
    return sum(int(v) for v in status["replication"]["refused"].values())


def test_junk_flood_at_one_inbox_quarantines_no_honest_node(keeper: MeshKeeper) -> None:
    mesh = keeper.mesh()
    victim = "n1"
    before = refused_total(mesh, victim)
    payloads = [junk(i, mesh.creds.keys["n2"].kid) for i in range(12)]
    sizes = sorted(len(p) for p in payloads)
    with Adversary(mesh.broker.port, MESH, "outsider", None) as outsider:
        topic = outsider.topic("to", victim)
        started = time.monotonic()
        marker = ""
        for i in range(JUNK_MESSAGES):  # bounded in count, paced over JUNK_SECONDS
            outsider.publish_many([(topic, payloads[i % 12])], qos=1)
            if i == JUNK_MESSAGES // 2:  # an honest write halfway through the flood
                marker = mesh.raise_marker("n2")
            ahead = started + (i + 1) * JUNK_SECONDS / JUNK_MESSAGES - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        sent_s = time.monotonic() - started
        # Junk must not queue honest traffic behind it: n2's write, made with
        # half the flood still to come, is at n1 before the flood is over (with
        # 66 ms per junk message n1 was 23 s behind at this point).
        heard_during_flood = mesh.sees_marker(victim, "n2", marker)
    wait_for(lambda: refused_total(mesh, victim) - before >= JUNK_MESSAGES, 30,
             f"{victim} to refuse the junk")  # fmt: skip
    took = time.monotonic() - started
    refused = refused_total(mesh, victim) - before
    report = mesh.check_invariant()
    print(f"junk flood: {JUNK_MESSAGES} messages of {sizes[0]}..{sizes[-1]} bytes to "
          f"to/{victim} in {sent_s:.1f} s; {victim} refused {refused} within {took:.1f} s; "
          f"converged {report.converged_s:.2f} s later, post-flood writes replicated in "
          f"{report.marker_s:.2f} s")  # fmt: skip
    assert heard_during_flood, "n2's write made during the flood waited behind the junk at n1"


def test_broker_outage_while_writing_quarantines_nobody_and_converges(
    keeper: MeshKeeper,
) -> None:
    """Mosquitto stopped for 30 s while an honest writer writes at 5 Hz, then restarted.

    Every honest node queues its writes while the broker is away
    (store-and-forward) and sends them, re-signed and fresh, when it is
    back: from the writer ~150, while it goes on writing at 5 Hz for ~8 s
    after the restart. That must not be read as a flood. Who reconnects
    first is random (each client's backoff; the agents were back 7-12 s
    after the restart here), so against the code this was written for the
    reported quarantine ("flood") showed in about half the runs (3 of 6).
    """
    mesh = keeper.mesh()
    writer = WriterProcess(mesh.workdir, "w", mesh.broker.port, mesh=MESH)
    save_node_key(mesh.creds.keys["w"], writer.data_dir / "writer.key")  # a zone member
    count = int((OUTAGE_S + 10.0) / WRITE_INTERVAL_S)  # ~8 s of writes after the restart
    try:
        lines = writer.start(count=count, interval=WRITE_INTERVAL_S)
        lines.wait_for(lambda x: "ack" in x, 30)
        wait_for(lambda: all(vv.get("w", 0) >= 1 for vv in vvs(mesh)), 15,
                 "the writer's first update everywhere")  # fmt: skip
        mesh.broker.stop()
        stopped = time.monotonic()
        time.sleep(OUTAGE_S)
        during = [x["seq"] for x in lines.snapshot() if "ack" in x]
        mesh.broker.start()  # the same port
        outage = time.monotonic() - stopped
        mesh.wait_formed(40)
        formed = time.monotonic() - stopped - outage
        lines.wait_for(lambda x: "done" in x, 30)
        last = max(x["seq"] for x in lines.snapshot() if "ack" in x)
        time.sleep(1.0)  # the writer's last batch
        # Quarantines first: a quarantined writer's updates would never arrive.
        report = mesh.check_invariant(honest=["w"])
        wait_for(lambda: all(vv.get("w", 0) >= last for vv in vvs(mesh)), 20,
                 f"the writer's {last} updates everywhere")  # fmt: skip
        back = time.monotonic() - stopped - outage
        print(f"broker outage {outage:.1f} s while w wrote at 5 Hz ({len(during)} updates "
              f"acknowledged by then); agents back {formed:.1f} s after the restart, every "
              f"agent held all {last} updates {back:.1f} s after it; quarantines "
              f"{report.quarantines}; converged in {report.converged_s:.2f} s")  # fmt: skip
    finally:
        writer.kill()


def vvs(mesh: HostileMesh) -> list[dict[str, int]]:
    statuses = mesh.statuses()
    return [] if statuses is None else [s["replication"]["vv"] for s in statuses]
