"""Bloom filters: the documented hashing, sizing, the CRDT algebra and a strict decoder."""

from __future__ import annotations

import hashlib
import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.models import (
    BloomFilter,
    FilterFormatError,
    IncompatibleFilterError,
    derive_key,
    false_positive_rate,
    optimal_parameters,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
items = st.lists(st.binary(min_size=0, max_size=40), max_size=60)


def spec_indices(item: bytes, key: bytes, m: int, k: int) -> list[int]:
    """The module docstring's rule, written out independently of the code."""
    d = hashlib.blake2b(item, digest_size=16, key=key, person=b"vsm-edge-bloom1").digest()
    h1 = int.from_bytes(d[:8], "little")
    h2 = int.from_bytes(d[8:], "little") | 1
    return [((h1 + i * h2) % 2**64) % m for i in range(k)]


def spec_bits(members: list[bytes], key: bytes, m: int, k: int) -> bytes:
    bits = bytearray((m + 7) // 8)
    for item in members:
        for g in spec_indices(item, key, m, k):
            bits[g // 8] |= 1 << (g % 8)
    return bytes(bits)


def test_sizing_follows_the_textbook_formulas() -> None:
    m, k = optimal_parameters(1000, 0.01)
    assert m == math.ceil(-1000 * math.log(0.01) / math.log(2) ** 2) == 9586
    assert k == 7
    assert optimal_parameters(1, 0.5) == (8, 6)  # floor of 8 bits; k optimal for those 8
    assert false_positive_rate(m, k, 1000) == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize(("capacity", "rate"), [(0, 0.1), (10, 0.0), (10, 1.0), (10**9, 1e-9)])
def test_sizing_rejects_impossible_requests(capacity: int, rate: float) -> None:
    with pytest.raises(ValueError):
        optimal_parameters(capacity, rate)


@pytest.mark.parametrize("key", [b"", b"short", bytes(65)])
def test_keys_must_be_16_to_64_bytes(key: bytes) -> None:
    with pytest.raises(ValueError):
        BloomFilter(64, 3, key)


@settings(max_examples=60)
@given(items)
def test_bits_match_the_documented_rule_scalar_and_batched(members: list[bytes]) -> None:
    one, many = BloomFilter(1021, 5, KEY), BloomFilter(1021, 5, KEY)
    for item in members:
        one.add(item)
    many.add_many(members)
    want = spec_bits(members, KEY, 1021, 5)
    assert one.to_bytes()[24:] == want
    assert many.to_bytes()[24:] == want


@settings(max_examples=60)
@given(items, st.lists(st.binary(max_size=40), max_size=60))
def test_no_false_negatives_and_batch_lookups_agree(
    members: list[bytes], probes: list[bytes]
) -> None:
    bloom = BloomFilter.for_capacity(100, 0.01, KEY)
    bloom.add_many(members)
    assert all(item in bloom for item in members)
    assert bloom.contains_many(members).all()
    batch = bloom.contains_many(probes)
    assert batch.tolist() == [p in bloom for p in probes]


def test_hashing_is_keyed_and_deterministic() -> None:
    members = [f"kid-{i}".encode() for i in range(50)]
    a, b, c = (BloomFilter(4096, 4, key) for key in (KEY, KEY, OTHER_KEY))
    for bloom in (a, b, c):
        bloom.add_many(members)
    assert a == b
    assert a.to_bytes()[24:] != c.to_bytes()[24:]  # another key, other bits
    assert a.key_id != c.key_id


def test_add_reports_definitely_new() -> None:
    bloom = BloomFilter(4096, 4, KEY)
    assert bloom.add(b"x") is True
    assert bloom.add(b"x") is False


def test_contains_rejects_non_bytes() -> None:
    bloom = BloomFilter(64, 2, KEY)
    bloom.add(b"1")
    assert 1 not in bloom
    assert "1" not in bloom


def test_false_positive_rate_at_capacity_matches_theory() -> None:
    rng = random.Random(1)
    capacity, rate = 5000, 0.01
    bloom = BloomFilter.for_capacity(capacity, rate, KEY)
    bloom.add_many([rng.randbytes(16) for _ in range(capacity)])
    probes = [rng.randbytes(17) for _ in range(50_000)]  # other length: never members
    measured = float(bloom.contains_many(probes).mean())
    theory = false_positive_rate(bloom.num_bits, bloom.num_hashes, capacity)
    # 50k probes at ~1 %: the standard deviation is ~0.045 percentage points.
    assert abs(measured - theory) < 0.002, (measured, theory)
    k, m = bloom.num_hashes, bloom.num_bits
    assert bloom.fill_ratio() == pytest.approx(1 - math.exp(-k * capacity / m), abs=0.005)
    assert bloom.estimated_count() == pytest.approx(capacity, rel=0.03)
    assert bloom.current_fp_rate() == pytest.approx(theory, rel=0.1)


# -- the CRDT join --------------------------------------------------------------


def bloom_of(members: list[bytes]) -> BloomFilter:
    bloom = BloomFilter(512, 3, KEY)
    bloom.add_many(members)
    return bloom


@settings(max_examples=80)
@given(items, items, items)
def test_union_is_commutative_associative_idempotent(
    a: list[bytes], b: list[bytes], c: list[bytes]
) -> None:
    x, y, z = bloom_of(a), bloom_of(b), bloom_of(c)
    assert x | y == y | x
    assert (x | y) | z == x | (y | z)
    assert x | x == x
    assert x | y == bloom_of(a + b)  # merge of filters == filter of the merged sets


def test_union_is_pure_and_update_is_in_place() -> None:
    x, y = bloom_of([b"a"]), bloom_of([b"b"])
    before = x.to_bytes()
    merged = x.union(y)
    assert x.to_bytes() == before
    x |= y
    assert x == merged


@pytest.mark.parametrize(
    "other", [BloomFilter(513, 3, KEY), BloomFilter(512, 4, KEY), BloomFilter(512, 3, OTHER_KEY)]
)
def test_union_refuses_incompatible_filters(other: BloomFilter) -> None:
    with pytest.raises(IncompatibleFilterError):
        bloom_of([b"a"]).union(other)


def test_clear_and_copy() -> None:
    x = bloom_of([b"a", b"b"])
    twin = x.copy()
    x.clear()
    assert x.bits_set() == 0
    assert b"a" in twin


# -- the wire format ------------------------------------------------------------


def test_round_trip_and_header_layout() -> None:
    bloom = bloom_of([b"a", b"b", b"c"])
    blob = bloom.to_bytes()
    assert blob[:4] == b"VSBF"
    assert blob[4] == 1  # version
    assert blob[5] == 3  # k
    assert int.from_bytes(blob[8:16], "big") == 512
    assert len(blob) == 24 + 64
    assert BloomFilter.from_bytes(blob, KEY) == bloom


def test_odd_sizes_round_trip() -> None:
    bloom = BloomFilter(1021, 5, KEY)
    bloom.add_many([bytes([i]) for i in range(200)])
    assert BloomFilter.from_bytes(bloom.to_bytes(), KEY) == bloom


def valid_blob() -> bytes:
    bloom = BloomFilter(1021, 5, KEY)
    bloom.add_many([bytes([i]) for i in range(50)])
    return bloom.to_bytes()


def patched(blob: bytes, offset: int, value: bytes) -> bytes:
    return blob[:offset] + value + blob[offset + len(value) :]


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"", "shorter"),
        (valid_blob()[:23], "shorter"),
        (valid_blob()[:-1], "length"),
        (valid_blob() + b"\0", "length"),
        (patched(valid_blob(), 0, b"XSBF"), "magic"),
        (patched(valid_blob(), 4, b"\x02"), "version"),
        (patched(valid_blob(), 5, b"\x00"), "hash count"),
        (patched(valid_blob(), 5, b"\x41"), "hash count"),
        (patched(valid_blob(), 6, b"\x00\x01"), "flags"),
        (patched(valid_blob(), 8, (7).to_bytes(8, "big")), "bit count"),
        (patched(valid_blob(), 8, (1 << 40).to_bytes(8, "big")), "bit count"),
        (patched(valid_blob(), 16, bytes(8)), "key"),
        (valid_blob()[:-1] + b"\xff", "padding"),
    ],
)
def test_decoder_rejects_malformed_input(blob: bytes, why: str) -> None:
    with pytest.raises(FilterFormatError, match=why):
        BloomFilter.from_bytes(blob, KEY)


