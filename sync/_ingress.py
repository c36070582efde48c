"""Ingress: each channel's rules as a table, and the pure core that applies them.

Theory of operation
-------------------
A message arrives on ``vsm/{mesh}/{channel}/{node}`` (or ``vsm/{mesh}/policy``).
What each channel may carry and how its sender is found is one row of
:data:`CHANNELS` (docs/protocol.md §4.1)::

    channel   kinds            {node} names   retained  sender's key  CPU budget     handler
    presence  presence         the sender     yes       in the body   -              peer table
    d         delta            the sender     no        bound to kid  delta          gossip
    sv        digest           the sender     no        bound to kid  charged only   gossip
    to        delta, digest,   the addressee  no        bound to kid  all but        gossip
              repair, chunk                                           digest
    alg       alg              the sender     yes       bound to kid  -              application
    policy    policy           (no segment)   yes       bound to kid  -              application
    cmd       cmd              the addressee  no        bound to kid  -              application
    cmdr      cmdr             the addressee  no        bound to kid  -              application

The gossip channels are *charged*: the time spent on each message is taken
from its sender's CPU budget; the kinds listed are refused while the sender
is past it.

:meth:`Ingress.admit` runs the checks in this order; the first that refuses
decides, and its reason is what the replicator counts (docs/protocol.md §4.4):

1. the topic is under ``vsm/{mesh}/``, else ``foreign-topic``;
2. a topic whose ``{node}`` names us as its sender is our own broadcast,
   echoed by the broker: ignored (:data:`ECHO`); a presence there that is
   not the one we last sent is somebody else's (:data:`OVERWRITTEN`: the
   replicator puts ours back);
3. the channel has a row, and a ``{node}`` segment exactly when the row says
   so, else ``unknown-channel``;
4. an empty payload is a cleared retained message (:data:`CLEARED`) or, live,
   ``malformed-envelope``;
5. the envelope decodes (outline first, strict, bounded), else
   ``malformed-envelope``;
6. its kind is one the row carries, else ``unexpected-kind``;
7. a retained message only where the row allows it, else
   ``retained:unexpected``;
8. the sender and its key. A presence carries its key: its body must parse,
   name the mesh and the topic's node, carry a key whose id is the ``kid``
   and an incarnation at most :data:`MAX_INCARNATION_AHEAD_MS` ahead of our
   wall clock, else ``bad-presence``. Any other message's ``kid`` must be
   bound to a node by that node's presence, else ``unknown-key``, and where
   ``{node}`` names the sender, to that node, else ``topic-key-mismatch``;
9. the signature is verified with that key;
10. the ingress check (the gateway) is asked, told whether the signature
    held; its reason refuses. Without one, a bad signature is refused
    ``bad-signature``;
11. a metered kind from a sender past its CPU budget is refused
    ``cpu-budget``, unless it may be the answer to our own repair.

What passes is :class:`Admitted`. The replicator then runs the HLC receive
rule on live messages (``clock-drift``; retained ones are old by design),
hands a presence to its peer table, and has :meth:`Ingress.open` decrypt and
decode any other body (``undecodable-payload`` when it raises) before
dispatching it.

The core does no I/O and reads no clock: times are arguments, the peer table
is read through the lookups it was given, and its only state is the
per-sender CPU budget (:class:`CpuBudget`), which the replicator charges with
the time it spent on each admitted gossip message.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol

from ._cbor import loads
from ._envelope import Envelope, decode_envelope
from ._errors import SignatureError, WireError
from ._keys import MeshKey, derive_kid

__all__ = [
    "CHANNELS",
    "CLEARED",
    "ECHO",
    "MAX_INCARNATION_AHEAD_MS",
    "OVERWRITTEN",
    "Admitted",
    "ChannelRule",
    "CpuBudget",
    "Ignored",
    "Inbound",
    "Ingress",
    "IngressCheck",
    "KeyHolder",
    "Refused",
]

#: How far ahead of our wall clock a presence's incarnation (an HLC) may be.
MAX_INCARNATION_AHEAD_MS: Final = 60_000
_PRESENCE_MAX: Final = 4096  # bytes of a presence body


@dataclass(frozen=True, slots=True)
class ChannelRule:
    """What one channel carries and how its messages are admitted (a row of :data:`CHANNELS`).

    ``kinds``: the envelope kinds it carries. ``node``: what the topic's
    ``{node}`` segment names (``"sender"``, ``"addressee"``), or None when the
    topic has none. ``retained``: whether a retained message is legitimate
    there. ``key``: where the sender's public key comes from (``"carried"`` in
    the body, a presence; ``"bound"`` to the ``kid`` by an earlier presence).
    ``handler``: who takes an admitted message. ``charged``: whether handling
    it is charged to the sender's CPU budget; ``metered``: the kinds refused
    while the sender is past that budget.
    """

    kinds: frozenset[str]
    node: Literal["sender", "addressee"] | None
    retained: bool
    key: Literal["carried", "bound"]
    handler: Literal["presence", "gossip", "app"]
    charged: bool = False
    metered: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.metered <= self.kinds or (self.metered and not self.charged):
            raise ValueError("metered kinds must be carried kinds of a charged channel")


#: The channels of docs/protocol.md §4.1, by the topic segment after ``vsm/{mesh}/``.
CHANNELS: Final[Mapping[str, ChannelRule]] = MappingProxyType(
    {
        "presence": ChannelRule(
            kinds=frozenset({"presence"}),
            node="sender",
            retained=True,
            key="carried",
            handler="presence",
        ),
        "d": ChannelRule(
            kinds=frozenset({"delta"}),
            node="sender",
            retained=False,
            key="bound",
            handler="gossip",
            charged=True,
            metered=frozenset({"delta"}),
        ),
        # Digests are never refused for CPU: they are how anti-entropy repairs the rest.
        "sv": ChannelRule(
            kinds=frozenset({"digest"}),
            node="sender",
            retained=False,
            key="bound",
            handler="gossip",
            charged=True,
        ),
        "to": ChannelRule(
            kinds=frozenset({"delta", "digest", "repair", "chunk"}),
            node="addressee",
            retained=False,
            key="bound",
            handler="gossip",
            charged=True,
            metered=frozenset({"delta", "repair", "chunk"}),
        ),
        "alg": ChannelRule(
            kinds=frozenset({"alg"}),
            node="sender",
            retained=True,
            key="bound",
            handler="app",
        ),
        "policy": ChannelRule(
            kinds=frozenset({"policy"}),
            node=None,
            retained=True,
            key="bound",
            handler="app",
        ),
        # Remote commands to {node} and their outcomes back to the issuer
        # {node} (docs/protocol.md §6): never retained, a command is live or nothing.
        "cmd": ChannelRule(
            kinds=frozenset({"cmd"}),
            node="addressee",
            retained=False,
            key="bound",
            handler="app",
        ),
        "cmdr": ChannelRule(
            kinds=frozenset({"cmdr"}),
            node="addressee",
            retained=False,
            key="bound",
            handler="app",
        ),
    }
)


@dataclass(frozen=True, slots=True)
class Inbound:
    """What the ingress check is told about one verified-or-not envelope."""

    sender: str
    channel: str  # "d", "sv", "to", "presence", "alg", "policy", "cmd" or "cmdr"
    envelope: Envelope
    signature_ok: bool
    retained: bool
    size: int
    received_ms: int


class IngressCheck(Protocol):
    """The gateway: return a refusal reason, or None to let the message in."""

    def __call__(self, inbound: Inbound, /) -> str | None: ...


class KeyHolder(Protocol):
    """What the core reads of a bound node (the replicator's ``PeerInfo``)."""

    @property
    def public_key(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Refused:
    """The message is dropped; ``reason`` is counted (docs/protocol.md §4.4)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Ignored:
    """The message is dropped without a refusal: ``what`` it was (:data:`ECHO`...)."""

    what: Literal["echo", "overwritten", "cleared"]


#: Our own broadcast, echoed back by the broker.
ECHO: Final = Ignored("echo")
#: A presence on our own topic that is not the one we last sent.
OVERWRITTEN: Final = Ignored("overwritten")
#: An empty retained payload: how MQTT clears a retained message.
CLEARED: Final = Ignored("cleared")


@dataclass(frozen=True, slots=True)
class Admitted:
    """A message that passed every check of :meth:`Ingress.admit`.

    ``rule`` is its channel's row; ``inbound`` what the ingress check was
    told (sender, channel, envelope, signature, retained...); ``presence``
    the checked body of a presence (None on other channels).
    """

    rule: ChannelRule
    inbound: Inbound
    presence: dict[str, Any] | None = None


# A frozen dataclass's __init__ sets each field through object.__setattr__
# (about 0.1 us a field on CPython 3.11: a microsecond a message for Inbound
# and Admitted). What every admitted message makes is built through
# the slots' descriptors instead, as the envelope decoder does (tested equal).
_new = object.__new__
_SET_INBOUND = tuple(Inbound.__dict__[f.name].__set__ for f in fields(Inbound))
_SET_ADMITTED = tuple(Admitted.__dict__[f.name].__set__ for f in fields(Admitted))


def _make_inbound(
    sender: str,
    channel: str,
    envelope: Envelope,
    signature_ok: bool,
    retained: bool,
    size: int,
    received_ms: int,
) -> Inbound:
    inbound: Inbound = _new(Inbound)
    s_sender, s_channel, s_envelope, s_signature, s_retained, s_size, s_received = _SET_INBOUND
    s_sender(inbound, sender)
    s_channel(inbound, channel)
    s_envelope(inbound, envelope)
    s_signature(inbound, signature_ok)
    s_retained(inbound, retained)
    s_size(inbound, size)
    s_received(inbound, received_ms)
    return inbound


def _make_admitted(
    rule: ChannelRule, inbound: Inbound, presence: dict[str, Any] | None
) -> Admitted:
    admitted: Admitted = _new(Admitted)
    s_rule, s_inbound, s_presence = _SET_ADMITTED
    s_rule(admitted, rule)
    s_inbound(admitted, inbound)
    s_presence(admitted, presence)
    return admitted


# The refusals whose reason is fixed, made once.
_FOREIGN_TOPIC: Final = Refused("foreign-topic")
_UNKNOWN_CHANNEL: Final = Refused("unknown-channel")
_MALFORMED_ENVELOPE: Final = Refused("malformed-envelope")
_UNEXPECTED_KIND: Final = Refused("unexpected-kind")
_RETAINED_UNEXPECTED: Final = Refused("retained:unexpected")
_BAD_PRESENCE: Final = Refused("bad-presence")
_UNKNOWN_KEY: Final = Refused("unknown-key")
_TOPIC_KEY_MISMATCH: Final = Refused("topic-key-mismatch")
_BAD_SIGNATURE: Final = Refused("bad-signature")
_CPU_BUDGET: Final = Refused("cpu-budget")


class CpuBudget:
    """Each sender's share of a core: a token bucket of CPU seconds.

    A sender's bucket refills at ``share`` seconds per second up to
    ``burst``; :meth:`spend` takes what handling one of its messages cost (it
    may go negative). Times are seconds on any monotonic clock, passed in.
    Buckets of senders no longer ``known`` are forgotten once more than
    ``max_senders`` are kept.
    """

    def __init__(self, share: float, burst: float, max_senders: int) -> None:
        if not 0 < share <= 1 or burst <= 0 or max_senders < 1:
            raise ValueError("share must be in (0, 1], burst > 0 and max_senders >= 1")
        self.share = share
        self.burst = burst
        self.max_senders = max_senders
        self._buckets: dict[str, tuple[float, float]] = {}  # sender -> (seconds left, at)

    def left(self, sender: str, now: float) -> float:
        """The CPU seconds ``sender`` may still take at ``now`` (<= 0: past its budget)."""
        left, at = self._buckets.get(sender, (self.burst, now))
        return min(self.burst, left + (now - at) * self.share)

    def spend(self, sender: str, seconds: float, now: float, known: Container[str]) -> None:
        """Charge ``sender`` the ``seconds`` one of its messages took."""
        self._buckets[sender] = (self.left(sender, now) - seconds, now)
        if len(self._buckets) > self.max_senders:
            for name in [n for n in self._buckets if n not in known]:
                del self._buckets[name]

    def __len__(self) -> int:
        return len(self._buckets)


class Ingress:
    """The ingress checks of one node in one mesh (module doc), without I/O.

    ``node_of[kid]`` is the node a key id is bound to (absent: no presence
    seen), ``peers[node].public_key`` that bound node's key, ``awaits(node)``
    whether its direct deltas may be the answer to our repair (then they are
    never refused for CPU). ``check`` is the ingress check (the gateway), if
    any; ``mesh_key`` opens encrypted payloads; ``max_envelope`` bounds an
    envelope and its body. ``channels`` is the table, :data:`CHANNELS` unless
    a test says otherwise.
    """

    def __init__(
        self,
        mesh: str,
        node: str,
        *,
        node_of: Mapping[bytes, str],
        peers: Mapping[str, KeyHolder],
        awaits: Callable[[str], bool],
        budget: CpuBudget,
        check: IngressCheck | None = None,
        mesh_key: MeshKey | None = None,
        max_envelope: int,
        channels: Mapping[str, ChannelRule] = CHANNELS,
    ) -> None:
        self.mesh = mesh
        self.node = node
        self.prefix = f"vsm/{mesh}/"
        self.node_of = node_of
        self.peers = peers
        self.awaits = awaits
        self.budget = budget
        self.check = check
        self.mesh_key = mesh_key
        self.max_envelope = max_envelope
        self.channels = dict(channels)  # a dict: faster to read than a mapping proxy

    def admit(
        self,
        topic: str,
        payload: bytes,
        retain: bool,
        *,
        presence_sent: bytes,
        now: float,
        now_ms: int,
    ) -> Admitted | Ignored | Refused:
        """Run checks 1-11 (module doc) on one message; never raises on its content.

        ``presence_sent`` is the payload of the presence we last published;
        ``now`` the time of the CPU budget (seconds), ``now_ms`` our wall
        clock (ms: the incarnation bound and the gateway's ``received_ms``).
        """
        # One function, its steps numbered as in the module doc: every
        # message runs it, and a call per step costs ~0.1 us each.
        prefix = self.prefix  # 1.
        if not topic.startswith(prefix):
            return _FOREIGN_TOPIC
        parts = topic[len(prefix) :].split("/")
        channel = parts[0]
        topic_node = parts[1] if len(parts) == 2 else None
        rule = self.channels.get(channel)
        if topic_node == self.node and (rule is None or rule.node != "addressee"):  # 2.
            if channel == "presence" and payload != presence_sent:
                return OVERWRITTEN
            return ECHO
        if rule is None or (rule.node is None) != (topic_node is None):  # 3.
            return _UNKNOWN_CHANNEL
        if not payload:  # 4.
            return CLEARED if retain else _MALFORMED_ENVELOPE
        try:  # 5.
            envelope = decode_envelope(payload, max_size=self.max_envelope)
        except WireError:
            return _MALFORMED_ENVELOPE
        if envelope.kind not in rule.kinds:  # 6.
            return _UNEXPECTED_KIND
        if retain and not rule.retained:  # 7.
            # A retained delta, digest or repair is nobody's (§4.1): it would
            # come back at every subscription, past the replay window.
            return _RETAINED_UNEXPECTED
        presence: dict[str, Any] | None = None  # 8.
        if rule.key == "carried":
            presence = self._presence_body(envelope, now_ms)
            if presence is None or presence["node"] != topic_node:
                return _BAD_PRESENCE
            sender: str = presence["node"]
            key: bytes = presence["pk"]
        else:
            found = self.node_of.get(envelope.kid)
            if found is None:
                return _UNKNOWN_KEY  # presence not seen yet: repaired later
            if rule.node == "sender" and topic_node != found:
                return _TOPIC_KEY_MISMATCH
            sender = found
            key = self.peers[found].public_key
        try:  # 9.
            envelope.verify(key)
            signature_ok = True
        except SignatureError:
            signature_ok = False
        inbound = _make_inbound(
            sender, channel, envelope, signature_ok, retain, len(payload), now_ms
        )
        check = self.check  # 10.
        if check is not None:
            reason = check(inbound)
            if reason is not None:
                return Refused(reason)
        elif not signature_ok:
            return _BAD_SIGNATURE
        if (  # 11.
            envelope.kind in rule.metered
            and not self.awaits(sender)
            and self.budget.left(sender, now) <= 0
        ):
            return _CPU_BUDGET  # the next digest exchange repairs it
        return _make_admitted(rule, inbound, presence)

    def open(self, admitted: Admitted) -> Any:
        """The body of an admitted message: decrypted (an Encrypt0 payload,
        under the mesh key) and decoded (bounded).

        Raises :class:`WireError` when either fails (refused
        ``undecodable-payload``): a node with a mesh key accepts only
        encrypted payloads (docs/protocol.md §2.5).
        """
        plaintext = admitted.inbound.envelope.plaintext(self.mesh_key)
        return loads(plaintext, max_size=self.max_envelope)

    def _presence_body(self, envelope: Envelope, now_ms: int) -> dict[str, Any] | None:
        """The checked body of a presence (docs/protocol.md §4.2), or None."""
        if envelope.encrypted:
            return None
        try:
            body = loads(envelope.payload, max_size=_PRESENCE_MAX)
        except WireError:
            return None
        if not (
            isinstance(body, dict)
            and isinstance(body.get("node"), str)
            and isinstance(body.get("pk"), bytes)
            and len(body["pk"]) == 32
            and type(body.get("inc")) is int
            and 0 <= body["inc"] < 1 << 64
            and body.get("state") in ("online", "offline")
            and isinstance(body.get("zone", ""), str)
            and body.get("mesh") == self.mesh
        ):
            return None
        if derive_kid(body["pk"]) != envelope.kid:
            return None
        if body["inc"] >> 16 > now_ms + MAX_INCARNATION_AHEAD_MS:
            return None  # an incarnation is an HLC at start-up, never far in the future
        return body
