"""Pattern detection across subsystems (pure; ``now`` in seconds is an argument).

* variety overflow: ``V(env) / V(sys)`` above ``overflow_ratio`` (1.5), with an
  early warning above ``warning_ratio`` (1.3); reported on each rise.
* control-loop oscillation: reported by S2 (:mod:`._s2`).
* metasystemic cascade: failures in S1, then S2, then S3, then S4, each after
  the previous, the whole chain within ``cascade_window_s`` (60 s).
* algedonic storm: reported by the algedonic core.
* clock skew: a peer's HLC wall time more than ``clock_skew_s`` (30 s) away
  from ours, reported once per peer until it comes back within the bound.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from .event import Subsystem
from .status import PatternsStatus, PatternStatus

__all__ = [
    "CascadeDetector",
    "ClockSkewDetector",
    "Pattern",
    "PatternLog",
    "VarietyOverflowDetector",
]

MAX_PEERS = 1024
WARNING = "warning"
ALARM = "alarm"


@dataclass(frozen=True, slots=True)
class Pattern:
    # variety-overflow, variety-warning, oscillation, cascade, algedonic-storm, clock-skew
    name: str
    severity: str
    subject: str
    detail: str
    at: float

    def snapshot(self) -> PatternStatus:
        return PatternStatus(self.name, self.severity, self.subject, self.detail, self.at)


class PatternLog:
    def __init__(self, size: int = 128) -> None:
        self.recent: deque[Pattern] = deque(maxlen=size)
        self.counts: Counter[str] = Counter()

    def add(self, pattern: Pattern) -> Pattern:
        self.recent.append(pattern)
        self.counts[pattern.name] += 1
        return pattern

    def snapshot(self) -> PatternsStatus:
        """Counts by name and the latest 16 patterns."""
        return PatternsStatus(
            counts=dict(self.counts), recent=tuple(p.snapshot() for p in list(self.recent)[-16:])
        )


class VarietyOverflowDetector:
    def __init__(self, warning_ratio: float, overflow_ratio: float) -> None:
        self.warning_ratio = warning_ratio
        self.overflow_ratio = overflow_ratio
        self.level = "normal"

    def evaluate(
        self, ratio: float, env_bits: float, sys_bits: float, now: float
    ) -> Pattern | None:
        if ratio > self.overflow_ratio:
            level = "overflow"
        elif ratio > self.warning_ratio:
            level = "warning"
        else:
            level = "normal"
        previous, self.level = self.level, level
        rank = {"normal": 0, "warning": 1, "overflow": 2}
        if rank[level] <= rank[previous]:
            return None
        detail = f"V(env) {env_bits:.2f} bits / V(sys) {sys_bits:.2f} bits = {ratio:.2f}"
        if level == "overflow":
            return Pattern(
                "variety-overflow", ALARM, "s4", f"{detail} > {self.overflow_ratio:g}", now
            )
        return Pattern("variety-warning", WARNING, "s4", f"{detail} > {self.warning_ratio:g}", now)


CHAIN = (Subsystem.S1, Subsystem.S2, Subsystem.S3, Subsystem.S4)


class CascadeDetector:
    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._failures: dict[Subsystem, deque[tuple[float, str]]] = {
            s: deque(maxlen=64) for s in CHAIN
        }
        self._reported_after = float("-inf")

    def failure(self, subsystem: Subsystem, detail: str, now: float) -> Pattern | None:
        if subsystem not in self._failures:
            return None
        self._failures[subsystem].append((now, detail))
        if subsystem is not Subsystem.S4:
            return None
        # walk back: latest S3 before this S4, latest S2 before it, latest S1 before that
        t, chain = now, [(now, detail)]
        for s in (Subsystem.S3, Subsystem.S2, Subsystem.S1):
            earlier = [f for f in self._failures[s] if f[0] <= t and f[0] > self._reported_after]
            if not earlier:
                return None
            t, d = earlier[-1]
            chain.append((t, d))
        if now - t > self.window_s:
            return None
        self._reported_after = now
        steps = " -> ".join(f"{s}: {d}" for s, (_, d) in zip(CHAIN, reversed(chain), strict=True))
        return Pattern("cascade", ALARM, "vsm", f"{steps} within {now - t:.1f} s", now)


class ClockSkewDetector:
    def __init__(self, bound_s: float) -> None:
        self.bound_ms = bound_s * 1000
        self.skewed: dict[str, int] = {}

    def observe(
        self, peer: str, remote_wall_ms: int, local_wall_ms: int, now: float
    ) -> Pattern | None:
        skew = remote_wall_ms - local_wall_ms
        if abs(skew) > self.bound_ms:
            first = peer not in self.skewed
            if first and len(self.skewed) >= MAX_PEERS:
                del self.skewed[next(iter(self.skewed))]
            self.skewed[peer] = skew
            if first:
                return Pattern(
                    "clock-skew",
                    ALARM,
                    peer,
                    f"{peer}'s clock is {skew / 1000:+.1f} s from ours "
                    f"(bound {self.bound_ms / 1000:g} s)",
                    now,
                )
            return None
        self.skewed.pop(peer, None)
        return None
