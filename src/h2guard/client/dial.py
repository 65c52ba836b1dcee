"""How a connection reaches its origin: directly, over a Unix socket, or through an HTTP
forward proxy's CONNECT tunnel; with httpx's connect options (``local_address``,
``socket_options``, ``retries``).

A service behind a corporate or egress proxy must tunnel: the proxy sees ``CONNECT host:443``
and then only TLS, so HTTP/2 (ALPN h2) runs end to end inside the tunnel and every protection of
the client (GOAWAY draining, stream limits, PING health checks) works as without the proxy. A
proxy that refuses the tunnel (407, 403, 502...) is a connect failure: nothing reached the
origin, so the request is safe to send again. ``http://`` proxies only (TLS to the proxy
itself is not built; it says so).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Dialer", "ProxyError", "env_proxy"]

_MAX_REPLY = 16 << 10
"""Bytes of a proxy's reply to CONNECT we read at most (a reply head is a few hundred)."""


class ProxyError(ConnectionError):
    """The proxy did not open the tunnel (its status line in the message)."""


@dataclass(frozen=True, slots=True)
class Dialer:
    """Connect options, shared by every connection of a transport."""

    proxy: str | None = None
    uds: str | None = None
    local_address: str | None = None
    socket_options: Sequence[tuple[int, int, int | bytes]] = field(default=())
    retries: int = 0

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError("retries (connect attempts after the first) must be >= 0")
        if self.proxy is not None:
            url = urllib.parse.urlsplit(self.proxy)
            if url.scheme != "http" or not url.hostname:
                raise ValueError(f"proxy={self.proxy!r}: an http:// proxy URL is needed "
                                 "(http://host:port; TLS to the proxy itself is not "
                                 "supported)")
        if self.proxy is not None and self.uds is not None:
            raise ValueError("proxy and uds exclude each other")

    async def dial(self, factory: Callable[[], asyncio.Protocol], host: str, port: int, *,
                   ssl_context: ssl.SSLContext | None, server_hostname: str | None,
                   proxy: str | None = None) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        """Open a transport to ``host:port`` (through ``proxy`` or this dialer's own), with
        up to ``retries`` more attempts after a refused or failed connect (0.5 s backoff,
        doubling, as httpcore does)."""
        attempt = 0
        while True:
            try:
                return await self._dial_once(factory, host, port, ssl_context=ssl_context,
                                             server_hostname=server_hostname,
                                             proxy=proxy or self.proxy)
            except (OSError, ProxyError) as exc:
                if isinstance(exc, ssl.SSLError) or attempt >= self.retries:
                    raise
                await asyncio.sleep(0.5 * 2 ** attempt)
                attempt += 1

    def _sock(self, host: str) -> socket.socket | None:
        """A socket carrying ``local_address`` and ``socket_options``, or None for asyncio's
        own (which also tries every address of a name)."""
        if not self.local_address and not self.socket_options:
            return None
        family = socket.AF_INET6 if self.local_address and ":" in self.local_address \
            else socket.AF_INET
        if not self.local_address and ":" in host:
            family = socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            for level, name, value in self.socket_options:
                sock.setsockopt(level, name, value)
            if self.local_address:
                sock.bind((self.local_address, 0))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def _tcp(self, factory: Callable[[], asyncio.Protocol], host: str, port: int,
                   ssl_context: ssl.SSLContext | None,
                   server_hostname: str | None) -> tuple[asyncio.BaseTransport,
                                                         asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        sock = self._sock(host)
        if sock is not None:
            try:
                await loop.sock_connect(sock, (host, port))
            except BaseException:
                sock.close()
                raise
            return await loop.create_connection(factory, sock=sock, ssl=ssl_context,
                                                server_hostname=server_hostname)
        return await loop.create_connection(factory, host, port, ssl=ssl_context,
                                            server_hostname=server_hostname)

    async def _dial_once(self, factory: Callable[[], asyncio.Protocol], host: str, port: int,
                         *, ssl_context: ssl.SSLContext | None, server_hostname: str | None,
                         proxy: str | None) -> tuple[asyncio.BaseTransport, asyncio.Protocol]:
        loop = asyncio.get_running_loop()
        if self.uds is not None:
            return await loop.create_unix_connection(
                factory, self.uds, ssl=ssl_context,
                server_hostname=server_hostname if ssl_context else None)
        if proxy is None:
            return await self._tcp(factory, host, port, ssl_context, server_hostname)
        url = urllib.parse.urlsplit(proxy)
        tunnel = _Tunnel()
        raw, _ = await self._tcp(lambda: tunnel, url.hostname or "", url.port or 80, None,
                                 None)
        try:
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            head = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
            if url.username is not None:
                user = urllib.parse.unquote(url.username)
                password = urllib.parse.unquote(url.password or "")
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                head.append(f"Proxy-Authorization: Basic {token}")
            raw.write(("\r\n".join(head) + "\r\n\r\n").encode())  # type: ignore[attr-defined]
            status, rest = await tunnel.reply
            if not 200 <= status < 300:
                raise ProxyError(f"the proxy {url.hostname}:{url.port or 80} refused "
                                 f"CONNECT {target}: {tunnel.status_line}")
            protocol = factory()
            transport: asyncio.BaseTransport
            if ssl_context is not None:
                tls = await loop.start_tls(raw, protocol, ssl_context,  # type: ignore[arg-type]
                                           server_hostname=server_hostname)
                if tls is None:  # pragma: no cover - only for a closing transport
                    raise ConnectionError("the tunnel closed during the TLS handshake")
                transport = tls
            else:
                raw.set_protocol(protocol)
                transport = raw
            protocol.connection_made(transport)
            if rest and ssl_context is None:  # (before TLS a proxy sends nothing more)
                protocol.data_received(rest)
            return transport, protocol
        except BaseException:
            raw.close()
            raise


class _Tunnel(asyncio.Protocol):
    """Reads the proxy's reply to CONNECT: a status line and headers, nothing more."""

    def __init__(self) -> None:
        self.reply: asyncio.Future[tuple[int, bytes]] = \
            asyncio.get_running_loop().create_future()
        self.buf = b""
        self.status_line = ""

    def data_received(self, data: bytes) -> None:
        if self.reply.done():
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > _MAX_REPLY:
                self.reply.set_exception(ProxyError("the proxy's reply to CONNECT has no end"))
            return
        first = self.buf.split(b"\r\n", 1)[0].decode("latin-1")
        self.status_line = first
        parts = first.split(" ", 2)
        try:
            status = int(parts[1]) if first.startswith("HTTP/1.") else -1
        except (IndexError, ValueError):
            status = -1
        if status < 0:
            self.reply.set_exception(ProxyError(f"the proxy answered CONNECT with {first!r}"))
            return
        self.reply.set_result((status, self.buf[end + 4:]))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(ProxyError("the proxy closed the connection before "
                                                "answering CONNECT"))


def env_proxy(scheme: str, host: str) -> str | None:
    """The proxy the environment names for ``scheme://host`` (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``ALL_PROXY``, with ``NO_PROXY`` honoured), as httpx does with ``trust_env=True``."""
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy:
        return None
    bypass: Callable[[str, dict[str, str]], bool] = \
        urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed
    if bypass(host, proxies):
        return None
    if "://" not in proxy:
        proxy = "http://" + proxy
    return proxy
