"""Acceptance tests of the client: h2guard's transports against the chaos server.

Five production failure scenarios (docs/facts.md §3, §4), each driven with 2,000 requests
(GETs of /bytes/N mixed with POST /orders, every POST with its own X-Request-Id) at
concurrency 100: h2guard must lose none and duplicate none (the ledger proves it), while raw
httpx over HTTP/2 on the very same scenario and workload must fail (> 0 failures), so every
scenario is proven hard. The sync transport runs three of the scenarios (nginx-tight,
refused-20, goaway-every-10) from 32 threads sharing one ``httpx.Client``. Then, async and sync:
a slow response caught by a GOAWAY completes whole; the failure surface (a reset after the app
ran is not retried; connection refused is a ConnectError). And 50 MB up and down through 16 KB
windows in bounded client memory (client and server in separate processes, peak RSS measured).

Durations are scaled (``time_scale``): a 60 s ALB idle timeout is 0.3 s here. Run with ``-s``
to see the measured figures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

import h2guard
from h2guard.chaos import ChaosServer, serve
from h2guard.chaos.model import (
    Delay,
    GoAway,
    IdleTimeout,
    RstStream,
    Scenario,
    Trigger,
)
from h2guard.chaos.scenario import load_profile
from h2guard.errors import StreamResetError
from h2guard.events import EventLog

pytestmark = pytest.mark.timeout(120)

REQUESTS = 2_000
CONCURRENCY = 100
"""Async: coroutines sharing one AsyncClient."""
SYNC_THREADS = 32
"""Sync: threads sharing one httpx.Client (the loop thread of HTTPTransport serves them all;
more threads only add GIL contention on this 2-core machine)."""
H2GUARD_TIMEOUT = httpx.Timeout(10.0)
RAW_TIMEOUT = httpx.Timeout(1.0)
"""Raw httpx hangs on a black-holed connection until its timeout: keep that short so the
proof of failure costs seconds, not minutes (loopback answers in milliseconds otherwise)."""
PATTERN = bytes(range(256)) * 256
"""What the chaos app's /bytes/N serves: this 64 KiB pattern, repeated."""

REFUSED_STREAM, INTERNAL_ERROR = 0x7, 0x2


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Case:
    """One scenario, how its traffic is shaped, and how to see that its faults fired."""

    name: str
    scenario: Scenario
    time_scale: float
    waves: int = 1
    gap: float = 0.0
    """Real seconds between waves (longer than the scaled idle timeout where there is one)."""
    tls: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    """h2guard transport options for this scenario."""
    fired: tuple[tuple[str, str, int], ...] = ()
    """(fault kind, code, minimum count) the server must have injected in the h2guard run."""
    client_events: tuple[tuple[str, int], ...] = ()
    """(client event, minimum count) h2guard must have emitted: the recovery really ran."""
    raw_fails_with: tuple[str, ...] = ()
    """What raw httpx's failures must include (one of these substrings): the scenario's own
    failure mode, not a side effect of the short timeout."""
    moves_cover: tuple[str, str] | None = None
    """A (fault kind, code) whose every injection refused a stream h2guard must have moved:
    its transparent retries are at least that count (and at least one)."""


def _replace_faults(scenario: Scenario, **by_type: dict[str, Any]) -> Scenario:
    faults = tuple(dataclasses.replace(f, **by_type.get(type(f).__name__, {}))
                   for f in scenario.faults)
    return dataclasses.replace(scenario, faults=faults)


def _nginx_tight() -> Case:
    scenario = _replace_faults(load_profile("nginx"),
                               MaxConcurrentStreams={"limit": 4},
                               RequestCap={"max_requests": 10})
    scenario = dataclasses.replace(scenario, name="nginx-tight")
    return Case("nginx-tight", scenario, time_scale=0.02,
                fired=(("request_cap", "NO_ERROR", 150),),
                client_events=(("client.goaway", 150),),
                raw_fails_with=("ConnectionTerminated", "ConnectionState.CLOSED"))


def _alb_idle() -> Case:
    scenario = load_profile("aws-alb")
    idle = next(f for f in scenario.faults if isinstance(f, IdleTimeout))
    assert (idle.action, idle.ping_resets, idle.after) == ("goaway", False, 60.0)
    # 60 s idle -> 0.3 s; waves 0.4 s apart: every wave meets a connection closed while idle
    return Case("aws-alb-idle", scenario, time_scale=0.005, waves=4, gap=0.4, tls=True,
                fired=(("idle_timeout", "goaway", 3),),
                client_events=(("client.goaway", 3),),
                raw_fails_with=("ConnectionTerminated", "ConnectionState.CLOSED", "WriteError",
                                "ReadError"))


