"""What a key's outcome is when the server failed: ``store_server_errors``, both ways, on every
store (SQLite, and real Redis and PostgreSQL servers started by this directory's conftest).

* ``store_server_errors=False`` (the default): a 5xx response or an exception that escaped the
  handler before its response was complete is not stored; the key is released at once, so the
  retry with the same key runs the handler again (no 409, no waiting for ``lock_ttl``).
* ``store_server_errors=True``: the 5xx is stored and replayed; an exception is stored, and
  sent, as a 500 problem+json; the handler never runs twice for the key.

Either way, a response the handler completed (or the stored head of a large streamed one) stays
stored if the handler raises afterwards, and 4xx responses are stored.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from h2guard.idempotency import (
    Claim,
    IdempotencyMiddleware,
    IdempotencyStore,
    SQLiteStore,
    StoredResponse,
    StoreError,
)

pytestmark = pytest.mark.timeout(60)

Message = dict[str, Any]
Script = Callable[[int, Any], Awaitable[None]]


class Handler:
    """A raw ASGI app that counts its runs; ``script(run, send)`` decides what each run does."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        while (await receive()).get("more_body", False):
            pass
        await self.script(self.calls, send)


async def respond(send: Any, status: int, run: int, body: bytes | None = None,
                  more: bool = False) -> None:
    content = body if body is not None else json.dumps({"run": run}).encode()
    headers = [(b"content-type", b"application/json"), (b"x-run", str(run).encode())]
    if not more:
        headers.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": more})


def status_script(status: int) -> Script:
    async def script(run: int, send: Any) -> None:
        await respond(send, status, run)
    return script


async def crash_first(run: int, send: Any) -> None:
    if run == 1:
        raise RuntimeError("database went away")
    await respond(send, 201, run)


def client(app: Any, *, raise_app_exceptions: bool = False) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions),
        base_url="http://test")


def post(c: httpx.AsyncClient, key: str = "k-1") -> Awaitable[httpx.Response]:
    return c.post("/orders", content=b'{"item": "book"}',
                  headers={"Idempotency-Key": key, "content-type": "application/json"})


def replayed(response: httpx.Response) -> bool:
    return response.headers.get("idempotent-replayed") == "true"


def run_of(response: httpx.Response) -> int:
    return int(response.headers["x-run"])


