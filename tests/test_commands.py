"""Remote commands without I/O: the decoders, S5's grants, the target's rules.

The decoders (docs/protocol.md §6) parse or refuse with CommandError, never
anything else (fuzzed); the grants of the admin-signed policy decide who may
command what; the target (``mesh.commands.Commands``) refuses unauthorized and
stale commands, runs the rest once however often they are redelivered, and
answers a redelivery with the first outcome. The wire and real processes are
in tests/test_remote_commands.py.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from vsm_edge.agent._errors import PolicyError
from vsm_edge.agent.mesh.commands import (
    RECENT_IDS,
    CommandError,
    CommandOutcome,
    CommandRequest,
    Commands,
    decode_command,
    decode_outcome,
)
from vsm_edge.agent.vsm.s5 import (
    CommandGrant,
    Identity,
    Policy,
    PolicyEngine,
    sign_policy,
    verify_policy,
)
from vsm_edge.agent.vsm.settings import S5Config
from vsm_edge.agent.vsm.unit import CommandResult
from vsm_edge.sync import TransportError, cbor_dumps, cbor_loads

ID = bytes(range(16))
ALICE = b"\xaa" * 16  # kids
BOB = b"\xbb" * 16
NOW = 1_700_000_000_000


def command_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": ID, "node": "n1", "unit": "valve", "cmd": "set", "value": 3.5, "exp": NOW + 5000,
    }  # fmt: skip
    body.update(changes)
    return body


def outcome_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": ID, "node": "n1", "status": "done", "why": "", "at": NOW}
    body.update(changes)
    return body


# -- the decoders ------------------------------------------------------------------------


def test_a_valid_command_decodes_into_checked_fields_and_encodes_back() -> None:
    request = decode_command(cbor_loads(cbor_dumps(command_body())))
    assert request == CommandRequest(ID, "n1", "valve", "set", 3.5, NOW + 5000)
    assert decode_command(request.to_cbor()) == request


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"id": ID[:15]}, "id"),
        ({"id": ID + b"x"}, "id"),
        ({"id": ID.hex()}, "id"),
        ({"node": ""}, "node"),
        ({"node": "n" * 65}, "node"),
        ({"node": "n1/x"}, "node"),
        ({"unit": "a+b"}, "unit"),
        ({"cmd": 7}, "cmd"),
        ({"value": math.nan}, "value"),
        ({"value": math.inf}, "value"),
        ({"value": 1 << 63}, "value"),
        ({"value": "x" * 257}, "value"),
        ({"value": [1]}, "value"),
        ({"value": {"a": 1}}, "value"),
        ({"value": b"\x00"}, "value"),
        ({"exp": -1}, "exp"),
        ({"exp": 1 << 48}, "exp"),
        ({"exp": 1.5}, "exp"),
        ({"exp": True}, "exp"),
        ({"extra": 1}, "map of exactly"),
    ],
)
def test_the_command_decoder_refuses_each_field_past_its_limit(
    change: dict[str, Any], why: str
) -> None:
    with pytest.raises(CommandError, match=why):
        decode_command(command_body(**change))


def test_the_command_decoder_takes_each_field_at_its_limit() -> None:
    at_limits = command_body(node="n" * 64, unit="u" * 64, value="x" * 256, exp=(1 << 48) - 1)
    assert decode_command(at_limits).value == "x" * 256
    for value in (None, True, False, -(1 << 63), (1 << 63) - 1, -0.0, 1e308, ""):
        assert decode_command(command_body(value=value)).value == value


def test_a_command_with_a_missing_key_is_refused() -> None:
    for key in command_body():
        body = command_body()
        del body[key]
        with pytest.raises(CommandError):
            decode_command(body)


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"status": "timed-out"}, "status"),  # the issuer's verdict never travels
        ({"status": "ok"}, "status"),
        ({"why": "x" * 513}, "why"),
        ({"why": None}, "why"),
        ({"at": -5}, "at"),
        ({"node": "a b"}, "node"),
        ({"id": b""}, "id"),
    ],
)
def test_the_outcome_decoder_refuses_each_field_past_its_limit(
    change: dict[str, Any], why: str
) -> None:
    with pytest.raises(CommandError, match=why):
        decode_outcome(outcome_body(**change))


def test_a_valid_outcome_decodes_and_says_whether_it_succeeded() -> None:
    for status, ok in (("done", True), ("accepted", True), ("refused", False), ("failed", False)):
        outcome = decode_outcome(outcome_body(status=status, why="x" * 512))
        assert outcome.ok is ok
        assert decode_outcome(outcome.to_cbor()) == outcome


_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=300),
    st.binary(max_size=20),
)  # fmt: skip
_items = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.one_of(_items, st.fixed_dictionaries(dict.fromkeys(command_body(), _items))))
def test_fuzz_the_command_decoder_parses_or_refuses_with_command_error(body: Any) -> None:
    try:
        request = decode_command(body)
    except CommandError:
        return
    assert decode_command(request.to_cbor()) == request


@given(st.one_of(_items, st.fixed_dictionaries(dict.fromkeys(outcome_body(), _items))))
def test_fuzz_the_outcome_decoder_parses_or_refuses_with_command_error(body: Any) -> None:
    try:
        outcome = decode_outcome(body)
    except CommandError:
        return
    assert decode_outcome(outcome.to_cbor()) == outcome


@given(
    st.fixed_dictionaries(
        {
            "id": st.binary(min_size=15, max_size=17),
            "node": st.text(max_size=66),
            "unit": st.text(max_size=66),
            "cmd": st.text(max_size=3),
            "value": _scalars,
            "exp": st.integers(min_value=-2, max_value=1 << 49),
        }
    )
)
def test_fuzz_commands_near_the_limits(body: dict[str, Any]) -> None:
    with contextlib.suppress(CommandError):
        decode_command(body)


# -- grants in the admin-signed policy --------------------------------------------------


def engine(*grants: CommandGrant) -> PolicyEngine:
    admin = nacl.signing.SigningKey.generate()
    s5 = PolicyEngine(S5Config(admin_keys=(bytes(admin.verify_key),)), Identity("n1", "m", "z"))
    if grants:
        s5.accept_policy(sign_policy(Policy(version=1, grants=grants), admin))
    return s5


def test_without_a_grant_every_remote_command_is_refused_not_authorized() -> None:
    s5 = engine()
    assert s5.authorize_remote(ALICE, "n1", "valve.set") == "not authorized"
    assert s5.refusals == 1


def test_a_grant_allows_its_key_on_its_nodes_and_commands_only() -> None:
    s5 = engine(CommandGrant(ALICE, ("n1", "n3"), ("valve.*",)))
    assert s5.authorize_remote(ALICE, "n1", "valve.set") is None
    assert s5.authorize_remote(ALICE, "n1", "valve.open") is None
    assert s5.authorize_remote(BOB, "n1", "valve.set") == "not authorized"
    assert s5.authorize_remote(ALICE, "n1", "pump.set") == "not authorized"
    assert s5.authorize_remote(ALICE, "n2", "valve.set") == "not authorized"


def test_grants_survive_signing_and_verification() -> None:
    admin = nacl.signing.SigningKey.generate()
    grants = (CommandGrant(ALICE, ("n*",), ("*",)), CommandGrant(BOB, ("n2",), ("a.b", "c.*")))
    policy = verify_policy(sign_policy(Policy(version=3, grants=grants), admin),
                           [bytes(admin.verify_key)])  # fmt: skip
    assert policy.grants == grants


def test_a_policy_without_grants_encodes_as_before() -> None:
    assert "cmd" not in Policy(version=1).to_cbor()
    assert Policy.from_cbor(Policy(version=1).to_cbor()).grants == ()


@pytest.mark.parametrize(
    "cmd",
    [
        [],  # present, so not empty
        "all",
        [{"kid": ALICE, "nodes": ["*"]}],
        [{"kid": ALICE[:8], "nodes": ["*"], "commands": ["*"]}],
        [{"kid": ALICE, "nodes": [], "commands": ["*"]}],
        [{"kid": ALICE, "nodes": ["*"], "commands": ["x" * 129]}],
        [{"kid": ALICE, "nodes": ["*"] * 33, "commands": ["*"]}],
        [{"kid": ALICE, "nodes": ["*"], "commands": [1]}],
        [{"kid": ALICE, "nodes": ["*"], "commands": ["*"]}] * 257,
    ],
)
def test_a_malformed_grant_makes_the_policy_refused(cmd: Any) -> None:
    obj = Policy(version=1).to_cbor() | {"cmd": cmd}
    with pytest.raises(PolicyError):
        Policy.from_cbor(obj)


# -- the target's rules ------------------------------------------------------------------


@dataclass
class FakeRuntime:
    """What Commands reads of the runtime: S5 and execute_command (counted)."""

    s5: PolicyEngine
    result: CommandResult = field(default_factory=lambda: CommandResult(True))
    executed: list[tuple[str, str, Any, str]] = field(default_factory=list)
    confirms: bool = True
    gate: trio.Event | None = None

    async def execute_command(
        self, unit: str, cmd: str, value: Any, *, issuer: str
    ) -> CommandResult:
        self.executed.append((unit, cmd, value, issuer))
        if self.gate is not None:
            await self.gate.wait()
        return self.result

    def confirms_commands(self, unit: str) -> bool:
        return self.confirms


class Wire:
    """What Commands published: (channel, body, to)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any], str]] = []
        self.fail = False

    async def publish(self, channel: str, body: dict[str, Any], to: str) -> None:
        await trio.lowlevel.checkpoint()
        if self.fail:
            raise TransportError("broker away")
        self.sent.append((channel, body, to))

    def outcomes(self) -> list[tuple[str, CommandOutcome]]:
        return [(to, decode_outcome(b)) for c, b, to in self.sent if c == "cmdr"]


