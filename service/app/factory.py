"""The application factory: routes, error mapping, and a lifespan that owns every resource."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from service import console
from service.access.callers import Authenticator
from service.access.keys import ApiKeys
from service.access.scopes import Scope as ApiScope
from service.access.sign_outs import SignOuts
from service.api import routes
from service.api.context import authenticate
from service.api.errors import (
    error_response,
    handle_http_exception,
    handle_reelhook_error,
    handle_unexpected,
    storage_error_handler,
)
from service.api.fastpath import CallbackFastPath
from service.api.streampath import StreamFastPath
from service.app import bootstrap, startup_checks
from service.app.services import Services, Workers
from service.app.settings import Settings
from service.core.clock import Clock, system_clock
from service.core.errors import ReelhookError
from service.core.retry import RetrySchedule
from service.core.tokens import Tokens
from service.delivery.deliveries import Deliveries
from service.delivery.dispatcher import PREFETCH, Dispatcher
from service.delivery.eventfeed import EventFeed
from service.delivery.eventlog import EventLog
from service.delivery.publisher import FANOUT_THRESHOLD, Publisher
from service.delivery.sender import Sender
from service.delivery.subscriptions import Subscriptions
from service.delivery.transform import Renderer
from service.jobs.callback_outcomes import CallbackObserver
from service.jobs.callbacks import Callbacks
from service.jobs.deadlines import DeadlineTimer
from service.jobs.held_requests import HeldRequests
from service.jobs.inbound import InboundBudget
from service.jobs.ingest import Ingest
from service.jobs.listing import JobReader
from service.jobs.mirroring import Mirrors
from service.jobs.submission import ProviderEndpoint, Providers, SubmitPolicy, Submitter
from service.net.client import USER_AGENT, guarded_client, origin_of
from service.net.posts import PostPool
from service.ops.instrumentation import MeteredSender, MeteredTransport
from service.ops.logfolding import LogFolder
from service.ops.metrics import Metrics
from service.ops.ratelimit import Limiter, RateLimiter, SharedRateLimiter
from service.ops.retention import Retention
from service.sim import Scenario, Simulator
from service.storage import datadir
from service.storage.announcements import Work
from service.storage.blobs import BlobStore, LocalBlobStore
from service.storage.database import Database

log = logging.getLogger(__name__)

SIMULATED_API_KEY = "sim_{name}_key"


def provider_endpoints(settings: Settings) -> dict[str, ProviderEndpoint]:
    """Each available provider's base URL and key: the real ones, or the simulator's."""
    endpoints = {}
    for name, provider in settings.providers.items():
        if provider.api_key is not None:
            endpoints[name] = ProviderEndpoint(name, provider.base_url, provider.api_key, False)
        elif name in settings.simulated_providers:
            endpoints[name] = ProviderEndpoint(
                name, f"{settings.public_url}/sim/{name}", SIMULATED_API_KEY.format(name=name), True
            )
    return endpoints


def create_app(
    settings: Settings,
    *,
    clock: Clock = system_clock,
    callback_observers: Sequence[CallbackObserver] = (),
    fanout_threshold: int = FANOUT_THRESHOLD,
) -> Starlette:
    """Build reelhook for ``settings``. Nothing is opened until the lifespan starts.

    ``clock`` is what every component reads the time from; ``callback_observers`` hear the
    outcome of every provider callback (the metrics are one of them); ``fanout_threshold`` is
    how many matching subscriptions an event may have before its deliveries are deferred
    (:class:`~service.delivery.publisher.Publisher`; tests set 0 to take that path always).
    """
    simulator = (
        Simulator(
            Scenario(delay=settings.sim_delay),
            # The simulator checks the key each provider is sent: its own, or the configured one
            # when a provider's base URL points at the simulator.
            api_keys={
                name: provider.api_key or SIMULATED_API_KEY.format(name=name)
                for name, provider in settings.providers.items()
            },
        )
        if settings.simulated_providers
        else None
    )
    # Per application, never global: two apps in one process (tests) must not share counts.
    metrics = Metrics()
    shared = Shared(
        metrics=metrics,
        limiter=RateLimiter(settings.rate_limit, settings.rate_burst),
        feed=EventFeed(),
        callback_observers=(metrics.callback_outcome, *callback_observers),
        fanout_threshold=fanout_threshold,
    )
    app_routes: list[BaseRoute] = routes() + console.routes()
    if simulator is not None:
        simulator.callbacks_only_to(f"{settings.public_url}/v1/callbacks/")
        app_routes.append(Mount("/sim", app=admin_only_control(Router(simulator.routes()))))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            stack.enter_context(datadir.locked(settings.data_dir))
            tokens = Tokens(await bootstrap.secret_keys(settings))
            if simulator is not None and "trinetra" in settings.simulated_providers:
                # As an operator pastes it into Trinetra's dashboard (GET /v1/providers).
                key = SIMULATED_API_KEY.format(name="trinetra")
                token = tokens.account_webhook("trinetra", key)
                simulator.account_webhooks["trinetra"] = (
                    f"{settings.public_url}/v1/callbacks/trinetra/account/{token}"
                )
            db = await stack.enter_async_context(
                Database.open(settings.database_url, node_timeout=settings.node_timeout)
            )
            # The store's own upkeep (PostgreSQL: heartbeats, leader lease, LISTEN) starts at
            # once: a node that took longer than REELHOOK_NODE_TIMEOUT to open its clients and
            # blob store was swept as dead by the others before its first heartbeat.
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(db.run)
            shared.feed.open()
            generated = await bootstrap.admin_key(db, settings, clock)
            # One TLS context (loading the CA bundle is slow) for provider calls, downloads and the
            # embedded simulator's callbacks.
            ssl_context = httpx.create_ssl_context()
            bases = {e.base_url: e.name for e in provider_endpoints(settings).values()}
            clients = Clients(
                providers=await stack.enter_async_context(
                    httpx.AsyncClient(
                        timeout=settings.provider_timeout,
                        follow_redirects=False,
                        transport=MeteredTransport(
                            httpx.AsyncHTTPTransport(verify=ssl_context), shared.metrics, bases
                        ),
                    )
                ),
                subscribers=await stack.enter_async_context(
                    Sender.session(
                        allow=settings.allow_private_subscribers,
                        timeout=settings.delivery_timeout,
                        concurrency=settings.delivery_concurrency,
                    )
                ),
                # The delivery fast path to plain-HTTP subscribers (service/net/posts.py).
                posts=await stack.enter_async_context(
                    PostPool(settings.allow_private_subscribers, USER_AGENT)
                ),
                downloads=await stack.enter_async_context(
                    guarded_client(
                        settings.allow_private_subscribers,
                        ssl_context=ssl_context,
                        # The in-process simulator serves its videos from reelhook's own address.
                        trusted=[origin_of(settings.public_url)] if simulator is not None else [],
                        timeout=httpx.Timeout(60.0, connect=30.0),
                    )
                ),
            )
            if simulator is not None:
                await stack.enter_async_context(simulator.running(verify=ssl_context))
            blobs = await stack.enter_async_context(open_blob_store(settings))
            services = _wire(settings, clock, Opened(db, tokens, clients, blobs), shared)
            await services.blobs.remove_leftovers()
            for loop in services.workers.loops():
                tasks.start_soon(loop)
            tasks.start_soon(shared.feed.run, db.reader)
            _announce(settings, generated)
            startup_checks.warn_if_unreachable(settings)
            try:
                yield {"services": services}
            finally:
                # In-flight deliveries get the grace period; the rest are left for the next start.
                await services.workers.dispatcher.stop()
                shared.feed.close()
                tasks.cancel_scope.cancel()

    middleware: list[Middleware] = []
    if settings.cors_origins:
        # Browsers on these origins may call the API and open the event stream. Credentials
        # (cookies) are never allowed cross-origin: the console's session stays same-origin.
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=["X-API-Key", "Content-Type", "Idempotency-Key", "Last-Event-ID"],
                expose_headers=["Location", "Retry-After", "Idempotent-Replayed"],
                allow_credentials=False,
                max_age=600,
            )
        )
    # Event streams, open for hours, skip the router too: fewer objects held per stream
    # (docs/performance.md, "Idle streams"). Inside CORS, which a browser's EventSource needs.
    middleware.append(Middleware(StreamFastPath))
    handle_storage_error = storage_error_handler()
    app = _CallbacksFirst(
        routes=app_routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={
            ReelhookError: handle_reelhook_error,
            HTTPException: handle_http_exception,
            sqlite3.Error: handle_storage_error,
            OSError: handle_storage_error,
            Exception: handle_unexpected,
        },
    )
    # uvicorn waits for open responses before it runs the lifespan exit, and a live event stream
    # never ends by itself: service.server calls this as shutdown begins.
    app.state.end_streams = shared.feed.close
    # Set as a drained shutdown begins (service.app.server): /readyz answers 503 from then on.
    app.state.draining = False

    def begin_drain() -> None:
        app.state.draining = True

    app.state.begin_drain = begin_drain
    return app


class _CallbacksFirst(Starlette):
    """Starlette with provider callbacks, the hottest route, answered in front of it: they skip
    the router (docs/performance.md §4) and the application's own layers too (its entry and
    its error middleware: ~2 µs per callback; §5, "The ingest path's sixth pass"). The fast
    path answers every error itself in the framework's JSON shape; what the server's ``send``
    may raise under it reaches the server as before, as the error middleware sends nothing
    once a response has begun. Everything else goes to Starlette as before."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = CallbackFastPath(super().__call__)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._front(scope, receive, send)


