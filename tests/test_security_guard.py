"""The agent's ingress guard as a unit: retained and zone-exempt paths, zones, proposals.

Real keys, real envelopes, a real (not running) VSM runtime for S5 and pain;
no broker. The end-to-end behaviour is in tests/test_security_agent.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cbor2
import nacl.signing
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support.security import agent_config

from vsm_edge.agent import Policy, Runtime, sign_policy
from vsm_edge.agent.cli.aggregate import Aggregator, AggregatorConfig
from vsm_edge.agent.mesh.ingress import OPEN_ZONE, IngressGuard
from vsm_edge.models import Gateway, ZonePolicy, derive_key
from vsm_edge.sync import (
    HybridLogicalClock,
    Inbound,
    NodeKey,
    PeerInfo,
    decode_envelope,
    sign_envelope,
)

NOW = 1_700_000_000_000
SECRET = bytes(range(32))
ZONE_KEY = derive_key(SECRET, "zone")
ADMIN = nacl.signing.SigningKey(b"\x07" * 32)
ADMIN_NODE = NodeKey(b"\x07" * 32)  # the same key, as `policy publish` signs envelopes


def key(name: str) -> NodeKey:
    return NodeKey(name.encode().ljust(32, b"."))


def make_guard(
    tmp: Path,
    *,
    zone: str = "policy",
    quorum: int = 2,
    secrets: list[bytes] | None = None,
    node: str = "me",
) -> tuple[IngressGuard, Runtime, dict[str, PeerInfo]]:
    security: dict[str, Any] = {"zone": zone, "quarantine_quorum": quorum}
    if zone == "policy":
        security["mesh_secret_file"] = str(tmp / "unused")  # read by load(), not here
    config = agent_config(tmp, node, security=security, admin_keys=[bytes(ADMIN.verify_key)])
    guard = IngressGuard(
        config,
        node_key=key(node),
        zone_keys=[ZONE_KEY] if secrets is None else secrets,
        mesh_key=None,
        arbitrator=None,
        arbitrator_error=None,
        wall_clock=lambda: NOW,
    )
    runtime = Runtime(config, write_state=False)
    peers: dict[str, PeerInfo] = {}
    guard.attach(runtime, peers, HybridLogicalClock(node, lambda: NOW).now)
    return guard, runtime, peers


def inbound(
    signer: NodeKey,
    channel: str,
    *,
    retained: bool = False,
    signature_ok: bool = True,
    sender: str = "x",
    kind: str | None = None,
    hlc: int | None = None,
) -> Inbound:
    kind = kind or {"d": "delta", "sv": "digest", "to": "repair"}.get(channel, channel)
    raw = sign_envelope(
        cbor2.dumps({"k": 1}),
        signer,
        hlc=hlc if hlc is not None else NOW << 16,
        kind=kind,
        nonce=os.urandom(16),
    )
    return Inbound(sender, channel, decode_envelope(raw), signature_ok, retained, len(raw), NOW)


def zone_document(
    version: int, kids: list[bytes], *, epoch: int = 1, key: bytes = ZONE_KEY
) -> bytes:
    zone = ZonePolicy.build(kids, [key], epoch=epoch)
    return sign_policy(Policy(version=version, mesh="m", zone=zone.to_bytes()), ADMIN)


def install(guard: IngressGuard, runtime: Runtime, document: bytes) -> None:
    assert runtime.accept_policy(document, raise_errors=False)
    guard.policy_changed(runtime, document)


def alarm_sources(runtime: Runtime) -> set[str]:
    return {a.signal.source for a in runtime.algedonic.alarms.values()}


# -- retained and zone-exempt messages ------------------------------------------------


async def test_retained_messages_need_signature_and_zone_but_presence_only_a_signature(
    tmp_path: Path,
) -> None:
    guard, runtime, _ = make_guard(tmp_path)
    member, outsider = key("member"), key("outsider")
    assert guard.ingress(inbound(outsider, "presence", retained=True)) is None
    bad = inbound(member, "presence", retained=True, signature_ok=False)
    assert guard.ingress(bad) == "retained:bad-signature"
    assert guard.ingress(inbound(member, "d", retained=True)) == "retained:unexpected"
    assert guard.ingress(inbound(member, "alg", retained=True)) == "retained:no-zone"
    assert guard.ingress(inbound(ADMIN_NODE, "policy", retained=True)) is None
    install(guard, runtime, zone_document(1, [member.kid]))
    assert guard.ingress(inbound(member, "alg", retained=True)) is None
    assert guard.ingress(inbound(outsider, "alg", retained=True)) == "retained:not-in-zone"
    assert guard.ingress(inbound(outsider, "policy", retained=True)) == "retained:not-in-zone"
    guard.gateway.detector.quarantine("x", "flood", NOW)
    assert guard.ingress(inbound(member, "alg", retained=True)) == "retained:quarantined"
    assert guard.status().retained_refused["retained:unexpected"] == 1


async def test_the_aggregator_applies_the_agents_rule(tmp_path: Path) -> None:
    """One rule (gateway_check): an aggregator refuses what an open-mode agent refuses.

    Before, the aggregator let every signed retained message in (and named a
    forged one "bad-signature"): a quarantined node's retained signal too.
    """
    guard, _, _ = make_guard(tmp_path, zone="open")
    aggregator = Aggregator(AggregatorConfig(broker_url="mqtt://127.0.0.1:1", meshes=("m",)))
    mesh = aggregator.meshes["m"]
    mesh.gateway = Gateway(zone=OPEN_ZONE, replay_key=bytes(32), now_ms=NOW)
    observer = aggregator._ingress(mesh)
    member = key("member")
    live = inbound(member, "d")
    cases = [
        inbound(member, "presence", retained=True),
        inbound(member, "presence", retained=True, signature_ok=False),
        inbound(member, "alg", retained=True),
        inbound(member, "alg", retained=True, signature_ok=False),
        inbound(member, "d", retained=True),
        inbound(member, "sv", retained=True),
        inbound(member, "policy", retained=True),
        live,
        live,
        inbound(member, "presence", sender="x"),
    ]
    expected = [
        None,
        "retained:bad-signature",
        None,
        "retained:bad-signature",
        "retained:unexpected",
        "retained:unexpected",
        None,
        None,
        "gateway:replay",
        None,
    ]
    assert [guard.ingress(c) for c in cases] == expected
    assert [observer(c) for c in cases] == expected
    for gateway in (guard.gateway, mesh.gateway):
        gateway.detector.quarantine("x", "flood", NOW)
    alg = inbound(member, "alg", retained=True)
    assert guard.ingress(alg) == observer(alg) == "retained:quarantined"
    presence = inbound(member, "presence", retained=True)  # grants nothing: signature only
    assert guard.ingress(presence) is observer(presence) is None


async def test_live_presences_and_admin_policies_pass_a_closed_zone(tmp_path: Path) -> None:
    guard, _, _ = make_guard(tmp_path)
    outsider = key("outsider")
    # Fail closed: no zone yet, so deltas are refused, but keys can be announced
    # (a member admitted later must already be known) and the admin can speak.
    assert guard.ingress(inbound(outsider, "presence", sender="o")) is None
    assert guard.ingress(inbound(outsider, "d", sender="o")) == "gateway:no-zone"
    assert guard.ingress(inbound(ADMIN_NODE, "policy", sender="admin")) is None
    assert guard.ingress(inbound(outsider, "policy", sender="o")) == "gateway:no-zone"
    # the exemption skips the zone only: a replayed presence is still a replay
    presence = inbound(outsider, "presence", sender="o")
    assert guard.ingress(presence) is None
    assert guard.ingress(presence) == "gateway:replay"
    assert guard.ingress(inbound(key("o2"), "presence", signature_ok=False)) == (
        "gateway:bad-signature"
    )


async def test_open_mode_admits_every_key_until_a_zone_arrives(tmp_path: Path) -> None:
    guard, runtime, _ = make_guard(tmp_path, zone="open")
    member, outsider = key("member"), key("outsider")
    assert guard.gateway_zone is OPEN_ZONE
    assert guard.ingress(inbound(outsider, "d", sender="o")) is None
    install(guard, runtime, zone_document(1, [member.kid]))
    assert guard.ingress(inbound(outsider, "d", sender="o")) == "gateway:not-in-zone"
    assert guard.ingress(inbound(member, "d", sender="m")) is None
    status = guard.status()
    assert status.zone == "open"
    assert status.zone_policy.epoch == 1


# -- installing zones ---------------------------------------------------------------------


async def test_a_zone_is_replaced_by_newer_policies_but_never_by_a_lower_epoch(
    tmp_path: Path,
) -> None:
    guard, runtime, _ = make_guard(tmp_path)
    a, b = key("a"), key("b")
    install(guard, runtime, zone_document(10, [a.kid, b.kid], epoch=2))
    assert guard.zone is not None
    assert b.kid in guard.zone
    assert guard.zone_version == 10
    # b revoked: a newer epoch without it
    install(guard, runtime, zone_document(11, [a.kid], epoch=3))
    assert guard.ingress(inbound(b, "d", sender="b")) == "gateway:not-in-zone"
    # an older epoch (the admin's zone file rolled back?) cannot bring b back
    install(guard, runtime, zone_document(12, [a.kid, b.kid], epoch=1))
    assert guard.zone.epoch == 3
    assert guard.zone_version == 11
    assert "epoch 1 is older than the installed epoch 3" in (guard.zone_problem or "")
    assert "gateway.zone" in alarm_sources(runtime)
    # a newer policy without a zone leaves the zone as it is
    install(guard, runtime, sign_policy(Policy(version=13, mesh="m"), ADMIN))
    assert guard.zone.epoch == 3
    # a policy S5 refuses (not newer) changes nothing
    assert not runtime.accept_policy(zone_document(5, [b.kid], epoch=9), raise_errors=False)
    guard.policy_changed(runtime)
    assert guard.zone.epoch == 3


async def test_a_zone_under_a_secret_we_do_not_hold_stays_closed_and_hurts(
    tmp_path: Path,
) -> None:
    guard, runtime, _ = make_guard(tmp_path)
    other_key = derive_key(b"another mesh secret, 32 bytes...", "zone")
    install(guard, runtime, zone_document(1, [key("a").kid], key=other_key))
    assert guard.zone is None
    assert "no filter in the policy is under a key we hold" in (guard.zone_problem or "")
    assert guard.ingress(inbound(key("a"), "d")) == "gateway:no-zone"
    assert "gateway.zone" in alarm_sources(runtime)

    no_secret, runtime2, _ = make_guard(tmp_path / "2", secrets=[])
    install(no_secret, runtime2, zone_document(1, [key("a").kid]))
    assert "no mesh secret is configured" in (no_secret.zone_problem or "")


async def test_two_filters_during_a_secret_rotation_are_read_with_either_secret(
    tmp_path: Path,
) -> None:
    old, new = ZONE_KEY, derive_key(b"the new mesh secret, 32 bytes...", "zone")
    both = ZonePolicy.build([key("a").kid], [old, new], epoch=4)
    document = sign_policy(Policy(version=1, mesh="m", zone=both.to_bytes()), ADMIN)
    for secrets in ([old], [new], [new, old]):
        guard, runtime, _ = make_guard(tmp_path / str(len(secrets)) / secrets[0].hex()[:6],
                                       secrets=secrets)  # fmt: skip
        install(guard, runtime, document)
        assert guard.zone is not None
        assert key("a").kid in guard.zone


async def test_the_accepted_document_is_kept_and_restored(tmp_path: Path) -> None:
    guard, runtime, _ = make_guard(tmp_path)
    document = zone_document(7, [key("a").kid])
    install(guard, runtime, document)
    written: list[tuple[str, Any]] = []

    async def put(name: str, value: Any) -> None:
        written.append((name, value))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guard.run, put)
        kept = tmp_path / "me" / "policy.cbor"
        with trio.fail_after(5):
            while not kept.exists():
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert kept.read_bytes() == document
    assert written == []  # nothing quarantined: no proposal written
    again, runtime2, _ = make_guard(tmp_path)
    again.restore(runtime2, again.read_kept_policy())
    assert again.zone is not None
    assert again.zone_version == 7


# -- quarantine proposals ---------------------------------------------------------------------


def peer_info(name: str) -> PeerInfo:
    k = key(name)
    return PeerInfo(name, k.kid, k.public_key, 1, "z", True, 0.0, 0)


def proposal(signer: NodeKey, node: str, peers: list[list[Any]], *, hlc: int = NOW << 16) -> bytes:
    body = {"node": node, "peers": peers}
    return sign_envelope(
        cbor2.dumps(body), signer, hlc=hlc, kind="quarantine", nonce=os.urandom(16)
    )


UNTIL = NOW + 60_000


async def test_a_quorum_of_signed_proposals_quarantines_and_one_forger_cannot(
    tmp_path: Path,
) -> None:
    guard, runtime, peers = make_guard(tmp_path, zone="open", quorum=2)
    for name in ("p1", "p2", "p3"):
        peers[name] = peer_info(name)
    detector = guard.gateway.detector
    guard.on_proposal("p1", proposal(key("p1"), "p1", [["x", "flood", NOW, UNTIL]]))
    assert guard.proposals() == {"x": ["p1"]}
    assert not detector.is_quarantined("x", NOW)
    # p3 forges p2's proposal: signed with p3's key, so it does not verify as p2
    guard.on_proposal("p2", proposal(key("p3"), "p2", [["x", "flood", NOW, UNTIL]]))
    assert guard.status().proposal_checks["bad-signature"] == 1
    # p3 proposes in its own name, but claims the body is p2's: malformed
    guard.on_proposal("p3", proposal(key("p3"), "p2", [["x", "flood", NOW, UNTIL]]))
    assert guard.status().proposal_checks["malformed"] == 1
    # a proposer quarantining itself counts for nothing
    guard.on_proposal("p3", proposal(key("p3"), "p3", [["p3", "flood", NOW, UNTIL]]))
    assert not detector.is_quarantined("p3", NOW)
    assert not detector.is_quarantined("x", NOW)
    # the second honest proposer makes the quorum
    guard.on_proposal("p2", proposal(key("p2"), "p2", [["x", "flood", NOW, UNTIL]]))
    assert detector.is_quarantined("x", NOW)
    assert detector.quarantined()[0].reason == "mesh-quorum"
    assert "gateway.quarantine.x" in alarm_sources(runtime)
    assert guard.own_proposal() == ()  # decided by quorum: not proposed again
    # an older envelope of p1 cannot replace its newer proposal
    guard.on_proposal("p1", proposal(key("p1"), "p1", [], hlc=(NOW - 1000) << 16))
    assert guard.status().proposal_checks["stale"] == 1
    assert guard.proposals()["x"] == ["p1", "p2"]
    # expired proposals no longer count
    assert guard.proposals(UNTIL + 1) == {}


async def test_proposals_wait_for_the_proposers_key_and_need_the_zone(tmp_path: Path) -> None:
    guard, runtime, peers = make_guard(tmp_path, quorum=1)
    blob = proposal(key("p1"), "p1", [["x", "flood", NOW, UNTIL]])
    guard.on_proposal("p1", blob)
    assert guard.proposals() == {}  # p1's presence (its key) is not known yet
    peers["p1"] = peer_info("p1")
    guard.on_proposal("p1", blob)
    assert guard.status().proposal_checks["not-in-zone"] == 1  # policy mode, no zone
    install(guard, runtime, zone_document(1, [key("p1").kid]))
    guard.on_proposal("p1", blob)
    assert guard.gateway.detector.is_quarantined("x", NOW)
    guard.on_proposal("p2", ["not", "bytes"])
    assert guard.status().proposal_checks["malformed"] == 1


async def test_quorum_zero_only_reports(tmp_path: Path) -> None:
    guard, _, peers = make_guard(tmp_path, zone="open", quorum=0)
    for name in ("p1", "p2"):
        peers[name] = peer_info(name)
        guard.on_proposal(name, proposal(key(name), name, [["x", "flood", NOW, UNTIL]]))
    assert guard.proposals() == {"x": ["p1", "p2"]}
    assert not guard.gateway.detector.is_quarantined("x", NOW)


async def test_own_proposal_is_signed_and_verifies_at_a_peer(tmp_path: Path) -> None:
    mine, _, _ = make_guard(tmp_path / "mine", zone="open")
    mine.gateway.detector.quarantine("z", "flood", NOW)
    mine.gateway.detector.quarantine("w", "mesh-quorum", NOW)
    own = mine.own_proposal()
    assert [p[0] for p in own] == ["z"]
    theirs, _, peers = make_guard(tmp_path / "theirs", zone="open", quorum=5, node="they")
    peers["me"] = peer_info("me")
    theirs.on_proposal("me", mine.proposal_blob(own))
    assert theirs.proposals() == {"z": ["me"]}


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_any_proposal_value_is_checked_without_raising(tmp_path_factory: Any, blob: bytes) -> None:
    async def check() -> None:
        guard, _, peers = make_guard(tmp_path_factory.mktemp("g"), zone="open", quorum=1)
        peers["p1"] = peer_info("p1")
        guard.on_proposal("p1", blob)
        good = bytearray(proposal(key("p1"), "p1", [["x", "flood", NOW, UNTIL]]))
        if blob:
            good[len(blob) % len(good)] ^= blob[0] | 1  # a bit-flipped real proposal
        guard.on_proposal("p1", bytes(good))
        assert sum(guard.status().proposal_checks.values()) == 2

    trio.run(check)


@pytest.mark.parametrize("truncate", [1, 10, 50])
async def test_truncated_proposals_are_malformed(tmp_path: Path, truncate: int) -> None:
    guard, _, peers = make_guard(tmp_path, zone="open", quorum=1)
    peers["p1"] = peer_info("p1")
    guard.on_proposal("p1", proposal(key("p1"), "p1", [["x", "flood", NOW, UNTIL]])[:-truncate])
    assert guard.proposals() == {}
    assert sum(guard.status().proposal_checks.values()) == 1


async def test_the_human_status_shows_zone_quarantines_and_problems(tmp_path: Path) -> None:
    from dataclasses import replace

    from vsm_edge.agent.cli.main import format_status
    from vsm_edge.agent.mesh.status import NodeStatus

    guard, runtime, _ = make_guard(tmp_path, zone="policy", secrets=[])
    install(guard, runtime, zone_document(1, [key("a").kid]))  # unreadable: no secret
    guard.gateway.detector.quarantine("z", "flood", NOW)
    status = replace(runtime.status(), sections={"gateway": guard.status()})
    text = format_status(NodeStatus(status))
    assert "zone policy: none yet: closed" in text
    assert "problem: policy v1: zone no mesh secret is configured" in text
    assert "quarantined: z (flood)" in text


# -- binding a node id to its key (presences) -------------------------------------------


async def test_open_mode_pins_the_first_key_of_a_node_and_keeps_the_pin(tmp_path: Path) -> None:
    guard, _, _ = make_guard(tmp_path, zone="open")
    real, stranger = key("n2").kid, key("evil").kid
    assert guard.bind_key("n2", real, None) is None
    assert guard.bind_key("n2", stranger, real) == "key-pinned"
    assert guard.bind_key("n2", real, real) is None
    # the pins outlive the process (written by the guard's task, read by load())
    from vsm_edge.agent.mesh.ingress import _read_pins, _write_atomic

    _write_atomic(guard._pins_path, cbor2.dumps(dict(guard._pins)))
    again, _, _ = make_guard(tmp_path, zone="open")
    again._pins = _read_pins(again._pins_path)
    assert again.bind_key("n2", stranger, None) == "key-pinned"


async def test_closed_mode_binds_only_keys_of_the_zone(tmp_path: Path) -> None:
    guard, runtime, _ = make_guard(tmp_path)
    a, b, outsider = key("a").kid, key("b").kid, key("o").kid
    # no zone yet: tentative, nothing pinned (the gateway refuses everything else)
    assert guard.bind_key("a", outsider, None) is None
    install(guard, runtime, zone_document(1, [a, b]))
    assert guard.bind_key("a", outsider, None) == "not-in-zone"
    assert guard.bind_key("a", a, None) is None
    # another member cannot take a's id while a's key is in the zone ...
    assert guard.bind_key("a", b, a) == "key-pinned"
    # ... but the admin rotates a's key by replacing it in the zone
    a2 = key("a2").kid
    install(guard, runtime, zone_document(2, [a2, b], epoch=2))
    assert guard.bind_key("a", a2, a) is None


async def test_open_mode_mints_new_identities_only_at_a_bounded_rate(tmp_path: Path) -> None:
    # A writer rotating identities to stay under the flood rule runs out of them.
    from vsm_edge.agent.mesh import ingress as _security

    guard, _, _ = make_guard(tmp_path, zone="open")
    burst = int(_security.NEW_KEY_BURST)
    for i in range(burst):
        assert guard.bind_key(f"id{i}", key(f"k{i}").kid, None) is None
    assert guard.bind_key("one-more", key("one-more").kid, None) == "too-many-new-keys"
    assert guard.bind_key("id0", key("k0").kid, None) is None  # known ids are not limited
