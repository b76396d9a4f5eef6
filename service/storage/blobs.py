"""Content-addressed blob stores: videos kept under their SHA-256 digest.

Two implementations of :class:`BlobStore`: :class:`LocalBlobStore`, files in a local folder (the
default), and :class:`service.storage.s3blobs.S3BlobStore`, objects in an S3-compatible bucket so
that a file mirrored by one node is served by any node (docs/architecture.md, "Blobs").
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio

_HEX = frozenset("0123456789abcdef")
_READ_CHUNK = 64 * 1024


class BlobTooLarge(Exception):
    """The stream is longer than the size cap; nothing was kept."""


class BlobUnavailable(Exception):
    """The store could not be reached or failed to answer; the same call may work later. The
    message names the failure, never a credential."""


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is a lower-case SHA-256 hex digest; raise ValueError otherwise."""
    if len(digest) != 64 or not _HEX.issuperset(digest):
        raise ValueError("not a SHA-256 hex digest")
    return digest


class BlobStore(Protocol):
    """Where stored videos live, named by digest. Writing the same bytes twice, from one node or
    two, stores them once and is harmless."""

    async def write(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        """Store the stream durably and return (digest, size); raise :class:`BlobTooLarge` past
        ``max_bytes`` (nothing kept) or :class:`BlobUnavailable`."""
        ...

    async def size(self, digest: str) -> int | None:
        """The stored blob's size in bytes, or None when it is not stored."""
        ...

    async def exists(self, digest: str) -> bool: ...

    def read(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of a stored blob, in chunks."""
        ...

    def local_path(self, digest: str) -> Path | None:
        """The blob's file when the store is a local folder (served directly), else None."""
        ...

    async def remove_leftovers(self) -> int:
        """Delete partial writes an earlier process left behind; return how many."""
        ...


class LocalBlobStore:
    """Blobs as files in ``root``: ``root/ab/abcdef…``, written to ``root/tmp`` then renamed, so a
    reader never sees a partial file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest

    def local_path(self, digest: str) -> Path | None:
        return self.path(digest)

    async def write(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        """Store the stream durably and return (digest, size); raise :class:`BlobTooLarge`."""
        digest, size, temporary = await spool(self.root / "tmp", chunks, max_bytes)
        try:
            final = self.path(digest)
            await anyio.Path(final.parent).mkdir(parents=True, exist_ok=True)
            await anyio.Path(temporary).rename(final)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.Path(temporary).unlink(missing_ok=True)
        return digest, size

    async def remove_leftovers(self) -> int:
        """Delete partial files an earlier process left behind (it was killed mid-write);
        return how many. This process's own files in progress are kept."""
        return await remove_spool_leftovers(self.root / "tmp")

    async def exists(self, digest: str) -> bool:
        return await anyio.Path(self.path(digest)).is_file()

    async def size(self, digest: str) -> int | None:
        try:
            return (await anyio.Path(self.path(digest)).stat()).st_size
        except FileNotFoundError:
            return None

    async def read(self, digest: str, start: int, end: int) -> AsyncIterator[bytes]:
        async with await anyio.open_file(self.path(digest), "rb") as source:
            await source.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = await source.read(min(_READ_CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk


async def spool(
    folder: Path, chunks: AsyncIterator[bytes], max_bytes: int
) -> tuple[str, int, Path]:
    """Write the stream to a new file in ``folder`` (fsynced), hashing it on the way; return
    (digest, size, file). The caller removes the file; on any error it is removed here."""
    await anyio.Path(folder).mkdir(parents=True, exist_ok=True)
    temporary = folder / f"{os.getpid()}-{os.urandom(8).hex()}"
    digest = hashlib.sha256()
    size = 0
    try:
        async with await anyio.open_file(temporary, "wb") as out:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(f"larger than {max_bytes} bytes")
                digest.update(chunk)
                await out.write(chunk)
            await out.flush()
            await anyio.to_thread.run_sync(os.fsync, out.wrapped.fileno())
    except BaseException:
        # Shielded: a download cancelled by shutdown must still not leave its partial file.
        with anyio.CancelScope(shield=True):
            await anyio.Path(temporary).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size, temporary


async def remove_spool_leftovers(folder: Path) -> int:
    """Delete files in ``folder`` not written by this process; return how many."""
    directory = anyio.Path(folder)
    if not await directory.is_dir():
        return 0
    ours = f"{os.getpid()}-"
    removed = 0
    async for entry in directory.iterdir():
        if not entry.name.startswith(ours):
            await entry.unlink(missing_ok=True)
            removed += 1
    return removed
