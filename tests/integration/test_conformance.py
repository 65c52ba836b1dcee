"""RFC 9113 (HTTP/2) sections 3-8 and RFC 7541 (HPACK): the chaos server with no faults.

One test per requirement, in the order of h2spec's case list (its section numbers are RFC
7540's where RFC 9113 renumbered; the docstrings cite RFC 9113). Every test writes frames built
by :class:`frames.FrameFactory` on a raw TCP connection to ``serve(h2c=True)`` and reads the
server's frames back with :class:`integration.rawclient.FrameParser`, independently of h2: a
conformance test must not trust the library it is testing.

What each error must look like on the wire:

* a **connection error** (RFC 9113 §5.4.1) is a GOAWAY with the required code, and then the
  server closes the TCP connection;
* a **stream error** (§5.4.2) is a RST_STREAM on that stream with the required code, no GOAWAY,
  and the connection stays usable: a ``GET /bytes/10`` on a new stream gets its 200 and body.

Where the RFC allows two codes (or either kind of error), both are accepted and the test says
why. Every case passes: where h2 or hyperframe decide a frame against the RFC before the core
sees it (a SETTINGS ACK with a payload, the reserved bit of a window increment, PRIORITY of
the wrong length, a stream depending on itself), the core corrects them. Every wait is bounded by
``WAIT`` seconds, and a test that sees the wrong kind of error fails at once instead of waiting
for the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hpack
import pytest

from frames import RESERVED_BIT, FrameFactory
from h2guard.chaos import ChaosServer, serve
from h2guard.codes import code_name

from .rawclient import (
    CONTINUATION,
    DATA,
    GOAWAY,
    HEADERS,
    PING,
    PRIORITY,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frame,
    FrameParser,
)

pytestmark = pytest.mark.timeout(15)


WAIT = 2.0
"""Seconds the server has to answer, reset, or close: every wait in this file is bounded."""
QUIET = 0.05
"""After a PING round trip proves the server read everything before it, how much longer to
watch for a frame that must *not* come (a DATA frame queued behind the PING ACK, say)."""

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 0x5, 0x6, 0x7, 0x8
COMPRESSION_ERROR = 0x9

HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 0x4, 0x5

FLAG_END_STREAM, FLAG_END_HEADERS, FLAG_PADDED, FLAG_PRIORITY = 0x1, 0x4, 0x8, 0x20
MAX_WINDOW = 2**31 - 1
BYTES10 = bytes(range(10))
"""The body of ``GET /bytes/10`` (the app serves a 0..255 byte pattern)."""
SLOW = "/delay/5000"
"""A request the server answers only after the test is over: its stream stays half-closed
(remote) on the server for as long as a test needs."""

T = TypeVar("T")
Headers = Sequence[tuple[str | bytes, str | bytes]]


def req(method: str = "GET", path: str = "/bytes/10", **kw: Any) -> list[tuple[Any, Any]]:
    """A request's header list (the four pseudo-headers first, ``extra`` after)."""
    return FrameFactory.request_headers(method, path, **kw)


# ------------------------------------------------------------------------------- the peer


@dataclass
class Reply:
    """What arrived on one stream: the final status, its headers, the body, a reset code."""

    status: int | None
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reset: int | None


