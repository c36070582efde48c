"""The ingress gateway: ALLOW / DENY / MAYBE for every inbound envelope.

Theory of operation
-------------------
The agent decodes an envelope, verifies its signature, and hands the gateway
a frozen :class:`Inbound`. The gateway runs the checks in order and the
first one that decides, decides:

==========  =================================================  =============
check       rule                                               outcome
==========  =================================================  =============
input       fields inside their bounds                         else DENY malformed
signature   ``signature_ok``                                   else DENY bad-signature
zone        kid in the admin-signed zone filter                else DENY not-in-zone
            (skipped for ``decide(..., zone_exempt=True)``)
quarantine  neither source nor kid is quarantined              else DENY quarantined
freshness   HLC not older than max age, not beyond max offset  else DENY too-old / too-far-ahead
replay      (kid, HLC, nonce) in the exact recent set          DENY replay
            definitely not in the rotating Bloom pair          FRESH
            (or the hit is provably a false positive)
            otherwise                                          MAYBE
arbitrator  MAYBE only: the int8 MLP on the peer's features    ALLOW or DENY
behaviour   the zombie rules, fed with this message            DENY quarantined
==========  =================================================  =============

A FRESH message that passes the behaviour check is ALLOWed. A MAYBE goes to
the arbitrator first (its answer tells the behaviour statistics whether to
count the message as fresh or as a duplicate); with no arbitrator (no
runtime, no model, or a lazily loaded model that failed to load) it fails
closed: DENY arbitrator-unavailable. Every decision is a frozen
:class:`Decision` naming the check and the reason that decided, and is
counted by reason.

Time is the ``received_ms`` of each message: the gateway keeps the largest
value seen, so a clock stepping back never reopens the replay window.

Retained messages (the broker kept them: a presence, a policy, the latest
algedonic signal) are old by design, so they have a rule of their own,
:meth:`Gateway.decide_retained`: the input and signature checks, then, unless
the message's admission rests on its signature alone (a presence announces a
key and grants nothing; an admin's policy carries the admin's signature), the
zone and quarantine checks. No freshness, replay or behaviour check, and the
decision is not counted in :meth:`Gateway.statistics`. Agents and
aggregators alike use this rule.
"""

from __future__ import annotations

import enum
import logging
from collections import Counter
from collections.abc import Container, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from ._errors import ModelError, ModelUnavailableError
from ._replay import MAX_KID, MAX_NONCE, ReplayConfig, ReplayVerdict, ReplayWindow
from ._zombie import (
    MAX_SOURCE,
    Observation,
    ZombieConfig,
    ZombieDetector,
    ZombieEvent,
)

__all__ = [
    "Arbiter",
    "Arbitration",
    "Decision",
    "Gateway",
    "GatewayConfig",
    "Inbound",
    "Verdict",
]

log = logging.getLogger("vsm_edge.models")

MAX_KIND: Final = 64
ZONE_CACHE: Final = 4_096  # kid -> admitted, cleared when full or when the zone changes
MAX_TIME_MS: Final = (1 << 48) - 1


