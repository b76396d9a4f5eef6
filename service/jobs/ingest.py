"""Group commit for verified callbacks: one writer stores many callbacks per transaction.

SQLite on WAL with ``synchronous=FULL`` pays one fsync per commit, and aiosqlite one thread hop
per statement; storing callbacks one by one caps ingest at a few thousand per second. Here each
request hands its verified update to a bounded queue and waits; the writer takes everything
queued (up to a batch size), applies it with :func:`lifecycle.apply_updates` in one transaction,
and only after the commit answers every request in the batch. No request is answered before its
callback is durable, and none waits for a timer: an idle writer commits a batch of one at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.core.clock import Clock
from service.core.errors import ServiceUnavailable
from service.core.lograte import Occasional
from service.delivery.publisher import HotClaims, Publisher
from service.jobs.lifecycle import Applied, JobMismatch, UnknownJob, Update, apply_updates
from service.storage.database import Database
from service.storage.space import RETRY_AFTER, out_of_space

log = logging.getLogger(__name__)

_Result = Applied | UnknownJob | JobMismatch | ServiceUnavailable


class Ingest:
    """The callback writer. Run :meth:`run` in the lifespan task group; call :meth:`store`.

    ``mirror`` is :func:`apply_updates`'s. What a batch queued (deliveries, downloads) is
    announced by its commit (:mod:`service.storage.announcements`). ``hot`` (the dispatcher's
    ``hot_claims``) gives each batch room for deliveries written already claimed and handed to
    the dispatcher in memory after the commit (:meth:`Publisher.publish_jobs`).
    """

    def __init__(
        self,
        db: Database,
        publisher: Publisher,
        *,
        clock: Clock,
        capacity: int,
        batch_size: int,
        mirror: bool,
        hot: Callable[[], HotClaims | None] | None = None,
    ) -> None:
        self._db = db
        self._hot = hot
        self._publisher = publisher
        self._clock = clock
        self._batch_size = batch_size
        self._mirror = mirror
        self._closed = False
        self._full_disk_log = Occasional(log)
        self._queue: asyncio.Queue[tuple[Update, asyncio.Future[_Result]]] = asyncio.Queue(capacity)

    @property
    def depth(self) -> int:
        """Callbacks waiting for their commit."""
        return self._queue.qsize()

    async def store(self, update: Update) -> Applied:
        """Store ``update`` durably and return what it did to its job.

        Raises :class:`ServiceUnavailable` (503 + Retry-After) at once when the queue is full, so
        a burst costs memory up to the queue's bound and no more; the provider sends again.
        Raises :class:`UnknownJob` or :class:`JobMismatch` when the update was refused.
        """
        if self._closed:
            raise _shutting_down()
        future: asyncio.Future[_Result] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((update, future))
        except asyncio.QueueFull:
            raise ServiceUnavailable(
                "reelhook is storing a burst of callbacks; send this one again shortly",
                headers={"Retry-After": "1"},
            ) from None
        # Not shielded: a client that hangs up cancels only this future, never the callback,
        # which the writer has taken from the queue and commits whatever happens to its waiter
        # (it skips a future already done). A shield cost an extra future and two callbacks
        # per callback (docs/performance.md §4).
        result = await future
        if isinstance(result, Exception):
            try:
                raise result
            finally:
                # This frame, which the exception's traceback refers to, must not refer to the
                # exception (here and as the future's result): that cycle would be freed only
                # by the garbage collector, which the served process runs rarely
                # (docs/performance.md §4, "Garbage collection").
                del result, future
        return result

    async def run(self) -> None:
        """Commit queued callbacks in batches until cancelled."""
        try:
            # Callbacks queued while a batch commits make this writer ask for the next turn at
            # once: the turn it frees is kept for it rather than handed to the dispatcher's
            # bookkeeping waiting (docs/performance.md §4).
            with self._db.foreground_pending(self._has_queued):
                while True:
                    batch = [await self._queue.get()]
                    while len(batch) < self._batch_size and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    await self._commit(batch)
        finally:
            self._refuse_waiting()

    def _has_queued(self) -> bool:
        return not self._queue.empty()

    async def _commit(self, batch: list[tuple[Update, asyncio.Future[_Result]]]) -> None:
        # None until the batch is stored or has failed: cancelled in between (shutdown), every
        # request is told to send again. Built only then: an exception per callback built ahead
        # of every commit cost more than the rest of the batch's bookkeeping.
        results: list[_Result] | None = None
        # Room reserved before the commit, sent from after it, given back if it fails.
        hot = self._hot() if self._hot is not None else None
        try:
            # A transaction block, not Database.run_transaction: the batch's Python work (the
            # transitions, payloads, rows) stays on the event loop while SQLite's C work runs on
            # its thread without the GIL; run on the database thread it held the GIL there and
            # cost throughput (docs/performance.md §4).
            # Every request in the batch waits on this commit: it goes before the dispatcher's
            # claims and outcome batches (background transactions) waiting for the writer.
            try:
                async with self._db.transaction() as conn:
                    applied = await apply_updates(
                        conn,
                        self._publisher,
                        [update for update, _ in batch],
                        self._clock(),
                        mirror=self._mirror,
                        hot=hot,
                    )
            except BaseException:
                if hot is not None:
                    hot.abort()
                raise
            results = list(applied)
            # The answers before the hand-over: each request's task is then queued to write its
            # 200 ahead of the workers sending what the batch claimed, which had run first and
            # made every acknowledgement wait for the batch's sends (docs/performance.md §4).
            _answer(batch, results)
            if hot is not None:
                _hand_over(hot)
        except Exception as exc:
            full = out_of_space(exc)
            if full:
                self._full_disk_log.warning(
                    "could not store a batch of %d callbacks: out of space", len(batch)
                )
            else:
                log.exception("could not store a batch of %d callbacks", len(batch))
            wait = str(RETRY_AFTER if full else 1)
            results = [
                ServiceUnavailable(
                    "the callback could not be stored; send it again",
                    headers={"Retry-After": wait},
                )
                for _ in batch
            ]
        finally:
            if results is None:
                results = [_shutting_down() for _ in batch]
            _answer(batch, results)

    def _refuse_waiting(self) -> None:
        self._closed = True
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_result(_shutting_down())


def _answer(batch: list[tuple[Update, asyncio.Future[_Result]]], results: list[_Result]) -> None:
    """Give each waiting request its result. Results, errors included, are values: a future
    whose requester hung up is then dropped silently instead of logging an unretrieved
    exception. Answered ones are left as they are (called again by ``finally``)."""
    for (_, future), result in zip(batch, results, strict=True):
        if not future.done():
            future.set_result(result)


def _hand_over(hot: HotClaims) -> None:
    """Start sending what the committed batch claimed. Never raises: the batch is committed and
    its callbacks are answered as stored whatever happens here; a failure leaves the claimed
    rows in flight under this node's lease, handed back by the next start like any claim."""
    try:
        hot.commit()
    except Exception:
        log.exception("could not hand over the deliveries this batch claimed")


def _shutting_down() -> ServiceUnavailable:
    # One instance per request: an exception raised in many tasks would share its traceback.
    return ServiceUnavailable(
        "reelhook is shutting down; send the callback again", headers={"Retry-After": "1"}
    )
