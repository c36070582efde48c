"""The COSE_Sign1 envelope (and COSE_Encrypt0 payload): structure, strictness, limits, fuzz."""

from __future__ import annotations

import dataclasses
from typing import Any

import nacl.bindings
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.wire import (
    ALG,
    CONTENT_TYPE,
    HLC,
    KID,
    KIND,
    NONCE,
    VERSION,
    build_sign1,
    envelopes,
    header,
    mesh_key,
    node_key,
    raw_cbor,
)

from vsm_edge.sync import (
    DecryptError,
    Envelope,
    LimitExceededError,
    MalformedError,
    SignatureError,
    Timestamp,
    UnsupportedVersionError,
    WireError,
    _cbor,
    _envelope,
    decode_envelope,
    open_envelope,
    sign_envelope,
)

KEY = node_key(0)
OTHER = node_key(1)
MESH = mesh_key(0)
PAYLOAD = bytes(range(200))
NONCE_16 = bytes(range(100, 116))
IV_12 = bytes(range(50, 62))


def plain(payload: bytes = PAYLOAD, **kw: Any) -> bytes:
    args: dict[str, Any] = {"hlc": Timestamp(1_700_000_000_000, 5), "kind": "delta",
                            "nonce": NONCE_16} | kw  # fmt: skip
    return sign_envelope(payload, KEY, **args)


def encrypted(payload: bytes = PAYLOAD, **kw: Any) -> bytes:
    return plain(payload, mesh_key=MESH, iv=IV_12, **kw)


def generic(data: bytes) -> Envelope:
    return _envelope._decode_generic(
        data, _cbor.DEFAULT_MAX_SIZE, _cbor.DEFAULT_MAX_DEPTH, _cbor.DEFAULT_MAX_ITEMS
    )


# ------------------------------------------------------------ round trips


def test_plain_round_trip() -> None:
    data = plain()
    env = decode_envelope(data)
    assert env.kid == KEY.kid
    assert env.hlc == Timestamp(1_700_000_000_000, 5).packed
    assert env.timestamp("n1") == Timestamp(1_700_000_000_000, 5, "n1")
    assert (env.kind, env.nonce, env.version, env.encrypted) == ("delta", NONCE_16, 1, False)
    assert env.payload == PAYLOAD
    assert env.mesh_kid is None
    env.verify(KEY.public_key)
    assert env.plaintext() == PAYLOAD
    assert open_envelope(data, KEY.public_key) == (env, PAYLOAD)


def test_encrypted_round_trip() -> None:
    data = encrypted()
    env = decode_envelope(data)
    assert env.encrypted
    assert env.mesh_kid == MESH.kid
    assert env.iv == IV_12
    assert PAYLOAD not in data  # confidential
    env.verify(KEY.public_key)  # the gateway verifies without the mesh key
    assert env.plaintext(MESH) == PAYLOAD
    assert open_envelope(data, KEY.public_key, mesh_key=MESH) == (env, PAYLOAD)


def test_envelope_is_frozen_and_slotted() -> None:
    env = decode_envelope(plain())
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.kind = "digest"  # type: ignore[misc]
    assert not hasattr(env, "__dict__")


@settings(max_examples=150)
@given(envelopes())
def test_round_trip_property(case: tuple[bytes, dict[str, Any]]) -> None:
    data, args = case
    env = decode_envelope(data)
    assert _envelope._decode_fast(data) is not None  # our own output takes the fast path
    assert generic(data) == env  # and the generic path agrees
    assert (env.kid, env.hlc, env.kind, env.nonce) == (
        args["key"].kid, args["hlc"], args["kind"], args["nonce"],
    )  # fmt: skip
    env.verify(args["key"].public_key)
    assert env.plaintext(args.get("mesh_key")) == args["payload"]


# ---------------------------------------- the hot path writes documented bytes


