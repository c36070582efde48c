"""Frozen plain values carried by registers, and the keys of sets and maps.

A register holds a *value*: ``None``, ``bool``, ``int`` (-2**63..2**64-1),
``float`` (not NaN), ``str``, ``bytes``, a tuple of values or an
``immutables.Map`` from text to values. :func:`freeze` turns lists into tuples
and dicts into Maps, so a stored value can never change under a replica's
feet. Set elements and map keys are ``str``, ``int`` or ``bytes``.
"""

from __future__ import annotations

import math
from typing import Any

import immutables

from ._errors import MalformedError

__all__ = ["Key", "check_key", "freeze", "key_order", "value_from_cbor", "value_to_cbor"]

Key = str | int | bytes
MIN_INT = -(1 << 63)
MAX_INT = (1 << 64) - 1
MAX_DEPTH = 16
MAX_KEY_BYTES = 1024


def check_key(key: object) -> Key:
    """Return ``key`` if it is a valid element / map key, else raise TypeError."""
    if isinstance(key, str):
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError:
            raise TypeError("keys must be valid Unicode text") from None
        if size > MAX_KEY_BYTES:
            raise TypeError(f"keys are limited to {MAX_KEY_BYTES} bytes")
        return key
    if isinstance(key, bytes):
        if len(key) > MAX_KEY_BYTES:
            raise TypeError(f"keys are limited to {MAX_KEY_BYTES} bytes")
        return key
    if type(key) is int and MIN_INT <= key <= MAX_INT:
        return key
    raise TypeError(f"keys are str, bytes or int in -2**63..2**64-1, got {key!r:.60}")


def key_order(key: Key) -> tuple[Any, ...]:
    """Sort key reproducing RFC 8949 §4.2.1 order (bytewise order of the
    deterministic encodings): unsigned ints, then negative ints, then byte
    strings, then text; shorter before longer, then bytewise."""
    if isinstance(key, int):
        return (0, key) if key >= 0 else (1, -1 - key)
    if isinstance(key, bytes):
        return (2, len(key), key)
    b = key.encode("utf-8")
    return (3, len(b), b)


def wire_key(obj: object) -> Key:
    """Validate a decoded key; raises MalformedError."""
    try:
        return check_key(obj)
    except TypeError as exc:
        raise MalformedError(str(exc)) from None


def freeze(value: object, _depth: int = 0) -> Any:
    """A frozen copy of ``value`` (lists -> tuples, dicts -> immutables.Map).

    Raises TypeError for anything outside the value domain (module docstring).
    """
    if _depth > MAX_DEPTH:
        raise TypeError(f"values nest at most {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str | bytes):
        return value
    if type(value) is int:
        if not MIN_INT <= value <= MAX_INT:
            raise TypeError("integers are limited to -2**63..2**64-1")
        return value
    if type(value) is float:
        if math.isnan(value):
            raise TypeError("NaN is not a value (it is not equal to itself)")
        return value
    if isinstance(value, list | tuple):
        return tuple(freeze(v, _depth + 1) for v in value)
    if isinstance(value, dict | immutables.Map):
        items = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("map values have text keys")
            items[k] = freeze(v, _depth + 1)
        return immutables.Map(items)
    raise TypeError(f"not a storable value: {type(value).__name__}")


def value_to_cbor(value: Any) -> Any:
    """The CBOR-ready form of a frozen value."""
    if isinstance(value, tuple):
        return [value_to_cbor(v) for v in value]
    if isinstance(value, immutables.Map):
        return {k: value_to_cbor(v) for k, v in value.items()}
    return value


def thaw(value: Any) -> Any:
    """A plain copy of a frozen value (tuples -> lists, immutables.Map -> dict),
    for code that expects what it stored."""
    return value_to_cbor(value)


def value_from_cbor(obj: object, _depth: int = 0) -> Any:
    """Strictly decode a value; raises MalformedError."""
    if _depth > MAX_DEPTH:
        raise MalformedError(f"values nest at most {MAX_DEPTH} levels")
    if obj is None or isinstance(obj, bool | str | bytes):
        return obj
    if type(obj) is int:
        if not MIN_INT <= obj <= MAX_INT:
            raise MalformedError("integer out of range")
        return obj
    if type(obj) is float:
        if math.isnan(obj):
            raise MalformedError("NaN is not a value")
        return obj
    if isinstance(obj, list):
        return tuple(value_from_cbor(v, _depth + 1) for v in obj)
    if isinstance(obj, dict):
        items = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise MalformedError("map values have text keys")
            items[k] = value_from_cbor(v, _depth + 1)
        return immutables.Map(items)
    raise MalformedError(f"not a value: {type(obj).__name__}")
