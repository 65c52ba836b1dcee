"""The doctor's one connection: one-line failures, how a connection ended, bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from h2guard.chaos import serve
from h2guard.chaos.model import GoAway, IdleTimeout, RstStream, Scenario, Trigger
from h2guard.doctor.connection import DoctorConnection, DoctorError, parse_target

pytestmark = pytest.mark.timeout(20)


@contextlib.asynccontextmanager
async def raw_server(reply: bytes | None) -> AsyncIterator[int]:
    """A TCP server that answers every connection with ``reply`` (None: says nothing)."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await reader.read(1024)
            if reply is not None:
                writer.write(reply)
                await writer.drain()
            await asyncio.sleep(5)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_parse_target() -> None:
    t = parse_target("https://example.com/a?b=1")
    assert (t.host, t.port, t.path, t.tls, t.authority) == ("example.com", 443, "/a?b=1", True,
                                                           "example.com")
    t = parse_target("http://[::1]:8080", h2c=True)
    assert (t.host, t.port, t.tls, t.authority) == ("::1", 8080, False, "[::1]:8080")
    assert parse_target("localhost:9000", h2c=True).tls is False
    with pytest.raises(DoctorError, match="not an http"):
        parse_target("ftp://x")


async def test_a_request_and_its_frames_both_ways() -> None:
    async with serve(h2c=True) as server:
        conn = await DoctorConnection.open(parse_target(server.url + "/echo", h2c=True))
        ex = await conn.response(conn.request(), 2.0)
        assert ex.ok and ex.status == 200 and ex.body_bytes > 0
        assert conn.peer_settings[0x3] == 100  # MAX_CONCURRENT_STREAMS, by number
        kinds = [(f.direction, f.type) for f in conn.frames]
        assert ("send", "HEADERS") in kinds and ("recv", "DATA") in kinds
        conn.ping()
        await conn.wait(lambda: conn.ping_rtts, 2.0)
        conn.close()


async def test_tls_alpn_and_an_untrusted_certificate() -> None:
    async with serve() as server:
        with pytest.raises(DoctorError, match=r"not trusted.*--ca-file"):
            await DoctorConnection.open(parse_target(server.url))
        conn = await DoctorConnection.open(parse_target(server.url), ca_file=server.ca_file)
        assert conn.alpn == "h2" and conn.tls_version and conn.tls_version.startswith("TLS")
        conn.close()
        insecure = await DoctorConnection.open(parse_target(server.url), insecure=True)
        insecure.close()


async def test_refused_connection_is_one_line() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DoctorError, match="connection refused"):
        await DoctorConnection.open(parse_target(f"http://127.0.0.1:{port}", h2c=True))


async def test_an_http1_server_is_not_http2() -> None:
    reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    async with raw_server(reply) as port:
        with pytest.raises(DoctorError, match="does not speak HTTP/2"):
            await DoctorConnection.open(parse_target(f"http://127.0.0.1:{port}", h2c=True),
                                        timeout=2.0)


async def test_a_silent_server_times_out_bounded() -> None:
    async with raw_server(None) as port:
        with pytest.raises(DoctorError, match=r"no HTTP/2 SETTINGS .* within 0\.3 s"):
            await DoctorConnection.open(parse_target(f"http://127.0.0.1:{port}", h2c=True),
                                        timeout=0.3)


@pytest.mark.parametrize(("action", "how"), [("goaway", "goaway"), ("fin", "fin"),
                                             ("rst", "rst")])
async def test_how_an_idle_connection_ends(action: str, how: str) -> None:
    scenario = Scenario(faults=(IdleTimeout(after=0.2, action=action),))  # type: ignore[arg-type]
    async with serve(scenario, h2c=True) as server:
        conn = await DoctorConnection.open(parse_target(server.url, h2c=True))
        closed = await conn.wait_closed(3.0)
        assert closed.how == how, closed
        if how == "goaway":
            assert closed.goaway_code == 0 and closed.goaway_last_stream_id == 0


async def test_reset_and_unprocessed_streams_are_told_apart() -> None:
    scenario = Scenario(faults=(
        RstStream(code=0x7, when=Trigger(path="/refuse")),
        GoAway(mode="abrupt", last_stream_id=0, when=Trigger(path="/bye")),))
    async with serve(scenario, h2c=True) as server:
        conn = await DoctorConnection.open(parse_target(server.url, h2c=True))
        refused = await conn.response(conn.request(path="/refuse"), 2.0)
        assert refused.reset_code == 0x7 and refused.reset_by_peer
        bye = await conn.response(conn.request(path="/bye"), 2.0)
        assert bye.unprocessed and not bye.ok
        closed = await conn.wait_closed(3.0)
        assert closed.how == "goaway" and closed.goaway_last_stream_id == 0


async def test_frame_log_is_bounded() -> None:
    async with serve(h2c=True) as server:
        conn = await DoctorConnection.open(parse_target(server.url, h2c=True), max_frames=10)
        for _ in range(20):
            await conn.response(conn.request(path="/bytes/10"), 2.0)
        assert len(conn.frames) == 10
        conn.close()


