"""A ``vsm-edge run --env`` process (configured by ``VSM_*`` variables only) and its status."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["env_agent"]


@contextlib.contextmanager
def env_agent(
    env: Mapping[str, str], data_dir: Path, cwd: Path, timeout: float = 30.0
) -> Iterator[Callable[[], dict[str, Any]]]:
    """Start ``vsm-edge run --env`` with ``env`` (plus PATH) and wait for its status
    endpoint (``data_dir``'s ``status.port``); yields ``status()``, the document now.
    SIGTERM (then SIGKILL) on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsm_edge.agent", "run", "--env"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
    )  # fmt: skip
    try:
        port_file = data_dir / "status.port"
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline, "the agent did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().strip())

        def status() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                return json.loads(r.read())  # type: ignore[no-any-return]

        yield status
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
