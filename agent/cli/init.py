"""``vsm-edge init DIR``: a node to start from (a key, a commented node.toml, a unit skeleton).

The skeleton is the complete example of docs/units.md (a test keeps the two
the same); the config wires it in next to a simulated sensor, so
``vsm-edge run --config DIR/node.toml`` runs at once.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from pathlib import Path
from typing import Any

from vsm_edge.sync import NodeKey, SyncError, save_node_key, save_public_key

from .._errors import AgentError

__all__ = ["NODE_TOML", "UNIT_FILE", "UNIT_SKELETON", "add_init_command", "cmd_init", "init_node"]

UNIT_FILE = "loadavg_unit.py"

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_URL = re.compile(r"^[A-Za-z0-9_.:/\[\]@%-]{1,256}$")


def add_init_command(sub: Any) -> None:
    init = sub.add_parser(
        "init", help="scaffold a node in DIR: key, commented node.toml, a unit skeleton"
    )
    init.add_argument("dir", metavar="DIR", help="the directory to write (created if missing)")
    init.add_argument("--id", help="the node id (default: this host's name)")
    init.add_argument(
        "--broker", default="embedded", help='broker.url (default "embedded": one machine)'
    )
    init.add_argument(
        "--status-port", type=int, default=7787, help="status.port (default 7787; 0: ephemeral)"
    )
    init.add_argument("--force", action="store_true", help="overwrite files that exist")
    init.set_defaults(handler=cmd_init)


def cmd_init(args: argparse.Namespace) -> int:
    written = init_node(
        Path(args.dir),
        node_id=args.id or _host_id(),
        broker=args.broker,
        status_port=args.status_port,
        force=args.force,
    )
    for path in written:
        print(f"wrote {path}")
    print(f"next: vsm-edge run --config {Path(args.dir) / 'node.toml'}")
    return 0


def init_node(
    directory: Path, *, node_id: str, broker: str, status_port: int, force: bool = False
) -> list[Path]:
    """Write the key pair, node.toml and the unit skeleton into ``directory``.

    Raises :class:`AgentError` (one line) for a bad id, port or broker URL, a
    file that exists (without ``force``) or a directory that cannot be written.
    The config loader checks the URL itself when the node runs.
    """
    if not _ID.match(node_id):
        raise AgentError(f"--id must be 1-64 characters of A-Z a-z 0-9 _ -, got {node_id!r}")
    if not 0 <= status_port <= 65535:
        raise AgentError(f"--status-port must be in 0..65535, got {status_port}")
    if not _URL.match(broker):
        raise AgentError(f"--broker: not a broker URL: {broker!r}")
    toml, unit, key = directory / "node.toml", directory / UNIT_FILE, directory / "node.key"
    files = [toml, unit, key, key.with_suffix(".pub")]
    if not force:
        existing = [str(p) for p in files if p.exists()]
        if existing:
            raise AgentError(f"{existing[0]} exists (use --force to replace it)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        node_key = NodeKey.generate()
        save_node_key(node_key, key, overwrite=force)
        save_public_key(node_key.public_key, key.with_suffix(".pub"), overwrite=force)
        text = NODE_TOML.format(id=node_id, broker=broker, port=status_port, unit_file=UNIT_FILE)
        toml.write_text(text, encoding="utf-8")
        unit.write_text(UNIT_SKELETON, encoding="utf-8")
    except (SyncError, FileExistsError) as exc:
        raise AgentError(f"{exc} (use --force to replace it)") from None
    except OSError as exc:
        raise AgentError(f"cannot write in {directory}: {exc.strerror or exc}") from None
    return files


def _host_id() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname().split(".")[0]).strip("-")
    return name[:64] or f"node-{os.getpid()}"


NODE_TOML = """\
# A vsm-edge node, written by `vsm-edge init`. Run it with
#   vsm-edge run --config node.toml
# and look at it with
#   vsm-edge status --config node.toml
# Relative paths are relative to this file. Every key is documented in
# docs/configuration.md; examples/node.toml lists them all.

