"""The development simulator is safe by default (issue 18): its control endpoints need the admin
key, its callbacks go only to reelhook's own callback routes, and a bind beyond loopback without
REELHOOK_ENV=production does not mount it unless REELHOOK_SIM_PUBLIC=true asks for it."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from service.app.factory import SIMULATED_API_KEY
from tests.conftest import SettingsFactory, settings_for
from tests.helpers.keys import KEY_B, add_member_keys, as_key
from tests.servers import Sink, loopback_socket, run_server, url_of
from tests.support import assert_error, served

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/sim/_sim/stats"), ("GET", "/sim/_sim/scenario"), ("PUT", "/sim/_sim/scenario")],
)
async def test_the_simulators_control_needs_the_admin_key(
    settings_factory: SettingsFactory, method: str, path: str
) -> None:
    with loopback_socket() as sock:
        settings = settings_factory(PUBLIC_URL=url_of(sock))
        await add_member_keys(settings, KEY_B)
        async with served(settings, sock) as http:
            before = (await http.get("/sim/_sim/scenario")).json()
            anonymous = await http.request(
                method, path, json={"outcome": "fail"}, headers={"X-API-Key": ""}
            )
            member = await http.request(
                method, path, json={"outcome": "fail"}, headers=as_key(KEY_B)
            )
            after = (await http.get("/sim/_sim/scenario")).json()
            admin = await http.get(path)
    assert_error(anonymous, 401, "unauthorized")
    assert_error(member, 403, "forbidden")
    assert after == before  # nothing changed how anyone's jobs end
    assert admin.status_code == 200, admin.text


async def test_the_simulator_relays_no_callback_outside_reelhook(
    settings_factory: SettingsFactory,
) -> None:
    """An anonymous submit straight to the simulator naming someone else's URL as its
    callback_url gets no request sent there."""
    sink = Sink()
    with loopback_socket() as sock:
        settings = settings_factory(PUBLIC_URL=url_of(sock), SIM_DELAY="0.05")
        async with run_server(sink.app()) as sink_url, served(settings, sock) as http:
            submitted = await http.post(
                "/sim/trinetra/v1/video/kling-v3",
                json={"prompt": "a relay", "callback_url": f"{sink_url}/victim"},
                # The simulated provider's own key is no secret (service/app/factory.py).
                headers={"X-API-Key": SIMULATED_API_KEY.format(name="trinetra")},
            )
            assert submitted.status_code == 202, submitted.text
            with anyio.fail_after(10):
                while True:
                    stats = (await http.get("/sim/_sim/stats")).json()
                    if stats["callbacks"]:
                        break
                    await anyio.sleep(0.05)
    assert sink.on("/victim") == []
    assert all(entry["status"] is None for entry in stats["callbacks"])


def test_a_bind_beyond_loopback_mounts_no_simulator_unless_asked(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert settings_for(data, HOST="0.0.0.0").simulated_providers == []
    assert settings_for(data, HOST="192.0.2.7").simulated_providers == []
    everyone = settings_for(data, HOST="0.0.0.0", SIM_PUBLIC="true").simulated_providers
    assert sorted(everyone) == ["apiframe", "segmind", "trinetra"]
    for host in ("127.0.0.1", "::1", "localhost"):
        assert sorted(settings_for(data, HOST=host).simulated_providers) == [
            "apiframe",
            "segmind",
            "trinetra",
        ]


async def test_without_the_simulator_a_keyless_provider_is_unavailable(tmp_path: Path) -> None:
    settings = settings_for(tmp_path / "data", HOST="0.0.0.0")
    with loopback_socket() as sock:
        async with served(settings, sock) as http:
            stats = await http.get("/sim/_sim/stats")
    assert stats.status_code == 404
