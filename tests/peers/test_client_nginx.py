"""h2guard's httpx transports against real nginx: docs/facts.md §7's two set-ups, measured.

nginx (nginx-light) listens three ways in one server block: h2c (``listen P http2``), TLS with
ALPN h2 (``listen P ssl http2``, a trustme certificate) and TLS without HTTP/2 (``listen P
ssl``). nginx-light runs no application code, so ``POST /orders`` is proxied over HTTP/1.1 to a
chaos server, whose ledger records one effect per request it ran: every POST carries a unique
X-Request-Id, so a request sent twice shows up in ``ledger.duplicate_requests``.

* Tight nginx (``keepalive_requests 5; http2_max_concurrent_streams 4; keepalive_timeout 2s``):
  300 POSTs at concurrency 20 in three waves 2.5 s apart, i.e. past the idle timeout. h2guard
  (async over TLS and h2c, sync over TLS from 20 threads) loses none and runs none twice; raw
  httpx with ``http2=True``, running the same waves at the same time on its own connections,
  loses many (docs/facts.md §7: 244 of 300).
* Stock nginx limits (``keepalive_requests 1000; http2_max_concurrent_streams 128``): 3,000
  POSTs at concurrency 200; h2guard loses none. Raw httpx's figure is printed, not asserted:
  its loss here (3 of 3,000 in docs/facts.md §7) is intermittent.
* HTTP/1.1: a TLS listener without http2 makes ALPN choose http/1.1 and h2guard speaks it,
  while its other origins keep HTTP/2 (the caller's SSLContext is shared with the HTTP/1.1
  delegate, which sets ALPN on it); a chaos server resetting one path with HTTP_1_1_REQUIRED
  gets that request again over HTTP/1.1, and later requests to that origin use HTTP/1.1.

``pytest -s`` shows the figures (failures, durations, h2guard's event counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from servers import nginx

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.server import ChaosServer
from h2guard.errors import failure_of

pytestmark = [pytest.mark.peers, pytest.mark.timeout(60)]

TIGHT = "keepalive_requests 5; http2_max_concurrent_streams 4; keepalive_timeout 2s;"
STOCK = "keepalive_requests 1000; http2_max_concurrent_streams 128;"
IDLE_GAP = 2.5  # longer than the tight keepalive_timeout
REQUEST_TIMEOUT = httpx.Timeout(10.0)
# Raw httpx leaves some h2c requests hanging for good: count them failed after 3 s (a request
# that succeeds here takes well under a second) so the run stays short.
RAW_TIMEOUT = httpx.Timeout(3.0)
LOAD_TIMEOUT = 40.0  # a whole load run, waves and gaps included
BODY = b'{"sku": 1, "qty": 2}'


# ------------------------------------------------------------------------------------ servers


@dataclass(frozen=True)
class Tls:
    ca: str  # the CA's certificate, to trust
    cert: str  # the server's certificate chain
    key: str

    def context(self) -> ssl.SSLContext:
        """A fresh client context trusting the CA (one per client: clients set ALPN on it)."""
        return ssl.create_default_context(cafile=self.ca)


@dataclass(frozen=True)
class Site:
    """Real nginx in front of a chaos server: where it listens, and the chaos server."""

    h2c: str  # http://  (prior knowledge)
    tls: str  # https:// (ALPN h2, http/1.1)
    tls_http1: str  # https:// without http2: ALPN http/1.1 only
    tls_files: Tls
    backend: ChaosServer
    access_log: Path


def _tls_files(workdir: Path) -> Tls:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = Tls(str(workdir / "ca.pem"), str(workdir / "server.pem"),
                str(workdir / "server.key"))
    ca.cert_pem.write_to_path(paths.ca)
    for n, blob in enumerate(leaf.cert_chain_pems):
        blob.write_to_path(paths.cert, append=n > 0)
    leaf.private_key_pem.write_to_path(paths.key)
    return paths


@contextlib.asynccontextmanager
async def _site(peer: Any, workdir: Path, limits: str) -> AsyncIterator[Site]:
    """nginx with ``limits`` in its server block, ``POST /orders`` proxied to a chaos server
    (HTTP/1.1, pooled upstream connections) and ``GET /ok`` answered by nginx itself."""
    tls = _tls_files(workdir)
    async with serve(h2c=True) as backend:
        def servers(ports: list[int]) -> str:
            return f"""
    upstream chaos {{
        server 127.0.0.1:{backend.port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{ports[0]} http2;
        listen 127.0.0.1:{ports[1]} ssl http2;
        listen 127.0.0.1:{ports[2]} ssl;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        {limits}
        location = /orders {{
            proxy_pass http://chaos/orders;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location = /ok {{ return 200 "ok"; }}
    }}"""

        # each proxied request holds an upstream connection too: room for 200 of each
        async with nginx(peer, workdir, 3, servers, worker_connections=2048) as daemon:
            p = daemon.ports
            yield Site(f"http://127.0.0.1:{p[0]}", f"https://127.0.0.1:{p[1]}",
                       f"https://127.0.0.1:{p[2]}", tls, backend, workdir / "access.log")


@pytest.fixture
async def tight(peer: Any, tmp_path: Path) -> AsyncIterator[Site]:
    async with _site(peer, tmp_path, TIGHT) as site:
        yield site


@pytest.fixture
async def stock(peer: Any, tmp_path: Path) -> AsyncIterator[Site]:
    async with _site(peer, tmp_path, STOCK) as site:
        yield site


# ------------------------------------------------------------------------------------ load


@dataclass
class Run:
    """What one client did with one load pattern."""

    name: str
    prefix: str  # every X-Request-Id of the run starts with it
    sent: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    versions: Counter[str] = field(default_factory=Counter)
    duration: float = 0.0  # wall time, idle gaps included
    busy: float = 0.0  # wall time of the waves alone

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def report(self) -> str:
        worst = ", ".join(f"{n}x {what}" for what, n in self.failures.most_common(4))
        return (f"{self.name}: {self.failed} of {self.sent} failed in {self.duration:.2f} s "
                f"({self.busy:.2f} s sending); versions {dict(self.versions)}"
                + (f"; {worst}" if worst else ""))


def _describe(exc: BaseException) -> str:
    failure = failure_of(exc)
    if failure is not None:
        return f"{type(exc).__name__}[{failure.kind}, processed={failure.processed}]"
    return f"{type(exc).__name__}: {str(exc)[:90]}"


def _new_run(name: str) -> Run:
    return Run(name, f"{name}-{uuid.uuid4().hex[:8]}")


def _headers(run: Run, n: int) -> dict[str, str]:
    return {"x-request-id": f"{run.prefix}-{n}", "content-type": "application/json"}


def _record(run: Run, response: httpx.Response | None, exc: BaseException | None) -> None:
    if exc is not None:
        run.failures[_describe(exc)] += 1
    elif response is not None:
        run.versions[response.http_version] += 1
        if response.status_code != 201:
            run.failures[f"HTTP {response.status_code}"] += 1


async def _async_load(client: httpx.AsyncClient, url: str, run: Run, *, waves: int,
                      per_wave: int, concurrency: int, gap: float) -> Run:
    """``waves`` bursts of ``per_wave`` POSTs, ``concurrency`` at a time, ``gap`` s apart."""
    loop = asyncio.get_running_loop()
    numbers = iter(range(waves * per_wave))

    async def one(n: int) -> None:
        response: httpx.Response | None = None
        error: BaseException | None = None
        try:
            response = await client.post(url, content=BODY, headers=_headers(run, n))
        except Exception as exc:  # every failure is counted, whatever its type
            error = exc
        _record(run, response, error)

    async def worker(budget: list[int]) -> None:
        while budget[0] > 0:
            budget[0] -= 1
            await one(next(numbers))

    async def load() -> None:
        for wave in range(waves):
            if wave:
                await asyncio.sleep(gap)
            started = loop.time()
            budget = [per_wave]
            await asyncio.gather(*(worker(budget) for _ in range(concurrency)))
            run.busy += loop.time() - started
            run.sent += per_wave

    started = loop.time()
    await asyncio.wait_for(load(), LOAD_TIMEOUT)
    run.duration = loop.time() - started
    return run


def _sync_load(client: httpx.Client, url: str, run: Run, *, waves: int, per_wave: int,
               concurrency: int, gap: float) -> Run:
    """The same pattern from ``concurrency`` threads sharing one ``httpx.Client``."""
    lock = threading.Lock()

    def one(n: int) -> None:
        response: httpx.Response | None = None
        error: BaseException | None = None
        try:
            response = client.post(url, content=BODY, headers=_headers(run, n))
        except Exception as exc:
            error = exc
        with lock:
            _record(run, response, error)

    started = time.monotonic()
    with ThreadPoolExecutor(concurrency, thread_name_prefix="client") as pool:
        for wave in range(waves):
            if wave:
                time.sleep(gap)
            wave_started = time.monotonic()
            list(pool.map(one, range(wave * per_wave, (wave + 1) * per_wave),
                          timeout=LOAD_TIMEOUT))
            run.busy += time.monotonic() - wave_started
            run.sent += per_wave
    run.duration = time.monotonic() - started
    return run


def _effects(site: Site, run: Run) -> tuple[int, dict[str, int]]:
    """(effects the backend ran for the run's requests, request ids it ran more than once)."""
    mine = f"{run.prefix}-"
    ran = sum(1 for e in site.backend.ledger.effects() if e.request_id.startswith(mine))
    dups = {k: n for k, n in site.backend.ledger.duplicate_requests.items()
            if k.startswith(mine)}
    return ran, dups


def _events(transport: Any) -> dict[str, int]:
    return {k: n for k, n in sorted(transport.events.counts.items()) if k.startswith("client.")}


def _assert_clean(site: Site, run: Run, expected: int) -> None:
    """No request lost, and the backend ran each exactly once."""
    ran, dups = _effects(site, run)
    assert run.sent == expected
    assert run.failed == 0, run.report()
    assert dups == {}, f"{run.name} ran {len(dups)} requests more than once: {dups}"
    assert ran == expected, f"{run.name}: the backend ran {ran} of {expected}"


async def _measure(name: str, make: Callable[[], httpx.AsyncClient], url: str,
                   load: Callable[[httpx.AsyncClient, str, Run], Awaitable[Run]]) -> Run:
    async with make() as client:
        run = await load(client, url, _new_run(name))
    print(run.report())
    return run


def _waves(client: httpx.AsyncClient, url: str, run: Run) -> Awaitable[Run]:
    """docs/facts.md §7, tight set-up: 300 POSTs at concurrency 20, three waves 2.5 s apart."""
    return _async_load(client, url, run, waves=3, per_wave=100, concurrency=20, gap=IDLE_GAP)


def _burst(client: httpx.AsyncClient, url: str, run: Run) -> Awaitable[Run]:
    """docs/facts.md §7, stock limits: 3,000 POSTs at concurrency 200."""
    return _async_load(client, url, run, waves=1, per_wave=3000, concurrency=200, gap=0.0)


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("scheme", ["tls", "h2c"])
async def test_tight_nginx_loses_nothing(tight: Site, scheme: str) -> None:
    tls = scheme == "tls"
    url = (tight.tls if tls else tight.h2c) + "/orders"
    transport: h2guard.AsyncHTTPTransport | None = None

    def guarded() -> httpx.AsyncClient:
        nonlocal transport
        transport = (h2guard.AsyncHTTPTransport(verify=tight.tls_files.context()) if tls
                     else h2guard.AsyncHTTPTransport(http2_prior_knowledge=True))
        return httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT)

    def raw() -> httpx.AsyncClient:
        if tls:
            return httpx.AsyncClient(http2=True, verify=tight.tls_files.context(),
                                     timeout=RAW_TIMEOUT)
        return httpx.AsyncClient(http1=False, http2=True, timeout=RAW_TIMEOUT)

    print(f"\ntight nginx over {scheme}: {TIGHT}")
    # Both clients at once (each with its own connections; nginx's limits are per
    # connection), which halves the time the idle gaps cost.
    ours, theirs = await asyncio.gather(_measure(f"h2guard-{scheme}", guarded, url, _waves),
                                        _measure(f"httpx-{scheme}", raw, url, _waves))
    print(f"  h2guard events: {_events(transport)}")
    ran, dups = _effects(tight, theirs)
    print(f"  raw httpx: the backend ran {ran} of its 300, {len(dups)} twice")

    _assert_clean(tight, ours, 300)
    assert ours.versions == {"HTTP/2": 300}
    # The figure to beat (docs/facts.md §7: 244 of 300): stream limits, request caps and idle
    # closes cost httpx's own HTTP/2 transport requests.
    assert theirs.sent == 300
    assert theirs.failed > 0, theirs.report()


async def test_tight_nginx_loses_nothing_sync(tight: Site) -> None:
    url = tight.tls + "/orders"
    print(f"\ntight nginx over tls, sync client from 20 threads: {TIGHT}")
    transport = h2guard.HTTPTransport(verify=tight.tls_files.context())
    with httpx.Client(transport=transport, timeout=REQUEST_TIMEOUT) as client:
        # the chaos backend lives on this event loop: the threads must not block it
        run = await asyncio.wait_for(asyncio.to_thread(
            _sync_load, client, url, _new_run("h2guard-sync-tls"), waves=3, per_wave=100,
            concurrency=20, gap=IDLE_GAP), LOAD_TIMEOUT)
        events = _events(transport)
    print(run.report())
    print(f"  h2guard events: {events}")
    _assert_clean(tight, run, 300)
    assert run.versions == {"HTTP/2": 300}


async def test_stock_nginx_burst_loses_nothing(stock: Site) -> None:
    url = stock.tls + "/orders"
    transport: h2guard.AsyncHTTPTransport | None = None

    def guarded() -> httpx.AsyncClient:
        nonlocal transport
        transport = h2guard.AsyncHTTPTransport(verify=stock.tls_files.context())
        return httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT)

    def raw() -> httpx.AsyncClient:
        return httpx.AsyncClient(http2=True, verify=stock.tls_files.context(),
                                 timeout=RAW_TIMEOUT)

    print(f"\nstock nginx limits over tls: {STOCK}")
    ours = await _measure("h2guard-stock", guarded, url, _burst)
    print(f"  h2guard events: {_events(transport)}")
    theirs = await _measure("httpx-stock", raw, url, _burst)
    _assert_clean(stock, ours, 3000)
    assert ours.versions == {"HTTP/2": 3000}
    # Raw httpx is only recorded: its loss here is intermittent (3 of 3,000 in docs/facts.md §7).
    assert theirs.sent == 3000


async def test_alpn_http11_fallback(tight: Site) -> None:
    """A TLS listener without http2: ALPN picks http/1.1 and h2guard speaks HTTP/1.1 there,
    while another origin of the same transport keeps HTTP/2."""
    transport = h2guard.AsyncHTTPTransport(verify=tight.tls_files.context())
    async with httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT) as client:
        first = await client.get(tight.tls_http1 + "/ok")
        second = await client.post(tight.tls_http1 + "/orders", content=BODY,
                                   headers={"x-request-id": "alpn-h1"})
        other = await client.get(tight.tls + "/ok")
    downgrades = [e.data for e in transport.events.since(0, name="client.downgrade")]
    print(f"\nALPN fallback: {first.http_version} {first.status_code}, "
          f"{second.http_version} {second.status_code}; h2 origin {other.http_version}; "
          f"downgrades {downgrades}")
    assert (first.status_code, first.text, first.http_version) == (200, "ok", "HTTP/1.1")
    assert (second.status_code, second.http_version) == (201, "HTTP/1.1")
    assert downgrades == [{"origin": tight.tls_http1, "reason": "ALPN chose http/1.1"}]
    assert tight.backend.ledger.duplicate_requests == {}
    # the fallback of one origin does not leak into another
    assert (other.status_code, other.http_version) == (200, "HTTP/2")
    log = tight.access_log.read_text().splitlines()
    assert "GET /ok 200 rid=- HTTP/1.1" in log
    assert "GET /ok 200 rid=- HTTP/2.0" in log


HTTP_1_1_REQUIRED_TOML = """
name = "orders-need-http11"
description = "POST /orders must be sent over HTTP/1.1"

[[faults]]
kind = "http_1_1_required"
when = { method = "POST", path = "/orders" }
"""


async def test_http_1_1_required_is_resent_over_http11(tmp_path: Path) -> None:
    """RST_STREAM HTTP_1_1_REQUIRED: the request goes again over HTTP/1.1 (the chaos server
    speaks it through ALPN) and succeeds, run once; the origin then stays on HTTP/1.1."""
    scenario = tmp_path / "orders-need-http11.toml"
    scenario.write_text(HTTP_1_1_REQUIRED_TOML)
    async with serve(str(scenario)) as server:
        assert server.ca_file is not None
        transport = h2guard.AsyncHTTPTransport(verify=server.ca_file)
        async with httpx.AsyncClient(transport=transport, timeout=REQUEST_TIMEOUT) as client:
            before = await client.get(server.url + "/echo")
            order = await client.post(server.url + "/orders", content=BODY,
                                      headers={"x-request-id": "needs-http11"})
            after = await client.get(server.url + "/echo")
        faults = [(e.data.get("code"), e.data.get("path"))
                  for e in server.events.since(0, name="chaos.fault")]
        effects = [e.request_id for e in server.ledger.effects()]
    retries = [e.data for e in transport.events.since(0, name="client.transparent_retry")]
    downgrades = [e.data for e in transport.events.since(0, name="client.downgrade")]
    print(f"\nHTTP_1_1_REQUIRED: before {before.http_version}, order {order.http_version} "
          f"{order.status_code}, after {after.http_version} {after.status_code}; "
          f"faults {faults}; retries {retries}; downgrades {downgrades}")
    assert (before.status_code, before.http_version) == (200, "HTTP/2")
    assert (order.status_code, order.http_version) == (201, "HTTP/1.1")
    assert faults == [("HTTP_1_1_REQUIRED", "/orders")]
    assert [r["reason"] for r in retries] == ["http_1_1_required"]
    assert [d["reason"] for d in downgrades] == ["RST_STREAM HTTP_1_1_REQUIRED"]
    assert effects == ["needs-http11"]  # reset before the app ran; run once, over HTTP/1.1
    assert (after.status_code, after.http_version) == (200, "HTTP/1.1")


async def test_the_one_line_client_against_tight_nginx_loses_nothing(tight: Site) -> None:
    """``h2guard.AsyncClient`` (RetryTransport over the transport, default policy and budget):
    the line users copy must be as good as the bare transport against the real thing."""
    url = tight.tls + "/orders"
    client_holder: list[h2guard.AsyncClient] = []

    def one_liner() -> httpx.AsyncClient:
        client = h2guard.AsyncClient(verify=tight.tls_files.context(), timeout=REQUEST_TIMEOUT)
        client_holder.append(client)
        return client

    print(f"\ntight nginx over tls, h2guard.AsyncClient: {TIGHT}")
    run = await _measure("h2guard-client-tls", one_liner, url, _waves)
    counts = client_holder[0].events.counts
    print(f"  retries: {counts.get('retry.attempt', 0)}, "
          f"budget exhausted: {counts.get('retry.budget_exhausted', 0)}")
    _assert_clean(tight, run, 300)
    assert run.versions == {"HTTP/2": 300}
    assert counts.get("retry.budget_exhausted", 0) == 0
