"""The two pure rules under the client's request path: may a failed attempt be sent again
(:mod:`h2guard.resend`, used by both retry loops), and the connection's one timer
(:mod:`h2guard.wire.liveness`: read deadlines and the PING watchdog), fed numbers only."""

from __future__ import annotations

import pytest

from h2guard.errors import Failure
from h2guard.resend import why_not_resend
from h2guard.wire.core import H2Core
from h2guard.wire.events import PingTimedOut, ResponseTimedOut
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


def test_a_response_means_processed() -> None:
    assert why_not_resend(None, safe=False, body_resendable=True) == "maybe_processed"
    assert why_not_resend(None, safe=True, body_resendable=True) is None
    assert why_not_resend(None, safe=True, body_resendable=False) == "one_shot_body"


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
    assert lv.watch(1, 30.0, 30.0) is True  # the first deadline: arm
    assert lv.watch(3, 31.0, 30.0) is False  # later than the armed one: no timer work
    assert lv.watch(5, 10.0, 5.0) is True  # earlier: re-arm sooner
    assert lv.due(0.0, waiting=True) == 10.0
    verdict = lv.expire(30.5, 0.0, waiting=True)
    assert verdict.expired == [(1, 30.0), (5, 5.0)]
    assert not verdict.ping and not verdict.dead
    assert lv.due(0.0, waiting=True) == 31.0


def test_an_answered_stream_never_expires() -> None:
    lv = Liveness(ping_interval=0, ping_timeout=5)
    lv.watch(1, 5.0)
    lv.answered(1)
    assert lv.expire(6.0, 0.0, waiting=True).expired == []
    lv.watch(3, 9.0)
    lv.keep_only({5})  # stream 3 was reset meanwhile: forgotten, not reported
    assert lv.expire(10.0, 0.0, waiting=True).expired == []
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


# ---------------------------------------------------------------------- the core's timer


def _client_and_server(**client_kw: float) -> tuple[H2Core, H2Core]:
    client = H2Core(client=True, **client_kw)  # type: ignore[arg-type]
    server = H2Core(client=False)
    client.start(0.0)
    server.start(0.0)
    for _ in range(5):
        to_server, to_client = client.data_to_send(), server.data_to_send()
        if to_server:
            server.receive(to_server, 0.0)
        if to_client:
            client.receive(to_client, 0.0)
    return client, server


_GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"t"), (b":path", b"/")]


def _frame_types(data: bytes) -> list[int]:
    types = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        types.append(data[3])
        data = data[9 + length:]
    return types


def test_the_core_reports_an_overdue_response_once_and_not_an_answered_one() -> None:
    client, server = _client_and_server()
    assert client.get_timer() is None
    late = client.next_stream_id()
    client.send_headers(late, _GET, end_stream=True)
    assert client.expect_response(late, 5.0, 1.0) is True
    answered = client.next_stream_id()
    client.send_headers(answered, _GET, end_stream=True)
    assert client.expect_response(answered, 5.0, 2.0) is False  # later: no re-arm
    assert client.get_timer() == 6.0
    server.receive(client.data_to_send(), 2.0)
    server.respond(answered, [(b":status", b"200")], b"ok")
    client.receive(server.data_to_send(), 3.0)
    events = client.handle_timer(6.0)
    assert [(type(e), e.stream_id) for e in events] == [(ResponseTimedOut, late)]  # type: ignore[union-attr]
    assert client.handle_timer(7.5) == []  # the answered one never expires


def test_the_core_pings_a_silent_connection_and_reports_it_dead() -> None:
    client, _server = _client_and_server(ping_interval=10.0, ping_timeout=5.0)
    client.data_to_send()
    sid = client.next_stream_id()
    client.send_headers(sid, _GET, end_stream=True)
    client.data_to_send()
    assert client.get_timer() == 10.0  # last frame at 0.0, requests waiting
    assert client.handle_timer(10.0) == []
    assert _frame_types(client.data_to_send()) == [0x6]  # the watchdog's PING
    assert client.get_timer() == 15.0
    events = client.handle_timer(15.0)
    assert len(events) == 1 and isinstance(events[0], PingTimedOut)


def test_a_ping_answer_keeps_the_core_from_calling_the_connection_dead() -> None:
    client, server = _client_and_server(ping_interval=10.0, ping_timeout=5.0)
    sid = client.next_stream_id()
    client.send_headers(sid, _GET, end_stream=True)
    server.receive(client.data_to_send(), 0.0)
    server.data_to_send()
    client.handle_timer(10.0)
    server.receive(client.data_to_send(), 10.0)
    client.receive(server.data_to_send(), 11.0)  # the PING ACK
    assert client.handle_timer(15.0) == []
    assert client.get_timer() == 21.0


def test_silence_counts_from_when_requests_started_waiting() -> None:
    lv = Liveness(ping_interval=10, ping_timeout=5)
    lv.start(100.0)  # the last frame came at 0.0, an idle spell; a request now
    assert lv.due(0.0, waiting=True) == 110.0
    assert not lv.expire(100.0, 0.0, waiting=True).ping  # not PINGed the moment it is used
    assert lv.expire(110.0, 0.0, waiting=True).ping
