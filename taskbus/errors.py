"""The taskbus error tree. The HTTP layer maps each class to a status in one table.

TaskbusError
├── ConfigError           bad settings: refuse to start
├── Unavailable           Redis unreachable or timing out          → 503 + Retry-After
│   └── DataLost          a worker found a queue's group gone      → 503 on /healthz
└── RequestError          the caller's fault                      → 4xx
    ├── BadRequest              malformed JSON, bad encoding, nesting → 400
    ├── Unauthorized            bad API key, bad webhook signature     → 401
    ├── NotFound                unknown path or task                  → 404
    ├── MethodNotAllowed        → 405 with Allow
    ├── RequestTimeout          body not received in time             → 408
    ├── PayloadTooLarge         → 413
    ├── UnsupportedMediaType    → 415
    └── ValidationError         schema violation, names the field    → 422
"""

from __future__ import annotations


class TaskbusError(Exception):
    """Base of every error taskbus raises on purpose."""


class ConfigError(TaskbusError):
    """Settings that cannot work; raised at start-up, never per request."""


class Unavailable(TaskbusError):
    """Redis did not answer in time. Safe to retry later."""


class DataLost(Unavailable):
    """Redis lost a queue's stream or consumer group (restarted without persistence?)."""


class RequestError(TaskbusError):
    """An error in the request; `code` is the stable machine-readable name."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(RequestError):
    status, code = 400, "bad_request"


class Unauthorized(RequestError):
    """401. `code` says only which kind of check failed: credentials, signature or timestamp."""

    status, code = 401, "unauthorized"

    def __init__(self, message: str, code: str = "unauthorized", headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers)
        self.code = code


class NotFound(RequestError):
    status, code = 404, "not_found"


class MethodNotAllowed(RequestError):
    status, code = 405, "method_not_allowed"

    def __init__(self, message: str, allow: list[str]) -> None:
        super().__init__(message, {"Allow": ", ".join(allow)})


class RequestTimeout(RequestError):
    status, code = 408, "request_timeout"


class PayloadTooLarge(RequestError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(RequestError):
    status, code = 415, "unsupported_media_type"


class ValidationError(RequestError):
    status, code = 422, "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
