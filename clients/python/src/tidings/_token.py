"""Minting HS256 client tokens with the server's ``jwt.secret`` (PyJWT)."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, Mapping, Optional

import jwt


def mint_token(
    sub: str,
    *,
    secret: str,
    workspaces: Iterable[str] = (),
    roles: Iterable[str] = (),
    ttl: float = 3600,
    info: Any = None,
    claims: Optional[Mapping[str, Any]] = None,
) -> str:
    """An HS256 JWT for a browser or a test client of Tidings.

    ``ttl`` is in seconds; ``info`` is shown to others in presence; ``claims``
    (``iss``, ``aud``…) are merged last.
    """
    if not sub:
        raise ValueError("mint_token: `sub` is required")
    if not secret:
        raise ValueError("mint_token: `secret` is required")
    if ttl <= 0:
        raise ValueError("mint_token: `ttl` must be a positive number of seconds")
    now = int(time.time())
    payload: Dict[str, Any] = {
        "sub": sub,
        "iat": now,
        "exp": now + int(-(-ttl // 1)),
        "workspaces": list(workspaces),
        "roles": list(roles),
    }
    if info is not None:
        payload["info"] = info
    payload.update(claims or {})
    return jwt.encode(payload, secret, algorithm="HS256")
