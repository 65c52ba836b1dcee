"""``h2guard doctor probe URL``: measure what an HTTP/2 endpoint really enforces.

A proxy's documentation says one thing, its configuration another, and the load balancer in
front a third. The probe asks the wire instead, over several connections at once (so the whole
probe takes about as long as its longest wait, ``--idle-max``):

* **main**: ALPN, TLS version, the server's SETTINGS, PING round trips, the flow-control
  windows both ways, then requests with a growing header list (4 KiB .. 64 KiB, one large
  field up to 16 KiB, repeated fields beyond) to find the size that is rejected and how
  (HTTP 431, RST_STREAM, GOAWAY);
* **streams**: the advertised MAX_CONCURRENT_STREAMS + 3 streams opened at once (at most
  ``--streams-max``) that stay open (HEADERS without END_STREAM, or complete requests to a
  ``--slow-path``). Are the extra ones refused (REFUSED_STREAM), queued, answered, or does the
  connection fail? Then every stream is reset (CANCEL) and the connection closed;
* **request cap**: requests in small pipelined batches (never above the stream limit) on one
  connection until a GOAWAY, at most ``--request-cap-max``;
* **idle**: connections that carry one request and then go quiet, each PINGed once at a growing
  gap (x1.4 from max(0.25 s, idle-max/100) up to ``--idle-max``). An idle close shows as GOAWAY,
  FIN or RST on the quiet ones; a black hole (an AWS NLB forgetting a flow) shows as the first
  unanswered PING, and six more connections then pin the time down between the last answered
  and the first unanswered gap (which takes up to twice the black-hole time). Another connection
  PINGs all along: if it outlives the others, PING keeps a connection alive there;
* **download** (``--download-path``): one large response, counting DATA frames, our
  WINDOW_UPDATEs and stalls.

Every wait is bounded (``--timeout`` per step, an overall limit of 2 x idle-max + 4 x timeout
+ 30 s), bodies are counted, not kept, and a failed part is reported as such while the others
still count. A connection that cannot be made at all (refused, TLS failure, not HTTP/2) is a
one-line :class:`~h2guard.doctor.connection.DoctorError` (exit code 2).

JSON document (``--json``; keys are stable: new ones may be added, none renamed or dropped):

``schema``                ``"h2guard.doctor.probe/1"``
``url``                   the URL probed
``alpn``                  the ALPN protocol (``"h2"``), or null for h2c (prior knowledge)
``tls_version``           e.g. ``"TLSv1.3"``, or null for cleartext
``settings``              the server's SETTINGS by name (``{"MAX_CONCURRENT_STREAMS": 128}``)
``max_concurrent_streams``  the advertised SETTINGS_MAX_CONCURRENT_STREAMS, or null if none
``streams_enforced``      streams the server accepted at once before refusing more, or null
                          (none refused up to the streams opened)
``streams_over_limit``    what happened to streams above the advertised limit: ``"refused"``
                          (RST_STREAM REFUSED_STREAM), ``"queued"`` (held, served only as others
                          ended), ``"answered"`` (served: not enforced), ``"connection_error"``
                          (the connection failed), or null (not reached or inconclusive)
``request_cap``           requests a connection carried when the GOAWAY came, or null
``idle_timeout_s``        seconds of silence after which the connection ended or went silent,
                          or null (none within ``--idle-max``)
``idle_close``            ``"goaway"``, ``"fin"``, ``"rst"``, ``"silent"`` (a black hole: PINGs
                          unanswered, never closed) or ``"none"``
``ping_keeps_alive``      true if a connection PINGed all along outlived the idle timeout, false
                          if it did not, null if unknown (no timeout, or too short to tell)
``ping_rtt_ms``           median PING round trip in milliseconds, or null
``max_header_list_size``  the advertised SETTINGS_MAX_HEADER_LIST_SIZE, or null
``header_limit_bytes``    the largest header list accepted when a larger one was rejected, or
                          null (none rejected up to 64 KiB)
``findings``              ``[{"severity": "high"|"medium"|"low"|"info", "title", "detail"}]``,
                          most risky first
``recommended``           ``{"basis": {"max_idle_s", "ping_interval_s", "max_concurrent_streams",
                          "retire_after_requests"}, "<client>": {"settings": [{"name", "value",
                          "unit", "why"}], "snippet", "notes"}}`` for the clients ``h2guard``,
                          ``httpx``, ``java``, ``go``, ``node``, ``okhttp`` and ``grpc``; ``name``
                          is the exact option or property name in that client
``details``               per probe: ``streams``, ``request_cap``, ``idle``, ``headers``,
                          ``flow_control`` (windows and the download), ``ping_rtts_ms``,
                          ``ping_error``; each part has an ``error`` (null when it ran)
``elapsed_s``             how long the probe took
``options``               the options it ran with
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from h2guard.codes import code_name, setting_name
from h2guard.doctor.connection import DoctorConnection, DoctorError, Exchange, Target, parse_target
from h2guard.doctor.report import (
    DownloadProbe,
    HeaderProbe,
    IdleProbe,
    ProbeResult,
    RequestCapProbe,
    StreamProbe,
    render,
    to_json,
)
from h2guard.wire.trace import TracedFrame

__all__ = ["ProbeProgress", "register", "run_probe"]

EXTRA_STREAMS = 3  # streams opened above the advertised limit
PINGS = 5  # PINGs on the main connection for the round trip
GRID_RATIO = 1.4  # growth of the idle connections' PING gaps
REFINE = 6  # connections that pin a black hole down once it is bracketed
HEADER_TARGETS = (4096, 8192, 16384, 32768, 65536)  # header list sizes tried, in bytes
SINGLE_FIELD_MAX = 16384  # up to this, the padding is one field; beyond, repeated fields
MAX_DOWNLOAD = 256 << 20  # bytes counted before a download is cut short
MAX_RESETS = 100  # RST_STREAM frames sent at once; above, GOAWAY closes the rest
_REFUSED, _CANCEL = 0x7, 0x8
_FORBIDDEN_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection",
                                "transfer-encoding", "upgrade", "host", "te"})


# ------------------------------------------------------------------------------ progress


class ProbeProgress:
    """Where the probe says what it is doing. This base class shows nothing; the CLI draws it
    with Rich on stderr. ``total`` and ``completed`` are seconds or counts."""

    def start(self, key: str, description: str, total: float | None = None) -> None:
        """A probe began."""

    def update(self, key: str, *, completed: float | None = None,
               description: str | None = None) -> None:
        """A probe moved on."""

    def finish(self, key: str, description: str) -> None:
        """A probe ended."""


# ------------------------------------------------------------------------------ options


@dataclass(frozen=True, slots=True, kw_only=True)
class _Options:
    h2c: bool
    insecure: bool
    ca_file: str | None
    headers: tuple[tuple[str, str], ...]
    idle_max: float
    request_cap_max: int
    streams_max: int
    timeout: float
    download_path: str | None
    slow_path: str | None


def _check(opts: _Options) -> None:
    """One-line errors for options out of range, before any connection."""
    if not 0 < opts.idle_max <= 3600:
        raise DoctorError(f"--idle-max {opts.idle_max:g}: must be above 0 and at most 3600 s")
    if not 1 <= opts.request_cap_max <= 1_000_000:
        raise DoctorError(f"--request-cap-max {opts.request_cap_max}: must be 1..1000000")
    if not 1 <= opts.streams_max <= 10_000:
        raise DoctorError(f"--streams-max {opts.streams_max}: must be 1..10000")
    if not 0 < opts.timeout <= 300:
        raise DoctorError(f"--timeout {opts.timeout:g}: must be above 0 and at most 300 s")
    for flag, path in (("--download-path", opts.download_path),
                       ("--slow-path", opts.slow_path)):
        if path is not None and not path.startswith("/"):
            raise DoctorError(f"{flag} {path!r}: a path starts with '/'")
    for name, value in opts.headers:
        _check_header(name, value)


def _check_header(name: str, value: str) -> None:
    if not name or name.startswith(":") or any(c in name for c in " \t\r\n:"):
        raise DoctorError(f"-H {name}:{value}: not a valid header name")
    if name.lower() in _FORBIDDEN_HEADERS:
        raise DoctorError(f"-H {name}: a connection-specific header, not allowed in HTTP/2 "
                          "(RFC 9113 §8.2.2); the URL sets the authority")
    if any(c in value for c in "\r\n\0"):
        raise DoctorError(f"-H {name}: the value contains CR, LF or NUL")


def parse_header(text: str) -> tuple[str, str]:
    """``"Name: value"`` (the form ``-H`` takes) -> ``("name", "value")``; DoctorError if bad."""
    name, sep, value = text.partition(":")
    if not sep:
        raise DoctorError(f"-H {text!r}: expected NAME:VALUE")
    name, value = name.strip().lower(), value.strip()
    _check_header(name, value)
    return name, value


# ------------------------------------------------------------------------------ helpers


def _last_activity(conn: DoctorConnection) -> float:
    """Connection-clock time of the newest frame, either way, that is neither a PING nor the
    peer's GOAWAY: when the connection went idle, as a middlebox counts it."""
    for frame in reversed(conn.frames):
        if frame.type not in ("PING", "GOAWAY") and frame.at is not None:
            return frame.at
    return 0.0


