"""The streaming upstream layer of the chaos server's reverse-proxy mode.

:mod:`h2guard.chaos.proxy` buffers whole responses through httpx, drops response trailers and
adds a ``content-length``: fine for JSON services, fatal for gRPC (``grpc-status`` lives in the
trailers, messages must flow while the stream is open, and a trailers-only answer is one HEADERS
frame with END_STREAM). This module streams instead. The server's asyncio adapter drives it:
one :class:`UpstreamSession` per downstream connection, one :class:`UpstreamExchange` per
forwarded request, and a :class:`ResponseSink` per downstream stream that hears what the
upstream did, frame by frame.

Two engines sit behind the same interface:

* **HTTP/2** (``h2c://``, and ``https://`` when ALPN picks h2): our sans-IO core
  (:class:`~h2guard.wire.core.H2Core`, client role) over an asyncio Protocol, one upstream
  connection per session, so an upstream GOAWAY maps onto exactly one downstream connection.
  Streams keep their identity end to end: DATA is forwarded as it arrives, trailers are
  forwarded, END_STREAM is respected (an empty body ends with the HEADERS frame) and an
  upstream RST_STREAM reaches the sink with its code unchanged.
* **HTTP/1.1** (``http://``, and ``https://`` when ALPN picks http/1.1): httpx, http1 only,
  with the request body streamed from :meth:`UpstreamExchange.send_data` and the raw response
  body read under a credit.

Memory is bounded per stream whatever the downstream's speed: the HTTP/2 engine advertises
``max_stream_buffer`` as its stream window and acknowledges DATA to the upstream only when the
downstream has taken it (:meth:`UpstreamExchange.response_consumed`), so the upstream itself is
what waits for a slow client; the HTTP/1.1 engine stops reading the socket at the same bound.
Request bodies go the other way: bytes are reported through
:meth:`ResponseSink.upstream_request_consumed` only once the upstream's flow control took them,
and the downstream reopens its window by that much.

The proxy stays as transparent as :mod:`~h2guard.chaos.proxy`: no retries (a retry would hide
the duplicate writes the chaos server exists to expose), no redirects, no cookies, no
decompression, and never a ``content-length`` the client did not send. It rewrites only what a
proxy must: hop-by-hop headers, the authority (the upstream's, nginx's default) and the
``x-forwarded-*`` / ``via`` trail.

Every sink callback runs on the event loop, and none runs inside a method the adapter called
(failures noticed inside :meth:`UpstreamSession.open` or :meth:`UpstreamExchange.send_data`
are delivered on a later loop iteration), so the adapter never has to be re-entrant.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.cookiejar
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

import h2.exceptions
import httpx

from h2guard.chaos.proxy import (
    _HOP_BY_HOP,
    _KEEPALIVE_EXPIRY,
    _one_line,
    _options_from_extra,
    _parse_upstream,
    _ssl_verify,
)
from h2guard.wire.core import H2Core
from h2guard.wire.events import (
    ConnectionFailed,
    DataReceived,
    GoAwayReceived,
    Headers,
    ResponseReceived,
    SettingsReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

if TYPE_CHECKING:
    from h2guard.chaos.config import ServerConfig

__all__ = [
    "DEFAULT_MAX_STREAM_BUFFER",
    "ResponseSink",
    "Upstream",
    "UpstreamExchange",
    "UpstreamSession",
]

DEFAULT_MAX_STREAM_BUFFER = 256 * 1024
"""Response bytes one stream may hold in the proxy (the HTTP/2 stream window we advertise)."""

_CONNECTION_WINDOW = 16 * 1024 * 1024
"""Connection receive window: many streams' worth, so one slow stream does not stall the rest."""

_MAX_WINDOW = 2**31 - 1
_SEND_SLICE = 1 << 16  # request body bytes handed to the core per call (bounds each copy)
_REFUSED_STREAM = 0x7
_CANCEL = 0x8
_ENABLE_PUSH = 0x2
_INITIAL_WINDOW_SIZE = 0x4
_MAX_HEADER_LIST_SIZE = 0x6
_HEADER_LIST_LIMIT = 65536
_CLOSE_WAIT = 2.0  # seconds aclose() waits for a socket to close before aborting it

_REQUEST_DROP_H2 = _HOP_BY_HOP - {b"trailer"}
"""Request headers never sent to an HTTP/2 upstream. ``trailer`` stays: it announces request
trailers, and the HTTP/2 engine forwards them. ``te`` is handled on its own (``trailers`` is
the one value HTTP/2 allows, and gRPC requires it)."""

_REQUEST_DROP_H1 = _HOP_BY_HOP
"""Request headers never sent to an HTTP/1.1 upstream: httpx cannot send request trailers, so
a ``trailer`` header would announce fields that never come."""

_RESPONSE_DROP = _HOP_BY_HOP - {b"trailer"}
"""Response headers never passed on. ``trailer`` is end-to-end metadata (RFC 9110 section
6.6.2) and the trailers it announces are forwarded now."""

_SET_BY_PROXY = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"expect"})
"""Request headers recomputed rather than copied. Unlike the buffering proxy, ``content-length``
is *not* here: the downstream's passes through untouched and none is ever made up.
``expect: 100-continue`` is dropped because the body is forwarded at once: an upstream's
``100`` would only be an informational response nobody waits for."""

_NO_BODY_STATUSES = frozenset({204, 304})

_GOAWAY_ORPHAN = "the upstream sent GOAWAY before any request could use the connection"


