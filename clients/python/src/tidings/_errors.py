"""Errors of the server-API clients. Every one is a ``TidingsError``."""

from __future__ import annotations

from typing import Literal, Optional, get_args

ApiErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "permission_denied",
    "unknown_channel",
    "limit_exceeded",
    "not_available",
    "internal",
    "engine_unavailable",
]

API_ERROR_CODES = frozenset(get_args(ApiErrorCode))


class TidingsError(Exception):
    """Base class. ``code`` says what failed; ``attempts`` how many requests were made."""

    def __init__(self, message: str, code: str, attempts: int) -> None:
        super().__init__(message)
        self.message = message
        #: An API error code, ``unexpected_response``, ``connection_failed``,
        #: ``timeout``, ``invalid_request`` (refused before sending: the data
        #: cannot be JSON; ``attempts`` is 0) or ``client_closed`` (a call after
        #: ``close()``/``aclose()``).
        self.code = code
        #: Requests made, retries included.
        self.attempts = attempts


class TidingsApiError(TidingsError):
    """The server answered with an error status."""

    def __init__(self, message: str, code: str, status: int, attempts: int) -> None:
        super().__init__(message, code, attempts)
        #: The HTTP status (400, 401, 404, 413, 503…).
        self.status = status

    @property
    def retryable(self) -> bool:
        """Whether a retry can succeed (5xx, including 503 ``engine_unavailable``)."""
        return self.status >= 500


class TidingsConnectionError(TidingsError):
    """The server could not be reached (refused, reset, DNS)."""

    def __init__(self, message: str, attempts: int, cause: Optional[BaseException] = None) -> None:
        super().__init__(message, "connection_failed", attempts)
        self.__cause__ = cause


class TidingsTimeoutError(TidingsError):
    """No answer within ``timeout``."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message, "timeout", attempts)
