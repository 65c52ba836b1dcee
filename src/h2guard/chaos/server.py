"""The chaos server: an asyncio HTTP/2 server (and reverse proxy) that injects faults on purpose.

Each connection is an ``asyncio.Protocol`` adapter around the sans-IO :class:`H2Core`: it moves
bytes and arms timers, nothing else. A stream walks through its moments (request headers,
request end, app, response headers, response body) as a small step machine; at each moment the
:class:`FaultSet` is asked whether a fault fires, and a fault that must wait (a delay, a withheld
window, a deferred app response) arms a ``call_later`` instead of creating a task. The common
case, a request with no fault, is served inside the ``data_received`` call that completed it,
with one socket write per batch of frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import h11

from h2guard.chaos.app import _BLOCK, App, Body, Deferred, Request, Response
from h2guard.chaos.faults import FaultSet, StreamFault, StreamInfo
from h2guard.chaos.ledger import Ledger
from h2guard.chaos.model import (
    Delay,
    GoAway,
    IdleAction,
    Moment,
    RstStream,
    Scenario,
)
from h2guard.codes import code_name
from h2guard.events import EventLog
from h2guard.wire.core import MAX_STREAM_ID, PREFACE, H2Core, frame_header
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamRefused,
    StreamReset,
    WindowUpdated,
)

__all__ = ["ChaosServer", "ServerConfig"]

MAX_REQUEST_BODY = 256 * 1024 * 1024
"""Request bodies above this get 413 (the server holds bodies it echoes or forwards)."""
_CONTINUE, _SUSPEND, _STOP = 0, 1, 2
_MAX_CHUNK = 65536
_LINGER = 2.0
"""Seconds a closing connection keeps discarding input before it is aborted."""
_HIGH_WATER = 512 * 1024

# stream steps
_WAIT_END, _REQ_END, _APP, _APP_WAIT, _AFTER_APP, _HEADERS, _RESP_HEADERS, _BODY, _DONE = range(9)


@dataclass(slots=True)
class ServerConfig:
    """How a chaos server listens. ``port=0`` picks a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    h2c: bool = False
    time_scale: float = 1.0
    seed: int | None = None
    certfile: str | None = None
    keyfile: str | None = None
    upstream: str | None = None
    control_host: str = "127.0.0.1"
    control_port: int | None = None
    control_allow_remote: bool = False
    control_token: str | None = None
    max_header_list_size: int = 65536
    validate_headers: bool = True
    honour_idempotency_keys: bool = False
    ca_dir: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Stream:
    __slots__ = (
        "body",
        "body_bytes",
        "body_faults",
        "body_len",
        "body_size",
        "dead",
        "delay_after",
        "delay_ready",
        "end_after_headers",
        "ended",
        "headers",
        "info",
        "method",
        "mpos",
        "path",
        "response",
        "sent",
        "sid",
        "step",
        "timer",
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
        self.body_bytes: bytes | None = None
        self.body_len = 0
        self.sent = 0
        self.body_faults: list[tuple[int, StreamFault]] = []
        self.delay_after: int | None = None
        self.delay_ready = False
        self.timer: asyncio.TimerHandle | None = None
        self.window_blocked = False
        self.end_after_headers = False


class _H2Protocol(asyncio.Protocol):
    """One client connection. Sniffs HTTP/1.1 on cleartext ports and ALPN on TLS."""

    def __init__(self, server: ChaosServer) -> None:
        self.server = server
        self.cid = next(server._conn_ids)
        self.loop = server._loop
        self.transport: asyncio.Transport | None = None
        self.core: H2Core | None = None
        self.streams: dict[int, _Stream] = {}
        self.opened = self.loop.time()
        self.last_sent = self.opened
        self.requests = 0
        self.write_paused = False
        self.blocked: set[_Stream] = set()
        self.timers: set[asyncio.TimerHandle] = set()
        self.idle_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self.blackholed = False
        self.final_goaway = False
        self.hold_open = False  # a drain or a close_after timer ends the connection, not us
        self.handling = False  # inside _handle: close only once the whole batch is handled
        self.sniffing = False
        self.sniffed = b""
        self.h1: _H1Protocol | None = None
        self.peer = ""

    # ---------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.server._connections.add(self)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            if sslobj.selected_alpn_protocol() == "h2":
                self._start_h2()
            else:
                self._switch_to_h1(b"")
        else:
            self.sniffing = True

    def data_received(self, data: bytes) -> None:
        if self.blackholed or self.closing:
            return  # a black hole answers nothing; a lingering close discards input
        if self.sniffing:
            data = self.sniffed + data
            if len(data) < 8 and _undecided(data):
                self.sniffed = data  # "G" could be HTTP/1.1 or garbage: wait for more
                return
            self.sniffing = False
            self.sniffed = b""
            if not PREFACE.startswith(data[: len(PREFACE)]) and _looks_like_http1(data):
                self._switch_to_h1(data)
                return
            self._start_h2()
        core = self.core
        assert core is not None
        events = core.receive(data, self.loop.time())
        quiet = self.last_sent
        if events:
            self.handling = True
            try:
                self._handle(events)
            finally:
                self.handling = False
            self._maybe_finish()
        self._flush()
        if events and all(type(ev) is PingReceived for ev in events):
            self.last_sent = quiet  # a PING ACK is not activity (idle ping_resets=false)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        for st in self.streams.values():
            st.dead = True
            if st.timer is not None:
                st.timer.cancel()
        self.streams.clear()
        self.server._connections.discard(self)
        self.server.events.emit("chaos.connection.closed", connection=self.cid,
                                requests=self.requests,
                                reason=str(exc) if exc else "closed")

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for st in list(self.blocked):
            if not st.window_blocked:
                self.blocked.discard(st)
                self._advance(st)
        self._flush()

    # ---------------------------------------------------------------- set-up

    def _start_h2(self) -> None:
        faults = self.server.faults
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
        header_limit = scenario.max_header_list_size or self.server.config.max_header_list_size
        limit = faults.stream_limit
        if limit is not None:
            settings[0x3] = limit.limit
        core = H2Core(client=False, settings=settings,
                      validate_inbound_headers=self.server.config.validate_headers,
                      max_header_list_size=header_limit,
                      connection_window=scenario.connection_window)
        if limit is not None and not limit.enforce:
            core.set_stream_limit(None)
        self.core = core
        now = self.loop.time()
        core.start(now)
        self.server.events.emit("chaos.connection.opened", connection=self.cid,
                                peer=self.peer, protocol="h2")
        self._arm_connection_faults()
        self._flush()

    def _switch_to_h1(self, first: bytes) -> None:
        assert self.transport is not None
        h1 = _H1Protocol(self.server, self.cid)
        self.h1 = h1
        self.server._connections.discard(self)
        self.transport.set_protocol(h1)
        h1.connection_made(self.transport)
        if first:
            h1.data_received(first)

    def _arm_connection_faults(self) -> None:
        faults = self.server.faults
        if faults.idle is not None:
            self._schedule_idle(faults.scaled(faults.idle.after))
        if faults.max_age is not None:
            age = faults.max_age
            jitter = age.jitter * faults.draw("max_age", self.cid)
            self._later(faults.scaled(age.after) * (1 + jitter), self._max_age_reached)
        limit = faults.stream_limit
        if limit is not None and limit.lower_to is not None and limit.lower_after is not None:
            self._later(faults.scaled(limit.lower_after), self._lower_limit)

    # ---------------------------------------------------------------- events

    def _handle(self, events: list[Any]) -> None:
        for ev in events:
            kind = type(ev)
            if kind is RequestReceived:
                self._on_request(ev)
            elif kind is DataReceived:
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.dead:
                    st.body_size += len(ev.data)
                    if st.body_size > MAX_REQUEST_BODY:
                        self._fail_stream(st, 413, "request body too large")
                    else:
                        st.body.append(ev.data)
            elif kind is StreamEnded:
                st = self.streams.get(ev.stream_id)
                if st is not None and not st.ended:
                    st.ended = True
                    if st.step == _WAIT_END:
                        st.step = _REQ_END
                        self._advance(st)
            elif kind is WindowUpdated:
                self._on_window(ev.stream_id)
            elif kind is StreamReset:
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    self._kill(st)
                self.server.events.emit("chaos.stream.reset_by_client", connection=self.cid,
                                        stream=ev.stream_id, code=code_name(ev.error_code))
            elif kind is StreamRefused:
                self._on_refused(ev)
            elif kind is GoAwayReceived:
                self.server.events.emit("chaos.goaway_received", connection=self.cid,
                                        code=code_name(ev.error_code),
                                        last_stream_id=ev.last_stream_id)
            elif kind is PingReceived:
                pass
            elif kind is ConnectionFailed:
                self.server.events.emit("chaos.protocol_error", connection=self.cid,
                                        code=code_name(ev.error_code), message=ev.message)
                self._flush()
                self._close("fin")
                return
        self._maybe_finish()

    def _on_request(self, ev: RequestReceived) -> None:
        core = self.core
        assert core is not None
        if core.goaway_sent is not None and ev.stream_id > core.goaway_sent:
            # read in the same batch as the stream whose fault sent the GOAWAY: the core
            # accepted it before the GOAWAY existed, but it must not reach the app
            core.reset_stream(ev.stream_id, 0x7)
            self._on_refused(StreamRefused(ev.stream_id, "after_goaway"))
            return
        self.requests += 1
        self.server.requests += 1
        method = path = ""
        for key, value in ev.headers:
            if key == b":method":
                method = value.decode("latin-1")
            elif key == b":path":
                path = value.decode("latin-1")
            elif key[:1] != b":":
                break
        info = StreamInfo(self.cid, ev.stream_id, method, path, ev.headers, self.requests,
                          self.loop.time() - self.opened)
        st = _Stream(ev.stream_id, method, path, ev.headers, info)
        self.streams[ev.stream_id] = st
        if ev.end_stream:
            st.ended = True
        faults = self.server.faults
        cap = faults.request_cap
        if cap is not None and self.requests >= cap.max_requests and core.goaway_sent is None:
            self._emit_fault("request_cap", cap.code, st, "request_headers",
                             max_requests=cap.max_requests)
            self._send_goaway(cap.code, ev.stream_id, b"", cap.close_after)
        limit = faults.stream_limit
        if (limit is not None and limit.lower_to is not None
                and limit.lower_after_requests is not None
                and self.requests == limit.lower_after_requests):
            self._lower_limit()
        if st.ended and faults.quiet and self.server.upstream is None:
            self._serve_quietly(st)
            return
        if faults.by_moment["request_headers"]:
            result = self._run_moment(st, "request_headers")
            if result == _STOP:
                return
            if result == _SUSPEND:  # a delay at request_headers: resume at request end
                return
        st.mpos = 0
        if st.ended:
            st.step = _REQ_END
            self._advance(st)

    def _on_refused(self, ev: StreamRefused) -> None:
        core = self.core
        assert core is not None
        kind = "max_concurrent_streams" if ev.reason == "stream_limit" else "goaway"
        self.server.events.emit("chaos.fault", connection=self.cid, stream=ev.stream_id,
                                kind=kind, code="REFUSED_STREAM", moment="request_headers",
                                reason=ev.reason, limit=core.stream_limit)
        self.server._count_fault(kind, "REFUSED_STREAM")

    def _on_window(self, stream_id: int) -> None:
        if stream_id == 0:
            for st in list(self.blocked):
                st.window_blocked = False
                if not self.write_paused:
                    self.blocked.discard(st)
                    self._advance(st)
        else:
            one = self.streams.get(stream_id)
            if one is not None and one in self.blocked:
                one.window_blocked = False
                if not self.write_paused:
                    self.blocked.discard(one)
                    self._advance(one)

    # ---------------------------------------------------------------- stream steps

    def _advance(self, st: _Stream) -> None:
        """Walk a stream through its moments until it must wait, ends or dies."""
        server = self.server
        faults = server.faults
        while not st.dead:
            step = st.step
            if step == _REQ_END:
                if faults.by_moment["request_end"]:
                    result = self._run_moment(st, "request_end")
                    if result != _CONTINUE:
                        return
                st.step = _APP
            elif step == _APP:
                req = Request(st.method, st.path, st.headers,
                              b"".join(st.body) if len(st.body) != 1 else st.body[0],
                              st.sid, self.cid)
                st.body = []
                if server.upstream is not None:
                    st.step = _APP_WAIT
                    client = self.peer.rpartition(":")[0] or None  # x-forwarded-for
                    task = self.loop.create_task(server.upstream.forward(req, client=client))
                    task.add_done_callback(functools.partial(self._proxied, st))
                    server._tasks.add(task)
                    task.add_done_callback(server._tasks.discard)
                    return
                out = server.app(req)
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
                self._send_headers(st)
                if st.dead:
                    return
                st.step = _RESP_HEADERS
            elif step == _RESP_HEADERS:
                if st.end_after_headers:
                    st.step = _DONE
                    continue
                if faults.by_moment["response_headers"]:
                    result = self._run_moment(st, "response_headers")
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

    def _serve_quietly(self, st: _Stream) -> None:
        """The hot path: no stream fault is configured and the request has no body, so the
        step machine has nothing to decide; answer at once (a deferred app still waits)."""
        out = self.server.app(Request(st.method, st.path, st.headers, b"", st.sid, self.cid))
        if isinstance(out, Deferred):
            self._defer(st, out)
            return
        st.response = out
        body = out.body
        if type(body) is bytes and st.method != "HEAD" and self.server.faults.quiet:
            done = self.core.respond(st.sid, out.h2_headers, body)  # type: ignore[union-attr]
            if done > 0:
                self.streams.pop(st.sid, None)
                st.dead = True
                return
            if done < 0:
                self._kill(st)
                return
            st.body_bytes = body  # headers went; the window is short for the body
            st.body_len = len(body)
            st.step = _BODY
            if self._send_body(st):
                self.streams.pop(st.sid, None)
                st.dead = True
            return
        self._send_headers(st)
        if st.dead:
            return
        if not st.end_after_headers:
            st.step = _BODY
            if not self._send_body(st):
                return  # the window is short: _advance resumes at _BODY
        self.streams.pop(st.sid, None)
        st.dead = True

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
        self._flush()

    def _proxied(self, st: _Stream, task: asyncio.Task[Response]) -> None:
        if st.dead or self.closing:
            return
        if task.cancelled():
            return
        exc = task.exception()
        st.response = task.result() if exc is None else _error_response(502, exc)
        st.step = _AFTER_APP
        self._advance(st)
        self._flush()

    def _send_headers(self, st: _Stream) -> None:
        core = self.core
        assert core is not None and st.response is not None
        resp = st.response
        if st.method == "HEAD":  # headers (content-length included) but never a body
            st.body_bytes = b""
            st.body_len = 0
        else:
            if isinstance(resp.body, bytes):
                st.body_bytes = resp.body
            st.body_len = resp.length
        body_faults = self.server.faults.by_moment["response_body"]
        if body_faults:
            st.body_faults = [(fid, f) for fid, f in body_faults
                              if self.server.faults.fires(fid, f.when, st.info)]
        end = st.body_len == 0 and not st.body_faults and not \
            self.server.faults.by_moment["response_headers"]
        if not core.send_headers(st.sid, resp.h2_headers, end_stream=end):
            self._kill(st)
            return
        st.end_after_headers = end

    def _send_body(self, st: _Stream) -> bool:
        """Send what the windows allow; True when the body is complete."""
        core = self.core
        assert core is not None
        body = st.body_bytes
        if (body is not None and not st.body_faults and not st.sent and not self.write_paused
                and len(body) <= _MAX_CHUNK):
            # The common case: a small body that fits the window goes out in one call.
            sent = core.send_data(st.sid, body, end_stream=True)
            if sent == len(body):
                return True
            st.sent = sent  # the window was short (or the stream died): the loop sorts it out
        while True:
            if st.body_faults:
                result = self._body_faults(st)
                if result == _STOP:
                    return False
                if result == _SUSPEND:
                    return False
            left = st.body_len - st.sent
            if left <= 0:
                core.end_stream(st.sid)
                return True
            if self.write_paused:
                self.blocked.add(st)
                return False
            window = core.window(st.sid)
            if window <= 0:
                st.window_blocked = True
                self.blocked.add(st)
                return False
            size = min(left, window, _MAX_CHUNK)
            nxt = self._next_threshold(st)
            if nxt is not None and nxt > st.sent:
                size = min(size, nxt - st.sent)
            if st.delay_ready:  # a paced body: one DATA frame (16384 always fits) per delay
                size = min(size, 16384)
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
            st.delay_ready = False
            if last and sent == size:
                return True

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
        for fid, fault in st.body_faults:
            after = fault.after_bytes if isinstance(fault, (RstStream, Delay)) else 0
            if after > st.sent:
                remaining.append((fid, fault))
                continue
            if isinstance(fault, Delay):
                remaining.append((fid, fault))
                if pause is None and not st.delay_ready and st.sent < st.body_len:
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
        if st.dead or self.closing:
            return
        self._advance(st)
        self._flush()

    # ---------------------------------------------------------------- faults

    def _run_moment(self, st: _Stream, moment: Moment) -> int:
        faults = self.server.faults
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

    def _apply(self, st: _Stream, fid: int, fault: StreamFault, moment: Moment) -> int:
        core = self.core
        assert core is not None
        faults = self.server.faults
        if isinstance(fault, RstStream):
            self._emit_fault("rst_stream", fault.code, st, moment, fault_id=fid,
                             sent_bytes=st.sent)
            core.reset_stream(st.sid, fault.code)
            self._kill(st)
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
            self._emit_fault("flow_control", 0x3, st, moment, fault_id=fid, action="overrun")
            self._overrun(st)
            return _STOP
        if fault.error:
            self._emit_fault("flow_control", 0x3, st, moment, fault_id=fid,
                             action="rst_stream")
            core.reset_stream(st.sid, 0x3)
            self._kill(st)
            return _STOP
        return _CONTINUE

    def _delay_of(self, fault: Delay, st: _Stream) -> float:
        faults = self.server.faults
        extra = fault.jitter * faults.draw("delay", self.cid, st.sid, st.sent) \
            if fault.jitter else 0.0
        return faults.scaled(fault.duration + extra)

    def _resume_delay(self, st: _Stream) -> None:
        st.timer = None
        if st.dead or self.closing:
            return
        if st.step == _WAIT_END:  # a delay at request_headers: finish the moment first
            if self._run_moment(st, "request_headers") != _CONTINUE:
                self._flush()
                return
            st.mpos = 0
            if st.ended:
                st.step = _REQ_END
        self._advance(st)
        self._flush()

    def _release_window(self, sid: int) -> None:
        core = self.core
        if core is None or self.closing:
            return
        core.release_window(sid)
        self._flush()

    def _apply_goaway(self, st: _Stream, fid: int, fault: GoAway, moment: Moment) -> int:
        core = self.core
        assert core is not None
        if self.final_goaway:
            return _CONTINUE
        faults = self.server.faults
        close_after = fault.close_after
        if fault.mode == "drain":
            self._emit_fault("goaway", fault.code, st, moment, fault_id=fid, mode="drain",
                             last_stream_id=MAX_STREAM_ID)
            core.goaway(code=fault.code, last_stream_id=MAX_STREAM_ID, debug=fault.debug)
            self.final_goaway = True  # no other GOAWAY fault while draining
            self.hold_open = True  # and no close before the final GOAWAY

            def second() -> None:
                if self.closing or self.core is None:
                    return
                last = self.core.highest_inbound_stream_id
                self.server.events.emit("chaos.fault", connection=self.cid, stream=0,
                                        kind="goaway", code=code_name(fault.code),
                                        moment="drain", mode="drain_final",
                                        last_stream_id=last)
                self._send_goaway(fault.code, last, fault.debug, close_after)
                self._maybe_finish()
                self._flush()

            self._later(faults.scaled(fault.drain_delay), second)
            return _CONTINUE
        if fault.mode == "abrupt":
            if fault.last_stream_id is not None:
                last = fault.last_stream_id
            else:
                in_flight = [s for s in self.streams if not self.streams[s].dead]
                last = max(0, min(in_flight, default=st.sid) - 2)
            self._emit_fault("goaway", fault.code, st, moment, fault_id=fid, mode="abrupt",
                             last_stream_id=last)
            self._send_goaway(fault.code, last, fault.debug, close_after)
            for sid in [s for s in self.streams if s > last]:
                dropped = self.streams.pop(sid)
                self._kill(dropped)
            return _STOP if st.sid > last else _CONTINUE
        last = core.highest_inbound_stream_id if fault.last_stream_id is None \
            else fault.last_stream_id
        self._emit_fault("goaway", fault.code, st, moment, fault_id=fid, mode="graceful",
                         last_stream_id=last)
        self._send_goaway(fault.code, last, fault.debug, close_after)
        if st.sid > last:
            self.streams.pop(st.sid, None)
            self._kill(st)
            return _STOP
        return _CONTINUE

    def _send_goaway(self, code: int, last: int, debug: bytes, close_after: float | None) -> None:
        core = self.core
        assert core is not None
        core.goaway(code=code, last_stream_id=last, debug=debug)
        self.final_goaway = True
        self.hold_open = close_after is not None  # FIN at close_after, not when streams end
        if close_after is not None:
            self._later(self.server.faults.scaled(close_after), self._close, "fin")

    def _overrun(self, st: _Stream) -> None:
        """Send DATA beyond the client's window, bypassing h2: the client must detect it."""
        core = self.core
        assert core is not None
        if st.step < _RESP_HEADERS:
            # DATA before HEADERS is malformed (a PROTOCOL_ERROR to the client): send bare
            # HEADERS (no content-length) so the window is all the client can object to
            core.send_headers(st.sid, [(b":status", b"200")])
        window = core.window(st.sid)
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
        self._later(self.server.faults.scaled(1.0), self._close, "fin")

    def _emit_fault(self, kind: str, code: int | None, st: _Stream, moment: str,
                    **extra: Any) -> None:
        name = code_name(code) if code is not None else None
        self.server.events.emit("chaos.fault", connection=self.cid, stream=st.sid, kind=kind,
                                code=name, moment=moment, method=st.method, path=st.path,
                                **extra)
        self.server._count_fault(kind, name or "")

    def _kill(self, st: _Stream) -> None:
        st.dead = True
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        self.blocked.discard(st)

    def _fail_stream(self, st: _Stream, status: int, message: str) -> None:
        core = self.core
        assert core is not None
        self.streams.pop(st.sid, None)
        self._kill(st)
        body = message.encode()
        if core.send_headers(st.sid, [(b":status", str(status).encode()),
                                      (b"content-length", str(len(body)).encode())]):
            core.send_data(st.sid, body, end_stream=True)
        core.reset_stream(st.sid, 0x8)  # CANCEL: we will not read the rest

    # ---------------------------------------------------------------- connection faults

    def _schedule_idle(self, delay: float) -> None:
        self.idle_timer = self.loop.call_later(max(delay, 0.0), self._idle_check)

    def _idle_check(self) -> None:
        self.idle_timer = None
        fault = self.server.faults.idle
        core = self.core
        if fault is None or core is None or self.closing or self.blackholed:
            return
        limit = self.server.faults.scaled(fault.after)
        now = self.loop.time()
        if fault.only_without_streams and (self.streams or core.open_streams):
            self._schedule_idle(limit)
            return
        heard = core.last_frame_at if fault.ping_resets else core.last_nonping_at
        last = max(heard, self.last_sent)
        if now - last < limit:
            self._schedule_idle(last + limit - now)
            return
        self.server.events.emit("chaos.fault", connection=self.cid, stream=0,
                                kind="idle_timeout", code=code_name(fault.code)
                                if fault.action == "goaway" else None,
                                moment="idle", action=fault.action, seconds=limit)
        self.server._count_fault("idle_timeout", fault.action)
        self._end_connection(fault.action, fault.code)

    def _max_age_reached(self) -> None:
        fault = self.server.faults.max_age
        if fault is None or self.closing or self.blackholed:
            return
        self.server.events.emit("chaos.fault", connection=self.cid, stream=0, kind="max_age",
                                code=code_name(fault.code), moment="age",
                                action=fault.action)
        self.server._count_fault("max_age", fault.action)
        if fault.action == "goaway":
            self._send_goaway(fault.code, self.core.highest_inbound_stream_id
                              if self.core else 0, b"", None)
            self._maybe_finish()
            self._flush()
        else:
            self._end_connection(fault.action, fault.code)

    def _lower_limit(self) -> None:
        limit = self.server.faults.stream_limit
        core = self.core
        if limit is None or limit.lower_to is None or core is None or self.closing:
            return
        core.update_settings({0x3: limit.lower_to})
        self.server.events.emit("chaos.fault", connection=self.cid, stream=0,
                                kind="max_concurrent_streams", code=None, moment="settings",
                                action="lower", limit=limit.lower_to)
        self.server._count_fault("max_concurrent_streams", "lower")
        self._flush()

    def _end_connection(self, action: IdleAction, code: int) -> None:
        core = self.core
        if action == "goaway" and core is not None:
            core.goaway(code=code, last_stream_id=core.highest_inbound_stream_id)
            self.final_goaway = True
            self._flush()
            self._close("fin")
        elif action == "blackhole":
            self._blackhole()
        else:
            self._close(action)

    def _blackhole(self) -> None:
        """Stop reading and answering; never close (until the server stops)."""
        self.blackholed = True
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()
        for st in self.streams.values():
            self._kill(st)
        self.streams.clear()
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.pause_reading()

    def _close(self, how: str = "fin") -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        self.closing = True
        if how == "rst":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                    struct.pack("ii", 1, 0))
            transport.abort()
            return
        # A lingering close, as nginx does: closing a socket with unread input makes the
        # kernel send a TCP RST, which destroys responses still in our send buffer (streams
        # the GOAWAY promised to finish). So: send FIN after what is queued, discard what the
        # client still sends, and only then let go (at most _LINGER seconds later).
        self._flush()
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
            self.loop.call_later(_LINGER, transport.abort)
        else:  # TLS cannot half-close: keep reading (and discarding) a while, then close
            self.loop.call_later(_LINGER, transport.close)

    def _maybe_finish(self) -> None:
        """After the final GOAWAY, close once the last stream at or below its id ended."""
        core = self.core
        if (self.final_goaway and core is not None and not self.closing
                and not self.hold_open and not self.handling
                and not self.streams and core.open_streams == 0):
            self._flush()
            self._close("fin")

    # ---------------------------------------------------------------- plumbing

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> asyncio.TimerHandle:
        handle: asyncio.TimerHandle

        def run() -> None:
            self.timers.discard(handle)
            if not self.closing:
                fn(*args)
                self._flush()

        handle = self.loop.call_later(max(delay, 0.0), run)
        self.timers.add(handle)
        return handle

    def _flush(self) -> None:
        core = self.core
        if core is None or self.blackholed or self.transport is None:
            return
        data = core.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)
            self.last_sent = self.loop.time()


