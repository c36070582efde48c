"""Causal delta-state CRDTs: AWSet, MVRegister, CausalLWWRegister, CCounter, ORMap.

Theory of operation
-------------------
These are the *causal CRDTs* of Almeida, Shoker and Baquero ("Delta state
replicated data types", 2018): a value is a *dot store* plus a *causal
context*. Dot stores nest: a ``DotSet`` is a set of dots, a ``DotFun`` maps
dots to immutable payloads, a ``DotMap`` maps keys to dot stores. Every live
entry is named by a dot that no other entry will ever carry, and the context
holds every dot the replica has *seen*. The paper's join keeps an entry when
both sides hold it or when the other side has not seen its dot; an entry the
other side has seen but no longer holds was removed there.

Anti-entropy with a version-vector digest breaks that rule. Digest-driven
repair wants ``delta_since(remote_context)``: the entries and context the
remote lacks. But a remove mints no dot in the plain paper types, so a remote
that saw an element's add cannot learn from a digest that it missed the
remove; and a delta holding a *partial* store with the *full* context would
delete every live entry outside the partial store at the receiver. So here:

1. Every mutation mints fresh dots of the mutating replica, removals and
   overwrites included, so the context (the digest) grows with every op.
2. An op that removes or supersedes entries keeps a *removal record*
   ``op-dot -> {removed dots}``. A set add that replaces the element's older
   dots, a register write, a counter increment (which replaces the
   incrementer's previous dot) and a map-key removal all leave one.
3. A value is thus ``(store, context, records)``. Its *dead* dots are
   ``K = (context - dots(store)) | removed(records)``, its live dots
   ``context - K``. The join is the union of contexts, of records and of
   dead sets; an entry survives iff it is live on one side and dead on
   neither. Unions of sets are a join-semilattice, so merge is commutative,
   associative and idempotent, whether the arguments are full states, deltas
   or groups of deltas (the tests check all three).
4. ``delta_since(D)`` = entries whose dots are not in ``D``, plus the context
   restricted to dots not in ``D``, plus the records whose op dot is not in
   ``D``. Receivers never need dots they already have: if they saw an entry's
   dot they also saw (or will get with this delta) every record killing it.
   A mutation delta carries only the op's fresh dots in its context, so it
   never claims knowledge of an op it does not carry.
5. Records are garbage. ``compact(stable)`` drops a record once its op dot
   *and* all the dots it removed are in ``stable``, the meet of the digests
   of every replica (the gossip layer computes it). Then every replica has
   applied the removal and holds the removed dots in its context, so the
   context alone keeps them dead: that is what bounds tombstones. A replica
   left out of the meet that later returns with old state can resurrect
   removed entries (as with any GC grace period); the caller must include
   every replica that may still send state.

Causal readiness (Almeida's condition for joining a delta at a replica):
a delta is *ready* at a replica whose context is ``C`` when merging it opens
no new gap, i.e. for every node ``n`` every dot ``(n, k)`` below the delta's
highest dot of ``n`` is in ``C`` or in the delta, and every dot the delta's
records remove is too. :meth:`missing_dependencies` lists what is missing.
Readiness is *not* needed for convergence (the join above is correct for any
order); it keeps contexts compact and gives causal consistency of reads.

Implementation: states are persistent values (``immutables.Map``, a HAMT), so
merging a one-key delta into a 10,000-key map costs O(log n), not a copy. A
dot index (dot -> path) finds the entries a delta kills without a scan.

Why one module: the dot stores, the join and the removal records are one
algebra; each type is a few lines of it, and the property tests check them together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, TypeVar, cast

import immutables

from ._context import (
    EMPTY_CONTEXT,
    MAX_COUNTER,
    CausalContext,
    Dot,
    _wire_node,
    _wire_uint,
    check_node,
)
from ._errors import MalformedError
from ._hlc import Timestamp
from ._values import (
    Key,
    check_key,
    freeze,
    key_order,
    value_from_cbor,
    value_to_cbor,
    wire_key,
)

__all__ = [
    "AWSet",
    "CCounter",
    "CausalCRDT",
    "CausalLWWRegister",
    "MVRegister",
    "ORMap",
]

Path = tuple[Any, ...]
T = TypeVar("T", bound="CausalCRDT")
V = TypeVar("V", bound="CausalCRDT")

MAX_ENTRIES = 1_000_000
MAX_MAP_DEPTH = 8

# -- dot stores ---------------------------------------------------------------


class DotSet:
    """A set of dots (leaf)."""

    __slots__ = ("dots",)
    dots: frozenset[Dot]

    def __init__(self, dots: frozenset[Dot] = frozenset()) -> None:
        self.dots = dots

    def __bool__(self) -> bool:
        return bool(self.dots)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DotSet) and self.dots == other.dots

    __hash__ = None  # type: ignore[assignment]

    def empty(self) -> DotSet:
        return _EMPTY_SET

    def with_(self, dot: Dot, payload: Any) -> DotSet:
        return DotSet(self.dots | {dot})

    def without(self, dot: Dot) -> DotSet:
        return DotSet(self.dots - {dot})

    def payload(self, dot: Dot) -> Any:
        return None

    def items(self) -> Iterator[tuple[Dot, Any]]:
        for d in self.dots:
            yield d, None

    def __repr__(self) -> str:
        return f"DotSet({sorted(self.dots)})"


class DotFun:
    """A map dot -> immutable payload (leaf)."""

    __slots__ = ("entries",)
    entries: Mapping[Dot, Any]

    def __init__(self, entries: Mapping[Dot, Any] | None = None) -> None:
        self.entries = entries if entries is not None else {}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DotFun) and dict(self.entries) == dict(other.entries)

    __hash__ = None  # type: ignore[assignment]

    def empty(self) -> DotFun:
        return _EMPTY_FUN

    def with_(self, dot: Dot, payload: Any) -> DotFun:
        e = dict(self.entries)
        e[dot] = payload
        return DotFun(e)

    def without(self, dot: Dot) -> DotFun:
        e = dict(self.entries)
        del e[dot]
        return DotFun(e)

    def payload(self, dot: Dot) -> Any:
        return self.entries[dot]

    def items(self) -> Iterator[tuple[Dot, Any]]:
        return iter(self.entries.items())

    def __repr__(self) -> str:
        return f"DotFun({dict(sorted(self.entries.items()))})"


class DotMap:
    """A map key -> non-empty dot store (inner node)."""

    __slots__ = ("entries",)
    entries: immutables.Map[Any, Store]

    def __init__(self, entries: immutables.Map[Any, Store] | None = None) -> None:
        self.entries = entries if entries is not None else immutables.Map()

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DotMap) and self.entries == other.entries

    __hash__ = None  # type: ignore[assignment]

    def empty(self) -> DotMap:
        return _EMPTY_MAP

    def __repr__(self) -> str:
        return f"DotMap({dict(self.entries.items())})"


Store = DotSet | DotFun | DotMap
Leaf = DotSet | DotFun
_EMPTY_SET = DotSet()
_EMPTY_FUN = DotFun()
_EMPTY_MAP = DotMap()


def _walk(store: Store, path: Path = ()) -> Iterator[tuple[Dot, Path, Any]]:
    if isinstance(store, DotMap):
        for key, child in store.entries.items():
            yield from _walk(child, (*path, key))
    else:
        for dot, payload in store.items():
            yield dot, path, payload


def _leaf_at(store: Store, path: Path) -> Leaf:
    for key in path:
        store = cast(DotMap, store).entries[key]
    return cast(Leaf, store)


def _remove(store: Store, path: Path, i: int, dot: Dot) -> Store:
    if i == len(path):
        return cast(Leaf, store).without(dot)
    m = cast(DotMap, store)
    key = path[i]
    child = _remove(m.entries[key], path, i + 1, dot)
    if child:
        return DotMap(m.entries.set(key, child))
    return DotMap(m.entries.delete(key))


def _insert(store: Store, path: Path, i: int, dot: Dot, payload: Any, like: Store) -> Store:
    """Insert ``dot`` at ``path``; missing containers are made like ``like``'s."""
    if i == len(path):
        return cast(Leaf, store).with_(dot, payload)
    m = cast(DotMap, store)
    key = path[i]
    like_child = cast(DotMap, like).entries[key]
    child = m.entries.get(key)
    if child is None:
        child = like_child.empty()
    return DotMap(m.entries.set(key, _insert(child, path, i + 1, dot, payload, like_child)))