def _ended(conn: DoctorConnection) -> bool:
    return conn.goaway is not None or conn.closed is not None


def _end_text(conn: DoctorConnection) -> str:
    if conn.goaway is not None:
        return f"GOAWAY {code_name(conn.goaway.error_code)}"
    if conn.closed is not None:
        return {"fin": "closed (FIN)", "rst": "reset (TCP RST)"}.get(conn.closed.how,
                                                                     conn.closed.how)
    return "open"


def _list_size(fields: Iterable[tuple[str, str]]) -> int:
    """RFC 9113 §6.5.2: name + value + 32 per field, pseudo-headers included."""
    return sum(len(k) + len(v) + 32 for k, v in fields)


def _grid(idle_max: float) -> list[float]:
    """The idle connections' PING gaps: x1.4 steps, ending exactly at ``idle_max``."""
    gap = max(0.25, idle_max / 100)
    gaps: list[float] = []
    while gap < idle_max * 0.999:
        gaps.append(round(gap, 3))
        gap *= GRID_RATIO
    gaps.append(idle_max)
    return gaps


async def _ping_once(s: _Session, conn: DoctorConnection, timeout: float) -> str:
    """One PING: ``"ack"``, ``"timeout"`` (no answer in time) or ``"ended"`` (the connection
    ended first)."""
    n = len(conn.ping_rtts)
    s.ping(conn)

    def answered() -> bool:
        return len(conn.ping_rtts) > n or _ended(conn)

    if not await _wait(conn, answered, timeout):
        return "timeout"
    return "ack" if len(conn.ping_rtts) > n else "ended"


def _all_done(exs: Sequence[Exchange]) -> Callable[[], bool]:
    return lambda: all(ex.done.is_set() for ex in exs)


def _grew(ex: Exchange, seen: int) -> Callable[[], bool]:
    return lambda: ex.done.is_set() or ex.body_bytes != seen


async def _wait(conn: DoctorConnection, predicate: Callable[[], object], timeout: float) -> bool:
    """``conn.wait`` that returns whether ``predicate`` held instead of raising."""
    try:
        await conn.wait(predicate, max(0.0, timeout))
    except TimeoutError:
        return bool(predicate())
    return True