class ResponseSink(Protocol):
    """What the upstream tells one downstream stream. All calls happen on the event loop.

    The response arrives as ``upstream_response`` then any number of ``upstream_data`` then,
    optionally, ``upstream_trailers``; whichever call carries the end (``end_stream=True``, or
    the trailers) is the last response callback. Instead of that sequence, or in the middle of
    it, a stream may get one ``upstream_reset`` or one ``upstream_failed``, after which nothing
    more comes. After :meth:`UpstreamExchange.cancel` nothing comes at all.
    """

    def upstream_response(self, status: int, headers: Headers, end_stream: bool) -> None:
        """The final response HEADERS (informational 1xx are not passed on), hop-by-hop
        fields removed and nothing added: ``content-length`` only if the upstream sent it.
        ``end_stream`` is True for a response without a body (the gRPC trailers-only answer
        is one such HEADERS frame)."""

    def upstream_data(self, data: bytes, end_stream: bool) -> None:
        """Response body bytes as they arrive (``data`` may be empty when only the end is
        news). Call :meth:`UpstreamExchange.response_consumed` once they are passed on."""

    def upstream_trailers(self, headers: Headers) -> None:
        """The response trailers; they always end the stream."""

    def upstream_reset(self, code: int) -> None:
        """The upstream reset the stream with ``code``: pass it on as it is (gRPC maps the
        codes to statuses). It may come after a complete response while the request body is
        still being sent: RST_STREAM NO_ERROR then means "stop uploading" (RFC 9113 section
        8.1). ``REFUSED_STREAM`` also stands for an upstream GOAWAY that left the stream
        unprocessed (:attr:`UpstreamSession.on_goaway` hears of that first)."""

    def upstream_failed(self, status: int, message: str) -> None:
        """Transport failure (502) or timeout (504), or a request target that cannot be
        forwarded (400), with a one-line message naming the upstream. Answer with it if no
        response has started, else reset the downstream stream."""

    def upstream_request_consumed(self, n: int) -> None:
        """``n`` request body bytes were handed to the upstream under its flow control: the
        downstream may reopen its window by ``n``."""


# ------------------------------------------------------------------------------ Upstream


