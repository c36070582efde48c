"""Interop with an independent COSE implementation (pycose), in both directions.

pycose 1.1 implements COSE_Sign1 with EdDSA (via the ``cryptography``
package, i.e. OpenSSL's Ed25519 — not libsodium) and COSE_Encrypt0, but has
no ChaCha20/Poly1305 (alg 24). For Encrypt0 the fixture below registers alg
24 in pycose's algorithm table, implemented with ``cryptography``'s
ChaCha20Poly1305 (OpenSSL). So pycose builds and parses the COSE_Encrypt0
structure and the RFC 9052 §5.3 Enc_structure (its AAD) itself, and a second
AEAD implementation seals and opens it: only the ten-line adapter is ours.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from pycose.algorithms import CoseAlgorithm, EdDSA
from pycose.headers import IV, KID, Algorithm, ContentType
from pycose.keys import OKPKey, SymmetricKey
from pycose.keys.curves import Ed25519
from pycose.messages import CoseMessage, Enc0Message, Sign1Message
from support.wire import mesh_key, node_key

from vsm_edge.sync import (
    SignatureError,
    decode_envelope,
    open_envelope,
    sign_envelope,
)

KEY = node_key(0)
MESH = mesh_key(0)
PAYLOAD = b"a 200-byte delta " * 12
NONCE = bytes(range(16))
IV_12 = bytes(range(12))
VERSION, HLC, KIND, NONCE_LABEL = -65537, -65538, -65539, -65540


class ChaCha20Poly1305Alg(CoseAlgorithm):
    """COSE alg 24 (RFC 9053 §4.3) for pycose, on cryptography's AEAD."""

    identifier = 24
    fullname = "CHACHA20/POLY1305"

    @classmethod
    def get_key_length(cls) -> int:
        return 32

    @classmethod
    def encrypt(cls, key: SymmetricKey, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return ChaCha20Poly1305(key.k).encrypt(nonce, data, aad)

    @classmethod
    def decrypt(cls, key: SymmetricKey, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        return ChaCha20Poly1305(key.k).decrypt(nonce, ciphertext, aad)


@pytest.fixture
def chacha_in_pycose() -> Iterator[type[CoseAlgorithm]]:
    table = CoseAlgorithm.get_registered_classes()
    assert 24 not in table, "pycose gained alg 24: drop the adapter and use its own"
    table[24] = table["CHACHA20/POLY1305"] = ChaCha20Poly1305Alg
    try:
        yield ChaCha20Poly1305Alg
    finally:
        del table[24], table["CHACHA20/POLY1305"]


def pycose_public(key: Any = KEY) -> OKPKey:
    return OKPKey(crv=Ed25519, x=key.public_key)


# ------------------------------------------------------------ ours -> pycose


def test_pycose_verifies_what_we_sign() -> None:
    data = sign_envelope(PAYLOAD, KEY, hlc=2**40 + 7, kind="delta", nonce=NONCE)
    msg = CoseMessage.decode(data)
    assert isinstance(msg, Sign1Message)
    msg.key = pycose_public()
    assert msg.verify_signature()
    assert msg.payload == PAYLOAD
    assert msg.phdr[Algorithm] == EdDSA
    assert msg.phdr[KID] == KEY.kid
    assert (msg.phdr[VERSION], msg.phdr[HLC], msg.phdr[KIND], msg.phdr[NONCE_LABEL]) == (
        1, 2**40 + 7, "delta", NONCE,
    )  # fmt: skip
    assert msg.uhdr == {}


def test_pycose_rejects_our_signature_under_another_key() -> None:
    data = sign_envelope(PAYLOAD, KEY, hlc=1, kind="delta", nonce=NONCE)
    msg = CoseMessage.decode(data)
    msg.key = pycose_public(node_key(1))
    assert not msg.verify_signature()


def test_pycose_verifies_and_decrypts_what_we_encrypt(
    chacha_in_pycose: type[CoseAlgorithm],
) -> None:
    data = sign_envelope(PAYLOAD, KEY, hlc=9, kind="delta", nonce=NONCE, mesh_key=MESH, iv=IV_12)
    outer = CoseMessage.decode(data)
    outer.key = pycose_public()
    assert outer.verify_signature()
    assert outer.phdr[ContentType] == 16
    inner = CoseMessage.decode(outer.payload)
    assert isinstance(inner, Enc0Message)
    assert inner.phdr[Algorithm] is chacha_in_pycose
    assert inner.uhdr[IV] == IV_12
    assert inner.uhdr[KID] == MESH.kid
    inner.key = SymmetricKey(k=MESH.key)
    # external_aad: the outer protected header, as the bytes on the wire.
    inner.external_aad = cbor2.loads(data).value[0]
    assert inner.decrypt() == PAYLOAD
    inner.external_aad = b""
    with pytest.raises(InvalidTag):  # the AAD binds the ciphertext to the outer header
        inner.decrypt()


# ------------------------------------------------------------ pycose -> ours


def pycose_sign1(phdr: dict[Any, Any], payload: bytes, key: Any = KEY) -> Sign1Message:
    msg = Sign1Message(phdr=phdr, payload=payload)
    msg.key = OKPKey(crv=Ed25519, d=key.seed, x=key.public_key)
    return msg


def test_we_verify_what_pycose_signs() -> None:
    # pycose writes the header in insertion order: deliberately not ours.
    phdr = {NONCE_LABEL: NONCE, Algorithm: EdDSA, HLC: 12345, KID: KEY.kid, KIND: "digest",
            VERSION: 1}  # fmt: skip
    data = pycose_sign1(phdr, PAYLOAD).encode()
    env, payload = open_envelope(data, KEY.public_key)
    assert payload == PAYLOAD
    assert (env.kid, env.hlc, env.kind, env.nonce, env.version) == (
        KEY.kid, 12345, "digest", NONCE, 1,
    )  # fmt: skip


def test_we_verify_pycose_in_our_own_header_order() -> None:
    phdr = {Algorithm: EdDSA, KID: KEY.kid, VERSION: 1, HLC: 5, KIND: "delta", NONCE_LABEL: NONCE}
    data = pycose_sign1(phdr, PAYLOAD).encode()
    # Same inputs, same deterministic Ed25519 signature: byte-identical output.
    assert data == sign_envelope(PAYLOAD, KEY, hlc=5, kind="delta", nonce=NONCE)


def test_we_reject_pycose_signed_with_another_key() -> None:
    phdr = {Algorithm: EdDSA, KID: KEY.kid, VERSION: 1, HLC: 5, KIND: "delta", NONCE_LABEL: NONCE}
    data = pycose_sign1(phdr, PAYLOAD, key=node_key(1)).encode()
    with pytest.raises(SignatureError):
        open_envelope(data, KEY.public_key)


@pytest.mark.parametrize("iv_first", [False, True], ids=["kid-iv", "iv-kid"])
def test_we_open_what_pycose_encrypts_and_signs(
    chacha_in_pycose: type[CoseAlgorithm], iv_first: bool
) -> None:
    phdr = {Algorithm: EdDSA, ContentType: 16, KID: KEY.kid, VERSION: 1, HLC: 77,
            KIND: "repair", NONCE_LABEL: NONCE}  # fmt: skip
    outer = pycose_sign1(phdr, b"")
    uhdr = {IV: IV_12, KID: MESH.kid} if iv_first else {KID: MESH.kid, IV: IV_12}
    inner = Enc0Message(
        phdr={Algorithm: chacha_in_pycose},
        uhdr=uhdr,
        payload=PAYLOAD,
        external_aad=outer.phdr_encoded,
        key=SymmetricKey(k=MESH.key),
    )
    outer.payload = inner.encode()
    data = outer.encode()
    env, payload = open_envelope(data, KEY.public_key, mesh_key=MESH)
    assert payload == PAYLOAD
    assert (env.encrypted, env.mesh_kid, env.iv, env.kind) == (True, MESH.kid, IV_12, "repair")
    assert decode_envelope(data) == env
