"""The signed envelope: COSE_Sign1 (RFC 9052), optionally around a COSE_Encrypt0.

Theory of operation
-------------------
Every message on the mesh is one tagged COSE_Sign1 (CBOR tag 18)::

    18([protected: bstr, unprotected: {}, payload: bstr, signature: bstr .size 64])

The protected header is a deterministic CBOR map (labels, in encoded order)::

    1       alg      -8 (EdDSA, Ed25519)
    3       content type  16 (COSE_Encrypt0), present only when encrypted
    4       kid      16 bytes: SHA-256(public key)[:16] (see _keys)
    -65537  version  1
    -65538  hlc      uint: Timestamp.packed (48-bit wall ms << 16 | logical)
    -65539  kind     text: "delta", "digest", "repair", "chunk", "presence", ...
    -65540  nonce    8..64 random bytes (16 recommended)

The negative labels are in COSE's private-use range (below -65536). The
signature is Ed25519 over the RFC 9052 §4.4 ``Sig_structure``
``["Signature1", protected, h'', payload]`` (no external AAD), which the hot
path writes out directly as bytes rather than through a generic encoder.

Decoding and verification are separate steps: :func:`decode_envelope` checks
the structure and every header strictly and returns an :class:`Envelope`;
:meth:`Envelope.verify` checks that ``kid`` is the given key's id and that the
signature verifies. A gateway can thus tell "malformed" from "bad signature".
:func:`open_envelope` does both, and decrypts.

Strictness: the unprotected header must be empty, the protected header must
hold exactly the labels above, the payload must be present (no detached
payloads), and the CBOR rules of :mod:`._cbor` apply (shortest forms, no
indefinite lengths, no duplicate keys, no unexpected tags, size, depth and
item limits). With Ed25519's non-malleable signatures (libsodium rejects
non-canonical ones) this makes the envelope bytes themselves non-malleable: a
hash of the bytes is a stable message id.

Confidentiality (optional): the Sign1 payload is a tagged COSE_Encrypt0
(tag 16)::

    16([h'a1011818' ({1: 24}, ChaCha20/Poly1305), {4: mesh kid, 5: iv}, ciphertext])

encrypted with the IETF ChaCha20-Poly1305 AEAD (12-byte IV) under the 32-byte
mesh key, with AAD = the RFC 9052 §5.3 ``Enc_structure``
``["Encrypt0", h'a1011818', external_aad]`` where ``external_aad`` is the
Sign1's protected header bytes. That binds the ciphertext to its sender, HLC,
kind and nonce: another mesh member cannot re-sign someone else's ciphertext
as its own. The signature covers the ciphertext, so a gateway verifies
without the mesh key. The IV is random bytes passed in; with random 96-bit
IVs keep well under 2**32 messages per mesh key.

Why one module: the wire format of one message, encoder and decoder side by
side, so that each limit is read next to the field it bounds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

import nacl.bindings
import nacl.exceptions

from . import _cbor
from ._errors import (
    DecryptError,
    LimitExceededError,
    MalformedError,
    SignatureError,
    UnsupportedVersionError,
)
from ._hlc import Timestamp
from ._keys import KID_SIZE, MESH_KID_SIZE, MeshKey, NodeKey, derive_kid

__all__ = [
    "IV_SIZE",
    "KINDS",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "Envelope",
    "decode_envelope",
    "open_envelope",
    "sign_envelope",
]

PROTOCOL_VERSION = 1

TAG_SIGN1 = 18
TAG_ENCRYPT0 = 16
ALG_EDDSA = -8
ALG_CHACHA20_POLY1305 = 24
CONTENT_TYPE_ENCRYPT0 = 16  # CoAP Content-Format: application/cose; cose-type="cose-encrypt0"

LABEL_ALG = 1
LABEL_CONTENT_TYPE = 3
LABEL_KID = 4
LABEL_IV = 5
LABEL_VERSION = -65537
LABEL_HLC = -65538
LABEL_KIND = -65539
LABEL_NONCE = -65540

KINDS = frozenset(
    {"delta", "digest", "repair", "chunk", "presence", "alg", "policy", "cmd", "cmdr"}
)
"""The message kinds of protocol version 1 (the codec accepts any valid kind)."""
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")

NONCE_SIZE = 16
"""Recommended nonce length in bytes; 8 to 64 are accepted."""
NONCE_MIN = 8
NONCE_MAX = 64
IV_SIZE = 12
_TAG_SIZE = 16  # Poly1305
_SIG_SIZE = 64
_U64_LIMIT = 1 << 64

_PLAIN_LABELS = frozenset({LABEL_ALG, LABEL_KID, LABEL_VERSION, LABEL_HLC, LABEL_KIND, LABEL_NONCE})
_ENCRYPTED_LABELS = _PLAIN_LABELS | {LABEL_CONTENT_TYPE}

# Fixed byte strings of the hot path (each checked against _cbor.dumps in tests).
_SIGN1_HEAD = b"\xd2\x84"  # 18([ ... 4 items
_EMPTY_MAP = b"\xa0"
_SIG_HEAD = b"\x58\x40"  # bstr of 64 bytes
_SIG1_CONTEXT = b"\x84\x6aSignature1"  # ["Signature1", ...
_EMPTY_BSTR = b"\x40"
_PROT_PLAIN = b"\xa6\x01\x27"  # {1: -8, ... (6 pairs)
_PROT_ENCRYPTED = b"\xa7\x01\x27\x03\x10"  # {1: -8, 3: 16, ... (7 pairs)
_PROT_VERSION = b"\x3a\x00\x01\x00\x00\x01"  # -65537: 1
_PROT_HLC = b"\x3a\x00\x01\x00\x01"  # -65538:
_PROT_KIND = b"\x3a\x00\x01\x00\x02"  # -65539:
_PROT_NONCE = b"\x3a\x00\x01\x00\x03"  # -65540:
_PLAIN_START = _PROT_PLAIN + b"\x04\x50"  # ... 4: h'<16 bytes>'
_ENCRYPTED_START = _PROT_ENCRYPTED + b"\x04\x50"
_VERSION_1_HLC = _PROT_VERSION + _PROT_HLC
_ENC0_HEAD = b"\xd0\x83"  # 16([ ... 3 items
_ENC0_PROTECTED = b"\xa1\x01\x18\x18"  # {1: 24}
_ENC0_FIXED = _ENC0_HEAD + b"\x44" + _ENC0_PROTECTED + b"\xa2\x04\x48"  # ... {4: h'<8>'
_ENC0_CONTEXT = b"\x83\x68Encrypt0\x44" + _ENC0_PROTECTED  # ["Encrypt0", h'a1011818', ...

_SIGN1_TAGS = frozenset({TAG_SIGN1})
_ENCRYPT0_TAGS = frozenset({TAG_ENCRYPT0})

_head = _cbor.encode_head


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 §4.4 ``["Signature1", protected, h'', payload]``, encoded.

    The reference form: sign_envelope and Envelope.verify write the same bytes
    inline (tests check all three against _cbor.dumps).
    """
    return b"".join(
        (
            _SIG1_CONTEXT,
            _head(2, len(protected)),
            protected,
            _EMPTY_BSTR,
            _head(2, len(payload)),
            payload,
        )
    )


