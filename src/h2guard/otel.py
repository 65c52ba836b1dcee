"""OpenTelemetry spans for h2guard's clients (``pip install 'h2guard[otel]'``).

One span per **logical** request (what the caller asked for), not per attempt: the retries,
the moves to another connection and the failures that caused them are what an on-call engineer
needs to see on one line of a trace. Pass a tracer::

    from opentelemetry import trace
    client = h2guard.AsyncClient(tracer=trace.get_tracer("my-service"))
    # or RetryTransport(inner, tracer=h2guard.otel.tracer())

The span follows the HTTP client semantic conventions (name ``POST``, kind CLIENT,
``http.request.method``, ``url.full``, ``server.address``, ``server.port``,
``network.protocol.version``, ``http.response.status_code``, ``error.type``,
``http.request.resend_count``) and adds h2guard's own attributes: ``h2guard.attempts``,
``h2guard.moves`` (resends inside the transport: REFUSED_STREAM, unprocessed after GOAWAY),
``h2guard.failure.kind``, ``h2guard.error_code`` (by name), ``h2guard.goaway.last_stream_id``.
Each failed attempt is an event, ``h2guard.attempt``, with the same failure attributes and the
backoff chosen. The W3C ``traceparent`` header is injected, so the server's span joins.
Nothing here runs without a tracer: the module only imports opentelemetry when one is given.
"""

from __future__ import annotations

from typing import Any

import httpx

from h2guard.errors import Failure

__all__ = ["end_error", "end_ok", "on_attempt_failed", "start", "tracer"]


def tracer() -> Any:
    """h2guard's tracer from the global provider (needs opentelemetry-api)."""
    try:
        from opentelemetry import trace
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError("h2guard's OpenTelemetry spans need opentelemetry-api: "
                          "pip install 'h2guard[otel]'") from exc
    from h2guard import __version__

    return trace.get_tracer("h2guard", __version__)


def _failure_attributes(failure: Failure | None, prefix: str = "h2guard.") -> dict[str, Any]:
    if failure is None:
        return {}
    out: dict[str, Any] = {f"{prefix}failure.kind": failure.kind,
                           f"{prefix}failure.processed": failure.processed}
    if failure.code_name is not None:
        out[f"{prefix}error_code"] = failure.code_name
    if failure.last_stream_id is not None:
        out[f"{prefix}goaway.last_stream_id"] = failure.last_stream_id
    if failure.stream_id is not None:
        out[f"{prefix}stream_id"] = failure.stream_id
    return out


def start(tracer_: Any, request: httpx.Request) -> Any:
    """Open the logical request's span and inject its context into the request's headers."""
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind

    url = request.url
    port = url.port or (443 if url.scheme == "https" else 80)
    span = tracer_.start_span(request.method.upper(), kind=SpanKind.CLIENT, attributes={
        "http.request.method": request.method.upper(),
        "url.full": str(url.copy_with(username=None, password=None)),
        "server.address": url.host,
        "server.port": port,
    })
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    for key, value in carrier.items():
        request.headers[key] = value
    return span


def on_attempt_failed(span: Any, *, attempt: int, failure: Failure | None,
                      status: int | None, delay: float) -> None:
    """One failed attempt that will be retried after ``delay`` seconds."""
    attrs = {"h2guard.attempt": attempt, "h2guard.retry_delay_s": round(delay, 4),
             **_failure_attributes(failure)}
    if status is not None:
        attrs["http.response.status_code"] = status
    span.add_event("h2guard.attempt", attributes=attrs)


def end_ok(span: Any, response: httpx.Response, *, attempts: int, retries: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    moves = int(response.extensions.get("h2guard_attempts", 1) or 1) - 1
    version = response.extensions.get("http_version", b"")
    span.set_attribute("http.response.status_code", response.status_code)
    if version:
        span.set_attribute("network.protocol.version",
                           version.decode().removeprefix("HTTP/"))
    span.set_attribute("h2guard.attempts", attempts)
    span.set_attribute("h2guard.moves", moves)
    if retries:
        span.set_attribute("http.request.resend_count", retries)
    if response.status_code >= 400:
        span.set_attribute("error.type", str(response.status_code))
        span.set_status(Status(StatusCode.ERROR))
    span.end()


def end_error(span: Any, exc: BaseException, failure: Failure, *, attempts: int,
              retries: int) -> None:
    from opentelemetry.trace import Status, StatusCode

    for key, value in _failure_attributes(failure).items():
        span.set_attribute(key, value)
    span.set_attribute("error.type", type(exc).__name__)
    span.set_attribute("h2guard.attempts", attempts)
    span.set_attribute("h2guard.moves", max(0, failure.attempts - 1))
    if retries:
        span.set_attribute("http.request.resend_count", retries)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, failure.kind))
    span.end()
