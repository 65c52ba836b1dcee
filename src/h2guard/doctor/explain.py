"""``h2guard doctor explain``: turn a client's or proxy's reset message into frame, sender and fix.

"stream was reset" reaches engineers in a dozen dialects: Java prints ``Received RST_STREAM:
Stream not processed``, Go ``stream error: stream ID 3; REFUSED_STREAM``, Rust ``refused stream
before processing any application logic``, gRPC ``UNAVAILABLE``, Envoy a two-letter response
flag. Behind all of them sit a handful of facts: which frame (RST_STREAM, GOAWAY, a bare TCP
close, a timeout, or nothing on the wire at all), which RFC 9113 code, and who sent it. This
module recognises those dialects and says what to do about each.

The recognisers are data: ``PATTERNS`` is an ordered table of (program, pattern name, regex,
frame, where the code comes from, sender, causes, fixes), compiled once at import. The first
entry that matches wins, so the table runs from the most specific shapes to generic fallbacks.
The logic on top is small pure functions: :func:`explain` for one message, :func:`summarise`
for a log. Causes and fixes per error code come from :mod:`h2guard.codes`, extended here with
what the codes usually mean in production (``_MORE_BY_CODE``); ``docs/facts.md`` and
``docs/FINDINGS.md`` are where the less obvious claims come from.

Every shape in the table was written from the source of the program that prints it; the corpus
in ``tests/doctor/corpus.toml`` names the file and function for each, and a test checks that
every corpus entry is classified as expected.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from h2guard.codes import ERROR_CODES, code_name, error_code

__all__ = [
    "PATTERNS",
    "Explanation",
    "LogSummary",
    "Override",
    "Pattern",
    "explain",
    "register",
    "resolve_code",
    "summarise",
]

Frame = Literal["RST_STREAM", "GOAWAY", "TCP", "timeout", "local"]
Sender = Literal["server", "proxy/load balancer", "client itself", "unknown"]

#: The longest line ``summarise`` looks at; the rest of a longer line is skipped (and counted).
MAX_LINE = 8 * 1024
#: How many distinct minutes a log summary keeps; later minutes are counted as dropped.
MAX_BUCKETS = 7 * 24 * 60
#: How much of stdin ``explain -`` reads as one message.
MAX_TEXT = 1 << 20
_MAX_CODES = 64  # distinct codes in a summary (unknown 32-bit codes could otherwise explode)


# --- the data --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """A refinement of a pattern, applied when ``when`` also matches the recognised text.

    It exists because one message shape can mean different things: OkHttp's ``stream was reset:
    CANCEL`` is the client's own cancel, h2's ``remote_reset:False`` is a reset h2 sent itself.
    """

    when: str
    frame: Frame | None = None
    sender: Sender | None = None
    code: str | None = None
    causes: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Pattern:
    """One recognisable message shape.

    The error code comes, in this order, from the regex group ``num`` (a number, exact), the
    group ``code`` (a name, number or prose, resolved by :func:`resolve_code`), or ``code``.
    ``inner`` names a group holding another error message (Go's ``cannot retry err [...]``)
    that is explained in turn; its frame, code and sender win over this pattern's.
    """

    program: str
    name: str
    regex: str
    frame: Frame
    sender: Sender
    what: str
    code: str | None = None
    causes: tuple[str, ...] = ()
    fixes: tuple[str, ...] = ()
    overrides: tuple[Override, ...] = ()
    inner: bool = False
    grpc: bool = False
    ignore_case: bool = False


# Error-code prose as programs print it, lower case: the JDK's ErrorFrame.errorStrings and the
# Rust h2 crate's Reason::description. Matched as prefixes of the printed token.
_JAVA_PROSE: dict[str, int] = {
    "Not an error": 0x0, "Protocol error": 0x1, "Internal error": 0x2,
    "Flow control error": 0x3, "Settings timeout": 0x4, "Stream is closed": 0x5,
    "Frame size error": 0x6, "Stream not processed": 0x7, "Stream cancelled": 0x8,
    "Compression state not updated": 0x9, "TCP Connection error on CONNECT": 0xA,
    "Processing capacity exceeded": 0xB, "Negotiated TLS parameters not acceptable": 0xC,
    "Use HTTP/1.1 for request": 0xD,
}
_RUST_PROSE: dict[str, int] = {
    "not a result of an error": 0x0, "unspecific protocol error detected": 0x1,
    "unexpected internal error encountered": 0x2, "flow-control protocol violated": 0x3,
    "settings ACK not received in timely manner": 0x4,
    "received frame when stream half-closed": 0x5, "frame with invalid size": 0x6,
    "refused stream before processing any application logic": 0x7,
    "stream no longer needed": 0x8, "unable to maintain the header compression context": 0x9,
    "connection established in response to a CONNECT request was reset": 0xA,
    "detected excessive load generating behavior": 0xB,
    "security properties do not meet minimum requirements": 0xC,
    "endpoint requires HTTP/1.1": 0xD,
}
_PROSE: tuple[tuple[str, int], ...] = tuple(sorted(
    ((k.lower(), v) for k, v in {**_JAVA_PROSE, **_RUST_PROSE}.items()),
    key=lambda kv: -len(kv[0])))
_BY_NAME: dict[str, int] = {c.name: c.value for c in ERROR_CODES.values()}
_BY_NAME["HTTP11_REQUIRED"] = 0xD  # how the Rust h2 crate and a few others spell it
_NAMES = "|".join(sorted(_BY_NAME, key=len, reverse=True))
_JAVA_CODE = "|".join(re.escape(k) for k in sorted(_JAVA_PROSE, key=len, reverse=True))
_RUST_CODE = r"[a-z][a-zA-Z0-9 ,/.\-]{4,110}"

# Things said about more than one pattern.
_RETRY_SAFE = "nothing of this request reached the server, so resending it is safe"
_H2GUARD = ("from Python, h2guard.AsyncClient / h2guard.Client (or h2guard.AsyncHTTPTransport "
            "under httpx) resend what is provably unprocessed and wait for stream slots")
_IDEMPOTENT = ("resend only idempotent requests (GET, HEAD, PUT, DELETE) or ones carrying an "
               "Idempotency-Key: the server may have acted on it (docs/facts.md §1)")
_HAPROXY_REFUSED = ("behind haproxy, REFUSED_STREAM does not prove the request was unprocessed: "
                    "haproxy 2.6 answers a backend reset after the app ran with REFUSED_STREAM "
                    "(docs/FINDINGS.md)")
_JDK_GOAWAY = ("on JDK 17 and older, one GOAWAY fails every stream on the connection, even "
               "those the server was still going to answer")

_ABORT_CAUSES = ("the page navigated away, a component unmounted, or code aborted a superseded "
                 "request",)
_ABORT_FIXES = ("nothing is wrong on the server; ignore AbortError where the abort was "
                "intended",)

_ENVOY_REASONS: tuple[tuple[str, Frame, str | None, Sender, str, str], ...] = (
    # Http::Utility::resetReasonToString, most specific first
    ("remote refused stream reset", "RST_STREAM", "REFUSED_STREAM", "server",
     "the upstream refused the stream before processing it",
     "Envoy: retry_on: refused-stream is safe for every method"),
    ("local refused stream reset", "RST_STREAM", "REFUSED_STREAM", "proxy/load balancer",
     "Envoy refused the stream itself, over its own concurrency limit",
     "raise the listener's http2_protocol_options.max_concurrent_streams or add capacity"),
    ("remote reset", "RST_STREAM", None, "server",
     "the upstream reset the stream before sending response headers (a crash, a rejected "
     "request or an upstream proxy's kill)",
     "look at the upstream's logs at this time; Envoy retry_on: reset only for idempotent "
     "routes"),
    ("connection termination", "TCP", None, "server",
     "the upstream closed the connection before answering, often because its keep-alive "
     "timeout is shorter than Envoy's idle timeout for the cluster",
     "make the upstream's keep-alive timeout longer than the cluster's "
     "common_http_protocol_options.idle_timeout (1 h by default)"),
    ("local connection failure", "TCP", None, "server",
     "Envoy could not open a connection to the upstream",
     "check that the upstream listens and accepts; see the transport failure reason"),
    ("remote connection failure", "TCP", None, "server",
     "the upstream refused or reset the connection attempt",
     "check that the upstream listens and accepts; see the transport failure reason"),
    ("connection failure", "TCP", None, "server",
     "Envoy could not connect to the upstream",
     "check that the upstream listens and accepts; see the transport failure reason"),
    ("connection timeout", "timeout", None, "proxy/load balancer",
     "Envoy's connect_timeout fired before the upstream accepted the connection",
     "raise the cluster's connect_timeout, or fix the upstream's accept backlog"),
    ("local reset", "RST_STREAM", None, "proxy/load balancer",
     "Envoy reset the upstream stream itself: a timeout, the client went away, or a filter",
     "check the route and stream idle timeouts and whether the client disconnected"),
    ("overflow", "local", None, "proxy/load balancer",
     "an Envoy circuit breaker tripped (the cluster's max_pending_requests, max_requests or "
     "max_connections): nothing was sent upstream",
     "raise the cluster's circuit_breakers thresholds or add upstream capacity; resending is "
     "safe"),
    ("protocol error", "RST_STREAM", "PROTOCOL_ERROR", "proxy/load balancer",
     "Envoy's codec rejected what the upstream sent",
     "look for invalid headers in the upstream's response"),
    ("overload manager reset", "local", None, "proxy/load balancer",
     "Envoy's overload manager shed the request",
     "give Envoy more memory/CPU or lower the load"),
    ("remote error with CONNECT request", "RST_STREAM", "CONNECT_ERROR", "server",
     "the CONNECT tunnel's target failed",
     "check the tunnel target's reachability"),
)

_ENVOY_FLAGS: tuple[tuple[str, Frame, str | None, Sender, str, str], ...] = (
    # source/common/stream_info/utility.cc, ResponseFlagUtils: short flag, what it means, fix
    ("UR", "RST_STREAM", None, "server", "UR (UpstreamRemoteReset): the upstream reset the stream",
     "look at the upstream's logs; Envoy retry_on: reset only for idempotent routes"),
    ("UC", "TCP", None, "server",
     "UC (UpstreamConnectionTermination): the upstream closed the connection",
     "make the upstream's keep-alive timeout longer than the cluster's idle_timeout"),
    ("UF", "TCP", None, "server",
     "UF (UpstreamConnectionFailure): Envoy could not connect upstream",
     "check that the upstream listens; retry_on: connect-failure is safe"),
    ("UO", "local", None, "proxy/load balancer",
     "UO (UpstreamOverflow): a circuit breaker tripped, nothing was sent upstream",
     "raise the cluster's circuit_breakers thresholds or add capacity; resending is safe"),
    ("LR", "RST_STREAM", None, "proxy/load balancer",
     "LR (LocalReset): Envoy reset the stream itself",
     "check the route and stream idle timeouts and whether the client disconnected"),
    ("DR", "RST_STREAM", None, "client itself",
     "DR (DownstreamRemoteReset): the client reset its stream",
     "look at the client's timeouts and cancellations"),
    ("DC", "TCP", None, "client itself",
     "DC (DownstreamConnectionTermination): the client closed its connection",
     "look at the client's timeouts; a client idle timeout shorter than the response time"),
    ("UT", "timeout", None, "proxy/load balancer",
     "UT (UpstreamRequestTimeout): the route timeout fired",
     "raise the route's timeout (15 s by default) only if the upstream is slow by design"),
    ("SI", "timeout", None, "proxy/load balancer",
     "SI (StreamIdleTimeout): the stream idle timeout fired",
     "raise stream_idle_timeout (5 min by default) for long-quiet streams"),
    ("UPE", "RST_STREAM", "PROTOCOL_ERROR", "server",
     "UPE (UpstreamProtocolError): the upstream broke the protocol",
     "look for invalid headers or framing in the upstream's response"),
)

_HAPROXY_STATES: tuple[tuple[str, Frame, str | None, Sender, str, str], ...] = (
    # doc/configuration.txt §8.5, "Session state at disconnection": first letter who/what
    # ended it (C client, S server, c/s their timeouts), second the phase (H headers, D data)
    ("SH", "TCP", None, "server",
     "the server aborted before sending its full response headers, or crashed while "
     "processing the request; with an HTTP/2 frontend haproxy tells the client REFUSED_STREAM "
     "although the backend may have acted (docs/FINDINGS.md)",
     "look at the backend's logs for a crash; haproxy retry-on only for idempotent requests"),
    ("SD", "TCP", None, "server",
     "the connection to the server died during the data transfer (an RST from the server or "
     "an ICMP from a middlebox)",
     "look at the backend for a crash or a killed worker"),
    ("SC", "TCP", None, "server",
     "the server refused the connection or was unreachable",
     "check the backend is up; haproxy retries connection failures itself (retries 3)"),
    ("sH", "timeout", None, "proxy/load balancer",
     "haproxy's timeout server fired before the server sent its response headers",
     "raise `timeout server` only if the backend is known to be slow; otherwise fix it"),
    ("sD", "timeout", None, "proxy/load balancer",
     "haproxy's timeout server fired during the data transfer",
     "raise `timeout server` (or `timeout tunnel` for long streams)"),
    ("CH", "RST_STREAM", None, "client itself",
     "the client aborted before the response headers (an HTTP/2 client sends RST_STREAM, "
     "usually CANCEL, on a timeout or a cancelled call)",
     "compare the client's timeout with the backend's response time"),
    ("CD", "RST_STREAM", None, "client itself",
     "the client aborted during the data transfer (an HTTP/2 client sends RST_STREAM, "
     "usually CANCEL)",
     "check the client's read timeout and whether it closed the response early"),
    ("CR", "RST_STREAM", None, "client itself",
     "the client aborted before sending a complete request",
     "check the client's own errors at that time"),
    ("cD", "timeout", None, "proxy/load balancer",
     "haproxy's timeout client fired during the data transfer: the client stopped reading",
     "raise `timeout client` or find out why the client stalls"),
    ("cR", "timeout", None, "proxy/load balancer",
     "haproxy's timeout http-request fired: no complete request arrived",
     "raise `timeout http-request` if clients are slow to send"),
)


def _envoy_patterns() -> tuple[Pattern, ...]:
    out: list[Pattern] = []
    for reason, frame, code, sender, cause, fix in _ENVOY_REASONS:
        out.append(Pattern(
            "Envoy", f"reset reason: {reason}",
            r"upstream connect error or disconnect/reset before headers\.[^\n]{0,40}?"
            r"reset reason: " + re.escape(reason) + r"(?![a-z ])",
            frame, sender, "Envoy's router answered the client itself, because "
            f"the upstream request failed ({reason}).", code, (cause,), (fix,)))
        out.append(Pattern(
            "Envoy", f"response code details: {reason}",
            r"upstream_reset_(?:before|after)_response_started\{"
            + re.escape(reason.replace(" ", "_")) + r"[,}]",
            frame, sender, f"Envoy's access log: the upstream request failed ({reason}).",
            code, (cause,), (fix,)))
    for flag, frame, code, sender, cause, fix in _ENVOY_FLAGS:
        out.append(Pattern(
            "Envoy", f"response flag {flag}",
            r"\"\s+\d{3}\s+(?:[A-Z]{2,5},)*" + flag + r"(?=[,\s])",
            frame, sender, f"Envoy's access log carries the response flag {flag}.",
            code, (cause,), (fix,)))
    return tuple(out)


def _haproxy_patterns() -> tuple[Pattern, ...]:
    out: list[Pattern] = []
    for state, frame, code, sender, cause, fix in _HAPROXY_STATES:
        out.append(Pattern(
            "HAProxy", f"termination state {state}",
            # httplog: ... %ST %B %CC %CS %tsc %ac/%fc/%bc/%sc/%rc ...; tcplog: ... %B %ts ...
            r"(?:\s(?:-1|\d{3})\s+\+?\d+\s+\S+\s+\S+\s+" + state + r"[-A-Za-z]{2}"
            r"|\s\+?\d+\s+" + state + r")\s+\d+/\d+/\d+/\d+/\+?\d+\s",
            frame, sender, f"haproxy logged the termination state {state}.", code,
            (cause,), (fix,)))
    return tuple(out)


PATTERNS: tuple[Pattern, ...] = (
    # --- Java HttpClient (jdk.internal.net.http) ---------------------------------------------
    Pattern(
        "Java HttpClient", "received_rst_stream",
        r"Received RST_STREAM: (?P<code>" + _JAVA_CODE + r"|Error: \d+)",
        "RST_STREAM", "server",
        "The JDK's HttpClient received RST_STREAM for this request (it prints the code as "
        "prose: 'Stream not processed' is REFUSED_STREAM).",
        fixes=("JDK 21 updates resend REFUSED_STREAM themselves; on older JDKs catch the "
               "IOException and resend what is safe",)),
    Pattern(
        "Java HttpClient", "rst_stream_during_request_body", r"\bRST_STREAM received\b",
        "RST_STREAM", "server",
        "The server reset the stream while the JDK was still sending the request body.",
        causes=("the server answered early and stopped reading the upload (a 4xx such as 401 "
                "or 413, or a proxy body-size limit)",),
        fixes=("send the request without a body to see the server's answer, or check the "
               "proxy's body-size limit (nginx client_max_body_size)",)),
    Pattern(
        "Java HttpClient", "too_many_concurrent_streams", r"too many concurrent streams",
        "local", "client itself",
        "The JDK refused to open another stream: it does not queue requests above the "
        "server's SETTINGS_MAX_CONCURRENT_STREAMS (Http2Connection.reserveStream0). Despite "
        "the IOException, nothing was sent.",
        causes=("more requests in flight on one HttpClient than the server's stream limit "
                "(nginx and ALB 128, haproxy 100)",),
        fixes=("bound the in-flight requests per HttpClient below the server's limit (a "
               "Semaphore around send/sendAsync)",
               f"retry it: {_RETRY_SAFE}",
               "or raise the limit on the server: nginx http2_max_concurrent_streams, "
               "haproxy tune.h2.max-concurrent-streams")),
    Pattern(
        "Java HttpClient", "goaway_received", r"\bGOAWAY received\b",
        "GOAWAY", "server",
        "The server sent GOAWAY and the JDK shut the connection down (JDK 17 "
        "Http2Connection.handleGoAway; the code is not printed).",
        causes=(_JDK_GOAWAY,),
        fixes=("upgrade to JDK 21+: it finishes streams at or below last_stream_id and "
               "resends the rest",
               "raise the server's per-connection request cap (nginx keepalive_requests)")),
    Pattern(
        "Java HttpClient", "eof_reached", r"EOF reached while reading"
        r"|Idle connection closed by HTTP/2 peer",
        "TCP", "server",
        "The connection reached EOF: the peer closed TCP without a GOAWAY for this stream.",
        fixes=("keep jdk.httpclient.keepalive.timeout below the idle timeout of every "
               "middlebox",)),
    # --- Go net/http and golang.org/x/net/http2 ----------------------------------------------
    Pattern(
        "Go x/net/http2", "cannot_retry_after_body_written",
        r"http2: Transport: cannot retry err \[(?P<inner>[^\]\r\n]{1,500})\] after "
        r"Request\.Body was written",
        "RST_STREAM", "unknown",
        "Go's transport would have resent this request, but the body was already consumed "
        "and it had no way to rewind it.",
        causes=("the request body is a plain io.Reader, so Go cannot replay it",),
        fixes=("set Request.GetBody (http.NewRequest does it for bytes.Reader, strings.Reader "
               "and bytes.Buffer bodies), so Go can resend",),
        inner=True),
    Pattern(
        "Go x/net/http2", "stream_error",
        r"stream error: stream ID (?P<sid>\d+); (?P<code>unknown error code 0x[0-9a-fA-F]+|"
        r"[A-Z][A-Z0-9_]+)(?P<cause>; [^\r\n]{1,300})?",
        "RST_STREAM", "server",
        "Go's HTTP/2 transport saw the stream reset.",
        overrides=(Override(
            r"ID \d+; [^;]+; (?!received from peer)", sender="client itself",
            causes=("Go found the server's response invalid and reset the stream itself "
                    "(the text after the code says what was wrong)",)),),
        fixes=("Go resends REFUSED_STREAM by itself when it can rewind the body, so one that "
               "reaches you could not be resent or kept failing",)),
    Pattern(
        "Go x/net/http2", "server_sent_goaway",
        r"http2: server sent GOAWAY and closed the connection; LastStreamID=(?P<last>\d+), "
        r"ErrCode=(?P<code>unknown error code 0x[0-9a-fA-F]+|[A-Z][A-Z0-9_]+|\d+), "
        r"debug=\"(?P<debug>[^\"\r\n]{0,200})\"",
        "GOAWAY", "server",
        "The server sent GOAWAY and then closed the connection before this stream (at or below "
        "LastStreamID) was answered.",
        causes=("the stream was at or below LastStreamID, so the server may have processed "
                "it before closing",),
        overrides=(Override(r"too_many_pings",
                            causes=("the client pings more often than the server allows "
                                    "(debug data too_many_pings)",)),),
        fixes=(_IDEMPOTENT,
               "set http2.Transport.ReadIdleTimeout and PingTimeout so a dead connection is "
               "found before a request goes into it")),
    Pattern(
        "Go x/net/http2", "graceful_shutdown_goaway",
        r"http2: Transport received Server's graceful shutdown GOAWAY",
        "GOAWAY", "server",
        "The stream was above the GOAWAY's last_stream_id: the server never processed it.",
        causes=("a graceful shutdown: a deploy, scale-in, or a proxy's request cap or idle "
                "timeout",),
        fixes=("Go resends this by itself when it can rewind the body; set Request.GetBody",)),
    Pattern(
        "Go x/net/http2", "client_connection_lost", r"http2: client connection lost",
        "timeout", "client itself",
        "Go's HTTP/2 health check sent a PING after ReadIdleTimeout and got no answer within "
        "PingTimeout, so it closed the connection itself (closeForLostPing).",
        causes=("a connection a load balancer or NAT silently forgot (AWS NLB after 350 s "
                "idle)", "a server too overloaded to answer PINGs"),
        fixes=("keep the health check on, it is what found the dead connection; make "
               "IdleConnTimeout shorter than the middlebox's idle timeout",
               _IDEMPOTENT)),
    Pattern(
        "Go x/net/http2", "client_conn_unusable",
        r"http2: client conn (?:is closed|not usable)",
        "local", "client itself",
        "Go tried a connection that had already been closed or marked unusable; nothing was "
        "sent on it.",
        causes=("the connection had received a GOAWAY or been closed between being picked "
                "from the pool and used",),
        fixes=(f"Go resends these by itself; {_RETRY_SAFE}",)),
    Pattern(
        "Go x/net/http2", "unexpected_eof", r"\bunexpected EOF\b",
        "TCP", "server",
        "The connection closed without a GOAWAY (Go turns the bare EOF into io.ErrUnexpectedEOF).",
        fixes=("make http.Transport.IdleConnTimeout shorter than every middlebox's idle "
               "timeout",)),
    # --- OkHttp ------------------------------------------------------------------------------
    Pattern(
        "OkHttp", "stream_reset",
        r"stream was reset: (?P<code>[A-Z][A-Z0-9_]+|\d+)",
        "RST_STREAM", "server",
        "OkHttp's stream ended with a reset (StreamResetException).",
        overrides=(
            Override(r"reset: CANCEL\b", sender="client itself",
                     causes=("OkHttp cancels the stream itself when the call is cancelled or "
                             "a callTimeout/readTimeout fires (Http2ExchangeCodec.cancel)",),
                     fixes=("check the OkHttpClient's callTimeout and readTimeout against the "
                            "server's response time",)),
            Override(r"reset: REFUSED_STREAM\b",
                     causes=("OkHttp also reports streams above a GOAWAY's last_stream_id as "
                             "REFUSED_STREAM without any RST_STREAM on the wire: the server "
                             "said goodbye (a request cap, idle timeout or deploy)",),
                     fixes=("OkHttp retries REFUSED_STREAM itself (retryOnConnectionFailure, "
                            "on by default); seeing it means the retry also failed or the "
                            "body could not be replayed",)),
        )),
    Pattern(
        "OkHttp", "connection_shutdown", r"ConnectionShutdownException",
        "GOAWAY", "server",
        "OkHttp refused to start the stream on a connection that had been shut down (after a "
        "GOAWAY); nothing of this request was sent.",
        fixes=(f"keep retryOnConnectionFailure(true) (the default): {_RETRY_SAFE}",)),
    # --- curl --------------------------------------------------------------------------------
    Pattern(
        "curl", "stream_not_closed_cleanly",
        r"HTTP/2 stream (?P<sid>\d+) was not closed cleanly: (?P<code>[A-Za-z0-9_]+) "
        r"\(err (?P<num>\d+)\)",
        "RST_STREAM", "server",
        "curl's stream ended with a reset carrying an error code (curl exit 92).",
        fixes=("curl resends REFUSED_STREAM on a new connection by itself (since 7.60); "
               "for the rest: --retry with --retry-all-errors for idempotent requests",)),
    Pattern(
        "curl", "stream_was_reset", r"HTTP/2 stream (?P<sid>\d+) was reset\b",
        "RST_STREAM", "server",
        "The server reset the stream with NO_ERROR before the response was complete.",
        code="NO_ERROR",
        causes=("the server stopped reading the upload and reset the stream after answering, "
                "or reset it without answering",)),
    Pattern(
        "curl", "refused_stream_retry",
        r"REFUSED_STREAM, (?:try again on a new connection|retrying a fresh connect)",
        "RST_STREAM", "server", "curl saw REFUSED_STREAM and is resending on a new connection.",
        code="REFUSED_STREAM"),
    Pattern(
        "curl", "received_goaway",
        r"received GOAWAY, error=(?P<num>\d+), last_stream=(?P<last>\d+)",
        "GOAWAY", "server", "curl received a GOAWAY (curl -v prints it)."),
    Pattern(
        "curl", "exit_92", r"curl: \(92\)|Stream error in the HTTP/2 framing layer",
        "RST_STREAM", "server",
        "curl exited with CURLE_HTTP2_STREAM (92): one stream was reset; the message does not "
        "say with which code.",
        fixes=("rerun with -v to see the code and any GOAWAY",)),
    Pattern(
        "curl", "exit_16", r"curl: \(16\)|Error in the HTTP2 framing layer",
        "GOAWAY", "unknown",
        "curl exited with CURLE_HTTP2 (16): the HTTP/2 connection itself failed (a GOAWAY with "
        "an error, a framing error, or a reset stream); the message does not say which.",
        causes=("a proxy or server that breaks HTTP/2 (often a corporate proxy or an old "
                "server)",),
        fixes=("rerun with -v to see frames and the GOAWAY code; as a workaround --http1.1 "
               "(git: git config http.version HTTP/1.1)",)),
    # --- Node.js http2 and undici ------------------------------------------------------------
    Pattern(
        "Node.js http2", "stream_error",
        r"Stream closed with error code (?P<code>NGHTTP2_[A-Z0-9_]+|\d+)",
        "RST_STREAM", "server",
        "Node's http2 stream closed with an RST_STREAM code (ERR_HTTP2_STREAM_ERROR; Node never "
        "reports CANCEL this way).",
        causes=("Node opens streams before the server's SETTINGS arrive, so it can exceed "
                "the server's stream limit on a fresh session (docs/facts.md §7)",),
        fixes=("Node never retries: catch ERR_HTTP2_STREAM_ERROR, resend on a fresh session "
               "(REFUSED_STREAM always; others when idempotent)",
               "wait for the session's 'remoteSettings' event and respect "
               "remoteSettings.maxConcurrentStreams")),
    Pattern(
        "Node.js http2", "session_error",
        r"Session closed with error code (?P<code>NGHTTP2_[A-Z0-9_]+|\d+)",
        "GOAWAY", "server",
        "The server sent GOAWAY with an error code and Node destroyed the session "
        "(ERR_HTTP2_SESSION_ERROR prints the code as a number).",
        fixes=("listen for 'goaway' and 'error' on the session and open a new one",)),
    Pattern(
        "Node.js http2", "goaway_session",
        r"ERR_HTTP2_GOAWAY_SESSION|New streams cannot be created after receiving a GOAWAY",
        "GOAWAY", "server",
        "The session had received a GOAWAY, so Node refused to open this stream; nothing was "
        "sent.",
        fixes=("on the session's 'goaway' event, stop using it and open a new one; "
               f"{_RETRY_SAFE}",)),
    Pattern(
        "Node.js undici", "goaway_frame_received",
        r"HTTP/2: \"GOAWAY\" frame received with code (?P<num>\d+)",
        "GOAWAY", "server", "undici (fetch with allowH2) received a GOAWAY and failed the "
        "requests on that connection.",
        fixes=("undici opens a new connection for the next request; resend what is safe",)),
    Pattern(
        "Node.js undici", "other_side_closed", r"other side closed|UND_ERR_SOCKET",
        "TCP", "server",
        "undici's socket was closed by the peer (SocketError: other side closed).",
        fixes=("keep the Agent's keepAliveTimeout below the server's and the load "
               "balancer's idle timeout",)),
    # --- .NET HttpClient (System.Net.Http) ---------------------------------------------------
    Pattern(
        ".NET HttpClient", "server_reset_stream",
        r"The HTTP/2 server reset the stream\. HTTP/2 error code '(?P<code>[^'\r\n]{1,40})' "
        r"\((?P<num>0x[0-9a-fA-F]+)\)",
        "RST_STREAM", "server", ".NET received RST_STREAM for this request "
        "(HttpProtocolException.CreateHttp2StreamException).",
        fixes=("HttpProtocolException.ErrorCode carries the code for a retry decision",)),
    Pattern(
        ".NET HttpClient", "server_closed_connection",
        r"The HTTP/2 server closed the connection\. HTTP/2 error code "
        r"'(?P<code>[^'\r\n]{1,40})' \((?P<num>0x[0-9a-fA-F]+)\)",
        "GOAWAY", "server", "The server sent GOAWAY with this code and closed the connection.",
        fixes=("set SocketsHttpHandler.PooledConnectionIdleTimeout below the server's idle "
               "timeout",)),
    Pattern(
        ".NET HttpClient", "invalid_data_on_connection",
        r"The HTTP/2 server sent invalid data on the connection\. HTTP/2 error code "
        r"'(?P<code>[^'\r\n]{1,40})' \((?P<num>0x[0-9a-fA-F]+)\)",
        "local", "client itself",
        ".NET found the server's frames invalid and gave up on the connection itself; the "
        "code is the one .NET assigned to the violation, not one the server sent.",
        causes=("a proxy or server with a broken HTTP/2 implementation",
                "something that is not HTTP/2 answering on an h2c port (an HTTP/1.1 server)"),
        fixes=("run `h2guard doctor trace URL` against the endpoint to see the offending "
               "frame", _IDEMPOTENT)),
    Pattern(
        ".NET HttpClient", "response_ended_prematurely", r"The response ended prematurely",
        "TCP", "server", "The connection closed before the response was complete.",
        fixes=("set SocketsHttpHandler.PooledConnectionIdleTimeout below the load balancer's "
               "idle timeout",)),
    Pattern(
        ".NET HttpClient", "request_aborted", r"The request was aborted\.",
        "GOAWAY", "server",
        "The request was aborted without an HTTP/2 code; .NET uses this for streams a GOAWAY "
        "left unprocessed, and retries those once itself.",
        causes=("a GOAWAY whose last_stream_id was below this stream: the request was not "
                "processed",),
        fixes=("look at the inner exception for the code; set "
               "SocketsHttpHandler.EnableMultipleHttp2Connections = true",)),
    # --- gRPC --------------------------------------------------------------------------------
    Pattern(
        "gRPC Java", "rst_stream_closed_stream",
        r"RST_STREAM closed stream\.[\s\S]{0,200}?(?:HTTP/2 error code: (?P<code>[A-Z0-9_]+)|"
        r"Unrecognized HTTP/2 error code: (?P<num>\d+))",
        "RST_STREAM", "server", "grpc-java (Netty) received RST_STREAM for this call "
        "(NettyClientHandler.onRstStreamRead).", grpc=True),
    Pattern(
        "gRPC Java", "goaway",
        r"(?P<kind>Abrupt GOAWAY closed (?:unsent|sent) stream|GOAWAY shut down transport|"
        r"Connection closed after GOAWAY|GOAWAY closed buffered stream)\.[\s\S]{0,200}?"
        r"(?:HTTP/2 error code: (?P<code>[A-Z0-9_]+)|Unrecognized HTTP/2 error code: "
        r"(?P<num>\d+))",
        "GOAWAY", "server", "grpc-java received a GOAWAY (NettyClientHandler.goingAway).",
        overrides=(
            Override(r"closed unsent stream", causes=(
                "the call was never sent before the GOAWAY: gRPC retries it transparently",)),
            Override(r"too_many_pings", causes=(
                "the client's keepAliveTime is shorter than the server allows "
                "(debug data too_many_pings)",)),
        ), grpc=True),
    Pattern(
        "gRPC Go", "stream_terminated_by_rst_stream",
        r"stream terminated by RST_STREAM with error code: (?P<code>unknown error code "
        r"0x[0-9a-fA-F]+|[A-Z][A-Z0-9_]+)",
        "RST_STREAM", "server",
        "grpc-go received RST_STREAM for this call (http2Client.handleRSTStream).", grpc=True),
    Pattern(
        "gRPC Go", "goaway_too_many_pings",
        r"GoAway with error code ENHANCE_YOUR_CALM and debug data equal to ASCII "
        r"\"too_many_pings\"",
        "GOAWAY", "server", "The server told grpc-go it pings too often and closed the "
        "connection.", code="ENHANCE_YOUR_CALM",
        causes=("keepalive.ClientParameters.Time below the server's "
                "keepalive.EnforcementPolicy.MinTime (5 min by default)",),
        fixes=("raise the client's keepalive Time to at least the server's MinTime, or lower "
               "MinTime on the server",), grpc=True),
    Pattern(
        "gRPC Go", "keepalive_ping_timeout",
        r"keepalive ping failed to receive ACK within timeout",
        "timeout", "client itself",
        "grpc-go's keepalive PING got no ACK within Timeout, so it closed the connection.",
        causes=("a connection a middlebox silently dropped", "a server too busy to answer"),
        fixes=("keep keepalive on; check the middleboxes' idle timeouts",)),
    Pattern(
        "gRPC C-core", "received_rst_stream_with_error_code",
        r"(?:Received RST_STREAM|Stream removed)[^\n]{0,60}?error code (?P<num>\d+)",
        "RST_STREAM", "server",
        "gRPC's C core (Python, Ruby, PHP, C++) received RST_STREAM for this call "
        "(chttp2 frame_rst_stream.cc).", grpc=True),
    Pattern(
        "gRPC C-core", "stream_removed", r"\bStream removed\b",
        "RST_STREAM", "unknown",
        "gRPC's C core removed the stream from the transport; the text does not say which "
        "frame or code caused it.",
        causes=("the transport closed under the call (a GOAWAY or a dropped connection)",),
        fixes=("set GRPC_VERBOSITY=debug GRPC_TRACE=http to see the frames",), grpc=True),
    # --- httpx / httpcore / h2 ---------------------------------------------------------------
    Pattern(
        "httpx / httpcore / h2", "stream_reset",
        r"<StreamReset stream_id:(?P<sid>\d+), error_code:(?P<code>[\w.]+), "
        r"remote_reset:(?P<remote>True|False)>",
        "RST_STREAM", "server",
        "h2 reported the stream reset and httpcore raised it as RemoteProtocolError.",
        overrides=(Override(
            r"remote_reset:False", sender="client itself",
            causes=("h2 reset the stream itself because the peer broke the protocol on it; "
                    "the 'Remote' in RemoteProtocolError is about the peer's mistake, the "
                    "RST_STREAM was sent by this client",)),),
        fixes=("httpx does not retry REFUSED_STREAM; " + _H2GUARD,)),
    Pattern(
        "httpx / httpcore / h2", "connection_terminated",
        r"<ConnectionTerminated error_code:(?P<code>[\w.]+), last_stream_id:(?P<last>\d+), "
        r"additional_data:(?P<data>[^>\r\n]{0,80})>",
        "GOAWAY", "server",
        "The server sent GOAWAY and h2 put the whole connection in CLOSED: even streams at or "
        "below last_stream_id, which the server would have answered, are killed "
        "(docs/facts.md §4).",
        overrides=(Override(r"last_stream_id:2147483647",
                            causes=("the first of a two-step GOAWAY (2^31-1): the server "
                                    "started draining and would have answered every open "
                                    "stream (nghttpx, Envoy)",)),),
        fixes=(_H2GUARD,)),
    Pattern(
        "httpx / httpcore / h2", "invalid_input_in_closed_state",
        r"Invalid input ConnectionInputs\.(?P<input>[A-Z_]+) in state ConnectionState\.CLOSED",
        "GOAWAY", "server",
        "A GOAWAY had put h2's connection in CLOSED, and the next frame of a stream still in "
        "flight was refused by h2's state machine (docs/facts.md §4).",
        causes=("a proxy closing the connection at its request cap (nginx keepalive_requests "
                "1000) while requests were in flight",),
        fixes=(_H2GUARD, _IDEMPOTENT)),
    Pattern(
        "httpx / httpcore / h2", "max_outbound_streams",
        r"Max outbound streams is (?P<max>\d+), (?P<open>\d+) open",
        "local", "client itself",
        "h2 refused to open another stream: the connection already had as many as the "
        "server's SETTINGS_MAX_CONCURRENT_STREAMS (TooManyStreamsError). Nothing was sent.",
        causes=("more concurrent requests on one connection than the server allows",),
        fixes=(f"retry it: {_RETRY_SAFE}", _H2GUARD,
               "or cap concurrency below the server's limit")),
    Pattern(
        "httpx / httpcore / h2", "server_disconnected",
        r"Server disconnected without sending a response\.|RemoteProtocolError: Server "
        r"disconnected\b",
        "TCP", "server",
        "The server closed the connection without a response (and without a GOAWAY for this "
        "request).",
        fixes=("set httpx.Limits(keepalive_expiry=...) below the server's and load "
               "balancer's idle timeout",)),
    # --- Rust h2 / hyper ---------------------------------------------------------------------
    Pattern(
        "Rust h2 / hyper", "stream_error_received",
        r"stream error received: (?P<code>" + _RUST_CODE + r")",
        "RST_STREAM", "server",
        "The Rust h2 crate received RST_STREAM (it prints the code's description).",
        fixes=("hyper and reqwest do not resend on their own; retry what is safe",)),
    Pattern(
        "Rust h2 / hyper", "stream_error_detected",
        r"stream error (?:detected|sent by user): (?P<code>" + _RUST_CODE + r")",
        "RST_STREAM", "client itself",
        "The Rust h2 crate reset the stream itself: it found a protocol violation, or the "
        "application dropped the request."),
    Pattern(
        "Rust h2 / hyper", "connection_error_received",
        r"connection error received: (?P<code>" + _RUST_CODE + r")",
        "GOAWAY", "server", "The Rust h2 crate received a GOAWAY with this code."),
    Pattern(
        "Rust h2 / hyper", "connection_error_detected",
        r"connection error (?:detected|sent by user): (?P<code>" + _RUST_CODE + r")",
        "GOAWAY", "client itself", "The Rust h2 crate sent GOAWAY itself with this code."),
    Pattern(
        "Rust h2 / hyper", "incomplete_message",
        r"connection closed before message completed",
        "TCP", "server", "hyper's connection closed before the response was complete "
        "(IncompleteMessage).",
        fixes=("set the client pool's idle timeout (pool_idle_timeout) below the server's",)),
    # --- Envoy (generated from the tables above) ---------------------------------------------
    *_envoy_patterns(),
    # --- nginx error log ---------------------------------------------------------------------
    Pattern(
        "nginx", "upstream_prematurely_closed",
        r"upstream prematurely closed connection(?: while (?P<phase>[a-z ]{3,60}))?",
        "TCP", "server",
        "nginx's upstream closed the connection before its response was complete.",
        overrides=(Override(r"reading response header",
                            causes=("the upstream closed an idle keep-alive connection just as "
                                    "nginx reused it (its keep-alive timeout is shorter than "
                                    "nginx's upstream keepalive_timeout)",)),),
        fixes=("set the upstream block's keepalive_timeout below the upstream server's own "
               "idle timeout",
               "proxy_next_upstream error only resends idempotent requests by default: leave "
               "non_idempotent off")),
    Pattern(
        "nginx", "http2_flood_detected", r"http2 flood detected",
        "GOAWAY", "proxy/load balancer",
        "nginx judged the client's frames a flood and closed the connection with "
        "GOAWAY(NO_ERROR).", code="NO_ERROR",
        causes=("far more frame overhead than payload from one client (tiny frames, many "
                "PINGs, SETTINGS or resets)",),
        fixes=("find the client that sends floods of small frames; nginx's thresholds are "
               "fixed",)),
    Pattern(
        "nginx", "client_canceled_stream", r"client canceled stream (?P<sid>\d+)",
        "RST_STREAM", "client itself",
        "The client cancelled its own stream with RST_STREAM(CANCEL).", code="CANCEL"),
    Pattern(
        "nginx", "client_refused_stream", r"client refused stream (?P<sid>\d+)",
        "RST_STREAM", "client itself", "The client refused a stream (REFUSED_STREAM).",
        code="REFUSED_STREAM"),
    Pattern(
        "nginx", "client_terminated_stream_internal",
        r"client terminated stream (?P<sid>\d+) due to internal error",
        "RST_STREAM", "client itself", "The client reset its stream with INTERNAL_ERROR.",
        code="INTERNAL_ERROR"),
    Pattern(
        "nginx", "client_terminated_stream_with_status",
        r"client terminated stream (?P<sid>\d+) with status (?P<num>\d+)",
        "RST_STREAM", "client itself", "The client reset its stream with this code."),
    Pattern(
        "nginx", "client_prematurely_closed_stream", r"client prematurely closed stream",
        "RST_STREAM", "client itself",
        "The client ended or reset its stream before sending the whole request body.",
        causes=("the client gave up during the upload (a timeout or a cancelled request)",
                "a request body shorter than its Content-Length"),
        fixes=("look at the client's own error and timeouts: nginx only sees the result",)),
    Pattern(
        "nginx", "concurrent_streams_exceeded", r"concurrent streams exceeded (?P<max>\d+)",
        "RST_STREAM", "proxy/load balancer",
        "The client opened more streams than nginx's http2_max_concurrent_streams and nginx "
        "refused the extra one.", code="REFUSED_STREAM",
        fixes=("raise http2_max_concurrent_streams (128 by default), or make the client "
               "respect the advertised SETTINGS_MAX_CONCURRENT_STREAMS",)),
    Pattern(
        "nginx", "too_many_streams_at_once", r"client sent too many streams at once",
        "RST_STREAM", "proxy/load balancer",
        "The client opened streams faster than nginx accepts new ones.", code="REFUSED_STREAM"),
    Pattern(
        "nginx", "data_before_settings_ack",
        r"client sent stream with data before settings were acknowledged",
        "RST_STREAM", "proxy/load balancer",
        "The client sent a request body before acknowledging nginx's SETTINGS while "
        "http2_body_preread_size is below 64k, so nginx refused the stream.",
        code="REFUSED_STREAM",
        fixes=("leave http2_body_preread_size at 64k or more",)),
    Pattern(
        "nginx", "upstream_invalid_http2_table_index",
        r"upstream sent invalid http2 table index",
        "local", "proxy/load balancer",
        "nginx (grpc_pass) could not decode the upstream's HTTP/2 header block and answered "
        "the client 502 itself.",
        causes=("the upstream does not speak HTTP/2 on that port, often a TLS mismatch "
                "(grpc:// against a TLS upstream, or grpcs:// against a plain one)",
                "the upstream's HPACK encoder uses a dynamic table nginx did not grant"),
        fixes=("match grpc_pass's scheme to the upstream (grpcs:// for TLS)",)),
    # --- HAProxy (generated) -----------------------------------------------------------------
    *_haproxy_patterns(),
    # --- Chromium (Chrome, Edge, Electron) ---------------------------------------------------
    Pattern(
        "Chromium", "err_http2_server_refused_stream", r"ERR_HTTP2_SERVER_REFUSED_STREAM",
        "RST_STREAM", "server",
        "The server refused the stream unprocessed (REFUSED_STREAM, or a GOAWAY below it); "
        "Chromium may retry it.", code="REFUSED_STREAM"),
    Pattern(
        "Chromium", "err_http2_ping_failed", r"ERR_HTTP2_PING_FAILED",
        "timeout", "client itself",
        "Chromium's PING on the connection got no answer, so it closed the connection."),
    Pattern(
        "Chromium", "err_http2_protocol_error", r"ERR_HTTP2_PROTOCOL_ERROR",
        "RST_STREAM", "unknown",
        "Chromium reports a PROTOCOL_ERROR: the server reset the stream with it, or Chromium "
        "found the server's frames invalid; the message does not say which.",
        code="PROTOCOL_ERROR",
        fixes=("chrome://net-export shows which side sent it",)),
    Pattern(
        "Chromium", "err_http_1_1_required", r"ERR_HTTP_1_1_REQUIRED",
        "RST_STREAM", "server", "The server asked for HTTP/1.1.", code="HTTP_1_1_REQUIRED"),
    Pattern(
        "Chromium", "abort_signal_timeout", r"TimeoutError: signal timed out",
        "timeout", "client itself",
        "AbortSignal.timeout() fired and the browser cancelled the fetch: over HTTP/2 it sends "
        "RST_STREAM(CANCEL) itself.", code="CANCEL",
        fixes=("raise the AbortSignal.timeout() value if the server is slow by design",)),
    Pattern(
        "Chromium", "fetch_aborted",
        r"AbortError\]?: (?:signal is aborted without reason|The user aborted a request)",
        "RST_STREAM", "client itself",
        "The page aborted the fetch (AbortController.abort()); over HTTP/2 the browser sends "
        "RST_STREAM(CANCEL) itself.", code="CANCEL",
        causes=_ABORT_CAUSES, fixes=_ABORT_FIXES),
    Pattern(
        "fetch (Firefox, Node.js)", "fetch_aborted",
        r"AbortError\]?: (?:The|This) operation was aborted",
        "RST_STREAM", "client itself",
        "The code aborted the fetch (AbortController.abort()); over HTTP/2 the client sends "
        "RST_STREAM(CANCEL) itself.", code="CANCEL",
        causes=_ABORT_CAUSES, fixes=_ABORT_FIXES),
    # --- generic fallbacks: an HTTP/2 word is present, but no known program's shape ----------
    Pattern(
        "generic", "rst_stream_with_code_number",
        r"\bRST_STREAM\b[^\r\n]{0,80}?\b(?:error[ _]?code|err(?:or)?|code)\s*[=:]?\s*"
        r"(?P<num>0x[0-9a-fA-F]+|\d+)\b",
        "RST_STREAM", "unknown", "An RST_STREAM with this code number is mentioned.",
        ignore_case=True),
    Pattern(
        "generic", "goaway_with_code_number",
        r"\bGOAWAY\b[^\r\n]{0,80}?\b(?:error[ _]?code|err(?:or)?|code)\s*[=:]?\s*"
        r"(?P<num>0x[0-9a-fA-F]+|\d+)\b",
        "GOAWAY", "unknown", "A GOAWAY with this code number is mentioned.",
        ignore_case=True),
    Pattern(
        "generic", "rst_stream_with_code",
        r"\bRST_STREAM\b[^\r\n]{0,80}?\b(?:ErrorCodes\.|NGHTTP2_)?(?P<code>" + _NAMES + r")\b",
        "RST_STREAM", "unknown", "An RST_STREAM with this code is mentioned."),
    Pattern(
        "generic", "goaway_with_code",
        r"\bGOAWAY\b[^\r\n]{0,80}?\b(?:ErrorCodes\.|NGHTTP2_)?(?P<code>" + _NAMES + r")\b",
        "GOAWAY", "unknown", "A GOAWAY with this code is mentioned."),
    Pattern("generic", "goaway", r"\bGOAWAY\b", "GOAWAY", "unknown",
            "A GOAWAY is mentioned, without a code."),
    Pattern("generic", "rst_stream", r"\bRST_STREAM\b", "RST_STREAM", "unknown",
            "An RST_STREAM is mentioned, without a code."),
    Pattern("generic", "stream_was_reset", r"\bstream (?:\d+ )?was reset\b", "RST_STREAM",
            "unknown", "A stream reset is mentioned, without a code.", ignore_case=True),
    Pattern("generic", "connection_reset_by_peer", r"connection reset by peer|ECONNRESET",
            "TCP", "unknown", "The peer (or a middlebox) reset the TCP connection.",
            ignore_case=True),
)


# --- code resolution -------------------------------------------------------------------------


def resolve_code(token: str) -> int | None:
    """The error code a program printed: a name (``REFUSED_STREAM``, ``ErrorCodes.CANCEL``,
    ``NGHTTP2_REFUSED_STREAM``), a number (``7``, ``0x7``, ``Error: 42``, ``unknown error code
    0x2a``) or prose (``Stream not processed``). ``None`` when the token says nothing usable.

    Any 32-bit number is accepted: unknown codes are legal on the wire (RFC 9113 §7).
    """
    text = token.strip().strip("'\"`.,;:()[]{} ")
    if not text:
        return None
    number: int | None = None
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        number = int(text, 16)
    elif re.fullmatch(r"\d+", text):
        number = int(text, 10)
    else:
        m = re.fullmatch(r"(?:unknown error code|Error:)\s*(0x[0-9a-fA-F]+|\d+)", text, re.I)
        if m:
            number = int(m.group(1), 0)
    if number is not None:
        return number if 0 <= number <= 0xFFFFFFFF else None
    name = text.upper()
    for prefix in ("ERRORCODES.", "NGHTTP2_", "HTTP2ERROR.", "ERRORCODE."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    if name in _BY_NAME:
        return _BY_NAME[name]
    low = text.lower()
    for prose, value in _PROSE:
        if low.startswith(prose):
            return value
    return None


# --- explaining one message ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Explanation:
    """What a recognised message means. ``code`` is the RFC 9113 name, ``UNKNOWN(0x..)`` for a
    code outside RFC 9113 (treated like INTERNAL_ERROR), or ``None`` when the text has none."""

    frame: Frame
    code: str | None
    code_value: int | None
    sender: Sender
    causes: tuple[str, ...]
    fixes: tuple[str, ...]
    program: str
    pattern: str
    excerpt: str
    what: str

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape: frame, code (the RFC 9113 name, or null: an unknown code is
        still in ``code_value``), code_value, sender, causes, fixes, matched."""
        known = self.code_value is not None and self.code_value in ERROR_CODES
        return {"frame": self.frame, "code": self.code if known else None,
                "code_value": self.code_value, "sender": self.sender,
                "causes": list(self.causes), "fixes": list(self.fixes),
                "matched": {"program": self.program, "pattern": self.pattern,
                            "text": self.excerpt}}


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: Pattern
    regex: re.Pattern[str]
    overrides: tuple[tuple[re.Pattern[str], Override], ...]


def _compile(p: Pattern) -> _Rule:
    flags = re.IGNORECASE if p.ignore_case else 0
    return _Rule(p, re.compile(p.regex, flags),
                 tuple((re.compile(o.when), o) for o in p.overrides))


_RULES: tuple[_Rule, ...] = tuple(_compile(p) for p in PATTERNS)

# What each code usually means in production, beyond h2guard.codes (docs/facts.md §2-§4).
_MORE_BY_CODE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "NO_ERROR": (
        ("a deploy, scale-in or restart draining the server",
         "an idle timeout on the server or a middlebox (nginx keepalive_timeout 75 s, "
         "ALB 60 s, haproxy timeout client)"),
        ("raise the proxy's per-connection request cap (nginx keepalive_requests, 1000 by "
         "default)",
         "keep the client's idle timeout below every middlebox's (docs/facts.md §3)")),
    "PROTOCOL_ERROR": (
        ("a connection-specific header (Connection, Keep-Alive, Proxy-Connection, "
         "Transfer-Encoding, Upgrade) or an upper-case header name sent over HTTP/2",),
        ("drop connection-specific headers and send header names in lower case",
         "read the server's or proxy's log at the same moment: it names the rejected field")),
    "INTERNAL_ERROR": (
        ("the proxy's upstream connection failed part-way through the response",),
        ("read the server's or proxy's log at the same moment",)),
    "FLOW_CONTROL_ERROR": (
        ("a bug in one of the two HTTP/2 stacks",),
        ("upgrade both HTTP/2 stacks; `h2guard doctor trace` shows the window updates",)),
    "SETTINGS_TIMEOUT": (
        ("a middlebox that delays or drops small frames",),
        ("check what sits between client and server",)),
    "STREAM_CLOSED": (
        ("the client kept sending the body after the server had answered and closed the "
         "stream (an early 4xx)",),
        ("harmless if the response had arrived: stop sending once it did",)),
    "FRAME_SIZE_ERROR": (
        ("something that is not HTTP/2 on the port, or a SETTINGS_MAX_FRAME_SIZE mismatch",),
        ("run `h2guard doctor probe` against the endpoint",)),
    "REFUSED_STREAM": (
        ("a client that opens streams before the server's SETTINGS arrived (Node http2 does, "
         "docs/facts.md §7)",),
        ("cap in-flight requests per connection at the server's SETTINGS_MAX_CONCURRENT_STREAMS "
         "(nginx 128, haproxy 100, ALB 128)",)),
    "CANCEL": (
        ("a client timeout or cancelled call: the client sends CANCEL itself",
         "a proxy cancelling the stream because its other side went away"),
        ("compare the client's timeouts (read timeout, gRPC deadline, AbortController) with "
         "the server's response time",)),
    "COMPRESSION_ERROR": (
        ("a bug in one HPACK implementation, or a middlebox that altered frames",),
        ("this connection cannot be saved: open a new one, and upgrade the HTTP/2 library",)),
    "CONNECT_ERROR": (
        ("the CONNECT proxy's connection to the tunnel target failed",),
        ("check the tunnel target from the proxy",)),
    "ENHANCE_YOUR_CALM": (
        ("PINGs more frequent than the server allows (gRPC keepalive; debug data "
         "too_many_pings)",
         "many streams opened and cancelled at once (rapid-reset protection, CVE-2023-44487)"),
        ("raise the client's keepalive interval (gRPC: at least the server's minimum, "
         "5 min by default)",)),
    "INADEQUATE_SECURITY": (
        ("TLS older than 1.2, or a cipher on RFC 9113's block list (§9.2.2)",),
        ("use TLS 1.2+ with an AEAD cipher (ECDHE with AES-GCM or ChaCha20)",)),
    "HTTP_1_1_REQUIRED": (
        ("a Kestrel endpoint with Http1AndHttp2 and no TLS, or a route needing TLS "
         "renegotiation",),
        ("for plaintext gRPC on Kestrel set Protocols = Http2, or use TLS",)),
}

