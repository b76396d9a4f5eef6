"""``GET /v1/files/{token}``: signed, expiring links to stored videos, with HTTP Range support."""

from __future__ import annotations

from collections.abc import AsyncIterator
from importlib import resources

import anyio
import httpx
import pytest

from service.app.settings import Settings
from service.core.tokens import Tokens
from service.storage.blobs import BlobStore
from tests.conftest import SettingsFactory
from tests.helpers.files import SECRET, minted_ago, tamper
from tests.helpers.segmind import finished_segmind_job
from tests.servers import loopback_socket, url_of
from tests.support import api_client, served

pytestmark = pytest.mark.anyio

SAMPLE_MP4 = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


async def store(settings: Settings, data: bytes = SAMPLE_MP4) -> str:
    digest, size = await BlobStore(settings.blob_dir).write(_chunks(data), max_bytes=10**9)
    assert size == len(data)
    return digest


@pytest.fixture
async def stored(settings_factory: SettingsFactory) -> str:
    """A link (path) to the sample mp4 written into the blob store the ``client`` app uses."""
    digest = await store(settings_factory())
    return f"/v1/files/{Tokens([SECRET]).file(digest, 'video/mp4')}"


async def test_a_link_serves_the_stored_bytes(client: httpx.AsyncClient, stored: str) -> None:
    response = await client.get(stored, headers={"X-API-Key": ""})

    assert response.status_code == 200, response.text
    assert response.content == SAMPLE_MP4
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-length"] == str(len(SAMPLE_MP4))
    assert response.headers["accept-ranges"] == "bytes"


async def test_head_answers_the_size_without_the_body(
    client: httpx.AsyncClient, stored: str
) -> None:
    response = await client.head(stored)
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(SAMPLE_MP4))
    assert response.content == b""


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-99", 10, 99),
        ("bytes=0-0", 0, 0),
        ("bytes=4000-", 4000, len(SAMPLE_MP4) - 1),
        ("bytes=-100", len(SAMPLE_MP4) - 100, len(SAMPLE_MP4) - 1),
        ("bytes=4100-999999", 4100, len(SAMPLE_MP4) - 1),
    ],
)
async def test_a_range_request_gets_exactly_that_slice(
    client: httpx.AsyncClient, stored: str, header: str, start: int, end: int
) -> None:
    response = await client.get(stored, headers={"Range": header})

    assert response.status_code == 206, response.text
    assert response.content == SAMPLE_MP4[start : end + 1]
    assert response.headers["content-range"] == f"bytes {start}-{end}/{len(SAMPLE_MP4)}"
    assert response.headers["content-length"] == str(end - start + 1)
    assert response.headers["content-type"] == "video/mp4"


