"""An S3 endpoint on loopback for the blob-store tests: moto in server mode, as its own process.

Under ``CI=true`` a missing moto fails the tests that need it; elsewhere they are skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import aiobotocore.session
import httpx
import pytest
from types_aiobotocore_s3 import S3Client

from tests.servers import free_port

# moto accepts any credentials; these only have to be well formed.
ACCESS_KEY_ID = "AKIATESTREELHOOK0001"
SECRET_ACCESS_KEY = "reelhook-test-secret-never-logged-0123456789"


def require_moto() -> None:
    """Fail (CI) or skip (elsewhere) when moto's server is not installed."""
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
        reason = "moto[server] is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the S3 blob-store tests cannot run under CI: {reason}", pytrace=False)
        pytest.skip(reason)


@contextmanager
def moto_server() -> Iterator[str]:
    """Start ``moto.server`` on a free loopback port; yield its URL; stop it."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto.server exited with {process.returncode}")
            try:
                httpx.get(f"{url}/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto.server did not start within 30 s") from None
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@asynccontextmanager
async def s3_client(endpoint: str) -> AsyncIterator[S3Client]:
    """A client of the test's own, to set up buckets and look at what reelhook stored."""
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY_ID,
        aws_secret_access_key=SECRET_ACCESS_KEY,
    ) as client:
        yield client


def bucket_name() -> str:
    return f"reelhook-{uuid.uuid4().hex[:16]}"


def s3_settings(endpoint: str, bucket: str, prefix: str = "videos") -> dict[str, str]:
    """The ``settings_factory`` overrides that put blobs in ``bucket`` at ``endpoint``."""
    return {
        "BLOB_URL": f"s3://{bucket}/{prefix}",
        "S3_ENDPOINT_URL": endpoint,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    }
