"""The sync ``h2guard.HTTPTransport`` (``httpx.Client``) against real chaos servers.

It runs the async transport on a private loop thread; these check what a sync caller relies
on, whatever the hand-over between the threads looks like:

* many threads sharing one transport (and one connection) each get their own response;
* a streamed response is read lazily, a hop at a time: nothing is read far ahead of the caller
  (a counting TCP relay between client and server shows what the server could send), early
  close resets the stream, and the connection goes on serving;
* a request body from a sync generator is read in the calling thread, and its exception
  reaches the caller;
* errors are the httpx/h2guard types, raised in the calling thread with the request attached:
  connection refused, a reset stream, a stream reset mid-body, timeouts (no response, a body
  that stalls);
* ``close()`` (idle, after use, with requests still waiting in other threads) leaves no thread
  behind and later requests fail plainly.

The sync code runs in worker threads (``asyncio.to_thread``) so that the test's event loop
keeps serving the chaos server. No test asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import Delay, IdleTimeout, RstStream, Scenario, Trigger
from h2guard.errors import StreamResetError, failure_of

pytestmark = pytest.mark.timeout(60)

_INTERNAL_ERROR = 0x2
_BLOCK = bytes(range(256)) * 256  # what the chaos server's /bytes/N repeats


def _pattern(n: int) -> bytes:
    whole, rest = divmod(n, len(_BLOCK))
    return _BLOCK * whole + _BLOCK[:rest]


def _loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "h2guard-loop" and t.is_alive()]


def _client(base: str, **options: Any) -> httpx.Client:
    transport = h2guard.HTTPTransport(http2_prior_knowledge=True, **options)
    return httpx.Client(transport=transport, base_url=base, timeout=20.0)


# --------------------------------------------------------------------------- many threads


async def test_many_threads_share_one_transport_and_get_their_own_responses() -> None:
    threads, each = 16, 40
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)

        def worker(n: int) -> list[tuple[str, str, str, str]]:
            got = []
            for i in range(each):
                ident = f"{n}-{i}"
                response = client.get("/echo", params={"id": ident},
                                      headers={"x-id": ident})
                echo = response.json()
                got.append((ident, echo["path"], echo["headers"]["x-id"],
                            response.http_version))
            return got

        def run() -> list[list[tuple[str, str, str, str]]]:
            with client:
                results: list[list[tuple[str, str, str, str]]] = [[] for _ in range(threads)]
                errors: list[BaseException] = []

                def target(n: int) -> None:
                    try:
                        results[n] = worker(n)
                    except BaseException as exc:  # pragma: no cover - reported below
                        errors.append(exc)

                pool = [threading.Thread(target=target, args=(n,)) for n in range(threads)]
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                assert not errors, errors
                return results

        results = await asyncio.to_thread(run)
        assert server.events.counts.get("chaos.connection.opened") == 1  # all multiplexed
    seen = set()
    for got in results:
        assert len(got) == each
        for ident, path, header, version in got:
            assert path == f"/echo?id={ident}" and header == ident and version == "HTTP/2"
            seen.add(ident)
    assert len(seen) == threads * each
    assert not _loop_threads()


async def test_jobs_queued_while_the_loop_sleeps_or_works_all_start() -> None:
    """The calling threads drive the loop in turns: one that finds nobody driving drives until
    its own response is in, then hands the loop to a waiting caller (or to nobody). The driver
    starts queued jobs each time it is about to wait for I/O, and a caller wakes it only when
    it is asleep. Whatever the interleaving (callers pausing at random so that the loop is
    found idle, asleep, busy, or just going to sleep), every request is served, and every way
    of starting a job and of passing the loop on happened."""
    threads, each = 8, 40
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url, seed=7)
        shared = client._transport._shared  # type: ignore[attr-defined]
        selector, loop = shared._selector, shared.loop
        seen = {"woken": 0, "at_select": 0, "handed_on": 0, "left_idle": 0}
        select, wake, hand_on = selector.select, loop.call_soon_threadsafe, shared._hand_on

        def counting_select(timeout: float | None = None) -> Any:
            if shared._queue and not shared._scheduled:
                seen["at_select"] += 1
            return select(timeout)

        def counting_wake(callback: Any, *args: Any, **kwargs: Any) -> Any:
            if callback == shared._drain:
                seen["woken"] += 1
            return wake(callback, *args, **kwargs)

        def counting_hand_on() -> None:
            hand_on()
            seen["handed_on" if shared._busy else "left_idle"] += 1

        selector.select = counting_select
        loop.call_soon_threadsafe = counting_wake
        shared._hand_on = counting_hand_on

        def run() -> int:
            rng = random.Random(3)
            pauses = [[rng.choice((0.0, 0.0, 0.0005, 0.002, 0.01)) for _ in range(each)]
                      for _ in range(threads)]
            done = [0] * threads

            def worker(n: int) -> None:
                for pause in pauses[n]:
                    time.sleep(pause)
                    if client.get("/bytes/16").status_code == 200:
                        done[n] += 1

            with client:
                pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
                for t in pool:
                    t.start()
                for t in pool:
                    t.join(30)
                assert not any(t.is_alive() for t in pool), "a request never started"
            return sum(done)

        assert await asyncio.to_thread(run) == threads * each
    assert all(seen.values()), seen
    assert not _loop_threads()  # no helper was needed: every caller could drive


async def test_many_threads_stream_bodies_at_once() -> None:
    size = 300_000
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url, stream_window=32_768)

        def worker(_: int) -> bytes:
            with client.stream("GET", f"/bytes/{size}") as response:
                return b"".join(response.iter_raw())

        def run() -> list[bytes]:
            with client, ThreadPoolExecutor(8) as pool:
                return list(pool.map(worker, range(24)))

        bodies = await asyncio.to_thread(run)
    assert all(body == _pattern(size) for body in bodies)


# --------------------------------------------------------------------------- streaming


class _Relay:
    """A loopback TCP relay that counts the bytes the server sent toward the client."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.downstream = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> _Relay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                       count: bool) -> None:
            try:
                while data := await src.read(65536):
                    if count:
                        self.downstream += len(data)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        tasks = [asyncio.create_task(pipe(reader, up_writer, False)),
                 asyncio.create_task(pipe(up_reader, writer, True))]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_streamed_response_is_read_lazily_and_not_read_ahead() -> None:
    size = 64 << 20  # far more than the windows let the server send unread
    window = 65_535
    async with serve(Scenario(), h2c=True) as server, _Relay(server.port) as relay:
        client = _client(f"http://127.0.0.1:{relay.port}", stream_window=window,
                         connection_window=window)
        settled: dict[str, int] = {}

        async def settle() -> int:
            """The relay's count once it stops growing (the server has used its window)."""
            last = -1
            while relay.downstream != last:
                last = relay.downstream
                await asyncio.sleep(0.2)
            return last

        def run(loop: asyncio.AbstractEventLoop) -> tuple[int, int, int]:
            with client:
                with client.stream("GET", f"/bytes/{size}") as response:
                    assert response.status_code == 200
                    chunks = response.iter_raw()
                    first = next(chunks)
                    settled["after_first"] = asyncio.run_coroutine_threadsafe(
                        settle(), loop).result()
                    taken = len(first)
                    for chunk in chunks:  # a few more hops: still bounded by the window
                        taken += len(chunk)
                        if taken > 4 * window:
                            break
                    settled["after_more"] = asyncio.run_coroutine_threadsafe(
                        settle(), loop).result()
                # closed early: the stream is reset, the connection still serves
                again = client.get("/bytes/10")
                return len(first), taken, again.status_code

        first, taken, status = await asyncio.to_thread(run, asyncio.get_running_loop())
        await asyncio.sleep(0.1)
        resets = [e for e in server.events if e.name == "chaos.stream.reset_by_client"]
    assert 0 < first <= window and status == 200
    # unread data is bounded by flow control: the window, plus frame and header overhead
    slack = 16_384
    assert settled["after_first"] <= first + 2 * window + slack, settled
    assert settled["after_more"] <= taken + 2 * window + slack, settled
    assert resets and resets[0].data["code"] == "CANCEL"
    assert not _loop_threads()


