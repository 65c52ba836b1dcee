"""``uds=``: HTTP/2 (h2c, prior knowledge) to a server on a Unix socket, as httpx's option."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

import h2guard
from h2guard.wire.core import H2Core
from h2guard.wire.events import RequestReceived

pytestmark = pytest.mark.timeout(30)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    core = H2Core(client=False)
    loop = asyncio.get_running_loop()
    core.start(loop.time())
    writer.write(core.data_to_send())
    while data := await reader.read(65536):
        for ev in core.receive(data, loop.time()):
            if isinstance(ev, RequestReceived):
                path = dict(ev.headers)[b":path"]
                core.send_headers(ev.stream_id, [(b":status", b"200")])
                core.send_data(ev.stream_id, b"unix:" + path, end_stream=True)
        writer.write(core.data_to_send())
    writer.close()


async def test_a_request_over_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "h2.sock")
    server = await asyncio.start_unix_server(_serve, path)
    try:
        transport = h2guard.AsyncHTTPTransport(uds=path, http2_prior_knowledge=True)
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get("http://localhost/hello")
        assert r.status_code == 200 and r.content == b"unix:/hello"
        assert r.extensions["http_version"] == b"HTTP/2"
    finally:
        server.close()
        await server.wait_closed()
    with pytest.raises(ValueError, match="exclude"):
        h2guard.AsyncHTTPTransport(uds=path, proxy="http://127.0.0.1:3128")
