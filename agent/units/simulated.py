"""The simulated units: a seeded noisy sensor and a one-command actuator.

Built-in kinds ``simulated-sensor`` and ``simulated-actuator`` (the demo's
units, and the ones the tests drive). The unit API they implement is in
:mod:`vsm_edge.agent.vsm.unit`.
"""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Mapping
from typing import Any

import trio

from .._errors import UnitError
from ..vsm.unit import PRIORITIES, CommandSpec, ReadingSpec, UnitContext

__all__ = ["SimulatedActuator", "SimulatedSensor"]


def _opt(options: Mapping[str, Any], key: str, default: float, name: str) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnitError(f"unit {name}: option {key} must be a number, got {value!r}")
    return float(value)


class SimulatedSensor:
    """A seeded noisy sensor: ``mean + drift*t + gauss(0, noise)`` every ``period_s``.

    Flood mode (``flood_rate`` > 0, from ``flood_after_s``) emits ``flood_rate``
    readings a second with ``flood_noise`` instead, as a faulty sensor would,
    at low priority (``flood_priority``) so S3 may drop them.

    Options: reading ("value"), unit, period_s (1.0), mean (20.0), noise (0.5),
    drift (0.0 per second), resolution (1.0), seed (default: from the node id and
    the unit name, so two nodes with the same config differ), flood_rate
    (0), flood_after_s (0), flood_noise (25.0), flood_priority ("low"),
    device_class (Home Assistant's, e.g. "temperature"; default: from the unit).
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        known = {
            "reading",
            "unit",
            "period_s",
            "mean",
            "noise",
            "drift",
            "resolution",
            "seed",
            "flood_rate",
            "flood_after_s",
            "flood_noise",
            "flood_priority",
            "device_class",
        }
        unknown = set(options) - known
        if unknown:
            raise UnitError(f"unit {name}: unknown option {sorted(unknown)[0]!r}")
        self.reading = str(options.get("reading", "value"))
        self.period_s = _opt(options, "period_s", 1.0, name)
        self.mean = _opt(options, "mean", 20.0, name)
        self.noise = _opt(options, "noise", 0.5, name)
        self.drift = _opt(options, "drift", 0.0, name)
        resolution = _opt(options, "resolution", 1.0, name)
        self.flood_rate = _opt(options, "flood_rate", 0.0, name)
        self.flood_after_s = _opt(options, "flood_after_s", 0.0, name)
        self.flood_noise = _opt(options, "flood_noise", 25.0, name)
        priority = options.get("flood_priority", "low")
        if priority not in PRIORITIES:
            raise UnitError(f"unit {name}: flood_priority must be low, normal or high")
        self.flood_priority = PRIORITIES[priority]
        if self.period_s <= 0 or self.flood_rate < 0 or resolution <= 0:
            raise UnitError(f"unit {name}: period_s and resolution must be > 0, flood_rate >= 0")
        seed = options.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UnitError(f"unit {name}: seed must be an integer")
        self.name = name
        # without a seed, run() seeds from the node id as well, once
        self.seeded = seed is not None
        self.rng = random.Random(seed if seed is not None else zlib.crc32(name.encode()))  # noqa: S311
        self.readings: tuple[ReadingSpec, ...] = (
            ReadingSpec(
                self.reading,
                str(options.get("unit", "")),
                resolution,
                period_s=self.period_s,
                device_class=str(options["device_class"]) if "device_class" in options else None,
            ),
        )
        self.commands: tuple[CommandSpec, ...] = ()
        self.emitted = 0

    def sample(self, t: float, flooding: bool) -> float:
        noise = self.flood_noise if flooding else self.noise
        return self.mean + self.drift * t + self.rng.gauss(0.0, noise)

    async def run(self, ctx: UnitContext) -> None:
        if not self.seeded:  # once: a restart continues the same stream
            self.rng.seed(zlib.crc32(f"{ctx.node}/{self.name}".encode()))
            self.seeded = True
        start = trio.current_time()
        next_normal = start
        while True:
            now = trio.current_time()
            flooding = self.flood_rate > 0 and now - start >= self.flood_after_s
            if flooding:
                # 100 ticks a second, each with its share of the flood
                per_tick = self.flood_rate / 100
                n = int(per_tick) + (1 if self.rng.random() < per_tick % 1 else 0)
                for _ in range(n):
                    ctx.emit(
                        self.reading, self.sample(now - start, True), priority=self.flood_priority
                    )
                self.emitted += n
                await trio.sleep(0.01)
                continue
            if now >= next_normal:
                ctx.emit(self.reading, self.sample(now - start, False))
                self.emitted += 1
                next_normal += self.period_s
            wake = next_normal
            if self.flood_rate > 0:
                wake = min(wake, start + self.flood_after_s)
            await trio.sleep_until(wake)


class SimulatedActuator:
    """An actuator with one numeric command (``set``) that reports its state.

    Options: command ("set"), reading ("state"), minimum, maximum, initial (0.0),
    confirm (false). ``history`` keeps ``(trio time, applied value, issuer)``
    for inspection. With ``confirm = true`` it confirms each command once
    applied (``confirms_commands``), so a command's outcome (local or remote)
    is "done", not only "accepted".
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        unknown = set(options) - {"command", "reading", "minimum", "maximum", "initial", "confirm"}
        if unknown:
            raise UnitError(f"unit {name}: unknown option {sorted(unknown)[0]!r}")
        self.command_name = str(options.get("command", "set"))
        self.reading = str(options.get("reading", "state"))
        lo = options.get("minimum")
        hi = options.get("maximum")
        self.commands: tuple[CommandSpec, ...] = (
            CommandSpec(
                self.command_name,
                "number",
                None if lo is None else _opt(options, "minimum", 0, name),
                None if hi is None else _opt(options, "maximum", 0, name),
            ),
        )
        self.readings: tuple[ReadingSpec, ...] = (ReadingSpec(self.reading),)
        self.value = _opt(options, "initial", 0.0, name)
        confirm = options.get("confirm", False)
        if not isinstance(confirm, bool):
            raise UnitError(f"unit {name}: option confirm must be true or false")
        self.confirms_commands = confirm
        self.history: list[tuple[float, float, str]] = []

    async def run(self, ctx: UnitContext) -> None:
        ctx.emit(self.reading, self.value)
        async for command in ctx.commands():
            assert isinstance(command.value, int | float)
            self.value = float(command.value)
            self.history.append((trio.current_time(), self.value, command.issuer))
            ctx.emit(self.reading, self.value)
            if self.confirms_commands:
                ctx.complete(command)
