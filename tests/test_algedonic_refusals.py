"""Algedonic signals that break the wire contract are refused at the decoder, and counted.

docs/protocol.md §5: intensity is a float in [0, 1], a node speaks only for
itself. The decoder is :func:`decode_peer_signal`; the integration test sends
signed signals from a validly keyed peer (a real :class:`Replicator`) through a
real Mosquitto to an agent (real store, runtime and gateway).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import trio
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from support.security import Rogue, agent_config, running_agents, wait_until

from vsm_edge.agent.mesh.status import ReplicationStatus
from vsm_edge.agent.vsm.algedonic import PAIN, Signal, SignalError, decode_peer_signal
from vsm_edge.sync import MqttSettings, MqttTransport, NodeKey, Timestamp, Will

STAMP = Timestamp(1_700_000_000_000, 0, "z")


def signal_map(**change: Any) -> dict[str, Any]:
    body = Signal("z", "operator.test", 0.5, PAIN, STAMP, "test").to_cbor()
    body.update(change)
    return body


@pytest.mark.parametrize(
    "intensity", [2.0, 1.0000001, -0.5, -0.0000001, math.inf, -math.inf, math.nan, 2, True]
)
def test_an_intensity_outside_0_1_is_refused_at_the_decoder(intensity: object) -> None:
    with pytest.raises(SignalError):
        Signal.from_cbor(signal_map(i=intensity))
    assert decode_peer_signal("z", signal_map(i=intensity)) == (None, "alg:malformed")


def test_the_decoder_takes_the_range_ends_and_refuses_another_nodes_signal() -> None:
    for intensity in (0.0, 1.0, 0, 1):
        signal, refused = decode_peer_signal("z", signal_map(i=intensity))
        assert refused is None
        assert signal is not None
        assert signal.intensity == float(intensity)
    assert decode_peer_signal("z", signal_map(node="a")) == (None, "alg:wrong-node")
    assert decode_peer_signal("z", {"i": 0.5}) == (None, "alg:malformed")
    assert decode_peer_signal("z", b"\x00") == (None, "alg:malformed")


@pytest.mark.integration
async def test_a_peers_out_of_range_signal_is_refused_and_counted(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    def transport(will: Will) -> MqttTransport:
        settings = MqttSettings(client_id="z", port=mosquitto.port, protocol="5", will=will)
        return MqttTransport(settings)

    async with running_agents([agent_config(tmp_path, "a")], url=mosquitto.url) as (a,):
        assert a.replicator is not None
        assert a.runtime is not None
        replicator, runtime = a.replicator, a.runtime

        def refused() -> dict[str, int]:
            counts: dict[str, int] = replicator.statistics()["refused"]
            return counts

        def from_z() -> list[Signal]:
            return [x.signal for x in runtime.algedonic.alarms.values() if x.signal.node == "z"]

        rogue = Rogue("z", "m", transport, NodeKey.generate())
        async with trio.open_nursery() as nursery:
            await nursery.start(rogue.replicator.run)
            await wait_until(lambda: "z" in replicator.peers, "a to hear z's presence")

            def signed(**change: Any) -> dict[str, Any]:
                return signal_map(hlc=rogue.clock.now().packed, **change)

            for body in (signed(i=2.0), signed(i=-0.5), signed(i=2.0, node="a")):
                await rogue.replicator.publish_app("alg", body, retain=True)
            await rogue.replicator.publish_app("alg", signed(why="x" * 513), retain=True)
            await rogue.replicator.publish_app("alg", signed(node="a"), retain=True)
            await rogue.replicator.publish_app("alg", signed(i=0.75), retain=True)  # valid
            await wait_until(lambda: len(from_z()) == 1, "z's valid signal")
            await wait_until(
                lambda: (
                    refused().get("alg:malformed", 0) == 4
                    and refused().get("alg:wrong-node", 0) == 1
                ),
                "the refusals to be counted",
            )
            nursery.cancel_scope.cancel()
        [heard] = from_z()
        assert (heard.intensity, heard.source) == (0.75, "operator.test")
        replication = a.status().replication
        assert isinstance(replication, ReplicationStatus)
        assert replication.replicator.refused["alg:malformed"] == 4
        assert replication.replicator.refused["alg:wrong-node"] == 1
