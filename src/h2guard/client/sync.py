"""``HTTPTransport``: the sync twin of :class:`~h2guard.client.transport.AsyncHTTPTransport`
for ``httpx.Client``, running the async transport on a private event-loop thread.

How a calling thread and the loop thread meet, cheaply, as this is on every request's path:

* A job (:class:`_Call`) goes into a deque, which the loop thread empties (a task per job)
  each time it is about to wait for I/O (:class:`_JobSelector`). A caller wakes the loop
  (``call_soon_threadsafe``, one write to its self-pipe) only when it is asleep and no wake-up
  is pending already: a burst of requests from many threads costs at most one wake-up, and
  none while the loop is busy. (So the private loop is always asyncio's selector loop, whatever
  event-loop policy the process installed: it is not the caller's loop anyway.)
* The caller waits on a plain ``threading.Lock`` the loop thread releases, with the result or
  the exception in the job's slots: no ``concurrent.futures.Future``, no Condition.
* A response whose body arrived whole with its headers (``httpx.ByteStream``: the usual small
  response) is read in the calling thread with no hop at all. Any other body is fetched a hop
  at a time, and a hop hands over every chunk already buffered, so a large body costs one hop
  per batch of DATA, not one per frame. Nothing is read ahead of the caller: flow control still
  lets the server send only what the reader took.
* A request body from a sync iterator is read in the calling thread (which is waiting anyway),
  chunk by chunk as the loop asks for it: not on a worker thread, and never while the event
  loop waits on it.
"""

from __future__ import annotations

import asyncio
import selectors
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, cast

import httpx

from h2guard.client.connection import TrustGoAway
from h2guard.client.transport import AsyncHTTPTransport, _ResponseStream
from h2guard.events import EventLog

__all__ = ["HTTPTransport"]

_CLOSED = "the transport is closed"
_STOP_GRACE = 2.0  # seconds the loop gives its last tasks to finish once close() stops it


class _Call:
    """One job for the loop thread, and the calling thread blocked until it is done.

    ``lock`` is held from birth; the loop thread releases it when the job is done (``result``
    or ``error`` set) or when it needs the caller to run ``ask`` (read the request body). Each
    release is one message the caller takes before the next can come: while an ask is
    outstanding (``asking``, loop side) the job's end waits for its answer to release."""

    __slots__ = ("abandoned", "args", "ask", "asking", "error", "finished", "fn", "lock",
                 "result", "task")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        self.fn = fn
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.ask: Callable[[], None] | None = None
        self.asking = False
        self.finished = False
        self.abandoned = False
        self.task: asyncio.Task[None] | None = None
        self.lock = threading.Lock()
        self.lock.acquire()


class _JobSelector(selectors.DefaultSelector):
    """The loop thread's selector: it starts the queued jobs each time the loop is about to
    wait for I/O, so a caller wakes the loop (a self-pipe write, then a read and a loop pass
    of its own) only when the loop is actually asleep in ``select``. With twenty threads
    submitting one job at a time, nearly every submission found the loop awake but still
    paid for its own wake-up.

    No job is left waiting: ``sleeping`` is set before the queue is looked at, and a caller
    appends before it looks at ``sleeping``, so either the loop sees the job or the caller
    sees the loop asleep and wakes it (both may happen: a spare wake-up, harmless)."""

    def __init__(self, thread: _LoopThread) -> None:
        super().__init__()
        self._jobs = thread
        self.sleeping = False

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.sleeping = True
        if self._jobs._queue:
            self.sleeping = False
            self._jobs._drain()  # the tasks' first steps run in this loop pass
            timeout = 0
        try:
            return super().select(timeout)
        finally:
            self.sleeping = False


