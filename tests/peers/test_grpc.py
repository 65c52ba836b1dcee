"""Real gRPC (grpcio's C core, client and server) through the chaos server's reverse proxy.

gRPC is the strictest HTTP/2 peer most services meet: it needs trailers (``grpc-status`` lives
there), ``te: trailers`` on the request, no ``content-length`` it did not send, body bytes that
flow while the stream is still open (streaming RPCs), and RST_STREAM codes passed on as they
are (it maps REFUSED_STREAM to UNAVAILABLE, INTERNAL_ERROR to INTERNAL, CANCEL to CANCELLED).
A proxy that buffers whole responses fails every call with ``UNKNOWN: Stream removed``; these
are the acceptance tests of the streaming proxy.

The gRPC server is grpcio's synchronous server on its own thread pool: it never touches the
test's event loop, so a slow handler cannot stall the proxy, and it stops within a bounded
grace. No protoc: the methods are generic handlers over raw bytes (no serializers, so the
payload on the wire is exactly the bytes a test chose). The client is ``grpc.aio`` in the
test's loop, dialling the proxy over h2c.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from h2guard.chaos import serve
from h2guard.chaos.model import Moment, RstStream, Scenario
from h2guard.chaos.server import ChaosServer

try:
    import grpc
    import grpc.aio
except ImportError:  # the `backend` fixture skips loudly (peer.need_module)
    grpc = None

pytestmark = [pytest.mark.peers, pytest.mark.timeout(30)]

SERVICE = "h2guard.test.Echo"
CALL_TIMEOUT = 10.0
"""gRPC deadline of every call that should succeed: a hang fails the test, not the run."""
STREAM_SIZES = [100_000 if i % 10 == 3 else (i * 997) % 20_000 for i in range(50)]
"""Server-streaming message sizes: empty, small, mid-sized and five of 100 KB, mixed."""
TRAILING = (("x-trace", "abc"),)
NOT_FOUND_DETAILS = "widget 42 not found (gone since 2024: 100% sure, ünïcode kept)"


def _message(i: int, size: int) -> bytes:
    """Message ``i`` of the server stream: its index then a fill byte, so order is checkable."""
    return i.to_bytes(2, "big") + bytes([i % 251]) * size


# ---------------------------------------------------------------------------- the backend


@dataclass
class Backend:
    """A running gRPC server and what its handlers saw (handlers run on pool threads)."""

    port: int
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str) -> None:
        with self.lock:
            self.calls[method] += 1


def _handlers(backend: Backend) -> Any:
    def unary(request: bytes, context: Any) -> bytes:
        backend.count("Unary")
        metadata = dict(context.invocation_metadata())
        context.send_initial_metadata((("x-initial", "hello"),))
        context.set_trailing_metadata((*TRAILING, ("x-seen", metadata.get("x-call", "-"))))
        return request

    def not_found(request: bytes, context: Any) -> bytes:
        backend.count("NotFound")
        context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND_DETAILS)
        raise AssertionError("abort() returned")  # pragma: no cover

    def server_stream(request: bytes, context: Any) -> Iterator[bytes]:
        backend.count("ServerStream")
        context.set_trailing_metadata(TRAILING)
        for i, size in enumerate(STREAM_SIZES):
            yield _message(i, size)

    def client_stream(requests: Iterator[bytes], context: Any) -> bytes:
        backend.count("ClientStream")
        digest = hashlib.sha256()
        n = 0
        for message in requests:
            digest.update(message)
            n += 1
        context.set_trailing_metadata(TRAILING)
        return n.to_bytes(4, "big") + digest.digest()

    def bidi(requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        backend.count("Bidi")
        for message in requests:
            yield b"pong:" + message

    def slow(request: bytes, context: Any) -> bytes:
        backend.count("Slow")
        backend.release.wait(2.0)  # released at teardown: a stopping server never waits 2 s
        return request

    methods = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    # No request_deserializer / response_serializer: grpcio passes the raw bytes through.
    return grpc.method_handlers_generic_handler(SERVICE, methods)


@pytest.fixture
def backend(peer: Any) -> Iterator[Backend]:
    """grpcio's threaded server, insecure (h2c) on a loopback port of its choosing."""
    peer.need_module("grpc", "grpcio")
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc-backend")
    server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, "grpcio could not bind a loopback port"
    running = Backend(port)
    server.add_generic_rpc_handlers((_handlers(running),))
    server.start()
    try:
        yield running
    finally:
        running.release.set()
        assert server.stop(grace=1.0).wait(5.0), "the gRPC server did not stop within 5 s"
        pool.shutdown(wait=False, cancel_futures=True)


