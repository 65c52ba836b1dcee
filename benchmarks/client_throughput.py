"""How fast is h2guard's HTTP/2 client? One connection, 50 concurrent GETs, ten clients.

Against a real nginx (h2c, prior knowledge) and against ``h2guard chaos serve --h2c``, the same
load is driven by, in the async section (``--concurrency`` requests in flight):

* ``httpx``: raw httpx, ``AsyncClient(http1=False, http2=True)`` limited to one connection;
* ``niquests``: ``AsyncSession`` with HTTP/1.1 and HTTP/3 disabled (so: h2c), one pooled
  connection, concurrent tasks (it multiplexes them on that connection);
* ``bare``: a minimal asyncio + h2 client loop written here (prior knowledge, header validation
  and normalisation off for outbound headers, received data acknowledged at once, one write per
  loop tick): the ceiling of a pure-Python h2 client with an awaitable API;
* ``h2guard``: ``httpx.AsyncClient(transport=h2guard.AsyncHTTPTransport(
  http2_prior_knowledge=True))``. If that cannot be imported its column is ``{"error": ...}``;
* ``h2guard-norec``: the same with the flight recorder off (``flight_recorder=0``);
* ``httpx-instant``: ``httpx.AsyncClient`` over a transport written here that answers every
  request at once, in-process, with what nginx answers for ``/bytes/16`` (it yields to the
  event loop once per request, as any real transport must, so the workers interleave). It
  never touches the network: it is httpx's own ceiling, the most h2guard can reach through
  httpx;
* ``pycurl``: libcurl + nghttp2 (C), a ``CurlMulti`` with multiplexing on and one connection,
  easy handles with HTTP/2 prior knowledge and ``PIPEWAIT``, reused; ``--concurrency``
  transfers in flight. Not asyncio (libcurl's own loop), a reference for what C does. If
  pycurl is missing its column is ``{"error": ...}``.

and in the sync section (``--threads`` threads sharing ONE client and one h2c connection):

* ``h2guard-sync``: ``httpx.Client(transport=h2guard.HTTPTransport(http2_prior_knowledge=True))``;
* ``httpx-sync``: ``httpx.Client(http1=False, http2=True)`` limited to one connection;
* ``niquests-sync``: ``niquests.Session`` set up like the async one (no HTTP/1.1, no HTTP/3,
  one pooled connection).

and one request at a time, as a script or a sync web worker makes them: ``h2guard-1`` (the
async client, one task), ``h2guard-sync-1`` and ``httpx-sync-1`` (one thread).

Each run happens in a fresh child process (same interpreter, same event loop), which opens one
connection, sends a warm-up wave, then times N requests with ``--concurrency`` workers (tasks,
curl transfers, or ``--threads`` threads); it reports req/s and per-request latency (p50/p99).
A short calibration run per client first sizes N per client so that slow clients finish in
about ``--seconds`` (never more than ``--requests``, ``--sync-requests`` for the sync clients).
Rounds alternate all the clients, sync and async (the order rotates every round), so that this
machine's drift hits all alike and sync and async ratios come from the same run; ratios are
medians of per-round ratios. The number of connections and the protocol each run used are read
from nginx's access log and the chaos server's ``/stats`` (pycurl also counts its own).

Every run reports ``steal_share``: the share of the machine's CPU time that the host took
(``steal`` in ``/proc/stat``) while it ran. On a virtual machine a client that talks to a server
on the same machine pays for waking the server's halted CPU and being woken in turn, which the
host charges as steal time; the in-process httpx-instant never does. ``--keep-awake`` runs a
lowest-priority busy loop on every CPU so none halts (as booting with ``idle=poll`` would); the
report's ``environment.keep_awake`` says which way a run was made.

Prints one JSON object; never asserts on time. Targets (``meets_target`` per ratio; the
top-level ``acceptance`` sums them up, on nginx when it ran):

* h2guard >= 0.8x httpx-instant (goal 0.9x), >= 5x httpx, >= 3x niquests, >= 0.5x bare;
* h2guard-sync >= 2x httpx-sync, and >= 0.6x h2guard (the sync transport vs the async one);
* h2guard >= 0.97x h2guard-norec (the flight recorder costs nothing visible).

h2guard/pycurl, niquests/httpx, bare/httpx, niquests-sync/httpx-sync, and the one-at-a-time
h2guard-sync-1/h2guard-1 and h2guard-sync-1/httpx-sync-1 are context, no target.

    .venv/bin/python benchmarks/client_throughput.py [--requests 20000] [--rounds 9]
        [--concurrency 50] [--threads 20] [--sync-requests 4000] [--target nginx|chaos|both]
        [--seconds 10] [--loop asyncio|uvloop] [--clients h2guard,httpx-instant] [--quiet]
        [--keep-awake]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import importlib.metadata
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, cast

ASYNC_CLIENTS = ("httpx", "niquests", "bare", "h2guard", "h2guard-norec", "httpx-instant",
                 "h2guard-1")
# h2guard-norec: h2guard with its flight recorder off (flight_recorder=0), so the recorder's
# cost shows as the ratio h2guard/h2guard-norec (target: 1.0, no regression)
CURL_CLIENTS = ("pycurl",)  # its own (C) event loop, --concurrency transfers in flight
SYNC_CLIENTS = ("h2guard-sync", "httpx-sync", "niquests-sync",  # --threads threads, one client
                "h2guard-sync-1", "httpx-sync-1")
ONE = "-1"  # a client named so runs one request at a time (one task, one thread): a script
CLIENTS = ASYNC_CLIENTS + CURL_CLIENTS + SYNC_CLIENTS
PATH = "/bytes/16"
BODY_LEN = 16
TARGETS = {"h2guard/httpx-instant": 0.8, "h2guard/httpx": 5.0, "h2guard/niquests": 3.0,
           "h2guard/bare": 0.5, "h2guard-sync/httpx-sync": 2.0, "h2guard-sync/h2guard": 0.6,
           "h2guard/h2guard-norec": 0.97}
STRETCH_GOALS = {"h2guard/httpx-instant": 0.9}  # reported beside the target as goal/meets_goal
CONTEXT_RATIOS = ("h2guard/pycurl", "niquests/httpx", "bare/httpx", "niquests-sync/httpx-sync",
                  "h2guard-sync-1/h2guard-1", "h2guard-sync-1/httpx-sync-1")
# Measured on the project's machines (docs/facts.md §7 and the issue), for context only.
REFERENCE = {"nginx_h2c_req_per_s": {"httpx": 1100, "niquests": 1600, "bare": 6500,
                                     "h2load": 160000}}
START_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
CALIBRATION_SECONDS = 2.0
MAX_ERRORS = 200  # a worker run stops starting requests after this many failures
STUCK_GRACE = 30.0  # a run still busy this long after its deadline is abandoned
KEEP_AWAKE_LIMIT = 4 * 3600.0  # a --keep-awake spinner ends by itself after this long

Get = Callable[[str], Awaitable[tuple[int, int, str]]]  # path -> (status, body length, version)
SyncGet = Callable[[str], tuple[int, int, str]]  # the same, blocking


# ===================================================================================== worker
# Runs in a child process: one client, one connection, one measurement, one JSON line.


class _BareH2Client(asyncio.Protocol):
    """The least an asyncio + h2 client can do: prior knowledge, one connection, a future per
    stream, every write of a loop tick coalesced into one ``transport.write``."""

    def __init__(self, authority: bytes) -> None:
        import h2.config
        import h2.connection

        self.loop = asyncio.get_running_loop()
        self.conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, tuple[asyncio.Future[tuple[int, int, str]], list[int]]] = {}
        self.waiters: list[asyncio.Future[None]] = []  # for a free stream slot
        self.settings_received: asyncio.Future[None] = self.loop.create_future()
        self.error: BaseException | None = None
        self.flush_scheduled = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        import h2.events

        try:
            events = self.conn.receive_data(data)
        except Exception as exc:
            self._fail(exc)
            return
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                entry = self.pending.get(ev.stream_id)
                if entry is not None:
                    entry[1][1] += len(ev.data)
            elif isinstance(ev, h2.events.ResponseReceived):
                entry = self.pending.get(ev.stream_id)
                if entry is not None:
                    for name, value in ev.headers:
                        if name == b":status":
                            entry[1][0] = int(value)
                            break
            elif isinstance(ev, h2.events.StreamEnded):
                entry = self.pending.pop(ev.stream_id, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_result((entry[1][0], entry[1][1], "HTTP/2"))
                self._wake()
            elif isinstance(ev, h2.events.StreamReset):
                entry = self.pending.pop(ev.stream_id, None)
                if entry is not None and not entry[0].done():
                    entry[0].set_exception(ConnectionError(
                        f"stream {ev.stream_id} reset: {ev.error_code!r}"))
                self._wake()
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                if not self.settings_received.done():
                    self.settings_received.set_result(None)
                self._wake()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self._fail(ConnectionError(f"GOAWAY {ev.error_code!r}"))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionError("connection closed"))

    # -- client
    def _flush(self) -> None:
        self.flush_scheduled = False
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.pop()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        for fut, _ in self.pending.values():
            if not fut.done():
                fut.set_exception(exc)
        self.pending.clear()
        for waiter in self.waiters:
            if not waiter.done():
                waiter.set_exception(exc)
        self.waiters.clear()
        if not self.settings_received.done():
            self.settings_received.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    async def get(self, path: str) -> tuple[int, int, str]:
        if self.error is not None:
            raise self.error
        while (self.conn.open_outbound_streams
               >= self.conn.remote_settings.max_concurrent_streams):
            waiter: asyncio.Future[None] = self.loop.create_future()
            self.waiters.append(waiter)
            await waiter
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"),
                                     (b":authority", self.authority),
                                     (b":path", path.encode())], end_stream=True)
        fut: asyncio.Future[tuple[int, int, str]] = self.loop.create_future()
        self.pending[sid] = (fut, [0, 0])
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)
        return await fut


def _instant_transport() -> Any:
    """An ``httpx.AsyncBaseTransport`` that answers every request at once, in-process, with
    what nginx answers for ``/bytes/16``: status 200, nginx's four headers, 16 bytes, HTTP/2.
    It yields to the event loop once per request (any real transport waits for the network at
    least once), so the driver's workers interleave as they do over a socket."""
    import httpx

    body = b"0123456789abcdef"
    assert len(body) == BODY_LEN

    class InstantBody(httpx.AsyncByteStream):
        __slots__ = ()

        async def __aiter__(self) -> Any:
            yield body

    class InstantTransport(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.second = -1
            self.date = b""

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            now = int(time.time())
            if now != self.second:  # nginx too formats its Date once a second
                self.second = now
                self.date = email.utils.formatdate(now, usegmt=True).encode()
            await asyncio.sleep(0)
            return httpx.Response(200, headers=[
                (b"server", b"nginx"), (b"date", self.date),
                (b"content-type", b"application/octet-stream"), (b"content-length", b"16")],
                stream=InstantBody(), extensions={"http_version": b"HTTP/2"})

    return InstantTransport()


@contextlib.asynccontextmanager
async def _client(name: str, base: str, concurrency: int) -> Any:
    """Yield ``get(path) -> (status, body length, http version)`` for one client."""
    if name in ("httpx", "h2guard", "h2guard-norec", "httpx-instant"):
        import httpx

        if name == "httpx":
            client = httpx.AsyncClient(http1=False, http2=True, base_url=base,
                                       limits=httpx.Limits(max_connections=1), timeout=30)
        elif name == "httpx-instant":
            client = httpx.AsyncClient(transport=_instant_transport(), base_url=base,
                                       timeout=30)
        else:
            try:
                import h2guard

                transport = h2guard.AsyncHTTPTransport(
                    http2_prior_knowledge=True,
                    flight_recorder=0 if name == "h2guard-norec" else 32)
            except (ImportError, AttributeError) as exc:
                raise _Unavailable(f"h2guard.AsyncHTTPTransport is not available: "
                                   f"{type(exc).__name__}: {exc}") from exc
            client = httpx.AsyncClient(transport=transport, base_url=base, timeout=30)

        async def get_httpx(path: str) -> tuple[int, int, str]:
            r = await client.get(path)
            return r.status_code, len(r.content), r.http_version

        async with client:
            yield get_httpx
    elif name == "niquests":
        import niquests

        session = niquests.AsyncSession(disable_http1=True, disable_http3=True,
                                        pool_connections=1, pool_maxsize=1, timeout=30)

        async def get_niquests(path: str) -> tuple[int, int, str]:
            r = await session.get(base + path)
            info = r.conn_info
            version = str(info.http_version) if info is not None else f"raw:{r.http_version}"
            return r.status_code or 0, len(r.content or b""), version

        async with session:
            yield get_niquests
    elif name == "bare":
        host, port = base.removeprefix("http://").rsplit(":", 1)
        loop = asyncio.get_running_loop()
        sock, proto = await loop.create_connection(
            lambda: _BareH2Client(f"{host}:{port}".encode()), host, int(port))
        try:
            await asyncio.wait_for(proto.settings_received, 10)
            yield proto.get
        finally:
            sock.close()
    else:
        raise ValueError(f"unknown client {name!r}")


class _Unavailable(Exception):
    """The client cannot run here (not installed, not written yet)."""


async def drive(one: Callable[[int], Awaitable[str | None]], n: int, concurrency: int,
                max_seconds: float) -> dict[str, Any]:
    """Calls ``one(0)`` .. ``one(n - 1)`` from ``concurrency`` workers; ``one`` returns None for
    a good result or a short reason why not (an exception counts as one too). Stops starting
    new calls after ``max_seconds`` or ``MAX_ERRORS`` failures. Returns req/s and latency
    percentiles of the good calls. Shared by the other benchmarks in this folder."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    clock = time.perf_counter
    steal = _cpu_steal()
    start = clock()
    stop_at = start + max_seconds

    async def worker() -> None:
        nonlocal issued
        while issued < n and len(errors) < MAX_ERRORS:
            t0 = clock()
            if t0 > stop_at:
                return
            i = issued
            issued += 1
            try:
                error = await one(i)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            if error is not None:
                errors.append(error)
                continue
            latencies.append(clock() - t0)

    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return _summary(latencies, errors, issued, n, clock() - start, steal)


def _cpu_steal() -> float | None:
    """CPU-seconds this machine's virtual CPUs have waited for the host so far, summed over
    all of them (``steal`` in ``/proc/stat``); None where there is no such count. The
    drivers read it at their start, so ``drive`` reports it to the other benchmarks too."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _summary(latencies: list[float], errors: list[str], issued: int, n: int,
             elapsed: float, steal_start: float | None = None) -> dict[str, Any]:
    """The fields every driver reports: counts, req/s, p50/p99 of the good calls, and what
    share of the machine's CPU time the host took meanwhile (``steal_share``: 0.1 is a tenth
    of every CPU, gone; see ``--keep-awake``)."""
    latencies.sort()
    steal_now = _cpu_steal()
    steal_share = None
    if steal_start is not None and steal_now is not None and elapsed > 0:
        steal_share = round((steal_now - steal_start) / (elapsed * (os.cpu_count() or 1)), 4)

    def pct(q: float) -> float | None:
        if not latencies:
            return None
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

    return {"requests": issued, "ok": len(latencies), "errors": len(errors),
            "first_errors": sorted(set(errors))[:3], "seconds": round(elapsed, 3),
            "req_per_s": round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "truncated": issued < n,
            "steal_share": steal_share}


