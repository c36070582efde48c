"""Reconnect delays: capped exponential backoff with jitter (pure).

Delay before retry ``n`` (0-based) is ``d = min(maximum, initial * multiplier**n)``
scaled into ``[d * (1 - jitter), d]`` by a random number in ``[0, 1)`` that the
caller passes in ("equal jitter" for ``jitter = 0.5``). The jitter spreads the
reconnects of many agents after a broker restart, so they do not arrive as one
thundering herd; the floor keeps a flapping broker from being hammered.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """A reconnect backoff policy; ``delay(attempt, random)`` gives seconds to wait."""

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.initial > 0 and math.isfinite(self.initial)):
            raise ValueError(f"initial must be a positive number, not {self.initial!r}")
        if not (self.maximum >= self.initial and math.isfinite(self.maximum)):
            raise ValueError(f"maximum must be finite and >= initial, not {self.maximum!r}")
        if not (self.multiplier >= 1 and math.isfinite(self.multiplier)):
            raise ValueError(f"multiplier must be >= 1, not {self.multiplier!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], not {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The delay before retry ``attempt`` without jitter."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        if self.multiplier == 1:
            return self.initial
        # Compare exponents, not values, so a huge attempt count cannot overflow.
        limit = math.log(self.maximum / self.initial, self.multiplier)
        if attempt >= limit:
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier**attempt)

    def delay(self, attempt: int, random: float) -> float:
        """Seconds to wait before retry ``attempt``, given ``random`` in ``[0, 1)``."""
        if not 0 <= random < 1:
            raise ValueError(f"random must be within [0, 1), not {random!r}")
        ceiling = self.ceiling(attempt)
        return ceiling * (1 - self.jitter) + ceiling * self.jitter * random
