"""The outbox dispatcher: claims due deliveries under a lease, sends them, records the outcomes.

It is woken in-process when deliveries are committed and otherwise sleeps until the next delivery
is due or the next lease expires; it never polls on a fixed tick. Outcomes are written in batches
by a separate recorder so one slow fsync does not stall sending.

Recording an outcome also moves the subscription's failure window: a subscription whose every
attempt has failed for ``disable_after`` seconds is disabled, and a ``subscription.disabled`` event
goes to its owner's other subscriptions.

On :meth:`Dispatcher.stop` it claims nothing more, gives the attempts in flight ``shutdown_grace``
seconds to finish, records them, and hands the leases of the rest back for the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import replace
from functools import partial

import anyio

from service.core.clock import Clock, isoformat
from service.core.models import DeliveryStatus, Subscription, SubscriptionStatus
from service.core.retry import RetrySchedule
from service.core.worker import Backoff, Wakeup, run_worker, until
from service.delivery.fairness import Lanes
from service.delivery.publisher import HotClaims, Publisher, subscription_disabled_data
from service.delivery.sender import AttemptResult, Sender
from service.delivery.transform import Renderer, TemplateError
from service.providers.base import parse_retry_after
from service.storage import deliveries, fanouts, subscriptions
from service.storage.database import Connection, Database
from service.storage.deliveries import AttemptOutcome, Claimed, HotLease
from service.storage.space import out_of_space

log = logging.getLogger(__name__)

# How long the final bookkeeping at shutdown (record outcomes, release leases) may take.
_FINAL_WRITE_TIMEOUT = 5.0

SLOW_AFTER = 2.0
"""The default of ``REELHOOK_DELIVERY_SLOW_AFTER``: seconds after which an attempt still waiting
for its answer gives its send slot back and narrows its subscription's lane
(service.delivery.fairness). Without it, subscribers that never answer held the shared send
slots for the whole delivery timeout before a timeout narrowed them: 64 of them stalled every
healthy subscription for about 15 s (bench/results/latest.md, isolation scenario a)."""

PREFETCH = 4
"""Deliveries claimed ahead per subscription, in multiples of its concurrency cap. Claiming is a
write transaction; claiming one row each time a slot frees made claims, not sending, the limit
(about 800 deliveries/s to one subscriber). Claimed rows wait for a slot under their lease, which
no one takes over while this process runs; a process that dies leaves them to the next start.
A subscription is topped up once half of that is left, so a claim takes about half of it. Eight
times the cap measured ~12 µs of CPU per delivery less at one subscriber (half the claims), but
its claims of 32-64 rows took 1-2.7 ms of CPU under ingest, against the 2 ms every claim must
stay under (docs/performance.md §3; docs/performance-journal.md): not taken, except while no
foreground write comes (``QUIET_AFTER``)."""

QUIET_AFTER = 0.25
"""Seconds without a foreground write transaction (ingest, the API) after which a top-up claims
up to twice the prefetch, on SQLite. A claim has ~150 µs of fixed work (the trip to the database
thread, BEGIN, COMMIT, the read and the lease); at one subscriber a top-up of 17 rows paid it for
17 deliveries, and twice the prefetch measured 8-12 µs less CPU per delivery there, all on the
database thread. A quarter of a second: a service's start-up bookkeeping (foreground) is past
early in a drain, and ingest of even four batches a second keeps the prefetch. Beside ingest
claims stay at the prefetch: there a claim of 32-64 rows took
1-2.7 ms, against the 2 ms every claim beside ingest must stay under; a foreground transaction
that arrives during a larger claim waits for it once (~1 ms), and the next top-ups are back at
the prefetch (docs/performance-journal.md, "Larger top-ups while the writer is quiet"). Not on
PostgreSQL, where the cap across nodes cuts each claim to the lane's width anyway."""

BRISK_WITHIN = 1.0
"""Seconds: a subscription topped up again within this of its last claim drains fast enough for
the larger top-ups of a quiet writer (``QUIET_AFTER``). A slow one (a subscriber answering in a
second drains 8 a second) gains nothing from them, and its claims beside a million due rows must
stay small (figure 7's claims under 2 ms, docs/performance-journal.md)."""

CLAIM_AHEAD = 4
"""Deliveries claimed ahead by the whole dispatcher, in multiples of its send slots: what all
subscriptions together may hold claimed (and a quarter of it what those on probation may)."""

RECORD_AFTER = 0.01
"""Seconds an outcome may wait to be recorded with the ones after it, while others are being
sent (see :meth:`Dispatcher._outcome`)."""
RECORD_BATCH = 256
"""Outcomes that are recorded at once, without waiting for ``RECORD_AFTER``."""


