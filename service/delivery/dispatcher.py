"""The outbox dispatcher: claims due deliveries under a lease, sends them, records the outcomes.

It is woken in-process when deliveries are committed and otherwise sleeps until the next delivery
is due or the next lease expires; it never polls on a fixed tick. Outcomes are written in batches
by a separate recorder so one slow fsync does not stall sending.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import replace

import anyio

from service.clock import Clock
from service.delivery.retry import RetryPolicy
from service.delivery.sender import AttemptResult, Sender
from service.providers.base import parse_retry_after
from service.storage import deliveries, subscriptions
from service.storage.database import Database
from service.storage.deliveries import AttemptOutcome, Claimed

log = logging.getLogger(__name__)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        sender: Sender,
        policy: RetryPolicy,
        *,
        clock: Clock,
        lease: float,
        concurrency: int,
        per_subscription: int,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._db = db
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._lease = lease
        self._concurrency = concurrency
        self._per_subscription = per_subscription
        self._rng = rng
        self._wake = anyio.Event()
        self._outcomes: list[AttemptOutcome] = []
        self._outcomes_ready = anyio.Event()
        self._in_flight = 0
        self.running = False

    def wake(self) -> None:
        """Tell the dispatcher new deliveries may be due (call after their commit)."""
        self._wake.set()

    async def run(self) -> None:
        """Deliver until cancelled; outcomes already received are recorded before returning."""
        self.running = True
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._record_outcomes)
                while True:
                    try:
                        await self._dispatch_once(tg)
                    except Exception:
                        log.exception("dispatcher cycle failed; retrying in a second")
                        await anyio.sleep(1)
        finally:
            self.running = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._flush()

    async def _dispatch_once(self, tg: anyio.abc.TaskGroup) -> None:
        self._wake = anyio.Event()
        capacity = self._concurrency - self._in_flight
        claimed: list[Claimed] = []
        if capacity > 0:
            now = self._clock()
            async with self._db.transaction() as conn:
                claimed = await deliveries.claim_due(
                    conn,
                    now=now,
                    lease_until=now + self._lease,
                    limit=capacity,
                    per_subscription=self._per_subscription,
                )
            for delivery in claimed:
                self._in_flight += 1
                tg.start_soon(self._deliver, delivery)
            if len(claimed) == capacity:
                return  # more may be due at once
        await self._sleep(busy=self._in_flight > 0)

    async def _sleep(self, *, busy: bool) -> None:
        due = await deliveries.next_due_at(self._db.reader)
        timeout: float | None = None
        if due is not None:
            timeout = due - self._clock()
            if timeout <= 0:
                # Due rows that could not be claimed wait for a busy subscription to free a slot,
                # which wakes us; without one in flight, back off briefly instead of spinning.
                timeout = None if busy else 0.05
        with anyio.move_on_after(timeout):
            await self._wake.wait()

    async def _deliver(self, delivery: Claimed) -> None:
        try:
            try:
                result = await self._sender.send(
                    url=delivery.url,
                    event_id=delivery.event_id,
                    payload=delivery.payload,
                    secrets=[delivery.secret],
                    headers=delivery.headers,
                    timestamp=int(self._clock()),
                )
                outcome = self._judge(delivery, result)
            except Exception as exc:
                # Whatever one subscriber's answer does, it must not stop the dispatcher.
                log.exception("delivery %s failed unexpectedly", delivery.id)
                error = AttemptResult(None, 0.0, error=f"internal error: {type(exc).__name__}")
                outcome = self._judge(delivery, error)
            log.debug(
                "delivery %s of %s to %s: %s (%s)",
                delivery.id,
                delivery.event_id,
                delivery.subscription_id,
                outcome.status,
                outcome.status_code or outcome.error,
            )
            self._outcomes.append(outcome)
            self._outcomes_ready.set()
        finally:
            self._in_flight -= 1
            self.wake()

    def _judge(self, delivery: Claimed, result: AttemptResult) -> AttemptOutcome:
        now = self._clock()
        outcome = AttemptOutcome(
            delivery_id=delivery.id,
            subscription_id=delivery.subscription_id,
            attempted_at=now,
            latency_ms=result.latency_ms,
            status="succeeded",
            status_code=result.status_code,
            error=result.error,
            response_body=result.response_body,
        )
        if result.succeeded:
            return outcome
        if result.status_code == 410:
            # Zapier REST Hooks: 410 Gone means the subscriber is gone for good.
            log.info("subscription %s answered 410 Gone; deleting it", delivery.subscription_id)
            return replace(outcome, status="failed", delete_subscription=True)
        next_at = self._policy.next_attempt_at(
            delivery.attempt,
            now,
            overloaded=result.timed_out or result.status_code == 429,
            retry_after=parse_retry_after(result.retry_after, now),
            rng=self._rng,
        )
        status = "failed" if next_at is None else "pending"
        return replace(outcome, status=status, next_attempt_at=next_at)

    async def _record_outcomes(self) -> None:
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready = anyio.Event()
            if not await self._flush():
                await anyio.sleep(1)
                self._outcomes_ready.set()
            self.wake()

    async def _flush(self) -> bool:
        """Record the outcomes received so far; on failure keep them for the next try."""
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return True
        try:
            async with self._db.transaction() as conn:
                await deliveries.record(conn, batch)
                for outcome in batch:
                    if outcome.delete_subscription:
                        await subscriptions.delete(conn, outcome.subscription_id)
        except BaseException as exc:
            self._outcomes[:0] = batch
            if not isinstance(exc, Exception):
                raise
            log.exception("could not record %d delivery outcomes", len(batch))
            return False
        return True
