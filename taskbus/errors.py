"""The taskbus error tree. The HTTP layer maps each class to a status in one table
(`taskbus.http.STATUS`); `code` is the stable machine-readable name in error bodies.

TaskbusError
├── ConfigError           bad settings: refuse to start
├── PermanentError        raised by a handler: fail the task now, no further attempts
├── Cancelled             raised by `ctx.raise_if_cancelled()`: the task ends cancelled
├── Unavailable           the state store (Redis) or the channel (Redis, Kafka) did not answer
│   │                     in time; safe to retry later                    → 503 + Retry-After
│   └── DataLost          a queue's consumer group or stream vanished     → 503 on /healthz
└── RequestError          the caller's fault                              → 4xx
    ├── BadRequest              malformed JSON, bad encoding, nesting     → 400
    ├── Unauthorized            bad API key, bad webhook signature        → 401
    ├── Forbidden               an action on a read-only console          → 403
    ├── NotFound                unknown path or task                      → 404
    ├── Conflict                the task's state forbids it (finished)    → 409
    ├── RequestTimeout          body not received in time                 → 408
    ├── PayloadTooLarge                                                   → 413
    ├── UnsupportedMediaType                                              → 415
    └── ValidationError         schema violation, names the field         → 422
"""

from __future__ import annotations


class TaskbusError(Exception):
    """Base of every error taskbus raises on purpose."""


class ConfigError(TaskbusError):
    """Settings that cannot work; raised at start-up, never per request."""


class PermanentError(TaskbusError):
    """Raise in a handler to fail the task at once: retrying cannot help (bad input, say).
    The task is dead-lettered with this error's type and message."""


class Cancelled(TaskbusError):
    """Raised by `ctx.raise_if_cancelled()` once the task has a cancel request (a handler may
    raise it itself): the attempt ends and the task is `cancelled`, never retried."""


class Unavailable(TaskbusError):
    """The state store or the channel did not answer in time. Safe to retry later."""


class DataLost(Unavailable):
    """A queue's stream or consumer group is gone (Redis restarted without persistence?)."""


class RequestError(TaskbusError):
    """An error in the request; `code` is the stable machine-readable name."""

    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.details: dict[str, object] = {}  # extra members of the error object (a 409's final status)


class BadRequest(RequestError):
    code = "bad_request"


class Unauthorized(RequestError):
    """`code` says only which kind of check failed: credentials, signature or timestamp."""

    code = "unauthorized"

    def __init__(self, message: str, code: str = "unauthorized", headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers)
        self.code = code


class Forbidden(RequestError):
    code = "forbidden"


class NotFound(RequestError):
    code = "not_found"


class Conflict(RequestError):
    """The task's state forbids the action: `status` is the state it is in (a cancel of a task
    that already finished names its final status)."""

    code = "conflict"

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status
        self.details = {"status": status}


class RequestTimeout(RequestError):
    code = "request_timeout"


class PayloadTooLarge(RequestError):
    code = "payload_too_large"


class UnsupportedMediaType(RequestError):
    code = "unsupported_media_type"


class ValidationError(RequestError):
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
