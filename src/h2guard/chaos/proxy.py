"""The chaos server's reverse-proxy mode: forward each request to a real upstream.

With ``upstream=URL`` the chaos server stops answering from its built-in app and puts its fault
engine *in front of* a real service. That is the point of the mode: a fault at ``after_app``
resets the client's stream after the upstream has already done the work, which is how a real
load balancer manufactures duplicate writes, and it can be aimed at the service under test.

Three upstream schemes, because real upstreams speak all three:

``http://host:port/base``    HTTP/1.1 (most application servers behind a load balancer)
``https://host:port/base``   TLS; ALPN offers h2 then http/1.1 (``verify`` takes a CA file, or
                             ``False`` for a self-signed upstream)
``h2c://host:port/base``     cleartext HTTP/2 with prior knowledge (gRPC-style backends)

The proxy is deliberately a *transparent* one. It buffers whole bodies (the server's step
machine needs a complete :class:`~h2guard.chaos.app.Response` before the ``after_app`` moment),
it never decompresses (the client must receive the upstream's bytes, ``content-encoding`` and
all, or a test of the client's decoding would be testing the proxy), it never retries (a retry
here would hide exactly the duplicate writes the chaos server exists to expose), it never
follows redirects and it keeps no cookies. It rewrites only what a proxy must: hop-by-hop
headers, ``host`` (the upstream's, as nginx does by default) and the ``x-forwarded-*`` / ``via``
trail. Everything else, ``idempotency-key`` and ``x-request-id`` included, passes untouched.

Transport failures become responses here rather than exceptions: 504 for a timeout (the
upstream may still be working: a client must treat it as "maybe processed") and 502 for
anything else, each with a one-line plain-text body that names the upstream.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import ssl
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx

from h2guard.chaos.app import Request, Response

if TYPE_CHECKING:
    from h2guard.chaos.server import ServerConfig

__all__ = ["DEFAULT_MAX_RESPONSE_BODY", "Upstream"]

DEFAULT_MAX_RESPONSE_BODY = 256 * 1024 * 1024
"""Response bodies are buffered whole; above this the proxy answers 502 instead of swapping."""

_SCHEMES = {"http": "http", "https": "https", "h2c": "http"}
"""Upstream URL scheme -> the scheme httpx dials (h2c is plain TCP with HTTP/2 prior knowledge)."""

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"host", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
})
"""RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded. ``host`` is
here because the upstream gets its own; ``te: trailers`` is re-added for gRPC-style peers."""

_SET_BY_PROXY = frozenset({b"content-length", b"x-forwarded-proto", b"x-forwarded-host",
                           b"expect"})
"""Request headers the proxy recomputes rather than copies. ``expect: 100-continue`` is dropped
because the whole body is already here: waiting for a 100 from the upstream would only add a
round trip."""

_NO_BODY_STATUSES = frozenset({204, 304})

# The smallest idle timeout common in front of or behind a proxy is Node.js's 5 s
# keepAliveTimeout: a pooled connection must be retired before the upstream closes it, or the
# proxy itself becomes the source of "connection reset" errors it is meant to inject on purpose.
_KEEPALIVE_EXPIRY = 4.0


class Upstream:
    """Forwards complete requests to one upstream origin and returns complete responses.

    ``verify`` (https:// only) is ``True`` (certifi trust), ``False`` (accept any certificate: a
    self-signed upstream in a test) or the path of a CA bundle (the chaos server's own
    ``ca_file``, say). ``connect_timeout`` and ``read_timeout`` are seconds; the read timeout
    applies to each read, so a slow but streaming upstream is not cut off. Pool limits are sized
    for a proxy: many concurrent streams from one client must not each open a connection, and
    idle connections are capped so a burst does not leave hundreds of sockets behind.
    """

    def __init__(
        self,
        url: str,
        *,
        verify: bool | str = True,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
        max_response_body: int = DEFAULT_MAX_RESPONSE_BODY,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
        forwarded_proto: str | None = None,
    ) -> None:
        scheme, origin, base_path = _parse_upstream(url)
        if connect_timeout <= 0 or read_timeout <= 0:
            raise ValueError("upstream timeouts must be positive numbers of seconds")
        if max_response_body < 0:
            raise ValueError("max_response_body must be 0 or more bytes")
        self.url = url
        self.scheme = scheme
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_response_body = max_response_body
        self.forwarded_proto = forwarded_proto
        self._origin = origin
        self._base_path = base_path
        self._client = httpx.AsyncClient(
            http1=scheme != "h2c",
            http2=scheme != "http",
            verify=_ssl_verify(verify) if scheme == "https" else True,
            timeout=httpx.Timeout(self.read_timeout, connect=self.connect_timeout),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_keepalive_connections,
                                keepalive_expiry=_KEEPALIVE_EXPIRY),
            # A proxy must not act on its environment or on responses: no HTTP(S)_PROXY from
            # the environment, no redirects, and a cookie jar that refuses every cookie (httpx
            # would otherwise keep every Set-Cookie, mixing all clients' sessions, for good).
            trust_env=False,
            follow_redirects=False,
            cookies=http.cookiejar.CookieJar(
                policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[])),
        )

    @classmethod
    def from_config(cls, config: ServerConfig) -> Upstream:
        """The upstream of a chaos server's config.

        ``config.extra`` may hold ``upstream_verify`` (bool or CA path),
        ``upstream_connect_timeout``, ``upstream_read_timeout`` and
        ``upstream_max_response_body``: options that only the proxy mode needs, so they live
        there rather than as fields every chaos server carries.
        """
        if config.upstream is None:
            raise ValueError("the server config has no upstream URL")
        options = _options_from_extra(config.extra)
        return cls(config.upstream, forwarded_proto="http" if config.h2c else "https",
                   **options)

    def __repr__(self) -> str:
        return f"Upstream({self.url!r})"

    async def forward(self, req: Request, *, client: str | None = None) -> Response:
        """Send ``req`` upstream and return the whole response.

        ``client`` is the downstream peer's IP address, appended to ``x-forwarded-for``.
        Timeouts become 504 and other transport failures 502; an exception escaping from here
        is a bug (the server turns it into a 502 as a last resort).
        """
        resp = await self._exchange(req, client)
        if req.method == "HEAD" and resp.body:
            # Our own 400/502/504 texts: a HEAD answer carries the headers, never the body
            # (the chaos server sends whatever body a Response holds).
            resp.body = b""
        return resp

    async def close(self) -> None:
        """Close pooled upstream connections (the server calls this when it stops)."""
        await self._client.aclose()

    async def _exchange(self, req: Request, client: str | None) -> Response:
        try:
            target = self._target(req.path)
        except ValueError as exc:
            return _plain(400, f"h2guard chaos proxy: {exc}")
        headers = self._request_headers(req, client)
        # httpx.Request, not client.build_request(): the latter merges the client's default
        # headers, and an accept-encoding the client never sent would get it a compressed body.
        request = httpx.Request(req.method, self._origin.copy_with(raw_path=target),
                                headers=headers, content=req.body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            return self._timeout(exc)
        except httpx.TransportError as exc:
            return self._bad_gateway(f"{type(exc).__name__}: {_one_line(exc)}")
        try:
            return await self._read(req, response)
        except httpx.TimeoutException as exc:
            return self._timeout(exc)
        except httpx.TransportError as exc:
            return self._bad_gateway(
                f"response body cut short: {type(exc).__name__}: {_one_line(exc)}")
        finally:
            with contextlib.suppress(httpx.TransportError):
                await response.aclose()

    # ---------------------------------------------------------------- request

    def _target(self, path: str) -> bytes:
        """The upstream request target: base path + the client's path and query, raw."""
        if not path.startswith("/"):
            if path.startswith(("http://", "https://")):  # HTTP/1.1 absolute-form
                parts = urlsplit(path)
                path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            elif path == "*":  # OPTIONS *: the closest an origin-form request gets
                path = "/"
            else:
                raise ValueError(f"request target {path[:100]!r} is not a path")
        if not path.isascii():
            # The server decoded the target as latin-1 (one char per byte): percent-encode
            # those bytes rather than fail; a conforming client never sends them raw.
            path = "".join(c if ord(c) < 128 else f"%{ord(c):02X}" for c in path)
        return (self._base_path + path).encode("ascii")

    def _request_headers(self, req: Request, client: str | None) -> list[tuple[bytes, bytes]]:
        drop = set(_HOP_BY_HOP)
        for name, value in req.headers:
            if name == b"connection":  # "Connection: foo" makes foo hop-by-hop too
                drop.update(t.strip().lower() for t in value.split(b",") if t.strip())
        authority = host = scheme = None
        forwarded_for: list[bytes] = []
        via: list[bytes] = []
        cookies: list[bytes] = []
        trailers = False
        out: list[tuple[bytes, bytes]] = []
        for name, value in req.headers:
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
            elif name == b"cookie":
                # HTTP/2 may split cookies over several fields; HTTP/1.1 wants one (RFC 9113
                # section 8.2.3), and joining is correct for an HTTP/2 upstream as well.
                cookies.append(value)
            else:
                out.append((name, value))
        if cookies:
            out.append((b"cookie", b"; ".join(cookies)))
        if trailers:
            out.append((b"te", b"trailers"))
        if req.body or req.method in ("POST", "PUT", "PATCH") or any(
                name == b"content-length" for name, _ in req.headers):
            out.append((b"content-length", str(len(req.body)).encode()))
        if client:
            forwarded_for.append(client.encode("latin-1"))
        if forwarded_for:
            out.append((b"x-forwarded-for", b", ".join(forwarded_for)))
        proto = scheme or (self.forwarded_proto.encode() if self.forwarded_proto else b"http")
        out.append((b"x-forwarded-proto", proto))
        original_host = authority or host
        if original_host:
            out.append((b"x-forwarded-host", original_host))
        via.append(f"{req.http_version} h2guard-chaos".encode())
        out.append((b"via", b", ".join(via)))
        return out

    # ---------------------------------------------------------------- response

    async def _read(self, req: Request, response: httpx.Response) -> Response:
        """Buffer the raw (still encoded) body, bounded, and rebuild the header list."""
        drop = set(_HOP_BY_HOP)
        for tokens in response.headers.get_list("connection"):
            drop.update(t.strip().lower().encode("latin-1") for t in tokens.split(",")
                        if t.strip())
        headers: list[tuple[bytes, bytes]] = []
        upstream_length: bytes | None = None
        for raw_name, value in response.headers.raw:
            name = raw_name.lower()
            if name == b"content-length":
                upstream_length = value
            elif name not in drop and not name.startswith(b"proxy-"):
                headers.append((name, value))
        status = response.status_code
        if req.method == "HEAD" or status in _NO_BODY_STATUSES or status < 200:
            # No body by definition: the upstream's content-length describes the body a GET
            # would have had, and a client may rely on it (a 204 must not carry one).
            if upstream_length is not None and status != 204 and status >= 200:
                headers.append((b"content-length", upstream_length))
            return Response(status, headers, b"")
        cap = self.max_response_body
        if upstream_length is not None and upstream_length.isdigit() \
                and int(upstream_length) > cap:
            return self._too_large(int(upstream_length))
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_raw():
            size += len(chunk)
            if size > cap:
                return self._too_large(None)
            chunks.append(chunk)
        body = b"".join(chunks)
        headers.append((b"content-length", str(len(body)).encode()))
        return Response(status, headers, body)

    def _timeout(self, exc: httpx.TimeoutException) -> Response:
        if isinstance(exc, httpx.ConnectTimeout):
            what = f"no connection within {self.connect_timeout:g} s"
        elif isinstance(exc, httpx.ReadTimeout):
            what = f"no response data within {self.read_timeout:g} s"
        elif isinstance(exc, httpx.WriteTimeout):
            what = f"could not send the request within {self.read_timeout:g} s"
        else:  # PoolTimeout: every pooled connection busy for the whole wait
            what = "no free upstream connection (pool exhausted)"
        return _plain(504, f"h2guard chaos proxy: upstream {self.url} timed out: {what}")

    def _bad_gateway(self, why: str) -> Response:
        return _plain(502, f"h2guard chaos proxy: upstream {self.url} failed: {why}")

    def _too_large(self, size: int | None) -> Response:
        what = f"{size} bytes" if size is not None else "the response body"
        return self._bad_gateway(f"{what} exceeds the proxy's buffer limit of "
                                 f"{self.max_response_body} bytes (max_response_body)")


