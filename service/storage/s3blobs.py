"""The blob store on S3-compatible storage: objects at ``prefix/sha256`` in one bucket, shared by
every node (docs/architecture.md, "Blobs").

Writes are spooled, not held in memory: the key is the content's digest, known only once the
whole stream has been read, and a mirrored file may be as large as ``REELHOOK_MIRROR_MAX_BYTES``
(500 MB by default). So the stream goes to a temporary file in a local spool folder while it is
hashed (and capped), then is uploaded: one ``PutObject`` with ``If-None-Match: *`` when it fits in
one part, else a multipart upload in :data:`PART_SIZE` parts. Before uploading, a ``HEAD`` asks
whether the digest is already stored; a second node writing the same digest either finds it there,
is refused with 412 (treated as success), or completes a multipart upload of identical bytes —
each harmless, because the key names the content.

Every failure to talk to S3 (connection refused, timeouts, 5xx, a missing bucket or refused
credentials) is raised as :class:`BlobUnavailable`: the mirror worker retries it on its schedule
and records it as a mirror error only once the schedule is spent.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from botocore.exceptions import BotoCoreError, ClientError

from service.storage.blobs import (
    BlobUnavailable,
    check_digest,
    remove_spool_leftovers,
    spool,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

# S3's minimum part size is 5 MiB (except the last); 8 MiB keeps memory per upload small.
PART_SIZE = 8 * 1024 * 1024
_READ_CHUNK = 64 * 1024


def _unavailable(exc: Exception) -> BlobUnavailable:
    """Describe an S3 failure without credentials: the error code and status, or the class."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return BlobUnavailable(f"S3 answered {error.get('Code', 'an error')} (HTTP {status})")
    return BlobUnavailable(f"S3 could not be reached: {type(exc).__name__}")


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status if isinstance(status, int) else None


class S3BlobStore:
    """Blobs in ``bucket`` under ``prefix``; ``spool`` is a local folder for writes in progress."""

    def __init__(self, client: S3Client, bucket: str, prefix: str, spool_dir: Path) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._spool = spool_dir

    def key(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}/{digest}" if self.prefix else digest

    def local_path(self, digest: str) -> Path | None:
        return None

    async def size(self, digest: str) -> int | None:
        key = self.key(digest)
        try:
            head = await self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _status(exc) == 404 and exc.response.get("Error", {}).get("Code") in (
                "404",
                "NoSuchKey",
                "NotFound",
            ):
                return None
            raise _unavailable(exc) from None
        except BotoCoreError as exc:
            raise _unavailable(exc) from None
        return int(head["ContentLength"])

    async def exists(self, digest: str) -> bool:
        return await self.size(digest) is not None

    async def read(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        key = self.key(digest)
        try:
            answer = await self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end}"
            )
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(_READ_CHUNK):
                    yield chunk
        except ClientError as exc:
            raise _unavailable(exc) from None
        except BotoCoreError as exc:
            raise _unavailable(exc) from None

    async def write(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        """Spool, hash, then upload unless the digest is already stored (see the module)."""
        digest, size, temporary = await spool(self._spool, chunks, max_bytes)
        try:
            if not await self.exists(digest):
                try:
                    if size <= PART_SIZE:
                        await self._put(self.key(digest), temporary)
                    else:
                        await self._multipart(self.key(digest), temporary)
                except ClientError as exc:
                    raise _unavailable(exc) from None
                except BotoCoreError as exc:
                    raise _unavailable(exc) from None
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(temporary).unlink(missing_ok=True)
        return digest, size

    async def _put(self, key: str, path: Path) -> None:
        body = await anyio.Path(path).read_bytes()
        try:
            await self._client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*")
        except ClientError as exc:
            # 412: another node stored this digest since our HEAD — the same bytes.
            if _status(exc) != 412:
                raise

    async def _multipart(self, key: str, path: Path) -> None:
        created = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key)
        upload_id = created["UploadId"]
        parts: list[Any] = []
        try:
            async with await anyio.open_file(path, "rb") as source:
                number = 1
                while chunk := await source.read(PART_SIZE):
                    part = await self._client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
                    number += 1
            await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            # An abandoned upload keeps its parts (and their cost) until aborted.
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ClientError, BotoCoreError):
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id
                    )
            raise

    async def remove_leftovers(self) -> int:
        """Delete spooled files an earlier process left behind (killed mid-write)."""
        return await remove_spool_leftovers(self._spool)