class Upstream:
    """One upstream origin, parsed from its URL; :meth:`session` gives the per-connection
    forwarder.

    The URL rules are the buffering proxy's: ``http://host:port/base`` (HTTP/1.1),
    ``https://host:port/base`` (TLS, ALPN h2 then http/1.1) and ``h2c://host:port/base``
    (HTTP/2 prior knowledge); the base path is prefixed to every request path. ``verify``
    (https:// only) is True (certifi trust), False (any certificate: a self-signed upstream in
    a test) or a CA bundle path, checked here so a typo fails at start-up. ``connect_timeout``
    bounds the TCP and TLS handshakes and, for HTTP/2, the upstream's first SETTINGS;
    ``read_timeout`` is how long a stream may wait on the upstream with no progress (see
    :class:`UpstreamExchange`). ``max_stream_buffer`` is the response bytes one stream may
    hold in the proxy. ``forwarded_proto`` is the ``x-forwarded-proto`` for requests whose own
    scheme is unknown (HTTP/1.1 downstreams).
    """

    def __init__(
        self,
        url: str,
        *,
        verify: bool | str = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_stream_buffer: int = DEFAULT_MAX_STREAM_BUFFER,
        forwarded_proto: str | None = None,
    ) -> None:
        scheme, origin, base_path = _parse_upstream(url)
        if isinstance(connect_timeout, bool) or isinstance(read_timeout, bool) \
                or connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("upstream timeouts must be positive numbers of seconds")
        if isinstance(max_stream_buffer, bool) or not isinstance(max_stream_buffer, int) \
                or not 1 <= max_stream_buffer <= _MAX_WINDOW:
            raise ValueError(f"max_stream_buffer must be 1 to {_MAX_WINDOW} bytes (it is the "
                             "HTTP/2 stream window the proxy advertises)")
        httpx_verify = _ssl_verify(verify) if scheme == "https" else True
        self.url = url
        self.scheme = scheme
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_stream_buffer = max_stream_buffer
        self.forwarded_proto = forwarded_proto
        self._origin = origin
        self._base_path = base_path
        parts = urlsplit(url)
        assert parts.hostname is not None  # _parse_upstream checked it
        self._host = parts.hostname
        self._port = parts.port or (443 if scheme == "https" else 80)
        self._authority = origin.netloc
        self._h2_scheme = b"https" if scheme == "https" else b"http"
        self._h2_ssl = _h2_ssl_context(verify) if scheme == "https" else None
        # https://: what ALPN chose last time. Once an upstream said http/1.1, sessions go to
        # httpx directly instead of paying a TLS handshake only to learn it again.
        self._alpn: str | None = None
        self._sessions: set[UpstreamSession] = set()
        self._closed = False
        self._client: httpx.AsyncClient | None = None
        if scheme != "h2c":
            self._client = httpx.AsyncClient(
                http1=True,
                http2=False,
                verify=httpx_verify,
                # the read timeout applies to each socket read, so a slow but streaming
                # upstream is not cut off; the write and pool timeouts get the same value
                timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
                limits=httpx.Limits(max_connections=100, max_keepalive_connections=20,
                                    keepalive_expiry=_KEEPALIVE_EXPIRY),
                # A proxy must not act on its environment or on responses: no HTTP(S)_PROXY
                # from the environment, no redirects, and a cookie jar that refuses every
                # cookie (httpx would otherwise keep every Set-Cookie, mixing clients).
                trust_env=False,
                follow_redirects=False,
                cookies=http.cookiejar.CookieJar(
                    policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
            )

    @classmethod
    def from_config(cls, config: ServerConfig) -> Upstream:
        """The upstream of a chaos server's config.

        ``config.extra`` may hold ``upstream_verify``, ``upstream_connect_timeout``,
        ``upstream_read_timeout`` and ``upstream_max_stream_buffer``. The buffering proxy's
        ``upstream_max_response_body`` is accepted and ignored: nothing is buffered whole here.
        """
        if config.upstream is None:
            raise ValueError("the server config has no upstream URL")
        options = _options_from_extra(config.extra)
        options.pop("max_response_body", None)
        if "upstream_max_stream_buffer" in config.extra:
            value = config.extra["upstream_max_stream_buffer"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("upstream_max_stream_buffer must be a number of bytes")
            options["max_stream_buffer"] = value
        return cls(config.upstream, forwarded_proto="http" if config.h2c else "https",
                   **options)

    def __repr__(self) -> str:
        return f"Upstream({self.url!r})"

    def session(self) -> UpstreamSession:
        """A forwarder for one downstream connection (HTTP/2 upstreams: its own connection)."""
        if self._closed:
            raise RuntimeError("the upstream is closed")
        session = UpstreamSession(self)
        self._sessions.add(session)
        return session

    async def aclose(self) -> None:
        """Close every session (their exchanges are cancelled) and the HTTP/1.1 pool."""
        self._closed = True
        sessions = list(self._sessions)
        if sessions:
            await asyncio.gather(*(s.aclose() for s in sessions), return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.aclose(), _CLOSE_WAIT)

    # ---------------------------------------------------------------- request building

    def _target(self, path: str) -> bytes:
        """The upstream request target: base path + the client's path and query, raw (the
        buffering proxy's rules)."""
        if not path.startswith("/"):
            if path.startswith(("http://", "https://")):  # HTTP/1.1 absolute-form
                parts = urlsplit(path)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            elif path == "*":  # OPTIONS *: the closest an origin-form request gets
                path = "/"
            else:
                raise ValueError(f"request target {path[:100]!r} is not a path")
        if not path.isascii():
            # decoded as latin-1 by the server (one char per byte): percent-encode those
            # bytes rather than fail; a conforming client never sends them raw
            path = "".join(c if ord(c) < 128 else f"%{ord(c):02X}" for c in path)
        return (self._base_path + path).encode("ascii")

    def _request_headers(self, headers: Headers, http_version: str, client_ip: str | None,
                         *, h2: bool) -> Headers:
        """The regular (non-pseudo) request fields for the upstream.

        The buffering proxy's rules with three changes a streaming proxy needs: the
        downstream's ``content-length`` passes through untouched (and none is made up),
        ``trailer`` is kept for HTTP/2 upstreams, and cookies stay split for them (HPACK
        compresses each crumb; HTTP/1.1 gets them joined, RFC 9113 section 8.2.3).
        """
        drop = set(_REQUEST_DROP_H2 if h2 else _REQUEST_DROP_H1)
        for name, value in headers:
            if name.lower() == b"connection":  # "Connection: foo" makes foo hop-by-hop too
                drop.update(t.strip().lower() for t in value.split(b",") if t.strip())
        authority = host = scheme = None
        forwarded_for: list[bytes] = []
        via: list[bytes] = []
        cookies: list[bytes] = []
        trailers = False
        out: Headers = []
        for raw_name, value in headers:
            name = raw_name.lower()
            if name[:1] == b":":
                if name == b":authority":
                    authority = value
                elif name == b":scheme":
                    scheme = value
            elif name == b"host":
                host = value
            elif name == b"te":
                trailers = trailers or any(t.strip().lower().split(b";")[0] == b"trailers"
                                           for t in value.split(b","))
            elif name in drop or name in _SET_BY_PROXY or name.startswith(b"proxy-"):
                continue
            elif name == b"x-forwarded-for":
                forwarded_for.append(value)
            elif name == b"via":
                via.append(value)
            elif name == b"cookie" and not h2:
                cookies.append(value)
            else:
                out.append((name, value))
        if cookies:
            out.append((b"cookie", b"; ".join(cookies)))
        if trailers:
            out.append((b"te", b"trailers"))
        if client_ip:
            forwarded_for.append(client_ip.encode("latin-1"))
        if forwarded_for:
            out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        proto = scheme or (self.forwarded_proto.encode() if self.forwarded_proto else b"http")
        out.append((b"x-forwarded-proto", proto))
        original_host = authority or host
        if original_host:
            out.append((b"x-forwarded-host", original_host))
        via.append(f"{http_version} h2guard-chaos".encode())
        out.append((b"via", b", ".join(via)))
        return out

    # ---------------------------------------------------------------- messages

    def _failed(self, why: str) -> str:
        return f"h2guard chaos proxy: upstream {self.url} failed: {why}"

    def _timed_out(self, what: str) -> str:
        return f"h2guard chaos proxy: upstream {self.url} timed out: {what}"


def _h2_ssl_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context of the HTTP/2 engine: offers h2 then http/1.1. Separate from httpx's,
    because httpcore rewrites the ALPN list of the context it is given."""
    if verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        ctx = ssl.create_default_context(cafile=verify)  # loadable: _ssl_verify checked it
    else:
        try:
            import certifi

            ctx = ssl.create_default_context(cafile=certifi.where())
        except ImportError:  # pragma: no cover - httpx depends on certifi
            ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def _response_headers(raw: Headers) -> Headers:
    """Response fields minus pseudo-headers and hop-by-hop ones; nothing added."""
    drop: set[bytes] | frozenset[bytes] = _RESPONSE_DROP
    for name, value in raw:
        if name == b"connection":
            drop = set(drop)
            drop.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return [(name, value) for name, value in raw
            if name[:1] != b":" and name not in drop and not name.startswith(b"proxy-")]


# ------------------------------------------------------------------------------ session


class UpstreamSession:
    """The upstream side of one downstream connection.

    For an HTTP/2 upstream it owns one upstream connection, opened on the first
    :meth:`open` (concurrent opens share the connecting); requests above the upstream's
    SETTINGS_MAX_CONCURRENT_STREAMS wait in FIFO order for a free stream. After an upstream
    GOAWAY the old connection drains (streams at or below its last_stream_id finish) and new
    requests get a fresh connection. An idle connection is closed after 4 s, before a typical
    upstream idle timeout (Node.js: 5 s) could race a new request. HTTP/1.1 upstreams share
    the :class:`Upstream`'s httpx pool.

    ``on_goaway(code, debug, stream_ids)`` is set by the adapter: it hears of every upstream
    GOAWAY with the *downstream* stream ids it left unprocessed. Each of those streams then
    gets ``upstream_reset(REFUSED_STREAM)`` (same meaning: never processed, safe to retry),
    unless the adapter cancelled it from inside ``on_goaway``.
    """

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.on_goaway: Callable[[int, bytes, list[int]], None] | None = None
        self._loop = asyncio.get_running_loop()
        self._conn: _H2Connection | None = None
        self._conns: set[_H2Connection] = set()
        self._connecting: asyncio.Task[None] | None = None
        self._waiting: deque[UpstreamExchange] = deque()
        self._h1: set[UpstreamExchange] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"UpstreamSession({self.upstream.url!r}, connections={len(self._conns)})"

    def open(
        self,
        *,
        stream_id: int,
        method: str,
        path: str,
        headers: Headers,
        http_version: str,
        client_ip: str | None,
        end_stream: bool,
        sink: ResponseSink,
    ) -> UpstreamExchange:
        """Forward a request whose HEADERS arrived on downstream stream ``stream_id``.

        ``headers`` is the downstream's field list (pseudo-headers may be in it: ``:authority``
        and ``:scheme`` feed ``x-forwarded-host`` / ``-proto``); ``http_version`` ("2", "1.1")
        goes into ``via``; ``client_ip`` is appended to ``x-forwarded-for``. ``end_stream``:
        the request has no body. Never blocks; failures reach ``sink`` later.
        """
        if self._closed:
            raise RuntimeError("the upstream session is closed")
        ex = UpstreamExchange(self, stream_id, sink)
        up = self.upstream
        ex._body_end = end_stream
        try:
            ex._target = up._target(path)
        except ValueError as exc:
            ex._fail_soon(400, f"h2guard chaos proxy: {exc}")
            return ex
        ex._method = method
        ex._headers = headers
        ex._http_version = http_version
        ex._client_ip = client_ip
        if up.scheme == "http" or (up.scheme == "https" and up._alpn == "http/1.1"):
            ex._start_h1()
            return ex
        self._waiting.append(ex)
        ex._arm_timer()
        self._pump()
        return ex

    async def aclose(self) -> None:
        """Cancel every exchange (no sink callbacks), close the upstream connections; bounded."""
        if self._closed:
            return
        self._closed = True
        self.upstream._sessions.discard(self)
        connecting = self._connecting
        if connecting is not None:
            connecting.cancel()
        waiting, self._waiting = list(self._waiting), deque()
        for ex in waiting:
            ex._silence()
        tasks = []
        for ex in list(self._h1):
            ex._silence()
            if ex._task is not None:
                ex._task.cancel()
                tasks.append(ex._task)
        self._h1.clear()
        conns = list(self._conns)
        for conn in conns:
            conn.shutdown()
        pending: list[asyncio.Future[Any]] = [c.closed_future for c in conns]
        pending.extend(tasks)
        if connecting is not None:
            pending.append(connecting)
        if pending:
            done, _ = await asyncio.wait(pending, timeout=_CLOSE_WAIT)
            for fut in done:
                if not fut.cancelled():
                    fut.exception()  # retrieved: never "exception was never retrieved"
        for conn in conns:
            if not conn.closed_future.done() and conn.transport is not None:
                conn.transport.abort()
        self._conns.clear()
        self._conn = None

    # ---------------------------------------------------------------- HTTP/2 plumbing

    def _pump(self) -> None:
        """Start waiting requests on the current connection while it has free streams,
        connecting first when there is none."""
        waiting = self._waiting
        if not waiting or self._closed:
            return
        conn = self._conn
        if conn is None or conn.closed or conn.draining:
            self._conn = None
            self._ensure_connection()
            return
        while waiting and conn.usable:
            ex = waiting.popleft()
            if not ex._start_h2(conn):  # stream ids ran out: a fresh connection
                waiting.appendleft(ex)
                self._conn = None
                self._ensure_connection()
                return

    def _ensure_connection(self) -> None:
        if self._connecting is None and not self._closed:
            self._connecting = self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        up = self.upstream
        loop = self._loop
        conn: _H2Connection | None = None
        adopted = False
        try:
            try:
                async with asyncio.timeout(up.connect_timeout):
                    _, conn = await loop.create_connection(
                        lambda: _H2Connection(self), up._host, up._port, ssl=up._h2_ssl,
                        server_hostname=up._host if up._h2_ssl is not None else None)
                    self._conns.add(conn)
                    if up._h2_ssl is not None:
                        if not conn.started:  # ALPN chose http/1.1 (or nothing)
                            up._alpn = "http/1.1"
                            self._fall_back_to_h1()
                            return
                        up._alpn = "h2"
                    await conn.ready
            except TimeoutError:
                self._fail_waiting(504, up._timed_out(
                    f"no connection within {up.connect_timeout:g} s"))
                return
            except OSError as exc:  # refused, unreachable, TLS (ssl.SSLError is an OSError)
                self._fail_waiting(502, up._failed(f"ConnectError: {_one_line(exc)}"))
                return
            if conn.failure is not None:
                self._fail_waiting(502, up._failed(conn.failure))
                return
            if conn.draining:
                self._fail_waiting(502, up._failed(_GOAWAY_ORPHAN))
                return
            adopted = True
            self._conn = conn
        finally:
            self._connecting = None
            if conn is not None and not adopted:
                conn.shutdown()
        self._pump()
        if not conn.exchanges:
            conn.stream_closed()  # nothing to send after all: start its idle expiry

    def _fall_back_to_h1(self) -> None:
        """https:// and ALPN chose http/1.1: the waiting requests go to httpx."""
        waiting, self._waiting = list(self._waiting), deque()
        for ex in waiting:
            ex._cancel_timer()
            ex._start_h1()

    def _fail_waiting(self, status: int, message: str) -> None:
        waiting, self._waiting = list(self._waiting), deque()
        for ex in waiting:
            ex._fail(status, message)

    def _goaway(self, conn: _H2Connection, ev: GoAwayReceived) -> None:
        """An upstream GOAWAY: the connection drains, unprocessed streams are refused, and
        waiting requests move to a fresh connection."""
        if self._conn is conn:
            self._conn = None
        lost: list[UpstreamExchange] = []
        for sid in ev.unprocessed:
            ex = conn.exchanges.pop(sid, None)
            if ex is not None:
                lost.append(ex)
        callback = self.on_goaway
        if callback is not None:
            try:
                callback(ev.error_code, ev.debug, [ex.stream_id for ex in lost])
            except Exception as exc:
                self._loop.call_exception_handler({
                    "message": "h2guard upstream: the on_goaway callback raised",
                    "exception": exc})
        for ex in lost:
            ex._detach()
            ex._reset(_REFUSED_STREAM)
        if self._waiting and not conn.used:
            self._fail_waiting(502, self.upstream._failed(
                f"{_GOAWAY_ORPHAN} (code {ev.error_code})"))

    def _connection_gone(self, conn: _H2Connection) -> None:
        self._conns.discard(conn)
        if self._conn is conn:
            self._conn = None
            if conn.failure is not None and self._connecting is None:
                # never sent: they go down with the connection they were queued for
                self._fail_waiting(502, self.upstream._failed(conn.failure))


# ------------------------------------------------------------------------------ exchange


class UpstreamExchange:
    """One forwarded request; created by :meth:`UpstreamSession.open`.

    The request body goes in through :meth:`send_data` / :meth:`send_trailers`, which never
    block: what the upstream's window does not take now is queued (the caller bounds it, by
    reopening the downstream window only on ``upstream_request_consumed``). The response
    comes out through the sink. HTTP/2 only: ``read_timeout`` ends a stream that waits on
    the upstream that long without progress: for a free stream slot, for the window to send
    its body, or for response bytes once the downstream has taken everything delivered (time
    spent waiting for a slow downstream never counts). HTTP/1.1: httpx's per-read timeout.
    """

    def __init__(self, session: UpstreamSession, stream_id: int, sink: ResponseSink) -> None:
        self.session = session
        self.stream_id = stream_id
        self.sink = sink
        self.protocol: str | None = None  # "h2" or "http/1.1" once the exchange started
        self._loop = session._loop
        self._method = ""
        self._target = b""
        self._headers: Headers = []
        self._http_version = "2"
        self._client_ip: str | None = None
        # request body, waiting for the upstream (window, socket, or the connection itself)
        self._body: deque[bytes] = deque()
        self._body_offset = 0  # bytes of _body[0] already sent
        self._body_end = False
        self._trailers: Headers | None = None
        self._request_sent = False  # END_STREAM (or trailers) went upstream
        self._consumed_pending = 0
        self._consumed_scheduled = False
        # response
        self._started = False  # upstream_response delivered
        self._response_done = False  # the end of the response delivered
        self._dead = False  # cancelled, reset or failed: no more callbacks at all
        self._delivered = 0
        self._consumed = 0
        # HTTP/2
        self._conn: _H2Connection | None = None
        self._sid: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._progress_at = 0.0
        # HTTP/1.1
        self._task: asyncio.Task[None] | None = None
        self._body_ready: asyncio.Event | None = None
        self._credit: asyncio.Event | None = None

    def __repr__(self) -> str:
        return (f"UpstreamExchange(stream_id={self.stream_id}, protocol={self.protocol}, "
                f"upstream_stream={self._sid})")

    # ---------------------------------------------------------------- public

    def send_data(self, data: bytes, *, end_stream: bool = False) -> None:
        """Request body bytes; ``end_stream`` ends the request. Never blocks."""
        if self._dead or self._body_end:
            return
        if end_stream:
            self._body_end = True
        if data:
            was_empty = not self._body
            self._body.append(bytes(data))
            if was_empty:
                self._progress_at = self._loop.time()  # a wait on the upstream starts now
        if self.protocol == "h2":
            self._pump_body()
        elif self.protocol == "http/1.1" and self._body_ready is not None:
            self._body_ready.set()

    def send_trailers(self, headers: Headers) -> None:
        """Request trailers; they end the request. HTTP/1.1 upstreams: dropped (httpx cannot
        send them), the body simply ends."""
        if self._dead or self._body_end:
            return
        self._trailers = [(k, v) for k, v in headers if k[:1] != b":"]
        self.send_data(b"", end_stream=True)

    def response_consumed(self, n: int) -> None:
        """The downstream client took ``n`` response bytes: only now may the upstream send
        that much more (end-to-end backpressure)."""
        if n <= 0 or self._dead:
            return
        n = min(n, self._delivered - self._consumed)
        if n <= 0:
            return
        self._consumed += n
        if self.protocol == "h2":
            conn = self._conn
            if self._consumed == self._delivered:
                self._progress_at = self._loop.time()  # from here on we wait on the upstream
            if conn is not None and self._sid is not None and not conn.closed \
                    and conn.core.acknowledge(self._sid, n):
                conn.flush_soon()
        elif self._credit is not None and \
                self._delivered - self._consumed < self.session.upstream.max_stream_buffer:
            self._credit.set()

    def cancel(self, code: int = _CANCEL) -> None:
        """Give up: RST_STREAM ``code`` upstream (HTTP/2) or drop the connection (HTTP/1.1).
        No sink callback comes after this."""
        self._silence()
        session = self.session
        with contextlib.suppress(ValueError):
            session._waiting.remove(self)
        conn, sid = self._conn, self._sid
        if conn is not None and sid is not None:
            self._detach()
            if not conn.closed and conn.core.reset_stream(sid, code):
                conn.flush()
            session._pump()
        task = self._task
        if task is not None:
            self._task = None
            session._h1.discard(self)
            # Once the response started, the task is left to notice _dead and close the
            # response itself: cancelling it inside httpx's read or close leaks the pooled
            # connection (measured: 100 such cancels exhausted a 100-connection pool).
            if not task.done() and not self._started:
                task.cancel()

    # ---------------------------------------------------------------- shared internals

    def _silence(self) -> None:
        self._dead = True
        self._body.clear()
        self._cancel_timer()
        if self._credit is not None:
            self._credit.set()
        if self._body_ready is not None:
            self._body_ready.set()

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a sink callback; one that raises is reported and cancels its exchange, so an
        adapter bug costs one stream, not the upstream connection's other streams."""
        try:
            fn(*args)
        except Exception as exc:
            self._loop.call_exception_handler({
                "message": "h2guard upstream: a ResponseSink callback raised",
                "exception": exc, "exchange": repr(self)})
            self.cancel()

    def _fail(self, status: int, message: str) -> None:
        """A terminal failure (502/504/400); silent once the response ended normally."""
        if self._dead:
            return
        done = self._response_done
        self._silence()
        if not done:
            self._call(self.sink.upstream_failed, status, message)

    def _fail_soon(self, status: int, message: str) -> None:
        self._loop.call_soon(self._fail, status, message)

    def _reset(self, code: int) -> None:
        if self._dead:
            return
        self._silence()
        self._call(self.sink.upstream_reset, code)

    def _note_consumed(self, n: int) -> None:
        """Request bytes went upstream: tell the sink on the next loop iteration, batched
        (never inside the adapter's own :meth:`send_data` call)."""
        self._consumed_pending += n
        if not self._consumed_scheduled:
            self._consumed_scheduled = True
            self._loop.call_soon(self._deliver_consumed)

    def _deliver_consumed(self) -> None:
        self._consumed_scheduled = False
        n, self._consumed_pending = self._consumed_pending, 0
        if n and not self._dead:
            self._call(self.sink.upstream_request_consumed, n)

    # ---------------------------------------------------------------- HTTP/2

    def _start_h2(self, conn: _H2Connection) -> bool:
        """Open the upstream stream and send HEADERS (and what body is queued). False when
        the connection cannot take it (the caller requeues on a fresh one, or it failed)."""
        if self._dead:
            return True
        up = self.session.upstream
        headers: Headers = [(b":method", self._method.encode("latin-1")),
                            (b":scheme", up._h2_scheme),
                            (b":authority", up._authority),
                            (b":path", self._target)]
        headers += up._request_headers(self._headers, self._http_version, self._client_ip,
                                       h2=True)
        core = conn.core
        try:
            sid = core.next_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            conn.retire()
            return False
        end = self._body_end and not self._body and self._trailers is None
        if not core.send_headers(sid, headers, end_stream=end):
            self._fail_soon(502, up._failed("could not open an upstream stream"))
            return True
        self.protocol = "h2"
        self._conn = conn
        self._sid = sid
        conn.exchanges[sid] = self
        conn.stream_opened()
        self._progress_at = self._loop.time()
        conn.flush_soon()  # the HEADERS of requests opened in one tick go out together
        if end:
            self._request_sent = True
        else:
            self._pump_body()
        return True

    def _pump_body(self) -> None:
        """Hand queued body bytes to the core as far as the upstream's windows and our
        socket allow (a paused socket gets nothing more: pause_writing is honoured)."""
        conn, sid = self._conn, self._sid
        if conn is None or sid is None or self._request_sent or self._dead:
            return
        core = conn.core
        body = self._body
        sent_total = 0
        while body and not conn.write_paused and not conn.closed:
            chunk = body[0]
            off = self._body_offset
            size = min(len(chunk) - off, _SEND_SLICE)
            piece = chunk if off == 0 and size == len(chunk) else chunk[off:off + size]
            last = (len(body) == 1 and off + size == len(chunk) and self._body_end
                    and self._trailers is None)
            n = core.send_data(sid, piece, end_stream=last)
            if n:
                sent_total += n
                off += n
                if off == len(chunk):
                    body.popleft()
                    off = 0
                self._body_offset = off
                if last and n == size:
                    self._request_sent = True
                conn.flush()  # now: pause_writing (if it comes) must stop this loop
            if n < size:
                break  # the window is spent: WINDOW_UPDATE resumes
        if not body and self._body_end and not self._request_sent and not conn.closed:
            if self._trailers is not None:
                core.send_headers(sid, self._trailers, end_stream=True)
            else:
                core.end_stream(sid)
            self._request_sent = True
            self._progress_at = self._loop.time()
            conn.flush()
        if sent_total:
            self._progress_at = self._loop.time()
            self._note_consumed(sent_total)
        if self._request_sent and self._response_done:
            self._detach()
            self.session._pump()

    def _waiting_on_upstream(self) -> bool:
        """Whether a stall now is the upstream's doing (the read timeout runs) rather than
        the downstream's or the connecting's."""
        if self._response_done:
            return False
        if self._sid is None:  # queued for a stream slot, not for the connect
            conn = self.session._conn
            return conn is not None and conn.ready.done() and not conn.closed \
                and not conn.usable
        if not self._request_sent:
            return bool(self._body)  # body queued that the upstream does not take
        return self._delivered == self._consumed

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self._progress_at = self._loop.time()
        self._timer = self._loop.call_at(self._progress_at + self.session.upstream.read_timeout,
                                         self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self._dead or self._response_done:
            return
        up = self.session.upstream
        timeout = up.read_timeout
        now = self._loop.time()
        if self._waiting_on_upstream():
            if now - self._progress_at >= timeout:
                if self._sid is None:
                    what = (f"no free upstream stream within {timeout:g} s (its "
                            "SETTINGS_MAX_CONCURRENT_STREAMS are all busy)")
                elif not self._request_sent:
                    what = f"could not send the request within {timeout:g} s"
                else:
                    what = f"no response data within {timeout:g} s"
                self._timeout(up._timed_out(what))
                return
            at = self._progress_at + timeout
        else:
            at = now + timeout  # re-checked; a wait that starts later resets _progress_at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _timeout(self, message: str) -> None:
        conn, sid = self._conn, self._sid
        with contextlib.suppress(ValueError):
            self.session._waiting.remove(self)
        if conn is not None and sid is not None:
            self._detach()
            if not conn.closed and conn.core.reset_stream(sid, _CANCEL):
                conn.flush()
            self.session._pump()
        self._fail(504, message)

    def _detach(self) -> None:
        """Leave the connection's stream table (the stream is over as far as we care)."""
        conn, sid = self._conn, self._sid
        self._cancel_timer()
        if conn is not None and sid is not None:
            if conn.exchanges.pop(sid, None) is self:
                conn.stream_closed()
            self._conn = None

    # the connection's event handlers, one per core event

    def _on_response(self, ev: ResponseReceived) -> None:
        self._progress_at = self._loop.time()
        if self._started or self._dead:
            return  # a second HEADERS that is not trailers: h2 rejects it; ignore
        status_raw = b""
        for name, value in ev.headers:
            if name == b":status":
                status_raw = value
                break
        if not status_raw.isdigit():
            self._reset_upstream(0x1)
            self._fail(502, self.session.upstream._failed(
                f"response without a valid :status ({status_raw[:20]!r})"))
            return
        status = int(status_raw)
        if status < 200:
            return  # informational (100, 103): nobody downstream waits for it
        self._started = True
        if ev.end_stream:
            self._response_done = True
            self._cancel_timer()
        self._call(self.sink.upstream_response, status, _response_headers(ev.headers),
                   ev.end_stream)

    def _on_data(self, ev: DataReceived) -> None:
        self._progress_at = self._loop.time()
        data = ev.data
        n = len(data)
        conn, sid = self._conn, self._sid
        if ev.flow_controlled_length > n and conn is not None and sid is not None:
            conn.core.acknowledge(sid, ev.flow_controlled_length - n)  # padding: nobody reads
        if not self._started or self._dead:
            return
        self._delivered += n
        if ev.end_stream:
            self._response_done = True
            self._cancel_timer()
        self._call(self.sink.upstream_data, data, ev.end_stream)

    def _on_trailers(self, ev: TrailersReceived) -> None:
        if not self._started or self._dead:
            return
        self._response_done = True
        self._cancel_timer()
        self._call(self.sink.upstream_trailers, _response_headers(ev.headers))

    def _on_ended(self) -> None:
        """END_STREAM seen (the core reports it after the event that carried it)."""
        if self._dead or self._response_done:
            return
        if self._started:  # pragma: no cover - the carrying event already ended it
            self._response_done = True
            self._call(self.sink.upstream_data, b"", True)
        else:
            self._fail(502, self.session.upstream._failed("stream ended without a response"))

    def _on_reset(self, ev: StreamReset) -> None:
        if self._dead:
            return
        if ev.remote:
            self._reset(ev.error_code)
        else:  # the core reset it: the upstream broke the protocol on this stream
            self._fail(502, self.session.upstream._failed(
                f"protocol error on the upstream stream (reset with code {ev.error_code})"))

    def _reset_upstream(self, code: int) -> None:
        conn, sid = self._conn, self._sid
        if conn is not None and sid is not None:
            self._detach()
            if not conn.closed and conn.core.reset_stream(sid, code):
                conn.flush_soon()

    # ---------------------------------------------------------------- HTTP/1.1

    def _start_h1(self) -> None:
        self.protocol = "http/1.1"
        self._body_ready = asyncio.Event()
        self._credit = asyncio.Event()
        self.session._h1.add(self)
        self._task = self._loop.create_task(self._run_h1())

    async def _body_stream(self) -> AsyncIterator[bytes]:
        """The request body as httpx pulls it: each chunk counts as consumed when taken."""
        ready = self._body_ready
        assert ready is not None
        while not self._dead:
            if self._body:
                chunk = self._body.popleft()
                self._note_consumed(len(chunk))
                yield chunk
            elif self._body_end:
                return
            else:
                ready.clear()
                await ready.wait()

    async def _run_h1(self) -> None:
        up = self.session.upstream
        client = up._client
        assert client is not None
        try:
            await self._exchange_h1(up, client)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must still answer the stream
            self._fail(502, up._failed(f"{type(exc).__name__}: {_one_line(exc)}"))
        finally:
            self.session._h1.discard(self)

    async def _exchange_h1(self, up: Upstream, client: httpx.AsyncClient) -> None:
        headers = up._request_headers(self._headers, self._http_version, self._client_ip,
                                      h2=False)
        content = None if self._body_end and not self._body else self._body_stream()
        # httpx.Request, not client.build_request(): the latter merges the client's default
        # headers, and an accept-encoding the client never sent would get it a compressed
        # body. A streamed body goes chunked unless the downstream's content-length is here.
        # The one length httpx adds itself is "Content-Length: 0" on a POST/PUT/PATCH whose
        # request ended with its HEADERS: the body is known to be empty, RFC 9110 section 8.6
        # says a client SHOULD say so, and strict HTTP/1.1 servers answer 411 without it.
        request = httpx.Request(self._method, up._origin.copy_with(raw_path=self._target),
                                headers=headers, content=content)
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            self._fail(504, up._timed_out(_timeout_what(up, exc)))
            return
        except httpx.HTTPError as exc:
            self._fail(502, up._failed(f"{type(exc).__name__}: {_one_line(exc)}"))
            return
        try:
            await self._read_h1(up, response)
        except httpx.TimeoutException as exc:
            self._fail(504, up._timed_out(_timeout_what(up, exc)))
        except httpx.HTTPError as exc:
            self._fail(502, up._failed(
                f"response body cut short: {type(exc).__name__}: {_one_line(exc)}"))
        finally:
            with contextlib.suppress(Exception):
                await response.aclose()

    async def _read_h1(self, up: Upstream, response: httpx.Response) -> None:
        raw: Headers = [(name.lower(), value) for name, value in response.headers.raw]
        headers = _response_headers(raw)
        status = response.status_code
        length: int | None = None
        for name, value in raw:
            if name == b"content-length" and value.strip().isdigit():
                length = int(value)
        no_body = (self._method == "HEAD" or status in _NO_BODY_STATUSES or status < 200
                   or length == 0)
        if self._dead:
            return
        self._started = True
        self._response_done = no_body
        self._call(self.sink.upstream_response, status, headers, no_body)
        if no_body:
            return
        credit = self._credit
        assert credit is not None
        limit = up.max_stream_buffer
        # Read to the iterator's own end even after the last byte: leaving it early would
        # abandon the response before h11's EndOfMessage, and httpcore would then close the
        # connection instead of returning it to the pool.
        async for chunk in response.aiter_raw():
            if self._dead:
                return
            if not chunk or self._response_done:
                continue
            self._delivered += len(chunk)
            last = length is not None and self._delivered >= length
            if last:  # known length: END_STREAM rides on the last DATA, no empty frame after
                self._response_done = True
            self._call(self.sink.upstream_data, chunk, last)
            # the credit: stop reading the socket until the downstream caught up
            while not self._dead and not last and self._delivered - self._consumed >= limit:
                credit.clear()
                await credit.wait()
        if not self._dead and not self._response_done:
            self._response_done = True
            self._call(self.sink.upstream_data, b"", True)


def _timeout_what(up: Upstream, exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return f"no connection within {up.connect_timeout:g} s"
    if isinstance(exc, httpx.ReadTimeout):
        return f"no response data within {up.read_timeout:g} s"
    if isinstance(exc, httpx.WriteTimeout):
        return f"could not send the request within {up.read_timeout:g} s"
    return "no free upstream connection (pool exhausted)"


# ------------------------------------------------------------------------------ connection


class _H2Connection(asyncio.Protocol):
    """One upstream HTTP/2 connection: moves bytes between the socket and the core, and
    routes the core's events to the exchanges."""

    def __init__(self, session: UpstreamSession) -> None:
        up = session.upstream
        self.session = session
        self.loop = session._loop
        core = H2Core(client=True,
                      settings={_ENABLE_PUSH: 0, _INITIAL_WINDOW_SIZE: up.max_stream_buffer,
                                _MAX_HEADER_LIST_SIZE: _HEADER_LIST_LIMIT},
                      connection_window=min(_MAX_WINDOW,
                                            max(_CONNECTION_WINDOW, 4 * up.max_stream_buffer)),
                      max_header_list_size=_HEADER_LIST_LIMIT)
        core.auto_ack = False  # DATA is acknowledged only when the downstream took it
        self.core = core
        self.transport: asyncio.Transport | None = None
        self.exchanges: dict[int, UpstreamExchange] = {}
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed_future: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self.draining = False
        self.failure: str | None = None
        self.used = False
        self.started = False  # the preface went out (not for a TLS peer that chose http/1.1)
        self.write_paused = False
        self._flush_pending = False
        self._idle: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return (not self.closed and not self.draining and self.ready.done()
                and self.failure is None and self.core.can_open_stream())

    # ---------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None and sslobj.selected_alpn_protocol() != "h2":
            return  # no preface to an HTTP/1.1 server: the session falls back and closes this
        self.started = True
        self.core.start(self.loop.time())
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        exchanges = self.exchanges
        for ev in self.core.receive(data, self.loop.time()):
            if isinstance(ev, DataReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex._on_data(ev)
                else:  # a stream we gave up on: let the connection window recover
                    self.core.acknowledge(ev.stream_id, ev.flow_controlled_length)
            elif isinstance(ev, ResponseReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex._on_response(ev)
            elif isinstance(ev, StreamEnded):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex._on_ended()
                    if ex._request_sent or ex._dead:
                        ex._detach()
            elif isinstance(ev, TrailersReceived):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex._on_trailers(ev)
            elif isinstance(ev, WindowUpdated):
                self._on_window(ev.stream_id)
            elif isinstance(ev, StreamReset):
                ex = exchanges.get(ev.stream_id)
                if ex is not None:
                    ex._detach()
                    ex._on_reset(ev)
            elif isinstance(ev, GoAwayReceived):
                self.draining = True
                self.session._goaway(self, ev)
            elif isinstance(ev, SettingsReceived):
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(ev, ConnectionFailed):
                self.flush()  # the GOAWAY the core queued
                self._lost(f"HTTP/2 protocol error: {' '.join(ev.message.split())}")
                return
        self.flush()
        if self.draining and not self.exchanges:
            self.shutdown()
        self.session._pump()

    def eof_received(self) -> bool | None:
        return False  # close our side too; connection_lost does the rest

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"{type(exc).__name__}: {_one_line(exc)}" if exc else \
            "the upstream closed the connection"
        self._lost(f"connection lost: {reason}")
        if not self.closed_future.done():
            self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for ex in list(self.exchanges.values()):
            if ex._body or (ex._body_end and not ex._request_sent):
                ex._pump_body()
        self.flush()

    # ---------------------------------------------------------------- streams

    def _on_window(self, stream_id: int) -> None:
        if stream_id == 0:
            targets = list(self.exchanges.values())
        else:
            one = self.exchanges.get(stream_id)
            targets = [one] if one is not None else []
        for ex in targets:
            if ex._body:
                ex._progress_at = self.loop.time()
                ex._pump_body()

    def stream_opened(self) -> None:
        self.used = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None

    def stream_closed(self) -> None:
        if self.exchanges or self.closed:
            return
        if self.draining:
            self.loop.call_soon(self.shutdown)  # after the events of this read are handled
        elif self._idle is None:
            self._idle = self.loop.call_later(_KEEPALIVE_EXPIRY, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if not self.exchanges and not self.closed:
            self.retire()
            self.shutdown()

    def retire(self) -> None:
        """No new streams here (stream ids ran out, or idle): the next request reconnects."""
        self.draining = True
        if self.session._conn is self:
            self.session._conn = None

    # ---------------------------------------------------------------- closing

    def shutdown(self) -> None:
        """Close politely: RST the streams still open, GOAWAY, then FIN."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.draining = True
        if self.session._conn is self:
            self.session._conn = None
        core = self.core
        if self.started and not self.closed and not core.closed:
            for ex in list(self.exchanges.values()):
                if ex._sid is not None:
                    core.reset_stream(ex._sid, _CANCEL)
                ex._silence()
                ex._detach()
            if core.goaway_sent is None:
                core.goaway(code=0, last_stream_id=0)
            self.flush()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        elif self.transport is None and not self.closed_future.done():
            self.closed_future.set_result(None)

    def _lost(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.core.mark_lost(why)
        if self.failure is None:
            self.failure = why
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.ready.done():
            self.ready.set_result(None)
        exchanges = list(self.exchanges.values())
        self.exchanges.clear()
        message = self.session.upstream._failed(why)
        for ex in exchanges:
            ex._cancel_timer()
            ex._conn = None
            ex._fail(502, message)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        self.session._connection_gone(self)

    # ---------------------------------------------------------------- output

    def flush_soon(self) -> None:
        """Write at the end of this loop iteration: one send for many streams' frames."""
        if not self._flush_pending:
            self._flush_pending = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_pending = False
        data = self.core.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)
