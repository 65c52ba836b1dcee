"""The chaos server under hostile input: malformed frames, fuzzing, floods, 1,000 idle peers.

Everything here goes over real loopback sockets to a running h2c chaos server. After every
exchange the server must have answered or closed within a bounded time, must serve a normal
request on a fresh connection, and must hold no connection, no asyncio task and no logged
callback error more than before. Expected GOAWAY codes are RFC 9113's (one deviation of
h2's is marked where it is asserted).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import resource
import struct
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from h2guard.chaos import serve
from h2guard.chaos.model import Scenario
from h2guard.chaos.server import ChaosServer
from h2guard.wire.core import PREFACE, H2Core
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)

ANSWER_WITHIN = 2.0
"""Seconds the server has to answer (PING ACK, GOAWAY) or close a connection."""

PING_PAYLOAD = b"h2guard!"
MAX_HEADER_LIST_SIZE = 65536

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, STREAM_CLOSED, FRAME_SIZE_ERROR = 0, 1, 3, 5, 6
COMPRESSION_ERROR = 9


# --------------------------------------------------------------------------- frames


def frame(ftype: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (struct.pack(">I", len(payload))[1:] + bytes([ftype, flags])
            + struct.pack(">I", stream_id & 0xFFFFFFFF) + payload)


def settings_frame(*pairs: tuple[int, int], flags: int = 0) -> bytes:
    return frame(SETTINGS, flags, 0, b"".join(struct.pack(">HI", k, v) for k, v in pairs))


def ping(payload: bytes = PING_PAYLOAD, flags: int = 0) -> bytes:
    return frame(PING, flags, 0, payload)


def request_block(path: str = "/echo", method: str = "GET",
                  extra: list[tuple[str, str]] | None = None) -> bytes:
    headers = [(":method", method), (":path", path), (":scheme", "http"),
               (":authority", "127.0.0.1"), *(extra or [])]
    return bytes(hpack.Encoder().encode(headers, huffman=False))


HELLO = PREFACE + settings_frame()
"""What every well-behaved client sends first: the preface and an empty SETTINGS."""


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    stream_id: int
    payload: bytes


def parse(data: bytes) -> tuple[list[Frame], bytes]:
    """Split bytes from the server into frames; the unparsed rest comes back too."""
    frames = []
    pos = 0
    while len(data) - pos >= 9:
        length = int.from_bytes(data[pos : pos + 3], "big")
        if len(data) - pos - 9 < length:
            break
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        frames.append(Frame(data[pos + 3], data[pos + 4], sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return frames, data[pos:]


def goaways(frames: list[Frame]) -> list[tuple[int, int, bytes]]:
    """(last_stream_id, error_code, debug) of every GOAWAY."""
    out = []
    for f in frames:
        if f.type == GOAWAY:
            last, code = struct.unpack(">II", f.payload[:8])
            out.append((last & 0x7FFFFFFF, code, f.payload[8:]))
    return out


def resets(frames: list[Frame]) -> list[tuple[int, int]]:
    return [(f.stream_id, struct.unpack(">I", f.payload)[0]) for f in frames
            if f.type == RST_STREAM]


# --------------------------------------------------------------------------- exchanges


@dataclass
class Outcome:
    """What the server did with one connection."""

    data: bytes = b""
    answered: bool = False  # our PING was acknowledged
    closed: bool = False  # the server closed (FIN, or a reset once it had stopped reading)
    reset: bool = False
    frames: list[Frame] = field(default_factory=list)

    @property
    def goaways(self) -> list[tuple[int, int, bytes]]:
        return goaways(self.frames)


def _host_port(server: ChaosServer) -> tuple[str, int]:
    return server.config.host, server.port


async def _read_until(reader: asyncio.StreamReader, out: Outcome, deadline: float,
                      *, want_ack: bool) -> None:
    loop = asyncio.get_running_loop()
    while True:
        if want_ack and _acked(out.data):
            out.answered = True
            return
        left = deadline - loop.time()
        if left <= 0:
            return
        try:
            chunk = await asyncio.wait_for(reader.read(1 << 16), left)
        except TimeoutError:
            return
        except (ConnectionResetError, BrokenPipeError):
            out.closed = out.reset = True
            return
        if not chunk:
            out.closed = True
            if want_ack and _acked(out.data):
                out.answered = True
            return
        out.data += chunk


def _acked(data: bytes) -> bool:
    marker = frame(PING, ACK, 0, PING_PAYLOAD)
    if marker not in data:
        return False
    frames, _ = parse(data)
    return any(f.type == PING and f.flags & ACK and f.payload == PING_PAYLOAD for f in frames)


async def exchange(server: ChaosServer, chunks: list[bytes], *, expect_answer: bool = True,
                   end_with_ping: bool = True) -> Outcome:
    """Send ``chunks`` (then a PING) on a fresh connection and watch what the server does.

    With ``expect_answer`` the server gets ANSWER_WITHIN seconds to acknowledge the PING or
    close; either way we then half-close and it must close within ANSWER_WITHIN seconds."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*_host_port(server))
    out = Outcome()
    try:
        with contextlib.suppress(ConnectionError):
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            if end_with_ping:
                writer.write(ping())
                await writer.drain()
        if expect_answer:
            await _read_until(reader, out, loop.time() + ANSWER_WITHIN,
                              want_ack=end_with_ping)
            assert out.answered or out.closed, (
                f"no PING ACK and no close within {ANSWER_WITHIN} s; got {parse(out.data)[0]}")
        if not out.closed:
            with contextlib.suppress(ConnectionError, OSError):
                writer.write_eof()
            await _read_until(reader, out, loop.time() + ANSWER_WITHIN, want_ack=False)
            assert out.closed, f"server kept the connection {ANSWER_WITHIN} s after our EOF"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    out.frames, rest = parse(out.data)
    if not out.reset:
        assert rest == b"", f"server sent a partial frame: {rest!r}"
    return out


