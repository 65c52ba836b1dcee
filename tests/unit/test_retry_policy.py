"""The retry decision without I/O: RetryPolicy, backoff, Retry-After, RetryBudget, classify().

docs/facts.md §1 (what is safe to resend), §5 (backoff and budget anchors). The transport-level
behaviour (attempt counts, raised errors, bodies, keys) is in test_retry_transport.py.
"""

from __future__ import annotations

import email.utils
import math
import random

import h2.errors
import h2.events
import httpcore
import httpx
import pytest

from h2guard.errors import Failure, FailureKind, Processed, StreamResetError, attach
from h2guard.retry import RETRY_ON, RetryBudget, RetryPolicy, classify, parse_retry_after

# ---------------------------------------------------------------------- validation


def test_default_policy_is_valid_and_conservative() -> None:
    policy = RetryPolicy()
    assert policy.retry_on <= RETRY_ON
    assert "5xx" not in policy.retry_on and "gateway-error" not in policy.retry_on
    assert policy.idempotency_keys is False
    assert policy.retriable_status_codes == {429, 503}
    assert "POST" not in policy.idempotent_methods and "PATCH" not in policy.idempotent_methods


def test_unknown_retry_on_value_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="refused_stream") as info:
        RetryPolicy(retry_on=frozenset({"refused-stream", "refused_stream"}))
    message = str(info.value)
    for name in RETRY_ON:
        assert name in message


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"attempts": -1},
                                    {"unprocessed_attempts": 0}])
