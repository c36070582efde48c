"""Real agents for mesh tests: ``vsm-edge run`` processes, their status, and a writer.

    agent = AgentProcess(tmp_path, "a1", broker_url=mosquitto.url)
    agent.start()
    status = agent.wait_status()              # GET /status, once it answers
    agent.kill()                              # SIGKILL; agent.stop() is SIGTERM

Each agent is a separate OS process (``python -m vsm_edge.agent run``) with a
generated TOML file, a data directory and a log file; its status endpoint is
on an ephemeral loopback port (``data_dir/status.port``). The configuration
is deliberately light (one slow simulated sensor, discovery off unless asked)
so that twenty of them fit on two cores.

:class:`WriterProcess` runs ``support.mesh_writer``: a bare replicator on its
own store whose acknowledged keys are read from its stdout.

:func:`target_of` and :func:`covers` express convergence of a live mesh that
keeps writing: take every node's version vector at one moment, then wait
until every node covers their pointwise maximum.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from vsm_edge.agent import StatusClient, StatusClientError

__all__ = [
    "AgentProcess",
    "LineReader",
    "WriterProcess",
    "covers",
    "poll_statuses",
    "target_of",
    "wait_until",
]

T = TypeVar("T")
TESTS = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_S = 10.0


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, poll: float = 0.2) -> T:
    """Poll ``predicate()`` until it returns something truthy; return it.

    Raises AssertionError naming ``what`` after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def target_of(vvs: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The pointwise maximum of version vectors."""
    target: dict[str, int] = {}
    for vv in vvs:
        for origin, seq in vv.items():
            target[origin] = max(target.get(origin, 0), seq)
    return target


def covers(vv: Mapping[str, int], target: Mapping[str, int]) -> bool:
    """True when ``vv`` holds every update counted in ``target``."""
    return all(vv.get(origin, 0) >= seq for origin, seq in target.items())


def _light_config(
    name: str,
    data_dir: Path,
    broker: str,
    *,
    mesh: str,
    sensors: int,
    discovery: Sequence[str] | None,
) -> str:
    units = "".join(
        f"""
[[units]]
name = "temp{i}"
kind = "simulated-sensor"
[units.options]
reading = "celsius"
mean = 21.5
noise = 0.4
period_s = 1.0
resolution = 0.5
"""
        for i in range(sensors)
    )
    interfaces = json.dumps(list(discovery or ["127.0.0.1"]))
    return f"""\
[node]
id = "{name}"
mesh = "{mesh}"
zone = "lab"
data_dir = "{data_dir}"

[broker]
url = "{broker}"
keepalive_s = 5

[discovery]
enabled = {"true" if discovery is not None else "false"}
interfaces = {interfaces}

[status]
enabled = true
host = "127.0.0.1"
port = 0
{units}"""


class AgentProcess:
    """One ``vsm-edge run`` process with a generated, light configuration.

    ``broker`` is a URL, ``embedded`` or ``mdns``. ``discovery`` lists the
    interfaces for mDNS (None: discovery off). ``launcher`` wraps the argv
    (e.g. ``ip netns exec NS``); ``fetch(port)`` replaces the HTTP client
    (e.g. to reach a loopback endpoint inside a namespace).
    """

    def __init__(
        self,
        workdir: Path,
        name: str,
        broker: str,
        *,
        mesh: str = "t",
        sensors: int = 1,
        discovery: Sequence[str] | None = None,
        protocol: str = "auto",
        launcher: Callable[[list[str]], list[str]] | None = None,
        fetch: Callable[[int], dict[str, Any] | None] | None = None,
    ) -> None:
        self.name = name
        self.data_dir = workdir / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.toml"
        self.config_path.write_text(
            _light_config(
                name, self.data_dir, broker, mesh=mesh, sensors=sensors, discovery=discovery
            )
        )
        self.protocol = protocol
        self.launcher = launcher
        self.fetch = fetch
        self.log_path = self.data_dir / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._client: StatusClient | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "vsm_edge.agent", "run", "--config",
                str(self.config_path), "--protocol", self.protocol]  # fmt: skip
        return self.launcher(argv) if self.launcher is not None else argv

    def start(self) -> None:
        if self.running:
            raise RuntimeError(f"agent {self.name} is already running")
        (self.data_dir / "status.port").unlink(missing_ok=True)
        self._client = None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _port(self) -> int | None:
        try:
            return int((self.data_dir / "status.port").read_text().strip())
        except (OSError, ValueError):
            return None

    def client(self) -> StatusClient | None:
        if self._client is None:
            port = self._port()
            if port is None:
                return None
            self._client = StatusClient(f"http://127.0.0.1:{port}", timeout_s=5.0)
        return self._client

    def status(self) -> dict[str, Any] | None:
        """The status document, or None while the endpoint does not answer."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(
                f"agent {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
            )
        if self.fetch is not None:
            port = self._port()
            return None if port is None else self.fetch(port)
        client = self.client()
        if client is None:
            return None
        try:
            return client.status()
        except StatusClientError:
            return None

    def wait_status(self, timeout: float = 30.0) -> dict[str, Any]:
        return wait_until(self.status, timeout, f"agent {self.name}'s status endpoint")

    def raise_alarm(self, intensity: float, source: str, reason: str = "") -> dict[str, Any]:
        client = self.client()
        assert client is not None, f"agent {self.name} has no status endpoint yet"
        return client.raise_alarm(intensity, source, reason)

    def kill(self) -> None:
        """SIGKILL, and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int | None:
        """SIGTERM (graceful: flushes state), then SIGKILL after a timeout; the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def poll_statuses(agents: Sequence[AgentProcess]) -> list[dict[str, Any] | None]:
    """Every agent's status (None where the endpoint does not answer), polled in parallel."""
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(agents)))) as pool:
        return list(pool.map(lambda a: a.status(), agents))


