"""The sans-IO heart of the chaos server: one HTTP/2 connection's faults, limits and streams.

An :class:`Executor` takes bytes and ``now`` in and gives bytes, :mod:`actions <Action>` and a
deadline out; it never touches a socket, a clock or an event loop. The asyncio adapter
(:mod:`h2guard.chaos.adapter`) feeds it what the socket read, writes what
:meth:`Executor.data_to_send` returns, carries out :meth:`Executor.actions` (close with FIN or
RST, black-hole, forward to the upstream) and keeps one timer armed at
:meth:`Executor.get_timer`, calling :meth:`Executor.handle_timer` when it fires, the way
aioquic's connection owns its deadlines. Tests drive it the same way with a made-up ``now``.

A stream walks through its moments (request headers, request end, app, response headers,
response body) as a small step machine; at each moment the :class:`FaultSet` is asked whether a
fault fires. A fault that must wait (a delay, a withheld window, a deferred app response) arms
a timer of the executor's own. The common case, a request with no fault, is answered inside
the :meth:`Executor.receive` call that completed it.

Self-protection (:class:`~h2guard.chaos.model.Limits`) is decided here too: handshake and idle
deadlines, token buckets for RST_STREAM and control frames, and a bound on the answers queued
for a peer that does not read. Bodies are produced lazily: a stream queues at most
``_OUTPUT_BUDGET`` bytes per :meth:`Executor.data_to_send` call and nothing while the adapter
says the socket is full (:meth:`Executor.pause_writing`), so a peer that never reads costs the
socket buffers and no more.

In proxy mode the executor asks the adapter to :class:`Forward` each request as soon as its
request-headers faults have passed, streams the body both ways under flow control (the
downstream window reopens only as the upstream takes the bytes, the upstream's only as the
client takes them: :class:`ResponseConsumed`), forwards trailers, and passes an upstream
RST_STREAM or GOAWAY on as the matching downstream frame.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from h2guard.chaos.app import _BLOCK, Deferred, Request, Response
from h2guard.chaos.faults import FaultSet, StreamFault, StreamInfo
from h2guard.chaos.model import Delay, GoAway, IdleAction, Limits, Moment, RstStream
from h2guard.codes import code_name
from h2guard.wire.core import MAX_STREAM_ID, H2Core, frame_header
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    PingReceived,
    RequestReceived,
    SettingsReceived,
    StreamEnded,
    StreamRefused,
    StreamRejected,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

__all__ = [
    "MAX_REQUEST_BODY",
    "Action",
    "Blackhole",
    "Close",
    "Executor",
    "ExecutorContext",
    "Forward",
    "ForwardCancel",
    "ForwardData",
    "ForwardTrailers",
    "ResponseConsumed",
]

MAX_REQUEST_BODY = 256 * 1024 * 1024
"""Request bodies above this get 413 from the built-in app (it holds the bodies it echoes).
Proxied bodies are streamed and not limited."""
_CONTINUE, _SUSPEND, _STOP = 0, 1, 2
_MAX_CHUNK = 65536
_OUTPUT_BUDGET = 256 * 1024
"""Bytes of body queued per data_to_send() before the streams wait for the next call."""
_NO_ERROR, _PROTOCOL_ERROR, _INTERNAL_ERROR, _FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
_REFUSED_STREAM, _CANCEL = 0x7, 0x8
_MAX_OVERRUN_WINDOW = 4 * 1024 * 1024
"""An overrun fault sends the client's whole window and more: above this, RST_STREAM
FLOW_CONTROL_ERROR instead (the output stays bounded)."""

# stream steps
_WAIT_END, _REQ_END, _APP, _APP_WAIT, _AFTER_APP, _HEADERS, _RESP_HEADERS, _BODY, _DONE = range(9)


# ------------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Action:
    """Something the adapter must do that bytes cannot say."""


@dataclass(frozen=True, slots=True)
class Close(Action):
    """End the connection. ``fin``: write what is queued, half-close, discard input a while
    (a lingering close, so queued responses are not destroyed by a TCP RST: how a server ends
    a connection after GOAWAY); ``close``: write what is queued and close now, TLS
    close_notify and FIN, no linger (a load balancer timing out a connection: the client learns
    at once, and what it sends afterwards is lost); ``rst``: TCP RST now (SO_LINGER 0);
    ``abort``: drop it now (a peer that does not read)."""

    how: Literal["fin", "close", "rst", "abort"] = "fin"


@dataclass(frozen=True, slots=True)
class Blackhole(Action):
    """Stop reading and answering, and never close (what an AWS NLB does to a forgotten flow)."""


@dataclass(frozen=True, slots=True)
class Forward(Action):
    """Proxy mode: open an upstream exchange for this stream. ``end_stream``: the request
    ended with its headers (and no request_end fault holds it); else the body and the end
    follow as :class:`ForwardData`."""

    stream_id: int
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    end_stream: bool


@dataclass(frozen=True, slots=True)
class ForwardData(Action):
    """Proxy mode: request body bytes for the upstream."""

    stream_id: int
    data: bytes
    end_stream: bool


@dataclass(frozen=True, slots=True)
class ForwardTrailers(Action):
    """Proxy mode: request trailers for the upstream (they end the request)."""

    stream_id: int
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class ForwardCancel(Action):
    """Proxy mode: the stream ended early downstream; reset the upstream exchange."""

    stream_id: int
    code: int


@dataclass(frozen=True, slots=True)
class ResponseConsumed(Action):
    """Proxy mode: ``n`` response bytes went to the client; reopen the upstream's window."""

    stream_id: int
    n: int


# ------------------------------------------------------------------------------------- context


@dataclass(slots=True)
class ExecutorContext:
    """What a connection needs of its server, passed in (the executor imports no server).

    ``app`` answers a complete request (unused in proxy mode); ``emit`` records an event;
    ``count_fault`` and ``count_request`` keep the server's totals; ``count_request`` and
    ``count_attempt`` (a stream refused before it became a request) take the ``x-request-id``,
    so the ledger can tell how many attempts one logical request took."""

    faults: FaultSet
    app: Callable[[Request], Response | Deferred]
    emit: Callable[..., Any]
    count_fault: Callable[[str, str], None]
    count_request: Callable[[str | None], None]
    count_attempt: Callable[[str | None], None]
    limits: Limits
    proxy: bool = False
    max_header_list_size: int = 65536
    validate_headers: bool = True


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The ``x-request-id`` header of a request, if any (the ledger counts attempts by it)."""
    for key, value in headers:
        if key == b"x-request-id":
            return value.decode("latin-1")
    return None


def _credit(sent: int) -> int:
    """Control frames a client may send for ``sent`` bytes of DATA: a WINDOW_UPDATE for the
    stream and one for the connection per frame (16 KiB, the smallest frame size)."""
    return 2 * (-(-sent // 16384)) + 2


class _Timer:
    __slots__ = ("args", "cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self.when = when
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_CONTROL_PER_REQUEST = 4
"""Control frames each request earns the client (WINDOW_UPDATE, PRIORITY, PRIORITY_UPDATE per
stream), so a busy legitimate client is never cut off as a flood."""


class _Bucket:
    """A token bucket holding one second's worth: ``rate`` at once, refilled at ``rate``/s."""

    __slots__ = ("last", "rate", "tokens")

    def __init__(self, rate: int, now: float) -> None:
        self.rate = float(rate)
        self.tokens = float(rate)
        self.last = now

    def take(self, n: int, now: float) -> bool:
        elapsed = now - self.last
        if elapsed > 0:
            self.tokens = min(self.rate, self.tokens + elapsed * self.rate)
            self.last = now
        self.tokens -= n
        return self.tokens >= 0

    def give(self, n: int) -> None:
        self.tokens = min(self.rate, self.tokens + n)


