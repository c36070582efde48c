"""Events on the VSM bus: HLC-stamped, immutable, with content ids.

An :class:`Event` is a ``NamedTuple`` rather than a frozen dataclass: it is the
one value created on the hot path (>= 100,000 a second), and a tuple is built
several times faster than a frozen dataclass while being just as immutable and
hashable. Equality and hashing are over the whole content, so the bus can
de-duplicate by content in-process at the cost of one tuple hash.

The *content id* (:func:`content_id`) is the stable, cross-process name of an
event: the first 16 bytes of BLAKE2b over the canonical CBOR (RFC 8949 §4.2,
``vsm_edge.sync.cbor_dumps``, RFC 8949 deterministic) of the array
``[kind, source, name, value, hlc.packed, hlc.node, priority, category,
intensity, attrs]`` with ``attrs`` as a map. It is computed on demand (status,
acknowledgements, the mesh), never per event on the bus.
"""

from __future__ import annotations

import enum
import hashlib
from typing import NamedTuple

from vsm_edge.sync import Timestamp, cbor_dumps

__all__ = [
    "HIGH",
    "LOW",
    "NORMAL",
    "Event",
    "Scalar",
    "Subsystem",
    "content_id",
]

Scalar = float | int | str | bool | None

LOW = 0
NORMAL = 1
HIGH = 2


class Subsystem(enum.StrEnum):
    """The five VSM subsystems and the algedonic channel (each has a bus channel)."""

    S1 = "s1"
    S2 = "s2"
    S3 = "s3"
    S4 = "s4"
    S5 = "s5"
    ALGEDONIC = "algedonic"


class Event(NamedTuple):
    """One immutable event.

    ``kind`` routes it ("reading", "command", "response", "signal", "pattern",
    "audit", "failure"); ``source`` is the unit or subsystem that produced it;
    ``name`` the reading or command name; ``value`` one scalar; ``category``
    what S4 counts for variety (defaults to ``source.name``); ``intensity`` is
    meaningful for signals (>= 0.95 bypasses reorder windows); ``attrs`` holds
    extra scalars as sorted ``(key, value)`` pairs.
    """

    kind: str
    source: str
    name: str
    value: Scalar
    hlc: Timestamp
    priority: int = NORMAL
    category: str = ""
    intensity: float = 0.0
    attrs: tuple[tuple[str, Scalar], ...] = ()

    @property
    def id(self) -> str:
        """The content id, hex (see :func:`content_id`)."""
        return content_id(self)

    def attr(self, key: str, default: Scalar = None) -> Scalar:
        for k, v in self.attrs:
            if k == key:
                return v
        return default


def content_id(event: Event) -> str:
    """Hex BLAKE2b-128 of the canonical CBOR of ``event``'s content."""
    body = [
        event.kind,
        event.source,
        event.name,
        event.value,
        event.hlc.packed,
        event.hlc.node,
        event.priority,
        event.category,
        event.intensity,
        dict(event.attrs),
    ]
    return hashlib.blake2b(cbor_dumps(body), digest_size=16).hexdigest()
