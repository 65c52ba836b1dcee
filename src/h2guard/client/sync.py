"""``HTTPTransport``: the sync twin of :class:`~h2guard.client.transport.AsyncHTTPTransport`
for ``httpx.Client``: the async transport on a private event loop that the calling threads
drive themselves, in turns.

Why no loop thread of its own: a request handed to a loop thread and back costs two thread
switches and, with the GIL, a wait for the other thread's turn each way. One thread making one
request at a time (a script, a Django view, a Celery task) got 546 requests/s from nginx that
way, against 1,850-2,040 for the async transport doing the same; driving the loop in the
calling thread it gets 1,680-1,810. A thread waiting for its response would only sleep anyway:

* A caller that finds nobody driving the loop drives it until its own job is done, serving
  every other thread's jobs meanwhile. A caller that finds a driver queues its job and waits on
  a plain ``threading.Lock`` (no ``concurrent.futures.Future``, no Condition); the driver starts
  queued jobs each time it is about to wait for I/O (:class:`_JobSelector`), and the caller
  wakes it (``call_soon_threadsafe``, one self-pipe write) only when it is asleep in ``select``
  and no wake-up is pending. So the private loop is always asyncio's selector loop, whatever
  event-loop policy the process installed.
* A driver whose job is done hands the loop to the caller of the newest unfinished job (the
  one with the longest wait ahead, so hand-overs are few: about one per ten requests with
  twenty threads), or to nobody when no job is left.
* A caller that cannot drive (its thread runs an event loop already, or its request body is a
  sync iterator that must be read in that thread while the loop goes on) just waits; if nobody
  drives, a helper thread does, until no job has been left for half a second or a caller that
  can drive comes along.
* While no request is in flight the loop does not run (the PING watchdog only runs while a
  response is awaited anyway). What arrived meanwhile (a GOAWAY, a socket the server closed)
  and the timers that fell due (idle expiry) are handled in the first pass of the next
  request's loop, before that request picks a connection (see :class:`_JobSelector`); a
  connection idle longer than ``health_check_after`` still answers a PING before it is used.
  So an idle connection past ``max_idle`` is closed when the next request comes or at
  ``close()``, not on the dot.
* A response whose body arrived whole with its headers (``httpx.ByteStream``: the usual small
  response) is read in the calling thread with no hop at all. Any other body is fetched a job
  at a time, and a job hands over every chunk already buffered, so a large body costs one job
  per batch of DATA, not one per frame. Nothing is read ahead of the caller: flow control still
  lets the server send only what the reader took.
* A request body from a sync iterator is read in the calling thread (which is waiting anyway),
  chunk by chunk as the loop asks for it: not on a worker thread, and never while the event
  loop waits on it.
* Ctrl-C while the main thread drives: the loop stops at the end of its pass and the request
  raises KeyboardInterrupt from there (:class:`_CtrlC`), so no callback is cut short halfway
  through a frame and the connection goes on serving the other requests. A caller that was
  only waiting is interrupted where it waits, as before.
* Tasks run in a fresh ``contextvars.Context``: the driving thread's context variables are its
  own, not its neighbours' requests'.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import ssl
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextvars import Context
from typing import Any, cast

import httpx

from h2guard.client.connection import TrustGoAway
from h2guard.client.transport import AsyncHTTPTransport, _ResponseStream
from h2guard.events import EventLog

__all__ = ["HTTPTransport"]

_CLOSED = "the transport is closed"
_STOP_GRACE = 2.0  # seconds the loop gives its last tasks to finish once close() stops it
_HELPER_LINGER = 0.5
"""Seconds a helper thread goes on driving after its last job: a caller that cannot drive
(a notebook's cell runs inside the kernel's event loop) makes one request after another, and
starting a thread costs about 240 us here, a third of a small request."""


class _Call:
    """One job for the loop, and the calling thread blocked until it is done.

    ``lock`` is held from birth; it is released to the caller when the job is done (``result``
    or ``error`` set), when the loop needs the caller to run ``ask`` (read the request body),
    or when the caller is given the loop to drive (``lead``). Each release is one message the
    caller takes before the next can come: while an ask is outstanding (``asking``, loop side)
    the job's end waits for its answer to release."""

    __slots__ = ("args", "ask", "asking", "error", "finished", "fn", "gone", "lead", "leads",
                 "lock", "result", "task")

    def __init__(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], *,
                 leads: bool = True) -> None:
        self.fn = fn
        self.args = args
        self.result: Any = None
        self.error: BaseException | None = None
        self.ask: Callable[[], None] | None = None
        self.asking = False
        self.finished = False
        # its caller may drive the loop: no event loop of its own runs in that thread
        self.leads = leads and asyncio._get_running_loop() is None
        self.lead = False  # its caller drives the loop now, or has just been given it
        self.gone = False  # its caller stopped waiting (interrupted): nobody takes the result
        self.task: asyncio.Task[None] | None = None
        self.lock = threading.Lock()
        self.lock.acquire()


