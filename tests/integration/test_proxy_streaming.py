"""Large bodies and bounded memory: the chaos server and its proxy mode must stream.

Acceptance tests of the streaming proxy (and of the server's own backpressure). A server in
front of real services meets clients that stop reading and bodies larger than its memory: a
gigabyte download, a 100 MB upload, four peers that open a window of 2 GiB and then never read.
Each costs the server a bounded buffer per stream (``Limits.max_stream_buffer``), never the
body. The servers run as child processes (:mod:`.chaosproc`) so their RSS is their own, and a
test stops as soon as growth passes :data:`RSS_LIMIT` instead of letting a buffering server eat
the machine.

The proxy must also be transparent beyond bodies: trailers both ways (``te: trailers`` kept),
no ``content-length`` the upstream did not send, and an upstream's RST_STREAM passed on to the
client with the same code. A hand-written h2 upstream sends what the chaos app cannot.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import shutil
import signal
import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import httpx
import pytest

from frames import FrameFactory, SettingCodes
from h2guard.chaos import serve
from h2guard.wire.events import TrailersReceived

from .chaosproc import MB, ChaosProcess, RssWatch, chaos_process
from .rawclient import DATA, HEADERS, FrameParser, RawClient

pytestmark = pytest.mark.timeout(120)

RSS_LIMIT = 64 * MB
"""Growth over the idle baseline a server may show while it streams (bodies are far larger)."""
GIB = 1 << 30
MAX_WINDOW = 2**31 - 1


def _client(url: str) -> httpx.AsyncClient:
    """HTTP/2 with prior knowledge (h2c) and no environment proxy; reads time out at 10 s."""
    return httpx.AsyncClient(http1=False, http2=True, base_url=url, trust_env=False,
                             timeout=httpx.Timeout(10.0))


async def _warm_up(server: ChaosProcess) -> None:
    """One ordinary exchange first, so imports and first-use allocations (the proxy's
    upstream client, h2's tables) are in the baseline rather than counted as growth."""
    async with _client(server.url) as client:
        resp = await client.get("/bytes/1000000")
        assert resp.status_code == 200 and len(resp.content) == 1_000_000, resp.text[:200]
        resp = await client.post("/echo", content=b"x" * 100_000)
        assert resp.status_code == 200 and len(resp.content) == 100_000, resp.text[:200]


# ---------------------------------------------------------------------------- non-reading peers


@dataclass
class _Stalled:
    """A raw connection that asked for a big body with huge windows, then stopped reading."""

    sock: socket.socket
    frames: list[object] = field(default_factory=list)


def _open_stalled(netloc: str, path: str) -> _Stalled:
    """Preface, SETTINGS INITIAL_WINDOW_SIZE 2^31-1, a connection WINDOW_UPDATE to 2^31-1,
    then ``GET path``; a tiny receive buffer so the kernel holds almost nothing for us."""
    host, port = netloc.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: window scale
    sock.settimeout(2.0)
    sock.connect((host, int(port)))
    ff = FrameFactory()
    sock.sendall(ff.hello({SettingCodes.INITIAL_WINDOW_SIZE: MAX_WINDOW})
                 + ff.window_update(0, MAX_WINDOW - 65535)
                 + ff.request(1, "GET", path, authority=netloc))
    return _Stalled(sock)


def _read_some(stalled: _Stalled, want: int = 256 * 1024, timeout: float = 3.0) -> dict[str, int]:
    """After the measurement: read up to ``want`` bytes and summarise stream 1's frames, to
    prove the server really was sending a large body (a test against a server that answered
    400 would otherwise pass on a flat RSS)."""
    parser = FrameParser()
    got = 0
    summary = {"headers": 0, "data_bytes": 0, "end_stream": 0}
    stalled.sock.settimeout(timeout)
    with contextlib.suppress(TimeoutError, OSError):
        while got < want:
            chunk = stalled.sock.recv(65536)
            if not chunk:
                break
            got += len(chunk)
            for frame in parser.feed(chunk, 0.0):
                if frame.stream_id != 1:
                    continue
                if frame.type == HEADERS:
                    summary["headers"] += 1
                elif frame.type == DATA:
                    summary["data_bytes"] += frame.data_length
                summary["end_stream"] += frame.end_stream
    return summary


@contextlib.asynccontextmanager
async def _target(tmp_path: Path, via: str) -> AsyncIterator[ChaosProcess]:
    """The process whose memory is measured: the chaos server itself, or a proxy in front of
    another chaos server (``via`` = ``server`` or ``proxy``)."""
    if via == "server":
        async with chaos_process(tmp_path) as server:
            yield server
        return
    async with chaos_process(tmp_path) as upstream, \
            chaos_process(tmp_path, "--upstream", upstream.h2c_url) as proxy:
        yield proxy


@pytest.mark.slow
@pytest.mark.parametrize("via", ["server", "proxy"])
async def test_four_non_reading_peers_cost_bounded_memory(tmp_path: Path, via: str) -> None:
    """4 connections x ``GET /bytes/200000000`` with 2 GiB windows, never read: the server
    may buffer a little per stream, not the 800 MB it was allowed to send."""
    async with _target(tmp_path, via) as target:
        await _warm_up(target)
        watch = RssWatch(target, RSS_LIMIT)
        await watch.baseline()
        stalled = [_open_stalled(target.netloc, "/bytes/200000000") for _ in range(4)]
        try:
            await watch.run(asyncio.sleep(3.5), timeout=10.0,
                            progress=lambda: "4 peers that never read")
            seen = [_read_some(s) for s in stalled]
        finally:
            for s in stalled:
                s.sock.close()
    for i, summary in enumerate(seen):
        assert summary["headers"] == 1 and summary["data_bytes"] >= 64 * 1024 \
            and not summary["end_stream"], f"peer {i}: no large body in flight: {summary}"


# ---------------------------------------------------------------------------- 1 GiB download


@contextlib.asynccontextmanager
async def _download_target(tmp_path: Path, route: str) -> AsyncIterator[ChaosProcess]:
    """``server``: the chaos server itself; ``h2c`` / ``http``: a proxy in front of one,
    dialling it with HTTP/2 prior knowledge or HTTP/1.1."""
    async with chaos_process(tmp_path) as upstream:
        if route == "server":
            yield upstream
            return
        url = upstream.h2c_url if route == "h2c" else upstream.http1_url
        async with chaos_process(tmp_path, "--upstream", url) as proxy:
            yield proxy


@dataclass
class _Download:
    """How a download went: filled in as it runs, so a stopped one can still be described."""

    status: int | None = None
    received: int = 0
    head: bytearray = field(default_factory=bytearray)  # the first bytes, for a 502's text
    client: str = ""
    error: str = ""

    def take(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if len(self.head) < 1000:
            self.head += chunk[: 1000 - len(self.head)]

    def __str__(self) -> str:
        text = f"{self.client}: status {self.status}, {self.received:,} bytes received"
        if self.status not in (None, 200):
            text += f", body {bytes(self.head)!r}"
        return text + (f", {self.error}" if self.error else "")


async def _download(url: str, into: _Download, *, timeout: float) -> None:
    """GET ``url`` over h2c and count every body byte. curl when installed (the test
    measures the server, and curl reads a gigabyte in a fraction of the CPU httpx needs on
    two shared cores), httpx otherwise; either way the bytes are counted here."""
    curl = shutil.which("curl")
    if curl is None:
        into.client = "httpx"
        async with _client(url) as client, client.stream("GET", url) as resp:
            into.status = resp.status_code
            async for chunk in resp.aiter_raw():
                into.take(chunk)
        return
    into.client = "curl"
    proc = await asyncio.create_subprocess_exec(
        curl, "-sS", "--http2-prior-knowledge", "--max-time", f"{timeout:g}",
        "-w", "%{stderr}status=%{http_code}\n", url, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        while chunk := await proc.stdout.read(1 << 20):
            into.take(chunk)
        err = (await asyncio.wait_for(proc.stderr.read(), 5.0)).decode(errors="replace")
        await asyncio.wait_for(proc.wait(), 5.0)
    finally:
        if proc.returncode is None:  # cancelled (memory limit) or a bounded wait expired
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 5.0)
    messages = []
    for line in err.splitlines():
        if line.startswith("status=") and line[7:].isdigit():
            into.status = int(line[7:]) or None  # 000: no response at all
        elif line.strip():
            messages.append(line.strip())
    if proc.returncode or messages:
        into.error = f"curl exit {proc.returncode}: {' '.join(messages)}"


@pytest.mark.slow
@pytest.mark.parametrize("route", ["server", "h2c", "http"])
async def test_one_gib_download_in_bounded_memory(tmp_path: Path, route: str) -> None:
    """Every byte of /bytes/1073741824 through the proxy (HTTP/2 or HTTP/1.1 upstream), with
    the proxy's RSS sampled every 0.1 s: it may never hold more than a few frames. ``server``
    is the same download from the chaos server itself (it generates the body lazily)."""
    async with _download_target(tmp_path, route) as target:
        await _warm_up(target)
        watch = RssWatch(target, RSS_LIMIT)
        await watch.baseline()
        result = _Download()
        started = asyncio.get_running_loop().time()
        await watch.run(_download(f"{target.url}/bytes/{GIB}", result, timeout=60.0),
                        timeout=60.0, progress=lambda: str(result))
        elapsed = asyncio.get_running_loop().time() - started
    assert result.status == 200 and not result.error, f"after {elapsed:.1f} s: {result}"
    assert result.received == GIB, f"received {result.received:,} bytes, not {GIB:,}"


# ---------------------------------------------------------------------------- 100 MB upload


UPLOAD_CHUNKS = 100
UPLOAD_CHUNK = 1_000_000


def _upload_chunks() -> list[bytes]:
    """Four random 1 MB blocks, each chunk stamped with its index: reordering, loss or
    duplication of any chunk changes the hash."""
    rng = random.Random(20240601)
    blocks = [rng.randbytes(UPLOAD_CHUNK) for _ in range(4)]
    return [i.to_bytes(8, "big") + blocks[i % 4][8:] for i in range(UPLOAD_CHUNKS)]


@pytest.mark.slow
async def test_100_mb_streamed_upload_echoes_through_the_proxy(tmp_path: Path) -> None:
    chunks = _upload_chunks()
    sent = hashlib.sha256()
    for chunk in chunks:
        sent.update(chunk)
    total = UPLOAD_CHUNKS * UPLOAD_CHUNK
    async with chaos_process(tmp_path) as upstream, \
            chaos_process(tmp_path, "--upstream", upstream.h2c_url) as proxy:
        await _warm_up(proxy)
        watch = RssWatch(proxy, RSS_LIMIT)
        await watch.baseline()
        progress = {"sent": 0, "received": 0}
        status: list[int] = []
        echoed = hashlib.sha256()

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                progress["sent"] += len(chunk)
                yield chunk

        async def upload() -> None:
            async with _client(proxy.url) as client, client.stream(
                    "POST", "/echo", content=body(),
                    headers={"content-type": "application/octet-stream",
                             "content-length": str(total)}) as resp:
                status.append(resp.status_code)
                async for chunk in resp.aiter_raw():
                    progress["received"] += len(chunk)
                    echoed.update(chunk)

        await watch.run(upload(), timeout=60.0, progress=lambda: f"status {status}, {progress}")
    assert status == [200]
    assert progress == {"sent": total, "received": total}
    assert echoed.hexdigest() == sent.hexdigest(), "the echoed body differs from the upload"


# ---------------------------------------------------------------------------- trailers, resets


@dataclass
class _Seen:
    """What the hand-written upstream received on one stream."""

    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)
    trailers: dict[str, str] = field(default_factory=dict)


RESPONSE_TRAILERS = [("x-checksum", "sha256:abc123"), ("x-items", "2")]


def _text(headers: Iterable[tuple[bytes | str, bytes | str]]) -> dict[str, str]:
    """A header block as a str dict (h2 gives bytes without a header_encoding)."""
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes)
                                                         else v) for k, v in headers}


