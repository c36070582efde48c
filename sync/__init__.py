"""vsm_edge.sync: replication that converges whatever the network does.

Hybrid logical clocks, delta-state CRDTs (plus pycrdt/Yjs documents), the
signed COSE wire codec, gossip and anti-entropy, discovery and the store.
Pure, sans-I/O cores with thin adapters; imports nothing else of vsm_edge.
"""

from ._causal import AWSet, CausalCRDT, CausalLWWRegister, CCounter, MVRegister, ORMap
from ._context import CausalContext, Dot, VersionVector
from ._counters import GCounter, LWWRegister, PNCounter
from ._crdt import DeltaCRDT, Digest
from ._errors import LimitExceededError, MalformedError, SyncError, WireError
from ._hlc import (
    MAX_LOGICAL,
    MAX_WALL_MS,
    ClockDriftError,
    FileHighWaterMark,
    HighWaterMark,
    HybridLogicalClock,
    MemoryHighWaterMark,
    Timestamp,
    wall_clock_ms,
)
from ._ydoc import REMOTE_ORIGIN, StateVector, YDoc, YUpdate

__all__ = [
    "MAX_LOGICAL",
    "MAX_WALL_MS",
    "REMOTE_ORIGIN",
    "AWSet",
    "CCounter",
    "CausalCRDT",
    "CausalContext",
    "CausalLWWRegister",
    "ClockDriftError",
    "DeltaCRDT",
    "Digest",
    "Dot",
    "FileHighWaterMark",
    "GCounter",
    "HighWaterMark",
    "HybridLogicalClock",
    "LWWRegister",
    "LimitExceededError",
    "MVRegister",
    "MalformedError",
    "MemoryHighWaterMark",
    "ORMap",
    "PNCounter",
    "StateVector",
    "SyncError",
    "Timestamp",
    "VersionVector",
    "WireError",
    "YDoc",
    "YUpdate",
    "wall_clock_ms",
]
