"""What each CRDT means: add-wins, multi-value, LWW, counters, maps, contexts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.sync import (
    AWSet,
    CausalContext,
    CausalLWWRegister,
    CCounter,
    Dot,
    GCounter,
    LWWRegister,
    MVRegister,
    ORMap,
    PNCounter,
    Timestamp,
    VersionVector,
)


def apply(state, delta):  # type: ignore[no-untyped-def]
    return state.merge(delta), delta


# -- causal context -----------------------------------------------------------


def test_context_compacts_out_of_order_dots_into_a_version_vector() -> None:
    ctx = CausalContext().add(Dot("a", 3)).add(Dot("a", 1))
    assert ctx.vv == {"a": 1}
    assert ctx.cloud == {"a": (3, 3)}
    ctx = ctx.add(Dot("a", 2))
    assert ctx.vv == {"a": 3}
    assert ctx.cloud == {}
    assert ctx == CausalContext.from_vv({"a": 3})
    assert ctx.next_dot("a") == Dot("a", 4)
    assert ctx.next_dot("b") == Dot("b", 1)


@settings(max_examples=200)
@given(
    st.sets(st.tuples(st.sampled_from("abc"), st.integers(1, 40))),
    st.sets(st.tuples(st.sampled_from("abc"), st.integers(1, 40))),
)
def test_context_set_algebra_matches_python_sets(xs: set, ys: set) -> None:  # type: ignore[type-arg]
    a = CausalContext.from_dots(Dot(*x) for x in xs)
    b = CausalContext.from_dots(Dot(*y) for y in ys)
    assert set(a.dots()) == {Dot(*x) for x in xs}
    assert set((a | b).dots()) == xs | ys
    assert set((a - b).dots()) == xs - ys
    assert set((a & b).dots()) == xs & ys
    assert a.covers(b) == (ys <= xs)
    assert len(a) == len(xs)
    assert all((Dot(*x) in a) == (x in xs) for x in ys)
    assert CausalContext.from_cbor(a.to_cbor()) == a


# -- AWSet ----------------------------------------------------------------------


def test_awset_concurrent_add_and_remove_add_wins() -> None:
    a, _ = apply(AWSet(), AWSet().add("a", "x"))
    b = AWSet().merge(a)
    a2, _ = apply(a, a.remove("a", "x"))
    b2, _ = apply(b, b.add("b", "x"))
    assert "x" not in a2
    assert "x" in b2
    assert a2.merge(b2).value() == frozenset({"x"}) == b2.merge(a2).value()


def test_awset_observed_remove_removes_what_was_seen() -> None:
    a, _ = apply(AWSet(), AWSet().add("a", "x"))
    b = AWSet().merge(a)
    b2, _ = apply(b, b.remove("b", "x"))
    a2, _ = apply(a, a.add("a", "y"))
    merged = a2.merge(b2)
    assert merged.value() == frozenset({"y"})


def test_awset_removal_reaches_a_replica_that_saw_the_add_through_delta_since() -> None:
    # The case a plain Almeida ORSet with a version-vector digest gets wrong.
    a, _ = apply(AWSet(), AWSet().add("a", "x"))
    a, _ = apply(a, a.add("a", "y"))
    b = AWSet().merge(a)
    a, _ = apply(a, a.remove("a", "x"))
    repaired = b.merge(a.delta_since(b.digest()))
    assert repaired.value() == frozenset({"y"})
    assert repaired == a


def test_awset_repeated_adds_keep_one_dot_per_element() -> None:
    s = AWSet()
    for _ in range(50):
        s = s.merge(s.add("a", "x"))
    assert len(s) == 1
    assert s.record_count() == 49
    assert s.compact(s.digest()).record_count() == 0


def test_a_delta_says_whose_dots_it_removes() -> None:
    t = Timestamp(1, 0, "a")
    m = ORMap()
    mine = m.update("a", "a/x", CausalLWWRegister, lambda r: r.set("a", t, 1))
    m = m.merge(mine)
    assert not mine.removes_dots_of("a")  # a first write removes nothing
    own = m.update("a", "a/x", CausalLWWRegister, lambda r: r.set("a", Timestamp(2, 0, "a"), 2))
    assert own.removes_dots_of("a")  # an overwrite removes the old entry
    assert not own.removes_dots_of("b")
    theirs = m.remove("b", "a/x")
    assert theirs.removes_dots_of("a")  # b removes an entry a wrote
    assert not theirs.removes_dots_of("b")


def test_awset_mutation_delta_is_tiny_and_carries_its_dot() -> None:
    s = AWSet()
    for i in range(100):
        s = s.merge(s.add("a", i))
    d = s.add("a", "new")
    assert d.context == CausalContext.from_dots([Dot("a", 101)])
    assert d.is_ready(s.digest())
    assert not d.is_ready(CausalContext.from_vv({"a": 99}))
    assert d.missing_dependencies(CausalContext.from_vv({"a": 99})) == CausalContext(
        {"a": [100, 100]})


@settings(max_examples=100)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=30))
def test_awset_single_replica_behaves_like_a_set(ops: list[tuple[bool, str]]) -> None:
    s, model = AWSet(), set()
    for add, e in ops:
        s = s.merge(s.add("a", e) if add else s.remove("a", e))
        (model.add if add else model.discard)(e)
    assert s.value() == model


def test_empty_operations_mint_nothing() -> None:
    s = AWSet()
    assert s.remove("a", "x").is_bottom()
    assert s.clear("a").is_bottom()
    assert s.delta_since(CausalContext()).is_bottom()


# -- registers --------------------------------------------------------------------


def test_mvregister_keeps_concurrent_writes_until_overwritten() -> None:
    a, _ = apply(MVRegister(), MVRegister().write("a", 1))
    b, _ = apply(MVRegister(), MVRegister().write("b", 2))
    both = a.merge(b)
    assert both.value() == (1, 2)
    one, _ = apply(both, both.write("a", 3))
    assert one.value() == (3,)
    assert one.merge(a).merge(b).value() == (3,)


def test_mvregister_freezes_values() -> None:
    v = [1, {"k": [2]}]
    r = MVRegister().write("a", v)
    v.append(3)
    (stored,) = r.value()
    assert stored[0] == 1
    assert stored[1]["k"] == (2,)
    assert len(stored) == 2
    with pytest.raises(TypeError):
        MVRegister().write("a", float("nan"))
    with pytest.raises(TypeError):
        MVRegister().write("a", object())


def test_causal_lww_register_reads_latest_stamp_and_ignores_stale_writes() -> None:
    r = CausalLWWRegister()
    a = r.merge(r.set("a", Timestamp(10, 0, "a"), "old"))
    b = r.merge(r.set("b", Timestamp(10, 0, "b"), "tie-b"))
    both = a.merge(b)
    assert both.value() == "tie-b"  # node id breaks the tie
    assert both.timestamp == Timestamp(10, 0, "b")
    assert both.set("a", Timestamp(9, 0, "a"), "stale").is_bottom()
    newer = both.merge(both.set("a", Timestamp(11, 0, "a"), "new"))
    assert newer.value() == "new"
    assert len(newer) == 1


def test_lww_register_orders_by_hlc() -> None:
    r = LWWRegister()
    a = r.merge(r.set(Timestamp(5, 1, "a"), "a"))
    b = r.merge(r.set(Timestamp(5, 1, "b"), "b"))
    assert a.merge(b).value() == "b" == b.merge(a).value()
    assert a.merge(b).digest() == VersionVector({"b": (5 << 16 | 1) + 1})
    assert a.merge(b).delta_since(b.digest()).is_bottom()
    assert not b.delta_since(a.digest()).is_bottom()


# -- counters ----------------------------------------------------------------------


def test_counters_count_and_digests_grow_with_every_op() -> None:
    g = GCounter()
    g = g.merge(g.increment("a", 3))
    g = g.merge(GCounter().increment("b"))
    assert g.value() == 4
    assert g.digest() == VersionVector({"a": 3, "b": 1})
    p = PNCounter()
    d1 = p.increment("a", 5)
    p = p.merge(d1)
    d2 = p.decrement("a", 5)
    p = p.merge(d2)
    assert p.value() == 0
    assert p.digest() == VersionVector({"a": 10})
    assert PNCounter().merge(d1).merge(p.delta_since(PNCounter().merge(d1).digest())) == p
    with pytest.raises(ValueError):
        g.increment("a", 0)


def test_ccounter_sums_per_node_totals_and_resets_by_removal() -> None:
    c = CCounter()
    for node, k in [("a", 2), ("b", 3), ("a", -1)]:
        c = c.merge(c.increment(node, k))
    assert c.value() == 4
    assert len(c) == 2
    assert c.merge(c.clear("a")).value() == 0


# -- ORMap --------------------------------------------------------------------------


def test_ormap_nested_types_share_the_map_context() -> None:
    m = ORMap()
    m = m.merge(m.update("a", "tags", AWSet, lambda s: s.add("a", "red")))
    m = m.merge(m.update("a", "hits", CCounter, lambda c: c.increment("a", 5)))
    m = m.merge(m.update("a", "cfg", ORMap, lambda sub: sub.update(
        "a", "mode", MVRegister, lambda r: r.write("a", "auto"))))
    assert m.value() == {"tags": frozenset({"red"}), "hits": 5, "cfg": {"mode": ("auto",)}}
    assert m.digest() == CausalContext.from_vv({"a": 3})
    assert m.get("tags", AWSet).value() == frozenset({"red"})
    assert m.get("missing", AWSet).value() == frozenset()


def test_ormap_remove_concurrent_with_update_keeps_only_the_update() -> None:
    m = ORMap()
    m = m.merge(m.update("a", "k", AWSet, lambda s: s.add("a", "old")))
    other = ORMap().merge(m)
    removed = m.merge(m.remove("a", "k"))
    updated = other.merge(other.update("b", "k", AWSet, lambda s: s.add("b", "new")))
    assert removed.merge(updated).value() == {"k": frozenset({"new"})}
    assert updated.merge(removed).value() == {"k": frozenset({"new"})}


def test_ormap_same_key_different_kinds_do_not_clash() -> None:
    m = ORMap()
    a = m.merge(m.update("a", "k", CCounter, lambda c: c.increment("a")))
    b = m.merge(m.update("b", "k", AWSet, lambda s: s.add("b", "x")))
    both = a.merge(b)
    assert set(both.fields()) == {("k", CCounter), ("k", AWSet)}
    assert both.get("k", CCounter).value() == 1
    only_set = both.merge(both.remove("a", "k", CCounter))
    assert set(only_set.fields()) == {("k", AWSet)}


def test_ormap_rejects_a_mutator_that_reuses_dots() -> None:
    m = ORMap()
    m = m.merge(m.update("a", "k", AWSet, lambda s: s.add("a", "x")))
    stale = AWSet().add("a", "y")  # minted from an empty context: dot a:1 again
    with pytest.raises(ValueError, match="reuses"):
        m.update("a", "k", AWSet, lambda s: stale)
    with pytest.raises(TypeError):
        m.update("a", "k", AWSet, lambda s: MVRegister())  # type: ignore[arg-type,return-value]


def test_one_key_delta_into_large_map_does_not_touch_other_keys() -> None:
    m = ORMap()
    for i in range(2000):
        m = m.merge(m.update("a", i, MVRegister, lambda r: r.write("a", 0)))
    d = m.update("b", 7, MVRegister, lambda r: r.write("b", 1))
    m2 = m.merge(d)
    assert len(d) == 1
    assert len(d.to_cbor()[2]) == 1
    assert m2.get(7, MVRegister).value() == (1,)
    assert m2.get(8, MVRegister).value() == (0,)
    assert len(m2) == 2000


def test_merging_different_types_is_refused() -> None:
    with pytest.raises(TypeError):
        AWSet().merge(MVRegister())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        GCounter().merge(PNCounter())  # type: ignore[arg-type]


def test_values_and_deltas_are_immutable() -> None:
    for v in (AWSet(), ORMap(), GCounter(), PNCounter(), LWWRegister(), CausalContext()):
        with pytest.raises(AttributeError):
            v.x = 1  # type: ignore[attr-defined]


def test_bad_node_ids_are_refused() -> None:
    for bad in ("", "a b", "x" * 65, "é"):
        with pytest.raises(ValueError):
            AWSet().add(bad, "x")


@settings(max_examples=60)
@given(data=st.data())
def test_add_wins_against_any_concurrent_removal(data: st.DataObject) -> None:
    """Whatever the shared history, an add concurrent with a remove (or a
    clear) of the same element leaves the element present everywhere."""
    elems = ["a", "b", "c"]
    shared = AWSet()
    for node, e, add in data.draw(st.lists(st.tuples(
            st.sampled_from(["n0", "n1"]), st.sampled_from(elems), st.booleans()), max_size=8)):
        shared = shared.merge(shared.add(node, e) if add else shared.remove(node, e))
    e = data.draw(st.sampled_from(elems))
    remover = shared.merge(
        shared.clear("n0") if data.draw(st.booleans()) else shared.remove("n0", e))
    adder = shared.merge(shared.add("n1", e))
    for merged in (remover.merge(adder), adder.merge(remover),
                   remover.merge(adder.delta_since(remover.digest()))):
        assert e in merged
        assert merged.value() - {e} == remover.value() - {e}


@settings(max_examples=60)
@given(data=st.data())
def test_ormap_update_wins_against_concurrent_key_removal(data: st.DataObject) -> None:
    m = ORMap()
    for i in range(data.draw(st.integers(0, 4))):
        m = m.merge(m.update("n0", "k", AWSet, lambda s, i=i: s.add("n0", i)))
    removed = m.merge(m.remove("n0", "k"))
    updated = m.merge(m.update("n1", "k", AWSet, lambda s: s.add("n1", "new")))
    for merged in (removed.merge(updated), updated.merge(removed),
                   removed.merge(updated.delta_since(removed.digest()))):
        # Only the concurrent update's effect survives the observed removal.
        assert merged.get("k", AWSet).value() == frozenset({"new"})


def test_compact_never_drops_what_this_replica_has_not_seen() -> None:
    # b got the removal of "x" before its add; a meet that wrongly claims the
    # add is stable must not make b forget the removal.
    a = AWSet()
    add = a.add("a", "x")
    a = a.merge(add)
    rm = a.remove("a", "x")
    b = AWSet().merge(rm)
    everything = a.merge(rm).digest()
    b = b.compact(everything)
    assert b.record_count() == 1
    assert "x" not in b.merge(add)
