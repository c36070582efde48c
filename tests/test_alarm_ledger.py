"""The alarm ledger's join, retention and bounds, and the mesh's record codec (pure, fast)."""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import given, settings

from vsm_edge.agent.mesh.schema import (
    alarm_key,
    alarm_record_value,
    parse_alarm_record,
    parse_key,
)
from vsm_edge.agent.vsm.alarm_ledger import AlarmLedger, AlarmRecord
from vsm_edge.agent.vsm.algedonic import PAIN, PLEASURE, Signal
from vsm_edge.sync import Timestamp

T0 = 1_800_000_000_000
DAY_S = 86_400.0


def signal(
    node: str = "n1", intensity: float = 0.97, at: int = T0, source: str = "s1.pump"
) -> Signal:
    return Signal(node, source, intensity, PAIN, Timestamp(at, 0, node), "pressure")


def ledger(node: str = "n1", **kw: Any) -> AlarmLedger:
    return AlarmLedger(node, critical=0.95, retention_s=kw.pop("retention_s", DAY_S), **kw)


def state(lg: AlarmLedger) -> dict[str, tuple[str, Any, Any]]:
    return {
        e.id: (e.state, e.acked and e.acked.node, e.cleared and e.cleared.node) for e in lg.alarms()
    }


def test_an_acknowledgement_anywhere_settles_the_alarm_and_its_critical_pain() -> None:
    n1, n2 = ledger("n1"), ledger("n2")
    sig = signal()
    n1.raise_(sig)
    assert n1.critical_pain() == 0.97
    ((alarm_id, raised),) = n1.take_dirty()
    n2.merge("n1", alarm_id, raised)
    assert n2.critical_pain() == 0.97  # every node agrees why it is in safe mode
    n2.acknowledge(alarm_id, Timestamp(T0 + 5, 0, "n2"))
    ((_, ack),) = n2.take_dirty()
    n1.merge("n2", alarm_id, ack)
    for lg in (n1, n2):
        assert lg.critical_pain() == 0.0
        entry = lg.get(alarm_id)
        assert entry is not None
        assert entry.state == "acknowledged"
        assert entry.acked == Timestamp(T0 + 5, 0, "n2")


def test_a_re_raise_of_the_same_occurrence_never_undoes_the_acknowledgement() -> None:
    lg = ledger("n2")
    sig = signal()
    lg.merge("n1", sig.id, AlarmRecord(signal=sig))
    lg.acknowledge(sig.id, Timestamp(T0 + 1, 0, "n2"))
    # the raise arrives again: by gossip, the retained algedonic message, a restart
    lg.merge("n1", sig.id, AlarmRecord(signal=sig))
    lg.hear(sig)
    entry = lg.get(sig.id)
    assert entry is not None
    assert entry.state == "acknowledged"
    assert not entry.active
    # a later record of the writer without the ack (an older register) keeps the ack
    lg.merge("n2", sig.id, AlarmRecord())
    assert lg.get(sig.id).state == "acknowledged"  # type: ignore[union-attr]
    # cleared wins over acknowledged
    lg.merge("n3", sig.id, AlarmRecord(cleared=Timestamp(T0 + 9, 0, "n3")))
    assert lg.get(sig.id).state == "cleared"  # type: ignore[union-attr]