def _assemble(like: Store, items: list[tuple[Path, Dot, Any]], depth: int = 0) -> Store:
    """A new store holding ``items`` (path, dot, payload), shaped like ``like``."""
    if isinstance(like, DotMap):
        groups: dict[Any, list[tuple[Path, Dot, Any]]] = {}
        for item in items:
            groups.setdefault(item[0][depth], []).append(item)
        return DotMap(immutables.Map(
            {k: _assemble(like.entries[k], g, depth + 1) for k, g in groups.items()}))
    if isinstance(like, DotSet):
        return DotSet(frozenset(d for _, d, _ in items))
    return DotFun({d: p for _, d, p in items})


def _index_of(store: Store) -> immutables.Map[Dot, Path]:
    index: dict[Dot, Path] = {}
    for dot, path, _ in _walk(store):
        if dot in index:
            raise ValueError(f"dot {dot} appears twice in one store")
        index[dot] = path
    return immutables.Map(index)


# -- the causal base ----------------------------------------------------------

_EMPTY_RECORDS: immutables.Map[Dot, frozenset[Dot]] = immutables.Map()
_EMPTY_INDEX: immutables.Map[Dot, Path] = immutables.Map()


class CausalCRDT:
    """Base of the causal CRDTs: an immutable ``(store, context, records)``.

    Implements the delta-CRDT protocol (see :mod:`vsm_edge.sync._crdt`):
    ``merge``, ``digest`` (the :class:`CausalContext`), ``delta_since``,
    ``compact``, ``to_cbor``/``from_cbor``. Mutators live on the subclasses;
    each returns a delta, a value of the same type, to be merged locally and
    shipped to peers.
    """

    __slots__ = ("_ctx", "_index", "_pending", "_records", "_store")

    KIND: ClassVar[int] = 0
    _ROOT: ClassVar[Store] = _EMPTY_MAP

    _store: Store
    _ctx: CausalContext
    _records: immutables.Map[Dot, frozenset[Dot]]
    _index: immutables.Map[Dot, Path]
    _pending: frozenset[Dot]

    def __init__(self) -> None:
        """The empty value (bottom)."""
        object.__setattr__(self, "_store", self._ROOT)
        object.__setattr__(self, "_ctx", EMPTY_CONTEXT)
        object.__setattr__(self, "_records", _EMPTY_RECORDS)
        object.__setattr__(self, "_index", _EMPTY_INDEX)
        object.__setattr__(self, "_pending", frozenset())

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @classmethod
    def _build(
        cls: type[T],
        store: Store,
        ctx: CausalContext,
        records: immutables.Map[Dot, frozenset[Dot]],
        index: immutables.Map[Dot, Path],
        pending: frozenset[Dot],
    ) -> T:
        self = object.__new__(cls)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_ctx", ctx)
        object.__setattr__(self, "_records", records)
        object.__setattr__(self, "_index", index)
        object.__setattr__(self, "_pending", pending)
        return self

    @classmethod
    def _from_parts(
        cls: type[T],
        store: Store,
        ctx: CausalContext,
        records: immutables.Map[Dot, frozenset[Dot]] = _EMPTY_RECORDS,
    ) -> T:
        index = _index_of(store)
        pending = frozenset(d for ds in records.values() for d in ds if d not in ctx)
        return cls._build(store, ctx, records, index, pending)

    # -- protocol --------------------------------------------------------------

    @property
    def context(self) -> CausalContext:
        """Every dot this value has seen (for a delta: the dots it carries)."""
        return self._ctx

    def digest(self) -> CausalContext:
        """The digest to send to peers: the whole causal context."""
        return self._ctx

    def is_bottom(self) -> bool:
        """True for the empty value (an empty delta carries nothing)."""
        return not self._ctx and not self._records

    def record_count(self) -> int:
        """How many removal records await garbage collection."""
        return len(self._records)

    def removes_dots_of(self, node: str) -> bool:
        """Whether its removal records name a dot of ``node`` (a delta that removes,
        or overwrites, an entry ``node`` wrote)."""
        return any(dot.node == node for dots in self._records.values() for dot in dots)

    def __len__(self) -> int:
        """The number of live entries (dots) in the store."""
        return len(self._index)

    def merge(self: T, other: T) -> T:
        """Join a delta or a state; pure (returns a new value).

        Raises TypeError when ``other`` is not of the same type.
        """
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        a, b = (self, other) if len(self._index) >= len(other._index) else (other, self)
        if b.is_bottom():
            return a
        if a.is_bottom():
            return b
        a_ctx, b_ctx = a._ctx, b._ctx
        a_index, b_index = a._index, b._index
        # Dots of a that b knows dead: removed by b's records new to a, or
        # seen by b and absent from b's store.
        kills: set[Dot] = set()
        for r, removed in b._records.items():
            if r not in a_ctx:
                kills.update(d for d in removed if d in a_index)
        if b_ctx.dot_count() <= len(a_index):
            kills.update(d for d in b_ctx.dots() if d in a_index and d not in b_index)
        else:
            kills.update(d for d in a_index if d in b_ctx and d not in b_index)
        store = a._store
        with a_index.mutate() as index:
            for d in kills:
                store = _remove(store, index[d], 0, d)
                del index[d]
            a_pending = a._pending
            for d, path in b_index.items():
                if d in a_index or d in a_ctx or d in a_pending:
                    continue
                payload = _leaf_at(b._store, path).payload(d)
                store = _insert(store, path, 0, d, payload, b._store)
                index[d] = path
            new_index = index.finish()
        records = a._records
        if b._records:
            with records.mutate() as rm:
                for r, removed in b._records.items():
                    if r not in rm:
                        rm[r] = removed
                records = rm.finish()
        pending = frozenset(
            [d for d in a._pending if d not in b_ctx] + [d for d in b._pending if d not in a_ctx]
        )
        return type(self)._build(store, a_ctx | b_ctx, records, new_index, pending)

    def delta_since(self: T, digest: CausalContext) -> T:
        """The smallest delta bringing a replica whose digest is ``digest`` up
        to date: entries, context and removal records it has not seen."""
        missing = self._ctx - digest
        if not missing:
            return type(self)()
        index = self._index
        if missing.dot_count() <= len(index):
            chosen = [(d, index[d]) for d in missing.dots() if d in index]
        else:
            chosen = [(d, p) for d, p in index.items() if d not in digest]
        if missing.dot_count() <= len(self._records):
            recs = {r: self._records[r] for r in missing.dots() if r in self._records}
        else:
            recs = {r: ds for r, ds in self._records.items() if r not in digest}
        store = _assemble(
            self._store, [(p, d, _leaf_at(self._store, p).payload(d)) for d, p in chosen])
        records: immutables.Map[Dot, frozenset[Dot]] = immutables.Map(recs.items())
        pending = frozenset(d for ds in recs.values() for d in ds if d not in missing)
        return type(self)._build(store, missing, records, immutables.Map(chosen), pending)

    def compact(self: T, stable: CausalContext) -> T:
        """Drop removal records that are causally stable.

        ``stable`` must be contained in the digest of every replica that may
        still send state (usually the meet, :meth:`CausalContext.intersection`,
        of all of them). A record goes once its op dot and every dot it removed
        are in ``stable``.
        """
        # Only dots we hold ourselves can be stable, whatever the caller passed.
        stable = stable & self._ctx
        drop = [
            r for r, removed in self._records.items()
            if r in stable and all(d in stable for d in removed)
        ]
        if not drop:
            return self
        with self._records.mutate() as rm:
            for r in drop:
                del rm[r]
            records = rm.finish()
        return type(self)._build(self._store, self._ctx, records, self._index, self._pending)

    def missing_dependencies(self, local: CausalContext) -> CausalContext:
        """The dots a replica with context ``local`` lacks before this delta is
        causally ready (module docstring); empty when ready."""
        known = local | self._ctx
        need: dict[str, list[int]] = {}
        for node in self._ctx.nodes():
            top = self._ctx.max(node)
            gap = CausalContext._make({node: (1, top)}) - known
            if gap:
                need[node] = list(gap.ranges()[node])
        out = CausalContext(need)
        for removed in self._records.values():
            for d in removed:
                if d not in known:
                    out = out.add(d)
        return out

    def is_ready(self, local: CausalContext) -> bool:
        """True when :meth:`missing_dependencies` is empty."""
        return not self.missing_dependencies(local)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CausalCRDT)
            and type(other) is type(self)
            and self._ctx == other._ctx
            and self._store == other._store
            and self._records == other._records
        )

    __hash__ = None  # type: ignore[assignment]

    def same_value(self, other: CausalCRDT) -> bool:
        """Equal store and context (records may differ after compaction)."""
        return self._ctx == other._ctx and self._store == other._store

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(value={self.value()!r}, context={self._ctx!r}, "
                f"records={len(self._records)})")

    def value(self) -> Any:
        return self._value_of(self._store)

    # -- helpers for mutators ----------------------------------------------------

    def _op(self: T, node: str, removed: Iterable[Dot], store_for: Callable[[list[Dot]], Store],
            n_dots: int) -> T:
        """A delta minting ``n_dots`` fresh dots of ``node`` (at least one)."""
        check_node(node)
        first = self._ctx.max(node) + 1
        n = max(1, n_dots)
        if first + n - 1 > MAX_COUNTER:
            raise OverflowError(f"dot counter of {node} exhausted")
        dots = [Dot(node, first + i) for i in range(n)]
        store = store_for(dots)
        ctx = CausalContext._make({node: (first, first + n - 1)})
        rem = frozenset(removed)
        records = _EMPTY_RECORDS.set(dots[0], rem) if rem else _EMPTY_RECORDS
        return type(self)._from_parts(store, ctx, records)

    @classmethod
    def skip(cls: type[T], node: str, first: int, last: int) -> T:
        """A delta marking dots ``first..last`` of ``node`` as seen, holding nothing.

        What a replica publishes for counters it reserved but will never use
        (docs/protocol.md, "A dot is never reused"): receivers hold those dots
        in their context, so the replica's later deltas are causally ready.
        Like any context without entries it removes entries that carry those
        dots, so only counters that nobody used may be skipped. Raises
        ValueError for a bad node id or range.
        """
        check_node(node)
        if not (type(first) is int and type(last) is int and 1 <= first <= last <= MAX_COUNTER):
            raise ValueError(f"bad dot range {first!r}..{last!r}")
        return cls._from_parts(cls._ROOT, CausalContext({node: (first, last)}))

    @classmethod
    def _view(cls: type[T], store: Store, ctx: CausalContext) -> T:
        """This type embedded in a map: its store with the map's context."""
        return cls._from_parts(store, ctx)

    # -- per-type hooks -----------------------------------------------------------

    @staticmethod
    def _value_of(store: Store) -> Any:
        raise NotImplementedError

    @classmethod
    def _store_to_cbor(cls, store: Store) -> Any:
        raise NotImplementedError

    @classmethod
    def _store_from_cbor(cls, obj: object, depth: int) -> Store:
        raise NotImplementedError

    # -- encoding ---------------------------------------------------------------

    def to_cbor(self) -> list[Any]:
        """``[kind, context, store, records]`` (docs/protocol.md §3)."""
        recs = [
            [list(r), [list(d) for d in sorted(ds)]]
            for r, ds in sorted(self._records.items())
        ]
        return [self.KIND, self._ctx.to_cbor(), self._store_to_cbor(self._store), recs]

    @classmethod
    def from_cbor(cls: type[T], obj: object) -> T:
        """Strictly decode :meth:`to_cbor` output; raises MalformedError.

        Checks structure, types and bounds, canonical order, and the
        invariants: every entry's dot is in the context and unique, records
        name dots of the context and kill no live entry.
        """
        if not isinstance(obj, list) or len(obj) != 4:
            raise MalformedError(f"{cls.__name__} must be a 4-element array")
        if type(obj[0]) is not int or obj[0] != cls.KIND:
            raise MalformedError(f"expected kind {cls.KIND} ({cls.__name__}), got {obj[0]!r:.40}")
        ctx = CausalContext.from_cbor(obj[1])
        store = cls._store_from_cbor(obj[2], 0)
        raw = obj[3]
        if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
            raise MalformedError("records must be an array")
        recs: dict[Dot, frozenset[Dot]] = {}
        prev: Dot | None = None
        for item in raw:
            if not isinstance(item, list) or len(item) != 2:
                raise MalformedError("a record is [dot, [dots]]")
            r = _wire_dot(item[0])
            if prev is not None and r <= prev:
                raise MalformedError("records must be sorted by dot, without duplicates")
            prev = r
            if r not in ctx:
                raise MalformedError(f"record {r} is outside the context")
            removed = _wire_dots(item[1])
            if not removed:
                raise MalformedError("a record removes at least one dot")
            recs[r] = frozenset(removed)
        try:
            index = _index_of(store)
        except ValueError as exc:
            raise MalformedError(str(exc)) from None
        for d in index:
            if d not in ctx:
                raise MalformedError(f"entry dot {d} is outside the context")
        for ds in recs.values():
            for d in ds:
                if d in index:
                    raise MalformedError(f"live dot {d} is also recorded as removed")
        records: immutables.Map[Dot, frozenset[Dot]] = immutables.Map(recs.items())
        pending = frozenset(d for ds in recs.values() for d in ds if d not in ctx)
        return cls._build(store, ctx, records, index, pending)


