"""vsm_edge.sync: replication that converges whatever the network does.

Hybrid logical clocks, delta-state CRDTs (plus pycrdt/Yjs documents), the
signed COSE wire codec, gossip and anti-entropy, discovery and the store.
Pure, sans-I/O cores with thin adapters; imports nothing else of vsm_edge.
"""

from ._backoff import Backoff
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
from ._memory import MemoryBroker, MemoryBrokerStatistics, MemoryTransport
from ._mqtt import MqttSettings, MqttTransport
from ._topics import topic_matches, validate_filter, validate_topic
from ._transport import (
    ConnectionLostError,
    InvalidTopicError,
    Message,
    NotConnectedError,
    Overflow,
    PayloadTooLargeError,
    PublishRefusedError,
    SubscriptionRefusedError,
    Transport,
    TransportError,
    TransportState,
    TransportStatistics,
    Will,
)

__all__ = [
    "MAX_LOGICAL",
    "MAX_WALL_MS",
    "Backoff",
    "ClockDriftError",
    "ConnectionLostError",
    "FileHighWaterMark",
    "HighWaterMark",
    "HybridLogicalClock",
    "InvalidTopicError",
    "LimitExceededError",
    "MalformedError",
    "MemoryBroker",
    "MemoryBrokerStatistics",
    "MemoryHighWaterMark",
    "MemoryTransport",
    "Message",
    "MqttSettings",
    "MqttTransport",
    "NotConnectedError",
    "Overflow",
    "PayloadTooLargeError",
    "PublishRefusedError",
    "SubscriptionRefusedError",
    "SyncError",
    "Timestamp",
    "Transport",
    "TransportError",
    "TransportState",
    "TransportStatistics",
    "Will",
    "WireError",
    "topic_matches",
    "validate_filter",
    "validate_topic",
    "wall_clock_ms",
]