class Peer:
    """One raw connection to the server: bytes out as the test builds them, frames in as the
    server wrote them (with the server's header blocks decoded by an HPACK decoder of our own,
    in order, so the dynamic table stays in step and a server HPACK mistake shows)."""

    _ping_ids = itertools.count(1)

    def __init__(self, server: ChaosServer, ff: FrameFactory) -> None:
        self.server = server
        self.ff = ff
        self.frames: list[Frame] = []
        self.closed: str | None = None  # "eof" or "reset", once the server let go
        self.decoder = hpack.Decoder()
        self.header_blocks: dict[int, list[list[tuple[bytes, bytes]]]] = {}
        self.decode_errors: list[Exception] = []
        self._parser = FrameParser()
        self._out = FrameParser(skip_preface=True)
        self._used: set[int] = {0}
        self._block = bytearray()
        self._block_sid = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    # ---------------------------------------------------------------- connection

    async def connect(self, settings: dict[int, int] | None = None, *,
                      hello: bool = True) -> Peer:
        """Open the TCP connection; with ``hello``, send the preface and ``settings``, wait
        for the server's SETTINGS, ACK them, and wait for the ACK of ours (so our settings
        are in force before the test sends anything else)."""
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.server.config.host, self.server.port), WAIT)
        if settings and HEADER_TABLE_SIZE in settings:
            self.decoder.max_allowed_table_size = settings[HEADER_TABLE_SIZE]
        if hello:
            self.send(self.ff.hello(settings))
            await self.wait_for(lambda: self.first(SETTINGS, 0, ack=False),
                                "the server's SETTINGS")
            self.send(self.ff.settings_ack())
            await self.wait_for(lambda: self.first(SETTINGS, 0, ack=True),
                                "the ACK of our SETTINGS")
        return self

    async def close(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._writer = None
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 1.0)

    def send(self, *chunks: bytes) -> None:
        """Write the chunks in one write (one segment on loopback, so frames that must be
        read together are)."""
        data = b"".join(chunks)
        for f in self._out.feed(data, time.monotonic()):
            self._used.add(f.stream_id)
        writer = self._writer
        if writer is not None and not writer.transport.is_closing():
            writer.write(data)

    def next_stream_id(self) -> int:
        """The next odd stream id above every stream id we sent a frame on (PRIORITY on an
        idle stream included: no test should depend on whether that "used" the id)."""
        top = max(self._used)
        return top + 2 if top % 2 else top + 1

    # ---------------------------------------------------------------- reading

    async def wait_for(self, predicate: Callable[[], T], what: str,
                       timeout: float = WAIT) -> T:
        """Read until ``predicate()`` is truthy and return it; fail with the frame log if the
        connection closes first or ``timeout`` passes."""
        assert self._reader is not None, "connect() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            if self.closed:
                raise AssertionError(f"the connection closed ({self.closed}) while waiting "
                                     f"for {what}\n{self.describe()}")
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n"
                                     f"{self.describe()}")
            try:
                data = await asyncio.wait_for(self._reader.read(65536), left)
            except TimeoutError:
                continue
            except OSError:  # ConnectionResetError, mostly
                self.closed = "reset"
                continue
            if not data:
                self.closed = "eof"
                continue
            for f in self._parser.feed(data, time.monotonic()):
                self.frames.append(f)
                self._header_block(f)

    def _header_block(self, f: Frame) -> None:
        if f.type in (HEADERS, PUSH_PROMISE):
            payload = f.payload
            if f.flags & FLAG_PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            if f.type == HEADERS and f.flags & FLAG_PRIORITY:
                payload = payload[5:]
            if f.type == PUSH_PROMISE:
                payload = payload[4:]
            self._block = bytearray(payload)
            self._block_sid = f.stream_id
        elif f.type == CONTINUATION:
            self._block += f.payload
        else:
            return
        if f.flags & FLAG_END_HEADERS:
            try:
                fields = self.decoder.decode(bytes(self._block), raw=True)
            except Exception as exc:  # the server's HPACK is wrong: the test says so
                self.decode_errors.append(exc)
                fields = []
            self.header_blocks.setdefault(self._block_sid, []).append(fields)

    def first(self, ftype: int, stream_id: int | None = None, **match: Any) -> Frame | None:
        for f in self.frames_of(ftype, stream_id, **match):
            return f
        return None

    def frames_of(self, ftype: int | None = None, stream_id: int | None = None,
                  **match: Any) -> list[Frame]:
        return [f for f in self.frames
                if (ftype is None or f.type == ftype)
                and (stream_id is None or f.stream_id == stream_id)
                and all(getattr(f, k) == v for k, v in match.items())]

    def describe(self) -> str:
        lines = [f"received {len(self.frames)} frames:"]
        lines += ["  " + str(f) for f in self.frames[-30:]]
        lines.append(f"closed={self.closed} decode_errors={self.decode_errors}")
        return "\n".join(lines)

    # ---------------------------------------------------------------- exchanges

    async def roundtrip(self) -> None:
        """PING and wait for its ACK: the server has read and acted on everything before."""
        payload = next(self._ping_ids).to_bytes(8, "big")
        self.send(self.ff.ping(payload))
        await self.wait_for(lambda: self.first(PING, 0, ack=True, payload=payload),
                            f"the ACK of PING {payload.hex()}")

    async def quiet(self) -> None:
        """A round trip, then :data:`QUIET` seconds more of reading."""
        await self.roundtrip()
        with contextlib.suppress(AssertionError):
            await self.wait_for(lambda: False, "nothing", QUIET)

    def data_length(self, sid: int) -> int:
        return sum(f.data_length for f in self.frames_of(DATA, sid))

    def ended(self, sid: int, since: int = 0) -> bool:
        """The server ended stream ``sid`` (in a frame at or after position ``since``)."""
        return any(f.end_stream and f.stream_id == sid for f in self.frames[since:])

    async def reply(self, sid: int, timeout: float = WAIT) -> Reply:
        """Wait for the end of stream ``sid`` (END_STREAM or RST_STREAM); a GOAWAY or a
        close ends the wait too, with whatever arrived."""
        await self.wait_for(lambda: self.ended(sid) or self.first(RST_STREAM, sid)
                            or self.first(GOAWAY) or self.closed,
                            f"the response on stream {sid}", timeout)
        status, headers = None, []
        for block in self.header_blocks.get(sid, []):
            value = dict(block).get(b":status")
            if value is not None and int(value) >= 200 and status is None:
                status, headers = int(value), block
        rst = self.first(RST_STREAM, sid)
        body = b"".join(f.data for f in self.frames_of(DATA, sid))
        return Reply(status, headers, body, rst.error_code if rst is not None else None)

    async def get(self, path: str = "/bytes/10", sid: int | None = None) -> Reply:
        sid = self.next_stream_id() if sid is None else sid
        self.send(self.ff.request(sid, path=path))
        return await self.reply(sid)

    async def assert_usable(self) -> None:
        """A new request on this connection completes: ``GET /bytes/10`` -> 200, 10 bytes."""
        sid = self.next_stream_id()
        got = await self.get("/bytes/10", sid)
        assert got.status == 200 and got.body == BYTES10 and got.reset is None, \
            f"the connection is not usable: stream {sid} got {got}\n{self.describe()}"
        assert self.first(GOAWAY) is None, f"a GOAWAY came:\n{self.describe()}"

    async def expect_connection_error(self, *codes: int) -> Frame:
        """A GOAWAY with one of ``codes``, then the server closes the connection."""
        want = " or ".join(code_name(c) for c in codes)
        await self.wait_for(lambda: self.first(GOAWAY) or self.first(RST_STREAM)
                            or self.closed, f"GOAWAY {want}")
        goaway = self.first(GOAWAY)
        assert goaway is not None, \
            f"expected a connection error (GOAWAY {want}), got:\n{self.describe()}"
        assert goaway.error_code in codes, \
            f"expected GOAWAY {want}, got {code_name(goaway.error_code)}:\n{self.describe()}"
        await self.wait_for(lambda: self.closed, "the server to close after its GOAWAY")
        return goaway

    async def expect_stream_error(self, sid: int, *codes: int) -> Frame:
        """RST_STREAM on ``sid`` with one of ``codes``, no GOAWAY, and a usable connection."""
        want = " or ".join(code_name(c) for c in codes)
        since = len(self.frames)  # a response from before (a closed stream's) is no answer
        await self.wait_for(lambda: self.first(RST_STREAM, sid) or self.first(GOAWAY)
                            or self.closed or self.ended(sid, since),
                            f"RST_STREAM[{sid}] {want}")
        rst = self.first(RST_STREAM, sid)
        assert rst is not None, \
            f"expected a stream error (RST_STREAM[{sid}] {want}), got:\n{self.describe()}"
        assert rst.error_code in codes, \
            f"expected RST_STREAM {want}, got {code_name(rst.error_code)}:\n{self.describe()}"
        assert self.first(GOAWAY) is None, f"a GOAWAY came too:\n{self.describe()}"
        await self.assert_usable()
        return rst

    async def expect_stream_or_connection_error(self, sid: int, *codes: int) -> Frame:
        """Where the RFC lets the receiver choose (RFC 9113 §5.1 "closed": a frame on a closed
        stream MAY be a connection error): either error, with one of ``codes``."""
        since = len(self.frames)
        await self.wait_for(lambda: self.first(RST_STREAM, sid) or self.first(GOAWAY)
                            or self.closed or self.ended(sid, since),
                            f"RST_STREAM[{sid}] or GOAWAY")
        if self.first(GOAWAY) is not None:
            return await self.expect_connection_error(*codes)
        return await self.expect_stream_error(sid, *codes)

    async def expect_ignored(self) -> None:
        """No error: a PING is still answered, nothing was reset, a request still works."""
        await self.roundtrip()
        assert not self.frames_of(RST_STREAM) and not self.frames_of(GOAWAY), self.describe()
        await self.assert_usable()


# ------------------------------------------------------------------------------- fixtures


@pytest.fixture
async def server() -> AsyncIterator[ChaosServer]:
    """A chaos server with no faults, h2c with prior knowledge (a server per test: it starts
    in milliseconds, and no test can leave state behind for the next)."""
    async with serve(h2c=True) as srv:
        yield srv


@pytest.fixture
async def raw_peer(server: ChaosServer, frame_factory: FrameFactory) -> AsyncIterator[Peer]:
    """A peer not yet connected (for tests that send their own preface or settings)."""
    peer = Peer(server, frame_factory)
    try:
        yield peer
    finally:
        await peer.close()


@pytest.fixture
async def peer(raw_peer: Peer) -> Peer:
    """A peer past the preface and the SETTINGS exchange (empty SETTINGS of ours)."""
    return await raw_peer.connect()


# ------------------------------------------------------------------- 3.4 connection preface


async def test_3_4_server_preface_is_settings(raw_peer: Peer) -> None:
    """§3.4: the server's preface is a SETTINGS frame, which MUST be the first frame it
    sends; our SETTINGS MUST be acknowledged. A server MUST NOT announce push (§6.5.2)."""
    await raw_peer.connect()
    first = raw_peer.frames[0]
    assert first.type == SETTINGS and not first.ack and first.stream_id == 0, raw_peer.describe()
    assert first.settings.get(ENABLE_PUSH, 0) == 0
    assert raw_peer.first(SETTINGS, 0, ack=True) is not None


