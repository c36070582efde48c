"""Harnesses that run the same transport tests against the fake and a real broker.

``transport_harness`` is parametrized: ``memory`` (MemoryBroker), ``mosquitto-5``
and ``mosquitto-3.1.1`` (MqttTransport on a real Mosquitto process, MQTT 5 or
forced 3.1.1). A harness makes transports and injects the faults the contract
talks about: a crash of one client, a broker restart, withheld PUBACKs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import trio

from support.brokers import Mosquitto, MosquittoFactory
from vsm_edge.sync import MqttSettings, MqttTransport, Transport
from vsm_edge.sync.testing import FAST, WAIT, Harness, MemoryHarness, connected

__all__ = ["FAST", "WAIT", "Harness", "connected", "transport_harness"]

class MosquittoHarness:
    def __init__(self, broker: Mosquitto, protocol: str) -> None:
        self.broker = broker
        self.protocol = protocol
        self.name = f"mosquitto-{protocol}"

    def transport(self, client_id: str, **options: Any) -> Transport:
        options.setdefault("backoff", FAST)
        options.setdefault("protocol", self.protocol)
        settings = MqttSettings(client_id=client_id, port=self.broker.port, **options)
        return MqttTransport(settings)

    def crash(self, transport: Transport) -> None:
        assert isinstance(transport, MqttTransport)
        transport.abort()

    async def stop_broker(self) -> None:
        await trio.to_thread.run_sync(self.broker.stop)

    async def start_broker(self) -> None:
        await trio.to_thread.run_sync(self.broker.start)

    def hold_acks(self) -> None:
        self.broker.freeze()  # SIGSTOP: the broker answers nothing

    def release_acks(self) -> None:
        self.broker.thaw()


@pytest.fixture(params=["memory", "mosquitto-5", "mosquitto-3.1.1"])
def transport_harness(
    request: pytest.FixtureRequest, mosquitto_factory: MosquittoFactory
) -> Iterator[Harness]:
    """The same tests against the in-memory fake and a real Mosquitto (MQTT 5 and 3.1.1)."""
    if request.param == "memory":
        yield MemoryHarness()
    else:
        yield MosquittoHarness(mosquitto_factory(), request.param.removeprefix("mosquitto-"))
