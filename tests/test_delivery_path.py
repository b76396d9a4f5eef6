"""The per-delivery send path made cheap (docs/performance.md §4): outcomes recorded in batches
under load, attempts given up without a cancel scope, recording successes waking no one, the
deadline of a reused fast-path connection, and signatures from prepared keys. Every test runs on
the store ``--store`` names."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from standardwebhooks.webhooks import Webhook
from starlette.types import Receive, Scope, Send

from service.core.models import DeliveryStatus
from service.delivery import signing
from service.delivery.sender import Sender
from service.net.client import guarded_session
from service.storage import deliveries, events, subscriptions
from service.storage.announcements import Work
from service.storage.database import Database
from service.storage.deliveries import AttemptOutcome
from tests.conftest import SettingsFactory
from tests.helpers.delivery import attempts_of, delivery_of, ping, subscribe
from tests.servers import read_body, run_lifespan, run_server
from tests.support import api_client, ping_event, store_target, subscription_row
from tests.test_posts import LOOPBACK, NO_CONTENT, Server, pool, scripted

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000.0


@dataclass
class Held:
    """A subscriber whose requests to ``/held`` wait until :attr:`release` is set; requests to
    ``/hang`` never get an answer (until the client hangs up); others answer 204 at once."""

    arrived: list[str] = field(default_factory=list)
    answered: int = 0
    release: anyio.Event = field(default_factory=anyio.Event)
    changed: anyio.Event = field(default_factory=anyio.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await run_lifespan(receive, send)
            return
        await read_body(receive)
        path: str = scope["path"]
        self.arrived.append(path)
        self._note()
        if path.startswith("/hang"):
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        if path.startswith("/held"):
            await self.release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        self.answered += 1
        self._note()

    def _note(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[Held], bool], within: float = 20.0) -> None:
        with anyio.fail_after(within):
            while not predicate(self):
                await self.changed.wait()


async def _wait_until(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    """Poll the store until ``check`` holds; fail after ``within`` s."""
    with anyio.fail_after(within):
        while True:
            if await check():
                return
            await anyio.sleep(0.02)


async def test_outcomes_that_arrive_while_others_send_are_recorded_in_a_batch(
    settings_factory: SettingsFactory,
) -> None:
    """Seven answers arrive while an eighth delivery still waits for its own: those seven go
    to the recorder together (after a short timer, not one transaction each), and each is
    recorded as delivered in one attempt while the eighth is still in flight."""
    settings = settings_factory(SUBSCRIPTION_CONCURRENCY="8")
    held = Held()
    async with run_server(held) as url, api_client(settings) as http:
        fast = await subscribe(http, f"{url}/held")
        hanging = await subscribe(http, f"{url}/hang")
        await ping(http, hanging["id"])
        await held.wait_for(lambda h: "/hang" in h.arrived)
        event_ids = [await ping(http, fast["id"]) for _ in range(7)]
        await held.wait_for(lambda h: h.arrived.count("/held") == 7)
        held.release.set()

        async def all_recorded() -> bool:
            rows = [await delivery_of(settings, event_id) for event_id in event_ids]
            return all(row["status"] == "succeeded" for row in rows)

        await _wait_until(all_recorded)
        for event_id in event_ids:
            attempts = await attempts_of(settings, event_id)
            assert [a["status_code"] for a in attempts] == [204]
        # The hanging one is still out: the seven were recorded while others were sending.
        assert held.arrived.count("/hang") == 1


async def test_an_attempt_given_up_early_is_recorded_as_timed_out(
    settings_factory: SettingsFactory,
) -> None:
    """One send slot: the first hanging attempt gives it back after ``DELIVERY_SLOW_AFTER``
    and goes on outside it; the second, with as many slow attempts open as slots, gives up and
    is recorded as timed out (and retried), long before the 60 s delivery timeout."""
    settings = settings_factory(
        DELIVERY_CONCURRENCY="1",
        DELIVERY_TIMEOUT="60",
        DELIVERY_SLOW_AFTER="0.05",
        RETRY_OVERLOAD_FLOOR="0",
        RETRY_SCHEDULE="0,30",
    )
    held = Held()
    async with run_server(held) as url, api_client(settings) as http:
        first = await subscribe(http, f"{url}/hang/a")
        second = await subscribe(http, f"{url}/hang/b")
        await ping(http, first["id"])
        await held.wait_for(lambda h: "/hang/a" in h.arrived)
        given_up = await ping(http, second["id"])

        async def recorded() -> bool:
            return bool(await attempts_of(settings, given_up))

        await _wait_until(recorded)
        attempts = await attempts_of(settings, given_up)
        row = await delivery_of(settings, given_up)
    assert attempts[0]["status_code"] is None
    assert attempts[0]["error"] == "timed out (given up early: too many slow attempts open)"
    assert row["status"] == "pending"  # retried on schedule


async def test_recording_successes_announces_no_work_and_a_retry_does(tmp_path: Path) -> None:
    """A delivered or finally failed outcome creates no due work, so its batch wakes no
    dispatcher (each wake-up is a read of what is due); a scheduled retry does."""
    async with Database.open(store_target(tmp_path)) as db:
        async with db.transaction() as conn:
            await subscriptions.insert(conn, subscription_row("sub_a", at=NOW - 100))
            await events.append(
                conn,
                [ping_event(NOW - 10, ["sub_a"]) for _ in range(3)],
            )
        async with db.transaction() as conn:
            claimed = await deliveries.claim_due(
                conn, now=NOW, lease_until=NOW + 60, rooms={"sub_a": 3}, owner=db.node_id
            )
        assert len(claimed) == 3

        def outcome(index: int, status: DeliveryStatus, retry: float | None) -> AttemptOutcome:
            return AttemptOutcome(
                delivery_id=claimed[index].id,
                subscription_id="sub_a",
                attempted_at=NOW + 1,
                latency_ms=1.0,
                status=status,
                token=claimed[index].token,
                status_code=204 if status == DeliveryStatus.SUCCEEDED else 500,
                next_attempt_at=retry,
            )

        async with db.transaction() as conn:
            done = [
                outcome(0, DeliveryStatus.SUCCEEDED, None),
                outcome(1, DeliveryStatus.FAILED, None),
            ]
            assert await deliveries.record(conn, done) == done
            assert conn.announced is not None
            assert Work.DELIVERIES not in conn.announced
        async with db.transaction() as conn:
            retry = [outcome(2, DeliveryStatus.PENDING, NOW + 5)]
            assert await deliveries.record(conn, retry) == retry
            assert conn.announced is not None
            assert Work.DELIVERIES in conn.announced


async def test_a_batch_of_outcomes_lands_each_on_its_own_delivery(tmp_path: Path) -> None:
    """Every field of every outcome in a batch is stored on its own delivery and attempt (on
    PostgreSQL the batch is written as arrays, one statement each), an error holding a NUL
    among them (PostgreSQL text cannot hold one: it is stored as U+FFFD there)."""

    def kept(text: str | None) -> str | None:
        return None if text is None else text.replace("\x00", "\ufffd")

    async with Database.open(store_target(tmp_path)) as db:
        async with db.transaction() as conn:
            await subscriptions.insert(conn, subscription_row("sub_a", at=NOW - 100))
            await events.append(conn, [ping_event(NOW - 10, ["sub_a"]) for _ in range(5)])
        async with db.transaction() as conn:
            claimed = await deliveries.claim_due(
                conn, now=NOW, lease_until=NOW + 60, rooms={"sub_a": 5}, owner=db.node_id
            )
        assert len(claimed) == 5
        given = [
            (DeliveryStatus.SUCCEEDED, 204, None, None, b"ok"),
            (DeliveryStatus.PENDING, 503, "HTTP 503", NOW + 30, None),
            (DeliveryStatus.FAILED, 410, "HTTP 410", None, b"gone"),
            (DeliveryStatus.PENDING, None, "bad header \x00 value", NOW + 60, None),
            (DeliveryStatus.SUCCEEDED, 200, None, None, b""),
        ]
        outcomes = [
            AttemptOutcome(
                delivery_id=delivery.id,
                subscription_id="sub_a",
                attempted_at=NOW + index,
                latency_ms=10.0 + index,
                status=status,
                token=delivery.token,
                status_code=code,
                error=error,
                next_attempt_at=retry,
                response_body=body,
            )
            for index, (delivery, (status, code, error, retry, body)) in enumerate(
                zip(claimed, given, strict=True)
            )
        ]
        async with db.transaction() as conn:
            assert await deliveries.record(conn, outcomes) == outcomes
        for index, (delivery, (status, code, error, retry, body)) in enumerate(
            zip(claimed, given, strict=True)
        ):
            stored = await deliveries.get(db.reader, delivery.id, owner_key_id=None)
            assert stored is not None
            assert (stored.status, stored.next_attempt_at, stored.last_status_code) == (
                status,
                retry,
                code,
            )
            assert (kept(stored.last_error), stored.updated_at) == (kept(error), NOW + index)
            (attempt,) = await deliveries.attempts_of(db.reader, delivery.id)
            assert attempt == deliveries.Attempt(
                NOW + index, code, 10.0 + index, attempt.error, body
            )
            assert kept(attempt.error) == kept(error)


async def test_a_reused_connection_that_never_answers_times_out_and_is_dropped() -> None:
    """The deadline on a reused connection (one timer on the answer): a TimeoutError, as
    aiohttp's total timeout raises, and the connection is never used again."""

    async def answer_then_hang(
        server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        await server.read_request(r)
        w.write(NO_CONTENT)
        await w.drain()
        if server.connections == 1:
            await server.read_request(r)
            await asyncio.sleep(5)  # the second request on this connection gets no answer
        while True:
            await server.read_request(r)
            w.write(NO_CONTENT)
            await w.drain()

    async with scripted(answer_then_hang) as server, pool() as posts:
        url = f"http://127.0.0.1:{server.port}/"
        assert (await posts.post(url, {}, b"1", timeout=5, keep=10)).status == 204
        with pytest.raises(TimeoutError):
            await posts.post(url, {}, b"2", timeout=0.2, keep=10)
        assert (await posts.post(url, {}, b"3", timeout=5, keep=10)).status == 204
    assert server.connections == 2
    assert [body for _, body in server.requests] == [b"1", b"2", b"3"]


def test_a_header_with_a_line_break_is_refused() -> None:
    posts = pool()
    with pytest.raises(ValueError, match="line break"):
        posts.head("http://127.0.0.1:9/", {"X-A": "one\r\nX-B: two"})
    # A URL's head is kept per header set: another set gets its own.
    one = posts.head("http://127.0.0.1:9/", {"X-A": "1"})
    two = posts.head("http://127.0.0.1:9/", {"X-A": "2"})
    assert b"X-A: 1\r\n" in one and b"X-A: 2\r\n" in two


def test_prepared_keys_sign_as_the_one_shot_functions_do() -> None:
    signer = signing.Signer()
    body = b'{"type":"ping","data":{"n":1}}'
    hmac_secret, key = signing.new_secret(), signing.new_secret("v1a")
    for secrets in ([hmac_secret], [key], [hmac_secret, signing.new_secret()], [key, hmac_secret]):
        for _ in range(2):  # the second time from the prepared keys
            expected = signing.headers(secrets, "evt_1", 1_790_000_000, body)["webhook-signature"]
            got = signer.signature(secrets, "evt_1", 1_790_000_000, body)
            assert got.decode() == expected


async def test_the_fast_path_request_verifies_with_standardwebhooks() -> None:
    """What the fast path writes, headers in aiohttp's order and signed from prepared keys,
    verifies with the Standard Webhooks library, for the current and a rotated-out secret."""
    old, new = signing.new_secret(), signing.new_secret()
    async with (
        scripted(_keep_answering) as server,
        guarded_session(LOOPBACK, timeout=5, concurrency=4) as session,
        pool() as posts,
    ):
        sender = Sender(session, posts)
        for n in range(2):
            result = await sender.send(
                url=f"http://127.0.0.1:{server.port}/hook",
                event_id=f"evt_{n}",
                payload=b'{"n": %d}' % n,
                secrets=(new, old),
                headers={"X-Team": "blue"},
                timestamp=int(time.time()),
                content_type="application/json",
            )
            assert result.status_code == 204
    for n, (head, body) in enumerate(server.requests):
        lines = head.decode().split("\r\n")
        names = [line.split(":", 1)[0] for line in lines[1:] if line]
        assert names == [
            "Host",
            "User-Agent",
            "X-Team",
            "Content-Type",
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "Content-Length",
        ]
        headers = dict(line.split(": ", 1) for line in lines[1:] if line)
        assert headers["webhook-id"] == f"evt_{n}"
        assert headers["Content-Type"] == "application/json" and headers["X-Team"] == "blue"
        for secret in (new, old):
            assert Webhook(secret).verify(body, headers) == {"n": n}


async def _keep_answering(server: Server, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        await server.read_request(r)
        w.write(NO_CONTENT)
        await w.drain()