_BY_FRAME: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "TCP": (
        ("a load balancer or NAT idle timeout shorter than the client's (an AWS NLB forgets "
         "the flow after 350 s and answers the next packet with a TCP RST)",
         "the server process crashed or was restarted",
         "a proxy closing the connection without a GOAWAY"),
        ("keep client idle timeouts below every middlebox's (docs/facts.md §3)",
         "turn on PING health checks so a dead connection is found before a request goes "
         "into it",
         _IDEMPOTENT)),
    "timeout": (
        ("a slow or overloaded server or upstream",
         "a dead connection nothing noticed (no PING health check)"),
        ("raise the timeout only when the server is slow by design; otherwise find out why "
         "it stalls",)),
    "local": ((), ()),  # every "local" pattern says itself what it was and whether it is safe
    "GOAWAY": (
        ("a proxy's per-connection request cap or idle timeout",
         "a deploy or restart draining the server"),
        ("streams above last_stream_id were not processed and are safe to resend on a new "
         "connection (RFC 9113 §6.8)",)),
    "RST_STREAM": (  # only used when the text carries no code
        ("the peer rejected or abandoned this one request; its code, not shown here, would "
         "say why",),
        ("find the code: the client's HTTP/2 debug log or `h2guard doctor trace URL` shows "
         "the RST_STREAM frame",
         _IDEMPOTENT)),
}