async def test_an_unsatisfiable_range_is_a_416(client: httpx.AsyncClient, stored: str) -> None:
    response = await client.get(stored, headers={"Range": f"bytes={len(SAMPLE_MP4)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(SAMPLE_MP4)}"


async def test_a_tampered_link_is_forbidden(client: httpx.AsyncClient, stored: str) -> None:
    token = stored.removeprefix("/v1/files/")
    for tampered in (tamper(token, len(token) - 3), tamper(token, 2), token + "x", "junk"):
        response = await client.get(f"/v1/files/{tampered}")
        assert response.status_code == 403, (tampered, response.text)
        assert response.json()["error"]["code"] == "forbidden"
        assert SAMPLE_MP4[:16] not in response.content


async def test_a_link_signed_with_another_key_or_purpose_is_forbidden(
    client: httpx.AsyncClient, settings_factory: SettingsFactory
) -> None:
    digest = await store(settings_factory())
    foreign = Tokens(["some-other-secret-key-0123456789"]).file(digest, "video/mp4")
    callback_token = Tokens([SECRET]).callback(digest, "video/mp4")  # right key, wrong salt
    for token in (foreign, callback_token):
        response = await client.get(f"/v1/files/{token}")
        assert response.status_code == 403, response.text


async def test_a_genuine_link_cannot_reach_outside_the_blob_store(
    client: httpx.AsyncClient, settings_factory: SettingsFactory
) -> None:
    settings = settings_factory()
    (settings.data_dir / "outside.txt").write_text("not a video")
    for digest in ("../outside.txt", "../../reelhook.db", "A" * 64):
        response = await client.get(f"/v1/files/{Tokens([SECRET]).file(digest, 'text/plain')}")
        assert response.status_code == 403, (digest, response.text)


async def test_a_link_to_a_blob_no_longer_stored_is_a_404(client: httpx.AsyncClient) -> None:
    missing = "0" * 64
    response = await client.get(f"/v1/files/{Tokens([SECRET]).file(missing, 'video/mp4')}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_an_expired_link_is_gone(settings_factory: SettingsFactory) -> None:
    settings = settings_factory(FILE_LINK_TTL="1")
    digest = await store(settings)
    async with api_client(settings) as http:
        fresh = await http.get(f"/v1/files/{Tokens([SECRET]).file(digest, 'video/mp4')}")
        assert fresh.status_code == 200
        assert fresh.content == SAMPLE_MP4

        expired = await http.get(f"/v1/files/{minted_ago(60, digest)}")
        assert expired.status_code == 410, expired.headers
        assert expired.json()["error"]["code"] == "gone"
        assert SAMPLE_MP4[:16] not in expired.content

        # An old but tampered link is refused as forged, not reported as merely expired.
        old = minted_ago(60, digest)
        forged = tamper(old, len(old) - 3)
        assert (await http.get(f"/v1/files/{forged}")).status_code == 403


async def test_an_hour_old_link_still_works_under_the_default_ttl(
    client: httpx.AsyncClient, settings_factory: SettingsFactory
) -> None:
    digest = await store(settings_factory())
    response = await client.get(f"/v1/files/{minted_ago(3600, digest)}")
    assert response.status_code == 200
    assert response.content == SAMPLE_MP4


async def test_links_survive_a_key_rotation(settings_factory: SettingsFactory) -> None:
    """Keys are a list, newest last: a link signed with the old key keeps working."""
    settings = settings_factory(SECRET_KEYS=f"{SECRET},the-newer-secret-key-0123456789")
    digest = await store(settings)
    async with api_client(settings) as http:
        response = await http.get(f"/v1/files/{Tokens([SECRET]).file(digest, 'video/mp4')}")
    assert response.status_code == 200
    assert response.content == SAMPLE_MP4


async def test_a_segmind_output_link_supports_ranges(settings_factory: SettingsFactory) -> None:
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1")
    async with served(settings, sock) as http:
        _, link = await finished_segmind_job(http, duration=5)
        assert link.startswith(f"{url_of(sock)}/v1/files/")
        async with httpx.AsyncClient() as anonymous:
            whole = await anonymous.get(link)
            part = await anonymous.get(link, headers={"Range": "bytes=10-99"})
            tampered = await anonymous.get(tamper(link, len(link) - 3))

    assert whole.status_code == 200
    assert whole.content == SAMPLE_MP4
    assert part.status_code == 206
    assert part.content == SAMPLE_MP4[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(SAMPLE_MP4)}"
    assert tampered.status_code == 403


@pytest.mark.slow
async def test_after_a_link_expires_the_job_hands_out_a_fresh_one(
    settings_factory: SettingsFactory,
) -> None:
    """The 410 says "fetch the job again for a fresh one"; the job document must then oblige."""
    sock = loopback_socket()
    settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.1", FILE_LINK_TTL="1")
    async with served(settings, sock) as http:
        job, link = await finished_segmind_job(http, duration=5)
        async with httpx.AsyncClient() as anonymous:
            # Wait (bounded) for the one-second TTL to run out; itsdangerous counts whole seconds.
            with anyio.fail_after(10):
                while True:
                    if (await anonymous.get(link)).status_code == 410:
                        break
                    await anyio.sleep(0.1)
            again = (await http.get(f"/v1/jobs/{job['id']}")).json()
            fresh = await anonymous.get(again["outputs"][0]["url"])
    assert fresh.status_code == 200, "the job document still carries only the expired link"
    assert fresh.content == SAMPLE_MP4


def test_the_sample_is_a_real_mp4() -> None:
    """The fixtures above rely on a non-trivial file: ranges must cut inside it."""
    assert len(SAMPLE_MP4) > 4100
    assert SAMPLE_MP4[4:8] == b"ftyp"
