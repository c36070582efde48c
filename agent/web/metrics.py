"""Prometheus metrics, made from the status at scrape time.

Nothing is counted twice: the runtime, the gateway and the replicator already
keep their counters (the status, ``vsm-edge status --json``); at each scrape
:func:`agent_families` turns one typed status
(:class:`~vsm_edge.agent.mesh.status.NodeStatus`) into metric families, and
:func:`view_families` does the same for the aggregator's merged view document.
Both are pure (status in, families out);
:func:`render` gives the text exposition format with prometheus-client.

Names (every series of an agent carries ``node``; the aggregator's carry
``mesh`` and ``node``)::

    vsm_node_info{mesh,zone}            1            vsm_uptime_seconds
    vsm_safe_mode                       0/1          vsm_health (aggregator)
    vsm_budget_tokens{subsystem}        S3 budgets   vsm_budget_capacity{subsystem}
    vsm_budget_passed_total{subsystem}  events admitted by each budget
    vsm_variety_bits{subsystem}         S4's temporal variety per subsystem
    vsm_environment_variety_bits, vsm_system_variety_bits, vsm_variety_ratio
    vsm_attenuated_total{kind}          S3 attenuation: aggregated / dropped readings
    vsm_algedonic_active_alarms         unacknowledged alarms (local and remote)
    vsm_algedonic_pain                  the strongest active pain (0..1)
    vsm_algedonic_signals_total{outcome}  received, delivered, adapted, folded, ...
    vsm_gateway_decisions_total{verdict}  allow / deny
    vsm_gateway_reasons_total{reason}   decisions by reason
    vsm_gateway_quarantined             peers in quarantine now
    vsm_replication_lag_ms{quantile}    replication latency of peers' readings (0.5, 0.99, 1)
    vsm_replication_lag_samples         samples behind it (the last 4,096)
    vsm_peers{state}                    online / stale peers
    vsm_mqtt_messages_total{direction}, vsm_mqtt_bytes_total{direction}
    vsm_mqtt_connected, vsm_mqtt_reconnects_total
    vsm_broker_connected                0/1 (the ``broker`` section)   vsm_broker_refused 0/1
    vsm_broker_reconnect_attempts       failed attempts in a row now (0 while connected)
    vsm_broker_reconnects_total, vsm_broker_connect_failures_total,
    vsm_broker_connections_lost_total
    vsm_replication_refused_total{reason}  messages refused at ingress
    vsm_bus_dropped_total{channel}      events dropped by the bus's bounded channels
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from ..mesh.status import BrokerStatus, GatewayStatus, ReplicationStatus

if TYPE_CHECKING:
    from ..mesh.status import NodeStatus

__all__ = ["CONTENT_TYPE", "agent_families", "render", "view_families"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
SUBSYSTEMS = ("s1", "s2", "s3", "s4", "s5")
QUANTILES = (("p50", "0.5"), ("p99", "0.99"), ("max", "1"))


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class _Families:
    """Collects families by name; one family per name, labels fixed per family."""

    def __init__(self, base: Sequence[str]) -> None:
        self.base = tuple(base)
        self._by_name: dict[str, Metric] = {}

    def _family(self, kind: str, name: str, doc: str, labels: Sequence[str]) -> Metric:
        family = self._by_name.get(name)
        if family is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, doc, labels=[*self.base, *labels])
            self._by_name[name] = family
        return family

    def gauge(
        self, name: str, doc: str, base: Sequence[str], value: Any, **labels: str
    ) -> None:
        number = _num(value)
        if number is not None:
            family = self._family("gauge", name, doc, list(labels))
            family.add_metric([*base, *labels.values()], number)  # type: ignore[attr-defined]

    def counter(
        self, name: str, doc: str, base: Sequence[str], value: Any, **labels: str
    ) -> None:
        number = _num(value)
        if number is not None:
            family = self._family("counter", name, doc, list(labels))
            family.add_metric([*base, *labels.values()], number)  # type: ignore[attr-defined]

    def families(self) -> list[Metric]:
        return list(self._by_name.values())


def _node_metrics(f: _Families, base: Sequence[str], status: NodeStatus) -> None:
    """The metrics of one agent's status."""
    vsm = status.vsm
    f.gauge("vsm_uptime_seconds", "Seconds since the agent started.", base, vsm.node.uptime_s)
    f.gauge("vsm_safe_mode", "1 while S5 holds the node in safe mode.", base, vsm.node.safe_mode)
    budgets, variety = vsm.s3.budgets, vsm.s4.variety
    for sub in SUBSYSTEMS:
        budget = budgets.get(sub)
        if budget is not None:
            f.gauge("vsm_budget_tokens", "Tokens left in the S3 budget.", base,
                    budget.tokens, subsystem=sub)  # fmt: skip
            f.gauge("vsm_budget_capacity", "Capacity of the S3 budget.", base,
                    budget.capacity, subsystem=sub)  # fmt: skip
            f.gauge("vsm_budget_refill_per_second", "Refill rate of the S3 budget.", base,
                    budget.refill_per_s, subsystem=sub)  # fmt: skip
            f.counter("vsm_budget_passed", "Events admitted by the S3 budget.", base,
                      budget.passed, subsystem=sub)  # fmt: skip
        f.gauge("vsm_variety_bits", "S4 temporal variety of the subsystem, bits.", base,
                variety.get(sub), subsystem=sub)  # fmt: skip
    s4 = vsm.s4
    f.gauge("vsm_environment_variety_bits", "Variety of the environment (S1 readings), bits.",
            base, s4.environment_bits)  # fmt: skip
    f.gauge("vsm_system_variety_bits", "Variety the node can answer with, bits.", base,
            s4.system_bits)  # fmt: skip
    f.gauge("vsm_variety_ratio", "Environment over system variety (> 1: overwhelmed).", base,
            s4.variety_ratio)  # fmt: skip
    attenuation = vsm.s3.attenuation
    f.gauge("vsm_attenuation_active", "1 while S3 attenuates S1.", base, attenuation.active)
    for kind, counts in (("aggregated", attenuation.aggregated), ("dropped", attenuation.dropped)):
        f.counter("vsm_attenuated", "Readings attenuated by S3.", base,
                  sum(counts.values()), kind=kind)  # fmt: skip
    algedonic = vsm.algedonic
    active = [a for a in algedonic.alarms if not a.acked]
    f.gauge("vsm_algedonic_active_alarms", "Unacknowledged alarms.", base, len(active))
    pain = [a.intensity for a in active if a.valence == "pain"]
    f.gauge("vsm_algedonic_pain", "Strongest active pain signal (0..1).", base,
            max(pain, default=0.0))  # fmt: skip
    for outcome, value in sorted(algedonic.counters.to_json().items()):
        f.counter("vsm_algedonic_signals", "Algedonic signals by outcome.", base, value,
                  outcome=outcome)  # fmt: skip
    gateway = status.gateway
    if isinstance(gateway, GatewayStatus):
        _gateway_metrics(f, base, gateway.allow, gateway.deny, gateway.maybe, gateway.reasons)
        f.gauge("vsm_gateway_quarantined", "Peers quarantined by the gateway now.", base,
                gateway.quarantined)  # fmt: skip
    replication = status.replication
    if isinstance(replication, ReplicationStatus):
        _replication_metrics(f, base, _Replication.of(replication))
        f.gauge("vsm_peers", "Peers by state.", base, len(replication.online_peers),
                state="online")  # fmt: skip
    f.gauge("vsm_peers", "Peers by state.", base, sum(1 for p in vsm.peers if p.stale),
            state="stale")  # fmt: skip
    broker = status.broker
    if isinstance(broker, BrokerStatus):
        _broker_metrics(f, base, broker)
    channels = (vsm.s1.channel, vsm.s2.channel, vsm.s3.channel, vsm.s4.channel, vsm.s5.channel,
                algedonic.channel)  # fmt: skip
    for sub, channel in zip((*SUBSYSTEMS, "algedonic"), channels, strict=True):
        if channel is not None:
            f.counter("vsm_bus_dropped", "Events dropped by the bus channel.", base,
                      channel.dropped, channel=sub)  # fmt: skip


