"""Pure pieces of the client: the Failure record, exception mapping, header conversion, metrics."""

from __future__ import annotations

import httpx
import pytest

from h2guard.client.transport import _h2_headers
from h2guard.errors import (
    ConnectionLostError,
    Failure,
    GoAwayError,
    H2ConnectError,
    StreamResetError,
    attach,
    failure_of,
)
from h2guard.events import EventLog


@pytest.mark.parametrize(("failure", "cls", "words"), [
    (Failure("refused_stream", "no", 0x7, 3), StreamResetError, "safe to send again"),
    (Failure("goaway_unprocessed", "no", 0, 9, 5), GoAwayError, "last_stream_id=5"),
    (Failure("stream_reset", "maybe", 0x2, 1), StreamResetError, "INTERNAL_ERROR"),
    (Failure("stream_reset", "maybe", 0x1234, 1), StreamResetError, "UNKNOWN(0x1234)"),
    (Failure("connection_lost", "maybe", detail="EOF"), ConnectionLostError, "Idempotency-Key"),
    (Failure("connect", "no", detail="refused"), H2ConnectError, "nothing was sent"),
])
def test_failures_become_httpx_exceptions_with_plain_words(
        failure: Failure, cls: type[Exception], words: str) -> None:
    request = httpx.Request("POST", "https://example.test/orders")
    exc = attach(failure, request=request)
    assert isinstance(exc, cls) and isinstance(exc, httpx.TransportError)
    assert failure_of(exc) is failure
    assert words in str(exc)
    assert exc.request is request


def test_failure_of_other_exceptions_is_none() -> None:
    assert failure_of(ValueError("x")) is None


def test_h2_headers_drop_hop_by_hop_and_use_host_as_authority() -> None:
    request = httpx.Request("POST", "https://api.test:8443/a/b?c=1", headers={
        "Connection": "keep-alive", "Keep-Alive": "5", "TE": "gzip", "X-Id": "7",
        "Transfer-Encoding": "chunked"})
    headers = _h2_headers(request)
    assert headers[:4] == [(b":method", b"POST"), (b":scheme", b"https"),
                           (b":authority", b"api.test:8443"), (b":path", b"/a/b?c=1")]
    names = [k for k, _ in headers[4:]]
    assert b"x-id" in names
    for banned in (b"connection", b"keep-alive", b"te", b"transfer-encoding", b"host"):
        assert banned not in names
    trailers = _h2_headers(httpx.Request("GET", "https://a.test/", headers={"TE": "trailers"}))
    assert (b"te", b"trailers") in trailers


def test_client_metrics_are_a_view_of_events() -> None:
    pytest.importorskip("prometheus_client")
    from h2guard.metrics import ClientMetrics

    log = EventLog()
    log.emit("client.stream_reset", origin="https://a.test:443", stream=1, code=7,
             kind="refused_stream")
    metrics = ClientMetrics(log)
    log.emit("client.goaway", origin="https://a.test:443", code=0, last_stream_id=5,
             unprocessed=2)
    log.emit("client.transparent_retry", origin="https://a.test:443", reason="refused_stream",
             attempt=1, stream=1)
    text = metrics.render()[0].decode()
    assert 'h2guard_stream_resets_total{code="REFUSED_STREAM",origin="https://a.test:443"} 1.0' \
        in text
    assert 'h2guard_goaway_total{code="NO_ERROR",origin="https://a.test:443"} 1.0' in text
    assert 'h2guard_transparent_retries_total{origin="https://a.test:443",' \
           'reason="refused_stream"} 1.0' in text


async def test_retry_metrics_count_what_the_retry_transport_did() -> None:
    pytest.importorskip("prometheus_client")
    import h2guard
    from h2guard.errors import Failure, attach
    from h2guard.metrics import ClientMetrics
    from h2guard.retry import set_testing

    class Refusing(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise attach(Failure("refused_stream", "no", 7, 1, None, "http://a.test:80"),
                         request=request)

    log = EventLog()
    metrics = ClientMetrics(log)
    policy = h2guard.RetryPolicy(unprocessed_attempts=3, budget_reserve=1.0, budget_ratio=0.0)
    set_testing(True)
    try:
        async with httpx.AsyncClient(transport=h2guard.RetryTransport(
                Refusing(), policy=policy, events=log)) as client:
            with pytest.raises(httpx.RemoteProtocolError) as caught:
                await client.get("http://a.test/")
    finally:
        set_testing(False)
    failure = h2guard.failure_of(caught.value)
    assert failure is not None and failure.kind == "retry_budget" and failure.attempts == 2
    text = metrics.render()[0].decode()
    assert 'h2guard_retries_total{origin="http://a.test:80",reason="refused-stream"} 1.0' in text
    assert 'h2guard_retry_budget_exhausted_total{origin="http://a.test:80"} 1.0' in text
    assert 'h2guard_retry_gave_up_total{kind="refused_stream",origin="http://a.test:80"} 1.0' \
        in text