@dataclass(slots=True)
class _Idler:
    """One quiet connection of the idle probe; gaps are seconds since it went idle."""

    conn: DoctorConnection
    start: float  # connection clock: when it went idle
    gap: float | None  # when to PING it (None: the keep-alive connection)
    alive_gap: float | None = None  # PINGed and answered at this gap
    silent_gap: float | None = None  # PINGed and not answered
    end_gap: float | None = None  # GOAWAY or close at this gap
    last_ack_gap: float = 0.0  # keep-alive connection: the newest answered PING
    dead: str | None = None  # keep-alive connection: how it stopped answering
    unusable: str | None = None


@dataclass(slots=True)
class _Session:
    """One probe: the target, the options, the connections (all closed at the end)."""

    target: Target
    opts: _Options
    progress: ProbeProgress
    conns: list[DoctorConnection] = field(default_factory=list)
    silent: set[int] = field(default_factory=set)
    rtt: float | None = None
    # set once the idle connections have gone quiet: the busy probes start after it, so the
    # idle connections' clocks are not skewed by a loop busy with a thousand requests
    idle_ready: asyncio.Event = field(default_factory=asyncio.Event)
    _pings: int = 0

    async def open(self, *, max_frames: int = 2000,
                   on_frame: Callable[[TracedFrame], None] | None = None) -> DoctorConnection:
        conn = await DoctorConnection.open(
            self.target, insecure=self.opts.insecure, ca_file=self.opts.ca_file,
            timeout=self.opts.timeout, max_frames=max_frames, on_frame=on_frame)
        self.conns.append(conn)
        return conn

    def close_all(self) -> None:
        """GOAWAY and close every connection; abort at once (a black hole never reads)."""
        for conn in self.conns:
            with contextlib.suppress(Exception):
                if id(conn) not in self.silent:
                    conn.close()
                conn.abort()

    @property
    def grace(self) -> float:
        """How long an answer to a PING may take before we call it missing."""
        rtt = self.rtt if self.rtt is not None else 0.3
        return min(self.opts.timeout, max(0.5, 5 * rtt))

    @property
    def settle(self) -> float:
        """How long to watch streams for a refusal or an answer."""
        rtt = self.rtt if self.rtt is not None else 0.1
        return min(self.opts.timeout, max(0.4, 20 * rtt))

    def request(self, conn: DoctorConnection, path: str | None = None, *,
                headers: Sequence[tuple[str, str]] | None = None,
                end_stream: bool = True) -> Exchange:
        return conn.request("GET", path or self.target.path,
                            headers=self.opts.headers if headers is None else headers,
                            end_stream=end_stream)

    def ping(self, conn: DoctorConnection) -> None:
        self._pings += 1
        conn.ping(b"h2gp" + self._pings.to_bytes(4, "big"))


# ------------------------------------------------------------------------------ main connection


async def _pings(s: _Session, conn: DoctorConnection, result: ProbeResult) -> None:
    """PING round trips, before the other probes start (they would queue behind each other's
    handshakes and inflate it), and the windows both ways."""
    s.progress.start("main", "PING round trips", None)
    for _ in range(PINGS):
        outcome = await _ping_once(s, conn, s.opts.timeout)
        if outcome == "timeout":
            result.ping_error = f"no PING ACK within {s.opts.timeout:g} s"
            break
        if outcome == "ended":
            result.ping_error = f"the connection ended ({_end_text(conn)}) during a PING"
            break
    result.ping_rtts_ms = [x * 1000 for x in conn.ping_rtts]
    if conn.ping_rtts:
        s.rtt = min(conn.ping_rtts)
    flow = result.flow
    sent = next((f for f in conn.frames if f.direction == "send" and f.type == "SETTINGS"),
                None)
    ours = sent.details.get("settings") if sent is not None else None
    if isinstance(ours, dict):
        flow.our_initial_window = int(ours.get("INITIAL_WINDOW_SIZE", 65535))
    flow.peer_initial_window = conn.peer_settings.get(0x4, 65535)
    flow.peer_max_frame_size = conn.peer_settings.get(0x5, 16384)
    flow.peer_connection_window = 65535 + sum(inc for _, sid, inc in conn.window_updates
                                              if sid == 0)


async def _main_probe(s: _Session, conn: DoctorConnection, result: ProbeResult) -> None:
    """The header-size probe, on the main connection (last: it may end the connection)."""
    s.progress.update("main", description="header size")
    await _header_probe(s, conn, result.headers)
    s.progress.finish("main", "main: done")


async def _header_probe(s: _Session, conn: DoctorConnection, res: HeaderProbe) -> None:
    res.advertised = conn.peer_settings.get(0x6)
    timeout = s.opts.timeout
    t = s.target
    fields = [(":method", "GET"), (":scheme", "https" if t.tls else "http"),
              (":authority", t.authority), (":path", t.path), *s.opts.headers]
    base = s.request(conn)
    if not await _wait(conn, base.done.is_set, timeout):
        res.error = f"{t.path} did not answer within {timeout:g} s"
        return
    if base.status is None:
        res.error = (f"{t.path} was not answered ({_outcome(conn, base)}), so sizes cannot "
                     "be compared")
        return
    res.largest_ok = _list_size(fields)
    targets = set(HEADER_TARGETS)
    if res.advertised is not None and res.advertised <= HEADER_TARGETS[-1]:
        targets.add(res.advertised + 1)  # just over what the server says it takes
    for size in sorted(targets):
        padding = _padding(size - _list_size(fields))
        if not padding:
            continue
        ex = s.request(conn, headers=[*s.opts.headers, *padding])
        answered = await _wait(conn, ex.done.is_set, timeout)
        conn.exchanges.pop(ex.stream_id, None)
        if answered and ex.status is not None and (ex.status == base.status
                                                   or ex.status < 400):
            res.largest_ok = size
            continue
        res.first_failed = size
        if not answered:
            res.failure = f"no answer within {timeout:g} s"
        elif ex.status is not None:
            res.failure = f"HTTP {ex.status}"
        else:
            res.failure = _outcome(conn, ex)
        return