async def get(server: ChaosServer, path: str = "/echo") -> tuple[int, bytes]:
    """A normal request on a fresh connection, through the core in the client role."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(*_host_port(server))
    core = H2Core(client=True)
    core.start(loop.time())
    sid = core.next_stream_id()
    core.send_headers(sid, [(b":method", b"GET"), (b":path", path.encode()),
                            (b":scheme", b"http"), (b":authority", b"127.0.0.1")],
                      end_stream=True)
    status, body = 0, b""
    try:
        writer.write(core.data_to_send())
        async with asyncio.timeout(ANSWER_WITHIN):
            while True:
                chunk = await reader.read(1 << 16)
                assert chunk, "server closed before answering"
                done = False
                for ev in core.receive(chunk, loop.time()):
                    if isinstance(ev, ResponseReceived):
                        status = int(dict(ev.headers)[b":status"])
                    elif isinstance(ev, DataReceived):
                        body += ev.data
                    elif isinstance(ev, StreamEnded) and ev.stream_id == sid:
                        done = True
                    elif isinstance(ev, (StreamReset, GoAwayReceived, ConnectionFailed)):
                        raise AssertionError(f"normal request failed: {ev}")
                writer.write(core.data_to_send())
                if done:
                    return status, body
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def drained(server: ChaosServer, timeout: float = ANSWER_WITHIN) -> None:
    """Every connection the server had is gone (clients closed theirs)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while server.connections and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert server.connections == 0, f"server still holds {server.connections} connections"


@dataclass
class Harness:
    server: ChaosServer
    errors: list[dict[str, Any]]

    async def check_healthy(self, tasks_before: int) -> None:
        """Serves a fresh connection, leaks no connection, task or callback error."""
        await drained(self.server)
        status, body = await get(self.server)
        assert status == 200 and b'"path":"/echo"' in body
        await drained(self.server)
        await asyncio.sleep(0)
        assert len(asyncio.all_tasks()) == tasks_before, asyncio.all_tasks()
        assert not self.errors, self.errors
        assert not self.server.events.hook_errors


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        async with serve(Scenario(name="robustness"), h2c=True, seed=1) as server:
            yield Harness(server, errors)
    finally:
        loop.set_exception_handler(previous)
    assert not errors, errors


# --------------------------------------------------------------------------- named cases

_BLOCK = request_block()
_S = settings_frame

