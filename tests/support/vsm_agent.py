"""Run one VSM runtime from a config file, as the agent process will (test helper).

``python tests/support/vsm_agent.py node.toml`` runs until SIGTERM/SIGINT and
exits 0 after the graceful shutdown (the lead's ``vsm-edge run`` does the same
plus the mesh).
"""

from __future__ import annotations

import sys

import trio

from vsm_edge.agent import Runtime, load_config


async def main(path: str) -> None:
    runtime = Runtime(load_config(path), handle_signals=True)
    await runtime.run()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
