"""Black-box scenarios of the local VSM on trio's MockClock (exact virtual times)."""

from __future__ import annotations

import logging

import nacl.signing
import pytest
import trio
import trio.testing
from support.vsm import config, running, wall_clock

from vsm_edge.agent import (
    PeerReport,
    Policy,
    PolicyError,
    ReadingSpec,
    Runtime,
    Signal,
    UnitContext,
    sign_policy,
    unit,
)
from vsm_edge.agent.vsm.status import VsmStatus

SENSORS = [
    {"name": "t1", "kind": "simulated-sensor", "options": {"mean": 21.0}},
    {
        "name": "flood",
        "kind": "simulated-sensor",
        "options": {"flood_rate": 1000, "flood_after_s": 1.0},
    },
]


def heard(runtime: Runtime, source: str) -> list[float]:
    return [t for t, s in runtime.s5_heard if s.source == source]


async def test_flooding_sensor_is_attenuated_and_pain_reaches_s5_within_the_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(config({"units": SENSORS})) as rt:
        await trio.sleep(6)
        s3 = rt.s3
        # 2000 tokens, 1000/s flood + 1/s from t1 against a refill of 100/s: out at ~3.2 s
        assert 3.0 < s3.attenuation_started - rt.started_at < 3.5
        assert s3.dropped["flood"] > 1000  # low-priority flood readings dropped, counted
        assert "t1" not in s3.dropped  # the well-behaved sensor is never dropped
        alarm = next(a for a in rt.algedonic.alarms.values() if a.signal.source == "s3.attenuation")
        assert alarm.raised_at == s3.attenuation_started
        # pain reaches S5 exactly one algedonic window (10 ms) after it was raised
        assert heard(rt, "s3.attenuation")[0] == pytest.approx(alarm.raised_at + 0.010, abs=1e-9)
        assert max(rt.algedonic_latencies) <= 0.010 + 1e-9
        status = rt.status()
        assert status.s3.attenuation.active is True
        task = status.s1.units["t1"].task
        assert task is not None
        assert task.state == "running"


async def test_two_controllers_fighting_over_an_actuator_are_damped_by_s2(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @unit()
    async def heater(ctx: UnitContext) -> None:
        while True:
            await ctx.command("valve", "set", 20.0)
            await trio.sleep(1.0)

    @unit()
    async def cooler(ctx: UnitContext) -> None:
        await trio.sleep(0.5)
        while True:
            await ctx.command("valve", "set", 25.0)
            await trio.sleep(1.0)

    cfg = config({"units": [{"name": "valve", "kind": "simulated-actuator"}]})
    async with running(cfg, {"heater": heater(), "cooler": cooler()}) as rt:
        await trio.sleep(8.2)
        valve = rt.units["valve"].unit
        t0 = rt.started_at
        history = [(t - t0, v) for t, v, _ in valve.history]  # type: ignore[attr-defined]
    oscillation = rt.s2.oscillations[0]
    assert oscillation.rule == "fight"
    assert oscillation.issuers == ("cooler", "heater")
    assert oscillation.at - t0 == pytest.approx(
        1.0
    )  # heater@0, cooler@0.5, heater@1.0: three alternating commands
    assert rt.patterns.counts["oscillation"] == 1
    before = [v for t, v in history if t < 1.0]
    after = [v for t, v in history if t > 4.0]
    assert max(before) - min(before) == 5.0
    # damping 0.7 moves the valve 30 % of each requested change: the swing shrinks ~6x
    assert max(after) - min(after) < 1.0
    assert rt.s2.is_damped("valve.set", trio.current_time())
    assert heard(rt, "pattern.oscillation")


async def test_a_crashing_unit_is_restarted_with_backoff_and_raises_pain_others_unaffected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    crashes: list[float] = []

    @unit(readings=[ReadingSpec("x")])
    async def crasher(ctx: UnitContext) -> None:
        ctx.emit("x", 1.0)
        await trio.sleep(1.0)
        crashes.append(trio.current_time() - t0)
        raise RuntimeError("sensor bus fault")

    t0 = trio.current_time()
    async with running(config({"units": SENSORS[:1]}), {"crasher": crasher()}) as rt:
        await trio.sleep(5.3)
        task = rt.supervisor.tasks["crasher"]
        t1 = rt.supervisor.tasks["t1"]
        t1_state, task_state = t1.state, task.state
        emitted = rt.units["t1"].emitted
    # crash at 1.0, restart +0.1 -> crash 2.1, +0.2 -> 3.3, +0.4 -> 4.7
    assert crashes == pytest.approx([1.0, 2.1, 3.3, 4.7])
    assert task.crashes == 4
    assert task_state == "restarting"
    assert "RuntimeError: sensor bus fault" in task.last_error
    pains = [a for a in rt.algedonic.alarms.values() if a.signal.source == "s1.crasher"]
    assert pains[0].raised_at - t0 == pytest.approx(1.0)
    assert pains[0].signal.intensity == 0.5
    assert t1.crashes == 0
    assert t1_state == "running"
    assert emitted == 6  # t = 0, 1, 2, 3, 4, 5: one reading a second throughout


async def test_each_crash_of_a_unit_is_logged_with_its_backoff_traceback_only_at_debug(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    @unit(readings=[ReadingSpec("x")])
    async def t1(ctx: UnitContext) -> None:
        await trio.sleep(1.0)
        raise RuntimeError("boom")

    logger = "vsm_edge.agent.supervisor"
    with caplog.at_level(logging.WARNING, logger=logger):
        async with running(config(), {"t1": t1()}):
            await trio.sleep(3.5)  # crashes at 1.0, 2.1, 3.3
    warnings = [r for r in caplog.records if r.name == logger]
    assert [r.getMessage() for r in warnings] == [
        "unit t1 crashed (RuntimeError: boom); restart #1 in 0.10 s",
        "unit t1 crashed (RuntimeError: boom); restart #2 in 0.20 s",
        "unit t1 crashed (RuntimeError: boom); restart #3 in 0.40 s",
    ]
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in warnings)

    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=logger):
        async with running(config(), {"t1": t1()}):
            await trio.sleep(1.05)
    [warning, debug] = [r for r in caplog.records if r.name == logger]
    assert warning.levelno == logging.WARNING
    assert debug.levelno == logging.DEBUG
    assert debug.exc_info is not None
    assert 'raise RuntimeError("boom")' in caplog.text  # the traceback, with the source line


