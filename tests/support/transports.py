"""Harnesses that run the same transport tests against the fake and a real broker.

``transport_harness`` is parametrized: ``memory`` (MemoryBroker), ``mosquitto-5``
and ``mosquitto-3.1.1`` (MqttTransport on a real Mosquitto process, MQTT 5 or
forced 3.1.1). A harness makes transports and injects the faults the contract
talks about: a crash of one client, a broker restart, withheld PUBACKs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import pytest
import trio

from support.brokers import Mosquitto, MosquittoFactory
from vsm_edge.sync import (
    Backoff,
    MemoryBroker,
    MemoryTransport,
    MqttSettings,
    MqttTransport,
    Transport,
)

__all__ = ["FAST", "Harness", "connected", "transport_harness"]

# Quick reconnects, so tests of restarts stay short.
FAST = Backoff(initial=0.02, maximum=0.2)
WAIT = 10.0  # bound on any one wait in a test


class Harness(Protocol):
    name: str

    def transport(self, client_id: str, **options: Any) -> Transport: ...
    def crash(self, transport: Transport) -> None: ...
    async def stop_broker(self) -> None: ...
    async def start_broker(self) -> None: ...
    def hold_acks(self) -> None: ...
    def release_acks(self) -> None: ...


class MemoryHarness:
    name = "memory"

    def __init__(self) -> None:
        self.broker = MemoryBroker(seed=1)

    def transport(self, client_id: str, **options: Any) -> Transport:
        options.setdefault("backoff", FAST)
        return MemoryTransport(self.broker, client_id, **options)

    def crash(self, transport: Transport) -> None:
        self.broker.disconnect(transport.client_id)

    async def stop_broker(self) -> None:
        await trio.lowlevel.checkpoint()
        self.broker.stop()

    async def start_broker(self) -> None:
        await trio.lowlevel.checkpoint()
        self.broker.start()

    def hold_acks(self) -> None:
        self.broker.hold_acks()

    def release_acks(self) -> None:
        self.broker.release_acks()


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


async def connected(nursery: trio.Nursery, *transports: Transport) -> None:
    """Start each transport's service and wait until all are connected."""
    for t in transports:
        await nursery.start(t.run)
    with trio.fail_after(WAIT):
        for t in transports:
            await t.wait_connected()
