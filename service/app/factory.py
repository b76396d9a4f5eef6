"""The application factory: routes, error mapping, and a lifespan that owns every resource."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount

from service import console
from service.access.callers import Authenticator
from service.access.keys import ApiKeys
from service.api import routes
from service.api.errors import handle_http_exception, handle_reelhook_error, handle_unexpected
from service.app import bootstrap, startup_checks
from service.app.services import Services
from service.app.settings import Settings
from service.core.clock import Clock, system_clock
from service.core.errors import ReelhookError
from service.core.tokens import Tokens
from service.delivery.deliveries import Deliveries
from service.delivery.dispatcher import PREFETCH, Dispatcher
from service.delivery.eventfeed import EventFeed
from service.delivery.eventlog import EventLog
from service.delivery.publisher import Publisher
from service.delivery.retry import RetryPolicy
from service.delivery.sender import Sender
from service.delivery.subscriptions import Subscriptions
from service.jobs.callback_outcomes import CallbackObserver
from service.jobs.deadlines import DeadlineTimer
from service.jobs.held_requests import HeldRequests
from service.jobs.ingest import Ingest
from service.jobs.listing import JobReader
from service.jobs.mirroring import RETRY_DELAYS, Mirrors
from service.jobs.submission import ProviderEndpoint, Submitter
from service.jobs.submit_retry import SubmitRetryPolicy
from service.net.client import guarded_client, origin_of
from service.ops.instrumentation import MeteredSender, MeteredTransport
from service.ops.metrics import Metrics
from service.ops.ratelimit import Limiter, RateLimiter, SharedRateLimiter
from service.ops.retention import Retention
from service.sim import Scenario, Simulator
from service.storage import datadir
from service.storage.announcements import Work
from service.storage.blobs import BlobStore
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
    retry_overload_floor: float = 60.0,
    mirror_retry_delays: Sequence[float] = RETRY_DELAYS,
    callback_observers: Sequence[CallbackObserver] = (),
) -> Starlette:
    """Build reelhook for ``settings``. Nothing is opened until the lifespan starts.

    ``clock``, ``retry_overload_floor`` and ``mirror_retry_delays`` exist so tests can drive
    time-based behaviour; ``callback_observers`` hear the outcome of every provider callback.
    """
    simulator = (
        Simulator(Scenario(delay=settings.sim_delay)) if settings.simulated_providers else None
    )
    # Per application, never global: two apps in one process (tests) must not share counts.
    metrics = Metrics()
    feed = EventFeed()
    app_routes: list[BaseRoute] = routes() + console.routes()
    if simulator is not None:
        app_routes.append(Mount("/sim", routes=simulator.routes()))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            stack.enter_context(datadir.locked(settings.data_dir))
            tokens = Tokens(await bootstrap.secret_keys(settings))
            db = await stack.enter_async_context(
                Database.open(settings.database_url, node_timeout=settings.node_timeout)
            )
            feed.open()
            generated = await bootstrap.admin_key(db, settings, clock)
            # One TLS context (loading the CA bundle is slow) for provider calls and downloads.
            ssl_context = httpx.create_ssl_context()
            bases = {e.base_url: e.name for e in provider_endpoints(settings).values()}
            client = await stack.enter_async_context(
                httpx.AsyncClient(
                    timeout=settings.provider_timeout,
                    follow_redirects=False,
                    transport=MeteredTransport(
                        httpx.AsyncHTTPTransport(verify=ssl_context), metrics, bases
                    ),
                )
            )
            session = await stack.enter_async_context(
                Sender.session(
                    allow=settings.allow_private_subscribers,
                    timeout=settings.delivery_timeout,
                    concurrency=settings.delivery_concurrency,
                )
            )
            downloads = await stack.enter_async_context(
                guarded_client(
                    settings.allow_private_subscribers,
                    ssl_context=ssl_context,
                    # The in-process simulator serves its videos from reelhook's own address.
                    trusted=[origin_of(settings.public_url)] if simulator is not None else [],
                    timeout=httpx.Timeout(60.0, connect=30.0),
                )
            )
            if simulator is not None:
                await stack.enter_async_context(simulator.running())
            services = _wire(
                settings,
                clock,
                retry_overload_floor,
                db,
                tokens,
                client,
                session,
                downloads,
                mirror_retry_delays,
                metrics,
                limiter_for(db, settings),
                feed,
            )
            services.callback_observers.append(metrics.callback_outcome)
            services.callback_observers.extend(callback_observers)
            await services.blobs.remove_leftovers()
            retention = Retention(db, metrics, clock=clock, max_age=settings.retention)
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(db.run)
            tasks.start_soon(services.dispatcher.run)
            tasks.start_soon(services.held.run)
            tasks.start_soon(services.ingest.run)
            tasks.start_soon(services.deadlines.run)
            tasks.start_soon(services.mirrors.run)
            tasks.start_soon(services.submitter.run_retries)
            tasks.start_soon(retention.run)
            _announce(settings, generated)
            startup_checks.warn_if_unreachable(settings)
            try:
                yield {"services": services}
            finally:
                # In-flight deliveries get the grace period; the rest are left for the next start.
                await services.dispatcher.stop()
                feed.close()
                tasks.cancel_scope.cancel()

    app = Starlette(
        routes=app_routes,
        lifespan=lifespan,
        exception_handlers={
            ReelhookError: handle_reelhook_error,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    # uvicorn waits for open responses before it runs the lifespan exit, and a live event stream
    # never ends by itself: service.server calls this as shutdown begins.
    app.state.end_streams = feed.close
    return app


def _wire(
    settings: Settings,
    clock: Clock,
    retry_overload_floor: float,
    db: Database,
    tokens: Tokens,
    client: httpx.AsyncClient,
    session: aiohttp.ClientSession,
    downloads: httpx.AsyncClient,
    mirror_retry_delays: Sequence[float],
    metrics: Metrics,
    limiter: Limiter,
    feed: EventFeed,
) -> Services:
    endpoints = provider_endpoints(settings)
    blobs = BlobStore(settings.blob_dir)

    def file_url(digest: str, media_type: str) -> str:
        return f"{settings.public_url}/v1/files/{tokens.file(digest, media_type)}"

    publisher = Publisher(file_url, first_delay=settings.retry_schedule[0])
    dispatcher = Dispatcher(
        db,
        MeteredSender(session, metrics),
        RetryPolicy(settings.retry_schedule, overload_floor=retry_overload_floor),
        clock=clock,
        # Shown in the delivery log as when a claimed row would be given up; the row is only ever
        # taken back by the next start (the one process owning the database released it).
        lease=(PREFETCH + 1) * settings.delivery_timeout + 5,
        concurrency=settings.delivery_concurrency,
        per_subscription=settings.subscription_concurrency,
        publisher=publisher,
        disable_after=settings.disable_after,
        shutdown_grace=settings.shutdown_grace,
    )

    submit_retries = SubmitRetryPolicy(settings.submit_retry_schedule)
    held = HeldRequests(
        db=db,
        publisher=publisher,
        client=client,
        blobs=blobs,
        endpoint=endpoints.get("segmind"),
        clock=clock,
        concurrency=settings.segmind_concurrency,
        timeout=settings.segmind_timeout,
        max_bytes=settings.mirror_max_bytes,
        resubmit=settings.segmind_resubmit,
        retry_policy=submit_retries,
    )
    deadlines = DeadlineTimer(db, publisher, clock=clock)
    mirrors = Mirrors(
        db=db,
        publisher=publisher,
        blobs=blobs,
        client=downloads,
        clock=clock,
        max_bytes=settings.mirror_max_bytes,
        timeout=settings.mirror_timeout,
        retry_delays=mirror_retry_delays,
    )
    submitter = Submitter(
        db=db,
        publisher=publisher,
        client=client,
        tokens=tokens,
        endpoints=endpoints,
        public_url=settings.public_url,
        clock=clock,
        job_deadline=settings.job_deadline,
        allow_private=settings.allow_private_subscribers,
        deadlines=settings.job_deadlines,
        retry_policy=submit_retries,
        # An attempt left unanswered by a stop is sent again once its request has surely ended.
        lease=settings.provider_timeout + 30,
    )

    # Every writer's commit announces the work it created; here each worker hears its kinds.
    db.subscribe(Work.EVENTS, feed.notify)
    db.subscribe(Work.DELIVERIES, dispatcher.wake)
    db.subscribe(Work.SUBMITS, submitter.wake)
    db.subscribe(Work.SUBMITS, held.wake)
    db.subscribe(Work.DEADLINES, deadlines.wake)
    db.subscribe(Work.MIRRORS, mirrors.wake)

    return Services(
        settings=settings,
        db=db,
        tokens=tokens,
        publisher=publisher,
        clock=clock,
        blobs=blobs,
        endpoints=endpoints,
        submitter=submitter,
        dispatcher=dispatcher,
        held=held,
        ingest=Ingest(
            db,
            publisher,
            clock=clock,
            capacity=settings.ingest_queue,
            batch_size=settings.ingest_batch,
            mirror=settings.mirror_outputs,
        ),
        deadlines=deadlines,
        mirrors=mirrors,
        limiter=limiter,
        metrics=metrics,
        feed=feed,
        access=Authenticator(db, limiter, metrics),
        keys=ApiKeys(db, clock, limiter),
        jobs=JobReader(db),
        subscriptions=Subscriptions(
            db,
            clock,
            publisher,
            allow_private=settings.allow_private_subscribers,
            rotation_grace=settings.secret_rotation_grace,
        ),
        deliveries=Deliveries(db, clock),
        events=EventLog(db, feed, keepalive=settings.stream_keepalive),
    )


def _announce(settings: Settings, generated_admin_key: str | None) -> None:
    simulated = ", ".join(settings.simulated_providers) or "none"
    log.info("reelhook serving at %s (simulated providers: %s)", settings.public_url, simulated)
    if generated_admin_key is not None:
        # Printed, not logged: this is the only time the key exists outside the caller's hands.
        sys.stdout.write(
            f"\nreelhook admin API key (shown once; only its hash is stored):\n"
            f"    {generated_admin_key}\n\n"
        )
        sys.stdout.flush()


def limiter_for(db: Database, settings: Settings) -> Limiter:
    """The per-key request limit: in memory on SQLite (one process), shared through the
    database when several nodes run on PostgreSQL (otherwise each node would allow the limit)."""
    if db.dialect == "postgresql":
        return SharedRateLimiter(db, settings.rate_limit, settings.rate_burst)
    return RateLimiter(settings.rate_limit, settings.rate_burst)
