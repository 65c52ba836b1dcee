"""A raw asyncio HTTP/2 client for integration tests: it records every frame on the wire.

The protocol engine is :class:`h2guard.wire.core.H2Core` in the client role (h2 underneath, with
GOAWAY draining), but every assertion a test makes should be about the *frames*: the bytes the
server wrote are parsed here, independently of h2, into :class:`Frame` records with a monotonic
timestamp. The frame log keeps growing even after the engine has given up on the connection (a
flow-control violation, say), so a test sees exactly what the server sent.

    async with RawClient(server.url) as client:
        sid = client.open_stream("GET", "/echo")
        await client.wait_for(lambda: client.rst_code(sid) is not None, 1.0)
        assert client.frames_of(RST_STREAM, sid)[0].error_code == 0x8

The client can also deliberately ignore the server's SETTINGS_MAX_CONCURRENT_STREAMS
(``ignore_stream_limit=True``), as real clients do when they open streams before the server's
SETTINGS arrive, so that a test can see the server refuse the extra streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import h2.settings

from h2guard.wire.core import PREFACE, H2Core
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)

__all__ = [
    "CONTINUATION",
    "DATA",
    "FRAME_NAMES",
    "GOAWAY",
    "HEADERS",
    "PING",
    "PRIORITY",
    "PUSH_PROMISE",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "Frame",
    "FrameParser",
    "RawClient",
    "StreamLog",
]

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, \
    CONTINUATION = range(10)
FRAME_NAMES = {
    DATA: "DATA", HEADERS: "HEADERS", PRIORITY: "PRIORITY", RST_STREAM: "RST_STREAM",
    SETTINGS: "SETTINGS", PUSH_PROMISE: "PUSH_PROMISE", PING: "PING", GOAWAY: "GOAWAY",
    WINDOW_UPDATE: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION",
}
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame as it was on the wire, with the monotonic time it was read (or written)."""

    type: int
    flags: int
    stream_id: int
    payload: bytes
    at: float

    @property
    def name(self) -> str:
        return FRAME_NAMES.get(self.type, f"UNKNOWN(0x{self.type:x})")

    @property
    def end_stream(self) -> bool:
        return self.type in (DATA, HEADERS) and bool(self.flags & FLAG_END_STREAM)

    @property
    def ack(self) -> bool:
        return self.type in (SETTINGS, PING) and bool(self.flags & FLAG_ACK)

    @property
    def error_code(self) -> int:
        """RST_STREAM's or GOAWAY's error code, as the 32-bit number on the wire."""
        if self.type == RST_STREAM:
            return int(struct.unpack(">I", self.payload[:4])[0])
        if self.type == GOAWAY:
            return int(struct.unpack(">I", self.payload[4:8])[0])
        raise ValueError(f"{self.name} has no error code")

    @property
    def last_stream_id(self) -> int:
        if self.type != GOAWAY:
            raise ValueError(f"{self.name} has no last_stream_id")
        return int(struct.unpack(">I", self.payload[:4])[0]) & 0x7FFFFFFF

    @property
    def debug_data(self) -> bytes:
        if self.type != GOAWAY:
            raise ValueError(f"{self.name} has no debug data")
        return self.payload[8:]

    @property
    def settings(self) -> dict[int, int]:
        """SETTINGS identifier -> value, in frame order (a later duplicate wins)."""
        if self.type != SETTINGS:
            raise ValueError(f"{self.name} has no settings")
        out: dict[int, int] = {}
        for pos in range(0, len(self.payload) - len(self.payload) % 6, 6):
            ident, value = struct.unpack(">HI", self.payload[pos : pos + 6])
            out[ident] = value
        return out

    @property
    def increment(self) -> int:
        if self.type != WINDOW_UPDATE:
            raise ValueError(f"{self.name} has no window increment")
        return int(struct.unpack(">I", self.payload[:4])[0]) & 0x7FFFFFFF

    @property
    def data(self) -> bytes:
        """DATA's application bytes, padding removed."""
        if self.type != DATA:
            raise ValueError(f"{self.name} carries no data")
        if self.flags & FLAG_PADDED and self.payload:
            pad = self.payload[0]
            return self.payload[1 : len(self.payload) - pad]
        return self.payload

    @property
    def data_length(self) -> int:
        return len(self.data)

    @property
    def flow_controlled_length(self) -> int:
        """What the frame costs in flow-control window: the whole payload, padding included."""
        return len(self.payload)

    def __str__(self) -> str:
        detail = ""
        if self.type == RST_STREAM:
            detail = f" code=0x{self.error_code:x}"
        elif self.type == GOAWAY:
            detail = (f" last={self.last_stream_id} code=0x{self.error_code:x}"
                      f" debug={self.debug_data!r}")
        elif self.type == SETTINGS:
            detail = " ACK" if self.ack else f" {self.settings}"
        elif self.type == WINDOW_UPDATE:
            detail = f" +{self.increment}"
        elif self.type == DATA:
            detail = f" len={self.data_length}" + (" END_STREAM" if self.end_stream else "")
        elif self.type == HEADERS:
            detail = " END_STREAM" if self.end_stream else ""
        elif self.type == PING:
            detail = (" ACK " if self.ack else " ") + self.payload.hex()
        return f"{self.at:.4f} {self.name}[{self.stream_id}]{detail}"