class _Stuck(Exception):
    """A run's threads did not finish STUCK_GRACE seconds after its deadline."""


def drive_threads(one: Callable[[int], str | None], n: int, threads: int,
                  max_seconds: float) -> dict[str, Any]:
    """``drive`` with ``threads`` threads calling a blocking ``one``: the same stopping rules
    (no new call after ``max_seconds`` or ``MAX_ERRORS`` failures) and the same report. Raises
    ``_Stuck`` if a thread is still in a call ``STUCK_GRACE`` seconds after the deadline (the
    threads are daemons: the process can still exit)."""
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    lock = threading.Lock()
    clock = time.perf_counter
    steal = _cpu_steal()
    start = clock()
    stop_at = start + max_seconds

    def worker() -> None:
        nonlocal issued
        while True:
            t0 = clock()
            with lock:
                if issued >= n or len(errors) >= MAX_ERRORS or t0 > stop_at:
                    return
                i = issued
                issued += 1
            try:
                error = one(i)
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
            if error is not None:
                with lock:
                    errors.append(error)
                continue
            latency = clock() - t0
            with lock:
                latencies.append(latency)

    pool = [threading.Thread(target=worker, name=f"bench-{k}", daemon=True)
            for k in range(min(threads, n))]
    for thread in pool:
        thread.start()
    give_up = stop_at + STUCK_GRACE
    for thread in pool:
        thread.join(max(0.0, give_up - clock()))
    if any(thread.is_alive() for thread in pool):
        raise _Stuck(f"{sum(t.is_alive() for t in pool)} of {len(pool)} threads still in a "
                     f"request {STUCK_GRACE:.0f} s after the deadline "
                     f"({len(latencies)} ok, {len(errors)} errors)")
    return _summary(latencies, errors, issued, n, clock() - start, steal)