FATAL = {
    "CONTINUATION without HEADERS": (frame(CONTINUATION, END_HEADERS, 1, _BLOCK),
                                     PROTOCOL_ERROR),
    "DATA on an idle stream": (frame(DATA, END_STREAM, 1, b"hello"), PROTOCOL_ERROR),
    "RST_STREAM on an idle stream": (frame(RST_STREAM, 0, 1, b"\0\0\0\0"), PROTOCOL_ERROR),
    "HEADERS on an even stream": (frame(HEADERS, END_HEADERS | END_STREAM, 2, _BLOCK),
                                  PROTOCOL_ERROR),
    "HEADERS on stream 0": (frame(HEADERS, END_HEADERS | END_STREAM, 0, _BLOCK),
                            PROTOCOL_ERROR),
    "stream ids going down": (frame(HEADERS, END_HEADERS | END_STREAM, 5, _BLOCK)
                              + frame(HEADERS, END_HEADERS | END_STREAM, 3, _BLOCK),
                              PROTOCOL_ERROR),
    "HEADERS without END_HEADERS, then PING": (frame(HEADERS, END_STREAM, 1, _BLOCK) + ping(),
                                              PROTOCOL_ERROR),
    "PUSH_PROMISE from a client": (frame(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2" + _BLOCK),
                                   PROTOCOL_ERROR),
    "HPACK index 0": (frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x80"), COMPRESSION_ERROR),
    "HPACK index out of range": (frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                       b"\xff\xff\xff\x0f"), COMPRESSION_ERROR),
    "HPACK truncated literal": (frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\x00\x7f"),
                                COMPRESSION_ERROR),
    "WINDOW_UPDATE overflows the connection window": (
        frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 2**31 - 1)) * 2, FLOW_CONTROL_ERROR),
    "WINDOW_UPDATE of 0 on the connection": (frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),
                                             PROTOCOL_ERROR),
    "WINDOW_UPDATE of 5 bytes": (frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\1\0"), FRAME_SIZE_ERROR),
    "SETTINGS ENABLE_PUSH=2": (_S((0x2, 2)), PROTOCOL_ERROR),
    "SETTINGS INITIAL_WINDOW_SIZE=2^31": (_S((0x4, 2**31)), FLOW_CONTROL_ERROR),
    "SETTINGS MAX_FRAME_SIZE=100": (_S((0x5, 100)), PROTOCOL_ERROR),
    "SETTINGS MAX_FRAME_SIZE=2^24": (_S((0x5, 2**24)), PROTOCOL_ERROR),
    "SETTINGS of 5 bytes": (frame(SETTINGS, 0, 0, b"\0\1\0\0\0"), FRAME_SIZE_ERROR),
    # RFC 9113 section 6.5 (h2 alone would say PROTOCOL_ERROR; the core corrects it)
    "SETTINGS ACK with a payload": (_S((0x1, 4096), flags=ACK), FRAME_SIZE_ERROR),
    "SETTINGS on stream 1": (frame(SETTINGS, 0, 1, b""), PROTOCOL_ERROR),
    "PING of 7 bytes": (frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR),
    "PING on stream 1": (frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR),
    "GOAWAY on stream 1": (frame(GOAWAY, 0, 1, b"\0" * 8), PROTOCOL_ERROR),
    "padding longer than the frame": (frame(HEADERS, END_HEADERS | PADDED, 1,
                                            b"\xff" + _BLOCK), PROTOCOL_ERROR),
    "frame above MAX_FRAME_SIZE": (frame(DATA, 0, 1, b"\0" * 16385), FRAME_SIZE_ERROR),
    "length field of 2^24-1, no payload": (b"\xff\xff\xff\x00\x00\x00\x00\x00\x01",
                                           FRAME_SIZE_ERROR),
}


@pytest.mark.parametrize("case", sorted(FATAL))
async def test_malformed_input_gets_goaway(harness: Harness, case: str) -> None:
    payload, code = FATAL[case]
    tasks = len(asyncio.all_tasks())
    out = await exchange(harness.server, [HELLO + payload], end_with_ping=False,
                         expect_answer=False)
    assert out.closed
    assert [g[1] for g in out.goaways] == [code], (case, out.frames)
    assert out.frames[0].type == SETTINGS  # the server's own SETTINGS came first
    failures = harness.server.events.since(0, name="chaos.protocol_error")
    assert len(failures) == 1
    await harness.check_healthy(tasks)


