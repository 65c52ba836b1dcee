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
* keys are scoped per principal (by default a digest of the Authorization header, its scheme
  compared case-insensitively), so one client can never read another's stored response;
* records expire (``ttl``, default 24 h, cleaned up every ``cleanup_interval``);
* **server errors** (``store_server_errors``, default False): a 5xx response, or an exception
  that escaped the handler before its response was complete, is *not* stored: the key is
  released at once and the client's retry with the same key runs the handler again. With
  ``store_server_errors=True`` (Stripe's rule: once the handler has started, whatever came out
  is the key's result) a 5xx is stored and replayed for ``ttl`` like any response, and an
  exception is stored (and sent, if nothing was sent yet) as a ``500`` problem+json; a retry
  then gets that 500 until the record expires, and only a new key runs the handler again. See
  :class:`IdempotencyMiddleware` for why False is the default;
* a claim whose process died, or whose handler was cancelled (the client went away and the
  server cancelled the task), is left in place and lapses after ``lock_ttl`` (60 s): until
  then a retry gets 409, afterwards the key can run again;
* a response larger than ``max_response_body`` is sent whole but stored without its body: a
  replay gets the same status and headers, an empty body and ``Idempotency-Body-Omitted:
  true`` (the handler still never runs twice);
* a store that cannot answer gives ``503`` with Retry-After and the handler does not run
  (fail closed); ``fail_open=True`` runs it unguarded instead, and says so in an event;
* because the response is stored before it is sent, a response is held back until it is
  complete (or until it passes ``max_response_body``, from where it streams): a slow streaming
  response under the limit reaches the client only at its end.

The default store is a SQLite file of the application's own (see ``name`` and
:func:`h2guard.idempotency.stores.sqlite.default_path`): ``~/.local/state/h2guard/idempotency/
<name>.sqlite3`` on Linux; its path is logged at INFO when it is first opened.

Events (``idempotency.*`` on ``events``) feed :class:`h2guard.metrics.IdempotencyMetrics`.
Log records go to the ``h2guard.idempotency`` logger: WARNING for every store error and every
lost claim (naming the key by its hash, never the key, and saying what was done: 503, run
unguarded, sent but not stored), INFO when a server error releases a key or is stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar

import anyio

from h2guard.events import EventLog
from h2guard.idempotency.fingerprint import (
    fingerprint,
    parse_key,
    principal_from_authorization,
)
from h2guard.idempotency.store import IdempotencyStore, StoredResponse

__all__ = ["IdempotencyMiddleware", "app_name", "parse_key", "principal_from_authorization"]

log = logging.getLogger("h2guard.idempotency")

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


# ---------------------------------------------------------------------------- the app's name

# Packages whose classes and functions say nothing about *which* application they serve: a
# Starlette() object, the next middleware of a framework's stack, a router.
_GENERIC = frozenset({
    "a2wsgi", "asgiref", "blacksheep", "channels", "django", "falcon", "fastapi", "flask",
    "functools", "h2guard", "hypercorn", "litestar", "opentelemetry", "prometheus_client",
    "quart", "sanic", "sentry_sdk", "starlette", "uvicorn",
})
_INNER = ("app", "router", "func", "__wrapped__")  # where wrappers keep what they wrap


def _module(name: str) -> str:
    if name in ("__main__", "__mp_main__"):
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        return Path(main).stem if main else "main"
    return name


def _qualified(obj: Any) -> str | None:
    target = obj if callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return f"{_module(module)}.{qualname}"


def _generic(dotted: str) -> bool:
    return dotted.split(".", 1)[0] in _GENERIC


def _endpoints(obj: Any) -> Iterator[Any]:
    routes = getattr(obj, "routes", None)
    if isinstance(routes, list | tuple):
        for route in routes:
            endpoint = getattr(route, "endpoint", None)
            if endpoint is not None:
                yield endpoint