[node]
id = "{id}"                # 1-64 of A-Z a-z 0-9 _ -; unique in the mesh
mesh = "default"           # nodes of one mesh replicate each other's state
key_file = "node.key"      # this node's Ed25519 key (written next to this file)
data_dir = "vsm-data"      # state, HLC mark, status.port
# plugin_dirs = ["units"]  # where a kind "module:Class" is looked for first

[broker]
# "embedded": a broker inside this process (one machine; needs the demo extra),
# "mdns": find one on the LAN, or "mqtt://host:1883" / "mqtts://host:8883".
url = "{broker}"

[discovery]
enabled = true
interfaces = ["127.0.0.1"]  # put this machine's LAN address here to find peers

[status]
port = {port}              # the status endpoint on 127.0.0.1 (0: any free port)

# Units: each one is a sensor/actuator loop. The built-in kinds are listed in
# docs/units.md (simulated-sensor, simulated-actuator, firmware-bridge,
# system, onewire, exec...); your own is "file.py:Class".

[[units]]
name = "room"              # a simulated thermometer: readings at once
kind = "simulated-sensor"
[units.options]
reading = "celsius"
unit = "°C"
mean = 21.0
noise = 0.3
period_s = 1.0

[[units]]
name = "load"              # the unit skeleton next to this file: copy it, edit it
kind = "{unit_file}:LoadAvg"
[units.options]
period_s = 5.0

# [[units]]
# name = "host"            # this machine's load, CPU, memory, disks, temperatures
# kind = "system"
# [units.options]
# period_s = 10.0
# disks = ["/"]
"""

# docs/units.md shows this file whole (tests/test_units_doc.py compares them)
UNIT_SKELETON = '''\
"""A vsm-edge unit: the host's 1-minute load average (a template to copy).

Wire it into node.toml with ``kind = "loadavg_unit.py:LoadAvg"`` (this file
next to the config). The unit API is docs/units.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from vsm_edge.agent import CommandSpec, ReadingSpec, UnitContext, UnitError


class LoadAvg:
    """Emits ``load_1`` every ``period_s``; the command ``period`` changes the period."""

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        # Check every option here: a UnitError stops the agent at start with one line.
        unknown = set(options) - {"path", "period_s"}
        if unknown:
            raise UnitError(f"unit {name}: unknown option {sorted(unknown)[0]!r}")
        self.path = Path(options.get("path", "/proc/loadavg"))
        self.period_s = float(options.get("period_s", 5.0))
        if not self.period_s > 0:
            raise UnitError(f"unit {name}: option period_s must be > 0")
        # What the unit emits and accepts, declared before it runs.
        self.readings = (ReadingSpec("load_1", unit="", resolution=0.1, period_s=self.period_s),)
        self.commands = (CommandSpec("period", "number", minimum=0.5, maximum=3600),)
        self.last: float | None = None
        self.failing = False

    async def run(self, ctx: UnitContext) -> None:
        """Runs until cancelled; if it raises, the supervisor restarts it with backoff."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.apply_commands, ctx)
            while True:
                self.poll(ctx)
                await trio.sleep(self.period_s)

    def poll(self, ctx: UnitContext) -> None:
        try:
            value = float(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            if not self.failing:  # pain once per failure, not on every poll
                self.failing = True
                ctx.pain(0.5, f"cannot read {self.path}: {exc}")
            return
        if self.failing:
            self.failing = False
            ctx.clear_pain(f"{self.path} reads again")
        self.last = value
        ctx.emit("load_1", value)

    async def apply_commands(self, ctx: UnitContext) -> None:
        # Commands arrive here after S5 policy, S2 damping and S3 budgets (and the
        # range declared in CommandSpec) have passed them.
        async for command in ctx.commands():
            assert isinstance(command.value, int | float)
            self.period_s = float(command.value)

    async def probe(self) -> bool:
        """S3* audits call this: is the source there?"""
        return self.path.exists()

    def status(self) -> dict[str, Any]:
        """Shown as ``detail`` in this unit's entry of ``vsm-edge status --json``."""
        return {"last": self.last, "path": str(self.path), "period_s": self.period_s}
'''
