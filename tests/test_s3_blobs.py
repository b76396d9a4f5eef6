"""Blobs on S3-compatible storage (``REELHOOK_BLOB_URL=s3://bucket/prefix``), against a real moto
server on loopback: mirrored videos land in the bucket under ``prefix/sha256`` and any node
serves them with HTTP Range."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from pathlib import Path

import anyio
import httpx
import pytest

from service.app.factory import open_blob_store
from service.app.settings import Settings, SettingsError, load_settings
from service.core.tokens import Tokens
from service.storage.blobs import BlobTooLarge, BlobUnavailable
from service.storage.s3blobs import PART_SIZE, S3BlobStore
from tests.conftest import SettingsFactory, settings_for
from tests.helpers.s3 import (
    SECRET_ACCESS_KEY,
    bucket_name,
    moto_server,
    require_moto,
    s3_client,
    s3_settings,
)
from tests.helpers.segmind import finished_segmind_job
from tests.servers import free_port, loopback_socket, url_of
from tests.support import api_client, run_serve, served
from tests.test_mirroring import V3, create, digest_of, mirror_rows, succeeded_event

pytestmark = pytest.mark.anyio

SAMPLE_MP4 = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()


@pytest.fixture(scope="session")
def moto() -> Iterator[str]:
    """One moto S3 server for the session, on a free loopback port; each test uses its own
    bucket."""
    require_moto()
    with moto_server() as url:
        yield url


@pytest.fixture
async def bucket(moto: str) -> str:
    name = bucket_name()
    async with s3_client(moto) as client:
        await client.create_bucket(Bucket=name)
    return name


async def _chunks(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _keys(moto: str, bucket: str) -> list[str]:
    async with s3_client(moto) as client:
        listed = await client.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


async def _mirrored_link(http: httpx.AsyncClient) -> str:
    """Create a job the in-process simulator finishes; return its output's mirror link."""
    job = await create(http, V3)
    event = await succeeded_event(http, job["id"], within=30)
    (output,) = event["data"]["outputs"]
    assert "mirror_error" not in output, output
    link: str = output["mirror_url"]
    return link


@pytest.mark.slow
async def test_a_mirrored_video_lands_in_the_bucket_and_is_served_with_range(
    settings_factory: SettingsFactory, moto: str, bucket: str
) -> None:
    sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock), SIM_DELAY="0.2", MIRROR_OUTPUTS="true", **s3_settings(moto, bucket)
    )
    size = len(SAMPLE_MP4)
    async with served(settings, sock) as http:
        link = await _mirrored_link(http)
        async with httpx.AsyncClient() as anonymous:
            whole = await anonymous.get(link)
            head = await anonymous.head(link)
            part = await anonymous.get(link, headers={"Range": "bytes=100-1123"})
            suffix = await anonymous.get(link, headers={"Range": "bytes=-100"})
            open_ended = await anonymous.get(link, headers={"Range": "bytes=4000-"})
            past_end = await anonymous.get(link, headers={"Range": "bytes=4100-99999999"})
            unsatisfiable = await anonymous.get(link, headers={"Range": f"bytes={size}-"})
            malformed = await anonymous.get(link, headers={"Range": "lines=1-2"})

    digest = hashlib.sha256(SAMPLE_MP4).hexdigest()
    assert digest_of(link) == digest
    assert await _keys(moto, bucket) == [f"videos/{digest}"]
    # Nothing but the (empty) spool folder on local disk.
    assert [p.name for p in settings.blob_dir.rglob("*") if p.is_file()] == []
    assert whole.status_code == 200
    assert whole.content == SAMPLE_MP4
    assert whole.headers["content-type"] == "video/mp4"
    assert whole.headers["content-length"] == str(size)
    assert whole.headers["accept-ranges"] == "bytes"
    assert head.status_code == 200
    assert head.headers["content-length"] == str(size)
    assert head.content == b""
    assert part.status_code == 206
    assert part.content == SAMPLE_MP4[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{size}"
    assert part.headers["content-length"] == "1024"
    assert suffix.status_code == 206
    assert suffix.content == SAMPLE_MP4[-100:]
    assert suffix.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    assert open_ended.status_code == 206
    assert open_ended.content == SAMPLE_MP4[4000:]
    assert past_end.status_code == 206
    assert past_end.content == SAMPLE_MP4[4100:]
    assert past_end.headers["content-range"] == f"bytes 4100-{size - 1}/{size}"
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
    assert unsatisfiable.json()["error"]["code"] == "range_not_satisfiable"
    assert malformed.status_code == 400
    assert "Range" in malformed.json()["error"]["message"]
    assert [(r["status"], r["attempts"]) for r in mirror_rows(settings)] == [("done", 1)]


@pytest.mark.slow
async def test_one_node_mirrors_and_another_serves_the_file(
    tmp_path: Path, moto: str, bucket: str
) -> None:
    """Two reelhook nodes with their own data directories share only the bucket (and the secret
    keys that sign links): a link minted by node A is served by node B."""
    sock = loopback_socket()
    shared = s3_settings(moto, bucket)
    node_a = settings_for(tmp_path / "a", PUBLIC_URL=url_of(sock), MIRROR_OUTPUTS="true", **shared)
    node_b = settings_for(tmp_path / "b", **shared)
    async with served(node_a, sock) as http_a:
        link = await _mirrored_link(http_a)
    path = httpx.URL(link).path
    async with api_client(node_b) as http_b:
        whole = await http_b.get(path)
        part = await http_b.get(path, headers={"Range": "bytes=10-99"})
        missing = await http_b.get(
            path.replace(
                path.rsplit("/", 1)[1],
                _link_for(node_b.secret_keys, hashlib.sha256(b"never stored").hexdigest()),
            )
        )

    assert not (tmp_path / "b" / "blobs").exists() or not any(
        p.is_file() for p in (tmp_path / "b" / "blobs").rglob("*")
    )
    assert whole.status_code == 200
    assert whole.content == SAMPLE_MP4
    assert part.status_code == 206
    assert part.content == SAMPLE_MP4[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(SAMPLE_MP4)}"
    assert missing.status_code == 404


def _files(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()]


def _tried(settings: Settings) -> bool:
    return any(row["attempts"] >= 1 for row in mirror_rows(settings))


def _link_for(secret_keys: tuple[str, ...], digest: str) -> str:
    return Tokens(list(secret_keys)).file(digest, "video/mp4")


@pytest.mark.slow
async def test_a_segmind_video_is_stored_in_the_bucket_and_served_with_range(
    settings_factory: SettingsFactory, moto: str, bucket: str
) -> None:
    sock = loopback_socket()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock), SIM_DELAY="0.1", **s3_settings(moto, bucket, "segmind")
    )
    async with served(settings, sock) as http:
        _, link = await finished_segmind_job(http, duration=5)
        async with httpx.AsyncClient() as anonymous:
            part = await anonymous.get(link, headers={"Range": "bytes=10-99"})

    assert part.status_code == 206
    assert part.content == SAMPLE_MP4[10:100]
    assert part.headers["content-range"] == f"bytes 10-99/{len(SAMPLE_MP4)}"
    assert await _keys(moto, bucket) == [f"segmind/{hashlib.sha256(SAMPLE_MP4).hexdigest()}"]


async def test_the_same_digest_written_twice_is_stored_once(
    tmp_path: Path, moto: str, bucket: str
) -> None:
    """Two nodes writing the same bytes — one after the other and at the same time, small (one
    PUT with If-None-Match) and large (multipart) — end with one object holding those bytes."""
    large = os.urandom(PART_SIZE + 1_000_000)
    async with s3_client(moto) as client:
        one = S3BlobStore(client, bucket, "p", tmp_path / "one")
        two = S3BlobStore(client, bucket, "p", tmp_path / "two")
        first = await one.write(_chunks(SAMPLE_MP4), max_bytes=10**9)
        again = await two.write(_chunks(SAMPLE_MP4), max_bytes=10**9)
        results: list[tuple[str, int]] = []

        async def write(store: S3BlobStore, data: bytes) -> None:
            results.append(await store.write(_chunks(data, 1 << 20), max_bytes=10**9))

        async with anyio.create_task_group() as tg:
            for store in (one, two):
                tg.start_soon(write, store, large)
        # Four nodes racing on a small blob: each HEAD may miss, and the PUTs after the first
        # are refused with 412 — which is success for the writer.
        racing: list[tuple[str, int]] = []
        small = os.urandom(5000)

        async def write_small(folder: str) -> None:
            store = S3BlobStore(client, bucket, "p", tmp_path / folder)
            racing.append(await store.write(_chunks(small), max_bytes=10**9))

        async with anyio.create_task_group() as tg:
            for folder in ("r1", "r2", "r3", "r4"):
                tg.start_soon(write_small, folder)
        slice_ = b"".join(
            [chunk async for chunk in two.read(results[0][0], PART_SIZE - 5, PART_SIZE + 4)]
        )
        sizes = (await one.size(first[0]), await two.size(results[0][0]))
        body = await client.get_object(Bucket=bucket, Key=f"p/{first[0]}")
        async with body["Body"] as stream:
            stored = await stream.read()

    small_digest = hashlib.sha256(SAMPLE_MP4).hexdigest()
    large_digest = hashlib.sha256(large).hexdigest()
    assert first == again == (small_digest, len(SAMPLE_MP4))
    assert results == [(large_digest, len(large))] * 2
    assert stored == SAMPLE_MP4
    assert slice_ == large[PART_SIZE - 5 : PART_SIZE + 5]
    assert sizes == (len(SAMPLE_MP4), len(large))
    racing_digest = hashlib.sha256(small).hexdigest()
    assert racing == [(racing_digest, 5000)] * 4
    assert await _keys(moto, bucket) == sorted(
        [f"p/{small_digest}", f"p/{large_digest}", f"p/{racing_digest}"]
    )
    # The spool folders are empty again.
    assert _files(tmp_path) == []
    async with s3_client(moto) as client:
        uploads = await client.list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == []


async def test_a_too_large_stream_leaves_nothing_in_the_bucket(
    tmp_path: Path, moto: str, bucket: str
) -> None:
    async with s3_client(moto) as client:
        store = S3BlobStore(client, bucket, "p", tmp_path / "spool")
        with pytest.raises(BlobTooLarge):
            await store.write(_chunks(SAMPLE_MP4), max_bytes=len(SAMPLE_MP4) - 1)
    assert await _keys(moto, bucket) == []
    assert _files(tmp_path) == []


@pytest.mark.slow
async def test_an_unreachable_store_is_retried_then_given_up_as_transient(
    settings_factory: SettingsFactory,
) -> None:
    """S3 down: each download is a transient failure, tried again on the mirror schedule; only
    when the schedule is spent is the job announced with the reason (and the provider's URL)."""
    sock = loopback_socket()
    dead = f"http://127.0.0.1:{free_port()}"
    settings = settings_factory(
        PUBLIC_URL=url_of(sock),
        SIM_DELAY="0.2",
        MIRROR_OUTPUTS="true",
        MIRROR_RETRY_SCHEDULE="0.05,0.05",
        **s3_settings(dead, "reelhook-nowhere"),
    )
    async with served(settings, sock) as http:
        job = await create(http, V3)
        event = await succeeded_event(http, job["id"], within=60)

    (output,) = event["data"]["outputs"]
    assert "mirror_url" not in output
    assert output["url"].startswith(f"{settings.public_url}/sim/")
    assert output["mirror_error"] == (
        "the blob store is unavailable: S3 could not be reached: EndpointConnectionError"
        " (after 3 attempts)"
    )
    assert SECRET_ACCESS_KEY not in output["mirror_error"]
    assert [(r["status"], r["attempts"]) for r in mirror_rows(settings)] == [("failed", 3)]


@pytest.mark.slow
async def test_a_store_that_comes_back_gets_the_retried_download(
    settings_factory: SettingsFactory, moto: str
) -> None:
    """The bucket is missing at the first try (S3 answers NoSuchBucket) and created before the
    retry: the mirror worker backs off, tries again, and the job ends mirrored."""
    sock = loopback_socket()
    name = bucket_name()
    settings = settings_factory(
        PUBLIC_URL=url_of(sock),
        SIM_DELAY="0.2",
        MIRROR_OUTPUTS="true",
        MIRROR_RETRY_SCHEDULE="1,1,1,1,1",
        **s3_settings(moto, name),
    )
    async with served(settings, sock) as http:
        job = await create(http, V3)
        with anyio.fail_after(30):
            while True:
                if _tried(settings):
                    break
                await anyio.sleep(0.05)
        (row,) = mirror_rows(settings)
        async with s3_client(moto) as client:
            await client.create_bucket(Bucket=name)
        event = await succeeded_event(http, job["id"], within=30)

    assert row["status"] == "pending"
    assert row["error"] == "the blob store is unavailable: S3 answered NoSuchBucket (HTTP 404)"
    (output,) = event["data"]["outputs"]
    assert "mirror_url" in output, output
    assert await _keys(moto, name) == [f"videos/{hashlib.sha256(SAMPLE_MP4).hexdigest()}"]


async def test_a_store_unreachable_while_serving_answers_503(
    settings_factory: SettingsFactory,
) -> None:
    settings = settings_factory(**s3_settings(f"http://127.0.0.1:{free_port()}", "reelhook-x"))
    link = _link_for(settings.secret_keys, hashlib.sha256(b"x").hexdigest())
    async with api_client(settings) as http:
        response = await http.get(f"/v1/files/{link}")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"
    assert SECRET_ACCESS_KEY not in response.text