async def test_3_4_invalid_preface(raw_peer: Peer) -> None:
    """§3.4: an invalid connection preface is a connection error PROTOCOL_ERROR; the GOAWAY
    MAY be omitted (the peer is not speaking HTTP/2), so a plain close passes too."""
    await raw_peer.connect(hello=False)
    raw_peer.send(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", raw_peer.ff.settings())
    await raw_peer.wait_for(lambda: raw_peer.first(GOAWAY) or raw_peer.closed, "a close")
    goaway = raw_peer.first(GOAWAY)
    if goaway is not None:
        assert goaway.error_code == PROTOCOL_ERROR, raw_peer.describe()
        await raw_peer.wait_for(lambda: raw_peer.closed, "the close after GOAWAY")


async def test_3_4_preface_not_followed_by_settings(raw_peer: Peer) -> None:
    """§3.4: the client magic MUST be followed by a SETTINGS frame; anything else makes the
    preface invalid: a connection error PROTOCOL_ERROR."""
    await raw_peer.connect(hello=False)
    raw_peer.send(raw_peer.ff.preface(), raw_peer.ff.ping(b"notfirst"))
    await raw_peer.expect_connection_error(PROTOCOL_ERROR)


# ------------------------------------------------------------------------ 4.1 frame format


async def test_4_1_unknown_frame_type_ignored(peer: Peer) -> None:
    """§4.1, §5.5: implementations MUST ignore and discard frames of unknown types."""
    peer.send(peer.ff.unknown(0xFA, 0x00, 0, b"hello"), peer.ff.unknown(0x20, 0xFF, 1, b"x"))
    await peer.expect_ignored()


async def test_4_1_unknown_flags_ignored(peer: Peer) -> None:
    """§4.1: flags with no semantics for a frame type MUST be ignored (on PING, HEADERS and
    DATA here: the response still arrives, the body is echoed)."""
    payload = b"flagsxx!"
    peer.send(peer.ff.frame(PING, 0xFE, 0, payload))  # 0xFE: everything but ACK
    await peer.wait_for(lambda: peer.first(PING, 0, ack=True, payload=payload), "PING ACK")
    peer.send(peer.ff.headers(1, req("POST", "/echo"), flags=0x10 | 0x40 | 0x80),
              peer.ff.data(1, b"abc", end_stream=True, flags=0x2 | 0x4 | 0x10))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, b"abc"), peer.describe()


async def test_4_1_reserved_bit_ignored(peer: Peer) -> None:
    """§4.1: the reserved bit before the stream identifier MUST be ignored on receipt."""
    peer.send(peer.ff.frame(HEADERS, FLAG_END_STREAM | FLAG_END_HEADERS, 1,
                            peer.ff.encode(req()), reserved=True))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_6_9_reserved_bit_in_window_increment_ignored(peer: Peer) -> None:
    """§6.9: the reserved bit in front of a WINDOW_UPDATE increment MUST be ignored when
    receiving (so this is an increment of 1, not an out-of-range one)."""
    peer.send(peer.ff.window_update(0, RESERVED_BIT | 1))
    await peer.expect_ignored()


# -------------------------------------------------------------------------- 4.2 frame size


async def test_4_2_data_of_max_frame_size_accepted(peer: Peer) -> None:
    """§4.2: every endpoint MUST be capable of receiving frames of 2^14 octets."""
    body = bytes(range(256)) * 64
    peer.send(peer.ff.headers(1, req("POST", "/echo", extra=[("content-length", "16384")])),
              peer.ff.data(1, body, end_stream=True))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, body), peer.describe()


async def test_4_2_data_larger_than_max_frame_size(peer: Peer) -> None:
    """§4.2: a frame over SETTINGS_MAX_FRAME_SIZE MUST get FRAME_SIZE_ERROR; for DATA on a
    stream either a stream or a connection error."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.data(1, b"x" * 16385))
    await peer.expect_stream_or_connection_error(1, FRAME_SIZE_ERROR)


async def test_4_2_headers_larger_than_max_frame_size(peer: Peer) -> None:
    """§4.2: an oversized frame carrying a field block (HEADERS) alters connection state: a
    connection error FRAME_SIZE_ERROR."""
    peer.send(peer.ff.request(1, extra=[("x-big", "v" * 16500)]))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


async def test_4_2_frame_too_small_for_mandatory_fields(peer: Peer) -> None:
    """§4.2: a frame too small to contain mandatory frame data (HEADERS with PRIORITY and 3
    payload octets) is FRAME_SIZE_ERROR, a connection error for a field-block frame."""
    peer.send(peer.ff.frame(HEADERS, FLAG_PRIORITY | FLAG_END_HEADERS, 1, b"\0\0\0"))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


# ------------------------------------------------------------- 4.3 field block compression


async def test_4_3_invalid_field_block(peer: Peer) -> None:
    """§4.3: a field block that cannot be decompressed is a connection error
    COMPRESSION_ERROR (a literal whose name length runs past the end of the block)."""
    peer.send(peer.ff.headers(1, peer.ff.encode(req()) + b"\x00\x05ab", end_stream=True))
    await peer.expect_connection_error(COMPRESSION_ERROR)


async def test_4_3_priority_inside_field_block(peer: Peer) -> None:
    """§4.3: a field block MUST be a contiguous sequence of frames; anything in between is a
    connection error PROTOCOL_ERROR."""
    block = peer.ff.encode(req())
    peer.send(peer.ff.headers(1, block[:5], end_stream=True, end_headers=False),
              peer.ff.priority(1, 0, 16),
              peer.ff.continuation(1, block[5:]))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_4_3_headers_for_another_stream_inside_field_block(peer: Peer) -> None:
    """§4.3: no frame from another stream inside a field block: PROTOCOL_ERROR."""
    block = peer.ff.encode(req())
    peer.send(peer.ff.headers(1, block[:5], end_stream=True, end_headers=False),
              peer.ff.request(3),
              peer.ff.continuation(1, block[5:]))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_4_3_field_block_in_many_continuations(peer: Peer) -> None:
    """§4.3, §6.10: a field block split over HEADERS and several CONTINUATIONs is one block."""
    headers = req(extra=[("x-long", "v" * 200)])
    peer.send(peer.ff.headers_split(1, headers, chunk=16, end_stream=True))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


# ------------------------------------------------------------------------ 5.1 stream states


async def test_5_1_idle_data(peer: Peer) -> None:
    """§5.1 idle: any frame but HEADERS or PRIORITY is a connection error PROTOCOL_ERROR.
    (§6.1 would say STREAM_CLOSED for DATA outside open/half-closed(local); the idle rule is
    the specific one, and h2spec accepts either.)"""
    peer.send(peer.ff.data(1, b"x", end_stream=True))
    await peer.expect_connection_error(PROTOCOL_ERROR, STREAM_CLOSED)


async def test_5_1_idle_rst_stream(peer: Peer) -> None:
    """§5.1 idle, §6.4: RST_STREAM on an idle stream: connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.rst_stream(1, CANCEL))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_5_1_idle_window_update(peer: Peer) -> None:
    """§5.1 idle: WINDOW_UPDATE on an idle stream: connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.window_update(1, 100))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_5_1_idle_continuation(peer: Peer) -> None:
    """§5.1 idle, §6.10: CONTINUATION on an idle stream: connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.continuation(1, peer.ff.encode(req())))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_5_1_idle_priority_accepted(peer: Peer) -> None:
    """§5.1 idle: PRIORITY is allowed on an idle stream (and does not open it)."""
    peer.send(peer.ff.priority(3, 0, 32))
    await peer.expect_ignored()


