"""Output mirroring: copies of provider-hosted videos in reelhook's blob store.

Provider output URLs expire (apiframe's after a day, some after an hour). When a job succeeds
with such URLs, the callback's transaction queues one download per output in SQLite (see
:func:`service.lifecycle.apply_update`); this worker copies each into the blob store and the
last one to end publishes ``job.succeeded``, so the event carries a ``mirror_url`` for every
output — or, where a copy could not be made, the provider's URL and the reason. The queue is
durable: a download cut short by a restart is started again.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from functools import partial

import anyio
import anyio.abc
import httpx

from service.core.clock import Clock
from service.core.lograte import Occasional
from service.core.retry import RetrySchedule
from service.core.worker import Backoff, Wakeup, run_worker, until
from service.delivery.publisher import Publisher
from service.jobs.lifecycle import Mirrored, record_mirror
from service.net.failures import NETWORK_ERRORS, NetworkFailure, classify, describe
from service.storage import mirrors
from service.storage.blobs import BlobStore, BlobTooLarge, BlobUnavailable
from service.storage.database import Database
from service.storage.mirrors import MirrorTask
from service.storage.space import out_of_space

log = logging.getLogger(__name__)

# Served as a generic binary type, a file is still taken if it starts like an MP4 (ISO BMFF).
_GENERIC_TYPES = ("", "application/octet-stream", "binary/octet-stream")
_SNIFF_BYTES = 12


@dataclass(frozen=True, slots=True)
class Failure:
    reason: str
    retryable: bool
    # Not the download's fault (reelhook's disk is full): tried again later without using up
    # one of its attempts, so it never turns into a permanent mirror error.
    deferred: bool = False


class Mirrors:
    def __init__(
        self,
        *,
        db: Database,
        publisher: Publisher,
        blobs: BlobStore,
        client: httpx.AsyncClient,
        clock: Clock,
        max_bytes: int,
        timeout: float,
        retry_delays: Sequence[float],
        concurrency: int = 4,
    ) -> None:
        self._db = db
        self._publisher = publisher
        self._blobs = blobs
        self._client = client
        self._clock = clock
        self._max_bytes = max_bytes
        self._timeout = timeout
        # Downloads are retried at fixed intervals, without jitter.
        self._retries = RetrySchedule.for_retries(retry_delays, jitter=0.0)
        self._concurrency = concurrency
        self._wakeup = Wakeup()
        self._active: set[tuple[str, int]] = set()
        # A full disk defers a download by the longest scheduled delay.
        self._defer = max(retry_delays, default=60.0)
        # After an outcome that could not be recorded, a download's slot stays taken for a
        # growing while, so the same row is not fetched again and again (a hot loop).
        self._unrecorded = Backoff(min(retry_delays, default=1.0), 60.0)
        # A full disk defers every finished job's mirror, one after another: a line each was
        # most of the log while full (docs/architecture.md, "Overload and a full disk").
        self._deferrals = Occasional(log)
        self._unrecordable = Occasional(log)

    def wake(self) -> None:
        """Tell the worker downloads may have been queued (call after their commit)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Download queued outputs until cancelled; a cancelled download stays queued."""
        async with anyio.create_task_group() as tg:
            await run_worker("the mirroring worker", partial(self._start_due, tg), self._wakeup)

    async def _start_due(self, tg: anyio.abc.TaskGroup) -> float | None:
        """Start what is due and free to run; return how long to sleep (None: until woken)."""
        now = self._clock()
        free = self._concurrency - len(self._active)
        if free > 0:
            due = await mirrors.due(self._db.reader, now, limit=free + len(self._active))
            # A download that ended while the query ran is in ``due`` but no longer active:
            # record_mirror ignores a second finish, so at worst it is fetched twice.
            for task in due:
                key = (task.job_id, task.output_index)
                if key in self._active or free <= 0:
                    continue
                self._active.add(key)
                free -= 1
                tg.start_soon(self._mirror, task)
        # Due tasks left waiting for a slot are picked up when a running one ends and wakes us.
        return until(await mirrors.next_due_after(self._db.reader, now), self._clock())

    async def _mirror(self, task: MirrorTask) -> None:
        try:
            try:
                result = await self.download(task.url)
            except Exception as exc:
                if out_of_space(exc):
                    result = _no_space()
                else:
                    log.exception(
                        "mirroring output %d of %s failed", task.output_index, task.job_id
                    )
                    result = Failure(f"internal error: {type(exc).__name__}", retryable=False)
            await self._record(task, result)
        except Exception as exc:
            # The row stays pending and is tried again once the back-off has passed.
            wait = self._unrecorded.next()
            if out_of_space(exc):
                self._unrecordable.warning(
                    "could not record the mirror of %s: out of space", task.job_id
                )
            else:
                log.exception("could not record the mirror of %s", task.job_id)
            await anyio.sleep(wait)
        else:
            self._unrecorded.reset()
        finally:
            self._active.discard((task.job_id, task.output_index))
            self.wake()

    async def _record(self, task: MirrorTask, result: Mirrored | Failure) -> None:
        now = self._clock()
        if isinstance(result, Failure) and result.deferred:
            async with self._db.transaction() as conn:
                await mirrors.defer(conn, task, now + self._defer, result.reason, now)
            self._deferrals.warning("mirroring %s deferred: %s", task.job_id, result.reason)
            return
        if isinstance(result, Failure) and result.retryable:
            at = self._retries.next_attempt_at(task.attempts + 1, now)
            if at is not None:
                async with self._db.transaction() as conn:
                    await mirrors.retry_later(conn, task, at, result.reason, now)
                log.info("mirroring %s will be tried again: %s", task.job_id, result.reason)
                return
            result = Failure(f"{result.reason} (after {task.attempts + 1} attempts)", False)
        outcome = result if isinstance(result, Mirrored) else result.reason
        if isinstance(result, Failure):
            log.warning("could not mirror an output of %s: %s", task.job_id, result.reason)
        await record_mirror(self._db, self._publisher, task, outcome, now)

    async def download(self, url: str) -> Mirrored | Failure:
        """Copy the video at ``url`` into the blob store, or say why it could not be."""
        try:
            with anyio.fail_after(self._timeout):
                async with self._client.stream("GET", url) as response:
                    return await self._store(response)
        except TimeoutError:
            return Failure(f"the download took longer than {self._timeout:g} seconds", True)
        except NETWORK_ERRORS as exc:
            what = classify(exc)
            if what is NetworkFailure.REFUSED:
                return Failure(str(exc), False)
            if what is NetworkFailure.INVALID_URL:
                return Failure(f"the output URL is not valid: {exc}", False)
            return Failure(f"the download failed: {describe(exc)}", what.transient)
        except BlobTooLarge:
            return Failure(f"the video is larger than {self._max_bytes} bytes", False)
        except BlobUnavailable as exc:
            # The blob store (S3) is down or unreachable: the download is tried again later.
            return Failure(f"the blob store is unavailable: {exc}", True)
        except OSError as exc:
            if out_of_space(exc):
                return _no_space()
            raise

    async def _store(self, response: httpx.Response) -> Mirrored | Failure:
        status = response.status_code
        if status != 200:
            transient = status in (408, 425, 429) or status >= 500
            return Failure(f"the output URL answered HTTP {status}", transient)
        media_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        chunks = response.aiter_bytes()
        head = b""
        async for chunk in chunks:
            head += chunk
            if len(head) >= _SNIFF_BYTES:
                break
        if not head:
            return Failure("the output URL served an empty file", False)
        if not media_type.startswith("video/"):
            if media_type not in _GENERIC_TYPES or head[4:8] != b"ftyp":
                return Failure(
                    f"the output URL served {media_type or 'no type'}, not a video", False
                )
            media_type = "video/mp4"
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            return Failure(f"the video is larger than {self._max_bytes} bytes", False)

        async def body() -> AsyncIterator[bytes]:
            yield head
            async for chunk in chunks:
                yield chunk

        digest, size = await self._blobs.write(body(), self._max_bytes)
        return Mirrored(digest, size, media_type)


def _no_space() -> Failure:
    return Failure("no space left to store the copy", retryable=True, deferred=True)
