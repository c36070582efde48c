"""The sans-I/O gossip core under hostile, *signed* input (in-process, hypothesis).

By the time a body reaches :meth:`Gossip.receive` the replicator has checked
the envelope's signature and the gateway has admitted its sender: a member
may still send any CBOR body it likes. The invariant (STYLE.md §13: one
hostile message never ends a task): whatever a member sends,

* nothing escapes ``receive``, ``tick``, ``drain`` or ``next_deadline``, now
  or at any later tick (aged-digest comparison, compaction, repair timeout);
* the node's own digest stays a valid causal context (peers parse it);
* the node can still write, and an honest peer's delta still joins.

These reproduce the bug where a digest naming node ``""`` (or whose context
is not a map) was stored and later raised out of the timer (compaction, the
aged-digest check), killing the agent.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.adversary import MAX_COUNTER, register_delta

from vsm_edge.sync import (
    CausalContext,
    CausalLWWRegister,
    CrdtDocument,
    Gossip,
    GossipConfig,
    HybridLogicalClock,
    ORMap,
    cbor_dumps,
)

NODE = "g"  # the node under attack
HONEST = "h"  # an honest peer
HOSTILE = "m"  # a member sending hostile bodies

node_ids = st.one_of(
    st.sampled_from(["", NODE, HONEST, HOSTILE, "a/b", "x" * 65, "\u00fc", " ", "+"]),
    st.text(max_size=6),
)
counters = st.one_of(
    st.integers(-2, 6),
    st.integers(MAX_COUNTER - 2, (1 << 64) - 1),  # CBOR ints stop at 2**64 - 1
    st.integers(-(1 << 64), -3),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    counters,
    st.text(max_size=4),
    st.binary(max_size=4),
    st.floats(allow_nan=False),
)
ranges = st.one_of(scalars, st.lists(counters, max_size=6))
contexts = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(node_ids, ranges, max_size=3),
    st.dictionaries(st.integers(-3, 3), ranges, max_size=2),
)
documents = st.sampled_from(["mesh", "notes", ""])
digest_bodies = st.one_of(st.dictionaries(documents, contexts, max_size=3), contexts)


@st.composite
def delta_bodies(draw: st.DrawFn) -> Any:
    """A delta message body: valid framing, hostile data (malformed ORMap deltas)."""
    data = draw(
        st.one_of(
            st.binary(max_size=12),
            st.builds(
                lambda ctx, store, recs: cbor_dumps([14, ctx, store, recs]),
                contexts,
                st.one_of(st.just([]), st.lists(scalars, max_size=2)),
                st.one_of(st.just([]), st.lists(scalars, max_size=2)),
            ),
        )
    )
    doc = draw(documents)
    return draw(st.sampled_from([[[doc, data]], [[doc, data], [doc]], [doc, data], {doc: data}]))


messages = st.one_of(
    st.tuples(st.sampled_from(["digest", "repair"]), digest_bodies),
    st.tuples(st.just("delta"), delta_bodies()),
    st.tuples(st.just("chunk"), st.lists(scalars, max_size=5)),
)


class Node:
    """One replica: a ``mesh`` ORMap document behind a gossip core; time in seconds."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.now = 0.0
        self.doc: CrdtDocument[ORMap] = CrdtDocument("mesh", ORMap)
        self.gossip = Gossip(name, {"mesh": self.doc}, GossipConfig(), now=0.0)
        self.clock = HybridLogicalClock(name)

    def write(self, key: str, value: Any) -> bytes:
        name, clock = self.name, self.clock

        def put(m: ORMap) -> ORMap:
            return m.update(name, key, CausalLWWRegister, lambda r: r.set(name, clock.now(), value))

        _, data = self.doc.mutate(put)
        self.gossip.local_update("mesh", data, self.now)
        return data

    def receive(self, sender: str, kind: str, body: Any, *, direct: bool) -> list[Any]:
        """One message at the current time; the actions it caused (CBOR-encodable)."""
        self.gossip.receive(sender, kind, body, self.now, direct=direct)
        return self.drain()

    def drain(self) -> list[Any]:
        actions = self.gossip.drain()
        for action in actions:
            cbor_dumps(action.body)  # the adapter must be able to seal it
        self.gossip.events()
        return actions

    def run_until(self, until: float, step: float = 0.25) -> list[Any]:
        """Tick every ``step`` from the current time up to ``until``; the actions."""
        out: list[Any] = []
        while self.now <= until:
            self.gossip.tick(self.now)
            self.gossip.next_deadline()
            out += self.drain()
            self.now += step
        return out