class FrameParser:
    """Incremental frame splitter: bytes in, :class:`Frame` records out. No validation: the
    point is to see what was sent, including what h2 would reject."""

    def __init__(self, *, skip_preface: bool = False) -> None:
        self._buf = bytearray()
        self._preface_left = len(PREFACE) if skip_preface else 0

    def feed(self, data: bytes, at: float) -> list[Frame]:
        if self._preface_left:
            head = data[: self._preface_left]
            self._preface_left -= len(head)
            data = data[len(head) :]
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if len(buf) - pos < 9 + length:
                break
            ftype = buf[pos + 3]
            flags = buf[pos + 4]
            sid = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            frames.append(Frame(ftype, flags, sid, bytes(buf[pos + 9 : pos + 9 + length]), at))
            pos += 9 + length
        del buf[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buf)


class _NoStreamLimit(h2.settings.Settings):
    """Remote settings whose MAX_CONCURRENT_STREAMS h2 never sees: a client that opens more
    streams than the server allows (Node before the server's SETTINGS arrive)."""

    @property  # type: ignore[override]
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1


@dataclass(slots=True)
class StreamLog:
    """What the engine made of one stream (the frames stay in :attr:`RawClient.received`)."""

    stream_id: int
    opened_at: float
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int | None = None
    response_at: float | None = None
    body: bytearray = field(default_factory=bytearray, repr=False)
    ended_at: float | None = None
    reset_code: int | None = None
    reset_at: float | None = None
    unprocessed: bool = False


