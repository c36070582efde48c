"""The ``vsm-edge`` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from .._errors import AgentError, StatusClientError
from ..config.loader import load_config
from ..mesh.status import BrokerStatus, GatewayStatus, StoreStatus
from ..vsm.status import SectionError
from ..web.client import DEFAULT_ENDPOINT, StatusClient

if TYPE_CHECKING:
    from ..mesh.status import NodeStatus
    from ..vsm.status import AlarmStatus, ChannelStatus, UnitStatus, VsmStatus

# The module that adds each command, so ``vsm-edge run`` imports only what a
# running agent needs: the aggregator and its dashboard, the demo and the admin
# tools (numpy, prometheus_client...) cost an agent RSS it would never use.
_COMMAND_GROUPS: Final = {
    "keygen": "run",
    "init": "init",
    "run": "run",
    "demo": "demo",
    "aggregate": "aggregate",
    "status": "status",
    "alarm": "status",
    "command": "status",
    "zone": "admin",
    "policy": "admin",
    "simulate-device": "simulate",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``vsm-edge`` parser; with a known ``command``, only that command's group.

    Every command is added (and its module imported) when ``command`` is None
    or unknown, so ``--help`` and usage errors list them all.
    """
    parser = argparse.ArgumentParser(prog="vsm-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    only = _COMMAND_GROUPS.get(command or "")
    if only in (None, "run"):
        from .run import add_run_commands

        add_run_commands(sub)
    if only in (None, "init"):
        from .init import add_init_command

        add_init_command(sub)
    if only in (None, "demo"):
        from .demo import add_demo_command

        add_demo_command(sub)
    if only in (None, "aggregate"):
        from .aggregate import add_aggregate_command

        add_aggregate_command(sub)
    if only in (None, "status"):
        add_status_commands(sub)
    if only in (None, "admin"):
        from .admin import add_admin_commands

        add_admin_commands(sub)
    if only in (None, "simulate"):
        sim = sub.add_parser(
            "simulate-device",
            help="a firmware simulator on a pseudo-terminal (see firmware-bridge/PROTOCOL.md)",
            add_help=False,
        )
        sim.add_argument("args", nargs=argparse.REMAINDER)
        sim.set_defaults(handler=cmd_simulate_device)
    return parser


def cmd_simulate_device(args: argparse.Namespace) -> int:
    from vsm_edge.bridge.simulator import main as simulator_main

    return simulator_main(args.args)


def add_status_commands(sub: Any) -> None:
    """Add ``status`` and ``alarm raise|ack`` to a subparsers object."""
    status = sub.add_parser("status", help="a running agent's VSM, alarms and peers")
    status.add_argument("--json", action="store_true", help="print the status document as JSON")
    _endpoint(status)
    status.set_defaults(handler=cmd_status)
    alarm = sub.add_parser("alarm", help="raise or acknowledge an operator alarm")
    alarm_sub = alarm.add_subparsers(dest="alarm_command", required=True, metavar="ACTION")
    raise_ = alarm_sub.add_parser("raise", help="raise an operator pain signal")
    raise_.add_argument("--intensity", type=float, required=True, help="0..1 (>= 0.95 is critical)")
    raise_.add_argument("--source", required=True, help="a name, e.g. estop")
    raise_.add_argument("--reason", default="", help="free text")
    _endpoint(raise_)
    raise_.set_defaults(handler=cmd_alarm_raise)
    ack = alarm_sub.add_parser("ack", help="acknowledge an alarm")
    ack.add_argument("id", help="alarm id, or any prefix of it that no other alarm shares")
    _endpoint(ack)
    ack.set_defaults(handler=cmd_alarm_ack)
    command = sub.add_parser(
        "command",
        help="command a unit of any node of the mesh, through the local agent",
        description="Send UNIT's COMMAND to NODE (signed with the local agent's key; "
        "NODE may be the local node) and print its outcome: done, accepted, refused, "
        "failed or timed-out. Exit code 0 only for done or accepted.",
    )
    command.add_argument("node", help="the target node id")
    command.add_argument("unit", help="the unit on that node")
    command.add_argument("cmd", metavar="command", help="the unit's command")
    command.add_argument(
        "value", nargs="?", help="a number, true/false, null or text (default: none)"
    )
    command.add_argument("--json", action="store_true", help="print the outcome as JSON")
    command.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the outcome (default 5)"
    )
    _endpoint(command)
    command.set_defaults(handler=cmd_command)


