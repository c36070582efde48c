"""Store faults: a replica whose store cannot take writes, and its way back.

A write that fails because of the disk (full, I/O error, read-only: a
:class:`StoreError` or ``OSError``; not :class:`StoreFullError`, which is one
of the store's own bounds refusing one call) puts the replica in a *store
fault*. Entering it is logged once at ERROR with the cause, observers hear of
it (the agent raises pain), and local writes are refused with
:class:`StoreFaultError` *before* anything changes, so a refused write leaves
no trace. The replicator retries with backoff (a probe write, the clock's
pending ceiling, the snapshots); when they succeed the fault clears, which is
logged and told to the observers (``None``).

Nothing here does I/O or knows Trio: the replicator passes the times in.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._errors import StoreFaultError, StoreFullError

__all__ = ["StoreFault", "StoreFaults"]

log = logging.getLogger("vsm_edge.sync.replicator")


@dataclass(frozen=True, slots=True)
class StoreFault:
    """The store cannot take writes: why, since when, how often it failed since.

    ``cause`` is :attr:`StoreError.cause` (``"disk-full"``, ``"io-error"``...),
    ``operation`` the write that failed first (``"commit"``, ``"snapshot"``,
    ``"hlc ceiling"``...), ``since`` its monotonic (trio) time, ``since_ms``
    its wall-clock time, ``failures`` the failed writes and retries so far.
    """

    cause: str
    message: str
    operation: str
    since: float
    since_ms: int
    failures: int = 1
    last_message: str = ""

    def as_json(self, now: float) -> dict[str, Any]:
        return {
            "cause": self.cause,
            "message": self.message,
            "operation": self.operation,
            "since_ms": self.since_ms,
            "for_s": round(now - self.since, 1),
            "failures": self.failures,
            "last_message": self.last_message or self.message,
        }


Observer = Callable[[StoreFault | None], None]


class StoreFaults:
    """The store-fault state of one replica (module docstring)."""

    def __init__(self) -> None:
        self.fault: StoreFault | None = None
        self.observers: list[Observer] = []
        self.faults = 0
        self.recoveries = 0
        self.refused = 0

    def failed(self, exc: BaseException, operation: str, now: float, wall_ms: int) -> bool:
        """A write failed; True when this began a fault (the caller starts retrying)."""
        if isinstance(exc, StoreFullError):
            return False  # a bound refused one call: the disk is fine
        fault = self.fault
        if fault is not None:
            self.fault = dataclasses.replace(
                fault, failures=fault.failures + 1, last_message=str(exc)
            )
            return False
        cause = getattr(exc, "cause", "") or ("os-error" if isinstance(exc, OSError) else "error")
        self.fault = StoreFault(cause, str(exc), operation, since=now, since_ms=wall_ms)
        self.faults += 1
        log.error(
            "store fault (%s) in %s: %s; local writes are refused until the store "
            "takes writes again (retrying with backoff)",
            cause,
            operation,
            exc,
        )
        self._notify()
        return True

    def cleared(self, now: float) -> None:
        """The retried writes succeeded: local writes may go on."""
        fault, self.fault = self.fault, None
        if fault is None:
            return
        self.recoveries += 1
        log.warning(
            "the store takes writes again after %.1f s (%d failed writes); local writes resume",
            now - fault.since,
            fault.failures,
        )
        self._notify()

    def refuse_if_faulted(self) -> None:
        """Raise :class:`StoreFaultError` while faulted (count it), else nothing."""
        fault = self.fault
        if fault is None:
            return
        self.refused += 1
        raise StoreFaultError(
            f"local write refused: the store has been faulted ({fault.cause}) since "
            f"{fault.operation} failed: {fault.message}; writes resume when it works again",
            cause=fault.cause,
            since=fault.since_ms / 1000.0,
        )

    def _notify(self) -> None:
        for observer in self.observers:
            try:
                observer(self.fault)
            except Exception:  # an observer's bug must not stop the recovery
                log.exception("store fault observer failed")
