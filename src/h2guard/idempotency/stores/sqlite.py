"""SQLiteStore: the embedded default, safe across the processes of one host.

Each claim is one ``BEGIN IMMEDIATE`` transaction (a read, then an insert-or-replace only if
the key is free), so two processes — uvicorn workers sharing the file — cannot both claim a
key: SQLite's file lock serialises the transactions and ``busy_timeout`` makes the loser wait
instead of failing. WAL mode lets readers proceed meanwhile. The calls run on a worker thread
(``anyio.to_thread``), never on the event loop.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from h2guard.idempotency.store import Claim, StoredResponse, StoreError

__all__ = ["SQLiteStore"]

_T = TypeVar("_T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS h2guard_idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    token TEXT NOT NULL,
    locked_until REAL NOT NULL,
    expires_at REAL NOT NULL,
    response BLOB
);
CREATE INDEX IF NOT EXISTS h2guard_idempotency_expiry ON h2guard_idempotency (expires_at);
"""


def default_path() -> str:
    """Where the default store lives: ``$H2GUARD_IDEMPOTENCY_DB``, else a file in the temporary
    directory shared by every process of this user on this host."""
    return os.environ.get("H2GUARD_IDEMPOTENCY_DB") or str(
        Path(tempfile.gettempdir()) / f"h2guard-idempotency-{os.getuid()}.sqlite3")


class SQLiteStore:
    """Idempotency records in one SQLite file (see the module docstring).

    ``path``: the database file (created if missing; ``":memory:"`` for one process only).
    ``timeout``: how long a claim may wait for another process's transaction.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 timeout: float = 5.0) -> None:
        self.path = str(path) if path is not None else default_path()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    self._db = self._open()
                    break
                except sqlite3.OperationalError as exc:
                    # switching to WAL and creating the schema take locks that SQLite does not
                    # wait for: several processes opening the file at once retry briefly
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        raise StoreError(f"SQLite store {self.path}: {exc}") from exc
                    time.sleep(0.02)
                except sqlite3.Error as exc:
                    raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        return self._db

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if self.path != ":memory:":
                mode = db.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()
            raise
        return db

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        def call() -> _T:
            with self._lock:
                try:
                    return fn(self._connect(), *args)
                except sqlite3.Error as exc:
                    raise StoreError(f"SQLite store {self.path}: {exc}") from exc
        # abandon_on_cancel: the middleware's store_timeout can give up on a call stuck behind
        # another process's lock; the thread finishes on its own (a claim that lands late only
        # holds the key until lock_ttl, it never runs a handler twice)
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)

    # ------------------------------------------------------------------ protocol

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        return await self._run(_claim, key, fingerprint, token, lock_ttl, ttl)

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        return await self._run(_complete, key, token, response.to_bytes(), ttl)

    async def purge_expired(self) -> int:
        return await self._run(_purge)

    async def aclose(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def _claim(db: sqlite3.Connection, key: str, fingerprint: str, token: str, lock_ttl: float,
           ttl: float) -> Claim:
    db.execute("BEGIN IMMEDIATE")
    try:
        now = time.time()
        row = db.execute("SELECT fingerprint, state, locked_until, expires_at, response "
                         "FROM h2guard_idempotency WHERE key = ?", (key,)).fetchone()
        if row is not None:
            fp, state, locked_until, expires_at, response = row
            live = expires_at > now and (state == "completed" or locked_until > now)
            if live:
                db.execute("COMMIT")
                if state == "completed":
                    return Claim("completed", fp, StoredResponse.from_bytes(response))
                return Claim("in_progress", fp)
        db.execute("INSERT OR REPLACE INTO h2guard_idempotency "
                   "(key, fingerprint, state, token, locked_until, expires_at, response) "
                   "VALUES (?, ?, 'in_progress', ?, ?, ?, NULL)",
                   (key, fingerprint, token, now + lock_ttl, now + ttl))
        db.execute("COMMIT")
        return Claim("claimed", fingerprint)
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _complete(db: sqlite3.Connection, key: str, token: str, response: bytes,
              ttl: float) -> bool:
    now = time.time()
    cur = db.execute("UPDATE h2guard_idempotency SET state = 'completed', response = ?, "
                     "expires_at = ? WHERE key = ? AND token = ? AND state = 'in_progress' "
                     "AND expires_at > ?", (response, now + ttl, key, token, now))
    return cur.rowcount == 1


def _purge(db: sqlite3.Connection) -> int:
    cur = db.execute("DELETE FROM h2guard_idempotency WHERE expires_at <= ?", (time.time(),))
    return cur.rowcount
