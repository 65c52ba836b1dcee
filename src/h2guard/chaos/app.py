"""The chaos server's built-in app: a handful of endpoints that make failures countable.

``GET|POST /echo``, ``GET /bytes/N``, ``GET /delay/MS``, ``GET /status/CODE``, ``POST /orders``
(one side effect in the ledger) and ``GET /ledger``. The app is synchronous and allocation-light
on purpose: the fault engine, not the app, is what a chaos run measures. ``/delay`` returns a
:class:`Deferred` that the connection schedules on its event loop instead of blocking it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from h2guard.chaos.ledger import Ledger

__all__ = ["MAX_BYTES", "MAX_DELAY_MS", "App", "Body", "Deferred", "Request", "Response"]

MAX_BYTES = 1 << 30
"""Largest ``/bytes/N`` body (1 GiB): generated lazily, never held in memory whole."""
MAX_DELAY_MS = 300_000
_BLOCK = bytes(range(256)) * 256  # 64 KiB of a recognisable pattern for /bytes


@dataclass(slots=True)
class Request:
    """What the app sees of a request: enough to route, echo and record."""

    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stream_id: int
    connection_id: int
    http_version: str = "2"

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode("latin-1")
        return None


class Body:
    """A response body produced in chunks, so that ``/bytes/50000000`` costs 64 KiB of RAM."""

    __slots__ = ("_data", "length")

    def __init__(self, length: int, data: bytes | None = None) -> None:
        self.length = length
        self._data = data

    def chunks(self, size: int) -> Iterator[bytes]:
        """Chunks of at most ``size`` bytes, in order."""
        if self._data is not None:
            for start in range(0, self.length, size):
                yield self._data[start : start + size]
            return
        left = self.length
        size = min(size, len(_BLOCK))
        while left > 0:
            n = min(size, left)
            yield _BLOCK[:n]
            left -= n


@dataclass(slots=True)
class Response:
    """A response; treat it as immutable: the app hands the same object to many requests."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | Body = b""
    _wire: list[tuple[bytes, bytes]] | None = None

    @property
    def length(self) -> int:
        return self.body.length if isinstance(self.body, Body) else len(self.body)

    @property
    def h2_headers(self) -> list[tuple[bytes, bytes]]:
        """``:status`` and the headers, built once."""
        wire = self._wire
        if wire is None:
            wire = self._wire = [(b":status", str(self.status).encode()), *self.headers]
        return wire


@dataclass(slots=True)
class Deferred:
    """A response that is ready after ``delay`` seconds (``/delay/MS``)."""

    delay: float
    response: Response


def _json(status: int, payload: Any) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(status, [(b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())], body)


def _text(status: int, text: str) -> Response:
    body = text.encode()
    return Response(status, [(b"content-type", b"text/plain; charset=utf-8"),
                             (b"content-length", str(len(body)).encode())], body)


_MAX_KEYS = 100_000

_ENDPOINTS = {
    "GET /echo": "request details as JSON",
    "POST /echo": "the request body, echoed",
    "GET /bytes/N": f"N bytes (at most {MAX_BYTES})",
    "GET /delay/MS": f"a response after MS milliseconds (at most {MAX_DELAY_MS})",
    "GET /status/CODE": "an empty response with that status",
    "POST /orders": "one side effect in the ledger (send Idempotency-Key or X-Request-Id)",
    "GET /ledger": "effects so far: totals, per key, duplicates",
}


class App:
    """Routes a complete request to a response. Pure apart from the ledger."""

    def __init__(self, ledger: Ledger, *, honour_idempotency_keys: bool = False) -> None:
        self.ledger = ledger
        self._static: dict[str, Response] = {}
        # A stand-in for a server with idempotency support (h2guard.idempotency is the real
        # middleware): POST /orders with a key seen before replays the stored response and
        # records no new effect. Bounded: the oldest keys are forgotten first.
        self.honour_keys = honour_idempotency_keys
        self._replies: dict[str, Response] = {}

    def __call__(self, req: Request) -> Response | Deferred:
        if req.method == "GET":
            cached = self._static.get(req.path)
            if cached is not None:
                return cached
        method, path = req.method, req.path.split("?", 1)[0]
        if method == "GET" and (path.startswith(("/bytes/", "/status/"))):
            # pure functions of the path: build once, serve the same object again
            response = self._route(req, method, path)
            if isinstance(response, Response) and len(self._static) < 4096 and \
                    not isinstance(response.body, Body):
                self._static[req.path] = response
            return response
        return self._route(req, method, path)

    def _route(self, req: Request, method: str, path: str) -> Response | Deferred:
        if path == "/echo":
            if method in ("POST", "PUT", "PATCH"):
                ctype = req.header(b"content-type") or "application/octet-stream"
                return Response(200, [(b"content-type", ctype.encode("latin-1")),
                                      (b"content-length", str(len(req.body)).encode())],
                                req.body)
            return _json(200, {
                "method": method, "path": req.path, "http_version": req.http_version,
                "stream_id": req.stream_id, "connection_id": req.connection_id,
                "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers},
                "body_length": len(req.body),
            })
        if path.startswith("/bytes/"):
            n = _int(path[7:])
            if n is None or not 0 <= n <= MAX_BYTES:
                return _text(400, f"/bytes/N takes N from 0 to {MAX_BYTES}\n")
            body: bytes | Body = _BLOCK[:n] if n <= len(_BLOCK) else Body(n)
            return Response(200, [(b"content-type", b"application/octet-stream"),
                                  (b"content-length", str(n).encode())], body)
        if path.startswith("/delay/"):
            ms = _int(path[7:])
            if ms is None or not 0 <= ms <= MAX_DELAY_MS:
                return _text(400, f"/delay/MS takes MS from 0 to {MAX_DELAY_MS}\n")
            return Deferred(ms / 1000.0, _json(200, {"delayed_ms": ms}))
        if path.startswith("/status/"):
            code = _int(path[8:])
            if code is None or not 200 <= code <= 599:
                return _text(400, "/status/CODE takes CODE from 200 to 599\n")
            return Response(code, [(b"content-length", b"0")], b"")
        if path == "/orders":
            if method != "POST":
                return _text(405, "use POST /orders\n")
            key = req.header(b"idempotency-key")
            if key is not None and self.honour_keys:
                stored = self._replies.get(key)
                if stored is not None:
                    return Response(stored.status,
                                    [*stored.headers, (b"idempotent-replayed", b"true")],
                                    stored.body)
            rid = req.header(b"x-request-id")
            effect = self.ledger.record(request_id=rid, idempotency_key=key,
                                        stream_id=req.stream_id,
                                        connection_id=req.connection_id)
            reply = _json(201, {"order": effect.seq, "request_id": effect.request_id,
                                "idempotency_key": key, "stream_id": req.stream_id,
                                "connection_id": req.connection_id})
            if key is not None and self.honour_keys:
                if len(self._replies) >= _MAX_KEYS:
                    del self._replies[next(iter(self._replies))]
                self._replies[key] = reply
            return reply
        if path == "/ledger":
            return _json(200, self.ledger.summary())
        if path == "/":
            return _json(200, {"server": "h2guard chaos", "endpoints": _ENDPOINTS})
        return _json(404, {"error": f"no endpoint {method} {path}", "endpoints": _ENDPOINTS})


def _int(text: str) -> int | None:
    try:
        return int(text, 10)
    except ValueError:
        return None
