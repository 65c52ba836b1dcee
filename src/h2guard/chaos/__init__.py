"""h2guard.chaos: an HTTP/2 server and reverse proxy that injects production failures on purpose.

``async with h2guard.chaos.serve(profile="nginx", time_scale=0.01) as server:`` gives a running
server with ``server.url``, ``server.ca_file``, ``server.events`` and ``server.ledger``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from h2guard.chaos.model import Scenario
from h2guard.chaos.server import ChaosServer, ServerConfig

__all__ = ["ChaosServer", "Scenario", "ServerConfig", "serve"]


@contextlib.asynccontextmanager
async def serve(
    scenario: Scenario | str | None = None,
    *,
    profile: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    h2c: bool = False,
    time_scale: float = 1.0,
    seed: int | None = None,
    upstream: str | None = None,
    control_port: int | None = None,
    control_token: str | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    honour_idempotency_keys: bool = False,
) -> AsyncIterator[ChaosServer]:
    """Run a chaos server for the duration of the block.

    ``scenario`` is a :class:`Scenario` or the path of a TOML file; ``profile`` names a
    middlebox profile instead (``h2guard chaos profiles`` lists them). TLS with a fresh
    self-signed CA is the default (trust ``server.ca_file``); ``h2c=True`` serves cleartext
    HTTP/2 with prior knowledge (and HTTP/1.1 on the same port). ``honour_idempotency_keys``
    makes ``POST /orders`` replay the first response for a key it has seen. ``control_token``
    makes the control API (``control_port``) require ``Authorization: Bearer <token>``.
    """
    if isinstance(scenario, str) or profile is not None:
        from h2guard.chaos.scenario import resolve

        scenario = resolve(profile, scenario if isinstance(scenario, str) else None)
    config = ServerConfig(host=host, port=port, h2c=h2c, time_scale=time_scale, seed=seed,
                          upstream=upstream, control_port=control_port,
                          control_token=control_token, certfile=certfile,
                          keyfile=keyfile, honour_idempotency_keys=honour_idempotency_keys)
    server = ChaosServer(scenario, config=config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
