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
    └── KeyFileError               a key file is malformed or readable by others

Arguments that break a documented precondition of an encoder (a caller's bug,
not bad input) raise ``ValueError`` or ``TypeError`` instead.
"""

from __future__ import annotations

__all__ = [
    "DecryptError",
    "KeyFileError",
    "LimitExceededError",
    "MalformedError",
    "SignatureError",
    "SyncError",
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
