"""The agent's ingress guard: the gateway in the receive path, the zone, quarantines.

Theory of operation
-------------------
The replicator decodes every message, finds the sender's key (its presence)
and checks the signature; then it asks :meth:`IngressGuard.ingress`, before
anything of the message is merged or dispatched. The rule is
:func:`gateway_check`, which the aggregator applies too:

* **retained** messages are old by design (the broker keeps them), so there
  is no freshness or replay check (:meth:`Gateway.decide_retained`). A
  presence needs a valid signature only (it announces a key and grants
  nothing); a policy the same, when an admin key signed the envelope (S5
  checks the admin signature inside); any other policy and an algedonic
  signal need the zone and a source that is not quarantined. Retained
  messages on any other channel are refused (the sync layer's
  :data:`~vsm_edge.sync.CHANNELS`: the protocol never retains deltas,
  digests or repairs).
* **live** messages go through :meth:`Gateway.decide` (signature, zone,
  quarantine, freshness, replay, MAYBE -> the int8 arbitrator, behaviour).
  The arbitrator's files are checked at start; its interpreter is built on
  the first MAYBE, which honest traffic almost never produces.
  Presences, and policies whose envelope an admin key signed, are exempt from
  the zone check only.

The zone. In mode ``open`` the gateway starts with :data:`OPEN_ZONE` (every
key; trust on first use); in mode ``policy`` with no zone (every message
DENYed ``no-zone``, fail closed). Either way, once S5 accepts an
admin-signed policy that carries a zone, the guard decodes it under the mesh
secrets it holds (``derive_key(secret, "zone")``) and installs it. The
newest accepted policy is complete: its zone replaces the installed one,
unless its epoch is lower (refused: a removal cannot be undone by an older
filter). A policy without a zone leaves the zone as it is. The last accepted
document is kept in ``data_dir/policy.cbor`` and re-accepted at start, so a
restart neither reopens the zone nor accepts an older retained document.

Quarantine. The gateway's zombie detector emits events; each quarantine
raises algedonic pain (``gateway.quarantine.<peer>``) and updates this node's
*proposal*: the register ``{node}/quarantine`` of the mesh document, holding
a COSE_Sign1 envelope (kind ``quarantine``) signed with the node key, whose
payload lists the peers this node quarantined itself. Peers verify the
envelope with the proposer's presence key, so nobody can propose in another
node's name even though CRDT state is not attributed per entry. A node
quarantines a peer on proposals only when ``quarantine_quorum`` distinct
in-zone proposers (other than the peer) agree; 0 never. Quarantines decided
by quorum are not proposed again (no echo).

Why one module over ~600 lines: the guard's state (zone, pins, evidence,
quarantine proposals) is one policy that every check reads; its decisions are
in models (the gateway) and sync (the ingress core), this is the agent's glue.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Container, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from vsm_edge.models import (
    Arbiter,
    FilterFormatError,
    Gateway,
    GatewayConfig,
    LazyArbitrator,
    ModelError,
    Observation,
    ZombieConfig,
    ZombieEvent,
    ZonePolicy,
    derive_key,
)
from vsm_edge.models import Inbound as GatewayInbound
from vsm_edge.sync import (
    CHANNELS,
    Inbound,
    MeshKey,
    NodeKey,
    PeerInfo,
    SyncError,
    WireError,
    cbor_dumps,
    cbor_loads,
    decode_envelope,
    derive_kid,
    load_mesh_key,
    sign_envelope,
)

from .._errors import AgentError, ConfigError
from ..config.schema import AgentConfig
from ..vsm.algedonic import SignalError
from .schema import quarantine_key
from .status import GatewayCounts, GatewayStatus, QuarantineStatus, ZonePolicyStatus

if TYPE_CHECKING:
    from ..vsm.runtime import Runtime

__all__ = ["OPEN_ZONE", "PROPOSAL_KIND", "IngressGuard", "gateway_check"]

log = logging.getLogger("vsm_edge.agent.security")

PROPOSAL_KIND: Final = "quarantine"
MAX_PROPOSAL_BYTES: Final = 8 * 1024
MAX_PROPOSED: Final = 64  # peers in one proposal
MAX_PROPOSERS: Final = 1_024
MAX_PENDING: Final = 256  # proposals waiting for their proposer's presence
QUARANTINE_PAIN: Final = 0.7
ZONE_PAIN: Final = 0.5
ARBITRATOR_PAIN: Final = 0.5
POLICY_FILE: Final = "policy.cbor"
PINS_FILE: Final = "pins.cbor"
MAX_PINS: Final = 4_096  # node -> key id pins kept (least recently bound forgotten)
# Open mesh: new identities (node ids never pinned) bound at most at this rate
# after a burst the size of the peer table, so that a writer rotating
# identities to stay under the flood rule runs out of them.
NEW_KEY_BURST: Final = 1_024.0
NEW_KEY_RATE: Final = 1.0 / 60.0  # per second
TICK_S: Final = 1.0


class _OpenZone:
    """A zone that admits every key: a mesh without an admin policy (trust on first use)."""

    def __contains__(self, kid: object) -> bool:
        return isinstance(kid, bytes)


OPEN_ZONE: Final = _OpenZone()


def gateway_check(
    gateway: Gateway, inbound: Inbound, *, admin_kids: Container[bytes] = frozenset()
) -> str | None:
    """The ingress rule of agents and aggregators: a refusal reason, or None (module doc).

    A retained message is refused ``retained:unexpected`` on a channel that
    is never retained, else decided by :meth:`Gateway.decide_retained`
    (reasons ``retained:<reason>``); a live one by :meth:`Gateway.decide`
    (``gateway:<reason>``). Presences, and policies signed by one of
    ``admin_kids``, rest on their signature: retained, nothing else is
    checked; live, everything but the zone.
    """
    envelope = inbound.envelope
    channel = inbound.channel
    rule = CHANNELS.get(channel)
    if inbound.retained and (rule is None or not rule.retained):
        return "retained:unexpected"
    exempt = channel == "presence" or (channel == "policy" and envelope.kid in admin_kids)
    msg = GatewayInbound(
        kid=envelope.kid,
        hlc=envelope.hlc,
        nonce=envelope.nonce,
        kind=envelope.kind,
        signature_ok=inbound.signature_ok,
        size=inbound.size,
        received_ms=inbound.received_ms,
        source=inbound.sender,
    )
    if inbound.retained:
        decision = gateway.decide_retained(msg, signature_only=exempt)
        return None if decision.allowed else f"retained:{decision.reason}"
    decision = gateway.decide(msg, zone_exempt=exempt)
    return None if decision.allowed else f"gateway:{decision.reason}"


@dataclass(frozen=True, slots=True)
class _Proposal:
    hlc: int
    peers: dict[str, int]  # peer -> until (ms)


class IngressGuard:
    """The gateway, the zone and quarantines of one agent (module doc).

    Build it with :meth:`load` (it reads key files and the model), then
    :meth:`attach` the runtime and the replicator, hand :meth:`ingress` to
    the replicator, and run :meth:`run` for the proposal writer.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        node_key: NodeKey,
        zone_keys: list[bytes],
        mesh_key: MeshKey | None,
        arbitrator: Arbiter | None,
        arbitrator_error: str | None,
        wall_clock: Callable[[], int],
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        sec = config.security
        self.config = config
        self.mode = sec.zone
        self.node = config.node.id
        self.node_key = node_key
        self.mesh_key = mesh_key
        self.admin_kids = frozenset(derive_kid(k) for k in config.s5.admin_keys)
        self.quorum = sec.quarantine_quorum
        self.arbitrator_error = arbitrator_error
        self._zone_keys = zone_keys
        self._wall_clock = wall_clock
        self._randbytes = randbytes
        self._policy_path = Path(config.node.data_dir) / POLICY_FILE
        self._pins_path = Path(config.node.data_dir) / PINS_FILE
        self._pins: OrderedDict[str, bytes] = OrderedDict()
        self._pins_dirty = False
        self._rebind: Callable[[], None] | None = None
        self._new_keys = (NEW_KEY_BURST, wall_clock())  # tokens, at (ms)
        self.gateway = Gateway(
            zone=OPEN_ZONE if self.mode == "open" else None,
            # the replay filters are this node's own: a fresh random key per
            # run means nobody can aim at their bits
            replay_key=randbytes(32),
            arbitrator=arbitrator,
            config=GatewayConfig(zombie=ZombieConfig(repair_kinds=frozenset({"repair"}))),
            now_ms=wall_clock(),
        )
        self.zone: ZonePolicy | None = None
        self.zone_version = 0  # the policy version the installed zone came from
        self.zone_problem: str | None = None
        self._seen_version = 0  # the newest policy version looked at
        self._runtime: Runtime | None = None
        self._peers: Mapping[str, PeerInfo] = {}  # the replicator's peer table
        self._clock_now: Callable[[], Any] | None = None
        self._retained: Counter[str] = Counter()
        self._proposal_counts: Counter[str] = Counter()
        self._proposals: OrderedDict[str, _Proposal] = OrderedDict()
        self._pending: OrderedDict[str, bytes] = OrderedDict()
        self._own_proposal: tuple[tuple[str, str, int, int], ...] = ()
        self._persist: bytes | None = None
        self._wake = trio.Event()

    # -- building -----------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        config: AgentConfig,
        node_key: NodeKey,
        *,
        wall_clock: Callable[[], int],
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> IngressGuard:
        """Read the mesh secrets, the mesh key and the arbitrator model (blocking I/O).

        Raises :class:`AgentError` naming the setting for an unreadable or
        malformed key file. The model's files are checked here but the
        interpreter (numpy and the TFLite runtime, ~30 MB of RSS) is built on
        the first MAYBE (:class:`LazyArbitrator`). A model that cannot be
        loaded, now or then, is *not* an error: the guard runs without it
        (every MAYBE is DENYed), and says why in the status and with pain.
        """
        sec = config.security
        zone_keys: list[bytes] = []
        for name, path in (
            ("mesh_secret_file", sec.mesh_secret_file),
            ("previous_mesh_secret_file", sec.previous_mesh_secret_file),
        ):
            if path is not None:
                zone_keys.append(derive_key(_read_secret(name, path).key, "zone"))
        mesh_key = None
        if sec.mesh_key_file is not None:
            mesh_key = _read_secret("mesh_key_file", sec.mesh_key_file)
        arbitrator: LazyArbitrator | None = None
        error: str | None = None
        where = sec.arbitrator_model or "the shipped model"
        guard: IngressGuard | None = None

        def unavailable(exc: ModelError) -> None:
            if guard is not None:
                guard.arbitrator_unavailable(f"arbitrator model {where}: {exc} ({exc.reason})")

        try:
            # The files are checked now; numpy and the runtime load on the first MAYBE.
            arbitrator = LazyArbitrator(sec.arbitrator_model, on_unavailable=unavailable)
        except ModelError as exc:
            if sec.arbitrator_model is not None:  # named by the operator: it must be usable
                raise ConfigError(
                    "security.arbitrator_model",
                    f"cannot use {sec.arbitrator_model}: {exc} ({exc.reason}); give a model "
                    "made by `python -m vsm_edge.models.train_arbitrator`, or remove the key "
                    "to use the shipped model",
                ) from None
            error = f"arbitrator model {where}: {exc} ({exc.reason})"
            log.warning("%s; every MAYBE decision will DENY", error)
        guard = cls(
            config,
            node_key=node_key,
            zone_keys=zone_keys,
            mesh_key=mesh_key,
            arbitrator=arbitrator,
            arbitrator_error=error,
            wall_clock=wall_clock,
            randbytes=randbytes,
        )
        guard._pins = _read_pins(guard._pins_path)
        return guard

    def arbitrator_unavailable(self, error: str) -> None:
        """The lazily loaded model failed on the first MAYBE: say so in the status and with pain."""
        self.arbitrator_error = error
        self._pain("gateway.arbitrator", ARBITRATOR_PAIN, error)

    @property
    def arbitrator_state(self) -> str:
        """``"not-loaded"`` (checked; loads on the first MAYBE), ``"loaded"``, ``"unavailable"``."""
        arbitrator = self.gateway.arbitrator
        if arbitrator is None:
            return "unavailable"
        if isinstance(arbitrator, LazyArbitrator):
            return arbitrator.state
        return "loaded"

    def attach(
        self,
        runtime: Runtime,
        peers: Mapping[str, PeerInfo],
        clock_now: Callable[[], Any],
        rebind: Callable[[], None] | None = None,
    ) -> None:
        """Connect the runtime (pain, S5), the replicator's peer table, its HLC
        ``now`` and its ``rebind`` (called when a new zone changes the key binding)."""
        self._runtime = runtime
        self._peers = peers
        self._clock_now = clock_now
        self._rebind = rebind
        if self.arbitrator_error is not None:
            self._pain("gateway.arbitrator", ARBITRATOR_PAIN, self.arbitrator_error)

    # -- ingress ------------------------------------------------------------------------

    def ingress(self, inbound: Inbound) -> str | None:
        """The replicator's ingress check: a refusal reason, or None to let it in."""
        reason = gateway_check(self.gateway, inbound, admin_kids=self.admin_kids)
        if inbound.retained:
            if reason is not None:
                self._retained[reason] += 1
        else:
            self._drain_events()
        return reason

    def bind_key(self, node: str, kid: bytes, bound: bytes | None) -> str | None:
        """The replicator's key binding: may ``node``'s presence bind it to ``kid``?

        With a zone installed, only a key of the zone, and not while the key
        the node is pinned to is still in it (an admin rotates a node's key by
        removing the old one from the zone). With no zone: in mode ``open``,
        the first key seen for a node is pinned (trust on first use, kept in
        ``data_dir/pins.cbor``) and no other is accepted, and new node ids
        are pinned at most at ``NEW_KEY_RATE`` after a burst of
        ``NEW_KEY_BURST``; in mode ``policy``, any key, unpinned, until the
        zone arrives (the gateway refuses every other message meanwhile) and
        the replicator re-checks (``rebind``).
        """
        pinned = self._pins.get(node)
        if self.zone is not None:
            if not self.gateway.admits(kid):
                return "not-in-zone"
            if pinned is not None and pinned != kid and self.gateway.admits(pinned):
                return "key-pinned"
        elif self.mode != "open":
            return None
        elif pinned is not None and pinned != kid:
            return "key-pinned"
        elif pinned is None:
            now = self._wall_clock()
            tokens, at = self._new_keys
            tokens = min(NEW_KEY_BURST, tokens + max(0, now - at) / 1000 * NEW_KEY_RATE)
            if tokens < 1:
                self._new_keys = (tokens, now)
                return "too-many-new-keys"
            self._new_keys = (tokens - 1, now)
        if pinned != kid:
            self._pins[node] = kid
            self._pins_dirty = True
            self._wake.set()
        self._pins.move_to_end(node)
        while len(self._pins) > MAX_PINS:
            self._pins.popitem(last=False)
        return None

    def blame(self, sender: str, reason: str) -> None:
        """A validly signed message from ``sender`` broke a rule no honest node
        breaks (the replicator's dot rules): evidence against it."""
        self.gateway.detector.observe(
            sender,
            Observation.INVALID,
            kind=reason,
            hlc=0,
            size=0,
            now_ms=self._wall_clock(),
        )
        self._drain_events()

    @property
    def gateway_zone(self) -> Container[bytes] | None:
        """What the gateway admits now: OPEN_ZONE, the installed zone, or None."""
        if self.zone is not None:
            return self.zone
        return OPEN_ZONE if self.mode == "open" else None

    # -- policy and zone -------------------------------------------------------------------

    def read_kept_policy(self) -> bytes | None:
        """The policy document kept from the last run, or None (blocking: run in a thread)."""
        try:
            return self._policy_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read %s: %s", self._policy_path, exc)
            return None

    def restore(self, runtime: Runtime, document: bytes | None) -> None:
        """Re-accept the policy kept from the last run (before the mesh is joined)."""
        if document is None:
            return
        if runtime.accept_policy(document, raise_errors=False):
            log.info("restored policy v%d from %s", runtime.s5.policy.version, self._policy_path)
        self.policy_changed(runtime)

    def policy_changed(self, runtime: Runtime, document: bytes | None = None) -> None:
        """S5 may have accepted a newer policy: install its zone; keep ``document`` on disk."""
        policy = runtime.s5.policy
        if policy.version <= self._seen_version:
            return
        self._seen_version = policy.version
        if document is not None:
            self._persist = document
            self._wake.set()
        if policy.zone is None:
            log.info("policy v%d has no zone; the zone stays as it is", policy.version)
            return
        problem: str | None = None
        zone: ZonePolicy | None = None
        if not self._zone_keys:
            problem = "no mesh secret is configured (security.mesh_secret_file)"
        else:
            try:
                zone = ZonePolicy.from_bytes(policy.zone, self._zone_keys)
            except FilterFormatError as exc:
                problem = f"unreadable: {exc}"
        if zone is not None and self.zone is not None and zone.epoch < self.zone.epoch:
            problem = f"epoch {zone.epoch} is older than the installed epoch {self.zone.epoch}"
            zone = None
        if zone is None:
            self.zone_problem = f"policy v{policy.version}: zone {problem}"
            log.warning("%s; the zone stays as it is", self.zone_problem)
            self._pain("gateway.zone", ZONE_PAIN, self.zone_problem)
            return
        self.zone = zone
        self.zone_version = policy.version
        self.zone_problem = None
        self.gateway.set_zone(zone)
        if self._rebind is not None:
            self._rebind()
        log.info(
            "zone epoch %d installed from policy v%d (%d filter(s))",
            zone.epoch,
            policy.version,
            len(zone.filters),
        )

    # -- quarantine: events, proposals, quorum ----------------------------------------------

    def _drain_events(self) -> None:
        for event in self.gateway.pop_events():
            self._on_event(event)

    def _on_event(self, event: ZombieEvent) -> None:
        if event.kind == "quarantined":
            log.warning("quarantined %s: %s", event.peer, event.reason)
            self._pain(
                f"gateway.quarantine.{event.peer}",
                QUARANTINE_PAIN,
                f"peer {event.peer} quarantined: {event.reason}",
            )
        else:
            log.info("released %s from quarantine (%s)", event.peer, event.reason)
        self._wake.set()  # our proposal may change

    def own_proposal(self) -> tuple[tuple[str, str, int, int], ...]:
        """What this node proposes: the peers it quarantined itself (not by quorum)."""
        local = [
            (q.peer, q.reason, q.since_ms, q.until_ms)
            for q in self.gateway.detector.quarantined()
            if q.reason != "mesh-quorum"
        ]
        return tuple(sorted(local)[:MAX_PROPOSED])

    def proposal_blob(self, proposal: tuple[tuple[str, str, int, int], ...]) -> bytes:
        """The signed register value for ``{node}/quarantine`` (docs/protocol.md §5)."""
        assert self._clock_now is not None
        body = {"node": self.node, "peers": [list(p) for p in proposal]}
        return sign_envelope(
            cbor_dumps(body),
            self.node_key,
            hlc=self._clock_now(),
            kind=PROPOSAL_KIND,
            nonce=self._randbytes(16),
            max_size=MAX_PROPOSAL_BYTES,
        )

    def on_proposal(self, origin: str, value: Any) -> None:
        """A peer's ``{origin}/quarantine`` register changed in the mesh document."""
        if origin == self.node:
            return
        if not isinstance(value, bytes) or len(value) > MAX_PROPOSAL_BYTES:
            self._proposal_counts["malformed"] += 1
            return
        self._pending.pop(origin, None)
        self._pending[origin] = value
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)
            self._proposal_counts["dropped"] += 1
        self._check_pending()

    def _check_pending(self) -> None:
        for origin, blob in list(self._pending.items()):
            verdict = self._verify_proposal(origin, blob)
            if verdict == "wait":
                continue
            del self._pending[origin]
            self._proposal_counts[verdict] += 1
        self._apply_quorum()

    def _verify_proposal(self, origin: str, blob: bytes) -> str:
        info = self._peers.get(origin)
        if info is None:
            return "wait"  # the proposer's presence (its key) has not arrived yet
        try:
            envelope = decode_envelope(blob, max_size=MAX_PROPOSAL_BYTES)
            if envelope.kind != PROPOSAL_KIND or envelope.encrypted:
                return "malformed"
            envelope.verify(info.public_key)
        except WireError:
            return "bad-signature"
        except ValueError:
            return "malformed"
        if not self.gateway.admits(envelope.kid):
            return "not-in-zone"
        peers_until = _parse_proposal(envelope.payload, origin)
        if peers_until is None:
            return "malformed"
        old = self._proposals.get(origin)
        if old is not None and envelope.hlc <= old.hlc:
            return "stale"
        self._proposals.pop(origin, None)
        self._proposals[origin] = _Proposal(envelope.hlc, peers_until)
        while len(self._proposals) > MAX_PROPOSERS:
            self._proposals.popitem(last=False)
        return "accepted"

    def proposals(self, now_ms: int | None = None) -> dict[str, list[str]]:
        """Peer -> the proposers (verified, unexpired, not themselves quarantined)."""
        now = self._wall_clock() if now_ms is None else now_ms
        detector = self.gateway.detector
        out: dict[str, list[str]] = {}
        for proposer, proposal in self._proposals.items():
            if detector.is_quarantined(proposer, now):
                continue
            for peer, until in proposal.peers.items():
                if until > now and peer != proposer:
                    out.setdefault(peer, []).append(proposer)
        return {peer: sorted(names) for peer, names in sorted(out.items())}

    def _apply_quorum(self) -> None:
        if self.quorum < 1:
            return
        now = self._wall_clock()
        detector = self.gateway.detector
        for peer, proposers in self.proposals(now).items():
            if (
                len(proposers) >= self.quorum
                and peer != self.node
                and not detector.is_quarantined(peer, now)
            ):
                detector.quarantine(peer, "mesh-quorum", now)
        self._drain_events()

    # -- the writer ---------------------------------------------------------------------

    async def run(self, put: Callable[[str, Any], Awaitable[None]]) -> None:
        """Keep ``{node}/quarantine`` current (through ``put``) and the policy file on disk.

        Also ticks every second: lifts expired quarantines and retries
        proposals whose proposer's presence had not arrived.
        """
        while True:
            with trio.move_on_after(TICK_S):
                await self._wake.wait()
            self._wake = trio.Event()
            self.gateway.detector.expire(self._wall_clock())
            self._drain_events()
            if self._pending:
                self._check_pending()
            if self._pins_dirty:
                self._pins_dirty = False
                pins = cbor_dumps(dict(self._pins))
                try:
                    await trio.to_thread.run_sync(_write_atomic, self._pins_path, pins)
                except OSError as exc:
                    log.warning("cannot keep the key pins in %s: %s", self._pins_path, exc)
            document, self._persist = self._persist, None
            if document is not None:
                try:
                    await trio.to_thread.run_sync(_write_atomic, self._policy_path, document)
                except OSError as exc:
                    log.warning("cannot keep the policy in %s: %s", self._policy_path, exc)
            proposal = self.own_proposal()
            if proposal != self._own_proposal:
                self._own_proposal = proposal
                await put(quarantine_key(self.node), self.proposal_blob(proposal))

    # -- reporting ----------------------------------------------------------------------

    def status(self) -> GatewayStatus:
        """The status's top-level ``gateway`` section.

        Raises :class:`~vsm_edge.agent.StatusError` if the gateway's statistics
        (a dict from vsm_edge.models) lost a counter.
        """
        counts = GatewayCounts.from_json(self.gateway.statistics(), "gateway")
        state = self.arbitrator_state
        zone = self.zone
        return GatewayStatus(
            allow=counts.allow,
            deny=counts.deny,
            maybe=counts.maybe,
            reasons=counts.reasons,
            quarantined=counts.quarantined,
            peers=counts.peers,
            # True while MAYBE cases go to a model (loaded, or checked and loaded on the
            # first MAYBE).
            arbitrator=state != "unavailable",
            arbitrator_state=state,
            arbitrator_error=self.arbitrator_error,
            zone=self.mode,
            zone_policy=(
                None
                if zone is None
                else ZonePolicyStatus(
                    version=self.zone_version,
                    epoch=zone.epoch,
                    filters=len(zone.filters),
                    bits=sum(f.num_bits for f in zone.filters),
                )
            ),
            zone_problem=self.zone_problem,
            quarantine=tuple(
                QuarantineStatus(q.peer, q.reason, q.since_ms, q.until_ms)
                for q in self.gateway.detector.quarantined()
            ),
            proposals={peer: tuple(names) for peer, names in self.proposals().items()},
            proposal_checks=dict(self._proposal_counts),
            retained_refused=dict(self._retained),
        )

    def _pain(self, source: str, intensity: float, reason: str) -> None:
        runtime = self._runtime
        if runtime is None:
            return
        try:
            runtime.raise_signal(source[:128], intensity, reason)
        except SignalError as exc:  # a peer name the signal grammar refuses
            log.warning("could not raise %s: %s", source, exc)