class _Stream:
    __slots__ = (
        "body",
        "body_bytes",
        "body_faults",
        "body_len",
        "body_size",
        "consumed",
        "dead",
        "delay_after",
        "delay_ready",
        "end_after_headers",
        "ended",
        "forward_ended",
        "forwarded",
        "header_faults",
        "headers",
        "headers_done",
        "info",
        "method",
        "mpos",
        "path",
        "proxied",
        "resp_headers",
        "response",
        "sent",
        "sid",
        "step",
        "timer",
        "trailers",
        "upstream_done",
        "window_blocked",
    )

    def __init__(self, sid: int, method: str, path: str, headers: list[tuple[bytes, bytes]],
                 info: StreamInfo) -> None:
        self.sid = sid
        self.method = method
        self.path = path
        self.headers = headers
        self.info = info
        self.body: list[bytes] = []
        self.body_size = 0
        self.ended = False
        self.step = _WAIT_END
        self.mpos = 0
        self.dead = False
        self.response: Response | None = None
        self.resp_headers: list[tuple[bytes, bytes]] | None = None
        self.body_bytes: bytes | None = None
        self.body_len = 0
        self.sent = 0
        self.body_faults: list[tuple[int, StreamFault]] = []
        self.header_faults: list[tuple[int, StreamFault]] = []
        self.delay_after: int | None = None
        self.delay_ready = False
        self.timer: _Timer | None = None
        self.window_blocked = False
        self.end_after_headers = False
        self.headers_done = False  # the request-headers moment has passed (no delay pending)
        # proxy mode
        self.forwarded = False
        self.forward_ended = False
        self.proxied: deque[bytes] | None = None
        self.upstream_done = False
        self.trailers: list[tuple[bytes, bytes]] | None = None
        self.consumed = 0


