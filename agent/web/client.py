"""A small blocking client of the status endpoint (for the CLI; stdlib only)."""

from __future__ import annotations

import http.client
import json
import re
from typing import Any
from urllib.parse import urlsplit

from .._errors import StatusClientError
from .json_input import JsonInputError, decode_json

__all__ = ["DEFAULT_ENDPOINT", "StatusClient"]

DEFAULT_ENDPOINT = "http://127.0.0.1:7787"
MAX_RESPONSE = 4 * 1024 * 1024
_ALARM_ID = re.compile(r"^[0-9a-fA-F]{1,32}$")


class StatusClient:
    """Talks to ``http://127.0.0.1:PORT``. Every failure raises :class:`StatusClientError`."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = 5.0) -> None:
        try:
            parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        except ValueError as exc:  # "Invalid IPv6 URL" for http://[::1
            raise StatusClientError(
                f"endpoint must be http://HOST:PORT, got {endpoint!r} ({exc})"
            ) from None
        if parts.scheme != "http" or not parts.hostname:
            raise StatusClientError(f"endpoint must be http://HOST:PORT, got {endpoint!r}")
        try:
            self.port = parts.port or 80
        except ValueError:
            raise StatusClientError(f"invalid port in {endpoint!r}") from None
        self.host = parts.hostname
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.endpoint = f"http://{host}:{self.port}"
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            payload = None if body is None else json.dumps(body).encode()
            if payload is None and method == "POST":
                payload = b"{}"
            headers = {"content-type": "application/json"} if payload is not None else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read(MAX_RESPONSE + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise StatusClientError(f"cannot reach the agent at {self.endpoint}: {exc}") from None
        finally:
            conn.close()
        if len(data) > MAX_RESPONSE:
            raise StatusClientError(
                f"response from {self.endpoint} larger than {MAX_RESPONSE} bytes"
            )
        try:
            decoded = decode_json(data)
        except JsonInputError as exc:
            raise StatusClientError(f"{self.endpoint}{path} did not answer JSON: {exc}") from None
        if response.status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else decoded
            raise StatusClientError(
                f"{method} {path}: HTTP {response.status}: {message}",
                http_status=response.status,
                detail=str(message),
            )
        return response.status, decoded

    def status(self) -> dict[str, Any]:
        _, doc = self.request("GET", "/status")
        if not isinstance(doc, dict):
            raise StatusClientError("status is not a JSON object")
        return doc

    def raise_alarm(self, intensity: float, source: str, reason: str = "") -> dict[str, Any]:
        body: dict[str, Any] = {"intensity": intensity, "source": source}
        if reason:
            body["reason"] = reason
        _, doc = self.request("POST", "/alarm", body)
        return dict(doc)

    def command(
        self, node: str, unit: str, cmd: str, value: Any = None, *, timeout_s: float = 5.0
    ) -> dict[str, Any]:
        """``POST /command`` and wait for the outcome (``{"id", "node", "status", "why", "at"}``).

        The HTTP wait is the command's timeout plus this client's own.
        """
        body: dict[str, Any] = {"node": node, "unit": unit, "cmd": cmd, "timeout_s": timeout_s}
        if value is not None:
            body["value"] = value
        waiting = StatusClient(self.endpoint, timeout_s=self.timeout_s + timeout_s)
        _, doc = waiting.request("POST", "/command", body)
        if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            raise StatusClientError(f"{self.endpoint}/command did not answer an outcome")
        return dict(doc)

    def ack_alarm(self, alarm_id: str) -> dict[str, Any]:
        """Acknowledge the alarm whose id is or starts with ``alarm_id`` (hex digits).

        Raises :class:`StatusClientError` saying so when no alarm or several match.
        """
        if not _ALARM_ID.match(alarm_id):
            raise StatusClientError(f"an alarm id is 1-32 hex digits, got {alarm_id!r}")
        try:
            _, doc = self.request("POST", f"/alarm/{alarm_id.lower()}/ack")
        except StatusClientError as exc:
            if exc.http_status in (404, 409) and exc.detail.startswith(("no alarm", "alarm id")):
                raise StatusClientError(
                    f"{exc.detail} (at {self.endpoint})", http_status=exc.http_status
                ) from None
            raise
        return dict(doc)