def target(runtime: FakeRuntime, wire: Wire, now: list[int]) -> Commands:
    return Commands("n1", runtime, wire.publish, wall_clock=lambda: now[0])  # type: ignore[arg-type]


async def test_an_authorized_fresh_command_runs_once_and_is_answered_done() -> None:
    runtime, wire, now = FakeRuntime(engine(CommandGrant(ALICE, ("n1",), ("*",)))), Wire(), [NOW]
    commands = target(runtime, wire, now)
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        assert commands.on_command("n2", ALICE, command_body()) is None
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert runtime.executed == [("valve", "set", 3.5, "mesh:n2")]
    [(to, outcome)] = wire.outcomes()
    assert (to, outcome.id, outcome.node) == ("n2", ID, "n1")
    assert (outcome.status, outcome.why) == ("done", "")
    status = commands.status()
    assert status.executed == {"done": 1}
    assert [(r.issuer, r.target, r.status) for r in status.recent] == [("n2", "valve.set", "done")]


async def test_redeliveries_get_the_first_outcome_and_never_run_again() -> None:
    runtime, wire, now = FakeRuntime(engine(CommandGrant(ALICE, ("n1",), ("*",)))), Wire(), [NOW]
    runtime.gate = trio.Event()
    commands = target(runtime, wire, now)
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        commands.on_command("n2", ALICE, command_body())
        await trio.testing.wait_all_tasks_blocked()
        commands.on_command("n2", ALICE, command_body())  # while it runs
        runtime.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        now[0] += 60_000  # past exp: a redelivery is answered, not refused stale
        commands.on_command("n2", ALICE, command_body())
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(runtime.executed) == 1
    outcomes = wire.outcomes()
    assert len(outcomes) == 3
    assert {o for _, o in outcomes} == {outcomes[0][1]}  # the same outcome, word for word
    assert commands.status().duplicates == 2


