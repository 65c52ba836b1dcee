"""The chaos server as a reverse proxy: a front chaos server forwarding to an upstream.

Every scheme the proxy dials is exercised against a real server over loopback: the chaos
server itself spoken to over ``http://`` (it sniffs HTTP/1.1 on cleartext ports), over
``h2c://`` (HTTP/2 prior knowledge) and over ``https://`` (TLS, ALPN h2, its own CA), plus a
hand-written HTTP/1.1 upstream for what the built-in app cannot produce (gzip, chunked
encoding, hop-by-hop response headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from h2guard.chaos import ChaosServer, ServerConfig, serve
from h2guard.chaos.model import RstStream, Scenario, Trigger
from h2guard.chaos.upstream import Upstream

pytestmark = pytest.mark.timeout(30)

SCHEMES = ["http", "h2c", "https"]
UPSTREAM_VERSION = {"http": "1.1", "h2c": "2", "https": "2"}


def _netloc(url: str) -> str:
    return url.split("://", 1)[1]


@contextlib.asynccontextmanager
async def _proxied(scheme: str, *, base: str = "", scenario: Scenario | None = None,
                   extra: dict[str, Any] | None = None,
                   ) -> AsyncIterator[tuple[ChaosServer, ChaosServer, httpx.AsyncClient]]:
    """(upstream, front, HTTP/2 client of the front) with the upstream dialled by ``scheme``."""
    async with serve(h2c=scheme != "https") as upstream:
        options = dict(extra or {})
        if scheme == "https":
            options["upstream_verify"] = upstream.ca_file
        url = f"{scheme}://{_netloc(upstream.url)}{base}"
        front = ChaosServer(scenario, config=ServerConfig(h2c=True, upstream=url,
                                                          extra=options))
        async with front, httpx.AsyncClient(http1=False, http2=True, base_url=front.url,
                                             timeout=10.0) as client:
            yield upstream, front, client


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_get_forwards_path_query_and_headers(scheme: str) -> None:
    async with _proxied(scheme) as (upstream, front, client):
        resp = await client.get("/echo?a=1&b=%2F&c=x%20y", headers={
            "idempotency-key": "key-123", "x-request-id": "req-9",
            "x-forwarded-for": "203.0.113.7", "x-custom": "kept"})
    assert resp.status_code == 200
    assert resp.http_version == "HTTP/2"
    seen = resp.json()
    headers = seen["headers"]
    assert seen["method"] == "GET"
    assert seen["path"] == "/echo?a=1&b=%2F&c=x%20y"
    assert seen["http_version"] == UPSTREAM_VERSION[scheme]
    # host is the upstream's own (nginx's default), the original one travels in x-forwarded-host
    assert (headers.get("host") or headers.get(":authority")) == _netloc(upstream.url)
    assert headers["x-forwarded-host"] == _netloc(front.url)
    assert headers["x-forwarded-proto"] == "http"
    assert headers["x-forwarded-for"] == "203.0.113.7, 127.0.0.1"
    assert headers["via"] == "2 h2guard-chaos"
    assert headers["idempotency-key"] == "key-123"
    assert headers["x-request-id"] == "req-9"
    assert headers["x-custom"] == "kept"
    assert "connection" not in headers and "keep-alive" not in headers


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_post_bodies_round_trip_byte_exact(scheme: str) -> None:
    bodies = [b"", b"hello\x00\xff", os.urandom(5 * 1024 * 1024)]
    async with _proxied(scheme) as (_, _front, client):
        for body in bodies:
            resp = await client.post("/echo", content=body,
                                     headers={"content-type": "application/x-test"})
            assert resp.status_code == 200
            assert resp.headers["content-type"] == "application/x-test"
            assert resp.headers["content-length"] == str(len(body))
            assert resp.content == body
        big = await client.get("/bytes/5000000")
    assert big.status_code == 200
    assert len(big.content) == 5_000_000
    assert big.content[:512] == bytes(range(256)) * 2


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_status_codes_pass_through(scheme: str) -> None:
    async with _proxied(scheme) as (_, _front, client):
        for code in (201, 204, 404, 418, 500, 503):
            resp = await client.get(f"/status/{code}")
            assert resp.status_code == code
            assert resp.content == b""
        missing = await client.get("/no/such/thing")
        assert missing.status_code == 404
        assert "no endpoint GET /no/such/thing" in missing.json()["error"]


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_base_path_is_prefixed(scheme: str) -> None:
    async with _proxied(scheme, base="/bytes/") as (_, _front, client):
        resp = await client.get("/1000?ignored=yes")
    assert resp.status_code == 200
    assert len(resp.content) == 1000


# ---------------------------------------------------------------------------- faults in front


@pytest.mark.parametrize("scheme", SCHEMES)
async def test_reset_after_app_leaves_the_upstream_effect(scheme: str) -> None:
    """The duplicate-write setup: the upstream wrote, the client saw only a reset."""
    reset = RstStream(code=0x2, at="after_app",
                      when=Trigger(method="POST", path="/orders", max_fires=1))
    async with _proxied(scheme, scenario=Scenario(name="reset-after-app", faults=(reset,))) \
            as (upstream, front, client):
        headers = {"idempotency-key": "order-42"}
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post("/orders", content=b"{}", headers=headers)
        assert upstream.ledger.total == 1
        assert front.ledger.total == 0  # the front never ran its own app
        ledger = (await client.get("/ledger")).json()
        assert ledger["effects_per_key"] == {"order-42": 1}
        # the naive retry succeeds and writes again: exactly what the ledger must show
        retry = await client.post("/orders", content=b"{}", headers=headers)
        assert retry.status_code == 201
        assert retry.json()["idempotency_key"] == "order-42"
        assert upstream.ledger.duplicate_keys == {"order-42": 2}


# ---------------------------------------------------------------------------- failures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_upstream_down_is_502_with_a_clear_body() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    async with ChaosServer(config=ServerConfig(h2c=True, upstream=url)) as front, \
            httpx.AsyncClient(http2=True, http1=False, base_url=front.url) as client:
        resp = await client.get("/echo")
    assert resp.status_code == 502
    text = resp.text
    assert text.startswith(f"h2guard chaos proxy: upstream {url} failed: ConnectError")
    assert text.count("\n") == 1


@pytest.mark.parametrize("scheme", ["http", "h2c"])
async def test_slow_upstream_is_504(scheme: str) -> None:
    async with _proxied(scheme, extra={"upstream_read_timeout": 0.3}) as (_, _front, client):
        resp = await client.get("/delay/3000")
        assert resp.status_code == 504
        assert "timed out: no response data within 0.3 s" in resp.text
        # the pool survives a timed-out exchange
        assert (await client.get("/status/200")).status_code == 200


async def test_https_upstream_with_an_untrusted_certificate_is_502() -> None:
    async with serve() as upstream:
        front = ChaosServer(config=ServerConfig(h2c=True, upstream=upstream.url))
        async with front, httpx.AsyncClient(http2=True, http1=False,
                                             base_url=front.url) as client:
            resp = await client.get("/echo")
        assert resp.status_code == 502
        assert "CERTIFICATE_VERIFY_FAILED" in resp.text
        insecure = ChaosServer(config=ServerConfig(h2c=True, upstream=upstream.url,
                                                   extra={"upstream_verify": False}))
        async with insecure, httpx.AsyncClient(http2=True, http1=False,
                                                base_url=insecure.url) as client:
            assert (await client.get("/echo")).json()["http_version"] == "2"


# ---------------------------------------------------------------------------- raw HTTP/1.1


@contextlib.asynccontextmanager
async def _raw_http1_upstream(body: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A minimal HTTP/1.1 server that answers every request with a gzip'd, chunked body and
    hop-by-hop headers that the proxy must strip. Yields (url, raw request heads)."""
    heads: list[bytes] = []
    payload = gzip.compress(body)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                heads.append(head)
                if head.startswith(b"HEAD "):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n"
                                 b"Content-Encoding: gzip\r\n\r\n")
                    await writer.drain()
                    continue
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                half = len(payload) // 2
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                                  for part in (payload[:half], payload[half:]))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n"
                             b"X-Hop: secret\r\nX-Upstream: raw\r\n\r\n" + chunks + b"0\r\n\r\n")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", heads
    finally:
        server.close()
        await server.wait_closed()


