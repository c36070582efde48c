"""The arbitrator built on the first MAYBE: an agent that never needs it never pays for it.

Importing this module costs nothing heavy; :meth:`LazyArbitrator.load`
imports numpy and the TFLite runtime (``_arbitrator``) the first time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import ModelError, ModelUnavailableError
from ._gateway import Arbitration
from ._loader import (
    DEFAULT_RUNTIMES,
    check_identifier,
    check_metadata,
    check_model_bytes,
    read_model,
    runtime_installed,
    shipped_model,
)

if TYPE_CHECKING:  # the type only; the module is imported in load()
    from ._arbitrator import Arbitrator

__all__ = ["LazyArbitrator"]

log = logging.getLogger("vsm_edge.models")


class LazyArbitrator:
    """An :class:`~vsm_edge.models.Arbiter` that builds the int8 arbitrator on the first MAYBE.

    Construction reads and checks the model files (everything short of
    building an interpreter) and raises :class:`ModelError` as
    :func:`~vsm_edge.models.load_arbitrator` would, so a missing, corrupt or
    foreign model, or no runtime installed, is still an error at start. The
    first :meth:`classify` imports numpy and the runtime and builds the
    interpreter (about 0.2 s here, once, on the caller's thread); if that
    fails it logs a warning, calls ``on_unavailable`` with the error, and
    this and every later call raise :class:`ModelUnavailableError` (a gateway
    DENYs ``arbitrator-unavailable``: fail closed).

    :attr:`state` is ``"not-loaded"``, ``"loaded"`` or ``"unavailable"``.
    Not thread-safe (like the arbitrator it wraps).
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        runtimes: Sequence[tuple[str, str]] = DEFAULT_RUNTIMES,
        on_unavailable: Callable[[ModelError], None] | None = None,
    ) -> None:
        model, meta = read_model(path)
        check_model_bytes(model)
        check_metadata(meta, model)
        check_identifier(model)
        if not runtime_installed(runtimes):
            names = " or ".join(dist for _, dist in runtimes) or "(none configured)"
            raise ModelError(f"no TFLite runtime installed: install {names}", reason="no-runtime")
        self.path = Path(path) if path is not None else shipped_model()
        self._model: bytes | None = model
        self._meta: dict[str, Any] | None = meta
        self._runtimes = tuple(runtimes)
        self._on_unavailable = on_unavailable
        self._arbitrator: Arbitrator | None = None
        self.error: ModelError | None = None
        self.load_seconds: float | None = None

    @property
    def state(self) -> str:
        if self._arbitrator is not None:
            return "loaded"
        return "unavailable" if self.error is not None else "not-loaded"

    @property
    def runtime(self) -> str | None:
        """The runtime's distribution name once loaded, else None."""
        return None if self._arbitrator is None else self._arbitrator.runtime

    def load(self) -> Arbitrator:
        """Build the arbitrator now (idempotent); raises :class:`ModelUnavailableError`."""
        if self._arbitrator is not None:
            return self._arbitrator
        if self.error is not None:
            raise ModelUnavailableError(str(self.error), reason=self.error.reason)
        assert self._model is not None
        assert self._meta is not None
        start = time.perf_counter()
        try:
            from ._arbitrator import Arbitrator

            arbitrator = Arbitrator(self._model, self._meta, runtimes=self._runtimes)
        except ModelError as exc:
            self.error = exc
            self._model = self._meta = None
            log.warning(
                "arbitrator model %s could not be loaded (%s): %s; MAYBE decisions will DENY",
                self.path,
                exc.reason,
                exc,
            )
            if self._on_unavailable is not None:
                self._on_unavailable(exc)
            raise ModelUnavailableError(str(exc), reason=exc.reason) from None
        self.load_seconds = time.perf_counter() - start
        self._arbitrator = arbitrator
        self._model = self._meta = None
        log.info(
            "arbitrator loaded on the first MAYBE in %.3f s (%s)",
            self.load_seconds,
            arbitrator.runtime,
        )
        return arbitrator

    def classify(self, features: Sequence[float]) -> Arbitration:
        """Decide one feature vector, loading the model first if needed.

        Raises :class:`ModelUnavailableError` when the model cannot be
        loaded, :class:`ModelError` when inference fails.
        """
        return self.load().classify(features)
