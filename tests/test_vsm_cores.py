"""The pure cores of S2..S5, the lease CRDT, the algedonic core and the pattern detectors."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import cbor2
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.agent import (
    AlgedonicCore,
    CircuitBreaker,
    Control,
    Coordination,
    DecayingEntropy,
    Identity,
    LeaseHeldError,
    LeaseMap,
    PeerReport,
    Policy,
    PolicyEngine,
    PolicyError,
    Recommendation,
    Signal,
    SignalError,
    Subsystem,
    TokenBucket,
    parse_config,
    sign_policy,
    verify_policy,
)
from vsm_edge.agent.vsm.patterns import CascadeDetector, ClockSkewDetector, VarietyOverflowDetector
from vsm_edge.agent.vsm.s3 import Admission
from vsm_edge.agent.vsm.s4 import AnomalyDetector, PeerReportError
from vsm_edge.sync import Timestamp

CFG = parse_config({"node": {"id": "n1", "mesh": "m"}})

# -- S2 ------------------------------------------------------------------------------


def test_fight_needs_regular_intervals_and_the_same_pair() -> None:
    s2 = Coordination(CFG.s2)
    s2.command("v.set", "a", 1.0, 0.0)
    s2.command("v.set", "b", 2.0, 0.3)
    _, found = s2.command("v.set", "a", 1.0, 2.0)  # intervals 0.3 and 1.7: irregular
    assert found is None
    s2 = Coordination(CFG.s2)
    s2.command("v.set", "a", 1.0, 0.0)
    s2.command("v.set", "b", 2.0, 1.0)
    _, found = s2.command("v.set", "c", 1.0, 2.0)  # a, b, c: a third issuer, not a pair
    assert found is None
    _, found = s2.command("v.set", "b", 2.0, 3.0)  # b, c, b: a pair, regular
    assert found is not None
    assert found.issuers == ("b", "c")


def test_churn_rule_and_damping_arithmetic() -> None:
    s2 = Coordination(CFG.s2)
    for i in range(10):
        decision, found = s2.command("v.set", "a", float(i), i * 5.0)
        assert not decision.damped
        assert found is None
    # the 11th change within a minute: churn, and this command is already damped
    decision, found = s2.command("v.set", "a", 19.0, 50.0)
    assert found is not None
    assert found.rule == "churn"
    assert decision.damped
    assert decision.value == pytest.approx(9.0 + 0.3 * (19.0 - 9.0))


def test_damped_non_numeric_commands_are_held() -> None:
    s2 = Coordination(CFG.s2)
    s2.command("v.on", "a", True, 0.0)
    s2.command("v.on", "b", False, 1.0)
    held, found = s2.command(
        "v.on", "a", True, 2.0
    )  # detected; the change comes 1 s after the last
    assert found is not None
    assert held.suppressed == "s2: damped: False held for 2 s after the last change"
    ok, _ = s2.command("v.on", "a", True, 3.5)
    assert ok.suppressed is None
    assert ok.value is True


# -- lease CRDT ------------------------------------------------------------------------

nodes = st.sampled_from(["a", "b", "c"])
leases = st.builds(
    lambda r, n, w, lo, ttl: LeaseMap().acquire(r, n, Timestamp(w, lo, n), ttl),
    st.sampled_from(["pump", "valve", "door"]),
    nodes,
    st.integers(1, 10_000),
    st.integers(0, 5),
    st.integers(1, 5_000),
)
states = st.lists(leases, max_size=6).map(
    lambda ds: __import__("functools").reduce(LeaseMap.merge, ds, LeaseMap())
)


@settings(max_examples=150)
@given(states, states, states)
def test_lease_merge_is_a_join(a: LeaseMap, b: LeaseMap, c: LeaseMap) -> None:
    assert a.merge(b) == b.merge(a)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))
    assert a.merge(a) == a


def test_lease_exclusive_until_expiry_then_free() -> None:
    state = LeaseMap()
    state = state.merge(state.acquire("pump", "a", Timestamp(1000, 0, "a"), 500))
    assert state.holder("pump", Timestamp(1499, 0, "b")) == "a"
    with pytest.raises(LeaseHeldError) as info:
        state.acquire("pump", "b", Timestamp(1200, 0, "b"), 500)
    assert info.value.expires_ms == 1500
    assert state.holder("pump", Timestamp(1500, 0, "b")) is None
    state = state.merge(state.acquire("pump", "b", Timestamp(1500, 1, "b"), 500))
    assert state.holder("pump", Timestamp(1600, 0, "x")) == "b"
    state = state.merge(state.release("pump", "b", Timestamp(1700, 0, "b")))
    assert state.holder("pump", Timestamp(1701, 0, "x")) is None


def test_concurrent_acquires_converge_on_the_greater_stamp() -> None:
    a = LeaseMap().acquire("pump", "a", Timestamp(1000, 0, "a"), 500)
    b = LeaseMap().acquire("pump", "b", Timestamp(1000, 0, "b"), 500)
    assert a.merge(b).holder("pump", Timestamp(1001, 0, "x")) == "b"
    assert b.merge(a) == a.merge(b)


# -- S3 --------------------------------------------------------------------------------


def test_token_bucket_is_exact() -> None:
    bucket = TokenBucket(3, 2, now=0.0)
    assert [bucket.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.time_until(0.0) == pytest.approx(0.5)
    assert bucket.try_take(0.5)
    assert not bucket.try_take(0.5)
    assert bucket.tokens(100.0) == 3


def test_attenuation_by_priority_and_the_aggregates() -> None:
    cfg = parse_config(
        {"node": {"id": "n"}, "s3": {"budgets": {"s1": {"capacity": 1, "refill_per_s": 1}}}}
    )
    s3 = Control(cfg.s3, 0.0)
    assert s3.admit_reading("a", 1, 0.0) is Admission.PASS
    assert s3.admit_reading("a", 0, 0.0) is Admission.DROP
    assert s3.admit_reading("a", 2, 0.0) is Admission.OVERDRAFT
    for v in (1.0, 3.0):
        assert s3.admit_reading("b", 1, 0.0) is Admission.AGGREGATE
        s3.fold("b", "x", v)
    [agg] = s3.flush(0.5)
    assert (agg.source, agg.count, agg.mean, agg.minimum, agg.maximum) == ("b", 2, 2.0, 1.0, 3.0)
    assert s3.dropped == {"a": 1}
    assert s3.load_share("b") == pytest.approx(2 / 3)
    assert s3.attenuating
    s3.exempt_source("c", until=1.0)
    assert s3.admit_reading("c", 1, 0.6) is Admission.OVERDRAFT  # S5 exempted it
    assert s3.flush(0.7) == []
    assert not s3.attenuating  # a tenth of the budget is back


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    b = CircuitBreaker("mqtt", failures=2, reset_s=10)
    assert b.allow(0)
    assert not b.failure(0)
    assert b.failure(1)
    assert not b.allow(5)
    assert b.allow(11)  # half-open: one trial
    assert not b.allow(11)
    assert b.failure(11)  # the trial failed: open again
    assert not b.allow(20)
    assert b.allow(21.5)
    b.success()
    assert b.allow(21.6)
    assert b.snapshot().opens == 2


def test_audit_flags_crashed_silent_and_failing_units() -> None:
    s3 = Control(CFG.s3, 0.0)
    s3.admit_reading("quiet", 1, 0.0)
    s3.admit_reading("ok", 1, 95.0)
    findings = s3.audit(
        100.0,
        {"quiet": "running", "ok": "running", "dead": "restarting", "sick": "running"},
        {"sick": False},
        ["quiet", "ok"],
    )
    assert [(f.unit, f.problem) for f in findings] == [
        ("dead", "unit is restarting"),
        ("sick", "health probe failed"),
        ("quiet", "silent for 100.0 s"),
    ]


# -- S4 --------------------------------------------------------------------------------


def test_entropy_of_uniform_categories_and_its_decay() -> None:
    h = DecayingEntropy(tau=1.0)
    for c in "abcd":
        h.add(c, 0.0, 10)
    assert h.entropy(0.0) == pytest.approx(2.0)
    for _ in range(40):
        h.add("e", 20.0)
    # twenty time constants later the old categories weigh e**-20 of the new one
    assert h.entropy(20.0) < 1e-6
    assert h.weight(20.0) == pytest.approx(40, rel=1e-6)
    h.add("f", 200.0)  # rebases; forgotten categories are dropped
    assert h.categories() == 1


def test_entropy_categories_are_bounded() -> None:
    h = DecayingEntropy(tau=10.0, max_categories=4)
    for i in range(10):
        h.add(f"c{i}", 0.0)
    assert h.categories() == 4


def test_anomaly_ewma_zscore() -> None:
    det = AnomalyDetector(alpha=0.1, z=4.0, warmup=20)
    for i in range(50):
        assert det.observe("s", "x", 20.0 + (0.5 if i % 2 else -0.5), float(i)) is None
    anomaly = det.observe("s", "x", 30.0, 50.0)
    assert anomaly is not None
    assert anomaly.z > 10
    assert anomaly.name == "s.x"


def test_peer_report_round_trip_and_strictness() -> None:
    r = PeerReport("n2", "lab", 1_700_000_000_000, 0.5, False, 1.2, ("ab",))
    assert PeerReport.from_cbor(cbor2.loads(cbor2.dumps(r.to_cbor()))) == r
    bad = {**r.to_cbor(), "health": 2.0}
    with pytest.raises(PeerReportError, match="bad health"):
        PeerReport.from_cbor(bad)


# -- S5 ------------------------------------------------------------------------------------


ADMIN = nacl.signing.SigningKey(b"\x01" * 32)


def engine(**s5: Any) -> PolicyEngine:
    cfg = parse_config(
        {
            "node": {"id": "n1", "mesh": "m"},
            "s5": {"admin_keys": [bytes(ADMIN.verify_key).hex()], **s5},
        }
    )
    return PolicyEngine(cfg.s5, Identity("n1", "m", "z"))


def test_signed_policy_round_trip_and_tampering() -> None:
    policy = Policy(
        version=3, mesh="m", allowed_commands=("valve.*",), limits={"valve.set": (0.0, 50.0)}
    )
    doc = sign_policy(policy, ADMIN)
    assert verify_policy(doc, [bytes(ADMIN.verify_key)]) == policy
    obj = cbor2.loads(doc)
    obj["policy"]["version"] = 4
    with pytest.raises(PolicyError, match="does not verify"):
        verify_policy(cbor2.dumps(obj, canonical=True), [bytes(ADMIN.verify_key)])
    s5 = engine()
    s5.accept_policy(doc)
    assert s5.check_command("valve.set", 10.0) is None
    assert (
        s5.check_command("valve.set", 60.0) == "s5: policy v3 limits valve.set to [0, 50], got 60"
    )
    assert s5.check_command("pump.on", True) == "s5: policy v3 does not allow pump.on"
    other = sign_policy(Policy(version=9, mesh="elsewhere"), ADMIN)
    with pytest.raises(PolicyError, match="is for mesh 'elsewhere'"):
        s5.accept_policy(other)


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_policy_decoding_rejects_garbage_with_policy_error(data: bytes) -> None:
    with contextlib.suppress(PolicyError):
        verify_policy(data, [bytes(ADMIN.verify_key)])


@settings(max_examples=200)
@given(st.data())
def test_policy_bit_flips_are_rejected(data: st.DataObject) -> None:
    doc = bytearray(sign_policy(Policy(version=1, mesh="m", denied_commands=("x.*",)), ADMIN))
    i = data.draw(st.integers(0, len(doc) - 1))
    doc[i] ^= 1 << data.draw(st.integers(0, 7))
    try:
        verify_policy(bytes(doc), [bytes(ADMIN.verify_key)])
    except PolicyError:
        return
    pytest.fail("a flipped bit verified")  # pragma: no cover


def test_arbitration_rules() -> None:
    s5 = engine()
    s3 = Recommendation("s3", "t1", "attenuate", 0.1)
    assert s5.arbitrate(s3, Recommendation("s4", "t1", "watch", 7.0)).winner.source == "s4"
    assert s5.arbitrate(s3, Recommendation("s4", "t1", "watch", 5.0)).winner.source == "s3"
    flood = Recommendation("s3", "flood", "attenuate", 0.9)
    assert s5.arbitrate(flood, Recommendation("s4", "flood", "watch", 50.0)).winner.source == "s3"
    s5.safe_mode = True
    assert (
        s5.arbitrate(s3, Recommendation("s4", "t1", "watch", 50.0)).reason
        == "safe mode: stability first"
    )
    assert s5.arbitrations == {"s3": 3, "s4": 1}


def test_safe_mode_needs_sustained_pain() -> None:
    s5 = engine()
    s5.hear_pain(0.9, 0.0)
    assert s5.evaluate(0.0) is None
    assert s5.evaluate(3.0) is None  # the pain is forgotten after 2.5 s: not sustained
    for t in range(4, 15):
        s5.hear_pain(0.8, float(t))
        entered = s5.evaluate(float(t))
        if t < 14:
            assert entered is None
    assert entered is True
    assert s5.safe_mode


# -- algedonic core ------------------------------------------------------------------------


def sig(source: str, intensity: float, t: int = 0, valence: str = "pain") -> Signal:
    return Signal("n1", source, intensity, valence, Timestamp(1000 + t, 0, "n1"))


def test_hedonic_adaptation_quiets_chronic_pain_but_not_a_jump() -> None:
    core = AlgedonicCore(CFG.algedonic, "n1")
    delivered = [core.offer(sig("fan", 0.3, i), float(i)).alarm is not None for i in range(40)]
    assert delivered[0]
    assert not delivered[-1]  # the baseline rose to within 0.2 of 0.3
    assert core.adapted > 0
    assert core.offer(sig("fan", 0.7, 100), 100.0).alarm is not None


def test_duplicate_signals_are_ignored() -> None:
    core = AlgedonicCore(CFG.algedonic, "n1")
    s = sig("x", 0.5)
    assert core.offer(s, 0).alarm is not None
    assert core.offer(s, 0).alarm is None
    assert core.duplicates == 1


def test_ack_by_prefix_and_unknown() -> None:
    core = AlgedonicCore(CFG.algedonic, "n1")
    alarm = core.offer(sig("x", 0.99), 0).alarm
    assert alarm is not None
    assert core.ack(alarm.signal.id[:8], 1.0) is alarm
    assert core.ack("ffffff", 1.0) is None
    assert core.due_escalations(100.0) == []


def test_alarm_list_is_bounded_keeping_critical_ones() -> None:
    cfg = parse_config({"node": {"id": "n"}, "algedonic": {"max_alarms": 3, "storm_signals": 100}})
    core = AlgedonicCore(cfg.algedonic, "n1")
    core.offer(sig("crit", 0.99), 0)
    for i in range(5):
        core.offer(sig(f"s{i}", 0.5, i + 1), 0)
    assert len(core.alarms) == 3
    assert any(a.signal.source == "crit" for a in core.alarms.values())


def test_signal_encoding_round_trip() -> None:
    s = sig("operator.estop", 1.0)
    assert Signal.decode(s.encode()) == s
    assert Signal.decode(s.encode()).id == s.id


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_signal_decode_parses_or_raises_signal_error(data: bytes) -> None:
    with contextlib.suppress(SignalError):
        Signal.decode(data)


@settings(max_examples=200)
@given(st.data())
def test_signal_decode_of_truncated_or_flipped_input(data: st.DataObject) -> None:
    raw = bytearray(sig("s1.boiler", 0.8).encode())
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    else:
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(SignalError):
        Signal.decode(bytes(raw))


def test_signal_validation() -> None:
    with pytest.raises(SignalError, match="intensity"):
        sig("x", 1.5)
    with pytest.raises(SignalError, match="source"):
        sig("bad source!", 0.5)
    with pytest.raises(SignalError, match="valence"):
        sig("x", 0.5, valence="meh")


# -- patterns ------------------------------------------------------------------------------


def test_variety_overflow_warns_at_1_3_and_alarms_at_1_5_once_per_rise() -> None:
    d = VarietyOverflowDetector(1.3, 1.5)
    names = [
        (p.name if (p := d.evaluate(r, r, 1.0, float(i))) else None)
        for i, r in enumerate([1.0, 1.3, 1.31, 1.4, 1.51, 1.6, 1.2, 1.6])
    ]
    assert names == [
        None,
        None,
        "variety-warning",
        None,
        "variety-overflow",
        None,
        None,
        "variety-overflow",
    ]


def test_cascade_needs_the_order_and_the_window() -> None:
    c = CascadeDetector(60.0)
    assert c.failure(Subsystem.S2, "osc", 0.0) is None
    assert c.failure(Subsystem.S1, "crash", 1.0) is None
    assert c.failure(Subsystem.S3, "budget", 2.0) is None
    assert c.failure(Subsystem.S4, "overflow", 3.0) is None  # S2 came before S1: no cascade
    c = CascadeDetector(60.0)
    c.failure(Subsystem.S1, "crash", 0.0)
    c.failure(Subsystem.S2, "osc", 10.0)
    c.failure(Subsystem.S3, "budget", 20.0)
    assert c.failure(Subsystem.S4, "overflow", 61.0) is None  # 61 s: outside the window
    found = c.failure(Subsystem.S4, "overflow", 59.0)  # 59 s after the S1 failure: inside
    assert found is not None
    assert found.detail.endswith("within 59.0 s")
    c = CascadeDetector(60.0)
    for s, t in ((Subsystem.S1, 0.0), (Subsystem.S2, 1.0), (Subsystem.S3, 2.0)):
        c.failure(s, "x", t)
    found = c.failure(Subsystem.S4, "overflow", 3.0)
    assert found is not None
    assert found.name == "cascade"
    assert c.failure(Subsystem.S4, "overflow", 4.0) is None  # reported once per chain


def test_clock_skew_reported_once_per_peer_until_it_recovers() -> None:
    d = ClockSkewDetector(30.0)
    assert d.observe("b", 1_030_000, 1_000_000, 0) is None  # 30 s ahead: the bound
    found = d.observe("b", 1_031_000, 1_000_000, 0)  # a live stamp 31 s ahead
    assert found is not None
    assert (found.name, found.subject) == ("clock-skew", "b")
    assert "+31.0 s" in found.detail
    assert d.observe("b", 1_040_000, 1_000_000, 1) is None  # once per peer
    assert d.observe("b", 1_000_000, 1_000_000, 2) is None  # back within the bound
    assert d.observe("b", 1_070_000, 1_000_000, 3) is not None  # 70 s ahead: again


def test_a_stale_report_read_back_later_is_not_clock_skew() -> None:
    # A peer's last report (or retained alarm) written 208.3 s ago and read
    # back now (after a restart, relayed late): the sample is 208.3 s behind.
    # Late delivery and a slow clock look alike in one sample: not skew.
    d = ClockSkewDetector(30.0)
    written = 1_000_000
    assert d.observe("n1", written, written + 208_300, 100.0) is None
    assert d.observe("n1", written, written + 208_300, 100.1) is None  # the same burst
    # then the peer's first live message: its clock is fine
    assert d.observe("n1", written + 209_000, written + 209_050, 101.0) is None
    assert d.skewed == {}
    # a late burst again long after: still the start of a wait, not skew
    assert d.observe("n1", written, written + 400_000, 300.0) is None
    assert d.skewed == {}


def test_a_clock_really_behind_is_reported_after_the_bound() -> None:
    d = ClockSkewDetector(30.0)
    for t in range(0, 30, 5):  # 40 s behind on every live message, for 25 s
        assert d.observe("c", 1_000_000 + t * 1000 - 40_000, 1_000_000 + t * 1000, t) is None
    found = d.observe("c", 1_030_000 - 40_000, 1_030_000, 30.0)  # for 30 s: a clock behind
    assert found is not None
    assert "-40.0 s" in found.detail
    assert d.observe("c", 1_035_000 - 40_000, 1_035_000, 35.0) is None  # once


def test_math_sanity_of_the_variety_ratio() -> None:
    from vsm_edge.agent import Intelligence

    s4 = Intelligence(CFG.s4, 0.0)
    for i in range(64):
        s4.environment.add(f"x:{i}", 0.0)
    # 6 bits of environment against log2(7 responses) of system variety
    assert s4.ratio(0.0) == pytest.approx(6 / math.log2(7))


def test_adaptation_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import vsm_edge.agent.vsm.algedonic as alg

    monkeypatch.setattr(alg, "MAX_BASELINES", 8)
    core = AlgedonicCore(
        parse_config({"node": {"id": "n"}, "algedonic": {"storm_signals": 1000}}).algedonic, "n1"
    )
    for i in range(50):
        core.offer(sig(f"src{i}", 0.5, i), float(i))
    assert len(core.baselines) == 8
    assert ("n1", "src49") in core.baselines