@settings(max_examples=100)
@given(envelopes())
def test_hot_path_bytes_equal_the_deterministic_encoding(
    case: tuple[bytes, dict[str, Any]],
) -> None:
    data, args = case
    key = args["key"]
    hdr: dict[int, Any] = {ALG: -8, KID: key.kid, VERSION: 1, HLC: args["hlc"],
                           KIND: args["kind"], NONCE: args["nonce"]}  # fmt: skip
    payload = args["payload"]
    if "mesh_key" in args:
        hdr[CONTENT_TYPE] = 16
        enc_prot = _cbor.dumps({1: 24})
        prot = _cbor.dumps(hdr)
        aad = _cbor.dumps(["Encrypt0", enc_prot, prot])
        assert aad == _envelope._enc_structure(prot)
        ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            payload, aad, args["iv"], args["mesh_key"].key
        )
        payload = _cbor.dumps(
            _cbor.CBORTag(16, [enc_prot, {4: args["mesh_key"].kid, 5: args["iv"]}, ciphertext])
        )
    prot = _cbor.dumps(hdr)
    to_sign = _cbor.dumps(["Signature1", prot, b"", payload])
    assert to_sign == _envelope._sig_structure(prot, payload)
    signature = nacl.bindings.crypto_sign(to_sign, key.secret_key)[:64]
    assert data == _cbor.dumps(_cbor.CBORTag(18, [prot, {}, payload, signature]))


# --------------------------------------------------------------- verification


def test_wrong_key_is_a_signature_error() -> None:
    env = decode_envelope(plain())
    with pytest.raises(SignatureError, match="kid"):
        env.verify(OTHER.public_key)


def test_forged_signature_under_the_right_kid_is_a_signature_error() -> None:
    # OTHER signs a header that claims KEY's kid.
    data = build_sign1(OTHER, header(KEY), PAYLOAD)
    env = decode_envelope(data)
    with pytest.raises(SignatureError, match="does not verify"):
        env.verify(KEY.public_key)


def test_verify_rejects_a_malformed_public_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        decode_envelope(plain()).verify(b"short")


@pytest.mark.parametrize("make", [plain, encrypted], ids=["plain", "encrypted"])
def test_every_single_bit_flip_is_rejected(make: Any) -> None:
    data = make(b"hello mesh")
    for bit in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(WireError):
            open_envelope(
                bytes(flipped), KEY.public_key, mesh_key=MESH if make is encrypted else None
            )


@pytest.mark.parametrize("make", [plain, encrypted], ids=["plain", "encrypted"])
def test_every_truncation_and_extension_is_malformed(make: Any) -> None:
    data = make(b"hello mesh")
    for end in range(len(data)):
        with pytest.raises(MalformedError):
            decode_envelope(data[:end])
    with pytest.raises(MalformedError, match="trailing"):
        decode_envelope(data + b"\x00")


# ---------------------------------------------------------------- encryption


def test_decrypt_needs_the_mesh_key() -> None:
    env = decode_envelope(encrypted())
    with pytest.raises(DecryptError, match="no mesh key"):
        env.plaintext()
    with pytest.raises(DecryptError, match="mesh key"):
        env.plaintext(mesh_key(1))
    with pytest.raises(DecryptError):
        open_envelope(encrypted(), KEY.public_key)


def test_no_silent_downgrade_to_plaintext() -> None:
    with pytest.raises(DecryptError, match="plaintext"):
        open_envelope(plain(), KEY.public_key, mesh_key=MESH)


def test_resigned_ciphertext_does_not_decrypt() -> None:
    # A mesh member lifts KEY's Encrypt0 and signs it as its own: the
    # signature is valid, but the AAD binds the ciphertext to KEY's header.
    stolen = decode_envelope(encrypted()).payload
    data = build_sign1(OTHER, header(OTHER, content_type=16, nonce=NONCE_16), stolen)
    env = decode_envelope(data)
    env.verify(OTHER.public_key)
    with pytest.raises(DecryptError, match="authenticate"):
        env.plaintext(MESH)