def _wire_dot(obj: object) -> Dot:
    if not isinstance(obj, list) or len(obj) != 2:
        raise MalformedError("a dot is [node, counter]")
    return Dot(_wire_node(obj[0]), _wire_uint(obj[1], 1))


def _wire_dots(obj: object) -> list[Dot]:
    if not isinstance(obj, list) or len(obj) > MAX_ENTRIES:
        raise MalformedError("expected an array of dots")
    dots = [_wire_dot(x) for x in obj]
    for i in range(1, len(dots)):
        if dots[i] <= dots[i - 1]:
            raise MalformedError("dots must be sorted, without duplicates")
    return dots


def _fun_to_cbor(store: Store, payload_to_cbor: Callable[[Any], Any]) -> list[Any]:
    return [[list(d), payload_to_cbor(p)] for d, p in sorted(cast(DotFun, store).entries.items())]


def _fun_from_cbor(obj: object, payload_from_cbor: Callable[[object], Any]) -> DotFun:
    if not isinstance(obj, list) or len(obj) > MAX_ENTRIES:
        raise MalformedError("a dot function is an array of [dot, payload]")
    entries: dict[Dot, Any] = {}
    prev: Dot | None = None
    for item in obj:
        if not isinstance(item, list) or len(item) != 2:
            raise MalformedError("a dot function entry is [dot, payload]")
        d = _wire_dot(item[0])
        if prev is not None and d <= prev:
            raise MalformedError("dot function entries must be sorted, without duplicates")
        prev = d
        entries[d] = payload_from_cbor(item[1])
    return DotFun(entries) if entries else _EMPTY_FUN


