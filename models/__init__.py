"""vsm_edge.models: pure decision code for ingress security.

Bloom filters, the ALLOW/DENY/MAYBE gateway, zombie detection features and the
int8 neural arbitrator. Features in, decisions out; imports nothing else of
vsm_edge. Neither numpy nor a TFLite runtime is imported with the package:
the arbitrator's module (numpy) is imported on first use of
:class:`Arbitrator`, :func:`load_arbitrator` or :func:`load_arbitrator_or_none`,
the runtime when an interpreter is built, and :class:`LazyArbitrator` defers
both to the first MAYBE. The Bloom filters import numpy only for their batch
and merge operations.

The traffic simulator (``vsm_edge.models.traffic_sim``) and the training
script (``python -m vsm_edge.models.train_arbitrator``, needs the ``[train]``
extra) are modules of their own, not imported here.
"""

from typing import TYPE_CHECKING, Any

from ._bloom import (
    DEFAULT_MAX_BITS,
    BloomFilter,
    derive_key,
    false_positive_rate,
    optimal_parameters,
)
from ._errors import (
    FilterFormatError,
    IncompatibleFilterError,
    ModelError,
    ModelsError,
    ModelUnavailableError,
)
from ._gateway import (
    Arbiter,
    Arbitration,
    Decision,
    Gateway,
    GatewayConfig,
    Inbound,
    Verdict,
)
from ._lazy import LazyArbitrator
from ._loader import CLASSES, DEFAULT_RUNTIMES
from ._replay import ReplayConfig, ReplayVerdict, ReplayWindow
from ._zombie import (
    FEATURE_NAMES,
    Observation,
    Quarantine,
    ZombieConfig,
    ZombieDetector,
    ZombieEvent,
)
from ._zone import ZonePolicy, build_zone_filter

if TYPE_CHECKING:
    from ._arbitrator import Arbitrator, load_arbitrator, load_arbitrator_or_none

_LAZY = frozenset({"Arbitrator", "load_arbitrator", "load_arbitrator_or_none"})


def __getattr__(name: str) -> Any:
    # The arbitrator's module imports numpy (~19 MB of RSS here): only on use.
    if name in _LAZY:
        from . import _arbitrator

        value = getattr(_arbitrator, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLASSES",
    "DEFAULT_MAX_BITS",
    "DEFAULT_RUNTIMES",
    "FEATURE_NAMES",
    "Arbiter",
    "Arbitration",
    "Arbitrator",
    "BloomFilter",
    "Decision",
    "FilterFormatError",
    "Gateway",
    "GatewayConfig",
    "Inbound",
    "IncompatibleFilterError",
    "LazyArbitrator",
    "ModelError",
    "ModelUnavailableError",
    "ModelsError",
    "Observation",
    "Quarantine",
    "ReplayConfig",
    "ReplayVerdict",
    "ReplayWindow",
    "Verdict",
    "ZombieConfig",
    "ZombieDetector",
    "ZombieEvent",
    "ZonePolicy",
    "build_zone_filter",
    "derive_key",
    "false_positive_rate",
    "load_arbitrator",
    "load_arbitrator_or_none",
    "optimal_parameters",
]