def test_tampered_ciphertext_does_not_decrypt() -> None:
    env = decode_envelope(encrypted())
    assert env.ciphertext is not None
    ciphertext = bytearray(env.ciphertext)
    ciphertext[0] ^= 1
    tampered = _cbor.dumps(_cbor.CBORTag(16, [b"\xa1\x01\x18\x18", {4: MESH.kid, 5: IV_12},
                                              bytes(ciphertext)]))  # fmt: skip
    # Re-signed by KEY itself (a signature cannot be kept over changed bytes).
    prot = env.protected
    to_sign = _envelope._sig_structure(prot, tampered)
    sig = nacl.bindings.crypto_sign(to_sign, KEY.secret_key)[:64]
    data = _cbor.dumps(_cbor.CBORTag(18, [prot, {}, tampered, sig]))
    forged = decode_envelope(data)
    forged.verify(KEY.public_key)
    with pytest.raises(DecryptError, match="authenticate"):
        forged.plaintext(MESH)


# ------------------------------------------------------------ strict decoding


def test_unknown_version_is_rejected() -> None:
    for version in (0, 2, 2**32):
        data = build_sign1(KEY, header(KEY, version=version), PAYLOAD)
        with pytest.raises(UnsupportedVersionError) as info:
            decode_envelope(data)
        assert info.value.version == version


def raw_map(pairs: Any) -> bytes:
    """A map in the given order, duplicates included (no sorting)."""
    pairs = list(pairs)
    body = b"".join(_cbor.dumps(k) + _cbor.dumps(v) for k, v in pairs)
    return _cbor.encode_head(5, len(pairs)) + body


def enc0(prot: Any = b"\xa1\x01\x18\x18", unprot: Any = None, ct: Any = b"\x00" * 32) -> bytes:
    unprot = {4: MESH.kid, 5: IV_12} if unprot is None else unprot
    return _cbor.dumps(_cbor.CBORTag(16, [prot, unprot, ct]))


MALFORMED: dict[str, Any] = {
    "untagged": lambda: build_sign1(KEY, header(KEY), PAYLOAD, tag=None),
    "wrong tag (COSE_Mac0)": lambda: build_sign1(KEY, header(KEY), PAYLOAD, tag=17),
    "detached payload": lambda: build_sign1(KEY, header(KEY), None),
    "unprotected header not empty": lambda: build_sign1(
        KEY, header(KEY), PAYLOAD, unprotected={4: KEY.kid}
    ),
    "unprotected header not a map": lambda: build_sign1(KEY, header(KEY), PAYLOAD, unprotected=[]),
    "protected header not a map": lambda: build_sign1(KEY, _cbor.dumps([1, -8]), PAYLOAD),
    "protected header empty": lambda: build_sign1(KEY, b"", PAYLOAD),
    "protected header not CBOR": lambda: build_sign1(KEY, b"\xff", PAYLOAD),
    "duplicate label": lambda: build_sign1(
        KEY, raw_map([*header(KEY).items(), (ALG, -8)]), PAYLOAD
    ),
    "missing version": lambda: build_sign1(KEY, header(KEY, version=...), PAYLOAD),
    "version not an int": lambda: build_sign1(KEY, header(KEY, version="1"), PAYLOAD),
    "version a bool": lambda: build_sign1(KEY, header(KEY, version=True), PAYLOAD),
    "alg ES256": lambda: build_sign1(KEY, header(KEY, alg=-7), PAYLOAD),
    "alg missing": lambda: build_sign1(KEY, header(KEY, alg=...), PAYLOAD),
    "kid missing": lambda: build_sign1(KEY, header(KEY, kid=...), PAYLOAD),
    "kid 8 bytes": lambda: build_sign1(KEY, header(KEY, kid=KEY.kid[:8]), PAYLOAD),
    "kid as text": lambda: build_sign1(KEY, header(KEY, kid=KEY.kid.hex()), PAYLOAD),
    "hlc negative": lambda: build_sign1(KEY, header(KEY, hlc=-1), PAYLOAD),
    "hlc a float": lambda: build_sign1(KEY, header(KEY, hlc=1.5), PAYLOAD),
    "hlc a bool": lambda: build_sign1(KEY, header(KEY, hlc=False), PAYLOAD),
    "hlc missing": lambda: build_sign1(KEY, header(KEY, hlc=...), PAYLOAD),
    "kind empty": lambda: build_sign1(KEY, header(KEY, kind=""), PAYLOAD),
    "kind upper case": lambda: build_sign1(KEY, header(KEY, kind="Delta"), PAYLOAD),
    "kind too long": lambda: build_sign1(KEY, header(KEY, kind="d" * 33), PAYLOAD),
    "kind not ASCII": lambda: build_sign1(KEY, header(KEY, kind="dé"), PAYLOAD),
    "kind as bytes": lambda: build_sign1(KEY, header(KEY, kind=b"delta"), PAYLOAD),
    "nonce too short": lambda: build_sign1(KEY, header(KEY, nonce=b"1234567"), PAYLOAD),
    "nonce too long": lambda: build_sign1(KEY, header(KEY, nonce=b"x" * 65), PAYLOAD),
    "extra label": lambda: build_sign1(KEY, header(KEY) | {-65541: 0}, PAYLOAD),
    "content type 0": lambda: build_sign1(KEY, header(KEY, content_type=0), enc0()),
    "content type text": lambda: build_sign1(KEY, header(KEY, content_type="x"), enc0()),
    "signature 63 bytes": lambda: plain()[:-66] + b"\x58\x3f" + plain()[-63:],
    "encrypt0 untagged": lambda: build_sign1(KEY, header(KEY, content_type=16), enc0()[1:]),
    "encrypt0 not CBOR": lambda: build_sign1(KEY, header(KEY, content_type=16), b"\xd0"),
    "encrypt0 with AES-GCM": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(prot=_cbor.dumps({1: 3}))
    ),
    "encrypt0 protected empty": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(prot=b"")
    ),
    "encrypt0 IV 8 bytes": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(unprot={4: MESH.kid, 5: IV_12[:8]})
    ),
    "encrypt0 no mesh kid": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(unprot={5: IV_12})
    ),
    "encrypt0 extra label": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(unprot={4: MESH.kid, 5: IV_12, 6: b"x"})
    ),
    "encrypt0 mesh kid 4 bytes": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(unprot={4: MESH.kid[:4], 5: IV_12})
    ),
    "encrypt0 ciphertext shorter than the tag": lambda: build_sign1(
        KEY, header(KEY, content_type=16), enc0(ct=b"\x00" * 15)
    ),
    "encrypt0 without content type": lambda: build_sign1(KEY, header(KEY), enc0()),
    "not CBOR": lambda: b"\xff",
    "a bare integer": lambda: b"\x00",
}


