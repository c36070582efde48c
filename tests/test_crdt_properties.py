"""Algebra, anti-entropy and convergence of every pure CRDT type (hypothesis)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.crdt_specs import SPECS, Spec, roundtrip, same_value, scenario
from support.netsim import NetSim

from vsm_edge.sync import CausalContext, CausalCRDT, VersionVector

ids = [s.name for s in SPECS]


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=60)
@given(data=st.data())
def test_merge_is_a_join(spec: Spec, data: st.DataObject) -> None:
    states, deltas = scenario(spec, data.draw)
    pool = states + deltas
    x, y, z = (data.draw(st.sampled_from(pool)) for _ in range(3))
    assert x.merge(y) == y.merge(x)
    assert x.merge(y).merge(z) == x.merge(y.merge(z))
    assert x.merge(x) == x
    assert x.merge(spec.cls()) == x  # bottom is the identity
    # A value is above its parts.
    assert x.merge(y).merge(x) == x.merge(y)


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=60)
@given(data=st.data())
def test_delta_since_equals_state_merge(spec: Spec, data: st.DataObject) -> None:
    states, _ = scenario(spec, data.draw)
    x, y = data.draw(st.sampled_from(states)), data.draw(st.sampled_from(states))
    delta = x.delta_since(y.digest())
    assert y.merge(delta) == y.merge(x)
    # Nothing to send to a replica that already has it all.
    assert x.delta_since(x.merge(y).digest()).is_bottom()
    # The delta is part of x: merging it into x changes nothing.
    assert x.merge(delta) == x


@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=40)
@given(data=st.data())
def test_cbor_round_trip(spec: Spec, data: st.DataObject) -> None:
    states, deltas = scenario(spec, data.draw)
    for x in states + deltas:
        back = roundtrip(x)
        assert back == x
        assert back.to_cbor() == x.to_cbor()
        assert type(x.digest()).from_cbor(x.digest().to_cbor()) == x.digest()


def _digest_from_cbor(spec: Spec, obj: Any) -> Any:
    return CausalContext.from_cbor(obj) if spec.causal else VersionVector.from_cbor(obj)


@pytest.mark.parametrize("gc", [False, True], ids=["no-gc", "gc"])
@pytest.mark.parametrize("spec", SPECS, ids=ids)
@settings(max_examples=20)
@given(data=st.data())
def test_replicas_converge_under_loss_duplication_reordering(
    spec: Spec, gc: bool, data: st.DataObject
) -> None:
    n = data.draw(st.integers(3, 5), label="replicas")
    nodes = [f"n{i}" for i in range(n)]
    states = {node: spec.cls() for node in nodes}
    net: NetSim[tuple[str, bytes]] = NetSim(
        data.draw(st.integers(0, 2**32), label="seed"),
        loss=data.draw(st.sampled_from([0.0, 0.3, 0.6])),
        duplicate=data.draw(st.sampled_from([0.0, 0.2])),
    )
    from vsm_edge.sync._cbor import dumps, loads

    def receive(dst: str, kind: str, body: bytes, src: str) -> None:
        obj = loads(body)
        if kind == "delta":
            states[dst] = states[dst].merge(spec.cls.from_cbor(obj))
        else:  # a digest: answer with what the sender lacks
            delta = states[dst].delta_since(_digest_from_cbor(spec, obj))
            net.send(dst, src, ("delta", dumps(delta.to_cbor())))

    def compact_all() -> None:
        if spec.causal:
            stable = states[nodes[0]].digest()
            for node in nodes[1:]:
                stable = stable & states[node].digest()
            for node in nodes:
                states[node] = states[node].compact(stable)

    oracle = spec.cls()
    for step in range(1, data.draw(st.integers(1, 25), label="ops") + 1):
        src = data.draw(st.sampled_from(nodes))
        delta = spec.op(states[src], src, step, data.draw)
        oracle = oracle.merge(delta)
        states[src] = states[src].merge(delta)
        for dst in nodes:
            if dst != src:
                net.send(src, dst, ("delta", dumps(delta.to_cbor())))
        for _ in range(data.draw(st.integers(0, 3))):
            msg = net.deliver()
            if msg is not None:
                s, d, (kind, body) = msg
                receive(d, kind, body, s)
        if gc and step % 4 == 0:
            compact_all()
    for s, d, (kind, body) in net.drain():
        receive(d, kind, body, s)

    # Digest-driven anti-entropy over the same lossy network, until converged.
    for _ in range(200):
        if all(same_value(states[node], oracle) for node in nodes):
            break
        for a in nodes:
            for b in nodes:
                if a != b:
                    net.send(a, b, ("digest", dumps(states[a].digest().to_cbor())))
        for s, d, (kind, body) in net.drain():
            receive(d, kind, body, s)
        if gc:
            compact_all()
    for node in nodes:
        assert same_value(states[node], oracle), node
        assert states[node].value() == oracle.value()
    if spec.causal:
        compact_all()
        # Once every replica has seen everything, no removal record is left.
        assert all(states[node].record_count() == 0 for node in nodes)


@pytest.mark.parametrize("spec", [s for s in SPECS if s.causal], ids=lambda s: s.name)
@settings(max_examples=40)
@given(data=st.data())
def test_compaction_keeps_convergence(spec: Spec, data: st.DataObject) -> None:
    states, deltas = scenario(spec, data.draw, replicas=3, max_ops=15)
    stable = states[0].digest() & states[1].digest() & states[2].digest()
    compacted = [s.compact(stable) for s in states]
    full = states[0].merge(states[1]).merge(states[2])
    # Merging compacted and uncompacted replicas in any mix gives the same state.
    mixed = compacted[0].merge(states[1]).merge(compacted[2])
    assert same_value(mixed, full)
    for d in deltas:  # late duplicates of old deltas change nothing
        assert same_value(mixed.merge(d), full.merge(d))
    assert all(c.record_count() <= s.record_count() for c, s in zip(compacted, states, strict=True))


@pytest.mark.parametrize("spec", [s for s in SPECS if s.causal], ids=lambda s: s.name)
@settings(max_examples=40)
@given(data=st.data())
def test_causal_readiness(spec: Spec, data: st.DataObject) -> None:
    states, _ = scenario(spec, data.draw)
    x, y = data.draw(st.sampled_from(states)), data.draw(st.sampled_from(states))
    # A replica's own gaps: dots below its maxima it never saw, and dots its
    # removal records name but it never saw (it merged deltas out of order).
    own_gaps = x.missing_dependencies(CausalContext())
    # A delta computed for y's digest lacks nothing at y beyond x's own gaps;
    # so it is ready whenever x is causally complete.
    delta = x.delta_since(y.digest())
    assert own_gaps.covers(delta.missing_dependencies(y.digest()))
    # A fresh mutation delta depends exactly on the author's earlier dots and
    # on the dots it removes.
    node = data.draw(st.sampled_from(["n0", "n1", "n9"]))
    d = spec.op(x, node, 99, data.draw)
    assert isinstance(d, CausalCRDT)
    assert own_gaps.covers(d.missing_dependencies(x.digest()))
    if d.is_bottom():
        return
    top = d.context.max(node)
    removed = CausalContext.from_dots(r for _, ds in d._records.items() for r in ds)
    expected = (CausalContext.from_vv({node: top - 1}) | removed) - d.context
    assert d.missing_dependencies(CausalContext()) == expected
    assert d.is_ready(CausalContext()) == (not expected)