def _keyed_from_cbor(obj: object, what: str) -> list[list[Any]]:
    if not isinstance(obj, list) or len(obj) > MAX_ENTRIES:
        raise MalformedError(f"{what} must be an array")
    for item in obj:
        if not isinstance(item, list):
            raise MalformedError(f"{what} entries are arrays")
    return obj


# -- AWSet ----------------------------------------------------------------------


class AWSet(CausalCRDT):
    """Add-wins observed-remove set of keys (``str``, ``int``, ``bytes``).

    Store: ``DotMap[element -> DotSet]``. A concurrent add and remove of the
    same element leave it present (the add's fresh dot was not observed by the
    remove). ``value()`` is a frozenset.
    """

    __slots__ = ()
    KIND = 10
    _ROOT = _EMPTY_MAP

    def add(self, node: str, element: Key) -> AWSet:
        """Delta adding ``element`` (replacing its older dots)."""
        element = check_key(element)
        old = self._dots_of(element)
        return self._op(node, old, lambda ds: DotMap(immutables.Map({element: DotSet(
            frozenset(ds))})), 1)

    def remove(self, node: str, element: Key) -> AWSet:
        """Delta removing ``element`` (empty delta when it is absent)."""
        old = self._dots_of(check_key(element))
        if not old:
            return AWSet()
        return self._op(node, old, lambda ds: _EMPTY_MAP, 1)

    def clear(self, node: str) -> AWSet:
        """Delta removing every element seen here."""
        if not self._index:
            return AWSet()
        return self._op(node, self._index.keys(), lambda ds: _EMPTY_MAP, 1)

    def _dots_of(self, element: Key) -> frozenset[Dot]:
        s = cast(DotMap, self._store).entries.get(element)
        return cast(DotSet, s).dots if s is not None else frozenset()

    def __contains__(self, element: object) -> bool:
        return element in cast(DotMap, self._store).entries

    def __iter__(self) -> Iterator[Key]:
        return iter(cast(DotMap, self._store).entries.keys())

    @staticmethod
    def _value_of(store: Store) -> frozenset[Key]:
        return frozenset(cast(DotMap, store).entries.keys())

    @classmethod
    def _store_to_cbor(cls, store: Store) -> list[Any]:
        items = sorted(cast(DotMap, store).entries.items(), key=lambda kv: key_order(kv[0]))
        return [[k, [list(d) for d in sorted(cast(DotSet, s).dots)]] for k, s in items]

    @classmethod
    def _store_from_cbor(cls, obj: object, depth: int) -> Store:
        out: dict[Any, Store] = {}
        prev: tuple[Any, ...] | None = None
        for item in _keyed_from_cbor(obj, "an AWSet store"):
            if len(item) != 2:
                raise MalformedError("an AWSet entry is [element, [dots]]")
            k = wire_key(item[0])
            order = key_order(k)
            if prev is not None and order <= prev:
                raise MalformedError("AWSet elements must be sorted, without duplicates")
            prev = order
            dots = _wire_dots(item[1])
            if not dots:
                raise MalformedError("an AWSet element has at least one dot")
            out[k] = DotSet(frozenset(dots))
        return DotMap(immutables.Map(out)) if out else _EMPTY_MAP


