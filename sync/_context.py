"""Dots, causal contexts and version vectors: the digests of the CRDTs.

A *dot* ``(node, counter)`` names one event of one replica; counters start at
1 and a replica never reuses one. A :class:`CausalContext` is a set of dots
stored per node as sorted, disjoint, non-adjacent inclusive ranges: when the
first range starts at 1 it *is* the compact version vector entry of that node
and the remaining ranges are the *dot cloud* (dots received out of order).
Compaction is implicit: adding the dot that closes a gap fuses the ranges, so
a context that saw every dot of a node is one range ``[1, n]``. A context
restricted to "dots a peer lacks" (what :meth:`difference` returns) is
usually one short range per node, which is why ranges, not single dots, are
the unit of the cloud.

A :class:`VersionVector` (node -> count) is the digest of the non-causal
types (counters, the plain LWW register).
"""

from __future__ import annotations

import re
import sys
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple, cast

from ._errors import MalformedError

__all__ = [
    "MAX_COUNTER",
    "CausalContext",
    "Dot",
    "VersionVector",
    "check_node",
]

MAX_COUNTER = (1 << 63) - 1
MAX_NODES = 4096
MAX_RANGES = 65536
_NODE_RE = re.compile(r"[A-Za-z0-9._~-]{1,64}")


class Dot(NamedTuple):
    """One event of one replica: ``(node, counter)``, counter >= 1."""

    node: str
    counter: int


def check_node(node: object) -> str:
    """Return ``node`` if it is a valid node id (1-64 URL-safe characters).

    Raises ValueError (a programming error at the call site, not a wire error).
    """
    if not isinstance(node, str) or _NODE_RE.fullmatch(node) is None:
        raise ValueError(f"node id must be 1-64 URL-safe characters, got {node!r}")
    return node


def _wire_node(obj: object) -> str:
    if not isinstance(obj, str) or _NODE_RE.fullmatch(obj) is None:
        raise MalformedError(f"bad node id {obj!r:.80}")
    return obj


def _wire_uint(obj: object, lo: int = 0, hi: int = MAX_COUNTER) -> int:
    if type(obj) is not int or not lo <= obj <= hi:
        raise MalformedError(f"expected an integer in {lo}..{hi}, got {obj!r:.80}")
    return obj


