"""Who keeps a contested DNS-SD instance name: the run stamp and the tie-break.

No I/O, no clock and no randomness here: the adapter passes the start time and
the nonce in.

Theory of operation
-------------------
Two processes may advertise the same instance ``<node>@<mesh>`` (a copied
config, a node started twice). Probing before registration (RFC 6762 §8.1)
does not reliably catch it: python-zeroconf sends its probes as QU questions,
so the defender answers by unicast to port 5353, and with ``SO_REUSEPORT``
several sockets on one host share that port and the kernel hands the unicast
datagram to *one* of them, chosen by a hash of the addresses; the prober may
never see it. And once both are registered, their PTR/SRV records are
identical, so nothing in zeroconf notices a conflict afterwards.

So every run of a node carries a :class:`RunStamp` in its TXT record: the
wall-clock time it started advertising (``t``) and a random nonce (``r``).
A TXT record for *our* instance name with a different stamp is another run
claiming the name, and :func:`resolve_name_claim` decides, the same way on
both sides, who keeps it: the older start time wins, equal times go to the
smaller nonce. Both sides compare the same two values, so exactly one of them
yields, whatever their clocks say. A claim without a stamp comes from software
that does not know this rule and will not yield, so we do.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ._errors import TxtRecordError

__all__ = [
    "MAX_STARTED_MS",
    "RUN_NONCE_BYTES",
    "NameClaim",
    "RunStamp",
    "resolve_name_claim",
]

RUN_NONCE_BYTES: Final = 8
# 48 bits of milliseconds (as the HLC's wall part): year 10889, and at most
# 15 decimal digits in the TXT record.
MAX_STARTED_MS: Final = 2**48 - 1


@dataclass(frozen=True, slots=True, order=True)
class RunStamp:
    """One run of a node: when it started advertising, and a random nonce.

    ``started_ms`` is Unix time in milliseconds (0..2**48-1); ``nonce`` is
    exactly :data:`RUN_NONCE_BYTES` random bytes, fresh for every run. The
    ordering (start time, then nonce as an unsigned big-endian number) is the
    tie-break: the smaller stamp keeps a contested name. Raises
    :class:`TxtRecordError` for values out of range.
    """

    started_ms: int
    nonce: bytes

    def __post_init__(self) -> None:
        if (
            isinstance(self.started_ms, bool)
            or not isinstance(self.started_ms, int)
            or not 0 <= self.started_ms <= MAX_STARTED_MS
        ):
            raise TxtRecordError(
                f"run start time must be an integer in 0..{MAX_STARTED_MS} ms, "
                f"got {self.started_ms!r}"
            )
        if not isinstance(self.nonce, bytes) or len(self.nonce) != RUN_NONCE_BYTES:
            raise TxtRecordError(f"run nonce must be exactly {RUN_NONCE_BYTES} bytes")


class NameClaim(enum.Enum):
    """What a record for our own instance name means for us."""

    OURS = "ours"  # our own record, echoed back: no conflict
    KEEP = "keep"  # another run claims the name and loses: we keep it (and defend it)
    YIELD = "yield"  # another run claims the name and wins: we must give it up


def resolve_name_claim(own: RunStamp, other: RunStamp | None) -> NameClaim:
    """Decide a claim on our instance name by another record's run stamp.

    ``other`` is the stamp in a TXT record found under our own instance name
    (None when that record has no stamp). The older start time wins; equal
    start times go to the smaller nonce; an unstamped claim wins. Pure and
    symmetric: two runs comparing each other's stamps reach opposite answers.
    """
    if other is None:
        return NameClaim.YIELD
    if other == own:
        return NameClaim.OURS
    return NameClaim.YIELD if other < own else NameClaim.KEEP
