"""The store behind the idempotency middleware: one small protocol, three implementations.

A store keeps one record per (principal, key): the request's fingerprint, whether the first
request is still running (``in_progress``, with a lock that expires so a crashed worker does
not hold a key forever) or finished (``completed``, with the response to replay), and when the
record expires. Everything the middleware needs is three atomic operations:

* :meth:`IdempotencyStore.claim`: take the key if nobody holds it (absent, expired, or in
  progress past its lock), else say who does and with which fingerprint / response;
* :meth:`IdempotencyStore.complete`: store the response, only if our claim still holds;
* :meth:`IdempotencyStore.release`: give the key up, only if our claim still holds (a server
  error that is not to be stored: the next request with the key runs the handler again).

The stores (in :mod:`h2guard.idempotency.stores`): ``SQLiteStore`` (embedded default, safe across
the processes of one host), ``RedisStore`` (a Lua script per atomic step, expiry by key TTL) and
``PostgresStore`` (one
``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` statement per claim). Each uses its own clock
(SQLite: the host's; Redis: ``TIME``; PostgreSQL: ``clock_timestamp()``), so several machines
sharing a store agree on expiry. ``tests/idempotency/test_store_conformance.py`` runs the same
suite against all three.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = ["Claim", "IdempotencyStore", "StoreError", "StoredResponse"]


class StoreError(Exception):
    """The store could not answer (down, timed out, corrupt record). The middleware answers
    503 with Retry-After (fail closed) unless told to fail open."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as the first request's client received it, to replay byte for byte.

    ``body_omitted``: the body was larger than the middleware's limit and was not stored; a
    replay then carries the status and headers with an empty body (the documented rule)."""

    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    body_omitted: bool = False

    def to_bytes(self) -> bytes:
        return json.dumps({
            "s": self.status,
            "h": [[base64.b64encode(k).decode(), base64.b64encode(v).decode()]
                  for k, v in self.headers],
            "b": base64.b64encode(self.body).decode(),
            "o": self.body_omitted,
        }, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes | str) -> StoredResponse:
        try:
            raw = json.loads(data)
            return cls(int(raw["s"]),
                       [(base64.b64decode(k, validate=True), base64.b64decode(v, validate=True))
                        for k, v in raw["h"]],
                       base64.b64decode(raw["b"], validate=True), bool(raw.get("o", False)))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"a stored response could not be read: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Claim:
    """The answer to :meth:`IdempotencyStore.claim`.

    ``claimed``: the key is ours (``token`` is the one we passed); run the handler.
    ``in_progress``: another request holds it; ``fingerprint`` is that request's.
    ``completed``: it finished; ``response`` is what to replay (if ``fingerprint`` matches).
    """

    outcome: Literal["claimed", "in_progress", "completed"]
    fingerprint: str
    response: StoredResponse | None = None


@runtime_checkable
class IdempotencyStore(Protocol):
    """What the middleware needs from a store. All methods raise :class:`StoreError` when the
    store cannot answer; none may block the event loop. A store instance belongs to the event
    loop that first uses it (connections are loop-bound); ``token`` must be unique per claim
    (the middleware draws 128 random bits); ``aclose`` leaves a client passed in open."""

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        """Atomically take ``key`` for ``lock_ttl`` seconds if it is free (absent, expired, or
        ``in_progress`` with its lock past), recording ``fingerprint`` and ``token`` and an
        expiry ``ttl`` seconds away; otherwise return the live record unchanged."""
        ...

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        """Store ``response`` and mark ``key`` completed for ``ttl`` seconds, only if ``token``
        still holds the claim and the record has not expired. False otherwise (the lock
        expired and someone else took the key, or the record is gone): the caller's response
        is then not the stored one."""
        ...

    async def release(self, key: str, token: str) -> bool:
        """Delete the record of ``key`` if ``token`` holds it (in progress, or completed by
        that claim), so the key is free at once. False if the record is gone or another
        claim holds it (then it is left alone). A store without this method still works: the
        middleware then leaves a failed claim to lapse after ``lock_ttl``."""
        ...

    async def purge_expired(self) -> int:
        """Delete expired records; returns how many (0 for stores that expire by themselves)."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
