"""``POST /command``: its input checks, and the aggregator commanding an agent's unit.

One Trio run: an agent (n1, a confirming simulated actuator) and an aggregator
on the in-memory broker; the admin-signed policy grants the aggregator's key
``valve.*`` on n1. The HTTP client is the CLI's (``StatusClient.command``),
in a thread. The agents' own route with real processes and Mosquitto is in
tests/test_remote_commands.py.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio

from vsm_edge.agent import StatusClientError, parse_config
from vsm_edge.agent.cli.aggregate import Aggregator, AggregatorConfig
from vsm_edge.agent.mesh.commands import CommandError, CommandOutcome
from vsm_edge.agent.mesh.node import Agent
from vsm_edge.agent.vsm.s5 import CommandGrant, Policy, sign_policy
from vsm_edge.agent.web.client import StatusClient
from vsm_edge.agent.web.command_route import command_response
from vsm_edge.agent.web.http import HttpError
from vsm_edge.agent.web.json_input import decode_json
from vsm_edge.sync import MemoryBroker, NodeKey, derive_kid, save_node_key

OUTCOME = CommandOutcome(bytes(16), "n1", "done", "", 1)


async def _issue(*args: Any) -> CommandOutcome:
    await trio.lowlevel.checkpoint()
    return OUTCOME


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ([], 400, "JSON object"),
        ({"node": "n1", "unit": "v"}, 400, "cmd must be"),
        ({"node": "n1", "unit": "v", "cmd": "set", "extra": 1}, 400, "unknown field 'extra'"),
        ({"node": "n/1", "unit": "v", "cmd": "set"}, 400, "node must be"),
        ({"node": "n1", "unit": "v", "cmd": "set", "timeout_s": "5"}, 400, "timeout_s"),
        ({"node": "n1", "unit": "v", "cmd": "set", "timeout_s": True}, 400, "timeout_s"),
    ],
)
async def test_a_bad_request_is_400_naming_the_field(body: Any, status: int, message: str) -> None:
    with pytest.raises(HttpError) as info:
        await command_response(_issue, body)
    assert info.value.status == status
    assert message in str(info.value)


async def test_a_refusal_of_the_issuer_is_400_and_too_many_in_flight_503() -> None:
    async def refuse(*args: Any) -> CommandOutcome:
        raise CommandError("value: a number must be finite")

    async def busy(*args: Any) -> CommandOutcome:
        raise CommandError("256 commands are waiting for an outcome; retry later")

    request = {"node": "n1", "unit": "v", "cmd": "set", "value": 1}
    for issue, status in ((refuse, 400), (busy, 503)):
        with pytest.raises(HttpError) as info:
            await command_response(issue, request)
        assert info.value.status == status


async def test_a_good_request_answers_the_outcome() -> None:
    response = await command_response(_issue, {"node": "n1", "unit": "v", "cmd": "set"})
    assert response.status == 200
    assert decode_json(response.body) == OUTCOME.to_json()


def test_the_aggregator_serves_commands_on_loopback_only() -> None:
    AggregatorConfig(broker_url="mqtt://h:1", http_host="127.0.0.1", commands=True)
    AggregatorConfig(broker_url="mqtt://h:1", http_host="::1", commands=True)
    with pytest.raises(ValueError, match="loopback"):
        AggregatorConfig(broker_url="mqtt://h:1", http_host="0.0.0.0", commands=True)


async def test_the_aggregator_commands_a_granted_unit_over_the_mesh(tmp_path: Path) -> None:
    admin = nacl.signing.SigningKey.generate()
    agg_key = NodeKey.generate()
    save_node_key(agg_key, tmp_path / "agg.key")
    config = parse_config(
        {
            "node": {"id": "n1", "mesh": "t", "zone": "z", "data_dir": str(tmp_path / "n1")},
            "broker": {"url": "mqtt://127.0.0.1:1"},  # unused: the memory broker
            "discovery": {"enabled": False},
            "status": {"enabled": False},
            "s5": {"admin_keys": [bytes(admin.verify_key).hex()]},
            "units": [
                {"name": "valve", "kind": "simulated-actuator",
                 "options": {"maximum": 10, "confirm": True}},
            ],
        }
    )  # fmt: skip
    grant = CommandGrant(derive_kid(agg_key.public_key), ("n1",), ("valve.*",))
    policy = sign_policy(Policy(version=1, grants=(grant,)), admin)
    broker = MemoryBroker(seed=3)
    agent = Agent(config, transport_factory=lambda will: broker.transport("n1", will=will))
    aggregator = Aggregator(
        AggregatorConfig(
            broker_url="mqtt://127.0.0.1:1", meshes=("t",), node="agg", http_port=0,
            key_file=tmp_path / "agg.key", commands=True,
        ),
        transport_factory=lambda mesh, will: broker.transport(f"agg.{mesh}", will=will),
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.run)
        assert agent.runtime is not None
        agent.runtime.accept_policy(policy)
        port = await nursery.start(aggregator.run)
        mesh = aggregator.meshes["t"]
        with trio.fail_after(10):
            while mesh.replicator is None or "n1" not in mesh.replicator.online_peers():
                await trio.sleep(0.02)
            assert agent.replicator is not None
            while "agg" not in agent.replicator.online_peers():
                await trio.sleep(0.02)
        client = StatusClient(f"http://127.0.0.1:{port}", timeout_s=10)
        done = await trio.to_thread.run_sync(
            functools.partial(client.command, "n1", "valve", "set", 4, timeout_s=5)
        )
        assert (done["node"], done["status"], done["why"]) == ("n1", "done", "")
        refused = await trio.to_thread.run_sync(
            functools.partial(client.command, "n1", "valve", "open", None, timeout_s=5)
        )
        assert refused["status"] == "refused"
        assert refused["why"] == "s1: no unit 'valve' with command 'open'"
        with pytest.raises(StatusClientError, match=r"HTTP 400.*no joined mesh"):
            await trio.to_thread.run_sync(
                functools.partial(client.command, "n9", "valve", "set", 1, timeout_s=1)
            )
        status = agent.status().commands
        assert status is not None
        assert not isinstance(status, Exception)
        assert [(r.issuer, r.status) for r in status.recent] == [
            ("agg", "done"), ("agg", "refused"),
        ]  # fmt: skip
        agent.stop()
        nursery.cancel_scope.cancel()