class Executor:
    """One client connection's HTTP/2, faults and limits, with no I/O.

    Call :meth:`start`, then :meth:`receive` with every chunk read; after every call write
    :meth:`data_to_send` (until it returns nothing or the socket is full), carry out
    :meth:`actions` and re-arm one timer at :meth:`get_timer`.
    """

    def __init__(self, ctx: ExecutorContext, *, connection_id: int, peer: str = "?") -> None:
        self.ctx = ctx
        self.cid = connection_id
        self.peer = peer
        self.core: H2Core | None = None
        self.streams: dict[int, _Stream] = {}
        self.now = 0.0
        self.opened = 0.0
        self.last_sent = 0.0
        self.requests = 0
        self.write_paused = False
        # streams waiting for window or socket room, oldest turn first (a dict keeps order)
        self.blocked: dict[_Stream, None] = {}
        self._turn_end: int | None = None  # inside _pump: where this stream's turn ends
        self.closing = False
        self.blackholed = False
        self.final_goaway = False
        self.hold_open = False  # a drain or a close_after timer ends the connection, not us
        self.handling = False  # inside a batch: close only once the whole batch is handled
        self.handshaken = False
        self.keep_above = False  # a process_above GOAWAY: streams above its id still run
        self._actions: list[Action] = []
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._idle_timer: _Timer | None = None
        self._resets_seen = 0
        self._control_seen = 0
        self._requests_credited = 0
        self._data_frames = 0
        self._acks_only = False
        limits = ctx.limits
        self._guard = limits if limits.enabled else None
        self._reset_bucket: _Bucket | None = None
        self._control_bucket: _Bucket | None = None

    # ------------------------------------------------------------------ adapter interface

    def start(self, now: float) -> None:
        """The connection is HTTP/2 (ALPN or a sniffed preface): queue our SETTINGS."""
        self.now = self.opened = self.last_sent = now
        faults = self.ctx.faults
        scenario = faults.scenario.settings
        settings: dict[int, int] = {}
        if scenario.max_concurrent_streams is not None:
            settings[0x3] = scenario.max_concurrent_streams
        if scenario.initial_window_size is not None:
            settings[0x4] = scenario.initial_window_size
        if scenario.max_frame_size is not None:
            settings[0x5] = scenario.max_frame_size
        if scenario.header_table_size is not None:
            settings[0x1] = scenario.header_table_size
        header_limit = (self.ctx.limits.max_header_list_size
                        or scenario.max_header_list_size or self.ctx.max_header_list_size)
        limit = faults.stream_limit
        if limit is not None:
            settings[0x3] = limit.limit
        core = H2Core(client=False, settings=settings,
                      validate_inbound_headers=self.ctx.validate_headers,
                      max_header_list_size=header_limit,
                      connection_window=scenario.connection_window)
        if limit is not None and not limit.enforce:
            core.set_stream_limit(None)
        self.core = core
        core.start(now)
        self.ctx.emit("chaos.connection.opened", connection=self.cid, peer=self.peer,
                      protocol="h2")
        guard = self._guard
        if guard is not None:
            self._reset_bucket = _Bucket(guard.max_resets_per_second, now)
            self._control_bucket = _Bucket(guard.max_control_frames_per_second, now)
            self._later(guard.handshake_timeout, self._handshake_expired)
            if guard.idle_timeout is not None:
                self._later(guard.idle_timeout, self._guard_idle)
        self._arm_connection_faults()

    def receive(self, data: bytes, now: float) -> None:
        """Bytes read from the socket."""
        if self.blackholed or self.closing:
            return  # a black hole answers nothing; a lingering close discards input
        core = self.core
        assert core is not None
        self.now = now
        events = core.receive(data, now)
        # a PING ACK is not activity (an idle timeout with ping_resets = false)
        self._acks_only = bool(events) and type(events[0]) is PingReceived and \
            all(type(ev) is PingReceived for ev in events)
        if events:
            self.handling = True
            try:
                self._handle(events)
            finally:
                self.handling = False
            self._maybe_finish()
        if self._guard is not None and not self.closing:
            self._check_rates(now)

    def data_to_send(self) -> bytes:
        """What to write now; call again until it returns nothing (or the socket is full)."""
        core = self.core
        if core is None or self.blackholed:
            return b""
        data = core.data_to_send()
        if not data and self.blocked and not self.write_paused and not self.closing:
            self._pump()
            data = core.data_to_send()
        if data and not self._acks_only:
            self.last_sent = self.now
        self._acks_only = False
        return data

    def actions(self) -> list[Action]:
        """The actions decided since the last call, in order."""
        out, self._actions = self._actions, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (``None``: no deadline)."""
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def handle_timer(self, now: float) -> None:
        """Run every timer that is due."""
        self.now = now
        timers = self._timers
        core = self.core
        while timers and timers[0][0] <= now:
            _, _, timer = heapq.heappop(timers)
            if timer.cancelled or self.closing:
                continue
            if core is not None and core.pending_output():
                self.last_sent = now  # an earlier timer of this batch answered something
            timer.cancelled = True
            timer.fn(*timer.args)

    def pause_writing(self) -> None:
        """The socket's buffer is full: produce no more body and no new responses."""
        self.write_paused = True

    def resume_writing(self, now: float) -> None:
        """The socket drained: streams waiting for it go on at the next :meth:`data_to_send`."""
        self.now = now
        self.write_paused = False

    def connection_lost(self, reason: str) -> None:
        """The socket is gone: forget every stream and timer."""
        self.closing = True
        for _, _, timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for st in self.streams.values():
            self._kill(st)
        self.streams.clear()
        self.ctx.emit("chaos.connection.closed", connection=self.cid, requests=self.requests,
                      reason=reason)

    # ------------------------------------------------------------------ upstream (proxy mode)

    def upstream_response(self, sid: int, status: int, headers: list[tuple[bytes, bytes]],
                          end_stream: bool, now: float) -> None:
        """The upstream's response HEADERS for a forwarded stream."""
        st = self._live(sid, now)
        if st is None:
            return
        st.resp_headers = [(b":status", str(status).encode()), *headers]
        st.proxied = deque()
        st.upstream_done = end_stream
        st.body_len = 0 if end_stream else -1
        if st.step in (_REQ_END, _APP) and st.timer is not None:
            return  # a request-end delay holds END_STREAM: the response goes on after it
        if st.step < _AFTER_APP:
            st.step = _AFTER_APP
            st.mpos = 0
            self._advance(st)

    def upstream_data(self, sid: int, data: bytes, end_stream: bool, now: float) -> None:
        """Response body bytes from the upstream (the adapter reopens the upstream window only
        as :class:`ResponseConsumed` says the client took them)."""
        st = self._live(sid, now)
        if st is None or st.proxied is None:
            return
        if data:
            st.proxied.append(data)
        if end_stream:
            st.upstream_done = True
        if st.step == _BODY and not st.timer:
            self._advance(st)

    def upstream_trailers(self, sid: int, headers: list[tuple[bytes, bytes]],
                          now: float) -> None:
        """Response trailers from the upstream: sent once the body before them went."""
        st = self._live(sid, now)
        if st is None or st.proxied is None:
            return
        st.trailers = headers
        st.upstream_done = True
        if st.step == _BODY and not st.timer:
            self._advance(st)

    def upstream_reset(self, sid: int, code: int, now: float) -> None:
        """The upstream reset the stream: the client gets RST_STREAM with the same code."""
        st = self._live(sid, now)
        if st is None:
            return
        st.upstream_done = True
        self.ctx.emit("chaos.upstream.stream_reset", connection=self.cid, stream=sid,
                      code=code_name(code))
        self._reset(st, code)

    def upstream_failed(self, sid: int, status: int, message: str, now: float) -> None:
        """The upstream could not answer: a 502/504 if no response started, else a reset."""
        st = self._live(sid, now)
        if st is None:
            return
        st.upstream_done = True
        self.ctx.emit("chaos.upstream.failed", connection=self.cid, stream=sid, status=status,
                      message=message)
        if st.step >= _HEADERS or st.resp_headers is not None:
            self._reset(st, _INTERNAL_ERROR)
            return
        body = (message + "\n").encode()
        st.resp_headers = [(b":status", str(status).encode()),
                           (b"content-type", b"text/plain; charset=utf-8"),
                           (b"content-length", str(len(body)).encode())]
        st.proxied = deque([body] if body and st.method != "HEAD" else [])
        st.body_len = -1
        if st.step < _AFTER_APP:
            st.step = _AFTER_APP
            st.mpos = 0
            self._advance(st)

    def upstream_request_consumed(self, sid: int, n: int, now: float) -> None:
        """The upstream took ``n`` request body bytes: reopen the client's window by that."""
        self.now = now
        core = self.core
        if core is not None and not self.closing:
            core.acknowledge(sid, n)

    def upstream_goaway(self, code: int, debug: bytes, unprocessed: list[int],
                        now: float) -> None:
        """The upstream connection sent GOAWAY: so does this one. Streams the upstream never
        processed are above the downstream last_stream_id, or reset with REFUSED_STREAM."""
        self.now = now
        core = self.core
        if core is None or self.closing:
            return
        gone = set(unprocessed)
        processed = [s for s, st in self.streams.items() if st.forwarded and s not in gone]
        last = max(processed, default=0)
        self.ctx.emit("chaos.upstream.goaway_received", connection=self.cid,
                      code=code_name(code), unprocessed=sorted(gone), last_stream_id=last)
        for sid in sorted(self.streams):
            st = self.streams[sid]
            if sid <= last and (sid in gone or not st.forwarded):
                self._reset(st, _REFUSED_STREAM)
        self._send_goaway(code, last, debug, None)
        for sid in [s for s in self.streams if s > last]:
            self._kill(self.streams.pop(sid))
        self._maybe_finish()

    def _live(self, sid: int, now: float) -> _Stream | None:
        self.now = now
        st = self.streams.get(sid)
        if st is None or st.dead or self.closing:
            return None
        return st

    # ------------------------------------------------------------------ events

    def _handle(self, events: list[Any]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is RequestReceived:
                self._on_request(ev)
            elif kind is DataReceived:
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.dead:
                    self._on_data(st, ev.data)
            elif kind is StreamEnded:
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.ended:
                    self._on_end(st)
            elif kind is WindowUpdated:
                self._on_window(ev.stream_id)
            elif kind is StreamReset:
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    self._kill(st)
                self.ctx.emit("chaos.stream.reset_by_client", connection=self.cid,
                              stream=ev.stream_id, code=code_name(ev.error_code))
            elif kind is TrailersReceived:
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.dead and st.forwarded and not st.forward_ended:
                    # request trailers end the upstream request (StreamEnded follows)
                    st.forward_ended = True
                    self._actions.append(ForwardTrailers(st.sid, ev.headers))
            elif kind is StreamRefused:
                self._on_refused(ev)
            elif kind is StreamRejected:
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    self._kill(st)
                self.ctx.emit("chaos.stream.malformed", connection=self.cid,
                              stream=ev.stream_id, code="PROTOCOL_ERROR", message=ev.message)
            elif kind is SettingsReceived:
                self.handshaken = True
                if 0x4 in ev.changed:  # a new initial window applies to open streams too
                    self._on_window(0)
            elif kind is GoAwayReceived:
                self.ctx.emit("chaos.goaway_received", connection=self.cid,
                              code=code_name(ev.error_code), last_stream_id=ev.last_stream_id)
            elif kind is PingReceived:
                pass
            elif kind is ConnectionFailed:
                limit = "header_list_size" if ev.message.startswith("DenialOfService") \
                    else None
                self.ctx.emit("chaos.protocol_error", connection=self.cid,
                              code=code_name(ev.error_code), message=ev.message)
                if limit is not None:
                    self._count_limit(limit, ev.error_code)
                self._close("fin")
                return
        self._maybe_finish()

    def _on_data(self, st: _Stream, data: bytes) -> None:
        if self.ctx.proxy:
            if st.forwarded:
                if data:
                    self._actions.append(ForwardData(st.sid, data, False))
            else:
                st.body.append(data)  # bounded: its window reopens only once forwarded
            return
        st.body_size += len(data)
        if st.body_size > MAX_REQUEST_BODY:
            self._fail_stream(st, 413, "request body too large")
        else:
            st.body.append(data)

    def _on_end(self, st: _Stream) -> None:
        st.ended = True
        if not st.headers_done:
            return  # a request-headers delay is pending: its end moves the stream on
        if st.step == _WAIT_END:
            st.step = _REQ_END
            self._advance(st)
        elif st.forwarded and not st.forward_ended:
            # the upstream answered before the request ended (bidirectional streaming)
            st.forward_ended = True
            self._actions.append(ForwardData(st.sid, b"", True))

    def _on_request(self, ev: RequestReceived) -> None:
        core = self.core
        assert core is not None
        if core.goaway_sent is not None and ev.stream_id > core.goaway_sent \
                and not self.keep_above:
            # read in the same batch as the stream whose fault sent the GOAWAY: the core
            # accepted it before the GOAWAY existed, but it must not reach the app
            core.reset_stream(ev.stream_id, _REFUSED_STREAM)
            self._on_refused(StreamRefused(ev.stream_id, "after_goaway", ev.headers))
            return
        self.requests += 1
        method = path = ""
        rid: str | None = None
        for key, value in ev.headers:
            if key == b":method":
                method = value.decode("latin-1")
            elif key == b":path":
                path = value.decode("latin-1")
            elif key == b"x-request-id":
                rid = value.decode("latin-1")
        self.ctx.count_request(rid)
        faults = self.ctx.faults
        cap = faults.request_cap
        if (ev.end_stream and cap is None and faults.quiet and not self.ctx.proxy
                and not self.write_paused):
            # the hot path: nothing to decide, so the stream gets its state only if its
            # answer cannot go at once
            self._lower_limit_after_requests()
            self._serve_quietly(ev.stream_id, method, path, ev.headers, None)
            return
        st = self._open(ev.stream_id, method, path, ev.headers, ev.end_stream)
        if cap is not None and self.requests >= cap.max_requests and core.goaway_sent is None:
            self._emit_fault("request_cap", cap.code, st, "request_headers",
                             max_requests=cap.max_requests)
            self._send_goaway(cap.code, ev.stream_id, b"", cap.close_after)
        self._lower_limit_after_requests()
        if st.ended and faults.quiet and not self.ctx.proxy and not self.write_paused:
            self._serve_quietly(st.sid, method, path, st.headers, st)
            return
        if faults.by_moment["request_headers"]:
            result = self._run_moment(st, "request_headers")
            if result != _CONTINUE:  # stopped, or a delay: resume at its end
                return
        st.mpos = 0
        self._headers_passed(st)

    def _open(self, sid: int, method: str, path: str, headers: list[tuple[bytes, bytes]],
              ended: bool) -> _Stream:
        """The state of a request's stream, from its headers on."""
        info = StreamInfo(self.cid, sid, method, path, headers, self.requests,
                          self.now - self.opened)
        st = _Stream(sid, method, path, headers, info)
        self.streams[sid] = st
        if ended:
            st.ended = True
        elif self.ctx.proxy:
            assert self.core is not None
            self.core.withhold_window(sid)  # reopened as the upstream takes the body
        return st

    def _lower_limit_after_requests(self) -> None:
        limit = self.ctx.faults.stream_limit
        if (limit is not None and limit.lower_to is not None
                and limit.lower_after_requests is not None
                and self.requests == limit.lower_after_requests):
            self._lower_limit()

    def _headers_passed(self, st: _Stream) -> None:
        """The request-headers moment is over: forward (proxy) and move on."""
        st.headers_done = True
        if self.ctx.proxy and not st.forwarded:
            self._forward(st)
        if st.ended and st.step == _WAIT_END:
            st.step = _REQ_END
            self._advance(st)

    def _forward(self, st: _Stream) -> None:
        st.forwarded = True
        # A request that ended with its headers goes as one (a GET stays a bodiless GET for an
        # HTTP/1.1 upstream), unless request_end faults must act before the upstream sees
        # its end: then the end follows as ForwardData once they have passed.
        whole = st.ended and not st.body and not self.ctx.faults.by_moment["request_end"]
        st.forward_ended = whole
        self._actions.append(Forward(st.sid, st.method, st.path, st.headers, whole))
        for chunk in st.body:
            if chunk:
                self._actions.append(ForwardData(st.sid, chunk, False))
        st.body = []

    def _on_refused(self, ev: StreamRefused) -> None:
        core = self.core
        assert core is not None
        self.ctx.count_attempt(request_id_of(ev.headers))
        kind = "max_concurrent_streams" if ev.reason == "stream_limit" else "goaway"
        self.ctx.emit("chaos.fault", connection=self.cid, stream=ev.stream_id,
                      kind=kind, code="REFUSED_STREAM", moment="request_headers",
                      reason=ev.reason, limit=core.stream_limit)
        self.ctx.count_fault(kind, "REFUSED_STREAM")

    def _on_window(self, stream_id: int) -> None:
        if stream_id == 0:
            for st in self.blocked:
                st.window_blocked = False
        else:
            one = self.streams.get(stream_id)
            if one is not None:
                one.window_blocked = False
        if not self.write_paused:
            self._pump()

    def _pump(self) -> None:
        """Give the streams waiting for window or socket room another turn."""
        core = self.core
        assert core is not None
        progressed = True
        while progressed:
            progressed = False
            for st in list(self.blocked):
                if st.window_blocked or self.write_paused:
                    continue
                pending = core.pending_output()
                if pending >= _OUTPUT_BUDGET:
                    return
                # one chunk per turn: a stream that still has more goes to the back of the
                # line, so concurrent bodies share the connection instead of one taking it all
                self.blocked.pop(st, None)
                self._turn_end = pending + _MAX_CHUNK
                try:
                    self._advance(st)
                finally:
                    self._turn_end = None
                progressed = progressed or core.pending_output() > pending

    # ------------------------------------------------------------------ stream steps

    def _advance(self, st: _Stream) -> None:
        """Walk a stream through its moments until it must wait, ends or dies."""
        ctx = self.ctx
        faults = ctx.faults
        while not st.dead:
            step = st.step
            if step == _REQ_END:
                if faults.by_moment["request_end"]:
                    result = self._run_moment(st, "request_end")
                    if result != _CONTINUE:
                        return
                st.step = _APP
            elif step == _APP:
                if ctx.proxy:
                    if not st.forward_ended:
                        st.forward_ended = True
                        self._actions.append(ForwardData(st.sid, b"", True))
                    if st.resp_headers is not None:  # it answered during a request_end delay
                        st.step = _AFTER_APP
                        st.mpos = 0
                        continue
                    st.step = _APP_WAIT
                    return
                req = Request(st.method, st.path, st.headers,
                              b"".join(st.body) if len(st.body) != 1 else st.body[0],
                              st.sid, self.cid)
                st.body = []
                out = ctx.app(req)
                if isinstance(out, Deferred):
                    self._defer(st, out)
                    return
                st.response = out
                st.step = _AFTER_APP
            elif step == _APP_WAIT:
                return
            elif step == _AFTER_APP:
                if faults.by_moment["after_app"]:
                    result = self._run_moment(st, "after_app")
                    if result != _CONTINUE:
                        return
                st.step = _HEADERS
            elif step == _HEADERS:
                if self.write_paused:  # no new response into a full socket
                    self._park(st)
                    return
                self._send_headers(st)
                if st.dead:
                    return
                st.step = _RESP_HEADERS
            elif step == _RESP_HEADERS:
                if st.end_after_headers:
                    st.step = _DONE
                    continue
                if st.header_faults:
                    result = self._run_decided(st, "response_headers")
                    if result != _CONTINUE:
                        return
                st.step = _BODY
            elif step == _BODY:
                if not self._send_body(st):
                    return
                st.step = _DONE
            elif step == _DONE:
                self.streams.pop(st.sid, None)
                st.dead = True
                self._maybe_finish()
                return
            else:  # _WAIT_END
                return

    def _serve_quietly(self, sid: int, method: str, path: str,
                       headers: list[tuple[bytes, bytes]], st: _Stream | None) -> None:
        """The hot path: no stream fault is configured and the request has no body, so the
        step machine has nothing to decide; answer at once (a deferred app still waits).
        ``st`` None: the stream has no state yet, and needs none if the whole answer goes."""
        out = self.ctx.app(Request(method, path, headers, b"", sid, self.cid))
        core = self.core
        assert core is not None
        done = 2  # not tried
        if not isinstance(out, Deferred) and type(out.body) is bytes and method != "HEAD":
            done = core.respond(sid, out.h2_headers, out.body)
            if done > 0:
                if st is not None:
                    self.streams.pop(sid, None)
                    st.dead = True
                return
        if st is None:
            st = self._open(sid, method, path, headers, True)
        if isinstance(out, Deferred):
            self._defer(st, out)
            return
        st.response = out
        if done < 0:
            self._kill(st)
            return
        if done == 0:
            body = out.body
            assert type(body) is bytes
            st.body_bytes = body  # headers went; the window is short for the body
            st.body_len = len(body)
            st.step = _BODY
            self._advance(st)
            return
        st.step = _HEADERS
        self._advance(st)

    def _defer(self, st: _Stream, out: Deferred) -> None:
        """The app answers later (``/delay``): park the stream until its timer fires."""
        st.step = _APP_WAIT
        st.response = out.response
        st.timer = self._later(out.delay, self._resume_app, st)

    def _resume_app(self, st: _Stream) -> None:
        st.timer = None
        if st.dead:
            return
        st.step = _AFTER_APP
        self._advance(st)

    def _send_headers(self, st: _Stream) -> None:
        core = self.core
        assert core is not None
        faults = self.ctx.faults
        if st.resp_headers is not None:  # proxied: the upstream's headers, its framing
            headers = st.resp_headers
            upstream_empty = st.upstream_done and not st.proxied and st.trailers is None
            st.body_len = 0 if upstream_empty else -1
        else:
            resp = st.response
            assert resp is not None
            headers = resp.h2_headers
            if st.method == "HEAD":  # headers (content-length included) but never a body
                st.body_bytes = b""
                st.body_len = 0
            else:
                if isinstance(resp.body, bytes):
                    st.body_bytes = resp.body
                st.body_len = resp.length
        # Which faults fire is decided before the HEADERS go, so that a response with no body
        # and no fault ends with its HEADERS frame (a gRPC trailers-only response needs it).
        if faults.by_moment["response_body"]:
            st.body_faults = [(fid, f) for fid, f in faults.by_moment["response_body"]
                              if faults.fires(fid, f.when, st.info)]
        if faults.by_moment["response_headers"]:
            st.header_faults = [(fid, f) for fid, f in faults.by_moment["response_headers"]
                                if faults.fires(fid, f.when, st.info)]
        end = st.body_len == 0 and not st.body_faults and not st.header_faults
        if not core.send_headers(st.sid, headers, end_stream=end):
            self._kill(st)
            return
        st.end_after_headers = end

    def _send_body(self, st: _Stream) -> bool:
        """Send what the windows and the output budget allow; True when the body is done."""
        core = self.core
        assert core is not None
        if st.proxied is not None:
            return self._send_proxied(st)
        body = st.body_bytes
        if (body is not None and not st.body_faults and not st.sent and not self.write_paused
                and len(body) <= _MAX_CHUNK):
            # The common case: a small body that fits the window goes out in one call.
            sent = core.send_data(st.sid, body, end_stream=True)
            self._data_frames += _credit(sent)
            if sent == len(body):
                return True
            st.sent = sent  # the window was short (or the stream died): the loop sorts it out
        while True:
            if st.body_faults:
                result = self._body_faults(st)
                if result != _CONTINUE:
                    return False
            left = st.body_len - st.sent
            if left <= 0:
                core.end_stream(st.sid)
                return True
            size = self._room(st)
            if size <= 0:
                return False
            size = min(left, size)
            if st.body_bytes is not None:
                chunk = st.body_bytes[st.sent : st.sent + size]
            else:
                chunk = _BLOCK[:size]
            last = st.sent + size >= st.body_len and not st.body_faults
            sent = core.send_data(st.sid, chunk, end_stream=last)
            if sent <= 0:
                self._kill(st)
                return False
            st.sent += sent
            self._data_frames += _credit(sent)
            st.delay_ready = False
            if last and sent == size:
                return True

    def _park(self, st: _Stream) -> None:
        """Wait for window or socket room, at the back of the line."""
        self.blocked.pop(st, None)
        self.blocked[st] = None

    def _room(self, st: _Stream) -> int:
        """How much of the body may go now: 0 parks the stream until window or socket room."""
        core = self.core
        assert core is not None
        pending = core.pending_output()
        if self.write_paused or pending >= _OUTPUT_BUDGET or (
                self._turn_end is not None and pending >= self._turn_end):
            self._park(st)
            return 0
        window = core.window(st.sid)
        if window <= 0:
            st.window_blocked = True
            self._park(st)
            return 0
        size = min(window, _MAX_CHUNK)
        nxt = self._next_threshold(st)
        if nxt is not None and nxt > st.sent:
            size = min(size, nxt - st.sent)
        if st.delay_ready:  # a paced body: one DATA frame (16384 always fits) per delay
            size = min(size, 16384)
        return size

    def _send_proxied(self, st: _Stream) -> bool:
        """Forward the upstream's body as it arrives, then its trailers or END_STREAM."""
        core = self.core
        assert core is not None and st.proxied is not None
        queue = st.proxied
        consumed = 0
        try:
            while True:
                if st.body_faults:
                    result = self._body_faults(st)
                    if result != _CONTINUE:
                        return False
                if not queue:
                    if not st.upstream_done:
                        return False  # upstream_data() resumes the stream
                    if st.trailers is not None:
                        if not core.send_headers(st.sid, st.trailers, end_stream=True):
                            self._kill(st)
                            return False
                    else:
                        core.end_stream(st.sid)
                    return True
                size = self._room(st)
                if size <= 0:
                    return False
                chunk = queue[0]
                piece = chunk if len(chunk) <= size else chunk[:size]
                last = (len(piece) == len(chunk) and len(queue) == 1 and st.upstream_done
                        and st.trailers is None and not st.body_faults)
                sent = core.send_data(st.sid, piece, end_stream=last)
                if sent <= 0 and piece:
                    self._kill(st)
                    return False
                consumed += sent
                st.sent += sent
                self._data_frames += _credit(sent)
                st.delay_ready = False
                if sent == len(chunk):
                    queue.popleft()
                else:
                    queue[0] = chunk[sent:]
                if last and sent == len(chunk):
                    return True
        finally:
            if consumed:
                self._actions.append(ResponseConsumed(st.sid, consumed))

    def _next_threshold(self, st: _Stream) -> int | None:
        best: int | None = None
        for _, fault in st.body_faults:
            after = fault.after_bytes if isinstance(fault, (RstStream, Delay)) else 0
            if after > st.sent and (best is None or after < best):
                best = after
        return best

    def _body_faults(self, st: _Stream) -> int:
        """Apply the body faults whose ``after_bytes`` has been reached; a delay stays armed
        and pauses before every further DATA frame."""
        remaining: list[tuple[int, StreamFault]] = []
        pause: Delay | None = None
        more = st.sent < st.body_len or (st.proxied is not None and (
            bool(st.proxied) or not st.upstream_done))
        for fid, fault in st.body_faults:
            after = fault.after_bytes if isinstance(fault, (RstStream, Delay)) else 0
            if after > st.sent:
                remaining.append((fid, fault))
                continue
            if isinstance(fault, Delay):
                remaining.append((fid, fault))
                if pause is None and not st.delay_ready and more:
                    pause = fault
                continue
            if self._apply(st, fid, fault, "response_body") == _STOP:
                return _STOP
        st.body_faults = remaining
        if pause is not None:
            st.delay_ready = True
            if st.delay_after is None:  # one event per stream, not one per frame
                st.delay_after = st.sent
                self._emit_fault("delay", None, st, "response_body",
                                 seconds=self._delay_of(pause, st),
                                 after_bytes=pause.after_bytes)
            st.timer = self._later(self._delay_of(pause, st), self._resume, st)
            return _SUSPEND
        return _CONTINUE

    def _resume(self, st: _Stream) -> None:
        st.timer = None
        if st.dead:
            return
        self._advance(st)

    # ------------------------------------------------------------------ faults

    def _run_moment(self, st: _Stream, moment: Moment) -> int:
        faults = self.ctx.faults
        entries = faults.by_moment[moment]
        while st.mpos < len(entries):
            fid, fault = entries[st.mpos]
            st.mpos += 1
            if not faults.fires(fid, fault.when, st.info):
                continue
            result = self._apply(st, fid, fault, moment)
            if result != _CONTINUE:
                return result
        st.mpos = 0
        return _CONTINUE

    def _run_decided(self, st: _Stream, moment: Moment) -> int:
        """Apply faults already decided to fire (response headers: decided before they went)."""
        while st.mpos < len(st.header_faults):
            fid, fault = st.header_faults[st.mpos]
            st.mpos += 1
            result = self._apply(st, fid, fault, moment)
            if result != _CONTINUE:
                return result
        st.mpos = 0
        return _CONTINUE

    def _apply(self, st: _Stream, fid: int, fault: StreamFault, moment: Moment) -> int:
        core = self.core
        assert core is not None
        faults = self.ctx.faults
        if isinstance(fault, RstStream):
            self._emit_fault("rst_stream", fault.code, st, moment, fault_id=fid,
                             sent_bytes=st.sent)
            self._reset(st, fault.code)
            return _STOP
        if isinstance(fault, GoAway):
            return self._apply_goaway(st, fid, fault, moment)
        if isinstance(fault, Delay):
            seconds = self._delay_of(fault, st)
            self._emit_fault("delay", None, st, moment, fault_id=fid, seconds=seconds)
            st.timer = self._later(seconds, self._resume_delay, st)
            return _SUSPEND
        # FlowControl
        if moment == "request_headers" and fault.withhold_updates:
            core.withhold_window(st.sid)
            seconds = faults.scaled(fault.withhold_updates)
            self._emit_fault("flow_control", None, st, moment, fault_id=fid,
                             action="withhold_window_update", seconds=seconds)
            self._later(seconds, self._release_window, st.sid)
            if fault.at != moment or not (fault.error or fault.overrun):
                return _CONTINUE
        if fault.overrun:
            self._emit_fault("flow_control", _FLOW_CONTROL_ERROR, st, moment, fault_id=fid,
                             action="overrun")
            self._overrun(st)
            return _STOP
        if fault.error:
            self._emit_fault("flow_control", _FLOW_CONTROL_ERROR, st, moment, fault_id=fid,
                             action="rst_stream")
            self._reset(st, _FLOW_CONTROL_ERROR)
            return _STOP
        return _CONTINUE

    def _reset(self, st: _Stream, code: int) -> None:
        """RST_STREAM downstream (and cancel the upstream exchange of a proxied stream)."""
        core = self.core
        assert core is not None
        core.reset_stream(st.sid, code)
        self.streams.pop(st.sid, None)
        self._kill(st)

    def _delay_of(self, fault: Delay, st: _Stream) -> float:
        faults = self.ctx.faults
        extra = fault.jitter * faults.draw("delay", self.cid, st.sid, st.sent) \
            if fault.jitter else 0.0
        return faults.scaled(fault.duration + extra)

    def _resume_delay(self, st: _Stream) -> None:
        st.timer = None
        if st.dead:
            return
        if st.step == _WAIT_END:  # a delay at request_headers: finish the moment first
            if self._run_moment(st, "request_headers") != _CONTINUE:
                return
            st.mpos = 0
            self._headers_passed(st)
            return
        self._advance(st)

    def _release_window(self, sid: int) -> None:
        core = self.core
        if core is None:
            return
        core.release_window(sid)

    def _apply_goaway(self, st: _Stream, fid: int, fault: GoAway, moment: Moment) -> int:
        core = self.core
        assert core is not None
        if self.final_goaway:
            return _CONTINUE
        faults = self.ctx.faults
        close_after = fault.close_after
        if fault.mode == "drain":
            self._emit_fault("goaway", fault.code, st, moment, fault_id=fid, mode="drain",
                             last_stream_id=MAX_STREAM_ID)
            core.goaway(code=fault.code, last_stream_id=MAX_STREAM_ID, debug=fault.debug)
            self.final_goaway = True  # no other GOAWAY fault while draining
            self.hold_open = True  # and no close before the final GOAWAY
            self._later(faults.scaled(fault.drain_delay), self._drain_final, fault,
                        close_after)
            return _CONTINUE
        keep = fault.process_above
        if fault.mode == "abrupt":
            if fault.last_stream_id is not None:
                last = fault.last_stream_id
            else:
                in_flight = [s for s in self.streams if not self.streams[s].dead]
                last = max(0, min(in_flight, default=st.sid) - 2)
            self._emit_fault("goaway", fault.code, st, moment, fault_id=fid, mode="abrupt",
                             last_stream_id=last, process_above=keep)
            self._send_goaway(fault.code, last, fault.debug, close_after, keep=keep)
            if keep:
                return _CONTINUE
            for sid in [s for s in self.streams if s > last]:
                self._kill(self.streams.pop(sid))
            return _STOP if st.sid > last else _CONTINUE
        last = core.highest_inbound_stream_id if fault.last_stream_id is None \
            else fault.last_stream_id
        if keep and fault.last_stream_id is None:
            last = max(0, st.sid - 2)  # the buggy server: goaway(0, stream.id - 2) ...
        self._emit_fault("goaway", fault.code, st, moment, fault_id=fid, mode="graceful",
                         last_stream_id=last, process_above=keep)
        self._send_goaway(fault.code, last, fault.debug, close_after, keep=keep)
        if st.sid > last and not keep:
            self.streams.pop(st.sid, None)
            self._kill(st)
            return _STOP
        return _CONTINUE  # ... and still runs the app for this stream

    def _drain_final(self, fault: GoAway, close_after: float | None) -> None:
        core = self.core
        if core is None:
            return
        last = core.highest_inbound_stream_id
        self.ctx.emit("chaos.fault", connection=self.cid, stream=0, kind="goaway",
                      code=code_name(fault.code), moment="drain", mode="drain_final",
                      last_stream_id=last)
        self._send_goaway(fault.code, last, fault.debug, close_after)
        self._maybe_finish()

    def _send_goaway(self, code: int, last: int, debug: bytes, close_after: float | None,
                     *, keep: bool = False) -> None:
        core = self.core
        assert core is not None
        core.goaway(code=code, last_stream_id=last, debug=debug, keep_streams=keep)
        self.keep_above = self.keep_above or keep
        self.final_goaway = True
        self.hold_open = close_after is not None  # FIN at close_after, not when streams end
        if close_after is not None:
            self._later(self.ctx.faults.scaled(close_after), self._close, "fin")

    def _overrun(self, st: _Stream) -> None:
        """Send DATA beyond the client's window, bypassing h2: the client must detect it."""
        core = self.core
        assert core is not None
        if st.step < _RESP_HEADERS:
            # DATA before HEADERS is malformed (a PROTOCOL_ERROR to the client): send bare
            # HEADERS (no content-length) so the window is all the client can object to
            core.send_headers(st.sid, [(b":status", b"200")])
        window = core.window(st.sid)
        if window > _MAX_OVERRUN_WINDOW:
            # overrunning a huge window would mean queueing all of it: say it with a reset
            core.reset_stream(st.sid, _FLOW_CONTROL_ERROR)
            self.streams.pop(st.sid, None)
            self._kill(st)
            return
        frame_max = 16384
        payload = b"\0" * frame_max
        total = 0
        frames = []
        while total <= window:
            frames.append(frame_header(frame_max, 0x0, 0, st.sid) + payload)
            total += frame_max
        core.write_raw(b"".join(frames))
        self.streams.pop(st.sid, None)
        self._kill(st)
        self._later(self.ctx.faults.scaled(1.0), self._close, "fin")

    def _emit_fault(self, kind: str, code: int | None, st: _Stream, moment: str,
                    **extra: Any) -> None:
        name = code_name(code) if code is not None else None
        self.ctx.emit("chaos.fault", connection=self.cid, stream=st.sid, kind=kind,
                      code=name, moment=moment, method=st.method, path=st.path, **extra)
        self.ctx.count_fault(kind, name or "")

    def _kill(self, st: _Stream) -> None:
        """The stream ends here (its upstream exchange too, in proxy mode)."""
        if st.forwarded and not st.upstream_done:
            self._actions.append(ForwardCancel(st.sid, _CANCEL))
        st.upstream_done = True
        st.dead = True
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        self.blocked.pop(st, None)

    def _fail_stream(self, st: _Stream, status: int, message: str) -> None:
        core = self.core
        assert core is not None
        self.streams.pop(st.sid, None)
        self._kill(st)
        body = message.encode()
        if core.send_headers(st.sid, [(b":status", str(status).encode()),
                                      (b"content-length", str(len(body)).encode())]):
            core.send_data(st.sid, body, end_stream=True)
        core.reset_stream(st.sid, _CANCEL)  # we will not read the rest

    # ------------------------------------------------------------------ connection faults

    def _arm_connection_faults(self) -> None:
        faults = self.ctx.faults
        if faults.idle is not None:
            self._idle_timer = self._later(faults.scaled(faults.idle.after), self._idle_check)
        if faults.max_age is not None:
            age = faults.max_age
            jitter = age.jitter * faults.draw("max_age", self.cid)
            self._later(faults.scaled(age.after) * (1 + jitter), self._max_age_reached)
        limit = faults.stream_limit
        if limit is not None and limit.lower_to is not None and limit.lower_after is not None:
            self._later(faults.scaled(limit.lower_after), self._lower_limit)

    def _idle_check(self) -> None:
        self._idle_timer = None
        fault = self.ctx.faults.idle
        core = self.core
        if fault is None or core is None or self.blackholed:
            return
        limit = self.ctx.faults.scaled(fault.after)
        now = self.now
        if fault.only_without_streams and (self.streams or core.open_streams):
            self._idle_timer = self._later(limit, self._idle_check)
            return
        heard = core.last_frame_at if fault.ping_resets else core.last_nonping_at
        last = max(heard, self.last_sent)
        if now - last < limit:
            self._idle_timer = self._later(last + limit - now, self._idle_check)
            return
        self.ctx.emit("chaos.fault", connection=self.cid, stream=0, kind="idle_timeout",
                      code=code_name(fault.code) if fault.action == "goaway" else None,
                      moment="idle", action=fault.action, seconds=limit)
        self.ctx.count_fault("idle_timeout", fault.action)
        self._end_connection(fault.action, fault.code)

    def _max_age_reached(self) -> None:
        fault = self.ctx.faults.max_age
        core = self.core
        if fault is None or self.blackholed or core is None:
            return
        self.ctx.emit("chaos.fault", connection=self.cid, stream=0, kind="max_age",
                      code=code_name(fault.code), moment="age", action=fault.action)
        self.ctx.count_fault("max_age", fault.action)
        if fault.action == "goaway":
            self._send_goaway(fault.code, core.highest_inbound_stream_id, b"", None)
            self._maybe_finish()
        else:
            self._end_connection(fault.action, fault.code)

    def _lower_limit(self) -> None:
        limit = self.ctx.faults.stream_limit
        core = self.core
        if limit is None or limit.lower_to is None or core is None:
            return
        core.update_settings({0x3: limit.lower_to})
        self.ctx.emit("chaos.fault", connection=self.cid, stream=0,
                      kind="max_concurrent_streams", code=None, moment="settings",
                      action="lower", limit=limit.lower_to)
        self.ctx.count_fault("max_concurrent_streams", "lower")

    def _end_connection(self, action: IdleAction, code: int) -> None:
        core = self.core
        if action == "goaway" and core is not None:
            core.goaway(code=code, last_stream_id=core.highest_inbound_stream_id)
            self.final_goaway = True
            self._close("fin")
        elif action == "blackhole":
            self._blackhole()
        elif action == "fin":
            self._close("close")
        else:  # "rst", or "goaway" on a connection without a core: nothing to say, just go
            self._close("rst" if action == "rst" else "close")

    def _blackhole(self) -> None:
        """Stop reading and answering; never close (until the server stops)."""
        self.blackholed = True
        for _, _, timer in self._timers:
            timer.cancel()
        for st in self.streams.values():
            self._kill(st)
        self.streams.clear()
        self._actions.append(Blackhole())

    # ------------------------------------------------------------------ self-protection

    def _check_rates(self, now: float) -> None:
        core = self.core
        assert core is not None
        guard = self._guard
        assert guard is not None
        resets = core.resets_received - self._resets_seen
        if resets:
            self._resets_seen = core.resets_received
            assert self._reset_bucket is not None
            if not self._reset_bucket.take(resets, now):
                self._cut_off("resets", guard.max_resets_per_second)
                return
        control = core.control_frames - self._control_seen
        bucket = self._control_bucket
        assert bucket is not None
        if self._data_frames:
            bucket.give(self._data_frames)  # a client may acknowledge every frame we send
            self._data_frames = 0
        requests = core.requests_seen - self._requests_credited
        if requests:
            # and may open each stream's window (libcurl sends a WINDOW_UPDATE with every
            # request: 2 per request measured) or reprioritise it: that is traffic, not a
            # flood, at any request rate (the request rate has limits of its own)
            self._requests_credited = core.requests_seen
            bucket.give(_CONTROL_PER_REQUEST * requests)
        if control:
            self._control_seen = core.control_frames
            if not bucket.take(control, now):
                self._cut_off("control_frames", guard.max_control_frames_per_second)
                return
        if self.write_paused and core.pending_output() > guard.max_pending_output:
            self._cut_off("pending_output", guard.max_pending_output, how="abort")

    def _cut_off(self, limit: str, value: float, *, how: Literal["fin", "abort"] = "fin",
                 code: int | None = None) -> None:
        """Past a limit: GOAWAY with the configured code, then close."""
        core = self.core
        assert core is not None
        code = self.ctx.limits.code if code is None else code
        self._count_limit(limit, code, value=value)
        if not core.closed:
            core.goaway(code=code, last_stream_id=core.highest_inbound_stream_id)
        self.final_goaway = True
        self._close(how)

    def _count_limit(self, limit: str, code: int, **extra: Any) -> None:
        """The ``chaos.limit_exceeded`` event and counter (the connection's end is the
        caller's)."""
        self.ctx.emit("chaos.limit_exceeded", connection=self.cid, limit=limit,
                      code=code_name(code), peer=self.peer, **extra)
        self.ctx.count_fault("limit_exceeded", limit)

    def handshake_expired(self, now: float) -> None:
        """The handshake deadline passed (the adapter calls this for a cleartext peer still
        too quiet to tell HTTP/1.1 from HTTP/2): GOAWAY and close unless it is done."""
        self.now = now
        self._handshake_expired()

    def _handshake_expired(self) -> None:
        guard = self._guard
        if not self.handshaken and guard is not None:
            self._cut_off("handshake_timeout", guard.handshake_timeout)

    def _guard_idle(self) -> None:
        guard = self._guard
        core = self.core
        if guard is None or guard.idle_timeout is None or core is None or self.blackholed:
            return
        limit = guard.idle_timeout
        if self.streams or core.open_streams:
            self._later(limit, self._guard_idle)
            return
        last = max(core.last_frame_at, self.last_sent)
        if self.now - last < limit:
            self._later(last + limit - self.now, self._guard_idle)
            return
        self._cut_off("idle_timeout", limit, code=_NO_ERROR)

    # ------------------------------------------------------------------ plumbing

    def _close(self, how: Literal["fin", "close", "rst", "abort"] = "fin") -> None:
        if self.closing:
            return
        self.closing = True
        self._actions.append(Close(how))

    def _maybe_finish(self) -> None:
        """After the final GOAWAY, close once the last stream at or below its id ended."""
        core = self.core
        if (self.final_goaway and core is not None and not self.closing
                and not self.hold_open and not self.handling
                and not self.streams and core.open_streams == 0):
            self._close("fin")

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> _Timer:
        timer = _Timer(self.now + max(delay, 0.0), fn, args)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer
