"""The zone: which key ids are admitted to the mesh, as admin-published Bloom filters.

Theory of operation
-------------------
The admin keeps the exact list of admitted kids and publishes a
:class:`ZonePolicy`: an *epoch* and one Bloom filter of the kids per filter
key (normally one key; two while the mesh secret rotates). The agent signs and
ships :meth:`ZonePolicy.to_bytes` as the retained ``vsm/{mesh}/policy``
payload; verifying the admin's signature is the agent's job, before
:meth:`ZonePolicy.from_bytes`.

Merging is a CRDT join, so policies can travel by gossip as well as by the
retained topic: the higher epoch wins outright (a removal is a rebuild under
a new epoch, since a Bloom filter cannot forget), and equal epochs union
their filters key by key (adding kids needs no new epoch; the filters are
built with ``headroom`` for that).

False positives: a kid outside the zone passes with probability ``fp_rate``
(1e-9 by default, ~43 bits a kid). The filter key is secret to the mesh, so
an outsider cannot grind key pairs offline against it; an insider can, with
about ``1 / fp_rate`` key generations, which is why the default is small and
why the signature check and the quarantine stand behind the zone.

Wire format, version 1 (big-endian)::

    0   4  magic b"VSZP"
    4   1  version = 1
    5   1  number of filters, 1 .. 4
    6   2  flags = 0
    8   8  epoch (unsigned)
    16  .. per filter: u32 length, then a version-1 filter (see _bloom)

Decoding is strict (exact length, zero flags, each filter strictly decoded,
at most ``max_bytes``); filters under keys the reader does not hold are
skipped, but at least one must be readable. Every failure raises
:class:`FilterFormatError`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ._bloom import BloomFilter, filter_key_id, optimal_parameters
from ._errors import FilterFormatError

__all__ = ["ZonePolicy", "build_zone_filter"]

MAGIC: Final = b"VSZP"
VERSION: Final = 1
MAX_FILTERS: Final = 4
HEADER: Final = struct.Struct(">4sBBHQ")
LENGTH: Final = struct.Struct(">I")
DEFAULT_MAX_BYTES: Final = 1 << 21
MAX_EPOCH: Final = (1 << 64) - 1


def build_zone_filter(
    kids: Iterable[bytes],
    key: bytes,
    *,
    fp_rate: float = 1e-9,
    headroom: float = 2.0,
    min_capacity: int = 64,
) -> BloomFilter:
    """A zone filter holding ``kids``, sized for ``headroom`` times as many.

    Raises ValueError for a bad key, rate or headroom below 1.
    """
    if headroom < 1.0:
        raise ValueError("headroom must be at least 1")
    members = list(kids)
    capacity = max(min_capacity, math.ceil(len(members) * headroom))
    m, k = optimal_parameters(capacity, fp_rate)
    bloom = BloomFilter(m, k, key)
    bloom.add_many(members)
    return bloom


@dataclass(frozen=True, slots=True)
class ZonePolicy:
    """An epoch and the zone filters under each key the reader holds.

    Treat the filters as immutable (every method here returns new ones).
    ``kid in policy`` is true when any filter admits the kid.
    """

    epoch: int
    filters: tuple[BloomFilter, ...]

    def __post_init__(self) -> None:
        if not 0 <= self.epoch <= MAX_EPOCH:
            raise ValueError("epoch must be an unsigned 64-bit integer")
        if not 1 <= len(self.filters) <= MAX_FILTERS:
            raise ValueError(f"a policy has 1..{MAX_FILTERS} filters")
        ids = [f.key_id for f in self.filters]
        if len(set(ids)) != len(ids):
            raise ValueError("at most one filter per key")

    @classmethod
    def build(
        cls,
        kids: Iterable[bytes],
        keys: Sequence[bytes],
        *,
        epoch: int,
        fp_rate: float = 1e-9,
        headroom: float = 2.0,
    ) -> ZonePolicy:
        """The admin's side: one filter of ``kids`` per key in ``keys``."""
        members = list(kids)
        return cls(
            epoch,
            tuple(
                build_zone_filter(members, key, fp_rate=fp_rate, headroom=headroom) for key in keys
            ),
        )

    def __contains__(self, kid: object) -> bool:
        return any(kid in f for f in self.filters)

    def merge(self, other: ZonePolicy) -> ZonePolicy:
        """The join: the higher epoch wins; equal epochs union filters of the same key."""
        if other.epoch != self.epoch:
            return self if self.epoch > other.epoch else other
        mine = {f.key_id: f for f in self.filters}
        for f in other.filters:
            current = mine.get(f.key_id)
            mine[f.key_id] = f if current is None else current.union(f)
        merged = tuple(mine[k] for k in sorted(mine))
        if len(merged) > MAX_FILTERS:
            merged = merged[:MAX_FILTERS]
        return ZonePolicy(self.epoch, merged)

    def to_bytes(self) -> bytes:
        """The version-1 wire form (module doc); filters in key-id order."""
        parts = [HEADER.pack(MAGIC, VERSION, len(self.filters), 0, self.epoch)]
        for f in sorted(self.filters, key=lambda f: f.key_id):
            blob = f.to_bytes()
            parts.append(LENGTH.pack(len(blob)))
            parts.append(blob)
        return b"".join(parts)

    @classmethod
    def from_bytes(
        cls, data: bytes, keys: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> ZonePolicy:
        """Decode strictly, keeping the filters built under one of ``keys``.

        Raises :class:`FilterFormatError` for malformed input, input over
        ``max_bytes``, or when no filter is under a key we hold.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FilterFormatError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) > max_bytes:
            raise FilterFormatError(f"policy of {len(data)} bytes exceeds {max_bytes}")
        if len(data) < HEADER.size:
            raise FilterFormatError("policy shorter than its header")
        magic, version, count, flags, epoch = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise FilterFormatError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise FilterFormatError(f"unsupported policy version {version}")
        if flags != 0:
            raise FilterFormatError("reserved policy flags are not zero")
        if not 1 <= count <= MAX_FILTERS:
            raise FilterFormatError(f"policy has {count} filters, expected 1..{MAX_FILTERS}")
        by_id: dict[bytes, bytes] = {}
        for key in keys:
            probe = BloomFilter(8, 1, key) if 16 <= len(key) <= 64 else None
            if probe is not None:
                by_id[probe.key_id] = key
        pos = HEADER.size
        seen: set[bytes] = set()
        kept: list[BloomFilter] = []
        for _ in range(count):
            if pos + LENGTH.size > len(data):
                raise FilterFormatError("policy truncated before a filter length")
            (length,) = LENGTH.unpack_from(data, pos)
            pos += LENGTH.size
            if length > len(data) - pos:
                raise FilterFormatError("policy truncated inside a filter")
            blob = data[pos : pos + length]
            pos += length
            key_id = filter_key_id(blob)
            if key_id in seen:
                raise FilterFormatError("two filters under the same key")
            seen.add(key_id)
            held = by_id.get(key_id)
            if held is not None:
                kept.append(BloomFilter.from_bytes(blob, held))
        if pos != len(data):
            raise FilterFormatError(f"{len(data) - pos} trailing bytes after the last filter")
        if not kept:
            raise FilterFormatError("no filter in the policy is under a key we hold")
        return cls(epoch, tuple(kept))
