"""The ``firmware-bridge`` S1 unit: a microcontroller on a serial line as one unit.

Theory of operation
-------------------
One unit serves one serial device (``device = "/dev/serial/by-id/..."``). It
runs a :class:`vsm_edge.bridge.SerialBridge`, which keeps the session (handshake,
heartbeats, retransmission) and reopens the path with backoff after an unplug.

*Mapping.* The device describes itself in its HELLO: each **sensor** channel
becomes a reading of the unit named after the channel (``unit``: the channel's
unit of measure; ``resolution`` for S4's variety bins: the option, else a
hundredth of the declared range); each **actuator** becomes a numeric command
with the channel's ``[min, max]``, which S1 checks before S5, S2 and S3 see the
command. So ``greenhouse.temperature`` is the reading and ``greenhouse.fan`` the
command of a unit ``greenhouse`` whose device has a ``temperature`` sensor and a
``fan`` actuator.

*Declaration.* The runtime needs a unit's readings before it emits them, but a
device's channels are known only after its handshake. Two modes:

* unpinned (the default): the unit starts with nothing declared and declares
  the device's channels at each handshake (:meth:`UnitContext.declare`); a
  re-flashed device with other channels re-declares them.
* pinned (``sensors = [...]``, ``actuators = [...]``): the listed channels are
  declared from the start (so S3* can audit a silent ``period_s`` reading even
  before the first handshake); a device without one of them raises pain once;
  channels the device has beyond the lists are ignored and counted.

*A bound on channels.* Every declared reading becomes a replicated key
(``{node}/r/{unit}.{reading}``) that outlives the device's next handshake, so a
device re-sending HELLO with new names would grow the mesh without end. An
unpinned unit declares at most ``max_channels`` distinct channel names
(sensors and actuators, default 64) in its life: names beyond them are
refused (not declared, their readings ignored), counted in the status
(``channels_refused``, the last ones in ``refused``), and the first refusal
raises pain once and logs a warning (then one line a minute at most). The wire
already bounds the rest: 16 sensors and 16 actuators a HELLO, names of 1-32
bytes of ``A-Z a-z 0-9 . _ -`` (firmware-bridge/PROTOCOL.md).

*Commands* go out one at a time (the bridge is stop-and-wait); each one's
outcome is reported to the runtime (``confirms_commands``), so
:meth:`Runtime.execute_command` returns the device's ACK, or its NACK reason,
a timeout after the retransmissions, or "not connected".

*Presence.* While the device is away (never connected, unplugged, silent for
three heartbeats, no common protocol version) for longer than ``pain_after_s``,
the unit raises pain once; when the device is back it clears that pain (the
alarm is acknowledged and a pleasure signal raised), so an operator sees both
edges. Status carries the bridge's ``statistics()`` under ``detail``.
"""

from __future__ import annotations

import logging
import math
import termios
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import trio

from vsm_edge.bridge import (
    BridgeError,
    Channel,
    CommandRejected,
    CommandTimeout,
    DeviceInfo,
    HostConfig,
    NotConnectedError,
    Opener,
    SerialBridge,
    open_serial,
)

from .._errors import UnitError
from ..vsm.unit import Command, CommandSpec, ReadingSpec, UnitContext

__all__ = ["FirmwareBridgeUnit"]

log = logging.getLogger("vsm_edge.agent.device")

KIND = "firmware-bridge"
OPTIONS = frozenset(
    {
        "device",
        "max_channels",
        "baud",
        "sensors",
        "actuators",
        "resolution",
        "period_s",
        "pain_after_s",
        "pain_intensity",
        "heartbeat_ms",
        "command_timeout_s",
        "command_attempts",
        "max_frame",
        "reopen_max_s",
        "readings_buffer",
    }
)
_RANGE_BINS = 100  # default resolution: a hundredth of a sensor's declared range
MAX_CHANNELS = 64  # default: distinct channel names an unpinned unit declares in its life
_REFUSED_SHOWN = 32  # refused names listed in the status (the latest)
_REFUSAL_LOG_S = 60.0  # at most one log line a minute about refused channels


