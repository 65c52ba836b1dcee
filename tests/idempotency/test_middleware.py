"""IdempotencyMiddleware against SQLiteStore and small fake stores (no external server).

Driven through ``httpx.ASGITransport`` where a client's view is enough, and through hand-written
ASGI ``receive`` / ``send`` callables where the test needs control (client disconnects, request
bodies in chunks, how a large response is streamed). Timings are short (ttl / lock_ttl of a few
tenths of a second) so the whole file runs in a few seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from h2guard.events import EventLog
from h2guard.idempotency import (
    Claim,
    IdempotencyMiddleware,
    IdempotencyStore,
    SQLiteStore,
    StoredResponse,
    StoreError,
    parse_key,
    principal_from_authorization,
)

pytestmark = pytest.mark.timeout(30)

Message = dict[str, Any]


# ---------------------------------------------------------------------------- helpers


class App:
    """A raw ASGI handler that counts its runs and answers with a run-specific response.

    ``delay``: seconds to sleep before answering (or a function of the run number);
    ``fail``: the first ``fail`` runs raise; ``chunks``: send this body in several messages
    (no content-length) instead of the default JSON body.
    """

    def __init__(self, *, status: int = 201, delay: float | Callable[[int], float] = 0.0,
                 fail: int = 0, chunks: list[bytes] | None = None) -> None:
        self.status = status
        self.delay = delay
        self.fail = fail
        self.chunks = chunks
        self.calls = 0
        self.bodies: list[bytes] = []
        self.scopes: list[dict[str, Any]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        run = self.calls
        self.scopes.append(scope)
        body = b""
        while True:
            message = await receive()
            assert message["type"] == "http.request"
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        delay = self.delay(run) if callable(self.delay) else self.delay
        if delay:
            await anyio.sleep(delay)
        if run <= self.fail:
            raise RuntimeError(f"handler crashed on run {run}")
        headers = [(b"content-type", b"application/json"),
                   (b"x-run", str(run).encode()),
                   (b"set-cookie", b"a=1; Path=/"),
                   (b"set-cookie", b"b=2; HttpOnly"),
                   (b"x-latin1", b"caf\xe9 \x80 value")]
        if self.chunks is not None:
            await send({"type": "http.response.start", "status": self.status,
                        "headers": [(b"content-type", b"text/plain"),
                                    (b"x-run", str(run).encode())]})
            for i, chunk in enumerate(self.chunks):
                await send({"type": "http.response.body", "body": chunk,
                            "more_body": i < len(self.chunks) - 1})
            return
        out = json.dumps({"run": run, "path": scope["path"], "method": scope["method"],
                          "got": body.decode("latin-1")}).encode()
        headers.insert(1, (b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": out})


class FakeStore:
    """A store that counts calls and, per operation, delegates to ``inner``, raises, or hangs.

    ``fail``: op -> exception to raise; ``hang``: ops that sleep for a minute. Without
    ``inner`` a claim always succeeds and complete always keeps the response.
    """

    def __init__(self, inner: IdempotencyStore | None = None, *,
                 fail: dict[str, BaseException] | None = None,
                 hang: Iterable[str] = ()) -> None:
        self.inner = inner
        self.fail = fail or {}
        self.hang = set(hang)
        self.calls: Counter[str] = Counter()

    async def _step(self, op: str) -> None:
        self.calls[op] += 1
        if op in self.hang:
            await anyio.sleep(60)
        if op in self.fail:
            raise self.fail[op]

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        await self._step("claim")
        if self.inner is None:
            return Claim("claimed", fingerprint)
        return await self.inner.claim(key, fingerprint, token=token, lock_ttl=lock_ttl,
                                      ttl=ttl)

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        await self._step("complete")
        if self.inner is None:
            return True
        return await self.inner.complete(key, token, response, ttl=ttl)

    async def release(self, key: str, token: str) -> bool:
        await self._step("release")
        if self.inner is None:
            return True
        return await self.inner.release(key, token)

    async def purge_expired(self) -> int:
        await self._step("purge_expired")
        return 0 if self.inner is None else await self.inner.purge_expired()

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()


def client(app: Any, *, raise_app_exceptions: bool = True) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions),
        base_url="http://test")


def key(value: str) -> dict[str, str]:
    return {"Idempotency-Key": value}


def replayed(response: httpx.Response) -> bool:
    return response.headers.get("idempotent-replayed") == "true"


def run_of(response: httpx.Response) -> int:
    return int(response.headers["x-run"])


def http_scope(method: str = "POST", path: str = "/orders",
               headers: Iterable[tuple[str, str]] = (), query: bytes = b"") -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query, "root_path": "", "client": ("127.0.0.1", 5000),
            "server": ("test", 80),
            "headers": [(k.lower().encode(), v.encode("latin-1")) for k, v in headers]}


async def call_raw(app: Any, scope: dict[str, Any], messages: Iterable[Message]
                   ) -> list[Message]:
    """Run one request through ``app`` with the given receive messages (then disconnect)."""
    pending = list(messages)
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def names(mw: IdempotencyMiddleware) -> Counter[str]:
    return Counter(mw.events.counts)


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    data: dict[str, Any] = response.json()
    assert data["status"] == response.status_code
    assert int(response.headers["content-length"]) == len(response.content)
    return data


def rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT key, state, response FROM h2guard_idempotency").fetchall()


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SQLiteStore(tmp_path / "s.db")
    yield s
    await s.aclose()


# ---------------------------------------------------------------------------- replay


async def test_first_request_runs_handler_and_repeat_replays_exactly(store: SQLiteStore
                                                                      ) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        first = await c.post("/orders", content=b'{"n": 1}', headers=key("k1"))
        second = await c.post("/orders", content=b'{"n": 1}', headers=key("k1"))
        third = await c.post("/orders", content=b'{"n": 1}', headers=key('"k1"'))
    assert app.calls == 1
    assert first.status_code == 201 and not replayed(first)
    assert json.loads(first.content) == {"run": 1, "path": "/orders", "method": "POST",
                                         "got": '{"n": 1}'}
    for again in (second, third):
        assert again.status_code == 201
        assert again.content == first.content
        # every header, in order, duplicates and non-ASCII bytes included, then the marker
        assert again.headers.raw == [*first.headers.raw, (b"idempotent-replayed", b"true")]
    assert app.bodies == [b'{"n": 1}']
    assert names(mw)["idempotency.claimed"] == 1
    assert names(mw)["idempotency.replayed"] == 2


async def test_raw_replay_is_byte_for_byte(store: SQLiteStore) -> None:
    mw = IdempotencyMiddleware(App(), store=store)
    scope = http_scope(headers=[("idempotency-key", "raw")])
    body = [{"type": "http.request", "body": b"x", "more_body": False}]
    first = await call_raw(mw, scope, body)
    again = await call_raw(mw, scope, body)
    assert [m["type"] for m in first] == ["http.response.start", "http.response.body"]
    assert again[0]["status"] == first[0]["status"]
    assert again[0]["headers"] == [*first[0]["headers"], (b"idempotent-replayed", b"true")]
    assert again[1]["body"] == first[1]["body"]
    assert not again[1].get("more_body", False)


async def test_error_responses_are_stored_and_replayed(store: SQLiteStore) -> None:
    app = App(status=400)
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        first = await c.post("/orders", content=b"bad", headers=key("e"))
        again = await c.post("/orders", content=b"bad", headers=key("e"))
    assert (first.status_code, again.status_code) == (400, 400)
    assert again.content == first.content and replayed(again)
    assert app.calls == 1


async def test_custom_header_and_replay_header_names(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store, header="X-Request-Key",
                               replay_header="X-Replayed", require_key=True)
    async with client(mw) as c:
        missing = await c.post("/orders", headers=key("ignored"))
        first = await c.post("/orders", headers={"x-request-key": "a"})
        again = await c.post("/orders", headers={"X-Request-Key": "a"})
    assert missing.status_code == 400
    assert "X-Request-Key" in problem(missing)["title"]
    assert first.status_code == 201
    assert again.headers["x-replayed"] == "true" and "idempotent-replayed" not in again.headers
    assert app.calls == 1


# ---------------------------------------------------------------------------- key forms


@pytest.mark.parametrize(("raw", "expected"), [
    ('"abc"', "abc"),
    ("abc", "abc"),
    ('  "abc"\t', "abc"),
    (r'"a\"b"', 'a"b'),
    (r'"a\\b"', "a\\b"),
    ("a\\b", "a\\b"),
    ('"' + "x" * 255 + '"', "x" * 255),
    ("y" * 255, "y" * 255),
    ('"' + "\\\\" * 255 + '"', "\\" * 255),  # the limit counts the unescaped key
    ("550e8400-e29b-41d4-a716-446655440000", "550e8400-e29b-41d4-a716-446655440000"),
    ("a b~!", "a b~!"),
])
def test_parse_key_accepts(raw: str, expected: str) -> None:
    assert parse_key(raw) == expected


@pytest.mark.parametrize(("raw", "reason"), [
    (r'"a\b"', "escapes only"),
    ('"abc\\"', "escapes only"),        # a trailing backslash escapes nothing
    ('"a"b"', "unescaped quote"),
    ('""', "empty"),
    ("", "empty"),
    ("   ", "empty"),
    ("a\tb", "printable ASCII"),
    ("a\x01b", "printable ASCII"),
    ('"caf\xe9"', "printable ASCII"),
    ("x" * 256, "256 characters"),
    ('"' + "x" * 256 + '"', "256 characters"),
    ('a"b', "not a quoted string"),      # ambiguous: it is neither an sf-string nor a token
    ('"abc', "not a quoted string"),
    ('abc"', "not a quoted string"),
])
def test_parse_key_rejects(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_key(raw)


async def test_sf_string_and_bare_token_are_the_same_key(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        a = await c.post("/orders", headers=key('"abc"'))
        b = await c.post("/orders", headers=key("abc"))
        c1 = await c.post("/orders", headers=key(r'"q\\uote"'))
        c2 = await c.post("/orders", headers=key('q\\uote'))
        d1 = await c.post("/orders", headers=key("back\\slash"))
        d2 = await c.post("/orders", headers=key(r'"back\\slash"'))
    assert not replayed(a) and replayed(b)
    assert not replayed(c1) and replayed(c2)
    assert not replayed(d1) and replayed(d2)
    assert app.calls == 3


@pytest.mark.parametrize(("raw", "reason"), [
    (r'"a\b"', "escapes only"),
    ('"a"b"', "unescaped quote"),
    ('""', "empty"),
    ("", "empty"),
    ("a\x01b", "printable ASCII"),
    ("k\xe9y", "printable ASCII"),
    ("x" * 256, "256 characters; at most 255"),
])
async def test_malformed_key_is_400_problem_naming_the_reason(store: SQLiteStore, raw: str,
                                                               reason: str) -> None:
    app = App()
    counting = FakeStore(store)
    mw = IdempotencyMiddleware(app, store=counting)
    async with client(mw) as c:
        r = await c.post("/orders", content=b"{}",
                         headers=[(b"Idempotency-Key", raw.encode("latin-1"))])
    assert r.status_code == 400
    data = problem(r)
    assert data["title"] == "Malformed Idempotency-Key"
    assert reason in data["detail"]
    assert app.calls == 0
    assert sum(counting.calls.values()) == 0
    rejected = mw.events.since(0, name="idempotency.rejected")
    assert len(rejected) == 1 and reason in rejected[0].data["reason"]


async def test_255_character_key_is_accepted(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        first = await c.post("/orders", headers=key("k" * 255))
        again = await c.post("/orders", headers=key('"' + "k" * 255 + '"'))
    assert first.status_code == 201 and not replayed(first)
    assert replayed(again) and app.calls == 1


# ---------------------------------------------------------------------------- concurrency


async def test_concurrent_same_key_runs_handler_once(store: SQLiteStore) -> None:
    app = App(delay=0.3)
    mw = IdempotencyMiddleware(app, store=store, retry_after=2)
    async with client(mw) as c:
        responses = await asyncio.gather(*(
            c.post("/orders", content=b"same", headers=key("burst")) for _ in range(50)))
        late = await c.post("/orders", content=b"same", headers=key("burst"))
    assert app.calls == 1
    fresh = [r for r in responses if r.status_code == 201 and not replayed(r)]
    conflicts = [r for r in responses if r.status_code == 409]
    replays = [r for r in responses if r.status_code == 201 and replayed(r)]
    assert len(fresh) == 1
    assert len(conflicts) + len(replays) == 49
    assert conflicts, "the handler sleeps 0.3 s: some of the 50 must have found it running"
    for r in conflicts:
        assert r.headers["retry-after"] == "2"
        assert problem(r)["title"] == "Request in progress"
    for r in replays:
        assert r.content == fresh[0].content
    assert replayed(late) and late.content == fresh[0].content
    assert names(mw)["idempotency.conflict"] == len(conflicts)


async def test_different_request_while_first_still_runs_is_422_not_409(store: SQLiteStore
                                                                        ) -> None:
    app = App(delay=0.2)
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c, anyio.create_task_group() as tg:
        results: dict[str, httpx.Response] = {}

        async def first() -> None:
            results["first"] = await c.post("/orders", content=b"one", headers=key("k"))

        tg.start_soon(first)
        await anyio.sleep(0.05)
        results["other"] = await c.post("/orders", content=b"two", headers=key("k"))
    assert results["first"].status_code == 201
    assert results["other"].status_code == 422
    assert app.calls == 1


# ---------------------------------------------------------------------------- fingerprint


@pytest.mark.parametrize("change", ["body", "path", "method", "content-type", "query"])
async def test_same_key_different_request_is_422(store: SQLiteStore, change: str) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    base: dict[str, Any] = {"method": "POST", "url": "/orders", "content": b'{"a": 1}',
                            "headers": {"Idempotency-Key": "fp",
                                        "Content-Type": "application/json"}}
    other = {**base, "headers": dict(base["headers"])}
    if change == "body":
        other["content"] = b'{"a": 2}'
    elif change == "path":
        other["url"] = "/orders/2"
    elif change == "method":
        other["method"] = "PATCH"
    elif change == "content-type":
        other["headers"]["Content-Type"] = "text/plain"
    else:
        other["url"] = "/orders?x=1"
    async with client(mw) as c:
        first = await c.request(**base)
        second = await c.request(**other)
        third = await c.request(**base)
    assert first.status_code == 201
    assert second.status_code == 422
    assert "reused with a different request" in problem(second)["title"]
    assert replayed(third)
    assert app.calls == 1
    assert names(mw)["idempotency.mismatch"] == 1


async def test_non_fingerprint_header_may_differ(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        first = await c.post("/orders", content=b"b",
                             headers={**key("h"), "X-Request-Id": "1", "User-Agent": "a"})
        again = await c.post("/orders", content=b"b",
                             headers={**key("h"), "X-Request-Id": "2", "User-Agent": "b"})
    assert replayed(again) and again.content == first.content
    assert app.calls == 1


async def test_custom_fingerprint_headers(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store, fingerprint_headers=("X-Account",))
    async with client(mw) as c:
        await c.post("/orders", headers={**key("f"), "X-Account": "1", "Content-Type": "a/b"})
        # content-type is no longer part of the fingerprint
        same = await c.post("/orders",
                            headers={**key("f"), "X-Account": "1", "Content-Type": "c/d"})
        other = await c.post("/orders", headers={**key("f"), "X-Account": "2"})
    assert replayed(same)
    assert other.status_code == 422
    assert app.calls == 1


async def test_request_body_in_chunks_fingerprints_like_one_chunk(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    scope = http_scope(headers=[("idempotency-key", "chunks")])
    chunked = [{"type": "http.request", "body": b"hel", "more_body": True},
               {"type": "http.request", "body": b"", "more_body": True},
               {"type": "http.request", "body": b"lo", "more_body": False}]
    first = await call_raw(mw, scope, chunked)
    again = await call_raw(mw, scope, [{"type": "http.request", "body": b"hello"}])
    assert first[0]["status"] == 201
    assert app.bodies == [b"hello"]  # the handler got the whole body, once
    assert (b"idempotent-replayed", b"true") in again[0]["headers"]
    assert app.calls == 1


async def test_handler_reading_past_the_body_gets_the_real_receive(store: SQLiteStore
                                                                    ) -> None:
    seen: list[Message] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        seen.append(await receive())  # after the body: the client's next message
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = IdempotencyMiddleware(app, store=store)
    sent = await call_raw(mw, http_scope(headers=[("idempotency-key", "r")]),
                          [{"type": "http.request", "body": b"a", "more_body": True},
                           {"type": "http.request", "body": b"b", "more_body": False}])
    assert seen == [{"type": "http.request", "body": b"ab", "more_body": False},
                    {"type": "http.disconnect"}]
    assert sent[1]["body"] == b"ok"


# ---------------------------------------------------------------------------- methods, keys


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD", "OPTIONS"])
async def test_unguarded_methods_pass_through_untouched(method: str) -> None:
    app = App(status=200)
    fake = FakeStore()
    mw = IdempotencyMiddleware(app, store=fake, require_key=True)
    async with client(mw) as c:
        for _ in range(2):
            r = await c.request(method, "/orders", headers=key("same"))
            assert r.status_code == 200 and not replayed(r)
        no_key = await c.request(method, "/orders")
    assert no_key.status_code == 200
    assert app.calls == 3
    assert sum(fake.calls.values()) == 0
    assert len(mw.events) == 0


async def test_methods_option_guards_put(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store, methods=("post", "PUT"))
    async with client(mw) as c:
        put1 = await c.put("/orders/1", content=b"x", headers=key("p"))
        put2 = await c.put("/orders/1", content=b"x", headers=key("p"))
        patch1 = await c.patch("/orders/1", content=b"x", headers=key("q"))
        patch2 = await c.patch("/orders/1", content=b"x", headers=key("q"))
    assert not replayed(put1) and replayed(put2)
    assert not replayed(patch1) and not replayed(patch2)  # PATCH no longer guarded
    assert app.calls == 3


async def test_patch_is_guarded_by_default(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        await c.patch("/orders/1", content=b"x", headers=key("p"))
        again = await c.patch("/orders/1", content=b"x", headers=key("p"))
    assert replayed(again) and app.calls == 1


async def test_require_key_false_passes_through_without_key() -> None:
    app = App()
    fake = FakeStore()
    mw = IdempotencyMiddleware(app, store=fake)
    async with client(mw) as c:
        a = await c.post("/orders", content=b"x")
        b = await c.post("/orders", content=b"x")
    assert (a.status_code, b.status_code) == (201, 201)
    assert run_of(b) == 2 and app.calls == 2
    assert sum(fake.calls.values()) == 0


@pytest.mark.parametrize(("require", "needs_key"), [
    (True, {"/orders": True, "/orders/1/refund": True, "/health": True}),
    (("/orders", "/payments"), {"/orders": True, "/orders/1/refund": True, "/health": False,
                                "/payments": True}),
    (["/orders/"], {"/orders": False, "/orders/1/refund": True}),
    (lambda path: path.endswith("/refund"),
     {"/orders": False, "/orders/1/refund": True, "/health": False}),
])
async def test_require_key(require: Any, needs_key: dict[str, bool]) -> None:
    app = App()
    fake = FakeStore()
    mw = IdempotencyMiddleware(app, store=fake, require_key=require)
    async with client(mw) as c:
        for path, needed in needs_key.items():
            r = await c.post(path, content=b"{}")
            if needed:
                assert r.status_code == 400, path
                data = problem(r)
                assert data["title"] == "Idempotency-Key required"
                assert f"POST {path}" in data["detail"]
            else:
                assert r.status_code == 201, path
            # with a key it always runs
            assert (await c.post(path, headers=key(f"k{path}"))).status_code == 201
    required = sum(needs_key.values())
    assert app.calls == len(needs_key) * 2 - required
    missing = mw.events.since(0, name="idempotency.rejected")
    assert len(missing) == required
    assert all(e.data["reason"] == "missing" for e in missing)


async def test_a_lone_string_is_one_item_not_its_characters(store: SQLiteStore) -> None:
    # methods="POST" once became {"P", "O", "S", "T"} and guarded nothing at all
    app = App()
    mw = IdempotencyMiddleware(app, store=store, methods="POST", require_key="/orders",
                               fingerprint_headers="x-account")
    assert mw.methods == frozenset({"POST"})
    assert mw.fingerprint_headers == (b"x-account",)
    async with client(mw) as c:
        first = await c.post("/orders", headers={**key("s"), "X-Account": "1"})
        again = await c.post("/orders", headers={**key("s"), "X-Account": "1"})
        other = await c.post("/orders", headers={**key("s"), "X-Account": "2"})
        missing = await c.post("/orders/1")
        health = await c.post("/health")  # "/health" starts with "/" but not with "/orders"
    assert not replayed(first) and replayed(again)
    assert other.status_code == 422
    assert missing.status_code == 400
    assert health.status_code == 201
    assert app.calls == 2


def test_constructor_validates() -> None:
    for bad in ({"ttl": 0}, {"lock_ttl": -1}, {"store_timeout": 0}):
        with pytest.raises(ValueError, match="must be positive"):
            IdempotencyMiddleware(App(), store=FakeStore(), **bad)


# ---------------------------------------------------------------------------- principals


def test_principal_from_authorization() -> None:
    anon = principal_from_authorization(http_scope())
    assert anon == "anonymous"
    secret = "Bearer s3cr3t-t0ken"
    p1 = principal_from_authorization(http_scope(headers=[("authorization", secret)]))
    p2 = principal_from_authorization(http_scope(headers=[("Authorization", secret)]))
    p3 = principal_from_authorization(http_scope(headers=[("authorization", secret + "x")]))
    assert p1 == p2 != p3
    assert p1.startswith("auth:") and "s3cr3t" not in p1


async def test_keys_are_scoped_per_authorization(store: SQLiteStore, tmp_path: Path) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        alice = await c.post("/orders", content=b"x",
                             headers={**key("shared"), "Authorization": "Bearer alice"})
        bob = await c.post("/orders", content=b"x",
                           headers={**key("shared"), "Authorization": "Bearer bob"})
        anon = await c.post("/orders", content=b"x", headers=key("shared"))
        alice2 = await c.post("/orders", content=b"x",
                              headers={**key("shared"), "Authorization": "Bearer alice"})
        bob2 = await c.post("/orders", content=b"x",
                            headers={**key("shared"), "Authorization": "Bearer bob"})
    assert [run_of(r) for r in (alice, bob, anon)] == [1, 2, 3]
    assert not any(replayed(r) for r in (alice, bob, anon))
    assert replayed(alice2) and run_of(alice2) == 1
    assert replayed(bob2) and run_of(bob2) == 2
    assert app.calls == 3
    stored = rows(tmp_path / "s.db")
    assert len(stored) == 3
    assert all("shared" not in k and "alice" not in k for k, _, _ in stored)


def test_authorization_scheme_is_case_insensitive_the_credentials_are_not() -> None:
    # RFC 9110 §11.1: "It uses a case-insensitive token to identify the authentication
    # scheme"; the token68 after it (a bearer token) is compared exactly.
    def principal(value: str) -> str:
        return principal_from_authorization(http_scope(headers=[("authorization", value)]))

    same = {principal(v) for v in ("Bearer tok-EN", "bearer tok-EN", "BEARER tok-EN",
                                   "bEaReR   tok-EN", " Bearer tok-EN ")}
    assert len(same) == 1
    assert principal("Bearer tok-en") not in same  # credentials stay case-sensitive
    assert principal("Basic tok-EN") not in same   # another scheme is another principal
    assert principal("basic dXNlcjpwYXNz") == principal("Basic dXNlcjpwYXNz")
    # the usual spelling keeps the digest it had before the scheme was folded, so records
    # stored by an older version still match after an upgrade
    assert same == {"auth:" + hashlib.sha256(b"Bearer tok-EN").hexdigest()[:32]}


async def test_bearer_and_bearer_in_another_case_run_once(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store)
    async with client(mw) as c:
        first = await c.post("/orders", content=b"x",
                             headers={**key("case"), "Authorization": "bearer s3cret"})
        again = await c.post("/orders", content=b"x",
                             headers={**key("case"), "Authorization": "Bearer s3cret"})
        other = await c.post("/orders", content=b"x",
                             headers={**key("case"), "Authorization": "Bearer S3CRET"})
    assert not replayed(first)
    assert replayed(again) and run_of(again) == 1
    assert not replayed(other) and run_of(other) == 2  # another credential: its own run
    assert app.calls == 2


async def test_authorization_as_a_fingerprint_header_folds_the_scheme(store: SQLiteStore
                                                                      ) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store, principal=lambda scope: "tenant",
                               fingerprint_headers=("authorization", "proxy-authorization"))
    async with client(mw) as c:
        first = await c.post("/orders", headers={**key("fp"), "Authorization": "BEARER a",
                                                 "Proxy-Authorization": "basic Zm9v"})
        again = await c.post("/orders", headers={**key("fp"), "Authorization": "Bearer a",
                                                 "Proxy-Authorization": "Basic Zm9v"})
        changed = await c.post("/orders", headers={**key("fp"), "Authorization": "Bearer A",
                                                   "Proxy-Authorization": "Basic Zm9v"})
    assert first.status_code == 201 and not replayed(first)
    assert replayed(again) and run_of(again) == 1
    assert changed.status_code == 422  # the credentials differ: a different request
    assert app.calls == 1


async def test_custom_principal(store: SQLiteStore) -> None:
    def tenant(scope: Any) -> str:
        return dict(scope["headers"]).get(b"x-tenant", b"-").decode()

    app = App()
    mw = IdempotencyMiddleware(app, store=store, principal=tenant)
    async with client(mw) as c:
        t1 = await c.post("/orders", headers={**key("k"), "X-Tenant": "t1",
                                              "Authorization": "Bearer a"})
        t2 = await c.post("/orders", headers={**key("k"), "X-Tenant": "t2",
                                              "Authorization": "Bearer a"})
        t1b = await c.post("/orders", headers={**key("k"), "X-Tenant": "t1",
                                               "Authorization": "Bearer other"})
    assert not replayed(t1) and not replayed(t2)
    assert replayed(t1b) and run_of(t1b) == 1  # authorization no longer scopes
    assert app.calls == 2


# ---------------------------------------------------------------------------- expiry


async def test_record_expires_after_ttl(store: SQLiteStore) -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=store, ttl=0.3)
    async with client(mw) as c:
        first = await c.post("/orders", headers=key("t"))
        again = await c.post("/orders", headers=key("t"))
        await anyio.sleep(0.35)
        after = await c.post("/orders", headers=key("t"))
    assert replayed(again) and run_of(again) == 1
    assert not replayed(after) and run_of(after) == 2
    assert first.status_code == after.status_code == 201
    assert app.calls == 2


async def test_cleanup_purges_expired_records(store: SQLiteStore, tmp_path: Path) -> None:
    app = App()
    counting = FakeStore(store)
    mw = IdempotencyMiddleware(app, store=counting, ttl=0.1, cleanup_interval=0.15)
    async with client(mw) as c:
        for i in range(3):
            await c.post("/orders", headers=key(f"old{i}"))
        assert counting.calls["purge_expired"] == 0  # not due yet
        assert len(rows(tmp_path / "s.db")) == 3
        await anyio.sleep(0.2)
        await c.post("/orders", headers=key("new"))
        assert counting.calls["purge_expired"] == 1
        left = rows(tmp_path / "s.db")
        assert len(left) == 1 and left[0][1] == "completed"
        await c.post("/orders", headers=key("new2"))  # the next purge is not due yet
    assert counting.calls["purge_expired"] == 1
    purged = mw.events.since(0, name="idempotency.purged")
    assert [e.data["records"] for e in purged] == [3]


async def test_failing_purge_does_not_fail_the_request(store: SQLiteStore) -> None:
    app = App()
    flaky = FakeStore(store, fail={"purge_expired": StoreError("purge down")})
    mw = IdempotencyMiddleware(app, store=flaky, cleanup_interval=0.01)
    await anyio.sleep(0.02)
    async with client(mw) as c:
        r = await c.post("/orders", headers=key("p"))
    assert r.status_code == 201 and app.calls == 1
    errors = mw.events.since(0, name="idempotency.store_error")
    assert [e.data["op"] for e in errors] == ["purge"]
    assert "purge down" in errors[0].data["error"]


# ---------------------------------------------------------------------------- crash safety


async def test_cancelled_handler_leaves_the_claim_until_lock_ttl(store: SQLiteStore) -> None:
    # The client went away and the server cancelled the task: the store cannot be reached from
    # a cancelled task, so the claim stays (409) and lapses after lock_ttl, as for a dead
    # process. (An exception is another matter: tests/idempotency/test_server_errors.py.)
    app = App(delay=lambda run: 5.0 if run == 1 else 0.0)
    mw = IdempotencyMiddleware(app, store=store, lock_ttl=0.3)
    scope = http_scope(headers=[("idempotency-key", "c")])
    body = [{"type": "http.request", "body": b"x"}]
    with anyio.move_on_after(0.1):
        await call_raw(mw, scope, body)
    async with client(mw) as c:
        retry = await c.post("/orders", content=b"x", headers=key("c"))
        await anyio.sleep(0.35)
        later = await c.post("/orders", content=b"x", headers=key("c"))
        replay = await c.post("/orders", content=b"x", headers=key("c"))
    assert retry.status_code == 409 and retry.headers["retry-after"] == "1"
    assert later.status_code == 201 and not replayed(later) and run_of(later) == 2
    assert replayed(replay) and run_of(replay) == 2
    assert app.calls == 2
    assert "idempotency.released" not in mw.events.counts


async def test_handler_exception_propagates(store: SQLiteStore) -> None:
    mw = IdempotencyMiddleware(App(fail=1), store=store)
    async with client(mw) as c:
        with pytest.raises(RuntimeError, match="crashed on run 1"):
            await c.post("/orders", headers=key("boom"))


async def test_claim_lost_when_handler_outlives_lock_ttl(store: SQLiteStore) -> None:
    app = App(delay=lambda run: 0.5 if run == 1 else 0.0)
    mw = IdempotencyMiddleware(app, store=store, lock_ttl=0.2)
    results: dict[str, httpx.Response] = {}
    async with client(mw) as c:
        async with anyio.create_task_group() as tg:
            async def slow() -> None:
                results["slow"] = await c.post("/orders", content=b"x", headers=key("L"))

            tg.start_soon(slow)
            await anyio.sleep(0.3)  # past lock_ttl, the first handler still runs
            results["second"] = await c.post("/orders", content=b"x", headers=key("L"))
        results["third"] = await c.post("/orders", content=b"x", headers=key("L"))
    assert app.calls == 2
    assert run_of(results["second"]) == 2 and not replayed(results["second"])
    # the slow client still gets its own response ...
    assert results["slow"].status_code == 201 and run_of(results["slow"]) == 1
    # ... but the stored one is the second run's
    assert replayed(results["third"]) and run_of(results["third"]) == 2
    lost = mw.events.since(0, name="idempotency.claim_lost")
    assert len(lost) == 1 and "lock_ttl=0.2" in lost[0].data["detail"]


# ---------------------------------------------------------------------------- large bodies


async def test_response_over_max_response_body_is_sent_whole_and_replayed_bodiless(
        store: SQLiteStore) -> None:
    chunks = [bytes([65 + i]) * 100 for i in range(5)]
    app = App(chunks=chunks)
    mw = IdempotencyMiddleware(app, store=store, max_response_body=250)
    async with client(mw) as c:
        first = await c.post("/big", headers=key("big"))
        again = await c.post("/big", headers=key("big"))
    assert first.status_code == 201 and first.content == b"".join(chunks)
    assert again.status_code == 201 and again.content == b""
    assert again.headers["content-length"] == "0"
    assert again.headers["idempotency-body-omitted"] == "true"
    assert replayed(again)
    assert again.headers.raw[:len(first.headers.raw)] == first.headers.raw
    assert app.calls == 1
    assert names(mw)["idempotency.too_large"] == 1


async def test_large_response_is_streamed_not_buffered(store: SQLiteStore) -> None:
    chunks = [bytes([65 + i]) * 100 for i in range(5)]
    mw = IdempotencyMiddleware(App(chunks=chunks), store=store, max_response_body=250)
    scope = http_scope(headers=[("idempotency-key", "stream")])
    sent = await call_raw(mw, scope, [{"type": "http.request", "body": b""}])
    assert sent[0]["type"] == "http.response.start"
    bodies = [(m["body"], m.get("more_body", False)) for m in sent[1:]]
    # buffered up to the limit, then passed through chunk by chunk
    assert bodies == [(b"".join(chunks[:3]), True), (chunks[3], True), (chunks[4], False)]
    replay = await call_raw(mw, scope, [{"type": "http.request", "body": b""}])
    assert replay[0]["status"] == 201
    assert replay[0]["headers"] == [(b"content-type", b"text/plain"), (b"x-run", b"1"),
                                    (b"idempotent-replayed", b"true"),
                                    (b"content-length", b"0"),
                                    (b"idempotency-body-omitted", b"true")]
    assert replay[1]["body"] == b""


async def test_large_response_with_content_length_is_replaced_on_replay(store: SQLiteStore
                                                                         ) -> None:
    app = App()  # a JSON body of ~60 bytes with a content-length header
    mw = IdempotencyMiddleware(app, store=store, max_response_body=10)
    async with client(mw) as c:
        first = await c.post("/orders", headers=key("cl"))
        again = await c.post("/orders", headers=key("cl"))
    assert int(first.headers["content-length"]) == len(first.content) > 10
    assert again.headers.get_list("content-length") == ["0"]
    assert again.content == b""


async def test_response_exactly_at_the_limit_is_stored(store: SQLiteStore) -> None:
    chunks = [b"a" * 100, b"b" * 150]
    app = App(chunks=chunks)
    mw = IdempotencyMiddleware(app, store=store, max_response_body=250)
    async with client(mw) as c:
        await c.post("/orders", headers=key("edge"))
        again = await c.post("/orders", headers=key("edge"))
    assert again.content == b"".join(chunks)
    assert "idempotency-body-omitted" not in again.headers
    assert app.calls == 1


async def test_request_body_over_max_request_body_is_413() -> None:
    app = App()
    fake = FakeStore()
    mw = IdempotencyMiddleware(app, store=fake, max_request_body=10)
    async with client(mw) as c:
        big = await c.post("/orders", content=b"x" * 11, headers=key("big"))
        ok = await c.post("/orders", content=b"x" * 10, headers=key("ok"))
        no_key = await c.post("/orders", content=b"x" * 100)  # unkeyed: not our business
    assert big.status_code == 413
    assert "at most 10 bytes" in problem(big)["detail"]
    assert ok.status_code == 201 and no_key.status_code == 201
    assert app.bodies == [b"x" * 10, b"x" * 100]
    assert fake.calls["claim"] == 1


async def test_request_body_too_large_in_chunks_stops_reading() -> None:
    app = App()
    fake = FakeStore()
    mw = IdempotencyMiddleware(app, store=fake, max_request_body=10)
    received: list[Message] = []
    chunks = [{"type": "http.request", "body": b"x" * 6, "more_body": True} for _ in range(5)]

    async def receive() -> Message:
        received.append(chunks[len(received)])
        return received[-1]

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await mw(http_scope(headers=[("idempotency-key", "k")]), receive, send)
    assert len(received) == 2  # 12 bytes > 10: no more reads
    assert sent[0]["status"] == 413
    assert app.calls == 0 and sum(fake.calls.values()) == 0


async def test_client_disconnect_while_body_is_read(store: SQLiteStore, tmp_path: Path
                                                    ) -> None:
    app = App()
    counting = FakeStore(store)
    mw = IdempotencyMiddleware(app, store=counting)
    sent = await call_raw(mw, http_scope(headers=[("idempotency-key", "gone")]),
                          [{"type": "http.request", "body": b"part", "more_body": True},
                           {"type": "http.disconnect"}])
    assert sent == []
    assert app.calls == 0
    assert sum(counting.calls.values()) == 0
    assert not (tmp_path / "s.db").exists() or rows(tmp_path / "s.db") == []
    # the same key later runs normally
    again = await call_raw(mw, http_scope(headers=[("idempotency-key", "gone")]),
                           [{"type": "http.request", "body": b"part"}])
    assert again[0]["status"] == 201 and app.calls == 1


# ---------------------------------------------------------------------------- store outages


@pytest.mark.parametrize("failure", ["error", "oserror", "hang"])
async def test_store_outage_fails_closed(failure: str) -> None:
    app = App()
    if failure == "hang":
        fake = FakeStore(hang={"claim"})
    else:
        exc = StoreError("redis is down") if failure == "error" else ConnectionRefusedError()
        fake = FakeStore(fail={"claim": exc})
    mw = IdempotencyMiddleware(app, store=fake, store_timeout=0.2, retry_after=3)
    started = time.monotonic()
    async with client(mw) as c:
        r = await c.post("/orders", content=b"x", headers=key("down"))
    elapsed = time.monotonic() - started
    assert r.status_code == 503
    assert r.headers["retry-after"] == "3"
    assert problem(r)["title"] == "Idempotency store unavailable"
    assert app.calls == 0
    assert elapsed < 2.0
    if failure == "hang":
        assert elapsed >= 0.2
    errors = mw.events.since(0, name="idempotency.store_error")
    assert [e.data["op"] for e in errors] == ["claim"]
    expected = {"error": "StoreError: redis is down", "oserror": "ConnectionRefusedError",
                "hang": "TimeoutError"}[failure]
    assert errors[0].data["error"].startswith(expected)
    assert "idempotency.unguarded" not in mw.events.counts


@pytest.mark.parametrize("failure", ["error", "hang"])
async def test_store_outage_fail_open_runs_unguarded(failure: str) -> None:
    app = App()
    fake = (FakeStore(hang={"claim"}) if failure == "hang"
            else FakeStore(fail={"claim": StoreError("down")}))
    mw = IdempotencyMiddleware(app, store=fake, fail_open=True, store_timeout=0.2)
    async with client(mw) as c:
        first = await c.post("/orders", content=b"payload", headers=key("open"))
        second = await c.post("/orders", content=b"payload", headers=key("open"))
    assert first.status_code == second.status_code == 201
    assert not replayed(second)
    assert app.calls == 2  # unguarded: no replay possible
    assert app.bodies == [b"payload", b"payload"]
    unguarded = mw.events.since(0, name="idempotency.unguarded")
    assert [e.data["path"] for e in unguarded] == ["/orders", "/orders"]
    assert fake.calls["complete"] == 0


@pytest.mark.parametrize("failure", ["error", "hang"])
async def test_store_failing_on_complete_still_answers(store: SQLiteStore,
                                                       failure: str) -> None:
    app = App()
    flaky = (FakeStore(store, hang={"complete"}) if failure == "hang"
             else FakeStore(store, fail={"complete": StoreError("write failed")}))
    mw = IdempotencyMiddleware(app, store=flaky, store_timeout=0.2)
    async with client(mw) as c:
        r = await c.post("/orders", content=b"x", headers=key("cmp"))
        retry = await c.post("/orders", content=b"x", headers=key("cmp"))
    assert r.status_code == 201 and run_of(r) == 1
    assert json.loads(r.content)["got"] == "x"
    # nothing was stored, the claim stays until lock_ttl: the retry is told to wait
    assert retry.status_code == 409
    assert app.calls == 1
    errors = mw.events.since(0, name="idempotency.store_error")
    assert [e.data["op"] for e in errors] == ["complete"]
    assert "idempotency.claim_lost" not in mw.events.counts


async def test_a_broken_store_fails_closed_too() -> None:
    app = App()
    mw = IdempotencyMiddleware(app, store=FakeStore(fail={"claim": KeyError("bug")}))
    async with client(mw) as c:
        r = await c.post("/orders", headers=key("bug"))
    assert r.status_code == 503 and r.headers["retry-after"]
    assert app.calls == 0
    assert mw.events.counts.get("idempotency.store_error") == 1


# ---------------------------------------------------------------------------- events, metrics


async def test_events_feed_idempotency_metrics(store: SQLiteStore) -> None:
    pytest.importorskip("prometheus_client")
    from h2guard.metrics import IdempotencyMetrics

    app = App(chunks=[b"z" * 40, b"z" * 40])
    events = EventLog()
    mw = IdempotencyMiddleware(app, store=store, events=events, max_response_body=50,
                               require_key=True)
    assert mw.events is events
    async with client(mw) as c:
        await c.post("/orders", content=b"1", headers=key("m"))        # claimed, too large
        await c.post("/orders", content=b"1", headers=key("m"))        # replayed
        await c.post("/orders", content=b"2", headers=key("m"))        # mismatch
        await c.post("/orders", content=b"1", headers=key('"bad\\x"'))  # rejected
        await c.post("/orders", content=b"1")                          # rejected (missing)
    metrics = IdempotencyMetrics(mw.events)
    text = metrics.render()[0].decode()
    for line in ('h2guard_idempotency_requests_total{outcome="claimed"} 1.0',
                 'h2guard_idempotency_requests_total{outcome="replayed"} 1.0',
                 'h2guard_idempotency_requests_total{outcome="mismatch"} 1.0',
                 'h2guard_idempotency_requests_total{outcome="rejected"} 2.0',
                 "h2guard_idempotency_bodies_omitted_total 1.0",
                 'h2guard_idempotency_store_seconds_count{op="claim"} 3.0',
                 'h2guard_idempotency_store_seconds_count{op="complete"} 1.0'):
        assert line in text, line
    # live: later events are counted too
    async with client(mw) as c:
        await c.post("/orders", content=b"1", headers=key("m"))
    assert 'h2guard_idempotency_requests_total{outcome="replayed"} 2.0' in \
        metrics.render()[0].decode()


async def test_metrics_count_store_errors_conflicts_unguarded_and_claims_lost() -> None:
    pytest.importorskip("prometheus_client")
    from h2guard.metrics import IdempotencyMetrics

    events = EventLog()
    metrics = IdempotencyMetrics(events)
    down = IdempotencyMiddleware(App(), store=FakeStore(fail={"claim": StoreError("x")}),
                                 fail_open=True, events=events)
    conflict = IdempotencyMiddleware(App(), store=_InProgressStore(), events=events)
    lost = IdempotencyMiddleware(App(), store=_LosingStore(), events=events)
    async with client(down) as c1, client(conflict) as c2, client(lost) as c3:
        await c1.post("/orders", headers=key("a"))
        await c2.post("/orders", headers=key("a"))
        await c3.post("/orders", headers=key("a"))
    text = metrics.render()[0].decode()
    for line in ('h2guard_idempotency_requests_total{outcome="unguarded"} 1.0',
                 'h2guard_idempotency_requests_total{outcome="conflict"} 1.0',
                 'h2guard_idempotency_store_errors_total{op="claim"} 1.0',
                 "h2guard_idempotency_claims_lost_total 1.0"):
        assert line in text, line


async def test_metrics_count_keys_released_unstored(store: SQLiteStore) -> None:
    """With store_server_errors=False (the default) a 5xx or a handler that raised lets the key
    go, so that a retry runs the handler again: counted by why, not by the free-text reason."""
    pytest.importorskip("prometheus_client")
    from h2guard.metrics import IdempotencyMetrics

    events = EventLog()
    metrics = IdempotencyMetrics(events)
    failing = IdempotencyMiddleware(App(status=503), store=store, events=events)
    raising = IdempotencyMiddleware(App(fail=1), store=store, events=events)
    async with client(failing) as c1:
        await c1.post("/orders", headers=key("five"))
        await c1.post("/orders", headers=key("five"))  # released: it runs again
    async with client(raising, raise_app_exceptions=False) as c2:
        await c2.post("/orders", headers=key("raise"))
    text = metrics.render()[0].decode()
    for line in ('h2guard_idempotency_released_total{why="server_error"} 2.0',
                 'h2guard_idempotency_released_total{why="unfinished"} 1.0'):
        assert line in text, (line, text)


class _InProgressStore(FakeStore):
    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        return Claim("in_progress", fingerprint)


class _LosingStore(FakeStore):
    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        return False


# ---------------------------------------------------------------------------- frameworks, scopes


async def test_inside_starlette_with_add_middleware(store: SQLiteStore) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    runs: list[Any] = []

    async def create(request: Request) -> JSONResponse:
        data = await request.json()
        runs.append(data)
        return JSONResponse({"order": len(runs), "item": data["item"]}, status_code=201,
                            headers={"Location": f"/orders/{len(runs)}"})

    async def show(request: Request) -> JSONResponse:
        return JSONResponse({"runs": len(runs)})

    app = Starlette(routes=[Route("/orders", create, methods=["POST"]),
                            Route("/orders", show, methods=["GET"])])
    events = EventLog()
    app.add_middleware(IdempotencyMiddleware, store=store, events=events, require_key=True)
    async with client(app) as c:
        first = await c.post("/orders", json={"item": "book"}, headers=key("s1"))
        again = await c.post("/orders", json={"item": "book"}, headers=key("s1"))
        other = await c.post("/orders", json={"item": "pen"}, headers=key("s1"))
        missing = await c.post("/orders", json={"item": "pen"})
        listing = await c.get("/orders")
    assert first.status_code == 201 and first.json() == {"order": 1, "item": "book"}
    assert first.headers["location"] == "/orders/1"
    assert replayed(again) and again.content == first.content
    assert again.headers["location"] == "/orders/1"
    assert other.status_code == 422
    assert missing.status_code == 400
    assert listing.json() == {"runs": 1}
    assert runs == [{"item": "book"}]
    assert events.counts["idempotency.replayed"] == 1


async def test_wrapping_a_starlette_app_object(store: SQLiteStore) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    count = 0

    async def pay(request: Request) -> PlainTextResponse:
        nonlocal count
        count += 1
        return PlainTextResponse(f"paid {count} {(await request.body()).decode()}")

    async def stream(request: Request) -> StreamingResponse:
        nonlocal count
        count += 1

        async def gen() -> Any:
            for i in range(3):
                yield f"part{i};".encode()

        return StreamingResponse(gen(), media_type="text/plain")

    inner = Starlette(routes=[Route("/pay", pay, methods=["POST"]),
                              Route("/stream", stream, methods=["POST"])])
    mw = IdempotencyMiddleware(inner, store=store)
    async with client(mw) as c:
        a = await c.post("/pay", content=b"10", headers=key("w"))
        b = await c.post("/pay", content=b"10", headers=key("w"))
        s1 = await c.post("/stream", headers=key("st"))
        s2 = await c.post("/stream", headers=key("st"))
    assert a.text == "paid 1 10" and b.text == "paid 1 10" and replayed(b)
    assert s1.text == "part0;part1;part2;" and s2.text == s1.text and replayed(s2)
    assert count == 2


async def test_lifespan_and_websocket_scopes_pass_through() -> None:
    seen: list[tuple[Any, Any, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    fake = FakeStore()
    mw = IdempotencyMiddleware(inner, store=fake, require_key=True)

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        pass

    lifespan = {"type": "lifespan", "asgi": {"version": "3.0"}}
    websocket = {**http_scope(method="GET", headers=[("idempotency-key", '"bad\\x"')]),
                 "type": "websocket"}
    del websocket["method"]  # websocket scopes have no method
    await mw(lifespan, receive, send)
    await mw(websocket, receive, send)
    assert [s for s, _, _ in seen] == [lifespan, websocket]
    assert all(r is receive and s is send for _, r, s in seen)
    assert sum(fake.calls.values()) == 0 and len(mw.events) == 0


async def test_starlette_lifespan_runs_through_the_middleware() -> None:
    import contextlib

    from starlette.applications import Starlette

    phases: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        phases.append("startup")
        yield
        phases.append("shutdown")

    app = Starlette(lifespan=lifespan)
    app.add_middleware(IdempotencyMiddleware, store=FakeStore())
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert phases == ["startup", "shutdown"]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete",
                                         "lifespan.shutdown.complete"]


# ---------------------------------------------------------------------------- SQLite, processes


def _claim_keys(path: str, n: int, barrier: Any, results: Any) -> None:
    """Child process: claim keys 0..n-1 against ``path``; report the ones this process won."""

    async def main() -> list[int]:
        store = SQLiteStore(path)
        won = []
        try:
            for i in range(n):
                claim = await store.claim(f"key-{i}", "fp", token=f"pid-{os.getpid()}",
                                          lock_ttl=60.0, ttl=60.0)
                if claim.outcome == "claimed":
                    won.append(i)
                else:
                    assert claim.outcome == "in_progress" and claim.fingerprint == "fp"
        finally:
            await store.aclose()
        return won

    barrier.wait(timeout=20)
    try:
        results.put(("ok", asyncio.run(main())))
    except BaseException as exc:  # report, so the parent fails with the reason
        results.put(("error", repr(exc)))


def test_sqlite_store_claims_each_key_once_across_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "s.db")
    n = 100
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=_claim_keys, args=(path, n, barrier, results))
             for _ in range(2)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=25) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
    assert all(status == "ok" for status, _ in outcomes), outcomes
    won = [set(keys) for _, keys in outcomes]
    assert won[0].isdisjoint(won[1])
    assert won[0] | won[1] == set(range(n))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*) FROM h2guard_idempotency").fetchone() == (n,)
