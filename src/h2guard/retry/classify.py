"""Turn any transport failure into a :class:`~h2guard.errors.Failure`.

h2guard's own exceptions carry their record. Other transports (httpx's default one over
httpcore, or anything raising httpx exceptions) do not, but what they know is still in the
exception chain: httpcore raises ``RemoteProtocolError(event)`` with h2's ``StreamReset`` or
``ConnectionTerminated`` event as its argument, and httpx re-raises that as
``httpx.RemoteProtocolError("<StreamReset stream_id:1, error_code:ErrorCodes.REFUSED_STREAM,
remote_reset:True>")`` chained to the original. This module reads the event when it is there
and the message when only the text survived, so that a REFUSED_STREAM from httpx's own
transport is still known to be safe to send again.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx

from h2guard.codes import parse_error_code
from h2guard.errors import Failure, FailureKind, Processed, failure_of

__all__ = ["classify"]

_REFUSED = 0x7
_HTTP_1_1_REQUIRED = 0xD
_CODE_RE = re.compile(r"error_code[:=]\s*(?:<?ErrorCodes\.)?([A-Z_0-9]+|\d+)")
_STREAM_RE = re.compile(r"(?<!last_)stream_id[:=]\s*(\d+)")
_LAST_RE = re.compile(r"last_stream_id[:=]\s*(\d+)")
_CONFIGURATION: frozenset[FailureKind] = frozenset({"not_http2"})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _h2_event(exc: BaseException) -> Failure | None:
    """A StreamReset / ConnectionTerminated event carried as an exception argument."""
    try:
        import h2.events
        import h2.exceptions
    except ImportError:  # pragma: no cover - h2 is a dependency
        return None
    for arg in exc.args:
        if isinstance(arg, h2.events.StreamReset):
            return _reset(int(arg.error_code or 0), arg.stream_id, str(arg))
        if isinstance(arg, h2.events.ConnectionTerminated):
            return Failure("goaway", "maybe", int(arg.error_code or 0), None,
                           arg.last_stream_id, "", str(arg))
        if isinstance(arg, h2.exceptions.StreamClosedError):
            # httpcore sending a body on a stream the server already reset: the reset's own
            # code (REFUSED_STREAM or not) is lost, so nothing proves it was not processed
            return Failure("stream_reset", "maybe", None, arg.stream_id, None, "",
                           f"the server reset stream {arg.stream_id} while the request was "
                           "still being sent (the transport did not say with which code)")
    return None


def _reset(code: int, stream_id: int | None, detail: str) -> Failure:
    kind: FailureKind
    processed: Processed
    if code == _REFUSED:
        kind, processed = "refused_stream", "no"
    elif code == _HTTP_1_1_REQUIRED:
        kind, processed = "http_1_1_required", "no"
    else:
        kind, processed = "stream_reset", "maybe"
    return Failure(kind, processed, code, stream_id, None, "", detail)


def _from_text(text: str) -> Failure | None:
    """The same events after httpx turned them into a message."""
    if "StreamReset" not in text and "ConnectionTerminated" not in text:
        return None
    code_match = _CODE_RE.search(text)
    code = 0
    if code_match is not None:
        try:
            code = parse_error_code(code_match.group(1))
        except ValueError:
            code = 0x2  # unknown: treat as INTERNAL_ERROR (RFC 9113 §7)
    stream = _STREAM_RE.search(text)
    last = _LAST_RE.search(text)
    if "StreamReset" in text:
        return _reset(code, int(stream.group(1)) if stream else None, text)
    return Failure("goaway", "maybe", code, None, int(last.group(1)) if last else None, "",
                   text)


def classify(exc: BaseException, *, origin: str = "") -> Failure | None:
    """What ``exc`` says about the attempt, or None if it is not a transport failure at all
    (a bad URL, an unsupported scheme, a bug: such errors are never retried) or a mistake of
    configuration no retry can fix (``http2_prior_knowledge`` against a server that does not
    speak HTTP/2: it answered the preface in HTTP/1.x). None raises ``exc`` as it is.

    An unknown transport error is "maybe processed": nothing proves otherwise."""
    own = failure_of(exc)
    if own is not None:
        return None if own.kind in _CONFIGURATION else own
    for link in _chain(exc):
        found = _h2_event(link) or _from_text(str(link))
        if found is not None:
            return _at(found, origin)
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.DecodingError | httpx.TooManyRedirects):
        return None
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return Failure("connect", "no", None, None, None, origin, text)
    if isinstance(exc, httpx.PoolTimeout):
        return Failure("pool_timeout", "no", None, None, None, origin, text)
    if isinstance(exc, httpx.ReadTimeout | TimeoutError):
        return Failure("timeout", "maybe", None, None, None, origin, text)
    if isinstance(exc, httpx.WriteTimeout | httpx.WriteError):
        return Failure("write", "maybe", None, None, None, origin, text)
    if isinstance(exc, httpx.TransportError):
        return Failure("connection_lost", "maybe", None, None, None, origin, text)
    return None


def _at(failure: Failure, origin: str) -> Failure:
    if failure.origin or not origin:
        return failure
    return Failure(failure.kind, failure.processed, failure.code, failure.stream_id,
                   failure.last_stream_id, origin, failure.detail, failure.attempts,
                   failure.extra, trace=failure.trace)