def _broker_metrics(f: _Families, base: Sequence[str], broker: BrokerStatus) -> None:
    f.gauge("vsm_broker_connected", "1 while connected to the MQTT broker.", base,
            broker.state == "connected")  # fmt: skip
    f.gauge("vsm_broker_refused", "1 while the broker refuses the connection (credentials, ACL).",
            base, broker.state == "refused")  # fmt: skip
    f.gauge("vsm_broker_reconnect_attempts",
            "Connection attempts failed in a row (0 while connected).", base,
            broker.attempts)  # fmt: skip
    f.counter("vsm_broker_reconnects", "Connections to the broker after the first.", base,
              broker.reconnects)  # fmt: skip
    f.counter("vsm_broker_connect_failures", "Failed connection attempts.", base,
              broker.connect_failures)  # fmt: skip
    f.counter("vsm_broker_connections_lost", "Connections to the broker lost.", base,
              broker.connections_lost)  # fmt: skip


def _gateway_metrics(
    f: _Families, base: Sequence[str], allow: Any, deny: Any, maybe: Any, reasons: Mapping[str, Any]
) -> None:
    """Decisions by verdict, MAYBE cases (None: not known) and decisions by reason."""
    for verdict, value in (("allow", allow), ("deny", deny)):
        f.counter("vsm_gateway_decisions", "Ingress gateway decisions.", base,
                  value, verdict=verdict)  # fmt: skip
    f.counter("vsm_gateway_maybe", "Decisions the arbitrator made (MAYBE cases).", base, maybe)
    for reason, value in sorted(reasons.items()):
        f.counter("vsm_gateway_reasons", "Ingress gateway decisions by reason.", base, value,
                  reason=str(reason))  # fmt: skip


