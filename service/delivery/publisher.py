"""Publishing events: build the payload once, append it to the log, and fan it out to the outbox."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from service.core.clock import isoformat
from service.core.ids import new_id, new_ids
from service.core.jsonutil import dumps, dumps_bytes
from service.core.models import FileUrl, Job, Subscription
from service.delivery.filters import FieldTree, Filter, FilterError, parse
from service.storage import events, subscriptions
from service.storage.database import Connection, Row
from service.storage.deliveries import Claimed, HotLease

log = logging.getLogger(__name__)


def payload(event_type: str, created_at: float, data: dict[str, Any]) -> bytes:
    """The exact body every subscriber receives (and the bytes that are signed)."""
    return dumps_bytes({"type": event_type, "timestamp": isoformat(created_at), "data": data})


def ping_data(subscription_id: str) -> dict[str, Any]:
    """The ``data`` of a ``ping`` event (``POST /v1/subscriptions/{id}/test``)."""
    return {"subscription_id": subscription_id}


def subscription_disabled_data(sub: Subscription) -> dict[str, Any]:
    """The ``data`` of a ``subscription.disabled`` event. The URL stays out: webhook URLs often
    carry a token, and the event goes to other endpoints."""
    return {
        "id": sub.id,
        "object": "subscription",
        "description": sub.description,
        "status": sub.status,
        "disabled_reason": sub.disabled_reason,
        "failing_since": isoformat(sub.failing_since),
        "event_types": list(sub.event_types),
        "models": list(sub.models),
    }


_ANY_FIELD = FieldTree({}, open=True)


class HotClaims(Protocol):
    """Room in a dispatcher's lanes for deliveries claimed at ingest, for one write transaction
    (docs/architecture.md, "A delivery"; made by ``Dispatcher.hot_claims``).

    The publisher :meth:`reserve`s room per delivery while it builds the batch, the rows are
    written claimed under :attr:`lease`, and it hands each one written so over with
    :meth:`claimed` (or gives back a reservation not used with :meth:`release`). The owner of
    the transaction calls :meth:`commit` once it committed, which starts sending them, or
    :meth:`abort` when it did not, which gives every reservation back."""

    lease: HotLease

    @property
    def quiet(self) -> Collection[str]:
        """Subscriptions :meth:`reserve` found with no room whose rows, written pending, need
        not wake the claim loop: it holds all it claims ahead of them and claims again as they
        finish (``events.append``'s ``quiet``). Wakes it itself at :meth:`commit` if one has
        room by then."""
        ...

    def reserve(self, sub: Subscription) -> bool:
        """Take room for one delivery to ``sub``; False when it has none now (or is not
        active, or delivers in order): its row is then written pending, as without this."""
        ...

    def claimed(self, delivery: Claimed) -> None:
        """A reserved delivery was written claimed; sent once :meth:`commit` is called."""
        ...

    def release(self, subscription_id: str) -> None:
        """Give back one reservation of ``subscription_id`` that no row was written for."""
        ...

    def commit(self) -> None:
        """The transaction committed: send what was claimed."""
        ...

    def abort(self) -> None:
        """The transaction did not commit: give every reservation back."""
        ...


FANOUT_THRESHOLD = 16
"""An event matching more subscriptions than this gets one deferred fan-out row instead of a
delivery row per subscription (service/storage/fanouts.py). At or below it, its rows are written
at ingest, so the common event with one to three subscribers is claimable at once, with no
expansion step in between. Above it, ingest's cost no longer grows with the subscribers
(docs/performance.md §4). The value is a judgement, not a measured break-even."""


class Publisher:
    """Appends events. ``file_url`` mints the links to stored outputs in job documents;
    ``first_delay`` is how long after an event its first delivery attempt is due;
    ``fanout_threshold`` how many matching subscriptions an event may have before its
    deliveries are deferred (tests set 0 to force the deferred path)."""

    def __init__(
        self, file_url: FileUrl, first_delay: float = 0.0, fanout_threshold: int = FANOUT_THRESHOLD
    ) -> None:
        self.file_url = file_url
        self.first_delay = first_delay
        self.fanout_threshold = fanout_threshold
        # Parsed payload filters by their JSON text: a subscription's filter is parsed once, not
        # per event. Bounded, since filters change.
        self._filters: dict[str, Filter] = {}
        # Subscriptions by their row's values, so an unchanged one read again by the next batch
        # is not built again (subscriptions.listeners).
        self._parsed: dict[tuple[Any, ...], Subscription] = {}

    def _passes(self, sub: Subscription, event_type: str, now: float, data: dict[str, Any]) -> bool:
        """Whether the event gets past ``sub``'s payload filter (applied after type and model)."""
        if sub.filter is None:
            return True
        key = dumps(sub.filter)
        parsed = self._filters.get(key)
        if parsed is None:
            if len(self._filters) >= 4096:
                self._filters.clear()
            try:
                # Its paths were checked against the event shape when it was saved.
                parsed = self._filters[key] = parse(sub.filter, _ANY_FIELD)
            except FilterError:
                return False  # unreachable for a saved filter; deliver nothing rather than all
        return parsed.matches({"type": event_type, "timestamp": isoformat(now), "data": data})

    async def publish(
        self,
        conn: Connection,
        event_type: str,
        now: float,
        *,
        job: Job | None = None,
        data: dict[str, Any] | None = None,
        to_subscription: str | None = None,
        owner_key_id: str | None = None,
    ) -> str:
        """Append an event and queue a delivery to every matching subscription; return its id.

        A job event carries the job document; other events carry ``data``. ``to_subscription``
        sends the event to that one subscription only (a ``ping``). An event about no job reaches
        the subscriptions of ``owner_key_id`` and of admin keys (every subscription when None).
        Runs in the caller's transaction, so the event and its deliveries commit with the change
        they announce.
        """
        if job is not None and to_subscription is None:
            return (await self.publish_jobs(conn, [(event_type, job)], now))[0]
        body = job.to_document(self.file_url) if job is not None else (data or {})
        if to_subscription is not None:
            targets = [to_subscription]
            fifo = None  # looked up by events.append
        else:
            (heard,) = await subscriptions.listeners(conn, [(owner_key_id, None)], self._parsed)
            targets, fifo = self._match(heard, event_type, None, None, now, body, {})
        event = self._event(event_type, now, body, job, targets, fifo)
        await events.append(conn, [event])
        return event.id

    async def publish_jobs(
        self,
        conn: Connection,
        announced: Sequence[tuple[str, Job]],
        now: float,
        hot: HotClaims | None = None,
        *,
        listening: Sequence[Row] | None = None,
    ) -> list[str]:
        """:meth:`publish` for many job events at once (one query for their audiences).

        ``listening``: the rows of :func:`subscriptions.listening_to_jobs` for jobs including
        these, read earlier in the same transaction; then no query is made here.

        With ``hot`` (the ingest batch's), deliveries to subscriptions with room in the
        dispatcher's lanes are written already claimed and handed to it in memory once the
        transaction commits: no read of what is due and no claim transaction between the
        commit and the send (docs/performance.md §4). FIFO subscriptions, deferred fan-outs and
        deliveries not due at once keep the ordinary path."""
        wanted = [(job.owner_key_id, job.id) for _, job in announced]
        if listening is None:
            audiences = await subscriptions.listeners(conn, wanted, self._parsed)
        else:
            audiences = subscriptions.heard_by(listening, wanted, self._parsed)
        batch = []
        matched: dict[tuple[int, str, str | None], _Matched] = {}
        reserved: dict[tuple[str, str], Subscription] = {}
        indexes: dict[int, dict[str, Subscription]] = {}
        # One clock read and one encoding for the batch's event ids (new_id is ~3 µs each).
        event_ids = new_ids("evt", len(announced))
        for (event_type, job), heard, event_id in zip(announced, audiences, event_ids, strict=True):
            document = job.to_document(self.file_url)
            targets, fifo = self._match(
                heard, event_type, job.model, job.id, now, document, matched
            )
            event = self._event(event_type, now, document, job, targets, fifo, event_id=event_id)
            if hot is not None and event.subscription_ids and self.first_delay <= 0:
                event = _reserve(event, heard, hot, reserved, indexes)
            batch.append(event)
        if hot is None:
            await events.append(conn, batch)
        elif not reserved:
            await events.append(conn, batch, quiet=hot.quiet)
        else:
            written = await events.append(conn, batch, hot.lease, quiet=hot.quiet)
            payloads = {event.id: event.payload for event in batch}
            for delivery_id, event_id, sub_id in written:
                sub = reserved.pop((event_id, sub_id))
                hot.claimed(_claimed(delivery_id, event_id, sub, payloads[event_id], hot, now))
            for _, sub_id in reserved:
                hot.release(sub_id)  # PostgreSQL: the cap across nodes left it no room
        for (event_type, job), event in zip(announced, batch, strict=True):
            # The job lifecycle at INFO: every state change of every job passes through here.
            log.info(
                "%s %s (%s) as %s to %d subscriptions",
                event_type,
                job.id,
                job.model,
                event.id,
                len(event.subscription_ids) + len(event.deferred) + len(event.claimed),
            )
        return [event.id for event in batch]

    def _match(
        self,
        heard: subscriptions.Heard,
        event_type: str,
        model: str | None,
        job_id: str | None,
        now: float,
        body: dict[str, Any],
        matched: dict[tuple[int, str, str | None], _Matched],
    ) -> tuple[list[str], set[str]]:
        """The ids of the subscriptions in ``heard`` that the event goes to, and those of them
        that deliver in order.

        Whether a standing subscription takes an event of a type and model does not depend on
        the event otherwise, so it is decided once per (standing list, type, model) in
        ``matched`` (one batch's): with 1,000 subscriptions, deciding it per event was most of
        ingest's CPU (docs/performance.md §4). Payload filters and one-off subscriptions are
        still checked per event.
        """
        key = (id(heard.standing), event_type, model)
        found = matched.get(key)
        if found is None:
            taken = [sub for sub in heard.standing if sub.matches(event_type, model, job_id)]
            plain = [sub for sub in taken if sub.filter is None]
            found = matched[key] = _Matched(
                [sub.id for sub in plain],
                {sub.id for sub in plain if sub.ordering == "fifo"},
                [sub for sub in taken if sub.filter is not None],
            )
        extra = [sub for sub in found.filtered if self._passes(sub, event_type, now, body)]
        extra += [
            sub
            for sub in heard.own
            if sub.matches(event_type, model, job_id) and self._passes(sub, event_type, now, body)
        ]
        if not extra:
            return list(found.ids), found.fifo
        ids, fifo = _targets(extra)
        return found.ids + ids, found.fifo | fifo

    def _event(
        self,
        event_type: str,
        now: float,
        body: dict[str, Any],
        job: Job | None,
        targets: list[str],
        fifo: set[str] | None,
        *,
        event_id: str | None = None,
    ) -> events.NewEvent:
        deferred: list[str] = []
        if fifo is not None and len(targets) > self.fanout_threshold:
            # FIFO subscriptions keep their rows at ingest: their order is the order their rows
            # are written in, which expansion on several nodes at once would not keep.
            if fifo:
                deferred = [sub for sub in targets if sub not in fifo]
                targets = [sub for sub in targets if sub in fifo]
            else:
                deferred, targets = targets, []
        return events.NewEvent(
            id=event_id or new_id("evt"),
            type=event_type,
            job_id=job.id if job is not None else None,
            created_at=now,
            payload=payload(event_type, now, body),
            subscription_ids=targets,
            first_attempt_at=now + self.first_delay,
            fifo=fifo,
            deferred=deferred,
            # As the log reads it: the job's owner; an event of no job has none (admin keys'
            # streams see it), whoever's subscriptions it goes to.
            owner_key_id=job.owner_key_id if job is not None else None,
        )


def _reserve(
    event: events.NewEvent,
    heard: subscriptions.Heard,
    hot: HotClaims,
    reserved: dict[tuple[str, str], Subscription],
    indexes: dict[int, dict[str, Subscription]],
) -> events.NewEvent:
    """``event`` with the subscriptions ``hot`` has room for moved to its ``claimed`` ones
    (noted in ``reserved``); FIFO subscriptions are never among them. ``indexes`` finds a
    standing list's subscriptions by id (built once per list and batch)."""
    index = indexes.get(id(heard.standing))
    if index is None:
        index = indexes[id(heard.standing)] = {sub.id: sub for sub in heard.standing}
    fifo = event.fifo or ()
    keep: list[str] = []
    claimed: list[str] = []
    for sub_id in event.subscription_ids:
        sub = index.get(sub_id) or next((own for own in heard.own if own.id == sub_id), None)
        if sub is not None and sub_id not in fifo and hot.reserve(sub):
            claimed.append(sub_id)
            reserved[(event.id, sub_id)] = sub
        else:
            keep.append(sub_id)
    if not claimed:
        return event
    return replace(event, subscription_ids=keep, claimed=claimed)


def _claimed(
    delivery_id: str, event_id: str, sub: Subscription, body: bytes, hot: HotClaims, now: float
) -> Claimed:
    """The delivery written claimed, as :func:`deliveries.claim_due` would have returned it."""
    # The current secret, and the one it replaced while its rotation grace period lasts.
    until = sub.previous_secret_until
    signing: tuple[str, ...] = (sub.secret,)
    if sub.previous_secret and until is not None and until > now:
        signing = (sub.secret, sub.previous_secret)
    return Claimed(
        id=delivery_id,
        event_id=event_id,
        subscription_id=sub.id,
        attempt=1,
        url=sub.url,
        secrets=signing,
        headers=sub.headers,
        payload=body,
        token=hot.lease.token,
        template=sub.template,
        content_type=sub.content_type,
    )


@dataclass(frozen=True, slots=True)
class _Matched:
    """Of one standing list, the subscriptions taking events of one type and model: the ids of
    those without a payload filter (and which of them are FIFO), and those with one."""

    ids: list[str]
    fifo: set[str]
    filtered: list[Subscription]


def _targets(subs: Sequence[Subscription]) -> tuple[list[str], set[str]]:
    """The ids of ``subs``, and those of them that deliver in order (read with them, in the
    same transaction, so :func:`events.append` need not look them up)."""
    return [sub.id for sub in subs], {sub.id for sub in subs if sub.ordering == "fifo"}
