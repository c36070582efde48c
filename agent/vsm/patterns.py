"""Pattern detection across subsystems (pure; ``now`` in seconds is an argument).

* variety overflow: ``V(env) / V(sys)`` above ``overflow_ratio`` (1.5), with an
  early warning above ``warning_ratio`` (1.3); reported on each rise.
* control-loop oscillation: reported by S2 (:mod:`._s2`).
* metasystemic cascade: failures in S1, then S2, then S3, then S4, each after
  the previous, the whole chain within ``cascade_window_s`` (60 s).
* algedonic storm: reported by the algedonic core.
* clock skew: measured only from messages received live, as each arrives:
  the HLC wall time of the peer's signed envelope against our wall clock at
  receipt (:class:`ClockSkewDetector`); never from the stamp of a stored or
  replicated value (a report or alarm read back after a restart, relayed by
  another peer, or retained by the broker: its age is silence, which the mesh
  view calls "stale"). Reported once per peer until it comes back within the
  bound.
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
    """How far a peer's clock is from ours, from the stamps of its live messages.

    Each sample is ``sent_ms - received_ms``: the HLC wall time of a message
    the peer signed, minus our wall clock when it arrived. It is the clock
    offset minus the time in transit, and transit is never negative, so:

    * a sample more than ``bound_s`` *ahead* proves the peer's clock is ahead
      (nothing arrives before it was sent): reported at once;
    * a sample more than ``bound_s`` *behind* is either a clock behind or a
      message delivered late (a broker's queued session after a reconnect,
      a backlog): reported only when every sample from that peer stayed
      behind for ``bound_s`` seconds (``now``), so a late burst followed by
      one live message is no skew, while a clock that is really behind is.

    A sample within the bound clears the peer. Pure: ``now`` (seconds, the
    caller's monotonic clock) and both wall times (ms) are arguments.
    """

    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self.bound_ms = bound_s * 1000
        self.skewed: dict[str, int] = {}
        self._behind_since: dict[str, float] = {}

    def observe(self, peer: str, sent_ms: int, received_ms: int, now: float) -> Pattern | None:
        """One live message of ``peer``: its pattern when the peer is found skewed.

        ``sent_ms`` is the wall time of the envelope's HLC, ``received_ms``
        our wall clock when it arrived; never pass the stamp of a value read
        back from replicated or retained state.
        """
        skew = sent_ms - received_ms
        if -self.bound_ms <= skew <= self.bound_ms:
            self.skewed.pop(peer, None)
            self._behind_since.pop(peer, None)
            return None
        if skew < 0:
            since = self._behind_since.get(peer)
            if since is None:
                if len(self._behind_since) >= MAX_PEERS:
                    del self._behind_since[next(iter(self._behind_since))]
                self._behind_since[peer] = now
                return None
            if now - since < self.bound_s:
                return None  # perhaps late: wait for a live message to say
        first = peer not in self.skewed
        if first and len(self.skewed) >= MAX_PEERS:
            del self.skewed[next(iter(self.skewed))]
        self.skewed[peer] = skew
        if not first:
            return None
        return Pattern(
            "clock-skew",
            ALARM,
            peer,
            f"{peer}'s clock is {skew / 1000:+.1f} s from ours (bound {self.bound_ms / 1000:g} s)",
            now,
        )
