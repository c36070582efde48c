"""An agent process tells where its broker connection stands: in `status`, and in its log.

Real parts: `python -m vsm_edge.agent run` against Mosquitto; the broker is
stopped and started under it, or refuses its password.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.brokers import (
    Mosquitto,
    MosquittoFactory,
    mosquitto_factory,  # noqa: F401
    require_tool,
)

pytestmark = pytest.mark.integration

WAIT_S = 30.0


class AgentProcess:
    """One agent, its config, its JSON log and its status endpoint."""

    def __init__(self, workdir: Path, broker: Mosquitto, broker_options: str = "") -> None:
        self.data = workdir / "n1"
        self.data.mkdir()
        self.config = workdir / "n1.toml"
        self.config.write_text(
            textwrap.dedent(
                f"""\
                [node]
                id = "n1"
                mesh = "brokermesh"
                data_dir = "{self.data}"
                [broker]
                url = "{broker.url}"
                keepalive_s = 5
                """
            )
            + broker_options
            + textwrap.dedent(
                """
                [discovery]
                enabled = false
                [status]
                port = 0
                """
            )
        )
        self.log_path = workdir / "n1.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vsm_edge.agent", "run", "--config", str(self.config),
             "--log-format", "json", "--log-level", "INFO"],
            stdout=self._log, stderr=self._log,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def status(self) -> dict[str, Any]:
        port_file = self.data / "status.port"
        deadline = time.monotonic() + WAIT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no status port"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/status"
        with urllib.request.urlopen(url, timeout=10) as response:
            doc: dict[str, Any] = json.loads(response.read())
        return doc

    def broker_when(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The ``broker`` section once ``predicate`` holds for it."""
        deadline = time.monotonic() + WAIT_S
        broker: dict[str, Any] = {}
        while time.monotonic() < deadline:
            broker = self.status().get("broker", {})
            if predicate(broker):
                return broker
            time.sleep(0.1)
        raise AssertionError(f"not within {WAIT_S} s: {broker}")

    def status_text(self) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "vsm_edge.agent", "status", "--config", str(self.config)],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return done.stdout

    def broker_log(self) -> list[tuple[str, str]]:
        """(level, message) of the transport's lines at INFO and above, in order."""
        lines = []
        for raw in self.log_path.read_text().splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if record.get("logger") == "vsm_edge.sync.mqtt":
                lines.append((record["level"], record["msg"]))
        return lines


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.stop()


def test_status_and_log_follow_the_broker_going_and_coming_back(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, agents: list[AgentProcess]
) -> None:
    broker = mosquitto_factory()
    agent = AgentProcess(tmp_path, broker)
    agents.append(agent)

    up = agent.broker_when(lambda b: b.get("state") == "connected")
    assert up["address"] == f"127.0.0.1:{broker.port}"
    assert up["protocol"] == "5"
    assert up["attempts"] == 0
    assert up["refused"] is None
    assert isinstance(up["since_ms"], int)
    assert f"broker 127.0.0.1:{broker.port}  connected since " in agent.status_text()
    assert [level for level, _ in agent.broker_log()] == ["info"]

    broker.stop()
    down = agent.broker_when(
        lambda b: b["state"] == "reconnecting" and b["attempts"] >= 3
        and b["next_attempt_in_s"] is not None
    )  # fmt: skip
    assert down["connections_lost"] == 1
    assert down["since_ms"] >= up["since_ms"]
    assert "ECONNREFUSED" in down["last_error"]
    text = agent.status_text()
    assert f"broker 127.0.0.1:{broker.port}  RECONNECTING since " in text
    assert "(attempt " in text
    log = agent.broker_log()
    assert [level for level, _ in log] == ["info", "warning"], log  # one line for the loss
    assert "lost the connection to the broker" in log[1][1]
    assert "reconnecting in " in log[1][1]

    broker.start()
    again = agent.broker_when(lambda b: b["state"] == "connected")
    assert again["reconnects"] == 1
    assert again["attempts"] == 0
    assert again["since_ms"] > up["since_ms"]
    log = agent.broker_log()
    assert [level for level, _ in log] == ["info", "warning", "info"], log
    assert "connected to the broker" in log[2][1]
    assert "failed attempts" in log[2][1]


def test_a_refusing_broker_shows_refused_with_its_reason(
    tmp_path: Path, mosquitto_factory: MosquittoFactory, agents: list[AgentProcess]
) -> None:
    passwd = require_tool("mosquitto_passwd")
    passwords = tmp_path / "passwords"
    subprocess.run([passwd, "-c", "-b", str(passwords), "node1", "s3cret"], check=True,
                   capture_output=True)  # fmt: skip
    broker = mosquitto_factory(extra_config=f"password_file {passwords}\n")
    secret = tmp_path / "node1.password"
    secret.write_text("wrong\n")
    secret.chmod(0o600)
    agent = AgentProcess(
        tmp_path, broker, f'username = "node1"\npassword_file = "{secret}"\n'
    )
    agents.append(agent)

    refused = agent.broker_when(lambda b: b.get("state") == "refused" and b["attempts"] >= 3)
    assert refused["refused"] in ("Bad user name or password", "Not authorized")
    assert refused["connects"] == 0
    assert refused["protocol"] is None
    text = agent.status_text()
    assert f"broker 127.0.0.1:{broker.port}  REFUSED by the broker: {refused['refused']}" in text
    log = agent.broker_log()
    assert [level for level, _ in log] == ["warning"], log  # not one per attempt
    assert f"refused the connection: {refused['refused']}" in log[0][1]
