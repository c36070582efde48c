"""HTTP/1.1 under Trio for the agent's servers: h11 parses, this module is the edge.

:class:`HttpResponse` is what a route returns: status, content type, bytes.
:class:`HttpServer` is the connection layer both servers share: the agent's
loopback status endpoint (:mod:`._status`, which also serves the routes
registered by :mod:`.routes`) and :class:`ReadOnlyServer`, the aggregator's
dashboard server. A subclass only answers a parsed request (:meth:`HttpServer.handle`).

Theory of operation
-------------------
One request per connection (``Connection: close``). For each connection:

1. *Admission.* At most ``max_connections`` are open at once. When all are
   taken, a new connection takes the place of the oldest *idle* one, which is
   closed at once (counted as ``evicted``). A connection is idle while it
   waits for its client: for the rest of its head or body, or for the
   client's close after the answer. Only connections sending an answer are
   never evicted, and a newcomer is refused (503) only when every one is. So
   slow clients cannot keep honest ones out: an honest client sends its head
   at once, a slow one soon becomes the oldest idle connection.
2. *The head* (request line, headers and the blank line) must be complete
   within ``head_timeout_s`` (else 408) and at most :data:`MAX_HEAD` bytes
   (else 431). The limit is exact, wherever the network splits the bytes.
3. *The answer:* the subclass reads the body if it wants one and answers,
   and the answer is sent, each within :data:`REQUEST_TIMEOUT_S`. A handler
   that raises answers 500 and is logged; the server goes on.
4. *Lingering close.* After the answer the server half-closes and reads (and
   drops) what the client still sends until the client closes, for at most
   :data:`LINGER_S` and :data:`LINGER_BYTES`. Closing a socket with unread
   input makes the kernel send a reset, which can destroy an early answer
   (a 431 to a huge head, a 413) before the client has read it.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import h11
import trio

from .._errors import AgentError

__all__ = [
    "HEAD_TIMEOUT_S",
    "MAX_HEAD",
    "HttpError",
    "HttpResponse",
    "HttpServer",
    "ReadOnlyServer",
    "Route",
    "ServerStatistics",
    "extend_request_deadline",
    "json_response",
    "require_json_post",
]

log = logging.getLogger("vsm_edge.agent.http")

MAX_HEAD = 16 * 1024  # request line + headers + blank line, bytes (431 beyond)
HEAD_TIMEOUT_S = 5.0  # the default time for a complete head (408 beyond)
REQUEST_TIMEOUT_S = 5.0  # then for the body and the handler, and again for sending
LINGER_S = 2.0  # after the answer: how long to wait for the client's close
LINGER_BYTES = 1 << 20  # ... and how much of its input to read and drop meanwhile
REFUSE_TIMEOUT_S = 1.0  # to send a 503
_RECEIVE = 8192

# The cancel scope of the request being answered (body and handler), so that a
# route that waits on purpose can take longer: extend_request_deadline.
_REQUEST_SCOPE: contextvars.ContextVar[trio.CancelScope] = contextvars.ContextVar("request")


def extend_request_deadline(seconds: float) -> None:
    """Let the handler of the current request run until ``seconds`` from now, if that
    is later than its deadline (:data:`REQUEST_TIMEOUT_S` from its head): a route
    that waits on purpose, as ``POST /command`` for its command's timeout. Outside
    a request it does nothing."""
    scope = _REQUEST_SCOPE.get(None)
    if scope is not None:
        scope.deadline = max(scope.deadline, trio.current_time() + seconds)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A complete response: ``status``, ``content_type`` and the ``body`` bytes."""

    status: int
    content_type: str
    body: bytes
    cache: str = "no-store"


Route = Callable[[], HttpResponse]
BodyReader = Callable[[int], Awaitable[bytes]]
"""``await read_body(limit)``: the request body; HttpError 413 past ``limit`` bytes."""