class Dispatcher:
    def __init__(
        self,
        db: Database,
        sender: Sender,
        policy: RetrySchedule,
        *,
        clock: Clock,
        lease: float,
        concurrency: int,
        per_subscription: int,
        publisher: Publisher,
        disable_after: float = 0.0,
        shutdown_grace: float = 0.0,
        rng: Callable[[], float] = random.random,
        observe_claim: Callable[[float], None] = lambda seconds: None,
        observe_claimed_at_ingest: Callable[[int], None] = lambda count: None,
        renderer: Renderer | None = None,
        slow_after: float = SLOW_AFTER,
        quiet_after: float = QUIET_AFTER,
    ) -> None:
        self._db = db
        self._sender = sender
        self._policy = policy
        self._clock = clock
        self._lease = lease
        self._per_subscription = per_subscription
        self._publisher = publisher
        self._disable_after = disable_after
        self._shutdown_grace = shutdown_grace
        self._rng = rng
        self._observe_claim = observe_claim
        self._observe_claimed_at_ingest = observe_claimed_at_ingest
        self._renderer = renderer or Renderer()
        self._wakeup = Wakeup()
        self._fanouts = Wakeup()
        # Plain asyncio primitives on the per-delivery path: anyio's CapacityLimiter, Event (which
        # asks sniffio for the backend on every creation) and start_soon cost ~60 µs of event-loop
        # time per delivery, a third of it (docs/performance.md §4). Events are cleared, not
        # replaced.
        self._outcomes: list[AttemptOutcome] = []
        self._outcomes_ready = Wakeup()
        self._record_timer: asyncio.TimerHandle | None = None
        # Subscriptions seen to deliver in order: their outcomes are recorded at once.
        self._fifo: set[str] = set()
        self._record_backoff = Backoff(1.0, 30.0)
        self._in_flight = 0  # claimed and not yet recorded
        self._sending = 0
        # Claimed deliveries per subscription, counted where the claim cap is enforced; each
        # subscription's lane lets ``per_subscription`` of them send at once, so a hanging
        # endpoint holds only its own slots, and one that times out is narrowed to a single slot
        # of a small shared probation pool (see service.delivery.fairness).
        self._busy: Counter[str] = Counter()
        self._lanes = Lanes(per_subscription=per_subscription, concurrency=concurrency)
        self._sends = asyncio.Semaphore(concurrency)
        # Attempts past ``slow_after`` that gave their send slot back: at most ``concurrency``
        # of them (so at most twice ``concurrency`` attempts are open at once; the sender's
        # connection pool is sized for that in service.net.client).
        self._slow_after = slow_after
        self._slow = 0
        self._slow_limit = concurrency
        self._senders: set[asyncio.Task[None]] = set()
        # Claimed deliveries not yet taken by a worker, per subscription, and how many workers
        # each subscription has (see _work).
        self._waiting: dict[str, deque[tuple[Claimed, int]]] = {}
        self._workers: Counter[str] = Counter()
        self._claim_limit = concurrency * CLAIM_AHEAD
        self._prefetch = per_subscription * PREFETCH
        self._quiet_after = quiet_after
        # A subscription is topped up once fewer than this many of its deliveries are claimed,
        # and left out of claims (saturated) while it has this many. On PostgreSQL at most
        # ``per_subscription`` of a subscription's deliveries are in flight across all nodes
        # (claim_due's cluster cap, counting this node's own), so one with that many claimed here
        # is saturated: a claim for it finds nothing, and each wake-up ran one, a write
        # transaction under the cap's advisory lock (docs/scaling.md: the cap bounds claims).
        self._refill_below = max(1, self._prefetch // 2)
        if db.dialect == "postgresql":
            self._refill_below = min(self._refill_below, max(1, per_subscription))
        self._slot_freed = asyncio.Event()
        # Why the claim loop was woken since its last pass: subscriptions that fell to their
        # top-up mark (``_refills``), or anything else (``_woken``: an announcement, the
        # dispatcher running low, probation). Subscriptions whose last claim got all it asked
        # for (``_full``: more may be due) are topped up by a claim alone, without first reading
        # what is due (see _top_up). When the next delivery is due, from the last full pass.
        self._refills: set[str] = set()
        self._woken = True
        self._full: set[str] = set()
        # When each subscription in ``_full`` was last claimed for (time.monotonic()).
        self._claimed_at: dict[str, float] = {}
        self._next_due: float | None = None
        # Subscriptions a claim found due but got fewer of than it asked for: on PostgreSQL the
        # cap counts every delivery in flight in the store, this node's unrecorded ones too, so
        # only recording outcomes makes room for them (see _record_outcomes).
        self._cut_short: set[str] = set()
        self._recorded: set[str] = set()  # subscriptions of the outcomes recorded since then
        # Claimed deliveries whose outcome has not arrived: released, not lost, at shutdown.
        self._unfinished: set[str] = set()
        self._stop_requested = anyio.Event()
        self._stopped = anyio.Event()
        # The senders' task group while running: deliveries claimed at ingest start there.
        self._group: asyncio.TaskGroup | None = None
        self.hot_claimed = 0
        """Deliveries claimed at ingest and handed over in memory so far."""
        self._started = False
        self.running = False

    def wake(self) -> None:
        """New deliveries may be due (``Work.DELIVERIES``), or a slot or outcome is free."""
        self._woken = True
        self._wakeup.set()

    def expand_fanouts(self) -> None:
        """A deferred fan-out was stored (``Work.FANOUTS``): expand it into deliveries."""
        self._fanouts.set()

    def hot_claims(self) -> HotClaims | None:
        """Room for deliveries claimed at ingest, for one write transaction (see
        :class:`service.delivery.publisher.HotClaims`); None while this dispatcher does not
        run (the rows are then written pending, as always)."""
        if self._group is None or self._stop_requested.is_set():
            return None
        lease = HotLease(
            token=secrets.randbits(62),
            owner=self._db.node_id,
            lease_until=self._clock() + self._lease,
            cluster_cap=self._per_subscription,
        )
        return _HotClaims(self, lease, self._db.life)

    async def stop(self) -> None:
        """Stop claiming, let attempts in flight finish within the shutdown grace period, record
        them, release the leases of the rest; return once :meth:`run` has ended."""
        if not self._started:
            return
        self._stop_requested.set()
        await self._stopped.wait()

    async def run(self) -> None:
        """Deliver until :meth:`stop` or cancellation; what has finished is always recorded."""
        self._started = True
        self.running = True
        try:
            await self._release_previous_leases()
            async with asyncio.TaskGroup() as senders:
                self._group = senders
                try:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(
                            run_worker,
                            "the outcome recorder",
                            self._record_outcomes,
                            self._outcomes_ready,
                        )
                        tg.start_soon(
                            run_worker,
                            "the dispatcher",
                            partial(self._dispatch_once, senders),
                            self._wakeup,
                        )
                        # Its first step runs at once: fan-outs a previous run left are expanded.
                        tg.start_soon(
                            run_worker, "the fan-out expansion", self._expand_once, self._fanouts
                        )
                        await self._stop_requested.wait()
                        tg.cancel_scope.cancel()
                    with anyio.move_on_after(self._shutdown_grace):
                        while self._sending:
                            self._slot_freed.clear()
                            await self._slot_freed.wait()
                    if self._in_flight:
                        log.info("shutdown: releasing %d unfinished deliveries", self._in_flight)
                finally:
                    self._group = None
                    for task in self._senders:
                        task.cancel()
        finally:
            self.running = False
            with anyio.CancelScope(shield=True), anyio.move_on_after(_FINAL_WRITE_TIMEOUT):
                await self._flush()
                await self._release_unfinished()
            self._stopped.set()

    async def _release_previous_leases(self) -> None:
        try:
            async with self._db.transaction() as conn:
                if self._db.dialect == "sqlite":
                    released = await deliveries.release(conn, None, self._clock())
                else:
                    # Never another live node's: only leases of dead or unknown nodes.
                    released = await deliveries.release_orphaned(
                        conn, self._clock(), node_timeout=self._db.node_timeout
                    )
                await deliveries.restart_queues(conn, self._clock())
        except Exception:
            # Not fatal: those leases expire on their own and are claimed again then.
            log.exception("could not release the leases of the previous run")
            return
        if released:
            log.info("released %d deliveries left in flight by the previous run", released)

    async def _release_unfinished(self) -> None:
        unfinished = sorted(self._unfinished)
        if not unfinished:
            return
        try:
            async with self._db.transaction() as conn:
                await deliveries.release(conn, unfinished, self._clock(), owner=self._db.node_id)
        except Exception:
            log.exception("could not release %d leases; they expire on their own", len(unfinished))
        else:
            self._unfinished.difference_update(unfinished)

    async def _dispatch_once(self, senders: asyncio.TaskGroup) -> float | None:
        """Claim what is due and start sending it; return how long to sleep."""
        refills, self._refills = self._refills, set()
        woken, self._woken = self._woken, False
        # Only top-ups were asked for, and the last full pass's timer has not run out (a
        # delivery it timed is not left waiting behind a stream of top-ups).
        if not woken and refills and (self._next_due is None or self._next_due > self._clock()):
            rooms = self._top_up(refills)
            if rooms is not None:
                await self._claim(rooms, self._clock(), senders)
                return until(self._next_due, self._clock())
        delay = await self._pass(senders)
        now = self._clock()
        self._next_due = None if delay is None else now + delay
        return delay

    def _top_up(self, refills: set[str]) -> dict[str, int] | None:
        """Rooms for a claim that tops up ``refills`` (subscriptions that fell to their top-up
        mark) without a read of what is due first, or None when that read is needed: when one
        of them may have nothing due (its last claim got less than it asked for), delivers in
        order or is on probation. At one subscriber that read, one trip to the reader's thread
        per claim, cost ~10 µs of CPU per delivery (docs/performance.md §4). A claim that finds
        less than its room takes the subscription out of ``_full``, so the next top-up reads
        first; new deliveries announce themselves (``wake``), which always reads first, so
        other subscriptions' work is found as before."""
        capacity = self._claim_limit - self._in_flight
        # No ingest to wait behind the claim: fewer, larger claims for the subscriptions that
        # drain fast (QUIET_AFTER, BRISK_WITHIN).
        quiet = self._db.dialect == "sqlite" and self._db.foreground_idle() >= self._quiet_after
        brisk_since = time.monotonic() - BRISK_WITHIN
        rooms: dict[str, int] = {}
        for sub in refills:
            if sub not in self._full or sub in self._fifo or self._lanes.on_probation(sub):
                return None
            prefetch = self._prefetch
            if quiet and self._claimed_at.get(sub, -math.inf) > brisk_since:
                prefetch *= 2
            room = min(prefetch - self._busy.get(sub, 0), capacity)
            if room > 0:
                rooms[sub] = room
                capacity -= room
        return rooms

    async def _claim(
        self, rooms: dict[str, int], now: float, senders: asyncio.TaskGroup
    ) -> list[Claimed]:
        """Claim up to ``rooms`` due deliveries per subscription and start sending them."""
        if not rooms:
            return []
        # The life the claim is made in (before it: a death noticed meanwhile voids it).
        life = self._db.life

        async def claim(conn: Connection) -> tuple[list[Claimed], float]:
            started = time.perf_counter()
            claimed = await deliveries.claim_due(
                conn,
                now=now,
                lease_until=now + self._lease,
                rooms=rooms,
                owner=self._db.node_id,
                # PostgreSQL: every node's deliveries in flight count against the cap.
                cluster_cap=self._per_subscription,
            )
            return claimed, time.perf_counter() - started

        # One trip to SQLite's database thread for the whole claim (Database.run_transaction);
        # background: the ingest batch and API writes waiting for the writer go first.
        claimed, seconds = await self._db.run_transaction(claim, durable=False, background=True)
        self._observe_claim(seconds)
        for delivery in claimed:
            self._in_flight += 1
            self._busy[delivery.subscription_id] += 1
            self._queue(delivery, life)
        got = Counter(delivery.subscription_id for delivery in claimed)
        for sub in got:
            self._start_workers(sub, senders)
        for sub, room in rooms.items():
            if got[sub] < room:
                self._cut_short.add(sub)
                self._full.discard(sub)
                self._claimed_at.pop(sub, None)
            else:
                self._full.add(sub)
                self._claimed_at[sub] = time.monotonic()
        return claimed

    async def _pass(self, senders: asyncio.TaskGroup) -> float | None:
        """Read what is due, claim it and start sending it; return how long to sleep."""
        capacity = self._claim_limit - self._in_flight
        # Saturated subscriptions are left out before anything is read: their rows are never
        # walked, and a wake-up while only they have work due takes no write lock at all.
        saturated = [sub for sub, count in self._busy.items() if count >= self._refill_below]
        # Subscriptions on probation (they timed out) claim at most their cap (fairness.py).
        caps = self._probation_caps()
        saturated += [
            sub
            for sub, cap in caps.items()
            if self._busy.get(sub, 0) >= cap and self._busy.get(sub, 0) < self._refill_below
        ]
        # Asked of the reader first: a wake-up with nothing due (a batch of callbacks no one
        # subscribes to) must not take the write lock from the writers that have work.
        now = self._clock()
        ready = await deliveries.due_subscriptions(
            self._db.reader, skip=saturated, now=now, cap=self._prefetch, limit=max(1, capacity)
        )
        for entry in ready:
            if entry.fifo:
                self._fifo.add(entry.subscription_id)
            else:
                self._fifo.discard(entry.subscription_id)
        rooms = deliveries.rooms_for(
            ready, self._busy, per_subscription=self._prefetch, limit=capacity
        )
        for sub, cap in caps.items():
            if sub in rooms:
                room = min(rooms[sub], cap - self._busy.get(sub, 0))
                if room > 0:
                    rooms[sub] = room
                else:
                    del rooms[sub]
        if rooms:
            claimed = await self._claim(rooms, now, senders)
            if claimed:
                if (
                    len(ready) >= max(1, capacity)
                    or sum(rooms.values()) >= capacity
                    or any(self._busy.get(sub, 0) < self._refill_below for sub in rooms)
                ):
                    return 0  # more may be due at once; the next pass skips the saturated
                # Each subscription claimed for is saturated now, so a second pass would only
                # read what is due again to skip them (one read per claim at one subscriber);
                # the others' due times are timed below.
                ready = [entry for entry in ready if entry.subscription_id not in rooms]
        if not ready:
            return None
        delay = ready[0].due - self._clock()
        if delay <= 0:
            # Due rows that could not be claimed wait for a busy subscription to free a slot,
            # which wakes us; without one in flight, back off briefly instead of spinning.
            return None if self._in_flight > 0 else 0.05
        return delay

    async def _expand_once(self) -> float | None:
        """Expand the oldest deferred fan-outs by one bounded step (service/storage/fanouts.py);
        run again at once while more are left, else sleep until the next is stored.

        Background, like the claim: each step holds the writer for a few milliseconds and takes
        its turn after the ingest batches waiting (service/storage/writeorder.py). The delivery
        rows it writes announce themselves (``Work.DELIVERIES``) and wake the claim loop."""
        step = await self._db.run_transaction(fanouts.expand, durable=False, background=True)
        if step.skipped:
            log.debug("fan-out: %d deliveries to deleted subscriptions skipped", step.skipped)
        return 0 if step.more else None

    def _queue(self, delivery: Claimed, life: int) -> None:
        """Queue a claimed delivery, already counted in ``_busy`` and ``_in_flight``, for its
        subscription's workers (started by ``_start_workers``)."""
        self._unfinished.add(delivery.id)
        waiting = self._waiting.get(delivery.subscription_id)
        if waiting is None:
            waiting = self._waiting[delivery.subscription_id] = deque()
        waiting.append((delivery, life))

    def _hot_room(self, sub: str) -> int:
        """How many deliveries of ``sub`` may be claimed before ingest claims no more of them:
        its lane's width, and at full width up to just below where the claim loop tops a
        subscription up (``_refill_below``). An ingest batch brings a burst (a batch of 50
        callbacks is 50 deliveries to each subscriber at once), and at the width alone most of
        a burst took the claim loop's path (docs/performance.md §4). Never more: the claim loop
        always keeps room to claim the subscription's older due deliveries (retries), which
        fresh ones would otherwise starve, and those claimed ahead of the lane wait for its
        slots as the claim loop's own do. On PostgreSQL the width: there the cap counted across
        nodes bounds claims, not only sends (``claim_due``), and would write the rest pending."""
        width = self._lanes.width(sub)
        if width < self._per_subscription or self._db.dialect == "postgresql":
            return width
        return max(width, self._refill_below - 1)

    def _probation_caps(self) -> dict[str, int]:
        """Claim caps of the subscriptions on probation: one delivery claimed each, and none
        at all once a quarter of the claim capacity is theirs, so hanging subscribers cannot hold
        the claims healthy ones need."""
        subs = self._lanes.on_probation_ids
        held = sum(self._busy.get(sub, 0) for sub in subs)
        cap = 1 if held < max(1, self._claim_limit // 4) else 0
        return dict.fromkeys(subs, cap)

    def _start_workers(self, sub: str, senders: asyncio.TaskGroup) -> None:
        """A worker for each waiting delivery, with at most the lane's width of them (each
        worker is busy with a delivery of its own)."""
        waiting = self._waiting.get(sub)
        if not waiting:
            return
        for _ in range(min(len(waiting), self._lanes.width(sub) - self._workers[sub])):
            self._workers[sub] += 1
            task = senders.create_task(self._work(sub, senders))
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)

    async def _work(self, sub: str, senders: asyncio.TaskGroup) -> None:
        """Deliver the subscription's waiting deliveries, one after the other, until none is
        left. A worker per lane slot instead of a task per delivery: creating, scheduling and
        tracking a task cost ~5-9 µs of the event loop's time per delivery (docs/performance.md
        §4). Each delivery still queues for its lane and a send slot on its own (_deliver), so
        widths, probation and the send cap apply as they did to a task per delivery."""
        try:
            while True:
                waiting = self._waiting.get(sub)
                if not waiting:
                    return
                delivery, life = waiting.popleft()
                if not waiting:
                    del self._waiting[sub]
                await self._deliver(delivery, life)
                # A success may have widened the lane: more workers may start.
                if self._lanes.width(sub) > self._workers[sub]:
                    self._start_workers(sub, senders)
        finally:
            self._workers[sub] -= 1
            if not self._workers[sub]:
                del self._workers[sub]

    async def _deliver(self, delivery: Claimed, life: int) -> None:
        # Lane and send slot are taken and given back by plain calls, not context managers: this
        # runs once per delivery, and each async generator context manager, anyio cancel scope
        # and closure cost microseconds of the event loop's time (docs/performance.md §4).
        sub = delivery.subscription_id
        try:
            while True:
                probation = await self._lanes.acquire(sub)
                try:
                    await self._sends.acquire()
                    if self._lanes.over_width(sub):
                        # Its lane was narrowed while it waited for the send slot, so it is over
                        # the lane's new width: back in the lane instead of starting (else the
                        # deliveries that got lane slots before the narrowing would take every
                        # send slot in turn).
                        self._sends.release()
                        continue
                    slot = _SendSlot(self, sub)
                    try:
                        if self._stop_requested.is_set():
                            return  # claimed, not started: its lease is released for the next start
                        if not await self._db.still_holds(
                            life
                        ) and not await deliveries.still_claimed(
                            self._db.reader, delivery.id, delivery.token
                        ):
                            # PostgreSQL: this node was paused past its heartbeat and declared
                            # dead, and the claim went to another node, which sends it. Sending
                            # too would put one delivery out from two nodes (docs/scaling.md);
                            # the row is not ours to release either. (A claim made after the
                            # sweep, before this node learned of it, still carries its token:
                            # that one is ours and goes out.)
                            self._unfinished.discard(delivery.id)
                            log.warning(
                                "dropped delivery %s: its claim went to another node", delivery.id
                            )
                            return
                        self._sending += 1
                        try:
                            await self._attempt(delivery, slot)
                        finally:
                            self._sending -= 1
                    finally:
                        slot.close()
                    return
                finally:
                    self._lanes.release(sub, probation)
        finally:
            self._done(sub)

    def _done(self, sub: str) -> None:
        """One claimed delivery of ``sub`` is finished (or a reservation for one given back)."""
        self._in_flight -= 1
        busy = self._busy[sub] - 1
        if busy:
            self._busy[sub] = busy
        else:
            del self._busy[sub]
        self._slot_freed.set()
        # Claim again once this subscription, or the dispatcher as a whole, runs low, or
        # when it is on probation (claimed one at a time: its next one may be claimed now).
        if self._in_flight == self._claim_limit // 2 or self._lanes.on_probation(sub):
            self.wake()
        elif busy == self._refill_below - 1:
            self._refills.add(sub)
            self._wakeup.set()

    async def _attempt(self, delivery: Claimed, slot: _SendSlot) -> None:
        try:
            body = self._body(delivery)
            if isinstance(body, AttemptOutcome):
                outcome = body
            else:
                started = time.perf_counter()
                result = await slot.send(
                    self._sender.send(
                        url=delivery.url,
                        event_id=delivery.event_id,
                        payload=body,
                        secrets=delivery.secrets,
                        headers=delivery.headers,
                        timestamp=int(self._clock()),
                        content_type=delivery.content_type,
                    )
                )
                if result is None:
                    result = AttemptResult(
                        None,
                        round((time.perf_counter() - started) * 1000, 3),
                        error="timed out (given up early: too many slow attempts open)",
                        timed_out=True,
                    )
                self._lanes.observe(
                    delivery.subscription_id,
                    succeeded=result.succeeded,
                    timed_out=result.timed_out,
                )
                outcome = self._judge(delivery, result)
        except Exception as exc:
            # Whatever one subscriber's answer does, it must not stop the dispatcher.
            log.exception("delivery %s failed unexpectedly", delivery.id)
            error = AttemptResult(None, 0.0, error=f"internal error: {type(exc).__name__}")
            outcome = self._judge(delivery, error)
        # A failed attempt is news an operator wants at INFO (a subscriber is down); a success
        # is routine (DEBUG), and there may be thousands a minute.
        level = logging.DEBUG if outcome.status == DeliveryStatus.SUCCEEDED else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "delivery %s of %s to %s: %s (%s)%s",
                delivery.id,
                delivery.event_id,
                delivery.subscription_id,
                "failed for good" if outcome.status == DeliveryStatus.FAILED else outcome.status,
                outcome.status_code or outcome.error,
                (
                    f"; next attempt due {isoformat(outcome.next_attempt_at)}"
                    if outcome.next_attempt_at is not None
                    else ""
                ),
            )
        self._unfinished.discard(delivery.id)
        self._outcome(outcome)

    def _outcome(self, outcome: AttemptOutcome) -> None:
        """Hand an outcome to the recorder. Under load outcomes are recorded in batches: the
        first of a batch starts a ``RECORD_AFTER`` timer, and the recorder is woken when it
        fires or ``RECORD_BATCH`` have gathered. Each batch is a write transaction of its own
        (about 0.2 ms of the database thread's time), and at one subscriber woken per outcome it
        recorded about 9 per batch (docs/performance.md §4). The recorder is woken at once when
        no other delivery is claimed (a quiet dispatcher adds no delay), and for a FIFO
        subscription, whose next delivery waits for this one's outcome."""
        self._outcomes.append(outcome)
        if (
            len(self._outcomes) >= RECORD_BATCH
            or self._in_flight <= 1
            or outcome.subscription_id in self._fifo
        ):
            self._record_now()
        elif self._record_timer is None:
            self._record_timer = asyncio.get_running_loop().call_later(
                RECORD_AFTER, self._record_now
            )

    def _record_now(self) -> None:
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        self._outcomes_ready.set()

    def _body(self, delivery: Claimed) -> bytes | AttemptOutcome:
        """The bytes to send: the event body, or its rendering through the subscription's
        template. A template that fails on this event fails the delivery for good without sending
        (rendering again would fail again), except when it ran out of time, which is retried; the
        error is in the delivery log."""
        if delivery.template is None:
            return delivery.payload
        try:
            return self._renderer.render(
                delivery.template,
                delivery.content_type,
                delivery.event_id,
                json.loads(delivery.payload),
            )
        except TemplateError as exc:
            if exc.transient:
                # Out of time, perhaps only because the machine was busy: retried on schedule.
                failed = AttemptResult(None, 0.0, error=f"template: {exc}"[:500])
                return self._judge(delivery, failed)
            return AttemptOutcome(
                delivery_id=delivery.id,
                subscription_id=delivery.subscription_id,
                attempted_at=self._clock(),
                latency_ms=0.0,
                status=DeliveryStatus.FAILED,
                token=delivery.token,
                error=f"template: {exc}"[:500],
            )

    def _judge(self, delivery: Claimed, result: AttemptResult) -> AttemptOutcome:
        now = self._clock()
        outcome = AttemptOutcome(
            delivery_id=delivery.id,
            subscription_id=delivery.subscription_id,
            attempted_at=now,
            latency_ms=result.latency_ms,
            status=DeliveryStatus.SUCCEEDED,
            token=delivery.token,
            status_code=result.status_code,
            error=result.error,
            response_body=result.response_body,
        )
        if result.succeeded:
            return outcome
        if result.status_code == 410:
            # Zapier REST Hooks: 410 Gone means the subscriber is gone for good.
            log.info("subscription %s answered 410 Gone; deleting it", delivery.subscription_id)
            return replace(outcome, status=DeliveryStatus.FAILED, delete_subscription=True)
        if delivery.manual:
            # A resend by hand is one attempt; the schedule it had is over (as with Svix).
            return replace(outcome, status=DeliveryStatus.FAILED)
        next_at = self._policy.next_attempt_at(
            delivery.attempt,
            now,
            overloaded=result.timed_out or result.status_code == 429,
            retry_after=parse_retry_after(result.retry_after, now),
            rng=self._rng,
        )
        status = DeliveryStatus.FAILED if next_at is None else DeliveryStatus.PENDING
        return replace(outcome, status=status, next_attempt_at=next_at)

    async def _record_outcomes(self) -> float | None:
        """Record the outcomes received so far, then sleep until more arrive."""
        if not await self._flush():
            # The store failed (a full disk): the outcomes are kept and tried again, less often
            # the longer it lasts.
            await anyio.sleep(self._record_backoff.next())
            return 0.0
        self._record_backoff.reset()
        # A retry scheduled or a ``subscription.disabled`` event queued announces itself on
        # commit (Work.DELIVERIES), and a freed slot wakes the claim loop from the sender that
        # freed it. A claim cut short is the exception: on PostgreSQL it was cut by the cap,
        # which counts deliveries until their outcome is recorded, so the room it lacked exists
        # only now. Without this wake-up, one node with a backlog deeper than the cap slept
        # until the LISTEN backstop (5 s) once a claim found every subscription at its cap
        # (docs/scaling.md).
        if self._cut_short and self._recorded & self._cut_short:
            self._cut_short -= self._recorded
            self.wake()
        self._recorded.clear()
        return None

    async def _flush(self) -> bool:
        """Record the outcomes received so far; on failure keep them for the next try."""
        batch, self._outcomes = self._outcomes, []
        if self._record_timer is not None:
            self._record_timer.cancel()
            self._record_timer = None
        if not batch:
            return True

        async def record(conn: Connection) -> None:
            # Outcomes of claims no longer current (this node lost them) are refused.
            accepted = await deliveries.record(conn, batch)
            if len(accepted) < len(batch):
                log.warning(
                    "refused %d outcomes of deliveries this node no longer holds",
                    len(batch) - len(accepted),
                )
            await self._update_failure_windows(conn, accepted)
            for outcome in accepted:
                if outcome.delete_subscription:
                    await subscriptions.delete(conn, outcome.subscription_id)

        try:
            # One trip to SQLite's database thread for the whole batch (Database.run_transaction),
            # in the background like the claim.
            await self._db.run_transaction(record, durable=False, background=True)
            self._recorded.update(outcome.subscription_id for outcome in batch)
        except BaseException as exc:
            self._outcomes[:0] = batch
            if not isinstance(exc, Exception):
                raise
            if out_of_space(exc):
                log.warning("could not record %d delivery outcomes: out of space", len(batch))
            else:
                log.exception("could not record %d delivery outcomes", len(batch))
            return False
        return True

    async def _update_failure_windows(
        self, conn: Connection, batch: Sequence[AttemptOutcome]
    ) -> None:
        windows = failure_windows(batch)
        await subscriptions.note_failure_windows(conn, windows)
        if self._disable_after <= 0:
            return  # disabling is turned off
        now = self._clock()
        failing = [sub_id for sub_id, (_, first) in windows.items() if first is not None]
        disabled = await subscriptions.disable_failing(
            conn, failing, failing_before=now - self._disable_after, now=now
        )
        for sub in disabled:
            log.warning("disabled subscription %s: %s", sub.id, sub.disabled_reason)
            await self._publisher.publish(
                conn,
                "subscription.disabled",
                now,
                data=subscription_disabled_data(sub),
                owner_key_id=sub.owner_key_id,
            )