def _nlb_blackhole() -> Case:
    # 350 s idle -> 30 s (0.3 s scaled): same behaviour, a test that lasts seconds; waves
    # 0.4 s apart, so each finds its connection black-holed
    scenario = _replace_faults(load_profile("aws-nlb"), IdleTimeout={"after": 30.0})
    idle = next(f for f in scenario.faults if isinstance(f, IdleTimeout))
    assert idle.action == "blackhole"
    return Case("aws-nlb-blackhole", scenario, time_scale=0.01, waves=4, gap=0.4, tls=True,
                options={"health_check_after": 0.2, "ping_timeout": 0.2},
                fired=(("idle_timeout", "blackhole", 3),),
                client_events=(("client.ping_timeout", 3),),
                raw_fails_with=("ReadTimeout",))


def _refused_20() -> Case:
    scenario = Scenario(name="refused-20", faults=(
        RstStream(code=REFUSED_STREAM, at="request_headers", when=Trigger(probability=0.2),
                  name="refuse 20%"),))
    return Case("refused-20", scenario, time_scale=0.02,
                fired=(("rst_stream", "REFUSED_STREAM", 300),),
                client_events=(("client.transparent_retry", 300),),
                raw_fails_with=("error_code:7",))


def _goaway_every_10() -> Case:
    # Once a connection has carried 10 requests: graceful GOAWAY, last_stream_id = the highest
    # stream received, while the rest of the 100 in flight are still running (those above the
    # id are moved, those below finish). The server closes the moment its last stream ends,
    # with a lingering close (FIN, then discard the client's crossing frames), as nginx does:
    # a plain close() with unread input makes the kernel send a TCP RST that destroys the final
    # responses still queued, which no client could recover.
    scenario = Scenario(name="goaway-every-10", faults=(
        GoAway(mode="graceful", at="request_headers", when=Trigger(after_requests=10),
               name="goaway after 10 streams"),))
    return Case("goaway-every-10", scenario, time_scale=0.02,
                fired=(("goaway", "NO_ERROR", 20),),
                # how many streams were above each GOAWAY's last_stream_id depends on how far
                # the client got ahead of the server when it fired (a faster server: fewer;
                # once 8 in 20 GOAWAYs): every stream the server refused after its GOAWAY
                # must have been moved, and at least one was
                client_events=(("client.goaway", 20),),
                moves_cover=("goaway", "REFUSED_STREAM"),
                raw_fails_with=("ConnectionTerminated", "ConnectionState.CLOSED"))


CASES = {case.name: case for case in (_nginx_tight(), _alb_idle(), _nlb_blackhole(),
                                      _refused_20(), _goaway_every_10())}
SYNC_CASES = ("nginx-tight", "refused-20", "goaway-every-10")
"""The sync transport runs the same code on a loop thread; these three (plus the slow response
at GOAWAY below) show parity without doubling the file's runtime."""
RUNS = [(name, "async") for name in CASES] + [(name, "sync") for name in SYNC_CASES]


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True, slots=True)
class Call:
    method: str
    path: str
    request_id: str = ""
    size: int = 0


def workload(n: int = REQUESTS) -> list[Call]:
    """Half POST /orders (each a new logical request), half GET /bytes/N of varied sizes."""
    calls = []
    for i in range(n):
        if i % 2:
            calls.append(Call("POST", "/orders", request_id=f"req-{uuid.uuid4().hex}"))
        else:
            size = (i * 7919) % 4096
            calls.append(Call("GET", f"/bytes/{size}", size=size))
    return calls