async def test_a_streamed_response_arrives_whole_and_in_order() -> None:
    size = 5_000_000
    # paced after 1 MiB, so most of the body is still arriving while it is read
    scenario = Scenario(faults=(Delay(duration=0.001, at="response_body", after_bytes=1 << 20,
                                      when=Trigger(path="/bytes/*")),))
    async with serve(scenario, h2c=True) as server:
        client = _client(server.url, stream_window=256 * 1024)

        def run() -> tuple[bytes, int]:
            with client, client.stream("GET", f"/bytes/{size}") as response:
                parts = list(response.iter_raw())
                return b"".join(parts), len(parts)

        body, parts = await asyncio.to_thread(run)
    assert parts > 1
    assert body == _pattern(size)


async def test_http1_responses_stream_through_the_generic_path() -> None:
    """Without prior knowledge ``http://`` goes to httpx's HTTP/1.1 transport: its streams
    are not h2guard's, and still stream and give their connection back."""
    size = 400_000
    async with serve(Scenario(), h2c=True) as server:
        transport = h2guard.HTTPTransport()

        def run() -> tuple[str, bytes, str, int]:
            with httpx.Client(transport=transport, base_url=server.url) as client:
                with client.stream("GET", f"/bytes/{size}") as response:
                    body = b"".join(response.iter_bytes())
                    version = response.http_version
                with client.stream("GET", f"/bytes/{size}") as response:
                    next(response.iter_raw())  # closed early
                again = client.get("/echo")
                return version, body, again.http_version, again.status_code

        version, body, again_version, status = await asyncio.to_thread(run)
    assert version == again_version == "HTTP/1.1" and status == 200
    assert body == _pattern(size)


