"""An idempotency store in PostgreSQL: one ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` per claim.

The table (made on first use if missing, with an index on ``expires_at``)::

    key           TEXT PRIMARY KEY
    fingerprint   TEXT         the first request's fingerprint
    state         TEXT         in_progress | completed
    token         TEXT         the claim's token (only the holder may complete)
    locked_until  TIMESTAMPTZ  when an in_progress lock lapses
    expires_at    TIMESTAMPTZ  when the record may be taken again / purged
    response      BYTEA        StoredResponse.to_bytes() once completed

Claiming is one statement: insert the record, or overwrite the existing one only if it expired
or is in progress past its lock; ``RETURNING`` says whether we got it. PostgreSQL decides that
against the row's latest committed version even under READ COMMITTED, so two workers never both
get a key. When we did not get it, a ``SELECT`` reads the holder's record; if that record has
lapsed or vanished in between, the claim is tried again (a bounded number of times). Every time
is the server's ``clock_timestamp()``, so the workers of several machines agree on expiry.
Expired rows stay until :meth:`PostgresStore.purge_expired` deletes them; they are ignored and
overwritten meanwhile.

Connections: psycopg 3 async, autocommit, at most ``pool_size`` of them, made on demand and
kept for reuse (a small pool of our own: ``psycopg_pool`` is not required). Needs ``psycopg``
(``pip install 'h2guard[postgres]'``), imported only when a store is made. Every call is
bounded by ``timeout`` (waiting for a connection, connecting, and each statement, which the
server also stops by ``statement_timeout``); every failure is raised as
:class:`~h2guard.idempotency.store.StoreError`, one line naming the server without password.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from h2guard.idempotency.store import Claim, StoredResponse, StoreError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["PostgresStore"]

_NAME = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE = re.compile(rf"{_NAME}(?:\.{_NAME})?")
_CLAIM_ATTEMPTS = 5


def _one_line(exc: BaseException, secret: str | None) -> str:
    text = " ".join(str(exc).split())
    if secret:
        text = text.replace(secret, "***")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class PostgresStore:
    """:class:`~h2guard.idempotency.store.IdempotencyStore` in PostgreSQL (see the module doc).

    ``dsn``: a libpq connection string or URL. ``table``: the table's name, optionally
    schema-qualified (``schema.table``); made if missing. ``pool_size``: most connections
    held at once. ``timeout``: seconds a call may wait for a connection, to connect, and for
    each statement."""

    def __init__(self, dsn: str, *, table: str = "h2guard_idempotency", pool_size: int = 10,
                 timeout: float = 2.0) -> None:
        try:
            import psycopg
            from psycopg import sql
            from psycopg.conninfo import conninfo_to_dict
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "PostgresStore needs the psycopg package: pip install 'h2guard[postgres]'"
            ) from exc
        if not _TABLE.fullmatch(table):
            raise ValueError(f"PostgresStore: table must be an identifier (optionally "
                             f"schema.table, letters, digits, _), not {table!r}")
        if pool_size < 1:
            raise ValueError("PostgresStore: pool_size must be at least 1")
        if not timeout > 0:
            raise ValueError("PostgresStore: timeout must be positive")
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # The parser's message may quote the string, password and all.
            raise ValueError("PostgresStore: the dsn could not be parsed") from None
        secret = params.get("password")
        self._secret = str(secret) if secret else None
        host = params.get("host") or params.get("hostaddr") or "localhost"
        port = params.get("port") or 5432
        user = f"{params['user']}@" if params.get("user") else ""
        self._name = f"postgresql://{user}{host}:{port}/{params.get('dbname') or ''}"
        self._dsn = dsn
        self._timeout = timeout
        self._psycopg = psycopg
        self._pool_size = pool_size
        self._slots: asyncio.Semaphore | None = None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._schema_ready = False
        self._schema_lock: asyncio.Lock | None = None
        self._closed = False
        self._sql = self._statements(sql, table)

    def __repr__(self) -> str:
        return f"PostgresStore({self._name!r})"

    @staticmethod
    def _statements(sql: Any, table: str) -> dict[str, sql.Composed]:
        parts = table.split(".")
        t = sql.Identifier(*parts)
        index = sql.Identifier(f"{parts[-1]}_expires_at_idx"[:63])
        lock_key = sql.Literal(f"h2guard.idempotency:{table}")
        statements = {
            "schema_lock": sql.SQL("SELECT pg_advisory_xact_lock(hashtext({}))").format(lock_key),
            "create": sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " key TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, state TEXT NOT NULL,"
                " token TEXT NOT NULL, locked_until TIMESTAMPTZ NOT NULL,"
                " expires_at TIMESTAMPTZ NOT NULL, response BYTEA)").format(t),
            "index": sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (expires_at)").format(index, t),
            "claim": sql.SQL(
                "INSERT INTO {} AS t"
                " (key, fingerprint, state, token, locked_until, expires_at, response)"
                " VALUES (%(key)s, %(fp)s, 'in_progress', %(token)s,"
                "  clock_timestamp() + %(lock)s * interval '1 second',"
                "  clock_timestamp() + %(ttl)s * interval '1 second', NULL)"
                " ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
                "  state = 'in_progress', token = EXCLUDED.token,"
                "  locked_until = EXCLUDED.locked_until, expires_at = EXCLUDED.expires_at,"
                "  response = NULL"
                " WHERE t.expires_at <= clock_timestamp()"
                "  OR (t.state = 'in_progress' AND t.locked_until <= clock_timestamp())"
                " RETURNING t.token").format(t),
            # The claim, and in the same statement the live record it met (as of the statement's
            # start): a replay costs one round trip. A record a concurrent claim inserted after
            # that start is not seen here: no row comes back, and the two-step path decides.
            "claim_or_read": sql.SQL(
                "WITH ins AS ({claim})"
                " SELECT 'claimed'::text, NULL::text, NULL::text, NULL::bytea FROM ins"
                " UNION ALL"
                " SELECT r.state, r.fingerprint, r.token, r.response FROM {t} r"
                " WHERE r.key = %(key)s AND NOT EXISTS (SELECT 1 FROM ins)"
                "  AND r.expires_at > clock_timestamp()"
                "  AND (r.state <> 'in_progress' OR r.locked_until > clock_timestamp())"),
            # The live record, if any: neither expired nor in progress past its lock.
            "read": sql.SQL(
                "SELECT state, fingerprint, token, response FROM {}"
                " WHERE key = %(key)s AND expires_at > clock_timestamp()"
                "  AND (state <> 'in_progress' OR locked_until > clock_timestamp())").format(t),
            # ``retry``: the first attempt's connection broke, maybe after this committed.
            "complete": sql.SQL(
                "UPDATE {} SET state = 'completed', response = %(response)s,"
                " expires_at = clock_timestamp() + %(ttl)s * interval '1 second'"
                " WHERE key = %(key)s AND token = %(token)s"
                "  AND expires_at > clock_timestamp()"
                "  AND (state = 'in_progress' OR (%(retry)s AND state = 'completed'))").format(t),
            "release": sql.SQL("DELETE FROM {} WHERE key = %(key)s AND token = %(token)s"
                               ).format(t),
            "purge": sql.SQL("DELETE FROM {} WHERE expires_at <= clock_timestamp()").format(t),
        }
        statements["claim_or_read"] = statements["claim_or_read"].format(
            claim=statements["claim"], t=t)
        return statements

    # -- connections ---------------------------------------------------------------------

    def _fail(self, what: str, exc: BaseException) -> StoreError:
        if isinstance(exc, TimeoutError) and not str(exc):
            exc = TimeoutError(f"no answer within {self._timeout:g} s")
        return StoreError(f"PostgreSQL {self._name}: {what} failed: "
                          f"{_one_line(exc, self._secret)}")

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        pg: Any = self._psycopg
        async with asyncio.timeout(self._timeout):
            conn: psycopg.AsyncConnection[Any] = await pg.AsyncConnection.connect(
                self._dsn, autocommit=True, connect_timeout=max(2, round(self._timeout)),
                application_name="h2guard-idempotency")
        ms = str(max(1, round(self._timeout * 1000)))

        async def limits(conn: psycopg.AsyncConnection[Any], retry: bool) -> None:
            # The server stops a statement that runs past it (a lock wait included).
            await conn.execute("SELECT set_config('statement_timeout', %s, false),"
                               " set_config('lock_timeout', %s, false)", [ms, ms])

        try:
            await self._bounded(conn, limits, False, schema=False)
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        return conn

    async def _bounded(self, conn: psycopg.AsyncConnection[Any], op: Any, retry: bool, *,
                       schema: bool = True) -> Any:
        """``op(conn, retry)`` (after making the table if need be), at most ``timeout`` + 0.5 s.

        Not ``asyncio.timeout`` around it: psycopg answers a cancelled query by asking the
        server to cancel it and waiting for that, up to 10 s more, the very thing that hangs
        when the server is unreachable. Here the connection is cut first (the caller discards
        it), then the task cancelled, which then ends at once."""

        async def run() -> Any:
            if schema:
                await self._ensure_schema(conn)
            return await op(conn, retry)

        task = asyncio.ensure_future(run())
        try:
            done, _ = await asyncio.wait({task}, timeout=self._timeout + 0.5)
        except BaseException:  # we were cancelled: cut the query short too
            conn.pgconn.finish()
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            raise
        if not done:
            conn.pgconn.finish()
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            raise TimeoutError(f"no answer within {self._timeout + 0.5:g} s")
        return task.result()

    @contextlib.asynccontextmanager
    async def _connection(self, fresh: bool = False
                          ) -> AsyncIterator[tuple[psycopg.AsyncConnection[Any], bool]]:
        """A connection for one call, and whether it was reused (it may have gone stale)."""
        if self._closed:
            raise StoreError(f"PostgreSQL {self._name}: the store is closed")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._pool_size)
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise StoreError(f"PostgreSQL {self._name}: all {self._pool_size} connections "
                             f"stayed busy for {self._timeout:g} s") from None
        conn = None
        try:
            reused = bool(self._idle) and not fresh
            if reused:
                conn = self._idle.pop()
            else:
                if fresh:
                    await self._drop_idle()  # they are likely as stale as the one that broke
                conn = await self._connect()
            yield conn, reused
        except BaseException as exc:
            # A StoreError about the data leaves the connection fine; anything else leaves it
            # in an unknown state: never reuse it.
            if conn is not None:
                await self._release(conn, healthy=isinstance(exc, StoreError))
            raise
        else:
            await self._release(conn, healthy=True)
        finally:
            self._slots.release()

    async def _release(self, conn: psycopg.AsyncConnection[Any], *, healthy: bool) -> None:
        idle = self._psycopg.pq.TransactionStatus.IDLE
        if (healthy and not self._closed and not conn.closed
                and conn.info.transaction_status == idle):
            self._idle.append(conn)
            return
        with contextlib.suppress(Exception):
            await conn.close()

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _ensure_schema(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._schema_ready:
            return
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._schema_ready:
                return
            # An advisory lock: CREATE ... IF NOT EXISTS alone races between processes.
            async with conn.transaction():
                await conn.execute(self._sql["schema_lock"])
                await conn.execute(self._sql["create"])
                await conn.execute(self._sql["index"])
            self._schema_ready = True

    async def _call(self, what: str, op: Any) -> Any:
        """Run ``op(conn, retry)`` on a pooled connection. If a reused connection turns out
        broken (the server restarted, a proxy dropped it), try once more on a new one: every
        op here is written to be safe to repeat."""
        psycopg = self._psycopg
        retry = False
        while True:
            try:
                async with self._connection(fresh=retry) as (conn, reused):
                    try:
                        return await self._bounded(conn, op, retry)
                    except psycopg.OperationalError:
                        if reused and not retry and conn.broken:
                            retry = True
                            continue
                        raise
            except StoreError:
                raise
            except (psycopg.Error, OSError, TimeoutError) as exc:
                raise self._fail(what, exc) from exc

    # -- the protocol --------------------------------------------------------------------

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        params = {"key": key, "fp": fingerprint, "token": token, "lock": float(lock_ttl),
                  "ttl": float(ttl)}

        async def op(conn: psycopg.AsyncConnection[Any], retry: bool) -> Claim:
            cur = await conn.execute(self._sql["claim_or_read"], params)
            row = await cur.fetchone()
            for attempt in range(_CLAIM_ATTEMPTS):
                if attempt:  # the two-step path: a race the one statement could not see
                    cur = await conn.execute(self._sql["claim"], params)
                    if await cur.fetchone() is not None:
                        return Claim("claimed", fingerprint)
                    cur = await conn.execute(self._sql["read"], {"key": key})
                    row = await cur.fetchone()
                if row is None:
                    continue  # the holder's record lapsed in between, or was not visible yet
                if row[0] == "claimed":
                    return Claim("claimed", fingerprint)
                state, stored_fp, stored_token, response = row
                if stored_token == token and state == "in_progress":
                    # Ours: a retry after a broken connection, or the caller reused a token.
                    return Claim("claimed", fingerprint)
                if state == "in_progress":
                    return Claim("in_progress", stored_fp)
                if state == "completed":
                    if response is None:
                        raise StoreError(f"PostgreSQL {self._name}: the record for {key!r} is "
                                         f"completed but has no response")
                    try:
                        stored = StoredResponse.from_bytes(bytes(response))
                    except StoreError as exc:
                        raise StoreError(f"PostgreSQL {self._name}: the record for {key!r}: "
                                         f"{exc}") from exc
                    return Claim("completed", stored_fp, stored)
                raise StoreError(f"PostgreSQL {self._name}: the record for {key!r} has an "
                                 f"unknown state {state!r:.40}")
            raise StoreError(f"PostgreSQL {self._name}: claim of {key!r} did not settle in "
                             f"{_CLAIM_ATTEMPTS} attempts (records expiring as fast as they "
                             f"are claimed?)")

        result: Claim = await self._call("claim", op)
        return result

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        data = response.to_bytes()

        async def op(conn: psycopg.AsyncConnection[Any], retry: bool) -> bool:
            cur = await conn.execute(self._sql["complete"], {
                "key": key, "token": token, "response": data, "ttl": float(ttl),
                "retry": retry})
            return cur.rowcount == 1

        result: bool = await self._call("complete", op)
        return result

    async def release(self, key: str, token: str) -> bool:
        async def op(conn: psycopg.AsyncConnection[Any], retry: bool) -> bool:
            cur = await conn.execute(self._sql["release"], {"key": key, "token": token})
            # a retry after a broken connection: the first attempt may have deleted it
            return cur.rowcount == 1 or retry

        result: bool = await self._call("release", op)
        return result

    async def purge_expired(self) -> int:
        async def op(conn: psycopg.AsyncConnection[Any], retry: bool) -> int:
            cur = await conn.execute(self._sql["purge"])
            return max(0, cur.rowcount)

        result: int = await self._call("purge_expired", op)
        return result

    async def aclose(self) -> None:
        self._closed = True
        await self._drop_idle()
