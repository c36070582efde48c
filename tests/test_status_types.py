"""The status document stays what it was: the same keys and values, field by field.

``tests/vectors/status-*.json`` were captured from the code before the status
was typed (see tests/support/status_scenario.py); ``status --json``, ``GET
/status`` and ``demo --json`` carry this document, so it must not drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from support.status_scenario import (
    AGENT_VECTOR,
    VECTOR,
    StandInDiscovery,
    busy_guard,
    capture,
    discovery_section,
)


def differences(actual: Any, expected: Any, path: str = "$") -> list[str]:
    """Every path where ``actual`` and ``expected`` differ (a JSON type counts: 1 is not 1.0)."""
    if type(actual) is not type(expected):
        return [f"{path}: {actual!r} ({type(actual).__name__}), expected {expected!r}"]
    if isinstance(expected, dict):
        out = [f"{path}.{k}: missing" for k in expected if k not in actual]
        out += [f"{path}.{k}: unexpected" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += differences(actual[k], expected[k], f"{path}.{k}")
        return out
    if isinstance(expected, list):
        if len(actual) != len(expected):
            return [f"{path}: {len(actual)} items, expected {len(expected)}"]
        return [
            d for i, (a, e) in enumerate(zip(actual, expected, strict=True))
            for d in differences(a, e, f"{path}[{i}]")
        ]  # fmt: skip
    return [] if actual == expected else [f"{path}: {actual!r}, expected {expected!r}"]


def as_json(value: Any) -> Any:
    doc = value if isinstance(value, dict) else value.to_json()
    return json.loads(json.dumps(doc))


def test_differences_names_every_changed_field() -> None:
    before = {"a": 1, "b": [1.0, {"c": None}], "d": True}
    after = {"a": 1.0, "b": [1.0, {"c": 0}], "e": True}
    assert differences(after, before) == [
        "$.d: missing",
        "$.e: unexpected",
        "$.a: 1.0 (float), expected 1",
        "$.b[1].c: 0 (int), expected None",
    ]
    assert differences(before, before) == []


def test_the_vsm_status_of_a_busy_runtime_is_todays_field_by_field() -> None:
    expected = json.loads(VECTOR.read_text())
    assert differences(capture(), expected) == []


async def test_the_gateway_section_is_todays_field_by_field(tmp_path: Path) -> None:
    expected = json.loads(AGENT_VECTOR.read_text())["gateway"]
    assert expected["zone_policy"] is not None
    assert expected["quarantine"]
    assert differences(as_json(busy_guard(tmp_path).status()), expected) == []


def test_the_discovery_section_is_todays_field_by_field() -> None:
    expected = json.loads(AGENT_VECTOR.read_text())["discovery"]
    assert differences(as_json(discovery_section(StandInDiscovery())), expected) == []
