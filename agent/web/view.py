"""The mesh as the dashboard shows it: one JSON document for an agent or the aggregator.

Both an agent and the aggregator hold the replicated ``mesh`` document (keys
``{node}/report`` and ``{node}/r/{unit}.{reading}``, see ``mesh/schema.py``); the
view is computed from it the same way in both, so the dashboard has one
shape to read (``GET /view.json``)::

    {"source": {"kind": "agent" | "aggregator", "id", "generated_ms"},
     "meshes": [{"mesh", "online_peers", "replication", "gateway"}],
     "nodes":  [{"mesh", "node", "self", "online", "health", "safe_mode",
                 "variety_ratio", "alarms", "report_age_s", "readings", "units",
                 "lag_ms", "lag_text"}],
     "observers": [{"mesh", "node", "online"}],
     "alarms": [{"mesh", "node", "id", "source", "intensity", "valence",
                 "reason", "age_s", "critical", "acked", "acked_by", "acked_ms"}],
     "events": [{"mesh", "node", "id", "source", "intensity", "valence",
                 "reason", "age_s"}],
     "commands": bool}      # the server takes POST /command (the dashboard's form)

A *node* is a peer that wrote into the mesh document (a report or a
reading). A peer whose presence is online but that wrote nothing is an
*observer*: the aggregator (it writes nothing but its presence), or an agent
in its first seconds, before its first report. Observers are listed apart
and never counted as nodes.

``alarms`` are the active pain alarms, most urgent first: critical ones,
then by intensity, then the newest (:func:`alarm_order`). ``acked`` is
True/False, or None where the source cannot tell; ``acked_by`` and
``acked_ms`` are None where the data does not carry them. Pleasure signals
(good news: "left safe mode", "load back under") are not alarms: they are in
``events``, newest first. ``units`` maps a reading to its unit of measure
(the unit's ``ReadingSpec.unit``) where this source knows it: an agent knows
its own units', not its peers'. ``lag_text`` is the lag with its unit
(:func:`format_ms`).

Replication lag: a reading's register holds ``[value, written_ms]``;
:class:`LagTracker` keeps, per origin node, the last ``per_node`` delays from
that write to the moment the delta was joined here (meaningful on one machine
or with synced clocks, as the demo's figures are). Pure: time is an argument.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from ..mesh.schema import parse_key, parse_reading
from ..vsm.algedonic import PAIN

__all__ = [
    "History",
    "LagTracker",
    "alarm_entry",
    "alarm_order",
    "build_view",
    "format_ms",
    "mesh_nodes",
    "mesh_observers",
    "percentiles",
]

LAG_SAMPLES_PER_NODE = 512
HISTORY_POINTS = 300  # 5 minutes at one point a second
HISTORY_INTERVAL_MS = 1000
MAX_TRACKED_NODES = 1024
MAX_READINGS_PER_NODE = 256
MAX_EVENTS = 50
NO_VALUE = "\u2013"


def percentiles(samples: Iterable[float]) -> dict[str, float | int]:
    """count, p50, p99, max of ``samples`` (``{"count": 0}`` when empty)."""
    ordered = sorted(samples)
    if not ordered:
        return {"count": 0}

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)

    return {
        "count": len(ordered),
        "p50": pick(0.5),
        "p99": pick(0.99),
        "max": round(ordered[-1], 1),
    }


class LagTracker:
    """Per origin node, the last delays (ms) from a reading's write to its arrival here."""

    def __init__(
        self, per_node: int = LAG_SAMPLES_PER_NODE, max_nodes: int = MAX_TRACKED_NODES
    ) -> None:
        self.per_node = per_node
        self.max_nodes = max_nodes
        self._samples: dict[str, deque[float]] = {}
        self.evicted = 0

    def observe(self, key: str, value: Any, now_ms: int) -> None:
        """Note a joined reading register ``key`` (anything else is ignored)."""
        info = parse_key(key)
        reading = parse_reading(value)
        if info is None or info.kind != "reading" or reading is None:
            return
        origin, written = info.origin, reading[1]
        samples = self._samples.get(origin)
        if samples is None:
            if len(self._samples) >= self.max_nodes:
                del self._samples[next(iter(self._samples))]  # oldest origin out
                self.evicted += 1
            samples = self._samples[origin] = deque(maxlen=self.per_node)
        samples.append(max(0.0, float(now_ms - written)))

    def of(self, node: str) -> dict[str, float | int]:
        return percentiles(self._samples.get(node, ()))

    def all(self) -> dict[str, float | int]:
        return percentiles(s for samples in self._samples.values() for s in samples)


