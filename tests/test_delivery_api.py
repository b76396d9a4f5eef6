"""The delivery log, resend and recover, secret rotation, auto-disable and graceful shutdown,
driven through the API against scripted loopback subscribers (docs/contract.md §5)."""

from __future__ import annotations

from contextlib import closing

import anyio
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from service.app.settings import SettingsError, load_settings
from service.core.clock import isoformat
from service.core.models import DeliveryStatus
from service.delivery import signing
from service.delivery.dispatcher import failure_windows
from service.storage.deliveries import AttemptOutcome
from tests.conftest import SettingsFactory
from tests.helpers.delivery import (
    JOB,
    Hanging,
    attempts_of,
    delivery_for,
    delivery_of,
    detail,
    exhausted,
    finished,
    ping,
    replies_app,
    sink_and_service,
    subscribe,
    subscribe_as,
    until_delivery,
)
from tests.helpers.keys import KEY_B, KEY_C, add_member_keys, as_key
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import FakeClock, api_client, assert_error, wait_for_job

pytestmark = pytest.mark.anyio


# --- helpers -----------------------------------------------------------------------------------


def signatures(headers: dict[str, str]) -> list[str]:
    return headers["webhook-signature"].split(" ")


# --- the delivery log --------------------------------------------------------------------------


async def test_the_log_lists_deliveries_newest_first_with_filters(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/down"] = lambda count: (500, {})
        up = await subscribe(http, f"{sink_url}/up")
        down = await subscribe(http, f"{sink_url}/down")
        up_events = [await ping(http, up["id"]) for _ in range(2)]
        down_event, _ = await exhausted(http, down["id"])
        for event_id in up_events:
            await until_delivery(http, event_id, finished)

        everything = (await http.get("/v1/deliveries")).json()
        of_up = (await http.get("/v1/deliveries", params={"subscription_id": up["id"]})).json()
        # The design spells the filter ``subscription``; both names work.
        of_up_short = (await http.get("/v1/deliveries", params={"subscription": up["id"]})).json()
        failed = (await http.get("/v1/deliveries", params={"status": "failed"})).json()
        succeeded_down = (
            await http.get(
                "/v1/deliveries", params={"status": "succeeded", "subscription_id": down["id"]}
            )
        ).json()
    assert [d["event_id"] for d in everything["data"]] == [down_event, *reversed(up_events)]
    assert everything["next_cursor"] is None
    assert [d["event_id"] for d in of_up["data"]] == list(reversed(up_events))
    assert of_up_short == of_up
    (failure,) = failed["data"]
    assert failure["event_id"] == down_event
    assert failure["object"] == "delivery"
    assert failure["event_type"] == "ping"
    assert failure["job_id"] is None
    assert failure["subscription_id"] == down["id"]
    assert failure["attempt_count"] == 3
    assert failure["last_status_code"] == 500
    assert failure["last_error"] == "HTTP 500"
    assert failure["next_attempt_at"] is None
    assert succeeded_down["data"] == []


async def test_the_log_pages_with_a_cursor(settings_factory: SettingsFactory) -> None:
    async with sink_and_service(settings_factory()) as (_, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        events = [await ping(http, sub["id"]) for _ in range(5)]
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/v1/deliveries", params=params)).json()
            seen.extend(d["event_id"] for d in page["data"])
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                break
    assert pages == 3
    assert seen == list(reversed(events))


async def test_the_log_filters_by_job(settings_factory: SettingsFactory, dead_url: str) -> None:
    """A job whose provider is unreachable fails once its one retry is spent: its ``job.failed``
    delivery is found by ``job_id``, and no other delivery is."""
    settings = settings_factory(PUBLIC_URL=dead_url, SUBMIT_RETRY_SCHEDULE="0")
    async with sink_and_service(settings) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        await ping(http, sub["id"])
        accepted = await http.post("/v1/jobs", json=JOB)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["id"]
        await wait_for_job(http, job_id, {"failed"})
        await sink.wait_for(lambda s: len(s.on("/hook")) == 2)
        by_job = (await http.get("/v1/deliveries", params={"job_id": job_id})).json()["data"]
        by_short = (await http.get("/v1/deliveries", params={"job": job_id})).json()["data"]
        other = (await http.get("/v1/deliveries", params={"job_id": "job_nothing"})).json()
    assert [(d["event_type"], d["job_id"]) for d in by_job] == [("job.failed", job_id)]
    # Compared by id: the attempt's outcome may be recorded between the two reads.
    assert [d["id"] for d in by_short] == [d["id"] for d in by_job]
    assert other["data"] == []


async def test_a_delivery_shows_its_payload_and_every_attempt(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(RETRY_SCHEDULE="0,0.2")
    async with run_server(replies_app()) as url, api_client(settings) as http:
        text = await subscribe(http, f"{url}/text")
        binary = await subscribe(http, f"{url}/binary")
        text_event, text_row = await exhausted(http, text["id"])
        binary_event, binary_row = await exhausted(http, binary["id"])
        shown = await detail(http, text_row["id"])
        shown_binary = await detail(http, binary_row["id"])
        events = (await http.get("/v1/events", params={"type": "ping"})).json()["data"]
    assert {k: v for k, v in shown.items() if k not in ("payload", "attempts")} == text_row
    logged = next(e for e in events if e["id"] == text_event)
    assert shown["payload"] == {k: v for k, v in logged.items() if k != "id"}
    assert shown["payload"]["data"] == {"subscription_id": text["id"]}
    assert len(shown["attempts"]) == 2
    for attempt in shown["attempts"]:
        assert attempt["status_code"] == 500
        assert attempt["error"] == "HTTP 500"
        assert attempt["response_body"] == "upstream said: no — try later"
        assert attempt["response_body_encoding"] == "utf-8"
        assert isinstance(attempt["latency_ms"], float) and attempt["latency_ms"] >= 0
        assert attempt["attempted_at"].endswith("Z")
    assert shown["attempts"][0]["attempted_at"] <= shown["attempts"][1]["attempted_at"]
    assert shown_binary["event_id"] == binary_event
    assert {a["response_body_encoding"] for a in shown_binary["attempts"]} == {"base64"}
    assert {a["response_body"] for a in shown_binary["attempts"]} == {"//4AYmluYXJ5"}


async def test_a_connection_error_shows_in_the_attempt_log(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    async with api_client(settings_factory(RETRY_SCHEDULE="0")) as http:
        sub = await subscribe(http, f"{dead_url}/hook")
        _, row = await exhausted(http, sub["id"])
        (attempt,) = (await detail(http, row["id"]))["attempts"]
    assert attempt["status_code"] is None
    assert attempt["response_body"] is None and attempt["response_body_encoding"] is None
    assert "Connect" in attempt["error"] or "refused" in attempt["error"].lower(), attempt


async def test_bad_log_queries_are_refused_naming_the_parameter(
    settings_factory: SettingsFactory,
) -> None:
    async with api_client(settings_factory()) as http:
        bad_status = await http.get("/v1/deliveries", params={"status": "lost"})
        unknown = await http.get("/v1/deliveries", params={"sub_id": "sub_1"})
        clash = await http.get(
            "/v1/deliveries", params={"subscription_id": "sub_1", "subscription": "sub_2"}
        )
        bad_limit = await http.get("/v1/deliveries", params={"limit": "0"})
        missing = await http.get("/v1/deliveries/dlv_nothing")
        retry_missing = await http.post("/v1/deliveries/dlv_nothing/retry")
        wrong_method = await http.delete("/v1/deliveries/dlv_nothing")
    assert_error(bad_status, 422, "validation_failed", "status")
    assert_error(unknown, 422, "validation_failed", "sub_id")
    assert_error(clash, 422, "validation_failed", "subscription_id")
    assert_error(bad_limit, 422, "validation_failed", "limit")
    assert_error(missing, 404, "not_found")
    assert_error(retry_missing, 404, "not_found")
    assert wrong_method.status_code == 405


async def test_the_log_is_scoped_to_the_callers_subscriptions(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    await add_member_keys(settings, KEY_B, KEY_C)
    async with sink_and_service(settings) as (sink, sink_url, http):
        sub_b = await subscribe_as(http, KEY_B, f"{sink_url}/b")
        pinged = await http.post(f"/v1/subscriptions/{sub_b['id']}/test", headers=as_key(KEY_B))
        event_b = pinged.json()["event_id"]
        row = await until_delivery(http, event_b, finished)
        seen_by_b = await http.get("/v1/deliveries", headers=as_key(KEY_B))
        seen_by_c = await http.get("/v1/deliveries", headers=as_key(KEY_C))
        c_filters_b = await http.get(
            "/v1/deliveries", params={"subscription_id": sub_b["id"]}, headers=as_key(KEY_C)
        )
        c_reads = await http.get(f"/v1/deliveries/{row['id']}", headers=as_key(KEY_C))
        c_retries = await http.post(f"/v1/deliveries/{row['id']}/retry", headers=as_key(KEY_C))
        c_recovers = await http.post(
            f"/v1/subscriptions/{sub_b['id']}/recover",
            params={"since": "0"},
            headers=as_key(KEY_C),
        )
        c_rotates = await http.post(
            f"/v1/subscriptions/{sub_b['id']}/rotate-secret", headers=as_key(KEY_C)
        )
        b_reads = await http.get(f"/v1/deliveries/{row['id']}", headers=as_key(KEY_B))
    assert [d["id"] for d in seen_by_b.json()["data"]] == [row["id"]]
    assert seen_by_c.json() == {"data": [], "next_cursor": None}
    assert c_filters_b.json() == {"data": [], "next_cursor": None}
    for refused in (c_reads, c_retries, c_recovers, c_rotates):
        assert_error(refused, 404, "not_found")
    assert b_reads.status_code == 200 and b_reads.json()["status"] == "succeeded"
    assert len(sink.on("/b")) == 1  # C's retry sent nothing


# --- resend one --------------------------------------------------------------------------------


async def test_retry_resends_an_exhausted_delivery_now(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (500, {}) if count <= 3 else (204, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id, row = await exhausted(http, sub["id"])
        retried = await http.post(f"/v1/deliveries/{row['id']}/retry")
        after = await until_delivery(http, event_id, finished)
        shown = await detail(http, row["id"])
    assert retried.status_code == 202, retried.text
    assert retried.json()["status"] == "pending"
    assert after["status"] == "succeeded"
    assert after["attempt_count"] == 4
    assert [a["status_code"] for a in shown["attempts"]] == [500, 500, 500, 204]
    assert len(sink.on("/hook")) == 4
    assert {r.headers["webhook-id"] for r in sink.on("/hook")} == {event_id}
    Webhook(sub["secret"]).verify(sink.on("/hook")[-1].body, sink.on("/hook")[-1].headers)


async def test_a_failed_resend_is_not_rescheduled(settings_factory: SettingsFactory) -> None:
    settings = settings_factory()
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (500, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id, row = await exhausted(http, sub["id"])
        retried = await http.post(f"/v1/deliveries/{row['id']}/retry")
        assert retried.status_code == 202, retried.text
        await sink.wait_for(lambda s: len(s.on("/hook")) == 4)
        after = await until_delivery(http, event_id, lambda r: r["attempt_count"] == 4)
        after = await until_delivery(http, event_id, finished)
        # A later ping's three attempts go out and settle; the resent one gets nothing more.
        later_event, _ = await exhausted(http, sub["id"])
        raw = await delivery_of(settings, event_id)
    assert after["status"] == "failed"
    assert after["next_attempt_at"] is None
    assert raw["manual"] == 0
    assert len(sink.on("/hook")) == 4 + 3
    assert [r.headers["webhook-id"] for r in sink.on("/hook")].count(event_id) == 4
    assert later_event != event_id


async def test_retry_resends_a_succeeded_delivery(settings_factory: SettingsFactory) -> None:
    async with sink_and_service(settings_factory()) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        row = await until_delivery(http, event_id, finished)
        retried = await http.post(f"/v1/deliveries/{row['id']}/retry")
        await sink.wait_for(lambda s: len(s.on("/hook")) == 2)
        after = await until_delivery(http, event_id, lambda r: r["attempt_count"] == 2)
        after = await until_delivery(http, event_id, finished)
    assert retried.status_code == 202, retried.text
    assert after["status"] == "succeeded"
    first, second = sink.on("/hook")
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event_id


async def test_retry_brings_a_waiting_retry_forward(settings_factory: SettingsFactory) -> None:
    """A delivery waiting 300 s for its second attempt is sent at once; it keeps its schedule,
    so when that attempt fails too it is retried again later rather than given up."""
    settings = settings_factory(RETRY_SCHEDULE="0,300,300")
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (500, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        event_id = await ping(http, sub["id"])
        waiting = await until_delivery(http, event_id, lambda r: r["attempt_count"] == 1)
        waiting = await until_delivery(http, event_id, lambda r: r["status"] == "pending")
        retried = await http.post(f"/v1/deliveries/{waiting['id']}/retry")
        await sink.wait_for(lambda s: len(s.on("/hook")) == 2)
        after = await until_delivery(
            http, event_id, lambda r: r["attempt_count"] == 2 and r["status"] == "pending"
        )
    assert retried.status_code == 202, retried.text
    assert after["next_attempt_at"] is not None
    assert after["next_attempt_at"] > after["updated_at"]


async def test_retry_is_refused_for_a_disabled_or_deleted_subscription(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(RETRY_SCHEDULE="0")
    async with sink_and_service(settings) as (sink, sink_url, http):
        sink.script["/gone"] = lambda count: (410, {})
        sink.script["/down"] = lambda count: (500, {})
        gone = await subscribe(http, f"{sink_url}/gone")
        down = await subscribe(http, f"{sink_url}/down")
        _, gone_row = await exhausted(http, gone["id"])
        _, down_row = await exhausted(http, down["id"])
        disabled = await http.patch(f"/v1/subscriptions/{down['id']}", json={"status": "disabled"})
        assert disabled.status_code == 200, disabled.text
        retry_gone = await http.post(f"/v1/deliveries/{gone_row['id']}/retry")
        retry_disabled = await http.post(f"/v1/deliveries/{down_row['id']}/retry")
        # The deleted subscription's delivery stays in the admin's log.
        still_logged = await http.get(f"/v1/deliveries/{gone_row['id']}")
    assert_error(retry_gone, 409, "conflict")
    assert "deleted" in retry_gone.json()["error"]["message"]
    assert_error(retry_disabled, 409, "conflict")
    assert "disabled" in retry_disabled.json()["error"]["message"]
    assert still_logged.status_code == 200
    assert still_logged.json()["last_status_code"] == 410
    assert len(sink.on("/gone")) == len(sink.on("/down")) == 1


# --- recover every failed one since a time -----------------------------------------------------


async def test_recover_resends_the_failed_deliveries_since_a_time(
    settings_factory: SettingsFactory,
) -> None:
    """Three pings fail for good, an hour apart by the service's clock. Recovering since the
    second resends the second and third (once each) and leaves the first failed."""
    settings = settings_factory(RETRY_SCHEDULE="0")
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        broken = True
        sink.script["/hook"] = lambda count: (500, {}) if broken else (204, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        other = await subscribe(http, f"{sink_url}/other")
        rows = []
        for hour in range(3):
            clock.offset = hour * 3600.0
            rows.append((await exhausted(http, sub["id"]))[1])
        # Another subscription's failure in the same span is not this subscription's business.
        sink.script["/other"] = lambda count: (500, {})
        other_event, _ = await exhausted(http, other["id"])
        broken = False
        since = rows[1]["created_at"]
        recover = f"/v1/subscriptions/{sub['id']}/recover"
        recovered = await http.post(recover, params={"since": since})
        await sink.wait_for(lambda s: len(s.on("/hook")) == 5)
        after = [await until_delivery(http, r["event_id"], finished) for r in rows]
        other_after = await delivery_for(http, other_event)
        again = await http.post(recover, params={"since": since})
    assert recovered.status_code == 202, recovered.text
    assert recovered.json() == {
        "subscription_id": sub["id"],
        "recovered": 2,
        "since": since,
        "until": None,
    }
    assert [r["status"] for r in after] == ["failed", "succeeded", "succeeded"]
    assert [r["attempt_count"] for r in after] == [1, 2, 2]
    assert other_after["status"] == "failed" and len(sink.on("/other")) == 1
    resent = [r.headers["webhook-id"] for r in sink.on("/hook")[3:]]
    assert sorted(resent) == sorted(r["event_id"] for r in rows[1:])
    assert again.json()["recovered"] == 0


async def test_recover_takes_an_until_and_unix_seconds(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(RETRY_SCHEDULE="0")
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        sink.script["/hook"] = lambda count: (500, {}) if count <= 3 else (204, {})
        sub = await subscribe(http, f"{sink_url}/hook")
        rows = []
        for hour in range(3):
            clock.offset = hour * 3600.0
            rows.append((await exhausted(http, sub["id"]))[1])
        middle = clock() - 0.5 * 3600  # between the second and the third
        recovered = await http.post(
            f"/v1/subscriptions/{sub['id']}/recover",
            params={"since": f"{clock() - 3 * 3600:.3f}", "until": isoformat(middle) or ""},
        )
        await sink.wait_for(lambda s: len(s.on("/hook")) == 5)
        after = [await until_delivery(http, r["event_id"], finished) for r in rows]
    assert recovered.status_code == 202, recovered.text
    assert recovered.json()["recovered"] == 2
    assert recovered.json()["until"] == isoformat(middle)
    assert [r["status"] for r in after] == ["succeeded", "succeeded", "failed"]


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({}, "since", "required"),
        ({"since": ""}, "since", "required"),
        ({"since": "yesterday"}, "since", "not an ISO 8601"),
        ({"since": "2026-13-01T00:00:00Z"}, "since", "not an ISO 8601"),
        ({"since": "-5"}, "since", "not an ISO 8601"),
        ({"since": "9999-12-31T23:59:59Z"}, "since", "future"),
        ({"since": "2020-01-01T00:00:00Z", "until": "2019-01-01T00:00:00Z"}, "until", "later"),
        ({"since": "2020-01-01T00:00:00Z", "until": "soon"}, "until", "not an ISO 8601"),
    ],
)
async def test_recover_refuses_a_bad_time_naming_it(
    client: httpx.AsyncClient, params: dict[str, str], field: str, words: str
) -> None:
    sub = await subscribe(client, "http://127.0.0.1:9/hook")
    response = await client.post(f"/v1/subscriptions/{sub['id']}/recover", params=params)
    error = assert_error(response, 422, "validation_failed", field)
    assert words in error["message"], error


@pytest.mark.parametrize(
    "since", ["2020-01-01T00:00:00Z", "2020-01-01T02:00:00+02:00", "2020-01-01", "1577836800"]
)
async def test_recover_reads_every_spelling_of_a_time(
    client: httpx.AsyncClient, since: str
) -> None:
    sub = await subscribe(client, "http://127.0.0.1:9/hook")
    # Unencoded, as a user would type it into curl: the "+" of the offset arrives as a space.
    response = await client.post(f"/v1/subscriptions/{sub['id']}/recover?since={since}")
    assert response.status_code == 202, response.text
    assert response.json()["since"] == "2020-01-01T00:00:00.000Z"


async def test_recover_is_refused_for_a_disabled_or_unknown_subscription(
    client: httpx.AsyncClient,
) -> None:
    sub = await subscribe(client, "http://127.0.0.1:9/hook")
    await client.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "disabled"})
    disabled = await client.post(f"/v1/subscriptions/{sub['id']}/recover", params={"since": "0"})
    unknown = await client.post("/v1/subscriptions/sub_nothing/recover", params={"since": "0"})
    assert_error(disabled, 409, "conflict")
    assert_error(unknown, 404, "not_found")


# --- secret rotation ---------------------------------------------------------------------------


async def test_during_the_grace_period_both_secrets_verify(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory()
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        old = sub["secret"]
        rotated = await http.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")
        assert rotated.status_code == 200, rotated.text
        new = rotated.json()["secret"]
        fetched = await http.get(f"/v1/subscriptions/{sub['id']}")
        await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) == 1)

        clock.offset = 86400.0 + 1  # past the default 24 h grace period
        await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) == 2)
    assert new.startswith("whsec_") and new != old
    assert "secret" not in fetched.json()
    assert (
        rotated.json()["previous_secret_expires_at"] == fetched.json()["previous_secret_expires_at"]
    )
    during, after = sink.on("/hook")
    assert len(signatures(during.headers)) == 2
    assert all(s.startswith("v1,") for s in signatures(during.headers))
    assert Webhook(new).verify(during.body, during.headers)["type"] == "ping"
    assert Webhook(old).verify(during.body, during.headers)["type"] == "ping"
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(during.body, during.headers)
    # After the grace period only the new secret signs. (The service's clock is a day ahead, so
    # the timestamp check of the library would refuse it; the signature is compared directly.)
    msg_id, timestamp = after.headers["webhook-id"], int(after.headers["webhook-timestamp"])
    assert signatures(after.headers) == [signing.sign(new, msg_id, timestamp, after.body)]


async def test_rotating_again_retires_the_oldest_secret_at_once(
    settings_factory: SettingsFactory,
) -> None:
    async with sink_and_service(settings_factory()) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        first = sub["secret"]
        second = (await http.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")).json()["secret"]
        third = (await http.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")).json()["secret"]
        await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) == 1)
    (delivery,) = sink.on("/hook")
    assert len(signatures(delivery.headers)) == 2
    Webhook(third).verify(delivery.body, delivery.headers)
    Webhook(second).verify(delivery.body, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(first).verify(delivery.body, delivery.headers)


async def test_a_zero_grace_period_switches_secrets_at_once(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(SECRET_ROTATION_GRACE="0")
    async with sink_and_service(settings) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        new = (await http.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")).json()["secret"]
        await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) == 1)
    (delivery,) = sink.on("/hook")
    assert len(signatures(delivery.headers)) == 1
    Webhook(new).verify(delivery.body, delivery.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(sub["secret"]).verify(delivery.body, delivery.headers)


async def test_a_retry_after_rotation_is_signed_with_both(
    settings_factory: SettingsFactory,
) -> None:
    """Signatures are made per attempt: a retry queued before the rotation carries both."""
    async with sink_and_service(settings_factory(RETRY_SCHEDULE="0,0.5")) as (sink, url, http):
        sink.script["/hook"] = lambda count: (500, {}) if count == 1 else (204, {})
        sub = await subscribe(http, f"{url}/hook")
        await ping(http, sub["id"])
        await sink.wait_for(lambda s: len(s.on("/hook")) == 1)
        new = (await http.post(f"/v1/subscriptions/{sub['id']}/rotate-secret")).json()["secret"]
        await sink.wait_for(lambda s: len(s.on("/hook")) == 2)
    before, after = sink.on("/hook")
    assert len(signatures(before.headers)) == 1
    assert len(signatures(after.headers)) == 2
    Webhook(new).verify(after.body, after.headers)
    Webhook(sub["secret"]).verify(after.body, after.headers)


# --- disabling a failing subscription ------------------------------------------------------------


async def test_a_subscription_failing_for_the_whole_window_is_disabled_and_others_hear_of_it(
    settings_factory: SettingsFactory,
) -> None:
    """With ``DISABLE_AFTER=100``: the first failure opens the window; a failure 150 s later (by
    the injected clock) disables the subscription. The owner's other subscriptions hear
    ``subscription.disabled`` (filters apply); another key's subscription does not."""
    settings = settings_factory(DISABLE_AFTER="100", RETRY_SCHEDULE="0,3,3")
    await add_member_keys(settings, KEY_B)
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        sink.script["/down"] = lambda count: (500, {})
        down = await subscribe(http, f"{sink_url}/down", description="the n8n flow")
        watcher = await subscribe(http, f"{sink_url}/watch")
        succeeded_only = await subscribe(http, f"{sink_url}/picky", event_types=["job.succeeded"])
        stranger = await subscribe_as(http, KEY_B, f"{sink_url}/stranger")
        nudge = await subscribe(http, f"{sink_url}/nudge")
        event_id = await ping(http, down["id"])
        opened = await until_delivery(http, event_id, lambda r: r["last_status_code"] == 500)
        window = (await http.get(f"/v1/subscriptions/{down['id']}")).json()
        clock.offset = 150.0  # the retry is due, 150 s into the failure window
        await ping(http, nudge["id"])  # wakes the dispatcher now rather than in 3 s
        await sink.wait_for(lambda s: len(s.on("/watch")) == 1)
        disabled = (await http.get(f"/v1/subscriptions/{down['id']}")).json()
        held = await delivery_for(http, event_id)
        # Nothing more goes to it: a ping is refused and the held retry is not sent.
        refused = await http.post(f"/v1/subscriptions/{down['id']}/test")
        await anyio.sleep(0.5)
    assert opened["last_status_code"] == 500
    assert window["status"] == "active" and window["failing_since"] is not None
    assert disabled["status"] == "disabled"
    assert disabled["failing_since"] == window["failing_since"]
    assert disabled["disabled_reason"].startswith(
        f"every delivery attempt since {window['failing_since']} failed"
    )
    assert held["status"] == "pending" and held["attempt_count"] == 2
    assert len(sink.on("/down")) == 2
    assert_error(refused, 409, "conflict")

    (notice,) = sink.on("/watch")
    event = Webhook(watcher["secret"]).verify(notice.body, notice.headers)
    assert event["type"] == "subscription.disabled"
    assert event["data"] == {
        "id": down["id"],
        "object": "subscription",
        "description": "the n8n flow",
        "status": "disabled",
        "disabled_reason": disabled["disabled_reason"],
        "failing_since": window["failing_since"],
        "event_types": [],
        "models": [],
    }
    assert "url" not in event["data"]  # webhook URLs often carry a token
    assert sink.on("/picky") == [] and sink.on("/stranger") == []
    assert succeeded_only["id"] != stranger["id"]


async def test_a_success_closes_the_failure_window(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(DISABLE_AFTER="100", RETRY_SCHEDULE="0")
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        failing = True
        sink.script["/flaky"] = lambda count: (500, {}) if failing else (204, {})
        sub = await subscribe(http, f"{sink_url}/flaky")
        await exhausted(http, sub["id"])
        opened = (await http.get(f"/v1/subscriptions/{sub['id']}")).json()["failing_since"]
        failing = False
        await until_delivery(http, await ping(http, sub["id"]), finished)
        closed = (await http.get(f"/v1/subscriptions/{sub['id']}")).json()["failing_since"]
        failing = True
        clock.offset = 150.0
        await exhausted(http, sub["id"])
        after = (await http.get(f"/v1/subscriptions/{sub['id']}")).json()
    assert opened is not None
    assert closed is None
    # 150 s after the first failure, but only just after the success: still active.
    assert after["status"] == "active"
    assert after["failing_since"] is not None and after["failing_since"] > opened


async def test_re_enabling_restarts_the_failure_window(settings_factory: SettingsFactory) -> None:
    """A disabled subscription enabled again through PATCH gets the whole window afresh: its held
    retry goes out, fails, and it stays enabled; only failing for another full window disables
    it again."""
    settings = settings_factory(DISABLE_AFTER="100", RETRY_SCHEDULE="0,3,3,3")
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        sink.script["/down"] = lambda count: (500, {})
        down = await subscribe(http, f"{sink_url}/down")
        watcher = await subscribe(http, f"{sink_url}/watch")
        event_id = await ping(http, down["id"])
        await until_delivery(http, event_id, lambda r: r["last_status_code"] == 500)
        clock.offset = 150.0
        await ping(http, (await subscribe(http, f"{sink_url}/nudge"))["id"])
        await sink.wait_for(lambda s: len(s.on("/watch")) == 1)

        clock.offset = 160.0  # the held retry is due
        enabled = await http.patch(f"/v1/subscriptions/{down['id']}", json={"status": "active"})
        assert enabled.status_code == 200, enabled.text
        # The held retry is released and fails again; the window restarts at that failure.
        await until_delivery(
            http, event_id, lambda r: r["attempt_count"] == 3 and r["status"] == "pending"
        )
        still = (await http.get(f"/v1/subscriptions/{down['id']}")).json()
        clock.offset = 300.0  # 140 s into the new window: the last retry fails and disables it
        await ping(http, (await subscribe(http, f"{sink_url}/nudge2"))["id"])
        await sink.wait_for(lambda s: len(s.on("/watch")) == 2)
        again = (await http.get(f"/v1/subscriptions/{down['id']}")).json()
    assert enabled.json()["status"] == "active"
    assert enabled.json()["disabled_reason"] is None
    assert enabled.json()["failing_since"] is None
    assert still["status"] == "active"
    assert still["failing_since"] is not None
    assert again["status"] == "disabled"
    assert again["failing_since"] == still["failing_since"]
    first, second = (
        Webhook(watcher["secret"]).verify(r.body, r.headers) for r in sink.on("/watch")
    )
    assert first["type"] == second["type"] == "subscription.disabled"


async def test_patching_an_active_subscription_keeps_its_failure_window(
    settings_factory: SettingsFactory,
) -> None:
    """Only a real change of status restarts the window: re-sending ``"active"`` or editing other
    fields of a failing subscription does not buy it more time."""
    async with sink_and_service(settings_factory(RETRY_SCHEDULE="0")) as (sink, sink_url, http):
        sink.script["/down"] = lambda count: (500, {})
        sub = await subscribe(http, f"{sink_url}/down")
        await exhausted(http, sub["id"])
        opened = (await http.get(f"/v1/subscriptions/{sub['id']}")).json()["failing_since"]
        same = await http.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "active"})
        edited = await http.patch(f"/v1/subscriptions/{sub['id']}", json={"description": "x"})
    assert opened is not None
    assert same.json()["failing_since"] == edited.json()["failing_since"] == opened


async def test_disabling_through_the_api_gives_a_reason_and_no_event(
    settings_factory: SettingsFactory,
) -> None:
    async with sink_and_service(settings_factory()) as (sink, sink_url, http):
        sub = await subscribe(http, f"{sink_url}/hook")
        watcher = await subscribe(http, f"{sink_url}/watch")
        patched = await http.patch(f"/v1/subscriptions/{sub['id']}", json={"status": "disabled"})
        # A ping queued after the PATCH arrives; nothing the PATCH could have queued came first.
        await ping(http, watcher["id"])
        await sink.wait_for(lambda s: len(s.on("/watch")) == 1)
    assert patched.json()["status"] == "disabled"
    assert patched.json()["disabled_reason"] == "disabled through the API"
    assert [(r.path, r.json()["type"]) for r in sink.received] == [("/watch", "ping")]


async def test_a_zero_disable_after_never_disables(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(DISABLE_AFTER="0", RETRY_SCHEDULE="0")
    clock = FakeClock()
    async with sink_and_service(settings, clock=clock) as (sink, sink_url, http):
        sink.script["/down"] = lambda count: (500, {})
        sub = await subscribe(http, f"{sink_url}/down")
        await exhausted(http, sub["id"])
        clock.offset = 30 * 86400.0
        await exhausted(http, sub["id"])
        after = (await http.get(f"/v1/subscriptions/{sub['id']}")).json()
    assert after["status"] == "active"
    assert after["failing_since"] is not None


def outcome(sub_id: str, at: float, status: str) -> AttemptOutcome:
    return AttemptOutcome(
        delivery_id=f"dlv_{at}", subscription_id=sub_id, attempted_at=at, latency_ms=1.0,
        status=DeliveryStatus(status), token=1,
    )  # fmt: skip


def test_failure_windows_follow_the_last_success() -> None:
    batch = [
        outcome("a", 1.0, "pending"),
        outcome("a", 2.0, "succeeded"),
        outcome("a", 3.0, "failed"),
        outcome("a", 4.0, "pending"),
        outcome("b", 5.0, "failed"),
        outcome("b", 6.0, "pending"),
        outcome("c", 7.0, "pending"),
        outcome("c", 8.0, "succeeded"),
    ]
    assert failure_windows(batch) == {"a": (True, 3.0), "b": (False, 5.0), "c": (True, None)}


# --- graceful shutdown -------------------------------------------------------------------------


async def test_shutdown_lets_an_attempt_in_flight_finish_and_records_it(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(SHUTDOWN_GRACE="3")
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with anyio.create_task_group() as tg, api_client(settings) as http:
                sub = await subscribe(http, f"{url}/hang")
                event_id = await ping(http, sub["id"])
                await hanging.wait_for(lambda h: h.hanging == 1)

                async def answer_soon() -> None:
                    await anyio.sleep(0.3)
                    hanging.release.set()

                # The subscriber answers 0.3 s into the shutdown, well inside its grace period.
                tg.start_soon(answer_soon)
        finally:
            hanging.release.set()
    row = await delivery_of(settings, event_id)
    attempts = await attempts_of(settings, event_id)
    assert row["status"] == "succeeded"
    assert row["lease_until"] is None
    assert [a["status_code"] for a in attempts] == [204]


async def test_shutdown_releases_an_attempt_that_outlasts_the_grace_period(
    settings_factory: SettingsFactory,
) -> None:
    """The attempt is cut after the grace period and handed back unrecorded and uncounted; the
    next start sends it at once (``/hang-once`` answers the second request)."""
    settings = settings_factory(SHUTDOWN_GRACE="0.3", RETRY_SCHEDULE="0,300")
    hanging = Hanging()
    async with run_server(hanging.app()) as url:
        try:
            async with api_client(settings) as http:
                sub = await subscribe(http, f"{url}/hang-once")
                event_id = await ping(http, sub["id"])
                await hanging.wait_for(lambda h: h.hanging == 1)
            released = await delivery_of(settings, event_id)
            recorded = await attempts_of(settings, event_id)
            async with api_client(settings) as http:
                after = await until_delivery(http, event_id, finished)
        finally:
            hanging.release.set()
    assert released["status"] == "pending"
    assert released["lease_until"] is None
    assert released["attempts"] == 0
    assert released["next_attempt_at"] is not None
    assert recorded == []
    assert after["status"] == "succeeded"
    assert after["attempt_count"] == 1
    assert hanging.on("/hang-once") == 2


# --- settings ----------------------------------------------------------------------------------


def test_rotation_and_shutdown_grace_settings() -> None:
    defaults = load_settings({})
    assert defaults.secret_rotation_grace == 86400
    assert defaults.shutdown_grace == 10
    assert defaults.disable_after == 432000
    read = load_settings(
        {"REELHOOK_SECRET_ROTATION_GRACE": "3600", "REELHOOK_SHUTDOWN_GRACE": "2.5"}
    )
    assert read.secret_rotation_grace == 3600
    assert read.shutdown_grace == 2.5
    for name in ("SECRET_ROTATION_GRACE", "SHUTDOWN_GRACE"):
        for value in ("-1", "soon", "nan"):
            with pytest.raises(SettingsError, match=f"REELHOOK_{name}"):
                load_settings({f"REELHOOK_{name}": value})


async def test_connection_refused_stays_in_the_log_until_recovered(
    settings_factory: SettingsFactory,
) -> None:
    """A subscriber that was down (connection refused) comes up: recover delivers what failed."""
    settings = settings_factory(RETRY_SCHEDULE="0")
    sock = loopback_socket()
    with closing(sock):
        url = url_of(sock)
        async with api_client(settings) as http:
            sub = await subscribe(http, f"{url}/hook")
            event_id, row = await exhausted(http, sub["id"])
            sink = Sink()
            async with run_server(sink.app(), sock):
                recovered = await http.post(
                    f"/v1/subscriptions/{sub['id']}/recover", params={"since": row["created_at"]}
                )
                await sink.wait_for(lambda s: len(s.on("/hook")) == 1)
                after = await until_delivery(http, event_id, finished)
    assert row["last_status_code"] is None
    assert recovered.json()["recovered"] == 1
    assert after["status"] == "succeeded"
    assert sink.on("/hook")[0].headers["webhook-id"] == event_id


async def test_deliveries_filter_by_event_type_and_creation_time(
    settings_factory: SettingsFactory, dead_url: str
) -> None:
    async with api_client(settings_factory(RETRY_SCHEDULE="0")) as http:
        sub = (await http.post("/v1/subscriptions", json={"url": f"{dead_url}/h"})).json()
        assert (await http.post(f"/v1/subscriptions/{sub['id']}/test")).status_code == 202
        sample = {"type": "job.failed"}
        sent = await http.post(f"/v1/subscriptions/{sub['id']}/test", json=sample)
        assert sent.status_code == 202 and sent.json()["type"] == "job.failed"
        pings = (await http.get("/v1/deliveries", params={"event_type": "ping"})).json()["data"]
        assert [d["event_type"] for d in pings] == ["ping"]
        failed = await http.get("/v1/deliveries", params={"event_type": "job.failed"})
        assert [d["event_type"] for d in failed.json()["data"]] == ["job.failed"]
        later = await http.get("/v1/deliveries", params={"since": "2100-01-01T00:00:00"})
        assert later.json()["data"] == []
        both = await http.get("/v1/deliveries", params={"until": "2100-01-01T00:00:00"})
        assert len(both.json()["data"]) == 2
        bad = await http.get("/v1/deliveries", params={"event_type": "job.done"})
        assert_error(bad, 422, "validation_failed", "event_type")
        bad_type = await http.post(f"/v1/subscriptions/{sub['id']}/test", json={"type": "x"})
        assert_error(bad_type, 422, "validation_failed", "type")
        extra = await http.post(f"/v1/subscriptions/{sub['id']}/test", json={"kind": "ping"})
        assert_error(extra, 422, "validation_failed", "kind")
