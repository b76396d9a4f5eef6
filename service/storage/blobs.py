"""A content-addressed blob store in a local folder: files named by their SHA-256 digest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio


class BlobTooLarge(Exception):
    """The stream is longer than the size cap; nothing was kept."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError("not a SHA-256 hex digest")
        return self.root / digest[:2] / digest

    async def write(self, chunks: AsyncIterator[bytes], max_bytes: int) -> tuple[str, int]:
        """Store the stream durably and return (digest, size); raise :class:`BlobTooLarge`."""
        await anyio.Path(self.root / "tmp").mkdir(parents=True, exist_ok=True)
        temporary = self.root / "tmp" / f"{os.getpid()}-{os.urandom(8).hex()}"
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
            final = self.path(digest.hexdigest())
            await anyio.Path(final.parent).mkdir(parents=True, exist_ok=True)
            await anyio.Path(temporary).rename(final)
        finally:
            # Shielded: a download cancelled by shutdown must still not leave its partial file.
            with anyio.CancelScope(shield=True):
                await anyio.Path(temporary).unlink(missing_ok=True)
        return digest.hexdigest(), size

    async def remove_leftovers(self) -> int:
        """Delete partial files an earlier process left behind (it was killed mid-write);
        return how many. This process's own files in progress are kept."""
        folder = anyio.Path(self.root / "tmp")
        if not await folder.is_dir():
            return 0
        ours = f"{os.getpid()}-"
        removed = 0
        async for entry in folder.iterdir():
            if not entry.name.startswith(ours):
                await entry.unlink(missing_ok=True)
                removed += 1
        return removed

    async def exists(self, digest: str) -> bool:
        return await anyio.Path(self.path(digest)).is_file()