class _Replication(NamedTuple):
    """What the replication metrics read, from a typed status or a view document."""

    latency: Mapping[str, Any]
    transport: Mapping[str, Any]
    refused: Mapping[str, Any]
    keys: Any

    @classmethod
    def of(cls, rep: ReplicationStatus) -> _Replication:
        stats = rep.replicator
        return cls(rep.latency_ms.to_json(), stats.transport.to_json(), stats.refused, rep.keys)

    @classmethod
    def of_view(cls, rep: Mapping[str, Any]) -> _Replication:
        return cls(
            _map(rep.get("latency_ms")), _map(rep.get("transport")), _map(rep.get("refused")),
            rep.get("keys"),
        )  # fmt: skip


def _replication_metrics(f: _Families, base: Sequence[str], rep: _Replication) -> None:
    latency, transport = rep.latency, rep.transport
    for key, quantile in QUANTILES:
        f.gauge("vsm_replication_lag_ms",
                "Replication latency of peers' readings, ms (write to arrival here).",
                base, latency.get(key), quantile=quantile)  # fmt: skip
    f.gauge("vsm_replication_lag_samples", "Samples behind vsm_replication_lag_ms.", base,
            latency.get("count"))  # fmt: skip
    if transport:
        f.gauge("vsm_mqtt_connected", "1 while connected to the broker.", base,
                transport.get("state") == "connected")  # fmt: skip
    for direction in ("in", "out"):
        f.counter("vsm_mqtt_messages", "MQTT messages.", base,
                  transport.get(f"messages_{direction}"), direction=direction)  # fmt: skip
        f.counter("vsm_mqtt_bytes", "MQTT payload bytes.", base,
                  transport.get(f"bytes_{direction}"), direction=direction)  # fmt: skip
    f.counter("vsm_mqtt_reconnects", "Reconnections to the broker.", base,
              transport.get("reconnects"))  # fmt: skip
    for reason, value in sorted(rep.refused.items()):
        f.counter("vsm_replication_refused", "Inbound messages refused, by reason.", base,
                  value, reason=str(reason))  # fmt: skip
    f.gauge("vsm_replication_keys", "Keys in the replicated mesh document.", base,
            rep.keys)  # fmt: skip


