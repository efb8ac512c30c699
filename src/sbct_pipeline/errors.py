"""Errors: one tree, raised by every stage, mapped to HTTP only at the edge (``http.py``).

::

    PipelineError                 base; ``code`` is the stable machine-readable name
    +-- BadRequest                400: malformed JSON or a field that breaks the schema
    +-- Unauthorized              401: missing or wrong token
    +-- Forbidden                 403: a valid token that may not touch this resource
    +-- NotFound                  404: no such resource (for this app)
    +-- Conflict                  409: the resource exists / is in a conflicting state
    +-- PayloadTooLarge           413: body over SBCT_MAX_BODY_BYTES
    +-- UnsupportedMediaType      415: not application/json
    +-- RateLimited               429: over a per-app limit; ``retry_after`` seconds
    +-- Unavailable               503: broker/database down or queue over its limit
    |   +-- BrokerUnavailable         the broker did not confirm in time
    |   +-- StorageUnavailable        PostgreSQL did not answer
    +-- RetryLater                consumer side: transient, try the message again later
    +-- PermanentFailure          consumer side: will never succeed; dead-letter with reason
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(PipelineError):
    """The request body or a parameter breaks the schema; the message names the field."""

    status = 400
    code = "bad_request"


class Unauthorized(PipelineError):
    """Missing or wrong credentials."""

    status = 401
    code = "unauthorized"


class Forbidden(PipelineError):
    """Valid credentials that may not touch this resource."""

    status = 403
    code = "forbidden"


class NotFound(PipelineError):
    """No such resource for this caller."""

    status = 404
    code = "not_found"


class Conflict(PipelineError):
    """The request conflicts with the resource's current state."""

    status = 409
    code = "conflict"


class PayloadTooLarge(PipelineError):
    """The body is larger than the configured maximum."""

    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(PipelineError):
    """The body is not JSON."""

    status = 415
    code = "unsupported_media_type"


class RateLimited(PipelineError):
    """Over a per-app rate limit; retry after ``retry_after`` seconds."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(PipelineError):
    """A dependency is down or saturated; retry after ``retry_after`` seconds."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: float = 2.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class BrokerUnavailable(Unavailable):
    """RabbitMQ did not accept or confirm a publish in time."""

    code = "broker_unavailable"


class StorageUnavailable(Unavailable):
    """PostgreSQL did not answer."""

    code = "storage_unavailable"


class RetryLater(PipelineError):
    """Consumer side: a transient failure; the message is retried after ``delay`` seconds."""

    code = "retry_later"

    def __init__(self, message: str, *, delay: float | None = None,
                 counts_as_attempt: bool = True) -> None:
        super().__init__(message)
        self.delay = delay
        self.counts_as_attempt = counts_as_attempt


class PermanentFailure(PipelineError):
    """Consumer side: the message can never succeed; it is dead-lettered with this reason."""

    code = "permanent_failure"