class HttpError(Exception):
    """Answer ``status`` with ``{"error": message}`` (raised by handlers and the reader)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


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


@dataclass(frozen=True, slots=True)
class ServerStatistics:
    """Counts since start; ``open`` and ``limit`` are the connection budget now."""

    limit: int  # connections served at once
    open: int  # connections open now
    requests: int  # complete request heads received
    errors: int  # answers with a status of 400 or more (408, 431 and 503 included)
    head_timeouts: int  # 408: the head was not complete in time
    evicted: int  # idle connections closed to make room for a new one
    refused: int  # 503: every connection was busy sending its answer


@dataclass(eq=False, slots=True)
class _Slot:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    busy: bool = False  # sending the answer: not to be evicted


class HttpServer:
    """Serves one request per connection on ``host:port`` until cancelled (module docstring).

    Subclasses implement :meth:`handle`. ``what`` names the server in errors.
    Raises ValueError for a limit or timeout that is not positive.
    """

    what = "http"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ) -> None:
        if max_connections < 1 or not head_timeout_s > 0:
            raise ValueError("max_connections and head_timeout_s must be positive")
        self.host = host
        self.port = port
        self.max_connections = max_connections
        self.head_timeout_s = head_timeout_s
        self._slots: dict[_Slot, None] = {}  # insertion order: the oldest first
        self.requests = 0
        self.errors = 0
        self.head_timeouts = 0
        self.evicted = 0
        self.refused = 0

    async def handle(self, request: h11.Request, read_body: BodyReader) -> HttpResponse:
        """The answer to ``request``; may raise :class:`HttpError`."""
        raise NotImplementedError

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            limit=self.max_connections,
            open=len(self._slots),
            requests=self.requests,
            errors=self.errors,
            head_timeouts=self.head_timeouts,
            evicted=self.evicted,
            refused=self.refused,
        )

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen; reports the bound port to ``task_status`` (useful with port 0).

        Raises :class:`AgentError` when the address cannot be bound (port in use).
        """
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise AgentError(
                f"{self.what}: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._connection, listeners)

    # -- one connection ---------------------------------------------------------------

    def _admit(self) -> _Slot | None:
        if len(self._slots) >= self.max_connections:
            victim = next((s for s in self._slots if not s.busy), None)
            if victim is None:
                return None
            del self._slots[victim]
            victim.scope.cancel()  # its task closes the socket
            self.evicted += 1
        slot = _Slot()
        self._slots[slot] = None
        return slot

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            slot = self._admit()
            if slot is None:
                self.refused += 1
                self.errors += 1
                with trio.move_on_after(REFUSE_TIMEOUT_S):
                    conn = h11.Connection(h11.SERVER)
                    await _send(stream, conn, _error(503, "too many connections"), head_only=False)
                await _linger(stream)
                return
            try:
                with slot.scope:
                    await self._exchange(stream, slot)
            finally:
                self._slots.pop(slot, None)

    async def _exchange(self, stream: trio.SocketStream, slot: _Slot) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            head_only, response = await self._receive(stream, conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if response is None:
            return  # closed before it sent anything
        if response.status >= 400:
            self.errors += 1
        slot.busy = True
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                await _send(stream, conn, response, head_only=head_only)
        finally:
            slot.busy = False
        await _linger(stream)

    async def _receive(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[bool, HttpResponse | None]:
        """(is it a HEAD request, the answer); no answer when the client sent nothing."""
        request: h11.Request | None = None
        try:
            with trio.move_on_after(self.head_timeout_s):
                request = await _read_head(stream, conn)
                if request is None:
                    return False, None
        except HttpError as exc:
            return False, _error(exc.status, exc.message)
        if request is None:
            self.head_timeouts += 1
            return False, _error(408, f"request head not complete within {self.head_timeout_s:g} s")
        self.requests += 1
        head_only = request.method == b"HEAD"
        response: HttpResponse | None = None
        try:
            with trio.move_on_after(REQUEST_TIMEOUT_S) as scope:
                token = _REQUEST_SCOPE.set(scope)
                try:
                    response = await self._answer(
                        request, functools.partial(_read_body, stream, conn)
                    )
                finally:
                    _REQUEST_SCOPE.reset(token)
        except HttpError as exc:
            response = _error(exc.status, exc.message)
        if response is None:
            response = _error(408, f"request not complete within {REQUEST_TIMEOUT_S:g} s")
        return head_only, response

    async def _answer(self, request: h11.Request, read_body: BodyReader) -> HttpResponse:
        try:
            return await self.handle(request, read_body)
        except (HttpError, trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception:  # a broken handler answers 500; the server goes on
            log.exception("%s: %s %r failed", self.what, request.method, request.target)
            raise HttpError(500, "internal error") from None


class ReadOnlyServer(HttpServer):
    """Serves ``routes`` (path -> handler) on ``host:port``: GET and HEAD only.

    It carries no command, so it may listen beyond loopback (the aggregator's
    dashboard on a LAN). Other methods get 405, unknown paths 404; at most 32
    connections at once (see :class:`HttpServer` for the limits).
    """

    what = "http"

    def __init__(
        self,
        routes: Mapping[str, Route],
        host: str,
        port: int,
        *,
        max_connections: int = 32,
        head_timeout_s: float = HEAD_TIMEOUT_S,
    ) -> None:
        super().__init__(host, port, max_connections=max_connections, head_timeout_s=head_timeout_s)
        self.routes = dict(routes)

    async def handle(self, request: h11.Request, read_body: BodyReader) -> HttpResponse:
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        handler = self.routes.get(path)
        if handler is None:
            raise HttpError(404, f"no route {path}")
        if method not in ("GET", "HEAD"):
            raise HttpError(405, f"method {method} not allowed (read-only server)")
        return handler()


# -- the edge: reading, sending, closing --------------------------------------------------


async def _read_head(stream: trio.SocketStream, conn: h11.Connection) -> h11.Request | None:
    """The request head, or None when the client closed before sending a byte."""
    received = 0
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:  # h11's bound on an incomplete head
                raise _head_too_large() from None
            raise HttpError(exc.error_status_hint, f"bad request: {exc}") from None
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE)
            received += len(data)
            conn.receive_data(data)
        elif isinstance(event, h11.Request):
            # h11 bounds only an incomplete head; one that arrived whole in the
            # last read is measured here, so the limit is exact.
            if received - len(conn.trailing_data[0]) > MAX_HEAD:
                raise _head_too_large()
            return event
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:  # pragma: no cover - h11 gives a server nothing else before a request
            raise HttpError(400, "bad request")


def _head_too_large() -> HttpError:
    return HttpError(431, f"request head larger than {MAX_HEAD} bytes")


async def _read_body(stream: trio.SocketStream, conn: h11.Connection, limit: int) -> bytes:
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise HttpError(exc.error_status_hint, f"bad request: {exc}") from None
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(_RECEIVE))
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise HttpError(413, f"body larger than {limit} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise HttpError(400, "connection closed mid-request")


async def _send(
    stream: trio.SocketStream, conn: h11.Connection, response: HttpResponse, *, head_only: bool
) -> None:
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    try:
        headers = response_headers(response)
        await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
        if not head_only:
            await stream.send_all(conn.send(h11.Data(data=response.body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
        pass


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then drop the client's input until it closes (bounded; module docstring)."""
    with trio.move_on_after(LINGER_S):
        try:
            await stream.send_eof()
            left = LINGER_BYTES
            while left > 0:
                data = await stream.receive_some(min(left, 65536))
                if not data:
                    return
                left -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _error(status: int, message: str) -> HttpResponse:
    return json_response({"error": message}, status)


def require_json_post(request: h11.Request) -> None:
    """415 unless a POST says ``Content-Type: application/json``.

    A page of another site open in the operator's browser can make it send a
    form or a plain-text POST to a loopback address, but not one with this
    header without asking first (a CORS preflight, which no route here
    answers): no state changes from a stray web page.
    """
    for name, value in request.headers:
        if name == b"content-type" and value.split(b";", 1)[0].strip().lower() == (
            b"application/json"
        ):
            return
    raise HttpError(415, "a POST needs Content-Type: application/json")
