"""mDNS discovery with python-zeroconf, under Trio.

Threads: ``Zeroconf`` runs its own asyncio loop in its own thread
(``use_asyncio=False``), and ``ServiceBrowser`` calls its handlers from one
more thread. Nothing here blocks the Trio loop: the blocking calls (opening
the sockets, registering with its probing, resolving, unregistering with its
goodbyes, closing) run under ``trio.to_thread.run_sync``. Callbacks from
zeroconf's threads never call into Trio synchronously: they drop a note into
a small locked dict (:class:`_Bridge`, bounded by ``max_pending``; overflow
is counted) and, at most once until Trio has taken the notes, schedule a
wake-up with ``TrioToken.run_sync_soon``, which never blocks the caller. The
peer table itself is touched only by Trio tasks.

Liveness does not rely on zeroconf's browser (see ``_discovery.py``): a
:class:`zeroconf.RecordUpdateListener` notes every PTR/SRV/TXT record of our
service type that arrives, and the jittered tick sends our own PTR query
without known answers when the table asks for one.

Name conflicts (see ``_name_claim.py`` for why probing is not enough): the
advertisement is stamped with a run stamp when ``run`` starts. After
registration the node multicasts a few questions for its own TXT record (QM,
not QU: a unicast answer may be handed to another socket sharing port 5353),
and the tap watches every TXT record under our own instance name, for as long
as the node runs. A record with another run's stamp is a claim on our name:
when it wins, ``run`` withdraws our records (a goodbye for our TXT record
only; the PTR and SRV records are the winner's too) and raises
:class:`DiscoveryError`; when we win, we multicast our records again (at most
once a second) so that the other run, and every cache, hears us.

Leaving: zeroconf multicasts an answer 20-120 ms after the query (a second
later for a record it multicast within the last second), from queues it
does not empty when a service is unregistered, so an answer queued before
the goodbye can go out after it. Receivers then cache our records again and
drop the goodbye's two repetitions as duplicates of the first (zeroconf
ignores a packet it saw in the last 800 ms), so nothing removes us again.
So ``run`` withdraws on zeroconf's loop in one step: empty the answer
queues, then unregister with goodbyes. (Receivers also ignore such late
records by their run stamp: see ``_discovery.py``.)

Zeroconf names used beyond its ``__all__``: ``DNSOutgoing``, ``DNSQuestion``
and ``DNSText`` (``zeroconf._protocol.outgoing``, ``zeroconf._dns``), the
documented way to send a hand-made query or answer; ``ServiceRegistry.
async_remove`` to forget a lost name without the goodbyes ``close`` would
send; and the multicast answer queues ``Zeroconf.out_queue`` and
``out_delay_queue`` (their ``queue`` deque), emptied when leaving. The
tests exercise them.

Why one module: the zeroconf threads, the name claim's timing and the
Trio bridge share one Zeroconf instance and its shutdown order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import ifaddr
import trio
from zeroconf import (
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    ServiceBrowser,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf._dns import DNSPointer, DNSQuestion, DNSText
from zeroconf._protocol.outgoing import DNSOutgoing

from ._discovery import (
    MQTT_SERVICE_TYPE,
    SERVICE_TYPE,
    Advertisement,
    BrokerCandidate,
    DiscoveryStatistics,
    DiscoveryTiming,
    Peer,
    choose_broker,
    decode_txt,
    encode_txt,
)
from ._discovery_service import _TableService
from ._errors import DiscoveryError, TxtRecordError
from ._name_claim import MAX_STARTED_MS, RUN_NONCE_BYTES, NameClaim, RunStamp, resolve_name_claim

__all__ = ["ZeroconfDiscovery"]

_TYPE_PTR: Final = 12
_TYPE_TXT: Final = 16
_TYPE_SRV: Final = 33
_CLASS_IN: Final = 1
_FLAGS_QUERY: Final = 0x0000
_FLAGS_ANSWER: Final = 0x8400  # a response (QR), authoritative (AA)
RESOLVE_TIMEOUT_MS: Final = 2000
CLOSE_TIMEOUT_S: Final = 5.0
WITHDRAW_TIMEOUT_S: Final = 2.0  # the goodbyes take 0.25 s on an idle loop
# Own-name questions after registration: a responder multicasts a record at
# most once a second (RFC 6762 §6), so three questions a second apart let a
# rival answer at least twice.
NAME_QUERIES: Final = 3
NAME_QUERY_INTERVAL_S: Final = 1.0
DEFEND_INTERVAL_S: Final = 1.0  # our records, multicast again while a rival is heard
MAX_PENDING_CLAIMS: Final = 16  # distinct rival TXT records held for Trio at once

_Kind = Literal["seen", "added", "updated", "removed"]
_STATE_KIND: Final[dict[ServiceStateChange, _Kind]] = {
    ServiceStateChange.Added: "added",
    ServiceStateChange.Updated: "updated",
    ServiceStateChange.Removed: "removed",
}


@dataclasses.dataclass(frozen=True, slots=True)
class _Batch:
    notes: dict[tuple[str, str], _Kind]  # (service type, instance) -> what happened
    texts: dict[str, bytes]  # peer instance -> its latest TXT record
    claims: list[bytes]  # TXT records under our own name that are not ours


class _Bridge:
    """Notes from zeroconf's threads to Trio: bounded, coalesced, never blocking."""

    def __init__(self, token: trio.lowlevel.TrioToken, max_pending: int) -> None:
        self._token = token
        self._max = max_pending
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Kind] = {}
        self._texts: dict[str, bytes] = {}
        self._claims: dict[bytes, None] = {}  # a set, in order
        self._scheduled = False
        self._event = trio.Event()
        self.overflow = 0

    def note(self, service_type: str, name: str, kind: _Kind) -> None:
        """Called from any thread."""
        key = (service_type.lower(), name)
        with self._lock:
            previous = self._pending.get(key)
            if previous is None and len(self._pending) >= self._max:
                self.overflow += 1
                return
            if kind != "seen" or previous is None:  # "seen" never hides a state change
                self._pending[key] = kind
            self._wake_locked()

    def text(self, name: str, text: bytes) -> None:
        """A peer's TXT record arrived; only the latest per instance is kept (any thread)."""
        with self._lock:
            if name not in self._texts and len(self._texts) >= self._max:
                self.overflow += 1
                return
            self._texts[name] = text
            self._wake_locked()

    def claim(self, text: bytes) -> None:
        """A TXT record under our own instance name, not ours (any thread)."""
        with self._lock:
            if text not in self._claims and len(self._claims) >= MAX_PENDING_CLAIMS:
                self.overflow += 1
                return
            self._claims[text] = None
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(trio.RunFinishedError):  # Trio is gone: nothing to wake
            self._token.run_sync_soon(self._event.set)

    async def take(self) -> _Batch:
        """Wait for notes, then take them all (Trio thread)."""
        await self._event.wait()
        with self._lock:
            batch = _Batch(self._pending, self._texts, list(self._claims))
            self._pending, self._texts, self._claims = {}, {}, {}
            self._scheduled = False
            # Replaced without a checkpoint: a wake-up scheduled after this
            # point runs later in this thread and sets the new event.
            self._event = trio.Event()
        return batch