# gRPC status per RST_STREAM code: grpc-go's http2ErrConvTab (grpc-java's
# GrpcUtil.Http2Error and the C core agree but where noted).
_GRPC_STATUS: dict[str, str] = {
    "NO_ERROR": "INTERNAL (UNAVAILABLE in grpc-java)", "PROTOCOL_ERROR": "INTERNAL",
    "INTERNAL_ERROR": "INTERNAL", "FLOW_CONTROL_ERROR": "RESOURCE_EXHAUSTED (INTERNAL in Java)",
    "SETTINGS_TIMEOUT": "INTERNAL", "STREAM_CLOSED": "INTERNAL", "FRAME_SIZE_ERROR": "INTERNAL",
    "REFUSED_STREAM": "UNAVAILABLE",
    "CANCEL": "CANCELLED (DEADLINE_EXCEEDED if the deadline had passed)",
    "COMPRESSION_ERROR": "INTERNAL", "CONNECT_ERROR": "INTERNAL",
    "ENHANCE_YOUR_CALM": "RESOURCE_EXHAUSTED", "INADEQUATE_SECURITY": "PERMISSION_DENIED",
    "HTTP_1_1_REQUIRED": "INTERNAL (UNKNOWN in grpc-java)",
}


def _first_match(text: str, skip: _Rule | None = None) -> tuple[_Rule, re.Match[str]] | None:
    for rule in _RULES:
        if rule is skip:
            continue
        m = rule.regex.search(text)
        if m is not None:
            return rule, m
    return None


