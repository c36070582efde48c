"""A member signs hostile gossip: digests, deltas and repair requests of its own making.

Real ``vsm-edge run`` agents (n1, n2, n3) in a closed zone on a private
Mosquitto; ``mallory`` holds a valid member key and publishes envelopes built
with the project's wire format (``sign_envelope`` over CBOR bodies of
docs/protocol.md §3-4). After each attack the harness checks the invariant
of ``support.adversary``: every honest agent alive, none quarantined, all
converged, and an honest write made after the attack replicates.

The cases reproduce reported bugs; they are expected to fail until the
product code is fixed (nothing here is marked xfail).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from support.adversary import (
    MAX_COUNTER,
    HostileMesh,
    MeshKeeper,
    adversary,
    envelope_kind_and_kid,
    register_delta,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(180)]

HONEST = ["n1", "n2", "n3"]


@pytest.fixture(scope="module")
def keeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshKeeper]:
    k = MeshKeeper(tmp_path_factory.mktemp("hostile-wire"), HONEST, ["mallory"])
    try:
        yield k
    finally:
        k.discard()


def counts(mesh: HostileMesh, key: str) -> dict[str, int]:
    statuses = mesh.statuses()
    assert statuses is not None
    return {
        a.name: int(s["replication"]["counts"].get(key, 0))
        for a, s in zip(mesh.agents, statuses, strict=True)
    }


def everyone_has(mesh: HostileMesh, origin: str) -> bool:
    """Every agent holds at least one update of ``origin``."""
    statuses = mesh.statuses()
    return statuses is not None and all(
        s["replication"]["vv"].get(origin, 0) >= 1 for s in statuses
    )


def test_signed_digests_with_empty_node_id_or_non_map_context_kill_nobody(
    keeper: MeshKeeper,
) -> None:
    """Bug: a digest naming node "" (or not a map) killed every agent."""
    mesh = keeper.mesh()
    before = counts(mesh, "in_digest")
    hostile: list[Any] = [{"mesh": {"": [1, 1]}}, {"mesh": 5}]
    with adversary(mesh) as mallory:
        for body in hostile:
            mallory.send("sv", "digest", body)  # broadcast: every agent
            time.sleep(0.3)
        for body in hostile:
            for name in HONEST:
                mallory.send("to", "digest", body, to=name)  # and addressed to each
        # Past the age at which a digest is compared (1 s) and a compaction tick.
        time.sleep(3.0)
        dead = mesh.dead()
        assert not dead, f"agents {dead} died of a signed digest:\n{mesh.logs()}"
        after = counts(mesh, "in_digest")
        assert all(after[n] - before[n] >= 4 for n in HONEST), (before, after)  # delivered
        report = mesh.check_invariant()
    print(f"hostile digests: all alive, converged in {report.converged_s:.2f} s, "
          f"post-attack writes replicated in {report.marker_s:.2f} s")  # fmt: skip


# Malformed-but-signed digests: node ids that are not ids, counters out of
# range or out of order, contexts that are not maps, documents we do not have.
node_ids = st.one_of(
    st.sampled_from(["", "n1", "n2", "mallory", "a/b", "x" * 65, "\u00fc", " "]),
    st.text(max_size=6),
)
counters = st.one_of(
    st.integers(-2, 4),
    st.integers(MAX_COUNTER - 1, (1 << 64) - 1),
    st.integers(-(1 << 63), -3),
)
scalars = st.one_of(
    st.none(), st.booleans(), counters, st.text(max_size=4), st.binary(max_size=4),
    st.floats(allow_nan=False),
)  # fmt: skip
contexts = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(node_ids, st.one_of(scalars, st.lists(counters, max_size=5)), max_size=3),
)
digest_bodies = st.one_of(
    st.dictionaries(st.sampled_from(["mesh", "notes", ""]), contexts, min_size=1, max_size=2),
    contexts,
)


@settings(
    max_examples=2,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: agents are slow to restart
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(kind=st.sampled_from(["digest", "repair"]), body=digest_bodies)
@example(kind="digest", body={"mesh": {"n1": [3, 1]}})
def test_random_malformed_signed_digests_against_real_agents(
    keeper: MeshKeeper, kind: str, body: Any
) -> None:
    mesh = keeper.mesh()
    with adversary(mesh) as mallory:
        if kind == "digest":
            mallory.send("sv", "digest", body)
            mallory.send("to", "digest", body, to="n1")
        else:
            mallory.send("to", "repair", body, to="n1")
            mallory.send("to", "repair", body, to="n2")
        time.sleep(0.3)
        mallory.send("sv", "digest", {"mesh": {}})  # a second digest: the aged-digest path
        time.sleep(2.0)  # past the aged-digest comparison (1 s) and a compaction tick
        dead = mesh.dead()
        assert not dead, f"agents {dead} died of {kind} {body!r}:\n{mesh.logs()}"
        quarantines = mesh.quarantines()
        assert not any(set(q) & set(HONEST) for q in quarantines.values()), quarantines
        mesh.wait_converged(10)


def test_member_minting_another_nodes_future_dots_does_not_silence_it(
    keeper: MeshKeeper,
) -> None:
    """mallory mints n2's next 100,000 dots and sends them to n2's peers only.

    Peers that merged them hold n2's future dots in their context, so n2's
    next writes look already seen there; n2's later writes must still reach
    n1 and n3.
    """
    mesh = keeper.mesh()
    statuses = mesh.statuses()
    assert statuses is not None
    k = max(s["replication"]["vv"].get("n2", 0) for s in statuses)
    minted = k + 100_000
    with adversary(mesh) as mallory:
        data = register_delta(
            {"n2": [k + 1, minted]}, [("n2/minted", ("n2", minted), "minted")],
            stamp=mallory.hlc(),
        )  # fmt: skip
        for peer in ("n1", "n3"):
            mallory.send("to", "delta", [["mesh", data]], to=peer)
        time.sleep(1.0)
        statuses = mesh.statuses()
        assert statuses is not None
        landed = {a.name: s["replication"]["vv"].get("n2", 0) >= minted
                  for a, s in zip(mesh.agents, statuses, strict=True)}  # fmt: skip
        report = mesh.check_invariant()
    print(f"minted future dots (merged where: {landed}): converged in "
          f"{report.converged_s:.2f} s, n2's later writes replicated in "
          f"{report.marker_s:.2f} s")  # fmt: skip


def test_repair_requests_from_one_member_get_a_bounded_number_of_answers(
    keeper: MeshKeeper,
) -> None:
    """A ~200-byte signed repair {"mesh": {}} is answered with the whole document.

    mallory plants one 64 KiB register (a member may write its own keys; a
    real mesh document of a few thousand keys is that large), then sends n1
    40 repair requests in 2 s. An honest requester has at most one repair in
    flight and retries once per digest interval (1 s), so n1 answering one
    requester more often than that is amplification: the answers must be
    bounded by about one per second of the attack.
    """
    mesh = keeper.mesh()
    with adversary(mesh) as mallory:
        blob = register_delta(
            {"mallory": [1, 1]}, [("mallory/blob", ("mallory", 1), os.urandom(64 * 1024))],
            stamp=mallory.hlc(),
        )  # fmt: skip
        mallory.send("d", "delta", [["mesh", blob]])
        wait_for(lambda: everyone_has(mesh, "mallory"), 15,
                 "every agent to hold mallory's register")  # fmt: skip
        mallory.subscribe(mallory.topic("to"))
        time.sleep(0.5)
        mallory.take()
        requests = 40
        started = time.monotonic()
        request_bytes = 0
        for _ in range(requests):
            request_bytes += len(mallory.send("to", "repair", {"mesh": {}}, to="n1"))
            time.sleep(0.05)
        time.sleep(2.0)  # answers in flight
        window = time.monotonic() - started
        n1_kid = mesh.creds.keys["n1"].kid
        answers = answer_bytes = 0
        for _topic, payload in mallory.take():
            kind, kid = envelope_kind_and_kid(payload)
            if kid == n1_kid and kind in ("delta", "chunk"):
                answers += 1
                answer_bytes += len(payload)
        ratio = answer_bytes / request_bytes
        print(f"repair amplification: {requests} requests ({request_bytes} bytes) in "
              f"{window:.1f} s -> n1 sent {answers} answer messages ({answer_bytes} bytes) "
              f"to the requester: {ratio:.0f}x the bytes, "
              f"{answer_bytes / requests:.0f} bytes per request")  # fmt: skip
        bound = 1 + math.ceil(window)
        assert answers <= bound, (
            f"n1 answered one requester {answers} times in {window:.1f} s (bound {bound}); "
            f"{answer_bytes} bytes for {request_bytes} bytes of requests ({ratio:.0f}x)"
        )
        mesh.check_invariant()


def test_delta_exhausting_a_victims_dot_counter_does_not_brick_it(keeper: MeshKeeper) -> None:
    """Bug: context {n1: [1, 2**63-1]} with one entry there: n1's next write overflowed.

    The victim crashed with OverflowError (dot counter exhausted) and, its
    store holding the poisoned context, again at every restart.
    """
    mesh = keeper.mesh()
    try:
        with adversary(mesh) as mallory:
            data = register_delta(
                {"n1": [1, MAX_COUNTER]},
                [("n1/exhausted", ("n1", MAX_COUNTER), "pwned")],
                stamp=mallory.hlc(),
            )
            mallory.send("d", "delta", [["mesh", data]])  # signed by mallory, on its own topic
            time.sleep(2.0)  # n1 writes its report every 2 s
            dead = mesh.dead()
            assert not dead, f"agents {dead} died of one signed delta:\n{mesh.logs()}"
            report = mesh.check_invariant()
        # The poisoned context was in n1's store: a restart must not crash-loop.
        mesh.restart_agents(["n1"])
        dead = mesh.dead()
        assert not dead, f"agents {dead} died after a restart:\n{mesh.logs()}"
        again = mesh.check_invariant()
        print(f"dot exhaustion: all alive, converged in {report.converged_s:.2f} s, "
              f"n1's later writes replicated in {report.marker_s:.2f} s "
              f"({again.marker_s:.2f} s after n1 restarted)")  # fmt: skip
    finally:
        keeper.discard()  # the mesh document holds the poisoned context