def test_attempts_below_one_are_rejected(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_backoff_base_above_cap_is_rejected() -> None:
    with pytest.raises(ValueError, match="backoff_base <= backoff_cap"):
        RetryPolicy(backoff_base=3.0, backoff_cap=2.0)
    with pytest.raises(ValueError, match="backoff_base"):
        RetryPolicy(backoff_base=-0.1)
    RetryPolicy(backoff_base=2.0, backoff_cap=2.0)  # equal is fine


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"backoff_multiplier": 0.5}, "backoff_multiplier"),
    ({"jitter": "equal"}, "jitter"),
    ({"budget_ratio": 1.5}, "budget_ratio"),
    ({"budget_reserve": -1.0}, "budget_reserve"),
    ({"deadline": 0.0}, "deadline"),
    ({"attempt_timeout": -1.0}, "attempt_timeout"),
])
def test_other_validation_errors_name_the_field(kwargs: dict[str, object], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_sets_are_normalised() -> None:
    policy = RetryPolicy(retry_on={"reset"},  # type: ignore[arg-type]
                         idempotent_methods=frozenset({"get", "Put"}),
                         key_methods=frozenset({"post"}))
    assert isinstance(policy.retry_on, frozenset)
    assert policy.idempotent_methods == {"GET", "PUT"}
    assert policy.key_methods == {"POST"}


# ---------------------------------------------------------------------- the §1 matrix, as data

_ROWS: list[tuple[Failure, str, bool]] = [
    # failure, retry_on condition, needs an idempotent method or a key
    (Failure("refused_stream", "no", 0x7, 1), "refused-stream", False),
    (Failure("goaway_unprocessed", "no", 0x0, 7, 5), "reset-before-request", False),
    (Failure("http_1_1_required", "no", 0xD, 1), "reset-before-request", False),
    (Failure("connect", "no", detail="refused"), "connect-failure", False),
    (Failure("goaway", "maybe", 0x0, 3, 5), "reset", True),
    (Failure("connection_lost", "maybe", detail="EOF"), "reset", True),
    (Failure("timeout", "maybe"), "reset", True),
    (Failure("ping_timeout", "maybe"), "reset", True),
    (Failure("write", "maybe"), "reset", True),
    (Failure("stream_reset", "maybe", 0x8, 1), "reset", True),
    (Failure("stream_reset", "maybe", 0x2, 1), "reset", True),
    (Failure("stream_reset", "maybe", 0x1, 1), "reset", True),
    (Failure("stream_reset", "maybe", 0x0, 1), "reset", True),
    (Failure("stream_reset", "maybe", 0xB, 1), "reset", True),
]


@pytest.mark.parametrize(("failure", "condition", "needs_safety"), _ROWS,
                         ids=[f"{f.kind}-{f.code_name}" for f, _, _ in _ROWS])
def test_condition_and_safety_follow_the_matrix(failure: Failure, condition: str,
                                                needs_safety: bool) -> None:
    policy = RetryPolicy()
    assert policy.condition(failure) == condition
    assert policy.needs_safety(failure) is needs_safety
    # switching that one condition off switches the retry off
    narrowed = RetryPolicy(retry_on=RETRY_ON - {condition})
    assert narrowed.condition(failure) is None


def test_unprocessed_failures_get_their_own_attempt_bound() -> None:
    policy = RetryPolicy(attempts=3, unprocessed_attempts=7)
    assert policy.max_attempts(Failure("refused_stream", "no", 7)) == 7
    assert policy.max_attempts(Failure("goaway_unprocessed", "no", 0)) == 7
    assert policy.max_attempts(Failure("http_1_1_required", "no", 0xD)) == 7
    # "connect" is unprocessed too, but it is not a free protocol-proven move
    assert policy.max_attempts(Failure("connect", "no")) == 3
    assert policy.max_attempts(Failure("stream_reset", "maybe", 2)) == 3
    assert policy.max_attempts(None) == 3


def test_pool_timeout_and_body_errors_are_no_retry_condition() -> None:
    policy = RetryPolicy(retry_on=RETRY_ON)  # everything switched on
    for kind in ("pool_timeout", "body_not_replayable", "retry_budget", "deadline"):
        failure = Failure(kind, "no")
        assert policy.condition(failure) is None, kind


@pytest.mark.parametrize(("retry_on", "status", "expected"), [
    ({"retriable-status-codes"}, 429, "retriable-status-codes"),
    ({"retriable-status-codes"}, 503, "retriable-status-codes"),
    ({"retriable-status-codes"}, 502, None),
    ({"retriable-status-codes"}, 200, None),
    ({"gateway-error"}, 502, "gateway-error"),
    ({"gateway-error"}, 504, "gateway-error"),
    ({"gateway-error"}, 500, None),
    ({"5xx"}, 500, "5xx"),
    ({"5xx"}, 599, "5xx"),
    ({"5xx"}, 429, None),
    ({"refused-stream"}, 503, None),
])
def test_status_conditions(retry_on: set[str], status: int, expected: str | None) -> None:
    policy = RetryPolicy(retry_on=frozenset(retry_on))
    assert policy.condition(None, status) == expected
    assert policy.needs_safety(None) is True  # the server processed it: method/key decide


def test_condition_without_failure_or_status_is_none() -> None:
    assert RetryPolicy().condition(None, None) is None


def test_budget_is_spent_except_by_goaway_drains_and_http11_moves() -> None:
    policy = RetryPolicy()
    assert policy.spends_budget(Failure("refused_stream", "no", 7)) is True
    assert policy.spends_budget(Failure("stream_reset", "maybe", 2)) is True
    assert policy.spends_budget(None) is True
    assert policy.spends_budget(Failure("goaway_unprocessed", "no", 0)) is False
    assert policy.spends_budget(Failure("http_1_1_required", "no", 0xD)) is False
    assert RetryPolicy(budget=False).spends_budget(Failure("refused_stream", "no", 7)) is False


# ---------------------------------------------------------------------- backoff

_DRAWS = 20_000


def _ks_uniform(samples: list[float], low: float, high: float) -> float:
    """Kolmogorov-Smirnov statistic: the largest gap between the empirical CDF and the
    uniform CDF on [low, high]."""
    ordered = sorted(samples)
    n = len(ordered)
    worst = 0.0
    for i, x in enumerate(ordered):
        cdf = (x - low) / (high - low)
        worst = max(worst, abs(cdf - i / n), abs(cdf - (i + 1) / n))
    return worst


@pytest.mark.parametrize("retry", [1, 2, 3, 5])
def test_full_jitter_is_uniform_below_the_exponential_ceiling(retry: int) -> None:
    policy = RetryPolicy(backoff_base=0.05, backoff_multiplier=2.0, backoff_cap=0.5)
    ceiling = min(0.5, 0.05 * 2.0 ** (retry - 1))
    rng = random.Random(20240601 + retry)
    draws = [policy.backoff(retry, rng) for _ in range(_DRAWS)]
    assert all(0.0 <= d <= ceiling for d in draws)
    # the draws really reach the ceiling (so it is not a lower one, nor a fixed delay)
    assert max(draws) > 0.999 * ceiling and min(draws) < 0.001 * ceiling
    # Mean of U(0, c) is c/2 with standard deviation c/sqrt(12); the sample mean of n draws has
    # standard error c/sqrt(12 n) = 0.00204 c for n = 20,000. 0.0125 c is ~6 standard errors:
    # never flaky (and the rng is seeded anyway), yet far tighter than any plausible bug
    # (e.g. "equal jitter", c/2 + U(0, c/2), has mean 0.75 c).
    mean = sum(draws) / len(draws)
    assert abs(mean - ceiling / 2) < 0.0125 * ceiling
    # KS: the 0.1% critical value for n = 20,000 is 1.95 / sqrt(n) = 0.0138; 0.02 has margin.
    assert _ks_uniform(draws, 0.0, ceiling) < 0.02


def test_full_jitter_ceiling_grows_then_stops_at_the_cap() -> None:
    policy = RetryPolicy(backoff_base=0.1, backoff_multiplier=3.0, backoff_cap=1.0)
    rng = random.Random(7)
    tops = [max(policy.backoff(retry, rng) for _ in range(2000)) for retry in range(1, 8)]
    expected = [min(1.0, 0.1 * 3.0 ** (n - 1)) for n in range(1, 8)]  # .1 .3 .9 1 1 1 1
    for top, ceiling in zip(tops, expected, strict=True):
        assert ceiling * 0.99 < top <= ceiling
    assert max(policy.backoff(60, rng) for _ in range(1000)) <= 1.0  # no overflow surprises


def test_backoff_with_zero_base_never_waits() -> None:
    policy = RetryPolicy(backoff_base=0.0)
    rng = random.Random(1)
    assert {policy.backoff(n, rng) for n in range(1, 6)} == {0.0}


def test_decorrelated_jitter_stays_within_base_three_times_previous_and_cap() -> None:
    base, cap = 0.05, 1.0
    policy = RetryPolicy(jitter="decorrelated", backoff_base=base, backoff_cap=cap)
    rng = random.Random(99)
    previous = 0.0
    seen_cap = False
    for retry in range(1, 5001):
        wait = policy.backoff(retry, rng, previous)
        assert base <= wait <= cap
        assert wait <= max(base, 3 * previous) + 1e-12
        seen_cap = seen_cap or wait == cap
        previous = wait
    assert seen_cap  # the cap is reached, and holds
    # the first retry (no previous delay) waits exactly the base
    assert policy.backoff(1, random.Random(0), 0.0) == base


def test_decorrelated_jitter_spreads_between_base_and_three_times_previous() -> None:
    policy = RetryPolicy(jitter="decorrelated", backoff_base=0.01, backoff_cap=10.0)
    rng = random.Random(5)
    draws = [policy.backoff(2, rng, previous=0.1) for _ in range(_DRAWS)]
    assert min(draws) >= 0.01 and max(draws) <= 0.3
    assert _ks_uniform(draws, 0.01, 0.3) < 0.02


def test_delay_moves_goaway_unprocessed_at_once_the_first_time() -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=0.5)
    rng = random.Random(3)
    drain = Failure("goaway_unprocessed", "no", 0, 9, 7)
    assert policy.delay(drain, 1, rng) == 0.0
    # a second drain in a row is no longer free of backoff
    later = [policy.delay(drain, 2, rng) for _ in range(200)]
    assert all(d is not None and 0 <= d <= 0.5 for d in later) and max(
        d for d in later if d is not None) > 0