def app_name(app: object) -> str:
    """What identifies ``app`` among the applications of one host, for naming its default
    store: the first of its layers that is the application's own code.

    Wrappers (middleware, routers, ``functools.partial``) are looked through via their
    ``app`` / ``router`` / ``func`` / ``__wrapped__`` attributes; a layer that is a framework's
    own class (Starlette, FastAPI, ...) is skipped, and a router's routes name the module of
    their endpoints instead. So a function or class of your own gives ``module.qualname``
    (``orders.api.app``), a FastAPI or Starlette application the module of its first route
    (``orders.api``); a script's ``__main__`` is named after its file. Deterministic: every
    worker process of one application, and every restart, gets the same name. Two
    applications on one host that are *the same code* at different paths (two checkouts with a
    ``main:app``) get the same name too: pass ``name=`` to tell them apart.
    """
    seen: set[int] = set()
    layer: Any = app
    for _ in range(32):
        if id(layer) in seen:
            break
        seen.add(id(layer))
        own = _qualified(layer)
        if own is not None and not _generic(own):
            return own
        for endpoint in _endpoints(layer):
            module = getattr(endpoint, "__module__", None)
            if isinstance(module, str) and not _generic(module):
                return _module(module)
        inner = next((getattr(layer, attr) for attr in _INNER
                      if getattr(layer, attr, None) is not None), None)
        if inner is None:
            break
        layer = inner
    return _qualified(app) or "app"


# ---------------------------------------------------------------------------- the middleware


