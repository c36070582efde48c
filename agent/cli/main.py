"""The ``vsm-edge`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, Final

from .._errors import AgentError, StatusClientError
from ..config.loader import load_config
from ..web.client import DEFAULT_ENDPOINT, StatusClient

# The module that adds each command, so ``vsm-edge run`` imports only what a
# running agent needs: the aggregator and its dashboard, the demo and the admin
# tools (numpy, prometheus_client...) cost an agent RSS it would never use.
_COMMAND_GROUPS: Final = {
    "keygen": "run",
    "run": "run",
    "demo": "demo",
    "aggregate": "aggregate",
    "status": "status",
    "alarm": "status",
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
    ack.add_argument("id", help="alarm id (or a unique prefix of 6+ hex digits)")
    _endpoint(ack)
    ack.set_defaults(handler=cmd_alarm_ack)


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
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(doc))
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


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-" if value is None else str(value)
    return fmt.format(value)


def format_status(doc: dict[str, Any]) -> str:
    """The human view of a status document: subsystems, alarms, peers."""
    node = doc.get("node", {})
    lines = [
        f"node {node.get('id')}  mesh {node.get('mesh')}  zone {node.get('zone')}  "
        f"uptime {_num(node.get('uptime_s'), '{:.1f}')} s  safe mode "
        f"{'ON' if node.get('safe_mode') else 'off'}  hlc {node.get('hlc')}",
        *_format_store(doc.get("store")),
        "",
        f"{'SUBSYSTEM':<10} {'TOKENS':>10} {'CAPACITY':>9} {'REFILL/S':>9} {'VARIETY':>8} "
        f"{'RECEIVED':>9} {'DROPPED':>8}",
    ]
    for name in ("s1", "s2", "s3", "s4", "s5"):
        sub = doc.get(name, {})
        budget = sub.get("budget") or (doc.get("s3", {}).get("budgets", {}).get(name)) or {}
        channel = sub.get("channel") or {}
        variety = sub.get("variety_bits")
        lines.append(
            f"{name:<10} {_num(budget.get('tokens'), '{:.1f}'):>10} "
            f"{_num(budget.get('capacity'), '{:g}'):>9} "
            f"{_num(budget.get('refill_per_s'), '{:g}'):>9} "
            f"{_num(variety):>8} {channel.get('received', '-'):>9} {channel.get('dropped', '-'):>8}"
        )
    s4 = doc.get("s4", {})
    s3 = doc.get("s3", {})
    att = s3.get("attenuation", {})
    lines += [
        "",
        f"variety: env {_num(s4.get('environment_bits'))} bits, system "
        f"{_num(s4.get('system_bits'))} bits, ratio {_num(s4.get('variety_ratio'))}",
        f"attenuation: {'ACTIVE' if att.get('active') else 'off'}, aggregated "
        f"{sum(att.get('aggregated', {}).values())}, "
        f"dropped {sum(att.get('dropped', {}).values())}",
    ]
    units = doc.get("s1", {}).get("units", {})
    if units:
        lines += [
            "",
            f"{'UNIT':<16} {'STATE':<11} {'RESTARTS':>8} {'EMITTED':>9} {'ATTENUATED':>10}",
        ]
        for name, u in units.items():
            lines.append(
                f"{name:<16} {u.get('state', '-'):<11} {u.get('restarts', 0):>8} "
                f"{u.get('emitted', 0):>9} {u.get('attenuated', 0):>10}"
            )
    alg = doc.get("algedonic", {})
    alarms = [a for a in alg.get("alarms", []) if not a.get("acked")]
    lines += ["", f"ALARMS ({len(alarms)} active)"]
    if alarms:
        lines.append(f"{'ID':<12} {'NODE':<10} {'SOURCE':<28} {'INTENSITY':>9} {'AGE S':>8}  FLAGS")
        for a in alarms[:20]:
            flags = ",".join(
                f
                for f, on in (
                    ("critical", a.get("critical")),
                    ("remote", a.get("remote")),
                    ("escalated", a.get("escalated")),
                )
                if on
            )
            lines.append(
                f"{str(a.get('id'))[:12]:<12} {str(a.get('node'))[:10]:<10} "
                f"{str(a.get('source'))[:28]:<28} {_num(a.get('intensity')):>9} "
                f"{_num(a.get('age_s'), '{:.1f}'):>8}  {flags}"
            )
    peers = doc.get("peers", [])
    lines += ["", f"PEERS ({len(peers)})"]
    for p in peers:
        lines.append(
            f"{p.get('node'):<16} health {_num(p.get('health'))}  "
            f"seen {_num(p.get('last_seen_s'), '{:.1f}')} s ago"
            f"{'  STALE' if p.get('stale') else ''}  alarms {len(p.get('alarms', []))}"
        )
    if "gateway" in doc:
        lines += ["", *_format_gateway(doc["gateway"])]
    return "\n".join(lines)


def _format_store(store: Any) -> list[str]:
    """One line when the store is faulted (local writes held), else nothing."""
    if not isinstance(store, dict) or store.get("ok", True):
        return []
    fault = store.get("fault") or {}
    return [
        f"STORE FAULT ({fault.get('cause', '?')}) for {_num(fault.get('for_s'), '{:.1f}')} s "
        f"in {fault.get('operation', '?')}: local writes held "
        f"({store.get('readings_held', 0)} readings), retrying; {fault.get('message', '')}"
    ]


def _format_gateway(gw: Any) -> list[str]:
    if not isinstance(gw, dict):
        return [f"gateway: {gw}"]
    zone = gw.get("zone_policy")
    where = (
        f"epoch {zone.get('epoch')} from policy v{zone.get('version')}"
        if isinstance(zone, dict)
        else ("every key (open)" if gw.get("zone") == "open" else "none yet: closed")
    )
    lines = [
        f"GATEWAY  allow {gw.get('allow', '-')}  deny {gw.get('deny', '-')}  "
        f"maybe {gw.get('maybe', '-')}  zone {gw.get('zone', '-')}: {where}  "
        f"arbitrator {_arbitrator_word(gw)}",
        "reasons: " + json.dumps(gw.get("reasons", {}), sort_keys=True),
    ]
    lines += [f"problem: {p}" for p in (gw.get("zone_problem"), gw.get("arbitrator_error")) if p]
    lines += [
        f"quarantined: {q.get('peer')} ({q.get('reason')})"
        for q in gw.get("quarantine") or []
        if isinstance(q, dict)
    ]
    lines += [
        f"proposed for quarantine: {peer} by {', '.join(map(str, proposers))}"
        for peer, proposers in (gw.get("proposals") or {}).items()
    ]
    more = {k: v for k, v in gw.items() if k not in _GATEWAY_SHOWN}
    if more:
        lines.append("more: " + json.dumps(more, sort_keys=True, default=str))
    return lines


def _arbitrator_word(gw: dict[str, Any]) -> str:
    if not gw.get("arbitrator"):
        return "NO"
    state = gw.get("arbitrator_state")
    return "yes (loads on the first MAYBE)" if state == "not-loaded" else "yes"


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
        print(f"vsm-edge {args.command}: {exc}", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