def waves_of(calls: list[Call], waves: int) -> list[list[Call]]:
    per = -(-len(calls) // waves)
    return [calls[i : i + per] for i in range(0, len(calls), per)]


@dataclass
class Tally:
    failures: Counter[str] = field(default_factory=Counter)
    ok: int = 0
    posts: int = 0
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def add(self, call: Call, outcome: str | None) -> None:
        with self.lock:
            if call.method == "POST":
                self.posts += 1
            if outcome is None:
                self.ok += 1
            else:
                self.failures[outcome] += 1

    def summary(self) -> str:
        top = "; ".join(f"{n}x {what}" for what, n in self.failures.most_common(3))
        return (f"{self.failed} failed of {self.ok + self.failed} in {self.elapsed:.2f} s"
                + (f" ({top})" if top else ""))


def check(call: Call, response: httpx.Response) -> str | None:
    """None if the response is the right one, else what was wrong."""
    if call.method == "POST":
        if response.status_code != 201:
            return f"status {response.status_code}"
        if response.json().get("request_id") != call.request_id:
            return "wrong order"
        return None
    if response.status_code != 200:
        return f"status {response.status_code}"
    if response.content != PATTERN[: call.size]:
        return f"body of {len(response.content)} bytes, expected {call.size}"
    return None


def describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:90]}"


async def one_async(client: httpx.AsyncClient, base: str, call: Call, tally: Tally) -> None:
    try:
        if call.method == "POST":
            response = await client.post(base + call.path, content=_order(call),
                                         headers=_order_headers(call))
        else:
            response = await client.get(base + call.path)
        tally.add(call, check(call, response))
    except httpx.HTTPError as exc:
        tally.add(call, describe(exc))
    except Exception as exc:  # raw httpx leaks h2's LocalProtocolError and friends
        tally.add(call, describe(exc))


def one_sync(client: httpx.Client, base: str, call: Call, tally: Tally) -> None:
    try:
        if call.method == "POST":
            response = client.post(base + call.path, content=_order(call),
                                   headers=_order_headers(call))
        else:
            response = client.get(base + call.path)
        tally.add(call, check(call, response))
    except Exception as exc:
        tally.add(call, describe(exc))


def _order(call: Call) -> bytes:
    return json.dumps({"item": "widget", "quantity": 1, "ref": call.request_id}).encode()


def _order_headers(call: Call) -> dict[str, str]:
    return {"x-request-id": call.request_id, "content-type": "application/json"}


async def drive_async(client: httpx.AsyncClient, base: str, case: Case) -> Tally:
    tally = Tally()
    start = time.monotonic()
    for number, wave in enumerate(waves_of(workload(), case.waves)):
        if number:
            await asyncio.sleep(case.gap)
        pending = iter(wave)

        async def worker(pending: Iterator[Call] = pending) -> None:
            for call in pending:
                await one_async(client, base, call, tally)

        await asyncio.gather(*(worker() for _ in range(min(CONCURRENCY, len(wave)))))
    tally.elapsed = time.monotonic() - start
    return tally


def drive_sync(client: httpx.Client, base: str, case: Case) -> Tally:
    """Runs on a worker thread (the test's event loop keeps serving the chaos server)."""
    tally = Tally()
    start = time.monotonic()
    with ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="sync-client") as pool:
        for number, wave in enumerate(waves_of(workload(), case.waves)):
            if number:
                time.sleep(case.gap)
            list(pool.map(lambda call: one_sync(client, base, call, tally), wave))
    tally.elapsed = time.monotonic() - start
    return tally


def h2guard_transport_options(case: Case, server: ChaosServer) -> dict[str, Any]:
    options: dict[str, Any] = dict(case.options)
    if case.tls:
        assert server.ca_file is not None
        options["verify"] = server.ca_file
    else:
        options["http2_prior_knowledge"] = True
    return options


def assert_no_loss(case: Case, server: ChaosServer, tally: Tally,
                   client_events: EventLog) -> None:
    assert tally.failed == 0, f"{case.name}: {tally.summary()}"
    assert tally.ok == REQUESTS
    assert server.ledger.duplicate_requests == {}
    assert server.ledger.total == tally.posts == REQUESTS // 2
    for kind, code, at_least in case.fired:
        fired = server.fault_counts.get((kind, code), 0)
        assert fired >= at_least, f"{case.name}: {kind} {code} fired {fired} times"
    for name, at_least in case.client_events:
        seen = client_events.counts.get(name, 0)
        assert seen >= at_least, f"{case.name}: {name} seen {seen} times"
    if case.moves_cover is not None:
        refused = server.fault_counts.get(case.moves_cover, 0)
        moved = client_events.counts.get("client.transparent_retry", 0)
        assert moved >= max(1, refused), \
            f"{case.name}: {moved} transparent retries for {refused} refused streams"


# --------------------------------------------------------------------------- 1 + 3: scenarios


