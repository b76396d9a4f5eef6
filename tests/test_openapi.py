"""``/openapi.json`` and ``/docs``: generated from the routes that run, valid, and honest.

The document is checked by an OpenAPI validator, every route must declare its contract, and
schemathesis sends requests to a real server - its coverage phase (each parameter's and field's
boundary values, valid and invalid, one by one) and then property-based fuzzing - finding no 5xx,
no answer that contradicts the document, no request the document allows refused (but for the
few refusals listed in ``BEYOND_THE_SCHEMA``) and none it forbids accepted.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from service.api import resource, routes
from service.api.openapi import build_document
from service.api.operation import Resource, undocumented
from service.app.factory import create_app
from service.jobs.catalog import MODELS
from service.net.guard import URL_PATTERN
from tests.conftest import SettingsFactory
from tests.servers import free_port, run_service
from tests.support import ADMIN_KEY, assert_error

# The simulator's mount imitates the providers' APIs, and the console's serves HTML pages to
# people; neither is reelhook's JSON API.
EXEMPT = ("/console", "/sim")


async def document(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/openapi.json")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


@pytest.mark.anyio
async def test_the_document_is_valid_openapi_3_1(client: httpx.AsyncClient) -> None:
    doc = await document(client)
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    # Served without a key: tools fetch it before they have one.
    del client.headers["X-API-Key"]
    assert await document(client) == doc


def test_every_route_that_runs_declares_its_contract(settings_factory: SettingsFactory) -> None:
    """A route added without ``@operation`` fails here, naming itself."""
    app = create_app(settings_factory())
    assert [r.path for r in app.routes if isinstance(r, Mount)] == ["/console", "/sim"]
    assert undocumented(app.routes, exempt=EXEMPT) == []


def test_an_undeclared_route_is_reported() -> None:
    async def plain(request: Request) -> Response:
        return Response()

    table = [*routes(), resource("/v1/new", get=plain), Route("/raw", plain)]
    assert undocumented(table) == ["GET /v1/new", "GET,HEAD /raw (not built with resource())"]


@pytest.mark.anyio
async def test_the_document_lists_exactly_the_routes_that_run(
    shared_api: httpx.AsyncClient,
) -> None:
    doc = await document(shared_api)
    served = {
        (route.path, method)
        for route in routes()
        if isinstance(route, Resource)
        for method in route.handlers
    }
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert documented == served
    for path, item in doc["paths"].items():
        for name in re.findall(r"{(\w+)}", path):
            for op in item.values():
                assert any(p["in"] == "path" and p["name"] == name for p in op["parameters"])


@pytest.mark.anyio
async def test_the_job_request_is_derived_from_the_model_specs(
    shared_api: httpx.AsyncClient,
) -> None:
    schemas = (await document(shared_api))["components"]["schemas"]
    variants = [v["$ref"].rsplit("/", 1)[-1] for v in schemas["JobRequest"]["oneOf"]]
    assert len(variants) == len(MODELS)
    for name, (model_id, spec) in zip(variants, MODELS.items(), strict=True):
        request = schemas[name]
        assert request["properties"]["model"] == {"const": model_id}
        assert request["properties"]["input"] == spec.input_schema()
        params = {p.name: p for p in spec.params}
        assert set(request["properties"]["input"]["properties"]) == set(params)
        assert request["properties"]["input"]["required"] == [
            p.name for p in spec.params if p.required
        ]
    models = await shared_api.get("/v1/models")
    for entry in models.json()["data"]:
        declared = schemas[f"JobRequest.{entry['id'].replace('/', '.')}"]["properties"]["input"]
        for name, described in entry["parameters"].items():
            assert declared["properties"][name]["description"] == described["description"]


@pytest.mark.anyio
async def test_docs_render_every_operation_without_fetching_anything(
    client: httpx.AsyncClient,
) -> None:
    doc = await document(client)
    del client.headers["X-API-Key"]
    page = await client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert f"{method.upper()}</span><code>{path}</code>" in text
            assert op["summary"] in text
    for name in doc["components"]["schemas"]:
        assert f'id="schema-{name}"' in text
    for event_type in doc["webhooks"]:
        assert f"<h3>{event_type}</h3>" in text
    # Self-contained: no scripts, and every link or resource stays on this server.
    assert "<script" not in text.lower()
    assert re.findall(r'(?:src|href)="(https?:)?//', text) == []


# --- schemathesis against a running server -------------------------------------------------------


@dataclass(frozen=True)
class Live:
    url: str
    subscriber: str
    data_dir: Path


# The server below keeps its own SQLite whatever --store says: these run in one pass only.
ONE_STORE = pytest.mark.one_store("reelhook serve here keeps its own SQLite file")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """``reelhook serve`` in its own process on loopback, its simulator finishing jobs;
    subscribers point at a loopback port where nothing listens."""
    data_dir = tmp_path_factory.mktemp("schemathesis") / "data"
    environ = {
        "REELHOOK_PORT": str(free_port()),
        "REELHOOK_DATA_DIR": str(data_dir),
        "REELHOOK_ADMIN_KEY": ADMIN_KEY,
        "REELHOOK_SIM_DELAY": "0.05",
        "REELHOOK_ALLOW_PRIVATE_SUBSCRIBERS": "127.0.0.0/8",
        "REELHOOK_RETRY_SCHEDULE": "0,0.2",
        # Hundreds of requests in seconds with one key: without this most would only meet the
        # (documented) 429 instead of the operation under test.
        "REELHOOK_RATE_LIMIT": "0",
    }
    with run_service(environ) as url:
        yield Live(url, f"http://127.0.0.1:{free_port()}/hook", data_dir)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.trust_env = False  # loopback only: no proxy from the environment
        yield http


# Built by the same function that serves /openapi.json (a test below checks the served one is
# identical), so schemathesis can parametrize at collection time, before any server runs.
DOCUMENT = build_document(routes(), server_url="http://127.0.0.1")
# The stream never ends by design; tests/test_stream.py covers it.
schema = schemathesis.openapi.from_dict(
    DOCUMENT,
    config=SchemathesisConfig.from_dict(
        {
            "auth": {"openapi": {"ApiKey": {"api_key": ADMIN_KEY}}},
            # Valid and invalid requests; the coverage phase first (each boundary case of every
            # parameter and field once), then fuzzing. Named, so a changed default cannot drop it.
            "generation": {"mode": "all"},
            "phases": {"coverage": {"enabled": True}, "fuzzing": {"enabled": True}},
        }
    ),
).exclude(path="/v1/events/stream")


@ONE_STORE
def test_the_tested_document_is_the_served_one(live: Live, session: requests.Session) -> None:
    served = session.get(f"{live.url}/openapi.json", timeout=10).json()
    assert served["servers"] == [{"url": live.url}]
    assert {**served, "servers": DOCUMENT["servers"]} == DOCUMENT


# 422s no JSON Schema can foresee: the value is well formed, and the server judges what it names
# or does against its own state or the event shapes. Each is the whole reason for its 422.
BEYOND_THE_SCHEMA = (
    ("after", re.compile(r"^no event '")),  # an event id of the right shape that names none
    ("since", re.compile(r"in the future")),  # recover: a time after now
    ("filter", re.compile(r"no event has a field ")),  # a path absent from every event shape
    ("template", re.compile(r"^rendering a sample |^the rendered body is not valid JSON")),
)


def _beyond_the_schema(response: requests.Response) -> bool:
    """Whether a 422 names only fields refused for a reason in :data:`BEYOND_THE_SCHEMA`."""
    if response.status_code != 422:
        return False
    fields = response.json().get("error", {}).get("details", {}).get("fields", {})
    return bool(fields) and all(
        any(
            (name == field or name.startswith(f"{field}.")) and pattern.search(problem)
            for field, pattern in BEYOND_THE_SCHEMA
        )
        for name, problem in fields.items()
    )


def schema_valid_requests_are_accepted(ctx: Any, response: Any, case: Any) -> bool | None:
    """schemathesis's ``positive_data_acceptance``: a request the document allows is not
    refused, but for the refusals in :data:`BEYOND_THE_SCHEMA`."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if _beyond_the_schema(response):
            return None
        raise


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    schema_valid_requests_are_accepted,
    missing_required_header,
    unsupported_method,
]


