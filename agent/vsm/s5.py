"""S5 policy: identity, the admin-signed policy document, arbitration, safe mode.

A policy document travels as deterministic CBOR (RFC 8949 §4.2.1, the
encoder of vsm_edge.sync) ``{"policy": {...}, "kid": bytes,
"sig": bytes}`` where ``sig`` is the Ed25519 signature (PyNaCl) of the
canonical CBOR of the ``policy`` map and ``kid`` the signer's public key. It is
accepted only when ``kid`` is one of the configured admin keys, the signature
verifies, the mesh matches, and its version is newer than the current one
(replays of older documents are refused). The ``policy`` map may carry a
``zone``: the serialized zone filters (``vsm_edge.models.ZonePolicy``, opaque
here; the agent's ingress guard decodes them with the mesh secret). Documents
without it, written before zones existed, decode as before. It may carry
``cmd``: the grants of remote commands (:class:`CommandGrant`: which node keys
may command which nodes' ``unit.command``; docs/protocol.md §6). Without a
grant for its key, a remote command is refused "not authorized".

Safe mode: S5 tracks the pain it hears. The *pain level* is the highest pain
intensity heard within the last ``safe_mode_after_s / 4`` seconds, or the
intensity of any unacknowledged critical alarm. Pain at or above
``safe_mode_pain`` sustained for ``safe_mode_after_s`` enters safe mode; a
level at or below ``safe_mode_exit_pain`` for ``safe_mode_exit_after_s``
leaves it. In safe mode only the policy's ``safe_mode_commands`` pass and S3
halves every refill rate.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from vsm_edge.sync import WireError, cbor_dumps, cbor_loads

from .._errors import PolicyError
from .event import Scalar
from .settings import S5Config

__all__ = [
    "CommandGrant",
    "Decision",
    "Identity",
    "Policy",
    "PolicyEngine",
    "Recommendation",
    "sign_policy",
    "verify_policy",
]

# A zone of ~15,000 kids (two filters of ~7,500 during a secret rotation) at
# the default false-positive rate and headroom fits; below the replicator's
# 256 KiB envelope limit.
MAX_POLICY_BYTES = 192 * 1024
MAX_ZONE_BYTES = 160 * 1024
MAX_PATTERNS = 256
MAX_GRANTS = 256
MAX_GRANT_PATTERNS = 32
KID_BYTES = 16
_KEYS = frozenset({"version", "mesh", "allow", "deny", "safe", "limits"})
_OPTIONAL_KEYS = frozenset({"zone", "cmd"})
_GRANT_KEYS = frozenset({"kid", "nodes", "commands"})


@dataclass(frozen=True, slots=True)
class CommandGrant:
    """The holder of the node key with id ``kid`` may command the nodes matching
    ``nodes`` (globs on node ids), their ``unit.command`` matching ``commands``."""

    kid: bytes
    nodes: tuple[str, ...]
    commands: tuple[str, ...]

    def allows(self, kid: bytes, node: str, target: str) -> bool:
        return kid == self.kid and _matches(node, self.nodes) and _matches(target, self.commands)

    def to_cbor(self) -> dict[str, Any]:
        return {"kid": self.kid, "nodes": list(self.nodes), "commands": list(self.commands)}

    @classmethod
    def from_cbor(cls, obj: object) -> CommandGrant:
        """Strict; raises :class:`PolicyError`."""
        if not isinstance(obj, dict) or set(obj) != _GRANT_KEYS:
            raise PolicyError("policy: a cmd grant must be a map of kid, nodes, commands")
        kid = obj["kid"]
        if not (isinstance(kid, bytes) and len(kid) == KID_BYTES):
            raise PolicyError(f"policy: a cmd grant's kid must be {KID_BYTES} bytes")
        lists = []
        for key in ("nodes", "commands"):
            value = obj[key]
            if not (
                isinstance(value, list)
                and 0 < len(value) <= MAX_GRANT_PATTERNS
                and all(isinstance(p, str) and 0 < len(p) <= 128 for p in value)
            ):
                raise PolicyError(
                    f"policy: a cmd grant's {key} must be 1..{MAX_GRANT_PATTERNS} patterns"
                )
            lists.append(tuple(value))
        return cls(kid, lists[0], lists[1])


@dataclass(frozen=True, slots=True)
class Identity:
    node: str
    mesh: str
    zone: str
    public_key: str = ""  # hex Ed25519 public key of the node, when known


@dataclass(frozen=True, slots=True)
class Policy:
    """What the mesh's admins allow. Patterns are fnmatch globs on ``unit.command``."""

    version: int = 0
    mesh: str = "*"
    allowed_commands: tuple[str, ...] = ("*",)
    denied_commands: tuple[str, ...] = ()
    safe_mode_commands: tuple[str, ...] = ()
    limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    zone: bytes | None = None  # serialized ZonePolicy (VSZP), or None: no zone in this policy
    grants: tuple[CommandGrant, ...] = ()  # remote commands ("cmd"); none: nobody may

    def to_cbor(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "mesh": self.mesh,
            "allow": list(self.allowed_commands),
            "deny": list(self.denied_commands),
            "safe": list(self.safe_mode_commands),
            "limits": {k: [lo, hi] for k, (lo, hi) in sorted(self.limits.items())},
        }
        if self.zone is not None:
            out["zone"] = self.zone
        if self.grants:  # left out when empty: documents without grants are as before
            out["cmd"] = [g.to_cbor() for g in self.grants]
        return out

    @classmethod
    def from_cbor(cls, obj: object) -> Policy:
        """Strict; raises :class:`PolicyError`."""
        if not isinstance(obj, dict) or not _KEYS <= set(obj) <= _KEYS | _OPTIONAL_KEYS:
            raise PolicyError("policy: wrong shape")
        grants_raw = obj.get("cmd", [])
        if not isinstance(grants_raw, list) or not (
            ("cmd" not in obj or grants_raw) and len(grants_raw) <= MAX_GRANTS
        ):
            raise PolicyError(f"policy: cmd must be a list of 1..{MAX_GRANTS} grants")
        grants = tuple(CommandGrant.from_cbor(g) for g in grants_raw)
        zone = obj.get("zone")
        if "zone" in obj and not (isinstance(zone, bytes) and 0 < len(zone) <= MAX_ZONE_BYTES):
            raise PolicyError(f"policy: zone must be 1..{MAX_ZONE_BYTES} bytes")
        version, mesh = obj["version"], obj["mesh"]
        if type(version) is not int or not 0 <= version < 1 << 63:
            raise PolicyError("policy: version must be a non-negative integer")
        if not isinstance(mesh, str) or not 0 < len(mesh) <= 64:
            raise PolicyError("policy: bad mesh")
        lists = []
        for key in ("allow", "deny", "safe"):
            value = obj[key]
            if not (
                isinstance(value, list)
                and len(value) <= MAX_PATTERNS
                and all(isinstance(p, str) and 0 < len(p) <= 128 for p in value)
            ):
                raise PolicyError(f"policy: {key} must be a list of patterns")
            lists.append(tuple(value))
        limits_raw = obj["limits"]
        if not isinstance(limits_raw, dict) or len(limits_raw) > MAX_PATTERNS:
            raise PolicyError("policy: limits must be a map")
        limits: dict[str, tuple[float, float]] = {}
        for key, pair in limits_raw.items():
            if not (isinstance(key, str) and isinstance(pair, list) and len(pair) == 2):
                raise PolicyError("policy: limits entries must be pattern -> [min, max]")
            lo, hi = pair
            if (
                not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                    for v in pair
                )
                or lo > hi
            ):
                raise PolicyError(f"policy: limits {key}: need finite min <= max")
            limits[key] = (float(lo), float(hi))
        return cls(version, mesh, lists[0], lists[1], lists[2], limits, zone, grants)