def _padding(room: int) -> list[tuple[str, str]]:
    """Header fields adding exactly ``room`` bytes to a header list (RFC 9113 §6.5.2 sizes).

    Up to SINGLE_FIELD_MAX it is one field (a large cookie: the per-field limit). Beyond, it
    is a 480-byte field repeated, which HPACK sends once and then as one-byte references: the
    whole list is what SETTINGS_MAX_HEADER_LIST_SIZE limits, and Huffman-coding 64 KiB in
    Python would stall the event loop (and every idle timing) for half a second."""
    name = "x-h2guard-probe"
    if room <= len(name) + 32:
        return []
    if room <= SINGLE_FIELD_MAX:
        return [(name, "a" * (room - len(name) - 32))]
    unit = len(name) + 480 + 32
    last = "x-h2guard-probe-end"
    copies = (room - len(last) - 32) // unit
    rest = room - copies * unit - len(last) - 32
    return [(name, "a" * 480)] * copies + [(last, "b" * rest)]


def _outcome(conn: DoctorConnection, ex: Exchange) -> str:
    """What ended a stream that got no response, in a few words."""
    if ex.reset_code is not None and ex.reset_by_peer:
        return f"RST_STREAM {code_name(ex.reset_code)}"
    if conn.goaway is not None:
        return f"GOAWAY {code_name(conn.goaway.error_code)}"
    if conn.closed is not None:
        return f"connection {_end_text(conn)}"
    return "no response"


# ------------------------------------------------------------------------------ streams


async def _stream_probe(s: _Session, res: StreamProbe) -> None:
    s.progress.start("streams", "streams: opening", None)
    conn = await s.open()
    adv = conn.peer_settings.get(0x3)
    res.advertised = adv
    cap = s.opts.streams_max
    n = cap if adv is None else min(adv + EXTRA_STREAMS, cap)
    hold = s.opts.slow_path is None
    res.mode = "open" if hold else "slow"
    exs = [s.request(conn, s.opts.slow_path, end_stream=not hold) for _ in range(n)]
    res.opened = n
    base = adv if adv is not None and adv < n else n  # streams within the advertised limit
    extras = exs[base:]

    def refused() -> list[Exchange]:
        return [ex for ex in exs if ex.reset_by_peer and ex.reset_code == _REFUSED]

    s.progress.update("streams", description=f"streams: {n} open, watching")
    if extras:
        await _wait(conn, lambda: _ended(conn) or all(ex.done.is_set() for ex in extras),
                    s.settle)
    else:
        await _wait(conn, lambda: _ended(conn) or refused(), s.settle)
    await asyncio.sleep(min(0.05, s.settle))  # stragglers of the same burst
    first_held = _tally(res, exs)
    try:
        if _ended(conn):
            res.over_limit = "connection_error" if extras else None
            if not extras:
                res.error = f"the connection ended ({_end_text(conn)}) with {n} streams open"
            res.note = f"{_end_text(conn)} after {n} streams were opened at once"
        elif res.refused:
            res.over_limit = "refused" if extras or adv is None else None
            res.enforced = n - res.refused - res.reset_other
            if res.answered:
                res.note = (f"{res.answered} accepted streams were answered at once, so the "
                            "enforced limit may be higher; give --slow-path for a firm number")
        elif not extras:
            res.note = (f"no limit advertised and no stream refused up to {n} (--streams-max)"
                        if adv is None else
                        f"--streams-max {cap} is not above the advertised limit of {adv}: "
                        "streams beyond it were not tried")
        elif first_held < base:
            res.note = (f"the server answered the streams at once ({base - first_held} of the "
                        f"first {base}), so they were never open together: give --slow-path "
                        "(a path that answers slowly) to test the limit")
        elif any(ex.status is not None for ex in extras):
            res.over_limit = "answered"
        elif hold:
            await _held_extras(s, conn, res, exs, base)
        else:
            await _slow_extras(s, conn, res, exs, base)
    finally:
        _release(conn, exs)
        s.progress.finish("streams", "streams: " + (
            f"over the limit {res.over_limit}" if res.over_limit else "done"))


def _tally(res: StreamProbe, exs: list[Exchange]) -> int:
    """Count outcomes; return how many of the streams within the limit are still held."""
    res.refused = sum(1 for ex in exs if ex.reset_by_peer and ex.reset_code == _REFUSED)
    res.reset_other = sum(1 for ex in exs if ex.reset_by_peer and ex.reset_code is not None
                          and ex.reset_code not in (_REFUSED, -1))
    res.answered = sum(1 for ex in exs if ex.status is not None)
    held = [ex for ex in exs if not ex.done.is_set() and ex.status is None]
    res.held = len(held)
    base = res.advertised if res.advertised is not None else len(exs)
    return sum(1 for ex in exs[:base] if not ex.done.is_set() and ex.status is None)


async def _held_extras(s: _Session, conn: DoctorConnection, res: StreamProbe,
                       exs: list[Exchange], base: int) -> None:
    """The extra streams are neither refused nor answered: end their requests; served while
    the first ones stay open -> answered; served only once those are reset -> queued."""
    extras = exs[base:]
    for ex in extras:
        conn.finish(ex)
    await _wait(conn, lambda: _ended(conn) or all(ex.done.is_set() for ex in extras), s.settle)
    if _ended(conn):
        res.over_limit = "connection_error"
        res.note = f"{_end_text(conn)} once the extra streams' requests were complete"
    elif any(ex.reset_by_peer and ex.reset_code == _REFUSED for ex in extras):
        res.over_limit = "refused"
        res.enforced = base
    elif any(ex.status is not None for ex in extras):
        res.over_limit = "answered"
    else:
        for ex in exs[:base]:
            if not ex.done.is_set():
                conn.reset(ex, _CANCEL)
        await _wait(conn, lambda: _ended(conn) or all(ex.done.is_set() for ex in extras),
                    s.settle)
        res.over_limit = "queued"
        res.enforced = base
        if not any(ex.status is not None for ex in extras):
            res.note = ("the extra streams were neither refused nor answered, even after the "
                        "others were reset")


