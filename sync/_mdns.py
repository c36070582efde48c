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

Zeroconf names used beyond its ``__all__``: ``DNSOutgoing`` and
``DNSQuestion`` (``zeroconf._protocol.outgoing``, ``zeroconf._dns``), the
documented way to send a hand-made query; the tests exercise them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import random
import socket
import threading
from collections.abc import Sequence
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
from zeroconf._dns import DNSPointer, DNSQuestion
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

__all__ = ["ZeroconfDiscovery"]

_TYPE_PTR: Final = 12
_TYPE_TXT: Final = 16
_TYPE_SRV: Final = 33
_CLASS_IN: Final = 1
_FLAGS_QUERY: Final = 0x0000
RESOLVE_TIMEOUT_MS: Final = 2000
CLOSE_TIMEOUT_S: Final = 5.0

_Kind = Literal["seen", "added", "updated", "removed"]
_STATE_KIND: Final[dict[ServiceStateChange, _Kind]] = {
    ServiceStateChange.Added: "added",
    ServiceStateChange.Updated: "updated",
    ServiceStateChange.Removed: "removed",
}


class _Bridge:
    """Notes from zeroconf's threads to Trio: bounded, coalesced, never blocking."""

    def __init__(self, token: trio.lowlevel.TrioToken, max_pending: int) -> None:
        self._token = token
        self._max = max_pending
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, str], _Kind] = {}
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
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(trio.RunFinishedError):  # Trio is gone: nothing to wake
            self._token.run_sync_soon(self._event.set)

    async def take(self) -> dict[tuple[str, str], _Kind]:
        """Wait for notes, then take them all (Trio thread)."""
        await self._event.wait()
        with self._lock:
            taken, self._pending = self._pending, {}
            self._scheduled = False
            # Replaced without a checkpoint: a wake-up scheduled after this
            # point runs later in this thread and sets the new event.
            self._event = trio.Event()
        return taken


class _RecordTap(RecordUpdateListener):
    """Notes every live PTR/SRV/TXT record of our service type (zeroconf's loop thread)."""

    def __init__(self, bridge: _Bridge) -> None:
        super().__init__()
        self._bridge = bridge
        self._suffix = "." + SERVICE_TYPE.lower()

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
    as ``_mqtt._tcp`` (the embedded broker). Raises :class:`DiscoveryError`
    for bad arguments, name conflicts and socket failures.
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
    ) -> None:
        super().__init__(advertisement, timing=timing, event_buffer=event_buffer, rng=rng)
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

    def _close(self, zc: Zeroconf, browsers: list[ServiceBrowser]) -> None:
        # Closing: nothing useful to do with an error, and the rest still needs closing.
        for browser in browsers:
            with contextlib.suppress(Exception):
                browser.cancel()
        with contextlib.suppress(Exception):
            zc.close()  # sends goodbyes for our services

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """ServiceBrowser handler (its own thread)."""
        bridge = self._bridge
        if bridge is not None:
            bridge.note(service_type, name, _STATE_KIND[state_change])

    # -- the service ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._claim_run()
        self._bridge = _Bridge(trio.lowlevel.current_trio_token(), self._max_pending)
        try:
            zc = await trio.to_thread.run_sync(self._open)
        except BaseException:
            self._send.close()
            raise
        try:
            zc.add_listener(_RecordTap(self._bridge), None)
            browser = await trio.to_thread.run_sync(
                lambda: ServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
            )
            self._browsers.append(browser)
            await trio.to_thread.run_sync(self._register, zc, self._service_info())
            if self.broker_port is not None:
                await trio.to_thread.run_sync(self._register, zc, self._broker_info())
            self._zc = zc
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._work)
                nursery.start_soon(self._pump_events)
                nursery.start_soon(self._tick_forever)
                self._table.tick(trio.current_time())
                task_status.started()
        finally:
            self._zc = None
            self._nursery = None
            self._send.close()
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
                await trio.to_thread.run_sync(
                    self._close, zc, list(self._browsers), abandon_on_cancel=True
                )

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
            now = trio.current_time()
            for (service_type, name), kind in batch.items():
                if service_type == SERVICE_TYPE.lower():
                    if name.lower() == own:
                        continue
                    if kind == "removed":
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

    def _heard_info(self, name: str, info: ServiceInfo) -> None:
        try:
            advertisement = decode_txt(info.text or b"")
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