async def _drive(get: Get, n: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    """``n`` GETs of ``PATH`` through ``drive``, counting the HTTP versions that served them."""
    versions: dict[str, int] = {}

    async def one(_i: int) -> str | None:
        status, length, version = await get(PATH)
        if status != 200 or length != BODY_LEN:
            return f"status {status}, {length} body bytes"
        versions[version] = versions.get(version, 0) + 1
        return None

    result = await drive(one, n, concurrency, max_seconds)
    result["http_versions"] = versions
    return result


def _drive_sync(get: SyncGet, n: int, threads: int, max_seconds: float) -> dict[str, Any]:
    """``_drive`` for a blocking ``get`` shared by ``threads`` threads."""
    versions: dict[str, int] = {}
    lock = threading.Lock()

    def one(_i: int) -> str | None:
        status, length, version = get(PATH)
        if status != 200 or length != BODY_LEN:
            return f"status {status}, {length} body bytes"
        with lock:
            versions[version] = versions.get(version, 0) + 1
        return None

    result = drive_threads(one, n, threads, max_seconds)
    result["http_versions"] = versions
    return result


@contextlib.contextmanager
def _sync_client(name: str, base: str) -> Iterator[SyncGet]:
    """Yield a blocking ``get(path) -> (status, body length, http version)``, one client
    (one connection) that all the threads share."""
    if name in ("h2guard-sync", "httpx-sync"):
        import httpx

        if name == "httpx-sync":
            client = httpx.Client(http1=False, http2=True, base_url=base,
                                  limits=httpx.Limits(max_connections=1), timeout=30)
        else:
            try:
                import h2guard

                transport = h2guard.HTTPTransport(http2_prior_knowledge=True)
            except (ImportError, AttributeError) as exc:
                raise _Unavailable(f"h2guard.HTTPTransport is not available: "
                                   f"{type(exc).__name__}: {exc}") from exc
            client = httpx.Client(transport=transport, base_url=base, timeout=30)

        def get_httpx(path: str) -> tuple[int, int, str]:
            r = client.get(path)
            return r.status_code, len(r.content), r.http_version

        with client:
            yield get_httpx
    elif name == "niquests-sync":
        import niquests

        session = niquests.Session(disable_http1=True, disable_http3=True,
                                   pool_connections=1, pool_maxsize=1, timeout=30)

        def get_niquests(path: str) -> tuple[int, int, str]:
            r = session.get(base + path)
            info = r.conn_info
            version = str(info.http_version) if info is not None else f"raw:{r.http_version}"
            return r.status_code or 0, len(r.content or b""), version

        with session:
            yield get_niquests
    else:
        raise ValueError(f"unknown sync client {name!r}")


def _sync_worker(name: str, base: str, n: int, threads: int,
                 max_seconds: float) -> dict[str, Any]:
    try:
        with _sync_client(name, base) as get:
            try:
                warm = _drive_sync(get, 2 * threads, threads, 10.0)
                if warm["ok"] == 0:
                    return {"error": "warm-up failed: " + "; ".join(warm["first_errors"])}
                return _drive_sync(get, n, threads, max_seconds)
            except _Stuck as exc:
                # Closing the client under threads still inside it could hang: leave now.
                print(json.dumps({"error": str(exc)}), flush=True)
                os._exit(0)
    except _Unavailable as exc:
        return {"error": str(exc)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


# pycurl: libcurl + nghttp2, one CurlMulti, one connection, reused easy handles.

_CURL_VERSIONS = {1: "HTTP/1.0", 2: "HTTP/1.1", 3: "HTTP/2", 30: "HTTP/3"}


class _CurlSlot:
    """One reusable easy handle (one transfer in flight at a time) and its transfer's state."""

    def __init__(self, pycurl: Any, url: str) -> None:
        self.body = 0
        self.t0 = 0.0
        h = pycurl.Curl()
        h.setopt(pycurl.URL, url)
        h.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE)
        h.setopt(pycurl.PIPEWAIT, 1)  # wait to multiplex on the connection, never open another
        h.setopt(pycurl.NOSIGNAL, 1)
        h.setopt(pycurl.TIMEOUT, 30)
        h.setopt(pycurl.WRITEFUNCTION, self._write)
        self.handle = h

    def _write(self, data: bytes) -> None:
        self.body += len(data)


def _curl_drive(pycurl: Any, multi: Any, slots: list[_CurlSlot], n: int,
                max_seconds: float) -> dict[str, Any]:
    """``_drive`` for libcurl: ``len(slots)`` transfers in flight on ``multi``; the same
    stopping rules and report, plus ``client_connections`` (the transfers' NUM_CONNECTS)."""
    latencies: list[float] = []
    errors: list[str] = []
    versions: dict[str, int] = {}
    connects = 0
    issued = 0
    clock = time.perf_counter
    steal = _cpu_steal()
    start = clock()
    stop_at = start + max_seconds
    give_up = stop_at + STUCK_GRACE
    by_handle = {id(slot.handle): slot for slot in slots}
    free = list(slots[:min(len(slots), n)])
    busy: set[int] = set()

    def finished(handle: Any, error: str | None) -> None:
        nonlocal connects
        slot = by_handle[id(handle)]
        connects += handle.getinfo(pycurl.NUM_CONNECTS)
        multi.remove_handle(handle)
        busy.discard(id(handle))
        free.append(slot)
        if error is None:
            status = handle.getinfo(pycurl.RESPONSE_CODE)
            if status != 200 or slot.body != BODY_LEN:
                error = f"status {status}, {slot.body} body bytes"
        if error is not None:
            errors.append(error)
            return
        latencies.append(clock() - slot.t0)
        code = handle.getinfo(pycurl.INFO_HTTP_VERSION)
        version = _CURL_VERSIONS.get(code, f"curl:{code}")
        versions[version] = versions.get(version, 0) + 1

    while True:
        now = clock()
        while free and issued < n and len(errors) < MAX_ERRORS and now <= stop_at:
            slot = free.pop()
            slot.body = 0
            slot.t0 = now
            multi.add_handle(slot.handle)
            busy.add(id(slot.handle))
            issued += 1
        if not busy:
            break
        if now > give_up:
            for key in list(busy):
                multi.remove_handle(by_handle[key].handle)
            errors.extend(["abandoned after the deadline"] * len(busy))
            break
        ret = pycurl.E_CALL_MULTI_PERFORM
        while ret == pycurl.E_CALL_MULTI_PERFORM:
            ret, _running = multi.perform()
        done = 0
        while True:
            queued, ok, failed = multi.info_read()
            for handle in ok:
                finished(handle, None)
            for handle, code, message in failed:
                finished(handle, f"curl error {code}: {message}"[:300])
            done += len(ok) + len(failed)
            if not queued:
                break
        if not done:
            wait = multi.timeout()  # ms libcurl wants to wait at most; -1: no opinion
            multi.select(1.0 if wait < 0 else min(wait / 1000, 1.0))
    result = _summary(latencies, errors, issued, n, clock() - start, steal)
    result["http_versions"] = versions
    result["client_connections"] = connects
    return result


def _pycurl_worker(base: str, n: int, concurrency: int, max_seconds: float) -> dict[str, Any]:
    try:
        import pycurl  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return {"error": "pycurl is not installed (pip install pycurl)"}
    try:
        if not pycurl.version_info()[4] & pycurl.VERSION_HTTP2:
            return {"error": f"this pycurl's libcurl has no HTTP/2: {pycurl.version}"}
        multi = pycurl.CurlMulti()
        multi.setopt(pycurl.M_PIPELINING, pycurl.PIPE_MULTIPLEX)
        multi.setopt(pycurl.M_MAX_HOST_CONNECTIONS, 1)
        multi.setopt(pycurl.M_MAX_TOTAL_CONNECTIONS, 1)
        slots = [_CurlSlot(pycurl, base + PATH) for _ in range(concurrency)]
        try:
            warm = _curl_drive(pycurl, multi, slots, 2 * concurrency, 10.0)
            if warm["ok"] == 0:
                return {"error": "warm-up failed: " + "; ".join(warm["first_errors"])}
            result = _curl_drive(pycurl, multi, slots, n, max_seconds)
            result["client_connections"] += warm["client_connections"]  # warm-up's included
            return result
        finally:
            for slot in slots:
                slot.handle.close()
            multi.close()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


async def _worker(name: str, base: str, n: int, concurrency: int,
                  max_seconds: float) -> dict[str, Any]:
    try:
        async with _client(name, base, concurrency) as get:
            # Warm-up: the connection, the server's SETTINGS, lazy imports, caches.
            warm = await _drive(get, 2 * concurrency, concurrency, 10.0)
            if warm["ok"] == 0:
                return {"error": "warm-up failed: " + "; ".join(warm["first_errors"])}
            result = await asyncio.wait_for(_drive(get, n, concurrency, max_seconds),
                                            max_seconds + 30)
    except _Unavailable as exc:
        return {"error": str(exc)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}
    return result


def _run_loop(loop_name: str, coro: Any) -> Any:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def worker_main(args: argparse.Namespace) -> int:
    name = _base(args.worker)
    if args.worker in SYNC_CLIENTS:
        out = _sync_worker(name, args.url, args.requests, args.threads, args.max_seconds)
    elif args.worker in CURL_CLIENTS:
        out = _pycurl_worker(args.url, args.requests, args.concurrency, args.max_seconds)
    else:
        out = _run_loop(args.loop, _worker(name, args.url, args.requests,
                                           args.concurrency, args.max_seconds))
    print(json.dumps(out), flush=True)
    return 0


# ===================================================================================== servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepting(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Server:
    """A server child process in its own process group, stopped (group and all) at exit."""

    def __init__(self, name: str, cmd: list[str], workdir: Path) -> None:
        self.name = name
        self.out = workdir / f"{name}.out"
        self.err = workdir / f"{name}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)
        _LIVE.append(self)

    def log(self) -> str:
        text = ""
        for path in (self.out, self.err):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")[-2000:]
        return text.strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


_LIVE: list[Server] = []


def _nginx_conf(workdir: Path, port: int) -> str:
    # As root the workers would run as nobody and could not read the 0700 temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {workdir}/{kind}_temp;"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}worker_processes 1;
events {{ worker_connections 256; }}
http {{
    log_format conn '$connection $server_protocol $status';
    access_log {workdir}/access.log conn;
{temp}
    server {{
        listen 127.0.0.1:{port} http2;
        http2_max_concurrent_streams 128;
        keepalive_requests 100000;
        keepalive_timeout 120s;
        location / {{ default_type application/octet-stream; return 200 "0123456789abcdef"; }}
    }}
}}
"""


def _nginx_binary(given: str | None) -> str | None:
    if given:
        return given if Path(given).is_file() else None
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/nginx/sbin/nginx") if Path(p).is_file()),
        None)


def start_nginx(workdir: Path, given: str | None) -> tuple[Server, str]:
    binary = _nginx_binary(given)
    if binary is None:
        raise RuntimeError(f"nginx not found{f' at {given}' if given else ''} "
                           "(apt-get install nginx-light; make peers)")
    for attempt in range(3):
        port = _free_port()
        conf = workdir / "nginx.conf"
        conf.write_text(_nginx_conf(workdir, port))
        server = Server(f"nginx-{attempt}", [
            binary, "-p", str(workdir), "-e", "stderr", "-c", str(conf),
            "-g", f"daemon off; pid {workdir}/nginx.pid; error_log stderr;"], workdir)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                break
            if _accepting(port):
                return server, f"http://127.0.0.1:{port}"
            time.sleep(0.05)
        log = server.log()
        server.stop()
        if "in use" not in log:
            raise RuntimeError(f"nginx did not start: {log[-500:]}")
    raise RuntimeError("nginx: three free ports were all taken before it could bind them")


def start_chaos(workdir: Path) -> tuple[Server, str, int]:
    control = _free_port()
    server = Server("chaos", [sys.executable, "-m", "h2guard", "chaos", "serve", "--h2c",
                              "--port", "0", "--quiet", "--control-port", str(control)],
                    workdir)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            line = server.out.read_text().split("\n", 1)[0].strip()
            if line.startswith("http") and _accepting(control):
                return server, line, control
        if server.proc.poll() is not None:
            break
        time.sleep(0.05)
    log = server.log()
    server.stop()
    raise RuntimeError(f"chaos server did not start: {log[-500:]}")


# ===================================================================================== parent


class Target:
    """Where a run goes, and how to count the connections and protocols a run used."""

    def __init__(self, name: str, url: str, server: Server, *, access_log: Path | None = None,
                 control_port: int | None = None) -> None:
        self.name, self.url, self.server = name, url, server
        self.access_log, self.control_port = access_log, control_port

    def mark(self) -> Any:
        if self.access_log is not None:
            return self.access_log.stat().st_size if self.access_log.exists() else 0
        if self.control_port is not None:
            return self._stats()
        return None

    def observed(self, mark: Any) -> dict[str, Any]:
        """Connections opened and protocols seen since ``mark``."""
        if self.access_log is not None:
            with self.access_log.open("rb") as f:
                f.seek(mark)
                lines = f.read().decode(errors="replace").splitlines()
            conns = {ln.split(" ", 1)[0] for ln in lines if ln}
            protocols: dict[str, int] = {}
            for ln in lines:
                parts = ln.split(" ")
                if len(parts) >= 2:
                    protocols[parts[1]] = protocols.get(parts[1], 0) + 1
            return {"server_connections": len(conns), "server_protocols": protocols,
                    "server_requests": len(lines)}
        if self.control_port is not None and mark is not None:
            now = self._stats()
            if now is None:
                return {}
            return {"server_connections": now["connections"] - mark["connections"],
                    "server_requests": now["requests"] - mark["requests"]}
        return {}

    def _stats(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.control_port}/stats",
                                        timeout=5) as r:
                return cast(dict[str, Any], json.loads(r.read()))
        except (OSError, ValueError):
            return None


def run_client(target: Target, client: str, n: int, args: argparse.Namespace,
               max_seconds: float) -> dict[str, Any]:
    if target.server.proc.poll() is not None:
        return {"error": f"{target.name} exited: {target.server.log()[-300:]}"}
    mark = target.mark()
    one = client.endswith(ONE)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", client, "--url",
           target.url, "--requests", str(n), "--concurrency",
           str(1 if one else args.concurrency), "--max-seconds", str(max_seconds), "--loop",
           args.loop, "--threads", str(1 if one else args.threads)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max_seconds + 60)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=STOP_TIMEOUT)
        return {"error": f"worker timed out after {max_seconds + 60:.0f} s"}
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"worker exited {proc.returncode}: {err.strip()[-500:]}"}
    result = cast(dict[str, Any], json.loads(lines[-1]))
    if "error" not in result:
        result.update(target.observed(mark))
    return result


def _h2load(url: str, n: int, concurrency: int) -> dict[str, Any]:
    if shutil.which("h2load") is None:
        return {"error": "h2load not found (apt-get install nghttp2-client)"}
    try:
        out = subprocess.run(["h2load", "-n", str(n), "-c", "1", "-m", str(concurrency),
                              url + PATH], capture_output=True, text=True, timeout=120,
                             check=False).stdout
    except subprocess.TimeoutExpired:
        return {"error": "h2load timed out"}
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    done = re.search(r"(\d+) succeeded, (\d+) failed", out)
    if rate is None or done is None:
        return {"error": "could not parse h2load output"}
    return {"req_per_s": float(rate.group(1)), "succeeded": int(done.group(1)),
            "failed": int(done.group(2))}


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _cap(client: str, args: argparse.Namespace) -> tuple[int, int]:
    """(most requests per run, requests in flight) for ``client``."""
    if client.endswith(ONE):
        return args.sync_requests, 1
    if client in SYNC_CLIENTS:
        return args.sync_requests, args.threads
    return args.requests, args.concurrency


def _base(client: str) -> str:
    """The client ``client`` runs (``h2guard-sync-1``: ``h2guard-sync``, one at a time)."""
    return client[:-len(ONE)] if client.endswith(ONE) else client


def bench_target(target: Target, args: argparse.Namespace,
                 log: Callable[[str], None]) -> dict[str, Any]:
    selected: tuple[str, ...] = args.clients
    clients: dict[str, dict[str, Any]] = {}
    sizes: dict[str, int] = {}
    # Calibration: how fast is each client here? Size its runs to about --seconds.
    for client in selected:
        cap, parallel = _cap(client, args)
        cal = run_client(target, client, cap, args, CALIBRATION_SECONDS)
        if "error" in cal:
            clients[client] = {"error": cal["error"]}
            log(f"{target.name} {client}: {cal['error']}")
            continue
        floor = min(cap, 20 * parallel)
        sizes[client] = max(floor, min(cap, int(cal["req_per_s"] * args.seconds)))
        clients[client] = {"requests": sizes[client], "calibration_req_per_s": cal["req_per_s"],
                           "rounds": []}
        log(f"{target.name} {client}: calibration {cal['req_per_s']} req/s -> "
            f"{sizes[client]} requests per round")
    runnable = [c for c in selected if c in sizes]
    for rnd in range(args.rounds):
        order = runnable[rnd % len(runnable):] + runnable[:rnd % len(runnable)] \
            if runnable else []
        for client in order:
            res = run_client(target, client, sizes[client], args, 3 * args.seconds + 10)
            clients[client]["rounds"].append(res)
            log(f"{target.name} round {rnd + 1} {client}: "
                + (res["error"] if "error" in res else
                   f"{res['req_per_s']} req/s p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms "
                   f"errors {res['errors']} conns {res.get('server_connections')} "
                   f"steal {res.get('steal_share')}"
                   + (f" (client: {res['client_connections']})"
                      if "client_connections" in res else "")))
    for client in runnable:
        rounds = clients[client]["rounds"]
        good = [r for r in rounds if "error" not in r]
        clients[client]["median_req_per_s"] = _median([r["req_per_s"] for r in good])
        clients[client]["median_p50_ms"] = _median([r["p50_ms"] for r in good
                                                   if r["p50_ms"] is not None])
        clients[client]["median_p99_ms"] = _median([r["p99_ms"] for r in good
                                                   if r["p99_ms"] is not None])
        clients[client]["req_per_s_per_round"] = [r.get("req_per_s") for r in rounds]
        clients[client]["median_steal_share"] = _median(
            [r["steal_share"] for r in good if r.get("steal_share") is not None])
        if len(good) < len(rounds):
            clients[client]["failed_rounds"] = len(rounds) - len(good)
        if not good:
            clients[client]["error"] = rounds[0]["error"] if rounds else "no rounds"
    ratios: dict[str, Any] = {}
    for key in (*TARGETS, *CONTEXT_RATIOS):
        num, den = key.split("/")
        if num not in selected or den not in selected:
            continue  # --clients left one out
        per_round: list[float | None] = []
        for rnd in range(args.rounds):
            a = _round_rate(clients.get(num), rnd)
            b = _round_rate(clients.get(den), rnd)
            per_round.append(round(a / b, 3) if a is not None and b else None)
        med = _median([r for r in per_round if r is not None])
        ratios[key] = {"per_round": per_round, "median": med}
        if key in TARGETS:
            goal = TARGETS[key]
            ratios[key].update(target=goal,
                               meets_target=(med >= goal) if med is not None else None)
        if key in STRETCH_GOALS:
            stretch = STRETCH_GOALS[key]
            ratios[key].update(goal=stretch,
                               meets_goal=(med >= stretch) if med is not None else None)
    out: dict[str, Any] = {"url": target.url, "clients": clients, "ratios": ratios}
    if not args.no_h2load:
        out["h2load_same_load"] = _h2load(target.url, args.requests, args.concurrency)
    return out


def _acceptance(targets: dict[str, Any]) -> dict[str, Any]:
    """Each target ratio, at a glance: median, target, met (on nginx if it ran, the real
    server; chaos's median and verdict beside it when both ran)."""
    measured = [name for name in ("nginx", "chaos") if "ratios" in targets.get(name, {})]
    out: dict[str, Any] = {}
    if not measured:
        return out
    main, others = measured[0], measured[1:]
    for key, goal in TARGETS.items():
        ratio = targets[main]["ratios"].get(key)
        if ratio is None:
            continue  # --clients left it out
        med = ratio["median"]
        entry: dict[str, Any] = {"median": med, "target": goal,
                                 "met": med is not None and med >= goal, "server": main}
        if key in STRETCH_GOALS:
            entry["goal"] = STRETCH_GOALS[key]
            entry["goal_met"] = med is not None and med >= STRETCH_GOALS[key]
        if med is None:
            entry["note"] = "not measured (a client failed)"
        for other in others:
            other_med = targets[other]["ratios"].get(key, {}).get("median")
            entry[f"median_{other}"] = other_med
            entry[f"met_{other}"] = other_med is not None and other_med >= goal
        out[key] = entry
    return out


def _round_rate(client: dict[str, Any] | None, rnd: int) -> float | None:
    if not client or "rounds" not in client or rnd >= len(client["rounds"]):
        return None
    r = client["rounds"][rnd]
    return None if "error" in r else cast(float, r["req_per_s"])


CLIENT_DISTS = ("httpx", "httpcore", "h2", "niquests", "urllib3-future", "jh2", "uvloop",
                "pycurl")


def _versions(nginx: str | None, dists: tuple[str, ...] = CLIENT_DISTS) -> dict[str, str | None]:
    """Installed versions of ``dists`` (None: not installed) and of ``nginx``, if given."""
    out: dict[str, str | None] = {}
    for dist in dists:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["nginx"] = None
    if nginx is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            v = subprocess.run([nginx, "-v"], capture_output=True, text=True, timeout=10).stderr
            out["nginx"] = v.strip().rsplit("/", 1)[-1] or None
    return out


def _spin(cpu: int, parent: int) -> int:
    """``--keep-awake``: keep one CPU from halting while the benchmark runs. The spinner has
    the lowest priority there is (SCHED_IDLE, else nice 19): any task that becomes runnable
    on that CPU takes it at once, so it only fills what would be idle time. Ends when its
    parent is gone or after ``KEEP_AWAKE_LIMIT`` seconds."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, {cpu})
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        os.nice(19)
    deadline = time.monotonic() + KEEP_AWAKE_LIMIT
    while os.getppid() == parent and time.monotonic() < deadline:
        for _ in range(100_000):
            pass
    return 0


@contextlib.contextmanager
def _kept_awake(enabled: bool) -> Iterator[dict[str, Any]]:
    """Start one ``_spin`` process per CPU this process may use (if ``enabled``); stop them
    on the way out. Yields what to report about it."""
    info: dict[str, Any] = {"keep_awake": enabled}
    procs: list[subprocess.Popen[bytes]] = []
    if enabled:
        getaffinity = getattr(os, "sched_getaffinity", None)
        cpus = sorted(getaffinity(0)) if getaffinity else list(range(os.cpu_count() or 1))
        for cpu in cpus:
            procs.append(subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), "--spin", str(cpu),
                 "--parent", str(os.getpid())], stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        info["spinners"] = len(procs)
    try:
        yield info
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def _servers_stopped_at_exit() -> Iterator[None]:
    def on_signal(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for server in list(_LIVE):
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=int, default=20_000,
                        help="requests per run for fast clients (slow ones get fewer)")
    parser.add_argument("--rounds", type=int, default=9,
                        help="rounds of every client, alternating (default 9: single rounds "
                             "spread by 30%% or more here, and the median of 3 or 5 moved by "
                             "more than the targets' margins; docs/performance.md)")
    parser.add_argument("--concurrency", type=int, default=50,
                        help="requests in flight (async clients and pycurl)")
    parser.add_argument("--threads", type=int, default=20,
                        help="threads sharing one client (the sync clients)")
    parser.add_argument("--sync-requests", type=int, default=4000,
                        help="requests per run for fast sync clients (slow ones get fewer)")
    parser.add_argument("--clients", default=",".join(CLIENTS),
                        help=f"comma-separated subset to run (default all: {','.join(CLIENTS)})")
    parser.add_argument("--target", choices=("nginx", "chaos", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="size each client's runs to take about this long")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop of the clients (asyncio: what asyncio.run gives)")
    parser.add_argument("--no-h2load", action="store_true",
                        help="skip the h2load reference run against each target")
    parser.add_argument("--nginx", metavar="PATH",
                        help="the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument("--keep-awake", action="store_true",
                        help="run a lowest-priority (SCHED_IDLE) busy loop on every CPU, so "
                        "that no CPU halts while it waits: on a virtual machine, waking a "
                        "halted CPU goes through the host, which shows as steal time and "
                        "slows the clients that talk to a server on this machine (not the "
                        "in-process httpx-instant). Like booting with idle=poll. Over a long "
                        "run the host may slow the whole machine for it (every client, the "
                        "reference too; docs/performance.md). Each run reports its "
                        "steal_share either way")
    parser.add_argument("--spin", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--max-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.spin is not None:
        return _spin(args.spin, args.parent)
    if args.worker:
        return worker_main(args)
    if (min(args.requests, args.rounds, args.concurrency, args.threads, args.sync_requests) < 1
            or args.seconds <= 0):
        parser.error("--requests, --sync-requests, --rounds, --concurrency, --threads and "
                     "--seconds must be positive")
    chosen = [c.strip() for c in args.clients.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CLIENTS]
    if unknown or not chosen:
        parser.error(f"--clients: unknown {', '.join(unknown) or '(none given)'}; "
                     f"choose from {','.join(CLIENTS)}")
    args.clients = tuple(dict.fromkeys(chosen))
    if args.loop == "uvloop":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            parser.error("uvloop is not installed (pip install 'h2guard[speed]')")

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    report: dict[str, Any] = {
        "benchmark": "client_throughput",
        "load": {"requests_max": args.requests, "concurrency": args.concurrency,
                 "sync_requests_max": args.sync_requests, "sync_threads": args.threads,
                 "connections_per_client": 1, "path": PATH, "rounds": args.rounds,
                 "seconds_per_run": args.seconds, "method": "GET",
                 "clients": list(args.clients)},
        "environment": {"python": sys.version.split()[0], "cpus": os.cpu_count(),
                        "loop": args.loop,
                        "versions": _versions(_nginx_binary(args.nginx))},
        "targets": {},
        "acceptance": {},
        "goals": TARGETS,
        "stretch_goals": STRETCH_GOALS,
        "reference_measured_elsewhere": REFERENCE,
    }
    names = ("nginx", "chaos") if args.target == "both" else (args.target,)
    workdir = Path(tempfile.mkdtemp(prefix="h2guard-client-bench-"))
    try:
        with _servers_stopped_at_exit(), _kept_awake(args.keep_awake) as awake:
            report["environment"].update(awake)
            for name in names:
                try:
                    if name == "nginx":
                        server, url = start_nginx(workdir, args.nginx)
                        target = Target(name, url, server, access_log=workdir / "access.log")
                    else:
                        server, url, control = start_chaos(workdir)
                        target = Target(name, url, server, control_port=control)
                except RuntimeError as exc:
                    report["targets"][name] = {"error": str(exc)}
                    log(f"{name}: {exc}")
                    continue
                log(f"{name}: {url}")
                try:
                    report["targets"][name] = bench_target(target, args, log)
                finally:
                    server.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report["acceptance"] = _acceptance(report["targets"])
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
