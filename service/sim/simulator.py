"""Shared simulator state: scenarios (global and per job), counters, jobs, callback sending."""

from __future__ import annotations

import hmac
import logging
import math
import ssl
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from typing import Any

import anyio
import anyio.abc
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Host, Mount, Route, Router

log = logging.getLogger(__name__)

OUTCOMES = ("succeed", "fail")
CALLBACK_MODES = ("normal", "duplicate", "out_of_order", "lost", "forged")
PROVIDERS = ("trinetra", "apiframe", "segmind")
# Each provider's real host, so a client (the providers' own SDKs among them) can use the real
# base URL with its requests routed here (``Host`` header), or the provider's own port
# (:func:`create_provider_app`); both serve the provider's real path layout.
HOSTS = {
    "trinetra": "brahmand-api.bulletshorts.co",
    "apiframe": "api.apiframe.ai",
    "segmind": "api.segmind.com",
}
# How a success is shaped (docs/providers.md: the readings reelhook must accept). Trinetra:
# documented (output.outputs[]), url_object (output: {url}), list (outputs: [url]), kling (Kling's
# own body passed through). apiframe: documented (result: "url"), url_object ({videoUrl}), videos
# ({videos: [{url}]}), list ([url]), kling.
RESULT_SHAPES = ("documented", "url_object", "videos", "list", "kling")
# Where a Trinetra result goes: the per-job callback_url, only the account's webhook_url (set on
# the API key), or both.
ROUTES = ("job", "account", "both")
# A second callback of a duplicate or out-of-order pair follows the first this much later.
_FOLLOW_UP = 0.05


@dataclass(frozen=True, slots=True)
class Scenario:
    """How the simulator treats a job.

    ``delay``: seconds until the job finishes. ``outcome``: ``succeed``, or ``fail`` (a terminal
    content-policy failure). ``submit_status``: answer the submit with this HTTP error instead of
    accepting it, the first ``submit_failures`` times (every time when None); ``retry_after``:
    seconds the 429/503 answer asks to wait (``Retry-After``; Segmind's
    ``x-rate-limit-reset-at-utc``). ``submit_delay``: accept the job, then answer only this late
    (a client that gives up first sends it again; the provider's idempotency key makes that the
    same job). ``callback``: ``normal``, ``duplicate`` (the terminal callback twice),
    ``out_of_order`` (a progress callback after the terminal one), ``lost`` (the terminal callback
    is never sent) or ``forged`` (callbacks a provider did not sign: a wrong apiframe signature, a
    tampered Trinetra callback token). ``hang``: Segmind holds the request and never answers.
    ``status_word``: before the end, report progress under this status word (one reelhook does not
    know, e.g. ``rendering``). ``result_shape``: how a success carries its URL (one of
    :data:`RESULT_SHAPES`). ``route``: where Trinetra sends the result (:data:`ROUTES`; ``account``
    and ``both`` need the account's webhook URL, ``PUT /_sim/accounts/trinetra``).
    """

    delay: float = 5.0
    outcome: str = "succeed"
    submit_status: int | None = None
    submit_failures: int | None = None
    retry_after: float | None = None
    submit_delay: float = 0.0
    callback: str = "normal"
    hang: bool = False
    status_word: str | None = None
    result_shape: str = "documented"
    route: str = "job"

    def updated(self, changes: Mapping[str, Any]) -> Scenario:
        """This scenario with ``changes``; ValueError naming a bad field."""
        allowed = {f.name for f in fields(self)}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(
                f"unknown scenario fields: {sorted(unknown)} (known: {sorted(allowed)})"
            )
        for name, value in changes.items():
            problem = _problem(name, value)
            if problem:
                raise ValueError(f"{name} {problem}")
        return replace(self, **changes)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _problem(name: str, value: Any) -> str | None:
    if name in ("delay", "submit_delay"):
        return None if _number(value) and value >= 0 else "must be a number of seconds >= 0"
    if name == "retry_after":
        ok = value is None or (_number(value) and value >= 0)
        return None if ok else "must be null or a number of seconds >= 0"
    if name == "outcome":
        return None if value in OUTCOMES else f"must be one of {', '.join(OUTCOMES)}"
    if name == "callback":
        return None if value in CALLBACK_MODES else f"must be one of {', '.join(CALLBACK_MODES)}"
    if name == "submit_status":
        ok = value is None or (type(value) is int and 400 <= value <= 599)
        return None if ok else "must be null or an HTTP error status (400-599)"
    if name == "submit_failures":
        ok = value is None or (type(value) is int and value >= 0)
        return None if ok else "must be null (always) or a count >= 0"
    if name == "hang":
        return None if isinstance(value, bool) else "must be true or false"
    if name == "status_word":
        ok = value is None or (isinstance(value, str) and 0 < len(value) <= 40)
        return None if ok else "must be null or a word of 1-40 characters"
    if name == "result_shape":
        return None if value in RESULT_SHAPES else f"must be one of {', '.join(RESULT_SHAPES)}"
    if name == "route":
        return None if value in ROUTES else f"must be one of {', '.join(ROUTES)}"
    return None