class IdempotencyMiddleware:
    """Wrap an ASGI app: ``app = IdempotencyMiddleware(app, store=SQLiteStore(...))``.

    ``methods`` (POST, PATCH) are guarded; ``require_key`` is False (optional everywhere), True
    (required for every guarded request), a collection of path prefixes, or a function of the
    path. ``fingerprint_headers`` are request headers that must match for a replay (the body,
    method and path always must). ``principal(scope)`` scopes keys. ``store_timeout`` bounds
    every store call.

    ``name`` identifies the application on its host (default: :func:`app_name` of ``app``);
    without a ``store`` it names the default store, a SQLite file of this application's own
    (:func:`h2guard.idempotency.stores.sqlite.default_path`: ``$XDG_STATE_HOME`` or
    ``~/.local/state``, then ``h2guard/idempotency/<name>.sqlite3`` on Linux; ``~/Library/
    Application Support/...`` on macOS, ``%LOCALAPPDATA%\\...`` on Windows;
    ``$H2GUARD_IDEMPOTENCY_DB`` overrides it, ``{name}`` in it is replaced by the name). Every
    worker process of the application must resolve the same name, so that they share one file:
    the derived name is deterministic; pass ``name=`` when two applications of the same code
    run on one host, or when the derived one (logged at INFO on first use) is not telling.

    ``store_server_errors`` (default False) decides what a key's outcome is when the server
    failed: a 5xx response, or an exception that escaped the handler before its response was
    complete (a handler that returns without answering counts as one).

    * False: not stored. The key is released before the error reaches the client, so the
      client's retry with the same key runs the handler again. A response the handler had
      already completed, or the stored head of a large streamed one, stays stored even if the
      handler raises afterwards (the client got that answer).
    * True (Stripe's rule: a result is stored once execution has started): the 5xx is stored
      and replayed for ``ttl``; an exception is stored as a ``500`` problem+json and sent to
      the client if nothing was sent yet (then re-raised). The handler never runs twice for a
      key, whatever happened; a client must use a new key to try again.

    Why False is the default: the IETF draft has a retry "after completion" get the stored
    outcome, but an exception means the handler did not complete and its outcome is unknown;
    and a 5xx says "the server failed" (RFC 9110 §15.6), often only for now (503, a lost
    database connection). Stored, it turns a transient failure into a permanent one for the
    whole ``ttl`` (24 h): every retry - which is what the key exists to make safe, and which
    h2guard's own ``RetryPolicy`` sends for 503 with the same key - gets the same failure,
    and the client ends up sending the request again under a *new* key, which the store cannot
    guard at all. Handlers are usually transactional (an exception rolls the transaction back),
    so running them again is what makes the request succeed. Choose True when a handler can
    leave an effect behind before it fails (it calls a payment provider, then crashes writing
    the result): then a replayed 500 is better than a second charge.

    Not covered by either setting: a handler cancelled because the client went away, or a
    process that died, leaves its claim in place until ``lock_ttl``; the store cannot be
    reached from a cancelled task, or at all from a dead one.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        store: IdempotencyStore | None = None,
        name: str | None = None,
        methods: Collection[str] = ("POST", "PATCH"),
        require_key: bool | Collection[str] | Callable[[str], bool] = False,
        header: str = "Idempotency-Key",
        fingerprint_headers: Collection[str] = ("content-type",),
        principal: Callable[[Scope], str] = principal_from_authorization,
        ttl: float = 24 * 3600.0,
        lock_ttl: float = 60.0,
        store_server_errors: bool = False,
        max_request_body: int = 10 << 20,
        max_response_body: int = 1 << 20,
        fail_open: bool = False,
        store_timeout: float = 2.0,
        retry_after: int = 1,
        replay_header: str = "Idempotent-Replayed",
        cleanup_interval: float = 300.0,
        events: EventLog | None = None,
    ) -> None:
        if ttl <= 0 or lock_ttl <= 0 or store_timeout <= 0:
            raise ValueError("ttl, lock_ttl and store_timeout must be positive")
        if name is not None and not name.strip():
            raise ValueError("name must not be empty")
        self.name = name if name is not None else app_name(app)
        if store is None:
            from h2guard.idempotency.stores.sqlite import SQLiteStore

            store = SQLiteStore(name=self.name)
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
        self.store_server_errors = store_server_errors
        self.max_request_body = max_request_body
        self.max_response_body = max_response_body
        self.fail_open = fail_open
        self.store_timeout = store_timeout
        self.retry_after = str(retry_after).encode()
        self.replay_header = replay_header.lower().encode("latin-1")
        self.cleanup_interval = cleanup_interval
        self.events = events if events is not None else EventLog(maxlen=10_000)
        self._next_cleanup = time.monotonic() + cleanup_interval
        self._warned_no_release = False

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
        except Exception as exc:  # StoreError, a timeout, or a broken store: fail closed
            await self._store_down(scope, body, receive, send, store_key, exc)
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
        """Run the handler; store its response before the client sees it (or release the key,
        for a server error that is not to be stored)."""
        replay_receive = _replaying(body, receive)
        start: Message | None = None
        chunks: list[bytes] = []
        size = 0
        decided = False  # the response was stored or the key released: pass the rest through

        async def capture(message: Message) -> None:
            nonlocal start, size, decided
            kind = message["type"]
            if decided:
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
            too_large = size > self.max_response_body
            if more and not too_large:
                return
            decided = True
            status = int(start["status"])
            if status >= 500 and not self.store_server_errors:
                await self._release(scope, store_key, token, f"status {status}", status)
            else:
                headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", ())]
                stored = (StoredResponse(status, headers, b"", body_omitted=True) if too_large
                          else StoredResponse(status, headers, b"".join(chunks)))
                await self._complete(store_key, token, stored, scope)
                if status >= 500:
                    self._log_stored_error(scope, store_key, f"status {status}")
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks),
                        "more_body": more})

        try:
            await self.app(scope, replay_receive, capture)
        except Exception as exc:
            if not decided:
                await self._unfinished(scope, send, store_key, token,
                                       f"the handler raised {_one_line(exc)}")
            raise
        if not decided:
            await self._unfinished(scope, send, store_key, token,
                                   "the handler returned without completing a response")

    async def _unfinished(self, scope: Scope, send: Send, store_key: str, token: str,
                          why: str) -> None:
        """The handler ended before its response was complete (nothing of it was sent): its
        outcome is unknown. Release the key, or store (and send) a 500."""
        if not self.store_server_errors:
            await self._release(scope, store_key, token, why, None)
            return
        response = _problem(
            500, "Internal Server Error",
            f"the request failed on the server and its outcome is unknown; this "
            f"{self.header_name} will not run it again: retry with a new key")
        await self._complete(store_key, token, response, scope)
        self._log_stored_error(scope, store_key, why)
        await _send_stored(send, response)

    async def _release(self, scope: Scope, store_key: str, token: str, why: str,
                       status: int | None) -> None:
        path = scope.get("path", "")
        release = getattr(self.store, "release", None)
        if release is None:
            if not self._warned_no_release:
                self._warned_no_release = True
                self._log(logging.WARNING, "the store %r has no release(): a key whose "
                          "handler failed stays claimed until lock_ttl=%g s (409 until then)",
                          self.store, self.lock_ttl, scope=scope, event="no_release")
            return
        try:
            await self._store_call("release", lambda: release(store_key, token))
        except Exception as exc:
            self._log(logging.WARNING, "idempotency store error on release of key %s (%s %s): "
                      "%s; %s, and the key stays claimed until lock_ttl=%g s (a retry gets "
                      "409 until then, then runs the handler again)",
                      store_key, scope.get("method", ""), path, _one_line(exc), why,
                      self.lock_ttl, scope=scope, event="store_error", op="release",
                      key_hash=store_key, action="kept until lock_ttl")
            return
        self._emit("idempotency.released", path=path, reason=why, status=status)
        self._log(logging.INFO, "idempotency key %s (%s %s) released, not stored: %s; a retry "
                  "with this key runs the handler again (store_server_errors=False)",
                  store_key, scope.get("method", ""), path, why, scope=scope,
                  event="released", key_hash=store_key, reason=why)

    def _log_stored_error(self, scope: Scope, store_key: str, why: str) -> None:
        self._log(logging.INFO, "idempotency key %s (%s %s): %s; stored as the key's result "
                  "(store_server_errors=True): a retry gets it replayed for ttl=%g s",
                  store_key, scope.get("method", ""), scope.get("path", ""), why, self.ttl,
                  scope=scope, event="stored_error", key_hash=store_key, reason=why)

    async def _complete(self, store_key: str, token: str, response: StoredResponse,
                        scope: Scope) -> None:
        path = scope.get("path", "")
        try:
            kept = await self._store_call("complete", lambda: self.store.complete(
                store_key, token, response, ttl=self.ttl))
        except Exception as exc:
            # the handler ran: the client still gets its response; a retry after lock_ttl
            # would run it again, so the store_error event and the log line are loud
            self._log(logging.WARNING, "idempotency store error on complete of key %s (%s %s): "
                      "%s; the handler ran and its %d response is sent but NOT stored: a retry "
                      "with this key gets 409 until lock_ttl=%g s, then runs the handler again",
                      store_key, scope.get("method", ""), path, _one_line(exc),
                      response.status, self.lock_ttl, scope=scope, event="store_error",
                      op="complete", key_hash=store_key, action="sent, not stored")
            return
        if response.body_omitted:
            self._emit("idempotency.too_large", path=path)
        if not kept:
            self._emit("idempotency.claim_lost", path=path,
                       detail=f"the handler outlived lock_ttl={self.lock_ttl:g} s and the key "
                              "was claimed again")
            self._log(logging.WARNING, "idempotency claim lost for key %s (%s %s): the handler "
                      "outlived lock_ttl=%g s and the key was claimed again (or expired), so "
                      "the handler may have run twice; its %d response is sent but not stored. "
                      "Raise lock_ttl above the slowest handler",
                      store_key, scope.get("method", ""), path, self.lock_ttl,
                      response.status, scope=scope, event="claim_lost", key_hash=store_key,
                      action="sent, not stored")

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
                          send: Send, store_key: str, exc: Exception) -> None:
        method, path = scope.get("method", ""), scope.get("path", "")
        if self.fail_open:
            self._log(logging.WARNING, "idempotency store error on claim of key %s (%s %s): "
                      "%s; running the handler WITHOUT idempotency (fail_open=True): a retry "
                      "may run it again", store_key, method, path, _one_line(exc),
                      scope=scope, event="store_error", op="claim", key_hash=store_key,
                      action="served without idempotency")
            self._emit("idempotency.unguarded", path=path)
            await self.app(scope, _replaying(body, receive), send)
            return
        self._log(logging.WARNING, "idempotency store error on claim of key %s (%s %s): %s; "
                  "answered 503 (Retry-After: %s), the handler did not run",
                  store_key, method, path, _one_line(exc), self.retry_after.decode(),
                  scope=scope, event="store_error", op="claim", key_hash=store_key,
                  action="503")
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
        except Exception as exc:  # cleanup waits for the next turn; the request goes on
            self._log(logging.WARNING, "idempotency store error on purge: %s; expired records "
                      "stay until the next cleanup in %g s (requests are not affected)",
                      _one_line(exc), self.cleanup_interval, scope=None, event="store_error",
                      op="purge", action="retried at the next cleanup")
            return
        if purged:
            self._emit("idempotency.purged", records=purged)

    def _emit(self, name: str, **data: Any) -> None:
        self.events.emit(name, **data)

    def _log(self, level: int, message: str, *args: Any, scope: Scope | None,
             event: str, **fields: Any) -> None:
        if not log.isEnabledFor(level):
            return
        data = {"event": f"idempotency.{event}", "app": self.name, **fields}
        if scope is not None:
            data.update(method=scope.get("method", ""), path=scope.get("path", ""))
        log.log(level, "[%s] " + message, self.name, *args, extra={"h2guard": data})


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


_SPACES = re.compile(r"\s+")


def _one_line(exc: BaseException) -> str:
    text = _SPACES.sub(" ", str(exc)).strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


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