def _parse_proposal(payload: bytes, origin: str) -> dict[str, int] | None:
    try:
        body = cbor_loads(payload, max_size=MAX_PROPOSAL_BYTES)
    except WireError:
        return None
    if not isinstance(body, dict) or set(body) != {"node", "peers"} or body["node"] != origin:
        return None
    peers = body["peers"]
    if not isinstance(peers, list) or len(peers) > MAX_PROPOSED:
        return None
    out: dict[str, int] = {}
    for item in peers:
        if not (isinstance(item, list) and len(item) == 4):
            return None
        peer, reason, since, until = item
        if not (
            isinstance(peer, str)
            and 0 < len(peer) <= 128
            and isinstance(reason, str)
            and len(reason) <= 64
            and type(since) is int
            and type(until) is int
            and 0 <= since <= until < 1 << 48
        ):
            return None
        out[peer] = until
    return out


def _read_secret(name: str, path: Path) -> MeshKey:
    try:
        return load_mesh_key(path)
    except (SyncError, ValueError) as exc:
        raise AgentError(f"security.{name}: {exc}") from None
    except OSError as exc:
        raise AgentError(f"security.{name}: cannot read {path}: {exc.strerror or exc}") from None


def _read_pins(path: Path) -> OrderedDict[str, bytes]:
    """The node -> key id pins kept from earlier runs (blocking). An unreadable
    file is logged and starts empty: pins are a defence, not data."""
    try:
        raw = cbor_loads(path.read_bytes(), max_size=1 << 20)
    except FileNotFoundError:
        return OrderedDict()
    except (OSError, WireError) as exc:
        log.warning("cannot read the key pins in %s (%s); starting without", path, exc)
        return OrderedDict()
    pins: OrderedDict[str, bytes] = OrderedDict()
    if isinstance(raw, dict):
        for node, kid in raw.items():
            if isinstance(node, str) and len(node) <= 64 and isinstance(kid, bytes) and kid:
                pins[node] = kid
    return pins


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
