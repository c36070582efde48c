"""Built-in kind ``onewire``: DS18B20-style 1-Wire thermometers through the kernel's w1 sysfs.

Each sensor is a directory ``<sys_root>/sys/bus/w1/devices/<id>`` (family
``28-`` for the DS18B20, also ``10-`` DS18S20, ``22-`` DS1822, ``3b-``
MAX31850, ``42-`` DS28EA00). The unit reads ``temperature`` (millidegrees,
kernels >= 5.x) and falls back to ``w1_slave``, whose first line ends in
``YES`` when the CRC matched and whose second ends in ``t=<millidegrees>``.
One reading per sensor: ``t_<id>`` in °C (``names`` may rename it).

A sensor that fails (CRC ``NO``, an empty or malformed file, the 85 °C
power-on value, a sensor gone that was configured or seen before) raises
pain once and is read again next poll; the pain clears when every sensor
reads. Reading a DS18B20 takes the kernel ~750 ms, so reads run in a worker
thread.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from ..vsm.unit import CommandSpec, ReadingSpec, UnitContext
from ._polled import Options, Poll, PollLoop, Value

__all__ = ["FAMILIES", "OneWireError", "OneWireUnit", "parse_w1_slave"]

FAMILIES = ("10", "22", "28", "3b", "42")
MAX_SENSORS = 64
POWER_ON_MILLI = 85000  # what a DS18B20 reports before its first conversion

_ID = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{12}$")
_READING = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class OneWireError(ValueError):
    """A sensor's file says the reading is not good (CRC, format, power-on value)."""


def parse_w1_slave(text: str) -> float:
    """°C from a ``w1_slave`` file. Raises :class:`OneWireError` on a CRC ``NO`` or bad text."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        raise OneWireError(f"expected two lines, got {len(lines)}")
    if not lines[0].rstrip().endswith("YES"):
        raise OneWireError("CRC check failed (NO)")
    _, sep, milli = lines[1].rpartition("t=")
    if not sep:
        raise OneWireError("no t= on the second line")
    return _celsius(milli)


def _celsius(milli: str) -> float:
    try:
        value = int(milli.strip())
    except ValueError:
        raise OneWireError(f"not a temperature: {milli.strip()[:20]!r}") from None
    if value == POWER_ON_MILLI:
        raise OneWireError("85 °C power-on value (no conversion: check power and wiring)")
    return value / 1000.0


class OneWireUnit:
    """The ``onewire`` kind: see the module docstring.

    Options: period_s (10), sys_root ("/"), sensors (ids to read; default:
    every thermometer found, each poll), names ({id: reading name}),
    resolution (0.1 °C, for S4's bins), pain_intensity (0.5), max_backoff_s (300).
    """

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        opts = Options(name, options)
        period_s = opts.number("period_s", 10.0, above=0)
        self.devices = opts.path("sys_root", "/") / "sys" / "bus" / "w1" / "devices"
        sensors = opts.strings("sensors", None, limit=MAX_SENSORS)
        for sensor in sensors or []:
            if not _ID.match(sensor):
                raise opts.error("sensors", f"has {sensor!r}; expected an id like 28-0316a2794fff")
        self.sensors = sensors
        names = opts.get("names", {})
        if not isinstance(names, Mapping) or not all(
            isinstance(v, str) and _READING.match(v) for v in names.values()
        ):
            raise opts.error("names", "must map sensor ids to reading names (A-Z a-z 0-9 _ -)")
        self.names: dict[str, str] = {str(k): str(v) for k, v in names.items()}
        self.resolution = opts.number("resolution", 0.1, above=0)
        pain = opts.number("pain_intensity", 0.5, above=0, maximum=1)
        backoff = opts.number("max_backoff_s", 300.0, above=0)
        opts.done()
        self.readings: tuple[ReadingSpec, ...] = ()  # declared as sensors are found
        self.commands: tuple[CommandSpec, ...] = ()
        self.loop = PollLoop("onewire", period_s, pain_intensity=pain, max_backoff_s=backoff)
        self.seen: set[str] = set(sensors or ())

    def reading_of(self, sensor: str) -> str:
        return self.names.get(sensor) or f"t_{sensor.replace('-', '_')}"

    def status(self) -> dict[str, Any]:
        return {**self.loop.status(), "sensors": sorted(self.seen)}

    async def run(self, ctx: UnitContext) -> None:
        await self.loop.run(ctx, self._poll)

    async def _poll(self) -> Poll:
        return await trio.to_thread.run_sync(self.poll)

    def poll(self) -> Poll:
        """Read every sensor once (blocking)."""
        out = Poll()
        try:
            present = {
                p.name
                for p in self.devices.iterdir()
                if _ID.match(p.name) and p.name[:2] in FAMILIES
            }
        except OSError as exc:
            out.problems["bus"] = f"{self.devices}: {exc.strerror or exc}"
            return out
        wanted = set(self.sensors) if self.sensors is not None else present | self.seen
        for sensor in sorted(wanted)[:MAX_SENSORS]:
            if sensor not in present:
                out.problems[sensor] = "not on the bus"
                continue
            self.seen.add(sensor)
            try:
                value = self.read(self.devices / sensor)
            except (OSError, OneWireError) as exc:
                text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                out.problems[sensor] = text
                continue
            out.values[self.reading_of(sensor)] = Value(value, "°C", self.resolution, "temperature")
        if not wanted:
            out.problems["bus"] = f"no 1-Wire thermometer in {self.devices}"
        return out

    @staticmethod
    def read(device: Path) -> float:
        """°C of one sensor directory: ``temperature``, else ``w1_slave``."""
        temperature = device / "temperature"
        if temperature.exists():
            text = temperature.read_text()
            if text.strip():  # empty: the kernel's read failed; try w1_slave
                return _celsius(text)
        slave = device / "w1_slave"
        if not slave.exists():
            raise OneWireError("neither temperature nor w1_slave")
        return parse_w1_slave(slave.read_text())
