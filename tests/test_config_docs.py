"""docs/configuration.md says what the schema says: every key, and every default.

The tables of the page (``| key | default | meaning |`` under ``## `[section]` ``)
are read and compared with the dataclass fields of AgentConfig's sections: a key
documented but not in the schema, a key of the schema not documented, or a
documented default that is not the dataclass's fails here.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from vsm_edge.agent import AgentConfig, OverflowPolicy, Subsystem

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
SUBSYSTEM_NAMES = {str(s) for s in Subsystem}

# Defaults the page says in words; the words are checked, the value is not.
PROSE = {
    "broker.tls": "true for `mqtts://`",
    "security.arbitrator_model": "the shipped model",
}


def schema_defaults() -> dict[str, Any]:
    """Dotted key -> default of every key the TOML file may set (``X``: any subsystem)."""
    out: dict[str, Any] = {}
    for section in dataclasses.fields(AgentConfig):
        cls = typing.get_type_hints(AgentConfig)[section.name]
        if not dataclasses.is_dataclass(cls):
            continue  # units (documented by example), source (not a key)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key, default = f"{section.name}.{f.name}", _default(f)
            item = typing.get_args(hints[f.name])[-1:]
            if typing.get_origin(hints[f.name]) is Mapping and dataclasses.is_dataclass(item[0]):
                for g in dataclasses.fields(item[0]):
                    by_sub = {str(s): getattr(v, g.name) for s, v in default.items()}
                    out[f"{key}.X.{g.name}"] = by_sub
            elif typing.get_origin(hints[f.name]) is Mapping:
                out[f"{key}.X"] = {str(s): v for s, v in default.items()}
            else:
                out[key] = default
    return out


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def documented() -> dict[str, str]:
    """Dotted key -> the default column's text for that key, from the page's tables."""
    out: dict[str, str] = {}
    section = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^## `\[(\w+)\]`", line)
        if line.startswith("## "):
            section = heading.group(1) if heading else None
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if section is None or not line.startswith("|") or len(cells) != 3:
            continue
        if cells[0] in ("key", "---"):
            continue
        keys = re.findall(r"`([\w.]+)`", cells[0])
        for key, text in zip(keys, _split(keys, cells[1]), strict=True):
            prefix = keys[0].rpartition(".")[0] if "." not in key else ""
            out[f"{section}.{prefix + '.' if prefix else ''}{key}"] = text
    return out


def _split(keys: list[str], text: str) -> list[str]:
    """One default per key: ``a / b`` for two keys, ``s1 1/2, s2 3/4`` per subsystem."""
    if len(keys) > 1 and " / " in text:
        return text.split(" / ")
    if len(keys) > 1 and _per_subsystem(text) is not None:
        return [
            ", ".join(f"{sub} {value.split('/')[i]}" for sub, value in _per_subsystem(text) or [])
            for i in range(len(keys))
        ]
    return [text] * len(keys)


def _per_subsystem(text: str) -> list[tuple[str, str]] | None:
    pairs = [tuple(part.split(" ")) for part in text.split(", ")]
    if all(len(p) == 2 and p[0] in SUBSYSTEM_NAMES for p in pairs):
        return [(p[0], p[1]) for p in pairs]
    return None


def value(text: str) -> Any:
    """A documented default as a value (TOML syntax, in backticks or not)."""
    if text == "required":
        return dataclasses.MISSING
    if text == "none":
        return None
    pairs = _per_subsystem(text)
    if pairs is not None:
        return {sub: value(v) for sub, v in pairs}
    return tomllib.loads(f"v = {text.strip('`')}")["v"]


def matches(doc: Any, default: Any) -> bool:
    """Whether a documented default (read by :func:`value`) is the dataclass's."""
    if doc is None:
        return default is None or default == ()
    if isinstance(default, Mapping) and not isinstance(doc, dict):  # one for every subsystem
        return all(matches(doc, v) for v in default.values())
    if isinstance(default, Mapping):
        return (
            isinstance(doc, dict)
            and doc.keys() == default.keys()
            and all(matches(doc[k], default[k]) for k in doc)
        )
    if isinstance(default, Path):
        return isinstance(doc, str) and Path(doc) == default
    if isinstance(default, enum.Enum):
        return bool(doc == default.value)
    if isinstance(default, tuple):
        return isinstance(doc, list) and tuple(doc) == default
    if isinstance(default, bool) or isinstance(doc, bool):
        return doc is default
    return bool(doc == default)


def test_every_key_of_the_schema_is_documented_and_no_other() -> None:
    docs, schema = documented(), schema_defaults()
    assert len(docs) > 80  # the page was read
    assert sorted(set(schema) - set(docs)) == []  # in the schema, not on the page
    assert sorted(set(docs) - set(schema)) == []  # on the page, not in the schema


def test_every_documented_default_is_the_dataclass_default() -> None:
    docs, schema = documented(), schema_defaults()
    wrong = []
    for key, text in sorted(docs.items()):
        if key in PROSE:
            continue
        if not matches(value(text), schema[key]):
            wrong.append(f"{key}: page says {text}, the dataclass {schema[key]!r}")
    assert wrong == []


@pytest.mark.parametrize(("key", "text"), sorted(PROSE.items()))
def test_prose_defaults_are_still_on_the_page(key: str, text: str) -> None:
    assert documented()[key] == text


@pytest.mark.parametrize(
    ("text", "default", "equal"),
    [
        ("30", 30, True),
        ("31", 30, False),
        ("0.1", 0.1, True),
        ("`false`", True, False),
        ("true", 1, False),
        ('`"drop-oldest"`', OverflowPolicy.DROP_OLDEST, True),
        ('`"default"`', "default", True),
        ('`"vsm-data"`', Path("./vsm-data"), True),
        ('`["127.0.0.1"]`', ("127.0.0.1",), True),
        ("none", None, True),
        ("none", 0, False),
        ("s1 1, s2 10", {"s1": 1.0, "s2": 10.0}, True),
        ("s1 1, s2 11", {"s1": 1.0, "s2": 10.0}, False),
        ("s1 1", {"s1": 1.0, "s2": 10.0}, False),
        ("1", {"s1": 1.0, "s2": 1.0}, True),
        ("1", {"s1": 1.0, "s2": 10.0}, False),
        ("required", dataclasses.MISSING, True),
    ],
)
def test_the_comparison_itself(text: str, default: Any, equal: bool) -> None:
    assert matches(value(text), default) is equal