def admin_only_control(app: ASGIApp) -> ASGIApp:
    """The simulator with its control endpoints (``/_sim/...``: stats, and the scenario that
    decides how every user's jobs end) open to the admin key only; its provider routes stay as
    the real providers' (reelhook itself calls them without a reelhook key)."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "/_sim/" in scope["path"] + "/":
            request = Request(scope, receive)
            try:
                await authenticate(request, ApiScope.ADMIN)
            except ReelhookError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await app(scope, receive, send)

    return guarded


@dataclass(frozen=True, slots=True)
class Shared:
    """Built with the app, before its lifespan: what outlives one start (counters, rate-limit
    buckets, the feed the server closes when it stops, and who hears each callback's outcome)."""

    metrics: Metrics
    limiter: RateLimiter
    feed: EventFeed
    callback_observers: tuple[CallbackObserver, ...]
    fanout_threshold: int


@dataclass(frozen=True, slots=True)
class Clients:
    """The outbound HTTP clients the lifespan opened: to the providers, to subscribers (each
    address checked on connect), and for downloading outputs to mirror."""

    providers: httpx.AsyncClient
    subscribers: aiohttp.ClientSession
    posts: PostPool
    downloads: httpx.AsyncClient


@dataclass(frozen=True, slots=True)
class Opened:
    """What the lifespan opened for one start."""

    db: Database
    tokens: Tokens
    clients: Clients
    blobs: BlobStore


@asynccontextmanager
async def open_blob_store(settings: Settings) -> AsyncIterator[BlobStore]:
    """The blob store settings choose: the data directory's ``blobs/`` folder, or an S3 bucket
    (``REELHOOK_BLOB_URL=s3://…``) whose client lives as long as the application."""
    if settings.s3 is None:
        yield LocalBlobStore(settings.blob_dir)
        return
    # Imported only when a bucket is configured: aiobotocore and botocore are ~0.1 s of CPU at
    # every start (`reelhook serve`, each CLI command), most of them without S3.
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    from service.storage.s3blobs import S3BlobStore

    s3 = settings.s3
    config = AioConfig(
        connect_timeout=10,
        read_timeout=60,
        # botocore retries throttling and 5xx itself a few times; longer outages are the mirror
        # worker's retry schedule's business.
        retries={"max_attempts": 3, "mode": "standard"},
        # Path-style addressing works with every S3-compatible server, virtual hosts need DNS.
        s3={"addressing_style": "path"} if s3.endpoint_url else None,
    )
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "s3",
        endpoint_url=s3.endpoint_url,
        region_name=s3.region,
        aws_access_key_id=s3.access_key_id,
        aws_secret_access_key=s3.secret_access_key,
        config=config,
    ) as client:
        # Writes in progress are spooled locally (service/storage/s3blobs.py).
        yield S3BlobStore(client, s3.bucket, s3.prefix, settings.blob_dir / "tmp")


