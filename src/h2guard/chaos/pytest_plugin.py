"""pytest plugin: a chaos server per test, started by a factory fixture.

Installed with h2guard (entry point ``pytest11: h2guard_chaos``); async tests need
``pytest-asyncio`` (``asyncio_mode = "auto"``, or mark the test ``@pytest.mark.asyncio``).
The plugin imports nothing but pytest until the fixture is used, so it costs nothing to a
project that only uses h2guard's client. TLS servers with a generated CA (the default) need
the chaos extra (``pip install 'h2guard[chaos]'``, for trustme); without it a test that asks
for one fails with that message, while ``h2c=True`` servers work on the core install.
``chaos_server`` is a *factory*: call it as many times as a test needs servers; every server
it started is stopped when the test ends::

    import httpx

    async def test_client_survives_refused_streams(chaos_server):
        server = await chaos_server(
            profile="nginx",             # or scenario=Scenario(...) / "path/to/scenario.toml"
            time_scale=0.01,             # a 75 s idle timeout becomes 0.75 s
            h2c=True,                    # cleartext HTTP/2 (default: TLS, trust server.ca_file)
            faults=[{"kind": "rst_stream", "code": "REFUSED_STREAM",
                     "when": {"path": "/orders", "max_fires": 1}}],
            seed=1,
            control_port=0,              # also start the HTTP control API (server.control.url)
        )
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            ...
        assert server.ledger.total == 1
        assert server.events.counts["chaos.fault"] == 1

``faults`` are added after the scenario's, as fault tables (dicts with the keys of a TOML
``[[faults]]`` entry, validated like one: a bad one raises
:class:`~h2guard.chaos.scenario.ScenarioError`) or :mod:`h2guard.chaos.model` records.

The ``chaos`` marker sets defaults for every call of the factory in a test (a call's own
arguments win), which suits a module-level ``pytestmark``::

    pytestmark = pytest.mark.chaos(profile="aws-alb", time_scale=0.01, h2c=True)

    async def test_idle_timeout(chaos_server):
        server = await chaos_server()
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pytest

if TYPE_CHECKING:
    from h2guard.chaos.model import Fault, Scenario
    from h2guard.chaos.server import ChaosServer

__all__ = ["ChaosServerFactory", "chaos_server"]


class ChaosServerFactory(Protocol):
    """The type of the ``chaos_server`` fixture."""

    async def __call__(
        self,
        scenario: Scenario | str | None = ...,
        *,
        profile: str | None = ...,
        faults: Iterable[Fault | Mapping[str, object]] = ...,
        host: str = ...,
        port: int = ...,
        h2c: bool = ...,
        time_scale: float = ...,
        seed: int | None = ...,
        upstream: str | None = ...,
        control_port: int | None = ...,
        control_host: str = ...,
        certfile: str | None = ...,
        keyfile: str | None = ...,
    ) -> ChaosServer: ...


_OPTIONS = frozenset({"scenario", "profile", "faults", "host", "port", "h2c", "time_scale",
                      "seed", "upstream", "control_port", "control_host", "certfile",
                      "keyfile"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos(**options): default options for the chaos_server fixture (profile=, "
        "time_scale=, h2c=, faults=, seed=, control_port=, ...)")


def _build_scenario(scenario: Scenario | str | None, profile: str | None,
                    faults: Iterable[Fault | Mapping[str, object]]) -> Scenario:
    from h2guard.chaos.model import Scenario
    from h2guard.chaos.scenario import parse_fault, resolve

    if isinstance(scenario, Scenario):
        if profile is not None:
            raise ValueError("give a profile or a scenario, not both")
        base = scenario
    else:
        base = resolve(profile, scenario)
    extra: list[Fault] = []
    for i, fault in enumerate(faults):
        if isinstance(fault, Mapping):
            extra.append(parse_fault(fault, where=f"faults[{i}]"))
        else:
            extra.append(fault)
    if not extra:
        return base
    return dataclasses.replace(base, faults=(*base.faults, *extra))


async def _chaos_server(request: pytest.FixtureRequest) -> AsyncIterator[ChaosServerFactory]:
    from h2guard.chaos.server import ChaosServer, ServerConfig

    defaults: dict[str, Any] = {}
    for marker in reversed(list(request.node.iter_markers("chaos"))):  # closest wins
        if marker.args:
            raise pytest.UsageError("the chaos marker takes keyword arguments only")
        defaults.update(marker.kwargs)
    unknown = set(defaults) - _OPTIONS
    if unknown:
        raise pytest.UsageError(f"unknown chaos marker option(s): {', '.join(sorted(unknown))}")
    started: list[ChaosServer] = []

    async def factory(scenario: Scenario | str | None = None, **options: Any) -> ChaosServer:
        bad = set(options) - _OPTIONS
        if bad:
            raise TypeError(f"chaos_server() got unexpected option(s): {', '.join(sorted(bad))}")
        opts = {**defaults, **options}
        if scenario is None:
            scenario = opts.get("scenario")
        built = _build_scenario(scenario, opts.get("profile"), opts.get("faults", ()))
        config = ServerConfig(
            host=opts.get("host", "127.0.0.1"),
            port=opts.get("port", 0),
            h2c=opts.get("h2c", False),
            time_scale=opts.get("time_scale", 1.0),
            seed=opts.get("seed"),
            upstream=opts.get("upstream"),
            control_port=opts.get("control_port"),
            control_host=opts.get("control_host", "127.0.0.1"),
            certfile=opts.get("certfile"),
            keyfile=opts.get("keyfile"),
        )
        server = ChaosServer(built, config=config)
        missing: str | None = None
        try:
            await server.start()
        except ModuleNotFoundError as exc:
            if exc.name != "trustme":
                raise
            missing = str(exc)
        if missing is not None:  # outside the except: the report is that one line
            pytest.fail(f"chaos_server: {missing}", pytrace=False)
        started.append(server)
        return server

    try:
        yield factory
    finally:
        errors: list[BaseException] = []
        for server in reversed(started):
            try:
                await server.stop()
            except Exception as exc:  # stop the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


def _register() -> Any:
    """``pytest_asyncio.fixture`` when pytest-asyncio is installed (so the fixture works in
    its strict mode too), else a plain fixture (anyio's pytest plugin runs those)."""
    try:
        import pytest_asyncio
    except ImportError:
        return pytest.fixture(name="chaos_server")(_chaos_server)
    return pytest_asyncio.fixture(name="chaos_server")(_chaos_server)


chaos_server = _register()
"""The fixture: ``server = await chaos_server(profile=..., faults=[...], ...)``."""
