"""``HTTPTransport``: the sync twin of :class:`~h2guard.client.transport.AsyncHTTPTransport`
for ``httpx.Client``, running the async transport on a private event-loop thread."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx

from h2guard.client.connection import TrustGoAway
from h2guard.client.transport import AsyncHTTPTransport
from h2guard.events import EventLog

__all__ = ["HTTPTransport"]

class _LoopThread:
    """A private event loop on a daemon thread, shared by one sync transport."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="h2guard-loop",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


class HTTPTransport(httpx.BaseTransport):
    """The sync twin of :class:`AsyncHTTPTransport`, for ``httpx.Client``; same options.

    It drives the async transport on a private event-loop thread, so the protocol, the pool
    and every recovery rule are the same code in both. The options are the async transport's,
    keyword-only and typed the same (tests/integration/test_transport_dropin.py keeps the two
    signatures equal), so a misspelt one is a TypeError here and a mypy error."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
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
        async def make() -> AsyncHTTPTransport:  # on the loop thread, as it will run there
            return AsyncHTTPTransport(
                verify=verify, cert=cert, http2_prior_knowledge=http2_prior_knowledge,
                limits=limits, max_connections_per_origin=max_connections_per_origin,
                max_idle=max_idle, max_age=max_age, max_age_jitter=max_age_jitter,
                health_check_after=health_check_after, ping_interval=ping_interval,
                ping_timeout=ping_timeout, stream_window=stream_window,
                connection_window=connection_window, transparent_retries=transparent_retries,
                trust_refused_stream=trust_refused_stream, trust_goaway=trust_goaway,
                flight_recorder=flight_recorder, proxy=proxy, uds=uds,
                local_address=local_address, socket_options=socket_options, retries=retries,
                trust_env=trust_env, events=events, seed=seed)

        self._thread = _LoopThread()
        try:
            self._async: AsyncHTTPTransport = self._thread.run(make())
        except BaseException:  # a bad option or CA file: no thread left behind
            self._thread.stop()
            raise

    @property
    def events(self) -> EventLog:
        return self._async.events

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        stream = request.stream
        if not isinstance(stream, httpx.ByteStream):
            request.stream = _SyncToAsync(stream, self._thread.loop)
        try:
            response = self._thread.run(self._async.handle_async_request(request))
        finally:
            request.stream = stream  # as the caller gave it: a retry may rewind and resend it
        return httpx.Response(response.status_code, headers=response.headers,
                              stream=_AsyncToSync(response, self._thread),
                              extensions=response.extensions)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._thread.run(self._async.aclose())
        self._thread.stop()


class _SyncToAsync(httpx.AsyncByteStream):
    """A sync request body read on a worker thread, so the event loop never blocks on it."""

    def __init__(self, stream: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._iter = iter(stream)
        self._loop = loop

    async def __aiter__(self) -> AsyncIterator[bytes]:
        sentinel = object()
        while True:
            chunk = await self._loop.run_in_executor(None, next, self._iter, sentinel)
            if chunk is sentinel:
                return
            yield chunk  # type: ignore[misc]


class _AsyncToSync(httpx.SyncByteStream):
    def __init__(self, response: httpx.Response, thread: _LoopThread) -> None:
        self._response = response
        self._thread = thread

    def __iter__(self) -> Iterator[bytes]:
        agen = self._response.aiter_raw().__aiter__()
        while True:
            try:
                yield self._thread.run(agen.__anext__())
            except StopAsyncIteration:
                return

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._thread.run(self._response.aclose())
