"""`vsm-edge command` across a real mesh: agents as processes on a private Mosquitto.

Two ``vsm-edge run`` agents in a closed zone (``support.adversary``): n1 has a
simulated actuator ``valve`` (``set``, 0..10, confirming its commands); the
admin-signed policy grants n2's key the commands ``valve.*`` on n1, and
nobody else anything. From n2's
host the real command line (a separate process) commands n1's valve through
n2's status endpoint and n2's signed MQTT envelope:

* in range: ``done``, exit code 0, and n1's valve takes the value;
* out of range: ``refused`` with n1's S1 reason, exit code 1;
* signed by a member key the policy does not grant (mallory, on the wire):
  refused "not authorized", and nothing runs;
* a member's malformed commands (signed, valid envelopes): each refused and
  counted (``cmd:malformed``, ``cmd:wrong-node``), nothing runs, n1 serves on;
* n1 down: ``timed-out``; the signed command (captured on the broker) reaches
  n1 after it restarts (its MQTT session, and mallory replaying the captured
  envelope): refused "stale", never executed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.adversary import (
    MESH,
    Adversary,
    HostileMesh,
    make_closed_zone,
    wait_for,
)

from vsm_edge.agent.cli.main import main as cli_main
from vsm_edge.agent.mesh.commands import decode_outcome
from vsm_edge.sync import cbor_loads, decode_envelope

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

VALVE = """
[[units]]
name = "valve"
kind = "simulated-actuator"
[units.options]
minimum = 0
maximum = 10
confirm = true
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileMesh]:
    workdir = tmp_path_factory.mktemp("remote-commands")
    creds = make_closed_zone(workdir / "admin", ["n1", "n2", "mallory"])
    # The policy again, now granting n2 (and only n2) the valve of n1.
    code = cli_main(["policy", "sign", "--admin-key", str(creds.directory / "admin.key"),
                     "--zone-file", str(creds.directory / "zone.json"),
                     "--grant", f"{creds.directory / 'n2.pub'}=n1:valve.*",
                     "--out", str(creds.policy)])  # fmt: skip
    assert code == 0
    hostile = HostileMesh(workdir, creds, ["n1", "n2"])
    n1 = hostile.agent("n1")
    n1.config_path.write_text(n1.config_path.read_text() + VALVE)
    try:
        hostile.start()
        yield hostile
    finally:
        hostile.close()


