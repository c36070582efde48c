"""Shared helpers for the firmware-bridge tests: message strategies, the C tool."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st

from vsm_edge.bridge import (
    Ack,
    Channel,
    Command,
    Error,
    Heartbeat,
    Hello,
    HelloAck,
    Message,
    Nack,
    NackReason,
    Reading,
)

ROOT = Path(__file__).resolve().parents[2]
BRIDGE = ROOT / "firmware-bridge"
C_DIR = BRIDGE / "c"
VECTORS = json.loads((BRIDGE / "vectors.json").read_text())

seqs = st.integers(0, 0xFFFF)
channel_ids = st.integers(0, 255)
values = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(width=16, allow_nan=False, allow_infinity=False),
)
names = st.text(
    st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"),
    min_size=1,
    max_size=32,
)


def _fit(limit: int) -> Any:
    """Cut a text to at most ``limit`` UTF-8 bytes (mapping, not filtering: a filter
    rejected so many lists of 20-40 messages that hypothesis's health check failed)."""

    def cut(s: str) -> str:
        while len(s.encode()) > limit:
            s = s[:-1]
        return s

    return cut


printable = st.text(
    st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=16
).map(_fit(16))
texts = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=64).map(_fit(64))
optional_time = st.none() | st.integers(0, 2**32 - 1)


@st.composite
def channels(draw: st.DrawFn, ids: list[int]) -> Channel:
    lo = draw(st.none() | values)
    hi = draw(st.none() | values)
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    return Channel(ids.pop(), draw(names), draw(printable), lo, hi)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    n_s = draw(st.integers(0, 3))
    n_a = draw(st.integers(0, 2))
    ids = draw(st.lists(channel_ids, min_size=n_s + n_a, max_size=n_s + n_a, unique=True))
    sensors = [draw(channels(ids)) for _ in range(n_s)]
    actuators = [draw(channels(ids)) for _ in range(n_a)]
    # names unique within a list
    sensors = list({c.name: c for c in sensors}.values())
    actuators = list({c.name: c for c in actuators}.values())
    return Hello(
        draw(seqs),
        tuple(draw(st.lists(st.integers(1, 0xFFFF), min_size=1, max_size=8))),
        draw(names.map(lambda s: s[:12])),
        draw(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
        ),
        draw(st.integers(32, 4096)),
        tuple(sensors),
        tuple(actuators),
    )


messages: st.SearchStrategy[Message] = st.one_of(
    hellos(),
    st.builds(
        HelloAck, seqs, st.integers(1, 0xFFFF), st.integers(32, 4096), st.integers(100, 60000)
    ),
    st.builds(Reading, seqs, channel_ids, values, optional_time),
    st.builds(Command, seqs, channel_ids, values),
    st.builds(Ack, seqs, seqs),
    st.builds(Nack, seqs, st.sampled_from(NackReason), st.none() | seqs, st.none() | texts),
    st.builds(Heartbeat, seqs, optional_time),
    st.builds(Error, seqs, seqs, st.none() | channel_ids, st.none() | texts),
)


def same_json(a: Any, b: Any) -> bool:
    """Equality that tells ints from floats and -0.0 from 0.0 (as CBOR does)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and str(a) == str(b)
    return bool(a == b)


def require_gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc is missing and CI=true: the C reference codec must be tested")
        pytest.skip("gcc is not installed")
    return gcc


def build_c_tool(out_dir: Path, *, sanitize: bool = True, optimise: str = "-O1") -> Path:
    """Compile the C codec and its host tool with gcc (warnings are errors)."""
    gcc = require_gcc()
    exe = out_dir / ("vb_tool_san" if sanitize else "vb_tool")
    flags = [
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-Wpedantic",
        "-Wshadow",
        "-Wconversion",
        "-Werror",
        optimise,
        "-DVB_MAX_FRAME=4096",
    ]
    if sanitize:
        flags += ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    cmd = [
        gcc,
        *flags,
        "-I",
        str(C_DIR / "src"),
        str(C_DIR / "src" / "vsm_bridge.c"),
        str(C_DIR / "test" / "vb_tool.c"),
        "-o",
        str(exe),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    return exe


def run_c_tool(exe: Path, mode: str, lines: list[str], *args: str) -> list[dict[str, Any]]:
    """Feed hex lines to the tool; one parsed JSON object per output line."""
    proc = subprocess.run(
        [str(exe), mode, *args],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


async def fake_device(stream: Any, session: Any, answer_commands: bool = True) -> None:
    """Run a DeviceSession over an in-memory stream (the fake beside the real pty)."""
    import math

    import trio

    from vsm_edge.bridge import NEED_DATA, CommandReceived

    session.start(trio.current_time())
    wake = trio.Event()

    async def flush() -> None:
        data = session.data_to_send()
        if data:
            await stream.send_all(data)

    async def reader() -> None:
        nonlocal wake
        while True:
            data = await stream.receive_some(4096)
            if not data:
                return
            session.receive_data(data, trio.current_time())
            while (ev := session.next_event()) is not NEED_DATA:
                if isinstance(ev, CommandReceived) and answer_commands:
                    session.respond(ev.command)
            await flush()
            wake.set()

    async def ticker() -> None:
        nonlocal wake
        while True:
            deadline = session.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await wake.wait()
            wake = trio.Event()
            session.handle_timer(trio.current_time())
            await flush()

    await flush()  # the hello
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await reader()
        nursery.cancel_scope.cancel()