def _wire(settings: Settings, clock: Clock, opened: Opened, shared: Shared) -> Services:
    """Assemble the operations and workers from what was opened."""
    db, tokens = opened.db, opened.tokens
    limiter = limiter_for(db, settings, shared.limiter)
    endpoints = provider_endpoints(settings)
    blobs = opened.blobs

    def file_url(digest: str, media_type: str) -> str:
        return f"{settings.public_url}/v1/files/{tokens.file(digest, media_type)}"

    publisher = Publisher(
        file_url,
        first_delay=settings.retry_schedule[0],
        fanout_threshold=shared.fanout_threshold,
    )
    renderer = Renderer()
    dispatcher = Dispatcher(
        db,
        MeteredSender(opened.clients.subscribers, shared.metrics, opened.clients.posts),
        RetrySchedule.for_deliveries(
            settings.retry_schedule, overload_floor=settings.retry_overload_floor
        ),
        clock=clock,
        # Shown in the delivery log as when a claimed row would be given up; the row is only ever
        # taken back by the next start (the one process owning the database released it).
        lease=(PREFETCH + 1) * settings.delivery_timeout + 5,
        concurrency=settings.delivery_concurrency,
        per_subscription=settings.subscription_concurrency,
        publisher=publisher,
        disable_after=settings.disable_after,
        shutdown_grace=settings.shutdown_grace,
        observe_claim=shared.metrics.claim_duration.observe,
        observe_claimed_at_ingest=shared.metrics.claimed_at_ingest.inc,
        renderer=renderer,
        slow_after=settings.delivery_slow_after,
    )

    submit_retries = RetrySchedule.for_retries(settings.submit_retry_schedule)
    held = HeldRequests(
        db=db,
        publisher=publisher,
        client=opened.clients.providers,
        blobs=blobs,
        endpoint=endpoints.get("segmind"),
        clock=clock,
        concurrency=settings.segmind_concurrency,
        timeout=settings.segmind_timeout,
        max_bytes=settings.mirror_max_bytes,
        resubmit=settings.segmind_resubmit,
        retry_schedule=submit_retries,
    )
    deadlines = DeadlineTimer(db, publisher, clock=clock)
    mirrors = Mirrors(
        db=db,
        publisher=publisher,
        blobs=blobs,
        client=opened.clients.downloads,
        clock=clock,
        max_bytes=settings.mirror_max_bytes,
        timeout=settings.mirror_timeout,
        retry_delays=settings.mirror_retry_schedule,
    )
    submitter = Submitter(
        db,
        publisher,
        clock,
        Providers(opened.clients.providers, endpoints, tokens, settings.public_url),
        SubmitPolicy(
            job_deadline=settings.job_deadline,
            deadlines=settings.job_deadlines,
            allow_private=settings.allow_private_subscribers,
            require_https=not settings.allow_http_subscribers,
            retry_schedule=submit_retries,
            # An attempt left unanswered by a stop is sent again once its request has surely
            # ended.
            lease=settings.provider_timeout + 30,
        ),
    )

    # Every writer's commit announces the work it created; here each worker hears its kinds.
    db.subscribe_appended(shared.feed.appended)
    db.subscribe(Work.DELIVERIES, dispatcher.wake)
    db.subscribe(Work.FANOUTS, dispatcher.expand_fanouts)
    db.subscribe(Work.SUBMITS, submitter.wake)
    db.subscribe(Work.SUBMITS, held.wake)
    db.subscribe(Work.NODES, held.nodes_died)
    db.subscribe(Work.DEADLINES, deadlines.wake)
    db.subscribe(Work.MIRRORS, mirrors.wake)

    ingest = Ingest(
        db,
        publisher,
        clock=clock,
        capacity=settings.ingest_queue,
        batch_size=settings.ingest_batch,
        mirror=settings.mirror_outputs,
        # Fresh deliveries claimed at ingest and handed over in memory (docs/architecture.md).
        hot=dispatcher.hot_claims,
    )
    return Services(
        settings=settings,
        clock=clock,
        db=db,
        tokens=tokens,
        publisher=publisher,
        blobs=blobs,
        endpoints=endpoints,
        metrics=shared.metrics,
        feed=shared.feed,
        access=Authenticator(db, limiter, shared.metrics),
        keys=ApiKeys(db, clock, limiter),
        sign_outs=SignOuts(db, clock),
        jobs=JobReader(db),
        submitter=submitter,
        ingest=ingest,
        callbacks=Callbacks(
            tokens,
            endpoints,
            ingest,
            db=db,
            clock=clock,
            max_bytes=settings.max_callback_bytes,
            observers=shared.callback_observers,
            budget=InboundBudget(
                max_bytes=settings.inbound_buffer_bytes, per_route=settings.callback_concurrency
            ),
            body_timeout=settings.body_timeout,
            on_unknown_status=shared.metrics.unknown_status,
        ),
        subscriptions=Subscriptions(
            db,
            clock,
            publisher,
            allow_private=settings.allow_private_subscribers,
            rotation_grace=settings.secret_rotation_grace,
            require_https=not settings.allow_http_subscribers,
            renderer=renderer,
            max_per_key=settings.max_subscriptions_per_key,
        ),
        deliveries=Deliveries(db, clock),
        events=EventLog(
            db,
            shared.feed,
            keepalive=settings.stream_keepalive,
            max_streams_per_key=settings.max_streams_per_key,
            clock=clock,
        ),
        workers=Workers(
            dispatcher=dispatcher,
            held=held,
            ingest=ingest,
            deadlines=deadlines,
            mirrors=mirrors,
            submitter=submitter,
            retention=Retention(db, shared.metrics, clock=clock, max_age=settings.retention),
            log_folder=LogFolder(db),
        ),
    )


def _announce(settings: Settings, generated_admin_key: str | None) -> None:
    simulated = ", ".join(settings.simulated_providers) or "none"
    log.info("reelhook serving at %s (simulated providers: %s)", settings.public_url, simulated)
    log.info(
        "console: %s/console · API docs: %s/docs · data: %s",
        settings.public_url,
        settings.public_url,
        settings.data_dir.resolve(),
    )
    if generated_admin_key is not None:
        # Printed, not logged: this is the only time the key exists outside the caller's hands.
        sys.stdout.write(
            f"\nreelhook admin API key (shown once; only its hash is stored):\n"
            f"    {generated_admin_key}\n\n"
        )
        sys.stdout.flush()


def limiter_for(db: Database, settings: Settings, local: RateLimiter) -> Limiter:
    """The per-key request limit: ``local`` (in memory, kept across starts) on SQLite, where one
    process serves; shared through the database when several nodes run on PostgreSQL, where
    each node's own buckets would let a key through N times over (docs/scaling.md)."""
    if db.dialect == "postgresql":
        return SharedRateLimiter(db, settings.rate_limit, settings.rate_burst)
    return local