class LineReader:
    """Collects a process's stdout lines (JSON objects) in a background thread."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        with stream:  # closed at EOF: the process has exited
            for raw in stream:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                with self._cond:
                    self.lines.append(obj)
                    self._cond.notify_all()

    def join(self, timeout: float = 5.0) -> None:
        """Wait until the stream reached its end (the process exited)."""
        self._thread.join(timeout)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.lines)

    def last(self, key: str) -> Any:
        """The value of ``key`` in the latest line that has it (AssertionError if none)."""
        for line in reversed(self.snapshot()):
            if key in line:
                return line[key]
        raise AssertionError(f"no line with {key!r} yet")

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any]:
        """The first line (old or new) matching ``predicate``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching line within {timeout} s")
                self._cond.wait(left)


class WriterProcess:
    """``python -m support.mesh_writer``: a replicator whose acknowledgements we can read."""

    def __init__(self, workdir: Path, name: str, broker_port: int, *, mesh: str = "t") -> None:
        self.name = name
        self.data_dir = workdir / name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker_port = broker_port
        self.mesh = mesh
        self.proc: subprocess.Popen[str] | None = None
        self.reader: LineReader | None = None
        self.log_path = self.data_dir / "writer.log"

    def start(
        self,
        *,
        count: int,
        interval: float = 0.0,
        prefix: str = "k",
        same_key: bool = False,
        watch: str | None = None,
    ) -> LineReader:
        """Start (or restart) it: ``count`` keys ``NAME/PREFIXi``, ``interval`` s apart.

        ``same_key`` overwrites the one key ``NAME/PREFIX`` instead; ``watch``
        puts a key's value into the status lines.
        """
        extra = ["--same-key"] if same_key else []
        if watch is not None:
            extra += ["--watch", watch]
        with self.log_path.open("a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "support.mesh_writer", "--port", str(self.broker_port),
                 "--mesh", self.mesh, "--node", self.name, "--data", str(self.data_dir),
                 "--count", str(count), "--interval", str(interval), "--prefix", prefix,
                 *extra],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=TESTS, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        assert self.proc.stdout is not None
        self.reader = LineReader(self.proc.stdout)
        return self.reader

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            self.proc.wait()
        if self.reader is not None:
            self.reader.join()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()
