"""The ``chaos_server`` fixture of the pytest plugin (entry point ``h2guard_chaos``)."""

from __future__ import annotations

import ssl

import httpx
import pytest

from h2guard.chaos import ChaosServer
from h2guard.chaos.model import Delay, RstStream, Scenario
from h2guard.chaos.pytest_plugin import ChaosServerFactory
from h2guard.chaos.scenario import ScenarioError

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.timeout(60)

_started: list[ChaosServer] = []


async def test_factory_starts_a_server_with_profile_and_extra_faults(
        chaos_server: ChaosServerFactory) -> None:
    server = await chaos_server(
        profile="nginx", time_scale=0.01, h2c=True, seed=7,
        faults=[{"kind": "rst_stream", "code": "REFUSED_STREAM",
                 "when": {"path": "/orders", "max_fires": 1}}])
    _started.append(server)
    assert server.scenario.name == "nginx"
    assert server.config.seed == 7
    assert server.config.time_scale == 0.01
    assert server.url.startswith("http://127.0.0.1:")
    assert isinstance(server.scenario.faults[-1], RstStream)

    async with httpx.AsyncClient(base_url=server.url, http1=False, http2=True) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/orders")
        resp = await client.post("/orders")  # max_fires = 1: the retry goes through
        assert resp.status_code == 201
    assert server.ledger.total == 1
    assert server.events.counts["chaos.fault"] == 1


async def test_servers_of_the_previous_test_were_stopped() -> None:
    if not _started:
        pytest.skip("needs the test above to have run first")
    server = _started[0]
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"{server.url}/echo")
    assert server.events.counts.get("chaos.server.stopped") == 1


async def test_several_servers_with_fault_objects_and_control(
        chaos_server: ChaosServerFactory) -> None:
    plain = await chaos_server(h2c=True)
    faulty = await chaos_server(Scenario(name="mine"), h2c=True, control_port=0,
                                faults=[Delay(duration=0.0), {"kind": "delay", "duration": 0}])
    assert plain.port != faulty.port
    assert plain.control is None
    assert faulty.scenario.name == "mine"
    assert len(faulty.faults.items()) == 2
    async with httpx.AsyncClient() as client:
        resp = await client.get(f"{faulty.control.url}/faults")
        assert [f["kind"] for f in resp.json()] == ["delay", "delay"]


async def test_tls_by_default(chaos_server: ChaosServerFactory) -> None:
    server = await chaos_server()
    assert server.url.startswith("https://")
    assert server.ca_file is not None
    verify = ssl.create_default_context(cafile=server.ca_file)
    async with httpx.AsyncClient(verify=verify, http2=True) as client:
        resp = await client.get(f"{server.url}/echo")
        assert resp.status_code == 200
        assert resp.http_version == "HTTP/2"


async def test_bad_fault_table_raises_scenario_error(chaos_server: ChaosServerFactory) -> None:
    with pytest.raises(ScenarioError, match=r"faults\[0\]\.code"):
        await chaos_server(h2c=True, faults=[{"kind": "rst_stream", "code": "NOPE"}])
    with pytest.raises(TypeError, match="colour"):
        await chaos_server(h2c=True, colour="red")  # type: ignore[call-arg]


@pytest.mark.chaos(profile="aws-alb", time_scale=0.01, h2c=True)
async def test_marker_sets_defaults(chaos_server: ChaosServerFactory) -> None:
    server = await chaos_server()
    assert server.scenario.name == "aws-alb"
    assert server.url.startswith("http://")
    other = await chaos_server(profile="envoy", time_scale=1.0)  # call arguments win
    assert other.scenario.name == "envoy"
    assert other.config.time_scale == 1.0


def test_plugin_in_a_fresh_pytest_run(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        """
        import httpx
        import pytest

        pytestmark = pytest.mark.chaos(h2c=True, time_scale=0.01)

        async def test_reset(chaos_server):
            server = await chaos_server(faults=[{"kind": "rst_stream", "code": "CANCEL"}])
            async with httpx.AsyncClient(http1=False, http2=True) as client:
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.get(server.url + "/echo")
            assert server.events.counts["chaos.fault"] == 1

        @pytest.mark.chaos(nonsense=1)
        async def test_bad_marker(chaos_server):
            pass
        """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*unknown chaos marker option(s): nonsense*"])
