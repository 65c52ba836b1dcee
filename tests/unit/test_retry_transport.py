"""RetryTransport around a scripted fake transport: what is resent, how often, with which body
and key, and what is raised when it is not (docs/facts.md §1, §5, §6). No network."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import h2.errors
import h2.events
import httpcore
import httpx
import pytest

import h2guard
from h2guard.errors import (
    ConnectionLostError,
    Failure,
    GoAwayError,
    H2ConnectError,
    H2ReadTimeout,
    StreamResetError,
    attach,
    failure_of,
)
from h2guard.events import EventLog
from h2guard.retry import RetryInfo, RetryPolicy, RetryTransport, set_testing

URL = "https://api.test/orders"
ORIGIN = "https://api.test:443"
METHODS = ["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH"]
IDEMPOTENT = {"GET", "HEAD", "PUT", "DELETE"}
KEY_RE = re.compile(r'^"[0-9a-f]{32}"$')  # an sf-string of 128 random bits


@pytest.fixture(autouse=True)
def no_waits() -> Iterator[None]:
    set_testing(True)
    yield
    set_testing(False)


@pytest.fixture
def real_waits() -> Iterator[None]:
    set_testing(False)
    yield
    set_testing(False)


# ---------------------------------------------------------------------- the scripted fake

Outcome = Failure | Callable[[], BaseException | httpx.Response] | None


@dataclass
class Step:
    """One attempt's outcome. ``outcome``: a Failure (raised as h2guard's exception for it), a
    factory of an exception or a response, or None for a plain 200. ``read``: how much of the
    request body the inner reads first (True: all of it, False: nothing, n: n chunks).
    ``sleep``: seconds to stall before the outcome."""

    outcome: Outcome = None
    read: bool | int = True
    sleep: float = 0.0


@dataclass
class Seen:
    method: str
    headers: httpx.Headers
    body: bytes
    timeout: dict[str, Any] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def ok(status: int = 200, **headers: str) -> Callable[[], httpx.Response]:
    return lambda: httpx.Response(status, headers=headers, content=b"done")


class _Script:
    def __init__(self, *steps: Step | Outcome, then: Step | Outcome = None,
                 events: EventLog | None = None) -> None:
        self.steps = [s if isinstance(s, Step) else Step(s) for s in steps]
        self.then = then if isinstance(then, Step) else Step(then)
        self.seen: list[Seen] = []
        self.closed = False
        if events is not None:
            self.events = events

    def _next(self) -> Step:
        return self.steps.pop(0) if self.steps else self.then

    def _record(self, request: httpx.Request, body: bytes) -> None:
        self.seen.append(Seen(request.method, httpx.Headers(request.headers), body,
                              dict(request.extensions.get("timeout", {})),
                              dict(request.extensions)))

    @staticmethod
    def _outcome(step: Step, request: httpx.Request) -> httpx.Response:
        outcome = step.outcome
        if outcome is None:
            return httpx.Response(200, content=b"done")
        if isinstance(outcome, Failure):
            raise attach(outcome, request=request)
        made = outcome()
        if isinstance(made, BaseException):
            raise made
        return made

    @property
    def attempts(self) -> int:
        return len(self.seen)


class FakeAsync(_Script, httpx.AsyncBaseTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        step = self._next()
        body = await self._read(request, step.read)
        self._record(request, body)
        if step.sleep:
            await anyio.sleep(step.sleep)
        return self._outcome(step, request)

    @staticmethod
    async def _read(request: httpx.Request, read: bool | int) -> bytes:
        if read is False:
            return b""
        limit = None if read is True else int(read)
        chunks: list[bytes] = []
        stream = request.stream
        if isinstance(stream, httpx.AsyncByteStream):
            iterator = stream.__aiter__()
            try:
                while limit is None or len(chunks) < limit:
                    chunks.append(await iterator.__anext__())
            except StopAsyncIteration:
                pass
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
        else:  # a sync body (a file) handed straight to handle_async_request
            assert isinstance(stream, httpx.SyncByteStream)
            for chunk in stream:
                chunks.append(chunk)
                if limit is not None and len(chunks) >= limit:
                    break
        return b"".join(chunks)

    async def aclose(self) -> None:
        self.closed = True


class FakeSync(_Script, httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        step = self._next()
        body = self._read(request, step.read)
        self._record(request, body)
        if step.sleep:
            time.sleep(step.sleep)
        return self._outcome(step, request)

    @staticmethod
    def _read(request: httpx.Request, read: bool | int) -> bytes:
        if read is False:
            return b""
        limit = None if read is True else int(read)
        chunks: list[bytes] = []
        assert isinstance(request.stream, httpx.SyncByteStream)
        iterator = iter(request.stream)
        for chunk in iterator:
            chunks.append(chunk)
            if limit is not None and len(chunks) >= limit:
                break
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
        return b"".join(chunks)

    def close(self) -> None:
        self.closed = True


class Rig:
    """A fake inner under a RetryTransport, with every RetryInfo the hook received."""

    def __init__(self, flavour: str, *steps: Step | Outcome, then: Step | Outcome = None,
                 policy: RetryPolicy | None = None, seed: int = 1) -> None:
        self.flavour = flavour
        cls = FakeAsync if flavour == "async" else FakeSync
        self.inner: _Script = cls(*steps, then=then)
        self.infos: list[RetryInfo] = []
        self.transport = RetryTransport(self.inner, policy=policy or RetryPolicy(),
                                        on_retry=self.infos.append, seed=seed)

    async def send(self, method: str = "GET", url: str = URL, **kwargs: Any) -> httpx.Response:
        if self.flavour == "async":
            async with httpx.AsyncClient(transport=self.transport) as client:
                return await client.request(method, url, **kwargs)
        with httpx.Client(transport=self.transport) as client:
            return client.request(method, url, **kwargs)

    async def fail(self, method: str = "GET", url: str = URL,
                   **kwargs: Any) -> httpx.TransportError:
        with pytest.raises(httpx.TransportError) as info:
            await self.send(method, url, **kwargs)
        return info.value

    @property
    def attempts(self) -> int:
        return self.inner.attempts

    @property
    def events(self) -> EventLog:
        return self.transport.events


FLAVOURS = pytest.mark.parametrize("flavour", ["async", "sync"])


# ---------------------------------------------------------------------- §1 x method x key

@dataclass(frozen=True)
class Row:
    name: str
    outcome: Failure | None  # None: a response row
    status: int | None = None
    unprocessed: bool = False  # proven unprocessed: any method may be resent
    reason: str = "reset"  # the retry_on condition a retry is reported under
    calm: bool = False


ROWS = [
    Row("refused_stream", Failure("refused_stream", "no", 0x7, 1), unprocessed=True,
        reason="refused-stream"),
    Row("goaway_unprocessed", Failure("goaway_unprocessed", "no", 0x0, 7, 5), unprocessed=True,
        reason="reset-before-request"),
    Row("goaway_at_or_below_last_id", Failure("goaway", "maybe", 0x0, 3, 5)),
    Row("connect", Failure("connect", "no", detail="[Errno 111] Connection refused"),
        unprocessed=True, reason="connect-failure"),
    Row("connection_lost", Failure("connection_lost", "maybe", detail="EOF")),
    Row("timeout", Failure("timeout", "maybe", detail="no response in 5 s")),
    Row("reset_CANCEL", Failure("stream_reset", "maybe", 0x8, 1)),
    Row("reset_INTERNAL_ERROR", Failure("stream_reset", "maybe", 0x2, 1)),
    Row("reset_PROTOCOL_ERROR", Failure("stream_reset", "maybe", 0x1, 1)),
    Row("reset_NO_ERROR", Failure("stream_reset", "maybe", 0x0, 1)),
    Row("http_1_1_required", Failure("http_1_1_required", "no", 0xD, 1), unprocessed=True,
        reason="reset-before-request"),
    Row("reset_ENHANCE_YOUR_CALM", Failure("stream_reset", "maybe", 0xB, 1), calm=True),
    Row("goaway_ENHANCE_YOUR_CALM", Failure("goaway", "maybe", 0xB, 1, 1), calm=True),
    Row("429_retry_after", None, 429, reason="retriable-status-codes"),
    Row("503_retry_after", None, 503, reason="retriable-status-codes"),
]


@FLAVOURS
@pytest.mark.parametrize("keyed", [False, True], ids=["nokey", "key"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
async def test_decision_matrix(row: Row, method: str, keyed: bool, flavour: str) -> None:
    first: Step | Outcome = row.outcome if row.outcome is not None else ok(
        row.status or 0, **{"Retry-After": "2"})
    rig = Rig(flavour, first, ok(), policy=RetryPolicy(calm_delay=1.0))
    headers = {"Idempotency-Key": '"k-123"'} if keyed else {}
    should_retry = row.unprocessed or method in IDEMPOTENT or keyed

    if not should_retry and row.outcome is not None:
        err = await rig.fail(method, headers=headers, content=b"{}")
        assert rig.attempts == 1
        # the same exception family as the attempt's own error, with the record and the reason
        original_type = type(attach(row.outcome))
        assert isinstance(err, original_type) and isinstance(err, httpx.TransportError)
        failure = failure_of(err)
        assert failure is not None
        assert failure.kind == row.outcome.kind and failure.extra["cause"] == row.outcome.kind
        assert failure.processed == "maybe" and failure.attempts == 1
        assert failure.origin == ORIGIN
        assert "Idempotency-Key" in str(err) and method in str(err)
        assert "Not retried" in str(err)
        assert isinstance(err.__cause__, original_type) and failure_of(err.__cause__) is not None
        assert rig.events.counts.get("retry.gave_up") == 1
        assert rig.infos == []
        return

    response = await rig.send(method, headers=headers, content=b"{}")
    if not should_retry:  # a 429/503 the method may not resend: returned as it is
        assert rig.attempts == 1 and response.status_code == row.status
        assert rig.infos == []
        return
    assert rig.attempts == 2 and response.status_code == 200
    assert response.extensions["h2guard_attempts"] == 2
    [info] = rig.infos
    assert info.reason == row.reason and info.attempt == 1
    assert info.failure == row.outcome and info.status == row.status
    assert rig.events.counts.get("retry.attempt") == 1 and "retry.gave_up" not in rig.events.counts
    if row.name == "goaway_unprocessed":
        assert info.delay == 0.0  # a draining server is not overloaded: move at once
    elif row.calm:
        assert info.delay >= 1.0  # ENHANCE_YOUR_CALM: back off hard
    elif row.status is not None:
        assert info.delay >= 2.0  # Retry-After
    else:
        assert 0.0 <= info.delay <= RetryPolicy().backoff_base
    for seen in rig.inner.seen:
        assert seen.method == method
        assert seen.headers.get("idempotency-key") == ('"k-123"' if keyed else None)


@FLAVOURS
async def test_attempts_are_bounded_and_the_last_error_says_so(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    rig = Rig(flavour, then=maybe, policy=RetryPolicy(attempts=4))
    err = await rig.fail("GET")
    assert rig.attempts == 4 and len(rig.infos) == 3
    assert [i.attempt for i in rig.infos] == [1, 2, 3]
    failure = failure_of(err)
    assert failure is not None and failure.attempts == 4
    assert "gave up after 4 attempts" in str(err)


@FLAVOURS
async def test_unprocessed_failures_get_more_attempts(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, then=refused, policy=RetryPolicy(attempts=2, unprocessed_attempts=6))
    err = await rig.fail("POST", content=b"x")
    assert rig.attempts == 6
    assert isinstance(err, StreamResetError)
    failure = failure_of(err)
    assert failure is not None and failure.kind == "refused_stream" and failure.attempts == 6
    assert "gave up after 6 attempts" in str(err)


@FLAVOURS
async def test_a_condition_switched_off_is_not_retried(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, refused, ok(),
              policy=RetryPolicy(retry_on=frozenset({"reset", "connect-failure"})))
    err = await rig.fail("GET")
    assert rig.attempts == 1
    assert "not a retry_on condition" in str(err)


@FLAVOURS
async def test_5xx_and_gateway_error_conditions(flavour: str) -> None:
    rig = Rig(flavour, ok(500), ok(502), ok(),
              policy=RetryPolicy(retry_on=frozenset({"5xx"}), attempts=5))
    assert (await rig.send("GET")).status_code == 200 and rig.attempts == 3
    rig = Rig(flavour, ok(500), ok(), policy=RetryPolicy(retry_on=frozenset({"gateway-error"})))
    assert (await rig.send("GET")).status_code == 500 and rig.attempts == 1
    rig = Rig(flavour, ok(504), ok(), policy=RetryPolicy(retry_on=frozenset({"gateway-error"})))
    assert (await rig.send("GET")).status_code == 200 and rig.attempts == 2


@FLAVOURS
async def test_retriable_status_exhausting_attempts_returns_the_last_response(
        flavour: str) -> None:
    rig = Rig(flavour, then=ok(503), policy=RetryPolicy(attempts=3))
    response = await rig.send("GET")
    assert response.status_code == 503 and rig.attempts == 3
    assert response.extensions["h2guard_attempts"] == 3
    assert [i.status for i in rig.infos] == [503, 503]
    assert all(i.failure is None for i in rig.infos)


# ---------------------------------------------------------------------- classify() via transport

def _httpx_style_reset(code: int) -> Callable[[], BaseException]:
    """What httpx's own transport raises for an RST_STREAM: the httpcore error wrapping h2's
    StreamReset event, re-raised as httpx.RemoteProtocolError(str(exc)) from it."""
    def make() -> BaseException:
        event = h2.events.StreamReset(stream_id=1,
                                      error_code=h2.errors._error_code_from_int(code))
        try:
            try:
                raise httpcore.RemoteProtocolError(event)
            except httpcore.RemoteProtocolError as low:
                raise httpx.RemoteProtocolError(str(low)) from low
        except httpx.RemoteProtocolError as high:
            return high
    return make


@FLAVOURS
async def test_refused_stream_from_httpx_transport_resends_a_post(flavour: str) -> None:
    rig = Rig(flavour, _httpx_style_reset(0x7), ok())
    response = await rig.send("POST", content=b'{"amount": 5}')
    assert response.status_code == 200 and rig.attempts == 2
    assert rig.infos[0].reason == "refused-stream"
    assert [s.body for s in rig.inner.seen] == [b'{"amount": 5}'] * 2


@FLAVOURS
async def test_internal_error_from_httpx_transport_keeps_its_type(flavour: str) -> None:
    rig = Rig(flavour, _httpx_style_reset(0x2), ok())
    err = await rig.fail("POST", content=b"x")
    assert rig.attempts == 1
    assert type(err) is httpx.RemoteProtocolError  # not h2guard's own subclass: the same type
    failure = failure_of(err)
    assert failure is not None and failure.kind == "stream_reset" and failure.code == 0x2
    assert "INTERNAL_ERROR" in str(err) and "Idempotency-Key" in str(err)


@FLAVOURS
@pytest.mark.parametrize(("make", "kind", "retried"), [
    (lambda: httpx.ConnectError("refused"), "connect", True),
    (lambda: httpx.ReadTimeout("slow"), "timeout", True),
    (lambda: httpx.ReadError("reset by peer"), "connection_lost", True),
    (lambda: httpx.PoolTimeout("no slot"), "pool_timeout", False),
], ids=["connect", "read_timeout", "read_error", "pool_timeout"])
async def test_plain_httpx_errors_for_get(make: Callable[[], BaseException], kind: str,
                                          retried: bool, flavour: str) -> None:
    rig = Rig(flavour, make, ok())
    if retried:
        assert (await rig.send("GET")).status_code == 200 and rig.attempts == 2
        failure = rig.infos[0].failure
        assert failure is not None and failure.kind == kind
        return
    err = await rig.fail("GET")
    assert rig.attempts == 1 and isinstance(err, httpx.PoolTimeout)
    failure = failure_of(err)
    assert failure is not None and failure.kind == "pool_timeout"
    assert "not a retry_on condition" in str(err)


@FLAVOURS
async def test_unclassified_errors_are_reraised_unchanged(flavour: str) -> None:
    unsupported = httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'.")
    rig = Rig(flavour, lambda: unsupported, ok())
    with pytest.raises(httpx.UnsupportedProtocol) as info:
        await rig.send("GET")
    assert info.value is unsupported and failure_of(info.value) is None
    assert rig.attempts == 1
    bug = ValueError("a bug in the inner transport")
    rig = Rig(flavour, lambda: bug, ok())
    with pytest.raises(ValueError) as value_info:
        await rig.send("GET")
    assert value_info.value is bug and rig.attempts == 1


# ---------------------------------------------------------------------- Retry-After

@FLAVOURS
@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds_sets_the_delay(status: int, flavour: str) -> None:
    rig = Rig(flavour, ok(status, **{"Retry-After": "3"}), ok(status, **{"Retry-After": "7"}),
              ok(), policy=RetryPolicy(attempts=3))
    started = time.monotonic()
    assert (await rig.send("GET")).status_code == 200
    assert time.monotonic() - started < 1.0  # set_testing: decided, not slept
    assert rig.attempts == 3
    delays = [i.delay for i in rig.infos]
    assert 3.0 <= delays[0] <= 3.0 + RetryPolicy().backoff_base
    assert 7.0 <= delays[1] <= 7.0 + RetryPolicy().backoff_base * 2


@FLAVOURS
async def test_retry_after_http_date(flavour: str) -> None:
    import email.utils

    when = email.utils.formatdate(time.time() + 20, usegmt=True)
    rig = Rig(flavour, ok(503, **{"Retry-After": when}), ok())
    assert (await rig.send("GET")).status_code == 200
    assert 17.0 <= rig.infos[0].delay <= 20.5


@FLAVOURS
async def test_retry_after_above_the_cap_returns_the_response(flavour: str) -> None:
    rig = Rig(flavour, ok(503, **{"Retry-After": "120"}), ok(),
              policy=RetryPolicy(retry_after_cap=30.0))
    response = await rig.send("GET")
    assert response.status_code == 503 and response.headers["retry-after"] == "120"
    assert rig.attempts == 1 and rig.infos == []
    assert response.content == b"done"  # still readable: it was not closed


@FLAVOURS
@pytest.mark.parametrize("value", ["soon", "\u00b2"])
async def test_unreadable_retry_after_falls_back_to_backoff(value: str, flavour: str) -> None:
    first = lambda: httpx.Response(503, headers=[(b"retry-after", value.encode("latin-1"))])  # noqa: E731
    rig = Rig(flavour, first, ok())
    assert (await rig.send("GET")).status_code == 200 and rig.attempts == 2
    assert rig.infos[0].delay <= RetryPolicy().backoff_base


# ---------------------------------------------------------------------- budget

@FLAVOURS
async def test_budget_bounds_attempts_under_an_always_refusing_server(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    policy = RetryPolicy(budget_ratio=0.1, budget_reserve=5)
    rig = Rig(flavour, then=refused, policy=policy)
    kinds: list[str] = []
    transport = rig.transport
    if flavour == "async":
        async with httpx.AsyncClient(transport=transport) as client:
            for _ in range(200):
                try:
                    await client.get(URL)
                except httpx.TransportError as exc:
                    failure = failure_of(exc)
                    assert failure is not None
                    kinds.append(failure.kind)
    else:
        with httpx.Client(transport=transport) as sync_client:
            for _ in range(200):
                try:
                    sync_client.get(URL)
                except httpx.TransportError as exc:
                    failure = failure_of(exc)
                    assert failure is not None
                    kinds.append(failure.kind)
    assert len(kinds) == 200  # every one failed: the server refuses everything
    # retries add at most ratio of the requests, plus the reserve
    assert rig.attempts <= 200 * 1.1 + 5
    # ... and the budget does let that much through (the first request spends the reserve)
    assert rig.attempts >= 200 + 5 + 15
    assert kinds.count("retry_budget") >= 190
    assert rig.events.counts["retry.budget_exhausted"] == kinds.count("retry_budget")
    assert transport.budget_for(ORIGIN).tokens < 1


@FLAVOURS
async def test_budget_exhausted_error_explains(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, then=refused, policy=RetryPolicy(budget_ratio=0.1, budget_reserve=2))
    err = await rig.fail("GET")
    assert rig.attempts == 3  # the reserve's two retries, then the budget is spent
    assert isinstance(err, StreamResetError)
    failure = failure_of(err)
    assert failure is not None
    assert failure.kind == "retry_budget" and failure.extra["cause"] == "refused_stream"
    assert "retry budget" in str(err) and ORIGIN in str(err) and "10%" in str(err)


@FLAVOURS
async def test_budget_is_per_origin(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, then=refused, policy=RetryPolicy(budget_ratio=0.0, budget_reserve=1))
    await rig.fail("GET", "https://a.test/")
    assert rig.attempts == 2
    await rig.fail("GET", "https://a.test/")
    assert rig.attempts == 3  # a.test's budget is spent
    await rig.fail("GET", "https://b.test/")
    assert rig.attempts == 5  # b.test still has its own


@FLAVOURS
async def test_goaway_drains_do_not_spend_the_budget(flavour: str) -> None:
    policy = RetryPolicy(budget_ratio=0.0, budget_reserve=0)  # no retry budget at all
    drain = Failure("goaway_unprocessed", "no", 0x0, 9, 7)
    rig = Rig(flavour, drain, drain, drain, ok(), policy=policy)
    assert (await rig.send("POST", content=b"x")).status_code == 200
    assert rig.attempts == 4
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, refused, ok(), policy=policy)
    err = await rig.fail("GET")
    assert rig.attempts == 1
    failure = failure_of(err)
    assert failure is not None and failure.kind == "retry_budget"


@FLAVOURS
async def test_budget_off_allows_every_attempt(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, then=refused,
              policy=RetryPolicy(budget=False, budget_reserve=0, unprocessed_attempts=7))
    await rig.fail("GET")
    assert rig.attempts == 7


# ---------------------------------------------------------------------- deadline, attempt_timeout

async def test_attempt_timeout_retries_a_stalled_get(real_waits: None) -> None:
    rig = Rig("async", Step(None, sleep=5.0), ok(), policy=RetryPolicy(attempt_timeout=0.05))
    started = time.monotonic()
    response = await rig.send("GET")
    assert time.monotonic() - started < 1.0
    assert response.status_code == 200 and rig.attempts == 2
    failure = rig.infos[0].failure
    assert failure is not None and failure.kind == "timeout" and failure.processed == "maybe"


async def test_attempt_timeout_on_an_unkeyed_post_is_raised_as_a_timeout() -> None:
    rig = Rig("async", Step(None, sleep=5.0), ok(), policy=RetryPolicy(attempt_timeout=0.05))
    started = time.monotonic()
    err = await rig.fail("POST", content=b"x")
    assert time.monotonic() - started < 1.0 and rig.attempts == 1
    failure = failure_of(err)
    assert failure is not None and failure.kind == "timeout"
    assert isinstance(err, httpx.TimeoutException)  # `except httpx.TimeoutException` works
    assert isinstance(err.__cause__, TimeoutError)
    assert "Idempotency-Key" in str(err)


async def test_deadline_cuts_a_stalled_attempt(real_waits: None) -> None:
    rig = Rig("async", then=Step(None, sleep=5.0), policy=RetryPolicy(deadline=0.2))
    started = time.monotonic()
    err = await rig.fail("GET")
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 0.4
    assert rig.attempts == 1
    failure = failure_of(err)
    assert failure is not None and failure.kind == "deadline"
    assert failure.extra["cause"] == "timeout"
    assert "deadline of 0.2 s" in str(err)


@FLAVOURS
async def test_deadline_stops_retries_and_no_sleep_runs_past_it(flavour: str,
                                                                 real_waits: None) -> None:
    # decorrelated jitter with base == cap: every wait is exactly 0.08 s, so attempts start at
    # 0, 0.08, 0.16; the next would start at 0.24, past the 0.2 s deadline
    policy = RetryPolicy(deadline=0.2, attempts=10, jitter="decorrelated", backoff_base=0.08,
                         backoff_cap=0.08)
    rig = Rig(flavour, then=Failure("stream_reset", "maybe", 0x2, 1), policy=policy)
    started = time.monotonic()
    err = await rig.fail("GET")
    elapsed = time.monotonic() - started
    assert elapsed < 0.2 + 0.03  # the last wait ended before the deadline (+ scheduling slack)
    assert elapsed >= 0.15  # and the two waits really ran
    assert rig.attempts in (2, 3)  # 3 unless a wait overshot by more than 40 ms
    failure = failure_of(err)
    assert failure is not None and failure.kind == "deadline" and failure.attempts == rig.attempts
    assert "deadline" in str(err)


@FLAVOURS
async def test_a_wait_longer_than_the_deadline_is_not_started(flavour: str,
                                                               real_waits: None) -> None:
    policy = RetryPolicy(deadline=0.2, jitter="decorrelated", backoff_base=5.0, backoff_cap=5.0)
    rig = Rig(flavour, Failure("refused_stream", "no", 0x7, 1), ok(), policy=policy)
    started = time.monotonic()
    err = await rig.fail("GET")
    assert time.monotonic() - started < 0.1
    assert rig.attempts == 1
    failure = failure_of(err)
    assert failure is not None and failure.kind == "deadline"


@FLAVOURS
async def test_per_request_deadline_extension(flavour: str) -> None:
    policy = RetryPolicy(jitter="decorrelated", backoff_base=1.0, backoff_cap=1.0)
    rig = Rig(flavour, Failure("refused_stream", "no", 0x7, 1), ok(), policy=policy)
    err = await rig.fail("GET", extensions={"h2guard.deadline": 0.5})
    assert rig.attempts == 1
    failure = failure_of(err)
    assert failure is not None and failure.kind == "deadline"
    assert "deadline of 0.5 s" in str(err)
    # without the extension the same policy retries
    rig = Rig(flavour, Failure("refused_stream", "no", 0x7, 1), ok(), policy=policy)
    assert (await rig.send("GET")).status_code == 200 and rig.attempts == 2


async def test_sync_attempt_timeout_caps_httpx_timeouts_and_restores_them() -> None:
    rig = Rig("sync", Failure("stream_reset", "maybe", 0x2, 1), ok(),
              policy=RetryPolicy(attempt_timeout=0.5))
    transport = rig.transport
    with httpx.Client(transport=transport, timeout=httpx.Timeout(5.0, connect=0.2)) as client:
        request = client.build_request("GET", URL)
        response = client.send(request)
    assert response.status_code == 200 and rig.attempts == 2
    for seen in rig.inner.seen:
        assert seen.timeout == {"connect": 0.2, "read": 0.5, "write": 0.5, "pool": 0.5}
    assert request.extensions["timeout"] == {"connect": 0.2, "read": 5.0, "write": 5.0,
                                             "pool": 5.0}


@FLAVOURS
async def test_transparent_retries_of_the_inner_are_turned_off(flavour: str) -> None:
    rig = Rig(flavour, ok())
    await rig.send("GET")
    assert rig.inner.seen[0].extensions["h2guard.transparent_retries"] == 0


# ---------------------------------------------------------------------- bodies

@FLAVOURS
async def test_bytes_body_is_replayed_identically(flavour: str) -> None:
    payload = bytes(range(256)) * 400
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    rig = Rig(flavour, maybe, maybe, ok())
    assert (await rig.send("PUT", content=payload)).status_code == 200
    assert [s.body for s in rig.inner.seen] == [payload] * 3
    assert all(s.headers["content-length"] == str(len(payload)) for s in rig.inner.seen)


@FLAVOURS
async def test_form_and_json_bodies_are_replayed(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, refused, ok())
    await rig.send("POST", json={"a": 1})
    assert rig.inner.seen[0].body == rig.inner.seen[1].body != b""
    rig = Rig(flavour, refused, ok())
    await rig.send("POST", files={"upload": ("a.txt", b"hello multipart")})
    assert rig.inner.seen[0].body == rig.inner.seen[1].body
    assert b"hello multipart" in rig.inner.seen[1].body


@pytest.mark.parametrize("offset", [0, 1000])
async def test_seekable_file_is_rewound_and_resent_whole(offset: int) -> None:
    # httpx.AsyncClient refuses a sync file body, so this is the sync client's case
    content = b"".join(b"line %05d\n" % i for i in range(20_000))  # > one 64 KiB read chunk
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    rig = Rig("sync", Step(maybe, read=1), maybe, ok())  # first attempt reads one chunk only
    with tempfile.TemporaryFile() as raw:
        raw.write(content)
        raw.flush()
        raw.seek(offset)
        with httpx.Client(transport=rig.transport) as client:
            response = client.put(URL, content=raw)
        assert response.status_code == 200
    assert rig.attempts == 3
    assert 0 < len(rig.inner.seen[0].body) < len(content) - offset
    assert rig.inner.seen[1].body == rig.inner.seen[2].body == content[offset:]


async def test_seekable_file_under_the_async_flavour() -> None:
    # handed straight to handle_async_request (an inner that reads sync bodies itself)
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig("async", refused, ok())
    with tempfile.TemporaryFile() as raw:
        raw.write(b"0123456789" * 1000)
        raw.seek(0)
        request = httpx.Request("POST", URL, content=raw)
        response = await rig.transport.handle_async_request(request)
    assert response.status_code == 200 and rig.attempts == 2
    assert rig.inner.seen[0].body == rig.inner.seen[1].body == b"0123456789" * 1000


def _one_shot(flavour: str) -> Any:
    chunks = [b"alpha-", b"beta-", b"gamma"]
    if flavour == "async":
        async def agen() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
        return agen()

    def gen() -> Iterator[bytes]:
        yield from chunks
    return gen()


@FLAVOURS
async def test_one_shot_body_is_resent_when_nothing_was_read(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, Step(refused, read=False), ok())
    response = await rig.send("POST", content=_one_shot(flavour))
    assert response.status_code == 200 and rig.attempts == 2
    assert rig.inner.seen[1].body == b"alpha-beta-gamma"


@FLAVOURS
@pytest.mark.parametrize("read", [1, True], ids=["one_chunk", "all"])
async def test_one_shot_body_is_not_resent_once_read(read: bool | int, flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 1)
    rig = Rig(flavour, Step(refused, read=read), ok())
    err = await rig.fail("POST", content=_one_shot(flavour))
    assert rig.attempts == 1
    assert rig.inner.seen[0].body.startswith(b"alpha-")
    assert isinstance(err, StreamResetError)
    failure = failure_of(err)
    assert failure is not None
    assert failure.kind == "body_not_replayable" and failure.extra["cause"] == "refused_stream"
    assert "one-shot" in str(err) and "replayable" in str(err)


@FLAVOURS
async def test_one_shot_body_after_a_maybe_failure_keeps_its_kind(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    rig = Rig(flavour, Step(maybe, read=1), ok())
    err = await rig.fail("PUT", content=_one_shot(flavour))
    assert rig.attempts == 1
    failure = failure_of(err)
    assert failure is not None and failure.kind == "stream_reset"
    assert "one-shot" in str(err)


@FLAVOURS
async def test_one_shot_body_with_a_retriable_status_returns_the_response(flavour: str) -> None:
    rig = Rig(flavour, ok(503, **{"Retry-After": "1"}), ok())
    response = await rig.send("PUT", content=_one_shot(flavour))
    assert response.status_code == 503 and rig.attempts == 1


# ---------------------------------------------------------------------- idempotency keys

@FLAVOURS
async def test_automatic_keys_only_on_post_and_patch(flavour: str) -> None:
    rig = Rig(flavour, then=ok(), policy=RetryPolicy(idempotency_keys=True))
    for method in METHODS:
        await rig.send(method, content=b"{}")
    keys = {s.method: s.headers.get("idempotency-key") for s in rig.inner.seen}
    for method in ("GET", "HEAD", "PUT", "DELETE"):
        assert keys[method] is None
    for method in ("POST", "PATCH"):
        assert keys[method] is not None and KEY_RE.match(keys[method])
    assert keys["POST"] != keys["PATCH"]


@FLAVOURS
async def test_automatic_key_is_the_same_on_every_attempt_and_new_per_request(
        flavour: str) -> None:
    maybe = Failure("connection_lost", "maybe", detail="EOF")
    rig = Rig(flavour, maybe, maybe, ok(), maybe, ok(), policy=RetryPolicy(idempotency_keys=True))
    assert (await rig.send("POST", content=b"charge")).status_code == 200
    assert (await rig.send("POST", content=b"charge")).status_code == 200
    assert rig.attempts == 5  # keyed POSTs are retried after a "maybe"
    keys = [s.headers["idempotency-key"] for s in rig.inner.seen]
    assert keys[0] == keys[1] == keys[2] and keys[3] == keys[4]
    assert keys[0] != keys[3]
    assert all(KEY_RE.match(k) for k in keys)
    assert [s.body for s in rig.inner.seen] == [b"charge"] * 5


async def test_automatic_keys_are_random() -> None:
    rig = Rig("async", then=ok(), policy=RetryPolicy(idempotency_keys=True))
    async with httpx.AsyncClient(transport=rig.transport) as client:
        for _ in range(200):
            await client.post(URL, content=b"x")
    keys = [s.headers["idempotency-key"].strip('"') for s in rig.inner.seen]
    assert len(set(keys)) == 200
    # 128 bits: every hex position takes many values (a counter or a timestamp would not)
    for position in range(32):
        assert len({k[position] for k in keys}) >= 8


@FLAVOURS
async def test_a_callers_key_is_never_replaced(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    rig = Rig(flavour, maybe, ok(), policy=RetryPolicy(idempotency_keys=True))
    await rig.send("POST", content=b"x", headers={"idempotency-key": '"mine-1"'})
    assert [s.headers.get_list("idempotency-key") for s in rig.inner.seen] == [['"mine-1"']] * 2


@FLAVOURS
async def test_keyed_post_retried_unkeyed_not(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x8, 1)
    keyed = Rig(flavour, maybe, ok(), policy=RetryPolicy(idempotency_keys=True))
    assert (await keyed.send("POST", content=b"x")).status_code == 200 and keyed.attempts == 2
    plain = Rig(flavour, maybe, ok())
    err = await plain.fail("POST", content=b"x")
    assert plain.attempts == 1
    assert "Idempotency-Key" in str(err) and "idempotency_keys=True" in str(err)
    assert "idempotency-key" not in plain.inner.seen[0].headers


@FLAVOURS
async def test_custom_key_header(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    policy = RetryPolicy(idempotency_keys=True, key_header="X-Request-Key")
    rig = Rig(flavour, maybe, ok(), policy=policy)
    assert (await rig.send("POST", content=b"x")).status_code == 200 and rig.attempts == 2
    assert rig.inner.seen[0].headers["x-request-key"] == rig.inner.seen[1].headers["x-request-key"]
    assert "idempotency-key" not in rig.inner.seen[0].headers


# ---------------------------------------------------------------------- waits, hook, events

async def test_set_testing_removes_waits() -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    # base == cap with decorrelated jitter: every wait is exactly 1 s, 2 s in all when slept
    policy = RetryPolicy(jitter="decorrelated", backoff_base=1.0, backoff_cap=1.0)
    rig = Rig("async", maybe, maybe, ok(), policy=policy)
    started = time.monotonic()
    assert (await rig.send("GET")).status_code == 200
    assert time.monotonic() - started < 0.5
    assert rig.attempts == 3
    assert [i.delay for i in rig.infos] == [1.0, 1.0]  # the waits were decided, not slept


@FLAVOURS
async def test_waits_are_real_without_testing(flavour: str, real_waits: None) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    policy = RetryPolicy(jitter="decorrelated", backoff_base=0.05, backoff_cap=0.05)
    rig = Rig(flavour, maybe, maybe, ok(), policy=policy)
    started = time.monotonic()
    assert (await rig.send("GET")).status_code == 200
    assert time.monotonic() - started >= 0.1


@FLAVOURS
async def test_seed_makes_the_jitter_reproducible(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 1)
    runs = []
    for _ in range(2):
        rig = Rig(flavour, maybe, maybe, ok(), seed=1234)
        await rig.send("GET")
        runs.append([i.delay for i in rig.infos])
    assert runs[0] == runs[1] and len(runs[0]) == 2


@FLAVOURS
async def test_on_retry_hook_and_events(flavour: str) -> None:
    refused = Failure("refused_stream", "no", 0x7, 3)
    maybe = Failure("stream_reset", "maybe", 0x2, 5)
    rig = Rig(flavour, refused, ok(503, **{"Retry-After": "1"}), maybe, ok(),
              policy=RetryPolicy(attempts=4))
    response = await rig.send("PUT", content=b"x")
    assert response.status_code == 200
    assert [(i.attempt, i.reason, i.status) for i in rig.infos] == [
        (1, "refused-stream", None), (2, "retriable-status-codes", 503), (3, "reset", None)]
    assert rig.infos[0].failure is not None and rig.infos[0].failure.stream_id == 3
    assert all(i.request.method == "PUT" for i in rig.infos)
    attempts = rig.events.since(name="retry.attempt")
    assert [e.data["kind"] for e in attempts] == ["refused_stream", "status_503", "stream_reset"]
    assert [e.data["code"] for e in attempts] == ["REFUSED_STREAM", None, "INTERNAL_ERROR"]
    assert all(e.data["origin"] == ORIGIN and e.data["method"] == "PUT" for e in attempts)

    err = await Rig(flavour, maybe).fail("POST")  # a fresh rig: its own events
    assert "Not retried" in str(err)


@FLAVOURS
async def test_gave_up_event(flavour: str) -> None:
    maybe = Failure("stream_reset", "maybe", 0x2, 5)
    rig = Rig(flavour, maybe)
    await rig.fail("POST")
    [event] = rig.events.since(name="retry.gave_up")
    assert event.data["kind"] == "stream_reset" and event.data["attempts"] == 1
    assert event.data["method"] == "POST" and "Idempotency-Key" in event.data["reason"]


def test_events_shared_with_the_inner_transport() -> None:
    log = EventLog()
    inner = FakeAsync(events=log)
    assert RetryTransport(inner).events is log  # even while the log is still empty
    own = EventLog()
    assert RetryTransport(inner, events=own).events is own
    assert isinstance(RetryTransport(FakeAsync()).events, EventLog)


async def test_events_shared_with_h2guards_own_transport() -> None:
    inner = h2guard.AsyncHTTPTransport()
    transport = RetryTransport(inner)
    assert transport.events is inner.events
    await transport.aclose()


# ---------------------------------------------------------------------- flavours and clients

async def test_flavour_mismatch_is_a_type_error() -> None:
    request = httpx.Request("GET", URL)
    with pytest.raises(TypeError, match="sync"):
        await RetryTransport(FakeSync()).handle_async_request(request)
    with pytest.raises(TypeError, match="async"):
        RetryTransport(FakeAsync()).handle_request(request)


async def test_closing_closes_the_inner() -> None:
    async_inner, sync_inner = FakeAsync(), FakeSync()
    await RetryTransport(async_inner).aclose()
    RetryTransport(sync_inner).close()
    assert async_inner.closed and sync_inner.closed


async def test_h2guard_async_client_constructs_without_network() -> None:
    policy = RetryPolicy(attempts=5)
    infos: list[RetryInfo] = []
    client = h2guard.AsyncClient(base_url="https://api.test", policy=policy,
                                 on_retry=infos.append)
    try:
        assert isinstance(client, httpx.AsyncClient)
        assert isinstance(client.events, EventLog)
        assert isinstance(client.retry, RetryTransport)
        assert client.retry.policy is policy and client.retry.on_retry is not None
        assert client.retry.events is client.events
        assert isinstance(client.retry.inner, h2guard.AsyncHTTPTransport)
        assert client.retry.inner.events is client.events
        assert client.base_url == httpx.URL("https://api.test")
    finally:
        await client.aclose()
    assert h2guard.AsyncClient().retry.policy == RetryPolicy()


def test_h2guard_sync_client_constructs_without_network() -> None:
    log = EventLog()
    client = h2guard.Client(events=log, timeout=3.0)
    try:
        assert isinstance(client, httpx.Client)
        assert client.events is log and client.retry.events is log
        assert isinstance(client.retry, RetryTransport)
        assert isinstance(client.retry.inner, h2guard.HTTPTransport)
        assert client.timeout == httpx.Timeout(3.0)
    finally:
        client.close()


@pytest.mark.parametrize("cls", [h2guard.AsyncClient, h2guard.Client])
def test_h2guard_clients_refuse_a_transport(cls: type[Any]) -> None:
    with pytest.raises(TypeError, match="RetryTransport"):
        cls(transport=httpx.MockTransport(lambda r: httpx.Response(200)))


def test_exception_types_for_kinds_are_httpx_families() -> None:
    # the classes the matrix test expects raised, by kind: catching httpx's own types works
    assert issubclass(StreamResetError, httpx.RemoteProtocolError)
    assert issubclass(GoAwayError, httpx.RemoteProtocolError)
    assert issubclass(ConnectionLostError, httpx.RemoteProtocolError)
    assert issubclass(H2ConnectError, httpx.ConnectError)
    assert issubclass(H2ReadTimeout, httpx.ReadTimeout)