def _loads(data: bytes) -> Any:
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyError(f"policy document of {len(data)} bytes exceeds {MAX_POLICY_BYTES}")
    try:
        return cbor_loads(data, max_size=MAX_POLICY_BYTES)
    except WireError as exc:
        raise PolicyError(f"policy document is not valid CBOR: {exc}") from None


def sign_policy(policy: Policy, key: nacl.signing.SigningKey) -> bytes:
    """The signed document: canonical CBOR of ``{"policy", "kid", "sig"}``."""
    body = cbor_dumps(policy.to_cbor())
    sig = key.sign(body).signature
    return cbor_dumps({"policy": policy.to_cbor(), "kid": bytes(key.verify_key), "sig": sig})


def verify_policy(document: bytes, admin_keys: Iterable[bytes]) -> Policy:
    """Decode and verify a signed document. Raises :class:`PolicyError` saying why."""
    obj = _loads(document)
    if not isinstance(obj, dict) or set(obj) != {"policy", "kid", "sig"}:
        raise PolicyError("policy document must be a map of policy, kid, sig")
    kid, sig = obj["kid"], obj["sig"]
    if not (
        isinstance(kid, bytes) and len(kid) == 32 and isinstance(sig, bytes) and len(sig) == 64
    ):
        raise PolicyError("policy document: kid must be 32 bytes and sig 64 bytes")
    if kid not in set(admin_keys):
        raise PolicyError(f"policy signed by {kid.hex()[:16]}..., which is not an admin key")
    policy = Policy.from_cbor(obj["policy"])
    body = cbor_dumps(obj["policy"])
    try:
        nacl.signing.VerifyKey(kid).verify(body, sig)
    except nacl.exceptions.BadSignatureError:
        raise PolicyError("policy signature does not verify") from None
    return policy


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A subsystem's advice about one target: S3 wants to attenuate, S4 to keep watching."""

    source: str  # "s3" or "s4"
    target: str
    action: str
    urgency: float  # S4: the anomaly's z-score; S3: how far over budget (0..1)