def _enc_structure(external_aad: bytes) -> bytes:
    """RFC 9052 §5.3 ``["Encrypt0", h'a1011818', external_aad]``, encoded."""
    return _ENC0_CONTEXT + _head(2, len(external_aad)) + external_aad


# Small caches of values already validated, for the hot path. Bounded: a full
# cache stops growing (a mesh has few kinds and few keys), so input cannot
# grow them without limit; only validated values enter.
_CACHE_MAX = 256
_kind_encodings: dict[str, bytes] = {}  # kind -> label, head and text
_kind_texts: dict[bytes, str] = {}  # the UTF-8 of a valid kind -> the kind
_prefixes: dict[tuple[bytes, bool], bytes] = {}  # (kid, encrypted) -> header up to the HLC
_kids: dict[bytes, bytes] = {}  # public key -> kid


def _encoded_kind(kind: str) -> bytes:
    encoded = _kind_encodings.get(kind)
    if encoded is None:
        if type(kind) is not str or _KIND.fullmatch(kind) is None:
            raise ValueError(f"kind {kind!r} is not a short lowercase ASCII word")
        raw = kind.encode()
        encoded = _PROT_KIND + _head(3, len(raw)) + raw
        if len(_kind_encodings) < _CACHE_MAX:
            _kind_encodings[kind] = encoded
    return encoded


