"""The one failure vocabulary of h2guard, and the exceptions that carry it.

Every failure anywhere is a :class:`Failure`: what happened (``kind``), the HTTP/2 error code by
name, the stream, the GOAWAY's last_stream_id, and — the question a retry depends on — whether
the server may have processed the request (``processed``: ``no`` / ``maybe`` / ``yes``). The
retry policy, the metrics, the doctor and the bench all read the same record.

Exceptions are httpx's own types, so ``except httpx.TransportError`` keeps working; each one
raised by h2guard carries its record as ``exc.failure``. Every ``FailureKind`` has exactly one
type (``attach`` builds it); the tree, with the kinds each type is raised for::

    httpx.TransportError
     ├── httpx.NetworkError
     │    ├── httpx.ConnectError
     │    │    └── H2ConnectError          connect: TCP, TLS, ALPN or preface failed
     │    └── httpx.WriteError
     │         └── H2WriteError            write: the request body could not be written
     ├── httpx.TimeoutException
     │    ├── httpx.PoolTimeout
     │    │    └── H2PoolTimeout           pool_timeout: no stream slot in time
     │    ├── httpx.ReadTimeout
     │    │    └── H2ReadTimeout           timeout, ping_timeout: no response or PING answer
     │    └── DeadlineExceeded             deadline: the overall deadline passed
     ├── httpx.ProtocolError
     │    └── httpx.RemoteProtocolError
     │         ├── StreamResetError        refused_stream, stream_reset, http_1_1_required
     │         ├── GoAwayError             goaway_unprocessed, goaway: GOAWAY ended the stream
     │         ├── ConnectionLostError     connection_lost: EOF / TCP reset mid-request
     │         ├── H2ProtocolError         protocol, not_http2: HTTP/2 broken or not spoken
     │         └── BodyNotReplayableError  body_not_replayable: safe to resend, but one-shot
     └── RetryBudgetExhausted              retry_budget: no retry, to spare the server

:class:`h2guard.RetryTransport`, giving up, keeps the type of the attempt that failed last,
so ``except httpx.ReadTimeout`` still catches a timeout it stopped retrying for lack of budget
or time; ``exc.failure.kind`` then says why (``retry_budget``, ``deadline``,
``body_not_replayable``) and ``exc.failure.extra["cause"]`` what failed. The kind's own type
is for a record with no exception behind it (the transport's BodyNotReplayableError).
Requests h2guard delegates to httpx's own HTTP/1.1 transport raise httpx's exceptions as they
are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import httpx

from h2guard.codes import code_name, error_code

__all__ = [
    "BodyNotReplayableError",
    "ConnectionLostError",
    "DeadlineExceeded",
    "Failure",
    "FailureKind",
    "GoAwayError",
    "H2ConnectError",
    "H2PoolTimeout",
    "H2ProtocolError",
    "H2ReadTimeout",
    "H2WriteError",
    "Processed",
    "RetryBudgetExhausted",
    "StreamResetError",
    "attach",
    "failure_of",
]

Processed = Literal["no", "maybe", "yes"]
FailureKind = Literal[
    "refused_stream",      # RST_STREAM REFUSED_STREAM: not processed (RFC 9113 §8.7)
    "goaway_unprocessed",  # above a GOAWAY's last_stream_id: not processed (§6.8)
    "goaway",              # at or below last_stream_id, and the stream then failed
    "stream_reset",        # any other RST_STREAM
    "http_1_1_required",   # RST_STREAM HTTP_1_1_REQUIRED: resend over HTTP/1.1
    "connect",             # before the request's HEADERS were written
    "connection_lost",     # EOF / TCP reset after the request was written
    "ping_timeout",        # the connection stopped answering PING (a black hole)
    "timeout",             # no response in time
    "pool_timeout",        # no stream slot in time
    "write",               # the request body could not be sent
    "protocol",            # a protocol violation detected locally
    "not_http2",           # the server answered the HTTP/2 preface with text (HTTP/1.x)
    "body_not_replayable",  # a retry needed the body again and it was a one-shot stream
    "retry_budget",        # the retry budget was exhausted
    "deadline",            # the overall deadline passed
]


@dataclass(frozen=True, slots=True)
class Failure:
    """What went wrong with one attempt, in the terms a retry decision needs."""

    kind: FailureKind
    processed: Processed
    code: int | None = None
    stream_id: int | None = None
    last_stream_id: int | None = None
    origin: str = ""
    detail: str = ""
    attempts: int = 1
    extra: dict[str, object] = field(default_factory=dict)
    trace: tuple[str, ...] = field(default=(), compare=False)
    """The flight recorder: the last frames sent and received on the connection, one line
    each (relative time, direction, type, stream, flags, codes by name), oldest first; empty
    when the recorder is off or the failure is not about a connection."""

    @property
    def code_name(self) -> str | None:
        """The RFC name of ``code`` (``UNKNOWN(0x..)`` for others), or None."""
        return None if self.code is None else code_name(self.code)

    def explain(self) -> str:
        """One or two sentences in plain words: what happened, and what to do."""
        where = f" (stream {self.stream_id})" if self.stream_id is not None else ""
        if self.kind == "refused_stream" and self.processed != "no":
            return (f"The server refused the stream{where} with REFUSED_STREAM, which this client "
                    "does not trust to mean unprocessed (trust_refused_stream=False: a proxy may "
                    "send it after the app ran); only an idempotent request or one with an "
                    "Idempotency-Key can be sent again.")
        if self.kind == "refused_stream":
            return (f"The server refused the stream{where} with REFUSED_STREAM before processing "
                    "it; it is safe to send again on another connection.")
        if self.kind == "goaway_unprocessed" and self.processed != "no":
            return (f"The server sent GOAWAY with last_stream_id={self.last_stream_id}, above "
                    f"which this request{where} was not processed by the RFC's rules; but "
                    f"{self.detail or 'this client does not trust that'}. Only an idempotent "
                    "request or one with an Idempotency-Key can be sent again.")
        if self.kind == "goaway_unprocessed":
            return (f"The server sent GOAWAY with last_stream_id={self.last_stream_id}, above "
                    f"which this request{where} was never processed; it is safe to send again.")
        if self.kind == "http_1_1_required":
            return "The server requires HTTP/1.1 for this request; send it again over HTTP/1.1."
        if self.kind == "connect":
            return f"Could not connect ({self.detail}); nothing was sent, so a retry is safe."
        if self.kind in ("stream_reset", "goaway"):
            meaning = error_code(self.code or 0).meaning if self.code is not None else ""
            what = "RST_STREAM" if self.kind == "stream_reset" else "GOAWAY"
            if self.code is not None:
                what = f"{what} {self.code_name} ({meaning})"
            elif self.detail:
                what = f"{what} ({self.detail})"
            return (f"The server ended the stream{where} with {what}"
                    " after the request was sent; it may have been processed, so "
                    "only an idempotent request or one with an Idempotency-Key can be sent "
                    "again.")
        if self.kind == "connection_lost":
            return (f"The connection was lost{where} after the request was sent "
                    f"({self.detail}); the server may have processed it. Retry only idempotent "
                    "requests or ones with an Idempotency-Key; a pool idle limit below the "
                    "load balancer's idle timeout avoids most of these.")
        if self.kind == "ping_timeout":
            return ("The connection stopped answering PING (a load balancer that forgot the "
                    "flow?); it was abandoned.")
        if self.kind == "pool_timeout":
            return ("No stream slot became free within the pool timeout: raise "
                    "max_connections_per_origin or the pool timeout.")
        return self.detail or self.kind

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "processed": self.processed, "code": self.code_name,
                "stream_id": self.stream_id, "last_stream_id": self.last_stream_id,
                "origin": self.origin, "detail": self.detail, "attempts": self.attempts,
                "trace": list(self.trace)}

    def to_dict(self) -> dict[str, object]:
        """Everything, for logs and bug reports: :meth:`to_json` plus ``extra``."""
        return {**self.to_json(), "extra": dict(self.extra)}


class _Carrier:
    failure: Failure


class StreamResetError(httpx.RemoteProtocolError, _Carrier):
    """The server reset the stream (RST_STREAM)."""


class GoAwayError(httpx.RemoteProtocolError, _Carrier):
    """A GOAWAY ended the stream."""


class ConnectionLostError(httpx.RemoteProtocolError, _Carrier):
    """The connection closed or was reset under the request."""


class H2ConnectError(httpx.ConnectError, _Carrier):
    """Connecting (TCP, TLS, ALPN, preface) failed: nothing was sent."""


class H2PoolTimeout(httpx.PoolTimeout, _Carrier):
    """No stream slot became free in time."""


class H2ReadTimeout(httpx.ReadTimeout, _Carrier):
    """No response in time, or the connection stopped answering PING."""


class H2WriteError(httpx.WriteError, _Carrier):
    """The request body could not be written."""


class H2ProtocolError(httpx.RemoteProtocolError, _Carrier):
    """The server broke the HTTP/2 protocol, or does not speak HTTP/2 at all (it answered the
    preface in HTTP/1.x: ``http2_prior_knowledge`` against an HTTP/1.1 server)."""


class BodyNotReplayableError(httpx.RemoteProtocolError, _Carrier):
    """The request was provably not processed and would have been sent again, but its body
    is a one-shot stream that was already (partly) read: pass bytes to make it replayable."""


class DeadlineExceeded(httpx.TimeoutException, _Carrier):
    """The overall deadline of a logical request (all attempts together) passed."""


class RetryBudgetExhausted(httpx.TransportError, _Carrier):
    """Not retried: the origin's retry budget is spent (the server looks overloaded)."""


