"""Our own dot counters: reservation ahead, claims from the mesh, skips (sync/_dots.py)."""

from __future__ import annotations

import pytest

from vsm_edge.sync import MAX_DOT_JUMP, RESERVE_AHEAD, CausalContext, CausalLWWRegister, ORMap
from vsm_edge.sync._dots import OwnDots, claimed_counter, plan_claim, reservation_after
from vsm_edge.sync._hlc import Timestamp


def put(state: ORMap, node: str, key: str, value: int) -> ORMap:
    stamp = Timestamp(1_000 + value, 0, node)
    return state.update(node, key, CausalLWWRegister, lambda r: r.set(node, stamp, value))


def test_reservation_is_written_half_a_block_before_it_is_needed() -> None:
    assert reservation_after(1, 0) == 1 + RESERVE_AHEAD
    reserved = 1 + RESERVE_AHEAD
    # Counters well below the reservation need no write ...
    assert reservation_after(reserved - RESERVE_AHEAD // 2, reserved) is None
    # ... the first one within half a block raises it, long before it runs out.
    last = reserved - RESERVE_AHEAD // 2 + 1
    assert reservation_after(last, reserved) == last + RESERVE_AHEAD


def test_a_fresh_replica_with_no_peers_starts_at_one() -> None:
    plan = plan_claim(own=0, reserved=0, claims={})
    assert (plan.floor, plan.skip, plan.learned, plan.refused) == (0, None, 0, ())


def test_offline_restart_mints_above_the_reservation_and_skips_the_unused_counters() -> None:
    # The store holds counters 1..576 and reserved up to 1100: 577..1100 were
    # never published (published only after commit), so they are skipped.
    plan = plan_claim(own=576, reserved=1100, claims={})
    assert plan.floor == 1100
    assert plan.skip == (577, 1100)


def test_counters_a_peer_holds_are_not_skipped_and_are_minted_above() -> None:
    # A peer holds our 577..719 (a restored old store): they stay open for
    # anti-entropy to bring back; only 720..1100 (nobody has them) is skipped.
    plan = plan_claim(own=576, reserved=1100, claims={"p": 719, "q": 600})
    assert plan.learned == 719
    assert plan.floor == 1100
    assert plan.skip == (720, 1100)
    # With an old reservation below what the peer holds, the peer's claim rules.
    plan = plan_claim(own=576, reserved=600, claims={"p": 719})
    assert (plan.floor, plan.skip) == (719, None)


def test_a_wiped_store_learns_its_counter_from_the_mesh() -> None:
    plan = plan_claim(own=0, reserved=0, claims={"p": 719})
    assert (plan.floor, plan.skip, plan.learned) == (719, None, 719)


def test_claims_beyond_max_dot_jump_are_refused() -> None:
    # A member claiming we minted 2**62 counters would exhaust them: ignored.
    plan = plan_claim(own=10, reserved=100, claims={"evil": 2**62, "p": 12})
    assert plan.refused == ("evil",)
    assert plan.learned == 12
    assert plan.floor == 100
    # The bound is relative to what we know of ourselves, and inclusive.
    edge = 100 + MAX_DOT_JUMP
    assert plan_claim(own=10, reserved=100, claims={"p": edge}).floor == edge
    assert plan_claim(own=10, reserved=100, claims={"p": edge + 1}).refused == ("p",)
    assert plan_claim(own=0, reserved=0, claims={"p": MAX_DOT_JUMP + 1}).floor == 0


def test_claimed_counter_reads_a_peer_digest_and_ignores_a_malformed_one() -> None:
    digest = CausalContext({"me": (1, 40), "other": (1, 3)}).to_cbor()
    assert claimed_counter("me", digest) == 40
    assert claimed_counter("nobody", digest) == 0
    assert claimed_counter("me", None) is None
    assert claimed_counter("me", {"not": "a context"}) is None


def test_skip_marks_the_counters_seen_and_lets_later_deltas_be_ready() -> None:
    state = put(ORMap(), "me", "a", 1)  # dot (me, 1)
    skip = ORMap.skip("me", 2, 50)
    assert skip.value() == {}
    assert skip.context == CausalContext({"me": (2, 50)})
    after = put(state.merge(skip), "me", "b", 2)  # mints (me, 51)
    delta = after.delta_since(state.merge(skip).digest())
    assert delta.context == CausalContext({"me": (51, 51)})
    assert not delta.is_ready(state.digest())  # without the skip: waits for 2..50
    assert delta.is_ready(state.merge(skip).digest())
    with pytest.raises(ValueError, match="bad dot range"):
        ORMap.skip("me", 5, 4)
    with pytest.raises(ValueError, match="bad dot range"):
        ORMap.skip("me", 0, 4)


def test_own_dots_mints_above_deltas_in_flight_and_above_the_floor() -> None:
    dots = OwnDots("me")
    committed = put(ORMap(), "me", "a", 1)  # (me, 1)
    first = put(dots.base("mesh", committed), "me", "b", 2)
    assert first.context == CausalContext({"me": (2, 2)})
    dots.add_inflight("mesh", first)
    # The second mint sees the first although it is not committed (not in `committed`).
    second = put(dots.base("mesh", committed), "me", "c", 3)
    assert second.context == CausalContext({"me": (3, 3)})
    dots.add_inflight("mesh", second)
    dots.drop_inflight("mesh", [first])
    assert dots.base("mesh", committed).context.max("me") == 3
    dots.drop_inflight("mesh", [second])
    assert dots.base("mesh", committed) is committed  # nothing in flight: the state itself
    dots.floor["mesh"] = 700
    third = put(dots.base("mesh", committed), "me", "d", 4)
    assert third.context == CausalContext({"me": (701, 701)})


def test_own_dots_claim_waits_for_every_online_peer_and_for_the_restore() -> None:
    dots = OwnDots("me")
    dots.reserved["mesh"] = 1100
    peers = {"p": {"mesh": CausalContext({"me": (1, 719)}).to_cbor()}}
    assert not dots.settled({"mesh": 576}, {}, ["p"])  # no digest from p yet
    assert not dots.settled({"mesh": 576}, peers, ["p"])  # 577..719 not back yet
    assert dots.settled({"mesh": 719}, peers, ["p"])
    plans = dots.claim({"mesh": 719}, peers, ["p"])
    assert plans["mesh"].skip == (720, 1100)
    assert dots.claimed
    assert dots.floor == {"mesh": 1100}
    assert dots.take_skip("mesh") == (720, 1100)
    assert dots.take_skip("mesh") is None
    dots.keep_skip("mesh", (720, 1100))
    assert dots.take_skip("mesh") == (720, 1100)


def test_own_dots_reservations_cover_a_batch_once() -> None:
    dots = OwnDots("me")
    assert dots.reservations([("mesh", 1), ("mesh", 2), ("other", 5)]) == {
        "mesh": 1 + RESERVE_AHEAD,
        "other": 5 + RESERVE_AHEAD,
    }
    dots.reserved_through("mesh", 1 + RESERVE_AHEAD)
    dots.reserved_through("mesh", 3)  # never goes down
    assert dots.reserved["mesh"] == 1 + RESERVE_AHEAD
    assert dots.reservations([("mesh", 3)]) == {}


def test_own_dots_keeps_the_mint_base_across_a_commit_of_the_oldest_deltas() -> None:
    dots = OwnDots("me")
    state = put(ORMap(), "me", "a", 1)
    first = put(dots.base("mesh", state), "me", "b", 2)
    dots.add_inflight("mesh", first)
    second = put(dots.base("mesh", state), "me", "c", 3)
    dots.add_inflight("mesh", second)
    base = dots.base("mesh", state)
    after = state.merge(first)  # the first commits and joins the state
    dots.committed("mesh", [first], state, after)
    kept = dots.base("mesh", after)
    assert kept is base  # no rebuild: it already held `after` and `second`
    assert kept.same_value(after.merge(second))
    # A state that changed otherwise (a remote join) is rebuilt from scratch.
    remote = after.merge(put(ORMap(), "peer", "x", 9))
    rebuilt = dots.base("mesh", remote)
    assert rebuilt.same_value(remote.merge(second))
    dots.committed("mesh", [second], remote, remote.merge(second))
    assert dots.base("mesh", remote.merge(second)).context.max("me") == 3
