"""The exception tree of vsm_edge.models.

Decoding a filter from outside raises :class:`FilterFormatError`, loading or
running the arbitrator's model raises :class:`ModelError`: never a numpy,
hashlib or TFLite error.
"""

from __future__ import annotations

__all__ = [
    "FilterFormatError",
    "IncompatibleFilterError",
    "ModelError",
    "ModelUnavailableError",
    "ModelsError",
]


class ModelsError(Exception):
    """Base of every exception raised on purpose by vsm_edge.models."""


class FilterFormatError(ModelsError):
    """Bytes are not a well-formed filter of this version within the limits.

    The one error type of :meth:`BloomFilter.from_bytes`.
    """


class IncompatibleFilterError(ModelsError):
    """Two filters cannot be merged: different size, hash count or key."""


class ModelError(ModelsError):
    """The arbitrator's model cannot be used: no runtime, a corrupt or foreign file.

    ``reason`` is a short machine-readable word: ``"no-runtime"``,
    ``"corrupt"``, ``"incompatible"`` or ``"runtime-failed"``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelUnavailableError(ModelError):
    """A lazily loaded model could not be built (:class:`~vsm_edge.models.LazyArbitrator`).

    ``reason`` is the load error's. A gateway DENYs the MAYBE
    ``arbitrator-unavailable``, as it does with no arbitrator at all.
    """
