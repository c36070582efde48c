"""vsm_edge.models: pure decision code for ingress security.

Bloom filters, the ALLOW/DENY/MAYBE gateway, zombie detection features and the
int8 neural arbitrator. Features in, decisions out; imports nothing else of
vsm_edge.
"""

from ._bloom import (
    DEFAULT_MAX_BITS,
    BloomFilter,
    derive_key,
    false_positive_rate,
    optimal_parameters,
)
from ._errors import FilterFormatError, IncompatibleFilterError, ModelError, ModelsError
from ._replay import ReplayConfig, ReplayVerdict, ReplayWindow
from ._zone import ZonePolicy, build_zone_filter

__all__ = [
    "DEFAULT_MAX_BITS",
    "BloomFilter",
    "FilterFormatError",
    "IncompatibleFilterError",
    "ModelError",
    "ModelsError",
    "ReplayConfig",
    "ReplayVerdict",
    "ReplayWindow",
    "ZonePolicy",
    "build_zone_filter",
    "derive_key",
    "false_positive_rate",
    "optimal_parameters",
]
