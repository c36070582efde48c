"""A mesh of real agent processes on a real Mosquitto: convergence under faults.

Every agent is a ``vsm-edge run`` process (light config: one simulated
sensor, discovery off); the writers are bare replicators in processes of their
own (tests/support/mesh_writer.py) whose acknowledgements we read. The mesh
keeps writing throughout, so "converged" means: take every node's version
vector at one moment, and every node eventually covers their maximum.

The size: ``VSM_EDGE_MESH_AGENTS`` agents (default 20: nineteen form the mesh,
the late joiner makes twenty). Twenty full agents take ~40 s to start and form
on a quiet 2-core machine (each process imports ~1 s of Python and the twenty
contend for the cores); the module took 82 s with twenty and 19 s with ten on
this machine under load. ``bench/bench_mesh.py`` measures fifty bench nodes.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from support.brokers import Mosquitto
from support.mesh import (
    AgentProcess,
    WriterProcess,
    covers,
    poll_statuses,
    target_of,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

AGENTS = int(os.environ.get("VSM_EDGE_MESH_AGENTS", "20"))
MESH = "t"
FORM_TIMEOUT_S = 30.0 + 3.0 * AGENTS
CONVERGE_TIMEOUT_S = 20.0


class Mesh:
    """A broker and agent processes; ``agents`` grows when a test adds one."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.broker = Mosquitto(workdir)
        self.agents: list[AgentProcess] = []
        self.extra: list[WriterProcess] = []

    def add_agent(self, name: str) -> AgentProcess:
        agent = AgentProcess(self.workdir, name, self.broker.url, mesh=MESH, protocol="5")
        self.agents.append(agent)
        agent.start()
        return agent

    def statuses(self) -> list[dict[str, Any]]:
        found = poll_statuses(self.agents)
        missing = [a.name for a, s in zip(self.agents, found, strict=True) if s is None]
        if missing:
            raise _NotYet(f"no status from {missing}")
        return [s for s in found if s is not None]

    def formed(self) -> bool:
        """Every agent connected and seeing every other agent online."""
        names = {a.name for a in self.agents}
        try:
            statuses = self.statuses()
        except _NotYet:
            return False
        for agent, status in zip(self.agents, statuses, strict=True):
            rep = status["replication"]
            if rep["transport"]["state"] != "connected":
                return False
            if not names - {agent.name} <= set(rep["online_peers"]):
                return False
        return True

    def vvs(self) -> list[dict[str, int]]:
        return [s["replication"]["vv"] for s in self.statuses()]

    def wait_written(self, timeout: float, what: str) -> None:
        """Wait until some agent's version vector names every agent."""

        def done() -> bool:
            try:
                target = target_of(self.vvs())
            except _NotYet:
                return False
            return all(target.get(a.name, 0) > 0 for a in self.agents)

        wait_until(done, timeout, what, poll=0.25)

    def wait_covers(self, target: dict[str, int], timeout: float, what: str) -> float:
        """Wait until every agent's version vector covers ``target``; the seconds it took."""
        start = time.monotonic()

        def done() -> bool:
            try:
                return all(covers(vv, target) for vv in self.vvs())
            except _NotYet:
                return False

        wait_until(done, timeout, what, poll=0.25)
        return time.monotonic() - start

    def converge(self, what: str) -> float:
        return self.wait_covers(target_of(self.vvs()), CONVERGE_TIMEOUT_S, what)

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(lambda a: a.stop(), self.agents))
        for writer in self.extra:
            writer.kill()
        self.broker.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {a.name}\n{a.log_tail(15)}" for a in self.agents)


class _NotYet(Exception):
    pass


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """``AGENTS - 1`` agents formed on one Mosquitto (the late joiner makes AGENTS)."""
    m = Mesh(tmp_path_factory.mktemp("mesh"))
    m.broker.start()
    try:
        started = time.monotonic()
        for i in range(AGENTS - 1):
            m.add_agent(f"a{i}")
        wait_until(m.formed, FORM_TIMEOUT_S, f"{AGENTS - 1} agents to form a mesh", poll=0.5)
        print(f"{AGENTS - 1} agent processes formed a mesh in {time.monotonic() - started:.1f} s")
        yield m
    except BaseException:
        print(m.logs())
        raise
    finally:
        m.close()


