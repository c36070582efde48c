"""Supervision of long-running tasks: restart with exponential backoff.

Time comes from Trio's clock (``trio.sleep``), so tests on ``MockClock`` see
exact restart times: a task that crashes at ``t`` restarts at ``t + backoff``,
the backoff doubling from ``initial_s`` to ``max_s`` and resetting to
``initial_s`` once a run lasted ``reset_after_s``. Each crash is logged: one
WARNING line naming the task, the error and the backoff, the traceback at DEBUG.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .settings import RuntimeConfig
from .status import TaskStatus

__all__ = ["Crash", "Supervised", "Supervisor"]

log = logging.getLogger("vsm_edge.agent.supervisor")


@dataclass(frozen=True, slots=True)
class Crash:
    name: str
    group: str
    error: str
    at: float
    crashes: int
    next_start: float


class Supervised:
    """The bookkeeping of one supervised task (read by status)."""

    def __init__(self, name: str, group: str) -> None:
        self.name = name
        self.group = group
        self.state = "starting"
        self.starts = 0
        self.crashes = 0
        self.last_error = ""
        self.last_crash_at: float | None = None

    def snapshot(self) -> TaskStatus:
        return TaskStatus(
            state=self.state,
            starts=self.starts,
            restarts=max(0, self.starts - 1),
            crashes=self.crashes,
            last_error=self.last_error,
        )


class Supervisor:
    """Runs tasks, restarting any that raise, and tells ``on_crash`` about each crash."""

    def __init__(self, config: RuntimeConfig, on_crash: Callable[[Crash], None]) -> None:
        self.config = config
        self.on_crash = on_crash
        self.tasks: dict[str, Supervised] = {}

    async def supervise(self, name: str, group: str, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` until it returns, restarting it when it raises. Cancellation ends it."""
        cfg = self.config
        record = self.tasks.setdefault(name, Supervised(name, group))
        backoff = cfg.restart_initial_s
        while True:
            started = trio.current_time()
            record.state = "running"
            record.starts += 1
            try:
                await fn()
            except Exception as exc:  # any failure of the unit is contained here
                now = trio.current_time()
                if now - started >= cfg.restart_reset_after_s:
                    backoff = cfg.restart_initial_s
                record.crashes += 1
                record.last_error = f"{type(exc).__name__}: {exc}"[:300]
                record.last_crash_at = now
                record.state = "restarting"
                _log_crash(record, backoff, exc)
                self.on_crash(
                    Crash(name, group, record.last_error, now, record.crashes, now + backoff)
                )
                await trio.sleep(backoff)
                backoff = min(backoff * 2, cfg.restart_max_s)
                continue
            except BaseException:
                record.state = "stopped"
                raise
            record.state = "finished"
            return


def _log_crash(record: Supervised, backoff: float, exc: Exception) -> None:
    """One WARNING line an operator can act on; the traceback only at DEBUG."""
    # an S1 task other than S1's own loops ("s1.bus") is a unit
    what = "unit" if record.group == "s1" and not record.name.startswith("s1.") else "task"
    log.warning(
        "%s %s crashed (%s); restart #%d in %.2f s",
        what,
        record.name,
        record.last_error,
        record.crashes,
        backoff,
    )
    log.debug("%s %s crash traceback", what, record.name, exc_info=exc)