@dataclass(frozen=True, slots=True)
class Decision:
    winner: Recommendation
    reason: str


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class PolicyEngine:
    """S5's core: the current policy, command checks, arbitration, safe mode."""

    def __init__(self, config: S5Config, identity: Identity) -> None:
        self.config = config
        self.identity = identity
        self.policy = Policy()
        self.policy_signer = ""
        self.rejected_policies = 0
        self.last_rejection = ""
        self.refusals = 0
        self.safe_mode = False
        self.safe_mode_entries = 0
        self._pain: deque[tuple[float, float]] = deque()
        self._critical_pain = 0.0
        self._above_since: float | None = None
        self._below_since: float | None = None
        self.arbitrations: dict[str, int] = {"s3": 0, "s4": 0}

    # -- policy -----------------------------------------------------------------

    def accept_policy(self, document: bytes) -> Policy:
        """Verify and install a signed policy; raises :class:`PolicyError` (counted) on refusal."""
        try:
            policy = self._check(verify_policy(document, self.config.admin_keys))
        except PolicyError as exc:
            self.rejected_policies += 1
            self.last_rejection = str(exc)
            raise
        self.policy = policy
        self.policy_signer = _loads(document)["kid"].hex()
        return policy

    def _check(self, policy: Policy) -> Policy:
        if policy.mesh not in ("*", self.identity.mesh):
            raise PolicyError(f"policy is for mesh {policy.mesh!r}, not {self.identity.mesh!r}")
        if policy.version <= self.policy.version:
            raise PolicyError(
                f"policy version {policy.version} is not newer than {self.policy.version}"
            )
        return policy

    def check_command(self, target: str, value: Scalar) -> str | None:
        """A refusal reason for command ``target`` (``unit.command``) with ``value``, or None."""
        p = self.policy
        reason = None
        if self.safe_mode and not _matches(target, p.safe_mode_commands):
            reason = f"s5: safe mode: {target} is not a safe-mode command"
        elif _matches(target, p.denied_commands):
            reason = f"s5: policy v{p.version} denies {target}"
        elif not _matches(target, p.allowed_commands):
            reason = f"s5: policy v{p.version} does not allow {target}"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            for pattern, (lo, hi) in p.limits.items():
                if fnmatch.fnmatchcase(target, pattern) and not lo <= value <= hi:
                    reason = (
                        f"s5: policy v{p.version} limits {target} to [{lo:g}, {hi:g}], "
                        f"got {value:g}"
                    )
                    break
        if reason is not None:
            self.refusals += 1
        return reason

    def authorize_remote(self, kid: bytes, node: str, target: str) -> str | None:
        """Why the holder of key ``kid`` may not command ``target`` (``unit.command``)
        on ``node`` by the policy's grants, or None when a grant allows it."""
        if any(g.allows(kid, node, target) for g in self.policy.grants):
            return None
        self.refusals += 1
        return "not authorized"

    # -- arbitration --------------------------------------------------------------

    def arbitrate(self, s3: Recommendation, s4: Recommendation) -> Decision:
        """Settle S3 (stability, budgets) against S4 (adaptation, anomalies).

        In safe mode S3 wins; S3 also wins when the target is the main cause of
        the overload (S3's urgency, its share of what was attenuated, >= 0.5:
        a flooding sensor's own anomalies must not exempt it); otherwise S4
        wins when its urgency (the anomaly's z-score) reaches ``s4_priority_z``.
        """
        if self.safe_mode:
            decision = Decision(s3, "safe mode: stability first")
        elif s3.urgency >= 0.5:
            decision = Decision(s3, f"{s3.target} is {s3.urgency:.0%} of the overload")
        elif s4.urgency >= self.config.s4_priority_z:
            decision = Decision(s4, f"anomaly z={s4.urgency:.1f} >= {self.config.s4_priority_z:g}")
        else:
            decision = Decision(s3, f"anomaly z={s4.urgency:.1f} < {self.config.s4_priority_z:g}")
        self.arbitrations[decision.winner.source] += 1
        return decision

    # -- pain and safe mode --------------------------------------------------------

    def hear_pain(self, intensity: float, now: float) -> None:
        self._pain.append((now, intensity))
        if len(self._pain) > 1024:
            self._pain.popleft()

    def set_critical_pain(self, intensity: float) -> None:
        """The highest intensity among unacknowledged critical alarms (0 when none)."""
        self._critical_pain = intensity

    def pain_level(self, now: float) -> float:
        memory = self.config.safe_mode_after_s / 4
        while self._pain and now - self._pain[0][0] > memory:
            self._pain.popleft()
        return max([self._critical_pain, *(i for _, i in self._pain)])

    def evaluate(self, now: float) -> bool | None:
        """Update safe mode; True when it was entered now, False when left now, else None."""
        cfg = self.config
        level = self.pain_level(now)
        if level >= cfg.safe_mode_pain:
            if self._above_since is None:
                self._above_since = now
        else:
            self._above_since = None
        if level <= cfg.safe_mode_exit_pain:
            if self._below_since is None:
                self._below_since = now
        else:
            self._below_since = None
        if (
            not self.safe_mode
            and self._above_since is not None
            and now - self._above_since >= cfg.safe_mode_after_s
        ):
            self.safe_mode = True
            self.safe_mode_entries += 1
            return True
        if (
            self.safe_mode
            and self._below_since is not None
            and now - self._below_since >= cfg.safe_mode_exit_after_s
        ):
            self.safe_mode = False
            return False
        return None