def test_agents_converge_and_a_late_joiner_catches_up(mesh: Mesh) -> None:
    # The mesh can form before an agent's first write reaches anyone (an agent
    # that starts faster joins sooner): wait for every writer to be known first.
    mesh.wait_written(CONVERGE_TIMEOUT_S, "every agent's first write")
    took = mesh.converge("the agents to converge")
    print(f"{len(mesh.agents)} agents converged on a common target in {took:.2f} s")
    before = target_of(mesh.vvs())  # everything written before the late joiner starts
    assert all(before.get(a.name, 0) > 0 for a in mesh.agents), before  # everyone writes

    started = time.monotonic()
    late = mesh.add_agent("late")
    wait_until(mesh.formed, 30, "the late joiner to join", poll=0.25)
    caught_up = mesh.wait_covers(before, CONVERGE_TIMEOUT_S, "the late joiner to catch up")
    print(f"late joiner: joined and caught up {sum(before.values())} updates "
          f"{time.monotonic() - started:.1f} s after its process started "
          f"({caught_up:.2f} s after it joined)")  # fmt: skip
    # ... and it writes too: its updates reach everyone
    wait_until(lambda: (late.status() or {})["replication"]["vv"].get("late", 0) > 0, 10,
               "the late joiner's first update")  # fmt: skip
    took = mesh.converge("the mesh with the late joiner")
    print(f"{len(mesh.agents)} agents converged again in {took:.2f} s")


