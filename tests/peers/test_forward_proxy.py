"""h2guard through a real forward proxy (tinyproxy): HTTP/2 runs end to end inside the CONNECT
tunnel, so every protection still works: 0 requests lost in the tightened-nginx scenario."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import servers

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import IdleTimeout, MaxConcurrentStreams, RequestCap, Scenario
from h2guard.client.dial import env_proxy

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]

TIGHT = Scenario(name="nginx-tight", faults=(
    RequestCap(max_requests=5), MaxConcurrentStreams(limit=4),
    IdleTimeout(after=2.0, action="goaway")))


@contextlib.asynccontextmanager
async def tinyproxy(peer: Any, workdir: Path) -> AsyncIterator[str]:
    binary = peer.need("tinyproxy")

    def configure(ports: list[int]) -> list[str]:
        conf = workdir / "tinyproxy.conf"
        conf.write_text(f"Port {ports[0]}\nListen 127.0.0.1\nTimeout 60\nMaxClients 200\n"
                        f"Allow 127.0.0.1\nLogFile \"{workdir}/tinyproxy.log\"\n"
                        "LogLevel Connect\nDisableViaHeader Yes\n")
        return [binary, "-d", "-c", str(conf)]

    async with servers.daemon("tinyproxy", workdir, 1, configure) as running:
        yield f"http://127.0.0.1:{running.ports[0]}"


def _tunnels(workdir: Path) -> int:
    log = workdir / "tinyproxy.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("): CONNECT ")  # one "Request (...): CONNECT host:port" per tunnel


async def test_no_request_is_lost_through_the_tunnel(peer: Any, tmp_path: Path) -> None:
    async with tinyproxy(peer, tmp_path) as proxy, serve(
            TIGHT, time_scale=0.25, honour_idempotency_keys=True) as server:
        policy = h2guard.RetryPolicy(idempotency_keys=True)
        async with h2guard.AsyncClient(verify=server.ca_file, proxy=proxy, policy=policy,
                                       timeout=10) as client:
            sem = asyncio.Semaphore(20)

            async def one(i: int) -> int:
                async with sem:
                    r = await client.post(server.url + "/orders", content=b"{}",
                                          headers={"x-request-id": f"r{i}"})
                    assert r.extensions["http_version"] == b"HTTP/2"
                    return r.status_code

            statuses: list[int] = []
            for wave in range(3):
                if wave:
                    await asyncio.sleep(0.6)
                statuses += await asyncio.gather(*(one(wave * 100 + i) for i in range(100)))
        assert statuses == [201] * 300
        assert not server.ledger.duplicate_requests and server.ledger.total == 300
        # the connections (capped at 5 requests each) really went through the proxy
        assert _tunnels(tmp_path) >= 300 // 5


async def test_sync_client_and_env_proxy(peer: Any, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async with tinyproxy(peer, tmp_path) as proxy, serve(Scenario(name="plain")) as server:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert env_proxy("https", "127.0.0.1") == proxy

        def call() -> int:
            with httpx.Client(transport=h2guard.HTTPTransport(verify=server.ca_file)) as c:
                return c.get(server.url + "/echo").status_code

        assert await asyncio.to_thread(call) == 200
        assert _tunnels(tmp_path) == 1
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        assert await asyncio.to_thread(call) == 200
        assert _tunnels(tmp_path) == 1  # bypassed
        # trust_env=False ignores the environment
        monkeypatch.delenv("NO_PROXY")
        async with httpx.AsyncClient(transport=h2guard.AsyncHTTPTransport(
                verify=server.ca_file, trust_env=False)) as c:
            assert (await c.get(server.url + "/echo")).status_code == 200
        assert _tunnels(tmp_path) == 1


async def test_a_proxy_that_refuses_is_a_connect_failure(peer: Any, tmp_path: Path) -> None:
    # tinyproxy answers CONNECT to a closed port with an error status: nothing reached any
    # origin, so the failure is a connect failure (safe to retry), named as the proxy's
    async with tinyproxy(peer, tmp_path) as proxy, httpx.AsyncClient(
            transport=h2guard.AsyncHTTPTransport(proxy=proxy, verify=False)) as c:
        with pytest.raises(httpx.ConnectError, match="refused CONNECT"):
            await c.get("https://127.0.0.1:1/")
    with pytest.raises(ValueError, match="http:// proxy URL"):
        h2guard.AsyncHTTPTransport(proxy="socks5://127.0.0.1:1080")


async def test_local_address_and_socket_options() -> None:
    import socket

    async with serve(Scenario(name="plain"), h2c=True) as server:
        transport = h2guard.AsyncHTTPTransport(
            http2_prior_knowledge=True, local_address="127.0.0.1",
            socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)], retries=1)
        async with httpx.AsyncClient(transport=transport) as c:
            r = await c.get(server.url + "/echo")
        assert r.status_code == 200 and r.extensions["http_version"] == b"HTTP/2"