class _H1Protocol(asyncio.Protocol):
    """HTTP/1.1 for clients that did not negotiate h2 (ALPN or cleartext), via h11.

    Faults are HTTP/2 frame-level and are not applied here; the app and ledger are shared."""

    def __init__(self, server: ChaosServer, cid: int) -> None:
        self.server = server
        self.cid = cid
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.request: h11.Request | None = None
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server._h1_connections.add(self)
        self.server.events.emit("chaos.connection.opened", connection=self.cid,
                                protocol="http/1.1")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.server._h1_connections.discard(self)
        self.server.events.emit("chaos.connection.closed", connection=self.cid,
                                reason=str(exc) if exc else "closed")

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._pump()
        return False

    def _pump(self) -> None:
        while not self.busy and self.transport is not None and not self.transport.is_closing():
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_simple(exc.error_status_hint, str(exc))
                self.transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self.request = event
                self.body, self.size = [], 0
            elif isinstance(event, h11.Data):
                self.size += len(event.data)
                if self.size > MAX_REQUEST_BODY:
                    self._send_simple(413, "request body too large")
                    self.transport.close()
                    return
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._run()
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    def _run(self) -> None:
        req = self.request
        assert req is not None
        headers = [(bytes(k).lower(), bytes(v)) for k, v in req.headers]
        self.server.requests += 1
        request = Request(req.method.decode("latin-1"), req.target.decode("latin-1"), headers,
                          b"".join(self.body), 0, self.cid, "1.1")
        self.busy = True
        if self.server.upstream is not None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            task = asyncio.get_running_loop().create_task(
                self.server.upstream.forward(request, client=peer[0] if peer else None))
            self.server._tasks.add(task)
            task.add_done_callback(self.server._tasks.discard)

            def done(t: asyncio.Task[Response]) -> None:
                if t.cancelled():
                    return
                exc = t.exception()
                self._respond(t.result() if exc is None else _error_response(502, exc))

            task.add_done_callback(done)
            return
        out = self.server.app(request)
        if isinstance(out, Deferred):
            resp = out.response
            self.timer = asyncio.get_running_loop().call_later(out.delay, self._respond, resp)
            return
        self._respond(out)

    def _respond(self, resp: Response) -> None:
        self.timer = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        headers = [(k, v) for k, v in resp.headers if k != b"content-length"]
        headers.append((b"content-length", str(resp.length).encode()))
        out = [self.conn.send(h11.Response(status_code=resp.status, headers=headers)) or b""]
        head = self.request is not None and self.request.method == b"HEAD"
        if head:
            pass
        elif isinstance(resp.body, Body):
            for chunk in resp.body.chunks(_MAX_CHUNK):
                out.append(self.conn.send(h11.Data(data=chunk)) or b"")
        elif resp.body:
            out.append(self.conn.send(h11.Data(data=resp.body)) or b"")
        out.append(self.conn.send(h11.EndOfMessage()) or b"")
        transport.write(b"".join(out))
        self.busy = False
        if self.conn.our_state is h11.MUST_CLOSE:
            transport.close()
            return
        try:
            self.conn.start_next_cycle()
        except h11.LocalProtocolError:
            transport.close()
            return
        self._pump()

    def _send_simple(self, status: int, message: str) -> None:
        assert self.transport is not None
        body = (message + "\n").encode()
        with contextlib.suppress(h11.LocalProtocolError):
            data = self.conn.send(h11.Response(status_code=status, headers=[
                ("content-length", str(len(body))), ("connection", "close")]))
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(data)


