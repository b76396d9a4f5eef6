"""Shared simulator state: scenarios, counters, stored jobs and the callback sender."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from typing import Any

import anyio
import anyio.abc
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scenario:
    """How the simulator behaves for the next jobs.

    ``delay``: seconds until the job finishes. ``outcome``: ``succeed`` or ``fail`` (a content
    policy failure). ``submit_status``: answer submits with this HTTP error instead of accepting.
    """

    delay: float = 5.0
    outcome: str = "succeed"
    submit_status: int | None = None

    def updated(self, changes: dict[str, Any]) -> Scenario:
        allowed = {f.name for f in fields(self)}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown scenario fields: {sorted(unknown)}")
        return replace(self, **changes)


class Simulator:
    """One simulator for all three providers; enter :meth:`running` before serving requests."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self.status_requests: Counter[str] = Counter()
        self.submits: Counter[str] = Counter()
        self.callbacks_sent: Counter[str] = Counter()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.video = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()
        self._client: httpx.AsyncClient | None = None
        self._tasks: anyio.abc.TaskGroup | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Simulator]:
        """Run the simulator's background work (delayed callbacks) for the duration of the block."""
        async with (
            httpx.AsyncClient(timeout=10.0, trust_env=False) as client,
            anyio.create_task_group() as tasks,
        ):
            self._client, self._tasks = client, tasks
            try:
                yield self
            finally:
                tasks.cancel_scope.cancel()
                self._client = self._tasks = None

    def later(self, delay: float, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` after ``delay`` seconds in the simulator's task group."""
        if self._tasks is None:
            raise RuntimeError("the simulator is not running")

        async def run() -> None:
            await anyio.sleep(delay)
            try:
                await action()
            except Exception:
                log.exception("simulator background action failed")

        self._tasks.start_soon(run)

    async def post_callback(
        self, provider: str, url: str, body: bytes, headers: dict[str, str] | None = None
    ) -> int | None:
        """POST a callback as the provider would; return the status code, or None if unreachable."""
        assert self._client is not None
        try:
            response = await self._client.post(
                url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
            )
        except httpx.HTTPError as exc:
            log.warning("simulated %s callback to %s failed: %s", provider, url, exc)
            return None
        self.callbacks_sent[provider] += 1
        return response.status_code

    def stats(self) -> dict[str, Any]:
        return {
            "status_requests": dict(self.status_requests),
            "status_requests_total": sum(self.status_requests.values()),
            "submits": dict(self.submits),
            "callbacks_sent": dict(self.callbacks_sent),
            "scenario": asdict(self.scenario),
        }

    def routes(self) -> list[BaseRoute]:
        from service.sim import apiframe, segmind, trinetra

        return [
            Mount("/trinetra", routes=trinetra.routes(self)),
            Mount("/apiframe", routes=apiframe.routes(self)),
            Mount("/segmind", routes=segmind.routes(self)),
            Route("/_sim/stats", self._stats_endpoint, methods=["GET"]),
            Route("/_sim/scenario", self._scenario_endpoint, methods=["GET", "PUT"]),
        ]

    async def _stats_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _scenario_endpoint(self, request: Request) -> Response:
        if request.method == "PUT":
            try:
                self.scenario = self.scenario.updated(await request.json())
            except (ValueError, TypeError) as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(asdict(self.scenario))


def create_sim_app(simulator: Simulator) -> Starlette:
    """A standalone simulator app: ``/trinetra``, ``/apiframe``, ``/segmind`` and ``/_sim``."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with simulator.running():
            yield

    return Starlette(routes=simulator.routes(), lifespan=lifespan)


def video_url(request: Request, name: str) -> str:
    """An absolute URL of a simulated output file, served under the same provider mount."""
    # root_path includes every enclosing Mount (base_url only has the application's root).
    mount = request.scope.get("root_path", "")
    return str(request.url.replace(path=f"{mount}/files/{name}", query=""))


async def serve_video(simulator: Simulator, request: Request) -> Response:
    return Response(simulator.video, media_type="video/mp4")


def error(status_code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code)
