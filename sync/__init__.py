"""vsm_edge.sync: replication that converges whatever the network does.

Hybrid logical clocks, delta-state CRDTs (plus pycrdt/Yjs documents), the
signed COSE wire codec, gossip and anti-entropy, discovery and the store.
Pure, sans-I/O cores with thin adapters; imports nothing else of vsm_edge.
"""

from typing import TYPE_CHECKING, Any

from ._astore import (
    AsyncStore,
)
from ._backoff import (
    Backoff,
)
from ._causal import (
    AWSet,
    CausalCRDT,
    CausalLWWRegister,
    CCounter,
    MVRegister,
    ORMap,
)
from ._cbor import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_SIZE,
)
from ._cbor import dumps as cbor_dumps
from ._cbor import loads as cbor_loads
from ._context import (
    CausalContext,
    Dot,
    VersionVector,
)
from ._counters import (
    GCounter,
    LWWRegister,
    PNCounter,
)
from ._crdt import (
    DeltaCRDT,
    Digest,
)
from ._discovery import (
    MQTT_SERVICE_TYPE,
    SERVICE_TYPE,
    Advertisement,
    BrokerCandidate,
    Discovery,
    DiscoveryStatistics,
    DiscoveryTiming,
    Peer,
    PeerEvent,
    PeerEventKind,
    PeerTable,
    choose_broker,
    decode_txt,
    encode_txt,
)
from ._discovery_service import (
    MemoryDiscovery,
    MemoryDiscoveryNetwork,
)
from ._documents import ChangeObserver, CrdtDocument, YjsDocument
from ._dots import MAX_DOT_JUMP, RESERVE_AHEAD
from ._envelope import (
    IV_SIZE,
    KINDS,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    Envelope,
    decode_envelope,
    open_envelope,
    sign_envelope,
)
from ._errors import (
    DecryptError,
    DiscoveryError,
    KeyFileError,
    LimitExceededError,
    MalformedError,
    SignatureError,
    StoreCorruptError,
    StoreError,
    StoreFaultError,
    StoreFullError,
    StoreVersionError,
    SyncError,
    TxtRecordError,
    UnsupportedVersionError,
    WireError,
)
from ._gossip import ApplyOutcome, Gossip, GossipConfig, GossipDocument, GossipStatistics, Joined
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
from ._ingress import (
    CHANNELS,
    ChannelRule,
    Inbound,
    IngressCheck,
)
from ._keys import (
    KID_SIZE,
    MeshKey,
    NodeKey,
    derive_kid,
    load_mesh_key,
    load_node_key,
    load_public_key,
    save_mesh_key,
    save_node_key,
    save_public_key,
)
from ._memory import (
    MemoryBroker,
    MemoryBrokerStatistics,
    MemoryTransport,
)
from ._mqtt import (
    MqttSettings,
    MqttTransport,
)
from ._name_claim import NameClaim, RunStamp, resolve_name_claim
from ._replicator import (
    PeerInfo,
    Replicator,
    ReplicatorConfig,
    StoreFault,
    policy_topic,
    presence_topic,
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
from ._topics import (
    topic_matches,
    validate_filter,
    validate_topic,
)
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
from ._values import freeze, thaw
from ._ydoc import (
    REMOTE_ORIGIN,
    StateVector,
    YDoc,
    YUpdate,
)

__all__ = [
    "CHANNELS",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_SIZE",
    "IV_SIZE",
    "KID_SIZE",
    "KINDS",
    "MAX_DOT_JUMP",
    "MAX_LOGICAL",
    "MAX_WALL_MS",
    "MQTT_SERVICE_TYPE",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "REMOTE_ORIGIN",
    "RESERVE_AHEAD",
    "SERVICE_TYPE",
    "AWSet",
    "Advertisement",
    "ApplyOutcome",
    "AsyncStore",
    "Backoff",
    "BrokerCandidate",
    "CCounter",
    "CausalCRDT",
    "CausalContext",
    "CausalLWWRegister",
    "ChangeObserver",
    "ChannelRule",
    "ClockDriftError",
    "CompactionResult",
    "ConnectionLostError",
    "CrdtDocument",
    "DecryptError",
    "DeltaCRDT",
    "DeltaRun",
    "Digest",
    "Discovery",
    "DiscoveryError",
    "DiscoveryStatistics",
    "DiscoveryTiming",
    "Dot",
    "Envelope",
    "FileHighWaterMark",
    "GCounter",
    "Gossip",
    "GossipConfig",
    "GossipDocument",
    "GossipStatistics",
    "HighWaterMark",
    "HybridLogicalClock",
    "Inbound",
    "IngressCheck",
    "InvalidTopicError",
    "Joined",
    "KeyFileError",
    "LWWRegister",
    "LimitExceededError",
    "LogEntry",
    "LogSpan",
    "LogStatistics",
    "MVRegister",
    "MalformedError",
    "MemoryBroker",
    "MemoryBrokerStatistics",
    "MemoryDiscovery",
    "MemoryDiscoveryNetwork",
    "MemoryHighWaterMark",
    "MemoryTransport",
    "MeshKey",
    "Message",
    "MqttSettings",
    "MqttTransport",
    "NameClaim",
    "NodeKey",
    "NotConnectedError",
    "ORMap",
    "OutboxMessage",
    "Overflow",
    "OverflowPolicy",
    "PNCounter",
    "PayloadTooLargeError",
    "Peer",
    "PeerEvent",
    "PeerEventKind",
    "PeerInfo",
    "PeerTable",
    "PublishRefusedError",
    "Replicator",
    "ReplicatorConfig",
    "RunStamp",
    "SignatureError",
    "Snapshot",
    "StateVector",
    "Store",
    "StoreConfig",
    "StoreCorruptError",
    "StoreError",
    "StoreFault",
    "StoreFaultError",
    "StoreFullError",
    "StoreHighWaterMark",
    "StoreStatistics",
    "StoreVersionError",
    "SubscriptionRefusedError",
    "SyncError",
    "Timestamp",
    "Transport",
    "TransportError",
    "TransportState",
    "TransportStatistics",
    "TxtRecordError",
    "UnsupportedVersionError",
    "VersionVector",
    "Will",
    "WireError",
    "YDoc",
    "YUpdate",
    "YjsDocument",
    "ZeroconfDiscovery",
    "cbor_dumps",
    "cbor_loads",
    "choose_broker",
    "decode_envelope",
    "decode_txt",
    "derive_kid",
    "encode_txt",
    "freeze",
    "load_mesh_key",
    "load_node_key",
    "load_public_key",
    "open_envelope",
    "policy_topic",
    "presence_topic",
    "resolve_name_claim",
    "save_mesh_key",
    "save_node_key",
    "save_public_key",
    "sign_envelope",
    "thaw",
    "topic_matches",
    "validate_filter",
    "validate_topic",
    "wall_clock_ms",
]


if TYPE_CHECKING:
    from ._mdns import ZeroconfDiscovery


def __getattr__(name: str) -> Any:
    # zeroconf (and its sockets' machinery) costs megabytes: load it on first use.
    if name == "ZeroconfDiscovery":
        from ._mdns import ZeroconfDiscovery

        return ZeroconfDiscovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
