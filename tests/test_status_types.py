"""The status document stays what it was: the same keys and values, field by field.

``tests/vectors/status-*.json`` were captured from the code before the status
was typed (see tests/support/status_scenario.py); ``status --json``, ``GET
/status`` and ``demo --json`` carry this document, so it must not drift.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from support.status_scenario import (
    AGENT_VECTOR,
    VECTOR,
    StandInDiscovery,
    agent_document,
    busy_guard,
    capture,
    discovery_section,
    live_agent_status,
)
from support.vsm import config, running, wall_clock

from vsm_edge.agent import ChannelStatistics, Runtime, StatusError
from vsm_edge.agent.mesh.status import (
    BrokerStatus,
    DiscoveryCounters,
    DiscoveryStatus,
    GatewayStatus,
    NodeStatus,
    ReplicationStatus,
    StoreStatus,
)
from vsm_edge.agent.vsm.status import ChannelStatus, RawSection, SectionError, VsmStatus
from vsm_edge.sync import DiscoveryStatistics, TransportState, TransportStatistics


def differences(actual: Any, expected: Any, path: str = "$") -> list[str]:
    """Every path where ``actual`` and ``expected`` differ (a JSON type counts: 1 is not 1.0)."""
    if type(actual) is not type(expected):
        return [f"{path}: {actual!r} ({type(actual).__name__}), expected {expected!r}"]
    if isinstance(expected, dict):
        out = [f"{path}.{k}: missing" for k in expected if k not in actual]
        out += [f"{path}.{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += differences(actual[k], expected[k], f"{path}.{k}")
        return out
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return [f"{path}: {len(actual)} items, expected {len(expected)}"]
        return [
            d for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for d in differences(a, e, f"{path}[{i}]")
        ]  # fmt: skip
    return [] if actual == expected else [f"{path}: {actual!r}, expected {expected!r}"]


def as_json(value: Any) -> Any:
    doc = value if isinstance(value, dict) else value.to_json()
    return json.loads(json.dumps(doc))


def test_differences_names_every_changed_field() -> None:
    before = {"a": 1, "b": [1.0, {"c": None}], "d": True}
    after = {"a": 1.0, "b": [1.0, {"c": 0}], "e": True}
    assert differences(after, before) == [
        "$.d: missing",
        "$.e: unexpected",
        "$.a: 1.0 (float), expected 1",
        "$.b[1].c: 0 (int), expected None",
    ]
    assert differences(before, before) == []


def test_the_vsm_status_of_a_busy_runtime_is_todays_field_by_field() -> None:
    expected = json.loads(VECTOR.read_text())
    assert differences(capture(), expected) == []


async def test_the_gateway_section_is_todays_field_by_field(tmp_path: Path) -> None:
    expected = json.loads(AGENT_VECTOR.read_text())["gateway"]
    assert expected["zone_policy"] is not None
    assert expected["quarantine"]
    assert differences(as_json(busy_guard(tmp_path).status()), expected) == []


def test_the_discovery_section_is_todays_field_by_field() -> None:
    expected = json.loads(AGENT_VECTOR.read_text())["discovery"]
    assert differences(as_json(discovery_section(StandInDiscovery())), expected) == []


# -- the types read what they write --------------------------------------------------------


def test_the_vsm_document_reads_back_to_the_same_json() -> None:
    expected = json.loads(VECTOR.read_text())
    status = VsmStatus.from_json(expected)
    assert status.s1.units["gadget"].confirmed is not None  # the optional parts are there
    assert status.s1.units["mute"].detail == {"error": "RuntimeError('status exploded')"}
    assert status.s1.units["crasher"].task is not None
    assert status.s1.units["crasher"].task.restarts == 5
    assert differences(status.to_json(), expected) == []


def test_a_live_agents_document_reads_back_to_the_same_json() -> None:
    expected = json.loads(AGENT_VECTOR.read_text())["agent"]
    status = NodeStatus.from_json(expected)
    assert isinstance(status.gateway, GatewayStatus)
    assert isinstance(status.replication, ReplicationStatus)
    assert isinstance(status.store, StoreStatus)
    assert isinstance(status.discovery, DiscoveryStatus)
    assert status.replication.online_peers == ("a",)
    assert differences(status.to_json(), expected) == []


def test_a_section_read_back_keeps_every_optional_shape() -> None:
    doc = agent_document()
    doc["replication"]["latency_ms"] = {"count": 0}  # no samples yet: only the count
    fault = {"cause": "disk-full", "message": "m", "operation": "commit", "since_ms": 1,
             "for_s": 0.5, "failures": 3, "last_message": "m2"}  # fmt: skip
    doc["replication"]["store_fault"] = fault
    doc["store"].update(ok=False, fault=fault)
    doc["gateway"]["zone_policy"] = {"version": 2, "epoch": 1, "filters": 1, "bits": 64}
    doc["gateway"]["quarantine"] = [{"peer": "z", "reason": "flood", "since_ms": 1, "until_ms": 9}]
    doc["gateway"]["proposals"] = {"z": ["a", "b"]}
    status = NodeStatus.from_json(doc)
    assert isinstance(status.replication, ReplicationStatus)
    assert status.replication.latency_ms.p50 is None
    assert differences(status.to_json(), doc) == []


async def test_a_live_agents_status_has_todays_shape(tmp_path: Path) -> None:
    # Timing-dependent values differ from run to run; the keys do not.
    expected = json.loads(AGENT_VECTOR.read_text())["agent"]
    doc = as_json(await live_agent_status(tmp_path))
    assert list(doc) == list(expected)
    for section in ("node", "s1", "s2", "s3", "s4", "s5", "algedonic", "gateway", "replication",
                    "store", "broker", "discovery"):  # fmt: skip
        assert list(doc[section]) == list(expected[section]), section
    for part in ("transport", "latency_ms"):
        assert list(doc["replication"][part]) == list(expected["replication"][part])
    assert doc["broker"]["state"] == "connected"
    assert list(doc["s1"]["units"]["temp"]) == list(expected["s1"]["units"]["temp"])
    assert list(doc["peers"][0]) == list(expected["peers"][0])
    assert list(doc["algedonic"]["alarms"][0]) == list(expected["algedonic"]["alarms"][0])
    assert differences(NodeStatus.from_json(doc).to_json(), doc) == []


def test_the_mirrored_statistics_have_the_fields_of_their_sources() -> None:
    # DiscoveryCounters copies sync's dataclass field for field (sync cannot use the
    # agent's record type; the bus's ChannelStatistics is itself the status record)
    assert ChannelStatus is ChannelStatistics
    ours, theirs = DiscoveryCounters, DiscoveryStatistics
    assert [f.name for f in fields(ours)] == [f.name for f in fields(theirs)]


def _transport(state: TransportState, **changes: Any) -> TransportStatistics:
    base = TransportStatistics(state=state, protocol=None, messages_in=0, bytes_in=0,
                               messages_out=0, bytes_out=0, messages_dropped=0, connects=0,
                               connect_failures=0, connections_lost=0, inflight=0,
                               subscriptions=0, last_error=None)  # fmt: skip
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    ("stats", "state"),
    [
        (_transport(TransportState.IDLE), "connecting"),
        (_transport(TransportState.CONNECTING, disconnected_since=90.0), "connecting"),
        (_transport(TransportState.CONNECTED, protocol="5", connects=1, connected_since=90.0),
         "connected"),
        (_transport(TransportState.BACKOFF, attempts=2, connect_failures=2, next_attempt_at=101.5,
                    disconnected_since=90.0, last_error="cannot connect"), "reconnecting"),
        (_transport(TransportState.CONNECTING, connects=1, connections_lost=1,
                    disconnected_since=90.0), "reconnecting"),
        (_transport(TransportState.BACKOFF, attempts=1, refused="Not authorized",
                    next_attempt_at=100.5, disconnected_since=90.0), "refused"),
        (_transport(TransportState.CLOSED, disconnected_since=90.0), "stopped"),
    ],
)  # fmt: skip
def test_the_broker_section_names_the_connections_state(
    stats: TransportStatistics, state: str
) -> None:
    broker = BrokerStatus.of(stats, "127.0.0.1:1883", now=100.0, wall_ms=1_000_000)
    assert broker.state == state
    since = stats.connected_since if state == "connected" else stats.disconnected_since
    assert broker.since_ms == (None if since is None else 1_000_000 - round((100 - since) * 1000))
    assert broker.next_attempt_in_s == (
        None if stats.next_attempt_at is None else stats.next_attempt_at - 100
    )
    assert broker.refused == stats.refused
    assert BrokerStatus.from_json(broker.to_json()) == broker


# -- refusals: one StatusError naming the place ----------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("s3"), "status: missing 's3'"),
        (lambda d: d["s3"]["budgets"]["s1"].update(tokens="many"),
         "status.s3.budgets.s1.tokens: expected a number, got a string"),
        (lambda d: d["node"].update(status_port=True),
         "status.node.status_port: expected an integer, got a boolean"),
        (lambda d: d["s1"]["units"]["temp"].pop("emitted"),
         "status.s1.units.temp: missing 'emitted'"),
        (lambda d: d["algedonic"]["alarms"].append(7),
         "status.algedonic.alarms[1]: expected an object, got a number"),
        (lambda d: d["peers"][0].update(alarms="x"),
         "status.peers[0].alarms: expected an array, got a string"),
        (lambda d: d["gateway"].update(zone_policy=[]),
         "status.gateway.zone_policy: expected an object, got an array"),
        (lambda d: d["replication"]["transport"].pop("state"),
         "status.replication.transport: missing 'state'"),
        (lambda d: d["s2"]["targets"].update(x={"applied": [], "episodes": 0,
                                                "damped_commands": 0, "suppressed": 0}),
         "status.s2.targets.x.applied: expected float | int | str | bool | null, got an array"),
    ],
)  # fmt: skip
def test_a_malformed_document_is_refused_naming_the_place(change: Any, message: str) -> None:
    doc = agent_document()
    change(doc)
    with pytest.raises(StatusError) as info:
        NodeStatus.from_json(doc)
    assert str(info.value) == message


@pytest.mark.parametrize("doc", [None, [], "status", 3])
def test_a_document_that_is_not_an_object_is_refused(doc: Any) -> None:
    with pytest.raises(StatusError, match=r"^status: expected an object"):
        NodeStatus.from_json(doc)


def test_unknown_keys_are_ignored_and_unknown_sections_kept() -> None:
    doc = agent_document()
    doc["s3"]["from_a_newer_agent"] = 1
    doc["plugin"] = {"anything": [1, 2]}
    status = NodeStatus.from_json(doc)
    assert status.vsm.sections["plugin"].to_json() == {"anything": [1, 2]}
    out = status.to_json()
    assert "from_a_newer_agent" not in out["s3"]
    assert out["plugin"] == {"anything": [1, 2]}


# -- sections ---------------------------------------------------------------------------------


async def test_a_broken_section_provider_gives_its_error_in_place(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken() -> GatewayStatus:
        raise RuntimeError("boom")

    async with running(config()) as rt:
        rt.set_status_section("gateway", broken)
        rt.set_status_section("plugin", lambda: RawSection({"x": 1}))
        status = NodeStatus(rt.status())
    assert status.gateway == SectionError("RuntimeError('boom')")
    assert status.replication is None
    doc = status.to_json()
    assert doc["gateway"] == {"error": "RuntimeError('boom')"}  # as before the types
    assert doc["plugin"] == {"x": 1}
    assert NodeStatus.from_json(doc).gateway == SectionError("RuntimeError('boom')")


async def test_a_section_of_the_wrong_type_is_a_type_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(config()) as rt:
        rt.set_status_section("gateway", lambda: RawSection({}))
        status = NodeStatus(rt.status())
    with pytest.raises(TypeError, match="status section 'gateway' is a RawSection"):
        _ = status.gateway


class OddUnit:
    """A unit whose ``status()`` returns a list, not the mapping the unit API asks for."""

    readings = ()
    commands = ()

    async def run(self, ctx: Any) -> None:
        await trio.sleep_forever()

    def status(self) -> list[int]:
        return [1, 2]


async def test_a_unit_detail_that_is_not_a_mapping_becomes_an_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(config(), {"odd": OddUnit()}) as rt:
        await trio.sleep(0.1)
        detail = rt.status().s1.units["odd"].detail
    assert detail == {"error": "status() returned list, not a mapping"}


async def test_the_shutdown_flush_writes_the_status_document(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    rt = Runtime(config(data_dir=tmp_path), wall_clock=wall_clock)
    seen: list[VsmStatus] = []

    async def hook(status: VsmStatus) -> None:
        seen.append(status)

    async def broken(status: VsmStatus) -> None:
        raise RuntimeError("hook failed")

    rt.add_flush_hook(broken)
    rt.add_flush_hook(hook)
    rt.set_status_section("plugin", lambda: RawSection({"x": 1}))
    async with trio.open_nursery() as nursery:
        await nursery.start(rt.run)
        await trio.sleep(1.5)
        rt.stop()
    written = json.loads((tmp_path / "vsm-state.json").read_text())
    [status] = seen  # the broken hook did not stop the next one
    assert written == as_json(status)
    assert written["plugin"] == {"x": 1}
    assert VsmStatus.from_json(written).node.uptime_s == 1.5