def _endpoint(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--endpoint",
        help=f"the agent's status endpoint (default {DEFAULT_ENDPOINT})",
    )
    where.add_argument(
        "--config",
        metavar="NODE_TOML",
        help="find the endpoint from the agent's config (and data_dir/status.port for port 0)",
    )


def endpoint_of(args: argparse.Namespace) -> str:
    """The endpoint named by ``--endpoint`` or ``--config`` (default: the default port)."""
    if getattr(args, "endpoint", None):
        return str(args.endpoint)
    if getattr(args, "config", None):
        config = load_config(args.config)
        port = config.status.port
        if port == 0:
            port_file = config.node.data_dir / "status.port"
            try:
                port = int(port_file.read_text().strip())
            except (OSError, ValueError):
                raise StatusClientError(
                    f"the agent uses an ephemeral port and {port_file} is missing or unreadable"
                    " (is it running?)"
                ) from None
        host = f"[{config.status.host}]" if ":" in config.status.host else config.status.host
        return f"http://{host}:{port}"
    return DEFAULT_ENDPOINT


def cmd_status(args: argparse.Namespace) -> int:
    doc = StatusClient(endpoint_of(args)).status()
    if args.json:  # the document as the agent served it (a newer agent's keys too)
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        from ..mesh.status import NodeStatus

        print(format_status(NodeStatus.from_json(doc)))  # StatusError: a malformed document
    return 0


def cmd_alarm_raise(args: argparse.Namespace) -> int:
    if not 0.0 <= args.intensity <= 1.0:
        print("vsm-edge alarm raise: --intensity must be in [0, 1]", file=sys.stderr)
        return 2
    doc = StatusClient(endpoint_of(args)).raise_alarm(args.intensity, args.source, args.reason)
    if doc.get("delivered"):
        print(doc["id"])
    else:
        print(f"not delivered: {doc.get('reason', '')}", file=sys.stderr)
    return 0


def cmd_alarm_ack(args: argparse.Namespace) -> int:
    doc = StatusClient(endpoint_of(args)).ack_alarm(args.id)
    print(f"acknowledged {doc['id']}")
    return 0


