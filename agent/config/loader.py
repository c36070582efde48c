"""Reading TOML into :class:`~vsm_edge.agent.config.schema.AgentConfig`.

Every problem raises :class:`ConfigError` naming the dotted key, e.g.
``config error: s3.budgets.s1.capacity: must be > 0, got -1``. Unknown keys are
errors too (a typo must not silently fall back to a default). The schema is
documented in docs/configuration.md; examples/node.toml is a complete example.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from .._errors import ConfigError
from ..vsm.bus import OverflowPolicy
from ..vsm.event import Subsystem
from ..vsm.settings import (
    DEFAULT_BUDGETS,
    DEFAULT_CHANNELS,
    DEFAULT_TIMESCALES,
    AlgedonicConfig,
    BudgetConfig,
    BusConfig,
    ChannelConfig,
    RuntimeConfig,
    S2Config,
    S3Config,
    S4Config,
    S5Config,
    UnitConfig,
)
from .schema import (
    AgentConfig,
    BrokerConfig,
    DiscoveryConfig,
    HomeAssistantConfig,
    NodeConfig,
    SecurityConfig,
    StatusConfig,
)

__all__ = ["MAX_CONFIG_BYTES", "load_config", "parse_config"]

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SUBSYSTEMS = (Subsystem.S1, Subsystem.S2, Subsystem.S3, Subsystem.S4, Subsystem.S5)
MAX_CONFIG_BYTES = 1 << 20


# -- reading tables -----------------------------------------------------------

T = TypeVar("T")


def _type_name(value: object) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), type(value).__name__
    )


class _Table:
    """One TOML table being read; remembers which keys were used."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"expected a table, got {_type_name(data)}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.data.get(name, {}), self.key(name))

    def string(
        self, name: str, default: str | None = None, *, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = self.raw(name)
        if value is None:
            if default is None:
                raise ConfigError(self.key(name), "required")
            return default
        if not isinstance(value, str):
            raise ConfigError(self.key(name), f"expected a string, got {_type_name(value)}")
        if pattern is not None and not pattern.match(value):
            raise ConfigError(
                self.key(name), f"must be 1-64 characters of A-Z a-z 0-9 _ -, got {value!r}"
            )
        return value

    def opt_string(self, name: str) -> str | None:
        return self.string(name, "") or None if self.has(name) else None

    def path_(
        self, name: str, default: Path | None = None, base: Path | None = None
    ) -> Path | None:
        if not self.has(name):
            return default
        value = Path(self.string(name))
        if base is not None and not value.is_absolute():
            value = base / value
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_type_name(value)}")
        return value

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            value = default
        elif isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected an integer, got {_type_name(value)}")
        _check_range(self.key(name), value, minimum, maximum, strict=False)
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        above: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self.raw(name)
        if value is None:
            value = default
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"expected a number, got {_type_name(value)}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(self.key(name), f"must be finite, got {value}")
        if above is not None:
            _check_range(self.key(name), value, above, None, strict=True)
        _check_range(self.key(name), value, minimum, maximum, strict=False)
        return value

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(self.key(name), "expected a list of strings")
        return tuple(value)

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        if value not in choices:
            raise ConfigError(self.key(name), f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _check_range(
    key: str, value: float, low: float | None, high: float | None, *, strict: bool
) -> None:
    if low is not None:
        if strict and not value > low:
            raise ConfigError(key, f"must be > {_fmt(low)}, got {_fmt(value)}")
        if not strict and value < low:
            raise ConfigError(key, f"must be >= {_fmt(low)}, got {_fmt(value)}")
    if high is not None and value > high:
        raise ConfigError(key, f"must be <= {_fmt(high)}, got {_fmt(value)}")


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _per_subsystem(
    table: _Table,
    defaults: Mapping[Subsystem, T],
    read: Callable[[_Table, T], T],
    allowed: tuple[Subsystem, ...],
) -> Mapping[Subsystem, T]:
    out = dict(defaults)
    names = {str(s): s for s in allowed}
    for name in list(table.data):
        if name not in names:
            raise ConfigError(table.key(name), f"unknown subsystem (known: {', '.join(names)})")
        sub = table.table(name)
        out[names[name]] = read(sub, defaults[names[name]])
        sub.done()
    return types.MappingProxyType(out)


# -- sections -----------------------------------------------------------------


@functools.cache
def _defaults(cls: type) -> Any:
    """The dataclass's own field defaults (each default is written once, in the
    dataclass), as attributes; a required field has none."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return types.SimpleNamespace(**values)


def _node(t: _Table, base: Path) -> NodeConfig:
    return NodeConfig(
        id=t.string("id", pattern=_ID),
        mesh=t.string("mesh", _defaults(NodeConfig).mesh, pattern=_ID),
        zone=t.string("zone", _defaults(NodeConfig).zone, pattern=_ID),
        key_file=t.path_("key_file", _defaults(NodeConfig).key_file, base),
        data_dir=t.path_("data_dir", base / "vsm-data", base) or base / "vsm-data",
    )


def _broker(t: _Table, base: Path) -> BrokerConfig:
    url = t.string("url", "embedded")
    if url not in ("embedded", "mdns"):
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(
                t.key("url"),
                f'must be "embedded", "mdns" or mqtt[s]://host[:port], got {url!r}',
            )
        try:
            parts.port  # noqa: B018 - validates the port
        except ValueError:
            raise ConfigError(t.key("url"), f"invalid port in {url!r}") from None
    tls = t.boolean("tls", url.startswith("mqtts://"))
    return BrokerConfig(
        url=url,
        tls=tls,
        ca_file=t.path_("ca_file", _defaults(BrokerConfig).ca_file, base),
        cert_file=t.path_("cert_file", _defaults(BrokerConfig).cert_file, base),
        key_file=t.path_("key_file", _defaults(BrokerConfig).key_file, base),
        username=t.opt_string("username"),
        password_file=t.path_("password_file", _defaults(BrokerConfig).password_file, base),
        keepalive_s=t.integer(
            "keepalive_s", _defaults(BrokerConfig).keepalive_s, minimum=5, maximum=3600
        ),
    )


def _discovery(t: _Table) -> DiscoveryConfig:
    interfaces = t.strings("interfaces", ("127.0.0.1",))
    for i, address in enumerate(interfaces):
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ConfigError(
                t.key(f"interfaces[{i}]"), f"expected an IP address, got {address!r}"
            ) from None
    service = t.string("service_type", "_vsm-edge._tcp.local.")
    if not (service.startswith("_") and service.endswith(".local.")):
        raise ConfigError(
            t.key("service_type"), f"must look like _name._tcp.local., got {service!r}"
        )
    return DiscoveryConfig(
        enabled=t.boolean("enabled", _defaults(DiscoveryConfig).enabled),
        interfaces=interfaces,
        service_type=service,
    )


def _status(t: _Table) -> StatusConfig:
    host = t.string("host", "127.0.0.1")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(t.key("host"), f"must be a loopback address, got {host!r}")
    return StatusConfig(
        enabled=t.boolean("enabled", _defaults(StatusConfig).enabled),
        host=host,
        port=t.integer("port", _defaults(StatusConfig).port, minimum=0, maximum=65535),
        head_timeout_s=t.number(
            "head_timeout_s", _defaults(StatusConfig).head_timeout_s, above=0, maximum=300
        ),
    )


def _channel(t: _Table, default: ChannelConfig) -> ChannelConfig:
    overflow = t.choice("overflow", default.overflow.value, tuple(p.value for p in OverflowPolicy))
    return ChannelConfig(
        capacity=t.integer("capacity", default.capacity, minimum=1, maximum=1 << 22),
        window_ms=t.number("window_ms", default.window_ms, minimum=0, maximum=60_000),
        overflow=OverflowPolicy(overflow),
    )


def _bus(t: _Table) -> BusConfig:
    channels = _per_subsystem(t.table("channels"), DEFAULT_CHANNELS, _channel, tuple(Subsystem))
    return BusConfig(
        channels=channels,
        dedup_capacity=t.integer(
            "dedup_capacity", _defaults(BusConfig).dedup_capacity, minimum=0, maximum=1 << 20
        ),
        bypass_intensity=t.number(
            "bypass_intensity", _defaults(BusConfig).bypass_intensity, minimum=0, maximum=1
        ),
    )


def _runtime(t: _Table) -> RuntimeConfig:
    initial = t.number("restart_initial_s", 0.1, above=0)
    maximum = t.number("restart_max_s", 30.0, above=0)
    if maximum < initial:
        raise ConfigError(
            t.key("restart_max_s"),
            f"must be >= restart_initial_s ({_fmt(initial)}), got {_fmt(maximum)}",
        )
    return RuntimeConfig(
        restart_initial_s=initial,
        restart_max_s=maximum,
        restart_reset_after_s=t.number(
            "restart_reset_after_s", _defaults(RuntimeConfig).restart_reset_after_s, above=0
        ),
        shutdown_timeout_s=t.number(
            "shutdown_timeout_s", _defaults(RuntimeConfig).shutdown_timeout_s, above=0, maximum=5.0
        ),
    )


def _budget(t: _Table, default: BudgetConfig) -> BudgetConfig:
    return BudgetConfig(
        capacity=t.number("capacity", default.capacity, above=0),
        refill_per_s=t.number("refill_per_s", default.refill_per_s, above=0),
    )


def _s2(t: _Table) -> S2Config:
    return S2Config(
        oscillation_window_s=t.number(
            "oscillation_window_s", _defaults(S2Config).oscillation_window_s, above=0
        ),
        min_conflicts=t.integer(
            "min_conflicts", _defaults(S2Config).min_conflicts, minimum=2, maximum=100
        ),
        regularity=t.number("regularity", _defaults(S2Config).regularity, above=0, maximum=1),
        max_changes_per_minute=t.integer(
            "max_changes_per_minute", _defaults(S2Config).max_changes_per_minute, minimum=1
        ),
        damping=t.number("damping", _defaults(S2Config).damping, minimum=0, maximum=0.99),
        hysteresis=t.number("hysteresis", _defaults(S2Config).hysteresis, minimum=0),
        hold_s=t.number("hold_s", _defaults(S2Config).hold_s, minimum=0),
        quiet_s=t.number("quiet_s", _defaults(S2Config).quiet_s, above=0),
        lease_ttl_s=t.number("lease_ttl_s", _defaults(S2Config).lease_ttl_s, above=0),
    )


def _s3(t: _Table) -> S3Config:
    return S3Config(
        budgets=_per_subsystem(t.table("budgets"), DEFAULT_BUDGETS, _budget, SUBSYSTEMS),
        aggregate_interval_s=t.number(
            "aggregate_interval_s", _defaults(S3Config).aggregate_interval_s, above=0
        ),
        attenuation_pain=t.number(
            "attenuation_pain", _defaults(S3Config).attenuation_pain, minimum=0, maximum=1
        ),
        audit_interval_s=t.number(
            "audit_interval_s", _defaults(S3Config).audit_interval_s, above=0
        ),
        stale_after_s=t.number("stale_after_s", _defaults(S3Config).stale_after_s, above=0),
        breaker_failures=t.integer(
            "breaker_failures", _defaults(S3Config).breaker_failures, minimum=1
        ),
        breaker_reset_s=t.number("breaker_reset_s", _defaults(S3Config).breaker_reset_s, above=0),
    )


def _s4(t: _Table) -> S4Config:
    scales_table = t.table("timescales_s")
    scales = dict(DEFAULT_TIMESCALES)
    names = {str(s): s for s in SUBSYSTEMS}
    for name in list(scales_table.data):
        if name not in names:
            raise ConfigError(
                scales_table.key(name), f"unknown subsystem (known: {', '.join(names)})"
            )
        scales[names[name]] = scales_table.number(name, 1.0, above=0)
    warning = t.number("warning_ratio", 1.3, above=0)
    overflow = t.number("overflow_ratio", 1.5, above=0)
    if overflow < warning:
        raise ConfigError(
            t.key("overflow_ratio"),
            f"must be >= warning_ratio ({_fmt(warning)}), got {_fmt(overflow)}",
        )
    return S4Config(
        timescales_s=types.MappingProxyType(scales),
        anomaly_alpha=t.number(
            "anomaly_alpha", _defaults(S4Config).anomaly_alpha, above=0, maximum=1
        ),
        anomaly_z=t.number("anomaly_z", _defaults(S4Config).anomaly_z, above=0),
        anomaly_warmup=t.integer("anomaly_warmup", _defaults(S4Config).anomaly_warmup, minimum=2),
        overflow_ratio=overflow,
        warning_ratio=warning,
        min_system_variety_bits=t.number(
            "min_system_variety_bits", _defaults(S4Config).min_system_variety_bits, above=0
        ),
        evaluate_interval_s=t.number(
            "evaluate_interval_s", _defaults(S4Config).evaluate_interval_s, above=0
        ),
        max_categories=t.integer(
            "max_categories", _defaults(S4Config).max_categories, minimum=2, maximum=1 << 16
        ),
        peer_stale_s=t.number("peer_stale_s", _defaults(S4Config).peer_stale_s, above=0),
        clock_skew_s=t.number("clock_skew_s", _defaults(S4Config).clock_skew_s, above=0),
        cascade_window_s=t.number(
            "cascade_window_s", _defaults(S4Config).cascade_window_s, above=0
        ),
    )


def _s5(t: _Table, base: Path) -> S5Config:
    keys: list[bytes] = []
    for i, text in enumerate(t.strings("admin_keys", ())):
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ConfigError(
                t.key(f"admin_keys[{i}]"), "expected 64 hex digits (an Ed25519 public key)"
            )
        keys.append(key)
    enter = t.number("safe_mode_pain", 0.7, above=0, maximum=1)
    leave = t.number("safe_mode_exit_pain", 0.3, minimum=0, maximum=1)
    if leave >= enter:
        raise ConfigError(
            t.key("safe_mode_exit_pain"),
            f"must be < safe_mode_pain ({_fmt(enter)}), got {_fmt(leave)}",
        )
    return S5Config(
        admin_keys=tuple(keys),
        policy_file=t.path_("policy_file", _defaults(S5Config).policy_file, base),
        safe_mode_pain=enter,
        safe_mode_after_s=t.number(
            "safe_mode_after_s", _defaults(S5Config).safe_mode_after_s, above=0
        ),
        safe_mode_exit_pain=leave,
        safe_mode_exit_after_s=t.number(
            "safe_mode_exit_after_s", _defaults(S5Config).safe_mode_exit_after_s, above=0
        ),
        s4_priority_z=t.number("s4_priority_z", _defaults(S5Config).s4_priority_z, above=0),
    )


def _algedonic(t: _Table) -> AlgedonicConfig:
    return AlgedonicConfig(
        baseline_alpha=t.number(
            "baseline_alpha", _defaults(AlgedonicConfig).baseline_alpha, above=0, maximum=1
        ),
        salience=t.number("salience", _defaults(AlgedonicConfig).salience, minimum=0, maximum=1),
        critical=t.number("critical", _defaults(AlgedonicConfig).critical, above=0, maximum=1),
        storm_signals=t.integer(
            "storm_signals", _defaults(AlgedonicConfig).storm_signals, minimum=2
        ),
        storm_window_s=t.number(
            "storm_window_s", _defaults(AlgedonicConfig).storm_window_s, above=0
        ),
        escalate_after_s=t.number(
            "escalate_after_s", _defaults(AlgedonicConfig).escalate_after_s, above=0
        ),
        max_alarms=t.integer(
            "max_alarms", _defaults(AlgedonicConfig).max_alarms, minimum=1, maximum=1 << 16
        ),
        outbound_capacity=t.integer(
            "outbound_capacity",
            _defaults(AlgedonicConfig).outbound_capacity,
            minimum=1,
            maximum=1 << 16,
        ),
    )


def _security(t: _Table, base: Path) -> SecurityConfig:
    return SecurityConfig(
        zone=t.choice("zone", _defaults(SecurityConfig).zone, ("open", "policy")),
        mesh_secret_file=t.path_(
            "mesh_secret_file", _defaults(SecurityConfig).mesh_secret_file, base
        ),
        previous_mesh_secret_file=t.path_(
            "previous_mesh_secret_file", _defaults(SecurityConfig).previous_mesh_secret_file, base
        ),
        mesh_key_file=t.path_("mesh_key_file", _defaults(SecurityConfig).mesh_key_file, base),
        arbitrator_model=t.path_(
            "arbitrator_model", _defaults(SecurityConfig).arbitrator_model, base
        ),
        quarantine_quorum=t.integer(
            "quarantine_quorum", _defaults(SecurityConfig).quarantine_quorum, minimum=0, maximum=64
        ),
    )


def _homeassistant(t: _Table) -> HomeAssistantConfig:
    prefix = t.string("discovery_prefix", "homeassistant")
    if not re.match(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$", prefix):
        raise ConfigError(
            t.key("discovery_prefix"), f"must be a plain MQTT topic (no wildcards), got {prefix!r}"
        )
    return HomeAssistantConfig(
        enabled=t.boolean("enabled", _defaults(HomeAssistantConfig).enabled),
        discovery_prefix=prefix,
        state_interval_s=t.number(
            "state_interval_s",
            _defaults(HomeAssistantConfig).state_interval_s,
            minimum=0.5,
            maximum=3600,
        ),
    )


def _units(raw: object) -> tuple[UnitConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("units", "expected an array of tables ([[units]])")
    units: list[UnitConfig] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        t = _Table(item, f"units[{i}]")
        name = t.string("name", pattern=_ID)
        if name in names:
            raise ConfigError(t.key("name"), f"duplicate unit name {name!r}")
        names.add(name)
        kind = t.string("kind")
        options = t.table("options")
        options.used.update(options.data)
        t.done()
        units.append(
            UnitConfig(name=name, kind=kind, options=types.MappingProxyType(dict(options.data)))
        )
    return tuple(units)


def parse_config(data: Mapping[str, Any], *, base: Path | None = None) -> AgentConfig:
    """Validate a parsed TOML mapping. Relative paths are taken from ``base`` (default: cwd).

    Raises :class:`ConfigError` naming the first bad key.
    """
    base = base or Path.cwd()
    root = _Table(data, "")
    if not root.has("node"):
        raise ConfigError("node", "required table missing ([node] with at least id)")
    sections: dict[str, Any] = {}
    for name, reader in (
        ("node", lambda t: _node(t, base)),
        ("broker", lambda t: _broker(t, base)),
        ("discovery", _discovery),
        ("status", _status),
        ("bus", _bus),
        ("runtime", _runtime),
        ("s2", _s2),
        ("s3", _s3),
        ("s4", _s4),
        ("s5", lambda t: _s5(t, base)),
        ("algedonic", _algedonic),
        ("security", lambda t: _security(t, base)),
        ("homeassistant", _homeassistant),
    ):
        table = root.table(name)
        sections[name] = reader(table)
        table.done()
    units = _units(root.raw("units"))
    root.done()
    _check_security(sections["security"], sections["s5"])
    return AgentConfig(units=units, **sections)


def _check_security(security: SecurityConfig, s5: S5Config) -> None:
    if security.zone == "policy":
        # Fail closed must not mean closed for ever: say what can never arrive.
        if not s5.admin_keys:
            raise ConfigError(
                "security.zone", '"policy" needs s5.admin_keys (who may sign the zone)'
            )
        if security.mesh_secret_file is None:
            raise ConfigError(
                "security.zone", '"policy" needs security.mesh_secret_file (it keys the zone)'
            )
    if security.previous_mesh_secret_file is not None and security.mesh_secret_file is None:
        raise ConfigError("security.previous_mesh_secret_file", "needs mesh_secret_file too")


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate a TOML file (relative paths in it are relative to the file).

    Raises :class:`ConfigError` (unreadable file, bad TOML, or a bad key).
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError("", f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"{path}: invalid TOML: {exc}") from None
    config = parse_config(data, base=path.resolve().parent)
    return AgentConfig(**{**_fields(config), "source": path})


def _fields(config: AgentConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in AgentConfig.__dataclass_fields__}
