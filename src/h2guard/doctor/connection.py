"""One recorded HTTP/2 connection in the client role: what every doctor command drives.

There is no second HTTP/2 stack here: :class:`~h2guard.wire.core.H2Core` (client role) decides
what frames mean, and :class:`~h2guard.wire.trace.FrameParser` records every frame both ways,
with timestamps relative to the connection's start, independently of h2 (a trace must show what
was on the wire even when the state machine has given up). This module adds only what a doctor
needs around them:

* one-line, typed failures (:class:`DoctorError`) for a refused connection, a TLS failure, a
  server that does not speak HTTP/2, or a timeout: never a traceback;
* how the connection ended: GOAWAY (code, last_stream_id), FIN, TCP RST or still open;
* per-stream outcomes (status, headers, body bytes, trailers, reset code) with bounded waits;
* bounded memory: the frame log keeps the newest ``max_frames`` frames, bodies are counted, not
  kept (unless ``keep_body``), and every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal, cast
from urllib.parse import urlsplit

from h2guard.wire.core import H2Core
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    PingAcked,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2guard.wire.trace import FrameParser, TracedFrame

__all__ = ["Closed", "DoctorConnection", "DoctorError", "Exchange", "Target", "parse_target"]

CloseHow = Literal["goaway", "fin", "rst", "open"]


class DoctorError(Exception):
    """A one-line diagnosis of why the doctor could not talk HTTP/2 to the endpoint."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where to connect, parsed from a URL."""

    url: str
    host: str
    port: int
    path: str
    tls: bool
    authority: str