def assert_still_healthy(g: Node) -> None:
    """g's digest parses, g can write, and g and an honest newcomer exchange writes."""
    CausalContext.from_cbor(g.doc.digest())  # peers can parse our digest
    g.write(f"{NODE}/after", 1)  # we can still write (no dot counter exhausted)
    g.run_until(g.now + 1.0)
    # An honest peer joins: it asks g for what it lacks (a repair), as a real one would ...
    h = Node(HONEST)
    h.now = g.now
    for action in g.receive(HONEST, "repair", {"mesh": h.doc.digest()}, direct=True):
        if getattr(action, "to", None) == HONEST:
            h.receive(NODE, action.kind, action.body, direct=True)
    assert f"{NODE}/after" in h.doc.state.value(), "g's write after the attack did not replicate"
    # ... then writes; its delta must join at g.
    data = h.write(f"{HONEST}/x", "honest")
    g.receive(HONEST, "delta", [["mesh", data]], direct=False)
    assert f"{HONEST}/x" in g.doc.state.value(), "an honest peer's later write does not join"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(messages, min_size=1, max_size=5), direct=st.booleans())
@example(script=[("digest", {"mesh": {"": [1, 1]}})], direct=False)
@example(script=[("repair", {"mesh": {"n1": [3, 1]}})], direct=True)
def test_hostile_bodies_never_escape_the_gossip_core(
    script: list[tuple[str, Any]], direct: bool
) -> None:
    g = Node(NODE)
    g.write(f"{NODE}/before", 0)
    g.run_until(0.5)
    for kind, body in script:
        g.receive(HOSTILE, kind, body, direct=direct)
        g.now += 0.1
    # A later, well-formed digest from the same member: the aged-digest path.
    g.receive(HOSTILE, "digest", {"mesh": {}}, direct=False)
    g.run_until(6.0)  # compaction, aged digests, repair and transfer timeouts
    assert_still_healthy(g)


def test_digest_naming_node_empty_string_is_dropped_not_stored() -> None:
    """The reported case, whole: {"mesh": {"": [1, 1]}}, then {"mesh": 5}, then time passes."""
    g = Node(NODE)
    g.write(f"{NODE}/before", 0)
    g.now = 0.5
    for body in ({"mesh": {"": [1, 1]}}, {"mesh": 5}):
        g.receive(HOSTILE, "digest", body, direct=False)
    g.run_until(5.0)
    assert_still_healthy(g)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lo=st.integers(1, MAX_COUNTER), owner=st.sampled_from([NODE, HONEST]))
@example(lo=1, owner=NODE)  # the reported case
@example(lo=MAX_COUNTER, owner=HONEST)
def test_a_valid_delta_claiming_dots_near_the_limit_cannot_stop_writes(lo: int, owner: str) -> None:
    """A member's valid delta whose context names dots up to 2**63-1 of ``owner``.

    Reported: ``{victim: [1, 2**63-1]}`` with one entry at that dot made the
    victim's next write raise OverflowError (dot counter exhausted). Whatever
    a member's delta claims, the node must still write, its writes must reach
    an honest peer, and that peer's writes (after it caught up) must join.
    """
    hi = MAX_COUNTER
    g = Node(NODE)
    g.write(f"{NODE}/before", 0)
    data = register_delta(
        {owner: [lo, hi]},
        [(f"{owner}/x", (owner, hi), "pwned")],
        stamp=1 << 40,
    )
    g.now = 0.5
    g.receive(HOSTILE, "delta", [["mesh", data]], direct=False)
    g.run_until(2.0)
    assert_still_healthy(g)
