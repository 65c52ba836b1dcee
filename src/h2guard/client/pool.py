"""The per-origin HTTP/2 connection pool: which connection a request's stream goes on.

Rules, each from a failure seen in production (docs/facts.md §3, §4):

* A stream opens only on a connection that has seen the server's SETTINGS, has not received
  GOAWAY, and is below the server's MAX_CONCURRENT_STREAMS (which may drop mid-connection).
  Beyond that, requests wait for a slot (bounded by the pool timeout) or a new connection opens,
  up to ``max_connections``. Only one connection is being opened per origin at a time, so a burst
  of requests does not become a burst of handshakes.
* A connection idle longer than ``max_idle`` is closed before a middlebox silently drops it;
  one older than its jittered ``max_age`` is retired (its streams finish); one idle longer than
  ``health_check_after`` must answer a PING before a request is written into it, so a
  black-holed connection (AWS NLB) is found before, not after, the write.
* When ALPN does not give h2 the origin is marked HTTP/1.1 (the transport then delegates).
"""

from __future__ import annotations

import asyncio
import random
import ssl

from h2guard.client.connection import Connection, ConnectionSettings
from h2guard.client.dial import Dialer
from h2guard.errors import Failure
from h2guard.events import EventLog

__all__ = ["OriginPool", "PoolFailure", "PoolSettings"]


class PoolFailure(Exception):
    """Raised by :meth:`OriginPool.acquire` with the Failure to report."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


class PoolSettings:
    """Pool knobs (documented on the transport, which owns the defaults)."""

    __slots__ = ("connect_timeout", "health_check_after", "max_age", "max_age_jitter",
                 "max_connections", "max_idle")

    def __init__(self, *, max_connections: int, max_idle: float, max_age: float,
                 max_age_jitter: float, health_check_after: float,
                 connect_timeout: float | None) -> None:
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.max_age = max_age
        self.max_age_jitter = max_age_jitter
        self.health_check_after = health_check_after
        self.connect_timeout = connect_timeout


class OriginPool:
    """Connections to one origin (scheme, host, port)."""

    def __init__(self, origin: str, *, host: str, port: int, ssl_context: ssl.SSLContext | None,
                 server_hostname: str | None, settings: PoolSettings,
                 conn_settings: ConnectionSettings, events: EventLog | None,
                 rng: random.Random, dialer: Dialer | None = None,
                 proxy: str | None = None) -> None:
        self.origin = origin
        self.dialer = dialer
        self.proxy = proxy
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.settings = settings
        self.conn_settings = conn_settings
        self.events = events
        self.rng = rng
        self.conns: list[Connection] = []
        self.opening = 0
        self.http1 = False
        self._changed = asyncio.Event()
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False

    # ------------------------------------------------------------------ acquiring

    def ready_connection(self) -> Connection | None:
        """A connection usable right now without waiting or a health check (the hot path)."""
        if self.http1 or self.closed:
            return None
        now = asyncio.get_running_loop().time()
        for conn in self.conns:
            if (conn.usable and now < conn.expires_at and (
                    conn.streams or now - conn.last_active < self.settings.health_check_after)):
                return conn
        return None

    async def acquire(self, *, timeout: float | None) -> Connection | None:
        """A connection with a free stream slot (None: use HTTP/1.1 for this origin)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self.http1:
                return None
            if self.closed:
                raise PoolFailure(Failure("connect", "no", origin=self.origin,
                                          detail="the transport is closed"))
            now = loop.time()
            conn = self._pick(now)
            if conn is not None:
                if not conn.streams and now - conn.last_active >= \
                        self.settings.health_check_after:
                    if not await self._healthy(conn):
                        continue
                    if not conn.usable:
                        continue
                return conn
            if self.opening == 0 and self._live() < self.settings.max_connections:
                await self._open()
                continue
            remaining = None if deadline is None else deadline - now
            if remaining is not None and remaining <= 0:
                raise PoolFailure(self._pool_timeout(timeout))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                raise PoolFailure(self._pool_timeout(timeout)) from None

    def _pick(self, now: float) -> Connection | None:
        best: Connection | None = None
        for conn in list(self.conns):
            if not conn.tidy(now, max_idle=self.settings.max_idle):
                if conn.closed:
                    self.conns.remove(conn)
                continue
            if best is None or len(conn.streams) < len(best.streams):
                best = conn
        return best

    def _live(self) -> int:
        return sum(1 for c in self.conns if not c.closed and not c.draining)

    async def _open(self) -> None:
        self.opening += 1
        try:
            result = await Connection.open(
                host=self.host, port=self.port, ssl_context=self.ssl_context,
                origin=self.origin, settings=self.conn_settings, events=self.events,
                on_change=self._on_change, timeout=self.settings.connect_timeout,
                server_hostname=self.server_hostname, dialer=self.dialer, proxy=self.proxy)
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise PoolFailure(Failure("connect", "no", origin=self.origin,
                                      detail=detail)) from exc
        finally:
            self.opening -= 1
            self._changed.set()
        if isinstance(result, str):
            self.http1 = True
            self._emit("client.downgrade", reason=f"ALPN chose {result}")
            return
        jitter = 1.0 + self.settings.max_age_jitter * (2 * self.rng.random() - 1)
        result.expire_after(self.settings.max_age * jitter)
        self.conns.append(result)
        self._emit("client.connection_opened", connections=len(self.conns))
        self._arm_sweeper()

    async def _healthy(self, conn: Connection) -> bool:
        """PING a connection that sat idle before trusting it with a request."""
        self._emit("client.health_check", idle=round(
            asyncio.get_running_loop().time() - conn.last_active, 3))
        try:
            await conn.ping(self.conn_settings.ping_timeout)
        except (TimeoutError, ConnectionError):
            conn.abandon(f"no PING answer within {self.conn_settings.ping_timeout:g} s after "
                         "sitting idle (a middlebox dropped it?)")
            return False
        conn.last_active = asyncio.get_running_loop().time()
        return True

    def _pool_timeout(self, timeout: float | None) -> Failure:
        return Failure("pool_timeout", "no", origin=self.origin,
                       detail=f"no stream slot within {timeout} s "
                              f"({self._live()} connection(s), all at the server's limit)")

    # ------------------------------------------------------------------ housekeeping

    def _on_change(self, conn: Connection) -> None:
        if conn.closed and conn in self.conns:
            self.conns.remove(conn)
        self._changed.set()

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and self.settings.max_idle > 0:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(max(self.settings.max_idle / 2, 0.05), self._sweep)

    def _sweep(self) -> None:
        """Close idle connections even when no request comes to notice them."""
        self._sweeper = None
        if self.closed:
            return
        self._pick(asyncio.get_running_loop().time())
        if self.conns:
            self._arm_sweeper()

    def downgrade(self, reason: str) -> None:
        """Use HTTP/1.1 for this origin from now on (HTTP_1_1_REQUIRED)."""
        if not self.http1:
            self.http1 = True
            self._emit("client.downgrade", reason=reason)
            self._changed.set()

    async def aclose(self) -> None:
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.conns):
            conn.close()
        self.conns.clear()
        self._changed.set()

    def _emit(self, name: str, **data: object) -> None:
        if self.events is not None:
            self.events.emit(name, origin=self.origin, **data)

