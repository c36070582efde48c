"""The demo's simulated microcontroller: ``vsm-edge simulate-device`` on a pseudo-terminal.

:func:`start_device` runs the simulator as its own process (as a user would), reads
the device path it prints, and hands the demo a ``firmware-bridge`` unit for one
node's config, so that node's readings travel MCU -> serial bridge -> S1 -> the
replicated ``mesh`` document -> the other nodes. :meth:`DemoDevice.report` says
what arrived where. When the pty cannot be opened (no ``/dev/ptmx`` in a
container, say) the demo goes on without a device and says why.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import trio

from ..mesh.schema import reading_prefix

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ..vsm.status import VsmStatus

__all__ = ["DEVICE_UNIT", "DemoDevice", "start_device"]

DEVICE_UNIT = "bench"
DEVICE_ID = "bench-mcu"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


@dataclass
class DemoDevice:
    node: str
    path: str
    process: trio.Process
    log: TextIO

    def unit_toml(self) -> str:
        """The ``[[units]]`` table that connects the node to the device."""
        return f"""
[[units]]
name = "{DEVICE_UNIT}"
kind = "firmware-bridge"
[units.options]
device = "{self.path}"
pain_after_s = 3.0
"""

    def report(
        self, statuses: Mapping[str, VsmStatus | None], sample_files: dict[str, Path]
    ) -> dict[str, Any]:
        """What the device's readings did: received by its node's S1, and which peers
        hold them in their replicated state (with the replication latency).

        ``statuses`` maps node -> its last status (None: none yet); ``sample_files``
        node -> the ``replication-samples.json`` it wrote at shutdown (``[key,
        written ms, latency ms]`` of each peer reading joined there).
        """
        status = statuses.get(self.node)
        entry = None if status is None else status.s1.units.get(DEVICE_UNIT)
        detail: Mapping[str, Any] = (entry.detail if entry is not None else None) or {}
        prefix = reading_prefix(self.node, DEVICE_UNIT)
        latencies: list[float] = []
        peers: list[str] = []
        for node, path in sorted(sample_files.items()):
            try:
                samples = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            mine = [float(s[2]) for s in samples if str(s[0]).startswith(prefix)]
            if mine:
                peers.append(node)
                latencies += mine
        latencies.sort()
        return {
            "node": self.node,
            "unit": DEVICE_UNIT,
            "path": self.path,
            "device_id": detail.get("device_id"),
            "connected": detail.get("connected"),
            "readings": list(entry.readings) if entry is not None else [],
            "readings_received": detail.get("readings_received", 0),
            "emitted": entry.emitted if entry is not None else 0,
            "frames_rejected": (detail.get("bridge") or {})
            .get("session", {})
            .get("frames_rejected", {}),
            "peers_holding_readings": peers,
            "replicated_updates": len(latencies),
            "replication_ms": _pcts(latencies),
        }

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            with trio.move_on_after(STOP_TIMEOUT_S):
                await self.process.wait()
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
        self.log.close()


async def start_device(node: str, workdir: Path) -> DemoDevice | str:
    """Start the simulator for ``node``; the device, or why there is none."""
    link = workdir / f"tty-{node}-{DEVICE_UNIT}"
    log = (workdir / "device.log").open("w")
    try:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "vsm_edge.agent", "simulate-device", "--link", str(link),
             "--device-id", DEVICE_ID, "--interval", "0.5", "--seed", "7"],
            stdout=-1, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    except OSError as exc:
        log.close()
        return f"cannot start the device simulator: {exc}"
    printed = b""
    assert process.stdout is not None
    with trio.move_on_after(START_TIMEOUT_S):
        while b"\n" not in printed and len(printed) < 4096:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                break
            printed += chunk
    path = printed.decode(errors="replace").strip()
    if path != str(link):
        device = DemoDevice(node, path, process, log)
        await device.stop()
        why = (workdir / "device.log").read_text().strip().splitlines()[-1:] or ["no output"]
        return f"the device simulator did not start ({why[0]})"
    return DemoDevice(node, path, process, log)


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {}

    def pick(q: float) -> float:
        return round(values[min(len(values) - 1, math.floor(q * len(values)))], 1)

    return {"p50": pick(0.5), "p99": pick(0.99), "max": round(values[-1], 1)}
