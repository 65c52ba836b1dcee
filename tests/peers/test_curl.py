"""curl against the chaos server: h2c with prior knowledge, TLS with ALPN, and HTTP/1.1.

curl is the client most people reach for first, so its exact words for each failure matter:
``h2guard doctor explain`` gets them pasted in. The messages asserted here are curl 7.88's.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from h2guard.chaos import serve
from h2guard.chaos.model import GoAway, RstStream, Scenario, Trigger
from h2guard.chaos.server import ChaosServer

pytestmark = pytest.mark.peers

STATUS_LINE = "\n@@%{http_code} %{http_version}"


def _on(name: str) -> Trigger:
    return Trigger(headers=(("x-fault", name),))


SCENARIO = Scenario(name="curl-peer", faults=(
    RstStream(code=0x7, when=_on("refused")),
    RstStream(code=0x2, when=_on("internal")),
    RstStream(code=0xDEAD, when=_on("unknown")),
    GoAway(mode="graceful", code=0x0, when=_on("graceful")),
    GoAway(mode="abrupt", code=0x2, last_stream_id=0, debug=b"gone", when=_on("abrupt")),
))


@pytest.fixture(params=["h2c", "tls"])
async def server(request: pytest.FixtureRequest, peer: Any) -> AsyncIterator[ChaosServer]:
    peer.need("curl")
    async with serve(SCENARIO, h2c=request.param == "h2c", seed=3) as srv:
        yield srv
    assert srv.connections == 0


def http2_args(server: ChaosServer) -> list[str]:
    """h2c: prior knowledge; TLS: ALPN negotiation, verifying the server against its CA."""
    if server.ca_file is None:
        return ["--http2-prior-knowledge"]
    return ["--http2", "--cacert", server.ca_file]


async def curl(peer: Any, server: ChaosServer, *args: str, fault: str | None = None,
               path: str = "/echo") -> Any:
    cmd = ["curl", "-sS", "--max-time", "8", "-w", STATUS_LINE, *args]
    if fault is not None:
        cmd += ["-H", f"x-fault: {fault}"]
    result = await peer.run([*cmd, server.url + path], timeout=10)
    await peer.settle(server)
    return result


def split(stdout: str) -> tuple[str, str, str]:
    """(body, status code, HTTP version) from curl's output with STATUS_LINE appended."""
    body, _, tail = stdout.rpartition("\n@@")
    code, _, version = tail.partition(" ")
    return body, code, version


async def test_get_over_http2(peer: Any, server: ChaosServer) -> None:
    result = await curl(peer, server, *http2_args(server))
    assert result.returncode == 0, result.describe()
    assert result.stderr == ""
    body, code, version = split(result.stdout)
    assert (code, version) == ("200", "2")
    echo = json.loads(body)
    assert echo["http_version"] == "2"
    assert echo["method"] == "GET" and echo["path"] == "/echo"
    assert echo["stream_id"] == 1
    assert echo["headers"][":scheme"] == ("http" if server.ca_file is None else "https")


async def test_post_body_echoed_over_http2(peer: Any, server: ChaosServer) -> None:
    payload = "x" * 100_000  # larger than the 65,535-byte initial windows
    result = await curl(peer, server, *http2_args(server), "--data-binary", payload,
                        "-H", "content-type: text/plain")
    assert result.returncode == 0, result.describe()
    body, code, version = split(result.stdout)
    assert (code, version) == ("200", "2")
    assert body == payload


async def test_http11_on_the_same_port(peer: Any, server: ChaosServer) -> None:
    """TLS: ALPN picks http/1.1; cleartext: the server sniffs the request line."""
    args = ["--http1.1"] + ([] if server.ca_file is None else ["--cacert", server.ca_file])
    result = await curl(peer, server, *args, "-v")
    assert result.returncode == 0, result.describe()
    body, code, version = split(result.stdout)
    assert (code, version) == ("200", "1.1")
    assert json.loads(body)["http_version"] == "1.1"
    if server.ca_file is not None:
        assert "ALPN: server accepted http/1.1" in result.stderr


@pytest.mark.parametrize("server", ["tls"], indirect=True)
async def test_alpn_negotiates_h2(peer: Any, server: ChaosServer) -> None:
    result = await curl(peer, server, *http2_args(server), "-v")
    assert result.returncode == 0, result.describe()
    assert "ALPN: server accepted h2" in result.stderr
    assert "SSL certificate verify ok." in result.stderr


async def test_rst_internal_error(peer: Any, server: ChaosServer) -> None:
    result = await curl(peer, server, *http2_args(server), fault="internal")
    assert result.returncode == 92, result.describe()
    assert result.stderr.strip() == (
        "curl: (92) HTTP/2 stream 1 was not closed cleanly: INTERNAL_ERROR (err 2)")
    assert split(result.stdout)[1] == "000"
    assert server.fault_counts == {("rst_stream", "INTERNAL_ERROR"): 1}


async def test_rst_unknown_code(peer: Any, server: ChaosServer) -> None:
    result = await curl(peer, server, *http2_args(server), fault="unknown")
    assert result.returncode == 92, result.describe()
    assert result.stderr.strip() == (
        f"curl: (92) HTTP/2 stream 1 was not closed cleanly: unknown (err {0xDEAD})")


async def test_rst_refused_stream_is_retried_then_fails(peer: Any,
                                                        server: ChaosServer) -> None:
    """curl retries REFUSED_STREAM on a new connection, a bounded number of times."""
    result = await curl(peer, server, *http2_args(server), fault="refused")
    assert result.returncode == 56, result.describe()
    match = re.fullmatch(r"curl: \(56\) Connection died, tried (\d+) times before giving up",
                         result.stderr.strip())
    assert match is not None, result.describe()
    retries = int(match.group(1))
    assert retries == 5  # curl 7.88
    refusals = peer.fault_events(server, kind="rst_stream", code="REFUSED_STREAM")
    assert len(refusals) == retries + 1  # the first attempt, then each retry
    assert len({e["connection"] for e in refusals}) == retries + 1  # each on a new connection
    assert all(e["stream"] == 1 for e in refusals)


async def test_graceful_goaway_request_completes(peer: Any, server: ChaosServer) -> None:
    result = await curl(peer, server, *http2_args(server), fault="graceful")
    assert result.returncode == 0, result.describe()
    body, code, version = split(result.stdout)
    assert (code, version) == ("200", "2")
    assert json.loads(body)["stream_id"] == 1
    events = peer.fault_events(server, kind="goaway")
    assert [(e["mode"], e["last_stream_id"]) for e in events] == [("graceful", 1)]


async def test_abrupt_goaway_fails_the_request(peer: Any, server: ChaosServer) -> None:
    result = await curl(peer, server, *http2_args(server), fault="abrupt")
    assert result.returncode == 16, result.describe()
    assert result.stderr.strip() == "curl: (16) Error in the HTTP2 framing layer"
    events = peer.fault_events(server, kind="goaway")
    assert [(e["mode"], e["last_stream_id"], e["code"]) for e in events] == [
        ("abrupt", 0, "INTERNAL_ERROR")]


async def test_server_serves_after_every_failure(peer: Any, server: ChaosServer) -> None:
    for fault in ("internal", "refused", "abrupt", "graceful", None):
        await curl(peer, server, *http2_args(server), fault=fault)
    result = await curl(peer, server, *http2_args(server))
    assert result.returncode == 0, result.describe()
    assert split(result.stdout)[1:] == ("200", "2")
