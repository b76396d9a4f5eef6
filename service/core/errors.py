"""The exception tree reelhook raises, each with its HTTP status and error code (turned into
responses in one place: :mod:`service.api.errors`).

    ReelhookError                    500 internal
    ├── BadRequest                   400 bad_request
    │   ├── PayloadTooLarge          413 payload_too_large
    │   └── RequestTimeout           408 request_timeout
    ├── ValidationFailed             422 validation_failed
    ├── Unauthorized                 401 unauthorized
    ├── Forbidden                    403 forbidden
    ├── NotFound                     404 not_found
    ├── Conflict                     409 conflict
    ├── Gone                         410 gone
    ├── TooManyRequests              429 rate_limited
    │   └── QuotaExceeded            429 quota_exceeded
    └── ProviderFailed               502 provider_error
        └── ProviderUnavailable      503 provider_unavailable

Each class's docstring is its default message; ``details`` carries machine-readable context such as
the names of the offending fields.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ReelhookError(Exception):
    """Something went wrong inside reelhook."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or (self.__doc__ or self.code).strip()
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class BadRequest(ReelhookError):
    """The request could not be read."""

    status_code = 400
    code = "bad_request"


class PayloadTooLarge(BadRequest):
    """The request body is larger than allowed."""

    status_code = 413
    code = "payload_too_large"


class RequestTimeout(BadRequest):
    """The request body did not arrive in time."""

    status_code = 408
    code = "request_timeout"


class ValidationFailed(ReelhookError):
    """The request is well-formed but its content is invalid."""

    status_code = 422
    code = "validation_failed"

    @classmethod
    def field(cls, name: str, problem: str) -> ValidationFailed:
        return cls(f"{name}: {problem}", details={"fields": {name: problem}})

    @classmethod
    def fields(cls, problems: dict[str, str]) -> ValidationFailed:
        summary = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        return cls(summary, details={"fields": problems})


class Unauthorized(ReelhookError):
    """A valid X-API-Key header is required."""

    status_code = 401
    code = "unauthorized"


class Forbidden(ReelhookError):
    """This API key may not do that."""

    status_code = 403
    code = "forbidden"


class NotFound(ReelhookError):
    """No such resource."""

    status_code = 404
    code = "not_found"


class Conflict(ReelhookError):
    """The request conflicts with the current state."""

    status_code = 409
    code = "conflict"


class Gone(ReelhookError):
    """The resource is no longer available."""

    status_code = 410
    code = "gone"


class TooManyRequests(ReelhookError):
    """Too many requests; retry after the given delay."""

    status_code = 429
    code = "rate_limited"


class RangeNotSatisfiable(ReelhookError):
    """The requested byte range lies outside the file."""

    status_code = 416
    code = "range_not_satisfiable"


class QuotaExceeded(TooManyRequests):
    """This API key is at one of its quotas."""

    code = "quota_exceeded"

    @classmethod
    def of(cls, setting: str, limit: int, what: str) -> QuotaExceeded:
        """The error for a key holding ``limit`` of ``what`` already, the most its quota
        (``setting``, an environment variable) allows."""
        return cls(
            f"this API key already has {limit} {what}, the most {setting} allows",
            details={"quota": setting, "limit": limit},
        )


class ServiceUnavailable(ReelhookError):
    """reelhook cannot take this request right now; retry after the given delay."""

    status_code = 503
    code = "unavailable"


class ProviderFailed(ReelhookError):
    """The video provider failed to accept the job."""

    status_code = 502
    code = "provider_error"


class ProviderUnavailable(ProviderFailed):
    """The video provider is unavailable; try again later."""

    status_code = 503
    code = "provider_unavailable"
