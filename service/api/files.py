"""``GET /v1/files/{token}``: a stored video by signed, expiring link, with HTTP Range support."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from service.api.operation import Reply, operation
from service.app.services import services
from service.core.errors import Forbidden, Gone, NotFound
from service.core.tokens import ExpiredToken, InvalidToken

_VIDEO = {"type": "string", "format": "binary"}


@operation(
    summary="Download a stored video",
    tag="files",
    replies={
        200: Reply("The file.", _VIDEO, media_type="video/*"),
        206: Reply("The requested byte range (HTTP Range).", _VIDEO, media_type="video/*"),
    },
    errors=(403, 404, 410),
    authenticated=False,
    # Links travel through chats and tools that append tracking parameters.
    strict_query=False,
)
async def get_file(request: Request) -> Response:
    """A video reelhook stored, by the signed, expiring link found in a job's outputs. Supports
    HTTP Range requests."""
    state = services(request)
    try:
        digest, media_type = state.tokens.verify_file(
            request.path_params["token"], state.settings.file_link_ttl
        )
    except ExpiredToken:
        raise Gone("this link has expired; fetch the job again for a fresh one") from None
    except InvalidToken:
        raise Forbidden("this link is not valid") from None
    try:
        path = state.blobs.path(digest)
    except ValueError:
        raise Forbidden("this link is not valid") from None
    if not await state.blobs.exists(digest):
        raise NotFound("the file is no longer stored")
    return FileResponse(
        path,
        media_type=media_type,
        headers={"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes"},
    )