async def test_http1_upstream_raw_body_and_hop_by_hop_headers() -> None:
    body = b"compressible text " * 1000
    async with _raw_http1_upstream(body) as (url, heads):
        front = ChaosServer(config=ServerConfig(h2c=True, upstream=url + "/base"))
        async with front, httpx.AsyncClient(http2=True, http1=False,
                                             base_url=front.url) as client:
            resp = await client.post("/submit?x=1", content=b"abc",
                                     headers={"te": "trailers", "cookie": "a=1",
                                              "accept-encoding": "gzip"})
    assert resp.status_code == 200
    raw = resp.headers.raw
    names = {name.lower() for name, _ in raw}
    assert resp.headers["content-encoding"] == "gzip"
    assert resp.headers["x-upstream"] == "raw"
    assert not names & {b"transfer-encoding", b"connection", b"keep-alive", b"x-hop"}
    # streamed, not buffered: a chunked upstream body gets no content-length made up
    assert b"content-length" not in names
    assert resp.content == body  # the test client decodes; the proxy did not decompress
    head = heads[0].decode("latin-1").lower()
    assert head.startswith("post /base/submit?x=1 http/1.1\r\n")
    assert "\r\nhost: 127.0.0.1:" in head
    assert "\r\nte: trailers\r\n" in head
    assert "\r\ncontent-length: 3\r\n" in head
    assert "\r\naccept-encoding: gzip\r\n" in head
    assert "user-agent: python-httpx" in head  # the client's own, not one the proxy made up
    assert head.count("user-agent") == 1


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("url", "message"), [
    ("ftp://127.0.0.1:21", "scheme must be http://, https:// or h2c://"),
    ("127.0.0.1:8080", "scheme must be"),
    ("http://", "has no host"),
    ("h2c://127.0.0.1:99999", "invalid port"),
    ("http://user:pw@127.0.0.1", "credentials"),
    ("http://127.0.0.1/api?x=1", "query or fragment"),
    ("http://127.0.0.1/a b", "whitespace"),
    ("", "empty"),
])
def test_bad_upstream_urls_are_rejected_with_one_line(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Upstream(url)
    assert "\n" not in str(info.value)


def test_missing_ca_file_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="CA file"):
        Upstream("https://127.0.0.1:8443", verify="/nonexistent/ca.pem")


