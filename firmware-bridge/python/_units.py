"""A device's channels as S1 unit descriptions, and the readings they produce.

Plain frozen values with no dependency on the agent: the agent's S1 plugin API
consumes them. A unit id is ``"{device_id}/{channel name}"``; device ids and
channel names cannot contain ``/``, so the id is unambiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ._messages import Value
from ._session import DeviceInfo

__all__ = ["SensorReading", "UnitDescription", "UnitKind", "describe_units"]


class UnitKind(Enum):
    SENSOR = "sensor"  # produces readings
    ACTUATOR = "actuator"  # accepts commands


@dataclass(frozen=True, slots=True)
class UnitDescription:
    """One S1 operational unit backed by a device channel."""

    unit_id: str
    device_id: str
    channel: int
    name: str
    kind: UnitKind
    unit: str  # unit of measure, e.g. "°C", "%RH"; may be empty
    minimum: Value | None
    maximum: Value | None
    firmware: str


@dataclass(frozen=True, slots=True)
class SensorReading:
    """A reading as delivered to S1: the value plus where and when it came from.

    ``received_at`` is the host's clock (``trio.current_time()``) when the frame
    was decoded; ``device_time_ms`` the device's uptime stamp, if it sent one.
    """

    unit_id: str
    device_id: str
    channel: int
    value: Value
    unit: str
    seq: int
    device_time_ms: int | None
    received_at: float


def describe_units(info: DeviceInfo) -> tuple[UnitDescription, ...]:
    """The S1 units of a connected device: its sensors, then its actuators."""
    return tuple(
        UnitDescription(
            f"{info.device_id}/{ch.name}",
            info.device_id,
            ch.id,
            ch.name,
            kind,
            ch.unit,
            ch.minimum,
            ch.maximum,
            info.firmware,
        )
        for kind, channels in ((UnitKind.SENSOR, info.sensors), (UnitKind.ACTUATOR, info.actuators))
        for ch in channels
    )