def _parse_upstream(url: str) -> tuple[str, httpx.URL, str]:
    """Validate an upstream URL: (scheme, origin URL httpx dials, base path without '/')."""
    if not url:
        raise ValueError("upstream URL is empty: use http://, https:// or h2c://host:port")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError(f"upstream URL {url!r} contains whitespace or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        given = f"{parts.scheme}://" if scheme else "missing"
        raise ValueError(f"upstream URL {url!r}: the scheme must be http://, https:// or "
                         f"h2c:// (cleartext HTTP/2), not {given}")
    if not parts.hostname:
        raise ValueError(f"upstream URL {url!r} has no host")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ValueError(f"upstream URL {url!r} has an invalid port") from None
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"upstream URL {url!r} must not contain credentials")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"upstream URL {url!r} must not have a query or fragment: only a base "
                         "path is prefixed to each request")
    try:
        origin = httpx.URL(f"{_SCHEMES[scheme]}://{parts.netloc}")
    except httpx.InvalidURL as exc:
        raise ValueError(f"upstream URL {url!r} is invalid: {exc}") from None
    return scheme, origin, parts.path.rstrip("/")


def _ssl_verify(verify: bool | str) -> ssl.SSLContext | bool:
    """httpx 0.28 deprecates ``verify=<path>``: turn a CA path into a context here, and fail at
    start-up (not on the first request) when the file is missing or not a CA bundle."""
    if isinstance(verify, bool):
        return verify
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"upstream CA file {verify!r} cannot be loaded: "
                             f"{_one_line(exc)}") from None
    raise ValueError(f"upstream verify must be True, False or a CA file path, not {verify!r}")


def _options_from_extra(extra: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if "upstream_verify" in extra:
        verify = extra["upstream_verify"]
        if not isinstance(verify, (bool, str)):
            raise ValueError("upstream_verify must be True, False or a CA file path")
        options["verify"] = verify
    for key, name in (("upstream_connect_timeout", "connect_timeout"),
                      ("upstream_read_timeout", "read_timeout")):
        if key in extra:
            value = extra[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{key} must be a number of seconds")
            options[name] = float(value)
    if "upstream_max_response_body" in extra:
        value = extra["upstream_max_response_body"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("upstream_max_response_body must be a number of bytes")
        options["max_response_body"] = value
    return options


def _plain(status: int, message: str) -> Response:
    body = (message + "\n").encode()
    return Response(status, [(b"content-type", b"text/plain; charset=utf-8"),
                             (b"content-length", str(len(body)).encode())], body)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