async def test_a_policy_signed_by_a_wrong_key_is_rejected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admin = nacl.signing.SigningKey.generate()
    intruder = nacl.signing.SigningKey.generate()
    cfg = config(
        {
            "s5": {"admin_keys": [bytes(admin.verify_key).hex()]},
            "units": [{"name": "valve", "kind": "simulated-actuator"}],
        }
    )
    policy = Policy(version=1, mesh="test", denied_commands=("valve.*",))
    async with running(cfg) as rt:
        with pytest.raises(PolicyError, match="not an admin key"):
            rt.accept_policy(sign_policy(policy, intruder))
        assert rt.s5.policy.version == 0
        assert rt.submit_command("valve", "set", 1.0).accepted
        await trio.sleep(0.1)
        rt.accept_policy(sign_policy(policy, admin))
        assert rt.s5.policy.version == 1
        refused = rt.submit_command("valve", "set", 2.0)
        # a replay of the same version is refused too
        with pytest.raises(PolicyError, match="not newer"):
            rt.accept_policy(sign_policy(policy, admin))
        status = rt.status()
    assert not refused.accepted
    assert refused.reason == "s5: policy v1 denies valve.set"
    assert status.s5.policy.rejected == 2
    assert status.s5.policy.signer == bytes(admin.verify_key).hex()


async def test_a_command_over_budget_is_refused_with_a_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config(
        {
            # 3 tokens: the actuator's first state reading takes one, two commands the rest
            "s3": {"budgets": {"s1": {"capacity": 3, "refill_per_s": 1}}},
            "units": [{"name": "valve", "kind": "simulated-actuator"}],
        }
    )
    async with running(cfg) as rt:
        first = rt.submit_command("valve", "set", 1.0)
        second = rt.submit_command("valve", "set", 1.0)
        third = rt.submit_command("valve", "set", 1.0)
        await trio.sleep(1.0)
        later = rt.submit_command("valve", "set", 1.0)
        unknown = rt.submit_command("valve", "open", True)
    assert first.accepted
    assert second.accepted
    assert not third.accepted
    assert third.reason.startswith("s3: budget s1 exhausted (0.0 of 3 tokens, refill 1/s")
    assert later.accepted
    assert unknown.reason == "s1: no unit 'valve' with command 'open'"


