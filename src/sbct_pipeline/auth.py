"""Auth: API tokens (``<token_id>.<secret>``, stored as SHA-256, compared in constant time),
the admin bearer token, and a short-lived cache so the webhook hot path skips the database.

A deleted token stops working within ``CACHE_TTL_S`` seconds on every ingress process.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

import asyncpg

from . import storage
from .errors import Unauthorized

CACHE_TTL_S = 5.0
TOKEN_PREFIX = "sbct"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token; ``secret`` is shown once and never stored."""

    token_id: str
    token: str


def new_token() -> tuple[IssuedToken, bytes]:
    token_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}_{token_id}.{secrets.token_urlsafe(32)}"
    return IssuedToken(token_id, token), storage.hash_token(token)


def new_app_id() -> str:
    return "app_" + secrets.token_hex(8)


class Authenticator:
    """Resolves API tokens to app IDs, caching hits for a few seconds."""

    def __init__(self, pool: asyncpg.Pool, admin_token: str | None) -> None:
        self.pool = pool
        self.admin_token = admin_token
        self._cache: dict[str, tuple[str, float]] = {}

    async def app_for_token(self, token: str | None) -> str:
        if not token:
            raise Unauthorized("the Api-token header is required", code="missing_token")
        now = time.monotonic()
        hit = self._cache.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        token_id = _token_id(token)
        row = await storage.get_token(self.pool, token_id) if token_id else None
        if row is None or not hmac.compare_digest(bytes(row["token_hash"]),
                                                  storage.hash_token(token)):
            raise Unauthorized("the Api-token is not valid", code="invalid_token")
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (row["app_id"], now + CACHE_TTL_S)
        return str(row["app_id"])

    def forget(self) -> None:
        self._cache.clear()

    def check_admin(self, authorization: str | None) -> None:
        if not self.admin_token:
            raise Unauthorized("the admin API is disabled: set SBCT_ADMIN_TOKEN",
                               code="admin_disabled")
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.admin_token.encode()):
            raise Unauthorized("Authorization: Bearer <SBCT_ADMIN_TOKEN> is required",
                               code="invalid_admin_token")


def _token_id(token: str) -> str | None:
    head, dot, _ = token.partition(".")
    if not dot or not head.startswith(TOKEN_PREFIX + "_"):
        return None
    return head[len(TOKEN_PREFIX) + 1 :]