class FirmwareBridgeUnit:
    """``kind = "firmware-bridge"``: one serial device as one S1 unit (module docstring).

    Raises :class:`UnitError` naming the option for a bad configuration.
    """

    confirms_commands = True

    def __init__(
        self, name: str, options: Mapping[str, Any], *, opener: Opener | None = None
    ) -> None:
        self.name = name
        self.opener = opener  # the serial adapter; a fake in unit tests
        unknown = set(options) - OPTIONS
        if unknown:
            raise UnitError(f"unit {name}: unknown option {sorted(unknown)[0]!r}")
        device = options.get("device")
        if not isinstance(device, str) or not device:
            raise UnitError(f"unit {name}: option device (the serial device path) is required")
        self.device = device
        self.baud = _int(options, "baud", 115200, name, 50, 4_000_000)
        if not hasattr(termios, f"B{self.baud}"):
            raise UnitError(f"unit {name}: option baud: {self.baud} is not a standard rate")
        self.pinned_sensors = _names(options, "sensors", name)
        self.pinned_actuators = _names(options, "actuators", name)
        self.resolutions, self.default_resolution = _resolution(options, name)
        period = options.get("period_s")
        self.period_s = None if period is None else _num(options, "period_s", 0, name, above=0)
        self.pain_after_s = _num(options, "pain_after_s", 2.0, name, minimum=0)
        self.pain_intensity = _num(options, "pain_intensity", 0.6, name, above=0, maximum=1)
        self.reopen_max_s = _num(options, "reopen_max_s", 2.0, name, above=0)
        self.readings_buffer = _int(options, "readings_buffer", 256, name, 1, 1 << 16)
        self.max_channels = _int(options, "max_channels", MAX_CHANNELS, name, 1, 1024)
        try:
            self.host_config = HostConfig(
                max_frame=_int(options, "max_frame", 1024, name, 256, 4096),
                heartbeat_ms=_int(options, "heartbeat_ms", 1000, name, 100, 60000),
                command_timeout=_num(options, "command_timeout_s", 0.25, name, above=0),
                command_attempts=_int(options, "command_attempts", 5, name, 1, 100),
            )
        except (ValueError, BridgeError) as exc:
            raise UnitError(f"unit {name}: {exc}") from None
        self.readings: tuple[ReadingSpec, ...] = tuple(
            ReadingSpec(s, resolution=self.resolutions.get(s, self.default_resolution),
                        period_s=self.period_s)
            for s in self.pinned_sensors or ()
        )  # fmt: skip
        self.commands: tuple[CommandSpec, ...] = tuple(
            CommandSpec(a) for a in self.pinned_actuators or ()
        )
        self.bridge: SerialBridge | None = None
        self._declared_for: DeviceInfo | None = None
        self._sensors: frozenset[str] = frozenset(self.pinned_sensors or ())
        self._missing: list[str] = []
        self._missing_reported: list[str] = []
        self._ignored: list[str] = []
        self._pained = False
        self._away_since: float | None = None
        self._last_device: DeviceInfo | None = None
        self.connects = 0
        self.disconnects = 0
        self.pains = 0
        self.received = 0
        self.ignored_readings = 0
        # "sensor NAME" / "actuator NAME" ever declared, in order (unpinned mode)
        self._channels: dict[str, None] = {}
        self._refused: list[str] = []  # the latest refused channels, bounded
        self.channels_refused = 0
        self._refusal_logged_at: float | None = None
        self._refusals_unlogged = 0

    # -- the unit -----------------------------------------------------------------------

    async def run(self, ctx: UnitContext) -> None:
        # A new bridge per run: after a crash and restart no half-open session survives.
        bridge = SerialBridge(
            self.device,
            baud=self.baud,
            config=self.host_config,
            readings_buffer=self.readings_buffer,
            reopen_max=self.reopen_max_s,
            opener=self.opener or open_serial,
        )
        self.bridge = bridge
        self._away_since = trio.current_time()
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            nursery.start_soon(self._presence, ctx, bridge)
            nursery.start_soon(self._commands, ctx, bridge)
            async for reading in bridge.readings:
                info = bridge.device
                if info is not None and info is not self._declared_for:
                    self._declare(ctx, info)  # the reading may beat _presence to it
                channel = reading.unit_id.partition("/")[2]
                if channel in self._sensors:
                    self.received += 1
                    ctx.emit(channel, reading.value)
                else:
                    self.ignored_readings += 1

    async def _presence(self, ctx: UnitContext, bridge: SerialBridge) -> None:
        info: DeviceInfo | None = None
        while True:
            if info is None:
                away_since = trio.current_time() if self._away_since is None else self._away_since
                if not self._pained:
                    with trio.move_on_at(away_since + self.pain_after_s):
                        info = await bridge.wait_device_changed(None)
                    if info is None:
                        stats = bridge.statistics()
                        self._pained = True
                        self.pains += 1
                        ctx.pain(
                            self.pain_intensity,
                            f"device {self.device} away for "
                            f"{trio.current_time() - away_since:.1f} s"
                            + (f" ({stats.last_error})" if stats.last_error else ""),
                        )
                if info is None:
                    info = await bridge.wait_device_changed(None)
                assert info is not None
                self.connects += 1
                self._away_since = None
                if self._pained:  # first: clearing acknowledges all of this unit's pain
                    self._pained = False
                    ctx.clear_pain(
                        f"device {info.device_id} back on {self.device} after "
                        f"{trio.current_time() - away_since:.1f} s"
                    )
                self._declare(ctx, info)
                self._report_missing(ctx, info)
            new = await bridge.wait_device_changed(info)
            if new is None:
                self.disconnects += 1
                self._away_since = trio.current_time()
            else:  # restarted (HELLO in session): maybe other channels
                self._declare(ctx, new)
                self._report_missing(ctx, new)
            info = new

    def _declare(self, ctx: UnitContext, info: DeviceInfo) -> None:
        if info is self._declared_for:
            return
        self._declared_for = info
        self._last_device = info
        sensors = {c.name: c for c in info.sensors}
        actuators = {c.name: c for c in info.actuators}
        pinned_s, pinned_a = self.pinned_sensors, self.pinned_actuators
        refused: list[str] = []
        use_s = self._admit("sensor", sensors, refused) if pinned_s is None else pinned_s
        use_a = self._admit("actuator", actuators, refused) if pinned_a is None else pinned_a
        if refused:
            self._refuse(ctx, info, refused)
        self._missing = [f"sensor {s}" for s in use_s if s not in sensors] + [
            f"actuator {a}" for a in use_a if a not in actuators
        ]
        self._ignored = [n for n in sensors if n not in use_s] + [
            n for n in actuators if n not in use_a
        ]
        self.readings = tuple(self._reading_spec(s, sensors.get(s)) for s in use_s)
        self.commands = tuple(_command_spec(a, actuators.get(a)) for a in use_a)
        ctx.declare(self.readings, self.commands)
        self._sensors = frozenset(use_s)

    def _admit(self, kind: str, channels: Mapping[str, Channel], refused: list[str]) -> list[str]:
        """The names of ``channels`` within the unit's ``max_channels``; the rest to ``refused``."""
        admitted = []
        for name in channels:
            key = f"{kind} {name}"
            if key not in self._channels:
                if len(self._channels) >= self.max_channels:
                    refused.append(key)
                    continue
                self._channels[key] = None
            admitted.append(name)
        return admitted

    def _refuse(self, ctx: UnitContext, info: DeviceInfo, refused: list[str]) -> None:
        self.channels_refused += len(refused)
        self._refused = (self._refused + refused)[-_REFUSED_SHOWN:]
        names = ", ".join(refused[:4]) + (" ..." if len(refused) > 4 else "")
        now = trio.current_time()
        first = self._refusal_logged_at is None
        self._refusals_unlogged += len(refused)
        if self._refusal_logged_at is None or now - self._refusal_logged_at >= _REFUSAL_LOG_S:
            log.warning(
                "unit %s: device %s on %s declares more than max_channels=%d channels: "
                "%d refused since the last report (%s)",
                self.name, info.device_id, self.device, self.max_channels,
                self._refusals_unlogged, names,
            )  # fmt: skip
            self._refusal_logged_at = now
            self._refusals_unlogged = 0
        if first:
            self.pains += 1
            ctx.pain(
                self.pain_intensity,
                f"device {info.device_id} on {self.device} declares more than "
                f"{self.max_channels} channels; refused {names}",
            )

    def _report_missing(self, ctx: UnitContext, info: DeviceInfo) -> None:
        """Pain once per change of the pinned channels a device lacks (status lists them)."""
        if self._missing and self._missing != self._missing_reported:
            self.pains += 1
            ctx.pain(
                self.pain_intensity,
                f"device {info.device_id} on {self.device} lacks {', '.join(self._missing)}",
            )
        self._missing_reported = list(self._missing)

    def _reading_spec(self, name: str, channel: Channel | None) -> ReadingSpec:
        resolution = self.resolutions.get(name, self.default_resolution)
        if resolution is None and channel is not None:
            resolution = _range_resolution(channel)
        return ReadingSpec(
            name, channel.unit if channel is not None else "", resolution, period_s=self.period_s
        )

    async def _commands(self, ctx: UnitContext, bridge: SerialBridge) -> None:
        async for command in ctx.commands():
            ctx.complete(command, await self._execute(bridge, command))

    async def _execute(self, bridge: SerialBridge, command: Command) -> str | None:
        value = command.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"device commands take numbers, got {value!r}"
        try:
            await bridge.command(command.name, value)
        except CommandRejected as exc:
            return f"device refused {command.name}: {exc.reason}" + (
                f" ({exc.detail})" if exc.detail else ""
            )
        except CommandTimeout as exc:
            return f"device did not answer {command.name} ({exc.attempts} transmissions)"
        except NotConnectedError as exc:
            return f"device not connected ({exc})"
        except BridgeError as exc:
            return f"device command failed: {exc}"
        return None

    # -- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        bridge = self.bridge
        info = bridge.device if bridge is not None else None
        last = info or self._last_device
        away = self._away_since
        return {
            "device": self.device,
            "baud": self.baud,
            "connected": info is not None,
            "away_s": None if away is None else round(trio.current_time() - away, 3),
            "device_id": last.device_id if last else None,
            "firmware": last.firmware if last else None,
            "protocol_version": last.version if last else None,
            "max_frame": last.max_frame if last else None,
            "sensors": [c.name for c in last.sensors] if last else [],
            "actuators": [c.name for c in last.actuators] if last else [],
            "missing": list(self._missing),
            "ignored": list(self._ignored),
            "max_channels": self.max_channels,
            "channels_refused": self.channels_refused,
            "refused": list(self._refused),
            "connects": self.connects,
            "disconnects": self.disconnects,
            "pains": self.pains,
            "readings_received": self.received,
            "readings_ignored": self.ignored_readings,
            "last_device_error": _device_error(bridge),
            "bridge": asdict(bridge.statistics()) if bridge is not None else None,
        }