@dataclass(slots=True)
class Rule:
    """A per-job scenario: ``changes`` to the global scenario for every submit whose prompt contains
    ``match`` (of ``provider``, or any). It counts what happened to the jobs it matched."""

    match: str
    provider: str | None
    changes: dict[str, Any]
    failures_left: int | None = None
    submit_requests: int = 0
    accepted: int = 0
    callbacks: list[dict[str, Any]] = field(default_factory=list)

    def applies(self, provider: str, prompt: str) -> bool:
        return self.match in prompt and self.provider in (None, provider)

    def describe(self) -> dict[str, Any]:
        return {
            "match": self.match,
            "provider": self.provider,
            **self.changes,
            "submit_requests": self.submit_requests,
            "accepted": self.accepted,
            "callbacks": list(self.callbacks),
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What the simulator does with one submit request."""

    provider: str
    scenario: Scenario
    rule: Rule | None
    refuse_with: int | None


class Simulator:
    """One simulator for all three providers; enter :meth:`running` before serving requests.

    ``api_keys``: the one key each provider accepts (any other is answered as that provider
    answers a bad key); a provider not named accepts any non-empty key. ``account_webhooks``:
    the webhook URL set on a provider account (Trinetra: "set a webhook_url on your API key").
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        api_keys: Mapping[str, str] | None = None,
        account_webhooks: Mapping[str, str] | None = None,
    ) -> None:
        self.api_keys = dict(api_keys or {})
        self.account_webhooks = dict(account_webhooks or {})
        self._initial = scenario
        self._scenario = scenario
        self._failures_left = scenario.submit_failures
        self.rules: list[Rule] = []
        self.status_requests: Counter[str] = Counter()
        self.submit_requests: Counter[str] = Counter()
        self.submits: Counter[str] = Counter()
        self.callbacks_sent: Counter[str] = Counter()
        self.callback_log: deque[dict[str, Any]] = deque(maxlen=1000)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.video = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()
        self._client: httpx.AsyncClient | None = None
        self._tasks: anyio.abc.TaskGroup | None = None
        self._callback_prefix: str | None = None

    def callbacks_only_to(self, prefix: str) -> None:
        """Send callbacks only to URLs starting with ``prefix`` (reelhook's own callback
        routes): a simulator mounted in reelhook must not be a relay that makes reelhook POST
        wherever an anonymous submit's ``callback_url`` or ``webhookUrl`` says."""
        self._callback_prefix = prefix

    @property
    def scenario(self) -> Scenario:
        """The global scenario: what every job no rule matches gets."""
        return self._scenario

    @scenario.setter
    def scenario(self, scenario: Scenario) -> None:
        self._scenario = scenario
        self._failures_left = scenario.submit_failures

    def add_rule(self, match: str, provider: str | None, changes: dict[str, Any]) -> Rule:
        """Register a per-job scenario (replacing one with the same match and provider)."""
        self._scenario.updated(changes)  # validates
        rule = Rule(match, provider, dict(changes), failures_left=changes.get("submit_failures"))
        self.rules = [r for r in self.rules if (r.match, r.provider) != (match, provider)]
        self.rules.append(rule)
        return rule

    def key_ok(self, provider: str, key: str | None) -> bool:
        """Whether ``key`` is the account's API key (any non-empty key when none is set)."""
        if not key:
            return False
        expected = self.api_keys.get(provider)
        return expected is None or hmac.compare_digest(key.encode(), expected.encode())

    def reset(self) -> None:
        self.scenario = self._initial
        self.rules = []

    def plan(self, provider: str, prompt: str) -> Plan:
        """Decide (and count) how to treat a submit request whose prompt is ``prompt``."""
        self.submit_requests[provider] += 1
        rule = next((r for r in reversed(self.rules) if r.applies(provider, prompt)), None)
        scenario = self._scenario
        if rule is not None:
            rule.submit_requests += 1
            scenario = replace(scenario, **rule.changes)
        refuse_with = None
        if scenario.submit_status is not None:
            # A rule that sets how many submits fail counts its own; else the global count runs.
            counter = rule if rule is not None and "submit_failures" in rule.changes else None
            left = counter.failures_left if counter is not None else self._failures_left
            if left is None or left > 0:
                refuse_with = scenario.submit_status
                if left is not None and counter is not None:
                    counter.failures_left = left - 1
                elif left is not None:
                    self._failures_left = left - 1
        return Plan(provider, scenario, rule, refuse_with)

    def accepted(self, plan: Plan) -> None:
        self.submits[plan.provider] += 1
        if plan.rule is not None:
            plan.rule.accepted += 1

    @asynccontextmanager
    async def running(self, verify: ssl.SSLContext | bool = True) -> AsyncIterator[Simulator]:
        """Run the simulator's background work (delayed callbacks) for the duration of the block.

        ``verify`` is the TLS context callbacks are sent with; an embedding service passes the one
        it already has, since loading the CA bundle for another costs tens of milliseconds.
        """
        async with (
            httpx.AsyncClient(timeout=10.0, trust_env=False, verify=verify) as client,
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
        self.in_sequence([(delay, action)])

    def in_sequence(self, steps: Sequence[tuple[float, Callable[[], Awaitable[None]]]]) -> None:
        """Run each ``(at, action)`` ``at`` seconds from now, one after another in one task, so a
        later step starts only after the one before it has finished."""
        if self._tasks is None:
            raise RuntimeError("the simulator is not running")

        async def run() -> None:
            start = anyio.current_time()
            for at, action in steps:
                await anyio.sleep(max(0.0, start + at - anyio.current_time()))
                try:
                    await action()
                except Exception:
                    log.exception("simulator background action failed")

        self._tasks.start_soon(run)

    async def post_callback(
        self,
        plan: Plan,
        url: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        job_id: str,
        kind: str,
    ) -> int | None:
        """POST a callback as the provider would; return the status code, or None if unreachable.

        Every callback is logged with the answer it got (``/_sim/stats``, and its rule).
        """
        assert self._client is not None
        status: int | None = None
        if self._callback_prefix is not None and not url.startswith(self._callback_prefix):
            log.warning(
                "simulated %s callback to %s refused: only %s... is allowed",
                plan.provider,
                url,
                self._callback_prefix,
            )
            self.record(plan, job_id=job_id, kind=kind, status=None)
            return None
        try:
            response = await self._client.post(
                url, content=body, headers={"Content-Type": "application/json", **(headers or {})}
            )
            status = response.status_code
            self.callbacks_sent[plan.provider] += 1
        except httpx.HTTPError as exc:
            # A timeout's text is empty: the class says what happened.
            log.warning(
                "simulated %s callback to %s failed: %s%s",
                plan.provider,
                url,
                type(exc).__name__,
                f" ({exc})" if str(exc) else "",
            )
        self.record(plan, job_id=job_id, kind=kind, status=status)
        return status

    def record(self, plan: Plan, *, job_id: str, kind: str, status: int | None) -> None:
        """Log a callback (``status`` None: not delivered, or deliberately lost)."""
        entry = {"provider": plan.provider, "job_id": job_id, "kind": kind, "status": status}
        self.callback_log.append(entry)
        if plan.rule is not None:
            plan.rule.callbacks.append(entry)

    def stats(self) -> dict[str, Any]:
        return {
            "status_requests": dict(self.status_requests),
            "status_requests_total": sum(self.status_requests.values()),
            "submit_requests": dict(self.submit_requests),
            "submits": dict(self.submits),
            "callbacks_sent": dict(self.callbacks_sent),
            "callbacks": list(self.callback_log),
            "scenario": asdict(self._scenario),
        }

    def provider_routes(self, provider: str) -> list[BaseRoute]:
        """``provider``'s own routes, at its real paths."""
        from service.sim import apiframe, segmind, trinetra

        if provider == "trinetra":
            return trinetra.routes(self)
        if provider == "apiframe":
            return apiframe.routes(self)
        return segmind.routes(self)

    def control_routes(self) -> list[BaseRoute]:
        """``/_sim/...``: counters, scenarios and account settings."""
        return [
            Route("/_sim/stats", self._stats_endpoint, methods=["GET"]),
            Route(
                "/_sim/scenario",
                self._scenario_endpoint,
                methods=["GET", "PUT", "POST", "DELETE"],
            ),
            Route("/_sim/accounts/{provider}", self._account_endpoint, methods=["GET", "PUT"]),
        ]

    def routes(self) -> list[BaseRoute]:
        """Each provider under its own host name (its real base URL, routed here) and under
        ``/{provider}`` (one port for all three), plus the control routes."""
        return [
            *(Host(HOSTS[name], Router(self.provider_routes(name))) for name in PROVIDERS),
            *(Mount(f"/{name}", routes=self.provider_routes(name)) for name in PROVIDERS),
            *self.control_routes(),
        ]

    async def _account_endpoint(self, request: Request) -> Response:
        """GET: the account's settings. PUT ``{"webhook_url": "…" | null}``: set the webhook URL
        of the account, as an operator does in the provider's dashboard."""
        provider = request.path_params["provider"]
        if provider not in PROVIDERS:
            return JSONResponse({"error": f"no provider {provider!r}"}, status_code=404)
        if request.method == "PUT":
            try:
                body = await request.json()
            except ValueError:
                body = None
            url = body.get("webhook_url") if isinstance(body, dict) else ""
            if url is not None and not (isinstance(url, str) and url.startswith("http")):
                return JSONResponse(
                    {"error": "webhook_url must be an http(s) URL or null"}, status_code=400
                )
            if url is None:
                self.account_webhooks.pop(provider, None)
            else:
                self.account_webhooks[provider] = url
        return JSONResponse({"webhook_url": self.account_webhooks.get(provider)})

    def _describe(self) -> dict[str, Any]:
        return {"scenario": asdict(self._scenario), "rules": [r.describe() for r in self.rules]}

    async def _stats_endpoint(self, request: Request) -> Response:
        return JSONResponse(self.stats())

    async def _scenario_endpoint(self, request: Request) -> Response:
        """GET: the global scenario and the rules. PUT: change the global scenario. POST
        ``{"match", "provider"?, …fields}``: add a per-job rule. DELETE: back to the start."""
        if request.method == "DELETE":
            self.reset()
            return JSONResponse(self._describe())
        if request.method == "GET":
            return JSONResponse(self._describe())
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            if request.method == "PUT":
                self.scenario = self._scenario.updated(body)
                return JSONResponse(self._describe())
            match = body.pop("match", None)
            provider = body.pop("provider", None)
            if not isinstance(match, str) or not match:
                raise ValueError("match must be a non-empty string found in the job's prompt")
            if provider is not None and provider not in PROVIDERS:
                raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}")
            rule = self.add_rule(match, provider, body)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(rule.describe(), status_code=201)