# --------------------------------------------------------------------------- request bodies


async def test_request_bodies_from_sync_generators_are_read_in_the_calling_threads() -> None:
    """Each body is read by the thread that sends it (while it waits), several at once."""
    threads = 8
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url, stream_window=65_535)
        readers: dict[int, set[int]] = {n: set() for n in range(threads)}

        def body(n: int) -> Iterator[bytes]:
            for i in range(40):
                readers[n].add(threading.get_ident())
                yield f"{n:02d}{i:02d}".encode() * 4000  # 16 KB: several windows in all

        def send(n: int) -> tuple[int, bytes, int]:
            response = client.post("/echo", content=body(n),
                                   headers={"content-type": "text/plain"})
            return response.status_code, response.content, threading.get_ident()

        def run() -> list[tuple[int, bytes, int]]:
            with client, ThreadPoolExecutor(threads) as pool:
                return list(pool.map(send, range(threads)))

        results = await asyncio.to_thread(run)
    for n, (status, content, caller) in enumerate(results):
        assert status == 200
        assert content == b"".join(f"{n:02d}{i:02d}".encode() * 4000 for i in range(40))
        assert readers[n] == {caller}


async def test_a_failing_request_body_raises_its_error_in_the_caller() -> None:
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)

        def body() -> Iterator[bytes]:
            yield b"part one"
            raise ValueError("the upload source broke")

        def run() -> tuple[BaseException, int]:
            with client:
                try:
                    client.post("/echo", content=body())
                except ValueError as exc:
                    return exc, client.get("/status/204").status_code
            raise AssertionError("the POST succeeded")

        exc, status = await asyncio.to_thread(run)
    assert "upload source broke" in str(exc) and status == 204


# --------------------------------------------------------------------------- errors


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nothing listens there


def test_connection_refused_is_a_connect_error_with_the_request() -> None:
    port = _refused_port()
    transport = h2guard.HTTPTransport(http2_prior_knowledge=True)
    with httpx.Client(transport=transport) as client, \
            pytest.raises(httpx.ConnectError) as caught:
        client.get(f"http://127.0.0.1:{port}/echo")
    assert caught.value.request.url.port == port
    failure = failure_of(caught.value)
    assert failure is not None and failure.kind == "connect" and failure.processed == "no"
    assert not _loop_threads()