async def test_an_unauthorized_command_is_refused_and_never_runs() -> None:
    grant = CommandGrant(ALICE, ("n1",), ("pump.*",))
    runtime, wire, now = FakeRuntime(engine(grant)), Wire(), [NOW]
    commands = target(runtime, wire, now)
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        commands.on_command("n3", BOB, command_body())
        commands.on_command("n2", ALICE, command_body(id=b"\x01" * 16))  # valve: not granted
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert runtime.executed == []
    assert sorted((to, o.status, o.why) for to, o in wire.outcomes()) == [
        ("n2", "refused", "not authorized"),
        ("n3", "refused", "not authorized"),
    ]


async def test_a_stale_command_is_refused_stale_and_never_runs() -> None:
    runtime, wire, now = FakeRuntime(engine(CommandGrant(ALICE, ("*",), ("*",)))), Wire(), [NOW]
    commands = target(runtime, wire, now)
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        now[0] = NOW + 5001  # one ms past exp, on the target's clock
        commands.on_command("n2", ALICE, command_body())
        commands.on_command("n2", ALICE, command_body(id=b"\x02" * 16, exp=NOW + 5001))  # at exp
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert runtime.executed == [("valve", "set", 3.5, "mesh:n2")]
    assert sorted((o.id, o.status, o.why) for _, o in wire.outcomes()) == [
        (ID, "refused", "stale"),
        (b"\x02" * 16, "done", ""),
    ]


