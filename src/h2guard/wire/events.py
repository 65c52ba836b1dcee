"""Events the sans-IO core emits: small frozen records named in the past tense.

They mirror h2's events but carry plain ints for error codes (an unknown code is not an error,
RFC 9113 §7) and add what h2 does not say: which streams a GOAWAY left unprocessed, which
streams the core refused itself, and a connection-level failure record instead of an exception.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ConnectionFailed",
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "GoAwayViolated",
    "Headers",
    "PingAcked",
    "PingReceived",
    "PingTimedOut",
    "RequestReceived",
    "ResponseReceived",
    "ResponseTimedOut",
    "SettingsAcked",
    "SettingsReceived",
    "StreamEnded",
    "StreamRefused",
    "StreamRejected",
    "StreamReset",
    "TrailersReceived",
    "WindowUpdated",
]

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """Server role: a peer opened a stream with request HEADERS."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """Client role: response HEADERS (final or informational) arrived."""

    stream_id: int
    headers: Headers
    end_stream: bool


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    """A trailing HEADERS block; it always ends the stream."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class DataReceived:
    """DATA arrived. ``flow_controlled_length`` counts padding too: it is what to acknowledge."""

    stream_id: int
    data: bytes
    flow_controlled_length: int
    end_stream: bool


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer ended its side of the stream (END_STREAM)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream was reset. ``remote`` is False when the core reset it itself (an h2 stream
    error such as a frame on a closed stream)."""

    stream_id: int
    error_code: int
    remote: bool = True


@dataclass(frozen=True, slots=True)
class StreamRefused:
    """Server role: the core refused a new stream with RST_STREAM REFUSED_STREAM.

    ``reason`` is ``"stream_limit"`` (over the advertised SETTINGS_MAX_CONCURRENT_STREAMS) or
    ``"after_goaway"`` (its id is above the last_stream_id of a GOAWAY already sent).
    ``headers`` are the refused request's headers (a server counts attempts by them)."""

    stream_id: int
    reason: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list, compare=False)


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """Server role: a malformed request (RFC 9113 §8.1.1: an uppercase or connection-specific
    header, a bad pseudo-header, a wrong content-length) was answered with RST_STREAM
    PROTOCOL_ERROR. It is a stream error: the connection and its other streams go on. The
    client role reports a malformed response as :class:`StreamReset` with ``remote=False``."""

    stream_id: int
    message: str


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer sent GOAWAY. Streams at or below ``last_stream_id`` may still complete;
    ``unprocessed`` lists the streams this side opened above it: the peer never processed them,
    so they are safe to send again anywhere (RFC 9113 §6.8)."""

    error_code: int
    last_stream_id: int
    debug: bytes
    unprocessed: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GoAwayViolated:
    """Client role: proof that the peer processed a stream its own GOAWAY called unprocessed
    (above last_stream_id): a response on it (HEADERS or DATA), or a later GOAWAY that raises
    last_stream_id above it (RFC 9113 §6.8 forbids raising it; a Node.js http2 server does,
    and runs those streams without answering). A client that resent the request ran it twice.
    Reported once per stream; such frames are otherwise ignored (the stream was handed back
    to its owner as unprocessed)."""

    stream_id: int
    last_stream_id: int  # of the GOAWAY that called the stream unprocessed
    frame: str  # "HEADERS", "DATA" or "GOAWAY"


@dataclass(frozen=True, slots=True)
class SettingsReceived:
    """The peer's SETTINGS, already acknowledged; ``changed`` maps identifier to new value."""

    changed: dict[int, int]


@dataclass(frozen=True, slots=True)
class SettingsAcked:
    """The peer acknowledged our SETTINGS."""

    changed: dict[int, int]


@dataclass(frozen=True, slots=True)
class PingReceived:
    """The peer sent a PING (already answered)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class PingAcked:
    """Our PING came back; ``rtt`` is seconds since it was sent (None if we did not send it)."""

    payload: bytes
    rtt: float | None


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """The peer opened its flow-control window (stream 0: the connection)."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """A connection error: the core queued GOAWAY with ``error_code`` and is now closed.

    ``local`` is True when this side detected the violation (bad preface, malformed frame,
    oversize headers), False when the transport layer reports the loss."""

    error_code: int
    message: str
    local: bool = True


@dataclass(frozen=True, slots=True)
class ResponseTimedOut:
    """Client role, from :meth:`~h2guard.wire.core.H2Core.handle_timer`: no response HEADERS
    on the stream by the deadline given to ``expect_response`` (``after`` seconds)."""

    stream_id: int
    after: float


@dataclass(frozen=True, slots=True)
class PingTimedOut:
    """From :meth:`~h2guard.wire.core.H2Core.handle_timer`: the connection went silent while
    requests waited, and the PING sent then stayed unanswered for ``after`` seconds (a black
    hole: the owner should abandon the connection)."""

    after: float


Event = (RequestReceived | ResponseReceived | TrailersReceived | DataReceived | StreamEnded
         | StreamReset | StreamRefused | StreamRejected | GoAwayReceived | GoAwayViolated
         | SettingsReceived | ResponseTimedOut | PingTimedOut
         | SettingsAcked | PingReceived | PingAcked | WindowUpdated | ConnectionFailed)