class _RecordTap(RecordUpdateListener):
    """Notes every live PTR/SRV/TXT record of our service type and hands on the
    TXT records, our own excepted (zeroconf's loop thread)."""

    def __init__(self, bridge: _Bridge, own_name: str, own_text: bytes) -> None:
        super().__init__()
        self._bridge = bridge
        self._suffix = "." + SERVICE_TYPE.lower()
        self._own_name = own_name.lower()
        self._own_text = own_text

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if record.is_expired(now):
                continue  # goodbyes reach us through the browser
            name = record.name.lower()
            if record.type == _TYPE_PTR and name == SERVICE_TYPE.lower():
                if isinstance(record, DNSPointer):
                    self._bridge.note(SERVICE_TYPE, record.alias, "seen")
            elif record.type in (_TYPE_SRV, _TYPE_TXT) and name.endswith(self._suffix):
                if isinstance(record, DNSText):
                    if name != self._own_name:
                        self._bridge.text(record.name, record.text)
                    elif record.text != self._own_text:
                        self._bridge.claim(record.text)
                self._bridge.note(SERVICE_TYPE, record.name, "seen")

    def async_update_records_complete(self) -> None:
        pass


def _interfaces(
    interfaces: Sequence[str] | Literal["all"],
) -> tuple[list[str] | InterfaceChoice, list[str]]:
    """zeroconf's interface argument, and the IPv4 addresses to advertise."""
    if interfaces == "all":
        addresses = [
            str(ip.ip)
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if isinstance(ip.ip, str) and not ipaddress.ip_address(ip.ip).is_loopback
        ]
        return InterfaceChoice.All, addresses
    if isinstance(interfaces, str) or not interfaces:
        raise DiscoveryError('interfaces must be a non-empty list of IPv4 addresses, or "all"')
    addresses = []
    for text in interfaces:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            raise DiscoveryError(f"interface address {text!r} is not an IP address") from None
        if address.version != 4 or address.is_unspecified:
            raise DiscoveryError(f"interface address {text!r}: only IPv4 unicast is supported")
        addresses.append(str(address))
    return list(addresses), addresses


