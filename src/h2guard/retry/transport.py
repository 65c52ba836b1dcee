"""``RetryTransport``: safe retries around any httpx transport, sync or async.

One logical request may take several attempts. Each failed attempt is classified
(:func:`~h2guard.retry.classify.classify`), judged by the :class:`RetryPolicy` (is it a
``retry_on`` condition? is it safe for this method and key? any attempts, budget and deadline
left?), and either retried after a backoff or raised with the reason in its message. The
decision is the same code for both flavours; only the waiting differs (``anyio.sleep`` or
``time.sleep``).

Wrapped around h2guard's own transport, it turns that transport's transparent moves off for the
requests it sends (extension ``h2guard.transparent_retries = 0``), so every retry — including
REFUSED_STREAM and GOAWAY moves — is counted, budgeted and reported in one place.
"""

from __future__ import annotations

import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import httpx

from h2guard import otel
from h2guard.client.transport import AsyncHTTPTransport, origin_of
from h2guard.errors import Failure, H2ReadTimeout, attach, failure_of
from h2guard.events import EventLog
from h2guard.resend import why_not_resend
from h2guard.retry.classify import classify
from h2guard.retry.policy import Decision, RetryBudget, RetryPolicy
from h2guard.retry.policy import parse_retry_after as _parse_retry_after

__all__ = ["RetryInfo", "RetryTransport", "set_testing"]

log = logging.getLogger("h2guard.retry")
_ONE_SHOT = "the request body is a one-shot stream"
_TESTING = {"on": False}


def set_testing(enabled: bool = True) -> None:
    """Skip every backoff wait (decisions, counts and events stay the same): for test suites
    that exercise retries and must not sleep. ``set_testing(False)`` restores real waits."""
    _TESTING["on"] = enabled


@dataclass(frozen=True, slots=True)
class RetryInfo:
    """What the ``on_retry`` hook receives before each retry's wait."""

    request: httpx.Request
    attempt: int  # the attempt that failed (1 = the first)
    delay: float  # seconds until the next attempt
    reason: str  # the retry_on condition
    failure: Failure | None  # None when a response (status) is retried
    status: int | None


class _Body:
    """Can the request body be sent again, and how to rewind it."""

    __slots__ = ("_file", "_position", "kind", "watched")

    def __init__(self, request: httpx.Request) -> None:
        stream = request.stream
        self._file: Any = None
        self._position = 0
        self.watched: _Watched | None = None
        if isinstance(stream, httpx.ByteStream) or type(stream).__name__ == "MultipartStream":
            self.kind = "replayable"  # bytes; multipart re-renders (and seeks its files)
            return
        held = getattr(stream, "_stream", None)  # httpx's IteratorByteStream over a file
        if held is not None and hasattr(held, "seek") and hasattr(held, "tell"):
            try:
                if held.seekable():
                    self._file = held
                    self._position = held.tell()
                    self.kind = "seekable"
                    return
            except (OSError, ValueError, AttributeError):
                pass
        self.kind = "one-shot"
        self.watched = _Watched(stream)
        request.stream = self.watched

    def can_resend(self) -> bool:
        return self.kind != "one-shot" or self.watched is None or not self.watched.started

    def rewind(self) -> None:
        if self._file is not None:
            self._file.seek(self._position)


