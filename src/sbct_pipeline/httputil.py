"""HTTP utilities: the JSON error middleware and request/response helpers every route uses.

HTTP status codes live only here: handlers raise the :mod:`errors` tree and this middleware
maps it to ``{"error": {"code", "message"}}``; anything unexpected is logged with its
request ID and answered with a generic 500 that reveals nothing internal.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from . import logs, metrics
from .context import REQUEST_ID, SETTINGS
from .errors import (
    BadRequest,
    PayloadTooLarge,
    PipelineError,
    RateLimited,
    Unavailable,
    UnsupportedMediaType,
)

log = logs.get(__name__)

THREAD_PARSE_BYTES = 256 * 1024
# A \u0000 escape not itself escaped (an even run of backslashes before it): PostgreSQL text
# cannot hold NUL, so such a body is refused here rather than failing later in a worker.
_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def error_body(code: str, message: str) -> bytes:
    return orjson.dumps({"error": {"code": code, "message": message}})


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


def _error_response(status: int, code: str, message: str,
                    headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=error_body(code, message), status=status, headers=headers,
                        content_type="application/json")


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large", 415: "unsupported_media_type"}


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Map PipelineError (and aiohttp's own HTTP errors) to the JSON error body."""
    t0 = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource \
        else "unmatched"
    request_id = str(uuid.uuid4())
    logs.bind(clear=True, request_id=request_id)
    if "X-Request-Id" in request.headers:
        logs.bind(client_request_id=request.headers["X-Request-Id"][:100])
    request[REQUEST_ID] = request_id
    try:
        resp = await handler(request)
    except PipelineError as exc:
        headers = {}
        if isinstance(exc, RateLimited | Unavailable):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if exc.status >= 500:
            log.warning("http.unavailable", route=route, code=exc.code, error=exc.message)
        resp = _error_response(exc.status, exc.code, exc.message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.reason
        if exc.status == 413:
            limit = request.app[SETTINGS].max_body_bytes
            message = f"the body is larger than the limit of {limit} bytes (SBCT_MAX_BODY_BYTES)"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
        elif exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        resp = _error_response(exc.status, code, message,
                               {k: v for k, v in exc.headers.items() if k == "Allow"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("http.internal_error", route=route)
        resp = _error_response(500, "internal", "internal error; see the server log for "
                               f"request_id {request_id}")
    resp.headers["X-Request-Id"] = request_id
    metrics.HTTP_REQUESTS.labels(route=route, method=request.method,
                                 status=str(resp.status)).inc()
    metrics.HTTP_SECONDS.labels(route=route, status=str(resp.status)).observe(
        time.perf_counter() - t0)
    return resp


# ---------------------------------------------------------------- request helpers

async def read_body(request: web.Request) -> bytes:
    """The raw body of a JSON request; 415 for another content type, 413 over the limit."""
    ctype = request.headers.get("Content-Type", "")
    if ctype and "json" not in ctype.lower():
        raise UnsupportedMediaType(f"Content-Type must be application/json, not {ctype!r}")
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the body is {request.content_length} bytes; the limit is "
                              f"{limit} (SBCT_MAX_BODY_BYTES)")
    return await request.read()


def decode_json(body: bytes) -> Any:
    """A body decoded as JSON; 400 naming the JSON error (pure: runs in parse processes)."""
    if not body:
        raise BadRequest("the body is empty; a JSON object is required", code="invalid_json")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}", code="invalid_json") from None
    if b"\\u0000" in body and _NUL_ESCAPE.search(body):
        raise BadRequest("strings must not contain the NUL character (\\u0000)",
                         code="invalid_json")
    return value


async def read_json(request: web.Request) -> Any:
    """The body decoded as JSON; 415 for another content type, 400 naming the JSON error."""
    body = await read_body(request)
    if len(body) > THREAD_PARSE_BYTES:
        return await asyncio.to_thread(decode_json, body)
    return decode_json(body)


def text_param(request: web.Request, name: str, max_len: int = 200) -> str:
    """A path parameter as text: 1 to ``max_len`` characters, no NUL; 400 naming it."""
    value = request.match_info[name]
    if not value or len(value) > max_len or "\x00" in value:
        raise BadRequest(f"{name} must be 1-{max_len} characters without NUL",
                         code=f"invalid_{name}")
    return value


def int_query(request: web.Request, name: str, default: int | None, lo: int,
              hi: int) -> int | None:
    """An integer query parameter in ``lo..hi``, ``default`` when absent; 400 naming it."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer",
                         code="invalid_param") from None
    if not lo <= value <= hi:
        raise BadRequest(f"query parameter {name} must be between {lo} and {hi}",
                         code="invalid_param")
    return value


def limit_query(request: web.Request, default: int, hi: int) -> int:
    """The ``limit`` query parameter, 1 to ``hi``."""
    value = int_query(request, "limit", default, 1, hi)
    assert value is not None
    return value


def target_id_param(request: web.Request) -> int:
    """The ``target_id`` path parameter: a 64-bit integer, as CleverTap's targetId."""
    try:
        target_id = int(request.match_info["target_id"])
    except ValueError:
        raise BadRequest("target_id must be an integer", code="invalid_param") from None
    if not -(2**63) <= target_id < 2**63:
        raise BadRequest("target_id is out of range (64-bit integer)", code="invalid_param")
    return target_id


# ---------------------------------------------------------------- graceful shutdown

class InFlight:
    """Counts requests with a body in progress, so shutdown can let them finish first.

    aiohttp's own graceful shutdown stops reading from every connection at once (data that
    arrives later is dropped, aio-libs/aiohttp#2298), so a webhook whose body is still being
    uploaded at SIGTERM would hang until the shutdown timeout and fail. The ingress therefore
    closes its listening socket, waits for these requests (:meth:`wait_idle`), and only then
    runs aiohttp's shutdown. Requests without a body (feed reads, SSE streams) need nothing
    more from the client and are left to aiohttp's shutdown, which waits for or ends them.
    """

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
        if not request.body_exists:
            return await handler(request)
        self.count += 1
        self._idle.clear()
        try:
            resp = await handler(request)
            if self.draining:
                resp.force_close()  # no further request on this keep-alive connection
            return resp
        finally:
            self.count -= 1
            if self.count == 0:
                self._idle.set()

    async def wait_idle(self, limit_s: float) -> bool:
        """Start draining; True once no request with a body is in progress, False on timeout."""
        self.draining = True
        try:
            async with asyncio.timeout(limit_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True


IN_FLIGHT = web.AppKey("in_flight", InFlight)
