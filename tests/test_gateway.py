"""The gateway: each check in order, the MAYBE path through the real int8 arbitrator,
zombies quarantined while honest peers pass, counts for the status JSON, fuzzing."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.ingress import NONCE_KEY, T0, Peer, in_time_order, make_gateway

from vsm_edge.models import (
    Arbitration,
    Arbitrator,
    Gateway,
    GatewayConfig,
    Inbound,
    ModelError,
    ReplayConfig,
    Verdict,
    load_arbitrator,
)


@pytest.fixture(scope="module")
def arbitrator() -> Arbitrator:
    return load_arbitrator()  # the shipped model, always tested


def test_fresh_envelope_is_allowed_and_explained() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice])
    decision = gateway.decide(alice.message(T0 + 10))
    assert decision.verdict is Verdict.ALLOW
    assert (decision.check, decision.reason, decision.maybe) == ("replay", "fresh", False)
    assert decision.explain() == "ALLOW by replay: fresh"


def test_replayed_envelope_is_denied() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice])
    msg = alice.message(T0 + 10)
    assert gateway.decide(msg).allowed
    again = gateway.decide(replace(msg, received_ms=msg.received_ms + 3_000))
    assert again.verdict is Verdict.DENY
    assert (again.check, again.reason) == ("replay", "replay")


def test_forged_signature_is_denied_first() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice])
    decision = gateway.decide(replace(alice.message(T0), signature_ok=False))
    assert (decision.verdict, decision.check, decision.reason) == (
        Verdict.DENY,
        "signature",
        "bad-signature",
    )


def test_key_outside_the_zone_is_denied() -> None:
    alice, mallory = Peer("alice", random.Random(1)), Peer("mallory", random.Random(2))
    gateway = make_gateway([alice])
    decision = gateway.decide(mallory.message(T0))
    assert (decision.verdict, decision.check, decision.reason) == (
        Verdict.DENY,
        "zone",
        "not-in-zone",
    )


def test_no_zone_installed_fails_closed() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = Gateway(zone=None, replay_key=NONCE_KEY, now_ms=T0)
    assert gateway.decide(alice.message(T0)).reason == "no-zone"
    gateway.set_zone(frozenset({alice.kid}))  # any container of kids will do
    assert gateway.decide(alice.message(T0 + 1)).allowed


def test_zone_exempt_skips_the_zone_and_nothing_else() -> None:
    alice, mallory = Peer("alice", random.Random(1)), Peer("mallory", random.Random(2))
    gateway = Gateway(zone=None, replay_key=NONCE_KEY, now_ms=T0)
    msg = mallory.message(T0)
    assert gateway.decide(msg, zone_exempt=True).allowed
    assert gateway.decide(msg, zone_exempt=True).reason == "replay"
    forged = replace(mallory.message(T0 + 1), signature_ok=False)
    assert gateway.decide(forged, zone_exempt=True).reason == "bad-signature"
    assert gateway.decide(mallory.message(T0 + 2)).reason == "no-zone"
    assert not gateway.admits(alice.kid)
    gateway.set_zone(frozenset({alice.kid}))
    assert gateway.admits(alice.kid)
    assert not gateway.admits(mallory.kid)


def test_stale_and_future_stamps_are_denied() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice])
    old = alice.message(T0)
    late = replace(old, received_ms=T0 + 61_000)
    assert gateway.decide(late).reason == "too-old"
    ahead = replace(alice.message(T0), hlc=(T0 + 200_000) << 16, received_ms=T0 + 61_000)
    assert gateway.decide(ahead).reason == "too-far-ahead"


# -- retained messages: a rule of their own ---------------------------------------


def test_a_retained_message_needs_signature_zone_and_no_quarantine() -> None:
    alice, mallory = Peer("alice", random.Random(1)), Peer("mallory", random.Random(2))
    gateway = make_gateway([alice])
    msg = alice.message(T0)
    decision = gateway.decide_retained(msg)
    assert (decision.verdict, decision.check, decision.reason) == (
        Verdict.ALLOW,
        "quarantine",
        "retained",
    )
    forged = replace(msg, signature_ok=False)
    assert gateway.decide_retained(forged).reason == "bad-signature"
    assert gateway.decide_retained(mallory.message(T0)).reason == "not-in-zone"
    gateway.detector.quarantine("alice", "flood", T0)
    assert gateway.decide_retained(msg).reason == "quarantined"
    assert gateway.decide_retained(replace(msg, source="")).allowed  # the kid is not
    gateway.detector.quarantine(alice.kid.hex(), "mesh-quorum", T0)
    assert gateway.decide_retained(replace(msg, source="")).reason == "quarantined"
    assert gateway.decide_retained(replace(msg, kid=b"")).reason == "malformed"


def test_a_retained_message_is_old_by_design_and_observed_by_nobody() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice])
    old = replace(alice.message(T0), received_ms=T0 + 3_600_000)  # an hour old
    for _ in range(3):  # every subscriber (and every restart) gets the same one
        assert gateway.decide_retained(old).allowed
    assert gateway.decide_retained(replace(old, signature_ok=False)).reason == "bad-signature"
    assert gateway.statistics()["allow"] == gateway.statistics()["deny"] == 0
    assert gateway.statistics()["peers"] == 0  # no behaviour observed, not even the forgery
    assert gateway.replay.now_ms == T0  # the replay window's clock did not move
    fresh = alice.message(T0 + 10)
    assert gateway.decide_retained(fresh).allowed
    assert gateway.decide(fresh).allowed  # and it is no replay of itself later


def test_signature_only_skips_zone_and_quarantine_but_not_the_signature() -> None:
    mallory = Peer("mallory", random.Random(2))
    gateway = Gateway(zone=None, replay_key=NONCE_KEY, now_ms=T0)
    msg = mallory.message(T0)
    assert gateway.decide_retained(msg).reason == "no-zone"
    gateway.detector.quarantine("mallory", "flood", T0)
    decision = gateway.decide_retained(msg, signature_only=True)
    assert (decision.verdict, decision.check) == (Verdict.ALLOW, "signature")
    forged = replace(msg, signature_ok=False)
    assert gateway.decide_retained(forged, signature_only=True).reason == "bad-signature"


def test_a_retained_check_that_raises_denies_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    alice = Peer("alice", random.Random(1))
    gateway = Gateway(zone=ExplodingZone(), replay_key=NONCE_KEY, now_ms=T0)
    with caplog.at_level(logging.ERROR, logger="vsm_edge.models"):
        decision = gateway.decide_retained(alice.message(T0))
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "internal-error")
    assert "boom" in caplog.text


# -- MAYBE: a Bloom false positive goes to the arbitrator -----------------------

TINY = GatewayConfig(replay=ReplayConfig(capacity=1, fp_rate=0.5, exact_capacity=0))


def test_false_positive_goes_to_the_arbitrator_which_allows_an_honest_peer(
    arbitrator: Arbitrator,
) -> None:
    # An 8-bit nonce filter with no exact set: after a couple of entries every
    # fresh nonce is a Bloom hit that cannot be proven new, i.e. a MAYBE.
    alice = Peer("alice", random.Random(7))
    gateway = make_gateway([alice], arbitrator=arbitrator, config=TINY)
    decisions = [gateway.decide(m) for m in alice.honest(T0, T0 + 120_000, rate=1.0)]
    maybes = [d for d in decisions if d.maybe]
    assert len(maybes) >= len(decisions) - 3
    assert all(d.check == "arbitrator" and d.score is not None for d in maybes)
    allowed = [d for d in maybes if d.allowed]
    assert len(allowed) == len(maybes), [d.explain() for d in maybes if not d.allowed]
    assert allowed[-1].reason == "arbitrator-allow"
    assert len(allowed[-1].features) == 16
    stats = gateway.statistics()
    assert stats["maybe"] == len(maybes)
    assert stats["deny"] == 0


def test_a_replay_beyond_the_exact_set_is_denied_by_the_arbitrator(arbitrator: Arbitrator) -> None:
    alice = Peer("alice", random.Random(8))
    gateway = make_gateway([alice], arbitrator=arbitrator, config=TINY)
    sent = list(alice.honest(T0, T0 + 60_000, rate=1.0))
    for m in sent:
        gateway.decide(m)
    now = sent[-1].received_ms + 1_000
    replays = [replace(m, received_ms=now + i * 100) for i, m in enumerate(sent[-40:-10])]
    decisions = [gateway.decide(r) for r in replays]
    assert all(d.maybe for d in decisions)
    denied = [d for d in decisions if not d.allowed]
    assert len(denied) == len(decisions), [d.explain() for d in decisions if d.allowed]
    assert denied[0].reason == "arbitrator-replay"


def test_maybe_without_an_arbitrator_fails_closed() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice], config=TINY)
    decisions = [gateway.decide(alice.message(T0 + i * 1000)) for i in range(5)]
    assert decisions[-1].verdict is Verdict.DENY
    assert (decisions[-1].check, decisions[-1].reason) == ("arbitrator", "arbitrator-unavailable")


class BrokenArbiter:
    def classify(self, features: Sequence[float]) -> Arbitration:
        raise ModelError("runtime fell over", reason="runtime-failed")


def test_arbitrator_failure_fails_closed() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice], arbitrator=BrokenArbiter(), config=TINY)
    decisions = [gateway.decide(alice.message(T0 + i * 1000)) for i in range(5)]
    assert decisions[-1].reason == "arbitrator-failed"
    assert not decisions[-1].allowed


class ExplodingZone:
    def __contains__(self, item: object) -> bool:
        raise RuntimeError("boom")


def test_a_check_that_raises_denies_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    alice = Peer("alice", random.Random(1))
    gateway = Gateway(zone=ExplodingZone(), replay_key=NONCE_KEY, now_ms=T0)
    with caplog.at_level(logging.ERROR, logger="vsm_edge.models"):
        decision = gateway.decide(alice.message(T0))
    assert (decision.verdict, decision.reason) == (Verdict.DENY, "internal-error")
    assert "boom" in caplog.text


def test_new_zone_takes_effect_at_once() -> None:
    alice, bob = Peer("alice", random.Random(1)), Peer("bob", random.Random(2))
    gateway = make_gateway([alice, bob])
    assert gateway.decide(bob.message(T0)).allowed
    gateway.set_zone(frozenset({alice.kid}))  # bob removed by a new policy
    assert gateway.decide(bob.message(T0 + 10)).reason == "not-in-zone"
    assert gateway.decide(alice.message(T0 + 20)).allowed


# -- zombies -------------------------------------------------------------------


def test_flooding_zombie_is_quarantined_within_seconds_honest_peers_untouched(
    arbitrator: Arbitrator,
) -> None:
    rng = random.Random(42)
    honest = [Peer(f"honest-{i}", random.Random(100 + i)) for i in range(5)]
    zombie = Peer("zombie", rng)
    start_flood = T0 + 30_000
    traffic = in_time_order(
        *(p.honest(T0, T0 + 90_000, rate=0.5 + i * 0.5) for i, p in enumerate(honest)),
        zombie.honest(T0, start_flood, rate=1.0),
        zombie.flood(start_flood, T0 + 60_000, rate=200.0),
    )
    gateway = make_gateway([*honest, zombie], arbitrator=arbitrator)
    quarantined_at = None
    for msg in traffic:
        decision = gateway.decide(msg)
        if msg.source != "zombie":
            assert decision.allowed, (msg.source, decision.explain())
        elif decision.reason == "quarantined" and quarantined_at is None:
            quarantined_at = msg.received_ms
            assert decision.check == "behaviour"
    assert quarantined_at is not None
    assert quarantined_at - start_flood <= 5_000, quarantined_at - start_flood
    events = gateway.pop_events()
    assert [(e.kind, e.peer, e.reason) for e in events] == [("quarantined", "zombie", "flood")]
    assert len(events[0].features) == 16
    assert [q.peer for q in gateway.detector.quarantined()] == ["zombie"]
    stats = gateway.statistics()
    assert stats["quarantined"] == 1
    assert stats["reasons"]["quarantined"] > 5_000  # the rest of the flood, dropped cheaply


def test_quarantine_of_a_kid_applies_whatever_the_source() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice])
    gateway.detector.quarantine(alice.kid.hex(), "mesh-proposal", T0)
    decision = gateway.decide(alice.message(T0 + 5))
    assert (decision.check, decision.reason) == ("quarantine", "quarantined")


def test_statistics_shape_for_the_status_json() -> None:
    alice, mallory = Peer("alice", random.Random(1)), Peer("mallory", random.Random(2))
    gateway = make_gateway([alice])
    msg = alice.message(T0)
    for m in (msg, msg, mallory.message(T0), replace(msg, signature_ok=False)):
        gateway.decide(m)
    stats = gateway.statistics()
    assert stats == {
        "allow": 1,
        "deny": 3,
        "maybe": 0,
        "reasons": {"bad-signature": 1, "fresh": 1, "not-in-zone": 1, "replay": 1},
        "quarantined": 0,
        "peers": 2,
    }


def test_always_features_exposes_the_vector_of_every_message() -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice], config=GatewayConfig(always_features=True))
    decision = gateway.decide(alice.message(T0))
    assert len(decision.features) == 16


# -- fuzz ------------------------------------------------------------------------

anything = st.one_of(
    st.none(), st.integers(), st.text(max_size=5), st.binary(max_size=5), st.booleans()
)
inbounds = st.builds(
    Inbound,
    kid=st.one_of(st.binary(max_size=80), anything),
    hlc=st.one_of(st.integers(-(2**70), 2**70), st.integers(0, 2**64 - 1), anything),
    nonce=st.one_of(st.binary(max_size=80), anything),
    kind=st.one_of(st.text(max_size=80), anything),
    signature_ok=st.one_of(st.booleans(), anything),
    size=st.one_of(st.integers(-10, 2**22), anything),
    received_ms=st.one_of(st.integers(-(2**50), 2**50), anything),
    source=st.one_of(st.text(max_size=150), anything),
)


@settings(max_examples=200)
@given(st.lists(inbounds, max_size=20))
def test_fuzzed_inbounds_never_crash_the_gateway(messages: list[Inbound]) -> None:
    alice = Peer("alice", random.Random(1))
    gateway = make_gateway([alice], config=TINY)
    for msg in [*messages, alice.message(T0)]:
        for retained in (
            gateway.decide_retained(msg),
            gateway.decide_retained(msg, signature_only=True),
        ):
            assert retained.verdict in (Verdict.ALLOW, Verdict.DENY)
            assert retained.reason != "internal-error"
        decision = gateway.decide(msg)
        assert decision.verdict in (Verdict.ALLOW, Verdict.DENY)
        assert decision.reason != "internal-error"
    stats = gateway.statistics()
    assert stats["allow"] + stats["deny"] == len(messages) + 1
    assert sum(stats["reasons"].values()) == len(messages) + 1  # type: ignore[attr-defined]


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.binary(min_size=1, max_size=64),
            st.integers(0, 2**64 - 1),
            st.binary(min_size=1, max_size=64),
            st.integers(0, 2**48 - 1),
        ),
        max_size=20,
    )
)
def test_fuzzed_well_typed_envelopes_with_the_arbitrator(
    arbitrator: Arbitrator, fields: list[tuple[bytes, int, bytes, int]]
) -> None:
    gateway = Gateway(
        zone=frozenset(f[0] for f in fields),
        replay_key=NONCE_KEY,
        arbitrator=arbitrator,
        config=TINY,
        now_ms=0,
    )
    for kid, hlc, nonce, received in fields:
        msg = Inbound(kid, hlc, nonce, "delta", True, 100, received, "")
        decision = gateway.decide(msg)
        assert decision.verdict in (Verdict.ALLOW, Verdict.DENY)
        assert decision.reason != "internal-error"