async def test_5_1_half_closed_remote_data(peer: Peer) -> None:
    """§5.1 half-closed (remote), §6.1: DATA after the client's END_STREAM MUST be a stream
    error STREAM_CLOSED."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.data(1, b"late"))
    await peer.expect_stream_error(1, STREAM_CLOSED)


async def test_5_1_half_closed_remote_headers(peer: Peer) -> None:
    """§5.1 half-closed (remote): HEADERS after END_STREAM MUST be a stream error
    STREAM_CLOSED."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.headers(1, [("x-trailer", "late")], end_stream=True))
    await peer.expect_stream_error(1, STREAM_CLOSED)


async def test_5_1_half_closed_remote_continuation(peer: Peer) -> None:
    """§5.1, §6.10: a CONTINUATION not preceded by an unfinished field block is a connection
    error PROTOCOL_ERROR (that rule comes first; STREAM_CLOSED is accepted too, as h2spec
    does, for a receiver that checks the stream state first)."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.continuation(1, peer.ff.encode([("x-trailer", "late")])))
    await peer.expect_stream_or_connection_error(1, PROTOCOL_ERROR, STREAM_CLOSED)


async def test_5_1_half_closed_remote_allows_window_update_priority_rst(peer: Peer) -> None:
    """§5.1 half-closed (remote): WINDOW_UPDATE, PRIORITY and RST_STREAM remain allowed; the
    client's RST_STREAM is not answered by one (§5.4.2: no RST_STREAM for a RST_STREAM)."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.window_update(1, 1000), peer.ff.priority(1, 0, 200),
              peer.ff.rst_stream(1, CANCEL))
    await peer.expect_ignored()


async def test_5_1_closed_data(peer: Peer) -> None:
    """§5.1 closed, §6.1: DATA on a stream both sides ended is STREAM_CLOSED; §5.1 lets the
    receiver make it a connection error."""
    assert (await peer.get(sid=1)).status == 200
    peer.send(peer.ff.data(1, b"late"))
    await peer.expect_stream_or_connection_error(1, STREAM_CLOSED)


async def test_5_1_closed_headers(peer: Peer) -> None:
    """§5.1 closed: HEADERS on a closed stream is STREAM_CLOSED (stream or connection
    error)."""
    assert (await peer.get(sid=1)).status == 200
    peer.send(peer.ff.request(1))
    await peer.expect_stream_or_connection_error(1, STREAM_CLOSED)


async def test_5_1_closed_after_client_reset_data(peer: Peer) -> None:
    """§5.1 closed: after the client's RST_STREAM, further DATA is STREAM_CLOSED (stream or
    connection error)."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.rst_stream(1, CANCEL))
    await peer.roundtrip()
    peer.send(peer.ff.data(1, b"late"))
    await peer.expect_stream_or_connection_error(1, STREAM_CLOSED)


async def test_5_1_closed_after_client_reset_headers(peer: Peer) -> None:
    """§5.1 closed: after the client's RST_STREAM, HEADERS is STREAM_CLOSED (stream or
    connection error)."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.rst_stream(1, CANCEL))
    await peer.roundtrip()
    peer.send(peer.ff.headers(1, [("x-trailer", "late")], end_stream=True))
    await peer.expect_stream_or_connection_error(1, STREAM_CLOSED)


async def test_5_1_closed_allows_priority_window_update_rst(peer: Peer) -> None:
    """§5.1 closed: PRIORITY may be sent on a closed stream; a WINDOW_UPDATE or RST_STREAM
    racing the close must be tolerated."""
    assert (await peer.get(sid=1)).status == 200
    peer.send(peer.ff.priority(1, 0, 8), peer.ff.window_update(1, 100),
              peer.ff.rst_stream(1, CANCEL))
    await peer.expect_ignored()


async def test_5_1_1_even_stream_id(peer: Peer) -> None:
    """§5.1.1: client streams MUST use odd identifiers; an unexpected identifier is a
    connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.request(2))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_5_1_1_decreasing_stream_id(peer: Peer) -> None:
    """§5.1.1: a new stream's identifier MUST be greater than every one the client opened:
    connection error PROTOCOL_ERROR (STREAM_CLOSED accepted too: stream 3 is implicitly
    closed by the use of 5, §5.1.1, and §5.1 lets that be a connection error)."""
    assert (await peer.get(sid=5)).status == 200
    peer.send(peer.ff.request(3))
    await peer.expect_connection_error(PROTOCOL_ERROR, STREAM_CLOSED)


async def test_5_1_2_concurrent_stream_limit(peer: Peer) -> None:
    """§5.1.2: HEADERS that exceed the advertised SETTINGS_MAX_CONCURRENT_STREAMS MUST be a
    stream error PROTOCOL_ERROR or REFUSED_STREAM (REFUSED_STREAM: safe to retry, §8.7)."""
    server_settings = peer.first(SETTINGS, 0, ack=False)
    assert server_settings is not None
    limit = server_settings.settings.get(MAX_CONCURRENT_STREAMS)
    assert limit is not None and limit <= 1000, "the server must announce a stream limit"
    sids = [1 + 2 * n for n in range(limit + 1)]
    peer.send(*(peer.ff.headers(sid, req("POST", "/echo")) for sid in sids))
    over = sids[-1]
    await peer.wait_for(lambda: peer.first(RST_STREAM, over) or peer.first(GOAWAY)
                        or peer.closed, f"RST_STREAM[{over}]")
    assert [f.stream_id for f in peer.frames_of(RST_STREAM)] == [over], peer.describe()
    assert peer.first(RST_STREAM, over).error_code in (REFUSED_STREAM, PROTOCOL_ERROR)  # type: ignore[union-attr]
    peer.send(peer.ff.rst_stream(1, CANCEL))  # make room, then the connection still works
    await peer.assert_usable()


# ------------------------------------------------------------------- 5.3 stream priority


async def test_5_3_1_headers_depending_on_itself(peer: Peer) -> None:
    """§5.3.1: a stream cannot depend on itself: a stream error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req(), end_stream=True, priority=(1, 16)))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_5_3_1_priority_depending_on_itself(peer: Peer) -> None:
    """§5.3.1, §6.3: a PRIORITY frame making a stream depend on itself: stream error
    PROTOCOL_ERROR."""
    peer.send(peer.ff.priority(1, depends_on=1))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_5_3_priority_in_headers_accepted(peer: Peer) -> None:
    """§5.3, §6.2: a HEADERS with a priority block (deprecated, still parsed) is served."""
    peer.send(peer.ff.headers(1, req(), end_stream=True, priority=(0, 256, True)))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