async def test_critical_alarm_unacknowledged_escalates_after_30s_and_is_sent_to_the_mesh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(config()) as rt:
        alarm = rt.raise_signal("operator.estop", 1.0, "emergency stop")
        assert alarm is not None
        assert alarm.critical
        out = [rt.algedonic_port.receive_nowait()]
        # critical signals bypass the reorder window: S5 hears them at once
        await trio.sleep(1e-6)
        t0 = rt.started_at
        assert heard(rt, "operator.estop") == [t0]
        acked = rt.raise_signal("operator.other", 0.97)
        assert acked is not None
        await trio.sleep(5)
        rt.ack_alarm(acked.signal.id)
        await trio.sleep(30 - (trio.current_time() - t0) - 0.001)
        assert rt.algedonic.escalations == 0
        await trio.sleep(0.002)
        assert rt.algedonic.escalations == 1
        out += [rt.algedonic_port.receive_nowait(), rt.algedonic_port.receive_nowait()]
        with pytest.raises(trio.WouldBlock):
            rt.algedonic_port.receive_nowait()
    assert [s.source for s in out] == ["operator.estop", "operator.other", "operator.estop"]
    assert out[2].escalated
    assert out[2].intensity == 1.0
    assert alarm.escalated_at == pytest.approx(t0 + 30.0)


