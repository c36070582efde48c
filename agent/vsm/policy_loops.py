"""S5's loops: arbitration between S3 and S4, safe mode, and signed policy documents.

S5 takes anomalies, patterns, audits and policy events from its bus channel
(their categories are S5's variety). When S4 calls a source anomalous while
S3 is attenuating it, S5 arbitrates (:meth:`~.s5.PolicyEngine.arbitrate`): if
S4 wins, the source is exempt from attenuation for ``EXEMPT_S``. Safe mode is
evaluated every ``SAFE_MODE_TICK_S`` and after each batch the algedonic
channel delivers: entering it halves S3's budgets, leaving it restores them
and raises pleasure. The decisions are :class:`~.s5.PolicyEngine`'s; this part
carries them out.
"""

from __future__ import annotations

import trio

from .._errors import PolicyError
from .algedonic import PLEASURE
from .event import HIGH, Event, Subsystem
from .kernel import Kernel
from .s5 import Recommendation

__all__ = ["EXEMPT_S", "SAFE_MODE_TICK_S", "PolicyLoops"]

EXEMPT_S = 10.0
SAFE_MODE_TICK_S = 0.5


class PolicyLoops:
    """S5 at work: its bus loop, arbitration, safe mode, and policy documents."""

    def __init__(self, kernel: Kernel) -> None:
        self._kernel = kernel

    async def subsystem(self, nursery: trio.Nursery) -> None:
        self._kernel.supervise(nursery, "s5.bus", "s5", self._s5_loop)
        self._kernel.supervise(nursery, "s5.safe-mode", "s5", self._safe_mode_loop)

    def evaluate_safe_mode(self) -> None:
        """Enter or leave safe mode as S5's pain level says (halving or restoring S3's budgets)."""
        k = self._kernel
        changed = k.s5.evaluate(trio.current_time())
        if changed is True:
            k.s3.set_scale(0.5)
            k.response("safe-mode", "enter")
            k.publish(
                k.bus.event(
                    "policy", "s5", "safe-mode", True, category="safe-mode:on", priority=HIGH
                )
            )
        elif changed is False:
            k.s3.set_scale(1.0)
            k.publish(k.bus.event("policy", "s5", "safe-mode", False, category="safe-mode:off"))
            k.raise_signal("s5.safe-mode", 0.5, "left safe mode", valence=PLEASURE)

    def accept_policy(self, document: bytes, *, raise_errors: bool = True) -> bool:
        """Install an admin-signed policy document; PolicyError (counted) when refused."""
        k = self._kernel
        try:
            policy = k.s5.accept_policy(document)
        except PolicyError as exc:
            k.raise_signal("s5.policy", 0.4, f"policy refused: {exc}")
            if raise_errors:
                raise
            return False
        k.publish(
            k.bus.event(
                "policy", "s5", "policy", policy.version, category=f"policy:v{policy.version}"
            )
        )
        return True

    async def _s5_loop(self) -> None:
        channel = self._kernel.bus.channels[Subsystem.S5]
        meter = self._kernel.s4.variety[Subsystem.S5]
        while True:
            batch = await channel.receive_batch()
            now = trio.current_time()
            for event in batch:
                meter.add(event.category, now)
                if event.kind == "anomaly":
                    self._arbitrate(event, now)

    def _arbitrate(self, event: Event, now: float) -> None:
        """S4 says a source is anomalous; if S3 is attenuating it, S5 decides who wins."""
        k = self._kernel
        if not k.s3.attenuating:
            return
        source = event.name.split(".", 1)[0]
        z = float(event.value) if isinstance(event.value, int | float) else 0.0
        decision = k.s5.arbitrate(
            Recommendation("s3", source, "attenuate", k.s3.load_share(source)),
            Recommendation("s4", source, "watch", z),
        )
        k.response("arbitrate", f"{source}:{decision.winner.source}")
        if decision.winner.source == "s4":
            k.s3.exempt_source(source, now + EXEMPT_S)

    async def _safe_mode_loop(self) -> None:
        while True:
            await trio.sleep(SAFE_MODE_TICK_S)
            self.evaluate_safe_mode()
