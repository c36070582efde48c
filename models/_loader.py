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
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

from ._errors import ModelError
from ._zombie import FEATURE_NAMES, NUM_FEATURES

__all__ = [
    "CLASSES",
    "DEFAULT_RUNTIMES",
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
