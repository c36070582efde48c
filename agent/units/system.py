"""Built-in kind ``system``: the host's load, CPU, memory, disks, temperatures, fans, network.

Read straight from procfs and sysfs (no extra dependency), under ``proc_root``
and ``sys_root`` (default ``/``: tests lay out a real file tree instead):

=================  =====================================  =========================
source             file                                    readings (unit)
=================  =====================================  =========================
``load``           proc/loadavg                            load_1, load_5, load_15
``cpu``            proc/stat (deltas between polls)        cpu_percent (%)
``memory``         proc/meminfo                            memory_used_percent (%),
                                                           memory_available (B)
``disk``           os.statvfs of each path in ``disks``    disk_<label>_used_percent
                                                           (%), disk_<label>_free (B)
``temperature``    sys/class/hwmon/*/temp*_input,          temp_<chip>_<label> (°C),
                   sys/class/thermal/thermal_zone*/temp    thermal_<zone>_<type> (°C)
``fan``            sys/class/hwmon/*/fan*_input            fan_<chip>_<label> (RPM)
``network``        proc/net/dev                            net_<if>_rx_bytes,
                                                           net_<if>_tx_bytes (B)
=================  =====================================  =========================

A source that cannot be read (a missing or malformed file, a disk path gone)
raises pain once and is retried every poll; the pain clears when every source
reads again. A machine without hwmon or thermal zones simply has no such
readings (that is not a failure). Files are read in a worker thread.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from .._errors import UnitError
from ..vsm.unit import CommandSpec, ReadingSpec, UnitContext
from ._polled import Options, Poll, PollLoop, Value

__all__ = ["SOURCES", "SystemUnit"]

SOURCES = ("load", "cpu", "memory", "disk", "temperature", "fan", "network")
MAX_FILE_BYTES = 1 << 20  # a procfs file larger than this is not one we know
MAX_SENSORS = 256  # hwmon inputs, thermal zones, interfaces: each capped

_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def _label(text: str) -> str:
    """A reading-name segment from a device label: A-Z a-z 0-9 _ - only."""
    return _NAME.sub("_", text.strip()).strip("_")[:32] or "x"


def _read(path: Path) -> str:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES)
    return data.decode("utf-8", "replace")


class SystemUnit:
    """The ``system`` kind: see the module docstring.

    Options: period_s (10), proc_root ("/"), sys_root ("/"), sources (all of
    :data:`SOURCES`), disks (["/"]), interfaces (all but "lo"),
    pain_intensity (0.5), max_backoff_s (300).
    """

    confirms_commands = False

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        opts = Options(name, options)
        period_s = opts.number("period_s", 10.0, above=0)
        self.proc = opts.path("proc_root", "/") / "proc"
        self.sys = opts.path("sys_root", "/") / "sys"
        sources = opts.strings("sources", list(SOURCES)) or []
        bad = [s for s in sources if s not in SOURCES]
        if bad:
            raise opts.error("sources", f"has {bad[0]!r}; known: {', '.join(SOURCES)}")
        self.sources = frozenset(sources)
        disks = opts.strings("disks", ["/"]) or []
        self.disks = {self._disk_label(d): d for d in disks}
        if len(self.disks) != len(disks):
            raise opts.error("disks", "has two paths with the same label")
        self.interfaces = opts.strings("interfaces", None)
        pain = opts.number("pain_intensity", 0.5, above=0, maximum=1)
        backoff = opts.number("max_backoff_s", 300.0, above=0)
        opts.done()
        self.name = name
        self.readings: tuple[ReadingSpec, ...] = ()  # declared as the sources are read
        self.commands: tuple[CommandSpec, ...] = ()
        self.loop = PollLoop("system", period_s, pain_intensity=pain, max_backoff_s=backoff)
        self._cpu: tuple[int, int] | None = None  # (busy, total) jiffies of the last poll

    @staticmethod
    def _disk_label(path: str) -> str:
        return "root" if path.strip("/") == "" else _label(path.strip("/").replace("/", "_"))

    def status(self) -> dict[str, Any]:
        return self.loop.status()

    async def run(self, ctx: UnitContext) -> None:
        await self.loop.run(ctx, self._poll)

    async def _poll(self) -> Poll:
        return await trio.to_thread.run_sync(self.poll)

    def poll(self) -> Poll:
        """One reading of every enabled source (blocking file reads)."""
        out = Poll()
        readers = {
            "load": self._load,
            "cpu": self._cpu_percent,
            "memory": self._memory,
            "disk": self._disk,
            "temperature": self._temperatures,
            "fan": self._fans,
            "network": self._network,
        }
        for source in SOURCES:
            if source not in self.sources:
                continue
            try:
                readers[source](out)
            except (OSError, ValueError, IndexError, UnitError) as exc:
                out.problems[source] = _problem(exc)
        return out

    def _load(self, out: Poll) -> None:
        fields = _read(self.proc / "loadavg").split()
        for i, minutes in enumerate((1, 5, 15)):
            out.values[f"load_{minutes}"] = Value(float(fields[i]), "", 0.1)

    def _cpu_percent(self, out: Poll) -> None:
        for line in _read(self.proc / "stat").splitlines():
            if line.startswith("cpu "):
                jiffies = [int(x) for x in line.split()[1:]]
                break
        else:
            raise ValueError(f"{self.proc / 'stat'}: no 'cpu' line")
        idle = jiffies[3] + (jiffies[4] if len(jiffies) > 4 else 0)  # idle + iowait
        total = sum(jiffies[:8])  # guest time is already counted in user and nice
        busy = total - idle
        last, self._cpu = self._cpu, (busy, total)
        if last is not None and total > last[1]:  # the first poll has no delta yet
            percent = 100.0 * (busy - last[0]) / (total - last[1])
            out.values["cpu_percent"] = Value(max(0.0, min(100.0, percent)), "%", 1.0)

    def _memory(self, out: Poll) -> None:
        info: dict[str, int] = {}
        for line in _read(self.proc / "meminfo").splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                scale = 1024 if parts[1:2] == ["kB"] else 1
                info[key] = int(parts[0]) * scale
        total = info["MemTotal"] if "MemTotal" in info else _missing("MemTotal")
        available = info.get("MemAvailable")
        if available is None:  # kernels before 3.14
            available = info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0)
        if total <= 0:
            raise ValueError("MemTotal is 0")
        out.values["memory_used_percent"] = Value(100.0 * (total - available) / total, "%", 1.0)
        out.values["memory_available"] = Value(float(available), "B")

    def _disk(self, out: Poll) -> None:
        failed: list[str] = []
        for label, path in self.disks.items():
            try:
                st = os.statvfs(path)
            except OSError as exc:
                failed.append(f"{path}: {exc.strerror or exc}")
                continue
            size = st.f_blocks * st.f_frsize
            free = st.f_bavail * st.f_frsize
            used = (st.f_blocks - st.f_bfree) * st.f_frsize
            # as df: used / (used + available to users)
            pct = 100.0 * used / (used + free) if used + free > 0 else 0.0
            out.values[f"disk_{label}_used_percent"] = Value(pct, "%", 1.0)
            out.values[f"disk_{label}_free"] = Value(float(free if size else 0), "B")
        if failed:
            raise UnitError("; ".join(failed))

    def _hwmon(self, prefix: str, out: Poll, unit: str, scale: float, resolution: float) -> None:
        root = self.sys / "class" / "hwmon"
        if not root.is_dir():
            return
        failed: list[str] = []
        found = 0
        for hw in sorted(root.iterdir())[:MAX_SENSORS]:
            chip = _label(_first_line(hw / "name") or hw.name)
            for inp in sorted(hw.glob(f"{prefix}*_input")):
                if found >= MAX_SENSORS:
                    break
                index = inp.name[len(prefix) : -len("_input")]
                label = _first_line(hw / f"{prefix}{index}_label") or f"{prefix}{index}"
                try:
                    value = int(_read(inp).strip()) / scale
                except (OSError, ValueError) as exc:
                    failed.append(f"{inp}: {_problem(exc)}")
                    continue
                name = "temp" if prefix == "temp" else "fan"
                out.values[f"{name}_{chip}_{_label(label)}"] = Value(
                    value, unit, resolution, "temperature" if name == "temp" else None
                )
                found += 1
        if failed:
            raise UnitError("; ".join(failed))

    def _temperatures(self, out: Poll) -> None:
        failed: list[str] = []
        try:
            self._hwmon("temp", out, "°C", 1000.0, 0.5)
        except UnitError as exc:
            failed.append(str(exc))
        zones = self.sys / "class" / "thermal"
        if zones.is_dir():
            for zone in sorted(zones.glob("thermal_zone*"))[:MAX_SENSORS]:
                kind = _label(_first_line(zone / "type") or "zone")
                number = zone.name.removeprefix("thermal_zone")
                try:
                    value = int(_read(zone / "temp").strip()) / 1000.0
                except (OSError, ValueError) as exc:
                    failed.append(f"{zone / 'temp'}: {_problem(exc)}")
                    continue
                out.values[f"thermal_{number}_{kind}"] = Value(value, "°C", 0.5, "temperature")
        if failed:
            raise UnitError("; ".join(failed))

    def _fans(self, out: Poll) -> None:
        self._hwmon("fan", out, "RPM", 1.0, 50.0)

    def _network(self, out: Poll) -> None:
        lines = _read(self.proc / "net" / "dev").splitlines()
        count = 0
        for line in lines[2:]:  # two header lines
            iface, sep, rest = line.partition(":")
            if not sep:
                raise ValueError(f"{self.proc / 'net' / 'dev'}: unexpected line {line[:40]!r}")
            iface = iface.strip()
            wanted = self.interfaces is None and iface != "lo"
            if not wanted and (self.interfaces is None or iface not in self.interfaces):
                continue
            fields = rest.split()
            label = _label(iface)
            out.values[f"net_{label}_rx_bytes"] = Value(
                float(int(fields[0])), "B", None, "data_size", "total_increasing"
            )
            out.values[f"net_{label}_tx_bytes"] = Value(
                float(int(fields[8])), "B", None, "data_size", "total_increasing"
            )
            count += 1
            if count >= MAX_SENSORS:
                break


def _first_line(path: Path) -> str:
    try:
        return _read(path).strip().splitlines()[0] if path.is_file() else ""
    except (OSError, IndexError):
        return ""


def _missing(key: str) -> int:
    raise ValueError(f"no {key}")


def _problem(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__
