"""Alarms as replicated state, with three real agents on Mosquitto (issue 14, item 1).

Bugs: an emergency-stop alarm acknowledged on every node came back as
``critical,remote`` after n3 restarted and put n3 in safe mode again;
before that, n2 and n3 entered safe mode although n1 had acknowledged it
(acknowledgements did not travel); an operator alarm answered "delivered"
was lost by a kill -9 right after.

Now an alarm is the mesh's: each node's word on it is its own register in
the mesh document (``{node}/a/{id}``), joined by the alarm ledger so that
acknowledged and cleared win. Three ``vsm-edge run`` processes (n1, n2, n3)
in a closed zone on a private Mosquitto; n3 reaches the broker through a TCP
proxy the test can cut (a partition); safe mode is quick
(``safe_mode_after_s = 1``) so that "does not enter safe mode" is observable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.adversary import MESH, HostileMesh, adversary, make_closed_zone, wait_for
from support.tcp_proxy import TcpProxy

from vsm_edge.agent.mesh.schema import alarm_key
from vsm_edge.agent.vsm.algedonic import PAIN, Signal
from vsm_edge.sync import ORMap, Timestamp, cbor_dumps

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

HONEST = ["n1", "n2", "n3"]
S5_FAST = "[s5]\nsafe_mode_after_s = 1.0\nsafe_mode_exit_after_s = 1.0\n"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[HostileMesh, TcpProxy]]:
    # agg1: the aggregator, a member of the closed zone (its repairs need it)
    creds = make_closed_zone(tmp_path / "admin", [*HONEST, "mallory", "agg1"])
    m = HostileMesh(tmp_path, creds, HONEST)
    proxy = TcpProxy(("127.0.0.1", m.broker.port))
    proxy.start()
    for agent in m.agents:
        text = agent.config_path.read_text().replace("[s5]\n", S5_FAST)
        if agent.name == "n3":
            text = text.replace(m.broker.url, proxy.url)
        agent.config_path.write_text(text)
    try:
        m.start()
        yield m, proxy
    finally:
        proxy.close()
        m.close()


class AggregatorProcess:
    """``vsm-edge aggregate`` on the mesh's broker: its /view.json."""

    def __init__(self, m: HostileMesh, workdir: Path) -> None:
        self.port_file = workdir / "agg.port"
        self.log = (workdir / "agg.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vsm_edge.agent", "aggregate", "--broker", m.broker.url,
             "--mesh", MESH, "--id", "agg1", "--http", "127.0.0.1:0",
             "--port-file", str(self.port_file), "--protocol", "5",
             "--key", str(m.creds.key_file("agg1"))],
            stdout=self.log, stderr=self.log,
        )  # fmt: skip

    def view(self) -> dict[str, Any] | None:
        try:
            port = int(self.port_file.read_text())
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/view.json", timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        view = self.view()
        if view is None:
            return None
        return next((a for a in view["alarms"] if a["id"] == alarm_id), None)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def aggregator(
    mesh: tuple[HostileMesh, TcpProxy], tmp_path: Path
) -> Iterator[AggregatorProcess]:
    agg = AggregatorProcess(mesh[0], tmp_path)
    try:
        yield agg
    finally:
        agg.close()


def alarm(status: dict[str, Any], alarm_id: str) -> dict[str, Any] | None:
    return next((a for a in status["algedonic"]["alarms"] if a["id"] == alarm_id), None)


def states(m: HostileMesh, alarm_id: str, names: list[str] | None = None) -> dict[str, Any]:
    out = {}
    for name in names or m.names:
        status = m.agent(name).status()
        found = None if status is None else alarm(status, alarm_id)
        out[name] = None if found is None else (found["state"], found.get("acked_by"))
    return out


def post(m: HostileMesh, name: str, path: str) -> dict[str, Any]:
    client = m.agent(name).client()
    assert client is not None
    return client.request("POST", path)[1]  # type: ignore[no-any-return]