_TYPES: dict[FailureKind, type[httpx.TransportError]] = {
    "refused_stream": StreamResetError,
    "stream_reset": StreamResetError,
    "http_1_1_required": StreamResetError,
    "goaway_unprocessed": GoAwayError,
    "goaway": GoAwayError,
    "connection_lost": ConnectionLostError,
    "protocol": H2ProtocolError,
    "not_http2": H2ProtocolError,
    "connect": H2ConnectError,
    "pool_timeout": H2PoolTimeout,
    "timeout": H2ReadTimeout,
    "ping_timeout": H2ReadTimeout,
    "write": H2WriteError,
    "body_not_replayable": BodyNotReplayableError,
    "retry_budget": RetryBudgetExhausted,
    "deadline": DeadlineExceeded,
}
"""The exception type of each kind: total (tests/unit/test_errors_tree.py checks it, and that
the tree in the module docstring is the real class hierarchy)."""


def attach(failure: Failure, *, request: httpx.Request | None = None,
           cls: type[httpx.TransportError] | None = None,
           message: str | None = None) -> httpx.TransportError:
    """Build the httpx exception for a failure, with the record on ``.failure``: of ``cls``
    if given, else of the kind's type (the module docstring's tree)."""
    exc_type = cls or _TYPES.get(failure.kind, ConnectionLostError)
    message = message or failure.explain()
    exc = exc_type(message, request=request) if request is not None else exc_type(message)
    exc.failure = failure  # type: ignore[attr-defined]
    return exc


def failure_of(exc: BaseException) -> Failure | None:
    """The Failure an exception carries, if any (h2guard's own exceptions always do)."""
    found = getattr(exc, "failure", None)
    return found if isinstance(found, Failure) else None
