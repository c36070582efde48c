"""The agent's configuration: frozen dataclasses, each default written once.

:class:`AgentConfig` is one node's whole config: the node-level sections here
(``[node]``, ``[broker]``, ``[discovery]``, ``[status]``, ``[security]``,
``[homeassistant]``) and the VSM's own sections, which live in the VSM room
(agent/vsm/settings.py). :mod:`.loader` reads TOML into these;
docs/configuration.md documents them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..vsm.settings import (
    AlgedonicConfig,
    BusConfig,
    RuntimeConfig,
    S2Config,
    S3Config,
    S4Config,
    S5Config,
    UnitConfig,
)

if TYPE_CHECKING:
    from ..vsm.settings import VsmConfig

__all__ = [
    "AgentConfig",
    "BrokerConfig",
    "DiscoveryConfig",
    "HomeAssistantConfig",
    "NodeConfig",
    "SecurityConfig",
    "StatusConfig",
]


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str
    mesh: str = "default"
    zone: str = "default"
    key_file: Path | None = None
    data_dir: Path = Path("./vsm-data")


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    url: str = "embedded"
    tls: bool = False  # read from TOML: true for an mqtts:// url unless set
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = 30

    @property
    def mode(self) -> str:
        """ "embedded", "mdns" or "url"."""
        return self.url if self.url in ("embedded", "mdns") else "url"


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    enabled: bool = True
    interfaces: tuple[str, ...] = ("127.0.0.1",)
    service_type: str = "_vsm-edge._tcp.local."


@dataclass(frozen=True, slots=True)
class StatusConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    # 0: an ephemeral port, written to data_dir/status.port
    port: int = 7787
    # a request head not complete by then gets 408
    head_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery (opt-in; see docs/homeassistant.md)."""

    enabled: bool = False
    discovery_prefix: str = "homeassistant"
    state_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The ingress guard (docs/security.md): zone mode, mesh secrets, quarantine quorum."""

    # "open": admit every key until a zone arrives; "policy": fail closed
    zone: str = "open"
    mesh_secret_file: Path | None = None  # keys the zone filters
    previous_mesh_secret_file: Path | None = None  # the old secret, during a rotation
    mesh_key_file: Path | None = None  # payload encryption (COSE_Encrypt0)
    arbitrator_model: Path | None = None  # None: the shipped model
    # distinct peers' proposals that quarantine here; 0: never
    quarantine_quorum: int = 2


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One node's configuration; ``source`` is the file it was loaded from, if any."""

    node: NodeConfig
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    s2: S2Config = field(default_factory=S2Config)
    s3: S3Config = field(default_factory=S3Config)
    s4: S4Config = field(default_factory=S4Config)
    s5: S5Config = field(default_factory=S5Config)
    algedonic: AlgedonicConfig = field(default_factory=AlgedonicConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    homeassistant: HomeAssistantConfig = field(default_factory=HomeAssistantConfig)
    units: tuple[UnitConfig, ...] = ()
    source: Path | None = None


if TYPE_CHECKING:

    def _provides_vsm_config(config: AgentConfig) -> VsmConfig:
        return config  # mypy: an AgentConfig is what the Runtime reads