def test_decoder_rejects_filters_over_the_limit() -> None:
    blob = BloomFilter(1 << 16, 3, KEY).to_bytes()
    with pytest.raises(FilterFormatError, match="bit count"):
        BloomFilter.from_bytes(blob, KEY, max_bits=1 << 15)
    assert BloomFilter.from_bytes(blob, KEY, max_bits=1 << 16).num_bits == 1 << 16


def test_decoder_rejects_another_key_and_bad_keys() -> None:
    with pytest.raises(FilterFormatError, match="key"):
        BloomFilter.from_bytes(valid_blob(), OTHER_KEY)
    with pytest.raises(FilterFormatError, match="key"):
        BloomFilter.from_bytes(valid_blob(), b"short")
    with pytest.raises(FilterFormatError):
        BloomFilter.from_bytes("not bytes", KEY)  # type: ignore[arg-type]


def check_decode(blob: bytes) -> None:
    try:
        bloom = BloomFilter.from_bytes(blob, KEY)
    except FilterFormatError:
        return
    assert bloom.to_bytes() == blob  # what decodes, re-encodes to the same bytes


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(blob: bytes) -> None:
    check_decode(blob)
    check_decode(b"VSBF\x01" + blob)


@settings(max_examples=300)
@given(st.data())
def test_fuzz_truncated_and_bit_flipped(data: st.DataObject) -> None:
    blob = valid_blob()
    cut = data.draw(st.integers(0, len(blob)))
    check_decode(blob[:cut])
    flips = data.draw(st.lists(st.integers(0, len(blob) * 8 - 1), min_size=1, max_size=4))
    mutable = bytearray(blob)
    for bit in flips:
        mutable[bit // 8] ^= 1 << (bit % 8)
    check_decode(bytes(mutable))


def test_derive_key_separates_purposes() -> None:
    secret = b"s" * 32
    zone, nonce = derive_key(secret, "zone"), derive_key(secret, "nonce")
    assert len(zone) == 32
    assert zone != nonce
    assert derive_key(secret, "zone") == zone
    with pytest.raises(ValueError):
        derive_key(b"short", "zone")
    with pytest.raises(ValueError):
        derive_key(secret, "")


def test_large_batches_are_chunked() -> None:
    rng = np.random.default_rng(3)
    members = [rng.bytes(8) for _ in range(40_000)]  # more than one 32768-item chunk
    bloom = BloomFilter.for_capacity(40_000, 0.01, KEY)
    bloom.add_many(members)
    assert bloom.contains_many(members).all()
    assert all(m in bloom for m in members[::997])