class RawClient:
    """One HTTP/2 connection to ``url`` (``http://`` = h2c prior knowledge, ``https://`` = TLS
    with ALPN h2, trusting ``ca_file``) that logs every frame in both directions.

    ``settings`` are our SETTINGS (identifier -> value); ``ignore_stream_limit`` opens streams
    beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS; ``auto_ack=False`` never sends a
    WINDOW_UPDATE for received DATA (a client that reads nothing yet)."""

    def __init__(self, url: str, *, ca_file: str | None = None,
                 settings: dict[int, int] | None = None,
                 ignore_stream_limit: bool = False, auto_ack: bool = True) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.authority = parts.netloc.encode()
        self.ca_file = ca_file
        self.core = H2Core(client=True, settings=settings)
        self.core.auto_ack = auto_ack  # False: never open the receive windows again
        if ignore_stream_limit:
            self.core._conn.remote_settings.__class__ = _NoStreamLimit
        self.received: list[Frame] = []
        self.sent: list[Frame] = []
        self.events: list[tuple[float, Any]] = []
        self.streams: dict[int, StreamLog] = {}
        self.alpn: str | None = None
        self.connect_started_at: float | None = None
        self.connected_at: float | None = None
        self.eof_at: float | None = None
        self.reset_at: float | None = None
        self.read_error: BaseException | None = None
        self.failure: ConnectionFailed | None = None
        self.last_write_at: float | None = None
        self._in = FrameParser()
        self._out = FrameParser(skip_preface=True)
        self._uploads: dict[int, list[Any]] = {}  # sid -> [remaining bytes, end_stream]
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed: asyncio.Event | None = None
        self._corked = False

    # ------------------------------------------------------------------ lifecycle

    async def connect(self, *, timeout: float = 2.0, wait_settings: bool = True) -> RawClient:
        """Open the TCP (and TLS) connection, send the preface and our SETTINGS; by default
        wait for the server's first SETTINGS frame, so its limits and windows are known."""
        self._changed = asyncio.Event()
        ctx: ssl.SSLContext | None = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            ctx.set_alpn_protocols(["h2"])
        self.connect_started_at = time.monotonic()
        self._reader, self._writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=ctx,
                                    server_hostname=self.host if ctx else None), timeout)
        self.connected_at = time.monotonic()
        if ctx is not None:
            sslobj = self._writer.get_extra_info("ssl_object")
            self.alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
            if self.alpn != "h2":
                raise ConnectionError(f"ALPN selected {self.alpn!r}, not h2")
        self.core.start(time.monotonic())
        self._flush()
        self._task = asyncio.get_running_loop().create_task(self._read_loop())
        if wait_settings:
            await self.wait_for(lambda: self.frames_of(SETTINGS, 0, ack=False), timeout,
                                "the server's SETTINGS")
        return self

    async def close(self) -> None:
        """Stop reading and close our side (a FIN)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
            self._writer = None

    async def __aenter__(self) -> RawClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def corked(self) -> Iterator[None]:
        """Send everything queued inside the block in one write (one TCP segment, so the
        server reads, say, two requests' HEADERS in one ``data_received``)."""
        self._corked = True
        try:
            yield
        finally:
            self._corked = False
            self._flush()

    def stop_reading(self) -> None:
        """Stop reading the socket (the server's writes pile up in the kernel)."""
        if self._writer is not None:
            self._writer.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._writer is not None:
            self._writer.transport.resume_reading()

    @property
    def closed_by_peer(self) -> bool:
        """EOF or TCP reset seen."""
        return self.eof_at is not None or self.reset_at is not None

    # ------------------------------------------------------------------ I/O

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while True:
                try:
                    data = await reader.read(65536)
                except ConnectionResetError as exc:
                    self.reset_at = time.monotonic()
                    self.read_error = exc
                    return
                except (OSError, ssl.SSLError) as exc:
                    self.read_error = exc
                    self.reset_at = time.monotonic()
                    return
                now = time.monotonic()
                if not data:
                    self.eof_at = now
                    return
                self._on_bytes(data, now)
        finally:
            self._wake()

    def _on_bytes(self, data: bytes, now: float) -> None:
        self.received.extend(self._in.feed(data, now))
        for ev in self.core.receive(data, now):
            self._on_event(ev, now)
        self._pump_uploads()
        self._flush()
        self._wake()

    def _on_event(self, ev: Any, now: float) -> None:
        self.events.append((now, ev))
        kind = type(ev)
        st = self.streams.get(getattr(ev, "stream_id", -1))
        if kind is ResponseReceived and st is not None:
            status = dict(ev.headers).get(b":status")
            code = int(status) if status else None
            if code is not None and code >= 200:
                st.status, st.headers, st.response_at = code, ev.headers, now
        elif kind is DataReceived and st is not None:
            st.body += ev.data
        elif kind is StreamEnded and st is not None:
            st.ended_at = now
        elif kind is StreamReset and st is not None:
            st.reset_code, st.reset_at = ev.error_code, now
            self._uploads.pop(ev.stream_id, None)
        elif kind is GoAwayReceived:
            for sid in ev.unprocessed:
                if sid in self.streams:
                    self.streams[sid].unprocessed = True
                self._uploads.pop(sid, None)
        elif kind is ConnectionFailed:
            self.failure = ev
        elif kind in (WindowUpdated, SettingsReceived):
            pass  # uploads are pumped after every read

    def _flush(self) -> None:
        if self._corked:
            return
        data = self.core.data_to_send()
        if data:
            self.write_raw(data)

    def write_raw(self, data: bytes) -> None:
        """Write bytes as they are (they still go into :attr:`sent`)."""
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            return
        now = time.monotonic()
        self.sent.extend(self._out.feed(data, now))
        writer.write(data)
        self.last_write_at = now

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()

    def _pump_uploads(self) -> None:
        for sid in list(self._uploads):
            entry = self._uploads[sid]
            if not self.core.is_open(sid):
                del self._uploads[sid]
                continue
            data, end = entry
            n = self.core.send_data(sid, data, end_stream=end)
            entry[0] = data[n:]
            if not entry[0] and (n == len(data)):
                del self._uploads[sid]

    # ------------------------------------------------------------------ commands

    def open_stream(self, method: str, path: str, body: bytes | None = None, *,
                    headers: Iterable[tuple[str | bytes, str | bytes]] = (),
                    end_stream: bool = True) -> int:
        """Send a request's HEADERS (and body as far as the windows allow; the rest follows
        as WINDOW_UPDATEs arrive). ``end_stream=False`` leaves the request open: finish it
        with :meth:`send_data` or :meth:`end_stream`. Returns the stream id."""
        sid = self.core.next_stream_id()
        hdrs = [(b":method", method.encode()), (b":scheme", b"https" if self.tls else b"http"),
                (b":authority", self.authority), (b":path", path.encode())]
        for key, value in headers:
            hdrs.append((_b(key).lower(), _b(value)))
        if body is not None:
            hdrs.append((b"content-length", str(len(body)).encode()))
        now = time.monotonic()
        only_headers = end_stream and not body
        if not self.core.send_headers(sid, hdrs, end_stream=only_headers):
            raise RuntimeError(f"the engine would not open stream {sid}")
        self.streams[sid] = StreamLog(sid, now)
        if body:
            self._uploads[sid] = [body, end_stream]
            self._pump_uploads()
        self._flush()
        return sid

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Queue request body bytes on an open stream (sent as the windows allow)."""
        entry = self._uploads.get(stream_id)
        if entry is not None:
            entry[0] += data
            entry[1] = end_stream
        else:
            self._uploads[stream_id] = [data, end_stream]
        self._pump_uploads()
        self._flush()

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def reset_stream(self, stream_id: int, code: int = 0x8) -> None:
        self.core.reset_stream(stream_id, code)
        self._uploads.pop(stream_id, None)
        self._flush()

    def ping(self, payload: bytes = b"rawping!") -> bytes:
        """Send a PING; returns the 8-byte payload to look for in :meth:`ping_acked`."""
        payload = payload.ljust(8, b"\0")[:8]
        self.core.ping(payload, time.monotonic())
        self._flush()
        return payload

    def uploading(self, stream_id: int) -> int:
        """Request body bytes still waiting for window on the stream."""
        entry = self._uploads.get(stream_id)
        return len(entry[0]) if entry is not None else 0

    # ------------------------------------------------------------------ waiting

    async def wait_for(self, predicate: Callable[[], T], timeout: float,
                       what: str | None = None) -> T:
        """Wait until ``predicate()`` is truthy (checked after every read) and return it;
        fail the test with the frame log after ``timeout`` seconds."""
        assert self._changed is not None, "connect() first"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout:.3f}s waiting for "
                    f"{what or getattr(predicate, '__name__', 'a condition')}\n"
                    f"{self.describe()}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_frame(self, ftype: int, stream_id: int | None = None, *,
                         timeout: float = 2.0, **match: Any) -> Frame:
        """The first received frame of that type (and stream, and attribute values)."""
        frames = await self.wait_for(lambda: self.frames_of(ftype, stream_id, **match),
                                     timeout, f"{FRAME_NAMES.get(ftype, ftype)}[{stream_id}]"
                                     f" {match or ''}")
        return frames[0]

    async def wait_closed(self, timeout: float = 2.0) -> float:
        """Wait for EOF or a TCP reset; returns when it happened."""
        await self.wait_for(lambda: self.closed_by_peer, timeout, "EOF or TCP reset")
        at = self.eof_at if self.eof_at is not None else self.reset_at
        assert at is not None
        return at

    async def wait_response(self, stream_id: int, timeout: float = 2.0) -> StreamLog:
        """Wait until the stream ended (full response) or was reset."""
        st = self.streams[stream_id]
        await self.wait_for(lambda: st.ended_at is not None or st.reset_code is not None,
                            timeout, f"the end of stream {stream_id}")
        return st

    # ------------------------------------------------------------------ views

    def frames_of(self, ftype: int | None = None, stream_id: int | None = None,
                  **match: Any) -> list[Frame]:
        """Received frames of a type (``None``: any), on a stream (``None``: any), whose
        attributes equal ``match`` (for example ``ack=False``, ``error_code=7``)."""
        out = []
        for f in self.received:
            if ftype is not None and f.type != ftype:
                continue
            if stream_id is not None and f.stream_id != stream_id:
                continue
            if any(getattr(f, k) != v for k, v in match.items()):
                continue
            out.append(f)
        return out

    def sent_of(self, ftype: int | None = None, stream_id: int | None = None) -> list[Frame]:
        """Frames we wrote, parsed back from the bytes."""
        return [f for f in self.sent if (ftype is None or f.type == ftype)
                and (stream_id is None or f.stream_id == stream_id)]

    def data_bytes(self, stream_id: int) -> int:
        """Application bytes received in DATA frames on the stream."""
        return sum(f.data_length for f in self.frames_of(DATA, stream_id))

    def rst_code(self, stream_id: int) -> int | None:
        frames = self.frames_of(RST_STREAM, stream_id)
        return frames[0].error_code if frames else None

    def ping_acked(self, payload: bytes) -> Frame | None:
        for f in self.frames_of(PING, 0):
            if f.ack and f.payload == payload:
                return f
        return None

    def index_of(self, frame: Frame) -> int:
        """Position of a received frame in the log (for ordering assertions)."""
        for i, f in enumerate(self.received):
            if f is frame:
                return i
        raise ValueError("frame not in the log")

    def last_activity_before(self, at: float) -> float:
        """The latest frame read or written strictly before ``at``: when the connection was
        last busy as far as an idle timer is concerned."""
        times = [f.at for f in self.received if f.at < at]
        times += [f.at for f in self.sent if f.at < at]
        if self.connected_at is not None:
            times.append(self.connected_at)
        return max(times)

    def describe(self) -> str:
        lines = [f"received {len(self.received)} frames:"]
        lines += ["  " + str(f) for f in self.received[-40:]]
        lines.append(f"sent {len(self.sent)} frames:")
        lines += ["  " + str(f) for f in self.sent[-20:]]
        lines.append(f"eof_at={self.eof_at} reset_at={self.reset_at} "
                     f"read_error={self.read_error!r} failure={self.failure}")
        return "\n".join(lines)


def _b(value: str | bytes) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else value
