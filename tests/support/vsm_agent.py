"""Run one VSM runtime from a config file, as the agent process will (test helper).

``python tests/support/vsm_agent.py node.toml`` runs until SIGTERM/SIGINT and
exits 0 after the graceful shutdown (the lead's ``vsm-edge run`` does the same
plus the mesh).
"""

from __future__ import annotations

import sys

import trio

from vsm_edge.agent import Runtime, load_config
from vsm_edge.agent.web.status import serve_status


async def main(path: str) -> None:
    config = load_config(path)
    runtime = Runtime(config, handle_signals=True)
    if config.status.enabled:  # composed as `vsm-edge run` does (cli/run.py)
        serve_status(runtime, config.status, config.node.data_dir)
    await runtime.run()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
