"""The neural arbitrator: a full-int8 TFLite MLP that decides MAYBE cases.

Theory of operation
-------------------
The gateway only asks when the replay check cannot prove an envelope new or
replayed (a Bloom hit the exact set cannot resolve). The arbitrator then
looks at *who* sent it and *how* the peer behaves: the 16 features of
:data:`FEATURE_NAMES` (rates against the peer's own baseline, kind entropy,
duplicate ratio, HLC skew and lag, timer regularity, repair share, bad
attempts...). A small MLP (16 -> 32 -> 16 -> 4, ReLU, softmax) trained on the
seeded traffic simulator (``traffic_sim``) gives probabilities for the
classes :data:`CLASSES`; the envelope is ALLOWed when P(honest) is at least
``allow_threshold`` (0.5 unless the model's metadata says otherwise).

Numerics: features are standardised per feature with the training set's mean
and standard deviation (stored in the metadata), clipped to [-4, 4] (so the
int8 input scale is fixed), quantized with the input tensor's scale and zero
point, and the int8 softmax output is dequantized. Standardising and
quantizing fold into one multiply-add per feature.

Integrity, fail closed: a model is a ``.tflite`` file plus a JSON sidecar
(same stem) naming its SHA-256, the feature names, the classes and the
standardisation. Loading checks size bounds, the digest, the names, the
TFLite identifier and the tensor types (int8 in, int8 out, the right
shapes) before any inference; every failure raises :class:`ModelError`.
The runtime is imported lazily, first ``ai_edge_litert`` then
``tflite_runtime``; a runtime that imports but cannot build an interpreter
(tflite-runtime 2.14 under NumPy 2) is skipped with its error remembered.
:func:`load_arbitrator_or_none` logs a warning and returns None, and a gateway
without an arbitrator DENYs every MAYBE.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ._errors import ModelError
from ._gateway import Arbitration
from ._loader import (
    CLASSES,
    CLIP,
    DEFAULT_RUNTIMES,
    METADATA_FORMAT,
    check_identifier,
    check_metadata,
    check_model_bytes,
    read_model,
)
from ._zombie import FEATURE_NAMES, NUM_FEATURES

__all__ = [
    "CLASSES",
    "DEFAULT_RUNTIMES",
    "Arbitrator",
    "load_arbitrator",
    "load_arbitrator_or_none",
    "model_metadata",
    "standardize",
]

log = logging.getLogger("vsm_edge.models")

_MAX_FEATURE: Final = 1e6


def standardize(
    features: npt.ArrayLike, mean: Sequence[float], std: Sequence[float]
) -> npt.NDArray[np.float32]:
    """``clip((x - mean) / std, -4, 4)`` per feature, as float32 (training and run time)."""
    x = np.asarray(features, dtype=np.float32)
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    out: npt.NDArray[np.float32] = np.clip((x - m) / s, -CLIP, CLIP).astype(np.float32)
    return out


def model_metadata(
    model: bytes,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    allow_threshold: float = 0.5,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON sidecar for ``model`` (what :func:`load_arbitrator` checks)."""
    return {
        "format": METADATA_FORMAT,
        "sha256": hashlib.sha256(model).hexdigest(),
        "features": list(FEATURE_NAMES),
        "classes": list(CLASSES),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "clip": CLIP,
        "allow_threshold": allow_threshold,
        **(dict(extra) if extra else {}),
    }


def _interpreter(model: bytes, runtimes: Sequence[tuple[str, str]]) -> tuple[Any, str]:
    failures: list[str] = []
    importable = False
    for module_name, dist in runtimes:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        except Exception as exc:  # a runtime broken at import (ABI mismatch)
            failures.append(f"{dist}: import failed: {type(exc).__name__}: {exc}")
            continue
        importable = True
        try:
            interpreter = module.Interpreter(model_content=model, num_threads=1)
            interpreter.allocate_tensors()
        except Exception as exc:  # tflite-runtime 2.14 under NumPy 2 fails here
            failures.append(f"{dist}: interpreter failed: {type(exc).__name__}: {exc}")
            continue
        return interpreter, dist
    if not importable and not failures:
        names = " or ".join(dist for _, dist in runtimes) or "(none configured)"
        raise ModelError(f"no TFLite runtime installed: install {names}", reason="no-runtime")
    raise ModelError(
        "no TFLite runtime could load the model: " + "; ".join(failures), reason="runtime-failed"
    )


