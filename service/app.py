"""The application factory: routes, error mapping, and a lifespan that owns every resource."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
import anyio
import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Mount

from service import bootstrap
from service.api import routes
from service.api.context import Services
from service.blobs import BlobStore
from service.clock import Clock, system_clock
from service.delivery.dispatcher import Dispatcher
from service.delivery.retry import RetryPolicy
from service.delivery.sender import Sender
from service.errors import (
    ReelhookError,
    handle_http_exception,
    handle_reelhook_error,
    handle_unexpected,
)
from service.eventfeed import EventFeed
from service.events import Publisher
from service.held_requests import HeldRequests
from service.settings import Settings
from service.sim import Scenario, Simulator
from service.storage.database import Database
from service.submission import ProviderEndpoint, Submitter
from service.tokens import Tokens

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
) -> Starlette:
    """Build reelhook for ``settings``. Nothing is opened until the lifespan starts.

    ``clock`` and ``retry_overload_floor`` exist so tests can drive time-based behaviour.
    """
    simulator = (
        Simulator(Scenario(delay=settings.sim_delay)) if settings.simulated_providers else None
    )
    feed = EventFeed()
    app_routes: list[BaseRoute] = routes()
    if simulator is not None:
        app_routes.append(Mount("/sim", routes=simulator.routes()))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        async with AsyncExitStack() as stack:
            tokens = Tokens(await bootstrap.secret_keys(settings))
            db = await stack.enter_async_context(Database.open(settings.database_path))
            feed.open()
            db.on_commit(feed.notify)
            generated = await bootstrap.admin_key(db, settings, clock)
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=settings.provider_timeout, follow_redirects=False)
            )
            session = await stack.enter_async_context(
                Sender.session(
                    allow=settings.allow_private_subscribers,
                    timeout=settings.delivery_timeout,
                    concurrency=settings.delivery_concurrency,
                )
            )
            if simulator is not None:
                await stack.enter_async_context(simulator.running())
            services = _wire(
                settings, clock, retry_overload_floor, db, tokens, client, session, feed
            )
            tasks = await stack.enter_async_context(anyio.create_task_group())
            tasks.start_soon(services.dispatcher.run)
            tasks.start_soon(services.held.run)
            _announce(settings, generated)
            try:
                yield {"services": services}
            finally:
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
    feed: EventFeed,
) -> Services:
    endpoints = provider_endpoints(settings)
    blobs = BlobStore(settings.blob_dir)

    def file_url(digest: str, media_type: str) -> str:
        return f"{settings.public_url}/v1/files/{tokens.file(digest, media_type)}"

    publisher = Publisher(file_url, first_delay=settings.retry_schedule[0])
    dispatcher = Dispatcher(
        db,
        Sender(session),
        RetryPolicy(settings.retry_schedule, overload_floor=retry_overload_floor),
        clock=clock,
        # A lease outlives the slowest attempt, with room for a claimed row to wait for a slot.
        lease=2 * settings.delivery_timeout + 5,
        concurrency=settings.delivery_concurrency,
        per_subscription=settings.subscription_concurrency,
    )

    held = HeldRequests(
        db=db,
        publisher=publisher,
        client=client,
        blobs=blobs,
        endpoint=endpoints.get("segmind"),
        clock=clock,
        on_commit=dispatcher.wake,
        concurrency=settings.segmind_concurrency,
        timeout=settings.segmind_timeout,
        max_bytes=settings.mirror_max_bytes,
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
        on_commit=dispatcher.wake,
        on_held_job=held.wake,
    )
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
        feed=feed,
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