_HTTP1_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                  b"CONNECT ", b"TRACE ")


def _looks_like_http1(data: bytes) -> bool:
    head = data[:8]
    return any(head.startswith(m) for m in _HTTP1_METHODS)


def _undecided(data: bytes) -> bool:
    """A first read too short to tell an HTTP/2 preface from an HTTP/1.1 request line."""
    return PREFACE.startswith(data) or any(m.startswith(data) for m in _HTTP1_METHODS)


def _error_response(status: int, exc: BaseException) -> Response:
    body = f"h2guard chaos proxy: upstream failed: {type(exc).__name__}: {exc}\n".encode()
    return Response(status, [(b"content-type", b"text/plain"),
                             (b"content-length", str(len(body)).encode())], body)


class ChaosServer:
    """A running chaos server. Create it with :func:`h2guard.chaos.serve` or the CLI.

    ``events`` is the event log (every injected fault is a ``chaos.fault`` event), ``ledger``
    the side-effect ledger of ``POST /orders``, ``faults`` the live fault set.
    """

    def __init__(self, scenario: Scenario | None = None, *,
                 config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        self.scenario = scenario or Scenario()
        self.faults = FaultSet(self.scenario, seed=self.config.seed,
                               time_scale=self.config.time_scale)
        self.events = EventLog()
        self.ledger = Ledger()
        self.app = App(self.ledger,
                       honour_idempotency_keys=self.config.honour_idempotency_keys)
        self.upstream: Any = None
        self.fault_counts: dict[tuple[str, str], int] = {}
        self.requests = 0
        self.ca_file: str | None = None
        self.control: Any = None
        self.started_at = 0.0
        self._server: asyncio.Server | None = None
        self._connections: set[_H2Protocol] = set()
        self._h1_connections: set[_H1Protocol] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._conn_ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.port = 0

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind and start accepting; the URL is valid when this returns."""
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        if not cfg.h2c:
            self._ssl = self._tls_context()
        if cfg.upstream is not None:
            from h2guard.chaos.proxy import Upstream

            self.upstream = Upstream.from_config(cfg)  # options from cfg.extra
        self._server = await self._loop.create_server(
            lambda: _H2Protocol(self), cfg.host, cfg.port, ssl=self._ssl, backlog=1024,
            reuse_address=True)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self.started_at = time.time()
        if cfg.control_port is not None:
            from h2guard.chaos.control import start_control

            try:
                self.control = await start_control(self, host=cfg.control_host,
                                                   port=cfg.control_port,
                                                   allow_remote=cfg.control_allow_remote,
                                                   token=cfg.control_token)
            except BaseException:  # e.g. a non-loopback host or a busy port: do not leak
                await self.stop()
                raise
        self.events.emit("chaos.server.started", url=self.url, scenario=self.scenario.name)

    async def stop(self) -> None:
        """Stop accepting, close every connection (black holes too), cancel proxy work."""
        if self._server is not None:
            self._server.close()
        for proto in list(self._connections):
            if proto.transport is not None:
                proto.transport.abort()
        for h1 in list(self._h1_connections):
            if h1.transport is not None:
                h1.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.control is not None:
            await self.control.close()
        if self.upstream is not None:
            await self.upstream.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        await asyncio.sleep(0)
        self.events.emit("chaos.server.stopped")
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    async def __aenter__(self) -> ChaosServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _tls_context(self) -> ssl.SSLContext:
        cfg = self.config
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        if cfg.certfile:
            ctx.load_cert_chain(cfg.certfile, cfg.keyfile)
            return ctx
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
        if cfg.ca_dir:
            folder = Path(cfg.ca_dir)
            folder.mkdir(parents=True, exist_ok=True)
        else:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="h2guard-chaos-")
            folder = Path(self._tmpdir.name)
        ca_path = folder / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_path))
        cert.configure_cert(ctx)
        self.ca_file = str(ca_path)
        return ctx

    # ---------------------------------------------------------------- views

    @property
    def url(self) -> str:
        host = self.config.host
        if ":" in host:
            host = f"[{host}]"
        return f"{'http' if self.config.h2c else 'https'}://{host}:{self.port}"

    @property
    def connections(self) -> int:
        return len(self._connections) + len(self._h1_connections)

    def _count_fault(self, kind: str, code: str) -> None:
        key = (kind, code)
        self.fault_counts[key] = self.fault_counts.get(key, 0) + 1

    def stats(self) -> dict[str, Any]:
        """Totals for the shutdown summary and the control API."""
        return {
            "url": self.url,
            "scenario": self.scenario.name,
            "uptime": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            "open_connections": self.connections,
            "connections": self.events.counts.get("chaos.connection.opened", 0),
            "requests": self.requests,
            "faults": [{"kind": k, "code": c, "count": n}
                       for (k, c), n in sorted(self.fault_counts.items())],
            "ledger": {"total_effects": self.ledger.total,
                       "duplicate_keys": len(self.ledger.duplicate_keys)},
        }
