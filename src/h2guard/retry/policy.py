"""What to retry, when, and how often: the decision, with no I/O.

The matrix is docs/facts.md §1. A failure the protocol proves unprocessed (RST_STREAM
REFUSED_STREAM, a stream above a GOAWAY's last_stream_id, HTTP_1_1_REQUIRED, a connection that
failed before the request was written) is safe for any method. A failure that *may* have been
processed (any other reset, a lost connection, a timeout) is retried only for an idempotent method
or a request that carries an Idempotency-Key: resending a POST the server already ran is a
duplicate write. Responses (429, 503, ...) follow the same rule and honour Retry-After.

``retry_on`` uses Envoy's names where Envoy has one:

===========================  ================================================================
``refused-stream``           RST_STREAM REFUSED_STREAM (never processed)
``reset-before-request``     never processed otherwise: above a GOAWAY's last_stream_id,
                             HTTP_1_1_REQUIRED
``connect-failure``          TCP / TLS / connect timeout: nothing was sent
``reset``                    reset, GOAWAY, lost connection or timeout after the request was
                             sent (only idempotent or keyed requests)
``retriable-status-codes``   a response whose status is in ``retriable_status_codes``
``gateway-error``            a 502, 503 or 504 response
``5xx``                      any 5xx response
===========================  ================================================================

The retry budget is a ratio budget (the SRE book's "per-client retry budget", Finagle's
``RetryBudget``): every logical request deposits ``budget_ratio`` of a token, every retry
spends one, and the balance never exceeds ``budget_reserve``. So retries add at most
``budget_ratio`` of the load an origin sees (plus the reserve, which lets a quiet client retry at
all). Why not the others: gRPC's throttling counts failures, so a steady 10% failure rate stops
all retries even though retrying 10% is cheap; Envoy's budget bounds *concurrent* retries, which
says nothing about attempts per request when requests are short; AWS's quota refunds on success,
so its steady-state bound depends on the success rate. A GOAWAY drain is not overload (it is
how every proxy recycles connections), so its moves do not spend the budget.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from h2guard.errors import Failure

__all__ = ["RETRY_ON", "Decision", "RetryBudget", "RetryPolicy", "parse_retry_after"]

RETRY_ON = frozenset({"refused-stream", "reset-before-request", "connect-failure", "reset",
                      "retriable-status-codes", "gateway-error", "5xx"})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_ENHANCE_YOUR_CALM = 0xB
_UNPROCESSED_KINDS = {"refused_stream": "refused-stream",
                      "goaway_unprocessed": "reset-before-request",
                      "http_1_1_required": "reset-before-request"}
_MAYBE_KINDS = frozenset({"stream_reset", "goaway", "connection_lost", "ping_timeout",
                          "timeout", "write", "protocol"})
_BUDGET_FREE = frozenset({"goaway_unprocessed", "http_1_1_required"})


def _default_retry_on() -> frozenset[str]:
    return frozenset({"refused-stream", "reset-before-request", "connect-failure", "reset",
                      "retriable-status-codes"})


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How :class:`h2guard.RetryTransport` retries. Every field has a safe default.

    ``attempts`` bounds tries (the first one included) for failures that may have been processed,
    connect failures and retriable responses; ``unprocessed_attempts`` bounds tries for
    failures the protocol proves unprocessed, which are cheap and always safe (Go allows 7,
    h2guard's transport 10). ``deadline`` (seconds, all attempts together) and
    ``attempt_timeout`` (each attempt) are off by default; no sleep ever runs past the deadline.

    Backoff is exponential with full jitter, ``uniform(0, min(backoff_cap, backoff_base *
    backoff_multiplier ** retry))`` (the AWS study: least total work, no synchronised waves);
    ``jitter="decorrelated"`` uses ``min(cap, uniform(base, previous * 3))`` instead. A stream
    above a GOAWAY's last_stream_id moves at once (a draining server is not overloaded); an
    ENHANCE_YOUR_CALM waits at least ``calm_delay``. ``Retry-After`` (seconds or an HTTP date)
    on a retriable response is honoured up to ``retry_after_cap``; a longer wait is not
    retried: the response is returned as it is.

    ``trust_refused_stream=False`` treats REFUSED_STREAM like any other reset (idempotent or
    keyed requests only): RFC 9113 says a refused stream was not processed, but a proxy may
    break that promise — haproxy 2.6 answers a backend that reset a stream *after* its app ran
    with REFUSED_STREAM to the client (docs/FINDINGS.md). Turn it off behind such a proxy.

    ``idempotency_keys`` adds an ``Idempotency-Key`` (128 random bits, the same on every
    attempt of one logical request) to ``key_methods`` requests that have none, so a POST
    becomes retryable against a server that honours the header; a caller's key is never
    replaced.
    """

    attempts: int = 3
    unprocessed_attempts: int = 10
    retry_on: frozenset[str] = field(default_factory=_default_retry_on)
    retriable_status_codes: frozenset[int] = frozenset({429, 503})
    idempotent_methods: frozenset[str] = IDEMPOTENT_METHODS
    idempotency_keys: bool = False
    key_methods: frozenset[str] = frozenset({"POST", "PATCH"})
    key_header: str = "Idempotency-Key"
    backoff_base: float = 0.05
    backoff_multiplier: float = 2.0
    backoff_cap: float = 2.0
    jitter: Literal["full", "decorrelated"] = "full"
    calm_delay: float = 1.0
    retry_after_cap: float = 30.0
    deadline: float | None = None
    attempt_timeout: float | None = None
    budget: bool = True
    budget_ratio: float = 0.1
    budget_reserve: float = 20.0
    trust_refused_stream: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.retry_on) - RETRY_ON
        if unknown:
            raise ValueError(f"unknown retry_on value(s) {sorted(unknown)}; "
                             f"use any of {sorted(RETRY_ON)}")
        object.__setattr__(self, "retry_on", frozenset(self.retry_on))
        object.__setattr__(self, "retriable_status_codes",
                           frozenset(int(c) for c in self.retriable_status_codes))
        object.__setattr__(self, "idempotent_methods",
                           frozenset(m.upper() for m in self.idempotent_methods))
        object.__setattr__(self, "key_methods", frozenset(m.upper() for m in self.key_methods))
        if self.attempts < 1 or self.unprocessed_attempts < 1:
            raise ValueError("attempts and unprocessed_attempts must be at least 1")
        if not 0 <= self.backoff_base <= self.backoff_cap:
            raise ValueError("need 0 <= backoff_base <= backoff_cap")
        if self.backoff_multiplier < 1:
            raise ValueError("backoff_multiplier must be at least 1")
        if self.jitter not in ("full", "decorrelated"):
            raise ValueError('jitter must be "full" or "decorrelated"')
        if not 0 <= self.budget_ratio <= 1 or self.budget_reserve < 0:
            raise ValueError("budget_ratio must be within 0..1 and budget_reserve >= 0")
        for name in ("deadline", "attempt_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None for no limit)")

    # ------------------------------------------------------------------ classification

    def condition(self, failure: Failure | None, status: int | None = None) -> str | None:
        """The ``retry_on`` name this outcome falls under, if any is enabled."""
        if failure is None:
            if status is None:
                return None
            if status in self.retriable_status_codes and \
                    "retriable-status-codes" in self.retry_on:
                return "retriable-status-codes"
            if status in (502, 503, 504) and "gateway-error" in self.retry_on:
                return "gateway-error"
            if 500 <= status <= 599 and "5xx" in self.retry_on:
                return "5xx"
            return None
        name = _UNPROCESSED_KINDS.get(failure.kind)
        if name is None:
            if failure.kind == "connect":
                name = "connect-failure"
            elif failure.kind in _MAYBE_KINDS:
                name = "reset"
        return name if name in self.retry_on else None

    def needs_safety(self, failure: Failure | None) -> bool:
        """Does resending need an idempotent method or a key? (Anything not proven
        unprocessed does; so does REFUSED_STREAM when ``trust_refused_stream`` is off.)"""
        if failure is None or failure.processed != "no":
            return True
        return failure.kind == "refused_stream" and not self.trust_refused_stream

    def max_attempts(self, failure: Failure | None) -> int:
        if failure is not None and failure.kind in _UNPROCESSED_KINDS:
            return self.unprocessed_attempts
        return self.attempts

    def spends_budget(self, failure: Failure | None) -> bool:
        return self.budget and not (failure is not None and failure.kind in _BUDGET_FREE)

    # ------------------------------------------------------------------ waiting

    def backoff(self, retry: int, rng: random.Random, previous: float = 0.0) -> float:
        """Delay before retry number ``retry`` (1 for the first retry)."""
        if self.jitter == "decorrelated":
            upper = max(self.backoff_base, previous * 3)
            return min(self.backoff_cap, rng.uniform(self.backoff_base, upper))
        ceiling = min(self.backoff_cap,
                      self.backoff_base * self.backoff_multiplier ** max(retry - 1, 0))
        return rng.uniform(0, ceiling)

    def delay(self, failure: Failure | None, retry: int, rng: random.Random,
              previous: float = 0.0, retry_after: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None when a Retry-After asks for more
        than ``retry_after_cap``."""
        if failure is not None and failure.kind == "goaway_unprocessed" and retry == 1:
            return 0.0
        wait = self.backoff(retry, rng, previous)
        if failure is not None and failure.code == _ENHANCE_YOUR_CALM:
            wait = max(wait, self.calm_delay)
        if retry_after is not None:
            if retry_after > self.retry_after_cap:
                return None
            wait = max(wait, retry_after)
        return wait


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one failed attempt."""

    retry: bool
    delay: float = 0.0
    reason: str = ""  # the retry_on condition, or why not


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
    None if absent or unreadable; never negative."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():  # not "²": a digit to isdigit(), not to int()
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class RetryBudget:
    """Tokens per origin: each logical request adds ``ratio``, each retry takes one, and the
    balance is capped at ``reserve`` (see the module docstring for why this shape).
    Thread-safe: a sync client may share it across threads."""

    __slots__ = ("_lock", "_tokens", "ratio", "reserve")

    def __init__(self, *, ratio: float, reserve: float) -> None:
        self.ratio = ratio
        self.reserve = reserve
        self._tokens = reserve
        self._lock = threading.Lock()

    @property
    def tokens(self) -> float:
        return self._tokens

    def deposit(self) -> None:
        with self._lock:
            self._tokens = min(self.reserve, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        with self._lock:
            if self._tokens >= 1.0 - 1e-9:  # ten deposits of 0.1 sum to 0.999...
                self._tokens -= 1.0
                return True
            return False
