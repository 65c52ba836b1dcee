"""One conformance suite, three stores: SQLite, Redis and PostgreSQL (real servers).

Every store must give the middleware the same three atomic operations with the same meaning
(see ``h2guard/idempotency/store.py``): claim a free key or report who holds it; complete and
release only with the token that holds the claim; expire locks and records; survive
concurrency; fail with StoreError, in bounded time, when it cannot answer.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from h2guard.idempotency import IdempotencyStore, SQLiteStore, StoredResponse, StoreError

pytestmark = pytest.mark.timeout(60)

STORES = ["sqlite", "redis", "postgres"]


def _factory(kind: str, request: pytest.FixtureRequest,
             tmp_path: Path) -> Callable[[], IdempotencyStore]:
    """A maker of store instances that share one backing store (like processes would)."""
    tag = uuid.uuid4().hex[:10]
    if kind == "sqlite":
        path = tmp_path / "store.sqlite3"
        return lambda: SQLiteStore(path)
    if kind == "redis":
        from h2guard.idempotency import RedisStore

        url = request.getfixturevalue("redis_url")
        return lambda: RedisStore(url, prefix=f"conf-{tag}:")
    from h2guard.idempotency import PostgresStore

    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresStore(dsn, table=f"conf_{tag}")


@pytest.fixture(params=STORES)
async def make_store(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[Callable[[], IdempotencyStore]]:
    factory = _factory(request.param, request, tmp_path)
    made: list[IdempotencyStore] = []

    def make() -> IdempotencyStore:
        store = factory()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.aclose()


RESPONSE = StoredResponse(201, [(b"content-type", b"application/json"), (b"x-a", b"1"),
                                (b"x-a", b"2"), (b"set-cookie", b"s=\x01\xff")],
                          bytes(range(256)) * 4)


async def test_claim_then_in_progress_with_the_first_fingerprint(make_store: Any) -> None:
    store = make_store()
    first = await store.claim("k", "fp-1", token="t1", lock_ttl=30, ttl=60)
    assert (first.outcome, first.fingerprint) == ("claimed", "fp-1")
    again = await store.claim("k", "fp-2", token="t2", lock_ttl=30, ttl=60)
    assert (again.outcome, again.fingerprint, again.response) == ("in_progress", "fp-1", None)
    other = await store.claim("k2", "fp-3", token="t3", lock_ttl=30, ttl=60)
    assert other.outcome == "claimed"  # keys are independent


async def test_only_the_claiming_token_completes_and_the_response_replays_exactly(
        make_store: Any) -> None:
    store = make_store()
    await store.claim("k", "fp", token="mine", lock_ttl=30, ttl=60)
    assert await store.complete("k", "theirs", RESPONSE, ttl=60) is False
    assert await store.complete("k", "mine", RESPONSE, ttl=60) is True
    assert await store.complete("k", "mine", RESPONSE, ttl=60) is False  # already completed
    done = await store.claim("k", "fp", token="later", lock_ttl=30, ttl=60)
    assert done.outcome == "completed" and done.fingerprint == "fp"
    assert done.response == RESPONSE  # status, headers in order (repeats kept), binary body
    omitted = StoredResponse(200, [(b"content-type", b"text/plain")], b"", body_omitted=True)
    await store.claim("big", "fp", token="t", lock_ttl=30, ttl=60)
    assert await store.complete("big", "t", omitted, ttl=60)
    assert (await store.claim("big", "fp", token="u", lock_ttl=30, ttl=60)).response == omitted


async def test_a_large_response_round_trips(make_store: Any) -> None:
    store = make_store()
    big = StoredResponse(200, [(b"content-type", b"application/octet-stream")],
                         bytes(range(256)) * 4096)  # 1 MiB
    await store.claim("k", "fp", token="t", lock_ttl=30, ttl=60)
    assert await store.complete("k", "t", big, ttl=60)
    assert (await store.claim("k", "fp", token="u", lock_ttl=30, ttl=60)).response == big


async def test_an_expired_lock_frees_the_key_and_the_old_holder_cannot_complete(
        make_store: Any) -> None:
    store = make_store()
    await store.claim("k", "fp", token="crashed", lock_ttl=0.2, ttl=60)
    assert (await store.claim("k", "fp", token="t2", lock_ttl=0.2, ttl=60)).outcome \
        == "in_progress"
    await asyncio.sleep(0.35)
    retaken = await store.claim("k", "fp-new", token="t3", lock_ttl=30, ttl=60)
    assert (retaken.outcome, retaken.fingerprint) == ("claimed", "fp-new")
    assert await store.complete("k", "crashed", RESPONSE, ttl=60) is False
    assert await store.complete("k", "t3", RESPONSE, ttl=60) is True


async def test_release_frees_the_key_only_for_the_claiming_token(make_store: Any) -> None:
    store, other = make_store(), make_store()
    await store.claim("k", "fp", token="mine", lock_ttl=30, ttl=60)
    assert await other.release("k", "theirs") is False  # not their claim: left alone
    assert (await store.claim("k", "fp", token="x", lock_ttl=30, ttl=60)).outcome \
        == "in_progress"
    assert await other.release("k", "mine") is True  # any instance, the right token
    assert await store.complete("k", "mine", RESPONSE, ttl=60) is False  # gone
    again = await store.claim("k", "fp-2", token="next", lock_ttl=30, ttl=60)
    assert (again.outcome, again.fingerprint) == ("claimed", "fp-2")
    # a completed record is released by the claim that completed it, and only by it
    assert await store.complete("k", "next", RESPONSE, ttl=60) is True
    assert await store.release("k", "mine") is False
    assert (await store.claim("k", "fp-2", token="y", lock_ttl=30, ttl=60)).outcome \
        == "completed"
    assert await store.release("k", "next") is True
    assert (await store.claim("k", "fp-3", token="z", lock_ttl=30, ttl=60)).outcome \
        == "claimed"
    assert await store.release("never-claimed", "z") is False
    # a lapsed claim retaken by someone else is theirs: the old holder cannot release it
    await store.claim("lapse", "fp", token="old", lock_ttl=0.2, ttl=60)
    await asyncio.sleep(0.3)
    await other.claim("lapse", "fp", token="new", lock_ttl=30, ttl=60)
    assert await store.release("lapse", "old") is False
    assert (await store.claim("lapse", "fp", token="w", lock_ttl=30, ttl=60)).outcome \
        == "in_progress"


async def test_completed_records_expire_after_their_ttl(make_store: Any) -> None:
    store = make_store()
    await store.claim("k", "fp", token="t", lock_ttl=30, ttl=60)
    await store.complete("k", "t", RESPONSE, ttl=0.3)
    assert (await store.claim("k", "fp", token="u", lock_ttl=30, ttl=60)).outcome == "completed"
    await asyncio.sleep(0.45)
    assert (await store.claim("k", "fp2", token="v", lock_ttl=30, ttl=60)).outcome == "claimed"


async def test_purge_removes_expired_records_only(make_store: Any) -> None:
    store = make_store()
    for i in range(5):
        await store.claim(f"old-{i}", "fp", token="t", lock_ttl=0.1, ttl=0.2)
    await store.claim("live", "fp", token="t", lock_ttl=30, ttl=60)
    await asyncio.sleep(0.35)
    purged = await store.purge_expired()
    assert purged in (0, 5)  # 0: a store that expires records by itself (Redis TTL)
    assert (await store.claim("live", "fp", token="x", lock_ttl=30, ttl=60)).outcome \
        == "in_progress"
    assert (await store.claim("old-0", "fp", token="x", lock_ttl=30, ttl=60)).outcome \
        == "claimed"


async def test_200_concurrent_claims_of_one_key_across_4_instances_claim_once(
        make_store: Any) -> None:
    stores = [make_store() for _ in range(4)]
    claims = await asyncio.gather(*(
        stores[i % 4].claim("hot", f"fp-{i}", token=f"t-{i}", lock_ttl=30, ttl=60)
        for i in range(200)))
    outcomes = Counter(c.outcome for c in claims)
    assert outcomes == {"claimed": 1, "in_progress": 199}
    winner = next(i for i, c in enumerate(claims) if c.outcome == "claimed")
    assert {c.fingerprint for c in claims} == {f"fp-{winner}"}


async def test_many_keys_at_once_each_claimed_exactly_once(make_store: Any) -> None:
    stores = [make_store() for _ in range(4)]
    claims = await asyncio.gather(*(
        stores[(i * 7) % 4].claim(f"key-{i % 50}", "fp", token=f"t-{i}", lock_ttl=30, ttl=60)
        for i in range(200)))
    claimed = Counter(f"key-{i % 50}" for i, c in enumerate(claims) if c.outcome == "claimed")
    assert claimed == {f"key-{i}": 1 for i in range(50)}


@pytest.mark.parametrize("kind", STORES)
async def test_an_unreachable_store_raises_store_error_in_bounded_time(
        kind: str, tmp_path: Path) -> None:
    if kind == "sqlite":
        store: IdempotencyStore = SQLiteStore(tmp_path / "missing-dir" / "db.sqlite3")
    elif kind == "redis":
        from h2guard.idempotency import RedisStore

        store = RedisStore("redis://127.0.0.1:1/0", timeout=0.5)
    else:
        from h2guard.idempotency import PostgresStore

        store = PostgresStore("postgresql://nobody@127.0.0.1:1/none", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        await store.claim("k", "fp", token="t", lock_ttl=1, ttl=1)
    assert time.monotonic() - started < 5
    assert "\n" not in str(caught.value)  # one line, for a log and a 503's reason
    await store.aclose()
