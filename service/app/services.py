"""What the lifespan opened, handed to the edges (``request.state.services``): the settings, the
store, and the domain operations the API and the console call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

from starlette.requests import Request

from service.access.callers import Authenticator
from service.access.keys import ApiKeys
from service.app.settings import Settings
from service.core.clock import Clock
from service.core.tokens import Tokens
from service.delivery.deliveries import Deliveries
from service.delivery.dispatcher import Dispatcher
from service.delivery.eventfeed import EventFeed
from service.delivery.eventlog import EventLog
from service.delivery.publisher import Publisher
from service.delivery.subscriptions import Subscriptions
from service.jobs.callback_outcomes import CallbackObserver
from service.jobs.deadlines import DeadlineTimer
from service.jobs.held_requests import HeldRequests
from service.jobs.ingest import Ingest
from service.jobs.listing import JobReader
from service.jobs.mirroring import Mirrors
from service.jobs.submission import ProviderEndpoint, Submitter
from service.ops.metrics import Metrics
from service.ops.ratelimit import Limiter
from service.storage.blobs import BlobStore
from service.storage.database import Database


@dataclass(slots=True)
class Services:
    """Everything the lifespan opened, shared by the edges."""

    settings: Settings
    db: Database
    tokens: Tokens
    publisher: Publisher
    clock: Clock
    blobs: BlobStore
    endpoints: dict[str, ProviderEndpoint]
    submitter: Submitter
    dispatcher: Dispatcher
    held: HeldRequests
    ingest: Ingest
    deadlines: DeadlineTimer
    mirrors: Mirrors
    limiter: Limiter
    metrics: Metrics
    feed: EventFeed
    access: Authenticator
    keys: ApiKeys
    jobs: JobReader
    subscriptions: Subscriptions
    deliveries: Deliveries
    events: EventLog
    callback_observers: list[CallbackObserver] = field(default_factory=list)


def services(request: Request) -> Services:
    """The services of the app serving ``request`` (set by its lifespan)."""
    return cast(Services, request.state.services)
