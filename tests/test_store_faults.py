"""Real agents whose store fails: a full tmpfs, and an old node.db restored.

Each agent is a ``vsm-edge run`` process on a real Mosquitto (tests/support).
The full disk is real: the agent's data directory is a 2 MB tmpfs mounted by
the test (as root; skipped otherwise) and filled by a filler file until the
kernel says ENOSPC; removing the filler gives the space back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.brokers import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from support.mesh import AgentProcess, wait_until

from vsm_edge.sync import CrdtDocument, ORMap, Store

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

TIMEOUT_S = 30.0


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """``path`` as a fresh tmpfs of ``size``; skips unless root and mount works."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> Path:
    """Write ``path/filler`` until the file system is full; returns the filler."""
    filler = path / "filler"
    with pytest.raises(OSError) as full, filler.open("wb") as f:  # noqa: PT012
        while True:
            f.write(b"\0" * 16384)
            f.flush()
    assert full.value.errno == errno.ENOSPC, full.value
    return filler


def status(agent: AgentProcess) -> dict[str, Any]:
    """The agent's status; fails if the endpoint does not answer (a hung agent)."""
    doc = agent.status()
    assert doc is not None, f"{agent.name}'s status endpoint did not answer"
    return doc


def status_when(agent: AgentProcess, ok: bool) -> dict[str, Any] | None:
    """The agent's status if its store is ``ok`` (True) or faulted (False), else None."""
    doc = status(agent)
    return doc if doc["store"]["ok"] is ok else None


def holding(agent: AgentProcess) -> dict[str, Any] | None:
    doc = status(agent)
    return doc if doc["store"]["readings_held"] > 0 else None


def store_alarms(doc: dict[str, Any], node: str) -> list[dict[str, Any]]:
    return [
        a
        for a in doc["algedonic"]["alarms"]
        if a["node"] == node and a["source"] == "store" and a["valence"] == "pain"
    ]


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for agent in made:
        agent.stop()


