"""The exception tree of vsm_edge.sync.

Every failure to decode or verify bytes that came from outside raises a
:class:`WireError` subtype, never a cbor2, nacl or other third-party error::

    SyncError
    ├── WireError                  bytes from the wire (or disk) rejected
    │   ├── MalformedError         not well-formed CBOR / not the structure expected
    │   ├── LimitExceededError     larger, deeper or with more items than allowed
    │   ├── UnsupportedVersionError  an envelope of a protocol version we do not speak
    │   ├── SignatureError         the signature does not verify under the given key
    │   └── DecryptError           the encrypted payload cannot be opened
    ├── KeyFileError               a key file is malformed or readable by others
    ├── StoreError                 the SQLite store failed (never a sqlite3 error)
    │   ├── StoreCorruptError      not a vsm-edge store, or damaged
    │   ├── StoreVersionError      written by a newer schema
    │   ├── StoreFullError         a bound was hit and the policy is to refuse
    │   └── StoreFaultError        writes are refused while the store is faulted
    ├── DiscoveryError             mDNS discovery failed (never a zeroconf error)
    │   └── TxtRecordError         a TXT record too large or malformed
    └── TransportError             the broker connection failed (see _transport)

Arguments that break a documented precondition of an encoder (a caller's bug,
not bad input) raise ``ValueError`` or ``TypeError`` instead.
"""

from __future__ import annotations

__all__ = [
    "DecryptError",
    "DiscoveryError",
    "KeyFileError",
    "LimitExceededError",
    "MalformedError",
    "SignatureError",
    "StoreCorruptError",
    "StoreError",
    "StoreFaultError",
    "StoreFullError",
    "StoreVersionError",
    "SyncError",
    "TxtRecordError",
    "UnsupportedVersionError",
    "WireError",
]


class SyncError(Exception):
    """Base of every exception raised on purpose by vsm_edge.sync."""


class WireError(SyncError):
    """Bytes from the wire (or from disk) could not be decoded or verified."""


class MalformedError(WireError):
    """The bytes are not well-formed CBOR, or not the structure expected."""


class LimitExceededError(WireError):
    """The input is larger, deeper or has more items than the configured limits.

    ``limit`` names the limit that was crossed (``"size"``, ``"depth"`` or
    ``"items"``; empty when raised by other code) and ``maximum`` its value.
    """

    def __init__(self, message: str, *, limit: str = "", maximum: int = 0) -> None:
        super().__init__(message)
        self.limit = limit
        self.maximum = maximum


class UnsupportedVersionError(WireError):
    """An envelope declares a protocol version this code does not implement.

    ``version`` is the version found in the envelope's protected header.
    """

    def __init__(self, version: int) -> None:
        super().__init__(f"unsupported protocol version {version}")
        self.version = version


class SignatureError(WireError):
    """The envelope's signature is invalid, or its kid does not match the key."""


class DecryptError(WireError):
    """The encrypted payload could not be opened (wrong or missing mesh key, or forged)."""


class KeyFileError(SyncError):
    """A key file is malformed, or a private key file is readable by group or others."""


class StoreError(SyncError):
    """The node's SQLite store failed; no sqlite3 exception leaks past it.

    A mutation that raised was not committed: nothing it wrote is visible.
    ``cause`` names the kind of failure where it is known: ``"disk-full"``,
    ``"io-error"``, ``"read-only"``, ``"busy"``, ``"corrupt"``, ``"closed"``,
    else the lower-cased SQLite error name (empty when not from SQLite).
    """

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause


class StoreCorruptError(StoreError):
    """The database file is not a vsm-edge store or is damaged (``path`` says which)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message, cause="corrupt")
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
    This is one of our bounds refusing one call, not a failing disk: the disk
    filling up raises a plain :class:`StoreError` with ``cause == "disk-full"``.
    """

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message, cause="bound")
        self.limit = limit


class StoreFaultError(StoreError):
    """A local write was refused because the store is faulted (a write failed).

    Raised before anything is changed, until the store accepts writes again
    (the replicator retries with backoff). ``cause`` is the fault's cause
    (e.g. ``"disk-full"``), ``since`` the wall-clock time (s) it began.
    """

    def __init__(self, message: str, *, cause: str, since: float) -> None:
        super().__init__(message, cause=cause)
        self.since = since


class DiscoveryError(SyncError):
    """mDNS discovery failed (bad advertisement, name conflict, socket trouble)."""


class TxtRecordError(DiscoveryError):
    """A DNS-SD TXT record is too large, or a peer's TXT record is malformed."""
