"""The ``modbus`` unit kind: a Modbus TCP or RTU device polled into readings.

Theory of operation
-------------------
- **The codec is pure.** :class:`Register` is one checked line of the config
  (table, address, data type, word order, scale, offset); :func:`decode`
  turns the words (or bits) a device answered into a value and :func:`encode`
  a commanded value into the words to write (the inverse scale and offset,
  checked against the data type's range). Both raise :class:`UnitError` and
  nothing else, whatever the device sent: a reply of the wrong length, a word
  out of range or a float32 NaN is a *refusal*, counted and skipped.
- **The I/O is pymodbus's synchronous client in a worker thread.** pymodbus is
  asyncio; the agent is Trio. Every call (connect, read, write) runs through
  ``trio.to_thread.run_sync`` with a per-unit limiter of one, so the client is
  never used from two threads, and each call is bounded by ``timeout_s``
  (pymodbus ``retries=0``: retry belongs to this unit). Cancellation waits for
  the call in progress, at most ``timeout_s``. pymodbus exceptions and
  exception responses become :class:`ModbusLinkError` at that edge.
- **Failures.** A poll round that fails (no connection, timeout, an exception
  response such as "illegal data address") raises pain once with the reason,
  closes the connection and retries after a backoff that doubles from
  ``period_s`` up to ``backoff_max_s``. The first good round clears the pain.
- **Commands** (``writable = true`` on a holding register or a coil) are
  confirmed: the runtime gets the device's answer (``confirms_commands``). A
  written register is read back at once and emitted.

Options: ``host`` and ``port`` (502) for TCP, or ``serial_port``, ``baudrate``
(9600), ``parity`` (N, E or O), ``stopbits`` (1), ``bytesize`` (8) for RTU;
``device_id`` (1, the Modbus unit/slave id), ``period_s`` (1), ``timeout_s``
(1), ``backoff_max_s`` (30), ``pain_intensity`` (0.6) and ``registers``, a
list of tables with ``name``, ``table`` (holding, input, coil, discrete),
``address`` (0..65535), ``type`` (int16, uint16, int32, uint32, float32; coils
and discrete inputs are 0 or 1), ``word_order`` (big: high word first, or
little), ``scale`` (1), ``offset`` (0): value = raw * scale + offset, ``unit``,
``resolution``, ``writable`` (false), ``minimum``, ``maximum`` (the command's
range, in the reading's units). See docs/unit-kinds.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .._errors import UnitError
from ..vsm.unit import Command, CommandSpec, ReadingSpec, UnitContext

__all__ = ["MAX_REGISTERS", "ModbusLinkError", "ModbusUnit", "Register", "decode", "encode"]

MAX_REGISTERS = 64
TABLES = ("holding", "input", "coil", "discrete")
TYPES = {"int16": (1, ">h"), "uint16": (1, ">H"), "int32": (2, ">i"),
         "uint32": (2, ">I"), "float32": (2, ">f")}  # fmt: skip
_RANGES = {"int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
           "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}  # fmt: skip
# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7)
EXCEPTION_CODES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusLinkError(Exception):
    """The device could not be reached or answered with an exception; ``str`` is the reason."""


@dataclass(frozen=True, slots=True)
class Register:
    """One register (or coil) mapped to a reading: ``value = raw * scale + offset``."""

    name: str
    table: str
    address: int
    type: str = "int16"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    resolution: float | None = None
    writable: bool = False
    minimum: float | None = None
    maximum: float | None = None

    @property
    def bits(self) -> bool:
        return self.table in ("coil", "discrete")

    @property
    def count(self) -> int:
        """How many registers (or bits) one read takes."""
        return 1 if self.bits else TYPES[self.type][0]


def decode(register: Register, words: Sequence[object]) -> float:
    """The value of ``register`` from the words (or bits) a device answered.

    Raises :class:`UnitError` for a reply that is not exactly ``count`` words
    in 0..65535 (or bits), or a value that is not finite.
    """
    if len(words) < register.count:
        raise UnitError(f"{register.name}: {len(words)} values in the reply, expected "
                        f"{register.count}")  # fmt: skip
    words = words[: register.count]
    if register.bits:
        bit = words[0]
        if not isinstance(bit, bool | int) or bit not in (0, 1):
            raise UnitError(f"{register.name}: {bit!r} is not a bit")
        return 1.0 if bit else 0.0
    for word in words:
        if isinstance(word, bool) or not isinstance(word, int) or not 0 <= word <= 0xFFFF:
            raise UnitError(f"{register.name}: {word!r} is not a 16-bit register value")
    ordered = list(words) if register.word_order == "big" else list(reversed(words))
    raw = struct.pack(">" + "H" * len(ordered), *ordered)
    (number,) = struct.unpack(TYPES[register.type][1], raw)
    value = float(number) * register.scale + register.offset
    if not math.isfinite(value):
        raise UnitError(f"{register.name}: the device sent a value that is not finite")
    return value


def encode(register: Register, value: float | bool) -> list[int] | bool:
    """What to write for ``value``: the registers, or the coil's bit.

    Applies the inverse of scale and offset; integer types round to the
    nearest. Raises :class:`UnitError` when the raw value does not fit the type.
    """
    if register.bits:
        return bool(value)
    raw = (float(value) - register.offset) / register.scale
    if not math.isfinite(raw):
        raise UnitError(f"{register.name}: {value!r} gives no finite raw value")
    if register.type == "float32":
        try:
            packed = struct.pack(">f", raw)
        except OverflowError:
            raise UnitError(f"{register.name}: {value!r} does not fit a float32") from None
    else:
        whole = round(raw)
        lo, hi = _RANGES[register.type]
        if not lo <= whole <= hi:
            raise UnitError(f"{register.name}: raw value {whole} is outside {register.type} "
                            f"({lo}..{hi})")  # fmt: skip
        packed = struct.pack(TYPES[register.type][1], whole)
    words = list(struct.unpack(">" + "H" * (len(packed) // 2), packed))
    return words if register.word_order == "big" else list(reversed(words))


# --- options -----------------------------------------------------------------------


def _number(table: Mapping[str, Any], key: str, default: float | None, where: str) -> float | None:
    value = table.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UnitError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)


def _integer(table: Mapping[str, Any], key: str, default: int, lo: int, hi: int, where: str) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise UnitError(f"{where}: {key} must be an integer within {lo}..{hi}, got {value!r}")
    return value


def _choice(table: Mapping[str, Any], key: str, default: str, choices: Sequence[str],
            where: str) -> str:  # fmt: skip
    value = table.get(key, default)
    if value not in choices:
        raise UnitError(f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


_REGISTER_KEYS = {"name", "table", "address", "type", "word_order", "scale", "offset", "unit",
                  "resolution", "writable", "minimum", "maximum"}  # fmt: skip


def parse_register(table: Mapping[str, Any], where: str) -> Register:
    """One ``[[units.options.registers]]`` table, checked. Raises :class:`UnitError`."""
    if not isinstance(table, Mapping):
        raise UnitError(f"{where}: each register is a table, got {table!r}")
    unknown = set(table) - _REGISTER_KEYS
    if unknown:
        raise UnitError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    name = table.get("name")
    if not isinstance(name, str) or not name or len(name) > 64:
        raise UnitError(f"{where}: name must be a non-empty string (at most 64 characters)")
    where = f"{where} ({name})"
    kind = _choice(table, "table", "holding", TABLES, where)
    bits = kind in ("coil", "discrete")
    dtype = _choice(table, "type", "int16", tuple(TYPES), where)
    if bits and "type" in table:
        raise UnitError(f"{where}: a {kind} is one bit: it has no type")
    scale = _number(table, "scale", 1.0, where)
    assert scale is not None
    if scale == 0:
        raise UnitError(f"{where}: scale must not be 0")
    writable = table.get("writable", False)
    if not isinstance(writable, bool):
        raise UnitError(f"{where}: writable must be true or false")
    if writable and kind not in ("holding", "coil"):
        raise UnitError(f"{where}: only holding registers and coils can be written")
    resolution = _number(table, "resolution", None, where)
    if resolution is not None and resolution <= 0:
        raise UnitError(f"{where}: resolution must be > 0")
    unit = table.get("unit", "")
    if not isinstance(unit, str):
        raise UnitError(f"{where}: unit must be a string")
    offset = _number(table, "offset", 0.0, where)
    assert offset is not None
    return Register(
        name=name,
        table=kind,
        address=_integer(table, "address", -1, 0, 0xFFFF, where),
        type=dtype,
        word_order=_choice(table, "word_order", "big", ("big", "little"), where),
        scale=scale,
        offset=offset,
        unit=unit,
        resolution=resolution,
        writable=writable,
        minimum=_number(table, "minimum", None, where),
        maximum=_number(table, "maximum", None, where),
    )


# --- the link: pymodbus's sync client, only ever called from a worker thread ------------


_READERS = {
    "holding": "read_holding_registers",
    "input": "read_input_registers",
    "coil": "read_coils",
    "discrete": "read_discrete_inputs",
}


class _Link:
    def __init__(self, make_client: Any, device_id: int, timeout_s: float) -> None:
        self._make_client = make_client
        self.timeout_s = timeout_s
        self._client: Any = None
        self.device_id = device_id

    def _connected(self) -> Any:
        if self._client is None:
            client = self._make_client()
            if not client.connect():
                client.close()
                raise ModbusLinkError("cannot connect")
            self._client = client
        return self._client

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

        client = self._connected()
        try:
            response = getattr(client, method)(*args, **kwargs, device_id=self.device_id)
        except ModbusIOException:
            self.close()
            raise ModbusLinkError(f"{what}: no answer within {self.timeout_s:g} s") from None
        except ConnectionException:
            self.close()
            raise ModbusLinkError(f"{what}: the connection was lost") from None
        except (ModbusException, OSError, ValueError) as exc:
            self.close()
            raise ModbusLinkError(f"{what}: {exc}") from None
        if response.isError():
            code = getattr(response, "exception_code", None)
            if code is None:  # no reply (timeout) or a garbled one
                self.close()
                raise ModbusLinkError(f"{what}: {response}")
            text = EXCEPTION_CODES.get(code, "unknown")
            raise ModbusLinkError(f"{what}: exception code {code} ({text})")
        return response

    def read(self, register: Register) -> list[Any]:
        method = _READERS[register.table]
        what = f"reading {register.table} {register.address} ({register.name})"
        response = self._call(what, method, register.address, count=register.count)
        return list(response.bits if register.bits else response.registers)

    def write(self, register: Register, payload: list[int] | bool) -> None:
        what = f"writing {register.table} {register.address} ({register.name})"
        if isinstance(payload, bool):
            self._call(what, "write_coil", register.address, payload)
        elif len(payload) == 1:
            self._call(what, "write_register", register.address, payload[0])
        else:
            self._call(what, "write_registers", register.address, payload)


class ModbusUnit:
    """A Modbus TCP or RTU device: its registers are readings, writable ones commands."""

    confirms_commands = True

    _KEYS = frozenset({"host", "port", "serial_port", "baudrate", "parity", "stopbits",
                       "bytesize", "device_id", "period_s", "timeout_s", "backoff_max_s",
                       "pain_intensity", "registers"})  # fmt: skip

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        where = f"unit {name}"
        unknown = set(options) - self._KEYS
        if unknown:
            raise UnitError(f"{where}: unknown option {sorted(unknown)[0]!r}")
        self.name = name
        host = options.get("host")
        serial_port = options.get("serial_port")
        if (host is None) == (serial_port is None):
            raise UnitError(f"{where}: give either host (Modbus TCP) or serial_port (RTU)")
        self.device_id = _integer(options, "device_id", 1, 0, 255, where)
        self.period_s = _positive(options, "period_s", 1.0, where)
        self.timeout_s = _positive(options, "timeout_s", 1.0, where)
        self.backoff_max_s = max(_positive(options, "backoff_max_s", 30.0, where), self.period_s)
        pain = _number(options, "pain_intensity", 0.6, where)
        if pain is None or not 0 < pain <= 1:
            raise UnitError(f"{where}: pain_intensity must be within (0, 1]")
        self.pain_intensity = pain
        if host is not None:
            if not isinstance(host, str) or not host:
                raise UnitError(f"{where}: host must be a host name or address")
            port = _integer(options, "port", 502, 1, 65535, where)
            for key in ("baudrate", "parity", "stopbits", "bytesize"):
                if key in options:
                    raise UnitError(f"{where}: {key} is for serial_port (RTU), not host")
            self.endpoint = f"tcp://{host}:{port}"
            self._client_args: dict[str, Any] = {"host": host, "port": port}
        else:
            if not isinstance(serial_port, str) or not serial_port:
                raise UnitError(f"{where}: serial_port must be a device path")
            if "port" in options:
                raise UnitError(f"{where}: port is for host (TCP); the device is serial_port")
            self.endpoint = f"rtu:{serial_port}"
            self._client_args = {
                "port": serial_port,
                "baudrate": _integer(options, "baudrate", 9600, 50, 4_000_000, where),
                "parity": _choice(options, "parity", "N", ("N", "E", "O"), where),
                "stopbits": _integer(options, "stopbits", 1, 1, 2, where),
                "bytesize": _integer(options, "bytesize", 8, 5, 8, where),
            }
        tables = options.get("registers")
        if not isinstance(tables, list) or not tables:
            raise UnitError(f"{where}: registers must be a non-empty list of tables")
        if len(tables) > MAX_REGISTERS:
            raise UnitError(f"{where}: at most {MAX_REGISTERS} registers, got {len(tables)}")
        self.registers = tuple(
            parse_register(t, f"{where}: registers[{i}]") for i, t in enumerate(tables)
        )
        names = [r.name for r in self.registers]
        if len(set(names)) != len(names):
            raise UnitError(f"{where}: two registers have one name")
        self.readings: tuple[ReadingSpec, ...] = tuple(
            ReadingSpec(r.name, r.unit, r.resolution, period_s=self.period_s)
            for r in self.registers
        )
        self.commands: tuple[CommandSpec, ...] = tuple(
            CommandSpec(r.name, "bool") if r.bits
            else CommandSpec(r.name, "number", r.minimum, r.maximum)
            for r in self.registers if r.writable
        )  # fmt: skip
        self._writable = {r.name: r for r in self.registers if r.writable}
        self._link = _Link(self._make_client, self.device_id, self.timeout_s)
        self._limiter = trio.CapacityLimiter(1)
        self._pained = False
        self.polls = self.failures = self.refusals = self.writes = 0
        self.last_error: str | None = None
        self.values: dict[str, float] = {}  # the latest value read of each register

    def _make_client(self) -> Any:
        from pymodbus.client import ModbusSerialClient, ModbusTcpClient

        # this unit reports failures (pain, status); pymodbus would log each retry again
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        args = self._client_args
        if "host" in args:
            return ModbusTcpClient(
                args["host"], port=args["port"], timeout=self.timeout_s, retries=0, name=self.name
            )
        return ModbusSerialClient(
            args["port"],
            baudrate=args["baudrate"],
            parity=args["parity"],
            stopbits=args["stopbits"],
            bytesize=args["bytesize"],
            timeout=self.timeout_s,
            retries=0,
            name=self.name,
        )

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def status(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "polls": self.polls, "failures": self.failures,
                "refusals": self.refusals, "writes": self.writes,
                "last_error": self.last_error}  # fmt: skip

    async def probe(self) -> bool:
        return not self._pained

    async def run(self, ctx: UnitContext) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._apply, ctx)
                await self._poll_forever(ctx)
        finally:
            with trio.CancelScope(shield=True):
                await self._in_thread(self._link.close)

    async def _poll_forever(self, ctx: UnitContext) -> None:
        delay = self.period_s
        next_at = trio.current_time()
        while True:
            try:
                await self._poll(ctx)
            except ModbusLinkError as exc:
                self.failures += 1
                self.last_error = str(exc)
                if not self._pained:
                    self._pained = True
                    ctx.pain(self.pain_intensity, f"modbus {self.endpoint}: {exc}")
                await trio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)
                next_at = trio.current_time()
                continue
            delay = self.period_s
            if self._pained:
                self._pained = False
                ctx.clear_pain(f"modbus {self.endpoint}: answering again")
            next_at += self.period_s
            await trio.sleep_until(max(next_at, trio.current_time()))

    async def _poll(self, ctx: UnitContext) -> None:
        self.polls += 1
        for register in self.registers:
            await self._read_one(ctx, register)

    async def _read_one(self, ctx: UnitContext, register: Register) -> None:
        words = await self._in_thread(self._link.read, register)
        try:
            value = decode(register, words)
        except UnitError as exc:
            self.refusals += 1
            self.last_error = str(exc)
            return
        self.values[register.name] = value
        ctx.emit(register.name, value)

    async def _apply(self, ctx: UnitContext) -> None:
        async for command in ctx.commands():
            await self._write(ctx, command)

    async def _write(self, ctx: UnitContext, command: Command) -> None:
        register = self._writable.get(command.name)
        if register is None:  # the runtime delivers only declared commands
            ctx.complete(command, f"no writable register {command.name!r}")
            return
        value = command.value
        if not isinstance(value, bool | int | float):
            ctx.complete(command, f"expects a number, got {value!r}")
            return
        try:
            payload = encode(register, value)
            await self._in_thread(self._link.write, register, payload)
        except (UnitError, ModbusLinkError) as exc:
            self.last_error = str(exc)
            ctx.complete(command, str(exc))
            return
        self.writes += 1
        ctx.complete(command)
        # read it back so the reading follows the device, not the request (the
        # poll loop reports a link that fails)
        with contextlib.suppress(ModbusLinkError):
            await self._read_one(ctx, register)


def _positive(options: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = _number(options, key, default, where)
    if value is None or value <= 0:
        raise UnitError(f"{where}: {key} must be > 0")
    return value
