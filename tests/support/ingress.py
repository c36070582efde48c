"""Helpers for the ingress-security tests (vsm_edge.models): peers, streams, a gateway."""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator

from vsm_edge.models import (
    Arbiter,
    BloomFilter,
    Gateway,
    GatewayConfig,
    Inbound,
    build_zone_filter,
    derive_key,
)

T0 = 1_700_000_000_000
SECRET = b"test mesh secret, 32 bytes long!"
ZONE_KEY = derive_key(SECRET, "zone")
NONCE_KEY = derive_key(SECRET, "nonce")
KINDS = ("delta", "digest", "presence", "delta", "digest", "repair")


def kid_of(name: str) -> bytes:
    return name.encode().ljust(32, b".")


class Peer:
    """An honest sender: its own HLC, fresh nonces, a node id as the source."""

    def __init__(self, name: str, rng: random.Random, *, skew_ms: int = 0) -> None:
        self.name = name
        self.kid = kid_of(name)
        self.rng = rng
        self.skew_ms = skew_ms
        self._wall = 0
        self._logical = 0

    def stamp(self, t_ms: int) -> int:
        local = t_ms + self.skew_ms
        if local > self._wall:
            self._wall, self._logical = local, 0
        else:
            self._logical += 1
        return self._wall << 16 | self._logical

    def message(self, t_ms: int, *, kind: str | None = None, size: int | None = None) -> Inbound:
        kind = kind or self.rng.choice(KINDS)
        size = size if size is not None else int(self.rng.lognormvariate(5.0, 0.8)) + 16
        return Inbound(
            kid=self.kid,
            hlc=self.stamp(t_ms),
            nonce=self.rng.randbytes(12),
            kind=kind,
            signature_ok=True,
            size=size,
            received_ms=t_ms + self.rng.randint(2, 30),
            source=self.name,
        )

    def honest(self, start_ms: int, end_ms: int, rate: float = 1.0) -> Iterator[Inbound]:
        """Jittered traffic at about ``rate`` messages a second."""
        t = start_ms
        while True:
            t += max(1, int(self.rng.gammavariate(2.0, 500.0 / rate)))
            if t >= end_ms:
                return
            yield self.message(t)

    def flood(self, start_ms: int, end_ms: int, rate: float) -> Iterator[Inbound]:
        """Machine-made traffic: one kind, one size, ``rate`` messages a second."""
        step = 1000.0 / rate
        t = float(start_ms)
        while t < end_ms:
            yield self.message(int(t), kind="delta", size=48)
            t += step


def in_time_order(*streams: Iterable[Inbound]) -> list[Inbound]:
    merged = [m for s in streams for m in s]
    merged.sort(key=lambda m: m.received_ms)
    return merged


def make_gateway(
    peers: Iterable[Peer],
    *,
    arbitrator: Arbiter | None = None,
    config: GatewayConfig | None = None,
) -> Gateway:
    zone: BloomFilter = build_zone_filter([p.kid for p in peers], ZONE_KEY)
    return Gateway(zone=zone, replay_key=NONCE_KEY, arbitrator=arbitrator, config=config, now_ms=T0)
