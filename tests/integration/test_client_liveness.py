"""A response that never comes: the client PINGs a silent connection and gives up in bounded
time, instead of hanging until some far-away read timeout."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import IdleTimeout, Scenario
from h2guard.errors import failure_of


async def test_black_hole_while_waiting_is_abandoned_in_bounded_time() -> None:
    # the server stops answering anything 0.3 s into a 5 s response: an AWS NLB forgetting
    # the flow mid-request
    scenario = Scenario(faults=(IdleTimeout(after=0.3, action="blackhole",
                                            only_without_streams=False),))
    transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True, ping_interval=0.2,
                                           ping_timeout=0.3)
    async with serve(scenario, h2c=True) as server, \
            httpx.AsyncClient(transport=transport, timeout=30.0) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(f"{server.url}/delay/5000")
        took = time.monotonic() - started
        failure = failure_of(caught.value)
        assert failure is not None
        assert failure.kind == "ping_timeout" and failure.processed == "maybe"
        # silence starts at ~0.3 s; a PING goes out within ping_interval and is given up on
        # ping_timeout later: well before the 5 s response or the 30 s read timeout
        assert 0.4 <= took < 2.0, took
        assert transport.events.counts.get("client.ping_timeout") == 1
        # the next request opens a fresh connection and works
        fresh = await client.get(f"{server.url}/status/204")
        assert fresh.status_code == 204


async def test_read_timeout_without_response_headers() -> None:
    transport = h2guard.AsyncHTTPTransport(http2_prior_knowledge=True)
    async with serve(h2c=True) as server, httpx.AsyncClient(transport=transport) as client:
        started = time.monotonic()
        with pytest.raises(httpx.ReadTimeout) as caught:
            await client.get(f"{server.url}/delay/3000", timeout=httpx.Timeout(5.0, read=0.3))
        assert 0.3 <= time.monotonic() - started < 1.5
        failure = failure_of(caught.value)
        assert failure is not None and failure.kind == "timeout"
        assert failure.processed == "maybe"
        # the stream was reset (CANCEL), the connection still serves
        assert (await client.get(f"{server.url}/status/204")).status_code == 204
        await asyncio.sleep(0.05)
        resets = [e for e in server.events if e.name == "chaos.stream.reset_by_client"]
        assert resets and resets[0].data["code"] == "CANCEL"
