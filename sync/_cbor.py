"""Deterministic CBOR encoding and bounded decoding (the one CBOR door of sync).

Every module of vsm_edge.sync encodes and decodes through here, so that the
deterministic-encoding rules and the input limits live in one place.
"""

from __future__ import annotations

from typing import Any

import cbor2

from ._errors import LimitExceededError, MalformedError

__all__ = ["DEFAULT_MAX_SIZE", "dumps", "loads"]

DEFAULT_MAX_SIZE = 256 * 1024


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` deterministically (shortest forms, sorted map keys)."""
    return cbor2.dumps(obj, canonical=True)


def loads(data: bytes, *, max_size: int = DEFAULT_MAX_SIZE) -> Any:
    """Decode one CBOR item; raises MalformedError or LimitExceededError."""
    if len(data) > max_size:
        raise LimitExceededError(f"CBOR input of {len(data)} bytes exceeds {max_size}")
    try:
        return cbor2.loads(data)
    except Exception as exc:  # cbor2 raises many types; none may leak
        raise MalformedError(f"invalid CBOR: {exc}") from None