# ---------------------------------------------------------------- 5.4 error handling


async def test_5_4_1_connection_error_goaway_then_close(peer: Peer) -> None:
    """§5.4.1: a connection error sends GOAWAY with the last stream the server processed,
    then the server MUST close the TCP connection."""
    assert (await peer.get(sid=1)).status == 200
    peer.send(peer.ff.ping(b"seven!!"))  # 7 octets: FRAME_SIZE_ERROR
    goaway = await peer.expect_connection_error(FRAME_SIZE_ERROR)
    assert goaway.last_stream_id == 1, peer.describe()


async def test_5_4_2_no_rst_stream_for_rst_stream(peer: Peer) -> None:
    """§5.4.2: an endpoint MUST NOT send RST_STREAM in response to RST_STREAM."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.rst_stream(1, CANCEL))
    await peer.expect_ignored()


# --------------------------------------------------------------------- 5.5 extensions


async def test_5_5_unknown_extension_frame_ignored(peer: Peer) -> None:
    """§5.5: unknown extension frames MUST be ignored, on stream 0 and on open streams."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")),
              peer.ff.unknown(0x16, 0x00, 0, b"ext"), peer.ff.unknown(0x16, 0x01, 1, b"ext"),
              peer.ff.data(1, b"abc", end_stream=True))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, b"abc"), peer.describe()


async def test_5_5_unknown_extension_frame_inside_field_block(peer: Peer) -> None:
    """§5.5: an extension frame in the middle of a field block is a connection error
    PROTOCOL_ERROR."""
    block = peer.ff.encode(req())
    peer.send(peer.ff.headers(1, block[:5], end_stream=True, end_headers=False),
              peer.ff.unknown(0x16, 0, 1, b"ext"),
              peer.ff.continuation(1, block[5:]))
    await peer.expect_connection_error(PROTOCOL_ERROR)


# ------------------------------------------------------------------------------- 6.1 DATA


async def test_6_1_data_on_stream_0(peer: Peer) -> None:
    """§6.1: DATA with stream identifier 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.data(0, b"x"))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_1_data_invalid_pad_length(peer: Peer) -> None:
    """§6.1: padding as long as the payload or longer is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")),
              peer.ff.data(1, b"abc", end_stream=True, pad_length=10))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_1_padded_data_accepted(peer: Peer) -> None:
    """§6.1: padding is not data: the application sees the body without it."""
    peer.send(peer.ff.headers(1, req("POST", "/echo", extra=[("content-length", "3")])),
              peer.ff.data(1, b"abc", end_stream=True, padding=20))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, b"abc"), peer.describe()


# ---------------------------------------------------------------------------- 6.2 HEADERS


async def test_6_2_headers_on_stream_0(peer: Peer) -> None:
    """§6.2: HEADERS with stream identifier 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.request(0))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_2_headers_invalid_pad_length(peer: Peer) -> None:
    """§6.2: padding that exceeds the room left for the field block fragment is
    PROTOCOL_ERROR (a connection error: HEADERS carries a field block)."""
    block = peer.ff.encode(req())
    peer.send(peer.ff.headers(1, block, end_stream=True, pad_length=len(block) + 5))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_2_padded_headers_accepted(peer: Peer) -> None:
    """§6.2: padded HEADERS are a request like any other."""
    peer.send(peer.ff.headers(1, req(), end_stream=True, padding=16))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


# --------------------------------------------------------------------------- 6.3 PRIORITY


async def test_6_3_priority_on_stream_0(peer: Peer) -> None:
    """§6.3: PRIORITY with stream identifier 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.priority(0, 1, 16))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_3_priority_wrong_length(peer: Peer) -> None:
    """§6.3: a PRIORITY frame whose length is not 5 is a *stream* error FRAME_SIZE_ERROR."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.frame(PRIORITY, 0, 1, b"\0\0\0\0"))
    await peer.expect_stream_error(1, FRAME_SIZE_ERROR)


# ------------------------------------------------------------------------- 6.4 RST_STREAM


async def test_6_4_rst_stream_on_stream_0(peer: Peer) -> None:
    """§6.4: RST_STREAM with stream identifier 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.rst_stream(0, CANCEL))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_4_rst_stream_wrong_length(peer: Peer) -> None:
    """§6.4: RST_STREAM whose length is not 4 is a connection error FRAME_SIZE_ERROR."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.frame(RST_STREAM, 0, 1, b"\0\0\0\x08\0"))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


# --------------------------------------------------------------------------- 6.5 SETTINGS


async def test_6_5_settings_ack_with_payload(peer: Peer) -> None:
    """§6.5: SETTINGS with ACK and a payload is a connection error FRAME_SIZE_ERROR."""
    peer.send(peer.ff.settings({INITIAL_WINDOW_SIZE: 100}, ack=True))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


async def test_6_5_settings_on_a_stream(peer: Peer) -> None:
    """§6.5: SETTINGS on a stream other than 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.settings({INITIAL_WINDOW_SIZE: 100}, stream_id=1))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_5_settings_length_not_multiple_of_6(peer: Peer) -> None:
    """§6.5: a SETTINGS length that is not a multiple of 6 is FRAME_SIZE_ERROR."""
    peer.send(peer.ff.frame(SETTINGS, 0, 0, b"\0\x03\0\0\0\x64\0\0"))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