class History:
    """The recent variety ratio and lag p50 of each node, for the dashboard's plots.

    :meth:`record` takes one point per node from a view, at most one every
    ``interval_ms``; ``points`` per node and ``max_nodes`` nodes are kept
    (oldest out). :meth:`export` gives ``{"mesh/node": {"t": [...],
    "variety": [...], "lag": [...]}}`` (None where a value was missing), so a
    page loaded now draws the last minutes at once.
    """

    def __init__(
        self,
        points: int = HISTORY_POINTS,
        interval_ms: int = HISTORY_INTERVAL_MS,
        max_nodes: int = MAX_TRACKED_NODES,
    ) -> None:
        self.points = points
        self.interval_ms = interval_ms
        self.max_nodes = max_nodes
        self._series: dict[str, deque[tuple[int, float | None, float | None]]] = {}
        self._last_ms: int | None = None

    def record(self, view: Mapping[str, Any]) -> bool:
        """Note a point per node of ``view`` unless one was noted too recently."""
        now_ms = view["source"]["generated_ms"]
        if self._last_ms is not None and 0 <= now_ms - self._last_ms < self.interval_ms:
            return False
        self._last_ms = now_ms
        for node in view["nodes"]:
            key = f"{node['mesh']}/{node['node']}"
            series = self._series.get(key)
            if series is None:
                if len(self._series) >= self.max_nodes:
                    del self._series[next(iter(self._series))]
                series = self._series[key] = deque(maxlen=self.points)
            lag = None if node.get("self") else _finite((node.get("lag_ms") or {}).get("p50"))
            series.append((now_ms, _finite(node.get("variety_ratio")), lag))
        return True

    def export(self) -> dict[str, dict[str, list[Any]]]:
        return {
            key: {
                "t": [p[0] for p in series],
                "variety": [p[1] for p in series],
                "lag": [p[2] for p in series],
            }
            for key, series in self._series.items()
        }


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def mesh_nodes(
    mesh: str,
    values: Mapping[Any, Any],
    *,
    now_ms: int,
    online: Mapping[str, bool],
    lag: LagTracker,
    self_node: str | None = None,
    units: Mapping[str, Mapping[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """One entry per node that wrote into the mesh document ``values`` (thawed key -> value).

    ``online`` is the presence of each peer as the replicator knows it (a
    node missing from it and not ``self_node`` is reported ``None``:
    unknown); a peer that wrote nothing is not a node (see
    :func:`mesh_observers`). ``units`` gives, per node, the unit of measure
    of its readings (``"unit.reading" -> "°C"``) where known. Malformed
    entries are skipped, never trusted.
    """
    units = units or {}
    nodes: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        if name not in nodes:
            nodes[name] = {
                "mesh": mesh,
                "node": name,
                "self": name == self_node,
                "online": True if name == self_node else online.get(name),
                "health": None,
                "safe_mode": None,
                "variety_ratio": None,
                "alarms": [],
                "report_age_s": None,
                "readings": {},
                "units": {},
                "lag_ms": lag.of(name),
                "lag_text": {},
            }
        return nodes[name]

    for key in sorted(k for k in values if isinstance(k, str)):
        info = parse_key(key)
        if info is None or info.kind == "lease":
            continue
        origin = info.origin
        value = values[key]
        if info.kind == "report" and isinstance(value, Mapping):
            e = entry(origin)
            e["health"] = _finite(value.get("health"))
            safe = value.get("safe")
            e["safe_mode"] = safe if isinstance(safe, bool) else None
            e["variety_ratio"] = _finite(value.get("ratio"))
            alarms = value.get("alarms")
            if isinstance(alarms, list):
                e["alarms"] = [a for a in alarms if isinstance(a, str)][:256]
            hlc = value.get("hlc")
            if isinstance(hlc, int) and not isinstance(hlc, bool):
                e["report_age_s"] = round(max(0, now_ms - hlc) / 1000.0, 3)
        elif info.kind == "reading" and (pair := parse_reading(value)) is not None:
            e = entry(origin)
            reading = _finite(pair[0])
            if reading is not None and len(e["readings"]) < MAX_READINGS_PER_NODE:
                e["readings"][info.name] = reading
                unit = units.get(origin, {}).get(info.name)
                if unit:
                    e["units"][info.name] = unit
    if self_node is not None:
        entry(self_node)  # this node, before its first report
    for e in nodes.values():
        e["lag_text"] = {q: format_ms(e["lag_ms"].get(q)) for q in ("p50", "p99")}
    return [nodes[name] for name in sorted(nodes)]


def mesh_observers(
    mesh: str, nodes: Iterable[Mapping[str, Any]], online: Mapping[str, bool]
) -> list[dict[str, Any]]:
    """The online peers of ``mesh`` that are not among ``nodes``: they wrote nothing.

    That is how an aggregator is told apart (it writes only its presence),
    by what it does rather than by its name; an agent starting up is one
    too until its first report.
    """
    known = {n["node"] for n in nodes}
    return [
        {"mesh": mesh, "node": name, "online": True}
        for name in sorted(online)
        if online[name] and name not in known
    ]


def format_ms(ms: Any) -> str:
    """A duration in ms as text with its unit: ``"850 ms"``, ``"1.5 s"``, ``"2.3 min"``.

    Past an hour, hours (``"1.2 h"``); :data:`NO_VALUE` (an en dash, as the page
    shows a missing number) for None, not a number, negative or not finite.
    """
    value = _finite(ms)
    if value is None or value < 0:
        return NO_VALUE
    if value < 10:
        return f"{value:.1f} ms"
    if value < 999.5:
        return f"{value:.0f} ms"
    if value < 59_950:
        return f"{value / 1000:.1f} s"
    if value < 3_597_000:
        return f"{value / 60_000:.1f} min"
    return f"{value / 3_600_000:.1f} h"


def alarm_entry(
    *,
    mesh: str,
    node: str,
    id: str,
    source: str,
    intensity: float,
    valence: str,
    reason: str,
    age_s: float,
    critical: bool,
    acked: bool | None,
    acked_by: str | None = None,
    acked_ms: int | None = None,
) -> dict[str, Any]:
    """One entry of the view's ``alarms`` (or, for a pleasure signal, ``events``)."""
    return {
        "mesh": mesh,
        "node": node,
        "id": id,
        "source": source,
        "intensity": intensity,
        "valence": valence,
        "reason": reason,
        "age_s": age_s,
        "critical": critical,
        "acked": acked,
        "acked_by": acked_by,
        "acked_ms": acked_ms,
    }


def alarm_order(alarm: Mapping[str, Any]) -> tuple[bool, float, float, str]:
    """Sort key of the alarm table: critical first, then stronger, then newer (then by id)."""
    age = _finite(alarm.get("age_s"))
    return (
        alarm.get("critical") is not True,
        -(_finite(alarm.get("intensity")) or 0.0),
        math.inf if age is None else age,
        str(alarm.get("id")),
    )


def build_view(
    kind: str,
    source_id: str,
    now_ms: int,
    meshes: list[dict[str, Any]],
    nodes: list[dict[str, Any]],
    alarms: list[dict[str, Any]],
    observers: list[dict[str, Any]] | None = None,
    *,
    commands: bool = False,
) -> dict[str, Any]:
    """The document of ``GET /view.json`` (see the module docstring).

    ``commands``: whether the server that serves it takes ``POST /command``
    (the dashboard then shows its command form).

    ``alarms`` are entries of :func:`alarm_entry`, any valence: pain ones
    become the sorted ``alarms``, pleasure ones the ``events`` (newest first,
    at most :data:`MAX_EVENTS`, without the acknowledgement fields) and are
    taken out of the nodes' ``alarms`` lists.
    """
    pain = [a for a in alarms if a["valence"] == PAIN]
    events = [
        {k: v for k, v in a.items() if k not in ("critical", "acked", "acked_by", "acked_ms")}
        for a in alarms
        if a["valence"] != PAIN
    ]
    events.sort(key=lambda e: (_finite(e.get("age_s")) or 0.0, str(e["id"])))
    # A report lists every unacknowledged signal of its node, good news included:
    # those known here to be pleasure are not counted as the node's alarms.
    good = {e["id"] for e in events}
    if good:
        for node in nodes:
            node["alarms"] = [a for a in node["alarms"] if a not in good]
    return {
        "source": {"kind": kind, "id": source_id, "generated_ms": now_ms},
        "meshes": meshes,
        "nodes": nodes,
        "observers": observers or [],
        "alarms": sorted(pain, key=alarm_order),
        "events": events[:MAX_EVENTS],
        "commands": commands,
    }
