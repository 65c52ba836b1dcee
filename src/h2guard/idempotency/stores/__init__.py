"""The three stores behind :class:`~h2guard.idempotency.store.IdempotencyStore`: SQLite (the
embedded default), Redis and PostgreSQL. Import them from :mod:`h2guard.idempotency`; the Redis
and PostgreSQL drivers load only when such a store is built."""
