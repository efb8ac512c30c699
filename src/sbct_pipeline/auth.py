"""Auth: API tokens (``sbct_<token_id>.<secret>``), user session tokens
(``sbcs_<token_id>.<secret>``), the admin bearer token, and a short-lived cache so the webhook
hot path skips the database.

Tokens are stored as SHA-256 and compared in constant time. A deleted API token stops working
at once on the ingress process that deleted it (its cache entry is dropped) and within
``CACHE_TTL_S`` seconds on every other ingress process (their cache entries expire). A session
token is valid for one user of one app until its ``expires_at``; the cache never outlives that.
However many requests miss the API token cache at once, one query per token refreshes it
(:mod:`singleflight`).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

import asyncpg

from . import storage
from .errors import Forbidden, Unauthorized
from .singleflight import Flights

CACHE_TTL_S = 5.0
TOKEN_PREFIX = "sbct"
SESSION_PREFIX = "sbcs"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token; ``secret`` is shown once and never stored."""

    token_id: str
    token: str


def new_token() -> tuple[IssuedToken, bytes]:
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}_{token_id}.{secrets.token_urlsafe(32)}"
    return IssuedToken(token_id, token), storage.hash_token(token)


def new_session_token() -> tuple[IssuedToken, bytes]:
    token_id = secrets.token_hex(8)
    token = f"{SESSION_PREFIX}_{token_id}.{secrets.token_urlsafe(32)}"
    return IssuedToken(token_id, token), storage.hash_token(token)


def new_app_id() -> str:
    return "app_" + secrets.token_hex(8)


class Authenticator:
    """Resolves API tokens to app IDs, caching hits for a few seconds."""

    def __init__(self, pool: asyncpg.Pool, admin_token: str | None) -> None:
        self.pool = pool
        self.admin_token = admin_token
        self._cache: dict[str, tuple[str, float]] = {}
        self._lookups: Flights[str, str | None] = Flights()
        # session token -> (app_id, user_id, expires_at epoch s, cached until monotonic)
        self._sessions: dict[str, tuple[str, str, float, float]] = {}

    async def app_for_token(self, token: str | None) -> str:
        if not token:
            raise Unauthorized("the Api-token header is required", code="missing_token")
        hit = self._cache.get(token)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        # One database look-up per token however many requests miss the cache at once
        # (it expires under load for every request in flight together).
        app_id = await self._lookups.run(token, lambda: self._load(token))
        if app_id is None:
            raise Unauthorized("the Api-token is not valid", code="invalid_token")
        return app_id

    async def _load(self, token: str) -> str | None:
        token_id = _token_id(token)
        row = await storage.get_token(self.pool, token_id) if token_id else None
        if row is None or not hmac.compare_digest(bytes(row["token_hash"]),
                                                  storage.hash_token(token)):
            return None
        # Not when forget() ran meanwhile: the row may be of a token deleted since.
        if self._lookups.current(token):
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[token] = (str(row["app_id"]), time.monotonic() + CACHE_TTL_S)
        return str(row["app_id"])

    def forget(self, token_id: str | None = None) -> None:
        """Drop cached API tokens: all, or those of ``token_id`` (just deleted)."""
        if token_id is None:
            self._cache.clear()
            self._lookups.forget()
            return
        head = f"{TOKEN_PREFIX}_{token_id}."
        for token in [t for t in self._cache if t.startswith(head)]:
            del self._cache[token]
        self._lookups.forget(lambda t: t.startswith(head))

    async def feed_app(self, api_token: str | None, authorization: str | None,
                       user_id: str) -> str:
        """The app of a feed request for ``user_id``: by its API token, else a session token.

        401 without credentials, with a wrong or expired token; 403 when a valid session
        token belongs to another user.
        """
        if api_token:
            return await self.app_for_token(api_token)
        scheme, _, value = (authorization or "").partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise Unauthorized("an Api-token header or Authorization: Bearer <session token> "
                               "is required", code="missing_token")
        app_id, owner = await self.session(value)
        if owner != user_id:
            raise Forbidden("this session token is for another user's feed",
                            code="wrong_user")
        return app_id

    async def session(self, token: str) -> tuple[str, str]:
        """(app_id, user_id) of a valid session token; 401 if unknown or expired."""
        now = time.monotonic()
        hit = self._sessions.get(token)
        if hit is None or hit[3] <= now:
            token_id = _token_id(token, SESSION_PREFIX)
            row = await storage.get_session_token(self.pool, token_id) if token_id else None
            if row is None or not hmac.compare_digest(bytes(row["token_hash"]),
                                                      storage.hash_token(token)):
                raise Unauthorized("the session token is not valid", code="invalid_token")
            if len(self._sessions) > 10_000:
                self._sessions.clear()
            hit = (str(row["app_id"]), str(row["user_id"]), row["expires_at"].timestamp(),
                   now + CACHE_TTL_S)
            self._sessions[token] = hit
        if hit[2] <= time.time():
            raise Unauthorized("the session token has expired; request a new one",
                               code="token_expired")
        return hit[0], hit[1]

    def check_admin(self, authorization: str | None) -> None:
        if not self.admin_token:
            raise Unauthorized("the admin API is disabled: set SBCT_ADMIN_TOKEN",
                               code="admin_disabled")
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.admin_token.encode()):
            raise Unauthorized("Authorization: Bearer <SBCT_ADMIN_TOKEN> is required",
                               code="invalid_admin_token")


def _token_id(token: str, prefix: str = TOKEN_PREFIX) -> str | None:
    head, dot, _ = token.partition(".")
    if not dot or not head.startswith(prefix + "_") or "\x00" in token:
        return None
    return head[len(prefix) + 1 :]
