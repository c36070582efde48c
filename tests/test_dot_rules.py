"""The dot rules and digest checks of the gossip core (docs/protocol.md §3.4).

Each case is a message a member holding a valid key could sign; the core must
refuse it (counted, with blame where no honest node could have sent it) and
never raise, now or later from a timer.
"""

from __future__ import annotations

from typing import Any

import pytest

from vsm_edge.sync import AWSet, CausalContext, CrdtDocument
from vsm_edge.sync._cbor import dumps
from vsm_edge.sync._gossip import MAX_DOT_JUMP, DotRuleError, Gossip, Offer

BIG = (1 << 63) - 1


def _doc(name: str = "mesh") -> CrdtDocument[AWSet]:
    return CrdtDocument(name, AWSet)


def _delta(ctx: dict[str, list[int]], entries: list[tuple[str, int, str]]) -> bytes:
    """A hand-made AWSet delta: ``entries`` are (node, counter, element)."""
    store = sorted([[element, [[node, counter]]] for node, counter, element in entries])
    return dumps([AWSet.KIND, ctx, store, []])


def _offer(sender: str, *, relayed: bool, signed: dict[str, int] | None = None) -> Offer:
    table = signed or {}
    return Offer(sender, relayed, lambda node: table.get(node, 0), "me", lambda counter: None)


def test_hand_made_delta_is_what_the_type_writes() -> None:
    doc = _doc()
    _, data = doc.mutate(lambda s: s.add("a", "x"))
    assert data == _delta({"a": [1, 1]}, [("a", 1, "x")])


@pytest.mark.parametrize("digest", [{"": [1, 1]}, 5, {"n1": [0, 1]}, {"n1": [3, 2]}, {"n1": []}])
def test_bad_digest_is_refused_on_arrival_and_no_timer_trips_on_it(digest: Any) -> None:
    g = Gossip("me", {"mesh": _doc()})
    g.receive("evil", "digest", {"mesh": digest}, 0.0, direct=False)
    assert g.statistics().counters["malformed"] == 1
    for t in (0.5, 1.0, 2.0, 5.0, 30.0):  # digest, aged-digest check and compaction timers
        g.tick(t)
        g.drain()
    g.receive("evil", "repair", {"mesh": digest}, 31.0, direct=True)
    assert g.statistics().counters["malformed"] == 2


def test_digest_naming_an_unknown_document_is_ignored() -> None:
    g = Gossip("me", {"mesh": _doc()})
    g.receive("p", "digest", {"other": 5, 7: 1}, 0.0, direct=False)
    g.tick(5.0)
    assert g.statistics().counters["malformed"] == 0


def test_pushed_delta_with_another_nodes_dots_is_refused_with_blame() -> None:
    doc = _doc()
    data = _delta({"victim": [1, 1]}, [("victim", 1, "x")])
    with pytest.raises(DotRuleError) as info:
        doc.apply(data, _offer("evil", relayed=False))
    assert info.value.reason == "foreign-dots"
    assert info.value.blame
    assert doc.state.value() == frozenset()


def test_exhausting_a_nodes_counter_is_refused_pushed_or_relayed() -> None:
    doc = _doc()
    data = _delta({"victim": [1, BIG]}, [("victim", BIG, "poison")])
    for relayed in (False, True):
        with pytest.raises(DotRuleError) as info:
            doc.apply(data, _offer("evil", relayed=relayed))
        assert info.value.blame
    assert doc.state.digest().max("victim") == 0


def test_a_relay_may_not_go_past_what_the_node_signed() -> None:
    doc = _doc()
    # victim signed counter 5 in its own digest; evil relays up to 6
    data = _delta({"victim": [1, 6]}, [("victim", 6, "x")])
    with pytest.raises(DotRuleError) as info:
        doc.apply(data, _offer("evil", relayed=True, signed={"victim": 5}))
    assert info.value.reason == "unsigned-dots"
    assert not info.value.blame
    ok = _delta({"victim": [1, 5]}, [("victim", 5, "x")])
    doc.apply(ok, _offer("evil", relayed=True, signed={"victim": 5}))
    assert doc.state.value() == frozenset({"x"})


def test_a_relay_of_a_node_never_heard_is_bounded_by_the_jump() -> None:
    doc = _doc()
    doc.apply(_delta({"far": [1, MAX_DOT_JUMP]}, [("far", 3, "x")]), _offer("p", relayed=True))
    with pytest.raises(DotRuleError) as info:
        doc.apply(
            _delta({"far": [1, 2 * MAX_DOT_JUMP + 1]}, [("far", 9, "y")]),
            _offer("p", relayed=True),
        )
    assert info.value.reason == "dot-jump"