async def test_sustained_pain_enters_safe_mode_and_restricts_commands(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config({"units": [{"name": "valve", "kind": "simulated-actuator"}]})
    async with running(cfg) as rt:
        alarm = rt.raise_signal("operator.estop", 1.0, "e-stop held")
        assert alarm is not None
        await trio.sleep(9.9)
        assert not rt.s5.safe_mode
        await trio.sleep(0.6)
        assert rt.s5.safe_mode
        refused = rt.submit_command("valve", "set", 3.0)
        assert refused.reason == "s5: safe mode: valve.set is not a safe-mode command"
        assert rt.s3.buckets["s1"].scale == 0.5
        rt.ack_alarm(alarm.signal.id)
        await trio.sleep(31)
        assert not rt.s5.safe_mode
    assert rt.s5.safe_mode_entries == 1


async def test_algedonic_storm_folds_signals_but_never_a_critical_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(config()) as rt:
        for i in range(40):
            rt.raise_signal(f"s1.noisy{i}", 0.5, "flapping")
        critical = rt.raise_signal("s1.boiler", 0.99, "overpressure")
        await trio.sleep(1e-6)
        boiler_heard = heard(rt, "s1.boiler")
        await trio.sleep(0.1)
        storm = rt.algedonic.storm
    assert storm is not None
    assert storm.signal.source == "algedonic.storm"
    assert storm.folded == 20  # signals 21..40 folded into the one storm alarm
    assert rt.algedonic.delivered == 20 + 1 + 1  # 20 before the storm, the storm, the critical
    assert critical is not None
    assert critical.critical
    assert rt.patterns.counts["algedonic-storm"] == 1
    assert boiler_heard == [rt.started_at]


async def test_variety_overflow_from_a_noisy_flood_is_detected_with_early_warning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = config(
        {
            "units": [
                {
                    "name": "flood",
                    "kind": "simulated-sensor",
                    "options": {
                        "flood_rate": 200,
                        "flood_after_s": 2.0,
                        "flood_priority": "normal",
                    },
                }
            ]
        }
    )
    async with running(cfg) as rt:
        await trio.sleep(1.5)
        assert rt.patterns.counts["variety-overflow"] == 0
        await trio.sleep(3.0)
        ratio = rt.s4.ratio(trio.current_time())
    assert ratio > 1.5
    assert rt.patterns.counts["variety-overflow"] == 1
    assert heard(rt, "pattern.variety-overflow")


async def test_metasystemic_cascade_s1_s2_s3_s4_within_60s(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @unit(readings=[ReadingSpec("x")])
    async def crasher(ctx: UnitContext) -> None:
        await trio.sleep(1.0)
        raise RuntimeError("dead")

    @unit()
    async def fighter_a(ctx: UnitContext) -> None:
        await trio.sleep(5.0)
        while True:
            await ctx.command("valve", "set", 1.0)
            await trio.sleep(1.0)

    @unit()
    async def fighter_b(ctx: UnitContext) -> None:
        await trio.sleep(5.5)
        while True:
            await ctx.command("valve", "set", 9.0)
            await trio.sleep(1.0)

    cfg = config(
        {
            "runtime": {"restart_initial_s": 100, "restart_max_s": 100},
            "s3": {"budgets": {"s1": {"capacity": 100}}},
            "units": [
                {"name": "valve", "kind": "simulated-actuator"},
                {
                    "name": "flood",
                    "kind": "simulated-sensor",
                    "options": {
                        "flood_rate": 2000,
                        "flood_after_s": 10.0,
                        "flood_priority": "normal",
                    },
                },
            ],
        }
    )
    units = {"crasher": crasher(), "fighter_a": fighter_a(), "fighter_b": fighter_b()}
    async with running(cfg, units) as rt:
        await trio.sleep(20)
    order = [
        (p.name, round(p.at - rt.started_at, 6))
        for p in rt.patterns.recent
        if p.name in ("oscillation", "variety-overflow", "cascade")
    ]
    # S1 fails at 1 s (crash), S2 at 6 s (oscillation), S3 at ~10.05 s (S1 budget
    # exhausted by the flood that starts at 10 s), S4 at 11 s (variety overflow)
    assert order[:3] == [("oscillation", 6.0), ("variety-overflow", 11.0), ("cascade", 11.0)]
    cascade = [p for p in rt.patterns.recent if p.name == "cascade"]
    assert len(cascade) == 1
    assert (
        "s1: crasher crashed -> s2: oscillation on valve.set -> s3: S1 budget exhausted"
        in cascade[0].detail
    )
    assert "s4: variety overflow" in cascade[0].detail


async def test_clock_skew_of_a_peer_is_measured_from_live_stamps_and_far_future_stamps_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(config()) as rt:
        rt.peer_clock("n2", wall_clock() + 10_000, wall_clock())
        assert rt.patterns.counts["clock-skew"] == 0
        rt.peer_clock("n2", wall_clock() + 31_000, wall_clock())
        assert rt.patterns.counts["clock-skew"] == 1
        far = Signal(
            "n3", "s1.x", 0.5, "pain", rt.hlc.now().__class__(wall_clock() + 70_000, 0, "n3")
        )
        assert rt.inject_remote_signal(far) is None  # refused by the HLC
        rt.peer_clock("n3", far.hlc.wall, wall_clock())  # the envelope that carried it
        assert rt.patterns.counts["clock-skew"] == 2
        rt.update_peer(PeerReport("n4", "lab", wall_clock(), 1.0, False, 0.5, ()))
        peers = rt.status().peers
    assert [p.node for p in peers] == ["n4"]
    assert [p.subject for p in rt.patterns.recent if p.name == "clock-skew"] == ["n2", "n3"]


async def test_an_old_report_or_signal_of_a_quiet_peer_is_stale_not_skew(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # what a node reads back after a restart: a quiet peer's report and its
    # retained alarm, both written 208.3 s ago
    async with running(config({"s4": {"peer_stale_s": 30}})) as rt:
        old = wall_clock() - 208_300
        rt.update_peer(PeerReport("n1", "lab", old, 1.0, False, 0.5, ()))
        sig = Signal("n1", "s1.x", 0.5, "pain", rt.hlc.now().__class__(old, 0, "n1"))
        rt.inject_remote_signal(sig)
        await trio.sleep(31)
        peers = rt.status().peers
    assert rt.patterns.counts["clock-skew"] == 0
    assert [(p.node, p.stale) for p in peers] == [("n1", True)]


async def test_the_algedonic_mesh_port_carries_an_alarm_to_a_peer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a = Runtime(config({"node": {"id": "a"}}), wall_clock=wall_clock, write_state=False)
    b = Runtime(config({"node": {"id": "b"}}), wall_clock=wall_clock, write_state=False)

    async def link(src: Runtime, dst: Runtime) -> None:
        # the in-memory stand-in for MQTT: encode, carry, decode, inject
        async for sig in src.algedonic_port:
            await trio.sleep(0.003)
            dst.inject_remote_signal(Signal.decode(sig.encode()))

    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        await nursery.start(b.run)
        nursery.start_soon(link, a, b)
        nursery.start_soon(link, b, a)
        await trio.sleep(1)
        alarm = a.raise_signal("operator.estop", 1.0, "stop")
        assert alarm is not None
        await trio.sleep(0.5)
        seen = b.status().algedonic.alarms
        b_out = b.algedonic_port.statistics()
        nursery.cancel_scope.cancel()
    assert [(x.id, x.node, x.remote) for x in seen] == [(alarm.signal.id, "a", True)]
    assert [t - b.started_at for t, s in b.s5_heard if s.id == alarm.signal.id] == [
        pytest.approx(1.003)  # carried in 3 ms; critical, so no reorder window at B
    ]
    assert b_out.sent == 0  # remote signals are not re-broadcast


class ProbedValve:
    """A unit class with a health probe that fails after a while (S3* audits)."""

    readings = (ReadingSpec("pos", period_s=1.0),)
    commands = ()

    def __init__(self, name: str = "", options: object = None) -> None:
        self.healthy = True

    async def run(self, ctx: UnitContext) -> None:
        while True:
            ctx.emit("pos", 1.0)
            await trio.sleep(1.0)

    async def probe(self) -> bool:
        return self.healthy


async def test_s3_star_audit_probes_units_and_raises_pain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    valve = ProbedValve()
    async with running(config(), {"valve": valve}) as rt:
        await trio.sleep(10.5)
        assert not [
            a for a in rt.algedonic.alarms.values() if a.signal.source.startswith("s3.audit")
        ]
        valve.healthy = False
        await trio.sleep(10)
    [alarm] = [a for a in rt.algedonic.alarms.values() if a.signal.source == "s3.audit.valve"]
    assert alarm.signal.reason == "health probe failed"
    assert alarm.raised_at - rt.started_at == pytest.approx(20.0)  # the second audit, at 20 s


async def test_breaker_failures_open_it_with_pain(autojump_clock: trio.testing.MockClock) -> None:
    async with running(config({"s3": {"breaker_failures": 3}})) as rt:
        assert rt.breaker("broker").allow(trio.current_time())
        opened = [rt.breaker_failure("broker") for _ in range(3)]
        assert not rt.breaker("broker").allow(trio.current_time())
        status = rt.status()
    assert opened == [False, False, True]
    assert status.s3.breakers["broker"].state == "open"
    assert any(a.signal.source == "s3.breaker.broker" for a in rt.algedonic.alarms.values())


async def test_leases_through_the_runtime_and_delta_callbacks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from vsm_edge.agent import LeaseHeldError, LeaseMap

    deltas: list[LeaseMap] = []
    async with running(config()) as rt:
        rt.on_lease_delta.append(deltas.append)
        rt.acquire_lease("pump", ttl_s=5)
        assert rt.lease_holder("pump") == "n1"
        # a peer's lease arrives by gossip and is newer: it wins
        peer = LeaseMap().acquire(
            "door", "n2", rt.hlc.now().__class__(wall_clock() + 1, 0, "n2"), 60_000
        )
        rt.merge_leases(peer)
        with pytest.raises(LeaseHeldError):
            rt.acquire_lease("door")
        await trio.sleep(5.001)
        assert rt.lease_holder("pump") is None
        status = rt.status()
    assert [list(d.entries) for d in deltas] == [["pump"]]
    assert status.s2.leases["door"].holder == "n2"


async def test_flush_hooks_run_at_stop_with_the_status(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flushed: list[VsmStatus] = []

    async def hook(status: VsmStatus) -> None:
        await trio.sleep(1.0)
        flushed.append(status)

    async def stuck(status: VsmStatus) -> None:
        await trio.sleep_forever()

    rt = Runtime(config(), wall_clock=wall_clock, write_state=False)
    rt.add_flush_hook(hook)
    rt.add_flush_hook(stuck)
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await trio.sleep(2)
        t0 = trio.current_time()
        rt.stop()
    assert [s.node.id for s in flushed] == ["n1"]
    # the stuck hook is cut off by the shutdown timeout: 5 s after stop, not later
    assert trio.current_time() - t0 == pytest.approx(5.0)


async def test_units_from_module_attribute_entry_point_and_description(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.metadata

    from vsm_edge.agent import unit_from_description

    class EP:
        name = "probed-valve"

        def load(self) -> object:
            return ProbedValve

    real = importlib.metadata.entry_points

    def fake(**kw: object) -> object:
        if kw.get("group") == "vsm_edge.units":
            return [EP()]
        return real(**kw)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)

    async def bridge_loop(ctx: UnitContext) -> None:
        ctx.emit("rpm", 1200.0)
        async for command in ctx.commands():
            ctx.emit("rpm", float(command.value))  # type: ignore[arg-type]

    fan = unit_from_description(
        {
            "readings": [{"name": "rpm", "unit": "1/min"}],
            "commands": [{"name": "speed", "minimum": 0, "maximum": 3000}],
        },
        bridge_loop,
    )
    cfg = config(
        {
            "units": [
                {"name": "v1", "kind": "probed-valve"},
                {"name": "v2", "kind": "test_vsm_scenarios:ProbedValve"},
            ]
        }
    )
    async with running(cfg, {"fan": fan}) as rt:
        await trio.sleep(0.4)
        result = rt.submit_command("fan", "speed", 2500)
        too_fast = rt.submit_command("fan", "speed", 5000)
        await trio.sleep(0.4)
        emitted = {n: r.emitted for n, r in rt.units.items()}
    assert result.accepted
    assert too_fast.reason == "s1: fan.speed above maximum 3000"
    assert emitted == {"v1": 1, "v2": 1, "fan": 2}
