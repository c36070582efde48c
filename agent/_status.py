"""The local status endpoint: HTTP/1.1 + JSON on a loopback address.

h11 (sans-I/O HTTP/1.1) does the parsing; this module is only the Trio edge
and the routes. One request per connection (``Connection: close``); heads are
limited to 16 KiB and bodies to 8 KiB; each connection gets 5 s; at most 16
connections are served at once (more get 503). Bound to loopback only (the
config refuses anything else): there is no authentication, the trust
boundary is the machine.

Routes::

    GET  /status             the status document (top-level node, s1..s5, algedonic, peers)
    GET  /health             {"ok": true}
    POST /alarm              {"intensity": 0..1, "source": NAME, "reason"?: TEXT}
                             -> {"id", "delivered"}
    POST /alarm/{id}/ack     -> {"id", "acked": true} (404 for an unknown id)
    GET  <runtime.http_routes>   routes added by the agent (/metrics, /dashboard, /view.json)
"""

from __future__ import annotations

import json
import logging
import re
from typing import TYPE_CHECKING, Any

import h11
import trio

from ._algedonic import SignalError
from ._errors import AgentError
from ._http import HttpResponse, response_headers

if TYPE_CHECKING:
    from ._runtime import Runtime

__all__ = ["StatusServer"]

log = logging.getLogger("vsm_edge.agent.status")

MAX_HEAD = 16 * 1024
MAX_BODY = 8 * 1024
TIMEOUT_S = 5.0
MAX_CONNECTIONS = 16
_ACK = re.compile(r"^/alarm/([0-9a-fA-F]{6,32})/ack$")
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


class StatusServer:
    def __init__(self, runtime: Runtime, host: str, port: int) -> None:
        self.runtime = runtime
        self.host = host
        self.port = port
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
        self.requests = 0
        self.errors = 0

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen; reports the bound port to ``task_status`` (useful with port 0).

        Raises :class:`AgentError` when the address cannot be bound (port in use).
        """
        try:
            listeners = await trio.open_tcp_listeners(self.port, host=self.host)
        except OSError as exc:
            raise AgentError(
                f"status endpoint: cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        port: int = listeners[0].socket.getsockname()[1]
        task_status.started(port)
        await trio.serve_listeners(self._connection, listeners)

    async def _connection(self, stream: trio.SocketStream) -> None:
        try:
            try:
                self._limiter.acquire_nowait()
            except trio.WouldBlock:
                conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
                with trio.move_on_after(TIMEOUT_S):
                    await self._respond(stream, conn, 503, {"error": "too many connections"})
                return
            try:
                with trio.move_on_after(TIMEOUT_S):
                    await self._serve(stream)
            finally:
                self._limiter.release()
        finally:
            await stream.aclose()

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            request, body = await self._read_request(stream, conn)
            self.requests += 1
            status, payload = self._route(request, body)
        except _HTTPError as exc:
            self.errors += 1
            status, payload = exc.status, {"error": exc.message}
        except h11.RemoteProtocolError as exc:
            self.errors += 1
            status, payload = exc.error_status_hint, {"error": f"bad request: {exc}"}
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._respond(stream, conn, status, payload)

    async def _read_request(
        self, stream: trio.SocketStream, conn: h11.Connection
    ) -> tuple[h11.Request, bytes]:
        request: h11.Request | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(8192)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    raise _HTTPError(400, "connection closed mid-request")
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise _HTTPError(413, f"body larger than {MAX_BODY} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                raise _HTTPError(400, "connection closed mid-request")

    def _route(self, request: h11.Request, body: bytes) -> tuple[int, Any]:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        runtime = self.runtime
        if target == "/status":
            _allow(method, "GET")
            return 200, runtime.status()
        if target == "/health":
            _allow(method, "GET")
            return 200, {"ok": True, "node": runtime.node}
        if target == "/alarm":
            _allow(method, "POST")
            return self._raise(_json(body))
        match = _ACK.match(target)
        if match:
            _allow(method, "POST")
            alarm = runtime.ack_alarm(match.group(1).lower())
            if alarm is None:
                raise _HTTPError(404, f"no alarm {match.group(1)}")
            return 200, {"id": alarm.signal.id, "acked": True}
        extra = self.runtime.http_routes.get(target)
        if extra is not None:
            _allow(method, "GET")
            try:
                return 200, extra()
            except Exception:  # a broken route answers 500; the endpoint goes on
                log.exception("route %s failed", target)
                raise _HTTPError(500, "internal error") from None
        raise _HTTPError(404, f"no route {target}")

    def _raise(self, obj: Any) -> tuple[int, Any]:
        if not isinstance(obj, dict):
            raise _HTTPError(400, "expected a JSON object")
        unknown = set(obj) - {"intensity", "source", "reason"}
        if unknown:
            raise _HTTPError(400, f"unknown field {sorted(unknown)[0]!r}")
        intensity, source, reason = obj.get("intensity"), obj.get("source"), obj.get("reason", "")
        if (
            isinstance(intensity, bool)
            or not isinstance(intensity, int | float)
            or not 0 <= intensity <= 1
        ):
            raise _HTTPError(400, "intensity must be a number in [0, 1]")
        if not isinstance(source, str) or not _NAME.match(source):
            raise _HTTPError(400, "source must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(reason, str) or len(reason) > 512:
            raise _HTTPError(400, "reason must be text of at most 512 characters")
        try:
            alarm = self.runtime.raise_signal(
                f"operator.{source}", float(intensity), reason or "operator alarm"
            )
        except SignalError as exc:
            raise _HTTPError(400, str(exc)) from None
        if alarm is None:
            return 202, {"id": None, "delivered": False, "reason": "adapted or folded into a storm"}
        return 201, {"id": alarm.signal.id, "delivered": True, "critical": alarm.critical}

    async def _respond(
        self, stream: trio.SocketStream, conn: h11.Connection, status: int, payload: Any
    ) -> None:
        if isinstance(payload, HttpResponse):  # a route's complete response
            status, body, headers = payload.status, payload.body, response_headers(payload)
        else:
            body = json.dumps(payload, default=str).encode()
            headers = [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("connection", "close"),
            ]
        try:
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise _HTTPError(405, f"method {method} not allowed (use {allowed})")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _HTTPError(400, "body is not valid JSON") from None
