"""The streaming upstream layer (h2guard.chaos.upstream) against real upstreams over loopback.

The upstreams are the chaos server itself (h2c and HTTP/1.1 on one cleartext port, TLS with
ALPN otherwise; faults make it reset streams and send GOAWAY), a tiny HTTP/2 server written
with the plain ``h2`` library for what the built-in app cannot produce (trailers, a
trailers-only answer, a connection dropped mid-body), and bare sockets for the failures
(refused, silent). Each downstream stream is a :class:`RecordingSink` that consumes response
bytes only as the test reads them, so backpressure is observable.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
import trustme

from h2guard.chaos import ChaosServer, serve
from h2guard.chaos.model import (
    FlowControl,
    GoAway,
    RstStream,
    Scenario,
    ServerSettings,
    Trigger,
)
from h2guard.chaos.server import ServerConfig
from h2guard.chaos.upstream import Upstream, UpstreamExchange, UpstreamSession

pytestmark = pytest.mark.timeout(30)

Headers = list[tuple[bytes, bytes]]
BLOCK = bytes(range(256))


def _netloc(url: str) -> str:
    return url.split("://", 1)[1]


class RecordingSink:
    """One downstream stream: records every call and holds response bytes until the test
    takes them (``auto_consume``: taken at once, as a fast client would)."""

    def __init__(self, *, auto_consume: bool = True) -> None:
        self.auto_consume = auto_consume
        self.exchange: UpstreamExchange | None = None
        self.calls: list[tuple[str, Any]] = []
        self.status: int | None = None
        self.headers: Headers = []
        self.response_end: bool | None = None
        self.chunks: deque[bytes] = deque()
        self.body = bytearray()
        self.received = 0
        self.buffered = 0
        self.max_buffered = 0
        self.trailers: Headers | None = None
        self.reset: int | None = None
        self.failure: tuple[int, str] | None = None
        self.request_consumed = 0
        self.finished = False
        self._wake = asyncio.Event()

    # the ResponseSink protocol

    def upstream_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        assert self.exchange is not None, "a callback ran inside open()"
        assert self.status is None and not self.finished
        self.calls.append(("response", status))
        self.status, self.headers, self.response_end = status, headers, end_stream
        self._end(end_stream)

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        assert self.status is not None and not self.finished
        self.calls.append(("data", len(data)))
        self.received += len(data)
        if self.auto_consume:
            self.body += data
            assert self.exchange is not None
            self.exchange.response_consumed(len(data))
        elif data:
            self.chunks.append(data)
            self.buffered += len(data)
            self.max_buffered = max(self.max_buffered, self.buffered)
        self._end(end_stream)

    def upstream_trailers(self, headers: Headers) -> None:
        assert self.status is not None and not self.finished
        self.calls.append(("trailers", headers))
        self.trailers = headers
        self._end(True)

    def upstream_reset(self, code: int) -> None:
        self.calls.append(("reset", code))
        self.reset = code
        self._end(True)

    def upstream_failed(self, status: int, message: str) -> None:
        assert self.exchange is not None, "a callback ran inside open()"
        self.calls.append(("failed", status))
        self.failure = (status, message)
        self._end(True)

    def upstream_request_consumed(self, n: int) -> None:
        assert n > 0
        self.calls.append(("consumed", n))
        self.request_consumed += n
        self._wake.set()

    # the test's side

    def _end(self, end: bool) -> None:
        if end:
            self.finished = True
        self._wake.set()

    async def wait(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self._wake.clear()
                await self._wake.wait()

    async def done(self, timeout: float = 10.0) -> RecordingSink:
        await self.wait(lambda: self.finished, timeout)
        return self

    async def take(self) -> bytes | None:
        """The next response chunk, consumed now (None at the end)."""
        await self.wait(lambda: bool(self.chunks) or self.finished)
        if not self.chunks:
            return None
        chunk = self.chunks.popleft()
        self.buffered -= len(chunk)
        assert self.exchange is not None
        self.exchange.response_consumed(len(chunk))
        return chunk

    def json(self) -> Any:
        return json.loads(bytes(self.body))

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


_sids = iter(range(1, 1 << 30, 2))


def start(session: UpstreamSession, path: str, *, method: str = "GET",
          headers: Headers | None = None, end_stream: bool = True,
          sink: RecordingSink | None = None) -> RecordingSink:
    sink = sink or RecordingSink()
    sink.exchange = session.open(
        stream_id=next(_sids), method=method, path=path,
        headers=[(b":authority", b"front.example:8443"), *(headers or [])],
        http_version="2", client_ip="198.51.100.9", end_stream=end_stream, sink=sink)
    return sink


async def fetch(session: UpstreamSession, path: str, **kwargs: Any) -> RecordingSink:
    return await start(session, path, **kwargs).done()


@contextlib.asynccontextmanager
async def upstream_session(url: str, **options: Any) -> AsyncIterator[UpstreamSession]:
    up = Upstream(url, **options)
    try:
        yield up.session()
    finally:
        await up.aclose()


def events(server: ChaosServer, name: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in server.events.since(name=name)]


async def eventually(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# ---------------------------------------------------------------------------- round trips


async def test_h2c_request_headers_are_rewritten_like_a_proxy() -> None:
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        sink = await fetch(s, "/echo?a=1&b=%2F", headers=[
            (b"te", b"trailers"), (b"x-forwarded-for", b"203.0.113.7"),
            (b"connection", b"keep-alive, x-hop"), (b"x-hop", b"1"), (b"keep-alive", b"5"),
            (b"upgrade", b"h2c"), (b"proxy-authorization", b"secret"), (b"host", b"x"),
            (b"expect", b"100-continue"), (b"idempotency-key", b"k-1"),
            (b"cookie", b"a=1"), (b"cookie", b"b=2")])
        assert sink.status == 200 and sink.response_end is False
        seen = sink.json()
        h = seen["headers"]
        assert seen["http_version"] == "2" and seen["path"] == "/echo?a=1&b=%2F"
        assert h[":authority"] == _netloc(srv.url) and h[":scheme"] == "http"
        assert h["te"] == "trailers"
        assert h["x-forwarded-for"] == "203.0.113.7, 198.51.100.9"
        assert h["x-forwarded-host"] == "front.example:8443"
        assert h["x-forwarded-proto"] == "http"
        assert h["via"] == "2 h2guard-chaos"
        assert h["idempotency-key"] == "k-1" and "cookie" in h
        for gone in ("connection", "x-hop", "keep-alive", "upgrade", "proxy-authorization",
                     "host", "expect", "content-length", "transfer-encoding"):
            assert gone not in h, gone
        # the upstream's own content-length passes, nothing else is made up
        assert sink.header(b"content-length") == str(len(sink.body)).encode()
        assert sink.exchange is not None and sink.exchange.protocol == "h2"

        # a body without content-length stays without one; the downstream's passes untouched
        for extra in ([], [(b"content-length", b"5")]):
            sink = start(s, "/echo", headers=extra, end_stream=False)
            assert sink.exchange is not None
            sink.exchange.send_data(b"hel")
            sink.exchange.send_data(b"lo", end_stream=True)
            seen = (await sink.done()).json()
            assert seen["body_length"] == 5
            assert seen["headers"].get("content-length") == ("5" if extra else None)
            assert sink.request_consumed == 5


async def test_http1_upstream_streams_body_chunked_or_with_the_given_length() -> None:
    async with serve(h2c=True) as srv, upstream_session(f"http://{_netloc(srv.url)}/") as s:
        sink = await fetch(s, "/echo", headers=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        seen = sink.json()
        assert seen["http_version"] == "1.1"
        assert seen["headers"]["host"] == _netloc(srv.url)
        assert seen["headers"]["cookie"] == "a=1; b=2"
        assert "content-length" not in seen["headers"]  # a GET without body gets none
        assert sink.exchange is not None and sink.exchange.protocol == "http/1.1"

        for extra, framing in (([], "transfer-encoding"), ([(b"content-length", b"6")],
                                                          "content-length")):
            sink = start(s, "/echo", headers=extra, end_stream=False)
            assert sink.exchange is not None
            sink.exchange.send_data(b"abc")
            await asyncio.sleep(0.05)  # the upstream request is already under way
            sink.exchange.send_data(b"def", end_stream=True)
            seen = (await sink.done()).json()
            assert seen["body_length"] == 6
            assert framing in seen["headers"]
            assert ("transfer-encoding" in seen["headers"]) is (framing == "transfer-encoding")
            assert sink.request_consumed == 6

        sink = start(s, "/echo", method="POST", headers=[(b"content-type", b"x/y")],
                     end_stream=False)
        assert sink.exchange is not None
        sink.exchange.send_data(b"\x00\xffbody", end_stream=True)
        await sink.done()
        assert (sink.status, bytes(sink.body)) == (200, b"\x00\xffbody")
        assert sink.header(b"content-type") == b"x/y"
        assert sink.header(b"transfer-encoding") is None
        # every exchange read its response to the end: one pooled connection served them all
        assert len(events(srv, "chaos.connection.opened")) == 1


@pytest.mark.parametrize("scheme", ["h2c", "http"])
async def test_bodiless_responses_end_with_the_headers(scheme: str) -> None:
    async with serve(h2c=True) as srv, upstream_session(f"{scheme}://{_netloc(srv.url)}") as s:
        for code in (204, 404, 503):
            sink = await fetch(s, f"/status/{code}")
            assert (sink.status, sink.response_end) == (code, True)
            assert [c for c in sink.calls if c[0] != "consumed"] == [("response", code)]
        head = await fetch(s, "/bytes/1000", method="HEAD")
        assert (head.status, head.response_end) == (200, True)
        assert head.header(b"content-length") == b"1000"
        base = Upstream(f"{scheme}://{_netloc(srv.url)}/bytes/")
        try:
            sink = await fetch(base.session(), "/700?x=1")
            assert len(sink.body) == 700
        finally:
            await base.aclose()


async def test_https_upstream_negotiates_h2_and_checks_the_certificate() -> None:
    async with serve() as srv:
        async with upstream_session(srv.url, verify=srv.ca_file) as s:
            sink = await fetch(s, "/echo")
            assert sink.json()["http_version"] == "2"
            assert sink.json()["headers"][":scheme"] == "https"
            assert sink.exchange is not None and sink.exchange.protocol == "h2"
        async with upstream_session(srv.url) as s:  # certifi does not trust the test CA
            sink = await fetch(s, "/echo")
            assert sink.failure is not None and sink.failure[0] == 502
            assert "CERTIFICATE_VERIFY_FAILED" in sink.failure[1]
        async with upstream_session(srv.url, verify=False) as s:
            assert (await fetch(s, "/echo")).status == 200


async def test_https_upstream_choosing_http1_falls_back_to_httpx() -> None:
    """ALPN picks http/1.1: waiting requests (and their queued bodies) go to httpx, and the
    next session does not try h2 again."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.set_alpn_protocols(["http/1.1"])
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                body = await reader.readexactly(length)
                seen.append(head.split(b" ")[1] + b" " + body)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    with ca.cert_pem.tempfile() as ca_file:
        up = Upstream(f"https://127.0.0.1:{port}/base", verify=ca_file)
        try:
            sink = start(up.session(), "/one", method="POST",
                         headers=[(b"content-length", b"3")], end_stream=False)
            assert sink.exchange is not None
            sink.exchange.send_data(b"abc", end_stream=True)  # queued while TLS connects
            await sink.done()
            assert (sink.status, bytes(sink.body)) == (200, b"ok")
            assert sink.exchange.protocol == "http/1.1"
            second = await fetch(up.session(), "/two")
            assert second.status == 200 and up._alpn == "http/1.1"
            assert seen == [b"/base/one abc", b"/base/two "]
        finally:
            await up.aclose()
            server.close()
            await server.wait_closed()