def keep_subscribers_on_loopback(case: Any, subscriber: str) -> None:
    """Generated subscriber URLs would be real hosts: tests send traffic to loopback only. A
    value the document refuses stays as generated: reelhook refuses it before any connection."""
    if isinstance(case.body, dict):
        for field in ("url", "callback_url"):
            value = case.body.get(field)
            if isinstance(value, str) and re.search(URL_PATTERN, value):
                case.body[field] = subscriber


@pytest.mark.slow
@ONE_STORE
@schema.parametrize()
@settings(
    # The coverage phase (on by default in schemathesis's pytest runs, and named in the config
    # above) sends each boundary case once; fuzzing adds this many random requests per operation.
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=True,
)
def test_answers_conform_to_the_document(case: Any, live: Live, session: requests.Session) -> None:
    keep_subscribers_on_loopback(case, live.subscriber)
    case.call_and_validate(base_url=live.url, session=session, checks=CHECKS)


def conforms(response: requests.Response, method: str, path: str, status: int) -> Any:
    """Assert ``response`` has ``status`` and matches what the document says of it; its JSON."""
    assert response.status_code == status, response.text
    schema[path][method].validate_response(response)
    media = response.headers["content-type"].split(";")[0]
    assert media in DOCUMENT["paths"][path][method.lower()]["responses"][str(status)]["content"]
    return response.json() if media == "application/json" else response.text