class _Watched(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A one-shot body that notes whether any byte of it was taken."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.started = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self.started = True
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self.started = True
            yield chunk

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    async def aclose(self) -> None:
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()


class _Attempts:
    """One logical request's attempts: all decisions, no I/O."""

    __slots__ = ("_original_timeouts", "attempt", "body", "budget", "deadline", "keyed", "method",
                 "origin", "owner", "policy", "previous_delay", "request", "retries", "span")

    def __init__(self, owner: RetryTransport, request: httpx.Request) -> None:
        policy = owner.policy
        self.owner = owner
        self.policy = policy
        self.request = request
        self.method = request.method.upper()
        self.origin = origin_of(request.url)
        header = policy.key_header
        if policy.idempotency_keys and self.method in policy.key_methods \
                and header not in request.headers:
            # an sf-string as the IETF draft writes it; 128 random bits, one per logical request
            request.headers[header] = f'"{secrets.token_hex(16)}"'
        self.keyed = header in request.headers
        self.body = _Body(request)
        self.attempt = 0
        self.retries = 0
        self.previous_delay = 0.0
        deadline = request.extensions.get("h2guard.deadline", policy.deadline)
        self.deadline = None if deadline is None else time.monotonic() + float(deadline)
        self._original_timeouts: dict[str, float | None] = dict(
            request.extensions.get("timeout", {}))
        self.budget = owner.budget_for(self.origin) if policy.budget else None
        if self.budget is not None:
            self.budget.deposit()
        request.extensions["h2guard.transparent_retries"] = 0  # we decide every retry here
        self.span: Any = None if owner.tracer is None else otel.start(owner.tracer, request)

    # ------------------------------------------------------------------ per attempt

    def start_attempt(self) -> float | None:
        """Prepare the next attempt; returns the hard time limit for it (None: no limit)."""
        self.attempt += 1
        if self.attempt > 1:
            self.body.rewind()
        limit = self.policy.attempt_timeout
        if self.deadline is not None:
            remaining = max(self.deadline - time.monotonic(), 0.001)
            limit = remaining if limit is None else min(limit, remaining)
        if limit is not None and self._original_timeouts:
            self.request.extensions["timeout"] = {
                k: (limit if v is None else min(v, limit))
                for k, v in self._original_timeouts.items()}
        return limit

    def judge(self, failure: Failure | None, status: int | None = None,
              retry_after: float | None = None) -> Decision:
        policy = self.policy
        reason = policy.condition(failure, status)
        if reason is None:
            what = failure.kind if failure is not None else f"status {status}"
            return Decision(False, reason=f"{what} is not a retry_on condition of the policy")
        # the rule the transport's own moves apply too (h2guard.resend), with this request's
        # method and key
        why = why_not_resend(
            failure, safe=self.method in policy.idempotent_methods or self.keyed,
            body_resendable=self.body.can_resend(),
            trust_refused_stream=policy.trust_refused_stream)
        if why == "maybe_processed":
            return Decision(False, reason=f"{self.method} without an {policy.key_header} may "
                            "have been processed, so sending it again could apply it twice; "
                            f"add an {policy.key_header} (RetryPolicy(idempotency_keys=True) "
                            "does it for you) if the server honours one")
        if self.attempt >= policy.max_attempts(failure):
            return Decision(False, reason=f"gave up after {self.attempt} attempts")
        if why == "one_shot_body":
            return Decision(False, reason=f"{_ONE_SHOT} and part of it was already sent; "
                            "pass bytes (content=...) or a seekable file to make it "
                            "replayable")
        delay = policy.delay(failure, self.retries + 1, self.owner.rng, self.previous_delay,
                             retry_after)
        if delay is None:
            return Decision(False, reason=f"the server asked to wait {retry_after:.0f} s "
                            f"(Retry-After), more than retry_after_cap={policy.retry_after_cap:g}")
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return Decision(False, reason="deadline")
        if self.budget is not None and policy.spends_budget(failure) \
                and not self.budget.withdraw():
            return Decision(False, reason="budget")
        self.retries += 1
        self.previous_delay = delay
        return Decision(True, delay=delay, reason=reason)

    def after_error(self, exc: Exception, limit: float | None) -> Decision:
        """An attempt raised: the retry decision (reported), or raise what the caller gets."""
        if isinstance(exc, TimeoutError) and limit is not None:
            failure: Failure | None = Failure(
                "timeout", "maybe", None, None, None, self.origin,
                f"no response within {limit:.3g} s (attempt_timeout / deadline)")
        else:
            failure = classify(exc, origin=self.origin)
        if failure is None:
            if self.span is not None:
                self.span.record_exception(exc)
                self.span.end()
            raise exc  # not a transport failure (a bad URL, a bug): never retried
        decision = self.judge(failure)
        if not decision.retry:
            final = self.give_up(exc, failure, decision)
            if self.span is not None:
                otel.end_error(self.span, final, failure_of(final) or failure,
                               attempts=self.attempt, retries=self.retries)
            raise final from exc
        self.report_retry(decision, failure, None)
        return decision

    def after_response(self, response: httpx.Response) -> Decision | None:
        """A response arrived: None to return it, or the decision to retry it (the caller
        closes it and reports)."""
        status = response.status_code
        if self.policy.condition(None, status) is None:
            return None
        decision = self.judge(None, status, _retry_after(response))
        return decision if decision.retry else None

    # ------------------------------------------------------------------ reporting

    def report_retry(self, decision: Decision, failure: Failure | None,
                     status: int | None) -> None:
        owner = self.owner
        kind = failure.kind if failure is not None else f"status_{status}"
        owner.events.emit("retry.attempt", origin=self.origin, reason=decision.reason,
                          attempt=self.attempt, delay=round(decision.delay, 4),
                          method=self.method, kind=kind,
                          code=failure.code_name if failure is not None else None,
                          status=status)
        log.info("retrying %s %s after %s (attempt %d failed: %s); waiting %.3f s",
                 self.method, self.origin, decision.reason, self.attempt, kind, decision.delay,
                 extra={"h2guard": {"event": "retry", "origin": self.origin,
                                    "method": self.method, "attempt": self.attempt,
                                    "reason": decision.reason, "kind": kind,
                                    "delay": decision.delay, "status": status}})
        if self.span is not None:
            otel.on_attempt_failed(self.span, attempt=self.attempt, failure=failure,
                                   status=status, delay=decision.delay)
        if owner.on_retry is not None:
            owner.on_retry(RetryInfo(self.request, self.attempt, decision.delay,
                                     decision.reason, failure, status))

    def give_up(self, exc: BaseException, failure: Failure, decision: Decision) -> BaseException:
        """The exception to raise: the attempt's own type, saying why it was not retried."""
        kind = failure.kind
        why = decision.reason
        if why == "budget":
            kind = "retry_budget"
            why = (f"the retry budget for {self.origin} is spent (retries may add at most "
                   f"{self.policy.budget_ratio:.0%} to the load): the server looks overloaded")
            self.owner.events.emit("retry.budget_exhausted", origin=self.origin,
                                   method=self.method, attempt=self.attempt)
        elif why == "deadline":
            kind = "deadline"
            seconds = self.request.extensions.get("h2guard.deadline", self.policy.deadline)
            why = f"the deadline of {seconds or 0:g} s would pass before a retry"
        elif why.startswith(_ONE_SHOT) and failure.processed == "no":
            kind = "body_not_replayable"
        self._restore_timeouts()
        self.owner.events.emit("retry.gave_up", origin=self.origin, method=self.method,
                               attempts=self.attempt, kind=failure.kind, reason=why)
        detail = f"{failure.explain()} Not retried: {why}."
        final = Failure(kind, failure.processed, failure.code, failure.stream_id,
                        failure.last_stream_id, failure.origin or self.origin, detail,
                        self.attempt, {**failure.extra, "cause": failure.kind},
                        trace=failure.trace)
        cls = type(exc) if isinstance(exc, httpx.TransportError) else (
            H2ReadTimeout if isinstance(exc, TimeoutError) else httpx.TransportError)
        try:
            new = attach(final, request=self.request, cls=cls, message=detail)
        except TypeError:  # an exception type with its own constructor: keep it, add a note
            exc.failure = final  # type: ignore[attr-defined]
            exc.add_note(detail)
            return exc
        new.__cause__ = exc
        return new

    def finish(self, response: httpx.Response) -> httpx.Response:
        if self.span is not None:
            otel.end_ok(self.span, response, attempts=self.attempt, retries=self.retries)
        response.extensions = {**response.extensions, "h2guard_attempts": self.attempt}
        self._restore_timeouts()
        return response

    def _restore_timeouts(self) -> None:
        """The caller's timeouts back on the request (attempts narrowed them)."""
        if self._original_timeouts:
            self.request.extensions["timeout"] = self._original_timeouts


def _retry_after(response: httpx.Response) -> float | None:
    return _parse_retry_after(response.headers.get("retry-after"))


class RetryTransport(httpx.AsyncBaseTransport, httpx.BaseTransport):
    """Retries what is safe, around any httpx transport (async or sync, h2guard's or not).

    ``httpx.AsyncClient(transport=RetryTransport(h2guard.AsyncHTTPTransport()))``, or
    ``RetryTransport(httpx.HTTPTransport())`` for a sync client over HTTP/1.1. The inner
    transport's flavour decides which of ``handle_request`` / ``handle_async_request`` works.
    ``events`` receives ``retry.attempt`` / ``retry.gave_up`` / ``retry.budget_exhausted``
    (counted by :class:`h2guard.metrics.ClientMetrics`); ``on_retry`` is called before each wait.
    ``seed`` makes the jitter reproducible. ``tracer`` (an OpenTelemetry tracer) gives each
    logical request a span, its failed attempts as events (:mod:`h2guard.otel`).
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | httpx.BaseTransport | None = None, *,
                 policy: RetryPolicy | None = None, events: EventLog | None = None,
                 on_retry: Callable[[RetryInfo], None] | None = None,
                 seed: int | None = None, tracer: Any = None) -> None:
        if inner is None:
            inner = AsyncHTTPTransport()
        self.inner = inner
        self.policy = policy if policy is not None else RetryPolicy()
        shared = getattr(inner, "events", None)  # an empty EventLog is falsy: no `or`
        self.events = events if events is not None else shared if shared is not None \
            else EventLog(maxlen=10_000)
        self.on_retry = on_retry
        self.tracer = tracer
        self.rng = random.Random(seed)
        self._budgets: dict[str, RetryBudget] = {}

    def budget_for(self, origin: str) -> RetryBudget:
        budget = self._budgets.get(origin)
        if budget is None:
            budget = self._budgets.setdefault(origin, RetryBudget(
                ratio=self.policy.budget_ratio, reserve=self.policy.budget_reserve))
        return budget

    # ------------------------------------------------------------------ async

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        inner = self.inner
        if not isinstance(inner, httpx.AsyncBaseTransport):
            raise TypeError("the inner transport is sync: use RetryTransport with httpx.Client")
        plan = _Attempts(self, request)
        while True:
            limit = plan.start_attempt()
            try:
                if limit is None:
                    response = await inner.handle_async_request(request)
                else:
                    with anyio.fail_after(limit):
                        response = await inner.handle_async_request(request)
            except Exception as exc:
                decision = plan.after_error(exc, limit)  # raises when not retried
                await _sleep_async(decision.delay)
                continue
            again = plan.after_response(response)
            if again is None:
                return plan.finish(response)  # the happy path: nothing else to look at
            await response.aclose()
            plan.report_retry(again, None, response.status_code)
            await _sleep_async(again.delay)

    async def aclose(self) -> None:
        if isinstance(self.inner, httpx.AsyncBaseTransport):
            await self.inner.aclose()

    # ------------------------------------------------------------------ sync

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        inner = self.inner
        if not isinstance(inner, httpx.BaseTransport):
            raise TypeError("the inner transport is async: use RetryTransport with "
                            "httpx.AsyncClient")
        plan = _Attempts(self, request)
        while True:
            plan.start_attempt()  # sync: the limit goes into httpx's timeouts
            try:
                response = inner.handle_request(request)
            except Exception as exc:
                decision = plan.after_error(exc, None)  # raises when not retried
                _sleep_sync(decision.delay)
                continue
            again = plan.after_response(response)
            if again is None:
                return plan.finish(response)
            response.close()
            plan.report_retry(again, None, response.status_code)
            _sleep_sync(again.delay)

    def close(self) -> None:
        if isinstance(self.inner, httpx.BaseTransport):
            self.inner.close()


async def _sleep_async(delay: float) -> None:
    if delay > 0 and not _TESTING["on"]:
        await anyio.sleep(delay)


def _sleep_sync(delay: float) -> None:
    if delay > 0 and not _TESTING["on"]:
        time.sleep(delay)

