"""The exception tree of vsm_edge.sync.

Every failure to decode or verify bytes that came from outside raises a
:class:`WireError` subtype, never a cbor2, nacl or other third-party error.
The store raises :class:`StoreError` subtypes (never ``sqlite3`` errors) and
discovery raises :class:`DiscoveryError` subtypes (never zeroconf's).
"""

from __future__ import annotations

__all__ = [
    "DiscoveryError",
    "LimitExceededError",
    "MalformedError",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreVersionError",
    "SyncError",
    "TxtRecordError",
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


class StoreError(SyncError):
    """The node's SQLite store failed; no sqlite3 exception leaks past it.

    A mutation that raised was not committed: nothing it wrote is visible.
    """


class StoreCorruptError(StoreError):
    """The database file is not a vsm-edge store or is damaged (``path`` says which)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class StoreVersionError(StoreError):
    """The database was written by a newer schema than this code knows.

    ``found`` is the file's schema version, ``supported`` ours.
    """

    def __init__(self, message: str, found: int, supported: int) -> None:
        super().__init__(message)
        self.found = found
        self.supported = supported


class StoreFullError(StoreError):
    """A bound was hit and the configured policy is to refuse, or a blob is too large.

    ``limit`` names the bound (e.g. ``"outbox_max_bytes"``, ``"max_delta_bytes"``).
    """

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class DiscoveryError(SyncError):
    """mDNS discovery failed (bad advertisement, name conflict, socket trouble)."""


class TxtRecordError(DiscoveryError):
    """A DNS-SD TXT record is too large, or a peer's TXT record is malformed."""