class _JobSelector(selectors.DefaultSelector):
    """The loop's selector: each time the loop is about to wait for I/O it has the queued jobs
    started, so a caller wakes the loop (a self-pipe write, then a read and a loop pass of its
    own) only when the loop is actually asleep in ``select``. With twenty threads submitting
    one job at a time, nearly every submission found the loop awake but still paid for its own
    wake-up.

    When the loop had not run for a while (no request was in flight, ``_fresh``), the jobs start
    in the pass after this one (``_drain`` is called soon, and creates their tasks), so whatever
    this ``select`` finds (a GOAWAY, a closed socket) and the timers due by now (idle expiry)
    are handled before a new request picks a connection. Otherwise they start in this pass:
    one loop pass (a ``select``, in which a waiting caller may take the GIL) fewer per batch.

    No job is left waiting: ``sleeping`` is set before the queue is looked at, and a caller
    appends before it looks at ``sleeping``, so either the loop sees the job or the caller
    sees the loop asleep and wakes it (both may happen: a spare wake-up, harmless)."""

    def __init__(self, shared: _SharedLoop) -> None:
        super().__init__()
        self._shared = shared
        self.sleeping = False

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self.sleeping = True
        shared = self._shared
        if shared._queue:
            self.sleeping = False
            if shared._fresh:  # the loop had not run for a while: what waited goes first
                shared._fresh = False
                if not shared._scheduled:
                    shared._scheduled = True
                    shared.loop.call_soon(shared._drain)
            else:  # the tasks' first steps run in this loop pass
                shared._drain()
            timeout = 0
        try:
            return super().select(timeout)
        finally:
            self.sleeping = False


class _CtrlC:
    """While the main thread drives the loop, Ctrl-C stops the loop at the end of its pass and
    :meth:`_SharedLoop._drive` raises KeyboardInterrupt from there, giving the request up,
    instead of raising inside whatever callback was running: a frame half-read, an HPACK
    table half-updated or a window half-counted would spoil the connection for every other
    request on it. A second Ctrl-C raises at once (a way out of a callback that hangs). As
    ``asyncio.run`` does, this applies only while SIGINT has Python's default handler."""

    __slots__ = ("_loop", "_previous", "pressed")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous: Any = None
        self.pressed = 0

    def __enter__(self) -> _CtrlC:
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self.pressed += 1
        if self.pressed > 1:
            raise KeyboardInterrupt
        self._loop.stop()
        self._loop.call_soon_threadsafe(_nothing)  # wakes a select: a wait ends at once


def _nothing() -> None:
    pass


