"""What ``h2guard doctor probe`` measured, what it means, and what each client should set.

:mod:`h2guard.doctor.probe` fills a :class:`ProbeResult`; this module turns it into

* :func:`findings`: risks ranked high -> info, each a one-line title and a detail that says why
  it matters to a client (the ranking is the order a reader should fix things in);
* :func:`recommend`: concrete client settings derived from the numbers (a maximum idle of 80% of
  the measured idle timeout, a stream cap at the enforced limit, retiring a connection before
  the request cap), for h2guard, httpx, Java's HttpClient, Go, Node, OkHttp and gRPC, each under
  the exact option or property name that client uses;
* :func:`to_json`: the ``--json`` document (keys documented in :mod:`h2guard.doctor.probe`);
* :func:`render`: the Rich report.

The data model lives here rather than in ``probe`` so that a report can be rebuilt from saved
numbers (tests do) without running a probe.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from h2guard.codes import code_name

__all__ = [
    "SCHEMA",
    "ClientAdvice",
    "DownloadProbe",
    "Finding",
    "FlowProbe",
    "HeaderProbe",
    "IdleClose",
    "IdleProbe",
    "OverLimit",
    "ProbeResult",
    "RequestCapProbe",
    "Setting",
    "Severity",
    "StreamProbe",
    "findings",
    "recommend",
    "render",
    "to_json",
]

SCHEMA = "h2guard.doctor.probe/1"
"""The ``schema`` value of the JSON document; bumped only if a key changes meaning."""

Severity = Literal["high", "medium", "low", "info"]
OverLimit = Literal["refused", "queued", "answered", "connection_error"]
IdleClose = Literal["goaway", "fin", "rst", "silent", "none"]
_RANK: dict[str, int] = {"high": 0, "medium": 1, "low": 2, "info": 3}
_NO_LIMIT = 2**31 - 1  # Envoy's default: as good as no limit


# ------------------------------------------------------------------------------ data model


@dataclass(slots=True, kw_only=True)
class StreamProbe:
    """Streams opened at once on one connection, beyond the advertised limit."""

    advertised: int | None = None  # SETTINGS_MAX_CONCURRENT_STREAMS (None: not sent)
    opened: int = 0  # streams opened at once
    held: int = 0  # kept open by the server (no answer, no reset) when the extras arrived
    refused: int = 0  # RST_STREAM REFUSED_STREAM
    answered: int = 0  # got a response
    reset_other: int = 0  # reset with another code
    enforced: int | None = None  # concurrent streams accepted before refusals began
    over_limit: OverLimit | None = None  # None: not reached (--streams-max) or inconclusive
    mode: Literal["open", "slow"] = "open"  # HEADERS without END_STREAM, or --slow-path
    note: str | None = None
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class RequestCapProbe:
    """Requests on one connection until a GOAWAY (or --request-cap-max)."""

    cap: int | None = None  # requests the GOAWAY let through (NO_ERROR or not)
    sent: int = 0
    answered: int = 0
    ended_by: Literal["goaway", "fin", "rst"] | None = None
    goaway_code: int | None = None
    goaway_last_stream_id: int | None = None
    stopped: Literal["limit", "time", "error"] | None = None  # why we stopped without a cap
    seconds: float = 0.0
    batch: int = 0
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class IdleProbe:
    """Connections left idle after one request, PINGed at growing gaps (a black hole shows as
    an unanswered PING), and one connection PINGed all along."""

    timeout_s: float | None = None
    close: IdleClose = "none"
    goaway_code: int | None = None
    goaway_last_stream_id: int | None = None
    ping_keeps_alive: bool | None = None
    ping_interval_s: float = 0.0  # how often the keep-alive connection PINGed
    keepalive_end: str | None = None  # how the PINGed connection ended, if it did
    silent_bracket: tuple[float, float] | None = None  # alive at lo s, silent at hi s
    connections: int = 0
    waited_s: float = 0.0
    note: str | None = None
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class HeaderProbe:
    """Requests with a growing header block: where the server stops accepting it."""

    advertised: int | None = None  # SETTINGS_MAX_HEADER_LIST_SIZE
    largest_ok: int | None = None  # header list size (RFC 9113 §6.5.2 accounting) accepted
    first_failed: int | None = None
    failure: str | None = None  # "HTTP 431", "RST_STREAM PROTOCOL_ERROR", "GOAWAY ...", ...
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class DownloadProbe:
    """One large response (--download-path): flow control as the server practises it."""

    path: str
    status: int | None = None
    bytes: int = 0
    seconds: float = 0.0
    complete: bool = False
    data_frames: int = 0
    max_data_frame: int = 0
    window_updates_sent: int = 0
    stalls: int = 0  # gaps of more than a second between DATA frames
    error: str | None = None

    @property
    def mbit_per_s(self) -> float | None:
        return self.bytes * 8 / self.seconds / 1e6 if self.seconds > 0 else None


@dataclass(slots=True, kw_only=True)
class FlowProbe:
    """Initial flow-control windows, both ways."""

    our_initial_window: int = 65535
    our_connection_window: int = 65535
    peer_initial_window: int = 65535
    peer_connection_window: int = 65535
    peer_max_frame_size: int = 16384
    download: DownloadProbe | None = None


@dataclass(slots=True, kw_only=True)
class ProbeResult:
    """Everything one probe measured. Each part carries its own ``error`` when it could not
    run; the others still count."""

    url: str
    alpn: str | None = None
    tls_version: str | None = None
    settings: dict[str, int] = field(default_factory=dict)
    ping_rtts_ms: list[float] = field(default_factory=list)
    ping_error: str | None = None
    streams: StreamProbe = field(default_factory=StreamProbe)
    request_cap: RequestCapProbe = field(default_factory=RequestCapProbe)
    idle: IdleProbe = field(default_factory=IdleProbe)
    headers: HeaderProbe = field(default_factory=HeaderProbe)
    flow: FlowProbe = field(default_factory=FlowProbe)
    elapsed_s: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def ping_rtt_ms(self) -> float | None:
        return round(statistics.median(self.ping_rtts_ms), 3) if self.ping_rtts_ms else None

    @property
    def stream_limit(self) -> int | None:
        """The limit a client should plan for: the enforced one, else the advertised one."""
        s = self.streams
        if s.enforced is not None:
            return s.enforced
        return s.advertised


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    title: str
    detail: str


@dataclass(frozen=True, slots=True)
class Setting:
    """One option of one client: its exact name, the value, the unit, and why."""

    name: str
    value: int | float | bool | str
    unit: str
    why: str


@dataclass(slots=True)
class ClientAdvice:
    settings: list[Setting] = field(default_factory=list)
    snippet: str = ""
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ findings


def _goaway_text(code: int | None, last: int | None) -> str:
    text = f"GOAWAY {code_name(code)}" if code is not None else "GOAWAY"
    return text + (f" (last_stream_id {last})" if last is not None else "")


def findings(r: ProbeResult) -> list[Finding]:
    """Risks, most dangerous first (stable order within a severity)."""
    out: list[Finding] = []
    add = out.append
    idle = r.idle
    t = idle.timeout_s
    if r.ping_error:
        add(Finding("high", "PING is not answered",
                    f"{r.ping_error}. Clients that health-check with PING (Go ReadIdleTimeout, "
                    "gRPC keepalive, OkHttp pingInterval, h2guard) will drop every connection."))
    if idle.close == "silent" and t is not None:
        add(Finding("high", f"Idle connections become a black hole after ~{t:g} s",
                    "No GOAWAY, FIN or RST: the connection simply stops answering (PINGs go "
                    "unanswered) and is never closed. A request written into it hangs until the "
                    "client's own timeout. Expire idle connections earlier, or PING them."))
    elif idle.close in ("goaway", "fin", "rst") and t is not None:
        how = {"goaway": _goaway_text(idle.goaway_code, idle.goaway_last_stream_id)
               + " then close", "fin": "a bare FIN (no GOAWAY)",
               "rst": "a TCP RST (no GOAWAY)"}[idle.close]
        severity: Severity = "medium" if idle.close == "goaway" else "high"
        add(Finding(severity, f"Idle connections are closed after {t:g} s",
                    f"Closed with {how}. A client that keeps idle connections longer than "
                    f"{t:g} s races the close: a request sent as it happens fails"
                    + (" with no way to tell whether it was processed." if idle.close != "goaway"
                       else " (GOAWAY at least says which streams were not processed).")))
    elif idle.close == "none" and idle.error is None:
        waited = r.options.get("idle_max")
        add(Finding("info", "No idle timeout seen",
                    f"Idle connections were still open and answering PINGs after "
                    f"{waited if waited is not None else idle.waited_s:g} s (--idle-max)."))
    if idle.ping_keeps_alive is False:
        add(Finding("medium", "PING does not keep an idle connection open",
                    "A connection PINGed all along ended like the silent ones"
                    + (f" ({idle.keepalive_end})" if idle.keepalive_end else "")
                    + ": PING keepalive (gRPC keepalive_time, OkHttp pingInterval) will not "
                    "save it. Expire idle connections before the timeout instead."))
    elif idle.ping_keeps_alive is True:
        add(Finding("info", "PING keeps an idle connection open",
                    f"A connection PINGed every {idle.ping_interval_s:g} s outlived the idle "
                    "timeout: PING keepalive works here (if the server allows that many PINGs)."))
    if idle.error:
        add(Finding("low", "The idle probe did not finish", idle.error))

    s = r.streams
    if s.error:
        add(Finding("low", "The stream-limit probe did not finish", s.error))
    elif s.over_limit == "connection_error":
        add(Finding("high", "Opening more streams than the limit kills the connection",
                    f"{s.opened} streams at once (limit {s.advertised}) ended the whole "
                    "connection, not just the extra streams: every request on it fails."))
    elif s.advertised is None and s.refused:
        add(Finding("high", f"An unadvertised stream limit of {s.enforced}",
                    "The server sent no SETTINGS_MAX_CONCURRENT_STREAMS (unlimited, says RFC "
                    f"9113) yet refused streams above {s.enforced} with REFUSED_STREAM."))
    elif s.enforced is not None and s.advertised is not None and s.enforced < s.advertised:
        add(Finding("high", f"Streams refused below the advertised limit ({s.enforced} < "
                            f"{s.advertised})",
                    "Clients that trust SETTINGS_MAX_CONCURRENT_STREAMS get REFUSED_STREAM "
                    "(safe to retry, but many clients do not)."))
    elif s.over_limit == "refused":
        add(Finding("medium", f"Streams above {s.enforced} are refused (REFUSED_STREAM)",
                    "Clients that open more streams than that at once (Node before the SETTINGS "
                    "arrive, Java's HttpClient) see errors unless they retry REFUSED_STREAM, "
                    "which is always safe."))
    elif s.over_limit == "queued":
        add(Finding("low", f"Streams above {s.advertised} are queued, not refused",
                    "Extra streams waited instead of failing: latency, not errors."))
    elif s.over_limit == "answered":
        add(Finding("low", f"The advertised limit of {s.advertised} streams is not enforced",
                    "Streams beyond it were served; a middlebox in front may still enforce it."))
    if s.note and not s.error:
        add(Finding("info", "Stream-limit probe", s.note))

    c = r.request_cap
    if c.error:
        add(Finding("low", "The request-cap probe did not finish", c.error))
    if c.cap is not None:
        bad_code = c.goaway_code not in (None, 0)
        severity = "high" if bad_code or c.cap < 100 else "medium"
        add(Finding(severity, f"GOAWAY after {c.cap} requests per connection",
                    f"{_goaway_text(c.goaway_code, c.goaway_last_stream_id)} after {c.cap} "
                    f"requests ({c.seconds:.1f} s). Clients that kill in-flight streams on "
                    "GOAWAY (httpx) or do not resend unprocessed ones lose requests; retire "
                    "connections before the cap or use a client that drains."
                    + (" The code is not NO_ERROR: the server considered the traffic abusive."
                       if bad_code else "")))
    elif c.ended_by in ("fin", "rst"):
        add(Finding("high", f"Connection closed without GOAWAY after {c.answered} requests",
                    f"Ended by {'a FIN' if c.ended_by == 'fin' else 'a TCP RST'}: in-flight "
                    "requests fail and a client cannot tell which were processed."))
    elif c.stopped in ("limit", "time"):
        add(Finding("info", "No request cap seen",
                    f"{c.answered} requests on one connection without a GOAWAY "
                    f"(stopped by {'--request-cap-max' if c.stopped == 'limit' else 'time'})."))

    h = r.headers
    if h.error:
        add(Finding("low", "The header-size probe did not finish", h.error))
    elif h.first_failed is not None:
        kills = h.failure is not None and (h.failure.startswith("GOAWAY")
                                           or h.failure.startswith("connection"))
        add(Finding("medium" if kills else "low",
                    f"Header blocks of {h.first_failed} bytes are rejected",
                    f"{h.failure}; {h.largest_ok or 0} bytes passed"
                    + (f"; SETTINGS_MAX_HEADER_LIST_SIZE says {h.advertised}"
                       if h.advertised is not None else "")
                    + (". It ends the whole connection, not one stream: one oversize request "
                       "(a large cookie) fails every request sharing the connection."
                       if kills else ".")))

    d = r.flow.download
    if d is not None:
        if d.error:
            add(Finding("medium", "The download did not complete", d.error))
        elif d.stalls:
            add(Finding("low", f"The download stalled {d.stalls} time(s)",
                        "Gaps of over a second between DATA frames: flow control or a slow "
                        "upstream."))
    if r.flow.peer_initial_window < 16384:
        add(Finding("low", f"Small initial stream window ({r.flow.peer_initial_window} bytes)",
                    "Uploads wait for WINDOW_UPDATE after that many bytes per stream."))
    if r.tls_version is not None and r.tls_version not in ("TLSv1.2", "TLSv1.3"):
        add(Finding("medium", f"Old TLS version {r.tls_version}",
                    "RFC 9113 §9.2 requires TLS 1.2 or later for HTTP/2."))
    out.sort(key=lambda f: _RANK[f.severity])
    return out


# ------------------------------------------------------------------------------ advice


def _seconds(value: float) -> float:
    """Round a derived duration sensibly: 0.1 s below 10 s, whole seconds above."""
    return round(value, 1) if value < 10 else float(math.floor(value))


def _go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 1000 == 0:
        return f"{ms // 1000} * time.Second"
    return f"{ms} * time.Millisecond"


def recommend(r: ProbeResult) -> dict[str, ClientAdvice]:
    """Client settings derived from the measurements, by client (see the module docstring)."""
    idle, t = r.idle, r.idle.timeout_s
    max_idle = _seconds(0.8 * t) if t is not None else None
    pings_help = idle.ping_keeps_alive is True
    silent = idle.close == "silent"
    # PING at half the idle timeout: keeps a connection alive where PING counts, and finds a
    # black hole within half a timeout where it does not.
    ping_every = _seconds(0.5 * t) if t is not None and (pings_help or silent) else None
    rtt = r.ping_rtt_ms
    ping_timeout = _seconds(min(5.0, max(1.0, 10 * rtt / 1000))) if rtt is not None else 5.0
    limit = r.stream_limit if r.stream_limit is not None and r.stream_limit < _NO_LIMIT else None
    cap = r.request_cap.cap
    retire_at = max(1, math.floor(cap * 0.9)) if cap is not None and cap > 1 else None
    out: dict[str, ClientAdvice] = {}

    # h2guard: the AsyncHTTPTransport options (src/h2guard/client/transport.py)
    a = ClientAdvice()
    kwargs: list[str] = []
    if max_idle is not None:
        a.settings.append(Setting("max_idle", max_idle, "s",
                                  "close idle connections before the middlebox does"))
        check = _seconds(min(5.0, 0.25 * t)) if t is not None else 5.0
        a.settings.append(Setting("health_check_after", check, "s",
                                  "PING a connection idle this long before reusing it"))
    if silent and t is not None:
        a.settings.append(Setting("ping_interval", _seconds(min(10.0, max(1.0, 0.5 * t))), "s",
                                  "PING a silent connection while a response is awaited"))
    a.settings.append(Setting("ping_timeout", ping_timeout, "s",
                              "give up on a PING after ~10 round trips"))
    kwargs += [f"{s.name}={s.value!r}" for s in a.settings]
    a.snippet = f"h2guard.AsyncHTTPTransport({', '.join(kwargs)})"
    if limit is not None:
        a.notes.append(f"MAX_CONCURRENT_STREAMS ({limit}) is honoured with a wait; raise "
                       "max_connections_per_origin for more concurrency "
                       f"(each connection carries {limit}).")
    if cap is not None:
        a.notes.append(f"The GOAWAY after {cap} requests needs no option: streams at or below "
                       "last_stream_id finish, the rest move to a new connection.")
    if r.streams.over_limit == "refused" or r.streams.refused:
        a.notes.append("REFUSED_STREAM is retried transparently (transparent_retries).")
    out["h2guard"] = a

    # httpx
    a = ClientAdvice()
    if max_idle is not None:
        a.settings.append(Setting("httpx.Limits(keepalive_expiry=...)", max_idle, "s",
                                  "httpx decides idle expiry by the clock alone (no PING)"))
        a.snippet = ("httpx.AsyncClient(http2=True, "
                     f"limits=httpx.Limits(keepalive_expiry={max_idle!r}))")
    else:
        a.snippet = "httpx.AsyncClient(http2=True)"
    if limit is not None:
        a.notes.append(f"No stream cap option: more than {limit} concurrent requests on one "
                       "connection fail ('Max outbound streams is N'); bound concurrency "
                       f"(a semaphore of {limit}) or use transport=h2guard.AsyncHTTPTransport().")
    if cap is not None:
        a.notes.append(f"At the GOAWAY after {cap} requests httpx kills the streams still in "
                       "flight (docs/facts.md §4): use h2guard.AsyncHTTPTransport, which drains.")
    if silent:
        a.notes.append("No PING health check: a black-holed connection hangs until the "
                       "request timeout; keep keepalive_expiry below the black-hole time.")
    out["httpx"] = a

    # Java HttpClient (system properties of java.net.http)
    a = ClientAdvice()
    if max_idle is not None:
        secs = max(0, math.floor(max_idle))
        a.settings.append(Setting("jdk.httpclient.keepalive.timeout.h2", secs, "s",
                                  "idle HTTP/2 connections are closed after this"))
        a.settings.append(Setting("jdk.httpclient.keepalive.timeout", secs, "s",
                                  "the same for JDKs without the .h2 property (and HTTP/1.1)"))
        a.snippet = " ".join(f"-D{s.name}={s.value}" for s in a.settings)
        if secs == 0:
            a.notes.append("Whole seconds only: 0 closes a connection as soon as it is idle.")
    if limit is not None:
        a.notes.append(f"No property caps outgoing streams (jdk.httpclient.maxstreams limits "
                       f"server push streams only): above {limit} concurrent requests per "
                       "connection it fails with 'too many concurrent streams' (docs/facts.md "
                       f"§7); bound concurrency to {limit} in the application.")
    if silent or pings_help:
        a.notes.append("HttpClient sends no keepalive PINGs: rely on the idle timeout above.")
    out["java"] = a

    # Go net/http + golang.org/x/net/http2
    a = ClientAdvice()
    lines = []
    if max_idle is not None:
        a.settings.append(Setting("http.Transport.IdleConnTimeout", max_idle, "s",
                                  "close idle connections before the middlebox does"))
        lines.append(f"t1 := &http.Transport{{IdleConnTimeout: {_go_duration(max_idle)}}}")
    else:
        lines.append("t1 := &http.Transport{}")
    lines.append("t2, _ := http2.ConfigureTransports(t1)")
    if ping_every is not None:
        a.settings.append(Setting("http2.Transport.ReadIdleTimeout", ping_every, "s",
                                  "PING after this long without a frame"))
        lines.append(f"t2.ReadIdleTimeout = {_go_duration(ping_every)}")
    a.settings.append(Setting("http2.Transport.PingTimeout", ping_timeout, "s",
                              "drop the connection when a PING is not answered"))
    lines.append(f"t2.PingTimeout = {_go_duration(ping_timeout)}")
    if limit is not None:
        a.settings.append(Setting("http2.Transport.StrictMaxConcurrentStreams", False, "",
                                  f"at {limit} streams open another connection instead of "
                                  "waiting"))
        lines.append("t2.StrictMaxConcurrentStreams = false")
    a.snippet = "; ".join(lines)
    a.notes.append("Go 1.24+: the same PING settings as http.Transport.HTTP2 = "
                   "&http.HTTP2Config{SendPingTimeout: ..., PingTimeout: ...}.")
    out["go"] = a

    # Node: undici (fetch) and node:http2
    a = ClientAdvice()
    opts = ["allowH2: true"]
    if max_idle is not None:
        ms = int(max_idle * 1000)
        a.settings.append(Setting("undici.Agent keepAliveTimeout", ms, "ms",
                                  "close idle connections before the middlebox does"))
        a.settings.append(Setting("undici.Agent keepAliveMaxTimeout", ms, "ms",
                                  "and never let a server hint keep them longer"))
        opts += [f"keepAliveTimeout: {ms}", f"keepAliveMaxTimeout: {ms}"]
    if limit is not None:
        a.settings.append(Setting("undici.Agent maxConcurrentStreams", limit, "streams",
                                  "the enforced limit"))
        opts.append(f"maxConcurrentStreams: {limit}")
        a.settings.append(Setting("http2.connect() peerMaxConcurrentStreams", limit,
                                  "streams", "the limit assumed before the server's SETTINGS "
                                  "arrive (Node overshoots otherwise, docs/facts.md §7)"))
    if retire_at is not None:
        a.settings.append(Setting("undici.Agent maxRequestsPerClient", retire_at, "requests",
                                  f"retire a connection before the cap of {cap}"))
        opts.append(f"maxRequestsPerClient: {retire_at}")
    a.snippet = f"new undici.Agent({{ {', '.join(opts)} }})"
    if max_idle is not None:
        a.notes.append(f"node:http2: session.setTimeout({int(max_idle * 1000)}, () => "
                       "session.close()) closes an idle session in time.")
    if ping_every is not None:
        a.notes.append(f"node:http2: session.ping() every {ping_every:g} s "
                       + ("keeps the session alive." if pings_help else "finds a black hole."))
    out["node"] = a

    # OkHttp
    a = ClientAdvice()
    parts = ["OkHttpClient.Builder()"]
    if max_idle is not None:
        ms = int(max_idle * 1000)
        a.settings.append(Setting("ConnectionPool keepAliveDuration", ms, "ms",
                                  "close idle connections before the middlebox does"))
        parts.append(f".connectionPool(new ConnectionPool(5, {ms}, TimeUnit.MILLISECONDS))")
    if ping_every is not None:
        ms = int(ping_every * 1000)
        a.settings.append(Setting("OkHttpClient.Builder.pingInterval", ms, "ms",
                                  "PING this often; no pong within the interval drops it"))
        parts.append(f".pingInterval({ms}, TimeUnit.MILLISECONDS)")
    a.snippet = "new " + "".join(parts) + ".build()"
    if limit is not None:
        a.notes.append("OkHttp honours MAX_CONCURRENT_STREAMS and retries REFUSED_STREAM "
                       "itself; no option needed.")
    out["okhttp"] = a

    # gRPC (C-core channel arguments; grpcio, grpc C++, Ruby, PHP ...)
    a = ClientAdvice()
    if ping_every is not None:
        ms = int(ping_every * 1000)
        a.settings.append(Setting("GRPC_ARG_KEEPALIVE_TIME_MS (grpc.keepalive_time_ms)", ms,
                                  "ms", "PING an idle transport this often"))
        a.settings.append(Setting("GRPC_ARG_KEEPALIVE_TIMEOUT_MS (grpc.keepalive_timeout_ms)",
                                  int(ping_timeout * 1000), "ms",
                                  "drop the transport when the PING is not answered"))
        a.settings.append(Setting(
            "GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS (grpc.keepalive_permit_without_calls)", 1,
            "", "PING also when no call is in flight"))
        a.settings.append(Setting(
            "GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA (grpc.http2.max_pings_without_data)", 0, "",
            "keep PINGing an idle transport"))
        if ms < 10_000:
            a.notes.append("grpc-go and grpc-java raise a keepalive time below 10 s to 10 s.")
        a.notes.append("The server must allow PINGs this often (gRPC servers: "
                       "GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, grpc-go "
                       "keepalive.EnforcementPolicy.MinTime, 5 min by default) or it answers "
                       "GOAWAY ENHANCE_YOUR_CALM 'too_many_pings'.")
    if max_idle is not None and not pings_help:
        a.settings.append(Setting("GRPC_ARG_CLIENT_IDLE_TIMEOUT_MS (grpc.client_idle_timeout_ms)",
                                  int(max_idle * 1000), "ms",
                                  "let an idle channel drop its connections in time"))
    a.snippet = "options=[" + ", ".join(
        f"({s.name.split('(')[-1].rstrip(')')!r}, {s.value!r})" for s in a.settings) + "]"
    a.notes.append("grpc-go: keepalive.ClientParameters{Time, Timeout, PermitWithoutStream}; "
                   "grpc-java: keepAliveTime, keepAliveTimeout, keepAliveWithoutCalls, "
                   "idleTimeout on the channel builder.")
    out["grpc"] = a
    return out


# ------------------------------------------------------------------------------ JSON


def _basis(r: ProbeResult) -> dict[str, Any]:
    t = r.idle.timeout_s
    cap = r.request_cap.cap
    limit = r.stream_limit
    return {
        "max_idle_s": _seconds(0.8 * t) if t is not None else None,
        "ping_interval_s": (_seconds(0.5 * t) if t is not None and (
            r.idle.ping_keeps_alive is True or r.idle.close == "silent") else None),
        "max_concurrent_streams": limit if limit is not None and limit < _NO_LIMIT else None,
        "retire_after_requests": max(1, math.floor(cap * 0.9)) if cap is not None and cap > 1
        else None,
    }


def to_json(r: ProbeResult) -> dict[str, Any]:
    """The ``--json`` document (keys documented in :mod:`h2guard.doctor.probe`)."""
    s, c, i, h, f = r.streams, r.request_cap, r.idle, r.headers, r.flow
    d = f.download
    return {
        "schema": SCHEMA,
        "url": r.url,
        "alpn": r.alpn,
        "tls_version": r.tls_version,
        "settings": dict(r.settings),
        "max_concurrent_streams": s.advertised,
        "streams_enforced": s.enforced,
        "streams_over_limit": s.over_limit,
        "request_cap": c.cap,
        "idle_timeout_s": i.timeout_s,
        "idle_close": i.close,
        "ping_keeps_alive": i.ping_keeps_alive,
        "ping_rtt_ms": r.ping_rtt_ms,
        "max_header_list_size": h.advertised,
        "header_limit_bytes": h.largest_ok if h.first_failed is not None else None,
        "findings": [{"severity": x.severity, "title": x.title, "detail": x.detail}
                     for x in findings(r)],
        "recommended": {
            "basis": _basis(r),
            **{name: {"settings": [{"name": st.name, "value": st.value, "unit": st.unit,
                                    "why": st.why} for st in adv.settings],
                      "snippet": adv.snippet, "notes": list(adv.notes)}
               for name, adv in recommend(r).items()},
        },
        "details": {
            "streams": {"advertised": s.advertised, "opened": s.opened, "held": s.held,
                        "refused": s.refused, "answered": s.answered,
                        "reset_other": s.reset_other, "enforced": s.enforced,
                        "over_limit": s.over_limit, "mode": s.mode, "note": s.note,
                        "error": s.error},
            "request_cap": {"cap": c.cap, "sent": c.sent, "answered": c.answered,
                            "ended_by": c.ended_by,
                            "goaway_code": code_name(c.goaway_code)
                            if c.goaway_code is not None else None,
                            "goaway_last_stream_id": c.goaway_last_stream_id,
                            "stopped": c.stopped, "seconds": round(c.seconds, 3),
                            "batch": c.batch, "error": c.error},
            "idle": {"timeout_s": i.timeout_s, "close": i.close,
                     "goaway_code": code_name(i.goaway_code)
                     if i.goaway_code is not None else None,
                     "goaway_last_stream_id": i.goaway_last_stream_id,
                     "ping_keeps_alive": i.ping_keeps_alive,
                     "ping_interval_s": i.ping_interval_s, "keepalive_end": i.keepalive_end,
                     "silent_bracket_s": list(i.silent_bracket) if i.silent_bracket else None,
                     "connections": i.connections, "waited_s": round(i.waited_s, 3),
                     "note": i.note, "error": i.error},
            "headers": {"advertised": h.advertised, "largest_ok": h.largest_ok,
                        "first_failed": h.first_failed, "failure": h.failure,
                        "error": h.error},
            "flow_control": {
                "our_initial_window": f.our_initial_window,
                "our_connection_window": f.our_connection_window,
                "peer_initial_window": f.peer_initial_window,
                "peer_connection_window": f.peer_connection_window,
                "peer_max_frame_size": f.peer_max_frame_size,
                "download": None if d is None else {
                    "path": d.path, "status": d.status, "bytes": d.bytes,
                    "seconds": round(d.seconds, 3), "complete": d.complete,
                    "mbit_per_s": round(d.mbit_per_s, 1) if d.mbit_per_s is not None else None,
                    "data_frames": d.data_frames, "max_data_frame": d.max_data_frame,
                    "window_updates_sent": d.window_updates_sent, "stalls": d.stalls,
                    "error": d.error},
            },
            "ping_rtts_ms": [round(x, 3) for x in r.ping_rtts_ms],
            "ping_error": r.ping_error,
        },
        "elapsed_s": round(r.elapsed_s, 3),
        "options": dict(r.options),
    }


# ------------------------------------------------------------------------------ Rich


_COLOUR = {"high": "bold red", "medium": "yellow", "low": "cyan", "info": "dim"}


def _measured(r: ProbeResult) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    s, c, i, h, f = r.streams, r.request_cap, r.idle, r.headers, r.flow

    def row(name: str, value: object) -> None:
        table.add_row(name, escape(str(value)))

    row("protocol", f"ALPN {r.alpn or '(h2c, prior knowledge)'}"
        + (f", {r.tls_version}" if r.tls_version else ""))
    row("PING RTT", f"{r.ping_rtt_ms:g} ms" if r.ping_rtt_ms is not None
        else (r.ping_error or "-"))
    adv = "not advertised" if s.advertised is None else str(s.advertised)
    if s.error:
        streams = f"advertised {adv}; probe failed: {s.error}"
    else:
        enforced = f"enforced {s.enforced}" if s.enforced is not None else \
            f"no refusal up to {s.opened}"
        streams = f"advertised {adv}, {enforced}" + (
            f"; over the limit: {s.over_limit}" if s.over_limit else "")
    row("streams", streams)
    if c.cap is not None:
        cap = f"{c.cap} ({_goaway_text(c.goaway_code, c.goaway_last_stream_id)})"
    elif c.error:
        cap = f"unknown: {c.error}"
    else:
        cap = f"none in {c.answered} requests" + (f" (ended by {c.ended_by})" if c.ended_by
                                                  else "")
    row("request cap", cap)
    if i.error and i.timeout_s is None:
        idle = f"unknown: {i.error}"
    elif i.timeout_s is None:
        idle = f"none within {i.waited_s:.0f} s"
    else:
        idle = f"{i.timeout_s:g} s, then {i.close}" + (
            f" ({_goaway_text(i.goaway_code, i.goaway_last_stream_id)})"
            if i.close == "goaway" else "")
    row("idle timeout", idle)
    row("PING keeps alive", {True: "yes", False: "no", None: "unknown"}[i.ping_keeps_alive])
    if h.first_failed is not None:
        hdr = f"{h.largest_ok or 0} bytes ok, {h.first_failed} rejected ({h.failure})"
    elif h.error:
        hdr = f"unknown: {h.error}"
    else:
        hdr = f"{h.largest_ok or 0} bytes ok"
    row("header list", hdr + (f"; advertised {h.advertised}" if h.advertised is not None
                              else ""))
    row("windows", f"ours {f.our_initial_window}/{f.our_connection_window}, theirs "
        f"{f.peer_initial_window}/{f.peer_connection_window} (stream/connection)")
    d = f.download
    if d is not None:
        speed = f", {d.mbit_per_s:.0f} Mbit/s" if d.mbit_per_s else ""
        row("download", f"{d.path}: {d.bytes} bytes in {d.seconds:.2f} s{speed}, "
            f"{d.data_frames} DATA, {d.window_updates_sent} WINDOW_UPDATE sent"
            + (f"; {d.error}" if d.error else ""))
    return table


def render(r: ProbeResult, console: Console) -> None:
    """Print the report: findings first (ranked), then the numbers, then client settings."""
    console.print(Panel.fit(f"[bold]h2guard doctor probe[/] {escape(r.url)}  "
                            f"[dim]({r.elapsed_s:.1f} s)[/]"))
    found = findings(r)
    table = Table(title="Findings, most risky first", title_justify="left", expand=False)
    table.add_column("risk")
    table.add_column("finding")
    for x in found:
        table.add_row(f"[{_COLOUR[x.severity]}]{x.severity}[/]",
                      f"[bold]{escape(x.title)}[/]\n{escape(x.detail)}")
    console.print(table)
    console.print(Panel(_measured(r), title="Measured", title_align="left"))
    if r.settings:
        st = Table(show_header=False, box=None, pad_edge=False)
        for name, value in r.settings.items():
            st.add_row(escape(name), str(value))
        console.print(Panel(st, title="Server SETTINGS", title_align="left"))
    parts: list[Any] = []
    for client, adv in recommend(r).items():
        parts.append(f"[bold]{client}[/]")
        for s in adv.settings:
            unit = f" {s.unit}" if s.unit and s.unit not in ("streams", "requests") else ""
            parts.append(f"  {escape(s.name)} = {escape(str(s.value))}{unit}  "
                         f"[dim]{escape(s.why)}[/]")
        if adv.snippet:
            parts.append(f"  [green]{escape(adv.snippet)}[/]")
        parts.extend(f"  [dim]- {escape(n)}[/]" for n in adv.notes)
    console.print(Panel(Group(*parts), title="Recommended client settings",
                        title_align="left"))
