"""Request and response types of the server API (docs/openapi.json).

Results are the API's JSON as it arrives.
"""

from __future__ import annotations

from typing import Any, List, Literal, Optional, TypedDict

#: ``history(order=...)``: oldest first (the default) or newest first.
HistoryOrder = Literal["oldest", "newest"]


class _EntityRefRequired(TypedDict):
    type: str
    id: str


class EntityRef(_EntityRefRequired, total=False):
    """The entity an event concerns (``meta.entity``); ``version`` may be ``None``."""

    version: Optional[int]


class EventMeta(TypedDict, total=False):
    """Publisher metadata; each field appears in the event only when given."""

    actor: str
    correlation_id: str
    entity: EntityRef


class Audience(TypedDict, total=False):
    """Only connections whose ``sub`` is listed, or that hold a listed role, receive the event."""

    users: List[str]
    roles: List[str]


class Published(TypedDict):
    """Where one event landed."""

    channel: str
    offset: int
    id: str


class EntityEventResult(TypedDict):
    """``event`` is ``{entity.type}.{action}``; ``results`` are the workspace,
    entity-type and entity channels, in that order."""

    event: str
    results: List[Published]


class _EventEnvelopeRequired(TypedDict):
    type: Literal["event"]
    channel: str
    offset: int
    id: str
    event: str
    ts: str
    data: Any


class EventEnvelope(_EventEnvelopeRequired, total=False):
    """An event as subscribers receive it."""

    meta: EventMeta


class HistoryResult(TypedDict):
    """``GET /api/history``."""

    type: Literal["history"]
    channel: str
    epoch: str
    offset: int
    complete: bool
    events: List[EventEnvelope]


class _PresenceMemberRequired(TypedDict):
    user: str
    status: Literal["online", "away", "busy"]
    clients: List[str]


class PresenceMember(_PresenceMemberRequired, total=False):
    """One user on a channel."""

    info: Any


class PresenceResult(TypedDict):
    """``GET /api/presence``."""

    channel: str
    members: List[PresenceMember]


class NodeInfo(TypedDict):
    """One live node."""

    name: str
    connections: int
    uptime_seconds: int
    version: str


class InfoResult(TypedDict):
    """``GET /api/info``."""

    node: str
    version: str
    engine: Literal["memory", "redis"]
    nodes: List[NodeInfo]
