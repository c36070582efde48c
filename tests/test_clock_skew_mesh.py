"""Clock skew vs silence, with real agents on Mosquitto (issue 14, item 3).

Bug: after a restart on one host, S4 raised "n1's clock is -208.3 s from
ours (bound 30 s)": the stamp of a quiet peer's last report (or of its
alarm, retained by the broker) was compared with our clock, so its age was
taken for clock skew. S4 now measures skew only from live envelopes (their
HLC wall time against our wall clock at receipt); a peer whose last report
is old is "stale" in the mesh view, never "skewed".

Two ``vsm-edge run`` agents (n1, n2) in a closed zone on a private Mosquitto
(``support.adversary``), with a small bound (``s4.clock_skew_s = 2``,
``peer_stale_s = 3``) so a pause of a few seconds is "long": each raises an
alarm (retained on the broker, in its report), n2 stops, n1 restarts while
n2 is silent, n2 comes back. Neither may report clock skew. Then a member
whose clock really is 70 s ahead (its envelopes stamped so) must be reported
by both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.adversary import MESH, Adversary, HostileMesh, make_closed_zone, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]

HONEST = ["n1", "n2"]
BOUND_S = 2.0
STALE_S = 3.0
PAUSE_S = 3 * BOUND_S  # n2's silence: three times the bound
S4_CONFIG = f"\n[s4]\nclock_skew_s = {BOUND_S}\npeer_stale_s = {STALE_S}\n"


class SkewedAdversary(Adversary):
    """A member whose clock is ``offset_ms`` ahead of the host's: its envelopes say so."""

    offset_ms = 0

    def hlc(self) -> int:
        return super().hlc() + (self.offset_ms << 16)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[HostileMesh]:
    creds = make_closed_zone(tmp_path / "admin", [*HONEST, "mallory"])
    m = HostileMesh(tmp_path, creds, HONEST)
    for agent in m.agents:
        agent.config_path.write_text(agent.config_path.read_text() + S4_CONFIG)
    try:
        m.start()
        yield m
    finally:
        m.close()


def skew_patterns(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in status["s4"]["patterns"]["recent"] if p["name"] == "clock-skew"]


def skew_alarms(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in status["algedonic"]["alarms"] if a["source"] == "pattern.clock-skew"]


def no_skew_anywhere(mesh: HostileMesh, when: str) -> None:
    for agent in mesh.agents:
        if not agent.running:
            continue
        status = agent.wait_status()
        assert status["s4"]["patterns"]["counts"].get("clock-skew", 0) == 0, (
            f"{when}: {agent.name} reported clock skew: {skew_patterns(status)}"
        )
        assert not skew_alarms(status), f"{when}: {agent.name}: {skew_alarms(status)}"


def peer(status: dict[str, Any], node: str) -> dict[str, Any] | None:
    return next((p for p in status["peers"] if p["node"] == node), None)


def heard_alarm_of(status: dict[str, Any], node: str) -> bool:
    return any(a["node"] == node and a["remote"] for a in status["algedonic"]["alarms"])


def test_a_peer_silent_for_a_long_pause_is_stale_not_skewed_and_a_skewed_clock_is_found(
    mesh: HostileMesh,
) -> None:
    n1, n2 = mesh.agent("n1"), mesh.agent("n2")
    # each raises an alarm: retained on vsm/hx/alg/{node}, listed in its report
    mesh.wait_markers(20)
    no_skew_anywhere(mesh, "formed")

    # n2 falls silent for three times the bound: stale on n1, not skewed
    n2.stop()
    silent_since = time.monotonic()

    def n2_stale_on_n1() -> bool:
        status = n1.wait_status()
        found = peer(status, "n2")
        return found is not None and found["stale"]

    wait_for(n2_stale_on_n1, 20, "n1 to see n2 stale")
    time.sleep(max(0.0, PAUSE_S - (time.monotonic() - silent_since)))
    no_skew_anywhere(mesh, "n2 silent")

    # a restart on one host (n1) while n2 is still silent: n1 reads back
    # n2's old report and hears n2's retained alarm, stamped PAUSE_S ago
    n1.stop()
    n1.start()
    wait_for(
        lambda: heard_alarm_of(n1.wait_status(), "n2"), 30, "n1 to hear n2's retained alarm again"
    )
    time.sleep(2 * BOUND_S)  # what a clock really behind needs to be reported
    no_skew_anywhere(mesh, "n1 restarted, n2 silent")

    # n2 comes back after the long pause: n1's alarm (retained) and whatever
    # the broker kept for n2's session reach it late
    n2.start()
    mesh.wait_formed(45)
    wait_for(lambda: heard_alarm_of(n2.wait_status(), "n1"), 30, "n2 to hear n1's retained alarm")

    def fresh_both_ways() -> bool:
        statuses = mesh.statuses()
        if statuses is None:
            return False
        s1, s2 = statuses
        p2, p1 = peer(s1, "n2"), peer(s2, "n1")
        return p2 is not None and p1 is not None and not p2["stale"] and not p1["stale"]

    wait_for(fresh_both_ways, 30, "n1 and n2 to see each other fresh")
    time.sleep(2 * BOUND_S)
    no_skew_anywhere(mesh, "n2 back after a long pause")

    # a member whose clock really is 70 s ahead: its envelopes carry that
    # (past the HLC's 60 s, so the gateway refuses them: signed stamps from
    # the future are still the sender's clock)
    with SkewedAdversary(mesh.broker.port, MESH, "mallory", mesh.creds.keys["mallory"]) as mallory:
        mallory.announce()

        def knows_mallory() -> bool:
            statuses = mesh.statuses()
            return statuses is not None and all(
                "mallory" in s["replication"]["online_peers"] for s in statuses
            )

        wait_for(knows_mallory, 15, "every agent to know mallory's presence")
        mallory.offset_ms = 70_000

        def both_report_mallory() -> bool:
            mallory.send("sv", "digest", {"mesh": {"": [1, 1]}})
            statuses = mesh.statuses()
            return statuses is not None and all(
                any(p["subject"] == "mallory" for p in skew_patterns(s)) for s in statuses
            )

        wait_for(both_report_mallory, 20, "n1 and n2 to report mallory's clock", poll=0.5)
    statuses = mesh.statuses()
    assert statuses is not None
    for status in statuses:
        found = skew_patterns(status)
        assert [p["subject"] for p in found] == ["mallory"], found
        assert "+70." in found[0]["detail"] or "+69." in found[0]["detail"], found
