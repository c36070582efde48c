"""docs/protocol.md: every hex block marked ``<!-- check: NAME -->`` is rebuilt from the code.

A block is lines of hex followed by ``#`` comments; whitespace is ignored and
``…`` inside a run of hex stands for bytes shown in full elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vsm_edge.sync import MeshKey, NodeKey, Timestamp, _cbor, _envelope, sign_envelope

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text()

KEY = NodeKey(bytes(range(32)))
MESH = MeshKey(bytes(range(32, 64)))
HLC = Timestamp(1_700_000_000_000, 5)
NONCE = bytes(range(16))
IV = bytes(range(0xA0, 0xAC))
PAYLOAD = b"hello, mesh"
PLAIN = sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE)
ENCRYPTED = sign_envelope(PAYLOAD, KEY, hlc=HLC, kind="delta", nonce=NONCE, mesh_key=MESH, iv=IV)


def block(name: str) -> str:
    match = re.search(rf"<!-- check: {name} -->\n```text\n(.*?)```", DOC, re.DOTALL)
    assert match, f"no checked block {name!r} in docs/protocol.md"
    return "".join(line.split("#", 1)[0] for line in match.group(1).splitlines())


def assert_block(name: str, data: bytes) -> None:
    text = re.sub(r"\s+", "", block(name))
    assert re.fullmatch(r"[0-9a-f…]+", text), f"block {name!r} is not hex"
    pattern = "[0-9a-f]*".join(re.escape(part) for part in text.split("…"))
    assert re.fullmatch(pattern, data.hex()), f"block {name!r} does not match {data.hex()}"


def test_hlc_example() -> None:
    assert HLC.packed == 111411200000000005 == 0x018BCFE568000005
    assert_block("hlc", _cbor.dumps(HLC.packed))


def test_plain_envelope_example() -> None:
    assert_block("envelope-plain", PLAIN)
    assert f"{len(PLAIN)} bytes on the wire" in DOC
    assert KEY.public_key.hex() in DOC


def test_sig_structure_example() -> None:
    protected = _envelope.decode_envelope(PLAIN).protected
    assert_block("sig-structure-plain", _envelope._sig_structure(protected, PAYLOAD))


def test_encrypted_envelope_example() -> None:
    assert_block("envelope-encrypted", ENCRYPTED)
    assert f"IV `a0a1…ab`; {len(ENCRYPTED)} bytes" in DOC
    assert f"mesh kid\n`{MESH.kid.hex()}`" in DOC


def test_enc_structure_example() -> None:
    protected = _envelope.decode_envelope(ENCRYPTED).protected
    assert_block("enc-structure", _envelope._enc_structure(protected))


@pytest.mark.parametrize(
    ("label", "name"),
    [(-65537, "version"), (-65538, "hlc"), (-65539, "kind"), (-65540, "nonce"), (4, "kid")],
)
def test_label_table_matches_the_code(label: int, name: str) -> None:
    assert f"| {label} | {name} |" in DOC
    assert getattr(_envelope, f"LABEL_{name.upper()}") == label


def test_documented_limits_match_the_code() -> None:
    assert f"{_cbor.DEFAULT_MAX_SIZE:,} bytes" in DOC
    assert f"at most {_cbor.DEFAULT_MAX_DEPTH} deep" in DOC
    assert f"at most {_cbor.DEFAULT_MAX_ITEMS:,} data items" in DOC


def test_a_wrong_block_is_caught() -> None:
    # The checker itself can fail: one changed byte in the example does not match.
    with pytest.raises(AssertionError):
        assert_block("envelope-plain", PLAIN[:-1] + bytes([PLAIN[-1] ^ 1]))