def test_a_writer_killed_with_sigkill_loses_nothing_it_acknowledged(
    mesh: Mesh, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    writer = WriterProcess(tmp_path, "w", mesh.broker.port, mesh=MESH)
    mesh.extra.append(writer)
    lines = writer.start(count=1_000_000)
    lines.wait_for(lambda x: "ack" in x, 30)
    time.sleep(rng.uniform(0.3, 1.5))  # mid-stream, at a random moment
    writer.kill()
    acked = [x for x in lines.snapshot() if "ack" in x]
    assert acked, "the writer acknowledged nothing before the kill"
    last = acked[-1]["seq"]
    assert [x["seq"] for x in acked] == list(range(1, last + 1))

    # Restarted on the same store: every acknowledged key is there, and its
    # own updates are exactly 1..seq (nothing lost in between, no seq reused).
    lines = writer.start(count=20)
    ready = lines.wait_for(lambda x: "ready" in x, 30)
    recovered = set(ready["keys"])
    missing = [x["ack"] for x in acked if x["ack"] not in recovered]
    assert not missing, f"seed {seed}: acknowledged but lost: {missing[:10]}"
    assert ready["seq"] >= last
    assert recovered == {f"w/k{i}" for i in range(1, ready["seq"] + 1)}
    done = lines.wait_for(lambda x: "done" in x, 30)
    assert done
    final = ready["seq"] + 20
    print(f"seed {seed}: killed after {last} acknowledged updates; recovered {ready['seq']}")

    # ... and everything acknowledged, before and after the kill, reaches every agent.
    took = mesh.wait_covers({"w": final}, CONVERGE_TIMEOUT_S, "the writer's updates to spread")
    print(f"all {final} updates of the writer reached {len(mesh.agents)} agents in {took:.2f} s")

    # A graceful stop retracts its presence: the peers see it offline.
    writer.stop()
    wait_until(
        lambda: all("w" not in s["replication"]["online_peers"] for s in mesh.statuses()),
        10,
        "the stopped writer to be seen offline",
    )


def test_broker_stopped_and_started_agents_reconnect_and_converge(mesh: Mesh) -> None:
    reconnects = {
        a.name: s["replication"]["transport"]["reconnects"]
        for a, s in zip(mesh.agents, mesh.statuses(), strict=True)
    }
    mesh.broker.stop()
    time.sleep(2.0)  # agents keep writing: durable locally, in their outboxes
    during = target_of(mesh.vvs())  # the status endpoints are local: they still answer
    mesh.broker.start()
    started = time.monotonic()
    wait_until(mesh.formed, 30, "the agents to reconnect", poll=0.25)
    took = mesh.wait_covers(during, CONVERGE_TIMEOUT_S, "updates made during the outage")
    print(f"broker restart: every agent reconnected, and held every update made during the "
          f"outage {time.monotonic() - started:.1f} s after the broker was back "
          f"({took:.2f} s after the mesh re-formed)")  # fmt: skip
    for agent, status in zip(mesh.agents, mesh.statuses(), strict=True):
        assert status["replication"]["transport"]["reconnects"] > reconnects[agent.name]
    mesh.converge("the mesh after the broker restart")


def test_operator_alarm_on_one_agent_shows_in_every_peers_status(mesh: Mesh) -> None:
    """Issue #4's scenario over Mosquitto: ``POST /alarm`` on A; B's S5 has it."""
    origin, peers = mesh.agents[0], mesh.agents[1:]
    answer = origin.raise_alarm(0.97, "estop", "test: emergency stop")
    alarm_id = answer["id"]
    assert answer["critical"] is True

    def heard() -> list[dict[str, Any]] | None:
        statuses = poll_statuses(peers)
        for status in statuses:
            if status is None or alarm_id not in status["replication"]["alarms_s5_ms"]:
                return None  # not yet taken by S5 (it arrived before: alarms_heard_ms)
        return [s for s in statuses if s is not None]

    statuses = wait_until(heard, 15, "the alarm to reach every peer", poll=0.1)
    for status in statuses:
        alarm = next(a for a in status["algedonic"]["alarms"] if a["id"] == alarm_id)
        assert alarm["node"] == origin.name
        assert alarm["remote"] is True
        assert alarm["critical"] is True
        assert alarm["source"] == "operator.estop"
    arrived = sorted(s["replication"]["alarms_heard_ms"][alarm_id] for s in statuses)
    at_s5 = sorted(s["replication"]["alarms_s5_ms"][alarm_id] for s in statuses)
    for status in statuses:
        rep = status["replication"]
        assert rep["alarms_heard_ms"][alarm_id] <= rep["alarms_s5_ms"][alarm_id]
    print(f"operator alarm on {origin.name} reached {len(peers)} peers in "
          f"{arrived[0]}..{arrived[-1]} ms, their S5 in {at_s5[0]}..{at_s5[-1]} ms")  # fmt: skip


class Rogue:
    """A plain paho client that records envelopes and publishes them again later."""

    def __init__(self, port: int) -> None:
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="rogue")
        self.recorded: list[tuple[str, bytes]] = []
        self.recording = True
        self._lock = threading.Lock()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self._lock:
            if self.recording and not message.retain:
                self.recorded.append((message.topic, bytes(message.payload)))

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)

    def stop_recording(self) -> list[tuple[str, bytes]]:
        with self._lock:
            self.recording = False
            return list(self.recorded)

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_replayed_duplicated_and_reordered_envelopes_change_nothing(
    mesh: Mesh, tmp_path: Path
) -> None:
    """A rogue re-publishes recorded deltas late, shuffled and twice each.

    The agents' gateways refuse every one as a replay (counted); the observer
    ``ob`` has no gateway, so it merges them: its state must not move (the
    writer's register keeps its latest value; joins are idempotent and
    HLC-ordered).
    """
    rogue = Rogue(mesh.broker.port)
    observer = WriterProcess(tmp_path, "ob", mesh.broker.port, mesh=MESH)
    writer = WriterProcess(tmp_path, "wr", mesh.broker.port, mesh=MESH)
    mesh.extra += [observer, writer]
    try:
        rogue.subscribe(f"vsm/{MESH}/d/+")
        time.sleep(0.5)  # the SUBACK
        ob = observer.start(count=0, watch="wr/x")
        wr = writer.start(count=40, interval=0.02, prefix="x", same_key=True)
        wr.wait_for(lambda x: "done" in x, 30)
        ob.wait_for(lambda x: x.get("status", {}).get("watch") == 40, 15)
        time.sleep(0.5)  # a few more agent deltas in the recording
        recorded = rogue.stop_recording()
        from_writer = [m for m in recorded if m[0].endswith("/d/wr")]
        assert len(from_writer) >= 5, "the writer's batches were not recorded"
        before = {
            a.name: s["gateway"]["reasons"].get("replay", 0)
            for a, s in zip(mesh.agents, mesh.statuses(), strict=True)
        }
        before_ob = ob.last("status")

        shuffled = recorded * 2
        random.shuffle(shuffled)
        rogue.publish(shuffled)
        print(f"rogue: re-published {len(recorded)} recorded delta envelopes twice each, "
              f"shuffled ({len(from_writer)} of them the writer's)")  # fmt: skip

        def expected(agent: AgentProcess) -> int:
            # an agent ignores its own topic before any check
            return 2 * sum(1 for topic, _ in recorded if not topic.endswith(f"/d/{agent.name}"))

        def all_counted() -> bool:
            statuses = mesh.statuses()
            return all(
                s["gateway"]["reasons"].get("replay", 0) - before[a.name] >= expected(a)
                for a, s in zip(mesh.agents, statuses, strict=True)
            )

        wait_until(all_counted, 20, "the agents to count every replay")
        time.sleep(1.0)  # anything still in flight
        for agent, status in zip(mesh.agents, mesh.statuses(), strict=True):
            replays = status["gateway"]["reasons"].get("replay", 0) - before[agent.name]
            assert replays == expected(agent), (agent.name, replays, expected(agent))
            assert status["gateway"]["quarantined"] == 0
            assert "internal-error" not in status["replication"]["refused"]

        time.sleep(0.3)  # a fresh status line from the observer
        after_ob = ob.last("status")
        assert after_ob["watch"] == 40  # the register still holds the writer's last value
        assert after_ob["vv"]["wr"] == before_ob["vv"]["wr"] == 40
        # it did receive and join them all (no gateway in front of it)
        received = after_ob["counts"]["in_delta"] - before_ob["counts"]["in_delta"]
        assert received >= 2 * sum(1 for t, _ in recorded if not t.endswith("/d/ob"))
        mesh.wait_covers({"wr": 40}, CONVERGE_TIMEOUT_S, "the writer's updates everywhere")
        mesh.converge("the mesh after the replays")
    finally:
        rogue.close()
        writer.kill()
        observer.kill()
