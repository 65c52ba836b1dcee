"""The data model of a chaos scenario: what a TOML file becomes after validation.

Faults are data (docs/architecture.md, principle 4): the server never hard-codes a failure, it
consults these records at a handful of hook points ("moments") in a stream's life. Durations here
are in *unscaled* seconds, exactly as written in the file; the server multiplies them by its
``time_scale`` when it arms a timer, so one profile serves both a real-time run and a test that
squeezes a 60 s idle timeout into 0.6 s.

Moments, in the order a stream meets them:

``request_headers``   request HEADERS received; the app has not run (nothing was processed)
``request_end``       the whole request body received; the app has not run yet
``after_app``         the app ran (a side effect may be in the ledger); no response sent yet:
                      the duplicate-write case
``response_headers``  response HEADERS sent; no body yet
``response_body``     ``after_bytes`` bytes of the response body sent
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "MOMENTS",
    "Delay",
    "Fault",
    "FlowControl",
    "GoAway",
    "IdleAction",
    "IdleTimeout",
    "Limits",
    "MaxAge",
    "MaxConcurrentStreams",
    "Moment",
    "RequestCap",
    "RstStream",
    "Scenario",
    "ServerSettings",
    "Trigger",
]

Moment = Literal["request_headers", "request_end", "after_app", "response_headers",
                 "response_body"]
MOMENTS: tuple[Moment, ...] = ("request_headers", "request_end", "after_app",
                               "response_headers", "response_body")

IdleAction = Literal["goaway", "fin", "rst", "blackhole"]
"""How a connection ends: GOAWAY then FIN, bare FIN, TCP RST (SO_LINGER 0), or a black hole
(stop reading and answering, never close: what an AWS NLB does to a forgotten flow)."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """When a per-stream fault fires. Every condition given must hold (logical AND).

    ``probability`` draws from the server's seeded RNG keyed by (seed, connection, stream,
    fault), so a run with the same ``--seed`` makes the same choices whatever the scheduling.
    ``every_nth_stream`` counts the streams that match the other filters, server-wide: N=3 fires
    on the 3rd, 6th, 9th... ``after_requests`` fires only once the connection has already
    carried that many requests (the request cap of a proxy). ``min_age`` is connection age in
    seconds. ``path`` is a glob (fnmatch) against the path without the query string; ``method``
    is case-insensitive; ``headers`` are exact lower-case names with glob values.
    ``max_fires`` bounds how often the fault fires in the server's lifetime.
    """

    probability: float = 1.0
    every_nth_stream: int | None = None
    after_requests: int | None = None
    min_age: float | None = None
    path: str | None = None
    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    max_fires: int | None = None


@dataclass(frozen=True, slots=True)
class RstStream:
    """Send RST_STREAM with ``code`` (any 32-bit value, known or not) at ``at``."""

    code: int
    at: Moment = "request_headers"
    after_bytes: int = 0
    when: Trigger = field(default_factory=Trigger)
    name: str = ""
    kind: Literal["rst_stream"] = "rst_stream"


@dataclass(frozen=True, slots=True)
class GoAway:
    """Send GOAWAY when a stream reaches ``at``.

    ``process_above`` models a real server bug: the app still runs for streams above the
    GOAWAY's last_stream_id (a Node.js http2 app calling ``session.goaway(0, stream.id)`` does
    this), so a client that trusts the GOAWAY and resends those streams writes twice.

    ``graceful``: last_stream_id = the highest stream the server has processed (or will: every
    stream opened so far runs to completion). ``drain``: first GOAWAY with 2^31-1, then after
    ``drain_delay`` the real id (Envoy, nghttp2 graceful shutdown). ``abrupt``: last_stream_id
    below the streams in flight (``last_stream_id`` if given, else the lowest in-flight stream
    minus 2), and those streams are dropped unanswered. ``close_after``: FIN this many seconds
    after the (final) GOAWAY; ``None`` closes when the last stream at or below the id ends.
    """

    mode: Literal["graceful", "drain", "abrupt"] = "graceful"
    code: int = 0
    debug: bytes = b""
    last_stream_id: int | None = None
    drain_delay: float = 1.0
    close_after: float | None = None
    process_above: bool = False
    at: Moment = "request_headers"
    when: Trigger = field(default_factory=Trigger)
    name: str = ""
    kind: Literal["goaway"] = "goaway"


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """End a connection after ``after`` seconds without frames.

    ``ping_resets``: whether a received PING restarts the timer (AWS ALB: it does not).
    ``only_without_streams``: count idle time only while no stream is open (nginx's
    keepalive_timeout); when false any silence counts, as at a load balancer.
    """

    after: float
    action: IdleAction = "goaway"
    ping_resets: bool = True
    only_without_streams: bool = True
    code: int = 0
    name: str = ""
    kind: Literal["idle_timeout"] = "idle_timeout"


@dataclass(frozen=True, slots=True)
class MaxAge:
    """End a connection once it is ``after`` seconds old (Envoy's max_connection_duration),
    with a graceful GOAWAY or another action; ``jitter`` adds up to that fraction at random."""

    after: float
    action: IdleAction = "goaway"
    jitter: float = 0.0
    code: int = 0
    name: str = ""
    kind: Literal["max_age"] = "max_age"


@dataclass(frozen=True, slots=True)
class MaxConcurrentStreams:
    """Advertise ``limit`` in SETTINGS and refuse streams beyond it with REFUSED_STREAM.

    ``enforce=False`` advertises without refusing (a server that trusts its clients).
    ``lower_to`` sends a new SETTINGS mid-connection once ``lower_after_requests`` requests have
    arrived on the connection or ``lower_after`` seconds have passed (whichever is given).
    """

    limit: int
    enforce: bool = True
    lower_to: int | None = None
    lower_after_requests: int | None = None
    lower_after: float | None = None
    name: str = ""
    kind: Literal["max_concurrent_streams"] = "max_concurrent_streams"


@dataclass(frozen=True, slots=True)
class RequestCap:
    """nginx's keepalive_requests: after ``max_requests`` requests on a connection, GOAWAY
    NO_ERROR with last_stream_id = that request's stream; later streams are refused
    (REFUSED_STREAM). ``close_after`` as in :class:`GoAway`."""

    max_requests: int
    code: int = 0
    close_after: float | None = None
    name: str = ""
    kind: Literal["request_cap"] = "request_cap"


@dataclass(frozen=True, slots=True)
class FlowControl:
    """Flow-control faults, per stream where ``when`` matches.

    ``withhold_updates``: do not send WINDOW_UPDATE for received request data for this many
    seconds (the client's upload stalls). ``error``: answer with RST_STREAM FLOW_CONTROL_ERROR at
    ``at``; ``overrun`` instead sends a DATA frame beyond the client's window (a window above
    4 MiB gets RST_STREAM FLOW_CONTROL_ERROR instead: the output stays bounded), so the *client*
    detects the violation. Small initial windows are :class:`ServerSettings`.
    """

    withhold_updates: float = 0.0
    error: bool = False
    overrun: bool = False
    at: Moment = "request_end"
    when: Trigger = field(default_factory=Trigger)
    name: str = ""
    kind: Literal["flow_control"] = "flow_control"


@dataclass(frozen=True, slots=True)
class Delay:
    """Wait ``duration`` seconds (plus up to ``jitter`` more, seeded) at ``at``.

    At ``response_body`` the delay comes before every DATA frame after ``after_bytes``."""

    duration: float
    jitter: float = 0.0
    at: Moment = "response_headers"
    after_bytes: int = 0
    when: Trigger = field(default_factory=Trigger)
    name: str = ""
    kind: Literal["delay"] = "delay"


Fault = (RstStream | GoAway | IdleTimeout | MaxAge | MaxConcurrentStreams | RequestCap
         | FlowControl | Delay)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """What the server advertises in its first SETTINGS frame, plus its connection window.

    ``None`` means h2's default. ``connection_window`` is the connection-level receive window the
    server opens with a WINDOW_UPDATE on stream 0 (the initial one is always 65,535)."""

    max_concurrent_streams: int | None = None
    initial_window_size: int | None = None
    max_frame_size: int | None = None
    max_header_list_size: int | None = None
    header_table_size: int | None = None
    connection_window: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Self-protection: what one peer may cost the server before it is cut off.

    On by default (a chaos server is still a server: a hostile or broken peer must not take it
    down), and a scenario's ``[limits]`` table can change them, so a profile can also model a
    middlebox's own abuse defences. These are real seconds, never scaled by ``time_scale``.
    Past a limit the connection gets GOAWAY with ``code`` (ENHANCE_YOUR_CALM by default) and is
    closed; each cut-off is a ``chaos.limit_exceeded`` event and a counter.

    ``handshake_timeout``: seconds from accept to the client preface and its first SETTINGS
    (slowloris). ``idle_timeout``: seconds a connection may stay silent with no stream open
    (``None``: forever). ``max_resets_per_second``: RST_STREAM frames from the peer (Rapid
    Reset, CVE-2023-44487). ``max_control_frames_per_second``: PING, SETTINGS, WINDOW_UPDATE,
    PRIORITY, unknown frames and empty DATA without END_STREAM (CVE-2019-9512/9515/9518); a DATA
    frame the server sends earns one more and each request four (libcurl opens every stream's
    window with a WINDOW_UPDATE), so a busy client acknowledging every frame is never counted
    as a flood. Both rates are token buckets of one second's worth. ``max_pending_output``:
    bytes of answers (PING and SETTINGS acks, resets) queued for a peer that does not read.
    ``max_header_list_size``: the largest request header block (decoded), advertised in
    SETTINGS; ``None`` keeps ``[settings].max_header_list_size`` or the server's default.
    ``max_stream_buffer``: bytes of body one stream may hold in the server (both directions)
    while the other side is slower. ``enabled = false`` turns every limit off.
    """

    enabled: bool = True
    handshake_timeout: float = 10.0
    idle_timeout: float | None = 300.0
    max_resets_per_second: int = 200
    max_control_frames_per_second: int = 2000
    max_pending_output: int = 1024 * 1024
    max_header_list_size: int | None = None
    max_stream_buffer: int = 256 * 1024
    code: int = 0xB


@dataclass(frozen=True, slots=True)
class Scenario:
    """A validated scenario: settings plus an ordered tuple of faults.

    ``source`` says which middlebox and which documented defaults a profile models.
    """

    name: str = "no-faults"
    description: str = ""
    source: str = ""
    settings: ServerSettings = field(default_factory=ServerSettings)
    faults: tuple[Fault, ...] = ()
    limits: Limits = field(default_factory=Limits)