@pytest.mark.parametrize("kind", ["stream_reset", "goaway"])
def test_enhance_your_calm_waits_at_least_calm_delay(kind: FailureKind) -> None:
    policy = RetryPolicy(calm_delay=1.5)
    rng = random.Random(11)
    calm = Failure(kind, "maybe", 0xB, 1)
    other = Failure(kind, "maybe", 0x2, 1)
    assert all((policy.delay(calm, n, rng) or 0) >= 1.5 for n in range(1, 50))
    assert all((policy.delay(other, n, rng) or 99) <= policy.backoff_cap for n in range(1, 50))


def test_delay_honours_retry_after_up_to_the_cap() -> None:
    policy = RetryPolicy(retry_after_cap=10.0)
    rng = random.Random(2)
    assert policy.delay(None, 1, rng, retry_after=4.0) == pytest.approx(4.0, abs=0.05)
    assert (policy.delay(None, 1, rng, retry_after=4.0) or 0) >= 4.0
    assert policy.delay(None, 1, rng, retry_after=10.0) is not None
    assert policy.delay(None, 1, rng, retry_after=10.5) is None
    # a Retry-After of 0 does not cancel the backoff
    waits = [policy.delay(None, 3, rng, retry_after=0.0) for _ in range(100)]
    assert max(w for w in waits if w is not None) > 0