async def test_valid_urls_and_base_paths() -> None:
    for url, target in [("http://127.0.0.1:8080/api", b"/api/orders?x=1"),
                        ("h2c://[::1]:8080/api/", b"/api/orders?x=1"),
                        ("HTTPS://example.com", b"/orders?x=1")]:
        upstream = Upstream(url)
        try:
            assert upstream._target("/orders?x=1") == target
        finally:
            await upstream.aclose()


async def test_server_config_extra_reaches_the_upstream() -> None:
    config = ServerConfig(h2c=False, upstream="h2c://127.0.0.1:1",
                          extra={"upstream_read_timeout": 2, "upstream_connect_timeout": 0.5,
                                 "upstream_max_stream_buffer": 65536})
    upstream = Upstream.from_config(config)
    try:
        assert (upstream.read_timeout, upstream.connect_timeout) == (2.0, 0.5)
        assert upstream.max_stream_buffer == 65536
        assert upstream.forwarded_proto == "https"
    finally:
        await upstream.aclose()
    with pytest.raises(ValueError, match="upstream_read_timeout"):
        Upstream.from_config(ServerConfig(upstream="http://x", extra={
            "upstream_read_timeout": "soon"}))


async def test_head_keeps_the_upstream_content_length() -> None:
    async with _raw_http1_upstream(b"x") as (url, heads):
        front = ChaosServer(config=ServerConfig(h2c=True, upstream=url))
        async with front, httpx.AsyncClient(http2=True, http1=False,
                                             base_url=front.url) as client:
            head = await client.head("/thing")
            # a HEAD that fails upstream gets the 502 status without a body
            down = ChaosServer(config=ServerConfig(
                h2c=True, upstream=f"http://127.0.0.1:{_free_port()}"))
            async with down:
                failed = await client.head(f"{down.url}/thing")
    assert head.status_code == 200
    assert head.headers["content-length"] == "1234"
    assert head.headers["content-encoding"] == "gzip"
    assert head.content == b""
    assert heads[0].startswith(b"HEAD /thing HTTP/1.1\r\n")
    assert failed.status_code == 502
    assert failed.content == b""