async def test_6_5_2_invalid_enable_push(peer: Peer) -> None:
    """§6.5.2: SETTINGS_ENABLE_PUSH other than 0 or 1 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.settings({ENABLE_PUSH: 2}))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_5_2_initial_window_size_too_large(peer: Peer) -> None:
    """§6.5.2: SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1 is a connection error
    FLOW_CONTROL_ERROR."""
    peer.send(peer.ff.settings({INITIAL_WINDOW_SIZE: MAX_WINDOW + 1}))
    await peer.expect_connection_error(FLOW_CONTROL_ERROR)


@pytest.mark.parametrize("value", [2**14 - 1, 2**24], ids=["below_2^14", "above_2^24-1"])
async def test_6_5_2_max_frame_size_out_of_range(peer: Peer, value: int) -> None:
    """§6.5.2: SETTINGS_MAX_FRAME_SIZE outside 2^14..2^24-1 is a connection error
    PROTOCOL_ERROR."""
    peer.send(peer.ff.settings({MAX_FRAME_SIZE: value}))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_5_2_unknown_setting_ignored(peer: Peer) -> None:
    """§6.5.2: an unknown or unsupported setting MUST be ignored (and the frame ACKed)."""
    peer.send(peer.ff.settings({0xFF: 1, 0x4242: 0xFFFFFFFF}))
    await peer.wait_for(lambda: len(peer.frames_of(SETTINGS, 0, ack=True)) == 2, "SETTINGS ACK")
    await peer.expect_ignored()


async def test_6_5_3_settings_acknowledged(peer: Peer) -> None:
    """§6.5.3: every SETTINGS without ACK MUST be answered by a SETTINGS ACK, promptly and
    with an empty payload."""
    peer.send(peer.ff.settings({MAX_CONCURRENT_STREAMS: 10}), peer.ff.settings())
    await peer.wait_for(lambda: len(peer.frames_of(SETTINGS, 0, ack=True)) == 3,
                        "two more SETTINGS ACKs")
    assert all(f.payload == b"" for f in peer.frames_of(SETTINGS, 0, ack=True))


async def test_6_5_3_settings_values_processed_in_order(raw_peer: Peer) -> None:
    """§6.5.3: the values in a SETTINGS frame MUST be processed in order: the last
    INITIAL_WINDOW_SIZE (1) wins, so the server sends one byte of body and waits."""
    await raw_peer.connect()
    peer = raw_peer
    peer.send(peer.ff.settings([(INITIAL_WINDOW_SIZE, 100), (INITIAL_WINDOW_SIZE, 1)]))
    await peer.wait_for(lambda: len(peer.frames_of(SETTINGS, 0, ack=True)) == 2, "SETTINGS ACK")
    peer.send(peer.ff.request(1, path="/bytes/10"))
    await peer.wait_for(lambda: peer.first(DATA, 1), "the first DATA")
    await peer.quiet()
    assert [f.data_length for f in peer.frames_of(DATA, 1)] == [1], peer.describe()


# ------------------------------------------------------------------------------- 6.7 PING


async def test_6_7_ping_acked_with_same_payload(peer: Peer) -> None:
    """§6.7: a PING without ACK MUST be answered with ACK and an identical payload."""
    payload = b"\x00\xffping\x01\x02"
    peer.send(peer.ff.ping(payload))
    ack = await peer.wait_for(lambda: peer.first(PING, 0, ack=True, payload=payload),
                              "PING ACK")
    assert ack.stream_id == 0


async def test_6_7_ping_ack_not_answered(peer: Peer) -> None:
    """§6.7: an endpoint MUST NOT respond to a PING with ACK."""
    peer.send(peer.ff.ping(b"ackedack", ack=True))
    await peer.quiet()
    assert peer.first(PING, 0, payload=b"ackedack") is None, peer.describe()


async def test_6_7_ping_on_a_stream(peer: Peer) -> None:
    """§6.7: PING on a stream other than 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.ping(b"12345678", stream_id=1))
    await peer.expect_connection_error(PROTOCOL_ERROR)


@pytest.mark.parametrize("payload", [b"1234567", b"123456789"], ids=["7", "9"])
async def test_6_7_ping_wrong_length(peer: Peer, payload: bytes) -> None:
    """§6.7: a PING whose length is not 8 is a connection error FRAME_SIZE_ERROR."""
    peer.send(peer.ff.ping(payload))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


# ----------------------------------------------------------------------------- 6.8 GOAWAY


async def test_6_8_goaway_on_a_stream(peer: Peer) -> None:
    """§6.8: GOAWAY on a stream other than 0 is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.goaway(0, NO_ERROR, stream_id=1))
    await peer.expect_connection_error(PROTOCOL_ERROR)


# ---------------------------------------------------------------------- 6.9 WINDOW_UPDATE


async def test_6_9_window_update_zero_on_connection(peer: Peer) -> None:
    """§6.9: an increment of 0 for the connection window is a connection error
    PROTOCOL_ERROR."""
    peer.send(peer.ff.window_update(0, 0))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_9_window_update_zero_on_stream(peer: Peer) -> None:
    """§6.9: an increment of 0 for a stream window is a *stream* error PROTOCOL_ERROR."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.window_update(1, 0))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_6_9_window_update_wrong_length(peer: Peer) -> None:
    """§6.9: WINDOW_UPDATE whose length is not 4 is a connection error FRAME_SIZE_ERROR."""
    peer.send(peer.ff.frame(WINDOW_UPDATE, 0, 0, b"\0\0\x01"))
    await peer.expect_connection_error(FRAME_SIZE_ERROR)


async def test_6_9_1_connection_window_overflow(peer: Peer) -> None:
    """§6.9.1: a WINDOW_UPDATE taking the connection window past 2^31-1 is a connection
    error FLOW_CONTROL_ERROR."""
    peer.send(peer.ff.window_update(0, MAX_WINDOW), peer.ff.window_update(0, MAX_WINDOW))
    await peer.expect_connection_error(FLOW_CONTROL_ERROR)


async def test_6_9_1_stream_window_overflow(peer: Peer) -> None:
    """§6.9.1: a WINDOW_UPDATE taking a stream window past 2^31-1 is a stream error
    FLOW_CONTROL_ERROR (RST_STREAM)."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.window_update(1, MAX_WINDOW))
    await peer.expect_stream_error(1, FLOW_CONTROL_ERROR)


async def test_6_9_1_sender_respects_the_window(raw_peer: Peer) -> None:
    """§6.9.1: a sender MUST NOT send more than the window allows: with an initial window of
    1 the server sends one byte, and the rest only after our WINDOW_UPDATE."""
    peer = await raw_peer.connect({INITIAL_WINDOW_SIZE: 1})
    peer.send(peer.ff.request(1, path="/bytes/10"))
    await peer.wait_for(lambda: peer.first(DATA, 1), "the first DATA")
    await peer.quiet()
    assert [f.data_length for f in peer.frames_of(DATA, 1)] == [1], peer.describe()
    peer.send(peer.ff.window_update(1, 9))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_6_9_2_initial_window_size_change_applies_to_open_streams(raw_peer: Peer) -> None:
    """§6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE MUST adjust every open stream's window by
    the difference: from 0 (nothing may be sent) to 10 (the whole body)."""
    peer = await raw_peer.connect({INITIAL_WINDOW_SIZE: 0})
    peer.send(peer.ff.request(1, path="/bytes/10"))
    await peer.wait_for(lambda: peer.first(HEADERS, 1), "the response HEADERS")
    await peer.quiet()
    assert peer.first(DATA, 1) is None, peer.describe()
    peer.send(peer.ff.settings({INITIAL_WINDOW_SIZE: 10}))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_6_9_2_window_may_become_negative(raw_peer: Peer) -> None:
    """§6.9.2: lowering SETTINGS_INITIAL_WINDOW_SIZE can make a window negative; the sender
    MUST NOT send until WINDOW_UPDATEs make it positive again."""
    peer = await raw_peer.connect({INITIAL_WINDOW_SIZE: 5})
    peer.send(peer.ff.request(1, path="/bytes/10"))
    await peer.wait_for(lambda: peer.data_length(1) == 5, "5 bytes of body")
    peer.send(peer.ff.settings({INITIAL_WINDOW_SIZE: 2}))  # window: 0 - 3 = -3
    peer.send(peer.ff.window_update(1, 3))  # -3 + 3 = 0: still nothing to send
    await peer.quiet()
    assert peer.data_length(1) == 5, peer.describe()
    peer.send(peer.ff.window_update(1, 5))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_6_9_2_initial_window_size_too_large_later(peer: Peer) -> None:
    """§6.9.2: a SETTINGS_INITIAL_WINDOW_SIZE that takes a stream window past 2^31-1 (or is
    above it) MUST be treated as a connection error FLOW_CONTROL_ERROR."""
    peer.send(peer.ff.request(1, path=SLOW))
    await peer.roundtrip()
    peer.send(peer.ff.settings({INITIAL_WINDOW_SIZE: MAX_WINDOW + 1}))
    await peer.expect_connection_error(FLOW_CONTROL_ERROR)


# ----------------------------------------------------------------------- 6.10 CONTINUATION


async def test_6_10_continuation_followed_by_other_frame(peer: Peer) -> None:
    """§6.10: a field block not ended (no END_HEADERS) MUST be followed by a CONTINUATION
    of the same stream; any other frame is a connection error PROTOCOL_ERROR."""
    block = peer.ff.encode(req())
    peer.send(peer.ff.headers(1, block[:4], end_stream=True, end_headers=False),
              peer.ff.continuation(1, block[4:8], end_headers=False),
              peer.ff.ping(b"inbetwee"))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_10_continuation_on_stream_0(peer: Peer) -> None:
    """§6.10: CONTINUATION with stream identifier 0 is a connection error PROTOCOL_ERROR."""
    block = peer.ff.encode(req())
    peer.send(peer.ff.headers(1, block[:4], end_stream=True, end_headers=False),
              peer.ff.continuation(0, block[4:]))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_10_continuation_after_headers_with_end_headers(peer: Peer) -> None:
    """§6.10: CONTINUATION after a HEADERS that had END_HEADERS is a connection error
    PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo"), end_headers=True),
              peer.ff.continuation(1, peer.ff.encode([("x-more", "1")])))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_10_continuation_after_continuation_with_end_headers(peer: Peer) -> None:
    """§6.10: CONTINUATION after a CONTINUATION that had END_HEADERS: PROTOCOL_ERROR."""
    block = peer.ff.encode(req("POST", "/echo"))
    peer.send(peer.ff.headers(1, block[:4], end_headers=False),
              peer.ff.continuation(1, block[4:], end_headers=True),
              peer.ff.continuation(1, peer.ff.encode([("x-more", "1")])))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_6_10_continuation_after_data(peer: Peer) -> None:
    """§6.10: CONTINUATION after a DATA frame is a connection error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.data(1, b"abc"),
              peer.ff.continuation(1, peer.ff.encode([("x-more", "1")])))
    await peer.expect_connection_error(PROTOCOL_ERROR)


# -------------------------------------------------------------------------- 7 error codes


async def test_7_unknown_error_code_in_rst_stream(peer: Peer) -> None:
    """§7: unknown error codes MUST NOT trigger any special behaviour."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.rst_stream(1, 0x4242))
    await peer.expect_ignored()


