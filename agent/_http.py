"""A small read-only HTTP/1.1 server (h11 under Trio) and the response value it sends.

:class:`HttpResponse` is what a route returns: status, content type, bytes.
The agent's loopback status server sends one when a route returns it (the
``/metrics``, ``/dashboard`` and ``/view.json`` routes registered by
:mod:`._web`), and :class:`ReadOnlyServer` serves the aggregator's routes.

:class:`ReadOnlyServer` answers GET and HEAD only: it carries no command, so
it may listen beyond loopback (the aggregator's dashboard on a LAN). One
request per connection (``Connection: close``); request heads are limited to
16 KiB (431), other methods than GET and HEAD get 405; each connection gets 5 s; at
most 32 connections are served at once (more get 503). A route that raises
answers 500 and is counted, never kills the server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11
import trio

from ._errors import AgentError

__all__ = ["HttpResponse", "ReadOnlyServer", "Route", "json_response"]

log = logging.getLogger("vsm_edge.agent.http")

MAX_HEAD = 16 * 1024
TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response: ``status``, ``content_type`` and the ``body`` bytes."""

    status: int
    content_type: str
    body: bytes
    cache: str = "no-store"


Route = Callable[[], HttpResponse]


def json_response(obj: Any, status: int = 200) -> HttpResponse:
    """``obj`` as JSON (values JSON cannot hold are written with ``str()``)."""
    return HttpResponse(status, "application/json", json.dumps(obj, default=str).encode())


def response_headers(response: HttpResponse) -> list[tuple[str, str]]:
    return [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        ("cache-control", response.cache),
        ("x-content-type-options", "nosniff"),
        ("connection", "close"),
    ]


class ReadOnlyServer:
    """Serves ``routes`` (path -> handler) on ``host:port`` until cancelled."""

    def __init__(self, routes: Mapping[str, Route], host: str, port: int) -> None:
        self.routes = dict(routes)
        self.host = host
        self.port = port
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.requests = 0
        self.errors = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen; reports the bound port (useful with port 0).

        Raises :class:`AgentError` when the address cannot be bound.
        """
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise AgentError(
                f"http: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                with trio.move_on_after(TIMEOUT_S):
                    await self._send(stream, conn, _error(503, "too many connections"), head=False)
                return
            try:
                with trio.move_on_after(TIMEOUT_S):
                    await self._serve(stream, conn)
            finally:
                self._limiter.release()

    async def _serve(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        head = False
        try:
            request = await self._read_head(stream, conn)
            self.requests += 1
            method = request.method.decode("ascii", "replace")
            head = method == "HEAD"
            response = self._route(method, request.target.decode("ascii", "replace"))
        except h11.RemoteProtocolError as exc:
            self.errors += 1
            response = _error(exc.error_status_hint, f"bad request: {exc}")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await self._send(stream, conn, response, head=head)

    async def _read_head(self, stream: trio.SocketStream, conn: h11.Connection) -> h11.Request:
        received = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(8192)
                received += len(data)
                if received > MAX_HEAD:  # h11 bounds only an incomplete head
                    raise h11.RemoteProtocolError("request head too large", 431)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                return event
            raise h11.RemoteProtocolError("connection closed before a request", 400)

    def _route(self, method: str, target: str) -> HttpResponse:
        path = target.split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            self.errors += 1
            return _error(404, f"no route {path}")
        if method not in ("GET", "HEAD"):
            self.errors += 1
            return _error(405, f"method {method} not allowed (read-only server)")
        try:
            return handler()
        except Exception:  # a broken route answers 500; the server goes on
            self.errors += 1
            log.exception("route %s failed", path)
            return _error(500, "internal error")

    async def _send(
        self, stream: trio.SocketStream, conn: h11.Connection, response: HttpResponse, *, head: bool
    ) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            headers = response_headers(response)
            await stream.send_all(
                conn.send(h11.Response(status_code=response.status, headers=headers))
            )
            if not head:
                await stream.send_all(conn.send(h11.Data(data=response.body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass


def _error(status: int, message: str) -> HttpResponse:
    return json_response({"error": message}, status)
