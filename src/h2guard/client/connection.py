"""One client HTTP/2 connection: the asyncio adapter around the sans-IO core (client role).

It moves bytes and arms timers, nothing else: the core decides what frames mean. Every way a
stream can end badly becomes a :class:`~h2guard.errors.Failure` on that stream, with
``processed`` set from what the protocol proves (a REFUSED_STREAM or a stream above a GOAWAY's
last_stream_id was never processed; a reset after the request was written maybe was), so the
pool above can move safe requests elsewhere without guessing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any, Literal, cast

from h2guard.client.dial import Dialer
from h2guard.errors import Failure, FailureKind, Processed, attach
from h2guard.events import EventLog
from h2guard.wire.core import H2Core
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    GoAwayViolated,
    Headers,
    PingAcked,
    PingTimedOut,
    ResponseReceived,
    ResponseTimedOut,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2guard.wire.recorder import FlightRecorder

__all__ = ["Connection", "ConnectionSettings", "GoAwayTrust", "StreamState", "TrustGoAway"]

log = logging.getLogger("h2guard.client")
frames_log = logging.getLogger("h2guard.frames")
"""Every frame of every connection at DEBUG (off by default; ``H2GUARD_FRAME_LOG=1`` turns
it on with a stderr handler, without code changes)."""


def _frame_log_from_env() -> None:
    if os.environ.get("H2GUARD_FRAME_LOG", "").lower() in ("1", "true", "yes", "on"):
        frames_log.setLevel(logging.DEBUG)
        if not frames_log.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s h2guard.frames %(message)s"))
            frames_log.addHandler(handler)


_frame_log_from_env()

_REFUSED = 0x7
_HTTP_1_1_REQUIRED = 0xD
_MCS = 0x3
_SEND_SLICE = 1 << 16  # request body bytes handed to the core per call
_BATCH = 16  # request HEADERS per write at most, when many are opened in one loop tick
_DIRECT = Dialer()
_NEVER = float("inf")
_VIOLATION_WATCH = 1.0
"""Seconds a drained connection stays open after moving streams off it, to see whether the
server answers one of them anyway (and so learn not to trust its GOAWAYs)."""


TrustGoAway = bool | Literal["learn"]


class GoAwayTrust:
    """Whether a GOAWAY's "above last_stream_id: not processed" is believed, per origin.

    RFC 9113 §6.8 says streams above last_stream_id were not processed, so they may move to a
    new connection whatever their method. Real servers break it: a Node.js http2 app calling
    ``session.goaway(0, stream.id)`` still runs the streams above that id, and a POST moved
    off such a connection runs twice. ``"learn"`` (the default) believes an origin until it
    answers a stream it had called unprocessed (the proof: it ran it), then treats that
    origin's streams above a GOAWAY as maybe processed for the life of the transport: moved
    only if idempotent or keyed, by the retry layer. ``True`` always believes, ``False`` never.
    """

    __slots__ = ("learned", "mode")

    def __init__(self, mode: TrustGoAway = "learn") -> None:
        if mode not in (True, False, "learn"):
            raise ValueError(f"trust_goaway must be True, False or 'learn', got {mode!r}")
        self.mode: TrustGoAway = mode
        self.learned: dict[str, int] = {}  # origin -> violations seen

    def trusts(self, origin: str) -> bool:
        return self.mode is True or (self.mode == "learn" and origin not in self.learned)

    def violated(self, origin: str) -> bool:
        """Record a violation; True if this is the origin's first."""
        first = origin not in self.learned
        self.learned[origin] = self.learned.get(origin, 0) + 1
        return first

    def why_not(self, origin: str) -> str:
        if self.mode is False:
            return "trust_goaway=False: streams above a GOAWAY count as maybe processed"
        return (f"{origin} has answered streams above its own GOAWAY's last_stream_id before "
                "(it processes them: a Node.js-style session.goaway bug), so they count as "
                "maybe processed")


