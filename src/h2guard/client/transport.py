"""httpx transports (async and sync) that lose no request to GOAWAY, stream limits or stale
connections.

``httpx.AsyncClient(transport=h2guard.AsyncHTTPTransport())`` just works. What it does that
httpx's own transport does not (docs/facts.md §4): streams at or below a GOAWAY's
last_stream_id finish; streams above it, REFUSED_STREAM and connection failures before the
request was sent move to another or a new connection transparently (they were never processed:
safe for any method, a bounded number of times); MAX_CONCURRENT_STREAMS is honoured with a wait
instead of "Max outbound streams is N"; idle and aged connections are closed or retired before
middleboxes drop them, idle ones are PINGed before reuse, and silent ones are PINGed while a
response is awaited. Anything that may have been processed is *not* retried here: that decision
belongs to :class:`h2guard.RetryTransport`, which knows the method and the Idempotency-Key.

The sync transport (:mod:`h2guard.client.sync`) runs this same implementation on a private
event-loop thread: one implementation of the protocol, not two.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import random
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, cast

import httpx

from h2guard.client.connection import (
    ConnectionSettings,
    GoAwayTrust,
    StreamState,
    TrustGoAway,
)
from h2guard.client.dial import Dialer, env_proxy
from h2guard.client.pool import OriginPool, PoolFailure, PoolSettings
from h2guard.errors import Failure, attach
from h2guard.events import EventLog
from h2guard.resend import why_not_resend
from h2guard.wire.events import Headers

__all__ = ["AsyncHTTPTransport"]

_NO_TIMEOUTS: dict[str, float | None] = {}
_HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                         b"upgrade", b"host", b"http2-settings"})


def _file_options(verify: ssl.SSLContext | str | os.PathLike[str] | bool,
                  cert: Any) -> tuple[ssl.SSLContext | str | bool, Any]:
    """``verify`` and ``cert`` with any ``pathlib.Path`` (``os.PathLike``) as the path it names.

    httpx 0.28 types these as ``str``; a ``Path`` there is what a user means all the same, and
    taking it for "no CA given" would trust the default bundle instead of the user's own CA,
    failing later with a verification error that names nothing. Anything else is a TypeError
    now, naming the option."""
    if isinstance(verify, os.PathLike):
        verify = os.fspath(verify)
    if not isinstance(verify, (ssl.SSLContext, str, bool)):
        raise TypeError("verify= takes True, False, a CA bundle or folder (str or Path) or an "
                        f"ssl.SSLContext, not {type(verify).__name__}")
    if isinstance(cert, os.PathLike):
        cert = os.fspath(cert)
    elif isinstance(cert, (tuple, list)):
        cert = tuple(os.fspath(part) if isinstance(part, os.PathLike) else part for part in cert)
    elif cert is not None and not isinstance(cert, str):
        raise TypeError("cert= takes a certificate file (str or Path) or a (certificate, key"
                        f"[, password]) tuple, not {type(cert).__name__}")
    return verify, cert


def _ssl_context(verify: ssl.SSLContext | str | bool, cert: Any) -> ssl.SSLContext:
    """An SSLContext offering h2 then http/1.1, trusting what ``verify`` says.

    As httpx 0.28 does, ``verify`` may name a CA bundle (PEM) or a directory of CAs, and ``cert``
    a certificate file or a (certificate, key[, password]) tuple. A missing file raises
    FileNotFoundError and one OpenSSL cannot load ssl.SSLError, as in httpx, but naming the file
    and the option (httpx's say only "No such file or directory")."""
    if isinstance(verify, ssl.SSLContext):
        ctx = verify
    elif verify is False:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif isinstance(verify, str):
        _must_exist("verify", verify, "CA bundle")
        folder = os.path.isdir(verify)
        try:
            ctx = ssl.create_default_context(cafile=None if folder else verify,
                                             capath=verify if folder else None)
        except ssl.SSLError as exc:
            raise ssl.SSLError(exc.errno, f"verify={verify!r} is not a CA bundle OpenSSL can "
                               f"load (PEM certificates): {exc}") from exc
        except OSError as exc:
            raise type(exc)(exc.errno, f"verify= cannot read the CA bundle: {exc.strerror}",
                            verify) from exc
    else:
        try:
            import certifi

            ctx = ssl.create_default_context(cafile=certifi.where())
        except ImportError:  # pragma: no cover
            ctx = ssl.create_default_context()
    if cert is not None:
        files = (cert,) if isinstance(cert, str) else tuple(cert)
        for path in files[:2]:
            if path is not None:
                _must_exist("cert", path, "certificate or key file")
        try:
            ctx.load_cert_chain(*files)
        except ssl.SSLError as exc:
            raise ssl.SSLError(exc.errno, f"cert={cert!r}: OpenSSL cannot load the certificate "
                               f"and key (not PEM, or not a matching pair): {exc}"
                               ) from exc
        except OSError as exc:
            raise type(exc)(exc.errno, f"cert= cannot read {files[:2]!r}: {exc.strerror}"
                            ) from exc
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


def _must_exist(option: str, path: str, what: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, f"{option}= names a {what} that does not exist",
                                path)


class AsyncHTTPTransport(httpx.AsyncBaseTransport):
    """An HTTP/2-first transport for ``httpx.AsyncClient``.

    Defaults come from docs/facts.md §3: ``max_idle`` (45 s) is below the shortest common
    load-balancer idle timeout (AWS ALB 60 s, nginx 75 s), so the pool closes a connection
    before a middlebox silently drops it. ``health_check_after`` (5 s): a connection idle that
    long answers a PING (within ``ping_timeout``) before it carries a request. ``ping_interval``
    (10 s): while a response is awaited on a silent connection, PING it; no answer within
    ``ping_timeout`` abandons the connection (a black hole is found in bounded time).
    ``max_age`` (10 min, +-10% jitter) retires connections so load rebalances and request caps
    are met gracefully. ``max_connections_per_origin`` (10) bounds connections when the server's
    stream limit is reached; beyond it requests wait up to the pool timeout.
    ``stream_window``/``connection_window`` (1 MiB / 16 MiB): how much a slow reader may have
    buffered. ``transparent_retries`` (10): how often a request that was provably never
    processed (REFUSED_STREAM, HTTP_1_1_REQUIRED) moves to another connection; streams left
    unprocessed by a GOAWAY may move three times as often (the server is draining, not sick).
    ``trust_refused_stream=False``: treat REFUSED_STREAM as maybe processed (not moved), for
    proxies that send it after the app ran (haproxy 2.6, docs/FINDINGS.md).
    ``trust_goaway`` (``"learn"``): streams above a GOAWAY's last_stream_id move to a new
    connection as never processed (RFC 9113 §6.8) until the origin answers one of them (it ran
    it after all: ``client.goaway_violation``); from then on they count as maybe processed,
    resent only if idempotent or keyed. ``True`` always trusts, ``False`` never does.
    ``flight_recorder`` (32): each connection keeps its last 32 frames both ways (no header
    values, no bodies), and every failure carries them as ``exc.failure.trace``, one line per
    frame in the doctor's trace format; 0 turns it off. The ``h2guard.frames`` logger prints
    every frame at DEBUG (``H2GUARD_FRAME_LOG=1`` turns that on without code changes).
    ``http2_prior_knowledge``: h2c for ``http://`` URLs (otherwise ``http://`` uses HTTP/1.1,
    as browsers do). ``limits`` (an ``httpx.Limits``) sets ``max_connections_per_origin`` from
    ``max_connections`` and ``max_idle`` from ``keepalive_expiry``, as a drop-in.
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | os.PathLike[str] | bool = True,
        cert: Any = None,
        http2_prior_knowledge: bool = False,
        limits: httpx.Limits | None = None,
        max_connections_per_origin: int = 10,
        max_idle: float = 45.0,
        max_age: float = 600.0,
        max_age_jitter: float = 0.1,
        health_check_after: float = 5.0,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        stream_window: int = 1 << 20,
        connection_window: int = 16 << 20,
        transparent_retries: int = 10,
        trust_refused_stream: bool = True,
        trust_goaway: TrustGoAway = "learn",
        flight_recorder: int = 32,
        proxy: str | httpx.URL | None = None,
        uds: str | None = None,
        local_address: str | None = None,
        socket_options: Sequence[tuple[int, int, int | bytes]] | None = None,
        retries: int = 0,
        trust_env: bool = True,
        events: EventLog | None = None,
        seed: int | None = None,
    ) -> None:
        self._dialer = Dialer(proxy=str(proxy) if proxy is not None else None, uds=uds,
                              local_address=local_address,
                              socket_options=tuple(socket_options or ()), retries=retries)
        self._trust_env = trust_env and proxy is None and uds is None
        if limits is not None:  # httpx's own knobs, for a drop-in replacement
            if limits.max_connections is not None:
                max_connections_per_origin = limits.max_connections
            if limits.keepalive_expiry is not None:
                max_idle = limits.keepalive_expiry
        if max_connections_per_origin < 1:
            raise ValueError("max_connections_per_origin must be at least 1")
        if not 65535 <= connection_window <= 2**31 - 1:
            raise ValueError("connection_window must be within 65535..2^31-1")
        if not 1 <= stream_window <= 2**31 - 1:
            raise ValueError("stream_window must be within 1..2^31-1")
        verify, cert = _file_options(verify, cert)
        self._verify: ssl.SSLContext | str | bool = verify
        self._cert = cert
        self._ssl: ssl.SSLContext | None = None
        if isinstance(verify, str) or cert is not None:  # a bad file fails here, as in httpx
            self._ssl = _ssl_context(verify, cert)
        self._prior_knowledge = http2_prior_knowledge
        self._pool_settings = dict(max_connections=max_connections_per_origin,
                                   max_idle=max_idle, max_age=max_age,
                                   max_age_jitter=max_age_jitter,
                                   health_check_after=health_check_after)
        self.goaway_trust = GoAwayTrust(trust_goaway)
        self._conn_settings = ConnectionSettings(stream_window=stream_window,
                                                 connection_window=connection_window,
                                                 ping_interval=ping_interval,
                                                 ping_timeout=ping_timeout,
                                                 goaway_trust=self.goaway_trust,
                                                 flight_recorder=flight_recorder)
        self._retries = transparent_retries
        self._trust_refused = trust_refused_stream
        self.events = events if events is not None else EventLog(maxlen=10_000)
        self._rng = random.Random(seed)
        self._pools: dict[tuple[bytes, bytes, int], OriginPool] = {}
        # the same pools by the URL's own (scheme, host, port or None): the hot path's lookup
        self._by_url: dict[tuple[bytes, bytes, int | None], OriginPool] = {}
        self._http1: dict[str | None, httpx.AsyncHTTPTransport] = {}
        self._closed = False

    # ------------------------------------------------------------------ httpx API

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._closed:
            raise RuntimeError("the transport is closed")
        url = request.url
        scheme = url.raw_scheme
        if scheme == b"http" and not self._prior_knowledge:
            return await self._via_http1(request)
        pool = self._by_url.get((scheme, url.raw_host, url.port)) or self._pool_for(request)
        timeouts: dict[str, float | None] = request.extensions.get("timeout", _NO_TIMEOUTS)
        # RetryTransport sets 0: it makes every retry decision (and budgets them) itself
        limit: int = request.extensions.get("h2guard.transparent_retries", self._retries)
        headers = _h2_headers(request)
        body = _body_of(request)
        replayable = body is None or isinstance(request.stream, httpx.ByteStream)
        attempt = refused = drained = 0
        while True:
            attempt += 1
            conn = pool.ready_connection()
            if conn is None:
                try:
                    conn = await pool.acquire(timeout=timeouts.get("pool"))
                except PoolFailure as exc:
                    if exc.failure.kind == "connect" and attempt <= 2 and limit:
                        await asyncio.sleep(0.05 * attempt)  # one quick second try: nothing sent
                        continue
                    raise attach(_with_attempts(exc.failure, attempt),
                                 request=request) from None
                except httpx.TransportError as exc:  # the connection's own final verdict
                    exc.request = request  # (not_http2: the server answered in HTTP/1.x)
                    raise
                if conn is None:
                    return await self._via_http1(request)
            try:
                st = await conn.exchange(headers, body=body, write_timeout=timeouts.get("write"),
                                         read_timeout=timeouts.get("read"))
            except ConnectionError:  # h2 would not open it (the connection is going away)
                conn._retire("could not open a stream")
                if attempt <= max(limit, 1):
                    continue
                raise attach(Failure("connect", "no", None, None, None, pool.origin,
                                     "no connection would open a stream", attempt),
                             request=request) from None
            if st.failure is None:  # done
                return _response(st, timeouts, attempt)
            failure = st.failure
            if failure.kind == "goaway_unprocessed":
                drained += 1  # a draining server is alive: allow more moves, still bounded
            else:
                refused += 1
            if failure.kind == "http_1_1_required":
                pool.downgrade("RST_STREAM HTTP_1_1_REQUIRED")
            # this loop moves only what was never processed (safe=False); the rest is
            # RetryTransport's to decide, by method and key
            why = why_not_resend(failure, safe=False, body_resendable=replayable,
                                 trust_refused_stream=self._trust_refused)
            if why is None and refused <= limit and drained <= 3 * limit:  # unprocessed: move
                self.events.emit("client.transparent_retry", origin=pool.origin,
                                 reason=failure.kind, attempt=attempt, stream=failure.stream_id)
                if failure.kind == "refused_stream" and refused > 1:
                    # a server refusing again and again is overloaded: back off, with jitter
                    await asyncio.sleep(self._rng.uniform(0, min(0.25, 0.01 * 2 ** refused)))
                continue
            raise attach(_with_attempts(self._final(failure, why, limit), attempt),
                         request=request)  # failed

    def _final(self, failure: Failure, why: str | None, limit: int) -> Failure:
        """The failure the caller sees, saying why it was not moved when that is not plain."""
        if failure.kind == "refused_stream" and not self._trust_refused:
            return dataclasses.replace(failure, processed="maybe", detail=(
                "REFUSED_STREAM, not trusted to mean unprocessed (trust_refused_stream="
                "False: a proxy such as haproxy may send it after the app ran)"))
        if why == "one_shot_body" and failure.processed == "no" and limit:
            return Failure("body_not_replayable", "no", failure.code, failure.stream_id,
                           failure.last_stream_id, failure.origin,
                           f"{failure.explain()} It was not sent again because the request "
                           "body is a one-shot stream: pass bytes (content=...) to make it "
                           "replayable.", trace=failure.trace)
        return failure

    async def aclose(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()
        self._by_url.clear()
        for delegate in self._http1.values():
            await delegate.aclose()
        self._http1.clear()

    # ------------------------------------------------------------------ internals

    def _pool_for(self, request: httpx.Request) -> OriginPool:
        url = request.url
        port = url.port or (443 if url.raw_scheme == b"https" else 80)
        key = (url.raw_scheme, url.raw_host, port)
        pool = self._pools.get(key)
        if pool is None:
            tls = url.raw_scheme == b"https"
            if tls and self._ssl is None:
                self._ssl = _ssl_context(self._verify, self._cert)
            timeouts = request.extensions.get("timeout", {})
            pool = OriginPool(origin_of(url), host=url.host, port=port,
                              ssl_context=self._ssl if tls else None,
                              server_hostname=url.host if tls else None,
                              settings=PoolSettings(connect_timeout=timeouts.get("connect"),
                                                    **self._pool_settings),  # type: ignore[arg-type]
                              conn_settings=self._conn_settings, events=self.events,
                              rng=self._rng, dialer=self._dialer,
                              proxy=self._proxy_for(url))
            self._pools[key] = pool
        self._by_url[(url.raw_scheme, url.raw_host, url.port)] = pool
        return pool

    def _proxy_for(self, url: httpx.URL) -> str | None:
        """The proxy for this origin: ``proxy=``, else (``trust_env``) the environment's."""
        if self._dialer.proxy is not None or not self._trust_env:
            return self._dialer.proxy
        return env_proxy(url.scheme, url.host)

    async def _via_http1(self, request: httpx.Request) -> httpx.Response:
        proxy = self._proxy_for(request.url)
        delegate = self._http1.get(proxy)
        if delegate is None:
            verify: Any = self._verify
            if isinstance(verify, str) or (self._cert is not None and isinstance(verify, bool)):
                verify = _ssl_context(verify, self._cert)  # its own: httpcore sets its ALPN
            # (a caller's SSLContext got the cert at construction)
            d = self._dialer
            delegate = self._http1[proxy] = httpx.AsyncHTTPTransport(
                verify=verify, http1=True, http2=False, proxy=proxy, uds=d.uds,
                local_address=d.local_address, retries=d.retries,
                socket_options=list(d.socket_options) or None)  # type: ignore[arg-type]
        return await delegate.handle_async_request(request)


def origin_of(url: httpx.URL) -> str:
    """``scheme://host:port`` with the default port filled in: how events, metrics and the
    retry budget name an origin."""
    port = url.port or (443 if url.raw_scheme == b"https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


class _ResponseStream(httpx.AsyncByteStream):
    """The response body, read from the stream's buffer; each chunk read opens the window."""

    def __init__(self, st: StreamState, timeouts: dict[str, float | None]) -> None:
        self._st = st
        self._timeout = timeouts.get("read")

    def take_buffered(self) -> list[bytes]:
        """Every chunk already received, at once, its flow-control credit given back: for a
        reader that takes what is there without waiting (the sync transport, per hop)."""
        st = self._st
        chunks = st.chunks
        if not chunks:
            return []
        taken = list(chunks)
        chunks.clear()
        st.conn.consumed(st, sum(map(len, taken)))
        return taken

    async def __aiter__(self) -> AsyncIterator[bytes]:
        st = self._st
        conn = st.conn
        while True:
            if st.chunks:
                chunk = st.chunks.popleft()
                conn.consumed(st, len(chunk))
                yield chunk
                continue
            if st.failure is not None:
                raise attach(_with_attempts(st.failure, 1))
            if st.ended:
                return
            try:
                if self._timeout is None:
                    await st.wait_readable()
                else:
                    async with asyncio.timeout(self._timeout):
                        await st.wait_readable()
            except TimeoutError:
                conn.cancel(st)
                raise attach(Failure("timeout", "yes", None, st.sid, None, conn.origin,
                                     f"the response body stalled for {self._timeout} s")
                             ) from None

    async def aclose(self) -> None:
        st = self._st
        if not st.ended and st.failure is None:
            st.conn.cancel(st)


def _with_attempts(failure: Failure, attempts: int) -> Failure:
    if failure.attempts == attempts:
        return failure
    return Failure(failure.kind, failure.processed, failure.code, failure.stream_id,
                   failure.last_stream_id, failure.origin, failure.detail, attempts,
                   failure.extra, trace=failure.trace)


def _body_of(request: httpx.Request) -> Iterable[bytes] | AsyncIterable[bytes] | None:
    """What to send as the request body: None for none (HEADERS carry END_STREAM), bytes as
    one chunk, anything else as the stream it is."""
    stream = request.stream
    if isinstance(stream, httpx.ByteStream):
        held = getattr(stream, "_stream", None)  # httpx keeps the bytes: look, do not iterate
        if isinstance(held, bytes):
            return (held,) if held else None
        joined = b"".join(stream)
        return (joined,) if joined else None
    if request.headers.get("content-length") == "0":
        return None
    return cast(Iterable[bytes] | AsyncIterable[bytes], stream)


def _response(st: StreamState, timeouts: dict[str, float | None],
              attempt: int) -> httpx.Response:
    """The httpx response for a stream whose response started. A body that already arrived
    whole (the usual small response: HEADERS and DATA in one read) is handed over as bytes,
    with no reader in between; the core gave its flow-control credit back when it ended."""
    fields = st.headers
    extensions = {"http_version": b"HTTP/2", "h2guard_stream_id": st.sid,
                  "h2guard_attempts": attempt}
    if _BUILD_DIRECTLY:
        response = _built(st.status, fields, extensions)
    else:  # pragma: no cover - another httpx: its constructor
        response = _Response(st.status, headers=fields, stream=_NO_BODY, extensions=extensions)
    if st.ended and st.failure is None:
        chunks = st.chunks
        content = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        response.stream = httpx.ByteStream(content)
        for name, _ in fields:
            if name == b"content-encoding":  # httpx's decoders must see it
                break
        else:
            response._h2guard_whole = content
    else:
        response.stream = _ResponseStream(st, timeouts)
    return response


_NO_BODY = httpx.ByteStream(b"")
_new = object.__new__


def _built(status: int, fields: Headers, extensions: dict[str, Any]) -> _Response:
    """What ``_Response(status, headers=fields, stream=..., extensions=extensions)`` makes,
    without httpx's constructors (about half the cost of building a small response): the
    same attributes in the same order, checked against httpx's own at import
    (:func:`_built_matches_httpx`). HTTP/2 field names are lowercase already (RFC 9113
    §8.2.1; the core rejects any other as malformed), so each is its own lower-case key in
    httpx's ``(raw, lower, value)`` list: nothing to normalise again."""
    headers = _new(httpx.Headers)
    headers._list = [(name, name, value) for name, value in fields]
    headers._encoding = None
    response: _Response = _new(_Response)
    response.status_code = status
    response.headers = headers
    response._request = None
    response.next_request = None
    response.extensions = extensions
    response.history = []
    response.is_closed = False
    response.is_stream_consumed = False
    response.default_encoding = "utf-8"
    response.stream = _NO_BODY
    response._num_bytes_downloaded = 0
    return response


class _Response(httpx.Response):
    """An ``httpx.Response`` whose body may have arrived whole with its headers.

    Why: httpx reads every body through two async generators, a decoder and a chunker, which
    cost about as much as everything h2guard does for a small request. A body that is already
    here, and not content-encoded, is simply the body: ``read()`` / ``aread()`` take it at
    once and finish the way httpx's own would (the response consumed and closed, and the
    client's closing wrapper sets ``elapsed``). Anything else, and every streaming read
    (``aiter_bytes``, ``aiter_raw`` ...), is httpx's own code.
    """

    _h2guard_whole: bytes | None = None

    def _take_whole(self, whole: bytes) -> bool:
        """Make the body read, as httpx's reading loop leaves it; False if it cannot be."""
        self._h2guard_whole = None
        if self.is_stream_consumed or self.is_closed or hasattr(self, "_content"):
            return False
        self._content = whole
        self.is_stream_consumed = True
        self._num_bytes_downloaded = len(whole)
        self.is_closed = True  # what close()/aclose() do, minus their error-mapping context:
        return True  # closing a stream of complete bytes raises nothing to map

    def read(self) -> bytes:
        whole = self._h2guard_whole
        if whole is not None:
            stream = self.stream
            if isinstance(stream, httpx.SyncByteStream) and self._take_whole(whole):
                stream.close()  # the client's wrapper sets ``elapsed`` here
                return whole
        return super().read()

    async def aread(self) -> bytes:
        whole = self._h2guard_whole
        if whole is not None:
            stream = self.stream
            if isinstance(stream, httpx.AsyncByteStream) and self._take_whole(whole):
                await stream.aclose()  # the client's wrapper sets ``elapsed`` here
                return whole
        return await super().aread()


def _h2_headers(request: httpx.Request) -> Headers:
    url = request.url
    fields = request.headers
    raw: Any = getattr(fields, "_list", None)  # httpx's (raw name, lower name, value) triples
    if raw is None:  # pragma: no cover - another httpx: the public, slower view
        raw = [(k, k.lower(), v) for k, v in fields.raw]
    # :authority is the Host field when there is one (httpx always sets it), else the URL's
    authority = b"" if raw and raw[0][1] == b"host" and raw[0][2] else url.netloc
    headers: Headers = [(b":method", request.method.encode("latin-1")),
                        (b":scheme", b"https" if url.raw_scheme == b"https" else b"http"),
                        (b":authority", authority), (b":path", url.raw_path)]
    append = headers.append
    for _, name, value in raw:
        if name in _HOP_BY_HOP:
            if name == b"host" and value:
                headers[2] = (b":authority", value)
            continue
        if name == b"te" and value.lower() != b"trailers":
            continue
        append((name, value))
    return headers


def _built_matches_httpx() -> bool:
    """Whether :func:`_built` still makes what httpx's constructors make (the same attributes,
    in the same order, with equal values); if not (another httpx), the constructors run."""
    fields = [(b"content-type", b"text/plain"), (b"x-y", b"1")]
    extensions = {"http_version": b"HTTP/2"}
    try:
        made = _Response(200, headers=fields, stream=_NO_BODY, extensions=extensions)
        ours = _built(200, fields, extensions)
    except Exception:  # pragma: no cover - another httpx
        return False

    def layout(r: httpx.Response) -> list[Any]:
        return [list(vars(r).items()), list(vars(r.headers).items()), r.headers.multi_items()]

    return layout(made) == layout(ours) and made.headers == ours.headers


_BUILD_DIRECTLY = _built_matches_httpx()