# ---------------------------------------------------------------------------- trailers


class _H2Upstream(asyncio.Protocol):
    """A minimal HTTP/2 server on the plain h2 library: what a gRPC backend sends."""

    def __init__(self, log: list[dict[str, Any]]) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.log = log
        self.transport: asyncio.Transport | None = None
        self.requests: dict[int, dict[str, Any]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self._write()

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                assert ev.stream_id is not None and ev.headers is not None
                req = {"headers": list(ev.headers), "body": b"", "trailers": None}
                self.requests[ev.stream_id] = req
                self.log.append(req)
            elif isinstance(ev, h2.events.DataReceived):
                assert ev.stream_id is not None and ev.data is not None
                self.requests[ev.stream_id]["body"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length or 0,
                                                    ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                assert ev.stream_id is not None
                self.requests[ev.stream_id]["trailers"] = list(ev.headers or [])
            elif isinstance(ev, h2.events.StreamEnded):  # also after HEADERS with END_STREAM
                assert ev.stream_id is not None
                self._respond(ev.stream_id)
        self._write()

    def _respond(self, sid: int) -> None:
        path = dict(self.requests[sid]["headers"])[b":path"]
        grpc = [(b":status", b"200"), (b"content-type", b"application/grpc")]
        if path == b"/trailers":
            self.conn.send_headers(sid, [*grpc, (b"trailer", b"grpc-status")])
            self.conn.send_data(sid, b"\x00\x00\x00\x00\x05hello")
            self.conn.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"ok")],
                                   end_stream=True)
        elif path == b"/trailers-only":
            self.conn.send_headers(sid, [*grpc, (b"grpc-status", b"5"),
                                         (b"grpc-message", b"not found")], end_stream=True)
        elif path == b"/drop":
            self.conn.send_headers(sid, grpc)
            self.conn.send_data(sid, b"partial")
            self._write()
            assert self.transport is not None
            self.transport.close()

    def _write(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


@contextlib.asynccontextmanager
async def h2_upstream() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    log: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _H2Upstream(log), "127.0.0.1", 0)
    try:
        yield f"h2c://127.0.0.1:{server.sockets[0].getsockname()[1]}", log
    finally:
        server.close()


