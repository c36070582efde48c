"""The status endpoint and the status/alarm CLI against running agents (real sockets, processes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from support.status_scenario import agent_document
from support.vsm import config, running

from vsm_edge.agent.cli.main import format_status
from vsm_edge.agent.mesh.status import NodeStatus

HERE = Path(__file__).resolve().parent
KEYS = ("node", "s1", "s2", "s3", "s4", "s5", "algedonic", "peers")


def cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vsm_edge.agent.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.integration
def test_status_and_alarm_cli_against_an_agent_process(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "node.toml").write_text(
        f"""
[node]
id = "edge-7"
mesh = "plant"
data_dir = "{data}"
[status]
port = 0
[[units]]
name = "t1"
kind = "simulated-sensor"
[units.options]
period_s = 0.2
"""
    )
    started = time.monotonic()
    agent = subprocess.Popen(
        [sys.executable, str(HERE / "support" / "vsm_agent.py"), str(tmp_path / "node.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port_file = data / "status.port"
        while not port_file.exists():
            assert agent.poll() is None, agent.communicate()
            assert time.monotonic() - started < 20, "agent did not start"
            time.sleep(0.05)
        endpoint = f"http://127.0.0.1:{port_file.read_text().strip()}"

        result = cli("status", "--json", "--endpoint", endpoint)
        assert result.returncode == 0, result.stderr
        doc = json.loads(result.stdout)
        assert set(KEYS) <= set(doc)
        assert doc["node"]["id"] == "edge-7"
        assert doc["s1"]["units"]["t1"]["state"] == "running"

        raised = cli(
            "alarm", "raise", "--intensity", "0.99", "--source", "estop", "--endpoint", endpoint
        )
        assert raised.returncode == 0, raised.stderr
        alarm_id = raised.stdout.strip()
        assert len(alarm_id) == 32

        human = cli("status", "--config", str(tmp_path / "node.toml"))  # finds status.port
        assert human.returncode == 0, human.stderr
        assert "ALARMS (1 active)" in human.stdout
        assert "operator.estop" in human.stdout
        assert "critical" in human.stdout
        assert "t1" in human.stdout

        acked = cli("alarm", "ack", alarm_id[:10], "--endpoint", endpoint)
        assert acked.returncode == 0, acked.stderr
        assert acked.stdout.strip() == f"acknowledged {alarm_id}"
        after = json.loads(cli("status", "--json", "--endpoint", endpoint).stdout)
        [alarm] = [a for a in after["algedonic"]["alarms"] if a["id"] == alarm_id]
        assert alarm["acked"] is True

        unknown = cli("alarm", "ack", "abcdef12", "--endpoint", endpoint)
        assert unknown.returncode == 1
        assert unknown.stderr == (
            f"vsm-edge alarm: no alarm with an id starting abcdef12 (at {endpoint})\n"
        )

        stop = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        _, err = agent.communicate(timeout=10)
        assert agent.returncode == 0, err
        assert time.monotonic() - stop < 5
        state = json.loads((data / "vsm-state.json").read_text())
        assert state["node"]["id"] == "edge-7"
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.communicate(timeout=10)


def test_cli_reports_an_unreachable_agent(tmp_path: Path) -> None:
    result = cli("status", "--endpoint", "http://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the agent at http://127.0.0.1:9" in result.stderr
    (tmp_path / "node.toml").write_text('[node]\nid = "x"\n[status]\nport = 0\n')
    result = cli("alarm", "ack", "abcdef", "--config", str(tmp_path / "node.toml"))
    assert result.returncode == 1
    assert "status.port is missing" in result.stderr
    (tmp_path / "bad.toml").write_text("[node]\n")
    result = cli("status", "--config", str(tmp_path / "bad.toml"))
    assert result.returncode == 1
    assert "config error: node.id: required" in result.stderr


async def _request(port: int, raw: bytes) -> tuple[int, dict[str, object]]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def test_status_endpoint_routes_and_rejections(tmp_path: Path) -> None:
    async with running(config(status=True, data_dir=tmp_path)) as rt:
        port = rt.status_port
        assert port is not None
        status, doc = await _request(port, b"GET /status HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 200
        assert set(KEYS) <= set(doc)
        assert (await _request(port, b"GET /nope HTTP/1.1\r\nhost: x\r\n\r\n"))[0] == 404
        assert (await _request(port, b"DELETE /status HTTP/1.1\r\nhost: x\r\n\r\n"))[0] == 405
        assert (await _request(port, b"BREW /status COFFEE/1.0\r\n\r\n"))[0] == 400
        assert (await _request(port, _post("/alarm", b"{not json")))[0] == 400
        assert (await _request(port, _post("/alarm", b"x" * 9000)))[0] == 413
        status, doc = await _request(port, _post("/alarm", b'{"intensity": 1.5, "source": "a"}'))
        assert (status, doc["error"]) == (400, "intensity must be a number in [0, 1]")
        status, doc = await _request(
            port, _post("/alarm", b'{"intensity": 0.5, "source": "door", "x": 1}')
        )
        assert (status, doc["error"]) == (400, "unknown field 'x'")
        status, doc = await _request(port, _post("/alarm", b'{"intensity": 0.5, "source": "door"}'))
        assert status == 201
        assert doc["delivered"] is True
        status, doc = await _request(port, _post(f"/alarm/{doc['id']}/ack", b""))
        assert (status, doc["acked"]) == (200, True)
        status, _ = await _request(port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 200
        text = format_status(NodeStatus(rt.status()))
    assert "SUBSYSTEM" in text


def test_format_status_shows_subsystems_alarms_and_peers() -> None:
    doc = agent_document()  # a live agent's, captured: see tests/support/status_scenario.py
    doc["node"].update(safe_mode=True, uptime_s=3.0)
    doc["s3"]["budgets"]["s1"].update(tokens=10, capacity=2000, refill_per_s=100)
    doc["s4"]["variety_ratio"] = 1.7
    [alarm] = doc["algedonic"]["alarms"]
    alarm.update(remote=True, critical=True, acked=False, source="operator.estop")
    doc["peers"] = [dict(doc["peers"][0], node="n2", stale=True, alarms=["x"])]
    doc["gateway"]["retained_refused"] = {"retained:unexpected": 3}
    text = format_status(NodeStatus.from_json(doc))
    assert "safe mode ON" in text
    assert "uptime 3.0 s" in text
    assert "s1               10.0      2000       100" in text
    assert "ratio 1.70" in text
    assert "ALARMS (1 active)" in text
    assert "operator.estop" in text
    assert "critical,remote" in text
    assert "PEERS (1)" in text
    assert "n2               health 1.00" in text
    assert "STALE" in text
    assert "UNIT" in text
    assert "temp" in text
    assert "GATEWAY  allow 4  deny 0  maybe 0  zone open: every key (open)" in text
    assert '"retained:unexpected": 3' in text  # the counters not shown above, under "more"


def test_format_status_says_when_a_section_is_broken() -> None:
    doc = agent_document()
    doc["gateway"] = {"error": "RuntimeError('boom')"}
    doc["store"] = {"error": "RuntimeError('boom')"}
    text = format_status(NodeStatus.from_json(doc))
    assert "GATEWAY unavailable: RuntimeError('boom')" in text
    assert "STORE" not in text


REQUESTS = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda method, path, body: (
            f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        ),
        st.sampled_from(["GET", "POST", "PUT", "get"]),
        st.sampled_from(
            ["/status", "/alarm", "/alarm/abcdef/ack", "/alarm/zz/ack", "/", "//status?x=1"]
        ),
        st.binary(max_size=200) | st.just(b'{"intensity": 0.5, "source": "fuzz"}'),
    ),
)


async def test_status_endpoint_survives_any_bytes(tmp_path: Path) -> None:
    async with running(config(status=True, data_dir=tmp_path)) as rt:
        port = rt.status_port
        assert port is not None
        seen: list[bytes] = []

        @settings(max_examples=60, deadline=None)
        @given(REQUESTS)
        def check(raw: bytes) -> None:
            seen.append(raw)

        check()  # hypothesis draws the inputs synchronously; the requests run below
        for raw in seen:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(raw)
                await stream.send_eof()
                data = b""
                with trio.fail_after(5):
                    while chunk := await stream.receive_some(65536):
                        data += chunk
            # an answer with a status line, or a closed connection: never a hang or a crash
            assert data == b"" or data.startswith(b"HTTP/1.1 ")
        status, _ = await _request(port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status == 200
        assert rt.supervisor.tasks["s1.bus"].crashes == 0


async def test_a_busy_status_port_is_a_clear_error(tmp_path: Path) -> None:
    from vsm_edge.agent import AgentError

    async with running(config(status=True, data_dir=tmp_path)) as rt:
        taken = rt.status_port
        cfg = config({"node": {"id": "n2"}, "status": {"enabled": True, "port": taken}})
        with pytest.raises(ExceptionGroup) as info:  # out of the runtime's nurseries
            async with running(cfg):
                pass  # pragma: no cover
        assert info.group_contains(
            AgentError, match=f"cannot listen on 127.0.0.1:{taken}", depth=None
        )


@pytest.mark.integration
def test_sigint_stops_an_agent_process_gracefully(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (tmp_path / "node.toml").write_text(
        f'[node]\nid = "n"\ndata_dir = "{data}"\n[status]\nport = 0\n'
    )
    agent = subprocess.Popen(
        [sys.executable, str(HERE / "support" / "vsm_agent.py"), str(tmp_path / "node.toml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        started = time.monotonic()
        while not (data / "status.port").exists():
            assert agent.poll() is None
            assert time.monotonic() - started < 20, "agent did not start"
            time.sleep(0.05)
        stop = time.monotonic()
        agent.send_signal(signal.SIGINT)
        _, err = agent.communicate(timeout=10)
        assert agent.returncode == 0, err
        assert time.monotonic() - stop < 5
        assert json.loads((data / "vsm-state.json").read_text())["node"]["id"] == "n"
    finally:
        if agent.poll() is None:
            agent.kill()
        agent.communicate(timeout=10)


def test_format_status_names_a_store_fault() -> None:
    doc = agent_document()
    assert doc["store"]["ok"] is True
    assert "STORE" not in format_status(NodeStatus.from_json(doc))
    doc["store"].update(
        ok=False,
        readings_held=3,
        fault={
            "cause": "disk-full",
            "message": "node.db: commit: database or disk is full",
            "operation": "commit",
            "since_ms": 1_700_000_000_000,
            "for_s": 4.2,
            "failures": 2,
            "last_message": "node.db: commit: database or disk is full",
        },
    )
    text = format_status(NodeStatus.from_json(doc))
    assert "STORE FAULT (disk-full) for 4.2 s in commit: local writes held (3 readings)" in text


def test_status_cli_reads_the_document_and_names_a_malformed_place(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from vsm_edge.agent.cli import main as cli_main

    doc = agent_document()
    doc["newer"] = {"key": 1}  # a newer agent's section: printed as served
    monkeypatch.setattr(cli_main.StatusClient, "status", lambda self: doc)
    assert cli_main.main(["status", "--json", "--endpoint", "http://127.0.0.1:9"]) == 0
    assert json.loads(capsys.readouterr().out) == doc
    assert cli_main.main(["status", "--endpoint", "http://127.0.0.1:9"]) == 0
    assert "GATEWAY  allow 4" in capsys.readouterr().out
    doc["s3"]["attenuation"] = []
    assert cli_main.main(["status", "--endpoint", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == (
        "vsm-edge status: status.s3.attenuation: expected an object, got an array\n"
    )