class _HotClaims:
    """A dispatcher's room for the deliveries one ingest transaction writes already claimed
    (:class:`service.delivery.publisher.HotClaims`; docs/architecture.md, "A delivery").

    Room is taken from the same accounting the claim loop uses, before the commit: a
    reservation counts as a claimed delivery of its subscription (``_busy``) and of the
    dispatcher (``_in_flight``) at once, so a claim made meanwhile cannot take the same room.
    A subscription has room while fewer of its deliveries are claimed than its lane's width
    (at full width: than just below the claim loop's top-up mark, ``Dispatcher._hot_room``);
    none has room on probation (a quarter of the send slots are for those, claimed one at a
    time by the claim loop), or when the dispatcher holds its claim limit. Lanes and the send
    slots still apply to every attempt as to claimed ones (``_deliver``).

    A subscription refused while saturated (as many claimed as the claim loop tops it up to,
    ``_refill_below`` or more) is :attr:`quiet` on SQLite: its rows written pending announce
    nothing, since the claim loop skips it until one of its deliveries finishes and then claims
    again on its own (``_done``). Before, each such ingest commit woke the claim loop for a
    read of what is due that could find only saturated subscriptions, so nothing to claim: one
    pass per commit beside a slow subscriber's backlog (docs/performance.md §3). :meth:`commit`
    wakes the claim loop itself if one of them has room by then (its deliveries finished
    between the check and the commit, whose wake-up read could not see these rows). On
    PostgreSQL other nodes may have room for them: always announced."""

    __slots__ = ("_claimed", "_dispatcher", "_life", "_loud", "_quiet", "_reserved", "lease")

    def __init__(self, dispatcher: Dispatcher, lease: HotLease, life: int) -> None:
        self._dispatcher = dispatcher
        self.lease = lease
        self._life = life
        self._reserved: Counter[str] = Counter()
        self._claimed: list[Claimed] = []
        self._quiet: set[str] = set()
        self._loud: set[str] = set()  # refused while not saturated: announced

    @property
    def quiet(self) -> Collection[str]:
        return self._quiet - self._loud if self._loud else self._quiet

    def reserve(self, sub: Subscription) -> bool:
        d = self._dispatcher
        sub_id = sub.id
        busy = d._busy.get(sub_id, 0)
        if (
            sub.status != SubscriptionStatus.ACTIVE
            or sub.ordering == "fifo"
            or d._in_flight >= d._claim_limit
            or busy >= d._hot_room(sub_id)
            or d._lanes.on_probation(sub_id)
        ):
            if (
                busy >= d._refill_below
                and sub.status == SubscriptionStatus.ACTIVE
                and sub.ordering != "fifo"
                and d._db.dialect == "sqlite"
            ):
                self._quiet.add(sub_id)
            else:
                self._loud.add(sub_id)
            return False
        d._busy[sub_id] += 1
        d._in_flight += 1
        self._reserved[sub_id] += 1
        return True

    def claimed(self, delivery: Claimed) -> None:
        self._claimed.append(delivery)

    def release(self, subscription_id: str) -> None:
        if self._reserved[subscription_id] > 0:
            self._reserved[subscription_id] -= 1
            self._dispatcher._done(subscription_id)

    def commit(self) -> None:
        d = self._dispatcher
        if any(d._busy.get(sub, 0) < d._refill_below for sub in self.quiet):
            d.wake()  # room came meanwhile: claim the rows written pending (see the class)
        claimed, self._claimed = self._claimed, []
        for delivery in claimed:
            self._reserved[delivery.subscription_id] -= 1
        self.abort()  # reservations no row was written for, if any
        if d._group is None or d._stop_requested.is_set():
            # Stopping: not sent here. Their leases are handed back with the others unfinished
            # (or, once that is done, by the next start), as for a claim made at this moment.
            d._unfinished.update(delivery.id for delivery in claimed)
            for delivery in claimed:
                d._done(delivery.subscription_id)
            return
        d.hot_claimed += len(claimed)
        if claimed:
            d._observe_claimed_at_ingest(len(claimed))
        for delivery in claimed:
            d._queue(delivery, self._life)
        for sub in {delivery.subscription_id for delivery in claimed}:
            d._start_workers(sub, d._group)

    def abort(self) -> None:
        reserved, self._reserved = self._reserved, Counter()
        self._claimed = []
        for sub, count in reserved.items():
            for _ in range(count):
                self._dispatcher._done(sub)