class ConnectionSettings:
    """Per-connection knobs, shared by every connection of a pool (see the transport)."""

    __slots__ = ("connection_window", "flight_recorder", "goaway_trust", "max_header_list_size",
                 "ping_interval", "ping_timeout", "stream_window")

    def __init__(self, *, stream_window: int, connection_window: int, ping_interval: float,
                 ping_timeout: float, max_header_list_size: int = 65536,
                 goaway_trust: GoAwayTrust | None = None, flight_recorder: int = 32) -> None:
        if flight_recorder < 0:
            raise ValueError("flight_recorder is a number of frames (0 turns it off)")
        self.flight_recorder = flight_recorder
        self.stream_window = stream_window
        self.connection_window = connection_window
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_header_list_size = max_header_list_size
        self.goaway_trust = goaway_trust if goaway_trust is not None else GoAwayTrust()


class Signal:
    """A one-shot-per-wait flag like ``asyncio.Event``, but with no future until someone
    actually waits: most streams are read without ever waiting, and there is one per request."""

    __slots__ = ("_fut", "_set")

    def __init__(self) -> None:
        self._set = False
        self._fut: asyncio.Future[None] | None = None

    def set(self) -> None:
        self._set = True
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    def clear(self) -> None:
        self._set = False
        self._fut = None

    async def wait(self) -> None:
        if self._set:
            return
        if self._fut is None or self._fut.done():
            self._fut = asyncio.get_running_loop().create_future()
        await self._fut


class StreamState:
    """What one request's stream has seen so far; the transport's response reads from it."""

    __slots__ = ("body_done", "chunks", "conn", "ended", "failure", "headers", "readable",
                 "response", "sid", "status", "writable")

    def __init__(self, conn: Connection, sid: int) -> None:
        self.conn = conn
        self.sid = sid
        loop = conn.loop
        self.response: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.headers: Headers = []
        self.chunks: deque[bytes] = deque()
        # made by the first reader / writer that has to wait (most never do): a waiter checks
        # its condition first, so a signal that starts unset loses no wake-up
        self.readable: Signal | None = None
        self.writable: Signal | None = None
        self.ended = False
        self.body_done = False  # our request body is fully sent
        self.failure: Failure | None = None

    def fail(self, failure: Failure) -> None:
        if self.failure is not None or (self.ended and self.response.done()):
            return
        self.failure = failure
        if not self.response.done():
            self.response.set_result(None)
        self.wake()

    def wake(self) -> None:
        """Wake the stream's reader and writer, if they wait: something changed."""
        self.wake_reader()
        self.wake_writer()

    def wake_reader(self) -> None:
        if self.readable is not None:
            self.readable.set()

    def wake_writer(self) -> None:
        if self.writable is not None:
            self.writable.set()

    async def wait_readable(self) -> None:
        """Wait until the stream has news for its reader (call after checking for it)."""
        signal = self.readable
        if signal is None:
            signal = self.readable = Signal()
        else:
            signal.clear()
        await signal.wait()

    async def wait_writable(self, timeout: float | None) -> None:
        """Wait (at most ``timeout`` s) until the stream may send more (after checking)."""
        signal = self.writable
        if signal is None:
            signal = self.writable = Signal()
        else:
            signal.clear()
        await asyncio.wait_for(signal.wait(), timeout)


