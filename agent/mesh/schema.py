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
``{node}/a/{alarm id}``         the node's alarm record (a map)  the node
``lease:{resource}``            ``[holder, expires_ms]``         any node (S2 leases)
==============================  ===============================  ===================

An alarm record (docs/protocol.md §5, "Alarm record") is the writer's word on one alarm
(:mod:`vsm_edge.agent.vsm.alarm_ledger`): a map with any of ``"sig"`` (the
signal, as on the algedonic channel; only in its origin's record),
``"ack"`` and ``"clr"`` (packed HLC stamps of the writer's acknowledgement
and clearing), at least one of them. The alarm id is the signal's content id,
32 lowercase hex digits. A register counts only when the key's node wrote it
(its stamp's node): a member cannot speak for another node.

A reading carries the wall time it was written at, so that a receiver can
tell how old it is and how long it took to arrive. Writers use the builders
below; readers use :func:`parse_key` and :func:`parse_reading`, which never
raise on what a peer wrote (a key or value of another shape is ``None``):
the document is replicated state, every peer's input. The wire format of the
document itself is the sync layer's (docs/protocol.md §3); the meaning of its
keys is this module's.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, NamedTuple

from vsm_edge.sync import CausalLWWRegister, ORMap, Timestamp, thaw

from ..vsm.alarm_ledger import AlarmRecord
from ..vsm.algedonic import Signal, SignalError

__all__ = [
    "LEASE_PREFIX",
    "MESH_DOC",
    "KeyKind",
    "MeshKeyInfo",
    "alarm_key",
    "alarm_record_in",
    "alarm_record_value",
    "lease_key",
    "parse_alarm_record",
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

KeyKind = Literal["report", "reading", "quarantine", "lease", "alarm"]
_ALARM_ID = re.compile(r"^[0-9a-f]{32}$")


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


def alarm_key(node: str, alarm_id: str) -> str:
    return f"{node}/a/{alarm_id}"


def alarm_record_value(record: AlarmRecord) -> dict[str, Any]:
    """The register value of ``record`` (the module docstring's map)."""
    out: dict[str, Any] = {}
    if record.signal is not None:
        out["sig"] = record.signal.to_cbor()
    if record.acked is not None:
        out["ack"] = record.acked.packed
    if record.cleared is not None:
        out["clr"] = record.cleared.packed
    return out


def alarm_record_in(state: ORMap, key: str, writer: str) -> AlarmRecord | None:
    """``writer``'s alarm record under ``key`` in ``state`` (a mesh document or delta),
    or None: only an entry ``writer`` wrote (its dot) counts, whatever another
    member wrote under its key or stamped in its name."""
    own = state.get(key, CausalLWWRegister).latest_by(writer)
    return None if own is None else parse_alarm_record(writer, thaw(own[1]))


def parse_alarm_record(writer: str, value: object) -> AlarmRecord | None:
    """``writer``'s alarm record from its register value, or None if it is not one.

    Checks every field: the map's keys, a signal raised by ``writer`` itself
    (docs/protocol.md §5's limits), stamps as unsigned 64-bit packed HLCs.
    """
    if not isinstance(value, dict) or not value or not set(value) <= {"sig", "ack", "clr"}:
        return None
    signal = None
    if "sig" in value:
        try:
            signal = Signal.from_cbor(value["sig"])
        except SignalError:
            return None
        if signal.node != writer or not signal.pain:
            return None
    stamps: list[Timestamp | None] = []
    for name in ("ack", "clr"):
        raw = value.get(name)
        if raw is None and name not in value:
            stamps.append(None)
            continue
        if type(raw) is not int:
            return None
        try:
            stamps.append(Timestamp.unpack(raw, writer))
        except ValueError:
            return None
    return AlarmRecord(signal, stamps[0], stamps[1])


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
    if rest.startswith("a/") and _ALARM_ID.match(rest[2:]):
        return MeshKeyInfo("alarm", origin, rest[2:])
    return None


def parse_reading(value: object) -> tuple[Any, int] | None:
    """``(value, wall_ms)`` of a reading's register, or None if it is not one."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    written = value[1]
    if isinstance(written, bool) or not isinstance(written, int):
        return None
    return value[0], written
