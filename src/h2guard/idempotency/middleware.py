"""``IdempotencyMiddleware``: the server's half of a safe retry.

A reset that lands after the server ran a POST leaves the client unable to know whether it
happened; a retry with the same ``Idempotency-Key`` must then have no second effect. This pure
ASGI middleware (Starlette, FastAPI, Litestar, Quart or a bare ASGI app) implements the IETF
draft "The Idempotency-Key HTTP Header Field":

* the first request with a key claims it in the store, runs the handler, and stores the response
  (status, headers, body) *before* sending it, so a client that saw the response can never find
  the key unclaimed;
* the same key again, same request: the stored response, replayed exactly, with
  ``Idempotent-Replayed: true``; while the first still runs: ``409`` with Retry-After;
* the same key with a different request (method, path, body, chosen headers): ``422``;
* a malformed or oversize key (over 255 characters): ``400``; a missing key where
  ``require_key`` says one is needed: ``400``;
* keys are scoped per principal (by default a digest of the Authorization header), so one
  client can never read another's stored response;
* records expire (``ttl``, default 24 h, cleaned up every ``cleanup_interval``); a claim whose
  handler crashed or whose process died expires after ``lock_ttl``, then the key can run again;
* a response larger than ``max_response_body`` is sent whole but stored without its body: a
  replay gets the same status and headers, an empty body and ``Idempotency-Body-Omitted:
  true`` (the handler still never runs twice);
* a store that cannot answer gives ``503`` with Retry-After and the handler does not run
  (fail closed); ``fail_open=True`` runs it unguarded instead, and says so in an event;
* because the response is stored before it is sent, a response is held back until it is
  complete (or until it passes ``max_response_body``, from where it streams): a slow streaming
  response under the limit reaches the client only at its end.

Events (``idempotency.*`` on ``events``) feed :class:`h2guard.metrics.IdempotencyMetrics`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, MutableMapping
from typing import Any, TypeVar

import anyio

from h2guard.events import EventLog
from h2guard.idempotency.fingerprint import (
    fingerprint,
    parse_key,
    principal_from_authorization,
)
from h2guard.idempotency.store import IdempotencyStore, StoredResponse

__all__ = ["IdempotencyMiddleware", "parse_key", "principal_from_authorization"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
_T = TypeVar("_T")

def _problem(status: int, title: str, detail: str,
             extra_headers: list[tuple[bytes, bytes]] | None = None) -> StoredResponse:
    body = json.dumps({"type": "about:blank", "title": title, "status": status,
                       "detail": detail}).encode()
    headers = [(b"content-type", b"application/problem+json"),
               (b"content-length", str(len(body)).encode())]
    return StoredResponse(status, headers + (extra_headers or []), body)


class IdempotencyMiddleware:
    """Wrap an ASGI app: ``app = IdempotencyMiddleware(app, store=SQLiteStore(...))``.

    ``methods`` (POST, PATCH) are guarded; ``require_key`` is False (optional everywhere), True
    (required for every guarded request), a collection of path prefixes, or a function of the
    path. ``fingerprint_headers`` are request headers that must match for a replay (the body,
    method and path always must). ``principal(scope)`` scopes keys. ``store_timeout`` bounds
    every store call.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore | None = None,
        methods: Collection[str] = ("POST", "PATCH"),
        require_key: bool | Collection[str] | Callable[[str], bool] = False,
        header: str = "Idempotency-Key",
        fingerprint_headers: Collection[str] = ("content-type",),
        principal: Callable[[Scope], str] = principal_from_authorization,
        ttl: float = 24 * 3600.0,
        lock_ttl: float = 60.0,
        max_request_body: int = 10 << 20,
        max_response_body: int = 1 << 20,
        fail_open: bool = False,
        store_timeout: float = 2.0,
        retry_after: int = 1,
        replay_header: str = "Idempotent-Replayed",
        cleanup_interval: float = 300.0,
        events: EventLog | None = None,
    ) -> None:
        if store is None:
            from h2guard.idempotency.stores.sqlite import SQLiteStore

            store = SQLiteStore()
        if ttl <= 0 or lock_ttl <= 0 or store_timeout <= 0:
            raise ValueError("ttl, lock_ttl and store_timeout must be positive")
        # a lone string is one item, not a collection of characters (methods="POST" would
        # otherwise guard nothing at all)
        if isinstance(methods, str):
            methods = (methods,)
        if isinstance(fingerprint_headers, str):
            fingerprint_headers = (fingerprint_headers,)
        self.app = app
        self.store = store
        self.methods = frozenset(m.upper() for m in methods)
        self._required = self._requirement(require_key)
        self.header = header.lower().encode("latin-1")
        self.header_name = header
        self.fingerprint_headers = tuple(sorted(h.lower().encode("latin-1")
                                                for h in fingerprint_headers))
        self.principal = principal
        self.ttl = ttl
        self.lock_ttl = lock_ttl
        self.max_request_body = max_request_body
        self.max_response_body = max_response_body
        self.fail_open = fail_open
        self.store_timeout = store_timeout
        self.retry_after = str(retry_after).encode()
        self.replay_header = replay_header.lower().encode("latin-1")
        self.cleanup_interval = cleanup_interval
        self.events = events if events is not None else EventLog(maxlen=10_000)
        self._next_cleanup = time.monotonic() + cleanup_interval

    @staticmethod
    def _requirement(spec: bool | Collection[str] | Callable[[str], bool]
                     ) -> Callable[[str], bool]:
        if isinstance(spec, bool):
            return lambda path: spec
        if callable(spec):
            return spec
        prefixes = (spec,) if isinstance(spec, str) else tuple(spec)
        return lambda path: path.startswith(prefixes)

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        raw_key = None
        for name, value in scope.get("headers", ()):
            if name.lower() == self.header:
                raw_key = bytes(value).decode("latin-1")
                break
        path = scope.get("path", "")
        if raw_key is None:
            if self._required(path):
                self._emit("idempotency.rejected", path=path, reason="missing")
                await _send_stored(send, _problem(
                    400, f"{self.header_name} required",
                    f"{scope['method']} {path} needs an {self.header_name} header so that a "
                    "retry cannot apply it twice."))
                return
            await self.app(scope, receive, send)
            return
        try:
            key = parse_key(raw_key)
        except ValueError as exc:
            self._emit("idempotency.rejected", path=path, reason=str(exc))
            await _send_stored(send, _problem(400, f"Malformed {self.header_name}", str(exc)))
            return
        body, too_large = await self._read_body(receive)
        if body is None:  # the client went away, or the body was too large
            if too_large:
                self._emit("idempotency.rejected", path=path, reason="request body too large")
                await _send_stored(send, _problem(
                    413, "Request body too large",
                    f"requests with an {self.header_name} may carry at most "
                    f"{self.max_request_body} bytes here"))
            return
        digest = fingerprint(scope, body, headers=self.fingerprint_headers)
        store_key = hashlib.sha256(
            f"{self.principal(scope)}\x1f{key}".encode()).hexdigest()
        token = secrets.token_hex(16)
        await self._maybe_cleanup()
        try:
            claim = await self._store_call("claim", lambda: self.store.claim(
                store_key, digest, token=token, lock_ttl=self.lock_ttl, ttl=self.ttl))
        except Exception:  # StoreError, a timeout, or a broken store: fail closed
            await self._store_down(scope, body, receive, send)
            return
        if claim.fingerprint != digest and claim.outcome != "claimed":
            self._emit("idempotency.mismatch", path=path)
            await _send_stored(send, _problem(
                422, f"{self.header_name} reused with a different request",
                f"this {self.header_name} was first used with another method, path, body or "
                "headers; use a new key for a new request"))
            return
        if claim.outcome == "in_progress":
            self._emit("idempotency.conflict", path=path)
            await _send_stored(send, _problem(
                409, "Request in progress",
                f"the first request with this {self.header_name} is still being processed; "
                "retry later for its response", [(b"retry-after", self.retry_after)]))
            return
        if claim.outcome == "completed":
            assert claim.response is not None
            self._emit("idempotency.replayed", path=path, status=claim.response.status)
            await _send_stored(send, claim.response, replay=self.replay_header)
            return
        self._emit("idempotency.claimed", path=path)
        await self._run(scope, body, receive, send, store_key, token)

    # ------------------------------------------------------------------ steps

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, bool]:
        """The whole request body (it is part of the fingerprint); None if the client went
        away, or (None, True) when it is over ``max_request_body``."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, False
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > self.max_request_body:
                return None, True
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), False

    async def _run(self, scope: Scope, body: bytes, receive: Receive, send: Send,
                   store_key: str, token: str) -> None:
        """Run the handler; store its response before the client sees it."""
        replay_receive = _replaying(body, receive)
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        streaming = False  # too large to store: passed straight through

        async def capture(message: Message) -> None:
            nonlocal start, size, streaming
            kind = message["type"]
            if streaming:
                await send(message)
                return
            if kind == "http.response.start":
                start = message
                return
            if kind != "http.response.body" or start is None:
                await send(message)  # anything else (trailers, extensions): not stored
                return
            chunk = bytes(message.get("body", b""))
            more = bool(message.get("more_body", False))
            chunks.append(chunk)
            size += len(chunk)
            headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", ())]
            if size > self.max_response_body:
                streaming = True
                await self._complete(store_key, token, StoredResponse(
                    int(start["status"]), headers, b"", body_omitted=True), scope)
                await send(start)
                await send({"type": "http.response.body", "body": b"".join(chunks),
                            "more_body": more})
                return
            if not more:
                whole = b"".join(chunks)
                await self._complete(store_key, token,
                                     StoredResponse(int(start["status"]), headers, whole), scope)
                await send(start)
                await send({"type": "http.response.body", "body": whole, "more_body": False})

        # An exception leaves the claim in place: it expires after lock_ttl (crash safety).
        await self.app(scope, replay_receive, capture)

    async def _complete(self, store_key: str, token: str, response: StoredResponse,
                        scope: Scope) -> None:
        try:
            kept = await self._store_call("complete", lambda: self.store.complete(
                store_key, token, response, ttl=self.ttl))
        except Exception:
            # the handler ran: the client still gets its response; a retry after lock_ttl
            # would run it again, so the store_error event is loud
            return
        if response.body_omitted:
            self._emit("idempotency.too_large", path=scope.get("path", ""))
        if not kept:
            self._emit("idempotency.claim_lost", path=scope.get("path", ""),
                       detail=f"the handler outlived lock_ttl={self.lock_ttl:g} s and the key "
                              "was claimed again")

    async def _store_call(self, op: str, call: Callable[[], Awaitable[_T]]) -> _T:
        """One store operation, bounded by ``store_timeout``; its latency (or its failure, which
        is re-raised) becomes an event."""
        started = time.perf_counter()
        try:
            with anyio.fail_after(self.store_timeout):
                result = await call()
        except Exception as exc:
            self._emit("idempotency.store_error", op=op, error=_one_line(exc),
                       seconds=time.perf_counter() - started)
            raise
        self._emit("idempotency.store", op=op, seconds=time.perf_counter() - started)
        return result

    async def _store_down(self, scope: Scope, body: bytes, receive: Receive,
                          send: Send) -> None:
        if self.fail_open:
            self._emit("idempotency.unguarded", path=scope.get("path", ""))
            await self.app(scope, _replaying(body, receive), send)
            return
        await _send_stored(send, _problem(
            503, "Idempotency store unavailable",
            f"the {self.header_name} store did not answer, so the request was not run; "
            "retry with the same key", [(b"retry-after", self.retry_after)]))

    async def _maybe_cleanup(self) -> None:
        now = time.monotonic()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + self.cleanup_interval
        try:
            purged = await self._store_call("purge", self.store.purge_expired)
        except Exception:  # reported as a store_error event; cleanup waits for the next turn
            return
        if purged:
            self._emit("idempotency.purged", records=purged)

    def _emit(self, name: str, **data: Any) -> None:
        self.events.emit(name, **data)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` for the app: the body already read (for the fingerprint) in one message,
    then the real channel (so the app still sees a disconnect)."""
    delivered = False

    async def replay_receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay_receive


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300]


async def _send_stored(send: Send, response: StoredResponse, *,
                       replay: bytes | None = None) -> None:
    headers = list(response.headers)
    if replay is not None:
        headers.append((replay, b"true"))
        if response.body_omitted:
            headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            headers += [(b"content-length", b"0"), (b"idempotency-body-omitted", b"true")]
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body, "more_body": False})
