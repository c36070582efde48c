"""The admin's tools: the zone file, admin-signed policy documents, publishing them.

``vsm-edge zone init|add|remove|list`` keep the *zone file*: the exact list
of the node keys the mesh admits, with the mesh id, the zone epoch and where
the mesh secret is. ``vsm-edge policy sign`` builds the zone filters from it
(one per mesh secret, ``models.ZonePolicy``), puts them in a policy document
and signs it with an admin key; ``policy show`` decodes and checks one;
``policy publish`` puts it on ``vsm/{mesh}/policy`` (retained).

The zone file's format and its reader are in :mod:`.zone_file`. Every problem
is an :class:`AgentError` naming the file and what is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import nacl.signing
import trio

from vsm_edge.models import FilterFormatError, ZonePolicy, derive_key
from vsm_edge.sync import (
    HybridLogicalClock,
    MeshKey,
    MqttSettings,
    MqttTransport,
    NodeKey,
    SyncError,
    TransportError,
    WireError,
    cbor_dumps,
    cbor_loads,
    derive_kid,
    load_mesh_key,
    load_node_key,
    load_public_key,
    policy_topic,
    presence_topic,
    save_mesh_key,
    sign_envelope,
    wall_clock_ms,
)

from .._errors import AgentError, PolicyError
from ..vsm.s5 import (
    MAX_POLICY_BYTES,
    MAX_ZONE_BYTES,
    CommandGrant,
    Policy,
    sign_policy,
    verify_policy,
)
from .zone_file import (
    DEFAULT_FP_RATE,
    DEFAULT_SECRET,
    DEFAULT_ZONE_FILE,
    HEX_DIGITS,
    Member,
    ZoneFile,
    is_id,
    load_zone_file,
    save_zone_file,
    write_private,
)

__all__ = [
    "Member",
    "ZoneFile",
    "add_admin_commands",
    "load_zone_file",
    "publish_policy",
    "save_zone_file",
    "sign_zone_policy",
]


def _member_from(key: str, name: str | None) -> Member:
    """A member from a .pub file, 64 hex digits (public key) or 32 hex digits (kid)."""
    text = key.strip().lower()
    path = Path(key)
    public_key: bytes | None = None
    kid: bytes
    if len(text) == 64 and set(text) <= HEX_DIGITS:
        public_key = bytes.fromhex(text)
    elif len(text) == 32 and set(text) <= HEX_DIGITS:
        kid = bytes.fromhex(text)
    elif path.is_file():
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
        kid = derive_kid(public_key)
    if name is None:
        name = path.stem if path.is_file() else kid.hex()[:12]
    if not is_id(name):
        raise AgentError(f"--name {name!r}: must be 1-64 characters of A-Z a-z 0-9 _ -")
    return Member(name, kid, public_key)


# -- policy documents -----------------------------------------------------------------


def _load_admin_key(path: str) -> Any:

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
    grants: Sequence[CommandGrant] = (),
) -> bytes:
    """An admin-signed policy document carrying ``zone``'s filters (or none).

    One filter per mesh secret in ``secrets`` (two while a secret rotates).
    Raises AgentError for a bad argument (the message says which).
    """

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
        grants=tuple(grants),
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
        "cmd": [
            {"kid": g.kid.hex(), "nodes": list(g.nodes), "commands": list(g.commands)}
            for g in policy.grants
        ],
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
        "--grant",
        action="append",
        default=[],
        metavar="KEY=NODES:COMMANDS",
        help="let the node key KEY (.pub file, public key or kid) send remote commands to "
        "the nodes matching NODES (comma-separated globs) for the unit.command matching "
        "COMMANDS (comma-separated globs), e.g. n2.pub=n1,n3:valve.*",
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

    path = Path(args.zone_file)
    if path.exists():
        raise AgentError(f"zone file {path} exists (refusing to overwrite it)")
    if not is_id(args.mesh):
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


def _parse_grants(items: Sequence[str]) -> list[CommandGrant]:
    grants: list[CommandGrant] = []
    for item in items:
        key, sep, rest = item.rpartition("=")
        nodes, sep2, commands = rest.partition(":")
        node_globs = [g for g in nodes.split(",") if g]
        command_globs = [g for g in commands.split(",") if g]
        if not (sep and sep2 and key and node_globs and command_globs):
            raise AgentError(
                f"--grant {item!r}: expected KEY=NODE_GLOBS:COMMAND_GLOBS, "
                "e.g. n2.pub=n1,n3:valve.*"
            )
        member = _member_from(key, None)
        grants.append(CommandGrant(member.kid, tuple(node_globs), tuple(command_globs)))
    return grants


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
        grants=_parse_grants(args.grant),
    )
    out = Path(args.out)
    write_private(out, document, mode=0o644)  # signed and public: agents read it
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

    document = _read_document(args.file)
    try:
        info = describe_document(document)
    except AgentError as exc:
        raise AgentError(f"{args.file}: {exc}") from None
    admin = _load_admin_key(args.admin_key)
    mesh = args.mesh or info["mesh"]
    if mesh == "*" or not is_id(mesh):
        raise AgentError(f"the document is for mesh {info['mesh']!r}: give --mesh ID")
    if info["mesh"] not in ("*", mesh):
        raise AgentError(f"the document is for mesh {info['mesh']!r}, not {mesh!r}")
    mesh_key = _load_secret(Path(args.mesh_key), "mesh key") if args.mesh_key else None
    node = args.node or f"admin-{admin.kid.hex()[:8]}"
    if not is_id(node):
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