@pytest.mark.parametrize(("name", "mode"), RUNS, ids=[f"{n}-{m}" for n, m in RUNS])
async def test_h2guard_loses_nothing(name: str, mode: str) -> None:
    case = CASES[name]
    async with serve(case.scenario, h2c=not case.tls, time_scale=case.time_scale,
                     seed=7) as server:
        options = h2guard_transport_options(case, server)
        if mode == "async":
            transport = h2guard.AsyncHTTPTransport(**options)
            async with httpx.AsyncClient(transport=transport, timeout=H2GUARD_TIMEOUT) as client:
                tally = await drive_async(client, server.url, case)
            events = transport.events
        else:
            sync_transport = h2guard.HTTPTransport(**options)

            def run() -> Tally:
                with httpx.Client(transport=sync_transport, timeout=H2GUARD_TIMEOUT) as client:
                    return drive_sync(client, server.url, case)

            tally = await asyncio.to_thread(run)
            events = sync_transport.events
        print(f"\n[{name}] h2guard {mode}: {tally.summary()}; server: "
              f"{server.events.counts.get('chaos.connection.opened', 0)} connections, "
              f"faults {dict((f'{k}/{c}', n) for (k, c), n in server.fault_counts.items())}; "
              f"client: goaway {events.counts.get('client.goaway', 0)}, transparent retries "
              f"{events.counts.get('client.transparent_retry', 0)}, ping timeouts "
              f"{events.counts.get('client.ping_timeout', 0)}")
        assert_no_loss(case, server, tally, events)


@pytest.mark.parametrize("name", list(CASES))
async def test_raw_httpx_fails(name: str) -> None:
    """The same scenario and workload break httpx's own HTTP/2: the scenario is hard."""
    case = CASES[name]
    async with serve(case.scenario, h2c=not case.tls, time_scale=case.time_scale,
                     seed=7) as server:
        verify: Any = True
        if case.tls:
            assert server.ca_file is not None
            verify = ssl.create_default_context(cafile=server.ca_file)
        async with httpx.AsyncClient(http1=False, http2=True, verify=verify,
                                     timeout=RAW_TIMEOUT) as client:
            tally = await drive_async(client, server.url, case)
        print(f"\n[{name}] raw httpx: {tally.summary()}")
        assert tally.failed > 0, f"{case.name} did not break raw httpx: {tally.summary()}"
        assert any(sign in what for what in tally.failures for sign in case.raw_fails_with), \
            f"{case.name}: raw httpx failed, but not the scenario's way: {tally.summary()}"
        # it was the scenario, not the workload: the same requests reached the app
        assert tally.ok > 0


# --------------------------------------------------------------------------- helpers for 2 + 5


class Client:
    """One h2guard client, async or sync (the sync one is called from worker threads, so the
    test's event loop keeps serving the chaos server)."""

    def __init__(self, mode: str, base: str, **options: Any) -> None:
        self.mode = mode
        self.base = base
        if mode == "async":
            self.transport: Any = h2guard.AsyncHTTPTransport(**options)
            self._async = httpx.AsyncClient(transport=self.transport, timeout=H2GUARD_TIMEOUT)
        else:
            self.transport = h2guard.HTTPTransport(**options)
            self._sync = httpx.Client(transport=self.transport, timeout=H2GUARD_TIMEOUT)

    @property
    def events(self) -> EventLog:
        events: EventLog = self.transport.events
        return events

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if self.mode == "async":
            return await self._async.request(method, self.base + path, **kwargs)
        return await asyncio.to_thread(self._sync.request, method, self.base + path, **kwargs)

    async def aclose(self) -> None:
        if self.mode == "async":
            await self._async.aclose()
        else:
            await asyncio.to_thread(self._sync.close)