class _LoopThread:
    """A private event loop on a daemon thread, shared by one sync transport."""

    def __init__(self) -> None:
        self._queue: deque[_Call] = deque()
        self._selector = _JobSelector(self)
        self.loop = asyncio.SelectorEventLoop(self._selector)
        self._scheduled = False  # a wake-up (_drain) is due on the loop: no need for another
        self._closed = False  # set (on the loop thread) before the last drain of the queue
        self._stopping = False
        self._thread = threading.Thread(target=self._main, name="h2guard-loop", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ calling threads

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop; block this thread until it is done."""
        job = _Call(fn, args)
        self.submit(job)
        return self.wait(job)

    def submit(self, job: _Call) -> None:
        if self._closed:
            raise RuntimeError(_CLOSED)
        self._queue.append(job)  # before the look at ``sleeping``: see _JobSelector
        if self._selector.sleeping and not self._scheduled:
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop closed meanwhile: _closed is set, see below
                pass
        if self._closed:  # closed while we queued: the final drain may or may not have it
            try:
                self._queue.remove(job)
            except ValueError:
                return  # it did: it answers the job (with the error)
            raise RuntimeError(_CLOSED)

    def wait(self, job: _Call) -> Any:
        lock = job.lock
        while True:
            try:
                lock.acquire()
            except BaseException:  # KeyboardInterrupt while waiting: give the job up
                self._abandon(job)
                raise
            ask = job.ask
            if ask is None:
                break
            job.ask = None
            try:
                ask()  # the loop needs the next request body chunk: read here
            except BaseException:  # KeyboardInterrupt in the body, or the loop is gone
                self._abandon(job)
                raise
        error = job.error
        if error is not None:
            job.error = None
            try:
                raise error
            finally:
                del error
        return job.result

    def _abandon(self, job: _Call) -> None:
        def abandon() -> None:
            job.abandoned = True
            if job.task is not None and not job.task.done():
                job.task.cancel()
            elif job.finished and isinstance(job.result, httpx.Response):
                self.loop.create_task(job.result.aclose())

        try:
            self.loop.call_soon_threadsafe(abandon)
        except RuntimeError:  # pragma: no cover - the loop is gone: nothing left to cancel
            pass

    def stop(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # already closed
            pass
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=_STOP_GRACE + 3)

    # ------------------------------------------------------------------ the loop thread

    def _drain(self) -> None:
        self._scheduled = False
        queue = self._queue
        create_task = self.loop.create_task
        run = self._run
        while queue:
            job = queue.popleft()
            job.task = create_task(run(job))

    async def _run(self, job: _Call) -> None:
        try:
            job.result = await job.fn(*job.args)
        except asyncio.CancelledError as exc:
            job.error = RuntimeError(_CLOSED) if self._stopping else exc
        except BaseException as exc:
            job.error = exc
        job.finished = True
        job.task = None
        if job.abandoned and isinstance(job.result, httpx.Response):
            try:
                await job.result.aclose()
            except Exception:
                pass
        if not job.asking:  # else the caller is still reading a body chunk: see answered()
            job.lock.release()

    def ask(self, job: _Call, fn: Callable[[], None]) -> None:
        """Have the caller blocked on ``job`` run ``fn`` on its own thread; ``fn`` ends by
        posting its outcome to the loop, which calls :meth:`answered` first."""
        job.asking = True
        job.ask = fn
        job.lock.release()

    def answered(self, job: _Call) -> bool:
        """On the loop thread, when the caller's answer to an ask arrives: False if the job
        ended meanwhile (cancelled), whose end is then released to the caller here."""
        job.asking = False
        if job.finished:
            job.lock.release()
            return False
        return True

    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            try:
                self._stopping = True
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    loop.run_until_complete(asyncio.wait(tasks, timeout=_STOP_GRACE))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                self._closed = True
                while self._queue:  # queued after the loop stopped: never started
                    job = self._queue.popleft()
                    job.error = RuntimeError(_CLOSED)
                    job.finished = True
                    job.lock.release()
                loop.close()


class HTTPTransport(httpx.BaseTransport):
    """The sync twin of :class:`AsyncHTTPTransport`, for ``httpx.Client``; same options.

    It drives the async transport on a private event-loop thread, so the protocol, the pool
    and every recovery rule are the same code in both. The options are the async transport's,
    keyword-only and typed the same (tests/integration/test_transport_dropin.py keeps the two
    signatures equal), so a misspelt one is a TypeError here and a mypy error. Any number of
    threads may share one transport (and so its connections)."""

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

        self._closed = False
        self._thread = _LoopThread()
        try:
            self._async: AsyncHTTPTransport = self._thread.call(make)
        except BaseException:  # a bad option or CA file: no thread left behind
            self._thread.stop()
            raise

    @property
    def events(self) -> EventLog:
        return self._async.events

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        thread = self._thread
        job = _Call(self._async.handle_async_request, (request,))
        stream = request.stream
        if not isinstance(stream, httpx.ByteStream):
            request.stream = _SyncToAsync(stream, thread, job)
        try:
            thread.submit(job)
            response: httpx.Response = thread.wait(job)
        finally:
            request.stream = stream  # as the caller gave it: a retry may rewind and resend it
        body = response.stream
        if not isinstance(body, httpx.ByteStream):  # complete bodies are read here as they are
            response.stream = _AsyncToSync(cast(httpx.AsyncByteStream, body), thread)
        return response

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._thread.call(self._async.aclose)
        except Exception:
            pass
        self._thread.stop()


class _SyncToAsync(httpx.AsyncByteStream):
    """A sync request body, read in the calling thread (blocked on ``job`` meanwhile) each time
    the loop wants the next chunk, so the event loop never blocks on it."""

    def __init__(self, stream: Any, thread: _LoopThread, job: _Call) -> None:
        self._iter: Iterator[bytes] = iter(stream)
        self._thread = thread
        self._job = job

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = self._thread.loop
        while True:
            waiter: asyncio.Future[bytes | None] = loop.create_future()
            if self._job.finished:  # pragma: no cover - the caller is gone: read it here
                chunk = await loop.run_in_executor(None, next, self._iter, None)
            else:
                self._thread.ask(self._job, self._reader(waiter))
                chunk = await waiter
            if chunk is None:
                return
            yield chunk

    def _reader(self, waiter: asyncio.Future[bytes | None]) -> Callable[[], None]:
        def read() -> None:  # on the calling thread
            chunk: bytes | None = None
            error: Exception | None = None
            try:
                chunk = next(self._iter, None)
            except Exception as exc:  # the body's own error: the request fails with it
                error = exc
            try:
                self._thread.loop.call_soon_threadsafe(self._answer, waiter, chunk, error)
            except RuntimeError:  # the loop closed meanwhile
                raise RuntimeError(_CLOSED) from None

        return read

    def _answer(self, waiter: asyncio.Future[bytes | None], chunk: bytes | None,
                error: Exception | None) -> None:
        if self._thread.answered(self._job) and not waiter.done():
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(chunk)


class _AsyncToSync(httpx.SyncByteStream):
    """A response body still arriving, read through the loop thread: each hop waits for the
    next chunk, and takes every chunk already buffered behind it along."""

    def __init__(self, source: httpx.AsyncByteStream, thread: _LoopThread) -> None:
        self._source = source
        self._thread = thread
        self._iter: AsyncIterator[bytes] | None = None
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        while not self._done:
            yield from self._thread.call(self._more)

    async def _more(self) -> list[bytes]:
        """On the loop thread: the next chunk, and any more already buffered."""
        source = self._iter
        if source is None:
            source = self._iter = self._source.__aiter__()
        try:
            chunk = await source.__anext__()
        except StopAsyncIteration:
            self._done = True
            await self._source.aclose()
            return []
        batch = [chunk]
        if isinstance(self._source, _ResponseStream):
            # h2guard's own stream: the DATA already buffered behind this chunk comes along
            batch += self._source.take_buffered()
        return batch

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._thread.call(self._close)
        except Exception:
            pass

    async def _close(self) -> None:
        """On the loop thread: the body was not read to its end (RST_STREAM CANCEL)."""
        reader = getattr(self._iter, "aclose", None)  # the source's async generator, if any
        if reader is not None:
            await reader()
        await self._source.aclose()
