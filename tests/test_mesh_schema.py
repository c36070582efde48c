"""The mesh schema (agent/mesh/schema.py): builders and parsers agree, and the
parsers never raise on what a peer wrote."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vsm_edge.agent.mesh.schema import (
    MeshKeyInfo,
    lease_key,
    parse_key,
    parse_reading,
    quarantine_key,
    reading_key,
    reading_value,
    report_key,
)


def test_builders_and_parser_agree() -> None:
    assert parse_key(report_key("n1")) == MeshKeyInfo("report", "n1", "")
    assert parse_key(quarantine_key("n1")) == MeshKeyInfo("quarantine", "n1", "")
    assert parse_key(reading_key("n1", "temp", "c")) == MeshKeyInfo("reading", "n1", "temp.c")
    assert parse_key(lease_key("valve/3")) == MeshKeyInfo("lease", "", "valve/3")
    assert parse_reading(reading_value(21.5, 1_700_000_000_000)) == (21.5, 1_700_000_000_000)


@pytest.mark.parametrize("key", ["", "n1", "/report", "n1/", "n1/r/", "n1/other", 7, None, b"x"])
def test_keys_of_no_known_shape_are_none(key: Any) -> None:
    assert parse_key(key) is None


@pytest.mark.parametrize("value", [None, 1, [1], [1, 2, 3], [1, True], [1, "x"], [1, 2.0]])
def test_values_that_are_not_readings_are_none(value: Any) -> None:
    assert parse_reading(value) is None


@given(st.one_of(st.text(max_size=20), st.integers(), st.binary(max_size=4), st.none()))
def test_parse_key_never_raises(key: object) -> None:
    parse_key(key)
