"""Idempotency-Key support for any ASGI app, on SQLite, Redis or PostgreSQL.

``IdempotencyMiddleware(app, store=...)`` (see :mod:`h2guard.idempotency.middleware` and
``docs/idempotency.md``); log records go to the ``h2guard.idempotency`` logger; stores
follow :class:`IdempotencyStore` (:mod:`h2guard.idempotency.store`). The Redis and PostgreSQL
stores import their drivers only when built (extras ``h2guard[redis]``, ``h2guard[postgres]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from h2guard.idempotency.middleware import (
    IdempotencyMiddleware,
    app_name,
    parse_key,
    principal_from_authorization,
)
from h2guard.idempotency.store import Claim, IdempotencyStore, StoredResponse, StoreError
from h2guard.idempotency.stores.sqlite import SQLiteStore

if TYPE_CHECKING:
    from h2guard.idempotency.stores.postgres import PostgresStore
    from h2guard.idempotency.stores.redis import RedisStore

__all__ = ["Claim", "IdempotencyMiddleware", "IdempotencyStore", "PostgresStore", "RedisStore",
           "SQLiteStore", "StoreError", "StoredResponse", "app_name", "parse_key",
           "principal_from_authorization"]


def __getattr__(name: str) -> Any:
    if name == "RedisStore":
        from h2guard.idempotency.stores.redis import RedisStore

        return RedisStore
    if name == "PostgresStore":
        from h2guard.idempotency.stores.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(name)
