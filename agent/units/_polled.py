"""What the polled built-in kinds share: option checks and the poll loop with pain.

``system``, ``onewire`` and ``exec`` read a source every ``period_s``. A poll
returns the readings it got and the problems it met (source -> one line). The
loop declares each reading the first time it is seen, emits the values, raises
pain once when a source starts failing (again when another one does), clears
it when every source is good again, and backs off (doubling the wait up to
``max_backoff_s``) while a poll gets no reading at all.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from .._errors import UnitError
from ..vsm.unit import ReadingSpec, UnitContext

__all__ = ["Options", "Poll", "PollLoop", "Value"]


class Options:
    """A unit's options, checked one by one; :meth:`done` refuses the unknown ones.

    Every problem raises :class:`UnitError` naming the unit and the option.
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = options
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> UnitError:
        return UnitError(f"unit {self.name}: option {key} {problem}")

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.options.get(key, default)

    def number(
        self,
        key: str,
        default: float,
        *,
        above: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self.get(key, default)
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise self.error(key, f"must be a number, got {value!r}")
        if above is not None and not value > above:
            raise self.error(key, f"must be > {above:g}, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum:g}, got {value!r}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be <= {maximum:g}, got {value!r}")
        return float(value)

    def text(self, key: str, default: str) -> str:
        value = self.get(key, default)
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r}")
        return value

    def path(self, key: str, default: str) -> Path:
        text = self.text(key, default)
        if not text:
            raise self.error(key, "must be a path, got an empty string")
        return Path(text)

    def strings(self, key: str, default: list[str] | None, *, limit: int = 64) -> list[str] | None:
        value = self.get(key, default)
        if value is None:
            return None
        if (
            not isinstance(value, list | tuple)
            or not all(isinstance(v, str) and v for v in value)
            or len(value) > limit
        ):
            raise self.error(key, f"must be a list of at most {limit} non-empty strings")
        return list(value)

    def done(self) -> None:
        unknown = sorted(set(self.options) - self.used)
        if unknown:
            raise UnitError(f"unit {self.name}: unknown option {unknown[0]!r}")


@dataclass(frozen=True, slots=True)
class Value:
    """One reading of a poll, with what declares it."""

    value: float
    unit: str = ""
    resolution: float | None = None
    device_class: str | None = None  # Home Assistant's, when clear (ReadingSpec)
    state_class: str | None = None


@dataclass(slots=True)
class Poll:
    """What one poll got: readings by name, and problems by source (one line each)."""

    values: dict[str, Value] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


class PollLoop:
    """Runs ``poll`` every ``period_s`` for a unit (see the module docstring).

    ``pain_intensity`` is the pain a failing source raises. The counters
    (``polls``, ``failed_polls``, ``pains``) and ``problems`` are the unit's
    status detail.
    """

    def __init__(
        self,
        kind: str,
        period_s: float,
        *,
        pain_intensity: float,
        max_backoff_s: float,
    ) -> None:
        self.kind = kind
        self.period_s = period_s
        self.pain_intensity = pain_intensity
        self.max_backoff_s = max(max_backoff_s, period_s)
        self.specs: dict[str, ReadingSpec] = {}
        self.problems: dict[str, str] = {}
        self.polls = 0
        self.failed_polls = 0
        self.pains = 0
        self.last: dict[str, float] = {}

    def status(self) -> dict[str, Any]:
        return {
            "polls": self.polls,
            "failed_polls": self.failed_polls,
            "pains": self.pains,
            "problems": dict(self.problems),
        }

    async def run(self, ctx: UnitContext, poll: Callable[[], Awaitable[Poll]]) -> None:
        wait = self.period_s
        next_at = trio.current_time()
        while True:
            got = await poll()
            self.polls += 1
            self._declare(ctx, got.values)
            for reading, v in got.values.items():
                ctx.emit(reading, v.value)
                self.last[reading] = v.value
            self._health(ctx, got.problems)
            if got.problems and not got.values:
                self.failed_polls += 1
                wait = min(wait * 2, self.max_backoff_s)
            else:
                wait = self.period_s
            next_at = max(next_at + wait, trio.current_time())
            await trio.sleep_until(next_at)

    def _declare(self, ctx: UnitContext, values: Mapping[str, Value]) -> None:
        new = [r for r in values if r not in self.specs]
        if not new:
            return
        for r in new:
            v = values[r]
            self.specs[r] = ReadingSpec(
                r,
                v.unit,
                v.resolution,
                period_s=self.period_s,
                device_class=v.device_class,
                state_class=v.state_class,
            )
        ctx.declare(readings=self.specs.values())

    def _health(self, ctx: UnitContext, problems: Mapping[str, str]) -> None:
        if problems:
            fresh = sorted(set(problems) - set(self.problems))
            self.problems = dict(problems)
            if fresh:  # once per source that starts failing, not on every poll
                self.pains += 1
                first = fresh[0]
                more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
                ctx.pain(self.pain_intensity, f"{self.kind}: {first}: {problems[first]}{more}")
        elif self.problems:
            self.problems = {}
            ctx.clear_pain(f"{self.kind}: every source reads again")
