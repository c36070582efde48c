"""``POST /command``: an operator's command to a unit of any node of the mesh.

The request is a JSON object ``{"node", "unit", "cmd", "value"?, "timeout_s"?}``
(``value``: null, a boolean, a number or text; ``timeout_s`` in [0.1, 300],
default 5). The answer, once the outcome is known or the timeout passed, is
``200 {"id", "node", "status", "why", "at"}`` with ``status`` one of
``accepted``, ``refused``, ``done``, ``failed``, ``timed-out``
(docs/protocol.md §6). A malformed request is 400 naming the field; too many
commands in flight 503. The agents' status endpoints serve it, and the
aggregator with ``--commands`` (:class:`CommandServer`, loopback only: the
route has no authentication; whoever reaches it commands with the server's key).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import h11

from ..mesh.commands import (
    DEFAULT_TIMEOUT_S,
    MAX_TIMEOUT_S,
    CommandError,
    CommandOutcome,
    check_name,
)
from .http import (
    BodyReader,
    HttpError,
    HttpResponse,
    ReadOnlyServer,
    Route,
    extend_request_deadline,
    json_response,
    require_json_post,
)
from .json_input import JsonInputError, decode_json

__all__ = ["MAX_BODY", "CommandServer", "Issue", "command_response"]

MAX_BODY = 8 * 1024

Issue = Callable[[str, str, str, Any, float], Awaitable[CommandOutcome]]
"""``issue(node, unit, cmd, value, timeout_s)``: what the agent or aggregator runs."""

_FIELDS = frozenset({"node", "unit", "cmd", "value", "timeout_s"})


async def command_response(issue: Issue, obj: Any) -> HttpResponse:
    """Check the request ``obj`` (decoded JSON), issue it and answer its outcome.

    Raises :class:`HttpError` 400 for a bad request, 503 when too many commands wait.
    """
    if not isinstance(obj, dict):
        raise HttpError(400, "expected a JSON object")
    unknown = set(obj) - _FIELDS
    if unknown:
        raise HttpError(400, f"unknown field {sorted(unknown)[0]!r}")
    timeout = obj.get("timeout_s", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise HttpError(400, "timeout_s must be a number of seconds")
    try:
        for key in ("node", "unit", "cmd"):
            check_name(obj.get(key), key)
    except CommandError as exc:
        raise HttpError(400, str(exc)) from None
    # the HTTP request's own deadline (5 s) must not cut the command's wait short
    extend_request_deadline(min(timeout, MAX_TIMEOUT_S) + 1.0)
    try:
        outcome = await issue(obj["node"], obj["unit"], obj["cmd"], obj.get("value"), timeout)
    except CommandError as exc:
        status = 503 if "waiting for an outcome" in str(exc) else 400
        raise HttpError(status, str(exc)) from None
    return json_response(outcome.to_json())


class CommandServer(ReadOnlyServer):
    """A :class:`ReadOnlyServer` that also answers ``POST /command`` with ``issue``."""

    def __init__(self, routes: Mapping[str, Route], host: str, port: int, issue: Issue) -> None:
        super().__init__(routes, host, port)
        self.issue = issue

    async def handle(self, request: h11.Request, read_body: BodyReader) -> HttpResponse:
        path = request.target.decode("ascii", "replace").split("?", 1)[0]
        if path != "/command":
            return await super().handle(request, read_body)
        if request.method != b"POST":
            raise HttpError(405, "method not allowed (use POST)")
        require_json_post(request)
        try:
            obj = decode_json(await read_body(MAX_BODY))
        except JsonInputError as exc:
            raise HttpError(400, str(exc)) from None
        return await command_response(self.issue, obj)
