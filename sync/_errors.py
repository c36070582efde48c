"""The exception tree of vsm_edge.sync.

Every failure to decode or verify bytes that came from outside raises a
:class:`WireError` subtype, never a cbor2, nacl or other third-party error.
"""

from __future__ import annotations

__all__ = [
    "LimitExceededError",
    "MalformedError",
    "SyncError",
    "WireError",
]


class SyncError(Exception):
    """Base of every exception raised on purpose by vsm_edge.sync."""


class WireError(SyncError):
    """Bytes from the wire (or from disk) could not be decoded or verified."""


class MalformedError(WireError):
    """The bytes are not well-formed CBOR, or not the structure expected."""


class LimitExceededError(WireError):
    """The input is larger, deeper or has more items than the configured limits."""
