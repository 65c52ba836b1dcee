"""The thin asyncio side of a chaos connection: bytes, one timer, and the executor's actions.

:class:`H2Adapter` is the ``asyncio.Protocol`` of every accepted connection. It picks the
protocol (ALPN on TLS; on cleartext the first bytes: an HTTP/2 preface or an HTTP/1.1 request
line), then moves bytes between the socket and the sans-IO :class:`~h2guard.chaos.executor.
Executor`, keeps one timer armed at the executor's next deadline, and carries out what the
executor decides: a lingering FIN close, a TCP RST, a black hole, or forwarding a stream to the
upstream (proxy mode). It decides nothing about faults or limits itself.

Writing is gated by the transport: while asyncio says the socket's buffer is above its high
water mark (``pause_writing``), the executor produces no body and starts no response; on
``resume_writing`` it goes on. So a peer that never reads costs a bounded buffer, not a
response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import Any, Protocol, cast

from h2guard.chaos.executor import (
    Blackhole,
    Close,
    Executor,
    ExecutorContext,
    Forward,
    ForwardCancel,
    ForwardData,
    ForwardTrailers,
    ResponseConsumed,
)
from h2guard.wire.core import PREFACE

__all__ = ["ExchangeLike", "H2Adapter", "SessionLike"]

_LINGER = 2.0
"""Seconds a closing connection keeps discarding input before it is aborted."""
_HIGH_WATER = 512 * 1024


class ExchangeLike(Protocol):
    """One forwarded request (see :class:`h2guard.chaos.upstream.UpstreamExchange`)."""

    def send_data(self, data: bytes, *, end_stream: bool = False) -> None: ...
    def send_trailers(self, headers: list[tuple[bytes, bytes]]) -> None: ...
    def response_consumed(self, n: int) -> None: ...
    def cancel(self, code: int = 0x8) -> None: ...


class SessionLike(Protocol):
    """The upstream of one downstream connection (see :mod:`h2guard.chaos.upstream`)."""

    on_goaway: Callable[[int, bytes, list[int]], None] | None

    def open(self, *, stream_id: int, method: str, path: str,
             headers: list[tuple[bytes, bytes]], http_version: str, client_ip: str | None,
             end_stream: bool, sink: Any) -> ExchangeLike: ...

    async def aclose(self) -> None: ...


class ServerHooks(Protocol):
    """What an adapter needs of its server (passed in: the adapter imports no server)."""

    def context(self) -> ExecutorContext: ...
    def next_connection_id(self) -> int: ...
    def upstream_session(self) -> SessionLike | None: ...
    def track(self, conn: object, alive: bool) -> None: ...
    def start_h1(self, transport: asyncio.Transport, cid: int, first: bytes) -> None: ...
    def keep_task(self, task: asyncio.Task[Any]) -> None: ...


class _Sink:
    """Upstream -> executor for one forwarded stream (the ResponseSink protocol)."""

    __slots__ = ("adapter", "sid")

    def __init__(self, adapter: H2Adapter, sid: int) -> None:
        self.adapter = adapter
        self.sid = sid

    def upstream_response(self, status: int, headers: list[tuple[bytes, bytes]],
                          end_stream: bool) -> None:
        a = self.adapter
        a.ex.upstream_response(self.sid, status, headers, end_stream, a.loop.time())
        a.flush()

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        a = self.adapter
        a.ex.upstream_data(self.sid, data, end_stream, a.loop.time())
        a.flush()

    def upstream_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        a = self.adapter
        a.ex.upstream_trailers(self.sid, headers, a.loop.time())
        a.flush()

    def upstream_reset(self, code: int) -> None:
        a = self.adapter
        a.exchanges.pop(self.sid, None)
        a.ex.upstream_reset(self.sid, code, a.loop.time())
        a.flush()

    def upstream_failed(self, status: int, message: str) -> None:
        a = self.adapter
        a.exchanges.pop(self.sid, None)
        a.ex.upstream_failed(self.sid, status, message, a.loop.time())
        a.flush()

    def upstream_request_consumed(self, n: int) -> None:
        a = self.adapter
        a.ex.upstream_request_consumed(self.sid, n, a.loop.time())
        a.flush()


class H2Adapter(asyncio.Protocol):
    """One client connection. Sniffs HTTP/1.1 on cleartext ports and ALPN on TLS."""

    def __init__(self, hooks: ServerHooks) -> None:
        self.hooks = hooks
        self.cid = hooks.next_connection_id()
        self.loop = asyncio.get_running_loop()
        self.ex = Executor(hooks.context(), connection_id=self.cid)
        self.transport: asyncio.Transport | None = None
        self.session: SessionLike | None = None
        self.exchanges: dict[int, ExchangeLike] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at: float | None = None
        self.started = False
        self.sniffing = False
        self.sniffed = b""
        self.closed = False
        self.peer_ip: str | None = None

    # ---------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=_HIGH_WATER)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = peer[0]
            self.ex.peer = f"{peer[0]}:{peer[1]}"
        self.hooks.track(self, True)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:
            if sslobj.selected_alpn_protocol() == "h2":
                self._start_h2()
            else:
                self._switch_to_h1(b"")
        else:
            self.sniffing = True
            # the handshake deadline also covers a cleartext peer that sends nothing at all
            limits = self.ex.ctx.limits
            if limits.enabled:
                self._arm(self.loop.time() + limits.handshake_timeout)

    def data_received(self, data: bytes) -> None:
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
        self.ex.receive(data, self.loop.time())
        self.flush()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.started:
            self.ex.connection_lost(str(exc) if exc else "closed")
            self._carry_out()
        for exchange in self.exchanges.values():
            exchange.cancel(0x8)
        self.exchanges.clear()
        if self.session is not None:
            self.hooks.keep_task(self.loop.create_task(self.session.aclose()))
            self.session = None
        self.hooks.track(self, False)

    def pause_writing(self) -> None:
        self.ex.pause_writing()

    def resume_writing(self) -> None:
        self.ex.resume_writing(self.loop.time())
        self.flush()

    # ---------------------------------------------------------------- set-up

    def _start_h2(self) -> None:
        self.started = True
        self.ex.start(self.loop.time())
        self.flush()

    def _switch_to_h1(self, first: bytes) -> None:
        assert self.transport is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.hooks.track(self, False)
        self.hooks.start_h1(self.transport, self.cid, first)

    # ---------------------------------------------------------------- driving the executor

    def flush(self) -> None:
        """Write what the executor has, carry out its actions, re-arm its timer."""
        transport = self.transport
        if transport is None or self.closed:
            return
        ex = self.ex
        if not transport.is_closing():
            while not ex.write_paused:
                data = ex.data_to_send()
                if not data:
                    break
                transport.write(data)
        self._carry_out()
        if not self.closed:
            when = ex.get_timer()
            if when is not None and (self.timer_at is None or when < self.timer_at):
                self._arm(when)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self.timer = None
        self.timer_at = None
        if self.closed:
            return
        if not self.started:  # still sniffing: too quiet to tell HTTP/1.1 from HTTP/2
            if self.sniffing and self.transport is not None:
                self.sniffing = False
                self.started = True
                now = self.loop.time()
                self.ex.start(now)
                self.ex.handshake_expired(now)
                self.flush()
            return
        self.ex.handle_timer(self.loop.time())
        self.flush()

    def _carry_out(self) -> None:
        exchanges = self.exchanges
        for action in self.ex.actions():
            match action:
                case ResponseConsumed(stream_id=sid, n=n):
                    if (exchange := exchanges.get(sid)) is not None:
                        exchange.response_consumed(n)
                case ForwardData(stream_id=sid, data=data, end_stream=end):
                    if (exchange := exchanges.get(sid)) is not None:
                        exchange.send_data(data, end_stream=end)
                case Forward():
                    self._forward(action)
                case ForwardTrailers(stream_id=sid, headers=headers):
                    if (exchange := exchanges.get(sid)) is not None:
                        exchange.send_trailers(headers)
                case ForwardCancel(stream_id=sid, code=code):
                    if (exchange := exchanges.pop(sid, None)) is not None:
                        exchange.cancel(code)
                case Close(how=how):
                    self._close(how)
                case Blackhole():
                    self._blackhole()

    def _forward(self, action: Forward) -> None:
        if self.session is None:
            self.session = self.hooks.upstream_session()
            if self.session is None:  # pragma: no cover - proxy mode always has one
                return
            self.session.on_goaway = self._upstream_goaway
        sink = _Sink(self, action.stream_id)
        try:
            exchange = self.session.open(
                stream_id=action.stream_id, method=action.method, path=action.path,
                headers=action.headers, http_version="2", client_ip=self.peer_ip,
                end_stream=action.end_stream, sink=sink)
        except Exception as exc:  # a request the upstream cannot take: 502, not a crash
            sink.upstream_failed(502, f"h2guard chaos proxy: cannot forward: {exc}")
            return
        self.exchanges[action.stream_id] = exchange

    def _upstream_goaway(self, code: int, debug: bytes, unprocessed: list[int]) -> None:
        for sid in unprocessed:
            self.exchanges.pop(sid, None)
        self.ex.upstream_goaway(code, debug, unprocessed, self.loop.time())
        self.flush()

    # ---------------------------------------------------------------- endings

    def _close(self, how: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if how in ("rst", "abort"):
            if how == "rst":
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                        struct.pack("ii", 1, 0))
            transport.abort()
            return
        if how == "close":  # asyncio flushes what is queued, sends close_notify, then FIN
            transport.close()
            return
        # A lingering close, as nginx does: closing a socket with unread input makes the
        # kernel send a TCP RST, which destroys responses still in our send buffer (streams
        # the GOAWAY promised to finish). So: send FIN after what is queued, discard what the
        # client still sends, and only then let go (at most _LINGER seconds later).
        if transport.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                transport.write_eof()
            self.loop.call_later(_LINGER, transport.abort)
        else:  # TLS cannot half-close: keep reading (and discarding) a while, then close
            self.loop.call_later(_LINGER, transport.close)

    def _blackhole(self) -> None:
        for exchange in self.exchanges.values():
            exchange.cancel(0x8)
        self.exchanges.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.pause_reading()

    def abort(self) -> None:
        """Drop the connection now (the server is stopping)."""
        if self.transport is not None:
            self.transport.abort()


_HTTP1_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                  b"CONNECT ", b"TRACE ")


def _looks_like_http1(data: bytes) -> bool:
    head = data[:8]
    return any(head.startswith(m) for m in _HTTP1_METHODS)


def _undecided(data: bytes) -> bool:
    """A first read too short to tell an HTTP/2 preface from an HTTP/1.1 request line."""
    return PREFACE.startswith(data) or any(m.startswith(data) for m in _HTTP1_METHODS)
