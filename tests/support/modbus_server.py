"""A real Modbus device for the tests: pymodbus's own server in a separate process.

In a test, :class:`ServerProcess` runs it and :func:`null_modem` joins two
pseudo-terminals as a null-modem cable does (what ``socat`` would do), so the
unit and the server each open a real serial device for RTU. As a program:

    python -m support.modbus_server tcp PORT [--device-id N] [--set hr:10=1234,5678 ...]
    python -m support.modbus_server rtu /dev/pts/N [--baudrate B] ...

Each table (``hr`` holding registers, ``ir`` input registers, ``co`` coils,
``di`` discrete inputs) has 200 addresses (0..199), zero unless ``--set``
gives values from an address on. It prints ``ready`` once serving and runs
until stdin closes or it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import select
import subprocess
import sys
import termios
import threading
import tty
import warnings
from collections.abc import Iterator
from pathlib import Path

from pymodbus.datastore import (
    ModbusDeviceContext,
    ModbusSequentialDataBlock,
    ModbusServerContext,
)
from pymodbus.server import ModbusSerialServer, ModbusTcpServer

SIZE = 200
TABLES = ("hr", "ir", "co", "di")


TESTS = Path(__file__).resolve().parent.parent


class ServerProcess:
    """``python -m support.modbus_server ARGS`` until :meth:`stop`; started once ready."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "support.modbus_server", *args],
            cwd=TESTS, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            raise RuntimeError(f"the modbus server did not start: {self.stderr()}")

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def null_modem() -> Iterator[tuple[str, str]]:
    """Two pseudo-terminals whose bytes a thread copies across: yields their paths."""
    ends = [os.openpty() for _ in range(2)]
    for _, slave in ends:
        tty.setraw(slave, termios.TCSANOW)
    masters = [master for master, _ in ends]
    stop_r, stop_w = os.pipe()

    def relay() -> None:
        while True:
            ready, _, _ = select.select([*masters, stop_r], [], [])
            if stop_r in ready:
                return
            for i, master in enumerate(masters):
                if master in ready:
                    try:
                        data = os.read(master, 4096)
                    except OSError:  # EIO while the other side has no opener
                        continue
                    os.write(masters[1 - i], data)

    thread = threading.Thread(target=relay, daemon=True)
    thread.start()
    try:
        yield os.ttyname(ends[0][1]), os.ttyname(ends[1][1])
    finally:
        os.write(stop_w, b"x")
        thread.join(5)
        for fd in (*masters, *(s for _, s in ends), stop_r, stop_w):
            os.close(fd)


def _tables(settings: list[str]) -> dict[str, list[int]]:
    values = {t: [0] * SIZE for t in TABLES}
    for setting in settings:
        where, _, numbers = setting.partition("=")
        table, _, address = where.partition(":")
        start = int(address)
        for i, number in enumerate(numbers.split(",")):
            values[table][start + i] = int(number)
    return values


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["tcp", "rtu"])
    parser.add_argument("where", help="the TCP port on 127.0.0.1, or the serial device")
    parser.add_argument("--device-id", type=int, default=1)
    parser.add_argument("--baudrate", type=int, default=19200)
    parser.add_argument("--set", action="append", default=[], help="TABLE:ADDRESS=V1,V2...")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)  # the 3.x datastore, fine below 4
    # a sequential block starting at 1 serves protocol address 0 from its first value
    blocks = {t: ModbusSequentialDataBlock(1, v) for t, v in _tables(args.set).items()}
    device = ModbusDeviceContext(**blocks)  # type: ignore[arg-type]
    context = ModbusServerContext(devices={args.device_id: device}, single=False)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server: ModbusTcpServer | ModbusSerialServer  # made inside the running loop
        if args.transport == "tcp":
            server = ModbusTcpServer(context, address=("127.0.0.1", int(args.where)))
        else:
            server = ModbusSerialServer(context, port=args.where, baudrate=args.baudrate)
        await server.listen()
        print("ready", flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until stdin closes
        await server.shutdown()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