NON_FATAL = {
    "WINDOW_UPDATE overflows a stream window": (
        frame(HEADERS, END_HEADERS, 1, request_block("/echo", "POST"))
        + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 2**31 - 1)) * 2,
        [(1, FLOW_CONTROL_ERROR)]),
    "DATA on a half-closed stream": (
        frame(HEADERS, END_HEADERS | END_STREAM, 1, _BLOCK) + frame(DATA, 0, 1, b"late"),
        [(1, STREAM_CLOSED)]),
    "unknown frame type": (frame(0xFA, 0xFF, 7, b"xyz") + frame(0x0B, 0, 0, b""), []),
    "PRIORITY on an idle stream": (frame(PRIORITY, 0, 9, struct.pack(">IB", 0, 16)), []),
    "SETTINGS with unknown ids": (_S((0x99, 1), (0xFFFF, 2**32 - 1)), []),
    "client GOAWAY": (frame(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR) + b"bye"), []),
    "PING ACK nobody asked for": (ping(b"unasked!", flags=ACK), []),
    # RFC 9113 section 5.3.1: a stream error (h2 alone would end the connection)
    "PRIORITY depending on itself": (frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 16)),
                                     [(1, PROTOCOL_ERROR)]),
    # RFC 9113 section 8.1.1: a malformed request is a stream error, the connection goes on
    "upper-case header name": (frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                     request_block(extra=[("X-Upper", "1")])),
                               [(1, PROTOCOL_ERROR)]),
    "connection-specific header": (frame(HEADERS, END_HEADERS | END_STREAM, 1,
                                         request_block(extra=[("connection", "close")])),
                                   [(1, PROTOCOL_ERROR)]),
    "malformed request, then a valid one": (
        frame(HEADERS, END_HEADERS | END_STREAM, 1,
              request_block(extra=[("keep-alive", "5")]))
        + frame(HEADERS, END_HEADERS | END_STREAM, 3, request_block()),
        [(1, PROTOCOL_ERROR)]),
}


@pytest.mark.parametrize("case", sorted(NON_FATAL))
async def test_stream_level_or_ignorable_input(harness: Harness, case: str) -> None:
    payload, expected_resets = NON_FATAL[case]
    tasks = len(asyncio.all_tasks())
    out = await exchange(harness.server, [HELLO + payload])
    assert out.answered, (case, out.frames)
    assert out.goaways == []
    assert resets(out.frames) == expected_resets
    await harness.check_healthy(tasks)


async def test_bad_preface_gets_goaway_protocol_error(harness: Harness) -> None:
    server = harness.server
    tasks = len(asyncio.all_tasks())
    # A healthy connection, open across the bad one.
    reader, writer = await asyncio.open_connection(*_host_port(server))
    writer.write(HELLO + frame(HEADERS, END_HEADERS | END_STREAM, 1, _BLOCK))
    before = b""
    while b"connection_id" not in before:
        before += await asyncio.wait_for(reader.read(1 << 16), ANSWER_WITHIN)
    for bad in (b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",
                b"PRI * HTTP/1.1\r\n\r\n"):
        out = await exchange(server, [bad], end_with_ping=False, expect_answer=False)
        assert out.closed
        assert [f.type for f in out.frames] == [SETTINGS, GOAWAY], out.frames
        assert out.goaways == [(0, PROTOCOL_ERROR, b"")]
    # The healthy connection still works: a second request on it.
    writer.write(frame(HEADERS, END_HEADERS | END_STREAM, 3, _BLOCK))
    after = b""
    while b"connection_id" not in after:
        chunk = await asyncio.wait_for(reader.read(1 << 16), ANSWER_WITHIN)
        assert chunk
        after += chunk
    frames, _ = parse(after)
    assert any(f.type == HEADERS and f.stream_id == 3 for f in frames)
    writer.close()
    await writer.wait_closed()
    await harness.check_healthy(tasks)


