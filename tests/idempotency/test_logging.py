"""Log records on the ``h2guard.idempotency`` logger: every store error and every lost claim at
WARNING, naming the key by its hash (never the key, never the credential) and saying what the
middleware did about it (503, served without idempotency, sent but not stored)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from h2guard.idempotency import (
    Claim,
    IdempotencyMiddleware,
    SQLiteStore,
    StoredResponse,
    StoreError,
)
from h2guard.idempotency.fingerprint import principal_from_authorization

pytestmark = pytest.mark.timeout(30)

KEY = "order-4711-secret-ish"
AUTH = "Bearer tok-SECRET"


class Store:
    """A store whose ``fail`` ops raise, ``hang`` ops sleep, and whose completes can be
    ``lose``-t (the claim was taken over); otherwise every claim is granted."""

    def __init__(self, *, fail: tuple[str, ...] = (), hang: tuple[str, ...] = (),
                 lose: bool = False) -> None:
        self.fail, self.hang, self.lose = fail, hang, lose

    async def _step(self, op: str) -> None:
        if op in self.hang:
            await anyio.sleep(30)
        if op in self.fail:
            raise StoreError(f"{op}: connection refused by cache:6379")

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        await self._step("claim")
        return Claim("claimed", fingerprint)

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        await self._step("complete")
        return not self.lose

    async def release(self, key: str, token: str) -> bool:
        await self._step("release")
        return True

    async def purge_expired(self) -> int:
        await self._step("purge")
        return 0

    async def aclose(self) -> None:
        pass


async def app(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"created"})


def key_hash(key: str = KEY, authorization: str = AUTH) -> str:
    scope = {"headers": [(b"authorization", authorization.encode())]}
    return hashlib.sha256(f"{principal_from_authorization(scope)}\x1f{key}".encode()).hexdigest()


async def post(mw: IdempotencyMiddleware) -> httpx.Response:
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        return await c.post("/orders", content=b"{}", headers={
            "Idempotency-Key": KEY, "Authorization": AUTH})


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "h2guard.idempotency"]


def only_warning(caplog: pytest.LogCaptureFixture) -> logging.LogRecord:
    found = records(caplog)
    assert len(found) == 1, [r.getMessage() for r in found]
    record = found[0]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert KEY not in message and "SECRET" not in message  # the key's hash only
    assert KEY not in str(record.__dict__) and "SECRET" not in str(record.__dict__)
    return record


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="h2guard.idempotency")


@pytest.mark.parametrize("how", ["fail", "hang"])
async def test_claim_error_fail_closed_says_503(caplog: pytest.LogCaptureFixture,
                                                how: str) -> None:
    store = Store(fail=("claim",)) if how == "fail" else Store(hang=("claim",))
    mw = IdempotencyMiddleware(app, store=store, name="orders", store_timeout=0.2,
                               retry_after=3)
    r = await post(mw)
    assert r.status_code == 503
    record = only_warning(caplog)
    message = record.getMessage()
    assert message.startswith("[orders] idempotency store error on claim of key ")
    assert key_hash() in message and "POST /orders" in message
    assert "answered 503 (Retry-After: 3), the handler did not run" in message
    assert ("connection refused by cache:6379" if how == "fail" else "TimeoutError") in message
    data = record.h2guard  # type: ignore[attr-defined]
    assert data == {"event": "idempotency.store_error", "app": "orders", "op": "claim",
                    "key_hash": key_hash(), "action": "503", "method": "POST",
                    "path": "/orders"}


async def test_claim_error_fail_open_says_served_without_idempotency(
        caplog: pytest.LogCaptureFixture) -> None:
    mw = IdempotencyMiddleware(app, store=Store(fail=("claim",)), name="orders",
                               fail_open=True)
    r = await post(mw)
    assert r.status_code == 201
    record = only_warning(caplog)
    assert "WITHOUT idempotency (fail_open=True)" in record.getMessage()
    assert record.h2guard["action"] == "served without idempotency"  # type: ignore[attr-defined]


async def test_complete_error_says_sent_but_not_stored(caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    mw = IdempotencyMiddleware(app, store=Store(fail=("complete",)), name="orders",
                               lock_ttl=45)
    r = await post(mw)
    assert r.status_code == 201 and r.content == b"created"
    message = only_warning(caplog).getMessage()
    assert "on complete of key " + key_hash() in message
    assert "its 201 response is sent but NOT stored" in message
    assert "409 until lock_ttl=45 s, then runs the handler again" in message


async def test_a_lost_claim_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    mw = IdempotencyMiddleware(app, store=Store(lose=True), name="orders", lock_ttl=0.5)
    r = await post(mw)
    assert r.status_code == 201
    record = only_warning(caplog)
    message = record.getMessage()
    assert "claim lost for key " + key_hash() in message
    assert "outlived lock_ttl=0.5 s" in message and "may have run twice" in message
    assert record.h2guard["event"] == "idempotency.claim_lost"  # type: ignore[attr-defined]


async def test_a_failed_cleanup_is_a_warning_and_the_request_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    mw = IdempotencyMiddleware(app, store=Store(fail=("purge",)), name="orders",
                               cleanup_interval=0.0)
    r = await post(mw)
    assert r.status_code == 201
    message = only_warning(caplog).getMessage()
    assert "store error on purge" in message and "requests are not affected" in message


async def test_a_healthy_request_logs_nothing(caplog: pytest.LogCaptureFixture,
                                              tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    mw = IdempotencyMiddleware(app, store=store, name="orders")
    await post(mw)
    await post(mw)  # a replay
    assert [r.getMessage() for r in records(caplog)] == [
        f"idempotency store: SQLite file {tmp_path / 's.db'} (the path given)"]
    await store.aclose()