def agent_families(status: NodeStatus) -> list[Metric]:
    """Metric families of one agent's status (pure)."""
    f = _Families(["node"])
    node = status.vsm.node
    f.gauge("vsm_node_info", "The node's mesh and zone.", [node.id], 1,
            mesh=node.mesh, zone=node.zone)  # fmt: skip
    _node_metrics(f, [node.id], status)
    return f.families()


def view_families(view: Mapping[str, Any]) -> list[Metric]:
    """Metric families of the aggregator's merged view (pure).

    Per node (labels ``mesh``, ``node``): what its replicated report says
    (health, safe mode, variety ratio, alarms), whether it is online, how old
    its report is, and the replication lag of its readings as seen here. Per
    mesh (label ``mesh``, ``node`` = the aggregator's id): the aggregator's own
    replicator and gateway (messages, refusals, gateway decisions by reason).
    """
    f = _Families(["mesh", "node"])
    for n in _list(view.get("nodes")):
        if not isinstance(n, Mapping):
            continue
        base = [str(n.get("mesh", "")), str(n.get("node", ""))]
        f.gauge("vsm_node_online", "1 while the node's presence is online.", base, n.get("online"))
        f.gauge("vsm_health", "The node's health from its report (0..1).", base, n.get("health"))
        f.gauge("vsm_safe_mode", "1 while S5 holds the node in safe mode.", base,
                n.get("safe_mode"))  # fmt: skip
        f.gauge("vsm_variety_ratio", "Environment over system variety (> 1: overwhelmed).",
                base, n.get("variety_ratio"))  # fmt: skip
        f.gauge("vsm_algedonic_active_alarms", "Unacknowledged alarms.", base,
                len(_list(n.get("alarms"))))  # fmt: skip
        f.gauge("vsm_report_age_seconds", "Age of the node's latest report here.", base,
                n.get("report_age_s"))  # fmt: skip
        f.gauge("vsm_readings", "Readings replicated by the node.", base,
                len(_map(n.get("readings"))))  # fmt: skip
        lag = _map(n.get("lag_ms"))
        for key, quantile in QUANTILES:
            f.gauge("vsm_replication_lag_ms",
                    "Replication latency of the node's readings to here, ms.",
                    base, lag.get(key), quantile=quantile)  # fmt: skip
    source = _map(view.get("source"))
    for mesh in _list(view.get("meshes")):
        if not isinstance(mesh, Mapping):
            continue
        base = [str(mesh.get("mesh", "")), str(source.get("id", ""))]
        _replication_metrics(f, base, _Replication.of_view(_map(mesh.get("replication"))))
        gateway = _map(mesh.get("gateway"))
        _gateway_metrics(f, base, gateway.get("allow"), gateway.get("deny"), None,
                         _map(gateway.get("reasons")))  # fmt: skip
        f.gauge("vsm_peers", "Peers by state.", base, len(_list(mesh.get("online_peers"))),
                state="online")  # fmt: skip
    alarms = [a for a in _list(view.get("alarms")) if isinstance(a, Mapping)]
    for a in alarms:
        base = [str(a.get("mesh", "")), str(a.get("node", ""))]
        f.gauge("vsm_algedonic_signal_intensity", "Latest algedonic signal of a node (0..1).",
                base, a.get("intensity"), source=str(a.get("source", "")))  # fmt: skip
    return f.families()


class _Once(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render(families: Iterable[Metric]) -> bytes:
    """The text exposition format (version 0.0.4) of ``families``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Once(families))
    return generate_latest(registry)