@pytest.mark.parametrize("make", MALFORMED.values(), ids=MALFORMED.keys())
def test_decoder_rejects_malformed_envelopes(make: Any) -> None:
    data = make()
    if make is MALFORMED["encrypt0 without content type"]:
        # Valid as a plaintext envelope whose payload happens to look like an
        # Encrypt0: only the content type says "encrypted" (no sniffing).
        assert not decode_envelope(data).encrypted
        return
    with pytest.raises(MalformedError):
        decode_envelope(data)


def test_header_order_is_free_and_takes_the_generic_path() -> None:
    # Other encoders need not sort keys: a reversed header is still accepted.
    prot = raw_map(reversed(header(KEY, hlc=99, nonce=NONCE_16).items()))
    assert prot != _cbor.dumps(header(KEY, hlc=99, nonce=NONCE_16))
    data = build_sign1(KEY, prot, PAYLOAD)
    assert _envelope._decode_fast(data) is None
    env, payload = open_envelope(data, KEY.public_key)
    assert (env.hlc, env.nonce, payload) == (99, NONCE_16, PAYLOAD)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"hlc": -1}, ValueError),
        ({"hlc": 2**64}, ValueError),
        ({"hlc": 1.0}, ValueError),
        ({"kind": "Delta"}, ValueError),
        ({"kind": ""}, ValueError),
        ({"nonce": b"1234567"}, ValueError),
        ({"nonce": "x" * 16}, ValueError),
        ({"mesh_key": MESH}, ValueError),  # no iv
        ({"mesh_key": MESH, "iv": b"x" * 11}, ValueError),
        ({"iv": IV_12}, ValueError),  # iv without a mesh key
        ({"max_size": 100}, ValueError),
    ],
)
def test_sign_rejects_bad_arguments(kwargs: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        plain(**kwargs)


def test_sign_rejects_a_text_payload() -> None:
    with pytest.raises(TypeError):
        sign_envelope("text", KEY, hlc=1, kind="delta", nonce=NONCE_16)  # type: ignore[arg-type]


# -------------------------------------------------------------------- limits


def test_envelope_decoder_rejects_oversized_message() -> None:
    limit = _cbor.DEFAULT_MAX_SIZE
    # An empty payload has a 1-byte head; a payload near the limit a 5-byte one.
    n = limit - (len(plain(b"")) + 4)
    at_limit = plain(b"x" * n)
    assert len(at_limit) == limit
    assert decode_envelope(at_limit).payload == b"x" * n
    over = plain(b"x" * (n + 1), max_size=limit + 1)
    with pytest.raises(LimitExceededError) as info:
        decode_envelope(over)
    assert (info.value.limit, info.value.maximum) == ("size", limit)
    assert decode_envelope(over, max_size=limit + 1).payload == b"x" * (n + 1)
    with pytest.raises(ValueError, match="max_size"):
        plain(b"x" * (n + 1))  # the sender refuses what receivers would reject
    with pytest.raises(LimitExceededError):
        decode_envelope(plain(), max_size=100)


def test_envelope_decoder_applies_depth_and_item_limits() -> None:
    with pytest.raises(LimitExceededError) as info:
        decode_envelope(plain(), max_depth=1)
    assert info.value.limit == "depth"
    with pytest.raises(LimitExceededError) as info:
        decode_envelope(plain(), max_items=10)  # the protected header has 13 items
    assert info.value.limit == "items"
    with pytest.raises(LimitExceededError):
        decode_envelope(encrypted(), max_items=14)  # an encrypted header has 15
    assert decode_envelope(encrypted(), max_items=15, max_depth=2).encrypted
    assert generic(encrypted()) == decode_envelope(encrypted(), max_items=15, max_depth=2)


# ---------------------------------------------------------------------- fuzz


def assert_parsed_or_rejected(data: bytes) -> None:
    """Any input is parsed or rejected with WireError, never anything else."""
    try:
        env = decode_envelope(data)
    except WireError:
        assert _envelope._decode_fast(data) is None
        return
    fast = _envelope._decode_fast(data)
    assert fast is None or fast == generic(data)
    try:
        env.verify(KEY.public_key)
        env.plaintext(MESH if env.encrypted else None)
    except WireError:
        pass


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data: bytes) -> None:
    assert_parsed_or_rejected(data)