async def test_the_store_is_chosen_by_the_settings(tmp_path: Path, moto: str) -> None:
    local = settings_for(tmp_path / "local")
    remote = settings_for(tmp_path / "remote", **s3_settings(moto, "reelhook-bucket", "a/b"))
    async with open_blob_store(local) as store:
        assert store.local_path("0" * 64) == local.blob_dir / "00" / ("0" * 64)
    async with open_blob_store(remote) as store:
        assert isinstance(store, S3BlobStore)
        assert store.local_path("0" * 64) is None
        assert store.key("0" * 64) == "a/b/" + "0" * 64
        # The bucket does not exist: a HEAD only says 404, the upload names the problem.
        assert await store.size("0" * 64) is None
        with pytest.raises(BlobUnavailable, match=r"NoSuchBucket \(HTTP 404\)"):
            await store.write(_chunks(b"x"), max_bytes=10)


# --- settings -------------------------------------------------------------------------------------

GOOD = {"REELHOOK_BLOB_URL": "s3://reelhook-videos/prod/blobs"}


def test_reelhook_serve_refuses_a_bad_blob_setting_in_one_line(tmp_path: Path) -> None:
    done = run_serve(
        tmp_path,
        BLOB_URL="s3://reelhook-videos/b",
        S3_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("reelhook: cannot start: REELHOOK_S3_ACCESS_KEY_ID: set both")
    assert SECRET_ACCESS_KEY not in done.stderr + done.stdout
    assert not (tmp_path / "data").exists()


def test_s3_settings_are_read_once() -> None:
    assert load_settings({}).s3 is None
    settings = load_settings(
        {
            **GOOD,
            "REELHOOK_S3_ENDPOINT_URL": "https://s3.eu-central-003.example.com/",
            "REELHOOK_S3_REGION": "eu-central-003",
            "REELHOOK_S3_ACCESS_KEY_ID": "AKIAEXAMPLE",
            "REELHOOK_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        }
    )
    assert settings.s3 is not None
    assert (settings.s3.bucket, settings.s3.prefix) == ("reelhook-videos", "prod/blobs")
    assert settings.s3.endpoint_url == "https://s3.eu-central-003.example.com"
    assert settings.s3.region == "eu-central-003"
    assert settings.s3.secret_access_key == SECRET_ACCESS_KEY
    # The secret never reaches a repr (and so no log line that prints the settings).
    assert SECRET_ACCESS_KEY not in repr(settings)
    bare = load_settings({"REELHOOK_BLOB_URL": "s3://reelhook-videos"})
    assert bare.s3 is not None
    assert (bare.s3.prefix, bare.s3.endpoint_url, bare.s3.region) == ("", None, "us-east-1")
    assert bare.s3.access_key_id is None


@pytest.mark.parametrize(
    ("environ", "setting"),
    [
        ({"REELHOOK_BLOB_URL": "https://reelhook-videos/x"}, "BLOB_URL"),
        ({"REELHOOK_BLOB_URL": "s3://"}, "BLOB_URL"),
        ({"REELHOOK_BLOB_URL": "s3://Bad_Bucket/x"}, "BLOB_URL"),
        ({"REELHOOK_BLOB_URL": "s3://reelhook-videos/a//b"}, "BLOB_URL"),
        ({"REELHOOK_BLOB_URL": "s3://reelhook-videos/../b"}, "BLOB_URL"),
        ({"REELHOOK_BLOB_URL": "s3://key:secret@reelhook-videos/b"}, "BLOB_URL"),
        ({"REELHOOK_BLOB_URL": "s3://reelhook-videos/b?x=1"}, "BLOB_URL"),
        ({"REELHOOK_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}, "S3_ENDPOINT_URL"),
        ({**GOOD, "REELHOOK_S3_ENDPOINT_URL": "ftp://127.0.0.1"}, "S3_ENDPOINT_URL"),
        ({**GOOD, "REELHOOK_S3_ENDPOINT_URL": "http://k:s@127.0.0.1"}, "S3_ENDPOINT_URL"),
        ({**GOOD, "REELHOOK_S3_REGION": "EU West 1"}, "S3_REGION"),
        ({**GOOD, "REELHOOK_S3_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "S3_SECRET_ACCESS_KEY"),
        ({**GOOD, "REELHOOK_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}, "S3_ACCESS_KEY_ID"),
        ({"REELHOOK_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY}, "S3_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_s3_settings_are_refused_with_one_line_naming_the_setting(
    environ: dict[str, str], setting: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(environ)
    message = str(refused.value)
    assert message.startswith(f"REELHOOK_{setting}: "), message
    assert "\n" not in message
    assert SECRET_ACCESS_KEY not in message
    assert "secret@" not in message and "k:s@" not in message