def _header_block_frames(value_size: int) -> bytes:
    """One request whose ``x-big`` header carries ``value_size`` bytes, in HEADERS then
    CONTINUATION frames of at most 16,384 bytes."""
    block = request_block(extra=[("x-big", "a" * value_size)])
    parts = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    out = frame(HEADERS, END_STREAM | (END_HEADERS if len(parts) == 1 else 0), 1, parts[0])
    for i, part in enumerate(parts[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if i == len(parts) - 1 else 0, 1, part)
    return out


async def test_oversize_header_block_gets_goaway_protocol_error(harness: Harness) -> None:
    tasks = len(asyncio.all_tasks())
    payload = _header_block_frames(100_000)
    assert payload.count(bytes([CONTINUATION])) >= 6
    out = await exchange(harness.server, [HELLO + payload], end_with_ping=False,
                         expect_answer=False)
    assert out.closed
    assert [f.type for f in out.frames if f.type != SETTINGS] == [GOAWAY], out.frames
    assert out.goaways == [(0, PROTOCOL_ERROR, b"")]
    [failure] = harness.server.events.since(0, name="chaos.protocol_error")
    assert failure.data["code"] == "PROTOCOL_ERROR"
    assert "Oversized header block" in failure.data["message"]
    await harness.check_healthy(tasks)


async def test_header_block_just_below_the_limit_is_served(harness: Harness) -> None:
    tasks = len(asyncio.all_tasks())
    value = MAX_HEADER_LIST_SIZE - 1024  # the pseudo-headers and 32 bytes per field fit
    out = await exchange(harness.server, [HELLO + _header_block_frames(value)])
    assert out.answered and out.goaways == []
    heads = [f for f in out.frames if f.type == HEADERS]
    assert len(heads) == 1 and heads[0].stream_id == 1
    body = b"".join(f.payload for f in out.frames if f.type == DATA)
    assert body.count(b"a" * 1000) >= value // 1000  # the echo carries the big header back
    await harness.check_healthy(tasks)


@pytest.mark.parametrize("cut", [1, 9, 23, 24 + 5, 24 + 9 + 3, 33 + 9 + 10])
async def test_truncated_input_then_eof(harness: Harness, cut: int) -> None:
    """A connection that stops mid-preface or mid-frame is closed when the client goes."""
    tasks = len(asyncio.all_tasks())
    data = HELLO + frame(HEADERS, END_HEADERS | END_STREAM, 1, _BLOCK)
    out = await exchange(harness.server, [data[:cut]], end_with_ping=False,
                         expect_answer=False)
    assert out.closed and out.goaways == []
    await harness.check_healthy(tasks)


async def test_truncated_frame_waits_then_completes(harness: Harness) -> None:
    """The rest of a frame arriving later, byte by byte, is still one frame."""
    tasks = len(asyncio.all_tasks())
    data = frame(HEADERS, END_HEADERS | END_STREAM, 1, _BLOCK)
    chunks = [HELLO + data[:5], *(data[i : i + 1] for i in range(5, len(data)))]
    out = await exchange(harness.server, chunks)
    assert out.answered and out.goaways == []
    assert [f.stream_id for f in out.frames if f.type == HEADERS] == [1]
    await harness.check_healthy(tasks)


async def test_garbage_after_the_preface(harness: Harness) -> None:
    rng = random.Random(20240601)
    tasks = len(asyncio.all_tasks())
    for _ in range(10):
        garbage = rng.randbytes(rng.randrange(1, 4000))
        out = await exchange(harness.server, [HELLO + garbage], expect_answer=False)
        assert out.closed
        assert len(out.goaways) <= 1
    await harness.check_healthy(tasks)


async def test_ping_flood_is_answered_and_bounded(harness: Harness) -> None:
    tasks = len(asyncio.all_tasks())
    count = 10_000
    flood = b"".join(ping(struct.pack(">Q", i)) for i in range(count))
    out = await exchange(harness.server, [HELLO + flood])
    acks = [f for f in out.frames if f.type == PING and f.flags & ACK]
    # Either every PING is acknowledged in order, or the server calls it abuse (the default
    # limits allow 2,000 control frames a second: 10,000 at once is a flood).
    if out.goaways:
        assert out.closed
        assert [g[1] for g in out.goaways] == [0xB]
    else:
        assert [struct.unpack(">Q", f.payload)[0] for f in acks[:count]] == list(range(count))
    await harness.check_healthy(tasks)


# --------------------------------------------------------------------------- fuzzing

_stream_ids = st.one_of(st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1, 2**31 + 1]),
                        st.integers(0, 2**32 - 1))