def _code_of(rule: _Rule, m: re.Match[str]) -> int | None:
    groups = m.groupdict()
    if groups.get("num"):
        value = resolve_code(groups["num"])
        if value is not None:
            return value
    if groups.get("code"):
        value = resolve_code(groups["code"])
        if value is not None:
            return value
    if rule.pattern.code is not None:
        return _BY_NAME[rule.pattern.code]
    return None


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return tuple(seen)


def _excerpt(text: str, m: re.Match[str]) -> str:
    piece = " ".join(m.group(0).split())
    return piece if len(piece) <= 300 else piece[:297] + "..."


def explain(text: str, *, behind: str | None = None) -> Explanation | None:
    """Explain one error message, or ``None`` when nothing in it is recognised.

    ``behind`` names the proxy in front of the server, when known: with ``haproxy``
    REFUSED_STREAM is no longer taken as proof that the request went unprocessed.
    """
    found = _first_match(text)
    if found is None:
        return None
    rule, m = found
    p = rule.pattern
    frame: Frame = p.frame
    sender: Sender = p.sender
    value = _code_of(rule, m)
    causes: list[str] = []
    fixes: list[str] = []
    matched = m.group(0)
    for regex, o in rule.overrides:
        if regex.search(matched):
            frame = o.frame or frame
            sender = o.sender or sender
            if o.code is not None:
                value = _BY_NAME[o.code]
            causes.extend(o.causes)
            fixes.extend(o.fixes)
    causes.extend(p.causes)
    fixes.extend(p.fixes)
    pattern_name = p.name
    if p.inner and m.groupdict().get("inner"):
        inner = explain(m.group("inner"), behind=behind)
        if inner is not None:
            frame, sender = inner.frame, inner.sender
            value = inner.code_value
            causes.extend(inner.causes)
            fixes.extend(inner.fixes)
            pattern_name = f"{p.name} (inner: {inner.program}, {inner.pattern})"
    name = code_name(value) if value is not None else None
    if value is not None:
        entry = error_code(value)
        if value not in ERROR_CODES:
            causes.append(f"{name} is not an RFC 9113 code; it is treated like INTERNAL_ERROR "
                          "(RFC 9113 §7)")
        more_causes, more_fixes = _MORE_BY_CODE.get(entry.name, ((), ()))
        causes.extend(entry.causes)
        causes.extend(more_causes)
        fixes.extend(entry.fixes)
        fixes.extend(more_fixes)
        if p.grpc and entry.name in _GRPC_STATUS:
            causes.append(f"gRPC turns RST_STREAM {entry.name} into status "
                          f"{_GRPC_STATUS[entry.name]}; only streams the server never "
                          "processed are retried transparently (gRFC A6), the rest need a "
                          "retryPolicy in the service config")
    if (frame != "RST_STREAM" or value is None) and not (
            frame == "TCP" and sender == "client itself"):
        frame_causes, frame_fixes = _BY_FRAME[frame]
        causes.extend(frame_causes)
        fixes.extend(frame_fixes)
    if name == "REFUSED_STREAM" and sender in ("server", "unknown"):
        haproxy = (behind is not None and "haproxy" in behind.lower()) or bool(
            re.search(r"haproxy", text, re.IGNORECASE))
        if haproxy:
            causes.insert(0, _HAPROXY_REFUSED)
            fixes = [f for f in fixes if "always safe" not in f]
            fixes.insert(0, "behind haproxy, resend only idempotent or keyed requests on "
                            "REFUSED_STREAM (h2guard: trust_refused_stream=False)")
        else:
            causes.append(_HAPROXY_REFUSED)
    return Explanation(frame=frame, code=name, code_value=value, sender=sender,
                       causes=_dedupe(causes), fixes=_dedupe(fixes), program=p.program,
                       pattern=pattern_name, excerpt=_excerpt(text, m),
                       what=_what(frame, sender, name, value, p.what))