# -- options --------------------------------------------------------------------------------


def _device_error(bridge: SerialBridge | None) -> dict[str, Any] | None:
    if bridge is None or not bridge.device_errors:
        return None
    err = bridge.device_errors[-1]
    return {"code": err.code, "channel": err.channel, "detail": err.detail}


def _command_spec(name: str, channel: Channel | None) -> CommandSpec:
    if channel is None:
        return CommandSpec(name)
    return CommandSpec(name, "number", _float(channel.minimum), _float(channel.maximum))


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _range_resolution(channel: Channel) -> float | None:
    lo, hi = channel.minimum, channel.maximum
    if lo is None or hi is None:
        return None
    span = float(hi) - float(lo)
    return span / _RANGE_BINS if math.isfinite(span) and span > 0 else None


def _num(
    options: Mapping[str, Any],
    key: str,
    default: float,
    unit: str,
    *,
    minimum: float | None = None,
    above: float | None = None,
    maximum: float | None = None,
) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnitError(f"unit {unit}: option {key} must be a number, got {value!r}")
    if (
        (minimum is not None and value < minimum)
        or (above is not None and value <= above)
        or (maximum is not None and value > maximum)
    ):
        bounds = [
            f">= {minimum:g}" if minimum is not None else "",
            f"> {above:g}" if above is not None else "",
            f"<= {maximum:g}" if maximum is not None else "",
        ]
        raise UnitError(
            f"unit {unit}: option {key} must be {' and '.join(b for b in bounds if b)}, "
            f"got {value!r}"
        )
    return float(value)


def _int(options: Mapping[str, Any], key: str, default: int, unit: str, lo: int, hi: int) -> int:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UnitError(
            f"unit {unit}: option {key} must be an integer in {lo}..{hi}, got {value!r}"
        )
    return value


def _names(options: Mapping[str, Any], key: str, unit: str) -> list[str] | None:
    value = options.get(key)
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or not all(isinstance(v, str) and v for v in value)
        or len(set(value)) != len(value)
        or len(value) > 16
    ):
        raise UnitError(
            f"unit {unit}: option {key} must be a list of at most 16 distinct channel names"
        )
    return list(value)


def _resolution(options: Mapping[str, Any], unit: str) -> tuple[dict[str, float], float | None]:
    value = options.get("resolution")
    if value is None:
        return {}, None
    if isinstance(value, Mapping):
        out = {}
        for name in value:
            if not isinstance(name, str):
                raise UnitError(f"unit {unit}: option resolution: keys are channel names")
            out[name] = _num(value, name, 0, f"{unit} (resolution)", above=0)
        return out, None
    return {}, _num(options, "resolution", 0, unit, above=0)
