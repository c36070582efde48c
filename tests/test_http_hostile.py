"""Hostile HTTP clients against both h11 servers, over real sockets on loopback.

The agent's status endpoint (agent/web/status.py, in a runtime in this process
and in a separate agent process) and the read-only server (agent/web/http.py, the
aggregator's) share one connection layer: the head limit (431), the head
deadline (408), the connection budget that slow clients cannot exhaust, and
the lingering close that lets a client read an early answer instead of a reset.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from support.vsm import STATUS_SERVERS, config, running

from vsm_edge.agent.web.client import StatusClient, StatusClientError
from vsm_edge.agent.web.http import MAX_HEAD, ReadOnlyServer, ServerStatistics, json_response
from vsm_edge.agent.web.json_input import MAX_DEPTH

HERE = Path(__file__).resolve().parent
WAIT = 20.0  # bound on any one wait


@dataclass
class Server:
    kind: str
    port: int
    statistics: Callable[[], ServerStatistics]


@pytest.fixture(params=["status", "read-only"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    """The agent's status endpoint or the read-only server, each with a 0.5 s head deadline."""
    if request.param == "status":
        cfg = config({"status": {"head_timeout_s": 0.5}}, status=True, data_dir=tmp_path)
        async with running(cfg) as rt:
            server = STATUS_SERVERS[rt]
            assert rt.status_port is not None
            yield Server("status", rt.status_port, server.statistics)
    else:
        routes = {"/health": lambda: json_response({"ok": True})}
        ro = ReadOnlyServer(routes, "127.0.0.1", 0, head_timeout_s=0.5)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(ro.run)
            yield Server("read-only", port, ro.statistics)
            nursery.cancel_scope.cancel()


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` while reading the answer until the server closes.

    Sending and reading run side by side, as a real client's kernel does: a
    server that answers before it has read everything must still be heard.
    A reset (instead of an orderly close) fails the test.
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b""
    async with stream, trio.open_nursery() as nursery:

        async def send() -> None:
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(raw)

        nursery.start_soon(send)
        with trio.fail_after(WAIT):
            while chunk := await stream.receive_some(65536):
                data += chunk
        nursery.cancel_scope.cancel()
    return data


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> Any:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def get_with_head_of(size: int) -> bytes:
    """``GET /health`` whose head (request line, headers, blank line) is ``size`` bytes."""
    start, end = b"GET /health HTTP/1.1\r\nhost: x\r\nx-pad: ", b"\r\n\r\n"
    return start + b"a" * (size - len(start) - len(end)) + end


# -- 431: one head limit, answered, then an orderly close --------------------------------


async def test_a_head_of_the_limit_is_served_and_one_byte_more_is_431(server: Server) -> None:
    assert len(get_with_head_of(MAX_HEAD)) == MAX_HEAD
    assert status_of(await exchange(server.port, get_with_head_of(MAX_HEAD))) == 200
    answer = await exchange(server.port, get_with_head_of(MAX_HEAD + 1))
    assert status_of(answer) == 431
    assert body_of(answer) == {"error": f"request head larger than {MAX_HEAD} bytes"}


@pytest.mark.parametrize("size", [20 * 1024, 24 * 1024, 64 * 1024, 256 * 1024])
async def test_large_heads_get_431_and_an_orderly_close_not_a_reset(
    server: Server, size: int
) -> None:
    for raw in (get_with_head_of(size), b"GET /health HTTP/1.1\r\nx: " + b"b" * size):
        answer = await exchange(server.port, raw)  # raises on a reset
        assert status_of(answer) == 431
    assert status_of(await exchange(server.port, get_with_head_of(200))) == 200


# -- slow clients --------------------------------------------------------------------------


async def test_a_head_not_complete_in_time_gets_408(server: Server) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    data = b""
    async with stream, trio.open_nursery() as nursery:
        dribbling = trio.CancelScope()

        async def dribble() -> None:
            with dribbling:
                await stream.send_all(b"GET /health HTTP/1.1\r\n")
                while True:  # one byte of a header at a time, never done
                    await stream.send_all(b"x")
                    await trio.sleep(0.05)

        nursery.start_soon(dribble)
        with trio.fail_after(WAIT):
            while chunk := await stream.receive_some(65536):
                dribbling.cancel()  # the answer is here: stop dribbling
                data += chunk
    assert status_of(data) == 408
    assert "not complete within 0.5 s" in body_of(data)["error"]
    assert server.statistics().head_timeouts == 1


async def test_slow_clients_cannot_starve_honest_ones(server: Server) -> None:
    limit = server.statistics().limit
    slow = 16 if server.kind == "status" else limit  # at least the whole budget
    assert slow >= limit
    stop = trio.Event()
    dribbling = [0]

    async def dribbler() -> None:
        # connects, dribbles a head that never ends; when cut off, comes back
        while not stop.is_set():
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            async with stream:
                try:
                    await stream.send_all(b"GET /health HTTP/1.1\r\nhost: x\r\n")
                    dribbling[0] += 1
                    while not stop.is_set():
                        await stream.send_all(b"y")
                        with trio.move_on_after(0.05):
                            await stop.wait()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                finally:
                    dribbling[0] -= 1

    answers: list[int] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(slow):
                nursery.start_soon(dribbler)
            for _ in range(40):
                # every slot held by a slow client (the one cut off last time is back)
                while not (dribbling[0] == slow and server.statistics().open == limit):
                    await trio.sleep(0.01)
                answers.append(status_of(await exchange(server.port, get_with_head_of(100))))
            stop.set()
    assert answers == [200] * 40
    stats = server.statistics()
    assert stats.evicted > 0  # room made by closing slow clients
    assert stats.refused == 0


# -- JSON: nesting bounded at the decoder ----------------------------------------------------


def _post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


@pytest.mark.integration
def test_deeply_nested_json_is_400_and_the_agent_process_lives(tmp_path: Path) -> None:
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
            assert agent.poll() is None, agent.communicate()
            assert time.monotonic() - started < WAIT, "agent did not start"
            time.sleep(0.05)
        port = int((data / "status.port").read_text())
        deep = {
            "arrays": b"[" * 5000,
            "objects": b'{"a":' * 1600,
            "at the limit plus one": b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        }
        for what, body in deep.items():
            answer = trio.run(exchange, port, _post("/alarm", body))
            assert status_of(answer) == 400, what
            assert body_of(answer) == {"error": f"JSON nested deeper than {MAX_DEPTH} levels"}
        # nesting within the limit is parsed (and then refused for its shape)
        answer = trio.run(exchange, port, _post("/alarm", b"[" * MAX_DEPTH + b"]" * MAX_DEPTH))
        assert body_of(answer) == {"error": "expected a JSON object"}
        for constant in (b"NaN", b"Infinity", b"-Infinity"):
            body = b'{"intensity": ' + constant + b', "source": "x"}'
            answer = trio.run(exchange, port, _post("/alarm", body))
            assert body_of(answer) == {"error": "body is not valid JSON"}
        health = trio.run(exchange, port, b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        assert status_of(health) == 200
        assert agent.poll() is None
        client = StatusClient(f"http://127.0.0.1:{port}")
        assert client.raise_alarm(0.5, "door")["delivered"] is True
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=10)
    assert "RecursionError" not in err


async def test_the_status_client_refuses_deeply_nested_answers() -> None:
    # A process squatting on the status port answers with deep JSON: the CLI
    # says so in one line instead of crashing.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    body = b"[" * 100_000

    def squat() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )

    with listener:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, squat)
            client = StatusClient(f"http://127.0.0.1:{port}", timeout_s=10)
            with pytest.raises(StatusClientError, match=f"nested deeper than {MAX_DEPTH}"):
                await trio.to_thread.run_sync(client.status)