_FRAME_TEXT: dict[str, str] = {
    "RST_STREAM": "An RST_STREAM frame ended this one stream; the connection itself stayed up.",
    "GOAWAY": "A GOAWAY frame told the client to stop opening streams on this connection.",
    "TCP": "The TCP connection closed or was reset with no HTTP/2 frame saying why.",
    "timeout": "Nothing arrived in time, and the client gave up waiting.",
    "local": "The client raised this itself: nothing for this request went over the wire.",
}
_SENDER_TEXT: dict[str, str] = {
    "server": "The server, or the proxy/load balancer in front of it that ends the client's "
              "HTTP/2 connection.",
    "proxy/load balancer": "A proxy or load balancer between the client and the "
                           "application.",
    "client itself": "The client side: the HTTP client or the application using it.",
    "unknown": "This text alone does not tell.",
}


def _what(frame: str, sender: str, name: str | None, value: int | None, detail: str) -> str:
    head = _FRAME_TEXT[frame]
    if frame == "local" and sender == "proxy/load balancer":
        head = "The proxy raised this itself: nothing for this request went to the upstream."
    code = ""
    if name is not None and value is not None:
        code = f" Code {name} (0x{value:x}): {error_code(value).meaning}."
    return f"{head}{code} {detail}".strip()


# --- summarising a log -----------------------------------------------------------------------

