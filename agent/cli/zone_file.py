"""The zone file: the exact list of node keys a mesh admits (``vsm-edge zone ...``).

JSON, written 0600 and atomically::

    {"format": "vsm-edge-zone", "version": 1, "mesh": "plant", "epoch": 3,
     "policy_version": 1718000000, "secrets": ["mesh.secret"],
     "members": [{"name": "n1", "kid": "<32 hex>", "public_key": "<64 hex>"}]}

``epoch`` grows on every removal (a Bloom filter cannot forget, so a removal
is a rebuild that must win over older filters); additions keep it.
``policy_version`` is the last version signed from this file, so the next one
is newer. ``secrets`` are paths relative to the zone file. Every problem is
an :class:`AgentError` naming the file and what is wrong.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from vsm_edge.sync import derive_kid

from .._errors import AgentError

__all__ = ["Member", "ZoneFile", "load_zone_file", "save_zone_file"]

FORMAT: Final = "vsm-edge-zone"
FORMAT_VERSION: Final = 1
MAX_ZONE_FILE: Final = 4 << 20
MAX_MEMBERS: Final = 20_000
DEFAULT_ZONE_FILE: Final = "zone.json"
DEFAULT_SECRET: Final = "mesh.secret"  # noqa: S105 - a file name
DEFAULT_FP_RATE: Final = 1e-9
HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class Member:
    """One admitted node key: a name for people, the kid for the filter."""

    name: str
    kid: bytes
    public_key: bytes | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kid": self.kid.hex(),
            "public_key": self.public_key.hex() if self.public_key is not None else None,
        }


@dataclass(frozen=True, slots=True)
class ZoneFile:
    """The admin's zone: mesh, epoch, last policy version, secret paths, members."""

    mesh: str
    epoch: int = 1
    policy_version: int = 0
    secrets: tuple[str, ...] = (DEFAULT_SECRET,)
    members: tuple[Member, ...] = ()

    def find(self, name_or_kid: str) -> Member | None:
        text = name_or_kid.strip().lower()
        for m in self.members:
            if m.name == name_or_kid or m.kid.hex() == text:
                return m
        return None

    def add(self, member: Member) -> ZoneFile:
        """Add a member (same epoch). Raises AgentError for a duplicate name or kid."""
        for m in self.members:
            if m.kid == member.kid:
                raise AgentError(f"kid {member.kid.hex()} is already in the zone as {m.name!r}")
            if m.name == member.name:
                raise AgentError(f"a member is already named {member.name!r} (choose --name)")
        if len(self.members) >= MAX_MEMBERS:
            raise AgentError(f"the zone already has {MAX_MEMBERS} members")
        return replace(self, members=(*self.members, member))

    def remove(self, name_or_kid: str) -> tuple[ZoneFile, Member]:
        """Remove a member; the epoch grows. Raises AgentError when there is no such member."""
        member = self.find(name_or_kid)
        if member is None:
            raise AgentError(f"no member named {name_or_kid!r} or with that kid (see zone list)")
        rest = tuple(m for m in self.members if m is not member)
        return replace(self, members=rest, epoch=self.epoch + 1), member

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "mesh": self.mesh,
            "epoch": self.epoch,
            "policy_version": self.policy_version,
            "secrets": list(self.secrets),
            "members": [m.as_json() for m in self.members],
        }


# -- the zone file -------------------------------------------------------------------


def hex_field(text: object, size: int, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * size or not set(text) <= HEX_DIGITS:
        raise ValueError(f"{what} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(text)


def is_id(text: object) -> bool:
    return (
        isinstance(text, str)
        and 0 < len(text) <= 64
        and all(c.isascii() and (c.isalnum() or c in "_-") for c in text)
    )


def _parse_zone(data: object) -> ZoneFile:
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")  # noqa: TRY004 - one error type for the file
    if data.get("format") != FORMAT:
        raise ValueError(f'"format" must be {FORMAT!r}')
    if data.get("version") != FORMAT_VERSION:
        raise ValueError(f"unsupported version {data.get('version')!r} (expected 1)")
    known = {"format", "version", "mesh", "epoch", "policy_version", "secrets", "members"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}")
    mesh = data.get("mesh")
    if not isinstance(mesh, str) or not is_id(mesh):
        raise ValueError('"mesh" must be 1-64 characters of A-Z a-z 0-9 _ -')
    numbers: list[int] = []
    for name in ("epoch", "policy_version"):
        value = data.get(name)
        if type(value) is not int or not 0 <= value < 1 << 63:
            raise ValueError(f'"{name}" must be a non-negative integer')
        numbers.append(value)
    secrets = data.get("secrets", [])
    if not (
        isinstance(secrets, list)
        and len(secrets) <= 4
        and all(isinstance(s, str) and s for s in secrets)
    ):
        raise ValueError('"secrets" must be a list of at most 4 paths')
    raw_members = data.get("members", [])
    if not isinstance(raw_members, list) or len(raw_members) > MAX_MEMBERS:
        raise ValueError(f'"members" must be a list of at most {MAX_MEMBERS}')
    zone = ZoneFile(mesh, numbers[0], numbers[1], tuple(secrets))
    for i, item in enumerate(raw_members):
        if not isinstance(item, dict) or set(item) - {"name", "kid", "public_key"}:
            raise ValueError(f"members[{i}]: expected name, kid and public_key")
        if not is_id(item.get("name")):
            raise ValueError(f"members[{i}].name must be 1-64 characters of A-Z a-z 0-9 _ -")
        try:
            kid = hex_field(item.get("kid"), 16, "kid")
            pk = item.get("public_key")
            public_key = None if pk is None else hex_field(pk, 32, "public_key")
        except ValueError as exc:
            raise ValueError(f"members[{i}]: {exc}") from None
        if public_key is not None and derive_kid(public_key) != kid:
            raise ValueError(f"members[{i}]: kid is not the public key's id")
        try:
            zone = zone.add(Member(item["name"], kid, public_key))
        except AgentError as exc:
            raise ValueError(f"members[{i}]: {exc}") from None
    return zone


def load_zone_file(path: str | os.PathLike[str]) -> ZoneFile:
    """Read and validate a zone file. Raises AgentError naming the file and the problem."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_ZONE_FILE + 1)
    except FileNotFoundError:
        raise AgentError(
            f"zone file {path} does not exist (create it with `vsm-edge zone init --mesh ID`)"
        ) from None
    except OSError as exc:
        raise AgentError(f"zone file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_ZONE_FILE:
        raise AgentError(f"zone file {path} is larger than {MAX_ZONE_FILE} bytes")
    try:
        return _parse_zone(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AgentError(f"zone file {path} is not valid JSON: {exc}") from None
    except ValueError as exc:
        raise AgentError(f"zone file {path}: {exc}") from None


def save_zone_file(path: str | os.PathLike[str], zone: ZoneFile) -> None:
    """Write the zone file atomically, mode 0600."""
    text = json.dumps(zone.to_json(), indent=2) + "\n"
    write_private(Path(path), text.encode())


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    except OSError as exc:
        raise AgentError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
