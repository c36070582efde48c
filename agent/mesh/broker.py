"""The embedded MQTT broker of the one-machine demo: amqtt in a child process.

amqtt is a pure-Python MQTT 3.1.1 broker on asyncio. It runs in its own
process (``python -m vsm_edge.agent.mesh.broker``), never on an agent's Trio loop:
the agents' loops stay clean, and a broker restart in the demo is a real
process restart. The child prints one line on stdout, ``ready <port>`` once
its listener is bound (so it accepts connections) or ``error <reason>``; it
exits when told to (SIGTERM) or when its parent goes away (its stdin reaches
end-of-file), so it is never orphaned.

amqtt has a record of memory growth under sustained load: it is the demo's
broker, not a production broker. Production runs Mosquitto (see
docs/operations.md, "Brokers"). amqtt speaks MQTT 3.1.1 only; the transport
falls back to 3.1.1 when it meets it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from .._errors import AgentError

__all__ = ["BrokerStartError", "EmbeddedBroker"]

_MODULE = "vsm_edge.agent.mesh.broker"


class BrokerStartError(AgentError):
    """The embedded broker did not start (port taken, amqtt missing, too slow)."""


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An amqtt broker in a child process, with start, stop, restart and ``run``.

    With ``port=0`` a free port is chosen at the first start and kept, so a
    restart comes back on the same address. ``log_path`` receives the child's
    warnings (default: discarded).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 15.0,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self._proc: trio.Process | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        """``mqtt://host:port`` (the port is known after the first start)."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> str:
        """Start the child and wait until it accepts connections; return the URL.

        Raises :class:`BrokerStartError` (with the child's reason) on failure.
        """
        if self.running:
            raise BrokerStartError(f"the embedded broker is already running on {self.url}")
        if importlib.util.find_spec("amqtt") is None:
            raise BrokerStartError(
                "the embedded broker needs amqtt, which only the demo installs: "
                "pip install 'vsm-edge[demo]', or set [broker] url = \"mqtt://HOST:PORT\""
            )
        attempts = 3 if self.port == 0 and self._starts == 0 else 1
        for attempt in range(attempts):
            if self.port == 0 or (attempt > 0):
                self.port = _free_port(self.host)
            try:
                await self._spawn()
            except BrokerStartError:
                if attempt == attempts - 1:
                    raise
                continue  # another process took the port we picked: pick again
            self._starts += 1
            return self.url
        raise AssertionError("unreachable")

    async def _spawn(self) -> None:
        command = [sys.executable, "-m", _MODULE, "--host", self.host, "--port", str(self.port)]
        stderr: int | object
        if self.log_path is not None:
            log = self.log_path.open("ab")
            stderr = log
        else:
            log = None
            stderr = subprocess.DEVNULL
        try:
            proc = await trio.lowlevel.open_process(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        finally:
            if log is not None:
                log.close()
        self._proc = proc
        try:
            text = await self._ready_line(proc)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self._terminate(proc)
            raise
        if not text.startswith("ready "):
            await self._terminate(proc)
            raise BrokerStartError(f"amqtt did not start: {text}")

    async def _ready_line(self, proc: trio.Process) -> str:
        assert proc.stdout is not None
        line = b""
        with trio.move_on_after(self.startup_timeout):
            while not line.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(256)
                if not chunk:
                    return line.decode(errors="replace").strip() or "it exited"
                line += chunk
            return line.decode(errors="replace").strip()
        return f"no answer within {self.startup_timeout} s"

    async def stop(self) -> None:
        """Stop the child (SIGTERM, SIGKILL after 5 s); a no-op when not running."""
        proc, self._proc = self._proc, None
        if proc is not None:
            await self._terminate(proc)

    async def kill(self) -> None:
        """SIGKILL the child, as a crash would."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.returncode is None:
                proc.kill()
            await self._terminate(proc)

    async def restart(self, *, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, start again on the same port."""
        await self.stop()
        await trio.sleep(downtime)
        await self.start()

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Start, report the URL as started, and stop when cancelled."""
        await self.start()
        try:
            task_status.started(self.url)
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.stop()

    @staticmethod
    async def _terminate(proc: trio.Process) -> None:
        if proc.returncode is None:
            proc.terminate()
            with trio.move_on_after(5):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                await stream.aclose()


# --- the child process -----------------------------------------------------------


def _amqtt_config(host: str, port: int) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # Only anonymous access; no $SYS plugin and no packet logger.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        # 3.1.1 sessions that are not clean would otherwise live forever.
        "session_expiry_interval": 300,
    }


def _serve(host: str, port: int) -> int:
    import asyncio
    import logging
    import threading

    logging.basicConfig(level=logging.WARNING, format="amqtt: %(levelname)s %(name)s: %(message)s")

    async def main() -> int:
        from amqtt.broker import Broker

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def watch_parent() -> None:  # stdin reaches EOF when the parent is gone
            while os.read(0, 4096):  # not sys.stdin: its lock would stall shutdown
                pass
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=watch_parent, daemon=True).start()
        try:
            broker = Broker(_amqtt_config(host, port))
            await broker.start()
        except Exception as exc:  # reported to the parent, which raises BrokerStartError
            print(f"error {type(exc).__name__}: {exc}", flush=True)
            return 1
        print(f"ready {port}", flush=True)
        await stop.wait()
        await broker.shutdown()
        return 0

    return asyncio.run(main())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {_MODULE}", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    return _serve(args.host, args.port)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
