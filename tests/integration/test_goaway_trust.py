"""GOAWAY trust, learned per origin: against a server that still runs the streams above its
own GOAWAY's last_stream_id (the chaos fault modelling a Node.js http2 app that calls
``session.goaway(0, stream.id)``), h2guard duplicates at most what it moved before it saw the
first proof, then never again; with ``trust_goaway=False`` never at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

import h2guard
from h2guard.chaos import ChaosServer, serve
from h2guard.chaos.model import GoAway, Scenario, Trigger
from h2guard.errors import failure_of

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def buggy_server(*, keys: bool = False) -> AsyncIterator[ChaosServer]:
    fault = GoAway(mode="graceful", process_above=True,
                   when=Trigger(path="/orders", every_nth_stream=4))
    async with serve(Scenario(name="process-above", faults=(fault,)), h2c=True,
                     honour_idempotency_keys=keys) as server:
        yield server


async def _batch(client: httpx.AsyncClient, server: ChaosServer, tag: str,
                 n: int = 20) -> list[Any]:
    return list(await asyncio.gather(*(
        client.post(server.url + "/orders", content=b"{}",
                    headers={"x-request-id": f"{tag}-{i}"}) for i in range(n)),
        return_exceptions=True))


def _dups(server: ChaosServer, tag: str) -> int:
    return sum(1 for rid in server.ledger.duplicate_requests if rid.startswith(tag + "-"))


async def test_the_default_learns_after_the_first_violation(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="h2guard.client")
    transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True)
    async with buggy_server() as server, httpx.AsyncClient(transport=transport,
                                                           timeout=5) as client:
        first = await _batch(client, server, "a")
        for _ in range(50):  # the proof arrives on the drained connection's late responses
            if transport.goaway_trust.learned:
                break
            first += await _batch(client, server, f"w{_}", 4)
        assert server.url in transport.goaway_trust.learned
        assert any(e.name == "client.goaway_violation" for e in transport.events)
        assert "answered stream" in caplog.text and "maybe processed" in caplog.text, caplog.text
        later = [r for tag in ("b", "c", "d") for r in await _batch(client, server, tag)]
        assert all(_dups(server, t) == 0 for t in ("b", "c", "d")), \
            server.ledger.duplicate_requests
        # what is not moved any more fails instead, saying why
        errors = [r for r in later if isinstance(r, Exception)]
        assert errors and all(isinstance(e, httpx.TransportError) for e in errors)
        failure = failure_of(errors[0])
        assert failure is not None and failure.kind == "goaway_unprocessed"
        assert failure.processed == "maybe" and "processes them" in failure.explain()


async def test_trust_goaway_false_never_writes_twice() -> None:
    transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True, trust_goaway=False)
    async with buggy_server() as server, httpx.AsyncClient(transport=transport,
                                                           timeout=5) as client:
        for tag in ("a", "b", "c"):
            results = await _batch(client, server, tag)
            assert any(isinstance(r, Exception) for r in results)  # GOAWAYs did strike
        assert not server.ledger.duplicate_requests


async def test_keyed_posts_get_through_once_each_after_learning() -> None:
    # with Idempotency-Keys (and a server that honours them), the maybe-processed streams are
    # resent by the retry layer and answered from the key store: nothing lost, nothing twice
    policy = h2guard.RetryPolicy(idempotency_keys=True)
    async with buggy_server(keys=True) as server, h2guard.AsyncClient(
            http2_prior_knowledge=True, policy=policy, timeout=5) as client:
        for tag in ("a", "b", "c"):
            results = await _batch(client, server, tag)
            assert all(isinstance(r, httpx.Response) and r.status_code == 201
                       for r in results), [r for r in results if isinstance(r, Exception)]
        assert not server.ledger.duplicate_requests
        assert server.ledger.total == 60


def test_trust_goaway_takes_three_values() -> None:
    with pytest.raises(ValueError, match="trust_goaway"):
        h2guard.AsyncHTTPTransport(trust_goaway="sometimes")  # type: ignore[arg-type]