async def test_trailers_and_trailers_only_responses_pass_through() -> None:
    async with h2_upstream() as (url, log), upstream_session(url) as s:
        sink = start(s, "/trailers", method="POST", end_stream=False, headers=[
            (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        assert sink.exchange is not None
        sink.exchange.send_data(b"\x00\x00\x00\x00\x03req")
        sink.exchange.send_trailers([(b"x-request-trailer", b"yes")])
        await sink.done()
        assert sink.status == 200 and sink.response_end is False
        assert bytes(sink.body) == b"\x00\x00\x00\x00\x05hello"
        assert sink.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
        assert sink.header(b"trailer") == b"grpc-status"  # end-to-end, not hop-by-hop
        assert sink.header(b"content-length") is None
        req = log[0]
        names = [k for k, _ in req["headers"]]
        assert (b"te", b"trailers") in req["headers"] and b"content-length" not in names
        assert req["body"] == b"\x00\x00\x00\x00\x03req"
        assert req["trailers"] == [(b"x-request-trailer", b"yes")]

        only = await fetch(s, "/trailers-only", method="POST", headers=[
            (b"content-type", b"application/grpc"), (b"te", b"trailers")])
        assert (only.status, only.response_end) == (200, True)
        assert (b"grpc-status", b"5") in only.headers
        assert [c for c in only.calls if c[0] != "consumed"] == [("response", 200)]


async def test_connection_lost_mid_response_fails_the_stream_with_502() -> None:
    async with h2_upstream() as (url, _), upstream_session(url) as s:
        sink = await fetch(s, "/drop")
        assert sink.status == 200 and bytes(sink.body) == b"partial"
        assert sink.failure is not None and sink.failure[0] == 502
        assert sink.failure[1].startswith(f"h2guard chaos proxy: upstream {url} failed: "
                                          "connection lost")
        assert "\n" not in sink.failure[1]
        # the session reconnects for the next request
        assert (await fetch(s, "/drop")).status == 200


# ---------------------------------------------------------------------------- faults


async def test_upstream_rst_stream_reaches_the_sink_with_its_code() -> None:
    scenario = Scenario(faults=(RstStream(code=0x2, at="after_app"),))
    async with serve(scenario, h2c=True) as srv, \
            upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        sink = await fetch(s, "/orders", method="POST")
        assert sink.calls == [("reset", 2)]
        assert srv.ledger.total == 1  # the upstream did the work: the duplicate-write setup


async def test_abrupt_goaway_maps_unprocessed_streams_and_reconnects() -> None:
    fault = GoAway(mode="abrupt", code=0xB, debug=b"bye", when=Trigger(path="/goaway",
                                                                         max_fires=1))
    async with serve(Scenario(faults=(fault,)), h2c=True) as srv, \
            upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        goaways: list[tuple[int, bytes, list[int]]] = []
        s.on_goaway = lambda code, debug, ids: goaways.append((code, debug, ids))
        assert (await fetch(s, "/echo")).status == 200
        slow = start(s, "/delay/300")
        trigger = start(s, "/goaway")
        await slow.done()
        await trigger.done()
        assert slow.exchange is not None and trigger.exchange is not None
        assert goaways == [(0xB, b"bye", [slow.exchange.stream_id,
                                         trigger.exchange.stream_id])]
        assert slow.calls == [("reset", 7)] and trigger.calls == [("reset", 7)]
        again = await fetch(s, "/echo")
        assert again.status == 200
        opened = events(srv, "chaos.connection.opened")
        assert len(opened) == 2
        assert again.json()["connection_id"] == opened[1]["connection"]


async def test_graceful_goaway_lets_in_flight_streams_finish() -> None:
    fault = GoAway(mode="graceful", when=Trigger(path="/goaway", max_fires=1))
    async with serve(Scenario(faults=(fault,)), h2c=True) as srv, \
            upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        goaways: list[tuple[int, bytes, list[int]]] = []
        s.on_goaway = lambda code, debug, ids: goaways.append((code, debug, ids))
        slow = start(s, "/delay/200")
        trigger = await fetch(s, "/goaway")
        assert trigger.status == 404 and goaways == [(0, b"", [])]
        late = await fetch(s, "/echo")  # after the GOAWAY: a fresh connection
        assert late.status == 200
        await slow.done()
        assert slow.status == 200 and slow.json() == {"delayed_ms": 200}
        assert len(events(srv, "chaos.connection.opened")) == 2


async def test_streams_above_max_concurrent_streams_wait_in_fifo_order() -> None:
    scenario = Scenario(settings=ServerSettings(max_concurrent_streams=2))
    async with serve(scenario, h2c=True) as srv, \
            upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        began = time.monotonic()
        sinks = [start(s, "/delay/100") for _ in range(6)]
        finished: list[int] = []
        for i, sink in enumerate(sinks):
            async def note(i: int = i, sink: RecordingSink = sink) -> None:
                await sink.done()
                finished.append(i)
            asyncio.get_running_loop().create_task(note())
        await asyncio.gather(*(sink.done() for sink in sinks))
        await asyncio.sleep(0)
        assert all(sink.status == 200 for sink in sinks)
        assert time.monotonic() - began >= 0.28  # three rounds of two
        assert sorted(finished[:2]) == [0, 1]
        assert sorted(finished[2:4]) == [2, 3] and sorted(finished[4:]) == [4, 5]
        assert events(srv, "chaos.fault") == []  # nothing was refused
        assert len(events(srv, "chaos.connection.opened")) == 1


async def test_cancelled_request_leaves_the_fifo_without_reaching_the_upstream() -> None:
    scenario = Scenario(settings=ServerSettings(max_concurrent_streams=1))
    async with serve(scenario, h2c=True) as srv, \
            upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        first = start(s, "/delay/200")
        queued = start(s, "/echo")
        await eventually(lambda: s._conn is not None and bool(s._conn.exchanges), "a stream")
        assert queued.exchange is not None
        queued.exchange.cancel()
        third = start(s, "/echo")
        await first.done()
        await third.done()
        assert (first.status, third.status) == (200, 200) and queued.calls == []
        assert srv.requests == 2


async def test_idle_upstream_connection_is_closed_before_the_upstream_does_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import h2guard.chaos.upstream as upstream_module

    monkeypatch.setattr(upstream_module, "_KEEPALIVE_EXPIRY", 0.2)
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        assert (await fetch(s, "/echo")).status == 200
        assert (await fetch(s, "/echo")).status == 200  # reused while not idle for long
        await eventually(lambda: bool(events(srv, "chaos.connection.closed")),
                         "the idle connection to close")
        assert (await fetch(s, "/echo")).status == 200  # a fresh one
        assert len(events(srv, "chaos.connection.opened")) == 2
        assert events(srv, "chaos.goaway_received")  # closed politely, with GOAWAY


async def test_concurrent_first_opens_share_one_connection() -> None:
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        sinks = [start(s, f"/bytes/{n}") for n in (10, 20, 30, 40, 50)]
        for n, sink in zip((10, 20, 30, 40, 50), sinks, strict=True):
            assert len((await sink.done()).body) == n
        assert len(events(srv, "chaos.connection.opened")) == 1


# ---------------------------------------------------------------------------- backpressure


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_200_mb_download_through_a_slow_sink_stays_within_one_window() -> None:
    size = 200_000_000
    window = 256 * 1024
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}",
                                                        max_stream_buffer=window) as s:
        sink = start(s, f"/bytes/{size}", sink=RecordingSink(auto_consume=False))
        await sink.wait(lambda: sink.status is not None)
        await asyncio.sleep(0.3)  # nothing consumed: the upstream must stop at the window
        assert window - 16384 <= sink.buffered <= window
        total = 0
        next_pause = 20_000_000
        while (chunk := await sink.take()) is not None:
            if chunk[0] != total % 256 or chunk[-1] != (total + len(chunk) - 1) % 256:
                raise AssertionError(f"wrong bytes at offset {total}")
            total += len(chunk)
            if total >= next_pause:  # a client that stalls now and then
                next_pause += 20_000_000
                await asyncio.sleep(0.05)
                assert sink.buffered <= window
        assert total == size and sink.received == size
        assert sink.max_buffered <= window
        assert sink.finished and sink.failure is None and sink.reset is None


async def test_http1_download_reads_under_a_credit() -> None:
    size = 20_000_000
    window = 256 * 1024
    async with serve(h2c=True) as srv, upstream_session(f"http://{_netloc(srv.url)}",
                                                        max_stream_buffer=window) as s:
        sink = start(s, f"/bytes/{size}", sink=RecordingSink(auto_consume=False))
        await sink.wait(lambda: sink.status is not None)
        await asyncio.sleep(0.3)
        assert sink.buffered <= window + 65536
        digest = hashlib.sha256()
        total = 0
        while (chunk := await sink.take()) is not None:
            digest.update(chunk)
            total += len(chunk)
            if total % 4_000_000 < len(chunk):
                await asyncio.sleep(0.02)
        assert total == size and sink.max_buffered <= window + 65536
        pattern = (BLOCK * (size // 256 + 1))[:size]
        assert digest.digest() == hashlib.sha256(pattern).digest()


@pytest.mark.parametrize(("scheme", "size"), [("h2c", 50_000_000), ("http", 8_000_000)])
async def test_large_upload_round_trips_under_downstream_flow_control(scheme: str,
                                                                      size: int) -> None:
    """The test plays the downstream: it never has more than 1 MiB sent but not yet
    reported consumed, as a downstream window of 1 MiB would enforce."""
    body = os.urandom(size)
    window = 1 << 20
    async with serve(h2c=True) as srv, upstream_session(f"{scheme}://{_netloc(srv.url)}") as s:
        sink = start(s, "/echo", method="POST", end_stream=False,
                     headers=[(b"content-type", b"application/octet-stream")])
        ex = sink.exchange
        assert ex is not None
        sent = 0
        view = memoryview(body)
        while sent < size:
            limit = sent - window
            await sink.wait(lambda limit=limit: sink.request_consumed > limit, timeout=20)
            piece = bytes(view[sent:sent + 65536])
            sent += len(piece)
            ex.send_data(piece, end_stream=sent == size)
        await sink.done(timeout=30)
        assert sink.status == 200 and sink.request_consumed == size
        assert hashlib.sha256(sink.body).digest() == hashlib.sha256(body).digest()


async def test_paused_socket_gets_no_more_request_body() -> None:
    """pause_writing stops the body at the core's door; resume_writing sends the rest."""
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        sink = start(s, "/echo", method="POST", end_stream=False)
        await eventually(lambda: s._conn is not None and bool(s._conn.exchanges), "a stream")
        conn = s._conn
        assert conn is not None and sink.exchange is not None
        conn.pause_writing()
        sink.exchange.send_data(b"x" * 40_000, end_stream=True)
        await asyncio.sleep(0.1)
        assert sink.request_consumed == 0 and not sink.finished
        conn.resume_writing()
        await sink.done()
        assert sink.request_consumed == 40_000 and bytes(sink.body) == b"x" * 40_000


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize("scheme", ["h2c", "http"])
async def test_connection_refused_is_502_naming_the_upstream(scheme: str) -> None:
    url = f"{scheme}://127.0.0.1:{_free_port()}"
    async with upstream_session(url) as s:
        sink = await fetch(s, "/echo")
    assert sink.calls == [("failed", 502)]
    assert sink.failure is not None
    assert sink.failure[1].startswith(f"h2guard chaos proxy: upstream {url} failed: "
                                      "ConnectError")
    assert "\n" not in sink.failure[1]


async def test_silent_h2_upstream_is_504_after_connect_timeout() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # accept, never answer

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"h2c://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with upstream_session(url, connect_timeout=0.3) as s:
            began = time.monotonic()
            sinks = [start(s, "/echo"), start(s, "/echo")]
            for sink in sinks:
                await sink.done()
                assert sink.failure == (504, f"h2guard chaos proxy: upstream {url} timed "
                                             "out: no connection within 0.3 s")
            assert time.monotonic() - began < 1.5
    finally:
        for w in writers:
            w.close()
        server.close()


@pytest.mark.parametrize("scheme", ["h2c", "http"])
async def test_slow_upstream_is_504_after_read_timeout(scheme: str) -> None:
    async with serve(h2c=True) as srv, upstream_session(f"{scheme}://{_netloc(srv.url)}",
                                                        read_timeout=0.5) as s:
        began = time.monotonic()
        sink = await fetch(s, "/delay/3000")
        assert time.monotonic() - began < 2.0
        assert sink.failure is not None and sink.failure[0] == 504
        assert sink.failure[1].endswith("timed out: no response data within 0.5 s")
        if scheme == "h2c":
            await eventually(lambda: any(e["code"] == "CANCEL" for e in
                                         events(srv, "chaos.stream.reset_by_client")),
                             "the upstream to see RST_STREAM CANCEL")
        # a slow *downstream* is not the upstream's fault: no timeout while it holds bytes
        slow_reader = start(s, "/bytes/2000000", sink=RecordingSink(auto_consume=False))
        await asyncio.sleep(0.8)
        assert slow_reader.failure is None
        total = 0
        while (chunk := await slow_reader.take()) is not None:
            total += len(chunk)
        assert total == 2_000_000 and slow_reader.failure is None


async def test_upload_stalled_by_the_upstream_window_is_504() -> None:
    """The upstream stops granting window: the queued body is the upstream's stall."""
    stall = FlowControl(withhold_updates=10.0, at="request_headers")
    async with serve(Scenario(faults=(stall,)), h2c=True) as srv, \
            upstream_session(f"h2c://{_netloc(srv.url)}", read_timeout=0.5) as s:
        sink = start(s, "/echo", method="POST", end_stream=False)
        assert sink.exchange is not None
        sink.exchange.send_data(b"x" * 200_000, end_stream=True)  # > the 64 KiB window
        began = time.monotonic()
        await sink.done()
        assert time.monotonic() - began < 2.0
        assert 0 < sink.request_consumed < 200_000
        assert sink.failure is not None and sink.failure[0] == 504
        assert sink.failure[1].endswith("could not send the request within 0.5 s")


async def test_cancel_mid_download_resets_upstream_and_silences_the_sink() -> None:
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        sink = start(s, "/bytes/50000000", sink=RecordingSink(auto_consume=False))
        await sink.wait(lambda: sink.buffered > 0)
        assert sink.exchange is not None
        sink.exchange.cancel()
        calls = len(sink.calls)
        await eventually(lambda: bool(events(srv, "chaos.stream.reset_by_client")),
                         "the upstream to see the reset")
        assert events(srv, "chaos.stream.reset_by_client")[0]["code"] == "CANCEL"
        sink.exchange.response_consumed(sink.buffered)  # harmless after cancel
        await asyncio.sleep(0.1)
        assert len(sink.calls) == calls
        assert (await fetch(s, "/bytes/10")).status == 200  # the connection lives on


async def test_cancel_of_an_http1_exchange_drops_its_connection() -> None:
    async with serve(h2c=True) as srv, upstream_session(f"http://{_netloc(srv.url)}") as s:
        sink = start(s, "/bytes/30000000", sink=RecordingSink(auto_consume=False))
        await sink.wait(lambda: sink.buffered > 0)
        assert sink.exchange is not None
        sink.exchange.cancel()
        calls = len(sink.calls)
        await eventually(lambda: bool(events(srv, "chaos.connection.closed")),
                         "the upstream connection to close")
        await asyncio.sleep(0.05)
        assert len(sink.calls) == calls


async def test_a_raising_sink_costs_its_own_stream_only() -> None:
    class Broken(RecordingSink):
        def upstream_response(self, status: int, headers: Headers, end_stream: bool) -> None:
            raise RuntimeError("adapter bug")

    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with serve(h2c=True) as srv, \
                upstream_session(f"h2c://{_netloc(srv.url)}") as s:
            broken = start(s, "/bytes/5000000", sink=Broken())
            fine = start(s, "/bytes/5000000")
            await fine.done()
            assert len(fine.body) == 5_000_000 and broken.calls == []
            await eventually(lambda: bool(events(srv, "chaos.stream.reset_by_client")),
                             "the broken stream to be cancelled upstream")
            assert [str(c["exception"]) for c in reported] == ["adapter bug"]
    finally:
        loop.set_exception_handler(None)


async def test_bad_request_target_fails_after_open_returns() -> None:
    async with serve(h2c=True) as srv, upstream_session(f"h2c://{_netloc(srv.url)}") as s:
        sink = await fetch(s, "no-slash")
        assert sink.failure is not None and sink.failure[0] == 400
        assert "is not a path" in sink.failure[1]


async def test_session_aclose_is_bounded_and_silent() -> None:
    async with serve(h2c=True) as srv:
        up = Upstream(f"h2c://{_netloc(srv.url)}")
        s = up.session()
        sinks = [start(s, "/delay/5000"), start(s, "/bytes/50000000",
                                                sink=RecordingSink(auto_consume=False))]
        await sinks[1].wait(lambda: sinks[1].buffered > 0)
        calls = [len(x.calls) for x in sinks]
        began = time.monotonic()
        await s.aclose()
        await up.aclose()
        assert time.monotonic() - began < 1.0
        await eventually(lambda: bool(events(srv, "chaos.connection.closed")),
                         "the upstream connection to close")
        assert [len(x.calls) for x in sinks] == calls
        with pytest.raises(RuntimeError):
            s.open(stream_id=1, method="GET", path="/", headers=[], http_version="2",
                   client_ip=None, end_stream=True, sink=RecordingSink())
        with pytest.raises(RuntimeError):
            up.session()


async def test_from_config_reads_the_upstream_options() -> None:
    config = ServerConfig(h2c=True, upstream="h2c://127.0.0.1:1/base", extra={
        "upstream_connect_timeout": 1.5, "upstream_read_timeout": 2,
        "upstream_max_stream_buffer": 65536, "upstream_max_response_body": 10})
    up = Upstream.from_config(config)
    try:
        assert (up.connect_timeout, up.read_timeout, up.max_stream_buffer) == (1.5, 2.0, 65536)
        assert up.forwarded_proto == "http" and up.scheme == "h2c"
    finally:
        await up.aclose()
    with pytest.raises(ValueError, match="max_stream_buffer"):
        Upstream("h2c://127.0.0.1:1", max_stream_buffer=0)
    with pytest.raises(ValueError, match="scheme"):
        Upstream("ftp://127.0.0.1:1")
    with pytest.raises(ValueError, match="upstream_max_stream_buffer"):
        Upstream.from_config(ServerConfig(upstream="h2c://a:1",
                                          extra={"upstream_max_stream_buffer": "big"}))
