"""Node keys, key ids, mesh keys and key files (real files, real permissions)."""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import nacl.bindings
import pytest

from vsm_edge.sync import (
    KID_SIZE,
    KeyFileError,
    MeshKey,
    NodeKey,
    derive_kid,
    load_mesh_key,
    load_node_key,
    load_public_key,
    save_mesh_key,
    save_node_key,
    save_public_key,
)

# RFC 8032 §7.1, TEST 1.
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
    "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_node_key_from_rfc8032_seed() -> None:
    key = NodeKey(RFC8032_SEED)
    assert key.public_key == RFC8032_PUBLIC
    assert nacl.bindings.crypto_sign(b"", key.secret_key)[:64] == RFC8032_SIGNATURE


def test_kid_is_the_first_16_bytes_of_sha256_of_the_public_key() -> None:
    key = NodeKey(RFC8032_SEED)
    assert KID_SIZE == 16
    assert key.kid == hashlib.sha256(RFC8032_PUBLIC).digest()[:16]
    assert derive_kid(RFC8032_PUBLIC).hex() == "21fe31dfa154a261626bf854046fd227"
    with pytest.raises(ValueError, match="32 bytes"):
        derive_kid(RFC8032_PUBLIC[:31])


def test_generate_uses_the_given_randomness() -> None:
    calls: list[int] = []

    def randbytes(n: int) -> bytes:
        calls.append(n)
        return RFC8032_SEED

    assert NodeKey.generate(randbytes).public_key == RFC8032_PUBLIC
    assert calls == [32]
    assert NodeKey.generate().seed != NodeKey.generate().seed  # the OS CSPRNG by default


def test_keys_do_not_show_secrets() -> None:
    node = NodeKey(RFC8032_SEED)
    mesh = MeshKey(bytes(range(32)))
    assert RFC8032_SEED.hex() not in repr(node)
    assert repr(RFC8032_SEED) not in repr(node)
    assert repr(bytes(range(32))) not in repr(mesh)


def test_key_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        NodeKey(b"\x00" * 31)
    with pytest.raises(ValueError, match="32 bytes"):
        MeshKey(b"\x00" * 33)


def test_mesh_kid_is_a_keyed_hash() -> None:
    mesh = MeshKey(bytes(range(32)))
    expected = hmac.new(bytes(range(32)), b"vsm-edge mesh key id v1", hashlib.sha256).digest()
    assert mesh.kid == expected[:8]
    assert MeshKey(bytes(32)).kid != mesh.kid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_node_key_file_round_trip(tmp_path: Path) -> None:
    key = NodeKey(RFC8032_SEED)
    save_node_key(key, tmp_path / "node.key")
    save_public_key(key.public_key, tmp_path / "node.pub")
    assert mode(tmp_path / "node.key") == 0o600
    assert mode(tmp_path / "node.pub") == 0o644
    assert (tmp_path / "node.key").read_text() == RFC8032_SEED.hex() + "\n"
    assert load_node_key(tmp_path / "node.key") == key
    assert load_public_key(tmp_path / "node.pub") == key.public_key
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key", "node.pub"]  # no temp left


def test_mesh_key_file_round_trip(tmp_path: Path) -> None:
    mesh = MeshKey(bytes(range(32)))
    save_mesh_key(mesh, tmp_path / "mesh.key")
    assert mode(tmp_path / "mesh.key") == 0o600
    assert load_mesh_key(tmp_path / "mesh.key") == mesh


def test_key_files_are_not_overwritten_by_default(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_node_key(NodeKey(RFC8032_SEED), path)
    with pytest.raises(FileExistsError):
        save_node_key(NodeKey(bytes(32)), path)
    assert load_node_key(path).seed == RFC8032_SEED
    save_node_key(NodeKey(bytes(32)), path, overwrite=True)
    assert load_node_key(path).seed == bytes(32)
    assert mode(path) == 0o600


@pytest.mark.parametrize("bits", [0o640, 0o604, 0o660, 0o610])
def test_private_key_readable_by_others_is_refused(tmp_path: Path, bits: int) -> None:
    path = tmp_path / "node.key"
    save_node_key(NodeKey(RFC8032_SEED), path)
    os.chmod(path, bits)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_node_key(path)
    with pytest.raises(KeyFileError):
        load_mesh_key(path)
    assert load_public_key(path) == RFC8032_SEED  # public files may be world-readable


@pytest.mark.parametrize(
    "content",
    [b"", b"abc\n", b"zz" * 32 + b"\n", b"00" * 31 + b"\n", b"00" * 33 + b"\n",
     b"\xff" * 64 + b"\n", b"00" * 32 + b"\n" + b" " * 100],
)  # fmt: skip
def test_malformed_key_files_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError):
        load_node_key(path)


def test_missing_key_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_node_key(tmp_path / "absent.key")
