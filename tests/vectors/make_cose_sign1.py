"""Generate tests/vectors/cose_sign1.json: envelope test vectors for other languages.

    python tests/vectors/make_cose_sign1.py          # rewrite the JSON
    python tests/vectors/make_cose_sign1.py --check  # exit 1 if it is stale

Built from fixed seeds, without vsm_edge: cbor2 for CBOR (its canonical mode
sorts keys length-first, which for our labels — 1, 3, 4 in one byte, the
private-use labels in five — is the same order as RFC 8949 §4.2.1's bytewise
rule) and PyNaCl for Ed25519 and the IETF ChaCha20-Poly1305 AEAD. Ed25519 is
deterministic, so the output is byte-for-byte stable. tests/test_vectors.py
checks our codec against every vector, and that this script reproduces the file.

Fields of each vector (hex strings unless noted):
  description   what the vector exercises
  seed          the signer's 32-byte Ed25519 seed (test keys only!)
  public_key    the 32-byte Ed25519 public key to verify with
  cose          the tagged COSE_Sign1, as sent on the wire
  payload       the Sign1 payload exactly as signed (for encrypted vectors:
                the tagged COSE_Encrypt0)
  kid, hlc (decimal string: u64 exceeds JSON-safe integers), kind (text),
  nonce, version (number), encrypted (bool)
  mesh_key, mesh_kid, iv, plaintext   for encrypted vectors
  error         for negative vectors: the expected exception class
                (MalformedError, UnsupportedVersionError, SignatureError,
                DecryptError), and error_stage: decode, verify or decrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

import cbor2
import nacl.bindings
import nacl.signing

OUT = Path(__file__).with_name("cose_sign1.json")

ALG, CONTENT_TYPE, KID, IV = 1, 3, 4, 5
VERSION, HLC, KIND, NONCE = -65537, -65538, -65539, -65540


def seed(name: str) -> bytes:
    return hashlib.sha256(f"vsm-edge test vector {name}".encode()).digest()


def public_key(sd: bytes) -> bytes:
    return bytes(nacl.signing.SigningKey(sd).verify_key)


def kid_of(sd: bytes) -> bytes:
    return hashlib.sha256(public_key(sd)).digest()[:16]


def mesh_kid_of(key: bytes) -> bytes:
    return hmac.new(key, b"vsm-edge mesh key id v1", hashlib.sha256).digest()[:8]


def dumps(obj: Any) -> bytes:
    return cbor2.dumps(obj, canonical=True)


def sign1(sd: bytes, protected: bytes, payload: bytes) -> bytes:
    to_sign = dumps(["Signature1", protected, b"", payload])
    signature = nacl.signing.SigningKey(sd).sign(to_sign).signature
    return dumps(cbor2.CBORTag(18, [protected, {}, payload, signature]))


def header(sd: bytes, hlc: int, kind: str, nonce: bytes) -> dict[int, Any]:
    return {ALG: -8, KID: kid_of(sd), VERSION: 1, HLC: hlc, KIND: kind, NONCE: nonce}


def encrypt0(mesh: bytes, iv: bytes, protected: bytes, plaintext: bytes) -> bytes:
    enc_protected = dumps({ALG: 24})
    aad = dumps(["Encrypt0", enc_protected, protected])
    ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, aad, iv, mesh)
    return dumps(cbor2.CBORTag(16, [enc_protected, {KID: mesh_kid_of(mesh), IV: iv}, ciphertext]))


def vector(
    description: str,
    sd: bytes,
    hdr: dict[int, Any],
    payload: bytes,
    cose: bytes,
    **extra: Any,
) -> dict[str, Any]:
    v: dict[str, Any] = {
        "description": description,
        "seed": sd.hex(),
        "public_key": public_key(sd).hex(),
        "cose": cose.hex(),
        "payload": payload.hex(),
        "kid": hdr[KID].hex() if isinstance(hdr.get(KID), bytes) else None,
        "hlc": str(hdr[HLC]),
        "kind": hdr[KIND],
        "nonce": hdr[NONCE].hex(),
        "version": hdr[VERSION],
        "encrypted": CONTENT_TYPE in hdr,
    }
    for name, value in extra.items():
        v[name] = value.hex() if isinstance(value, bytes) else value
    return v


def plain_vector(
    description: str, sd: bytes, hdr: dict[int, Any], payload: bytes, **extra: Any
) -> dict[str, Any]:
    return vector(description, sd, hdr, payload, sign1(sd, dumps(hdr), payload), **extra)


def encrypted_vector(
    description: str,
    sd: bytes,
    hdr: dict[int, Any],
    mesh: bytes,
    iv: bytes,
    plaintext: bytes,
    **extra: Any,
) -> dict[str, Any]:
    hdr = {**hdr, CONTENT_TYPE: 16}
    protected = dumps(hdr)
    payload = encrypt0(mesh, iv, protected, plaintext)
    return vector(
        description,
        sd,
        hdr,
        payload,
        sign1(sd, protected, payload),
        mesh_key=mesh,
        mesh_kid=mesh_kid_of(mesh),
        iv=iv,
        plaintext=plaintext,
        **extra,
    )


def flip_last(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def build() -> list[dict[str, Any]]:
    a, b = seed("node a"), seed("node b")
    mesh = seed("mesh key")
    other_mesh = seed("another mesh key")
    iv = bytes(range(0xA0, 0xAC))
    n16 = bytes(range(16))
    hlc = (1_700_000_000_000 << 16) | 5
    delta = bytes(range(200))
    vectors = [
        plain_vector("delta, 200-byte payload", a, header(a, hlc, "delta", n16), delta),
        plain_vector(
            "digest, empty payload, hlc 0, 8-byte nonce (minimum)",
            a,
            header(a, 0, "digest", b"\x08" * 8),
            b"",
        ),
        plain_vector(
            "presence, 24-byte payload (2-byte length head), hlc 2**64-1, 64-byte nonce (maximum)",
            b,
            header(b, 2**64 - 1, "presence", bytes(range(64))),
            b"p" * 24,
        ),
        plain_vector(
            "chunk, 300-byte payload (3-byte length head), 32-character kind",
            b,
            header(b, hlc, "chunk" + "0" * 27, n16),
            bytes(300),
        ),
        plain_vector(
            "kind with digits, dash and underscore", a, header(a, hlc, "x-ray_9", n16), b"\x00"
        ),
        encrypted_vector(
            "encrypted delta (COSE_Encrypt0, ChaCha20/Poly1305)",
            a,
            header(a, hlc, "delta", n16),
            mesh,
            iv,
            delta,
        ),
        encrypted_vector(
            "encrypted alg signal, empty plaintext",
            b,
            header(b, hlc + 1, "alg", n16),
            mesh,
            bytes(range(0xB0, 0xBC)),  # never reuse an IV under one key
            b"",
        ),
    ]

    # ---- negative vectors
    good = bytes.fromhex(vectors[0]["cose"])
    good_hdr = header(a, hlc, "delta", n16)
    neg = []
    neg.append(
        vector(
            "bad signature: last signature byte flipped",
            a,
            good_hdr,
            delta,
            flip_last(good),
            error="SignatureError",
            error_stage="verify",
        )
    )
    assert good.count(delta) == 1
    tampered = good.replace(delta, b"\xff" + delta[1:])
    neg.append(
        vector(
            "payload changed after signing",
            a,
            good_hdr,
            b"\xff" + delta[1:],
            tampered,
            error="SignatureError",
            error_stage="verify",
        )
    )
    wrong_key = vector(
        "verified with another node's public key (kid mismatch)",
        a,
        good_hdr,
        delta,
        good,
        error="SignatureError",
        error_stage="verify",
    )
    wrong_key["public_key"] = public_key(b).hex()
    neg.append(wrong_key)
    v2 = {**good_hdr, VERSION: 2}
    neg.append(
        plain_vector(
            "unknown protocol version 2 (validly signed)",
            a,
            v2,
            delta,
            error="UnsupportedVersionError",
            error_stage="decode",
        )
    )
    # Hand-built protected headers (cbor2 would not write them): each validly signed.
    body = b"".join(dumps(k) + dumps(v) for k, v in good_hdr.items())
    dup = b"\xa7" + body + dumps(ALG) + dumps(-8)
    neg.append(
        vector(
            "duplicate label in the protected header (validly signed)",
            a,
            good_hdr,
            delta,
            sign1(a, dup, delta),
            error="MalformedError",
            error_stage="decode",
        )
    )
    non_shortest = b"\xa6" + body.replace(dumps(VERSION) + dumps(1), dumps(VERSION) + b"\x18\x01")
    assert non_shortest != dumps(good_hdr)
    neg.append(
        vector(
            "non-shortest integer (version 1 as 0x1801, validly signed)",
            a,
            good_hdr,
            delta,
            sign1(a, non_shortest, delta),
            error="MalformedError",
            error_stage="decode",
        )
    )
    protected = dumps(good_hdr)
    sig = nacl.signing.SigningKey(a).sign(dumps(["Signature1", protected, b"", delta])).signature
    indefinite = (
        b"\xd2\x84"
        + dumps(protected)
        + b"\xa0"
        + b"\x5f"
        + dumps(delta[:100])
        + dumps(delta[100:])
        + b"\xff"
        + dumps(sig)
    )
    neg.append(
        vector(
            "indefinite-length payload (same bytes, chunked)",
            a,
            good_hdr,
            delta,
            indefinite,
            error="MalformedError",
            error_stage="decode",
        )
    )
    neg.append(
        vector(
            "trailing byte after the envelope",
            a,
            good_hdr,
            delta,
            good + b"\x00",
            error="MalformedError",
            error_stage="decode",
        )
    )
    neg.append(
        vector(
            "untagged COSE_Sign1",
            a,
            good_hdr,
            delta,
            good[1:],
            error="MalformedError",
            error_stage="decode",
        )
    )
    unprotected = b"\xd2\x84" + dumps(protected) + b"\xa1\x04\x41\x00" + dumps(delta) + dumps(sig)
    neg.append(
        vector(
            "non-empty unprotected header",
            a,
            good_hdr,
            delta,
            unprotected,
            error="MalformedError",
            error_stage="decode",
        )
    )

    enc = vectors[5]
    wrong_mesh = dict(
        enc,
        description="encrypted, opened with another mesh key",
        mesh_key=other_mesh.hex(),
        error="DecryptError",
        error_stage="decrypt",
    )
    neg.append(wrong_mesh)
    enc_hdr = {**good_hdr, CONTENT_TYPE: 16}
    enc_prot = dumps(enc_hdr)
    enc0 = cbor2.loads(bytes.fromhex(enc["payload"]))
    enc0.value[2] = flip_last(enc0.value[2])
    forged_payload = dumps(enc0)
    neg.append(
        vector(
            "encrypted, Poly1305 tag altered then re-signed by the sender",
            a,
            enc_hdr,
            forged_payload,
            sign1(a, enc_prot, forged_payload),
            mesh_key=mesh,
            mesh_kid=mesh_kid_of(mesh),
            iv=iv,
            plaintext=delta,
            error="DecryptError",
            error_stage="decrypt",
        )
    )
    return vectors + neg


def render() -> str:
    return json.dumps(build(), indent=1) + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(build())} vectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
