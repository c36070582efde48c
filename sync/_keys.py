"""Node signing keys, mesh encryption keys, key ids and key files.

A node signs with an Ed25519 key (PyNaCl/libsodium). Its *key id* (``kid``,
COSE header label 4) is derived from the public key alone, so anyone holding
the public key can compute it and no registry is needed::

    kid = SHA-256(raw 32-byte Ed25519 public key)[:16]

Sixteen bytes (128 bits) make a collision between two keys (2**64 work by the
birthday bound) and a second key matching a given kid (2**128) out of reach;
the kid only *selects* a key, the signature is still verified under it.

A mesh shares one 32-byte ChaCha20/Poly1305 key for the optional payload
encryption. Its id (header label 4 of the COSE_Encrypt0) is a keyed hash, so
it names the key without revealing anything about it::

    mesh kid = HMAC-SHA-256(mesh key, "vsm-edge mesh key id v1")[:8]

Key files are one line of lowercase hex (the 32-byte Ed25519 seed, the 32-byte
public key, or the 32-byte mesh key) and a newline. Private files are written
with mode 0600 (atomically: a temporary file in the same directory, fsynced,
then renamed), and refused on reading when group or others may read them.
Randomness is an argument: :meth:`NodeKey.generate` and
:meth:`MeshKey.generate` take the byte source (``os.urandom`` by default).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nacl.bindings

from ._errors import KeyFileError

__all__ = [
    "KID_SIZE",
    "MESH_KID_SIZE",
    "MeshKey",
    "NodeKey",
    "derive_kid",
    "load_mesh_key",
    "load_node_key",
    "load_public_key",
    "save_mesh_key",
    "save_node_key",
    "save_public_key",
]

KID_SIZE = 16
"""Bytes of a node key id: the first 16 bytes of SHA-256 of the public key."""
MESH_KID_SIZE = 8
"""Bytes of a mesh key id."""
_KEY_SIZE = 32
_MAX_KEY_FILE = 128  # 64 hex digits and a little whitespace
_MESH_KID_LABEL = b"vsm-edge mesh key id v1"


def derive_kid(public_key: bytes) -> bytes:
    """The node key id of a raw 32-byte Ed25519 public key (``SHA-256(pk)[:16]``).

    Raises ``ValueError`` when ``public_key`` is not 32 bytes.
    """
    if len(public_key) != _KEY_SIZE:
        raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(public_key)}")
    return hashlib.sha256(public_key).digest()[:KID_SIZE]


@dataclass(frozen=True, slots=True)
class NodeKey:
    """A node's Ed25519 signing key, from its 32-byte seed.

    ``public_key`` (32 bytes) and ``kid`` are derived. The seed never appears
    in ``repr``. Raises ``ValueError`` when the seed is not 32 bytes.
    """

    seed: bytes = field(repr=False)
    public_key: bytes = field(init=False)
    kid: bytes = field(init=False)
    # libsodium's 64-byte secret key (seed || public key), kept for signing.
    secret_key: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if type(self.seed) is not bytes or len(self.seed) != _KEY_SIZE:
            raise ValueError("an Ed25519 seed is 32 bytes")
        public, secret = nacl.bindings.crypto_sign_seed_keypair(self.seed)
        object.__setattr__(self, "public_key", public)
        object.__setattr__(self, "kid", derive_kid(public))
        object.__setattr__(self, "secret_key", secret)

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = os.urandom) -> NodeKey:
        """A new key from 32 bytes of ``randbytes`` (the OS CSPRNG by default)."""
        return cls(randbytes(_KEY_SIZE))


@dataclass(frozen=True, slots=True)
class MeshKey:
    """A mesh's 32-byte ChaCha20/Poly1305 key and its derived 8-byte ``kid``.

    The key never appears in ``repr``. Raises ``ValueError`` when the key is
    not 32 bytes.
    """

    key: bytes = field(repr=False)
    kid: bytes = field(init=False)

    def __post_init__(self) -> None:
        if type(self.key) is not bytes or len(self.key) != _KEY_SIZE:
            raise ValueError("a mesh key is 32 bytes")
        mac = hmac.new(self.key, _MESH_KID_LABEL, hashlib.sha256).digest()
        object.__setattr__(self, "kid", mac[:MESH_KID_SIZE])

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = os.urandom) -> MeshKey:
        """A new mesh key from 32 bytes of ``randbytes`` (the OS CSPRNG by default)."""
        return cls(randbytes(_KEY_SIZE))


# ---------------------------------------------------------------- key files


def _write(path: Path, data: bytes, *, private: bool, overwrite: bool) -> None:
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (refusing to overwrite a key)")
    line = data.hex().encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: Path, *, private: bool) -> bytes:
    with path.open("rb") as f:
        if private:
            mode = os.fstat(f.fileno()).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise KeyFileError(
                    f"{path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
                    "chmod 600 it"
                )
        raw = f.read(_MAX_KEY_FILE + 1)
    text = raw.strip()
    if len(raw) > _MAX_KEY_FILE or len(text) != 2 * _KEY_SIZE:
        raise KeyFileError(f"{path}: expected 64 hex digits and a newline")
    try:
        return bytes.fromhex(text.decode("ascii"))
    except ValueError:  # also UnicodeDecodeError
        raise KeyFileError(f"{path}: expected 64 hex digits and a newline") from None


def save_node_key(key: NodeKey, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write the node key's seed to ``path`` (mode 0600, atomically).

    Raises ``FileExistsError`` when ``path`` exists and ``overwrite`` is false,
    ``OSError`` when it cannot be written.
    """
    _write(Path(path), key.seed, private=True, overwrite=overwrite)


def load_node_key(path: str | os.PathLike[str]) -> NodeKey:
    """Read a node key written by :func:`save_node_key`.

    Raises :class:`KeyFileError` when the file is malformed or accessible by
    group or others, ``OSError`` when it cannot be read.
    """
    return NodeKey(_read(Path(path), private=True))


def save_public_key(
    public_key: bytes, path: str | os.PathLike[str], *, overwrite: bool = False
) -> None:
    """Write a raw 32-byte public key to ``path`` (mode 0644, atomically)."""
    if len(public_key) != _KEY_SIZE:
        raise ValueError("an Ed25519 public key is 32 bytes")
    _write(Path(path), public_key, private=False, overwrite=overwrite)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """Read a public key written by :func:`save_public_key`.

    Raises :class:`KeyFileError` when the file is malformed, ``OSError`` when
    it cannot be read.
    """
    return _read(Path(path), private=False)


def save_mesh_key(key: MeshKey, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write a mesh key to ``path`` (mode 0600, atomically); see :func:`save_node_key`."""
    _write(Path(path), key.key, private=True, overwrite=overwrite)


def load_mesh_key(path: str | os.PathLike[str]) -> MeshKey:
    """Read a mesh key written by :func:`save_mesh_key`; see :func:`load_node_key`."""
    return MeshKey(_read(Path(path), private=True))
