"""The suite-wide guarantee (conftest ``simulators``): no test sees reelhook poll a provider."""

from __future__ import annotations

import httpx
import pytest

from service.sim import Scenario, Simulator, create_sim_app
from tests.conftest import SettingsFactory, assert_never_polled
from tests.support import api_client

pytestmark = pytest.mark.anyio


async def test_the_embedded_simulator_is_watched(
    settings_factory: SettingsFactory, simulators: list[Simulator]
) -> None:
    assert simulators == []
    async with api_client(settings_factory()) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert len(simulators) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/trinetra/v1/jobs/job_x",
        "/apiframe/v2/jobs/00000000-0000-4000-8000-000000000000",
        "/segmind/v2/requests/r1/status",
        "/segmind/v1/requests/r1",
    ],
)
async def test_a_status_request_is_caught(simulators: list[Simulator], path: str) -> None:
    sim = Simulator(Scenario())
    app = create_sim_app(sim)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s") as http:
        await http.get(path)
    with pytest.raises(AssertionError, match="polled a provider's status endpoint"):
        assert_never_polled(simulators)
    # This simulator was polled on purpose; the suite-wide check must not fail the test for it.
    simulators.remove(sim)
    assert_never_polled(simulators)