@pytest.fixture(params=["sqlite", "redis", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path
                ) -> AsyncIterator[IdempotencyStore]:
    tag = uuid.uuid4().hex[:10]
    made: IdempotencyStore
    if request.param == "sqlite":
        made = SQLiteStore(tmp_path / "s.db")
    elif request.param == "redis":
        from h2guard.idempotency import RedisStore

        made = RedisStore(request.getfixturevalue("redis_url"), prefix=f"err-{tag}:")
    else:
        from h2guard.idempotency import PostgresStore

        made = PostgresStore(request.getfixturevalue("postgres_dsn"), table=f"err_{tag}")
    yield made
    await made.aclose()


# ---------------------------------------------------------------------------- 5xx responses


@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_is_not_stored_by_default_and_the_retry_runs_the_handler_again(
        store: IdempotencyStore, status: int) -> None:
    app = Handler(status_script(status))
    mw = IdempotencyMiddleware(app, store=store)
    assert mw.store_server_errors is False
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert (first.status_code, run_of(first)) == (status, 1)
    assert (retry.status_code, run_of(retry), replayed(retry)) == (status, 2, False)
    assert app.calls == 2
    released = mw.events.since(0, name="idempotency.released")
    assert [(e.data["status"], e.data["reason"]) for e in released] == \
        [(status, f"status {status}")] * 2
    assert "idempotency.store_error" not in mw.events.counts


@pytest.mark.parametrize("status", [500, 503])
async def test_a_5xx_is_stored_and_replayed_with_store_server_errors(
        store: IdempotencyStore, status: int) -> None:
    app = Handler(status_script(status))
    mw = IdempotencyMiddleware(app, store=store, store_server_errors=True)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == retry.status_code == status
    assert replayed(retry) and run_of(retry) == 1 and retry.content == first.content
    assert app.calls == 1
    assert "idempotency.released" not in mw.events.counts


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_4xx_is_stored_either_way(store: IdempotencyStore,
                                        store_server_errors: bool) -> None:
    app = Handler(status_script(409))
    mw = IdempotencyMiddleware(app, store=store, store_server_errors=store_server_errors)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == retry.status_code == 409
    assert replayed(retry) and app.calls == 1


# ---------------------------------------------------------------------------- exceptions


async def test_an_exception_releases_the_key_at_once_by_default(store: IdempotencyStore,
                                                                caplog: Any) -> None:
    app = Handler(crash_first)
    mw = IdempotencyMiddleware(app, store=store, lock_ttl=30)  # no waiting for the lock
    caplog.set_level(logging.INFO, logger="h2guard.idempotency")
    async with client(mw) as c:
        crashed = await post(c)
        retry = await post(c)
        replay = await post(c)
    assert crashed.status_code == 500 and "x-run" not in crashed.headers  # the server's own 500
    assert retry.status_code == 201 and run_of(retry) == 2 and not replayed(retry)
    assert replayed(replay) and run_of(replay) == 2
    assert app.calls == 2
    released = mw.events.since(0, name="idempotency.released")
    assert len(released) == 1
    assert released[0].data["reason"] == "the handler raised RuntimeError: database went away"
    lines = [r for r in caplog.records if r.name == "h2guard.idempotency"
             and "released" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "a retry with this key runs the handler again" in lines[0].getMessage()


async def test_an_exception_is_stored_as_500_with_store_server_errors(
        store: IdempotencyStore) -> None:
    app = Handler(crash_first)
    mw = IdempotencyMiddleware(app, store=store, store_server_errors=True)
    async with client(mw) as c:
        crashed = await post(c)
        retry = await post(c)
    assert crashed.status_code == 500
    assert crashed.headers["content-type"] == "application/problem+json"
    assert "retry with a new key" in crashed.json()["detail"]
    assert replayed(retry) and retry.status_code == 500 and retry.content == crashed.content
    assert app.calls == 1
    async with client(mw) as c:
        fresh = await post(c, key="k-2")  # a new key runs it again
    assert fresh.status_code == 201 and run_of(fresh) == 2


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_the_exception_still_reaches_the_server(tmp_path: Path,
                                                      store_server_errors: bool) -> None:
    mw = IdempotencyMiddleware(Handler(crash_first), store=SQLiteStore(tmp_path / "s.db"),
                               store_server_errors=store_server_errors)
    async with client(mw, raise_app_exceptions=True) as c:
        with pytest.raises(RuntimeError, match="database went away"):
            await post(c)


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_a_response_completed_before_the_exception_stays_stored(
        store: IdempotencyStore, store_server_errors: bool) -> None:
    async def answer_then_crash(run: int, send: Any) -> None:
        await respond(send, 201, run)
        raise RuntimeError("a background task failed after the response")

    app = Handler(answer_then_crash)
    mw = IdempotencyMiddleware(app, store=store, store_server_errors=store_server_errors)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == 201 and run_of(first) == 1
    assert replayed(retry) and run_of(retry) == 1  # the client got that answer: it stands
    assert app.calls == 1


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_an_exception_mid_body_before_anything_was_sent(
        store: IdempotencyStore, store_server_errors: bool) -> None:
    async def half_then_crash(run: int, send: Any) -> None:
        if run == 1:
            await respond(send, 201, run, body=b"part one", more=True)
            raise RuntimeError("crashed mid-body")
        await respond(send, 201, run)

    app = Handler(half_then_crash)
    mw = IdempotencyMiddleware(app, store=store, store_server_errors=store_server_errors)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == 500 and b"part one" not in first.content  # nothing leaked
    if store_server_errors:
        assert replayed(retry) and retry.status_code == 500 and app.calls == 1
    else:
        assert retry.status_code == 201 and run_of(retry) == 2 and app.calls == 2


async def call_raw(app: Any) -> list[Message]:
    """One keyed POST straight through ASGI (httpx's ASGITransport refuses an app that sends
    no response); returns what the app sent."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": "/orders", "raw_path": b"/orders",
             "query_string": b"", "root_path": "", "headers": [(b"idempotency-key", b"k-1")]}
    pending = [{"type": "http.request", "body": b"x", "more_body": False}]
    sent: list[Message] = []

    async def receive() -> Message:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_a_handler_that_returns_without_answering(tmp_path: Path,
                                                       store_server_errors: bool) -> None:
    async def silent_first(run: int, send: Any) -> None:
        if run > 1:
            await respond(send, 201, run)

    app = Handler(silent_first)
    mw = IdempotencyMiddleware(app, store=SQLiteStore(tmp_path / "s.db"),
                               store_server_errors=store_server_errors)
    first = await call_raw(mw)
    retry = await call_raw(mw)
    if store_server_errors:
        assert first[0]["status"] == 500  # sent: the client is not left without an answer
        assert retry[0]["status"] == 500 and (b"idempotent-replayed", b"true") in \
            retry[0]["headers"]
        assert app.calls == 1
    else:
        assert first == []  # the server answers 500 itself
        assert retry[0]["status"] == 201 and app.calls == 2


# ---------------------------------------------------------------------------- large responses


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_a_large_5xx_streams_and_follows_the_rule(tmp_path: Path,
                                                       store_server_errors: bool) -> None:
    async def big_error(run: int, send: Any) -> None:
        await send({"type": "http.response.start", "status": 502,
                    "headers": [(b"x-run", str(run).encode())]})
        for i in range(4):
            await send({"type": "http.response.body", "body": b"e" * 100, "more_body": i < 3})

    app = Handler(big_error)
    mw = IdempotencyMiddleware(app, store=SQLiteStore(tmp_path / "s.db"),
                               max_response_body=150, store_server_errors=store_server_errors)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == 502 and first.content == b"e" * 400
    if store_server_errors:
        assert replayed(retry) and retry.headers["idempotency-body-omitted"] == "true"
        assert app.calls == 1
    else:
        assert run_of(retry) == 2 and retry.content == b"e" * 400 and app.calls == 2


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_a_large_2xx_whose_head_was_stored_stays_stored_if_the_stream_fails(
        tmp_path: Path, store_server_errors: bool) -> None:
    async def stream_then_crash(run: int, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-run", str(run).encode())]})
        await send({"type": "http.response.body", "body": b"x" * 200, "more_body": True})
        raise RuntimeError("the export failed half way")

    app = Handler(stream_then_crash)
    mw = IdempotencyMiddleware(app, store=SQLiteStore(tmp_path / "s.db"),
                               max_response_body=100, store_server_errors=store_server_errors)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == 200  # the head went out before the handler failed
    assert replayed(retry) and run_of(retry) == 1
    assert retry.headers["idempotency-body-omitted"] == "true"
    assert app.calls == 1


# ---------------------------------------------------------------------------- frameworks


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_a_starlette_app_whose_route_raises(tmp_path: Path,
                                                 store_server_errors: bool) -> None:
    # Wrapping the Starlette object: its ServerErrorMiddleware (inside ours) answers 500,
    # then re-raises. This 500 is what used to be stored for 24 h.
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    runs: list[int] = []

    async def create(request: Request) -> PlainTextResponse:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("lost the database connection")
        return PlainTextResponse(f"order {len(runs)}", status_code=201)

    app = Starlette(routes=[Route("/orders", create, methods=["POST"])])
    mw = IdempotencyMiddleware(app, store=SQLiteStore(tmp_path / "s.db"),
                               store_server_errors=store_server_errors)
    async with client(mw) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == 500
    if store_server_errors:
        assert replayed(retry) and retry.status_code == 500 and len(runs) == 1
    else:
        assert retry.status_code == 201 and retry.text == "order 2" and len(runs) == 2


@pytest.mark.parametrize("store_server_errors", [False, True])
async def test_fastapi_add_middleware_whose_route_raises(tmp_path: Path,
                                                        store_server_errors: bool) -> None:
    # add_middleware puts ours inside FastAPI's ServerErrorMiddleware: the exception passes
    # through us first.
    fastapi = pytest.importorskip("fastapi")
    runs: list[int] = []
    app = fastapi.FastAPI()

    @app.post("/orders", status_code=201)
    async def create() -> dict[str, int]:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("lost the database connection")
        return {"order": len(runs)}

    app.add_middleware(IdempotencyMiddleware, store=SQLiteStore(tmp_path / "s.db"),
                       store_server_errors=store_server_errors)
    async with client(app) as c:
        first = await post(c)
        retry = await post(c)
    assert first.status_code == 500
    if store_server_errors:
        assert first.headers["content-type"] == "application/problem+json"
        assert replayed(retry) and retry.content == first.content and len(runs) == 1
    else:
        assert retry.status_code == 201 and retry.json() == {"order": 2} and len(runs) == 2


# ---------------------------------------------------------------------------- odd stores


class _NoRelease:
    """A store written against the older two-operation protocol (no ``release``)."""

    def __init__(self, inner: SQLiteStore) -> None:
        self.inner = inner

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        return await self.inner.claim(key, fingerprint, token=token, lock_ttl=lock_ttl, ttl=ttl)

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        return await self.inner.complete(key, token, response, ttl=ttl)

    async def purge_expired(self) -> int:
        return await self.inner.purge_expired()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_store_without_release_leaves_the_claim_until_lock_ttl(tmp_path: Path,
                                                                       caplog: Any) -> None:
    app = Handler(crash_first)
    mw = IdempotencyMiddleware(app, store=_NoRelease(SQLiteStore(tmp_path / "s.db")),
                               lock_ttl=0.3)
    caplog.set_level(logging.WARNING, logger="h2guard.idempotency")
    async with client(mw) as c:
        await post(c)
        waiting = await post(c)
        await anyio.sleep(0.35)
        later = await post(c)
    assert waiting.status_code == 409
    assert later.status_code == 201 and run_of(later) == 2
    warned = [r.getMessage() for r in caplog.records if r.name == "h2guard.idempotency"]
    assert len(warned) == 1 and "has no release()" in warned[0]


class _FailingRelease(_NoRelease):
    async def release(self, key: str, token: str) -> bool:
        raise StoreError("the store went read-only")


async def test_a_failed_release_is_logged_and_the_claim_lapses_after_lock_ttl(
        tmp_path: Path, caplog: Any) -> None:
    app = Handler(crash_first)
    mw = IdempotencyMiddleware(app, store=_FailingRelease(SQLiteStore(tmp_path / "s.db")),
                               lock_ttl=0.3)
    caplog.set_level(logging.WARNING, logger="h2guard.idempotency")
    async with client(mw) as c:
        await post(c)
        waiting = await post(c)
        await anyio.sleep(0.35)
        later = await post(c)
    assert waiting.status_code == 409 and later.status_code == 201
    errors = mw.events.since(0, name="idempotency.store_error")
    assert [e.data["op"] for e in errors] == ["release"]
    records = [r for r in caplog.records if r.name == "h2guard.idempotency"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "the store went read-only" in records[0].getMessage()
    assert "stays claimed until lock_ttl=0.3 s" in records[0].getMessage()