records = st.lists(
    st.tuples(
        st.sampled_from(["n1", "n2", "n3"]),
        st.sampled_from(["raise", "ack", "clear"]),
        st.integers(0, 50),
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(records, st.randoms(use_true_random=False))
def test_any_order_and_any_duplication_of_records_joins_to_the_same_state(
    ops: list[tuple[str, str, int]], rnd: Any
) -> None:
    sig = signal()
    made: list[tuple[str, AlarmRecord]] = []
    for writer, kind, dt in ops:
        stamp = Timestamp(T0 + dt, 0, writer)
        if kind == "raise":
            if writer == "n1":
                made.append((writer, AlarmRecord(signal=sig)))
        elif kind == "ack":
            made.append((writer, AlarmRecord(acked=stamp)))
        else:
            made.append((writer, AlarmRecord(cleared=stamp)))
    a, b = ledger("x"), ledger("y")
    for writer, rec in made:
        a.merge(writer, sig.id, rec)
    shuffled = made + made
    rnd.shuffle(shuffled)
    for writer, rec in shuffled:
        b.merge(writer, sig.id, rec)
    assert state(a) == state(b)
    if any(r.cleared for _, r in made) and any(r.signal for _, r in made):
        assert state(a)[sig.id][0] == "cleared"


def test_settled_alarms_are_forgotten_after_the_retention_and_stay_forgotten() -> None:
    lg = ledger("n2", retention_s=60.0)
    sig = signal()
    lg.merge("n1", sig.id, AlarmRecord(signal=sig))
    lg.acknowledge(sig.id, Timestamp(T0 + 1_000, 0, "n2"))
    assert lg.expired(T0 + 30_000) == []  # settled 29 s ago: kept
    assert lg.expired(T0 + 61_001) == [sig.id]  # ours to remove from the mesh document
    assert lg.get(sig.id) is None
    # a late copy of the raise does not bring it back
    assert lg.merge("n1", sig.id, AlarmRecord(signal=sig)) is None
    assert lg.hear(sig) is None
    assert lg.refused == 1


def test_an_active_alarm_is_never_forgotten_and_orphans_are() -> None:
    lg = ledger("n2", retention_s=60.0)
    sig = signal()
    lg.merge("n1", sig.id, AlarmRecord(signal=sig))
    lg.merge("n3", "f" * 32, AlarmRecord(acked=Timestamp(T0, 0, "n3")))  # raise unknown
    assert lg.expired(T0 + 10 * 86_400_000) == []  # no record of ours
    assert lg.get(sig.id) is not None  # still raised: still active
    assert lg.get("f" * 32) is None


def test_records_are_all_taken_and_heard_alarms_are_bounded_per_origin() -> None:
    """Records come from the mesh document (which bounds them): all taken, so the
    ledger is the same on every replica; alarms only *heard* are bounded by origin."""
    lg = ledger("me", max_per_writer=4)
    for i in range(6):
        lg.merge("spammer", f"{i:032x}", AlarmRecord(acked=Timestamp(T0, 0, "spammer")))
    assert len(lg.entries) == 6
    assert lg.refused == 0
    for i in range(6):
        lg.hear(signal("loud", 0.5, T0 + i))
    assert sum(1 for e in lg.alarms() if e.signal and e.signal.node == "loud") == 4
    assert lg.refused == 2
    late = signal("loud", 0.5, T0 + 4)  # refused when heard, known once its record arrives
    lg.merge("loud", late.id, AlarmRecord(signal=late))
    assert lg.get(late.id) is not None
    assert lg.get(late.id).signal == late  # type: ignore[union-attr]


def test_our_oldest_non_critical_alarms_are_cleared_beyond_the_bound() -> None:
    lg = ledger("n1", max_per_writer=2)
    sigs = [signal(intensity=0.5, at=T0 + i, source=f"s1.u{i}") for i in range(4)]
    for s in sigs:
        lg.raise_(s)
    cleared = lg.overflow(Timestamp(T0 + 10, 0, "n1"))
    assert cleared == [sigs[0].id, sigs[1].id]
    assert [e.id for e in lg.active()] == [sigs[2].id, sigs[3].id]


# -- the record codec (what a member writes is input) -------------------------------------


def test_records_round_trip_through_the_register_value() -> None:
    sig = signal()
    rec = AlarmRecord(sig, Timestamp(T0 + 1, 2, "n1"), Timestamp(T0 + 3, 0, "n1"))
    assert parse_alarm_record("n1", alarm_record_value(rec)) == rec
    assert parse_key(alarm_key("n1", sig.id)) == ("alarm", "n1", sig.id)
    assert parse_key("n1/a/not-an-id") is None


def test_a_record_cannot_carry_another_nodes_raise_or_good_news() -> None:
    sig = signal("n1")
    assert parse_alarm_record("n2", {"sig": sig.to_cbor()}) is None
    good = Signal("n1", "s1.pump", 0.3, PLEASURE, Timestamp(T0, 0, "n1"), "ok")
    assert parse_alarm_record("n1", {"sig": good.to_cbor()}) is None
    for bad in ({}, {"ack": -1}, {"ack": 2**64}, {"ack": 1.5}, {"x": 1}, [], {"clr": True}):
        assert parse_alarm_record("n1", bad) is None


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(["sig", "ack", "clr", "x"]), inner, max_size=4)
        ),
        max_leaves=12,
    )
)
def test_the_record_decoder_never_raises(value: Any) -> None:
    record = parse_alarm_record("n1", value)
    assert record is None or isinstance(record, AlarmRecord)


def test_alarms_heard_without_records_are_bounded_in_all() -> None:
    lg = ledger("me", max_entries=5)
    for i in range(8):
        lg.hear(signal(f"m{i}", 0.99, T0 + i))
    assert len(lg.entries) == 5
    assert lg.refused == 3