@ONE_STORE
def test_answers_that_need_existing_resources_conform(
    live: Live, session: requests.Session
) -> None:
    """Schemathesis reaches deliveries and keys only by made-up ids (404s): here real ones, a
    failed delivery with its attempts among them, are checked against the document."""

    def call(method: str, path: str, accept: str = "*/*", **options: Any) -> requests.Response:
        headers = {"X-API-Key": ADMIN_KEY, "Accept": accept}
        return session.request(method, live.url + path, headers=headers, timeout=10, **options)

    def delivery_when_failed(event_id: str) -> Any:
        for _ in range(500):
            listed = conforms(
                call("GET", "/v1/deliveries", params={"event": event_id}),
                "GET",
                "/v1/deliveries",
                200,
            )
            if listed["data"] and listed["data"][0]["status"] == "failed":
                return listed["data"][0]
            time.sleep(0.02)
        raise AssertionError(f"the delivery of {event_id} never failed")

    sub = call("POST", "/v1/subscriptions", json={"url": live.subscriber}).json()
    sub_path = "/v1/subscriptions/{subscription_id}"
    ping = conforms(
        call("POST", f"/v1/subscriptions/{sub['id']}/test"), "POST", sub_path + "/test", 202
    )
    # Nothing listens at the subscriber URL: every attempt fails.
    delivery = delivery_when_failed(ping["event_id"])
    one = "/v1/deliveries/{delivery_id}"
    detail = conforms(call("GET", f"/v1/deliveries/{delivery['id']}"), "GET", one, 200)
    assert detail["payload"]["type"] == "ping"
    assert detail["attempts"] and detail["attempts"][0]["status_code"] is None

    recovered = conforms(
        call("POST", f"/v1/subscriptions/{sub['id']}/recover", params={"since": "0"}),
        "POST",
        sub_path + "/recover",
        202,
    )
    assert recovered["recovered"] == 1 and recovered["until"] is None
    delivery_when_failed(ping["event_id"])
    resent = conforms(
        call("POST", f"/v1/deliveries/{delivery['id']}/retry"), "POST", one + "/retry", 202
    )
    assert resent["status"] == "pending"
    rotated = conforms(
        call("POST", f"/v1/subscriptions/{sub['id']}/rotate-secret"),
        "POST",
        sub_path + "/rotate-secret",
        200,
    )
    assert rotated["secret"] != sub["secret"] and rotated["previous_secret_expires_at"]

    body = {"name": "schemathesis", "scopes": ["read"]}
    created = conforms(call("POST", "/v1/keys", json=body), "POST", "/v1/keys", 201)
    key_path = "/v1/keys/{key_id}"
    assert (
        conforms(call("GET", f"/v1/keys/{created['id']}"), "GET", key_path, 200)["name"]
        == body["name"]
    )
    assert call("DELETE", f"/v1/keys/{created['id']}").status_code == 204
    listed = conforms(call("GET", "/v1/keys", params={"limit": "200"}), "GET", "/v1/keys", 200)
    (revoked,) = [k for k in listed["data"] if k["id"] == created["id"]]
    assert revoked["revoked_at"] is not None

    assert conforms(call("GET", "/readyz"), "GET", "/readyz", 200)["status"] == "ready"
    text = conforms(call("GET", "/metrics"), "GET", "/metrics", 200)
    assert "reelhook_delivery_attempts_total" in text
    openmetrics = call("GET", "/metrics", accept="application/openmetrics-text")
    assert conforms(openmetrics, "GET", "/metrics", 200).endswith("# EOF\n")


@ONE_STORE
def test_no_subscriber_outside_loopback_was_stored(live: Live) -> None:
    """The guard above held: every stored subscriber URL is the loopback one."""
    import sqlite3

    with sqlite3.connect(live.data_dir / "reelhook.db") as db:
        hosts = {urlsplit(url).hostname for (url,) in db.execute("SELECT url FROM subscriptions")}
    assert hosts <= {"127.0.0.1"}


@pytest.mark.anyio
async def test_unknown_query_parameters_are_refused_by_name(shared_api: httpx.AsyncClient) -> None:
    response = await shared_api.get("/v1/jobs", params={"stauts": "failed", "limit": "5"})
    error = assert_error(response, 422, "validation_failed", "stauts")
    assert "accepted: status, model, since, until, cursor, limit" in error["message"]
    # Links reelhook hands out stay lenient: a provider or chat may decorate them.
    lenient = await shared_api.post(
        "/v1/callbacks/trinetra/not-a-token", params={"x": "1"}, json={}
    )
    assert_error(lenient, 401, "unauthorized")
    link = await shared_api.get("/v1/files/not-a-token", params={"utm_source": "chat"})
    assert_error(link, 403, "forbidden")
