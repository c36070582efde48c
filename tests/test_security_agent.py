"""The ingress guard in the agent, with real parts: agents, stores, brokers, rogues.

Each test runs whole :class:`Agent` objects (SQLite store, VSM runtime,
replicator, gateway) on the in-memory broker or a real Mosquitto process, and
attacks them from outside: a rogue client re-publishing recorded envelopes
(replay, forgery), a key outside an admin-signed zone published with the
real command line, a validly keyed node flooding the mesh, a corrupt model.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from support.security import Rogue, agent_config, mesh_keys, running_agents, wait_until

import vsm_edge.models
from vsm_edge.agent import ConfigError
from vsm_edge.agent.cli.main import main
from vsm_edge.agent.mesh.node import Agent
from vsm_edge.models import ReplayConfig, ReplayWindow
from vsm_edge.sync import (
    MemoryBroker,
    MqttSettings,
    MqttTransport,
    NodeKey,
    save_node_key,
    save_public_key,
)


def reasons(agent: Agent) -> dict[str, int]:
    assert agent.gateway is not None
    stats = agent.gateway.statistics()["reasons"]
    assert isinstance(stats, dict)
    return stats


def outsider_refused(agent: Agent) -> int:
    """Messages of a key outside the zone refused: by the gateway, or (once the
    zone unbound its presence) as from an unknown key."""
    assert agent.replicator is not None
    refused = agent.replicator.statistics()["refused"]
    return int(reasons(agent).get("not-in-zone", 0)) + int(refused.get("unknown-key", 0))


def quarantined(agent: Agent) -> list[str]:
    assert agent.gateway is not None
    return [q.peer for q in agent.gateway.detector.quarantined()]


def alarm_sources(agent: Agent) -> set[str]:
    assert agent.runtime is not None
    return {a.signal.source for a in agent.runtime.algedonic.alarms.values()}


@pytest.mark.integration
async def test_flooding_zombie_is_quarantined_within_seconds_and_honest_peers_are_not(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker(seed=1)
    configs = [agent_config(tmp_path, name) for name in ("a", "b")]
    async with running_agents(configs, broker=broker) as (a, b):
        await wait_until(
            lambda: "b/report" in mesh_keys(a) and "a/report" in mesh_keys(b), "the honest mesh"
        )
        rogue = Rogue("z", "m", lambda will: broker.transport("z", will=will), NodeKey.generate())
        async with trio.open_nursery() as nursery:
            await nursery.start(rogue.replicator.run)
            nursery.start_soon(rogue.flood, 400.0)
            took = await wait_until(
                lambda: quarantined(a) == ["z"] and quarantined(b) == ["z"], "both quarantines"
            )
            print(f"flooding zombie quarantined by both honest nodes after {took:.2f} s "
                  f"({rogue.written} writes)")  # fmt: skip
            for agent in (a, b):
                assert "gateway.quarantine.z" in alarm_sources(agent)  # pain raised
                assert agent.security is not None
                status = agent.security.status()
                assert status.quarantine[0].peer == "z"
                assert status.quarantine[0].reason == "flood"
            # Each honest node's signed proposal reaches the other through the mesh document.
            await wait_until(
                lambda: (
                    a.security is not None
                    and b.security is not None
                    and a.security.proposals().get("z") == ["b"]
                    and b.security.proposals().get("z") == ["a"]
                ),
                "the quarantine proposals",
            )
            # From now on nothing the zombie signs is merged anywhere.
            for _ in range(20):
                await rogue.put("after", 1)
            allowed = {x.node: x.gateway.statistics()["allow"] for x in (a, b) if x.gateway}
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
        for agent in (a, b):
            assert "z/after" not in mesh_keys(agent)
            assert "z/flood" in mesh_keys(agent)  # what came before the quarantine
            assert quarantined(agent) == ["z"]  # honest peers untouched
            denied = {r for r, n in reasons(agent).items() if n and r not in ("fresh",)}
            assert denied <= {"quarantined", "arbitrator-allow"}, denied
            assert agent.gateway is not None
            assert agent.gateway.statistics()["allow"] > allowed[agent.node]  # still hearing


def _corrupt_model(tmp_path: Path) -> Path:
    """The shipped model with 16 bytes in its middle overwritten, beside its own sidecar."""
    shipped = Path(vsm_edge.models.__file__).parent / "arbitrator.tflite"
    data = bytearray(shipped.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = os.urandom(16)
    model = tmp_path / "broken.tflite"
    model.write_bytes(bytes(data))
    model.with_suffix(".json").write_bytes(shipped.with_suffix(".json").read_bytes())
    return model


async def test_a_named_model_that_cannot_be_used_stops_the_start(tmp_path: Path) -> None:
    model = _corrupt_model(tmp_path)
    config = agent_config(tmp_path, "a", security={"arbitrator_model": str(model)})
    with pytest.RaisesGroup(ConfigError, flatten_subgroups=True) as info:
        async with running_agents([config], broker=MemoryBroker(seed=2)):
            pass
    error = info.value.exceptions[0]
    assert isinstance(error, ConfigError)
    assert error.key == "security.arbitrator_model"
    assert str(model) in str(error)
    assert "corrupt" in str(error)


@pytest.mark.integration
async def test_corrupt_shipped_model_fails_closed_with_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _corrupt_model(tmp_path)
    read_model = vsm_edge.models._lazy.read_model
    monkeypatch.setattr(  # the "shipped" model is the corrupt copy
        vsm_edge.models._lazy, "read_model", lambda path: read_model(path or model)
    )
    broker = MemoryBroker(seed=2)
    configs = [agent_config(tmp_path, "a"), agent_config(tmp_path, "b")]
    async with running_agents(configs[:1], broker=broker) as (a,):
        monkeypatch.undo()  # b loads the real shipped model
        async with running_agents(configs[1:], broker=broker) as (b,):
            await _fails_closed(a, b, broker, caplog)


async def _fails_closed(
    a: Agent, b: Agent, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """``a`` could not load its model, ``b`` could: a's MAYBE cases are DENYed."""
    assert a.gateway is not None
    assert a.security is not None
    status = a.security.status()
    assert status.arbitrator is False
    assert status.arbitrator_state == "unavailable"
    assert "the shipped model" in status.arbitrator_error
    assert "corrupt" in status.arbitrator_error
    assert any(
        "the shipped model" in r.getMessage() for r in caplog.records if r.levelname == "WARNING"
    )
    assert "gateway.arbitrator" in alarm_sources(a)
    assert b.security is not None
    assert b.security.status().arbitrator is True
    # An exact set of 0 entries makes every replay a MAYBE: with no model it must DENY.
    a.gateway.replay = ReplayWindow(os.urandom(32), ReplayConfig(exact_capacity=0), now_ms=0)
    recorded: list[bytes] = []
    spy = broker.transport("spy")
    async with trio.open_nursery() as nursery:
        await nursery.start(spy.run)
        await spy.wait_connected()
        await spy.subscribe("vsm/m/d/b", qos=1)

        async def record() -> None:
            async for message in spy.messages:
                recorded.append(message.payload)

        nursery.start_soon(record)
        await wait_until(lambda: len(recorded) >= 1, "a delta from b")
        await spy.publish("vsm/m/d/b", recorded[0], qos=1)
        await wait_until(
            lambda: reasons(a).get("arbitrator-unavailable", 0) >= 1, "the MAYBE to fail closed"
        )
        nursery.cancel_scope.cancel()
    assert reasons(a).get("arbitrator-allow", 0) == 0