class Connection(asyncio.Protocol):
    """An HTTP/2 connection to one origin. Create it through :meth:`open`."""

    def __init__(self, origin: str, settings: ConnectionSettings, events: EventLog | None,
                 on_change: Callable[[Connection], None]) -> None:
        self.origin = origin
        self.cfg = settings
        self.events = events
        self.on_change = on_change
        self.loop = asyncio.get_running_loop()
        core_settings = {0x2: 0, 0x4: settings.stream_window,
                         0x6: settings.max_header_list_size}
        self.core = H2Core(client=True, settings=core_settings,
                           connection_window=settings.connection_window,
                           max_header_list_size=settings.max_header_list_size,
                           ping_interval=settings.ping_interval,
                           ping_timeout=settings.ping_timeout)
        self.core.auto_ack = False  # acknowledge DATA as the reader consumes it
        if settings.flight_recorder:
            self.core.recorder = FlightRecorder(settings.flight_recorder, client=True,
                                                log=frames_log, label=origin)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamState] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self.draining = False
        self.failure: Failure | None = None
        self.refusals = 0
        self.created = self.loop.time()
        self.last_active = self.created
        self.expires_at = float("inf")
        self.write_paused = False
        self.write_ready = asyncio.Event()
        self.write_ready.set()
        self.ping_waiter: asyncio.Future[float] | None = None
        self._timer: asyncio.TimerHandle | None = None  # the connection's one timer
        self._timer_at = _NEVER
        self.requests = 0
        self._watch_until = 0.0
        self._watch_timer: asyncio.TimerHandle | None = None
        self._flush_pending = False
        self._unflushed = 0

    # ------------------------------------------------------------------ opening

    @classmethod
    async def open(cls, *, host: str, port: int, ssl_context: ssl.SSLContext | None,
                   origin: str, settings: ConnectionSettings, events: EventLog | None,
                   on_change: Callable[[Connection], None], timeout: float | None,
                   server_hostname: str | None = None, dialer: Dialer | None = None,
                   proxy: str | None = None) -> Connection | str:
        """Connect and exchange prefaces. Returns the connection, or the ALPN protocol the
        server chose instead of h2 (``"http/1.1"``) so the caller can fall back."""

        async def connect() -> Connection | str:
            if ssl_context is not None:
                # offer h2 again: a caller's SSLContext is shared with the transport's HTTP/1.1
                # delegate, and httpcore sets ALPN ["http/1.1"] on it for each of its connects
                ssl_context.set_alpn_protocols(["h2", "http/1.1"])
            transport, proto = await (dialer or _DIRECT).dial(
                lambda: cls(origin, settings, events, on_change), host, port,
                ssl_context=ssl_context,
                server_hostname=server_hostname if ssl_context else None, proxy=proxy)
            conn = cast(Connection, proto)
            if ssl_context is not None:
                sslobj = transport.get_extra_info("ssl_object")
                alpn = sslobj.selected_alpn_protocol() if sslobj is not None else None
                if alpn != "h2":
                    transport.close()
                    return alpn or "http/1.1"
            await conn.ready
            if conn.failure is not None:
                if conn.failure.kind == "not_http2":  # no retry helps: raise it as it is
                    raise attach(conn.failure)
                raise ConnectionError(conn.failure.detail)
            return conn

        return await asyncio.wait_for(connect(), timeout)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            import socket

            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover
                pass
        self.core.start(self.loop.time())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        events = self.core.receive(data, now)
        if not self.ready.done() and data[0] and events and \
                isinstance(events[-1], ConnectionFailed):
            # the first frame (SETTINGS, <= 16 KiB) starts with a zero byte; text such as
            # b"HTTP/1.1 400" does not: the server does not speak HTTP/2 (no retry will help)
            detail = _not_http2(self.origin, data)
            self._lost("not_http2", detail)
            self.failure = self._failure("not_http2", "no", None, detail=detail)
        for ev in events:
            if isinstance(ev, DataReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    if ev.data:
                        st.chunks.append(ev.data)
                        st.wake_reader()
                    if ev.flow_controlled_length > len(ev.data):  # padding: nobody reads it
                        self.core.acknowledge(ev.stream_id,
                                              ev.flow_controlled_length - len(ev.data))
                else:
                    self.core.acknowledge(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, ResponseReceived):
                self._on_response(ev)
            elif isinstance(ev, StreamEnded):
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    st.ended = True
                    if not st.response.done():  # END_STREAM without a final response
                        st.fail(self._failure("protocol", "maybe", st.sid,
                                              detail="stream ended without a response"))
                    st.wake_reader()
                    self._stream_closed(now)
            elif isinstance(ev, WindowUpdated):
                if ev.stream_id == 0:
                    for st in self.streams.values():
                        st.wake_writer()
                else:
                    st = self.streams.get(ev.stream_id)
                    if st is not None:
                        st.wake_writer()
            elif isinstance(ev, StreamReset):
                self._on_reset(ev)
            elif isinstance(ev, GoAwayReceived):
                self._on_goaway(ev)
            elif isinstance(ev, GoAwayViolated):
                self._on_goaway_violated(ev)
            elif isinstance(ev, SettingsReceived):
                if not self.ready.done():
                    self.ready.set_result(None)
                if _MCS in ev.changed:
                    self.on_change(self)
            elif isinstance(ev, PingAcked):
                waiter = self.ping_waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(ev.rtt or 0.0)
            elif isinstance(ev, TrailersReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st.wake_reader()
            elif isinstance(ev, ConnectionFailed):
                self._lost("protocol", ev.message, code=ev.error_code)
        self._flush()

    def eof_received(self) -> bool | None:
        self._lost("connection_lost", "the server closed the connection (EOF)")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, OSError) and not self.closed:
            self._drain_unread()
        reason = f"{type(exc).__name__}: {exc}" if exc else "the connection closed"
        self._lost("connection_lost", reason)

    def _drain_unread(self) -> None:
        """A write failed (EPIPE / ECONNRESET: the server closed while we wrote) and asyncio
        stopped reading, but what the server sent before closing (a GOAWAY, whole responses)
        may still sit unread in the kernel's buffer: read it, so streams end as the server
        meant (finished, or unprocessed and movable) instead of all as "maybe processed".
        Plain TCP only: TLS records cannot be read around the SSL layer."""
        transport = self.transport
        if transport is None or transport.get_extra_info("sslcontext") is not None:
            return
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        for _ in range(256):  # bounded: at most 16 MiB
            if fd < 0 or self.closed:
                return
            try:
                data = os.read(fd, 65536)
            except OSError:  # nothing left (EAGAIN), or the reset itself
                return
            if not data:
                return
            self.data_received(data)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.write_ready.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.write_ready.set()

    # ------------------------------------------------------------------ events

    def _on_response(self, ev: ResponseReceived) -> None:
        st = self.streams.get(ev.stream_id)
        if st is None:
            return
        headers = ev.headers
        if headers and headers[0][0] == b":status" and \
                (len(headers) == 1 or headers[1][0][:1] != b":"):
            status_raw = headers[0][1]  # the usual block (pseudo-header fields come first)
            fields = headers[1:]
        else:
            status_raw = b""
            for key, value in headers:
                if key == b":status":
                    status_raw = value
                    break
            fields = [(k, v) for k, v in headers if k[:1] != b":"]
        if status_raw[:1] == b"1" and status_raw != b"101":
            return  # informational (100 Continue, 103 Early Hints): wait for the final one
        if st.response.done():
            return  # trailers arrive as TrailersReceived; a second response is ignored
        st.status = int(status_raw or b"0")
        st.headers = fields
        st.response.set_result(None)

    def _on_reset(self, ev: StreamReset) -> None:
        st = self.streams.pop(ev.stream_id, None)
        if st is None:
            return
        code = ev.error_code
        got_response = st.response.done() and st.failure is None
        if code == 0 and got_response and not st.body_done:
            # NO_ERROR after a response: the server does not need the rest of our body
            st.body_done = True
            st.ended = True
            st.wake()
            self._stream_closed()
            return
        if code == _REFUSED:
            self.refusals += 1
            kind: FailureKind = "refused_stream"
            processed: Processed = "no"
            if self.refusals >= 2 and not self.draining:
                self._retire("refused twice")
        elif code == _HTTP_1_1_REQUIRED:
            kind, processed = "http_1_1_required", "no"
        else:
            kind, processed = "stream_reset", "yes" if got_response else "maybe"
        self._emit("client.stream_reset", stream=ev.stream_id, code=code, kind=kind)
        st.fail(self._failure(kind, processed, ev.stream_id, code=code))
        self._stream_closed()

    def _on_goaway(self, ev: GoAwayReceived) -> None:
        first = not self.draining
        self.draining = True
        self._emit("client.goaway", code=ev.error_code, last_stream_id=ev.last_stream_id,
                   unprocessed=len(ev.unprocessed))
        trust = self.cfg.goaway_trust
        trusted = trust.trusts(self.origin)
        processed: Processed = "no" if trusted else "maybe"
        detail = "" if trusted else trust.why_not(self.origin)
        for sid in ev.unprocessed:
            st = self.streams.pop(sid, None)
            if st is not None:
                st.fail(self._failure("goaway_unprocessed", processed, sid, code=ev.error_code,
                                      last_stream_id=ev.last_stream_id, detail=detail))
        if ev.unprocessed:
            # a response on one of those streams would prove the server ran it: keep
            # listening a moment after the last stream ends before closing
            self._watch_until = self.loop.time() + _VIOLATION_WATCH
        if first:
            self.on_change(self)
        self._stream_closed()

    def _on_goaway_violated(self, ev: GoAwayViolated) -> None:
        first = self.cfg.goaway_trust.violated(self.origin)
        self._emit("client.goaway_violation", stream=ev.stream_id,
                   last_stream_id=ev.last_stream_id, frame=ev.frame, first=first)
        if first:
            proof = ("answered stream %d" if ev.frame != "GOAWAY" else
                     "raised its GOAWAY's last_stream_id over stream %d")
            log.warning("%s " + proof + ", which its GOAWAY (last_stream_id %d) had called "
                        "unprocessed: it processed a request it said it had not. Streams above "
                        "this origin's GOAWAYs now count as maybe processed (resent only if "
                        "idempotent or keyed); trust_goaway=False sets this from the start.",
                        self.origin, ev.stream_id, ev.last_stream_id,
                        extra={"h2guard": {"event": "client.goaway_violation",
                                           "origin": self.origin, "stream": ev.stream_id}})

    def _stream_closed(self, now: float | None = None) -> None:
        if now is None:
            now = self.loop.time()
        self.last_active = now
        if self.draining and not self.streams:
            if now < self._watch_until and self._watch_timer is None and not self.closed:
                self._watch_timer = self.loop.call_at(self._watch_until, self.close)
            elif self._watch_timer is None:
                self.close()
        self.on_change(self)

    def _lost(self, kind: FailureKind, detail: str, *, code: int | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        failure = self._failure(kind, "maybe", None, code=code, detail=detail)
        self.failure = failure
        trace = failure.trace
        if not self.ready.done():
            self.ready.set_result(None)
        if self.ping_waiter is not None and not self.ping_waiter.done():
            self.ping_waiter.set_exception(ConnectionError(detail))
            # mark it retrieved: a PING whose wait timed out (shielded) has no reader left,
            # and asyncio would log "Future exception was never retrieved"
            self.ping_waiter.exception()
        for sid, st in list(self.streams.items()):
            st.fail(Failure(kind, "maybe", code, sid, self.core.goaway_received, self.origin,
                            detail, trace=trace))
        self.streams.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watch_timer is not None:
            self._watch_timer.cancel()
        if self.transport is not None:
            self.transport.abort() if kind == "ping_timeout" else self.transport.close()
        self.write_ready.set()
        self._emit("client.connection_closed", reason=detail)
        self.on_change(self)

    # ------------------------------------------------------------------ using

    @property
    def usable(self) -> bool:
        """May a new stream open here now?"""
        return (not self.closed and not self.draining and self.ready.done()
                and self.core.can_open_stream())

    @property
    def stream_limit(self) -> int:
        return int(self.core.remote_settings.get(_MCS, 2**31 - 1))

    def open_stream(self, headers: Headers, *, end_stream: bool,
                    now: float | None = None) -> StreamState:
        """Send request HEADERS on a new stream (the caller checked :attr:`usable`)."""
        core = self.core
        sid = core.next_stream_id()
        if now is None:
            now = self.loop.time()
        streams = self.streams
        if not streams:
            core.waiting_from(now)
        st = StreamState(self, sid)
        streams[sid] = st
        if not core.send_headers(sid, headers, end_stream=end_stream):
            del streams[sid]
            raise ConnectionError("could not open a stream")
        st.body_done = end_stream
        self.requests += 1
        self.last_active = now
        # The HEADERS of requests opened this tick go out together, but in batches of
        # _BATCH: a server that answers a burst in one write would otherwise wait idle while
        # all 50 responses are processed here, then get all 50 new requests at once (lockstep).
        self._unflushed += 1
        if self._unflushed >= _BATCH:
            self._flush()
        else:
            self._flush_soon()
        if self._timer is None:
            self._arm()
        return st

    async def exchange(self, headers: Headers, *, body: Iterable[bytes] | AsyncIterable[bytes]
                       | None, write_timeout: float | None,
                       read_timeout: float | None) -> StreamState:
        """Send one request on a new stream; return once its response started or it failed.

        The answer is the stream's ``failure``: None — done (status, headers and the body's
        first chunks are on the stream); ``processed == "no"`` — the server provably never
        processed it, so it may go to another connection; anything else — failed. ``body`` is
        None for no body. Raises ConnectionError if this connection would not open a stream
        (it is going away: the caller tries another)."""
        now = self.loop.time()
        st = self.open_stream(headers, end_stream=body is None, now=now)
        try:
            if body is not None:
                await self._send_body(st, body, write_timeout)
                now = self.loop.time()
            if not st.response.done():
                if read_timeout is not None:
                    self.expect_response(st, read_timeout, now)
                await st.response
        except asyncio.CancelledError:
            self.cancel(st)
            raise
        return st

    def expect_response(self, st: StreamState, timeout: float, now: float | None = None) -> None:
        """The response to ``st`` must start within ``timeout`` seconds from now, or the
        stream fails as ``timeout`` and is reset (one timer per connection, not per stream)."""
        if now is None:
            now = self.loop.time()
        if self.core.expect_response(st.sid, timeout, now) or self._timer is None:
            self._arm()

    async def _send_body(self, st: StreamState,
                         chunks: Iterable[bytes] | AsyncIterable[bytes],
                         timeout: float | None) -> None:
        try:
            if isinstance(chunks, AsyncIterable):
                async for chunk in chunks:
                    await self.send_body(st, chunk, timeout=timeout)
            else:
                for chunk in chunks:
                    await self.send_body(st, chunk, timeout=timeout)
        except TimeoutError:
            st.fail(Failure("write", "maybe", None, st.sid, None, self.origin,
                            f"the server took no more body within {timeout} s"))
            self.cancel(st)
            return
        self.end_body(st)

    async def send_body(self, st: StreamState, chunk: bytes, *, timeout: float | None) -> None:
        """Send one chunk of request body, waiting for window and socket as needed."""
        view = memoryview(chunk)
        while view:
            if st.failure is not None or st.body_done:
                return
            # copy at most one slice: bytes(view) of a 50 MB body per window was quadratic
            piece = bytes(view[:_SEND_SLICE])
            sent = self.core.send_data(st.sid, piece)
            if sent:
                view = view[sent:]
                self._flush()
            if view and sent < len(piece):  # the window is spent: wait for WINDOW_UPDATE
                await st.wait_writable(timeout)
            if self.write_paused:
                await asyncio.wait_for(self.write_ready.wait(), timeout)

    def end_body(self, st: StreamState) -> None:
        if st.failure is None and not st.body_done:
            self.core.end_stream(st.sid)
            st.body_done = True
            self._flush()

    def consumed(self, st: StreamState, length: int) -> None:
        """The reader took ``length`` bytes: let the server send that much more."""
        if length and not self.closed and self.core.acknowledge(st.sid, length):
            self._flush_soon()

    def cancel(self, st: StreamState) -> None:
        """The caller gave up on the stream (closed the response early): RST_STREAM CANCEL."""
        if self.streams.pop(st.sid, None) is not None and not self.closed:
            self.core.reset_stream(st.sid, 0x8)
            self._flush()
            self._stream_closed()

    async def ping(self, timeout: float) -> float:
        """Round trip of one PING; raises TimeoutError if the connection stopped answering."""
        if self.ping_waiter is None or self.ping_waiter.done():
            self.ping_waiter = self.loop.create_future()
            self.core.ping(os.urandom(8), self.loop.time())
            self._flush()
        return await asyncio.wait_for(asyncio.shield(self.ping_waiter), timeout)

    def abandon(self, reason: str) -> None:
        """Stop using the connection at once: every stream fails, the socket is aborted."""
        self._emit("client.ping_timeout", reason=reason)
        self._lost("ping_timeout", reason)

    def close(self) -> None:
        """Graceful close: GOAWAY then FIN (streams in flight fail as connection_lost)."""
        if self.closed:
            return
        if not self.core.closed:
            self.core.goaway(code=0, last_stream_id=0)
            self._flush()
        self._lost("connection_lost", "closed by the client")

    def expire_after(self, seconds: float) -> None:
        """Retire this connection ``seconds`` after it opened (max_age, with the pool's
        jitter): load rebalances and request caps are met gracefully."""
        self.expires_at = self.created + seconds

    def tidy(self, now: float, *, max_idle: float) -> bool:
        """Apply the connection's own lifetime rules at ``now``: closed when idle for
        ``max_idle`` (before a middlebox drops it silently), retired past its age. True if a
        new stream may open here now."""
        if self.closed:
            return False
        if not self.streams and now - self.last_active >= max_idle:
            self._emit("client.connection_idle_closed", idle=round(now - self.last_active, 3))
            self.close()
            return False
        if now >= self.expires_at and not self.draining:
            self._retire("max age")
            return False
        return self.usable

    def _retire(self, reason: str) -> None:
        """No new streams here; the ones in flight finish."""
        self.draining = True
        self._emit("client.connection_retired", reason=reason)
        self.on_change(self)

    # ------------------------------------------------------------------ liveness

    def _arm(self) -> None:
        """(Re)arm the connection's one timer for the moment the core next has something to
        decide (:meth:`H2Core.get_timer`): a response deadline or the PING watchdog."""
        due = self.core.get_timer()
        if due is None or self.closed:
            return
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()
        self._timer_at = due
        self._timer = self.loop.call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        """What the core decided when the timer fired: overdue responses fail their streams
        (and reset them); a PING unanswered in time abandons the connection."""
        self._timer = None
        self._timer_at = _NEVER
        if self.closed:
            return
        for ev in self.core.handle_timer(self.loop.time()):
            if isinstance(ev, ResponseTimedOut):
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.response.done():
                    st.fail(self._failure("timeout", "maybe", st.sid,
                                          detail=f"no response within {ev.after:g} s"))
                    self.cancel(st)
            elif isinstance(ev, PingTimedOut):
                self.abandon(f"no PING answer within {ev.after:g} s while waiting for a "
                             "response")
                return
        self._flush()
        self._arm()

    # ------------------------------------------------------------------ plumbing

    def _failure(self, kind: FailureKind, processed: Processed, sid: int | None, *,
                 code: int | None = None, last_stream_id: int | None = None,
                 detail: str = "") -> Failure:
        return Failure(kind, processed, code, sid, last_stream_id, self.origin, detail,
                       trace=self.trace())

    def trace(self) -> tuple[str, ...]:
        """The flight recorder's last frames (empty when it is off)."""
        recorder = self.core.recorder
        return recorder.lines() if recorder is not None else ()

    def _emit(self, name: str, **data: Any) -> None:
        if self.events is not None:
            self.events.emit(name, origin=self.origin, **data)

    def _flush_soon(self) -> None:
        """Write at the end of this loop tick: one syscall for many streams' frames (a send
        costs more than the h2 work of a small request on the machines measured here)."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_pending = False
        self._unflushed = 0
        data = self.core.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)


def _not_http2(origin: str, data: bytes) -> str:
    """One line for a server that answered the HTTP/2 preface with text (HTTP/1.x)."""
    line = data.strip().splitlines()[0][:64] if data.strip() else data[:64]
    if origin.startswith("http://"):
        return (f"The server at {origin} does not speak HTTP/2 with prior knowledge: it "
                f"answered {line!r} to the HTTP/2 preface; drop http2_prior_knowledge (HTTP/1.1) "
                "or use https (HTTP/2 by ALPN)")
    return (f"The server at {origin} chose h2 by ALPN but answered {line!r} to the HTTP/2 "
            "preface: it does not speak HTTP/2")
