"""The middleware inside FastAPI (on top of Starlette, with its own request parsing and
dependency injection): a JSON POST handler runs once per key, the replay is exact, and a
principal taken from the app's own auth header scopes the keys."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from h2guard.idempotency import IdempotencyMiddleware, SQLiteStore

fastapi = pytest.importorskip("fastapi", reason="fastapi is a dev extra (pip install -e '.[dev]')")
pydantic = pytest.importorskip("pydantic")


class Order(pydantic.BaseModel):  # module level: FastAPI resolves the string annotation here
    item: str
    quantity: int


def _app(store: SQLiteStore, calls: list[dict[str, object]]) -> object:
    app = fastapi.FastAPI()

    @app.post("/orders", status_code=201)
    async def create(order: Order) -> dict[str, object]:
        calls.append(order.model_dump())
        return {"order": len(calls), "item": order.item}

    @app.get("/orders/{n}")
    async def read(n: int) -> dict[str, int]:
        return {"order": n}

    app.add_middleware(IdempotencyMiddleware, store=store,  # type: ignore[arg-type]
                       principal=lambda scope: dict(scope["headers"]).get(b"x-api-key", b"-")
                       .decode())
    return app


async def test_fastapi_app_runs_each_keyed_order_once(tmp_path: Path) -> None:
    calls: list[dict[str, object]] = []
    app = _app(SQLiteStore(tmp_path / "s.db"), calls)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        body = {"item": "book", "quantity": 2}
        first = await client.post("/orders", json=body,
                                  headers={"Idempotency-Key": '"k-1"', "x-api-key": "alice"})
        again = await client.post("/orders", json=body,
                                  headers={"Idempotency-Key": '"k-1"', "x-api-key": "alice"})
        other_tenant = await client.post("/orders", json=body, headers={
            "Idempotency-Key": '"k-1"', "x-api-key": "bob"})
        changed = await client.post("/orders", json={"item": "pen", "quantity": 1},
                                    headers={"Idempotency-Key": '"k-1"', "x-api-key": "alice"})
        invalid = await client.post("/orders", json={"item": "x"},  # FastAPI's own 422
                                    headers={"Idempotency-Key": '"k-2"', "x-api-key": "alice"})
        invalid_again = await client.post("/orders", json={"item": "x"}, headers={
            "Idempotency-Key": '"k-2"', "x-api-key": "alice"})
        read = await client.get("/orders/1")
    assert first.status_code == 201 and first.json() == {"order": 1, "item": "book"}
    assert again.status_code == 201 and again.content == first.content
    assert again.headers["idempotent-replayed"] == "true"
    assert other_tenant.status_code == 201 and other_tenant.json()["order"] == 2  # its own run
    assert changed.status_code == 422 and changed.headers["content-type"].startswith(
        "application/problem+json")
    assert invalid.status_code == 422 and "detail" in invalid.json()  # validation error, stored
    assert invalid_again.content == invalid.content
    assert invalid_again.headers["idempotent-replayed"] == "true"
    assert read.status_code == 200  # GET is not guarded
    assert len(calls) == 2