async def test_a_reset_stream_is_a_stream_reset_error_in_the_calling_thread() -> None:
    scenario = Scenario(faults=(RstStream(_INTERNAL_ERROR, at="after_app",
                                          when=Trigger(path="/orders")),))
    async with serve(scenario, h2c=True) as server:
        client = _client(server.url)

        def run() -> tuple[BaseException, int]:
            with client:
                try:
                    client.post("/orders", content=b"{}")
                except httpx.TransportError as exc:
                    return exc, client.get("/echo").status_code
            raise AssertionError("the POST succeeded")

        exc, status = await asyncio.to_thread(run)
    assert isinstance(exc, StreamResetError) and isinstance(exc, httpx.RemoteProtocolError)
    assert exc.request.url.path == "/orders" and status == 200
    failure = failure_of(exc)
    assert failure is not None and failure.kind == "stream_reset"
    assert failure.code == _INTERNAL_ERROR and failure.processed == "maybe"


async def test_a_stream_reset_mid_body_raises_while_reading() -> None:
    scenario = Scenario(faults=(RstStream(_INTERNAL_ERROR, at="response_body",
                                          after_bytes=200_000,
                                          when=Trigger(path="/bytes/*")),))
    async with serve(scenario, h2c=True) as server:
        client = _client(server.url)

        def run() -> tuple[int, BaseException]:
            got = 0
            with client, client.stream("GET", "/bytes/2000000") as response:
                try:
                    for chunk in response.iter_raw():
                        got += len(chunk)
                except httpx.TransportError as exc:
                    return got, exc
            raise AssertionError("the whole body arrived")

        got, exc = await asyncio.to_thread(run)
    assert got < 2_000_000
    assert isinstance(exc, httpx.RemoteProtocolError)
    assert exc.request.url.path == "/bytes/2000000"
    failure = failure_of(exc)
    assert failure is not None and failure.kind == "stream_reset"


# --------------------------------------------------------------------------- timeouts


async def test_no_response_in_time_is_a_read_timeout() -> None:
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)

        def run() -> tuple[BaseException, int]:
            with client:
                try:
                    client.get("/delay/20000", timeout=httpx.Timeout(20.0, read=0.3))
                except httpx.TimeoutException as exc:
                    return exc, client.get("/status/204").status_code
            raise AssertionError("the response came")

        exc, status = await asyncio.to_thread(run)
    assert isinstance(exc, httpx.ReadTimeout) and status == 204
    assert exc.request.url.path == "/delay/20000"
    failure = failure_of(exc)
    assert failure is not None and failure.kind == "timeout"


async def test_a_body_that_stalls_is_a_read_timeout_while_reading() -> None:
    scenario = Scenario(faults=(Delay(duration=20.0, at="response_body", after_bytes=100_000,
                                      when=Trigger(path="/bytes/*")),))
    async with serve(scenario, h2c=True) as server:
        client = _client(server.url)

        def run() -> tuple[int, BaseException]:
            got = 0
            with client, client.stream("GET", "/bytes/1000000",
                                       timeout=httpx.Timeout(20.0, read=0.3)) as response:
                try:
                    for chunk in response.iter_raw():
                        got += len(chunk)
                except httpx.TimeoutException as exc:
                    return got, exc
            raise AssertionError("the whole body arrived")

        got, exc = await asyncio.to_thread(run)
    assert 0 < got < 1_000_000
    assert isinstance(exc, httpx.ReadTimeout)
    failure = failure_of(exc)
    assert failure is not None and failure.kind == "timeout"


# --------------------------------------------------------------------------- close


def test_close_while_idle_leaves_no_thread() -> None:
    before = set(threading.enumerate())
    transport = h2guard.HTTPTransport(http2_prior_knowledge=True)
    assert not _loop_threads()  # the caller drives the loop: no thread of its own
    transport.close()
    transport.close()  # twice is fine
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]


