"""Helpers for the VSM tests: configs, a MockClock-driven wall clock, a running runtime."""

from __future__ import annotations

import weakref
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from vsm_edge.agent import AgentConfig, Runtime, Unit, parse_config
from vsm_edge.agent.web.status import StatusServer, serve_status

EPOCH_MS = 1_700_000_000_000


def wall_clock() -> int:
    """Wall milliseconds that follow Trio's (mock) clock."""
    return EPOCH_MS + int(trio.current_time() * 1000)


def config(
    extra: Mapping[str, Any] | None = None, *, data_dir: Path | None = None, status: bool = False
) -> AgentConfig:
    data: dict[str, Any] = {
        "node": {"id": "n1", "mesh": "test", "zone": "lab"},
        "status": {"enabled": status, "port": 0},
    }
    if data_dir is not None:
        data["node"]["data_dir"] = str(data_dir)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return parse_config(data)


# runtime -> its status endpoint, for the tests that look at the server itself
STATUS_SERVERS: weakref.WeakKeyDictionary[Runtime, StatusServer] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def running(
    cfg: AgentConfig, units: Mapping[str, Unit] | None = None, **kwargs: Any
) -> AsyncIterator[Runtime]:
    runtime = Runtime(cfg, wall_clock=wall_clock, units=units, write_state=False, **kwargs)
    if cfg.status.enabled:  # composed as `vsm-edge run` does (cli/run.py)
        STATUS_SERVERS[runtime] = serve_status(runtime, cfg.status, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(runtime.run)
        try:
            yield runtime
        finally:
            runtime.stop()