@pytest.mark.integration
async def test_the_model_loads_on_the_first_maybe_and_decides_it(tmp_path: Path) -> None:
    broker = MemoryBroker(seed=3)
    configs = [agent_config(tmp_path, name) for name in ("a", "b")]
    async with running_agents(configs, broker=broker) as (a, _b):
        assert a.gateway is not None
        assert a.security is not None
        await wait_until(lambda: "b/report" in mesh_keys(a), "the mesh")
        status = a.security.status()
        # Honest traffic: no MAYBE, so the interpreter was never built.
        assert status.maybe == 0
        assert (status.arbitrator, status.arbitrator_state) == (True, "not-loaded")
        assert status.arbitrator_error is None
        # An exact set of 0 entries makes a replay a MAYBE: the model loads and decides.
        a.gateway.replay = ReplayWindow(os.urandom(32), ReplayConfig(exact_capacity=0), now_ms=0)
        recorded: list[bytes] = []
        spy = broker.transport("spy")
        async with trio.open_nursery() as nursery:
            await nursery.start(spy.run)
            await spy.wait_connected()
            await spy.subscribe("vsm/m/d/b", qos=1)

            async def record() -> None:
                async for message in spy.messages:
                    recorded.append(message.payload)

            nursery.start_soon(record)
            await wait_until(lambda: len(recorded) >= 1, "a delta from b")
            await spy.publish("vsm/m/d/b", recorded[0], qos=1)
            await wait_until(lambda: a.security is not None and
                             a.security.status().maybe >= 1, "the MAYBE")  # fmt: skip
            nursery.cancel_scope.cancel()
        status = a.security.status()
        assert (status.arbitrator, status.arbitrator_state) == (True, "loaded")
        decided = {r for r in reasons(a) if r.startswith("arbitrator-")}
        assert decided
        assert decided <= {"arbitrator-allow", "arbitrator-replay", "arbitrator-flood",
                           "arbitrator-slow-drip"}  # fmt: skip
        assert "gateway.arbitrator" not in alarm_sources(a)


