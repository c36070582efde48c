"""The brokers: the Mosquitto fixture, two bridged Mosquittos, the embedded amqtt broker."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from support.brokers import Mosquitto, MosquittoFactory, mosquitto_factory  # noqa: F401
from support.transports import FAST, WAIT, connected

from vsm_edge.agent.mesh.broker import BrokerStartError, EmbeddedBroker
from vsm_edge.sync import Message, MqttSettings, MqttTransport, Transport, Will

pytestmark = pytest.mark.integration


def on(broker: Mosquitto | str, client_id: str, **options: object) -> MqttTransport:
    url = broker if isinstance(broker, str) else broker.url
    options.setdefault("backoff", FAST)
    return MqttTransport(MqttSettings.from_url(url, client_id=client_id, **options))


async def receive(t: Transport) -> Message:
    with trio.fail_after(WAIT):
        return await t.messages.receive()


async def nothing_more(t: Transport, wait: float = 0.3) -> None:
    with trio.move_on_after(wait):
        extra = await t.messages.receive()
        pytest.fail(f"unexpected message {extra}")


# --- Mosquitto fixture -----------------------------------------------------------


def test_mosquitto_restarts_on_the_same_port(mosquitto_factory: MosquittoFactory) -> None:
    broker = mosquitto_factory()
    port = broker.port
    broker.restart()
    assert broker.port == port
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    broker.stop()
    assert not broker.running
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass


async def test_persistent_mosquitto_keeps_retained_across_restart(
    mosquitto_factory: MosquittoFactory,
) -> None:
    broker = mosquitto_factory(persistence=True)
    async with trio.open_nursery() as nursery:
        pub = on(broker, "pub")
        await connected(nursery, pub)
        await pub.publish("vsm/m/policy", b"signed policy", qos=1, retain=True)
        nursery.cancel_scope.cancel()
    await trio.to_thread.run_sync(broker.restart)  # SIGTERM saves the database
    async with trio.open_nursery() as nursery:
        sub = on(broker, "sub")
        await connected(nursery, sub)
        await sub.subscribe("vsm/m/policy")
        assert await receive(sub) == Message("vsm/m/policy", b"signed policy", 1, True)
        nursery.cancel_scope.cancel()


# --- two bridged brokers -----------------------------------------------------------


async def test_bridged_brokers_carry_messages_both_ways_once(
    mosquitto_factory: MosquittoFactory,
) -> None:
    a, b = mosquitto_factory.bridged_pair(topic="vsm/#")
    on_a, on_b = on(a, "on-a"), on(b, "on-b")
    async with trio.open_nursery() as nursery:
        await connected(nursery, on_a, on_b)
        # The bridge announces itself (retained) once it is up.
        await on_b.subscribe("$SYS/broker/connection/+/state")
        with trio.fail_after(WAIT):
            while (await on_b.messages.receive()).payload != b"1":
                pass
        await on_b.unsubscribe("$SYS/broker/connection/+/state")
        await on_a.subscribe("vsm/#")
        await on_b.subscribe("vsm/#")
        await trio.sleep(0.2)  # the bridge's own subscriptions travel too
        await on_a.publish("vsm/m/d/a", b"from A", qos=1)
        assert await receive(on_b) == Message("vsm/m/d/a", b"from A", 1, False)
        assert await receive(on_a) == Message("vsm/m/d/a", b"from A", 1, False)
        await on_b.publish("vsm/m/d/b", b"from B", qos=1)
        assert await receive(on_a) == Message("vsm/m/d/b", b"from B", 1, False)
        assert await receive(on_b) == Message("vsm/m/d/b", b"from B", 1, False)
        await on_b.subscribe("other/#")
        await on_a.publish("other/x", b"not bridged", qos=1)  # outside vsm/#
        # Exactly once each: no loop between the brokers (try_private).
        await nothing_more(on_b)
        nursery.cancel_scope.cancel()


# --- the embedded amqtt broker -----------------------------------------------------------


async def test_embedded_broker_pub_sub_retained_will_and_311_fallback() -> None:
    broker = EmbeddedBroker()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(broker.run)
        assert url == broker.url
        assert broker.running
        node = on(url, "n1", will=Will("vsm/m/presence/n1", b"offline"))
        watcher = on(url, "watcher")
        await connected(nursery, node, watcher)
        # amqtt speaks MQTT 3.1.1 only: the transports fell back to it.
        assert (node.protocol, watcher.protocol) == ("3.1.1", "3.1.1")
        await node.publish("vsm/m/presence/n1", b"online", qos=1, retain=True)
        await watcher.subscribe("vsm/m/#")
        assert await receive(watcher) == Message("vsm/m/presence/n1", b"online", 1, True)
        await node.publish("vsm/m/d/n1", b"delta", qos=1)
        assert await receive(watcher) == Message("vsm/m/d/n1", b"delta", 1, False)
        node.abort()  # no DISCONNECT: amqtt publishes the will
        assert await receive(watcher) == Message("vsm/m/presence/n1", b"offline", 1, False)
        nursery.cancel_scope.cancel()
    assert not broker.running


async def test_embedded_broker_restarts_on_the_same_port_and_clients_return() -> None:
    broker = EmbeddedBroker()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(broker.run)
        port = broker.port
        pub, sub = on(url, "pub"), on(url, "sub")
        await connected(nursery, pub, sub)
        await sub.subscribe("vsm/#")
        old_pid = broker.pid
        await broker.restart(downtime=0.2)
        assert (broker.port, broker.running) == (port, True)
        assert broker.pid != old_pid
        with trio.fail_after(WAIT):
            await pub.wait_connected()
            await sub.wait_connected()
        await pub.publish("vsm/m/d/x", b"after restart", qos=1)
        assert (await receive(sub)).payload == b"after restart"
        assert sub.statistics().reconnects == 1
        nursery.cancel_scope.cancel()


async def test_embedded_broker_reports_a_taken_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = EmbeddedBroker(port=taken.getsockname()[1])
        with pytest.raises(BrokerStartError, match="amqtt did not start"):
            await broker.start()
    assert not broker.running


async def test_embedded_broker_child_exits_when_its_parent_goes() -> None:
    # The child watches its stdin: a parent that dies closes it.
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "vsm_edge.agent.mesh.broker", "--port", "0"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    with trio.fail_after(WAIT):
        assert (await proc.stdout.receive_some(100)).startswith(b"ready")
        await proc.stdin.aclose()
        assert await proc.wait() == 0
    await proc.stdout.aclose()


def test_without_amqtt_an_embedded_broker_is_one_clear_line(tmp_path: Path) -> None:
    # A device installed without the [demo] extra, left on the default broker.
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nid = "n1"\ndata_dir = "{tmp_path / "data"}"\n[discovery]\nenabled = false\n'
    )
    code = (
        "import sys; sys.modules['amqtt'] = None  # as if not installed\n"
        "from vsm_edge.agent.cli.main import main\n"
        f"sys.exit(main(['run', '--config', {str(config)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "needs amqtt" in lines[0]
    assert "vsm-edge[demo]" in lines[0]