def test_a_node_learns_its_own_counter_back_from_a_repair() -> None:
    doc = _doc()
    doc.apply(_delta({"me": [1, 700]}, [("me", 700, "old")]), _offer("p", relayed=True))
    _, _data = doc.mutate(lambda s: s.add("me", "new"))
    assert doc.state.digest().max("me") == 701  # never reuses a dot the mesh holds


def test_own_dots_in_a_push_are_foreign() -> None:
    doc = _doc()
    with pytest.raises(DotRuleError):
        doc.apply(_delta({"me": [1, 1]}, [("me", 1, "x")]), _offer("evil", relayed=False))


def test_a_sender_may_push_its_own_dots() -> None:
    doc = _doc()
    doc.apply(_delta({"p": [1, 1]}, [("p", 1, "x")]), _offer("p", relayed=False))
    assert doc.state.value() == frozenset({"x"})


def test_contexts_past_sys_maxsize_merge_without_overflow() -> None:
    huge = CausalContext({"a": [1, BIG], "b": [1, BIG]})
    assert huge.dot_count() == 2 * BIG
    assert len(huge) > 0
    x = AWSet.from_cbor([AWSet.KIND, huge.to_cbor(), [], []])
    y = AWSet().add("c", "z")
    assert x.merge(y).value() == frozenset({"z"})
    assert y.merge(x).value() == frozenset({"z"})


def test_gossip_reports_the_violation_and_keeps_going() -> None:
    g = Gossip("me", {"mesh": _doc()})
    bad = _delta({"victim": [1, BIG]}, [("victim", BIG, "poison")])
    good = _delta({"evil": [1, 1]}, [("evil", 1, "fine")])
    broken = g.receive("evil", "delta", [["mesh", bad], ["mesh", good]], 0.0, direct=False)
    assert isinstance(broken, DotRuleError)
    assert broken.blame
    assert g.docs["mesh"].state.value() == frozenset({"fine"})  # type: ignore[attr-defined]
    assert g.statistics().counters["dot_rule"] == 1


def test_an_unsolicited_direct_delta_counts_as_pushed() -> None:
    g = Gossip("me", {"mesh": _doc()})
    data = _delta({"victim": [1, 1]}, [("victim", 1, "x")])
    broken = g.receive("evil", "delta", [["mesh", data]], 0.0, direct=True)
    assert broken is not None
    assert broken.reason == "foreign-dots"


def test_the_answer_to_our_repair_may_relay_signed_dots() -> None:
    g = Gossip("me", {"mesh": _doc()})
    # victim tells us its counter, p shows it has more than us: we ask p
    g.receive("victim", "digest", {"mesh": {"victim": [1, 2]}}, 0.0, direct=False)
    g.tick(30.0)  # the repair asked of victim times out unanswered
    g.drain()
    g.receive("p", "digest", {"mesh": {"victim": [1, 2]}}, 30.0, direct=False)
    asked = [a for a in g.drain() if getattr(a, "kind", "") == "repair"]
    assert asked
    data = _delta({"victim": [1, 2]}, [("victim", 2, "v")])
    assert asked[0].to == "p"
    assert g.receive("p", "delta", [["mesh", data]], 30.1, direct=True) is None
    assert g.docs["mesh"].state.value() == frozenset({"v"})  # type: ignore[attr-defined]


def test_repair_answers_are_rate_limited_per_requester() -> None:
    doc = _doc()
    doc.mutate(lambda s: s.add("me", "x"))
    g = Gossip("me", {"mesh": doc})
    g.drain()

    def answers() -> int:
        return sum(1 for a in g.drain() if getattr(a, "kind", "") == "delta")

    for _ in range(20):  # a burst at one instant: the bucket's 3, no more
        g.receive("greedy", "repair", {"mesh": {}}, 10.0, direct=True)
    assert answers() == 3
    assert g.statistics().counters["repairs_limited"] == 17
    g.receive("honest", "repair", {"mesh": {}}, 10.0, direct=True)  # others unaffected
    assert answers() == 1
    for _ in range(10):  # two seconds later: rate (1/s) x 2 more
        g.receive("greedy", "repair", {"mesh": {}}, 12.0, direct=True)
    assert answers() == 2
