"""A minimal subscriber for the benchmarks: answers 204 and records what arrived and when.

Plain ASGI under uvicorn (httptools, uvloop) so the sink costs as little CPU as possible. Paths
under ``/lag/`` also record the job id of the event, for end-to-end lag; paths under ``/slow/``
answer after a second and are not recorded. ``/_records`` answers what was recorded, ``/_count``
how many (``?prefix=``: under a path), ``/_reset`` forgets them.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import parse_qs

from bench.bare import serve

Scope = dict[str, Any]


class Sink:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, float]] = []

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path: str = scope["path"]
        if path == "/_records":
            await _reply(send, 200, json.dumps(self.records).encode())
            return
        if path == "/_count":
            # How many arrived under ``?prefix=``: what a bench polls while a drain runs, where
            # /_records (all of them as JSON, ~30 ms at 20,000) would take CPU from it.
            prefix = parse_qs(scope["query_string"].decode()).get("prefix", ["/"])[0]
            count = sum(1 for record in self.records if record[0].startswith(prefix))
            await _reply(send, 200, str(count).encode())
            return
        if path == "/_reset":
            self.records.clear()
            await _reply(send, 204, b"")
            return
        if path.startswith("/slow/"):
            # A subscriber that is slow but succeeding: every answer takes a second.
            await asyncio.sleep(1)
            await _reply(send, 204, b"")
            return
        received = time.time()
        event_id = ""
        for name, value in scope["headers"]:
            if name == b"webhook-id":
                event_id = value.decode()
        job_id = ""
        if path.startswith("/lag/"):
            job_id = json.loads(body)["data"]["id"]
        self.records.append((path, event_id, job_id, received))
        await _reply(send, 204, b"")


async def _reply(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json")] if body else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    serve(Sink(), int(sys.argv[1]), lifespan="off")


if __name__ == "__main__":
    main()
