"""The mesh schema: the one place that names the agent's replicated document,
its keys and the encoding of their values.

Theory of operation
-------------------
Every agent of a mesh replicates one ORMap document, :data:`MESH_DOC`, whose
keys are causal LWW registers:

==============================  ===============================  ===================
key                             value                            written by
==============================  ===============================  ===================
``{node}/report``               the node's S3* report (a map)    the node
``{node}/r/{unit}.{reading}``   ``[value, wall_ms]``             the node
``{node}/quarantine``           a signed proposal (COSE bytes)   the node
``lease:{resource}``            ``[holder, expires_ms]``         any node (S2 leases)
==============================  ===============================  ===================

A reading carries the wall time it was written at, so that a receiver can
tell how old it is and how long it took to arrive. Writers use the builders
below; readers use :func:`parse_key` and :func:`parse_reading`, which never
raise on what a peer wrote (a key or value of another shape is ``None``):
the document is replicated state, every peer's input. The wire format of the
document itself is the sync layer's (docs/protocol.md §3); the meaning of its
keys is this module's.
"""

from __future__ import annotations

from typing import Any, Final, Literal, NamedTuple

__all__ = [
    "LEASE_PREFIX",
    "MESH_DOC",
    "KeyKind",
    "MeshKeyInfo",
    "lease_key",
    "parse_key",
    "parse_reading",
    "quarantine_key",
    "reading_key",
    "reading_prefix",
    "reading_value",
    "report_key",
]

MESH_DOC: Final = "mesh"
LEASE_PREFIX: Final = "lease:"

KeyKind = Literal["report", "reading", "quarantine", "lease"]


class MeshKeyInfo(NamedTuple):
    """A parsed key: its kind, the node it belongs to (empty for a lease) and
    the rest: ``unit.reading`` of a reading, the resource of a lease."""

    kind: KeyKind
    origin: str
    name: str


def report_key(node: str) -> str:
    return f"{node}/report"


def quarantine_key(node: str) -> str:
    return f"{node}/quarantine"


def reading_prefix(node: str, unit: str) -> str:
    """What every key of ``unit``'s readings on ``node`` starts with."""
    return f"{node}/r/{unit}."


def reading_key(node: str, unit: str, reading: str) -> str:
    return f"{reading_prefix(node, unit)}{reading}"


def lease_key(resource: str) -> str:
    return f"{LEASE_PREFIX}{resource}"


def reading_value(value: Any, wall_ms: int) -> list[Any]:
    """The register value of a reading written at ``wall_ms``."""
    return [value, wall_ms]


def parse_key(key: object) -> MeshKeyInfo | None:
    """What ``key`` names, or None for a key of no known shape."""
    if not isinstance(key, str):
        return None
    if key.startswith(LEASE_PREFIX):
        return MeshKeyInfo("lease", "", key[len(LEASE_PREFIX) :])
    origin, sep, rest = key.partition("/")
    if not sep or not origin:
        return None
    if rest == "report":
        return MeshKeyInfo("report", origin, "")
    if rest == "quarantine":
        return MeshKeyInfo("quarantine", origin, "")
    if rest.startswith("r/") and len(rest) > 2:
        return MeshKeyInfo("reading", origin, rest[2:])
    return None


def parse_reading(value: object) -> tuple[Any, int] | None:
    """``(value, wall_ms)`` of a reading's register, or None if it is not one."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    written = value[1]
    if isinstance(written, bool) or not isinstance(written, int):
        return None
    return value[0], written
