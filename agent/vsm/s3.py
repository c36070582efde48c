"""S3 control: token-bucket budgets, attenuation, circuit breakers, S3* audits.

Pure: every method takes ``now`` (seconds, any monotonic origin).

Attenuation: an event that finds its subsystem's bucket empty is *not* simply
lost. High-priority events pass (counted as overdraft); normal ones are folded
into one aggregate per ``(source, name)`` (count, mean, min, max) that is
emitted every ``aggregate_interval_s``; low-priority ones are dropped. Every
decision is counted per source, so the operator sees what was attenuated.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .event import HIGH, LOW, Subsystem
from .settings import S3Config
from .status import AttenuationStatus, BreakerStatus, BudgetStatus

__all__ = [
    "Admission",
    "Aggregate",
    "AuditFinding",
    "BreakerState",
    "CircuitBreaker",
    "Control",
    "TokenBucket",
]


class TokenBucket:
    """Capacity ``capacity`` tokens, refilled at ``refill_per_s`` (times ``scale``)."""

    __slots__ = ("_tokens", "_updated", "capacity", "refill_per_s", "scale")

    def __init__(self, capacity: float, refill_per_s: float, now: float) -> None:
        if capacity <= 0 or refill_per_s <= 0:
            raise ValueError("capacity and refill_per_s must be > 0")
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.scale = 1.0
        self._tokens = capacity
        self._updated = now

    def tokens(self, now: float) -> float:
        elapsed = now - self._updated
        if elapsed > 0:
            self._tokens = min(
                self.capacity, self._tokens + elapsed * self.refill_per_s * self.scale
            )
            self._updated = now
        return self._tokens

    def try_take(self, now: float, n: float = 1.0) -> bool:
        tokens = self._tokens
        if now > self._updated:
            tokens = min(
                self.capacity, tokens + (now - self._updated) * self.refill_per_s * self.scale
            )
            self._updated = now
        if tokens >= n:
            self._tokens = tokens - n
            return True
        self._tokens = tokens
        return False

    def time_until(self, now: float, n: float = 1.0) -> float:
        """Seconds until ``n`` tokens are available (0 if they are)."""
        missing = n - self.tokens(now)
        return max(0.0, missing / (self.refill_per_s * self.scale))


class Admission(enum.IntEnum):
    PASS = 0
    OVERDRAFT = 1  # high priority over budget: passes, counted
    AGGREGATE = 2
    DROP = 3


@dataclass(frozen=True, slots=True)
class Aggregate:
    """What attenuation folded for one ``(source, name)`` over one interval."""

    source: str
    name: str
    count: int
    mean: float
    minimum: float
    maximum: float
    last: float


class _Fold:
    __slots__ = ("count", "last", "maximum", "minimum", "total")

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.minimum = float("inf")
        self.maximum = float("-inf")
        self.last = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.last = value
        if value < self.minimum:
            self.minimum = value
        if value > self.maximum:
            self.maximum = value


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """One external dependency (the broker, a serial port, a peer).

    ``failures`` consecutive failures open it; after ``reset_s`` one trial call
    is allowed (half-open); its success closes the breaker, its failure opens
    it again.
    """

    def __init__(self, name: str, *, failures: int, reset_s: float) -> None:
        self.name = name
        self.threshold = failures
        self.reset_s = reset_s
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.opens = 0
        self.rejected = 0
        self._trial = False

    def allow(self, now: float) -> bool:
        """May a call be made now? (In half-open state only one trial at a time.)"""
        if self.state is BreakerState.OPEN:
            if now - self.opened_at >= self.reset_s:
                self.state = BreakerState.HALF_OPEN
                self._trial = False
            else:
                self.rejected += 1
                return False
        if self.state is BreakerState.HALF_OPEN:
            if self._trial:
                self.rejected += 1
                return False
            self._trial = True
        return True

    def success(self) -> None:
        self.consecutive = 0
        self.state = BreakerState.CLOSED
        self._trial = False

    def failure(self, now: float) -> bool:
        """Record a failure; True when this failure opened the breaker."""
        self.consecutive += 1
        self._trial = False
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive >= self.threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now
            self.opens += 1
            return True
        return False

    def snapshot(self) -> BreakerStatus:
        return BreakerStatus(
            state=self.state.value,
            consecutive_failures=self.consecutive,
            opens=self.opens,
            rejected=self.rejected,
        )


@dataclass(frozen=True, slots=True)
class AuditFinding:
    unit: str
    problem: str


class Control:
    """S3: budgets per subsystem, attenuation, breakers, audit bookkeeping."""

    def __init__(self, config: S3Config, now: float) -> None:
        self.config = config
        self.buckets: dict[Subsystem, TokenBucket] = {
            s: TokenBucket(b.capacity, b.refill_per_s, now) for s, b in config.budgets.items()
        }
        self._s1 = self.buckets[Subsystem.S1]
        self.passed: dict[Subsystem, int] = dict.fromkeys(self.buckets, 0)
        self.s1_passed = 0  # readings; kept apart from ``passed`` (enum keys hash slowly)
        self.overdraft = 0
        self.aggregated: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.refused_commands = 0
        self._folds: dict[tuple[str, str], _Fold] = {}
        self.attenuating = False
        self.attenuation_started = 0.0
        self.attenuation_episodes = 0
        self.exempt: dict[str, float] = {}  # source -> until (S5 arbitration)
        self.breakers: dict[str, CircuitBreaker] = {}
        self.last_seen: dict[str, float] = {}

    # -- budgets and attenuation ------------------------------------------------

    def admit_reading(self, source: str, priority: int, now: float) -> Admission:
        """The S1 budget decision for one reading (hot path)."""
        self.last_seen[source] = now
        # TokenBucket.try_take, inlined: this runs for every reading
        bucket = self._s1
        tokens = bucket._tokens
        if now > bucket._updated:
            tokens += (now - bucket._updated) * bucket.refill_per_s * bucket.scale
            if tokens > bucket.capacity:
                tokens = bucket.capacity
            bucket._updated = now
        if tokens >= 1.0:
            bucket._tokens = tokens - 1.0
            self.s1_passed += 1
            return Admission.PASS
        bucket._tokens = tokens
        return self._over_budget(source, priority, now)

    def _over_budget(self, source: str, priority: int, now: float) -> Admission:
        if not self.attenuating:
            self.attenuating = True
            self.attenuation_started = now
            self.attenuation_episodes += 1
        if priority >= HIGH or (self.exempt and self.exempt.get(source, 0.0) > now):
            self.overdraft += 1
            return Admission.OVERDRAFT
        if priority <= LOW:
            self.dropped[source] = self.dropped.get(source, 0) + 1
            return Admission.DROP
        return Admission.AGGREGATE

    def fold(self, source: str, name: str, value: float) -> None:
        """Fold an AGGREGATE reading (counted)."""
        key = (source, name)
        fold = self._folds.get(key)
        if fold is None:
            fold = self._folds[key] = _Fold()
        fold.add(value)
        self.aggregated[source] = self.aggregated.get(source, 0) + 1

    def flush(self, now: float) -> list[Aggregate]:
        """The aggregates folded since the last flush; ends attenuation once the budget is back."""
        out = [
            Aggregate(s, n, f.count, f.total / f.count, f.minimum, f.maximum, f.last)
            for (s, n), f in self._folds.items()
        ]
        self._folds.clear()
        # hysteresis: attenuation ends once a tenth of the budget is back
        if self.attenuating and not out and self._s1.tokens(now) >= 0.1 * self._s1.capacity:
            self.attenuating = False
        return out

    def authorize(self, subsystem: Subsystem, now: float) -> str | None:
        """Take one token of ``subsystem``'s budget for a command; a refusal reason or None."""
        bucket = self.buckets[subsystem]
        if bucket.try_take(now):
            self.passed[subsystem] += 1
            return None
        self.refused_commands += 1
        return (
            f"s3: budget {subsystem} exhausted ({bucket.tokens(now):.1f} of "
            f"{bucket.capacity:g} tokens, refill {bucket.refill_per_s * bucket.scale:g}/s, "
            f"next token in {bucket.time_until(now):.3f} s)"
        )

    def load_share(self, source: str) -> float:
        """The share of all attenuated S1 readings that came from ``source`` (0..1)."""
        total = sum(self.aggregated.values()) + sum(self.dropped.values())
        if total == 0:
            return 0.0
        return (self.aggregated.get(source, 0) + self.dropped.get(source, 0)) / total

    def exempt_source(self, source: str, until: float) -> None:
        self.exempt[source] = until

    def set_scale(self, scale: float) -> None:
        """Scale every refill rate (S5 halves them in safe mode)."""
        for bucket in self.buckets.values():
            bucket.scale = scale

    # -- breakers -----------------------------------------------------------------

    def breaker(self, name: str) -> CircuitBreaker:
        breaker = self.breakers.get(name)
        if breaker is None:
            breaker = self.breakers[name] = CircuitBreaker(
                name, failures=self.config.breaker_failures, reset_s=self.config.breaker_reset_s
            )
        return breaker

    # -- S3* audit ----------------------------------------------------------------

    def audit(
        self,
        now: float,
        units: Mapping[str, str],
        probes: Mapping[str, bool],
        readers: Iterable[str],
    ) -> list[AuditFinding]:
        """Findings for units: ``units`` maps name -> state, ``probes`` name -> probe result,
        ``readers`` the units with periodic readings (expected to report)."""
        findings: list[AuditFinding] = []
        for name, state in sorted(units.items()):
            if state in ("restarting", "failed"):
                findings.append(AuditFinding(name, f"unit is {state}"))
            elif probes.get(name) is False:
                findings.append(AuditFinding(name, "health probe failed"))
        for name in sorted(readers):
            seen = self.last_seen.get(name)
            if (
                units.get(name) == "running"
                and seen is not None
                and now - seen > self.config.stale_after_s
            ):
                findings.append(AuditFinding(name, f"silent for {now - seen:.1f} s"))
        return findings

    def budget_statuses(self, now: float) -> dict[str, BudgetStatus]:
        """Each subsystem's bucket at ``now`` (for the status)."""
        return {
            str(s): BudgetStatus(
                tokens=round(b.tokens(now), 3),
                capacity=b.capacity,
                refill_per_s=b.refill_per_s * b.scale,
                passed=self.passed[s] + (self.s1_passed if s is Subsystem.S1 else 0),
            )
            for s, b in self.buckets.items()
        }

    def attenuation_status(self, now: float) -> AttenuationStatus:
        """Attenuation so far, per unit, and the units exempt at ``now`` (for the status)."""
        return AttenuationStatus(
            active=self.attenuating,
            episodes=self.attenuation_episodes,
            aggregated=dict(self.aggregated),
            dropped=dict(self.dropped),
            overdraft=self.overdraft,
            exempt=tuple(sorted(s for s, until in self.exempt.items() if until > now)),
        )