class H2Upstream:
    """A minimal HTTP/2 (h2c) origin on python-hyper h2, for what the chaos app cannot send.

    ``/trailers``: 200 without content-length, two DATA frames, then trailers.
    ``/reset-before/CODE``: RST_STREAM CODE before any response. ``/reset-mid/CODE``: 200,
    1000 bytes, then RST_STREAM CODE. Everything it saw is in :attr:`seen` (by path)."""

    def __init__(self) -> None:
        self.seen: dict[str, _Seen] = {}
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> H2Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2.0)
        await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        by_stream: dict[int, _Seen] = {}
        try:
            writer.write(conn.data_to_send())
            while data := await reader.read(65536):
                for ev in conn.receive_data(data):
                    self._on_event(conn, by_stream, ev)
                writer.write(conn.data_to_send())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._handlers.discard(task)
            writer.close()

    def _on_event(self, conn: h2.connection.H2Connection, by_stream: dict[int, _Seen],
                  ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            seen = _Seen(_text(ev.headers))
            by_stream[ev.stream_id] = seen
            self.seen[seen.headers[":path"]] = seen
        elif isinstance(ev, h2.events.DataReceived):
            by_stream[ev.stream_id].body += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            by_stream[ev.stream_id].trailers = _text(ev.headers)
        elif isinstance(ev, h2.events.StreamEnded):
            self._respond(conn, ev.stream_id, by_stream[ev.stream_id])

    @staticmethod
    def _respond(conn: h2.connection.H2Connection, sid: int, seen: _Seen) -> None:
        path = seen.headers[":path"]
        if path.startswith("/reset-before/"):
            conn.reset_stream(sid, int(path.rsplit("/", 1)[1], 0))
            return
        if path.startswith("/reset-mid/"):
            conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
            conn.send_data(sid, b"m" * 1000)
            conn.reset_stream(sid, int(path.rsplit("/", 1)[1], 0))
            return
        conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
        conn.send_data(sid, b"hello ")
        conn.send_data(sid, b"world")
        conn.send_headers(sid, RESPONSE_TRAILERS, end_stream=True)


@contextlib.asynccontextmanager
async def _raw_to(via: str) -> AsyncIterator[tuple[H2Upstream, RawClient]]:
    """A frame-logging client of the h2 upstream: through the chaos proxy (``proxied``), or
    straight to it (``direct``, the control: it proves the upstream and the checks right)."""
    async with H2Upstream() as upstream:
        upstream_url = f"http://127.0.0.1:{upstream.port}"
        if via == "direct":
            async with RawClient(upstream_url) as client:
                yield upstream, client
            return
        async with serve(h2c=True, upstream=f"h2c://127.0.0.1:{upstream.port}") as front, \
                RawClient(front.url) as client:
            yield upstream, client


def _trailers(client: RawClient, sid: int) -> dict[str, str] | None:
    for _, ev in client.events:
        if isinstance(ev, TrailersReceived) and ev.stream_id == sid:
            return {k.decode(): v.decode() for k, v in ev.headers}
    return None


VIA = pytest.mark.parametrize("via", ["direct", "proxied"])


@VIA
async def test_trailers_pass_both_ways_without_a_synthetic_content_length(via: str) -> None:
    async with _raw_to(via) as (upstream, client):
        sid = client.open_stream("POST", "/trailers", headers=[
            ("te", "trailers"), ("content-type", "application/octet-stream")],
            end_stream=False)
        client.send_data(sid, b"request body")
        with client.corked():  # request trailers end the request stream
            client.core.send_headers(sid, [(b"x-request-checksum", b"crc32:1234")],
                                     end_stream=True)
        log = await client.wait_response(sid, timeout=5.0)
        trailers = _trailers(client, sid)
    assert log.reset_code is None, f"stream reset with 0x{log.reset_code:x}"
    assert log.status == 200, f"{log.status}: {bytes(log.body)[:300]!r}"
    headers = {k.decode(): v.decode() for k, v in log.headers}
    seen = upstream.seen["/trailers"]
    problems = []  # all of them at once: each is a separate thing the proxy must get right
    if bytes(log.body) != b"hello world":
        problems.append(f"response body {bytes(log.body)!r}")
    if "content-length" in headers:
        problems.append(f"content-length: {headers['content-length']} added to the response "
                        "(the upstream sent none)")
    if trailers != dict(RESPONSE_TRAILERS):
        problems.append(f"response trailers {trailers}, not {dict(RESPONSE_TRAILERS)}")
    if seen.headers.get("te") != "trailers":
        problems.append(f"the upstream got te: {seen.headers.get('te')}")
    if bytes(seen.body) != b"request body":
        problems.append(f"the upstream got the request body {bytes(seen.body)!r}")
    if seen.trailers != {"x-request-checksum": "crc32:1234"}:
        problems.append(f"the upstream got request trailers {seen.trailers}")
    assert not problems, "; ".join(problems)


@VIA
@pytest.mark.parametrize(("where", "code"), [
    ("before", 0x7),  # REFUSED_STREAM: not processed, the client may retry it anywhere
    ("before", 0xB),  # ENHANCE_YOUR_CALM
    ("mid", 0x2),     # INTERNAL_ERROR after the response started
    ("mid", 0x8),     # CANCEL
])
async def test_an_upstream_reset_reaches_the_client_with_the_same_code(
        via: str, where: str, code: int) -> None:
    async with _raw_to(via) as (_upstream, client):
        sid = client.open_stream("GET", f"/reset-{where}/{code}")
        log = await client.wait_response(sid, timeout=5.0)
    assert log.reset_code == code, (
        f"expected RST_STREAM 0x{code:x}; got status {log.status}, "
        f"reset {None if log.reset_code is None else hex(log.reset_code)}, body "
        f"{bytes(log.body)[:200]!r}")
    if where == "mid":
        assert log.status == 200, "the response headers sent before the reset were lost"
        assert bytes(log.body) == b"m" * len(log.body) and len(log.body) <= 1000
    else:
        assert log.status is None, "a response was sent before the upstream's reset"