_flags = st.one_of(st.sampled_from([0, END_STREAM, END_HEADERS, END_STREAM | END_HEADERS,
                                    PADDED, PRIORITY_FLAG]), st.integers(0, 255))
_setting_values = st.one_of(st.sampled_from([0, 1, 2, 100, 2**14 - 1, 2**14, 2**24 - 1, 2**24,
                                             2**31 - 1, 2**31, 2**32 - 1]),
                            st.integers(0, 2**32 - 1))
_paths = st.sampled_from(["/echo", "/status/204", "/bytes/10", "/bytes/100000",
                          "/delay/3000", "/nope", "*", ""])


@st.composite
def _headers_frame(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        extra = draw(st.lists(st.tuples(st.sampled_from(["x-a", "content-length", "te",
                                                         "connection", ":status", "X-Up"]),
                                        st.text("abc0123", max_size=5)), max_size=2))
        block = request_block(draw(_paths), draw(st.sampled_from(["GET", "POST", ""])), extra)
    else:
        block = draw(st.binary(max_size=40))
    sid = draw(st.one_of(st.sampled_from([1, 3, 5]), _stream_ids))
    return frame(HEADERS, draw(_flags), sid, block)


_wild_frames = st.one_of(
    _headers_frame(),
    st.builds(frame, st.just(CONTINUATION), _flags, _stream_ids, st.binary(max_size=30)),
    st.builds(frame, st.just(DATA), _flags, st.sampled_from([1, 3, 0, 2]),
              st.binary(max_size=64)),
    st.builds(lambda pairs, flags, sid: frame(SETTINGS, flags, sid, b"".join(
        struct.pack(">HI", k, v) for k, v in pairs)),
        st.lists(st.tuples(st.integers(0, 10), _setting_values), max_size=4),
        st.sampled_from([0, 0, 0, ACK]), st.sampled_from([0, 0, 0, 1])),
    st.builds(lambda inc, sid: frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc)),
              st.sampled_from([0, 1, 65535, 2**31 - 1, 2**31, 2**32 - 1]),
              st.sampled_from([0, 1, 3])),
    st.builds(frame, st.just(RST_STREAM), st.just(0), st.sampled_from([0, 1, 3]),
              st.binary(min_size=3, max_size=5)),
    st.builds(frame, st.just(PRIORITY), st.just(0), _stream_ids, st.binary(min_size=4,
                                                                           max_size=6)),
    st.builds(frame, st.just(PING), st.sampled_from([0, ACK]), st.sampled_from([0, 1]),
              st.binary(min_size=7, max_size=9)),
    st.builds(frame, st.just(GOAWAY), st.just(0), st.sampled_from([0, 1]),
              st.binary(min_size=7, max_size=20)),
    st.builds(frame, st.just(PUSH_PROMISE), _flags, _stream_ids, st.binary(max_size=20)),
    st.builds(frame, st.integers(10, 255), _flags, _stream_ids, st.binary(max_size=20)),
)
"""Anything at all, mostly wrong: each of these usually ends the connection."""

_open_streams = st.sampled_from([1, 3, 5, 7])
_valid_settings = st.builds(lambda pairs: settings_frame(*pairs), st.lists(st.one_of(
    st.tuples(st.just(0x1), st.integers(0, 65536)),
    st.tuples(st.just(0x2), st.integers(0, 1)),
    st.tuples(st.just(0x3), st.integers(0, 200)),
    st.tuples(st.just(0x4), st.integers(0, 2**31 - 1)),
    st.tuples(st.just(0x5), st.integers(2**14, 2**24 - 1)),
    st.tuples(st.just(0x6), st.integers(0, 2**20))), max_size=4))
_valid_frames = st.one_of(
    st.builds(lambda path, method, end, sid: frame(
        HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, request_block(path, method)),
        _paths, st.sampled_from(["GET", "POST"]), st.booleans(), _open_streams),
    st.builds(lambda data, end, sid: frame(DATA, END_STREAM if end else 0, sid, data),
              st.binary(max_size=100), st.booleans(), _open_streams),
    _valid_settings,
    st.just(settings_frame(flags=ACK)),
    st.builds(lambda inc, sid: frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", inc)),
              st.integers(1, 65535), st.sampled_from([0, 1, 3])),
    st.builds(lambda data: ping(data), st.binary(min_size=8, max_size=8)),
    st.builds(lambda sid, dep: frame(PRIORITY, 0, sid, struct.pack(">IB", dep, 16)),
              st.sampled_from([9, 11, 13]), st.sampled_from([0, 1])),
    st.builds(lambda sid, code: frame(RST_STREAM, 0, sid, struct.pack(">I", code)),
              _open_streams, st.sampled_from([0, 2, 8, 0xDEAD])),
    st.builds(frame, st.integers(10, 255), st.integers(0, 255), _stream_ids,
              st.binary(max_size=20)),
)
"""Frames a legitimate client might send (in a random order, so not always legal)."""