async def test_close_after_use_leaves_no_thread_and_refuses_more() -> None:
    async with serve(Scenario(), h2c=True) as server:
        def run() -> tuple[set[threading.Thread], BaseException]:
            before = set(threading.enumerate())
            transport = h2guard.HTTPTransport(http2_prior_knowledge=True)
            with httpx.Client(transport=transport, base_url=server.url) as client:
                assert client.get("/echo").status_code == 200

                def body() -> Iterator[bytes]:
                    yield b"x" * 1000

                assert client.post("/echo", content=body()).content == b"x" * 1000
                with client.stream("GET", "/bytes/3000000") as response:
                    next(response.iter_raw())  # left open: close() resets it
                    transport.close()
            leftover = {t for t in threading.enumerate() if t not in before and t.is_alive()}
            with pytest.raises(RuntimeError) as caught:
                transport.handle_request(httpx.Request("GET", f"{server.url}/echo"))
            return leftover, caught.value

        leftover, exc = await asyncio.to_thread(run)
    assert not leftover
    assert "closed" in str(exc)


async def test_close_with_requests_waiting_in_other_threads_ends_them() -> None:
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)
        outcomes: list[BaseException | int] = []
        started = threading.Barrier(5)

        def waiter() -> None:
            started.wait()
            try:
                outcomes.append(client.get("/delay/30000").status_code)
            except BaseException as exc:
                outcomes.append(exc)

        async def until_all_at_the_server() -> None:
            while server.requests < 4:
                await asyncio.sleep(0.01)

        def run(loop: asyncio.AbstractEventLoop) -> None:
            pool = [threading.Thread(target=waiter) for _ in range(4)]
            for t in pool:
                t.start()
            started.wait()
            asyncio.run_coroutine_threadsafe(until_all_at_the_server(), loop).result(20)
            client.close()
            for t in pool:
                t.join(20)
            assert not any(t.is_alive() for t in pool)

        await asyncio.to_thread(run, asyncio.get_running_loop())
    assert len(outcomes) == 4
    assert all(isinstance(o, (httpx.TransportError, RuntimeError)) for o in outcomes), outcomes
    assert not _loop_threads()


# --------------------------------------------------------------------------- who drives the loop


async def test_a_connection_closed_while_no_request_ran_is_seen_before_the_next_one() -> None:
    """While no request is in flight nobody runs the loop, so a connection the server closes
    then (a bare FIN, no GOAWAY: a load balancer dropping an idle flow) is not seen until the
    next request starts the loop. That request must not be written into the dead connection:
    a POST without a key could not be retried. The pool's own idle checks are set far out of
    the way, so only the order of the loop's first pass (I/O first, then new jobs) saves it."""
    scenario = Scenario(faults=(IdleTimeout(after=0.2, action="fin"),))
    async with serve(scenario, h2c=True) as server:
        client = _client(server.url, max_idle=60.0, health_check_after=60.0)

        def run() -> tuple[int, int, list[threading.Thread]]:
            with client:
                first = client.get("/echo").status_code
                deadline = time.monotonic() + 10
                while server.connections and time.monotonic() < deadline:
                    time.sleep(0.05)  # the server closed it; the client has not looked yet
                second = client.post("/echo", content=b"order").status_code
                return first, second, _loop_threads()

        first, second, helpers = await asyncio.to_thread(run)
    assert (first, second) == (200, 200)
    assert server.requests == 2
    assert not helpers  # one calling thread drove every step itself


async def test_a_caller_whose_thread_runs_an_event_loop_is_served_by_a_helper() -> None:
    """A sync call from inside a running event loop (a notebook's cell runs in the kernel's
    loop; a sync library called from async code) cannot drive our loop in that thread; a
    helper thread drives it, lingers a moment for the next such call, and is gone after."""
    async with serve(Scenario(), h2c=True) as server:
        helpers: list[str] = []

        def run() -> tuple[int, int, list[str]]:
            client = _client(server.url)  # built in a plain thread: it drives, no helper
            shared = client._transport._shared  # type: ignore[attr-defined]
            start_helper = shared._start_helper

            def counting_start_helper() -> None:
                helpers.append(threading.current_thread().name)
                start_helper()

            shared._start_helper = counting_start_helper

            async def inside() -> int:
                first = client.get("/delay/100").status_code  # blocks this loop, as it would
                return max(first, client.get("/echo").status_code)  # the same helper, lingering

            status = asyncio.run(inside())
            helped = list(helpers)
            again = client.get("/echo").status_code  # no loop running here now: drives itself
            client.close()
            return status, again, helped

        status, again, helped = await asyncio.to_thread(run)
    assert (status, again) == (200, 200)
    assert len(helped) == 1 and len(helpers) == 1  # the later call and close() needed none