def test_an_acknowledgement_travels_survives_restarts_and_partitions(
    mesh: tuple[HostileMesh, TcpProxy], aggregator: AggregatorProcess
) -> None:
    m, proxy = mesh
    raised = m.agent("n1").raise_alarm(0.99, "estop", "emergency stop pressed")
    assert raised["delivered"]
    assert raised["critical"]
    assert raised["durable"]
    alarm_id = raised["id"]
    wait_for(
        lambda: all(s == ("raised", None) for s in states(m, alarm_id).values()),
        15,
        "every node to hold the raised alarm",
    )
    wait_for(
        lambda: (a := aggregator.alarm(alarm_id)) is not None and a["acked"] is False,
        30,
        "the aggregator to list the alarm, unacknowledged",
    )
    # every node agrees why it is in safe mode: the same critical alarm
    wait_for(
        lambda: all(
            (s := m.agent(n).status()) is not None
            and s["s5"]["safe_mode"]
            and s["algedonic"]["critical"] == [alarm_id]
            for n in m.names
        ),
        15,
        "every node in safe mode because of the alarm",
    )

    # n3 partitioned while n2 acknowledges with a short prefix
    proxy.cut()
    wait_for(
        lambda: (
            (s := m.agent("n3").status()) is not None
            and s["replication"]["transport"]["state"] != "connected"
        ),
        30,
        "n3 to lose the broker",
    )
    acked_at = time.monotonic()
    doc = post(m, "n2", f"/alarm/{alarm_id[:8]}/ack")
    assert doc == {"id": alarm_id, "acked": True, "state": "acknowledged", "durable": True}
    wait_for(
        lambda: (
            states(m, alarm_id, ["n1", "n2"])
            == {"n1": ("acknowledged", "n2"), "n2": ("acknowledged", "n2")}
        ),
        10,
        "n1 and n2 to hold the acknowledgement",
        poll=0.05,
    )
    print(f"acknowledged on n1 and n2 {time.monotonic() - acked_at:.2f} s after n2's answer")
    wait_for(
        lambda: (a := aggregator.alarm(alarm_id)) is not None and a["acked_by"] == "n2",
        10,
        "the aggregator to show it acknowledged by n2",
        poll=0.05,
    )
    print(f"acknowledged at the aggregator {time.monotonic() - acked_at:.2f} s after the answer")
    assert states(m, alarm_id, ["n3"]) == {"n3": ("raised", None)}  # cut off: not yet
    wait_for(
        lambda: all(not m.agent(n).status()["s5"]["safe_mode"] for n in ("n1", "n2")),  # type: ignore[index]
        15,
        "n1 and n2 to leave safe mode",
    )

    healed_at = time.monotonic()
    proxy.heal()
    wait_for(
        lambda: states(m, alarm_id, ["n3"]) == {"n3": ("acknowledged", "n2")},
        30,
        "n3 to converge to acknowledged after the partition",
    )
    print(f"n3 acknowledged {time.monotonic() - healed_at:.2f} s after the partition healed")
    wait_for(
        lambda: not m.agent("n3").status()["s5"]["safe_mode"],  # type: ignore[index]
        15,
        "n3 to leave safe mode",
    )

    # n3 restarts: the retained critical signal is heard again, the alarm stays acknowledged
    m.restart_agents(["n3"])
    deadline = time.monotonic() + 5.0  # > safe_mode_after_s: long enough to have entered
    while time.monotonic() < deadline:
        status = m.agent("n3").status()
        assert status is not None
        found = alarm(status, alarm_id)
        assert found is not None
        assert found["state"] == "acknowledged", found
        assert not status["s5"]["safe_mode"], status["algedonic"]
        assert status["s5"]["safe_mode_entries"] == 0
        assert status["algedonic"]["critical"] == []
        time.sleep(0.25)


def test_an_operator_alarm_answered_durable_survives_kill_9_at_once(
    mesh: tuple[HostileMesh, TcpProxy],
) -> None:
    m, _ = mesh
    n1 = m.agent("n1")
    ids = []
    for i in range(5):
        answer = n1.raise_alarm(0.9 - 0.01 * i, f"durable{i}", f"alarm {i}")
        assert answer["delivered"], answer
        assert answer["durable"], answer
        ids.append(answer["id"])
    n1.kill()  # no delay: SIGKILL right after the fifth answer
    n1.start()
    status = n1.wait_status(45)
    wait_for(
        lambda: all(alarm(n1.status() or {"algedonic": {"alarms": []}}, i) for i in ids),
        30,
        "n1 to list its five alarms after kill -9",
    )
    wait_for(
        lambda: all(
            all(alarm(m.agent(n).status() or {"algedonic": {"alarms": []}}, i) for i in ids)
            for n in ("n2", "n3")
        ),
        30,
        "n2 and n3 to hold the five alarms",
    )
    assert status is not None


def test_a_member_cannot_raise_or_acknowledge_in_another_nodes_name(
    mesh: tuple[HostileMesh, TcpProxy],
) -> None:
    """mallory (a member, real key) writes alarm records under n1's keys, stamped as n1's
    and later than n1's own entry: refused everywhere, n1's own record still counts."""
    m, _ = mesh
    raised = m.agent("n1").raise_alarm(0.99, "estop", "real")
    alarm_id = raised["id"]
    wait_for(lambda: all(s for s in states(m, alarm_id).values()), 15, "the alarm everywhere")
    now = int(time.time() * 1000)
    forged = Signal("n1", "estop", 1.0, PAIN, Timestamp(now, 0, "n1"), "fake")
    with adversary(m) as mallory:
        stamp = Timestamp(now + 1000, 0, "n1").packed  # "n1's" and later: would win LWW
        entries = [
            (alarm_key("n1", alarm_id), {"ack": Timestamp(now, 0, "n1").packed}),
            (alarm_key("n1", forged.id), {"sig": forged.to_cbor()}),
        ]
        entries.sort(key=lambda kv: (len(kv[0].encode()), kv[0].encode()))  # the wire's order
        base = max(s["replication"]["vv"].get("mallory", 0) for s in m.statuses() or [])
        obj = [
            14,
            {"mallory": [base + 1, base + len(entries)]},
            [
                [12, key, [[["mallory", base + 1 + i], [stamp, "n1", value]]]]
                for i, (key, value) in enumerate(entries)
            ],
            [],
        ]
        ORMap.from_cbor(obj)  # a valid delta: what is tested is what readers make of it
        mallory.send("d", "delta", [["mesh", cbor_dumps(obj)]])
        wait_for(
            lambda: all(
                (s := m.agent(n).status()) is not None and s["algedonic"]["ledger"]["refused"] >= 2
                for n in m.names
            ),
            15,
            "every agent to refuse both forged records",
        )
    for name in m.names:
        status = m.agent(name).status()
        assert status is not None
        assert alarm(status, alarm_id)["state"] == "raised", name  # type: ignore[index]
        assert alarm(status, forged.id) is None, name
    # n1's own record still counts: n2 acknowledges, everyone sees it
    post(m, "n2", f"/alarm/{alarm_id}/ack")
    wait_for(
        lambda: all(s == ("acknowledged", "n2") for s in states(m, alarm_id).values()),
        15,
        "the acknowledgement everywhere",
    )
    assert not m.dead()


__all__ = ["MESH"]