_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_TIMESTAMPS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})[T ](?P<h>\d{2}):(?P<mi>\d{2})"),
    re.compile(r"(?P<y>\d{4})/(?P<mo>\d{2})/(?P<d>\d{2}) (?P<h>\d{2}):(?P<mi>\d{2})"),
    re.compile(r"\[(?P<d>\d{2})/(?P<mon>[A-Z][a-z]{2})/(?P<y>\d{4}):(?P<h>\d{2}):(?P<mi>\d{2})"),
)


def _minute(line: str) -> str | None:
    """The minute of the first ISO-8601, nginx-error-log or common-log timestamp in ``line``
    (as ``YYYY-MM-DDTHH:MM``, time zone ignored), or ``None``."""
    best: re.Match[str] | None = None
    for regex in _TIMESTAMPS:
        m = regex.search(line, 0, 200)
        if m is not None and (best is None or m.start() < best.start()):
            best = m
    if best is None:
        return None
    g = best.groupdict()
    month = int(g["mo"]) if g.get("mo") else _MONTHS.get(g.get("mon") or "", 0)
    if not 1 <= month <= 12:
        return None
    return f"{g['y']}-{month:02d}-{g['d']}T{g['h']}:{g['mi']}"


@dataclass(slots=True)
class LogSummary:
    """Counts over a log: by program, frame, code and top cause, and per minute when the
    lines carry timestamps. Bounded: at most ``MAX_BUCKETS`` minutes are kept."""

    lines: int = 0
    matched: int = 0
    truncated: int = 0
    by_program: Counter[str] = field(default_factory=Counter)
    by_frame: Counter[str] = field(default_factory=Counter)
    by_code: Counter[str] = field(default_factory=Counter)
    by_cause: Counter[str] = field(default_factory=Counter)
    by_sender: Counter[str] = field(default_factory=Counter)
    by_minute: Counter[str] = field(default_factory=Counter)
    dropped_minutes: int = 0

    @property
    def unmatched(self) -> int:
        """Lines nothing recognised."""
        return self.lines - self.matched

    def to_dict(self) -> dict[str, Any]:
        """The ``--log --json`` shape."""
        return {"lines": self.lines, "matched": self.matched, "unmatched": self.unmatched,
                "truncated_lines": self.truncated,
                "by_program": dict(self.by_program.most_common()),
                "by_frame": dict(self.by_frame.most_common()),
                "by_code": dict(self.by_code.most_common()),
                "by_sender": dict(self.by_sender.most_common()),
                "by_cause": dict(self.by_cause.most_common()),
                "by_minute": dict(sorted(self.by_minute.items())),
                "dropped_minutes": self.dropped_minutes}


