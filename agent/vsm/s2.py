"""S2 coordination: oscillation detection and damping between controllers.

Pure: every method takes ``now`` (seconds).

A *target* is one command of one unit (``unit.command``). Two rules detect a
control loop oscillating on a target:

* *fight*: within ``oscillation_window_s`` (5 s), at least ``min_conflicts`` (3)
  consecutive commands alternate between the same two issuers with different
  values, at regular intervals (coefficient of variation of the intervals at
  most ``regularity``);
* *churn*: more than ``max_changes_per_minute`` (10) value changes in 60 s.

A detected target is *damped* until ``quiet_s`` pass without a conflict. While
damped, a numeric command moves the applied value only by ``1 - damping`` of
the requested change (damping 0.7 by default), and a change smaller than
``hysteresis`` is suppressed; a non-numeric command may change the target at
most once every ``hold_s``.
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass

from .event import Scalar
from .settings import S2Config
from .status import TargetStatus

__all__ = ["Coordination", "Damping", "Oscillation"]

CHURN_WINDOW_S = 60.0
MAX_TARGETS = 4096


@dataclass(frozen=True, slots=True)
class Oscillation:
    target: str
    rule: str  # "fight" or "churn"
    issuers: tuple[str, ...]
    at: float
    detail: str


@dataclass(frozen=True, slots=True)
class Damping:
    """S2's decision on one command: the value to apply, or a suppression reason."""

    value: Scalar
    damped: bool
    suppressed: str | None = None


class _Target:
    __slots__ = (
        "applied",
        "applied_at",
        "changes",
        "damped_commands",
        "damped_until",
        "episodes",
        "history",
        "suppressed",
    )

    def __init__(self) -> None:
        self.history: deque[tuple[float, str, Scalar]] = deque(maxlen=32)
        self.changes: deque[float] = deque()
        self.applied: Scalar = None
        self.applied_at = -math.inf
        self.damped_until = -math.inf
        self.episodes = 0
        self.suppressed = 0
        self.damped_commands = 0


def _is_number(value: Scalar) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class Coordination:
    """S2's core: per-target history, detection, damping."""

    def __init__(self, config: S2Config) -> None:
        self.config = config
        self._targets: dict[str, _Target] = {}
        self.oscillations: deque[Oscillation] = deque(maxlen=64)

    def _target(self, name: str) -> _Target:
        target = self._targets.get(name)
        if target is None:
            if len(self._targets) >= MAX_TARGETS:
                # forget the quietest target: the oldest last command
                oldest = min(
                    self._targets,
                    key=lambda k: (
                        self._targets[k].history[-1][0] if self._targets[k].history else -math.inf
                    ),
                )
                del self._targets[oldest]
            target = self._targets[name] = _Target()
        return target

    def is_damped(self, target: str, now: float) -> bool:
        t = self._targets.get(target)
        return t is not None and t.damped_until > now

    def command(
        self, target: str, issuer: str, value: Scalar, now: float
    ) -> tuple[Damping, Oscillation | None]:
        """Record a command and decide what to apply; also returns a newly detected oscillation."""
        cfg = self.config
        t = self._target(target)
        t.history.append((now, issuer, value))
        detected = self._detect(target, t, now)
        if detected is not None:
            if t.damped_until <= now:
                t.episodes += 1
                self.oscillations.append(detected)
            else:
                detected = None  # same episode, already reported
            t.damped_until = now + cfg.quiet_s
        elif t.damped_until > now and self._conflicting(t):
            t.damped_until = now + cfg.quiet_s
        decision = self._damp(t, value, now)
        if decision.suppressed is None and decision.value != t.applied:
            t.changes.append(now)
            t.applied = decision.value
            t.applied_at = now
        elif decision.suppressed is None:
            t.applied_at = now
        if decision.damped:
            t.damped_commands += 1
        if decision.suppressed is not None:
            t.suppressed += 1
        return decision, detected

    def _conflicting(self, t: _Target) -> bool:
        h = t.history
        return len(h) >= 2 and h[-1][1] != h[-2][1] and h[-1][2] != h[-2][2]

    def _detect(self, name: str, t: _Target, now: float) -> Oscillation | None:
        cfg = self.config
        # fight: the tail of the history alternating between two issuers
        run = [t.history[-1]]
        for entry in reversed(list(t.history)[:-1]):
            prev = run[-1]
            if now - entry[0] > cfg.oscillation_window_s:
                break
            if entry[1] == prev[1] or entry[2] == prev[2]:
                break
            if len(run) >= 2 and entry[1] != run[-2][1]:
                break  # a third issuer: not the same pair
            run.append(entry)
        if len(run) >= cfg.min_conflicts:
            times = [e[0] for e in reversed(run)]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            mean = sum(gaps) / len(gaps)
            if mean > 0:
                sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
                if sd / mean <= cfg.regularity:
                    issuers = tuple(sorted({e[1] for e in run}))
                    return Oscillation(
                        name,
                        "fight",
                        issuers,
                        now,
                        f"{len(run)} alternating commands from {' and '.join(issuers)} "
                        f"every {mean:.2f} s",
                    )
        # churn: too many value changes in the last minute
        while t.changes and now - t.changes[0] > CHURN_WINDOW_S:
            t.changes.popleft()
        if len(t.changes) >= cfg.max_changes_per_minute:
            issuers = tuple(sorted({e[1] for e in t.history}))
            return Oscillation(
                name, "churn", issuers, now, f"{len(t.changes) + 1} changes in {CHURN_WINDOW_S:g} s"
            )
        return None

    def _damp(self, t: _Target, value: Scalar, now: float) -> Damping:
        cfg = self.config
        if t.damped_until <= now or t.applied is None:
            return Damping(value, damped=False)
        if _is_number(value) and _is_number(t.applied):
            assert isinstance(value, int | float)
            assert isinstance(t.applied, int | float)
            step = (1.0 - cfg.damping) * (float(value) - float(t.applied))
            if abs(step) < cfg.hysteresis or step == 0:
                return Damping(
                    t.applied,
                    damped=True,
                    suppressed=(
                        f"s2: damped: change {step:+.3g} within hysteresis {cfg.hysteresis:g}"
                    ),
                )
            return Damping(float(t.applied) + step, damped=True)
        if value != t.applied and now - t.applied_at < cfg.hold_s:
            return Damping(
                t.applied,
                damped=True,
                suppressed=(
                    f"s2: damped: {t.applied!r} held for {cfg.hold_s:g} s after the last change"
                ),
            )
        return Damping(value, damped=True)

    def damped_targets(self, now: float) -> tuple[str, ...]:
        """The targets damped at ``now``, sorted (for the status)."""
        return tuple(sorted(n for n, t in self._targets.items() if t.damped_until > now))

    def target_statuses(self) -> dict[str, TargetStatus]:
        """Every target's applied value and counters, by name (for the status)."""
        return {
            n: TargetStatus(t.applied, t.episodes, t.damped_commands, t.suppressed)
            for n, t in sorted(self._targets.items())
        }
