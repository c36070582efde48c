"""Non-causal delta CRDTs: GCounter, PNCounter and the plain LWW register.

Their states are maps joined pointwise by ``max``, so a delta is just the part
of the map that changed, merging is order-insensitive and every delta is
causally ready anywhere. The digest is a :class:`VersionVector`:

* GCounter: node -> that node's count (grows with every increment);
* PNCounter: node -> ``p + n``, the node's increments plus decrements, which
  grows with every op (the value ``p - n`` does not);
* LWWRegister: ``{writer: packed HLC + 1}`` of the winning write (empty when
  never written).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._cbor import dumps
from ._context import MAX_NODES, VersionVector, _wire_node, _wire_uint, check_node
from ._errors import MalformedError
from ._hlc import Timestamp
from ._values import freeze, value_from_cbor, value_to_cbor

__all__ = ["GCounter", "LWWRegister", "PNCounter"]

MAX_COUNT = (1 << 64) - 1


class GCounter:
    """Grow-only counter: node -> count, value = sum."""

    __slots__ = ("_c",)
    KIND: ClassVar[int] = 1
    _c: dict[str, int]

    def __init__(self) -> None:
        object.__setattr__(self, "_c", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("GCounter is immutable")

    @classmethod
    def _make(cls, c: dict[str, int]) -> GCounter:
        self = object.__new__(cls)
        object.__setattr__(self, "_c", c)
        return self

    def increment(self, node: str, amount: int = 1) -> GCounter:
        """Delta adding ``amount`` >= 1 to ``node``'s count.

        Raises ValueError for a non-positive amount, OverflowError past 2**64-1.
        """
        check_node(node)
        if type(amount) is not int or amount < 1:
            raise ValueError("a GCounter grows by a positive int")
        new = self._c.get(node, 0) + amount
        if new > MAX_COUNT:
            raise OverflowError("GCounter entry passes 2**64-1")
        return GCounter._make({node: new})

    def value(self) -> int:
        return sum(self._c.values())

    def merge(self, other: GCounter) -> GCounter:
        """Pointwise max; pure."""
        if type(other) is not GCounter:
            raise TypeError(f"cannot merge {type(other).__name__} into GCounter")
        if not other._c:
            return self
        c = dict(self._c)
        for n, v in other._c.items():
            if v > c.get(n, 0):
                c[n] = v
        return GCounter._make(c)

    def digest(self) -> VersionVector:
        return VersionVector(self._c)

    def delta_since(self, digest: VersionVector) -> GCounter:
        return GCounter._make({n: v for n, v in self._c.items() if v > digest[n]})

    def is_ready(self, local: VersionVector) -> bool:
        """Always True: a max-join needs no causal order."""
        return True

    def is_bottom(self) -> bool:
        return not self._c

    def __eq__(self, other: object) -> bool:
        return type(other) is GCounter and self._c == other._c

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({dict(sorted(self._c.items()))})"

    def to_cbor(self) -> list[Any]:
        """``[1, {node: count}]``."""
        return [self.KIND, dict(self._c)]

    @classmethod
    def from_cbor(cls, obj: object) -> GCounter:
        body = _kind_body(obj, cls.KIND, "GCounter")
        if not isinstance(body, dict) or len(body) > MAX_NODES:
            raise MalformedError("GCounter body must be a map of at most 4096 nodes")
        for n, v in body.items():
            _wire_node(n)
            _wire_uint(v, 1, MAX_COUNT)
        return cls._make(dict(body))


class PNCounter:
    """Counter with increments and decrements: node -> (p, n), value = sum(p - n)."""

    __slots__ = ("_c",)
    KIND: ClassVar[int] = 2
    _c: dict[str, tuple[int, int]]

    def __init__(self) -> None:
        object.__setattr__(self, "_c", {})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("PNCounter is immutable")

    @classmethod
    def _make(cls, c: dict[str, tuple[int, int]]) -> PNCounter:
        self = object.__new__(cls)
        object.__setattr__(self, "_c", c)
        return self

    def increment(self, node: str, amount: int = 1) -> PNCounter:
        """Delta adding ``amount`` (any non-zero int; negative decrements)."""
        check_node(node)
        if type(amount) is not int or amount == 0:
            raise ValueError("amount must be a non-zero int")
        p, n = self._c.get(node, (0, 0))
        if amount > 0:
            p += amount
        else:
            n -= amount
        if p > MAX_COUNT or n > MAX_COUNT:
            raise OverflowError("PNCounter entry passes 2**64-1")
        return PNCounter._make({node: (p, n)})

    def decrement(self, node: str, amount: int = 1) -> PNCounter:
        return self.increment(node, -amount)

    def value(self) -> int:
        return sum(p - n for p, n in self._c.values())

    def merge(self, other: PNCounter) -> PNCounter:
        if type(other) is not PNCounter:
            raise TypeError(f"cannot merge {type(other).__name__} into PNCounter")
        if not other._c:
            return self
        c = dict(self._c)
        for node, (p, n) in other._c.items():
            mp, mn = c.get(node, (0, 0))
            c[node] = (max(p, mp), max(n, mn))
        return PNCounter._make(c)

    def digest(self) -> VersionVector:
        return VersionVector({node: p + n for node, (p, n) in self._c.items()})

    def delta_since(self, digest: VersionVector) -> PNCounter:
        # p and n only grow, so p + n > d iff this entry moved past the digest.
        return PNCounter._make({k: v for k, v in self._c.items() if v[0] + v[1] > digest[k]})

    def is_ready(self, local: VersionVector) -> bool:
        return True

    def is_bottom(self) -> bool:
        return not self._c

    def __eq__(self, other: object) -> bool:
        return type(other) is PNCounter and self._c == other._c

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter({dict(sorted(self._c.items()))})"

    def to_cbor(self) -> list[Any]:
        """``[2, {node: [p, n]}]``."""
        return [self.KIND, {k: [p, n] for k, (p, n) in self._c.items()}]

    @classmethod
    def from_cbor(cls, obj: object) -> PNCounter:
        body = _kind_body(obj, cls.KIND, "PNCounter")
        if not isinstance(body, dict) or len(body) > MAX_NODES:
            raise MalformedError("PNCounter body must be a map of at most 4096 nodes")
        c = {}
        for node, pn in body.items():
            _wire_node(node)
            if not isinstance(pn, list) or len(pn) != 2:
                raise MalformedError("a PNCounter entry is [p, n]")
            p = _wire_uint(pn[0], 0, MAX_COUNT)
            n = _wire_uint(pn[1], 0, MAX_COUNT)
            if p + n == 0:
                raise MalformedError("a PNCounter entry is not [0, 0]")
            c[node] = (p, n)
        return cls._make(c)


class LWWRegister:
    """Last-writer-wins register ordered by HLC :class:`Timestamp` (whose node
    id breaks ties). Standalone only: it cannot be removed from an ORMap; use
    :class:`CausalLWWRegister` there."""

    __slots__ = ("_stamp", "_value")
    KIND: ClassVar[int] = 3
    _stamp: Timestamp | None
    _value: Any

    def __init__(self) -> None:
        object.__setattr__(self, "_stamp", None)
        object.__setattr__(self, "_value", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("LWWRegister is immutable")

    @classmethod
    def _make(cls, stamp: Timestamp | None, value: Any) -> LWWRegister:
        self = object.__new__(cls)
        object.__setattr__(self, "_stamp", stamp)
        object.__setattr__(self, "_value", value)
        return self

    def set(self, stamp: Timestamp, value: object) -> LWWRegister:
        """Delta writing ``value`` at ``stamp``; empty when ``stamp`` is not
        after the current write (it would lose anyway)."""
        check_node(stamp.node)
        v = freeze(value)
        if self._stamp is not None and stamp <= self._stamp:
            return LWWRegister()
        return LWWRegister._make(stamp, v)

    @property
    def timestamp(self) -> Timestamp | None:
        return self._stamp

    def value(self) -> Any:
        return self._value

    def merge(self, other: LWWRegister) -> LWWRegister:
        if type(other) is not LWWRegister:
            raise TypeError(f"cannot merge {type(other).__name__} into LWWRegister")
        if other._stamp is None:
            return self
        if self._stamp is None or other._stamp > self._stamp:
            return other
        # One stamp, two values: only a misused clock does this. Pick
        # deterministically so replicas still converge.
        if (other._stamp == self._stamp and other._value != self._value
                and dumps(value_to_cbor(other._value)) > dumps(value_to_cbor(self._value))):
            return other
        return self

    def digest(self) -> VersionVector:
        if self._stamp is None:
            return VersionVector()
        # +1 so that stamp 0.0 is not confused with "never written" (absent).
        return VersionVector({self._stamp.node: self._stamp.packed + 1})

    def delta_since(self, digest: VersionVector) -> LWWRegister:
        if self._stamp is None:
            return self
        entries = list(digest.items())
        if len(entries) == 1:
            remote = Timestamp.unpack(entries[0][1] - 1, entries[0][0])
            if remote >= self._stamp:
                return LWWRegister()
        return self

    def is_ready(self, local: VersionVector) -> bool:
        return True

    def is_bottom(self) -> bool:
        return self._stamp is None

    def __eq__(self, other: object) -> bool:
        return (type(other) is LWWRegister and self._stamp == other._stamp
                and self._value == other._value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister({self._stamp}, {self._value!r})"

    def to_cbor(self) -> list[Any]:
        """``[3, null]`` or ``[3, [hlc, node, value]]``."""
        if self._stamp is None:
            return [self.KIND, None]
        return [self.KIND, [self._stamp.packed, self._stamp.node, value_to_cbor(self._value)]]

    @classmethod
    def from_cbor(cls, obj: object) -> LWWRegister:
        body = _kind_body(obj, cls.KIND, "LWWRegister")
        if body is None:
            return cls()
        if not isinstance(body, list) or len(body) != 3:
            raise MalformedError("an LWWRegister body is null or [hlc, node, value]")
        packed = _wire_uint(body[0], 0, (1 << 64) - 1)
        node = _wire_node(body[1])
        return cls._make(Timestamp.unpack(packed, node), value_from_cbor(body[2]))


def _kind_body(obj: object, kind: int, name: str) -> object:
    if not isinstance(obj, list) or len(obj) != 2:
        raise MalformedError(f"{name} must be a 2-element array [kind, body]")
    if type(obj[0]) is not int or obj[0] != kind:
        raise MalformedError(f"expected kind {kind} ({name}), got {obj[0]!r:.40}")
    return obj[1]
