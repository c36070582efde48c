"""The example Arduino sketch, compiled for the PC against a small Arduino shim,
talks to the Python bridge over a real pseudo-terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import termios
import tty
from pathlib import Path

import pytest
import trio
from support.bridge import C_DIR, require_gcc

from vsm_edge.bridge import CommandRejected, SerialBridge

pytestmark = pytest.mark.integration

SKETCH = C_DIR / "examples" / "vsm_bridge_demo" / "vsm_bridge_demo.ino"


@pytest.fixture(scope="module")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = require_gcc()
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("g++ is not installed")
    out = tmp_path_factory.mktemp("fw")
    obj = out / "vsm_bridge.o"
    subprocess.run(
        [gcc, "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(C_DIR / "src"),
         "-c", str(C_DIR / "src" / "vsm_bridge.c"), "-o", str(obj)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    exe = out / "demo_fw"
    subprocess.run(
        [gxx, "-std=c++11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", str(C_DIR / "src"),
         "-I", str(C_DIR / "test" / "arduino_shim"), "-include", "Arduino.h",
         "-x", "c++", str(SKETCH), "-x", "none", str(obj), "-o", str(exe)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return exe


async def test_example_firmware_handshakes_reports_and_obeys(firmware: Path) -> None:
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    path = os.ttyname(slave)
    proc = subprocess.Popen([str(firmware)], stdin=master, stdout=master)  # noqa: ASYNC220
    os.close(master)
    try:
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                bridge = SerialBridge(path)
                await nursery.start(bridge.run)
                info = await bridge.wait_connected()
                assert info.device_id == "arduino-demo"
                assert info.firmware == "demo 1.0.0"
                assert [(c.id, c.name, c.unit) for c in info.sensors] == [
                    (1, "temperature", "degC"),
                    (2, "light", ""),
                ]
                assert info.actuators[0].maximum == 255
                seen = {}
                while len(seen) < 2:
                    r = await bridge.readings.receive()
                    seen[r.unit_id] = r
                assert isinstance(seen["arduino-demo/temperature"].value, float)
                assert -40 <= seen["arduino-demo/temperature"].value <= 125
                assert isinstance(seen["arduino-demo/light"].value, int)
                await bridge.command("fan", 200)
                await bridge.command("fan", 0.0)
                with pytest.raises(CommandRejected):
                    await bridge.command("fan", 256)
                stats = bridge.statistics().session
                assert stats.commands_completed == 2
                assert stats.frames_rejected == {}
                nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        os.close(slave)