async def until(predicate: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


def fault_events(server: ChaosServer, kind: str) -> list[dict[str, Any]]:
    return [dict(e.data) for e in server.events.since(name="chaos.fault")
            if e.data.get("kind") == kind]


# --------------------------------------------------------------------------- 2: slow response


SLOW_BYTES = 256 * 1024


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("slow", ["delay", "paced-body"])
async def test_slow_response_in_flight_at_goaway_completes(slow: str, mode: str) -> None:
    """A response still being produced (``/delay/300``) or still streaming (a body paced at
    20 ms per DATA frame after 64 KiB) when a graceful GOAWAY arrives completes with its full
    body, is not sent twice, and the next request opens a new connection."""
    scenario = Scenario(name="goaway-mid-response", faults=(
        GoAway(mode="graceful", at="request_headers",
               when=Trigger(path="/echo", method="GET", max_fires=1), name="goaway trigger"),
        Delay(duration=0.02, at="response_body", after_bytes=65536,
              when=Trigger(path="/bytes/*"), name="paced body"),
    ))
    async with serve(scenario, h2c=True, time_scale=1.0, seed=1) as server:
        client = Client(mode, server.url, http2_prior_knowledge=True)
        try:
            path = "/delay/300" if slow == "delay" else f"/bytes/{SLOW_BYTES}"
            in_flight = asyncio.create_task(client.request("GET", path))
            if slow == "delay":
                await until(lambda: server.requests >= 1, "the slow request at the server")
            else:
                await until(lambda: fault_events(server, "delay"), "the paced body to start")
            trigger = await client.request("GET", "/echo")  # the GOAWAY goes out here
            assert trigger.status_code == 200
            assert not in_flight.done(), "the slow response was not in flight at the GOAWAY"
            [goaway] = fault_events(server, "goaway")
            first_connection = trigger.json()["connection_id"]
            assert goaway["connection"] == first_connection

            response = await in_flight
            assert response.status_code == 200
            if slow == "delay":
                assert response.json() == {"delayed_ms": 300}
            else:
                assert len(response.content) == SLOW_BYTES
                assert response.content == (PATTERN * 4)[:SLOW_BYTES]
            assert response.extensions["h2guard_attempts"] == 1  # finished, not sent again
            assert response.extensions["h2guard_stream_id"] <= goaway["last_stream_id"]
            assert server.events.counts["chaos.connection.opened"] == 1

            after = await client.request("GET", "/echo")
            assert after.status_code == 200
            assert after.json()["connection_id"] != first_connection
            assert server.events.counts["chaos.connection.opened"] == 2
            assert client.events.counts.get("client.goaway", 0) == 1
            assert client.events.counts.get("client.transparent_retry", 0) == 0
        finally:
            await client.aclose()


# --------------------------------------------------------------------------- 5: failure surface


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_reset_after_the_app_ran_is_maybe_processed_and_not_retried(mode: str) -> None:
    scenario = Scenario(name="reset-after-app", faults=(
        RstStream(code=INTERNAL_ERROR, at="after_app",
                  when=Trigger(path="/orders", method="POST"), name="crash after the write"),))
    async with serve(scenario, h2c=True, time_scale=0.02, seed=1) as server:
        client = Client(mode, server.url, http2_prior_knowledge=True)
        try:
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await client.request("POST", "/orders", content=b'{"item": "widget"}',
                                     headers={"x-request-id": "order-1"})
            exc = caught.value
            assert isinstance(exc, StreamResetError)
            failure = h2guard.failure_of(exc)
            assert failure is not None
            assert failure.kind == "stream_reset"
            assert failure.processed == "maybe"
            assert failure.code_name == "INTERNAL_ERROR"
            assert failure.attempts == 1
            await asyncio.sleep(0.1)  # nothing is sent again later either
            assert server.ledger.total == 1
            assert server.ledger.duplicate_requests == {}
            assert client.events.counts.get("client.transparent_retry", 0) == 0
            # the connection is still good for the next request
            assert (await client.request("GET", "/bytes/10")).status_code == 200
        finally:
            await client.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("mode", ["async", "sync"])
async def test_connection_refused_is_a_connect_error_not_processed(mode: str) -> None:
    client = Client(mode, f"http://127.0.0.1:{_closed_port()}", http2_prior_knowledge=True)
    try:
        with pytest.raises(httpx.ConnectError) as caught:
            await client.request("POST", "/orders", content=b"{}")
        failure = h2guard.failure_of(caught.value)
        assert failure is not None
        assert failure.kind == "connect"
        assert failure.processed == "no"
    finally:
        await client.aclose()


# ---------------------------------------------------------------------- 4: 50 MB, 16 KB windows


BIG = 50 * 1024 * 1024
SLACK_MB = 8.0
"""Allowed peak-RSS growth of the client beyond its baseline (and beyond the body itself for a
bytes upload). What it may legitimately hold: a 256 KiB socket read, one 64 KiB write slice,
the socket's write buffer (asyncio's 64 KiB high-water mark) and one stream window of unread
response (16 KiB for the download, 1 MiB for the echo): about 1.5 MB, plus allocator noise.
The reader pauses 5 ms every 512 KiB; a client that did not hold the peer to its windows
buffered ~36 MB here (measured with 1 GiB windows), and copying the body once more adds 50 MB."""

SMALL_WINDOWS = """\
name = "small-windows"
description = "a peer advertising 16 KB stream windows and the minimum connection window"
[settings]
initial_window_size = 16384
connection_window = 65535
"""

CLIENT_SCRIPT = textwrap.dedent("""
    import asyncio, hashlib, json, resource, sys, time
    import httpx, h2guard

    url, mode, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pattern = bytes(range(256)) * 256

    def peak_mb():
        # VmHWM: this process's own peak RSS. ru_maxrss is printed too, but Linux carries it
        # over from the parent across fork+exec (here: pytest's RSS), which would hide growth.
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def ru_maxrss_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    async def main():
        options = {"http2_prior_knowledge": True}
        if mode == "download":
            options.update(stream_window=16384, connection_window=65535)
        transport = h2guard.AsyncHTTPTransport(**options)
        async with httpx.AsyncClient(transport=transport, timeout=60) as client:
            warm = await client.post(url + "/echo", content=pattern)
            assert warm.content == pattern
            baseline = peak_mb()
            received, sent = hashlib.sha256(), hashlib.sha256()
            count = 0
            start = time.monotonic()
            if mode == "download":
                request = client.stream("GET", f"{url}/bytes/{size}")
            else:
                if mode == "upload-bytes":
                    content = pattern * (size // len(pattern))
                    sent.update(content)
                else:
                    async def generate():
                        left = size
                        while left:
                            chunk = pattern[: min(left, len(pattern))]
                            sent.update(chunk)
                            left -= len(chunk)
                            yield chunk
                    content = generate()
                request = client.stream("POST", url + "/echo", content=content)
            async with request as response:
                status = response.status_code
                async for chunk in response.aiter_bytes():
                    received.update(chunk)
                    count += len(chunk)
                    if count % (1 << 19) < len(chunk):
                        await asyncio.sleep(0.005)  # a slow reader: windows must hold the rest
            print(json.dumps({"status": status, "bytes": count, "received": received.hexdigest(),
                              "sent": sent.hexdigest(), "baseline_mb": baseline,
                              "peak_mb": peak_mb(), "ru_maxrss_mb": ru_maxrss_mb(),
                              "seconds": time.monotonic() - start}))

    asyncio.run(main())
""")


@pytest.fixture(scope="module")
def small_window_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A chaos server in its own process (so the client process measures only itself)."""
    scenario = tmp_path_factory.mktemp("windows") / "small-windows.toml"
    scenario.write_text(SMALL_WINDOWS)
    proc = subprocess.Popen(
        [sys.executable, "-m", "h2guard", "chaos", "serve", "--h2c", "--port", "0", "--quiet",
         "--scenario", str(scenario)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), f"server did not start: {url!r} {proc.stderr}"
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _expected_digest(size: int) -> str:
    digest = hashlib.sha256()
    full, rest = divmod(size, len(PATTERN))
    for _ in range(full):
        digest.update(PATTERN)
    digest.update(PATTERN[:rest])
    return digest.hexdigest()


@pytest.mark.parametrize("mode", ["download", "upload-generator", "upload-bytes"])
def test_50mb_through_16kb_windows_in_bounded_memory(small_window_server: str,
                                                     mode: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", CLIENT_SCRIPT, small_window_server, mode, str(BIG)],
        capture_output=True, text=True, timeout=100,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    growth = figures["peak_mb"] - figures["baseline_mb"]
    print(f"\n[50 MB {mode}] {figures['seconds']:.2f} s, client peak RSS "
          f"{figures['peak_mb']:.1f} MB, baseline {figures['baseline_mb']:.1f} MB, "
          f"growth {growth:.1f} MB (ru_maxrss {figures['ru_maxrss_mb']:.1f} MB)")
    assert figures["status"] == 200
    assert figures["bytes"] == BIG
    assert figures["received"] == _expected_digest(BIG)  # byte-exact
    if mode != "download":
        assert figures["sent"] == figures["received"]  # the echo is what we sent
    body_held = BIG / 2**20 if mode == "upload-bytes" else 0.0  # bytes content is itself 50 MB
    assert growth < body_held + SLACK_MB, f"{mode}: client peak RSS grew {growth:.1f} MB"
