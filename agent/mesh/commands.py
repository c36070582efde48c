"""Remote commands: a node's operator commands another node's unit over the mesh.

Theory of operation
-------------------
The issuer publishes a *command* on ``vsm/{mesh}/cmd/{target}`` (kind
``cmd``, QoS 1, never retained), signed with its node key like every
envelope; the target answers with one *outcome* on ``vsm/{mesh}/cmdr/{issuer}``
(kind ``cmdr``). Bodies and limits are in docs/protocol.md §6; every field is
checked once, by :func:`decode_command` and :func:`decode_outcome`, into frozen
values; what does not decode is refused (counted ``cmd:malformed``,
``cmdr:malformed``) and dropped.

The target (:meth:`Commands.on_command`), in this order:

1. a command whose ``node`` is not this node: refused ``cmd:wrong-node``
   (nothing is answered: it was not for us);
2. an id it has seen (a redelivery, a replay): the outcome it gave then is
   sent again, never a second execution (the last :data:`RECENT_IDS` ids are
   kept; a command still running is answered when it ends, at most
   :data:`MAX_REDELIVERIES` times). An id is its first sender's: the same id
   from another node is refused ``cmd:id-reused`` and gets no answer (a
   member that saw a command on the broker learns nothing of its outcome and
   cannot grow what the target keeps for it);
3. S5's grants (:meth:`PolicyEngine.authorize_remote`): the key that signed the
   envelope must hold a grant for this node and ``unit.command``, else
   refused "not authorized" (answered every time, never remembered: a member
   without a grant cannot push the ids of granted commands out of the
   target's memory);
4. ``exp`` (the issuer's wall clock plus its timeout) against the target's
   wall clock: a command past it is refused "stale" (the issuer has already
   reported it timed out);
5. otherwise :meth:`Runtime.execute_command` runs it exactly as a local
   command (S1 checks, S5 policy, S2 damping, S3 budgets; a unit that
   confirms commands reports its outcome), with issuer ``mesh:{issuer}``.

The outcome is ``done`` (a unit that confirms commands carried it out),
``accepted`` (admitted to a unit that does not confirm), ``refused`` (with
the reason of the check that refused it) or ``failed`` (admitted, but the
unit reported a failure or did not confirm in time). The issuer
(:meth:`Commands.issue`) waits for it until its timeout, then reports
``timed-out``. A command to the node itself runs locally, without the mesh.

The target records its outcomes: the status section ``commands``
(:class:`CommandsStatus`: counters by outcome, the latest outcomes).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import trio

from vsm_edge.sync import TransportError

from .status import CommandRecordStatus, CommandsStatus

if TYPE_CHECKING:
    from ..vsm.event import Scalar
    from ..vsm.runtime import Runtime

__all__ = [
    "MAX_TIMEOUT_S",
    "STATUSES",
    "CommandError",
    "CommandOutcome",
    "CommandRequest",
    "Commands",
    "decode_command",
    "decode_outcome",
]

log = logging.getLogger("vsm_edge.agent.commands")

Status = Literal["accepted", "refused", "done", "failed", "timed-out"]
STATUSES: Final = ("accepted", "refused", "done", "failed", "timed-out")
#: An outcome that means the command was carried out (or admitted to a unit).
SUCCESS: Final = frozenset({"accepted", "done"})

ID_BYTES: Final = 16
MAX_NAME: Final = 64  # node, unit and command names
MAX_TEXT_VALUE: Final = 256  # a text command value
MAX_WHY: Final = 512
MAX_WALL_MS: Final = (1 << 48) - 1  # the HLC's wall field (docs/protocol.md §1)
MIN_TIMEOUT_S: Final = 0.1
MAX_TIMEOUT_S: Final = 300.0
DEFAULT_TIMEOUT_S: Final = 5.0
RECENT_IDS: Final = 1024  # outcomes remembered per target, for redeliveries
MAX_REDELIVERIES: Final = 4  # redeliveries of a running command answered when it ends
RECENT_SHOWN: Final = 16  # outcomes in the status section
MAX_PENDING: Final = 256  # commands an issuer waits for at once
MAX_RUNNING: Final = 16  # commands a target executes at once
QUEUE: Final = 64  # commands waiting to run
OUTBOX: Final = 256  # outcomes waiting to be sent

_NAME = re.compile(r"^[A-Za-z0-9_.:~-]{1,64}$")
_COMMAND_KEYS: Final = frozenset({"id", "node", "unit", "cmd", "value", "exp"})
_OUTCOME_KEYS: Final = frozenset({"id", "node", "status", "why", "at"})


class CommandError(ValueError):
    """A command or outcome body that breaks docs/protocol.md §6, or a bad request."""


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """A decoded, checked command (docs/protocol.md §6)."""

    id: bytes
    node: str
    unit: str
    cmd: str
    value: Scalar
    exp: int

    def to_cbor(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "node": self.node,
            "unit": self.unit,
            "cmd": self.cmd,
            "value": self.value,
            "exp": self.exp,
        }


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    """A decoded, checked outcome: what the target did with command ``id``."""

    id: bytes
    node: str
    status: Status
    why: str
    at: int

    def to_cbor(self) -> dict[str, Any]:
        return {"id": self.id, "node": self.node, "status": self.status, "why": self.why,
                "at": self.at}  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id.hex(), "node": self.node, "status": self.status, "why": self.why,
                "at": self.at}  # fmt: skip

    @property
    def ok(self) -> bool:
        return self.status in SUCCESS


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise CommandError(f"{what} must be 1-{MAX_NAME} characters of A-Z a-z 0-9 _ . : ~ -")
    return value


def check_value(value: object) -> Scalar:
    """A command value: null, a bool, a 64-bit integer, a finite float or short text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(1 << 63) <= value < 1 << 63:
            raise CommandError("value: an integer must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CommandError("value: a number must be finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT_VALUE:
            raise CommandError(f"value: text of at most {MAX_TEXT_VALUE} characters")
        return value
    raise CommandError("value must be null, a boolean, a number or text")


def _check_id(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        raise CommandError(f"id must be {ID_BYTES} bytes")
    return value


def _check_wall(value: object, what: str) -> int:
    if type(value) is not int or not 0 <= value <= MAX_WALL_MS:
        raise CommandError(f"{what} must be wall-clock ms in [0, 2^48)")
    return value


def decode_command(body: object) -> CommandRequest:
    """The command in ``body`` (a decoded CBOR item); raises :class:`CommandError`."""
    if not isinstance(body, dict) or set(body) != _COMMAND_KEYS:
        raise CommandError(f"a command is a map of exactly {sorted(_COMMAND_KEYS)}")
    return CommandRequest(
        _check_id(body["id"]),
        check_name(body["node"], "node"),
        check_name(body["unit"], "unit"),
        check_name(body["cmd"], "cmd"),
        check_value(body["value"]),
        _check_wall(body["exp"], "exp"),
    )


def decode_outcome(body: object) -> CommandOutcome:
    """The outcome in ``body`` (a decoded CBOR item); raises :class:`CommandError`.

    ``timed-out`` is the issuer's own verdict: a target never sends it.
    """
    if not isinstance(body, dict) or set(body) != _OUTCOME_KEYS:
        raise CommandError(f"an outcome is a map of exactly {sorted(_OUTCOME_KEYS)}")
    status, why = body["status"], body["why"]
    if status not in ("accepted", "refused", "done", "failed"):
        raise CommandError("status must be accepted, refused, done or failed")
    if not isinstance(why, str) or len(why) > MAX_WHY:
        raise CommandError(f"why must be text of at most {MAX_WHY} characters")
    return CommandOutcome(
        _check_id(body["id"]),
        check_name(body["node"], "node"),
        status,
        why,
        _check_wall(body["at"], "at"),
    )


# -- the service -------------------------------------------------------------------------


Publish = Callable[[str, dict[str, Any], str], Awaitable[None]]
"""``publish(channel, body, to)``: the replicator's ``publish_app`` ("cmd" / "cmdr")."""


@dataclass(slots=True)
class _Pending:
    target: str
    done: trio.Event
    outcome: CommandOutcome | None = None


class Commands:
    """Remote commands of one node, both roles (module doc).

    ``publish`` sends a body on a channel to a node; ``authorize(kid, node,
    target)`` is S5's grant check; ``wall_clock`` gives ms. Start :meth:`run`
    in a nursery; hand :meth:`on_command` and :meth:`on_outcome` the admitted
    ``cmd`` and ``cmdr`` bodies.
    """

    def __init__(
        self,
        node: str,
        runtime: Runtime | None,
        publish: Publish,
        *,
        wall_clock: Callable[[], int],
        randbytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.node = node
        self.runtime = runtime
        self.publish = publish
        self.wall_clock = wall_clock
        self.randbytes = randbytes
        # id -> (its first sender, its outcome (None while it runs)): a
        # redelivery from that sender is answered from here
        self._seen: OrderedDict[bytes, tuple[str, CommandOutcome | None]] = OrderedDict()
        self._waiting: Counter[bytes] = Counter()  # ids running -> redeliveries meanwhile
        self._pending: dict[bytes, _Pending] = {}
        self._executed: Counter[str] = Counter()
        self._issued: Counter[str] = Counter()
        self._refused: Counter[str] = Counter()
        self._duplicates = 0
        self._recent: deque[CommandRecordStatus] = deque(maxlen=RECENT_SHOWN)
        # Outcomes to send from the synchronous handlers (refusals, redeliveries);
        # buffered, so that one decided before run() starts is sent once it does.
        self._outbox_send, self._outbox_recv = trio.open_memory_channel[tuple[CommandOutcome, str]](
            OUTBOX
        )
        self._queue_send, self._queue_recv = trio.open_memory_channel[
            tuple[str, bytes, CommandRequest]
        ](QUEUE)

    # -- issuer --------------------------------------------------------------------------

    async def issue(
        self,
        node: str,
        unit: str,
        cmd: str,
        value: Scalar = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        issuer: str = "operator",
    ) -> CommandOutcome:
        """Command ``unit.cmd`` on ``node`` and wait for its outcome (at most ``timeout_s``).

        On this node it runs locally, as ``issuer``. Raises :class:`CommandError` for a bad
        argument or too many commands in flight; every other end is an
        outcome (``timed-out`` when none arrived, ``failed`` when the broker
        could not take the command).
        """
        check_name(node, "node")
        check_name(unit, "unit")
        check_name(cmd, "cmd")
        value = check_value(value)
        if not (isinstance(timeout_s, int | float) and MIN_TIMEOUT_S <= timeout_s <= MAX_TIMEOUT_S):
            raise CommandError(f"timeout must be in [{MIN_TIMEOUT_S:g}, {MAX_TIMEOUT_S:g}] s")
        ident = self.randbytes(ID_BYTES)
        if node == self.node:
            outcome = await self._execute(ident, unit, cmd, value, issuer=issuer)
            self._record(issuer, f"{unit}.{cmd}", outcome)
            self._executed[outcome.status] += 1
            self._issued[outcome.status] += 1
            return outcome
        if len(self._pending) >= MAX_PENDING:
            raise CommandError(f"{MAX_PENDING} commands are waiting for an outcome; retry later")
        exp = min(MAX_WALL_MS, self.wall_clock() + math.ceil(timeout_s * 1000))
        request = CommandRequest(ident, node, unit, cmd, value, exp)
        pending = self._pending[ident] = _Pending(node, trio.Event())
        try:
            try:
                await self.publish("cmd", request.to_cbor(), node)
            except TransportError as exc:
                outcome = self._local_outcome(ident, node, "failed", f"not sent: {exc}")
            else:
                with trio.move_on_after(timeout_s):
                    await pending.done.wait()
                outcome = pending.outcome or self._local_outcome(
                    ident, node, "timed-out", f"no outcome from {node} within {timeout_s:g} s"
                )
        finally:
            del self._pending[ident]
        self._issued[outcome.status] += 1
        self._record(self.node, f"{node}:{unit}.{cmd}", outcome)
        return outcome

    def on_outcome(self, sender: str, body: Any) -> str | None:
        """An admitted ``cmdr`` body from ``sender``: a refusal reason, or None."""
        try:
            outcome = decode_outcome(body)
        except CommandError:
            return self._refuse("cmdr:malformed")
        pending = self._pending.get(outcome.id)
        if pending is None:
            return self._refuse("cmdr:unexpected")  # late (timed out) or never ours
        if outcome.node != sender or pending.target != sender:
            return self._refuse("cmdr:wrong-node")
        if pending.outcome is None:
            pending.outcome = outcome
            pending.done.set()
        return None

    # -- target --------------------------------------------------------------------------

    def on_command(self, sender: str, kid: bytes, body: Any) -> str | None:
        """An admitted ``cmd`` body from ``sender`` (its key ``kid``): a refusal reason
        (a message that gets no outcome), or None (it will get one)."""
        try:
            request = decode_command(body)
        except CommandError:
            return self._refuse("cmd:malformed")
        if request.node != self.node:
            return self._refuse("cmd:wrong-node")
        if self.runtime is None:
            return self._refuse("cmd:not-a-target")
        if request.id in self._seen:
            first, known = self._seen[request.id]
            if sender != first:
                return self._refuse("cmd:id-reused")
            self._duplicates += 1
            if known is None:  # still running: answered when it ends
                if self._waiting[request.id] < MAX_REDELIVERIES:
                    self._waiting[request.id] += 1
            else:
                self._send_soon(known, sender)
            return None
        target = f"{request.unit}.{request.cmd}"
        why = self.runtime.s5.authorize_remote(kid, self.node, target)
        if why is None and self.wall_clock() > request.exp:
            why = "stale"
        if why is not None:
            outcome = self._local_outcome(request.id, self.node, "refused", why)
            if why == "stale":  # by a granted key: remembered like an execution
                self._remember(request.id, sender, outcome)
            self._executed["refused"] += 1
            self._record(sender, target, outcome)
            self._send_soon(outcome, sender)
            return None
        try:
            self._queue_send.send_nowait((sender, kid, request))
        except trio.WouldBlock:
            return self._refuse("cmd:busy")  # not remembered: a redelivery may run it
        self._remember(request.id, sender, None)
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Execute queued commands (at most :data:`MAX_RUNNING` at once) and send outcomes."""
        limiter = trio.CapacityLimiter(MAX_RUNNING)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._sender)
            task_status.started()
            async for sender, _kid, request in self._queue_recv:
                await limiter.acquire_on_behalf_of(request.id)
                nursery.start_soon(self._run_one, limiter, sender, request)

    async def _run_one(
        self, limiter: trio.CapacityLimiter, sender: str, request: CommandRequest
    ) -> None:
        try:
            outcome = await self._execute(
                request.id, request.unit, request.cmd, request.value, issuer=f"mesh:{sender}"
            )
        finally:
            limiter.release_on_behalf_of(request.id)
        self._remember(request.id, sender, outcome)
        self._executed[outcome.status] += 1
        self._record(sender, f"{request.unit}.{request.cmd}", outcome)
        for _ in range(1 + self._waiting.pop(request.id, 0)):
            await self._send(outcome, sender)

    async def _execute(
        self, ident: bytes, unit: str, cmd: str, value: Scalar, *, issuer: str
    ) -> CommandOutcome:
        runtime = self.runtime
        if runtime is None:
            return self._local_outcome(ident, self.node, "refused", f"{self.node} has no units")
        result = await runtime.execute_command(unit, cmd, value, issuer=issuer)
        status: Status
        if result.accepted:
            confirms = runtime.confirms_commands(unit)
            status = "done" if confirms else "accepted"
        else:
            status = "failed" if result.command is not None else "refused"
        return self._local_outcome(ident, self.node, status, result.reason)

    def _send_soon(self, outcome: CommandOutcome, to: str) -> None:
        try:
            self._outbox_send.send_nowait((outcome, to))
        except trio.WouldBlock:
            self._refuse("cmdr:not-sent")  # the issuer reports timed-out

    async def _sender(self) -> None:
        async for outcome, to in self._outbox_recv:
            await self._send(outcome, to)

    async def _send(self, outcome: CommandOutcome, to: str) -> None:
        delay = 0.1
        for _ in range(5):  # a lost outcome: the issuer reports timed-out
            try:
                await self.publish("cmdr", outcome.to_cbor(), to)
            except TransportError:
                await trio.sleep(delay)
                delay *= 2
            else:
                return
        self._refuse("cmdr:not-sent")
        log.warning("could not send the outcome of command %s to %s", outcome.id.hex(), to)

    # -- records -------------------------------------------------------------------------

    def _local_outcome(self, ident: bytes, node: str, status: Status, why: str) -> CommandOutcome:
        return CommandOutcome(ident, node, status, why[:MAX_WHY], self.wall_clock())

    def _remember(self, ident: bytes, sender: str, outcome: CommandOutcome | None) -> None:
        self._seen[ident] = (sender, outcome)
        self._seen.move_to_end(ident)
        while len(self._seen) > RECENT_IDS:
            self._seen.popitem(last=False)

    def _record(self, issuer: str, target: str, outcome: CommandOutcome) -> None:
        self._recent.append(
            CommandRecordStatus(
                outcome.id.hex(),
                issuer,
                outcome.node,
                target,
                outcome.status,
                outcome.why,
                outcome.at,
            )
        )
        log.info("command %s %s from %s: %s%s", outcome.id.hex()[:8], target, issuer,
                 outcome.status, f" ({outcome.why})" if outcome.why else "")  # fmt: skip

    def _refuse(self, reason: str) -> str:
        self._refused[reason] += 1
        return reason

    def status(self) -> CommandsStatus:
        return CommandsStatus(
            executed=dict(self._executed),
            issued=dict(self._issued),
            duplicates=self._duplicates,
            refused=dict(self._refused),
            recent=tuple(self._recent),
        )
