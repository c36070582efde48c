"""vsm_edge.models: pure decision code for ingress security.

Bloom filters, the ALLOW/DENY/MAYBE gateway, zombie detection features and the
int8 neural arbitrator. Features in, decisions out; imports nothing else of
vsm_edge. The TFLite runtime is imported only when an arbitrator is loaded.

The traffic simulator (``vsm_edge.models.traffic_sim``) and the training
script (``python -m vsm_edge.models.train_arbitrator``, needs the ``[train]``
extra) are modules of their own, not imported here.
"""

from ._arbitrator import (
    CLASSES,
    DEFAULT_RUNTIMES,
    Arbitrator,
    load_arbitrator,
    load_arbitrator_or_none,
)
from ._bloom import (
    DEFAULT_MAX_BITS,
    BloomFilter,
    derive_key,
    false_positive_rate,
    optimal_parameters,
)
from ._errors import FilterFormatError, IncompatibleFilterError, ModelError, ModelsError
from ._gateway import (
    Arbiter,
    Arbitration,
    Decision,
    Gateway,
    GatewayConfig,
    Inbound,
    Verdict,
)
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
    "ModelError",
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
