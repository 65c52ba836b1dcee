"""The two pure rules under the client's request path: may a failed attempt be sent again
(:mod:`h2guard.resend`, used by both retry loops), and the connection's one timer
(:mod:`h2guard.wire.liveness`: read deadlines and the PING watchdog), fed numbers only."""

from __future__ import annotations

import pytest

from h2guard.errors import Failure
from h2guard.resend import why_not_resend
from h2guard.wire.liveness import Liveness


def _failure(kind: str, processed: str) -> Failure:
    return Failure(kind, processed, None, 1, None, "http://x:80", "")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- resend


@pytest.mark.parametrize("kind", ["refused_stream", "goaway_unprocessed", "connect"])
def test_what_was_never_processed_may_go_again_whatever_the_method(kind: str) -> None:
    assert why_not_resend(_failure(kind, "no"), safe=False, body_resendable=True) is None


@pytest.mark.parametrize("processed", ["maybe", "yes"])
def test_what_may_have_run_goes_again_only_when_safe(processed: str) -> None:
    failure = _failure("stream_reset", processed)
    assert why_not_resend(failure, safe=False, body_resendable=True) == "maybe_processed"
    assert why_not_resend(failure, safe=True, body_resendable=True) is None


def test_an_untrusted_refused_stream_counts_as_maybe_processed() -> None:
    failure = _failure("refused_stream", "no")
    assert why_not_resend(failure, safe=False, body_resendable=True,
                          trust_refused_stream=False) == "maybe_processed"
    assert why_not_resend(failure, safe=True, body_resendable=True,
                          trust_refused_stream=False) is None
    # GOAWAY's proof is not affected by the REFUSED_STREAM switch
    assert why_not_resend(_failure("goaway_unprocessed", "no"), safe=False,
                          body_resendable=True, trust_refused_stream=False) is None


def test_a_one_shot_body_already_taken_cannot_go_again_even_if_unprocessed() -> None:
    assert why_not_resend(_failure("refused_stream", "no"), safe=False,
                          body_resendable=False) == "one_shot_body"
    # safety is judged first: the caller hears the weightier reason
    assert why_not_resend(_failure("stream_reset", "maybe"), safe=False,
                          body_resendable=False) == "maybe_processed"


# ---------------------------------------------------------------------- liveness


def test_deadlines_give_one_wake_up_at_the_earliest_and_expire_in_order() -> None:
    lv = Liveness(ping_interval=0, ping_timeout=5)
    assert lv.due(0.0, waiting=False) is None
    assert lv.watch(1, 30.0) is True  # the first deadline: arm
    assert lv.watch(3, 31.0) is False  # later than the armed one: no timer work
    assert lv.watch(5, 10.0) is True  # earlier: re-arm sooner
    assert lv.due(0.0, waiting=True) == 10.0
    verdict = lv.expire(30.5, 0.0, waiting=True)
    assert verdict.expired == [1, 5]
    assert not verdict.ping and not verdict.dead
    assert lv.due(0.0, waiting=True) == 31.0


def test_an_answered_stream_never_expires() -> None:
    lv = Liveness(ping_interval=0, ping_timeout=5)
    lv.watch(1, 5.0)
    lv.answered(1)
    assert lv.expire(6.0, 0.0, waiting=True).expired == []
    assert lv.due(0.0, waiting=True) is None  # nothing left to watch


def test_an_early_wake_up_expires_nothing_and_points_at_the_real_deadline() -> None:
    lv = Liveness(ping_interval=0, ping_timeout=5)
    lv.watch(1, 5.0)
    lv.watch(3, 8.0)
    lv.answered(1)  # the floor (5.0) is now stale: the timer wakes once for nothing
    assert lv.expire(5.0, 0.0, waiting=True).expired == []
    assert lv.due(0.0, waiting=True) == 8.0


def test_a_silent_connection_with_requests_waiting_gets_a_ping_then_is_dead() -> None:
    lv = Liveness(ping_interval=10, ping_timeout=5)
    assert lv.due(0.0, waiting=False) is None  # nobody waits: no watchdog
    assert lv.due(0.0, waiting=True) == 10.0
    assert not lv.expire(9.0, 0.0, waiting=True).ping  # frames came recently enough
    verdict = lv.expire(10.0, 0.0, waiting=True)
    assert verdict.ping and not verdict.dead
    assert lv.due(0.0, waiting=True) == 15.0  # the PING's deadline
    assert lv.expire(15.0, 0.0, waiting=True).dead


def test_a_pong_or_traffic_keeps_the_connection_alive() -> None:
    lv = Liveness(ping_interval=10, ping_timeout=5)
    assert lv.expire(10.0, 0.0, waiting=True).ping
    lv.pong()
    assert lv.due(12.0, waiting=True) == 22.0  # counted from the last frame again
    assert not lv.expire(14.0, 12.0, waiting=True).ping


def test_the_watchdog_stands_down_when_nobody_waits() -> None:
    lv = Liveness(ping_interval=10, ping_timeout=5)
    assert lv.expire(10.0, 0.0, waiting=True).ping
    assert not lv.expire(11.0, 0.0, waiting=False).dead  # the requests finished meanwhile
    assert lv.ping_deadline is None
