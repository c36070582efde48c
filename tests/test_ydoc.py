"""pycrdt (Yjs) documents behind the delta-CRDT protocol, with their pitfalls."""

from __future__ import annotations

import random

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.netsim import NetSim

from vsm_edge.sync import MalformedError, StateVector, WireError, YDoc, YUpdate
from vsm_edge.sync._cbor import dumps, loads
from vsm_edge.sync._ydoc import REMOTE_ORIGIN, js_safe_int

ROOTS = {"m": pycrdt.Map, "log": pycrdt.Array, "notes": pycrdt.Text}


def new(client: int) -> YDoc:
    return YDoc(ROOTS, client_id=client)


def test_numbers_come_back_as_js_doubles() -> None:
    a, b = new(1), new(2)
    d = a.mutate(lambda y: y.root("m").update({"one": 1, "big": 2**60, "pi": 3.5, "t": True}))
    b.merge(d)
    # The writer reads 1 as 1.0 too; the big int stays exact only on the writer.
    assert a.value()["m"]["one"] == 1.0
    assert isinstance(a.value()["m"]["one"], float)
    assert isinstance(b.value()["m"]["one"], float)
    assert a.value()["m"]["big"] == 2**60
    assert isinstance(a.value()["m"]["big"], int)
    assert isinstance(b.value()["m"]["big"], float)
    assert b.value()["m"]["t"] is True
    assert js_safe_int(2**53 - 1)
    assert not js_safe_int(2**53)


def test_mutate_returns_a_delta_and_merge_applies_it() -> None:
    a, b = new(1), new(2)
    d1 = a.mutate(lambda y: y.root("m").__setitem__("k", "v"))
    d2 = a.mutate(lambda y: (y.root("log").append("e1"), y.root("notes").insert(0, "hi")))
    assert b.merge(d1).merge(d2) is b
    assert b.value() == {"m": {"k": "v"}, "log": ["e1"], "notes": "hi"}
    assert b.digest() == a.digest()
    assert a.delta_since(b.digest()).is_bottom()
    assert d1.merge(d2).merge(d1).is_bottom() is False


def test_missing_dependencies_are_reported_as_pending_until_repaired() -> None:
    a, c, d = new(1), new(3), new(4)
    base = a.mutate(lambda y: y.root("notes").insert(0, "hello"))
    c.merge(base)
    tail = c.mutate(lambda y: y.root("notes").insert(5, " world"))
    d.merge(tail)  # depends on "hello", which d never saw
    assert d.pending
    assert d.value()["notes"] == ""
    assert not d.digest().covers(c.digest())
    # Repair: d sends its digest, a peer answers with what d lacks.
    d.merge(c.delta_since(d.digest()))
    assert not d.pending
    assert d.value()["notes"] == "hello world"


def test_a_deletion_of_unseen_items_is_pending() -> None:
    a, b = new(1), new(2)
    add = a.mutate(lambda y: y.root("m").__setitem__("x", 1))
    rm = a.mutate(lambda y: y.root("m").pop("x"))
    b.merge(rm)
    assert b.pending
    b.merge(add)
    assert not b.pending
    assert b.value()["m"] == {}


def test_remote_applies_are_tagged_and_not_echoed() -> None:
    a, b = new(1), new(2)
    echoed: list[YUpdate] = []
    origins: list[object] = []
    b.observe_local(echoed.append)
    root = b.root("m")  # keep it: pycrdt drops a subscription with its wrapper
    root.observe(lambda event, txn: origins.append(txn.origin))
    b.merge(a.mutate(lambda y: y.root("m").__setitem__("k", 1)))
    assert echoed == []
    assert origins == [REMOTE_ORIGIN]
    local = b.mutate(lambda y: y.root("m").__setitem__("mine", 2))
    assert echoed == [local]
    b.root("m")["direct"] = 3  # edits outside mutate() are reported too
    assert len(echoed) == 2