def parse_target(url: str, *, h2c: bool = False) -> Target:
    """``https://host[:port]/path`` (TLS, ALPN h2) or ``http://`` (cleartext: needs ``h2c``,
    HTTP/2 with prior knowledge). A bad URL is a :class:`DoctorError`."""
    parts = urlsplit(url if "://" in url else ("http://" if h2c else "https://") + url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise DoctorError(f"{url!r} is not an http:// or https:// URL with a host")
    tls = scheme == "https" and not h2c
    try:
        port = parts.port or (443 if tls else 80)
    except ValueError:
        raise DoctorError(f"{url!r} has an invalid port") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname
    default = 443 if tls else 80
    authority = host if port == default else f"{host}:{port}"
    if ":" in host and not authority.startswith("["):
        authority = f"[{host}]" if port == default else f"[{host}]:{port}"
    return Target(url, host, port, path, tls, authority)


@dataclass(slots=True)
class Exchange:
    """One request and what came back."""

    stream_id: int
    sent_at: float
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    trailers: list[tuple[bytes, bytes]] | None = None
    body_bytes: int = 0
    body: bytearray | None = None
    reset_code: int | None = None
    reset_by_peer: bool = True
    body_sent: int = 0  # request body bytes sent so far
    request_sent_at: float | None = None  # when the request's last byte went
    unprocessed: bool = False  # above a GOAWAY's last_stream_id
    first_byte_at: float | None = None
    ended_at: float | None = None
    end_stream_received: bool = False  # the peer's END_STREAM (not a reset, not a lost link)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ok(self) -> bool:
        return self.status is not None and self.reset_code is None and not self.unprocessed


@dataclass(frozen=True, slots=True)
class Closed:
    """How the connection ended (``how='open'``: it had not, by the deadline)."""

    how: CloseHow
    at: float | None = None
    goaway_code: int | None = None
    goaway_last_stream_id: int | None = None
    goaway_debug: bytes = b""
    transport: Literal["fin", "rst"] | None = None  # how TCP ended (after a GOAWAY too)


class _Protocol(asyncio.Protocol):
    def __init__(self, conn: DoctorConnection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.conn._on_bytes(data)

    def eof_received(self) -> bool | None:
        self.conn._on_lost("fin")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._on_lost("rst" if isinstance(exc, ConnectionResetError) else "fin")


class DoctorConnection:
    """A client connection that records everything. Open it with :meth:`open`."""

    def __init__(self, target: Target, *, max_frames: int = 10_000,
                 on_frame: Callable[[TracedFrame], None] | None = None) -> None:
        self.target = target
        self.core = H2Core(client=True)
        self.frames: deque[TracedFrame] = deque(maxlen=max_frames)
        self.on_frame = on_frame
        self.alpn: str | None = None
        self.tls_version: str | None = None
        self.peer_settings: dict[int, int] = {}
        self.settings_at: float | None = None
        self.exchanges: dict[int, Exchange] = {}
        self.closed: Closed | None = None
        self.goaway: GoAwayReceived | None = None
        self.failure: ConnectionFailed | None = None
        self.window_updates: list[tuple[float, int, int]] = []  # (at, stream, increment)
        self.ping_rtts: list[float] = []
        self._transport: asyncio.Transport | None = None
        self._start = time.monotonic()
        self._sent = FrameParser(direction="send", expect_preface=True)
        self._recv = FrameParser(direction="recv")
        self._changed = asyncio.Event()
        self._head = b""  # the first bytes received, to tell a non-HTTP/2 server at once
        self.not_h2: str | None = None
        self._unsent: dict[int, memoryview] = {}  # request body the peer's windows held back

    # ---------------------------------------------------------------- opening

    @classmethod
    async def open(cls, target: Target, *, insecure: bool = False, ca_file: str | None = None,
                   timeout: float = 10.0, settings: Mapping[int, int] | None = None,
                   max_frames: int = 10_000,
                   on_frame: Callable[[TracedFrame], None] | None = None) -> DoctorConnection:
        """Connect, negotiate h2 (ALPN, or prior knowledge on cleartext), exchange SETTINGS."""
        conn = cls(target, max_frames=max_frames, on_frame=on_frame)
        if settings:
            conn.core = H2Core(client=True, settings=settings)
        loop = asyncio.get_running_loop()
        ctx = _ssl_context(insecure, ca_file) if target.tls else None
        where = f"{target.host}:{target.port}"
        try:
            async with asyncio.timeout(timeout):
                await loop.create_connection(
                    lambda: _Protocol(conn), target.host, target.port, ssl=ctx,
                    server_hostname=target.host if ctx else None)
        except TimeoutError:
            raise DoctorError(f"{where}: no connection (and TLS handshake) within "
                              f"{timeout:g} s") from None
        except ssl.SSLCertVerificationError as exc:
            raise DoctorError(f"{where}: TLS certificate not trusted: {exc.verify_message} "
                              "(pass --ca-file, or --insecure to skip the check)") from None
        except ssl.SSLError as exc:
            raise DoctorError(f"{where}: TLS failed: {exc.reason or exc}") from None
        except ConnectionRefusedError:
            raise DoctorError(f"{where}: connection refused (nothing listens there)") from None
        except OSError as exc:
            raise DoctorError(f"{where}: cannot connect: {exc.strerror or exc}") from None
        transport = conn._transport
        assert transport is not None
        if ctx is not None:
            sslobj = transport.get_extra_info("ssl_object")
            conn.alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
            conn.tls_version = sslobj.version() if sslobj is not None else None
            if conn.alpn != "h2":
                transport.abort()
                offered = conn.alpn or "no protocol"
                raise DoctorError(f"{where}: the server does not speak HTTP/2 over TLS: ALPN "
                                  f"chose {offered} (offered h2, http/1.1)")
        conn.core.start(conn.now())
        conn._flush()
        try:
            await conn.wait(lambda: conn.settings_at is not None or conn.closed is not None
                            or conn.not_h2 is not None, timeout)
        except TimeoutError:
            conn.abort()
            raise DoctorError(f"{where}: no HTTP/2 SETTINGS from the server within "
                              f"{timeout:g} s") from None
        if conn.settings_at is None:
            conn.abort()
            raise DoctorError(f"{where}: {conn._not_h2_reason()}")
        return conn

    def _not_h2_reason(self) -> str:
        if self.not_h2 is not None:
            return f"the server does not speak HTTP/2 here: {self.not_h2}"
        for frame in self.frames:
            if frame.direction == "recv" and frame.type == "BAD_PREFACE":
                guess = frame.details.get("guess")
                return f"the server does not speak HTTP/2 here ({guess or 'not HTTP/2'})"
        if self.failure is not None:
            return f"not HTTP/2: {self.failure.message}"
        return "the server closed the connection before its SETTINGS (not HTTP/2?)"

    # ---------------------------------------------------------------- clock and waiting

    def now(self) -> float:
        """Seconds since the connection started (every timestamp here is on this clock)."""
        return time.monotonic() - self._start

    async def wait(self, predicate: Callable[[], object], timeout: float) -> None:
        """Until ``predicate()`` holds; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout: float) -> Closed:
        """How the connection ended, or ``Closed('open')`` if it had not within ``timeout``."""
        with contextlib.suppress(TimeoutError):
            await self.wait(lambda: self.closed is not None, timeout)
        return self.closed or Closed("open")

    # ---------------------------------------------------------------- commands

    def request(self, method: str = "GET", path: str | None = None, *,
                headers: Iterable[tuple[str, str]] = (), body: bytes | None = None,
                keep_body: bool = False, end_stream: bool = True) -> Exchange:
        """Send a request. A body larger than the peer's windows goes out as they open
        (WINDOW_UPDATE, SETTINGS): ``ex.body_sent`` counts what went, ``ex.request_sent_at``
        says when the last byte did (an upload through a stalled proxy shows as such).

        ``end_stream=False`` (no body) leaves the request open after its HEADERS, as if a body
        were to follow: a stream the server must hold until :meth:`finish` or a reset (how
        ``probe`` keeps streams open to find the stream limit a server enforces)."""
        core = self.core
        sid = core.next_stream_id()
        hdrs: list[tuple[bytes, bytes]] = [
                (b":method", method.encode()),
                (b":scheme", b"https" if self.target.tls else b"http"),
                (b":authority", self.target.authority.encode()),
                (b":path", (path or self.target.path).encode())]
        hdrs += [(k.lower().encode(), v.encode()) for k, v in headers]
        if body:
            hdrs.append((b"content-length", str(len(body)).encode()))
        ex = Exchange(sid, self.now(), body=bytearray() if keep_body else None)
        self.exchanges[sid] = ex
        if not core.send_headers(sid, hdrs, end_stream=not body and end_stream):
            ex.reset_code, ex.reset_by_peer = -1, False
            ex.done.set()
            return ex
        if body:
            self._unsent[sid] = memoryview(body)
            self._send_body(sid)
        else:
            ex.request_sent_at = ex.sent_at
        self._flush()
        return ex

    def _send_body(self, sid: int) -> None:
        """As much of the stream's unsent body as the windows allow, END_STREAM with the last."""
        left = self._unsent.get(sid)
        ex = self.exchanges.get(sid)
        if left is None or ex is None:
            return
        if ex.done.is_set():  # reset or lost: the rest will never go
            del self._unsent[sid]
            return
        sent = self.core.send_data(sid, bytes(left), end_stream=True)
        ex.body_sent += sent
        if sent >= len(left):
            del self._unsent[sid]
            ex.request_sent_at = self.now()
        else:
            self._unsent[sid] = left[sent:]

    async def response(self, ex: Exchange, timeout: float) -> Exchange:
        """Wait for the stream to end (response, reset or connection loss), bounded."""
        async with asyncio.timeout(timeout):
            await ex.done.wait()
        return ex

    def finish(self, ex: Exchange) -> None:
        """End the request side of a stream opened with ``end_stream=False`` (empty DATA with
        END_STREAM); nothing if the stream is already gone."""
        if self.core.is_open(ex.stream_id):
            self.core.end_stream(ex.stream_id)
            self._flush()

    def ping(self, payload: bytes = b"h2doctor") -> None:
        self.core.ping(payload, self.now())
        self._flush()

    def reset(self, ex: Exchange, code: int = 0x8) -> None:
        self.core.reset_stream(ex.stream_id, code)
        ex.reset_code, ex.reset_by_peer = code, False
        ex.done.set()
        self._flush()

    def close(self) -> None:
        """Say GOAWAY NO_ERROR and close."""
        if self._transport is not None and not self._transport.is_closing():
            self.core.goaway(code=0)
            self._flush()
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ---------------------------------------------------------------- plumbing

    def _record(self, parser: FrameParser, data: bytes) -> None:
        for frame in parser.feed(data, now=self.now()):
            self.frames.append(frame)
            if self.on_frame is not None:
                self.on_frame(frame)

    def _flush(self) -> None:
        data = self.core.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            self._record(self._sent, data)
            transport.write(data)

    def _on_bytes(self, data: bytes) -> None:
        if self.settings_at is None and len(self._head) < 9:
            self._head += data[:64]
            head = self._head
            # RFC 9113 §3.4: the server's preface is a SETTINGS frame on stream 0
            if len(head) >= 9 and (head[3] != 0x4 or any(head[5:9])):
                self.not_h2 = _guess(head)
                self._changed.set()
                return
        self._record(self._recv, data)
        now = self.now()
        for ev in self.core.receive(data, now):
            self._on_event(ev, now)
        if self._unsent:
            for sid in list(self._unsent):
                self._send_body(sid)
        self._flush()
        self._changed.set()

    def _on_event(self, ev: object, now: float) -> None:
        kind = type(ev)
        if kind is DataReceived:
            data = cast(DataReceived, ev)
            ex = self.exchanges.get(data.stream_id)
            if ex is not None:
                ex.body_bytes += len(data.data)
                if ex.first_byte_at is None:
                    ex.first_byte_at = now
                if ex.body is not None and len(ex.body) < 1 << 20:
                    ex.body += data.data[: (1 << 20) - len(ex.body)]
        elif kind is ResponseReceived:
            resp = cast(ResponseReceived, ev)
            ex = self.exchanges.get(resp.stream_id)
            if ex is not None:
                status = next((v for k, v in resp.headers if k == b":status"), b"0")
                code = int(status) if status.isdigit() else 0
                if code >= 200 or ex.status is None:
                    ex.status = code
                    ex.headers = list(resp.headers)
                    ex.first_byte_at = ex.first_byte_at or now
        elif kind is TrailersReceived:
            tr = cast(TrailersReceived, ev)
            ex = self.exchanges.get(tr.stream_id)
            if ex is not None:
                ex.trailers = list(tr.headers)
        elif kind is StreamEnded:
            ex = self.exchanges.get(cast(StreamEnded, ev).stream_id)
            if ex is not None:
                ex.ended_at = now
                ex.end_stream_received = True
                ex.done.set()
        elif kind is StreamReset:
            reset = cast(StreamReset, ev)
            ex = self.exchanges.get(reset.stream_id)
            if ex is not None:
                ex.reset_code, ex.reset_by_peer = reset.error_code, reset.remote
                ex.ended_at = now
                ex.done.set()
        elif kind is GoAwayReceived:
            goaway = cast(GoAwayReceived, ev)
            self.goaway = goaway
            for sid in goaway.unprocessed:
                ex = self.exchanges.get(sid)
                if ex is not None:
                    ex.unprocessed = True
                    ex.done.set()
        elif kind is SettingsReceived:
            if self.settings_at is None:
                self.settings_at = now
            self.peer_settings.update(cast(SettingsReceived, ev).changed)
        elif kind is WindowUpdated:
            wu = cast(WindowUpdated, ev)
            self.window_updates.append((now, wu.stream_id, wu.delta))
            del self.window_updates[:-10_000]
        elif kind is PingAcked:
            rtt = cast(PingAcked, ev).rtt
            if rtt is not None:
                self.ping_rtts.append(rtt)
        elif kind is ConnectionFailed:
            self.failure = cast(ConnectionFailed, ev)

    def _on_lost(self, how: Literal["fin", "rst"]) -> None:
        if self.closed is None:
            goaway = self.goaway
            self.closed = Closed(
                "goaway" if goaway is not None else how, self.now(),
                goaway.error_code if goaway else None,
                goaway.last_stream_id if goaway else None, goaway.debug if goaway else b"",
                how)
        self.core.mark_lost(f"connection closed ({how})")
        for ex in self.exchanges.values():
            if not ex.done.is_set():
                ex.ended_at = self.now()
                ex.done.set()
        self._changed.set()


def _guess(head: bytes) -> str:
    """What a server that did not start with SETTINGS seems to speak instead."""
    if head.startswith(b"HTTP/"):
        line = head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        return f"it answered {line!r} (HTTP/1.x; try https:// with ALPN, or drop --h2c)"
    if head[:1] in (b"\x15", b"\x16"):
        return "it answered with TLS (use https:// without --h2c)"
    return f"its first bytes were {head[:16]!r}, not an HTTP/2 SETTINGS frame"


def _ssl_context(insecure: bool, ca_file: str | None) -> ssl.SSLContext:
    try:
        ctx = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise DoctorError(f"--ca-file {ca_file}: cannot be loaded: {exc}") from None
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx
