"""The bench's subscriber sink (bench/sink.py): a drain being measured polls ``/_count``, which
must count what ``/_records`` holds, under a prefix or all of it."""

from __future__ import annotations

from pathlib import Path

import httpx

from bench.procs import start_sink


def test_the_count_is_the_records_under_a_prefix(tmp_path: Path) -> None:
    with start_sink(tmp_path / "sink.log") as sink, httpx.Client(base_url=sink.url) as client:
        assert client.get("/_count").text == "0"
        for n, path in enumerate(["/fan/plain/1/0", "/fan/plain/1/0", "/base/1/0"]):
            answer = client.post(path, content=b"{}", headers={"webhook-id": f"evt_{n}"})
            assert answer.status_code == 204

        assert client.get("/_count").text == "3"
        assert client.get("/_count", params={"prefix": "/fan/"}).text == "2"
        assert client.get("/_count", params={"prefix": "/lag/"}).text == "0"
        recorded = client.get("/_records").json()
        assert [path for path, *_ in recorded] == ["/fan/plain/1/0", "/fan/plain/1/0", "/base/1/0"]

        assert client.post("/_reset").status_code == 204
        assert client.get("/_count").text == "0"
