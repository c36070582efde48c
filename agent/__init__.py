"""vsm_edge.agent: the Trio runtime, the local Viable System Model, the CLI.

Compose a node with :class:`Runtime` from an :class:`AgentConfig`
(:func:`load_config` reads TOML); units plug into S1 through :class:`Unit`
(or :func:`unit`), registered from config or the ``vsm_edge.units`` entry
points. See docs/architecture.md and docs/configuration.md.
"""

from typing import TYPE_CHECKING, Any

from ._errors import (
    AgentError,
    ConfigError,
    PolicyError,
    StatusClientError,
    StatusError,
    UnitError,
)
from .config.loader import load_config, parse_config
from .config.schema import AgentConfig
from .units.simulated import SimulatedActuator, SimulatedSensor
from .vsm.algedonic import Alarm, AlgedonicCore, AlgedonicPort, Signal, SignalError
from .vsm.bus import Channel, ChannelStatistics, EventBus, OverflowPolicy, ReorderBuffer
from .vsm.event import HIGH, LOW, NORMAL, Event, Subsystem, content_id
from .vsm.lease import Lease, LeaseHeldError, LeaseMap
from .vsm.patterns import Pattern
from .vsm.runtime import Runtime
from .vsm.s2 import Coordination
from .vsm.s3 import CircuitBreaker, Control, TokenBucket
from .vsm.s4 import DecayingEntropy, Intelligence, MeshView, PeerReport
from .vsm.s5 import Identity, Policy, PolicyEngine, Recommendation, sign_policy, verify_policy
from .vsm.unit import (
    Command,
    CommandResult,
    CommandSpec,
    ReadingSpec,
    Unit,
    UnitContext,
    load_unit,
    unit,
    unit_from_description,
)
from .web.client import StatusClient

if TYPE_CHECKING:
    from .units.firmware import FirmwareBridgeUnit


def __getattr__(name: str) -> Any:
    # The firmware bridge (~2 MB of RSS) is imported only by an agent that uses it.
    if name == "FirmwareBridgeUnit":
        from .units.firmware import FirmwareBridgeUnit

        globals()[name] = FirmwareBridgeUnit
        return FirmwareBridgeUnit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "HIGH",
    "LOW",
    "NORMAL",
    "AgentConfig",
    "AgentError",
    "Alarm",
    "AlgedonicCore",
    "AlgedonicPort",
    "Channel",
    "ChannelStatistics",
    "CircuitBreaker",
    "Command",
    "CommandResult",
    "CommandSpec",
    "ConfigError",
    "Control",
    "Coordination",
    "DecayingEntropy",
    "Event",
    "EventBus",
    "FirmwareBridgeUnit",
    "Identity",
    "Intelligence",
    "Lease",
    "LeaseHeldError",
    "LeaseMap",
    "MeshView",
    "OverflowPolicy",
    "Pattern",
    "PeerReport",
    "Policy",
    "PolicyEngine",
    "PolicyError",
    "ReadingSpec",
    "Recommendation",
    "ReorderBuffer",
    "Runtime",
    "Signal",
    "SignalError",
    "SimulatedActuator",
    "SimulatedSensor",
    "StatusClient",
    "StatusClientError",
    "StatusError",
    "Subsystem",
    "TokenBucket",
    "Unit",
    "UnitContext",
    "UnitError",
    "content_id",
    "load_config",
    "load_unit",
    "parse_config",
    "sign_policy",
    "unit",
    "unit_from_description",
    "verify_policy",
]