class Verdict(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    MAYBE = "maybe"


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the agent knows of one inbound envelope after decoding and verifying it.

    ``hlc`` is the packed u64 (``wall_ms << 16 | logical``); ``size`` the
    envelope's size in bytes; ``received_ms`` our wall clock at receipt;
    ``source`` who delivered it (the node id of the MQTT topic), empty when
    unknown, in which case the kid (hex) stands for the source. Nothing is
    validated here: the gateway DENYs out-of-bounds fields as ``malformed``.
    """

    kid: bytes
    hlc: int
    nonce: bytes
    kind: str
    signature_ok: bool
    size: int
    received_ms: int
    source: str = ""


@dataclass(frozen=True, slots=True)
class Arbitration:
    """The arbitrator's answer for one feature vector.

    ``label`` is the most likely class, ``allow`` whether P(honest) reached
    the threshold, ``malicious`` is 1 - P(honest), ``probabilities`` per class.
    """

    label: str
    allow: bool
    malicious: float
    probabilities: tuple[float, ...]


class Arbiter(Protocol):
    """Anything that decides MAYBE cases (the int8 :class:`Arbitrator`)."""

    def classify(self, features: Sequence[float]) -> Arbitration:
        """Decide one feature vector; may raise :class:`ModelError`."""
        ...


@dataclass(frozen=True, slots=True)
class Decision:
    """One explainable gateway decision.

    ``verdict`` is final (ALLOW or DENY); ``check`` names the stage that
    decided and ``reason`` why; ``maybe`` says the replay check was unsure
    and the arbitrator was asked; ``score`` is the arbitrator's P(malicious)
    and ``label`` its class; ``features`` the vector it saw (empty unless
    computed).
    """

    verdict: Verdict
    reason: str
    check: str
    maybe: bool = False
    score: float | None = None
    label: str | None = None
    features: tuple[float, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW

    def explain(self) -> str:
        """One human-readable line."""
        text = f"{self.verdict.value.upper()} by {self.check}: {self.reason}"
        if self.maybe:
            text += " (after MAYBE)"
        if self.score is not None:
            text += f"; arbitrator says {self.label}, P(malicious)={self.score:.3f}"
        return text


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Bounds and sub-configurations of the gateway.

    ``always_features`` computes the feature vector for every message that
    reaches the replay check (the traffic simulator uses it to make training
    data); by default only MAYBE cases pay for it.
    """

    replay: ReplayConfig = field(default_factory=ReplayConfig)
    zombie: ZombieConfig = field(default_factory=ZombieConfig)
    max_size: int = 1 << 20
    max_kid: int = MAX_KID
    max_nonce: int = MAX_NONCE
    always_features: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.max_kid <= MAX_KID or not 0 < self.max_nonce <= MAX_NONCE:
            raise ValueError(f"max_kid and max_nonce must be 1..{MAX_KID}")
        if self.max_size < 1:
            raise ValueError("max_size must be positive")


def _malformed(msg: Inbound, cfg: GatewayConfig) -> str | None:
    """The first field out of bounds (or of the wrong type), None when all are fine.

    The agent builds :class:`Inbound` from decoded bytes, so its fields are
    typed; they are checked anyway, because a decision must never raise.
    """
    kid: object = msg.kid
    nonce: object = msg.nonce
    kind: object = msg.kind
    signature_ok: object = msg.signature_ok
    if not isinstance(kid, bytes) or not 0 < len(kid) <= cfg.max_kid:
        return "kid"
    if not isinstance(nonce, bytes) or not 0 < len(nonce) <= cfg.max_nonce:
        return "nonce"
    if not _uint(msg.hlc, 1 << 64):
        return "hlc"
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND:
        return "kind"
    if not isinstance(signature_ok, bool):
        return "signature_ok"
    if not _uint(msg.size, cfg.max_size + 1):
        return "size"
    if not _uint(msg.received_ms, MAX_TIME_MS + 1):
        return "received_ms"
    source: object = msg.source
    if not isinstance(source, str) or len(source) > MAX_SOURCE:
        return "source"
    return None


def _uint(value: object, bound: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < bound


class Gateway:
    """The sans-I/O ingress gateway (module doc).

    ``zone`` holds the admitted key ids (a :class:`BloomFilter` from the
    admin-signed policy, or any container of bytes); None admits nobody
    (fail closed until a zone is installed). ``replay_key`` keys the nonce
    filters (:func:`derive_key`). ``arbitrator`` decides MAYBE cases; None
    makes them DENY. ``now_ms`` starts the replay window's clock.
    """

    def __init__(
        self,
        *,
        zone: Container[bytes] | None,
        replay_key: bytes,
        arbitrator: Arbiter | None = None,
        config: GatewayConfig | None = None,
        now_ms: int = 0,
    ) -> None:
        self.config = config or GatewayConfig()
        self._zone = zone
        self._zone_cache: dict[bytes, bool] = {}
        self._arbitrator = arbitrator
        self.replay = ReplayWindow(replay_key, self.config.replay, now_ms=now_ms)
        self.detector = ZombieDetector(self.config.zombie)
        self._verdicts: Counter[str] = Counter()
        self._reasons: Counter[str] = Counter()
        self._maybe = 0

    # -- configuration -------------------------------------------------------

    def set_zone(self, zone: Container[bytes] | None) -> None:
        """Install a new zone (a new admin-signed policy arrived)."""
        self._zone = zone
        self._zone_cache.clear()

    @property
    def arbitrator(self) -> Arbiter | None:
        return self._arbitrator

    def admits(self, kid: bytes) -> bool:
        """Whether the installed zone admits ``kid`` (False with no zone); cached."""
        zone = self._zone
        if zone is None:
            return False
        admitted = self._zone_cache.get(kid)
        if admitted is None:
            admitted = kid in zone
            if len(self._zone_cache) >= ZONE_CACHE:
                self._zone_cache.clear()
            self._zone_cache[kid] = admitted
        return admitted

    # -- the pipeline ----------------------------------------------------------

    def decide(self, msg: Inbound, *, zone_exempt: bool = False) -> Decision:
        """Run the checks on one inbound envelope and count the decision. Never raises.

        ``zone_exempt`` skips the zone check (and only it) for messages whose
        admission does not rest on the zone: a presence only announces a key
        and grants nothing, and an admin's policy carries its own admin
        signature. The other checks, replay included, still apply.

        A bug in a check must not take the agent's receive loop down with it:
        any unexpected exception is logged and the envelope DENYed with
        reason ``internal-error`` (the fuzz tests assert it never happens).
        """
        try:
            decision = self._decide(msg, zone_exempt)
        except Exception:
            log.exception("gateway check failed; envelope denied")
            decision = Decision(Verdict.DENY, "internal-error", "gateway")
        self._verdicts[decision.verdict.value] += 1
        self._reasons[decision.reason] += 1
        if decision.maybe:
            self._maybe += 1
        return decision

    def decide_retained(self, msg: Inbound, *, signature_only: bool = False) -> Decision:
        """Decide a retained message (module doc). Never raises; not counted.

        ``signature_only`` for messages whose admission rests on their
        signature (a presence, an admin-signed policy): the zone and the
        quarantines are not consulted. Nothing is observed and the replay
        window is not touched: the broker hands every subscriber the same
        retained message, so it is no replay, and its age says nothing of
        its sender's behaviour. Quarantines are checked at ``received_ms``.
        """
        try:
            return self._decide_retained(msg, signature_only)
        except Exception:
            log.exception("gateway check failed; retained envelope denied")
            return Decision(Verdict.DENY, "internal-error", "gateway")

    def _decide_retained(self, msg: Inbound, signature_only: bool) -> Decision:
        if _malformed(msg, self.config) is not None:
            return Decision(Verdict.DENY, "malformed", "input")
        if not msg.signature_ok:
            return Decision(Verdict.DENY, "bad-signature", "signature")
        if signature_only:
            return Decision(Verdict.ALLOW, "retained", "signature")
        if self._zone is None:
            return Decision(Verdict.DENY, "no-zone", "zone")
        if not self.admits(msg.kid):
            return Decision(Verdict.DENY, "not-in-zone", "zone")
        detector, now = self.detector, msg.received_ms
        kid_name = msg.kid.hex()
        source = msg.source or kid_name
        if detector.is_quarantined(source, now) or (
            source != kid_name and detector.is_quarantined(kid_name, now)
        ):
            return Decision(Verdict.DENY, "quarantined", "quarantine")
        return Decision(Verdict.ALLOW, "retained", "quarantine")

    def _decide(self, msg: Inbound, zone_exempt: bool) -> Decision:
        cfg = self.config
        if _malformed(msg, cfg) is not None:
            return Decision(Verdict.DENY, "malformed", "input")
        now = self.replay.advance(msg.received_ms)
        detector = self.detector
        kid_name = msg.kid.hex()
        source = msg.source or kid_name
        if not msg.signature_ok:
            if msg.source:  # only an attributed source can be blamed
                self._observe(source, Observation.FORGED, msg, now)
            return Decision(Verdict.DENY, "bad-signature", "signature")
        if not zone_exempt:
            if self._zone is None:
                return Decision(Verdict.DENY, "no-zone", "zone")
            if not self.admits(msg.kid):
                if msg.source:
                    self._observe(source, Observation.OUT_OF_ZONE, msg, now)
                return Decision(Verdict.DENY, "not-in-zone", "zone")
        if detector.is_quarantined(source, now) or (
            source != kid_name and detector.is_quarantined(kid_name, now)
        ):
            return Decision(Verdict.DENY, "quarantined", "quarantine")

        verdict = self.replay.check(msg.kid, msg.hlc, msg.nonce, now)
        if verdict is ReplayVerdict.TOO_OLD or verdict is ReplayVerdict.TOO_FAR_AHEAD:
            self._observe(source, Observation.STALE, msg, now)
            return Decision(Verdict.DENY, verdict.value, "freshness")
        features: tuple[float, ...] = ()
        if cfg.always_features or verdict is ReplayVerdict.MAYBE:
            features = detector.features(source, hlc=msg.hlc, size=msg.size, now_ms=now)
        if verdict is ReplayVerdict.REPLAY:
            self._observe(source, Observation.DUPLICATE, msg, now)
            return Decision(Verdict.DENY, "replay", "replay", features=features)

        if verdict is ReplayVerdict.FRESH:
            if self._observe(source, Observation.FRESH, msg, now):
                return Decision(Verdict.DENY, "quarantined", "behaviour", features=features)
            return Decision(Verdict.ALLOW, "fresh", "replay", features=features)

        # MAYBE: the arbitrator decides, and its answer decides what the
        # behaviour statistics learn (an allowed message counts as fresh, so a
        # saturated filter does not make honest peers look like replayers).
        decision = self._arbitrate(features)
        observation = Observation.FRESH if decision.allowed else Observation.DUPLICATE
        if self._observe(source, observation, msg, now):
            return Decision(Verdict.DENY, "quarantined", "behaviour", True, features=features)
        return decision

    def _arbitrate(self, features: tuple[float, ...]) -> Decision:
        arbitrator = self._arbitrator
        if arbitrator is None:
            return Decision(
                Verdict.DENY, "arbitrator-unavailable", "arbitrator", True, features=features
            )
        try:
            answer = arbitrator.classify(features)
        except ModelUnavailableError:  # a lazy model that could not be loaded
            return Decision(
                Verdict.DENY, "arbitrator-unavailable", "arbitrator", True, features=features
            )
        except ModelError:
            return Decision(
                Verdict.DENY, "arbitrator-failed", "arbitrator", True, features=features
            )
        if answer.allow:
            verdict, reason = Verdict.ALLOW, "arbitrator-allow"
        else:
            verdict, reason = Verdict.DENY, f"arbitrator-{answer.label}"
        return Decision(
            verdict, reason, "arbitrator", True, answer.malicious, answer.label, features
        )

    def _observe(self, source: str, observation: Observation, msg: Inbound, now: int) -> bool:
        triggered = self.detector.observe(
            source, observation, kind=msg.kind, hlc=msg.hlc, size=msg.size, now_ms=now
        )
        return triggered is not None

    # -- reporting -----------------------------------------------------------

    def pop_events(self) -> list[ZombieEvent]:
        """Quarantine and release events since the last call (for pain and mesh proposals)."""
        return self.detector.pop_events()

    def statistics(self) -> dict[str, object]:
        """Counts for the agent's status JSON (it goes under the top-level key ``gateway``).

        ``allow`` + ``deny`` is every decision; ``maybe`` how many of them
        the arbitrator decided (or failed closed); ``reasons`` counts by
        reason; ``quarantined`` is the number of peers quarantined now,
        ``peers`` the number tracked.
        """
        return {
            "allow": self._verdicts["allow"],
            "deny": self._verdicts["deny"],
            "maybe": self._maybe,
            "reasons": dict(sorted(self._reasons.items())),
            "quarantined": len(self.detector.quarantined()),
            "peers": self.detector.statistics()["peers"],
        }
