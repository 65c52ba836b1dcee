"""SQLiteStore: the embedded default, safe across the processes of one host.

Each claim is one ``BEGIN IMMEDIATE`` transaction (a read, then an insert-or-replace only if
the key is free), so two processes — uvicorn workers sharing the file — cannot both claim a
key: SQLite's file lock serialises the transactions and ``busy_timeout`` makes the loser wait
instead of failing. WAL mode lets readers proceed meanwhile. The calls run on a worker thread
(``anyio.to_thread``), never on the event loop.

Where the file is (:func:`default_path`): a path you pass; else ``$H2GUARD_IDEMPOTENCY_DB``
(``{name}`` in it becomes the store's name); else a file named after the application in the
user's state directory, ``$XDG_STATE_HOME/h2guard/idempotency/<name>.sqlite3`` (default
``~/.local/state/...``; ``~/Library/Application Support/h2guard/idempotency/`` on macOS,
``%LOCALAPPDATA%\\h2guard\\idempotency\\`` on Windows). A state directory, not the temporary
or cache directory: the records must survive a reboot and a cache cleaner (a retry that
arrives after a restart must still find its key), and must not be shared with every other
application of the host. The directory is made (mode 0700: stored responses may hold personal
data) on first use, and the file's path is logged at INFO on the ``h2guard.idempotency`` logger
then.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from h2guard.idempotency.store import Claim, StoredResponse, StoreError

__all__ = ["SQLiteStore", "default_path", "state_dir"]

log = logging.getLogger("h2guard.idempotency")

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


def state_dir() -> Path:
    """The per-user directory for h2guard's idempotency files (state that must survive
    restarts): ``$XDG_STATE_HOME/h2guard/idempotency`` (``~/.local/state/...`` when unset or
    not absolute, as the XDG Base Directory spec says), ``~/Library/Application Support/
    h2guard/idempotency`` on macOS, ``%LOCALAPPDATA%\\h2guard\\idempotency`` on Windows."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        xdg = os.environ.get("XDG_STATE_HOME", "")
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "h2guard" / "idempotency"


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_stem(name: str) -> str:
    """``name`` as a file name: letters, digits, ``.``, ``_`` and ``-`` kept, at most 80
    characters; when anything had to change, a digest of the original keeps names apart."""
    stem = _UNSAFE.sub("_", name).strip("._-")[:80]
    if stem != name or not stem:
        stem = f"{stem or 'app'}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return stem


def default_path(name: str = "default") -> str:
    """Where the store of application ``name`` lives when no path is given:
    ``$H2GUARD_IDEMPOTENCY_DB`` if set (with ``{name}`` replaced by the name's file-safe form),
    else ``state_dir() / "<name>.sqlite3"``."""
    stem = _file_stem(name)
    configured = os.environ.get("H2GUARD_IDEMPOTENCY_DB")
    if configured:
        return configured.replace("{name}", stem)
    return str(state_dir() / f"{stem}.sqlite3")


class SQLiteStore:
    """Idempotency records in one SQLite file (see the module docstring).

    ``path``: the database file (created if missing, its directory is not; ``":memory:"``
    for one process only). Without it: :func:`default_path` of ``name`` (the application's
    name; ``IdempotencyMiddleware`` passes its own), whose directory is made on first use.
    ``timeout``: how long a claim may wait for another process's transaction.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 name: str | None = None, timeout: float = 5.0) -> None:
        self.name = name or "default"
        if path is not None:
            self.path = str(path)
            self._origin = "the path given"
            self._default = False
        else:
            self.path = default_path(self.name)
            self._origin = (f"from $H2GUARD_IDEMPOTENCY_DB, for {self.name!r}"
                            if os.environ.get("H2GUARD_IDEMPOTENCY_DB")
                            else f"the default for the application {self.name!r}")
            self._default = True
        self.timeout = timeout
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._announced = False

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # ------------------------------------------------------------------ plumbing

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            if self._default and self.path != ":memory:":
                folder = Path(self.path).parent
                try:
                    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
                except OSError as exc:
                    raise StoreError(
                        f"SQLite store {self.path}: cannot create {folder} ({exc.strerror or exc});"
                        " set H2GUARD_IDEMPOTENCY_DB or pass SQLiteStore(path)") from exc
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
            if not self._announced:
                self._announced = True
                log.info("idempotency store: SQLite file %s (%s)", self.path, self._origin,
                         extra={"h2guard": {"event": "idempotency.store_opened",
                                            "path": self.path, "app": self.name}})
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

    async def release(self, key: str, token: str) -> bool:
        return await self._run(_release, key, token)

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


def _release(db: sqlite3.Connection, key: str, token: str) -> bool:
    cur = db.execute("DELETE FROM h2guard_idempotency WHERE key = ? AND token = ?", (key, token))
    return cur.rowcount == 1


def _purge(db: sqlite3.Connection) -> int:
    cur = db.execute("DELETE FROM h2guard_idempotency WHERE expires_at <= ?", (time.time(),))
    return cur.rowcount
