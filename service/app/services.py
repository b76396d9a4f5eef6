"""What the lifespan opened, handed to the edges (``request.state.services``): the settings, the
store, and the domain operations the API and the console call."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from starlette.requests import Request

from service.access.callers import Authenticator
from service.access.keys import ApiKeys
from service.access.sign_outs import SignOuts
from service.app.settings import Settings
from service.core.clock import Clock
from service.core.tokens import Tokens
from service.delivery.deliveries import Deliveries
from service.delivery.dispatcher import Dispatcher
from service.delivery.eventfeed import EventFeed
from service.delivery.eventlog import EventLog
from service.delivery.publisher import Publisher
from service.delivery.subscriptions import Subscriptions
from service.jobs.callbacks import Callbacks
from service.jobs.deadlines import DeadlineTimer
from service.jobs.held_requests import HeldRequests
from service.jobs.ingest import Ingest
from service.jobs.listing import JobReader
from service.jobs.mirroring import Mirrors
from service.jobs.submission import ProviderEndpoint, Submitter
from service.ops.logfolding import LogFolder
from service.ops.metrics import Metrics
from service.ops.retention import Retention
from service.storage.blobs import BlobStore
from service.storage.database import Database


@dataclass(frozen=True, slots=True)
class Workers:
    """The background loops the lifespan runs in its task group, each durable in the store."""

    dispatcher: Dispatcher
    held: HeldRequests
    ingest: Ingest
    deadlines: DeadlineTimer
    mirrors: Mirrors
    submitter: Submitter
    retention: Retention
    log_folder: LogFolder

    def loops(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        return [
            self.dispatcher.run,
            self.held.run,
            self.ingest.run,
            self.deadlines.run,
            self.mirrors.run,
            self.submitter.run_retries,
            self.retention.run,
            self.log_folder.run,
        ]


@dataclass(slots=True)
class Services:
    """What the edges work with: the settings and the store, the operations they call (each
    taking plain arguments and the :class:`~service.access.callers.Caller`), and the workers."""

    settings: Settings
    clock: Clock
    db: Database
    tokens: Tokens
    publisher: Publisher
    blobs: BlobStore
    endpoints: dict[str, ProviderEndpoint]
    metrics: Metrics
    feed: EventFeed
    # The operations.
    access: Authenticator
    keys: ApiKeys
    sign_outs: SignOuts
    jobs: JobReader
    submitter: Submitter
    ingest: Ingest
    callbacks: Callbacks
    subscriptions: Subscriptions
    deliveries: Deliveries
    events: EventLog
    workers: Workers


def services(request: Request) -> Services:
    """The services of the app serving ``request`` (set by its lifespan)."""
    return cast(Services, request.state.services)