class _SharedLoop:
    """A private event loop, driven by whichever calling thread is waiting (see the module
    docstring); a helper thread drives it only for callers that cannot."""

    def __init__(self) -> None:
        self._queue: deque[_Call] = deque()
        self._selector = _JobSelector(self)
        self.loop = asyncio.SelectorEventLoop(self._selector)
        self._mutex = threading.Lock()  # guards who drives (_busy, lead) and _open, _closed
        self._open: dict[_Call, None] = {}  # jobs not finished, oldest first
        self._busy = False  # a thread drives the loop, or has been given it
        self._helping = False  # the driver is the helper thread (see _drive)
        self._linger: asyncio.TimerHandle | None = None  # the helper's wait for more jobs
        self._scheduled = False  # a _drain is due on the loop: no need for another
        self._fresh = False  # the loop starts after a spell of not running: I/O before jobs
        self._closed = False  # no more jobs: set when close() starts shutting the loop down
        self._stopping = False

    # ------------------------------------------------------------------ calling threads

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(*args)`` on the loop; block this thread (or drive the loop) until done."""
        return self.run(_Call(fn, args))

    def run(self, job: _Call) -> Any:
        """Submit ``job``; block this thread (or drive the loop) until it is done."""
        try:
            self.submit(job)
        except BaseException:
            if job in self._open:  # queued, perhaps made the driver, when Ctrl-C came
                self._abandon(job)
            raise
        return self.wait(job)

    def submit(self, job: _Call) -> None:
        with self._mutex:
            if self._closed:
                raise RuntimeError(_CLOSED)
            self._open[job] = None
            self._queue.append(job)  # before the look at ``sleeping``: see _JobSelector
            if not self._busy:  # nobody drives: this caller will (wait() runs the loop)
                self._busy = True
                self._fresh = True
                if job.leads:
                    job.lead = True
                else:
                    self._start_helper()
                return
        if self._helping and job.leads:  # a caller that can drive: the helper makes way
            try:
                self.loop.call_soon_threadsafe(self._make_way)
            except RuntimeError:  # pragma: no cover - closed: impossible while a job is open
                pass
            return
        if self._selector.sleeping and not self._scheduled:  # the driver sleeps: wake it
            self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # pragma: no cover - closed: impossible while a job is open
                pass

    def wait(self, job: _Call) -> Any:
        lock = job.lock
        try:
            while True:
                if job.lead:  # this thread drives (it hands the loop on, whatever happens)
                    self._drive(job)
                    break
                lock.acquire()
                if job.lead:  # given the loop: the job is not done yet
                    continue
                ask = job.ask
                if ask is None:
                    break
                job.ask = None
                ask()  # the loop needs the next request body chunk: read here
        except BaseException:  # KeyboardInterrupt (anywhere in here), or the loop is gone
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

    def _drive(self, job: _Call | None) -> None:
        """Run the loop until ``job`` is done (the helper: until its linger ends with no job
        open, or a caller that can drive has one), then hand the loop on. On this thread only,
        which was given the loop (``_busy`` is ours)."""
        if job is None:  # the helper: no signal reaches it
            try:
                while self._open and self._newest_driver() is None:
                    self.loop.run_forever()
            finally:
                if self._linger is not None:
                    self._linger.cancel()
                    self._linger = None
                self._helping = False  # before _hand_on, which may start the next helper
                self._hand_on()
            return
        loop = self.loop
        with _CtrlC(loop) as ctrl_c:
            try:
                while not job.finished and not ctrl_c.pressed:
                    loop.run_forever()  # stopped by _finish(job), by Ctrl-C, or a spare stop
                if ctrl_c.pressed:
                    raise KeyboardInterrupt
            except BaseException:  # Ctrl-C, or another handler's exception from the loop
                job.gone = True  # before _hand_on, which must not give the loop back to it
                self._give_up(job)
                raise
            finally:
                job.lead = False
                self._hand_on()  # Ctrl-C meanwhile only counts (ctrl_c.pressed): see below
        if ctrl_c.pressed:  # pressed while the loop was being handed on: wait() gives the
            raise KeyboardInterrupt  # job up (_abandon), as for any interrupt while waiting

    def _hand_on(self) -> None:
        """The loop stopped on the thread that drove it: give it to the caller of the newest
        open job (the one with the longest wait ahead, so hand-overs are few), to a helper if
        only callers that cannot drive are waiting, or to nobody."""
        with self._mutex:
            job = self._newest_driver()
            if job is not None:
                job.lead = True
                job.lock.release()
                return
            if self._open:
                self._start_helper()
                return
            self._busy = False
            closing = self._closed
        if closing and not self.loop.is_closed():
            self.loop.close()

    def _start_helper(self) -> None:
        self._helping = True
        threading.Thread(target=self._help, name="h2guard-loop", daemon=True).start()

    def _help(self) -> None:
        self._drive(None)

    def _abandon(self, job: _Call) -> None:
        """On the caller's thread, interrupted while waiting (or driving: then _drive gave the
        job up already, and handed the loop on)."""
        with self._mutex:
            if job.gone:
                return
            job.gone = True
            owns = job.lead  # given the loop just as the interrupt came: act as its driver
            job.lead = False
        if owns:
            self._give_up(job)
            self._hand_on()
            return
        try:
            self.loop.call_soon_threadsafe(self._give_up, job)
        except RuntimeError:  # pragma: no cover - the loop is gone: nothing left to cancel
            pass

    def close(self, aclose: Callable[[], Awaitable[None]] | None) -> None:
        """Run ``aclose``, then end every job still open and close the loop."""
        try:
            self.call(self._shutdown, aclose)
        except Exception:  # closed already
            pass

    # ------------------------------------------------------------------ on the loop

    def _drain(self) -> None:
        self._scheduled = False
        queue = self._queue
        create_task = self.loop.create_task
        run = self._run
        while queue:
            job = queue.popleft()
            if job.gone or self._stopping:
                job.error = RuntimeError(_CLOSED)
                self._finish(job)
                continue
            # a fresh context: the driving thread's own context variables stay its own
            job.task = create_task(run(job), context=Context())

    async def _run(self, job: _Call) -> None:
        try:
            job.result = await job.fn(*job.args)
        except asyncio.CancelledError as exc:
            job.error = RuntimeError(_CLOSED) if self._stopping else exc
        except BaseException as exc:
            job.error = exc
        job.task = None
        if job.gone and isinstance(job.result, httpx.Response):
            try:
                await job.result.aclose()
            except Exception:
                pass
        self._finish(job)

    def _finish(self, job: _Call) -> None:
        if job.finished:  # ended by _shutdown after the grace, and now its task ends too
            return
        job.finished = True
        open_ = self._open
        open_.pop(job, None)
        if job.lead:  # its caller drives: it takes the result once the loop stops
            self.loop.stop()
        elif not job.asking and not job.gone:  # asking: see answered(); gone: nobody waits,
            job.lock.release()  # and its lock may be released already (given the loop)
        if self._helping and not open_:
            if self._stopping:  # close(): no lingering
                self.loop.stop()
            elif self._linger is None:
                self._linger = self.loop.call_later(_HELPER_LINGER, self._end_help)

    def _make_way(self) -> None:
        """On the loop: a caller that can drive has a job open; the helper stops, and hands
        the loop to it (a helper lingering for more jobs must not keep every caller of a
        busy service waiting a thread hop)."""
        if self._helping:
            self.loop.stop()

    def _newest_driver(self) -> _Call | None:
        """The newest open job whose caller can drive the loop and still waits, if any."""
        for job in reversed(self._open):
            if job.leads and not job.gone:
                return job
        return None

    def _end_help(self) -> None:
        """The helper's linger is over: it stops unless jobs came meanwhile (their end
        starts a new linger)."""
        self._linger = None
        if self._helping and not self._open:
            self.loop.stop()

    def _give_up(self, job: _Call) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
        elif job.finished and isinstance(job.result, httpx.Response):
            self.loop.create_task(job.result.aclose())

    async def _shutdown(self, aclose: Callable[[], Awaitable[None]] | None) -> None:
        try:
            if aclose is not None:
                await aclose()
        except Exception:
            pass
        with self._mutex:
            self._closed = True
        self._stopping = True
        self._drain()  # queued, never started: they end with the error
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=_STOP_GRACE)
        for job in list(self._open):  # a task that outlived the grace: its caller waits no more
            if job.task is not None and job.task is not me:
                job.error = RuntimeError(_CLOSED)
                self._finish(job)
        await self.loop.shutdown_asyncgens()
        await self.loop.shutdown_default_executor()

    def ask(self, job: _Call, fn: Callable[[], None]) -> None:
        """Have the caller blocked on ``job`` run ``fn`` on its own thread; ``fn`` ends by
        posting its outcome to the loop, which calls :meth:`answered` first."""
        job.asking = True
        job.ask = fn
        job.lock.release()

    def answered(self, job: _Call) -> bool:
        """On the loop, when the caller's answer to an ask arrives: False if the job ended
        meanwhile (cancelled), whose end is then released to the caller here."""
        job.asking = False
        if job.finished:
            if not job.gone:
                job.lock.release()
            return False
        return True


class HTTPTransport(httpx.BaseTransport):
    """The sync twin of :class:`AsyncHTTPTransport`, for ``httpx.Client``; same options.

    It drives the async transport on a private event loop, run by the calling threads
    themselves (see the module docstring), so the protocol, the pool and every recovery rule
    are the same code in both. The options are the async transport's, keyword-only and typed
    the same (tests/integration/test_transport_dropin.py keeps the two signatures equal), so a
    misspelt one is a TypeError here and a mypy error. Any number of threads may share one
    transport (and so its connections)."""

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
        async def make() -> AsyncHTTPTransport:  # on the private loop, as it will run there
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
        self._shared = _SharedLoop()
        try:
            self._async: AsyncHTTPTransport = self._shared.call(make)
        except BaseException:  # a bad option or CA file: the loop is closed at once
            self._shared.close(None)
            raise

    @property
    def events(self) -> EventLog:
        return self._async.events

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        shared = self._shared
        stream = request.stream
        whole = isinstance(stream, httpx.ByteStream)
        # a body from a sync iterator is read here while the loop goes on: so not the driver
        job = _Call(self._async.handle_async_request, (request,), leads=whole)
        if not whole:
            request.stream = _SyncToAsync(stream, shared, job)
        try:
            response: httpx.Response = shared.run(job)
        finally:
            request.stream = stream  # as the caller gave it: a retry may rewind and resend it
        body = response.stream
        if not isinstance(body, httpx.ByteStream):  # complete bodies are read here as they are
            response.stream = _AsyncToSync(cast(httpx.AsyncByteStream, body), shared)
        return response

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shared.close(self._async.aclose)


class _SyncToAsync(httpx.AsyncByteStream):
    """A sync request body, read in the calling thread (blocked on ``job`` meanwhile) each time
    the loop wants the next chunk, so the event loop never blocks on it."""

    def __init__(self, stream: Any, shared: _SharedLoop, job: _Call) -> None:
        self._iter: Iterator[bytes] = iter(stream)
        self._shared = shared
        self._job = job

    async def __aiter__(self) -> AsyncIterator[bytes]:
        loop = self._shared.loop
        while True:
            waiter: asyncio.Future[bytes | None] = loop.create_future()
            if self._job.finished:  # pragma: no cover - the caller is gone: read it here
                chunk = await loop.run_in_executor(None, next, self._iter, None)
            else:
                self._shared.ask(self._job, self._reader(waiter))
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
                self._shared.loop.call_soon_threadsafe(self._answer, waiter, chunk, error)
            except RuntimeError:  # the loop closed meanwhile
                raise RuntimeError(_CLOSED) from None

        return read

    def _answer(self, waiter: asyncio.Future[bytes | None], chunk: bytes | None,
                error: Exception | None) -> None:
        if self._shared.answered(self._job) and not waiter.done():
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(chunk)


class _AsyncToSync(httpx.SyncByteStream):
    """A response body still arriving, read through the private loop: each job waits for the
    next chunk, and takes every chunk already buffered behind it along."""

    def __init__(self, source: httpx.AsyncByteStream, shared: _SharedLoop) -> None:
        self._source = source
        self._shared = shared
        self._iter: AsyncIterator[bytes] | None = None
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        while not self._done:
            yield from self._shared.call(self._more)

    async def _more(self) -> list[bytes]:
        """On the loop: the next chunk, and any more already buffered."""
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
            self._shared.call(self._close)
        except Exception:
            pass

    async def _close(self) -> None:
        """On the loop: the body was not read to its end (RST_STREAM CANCEL)."""
        reader = getattr(self._iter, "aclose", None)  # the source's async generator, if any
        if reader is not None:
            await reader()
        await self._source.aclose()
