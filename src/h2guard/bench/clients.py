"""The bench's clients: each one sends the same planned requests its own way and reports one
outcome per logical request.

Python clients run in the bench's own process on its event loop (``h2guard``, ``httpx``,
``httpx-naive-retry``, ``niquests``); the others are driver programs in the repository, run as
subprocesses that print one JSON line per request (:mod:`h2guard.bench.drivers`). Every client
is set up as a typical service would set it up, with its library's defaults: the bench measures
what a library does by itself, so no adapter adds a retry the library does not have (the one
exception is the point of ``httpx-naive-retry``: the blind retry loop people add to httpx).

An outcome record is ``{"id", "status", "error", "start", "end", "bytes"}``: ``status`` the HTTP
status or ``None``, ``error`` the client's own error text (what a user would find in a log),
``start``/``end`` wall-clock seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

from h2guard.bench import drivers

__all__ = [
    "CLIENTS",
    "PYTHON_CLIENTS",
    "QUICK_CLIENTS",
    "Client",
    "ClientInfo",
    "ClientRun",
    "get_client",
]

Record = dict[str, object]
OnRecord = Callable[[Record], None]


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What the scoreboard says about a client, available or not."""

    name: str
    title: str
    language: str
    available: bool
    version: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "title": self.title, "language": self.language,
                "version": self.version, "available": self.available, "reason": self.reason}


@dataclass(slots=True)
class ClientRun:
    """One cell's outcomes as the client reported them."""

    records: list[Record] = field(default_factory=list)
    problem: str | None = None


class Client(Protocol):
    """A client adapter: ``probe`` is fast, ``prepare`` may build, ``run`` sends a plan."""

    name: str

    def probe(self) -> ClientInfo: ...
    def prepare(self) -> ClientInfo: ...
    async def run(self, spec: Mapping[str, Any], *, on_record: OnRecord | None,
                  limit_s: float) -> ClientRun: ...


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _error_text(exc: BaseException) -> str:
    """``Type: message`` on one line, the way it shows in a service's log. httpx re-raises
    some h2 errors whose message is only a stream id (``LocalProtocolError: 9``): those get
    the wrapped error's type, so the scoreboard can tell them apart."""
    text = " ".join(str(exc).split()) or repr(exc)
    if text.isdigit():
        cause = exc.__cause__ or exc.__context__
        inner = type(cause).__name__ if cause is not None else "error"
        text = f"{inner} on stream {text}"
    return f"{type(exc).__name__}: {text}"


Send = Callable[[Mapping[str, Any]], Awaitable[tuple[int, int]]]


async def drive(spec: Mapping[str, Any], send: Send, *, on_record: OnRecord | None,
                limit_s: float) -> ClientRun:
    """Run the spec's waves through ``send`` (one request -> (status, body bytes)):
    at most ``concurrency`` at once, ``gap_s`` between waves, ``timeout_s`` per request, the
    whole run bounded by ``limit_s``. Every request gets exactly one record."""
    run = ClientRun()
    concurrency = int(spec["concurrency"])
    timeout = float(spec["timeout_s"])
    gap = float(spec["gap_s"])
    waves: Sequence[Sequence[Mapping[str, Any]]] = spec["waves"]

    def report(rec: Record) -> None:
        run.records.append(rec)
        if on_record is not None:
            on_record(rec)

    async def one(req: Mapping[str, Any]) -> None:
        start = time.time()
        rec: Record = {"id": req["id"], "status": None, "error": None, "start": start,
                       "end": start, "bytes": 0}
        try:
            status, nbytes = await asyncio.wait_for(send(req), timeout)
            rec["status"] = status
            rec["bytes"] = nbytes
        except TimeoutError:
            rec["error"] = f"TimeoutError: no response within {timeout:g} s"
        except asyncio.CancelledError:
            rec["error"] = "cancelled: the bench's time limit for this cell ran out"
            rec["end"] = time.time()
            report(rec)
            raise
        except Exception as exc:
            rec["error"] = _error_text(exc)
        rec["end"] = time.time()
        report(rec)

    async def wave(reqs: Sequence[Mapping[str, Any]]) -> None:
        queue = list(reversed(reqs))

        async def worker() -> None:
            while queue:
                await one(queue.pop())

        await asyncio.gather(*(worker() for _ in range(min(concurrency, len(reqs)))))

    async def all_waves() -> None:
        for i, reqs in enumerate(waves):
            if i:
                await asyncio.sleep(gap)
            await wave(reqs)

    try:
        await asyncio.wait_for(all_waves(), limit_s)
    except TimeoutError:
        run.problem = f"stopped after the cell's limit of {limit_s:.0f} s"
    return run


def _body(req: Mapping[str, Any]) -> bytes | None:
    size = int(req.get("body_size", 0))
    return b"x" * size if size else None


def _headers(req: Mapping[str, Any]) -> dict[str, str]:
    headers = {"x-request-id": str(req["id"])}
    if req.get("body_size"):
        headers["content-type"] = "application/octet-stream"
    return headers


def _sender(client: Any, base: str, retry_on: type[Exception] | None = None,
            retries: int = 0) -> Send:
    """``send`` for an httpx-style client: one request, the whole body read; with
    ``retries``, the blind loop (any ``retry_on`` error, 50 ms then 100 ms...)."""

    async def send(req: Mapping[str, Any]) -> tuple[int, int]:
        for attempt in range(retries + 1):
            try:
                resp = await client.request(str(req["method"]), base + str(req["path"]),
                                            content=_body(req), headers=_headers(req))
                return int(resp.status_code), len(resp.content)
            except Exception as exc:
                if retry_on is None or not isinstance(exc, retry_on) or attempt == retries:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    return send


