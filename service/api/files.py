"""``GET /v1/files/{token}``: a stored video by signed, expiring link, with HTTP Range support.

A local blob store's file is served by Starlette's ``FileResponse``; a remote one (S3) is streamed
from the store, one byte range at a time, with the same Range semantics (single ranges; a request
for several ranges gets the whole file, as RFC 9110 §14.2 allows).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from service.api.operation import Reply, operation
from service.app.services import services
from service.core.errors import (
    BadRequest,
    Forbidden,
    Gone,
    NotFound,
    RangeNotSatisfiable,
    ServiceUnavailable,
)
from service.core.tokens import ExpiredToken, InvalidToken
from service.storage.blobs import BlobStore, BlobUnavailable, check_digest

_VIDEO = {"type": "string", "format": "binary"}
_CACHING = {"Cache-Control": "private, max-age=3600", "Accept-Ranges": "bytes"}


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
        check_digest(digest)
    except ValueError:
        raise Forbidden("this link is not valid") from None
    blobs = state.blobs
    path = blobs.local_path(digest)
    if path is not None:
        if not await blobs.exists(digest):
            raise NotFound("the file is no longer stored")
        return FileResponse(path, media_type=media_type, headers=_CACHING)
    return await _streamed(request, blobs, digest, media_type)


async def _streamed(request: Request, blobs: BlobStore, digest: str, media_type: str) -> Response:
    try:
        size = await blobs.size(digest)
    except BlobUnavailable as exc:
        raise ServiceUnavailable(
            f"the file store is unavailable: {exc}", headers={"Retry-After": "5"}
        ) from None
    if size is None:
        raise NotFound("the file is no longer stored")
    chosen = _range(request.headers.get("range"), size)
    headers = dict(_CACHING)
    if chosen is None:
        start, end, status = 0, size - 1, 200
    else:
        (start, end), status = chosen, 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1)
    if request.method == "HEAD" or size == 0:
        return Response(status_code=status, headers=headers, media_type=media_type)
    return StreamingResponse(
        _body(blobs, digest, start, end), status_code=status, headers=headers, media_type=media_type
    )


async def _body(blobs: BlobStore, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
    # Headers are sent by now: a store failing mid-body can only cut the response short, which
    # the client sees as a truncated download (Content-Length) and may resume with Range.
    async for chunk in blobs.read(digest, start, end):
        yield chunk


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The single byte range asked for, inclusive; None for the whole file. Raises BadRequest for
    a malformed header and RangeNotSatisfiable (with ``Content-Range: bytes */size``) for a range
    outside the file."""
    if header is None:
        return None
    units, equals, spec = header.partition("=")
    if not equals or units.strip().lower() != "bytes":
        raise BadRequest("the Range header must be bytes=start-end")
    if "," in spec:
        return None
    first, dash, last = (part.strip() for part in spec.strip().partition("-"))
    if not dash or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        raise BadRequest("the Range header must be bytes=start-end")
    if last and not last.isdigit():
        raise BadRequest("the Range header must be bytes=start-end")
    if not first:
        # A suffix range: the last N bytes.
        length = int(last)
        if length == 0:
            raise RangeNotSatisfiable(
                "the range is empty", headers={"Content-Range": f"bytes */{size}"}
            )
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise RangeNotSatisfiable(
            f"the file has {size} bytes", headers={"Content-Range": f"bytes */{size}"}
        )
    if end < start:
        raise BadRequest("the Range header's end is before its start")
    return start, end
