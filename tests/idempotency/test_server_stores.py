"""RedisStore and PostgresStore against real servers (started by this directory's conftest).

The store contract in a few seconds: claim / in progress / complete / replay, lock and record
expiry, one winner among 200 concurrent claims from 4 store objects, purge, corrupt records,
and servers that are down, refuse, or go silent mid-call: always a StoreError, in bounded time.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from store_servers import FreezingProxy, Server, closed_port, silent_listener

from h2guard.idempotency.store import IdempotencyStore, StoredResponse, StoreError
from h2guard.idempotency.stores.postgres import PostgresStore
from h2guard.idempotency.stores.redis import RedisStore

pytestmark = pytest.mark.timeout(60)

RESPONSE = StoredResponse(
    201,
    [(b"content-type", b"application/json"), (b"x-bin", b"\x00\xff\xfe raw"),
     (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
    b'{"id": 1}\x00\xff' + bytes(range(256)),
)
OMITTED = StoredResponse(200, [(b"content-length", b"99999999")], b"", body_omitted=True)

Factory = Callable[..., IdempotencyStore]


@pytest.fixture(params=["redis", "postgres"])
async def new_store(request: pytest.FixtureRequest) -> AsyncIterator[Factory]:
    """``new_store(**kw)``: a new store object of the kind under test; every object made in
    one test shares one namespace (Redis key prefix / PostgreSQL table) of its own."""
    tag = uuid.uuid4().hex[:12]
    made: list[IdempotencyStore] = []
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")

        def new(**kw: Any) -> IdempotencyStore:
            made.append(RedisStore(url, prefix=f"test:{tag}:", **kw))
            return made[-1]
    else:
        dsn = request.getfixturevalue("postgres_dsn")

        def new(**kw: Any) -> IdempotencyStore:
            made.append(PostgresStore(dsn, table=f"idem_{tag}", **kw))
            return made[-1]
    yield new
    for store in made:
        await store.aclose()


async def test_claim_in_progress_complete_replay(new_store: Factory) -> None:
    store = new_store()
    assert isinstance(store, IdempotencyStore)
    for key, response in (("k1", RESPONSE), ("k2", OMITTED)):
        first = await store.claim(key, "fp-a", token="t1", lock_ttl=30, ttl=60)
        assert (first.outcome, first.fingerprint, first.response) == ("claimed", "fp-a", None)
        again = await store.claim(key, "fp-b", token="t2", lock_ttl=30, ttl=60)
        assert (again.outcome, again.fingerprint) == ("in_progress", "fp-a")
        assert await store.complete(key, "t2", response, ttl=60) is False
        assert await store.complete(key, "t1", response, ttl=60) is True
        assert await store.complete(key, "t1", response, ttl=60) is False  # done is done
        replay = await store.claim(key, "fp-c", token="t3", lock_ttl=30, ttl=60)
        assert (replay.outcome, replay.fingerprint) == ("completed", "fp-a")
        assert replay.response == response
        assert replay.response is not None
        assert replay.response.headers == response.headers
        assert replay.response.body == response.body
        assert replay.response.body_omitted is response.body_omitted
    # a key never claimed cannot be completed
    assert await store.complete("nobody", "t1", RESPONSE, ttl=60) is False


async def test_lock_expiry_frees_the_key(new_store: Factory) -> None:
    store = new_store()
    assert (await store.claim("k", "fp-a", token="a", lock_ttl=0.2, ttl=60)).outcome == "claimed"
    assert (await store.claim("k", "fp-b", token="b", lock_ttl=0.2, ttl=60)).outcome \
        == "in_progress"
    await asyncio.sleep(0.3)
    taken = await store.claim("k", "fp-b", token="b", lock_ttl=30, ttl=60)
    assert (taken.outcome, taken.fingerprint) == ("claimed", "fp-b")
    assert await store.complete("k", "a", RESPONSE, ttl=60) is False  # the late first holder
    assert await store.complete("k", "b", RESPONSE, ttl=60) is True
    assert (await store.claim("k", "fp-c", token="c", lock_ttl=30, ttl=60)).fingerprint == "fp-b"


async def test_completed_record_expires(new_store: Factory) -> None:
    store = new_store()
    await store.claim("k", "fp-a", token="a", lock_ttl=30, ttl=0.3)
    assert await store.complete("k", "a", RESPONSE, ttl=0.3) is True
    assert (await store.claim("k", "fp-b", token="b", lock_ttl=30, ttl=60)).outcome \
        == "completed"
    await asyncio.sleep(0.4)
    fresh = await store.claim("k", "fp-b", token="b", lock_ttl=30, ttl=60)
    assert (fresh.outcome, fresh.fingerprint, fresh.response) == ("claimed", "fp-b", None)


async def test_one_winner_among_200_concurrent_claims(new_store: Factory) -> None:
    stores = [new_store() for _ in range(4)]
    await stores[0].purge_expired()  # the table exists before the rush (it would anyway)
    claims = await asyncio.gather(*(
        stores[i % 4].claim("hot", f"fp-{i}", token=f"t-{i}", lock_ttl=30, ttl=60)
        for i in range(200)))
    winners = [i for i, c in enumerate(claims) if c.outcome == "claimed"]
    assert len(winners) == 1, winners
    assert {c.outcome for c in claims} == {"claimed", "in_progress"}
    assert {c.fingerprint for c in claims} == {f"fp-{winners[0]}"}
    # and the winner, alone, completes
    results = await asyncio.gather(*(
        stores[i % 4].complete("hot", f"t-{i}", RESPONSE, ttl=60) for i in range(200)))
    assert [i for i, ok in enumerate(results) if ok] == winners


async def test_purge_expired(new_store: Factory) -> None:
    store = new_store()
    for i in range(3):
        await store.claim(f"short-{i}", "fp", token="t", lock_ttl=30, ttl=0.1)
    await store.claim("long", "fp-long", token="t", lock_ttl=30, ttl=60)
    await asyncio.sleep(0.2)
    purged = await store.purge_expired()
    if isinstance(store, RedisStore):
        assert purged == 0  # Redis expired them by itself
    else:
        assert purged == 3
        assert await store.purge_expired() == 0
    assert (await store.claim("short-0", "fp-x", token="u", lock_ttl=30, ttl=60)).outcome \
        == "claimed"
    long = await store.claim("long", "fp-x", token="u", lock_ttl=30, ttl=60)
    assert (long.outcome, long.fingerprint) == ("in_progress", "fp-long")


# -- corrupt records -----------------------------------------------------------------------


async def test_redis_corrupt_records_are_store_errors(redis_url: str) -> None:
    import redis.asyncio as aioredis

    prefix = f"test:{uuid.uuid4().hex[:12]}:"
    raw = aioredis.from_url(redis_url)
    store = RedisStore(redis_url, prefix=prefix)
    try:
        await raw.hset(prefix + "bad", mapping={"state": "completed", "fingerprint": "fp",
                                                "response": b"\xff not json"})
        await raw.hset(prefix + "odd", mapping={"state": "weird", "fingerprint": "fp"})
        await raw.set(prefix + "str", "not a hash")
        for key in ("bad", "odd", "str"):
            with pytest.raises(StoreError, match=r"Redis redis://127\.0\.0\.1"):
                await store.claim(key, "fp", token="t", lock_ttl=30, ttl=60)
        with pytest.raises(StoreError):
            await store.complete("str", "t", RESPONSE, ttl=60)
    finally:
        await store.aclose()
        await raw.aclose()


async def test_postgres_corrupt_record_and_bad_table_name(postgres_dsn: str) -> None:
    import psycopg

    table = f"idem_{uuid.uuid4().hex[:12]}"
    store = PostgresStore(postgres_dsn, table=table)
    try:
        await store.claim("bad", "fp", token="t", lock_ttl=30, ttl=60)
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as c:
            await c.execute(f"UPDATE {table} SET state = 'completed', response = %s",
                            [b"\xff not json"])
        with pytest.raises(StoreError, match="stored response"):
            await store.claim("bad", "fp", token="t2", lock_ttl=30, ttl=60)
    finally:
        await store.aclose()
    for bad in ("x; DROP TABLE y", "1abc", "a.b.c", "", "a" * 64, 'x"y'):
        with pytest.raises(ValueError, match="identifier"):
            PostgresStore(postgres_dsn, table=bad)
    PostgresStore(postgres_dsn, table="public.ok_name")  # schema-qualified is fine


async def test_postgres_survives_killed_pooled_connections(postgres_dsn: str) -> None:
    """The server dropped the connections in the pool (a restart, a proxy): the next call
    fails over to a new connection instead of answering 503 once per stale connection."""
    import psycopg

    store = PostgresStore(postgres_dsn, table=f"idem_{uuid.uuid4().hex[:12]}", pool_size=3)
    try:
        await asyncio.gather(*(store.claim(f"k{i}", "fp", token=f"t{i}", lock_ttl=30, ttl=60)
                               for i in range(6)))
        async with await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True) as c:
            await c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE application_name = 'h2guard-idempotency'")
        again = await store.claim("k0", "fp", token="t0", lock_ttl=30, ttl=60)
        assert again.outcome == "claimed"  # our own claim (same token): safe to repeat
        assert await store.complete("k1", "t1", RESPONSE, ttl=60) is True
        assert (await store.claim("k1", "fp", token="x", lock_ttl=30, ttl=60)).outcome \
            == "completed"
    finally:
        await store.aclose()


# -- servers that are down, refuse, or go silent ----------------------------------------------


async def _fails_fast(call: Any, bound: float, names: str) -> StoreError:
    """``call`` raises a one-line StoreError that contains ``names``, within ``bound`` s."""
    started = time.monotonic()
    with pytest.raises(StoreError, match=re.escape(names)) as info:
        await asyncio.wait_for(call, bound + 5)  # a hang fails here, not at the test timeout
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"took {elapsed:.2f} s"
    assert "\n" not in str(info.value)
    return info.value


async def test_redis_refused_and_silent_servers() -> None:
    port = closed_port()
    store = RedisStore(f"redis://:s3cret@127.0.0.1:{port}/0", timeout=0.5)
    try:
        err = await _fails_fast(store.claim("k", "fp", token="t", lock_ttl=1, ttl=1), 1.0,
                                f"127.0.0.1:{port}")
        assert "s3cret" not in str(err)
    finally:
        await store.aclose()
    async with silent_listener() as port:
        store = RedisStore(f"redis://127.0.0.1:{port}/0", timeout=0.5)
        try:
            await _fails_fast(store.claim("k", "fp", token="t", lock_ttl=1, ttl=1), 2.5,
                              f"127.0.0.1:{port}")
        finally:
            await store.aclose()


async def test_redis_server_that_dies(throwaway_redis: Server) -> None:
    store = RedisStore(throwaway_redis.url, timeout=0.5)
    try:
        assert (await store.claim("k", "fp", token="t", lock_ttl=30, ttl=60)).outcome \
            == "claimed"
        throwaway_redis.stop()
        await _fails_fast(store.complete("k", "t", RESPONSE, ttl=60), 2.0, "Redis redis://")
        await _fails_fast(store.claim("k", "fp", token="t", lock_ttl=30, ttl=60), 2.0,
                          "Redis redis://")
    finally:
        await store.aclose()


async def test_redis_server_that_goes_silent(redis_server: Server) -> None:
    async with FreezingProxy(redis_server.port) as proxy:
        store = RedisStore(f"redis://127.0.0.1:{proxy.port}/0", prefix=f"t:{uuid.uuid4()}:",
                           timeout=0.5)
        try:
            await store.claim("k", "fp", token="t", lock_ttl=30, ttl=60)
            proxy.freeze()
            await _fails_fast(store.complete("k", "t", RESPONSE, ttl=60), 2.5, "complete")
        finally:
            await store.aclose()


async def test_postgres_refused_and_silent_servers() -> None:
    port = closed_port()
    store = PostgresStore(f"postgresql://app:s3cret@127.0.0.1:{port}/db", timeout=0.5)
    try:
        err = await _fails_fast(store.claim("k", "fp", token="t", lock_ttl=1, ttl=1), 1.5,
                                f"postgresql://app@127.0.0.1:{port}/db")
        assert "s3cret" not in str(err)
    finally:
        await store.aclose()
    async with silent_listener() as port:
        store = PostgresStore(f"host=127.0.0.1 port={port} dbname=db password=s3cret",
                              timeout=0.5)
        try:
            err = await _fails_fast(store.purge_expired(), 1.5, f"127.0.0.1:{port}")
            assert "s3cret" not in str(err)
        finally:
            await store.aclose()


async def test_postgres_server_that_goes_silent(postgres_server: Server) -> None:
    async with FreezingProxy(postgres_server.port) as proxy:
        dsn = postgres_server.url.replace(f":{postgres_server.port}/", f":{proxy.port}/")
        store = PostgresStore(dsn, table=f"idem_{uuid.uuid4().hex[:12]}", timeout=0.5)
        try:
            await store.claim("k", "fp", token="t", lock_ttl=30, ttl=60)
            proxy.freeze()
            # the reused connection hangs: cut at timeout + 0.5 s, no 10 s cancel dance
            await _fails_fast(store.complete("k", "t", RESPONSE, ttl=60), 2.0, "complete")
            # and a new connection cannot even start: cut at timeout
            await _fails_fast(store.claim("k2", "fp", token="t", lock_ttl=30, ttl=60), 2.0,
                              "claim")
        finally:
            await store.aclose()
