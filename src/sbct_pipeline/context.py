"""Context: the typed keys under which the aiohttp application keeps its resources."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from .auth import Authenticator
from .broker import Broker
from .outbox import Outbox
from .settings import Settings

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", asyncpg.Pool)
BROKER = web.AppKey("broker", Broker)
AUTH = web.AppKey("auth", Authenticator)
OUTBOX = web.AppKey("outbox", Outbox)
REQUEST_ID = web.RequestKey("request_id", str)