@pytest.mark.integration
async def test_replayed_and_forged_envelopes_are_denied_over_mosquitto(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    configs = [agent_config(tmp_path, name) for name in ("a", "b")]
    async with running_agents(configs, url=mosquitto.url) as (a, b):
        await wait_until(
            lambda: "b/report" in mesh_keys(a) and "a/report" in mesh_keys(b), "the mesh"
        )
        rogue = MqttTransport(MqttSettings(client_id="rogue", port=mosquitto.port, protocol="5"))
        recorded: list[bytes] = []
        async with trio.open_nursery() as nursery:
            await nursery.start(rogue.run)
            await rogue.wait_connected()
            await rogue.subscribe("vsm/m/d/a", qos=1)

            async def record() -> None:
                async for message in rogue.messages:
                    recorded.append(message.payload)

            nursery.start_soon(record)
            await wait_until(lambda: len(recorded) >= 1, "a delta from a")
            original = recorded[0]
            assert reasons(b).get("replay", 0) == 0
            assert reasons(b).get("bad-signature", 0) == 0
            await rogue.publish("vsm/m/d/a", original, qos=1)  # the recorded delta, again
            forged = bytearray(original)
            forged[-1] ^= 0x01  # the last bytes of a COSE_Sign1 are its signature
            await rogue.publish("vsm/m/d/a", bytes(forged), qos=1)
            await wait_until(
                lambda: (
                    reasons(b).get("replay", 0) >= 1 and reasons(b).get("bad-signature", 0) >= 1
                ),
                "b to deny the replay and the forgery",
            )
            nursery.cancel_scope.cancel()
        assert b.replicator is not None
        refused = b.replicator.statistics()["refused"]
        assert refused.get("gateway:replay", 0) >= 1
        assert refused.get("gateway:bad-signature", 0) >= 1
        assert quarantined(b) == []  # replays and forgeries in a's name never quarantine a


async def _cli(*args: str, cwd: Path) -> str:
    proc = await trio.run_process(
        [sys.executable, "-m", "vsm_edge.agent", *args],
        cwd=cwd,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 0, out
    return out


def _keys(directory: Path, *names: str) -> dict[str, NodeKey]:
    directory.mkdir(parents=True, exist_ok=True)
    keys = {}
    for name in names:  # what `vsm-edge keygen --out NAME.key` writes
        keys[name] = NodeKey.generate()
        save_node_key(keys[name], directory / f"{name}.key")
        save_public_key(keys[name].public_key, directory / f"{name}.pub")
    return keys


@pytest.mark.integration
@pytest.mark.slow
async def test_key_outside_the_zone_is_denied_once_a_signed_zone_is_published(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    admin_dir = tmp_path / "admin"
    keys = _keys(admin_dir, "admin", "a", "b", "outsider")
    assert main(["zone", "init", "--mesh", "m", "--zone-file", str(admin_dir / "zone.json")]) == 0
    for name in ("a", "b"):
        zone_file = str(admin_dir / "zone.json")
        assert main(["zone", "add", str(admin_dir / f"{name}.pub"), "--zone-file", zone_file]) == 0
    secret = admin_dir / "mesh.secret"  # every member's copy of the mesh secret
    policy_mode = {"zone": "policy", "mesh_secret_file": str(secret)}
    admin = [keys["admin"].public_key]
    configs = [
        agent_config(tmp_path, "a", security=policy_mode, admin_keys=admin,
                     key_file=admin_dir / "a.key"),
        agent_config(tmp_path, "b", security=policy_mode, admin_keys=admin,
                     key_file=admin_dir / "b.key"),
        agent_config(tmp_path, "o", key_file=admin_dir / "outsider.key"),  # open, not in zone
    ]  # fmt: skip
    async with running_agents(configs, url=mosquitto.url) as (a, b, o):
        assert a.security is not None
        assert b.security is not None
        # Fail closed: until a signed zone arrives, nobody's deltas are merged.
        await wait_until(lambda: reasons(a).get("no-zone", 0) >= 3, "a to refuse b (no zone yet)")
        assert "b/report" not in mesh_keys(a)
        assert a.security.status().zone == "policy"
        assert a.security.status().zone_policy is None

        await _cli("policy", "sign", "--admin-key", "admin.key", "--out", "policy.cbor",
                   cwd=admin_dir)  # fmt: skip
        out = await _cli("policy", "publish", "policy.cbor", "--broker", mosquitto.url,
                         "--admin-key", "admin.key", "--timeout", "20", cwd=admin_dir)  # fmt: skip
        assert "published policy" in out
        await wait_until(
            lambda: (
                a.security is not None
                and b.security is not None
                and a.security.zone is not None
                and b.security.zone is not None
            ),
            "the zone to be installed",
        )
        await wait_until(
            lambda: "b/report" in mesh_keys(a) and "a/report" in mesh_keys(b), "a and b to converge"
        )
        await wait_until(
            lambda: outsider_refused(a) >= 3 and outsider_refused(b) >= 3,
            "the outsider's deltas to be denied",
        )
        for agent in (a, b):
            # Its presence no longer binds "o" to its key (the key is not in the zone).
            assert agent.replicator is not None
            assert "o" not in agent.replicator.peers
            assert not any(k.startswith("o/") for k in mesh_keys(agent))
            zone = agent.security.status().zone_policy if agent.security else None
            assert zone is not None
            assert zone.epoch == 1
            assert zone.filters == 1
        assert "a/report" in mesh_keys(o)  # the outsider hears the mesh; it is not heard
        document = (admin_dir / "policy.cbor").read_bytes()
    kept = tmp_path / "a" / "policy.cbor"
    assert kept.read_bytes() == document

    # A restart without any broker message: the kept policy closes the zone at once.
    async with running_agents([configs[0]], broker=MemoryBroker(seed=3)) as (again,):
        assert again.security is not None
        assert again.security.zone is not None
        assert again.security.zone_version == a.security.zone_version
