"""The Transport contract (vsm_edge.sync.testing), run on the fake and a real Mosquitto.

Every check runs three times: on MemoryBroker, and on a Mosquitto process with
MqttTransport speaking MQTT 5 and forced to 3.1.1. The checks live in the
library so that a transport written elsewhere can be held to the same contract.
"""

from __future__ import annotations

import pytest
import trio
from support.brokers import mosquitto_factory  # noqa: F401
from support.transports import Harness, transport_harness  # noqa: F401

from vsm_edge.sync.testing import CONTRACT, Check, MemoryHarness

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("check", CONTRACT, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_contract(transport_harness: Harness, check: Check) -> None:
    await check(transport_harness)


class _NoRetained(MemoryHarness):
    """A broken transport: it forgets retained messages."""

    def transport(self, client_id: str, **options: object) -> object:  # type: ignore[override]
        made = super().transport(client_id, **options)
        publish = made.publish

        async def forgetful(topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
            await publish(topic, payload, qos=qos, retain=False)

        made.publish = forgetful  # type: ignore[method-assign]
        return made


async def test_the_contract_catches_a_transport_that_breaks_it() -> None:
    (check,) = [c for c in CONTRACT if "retained" in c.__name__]
    try:
        await check(_NoRetained())
    except BaseException as exc:
        caught = exc
    else:
        pytest.fail("the check passed a transport that loses retained messages")
    # never received (the bounded wait ends) or the wrong message: out of the nursery
    leaves = _leaves(caught)
    assert leaves
    assert all(isinstance(e, AssertionError | trio.TooSlowError) for e in leaves), leaves


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]
