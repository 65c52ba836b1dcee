"""An idempotency store in Redis: one Lua script per atomic step, expiry by the key's TTL.

Each record is a hash at ``prefix + key``::

    fingerprint   the first request's fingerprint
    state         in_progress | completed
    token         the claim's token (only the holder may complete)
    locked_until  Redis server time, float seconds, when an in_progress lock lapses
    response      StoredResponse.to_bytes() once completed

Both steps run as one script each (Redis runs a script alone), and the lock is judged by the
server's clock (``TIME``), so the workers of several machines agree on it. The record's expiry
is the key's own TTL (``PEXPIRE``): Redis deletes it, so :meth:`RedisStore.purge_expired` has
nothing to do.

Needs the ``redis`` package (``pip install 'h2guard[redis]'``), imported only when a store is
made. Every Redis failure (refused, timed out, a script error, a key of the wrong type) is
raised as :class:`~h2guard.idempotency.store.StoreError`, one line naming the server. Every
call is bounded: ``timeout`` for the connection and for each reply, no automatic retries.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from h2guard.idempotency.store import Claim, StoredResponse, StoreError

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisStore"]

# KEYS[1] the record; ARGV fingerprint, token, lock_ttl (float seconds), ttl (integer ms).
# Returns {'claimed'}, or {state, fingerprint, response-or-false} for a live record.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rec = redis.call('HMGET', KEYS[1], 'state', 'locked_until', 'fingerprint', 'response')
local state = rec[1]
if state == false or (state == 'in_progress' and (tonumber(rec[2]) or 0) <= now) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'fingerprint', ARGV[1], 'state', 'in_progress',
             'token', ARGV[2], 'locked_until', string.format('%.6f', now + tonumber(ARGV[3])))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'claimed'}
end
return {state, rec[3] or '', rec[4]}
"""

# KEYS[1] the record; ARGV token, response bytes, ttl (integer ms). Returns 1 if stored.
_COMPLETE = """
local rec = redis.call('HMGET', KEYS[1], 'state', 'token')
if rec[1] ~= 'in_progress' or rec[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'state', 'completed', 'response', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the record; ARGV token. Returns 1 if the record was ours and is deleted.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _redacted(url: str) -> str:
    """``url`` without its password, to name the server in messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparsable url>"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds, at least 1 (PEXPIRE 0 would delete the key at once)."""
    return max(1, math.ceil(seconds * 1000))


class RedisStore:
    """:class:`~h2guard.idempotency.store.IdempotencyStore` in Redis (see the module doc).

    ``client``: use this ``redis.asyncio.Redis`` instead of making one from ``url`` (its own
    timeouts and retries then apply, and :meth:`aclose` leaves it open: it is the caller's).
    ``timeout``: seconds for connecting and for each reply; a call never waits much longer."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", *,
                 prefix: str = "h2guard:idem:", client: redis.asyncio.Redis | None = None,
                 timeout: float = 2.0) -> None:
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "RedisStore needs the redis package: pip install 'h2guard[redis]'") from exc
        self._prefix = prefix
        self._timeout = timeout
        self._errors: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._owns_client = client is None
        if client is None:
            self._name = _redacted(url)
            try:
                client = aioredis.from_url(
                    url, socket_timeout=timeout, socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                    health_check_interval=0)
            except ValueError as exc:
                raise ValueError(f"RedisStore: bad url {self._name}: {exc}") from exc
        else:
            kw = client.connection_pool.connection_kwargs
            self._name = f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"
        self._client = client
        self._claim = client.register_script(_CLAIM)
        self._complete = client.register_script(_COMPLETE)
        self._release = client.register_script(_RELEASE)

    def __repr__(self) -> str:
        return f"RedisStore({self._name!r}, prefix={self._prefix!r})"

    async def _run(self, what: str, script: Any, key: str, args: list[Any]) -> Any:
        # The client's own timeouts bound each socket operation; this bounds the whole call
        # (a connect, a NOSCRIPT fallback and a reply) in case the server stalls in between.
        try:
            async with asyncio.timeout(self._timeout * 3 + 0.5):
                return await script(keys=[self._prefix + key], args=args)
        except self._errors as exc:
            if isinstance(exc, TimeoutError) and not str(exc):
                exc = TimeoutError(f"no answer within {self._timeout * 3 + 0.5:g} s")
            raise StoreError(f"Redis {self._name}: {what} failed: {_one_line(exc)}") from exc

    async def claim(self, key: str, fingerprint: str, *, token: str, lock_ttl: float,
                    ttl: float) -> Claim:
        reply = await self._run("claim", self._claim, key,
                                [fingerprint, token, repr(float(lock_ttl)), _ms(ttl)])
        if not isinstance(reply, list) or not reply:
            raise StoreError(f"Redis {self._name}: claim got an unexpected reply {reply!r:.80}")
        outcome = _text(reply[0])
        if outcome == "claimed":
            return Claim("claimed", fingerprint)
        stored_fp = _text(reply[1]) if len(reply) > 1 else ""
        if outcome == "in_progress":
            return Claim("in_progress", stored_fp)
        if outcome == "completed":
            raw = reply[2] if len(reply) > 2 else None
            if not isinstance(raw, (bytes, str)):
                raise StoreError(f"Redis {self._name}: the record for {key!r} is completed "
                                 f"but has no response")
            try:
                return Claim("completed", stored_fp, StoredResponse.from_bytes(raw))
            except StoreError as exc:
                raise StoreError(f"Redis {self._name}: the record for {key!r}: {exc}") from exc
        raise StoreError(f"Redis {self._name}: the record for {key!r} has an unknown state "
                         f"{outcome!r:.40}")

    async def complete(self, key: str, token: str, response: StoredResponse, *,
                       ttl: float) -> bool:
        reply = await self._run("complete", self._complete, key,
                                [token, response.to_bytes(), _ms(ttl)])
        return bool(reply == 1)

    async def release(self, key: str, token: str) -> bool:
        reply = await self._run("release", self._release, key, [token])
        return bool(reply == 1)

    async def purge_expired(self) -> int:
        return 0  # every record carries its own TTL: Redis deletes it

    async def aclose(self) -> None:
        if self._owns_client:
            try:
                await self._client.aclose()
            except self._errors:
                pass
