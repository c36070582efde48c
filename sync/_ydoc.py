"""pycrdt (Yjs) documents behind the delta-CRDT protocol.

Theory of operation
-------------------
A Yjs document is already an operation-based CRDT whose *updates* join like
delta states: applying updates in any order, any number of times, gives the
same document. The mapping onto our protocol:

* digest = the Yjs *state vector* (client id -> number of structs seen),
  :class:`StateVector`;
* ``delta_since(sv)`` = ``Doc.get_update(sv)``, a :class:`YUpdate`;
* ``merge(update)`` = ``Doc.apply_update(update)`` in a transaction whose
  origin is :data:`REMOTE_ORIGIN`.

Why an in-place replica: a ``pycrdt.Doc`` is a mutable Rust object; a pure
merge would have to encode the whole document and rebuild it for every
update, O(document) per merge. So :class:`YDoc` is the one type whose
``merge`` mutates and returns ``self``; its deltas (:class:`YUpdate`) are
frozen bytes and merging two updates (``merge_updates``) is pure.

pycrdt pitfalls, handled here and tested:

* Numbers are JavaScript doubles. ``1`` is read back as ``1.0`` on every
  replica, including the writer. An ``int`` beyond 2**53 reads back as the
  exact ``int`` on the writer but as a rounded ``float`` on every other
  replica: keep integers within +/-(2**53 - 1) (or store them as text).
* An update whose causal dependencies are missing is kept *pending* by Yjs:
  invisible (or partly visible) and not counted in the state vector. After
  each merge we compute which part of the update the state vector does not
  cover (structs and deletions beyond it); if any, :attr:`YDoc.pending` is
  true until a later merge covers it. The gossip layer then repairs by
  sending our digest to peers, whose ``delta_since`` fills the gap.
* Observers must not echo remote updates back to the mesh. Remote applies
  run in a transaction with origin :data:`REMOTE_ORIGIN` (visible to pycrdt
  observers as ``txn.origin``) and :meth:`YDoc.observe_local` only reports
  transactions that did not come from :meth:`YDoc.merge`.
* Yjs state vectors say nothing about deletions, so ``delta_since`` always
  carries the document's whole delete set (compact: ranges of ids). A local
  mutation's delta (:meth:`YDoc.mutate`) carries only its own deletions.
* pycrdt keeps a shared type's observer subscriptions on the Python wrapper
  object: observe a root through a reference you keep, or the subscription
  is dropped with the wrapper when it is garbage collected.
* Root types must be declared (``roots={"m": Map}``): a root created by a
  remote update has no type until it is read with one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final

import pycrdt

from ._errors import MalformedError

__all__ = ["REMOTE_ORIGIN", "StateVector", "YDoc", "YUpdate"]

REMOTE_ORIGIN: Final = "vsm-edge/remote"
LOCAL_ORIGIN: Final = "vsm-edge/local"
KIND: Final = 20
MAX_UPDATE_BYTES = 16 * 1024 * 1024
MAX_CLIENTS = 4096
_JS_SAFE = (1 << 53) - 1
_EMPTY_UPDATE = b"\x00\x00"
RootType = type[pycrdt.Map[Any]] | type[pycrdt.Array[Any]] | type[pycrdt.Text]


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise MalformedError("truncated variable-length integer")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise MalformedError("variable-length integer too long")


def _write_varuint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _guard(what: str, fn: Callable[[], Any]) -> Any:
    """Run a pycrdt parser; translate its errors (and Rust panics) to ours."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # pycrdt raises ValueError; a Rust panic is a BaseException
        if isinstance(exc, Exception) or type(exc).__name__ == "PanicException":
            raise MalformedError(f"invalid Yjs {what}: {exc}") from None
        raise