async def test_7_unknown_error_code_in_goaway(peer: Peer) -> None:
    """§7: a GOAWAY with an unknown code is a GOAWAY like any other: the server goes on
    answering PING and finishes the streams at or below last_stream_id."""
    peer.send(peer.ff.request(1, path="/delay/50"), peer.ff.goaway(1, 0x4242, b"bye"))
    await peer.roundtrip()
    got = await peer.reply(1)
    assert got.status == 200 and got.reset is None, peer.describe()


# ------------------------------------------------------------- 8.1 HTTP message exchanges


async def test_8_1_second_headers_without_end_stream(peer: Peer) -> None:
    """§8.1: a HEADERS without END_STREAM after the request's HEADERS makes the request
    malformed: a stream error PROTOCOL_ERROR (§8.1.1)."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.data(1, b"abc"),
              peer.ff.headers(1, [("x-trailer", "1")], end_stream=False))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_1_trailers_accepted(peer: Peer) -> None:
    """§8.1: a trailer section (HEADERS with END_STREAM after DATA) ends the request."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.data(1, b"abc"),
              peer.ff.headers(1, [("x-trailer", "1")], end_stream=True))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, b"abc"), peer.describe()


async def test_8_1_trailers_with_pseudo_header(peer: Peer) -> None:
    """§8.3: pseudo-header fields MUST NOT appear in a trailer section: malformed, a stream
    error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")), peer.ff.data(1, b"abc"),
              peer.ff.headers(1, [(":path", "/x"), ("x-trailer", "1")], end_stream=True))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


def _without(name: str) -> list[tuple[Any, Any]]:
    return [(k, v) for k, v in req() if k != name]


def _with_twice(name: str) -> list[tuple[Any, Any]]:
    headers = req()
    return [*headers, next((k, v) for k, v in headers if k == name)]


def _malformed(id_: str, headers: Headers, rfc: str) -> Any:
    return pytest.param(headers, rfc, id=id_)


MALFORMED: list[Any] = [
    _malformed("uppercase_name", req(extra=[("X-Upper", "1")]), "§8.2.1"),
    _malformed("space_in_name", req(extra=[("x bad", "1")]), "§8.2.1"),
    _malformed("colon_in_name", req(extra=[("x:bad", "1")]), "§8.2.1"),
    _malformed("nul_in_value", req(extra=[("x-bad", "a\x00b")]), "§8.2.1"),
    _malformed("cr_in_value", req(extra=[("x-bad", "a\rb")]), "§8.2.1"),
    _malformed("lf_in_value", req(extra=[("x-bad", "a\nb")]), "§8.2.1"),
    _malformed("leading_space_in_value", req(extra=[("x-bad", " a")]), "§8.2.1"),
    _malformed("trailing_tab_in_value", req(extra=[("x-bad", "a\t")]), "§8.2.1"),
    _malformed("connection", req(extra=[("connection", "keep-alive")]), "§8.2.2"),
    _malformed("keep_alive", req(extra=[("keep-alive", "timeout=5")]), "§8.2.2"),
    _malformed("proxy_connection", req(extra=[("proxy-connection", "keep-alive")]), "§8.2.2"),
    _malformed("transfer_encoding", req(extra=[("transfer-encoding", "chunked")]), "§8.2.2"),
    _malformed("upgrade", req(extra=[("upgrade", "h2c")]), "§8.2.2"),
    _malformed("te_not_trailers", req(extra=[("te", "gzip")]), "§8.2.2"),
    _malformed("pseudo_after_regular",
               [(":method", "GET"), (":scheme", "http"), (":authority", "localhost"),
                ("x-regular", "1"), (":path", "/bytes/10")], "§8.3"),
    _malformed("unknown_pseudo", [*req()[:4], (":foo", "bar")], "§8.3"),
    _malformed("response_pseudo", [*req()[:4], (":status", "200")], "§8.3"),
    _malformed("protocol_pseudo_not_negotiated", [*req()[:4], (":protocol", "websocket")],
               "§8.3, RFC 8441 §3"),
    _malformed("missing_method", _without(":method"), "§8.3.1"),
    _malformed("missing_scheme", _without(":scheme"), "§8.3.1"),
    _malformed("missing_path", _without(":path"), "§8.3.1"),
    _malformed("duplicate_method", _with_twice(":method"), "§8.3"),
    _malformed("duplicate_scheme", _with_twice(":scheme"), "§8.3"),
    _malformed("duplicate_path", _with_twice(":path"), "§8.3"),
    _malformed("duplicate_authority", _with_twice(":authority"), "§8.3"),
    _malformed("empty_path", req(path=""), "§8.3.1"),
    _malformed("connect_with_scheme_and_path",
               [(":method", "CONNECT"), (":scheme", "http"), (":authority", "localhost:80"),
                (":path", "/")], "§8.5"),
    _malformed("connect_without_authority", [(":method", "CONNECT")], "§8.5"),
]


@pytest.mark.parametrize(("headers", "rfc"), MALFORMED)
async def test_8_1_1_malformed_request(peer: Peer, headers: Headers, rfc: str) -> None:
    """§8.1.1: a malformed request MUST be treated as a stream error PROTOCOL_ERROR: the
    stream is reset and the connection goes on (``rfc`` names the rule it breaks)."""
    peer.send(peer.ff.headers(1, headers, end_stream=True))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_2_2_te_trailers_accepted(peer: Peer) -> None:
    """§8.2.2: TE is allowed with the value "trailers" (and nothing else)."""
    peer.send(peer.ff.request(1, path="/bytes/10", extra=[("te", "trailers")]))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_8_1_1_content_length_larger_than_data(peer: Peer) -> None:
    """§8.1.1: content-length not equal to the DATA received makes the request malformed
    (here: 10 announced, 5 sent): a stream error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo", extra=[("content-length", "10")])),
              peer.ff.data(1, b"12345", end_stream=True))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_1_1_content_length_smaller_than_data(peer: Peer) -> None:
    """§8.1.1: more DATA than content-length (4 announced, 3 + 3 sent over two frames):
    malformed, a stream error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo", extra=[("content-length", "4")])),
              peer.ff.data(1, b"123"), peer.ff.data(1, b"456", end_stream=True))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


async def test_8_1_1_content_length_without_data(peer: Peer) -> None:
    """§8.1.1: a content-length of 5 on a request that ends with its HEADERS (no DATA at
    all): malformed, a stream error PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo", extra=[("content-length", "5")]),
                              end_stream=True))
    await peer.expect_stream_error(1, PROTOCOL_ERROR)


