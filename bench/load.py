"""The load generator, run as its own process: ``python -m bench.load '<spec json>'``.

Closed loop (``concurrency`` workers, each sending as soon as its last answer arrived) or open
loop (one request every ``1/rate`` s whatever the answers; latency counted from the scheduled send
time, so a slow server cannot hide its queueing). Writes one JSON result to the spec's
``result_path`` (a file: a pipe cut large results under ``PYTHONUNBUFFERED=1``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from bench.seed import job_id, provider_job_id
from service.core.tokens import Tokens


def callback_body(index: int, video_url: str) -> bytes:
    """A Trinetra terminal job document of realistic size (~0.9 kB)."""
    return json.dumps(
        {
            "id": provider_job_id(index),
            "model": "kling-v3",
            "status": "succeeded",
            "input": {
                "prompt": f"benchmark clip {index}: a paper boat drifting down a rainy street, "
                "cinematic lighting, shallow depth of field, slow dolly forward",
                "duration": 5,
                "aspect_ratio": "16:9",
                "resolution": "720p",
                "mode": "t2v",
            },
            "output": {"outputs": [{"url": video_url, "type": "video"}]},
            "credits_charged": 50,
            "external_task_id": job_id(index),
            "created_at": "2026-11-21T10:00:00Z",
            "started_at": "2026-11-21T10:00:02Z",
            "completed_at": "2026-11-21T10:01:40Z",
            "metadata": {"pipeline": "bench", "attempt": 1, "region": "local"},
        }
    ).encode()


@dataclass
class Result:
    sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    retries: int = 0
    acked: int = 0
    send_times: list[tuple[str, float]] = field(default_factory=list)


def _requests(spec: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(url, body, job id) per request, built before the clock starts."""
    count = int(spec["count"])
    if spec["target"] == "sink":
        paths = spec["paths"]
        body = b"x" * int(spec.get("body_bytes", 1000))
        return [(spec["base_url"] + paths[i % len(paths)], body, "") for i in range(count)]
    tokens = Tokens([spec["secret_key"]])
    first = int(spec["first"])
    out = []
    for index in range(first, first + count):
        token = tokens.callback(job_id(index), "trinetra")
        url = f"{spec['base_url']}/v1/callbacks/trinetra/{token}"
        out.append((url, callback_body(index, spec["video_url"]), job_id(index)))
    return out


async def _send(
    session: aiohttp.ClientSession,
    request: tuple[str, bytes, str],
    scheduled: float,
    result: Result,
    retry_503: bool,
) -> None:
    url, body, job = request
    headers = {"content-type": "application/json"}
    if job:
        result.send_times.append((job, scheduled))
    first = True
    while True:
        try:
            async with session.post(url, data=body, headers=headers) as response:
                await response.read()
                status = str(response.status)
                retry_after = response.headers.get("retry-after")
        except aiohttp.ClientError as exc:
            status, retry_after = type(exc).__name__, None
        if first:
            result.latencies.append((time.time() - scheduled) * 1000)
            result.statuses[status] += 1
            first = False
        if status.startswith("2"):
            result.acked += 1
            return
        if not (retry_503 and status == "503"):
            return
        # As a provider would: come back after Retry-After.
        result.retries += 1
        await asyncio.sleep(float(retry_after or 1))


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    requests = _requests(spec)
    result = Result(sent=len(requests))
    cpu_before = time.process_time()
    retry_503 = bool(spec.get("retry_503"))
    limit = int(spec.get("connections", spec.get("concurrency", 100)))
    connector = aiohttp.TCPConnector(limit=limit)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.time()
        async with asyncio.TaskGroup() as tasks:
            if spec["mode"] == "closed":
                queue = iter(requests)

                async def worker() -> None:
                    for request in queue:
                        await _send(session, request, time.time(), result, retry_503)

                for _ in range(int(spec["concurrency"])):
                    tasks.create_task(worker())
            else:
                interval = 1.0 / float(spec["rate"])
                for i, request in enumerate(requests):
                    scheduled = started + i * interval
                    delay = scheduled - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.create_task(_send(session, request, scheduled, result, retry_503))
        elapsed = time.time() - started
    cpu = time.process_time() - cpu_before
    return {
        # The generator's own CPU while sending: when it nears a core, it caps the figure.
        "cpu_s": cpu,
        "sent": result.sent,
        "acked": result.acked,
        "statuses": dict(result.statuses),
        "retries": result.retries,
        "elapsed_s": elapsed,
        "started_at": started,
        "rate_per_s": result.sent / elapsed if elapsed else 0.0,
        "latency_ms": percentiles(result.latencies),
        "send_times": result.send_times if spec.get("record_send_times") else [],
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": ordered[-1]}


def main() -> None:
    spec = json.loads(sys.argv[1])
    result = uvloop.run(run(spec))
    Path(spec["result_path"]).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