@contextlib.asynccontextmanager
async def _channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    # No HTTP CONNECT proxy from the environment: the test talks to loopback only.
    channel = grpc.aio.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    try:
        await asyncio.wait_for(channel.channel_ready(), 5.0)
        yield channel
    finally:
        await asyncio.wait_for(channel.close(grace=None), 5.0)


@contextlib.asynccontextmanager
async def _proxy(backend: Backend, scenario: Scenario | None = None,
                 ) -> AsyncIterator[tuple[ChaosServer, grpc.aio.Channel]]:
    """The chaos proxy in front of the backend over h2c, and a gRPC channel to the proxy."""
    async with serve(scenario, h2c=True, upstream=f"h2c://127.0.0.1:{backend.port}") as front, \
            _channel(front.url.split("://", 1)[1]) as channel:
        yield front, channel


@pytest.fixture(params=["direct", "proxied"])
async def channel(request: pytest.FixtureRequest, backend: Backend,
                  ) -> AsyncIterator[grpc.aio.Channel]:
    """A channel through the chaos proxy, and the same test straight to the backend.

    ``direct`` is the control: when a ``proxied`` case fails and its ``direct`` twin passes,
    the proxy is at fault, not grpcio or the test."""
    if request.param == "direct":
        async with _channel(f"127.0.0.1:{backend.port}") as direct:
            yield direct
    else:
        async with _proxy(backend) as (_front, proxied):
            yield proxied


def _method(channel: grpc.aio.Channel, kind: str, name: str) -> Any:
    """A callable for ``/h2guard.test.Echo/<name>`` with no serializers (raw bytes)."""
    factory = getattr(channel, kind)
    return factory(f"/{SERVICE}/{name}")


def _describe(exc: BaseException) -> str:
    if grpc is not None and isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code()}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- round trips


async def test_100_unary_calls_carry_payload_and_both_metadata(
        backend: Backend, channel: Any) -> None:
    unary = _method(channel, "unary_unary", "Unary")

    async def one(i: int) -> tuple[bytes, Any, Any, Any]:
        payload = f"call-{i}:".encode() + bytes([i]) * (i * 37)
        call = unary(payload, metadata=(("x-call", str(i)),), timeout=CALL_TIMEOUT)
        reply = await call
        assert reply == payload, f"call {i}: payload changed on the way"
        return (reply, await call.initial_metadata(), await call.trailing_metadata(),
                await call.code())

    results = await asyncio.gather(*(one(i) for i in range(100)), return_exceptions=True)
    failures = collections.Counter(_describe(r) for r in results if isinstance(r, BaseException))
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert not failures, f"{len(ok)} of 100 unary calls succeeded; failures: {dict(failures)}"
    for i, (_reply, initial, trailing, code) in enumerate(ok):
        assert code == grpc.StatusCode.OK
        assert ("x-initial", "hello") in tuple(initial), f"call {i}: initial {initial}"
        assert ("x-trace", "abc") in tuple(trailing), f"call {i}: trailing {trailing}"
        # request metadata reached the backend unchanged, per call (no mixing of streams)
        assert ("x-seen", str(i)) in tuple(trailing), f"call {i}: trailing {trailing}"
    assert backend.calls["Unary"] == 100


