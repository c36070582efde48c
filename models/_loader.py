"""Reading and checking arbitrator model files, and loading the arbitrator lazily.

Nothing here imports numpy or a TFLite runtime: together they cost an agent
about 30 MB of RSS (docs/benchmarks.md, "Agent memory"), and the arbitrator
only decides MAYBE cases, which honest traffic almost never produces.
:class:`LazyArbitrator` checks the files at construction (bounded read,
SHA-256 against the sidecar, feature names, classes, standardisation, the
TFLite identifier, a runtime installed), so a broken or foreign model is
still reported at start; it builds the interpreter on the first MAYBE.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from ._errors import ModelError, ModelUnavailableError
from ._gateway import Arbitration
from ._zombie import FEATURE_NAMES, NUM_FEATURES

if TYPE_CHECKING:
    from ._arbitrator import Arbitrator

__all__ = [
    "CLASSES",
    "DEFAULT_RUNTIMES",
    "LazyArbitrator",
    "read_model",
]

log = logging.getLogger("vsm_edge.models")

CLASSES: Final[tuple[str, ...]] = ("honest", "replay", "flood", "slow-drip")
METADATA_FORMAT: Final = 1
MAX_MODEL_BYTES: Final = 1 << 20
MAX_METADATA_BYTES: Final = 1 << 16
CLIP: Final = 4.0
SHIPPED_MODEL: Final = "arbitrator.tflite"
# (module, distribution) in order of preference.
DEFAULT_RUNTIMES: Final[tuple[tuple[str, str], ...]] = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


def check_metadata(meta: object, model: bytes) -> tuple[list[float], list[float], float]:
    """The sidecar's (mean, std, allow_threshold) after checking it against ``model``.

    Raises :class:`ModelError` (``corrupt`` or ``incompatible``).
    """
    if not isinstance(meta, dict):
        raise ModelError("model metadata is not a JSON object", reason="corrupt")
    if meta.get("format") != METADATA_FORMAT:
        raise ModelError(
            f"model metadata format {meta.get('format')!r} is not {METADATA_FORMAT}",
            reason="incompatible",
        )
    if meta.get("sha256") != hashlib.sha256(model).hexdigest():
        raise ModelError(
            "model file does not match the SHA-256 in its metadata (corrupt or replaced)",
            reason="corrupt",
        )
    if meta.get("features") != list(FEATURE_NAMES):
        raise ModelError(
            "model was trained on other features than this code computes", reason="incompatible"
        )
    if meta.get("classes") != list(CLASSES):
        raise ModelError("model predicts other classes than this code knows", reason="incompatible")
    mean, std = meta.get("mean"), meta.get("std")
    threshold = meta.get("allow_threshold", 0.5)
    ok = (
        isinstance(mean, list)
        and isinstance(std, list)
        and len(mean) == len(std) == NUM_FEATURES
        and all(isinstance(v, int | float) and math.isfinite(v) for v in mean)
        and all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in std)
        and isinstance(threshold, int | float)
        and 0.0 < threshold < 1.0
        and meta.get("clip") == CLIP
    )
    if not ok:
        raise ModelError("model metadata has a bad standardisation or threshold", reason="corrupt")
    assert isinstance(mean, list)
    assert isinstance(std, list)
    return [float(v) for v in mean], [float(v) for v in std], float(threshold)


def check_model_bytes(model: object) -> None:
    """Raise :class:`ModelError` unless ``model`` is at most 1 MiB and a TFLite flatbuffer."""
    if not isinstance(model, bytes) or len(model) > MAX_MODEL_BYTES:
        raise ModelError("model must be at most 1 MiB of bytes", reason="corrupt")


def check_identifier(model: bytes) -> None:
    """Raise :class:`ModelError` unless the flatbuffer's identifier is ``TFL3``."""
    if len(model) < 8 or model[4:8] != b"TFL3":
        raise ModelError("not a TFLite flatbuffer (identifier TFL3 missing)", reason="corrupt")


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise ModelError(
            f"cannot read the {what} {path}: {exc.strerror or exc}", reason="corrupt"
        ) from None
    if len(data) > limit:
        raise ModelError(f"the {what} {path} is larger than {limit} bytes", reason="corrupt")
    return data


def shipped_model() -> Path:
    """The path of the model shipped in the package."""
    return Path(str(resources.files("vsm_edge.models").joinpath(SHIPPED_MODEL)))


def read_model(path: str | Path | None = None) -> tuple[bytes, dict[str, Any]]:
    """Read a model file and its JSON sidecar (``path`` with ``.json``); the shipped one by default.

    Raises :class:`ModelError` when either file is missing or too large, or
    the sidecar is not a JSON object. The contents are checked by
    :func:`check_metadata` (the caller's job).
    """
    model_path = Path(path) if path is not None else shipped_model()
    model = _read_bounded(model_path, MAX_MODEL_BYTES, "model")
    raw_meta = _read_bounded(model_path.with_suffix(".json"), MAX_METADATA_BYTES, "model metadata")
    try:
        meta = json.loads(raw_meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ModelError(
            f"model metadata {model_path.with_suffix('.json')} is not JSON", reason="corrupt"
        ) from None
    if not isinstance(meta, dict):
        raise ModelError("model metadata is not a JSON object", reason="corrupt")
    return model, meta


def runtime_installed(runtimes: Sequence[tuple[str, str]]) -> bool:
    """Whether the top-level package of some runtime can be found (nothing is imported)."""
    for module_name, _ in runtimes:
        top = module_name.split(".")[0]
        if top in sys.modules:
            return True
        try:
            if importlib.util.find_spec(top) is not None:
                return True
        except (ImportError, ValueError):
            continue
    return False


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
