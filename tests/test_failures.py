"""One classification of network failures for both outbound clients, on real loopback sockets."""

from __future__ import annotations

import ipaddress
import socket

import aiohttp
import httpx
import pytest

from service.net.client import guarded_client, guarded_session
from service.net.failures import NETWORK_ERRORS, NetworkFailure, classify
from service.net.guard import IPNetwork

pytestmark = pytest.mark.anyio

NOTHING: tuple[IPNetwork, ...] = ()
LOOPBACK: tuple[IPNetwork, ...] = (ipaddress.ip_network("127.0.0.0/8"),)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def via_httpx(allow: tuple[IPNetwork, ...], url: str) -> NetworkFailure:
    client = guarded_client(
        allow, ssl_context=httpx.create_ssl_context(), timeout=httpx.Timeout(5.0)
    )
    async with client:
        with pytest.raises(NETWORK_ERRORS) as raised:
            await client.get(url)
    return classify(raised.value)


async def via_aiohttp(allow: tuple[IPNetwork, ...], url: str) -> NetworkFailure:
    async with guarded_session(allow, timeout=5.0, concurrency=2) as session:
        with pytest.raises((*NETWORK_ERRORS, OSError)) as raised:
            async with session.get(url):
                pass
    return classify(raised.value)


@pytest.mark.parametrize("through", [via_httpx, via_aiohttp])
async def test_the_guard_refusing_is_classified_refused_and_unsent(through: object) -> None:
    failure = await through(NOTHING, f"http://127.0.0.1:{closed_port()}/x")  # type: ignore[operator]
    assert failure is NetworkFailure.REFUSED
    assert failure.unsent and not failure.transient


@pytest.mark.parametrize("through", [via_httpx, via_aiohttp])
async def test_a_closed_port_is_unreachable_unsent_and_transient(through: object) -> None:
    failure = await through(LOOPBACK, f"http://127.0.0.1:{closed_port()}/x")  # type: ignore[operator]
    assert failure is NetworkFailure.UNREACHABLE
    assert failure.unsent and failure.transient and not failure.timed_out


@pytest.mark.parametrize("through", [via_httpx, via_aiohttp])
async def test_a_url_no_client_can_request_is_invalid(through: object) -> None:
    failure = await through(LOOPBACK, "ftp://127.0.0.1/x")  # type: ignore[operator]
    assert failure is NetworkFailure.INVALID_URL
    assert not failure.transient


def test_timeouts_of_either_client_are_timeouts() -> None:
    assert classify(httpx.ReadTimeout("slow")) is NetworkFailure.TIMEOUT
    assert classify(TimeoutError()) is NetworkFailure.TIMEOUT
    assert classify(httpx.ConnectTimeout("slow")) is NetworkFailure.CONNECT_TIMEOUT
    assert classify(aiohttp.ConnectionTimeoutError()) is NetworkFailure.CONNECT_TIMEOUT
    assert all(
        failure.timed_out and failure.transient
        for failure in (NetworkFailure.TIMEOUT, NetworkFailure.CONNECT_TIMEOUT)
    )
    assert not NetworkFailure.TIMEOUT.unsent


def test_a_broken_exchange_may_pass_but_was_sent() -> None:
    for error in (httpx.RemoteProtocolError("bye"), aiohttp.ServerDisconnectedError()):
        failure = classify(error)
        assert failure is NetworkFailure.BROKEN
        assert failure.transient and not failure.unsent
    assert classify(httpx.TooManyRedirects("loop")) is NetworkFailure.OTHER
