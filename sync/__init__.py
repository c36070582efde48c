"""vsm_edge.sync: replication that converges whatever the network does.

Hybrid logical clocks, delta-state CRDTs (plus pycrdt/Yjs documents), the
signed COSE wire codec, gossip and anti-entropy, discovery and the store.
Pure, sans-I/O cores with thin adapters; imports nothing else of vsm_edge.
"""

from ._cbor import DEFAULT_MAX_DEPTH, DEFAULT_MAX_ITEMS, DEFAULT_MAX_SIZE
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
    KeyFileError,
    LimitExceededError,
    MalformedError,
    SignatureError,
    SyncError,
    UnsupportedVersionError,
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

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "DEFAULT_MAX_SIZE",
    "IV_SIZE",
    "KID_SIZE",
    "KINDS",
    "MAX_LOGICAL",
    "MAX_WALL_MS",
    "NONCE_SIZE",
    "PROTOCOL_VERSION",
    "ClockDriftError",
    "DecryptError",
    "Envelope",
    "FileHighWaterMark",
    "HighWaterMark",
    "HybridLogicalClock",
    "KeyFileError",
    "LimitExceededError",
    "MalformedError",
    "MemoryHighWaterMark",
    "MeshKey",
    "NodeKey",
    "SignatureError",
    "SyncError",
    "Timestamp",
    "UnsupportedVersionError",
    "WireError",
    "decode_envelope",
    "derive_kid",
    "load_mesh_key",
    "load_node_key",
    "load_public_key",
    "open_envelope",
    "save_mesh_key",
    "save_node_key",
    "save_public_key",
    "sign_envelope",
    "wall_clock_ms",
]
