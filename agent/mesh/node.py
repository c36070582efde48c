"""One agent process: the local VSM joined to the mesh.

:class:`Agent` composes the parts the house plan names: the SQLite store, the
hybrid logical clock (its ceiling in the store), the node key, the VSM
:class:`~vsm_edge.agent.vsm.runtime.Runtime`, the replicator (gossip over MQTT),
the ingress gateway (zone, replay, behaviour, the int8 arbitrator) and mDNS
discovery. The arrows between them:

* readings admitted by S3 -> the latest value per reading, replicated into the
  ``mesh`` document at most every ``REPLICATE_INTERVAL_S`` (variety attenuation
  at the replication boundary) -> peers;
* the node's VSM report (health, safe mode, variety ratio, alarms) -> the
  ``mesh`` document -> every peer's S4 mesh view;
* the algedonic port -> ``vsm/{mesh}/alg/{node}`` (QoS 1, retained, signed);
  peers' signals -> the local algedonic channel (S5 directly);
* ``vsm/{mesh}/policy`` -> S5 (accepted only when admin-signed) -> the
  gateway's zone (``mesh.ingress.IngressGuard``);
* remote commands (``mesh.commands``): ``vsm/{mesh}/cmd/{node}`` -> S5's
  grants, staleness, ``runtime.execute_command`` -> the outcome on
  ``vsm/{mesh}/cmdr/{issuer}``; :meth:`Agent.command` issues one;
* every inbound envelope -> the ingress guard and its gateway, before
  anything is merged; each live one from a known peer (not retained, signed
  by the key bound to its sender, admitted, or refused as too far ahead) ->
  S4's clock-skew measurement (its HLC wall time against our wall clock at
  receipt, ``runtime.peer_clock``); quarantines -> pain and the signed proposal
  ``{node}/quarantine`` in the ``mesh`` document;
* a store fault (disk full, I/O error) -> pain from source ``store`` (cleared
  with a pleasure signal when the store takes writes again) and the ``store``
  status section. While it lasts the readings are *held*: the latest value
  of each reading (and the report and lease deltas) waits in memory, one
  value per key, and is written when the store recovers; older values of a
  held key are replaced, not queued (``store.readings_replaced`` counts them).

The ``mesh`` document is an ORMap whose keys are ``{node}/report`` and
``{node}/r/{unit}.{reading}`` (each node writes only its own), and
``lease:{resource}`` for S2's mesh-wide claims (any node; the register is
stamped with the lease's grant, so the greatest grant wins, as in the lease
CRDT), all HLC-ordered registers. A reading's register holds ``[value, wall_ms]`` so a
receiver can measure replication latency (on one machine, or with synced
clocks).

Why one module over ~600 lines and an :class:`Agent` of ~29 methods: it is the
seam between the VSM and the mesh, and each method is one arrow of that seam
(readings out, reports and leases in, signals both ways, store faults); split,
the order of its start and shutdown would span files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import statistics as stats
import urllib.parse
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from vsm_edge.models import Gateway
from vsm_edge.sync import (
    Advertisement,
    AsyncStore,
    CausalLWWRegister,
    CrdtDocument,
    Envelope,
    HybridLogicalClock,
    Inbound,
    MqttSettings,
    MqttTransport,
    NodeKey,
    ORMap,
    Replicator,
    ReplicatorConfig,
    StoreError,
    StoreFault,
    StoreHighWaterMark,
    SyncError,
    Timestamp,
    Transport,
    TransportError,
    Will,
    cbor_dumps,
    load_node_key,
    save_node_key,
    thaw,
    wall_clock_ms,
)

from .._errors import AgentError, ConfigError
from ..config.schema import AgentConfig
from ..vsm.algedonic import decode_peer_signal
from ..vsm.lease import Lease, LeaseMap
from ..vsm.runtime import Runtime
from ..vsm.s4 import PeerReport, PeerReportError
from ..vsm.status import VsmStatus
from ..vsm.unit import Unit
from .commands import CommandOutcome, Commands
from .ingress import OPEN_ZONE, IngressGuard
from .schema import (
    MESH_DOC,
    alarm_key,
    alarm_record_in,
    alarm_record_value,
    lease_key,
    parse_key,
    parse_reading,
    reading_key,
    reading_value,
    report_key,
)
from .status import (
    BrokerStatus,
    DiscoveryStatus,
    GatewayStatus,
    LatencyStatus,
    NodeStatus,
    ReplicationStatus,
    ReplicatorStatistics,
    StoreStatus,
)

__all__ = ["OPEN_ZONE", "Agent"]

log = logging.getLogger("vsm_edge.agent.node")

# Called with (agent, runtime) once the runtime is built, before it starts: how
# the composition root adds what the mesh room does not know (the web face).
Extension = Callable[["Agent", Runtime], object]

REPLICATE_INTERVAL_S = 0.25
REPORT_INTERVAL_S = 2.0
LATENCY_SAMPLES = 4096
MAX_ALARMS_HEARD = 256
STORE_PAIN = 0.8  # a node that cannot persist is badly hurt, but not (yet) critical


class Agent:
    """One node: ``await nursery.start(agent.run)``; stops on ``stop()`` or SIGTERM.

    ``transport_factory(will)`` overrides the MQTT transport (tests use the
    in-memory broker); ``broker_url`` overrides the config's broker (the demo
    passes the embedded broker's URL); ``advertise_broker_port`` also
    advertises a broker on this host as ``_mqtt._tcp`` (the embedded one).
    ``open_zone`` overrides ``security.zone`` (True: "open", False: "policy").
    Raises AgentError on a bad key file or an unusable broker setting.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        transport_factory: Callable[[Will], Transport] | None = None,
        broker_url: str | None = None,
        wall_clock: Callable[[], int] = wall_clock_ms,
        units: Mapping[str, Unit] | None = None,
        handle_signals: bool = False,
        open_zone: bool | None = None,
        protocol: str = "auto",
        advertise_broker_port: int | None = None,
        extensions: Sequence[Extension] = (),
    ) -> None:
        if open_zone is not None:
            zone = "open" if open_zone else "policy"
            config = dataclasses.replace(
                config, security=dataclasses.replace(config.security, zone=zone)
            )
        self.config = config
        self.node = config.node.id
        self._transport_factory = transport_factory
        self._broker_url = broker_url
        self._wall_clock = wall_clock
        self._units = units
        self._handle_signals = handle_signals
        self._protocol = protocol
        self._extensions = tuple(extensions)
        self._advertise_broker_port = advertise_broker_port
        self.runtime: Runtime | None = None
        self.replicator: Replicator | None = None
        self.commands: Commands | None = None
        self._broker_address = ""
        self.gateway: Gateway | None = None
        self.security: IngressGuard | None = None
        self.store: AsyncStore | None = None
        self._latest: dict[str, tuple[float, int]] = {}  # key -> (value, wall ms)
        self._dirty_readings: set[str] = set()
        self._readings_replaced = 0  # held values overwritten by a newer one during a store fault
        self._writes_held = 0  # replication rounds skipped during store faults
        self._lease_out: dict[str, Lease] = {}  # lease deltas waiting to be replicated
        # (key, written wall ms, latency ms) of peers' readings joined here
        self.samples: deque[tuple[str, int, float]] = deque(maxlen=LATENCY_SAMPLES)
        # peer alarm id -> ms from its raise to its arrival here (bounded, oldest out)
        self.alarm_heard_latency_ms: dict[str, int] = {}
        # peer alarm id -> trio time it entered the local algedonic channel, to time S5
        self._alarm_offered: dict[str, float] = {}
        self._alarm_writes = trio.Lock()  # one writer of our alarm records at a time
        self._alarms_loaded = False
        self._stop = trio.Event()
        self._started = trio.Event()
        self._finished = trio.Event()

    # -- life cycle ------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()
        if self.runtime is not None:
            self.runtime.stop()

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        data_dir = Path(cfg.node.data_dir)
        key = await trio.to_thread.run_sync(self._load_key, data_dir)
        try:
            store = await AsyncStore.open(data_dir / "node.db")
        except StoreError as exc:  # names the file and says what is wrong with it
            if exc.cause == "busy":  # two agents on one host sharing a data directory
                raise AgentError(
                    f"{exc}; stop the other agent, or give this one its own [node] data_dir"
                ) from None
            if exc.cause == "read-only":
                raise AgentError(
                    f"{exc}; set [node] data_dir to a directory this user can write"
                ) from None
            raise AgentError(str(exc)) from None
        self.store = store
        try:
            # Every event is stamped: a ceiling the full disk refuses must not
            # stop the clock (the replicator turns it into a store fault).
            clock = HybridLogicalClock(
                self.node,
                self._wall_clock,
                high_water=StoreHighWaterMark(store.sync),
                defer_ceiling_errors=True,
            )
            runtime = Runtime(
                cfg,
                wall_clock=self._wall_clock,
                clock=clock,
                units=self._units,
                handle_signals=self._handle_signals,
                public_key=key.public_key.hex(),
            )
            self.runtime = runtime
            guard = await trio.to_thread.run_sync(
                functools.partial(IngressGuard.load, cfg, key, wall_clock=self._wall_clock)
            )
            self.security, self.gateway = guard, guard.gateway
            mesh_doc: CrdtDocument[ORMap] = CrdtDocument(MESH_DOC, ORMap)
            mesh_doc.observe(self._on_mesh_change)
            broker_url = self._broker_url or cfg.broker.url
            replicator = Replicator(
                ReplicatorConfig(
                    mesh=cfg.node.mesh,
                    node=self.node,
                    zone=cfg.node.zone,
                    broker_url=broker_url if "://" in broker_url else "",
                ),
                key,
                clock,
                self._make_transport_factory(broker_url),
                {MESH_DOC: mesh_doc},
                store=store,
                ingress=self._ingress,
                blame=guard.blame,
                key_binding=guard.bind_key,
                on_app=self._on_app,
                mesh_key=guard.mesh_key,
            )
            self.replicator = replicator
            guard.attach(runtime, replicator.peers, replicator.clock.now, replicator.rebind)
            guard.restore(runtime, await trio.to_thread.run_sync(guard.read_kept_policy))
            runtime.on_reading.append(self._on_reading)
            runtime.on_lease_delta.append(lambda delta: self._lease_out.update(delta.entries))
            runtime.add_flush_hook(self._write_samples)
            runtime.set_status_section("gateway", self._gateway_status)
            runtime.set_status_section("replication", self._replication_status)
            runtime.set_status_section("store", self._store_status)
            self._broker_address = _broker_address(broker_url)
            runtime.set_status_section("broker", self._broker_status)
            runtime.alarms.persist = functools.partial(self._write_alarms, replicator)
            replicator.observe_store_faults(self._on_store_fault)
            commands = Commands(
                self.node,
                runtime,
                functools.partial(_publish_addressed, replicator),
                wall_clock=self._wall_clock,
            )
            self.commands = commands
            runtime.set_status_section("commands", commands.status)
            for extend in self._extensions:  # e.g. the web face: cli/run.py composes it
                extend(self, runtime)
            runtime_done = trio.Event()

            async def run_runtime(task_status: trio.TaskStatus[Runtime]) -> None:
                # The runtime returns after stop() or SIGTERM/SIGINT, having
                # flushed; then the agent stops too.
                try:
                    await runtime.run(task_status=task_status)
                finally:
                    runtime_done.set()
                    self._stop.set()

            async with trio.open_nursery() as nursery:
                await nursery.start(replicator.run)
                self._load_alarms()  # the ledger as the store left it, before any signal counts
                await nursery.start(run_runtime)
                guard.policy_changed(runtime)  # s5.policy_file, loaded by the runtime

                async def put_proposal(key: str, value: Any) -> None:
                    # Refused during a store fault: the proposal goes with its next change.
                    await self._put(replicator, key, value)

                nursery.start_soon(guard.run, put_proposal)
                await nursery.start(commands.run)
                nursery.start_soon(self._algedonic_out, runtime, replicator)
                nursery.start_soon(self._replicate_local, runtime, replicator)
                if cfg.discovery.enabled:
                    nursery.start_soon(self._discovery, key, broker_url)
                self._started.set()
                task_status.started(self)
                await self._stop.wait()
                runtime.stop()
                with trio.move_on_after(cfg.runtime.shutdown_timeout_s):
                    await runtime_done.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await store.aclose()
                except StoreError as exc:  # e.g. the final checkpoint on a full disk
                    log.error("closing the store failed: %s", exc)  # noqa: TRY400 (no trace)
            self._finished.set()

    async def _write_samples(self, status: VsmStatus) -> None:
        """At shutdown: the replication latency samples, for `vsm-edge demo`."""
        path = Path(self.config.node.data_dir) / "replication-samples.json"
        data = json.dumps([list(s) for s in self.samples])
        await trio.to_thread.run_sync(path.write_text, data)

    async def wait_started(self) -> None:
        await self._started.wait()

    async def stopped(self) -> None:
        """Return once :meth:`run` has finished (after stop() or a signal)."""
        await self._finished.wait()

    def _load_key(self, data_dir: Path) -> NodeKey:
        """The configured key, else data_dir/node.key (made on first start).

        Raises :class:`ConfigError` naming ``node.data_dir`` or ``node.key_file``
        when the directory cannot be made or the key cannot be read or written.
        """
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                "node.data_dir",
                f"cannot create {data_dir}: {exc.strerror or exc}; "
                "set it to a directory this user can write",
            ) from exc
        path = self.config.node.key_file
        default = data_dir / "node.key"
        try:
            if path is None and not default.exists():
                save_node_key(NodeKey.generate(), default)
            return load_node_key(path if path is not None else default)
        except SyncError as exc:
            raise AgentError(f"node key: {exc}") from exc
        except OSError as exc:
            if path is None:  # the key made in the data directory
                raise ConfigError(
                    "node.data_dir",
                    f"cannot write or read the node key {default}: {exc.strerror or exc}; "
                    "set it to a directory this user can write",
                ) from exc
            fix = (
                "it must be a file"
                if isinstance(exc, IsADirectoryError)
                else "make one with `vsm-edge keygen --out FILE`, or remove the key "
                "to use data_dir/node.key"
            )
            raise ConfigError(
                "node.key_file", f"cannot read {path}: {exc.strerror or exc}; {fix}"
            ) from exc

    def transport_factory(self, client_suffix: str = "") -> Callable[[Will], Transport]:
        """Transports to this agent's broker for a companion client (Home Assistant: ``-ha``)."""
        return self._make_transport_factory(
            self._broker_url or self.config.broker.url, client_suffix
        )

    def _make_transport_factory(
        self, broker_url: str, client_suffix: str = ""
    ) -> Callable[[Will], Transport]:
        if self._transport_factory is not None:
            return self._transport_factory
        if "://" not in broker_url:
            raise AgentError(
                f"broker {broker_url!r}: give mqtt://host:port here; 'embedded' and 'mdns' "
                "are resolved by `vsm-edge run` before the agent starts"
            )
        cfg = self.config.broker
        options: dict[str, Any] = {
            "keepalive": cfg.keepalive_s,
            "protocol": self._protocol,
        }
        if cfg.username is not None:
            options["username"] = cfg.username
            if cfg.password_file is not None:
                options["password"] = _read_config_file(
                    "broker.password_file", cfg.password_file
                ).strip()
        if cfg.tls or broker_url.startswith("mqtts://"):
            import ssl

            try:
                context = ssl.create_default_context(
                    cafile=str(cfg.ca_file) if cfg.ca_file is not None else None
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise _file_error("broker.ca_file", cfg.ca_file, exc) from exc
            if cfg.cert_file is not None:
                try:
                    context.load_cert_chain(
                        str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None
                    )
                except (OSError, ValueError) as exc:
                    raise _file_error(
                        "broker.cert_file / broker.key_file", cfg.cert_file, exc
                    ) from exc
            options["tls"] = context

        def make(will: Will) -> Transport:
            settings = MqttSettings.from_url(
                broker_url, client_id=self.node + client_suffix, will=will, **options
            )
            return MqttTransport(settings)

        return make

    # -- status ------------------------------------------------------------------------

    def status(self) -> NodeStatus:
        """The node's status now (VSM and mesh sections); raises AgentError before ``run``."""
        if self.runtime is None:
            raise AgentError("the agent has not started: no status yet")
        return NodeStatus(self.runtime.status())

    def _gateway_status(self) -> GatewayStatus:
        assert self.security is not None
        return self.security.status()

    def _replication_status(self) -> ReplicationStatus:
        assert self.replicator is not None
        mesh = self.replicator.docs[MESH_DOC]
        assert isinstance(mesh, CrdtDocument)
        return ReplicationStatus(
            replicator=self._replicator_statistics(),
            latency_ms=_percentiles(sorted(s[2] for s in self.samples)),
            online_peers=tuple(self.replicator.online_peers()),
            keys=len(mesh.state),
            digest=_digest_fingerprint(mesh.state),
            vv=mesh.state.digest().vv,
            alarms_heard_ms=dict(self.alarm_heard_latency_ms),
            alarms_s5_ms=self._alarms_s5_ms(),
        )

    def _replicator_statistics(self) -> ReplicatorStatistics:
        # sync's dict, read (and checked) here, where it enters
        assert self.replicator is not None
        return ReplicatorStatistics.from_json(self.replicator.statistics(), "replication")

    def _broker_status(self) -> BrokerStatus:
        assert self.replicator is not None
        return BrokerStatus.of(
            self.replicator.transport.statistics(),
            self._broker_address,
            now=trio.current_time(),
            wall_ms=self._wall_clock(),
        )

    def _store_status(self) -> StoreStatus:
        assert self.replicator is not None
        fault = self.replicator.store_fault
        stats = self._replicator_statistics()
        return StoreStatus(
            ok=fault is None,
            fault=stats.store_fault,
            faults=stats.store_faults,
            recoveries=stats.store_recoveries,
            writes_refused=stats.writes_refused,
            readings_held=len(self._dirty_readings) if fault is not None else 0,
            readings_replaced=self._readings_replaced,
            rounds_held=self._writes_held,
        )

    def _on_store_fault(self, fault: StoreFault | None) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        if fault is not None:
            runtime.raise_signal(
                "store",
                STORE_PAIN,
                f"store fault ({fault.cause}) in {fault.operation}: {fault.message}; "
                "local writes are held until it takes writes again",
            )
        else:
            runtime.clear_pain("store", "the store takes writes again")

    def _alarms_s5_ms(self) -> dict[str, float]:
        """Peer alarm id -> ms from its raise on the peer to our S5 taking it.

        The arrival (HLC wall time of the raise -> our wall clock) plus the
        local hop (algedonic channel -> S5's loop), for the alarms S5 heard
        among its latest :data:`MAX_ALARMS_HEARD`.
        """
        assert self.runtime is not None
        out: dict[str, float] = {}
        for heard_at, signal in self.runtime.s5_heard:
            offered = self._alarm_offered.get(signal.id)
            arrival = self.alarm_heard_latency_ms.get(signal.id)
            if offered is not None and arrival is not None:
                out[signal.id] = round(arrival + max(0.0, heard_at - offered) * 1000.0, 2)
        return out

    # -- the mesh document ---------------------------------------------------------------

    def _on_reading(self, unit: str, reading: str, value: float, stamp: Timestamp) -> None:
        key = reading_key(self.node, unit, reading)
        if key in self._dirty_readings and self.replicator and self.replicator.store_fault:
            self._readings_replaced += 1
        self._latest[key] = (float(value), self._wall_clock())
        self._dirty_readings.add(key)

    async def _replicate_local(self, runtime: Runtime, replicator: Replicator) -> None:
        next_report = 0.0
        while True:
            await trio.sleep(REPLICATE_INTERVAL_S)
            if replicator.store_fault is not None:
                # Held (see the module docstring): the replicator refuses local
                # writes until the store recovers; keep the latest values.
                self._writes_held += 1
                continue
            now = trio.current_time()
            written_ms = self._wall_clock()  # when the update enters the mesh
            for key in sorted(self._dirty_readings):
                value, _reading_ms = self._latest[key]
                self._dirty_readings.discard(key)
                if not await self._put(replicator, key, reading_value(value, written_ms)):
                    self._dirty_readings.add(key)  # held for the next round
            if now >= next_report and await self._put(
                replicator, report_key(self.node), runtime.local_report().to_cbor()
            ):
                next_report = now + REPORT_INTERVAL_S
            await self._write_alarms(replicator)
            leases, self._lease_out = self._lease_out, {}
            for resource, lease in sorted(leases.items()):
                # A lease register is ordered by its grant stamp: the same
                # "greatest grant wins" join as the lease CRDT itself.
                if not await self._put(
                    replicator,
                    lease_key(resource),
                    [lease.holder, lease.expires_ms],
                    stamp=lease.granted,
                ):
                    self._lease_out.setdefault(resource, lease)  # a newer delta wins

    async def _put(
        self, replicator: Replicator, key: str, value: Any, *, stamp: Timestamp | None = None
    ) -> bool:
        """Write ``key`` into the mesh document; False when the store refused it."""
        node, clock = self.node, replicator.clock

        def mutate(state: ORMap) -> ORMap:
            at = stamp if stamp is not None else clock.now()
            return state.update(node, key, CausalLWWRegister, lambda r: r.set(node, at, value))

        try:
            await replicator.mutate(MESH_DOC, mutate)
        except StoreError as exc:
            # The replicator logged the fault once (ERROR) and refuses writes
            # until it clears: one line per refused key would flood the log.
            log.debug("could not replicate %s: %s", key, exc)
            return False
        except SyncError as exc:
            log.warning("could not replicate %s: %s", key, exc)
            return False
        return True

    # -- alarms: the ledger's records in the mesh document --------------------------------

    async def _write_alarms(self, replicator: Replicator) -> bool:
        """Write our changed alarm records and remove our expired ones (durable on return).

        False when the store refused some: they stay pending for the next round.
        """
        assert self.runtime is not None
        alarms = self.runtime.alarms
        async with self._alarm_writes:
            writes, removals = alarms.take_writes()
            ok = True
            for alarm_id, record in writes:
                if not await self._put(
                    replicator, alarm_key(self.node, alarm_id), alarm_record_value(record)
                ):
                    alarms.ledger.mark_dirty(alarm_id)
                    ok = False
            for alarm_id in removals:
                await self._remove_own(replicator, alarm_key(self.node, alarm_id))
        return ok

    async def _remove_own(self, replicator: Replicator, key: str) -> None:
        """Remove our register ``key`` (a removal mints one dot of ours and carries the
        removed dots as its record: the dot rules hold whoever wrote them)."""
        node = self.node

        def mutate(state: ORMap) -> ORMap:
            return state.remove(node, key)

        try:
            await replicator.mutate(MESH_DOC, mutate)
        except SyncError as exc:  # StoreError included: removed at the next upkeep
            log.debug("could not remove %s: %s", key, exc)

    def _load_alarms(self) -> None:
        """Merge every alarm record of the (recovered) mesh document into the ledger once."""
        if self._alarms_loaded or self.replicator is None:
            return
        self._alarms_loaded = True
        mesh = self.replicator.docs[MESH_DOC]
        assert isinstance(mesh, CrdtDocument)
        state = mesh.state
        for key in state.keys():  # noqa: SIM118 (an ORMap, not a dict: no __iter__)
            info = parse_key(key)
            if info is not None and info.kind == "alarm":
                self._on_alarm_record(state, key, info.origin, info.name)

    def _on_alarm_record(self, delta: ORMap, key: str, writer: str, alarm_id: str) -> None:
        """``writer``'s record of ``alarm_id``: only an entry of the register that
        ``writer`` wrote (its dot) counts, whatever another member wrote under its key."""
        assert self.runtime is not None
        record = alarm_record_in(delta, key, writer)
        if record is None:
            self.runtime.alarms.ledger.refused += 1
            log.debug("alarm record %s refused: malformed or not written by %s", key, writer)
            return
        self.runtime.alarms.merge_record(writer, alarm_id, record)

    def _reassert_alarm_records(self) -> None:
        """Our alarm records that a removal by another node took out of the mesh
        document: written again at the next round.

        A pushed removal may name any dots its receiver holds (docs/protocol.md
        §3.4), so a member can remove our acknowledgement from every replica's
        document with one delta; the ledgers keep it in memory, but a replica
        that restarts (or an aggregator, which keeps no store) would not know it.
        """
        assert self.runtime is not None
        if self.replicator is None:
            return
        mesh = self.replicator.docs[MESH_DOC]
        assert isinstance(mesh, CrdtDocument)
        state = mesh.state
        ledger = self.runtime.alarms.ledger
        for alarm_id, entry in ledger.entries.items():
            if self.node not in entry.records:
                continue
            key = alarm_key(self.node, alarm_id)
            if state.get(key, CausalLWWRegister).latest_by(self.node) is None:
                log.info("alarm record %s removed by another node: written again", key)
                ledger.mark_dirty(alarm_id)

    def _on_mesh_change(self, doc: str, delta: Any, local: bool) -> None:
        if local or self.runtime is None:
            return
        if isinstance(delta, ORMap) and delta.removes_dots_of(self.node):
            self._reassert_alarm_records()  # not on honest peers' own overwrites
        now_ms = self._wall_clock()
        for key, frozen in delta.value().items():
            info = parse_key(key)
            if info is None:
                continue
            value = thaw(frozen)
            if info.kind == "lease":
                self._on_remote_lease(delta, key, info.name, value)
                continue
            if info.kind == "alarm":  # ours too: the store's log replayed at start
                self._on_alarm_record(delta, key, info.origin, info.name)
            elif info.origin == self.node:
                continue  # our own entry, back in a peer's repair delta: not news
            elif info.kind == "report":
                try:
                    self.runtime.update_peer(PeerReport.from_cbor(value))
                except (PeerReportError, TypeError, ValueError):
                    log.debug("bad report from %s", info.origin)
            elif info.kind == "quarantine" and self.security is not None:
                self.security.on_proposal(info.origin, value)
            elif info.kind == "reading":
                reading = parse_reading(value)
                if reading is not None:
                    written = reading[1]
                    self.samples.append((key, written, max(0.0, float(now_ms - written))))

    def _on_remote_lease(self, delta: ORMap, key: str, resource: str, value: Any) -> None:
        assert self.runtime is not None
        stamp = delta.get(key, CausalLWWRegister).timestamp
        if (
            stamp is None
            or not (isinstance(value, list) and len(value) == 2)
            or not isinstance(value[0], str)
            or type(value[1]) is not int
        ):
            log.debug("malformed lease %s", key)
            return
        try:
            lease = Lease(stamp, value[0], value[1])
            self.runtime.merge_leases(LeaseMap({resource: lease}))
        except (ValueError, TypeError):
            log.debug("malformed lease %s", key)

    # -- ingress and peers' clocks ------------------------------------------------------

    def _ingress(self, inbound: Inbound) -> str | None:
        """The replicator's ingress check: the guard's, then a clock sample."""
        assert self.security is not None
        reason = self.security.ingress(inbound)
        runtime = self.runtime
        if runtime is not None and _live_stamp(inbound, reason, self.replicator):
            runtime.peer_clock(inbound.sender, inbound.envelope.hlc >> 16, inbound.received_ms)
        return reason

    # -- algedonic and policy -----------------------------------------------------------

    async def _algedonic_out(self, runtime: Runtime, replicator: Replicator) -> None:
        port = runtime.algedonic_port
        while True:
            signal = await port.receive()
            delay = 0.05
            while True:
                try:
                    await replicator.publish_app("alg", signal.to_cbor(), retain=True)
                    break
                except TransportError:
                    await trio.sleep(delay)  # re-sent until the broker takes it
                    delay = min(delay * 2, 2.0)

    def _on_app(self, channel: str, sender: str, body: Any, envelope: Envelope) -> str | None:
        """The replicator's application handler: a refusal reason (counted there), or None."""
        runtime = self.runtime
        if runtime is None:
            return None
        if channel == "cmd" and self.commands is not None:
            return self.commands.on_command(sender, envelope.kid, body)
        if channel == "cmdr" and self.commands is not None:
            return self.commands.on_outcome(sender, body)
        if channel == "alg":
            self._load_alarms()
            signal, refused = decode_peer_signal(sender, body)
            if signal is None:
                return refused
            alarm = runtime.inject_remote_signal(signal)
            if signal.id not in self.alarm_heard_latency_ms:
                # from the raise (the signal's HLC wall time) to hearing it here
                self.alarm_heard_latency_ms[signal.id] = self._wall_clock() - signal.hlc.wall
                if alarm is not None:
                    self._alarm_offered[signal.id] = alarm.raised_at
                while len(self.alarm_heard_latency_ms) > MAX_ALARMS_HEARD:
                    oldest = next(iter(self.alarm_heard_latency_ms))
                    del self.alarm_heard_latency_ms[oldest]
                    self._alarm_offered.pop(oldest, None)
        elif channel == "policy":
            if not isinstance(body, bytes):
                return "policy:malformed"
            # S5 verifies the document and counts its own refusals
            if runtime.accept_policy(body, raise_errors=False) and self.security is not None:
                self.security.policy_changed(runtime, body)
        return None

    async def command(
        self,
        node: str,
        unit: str,
        cmd: str,
        value: Any = None,
        *,
        timeout_s: float = 5.0,
        issuer: str = "operator",
    ) -> CommandOutcome:
        """Command ``unit.cmd`` on ``node`` (this node: locally, as ``issuer``) and wait
        for the outcome; see :meth:`Commands.issue` (raises CommandError, AgentError
        before ``run``)."""
        if self.commands is None:
            raise AgentError("the agent has not started: no commands yet")
        return await self.commands.issue(node, unit, cmd, value, timeout_s=timeout_s, issuer=issuer)

    # -- discovery --------------------------------------------------------------------

    async def _discovery(self, key: NodeKey, broker_url: str) -> None:
        from vsm_edge.sync import ZeroconfDiscovery

        cfg = self.config
        try:
            advert = Advertisement(
                node=self.node,
                key_id=key.kid,
                mesh=cfg.node.mesh,
                zone=cfg.node.zone,
                broker=broker_url if "://" in broker_url else None,
            )
            status_port = (self.runtime.status_port if self.runtime else None) or 0
            discovery = ZeroconfDiscovery(
                advert,
                interfaces=list(cfg.discovery.interfaces),
                port=status_port,
                broker_port=self._advertise_broker_port,  # the embedded broker, if any
            )
            self.discovery = discovery
            if self.runtime is not None:
                self.runtime.set_status_section("discovery", lambda: DiscoveryStatus.of(discovery))
            await discovery.run()
        except SyncError as exc:
            from .mdns_host import explain_mdns_error

            log.warning("mDNS discovery unavailable: %s", explain_mdns_error(str(exc)))


async def _publish_addressed(
    replicator: Replicator, channel: str, body: dict[str, Any], to: str
) -> None:
    await replicator.publish_app(channel, body, retain=False, to=to)


def _live_stamp(inbound: Inbound, reason: str | None, replicator: Replicator | None) -> bool:
    """Does ``inbound``'s envelope stamp say how far its sender's clock is from ours?

    Only a message received live (a retained one is old by design) whose
    signature is good and whose sender is sure: any channel but presence names
    it by its bound key; a presence must be signed by the key already bound to
    the node it names (anybody can sign a presence naming any node). Only if
    the gateway admitted it, or refused it as too far ahead (a signed stamp
    from the future is the sender's clock); a refused replay or a too-old
    stamp may be somebody else's doing or a late delivery.
    """
    if inbound.retained or not inbound.signature_ok:
        return False
    if reason is not None and reason != "gateway:too-far-ahead":
        return False
    if inbound.channel == "presence":
        peer = None if replicator is None else replicator.peers.get(inbound.sender)
        return peer is not None and peer.kid == inbound.envelope.kid
    return True


def _broker_address(url: str) -> str:
    """``host:port`` of a broker URL, without the credentials it may hold ("" for none)."""
    if "://" not in url:
        return url  # a stand-in broker (tests, the embedded one's name)
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{host}:{port or (8883 if parts.scheme == 'mqtts' else 1883)}"


def _percentiles(samples: list[float]) -> LatencyStatus:
    if not samples:
        return LatencyStatus(count=0)

    def pick(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))], 2)

    return LatencyStatus(
        count=len(samples),
        p50=pick(0.50),
        p99=pick(0.99),
        max=round(samples[-1], 2),
        mean=round(stats.fmean(samples), 2),
    )


def _digest_fingerprint(state: ORMap) -> str:
    return hashlib.blake2b(cbor_dumps(state.digest().to_cbor()), digest_size=8).hexdigest()


def _read_config_file(key: str, path: Path) -> str:
    """The text of the file a config key names; :class:`ConfigError` naming the key."""
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise _file_error(key, path, exc) from exc


def _file_error(key: str, path: Path | None, exc: Exception) -> ConfigError:
    problem = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return ConfigError(key, f"cannot use {path}: {problem}; fix the file or the key")