# -- registers --------------------------------------------------------------------


class MVRegister(CausalCRDT):
    """Multi-value register: a write replaces every value it has seen;
    concurrent writes all survive. Store: ``DotFun[dot -> value]``.
    ``value()`` is a tuple of the concurrent values ordered by dot."""

    __slots__ = ()
    KIND = 11
    _ROOT = _EMPTY_FUN

    def write(self, node: str, value: object) -> MVRegister:
        """Delta writing ``value`` (frozen with :func:`freeze`)."""
        v = freeze(value)
        return self._op(node, self._index.keys(), lambda ds: DotFun({ds[0]: v}), 1)

    def clear(self, node: str) -> MVRegister:
        """Delta removing every value seen here."""
        if not self._index:
            return MVRegister()
        return self._op(node, self._index.keys(), lambda ds: _EMPTY_FUN, 1)

    @staticmethod
    def _value_of(store: Store) -> tuple[Any, ...]:
        return tuple(v for _, v in sorted(cast(DotFun, store).entries.items()))

    @classmethod
    def _store_to_cbor(cls, store: Store) -> list[Any]:
        return _fun_to_cbor(store, value_to_cbor)

    @classmethod
    def _store_from_cbor(cls, obj: object, depth: int) -> Store:
        return _fun_from_cbor(obj, value_from_cbor)


