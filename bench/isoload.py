"""Helper processes of the isolation scenarios (``python -m bench isolation``), each its own
process so its CPU is not reelhook's nor the driver's: ``python -m bench.isoload <role> <arg>``.

- ``hang <port>``: a subscriber that accepts every connection and never answers.
- ``files <port>``: serves ``GET /files/<name>`` (a small video) and counts the requests
  (``GET /_count``), for mirror downloads.
- ``streams <spec>``: opens ``count`` SSE streams and holds them until SIGTERM; writes a
  ``ready`` result once all are open and a final one when told to stop.
- ``reads <spec>``: API reads at a fixed rate (open loop; latency from the scheduled time).
- ``uploads <spec>``: ``count`` concurrent ~1 MiB callback uploads over raw sockets, each body
  sent with its ``Content-Length``; records each answer's status and ``Retry-After``.

Specs are JSON; results are written to the spec's ``result_path``. Loopback only; every loop is
bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn
import uvloop

from bench.load import callback_body, percentiles
from bench.seed import job_id
from service.core.tokens import Tokens

VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"\x01" * (64 * 1024)


# -- a subscriber that never answers ------------------------------------------------------------


async def hang(port: int) -> None:
    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(65536):
                pass  # read everything, answer nothing, until the client gives up
        except OSError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(held, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


# -- a file server for mirror downloads ---------------------------------------------------------


class Files:
    def __init__(self) -> None:
        self.count = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/_count":
            body = json.dumps({"count": self.count}).encode()
            kind = b"application/json"
        else:
            self.count += 1
            body, kind = VIDEO, b"video/mp4"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


# -- idle SSE streams ---------------------------------------------------------------------------


async def streams(spec: dict[str, Any]) -> dict[str, Any]:
    count = int(spec["count"])
    out = Path(spec["result_path"])
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    statuses: Counter[str] = Counter()
    state = {"open": 0, "bytes": 0, "messages": 0, "ended": 0}
    opened = asyncio.Event()
    if not count:
        opened.set()  # a baseline's process: it runs, holding no stream

    async def one(session: aiohttp.ClientSession) -> None:
        try:
            async with session.get(
                f"{spec['base_url']}/v1/events/stream", headers={"X-API-Key": spec["key"]}
            ) as response:
                statuses[str(response.status)] += 1
                if response.status != 200:
                    return
                state["open"] += 1
                if state["open"] == count:
                    opened.set()
                try:
                    async for chunk in response.content.iter_any():
                        state["bytes"] += len(chunk)
                        state["messages"] += chunk.count(b"\n\n")
                finally:
                    state["open"] -= 1
                    state["ended"] += 1
        except aiohttp.ClientError as exc:
            statuses[type(exc).__name__] += 1
        finally:
            if sum(statuses.values()) == count and state["open"] < count:
                opened.set()  # every answer is in and not all are open: report that

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), timeout=float(spec.get("open_within", 120)))
        out.with_suffix(".ready").write_text(
            json.dumps({"open": state["open"], "statuses": dict(statuses)})
        )
        # Held until told to stop (bounded: the driver always stops it, and so does this).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=float(spec.get("hold_at_most", 1800)))
        still_open, ended_early = state["open"], state["ended"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "still_open": still_open,
        "ended_early": ended_early,
        "statuses": dict(statuses),
        "bytes": state["bytes"],
        "messages": state["messages"],
    }


# -- API reads at a fixed rate ------------------------------------------------------------------


async def reads(spec: dict[str, Any]) -> dict[str, Any]:
    rate, seconds = float(spec["rate"]), float(spec["seconds"])
    paths: list[str] = spec["paths"]
    total = int(rate * seconds)
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    headers = {"X-API-Key": spec["key"]}

    async def one(session: aiohttp.ClientSession, path: str, scheduled: float) -> None:
        try:
            async with session.get(spec["base_url"] + path, headers=headers) as response:
                await response.read()
                statuses[str(response.status)] += 1
        except aiohttp.ClientError as exc:
            statuses[type(exc).__name__] += 1
        latencies.append((time.time() - scheduled) * 1000)

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=50), timeout=timeout
    ) as session:
        started = time.time()
        async with asyncio.TaskGroup() as tasks:
            for i in range(total):
                scheduled = started + i / rate
                delay = scheduled - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.create_task(one(session, paths[i % len(paths)], scheduled))
    return {"sent": total, "statuses": dict(statuses), "latency_ms": percentiles(latencies)}


# -- concurrent large callback uploads ----------------------------------------------------------


def large_body(index: int, video_url: str, size: int) -> tuple[bytes, bytes, int]:
    """(prefix, suffix, padding length) of a ``size``-byte Trinetra job document for job
    ``index``: the padding, in its metadata, is shared by every upload (not copied per body)."""
    document = json.loads(callback_body(index, video_url))
    document["metadata"]["pad"] = "@@PAD@@"
    text = json.dumps(document).encode()
    prefix, suffix = text.split(b"@@PAD@@")
    return prefix, suffix, size - len(prefix) - len(suffix)


async def uploads(spec: dict[str, Any]) -> dict[str, Any]:
    first, count, size = int(spec["first"]), int(spec["count"]), int(spec["body_bytes"])
    port = int(spec["port"])
    tokens = Tokens([spec["secret_key"]])
    pad = memoryview(b"x" * size)
    results: dict[int, tuple[str, str | None]] = {}
    failed_after: list[float] = []  # seconds from the start to each connection error
    go = asyncio.Event()
    started = time.time()

    async def one(index: int) -> None:
        prefix, suffix, padding = large_body(index, spec["video_url"], size)
        token = tokens.callback(job_id(index), "trinetra")
        head = (
            f"POST /v1/callbacks/trinetra/{token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            # Kept alive, as providers' HTTP clients do: a refused upload is answered before its
            # body is read, and the server reads the rest past it. (With `Connection: close` the
            # server closes with the body unread, and the RST can beat its 503 to the client.)
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        ).encode()
        await go.wait()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            # The request's head in the same step as the connection, as a provider's client sends
            # it: written from the sending task, it could wait behind the 1,999 others' bodies for
            # longer than reelhook's header timeout (REELHOOK_HEADER_TIMEOUT, 10 s) when this
            # process was starved, and reelhook rightly closed a connection that had sent nothing.
            writer.write(head + prefix)

            async def send_body() -> None:
                assert writer is not None
                step = 65536
                for offset in range(0, padding, step):
                    writer.write(pad[offset : min(padding, offset + step)])
                    await writer.drain()
                writer.write(suffix)
                await writer.drain()

            sending = asyncio.create_task(send_body())
            try:
                status_line = await reader.readline()
                headers = await reader.readuntil(b"\r\n\r\n")
            finally:
                if not sending.done():
                    sending.cancel()  # answered before the body was read: stop sending it
                await asyncio.gather(sending, return_exceptions=True)
            status = status_line.split()[1].decode() if status_line.split() else "no answer"
            retry_after = None
            for line in headers.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"retry-after":
                    retry_after = value.strip().decode()
            results[index] = (status, retry_after)
        except (OSError, asyncio.IncompleteReadError) as exc:
            results[index] = (type(exc).__name__, None)
            failed_after.append(time.time() - started)
        finally:
            if writer is not None:
                writer.close()

    tasks = [asyncio.create_task(one(first + i)) for i in range(count)]
    await asyncio.sleep(0)
    started = time.time()
    go.set()
    try:
        await asyncio.wait_for(
            asyncio.gather(*tasks, return_exceptions=True), float(spec.get("within", 300))
        )
    except TimeoutError:
        for task in tasks:
            task.cancel()
    statuses = Counter(status for status, _ in results.values())
    refused = [i for i, (status, _) in results.items() if status == "503"]
    return {
        "sent": count,
        "elapsed_s": time.time() - started,
        "statuses": dict(statuses),
        "unanswered": count - len(results),
        "connection_errors_after_s": percentiles(failed_after),
        "acked": sorted(i for i, (status, _) in results.items() if status.startswith("2")),
        "refused_503": len(refused),
        "refused_503_with_retry_after": sum(
            1 for i in refused if (results[i][1] or "").isdigit() and int(results[i][1] or 0) >= 1
        ),
    }


def main() -> None:
    role, arg = sys.argv[1], sys.argv[2]
    if role == "hang":
        uvloop.run(hang(int(arg)))
        return
    if role == "files":
        uvicorn.run(
            Files(),
            host="127.0.0.1",
            port=int(arg),
            loop="uvloop",
            http="httptools",
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        return
    spec = json.loads(arg)
    run = {"streams": streams, "reads": reads, "uploads": uploads}[role]
    result = uvloop.run(run(spec))
    Path(spec["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
