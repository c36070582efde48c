"""``vsm-edge run`` and ``vsm-edge keygen``: one agent process, and its key."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import trio

from vsm_edge.sync import (
    Advertisement,
    NodeKey,
    SyncError,
    load_node_key,
    save_node_key,
    save_public_key,
)

from .._errors import AgentError
from ..config.loader import load_config
from ..config.schema import AgentConfig
from ..integrations.homeassistant import serve_homeassistant
from ..mesh.broker import EmbeddedBroker
from ..mesh.node import Agent
from ..web.routes import serve_agent
from .logs import LOG_FORMATS, setup_logging

__all__ = ["add_run_commands", "cmd_keygen", "cmd_run", "run_agent"]

MDNS_BROKER_TIMEOUT_S = 30.0


def add_run_commands(sub: Any) -> None:
    keygen = sub.add_parser("keygen", help="write a node key pair (files 0600)")
    keygen.add_argument("--out", default="node.key", help="private key file (default node.key)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key")
    keygen.set_defaults(handler=cmd_keygen)

    run = sub.add_parser("run", help="run one agent")
    run.add_argument("--config", help="the node's TOML file (required unless --env)")
    run.add_argument(
        "--env",
        action="store_true",
        help="lay the VSM_* environment variables over the config (containers; docs/deploy.md)",
    )
    run.add_argument("--broker", help="override broker.url (mqtt://HOST:PORT, embedded, mdns)")
    run.add_argument(
        "--protocol",
        choices=("auto", "5", "3.1.1"),
        default="auto",
        help="MQTT version (default: 5, falling back to 3.1.1)",
    )
    add_log_options(run)
    run.add_argument(
        "--debug",
        action="store_true",
        help="a startup failure prints its traceback, not only its one line",
    )
    run.set_defaults(handler=cmd_run)


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    key = NodeKey.generate()
    try:
        save_node_key(key, out, overwrite=args.force)
        save_public_key(key.public_key, out.with_suffix(".pub"), overwrite=args.force)
    except (SyncError, FileExistsError) as exc:
        raise AgentError(f"{exc} (use --force to replace it)") from exc
    except OSError as exc:
        raise AgentError(
            f"cannot write {out}: {exc.strerror or exc}; "
            "give --out a file in an existing directory this user can write"
        ) from exc
    check = load_node_key(out)
    print(f"wrote {out} (private, 0600) and {out.with_suffix('.pub')}; kid {check.kid.hex()}")
    return 0


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format`` (defaults: VSM_LOG_LEVEL, VSM_LOG_FORMAT)."""
    parser.add_argument(
        "--log-level",
        default=os.environ.get("VSM_LOG_LEVEL") or "WARNING",
        help="Python logging level (default WARNING, or VSM_LOG_LEVEL)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=os.environ.get("VSM_LOG_FORMAT") or "text",
        help="text, or json: one JSON object per line (default text, or VSM_LOG_FORMAT)",
    )


def configure_logging(args: argparse.Namespace) -> None:
    try:
        setup_logging(args.log_level, args.log_format)
    except ValueError as exc:
        raise AgentError(str(exc)) from None


def cmd_run(args: argparse.Namespace) -> int:
    configure_logging(args)
    if args.env:
        from ..config.env import config_from_env, interface_ipv4_addresses

        config = config_from_env(
            os.environ,
            base_file=Path(args.config) if args.config else None,
            interface_addresses=interface_ipv4_addresses,
        )
    elif args.config:
        config = load_config(Path(args.config))
    else:
        raise AgentError("give --config FILE, or --env to read VSM_* variables")
    try:
        trio.run(run_agent, config, args.broker, args.protocol)
    except BaseExceptionGroup as group:  # Trio's nurseries wrap what they raise
        # An AgentError says in one line what is wrong and how to fix it (a key
        # file, a port...); an OSError that no part translated still names its
        # file. Anything else is a bug and keeps its traceback; --debug keeps
        # every traceback.
        leaves = _leaves(group)
        error = next((e for e in leaves if isinstance(e, AgentError)), None)
        if error is None:
            os_error = next((e for e in leaves if isinstance(e, OSError)), None)
            if os_error is None or args.debug:
                raise
            error = AgentError(f"{os_error} (run with --debug for the traceback)")
        if args.debug:  # keep the error's own cause (the OSError...) for the traceback
            raise error  # noqa: B904
        raise error from None
    return 0


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]


async def run_agent(config: AgentConfig, broker: str | None, protocol: str) -> None:
    """Run one agent until SIGTERM/SIGINT, resolving ``embedded`` and ``mdns`` brokers."""
    url = broker or config.broker.url
    async with trio.open_nursery() as nursery:
        advertise: int | None = None
        if url == "embedded":
            # The embedded broker listens where discovery runs, so that peers
            # configured with broker = "mdns" can use it.
            host = next(iter(config.discovery.interfaces), "127.0.0.1")
            embedded = EmbeddedBroker(host=host if host != "all" else "0.0.0.0")  # noqa: S104
            url = await nursery.start(embedded.run)
            advertise = embedded.port
            protocol = "3.1.1" if protocol == "auto" else protocol  # amqtt speaks 3.1.1 only
            print(f"vsm-edge: embedded broker at {url}", file=sys.stderr)
        elif url == "mdns":
            url = await _find_broker(config)
            print(f"vsm-edge: broker {url} found by mDNS", file=sys.stderr)
        agent = Agent(
            config,
            broker_url=url,
            handle_signals=True,
            protocol=protocol,
            advertise_broker_port=advertise,
            extensions=(serve_agent, serve_homeassistant),
        )
        await nursery.start(agent.run)
        print(f"vsm-edge: node {config.node.id} running (mesh {config.node.mesh})", file=sys.stderr)
        await agent.stopped()
        nursery.cancel_scope.cancel()


async def _find_broker(config: AgentConfig) -> str:
    from vsm_edge.sync import ZeroconfDiscovery

    probe = ZeroconfDiscovery(
        Advertisement(
            node=f"{config.node.id}-probe"[:64],
            key_id=b"\0",
            mesh=config.node.mesh,
            zone=config.node.zone,
        ),
        interfaces=list(config.discovery.interfaces),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(probe.run)
        try:
            with trio.fail_after(MDNS_BROKER_TIMEOUT_S):
                url = await probe.find_broker()
        except trio.TooSlowError:
            raise AgentError(
                f"no MQTT broker advertised by mDNS (_mqtt._tcp) within {MDNS_BROKER_TIMEOUT_S} s"
            ) from None
        nursery.cancel_scope.cancel()
    return url