def _union_ranges(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a:
        return b
    if not b:
        return a
    if len(a) == 2 and len(b) == 2:
        if a[0] == 1 and b[0] == 1:
            return a if a[1] >= b[1] else b
        if a[0] <= b[0] <= a[1] + 1:  # b extends a (a replica's next dots)
            return a if a[1] >= b[1] else (a[0], b[1])
    pairs = sorted([(a[i], a[i + 1]) for i in range(0, len(a), 2)]
                   + [(b[i], b[i + 1]) for i in range(0, len(b), 2)])
    out: list[int] = []
    for lo, hi in pairs:
        if out and lo <= out[-1] + 1:
            if hi > out[-1]:
                out[-1] = hi
        else:
            out += (lo, hi)
    return tuple(out)


def _subtract_ranges(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    if not a or not b:
        return a
    out: list[int] = []
    j = 0
    nb = len(b)
    for i in range(0, len(a), 2):
        lo, hi = a[i], a[i + 1]
        while j < nb and b[j + 1] < lo:
            j += 2
        k = j
        while lo <= hi and k < nb and b[k] <= hi:
            if b[k] > lo:
                out += (lo, b[k] - 1)
            lo = max(lo, b[k + 1] + 1)
            k += 2
        if lo <= hi:
            out += (lo, hi)
    return tuple(out)


def _intersect_ranges(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    out: list[int] = []
    i = j = 0
    while i < len(a) and j < len(b):
        lo = max(a[i], b[j])
        hi = min(a[i + 1], b[j + 1])
        if lo <= hi:
            out += (lo, hi)
        if a[i + 1] < b[j + 1]:
            i += 2
        else:
            j += 2
    return tuple(out)


def _ranges_contain(r: tuple[int, ...], c: int) -> bool:
    if r[0] == 1 and c <= r[1]:
        return True
    i = bisect_right(r, c)
    return bool(i & 1) or (i > 0 and r[i - 1] == c)


class CausalContext:
    """An immutable set of dots: compact version vector plus a cloud of ranges.

    Equal sets of dots have equal (and equally hashed) contexts, whatever the
    order in which the dots arrived. This is the digest of every causal CRDT.
    """

    __slots__ = ("_hash", "_r")

    _r: dict[str, tuple[int, ...]]
    _hash: int | None

    def __init__(self, ranges: Mapping[str, Iterable[int]] | None = None) -> None:
        """Build from ``{node: [lo1, hi1, lo2, hi2, ...]}`` (any order, overlaps fused).

        Raises ValueError for a bad node id or a range outside 1..2**63-1.
        """
        r: dict[str, tuple[int, ...]] = {}
        for node, flat in (ranges or {}).items():
            check_node(node)
            seq = tuple(flat)
            if len(seq) % 2:
                raise ValueError("ranges come in (lo, hi) pairs")
            acc: tuple[int, ...] = ()
            for i in range(0, len(seq), 2):
                lo, hi = seq[i], seq[i + 1]
                if not 1 <= lo <= hi <= MAX_COUNTER:
                    raise ValueError(f"bad dot range {lo}..{hi}")
                acc = _union_ranges(acc, (lo, hi))
            if acc:
                r[node] = acc
        object.__setattr__(self, "_r", r)
        object.__setattr__(self, "_hash", None)

    @classmethod
    def _make(cls, r: dict[str, tuple[int, ...]]) -> CausalContext:
        self = object.__new__(cls)
        object.__setattr__(self, "_r", r)
        object.__setattr__(self, "_hash", None)
        return self

    @classmethod
    def from_vv(cls, vv: Mapping[str, int]) -> CausalContext:
        """The context holding dots ``(n, 1..vv[n])`` for every node ``n``."""
        return cls({n: (1, c) for n, c in vv.items() if c > 0})

    @classmethod
    def from_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        """The context holding exactly ``dots``."""
        ctx = EMPTY_CONTEXT
        for d in dots:
            ctx = ctx.add(d)
        return ctx

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CausalContext is immutable")

    # -- queries -------------------------------------------------------------

    def __contains__(self, dot: object) -> bool:
        node, counter = cast(Dot, dot)
        r = self._r.get(node)
        return r is not None and _ranges_contain(r, counter)

    def max(self, node: str) -> int:
        """The highest counter of ``node`` in this context (0 when none)."""
        r = self._r.get(node)
        return r[-1] if r else 0

    def next_dot(self, node: str) -> Dot:
        """The dot ``node`` mints next: one past its highest known counter."""
        return Dot(node, self.max(node) + 1)

    @property
    def vv(self) -> dict[str, int]:
        """The compact version vector: node -> n with every dot 1..n present."""
        return {n: r[1] for n, r in self._r.items() if r[0] == 1}

    @property
    def cloud(self) -> dict[str, tuple[int, ...]]:
        """Out-of-order ranges beyond the version vector, node -> (lo, hi, ...)."""
        out = {}
        for n, r in self._r.items():
            rest = r[2:] if r[0] == 1 else r
            if rest:
                out[n] = rest
        return out

    def ranges(self) -> dict[str, tuple[int, ...]]:
        """A copy of ``{node: (lo1, hi1, ...)}``."""
        return dict(self._r)

    def nodes(self) -> Iterator[str]:
        return iter(self._r)

    def dots(self) -> Iterator[Dot]:
        """Every dot, node by node in ascending counter order."""
        for node, r in self._r.items():
            for i in range(0, len(r), 2):
                for c in range(r[i], r[i + 1] + 1):
                    yield Dot(node, c)

    def dot_count(self) -> int:
        """The number of dots (not of ranges); may exceed ``sys.maxsize``."""
        total = 0
        for r in self._r.values():
            for i in range(0, len(r), 2):
                total += r[i + 1] - r[i] + 1
        return total

    def __len__(self) -> int:
        """:meth:`dot_count`, capped at ``sys.maxsize`` (``len()`` cannot return more)."""
        return min(self.dot_count(), sys.maxsize)

    def __bool__(self) -> bool:
        return bool(self._r)

    def range_count(self) -> int:
        return sum(len(r) // 2 for r in self._r.values())

    def covers(self, other: CausalContext) -> bool:
        """True when every dot of ``other`` is in this context."""
        for node, rb in other._r.items():
            ra = self._r.get(node)
            if ra is None or _subtract_ranges(rb, ra):
                return False
        return True

    # -- algebra -------------------------------------------------------------

    def add(self, dot: Dot) -> CausalContext:
        node, c = dot
        r = self._r.get(node, ())
        if r and _ranges_contain(r, c):
            return self
        new = dict(self._r)
        new[node] = _union_ranges(r, (c, c))
        return CausalContext._make(new)

    def union(self, other: CausalContext) -> CausalContext:
        """The join: every dot of either context."""
        if not other._r:
            return self
        if not self._r:
            return other
        new = dict(self._r)
        changed = False
        for node, rb in other._r.items():
            ra = new.get(node)
            if ra is None:
                new[node] = rb
                changed = True
            elif ra != rb:
                u = _union_ranges(ra, rb)
                if u != ra:
                    new[node] = u
                    changed = True
        return CausalContext._make(new) if changed else self

    __or__ = union

    def difference(self, other: CausalContext) -> CausalContext:
        """The dots of this context that ``other`` lacks."""
        new = {}
        for node, ra in self._r.items():
            rb = other._r.get(node)
            d = _subtract_ranges(ra, rb) if rb else ra
            if d:
                new[node] = d
        return CausalContext._make(new)

    __sub__ = difference

    def intersection(self, other: CausalContext) -> CausalContext:
        """The meet: dots in both. The meet of every replica's digest is what
        is *causally stable*, the argument of ``compact``."""
        new = {}
        for node, ra in self._r.items():
            rb = other._r.get(node)
            if rb:
                i = _intersect_ranges(ra, rb)
                if i:
                    new[node] = i
        return CausalContext._make(new)

    __and__ = intersection

    # -- values ----------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CausalContext) and self._r == other._r

    def __hash__(self) -> int:
        h = self._hash
        if h is None:
            h = hash(frozenset(self._r.items()))
            object.__setattr__(self, "_hash", h)
        return h

    def __repr__(self) -> str:
        parts = []
        for n in sorted(self._r):
            r = self._r[n]
            parts.append(
                f"{n}:" + ",".join(
                    f"{r[i]}" if r[i] == r[i + 1] else f"{r[i]}-{r[i + 1]}"
                    for i in range(0, len(r), 2)
                )
            )
        return f"CausalContext({' '.join(parts)})"

    def to_cbor(self) -> dict[str, list[int]]:
        """``{node: [lo1, hi1, lo2, hi2, ...]}`` (see docs/protocol.md §3)."""
        return {n: list(r) for n, r in self._r.items()}

    @classmethod
    def from_cbor(cls, obj: object) -> CausalContext:
        """Strict inverse of :meth:`to_cbor`; raises MalformedError."""
        if not isinstance(obj, dict):
            raise MalformedError("causal context must be a map")
        if len(obj) > MAX_NODES:
            raise MalformedError("causal context has too many nodes")
        r: dict[str, tuple[int, ...]] = {}
        total = 0
        for node, flat in obj.items():
            _wire_node(node)
            if not isinstance(flat, list) or not flat or len(flat) % 2:
                raise MalformedError("causal context ranges must be a non-empty list of pairs")
            total += len(flat)
            if total > 2 * MAX_RANGES:
                raise MalformedError("causal context has too many ranges")
            prev = -1
            for i in range(0, len(flat), 2):
                lo = _wire_uint(flat[i], 1)
                hi = _wire_uint(flat[i + 1], lo)
                if lo <= prev + 1:
                    raise MalformedError("causal context ranges must be sorted, disjoint "
                                         "and non-adjacent")
                prev = hi
            r[node] = tuple(flat)
        return cls._make(r)


EMPTY_CONTEXT = CausalContext()


class VersionVector:
    """An immutable map node -> non-negative count (absent means 0).

    The digest of the counters and of the plain LWW register.
    """

    __slots__ = ("_v",)

    _v: dict[str, int]

    def __init__(self, entries: Mapping[str, int] | None = None) -> None:
        v = {}
        for node, count in (entries or {}).items():
            check_node(node)
            if type(count) is not int or not 0 <= count <= (1 << 64) - 1:
                raise ValueError(f"version vector count must be 0..2**64-1, got {count!r}")
            if count:
                v[node] = count
        object.__setattr__(self, "_v", v)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("VersionVector is immutable")

    def __getitem__(self, node: str) -> int:
        return self._v.get(node, 0)

    def get(self, node: str, default: int = 0) -> int:
        return self._v.get(node, default)

    def items(self) -> Iterator[tuple[str, int]]:
        return iter(self._v.items())

    def __len__(self) -> int:
        return len(self._v)

    def covers(self, other: VersionVector) -> bool:
        """True when every entry of ``other`` is <= ours."""
        return all(self._v.get(n, 0) >= c for n, c in other._v.items())

    def union(self, other: VersionVector) -> VersionVector:
        """Pointwise maximum."""
        v = dict(self._v)
        for n, c in other._v.items():
            if c > v.get(n, 0):
                v[n] = c
        return VersionVector(v)

    def intersection(self, other: VersionVector) -> VersionVector:
        """Pointwise minimum."""
        return VersionVector({n: min(c, other[n]) for n, c in self._v.items()})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionVector) and self._v == other._v

    def __hash__(self) -> int:
        return hash(frozenset(self._v.items()))

    def __repr__(self) -> str:
        return f"VersionVector({dict(sorted(self._v.items()))})"

    def to_cbor(self) -> dict[str, int]:
        """``{node: count}`` with zero entries omitted."""
        return dict(self._v)

    @classmethod
    def from_cbor(cls, obj: Any) -> VersionVector:
        """Strict inverse of :meth:`to_cbor`; raises MalformedError."""
        if not isinstance(obj, dict) or len(obj) > MAX_NODES:
            raise MalformedError("version vector must be a map of at most 4096 nodes")
        for node, count in obj.items():
            _wire_node(node)
            _wire_uint(count, 1, (1 << 64) - 1)
        self = object.__new__(cls)
        object.__setattr__(self, "_v", dict(obj))
        return self
