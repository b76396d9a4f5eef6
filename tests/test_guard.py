"""The SSRF guard: which addresses subscribers may use, URL checks, and refusal at connect time.

Traffic goes to loopback only: the "public" addresses below are checked, never contacted.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from service.delivery.sender import AttemptResult, Sender
from service.net.guard import (
    AddressRefused,
    AddrInfo,
    IPNetwork,
    address_allowed,
    check_url,
    guarded_socket_factory,
)
from tests.conftest import SettingsFactory
from tests.servers import Sink, run_server
from tests.support import api_client

pytestmark = pytest.mark.anyio

NOTHING: tuple[IPNetwork, ...] = ()
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)

REFUSED = [
    "127.0.0.1",
    "127.255.255.254",
    "::1",
    "10.0.0.1",
    "10.255.1.2",
    "172.16.0.1",
    "172.31.255.254",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "fe80::1",
    "fc00::1",  # unique local
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 wrapping the metadata address
    "224.0.0.1",  # multicast
    "224.0.1.1",  # multicast with global scope (is_global is True for it)
    "ff0e::1",  # IPv6 global-scope multicast
    "0.0.0.0",
    "::",
    "255.255.255.255",
    "100.64.0.1",  # carrier-grade NAT
    "198.18.0.1",  # benchmarking
    "240.0.0.1",  # reserved
]

PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:2800:220:1:248:1893:25c8:1946", "::ffff:93.184.216.34"]


@pytest.mark.parametrize("text", REFUSED)
def test_private_and_reserved_addresses_are_refused_without_an_allow_list(text: str) -> None:
    assert not address_allowed(ipaddress.ip_address(text), NOTHING)


@pytest.mark.parametrize("text", REFUSED)
def test_an_allow_list_network_containing_the_address_admits_it(text: str) -> None:
    address = ipaddress.ip_address(text)
    exactly = ipaddress.ip_network(f"{address}/{address.max_prefixlen}")
    assert address_allowed(address, (exactly,))


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.9.9.9", "127.0.0.0/8"),
        ("10.1.2.3", "10.0.0.0/8"),
        ("172.20.0.5", "172.16.0.0/12"),
        ("192.168.7.7", "192.168.0.0/16"),
        ("169.254.169.254", "169.254.0.0/16"),
        ("fe80::1", "fe80::/10"),
        ("::1", "::1/128"),
        ("::ffff:127.0.0.1", "127.0.0.0/8"),  # the embedded IPv4 address is what is allowed
    ],
)
def test_allow_list_networks_admit_what_they_contain(text: str, network: str) -> None:
    assert address_allowed(ipaddress.ip_address(text), (ipaddress.ip_network(network),))


@pytest.mark.parametrize(
    ("text", "network"),
    [
        ("10.0.0.1", "127.0.0.0/8"),
        ("169.254.169.254", "127.0.0.0/8"),
        ("::1", "127.0.0.0/8"),
        ("192.168.1.1", "192.168.2.0/24"),
        ("::ffff:10.0.0.1", "127.0.0.0/8"),
    ],
)
def test_allow_list_networks_admit_only_what_they_contain(text: str, network: str) -> None:
    assert not address_allowed(ipaddress.ip_address(text), (ipaddress.ip_network(network),))


@pytest.mark.parametrize("text", PUBLIC)
def test_public_unicast_addresses_are_allowed(text: str) -> None:
    assert address_allowed(ipaddress.ip_address(text), NOTHING)
    assert address_allowed(ipaddress.ip_address(text), LOOPBACK)


@pytest.mark.parametrize(
    "text",
    [
        "64:ff9b::a00:1",  # NAT64 well-known prefix (RFC 6052) wrapping 10.0.0.1
        "64:ff9b::a9fe:a9fe",  # ... wrapping the metadata address 169.254.169.254
        "64:ff9b::7f00:1",  # ... wrapping 127.0.0.1
        "::127.0.0.1",  # IPv4-compatible (deprecated, RFC 4291) loopback
        "::a9fe:a9fe",  # IPv4-compatible metadata address
    ],
)
def test_ipv6_forms_embedding_a_private_ipv4_address_are_refused(text: str) -> None:
    """Like IPv4-mapped, 6to4 and Teredo, these carry an IPv4 destination that a NAT64 gateway
    (or an old dual stack) turns into a connection to the private IPv4 address."""
    assert not address_allowed(ipaddress.ip_address(text), NOTHING)


# check_url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com/",
        "javascript:alert(1)",
        "ws://example.com/hook",
        "example.com/hook",
    ],
)
def test_only_http_and_https_urls(url: str) -> None:
    assert check_url(url, LOOPBACK) == "must be an http or https URL"


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://example.com:8443/a?b=c"])
def test_public_http_urls_pass(url: str) -> None:
    assert check_url(url, NOTHING) is None


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@example.com/hook",
        "https://user@example.com/hook",
        "https://:secret@example.com/hook",
    ],
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    problem = check_url(url, NOTHING)
    assert problem is not None and "credentials" in problem


@pytest.mark.parametrize("url", ["http:///hook", "https://:443/"])
def test_a_url_must_name_a_host(url: str) -> None:
    assert check_url(url, NOTHING) == "must name a host"


def test_a_malformed_port_is_refused() -> None:
    assert check_url("http://example.com:99999/", NOTHING) == "is not a valid URL"
    assert check_url("http://example.com:port/", NOTHING) == "is not a valid URL"


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost/hook",
        "http://LOCALHOST:8080/hook",
        "http://localhost./hook",
        "http://localhost.localdomain/hook",
        "http://127.0.0.1:9000/hook",
        "http://[::1]:9000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "http://[fe80::1]/hook",
    ],
)
def test_private_hosts_are_refused_unless_allowed(url: str) -> None:
    problem = check_url(url, NOTHING)
    assert problem is not None and "private or reserved" in problem
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    assert check_url(url, everything) is None


def test_localhost_passes_when_loopback_is_allowed() -> None:
    assert check_url("http://localhost:8080/hook", LOOPBACK) is None
    assert check_url("http://127.0.0.1:8080/hook", LOOPBACK) is None
    assert check_url("http://10.0.0.1/hook", LOOPBACK) is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://127\u30020\u30020\u30021/hook",  # ideographic full stops: IDNA maps them to "."
        "http://\u2460\u2461\u2466.0.0.1/hook",  # circled digits: IDNA maps them to "127"
        "http://\uff11\uff12\uff17.0.0.1/hook",  # fullwidth digits
    ],
)
def test_unicode_spellings_of_a_loopback_literal_are_refused(url: str) -> None:
    """HTTP clients (yarl, hence aiohttp) normalise these hosts to 127.0.0.1 with IDNA."""
    problem = check_url(url, NOTHING)
    assert problem is not None


# The socket factory: the check on the address actually dialled (no socket is connected here)


def _addr_info(host: str, port: int = 80) -> AddrInfo:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockaddr: tuple[object, ...] = (host, port, 0, 0) if ":" in host else (host, port)
    return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr)


@pytest.mark.parametrize("host", ["127.0.0.1", "10.0.0.1", "169.254.169.254", "::1", "fe80::1%lo"])
def test_the_socket_factory_refuses_private_addresses(host: str) -> None:
    open_socket = guarded_socket_factory(NOTHING)
    with pytest.raises(AddressRefused) as refused:
        open_socket(_addr_info(host))
    assert isinstance(refused.value, OSError)
    assert host in str(refused.value)


def test_the_socket_factory_opens_allowed_addresses() -> None:
    open_socket = guarded_socket_factory(LOOPBACK)
    sock = open_socket(_addr_info("127.0.0.1"))
    try:
        assert sock.family == socket.AF_INET
        assert sock.type == socket.SOCK_STREAM
    finally:
        sock.close()


# Sender: nothing reaches a refused address, proven with a real subscriber on loopback

BYPASS_HOSTS = [
    "127.0.0.1",
    "localhost",
    "[::ffff:127.0.0.1]",  # IPv4-mapped: reaches 127.0.0.1 on a dual-stack host
    "127.1",
    "2130706433",
    "0x7f000001",
    "127.0.0.1.",
    "127\u30020\u30020\u30021",  # ideographic full stops
    "\u2460\u2461\u2466.0.0.1",  # circled digits
]


@asynccontextmanager
async def sender(allow: tuple[IPNetwork, ...]) -> AsyncIterator[Sender]:
    async with Sender.session(allow=allow, timeout=5.0, concurrency=4) as session:
        yield Sender(session)


async def post(through: Sender, url: str) -> AttemptResult:
    return await through.send(
        url=url,
        event_id="evt_guard",
        payload=b'{"type":"ping"}',
        secrets=["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
        headers={},
        timestamp=int(time.time()),
    )


@pytest.mark.parametrize("host", BYPASS_HOSTS)
async def test_the_sender_refuses_loopback_without_an_allow_list(host: str) -> None:
    sink = Sink()
    async with run_server(sink.app()) as sink_url:
        port = sink_url.rsplit(":", 1)[1]
        async with sender(NOTHING) as refusing:
            result = await post(refusing, f"http://{host}:{port}/refused")
        # The same subscriber is reachable once loopback is allowed, so a refusal is the guard's.
        async with sender(LOOPBACK) as allowing:
            control = await post(allowing, f"{sink_url}/control")
    assert [r.path for r in sink.received] == ["/control"], f"{host} reached the subscriber"
    assert control.succeeded, control
    assert not result.succeeded
    assert result.status_code is None
    assert result.error


async def test_the_sender_does_not_follow_a_redirect_to_an_allowed_host() -> None:
    """A redirect is a failure, so a public subscriber cannot bounce a delivery inward."""
    sink = Sink()
    async with run_server(sink.app()) as sink_url:
        sink.script["/hop"] = lambda count: (307, {"Location": f"{sink_url}/inside"})
        async with sender(LOOPBACK) as allowing:
            result = await post(allowing, f"{sink_url}/hop")
    assert result.status_code == 307
    assert not result.succeeded
    assert result.error == "HTTP 307"
    assert [r.path for r in sink.received] == ["/hop"]


# The API applies check_url with the configured allow-list


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",
        "http://[::1]:9/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://127\u30020\u30020\u30021:9/hook",
    ],
)
async def test_the_api_refuses_private_subscriber_urls_without_an_allow_list(
    settings_factory: SettingsFactory, url: str
) -> None:
    async with api_client(settings_factory(ALLOW_PRIVATE_SUBSCRIBERS="")) as http:
        created = await http.post("/v1/subscriptions", json={"url": url})
        assert created.status_code == 422, created.text
        assert "url" in created.text
        listed = await http.get("/v1/subscriptions")
        assert listed.json()["data"] == []


async def test_the_api_accepts_loopback_when_the_allow_list_names_it(
    settings_factory: SettingsFactory,
) -> None:
    async with api_client(settings_factory()) as http:
        created = await http.post("/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook"})
        assert created.status_code == 201, created.text