_frames = st.one_of(_valid_frames, _valid_frames, _valid_frames, _wild_frames)


@st.composite
def _sessions(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """(chunks to write after the preface and SETTINGS, whether they end on a frame edge)."""
    data = b"".join(draw(st.lists(_frames, min_size=1, max_size=10)))
    tail = draw(st.sampled_from(["none", "none", "garbage", "truncated"]))
    aligned = tail == "none"
    if tail == "garbage":
        data += draw(st.binary(min_size=1, max_size=100))
    elif tail == "truncated":
        whole = draw(_frames)
        data += whole[: draw(st.integers(1, len(whole) - 1))]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [HELLO, *(c for c in chunks if c)], aligned


@st.composite
def _conversations(draw: st.DrawFn) -> tuple[list[bytes], bool]:
    """A mostly legal client: streams opened in order, DATA only on streams still open,
    sane SETTINGS/WINDOW_UPDATE/PING/RST_STREAM, and sometimes one wild frame spliced in."""
    next_sid, open_streams, out = 1, [], []
    actions = draw(st.lists(st.sampled_from(["open", "open_end", "data", "data_end", "window",
                                             "ping", "settings", "rst", "priority",
                                             "unknown"]), min_size=1, max_size=14))
    for action in actions:
        if action.startswith("open"):
            end = action == "open_end"
            block = request_block(draw(_paths), draw(st.sampled_from(["GET", "POST", "PUT"])))
            out.append(frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), next_sid,
                             block))
            if not end:
                open_streams.append(next_sid)
            next_sid += 2
        elif action.startswith("data") and open_streams:
            sid = draw(st.sampled_from(open_streams))
            end = action == "data_end"
            out.append(frame(DATA, END_STREAM if end else 0, sid,
                             draw(st.binary(max_size=500))))
            if end:
                open_streams.remove(sid)
        elif action == "rst" and open_streams:
            sid = draw(st.sampled_from(open_streams))
            open_streams.remove(sid)
            out.append(frame(RST_STREAM, 0, sid, struct.pack(">I", 8)))
        elif action == "window":
            sid = draw(st.sampled_from([0, *open_streams]))
            out.append(frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", draw(st.integers(
                1, 65535)))))
        elif action == "ping":
            out.append(ping(draw(st.binary(min_size=8, max_size=8))))
        elif action == "settings":
            out.append(draw(_valid_settings))
        elif action == "priority":  # about a stream not opened yet: legal
            dep = draw(st.sampled_from([0, 1]))
            out.append(frame(PRIORITY, 0, next_sid + 40, struct.pack(">IB", dep, 16)))
        elif action == "unknown":
            out.append(frame(draw(st.integers(10, 255)), draw(st.integers(0, 255)),
                             draw(_stream_ids), draw(st.binary(max_size=20))))
    aligned = True
    if draw(st.integers(0, 3)) == 0:
        out.insert(draw(st.integers(0, len(out))), draw(_wild_frames))
    if draw(st.integers(0, 7)) == 0:
        out.append(draw(st.binary(min_size=1, max_size=50)))
        aligned = False
    return [HELLO, *out], aligned


_FUZZ_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                 HealthCheck.too_slow])


async def _fuzz_once(harness: Harness, chunks: list[bytes], aligned: bool) -> None:
    tasks = len(asyncio.all_tasks())
    out = await exchange(harness.server, chunks, expect_answer=aligned)
    event(f"goaway {out.goaways[0][1]:#x}" if out.goaways else
          "answered" if out.answered else "closed" if out.closed else "waited for more")
    assert len(out.goaways) <= 1, out.frames
    if out.goaways:
        assert out.closed
    await harness.check_healthy(tasks)


