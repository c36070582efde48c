"""Keyed, deterministic, mergeable Bloom filters.

Theory of operation
-------------------
A filter is ``m`` bits and ``k`` index functions. An item (bytes) is hashed
once with BLAKE2b keyed by a secret (RFC 7693; ``digest_size=16``,
``person=b"vsm-edge-bloom1"``); the digest's two little-endian 64-bit halves
are ``h1`` and ``h2 | 1``, and the ``k`` bit indices are Kirsch and
Mitzenmacher's double hashing::

    g_i = ((h1 + i * h2) mod 2**64) mod m        for i in 0 .. k-1

Bit ``g`` is bit ``g % 8`` (least significant first) of byte ``g // 8``.
Because the hash is keyed, nobody without the key can choose items that land
on given bits (no targeted false positives, no filter pollution); because it is
deterministic, every node with the key computes the same bits, so filters
travel between nodes and merge by bitwise OR.

Sizing (for ``n`` items at false-positive rate ``p``)::

    m = ceil(-n ln p / (ln 2)**2)        k = max(1, round(m / n * ln 2))

and the expected false-positive rate after ``n`` insertions is
``(1 - exp(-k n / m)) ** k``.

A grow-only filter is a state-based CRDT: OR is commutative, associative and
idempotent, and the union of two filters equals the filter of the union of
their items, bit for bit (tests/test_bloom.py proves it with hypothesis).

Wire format, version 1 (all integers big-endian)::

    offset size  field
    0      4     magic  b"VSBF"
    4      1     version = 1
    5      1     k, 1 .. 64
    6      2     flags = 0 (reserved; anything else is rejected)
    8      8     m, the number of bits, 8 .. max_bits
    16     8     key id: BLAKE2b(b"", key=key, digest_size=8, person=b"vsm-edge-bkid1")
    24     ceil(m/8)  the bits; the unused high bits of the last byte are 0

The decoder is strict: exact length, known version, zero flags and padding,
bounded ``m``, and the key id must match the key it is given (a filter made
under another mesh secret is meaningless). Every failure raises
:class:`~vsm_edge.models.FilterFormatError`.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Final

from ._errors import FilterFormatError, IncompatibleFilterError

__all__ = [
    "DEFAULT_MAX_BITS",
    "BloomFilter",
    "derive_key",
    "false_positive_rate",
    "filter_key_id",
    "optimal_parameters",
]

MAGIC: Final = b"VSBF"
VERSION: Final = 1
HEADER: Final = struct.Struct(">4sBBHQ8s")
MAX_HASHES: Final = 64
MIN_BITS: Final = 8
DEFAULT_MAX_BITS: Final = 1 << 24  # 2 MiB of bits: far above any zone or nonce filter here
MIN_KEY: Final = 16
MAX_KEY: Final = 64  # BLAKE2b's key limit
DIGEST_SIZE: Final = 16
_PERSON: Final = b"vsm-edge-bloom1"
_KEYID_PERSON: Final = b"vsm-edge-bkid1"
_KDF_PERSON: Final = b"vsm-edge-kdf1"
_MASK64: Final = (1 << 64) - 1
_BATCH: Final = 1 << 15  # items per numpy chunk (bounds temporary memory to ~k * 256 KiB)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


def derive_key(secret: bytes, purpose: str) -> bytes:
    """A 32-byte filter key for one purpose (``"zone"``, ``"nonce"``...) from a mesh secret.

    Different purposes give unrelated keys, so a zone filter's bits say
    nothing about the nonce filters'. Raises ValueError when ``secret`` is not
    16..64 bytes or ``purpose`` is empty or longer than 64 bytes.
    """
    if not MIN_KEY <= len(secret) <= MAX_KEY:
        raise ValueError(f"secret must be {MIN_KEY}..{MAX_KEY} bytes, got {len(secret)}")
    label = purpose.encode("utf-8")
    if not 0 < len(label) <= 64:
        raise ValueError("purpose must be 1..64 bytes of UTF-8")
    return hashlib.blake2b(label, key=secret, digest_size=32, person=_KDF_PERSON).digest()


def optimal_parameters(capacity: int, fp_rate: float) -> tuple[int, int]:
    """``(m, k)`` for ``capacity`` items at false-positive rate ``fp_rate``.

    Raises ValueError for a capacity below 1, a rate outside (0, 1), or sizes
    past :data:`DEFAULT_MAX_BITS` / 64 hashes.
    """
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    if not 0.0 < fp_rate < 1.0:
        raise ValueError("fp_rate must be in (0, 1)")
    m = max(MIN_BITS, math.ceil(-capacity * math.log(fp_rate) / (math.log(2) ** 2)))
    k = max(1, round(m / capacity * math.log(2)))
    if m > DEFAULT_MAX_BITS:
        raise ValueError(f"{m} bits needed, more than the {DEFAULT_MAX_BITS} allowed")
    if k > MAX_HASHES:
        raise ValueError(f"{k} hashes needed, more than {MAX_HASHES}")
    return m, k


def false_positive_rate(num_bits: int, num_hashes: int, count: int) -> float:
    """The expected false-positive rate of an ``m``-bit, ``k``-hash filter holding ``count`` items.

    Raises ValueError for non-positive sizes or a negative count.
    """
    if num_bits < 1 or num_hashes < 1 or count < 0:
        raise ValueError("num_bits and num_hashes must be positive, count non-negative")
    return float((1.0 - math.exp(-num_hashes * count / num_bits)) ** num_hashes)


def filter_key_id(data: bytes) -> bytes:
    """The key id in a serialised filter's header, without decoding the rest.

    Lets a holder of several keys pick the one a filter was built under.
    Raises :class:`FilterFormatError` when ``data`` does not start with a
    version-1 header.
    """
    if len(data) < HEADER.size:
        raise FilterFormatError(f"{len(data)} bytes is shorter than the {HEADER.size}-byte header")
    magic, version, _, _, _, key_id = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise FilterFormatError("not a version-1 filter")
    return bytes(key_id)


def _key_id(key: bytes) -> bytes:
    return hashlib.blake2b(b"", key=key, digest_size=8, person=_KEYID_PERSON).digest()


class BloomFilter:
    """A keyed Bloom filter of ``num_bits`` bits and ``num_hashes`` index functions.

    Mutable (``add``, ``add_many``, ``update``); ``union`` is the pure merge.
    Items are bytes. Single-item operations run in plain Python (no numpy
    call overhead on the per-message path); ``*_many`` and merges run
    vectorised with numpy, which is imported on their first use (an agent's
    replay filters never need it: ~19 MB of RSS saved). Raises ValueError
    for a key outside 16..64 bytes or sizes outside the limits.
    """

    __slots__ = ("_array", "_base", "_bits", "_k", "_key", "_key_id", "_m")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(self, num_bits: int, num_hashes: int, key: bytes) -> None:
        if not MIN_KEY <= len(key) <= MAX_KEY:
            raise ValueError(f"key must be {MIN_KEY}..{MAX_KEY} bytes, got {len(key)}")
        if not MIN_BITS <= num_bits <= DEFAULT_MAX_BITS:
            raise ValueError(f"num_bits must be {MIN_BITS}..{DEFAULT_MAX_BITS}")
        if not 1 <= num_hashes <= MAX_HASHES:
            raise ValueError(f"num_hashes must be 1..{MAX_HASHES}")
        self._m = num_bits
        self._k = num_hashes
        self._key = bytes(key)
        self._key_id = _key_id(self._key)
        self._base = hashlib.blake2b(digest_size=DIGEST_SIZE, key=self._key, person=_PERSON)
        self._bits = bytearray((num_bits + 7) // 8)
        self._array: npt.NDArray[np.uint8] | None = None  # see _view

    @property
    def _view(self) -> npt.NDArray[np.uint8]:
        """A writable numpy view of the bytearray's memory (never resized), made on first use."""
        if self._array is None:
            import numpy as np

            self._array = np.frombuffer(self._bits, dtype=np.uint8)
        return self._array

    @classmethod
    def for_capacity(cls, capacity: int, fp_rate: float, key: bytes) -> BloomFilter:
        """An empty filter sized for ``capacity`` items at ``fp_rate`` (see the module doc)."""
        m, k = optimal_parameters(capacity, fp_rate)
        return cls(m, k, key)

    # -- shape ---------------------------------------------------------------

    @property
    def num_bits(self) -> int:
        return self._m

    @property
    def num_hashes(self) -> int:
        return self._k

    @property
    def key_id(self) -> bytes:
        """Eight bytes naming the key (a keyed hash of nothing; reveals nothing of the key)."""
        return self._key_id

    def compatible(self, other: BloomFilter) -> bool:
        """Whether ``other`` has the same size, hash count and key (so they can merge)."""
        return self._m == other._m and self._k == other._k and self._key_id == other._key_id

    # -- hashing -------------------------------------------------------------

    def hash_item(self, item: bytes) -> bytes:
        """The 16-byte keyed digest every index of ``item`` derives from.

        Filters with the same key share it, so a caller probing several
        filters (the rotating nonce pair) hashes once.
        """
        h = self._base.copy()
        h.update(item)
        return h.digest()

    def _indices(self, digest: bytes) -> list[int]:
        h1 = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:16], "little") | 1
        m = self._m
        return [((h1 + i * h2) & _MASK64) % m for i in range(self._k)]

    def _digests(self, items: Sequence[bytes]) -> npt.NDArray[np.uint64]:
        import numpy as np

        copy = self._base.copy  # copying the keyed state skips re-absorbing the key

        def digest(item: bytes) -> bytes:
            h = copy()
            h.update(item)
            return h.digest()

        joined = b"".join(map(digest, items))
        pairs: npt.NDArray[np.uint64] = np.frombuffer(joined, dtype="<u8").reshape(-1, 2)
        return pairs.astype(np.uint64, copy=False)

    def _batch_indices(self, pairs: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
        import numpy as np

        h1 = pairs[:, 0:1]
        h2 = pairs[:, 1:2] | np.uint64(1)
        steps = np.arange(self._k, dtype=np.uint64)[np.newaxis, :]
        # uint64 array arithmetic wraps modulo 2**64, as the scalar path masks.
        return (h1 + steps * h2) % np.uint64(self._m)

    # -- single items --------------------------------------------------------

    def add(self, item: bytes) -> bool:
        """Insert ``item``; True when it was definitely new (some bit was 0)."""
        return self.add_hashed(self.hash_item(item))

    def add_hashed(self, digest: bytes) -> bool:
        """Insert by a digest from :meth:`hash_item`; True when some bit was 0."""
        bits = self._bits
        new = False
        for g in self._indices(digest):
            byte, mask = g >> 3, 1 << (g & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                new = True
        return new

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, bytes | bytearray | memoryview):
            return False
        return self.contains_hashed(self.hash_item(bytes(item)))

    def contains_hashed(self, digest: bytes) -> bool:
        """Membership by a digest from :meth:`hash_item` (maybe / definitely not)."""
        # The per-message path: walk g_i = h1 + i*h2 by addition and stop at
        # the first clear bit (most non-members stop after one or two).
        bits = self._bits
        m = self._m
        g = int.from_bytes(digest[:8], "little")
        h2 = int.from_bytes(digest[8:16], "little") | 1
        for _ in range(self._k):
            i = g % m
            if not bits[i >> 3] & (1 << (i & 7)):
                return False
            g = (g + h2) & _MASK64
        return True

    # -- batches -------------------------------------------------------------

    def add_many(self, items: Iterable[bytes]) -> None:
        """Insert every item (vectorised)."""
        import numpy as np

        batch = list(items)
        for start in range(0, len(batch), _BATCH):
            idx = self._batch_indices(self._digests(batch[start : start + _BATCH])).ravel()
            masks = np.left_shift(np.uint8(1), (idx & np.uint64(7)).astype(np.uint8))
            np.bitwise_or.at(self._view, (idx >> np.uint64(3)).astype(np.intp), masks)

    def contains_many(self, items: Iterable[bytes]) -> npt.NDArray[np.bool_]:
        """A boolean array: for each item, maybe present (True) or definitely not (False)."""
        import numpy as np

        batch = list(items)
        out = np.empty(len(batch), dtype=np.bool_)
        for start in range(0, len(batch), _BATCH):
            idx = self._batch_indices(self._digests(batch[start : start + _BATCH]))
            got = self._view[(idx >> np.uint64(3)).astype(np.intp)]
            hit = (got >> (idx & np.uint64(7)).astype(np.uint8)) & np.uint8(1)
            out[start : start + len(idx)] = hit.all(axis=1)
        return out

    # -- merging (the CRDT join) --------------------------------------------

    def union(self, other: BloomFilter) -> BloomFilter:
        """A new filter holding both filters' items (bitwise OR); pure.

        Raises :class:`IncompatibleFilterError` unless both filters have the
        same size, hash count and key.
        """
        merged = self.copy()
        merged.update(other)
        return merged

    def update(self, other: BloomFilter) -> None:
        """Merge ``other`` into this filter in place (bitwise OR)."""
        if not self.compatible(other):
            raise IncompatibleFilterError(
                f"cannot merge a {self._m}-bit/{self._k}-hash filter (key {self._key_id.hex()}) "
                f"with a {other._m}-bit/{other._k}-hash one (key {other._key_id.hex()})"
            )
        import numpy as np

        np.bitwise_or(self._view, other._view, out=self._view)

    def __or__(self, other: BloomFilter) -> BloomFilter:
        return self.union(other)

    def __ior__(self, other: BloomFilter) -> BloomFilter:
        self.update(other)
        return self

    def copy(self) -> BloomFilter:
        """An independent filter with the same bits."""
        twin = BloomFilter(self._m, self._k, self._key)
        twin._bits[:] = self._bits
        return twin

    def clear(self) -> None:
        """Reset every bit to 0 (reuses the memory)."""
        # Same-length slice assignment: allowed while a numpy view exists, and
        # bytes(n) comes from calloc (no numpy needed on the replay path).
        self._bits[:] = bytes(len(self._bits))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BloomFilter):
            return NotImplemented
        return self.compatible(other) and self._bits == other._bits

    # -- estimates -----------------------------------------------------------

    def bits_set(self) -> int:
        """How many bits are 1."""
        return int.from_bytes(self._bits, "little").bit_count()

    def fill_ratio(self) -> float:
        """The fraction of bits set (0.5 at the designed capacity with optimal k)."""
        return self.bits_set() / self._m

    def estimated_count(self) -> float:
        """Swamidass and Baldi's estimate of the number of distinct items inserted."""
        x = self.bits_set()
        if x >= self._m:
            return math.inf
        return -self._m / self._k * math.log1p(-x / self._m)

    def current_fp_rate(self) -> float:
        """The false-positive rate now, from the fill ratio: ``fill ** k``."""
        return float(self.fill_ratio() ** self._k)

    # -- serialisation -------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The version-1 wire form (module docstring)."""
        return HEADER.pack(MAGIC, VERSION, self._k, 0, self._m, self._key_id) + bytes(self._bits)

    @classmethod
    def from_bytes(
        cls, data: bytes, key: bytes, *, max_bits: int = DEFAULT_MAX_BITS
    ) -> BloomFilter:
        """Decode the version-1 wire form, strictly, for ``key``.

        Raises :class:`FilterFormatError` for anything but a well-formed
        filter no larger than ``max_bits`` made under ``key``.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FilterFormatError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER.size:
            raise FilterFormatError(
                f"{len(data)} bytes is shorter than the {HEADER.size}-byte header"
            )
        magic, version, k, flags, m, key_id = HEADER.unpack_from(data)
        if magic != MAGIC:
            raise FilterFormatError(f"bad magic {magic!r}, expected {MAGIC!r}")
        if version != VERSION:
            raise FilterFormatError(
                f"unsupported filter version {version} (this code reads {VERSION})"
            )
        if flags != 0:
            raise FilterFormatError(f"reserved flags {flags:#06x} are not zero")
        if not 1 <= k <= MAX_HASHES:
            raise FilterFormatError(f"hash count {k} outside 1..{MAX_HASHES}")
        limit = min(max_bits, DEFAULT_MAX_BITS)
        if not MIN_BITS <= m <= limit:
            raise FilterFormatError(f"bit count {m} outside {MIN_BITS}..{limit}")
        body = (m + 7) // 8
        if len(data) != HEADER.size + body:
            raise FilterFormatError(
                f"length {len(data)} does not match {HEADER.size} + {body} for {m} bits"
            )
        if m % 8 and data[-1] >> (m % 8):
            raise FilterFormatError("padding bits past the last filter bit are not zero")
        try:
            bloom = cls(m, k, key)
        except ValueError as exc:
            raise FilterFormatError(f"unusable key: {exc}") from None
        if bloom._key_id != key_id:
            raise FilterFormatError(
                f"filter was built under key {key_id.hex()}, not {bloom._key_id.hex()}"
            )
        bloom._bits[:] = data[HEADER.size :]
        return bloom

    def __repr__(self) -> str:
        return (
            f"BloomFilter(num_bits={self._m}, num_hashes={self._k}, "
            f"key_id={self._key_id.hex()}, fill={self.fill_ratio():.3f})"
        )
