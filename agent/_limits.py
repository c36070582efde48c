"""Limits of a setting, written once beside its default in the dataclass field.

A settings dataclass (agent/vsm/settings.py, agent/config/schema.py) says each
field's default and type in the usual way, and its limits in the field's
metadata::

    damping: float = field(default=0.7, metadata=limits(minimum=0, maximum=0.99))

The config loader (agent/config/loader.py) reads a TOML table by walking the
fields: the type says how to read a value, :class:`Limits` what to refuse.
Nothing here raises: a ``check`` returns the problem, the loader names the key.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Limits", "identifier", "limits", "limits_of", "one_of"]

_KEY = "vsm_edge.limits"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Limits:
    """What a value must satisfy; for a list or a per-subsystem table, each item.

    ``above``/``minimum``/``maximum`` bound a number (> / >= / <=);
    ``at_least``/``less_than`` name another field of the same table that the
    value must be >= / < ; ``check`` returns a problem ("must be ...") or None.
    """

    above: float | None = None
    minimum: float | None = None
    maximum: float | None = None
    at_least: str | None = None
    less_than: str | None = None
    check: Callable[[Any], str | None] | None = None


_NONE = Limits()


def limits(
    *,
    above: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    at_least: str | None = None,
    less_than: str | None = None,
    check: Callable[[Any], str | None] | None = None,
) -> Mapping[str, Limits]:
    """Field metadata carrying these limits: ``field(default=..., metadata=limits(...))``."""
    return {_KEY: Limits(above, minimum, maximum, at_least, less_than, check)}


def limits_of(f: dataclasses.Field[Any]) -> Limits:
    """The limits written on a dataclass field (none if it has no metadata)."""
    found = f.metadata.get(_KEY, _NONE)
    assert isinstance(found, Limits)
    return found


def identifier(value: str) -> str | None:
    """A name (node id, mesh, zone, unit name): 1-64 characters of ``A-Z a-z 0-9 _ -``."""
    if _ID.match(value):
        return None
    return f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {value!r}"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    """A check that the value is one of ``choices``."""

    def check(value: Any) -> str | None:
        if value in choices:
            return None
        return f"must be one of {', '.join(choices)}, got {value!r}"

    return check
