"""Publish to Tidings from a Python backend.

``Tidings`` (sync) and ``AsyncTidings`` (asyncio) call the server API
(``/api/*``) with idempotent retries, timeouts and typed errors;
``mint_token`` makes client tokens.
"""

from tidings._client import AsyncTidings, Tidings, backoff_delay
from tidings._errors import (
    ApiErrorCode,
    TidingsApiError,
    TidingsConnectionError,
    TidingsError,
    TidingsTimeoutError,
)
from tidings._token import mint_token
from tidings._types import (
    Audience,
    EntityEventResult,
    EntityRef,
    EventEnvelope,
    EventMeta,
    HistoryOrder,
    HistoryResult,
    InfoResult,
    NodeInfo,
    PresenceMember,
    PresenceResult,
    Published,
)

__all__ = [
    "ApiErrorCode",
    "AsyncTidings",
    "Audience",
    "EntityEventResult",
    "EntityRef",
    "EventEnvelope",
    "EventMeta",
    "HistoryOrder",
    "HistoryResult",
    "InfoResult",
    "NodeInfo",
    "PresenceMember",
    "PresenceResult",
    "Published",
    "Tidings",
    "TidingsApiError",
    "TidingsConnectionError",
    "TidingsError",
    "TidingsTimeoutError",
    "backoff_delay",
    "mint_token",
]

__version__ = "0.1.0"