def _kind_text(raw: bytes) -> str | None:
    """The kind whose UTF-8 is ``raw``, or None when it is not a valid kind."""
    kind = _kind_texts.get(raw)
    if kind is None:
        try:
            kind = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
        if _KIND.fullmatch(kind) is None:
            return None
        if len(_kind_texts) < _CACHE_MAX:
            _kind_texts[raw] = kind
    return kind


def _kid_of(public_key: bytes) -> bytes:
    kid = _kids.get(public_key)
    if kid is None:
        kid = derive_kid(public_key)  # raises ValueError unless 32 bytes
        if len(_kids) < _CACHE_MAX and type(public_key) is bytes:
            _kids[public_key] = kid
    return kid


def _protected(kid: bytes, hlc: int, kind: str, nonce: bytes, encrypted: bool) -> bytes:
    """The protected header in deterministic encoding (labels in encoded order)."""
    prefix = _prefixes.get((kid, encrypted))
    if prefix is None:
        prefix = b"".join(
            (
                _PROT_ENCRYPTED if encrypted else _PROT_PLAIN,
                b"\x04",
                _head(2, len(kid)),
                kid,
                _PROT_VERSION,
                _PROT_HLC,
            )
        )
        if len(_prefixes) < _CACHE_MAX:
            _prefixes[(kid, encrypted)] = prefix
    return b"".join(
        (prefix, _head(0, hlc), _encoded_kind(kind), _PROT_NONCE, _head(2, len(nonce)), nonce)
    )


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded (not yet verified) envelope.

    ``kid``, ``hlc`` (the packed u64; see :meth:`timestamp`), ``kind``,
    ``nonce`` and ``version`` come from the protected header. ``payload`` is
    the Sign1 payload exactly as signed: the application bytes, or, when
    ``encrypted``, the COSE_Encrypt0 bytes (then ``mesh_kid``, ``iv`` and
    ``ciphertext`` are set; :meth:`plaintext` opens it). ``protected`` and
    ``signature`` are what :meth:`verify` needs.
    """

    kid: bytes
    hlc: int
    kind: str
    nonce: bytes
    version: int
    payload: bytes = field(repr=False)
    encrypted: bool
    protected: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    mesh_kid: bytes | None = None
    iv: bytes | None = field(default=None, repr=False)
    ciphertext: bytes | None = field(default=None, repr=False)

    def timestamp(self, node: str = "") -> Timestamp:
        """The HLC stamp, attributed to ``node``."""
        return Timestamp.unpack(self.hlc, node)

    def verify(self, public_key: bytes) -> None:
        """Check that ``kid`` is ``public_key``'s id and the signature verifies.

        Raises :class:`SignatureError` when either fails, ``ValueError`` when
        ``public_key`` is not 32 bytes.
        """
        if _kid_of(public_key) != self.kid:
            raise SignatureError(f"envelope kid {self.kid.hex()} is not the given key's id")
        protected, payload = self.protected, self.payload
        signed = b"".join(  # what crypto_sign_open takes: signature || Sig_structure
            (
                self.signature,
                _SIG1_CONTEXT,
                _head(2, len(protected)),
                protected,
                _EMPTY_BSTR,
                _head(2, len(payload)),
                payload,
            )
        )
        try:
            nacl.bindings.crypto_sign_open(signed, public_key)
        except nacl.exceptions.CryptoError:
            raise SignatureError("envelope signature does not verify") from None

    def plaintext(self, mesh_key: MeshKey | None = None) -> bytes:
        """The application payload, decrypted under ``mesh_key`` when encrypted.

        Raises :class:`DecryptError` when the payload is encrypted and
        ``mesh_key`` is missing, is not the key named by ``mesh_kid``, or the
        ciphertext does not authenticate; and when a ``mesh_key`` is given but
        the payload is not encrypted (no silent downgrade to plaintext). Call
        only after :meth:`verify`.
        """
        if not self.encrypted:
            if mesh_key is not None:
                raise DecryptError("plaintext envelope where an encrypted one is required")
            return self.payload
        if mesh_key is None:
            raise DecryptError("envelope is encrypted and no mesh key was given")
        if mesh_key.kid != self.mesh_kid:
            raise DecryptError(
                f"envelope is encrypted under mesh key {(self.mesh_kid or b'').hex()}, "
                f"not {mesh_key.kid.hex()}"
            )
        assert self.ciphertext is not None
        assert self.iv is not None
        try:
            return nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                self.ciphertext, _enc_structure(self.protected), self.iv, mesh_key.key
            )
        except nacl.exceptions.CryptoError:
            raise DecryptError("encrypted payload does not authenticate") from None


# A frozen dataclass's __init__ sets each field through object.__setattr__,
# which costs CPython 3.11 ~0.3-0.7 us a field: several percent of a whole
# sign+verify for this 12-field value. The decoder sets the slots through
# their member descriptors instead (same result, tested equal).
_new_object = object.__new__
(
    _set_kid, _set_hlc, _set_kind, _set_nonce, _set_version, _set_payload, _set_encrypted,
    _set_protected, _set_signature, _set_mesh_kid, _set_iv, _set_ciphertext,
) = (Envelope.__dict__[f.name].__set__ for f in fields(Envelope))  # fmt: skip


def _make_envelope(
    kid: bytes,
    hlc: int,
    kind: str,
    nonce: bytes,
    payload: bytes,
    protected: bytes,
    signature: bytes,
    sealed: tuple[bytes, bytes, bytes] | None,
) -> Envelope:
    """A version-1 Envelope from checked fields; ``sealed`` is (mesh kid, iv, ciphertext)."""
    env: Envelope = _new_object(Envelope)
    _set_kid(env, kid)
    _set_hlc(env, hlc)
    _set_kind(env, kind)
    _set_nonce(env, nonce)
    _set_version(env, PROTOCOL_VERSION)
    _set_payload(env, payload)
    _set_protected(env, protected)
    _set_signature(env, signature)
    if sealed is None:
        _set_encrypted(env, False)
        _set_mesh_kid(env, None)
        _set_iv(env, None)
        _set_ciphertext(env, None)
    else:
        _set_encrypted(env, True)
        _set_mesh_kid(env, sealed[0])
        _set_iv(env, sealed[1])
        _set_ciphertext(env, sealed[2])
    return env


def sign_envelope(
    payload: bytes,
    key: NodeKey,
    *,
    hlc: int | Timestamp,
    kind: str,
    nonce: bytes,
    mesh_key: MeshKey | None = None,
    iv: bytes | None = None,
    max_size: int = _cbor.DEFAULT_MAX_SIZE,
) -> bytes:
    """Sign ``payload`` into a tagged COSE_Sign1 envelope (encrypted if ``mesh_key``).

    ``hlc`` is a :class:`Timestamp` or its packed u64; ``kind`` a short
    lowercase ASCII word (``[a-z][a-z0-9_-]{0,31}``, see :data:`KINDS`);
    ``nonce`` 8..64 random bytes; ``iv`` 12 random bytes, required with
    ``mesh_key``. Randomness is the caller's: reuse of an IV under one mesh
    key breaks confidentiality. Raises ``ValueError`` for an argument outside
    those rules or an envelope larger than ``max_size`` (the receivers' limit).
    """
    packed = hlc.packed if isinstance(hlc, Timestamp) else hlc
    if type(packed) is not int or not 0 <= packed < _U64_LIMIT:
        raise ValueError(f"hlc {hlc!r} is not a Timestamp or an unsigned 64-bit integer")
    if type(nonce) is not bytes or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise ValueError(f"nonce must be {NONCE_MIN}..{NONCE_MAX} bytes")
    if type(payload) is not bytes:
        raise TypeError("payload must be bytes")
    encrypted = mesh_key is not None
    protected = _protected(key.kid, packed, kind, nonce, encrypted)
    if mesh_key is not None:
        if type(iv) is not bytes or len(iv) != IV_SIZE:
            raise ValueError(f"encryption needs an iv of {IV_SIZE} random bytes")
        ciphertext = nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            payload, _enc_structure(protected), iv, mesh_key.key
        )
        payload = b"".join(
            (
                _ENC0_FIXED,
                mesh_key.kid,
                b"\x05\x4c",  # 5: h'<12 bytes>'}
                iv,
                _head(2, len(ciphertext)),
                ciphertext,
            )
        )
    elif iv is not None:
        raise ValueError("an iv without a mesh key")
    protected_head = _head(2, len(protected))
    payload_head = _head(2, len(payload))
    to_sign = b"".join(
        (_SIG1_CONTEXT, protected_head, protected, _EMPTY_BSTR, payload_head, payload)
    )
    signature = nacl.bindings.crypto_sign(to_sign, key.secret_key)[:_SIG_SIZE]
    envelope = b"".join(
        (
            _SIGN1_HEAD,
            protected_head,
            protected,
            _EMPTY_MAP,
            payload_head,
            payload,
            _SIG_HEAD,
            signature,
        )
    )
    if len(envelope) > max_size:
        raise ValueError(f"envelope of {len(envelope)} bytes exceeds max_size {max_size}")
    return envelope


def _malformed(what: str) -> MalformedError:
    return MalformedError(f"envelope: {what}")


def _decode_encrypt0(payload: bytes, max_depth: int, max_items: int) -> tuple[bytes, bytes, bytes]:
    """Check a COSE_Encrypt0 strictly; returns (mesh kid, iv, ciphertext)."""
    obj = _cbor.loads(
        payload,
        max_size=len(payload),
        max_depth=max_depth,
        max_items=max_items,
        tags=_ENCRYPT0_TAGS,
    )
    if type(obj) is not _cbor.CBORTag or obj.tag != TAG_ENCRYPT0:
        raise _malformed("content type says COSE_Encrypt0 but the payload is not tag 16")
    parts = obj.value
    if type(parts) is not list or len(parts) != 3:
        raise _malformed("COSE_Encrypt0 is not an array of 3")
    protected, unprotected, ciphertext = parts
    if type(protected) is not bytes or protected != _ENC0_PROTECTED:
        raise _malformed("COSE_Encrypt0 protected header is not {1: 24} (ChaCha20/Poly1305)")
    if type(unprotected) is not dict or unprotected.keys() != {LABEL_KID, LABEL_IV}:
        raise _malformed("COSE_Encrypt0 unprotected header must hold exactly kid (4) and IV (5)")
    mesh_kid = unprotected[LABEL_KID]
    iv = unprotected[LABEL_IV]
    if type(mesh_kid) is not bytes or len(mesh_kid) != MESH_KID_SIZE:
        raise _malformed(f"COSE_Encrypt0 kid is not {MESH_KID_SIZE} bytes")
    if type(iv) is not bytes or len(iv) != IV_SIZE:
        raise _malformed(f"COSE_Encrypt0 IV is not {IV_SIZE} bytes")
    if type(ciphertext) is not bytes or len(ciphertext) < _TAG_SIZE:
        raise _malformed("COSE_Encrypt0 ciphertext is missing or shorter than the tag")
    return mesh_kid, iv, ciphertext


class _NotFast(Exception):
    """The input is not in the exact layout of the fast path."""


def _span(data: bytes, pos: int, major: int) -> tuple[int, int]:
    """The (start, end) of a definite string of ``major`` type whose head is at ``pos``."""
    initial = data[pos] - (major << 5)
    if 0 <= initial < 24:
        start = pos + 1
        end = start + initial
    elif initial == 24:
        size = data[pos + 1]
        if size < 24:
            raise _NotFast
        start = pos + 2
        end = start + size
    elif initial == 25 or initial == 26:
        start = pos + (3 if initial == 25 else 5)
        size = int.from_bytes(data[pos + 1 : start], "big")
        if size < (0x100 if initial == 25 else 0x10000):
            raise _NotFast
        end = start + size
    else:
        raise _NotFast
    if end > len(data):
        raise _NotFast
    return start, end


def _uint(data: bytes, pos: int) -> tuple[int, int]:
    """A shortest-form unsigned integer at ``pos``: (value, next position)."""
    initial = data[pos]
    if initial < 24:
        return initial, pos + 1
    if not 24 <= initial <= 27:
        raise _NotFast
    width = 1 << (initial - 24)
    nxt = pos + 1 + width
    if nxt > len(data):
        raise _NotFast
    value = data[pos + 1] if width == 1 else int.from_bytes(data[pos + 1 : nxt], "big")
    if value < _cbor.MIN_ARG[initial - 24]:
        raise _NotFast
    return value, nxt


_FAST_MIN_DEPTH = 2  # tag + array
_FAST_MIN_ITEMS = 15  # the largest of the three parts: an encrypted protected header


def _decode_fast(data: bytes) -> Envelope | None:
    """Decode an envelope in exactly the layout :func:`sign_envelope` writes.

    Returns None for any other input, which then takes the generic path; when
    it returns an envelope, the generic path returns an equal one (tested).
    """
    try:
        if data[:2] != _SIGN1_HEAD:
            return None
        p_start, p_end = _span(data, 2, 2)
        if data[p_end] != 0xA0:
            return None
        y_start, y_end = _span(data, p_end + 1, 2)
        if data[y_end : y_end + 2] != _SIG_HEAD or len(data) != y_end + 2 + _SIG_SIZE:
            return None
        protected = data[p_start:p_end]
        h = protected
        if h[:5] == _PLAIN_START:
            pos = 5
            encrypted = False
        elif h[:7] == _ENCRYPTED_START:
            pos = 7
            encrypted = True
        else:
            return None
        kid = h[pos : pos + KID_SIZE]
        pos += KID_SIZE
        if h[pos : pos + 11] != _VERSION_1_HLC:
            return None
        hlc, pos = _uint(h, pos + 11)
        if h[pos : pos + 5] != _PROT_KIND:
            return None
        k_start, k_end = _span(h, pos + 5, 3)
        kind = _kind_text(h[k_start:k_end])
        if kind is None:
            return None
        if h[k_end : k_end + 5] != _PROT_NONCE:
            return None
        n_start, n_end = _span(h, k_end + 5, 2)
        if n_end != len(h) or not NONCE_MIN <= n_end - n_start <= NONCE_MAX:
            return None
        nonce = h[n_start:n_end]
        payload = data[y_start:y_end]
        signature = data[y_end + 2 :]
        if not encrypted:
            return _make_envelope(kid, hlc, kind, nonce, payload, protected, signature, None)
        if payload[:10] != _ENC0_FIXED or payload[18:20] != b"\x05\x4c":
            return None
        c_start, c_end = _span(payload, 32, 2)
        if c_end != len(payload) or c_end - c_start < _TAG_SIZE:
            return None
        sealed = (payload[10:18], payload[20:32], payload[c_start:c_end])
        return _make_envelope(kid, hlc, kind, nonce, payload, protected, signature, sealed)
    except (_NotFast, IndexError):
        return None


def _decode_generic(data: bytes, max_size: int, max_depth: int, max_items: int) -> Envelope:
    obj = _cbor.loads(
        data, max_size=max_size, max_depth=max_depth, max_items=max_items, tags=_SIGN1_TAGS
    )
    if type(obj) is not _cbor.CBORTag or obj.tag != TAG_SIGN1:
        raise _malformed("not a tagged COSE_Sign1 (tag 18)")
    parts = obj.value
    if type(parts) is not list or len(parts) != 4:
        raise _malformed("COSE_Sign1 is not an array of 4")
    protected, unprotected, payload, signature = parts
    if type(protected) is not bytes:
        raise _malformed("protected header is not a byte string")
    if type(unprotected) is not dict or unprotected:
        raise _malformed("unprotected header is not an empty map")
    if type(payload) is not bytes:
        raise _malformed("payload is not a byte string (detached payloads are not used)")
    if type(signature) is not bytes or len(signature) != _SIG_SIZE:
        raise _malformed(f"signature is not {_SIG_SIZE} bytes")

    header: Any = _cbor.loads(
        protected, max_size=len(protected), max_depth=max_depth, max_items=max_items
    )
    if type(header) is not dict:
        raise _malformed("protected header is not a map")
    version = header.get(LABEL_VERSION)
    if type(version) is not int:
        raise _malformed("protected header has no integer protocol version (-65537)")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersionError(version)
    content_type = header.get(LABEL_CONTENT_TYPE)
    encrypted = content_type is not None
    if header.keys() != (_ENCRYPTED_LABELS if encrypted else _PLAIN_LABELS):
        labels = repr(list(header))[:200]
        raise _malformed(f"protected header labels {labels} are not those of version 1")
    if encrypted and (type(content_type) is not int or content_type != CONTENT_TYPE_ENCRYPT0):
        raise _malformed(f"content type {content_type!r} is not 16 (COSE_Encrypt0)")
    alg = header[LABEL_ALG]
    if type(alg) is not int or alg != ALG_EDDSA:
        raise _malformed(f"alg {alg!r} is not EdDSA (-8)")
    kid = header[LABEL_KID]
    if type(kid) is not bytes or len(kid) != KID_SIZE:
        raise _malformed(f"kid is not {KID_SIZE} bytes")
    hlc = header[LABEL_HLC]
    if type(hlc) is not int or hlc < 0:  # CBOR integers are below 2**64 by construction
        raise _malformed("hlc is not an unsigned integer")
    kind = header[LABEL_KIND]
    if type(kind) is not str or _KIND.fullmatch(kind) is None:
        raise _malformed(f"kind {kind!r} is not a short lowercase ASCII word")
    nonce = header[LABEL_NONCE]
    if type(nonce) is not bytes or not NONCE_MIN <= len(nonce) <= NONCE_MAX:
        raise _malformed(f"nonce is not {NONCE_MIN}..{NONCE_MAX} bytes")

    if encrypted:
        mesh_kid, iv, ciphertext = _decode_encrypt0(payload, max_depth, max_items)
        return Envelope(
            kid, hlc, kind, nonce, version, payload, True, protected, signature,
            mesh_kid, iv, ciphertext,
        )  # fmt: skip
    return Envelope(kid, hlc, kind, nonce, version, payload, False, protected, signature)


def decode_envelope(
    data: bytes,
    *,
    max_size: int = _cbor.DEFAULT_MAX_SIZE,
    max_depth: int = _cbor.DEFAULT_MAX_DEPTH,
    max_items: int = _cbor.DEFAULT_MAX_ITEMS,
) -> Envelope:
    """Decode and strictly check an envelope; does **not** verify the signature.

    Raises :class:`LimitExceededError` past a limit (the limits apply to the
    envelope, to its protected header and to an Encrypt0 payload each),
    :class:`UnsupportedVersionError` for a version other than 1, and
    :class:`MalformedError` for anything else that is not an envelope as
    documented (see the module docstring and docs/protocol.md §2).
    """
    if type(data) is not bytes:
        data = bytes(data)
    if len(data) > max_size:
        raise LimitExceededError(
            f"envelope of {len(data)} bytes exceeds {max_size}", limit="size", maximum=max_size
        )
    if max_depth >= _FAST_MIN_DEPTH and max_items >= _FAST_MIN_ITEMS:
        envelope = _decode_fast(data)
        if envelope is not None:
            return envelope
    _check_outline(data)
    return _decode_generic(data, max_size, max_depth, max_items)


#: The largest protected header a receiver decodes (ours are about 60 bytes).
MAX_PROTECTED = 1024


def _read_head(data: bytes, pos: int) -> tuple[int, int, int]:
    """The CBOR head at ``pos``: (major type, argument, position after the head).

    Definite lengths only (an envelope is deterministic CBOR); raises
    MalformedError past the end or for an indefinite length.
    """
    if pos >= len(data):
        raise _malformed("truncated")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info > 27:
        raise _malformed("indefinite length or reserved head")
    size = 1 << (info - 24)
    if pos + 1 + size > len(data):
        raise _malformed("truncated")
    return major, int.from_bytes(data[pos + 1 : pos + 1 + size], "big"), pos + 1 + size


def _check_outline(data: bytes) -> None:
    """Check the outline of a COSE_Sign1 from its heads alone, before decoding.

    ``18([bstr .size (0..1024), {}, bstr, bstr .size 64])`` and nothing after:
    anything else is refused in a few steps, whatever its size, so junk costs
    no more to refuse than to receive (a 131 KB array of 65,535 arrays took
    66 ms in the generic decoder).
    """
    major, value, pos = _read_head(data, 0)
    if (major, value) != (6, TAG_SIGN1):
        raise _malformed("not a tagged COSE_Sign1 (tag 18)")
    major, value, pos = _read_head(data, pos)
    if (major, value) != (4, 4):
        raise _malformed("COSE_Sign1 is not an array of 4")
    major, value, pos = _read_head(data, pos)
    if major != 2 or value > MAX_PROTECTED:
        raise _malformed(f"protected header is not a byte string of at most {MAX_PROTECTED}")
    major, value, pos = _read_head(data, pos + value)
    if (major, value) != (5, 0):
        raise _malformed("unprotected header is not an empty map")
    major, value, pos = _read_head(data, pos)
    if major != 2:
        raise _malformed("payload is not a byte string (detached payloads are not used)")
    major, value, pos = _read_head(data, pos + value)
    if (major, value) != (2, _SIG_SIZE):
        raise _malformed(f"signature is not {_SIG_SIZE} bytes")
    if pos + value < len(data):
        raise _malformed("trailing bytes after the COSE_Sign1")
    if pos + value > len(data):
        raise _malformed("truncated")


def open_envelope(
    data: bytes,
    public_key: bytes,
    *,
    mesh_key: MeshKey | None = None,
    max_size: int = _cbor.DEFAULT_MAX_SIZE,
    max_depth: int = _cbor.DEFAULT_MAX_DEPTH,
    max_items: int = _cbor.DEFAULT_MAX_ITEMS,
) -> tuple[Envelope, bytes]:
    """Decode, verify under ``public_key`` and (if ``mesh_key``) decrypt.

    Returns the envelope and the application payload. With a ``mesh_key`` the
    envelope must be encrypted. Raises the :class:`WireError` subtypes of
    :func:`decode_envelope`, :meth:`Envelope.verify` and
    :meth:`Envelope.plaintext`.
    """
    envelope = decode_envelope(data, max_size=max_size, max_depth=max_depth, max_items=max_items)
    envelope.verify(public_key)
    return envelope, envelope.plaintext(mesh_key)
