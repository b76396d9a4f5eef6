"""reelhook's errors as HTTP answers: the one place the exception tree becomes a JSON error body.

The console renders the same errors as pages (:mod:`service.console.view`).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.core.errors import ReelhookError


def error_response(error: ReelhookError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


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
