"""h2load against the chaos server: load without faults, and a stream limit it overruns.

h2load opens ``-m`` streams per connection at once, before it has read the server's SETTINGS,
exactly as the Node and Java clients in docs/facts.md §7 do; with a limit of 4 and ``-m 10`` the
server refuses the excess with REFUSED_STREAM, and h2load (which never retries) counts them as
failed. The server must stay healthy throughout.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from h2guard.chaos import serve
from h2guard.chaos.model import MaxConcurrentStreams, Scenario
from h2guard.chaos.server import ChaosServer

pytestmark = pytest.mark.peers

REQUESTS, CLIENTS, STREAMS = 2000, 10, 10
LIMIT = 4

_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout")
_STATUS = re.compile(r"status codes: (?P<s2xx>\d+) 2xx, (?P<s3xx>\d+) 3xx, (?P<s4xx>\d+) 4xx, "
                     r"(?P<s5xx>\d+) 5xx")
_PROTOCOL = re.compile(r"Application protocol: (\S+)")


def parse_h2load(output: str) -> dict[str, Any]:
    """The counters of h2load's summary ("requests: ..." and "status codes: ...")."""
    requests = _REQUESTS.search(output)
    status = _STATUS.search(output)
    protocol = _PROTOCOL.search(output)
    assert requests and status and protocol, f"no h2load summary in:\n{output}"
    counts: dict[str, Any] = {k: int(v) for k, v in requests.groupdict().items()}
    counts.update({k: int(v) for k, v in status.groupdict().items()})
    counts["protocol"] = protocol.group(1)
    return counts


async def h2load(peer: Any, server: ChaosServer, *extra: str) -> dict[str, Any]:
    result = await peer.run(["h2load", "-n", str(REQUESTS), "-c", str(CLIENTS),
                             "-m", str(STREAMS), "-T", "10", "-N", "10", *extra,
                             server.url + "/echo"], timeout=25)
    assert result.returncode == 0, result.describe()
    counts = parse_h2load(result.stdout)
    counts["output"] = result.stdout
    await peer.settle(server)
    return counts


async def one_more_request(peer: Any, server: ChaosServer) -> None:
    """After the load: a fresh connection is served normally."""
    result = await peer.run(["h2load", "-n", "5", "-c", "1", "-m", "1",
                             server.url + "/echo"], timeout=10)
    counts = parse_h2load(result.stdout)
    assert (counts["succeeded"], counts["failed"]) == (5, 0), result.describe()
    await peer.settle(server)


@pytest.fixture(params=["h2c", "tls"])
async def plain(request: pytest.FixtureRequest, peer: Any) -> AsyncIterator[ChaosServer]:
    peer.need("h2load")
    async with serve(Scenario(), h2c=request.param == "h2c") as srv:
        yield srv


@pytest.fixture(params=["h2c", "tls"])
async def limited(request: pytest.FixtureRequest, peer: Any) -> AsyncIterator[ChaosServer]:
    peer.need("h2load")
    scenario = Scenario(name="limit-4", faults=(MaxConcurrentStreams(limit=LIMIT),))
    async with serve(scenario, h2c=request.param == "h2c") as srv:
        yield srv


async def test_load_without_faults_all_succeed(peer: Any, plain: ChaosServer) -> None:
    counts = await h2load(peer, plain)
    assert counts["protocol"] == ("h2c" if plain.ca_file is None else "h2")
    assert (counts["total"], counts["done"], counts["succeeded"]) == (REQUESTS,) * 3
    assert (counts["failed"], counts["errored"], counts["timeout"]) == (0, 0, 0)
    assert counts["s2xx"] == REQUESTS
    assert plain.fault_counts == {}
    assert plain.events.counts["chaos.connection.opened"] == CLIENTS
    assert plain.events.counts.get("chaos.protocol_error", 0) == 0


async def test_stream_limit_refuses_the_excess(peer: Any, limited: ChaosServer,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    counts = await h2load(peer, limited)
    refused = limited.fault_counts.get(("max_concurrent_streams", "REFUSED_STREAM"), 0)
    events = peer.fault_events(limited, kind="max_concurrent_streams", code="REFUSED_STREAM")
    with capsys.disabled():
        print(f"\nh2load -m {STREAMS} against a limit of {LIMIT} ({counts['protocol']}): "
              f"{counts['succeeded']} succeeded, {counts['failed']} failed, "
              f"{refused} refused")
    # Every request h2load counts as failed is one the server refused, and nothing else failed.
    assert counts["done"] == REQUESTS
    assert counts["failed"] == counts["errored"] == refused == len(events)
    assert counts["succeeded"] == counts["s2xx"] == REQUESTS - refused
    assert counts["timeout"] == 0
    # Refusals happen only in the burst h2load sends before it reads our SETTINGS: at most
    # STREAMS - LIMIT per connection, each with the limit in force.
    assert refused <= CLIENTS * (STREAMS - LIMIT)
    per_connection: dict[int, int] = {}
    for event in events:
        assert event["reason"] == "stream_limit" and event["limit"] == LIMIT
        per_connection[event["connection"]] = per_connection.get(event["connection"], 0) + 1
    assert all(n <= STREAMS - LIMIT for n in per_connection.values())
    if limited.ca_file is None:
        # Cleartext: the server speaks only after the client's first bytes, so h2load's whole
        # first burst is in flight before it sees the limit.
        assert refused == CLIENTS * (STREAMS - LIMIT)
    assert limited.events.counts.get("chaos.protocol_error", 0) == 0
    await one_more_request(peer, limited)