# ------------------------------------------------------------------------ 8.4 server push


async def test_8_4_push_promise_from_client(peer: Peer) -> None:
    """§8.4: a client cannot push: a server MUST treat PUSH_PROMISE as a connection error
    PROTOCOL_ERROR."""
    peer.send(peer.ff.headers(1, req("POST", "/echo")),
              peer.ff.push_promise(1, 2, req("GET", "/pushed")))
    await peer.expect_connection_error(PROTOCOL_ERROR)


async def test_8_4_no_push_when_disabled(raw_peer: Peer) -> None:
    """§8.4, §6.5.2: with SETTINGS_ENABLE_PUSH 0 the server MUST NOT send PUSH_PROMISE."""
    peer = await raw_peer.connect({ENABLE_PUSH: 0})
    for path in ("/", "/echo", "/bytes/10"):
        assert (await peer.get(path)).status == 200
    assert peer.first(PUSH_PROMISE) is None, peer.describe()


# ----------------------------------------------------------------------- RFC 7541: HPACK


def _literal(name: bytes, value: bytes, *, huffman_value: bool = False) -> bytes:
    """A literal field without indexing, new name (RFC 7541 §6.2.2), lengths < 127."""
    flag = 0x80 if huffman_value else 0
    return b"\x00" + bytes([len(name)]) + name + bytes([flag | len(value)]) + value


HPACK_ERRORS: list[Any] = [
    pytest.param(b"\x80", id="indexed_field_index_0"),  # §6.1
    pytest.param(b"\xff\x0a", id="indexed_field_index_out_of_range"),  # §2.3.3: 137
    pytest.param(b"\x7f\x0a\x01a", id="literal_name_index_out_of_range"),  # §2.3.3: 73
    pytest.param(_literal(b"x-h", b"\xff\xff\xff\xff", huffman_value=True),
                 id="huffman_eos_symbol"),  # §5.2: EOS in a string is an error
    pytest.param(_literal(b"x-h", b"\x1f\xff", huffman_value=True),
                 id="huffman_padding_over_7_bits"),  # §5.2: 'a' (00011), 11 one-bits
    pytest.param(_literal(b"x-h", b"\x18", huffman_value=True),
                 id="huffman_padding_not_eos_prefix"),  # §5.2: 'a' padded with 0s
    pytest.param(b"\x00\x05ab", id="truncated_literal"),  # §4.3 (RFC 9113)
    pytest.param(b"\x20", id="table_size_update_after_a_field"),  # §4.2: must come first
]


@pytest.mark.parametrize("tail", HPACK_ERRORS)
async def test_hpack_decoding_error(peer: Peer, tail: bytes) -> None:
    """RFC 7541 (§2.3.3, §4.2, §5.2, §6.1): a block the decoder must reject, after a valid
    request's fields; RFC 9113 §4.3: a connection error COMPRESSION_ERROR."""
    peer.send(peer.ff.headers(1, peer.ff.encode(req()) + tail, end_stream=True))
    await peer.expect_connection_error(COMPRESSION_ERROR)


async def test_hpack_table_size_update_above_setting(peer: Peer) -> None:
    """RFC 7541 §6.3: a dynamic table size update above SETTINGS_HEADER_TABLE_SIZE (4096,
    the default; 4097 here) MUST be treated as a decoding error: COMPRESSION_ERROR."""
    peer.send(peer.ff.headers(1, b"\x3f\xe2\x1f" + peer.ff.encode(req()), end_stream=True))
    await peer.expect_connection_error(COMPRESSION_ERROR)


async def test_hpack_table_size_update_within_setting_accepted(peer: Peer) -> None:
    """RFC 7541 §4.2, §6.3: a size update at the start of a block, within the limit, is
    legal (here: to 0 and back to 4096, which also empties the table)."""
    # both tables are empty here, so the factory's encoder stays in step with the server's
    peer.send(peer.ff.headers(1, b"\x20\x3f\xe1\x1f" + peer.ff.encode(req()),
                              end_stream=True))
    got = await peer.reply(1)
    assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_hpack_dynamic_table_shared_across_blocks(peer: Peer) -> None:
    """RFC 7541 §2.3.2: entries a block adds are referenced by index in later blocks (the
    factory's one encoder does that for the second and third request)."""
    for sid in (1, 3, 5):
        peer.send(peer.ff.request(sid, path="/bytes/10",
                                   extra=[("x-repeated", "same-value")]))
        got = await peer.reply(sid)
        assert (got.status, got.body) == (200, BYTES10), peer.describe()


async def test_hpack_server_honours_our_header_table_size(raw_peer: Peer) -> None:
    """RFC 7541 §4.2: once we set SETTINGS_HEADER_TABLE_SIZE to 0, the server's encoder MUST
    signal a size update of 0 at the start of its next block and never index beyond it (our
    decoder, limited to 0, would fail on either)."""
    peer = await raw_peer.connect({HEADER_TABLE_SIZE: 0})
    peer.decoder.header_table_size = 0  # decode as if the update had been seen: strictly
    for sid in (1, 3, 5):
        got = await peer.get("/bytes/10", sid)
        assert (got.status, got.body) == (200, BYTES10), peer.describe()
    assert not peer.decode_errors, peer.describe()
    first_block = peer.frames_of(HEADERS, 1)[0].payload
    assert first_block[0] & 0xE0 == 0x20 and first_block[0] & 0x1F == 0, \
        f"no dynamic table size update to 0 at the start of the block: {first_block!r}"