def test_encoding_round_trips_and_rejects_garbage() -> None:
    a = new(1)
    a.mutate(lambda y: y.root("m").__setitem__("k", "v"))
    back = YDoc.from_cbor(loads(dumps(a.to_cbor())), ROOTS)
    assert back.value() == a.value()
    sv = a.digest()
    assert StateVector.from_cbor(loads(dumps(sv.to_cbor()))) == sv
    for bad in ([20, b"\xff\xff"], [21, b"\x00\x00"], [20, "text"], {}, [20]):
        with pytest.raises(MalformedError):
            YUpdate.from_cbor(bad)
    with pytest.raises(MalformedError):
        a.merge(YUpdate(b"\x01\x02\x03"))
    assert a.value()["m"] == {"k": "v"}  # nothing lost
    for bad_sv in ({"x": 1}, {1: 0}, {-1: 2}, [1, 2]):
        with pytest.raises(MalformedError):
            StateVector.from_cbor(bad_sv)


@settings(max_examples=40)
@given(data=st.data())
def test_truncated_and_bit_flipped_updates_are_parsed_or_rejected(data: st.DataObject) -> None:
    a = new(1)
    for i in range(data.draw(st.integers(1, 6))):
        a.mutate(lambda y, i=i: (y.root("m").__setitem__(f"k{i}", i),
                                 y.root("notes").insert(0, "ab")))
    raw = dumps(a.to_cbor())
    blob = bytearray(raw[: data.draw(st.integers(1, len(raw)))])
    for _ in range(data.draw(st.integers(0, 3))):
        blob[data.draw(st.integers(0, len(blob) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    try:
        update = YUpdate.from_cbor(loads(bytes(blob)))
    except WireError:
        return
    b = new(2)
    try:
        b.merge(update)
    except MalformedError:
        return
    b.value()


@settings(max_examples=15)
@given(seed=st.integers(0, 2**32), loss=st.sampled_from([0.0, 0.3, 0.6]), n=st.integers(3, 5))
def test_documents_converge_under_loss_duplication_reordering(
    seed: int, loss: float, n: int
) -> None:
    rng = random.Random(seed)
    docs = {f"n{i}": new(i + 1) for i in range(n)}
    net: NetSim[tuple[str, bytes]] = NetSim(seed, loss=loss, duplicate=0.2)

    def receive(src: str, dst: str, kind: str, body: bytes) -> None:
        if kind == "delta":
            docs[dst].merge(YUpdate.from_cbor(loads(body)))
        else:
            delta = docs[dst].delta_since(StateVector.from_cbor(loads(body)))
            net.send(dst, src, ("delta", dumps(delta.to_cbor())))

    for step in range(30):
        name = rng.choice(sorted(docs))
        op = rng.randrange(4)

        def edit(y: YDoc, op: int = op, step: int = step) -> None:
            if op == 0:
                y.root("m")[f"k{step % 5}"] = step
            elif op == 1 and len(y.root("m")):
                y.root("m").pop(sorted(y.root("m").keys())[0])
            elif op == 2:
                y.root("log").append(step)
            else:
                y.root("notes").insert(0, str(step))

        delta = docs[name].mutate(edit)
        for other in docs:
            if other != name:
                net.send(name, other, ("delta", dumps(delta.to_cbor())))
        for _ in range(rng.randrange(3)):
            msg = net.deliver()
            if msg is not None:
                receive(msg[0], msg[1], *msg[2])
    for src, dst, (kind, body) in net.drain():
        receive(src, dst, kind, body)
    for _ in range(100):
        values = [d.value() for d in docs.values()]
        if all(v == values[0] for v in values) and not any(d.pending for d in docs.values()):
            break
        for a in docs:
            for b in docs:
                if a != b:
                    net.send(a, b, ("digest", dumps(docs[a].digest().to_cbor())))
        for src, dst, (kind, body) in net.drain():
            receive(src, dst, kind, body)
    values = [d.value() for d in docs.values()]
    assert all(v == values[0] for v in values)
    assert not any(d.pending for d in docs.values())
    assert len({d.digest() for d in docs.values()}) == 1


def test_merging_a_whole_document_brings_only_what_is_missing() -> None:
    a, b = new(1), new(2)
    a.mutate(lambda y: y.root("log").append("from-a"))
    b.mutate(lambda y: y.root("log").append("from-b"))
    assert b.merge(a) is b
    assert a.merge(b) is a
    assert a.value() == b.value()
    assert sorted(a.value()["log"]) == ["from-a", "from-b"]
    assert a.digest() == b.digest()
    assert b.statistics()["merges"] == 1
