"""vsm_edge.sync: replication that converges whatever the network does.

Hybrid logical clocks, delta-state CRDTs (plus pycrdt/Yjs documents), the
signed COSE wire codec, gossip and anti-entropy, discovery and the store.
Pure, sans-I/O cores with thin adapters; imports nothing else of vsm_edge.
"""

from ._astore import AsyncStore
from ._errors import (
    DiscoveryError,
    LimitExceededError,
    MalformedError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    StoreVersionError,
    SyncError,
    TxtRecordError,
    WireError,
)
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
from ._store import (
    CompactionResult,
    DeltaRun,
    LogEntry,
    LogSpan,
    LogStatistics,
    OutboxMessage,
    OverflowPolicy,
    Snapshot,
    Store,
    StoreConfig,
    StoreHighWaterMark,
    StoreStatistics,
)

__all__ = [
    "MAX_LOGICAL",
    "MAX_WALL_MS",
    "AsyncStore",
    "ClockDriftError",
    "CompactionResult",
    "DeltaRun",
    "DiscoveryError",
    "FileHighWaterMark",
    "HighWaterMark",
    "HybridLogicalClock",
    "LimitExceededError",
    "LogEntry",
    "LogSpan",
    "LogStatistics",
    "MalformedError",
    "MemoryHighWaterMark",
    "OutboxMessage",
    "OverflowPolicy",
    "Snapshot",
    "Store",
    "StoreConfig",
    "StoreCorruptError",
    "StoreError",
    "StoreFullError",
    "StoreHighWaterMark",
    "StoreStatistics",
    "StoreVersionError",
    "SyncError",
    "Timestamp",
    "TxtRecordError",
    "WireError",
    "wall_clock_ms",
]