def test_an_agent_on_a_full_disk_stays_up_recovers_and_stops_cleanly(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    with small_tmpfs(tmp_path / "n4") as disk:
        n1 = AgentProcess(tmp_path, "n1", mosquitto.url, protocol="5")
        n4 = AgentProcess(tmp_path, "n4", mosquitto.url, protocol="5", sensors=3)
        n4.log_path = tmp_path / "n4.log"  # the log is not on the small disk
        agents += [n1, n4]
        n1.start()
        n4.start()
        n1.wait_status()
        n4.wait_status()
        wait_until(
            lambda: "n4" in status(n1)["replication"]["vv"],
            TIMEOUT_S,
            "n1 to hold n4's first writes",
        )
        assert status(n4)["store"]["ok"] is True

        filler = fill(disk)
        doc = wait_until(lambda: status_when(n4, ok=False), TIMEOUT_S, "n4's store fault")
        fault = doc["store"]["fault"]
        assert fault["cause"] == "disk-full", fault
        # Responsive while faulted: the status endpoint answers, readings are
        # held (not written), and the fault is pain on n4 and, through the
        # algedonic channel, at n1.
        held = wait_until(lambda: holding(n4), TIMEOUT_S, "n4 to hold readings")
        assert held["store"]["ok"] is False
        assert held["s1"]["units"]["temp0"]["emitted"] > 0
        assert store_alarms(held, "n4"), held["algedonic"]["alarms"]
        wait_until(lambda: store_alarms(status(n1), "n4"), TIMEOUT_S, "n4's pain at n1")
        log = n4.log_path.read_text()
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert len(errors) == 1, errors  # one line for the fault, not one per write
        assert "store fault (disk-full)" in errors[0]
        stuck = status(n4)["replication"]["vv"]["n4"]

        filler.unlink()  # space returns
        doc = wait_until(lambda: status_when(n4, ok=True), TIMEOUT_S, "n4's recovery")
        assert (doc["store"]["faults"], doc["store"]["recoveries"]) >= (1, 1)
        assert all(a["acked"] for a in store_alarms(doc, "n4"))  # pain cleared
        wait_until(
            lambda: status(n1)["replication"]["vv"].get("n4", 0) > stuck,
            TIMEOUT_S,
            "n4's writes after the recovery at n1",
        )
        assert "store takes writes again" in n4.log_path.read_text()

        # Full again, and stopped while full: a clean exit, and the mesh sees
        # it offline (its goodbye, or its will).
        filler = fill(disk)
        wait_until(lambda: status_when(n4, ok=False), TIMEOUT_S, "the second fault")
        assert n4.stop() == 0, n4.log_tail()
        wait_until(
            lambda: "n4" not in status(n1)["replication"]["online_peers"],
            TIMEOUT_S,
            "n1 to see n4 offline",
        )
        assert "Traceback" not in n4.log_path.read_text()


def read_mesh(path: Path) -> ORMap:
    """The ``mesh`` document as a stopped agent's node.db holds it."""
    doc: CrdtDocument[ORMap] = CrdtDocument("mesh", ORMap)
    with Store.open(path) as store:
        snapshot = store.get_snapshot("mesh")
        if snapshot is not None:
            doc.load(snapshot.state)
        for entry in store.uncovered_deltas("mesh"):
            doc.apply(entry.delta)
    return doc.state


def test_an_agent_restarted_on_an_old_node_db_mints_no_dot_its_peers_hold(
    tmp_path: Path, mosquitto: Mosquitto, agents: list[AgentProcess]
) -> None:
    n1 = AgentProcess(tmp_path, "n1", mosquitto.url, protocol="5")
    n2 = AgentProcess(tmp_path, "n2", mosquitto.url, protocol="5", sensors=3)
    agents += [n1, n2]
    n1.start()
    n2.start()
    n1.wait_status()

    def n2_at_n1() -> int:
        return int(status(n1)["replication"]["vv"].get("n2", 0))

    wait_until(lambda: n2_at_n1() > 0, TIMEOUT_S, "n2's first writes at n1")
    assert n2.stop() == 0
    backup = tmp_path / "n2-backup.db"
    shutil.copy(n2.data_dir / "node.db", backup)  # closed cleanly: no WAL beside it
    with Store.open(backup) as old:
        backed_up = old.log_spans("mesh")["n2"].last_seq
    n2.start()
    # n2 writes on; n1 takes far more than the backup holds.
    wait_until(lambda: n2_at_n1() > backed_up + 20, TIMEOUT_S, "n2's newer writes at n1")
    assert n2.stop() == 0
    held = n2_at_n1()
    for suffix in ("", "-wal", "-shm"):
        (n2.data_dir / f"node.db{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, n2.data_dir / "node.db")  # the tail is lost
    # n2 comes back while the broker holds every packet: it has read its
    # readings (and before this fix, minted them on top of the old store)
    # before it can hear from n1. Its claim waits (up to 5 s) instead.
    mosquitto.freeze()
    try:
        n2.start()
        wait_until(
            lambda: (n2.status() or {}).get("s1", {}).get("units", {}).get("temp0", {})
            .get("emitted", 0) > 1,
            TIMEOUT_S,
            "n2's readings while the broker is frozen",
        )  # fmt: skip
    finally:
        mosquitto.thaw()
    wait_until(lambda: n2_at_n1() > held + 5, TIMEOUT_S, "n2's writes after the restore")
    # Stopped together once n1 holds all of n2 and n2 all it wrote before.
    wait_until(
        lambda: status(n2)["replication"]["vv"].get("n2", 0) == n2_at_n1(),
        TIMEOUT_S,
        "n1 and n2 to agree on n2's counter",
    )
    assert n2.stop() == 0
    assert n1.stop() == 0
    # n2 logs each delta it mints (n1's copies of its lost tail come back as
    # remote state, not into its log): a logged counter in backed_up+1..held
    # would be one minted a second time, with other content than n1 holds.
    with Store.open(n2.data_dir / "node.db") as store:
        minted = store.deltas_after("mesh", "n2", backed_up).entries
    assert minted, "n2 wrote nothing after the restore"
    assert min(e.first_seq for e in minted) > held, [(e.first_seq, e.last_seq) for e in minted]
    at_n1, at_n2 = read_mesh(n1.data_dir / "node.db"), read_mesh(n2.data_dir / "node.db")
    # And both ended with the same entries of n2.
    n2_keys = {k for k in at_n2.value() if isinstance(k, str) and k.startswith("n2/")}
    assert n2_keys
    for key in n2_keys:
        assert at_n1.value().get(key) == at_n2.value()[key], key
    assert at_n1.digest().max("n2") == at_n2.digest().max("n2")
    assert at_n2.digest().max("n2") > held