def _lww_payload_to_cbor(p: tuple[Timestamp, Any]) -> list[Any]:
    ts, v = p
    return [ts.packed, ts.node, value_to_cbor(v)]


def _lww_payload_from_cbor(obj: object) -> tuple[Timestamp, Any]:
    if not isinstance(obj, list) or len(obj) != 3:
        raise MalformedError("a causal LWW entry is [hlc, node, value]")
    packed = _wire_uint(obj[0], 0, (1 << 64) - 1)
    node = obj[1]
    if node != "":
        _wire_node(node)  # the HLC's node id, "" when the clock has none
    return Timestamp.unpack(packed, node), value_from_cbor(obj[2])


class CausalLWWRegister(CausalCRDT):
    """Last-writer-wins register that can live in (and be removed from) an
    ORMap. Store: ``DotFun[dot -> (hlc, value)]``; reads the entry with the
    greatest HLC :class:`Timestamp` (its node id breaks ties, then the dot).
    A write removes every entry it has seen; concurrent writes coexist until
    the next write, and ``value()`` picks the latest."""

    __slots__ = ()
    KIND = 12
    _ROOT = _EMPTY_FUN

    def set(self, node: str, stamp: Timestamp, value: object) -> CausalLWWRegister:
        """Delta writing ``value`` at HLC ``stamp``.

        A stamp not after the current one loses by LWW rules, so the delta
        is empty; stamp writes with the node's HLC ``now()``.
        """
        v = freeze(value)
        current = self.timestamp
        if current is not None and stamp <= current:
            return CausalLWWRegister()
        return self._op(node, self._index.keys(), lambda ds: DotFun({ds[0]: (stamp, v)}), 1)

    def clear(self, node: str) -> CausalLWWRegister:
        if not self._index:
            return CausalLWWRegister()
        return self._op(node, self._index.keys(), lambda ds: _EMPTY_FUN, 1)

    @property
    def timestamp(self) -> Timestamp | None:
        best = _lww_best(self._store)
        return best[1][0] if best is not None else None

    def latest_by(self, node: str) -> tuple[Timestamp, Any] | None:
        """``(stamp, value)`` of the latest entry ``node`` wrote (its dot is ``node``'s), or None.

        What a reader uses when a key belongs to one node: an entry's stamp
        names whatever node its writer chose, its dot is the writer's own, and
        an entry another node wrote concurrently may win :meth:`value`.
        """
        entries = cast(DotFun, self._store).entries
        own = [(payload, dot) for dot, payload in entries.items() if dot.node == node]
        if not own:
            return None
        payload, _ = max(own, key=lambda pd: (pd[0][0], pd[1]))
        return payload[0], payload[1]

    @staticmethod
    def _value_of(store: Store) -> Any:
        best = _lww_best(store)
        return best[1][1] if best is not None else None

    @classmethod
    def _store_to_cbor(cls, store: Store) -> list[Any]:
        return _fun_to_cbor(store, _lww_payload_to_cbor)

    @classmethod
    def _store_from_cbor(cls, obj: object, depth: int) -> Store:
        return _fun_from_cbor(obj, _lww_payload_from_cbor)


