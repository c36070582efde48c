"""Helpers for tests of the wire codec (and of code built on it, e.g. gossip).

``node_key(i)`` and ``mesh_key(i)`` give fixed, distinct keys; ``build_sign1``
signs an *arbitrary* protected header (valid or not), so that tests can reach
each check of the decoder behind a valid signature; strategies generate valid
envelopes and arbitrary CBOR bytes for fuzzing.
"""

from __future__ import annotations

import hashlib
from typing import Any

import nacl.bindings
from hypothesis import strategies as st

from vsm_edge.sync import MeshKey, NodeKey, _cbor, sign_envelope

# Header labels of docs/protocol.md §2.
ALG, CONTENT_TYPE, KID, IV = 1, 3, 4, 5
VERSION, HLC, KIND, NONCE = -65537, -65538, -65539, -65540


def node_key(i: int) -> NodeKey:
    """A fixed node key: the seed is SHA-256 of ``node-<i>``."""
    return NodeKey(hashlib.sha256(f"node-{i}".encode()).digest())


def mesh_key(i: int) -> MeshKey:
    """A fixed mesh key: SHA-256 of ``mesh-<i>``."""
    return MeshKey(hashlib.sha256(f"mesh-{i}".encode()).digest())


def header(key: NodeKey, **overrides: Any) -> dict[int, Any]:
    """A valid version-1 protected header for ``key``; ``overrides`` by label name.

    Pass a value of ``...`` to drop a label, e.g. ``header(k, nonce=...)``.
    """
    labels = {"alg": ALG, "kid": KID, "version": VERSION, "hlc": HLC, "kind": KIND,
              "nonce": NONCE, "content_type": CONTENT_TYPE}  # fmt: skip
    h: dict[int, Any] = {ALG: -8, KID: key.kid, VERSION: 1, HLC: 1234, KIND: "delta",
                         NONCE: b"\x00" * 16}  # fmt: skip
    for name, value in overrides.items():
        if value is ...:
            h.pop(labels[name], None)
        else:
            h[labels[name]] = value
    return h


def build_sign1(
    key: NodeKey,
    protected: dict[Any, Any] | bytes,
    payload: Any,
    *,
    unprotected: Any = None,
    tag: int | None = 18,
) -> bytes:
    """A COSE_Sign1 over any header and payload, with a *valid* signature."""
    prot = protected if isinstance(protected, bytes) else _cbor.dumps(protected)
    signed_payload = payload if isinstance(payload, bytes) else b""
    to_sign = _cbor.dumps(["Signature1", prot, b"", signed_payload])
    signature = nacl.bindings.crypto_sign(to_sign, key.secret_key)[:64]
    body = [prot, {} if unprotected is None else unprotected, payload, signature]
    return _cbor.dumps(_cbor.CBORTag(tag, body) if tag is not None else body)


@st.composite
def envelopes(draw: st.DrawFn, *, encrypted: bool | None = None) -> tuple[bytes, dict[str, Any]]:
    """A valid envelope and the arguments it was made from."""
    if encrypted is None:
        encrypted = draw(st.booleans())
    payload = draw(st.binary(max_size=300))
    key = node_key(draw(st.integers(0, 3)))
    kwargs: dict[str, Any] = {
        "hlc": draw(st.integers(0, 2**64 - 1)),
        "kind": draw(st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True)),
        "nonce": draw(st.binary(min_size=8, max_size=64)),
    }
    if encrypted:
        kwargs["mesh_key"] = mesh_key(draw(st.integers(0, 1)))
        kwargs["iv"] = draw(st.binary(min_size=12, max_size=12))
    data = sign_envelope(payload, key, **kwargs)
    return data, {"payload": payload, "key": key, **kwargs}


def _head(major: int, value: int, width: int | None = None) -> bytes:
    """A head with the given argument width (None: shortest) — may be non-shortest."""
    if width is None:
        return _cbor.encode_head(major, value)
    info = {0: value, 1: 24, 2: 25, 4: 26, 8: 27}[width]
    if width == 0:
        return bytes([(major << 5) | value])
    return bytes([(major << 5) | info]) + value.to_bytes(width, "big")


def _width_for(value: int) -> st.SearchStrategy[int | None]:
    widths: list[int | None] = [None]
    widths += [w for w in (1, 2, 4, 8) if value < 1 << (8 * w)]
    return st.sampled_from(widths)


# false, true, null, undefined, simple(16), simple(32), 1.0 as half, single
# and double, a reserved head and a stray break.
SIMPLE_AND_FLOATS = [
    bytes.fromhex(h)
    for h in ("f4", "f5", "f6", "f7", "f0", "f820", "f93c00", "fa3f800000",
              "fb3ff0000000000000", "fc", "ff")
]  # fmt: skip


@st.composite
def raw_cbor(draw: st.DrawFn, depth: int = 2) -> bytes:
    """Arbitrary CBOR-ish bytes: valid items mixed with the forms we reject.

    Covers every major type, non-shortest heads, indefinite lengths and
    breaks, tags, simple values, floats, duplicate and non-string keys.
    """
    choice = draw(st.integers(0, 9 if depth > 0 else 4))
    if choice == 0:  # integer
        major = draw(st.integers(0, 1))
        value = draw(st.integers(0, 2**64 - 1) | st.integers(0, 30))
        return _head(major, value, draw(_width_for(value)))
    if choice == 1:  # string, maybe not UTF-8
        major = draw(st.integers(2, 3))
        body = draw(st.binary(max_size=20) | st.text(max_size=10).map(str.encode))
        return _head(major, len(body), draw(_width_for(len(body)))) + body
    if choice == 2:  # simple value or float
        return draw(st.sampled_from(SIMPLE_AND_FLOATS))
    if choice == 3:  # raw random bytes
        return draw(st.binary(max_size=8))
    if choice == 4:  # a valid item of the data model
        return _cbor.dumps(draw(st.recursive(
            st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1) | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3), max_leaves=5)))  # fmt: skip
    if choice in (5, 6):  # array or map, definite or indefinite
        n = draw(st.integers(0, 3))
        children = [draw(raw_cbor(depth - 1)) for _ in range(n * (2 if choice == 6 else 1))]
        major = 4 if choice == 5 else 5
        if draw(st.integers(0, 4)) == 0:
            return bytes([(major << 5) | 31]) + b"".join(children) + b"\xff"
        return _head(major, n, draw(_width_for(n))) + b"".join(children)
    if choice == 7:  # tag
        tag = draw(st.sampled_from([0, 1, 2, 16, 18, 24, 55799, 2**32]))
        return _head(6, tag, draw(_width_for(tag))) + draw(raw_cbor(depth - 1))
    if choice == 8:  # map with duplicate keys
        key = draw(raw_cbor(0))
        return b"\xa2" + key + b"\x01" + key + b"\x02"
    # indefinite-length string
    return b"\x5f\x41a\x41b\xff"
