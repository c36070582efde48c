"""The agent's configuration: frozen dataclasses, each default, type and limit written once.

:class:`AgentConfig` is one node's whole config: the node-level sections here
(``[node]``, ``[broker]``, ``[discovery]``, ``[status]``, ``[security]``,
``[homeassistant]``) and the VSM's own sections, which live in the VSM room
(agent/vsm/settings.py). A field's limits are in its metadata
(:func:`~vsm_edge.agent._limits.limits`); :mod:`.loader` reads TOML into these
by walking the fields, and docs/configuration.md documents them (a test
compares the documented defaults with these). A relative path is relative to
the config file, defaults included.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .._limits import identifier, limits, one_of
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


def _broker_url(url: str) -> str | None:
    if url in ("embedded", "mdns"):
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        return f'must be "embedded", "mdns" or mqtt[s]://host[:port], got {url!r}'
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        return f"invalid port in {url!r}"
    return None


def _ip_address(address: str) -> str | None:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return f"expected an IP address, got {address!r}"
    return None


def _service_type(service: str) -> str | None:
    if service.startswith("_") and service.endswith(".local."):
        return None
    return f"must look like _name._tcp.local., got {service!r}"


def _loopback(host: str) -> str | None:
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return f"must be a loopback address, got {host!r}"


_TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")


def _plain_topic(prefix: str) -> str | None:
    if _TOPIC.match(prefix):
        return None
    return f"must be a plain MQTT topic (no wildcards), got {prefix!r}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    id: str = field(metadata=limits(check=identifier))
    mesh: str = field(default="default", metadata=limits(check=identifier))
    zone: str = field(default="default", metadata=limits(check=identifier))
    key_file: Path | None = None
    data_dir: Path = Path("./vsm-data")
    # directories searched (before sys.path) for a unit kind "module:attribute"
    plugin_dirs: tuple[Path, ...] = ()


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    # "embedded" | "mdns" | mqtt://host:port | mqtts://host:port
    url: str = field(default="embedded", metadata=limits(check=_broker_url))
    tls: bool = False  # read from TOML: true for an mqtts:// url unless set
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None
    keepalive_s: int = field(default=30, metadata=limits(minimum=5, maximum=3600))

    @property
    def mode(self) -> str:
        """ "embedded", "mdns" or "url"."""
        return self.url if self.url in ("embedded", "mdns") else "url"


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    enabled: bool = True
    interfaces: tuple[str, ...] = field(default=("127.0.0.1",), metadata=limits(check=_ip_address))
    service_type: str = field(default="_vsm-edge._tcp.local.", metadata=limits(check=_service_type))


@dataclass(frozen=True, slots=True)
class StatusConfig:
    enabled: bool = True
    host: str = field(default="127.0.0.1", metadata=limits(check=_loopback))
    # 0: an ephemeral port, written to data_dir/status.port
    port: int = field(default=7787, metadata=limits(minimum=0, maximum=65535))
    # a request head not complete by then gets 408
    head_timeout_s: float = field(default=5.0, metadata=limits(above=0, maximum=300))


@dataclass(frozen=True, slots=True)
class HomeAssistantConfig:
    """Home Assistant MQTT discovery (opt-in; see docs/homeassistant.md)."""

    enabled: bool = False
    discovery_prefix: str = field(default="homeassistant", metadata=limits(check=_plain_topic))
    state_interval_s: float = field(default=5.0, metadata=limits(minimum=0.5, maximum=3600))
    # number/switch/text entities that command units, unsigned, through the broker
    commands: bool = False


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """The ingress guard (docs/security.md): zone mode, mesh secrets, quarantine quorum."""

    # "open": admit every key until a zone arrives; "policy": fail closed
    zone: str = field(default="open", metadata=limits(check=one_of("open", "policy")))
    mesh_secret_file: Path | None = None  # keys the zone filters
    previous_mesh_secret_file: Path | None = None  # the old secret, during a rotation
    mesh_key_file: Path | None = None  # payload encryption (COSE_Encrypt0)
    arbitrator_model: Path | None = None  # None: the shipped model
    # distinct peers' proposals that quarantine here; 0: never
    quarantine_quorum: int = field(default=2, metadata=limits(minimum=0, maximum=64))


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