def _lww_best(store: Store) -> tuple[Dot, tuple[Timestamp, Any]] | None:
    entries = cast(DotFun, store).entries
    if not entries:
        return None
    return max(entries.items(), key=lambda kv: (kv[1][0], kv[0]))


# -- CCounter ----------------------------------------------------------------------


def _int_payload(obj: object) -> int:
    if type(obj) is not int or not -(1 << 63) <= obj < (1 << 63):
        raise MalformedError("a counter entry is a signed 64-bit integer")
    return obj


class CCounter(CausalCRDT):
    """Causal counter (Almeida's CCounter), increments and decrements.

    Store: ``DotFun[dot -> int]``, one live dot per node holding that node's
    running total. It can be removed from an ORMap (observed-reset): an
    increment concurrent with the removal survives with the incrementing
    node's whole contribution, as in the paper.
    """

    __slots__ = ()
    KIND = 13
    _ROOT = _EMPTY_FUN

    def increment(self, node: str, amount: int = 1) -> CCounter:
        """Delta adding ``amount`` (may be negative) to ``node``'s total."""
        if type(amount) is not int:
            raise TypeError("amount must be an int")
        entries = cast(DotFun, self._store).entries
        mine = [d for d in entries if d.node == node]
        total = sum(entries[d] for d in mine) + amount
        if not -(1 << 63) <= total < (1 << 63):
            raise OverflowError("counter total leaves the signed 64-bit range")
        return self._op(node, mine, lambda ds: DotFun({ds[0]: total}), 1)

    def decrement(self, node: str, amount: int = 1) -> CCounter:
        return self.increment(node, -amount)

    def clear(self, node: str) -> CCounter:
        if not self._index:
            return CCounter()
        return self._op(node, self._index.keys(), lambda ds: _EMPTY_FUN, 1)

    @staticmethod
    def _value_of(store: Store) -> int:
        return sum(cast(DotFun, store).entries.values())

    @classmethod
    def _store_to_cbor(cls, store: Store) -> list[Any]:
        return _fun_to_cbor(store, lambda p: p)

    @classmethod
    def _store_from_cbor(cls, obj: object, depth: int) -> Store:
        return _fun_from_cbor(obj, _int_payload)


# -- ORMap --------------------------------------------------------------------------

_KINDS: dict[int, type[CausalCRDT]] = {}


def _register(*kinds: type[CausalCRDT]) -> None:
    for k in kinds:
        _KINDS[k.KIND] = k