class ZeroconfDiscovery(_TableService):
    """:class:`~vsm_edge.sync.Discovery` over mDNS/DNS-SD with python-zeroconf.

    ``interfaces`` is a list of this host's IPv4 addresses to use (tests:
    ``["127.0.0.1"]`` or an address inside a network namespace), or
    ``"all"`` (production only: multicast on every interface). ``port`` is
    the SRV port (the node's status port; 0 when it has none).
    ``broker_port``, when given, also advertises an MQTT broker on this host
    as ``_mqtt._tcp`` (the embedded broker). ``wall_clock`` (Unix seconds)
    stamps the run when ``run`` starts, unless ``advertisement.run`` is
    already set. Raises :class:`DiscoveryError` for bad arguments, name
    conflicts (from ``run``, also long after start: see the module docstring)
    and socket failures.
    """

    def __init__(
        self,
        advertisement: Advertisement,
        *,
        interfaces: Sequence[str] | Literal["all"],
        port: int = 0,
        broker_port: int | None = None,
        timing: DiscoveryTiming | None = None,
        event_buffer: int = 64,
        max_pending: int = 1024,
        broker_settle_s: float = 0.5,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(advertisement, timing=timing, event_buffer=event_buffer, rng=rng)
        if advertisement.run is None:  # refuse now a record that the stamp would make too large
            dataclasses.replace(advertisement, run=RunStamp(MAX_STARTED_MS, bytes(RUN_NONCE_BYTES)))
        self._zc_interfaces, self.addresses = _interfaces(interfaces)
        if not 0 <= port < 65536:
            raise DiscoveryError(f"port {port} is not a TCP port")
        if broker_port is not None and not 0 < broker_port < 65536:
            raise DiscoveryError(f"broker_port {broker_port} is not a TCP port")
        self.port = port
        self.broker_port = broker_port
        self._max_pending = max_pending
        self._broker_settle = broker_settle_s
        self._zc: Zeroconf | None = None
        self._bridge: _Bridge | None = None
        self._browsers: list[ServiceBrowser] = []
        self._broker_browser: ServiceBrowser | None = None
        self._brokers: dict[str, BrokerCandidate] = {}
        self._brokers_changed = trio.Event()
        self._inflight: set[tuple[str, str]] = set()
        self._wall_clock = wall_clock
        self._latest_txt: dict[str, bytes] = {}  # instance (lower case) -> TXT, oldest first
        self._max_latest_txt = max(max_pending, self.timing.max_peers)
        self._registered: list[ServiceInfo] = []
        self._rival_heard = trio.Event()
        self._conflict: DiscoveryError | None = None
        self._resolve_limiter = trio.CapacityLimiter(4)
        self._nursery: trio.Nursery | None = None

    def statistics(self) -> DiscoveryStatistics:
        """The table's counters; ``overflow`` also counts notes dropped by the bridge."""
        stats = self._table.statistics()
        dropped = self._bridge.overflow if self._bridge is not None else 0
        return dataclasses.replace(stats, overflow=stats.overflow + dropped)

    # -- zeroconf objects ----------------------------------------------------------

    def _server(self) -> str:
        label = f"vsm-{self.advertisement.node}-{self.advertisement.mesh}".replace("_", "-")
        return f"{label.lower()[:63]}.local."

    def _service_info(self) -> ServiceInfo:
        adv = self.advertisement
        return ServiceInfo(
            SERVICE_TYPE,
            adv.service_name,
            port=self.port,
            properties=encode_txt(adv),
            server=self._server(),
            addresses=[socket.inet_aton(a) for a in self.addresses],
        )

    def _broker_info(self) -> ServiceInfo:
        adv = self.advertisement
        mesh = f"m={adv.mesh}".encode()
        return ServiceInfo(
            MQTT_SERVICE_TYPE,
            f"{adv.instance}.{MQTT_SERVICE_TYPE}",
            port=self.broker_port,
            properties=bytes([len(mesh)]) + mesh,
            server=self._server(),
            addresses=[socket.inet_aton(a) for a in self.addresses],
        )

    def _open(self) -> Zeroconf:
        try:
            return Zeroconf(
                interfaces=self._zc_interfaces, ip_version=IPVersion.V4Only, use_asyncio=False
            )
        except OSError as exc:
            raise DiscoveryError(
                f"cannot open mDNS sockets on {self._zc_interfaces}: {exc}"
            ) from None

    @staticmethod
    def _register(zc: Zeroconf, info: ServiceInfo) -> None:
        try:
            zc.register_service(info, allow_name_change=False)
        except NonUniqueNameException:
            raise DiscoveryError(
                f"{info.name} is already advertised by another host (same node id and mesh?)"
            ) from None
        except Exception as exc:  # zeroconf raises several types; none may leak
            raise DiscoveryError(f"cannot register {info.name}: {exc!r}") from None

    def _close(self, zc: Zeroconf, browsers: list[ServiceBrowser], lost: list[ServiceInfo]) -> None:
        # Closing: nothing useful to do with an error, and the rest still needs closing.
        for browser in browsers:
            with contextlib.suppress(Exception):
                browser.cancel()
        if zc.loop is not None:
            with contextlib.suppress(Exception):
                withdrawing = asyncio.run_coroutine_threadsafe(self._withdraw(zc, lost), zc.loop)
                withdrawing.result(WITHDRAW_TIMEOUT_S)
        with contextlib.suppress(Exception):
            zc.close()  # sends goodbyes for any service still registered (a timeout above)

    @staticmethod
    async def _withdraw(zc: Zeroconf, lost: list[ServiceInfo]) -> None:
        """Stop answering, then say goodbye (on zeroconf's loop).

        Emptying the answer queues and unregistering happen in one step of
        the loop, so no answer of ours is queued in between or sent after the
        first goodbye (see the module docstring). A name another run won
        (``lost``) gets no goodbyes for our PTR and SRV records, the same as
        the winner's (they would make every peer drop the winner): only our
        TXT record, which carries our run stamp, is ours alone.
        """
        zc.out_queue.queue.clear()
        zc.out_delay_queue.queue.clear()
        if not lost:
            await zc.async_unregister_all_services()
            return
        zc.registry.async_remove(lost)
        out = DNSOutgoing(_FLAGS_ANSWER, True)
        out.add_answer_at_time(lost[0].dns_text(override_ttl=0), 0)
        zc.async_send(out)

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """ServiceBrowser handler (its own thread)."""
        bridge = self._bridge
        if bridge is not None:
            bridge.note(service_type, name, _STATE_KIND[state_change])

    # -- the service ---------------------------------------------------------------

    def _stamp(self) -> None:
        """Give this run its stamp (start time, fresh nonce) unless the caller did."""
        if self.advertisement.run is None:
            started_ms = int(self._wall_clock() * 1000)
            stamp = RunStamp(started_ms, secrets.token_bytes(RUN_NONCE_BYTES))
            self.advertisement = dataclasses.replace(self.advertisement, run=stamp)
            self._table.own = self.advertisement

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._claim_run()
        self._bridge = _Bridge(trio.lowlevel.current_trio_token(), self._max_pending)
        try:
            self._stamp()
            zc = await trio.to_thread.run_sync(self._open)
        except BaseException:
            self._send.close()
            raise
        info = self._service_info()
        try:
            zc.add_listener(_RecordTap(self._bridge, info.name, info.text or b""), None)
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
            )
            self._browsers.append(browser)
            await trio.to_thread.run_sync(self._register, zc, info)
            self._registered.append(info)
            if self.broker_port is not None:
                broker_info = self._broker_info()
                await trio.to_thread.run_sync(self._register, zc, broker_info)
                self._registered.append(broker_info)
            self._zc = zc
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._work)
                nursery.start_soon(self._pump_events)
                nursery.start_soon(self._tick_forever)
                nursery.start_soon(self._ask_own_name, info.name)
                nursery.start_soon(self._defend_name, info)
                self._table.tick(trio.current_time())
                task_status.started()
            if self._conflict is not None:
                raise self._conflict
        finally:
            self._zc = None
            self._nursery = None
            self._send.close()
            lost: list[ServiceInfo] = list(self._registered) if self._conflict is not None else []
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                await trio.to_thread.run_sync(
                    self._close, zc, list(self._browsers), lost, abandon_on_cancel=True
                )

    # -- our own name ----------------------------------------------------------------

    async def _ask_own_name(self, name: str) -> None:
        """Multicast (QM) questions for our own TXT record for a short while."""
        for i in range(NAME_QUERIES):
            if i:
                await trio.sleep(NAME_QUERY_INTERVAL_S)
            zc = self._zc
            if zc is None:
                return
            out = DNSOutgoing(_FLAGS_QUERY, True)
            out.add_question(DNSQuestion(name, _TYPE_TXT, _CLASS_IN))
            zc.send(out)

    async def _defend_name(self, info: ServiceInfo) -> None:
        """Multicast our records again while a losing rival is heard (at most once a second)."""
        while True:
            await self._rival_heard.wait()
            self._rival_heard = trio.Event()
            zc = self._zc
            if zc is None:
                return
            out = DNSOutgoing(_FLAGS_ANSWER, True)
            for record in (info.dns_pointer(), info.dns_service(), info.dns_text()):
                out.add_answer_at_time(record, 0)
            for address in info.dns_addresses():
                out.add_answer_at_time(address, 0)
            zc.send(out)
            await trio.sleep(DEFEND_INTERVAL_S)

    def _judge_claim(self, text: bytes) -> None:
        """Another TXT record under our own instance name arrived: keep or yield the name."""
        own = self.advertisement
        assert own.run is not None
        try:
            other = decode_txt(text)
        except TxtRecordError as exc:
            self._table.rejected(own.instance, f"a record under our own name: {exc}")
            return
        verdict = resolve_name_claim(own.run, other.run)
        if verdict is NameClaim.KEEP:
            self._rival_heard.set()
        elif verdict is NameClaim.YIELD and self._conflict is None:
            rival = (
                f"a run started at {other.run.started_ms} ms (ours: {own.run.started_ms} ms)"
                if other.run is not None
                else "a node without a run stamp"
            )
            self._conflict = DiscoveryError(
                f"{own.service_name} is already advertised by another host "
                f"(same node id and mesh?): {rival} keeps the name"
            )
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()

    async def _query(self) -> None:
        zc = self._zc
        if zc is None:
            return
        out = DNSOutgoing(_FLAGS_QUERY, True)
        out.add_question(DNSQuestion(SERVICE_TYPE, _TYPE_PTR, _CLASS_IN))
        zc.send(out)  # thread-safe and non-blocking: queued onto zeroconf's loop

    async def _work(self) -> None:
        assert self._bridge is not None
        own = self.advertisement.service_name.lower()
        while True:
            batch = await self._bridge.take()
            for text in batch.claims:
                self._judge_claim(text)
            now = trio.current_time()
            for name, text in batch.texts.items():
                self._peer_text(name, text, now)
            for (service_type, name), kind in batch.notes.items():
                if service_type == SERVICE_TYPE.lower():
                    if name.lower() == own:
                        continue
                    if kind == "removed":
                        self._latest_txt.pop(name.lower(), None)  # withdrawn with the rest
                        self._table.goodbye(name, now)
                        self._notify()
                    elif kind != "seen" or not self._table.seen(name, now):
                        self._spawn_resolve(SERVICE_TYPE, name)
                elif service_type == MQTT_SERVICE_TYPE.lower():
                    if kind == "removed":
                        self._brokers.pop(name, None)
                    else:
                        self._spawn_resolve(MQTT_SERVICE_TYPE, name)

    def _spawn_resolve(self, service_type: str, name: str) -> None:
        key = (service_type, name)
        if key in self._inflight or self._nursery is None:
            return
        self._inflight.add(key)
        self._nursery.start_soon(self._resolve, service_type, name)

    async def _resolve(self, service_type: str, name: str) -> None:
        zc = self._zc
        try:
            if zc is None:
                return
            try:
                info = await trio.to_thread.run_sync(
                    zc.get_service_info,
                    service_type,
                    name,
                    RESOLVE_TIMEOUT_MS,
                    limiter=self._resolve_limiter,
                    abandon_on_cancel=True,
                )
            except Exception as exc:  # zeroconf raises several types; none may leak
                self._table.rejected(name, f"resolve failed: {exc!r}")
                return
            if info is None:
                return  # not answered in time; the next record of it retries
            if service_type == SERVICE_TYPE:
                self._heard_info(name, info)
            else:
                self._broker_seen(name, info)
        finally:
            self._inflight.discard((service_type, name))

    def _peer_text(self, name: str, text: bytes, now: float) -> None:
        """A peer's TXT record arrived: the newest one is its advertisement.

        A record with the cache-flush bit replaces the older ones (RFC 6762
        §10.2), but zeroconf keeps both for a second and its resolver may pick
        either; so the latest TXT record per instance is remembered here, and
        a known peer's advertisement follows it without a resolve.
        """
        key = name.lower()
        self._latest_txt.pop(key, None)
        if len(self._latest_txt) >= self._max_latest_txt:
            del self._latest_txt[next(iter(self._latest_txt))]  # the least recently heard
        self._latest_txt[key] = text
        peer = self._table.live_peer(name)
        if peer is None:
            return  # unknown or gone: its note gets it resolved
        try:
            advertisement = decode_txt(text)
        except TxtRecordError as exc:
            self._table.rejected(name, str(exc))
            return
        if advertisement != peer.advertisement:
            self._table.heard(dataclasses.replace(peer, advertisement=advertisement), now)
            self._notify()

    def _heard_info(self, name: str, info: ServiceInfo) -> None:
        try:
            advertisement = decode_txt(self._latest_txt.get(name.lower(), info.text or b""))
        except TxtRecordError as exc:
            self._table.rejected(name, str(exc))
            return
        addresses = tuple(sorted(info.parsed_addresses(IPVersion.V4Only)))
        peer = Peer(advertisement, addresses, info.port or 0, name)
        self._table.heard(peer, trio.current_time())
        self._notify()

    def _broker_seen(self, name: str, info: ServiceInfo) -> None:
        mesh: str | None = None
        props: dict[Any, Any] = info.properties or {}
        raw = props.get(b"m")
        if isinstance(raw, bytes):
            mesh = raw.decode("ascii", "replace")
        self._brokers[name] = BrokerCandidate(
            instance=name,
            addresses=tuple(info.parsed_addresses(IPVersion.V4Only)),
            port=info.port or 0,
            priority=info.priority,
            weight=info.weight,
            mesh=mesh,
        )
        self._brokers_changed.set()
        self._brokers_changed = trio.Event()

    async def find_broker(self) -> str:
        zc = self._zc
        if zc is None:
            raise DiscoveryError("discovery is not running: start run() first")
        if self._broker_browser is None:
            bridge = self._bridge
            assert bridge is not None

            def handler(
                zeroconf: Zeroconf,
                service_type: str,
                name: str,
                state_change: ServiceStateChange,
            ) -> None:
                bridge.note(service_type, name, _STATE_KIND[state_change])

            self._broker_browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, MQTT_SERVICE_TYPE, handlers=[handler])
            )
            self._browsers.append(self._broker_browser)
        mesh = self.advertisement.mesh
        while True:
            while choose_broker(self._brokers.values(), mesh) is None:
                await self._brokers_changed.wait()
            await trio.sleep(self._broker_settle)  # let competing brokers answer too
            best = choose_broker(self._brokers.values(), mesh)
            if best is not None:  # (None if it withdrew meanwhile: wait again)
                return best.url