# A cheap first look for log scans: a line with none of these words (compared in lower case)
# and neither log shape cannot match a pattern, so the patterns are only tried on lines that
# might. tests/doctor/test_corpus.py checks that every corpus entry passes; a new pattern whose
# text has none of these words must add one.
_HINT_WORDS: tuple[str, ...] = (
    "stream", "goaway", "reset", "eof", "clos", "refused", "http2", "http/2", "abort",
    "timed out", "timeout", "lost", "disconnect", "prematurely", "flood", "too many",
    "concurrent", "settings", "table index", "err_http", "framing", "shutdown",
    "connection error", "statuscode", "rpc error", "upstream", "other side", "und_err")
_HINT_SHAPES = re.compile(  # Envoy's response flags, haproxy's termination states
    r"\"\s+\d{3}\s+[A-Z]{2,5}[,\s]|\s[CSPRIDLKcs][RQCHDLT][-A-Za-z]{0,2}\s+\d+/\d+/\d+/")


def _might_match(line: str) -> bool:
    low = line.lower()
    return any(word in low for word in _HINT_WORDS) or bool(_HINT_SHAPES.search(line))


def summarise(lines: Iterable[str], *, behind: str | None = None, max_line: int = MAX_LINE,
              max_buckets: int = MAX_BUCKETS) -> LogSummary:
    """Explain every line and count the results. Lines longer than ``max_line`` characters are
    cut (and counted), so one runaway line cannot make the scan slow."""
    summary = LogSummary()
    for raw in lines:
        summary.lines += 1
        line = raw
        if len(line) > max_line:
            summary.truncated += 1
            line = line[:max_line]
        found = explain(line, behind=behind) if _might_match(line) else None
        if found is None:
            continue
        summary.matched += 1
        summary.by_program[found.program] += 1
        summary.by_frame[found.frame] += 1
        code = found.code or "(no code)"
        if code not in summary.by_code and len(summary.by_code) >= _MAX_CODES:
            code = "(other codes)"
        summary.by_code[code] += 1
        summary.by_sender[found.sender] += 1
        if found.causes:
            summary.by_cause[found.causes[0]] += 1
        minute = _minute(line)
        if minute is not None:
            if minute in summary.by_minute or len(summary.by_minute) < max_buckets:
                summary.by_minute[minute] += 1
            else:
                summary.dropped_minutes += 1
    return summary