async def test_refusals_before_any_outcome_are_counted_and_nothing_runs() -> None:
    runtime, wire, now = FakeRuntime(engine(CommandGrant(ALICE, ("*",), ("*",)))), Wire(), [NOW]
    commands = target(runtime, wire, now)
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        assert commands.on_command("n2", ALICE, {"id": 1}) == "cmd:malformed"
        assert commands.on_command("n2", ALICE, command_body(node="n9")) == "cmd:wrong-node"
        assert commands.on_outcome("n2", outcome_body()) == "cmdr:unexpected"
        assert commands.on_outcome("n2", [1, 2]) == "cmdr:malformed"
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert runtime.executed == []
    assert wire.sent == []
    assert commands.status().refused == {
        "cmd:malformed": 1, "cmd:wrong-node": 1, "cmdr:unexpected": 1, "cmdr:malformed": 1,
    }  # fmt: skip


async def test_outcomes_map_the_runtime_result() -> None:
    grant = CommandGrant(ALICE, ("*",), ("*",))
    cases = [
        (CommandResult(True), True, "done", ""),
        (CommandResult(True), False, "accepted", ""),
        (CommandResult(False, "s1: valve.set above maximum"), True, "refused",
         "s1: valve.set above maximum"),
        (CommandResult(False, "s1: valve: jammed", command=object()), True, "failed",  # type: ignore[arg-type]
         "s1: valve: jammed"),
    ]  # fmt: skip
    for i, (result, confirms, status, why) in enumerate(cases):
        runtime, wire = FakeRuntime(engine(grant), result=result, confirms=confirms), Wire()
        commands = target(runtime, wire, [NOW])
        async with trio.open_nursery() as nursery:
            await nursery.start(commands.run)
            commands.on_command("n2", ALICE, command_body(id=bytes([i]) * 16))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        [(_, outcome)] = wire.outcomes()
        assert (outcome.status, outcome.why) == (status, why)