def command(mesh: HostileMesh, *argv: str) -> tuple[int, str]:
    """`vsm-edge command ARGV --config n2.toml`, as a process on n2's host."""
    n2 = mesh.agent("n2")
    argv_ = [sys.executable, "-m", "vsm_edge.agent", "command", *argv]
    proc = subprocess.run(
        [*argv_, "--config", str(n2.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def applied(mesh: HostileMesh) -> int:
    """How many commands n1's valve was given since n1 started (S1's count)."""
    status = mesh.agent("n1").status()
    assert status is not None
    return int(status["s1"]["units"]["valve"]["commands_applied"])


def commands_section(mesh: HostileMesh, name: str) -> dict[str, Any]:
    status = mesh.agent(name).status()
    assert status is not None
    return dict(status["commands"])


def test_a_granted_command_from_n2s_host_is_done_on_n1(mesh: HostileMesh) -> None:
    code, out = command(mesh, "n1", "valve", "set", "4")
    assert (code, out) == (0, "done: n1 valve.set"), mesh.logs()
    assert applied(mesh) == 1
    recent = commands_section(mesh, "n1")["recent"]
    assert [(r["issuer"], r["target"], r["status"]) for r in recent][-1:] == [
        ("n2", "valve.set", "done")
    ]
    issued = commands_section(mesh, "n2")["recent"]
    assert [(r["target"], r["status"]) for r in issued][-1:] == [("n1:valve.set", "done")]


def test_out_of_range_is_refused_with_n1s_reason(mesh: HostileMesh) -> None:
    before = applied(mesh)
    code, out = command(mesh, "n1", "valve", "set", "99", "--json")
    assert code == 1, out
    outcome = json.loads(out)
    assert outcome["status"] == "refused"
    assert outcome["node"] == "n1"
    assert "valve.set" in outcome["why"]
    assert "10" in outcome["why"]  # the maximum the unit declares
    code, line = command(mesh, "n1", "valve", "set", "99")
    assert code == 1
    assert line.startswith("refused: n1 valve.set: s1: valve.set"), line
    assert applied(mesh) == before


def test_a_key_the_policy_does_not_grant_is_refused_not_authorized(mesh: HostileMesh) -> None:
    creds = mesh.creds
    with Adversary(mesh.broker.port, MESH, "mallory", creds.keys["mallory"]) as mallory:
        mallory.announce()
        mallory.subscribe(f"vsm/{MESH}/cmdr/mallory")
        wait_for(
            lambda: "mallory" in (mesh.agent("n1").status() or {})["replication"]["online_peers"],
            15,
            "n1 to know mallory",
        )
        before = applied(mesh)
        ident = os.urandom(16)
        body = {"id": ident, "node": "n1", "unit": "valve", "cmd": "set", "value": 7,
                "exp": 2**47}  # fmt: skip
        payload = _sealed(mallory, body, creds.secret)
        mallory.publish(f"vsm/{MESH}/cmd/n1", payload)

        def answered() -> Any:
            for _topic, data in mallory.take():
                return _opened(data, creds.secret)
            return None

        outcome = decode_outcome(wait_for(answered, 15, "n1's outcome to mallory"))
        assert (outcome.id, outcome.node, outcome.status, outcome.why) == (
            ident, "n1", "refused", "not authorized"
        )  # fmt: skip
        assert applied(mesh) == before


def test_a_members_malformed_commands_are_refused_counted_and_harmless(
    mesh: HostileMesh,
) -> None:
    creds = mesh.creds
    with Adversary(mesh.broker.port, MESH, "mallory", creds.keys["mallory"]) as mallory:
        mallory.announce()
        wait_for(
            lambda: "mallory" in (mesh.agent("n1").status() or {})["replication"]["online_peers"],
            15,
            "n1 to know mallory",
        )
        before = applied(mesh)
        good = {"id": os.urandom(16), "node": "n1", "unit": "valve", "cmd": "set", "value": 1,
                "exp": 2**47}  # fmt: skip
        bad: list[Any] = [
            [1, 2, 3],
            "set valve",
            {**good, "value": float("nan")},
            {**good, "id": b"short"},
            {**good, "exp": -1},
            {**good, "extra": True},
            {**good, "value": "x" * 5000},
            {**good, "node": "n2"},  # not for n1: wrong-node
        ]
        for body in bad:
            mallory.publish(f"vsm/{MESH}/cmd/n1", _sealed(mallory, body, creds.secret))

        def counted() -> dict[str, int] | None:
            status = mesh.agent("n1").status() or {}
            refused = status.get("commands", {}).get("refused", {})
            return refused if sum(refused.values()) >= len(bad) else None

        refused = wait_for(counted, 15, "n1 to refuse every malformed command")
        assert refused == {"cmd:malformed": len(bad) - 1, "cmd:wrong-node": 1}
        assert applied(mesh) == before
    code, out = command(mesh, "n1", "valve", "set", "2")  # n1 still serves commands
    assert (code, out) == (0, "done: n1 valve.set")


def test_a_command_to_a_node_that_is_down_times_out_and_is_refused_stale_later(
    mesh: HostileMesh,
) -> None:
    creds = mesh.creds
    n1 = mesh.agent("n1")
    with Adversary(mesh.broker.port, MESH, "mallory", creds.keys["mallory"]) as mallory:
        mallory.subscribe(f"vsm/{MESH}/cmd/n1")  # the eavesdropper captures the command
        n1.stop()
        code, out = command(mesh, "n1", "valve", "set", "6", "--timeout", "2", "--json")
        assert code == 1, out
        outcome = json.loads(out)
        assert outcome["status"] == "timed-out"
        assert outcome["why"] == "no outcome from n1 within 2 s"
        captured = wait_for(mallory.take, 10, "the captured command")
        [(topic, payload)] = captured
        assert topic == f"vsm/{MESH}/cmd/n1"
        n1.start()
        mesh.wait_formed(45)
        mallory.publish(topic, payload)  # the captured, signed command, replayed

        def stale() -> bool:
            recent = commands_section(mesh, "n1")["recent"]
            return any(r["id"] == outcome["id"] and r["why"] == "stale" for r in recent)

        refused = commands_section(mesh, "n1")["refused"]
        # Whether n1's MQTT session delivered the queued command first (refused
        # stale) or the replay arrived first: stale, and a second copy is a replay.
        wait_for(stale, 15, "n1 to refuse the command as stale")
        recent = commands_section(mesh, "n1")["recent"]
        mine = [r for r in recent if r["id"] == outcome["id"]]
        assert {(r["status"], r["why"]) for r in mine} == {("refused", "stale")}
        assert commands_section(mesh, "n1")["executed"].get("done", 0) == 0  # since its restart
        assert applied(mesh) == 0
        assert refused.get("cmd:malformed", 0) == 0


def _sealed(adversary: Adversary, body: dict[str, Any], secret: Path) -> bytes:
    """``body`` signed by ``adversary``, encrypted under the mesh key when the mesh has one."""
    from vsm_edge.sync import cbor_dumps, sign_envelope

    key = _mesh_key(secret)
    return sign_envelope(
        cbor_dumps(body),
        adversary.key,  # type: ignore[arg-type]
        hlc=adversary.hlc(),
        kind="cmd",
        nonce=os.urandom(16),
        mesh_key=key,
        iv=os.urandom(12) if key is not None else None,
    )


def _opened(payload: bytes, secret: Path) -> Any:
    envelope = decode_envelope(payload)
    return cbor_loads(envelope.plaintext(_mesh_key(secret)))


def _mesh_key(secret: Path) -> Any:
    """The mesh's encryption key, when the closed mesh's configuration uses one."""
    return None
