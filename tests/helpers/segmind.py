"""Segmind's held requests under test: submitting, finishing and inspecting a Segmind job."""

from __future__ import annotations

from importlib import resources
from typing import Any

import httpx

from tests.support import wait_for_job

SAMPLE_MP4 = resources.files("service.sim").joinpath("assets/sample.mp4").read_bytes()


async def submit(http: httpx.AsyncClient, **job_input: Any) -> dict[str, Any]:
    response = await http.post(
        "/v1/jobs",
        json={"model": SEGMIND, "input": {"prompt": "A 1920s street carnival", **job_input}},
    )
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    assert job["model"] == SEGMIND
    assert job["provider"] == "segmind"
    return job


async def sim_stats(http: httpx.AsyncClient) -> dict[str, Any]:
    response = await http.get("/sim/_sim/stats")
    assert response.status_code == 200, response.text
    stats: dict[str, Any] = response.json()
    return stats


async def job_events(http: httpx.AsyncClient, job_id: str) -> list[str]:
    response = await http.get("/v1/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [e["type"] for e in response.json()["data"] if e["data"]["id"] == job_id]


async def finished_segmind_job(
    http: httpx.AsyncClient, **job_input: Any
) -> tuple[dict[str, Any], str]:
    """Run one Segmind job to success; return the job and its /v1/files link."""
    created = await submit(http, **job_input)
    job = await wait_for_job(http, created["id"])
    assert job["status"] == "succeeded", job
    assert len(job["outputs"]) == 1, job
    link: str = job["outputs"][0]["url"]
    return job, link


SEGMIND = "segmind/kling-2.5-turbo"
