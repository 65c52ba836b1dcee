"""The reverse proxy's rules: which upstream URLs are valid, which headers are hop-by-hop.

With ``upstream=URL`` the chaos server stops answering from its built-in app and puts its fault
engine *in front of* a real service. That is the point of the mode: a fault at ``after_app``
resets the client's stream after the upstream has already done the work, which is how a real
load balancer manufactures duplicate writes, and it can be aimed at the service under test.

Three upstream schemes, because real upstreams speak all three:

``http://host:port/base``    HTTP/1.1 (most application servers behind a load balancer)
``https://host:port/base``   TLS; ALPN offers h2 then http/1.1 (``verify`` takes a CA file, or
                             ``False`` for a self-signed upstream)
``h2c://host:port/base``     cleartext HTTP/2 with prior knowledge (gRPC-style backends)

The proxy is a *transparent, streaming* one (:mod:`h2guard.chaos.upstream` moves the bytes):
bodies flow both ways as they arrive under flow control (a stream holds at most its window in
the proxy, whatever the speed of either side), trailers pass both ways, ``te: trailers`` is
kept, no content-length is made up, and an upstream RST_STREAM or GOAWAY reaches the client as
the same frame with the same code (an upstream reset is not a 502). It never decompresses (the
client must receive the upstream's bytes, ``content-encoding`` and all), never retries (a retry
here would hide exactly the duplicate writes the chaos server exists to expose), never follows
redirects and keeps no cookies. It rewrites only what a proxy must: hop-by-hop headers,
``host`` / ``:authority`` (the upstream's, as nginx does by default) and the
``x-forwarded-*`` / ``via`` trail. Everything else, ``idempotency-key`` and ``x-request-id``
included, passes untouched. A transport failure before the response started becomes a 502 (a
timeout a 504: the upstream may still be working) with a one-line plain-text body that names
the upstream; after it started, a RST_STREAM INTERNAL_ERROR.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__: list[str] = []  # rules for h2guard.chaos.upstream; the public class is Upstream there

_SCHEMES = {"http": "http", "https": "https", "h2c": "http"}
"""Upstream URL scheme -> the scheme httpx dials (h2c is plain TCP with HTTP/2 prior knowledge)."""

_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade",
    b"host", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
})
"""RFC 9110 section 7.6.1: meaningful for one connection only, never forwarded. ``host`` is
here because the upstream gets its own; ``te: trailers`` is re-added for gRPC-style peers."""

# The smallest idle timeout common in front of or behind a proxy is Node.js's 5 s
# keepAliveTimeout: a pooled connection must be retired before the upstream closes it, or the
# proxy itself becomes the source of "connection reset" errors it is meant to inject on purpose.
_KEEPALIVE_EXPIRY = 4.0


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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