class StateVector:
    """A Yjs state vector: client id -> clock (frozen). The YDoc digest."""

    __slots__ = ("_clocks", "_encoded")
    _clocks: dict[int, int]
    _encoded: bytes

    def __init__(self, clocks: Mapping[int, int] | None = None) -> None:
        c = {}
        for client, clock in (clocks or {}).items():
            if not (0 <= client <= _JS_SAFE and 0 <= clock <= _JS_SAFE):
                raise ValueError("client ids and clocks are 0..2**53-1")
            if clock:
                c[client] = clock
        out = bytearray()
        _write_varuint(out, len(c))
        for client in sorted(c):
            _write_varuint(out, client)
            _write_varuint(out, c[client])
        object.__setattr__(self, "_clocks", c)
        object.__setattr__(self, "_encoded", bytes(out))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("StateVector is immutable")

    @classmethod
    def decode(cls, data: bytes) -> StateVector:
        """Parse Yjs' binary state vector encoding; raises MalformedError."""
        n, pos = _read_varuint(data, 0)
        if n > MAX_CLIENTS:
            raise MalformedError("state vector has too many clients")
        clocks = {}
        for _ in range(n):
            client, pos = _read_varuint(data, pos)
            clock, pos = _read_varuint(data, pos)
            if client > _JS_SAFE or clock > _JS_SAFE:
                raise MalformedError("state vector entry beyond 2**53-1")
            clocks[client] = clock
        if pos != len(data):
            raise MalformedError("trailing bytes after the state vector")
        return cls(clocks)

    @property
    def encoded(self) -> bytes:
        """Yjs' binary encoding (what ``Doc.get_update`` takes)."""
        return self._encoded

    def __getitem__(self, client: int) -> int:
        return self._clocks.get(client, 0)

    def items(self) -> list[tuple[int, int]]:
        return sorted(self._clocks.items())

    def covers(self, other: StateVector) -> bool:
        return all(self[c] >= k for c, k in other._clocks.items())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StateVector) and self._clocks == other._clocks

    def __hash__(self) -> int:
        return hash(self._encoded)

    def __repr__(self) -> str:
        return f"StateVector({dict(self.items())})"

    def to_cbor(self) -> dict[int, int]:
        """``{client: clock}`` (unsigned integers, zero clocks omitted)."""
        return dict(self._clocks)

    @classmethod
    def from_cbor(cls, obj: object) -> StateVector:
        if not isinstance(obj, dict) or len(obj) > MAX_CLIENTS:
            raise MalformedError("a state vector is a map of at most 4096 clients")
        for client, clock in obj.items():
            if type(client) is not int or type(clock) is not int \
                    or not 0 <= client <= _JS_SAFE or not 1 <= clock <= _JS_SAFE:
                raise MalformedError("a state vector maps client ids to clocks >= 1")
        return cls(obj)


def _uncovered(update: bytes, sv: StateVector) -> bool:
    """True when ``update`` holds structs or deletions beyond ``sv``."""
    rest: bytes = _guard("update", lambda: pycrdt.get_update(update, sv.encoded))
    n, pos = _read_varuint(rest, 0)
    if n:
        return True
    n, pos = _read_varuint(rest, pos)
    for _ in range(n):
        client, pos = _read_varuint(rest, pos)
        ranges, pos = _read_varuint(rest, pos)
        for _ in range(ranges):
            clock, pos = _read_varuint(rest, pos)
            length, pos = _read_varuint(rest, pos)
            if clock + length > sv[client]:
                return True
    return False


