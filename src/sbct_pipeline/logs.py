"""Logging: structlog configured once, JSON lines (console when stderr is a TTY).

``request_id`` / ``app_id`` are bound through contextvars by the ingress middleware and the
consumer wrapper, so one webhook can be followed from the ingress to the CleverTap export.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure(level: str = "info", *, json: bool | None = None) -> None:
    """Configure structlog and stdlib logging; idempotent."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_dumps) if json
                     else structlog.dev.ConsoleRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level.lower()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Library loggers (aiohttp access log is off; aio-pika reconnect warnings stay visible).
    logging.basicConfig(level=max(_LEVELS[level.lower()], logging.WARNING), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def bind(*, clear: bool = False, **values: Any) -> None:
    """Bind context (request_id, app_id, ...) to every log line of this task."""
    if clear:
        structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**values)
