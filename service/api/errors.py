"""reelhook's errors as HTTP answers: the one place the exception tree becomes a JSON error body.

The console renders the same errors as pages (:mod:`service.console.view`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core.errors import ReelhookError, ServiceUnavailable
from service.core.lograte import Occasional
from service.storage.space import RETRY_AFTER, out_of_space

log = logging.getLogger(__name__)


def error_response(error: ReelhookError) -> JSONResponse:
    headers = dict(error.headers)
    if error.status_code == 503:
        # Every 503 says when to come back (a client without a hint retries at once).
        headers.setdefault("Retry-After", "1")
    return JSONResponse(error.body(), status_code=error.status_code, headers=headers)


async def handle_reelhook_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ReelhookError)
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 answers, in reelhook's error shape."""
    status_code: int = getattr(exc, "status_code", 500)
    detail = str(getattr(exc, "detail", "")) or "error"
    codes = {404: "not_found", 405: "method_not_allowed"}
    body = {"error": {"code": codes.get(status_code, "http_error"), "message": detail}}
    return JSONResponse(body, status_code=status_code, headers=getattr(exc, "headers", None))


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    return error_response(ReelhookError())


def disk_full() -> ServiceUnavailable:
    """The answer while the disk or the database is full: nothing was stored, try again."""
    return ServiceUnavailable(
        "reelhook is out of storage space and stored nothing; try again later",
        headers={"Retry-After": str(RETRY_AFTER)},
    )


def storage_error_handler() -> Callable[[Request, Exception], Awaitable[Response]]:
    """The handler of database and file errors for one application: 503 + Retry-After when the
    disk is full (that warning logged at most every 10 s: while the disk is full every write
    request fails the same way), else a 500.

    Registered for these exception classes (not ``Exception``), so Starlette answers from its
    exception middleware and the keep-alive connection stays open, where the catch-all handler
    re-raises after answering and the server closes the connection.
    """
    full_disk_log = Occasional(log)

    async def handle_storage_error(request: Request, exc: Exception) -> Response:
        if out_of_space(exc):
            full_disk_log.warning("%s %s: out of space (%s)", request.method, request.url.path, exc)
            return error_response(disk_full())
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(ReelhookError())

    return handle_storage_error