class YUpdate:
    """A Yjs update (v1 encoding): the frozen delta of a :class:`YDoc`."""

    __slots__ = ("data",)
    KIND: ClassVar[int] = KIND
    data: bytes

    def __init__(self, data: bytes = _EMPTY_UPDATE) -> None:
        if not isinstance(data, bytes):
            raise TypeError("a Yjs update is bytes")
        object.__setattr__(self, "data", data)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("YUpdate is immutable")

    def merge(self, other: YUpdate) -> YUpdate:
        """Both updates in one (Yjs ``mergeUpdates``); pure."""
        if not isinstance(other, YUpdate):
            raise TypeError(f"cannot merge {type(other).__name__} into YUpdate")
        if other.is_bottom():
            return self
        if self.is_bottom():
            return other
        return YUpdate(_guard("update", lambda: pycrdt.merge_updates(self.data, other.data)))

    def is_bottom(self) -> bool:
        """True for an update with no structs and no deletions."""
        return self.data == _EMPTY_UPDATE

    def is_ready(self, local: StateVector) -> bool:
        """Always True: Yjs buffers an update whose dependencies are missing
        (see :attr:`YDoc.pending`), so any order of delivery is safe."""
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, YUpdate) and self.data == other.data

    def __hash__(self) -> int:
        return hash(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"YUpdate({len(self.data)} bytes)"

    def to_cbor(self) -> list[Any]:
        """``[20, update bytes]``."""
        return [KIND, self.data]

    @classmethod
    def from_cbor(cls, obj: object) -> YUpdate:
        """Strict: the bytes must parse as a Yjs v1 update."""
        if not isinstance(obj, list) or len(obj) != 2 or type(obj[0]) is not int \
                or obj[0] != KIND or not isinstance(obj[1], bytes):
            raise MalformedError("a Yjs update is [20, bytes]")
        data = obj[1]
        if len(data) > MAX_UPDATE_BYTES:
            raise MalformedError("Yjs update too large")
        _guard("update", lambda: pycrdt.get_state(data))
        return cls(data)


class YDoc:
    """A pycrdt document as an in-place delta-CRDT replica (module docstring).

    ``roots`` declares the document's root types by name, e.g.
    ``{"config": pycrdt.Map, "log": pycrdt.Array, "notes": pycrdt.Text}``.
    Mutate locally with :meth:`mutate` (which returns the delta to gossip)
    or by editing :attr:`doc` directly (then :meth:`observe_local` reports the
    update).
    """

    def __init__(self, roots: Mapping[str, RootType], *, client_id: int | None = None) -> None:
        self._doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=client_id)
        self._roots = dict(roots)
        self._applying = False
        self._last_local: bytes | None = None
        self._pending: bytes | None = None
        self._listeners: list[Callable[[YUpdate], None]] = []
        self._merges = 0
        self._doc.observe(self._on_transaction)

    # -- local side ------------------------------------------------------------

    @property
    def doc(self) -> pycrdt.Doc[Any]:
        """The underlying pycrdt document (for reads and local edits)."""
        return self._doc

    @property
    def client_id(self) -> int:
        return self._doc.client_id

    def root(self, name: str) -> Any:
        """The declared root type ``name`` (a pycrdt Map, Array or Text)."""
        return self._doc.get(name, type=self._roots[name])

    def mutate(self, edit: Callable[[YDoc], None]) -> YUpdate:
        """Run ``edit(self)`` in one local transaction; return its update
        (only this transaction's structs and deletions)."""
        self._last_local = None
        with self._doc.transaction(origin=LOCAL_ORIGIN):
            edit(self)
        data, self._last_local = self._last_local, None
        return YUpdate(data) if data is not None else YUpdate()

    def observe_local(self, callback: Callable[[YUpdate], None]) -> None:
        """Call ``callback(update)`` after every local transaction, never for
        updates applied by :meth:`merge` (so they are not echoed)."""
        self._listeners.append(callback)

    def _on_transaction(self, event: pycrdt.TransactionEvent) -> None:
        if self._applying:
            return
        data = event.update
        self._last_local = data
        update = YUpdate(data)
        for callback in self._listeners:
            callback(update)

    # -- protocol ----------------------------------------------------------------

    def digest(self) -> StateVector:
        return StateVector.decode(self._doc.get_state())

    def delta_since(self, digest: StateVector) -> YUpdate:
        return YUpdate(self._doc.get_update(digest.encoded))

    def merge(self, other: YUpdate | YDoc) -> YDoc:
        """Apply an update (or another document's state) in place; returns
        ``self``. Raises MalformedError for bytes Yjs cannot parse (the
        document is left unchanged)."""
        if isinstance(other, YDoc):
            other = other.delta_since(self.digest())
        if not isinstance(other, YUpdate):
            raise TypeError(f"cannot merge {type(other).__name__} into YDoc")
        if other.is_bottom():
            return self
        data = other.data
        _guard("update", lambda: pycrdt.get_state(data))  # parse before touching the doc
        self._applying = True
        try:
            with self._doc.transaction(origin=REMOTE_ORIGIN):
                _guard("update", lambda: self._doc.apply_update(data))
        finally:
            self._applying = False
        self._merges += 1
        held = data if self._pending is None else pycrdt.merge_updates(self._pending, data)
        sv = self.digest()
        self._pending = pycrdt.get_update(held, sv.encoded) if _uncovered(held, sv) else None
        return self

    @property
    def pending(self) -> bool:
        """True while some merged update is not covered by the state vector
        (its dependencies are missing): ask peers for ``delta_since``."""
        return self._pending is not None

    def value(self) -> dict[str, Any]:
        """``{root: plain value}``: Maps as dicts, Arrays as lists, Text as str.
        Numbers are floats (JavaScript doubles), see the module docstring."""
        out: dict[str, Any] = {}
        for name in self._roots:
            root = self.root(name)
            out[name] = str(root) if isinstance(root, pycrdt.Text) else root.to_py()
        return out

    def statistics(self) -> dict[str, int]:
        return {"merges": self._merges, "pending": int(self.pending),
                "state_bytes": len(self._doc.get_update())}

    def to_cbor(self) -> list[Any]:
        """The whole document as one update: ``[20, bytes]``."""
        return [KIND, self._doc.get_update()]

    @classmethod
    def from_cbor(cls, obj: object, roots: Mapping[str, RootType] | None = None) -> YDoc:
        """A new document holding the encoded state; raises MalformedError."""
        update = YUpdate.from_cbor(obj)
        doc = cls(roots or {})
        return doc.merge(update)


def js_safe_int(value: int) -> bool:
    """True when ``value`` survives a Yjs round trip exactly (|value| < 2**53)."""
    return -_JS_SAFE <= value <= _JS_SAFE
