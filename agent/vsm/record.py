"""Frozen dataclasses to JSON and back, driven by their type hints (the status types' codec).

A record is a ``@dataclass(frozen=True, slots=True)`` subclass of
:class:`StatusRecord`. :meth:`~StatusRecord.to_json` gives an object with one
key per field, in field order (a field declared with ``metadata=OMIT_NONE``
is left out while it is None); :meth:`~StatusRecord.from_json` checks an
object against the fields' type hints and builds the record.

The hints it reads: ``bool``, ``int``, ``float``, ``str``, ``None`` and unions of
them, ``tuple[X, ...]`` (a JSON array), ``Mapping[str, X]`` (an object with
any keys), ``Any`` (taken as it is: the open-ended parts, such as a unit's
``detail``) and other records. A float field accepts an integer and keeps it
an integer, so a document read and written again is the same text (a budget
of 1000 stays ``1000``, not ``1000.0``). Unknown keys are ignored (a newer
agent may say more); a missing key is an error unless the field has a
default. Every refusal is one :class:`~vsm_edge.agent.StatusError` naming the
path (``status.s3.budgets.s1.tokens: expected a number, got a string``).
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from typing import Any, Final, NamedTuple, Self, Union, get_args, get_origin, get_type_hints

from .._errors import StatusError

__all__ = ["OMIT_NONE", "StatusRecord", "dump", "expect_object", "kind_of"]

OMIT_NONE: Final[Mapping[str, bool]] = types.MappingProxyType({"omit_none": True})
"""Field metadata: leave the key out of the JSON while the value is None."""

Parse = Callable[[object, str], Any]


class StatusRecord:
    """Base of the status types; see the module docstring."""

    __slots__ = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON object (plain dicts, lists and scalars) of this record."""
        out: dict[str, Any] = {}
        for field in _fields(type(self)):
            value = getattr(self, field.name)
            if value is None and field.omit_none:
                continue
            out[field.name] = dump(value)
        return out

    @classmethod
    def from_json(cls, obj: object, path: str = "status") -> Self:
        """The record in ``obj`` (decoded JSON); raises StatusError where it does not fit."""
        items = expect_object(obj, path)
        values: dict[str, Any] = {}
        for field in _fields(cls):
            if field.name in items:
                values[field.name] = field.parse(items[field.name], f"{path}.{field.name}")
            elif field.required:
                raise StatusError(path, f"missing {field.name!r}")
        return cls(**values)


def dump(value: Any) -> Any:
    """``value`` as JSON: records through ``to_json``, tuples as lists, mappings as dicts."""
    if isinstance(value, StatusRecord):
        return value.to_json()
    if isinstance(value, tuple | list):
        return [dump(v) for v in value]
    if isinstance(value, Mapping):
        return {k: dump(v) for k, v in value.items()}
    return value


def expect_object(obj: object, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise StatusError(path, f"expected an object, got {kind_of(obj)}")
    return obj


def kind_of(obj: object) -> str:
    """How a JSON value reads in an error message: ``a string``, ``null``..."""
    if obj is None:
        return "null"
    if isinstance(obj, bool):
        return "a boolean"
    if isinstance(obj, int | float):
        return "a number"
    if isinstance(obj, str):
        return "a string"
    if isinstance(obj, list | tuple):
        return "an array"
    if isinstance(obj, Mapping):
        return "an object"
    return type(obj).__name__


class _Field(NamedTuple):
    name: str
    parse: Parse
    omit_none: bool
    required: bool


_FIELDS: dict[type, tuple[_Field, ...]] = {}


def _fields(cls: type[StatusRecord]) -> tuple[_Field, ...]:
    """The fields of ``cls`` with their parsers, made once per class."""
    fields = _FIELDS.get(cls)
    if fields is None:
        fields = _FIELDS[cls] = _make_fields(cls)
    return fields


def _make_fields(cls: type[StatusRecord]) -> tuple[_Field, ...]:
    hints = get_type_hints(cls)
    return tuple(
        _Field(
            f.name,
            parser(hints[f.name]),
            bool(f.metadata.get("omit_none")),
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
        )
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    )


def _scalar(check: Callable[[object], bool], what: str) -> Parse:
    def parse(obj: object, path: str) -> object:
        if not check(obj):
            raise StatusError(path, f"expected {what}, got {kind_of(obj)}")
        return obj

    return parse


_SCALARS: Final[Mapping[object, Parse]] = {
    bool: _scalar(lambda o: type(o) is bool, "a boolean"),
    int: _scalar(lambda o: type(o) is int, "an integer"),
    float: _scalar(lambda o: type(o) is float or type(o) is int, "a number"),
    str: _scalar(lambda o: type(o) is str, "a string"),
    type(None): _scalar(lambda o: o is None, "null"),
}


def _any(obj: object, path: str) -> object:
    return obj


def parser(hint: Any) -> Parse:
    """The parse function of one type hint (see the module docstring for those it knows)."""
    if hint is Any:
        return _any
    if hint in _SCALARS:
        return _SCALARS[hint]
    origin = get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return _union(get_args(hint))
    if origin is tuple:
        item, ellipsis = get_args(hint)
        assert ellipsis is Ellipsis, f"only tuple[X, ...] is supported, not {hint}"
        return _array(parser(item))
    if origin is Mapping or origin is dict:
        key, value = get_args(hint)
        assert key is str, f"only Mapping[str, X] is supported, not {hint}"
        return _object(parser(value))
    if isinstance(hint, type) and issubclass(hint, StatusRecord):
        return hint.from_json
    raise TypeError(f"no JSON parser for the type hint {hint!r}")


def _union(members: tuple[Any, ...]) -> Parse:
    nullable = type(None) in members
    others = [m for m in members if m is not type(None)]
    if len(others) == 1:  # X | None: X's own errors, with their paths
        inner = parser(others[0])

        def optional(obj: object, path: str) -> object:
            return None if obj is None else inner(obj, path)

        return optional if nullable else inner
    parsers = [parser(m) for m in members]
    names = " | ".join(
        "null" if m is type(None) else getattr(m, "__name__", str(m)) for m in members
    )

    def either(obj: object, path: str) -> object:
        for parse in parsers:
            try:
                return parse(obj, path)
            except StatusError:
                continue
        raise StatusError(path, f"expected {names}, got {kind_of(obj)}")

    return either


def _array(item: Parse) -> Parse:
    def parse(obj: object, path: str) -> tuple[Any, ...]:
        if not isinstance(obj, list | tuple):
            raise StatusError(path, f"expected an array, got {kind_of(obj)}")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(obj))

    return parse


def _object(value: Parse) -> Parse:
    def parse(obj: object, path: str) -> dict[str, Any]:
        items = expect_object(obj, path)
        out: dict[str, Any] = {}
        for k, v in items.items():
            if not isinstance(k, str):
                raise StatusError(path, f"expected string keys, got {kind_of(k)}")
            out[k] = value(v, f"{path}.{k}")
        return out

    return parse
