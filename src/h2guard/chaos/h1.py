"""HTTP/1.1 for clients that did not negotiate h2 (ALPN or cleartext), via h11.

Faults are HTTP/2 frame-level and are not applied here; the app and the ledger are shared with
the HTTP/2 side. The same self-protection deadlines hold (``[limits]``): a request head must
arrive whole within ``handshake_timeout`` of its first byte (slowloris), and a connection
waiting for its next request closes after ``idle_timeout``. In proxy mode the request and
response bodies stream through the same
upstream session the HTTP/2 side uses: reading from the client pauses while more than a stream
buffer of its body waits for the upstream, and the upstream is told a response chunk was
consumed only once the socket took it (``resume_writing``), so memory stays bounded both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Protocol, cast

import h11

from h2guard.chaos.app import Body, Deferred, Request, Response
from h2guard.chaos.executor import MAX_REQUEST_BODY
from h2guard.chaos.executor import request_id_of as _request_id

__all__ = ["H1Protocol"]

_MAX_CHUNK = 65536
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"upgrade",
                         b"proxy-connection", b"te", b"trailer"})


class H1Hooks(Protocol):
    """What the HTTP/1.1 side needs of its server."""

    app: Any
    events: Any
    scenario: Any
    upstream: Any  # the upstream in proxy mode, else None

    @property
    def buffer_limit(self) -> int: ...

    def count_request(self, request_id: str | None = None) -> None: ...
    def count_fault(self, kind: str, code: str) -> None: ...
    def track(self, conn: object, alive: bool) -> None: ...
    def upstream_session(self) -> Any: ...
    def keep_task(self, task: asyncio.Task[Any]) -> None: ...


class H1Protocol(asyncio.Protocol):
    """One HTTP/1.1 connection (a request at a time, keep-alive)."""

    def __init__(self, hooks: H1Hooks, cid: int) -> None:
        self.hooks = hooks
        self.cid = cid
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65536)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.request: h11.Request | None = None
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        # proxy mode
        self.session: Any = None
        self.exchange: Any = None
        self.outstanding = 0  # request bytes handed to the upstream, not yet taken
        self.reading_paused = False
        self.write_paused = False
        self.unacked = 0  # response bytes written while the socket was full
        self.responding = False
        self.guard: asyncio.TimerHandle | None = None  # idle / request-head deadline
        self.head_started = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.hooks.track(self, True)
        self.hooks.events.emit("chaos.connection.opened", connection=self.cid,
                               protocol="http/1.1")
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self._disarm()
        if self.exchange is not None:
            self.exchange.cancel(0x8)
            self.exchange = None
        if self.session is not None:
            self.hooks.keep_task(asyncio.get_running_loop().create_task(self.session.aclose()))
            self.session = None
        self.hooks.track(self, False)
        self.hooks.events.emit("chaos.connection.closed", connection=self.cid,
                               reason=str(exc) if exc else "closed")

    def data_received(self, data: bytes) -> None:
        if not self.head_started and self.request is None and not self.busy:
            self.head_started = True  # the first byte of a request: its head must follow
            limits = self.hooks.scenario.limits
            if limits.enabled:
                self._arm(limits.handshake_timeout, "handshake_timeout")
        self.conn.receive_data(data)
        self._pump()

    # ---------------------------------------------------------------- deadlines

    def _wait_for_request(self) -> None:
        self.head_started = False
        limits = self.hooks.scenario.limits
        if limits.enabled and limits.idle_timeout is not None:
            self._arm(limits.idle_timeout, "idle_timeout")
        else:
            self._disarm()

    def _arm(self, seconds: float, limit: str) -> None:
        self._disarm()
        self.guard = asyncio.get_running_loop().call_later(seconds, self._expired, limit,
                                                            seconds)

    def _disarm(self) -> None:
        if self.guard is not None:
            self.guard.cancel()
            self.guard = None

    def _expired(self, limit: str, seconds: float) -> None:
        self.guard = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self.hooks.events.emit("chaos.limit_exceeded", connection=self.cid, limit=limit,
                               code=None, value=seconds, protocol="http/1.1")
        self.hooks.count_fault("limit_exceeded", limit)
        if limit == "handshake_timeout":
            self._send_simple(408, "request head not received in time")
        transport.close()

    def eof_received(self) -> bool | None:
        self.conn.receive_data(b"")
        self._pump()
        return False

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.unacked and self.exchange is not None:
            self.exchange.response_consumed(self.unacked)
        self.unacked = 0

    def abort(self) -> None:
        """Drop the connection now (the server is stopping)."""
        if self.transport is not None:
            self.transport.abort()

    # ---------------------------------------------------------------- requests

    def _pump(self) -> None:
        transport = self.transport
        while transport is not None and not transport.is_closing():
            if self.busy and self.exchange is None:
                return  # the app's answer is pending: h11 keeps the next request
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._send_simple(exc.error_status_hint, str(exc))
                transport.close()
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._disarm()  # the head is here: the app or the upstream sets the pace
                self.request = event
                self.body, self.size = [], 0
                if self.hooks.upstream is not None:  # proxy mode
                    self._forward(event)
            elif isinstance(event, h11.Data):
                if self.exchange is not None:
                    self._forward_data(bytes(event.data))
                    continue
                self.size += len(event.data)
                if self.size > MAX_REQUEST_BODY:
                    self._send_simple(413, "request body too large")
                    transport.close()
                    return
                self.body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                if self.exchange is not None:
                    self.exchange.send_data(b"", end_stream=True)
                    self.busy = True
                    return
                if self.request is not None and self.busy is False:
                    self._run()
            elif isinstance(event, h11.ConnectionClosed):
                transport.close()
                return

    def _run(self) -> None:
        req = self.request
        assert req is not None
        headers = [(bytes(k).lower(), bytes(v)) for k, v in req.headers]
        self.hooks.count_request(_request_id(headers))
        request = Request(req.method.decode("latin-1"), req.target.decode("latin-1"), headers,
                          b"".join(self.body), 0, self.cid, "1.1")
        self.busy = True
        out = self.hooks.app(request)
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
        self._next_cycle()

    def _next_cycle(self) -> None:
        transport = self.transport
        assert transport is not None
        self.busy = False
        self.exchange = None
        self.responding = False
        if self.conn.our_state is h11.MUST_CLOSE:
            transport.close()
            return
        try:
            self.conn.start_next_cycle()
        except h11.LocalProtocolError:
            transport.close()
            return
        self._resume_reading()
        self._wait_for_request()
        self._pump()

    def _send_simple(self, status: int, message: str) -> None:
        assert self.transport is not None
        body = (message + "\n").encode()
        with contextlib.suppress(h11.LocalProtocolError):
            data = self.conn.send(h11.Response(status_code=status, headers=[
                ("content-length", str(len(body))), ("connection", "close")]))
            data = (data or b"") + (self.conn.send(h11.Data(data=body)) or b"")
            self.transport.write(data)

    # ---------------------------------------------------------------- proxy mode

    def _forward(self, req: h11.Request) -> None:
        if self.session is None:
            self.session = self.hooks.upstream_session()
        headers = [(bytes(k).lower(), bytes(v)) for k, v in req.headers]
        self.hooks.count_request(_request_id(headers))
        peer = self.transport.get_extra_info("peername") if self.transport else None
        end = not any(k in (b"content-length", b"transfer-encoding") for k, _ in headers) or \
            any(k == b"content-length" and v.strip() == b"0" for k, v in headers)
        try:
            self.exchange = self.session.open(
                stream_id=0, method=req.method.decode("latin-1"),
                path=req.target.decode("latin-1"), headers=headers, http_version="1.1",
                client_ip=peer[0] if peer else None, end_stream=end, sink=self)
        except Exception as exc:  # a request the upstream cannot take: 502, not a crash
            self._send_simple(502, f"h2guard chaos proxy: cannot forward: {exc}")
            if self.transport is not None:
                self.transport.close()
            return
        if end:
            self.busy = True

    def _forward_data(self, data: bytes) -> None:
        self.outstanding += len(data)
        self.exchange.send_data(data)
        if self.outstanding > self.hooks.buffer_limit and not self.reading_paused:
            self.reading_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.reading_paused and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()

    # the ResponseSink protocol

    def upstream_request_consumed(self, n: int) -> None:
        self.outstanding = max(0, self.outstanding - n)
        if self.outstanding <= self.hooks.buffer_limit // 2:
            self._resume_reading()

    def upstream_response(self, status: int, headers: list[tuple[bytes, bytes]],
                          end_stream: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        fields = [(k, v) for k, v in headers if k[:1] != b":" and k not in _HOP_BY_HOP]
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=fields)) or b""
            self.responding = True
            if end_stream:
                out += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError as exc:
            self._send_simple(502, f"h2guard chaos proxy: bad upstream response: {exc}")
            transport.close()
            return
        transport.write(out)
        if end_stream:
            self._next_cycle()

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.responding:
            return
        try:
            out = self.conn.send(h11.Data(data=data)) or b"" if data else b""
            if end_stream:
                out += self.conn.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            transport.close()
            return
        transport.write(out)
        if data and self.exchange is not None:
            if self.write_paused:
                self.unacked += len(data)
            else:
                self.exchange.response_consumed(len(data))
        if end_stream:
            self._next_cycle()

    def upstream_trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or not self.responding:
            return
        try:
            out = self.conn.send(h11.EndOfMessage(headers=headers)) or b""
        except h11.LocalProtocolError:  # not chunked: trailers cannot be said in HTTP/1.1
            out = self.conn.send(h11.EndOfMessage()) or b""
        transport.write(out)
        self._next_cycle()

    def upstream_reset(self, code: int) -> None:
        self.exchange = None
        self._abandon(502, f"h2guard chaos proxy: upstream reset the stream (code {code})")

    def upstream_failed(self, status: int, message: str) -> None:
        self.exchange = None
        self._abandon(status, message)

    def _abandon(self, status: int, message: str) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.responding:
            self._send_simple(status, message)
        transport.close()  # mid-body: closing is the only way HTTP/1.1 can say "cut short"