class ORMap(CausalCRDT):
    """Observed-remove map of nested causal CRDTs sharing the map's context
    (Almeida's ORMap), with Riak-style fields.

    A field is ``(key, kind)``: the same key may hold values of different
    kinds (``AWSet``, ``MVRegister``, ``CausalLWWRegister``, ``CCounter``,
    ``ORMap``) without conflict, so concurrent updates of one key with two
    kinds never clash. Store: ``DotMap[(kind, key) -> nested store]``.
    Removing a key removes the dots seen under it; a concurrent update of
    the key survives (add-wins / observed-remove).
    """

    __slots__ = ()
    KIND = 14
    _ROOT = _EMPTY_MAP

    def get(self, key: Key, kind: type[V]) -> V:
        """The value of field ``(key, kind)`` (empty when absent), viewed with
        the map's context so its mutators can be used inside :meth:`update`."""
        sub = cast(DotMap, self._store).entries.get((kind.KIND, key))
        return kind._view(sub if sub is not None else kind._ROOT, self._ctx)

    def update(self, node: str, key: Key, kind: type[V], mutator: Callable[[V], V]) -> ORMap:
        """Delta applying one mutator of the nested value of ``(key, kind)``.

        ``mutator`` receives the nested value and returns *one* of its
        mutator deltas (e.g. ``lambda s: s.add(node, "x")``); for several
        changes call ``update`` several times and merge the deltas.
        Raises ValueError when the mutator's delta reuses a dot.
        """
        check_node(node)
        key = check_key(key)
        if kind not in _KINDS.values():
            raise TypeError(f"{kind!r} is not a causal CRDT kind")
        view = self.get(key, kind)
        delta = mutator(view)
        if type(delta) is not kind:
            raise TypeError(f"mutator returned {type(delta).__name__}, expected {kind.__name__}")
        if delta.is_bottom():
            return ORMap()
        if delta._ctx & self._ctx:
            raise ValueError("the mutator's delta reuses dots this map has already seen")
        field = (kind.KIND, key)
        store: Store = DotMap(immutables.Map({field: delta._store})) if delta._store \
            else _EMPTY_MAP
        return ORMap._from_parts(store, delta._ctx, delta._records)

    def remove(self, node: str, key: Key, kind: type[CausalCRDT] | None = None) -> ORMap:
        """Delta removing ``key`` (only the field of ``kind`` when given);
        empty when there is nothing to remove."""
        key = check_key(key)
        entries = cast(DotMap, self._store).entries
        kinds = [kind] if kind is not None else list(_KINDS.values())
        dead: list[Dot] = []
        for k in kinds:
            sub = entries.get((k.KIND, key))
            if sub is not None:
                dead.extend(d for d, _, _ in _walk(sub))
        if not dead:
            return ORMap()
        return self._op(node, dead, lambda ds: _EMPTY_MAP, 1)

    def __contains__(self, key: object) -> bool:
        entries = cast(DotMap, self._store).entries
        return any((k, key) in entries for k in _KINDS)

    def fields(self) -> Iterator[tuple[Key, type[CausalCRDT]]]:
        """Every live field ``(key, kind)``."""
        for kind_tag, key in cast(DotMap, self._store).entries:
            yield key, _KINDS[kind_tag]

    def keys(self) -> frozenset[Key]:
        return frozenset(key for _, key in cast(DotMap, self._store).entries)

    @staticmethod
    def _value_of(store: Store) -> dict[Key, Any]:
        """``{key: value}``; when several kinds share a key, the value of the
        highest kind tag is shown (every field stays reachable with get)."""
        out: dict[Key, Any] = {}
        for (kind_tag, key), sub in sorted(cast(DotMap, store).entries.items(),
                                           key=lambda kv: kv[0][0]):
            out[key] = _KINDS[kind_tag]._value_of(sub)
        return out

    @classmethod
    def _store_to_cbor(cls, store: Store) -> list[Any]:
        items = sorted(cast(DotMap, store).entries.items(),
                       key=lambda kv: (kv[0][0], key_order(kv[0][1])))
        return [[kt, k, _KINDS[kt]._store_to_cbor(sub)] for (kt, k), sub in items]

    @classmethod
    def _store_from_cbor(cls, obj: object, depth: int) -> Store:
        if depth >= MAX_MAP_DEPTH:
            raise MalformedError(f"ORMaps nest at most {MAX_MAP_DEPTH} levels")
        out: dict[Any, Store] = {}
        prev: tuple[Any, ...] | None = None
        for item in _keyed_from_cbor(obj, "an ORMap store"):
            if len(item) != 3:
                raise MalformedError("an ORMap entry is [kind, key, store]")
            kt = item[0]
            if type(kt) is not int or kt not in _KINDS:
                raise MalformedError(f"unknown CRDT kind {kt!r:.40}")
            k = wire_key(item[1])
            order = (kt, key_order(k))
            if prev is not None and order <= prev:
                raise MalformedError("ORMap fields must be sorted, without duplicates")
            prev = order
            sub = _KINDS[kt]._store_from_cbor(item[2], depth + 1)
            if not sub:
                raise MalformedError("an ORMap field holds a non-empty store")
            out[(kt, k)] = sub
        return DotMap(immutables.Map(out)) if out else _EMPTY_MAP


_register(AWSet, MVRegister, CausalLWWRegister, CCounter, ORMap)