class Arbitrator:
    """Decides MAYBE cases with the int8 model (module doc).

    Build it with :func:`load_arbitrator` (from files) or directly from the
    model bytes and their metadata mapping; raises :class:`ModelError` when
    either is unusable. Not thread-safe (one interpreter, one buffer).
    """

    def __init__(
        self,
        model: bytes,
        metadata: Mapping[str, Any],
        *,
        runtimes: Sequence[tuple[str, str]] = DEFAULT_RUNTIMES,
    ) -> None:
        check_model_bytes(model)
        mean, std, threshold = check_metadata(dict(metadata), model)
        check_identifier(model)
        interpreter, runtime = _interpreter(model, runtimes)
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(
                "model must have one input and one output tensor", reason="incompatible"
            )
        inp, out = inputs[0], outputs[0]
        shapes_ok = list(inp["shape"]) == [1, NUM_FEATURES] and list(out["shape"]) == [
            1,
            len(CLASSES),
        ]
        types_ok = inp["dtype"] == np.int8 and out["dtype"] == np.int8
        in_scale, in_zero = inp["quantization"]
        out_scale, out_zero = out["quantization"]
        if not (shapes_ok and types_ok and in_scale > 0 and out_scale > 0):
            raise ModelError(
                f"model tensors are {inp['dtype'].__name__}{list(inp['shape'])} -> "
                f"{out['dtype'].__name__}{list(out['shape'])}, expected int8[1, {NUM_FEATURES}] -> "
                f"int8[1, {len(CLASSES)}] with quantization",
                reason="incompatible",
            )
        self.runtime = runtime
        self.allow_threshold = threshold
        self.metadata: Mapping[str, Any] = dict(metadata)
        self._interpreter = interpreter
        self._in_index = int(inp["index"])
        self._out_index = int(out["index"])
        std_arr = np.asarray(std, dtype=np.float64)
        mean_arr = np.asarray(mean, dtype=np.float64)
        # q = clip(round(clip((x - mean)/std, -4, 4) / s + z)): the inner clip is
        # implied by the outer one only when [-4, 4] maps inside [-128, 127], so
        # keep both bounds explicit (in quantized units).
        self._mul = 1.0 / (std_arr * in_scale)
        self._add = in_zero - mean_arr / (std_arr * in_scale)
        self._lo = float(max(-128.0, round(-CLIP / in_scale + in_zero)))
        self._hi = float(min(127.0, round(CLIP / in_scale + in_zero)))
        self._out_scale = float(out_scale)
        self._out_zero = int(out_zero)
        self.classify([0.0] * NUM_FEATURES)  # fail now, not on the first MAYBE

    def tensor_details(self) -> dict[str, dict[str, object]]:
        """The model's input and output tensors: dtype name, shape, (scale, zero point)."""
        out: dict[str, dict[str, object]] = {}
        for name, details in (
            ("input", self._interpreter.get_input_details()[0]),
            ("output", self._interpreter.get_output_details()[0]),
        ):
            scale, zero = details["quantization"]
            out[name] = {
                "dtype": np.dtype(details["dtype"]).name,
                "shape": [int(v) for v in details["shape"]],
                "quantization": (float(scale), int(zero)),
            }
        return out

    def quantize(self, features: Sequence[float]) -> npt.NDArray[np.int8]:
        """The int8 input tensor for one feature vector (shape ``[1, 16]``).

        Raises :class:`ModelError` unless every feature is a finite number
        within +-1e6 (the detector's are bounded far inside; NaN or infinity
        is refused rather than mapped to some value).
        """
        try:
            # fsum catches NaN and infinities anywhere; the bound keeps the
            # multiply below from overflowing. Two calls instead of 16 checks.
            ok = math.isfinite(math.fsum(features)) and max(map(abs, features)) <= _MAX_FEATURE
        except (OverflowError, TypeError, ValueError):
            ok = False
        if not ok:
            raise ModelError("features must be finite numbers within +-1e6", reason="incompatible")
        # Standardise and quantize in one multiply-add; np.clip is several
        # times slower than maximum+minimum on a 16-element array.
        x = np.array(features, dtype=np.float64)
        np.multiply(x, self._mul, out=x)
        np.add(x, self._add, out=x)
        np.rint(x, out=x)
        np.maximum(x, self._lo, out=x)
        np.minimum(x, self._hi, out=x)
        return x.astype(np.int8).reshape(1, NUM_FEATURES)

    def invoke_quantized(self, q: npt.NDArray[np.int8]) -> npt.NDArray[np.int8]:
        """Run the model on an already quantized input; the raw int8 output."""
        interpreter = self._interpreter
        try:
            interpreter.set_tensor(self._in_index, q)
            interpreter.invoke()
            raw: npt.NDArray[np.int8] = interpreter.get_tensor(self._out_index)
        except Exception as exc:
            raise ModelError(
                f"inference failed: {type(exc).__name__}: {exc}", reason="runtime-failed"
            ) from None
        return raw

    def classify(self, features: Sequence[float]) -> Arbitration:
        """Decide one feature vector (:data:`FEATURE_NAMES` order).

        Raises :class:`ModelError` when the vector has the wrong length or
        values, or the runtime fails.
        """
        if len(features) != NUM_FEATURES:
            raise ModelError(
                f"expected {NUM_FEATURES} features, got {len(features)}", reason="incompatible"
            )
        raw = self.invoke_quantized(self.quantize(features))[0].tolist()
        zero, scale = self._out_zero, self._out_scale
        probs = tuple((v - zero) * scale for v in raw)
        honest = probs[0]
        allow = honest >= self.allow_threshold
        # Denied: the most likely hostile class names the reason.
        best = probs.index(max(probs)) if allow else probs.index(max(probs[1:]), 1)
        return Arbitration(CLASSES[best], allow, 1.0 - honest, probs)

    def predict(self, features: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Probabilities for a batch ``[n, 16]`` (one invoke per row; for evaluation)."""
        x = np.asarray(features, dtype=np.float32).reshape(-1, NUM_FEATURES)
        out = np.empty((x.shape[0], len(CLASSES)), dtype=np.float32)
        for i, row in enumerate(x):
            raw = self.invoke_quantized(self.quantize(row.tolist()))
            out[i] = (raw[0].astype(np.float32) - self._out_zero) * self._out_scale
        return out


def load_arbitrator(
    path: str | Path | None = None,
    *,
    runtimes: Sequence[tuple[str, str]] = DEFAULT_RUNTIMES,
) -> Arbitrator:
    """Load a model file and its JSON sidecar (``path`` with ``.json``); the shipped one by default.

    Raises :class:`ModelError` when either file is missing, too large,
    corrupt, made for other features, or no runtime can run it.
    """
    model, meta = read_model(path)
    return Arbitrator(model, meta, runtimes=runtimes)


def load_arbitrator_or_none(
    path: str | Path | None = None,
    *,
    runtimes: Sequence[tuple[str, str]] = DEFAULT_RUNTIMES,
) -> Arbitrator | None:
    """:func:`load_arbitrator`, but log a warning and return None on failure.

    A gateway given None DENYs every MAYBE (fails closed).
    """
    try:
        return load_arbitrator(path, runtimes=runtimes)
    except ModelError as exc:
        log.warning("arbitrator unavailable (%s): %s; MAYBE decisions will DENY", exc.reason, exc)
        return None