async def test_trailers_only_abort_keeps_code_and_details(backend: Backend, channel: Any) -> None:
    call = _method(channel, "unary_unary", "NotFound")(b"42", timeout=CALL_TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.NOT_FOUND, _describe(info.value)
    assert info.value.details() == NOT_FOUND_DETAILS
    assert backend.calls["NotFound"] == 1


async def test_server_streaming_50_messages_in_order_then_trailers(
        backend: Backend, channel: Any) -> None:
    call = _method(channel, "unary_stream", "ServerStream")(b"go", timeout=CALL_TIMEOUT)
    received = [message async for message in call]
    code, trailing = await call.code(), await call.trailing_metadata()
    details = await call.details()
    assert code == grpc.StatusCode.OK, f"{code}: {details}"
    assert len(received) == len(STREAM_SIZES)
    for i, size in enumerate(STREAM_SIZES):
        assert received[i] == _message(i, size), f"message {i} differs"
    assert ("x-trace", "abc") in tuple(trailing)


async def test_client_streaming_20_requests_one_response(backend: Backend, channel: Any) -> None:
    requests = [bytes([i]) * (i * 3331 + (65536 if i % 7 == 0 else 0)) for i in range(20)]

    async def produce() -> AsyncIterator[bytes]:
        for message in requests:
            yield message
            await asyncio.sleep(0)  # one at a time, so the request body really streams

    call = _method(channel, "stream_unary", "ClientStream")(produce(), timeout=CALL_TIMEOUT)
    reply = await call
    trailing = await call.trailing_metadata()
    assert int.from_bytes(reply[:4], "big") == 20
    assert reply[4:] == hashlib.sha256(b"".join(requests)).digest()
    assert ("x-trace", "abc") in tuple(trailing)


async def test_bidi_ping_pong_flows_both_ways_while_the_stream_is_open(
        backend: Backend, channel: Any) -> None:
    """Each reply must arrive before the next request is written: a proxy that waits for the
    whole request body (END_STREAM) before forwarding can never pass this."""
    call = _method(channel, "stream_stream", "Bidi")(timeout=CALL_TIMEOUT)
    for i in range(20):
        message = f"ping-{i}".encode() * (i + 1)
        await asyncio.wait_for(call.write(message), 3.0)
        try:
            reply = await asyncio.wait_for(call.read(), 3.0)
        except TimeoutError:
            call.cancel()
            pytest.fail(f"round {i}: no reply within 3 s of the request message, with the "
                        "request stream still open (the body is held until END_STREAM?)")
        assert reply == b"pong:" + message, f"round {i}: {reply!r}"
    await asyncio.wait_for(call.done_writing(), 3.0)
    assert await asyncio.wait_for(call.read(), 3.0) is grpc.aio.EOF
    code = await call.code()
    assert code == grpc.StatusCode.OK


async def test_deadline_is_exceeded_in_bounded_time_and_the_channel_recovers(
        backend: Backend, channel: Any) -> None:
    slow = _method(channel, "unary_unary", "Slow")
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await slow(b"slow", timeout=0.3)
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, _describe(info.value)
    assert elapsed < 1.5, f"DEADLINE_EXCEEDED after {elapsed:.2f} s, not about 0.3 s"
    unary = _method(channel, "unary_unary", "Unary")
    call = unary(b"after the deadline", timeout=CALL_TIMEOUT)
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        pytest.fail(f"the next call on the same channel failed: {_describe(exc)}")
    assert reply == b"after the deadline"
    assert ("x-trace", "abc") in tuple(await call.trailing_metadata())


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize(("code", "at", "expected", "backend_calls"), [
    (0x7, "request_headers", "UNAVAILABLE", 0),  # REFUSED_STREAM: never reached the backend
    (0x2, "after_app", "INTERNAL", 1),           # INTERNAL_ERROR after the backend answered
    (0x8, "request_headers", "CANCELLED", 0),    # CANCEL
], ids=["refused-before", "internal-after-app", "cancel-before"])
async def test_a_proxy_reset_maps_to_the_grpc_status(
        backend: Backend, code: int, at: Moment, expected: str, backend_calls: int) -> None:
    scenario = Scenario(name="grpc-reset", faults=(RstStream(code=code, at=at),))
    async with _proxy(backend, scenario) as (front, channel):
        unary = _method(channel, "unary_unary", "Unary")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(b"reset me", timeout=CALL_TIMEOUT)
        fired = front.events.since(0, name="chaos.fault")
    assert info.value.code() == getattr(grpc.StatusCode, expected), _describe(info.value)
    assert fired, "the proxy injected no fault"
    assert backend.calls["Unary"] == backend_calls
