"""JSON from the network, decoded within bounds.

The standard library's decoder recurses once per nesting level, so a body of
a few thousand ``[`` raises RecursionError (and would end whatever task parsed
it). :func:`decode_json` measures the nesting first, in one linear pass that
does not recurse, and refuses more than ``max_depth`` levels before the
decoder sees the text. It also refuses what is not strict JSON (RFC 8259): text
that is not UTF-8, and the ``NaN``/``Infinity`` constants Python accepts.

Every refusal is one :class:`JsonInputError` with a message fit for an HTTP
400 answer; nothing else escapes.
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

__all__ = ["MAX_DEPTH", "JsonInputError", "decode_json"]

MAX_DEPTH = 32  # arrays and objects inside one another (the documents we exchange use < 10)

# A JSON string (escapes included), then any bracket: strings are skipped whole,
# so a bracket inside one is not counted. An unterminated string does not match
# and its brackets are counted, which can only overestimate the depth.
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
_OPEN = frozenset("[{")


class JsonInputError(ValueError):
    """JSON input refused: not UTF-8, not valid JSON, or nested too deeply."""


def nesting_depth(text: str, limit: int) -> int:
    """The deepest nesting of arrays and objects in ``text``, counting up to ``limit + 1``."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in _OPEN:
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif token[0] != '"':
            depth -= 1
    return deepest


def decode_json(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode ``data`` (UTF-8 JSON) nested at most ``max_depth`` deep.

    Raises :class:`JsonInputError` for anything else. The caller bounds the
    size (the HTTP body limit); this function is linear in it.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise JsonInputError("body is not UTF-8") from None
    if nesting_depth(text, max_depth) > max_depth:
        raise JsonInputError(f"JSON nested deeper than {max_depth} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):  # RecursionError: not reachable after the depth check
        raise JsonInputError("body is not valid JSON") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")