async def test_callers_that_can_and_cannot_drive_mixed_at_random_all_finish() -> None:
    """Small GETs (their callers drive), streamed bodies (a job per hop) and generator bodies
    (their callers cannot drive: a helper does when nobody else is), from threads pausing at
    random: the loop passes between callers and helpers in every order, every request gets
    its own right answer, and no helper is left when they are done."""
    threads, each = 6, 24
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url, stream_window=32_768)
        started = {"helpers": 0}
        shared = client._transport._shared  # type: ignore[attr-defined]
        start_helper = shared._start_helper

        def counting_start_helper() -> None:
            started["helpers"] += 1
            start_helper()

        shared._start_helper = counting_start_helper

        def worker(n: int) -> list[str]:
            rng = random.Random(n)
            wrong = []
            for i in range(each):
                time.sleep(rng.choice((0.0, 0.0, 0.001, 0.005)))
                kind = rng.choice(("get", "stream", "upload"))
                if kind == "get":
                    got = client.get("/bytes/16").content
                    if got != _pattern(16):
                        wrong.append(f"{n}/{i} get")
                elif kind == "stream":
                    size = rng.choice((1000, 70_000, 200_000))
                    with client.stream("GET", f"/bytes/{size}") as response:
                        if b"".join(response.iter_raw()) != _pattern(size):
                            wrong.append(f"{n}/{i} stream")
                else:
                    parts = [f"{n}:{i}:{k};".encode() * 500 for k in range(rng.randint(1, 6))]
                    echoed = client.post("/echo", content=iter(parts)).content
                    if echoed != b"".join(parts):
                        wrong.append(f"{n}/{i} upload")
            return wrong

        def run() -> list[str]:
            with client:
                pool = ThreadPoolExecutor(threads)
                futures = [pool.submit(worker, n) for n in range(threads)]
                wrong = [w for f in futures for w in f.result(timeout=50)]
                pool.shutdown()
            return wrong

        wrong = await asyncio.to_thread(run)
    assert wrong == []
    assert started["helpers"] > 0  # some upload found nobody driving


async def test_a_helper_that_hands_the_loop_to_a_new_helper_stops_after_it() -> None:
    """The narrowest hand-over: a helper's last job is done, and before it hands the loop on
    another upload (whose caller cannot drive) arrives, so it starts the next helper. That one
    must still stop once its jobs are done (none is left running the loop for ever)."""
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)
        shared = client._transport._shared  # type: ignore[attr-defined]
        hand_on = shared._hand_on
        later: dict[str, Any] = {}
        handed = threading.Event()

        def upload(tag: str) -> None:
            later[tag] = client.post("/echo", content=iter([tag.encode()])).content

        def racing_hand_on() -> None:
            if threading.current_thread().name == "h2guard-loop" and "second" not in later:
                later["second"] = None
                second = threading.Thread(target=upload, args=("second",))
                second.start()
                deadline = time.monotonic() + 10
                while len(shared._open) == 0 and time.monotonic() < deadline:
                    time.sleep(0.001)  # its job is queued: this helper has not handed on yet
                later["thread"] = second
                handed.set()
            hand_on()

        shared._hand_on = racing_hand_on

        def run() -> None:
            upload("first")
            assert handed.wait(10)
            later["thread"].join(10)
            client.close()

        await asyncio.to_thread(run)
    assert later["first"] == b"first" and later["second"] == b"second"
    # the autouse fixture below fails the test if a helper is still running


