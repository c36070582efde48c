"""Zone policies: building, the epoch/union join, key rotation, a strict decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vsm_edge.models import (
    BloomFilter,
    FilterFormatError,
    ZonePolicy,
    build_zone_filter,
    derive_key,
)

OLD = derive_key(b"old mesh secret, 32 bytes long..", "zone")
NEW = derive_key(b"new mesh secret, 32 bytes long..", "zone")
KIDS = [bytes([i]) * 32 for i in range(20)]


def test_built_filter_admits_members_and_rejects_others() -> None:
    zone = build_zone_filter(KIDS, OLD)
    assert all(kid in zone for kid in KIDS)
    outsiders = [b"out" + i.to_bytes(4, "big") for i in range(2000)]
    assert not zone.contains_many(outsiders).any()  # fp rate 1e-9
    assert zone.num_bits >= 64 * 40  # sized for headroom over the 64-kid floor


def test_policy_round_trip_and_membership() -> None:
    policy = ZonePolicy.build(KIDS, [OLD], epoch=3)
    blob = policy.to_bytes()
    assert blob[:4] == b"VSZP"
    again = ZonePolicy.from_bytes(blob, [OLD])
    assert again.epoch == 3
    assert again.filters == policy.filters
    assert KIDS[5] in again
    assert b"\x99" * 32 not in again


def test_key_rotation_two_filters_each_reader_uses_its_key() -> None:
    policy = ZonePolicy.build(KIDS, [OLD, NEW], epoch=9)
    blob = policy.to_bytes()
    for keys in ([OLD], [NEW], [OLD, NEW], [NEW, OLD]):
        seen = ZonePolicy.from_bytes(blob, keys)
        assert all(kid in seen for kid in KIDS)
        assert len(seen.filters) == len(keys)
    with pytest.raises(FilterFormatError, match="no filter"):
        ZonePolicy.from_bytes(blob, [derive_key(b"x" * 32, "zone")])


def test_higher_epoch_wins_even_with_fewer_members() -> None:
    before = ZonePolicy.build(KIDS, [OLD], epoch=1)
    removal = ZonePolicy.build(KIDS[1:], [OLD], epoch=2)
    assert KIDS[0] not in before.merge(removal)
    assert KIDS[0] not in removal.merge(before)


kid_sets = st.lists(st.binary(min_size=32, max_size=32), max_size=8)
policies = st.builds(
    lambda kids, epoch, keys: ZonePolicy.build(kids, keys, epoch=epoch, headroom=1.0),
    kid_sets,
    st.integers(0, 2),
    st.sampled_from([[OLD], [NEW], [OLD, NEW]]),
)


@settings(max_examples=60)
@given(policies, policies, policies)
def test_merge_is_a_join(a: ZonePolicy, b: ZonePolicy, c: ZonePolicy) -> None:
    def same(x: ZonePolicy, y: ZonePolicy) -> bool:
        return x.epoch == y.epoch and x.to_bytes() == y.to_bytes()

    assert same(a.merge(b), b.merge(a))
    assert same(a.merge(b).merge(c), a.merge(b.merge(c)))
    assert same(a.merge(a), a)


def test_equal_epochs_union_their_members() -> None:
    a = ZonePolicy.build(KIDS[:10], [OLD], epoch=5)
    b = ZonePolicy.build(KIDS[10:], [OLD], epoch=5)
    merged = a.merge(b)
    assert all(kid in merged for kid in KIDS)


def test_policy_invariants() -> None:
    f = build_zone_filter(KIDS, OLD)
    with pytest.raises(ValueError):
        ZonePolicy(-1, (f,))
    with pytest.raises(ValueError):
        ZonePolicy(1, ())
    with pytest.raises(ValueError):
        ZonePolicy(1, (f, f.copy()))


def valid() -> bytes:
    return ZonePolicy.build(KIDS, [OLD, NEW], epoch=7).to_bytes()


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"VSZP", "shorter"),
        (b"XSZP" + valid()[4:], "magic"),
        (valid()[:4] + b"\x02" + valid()[5:], "version"),
        (valid()[:5] + b"\x00" + valid()[6:], "filters"),
        (valid()[:5] + b"\x05" + valid()[6:], "filters"),
        (valid()[:6] + b"\x00\x01" + valid()[8:], "flags"),
        (valid()[:-1], "filter"),
        (valid() + b"\x00", "trailing"),
        (valid()[:16] + b"\x00\x00", "truncated"),
    ],
)
def test_decoder_rejects_malformed_policies(blob: bytes, why: str) -> None:
    with pytest.raises(FilterFormatError, match=why):
        ZonePolicy.from_bytes(blob, [OLD, NEW])


def test_decoder_bounds_the_size() -> None:
    with pytest.raises(FilterFormatError, match="exceeds"):
        ZonePolicy.from_bytes(valid(), [OLD], max_bytes=100)


def test_duplicate_key_filters_are_rejected() -> None:
    f = build_zone_filter(KIDS, OLD).to_bytes()
    blob = b"VSZP\x01\x02\x00\x00" + (1).to_bytes(8, "big")
    blob += 2 * (len(f).to_bytes(4, "big") + f)
    with pytest.raises(FilterFormatError, match="same key"):
        ZonePolicy.from_bytes(blob, [OLD])


def check(blob: bytes) -> None:
    try:
        policy = ZonePolicy.from_bytes(blob, [OLD, NEW])
    except FilterFormatError:
        return
    assert isinstance(policy.filters[0], BloomFilter)


@settings(max_examples=200)
@given(st.data())
def test_fuzz_whole_truncated_flipped(data: st.DataObject) -> None:
    blob = valid()
    check(data.draw(st.binary(max_size=64)))
    check(blob[: data.draw(st.integers(0, len(blob)))])
    mutable = bytearray(blob)
    for bit in data.draw(st.lists(st.integers(0, len(blob) * 8 - 1), min_size=1, max_size=3)):
        mutable[bit // 8] ^= 1 << (bit % 8)
    check(bytes(mutable))
