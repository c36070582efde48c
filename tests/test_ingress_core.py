"""The sans-I/O ingress core (sync/_ingress.py) driven directly: no broker, no Trio.

Each row of the channel table, each refusal reason in its place in the order
(docs/protocol.md §4.4), presence on our own topic, retained messages, the
CPU budget and the body's decoding; then the fuzz invariant: any topic,
payload and retain flag is admitted, ignored or refused, never raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsm_edge.sync import (
    CHANNELS,
    KINDS,
    ChannelRule,
    Inbound,
    MeshKey,
    NodeKey,
    WireError,
    cbor_dumps,
    decode_envelope,
    sign_envelope,
)
from vsm_edge.sync._ingress import (
    CLEARED,
    ECHO,
    MAX_INCARNATION_AHEAD_MS,
    OVERWRITTEN,
    Admitted,
    CpuBudget,
    Ingress,
    Refused,
    _make_admitted,
    _make_inbound,
)

MESH = "m"
ME = "me"
NOW = 100.0  # the budget's clock, seconds
NOW_MS = 1_700_000_000_000  # our wall clock
HLC = NOW_MS << 16
P1 = NodeKey(b"1" * 32)  # bound to node "p1"
P2 = NodeKey(b"2" * 32)  # bound to node "p2"
STRANGER = NodeKey(b"s" * 32)  # no presence seen
MESH_KEY = MeshKey(b"k" * 32)
BODIES: dict[str, Any] = {
    "delta": [["mesh", b"\x80"]],
    "digest": {"mesh": [{}, []]},
    "repair": {"mesh": [{}, []]},
    "chunk": [1, 0, 1, b"x"],
    "alg": {"id": "x"},
    "policy": b"document",
}


@dataclass
class Peer:
    public_key: bytes


def seal(
    key: NodeKey, kind: str, body: Any = None, *, hlc: int = HLC, mesh_key: MeshKey | None = None
) -> bytes:
    body = BODIES.get(kind) if body is None else body
    iv = b"i" * 12 if mesh_key is not None else None
    return sign_envelope(
        cbor_dumps(body), key, hlc=hlc, kind=kind, nonce=b"n" * 8, mesh_key=mesh_key, iv=iv
    )


def presence_body(key: NodeKey, node: str, **changes: Any) -> dict[str, Any]:
    body = {
        "node": node,
        "pk": key.public_key,
        "inc": HLC,
        "state": "online",
        "zone": "default",
        "mesh": MESH,
        "broker": "",
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not None}


def presence(key: NodeKey, node: str, **changes: Any) -> bytes:
    return seal(key, "presence", presence_body(key, node, **changes))


class Harness:
    """One core for node ``me`` in mesh ``m`` that knows p1 and p2; records what its check saw."""

    def __init__(self, *, check: bool = False, mesh_key: MeshKey | None = None) -> None:
        self.told: list[Inbound] = []
        self.verdict: str | None = None
        self.awaited: set[str] = set()
        self.budget = CpuBudget(0.25, 1.0, 8)
        self.core = Ingress(
            MESH,
            ME,
            node_of={P1.kid: "p1", P2.kid: "p2"},
            peers={"p1": Peer(P1.public_key), "p2": Peer(P2.public_key)},
            awaits=self.awaited.__contains__,
            budget=self.budget,
            check=self._check if check else None,
            mesh_key=mesh_key,
            max_envelope=64 * 1024,
        )

    def _check(self, inbound: Inbound) -> str | None:
        self.told.append(inbound)
        return self.verdict

    def admit(
        self, topic: str, payload: bytes, *, retain: bool = False, sent: bytes = b""
    ) -> object:
        return self.core.admit(topic, payload, retain, presence_sent=sent, now=NOW, now_ms=NOW_MS)


def reason(outcome: object) -> str:
    assert isinstance(outcome, Refused), outcome
    return outcome.reason


def admitted(outcome: object) -> Admitted:
    assert isinstance(outcome, Admitted), outcome
    return outcome


def topic_for(channel: str, sender: str = "p1") -> str:
    """Where ``sender`` publishes on ``channel`` to us."""
    rule = CHANNELS[channel]
    if rule.node is None:
        return f"vsm/{MESH}/{channel}"
    return f"vsm/{MESH}/{channel}/{ME if rule.node == 'addressee' else sender}"


def valid(channel: str, kind: str) -> bytes:
    return presence(P1, "p1") if kind == "presence" else seal(P1, kind)


# -- the table ----------------------------------------------------------------------------


def test_the_table_is_the_channels_and_kinds_of_the_protocol() -> None:
    assert {name: rule.kinds for name, rule in CHANNELS.items()} == {
        "presence": {"presence"},
        "d": {"delta"},
        "sv": {"digest"},
        "to": {"delta", "digest", "repair", "chunk"},
        "alg": {"alg"},
        "policy": {"policy"},
        "cmd": {"cmd"},
        "cmdr": {"cmdr"},
    }
    assert {n for n, r in CHANNELS.items() if r.retained} == {"presence", "alg", "policy"}
    assert {n for n, r in CHANNELS.items() if r.charged} == {"d", "sv", "to"}
    assert all(r.kinds <= KINDS for r in CHANNELS.values())
    with pytest.raises(TypeError):
        CHANNELS["x"] = CHANNELS["d"]  # type: ignore[index]


def test_a_rule_cannot_meter_what_it_does_not_carry_or_charge() -> None:
    with pytest.raises(ValueError, match="metered"):
        ChannelRule(frozenset({"a"}), "sender", False, "bound", "gossip", True, frozenset({"b"}))
    with pytest.raises(ValueError, match="metered"):
        ChannelRule(frozenset({"a"}), "sender", False, "bound", "gossip", False, frozenset({"a"}))


def test_the_protocol_doc_topic_table_matches_the_channel_table() -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()
    section = doc.split("### 4.1 Topics", 1)[1].split("###", 1)[0]
    rows = re.findall(
        r"^\| `vsm/\{mesh\}/(\w+)(/\{node\})?` \| \d \| (\w+)[^|]* \| ([^|]+) \|", section, re.M
    )
    assert len(rows) == len(CHANNELS)
    for channel, node, retain, kinds in rows:
        rule = CHANNELS[channel]
        assert set(re.findall(r"`(\w+)`", kinds)) == rule.kinds, channel
        assert (retain == "yes") == rule.retained, channel
        assert bool(node) == (rule.node is not None), channel


@pytest.mark.parametrize(
    ("channel", "kind"), [(c, k) for c, r in CHANNELS.items() for k in sorted(r.kinds)]
)
def test_every_kind_a_channel_carries_is_admitted_with_its_sender(channel: str, kind: str) -> None:
    h = Harness()
    out = admitted(h.admit(topic_for(channel), valid(channel, kind)))
    assert out.rule is CHANNELS[channel]
    assert (out.inbound.sender, out.inbound.channel) == ("p1", channel)
    assert out.inbound.signature_ok
    assert not out.inbound.retained
    assert (out.presence is not None) == (channel == "presence")


@pytest.mark.parametrize(
    ("channel", "kind"), [(c, k) for c, r in CHANNELS.items() for k in sorted(KINDS - r.kinds)]
)
def test_every_other_kind_is_refused_unexpected_kind(channel: str, kind: str) -> None:
    assert reason(Harness().admit(topic_for(channel), valid(channel, kind))) == "unexpected-kind"


@pytest.mark.parametrize(
    "topic",
    [
        "vsm/m/d",  # d names its sender
        "vsm/m/presence",
        "vsm/m/to",
        "vsm/m/policy/p1",  # policy has no node segment
        "vsm/m/d/p1/extra",
        "vsm/m/nope/p1",
        "vsm/m/",
        "vsm/m/D/p1",
    ],
)
def test_a_topic_outside_the_table_is_refused_unknown_channel(topic: str) -> None:
    assert reason(Harness().admit(topic, seal(P1, "delta"))) == "unknown-channel"


@pytest.mark.parametrize("topic", ["vsm/other/d/p1", "vsm/m", "x", "", "VSM/m/d/p1", "/vsm/m/d/p1"])
def test_a_topic_of_another_mesh_is_refused_foreign_topic(topic: str) -> None:
    assert reason(Harness().admit(topic, seal(P1, "delta"))) == "foreign-topic"


# -- our own topics ---------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["d", "sv", "alg", "presence", "nope"])
def test_our_own_broadcast_echoed_back_is_ignored_whatever_it_holds(channel: str) -> None:
    mine = presence(P1, ME)
    payload = mine if channel == "presence" else b"\xff anything"
    assert Harness().admit(f"vsm/m/{channel}/{ME}", payload, sent=mine) is ECHO


def test_a_presence_on_our_topic_that_we_did_not_send_is_overwritten() -> None:
    h = Harness()
    mine, forged = presence(P1, ME), presence(STRANGER, ME)
    assert h.admit(f"vsm/m/presence/{ME}", forged, retain=True, sent=mine) is OVERWRITTEN
    assert h.admit(f"vsm/m/presence/{ME}", b"", retain=True, sent=mine) is OVERWRITTEN
    assert h.admit(f"vsm/m/presence/{ME}", mine, retain=True, sent=mine) is ECHO


def test_a_message_addressed_to_us_is_not_an_echo() -> None:
    out = admitted(Harness().admit(f"vsm/m/to/{ME}", seal(P1, "repair")))
    assert out.inbound.sender == "p1"


# -- payloads and envelopes ---------------------------------------------------------------


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_an_empty_payload_is_a_cleared_retained_message_or_a_malformed_live_one(
    channel: str,
) -> None:
    h = Harness()
    assert h.admit(topic_for(channel), b"", retain=True) is CLEARED
    assert reason(h.admit(topic_for(channel), b"")) == "malformed-envelope"


@pytest.mark.parametrize(
    "payload",
    [b"\xff garbage", bytes(131_000), seal(P1, "delta", [b"x" * 70_000])],
    ids=["junk", "zeros", "oversized"],
)
def test_what_is_not_an_envelope_within_bounds_is_malformed(payload: bytes) -> None:
    assert reason(Harness().admit("vsm/m/d/p1", payload)) == "malformed-envelope"


# -- retained messages --------------------------------------------------------------------


@pytest.mark.parametrize("channel", sorted(CHANNELS))
def test_retained_messages_only_where_the_protocol_retains(channel: str) -> None:
    (kind,) = sorted(CHANNELS[channel].kinds)[:1]
    out = Harness().admit(topic_for(channel), valid(channel, kind), retain=True)
    if channel in ("presence", "alg", "policy"):
        assert admitted(out).inbound.retained
    else:
        assert reason(out) == "retained:unexpected"


def test_a_retained_delta_is_refused_before_its_key_is_looked_up() -> None:
    assert reason(Harness().admit("vsm/m/d/p1", seal(STRANGER, "delta"), retain=True)) == (
        "retained:unexpected"
    )


# -- the sender and its key ---------------------------------------------------------------


def test_a_presence_carries_its_own_key_and_names_its_sender() -> None:
    h = Harness()
    out = admitted(h.admit("vsm/m/presence/s", presence(STRANGER, "s"), retain=True))
    assert out.inbound.sender == "s"
    assert out.presence is not None
    assert out.presence["pk"] == STRANGER.public_key


@pytest.mark.parametrize(
    "payload",
    [
        presence(STRANGER, "other"),  # names another node than the topic
        seal(STRANGER, "presence", presence_body(P1, "s")),  # carries a key that is not its kid's
        presence(STRANGER, "s", mesh="elsewhere"),
        presence(STRANGER, "s", mesh=None),
        presence(STRANGER, "s", state="away"),
        presence(STRANGER, "s", inc=-1),
        presence(STRANGER, "s", inc=1.5),
        presence(STRANGER, "s", inc="1"),
        presence(STRANGER, "s", zone=5),
        presence(STRANGER, "s", inc=(NOW_MS + MAX_INCARNATION_AHEAD_MS + 1) << 16),
        seal(STRANGER, "presence", ["not", "a", "map"]),
        seal(STRANGER, "presence", presence_body(STRANGER, "s"), mesh_key=MESH_KEY),
    ],
    ids=[
        "other-node",
        "foreign-pk",
        "other-mesh",
        "no-mesh",
        "bad-state",
        "negative-inc",
        "float-inc",
        "text-inc",
        "bad-zone",
        "inc-ahead",
        "not-a-map",
        "encrypted",
    ],
)
def test_a_presence_that_does_not_certify_itself_is_bad(payload: bytes) -> None:
    assert reason(Harness().admit("vsm/m/presence/s", payload)) == "bad-presence"


def test_an_incarnation_exactly_at_the_bound_is_accepted() -> None:
    inc = (NOW_MS + MAX_INCARNATION_AHEAD_MS) << 16 | 0xFFFF
    admitted(Harness().admit("vsm/m/presence/s", presence(STRANGER, "s", inc=inc)))


def test_a_key_without_a_presence_is_unknown() -> None:
    assert reason(Harness().admit("vsm/m/d/p1", seal(STRANGER, "delta"))) == "unknown-key"
    assert reason(Harness().admit("vsm/m/policy", seal(STRANGER, "policy"))) == "unknown-key"


@pytest.mark.parametrize("channel", ["d", "sv", "alg"])
def test_a_broadcast_must_be_signed_by_the_node_its_topic_names(channel: str) -> None:
    (kind,) = CHANNELS[channel].kinds
    assert reason(Harness().admit(f"vsm/m/{channel}/p2", seal(P1, kind))) == "topic-key-mismatch"


def test_on_to_and_policy_the_sender_is_whoever_the_kid_is_bound_to() -> None:
    h = Harness()
    assert admitted(h.admit(f"vsm/m/to/{ME}", seal(P2, "digest"))).inbound.sender == "p2"
    assert admitted(h.admit("vsm/m/policy", seal(P2, "policy"))).inbound.sender == "p2"


# -- the signature and the ingress check --------------------------------------------------


def forged(payload: bytes) -> bytes:
    return payload[:-1] + bytes([payload[-1] ^ 1])  # the signature's last byte


def test_without_a_check_a_bad_signature_is_refused() -> None:
    h = Harness()
    assert reason(h.admit("vsm/m/d/p1", forged(seal(P1, "delta")))) == "bad-signature"
    assert reason(h.admit("vsm/m/presence/p1", forged(presence(P1, "p1")))) == "bad-signature"


def test_the_check_is_told_everything_and_decides_even_on_a_bad_signature() -> None:
    h = Harness(check=True)
    payload = forged(seal(P1, "alg"))
    out = admitted(h.admit("vsm/m/alg/p1", payload, retain=True))
    assert h.told == [
        Inbound("p1", "alg", decode_envelope(payload), False, True, len(payload), NOW_MS)
    ]
    assert out.inbound == h.told[0]
    h.verdict = "gateway:replay"
    assert reason(h.admit("vsm/m/d/p1", seal(P1, "delta"))) == "gateway:replay"
    assert h.told[-1].signature_ok


def test_the_check_is_not_asked_about_what_was_refused_before_it() -> None:
    h = Harness(check=True)
    h.admit("vsm/m/d/p1", seal(STRANGER, "delta"))
    h.admit("vsm/m/d/p1", seal(P1, "delta"), retain=True)
    h.admit("vsm/m/d/p1", b"")
    assert h.told == []


# -- the CPU budget ---------------------------------------------------------------------------


def test_past_its_budget_a_sender_is_refused_metered_kinds_only() -> None:
    h = Harness()
    h.budget.spend("p1", 1.5, NOW, known={"p1"})
    assert reason(h.admit("vsm/m/d/p1", seal(P1, "delta"))) == "cpu-budget"
    for kind in ("delta", "repair", "chunk"):
        assert reason(h.admit(f"vsm/m/to/{ME}", seal(P1, kind))) == "cpu-budget"
    admitted(h.admit("vsm/m/sv/p1", seal(P1, "digest")))  # anti-entropy runs on digests
    admitted(h.admit(f"vsm/m/to/{ME}", seal(P1, "digest")))
    admitted(h.admit("vsm/m/alg/p1", seal(P1, "alg")))
    admitted(h.admit("vsm/m/d/p2", seal(P2, "delta")))  # another sender's budget
    h.awaited.add("p1")  # the answer to our repair is never refused
    admitted(h.admit(f"vsm/m/to/{ME}", seal(P1, "delta")))


def test_the_check_runs_before_the_budget() -> None:
    h = Harness(check=True)
    h.budget.spend("p1", 1.5, NOW, known={"p1"})
    assert reason(h.admit("vsm/m/d/p1", seal(P1, "delta"))) == "cpu-budget"
    assert len(h.told) == 1


def test_a_budget_refills_at_its_share_up_to_its_burst() -> None:
    budget = CpuBudget(0.25, 1.0, 8)
    assert budget.left("a", 0.0) == 1.0
    budget.spend("a", 1.5, 0.0, known={"a"})
    assert budget.left("a", 0.0) == -0.5
    assert budget.left("a", 2.0) == 0.0
    assert budget.left("a", 4.0) == 0.5
    assert budget.left("a", 100.0) == 1.0


def test_a_budget_forgets_unknown_senders_past_its_bound() -> None:
    budget = CpuBudget(0.25, 1.0, 2)
    for name in "abc":
        budget.spend(name, 0.1, 0.0, known={"a"})
    assert len(budget) == 1
    assert budget.left("a", 0.0) == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("share", "burst", "senders"), [(0, 1, 1), (1.5, 1, 1), (0.5, 0, 1), (0.5, 1, 0)]
)
def test_a_budget_refuses_impossible_settings(share: float, burst: float, senders: int) -> None:
    with pytest.raises(ValueError):
        CpuBudget(share, burst, senders)


# -- the body ---------------------------------------------------------------------------------


def test_open_decodes_the_body() -> None:
    h = Harness()
    out = admitted(h.admit("vsm/m/d/p1", seal(P1, "delta")))
    assert h.core.open(out) == [["mesh", b"\x80"]]


def test_a_mesh_key_opens_encrypted_bodies_and_refuses_plain_ones() -> None:
    h = Harness(mesh_key=MESH_KEY)
    sealed = admitted(h.admit("vsm/m/d/p1", seal(P1, "delta", mesh_key=MESH_KEY)))
    assert h.core.open(sealed) == [["mesh", b"\x80"]]
    plain = admitted(h.admit("vsm/m/d/p1", seal(P1, "delta")))
    with pytest.raises(WireError):
        h.core.open(plain)
    keyless = Harness()
    sealed = admitted(keyless.admit("vsm/m/d/p1", seal(P1, "delta", mesh_key=MESH_KEY)))
    with pytest.raises(WireError):
        keyless.core.open(sealed)


def test_a_body_that_is_not_cbor_is_undecodable() -> None:
    h = Harness()
    payload = sign_envelope(b"\xff\xff", P1, hlc=HLC, kind="delta", nonce=b"n" * 8)
    with pytest.raises(WireError):
        h.core.open(admitted(h.admit("vsm/m/d/p1", payload)))


# -- the values ---------------------------------------------------------------------------------


def test_the_fast_constructors_make_the_same_frozen_values() -> None:
    envelope = decode_envelope(seal(P1, "delta"))
    fast = _make_inbound("p1", "d", envelope, True, False, 10, NOW_MS)
    slow = Inbound("p1", "d", envelope, True, False, 10, NOW_MS)
    assert fast == slow
    assert hash(fast) == hash(slow)
    assert repr(fast) == repr(slow)
    assert _make_admitted(CHANNELS["d"], fast, None) == Admitted(CHANNELS["d"], slow)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.sender = "x"  # type: ignore[misc]


# -- the fuzz invariant ---------------------------------------------------------------------------

topics = st.one_of(
    st.sampled_from(
        [f"vsm/m/{c}/{n}" for c in [*CHANNELS, "x", ""] for n in ("p1", "p2", ME, "s", "")]
        + ["vsm/m/policy", "vsm/m", "vsm/n/d/p1", "vsm/m/d/p1/x"]
    ),
    st.text(max_size=20).map(lambda t: f"vsm/m/{t}"),
)
payloads = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda key, kind, body: seal(key, kind, body),
        st.sampled_from([P1, P2, STRANGER]),
        st.sampled_from(sorted(KINDS)),
        st.recursive(
            st.none()
            | st.integers(-(1 << 64), (1 << 64) - 1)
            | st.binary(max_size=8)
            | st.text(max_size=8),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=4), inner, max_size=3)
            ),
            max_leaves=8,
        ),
    ),
    st.sampled_from([presence(STRANGER, "s"), presence(P1, "p1"), presence(P1, ME)]),
)


@given(topic=topics, payload=payloads, retain=st.booleans(), check=st.booleans())
def test_any_message_is_admitted_ignored_or_refused_never_raised(
    topic: str, payload: bytes, retain: bool, check: bool
) -> None:
    h = Harness(check=check)
    out = h.admit(topic, payload, retain=retain)
    assert isinstance(out, Admitted | Refused) or out in (ECHO, OVERWRITTEN, CLEARED)
    if isinstance(out, Admitted):
        assert out.inbound.channel in CHANNELS
        assert out.inbound.envelope.kind in out.rule.kinds
        assert not retain or out.rule.retained
        with contextlib.suppress(WireError):  # refused undecodable-payload by the replicator
            h.core.open(out)