# ---------------------------------------------------------------------- Retry-After

NOW = 1_700_000_000.0  # a fixed "now": 2023-11-14T22:13:20Z


@pytest.mark.parametrize(("value", "expected"), [
    ("120", 120.0),
    ("0", 0.0),
    (" 7 ", 7.0),
    (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
    (email.utils.formatdate(NOW + 3600, usegmt=True), 3600.0),
    (email.utils.formatdate(NOW + 30, usegmt=False), 30.0),  # "+0000" instead of "GMT"
    (email.utils.formatdate(NOW - 60, usegmt=True), 0.0),  # in the past: now, never negative
    ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),  # RFC 9110's example date
    ("soon", None),
    ("1.5", None),  # delta-seconds is an integer
    ("-5", None),
    ("", None),
    (None, None),
    ("\u00b2", None),  # "²" is a digit to str.isdigit(), a latin-1 header byte (0xB2)
])
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_date_uses_the_clock_by_default() -> None:
    import time

    value = email.utils.formatdate(time.time() + 100, usegmt=True)
    parsed = parse_retry_after(value)
    assert parsed is not None and 97.0 <= parsed <= 100.0


# ---------------------------------------------------------------------- RetryBudget


def test_budget_starts_full_and_spends_one_token_per_retry() -> None:
    budget = RetryBudget(ratio=0.25, reserve=3)
    assert budget.tokens == 3
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]
    assert budget.tokens == 0


def test_budget_deposits_ratio_per_request_and_is_capped_at_reserve() -> None:
    budget = RetryBudget(ratio=0.25, reserve=2)
    for _ in range(100):
        budget.deposit()
    assert budget.tokens == 2  # capped
    assert budget.withdraw() and budget.withdraw() and not budget.withdraw()
    for _ in range(3):
        budget.deposit()
    assert budget.tokens == pytest.approx(0.75)
    assert not budget.withdraw()  # less than one token
    budget.deposit()
    assert budget.withdraw()  # four requests bought one retry


def test_budget_ratio_holds_in_the_long_run() -> None:
    # One retry per 1/ratio logical requests. (0.1 added ten times is 0.9999999999999999 in
    # binary floating point, so the first retry after a drain comes on the 11th request; the
    # remainder carries over, so the long-run rate still matches the ratio to within one.)
    budget = RetryBudget(ratio=0.1, reserve=5)
    while budget.withdraw():
        pass
    retries = 0
    for _ in range(1000):
        budget.deposit()
        retries += budget.withdraw()
    assert 99 <= retries <= 100


def test_budget_with_zero_reserve_never_allows_a_retry() -> None:
    budget = RetryBudget(ratio=0.5, reserve=0)
    for _ in range(10):
        budget.deposit()
        assert not budget.withdraw()


