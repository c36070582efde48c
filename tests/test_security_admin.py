"""The admin's side: `vsm-edge zone|policy`, the [security] config, policy documents with zones.

The command line runs in-process through ``main`` (the same code as the
installed ``vsm-edge``), on real files in a temporary directory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import cbor2
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.brokers import free_port

from vsm_edge.agent import ConfigError, Policy, PolicyError, parse_config, verify_policy
from vsm_edge.agent._errors import AgentError
from vsm_edge.agent.cli.admin import describe_document, load_zone_file
from vsm_edge.agent.cli.main import main
from vsm_edge.agent.mesh.ingress import IngressGuard
from vsm_edge.agent.vsm.s5 import MAX_ZONE_BYTES, sign_policy
from vsm_edge.models import ZonePolicy, derive_key
from vsm_edge.sync import NodeKey, load_mesh_key, save_node_key, save_public_key

ADMIN = nacl.signing.SigningKey(b"\x05" * 32)
ADMIN_PUB = bytes(ADMIN.verify_key)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture
def admin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    save_node_key(NodeKey(b"\x05" * 32), tmp_path / "admin.key")
    for name in ("n1", "n2", "n3"):
        k = NodeKey(name.encode().ljust(32, b"-"))
        save_node_key(k, tmp_path / f"{name}.key")
        save_public_key(k.public_key, tmp_path / f"{name}.pub")
    return tmp_path


def node_kid(name: str) -> bytes:
    return NodeKey(name.encode().ljust(32, b"-")).kid


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert run(*argv) == 1
    return capsys.readouterr().err


# -- zone files ---------------------------------------------------------------------------


def test_zone_init_writes_the_zone_file_and_a_secret_both_0600(
    admin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run("zone", "init", "--mesh", "plant") == 0
    assert mode(admin_dir / "zone.json") == 0o600
    assert mode(admin_dir / "mesh.secret") == 0o600
    assert len(load_mesh_key(admin_dir / "mesh.secret").key) == 32
    zone = load_zone_file(admin_dir / "zone.json")
    assert (zone.mesh, zone.epoch, zone.members, zone.secrets) == ("plant", 1, (), ("mesh.secret",))
    assert "exists (refusing to overwrite it)" in error_of(capsys, "zone", "init", "--mesh", "x")
    err = error_of(capsys, "zone", "init", "--mesh", "bad/mesh", "--zone-file", "z2.json")
    assert "--mesh 'bad/mesh'" in err
    # an existing secret is reused, but only when it is private
    os.chmod(admin_dir / "mesh.secret", 0o644)
    err = error_of(capsys, "zone", "init", "--mesh", "m", "--zone-file", "z3.json")
    assert "mesh secret" in err
    assert "chmod 600" in err


def test_zone_add_remove_and_list(admin_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("zone", "init", "--mesh", "plant") == 0
    assert run("zone", "add", "n1.pub") == 0  # a public key file: named after it
    n2_pub = (admin_dir / "n2.pub").read_text().strip()
    assert run("zone", "add", n2_pub, "--name", "pump") == 0  # a public key in hex
    assert run("zone", "add", node_kid("n3").hex()) == 0  # only a kid
    zone = load_zone_file("zone.json")
    assert [m.name for m in zone.members] == ["n1", "pump", node_kid("n3").hex()[:12]]
    assert [m.kid for m in zone.members] == [node_kid(n) for n in ("n1", "n2", "n3")]
    assert zone.members[2].public_key is None
    assert zone.epoch == 1  # additions keep the epoch
    assert "already in the zone as 'n1'" in error_of(capsys, "zone", "add", "n1.pub", "--name", "x")
    assert "already named 'pump'" in error_of(capsys, "zone", "add", "n3.pub", "--name", "pump")
    err = error_of(capsys, "zone", "add", "not-a-key")
    assert "neither a public key file" in err
    capsys.readouterr()
    assert run("zone", "list") == 0
    listing = capsys.readouterr().out
    assert "mesh plant  epoch 1  members 3" in listing
    assert "(kid only)" in listing
    assert run("zone", "remove", "pump") == 0
    assert run("zone", "remove", node_kid("n1").hex()) == 0  # by kid
    zone = load_zone_file("zone.json")
    assert [m.name for m in zone.members] == [node_kid("n3").hex()[:12]]
    assert zone.epoch == 3  # each removal is a rebuild under a new epoch
    assert "no member named 'pump'" in error_of(capsys, "zone", "remove", "pump")
    capsys.readouterr()
    assert run("zone", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 3
    assert mode(admin_dir / "zone.json") == 0o600


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "is not valid JSON"),
        (b"[]", "expected a JSON object"),
        (b'{"format": "other"}', "\"format\" must be 'vsm-edge-zone'"),
        (b'{"format": "vsm-edge-zone", "version": 2}', "unsupported version 2"),
        (
            b'{"format": "vsm-edge-zone", "version": 1, "mesh": "m", "epoch": 1, '
            b'"policy_version": 0, "extra": 1}',
            "unknown key 'extra'",
        ),
        (
            b'{"format": "vsm-edge-zone", "version": 1, "mesh": "m", "epoch": -1, '
            b'"policy_version": 0}',
            '"epoch" must be a non-negative integer',
        ),
        (
            b'{"format": "vsm-edge-zone", "version": 1, "mesh": "m", "epoch": 1, '
            b'"policy_version": 0, "members": [{"name": "a", "kid": "zz"}]}',
            "members[0]: kid must be 32 lowercase hex digits",
        ),
        (
            b'{"format": "vsm-edge-zone", "version": 1, "mesh": "m", "epoch": 1, '
            b'"policy_version": 0, "members": [{"name": "a", "kid": "' + b"0" * 32 + b'", '
            b'"public_key": "' + b"1" * 64 + b'"}]}',
            "members[0]: kid is not the public key's id",
        ),
    ],
)
def test_a_bad_zone_file_is_named_with_its_problem(
    admin_dir: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    (admin_dir / "zone.json").write_bytes(content)
    err = error_of(capsys, "zone", "list")
    assert "zone file zone.json" in err
    assert problem in err


def test_a_missing_zone_file_says_how_to_make_one(capsys: pytest.CaptureFixture[str]) -> None:
    err = error_of(capsys, "zone", "list", "--zone-file", "/nonexistent/zone.json")
    assert "does not exist (create it with `vsm-edge zone init --mesh ID`)" in err


# -- signing, showing, publishing ----------------------------------------------------------


def test_policy_sign_builds_the_zone_from_the_file(
    admin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("zone", "init", "--mesh", "plant")
    run("zone", "add", "n1.pub")
    run("zone", "add", "n2.pub")
    args = ("policy", "sign", "--admin-key", "admin.key", "--deny", "valve.*")
    assert run(*args, "--limit", "vent.open=0:80") == 0
    document = (admin_dir / "policy.cbor").read_bytes()
    assert mode(admin_dir / "policy.cbor") == 0o644  # signed and public
    policy = verify_policy(document, [ADMIN_PUB])
    assert policy.mesh == "plant"
    assert policy.denied_commands == ("valve.*",)
    assert policy.limits == {"vent.open": (0.0, 80.0)}
    secret = load_mesh_key(admin_dir / "mesh.secret").key
    assert policy.zone is not None
    zone = ZonePolicy.from_bytes(policy.zone, [derive_key(secret, "zone")])
    assert zone.epoch == 1
    assert node_kid("n1") in zone
    assert node_kid("n2") in zone
    assert node_kid("n3") not in zone
    first = policy.version
    assert load_zone_file("zone.json").policy_version == first
    # revoke n2: the next document has a newer version, a newer epoch and no n2
    run("zone", "remove", "n2")
    assert run("policy", "sign", "--admin-key", "admin.key", "--out", "p2.cbor") == 0
    second = verify_policy((admin_dir / "p2.cbor").read_bytes(), [ADMIN_PUB])
    assert second.version > first
    assert second.zone is not None
    zone2 = ZonePolicy.from_bytes(second.zone, [derive_key(secret, "zone")])
    assert zone2.epoch == 2
    assert node_kid("n2") not in zone2
    capsys.readouterr()
    assert run("policy", "show", "p2.cbor", "--mesh-secret", "mesh.secret") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["zone"]["epoch"] == 2
    assert shown["signer"] == ADMIN_PUB.hex()
    err = error_of(capsys, "policy", "sign", "--admin-key", "admin.key", "--version", str(first))
    assert "is not newer than the last signed version" in err


def test_policy_sign_errors_name_the_problem(
    admin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("zone", "init", "--mesh", "plant")
    err = error_of(capsys, "policy", "sign", "--admin-key", "missing.key")
    assert "admin key missing.key: no such file (make one with `vsm-edge keygen" in err
    os.chmod(admin_dir / "admin.key", 0o640)
    err = error_of(capsys, "policy", "sign", "--admin-key", "admin.key")
    assert "is accessible by group or others (mode 0640); chmod 600 it" in err
    os.chmod(admin_dir / "admin.key", 0o600)
    err = error_of(capsys, "policy", "sign", "--admin-key", "admin.key", "--limit", "x=5:1")
    assert "--limit 'x=5:1': expected GLOB=MIN:MAX" in err
    err = error_of(capsys, "policy", "sign", "--admin-key", "admin.key", "--mesh", "other")
    assert "differs from the zone file's mesh 'plant'" in err
    os.unlink(admin_dir / "mesh.secret")
    err = error_of(capsys, "policy", "sign", "--admin-key", "admin.key")
    assert "mesh secret mesh.secret: no such file" in err
    err = error_of(capsys, "policy", "sign", "--admin-key", "admin.key", "--no-zone",
                   "--zone-file", "none.json")  # fmt: skip
    assert "--mesh is required without a zone file" in err
    no_zone = (
        "policy",
        "sign",
        "--admin-key",
        "admin.key",
        "--no-zone",
        "--zone-file",
        "none.json",
    )
    assert run(*no_zone, "--mesh", "plant", "--out", "plain.cbor") == 0
    assert verify_policy((admin_dir / "plain.cbor").read_bytes(), [ADMIN_PUB]).zone is None
    (admin_dir / "junk.cbor").write_bytes(b"\xa1junk")
    assert "junk.cbor: not a signed policy document" in error_of(capsys, "policy", "show",
                                                                  "junk.cbor")  # fmt: skip


def test_policy_publish_to_an_unreachable_broker_fails_clearly(
    admin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run("zone", "init", "--mesh", "plant")
    run("policy", "sign", "--admin-key", "admin.key")
    url = f"mqtt://127.0.0.1:{free_port()}"  # nothing listens there
    err = error_of(capsys, "policy", "publish", "policy.cbor", "--broker", url,
                   "--admin-key", "admin.key", "--timeout", "1")  # fmt: skip
    assert f"broker {url} did not accept a connection within 1 s" in err
    err = error_of(capsys, "policy", "publish", "policy.cbor", "--broker", "http://x",
                   "--admin-key", "admin.key")  # fmt: skip
    assert "--broker: broker URL must start with mqtt:// or mqtts://" in err
    err = error_of(capsys, "policy", "publish", "policy.cbor", "--broker", url,
                   "--admin-key", "admin.key", "--mesh", "elsewhere")  # fmt: skip
    assert "the document is for mesh 'plant', not 'elsewhere'" in err


def test_the_zone_may_hold_thousands_of_members_within_the_document_limit() -> None:
    from vsm_edge.agent.cli.admin import Member, ZoneFile, sign_zone_policy

    kids = [NodeKey(i.to_bytes(32, "big")).kid for i in range(1, 2001)]
    zone = ZoneFile("m", members=tuple(Member(f"n{i}", k) for i, k in enumerate(kids)))
    old, new = b"o" * 32, b"n" * 32  # two filters, as during a secret rotation
    document = sign_zone_policy(zone, b"\x05" * 32, mesh="m", version=1, secrets=[old, new])
    policy = verify_policy(document, [ADMIN_PUB])
    assert policy.zone is not None
    for secret in (old, new):
        decoded = ZonePolicy.from_bytes(policy.zone, [derive_key(secret, "zone")])
        assert all(k in decoded for k in kids)
    many = tuple(Member(f"n{i}", os.urandom(16)) for i in range(8_000))
    with pytest.raises(AgentError, match="raise --fp-rate or split the mesh"):
        sign_zone_policy(ZoneFile("m", members=many), b"\x05" * 32, mesh="m", version=1,
                         secrets=[old, new])  # fmt: skip


# -- the policy document with a zone -------------------------------------------------------


def test_documents_without_a_zone_still_verify() -> None:
    # A document as signed before zones existed: the six-key map, built by hand.
    body = {"version": 4, "mesh": "m", "allow": ["*"], "deny": [], "safe": [], "limits": {}}
    canonical = cbor2.dumps(body, canonical=True)
    signature = ADMIN.sign(canonical).signature
    document = cbor2.dumps({"policy": body, "kid": ADMIN_PUB, "sig": signature}, canonical=True)
    policy = verify_policy(document, [ADMIN_PUB])
    assert policy.version == 4
    assert policy.zone is None
    assert sign_policy(Policy(version=4, mesh="m"), ADMIN) == document  # byte for byte


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        (None, "zone must be"),
        (b"", "zone must be"),
        ("text", "zone must be"),
        (b"x" * (MAX_ZONE_BYTES + 1), "zone must be"),
    ],
)
def test_a_bad_zone_field_is_refused(zone: Any, message: str) -> None:
    body: dict[str, Any] = Policy(version=1, mesh="m").to_cbor()
    body["zone"] = zone
    with pytest.raises(PolicyError, match=message):
        Policy.from_cbor(body)


@settings(max_examples=150)
@given(st.data())
def test_bit_flips_in_a_zone_document_never_verify(data: st.DataObject) -> None:
    zone = ZonePolicy.build([b"k" * 16], [b"z" * 32], epoch=1).to_bytes()
    doc = bytearray(sign_policy(Policy(version=1, mesh="m", zone=zone), ADMIN))
    i = data.draw(st.integers(0, len(doc) - 1))
    doc[i] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(PolicyError):
        verify_policy(bytes(doc), [ADMIN_PUB])


def test_describe_document_rejects_a_tampered_signature() -> None:
    doc = bytearray(sign_policy(Policy(version=1, mesh="m"), ADMIN))
    doc[-1] ^= 1
    with pytest.raises(AgentError, match="does not verify"):
        describe_document(bytes(doc))


# -- the [security] section ------------------------------------------------------------------


def config(security: dict[str, Any], **s5: Any) -> Any:
    return parse_config({"node": {"id": "n"}, "security": security, "s5": s5}, base=Path("/b"))


def test_security_section_parses_with_paths_relative_to_the_file() -> None:
    cfg = config(
        {"zone": "policy", "mesh_secret_file": "k/mesh.secret", "quarantine_quorum": 3},
        admin_keys=[ADMIN_PUB.hex()],
    )
    assert cfg.security.zone == "policy"
    assert cfg.security.mesh_secret_file == Path("/b/k/mesh.secret")
    assert cfg.security.quarantine_quorum == 3
    assert config({}).security.zone == "open"


@pytest.mark.parametrize(
    ("security", "s5", "message"),
    [
        ({"zone": "closed"}, {}, "security.zone: must be one of open, policy"),
        ({"zone": "policy", "mesh_secret_file": "s"}, {}, "needs s5.admin_keys"),
        ({"zone": "policy"}, {"admin_keys": [ADMIN_PUB.hex()]}, "needs security.mesh_secret_file"),
        ({"previous_mesh_secret_file": "old"}, {}, "needs mesh_secret_file too"),
        ({"quarantine_quorum": -1}, {}, "security.quarantine_quorum: must be >= 0"),
        ({"mesh_secret": "x"}, {}, "security.mesh_secret: unknown key"),
    ],
)
def test_security_config_errors_name_the_key(
    security: dict[str, Any], s5: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        config(security, **s5)


def test_a_readable_mesh_secret_stops_the_agent_naming_the_setting(tmp_path: Path) -> None:
    secret = tmp_path / "mesh.secret"
    secret.write_text("00" * 32 + "\n")
    os.chmod(secret, 0o644)
    cfg = parse_config(
        {
            "node": {"id": "n", "data_dir": str(tmp_path)},
            "security": {"mesh_secret_file": "mesh.secret"},
        },
        base=tmp_path,
    )
    with pytest.raises(AgentError, match=r"security.mesh_secret_file: .* chmod 600 it"):
        IngressGuard.load(cfg, NodeKey(b"\x01" * 32), wall_clock=lambda: 0)
    missing = parse_config(
        {"node": {"id": "n"}, "security": {"mesh_key_file": "nope.key"}}, base=tmp_path
    )
    with pytest.raises(AgentError, match=r"security\.mesh_key_file: cannot read"):
        IngressGuard.load(missing, NodeKey(b"\x01" * 32), wall_clock=lambda: 0)