def command_value(text: str | None) -> Any:
    """A command value from the command line: a JSON scalar (``42``, ``true``,
    ``null``) or, failing that, the text itself."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, bool | int | float | str) else text


def cmd_command(args: argparse.Namespace) -> int:
    if not 0.1 <= args.timeout <= 300:
        print("vsm-edge command: --timeout must be in [0.1, 300] seconds", file=sys.stderr)
        return 2
    client = StatusClient(endpoint_of(args))
    doc = client.command(
        args.node, args.unit, args.cmd, command_value(args.value), timeout_s=args.timeout
    )
    status = doc["status"]
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        why = doc.get("why") or ""
        print(f"{status}: {args.node} {args.unit}.{args.cmd}" + (f": {why}" if why else ""))
    return 0 if status in ("done", "accepted") else 1


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return fmt.format(value)


def format_status(status: NodeStatus) -> str:
    """The human view of a status: subsystems, alarms, peers, the gateway."""
    vsm = status.vsm
    node = vsm.node
    lines = [
        f"node {node.id}  mesh {node.mesh}  zone {node.zone}  "
        f"uptime {_num(node.uptime_s, '{:.1f}')} s  safe mode "
        f"{'ON' if node.safe_mode else 'off'}  hlc {node.hlc}",
        *_format_broker(status.broker),
        *_format_store(status.store),
        "",
        f"{'SUBSYSTEM':<10} {'TOKENS':>10} {'CAPACITY':>9} {'REFILL/S':>9} {'VARIETY':>8} "
        f"{'RECEIVED':>9} {'DROPPED':>8}",
    ]
    for name, variety, channel in _subsystems(vsm):
        budget = vsm.s3.budgets.get(name)
        lines.append(
            f"{name:<10} {_num(budget and budget.tokens, '{:.1f}'):>10} "
            f"{_num(budget and budget.capacity, '{:g}'):>9} "
            f"{_num(budget and budget.refill_per_s, '{:g}'):>9} "
            f"{_num(variety):>8} {channel.received if channel else '-':>9} "
            f"{channel.dropped if channel else '-':>8}"
        )
    s4, att = vsm.s4, vsm.s3.attenuation
    lines += [
        "",
        f"variety: env {_num(s4.environment_bits)} bits, system "
        f"{_num(s4.system_bits)} bits, ratio {_num(s4.variety_ratio)}",
        f"attenuation: {'ACTIVE' if att.active else 'off'}, aggregated "
        f"{sum(att.aggregated.values())}, dropped {sum(att.dropped.values())}",
    ]
    lines += _format_units(vsm.s1.units)
    lines += _format_alarms(vsm.algedonic.alarms, vsm.algedonic.active)
    lines += ["", f"PEERS ({len(vsm.peers)})"]
    for p in vsm.peers:
        lines.append(
            f"{p.node:<16} health {_num(p.health)}  "
            f"seen {_num(p.last_seen_s, '{:.1f}')} s ago"
            f"{'  STALE' if p.stale else ''}  alarms {len(p.alarms)}"
        )
    if status.gateway is not None:
        lines += ["", *_format_gateway(status.gateway)]
    return "\n".join(lines)


def _subsystems(vsm: VsmStatus) -> list[tuple[str, float | None, ChannelStatus | None]]:
    """(name, variety bits, bus channel) of S1..S5."""
    return [
        ("s1", vsm.s1.variety_bits, vsm.s1.channel),
        ("s2", vsm.s2.variety_bits, vsm.s2.channel),
        ("s3", vsm.s3.variety_bits, vsm.s3.channel),
        ("s4", vsm.s4.variety_bits, vsm.s4.channel),
        ("s5", vsm.s5.variety_bits, vsm.s5.channel),
    ]


def _format_units(units: Mapping[str, UnitStatus]) -> list[str]:
    if not units:
        return []
    lines = ["", f"{'UNIT':<16} {'STATE':<11} {'RESTARTS':>8} {'EMITTED':>9} {'ATTENUATED':>10}"]
    for name, u in units.items():
        lines.append(
            f"{name:<16} {u.task.state if u.task else '-':<11} "
            f"{u.task.restarts if u.task else 0:>8} {u.emitted:>9} {u.attenuated:>10}"
        )
    return lines


ALARMS_SHOWN = 20


def _format_alarms(alarms: Sequence[AlarmStatus], total: int) -> list[str]:
    """The newest active alarms, at most ``ALARMS_SHOWN``; the header says when it cuts.

    ``total`` is the node's count of active alarms (the document lists the latest 64).
    """
    active = [a for a in alarms if not a.acked]
    total = max(total, len(active))
    shown = active[:ALARMS_SHOWN]
    cut = f", showing {len(shown)}" if len(shown) < total else ""
    lines = ["", f"ALARMS ({total} active{cut})"]
    if active:
        lines.append(f"{'ID':<12} {'NODE':<10} {'SOURCE':<28} {'INTENSITY':>9} {'AGE S':>8}  FLAGS")
    for a in shown:
        marks = (("critical", a.critical), ("remote", a.remote), ("escalated", a.escalated))
        flags = ",".join(f for f, on in marks if on)
        lines.append(
            f"{a.id[:12]:<12} {a.node[:10]:<10} {a.source[:28]:<28} {_num(a.intensity):>9} "
            f"{_num(a.age_s, '{:.1f}'):>8}  {flags}"
        )
    if cut:
        lines.append(
            f"({total - len(shown)} more not shown, newest first; "
            "`vsm-edge status --json` lists the latest 64 alarms)"
        )
    return lines


def _format_broker(broker: BrokerStatus | SectionError | None) -> list[str]:
    """One line: the broker connection, and while it is down, why and what comes next."""
    if broker is None:
        return []
    if isinstance(broker, SectionError):
        return [f"broker: unavailable: {broker.error}"]
    since = ""
    if broker.since_ms is not None:
        since = time.strftime(" since %H:%M:%SZ", time.gmtime(broker.since_ms / 1000))
    head = f"broker {broker.address or '-'}"
    if broker.state == "connected":
        return [
            f"{head}  connected{since} (MQTT {broker.protocol or '?'}), "
            f"reconnects {broker.reconnects}"
        ]
    next_in = _num(broker.next_attempt_in_s, "{:.1f}")
    retry = f"attempt {broker.attempts}, next in {next_in} s"
    if broker.state == "refused":
        return [f"{head}  REFUSED by the broker: {broker.refused}{since} ({retry})"]
    if broker.state == "reconnecting":
        return [f"{head}  RECONNECTING{since} ({retry}): {broker.last_error or '?'}"]
    return [f"{head}  {broker.state}{since}"]


def _format_store(store: StoreStatus | SectionError | None) -> list[str]:
    """One line when the store is faulted (local writes held), else nothing."""
    if not isinstance(store, StoreStatus) or store.ok:
        return []
    fault = store.fault
    return [
        f"STORE FAULT ({fault.cause if fault else '?'}) for "
        f"{_num(fault.for_s if fault else None, '{:.1f}')} s "
        f"in {fault.operation if fault else '?'}: local writes held "
        f"({store.readings_held} readings), retrying; {fault.message if fault else ''}"
    ]


def _format_gateway(gw: GatewayStatus | SectionError) -> list[str]:
    if isinstance(gw, SectionError):
        return [f"GATEWAY unavailable: {gw.error}"]
    zone = gw.zone_policy
    where = (
        f"epoch {zone.epoch} from policy v{zone.version}"
        if zone is not None
        else ("every key (open)" if gw.zone == "open" else "none yet: closed")
    )
    lines = [
        f"GATEWAY  allow {gw.allow}  deny {gw.deny}  maybe {gw.maybe}  zone {gw.zone}: {where}  "
        f"arbitrator {_arbitrator_word(gw)}",
        "reasons: " + json.dumps(gw.reasons, sort_keys=True),
    ]
    lines += [f"problem: {p}" for p in (gw.zone_problem, gw.arbitrator_error) if p]
    lines += [f"quarantined: {q.peer} ({q.reason})" for q in gw.quarantine]
    lines += [
        f"proposed for quarantine: {peer} by {', '.join(proposers)}"
        for peer, proposers in gw.proposals.items()
    ]
    more = {k: v for k, v in gw.to_json().items() if k not in _GATEWAY_SHOWN}
    if more:
        lines.append("more: " + json.dumps(more, sort_keys=True, default=str))
    return lines


def _arbitrator_word(gw: GatewayStatus) -> str:
    if not gw.arbitrator:
        return "NO"
    return "yes (loads on the first MAYBE)" if gw.arbitrator_state == "not-loaded" else "yes"


_GATEWAY_SHOWN = frozenset(
    {
        "allow",
        "deny",
        "maybe",
        "zone",
        "zone_policy",
        "arbitrator",
        "arbitrator_state",
        "reasons",
        "zone_problem",
        "arbitrator_error",
        "quarantine",
        "proposals",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate-device"]:
        # argparse's REMAINDER does not pass options (--link ...) through a
        # subparser, so the simulator gets its arguments whole and parses them.
        return cmd_simulate_device(argparse.Namespace(args=argv[1:]))
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        print(f"vsm-edge {args.command}: not built yet", file=sys.stderr)
        return 2
    try:
        result: int = handler(args)
    except AgentError as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc, file=sys.stderr)
        print(f"vsm-edge {args.command}: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
