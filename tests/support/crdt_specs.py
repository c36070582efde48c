"""Random operations on every pure CRDT type, for property tests and benches.

A :class:`Spec` knows how to make a random mutation of its type from a
hypothesis ``draw``; ``scenario`` plays random ops and merges on a few
replicas and returns their states and every delta minted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from vsm_edge.sync import (
    AWSet,
    CausalCRDT,
    CausalLWWRegister,
    CCounter,
    GCounter,
    LWWRegister,
    MVRegister,
    ORMap,
    PNCounter,
    Timestamp,
)
from vsm_edge.sync._cbor import dumps, loads

ELEMS: list[Any] = ["a", "b", "c", 1, -2, b"z"]
VALUES: list[Any] = [None, True, 0, 7, -1, 2.5, "x", b"\x00", [1, "a"], {"k": [None]}]
KEYS: list[Any] = ["k1", "k2", 3, b"k"]

Draw = Callable[[st.SearchStrategy[Any]], Any]


@dataclass(frozen=True)
class Spec:
    name: str
    cls: type[Any]
    op: Callable[[Any, str, int, Draw], Any]

    @property
    def causal(self) -> bool:
        return issubclass(self.cls, CausalCRDT)


def _awset_op(s: AWSet, node: str, step: int, draw: Draw) -> AWSet:
    kind = draw(st.sampled_from(["add", "add", "remove", "clear"]))
    e = draw(st.sampled_from(ELEMS))
    if kind == "add":
        return s.add(node, e)
    if kind == "remove":
        return s.remove(node, e)
    return s.clear(node)


def _mv_op(s: MVRegister, node: str, step: int, draw: Draw) -> MVRegister:
    if draw(st.integers(0, 5)) == 0:
        return s.clear(node)
    return s.write(node, draw(st.sampled_from(VALUES)))


def _clww_op(s: CausalLWWRegister, node: str, step: int, draw: Draw) -> CausalLWWRegister:
    if draw(st.integers(0, 5)) == 0:
        return s.clear(node)
    return s.set(node, Timestamp(step, 0, node), draw(st.sampled_from(VALUES)))


def _cc_op(s: CCounter, node: str, step: int, draw: Draw) -> CCounter:
    if draw(st.integers(0, 6)) == 0:
        return s.clear(node)
    return s.increment(node, draw(st.sampled_from([1, 2, 5, -1, -3])))


_NESTED: list[tuple[type[Any], Callable[[Any, str, int, Draw], Any]]] = [
    (AWSet, _awset_op), (MVRegister, _mv_op), (CausalLWWRegister, _clww_op), (CCounter, _cc_op),
]


def _ormap_op(m: ORMap, node: str, step: int, draw: Draw, depth: int = 0) -> ORMap:
    key = draw(st.sampled_from(KEYS))
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return m.remove(node, key)
    if choice == 1:
        kind, _ = draw(st.sampled_from(_NESTED))
        return m.remove(node, key, kind)
    if choice == 2 and depth == 0:
        return m.update(node, key, ORMap, lambda sub: _ormap_op(sub, node, step, draw, 1))
    kind, op = draw(st.sampled_from(_NESTED))
    return m.update(node, key, kind, lambda sub: op(sub, node, step, draw))


def _g_op(c: GCounter, node: str, step: int, draw: Draw) -> GCounter:
    return c.increment(node, draw(st.integers(1, 5)))


def _pn_op(c: PNCounter, node: str, step: int, draw: Draw) -> PNCounter:
    return c.increment(node, draw(st.sampled_from([1, 3, -1, -4])))


def _lww_op(r: LWWRegister, node: str, step: int, draw: Draw) -> LWWRegister:
    # Stamps of concurrent writers may tie on wall time; node ids break ties.
    return r.set(Timestamp(step // 2, 0, node), draw(st.sampled_from(VALUES)))


SPECS = [
    Spec("AWSet", AWSet, _awset_op),
    Spec("MVRegister", MVRegister, _mv_op),
    Spec("CausalLWWRegister", CausalLWWRegister, _clww_op),
    Spec("CCounter", CCounter, _cc_op),
    Spec("ORMap", ORMap, _ormap_op),
    Spec("GCounter", GCounter, _g_op),
    Spec("PNCounter", PNCounter, _pn_op),
    Spec("LWWRegister", LWWRegister, _lww_op),
]


def same_value(a: Any, b: Any) -> bool:
    """Equal state, ignoring removal records (which compaction may drop)."""
    if isinstance(a, CausalCRDT):
        return a.same_value(b)
    return bool(a == b)


def roundtrip(x: Any) -> Any:
    """Through CBOR bytes and back, as on the wire."""
    return type(x).from_cbor(loads(dumps(x.to_cbor())))


def scenario(spec: Spec, draw: Draw, replicas: int = 3, max_ops: int = 12
             ) -> tuple[list[Any], list[Any]]:
    """Random ops and merges on ``replicas`` replicas: (states, deltas)."""
    nodes = [f"n{i}" for i in range(replicas)]
    states = [spec.cls() for _ in nodes]
    deltas: list[Any] = []
    for step in range(1, draw(st.integers(0, max_ops)) + 1):
        i = draw(st.integers(0, replicas - 1))
        if deltas and draw(st.booleans()):
            j = draw(st.integers(0, replicas - 1))
            other = states[j] if draw(st.booleans()) else draw(st.sampled_from(deltas))
            states[i] = states[i].merge(other)
        else:
            d = spec.op(states[i], nodes[i], step, draw)
            deltas.append(d)
            states[i] = states[i].merge(d)
    return states, deltas
