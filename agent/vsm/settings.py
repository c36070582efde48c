"""The VSM's own settings: one frozen dataclass per section, defaults and limits written once.

Each field's default and type are the dataclass's; its limits are in the field's
metadata (:func:`~vsm_edge.agent._limits.limits`). The config loader
(agent/config/loader.py) reads the TOML sections ``[bus]``, ``[runtime]``,
``[s2]``..``[s5]``, ``[algedonic]`` and ``[[units]]`` into these by walking
their fields; docs/configuration.md documents them (a test compares the
documented defaults with these). A per-subsystem table
(``bus.channels``, ``s3.budgets``, ``s4.timescales_s``) accepts the subsystems
its default names.

:class:`VsmConfig` is what :class:`~vsm_edge.agent.vsm.runtime.Runtime` reads
from its config; the agent's :class:`~vsm_edge.agent.config.schema.AgentConfig`
provides it, so the VSM does not depend on the agent's config room.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._limits import identifier, limits
from .bus import OverflowPolicy
from .event import Subsystem

__all__ = [
    "DEFAULT_BUDGETS",
    "DEFAULT_CHANNELS",
    "DEFAULT_TIMESCALES",
    "AlgedonicConfig",
    "BudgetConfig",
    "BusConfig",
    "ChannelConfig",
    "NodeSettings",
    "RuntimeConfig",
    "S2Config",
    "S3Config",
    "S4Config",
    "S5Config",
    "UnitConfig",
    "VsmConfig",
]


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    capacity: int = field(metadata=limits(minimum=1, maximum=1 << 22))
    window_ms: float = field(metadata=limits(minimum=0, maximum=60_000))
    overflow: OverflowPolicy = OverflowPolicy.DROP_OLDEST


DEFAULT_CHANNELS: Mapping[Subsystem, ChannelConfig] = types.MappingProxyType(
    {
        Subsystem.S1: ChannelConfig(8192, 50.0),
        Subsystem.S2: ChannelConfig(4096, 100.0),
        Subsystem.S3: ChannelConfig(4096, 200.0),
        Subsystem.S4: ChannelConfig(65536, 500.0),
        Subsystem.S5: ChannelConfig(1024, 1000.0),
        Subsystem.ALGEDONIC: ChannelConfig(1024, 10.0),
    }
)


@dataclass(frozen=True, slots=True)
class BusConfig:
    channels: Mapping[Subsystem, ChannelConfig] = field(default_factory=lambda: DEFAULT_CHANNELS)
    dedup_capacity: int = field(default=4096, metadata=limits(minimum=0, maximum=1 << 20))
    bypass_intensity: float = field(default=0.95, metadata=limits(minimum=0, maximum=1))


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    restart_initial_s: float = field(default=0.1, metadata=limits(above=0))
    restart_max_s: float = field(
        default=30.0, metadata=limits(above=0, at_least="restart_initial_s")
    )
    restart_reset_after_s: float = field(default=60.0, metadata=limits(above=0))
    shutdown_timeout_s: float = field(default=5.0, metadata=limits(above=0, maximum=5.0))


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    capacity: float = field(metadata=limits(above=0))
    refill_per_s: float = field(metadata=limits(above=0))


DEFAULT_BUDGETS: Mapping[Subsystem, BudgetConfig] = types.MappingProxyType(
    {
        Subsystem.S1: BudgetConfig(2000, 100),
        Subsystem.S2: BudgetConfig(1000, 50),
        Subsystem.S3: BudgetConfig(1000, 50),
        Subsystem.S4: BudgetConfig(500, 25),
        Subsystem.S5: BudgetConfig(250, 10),
    }
)


@dataclass(frozen=True, slots=True)
class S2Config:
    oscillation_window_s: float = field(default=5.0, metadata=limits(above=0))
    min_conflicts: int = field(default=3, metadata=limits(minimum=2, maximum=100))
    # max coefficient of variation of the intervals
    regularity: float = field(default=0.25, metadata=limits(above=0, maximum=1))
    max_changes_per_minute: int = field(default=10, metadata=limits(minimum=1))
    damping: float = field(default=0.7, metadata=limits(minimum=0, maximum=0.99))
    # numeric changes smaller than this are ignored while damped
    hysteresis: float = field(default=0.0, metadata=limits(minimum=0))
    # minimum time between changes of a damped target
    hold_s: float = field(default=2.0, metadata=limits(minimum=0))
    # damping ends after this long without conflict
    quiet_s: float = field(default=30.0, metadata=limits(above=0))
    lease_ttl_s: float = field(default=30.0, metadata=limits(above=0))


@dataclass(frozen=True, slots=True)
class S3Config:
    budgets: Mapping[Subsystem, BudgetConfig] = field(default_factory=lambda: DEFAULT_BUDGETS)
    aggregate_interval_s: float = field(default=1.0, metadata=limits(above=0))
    attenuation_pain: float = field(default=0.6, metadata=limits(minimum=0, maximum=1))
    audit_interval_s: float = field(default=10.0, metadata=limits(above=0))
    stale_after_s: float = field(default=30.0, metadata=limits(above=0))
    breaker_failures: int = field(default=5, metadata=limits(minimum=1))
    breaker_reset_s: float = field(default=30.0, metadata=limits(above=0))


DEFAULT_TIMESCALES: Mapping[Subsystem, float] = types.MappingProxyType(
    {
        Subsystem.S1: 1.0,
        Subsystem.S2: 10.0,
        Subsystem.S3: 60.0,
        Subsystem.S4: 300.0,
        Subsystem.S5: 1800.0,
    }
)


@dataclass(frozen=True, slots=True)
class S4Config:
    timescales_s: Mapping[Subsystem, float] = field(
        default_factory=lambda: DEFAULT_TIMESCALES, metadata=limits(above=0)
    )
    anomaly_alpha: float = field(default=0.05, metadata=limits(above=0, maximum=1))
    anomaly_z: float = field(default=4.0, metadata=limits(above=0))
    anomaly_warmup: int = field(default=30, metadata=limits(minimum=2))
    overflow_ratio: float = field(default=1.5, metadata=limits(above=0, at_least="warning_ratio"))
    warning_ratio: float = field(default=1.3, metadata=limits(above=0))
    min_system_variety_bits: float = field(default=1.0, metadata=limits(above=0))
    evaluate_interval_s: float = field(default=1.0, metadata=limits(above=0))
    max_categories: int = field(default=1024, metadata=limits(minimum=2, maximum=1 << 16))
    peer_stale_s: float = field(default=30.0, metadata=limits(above=0))
    clock_skew_s: float = field(default=30.0, metadata=limits(above=0))
    cascade_window_s: float = field(default=60.0, metadata=limits(above=0))


@dataclass(frozen=True, slots=True)
class S5Config:
    admin_keys: tuple[bytes, ...] = ()  # Ed25519 public keys, 64 hex digits each in TOML
    policy_file: Path | None = None
    safe_mode_pain: float = field(default=0.7, metadata=limits(above=0, maximum=1))
    safe_mode_after_s: float = field(default=10.0, metadata=limits(above=0))
    safe_mode_exit_pain: float = field(
        default=0.3, metadata=limits(minimum=0, maximum=1, less_than="safe_mode_pain")
    )
    safe_mode_exit_after_s: float = field(default=30.0, metadata=limits(above=0))
    s4_priority_z: float = field(default=6.0, metadata=limits(above=0))


@dataclass(frozen=True, slots=True)
class AlgedonicConfig:
    baseline_alpha: float = field(default=0.05, metadata=limits(above=0, maximum=1))
    salience: float = field(default=0.2, metadata=limits(minimum=0, maximum=1))
    critical: float = field(default=0.95, metadata=limits(above=0, maximum=1))
    storm_signals: int = field(default=20, metadata=limits(minimum=2))
    storm_window_s: float = field(default=1.0, metadata=limits(above=0))
    escalate_after_s: float = field(default=30.0, metadata=limits(above=0))
    max_alarms: int = field(default=256, metadata=limits(minimum=1, maximum=1 << 16))
    outbound_capacity: int = field(default=256, metadata=limits(minimum=1, maximum=1 << 16))
    # settled alarms are forgotten (and their records removed) this long after settling
    retention_s: float = field(default=604800.0, metadata=limits(minimum=60))


@dataclass(frozen=True, slots=True)
class UnitConfig:
    name: str = field(metadata=limits(check=identifier))
    kind: str
    options: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))


# -- what the runtime reads ---------------------------------------------------------


class NodeSettings(Protocol):
    """The node's identity and state directory."""

    @property
    def id(self) -> str: ...
    @property
    def mesh(self) -> str: ...
    @property
    def zone(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def plugin_dirs(self) -> Sequence[Path]: ...


class VsmConfig(Protocol):
    """What :class:`~vsm_edge.agent.vsm.runtime.Runtime` reads from its config (read-only).

    :class:`~vsm_edge.agent.config.schema.AgentConfig` provides it (checked by mypy).
    """

    @property
    def node(self) -> NodeSettings: ...
    @property
    def bus(self) -> BusConfig: ...
    @property
    def runtime(self) -> RuntimeConfig: ...
    @property
    def s2(self) -> S2Config: ...
    @property
    def s3(self) -> S3Config: ...
    @property
    def s4(self) -> S4Config: ...
    @property
    def s5(self) -> S5Config: ...
    @property
    def algedonic(self) -> AlgedonicConfig: ...
    @property
    def units(self) -> Sequence[UnitConfig]: ...
