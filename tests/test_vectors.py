"""tests/vectors/cose_sign1.json: our codec against the independently built vectors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

import vsm_edge.sync as sync
from vsm_edge.sync import MeshKey, NodeKey, decode_envelope, sign_envelope

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS: list[dict[str, Any]] = json.loads((VECTORS_DIR / "cose_sign1.json").read_text())
POSITIVE = [v for v in VECTORS if "error" not in v]
NEGATIVE = [v for v in VECTORS if "error" in v]
REQUIRED = {"description", "public_key", "cose", "payload"}


def test_vectors_file_is_what_the_script_generates() -> None:
    spec = importlib.util.spec_from_file_location(
        "make_cose_sign1", VECTORS_DIR / "make_cose_sign1.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (VECTORS_DIR / "cose_sign1.json").read_text() == module.render()


def test_vectors_cover_the_cases() -> None:
    assert all(v.keys() >= REQUIRED for v in VECTORS)
    assert all(len(bytes.fromhex(v["public_key"])) == 32 for v in VECTORS)
    assert {v["encrypted"] for v in POSITIVE} == {False, True}
    assert {v["error"] for v in NEGATIVE} == {
        "MalformedError", "UnsupportedVersionError", "SignatureError", "DecryptError",
    }  # fmt: skip


@pytest.mark.parametrize("v", POSITIVE, ids=[v["description"] for v in POSITIVE])
def test_positive_vector(v: dict[str, Any]) -> None:
    data = bytes.fromhex(v["cose"])
    env = decode_envelope(data)
    assert env.kid.hex() == v["kid"]
    assert env.hlc == int(v["hlc"])
    assert (env.kind, env.nonce.hex(), env.version) == (v["kind"], v["nonce"], v["version"])
    assert env.payload.hex() == v["payload"]
    assert env.encrypted is v["encrypted"]
    public_key = bytes.fromhex(v["public_key"])
    env.verify(public_key)
    key = NodeKey(bytes.fromhex(v["seed"]))
    assert key.public_key == public_key
    assert key.kid == env.kid
    kwargs: dict[str, Any] = {"hlc": int(v["hlc"]), "kind": v["kind"],
                              "nonce": bytes.fromhex(v["nonce"])}  # fmt: skip
    if v["encrypted"]:
        mesh = MeshKey(bytes.fromhex(v["mesh_key"]))
        assert mesh.kid.hex() == env.mesh_kid.hex() == v["mesh_kid"]  # type: ignore[union-attr]
        assert env.iv is not None
        assert env.iv.hex() == v["iv"]
        assert env.plaintext(mesh).hex() == v["plaintext"]
        kwargs |= {"mesh_key": mesh, "iv": env.iv}
        content = bytes.fromhex(v["plaintext"])
    else:
        assert env.plaintext().hex() == v["payload"]
        content = bytes.fromhex(v["payload"])
    # Our encoder writes exactly the vector's bytes.
    assert sign_envelope(content, key, **kwargs) == data


@pytest.mark.parametrize("v", NEGATIVE, ids=[v["description"] for v in NEGATIVE])
def test_negative_vector(v: dict[str, Any]) -> None:
    error = getattr(sync, v["error"])
    data = bytes.fromhex(v["cose"])
    mesh = MeshKey(bytes.fromhex(v["mesh_key"])) if "mesh_key" in v else None
    stage = v["error_stage"]
    if stage == "decode":
        with pytest.raises(error):
            decode_envelope(data)
        return
    env = decode_envelope(data)
    if stage == "verify":
        with pytest.raises(error):
            env.verify(bytes.fromhex(v["public_key"]))
        return
    assert stage == "decrypt"
    env.verify(bytes.fromhex(v["public_key"]))
    with pytest.raises(error):
        env.plaintext(mesh)