@settings(max_examples=300)
@given(raw_cbor())
def test_fuzz_random_cbor(data: bytes) -> None:
    assert_parsed_or_rejected(data)
    assert_parsed_or_rejected(b"\xd2\x84" + data)


@settings(max_examples=200)
@given(envelopes(), st.data())
def test_fuzz_bit_flips_and_truncations(case: tuple[bytes, dict[str, Any]], data: Any) -> None:
    envelope = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(envelope) * 8 - 1))
        envelope[bit // 8] ^= 1 << (bit % 8)
    assert_parsed_or_rejected(bytes(envelope))
    cut = data.draw(st.integers(0, len(case[0])))
    assert_parsed_or_rejected(case[0][:cut])


@settings(max_examples=200)
@given(
    st.dictionaries(
        st.sampled_from([ALG, CONTENT_TYPE, KID, VERSION, HLC, KIND, NONCE, 2, -65541]),
        st.none()
        | st.booleans()
        | st.integers(-(2**64), 2**64 - 1)
        | st.binary(max_size=70)
        | st.text(max_size=40)
        | st.sampled_from([-8, 1, 16, 24]),
    ),
    st.binary(max_size=40) | raw_cbor(),
)
def test_fuzz_signed_headers(hdr: dict[int, Any], payload: bytes) -> None:
    # Validly signed envelopes with arbitrary headers: the checks behind the
    # signature see every combination.
    assert_parsed_or_rejected(build_sign1(KEY, hdr, payload))
