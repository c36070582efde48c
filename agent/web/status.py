"""The local status endpoint: HTTP/1.1 + JSON on a loopback address.

h11 (sans-I/O HTTP/1.1) does the parsing and :class:`~.http.HttpServer` the
connections; this module is only the routes. One request per connection
(``Connection: close``); heads are limited to 16 KiB (431) and must be
complete within ``[status] head_timeout_s`` (5 s; 408), bodies to 8 KiB (413)
and JSON bodies to 32 levels of nesting (400); at most 16 connections at
once, where a new connection takes the place of the oldest one still waiting
for its client, so slow clients cannot lock honest ones out (503 only when all
16 are busy answering). Bound to loopback only (the config refuses anything
else): there is no authentication, the trust boundary is the machine.

Routes::

    GET  /status             the status document (top-level node, s1..s5, algedonic, peers)
    GET  /health             {"ok": true}
    POST /alarm              {"intensity": 0..1, "source": NAME, "reason"?: TEXT}
                             -> 201 {"id", "delivered": true, "critical", "durable": true};
                             202 when adapted away or folded into a storm, or when the
                             store refused the record for now ("durable": false)
    POST /alarm/{id}/ack     -> {"id", "acked": true, "state"}; {id} is the id or any unique
                             prefix (1-32 hex digits; 404 when no alarm has it, 409 when
                             several do); acknowledges mesh-wide
    POST /alarm/{id}/clear   -> {"id", "cleared": true, "state"}: the condition is over
    GET  <routes>            routes added by the composition (/metrics, /dashboard, /view.json)
    POST <post_routes>       JSON routes added by the composition (/command: web/command_route.py)

A POST must say ``Content-Type: application/json`` (415 otherwise): a page of
another site open in the operator's browser cannot make it send one without
a CORS preflight, which nothing here answers. An alarm raised or acknowledged
here is durable when the answer says so: the answer waits until the node's
record of it is committed to its store (the mesh document), so a kill -9
right after it loses nothing.

:func:`serve_status` composes it with a runtime: the server starts as one of
the runtime's services (``Runtime.add_service``), so it is up before the
runtime reports started, and writes its port to ``status.port`` in the data
directory (how ``vsm-edge status`` finds a node on an ephemeral port).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import trio

from .._errors import AgentError
from ..vsm.algedonic import SignalError
from .http import (
    HEAD_TIMEOUT_S,
    BodyReader,
    HttpError,
    HttpResponse,
    HttpServer,
    json_response,
    require_json_post,
)
from .json_input import JsonInputError, decode_json

if TYPE_CHECKING:
    from ..config.schema import StatusConfig
    from ..vsm.runtime import Runtime

__all__ = ["StatusServer", "serve_status"]

log = logging.getLogger("vsm_edge.agent.web")

MAX_BODY = 8 * 1024
MAX_CONNECTIONS = 16
_ACK = re.compile(r"^/alarm/([0-9a-fA-F]{1,32})/(ack|clear)$")
ACK_CANDIDATES_SHOWN = 5
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class StatusServer(HttpServer):
    """The routes above on ``host:port`` (see :class:`~.http.HttpServer` for ``run``)."""

    what = "status endpoint"

    def __init__(
        self, runtime: Runtime, host: str, port: int, *, head_timeout_s: float = HEAD_TIMEOUT_S
    ) -> None:
        super().__init__(host, port, max_connections=MAX_CONNECTIONS, head_timeout_s=head_timeout_s)
        self.runtime = runtime
        self.routes: dict[str, Callable[[], HttpResponse]] = {}  # extra GET routes
        # extra POST routes: handler(decoded JSON body)
        self.post_routes: dict[str, Callable[[Any], Awaitable[HttpResponse]]] = {}
        self.bound_port: int | None = None

    async def serve(
        self,
        port_file: Path | None = None,
        *,
        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`run`, then write the bound port to ``port_file`` (if given).

        Raises :class:`AgentError` naming ``[status] port`` when it cannot listen.
        """
        async with trio.open_nursery() as nursery:
            try:
                port: int = await nursery.start(self.run)
            except AgentError as exc:
                # Most often a second agent on this host, on the default port.
                written = "" if port_file is None else f" (written to {port_file})"
                raise AgentError(
                    f"{exc}; another agent on this host? set [status] port to a free port, "
                    f"or port = 0 for any free one{written}"
                ) from None
            self.bound_port = port
            if port_file is not None:
                _write_port_file(port_file, port)
            task_status.started(port)

    async def handle(self, request: h11.Request, read_body: BodyReader) -> HttpResponse:
        method = request.method.decode("ascii", "replace")
        target = request.target.decode("ascii", "replace").split("?", 1)[0]
        runtime = self.runtime
        if target == "/status":
            _allow(method, "GET")
            return json_response(runtime.status().to_json())
        if target == "/health":
            _allow(method, "GET")
            return json_response({"ok": True, "node": runtime.node})
        if target == "/alarm":
            _allow(method, "POST")
            require_json_post(request)
            try:
                obj = decode_json(await read_body(MAX_BODY))
            except JsonInputError as exc:
                raise HttpError(400, str(exc)) from None
            response = self._raise(obj)
            if response.status == 201 and not await runtime.alarms.persist_now():
                response = _not_durable(response)  # raised here, written when the store recovers
            return response
        match = _ACK.match(target)
        if match:
            _allow(method, "POST")
            require_json_post(request)
            alarm_id = self._resolve_alarm(match.group(1).lower())
            if match.group(2) == "ack":
                entry = runtime.ack_alarm(alarm_id)
            else:
                entry = runtime.alarms.clear_alarm(alarm_id)
            if entry is None:  # gone between resolving and acknowledging
                raise HttpError(404, f"no alarm with an id starting {match.group(1)}")
            durable = await runtime.alarms.persist_now()
            done = "acked" if match.group(2) == "ack" else "cleared"
            return json_response(
                {"id": entry.id, done: True, "state": entry.state, "durable": durable},
                200 if durable else 202,
            )
        post = self.post_routes.get(target)
        if post is not None:
            _allow(method, "POST")
            require_json_post(request)
            try:
                obj = decode_json(await read_body(MAX_BODY))
            except JsonInputError as exc:
                raise HttpError(400, str(exc)) from None
            return await post(obj)
        extra = self.routes.get(target)
        if extra is not None:
            _allow(method, "GET")
            return extra()  # one that raises answers 500 (HttpServer)
        raise HttpError(404, f"no route {target}")

    def _resolve_alarm(self, prefix: str) -> str:
        """The one alarm id ``prefix`` starts; 404 when none does, 409 when several do."""
        matches = sorted(self.runtime.alarms.ledger.resolve(prefix))
        if not matches:
            raise HttpError(404, f"no alarm with an id starting {prefix}")
        if len(matches) > 1:
            some = ", ".join(matches[:ACK_CANDIDATES_SHOWN])
            more = "" if len(matches) <= ACK_CANDIDATES_SHOWN else ", ..."
            raise HttpError(
                409,
                f"alarm id prefix {prefix} is ambiguous: {len(matches)} alarms start with it "
                f"({some}{more}); give more digits",
            )
        return matches[0]

    def _raise(self, obj: Any) -> HttpResponse:
        if not isinstance(obj, dict):
            raise HttpError(400, "expected a JSON object")
        unknown = set(obj) - {"intensity", "source", "reason"}
        if unknown:
            raise HttpError(400, f"unknown field {sorted(unknown)[0]!r}")
        intensity, source, reason = obj.get("intensity"), obj.get("source"), obj.get("reason", "")
        if (
            isinstance(intensity, bool)
            or not isinstance(intensity, int | float)
            or not 0 <= intensity <= 1
        ):
            raise HttpError(400, "intensity must be a number in [0, 1]")
        if not isinstance(source, str) or not _NAME.match(source):
            raise HttpError(400, "source must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if not isinstance(reason, str) or len(reason) > 512:
            raise HttpError(400, "reason must be text of at most 512 characters")
        try:
            alarm = self.runtime.raise_signal(
                f"operator.{source}", float(intensity), reason or "operator alarm"
            )
        except SignalError as exc:
            raise HttpError(400, str(exc)) from None
        if alarm is None:
            return json_response(
                {"id": None, "delivered": False, "reason": "adapted or folded into a storm"}, 202
            )
        return json_response(
            {"id": alarm.signal.id, "delivered": True, "critical": alarm.critical, "durable": True},
            201,
        )


def _not_durable(response: HttpResponse) -> HttpResponse:
    """A raise the store did not take yet: 202, ``durable`` false."""
    obj = json.loads(response.body)
    obj["durable"] = False
    return json_response(obj, 202)


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise HttpError(405, f"method {method} not allowed (use {allowed})")


def serve_status(runtime: Runtime, config: StatusConfig, data_dir: Path | None) -> StatusServer:
    """Serve ``runtime``'s status endpoint as its service ``status``.

    ``data_dir`` receives ``status.port`` once the server listens (None: no file).
    """
    server = StatusServer(runtime, config.host, config.port, head_timeout_s=config.head_timeout_s)
    port_file = None if data_dir is None else data_dir / "status.port"

    async def start(*, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        await server.serve(port_file, task_status=task_status)

    runtime.add_service("status", start)
    return server


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(f"{port}\n")
        os.replace(tmp, path)
    except OSError as exc:  # a full disk: the endpoint still serves, unnamed
        tmp.unlink(missing_ok=True)
        log.error("could not write %s: %s", path, exc)  # noqa: TRY400