async def _slow_extras(s: _Session, conn: DoctorConnection, res: StreamProbe,
                       exs: list[Exchange], base: int) -> None:
    """--slow-path: every stream is a complete request. Extras answered about as fast as the
    first ones ran concurrently (answered); answered clearly later waited (queued)."""
    await _wait(conn, lambda: _ended(conn) or all(ex.done.is_set() for ex in exs),
                s.opts.timeout)
    first = [ex.ended_at - ex.sent_at for ex in exs[:base]
             if ex.status is not None and ex.ended_at is not None]
    late = [ex.ended_at - ex.sent_at for ex in exs[base:]
            if ex.status is not None and ex.ended_at is not None]
    _tally(res, exs)
    if _ended(conn) and not late:
        res.over_limit = "connection_error"
    elif res.refused:
        res.over_limit = "refused"
        res.enforced = len(exs) - res.refused - res.reset_other
    elif first and late and max(late) < 1.5 * statistics.median(first) + 0.05:
        res.over_limit = "answered"
    else:
        res.over_limit = "queued"
        res.enforced = base
        if not late:
            res.note = f"the extra streams were not answered within {s.opts.timeout:g} s"


def _release(conn: DoctorConnection, exs: list[Exchange]) -> None:
    """Reset what is still open (CANCEL), then GOAWAY and close; beyond MAX_RESETS, GOAWAY
    alone (a burst of resets looks like Rapid Reset, CVE-2023-44487, to a careful server)."""
    still = [ex for ex in exs if not ex.done.is_set()]
    if not _ended(conn) and len(still) <= MAX_RESETS:
        for ex in still:
            conn.reset(ex, _CANCEL)
    conn.close()


# ------------------------------------------------------------------------------ request cap