async def test_the_memory_of_ids_is_bounded() -> None:
    runtime, wire = FakeRuntime(engine(CommandGrant(ALICE, ("*",), ("*",)))), Wire()
    commands = target(runtime, wire, [NOW])
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        for i in range(RECENT_IDS + 1):
            commands.on_command("n2", ALICE, command_body(id=i.to_bytes(16, "big")))
            await trio.testing.wait_all_tasks_blocked()
        commands.on_command("n2", ALICE, command_body(id=(RECENT_IDS).to_bytes(16, "big")))
        commands.on_command("n2", ALICE, command_body(id=(0).to_bytes(16, "big")))  # forgotten
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(commands._seen) == RECENT_IDS
    assert len(runtime.executed) == RECENT_IDS + 2


# -- the issuer --------------------------------------------------------------------------


async def test_the_issuer_gets_the_targets_outcome_and_only_from_the_target() -> None:
    runtime, wire = FakeRuntime(engine()), Wire()
    issuer = Commands("n2", runtime, wire.publish, wall_clock=lambda: NOW,  # type: ignore[arg-type]
                      randbytes=lambda n: ID[:n])  # fmt: skip
    got: list[CommandOutcome] = []
    async with trio.open_nursery() as nursery:

        async def issue() -> None:
            got.append(await issuer.issue("n1", "valve", "set", 2, timeout_s=3))

        nursery.start_soon(issue)
        await trio.testing.wait_all_tasks_blocked()
        [(channel, body, to)] = wire.sent
        assert (channel, to) == ("cmd", "n1")
        assert decode_command(body) == CommandRequest(ID, "n1", "valve", "set", 2, NOW + 3000)
        assert issuer.on_outcome("n3", outcome_body(node="n3")) == "cmdr:wrong-node"
        assert issuer.on_outcome("n1", outcome_body(status="refused", why="stale")) is None
    assert [(o.status, o.why) for o in got] == [("refused", "stale")]
    assert issuer.status().issued == {"refused": 1}


async def test_without_an_outcome_the_issuer_reports_timed_out_after_its_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    runtime, wire = FakeRuntime(engine()), Wire()
    issuer = Commands("n2", runtime, wire.publish, wall_clock=lambda: NOW)  # type: ignore[arg-type]
    start = trio.current_time()
    outcome = await issuer.issue("n1", "valve", "set", 2, timeout_s=1.5)
    assert trio.current_time() - start == 1.5
    assert (outcome.status, outcome.why) == ("timed-out", "no outcome from n1 within 1.5 s")
    wire.fail = True
    outcome = await issuer.issue("n1", "valve", "set", 2, timeout_s=1.5)
    assert outcome.status == "failed"
    assert outcome.why.startswith("not sent")


async def test_a_command_to_the_issuing_node_runs_locally() -> None:
    runtime, wire = FakeRuntime(engine()), Wire()
    issuer = Commands("n1", runtime, wire.publish, wall_clock=lambda: NOW)  # type: ignore[arg-type]
    outcome = await issuer.issue("n1", "valve", "set", 2)
    assert outcome.status == "done"
    assert runtime.executed == [("valve", "set", 2, "operator")]
    assert wire.sent == []


async def test_the_issuer_refuses_bad_arguments() -> None:
    issuer = Commands("n1", FakeRuntime(engine()), Wire().publish, wall_clock=lambda: NOW)  # type: ignore[arg-type]
    for args, timeout in ((("n/1", "u", "c"), 5.0), (("n1", "u", "c"), 0.01),
                          (("n1", "u", "c"), 301.0)):  # fmt: skip
        with pytest.raises(CommandError):
            await issuer.issue(*args, timeout_s=timeout)
    with pytest.raises(CommandError, match="value"):
        await issuer.issue("n2", "u", "c", math.nan)


async def test_an_outcome_decided_before_the_service_runs_is_sent_once_it_does() -> None:
    runtime, wire = FakeRuntime(engine()), Wire()
    commands = target(runtime, wire, [NOW])
    assert commands.on_command("n2", BOB, command_body()) is None  # refused: no grant
    async with trio.open_nursery() as nursery:
        await nursery.start(commands.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert [(to, o.why) for to, o in wire.outcomes()] == [("n2", "not authorized")]