async def test_a_lingering_helper_makes_way_for_a_caller_that_can_drive() -> None:
    """Built inside the test's running event loop, the transport is set up by a helper thread,
    which lingers for more such calls; requests from plain threads arriving meanwhile must not
    all take the helper's thread hop (each keeps the linger going): the helper hands the loop
    to the first of them, and callers drive from then on."""
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)
        shared = client._transport._shared  # type: ignore[attr-defined]
        drivers: list[str] = []
        drive = shared._drive

        def recording_drive(job: Any) -> None:
            drivers.append("helper" if job is None else "caller")
            drive(job)

        shared._drive = recording_drive

        def run() -> int:
            with client:
                return sum(client.get("/echo").status_code == 200 for _ in range(20))

        assert await asyncio.to_thread(run) == 20
    assert drivers.count("caller") >= 20 and "helper" not in drivers, drivers


async def test_an_interrupt_in_the_driving_thread_hands_the_loop_on() -> None:
    """KeyboardInterrupt reaches the thread that drives the loop (Ctrl-C in a script's main
    thread): that thread's request is given up, another thread's request goes on to its
    response (the loop is handed to its caller), and the transport serves the interrupted
    thread again afterwards."""
    async with serve(Scenario(), h2c=True) as server:
        client = _client(server.url)
        shared = client._transport._shared  # type: ignore[attr-defined]
        outcome: dict[str, Any] = {}

        def driver() -> None:
            try:
                outcome["driver"] = client.get("/delay/5000").status_code
            except KeyboardInterrupt:
                outcome["driver"] = "interrupted"
            outcome["driver_again"] = client.get("/echo").status_code

        def other() -> None:
            outcome["other"] = client.get("/delay/300").status_code

        def interrupt() -> None:
            raise KeyboardInterrupt

        def run(loop: asyncio.AbstractEventLoop) -> None:
            async def at_server(n: int) -> None:
                while server.requests < n:
                    await asyncio.sleep(0.01)

            first = threading.Thread(target=driver)
            first.start()
            asyncio.run_coroutine_threadsafe(at_server(1), loop).result(20)
            second = threading.Thread(target=other)
            second.start()
            asyncio.run_coroutine_threadsafe(at_server(2), loop).result(20)
            drivers = [job for job in shared._open if job.lead]
            outcome["first_drove"] = len(drivers) == 1 and drivers[0].args[0].url.path == \
                "/delay/5000"
            shared.loop.call_soon_threadsafe(interrupt)  # raised in whichever thread drives
            first.join(20)
            second.join(20)
            client.close()

        await asyncio.to_thread(run, asyncio.get_running_loop())
    assert outcome == {"first_drove": True, "driver": "interrupted", "other": 200,
                       "driver_again": 200}, outcome


def _server_in_a_thread() -> tuple[Any, Callable[[], None]]:
    """A chaos server on a thread of its own (for tests whose main thread makes requests),
    and the function that stops it."""
    ready = threading.Event()
    box: dict[str, Any] = {}

    def server_thread() -> None:
        async def main() -> None:
            async with serve(Scenario(), h2c=True) as server:
                box["server"] = server
                ready.set()
                while not box.get("stop"):
                    await asyncio.sleep(0.02)

        asyncio.run(main())

    runner = threading.Thread(target=server_thread)
    runner.start()
    assert ready.wait(20)

    def stop() -> None:
        box["stop"] = True
        runner.join(20)

    return box["server"], stop


