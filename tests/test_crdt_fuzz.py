"""Decoders of the CRDT payloads: any input is parsed or rejected with
MalformedError / a WireError, never anything else (whole, truncated,
bit-flipped and structurally mutated inputs)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.crdt_specs import SPECS, Spec, scenario

from vsm_edge.sync import (
    AWSet,
    CausalContext,
    MalformedError,
    MVRegister,
    ORMap,
    VersionVector,
    WireError,
)
from vsm_edge.sync._cbor import dumps, loads

ids = [s.name for s in SPECS]

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**65) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8) | st.sampled_from(["a", "n0", 10, 14, 1]),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=4) | st.integers(0, 5), inner, max_size=4),
    max_leaves=30,
)


def _decode(cls: Any, obj: Any) -> None:
    try:
        value = cls.from_cbor(obj)
    except MalformedError:
        return
    # Whatever decodes re-encodes to the same structure and survives merges.
    assert cls.from_cbor(value.to_cbor()) == value
    value.merge(value)
    value.delta_since(value.digest())


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=50)
@given(obj=plain)
def test_arbitrary_objects_are_parsed_or_rejected(spec: Spec, obj: Any) -> None:
    _decode(spec.cls, obj)
    _decode(spec.cls, [getattr(spec.cls, "KIND", 0), obj])
    _decode(spec.cls, [getattr(spec.cls, "KIND", 0), {}, obj, []])


def _mutate(obj: Any, draw: Any) -> Any:
    """Replace one random node of the tree by a random plain object."""
    if isinstance(obj, list) and obj and draw(st.booleans()):
        i = draw(st.integers(0, len(obj) - 1))
        return [*obj[:i], _mutate(obj[i], draw), *obj[i + 1:]]
    if isinstance(obj, dict) and obj and draw(st.booleans()):
        k = draw(st.sampled_from(sorted(obj, key=repr)))
        return {**obj, k: _mutate(obj[k], draw)}
    return draw(plain)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=40)
@given(data=st.data())
def test_structurally_mutated_payloads_are_parsed_or_rejected(
    spec: Spec, data: st.DataObject
) -> None:
    states, deltas = scenario(spec, data.draw, max_ops=8)
    x = data.draw(st.sampled_from(states + deltas))
    _decode(spec.cls, _mutate(x.to_cbor(), data.draw))


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=30)
@given(data=st.data())
def test_truncated_and_bit_flipped_bytes_are_parsed_or_rejected(
    spec: Spec, data: st.DataObject
) -> None:
    states, _ = scenario(spec, data.draw, max_ops=8)
    raw = dumps(data.draw(st.sampled_from(states)).to_cbor())
    cut = raw[: data.draw(st.integers(0, len(raw)))]
    flipped = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(raw) - 1))
        flipped[i] ^= 1 << data.draw(st.integers(0, 7))
    for blob in (cut, bytes(flipped)):
        try:
            obj = loads(blob)
        except WireError:
            continue
        _decode(spec.cls, obj)


def test_decoders_say_what_they_reject() -> None:
    ok = AWSet().add("a", "x").to_cbor()
    cases = {
        "kind": [11, *ok[1:]],
        "entry outside context": [10, {"a": [5, 5]}, ok[2], []],
        "duplicate element": [10, ok[1], ok[2] + ok[2], []],
        "unsorted ranges": [10, {"a": [3, 4, 1, 1]}, [], []],
        "bad node": [10, {"no spaces": [1, 1]}, [], []],
        "zero counter": [10, {"a": [0, 1]}, [], []],
        "record outside context": [10, {"a": [1, 1]}, ok[2], [[["a", 2], [["b", 1]]]]],
        "record kills a live entry": [10, {"a": [1, 2]}, ok[2], [[["a", 2], [["a", 1]]]]],
        "bool as element": [10, {"a": [1, 1]}, [[True, [["a", 1]]]], []],
    }
    for what, obj in cases.items():
        with pytest.raises(MalformedError):
            AWSet.from_cbor(obj)
        assert what


def test_decoders_bound_nesting_and_sizes() -> None:
    # ORMaps nested deeper than the limit.
    m = ORMap()
    store: list[Any] = [[10, "leaf", [["x", [["a", 1]]]]]]
    for _ in range(10):
        store = [[14, "k", store]]
    with pytest.raises(MalformedError, match="nest"):
        ORMap.from_cbor([14, {"a": [1, 1]}, store, []])
    # Values nested deeper than the limit.
    deep: Any = 1
    for _ in range(20):
        deep = [deep]
    with pytest.raises(MalformedError, match="nest"):
        MVRegister.from_cbor([11, {"a": [1, 1]}, [[["a", 1], deep]], []])
    # Too many nodes in a digest.
    with pytest.raises(MalformedError):
        CausalContext.from_cbor({f"n{i}": [1, 1] for i in range(5000)})
    with pytest.raises(MalformedError):
        VersionVector.from_cbor({f"n{i}": 1 for i in range(5000)})
    assert m.is_bottom()
