"""The side-effect ledger behind ``POST /orders``: how a test counts duplicate writes.

Every time the app runs ``POST /orders`` it records one effect, whatever happens to the response
afterwards (a reset after the app ran is exactly the case where a client cannot know). A client
that sends ``Idempotency-Key`` or ``X-Request-Id`` lets the ledger say how many effects one
logical request had: more than one is a duplicate write.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Effect", "Ledger"]

_MAX_IDS = 1_000_000


@dataclass(frozen=True, slots=True)
class Effect:
    """One side effect: which logical request, on which stream of which connection."""

    seq: int
    request_id: str
    idempotency_key: str | None
    stream_id: int
    connection_id: int
    at: float


class Ledger:
    """Thread-safe record of effects, bounded at ``max_effects`` (oldest kept counts only)."""

    def __init__(self, *, max_effects: int = 1_000_000) -> None:
        self._lock = threading.Lock()
        self._effects: list[Effect] = []
        self._by_key: dict[str, int] = {}
        self._by_request: dict[str, int] = {}
        self._arrivals: dict[str, int] = {}
        self._seq = itertools.count(1)
        self._max = max_effects
        self.total = 0

    def record(self, *, request_id: str | None, idempotency_key: str | None, stream_id: int,
               connection_id: int) -> Effect:
        """Record one effect. A request with no id gets a fresh one (``order-N``)."""
        with self._lock:
            seq = next(self._seq)
            effect = Effect(seq, request_id or f"order-{seq}", idempotency_key, stream_id,
                            connection_id, time.time())
            self.total += 1
            if len(self._effects) < self._max:
                self._effects.append(effect)
            if idempotency_key is not None:
                self._by_key[idempotency_key] = self._by_key.get(idempotency_key, 0) + 1
            if request_id:
                self._by_request[request_id] = self._by_request.get(request_id, 0) + 1
            return effect

    def arrived(self, request_id: str) -> None:
        """One attempt of a logical request reached the server (any method, refused or not):
        how the bench tells the attempts a client made without asking the client."""
        with self._lock:
            if request_id in self._arrivals or len(self._arrivals) < _MAX_IDS:
                self._arrivals[request_id] = self._arrivals.get(request_id, 0) + 1

    def attempts(self) -> dict[str, int]:
        """Attempts per ``x-request-id`` (at most 1,000,000 ids are tracked)."""
        with self._lock:
            return dict(self._arrivals)

    def effects_per_request(self) -> dict[str, int]:
        """Effects (``POST /orders`` runs) per ``x-request-id``."""
        with self._lock:
            return dict(self._by_request)

    def reset(self) -> None:
        """Forget everything (the control API's ``DELETE /ledger``)."""
        with self._lock:
            self._arrivals.clear()
            self._effects.clear()
            self._by_key.clear()
            self._by_request.clear()
            self.total = 0

    @property
    def duplicate_keys(self) -> dict[str, int]:
        """Idempotency keys with more than one effect, and how many each had."""
        with self._lock:
            return {k: n for k, n in self._by_key.items() if n > 1}

    @property
    def duplicate_requests(self) -> dict[str, int]:
        """``X-Request-Id`` values with more than one effect."""
        with self._lock:
            return {k: n for k, n in self._by_request.items() if n > 1}

    def effects(self) -> list[Effect]:
        with self._lock:
            return list(self._effects)

    def summary(self, *, with_effects: bool = False) -> dict[str, Any]:
        """The JSON that ``GET /ledger`` serves."""
        with self._lock:
            dup_keys = {k: n for k, n in self._by_key.items() if n > 1}
            dup_reqs = {k: n for k, n in self._by_request.items() if n > 1}
            out: dict[str, Any] = {
                "total_effects": self.total,
                "keys": len(self._by_key),
                "effects_per_key": dict(self._by_key),
                "duplicate_keys": dup_keys,
                "duplicate_key_effects": sum(n - 1 for n in dup_keys.values()),
                "request_ids": len(self._by_request),
                "duplicate_request_ids": dup_reqs,
                "duplicate_request_effects": sum(n - 1 for n in dup_reqs.values()),
                "attempts": sum(self._arrivals.values()),
                "attempted_request_ids": len(self._arrivals),
            }
            if with_effects:
                out["effects"] = [asdict(e) for e in self._effects]
            return out