def test_ctrl_c_at_any_moment_of_a_request_never_wedges_the_transport() -> None:
    """SIGINT at random moments of many requests from the main thread (while it queues a job,
    drives the loop, hands it on, or reads the answer), with another thread making requests
    too: each interrupt is one KeyboardInterrupt, and afterwards both threads are still served
    at once; no helper is left running the loop."""
    server, stop = _server_in_a_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    rng = random.Random(11)
    main_id = threading.main_thread().ident
    assert main_id is not None
    try:
        with _client(server.url) as client:
            other_done = threading.Event()
            other_ok = [0]

            def other() -> None:
                while not other_done.is_set():
                    if client.get("/bytes/16").status_code == 200:
                        other_ok[0] += 1

            neighbour = threading.Thread(target=other)
            neighbour.start()
            interrupted = served = 0
            for _ in range(80):
                timer = threading.Timer(rng.choice((0.0, 0.0002, 0.0005, 0.001, 0.002)),
                                        signal.pthread_kill, (main_id, signal.SIGINT))
                try:
                    timer.start()
                    if client.get("/bytes/16").status_code == 200:
                        served += 1
                    timer.join()
                    time.sleep(1.0)  # the signal lands here if the request was quicker
                    raise AssertionError("a Ctrl-C was lost")
                except KeyboardInterrupt:
                    interrupted += 1
                    timer.join()
            assert interrupted == 80  # each Ctrl-C, exactly one KeyboardInterrupt
            assert 0 < served < 80  # some requests were interrupted, some done before it
            before = other_ok[0]
            assert client.get("/bytes/16").status_code == 200  # the main thread, again
            deadline = time.monotonic() + 10
            while other_ok[0] < before + 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert other_ok[0] >= before + 3  # the other thread never stalled
            other_done.set()
            neighbour.join(10)
            assert not neighbour.is_alive()
    finally:
        signal.signal(signal.SIGINT, previous)
        stop()


def test_ctrl_c_in_the_main_thread_spares_the_connection() -> None:
    """A real SIGINT while the main thread drives the loop (a script's Ctrl-C): the request
    raises KeyboardInterrupt, the loop is stopped between passes (not inside a callback, which
    could leave a frame or an HPACK table half-done), Python's own handler is back after, and
    the next request goes over the same connection. The server runs on a thread of its own, as
    the main thread must make the requests."""
    server, stop = _server_in_a_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _client(server.url) as client:
            events = client._transport.events  # type: ignore[attr-defined]
            assert client.get("/echo").status_code == 200
            loop = client._transport._shared.loop  # type: ignore[attr-defined]
            finished: list[str] = []

            def callback_hit_by_ctrl_c() -> None:  # as a data_received might be
                signal.raise_signal(signal.SIGINT)  # handled here, in this thread, at once
                finished.append("the rest of the callback")

            timer = threading.Timer(0.3, loop.call_soon_threadsafe, (callback_hit_by_ctrl_c,))
            timer.start()
            with pytest.raises(KeyboardInterrupt):
                client.get("/delay/10000")
            timer.join()
            assert finished == ["the rest of the callback"]  # not cut short by the interrupt
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
            timer = threading.Timer(0.3, signal.pthread_kill,
                                    (threading.main_thread().ident, signal.SIGINT))
            timer.start()
            with pytest.raises(KeyboardInterrupt):  # a plain Ctrl-C, the loop asleep in select
                client.get("/delay/10000")
            timer.join()
            assert client.get("/echo").status_code == 200
            assert client.get("/echo").status_code == 200
            opened = [e for e in events if e.name == "client.connection_opened"]
            assert len(opened) == 1 and server.connections == 1
    finally:
        signal.signal(signal.SIGINT, previous)
        stop()


# --------------------------------------------------------------------------- via h2guard.Client


async def test_h2guard_client_over_the_sync_transport() -> None:
    async with serve(Scenario(), h2c=True) as server:
        def run() -> list[dict[str, Any]]:
            with h2guard.Client(http2_prior_knowledge=True, base_url=server.url) as client:
                return [json.loads(client.get(f"/echo?n={n}").content) for n in range(5)]

        echoes = await asyncio.to_thread(run)
    assert [e["path"] for e in echoes] == [f"/echo?n={n}" for n in range(5)]


@pytest.fixture(autouse=True)
def _no_loop_thread_leaks() -> Iterator[None]:
    before = set(_loop_threads())
    yield
    leaked = [t for t in _loop_threads() if t not in before]
    for t in leaked:  # a test that failed mid-way: give it a moment, then report
        t.join(5)
    assert not [t for t in leaked if t.is_alive()]