class _SendSlot:
    """One of the dispatcher's shared send slots, held for one attempt, given back early if the
    attempt is still waiting after ``slow_after`` seconds: the subscription's lane is then
    narrowed (as on a timeout), so a subscriber that does not answer holds shared capacity for
    seconds, not for the whole delivery timeout, and the attempt goes on outside the shared
    slots. When as many slow attempts as send slots are open already, the attempt gives up
    instead (:meth:`send` returns None: it is recorded as timed out and retried on schedule), so
    sockets stay bounded at twice the send slots.

    Plain asyncio (one timer, and the task cancelled only when giving up, as ``asyncio.timeout``
    does): an anyio cancel scope and a context manager per attempt cost several microseconds of
    the event loop's time per delivery (docs/performance.md §4)."""

    __slots__ = (
        "_dispatcher",
        "_give_up",
        "_held",
        "_moved",
        "_subscription_id",
        "_task",
        "_timer",
    )

    def __init__(self, dispatcher: Dispatcher, subscription_id: str) -> None:
        self._dispatcher = dispatcher
        self._subscription_id = subscription_id
        self._held = True
        self._moved = False
        self._give_up = False
        self._task: asyncio.Task[object] | None = None
        self._timer = asyncio.get_running_loop().call_later(dispatcher._slow_after, self._slow)

    def _slow(self) -> None:
        if not self._held:
            return
        dispatcher = self._dispatcher
        dispatcher._lanes.observe(self._subscription_id, succeeded=False, timed_out=True)
        if dispatcher._slow < dispatcher._slow_limit:
            dispatcher._sends.release()
            self._held, self._moved = False, True
            dispatcher._slow += 1
        else:
            self._give_up = True
            if self._task is not None:
                self._task.cancel()

    async def send(self, attempt: Coroutine[object, None, AttemptResult]) -> AttemptResult | None:
        """The attempt's result, or None when it was given up (before or while it ran)."""
        if self._give_up:
            attempt.close()
            return None
        task = self._task = asyncio.current_task()
        try:
            return await attempt
        except asyncio.CancelledError:
            # Ours (given up) unless the task was also cancelled from outside.
            if self._give_up and task is not None and task.uncancel() == 0:
                return None
            raise
        finally:
            self._task = None

    def close(self) -> None:
        """Give the slot back (if still held) once the attempt is over."""
        self._timer.cancel()
        if self._held:
            self._dispatcher._sends.release()
        if self._moved:
            self._dispatcher._slow -= 1


def failure_windows(batch: Sequence[AttemptOutcome]) -> dict[str, tuple[bool, float | None]]:
    """Per subscription: whether an attempt in ``batch`` succeeded, and when the first failure
    after the last success happened (None when the last attempt succeeded)."""
    windows: dict[str, tuple[bool, float | None]] = {}
    for outcome in batch:
        if outcome.status == DeliveryStatus.SUCCEEDED:
            windows[outcome.subscription_id] = (True, None)
        else:
            succeeded, first = windows.get(outcome.subscription_id, (False, None))
            windows[outcome.subscription_id] = (
                succeeded,
                first if first is not None else outcome.attempted_at,
            )
    return windows
