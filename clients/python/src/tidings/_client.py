"""The server-API clients: ``Tidings`` (sync) and ``AsyncTidings`` (asyncio).

Both build the same requests and read the same answers (``_Operation``); only
sending and sleeping differ. A logical call is sent as the same bytes on every
attempt, so a publish keeps its idempotency key across retries.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Generic, Iterable, List, Optional, TypeVar, Union, cast
from urllib.parse import urlsplit

import httpx

from tidings._errors import (
    API_ERROR_CODES,
    TidingsApiError,
    TidingsConnectionError,
    TidingsError,
    TidingsTimeoutError,
)
from tidings._types import (
    Audience,
    EntityEventResult,
    EntityRef,
    EventMeta,
    HistoryOrder,
    HistoryResult,
    InfoResult,
    PresenceResult,
    Published,
)

T = TypeVar("T")

def backoff_delay(retry: int, min_backoff: float, max_backoff: float) -> float:
    """Full-jitter backoff: a random delay in ``[0, min(max, min·2^retry))`` seconds,
    so that many publishers retrying after the same outage spread out."""
    ceiling: float = min(max_backoff, min_backoff * 2.0**retry)
    return random.random() * ceiling


@dataclass
class _Operation(Generic[T]):
    """One logical request and how to read its answer."""

    method: str
    path: str
    params: Dict[str, Union[str, int]] = field(default_factory=dict)
    body: Optional[bytes] = None
    read: Callable[[Any], T] = cast(Callable[[Any], T], lambda reply: reply)


@dataclass
class _Failure:
    retry: bool
    error: Callable[[int], TidingsError]


def _compact(fields: Dict[str, Any]) -> Dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not None}


def _encode(path: str, body: Dict[str, Any]) -> bytes:
    """``body`` as UTF-8 JSON: non-ASCII text is sent as itself, not as
    ``\\uXXXX`` escapes that would make it up to six times larger against
    the server's ``api.max_body_size``.

    Data JSON cannot carry (a ``datetime``, a ``Decimal``, a cycle, NaN or
    infinity, a lone surrogate) is a ``TidingsError`` ``invalid_request``, and
    nothing is sent.
    """
    try:
        return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as err:
        # ValueError covers cycles, NaN/infinity and UnicodeEncodeError.
        raise TidingsError(
            f"POST {path}: the request cannot be sent as JSON: {err}", "invalid_request", 0
        ) from err


def _json_body(path: str, fields: Dict[str, Any]) -> bytes:
    return _encode(path, _compact(fields))


def _key(idempotency_key: Optional[str]) -> str:
    return idempotency_key if idempotency_key is not None else str(uuid.uuid4())


def _publish_fields(
    event: str,
    data: Any,
    meta: Optional[EventMeta],
    audience: Optional[Audience],
    exclude_client: Optional[str],
    idempotency_key: Optional[str],
) -> Dict[str, Any]:
    """The fields publish and broadcast share, without ``None``s but with ``data``
    (``null`` is a payload too)."""
    fields = _compact(
        {
            "event": event,
            "meta": meta,
            "audience": audience,
            "exclude_client": exclude_client,
            "idempotency_key": _key(idempotency_key),
        }
    )
    fields["data"] = data
    return fields


def _having(reply: Dict[str, Any], key: str, kind: type) -> Any:
    """``reply`` when its ``key`` is a ``kind``: the method's answer, not a proxy's."""
    if not isinstance(reply.get(key), kind):
        raise TypeError(f"no `{key}` in the answer")
    return reply


def _count(reply: Dict[str, Any], key: str) -> int:
    """``reply[key]`` when it is a whole number (not a bool, not a string)."""
    value = reply.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"no count `{key}` in the answer")
    return value


def _published(reply: Dict[str, Any]) -> Any:
    """``reply`` when it is a publish result (``offset`` and ``id``)."""
    _count(reply, "offset")
    return _having(reply, "id", str)


def _published_list(value: Any) -> List[Any]:
    """``value`` when it is a JSON array of publish results."""
    if not isinstance(value, list):
        raise TypeError("not a JSON array")
    for item in value:
        if not isinstance(item, dict):
            raise TypeError("not a publish result")
        _published(item)
    return value


def _with_results(reply: Dict[str, Any]) -> Any:
    """``reply`` when its ``results`` are publish results."""
    _published_list(reply.get("results"))
    return reply


class _Operations:
    """Builds the request of each API method (shared by both clients)."""

    @staticmethod
    def publish(
        channel: str,
        event: str,
        data: Any,
        meta: Optional[EventMeta],
        audience: Optional[Audience],
        exclude_client: Optional[str],
        idempotency_key: Optional[str],
    ) -> _Operation[Published]:
        body: Dict[str, Any] = {"channel": channel}
        body.update(_publish_fields(event, data, meta, audience, exclude_client, idempotency_key))
        return _Operation(
            "POST", "/api/publish", body=_encode("/api/publish", body), read=_published
        )

    @staticmethod
    def broadcast(
        channels: Iterable[str],
        event: str,
        data: Any,
        meta: Optional[EventMeta],
        audience: Optional[Audience],
        exclude_client: Optional[str],
        idempotency_key: Optional[str],
    ) -> _Operation[list[Published]]:
        if isinstance(channels, (str, bytes)):
            # A string is an iterable of characters: one channel per letter.
            raise TypeError("broadcast takes a list of channel names, not one string")
        body: Dict[str, Any] = {"channels": list(channels)}
        body.update(_publish_fields(event, data, meta, audience, exclude_client, idempotency_key))
        return _Operation(
            "POST",
            "/api/broadcast",
            body=_encode("/api/broadcast", body),
            read=lambda reply: cast("list[Published]", _published_list(reply.get("results"))),
        )

    @staticmethod
    def entity_event(
        workspace: str,
        entity: EntityRef,
        action: str,
        data: Any,
        actor: Optional[str],
        correlation_id: Optional[str],
        audience: Optional[Audience],
        exclude_client: Optional[str],
        idempotency_key: Optional[str],
    ) -> _Operation[EntityEventResult]:
        return _Operation(
            "POST",
            "/api/events",
            body=_json_body(
                "/api/events",
                {
                    "workspace": workspace,
                    "entity": entity,
                    "action": action,
                    "data": data,
                    "actor": actor,
                    "correlation_id": correlation_id,
                    "audience": audience,
                    "exclude_client": exclude_client,
                    "idempotency_key": _key(idempotency_key),
                }
            ),
            read=lambda reply: _with_results(_having(reply, "event", str)),
        )

    @staticmethod
    def disconnect(user: str, code: Optional[int], reason: Optional[str]) -> _Operation[int]:
        return _Operation(
            "POST",
            "/api/disconnect",
            body=_json_body("/api/disconnect", {"user": user, "code": code, "reason": reason}),
            read=lambda reply: _count(reply, "disconnected"),
        )

    @staticmethod
    def unsubscribe(user: str, channel: str, reason: Optional[str]) -> _Operation[int]:
        return _Operation(
            "POST",
            "/api/unsubscribe",
            body=_json_body("/api/unsubscribe", {"user": user, "channel": channel, "reason": reason}),
            read=lambda reply: _count(reply, "unsubscribed"),
        )

    @staticmethod
    def presence(channel: str) -> _Operation[PresenceResult]:
        return _Operation(
            "GET", "/api/presence", params={"channel": channel}, read=lambda reply: _having(reply, "members", list)
        )

    @staticmethod
    def history(
        channel: str,
        since: Optional[int],
        epoch: Optional[str],
        limit: Optional[int],
        order: Optional[HistoryOrder],
    ) -> _Operation[HistoryResult]:
        params = _compact(
            {"channel": channel, "since": since, "epoch": epoch, "limit": limit, "order": order}
        )
        return _Operation("GET", "/api/history", params=params, read=lambda reply: _having(reply, "events", list))

    @staticmethod
    def info() -> _Operation[InfoResult]:
        return _Operation("GET", "/api/info", read=lambda reply: _having(reply, "nodes", list))


class _Settings:
    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float,
        retries: int,
        min_backoff: float,
        max_backoff: float,
        api_key_header: bool,
    ) -> None:
        if not url:
            raise ValueError("Tidings: `url` is required")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # Not a transient failure to retry: a configuration error.
            raise ValueError(f"Tidings: `url` must be an http:// or https:// URL, not {url!r}")
        # A key read from a file or an environment variable often ends in a newline.
        api_key = (api_key or "").strip()
        if not api_key:
            raise ValueError("Tidings: `api_key` is required")
        self.base_url = url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if api_key_header:
            self.headers["X-API-Key"] = api_key
        else:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout
        self.retries = retries
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff

    def request(self, operation: _Operation[Any]) -> Dict[str, Any]:
        headers = dict(self.headers)
        if operation.body is not None:
            headers["Content-Type"] = "application/json"
        return {
            "method": operation.method,
            "url": self.base_url + operation.path,
            "params": operation.params or None,
            "content": operation.body,
            "headers": headers,
        }


def _read(operation: _Operation[T], response: httpx.Response) -> Union[T, _Failure]:
    where = f"{operation.method} {operation.path}"
    status = response.status_code
    if response.is_success:
        try:
            reply = response.json()
            if not isinstance(reply, dict):
                raise TypeError("not a JSON object")
            return operation.read(reply)
        except (ValueError, KeyError, TypeError):
            # Not the API's answer (a proxy's page): not retried, since the
            # request may have been carried out.
            return _Failure(
                False,
                lambda attempts: TidingsApiError(
                    f"{where}: the answer is not the API's (HTTP {status})",
                    "unexpected_response",
                    status,
                    attempts,
                ),
            )
    code = "unexpected_response"
    message = f"HTTP {status}"
    try:
        error = response.json().get("error", {})
        if error.get("code") in API_ERROR_CODES:
            code = error["code"]
        if isinstance(error.get("message"), str):
            message = f"{error['message']} (HTTP {status})"
    except (ValueError, AttributeError):
        pass  # A proxy's HTML error page: keep `unexpected_response`.
    return _Failure(
        status >= 500,
        lambda attempts: TidingsApiError(f"{where}: {message}", code, status, attempts),
    )


def _transport_failure(operation: _Operation[Any], err: httpx.RequestError, timeout: float) -> _Failure:
    where = f"{operation.method} {operation.path}"
    if isinstance(err, httpx.TimeoutException):
        return _Failure(
            True,
            lambda attempts: TidingsTimeoutError(f"{where}: no answer within {timeout} s", attempts),
        )
    return _Failure(
        True,
        lambda attempts: TidingsConnectionError(
            f"{where}: connection failed ({err.__class__.__name__}: {err})", attempts, err
        ),
    )


def _closed(operation: _Operation[Any], attempts: int) -> TidingsError:
    return TidingsError(
        f"{operation.method} {operation.path}: the client is closed (make calls before close() / aclose())",
        "client_closed",
        attempts,
    )


class Tidings:
    """Publishes to a Tidings server and manages its connections (synchronous).

    ``timeout`` (seconds) bounds each attempt's connect, write and every read;
    ``retries`` are made after the first attempt on connection errors, timeouts
    and 5xx answers (never on 4xx), with full-jitter backoff between
    ``min_backoff`` and ``max_backoff`` seconds.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        api_key_header: bool = False,
    ) -> None:
        self._settings = _Settings(url, api_key, timeout, retries, min_backoff, max_backoff, api_key_header)
        self._http = httpx.Client(timeout=timeout)

    def __enter__(self) -> "Tidings":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Closes the connection pool; later calls raise ``TidingsError`` ``client_closed``."""
        self._http.close()

    def publish(
        self,
        channel: str,
        event: str,
        data: Any,
        *,
        meta: Optional[EventMeta] = None,
        audience: Optional[Audience] = None,
        exclude_client: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> Published:
        """Publishes one event to one channel. Without ``idempotency_key`` one is
        generated for this call and reused by its retries."""
        operation = _Operations.publish(channel, event, data, meta, audience, exclude_client, idempotency_key)
        return self._call(operation, timeout, retries)

    def broadcast(
        self,
        channels: Iterable[str],
        event: str,
        data: Any,
        *,
        meta: Optional[EventMeta] = None,
        audience: Optional[Audience] = None,
        exclude_client: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> list[Published]:
        """Publishes one event to several channels; one result per channel, one ``id``."""
        operation = _Operations.broadcast(channels, event, data, meta, audience, exclude_client, idempotency_key)
        return self._call(operation, timeout, retries)

    def entity_event(
        self,
        workspace: str,
        entity: EntityRef,
        action: str,
        *,
        data: Any = None,
        actor: Optional[str] = None,
        correlation_id: Optional[str] = None,
        audience: Optional[Audience] = None,
        exclude_client: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> EntityEventResult:
        """Publishes an entity change as ``{entity.type}.{action}`` (any action name)
        to the workspace, the entity type and the entity channel."""
        operation = _Operations.entity_event(
            workspace, entity, action, data, actor, correlation_id, audience, exclude_client, idempotency_key
        )
        return self._call(operation, timeout, retries)

    def disconnect(
        self,
        user: str,
        *,
        code: Optional[int] = None,
        reason: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> int:
        """Closes every connection of ``user``; returns how many were closed."""
        return self._call(_Operations.disconnect(user, code, reason), timeout, retries)

    def unsubscribe(
        self,
        user: str,
        channel: str,
        *,
        reason: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> int:
        """Removes ``user``'s connections from ``channel``; returns how many were removed."""
        return self._call(_Operations.unsubscribe(user, channel, reason), timeout, retries)

    def presence(self, channel: str, *, timeout: Optional[float] = None, retries: Optional[int] = None) -> PresenceResult:
        """Who is on ``channel`` (one member per user)."""
        return self._call(_Operations.presence(channel), timeout, retries)

    def history(
        self,
        channel: str,
        *,
        since: Optional[int] = None,
        epoch: Optional[str] = None,
        limit: Optional[int] = None,
        order: Optional[HistoryOrder] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> HistoryResult:
        """Reads ``channel``'s history (every event: audience rules do not apply)."""
        return self._call(_Operations.history(channel, since, epoch, limit, order), timeout, retries)

    def info(self, *, timeout: Optional[float] = None, retries: Optional[int] = None) -> InfoResult:
        """The answering node, its version and engine, and every live node."""
        return self._call(_Operations.info(), timeout, retries)

    def _call(self, operation: _Operation[T], timeout: Optional[float], retries: Optional[int]) -> T:
        settings = self._settings
        timeout = settings.timeout if timeout is None else timeout
        retries = settings.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            if self._http.is_closed:
                raise _closed(operation, attempt - 1)
            try:
                response = self._http.request(**settings.request(operation), timeout=timeout)
                outcome = _read(operation, response)
            # Transport errors, and an answer that cannot be decoded (a
            # broken Content-Encoding).
            except httpx.RequestError as err:
                outcome = _transport_failure(operation, err, timeout)
            if not isinstance(outcome, _Failure):
                return outcome
            if not outcome.retry or attempt > retries:
                raise outcome.error(attempt)
            time.sleep(backoff_delay(attempt - 1, settings.min_backoff, settings.max_backoff))


class AsyncTidings:
    """``Tidings`` for asyncio: the same methods and behaviour, awaited.

    Cancelling the awaiting task stops the call at once, without further retries.
    A client belongs to one event loop (its connection pool does): create it
    inside the loop that uses it, not once for several ``asyncio.run()`` calls.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        api_key_header: bool = False,
    ) -> None:
        self._settings = _Settings(url, api_key, timeout, retries, min_backoff, max_backoff, api_key_header)
        self._http = httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> "AsyncTidings":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the connection pool; later calls raise ``TidingsError`` ``client_closed``."""
        await self._http.aclose()

    async def publish(
        self,
        channel: str,
        event: str,
        data: Any,
        *,
        meta: Optional[EventMeta] = None,
        audience: Optional[Audience] = None,
        exclude_client: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> Published:
        """See ``Tidings.publish``."""
        operation = _Operations.publish(channel, event, data, meta, audience, exclude_client, idempotency_key)
        return await self._call(operation, timeout, retries)

    async def broadcast(
        self,
        channels: Iterable[str],
        event: str,
        data: Any,
        *,
        meta: Optional[EventMeta] = None,
        audience: Optional[Audience] = None,
        exclude_client: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> list[Published]:
        """See ``Tidings.broadcast``."""
        operation = _Operations.broadcast(channels, event, data, meta, audience, exclude_client, idempotency_key)
        return await self._call(operation, timeout, retries)

    async def entity_event(
        self,
        workspace: str,
        entity: EntityRef,
        action: str,
        *,
        data: Any = None,
        actor: Optional[str] = None,
        correlation_id: Optional[str] = None,
        audience: Optional[Audience] = None,
        exclude_client: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> EntityEventResult:
        """See ``Tidings.entity_event``."""
        operation = _Operations.entity_event(
            workspace, entity, action, data, actor, correlation_id, audience, exclude_client, idempotency_key
        )
        return await self._call(operation, timeout, retries)

    async def disconnect(
        self,
        user: str,
        *,
        code: Optional[int] = None,
        reason: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> int:
        """See ``Tidings.disconnect``."""
        return await self._call(_Operations.disconnect(user, code, reason), timeout, retries)

    async def unsubscribe(
        self,
        user: str,
        channel: str,
        *,
        reason: Optional[str] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> int:
        """See ``Tidings.unsubscribe``."""
        return await self._call(_Operations.unsubscribe(user, channel, reason), timeout, retries)

    async def presence(
        self, channel: str, *, timeout: Optional[float] = None, retries: Optional[int] = None
    ) -> PresenceResult:
        """See ``Tidings.presence``."""
        return await self._call(_Operations.presence(channel), timeout, retries)

    async def history(
        self,
        channel: str,
        *,
        since: Optional[int] = None,
        epoch: Optional[str] = None,
        limit: Optional[int] = None,
        order: Optional[HistoryOrder] = None,
        timeout: Optional[float] = None,
        retries: Optional[int] = None,
    ) -> HistoryResult:
        """See ``Tidings.history``."""
        return await self._call(_Operations.history(channel, since, epoch, limit, order), timeout, retries)

    async def info(self, *, timeout: Optional[float] = None, retries: Optional[int] = None) -> InfoResult:
        """See ``Tidings.info``."""
        return await self._call(_Operations.info(), timeout, retries)

    async def _call(self, operation: _Operation[T], timeout: Optional[float], retries: Optional[int]) -> T:
        settings = self._settings
        timeout = settings.timeout if timeout is None else timeout
        retries = settings.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            if self._http.is_closed:
                raise _closed(operation, attempt - 1)
            try:
                response = await self._http.request(**settings.request(operation), timeout=timeout)
                outcome = _read(operation, response)
            # Transport errors, and an answer that cannot be decoded (a
            # broken Content-Encoding).
            except httpx.RequestError as err:
                outcome = _transport_failure(operation, err, timeout)
            if not isinstance(outcome, _Failure):
                return outcome
            if not outcome.retry or attempt > retries:
                raise outcome.error(attempt)
            await asyncio.sleep(backoff_delay(attempt - 1, settings.min_backoff, settings.max_backoff))
