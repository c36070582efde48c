"""Peer discovery, the pure part: the DNS-SD TXT record, the peer table, broker choice.

No I/O and no Trio here: the zeroconf adapter (``_mdns.py``) and the in-memory
fake (``_discovery_fake.py``) feed observations in and take events and query
decisions out, with time passed as an argument.

Theory of operation
-------------------
A node advertises ``<node>@<mesh>._vsm-edge._tcp.local.`` with a TXT record of
short keys (see :class:`Advertisement`). Peers of the same mesh go into a
:class:`PeerTable` keyed by node id.

*Liveness.* python-zeroconf keeps PTR records for at least 1125 s whatever
TTL the peer sent, and sends no refresh queries for SRV/TXT records, so its
browser would report a host that vanished without a goodbye (power cut, cable
pulled) only after ~19 minutes. The table therefore keeps its own
``last_seen`` per peer, bumped by every record of the peer that arrives. Every
``refresh_interval`` (jittered by the adapter) :meth:`PeerTable.tick` says
whether to send one multicast PTR query *without* known answers, so every
peer answers (RFC 6762 §5.2's continuous querying, answered with PTR + SRV +
TXT + A). Answers are multicast, so one node's query refreshes every node's
view; a node skips its query when every peer it remembers was heard within
the interval (so a quiet mesh sends about two queries per interval in all,
not one per node), but queries at least every ``rescan_interval``. A peer not
heard for ``gone_after`` is reported gone; a goodbye (TTL 0) reports it at
once. Gone peers are remembered for ``forget_after`` and keep the node
querying, which is how a healed partition is found again: the side that
remembers the other queries, the other side answers.

*A goodbye ends a run.* A node sends goodbyes only when it stops, and every
run carries a fresh run stamp in its TXT record, so a record that arrives
after the goodbye with the *same* stamp is late, never news: typically an
answer the departing node had queued before its goodbye and sent after it.
Receivers drop the goodbye's two repetitions as duplicates (python-zeroconf
ignores a packet seen in the last 800 ms), so such a record would otherwise
bring the peer back until ``gone_after``. The table remembers the run that
said goodbye and ignores its records (counted as ``stale``); a restart has a
new stamp and is heard at once. A peer without a run stamp cannot be told
apart from its successor and is heard again, as before the stamp.

*Events* are level-triggered: the table records which peers changed, and
:meth:`PeerTable.next_event` reports the difference between what the consumer
last saw and what is true now (appeared / updated / gone). A consumer that
falls behind sees the net change, never a queue that grows without bound.

Why one module: the TXT record, the peer table and the broker choice are
the one pure state the adapter and the fake both feed.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, Protocol

from ._errors import DiscoveryError, TxtRecordError
from ._name_claim import RUN_NONCE_BYTES, RunStamp

if TYPE_CHECKING:
    import trio

__all__ = [
    "MAX_TXT_BYTES",
    "MQTT_SERVICE_TYPE",
    "PROTOCOL_VERSION",
    "RECOMMENDED_TXT_BYTES",
    "SERVICE_TYPE",
    "Advertisement",
    "BrokerCandidate",
    "Discovery",
    "DiscoveryStatistics",
    "DiscoveryTiming",
    "Peer",
    "PeerEvent",
    "PeerEventKind",
    "PeerTable",
    "TickResult",
    "broker_url",
    "choose_broker",
    "decode_txt",
    "encode_txt",
]

SERVICE_TYPE: Final = "_vsm-edge._tcp.local."
MQTT_SERVICE_TYPE: Final = "_mqtt._tcp.local."
PROTOCOL_VERSION: Final = 1
# RFC 6763 §6.2: keep the whole TXT record under 200 bytes when possible; up
# to 400 is fine; above 1300 it may not fit one packet. We refuse above 400.
RECOMMENDED_TXT_BYTES: Final = 200
MAX_TXT_BYTES: Final = 400
MAX_TXT_STRING: Final = 255  # one length byte
MAX_ID_CHARS: Final = 64
MAX_KEY_ID_BYTES: Final = 64
MAX_BROKER_URL: Final = 200
BROKER_SCHEMES: Final = ("mqtt", "mqtts", "ws", "wss")

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_URL = re.compile(r"(mqtts?|wss?)://[!-~]+")


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise TxtRecordError(
            f"{what} must be 1..{MAX_ID_CHARS} URL-safe characters [A-Za-z0-9_-], got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True)
class Advertisement:
    """What a node tells the LAN about itself (the TXT record's content).

    TXT keys: ``v`` protocol version, ``n`` node id, ``k`` key id (base64url,
    unpadded), ``m`` mesh, ``z`` zone, ``b`` broker URL (optional), and the
    run stamp (see ``_name_claim.py``): ``t`` start time in Unix ms and ``r``
    nonce in hex, together or not at all. ``run`` is None until the adapter
    stamps the advertisement when it starts. Raises :class:`TxtRecordError`
    when a field is invalid or the record would pass :data:`MAX_TXT_BYTES`.
    """

    node: str
    key_id: bytes
    mesh: str
    zone: str
    broker: str | None = None
    version: int = PROTOCOL_VERSION
    run: RunStamp | None = None

    def __post_init__(self) -> None:
        _check_id(self.node, "node id")
        _check_id(self.mesh, "mesh id")
        _check_id(self.zone, "zone id")
        if not isinstance(self.key_id, bytes) or not 1 <= len(self.key_id) <= MAX_KEY_ID_BYTES:
            raise TxtRecordError(f"key id must be 1..{MAX_KEY_ID_BYTES} bytes")
        if self.broker is not None and (
            len(self.broker) > MAX_BROKER_URL or not _URL.fullmatch(self.broker)
        ):
            raise TxtRecordError(
                f"broker must be an mqtt://, mqtts://, ws:// or wss:// URL of at most "
                f"{MAX_BROKER_URL} printable ASCII characters, got {self.broker[:60]!r}"
            )
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not 1 <= self.version <= 65535
        ):
            raise TxtRecordError(f"protocol version must be in 1..65535, got {self.version!r}")
        if self.run is not None and not isinstance(self.run, RunStamp):
            raise TxtRecordError(f"run must be a RunStamp or None, got {self.run!r}")
        if len(self.instance.encode()) > 63:
            raise TxtRecordError(
                f"instance name {self.instance!r} is longer than a DNS label (63 bytes)"
            )
        encode_txt(self)  # raises when the record is too large

    @property
    def instance(self) -> str:
        """The DNS-SD instance label: ``<node>@<mesh>`` (unique per mesh)."""
        return f"{self.node}@{self.mesh}"

    @property
    def service_name(self) -> str:
        return f"{self.instance}.{SERVICE_TYPE}"

    def pairs(self) -> list[tuple[str, str]]:
        pairs = [
            ("v", str(self.version)),
            ("n", self.node),
            ("k", base64.urlsafe_b64encode(self.key_id).rstrip(b"=").decode("ascii")),
            ("m", self.mesh),
            ("z", self.zone),
        ]
        if self.broker is not None:
            pairs.append(("b", self.broker))
        if self.run is not None:
            pairs.append(("t", str(self.run.started_ms)))
            pairs.append(("r", self.run.nonce.hex()))
        return pairs


def encode_txt(adv: Advertisement) -> bytes:
    """The TXT record's wire bytes (RFC 6763 §6: length-prefixed ``key=value`` strings)."""
    out = bytearray()
    for key, value in adv.pairs():
        item = f"{key}={value}".encode()
        if len(item) > MAX_TXT_STRING:
            raise TxtRecordError(f"TXT entry {key}= is {len(item)} bytes (> {MAX_TXT_STRING})")
        out.append(len(item))
        out += item
    if len(out) > MAX_TXT_BYTES:
        raise TxtRecordError(f"TXT record of {len(out)} bytes exceeds {MAX_TXT_BYTES}")
    return bytes(out)


def _split_txt(data: bytes) -> dict[str, bytes | None]:
    if len(data) > MAX_TXT_BYTES:
        raise TxtRecordError(f"TXT record of {len(data)} bytes exceeds {MAX_TXT_BYTES}")
    items: dict[str, bytes | None] = {}
    i = 0
    while i < len(data):
        n = data[i]
        i += 1
        if i + n > len(data):
            raise TxtRecordError("TXT record is truncated")
        item = data[i : i + n]
        i += n
        if not item:
            continue  # an empty string is allowed (RFC 6763 §6.1)
        key_bytes, eq, value = item.partition(b"=")
        if not key_bytes or any(b < 0x20 or b > 0x7E for b in key_bytes):
            raise TxtRecordError("TXT key is empty or not printable ASCII")
        key = key_bytes.decode("ascii").lower()  # keys are case-insensitive (§6.4)
        if key not in items:  # only the first occurrence counts (§6.4)
            items[key] = value if eq else None
    return items


def decode_txt(data: bytes) -> Advertisement:
    """Parse a peer's TXT record strictly; raises :class:`TxtRecordError` (only).

    Unknown keys are ignored (forward compatibility); repeated keys count
    once (the first, RFC 6763 §6.4); our keys must all be present and valid,
    except ``b`` and the run stamp ``t``/``r`` (both or neither), which are
    optional.
    """
    items = _split_txt(data)

    def text(key: str) -> str:
        value = items.get(key)
        if value is None:
            raise TxtRecordError(f"TXT key {key!r} is missing or has no value")
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            raise TxtRecordError(f"TXT key {key!r} is not ASCII") from None

    version_text = text("v")
    if not version_text.isdigit() or len(version_text) > 5:
        raise TxtRecordError(f"TXT v={version_text[:10]!r} is not a version number")
    key_text = text("k")
    if not re.fullmatch(r"[A-Za-z0-9_-]{2,86}", key_text):
        raise TxtRecordError("TXT k= is not base64url")
    try:
        key_id = base64.urlsafe_b64decode(key_text + "=" * (-len(key_text) % 4))
    except (binascii.Error, ValueError):
        raise TxtRecordError("TXT k= is not base64url") from None
    broker = text("b") if "b" in items else None
    return Advertisement(
        node=text("n"),
        key_id=key_id,
        mesh=text("m"),
        zone=text("z"),
        broker=broker,
        version=int(version_text),
        run=_decode_run(items, text),
    )


def _decode_run(items: Mapping[str, bytes | None], text: Callable[[str], str]) -> RunStamp | None:
    if "t" not in items and "r" not in items:
        return None  # a node that predates the run stamp
    if "t" not in items or "r" not in items:
        raise TxtRecordError("TXT keys t= and r= (the run stamp) come together or not at all")
    started_text = text("t")
    if not re.fullmatch(r"[0-9]{1,15}", started_text):
        raise TxtRecordError(f"TXT t={started_text[:20]!r} is not a start time in decimal ms")
    nonce_text = text("r")
    if not re.fullmatch(rf"[0-9A-Fa-f]{{{2 * RUN_NONCE_BYTES}}}", nonce_text):
        raise TxtRecordError(
            f"TXT r={nonce_text[:40]!r} is not a nonce of {2 * RUN_NONCE_BYTES} hex digits"
        )
    return RunStamp(int(started_text), bytes.fromhex(nonce_text))  # range-checked there


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as discovered: its advertisement, addresses and SRV port."""

    advertisement: Advertisement
    addresses: tuple[str, ...]
    port: int
    instance: str

    @property
    def node(self) -> str:
        return self.advertisement.node


class PeerEventKind(enum.Enum):
    APPEARED = "appeared"
    UPDATED = "updated"
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class PeerEvent:
    """A change in the set of live peers. For GONE, ``peer`` is the last known state."""

    kind: PeerEventKind
    peer: Peer


@dataclass(frozen=True, slots=True)
class DiscoveryTiming:
    """Timers of the peer table, in seconds (see the module docstring)."""

    refresh_interval: float = 30.0
    gone_after: float = 95.0
    rescan_interval: float = 300.0
    forget_after: float = 3600.0
    max_peers: int = 256

    def __post_init__(self) -> None:
        if not self.refresh_interval > 0:
            raise ValueError("refresh_interval must be positive")
        if not self.gone_after > self.refresh_interval * 1.2:
            raise ValueError("gone_after must exceed refresh_interval * 1.2 (the jitter)")
        if not self.rescan_interval >= self.refresh_interval:
            raise ValueError("rescan_interval must be at least refresh_interval")
        if not self.forget_after >= self.gone_after:
            raise ValueError("forget_after must be at least gone_after")
        if self.max_peers < 1:
            raise ValueError("max_peers must be positive")


@dataclass(frozen=True, slots=True)
class DiscoveryStatistics:
    live: int
    gone: int
    heard: int
    queries: int
    skipped_queries: int
    goodbyes: int
    stale: int  # records of a run that had said goodbye, ignored
    expired: int
    foreign_mesh: int
    rejected: int
    overflow: int
    events: int
    last_error: str = ""


@dataclass(slots=True)
class _Entry:
    peer: Peer
    last_seen: float
    gone_at: float | None = None
    ended: RunStamp | None = None  # the run that said goodbye; its records are late


@dataclass(frozen=True, slots=True)
class TickResult:
    query: bool
    gone: tuple[str, ...] = field(default=())


class PeerTable:
    """The set of peers of one mesh, fed by observations; pure and deterministic."""

    def __init__(self, own: Advertisement, timing: DiscoveryTiming | None = None) -> None:
        self.own = own
        self.timing = timing or DiscoveryTiming()
        self._entries: dict[str, _Entry] = {}  # by node id
        self._by_instance: dict[str, str] = {}  # instance -> node id
        self._delivered: dict[str, Peer] = {}
        self._dirty: dict[str, None] = {}  # insertion-ordered set
        self._last_query: float | None = None
        self._heard = self._queries = self._skipped = self._goodbyes = self._stale = 0
        self._expired = self._foreign = self._rejected = self._overflow = self._events = 0
        self._last_error = ""

    # -- observations ----------------------------------------------------------

    def heard(self, peer: Peer, now: float) -> None:
        """A resolved peer record arrived (announcement, answer or update)."""
        adv = peer.advertisement
        if adv.node == self.own.node or peer.instance == self.own.instance:
            return
        if adv.mesh != self.own.mesh:
            self._foreign += 1
            return
        entry = self._entries.get(adv.node)
        if entry is not None and entry.ended is not None and adv.run == entry.ended:
            self._stale += 1
            return
        self._heard += 1
        if entry is None:
            if len(self._entries) >= self.timing.max_peers:
                self._overflow += 1
                return
            self._entries[adv.node] = _Entry(peer, now)
        else:
            old_instance = entry.peer.instance
            if old_instance != peer.instance:
                self._by_instance.pop(old_instance, None)
            changed = entry.gone_at is not None or entry.peer != peer
            entry.peer, entry.last_seen, entry.gone_at = peer, now, None
            if not changed:
                return
        self._by_instance[peer.instance] = adv.node
        self._dirty[adv.node] = None

    def seen(self, instance: str, now: float) -> bool:
        """Some record of ``instance`` arrived. False when it needs resolving
        (unknown or gone): then resolve it and call :meth:`heard`."""
        node = self._by_instance.get(instance)
        entry = self._entries.get(node) if node is not None else None
        if entry is None or entry.gone_at is not None:
            return False
        entry.last_seen = max(entry.last_seen, now)
        return True

    def goodbye(self, instance: str, now: float) -> None:
        """The peer withdrew its service (TTL 0 records): it is gone now, and
        later records of the same run are ignored (see the module docstring)."""
        node = self._by_instance.get(instance)
        entry = self._entries.get(node) if node is not None else None
        if node is None or entry is None:
            return
        entry.ended = entry.peer.advertisement.run
        if entry.gone_at is not None:
            return
        self._goodbyes += 1
        entry.gone_at = now
        self._dirty[node] = None

    def rejected(self, instance: str, reason: str) -> None:
        """A record of ``instance`` could not be parsed (counted; the peer is ignored)."""
        self._rejected += 1
        self._last_error = f"{instance}: {reason}"[:200]

    # -- time ---------------------------------------------------------------------

    def tick(self, now: float) -> TickResult:
        """Expire silent peers, forget old ones, and decide whether to query."""
        t = self.timing
        gone: list[str] = []
        for node, entry in list(self._entries.items()):
            if entry.gone_at is None and now - entry.last_seen > t.gone_after:
                entry.gone_at = now
                self._expired += 1
                self._dirty[node] = None
                gone.append(node)
            elif entry.gone_at is not None and now - entry.gone_at > t.forget_after:
                del self._entries[node]
                if self._by_instance.get(entry.peer.instance) == node:
                    del self._by_instance[entry.peer.instance]
        stale = any(now - e.last_seen >= t.refresh_interval for e in self._entries.values())
        due = self._last_query is None or now - self._last_query >= t.rescan_interval
        if stale or due:
            self._last_query = now
            self._queries += 1
            return TickResult(True, tuple(gone))
        self._skipped += 1
        return TickResult(False, tuple(gone))

    # -- what callers read --------------------------------------------------------

    def next_event(self) -> PeerEvent | None:
        """The next change the consumer has not seen, or None."""
        while self._dirty:
            node = next(iter(self._dirty))
            del self._dirty[node]
            entry = self._entries.get(node)
            current = entry.peer if entry is not None and entry.gone_at is None else None
            previous = self._delivered.get(node)
            if previous is None and current is not None:
                event = PeerEvent(PeerEventKind.APPEARED, current)
            elif previous is not None and current is None:
                event = PeerEvent(PeerEventKind.GONE, previous)
            elif previous is not None and current is not None and previous != current:
                event = PeerEvent(PeerEventKind.UPDATED, current)
            else:
                continue
            if current is None:
                del self._delivered[node]
            else:
                self._delivered[node] = current
            self._events += 1
            return event
        return None

    def peers(self) -> Mapping[str, Peer]:
        """The live peers by node id (a read-only snapshot)."""
        return MappingProxyType({n: e.peer for n, e in self._entries.items() if e.gone_at is None})

    def live_peer(self, instance: str) -> Peer | None:
        """The live peer advertised as ``instance``, or None (unknown or gone)."""
        node = self._by_instance.get(instance)
        entry = self._entries.get(node) if node is not None else None
        if entry is None or entry.gone_at is not None:
            return None
        return entry.peer

    def statistics(self) -> DiscoveryStatistics:
        live = sum(1 for e in self._entries.values() if e.gone_at is None)
        return DiscoveryStatistics(
            live=live,
            gone=len(self._entries) - live,
            heard=self._heard,
            queries=self._queries,
            skipped_queries=self._skipped,
            goodbyes=self._goodbyes,
            stale=self._stale,
            expired=self._expired,
            foreign_mesh=self._foreign,
            rejected=self._rejected,
            overflow=self._overflow,
            events=self._events,
            last_error=self._last_error,
        )


# -- brokers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerCandidate:
    """An MQTT broker seen as ``_mqtt._tcp``: SRV priority/weight, TXT ``m`` (mesh) if any."""

    instance: str
    addresses: tuple[str, ...]
    port: int
    priority: int = 0
    weight: int = 0
    mesh: str | None = None
    scheme: str = "mqtt"

    @property
    def url(self) -> str:
        return broker_url(self.addresses, self.port, self.scheme)


def broker_url(addresses: Sequence[str], port: int, scheme: str = "mqtt") -> str:
    """``scheme://address:port`` with the first IPv4 address (else IPv6 in brackets).

    Raises :class:`DiscoveryError` when there is no usable address or port.
    """
    if scheme not in BROKER_SCHEMES:
        raise DiscoveryError(f"unsupported broker scheme {scheme!r}")
    if not 0 < port < 65536:
        raise DiscoveryError(f"broker port {port} is not a TCP port")
    parsed = []
    for a in addresses:
        try:
            parsed.append(ipaddress.ip_address(a))
        except ValueError:
            continue
    v4 = [a for a in parsed if a.version == 4 and not a.is_unspecified]
    v6 = [a for a in parsed if a.version == 6 and not a.is_unspecified]
    if v4:
        return f"{scheme}://{v4[0]}:{port}"
    if v6:
        return f"{scheme}://[{v6[0]}]:{port}"
    raise DiscoveryError("the broker advertisement has no usable address")


def choose_broker(candidates: Iterable[BrokerCandidate], mesh: str) -> BrokerCandidate | None:
    """The best broker: one advertised for our mesh first, then a mesh-less one;
    among those the lowest SRV priority, then the highest weight, then the name.
    Brokers advertised for *another* mesh are never chosen."""
    usable = []
    for c in candidates:
        if c.mesh not in (None, mesh):
            continue
        try:
            c.url  # noqa: B018 - raises when it has no address
        except DiscoveryError:
            continue
        usable.append(c)
    if not usable:
        return None
    return min(usable, key=lambda c: (c.mesh != mesh, c.priority, -c.weight, c.instance))


# -- the service interface ---------------------------------------------------------


class Discovery(Protocol):
    """Finding peers and a broker on the LAN: one interface, several implementations.

    ``ZeroconfDiscovery`` (mDNS) and ``MemoryDiscovery`` (an in-memory fake
    for tests of callers) implement it. ``run`` is started once with
    ``await nursery.start(discovery.run)``: it advertises this node, browses
    for peers of the same mesh and delivers :class:`PeerEvent` values on the
    bounded :attr:`events` channel until cancelled (then withdraws the
    advertisement and closes the channel).
    """

    @property
    def events(self) -> trio.MemoryReceiveChannel[PeerEvent]: ...

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def peers(self) -> Mapping[str, Peer]: ...

    async def find_broker(self) -> str:
        """The URL of the best MQTT broker advertised as ``_mqtt._tcp``.

        Waits until one is seen (bound the wait with ``trio.fail_after``),
        lets competing brokers answer for a short settle time, and returns
        :func:`choose_broker`'s pick. Needs ``run`` started, else raises
        :class:`DiscoveryError`.
        """
        ...

    def statistics(self) -> DiscoveryStatistics: ...