def _bounded_lines(stream: IO[str], limit: int) -> Iterator[str]:
    """Lines of ``stream`` with at most ``limit + 1`` characters each (the extra character
    tells ``summarise`` the line was longer); the rest of a long line is read and dropped in
    ``limit``-sized pieces, so memory stays bounded whatever the file holds."""
    while True:
        line = stream.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith("\n"):
            while True:
                rest = stream.readline(limit)
                if not rest or rest.endswith("\n"):
                    break
        yield line.rstrip("\r\n")


# --- the command -----------------------------------------------------------------------------

_out = Console(highlight=False, soft_wrap=False)
_err = Console(stderr=True, highlight=False)


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


def _programs() -> list[str]:
    return sorted({p.program for p in PATTERNS} - {"generic"})


def _not_recognised(as_json: bool) -> typer.Exit:
    if as_json:
        print(json.dumps({"frame": None, "code": None, "code_value": None, "sender": None,
                          "causes": [], "fixes": [], "matched": None}))
    else:
        _out.print(
            "Not recognised: this text matches none of the known HTTP/2 reset, GOAWAY or "
            f"connection-close messages ({len(PATTERNS)} shapes from {len(_programs())} "
            "programs), so no explanation is offered. Paste the whole error line, including "
            "the exception or log text around the code; `h2guard doctor trace URL` shows the "
            "frames themselves.", soft_wrap=True)
    return typer.Exit(1)


def _print_explanation(e: Explanation, *, limit: int = 4) -> None:
    body = Table.grid(padding=(0, 1))
    body.add_column(style="bold", no_wrap=True)
    body.add_column()
    body.add_row("What happened", escape(e.what))
    body.add_row("Who sent it", escape(f"{e.sender}. {_SENDER_TEXT[e.sender]}"))
    body.add_row("Likely causes", "\n".join(
        f"{i}. {escape(c)}" for i, c in enumerate(e.causes[:limit], 1)) or "-")
    body.add_row("What to do", "\n".join(f"- {escape(f)}" for f in e.fixes[:limit]) or "-")
    title = e.frame + (f" {e.code}" if e.code else "")
    subtitle = f"{e.program}: {e.pattern}"
    _out.print(Panel(body, title=escape(title), subtitle=escape(subtitle),
                     subtitle_align="right", expand=False))


def _counter_table(title: str, counts: Counter[str], *, limit: int = 12) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    table.add_column(title.split(" ", 1)[-1].capitalize(), overflow="fold")
    table.add_column("Lines", justify="right")
    rows = counts.most_common()
    for key, count in rows[:limit]:
        table.add_row(escape(key), str(count))
    if len(rows) > limit:
        table.add_row(f"({len(rows) - limit} more, see --json)", "")
    return table


def _print_summary(s: LogSummary, *, max_minutes: int = 120) -> None:
    _out.print(f"{s.lines} lines, {s.matched} recognised, {s.unmatched} not"
               + (f", {s.truncated} cut at {MAX_LINE} characters" if s.truncated else ""))
    for title, counts in (("By program", s.by_program), ("By frame", s.by_frame),
                          ("By code", s.by_code), ("By sender", s.by_sender),
                          ("By cause", s.by_cause)):
        _out.print(_counter_table(title, counts))
    if s.by_minute:
        table = Table(title="Per minute", title_justify="left", show_edge=False)
        table.add_column("Minute")
        table.add_column("Lines", justify="right")
        minutes = sorted(s.by_minute.items())
        for minute, count in minutes[:max_minutes]:
            table.add_row(minute, str(count))
        if len(minutes) > max_minutes:
            table.add_row(f"({len(minutes) - max_minutes} more, see --json)", "")
        _out.print(table)
        if s.dropped_minutes:
            _out.print(f"({s.dropped_minutes} lines fell in minutes beyond the first "
                       f"{MAX_BUCKETS}, not bucketed)")
    else:
        _out.print("(no timestamps found, so no per-minute counts)")


@contextlib.contextmanager
def _stdin() -> Iterator[IO[str]]:
    """Standard input as text that cannot fail to decode: logs hold stray bytes, and a
    UnicodeDecodeError must not become a traceback. The wrapper is detached afterwards, so
    it does not close the process's stdin when it is collected."""
    raw = getattr(sys.stdin, "buffer", None)
    if raw is None:
        yield sys.stdin
        return
    wrapper = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")
    try:
        yield wrapper
    finally:
        wrapper.detach()


def _read_text(text: str) -> str:
    if text != "-":
        return text
    with _stdin() as stream:
        return stream.read(MAX_TEXT)


def _summarise_source(log: str, behind: str | None) -> LogSummary:
    if log == "-":
        with _stdin() as stream:
            return summarise(_bounded_lines(stream, MAX_LINE), behind=behind)
    path = Path(log)
    try:
        with path.open(encoding="utf-8", errors="replace", newline="") as stream:
            return summarise(_bounded_lines(stream, MAX_LINE), behind=behind)
    except FileNotFoundError:
        raise _fail(f"--log {log}: no such file") from None
    except IsADirectoryError:
        raise _fail(f"--log {log}: is a directory, give a file") from None
    except PermissionError:
        raise _fail(f"--log {log}: permission denied") from None
    except OSError as exc:
        raise _fail(f"--log {log}: {exc.strerror or exc}") from None


def explain_command(
    text: Annotated[str | None, typer.Argument(
        help="The error message, quoted; '-' reads one message from stdin.",
        metavar="TEXT", show_default=False)] = None,
    log: Annotated[str | None, typer.Option(
        "--log", metavar="FILE", show_default=False,
        help="Scan a log line by line and count what it holds ('-': stdin). Lines are cut at "
             "8 KiB; lines with timestamps are also counted per minute.")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Machine-readable output: frame, code, sender, causes, fixes, "
                       "matched.")] = False,
    behind: Annotated[str | None, typer.Option(
        "--behind", metavar="PROXY", show_default=False,
        help="The proxy or load balancer in front of the server, if known (haproxy, nginx, "
             "envoy, ...). With haproxy, REFUSED_STREAM is not taken as proof that the "
             "request went unprocessed.")] = None,
) -> None:
    """Explain one message or summarise a log; see ``_HELP`` for what the user reads."""
    if text is not None and log is not None:
        raise _fail("give either TEXT or --log FILE, not both")
    if log is not None:
        summary = _summarise_source(log, behind)
        if as_json:
            print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False))
        else:
            _print_summary(summary)
        if summary.matched == 0:
            if not as_json:
                _out.print("Nothing in this log was recognised.")
            raise typer.Exit(1)
        return
    if text is None:
        raise _fail("nothing to explain: give the error TEXT, '-' to read it from stdin, or "
                    "--log FILE")
    message = _read_text(text)
    if not message.strip():
        raise _fail("the text to explain is empty")
    found = explain(message, behind=behind)
    if found is None:
        raise _not_recognised(as_json)
    if as_json:
        print(json.dumps(found.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_explanation(found)


_HELP = (
    "Explain an HTTP/2 reset or GOAWAY error: which frame and code, who sent it, why, and "
    "what to set where.\n\n"
    "Paste the error as the program printed it. Recognised: Java HttpClient, Go net/http, "
    "OkHttp, curl, Node.js http2 and undici, .NET HttpClient, gRPC (Java, Go, C core), "
    "httpx / h2, Rust h2 / hyper and Chromium errors, and Envoy, nginx and haproxy log "
    "lines. Codes may appear as names, numbers or prose; an unknown code shows as "
    "UNKNOWN(0x..) and is treated like INTERNAL_ERROR (RFC 9113 §7).\n\n"
    "[bold]Examples[/]\n\n"
    "  h2guard doctor explain 'stream error: stream ID 3; REFUSED_STREAM; received from "
    "peer'\n\n"
    "  h2guard doctor explain --json \"curl: (92) HTTP/2 stream 1 was not closed cleanly: "
    "INTERNAL_ERROR (err 2)\"\n\n"
    "  kubectl logs api-7f9c | grep -m1 RST_STREAM | h2guard doctor explain -\n\n"
    "  h2guard doctor explain --log /var/log/nginx/error.log\n\n"
    "  h2guard doctor explain --behind haproxy 'stream was reset: REFUSED_STREAM'\n\n"
    "Exit code 0 when the message is recognised, 1 when it is not (nothing is guessed), 2 "
    "for bad input such as a missing file."
)


def register(app: typer.Typer) -> None:
    """Add the ``explain`` command to the doctor group."""
    app.command("explain", help=_HELP)(explain_command)
