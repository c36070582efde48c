"""Real brokers for tests: Mosquitto processes (single, restartable, bridged pairs).

Import the fixtures explicitly in a test module::

    from support.brokers import mosquitto, mosquitto_factory  # noqa: F401

A :class:`Mosquitto` is a real ``/usr/sbin/mosquitto`` process on a free
loopback port with a generated config; it can be stopped, restarted on the same
port, killed, or frozen (SIGSTOP) to hold back acknowledgements. If Mosquitto
is missing the fixtures skip, or fail when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = [
    "Mosquitto",
    "find_mosquitto",
    "free_port",
    "mosquitto",
    "mosquitto_factory",
    "require_tool",
    "wait_for_port",
]

START_TIMEOUT = 10.0


def debian_package(program: str) -> str:
    """The Debian package that ships ``program``, from scripts/programs.txt."""
    for line in (Path(__file__).parents[2] / "scripts" / "programs.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == program:
            return fields[1]
    return program


def require_tool(name: str, *candidates: str) -> str:
    """The path of an executable, or skip (fail under CI=true) with the reason."""
    for candidate in (*candidates, shutil.which(name)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    reason = f"{name} is not installed (apt-get install {debian_package(name)})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, so this test may not be skipped")
    pytest.skip(reason)


def find_mosquitto() -> str:
    """The Mosquitto binary, or skip/fail as :func:`require_tool`."""
    return require_tool("mosquitto", "/usr/sbin/mosquitto")


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = START_TIMEOUT, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll until 127.0.0.1:port accepts TCP connections (or raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing accepts connections on port {port}") from None
            time.sleep(0.02)


class Mosquitto:
    """One Mosquitto process with a generated config, restartable on its port."""

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "mosquitto",
        port: int | None = None,
        persistence: bool = False,
        nodelay: bool = True,
        extra_config: str = "",
    ) -> None:
        self.binary = find_mosquitto()
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = port or free_port()
        self.persistence = persistence
        self.nodelay = nodelay
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"
        self.config_path = self.workdir / "mosquitto.conf"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def config(self) -> str:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            # When run as root Mosquitto would switch to the 'mosquitto' user,
            # which cannot write the test's files.
            *(["user root"] if os.geteuid() == 0 else []),
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # Without it Mosquitto's small writes (PUBACK, then PUBLISH) meet
            # Nagle's algorithm and the peer's delayed ACK: ~40 ms stalls.
            *(["set_tcp_nodelay true"] if self.nodelay else []),
            f"persistence {'true' if self.persistence else 'false'}",
        ]
        if self.persistence:
            lines += [f"persistence_location {self.workdir}/", "autosave_interval 1"]
        return "\n".join(lines) + "\n" + self.extra_config + "\n"

    def start(self) -> None:
        """Start the process and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"{self.name} is already running")
        self.config_path.write_text(self.config())
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_port(self.port, proc=self.proc)
        except (TimeoutError, RuntimeError) as exc:
            self.kill()
            raise RuntimeError(f"{self.name} did not start: {exc}\n{self.log_tail()}") from None

    def stop(self) -> None:
        """SIGTERM (clean: persistence is saved) and wait for the exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)  # in case it is frozen
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL: connections are reset without DISCONNECT, nothing is saved."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop, then start on the same port."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP: the broker holds every packet (no PUBACK) until :meth:`thaw`."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class MosquittoFactory:
    """Makes Mosquitto processes that are all stopped at the end of the test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.brokers: list[Mosquitto] = []

    def __call__(self, *, start: bool = True, **options: object) -> Mosquitto:
        name = str(options.pop("name", f"mosquitto{len(self.brokers)}"))
        broker = Mosquitto(self.workdir, name=name, **options)  # type: ignore[arg-type]
        self.brokers.append(broker)
        if start:
            broker.start()
        return broker

    def bridged_pair(self, *, topic: str = "vsm/#") -> tuple[Mosquitto, Mosquitto]:
        """Brokers A and B, B bridged to A for ``topic`` in both directions at QoS 1."""
        a = self(name="broker-a")
        bridge = "\n".join(
            [
                "connection bridge-b-to-a",
                f"address 127.0.0.1:{a.port}",
                f"topic {topic} both 1",
                "remote_clientid bridge-b-to-a",
                "try_private true",
                "cleansession true",
                "notifications true",
                "restart_timeout 1",
                "start_type automatic",
            ]
        )
        b = self(name="broker-b", extra_config=bridge)
        return a, b

    def close(self) -> None:
        for broker in self.brokers:
            broker.stop()


@pytest.fixture
def mosquitto_factory(tmp_path: Path) -> Iterator[MosquittoFactory]:
    """Call it to start Mosquitto processes; all are killed after the test."""
    factory = MosquittoFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def mosquitto(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    """One running Mosquitto on a free loopback port."""
    return mosquitto_factory()
