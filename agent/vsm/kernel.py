"""What the parts of the runtime share: the bus, the clock, S2..S5 and five small services.

:class:`~.runtime.Runtime` is a composition of parts, one per subsystem
(:mod:`.operations` for S1, :mod:`.coordination_loops`, :mod:`.control_loops`,
:mod:`.intelligence_loops`, :mod:`.policy_loops`) and one for the algedonic
channel (:mod:`.alarms`). Each part receives a :class:`Kernel` and what only
it needs (S3's audit also reads S1's unit records); none knows the runtime.

The kernel's services are what every part does when it regulates:

* :meth:`Kernel.publish` — an event on the bus; a full ``block`` channel
  refuses it (counted in the channel's statistics), never the caller;
* :meth:`Kernel.response` — a regulatory response (attenuate, damp, refuse...):
  counted in S4's response variety and published for S3;
* :meth:`Kernel.failure` — a failure in one subsystem, for the cascade detector;
* :meth:`Kernel.pattern` — a detected pattern: logged, published to S5 and, for
  the patterns of :data:`PATTERN_PAIN`, raised as pain;
* :meth:`Kernel.supervise` — a loop of a part, restarted by the supervisor.

S3 and S4 take the start time, so the runtime makes them anew when it starts
(:meth:`Kernel.start`); a part reads ``kernel.s3`` and ``kernel.s4`` when it
uses them rather than keeping them, except for the bound methods of the hot
path, which :class:`~.operations.Operations` binds again at the start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio

from vsm_edge.sync import HybridLogicalClock

from .algedonic import Alarm
from .bus import EventBus
from .event import HIGH, Event, Subsystem
from .patterns import CascadeDetector, Pattern, PatternLog
from .s2 import Coordination
from .s3 import Control
from .s4 import Intelligence
from .s5 import PolicyEngine
from .supervisor import Supervisor

__all__ = ["PATTERN_PAIN", "Kernel", "RaiseSignal"]

# the pain each detected pattern raises (patterns not listed raise none)
PATTERN_PAIN = {
    "variety-overflow": 0.6,
    "variety-warning": 0.3,
    "oscillation": 0.5,
    "cascade": 0.9,
    "clock-skew": 0.5,
}

# raise_signal(source, intensity, reason, *, valence=PAIN): the runtime's own signature
RaiseSignal = Callable[..., Alarm | None]


class Kernel:
    """The bus, the HLC, the supervisor, S2..S5, the pattern log, and the services above.

    ``raise_signal`` is the runtime's algedonic entry (the alarms part, which
    itself uses this kernel): patterns and crashes raise pain through it.
    """

    def __init__(
        self,
        *,
        bus: EventBus,
        hlc: HybridLogicalClock,
        supervisor: Supervisor,
        s2: Coordination,
        s3: Control,
        s4: Intelligence,
        s5: PolicyEngine,
        cascade: CascadeDetector,
        raise_signal: RaiseSignal,
    ) -> None:
        self.bus = bus
        self.hlc = hlc
        self.supervisor = supervisor
        self.s2 = s2
        self.s3 = s3
        self.s4 = s4
        self.s5 = s5
        self.patterns = PatternLog()
        self.raise_signal = raise_signal
        self._cascade = cascade

    def start(self, s3: Control, s4: Intelligence) -> None:
        """The runtime starts: S3 and S4, made with the start time, replace the placeholders."""
        self.s3 = s3
        self.s4 = s4

    def publish(self, event: Event) -> None:
        # a full block-policy channel refuses: counted in the channel's statistics
        with contextlib.suppress(trio.WouldBlock):
            self.bus.publish(event)

    def response(self, action: str, subject: str) -> None:
        """A regulatory response: variety the system deploys (S4), and an event for S3."""
        self.s4.responses.add(action, trio.current_time())
        self.publish(
            self.bus.event("response", "s3", action, subject, category=f"response:{action}")
        )

    def failure(self, subsystem: Subsystem, detail: str) -> None:
        """A failure in ``subsystem``: reported as a pattern when it completes a cascade."""
        found = self._cascade.failure(subsystem, detail, trio.current_time())
        if found is not None:
            self.pattern(found)

    def pattern(self, pattern: Pattern, *, signal: bool = True) -> None:
        """Log ``pattern``, publish it to S5 and (``signal``) raise its pain, if it has one."""
        self.patterns.add(pattern)
        self.publish(
            self.bus.event(
                "pattern",
                "s4",
                pattern.name,
                pattern.detail,
                category=f"pattern:{pattern.name}",
                priority=HIGH,
            )
        )
        if signal and pattern.name in PATTERN_PAIN:
            self.raise_signal(f"pattern.{pattern.name}", PATTERN_PAIN[pattern.name], pattern.detail)

    def supervise(
        self, nursery: trio.Nursery, name: str, group: str, fn: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``fn`` in ``nursery`` under the supervisor (restarted with backoff if it raises)."""
        nursery.start_soon(self.supervisor.supervise, name, group, fn)