def test_budget_is_thread_safe() -> None:
    import threading

    budget = RetryBudget(ratio=0.0, reserve=1000)
    granted: list[int] = []

    def spend() -> None:
        granted.append(sum(budget.withdraw() for _ in range(400)))

    threads = [threading.Thread(target=spend) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 1000  # never more than the balance, whatever the interleaving
    assert budget.tokens == 0


# ---------------------------------------------------------------------- classify()


def _chained(event: object, text: str | None = None) -> httpx.RemoteProtocolError:
    """What httpx's transport raises: map_httpcore_exceptions does
    ``raise httpx.RemoteProtocolError(str(exc)) from exc`` over httpcore's
    ``RemoteProtocolError(event)``."""
    try:
        try:
            raise httpcore.RemoteProtocolError(event)
        except httpcore.RemoteProtocolError as low:
            raise httpx.RemoteProtocolError(text if text is not None else str(low)) from low
    except httpx.RemoteProtocolError as high:
        return high


def _reset_event(stream_id: int, code: int) -> h2.events.StreamReset:
    # h2 4.x events are keyword-only dataclasses (StreamReset() without stream_id is a
    # TypeError); h2.errors turns a known number into ErrorCodes and keeps an unknown one.
    return h2.events.StreamReset(stream_id=stream_id,
                                 error_code=h2.errors._error_code_from_int(code))


def _goaway_event(code: int, last_stream_id: int) -> h2.events.ConnectionTerminated:
    event = h2.events.ConnectionTerminated()
    event.error_code = h2.errors._error_code_from_int(code)
    event.last_stream_id = last_stream_id
    return event


# what Python < 3.11 prints for an IntEnum, and what the task brief quotes
_OLD_STYLE = "<StreamReset stream_id:1, error_code:ErrorCodes.REFUSED_STREAM, remote_reset:True>"


def test_classify_refused_stream_from_the_httpcore_chain() -> None:
    event = _reset_event(1, h2.errors.ErrorCodes.REFUSED_STREAM)
    exc = _chained(event, _OLD_STYLE)
    assert isinstance(exc.__cause__, httpcore.RemoteProtocolError)
    assert exc.__cause__.args[0] is event
    failure = classify(exc, origin="https://api.test:443")
    assert failure is not None
    assert (failure.kind, failure.processed, failure.code, failure.stream_id) == \
        ("refused_stream", "no", 0x7, 1)
    assert failure.origin == "https://api.test:443"


@pytest.mark.parametrize("text", [
    _OLD_STYLE,
    "<StreamReset stream_id:1, error_code:7, remote_reset:True>",  # Python 3.11+ IntEnum str
    str(_reset_event(1, 7)),  # whatever this h2 prints
])
def test_classify_refused_stream_from_the_text_alone(text: str) -> None:
    failure = classify(httpx.RemoteProtocolError(text))
    assert failure is not None
    assert (failure.kind, failure.processed, failure.code, failure.stream_id) == \
        ("refused_stream", "no", 0x7, 1)


@pytest.mark.parametrize(("code", "kind", "processed"), [
    (0x0, "stream_reset", "maybe"),
    (0x1, "stream_reset", "maybe"),
    (0x2, "stream_reset", "maybe"),
    (0x8, "stream_reset", "maybe"),
    (0xB, "stream_reset", "maybe"),
    (0xD, "http_1_1_required", "no"),
    (0x1F, "stream_reset", "maybe"),  # unknown: like INTERNAL_ERROR, may have been processed
])
@pytest.mark.parametrize("chained", [True, False], ids=["chain", "text"])
def test_classify_other_resets(code: int, kind: FailureKind, processed: Processed,
                               chained: bool) -> None:
    event = _reset_event(5, code)
    exc = _chained(event) if chained else httpx.RemoteProtocolError(str(event))
    failure = classify(exc)
    assert failure is not None
    assert (failure.kind, failure.processed, failure.code, failure.stream_id) == \
        (kind, processed, code, 5)


def test_classify_unknown_error_code_name_in_text_is_internal_error() -> None:
    text = "<StreamReset stream_id:3, error_code:ErrorCodes.SOMETHING_NEW, remote_reset:True>"
    failure = classify(httpx.RemoteProtocolError(text))
    assert failure is not None
    assert (failure.kind, failure.processed, failure.code) == ("stream_reset", "maybe", 0x2)


@pytest.mark.parametrize("chained", [True, False], ids=["chain", "text"])
def test_classify_connection_terminated_is_a_maybe_goaway(chained: bool) -> None:
    event = _goaway_event(0x0, 5)
    exc = _chained(event) if chained else httpx.RemoteProtocolError(str(event))
    failure = classify(exc)
    assert failure is not None
    assert (failure.kind, failure.processed, failure.code, failure.last_stream_id) == \
        ("goaway", "maybe", 0x0, 5)
    assert failure.stream_id is None  # last_stream_id is not mistaken for the stream


def test_classify_goaway_enhance_your_calm_keeps_the_code() -> None:
    failure = classify(_chained(_goaway_event(0xB, 41)))
    assert failure is not None
    assert (failure.kind, failure.code, failure.last_stream_id) == ("goaway", 0xB, 41)
    assert (RetryPolicy().delay(failure, 1, random.Random(0)) or 0) >= RetryPolicy().calm_delay


def test_classify_reads_an_event_deeper_in_the_chain() -> None:
    low = _chained(_reset_event(9, 7))
    try:
        raise httpx.TransportError("wrapped again") from low
    except httpx.TransportError as outer:
        failure = classify(outer)
    assert failure is not None and failure.kind == "refused_stream" and failure.stream_id == 9


@pytest.mark.parametrize(("exc", "kind", "processed"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), "connect", "no"),
    (httpx.ConnectTimeout("timed out"), "connect", "no"),
    (httpx.PoolTimeout("no slot"), "pool_timeout", "no"),
    (httpx.ReadTimeout("timed out"), "timeout", "maybe"),
    (TimeoutError(), "timeout", "maybe"),
    (httpx.WriteError("broken pipe"), "write", "maybe"),
    (httpx.WriteTimeout("slow"), "write", "maybe"),
    (httpx.ReadError("connection reset by peer"), "connection_lost", "maybe"),
    (httpx.RemoteProtocolError("Server disconnected without sending a response."),
     "connection_lost", "maybe"),
])
def test_classify_httpx_errors(exc: BaseException, kind: FailureKind,
                               processed: Processed) -> None:
    failure = classify(exc, origin="http://a.test:80")
    assert failure is not None
    assert (failure.kind, failure.processed) == (kind, processed)
    assert failure.origin == "http://a.test:80"
    assert type(exc).__name__ in failure.detail