@_FUZZ_SETTINGS
@given(session=_sessions())
async def test_fuzzed_frame_sequences(harness: Harness,
                                      session: tuple[list[bytes], bool]) -> None:
    await _fuzz_once(harness, *session)


@_FUZZ_SETTINGS
@given(session=_conversations())
async def test_fuzzed_conversations(harness: Harness,
                                    session: tuple[list[bytes], bool]) -> None:
    await _fuzz_once(harness, *session)


# --------------------------------------------------------------------------- idle connections

IDLE_CONNECTIONS = 1000
MAX_BYTES_PER_CONNECTION = 100 * 1024
MAX_TOTAL_GROWTH = 150 * 1024 * 1024

_SERVER_SCRIPT = textwrap.dedent("""
    import asyncio, gc, sys
    from h2guard.chaos import serve

    async def main():
        async with serve(h2c=True) as server:
            print(server.url, flush=True)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                         sys.stdin)
            while line := await reader.readline():
                gc.collect()
                print(server.connections, flush=True)

    asyncio.run(main())
""")


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class _ServerProcess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert raw, "server process exited"
        return raw.decode().strip()

    async def connections(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"count\n")
        await self.proc.stdin.drain()
        return int(await self.line())

    async def wait_connections(self, expected: int, timeout: float = 5.0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (n := await self.connections()) != expected and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return n


async def _handshake(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open an h2c connection and finish the SETTINGS exchange (theirs, and their ACK)."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(HELLO)
    data = b""
    async with asyncio.timeout(10):
        while True:
            frames, _ = parse(data)
            kinds = {(f.type, f.flags & ACK) for f in frames}
            if (SETTINGS, 0) in kinds and (SETTINGS, ACK) in kinds:
                break
            chunk = await reader.read(4096)
            assert chunk, "server closed during the handshake"
            data += chunk
    writer.write(settings_frame(flags=ACK))
    return reader, writer


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
async def test_memory_bounded_with_1000_idle_connections(
        capsys: pytest.CaptureFixture[str]) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2200:
        pytest.skip(f"RLIMIT_NOFILE hard limit is {hard}; 1,000 connections need 2,200 "
                    f"descriptors (client and server side, plus slack)")
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SERVER_SCRIPT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    server = _ServerProcess(proc)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        url = await server.line()
        host, port = url.removeprefix("http://").rsplit(":", 1)
        # Warm up: let the first connections pay for imports, caches and arena growth.
        warm = [await _handshake(host, int(port)) for _ in range(50)]
        for _, writer in warm:
            writer.close()
        assert await server.wait_connections(0) == 0
        rss_before, fds_before = _rss(server.pid), _fds(server.pid)

        for start in range(0, IDLE_CONNECTIONS, 100):
            batch = [_handshake(host, int(port))
                     for _ in range(min(100, IDLE_CONNECTIONS - start))]
            conns += await asyncio.gather(*batch)
        assert await server.wait_connections(IDLE_CONNECTIONS) == IDLE_CONNECTIONS
        rss_after, fds_after = _rss(server.pid), _fds(server.pid)
        growth = rss_after - rss_before
        per_connection = growth / IDLE_CONNECTIONS
        with capsys.disabled():  # the figure is the point: show it even when tests pass
            print(f"\n{IDLE_CONNECTIONS} idle h2c connections: server RSS "
                  f"{rss_before / 2**20:.1f} MiB -> {rss_after / 2**20:.1f} MiB, "
                  f"{per_connection / 1024:.1f} KiB ({per_connection:.0f} bytes) per "
                  f"connection; fds {fds_before} -> {fds_after}")
        assert fds_after - fds_before >= IDLE_CONNECTIONS
        assert per_connection < MAX_BYTES_PER_CONNECTION
        assert growth < MAX_TOTAL_GROWTH

        for _, writer in conns:
            writer.close()
        conns.clear()
        assert await server.wait_connections(0) == 0
        fds_closed = _fds(server.pid)
        with capsys.disabled():
            print(f"after closing them: {fds_closed} fds, "
                  f"RSS {_rss(server.pid) / 2**20:.1f} MiB")
        assert fds_closed <= fds_before + 5
    finally:
        for _, writer in conns:
            writer.close()
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        gc.collect()