def create_sim_app(simulator: Simulator) -> Starlette:
    """A standalone simulator app: ``/trinetra``, ``/apiframe``, ``/segmind`` and ``/_sim``, and
    each provider at its real paths under its real host name."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with simulator.running():
            yield

    return Starlette(routes=simulator.routes(), lifespan=lifespan)


def create_provider_app(simulator: Simulator, provider: str) -> Starlette:
    """One provider on a port of its own, at its real path layout (``/v1/kling-2.5-turbo`` for
    Segmind): point a provider's own SDK's base URL here and it works unmodified."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with simulator.running():
            yield

    routes = [*simulator.provider_routes(provider), *simulator.control_routes()]
    return Starlette(routes=routes, lifespan=lifespan)


def callback_steps(scenario: Scenario, *, progress: bool) -> list[tuple[float, str]]:
    """When each callback of a job goes out, as ``(seconds after submit, kind)``.

    ``kind`` is ``progress``, ``terminal`` or ``lost`` (the terminal callback, not sent).
    ``progress``: whether the provider reports progress before the end (apiframe does).
    """
    delay = scenario.delay
    # Several progress reports (apiframe sends one per progress change), or one under an unknown
    # status word when the scenario asks for it.
    before = [(delay * share, "progress") for share in (0.5, 0.65, 0.8)] if progress else []
    if scenario.status_word is not None and not before:
        before = [(delay / 2, "progress")]
    mode = scenario.callback
    if mode == "duplicate":
        return [*before, (delay, "terminal"), (delay + _FOLLOW_UP, "terminal")]
    if mode == "out_of_order":
        return [(delay, "terminal"), (delay + _FOLLOW_UP, "progress")]
    if mode == "lost":
        return [*before, (delay, "lost")]
    return [*before, (delay, "terminal")]


def video_url(request: Request, name: str) -> str:
    """An absolute URL of a simulated output file, served under the same provider mount."""
    # root_path includes every enclosing Mount (base_url only has the application's root).
    mount = request.scope.get("root_path", "")
    return str(request.url.replace(path=f"{mount}/files/{name}", query=""))


async def serve_video(simulator: Simulator, request: Request) -> Response:
    return Response(simulator.video, media_type="video/mp4")


def error(
    status_code: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status_code, headers=headers)


def prompt_of(body: Any) -> str:
    prompt = body.get("prompt") if isinstance(body, dict) else None
    return prompt if isinstance(prompt, str) else ""
