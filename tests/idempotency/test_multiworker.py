"""200 concurrent requests with one key over 4 uvicorn worker processes sharing one store.

The handler must run exactly once (its side effect is a line appended to a file); every other
request gets 409 (the first is still running) or the replayed response. Run for SQLite (one
file shared by the processes), Redis and PostgreSQL (real servers started by conftest.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest
from uvicorn_workers import WORKERS, uvicorn_app  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(120)

REQUESTS = 200


@pytest.mark.parametrize("uvicorn_app", ["sqlite", "redis", "postgres"], indirect=True)
async def test_one_key_200_requests_4_workers_handler_runs_once(
        uvicorn_app: tuple[str, Path]) -> None:  # noqa: F811  (the imported fixture)
    base, effects = uvicorn_app
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        # warm every worker (imports, store connections) without touching the key under test
        await asyncio.gather(*(client.post("/orders", content=b"warm",
                                           headers={"Idempotency-Key": f"warm-{i}"})
                               for i in range(2 * WORKERS)))
        effects.write_text("")
        responses = await asyncio.gather(*(client.post(
            "/orders", content=b'{"item": "widget"}',
            headers={"Idempotency-Key": '"order-7f3a"', "content-type": "application/json"})
            for _ in range(REQUESTS)))
        # after the first finished, a late retry gets the replay
        late = await client.post("/orders", content=b'{"item": "widget"}',
                                 headers={"Idempotency-Key": '"order-7f3a"',
                                          "content-type": "application/json"})
    runs = effects.read_text().splitlines()
    statuses = Counter((r.status_code, r.headers.get("idempotent-replayed"))
                       for r in responses)
    pids = {r.headers.get("x-worker-pid") for r in responses}
    print(f"\n{REQUESTS} same-key requests over {WORKERS} workers: {dict(statuses)}; "
          f"answered by {len(pids)} workers; handler runs: {len(runs)}")
    assert len(runs) == 1, runs
    originals = [r for r in responses if r.status_code == 201
                 and r.headers.get("idempotent-replayed") is None]
    assert len(originals) == 1
    for r in responses:
        assert r.status_code in (201, 409), (r.status_code, r.text)
        if r.status_code == 201:
            assert r.content == originals[0].content  # the replay is the same response
        else:
            assert r.headers.get("retry-after")
    assert late.status_code == 201 and late.headers.get("idempotent-replayed") == "true"
    assert late.content == originals[0].content
    assert len(pids) >= 2  # really spread over processes


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
async def test_a_worker_killed_mid_request_leaves_a_claim_that_expires(
        kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    from uvicorn_workers import Uvicorn, _store_spec

    spec = _store_spec(kind, request, tmp_path)
    key = {"Idempotency-Key": f"crash-{kind}"}
    first = Uvicorn(tmp_path, spec, workers=1, lock_ttl=1.5)
    try:
        async with httpx.AsyncClient(base_url=first.url, timeout=10) as client:
            task = asyncio.ensure_future(client.post(
                "/orders", content=b"order-1", headers={**key, "x-slow": "1"}))
            for _ in range(200):  # until the handler runs (its side effect is written)
                if first.effects.read_text():
                    break
                await asyncio.sleep(0.02)
            assert first.effects.read_text(), "the slow handler never started"
            first.kill()  # the process dies mid-request: no response, no cleanup
            with pytest.raises(httpx.TransportError):
                await task
    finally:
        if first.proc.poll() is None:
            first.kill()
    second = Uvicorn(tmp_path, spec, workers=1, lock_ttl=1.5)
    try:
        async with httpx.AsyncClient(base_url=second.url, timeout=10) as client:
            held = await client.post("/orders", content=b"order-1", headers=key)
            assert held.status_code == 409  # the dead worker's claim still holds the key
            await asyncio.sleep(1.7)  # lock_ttl passes
            retried = await client.post("/orders", content=b"order-1", headers=key)
            assert retried.status_code == 201
            assert retried.headers.get("idempotent-replayed") is None  # it ran again
            again = await client.post("/orders", content=b"order-1", headers=key)
            assert again.headers.get("idempotent-replayed") == "true"
        assert len(second.effects.read_text().splitlines()) == 2  # the dead run + the retry
    finally:
        second.stop()
