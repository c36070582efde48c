"""Replay detection: a rotating pair of Bloom filters plus an exact recent set.

Theory of operation
-------------------
An envelope is identified by ``(kid, HLC, nonce)``. Let ``A`` be the oldest
HLC accepted (``max_age_ms``) and ``F`` how far ahead of our clock an HLC may
be (``max_ahead_ms``, the HLC's max offset, 60 s by default). An envelope with
wall time ``t`` arriving at ``now`` is rejected outright when
``now - t > A`` (too old) or ``t - now > F`` (too far ahead).

Coverage. If an envelope passing those checks is a replay, its original
passed them too when it arrived at ``r``, so ``r >= t - F`` and
``now - r <= A + F``. Remembering every accepted envelope for ``W = A + F``
therefore catches every replay. The filters rotate every ``W``: an entry
lives in the *current* filter until the next rotation and then in the
*previous* one until the rotation after, i.e. between ``W`` and ``2W``.
Memory is two filters, each sized for ``capacity`` entries per period.

Three answers. The Bloom pair answers "definitely never seen" (FRESH) or
"maybe seen". A maybe is resolved by an *exact* set of the most recent
``exact_capacity`` entries (their 16-byte keyed digests, FIFO):

* the digest is in the exact set: a certain replay (REPLAY);
* it is not, and every possible original (received at ``r >= t - F``) would
  still be in the exact set, because nothing that recent was evicted: the
  Bloom hit was a false positive, so FRESH (counted as ``bloom_fp_resolved``);
* it is not, but the set evicted entries that recent: nobody knows (MAYBE).

So the exact set answers at low rates, the Bloom filters bound memory at high
rates, and only what neither can prove goes on to the arbitrator. Time only
moves forward here (``now`` is the largest value seen), so a wall clock that
steps back makes the checks stricter, never looser.

Limits: the window is memory, not a log. After a restart it is empty, so an
envelope received in the last ``W`` before the restart can be replayed once
(its re-merge is idempotent, so it costs work, not correctness).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from ._bloom import BloomFilter, optimal_parameters

__all__ = ["ReplayConfig", "ReplayVerdict", "ReplayWindow"]

MAX_KID: Final = 64
MAX_NONCE: Final = 64
_WALL_SHIFT: Final = 16


class ReplayVerdict(enum.Enum):
    FRESH = "fresh"
    REPLAY = "replay"
    MAYBE = "maybe"
    TOO_OLD = "too-old"
    TOO_FAR_AHEAD = "too-far-ahead"


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """Sizes and time bounds of a :class:`ReplayWindow` (see the module doc)."""

    max_age_ms: int = 60_000
    max_ahead_ms: int = 60_000
    capacity: int = 100_000  # entries per rotation period (A + F)
    fp_rate: float = 1e-4
    exact_capacity: int = 4_096

    def __post_init__(self) -> None:
        if self.max_age_ms <= 0 or self.max_ahead_ms < 0:
            raise ValueError("max_age_ms must be positive and max_ahead_ms non-negative")
        if self.exact_capacity < 0:
            raise ValueError("exact_capacity must be non-negative")
        optimal_parameters(self.capacity, self.fp_rate)  # raises for impossible sizes

    @property
    def period_ms(self) -> int:
        return self.max_age_ms + self.max_ahead_ms


def entry_bytes(kid: bytes, hlc: int, nonce: bytes) -> bytes:
    """The unambiguous byte string hashed for ``(kid, hlc, nonce)``.

    ``len(kid)`` (one byte), ``kid``, the HLC as eight big-endian bytes, then
    the nonce. Callers check the bounds first (kid and nonce at most 64
    bytes, HLC an unsigned 64-bit integer).
    """
    return bytes((len(kid),)) + kid + hlc.to_bytes(8, "big") + nonce


class ReplayWindow:
    """Remembers recent ``(kid, HLC, nonce)`` entries; see the module doc.

    ``key`` is the filters' BLAKE2b key (derive it per mesh with
    :func:`derive_key`), ``now_ms`` the clock at creation.
    """

    def __init__(self, key: bytes, config: ReplayConfig | None = None, *, now_ms: int = 0) -> None:
        self.config = config or ReplayConfig()
        m, k = optimal_parameters(self.config.capacity, self.config.fp_rate)
        self._current = BloomFilter(m, k, key)
        self._previous = BloomFilter(m, k, key)
        self._period = self.config.period_ms
        self._current_start = now_ms
        self._now = now_ms
        self._current_count = 0
        self._exact: OrderedDict[bytes, int] = OrderedDict()
        # Receive time of the newest entry evicted from the exact set for lack
        # of room: absence from the set proves nothing at or before it.
        self._exact_horizon = -1
        self.rotations = 0
        self.saturated = 0
        self.bloom_fp_resolved = 0
        self.exact_evictions = 0

    @property
    def now_ms(self) -> int:
        return self._now

    def advance(self, now_ms: int) -> int:
        """Move the window's clock to ``max(now, now_ms)`` and rotate; returns that time."""
        if now_ms > self._now:
            self._now = now_ms
        now = self._now
        if now >= self._current_start + self._period:
            if now >= self._current_start + 2 * self._period:
                # Nothing arrived for two periods: both filters are stale.
                self._previous.clear()
                self._current.clear()
                self._current_start = now
            else:
                self._previous, self._current = self._current, self._previous
                self._current.clear()
                self._current_start += self._period
            self._current_count = 0
            self.rotations += 1
        # Exact entries received before the previous filter's start can never
        # be an original of an envelope that passes the age checks.
        oldest = self._current_start - self._period
        exact = self._exact
        while exact:
            digest, received = next(iter(exact.items()))
            if received >= oldest:
                break
            del exact[digest]
        return now

    def check(self, kid: bytes, hlc: int, nonce: bytes, now_ms: int) -> ReplayVerdict:
        """Classify one envelope and remember it unless it is rejected.

        FRESH and MAYBE entries are recorded (so an immediate repeat is a
        certain REPLAY); TOO_OLD, TOO_FAR_AHEAD and REPLAY are not. Raises
        ValueError when ``kid`` or ``nonce`` is longer than 64 bytes or the
        HLC is not an unsigned 64-bit integer (the gateway checks first).
        """
        if len(kid) > MAX_KID or len(nonce) > MAX_NONCE or not 0 <= hlc < 1 << 64:
            raise ValueError("kid/nonce longer than 64 bytes or HLC outside u64")
        now = self.advance(now_ms)
        wall = hlc >> _WALL_SHIFT
        if now - wall > self.config.max_age_ms:
            return ReplayVerdict.TOO_OLD
        if wall - now > self.config.max_ahead_ms:
            return ReplayVerdict.TOO_FAR_AHEAD
        digest = self._current.hash_item(entry_bytes(kid, hlc, nonce))
        if digest in self._exact:
            return ReplayVerdict.REPLAY
        maybe_seen = self._current.contains_hashed(digest) or self._previous.contains_hashed(digest)
        verdict = ReplayVerdict.FRESH
        if maybe_seen:
            if wall - self.config.max_ahead_ms > self._exact_horizon:
                self.bloom_fp_resolved += 1
            else:
                verdict = ReplayVerdict.MAYBE
        self._record(digest, now)
        return verdict

    def _record(self, digest: bytes, now: int) -> None:
        if self._current.add_hashed(digest):
            self._current_count += 1
            if self._current_count == self.config.capacity + 1:
                self.saturated += 1
        cap = self.config.exact_capacity
        if cap == 0:
            self._exact_horizon = now
            return
        self._exact[digest] = now
        if len(self._exact) > cap:
            _, received = self._exact.popitem(last=False)
            self._exact_horizon = max(self._exact_horizon, received)
            self.exact_evictions += 1

    def statistics(self) -> dict[str, int | float]:
        """Counters and fill levels (plain numbers, ready for JSON)."""
        return {
            "rotations": self.rotations,
            "saturated_periods": self.saturated,
            "bloom_fp_resolved": self.bloom_fp_resolved,
            "exact_entries": len(self._exact),
            "exact_evictions": self.exact_evictions,
            "current_fill": round(self._current.fill_ratio(), 4),
            "previous_fill": round(self._previous.fill_ratio(), 4),
        }
