"""Minting HS256 client tokens with the server's ``jwt.secret`` (PyJWT)."""

from __future__ import annotations

import collections.abc
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import jwt

#: A user, workspace or role id: a string, or an integer sent as its decimal string.
Id = Union[str, int]


def _id(name: str, value: object) -> str:
    """``value`` as the string the server matches: an ``int`` (not a ``bool``)
    becomes its decimal string; anything else that is not a ``str`` is refused."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"mint_token: `{name}` takes strings or integers, not {type(value).__name__} ({value!r})")


def _ids(name: str, values: Union[Id, Iterable[Id]]) -> List[str]:
    """One id (a ``str`` is one name, not its letters) or an iterable of ids."""
    if isinstance(values, (str, int)):
        return [_id(name, values)]
    if isinstance(values, (bytes, bytearray)) or not isinstance(values, collections.abc.Iterable):
        raise TypeError(f"mint_token: `{name}` takes a string or a list of strings, not {type(values).__name__}")
    return [_id(name, value) for value in values]


def mint_token(
    sub: Id,
    *,
    secret: str,
    workspaces: Union[Id, Iterable[Id]] = (),
    roles: Union[Id, Iterable[Id]] = (),
    ttl: float = 3600,
    info: Any = None,
    claims: Optional[Mapping[str, Any]] = None,
) -> str:
    """An HS256 JWT for a browser or a test client of Tidings.

    ``sub``, and each of ``workspaces`` and ``roles``, is a string or an
    integer (sent as its decimal string, which is what channel names and
    ``audience`` match); a single string is one workspace or role. ``ttl`` is in
    seconds; ``info`` is shown to others in presence; ``claims`` (``iss``,
    ``aud``…) are merged last.
    """
    subject = _id("sub", sub)
    if not subject:
        raise ValueError("mint_token: `sub` is required")
    if not secret:
        raise ValueError("mint_token: `secret` is required")
    if ttl <= 0:
        raise ValueError("mint_token: `ttl` must be a positive number of seconds")
    now = int(time.time())
    payload: Dict[str, Any] = {
        "sub": subject,
        "iat": now,
        "exp": now + int(-(-ttl // 1)),
        "workspaces": _ids("workspaces", workspaces),
        "roles": _ids("roles", roles),
    }
    if info is not None:
        payload["info"] = info
    payload.update(claims or {})
    return jwt.encode(payload, secret, algorithm="HS256")
