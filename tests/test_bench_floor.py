"""Figure 1's floor (bench/floor.py): the least durable ingest ``make bench`` compares reelhook
with must itself be a durable ingest, or the comparison says nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.floor import stored
from bench.load import callback_body
from bench.procs import SECRET_KEY, start_floor
from bench.seed import job_id
from service.core.tokens import Tokens


@pytest.fixture
def floor(tmp_path: Path) -> Iterator[tuple[httpx.Client, Path]]:
    database = tmp_path / "floor.db"
    with (
        start_floor(tmp_path / "floor.log", database, jobs=3) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        yield client, database


def test_a_callback_is_stored_once_and_answered_after_its_commit(
    floor: tuple[httpx.Client, Path],
) -> None:
    client, database = floor
    token = Tokens([SECRET_KEY]).callback(job_id(1), "trinetra")
    body = callback_body(1, "http://127.0.0.1:9/clip.mp4")
    first = client.post(f"/v1/callbacks/trinetra/{token}", content=body)
    assert first.status_code == 200
    assert stored(str(database)) == (1, 1, 1)
    again = client.post(f"/v1/callbacks/trinetra/{token}", content=body)
    assert again.status_code == 200
    assert stored(str(database)) == (1, 1, 1)  # the duplicate adds no callback and no event


@pytest.mark.parametrize(
    ("token_for", "body", "status"),
    [
        ("apiframe", callback_body(2, "http://127.0.0.1:9/clip.mp4"), 404),  # another provider's
        ("trinetra", b"{not json", 422),
        ("trinetra", b'{"id": "tri_1"}', 422),  # no status
    ],
)
def test_a_bad_callback_is_refused_and_nothing_is_stored(
    floor: tuple[httpx.Client, Path], token_for: str, body: bytes, status: int
) -> None:
    client, database = floor
    token = Tokens([SECRET_KEY]).callback(job_id(2), token_for)
    response = client.post(f"/v1/callbacks/trinetra/{token}", content=body)
    assert response.status_code == status
    assert stored(str(database)) == (0, 0, 0)
