"""The admin's tools: the zone file, admin-signed policy documents, publishing them.

``vsm-edge zone init|add|remove|list`` keep the *zone file*: the exact list
of the node keys the mesh admits, with the mesh id, the zone epoch and where
the mesh secret is. ``vsm-edge policy sign`` builds the zone filters from it
(one per mesh secret, ``models.ZonePolicy``), puts them in a policy document
and signs it with an admin key; ``policy show`` decodes and checks one;
``policy publish`` puts it on ``vsm/{mesh}/policy`` (retained).

The zone file is JSON (written 0600, atomically)::

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

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from .._errors import AgentError, PolicyError

__all__ = [
    "Member",
    "ZoneFile",
    "add_admin_commands",
    "load_zone_file",
    "publish_policy",
    "save_zone_file",
    "sign_zone_policy",
]

FORMAT: Final = "vsm-edge-zone"
FORMAT_VERSION: Final = 1
MAX_ZONE_FILE: Final = 4 << 20
MAX_MEMBERS: Final = 20_000
DEFAULT_ZONE_FILE: Final = "zone.json"
DEFAULT_SECRET: Final = "mesh.secret"  # noqa: S105 - a file name
DEFAULT_FP_RATE: Final = 1e-9
_HEX = frozenset("0123456789abcdef")


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


def _hex(text: object, size: int, what: str) -> bytes:
    if not isinstance(text, str) or len(text) != 2 * size or not set(text) <= _HEX:
        raise ValueError(f"{what} must be {2 * size} lowercase hex digits")
    return bytes.fromhex(text)


def _is_id(text: object) -> bool:
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
    if not isinstance(mesh, str) or not _is_id(mesh):
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
        if not _is_id(item.get("name")):
            raise ValueError(f"members[{i}].name must be 1-64 characters of A-Z a-z 0-9 _ -")
        try:
            kid = _hex(item.get("kid"), 16, "kid")
            pk = item.get("public_key")
            public_key = None if pk is None else _hex(pk, 32, "public_key")
        except ValueError as exc:
            raise ValueError(f"members[{i}]: {exc}") from None
        if public_key is not None and _derive_kid(public_key) != kid:
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
    _write_private(Path(path), text.encode())


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
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


def _derive_kid(public_key: bytes) -> bytes:
    from vsm_edge.sync import derive_kid

    return derive_kid(public_key)


def _member_from(key: str, name: str | None) -> Member:
    """A member from a .pub file, 64 hex digits (public key) or 32 hex digits (kid)."""
    text = key.strip().lower()
    path = Path(key)
    public_key: bytes | None = None
    kid: bytes
    if len(text) == 64 and set(text) <= _HEX:
        public_key = bytes.fromhex(text)
    elif len(text) == 32 and set(text) <= _HEX:
        kid = bytes.fromhex(text)
    elif path.is_file():
        from vsm_edge.sync import SyncError, load_public_key

        try:
            public_key = load_public_key(path)
        except (SyncError, OSError) as exc:
            raise AgentError(f"{path}: not a public key file ({exc})") from None
    else:
        raise AgentError(
            f"{key!r} is neither a public key file, 64 hex digits (a public key) "
            "nor 32 hex digits (a kid)"
        )
    if public_key is not None:
        kid = _derive_kid(public_key)
    if name is None:
        name = path.stem if path.is_file() else kid.hex()[:12]
    if not _is_id(name):
        raise AgentError(f"--name {name!r}: must be 1-64 characters of A-Z a-z 0-9 _ -")
    return Member(name, kid, public_key)


# -- policy documents -----------------------------------------------------------------


def _load_admin_key(path: str) -> Any:
    from vsm_edge.sync import NodeKey, SyncError, load_node_key

    try:
        key: NodeKey = load_node_key(path)
    except FileNotFoundError:
        raise AgentError(
            f"admin key {path}: no such file (make one with `vsm-edge keygen --out {path}`)"
        ) from None
    except (SyncError, OSError) as exc:
        raise AgentError(f"admin key {path}: {exc}") from None
    return key


def _load_secret(path: Path, what: str = "mesh secret") -> bytes:
    from vsm_edge.sync import SyncError, load_mesh_key

    try:
        return load_mesh_key(path).key
    except FileNotFoundError:
        raise AgentError(f"{what} {path}: no such file") from None
    except (SyncError, OSError) as exc:
        raise AgentError(f"{what} {path}: {exc}") from None


def sign_zone_policy(
    zone: ZoneFile | None,
    admin_seed: bytes,
    *,
    mesh: str,
    version: int,
    secrets: Sequence[bytes] = (),
    allow: Sequence[str] = ("*",),
    deny: Sequence[str] = (),
    safe: Sequence[str] = (),
    limits: dict[str, tuple[float, float]] | None = None,
    fp_rate: float = DEFAULT_FP_RATE,
) -> bytes:
    """An admin-signed policy document carrying ``zone``'s filters (or none).

    One filter per mesh secret in ``secrets`` (two while a secret rotates).
    Raises AgentError for a bad argument (the message says which).
    """
    import nacl.signing

    from vsm_edge.models import ZonePolicy, derive_key

    from ..vsm.s5 import MAX_POLICY_BYTES, MAX_ZONE_BYTES, Policy, sign_policy

    blob: bytes | None = None
    if zone is not None:
        if not secrets:
            raise AgentError("a zone needs at least one mesh secret")
        if not 0.0 < fp_rate < 0.5:
            raise AgentError(f"--fp-rate must be in (0, 0.5), got {fp_rate}")
        try:
            policy_zone = ZonePolicy.build(
                [m.kid for m in zone.members],
                [derive_key(s, "zone") for s in secrets],
                epoch=zone.epoch,
                fp_rate=fp_rate,
            )
        except ValueError as exc:
            raise AgentError(f"cannot build the zone filters: {exc}") from None
        blob = policy_zone.to_bytes()
        if len(blob) > MAX_ZONE_BYTES:
            raise AgentError(
                f"the zone filters take {len(blob)} bytes, more than {MAX_ZONE_BYTES}: "
                "raise --fp-rate or split the mesh"
            )
    policy = Policy(
        version=version,
        mesh=mesh,
        allowed_commands=tuple(allow),
        denied_commands=tuple(deny),
        safe_mode_commands=tuple(safe),
        limits=dict(limits or {}),
        zone=blob,
    )
    try:
        Policy.from_cbor(policy.to_cbor())  # the receivers' checks, before signing
    except PolicyError as exc:
        raise AgentError(str(exc)) from None
    document = sign_policy(policy, nacl.signing.SigningKey(admin_seed))
    if len(document) > MAX_POLICY_BYTES:
        raise AgentError(f"the document is {len(document)} bytes, more than {MAX_POLICY_BYTES}")
    return document


def describe_document(document: bytes, secrets: Sequence[bytes] = ()) -> dict[str, Any]:
    """What a signed document says (its own signature checked); the zone when a secret reads it.

    Raises AgentError when the document is malformed or its signature does not verify.
    """
    from vsm_edge.models import FilterFormatError, ZonePolicy, derive_key
    from vsm_edge.sync import WireError, cbor_loads

    from ..vsm.s5 import MAX_POLICY_BYTES, verify_policy

    if len(document) > MAX_POLICY_BYTES:
        raise AgentError(f"{len(document)} bytes, more than {MAX_POLICY_BYTES}")
    try:
        decoded = cbor_loads(document, max_size=MAX_POLICY_BYTES)
    except WireError:
        raise AgentError("not a signed policy document") from None
    signer = decoded.get("kid") if isinstance(decoded, dict) else None
    if not isinstance(signer, bytes):
        raise AgentError("not a signed policy document")
    try:
        policy = verify_policy(document, [signer])
    except PolicyError as exc:
        raise AgentError(str(exc)) from None
    out: dict[str, Any] = {
        "version": policy.version,
        "mesh": policy.mesh,
        "signer": signer.hex(),
        "allow": list(policy.allowed_commands),
        "deny": list(policy.denied_commands),
        "safe": list(policy.safe_mode_commands),
        "limits": {k: list(v) for k, v in policy.limits.items()},
        "bytes": len(document),
        "zone": None,
    }
    if policy.zone is not None:
        zone: dict[str, Any] = {"bytes": len(policy.zone)}
        if secrets:
            try:
                decoded = ZonePolicy.from_bytes(
                    policy.zone, [derive_key(s, "zone") for s in secrets]
                )
            except FilterFormatError as exc:
                zone["error"] = str(exc)
            else:
                zone["epoch"] = decoded.epoch
                zone["filters"] = [
                    {"bits": f.num_bits, "hashes": f.num_hashes, "key_id": f.key_id.hex()}
                    for f in decoded.filters
                ]
        out["zone"] = zone
    return out


async def publish_policy(
    document: bytes,
    *,
    broker: str,
    admin_seed: bytes,
    mesh: str,
    node: str,
    mesh_key: bytes | None = None,
    protocol: str = "auto",
    progress: list[str] | None = None,
) -> None:
    """Publish ``document`` as the retained ``vsm/{mesh}/policy`` message.

    The envelope is signed with the admin key, so the agents' gateways admit
    it whatever the zone. First a retained "offline" presence for ``node``
    carries that key (receivers verify every envelope with a presence key),
    then the policy; both QoS 1, returned once the broker acknowledged them.
    Retries until the broker is reachable (the caller bounds it with a
    timeout); ``progress`` gets "connected" appended once connected. Raises
    AgentError for a bad broker URL or a broker refusing the messages.
    """
    import trio

    from vsm_edge.sync import (
        HybridLogicalClock,
        MeshKey,
        MqttSettings,
        MqttTransport,
        NodeKey,
        TransportError,
        cbor_dumps,
        policy_topic,
        presence_topic,
        sign_envelope,
        wall_clock_ms,
    )

    key = NodeKey(admin_seed)
    clock = HybridLogicalClock(node, wall_clock_ms)
    presence = {
        "node": node,
        "pk": key.public_key,
        "inc": clock.now().packed,
        "state": "offline",  # an admin is not a node of the mesh: never counted online
        "zone": "admin",
        "mesh": mesh,
        "broker": "",
    }
    presence_env = sign_envelope(
        cbor_dumps(presence),
        key,
        hlc=clock.now(),
        kind="presence",
        nonce=os.urandom(16),
    )
    mk = MeshKey(mesh_key) if mesh_key is not None else None
    policy_env = sign_envelope(
        cbor_dumps(document),
        key,
        hlc=clock.now(),
        kind="policy",
        nonce=os.urandom(16),
        mesh_key=mk,
        iv=os.urandom(12) if mk is not None else None,
        max_size=256 * 1024,
    )
    try:
        settings = MqttSettings.from_url(
            broker,
            client_id=f"{node}-publish",
            protocol=protocol,
            session_expiry=0,
        )
    except ValueError as exc:
        raise AgentError(f"--broker: {exc}") from None
    transport = MqttTransport(settings)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport.run)
            await transport.wait_connected()
            if progress is not None:
                progress.append("connected")
            await transport.publish(presence_topic(mesh, node), presence_env, qos=1, retain=True)
            await transport.publish(policy_topic(mesh), policy_env, qos=1, retain=True)
            nursery.cancel_scope.cancel()
    except TransportError as exc:
        raise AgentError(f"broker {broker}: {exc}") from None


# -- the command line -------------------------------------------------------------------


def add_admin_commands(sub: Any) -> None:
    """Add ``zone`` and ``policy`` to a subparsers object."""
    zone = sub.add_parser("zone", help="the admin's zone file: the node keys the mesh admits")
    zsub = zone.add_subparsers(dest="zone_command", required=True, metavar="ACTION")
    init = zsub.add_parser("init", help="a new zone file, and a mesh secret if there is none")
    init.add_argument("--mesh", required=True, help="the mesh id")
    _zone_file(init)
    init.add_argument(
        "--secret",
        default=DEFAULT_SECRET,
        help="the mesh secret keying the zone filters (relative to the zone file; "
        "created 0600 when missing; every node needs a copy)",
    )
    init.set_defaults(handler=cmd_zone_init)
    add = zsub.add_parser("add", help="admit a node key")
    add.add_argument("key", help="the node's .pub file, its public key (64 hex) or kid (32 hex)")
    add.add_argument("--name", help="a name for it (default: the file's stem or the kid)")
    _zone_file(add)
    add.set_defaults(handler=cmd_zone_add)
    remove = zsub.add_parser("remove", help="revoke a node key (the zone epoch grows)")
    remove.add_argument("member", help="its name or kid")
    _zone_file(remove)
    remove.set_defaults(handler=cmd_zone_remove)
    list_ = zsub.add_parser("list", help="the members")
    list_.add_argument("--json", action="store_true", help="print the zone file as JSON")
    _zone_file(list_)
    list_.set_defaults(handler=cmd_zone_list)

    policy = sub.add_parser("policy", help="admin-signed policy documents (with the zone)")
    psub = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    sign = psub.add_parser("sign", help="sign a policy document carrying the zone")
    sign.add_argument("--admin-key", required=True, help="the admin's private key file (0600)")
    _zone_file(sign)
    sign.add_argument("--no-zone", action="store_true", help="a policy without a zone")
    sign.add_argument("--mesh", help="the mesh (default: the zone file's)")
    sign.add_argument(
        "--mesh-secret",
        action="append",
        metavar="FILE",
        help="a mesh secret to build a filter under (repeat while rotating; "
        "default: the zone file's secrets)",
    )
    sign.add_argument(
        "--version", type=int, help="policy version (default: newer than the last and the clock)"
    )
    sign.add_argument("--allow", action="append", metavar="GLOB", help="allowed unit.command")
    sign.add_argument("--deny", action="append", default=[], metavar="GLOB")
    sign.add_argument("--safe", action="append", default=[], metavar="GLOB", help="in safe mode")
    sign.add_argument(
        "--limit", action="append", default=[], metavar="GLOB=MIN:MAX", help="value limits"
    )
    sign.add_argument(
        "--fp-rate", type=float, default=DEFAULT_FP_RATE, help="zone false-positive rate"
    )
    sign.add_argument(
        "--out", default="policy.cbor", help="where to write it (default policy.cbor)"
    )
    sign.set_defaults(handler=cmd_policy_sign)
    show = psub.add_parser("show", help="decode a signed document and check its signature")
    show.add_argument("file")
    show.add_argument("--mesh-secret", action="append", metavar="FILE", help="to read the zone")
    show.set_defaults(handler=cmd_policy_show)
    publish = psub.add_parser("publish", help="publish a signed document (retained)")
    publish.add_argument("file")
    publish.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://...")
    publish.add_argument("--admin-key", required=True, help="signs the envelope (an admin key)")
    publish.add_argument("--mesh", help="the mesh (default: the document's)")
    publish.add_argument("--mesh-key", help="the mesh's encryption key file, if it uses one")
    publish.add_argument("--node", help="the publisher's name (default admin-<kid>)")
    publish.add_argument("--protocol", choices=("auto", "5", "3.1.1"), default="auto")
    publish.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    publish.set_defaults(handler=cmd_policy_publish)


def _zone_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--zone-file", default=DEFAULT_ZONE_FILE, help=f"default {DEFAULT_ZONE_FILE}")


def cmd_zone_init(args: argparse.Namespace) -> int:
    from vsm_edge.sync import MeshKey, save_mesh_key

    path = Path(args.zone_file)
    if path.exists():
        raise AgentError(f"zone file {path} exists (refusing to overwrite it)")
    if not _is_id(args.mesh):
        raise AgentError(f"--mesh {args.mesh!r}: must be 1-64 characters of A-Z a-z 0-9 _ -")
    secret = path.parent / args.secret
    made = False
    if secret.exists():
        _load_secret(secret)  # the secret must be usable (format, mode 0600)
    else:
        try:
            save_mesh_key(MeshKey.generate(), secret)
        except OSError as exc:
            raise AgentError(f"cannot write {secret}: {exc.strerror or exc}") from None
        made = True
    save_zone_file(path, ZoneFile(args.mesh, secrets=(args.secret,)))
    print(f"wrote {path} (mesh {args.mesh}, epoch 1, no members)")
    print(f"{'wrote' if made else 'using'} mesh secret {secret} (0600): give every node a copy")
    return 0


def cmd_zone_add(args: argparse.Namespace) -> int:
    path = Path(args.zone_file)
    zone = load_zone_file(path)
    member = _member_from(args.key, args.name)
    zone = zone.add(member)
    save_zone_file(path, zone)
    print(f"added {member.name} (kid {member.kid.hex()}); {len(zone.members)} members, "
          f"epoch {zone.epoch}")  # fmt: skip
    return 0


def cmd_zone_remove(args: argparse.Namespace) -> int:
    path = Path(args.zone_file)
    zone, member = load_zone_file(path).remove(args.member)
    save_zone_file(path, zone)
    print(
        f"removed {member.name} (kid {member.kid.hex()}); epoch is now {zone.epoch}: "
        "sign and publish a new policy"
    )
    return 0


def cmd_zone_list(args: argparse.Namespace) -> int:
    zone = load_zone_file(args.zone_file)
    if args.json:
        print(json.dumps(zone.to_json(), indent=2))
        return 0
    print(f"mesh {zone.mesh}  epoch {zone.epoch}  members {len(zone.members)}  "
          f"last policy v{zone.policy_version}")  # fmt: skip
    for m in zone.members:
        print(f"{m.name:<24} {m.kid.hex()}{'' if m.public_key else '  (kid only)'}")
    return 0


def _parse_limits(items: Sequence[str]) -> dict[str, tuple[float, float]]:
    limits: dict[str, tuple[float, float]] = {}
    for item in items:
        pattern, sep, bounds = item.partition("=")
        low, sep2, high = bounds.partition(":")
        try:
            lo, hi = float(low), float(high)
        except ValueError:
            lo = hi = math.nan
        if not (sep and sep2 and pattern and math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise AgentError(f"--limit {item!r}: expected GLOB=MIN:MAX with finite MIN <= MAX")
        limits[pattern] = (lo, hi)
    return limits


def cmd_policy_sign(args: argparse.Namespace) -> int:
    admin = _load_admin_key(args.admin_key)
    zone_path = Path(args.zone_file)
    zone: ZoneFile | None = None
    if not args.no_zone or zone_path.exists():
        zone = load_zone_file(zone_path)
    mesh = args.mesh or (zone.mesh if zone is not None else None)
    if mesh is None:
        raise AgentError("--mesh is required without a zone file")
    if zone is not None and mesh != zone.mesh:
        raise AgentError(f"--mesh {mesh!r} differs from the zone file's mesh {zone.mesh!r}")
    secrets: list[bytes] = []
    if not args.no_zone:
        assert zone is not None
        if args.mesh_secret:
            paths = [Path(p) for p in args.mesh_secret]
        else:
            paths = [zone_path.parent / p for p in zone.secrets]
        if not paths:
            raise AgentError(f"zone file {zone_path} names no mesh secret: give --mesh-secret")
        secrets = [_load_secret(p) for p in paths]
    last = zone.policy_version if zone is not None else 0
    version = args.version if args.version is not None else max(last + 1, int(time.time()))
    if version <= last:
        raise AgentError(
            f"--version {version} is not newer than the last signed version {last}: "
            "agents would refuse it"
        )
    document = sign_zone_policy(
        None if args.no_zone else zone,
        admin.seed,
        mesh=mesh,
        version=version,
        secrets=secrets,
        allow=args.allow or ["*"],
        deny=args.deny,
        safe=args.safe,
        limits=_parse_limits(args.limit),
        fp_rate=args.fp_rate,
    )
    out = Path(args.out)
    _write_private(out, document, mode=0o644)  # signed and public: agents read it
    if zone is not None:
        save_zone_file(zone_path, replace(zone, policy_version=version))
    members = "no zone" if args.no_zone else (
        f"zone epoch {zone.epoch if zone else 0}, {len(zone.members) if zone else 0} members, "
        f"{len(secrets)} filter(s)"
    )  # fmt: skip
    print(f"wrote {out}: policy v{version} for mesh {mesh}, {members}, {len(document)} bytes, "
          f"signed by {admin.public_key.hex()}")  # fmt: skip
    return 0


def _read_document(path: str) -> bytes:
    from ..vsm.s5 import MAX_POLICY_BYTES

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_POLICY_BYTES + 1)
    except OSError as exc:
        raise AgentError(f"{path}: {exc.strerror or exc}") from None
    if len(data) > MAX_POLICY_BYTES:
        raise AgentError(f"{path} is larger than {MAX_POLICY_BYTES} bytes")
    return data


def cmd_policy_show(args: argparse.Namespace) -> int:
    document = _read_document(args.file)
    secrets = [_load_secret(Path(p)) for p in args.mesh_secret or []]
    try:
        info = describe_document(document, secrets)
    except AgentError as exc:
        raise AgentError(f"{args.file}: {exc}") from None
    print(json.dumps(info, indent=2))
    return 0


def cmd_policy_publish(args: argparse.Namespace) -> int:
    import trio

    document = _read_document(args.file)
    try:
        info = describe_document(document)
    except AgentError as exc:
        raise AgentError(f"{args.file}: {exc}") from None
    admin = _load_admin_key(args.admin_key)
    mesh = args.mesh or info["mesh"]
    if mesh == "*" or not _is_id(mesh):
        raise AgentError(f"the document is for mesh {info['mesh']!r}: give --mesh ID")
    if info["mesh"] not in ("*", mesh):
        raise AgentError(f"the document is for mesh {info['mesh']!r}, not {mesh!r}")
    mesh_key = _load_secret(Path(args.mesh_key), "mesh key") if args.mesh_key else None
    node = args.node or f"admin-{admin.kid.hex()[:8]}"
    if not _is_id(node):
        raise AgentError(f"--node {node!r}: must be 1-64 characters of A-Z a-z 0-9 _ -")
    progress: list[str] = []

    async def publish() -> None:
        with trio.fail_after(args.timeout):
            await publish_policy(
                document,
                broker=args.broker,
                admin_seed=admin.seed,
                mesh=mesh,
                node=node,
                mesh_key=mesh_key,
                protocol=args.protocol,
                progress=progress,
            )

    try:
        trio.run(publish)
    except trio.TooSlowError:
        what = "acknowledge the policy" if progress else "accept a connection"
        raise AgentError(f"broker {args.broker} did not {what} within {args.timeout:g} s") from None
    print(f"published policy v{info['version']} on vsm/{mesh}/policy (retained) as {node}",
          file=sys.stderr)  # fmt: skip
    return 0