@pytest.mark.parametrize("exc", [
    httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
    httpx.DecodingError("bad gzip"),
    httpx.TooManyRedirects("loop"),
    ValueError("a bug"),
    KeyError("x"),
])
def test_classify_non_transport_failures_is_none(exc: BaseException) -> None:
    assert classify(exc) is None


def test_classify_own_exceptions_returns_their_record_unchanged() -> None:
    record = Failure("refused_stream", "no", 7, 3, origin="https://b.test:443")
    exc = attach(record)
    assert isinstance(exc, StreamResetError)
    assert classify(exc, origin="https://other.test:443") is record


def test_classify_pool_timeout_is_not_retried_by_default() -> None:
    failure = classify(httpx.PoolTimeout("no slot"))
    assert failure is not None
    assert RetryPolicy().condition(failure) is None
    assert RetryPolicy(retry_on=RETRY_ON).condition(failure) is None


def test_ks_helper_detects_a_non_uniform_sample() -> None:
    # the statistic above would catch e.g. a triangular distribution
    rng = random.Random(0)
    skewed = [math.sqrt(rng.random()) for _ in range(_DRAWS)]
    assert _ks_uniform(skewed, 0.0, 1.0) > 0.2


def test_refused_stream_can_be_distrusted_behind_a_proxy_that_breaks_rfc_9113() -> None:
    from h2guard.errors import Failure
    from h2guard.retry import RetryPolicy

    refused = Failure("refused_stream", "no", 0x7, 1)
    assert not RetryPolicy().needs_safety(refused)  # RFC 9113 §8.7: never processed
    distrust = RetryPolicy(trust_refused_stream=False)
    assert distrust.needs_safety(refused)  # haproxy may say REFUSED after the app ran
    assert distrust.condition(refused) == "refused-stream"  # still a retry_on condition
    assert not distrust.needs_safety(Failure("goaway_unprocessed", "no", 0, 3, 1))
