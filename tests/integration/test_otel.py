"""OpenTelemetry: one span per logical request, an event per failed attempt, the HTTP client
semantic conventions plus h2guard's failure attributes, the traceparent header injected."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is in the dev extra")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

import h2guard
from h2guard.chaos import serve
from h2guard.chaos.model import RstStream, Scenario, Trigger

pytestmark = pytest.mark.timeout(60)


def _tracer() -> tuple[object, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


async def test_a_retried_request_is_one_span_with_an_event_per_failed_attempt() -> None:
    scenario = Scenario(name="s", faults=(RstStream(code=0x2, at="after_app", when=Trigger(
        path="/orders", max_fires=2)),))
    tracer, exporter = _tracer()
    async with serve(scenario, h2c=True, honour_idempotency_keys=True) as server, \
            h2guard.AsyncClient(http2_prior_knowledge=True, tracer=tracer, timeout=5,
                                policy=h2guard.RetryPolicy(idempotency_keys=True)) as client:
        r = await client.post(server.url + "/orders", content=b"{}")
        assert r.status_code == 201
    (span,) = exporter.get_finished_spans()
    assert span.name == "POST" and span.kind == SpanKind.CLIENT
    a = dict(span.attributes or {})
    assert a["http.request.method"] == "POST" and a["url.full"] == server.url + "/orders"
    assert a["server.address"] == "127.0.0.1" and a["http.response.status_code"] == 201
    assert a["network.protocol.version"] == "2"
    assert a["h2guard.attempts"] == 3 and a["http.request.resend_count"] == 2
    events = [e for e in span.events if e.name == "h2guard.attempt"]
    assert [e.attributes["h2guard.error_code"] for e in events] == ["INTERNAL_ERROR"] * 2
    assert all(e.attributes["h2guard.failure.kind"] == "stream_reset" for e in events)
    # the server saw the trace context
    assert r.request.headers["traceparent"].split("-")[1] == format(span.context.trace_id,
                                                                     "032x")


async def test_a_request_that_fails_ends_its_span_with_the_failure() -> None:
    scenario = Scenario(name="s", faults=(RstStream(code=0x2, at="after_app",
                                                    when=Trigger(path="/orders")),))
    tracer, exporter = _tracer()
    async with serve(scenario, h2c=True) as server, h2guard.AsyncClient(
            http2_prior_knowledge=True, tracer=tracer, timeout=5) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.post(server.url + "/orders", content=b"{}")  # no key: not retried
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    a = dict(span.attributes or {})
    assert a["h2guard.failure.kind"] == "stream_reset" and a["h2guard.error_code"] == \
        "INTERNAL_ERROR"
    assert a["error.type"] == "StreamResetError" and a["h2guard.attempts"] == 1
    assert any(e.name == "exception" for e in span.events)


async def test_sync_client_spans_too() -> None:
    tracer, exporter = _tracer()
    async with serve(Scenario(name="plain"), h2c=True) as server:
        def call() -> int:
            with h2guard.Client(http2_prior_knowledge=True, tracer=tracer) as c:
                return c.get(server.url + "/echo").status_code

        assert await asyncio.to_thread(call) == 200
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET" and span.attributes["h2guard.attempts"] == 1
