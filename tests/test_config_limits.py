"""The loader enforces every limit written on a settings field, naming the key.

The cases are made from the schema itself (agent/_limits.py metadata on the
dataclasses of agent/config/schema.py and agent/vsm/settings.py): a setting
added with limits is tested here without a new line.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from vsm_edge.agent import AgentConfig, ConfigError, parse_config
from vsm_edge.agent._limits import Limits, limits_of


def numeric_settings() -> Iterator[tuple[str, type, Limits]]:
    """(dotted key, int or float, limits) of every numeric setting, one subsystem for tables."""
    for section in dataclasses.fields(AgentConfig):
        cls = typing.get_type_hints(AgentConfig)[section.name]
        if dataclasses.is_dataclass(cls):
            yield from _numeric(section.name, cls)


def _numeric(path: str, cls: Any) -> Iterator[tuple[str, type, Limits]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, key = hints[f.name], f"{path}.{f.name}"
        if typing.get_origin(tp) is Mapping:
            item = typing.get_args(tp)[1]
            if dataclasses.is_dataclass(item):
                yield from _numeric(f"{key}.s1", item)
            elif item in (int, float):
                yield f"{key}.s1", item, limits_of(f)
        elif tp in (int, float):
            yield key, tp, limits_of(f)


def table(key: str, value: object) -> dict[str, Any]:
    """The config setting the dotted ``key`` to ``value``."""
    data: dict[str, Any] = {"node": {"id": "n"}}
    *tables, last = key.split(".")
    inner = data
    for name in tables:
        inner = inner.setdefault(name, {})
    inner[last] = value
    return data


def refused(key: str, value: object) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(table(key, value))
    assert info.value.key == key
    return info.value.problem


def fmt(limit: float) -> str:
    return str(int(limit)) if float(limit).is_integer() else str(limit)


CASES = [
    pytest.param(key, tp, lim, id=key)
    for key, tp, lim in numeric_settings()
    if (lim.above, lim.minimum, lim.maximum) != (None, None, None)
]


def test_every_numeric_setting_has_a_limit() -> None:
    keys = [c.id for c in CASES]
    assert keys == [key for key, _tp, _lim in numeric_settings()]
    assert len(keys) > 50
    for key in ("bus.channels.s1.capacity", "s3.budgets.s1.refill_per_s", "s4.timescales_s.s1"):
        assert key in keys


@pytest.mark.parametrize(("key", "tp", "lim"), CASES)
def test_a_value_past_a_limit_is_refused_by_its_key(key: str, tp: type, lim: Limits) -> None:
    step = 1 if tp is int else 0.5
    if lim.above is not None:
        assert refused(key, tp(lim.above)).startswith(f"must be > {fmt(lim.above)}, got ")
    if lim.minimum is not None:
        assert refused(key, tp(lim.minimum - step)).startswith(f"must be >= {fmt(lim.minimum)}")
    if lim.maximum is not None:
        assert refused(key, tp(lim.maximum + step)).startswith(f"must be <= {fmt(lim.maximum)}")
    bad = "1" if tp is int else "x"
    expected = "an integer" if tp is int else "a number"
    assert refused(key, bad) == f"expected {expected}, got a string"


COMPARED = {
    name
    for key, _tp, lim in numeric_settings()
    if lim.at_least or lim.less_than
    for name in (key.rpartition(".")[2], lim.at_least or lim.less_than)
}


@pytest.mark.parametrize(
    ("key", "tp", "lim"),
    [c for c in CASES if c.id.rpartition(".")[2] not in COMPARED],  # tested below
)
def test_a_value_on_a_limit_is_accepted(key: str, tp: type, lim: Limits) -> None:
    for edge in (lim.minimum, lim.maximum):
        if edge is not None:
            parse_config(table(key, tp(edge)))


@pytest.mark.parametrize(
    ("key", "value", "other", "message"),
    [
        ("runtime.restart_max_s", 0.05, "restart_initial_s", "must be >= restart_initial_s (0.1)"),
        ("s4.overflow_ratio", 1.2, "warning_ratio", "must be >= warning_ratio (1.3)"),
        ("s5.safe_mode_exit_pain", 0.7, "safe_mode_pain", "must be < safe_mode_pain (0.7)"),
    ],
)
def test_settings_compared_with_another(key: str, value: float, other: str, message: str) -> None:
    assert refused(key, value).startswith(message)
    named = [k for k, _t, lim in numeric_settings() if other in (lim.at_least, lim.less_than)]
    assert named == [key]  # every comparison of the schema is in this list
