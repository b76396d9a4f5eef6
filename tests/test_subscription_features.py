"""Issue 19 through the API: payload filters, body templates (and their preview), v1a signatures.

Deliveries go to a loopback :class:`Sink`; jobs finish through the embedded simulator.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import nacl.signing
import pytest
from standardwebhooks.webhooks import Webhook

from service.delivery import signing
from tests.conftest import SettingsFactory
from tests.servers import Sink, run_server
from tests.support import api_client, assert_error, served_with_sink, wait_for_job

pytestmark = pytest.mark.anyio

HOOK = "https://hooks.example.test/reelhook"
SEGMIND = "segmind/kling-2.5-turbo"


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, str]]:
    recorder = Sink()
    async with run_server(recorder.app()) as url:
        yield recorder, url


async def subscribe(http: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    response = await http.post("/v1/subscriptions", json={"url": HOOK, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def ping(http: httpx.AsyncClient, recorder: Sink, sub_id: str, path: str, count: int) -> Any:
    response = await http.post(f"/v1/subscriptions/{sub_id}/test")
    assert response.status_code == 202, response.text
    await recorder.wait_for(lambda s: len(s.on(path)) >= count, within=10)
    return recorder.on(path)[count - 1]


async def assert_nothing_stored(http: httpx.AsyncClient) -> None:
    listed = await http.get("/v1/subscriptions")
    assert listed.json()["data"] == []


# --- payload filters -----------------------------------------------------------------------------


async def test_a_filter_delivers_only_the_events_it_passes(
    settings_factory: SettingsFactory,
) -> None:
    async with served_with_sink(settings_factory, SIM_DELAY="0.05") as (http, sink, sink_url):
        bots_filter = {"path": "data.metadata.channel", "eq": "bots"}
        created = await http.post(
            "/v1/subscriptions",
            json={
                "url": f"{sink_url}/bots",
                "event_types": ["job.succeeded"],
                "filter": bots_filter,
            },
        )
        assert created.status_code == 201, created.text
        assert created.json()["filter"] == bots_filter
        everything = await http.post(
            "/v1/subscriptions", json={"url": f"{sink_url}/all", "event_types": ["job.succeeded"]}
        )
        assert everything.status_code == 201
        job_ids = []
        for channel in ("humans", "bots", None):
            metadata = {"channel": channel} if channel else {}
            submitted = await http.post(
                "/v1/jobs",
                json={"model": SEGMIND, "input": {"prompt": "p"}, "metadata": metadata},
            )
            assert submitted.status_code == 202, submitted.text
            job_ids.append(submitted.json()["id"])
        for job_id in job_ids:
            await wait_for_job(http, job_id)
        await sink.wait_for(lambda s: len(s.on("/all")) == 3)
        await sink.wait_for(lambda s: len(s.on("/bots")) >= 1)
        # Everything due has been sent to /all, so /bots had its chance at all three.
        delivered = [json.loads(r.body)["data"]["id"] for r in sink.on("/bots")]
        assert delivered == [job_ids[1]]
        fetched = await http.get(f"/v1/subscriptions/{created.json()['id']}")
        assert fetched.json()["filter"] == bots_filter


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"path": "data.colour", "eq": "red"}, "filter.path"),
        (
            {"all": [{"path": "data.status", "eq": "x"}, {"path": "data.stauts", "eq": "x"}]},
            "filter.all[1].path",
        ),
        ({"path": "data.input.duration", "gt": "5"}, "filter.gt"),
        ({"path": "data.status", "like": "x"}, "filter.like"),
        ("data.status == 'x'", "filter"),
    ],
)
async def test_a_bad_filter_is_a_422_naming_the_bad_part(
    client: httpx.AsyncClient, spec: Any, field: str
) -> None:
    response = await client.post("/v1/subscriptions", json={"url": HOOK, "filter": spec})
    assert_error(response, 422, "validation_failed", field)
    await assert_nothing_stored(client)
    sub = await subscribe(client)
    patched = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"filter": spec})
    assert_error(patched, 422, "validation_failed", field)
    assert (await client.get(f"/v1/subscriptions/{sub['id']}")).json()["filter"] is None


async def test_null_clears_a_filter(client: httpx.AsyncClient) -> None:
    sub = await subscribe(client, filter={"path": "data.status", "eq": "succeeded"})
    cleared = await client.patch(f"/v1/subscriptions/{sub['id']}", json={"filter": None})
    assert cleared.status_code == 200 and cleared.json()["filter"] is None


# --- templates -----------------------------------------------------------------------------------

SLACKISH = '{"text": {{ ("Event " ~ type ~ " for " ~ event_id)|tojson }}}'


async def test_a_template_reshapes_the_body_and_the_signature_covers_the_bytes_sent(
    client: httpx.AsyncClient, sink: tuple[Sink, str]
) -> None:
    recorder, url = sink
    sub = await subscribe(client, url=f"{url}/slack", template=SLACKISH)
    assert sub["template"] == SLACKISH and sub["content_type"] == "application/json"
    delivery = await ping(client, recorder, sub["id"], "/slack", 1)
    assert delivery.headers["content-type"] == "application/json"
    # The reference library verifies the signature over exactly the rendered bytes.
    sent = Webhook(sub["secret"]).verify(delivery.body, delivery.headers)
    assert sent == {"text": f"Event ping for {delivery.headers['webhook-id']}"}


async def test_a_plain_text_template(client: httpx.AsyncClient, sink: tuple[Sink, str]) -> None:
    recorder, url = sink
    sub = await subscribe(
        client,
        url=f"{url}/text",
        template="{{ type }}: {{ data.subscription_id }}",
        content_type="text/plain",
    )
    delivery = await ping(client, recorder, sub["id"], "/text", 1)
    assert delivery.headers["content-type"] == "text/plain"
    assert delivery.body == f"ping: {sub['id']}".encode()
    expected = signing.sign(
        sub["secret"],
        delivery.headers["webhook-id"],
        int(delivery.headers["webhook-timestamp"]),
        delivery.body,
    )
    assert delivery.headers["webhook-signature"] == expected


async def test_a_template_that_fails_on_one_event_fails_that_delivery_without_sending(
    settings_factory: SettingsFactory,
) -> None:
    # Passes every sample (no metadata.boom there), blows the budget on a job that has it.
    template = (
        '{% if data.metadata.boom %}{{ "x" * 100000000 }}{% endif %}'
        '{"id": {{ (data.id or "")|tojson }}}'
    )
    async with served_with_sink(settings_factory, SIM_DELAY="0.05") as (http, sink, sink_url):
        sub = await subscribe(
            http, url=f"{sink_url}/t", template=template, event_types=["job.succeeded"]
        )
        jobs = []
        for metadata in ({"boom": True}, {}):
            submitted = await http.post(
                "/v1/jobs",
                json={"model": SEGMIND, "input": {"prompt": "p"}, "metadata": metadata},
            )
            jobs.append(submitted.json()["id"])
        await sink.wait_for(lambda s: len(s.on("/t")) == 1)
        assert json.loads(sink.on("/t")[0].body) == {"id": jobs[1]}
        # The other job may finish, and its failure be recorded, after this one was delivered.
        with anyio.fail_after(15):
            while True:
                log = await http.get("/v1/deliveries", params={"subscription_id": sub["id"]})
                failed = [d for d in log.json()["data"] if d["status"] == "failed"]
                if failed:
                    break
                await anyio.sleep(0.05)
        assert len(failed) == 1 and failed[0]["job_id"] == jobs[0]
        assert failed[0]["last_error"].startswith("template: ")
        assert failed[0]["attempt_count"] == 1, failed
        assert len(sink.on("/t")) == 1


async def test_a_template_out_of_time_on_one_event_is_retried_then_fails(
    settings_factory: SettingsFactory,
) -> None:
    # Running out of time may be a busy moment, so it is retried on the schedule (three
    # attempts here), unlike a template error, which would recur.
    template = (
        "{% if data.metadata.slow %}{% for a in range(100000) %}{% for b in range(100000) %}"
        '{% endfor %}{% endfor %}{% endif %}{"id": {{ (data.id or "")|tojson }}}'
    )
    async with served_with_sink(settings_factory, SIM_DELAY="0.05") as (http, sink, sink_url):
        sub = await subscribe(
            http, url=f"{sink_url}/slow", template=template, event_types=["job.succeeded"]
        )
        submitted = await http.post(
            "/v1/jobs",
            json={"model": SEGMIND, "input": {"prompt": "p"}, "metadata": {"slow": True}},
        )
        job_id = submitted.json()["id"]
        with anyio.fail_after(15):
            while True:
                log = await http.get("/v1/deliveries", params={"subscription_id": sub["id"]})
                found = [d for d in log.json()["data"] if d["job_id"] == job_id]
                if found and found[0]["status"] == "failed":
                    break
                await anyio.sleep(0.05)
        assert found[0]["attempt_count"] == 3, found
        assert "longer than" in found[0]["last_error"]
        assert sink.on("/slow") == []


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        (
            {
                "template": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}"
                "{% endfor %}"
            },
            "template",
            "longer than",
        ),
        (
            {
                "template": "{% for i in range(100000) %}" + "x" * 100 + "{% endfor %}",
                "content_type": "text/plain",
            },
            "template",
            "larger than",
        ),
        ({"template": "{{ 'x' * 10000000000 }}"}, "template", "more than"),
        ({"template": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}, "template", "not allowed"),
        ({"template": "{{ cycler.__init__.__globals__.os }}"}, "template", "not allowed"),
        ({"template": "{% for %}"}, "template", "line 1"),
        ({"template": "not json {{ type }}"}, "template", "not valid JSON"),
        ({"template": ""}, "template", "non-empty"),
        ({"template": "x" * 20000, "content_type": "text/plain"}, "template", "longer than"),
        ({"template": "{{ type }}", "content_type": "text/html"}, "content_type", "one of"),
        ({"content_type": "text/plain"}, "content_type", "without a template"),
    ],
)
async def test_a_bad_template_is_a_422_and_nothing_is_stored(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str, words: str
) -> None:
    response = await client.post("/v1/subscriptions", json={"url": HOOK, **fields})
    error = assert_error(response, 422, "validation_failed", field)
    assert words in error["message"]
    await assert_nothing_stored(client)


async def test_a_template_is_checked_against_each_event_type_received(
    client: httpx.AsyncClient,
) -> None:
    # Fine for job.succeeded, broken for a failed job (no outputs): refused only when the
    # subscription would receive failed jobs.
    template = '{"video": {{ data.outputs[0].url|tojson }}}'
    ok = await client.post(
        "/v1/subscriptions",
        json={"url": HOOK, "template": template, "event_types": ["job.succeeded"]},
    )
    assert ok.status_code == 201, ok.text
    refused = await client.patch(
        f"/v1/subscriptions/{ok.json()['id']}", json={"event_types": ["job.failed"]}
    )
    error = assert_error(refused, 422, "validation_failed", "template")
    assert "job.failed" in error["message"]


async def test_preview_renders_a_sample_and_tests_the_filter(client: httpx.AsyncClient) -> None:
    previewed = await client.post(
        "/v1/subscriptions/preview",
        json={
            "event_type": "job.succeeded",
            "template": '{"text": {{ ("Ready: " ~ data.outputs[0].url)|tojson }}}',
            "filter": {"path": "data.metadata.chat_id", "eq": 42},
        },
    )
    assert previewed.status_code == 200, previewed.text
    answer = previewed.json()
    assert answer["event"]["type"] == "job.succeeded"
    assert answer["filter_matches"] is True
    assert answer["content_type"] == "application/json"
    url = answer["event"]["data"]["outputs"][0]["url"]
    assert json.loads(answer["body"]) == {"text": f"Ready: {url}"}

    plain = await client.post(
        "/v1/subscriptions/preview",
        json={"event_type": "job.failed", "filter": {"path": "data.status", "eq": "succeeded"}},
    )
    assert plain.status_code == 200, plain.text
    assert plain.json()["filter_matches"] is False
    event = plain.json()["event"]
    assert json.loads(plain.json()["body"]) == {k: v for k, v in event.items() if k != "id"}

    for body, field in (
        ({"template": "{{ 'x' * 10000000000 }}"}, "template"),
        ({"filter": {"path": "data.nope", "exists": True}}, "filter.path"),
        ({"event_type": "job.nope"}, "event_type"),
        ({"tempalte": "x"}, "tempalte"),
    ):
        assert_error(
            await client.post("/v1/subscriptions/preview", json=body),
            422,
            "validation_failed",
            field,
        )
    await assert_nothing_stored(client)


# --- v1a (Ed25519) -------------------------------------------------------------------------------


def v1a_verifies(public_key: str, delivery: Any) -> bool:
    """Verify as a subscriber with PyNaCl (libsodium): any v1a signature from this key."""
    key = nacl.signing.VerifyKey(base64.b64decode(public_key.removeprefix("whpk_")))
    content = (
        f"{delivery.headers['webhook-id']}.{delivery.headers['webhook-timestamp']}.".encode()
        + delivery.body
    )
    for part in delivery.headers["webhook-signature"].split(" "):
        version, _, signature = part.partition(",")
        if version == "v1a":
            try:
                key.verify(content, base64.b64decode(signature))
            except nacl.exceptions.BadSignatureError:
                continue
            return True
    return False


async def test_a_v1a_subscription_is_verified_with_its_public_key(
    client: httpx.AsyncClient, sink: tuple[Sink, str]
) -> None:
    recorder, url = sink
    sub = await subscribe(client, url=f"{url}/ed", signature_scheme="v1a")
    assert sub["signature_scheme"] == "v1a"
    assert sub["secret"] is None  # the signing key never leaves reelhook
    assert sub["public_key"].startswith("whpk_")
    fetched = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
    assert fetched["public_key"] == sub["public_key"] and "whsk_" not in json.dumps(fetched)
    delivery = await ping(client, recorder, sub["id"], "/ed", 1)
    assert delivery.headers["webhook-signature"].startswith("v1a,")
    assert v1a_verifies(sub["public_key"], delivery)

    # Rotation: a new key pair; both sign during the grace period.
    rotated = await client.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["secret"] is None and new["public_key"] != sub["public_key"]
    assert new["previous_public_key"] == sub["public_key"]
    delivery = await ping(client, recorder, sub["id"], "/ed", 2)
    assert delivery.headers["webhook-signature"].count("v1a,") == 2
    assert v1a_verifies(new["public_key"], delivery)
    assert v1a_verifies(sub["public_key"], delivery)


async def test_switching_a_subscription_to_v1a_sends_both_signatures_in_the_grace_period(
    client: httpx.AsyncClient, sink: tuple[Sink, str]
) -> None:
    recorder, url = sink
    sub = await subscribe(client, url=f"{url}/switch")
    switched = await client.patch(
        f"/v1/subscriptions/{sub['id']}", json={"signature_scheme": "v1a"}
    )
    assert switched.status_code == 200, switched.text
    assert switched.json()["signature_scheme"] == "v1a"
    assert switched.json()["previous_secret_expires_at"] is not None
    delivery = await ping(client, recorder, sub["id"], "/switch", 1)
    assert v1a_verifies(switched.json()["public_key"], delivery)
    Webhook(sub["secret"]).verify(delivery.body, delivery.headers)  # the old v1 secret too


async def test_a_bad_scheme_or_ordering_is_a_422(client: httpx.AsyncClient) -> None:
    for fields, field in (
        ({"signature_scheme": "v2"}, "signature_scheme"),
        ({"ordering": "lifo"}, "ordering"),
    ):
        response = await client.post("/v1/subscriptions", json={"url": HOOK, **fields})
        assert_error(response, 422, "validation_failed", field)
    await assert_nothing_stored(client)


async def test_the_openapi_document_describes_the_new_fields(
    settings_factory: SettingsFactory,
) -> None:
    async with api_client(settings_factory()) as http:
        document = (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    assert "PayloadFilter" in schemas
    for name in (
        "filter",
        "template",
        "content_type",
        "ordering",
        "signature_scheme",
        "public_key",
    ):
        assert name in schemas["Subscription"]["properties"], name
    create = document["paths"]["/v1/subscriptions"]["post"]["requestBody"]["content"]
    properties = create["application/json"]["schema"]["properties"]
    assert {"filter", "template", "content_type", "ordering", "signature_scheme"} <= set(properties)
    assert "/v1/subscriptions/preview" in document["paths"]