class _Httpx:
    """``httpx.AsyncClient(http2=True)`` with its defaults; ``retries`` > 0 wraps each call in
    the blind loop people write (retry any ``httpx.TransportError``, small backoff)."""

    def __init__(self, name: str, title: str, *, retries: int = 0) -> None:
        self.name = name
        self.title = title
        self.retries = retries

    def probe(self) -> ClientInfo:
        try:
            import h2  # noqa: F401  (httpx's HTTP/2 needs it)
        except ImportError:
            return ClientInfo(self.name, self.title, "Python", False,
                              reason="httpx[http2] is not installed: pip install 'httpx[http2]'")
        return ClientInfo(self.name, self.title, "Python", True, f"httpx {_version('httpx')}")

    def prepare(self) -> ClientInfo:
        return self.probe()

    async def run(self, spec: Mapping[str, Any], *, on_record: OnRecord | None,
                  limit_s: float) -> ClientRun:
        import httpx

        verify = ssl.create_default_context(cafile=str(spec["ca_file"]))
        async with httpx.AsyncClient(http2=True, verify=verify,
                                     timeout=float(spec["timeout_s"])) as client:
            send = _sender(client, str(spec["url"]), httpx.TransportError, self.retries)
            return await drive(spec, send, on_record=on_record, limit_s=limit_s)


class _H2guard:
    name = "h2guard"
    title = "h2guard.AsyncClient (Idempotency-Keys on)"

    def probe(self) -> ClientInfo:
        from h2guard import __version__

        return ClientInfo(self.name, self.title, "Python", True, f"h2guard {__version__}")

    def prepare(self) -> ClientInfo:
        return self.probe()

    async def run(self, spec: Mapping[str, Any], *, on_record: OnRecord | None,
                  limit_s: float) -> ClientRun:
        import h2guard

        verify = ssl.create_default_context(cafile=str(spec["ca_file"]))
        base = str(spec["url"])
        # keys on: the bench's server honours Idempotency-Key, as a service running
        # h2guard.idempotency does; everything else is h2guard's defaults
        policy = h2guard.RetryPolicy(idempotency_keys=True)
        async with h2guard.AsyncClient(verify=verify, policy=policy,
                                       timeout=float(spec["timeout_s"])) as client:
            return await drive(spec, _sender(client, base), on_record=on_record,
                               limit_s=limit_s)


class _Niquests:
    name = "niquests"
    title = "niquests.AsyncSession (HTTP/2)"

    def probe(self) -> ClientInfo:
        version = _version("niquests")
        if version is None:
            return ClientInfo(self.name, self.title, "Python", False,
                              reason="niquests is not installed: pip install 'h2guard[bench]'")
        return ClientInfo(self.name, self.title, "Python", True, f"niquests {version}")

    def prepare(self) -> ClientInfo:
        return self.probe()

    async def run(self, spec: Mapping[str, Any], *, on_record: OnRecord | None,
                  limit_s: float) -> ClientRun:
        import niquests

        base = str(spec["url"])
        timeout = float(spec["timeout_s"])
        ca_file = str(spec["ca_file"])
        session = niquests.AsyncSession()
        try:
            async def send(req: Mapping[str, Any]) -> tuple[int, int]:
                resp = await session.request(str(req["method"]), base + str(req["path"]),
                                             data=_body(req), headers=_headers(req),
                                             timeout=timeout, verify=ca_file)
                return int(resp.status_code or 0), len(resp.content or b"")

            return await drive(spec, send, on_record=on_record, limit_s=limit_s)
        finally:
            with contextlib.suppress(Exception):
                await session.close()


class _External:
    """A driver program (:mod:`h2guard.bench.drivers`) as a client."""

    def __init__(self, name: str) -> None:
        self.name = name

    @staticmethod
    def _info(info: drivers.DriverInfo) -> ClientInfo:
        return ClientInfo(info.name, info.title, info.language, info.available, info.version,
                          info.reason)

    def probe(self) -> ClientInfo:
        return self._info(drivers.probe(self.name))

    def prepare(self) -> ClientInfo:
        return self._info(drivers.prepare(self.name))

    async def run(self, spec: Mapping[str, Any], *, on_record: OnRecord | None,
                  limit_s: float) -> ClientRun:
        done = await drivers.run(self.name, spec, on_record=on_record, limit_s=limit_s)
        return ClientRun(list(done.records), done.problem)


PYTHON_CLIENTS: tuple[str, ...] = ("h2guard", "httpx", "httpx-naive-retry", "niquests")
CLIENTS: tuple[str, ...] = (*PYTHON_CLIENTS, *drivers.EXTERNAL_CLIENTS)
"""Every client the bench knows, in the scoreboard's row order."""
QUICK_CLIENTS: tuple[str, ...] = tuple(c for c in CLIENTS if c != "okhttp")
"""``--quick`` leaves out OkHttp: a second JVM client, slow to start, which the full run has."""


def get_client(name: str) -> Client:
    """The adapter for ``name`` (one of :data:`CLIENTS`); ``KeyError`` otherwise."""
    if name == "h2guard":
        return _H2guard()
    if name == "httpx":
        return _Httpx("httpx", "httpx.AsyncClient(http2=True)")
    if name == "httpx-naive-retry":
        return _Httpx("httpx-naive-retry", "httpx + retry on TransportError (3 tries)",
                      retries=2)
    if name == "niquests":
        return _Niquests()
    if name in drivers.EXTERNAL_CLIENTS:
        return _External(name)
    raise KeyError(name)