async def _request_cap_probe(s: _Session, res: RequestCapProbe) -> None:
    limit = s.opts.request_cap_max
    s.progress.start("requests", "requests: until GOAWAY", float(limit))
    conn = await s.open(max_frames=256)
    adv = conn.peer_settings.get(0x3)
    batch = max(1, min(adv if adv is not None else 100, 50))
    res.batch = batch
    loop = asyncio.get_running_loop()
    started = loop.time()
    budget = max(s.opts.idle_max, 30.0)
    refused: list[int] = []
    try:
        while res.sent < limit and not _ended(conn):
            exs = [s.request(conn) for _ in range(min(batch, limit - res.sent))]
            res.sent += len(exs)
            if not await _wait(conn, _all_done(exs),
                               s.opts.timeout):
                res.error = (f"requests {res.sent - len(exs) + 1}..{res.sent} were not "
                             f"answered within {s.opts.timeout:g} s")
                res.stopped = "error"
                break
            for ex in exs:
                conn.exchanges.pop(ex.stream_id, None)  # bounded memory on long runs
                if ex.ok:
                    res.answered += 1
                elif ex.reset_by_peer and ex.reset_code == _REFUSED:
                    refused.append(ex.stream_id)
            s.progress.update("requests", completed=float(res.sent))
            if loop.time() - started > budget:
                res.stopped = "time"
                break
        else:
            if res.sent >= limit and not _ended(conn):
                res.stopped = "limit"
    finally:
        res.seconds = loop.time() - started
        goaway = conn.goaway
        if goaway is not None:
            last = goaway.last_stream_id
            res.ended_by = "goaway"
            res.goaway_code, res.goaway_last_stream_id = goaway.error_code, last
            ours = min((last + 1) // 2, res.sent)  # our streams are 1, 3, 5, ...
            res.cap = ours - sum(1 for sid in refused if sid <= last)
            res.stopped = None
        elif conn.closed is not None and conn.closed.how in ("fin", "rst"):
            res.ended_by = "fin" if conn.closed.how == "fin" else "rst"
            res.stopped = None
        conn.close()
        s.progress.finish("requests", "requests: " + (
            f"GOAWAY after {res.cap}" if res.cap is not None else f"{res.answered} answered"))


# ------------------------------------------------------------------------------ idle


async def _idler(s: _Session, gap: float | None) -> _Idler:
    """A connection that carries one request (as a client's pooled connection has: nginx
    times a connection that never carried one by client_header_timeout instead) and then
    goes quiet."""
    conn = await s.open(max_frames=200)
    ex = s.request(conn)
    if not await _wait(conn, ex.done.is_set, s.opts.timeout):
        conn.reset(ex, _CANCEL)  # a server that does not answer: idle from here on
    conn.exchanges.pop(ex.stream_id, None)
    idler = _Idler(conn, _last_activity(conn), gap)
    if _ended(conn):
        idler.unusable = f"{_end_text(conn)} right after its first request"
    return idler


async def _watch(s: _Session, idler: _Idler) -> None:
    """Stay quiet until ``idler.gap``; then one PING. Closed before -> ``end_gap``; PING
    answered -> ``alive_gap``; not answered -> ``silent_gap``."""
    conn, gap = idler.conn, idler.gap
    assert gap is not None
    if await _wait(conn, lambda: _ended(conn), idler.start + gap - conn.now()):
        idler.end_gap = _end_at(conn) - idler.start
        return
    sent = conn.now()
    outcome = await _ping_once(s, conn, s.grace)
    if outcome == "timeout":
        idler.silent_gap = sent - idler.start
        s.silent.add(id(conn))
    elif outcome == "ack":
        idler.alive_gap = sent - idler.start
    else:
        idler.end_gap = _end_at(conn) - idler.start


def _end_at(conn: DoctorConnection) -> float:
    """When the connection ended: its first GOAWAY (a draining server closes later), else
    the close."""
    for frame in conn.frames:
        if frame.direction == "recv" and frame.type == "GOAWAY" and frame.at is not None:
            return frame.at
    if conn.closed is not None and conn.closed.at is not None:
        return conn.closed.at
    return conn.now()


async def _keepalive(s: _Session, idler: _Idler, every: float) -> None:
    """PING every ``every`` seconds; record the newest answered one, or how it stopped."""
    conn = idler.conn
    while True:
        if await _wait(conn, lambda: _ended(conn), every):
            idler.dead = _end_text(conn)
            idler.end_gap = _end_at(conn) - idler.start
            return
        sent = conn.now()
        outcome = await _ping_once(s, conn, s.grace)
        if outcome == "timeout":
            idler.dead = f"PING unanswered after {sent - idler.start:.1f} s"
            s.silent.add(id(conn))
            return
        if outcome == "ended":
            idler.dead = _end_text(conn)
            idler.end_gap = _end_at(conn) - idler.start
            return
        idler.last_ack_gap = sent - idler.start


async def _idle_probe(s: _Session, res: IdleProbe) -> None:
    opts = s.opts
    loop = asyncio.get_running_loop()
    started = loop.time()
    res.ping_interval_s = every = round(min(max(opts.idle_max / 40, 0.1), 5.0), 3)
    gaps = _grid(opts.idle_max)
    s.progress.start("idle", f"idle: {len(gaps) + 1} quiet connections", opts.idle_max)
    try:
        made = await asyncio.gather(*(_idler(s, g) for g in (*gaps, None)),
                                    return_exceptions=True)
    finally:
        s.idle_ready.set()
    for m in made:
        if isinstance(m, BaseException) and not isinstance(m, DoctorError | OSError):
            raise m
    grid = [m for m in made[:-1] if isinstance(m, _Idler) and m.unusable is None]
    keep = made[-1] if isinstance(made[-1], _Idler) and made[-1].unusable is None else None
    res.connections = sum(1 for m in made if isinstance(m, _Idler))
    if not grid:
        why = next((m.unusable for m in made if isinstance(m, _Idler) and m.unusable),
                   None) or next((str(m) for m in made if isinstance(m, BaseException)),
                                 "no connection")
        res.error = f"no idle connection could be made: {why}"
        return
    tasks: dict[asyncio.Task[None], _Idler] = {
        asyncio.create_task(_watch(s, i)): i for i in grid}
    ka_task = asyncio.create_task(_keepalive(s, keep, every)) if keep is not None else None
    ticker = asyncio.create_task(_tick(s, "idle", started, opts.idle_max))
    refine: list[_Idler] = []
    try:
        deadline = started + 2 * opts.idle_max + 4 * opts.timeout + 10
        while True:
            everyone = grid + refine
            if any(i.end_gap is not None for i in everyone):
                break
            silent = [i for i in everyone if i.silent_gap is not None]
            if silent and not refine:
                hi = min(i.silent_gap for i in silent if i.silent_gap is not None)
                lo = max((i.alive_gap for i in everyone
                          if i.alive_gap is not None and i.alive_gap < hi), default=0.0)
                for task, i in tasks.items():  # the larger gaps would say "silent" again
                    if i.gap is not None and i.gap > hi and not task.done():
                        task.cancel()
                s.progress.update("idle", description=f"idle: silent between {lo:.1f} and "
                                                      f"{hi:.1f} s; pinning it down")
                steps = [lo + (hi - lo) * j / (REFINE + 1) for j in range(1, REFINE + 1)]
                more = await asyncio.gather(*(_idler(s, g) for g in steps),
                                            return_exceptions=True)
                refine = [m for m in more if isinstance(m, _Idler) and m.unusable is None]
                res.connections += len(refine)
                for i in refine:
                    tasks[asyncio.create_task(_watch(s, i))] = i
                if not refine:
                    refine = [grid[0]]  # nothing to refine with: settle for the bracket
                continue
            pending = [t for t in tasks if not t.done()]
            if not pending or loop.time() > deadline:
                break
            await asyncio.wait(pending, timeout=deadline - loop.time(),
                               return_when=asyncio.FIRST_COMPLETED)
        _idle_verdict(res, grid + refine)
        if keep is not None and ka_task is not None:
            await _keepalive_verdict(s, res, keep, ka_task, every)
    finally:
        for task in [*tasks, ticker, *( [ka_task] if ka_task else [])]:
            task.cancel()
        await asyncio.gather(*tasks, ticker, *([ka_task] if ka_task else []),
                             return_exceptions=True)
        res.waited_s = loop.time() - started
        for i in grid + refine + ([keep] if keep else []):
            if id(i.conn) in s.silent:
                i.conn.abort()
            else:
                i.conn.close()
        s.progress.finish("idle", "idle: " + (
            f"{res.close} after {res.timeout_s:g} s" if res.timeout_s is not None
            else "no timeout"))


def _idle_verdict(res: IdleProbe, idlers: list[_Idler]) -> None:
    ended = [i for i in idlers if i.end_gap is not None]
    if ended:
        first = min(ended, key=lambda i: i.end_gap or 0.0)
        conn = first.conn
        res.timeout_s = round(first.end_gap or 0.0, 3)
        if conn.goaway is not None:
            res.close = "goaway"
            res.goaway_code = conn.goaway.error_code
            res.goaway_last_stream_id = conn.goaway.last_stream_id
        elif conn.closed is not None and conn.closed.how == "rst":
            res.close = "rst"
        else:
            res.close = "fin"
        return
    silent = [i.silent_gap for i in idlers if i.silent_gap is not None]
    if silent:
        hi = min(silent)
        lo = max((i.alive_gap for i in idlers if i.alive_gap is not None and i.alive_gap < hi),
                 default=0.0)
        res.close = "silent"
        res.silent_bracket = (round(lo, 3), round(hi, 3))
        res.timeout_s = round((lo + hi) / 2, 3)
        return
    res.close = "none"


async def _keepalive_verdict(s: _Session, res: IdleProbe, keep: _Idler,
                             task: asyncio.Task[None], every: float) -> None:
    """Did the connection PINGed all along outlive the idle timeout (by a quarter)?"""
    t = res.timeout_s
    if t is None:
        return  # no timeout: nothing to outlive
    if t < 2 * every:
        res.note = (f"the idle timeout ({t:g} s) is too short next to the keep-alive PING "
                    f"interval ({every:g} s) to tell whether PING keeps a connection alive")
        return
    need = t * 1.25 + max(0.25, 2 * every)
    conn = keep.conn
    s.progress.update("idle", description=f"idle: {res.close} after {t:g} s; does PING "
                                          "keep a connection alive?")
    await _wait(conn, lambda: keep.last_ack_gap >= need or task.done(),
                keep.start + need + s.grace + every - conn.now())
    if keep.last_ack_gap >= need:
        res.ping_keeps_alive = True
    elif keep.dead is not None or task.done():
        res.ping_keeps_alive = False
        res.keepalive_end = keep.dead
    else:
        res.note = "the keep-alive connection's PINGs could not be followed to the end"


async def _tick(s: _Session, key: str, started: float, total: float) -> None:
    """Move a time-based progress bar."""
    loop = asyncio.get_running_loop()
    while True:
        s.progress.update(key, completed=min(loop.time() - started, total))
        await asyncio.sleep(0.25)


# ------------------------------------------------------------------------------ download


async def _download_probe(s: _Session, res: DownloadProbe) -> None:
    s.progress.start("download", f"download {res.path}", None)
    sid = 1
    last_at: list[float] = []

    def count(frame: TracedFrame) -> None:
        if frame.direction == "recv" and frame.type == "DATA" and frame.stream_id == sid:
            res.data_frames += 1
            res.max_data_frame = max(res.max_data_frame, frame.length)
            if frame.at is not None:
                if last_at and frame.at - last_at[0] > 1.0:
                    res.stalls += 1
                last_at[:] = [frame.at]
        elif frame.direction == "send" and frame.type == "WINDOW_UPDATE":
            res.window_updates_sent += 1

    conn = await s.open(max_frames=64, on_frame=count)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(30.0, 3 * s.opts.timeout)
    ex = s.request(conn, res.path)
    sid = ex.stream_id
    started = conn.now()
    try:
        while not ex.done.is_set():
            seen = ex.body_bytes
            if seen >= MAX_DOWNLOAD:
                conn.reset(ex, _CANCEL)
                res.error = f"cut short after {seen} bytes (the probe counts at most " \
                            f"{MAX_DOWNLOAD >> 20} MiB)"
                break
            left = deadline - loop.time()
            if left <= 0:
                conn.reset(ex, _CANCEL)
                res.error = f"not finished after {max(30.0, 3 * s.opts.timeout):g} s"
                break
            if not await _wait(conn, _grew(ex, seen),
                               min(s.opts.timeout, left)):
                conn.reset(ex, _CANCEL)
                res.error = f"stalled: no DATA for {s.opts.timeout:g} s after {seen} bytes"
                break
            s.progress.update("download", description=f"download {res.path}: "
                                                      f"{ex.body_bytes >> 10} KiB")
        res.status = ex.status
        res.bytes = ex.body_bytes
        res.seconds = (ex.ended_at if ex.ended_at is not None else conn.now()) - started
        res.complete = ex.ok and res.error is None
        if res.error is None and not ex.ok:
            res.error = _outcome(conn, ex)
    finally:
        conn.close()
        s.progress.finish("download", f"download: {res.bytes} bytes")


# ------------------------------------------------------------------------------ the probe


async def run_probe(
    url: str,
    *,
    h2c: bool = False,
    insecure: bool = False,
    ca_file: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
    idle_max: float = 120.0,
    request_cap_max: int = 2000,
    streams_max: int = 200,
    timeout: float = 10.0,
    download_path: str | None = None,
    slow_path: str | None = None,
    progress: ProbeProgress | None = None,
) -> ProbeResult:
    """Probe ``url`` and return what was measured (render it with :mod:`report`).

    Raises :class:`DoctorError` (a one-line message) when no HTTP/2 connection can be made at
    all, or for options out of range; anything that fails later is recorded in the result."""
    opts = _Options(h2c=h2c, insecure=insecure, ca_file=ca_file,
                    headers=tuple((k.lower(), v) for k, v in headers), idle_max=idle_max,
                    request_cap_max=request_cap_max, streams_max=streams_max, timeout=timeout,
                    download_path=download_path, slow_path=slow_path)
    _check(opts)
    target = parse_target(url, h2c=h2c)
    session = _Session(target, opts, progress or ProbeProgress())
    started = time.monotonic()
    result = ProbeResult(url=target.url, options={
        "h2c": h2c, "insecure": insecure, "ca_file": ca_file,
        "headers": [f"{k}: {v}" for k, v in opts.headers], "idle_max": idle_max,
        "request_cap_max": request_cap_max, "streams_max": streams_max, "timeout": timeout,
        "download_path": download_path, "slow_path": slow_path})
    try:
        main = await session.open()
        result.alpn, result.tls_version = main.alpn, main.tls_version
        result.settings = {setting_name(k): v for k, v in sorted(main.peer_settings.items())}
        if download_path is not None:
            result.flow.download = DownloadProbe(path=download_path)
        await _guarded("pings", _pings(session, main, result), result, 3 * timeout + 5)
        parts: list[tuple[str, Awaitable[None], Any]] = [
            ("main", _main_probe(session, main, result), result.headers),
            ("streams", _after_idle_setup(session, _stream_probe(session, result.streams)),
             result.streams),
            ("request cap", _after_idle_setup(
                session, _request_cap_probe(session, result.request_cap)), result.request_cap),
            ("idle", _idle_probe(session, result.idle), result.idle),
        ]
        if result.flow.download is not None:
            parts.append(("download", _after_idle_setup(
                session, _download_probe(session, result.flow.download)), result.flow.download))
        limit = 2 * idle_max + 4 * timeout + 30
        await asyncio.gather(*(_guarded(name, coro, part, limit)
                               for name, coro, part in parts))
    finally:
        session.close_all()
        result.elapsed_s = time.monotonic() - started
    return result


async def _after_idle_setup(s: _Session, coro: Awaitable[None]) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(s.idle_ready.wait(), 2 * s.opts.timeout)
    await coro


async def _guarded(name: str, coro: Awaitable[None], part: Any, limit: float) -> None:
    """Run the ``name`` probe; a failure of its connection or the overall time limit becomes
    that part's ``error`` (a one-liner), and the other probes go on."""
    try:
        async with asyncio.timeout(limit):
            await coro
    except TimeoutError:
        _set_error(part, f"did not finish within the probe's time limit ({limit:g} s)")
    except DoctorError as exc:
        _set_error(part, str(exc))
    except OSError as exc:
        _set_error(part, f"connection failed: {exc.strerror or exc}")


def _set_error(part: Any, message: str) -> None:
    if isinstance(part, ProbeResult):  # the PINGs on the main connection
        part.ping_error = part.ping_error or message
    elif getattr(part, "error", None) is None:
        part.error = message


# ------------------------------------------------------------------------------ CLI


class _RichProgress(ProbeProgress):
    """The probe's progress on stderr while it waits (only on a terminal, never with
    --json)."""

    def __init__(self, console: Console) -> None:
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        self.ids: dict[str, Any] = {}

    def __enter__(self) -> _RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def start(self, key: str, description: str, total: float | None = None) -> None:
        self.ids[key] = self.bar.add_task(escape(description), total=total)

    def update(self, key: str, *, completed: float | None = None,
               description: str | None = None) -> None:
        task = self.ids.get(key)
        if task is not None:
            self.bar.update(task, completed=completed,
                            description=escape(description) if description else None)

    def finish(self, key: str, description: str) -> None:
        task = self.ids.get(key)
        if task is not None:
            total = next((t.total for t in self.bar.tasks if t.id == task), None) or 1.0
            self.bar.update(task, description=escape(description), total=total,
                            completed=total)


_err = Console(stderr=True)


def _one_line_error(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``probe`` to the doctor group."""
    app.command("probe")(probe_command)


def probe_command(
    url: Annotated[str, typer.Argument(help="https://host[:port]/path (or http:// with --h2c).",
                                       show_default=False)],
    h2c: Annotated[bool, typer.Option(
        "--h2c", help="Cleartext HTTP/2 with prior knowledge instead of TLS with ALPN.")]
    = False,
    insecure: Annotated[bool, typer.Option(
        "--insecure", help="Do not check the server's TLS certificate.")] = False,
    ca_file: Annotated[Path | None, typer.Option(
        help="Trust the CA certificates in this PEM file.")] = None,
    header: Annotated[list[str] | None, typer.Option(
        "--header", "-H", help="Add a request header, NAME:VALUE (repeatable).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the JSON document (keys: see `pydoc h2guard.doctor.probe`).")]
    = False,
    idle_max: Annotated[float, typer.Option(
        help="Wait at most this long (s) for an idle timeout; a black hole may take up to "
             "twice as long to pin down.")] = 120.0,
    request_cap_max: Annotated[int, typer.Option(
        help="Send at most this many requests on one connection looking for a GOAWAY.")]
    = 2000,
    streams_max: Annotated[int, typer.Option(
        help="Open at most this many streams at once looking for the enforced limit.")] = 200,
    timeout: Annotated[float, typer.Option(
        help="Bound (s) on each step: connecting, each response, each PING.")] = 10.0,
    download_path: Annotated[str | None, typer.Option(
        help="A path with a large response (e.g. /bytes/10000000) to watch flow control.")]
    = None,
    slow_path: Annotated[str | None, typer.Option(
        help="A path that answers slowly, to hold streams open for the stream-limit probe "
             "(default: requests without END_STREAM to the URL's path).")] = None,
) -> None:
    """Measure what an HTTP/2 endpoint enforces: stream limit, request cap, idle timeout and
    how connections end, whether PING keeps them alive, header and flow-control limits; then
    the client settings that fit (h2guard, httpx, Java, Go, Node, OkHttp, gRPC).

    The probes run at the same time on separate connections, so the whole run takes about
    --idle-max. Exit code 2 (one line on stderr) when no HTTP/2 connection can be made.
    """
    try:
        headers = [parse_header(h) for h in header or ()]
        show = not as_json and _err.is_terminal
        progress: ProbeProgress = _RichProgress(_err) if show else ProbeProgress()
        with progress if isinstance(progress, _RichProgress) else contextlib.nullcontext():
            result = asyncio.run(run_probe(
                url, h2c=h2c, insecure=insecure,
                ca_file=str(ca_file) if ca_file is not None else None, headers=headers,
                idle_max=idle_max, request_cap_max=request_cap_max, streams_max=streams_max,
                timeout=timeout, download_path=download_path, slow_path=slow_path,
                progress=progress))
    except DoctorError as exc:
        raise _one_line_error(str(exc)) from None
    except KeyboardInterrupt:
        raise _one_line_error("interrupted", 130) from None
    except Exception as exc:  # a bug must still not print a traceback at a user
        raise _one_line_error(f"the probe failed unexpectedly: {type(exc).__name__}: {exc} "
                              "(please report it)") from None
    if as_json:
        print(json.dumps(to_json(result), indent=2))
    else:
        render(result, Console())
