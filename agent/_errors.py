"""The exception tree of vsm_edge.agent.

Everything the agent raises on purpose derives from :class:`AgentError`; no
third-party exception (tomllib, nacl, cbor2, h11) leaks past the module that
caught it.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "ConfigError",
    "PolicyError",
    "StatusClientError",
    "StatusError",
    "UnitError",
]


class AgentError(Exception):
    """Base of every exception raised on purpose by vsm_edge.agent."""


class ConfigError(AgentError):
    """The configuration is invalid. ``key`` is the dotted path of the bad key.

    ``str(err)`` reads ``config error: s3.budgets.s1.capacity: must be > 0, got -1``.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"config error: {key}: {problem}" if key else f"config error: {problem}")


class PolicyError(AgentError):
    """A policy document was rejected (bad signature, unknown key, stale version, bad shape)."""


class UnitError(AgentError):
    """A unit could not be loaded or declared something invalid."""


class StatusClientError(AgentError):
    """The status endpoint of a running agent could not be reached or answered an error.

    When it answered an error, ``http_status`` is its status code and ``detail``
    its message; else ``http_status`` is None.
    """

    def __init__(self, message: str, *, http_status: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.detail = detail


class StatusError(AgentError):
    """A status document does not have the documented shape (``from_json`` of a status type).

    ``str(err)`` names the place first: ``status.s3.budgets.s1.tokens: expected a
    number, got a string``; ``path`` holds that place alone.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
