"""``h2guard doctor middlebox``: what a proxy does with each upstream failure.

A reset rarely reaches a client as the upstream sent it: a proxy in between may pass it on,
translate it (a 502, an RST_STREAM of another code, REFUSED_STREAM, a GOAWAY), retry the request
upstream (and so maybe write twice), or hide it behind a normal 200. Which one decides what the
client may safely do next (docs/FINDINGS.md: behind HAProxy a REFUSED_STREAM does not prove the
request was unprocessed), and documentation rarely says. So this command measures it:

* h2guard runs the chaos server in-process on ``127.0.0.1:UPSTREAM_PORT`` (cleartext HTTP/2,
  and HTTP/1.1 on the same port) as the proxy's upstream: the proxy must already be configured
  to forward to that address;
* for each fault in turn (:func:`checks`), it switches the chaos server's live fault set
  (``faults.clear()`` / ``faults.add()``) and restarts its listener, so that no pooled upstream
  connection carries one row's connection-level faults (read when a connection opens) into the
  next;
* it sends requests through the proxy (``--via``: h2 over TLS for https://, h2c for http://)
  on a fresh client connection, and compares what the chaos server did (its ``chaos.fault``
  events, its request count, the side-effect ledger of ``POST /orders``) with what the client
  saw.

Each row is bounded by ``--row-timeout``: a proxy that hangs gives "timeout" for that row, and
the doctor goes on. Faults are HTTP/2 frames: a proxy that speaks HTTP/1.1 to the upstream gets
none of them, and those rows say "not injected".
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from h2guard.chaos import ChaosServer, serve
from h2guard.chaos.model import (
    Fault,
    FlowControl,
    GoAway,
    IdleTimeout,
    MaxConcurrentStreams,
    RstStream,
    Trigger,
)
from h2guard.codes import code_name
from h2guard.doctor.connection import (
    DoctorConnection,
    DoctorError,
    Exchange,
    Target,
    parse_target,
)

__all__ = ["VERDICTS", "Check", "MiddleboxOptions", "Row", "checks", "register",
           "run_middlebox"]

Probe = Literal["get", "order", "idle", "concurrent", "upload", "download"]
Verdict = Literal["ok", "broken", "passed on", "translated", "retried", "swallowed",
                  "timeout", "not injected", "error"]
#: Every verdict a row can have, for ``--json`` consumers.
VERDICTS: Final[tuple[str, ...]] = ("ok", "broken", "passed on", "translated", "retried",
                                    "swallowed", "timeout", "not injected", "error")

NO_ERROR, INTERNAL_ERROR, REFUSED_STREAM, CANCEL = 0x0, 0x2, 0x7, 0x8
ENHANCE_YOUR_CALM, HTTP_1_1_REQUIRED = 0xB, 0xD

#: Real seconds at ``time_scale`` 1: long enough to tell from scheduling noise, short enough
#: that the whole table takes seconds. ``--time-scale`` multiplies every one of them.
IDLE_AFTER: Final = 1.0  # the upstream closes a connection idle this long
STALL: Final = 2.0  # the upstream withholds WINDOW_UPDATE this long
SLOW_MS: Final = 500  # each concurrent request takes this long upstream
UPLOAD: Final = 256 * 1024  # above every initial window: the proxy must wait for updates
DOWNLOAD: Final = 256 * 1024
CONCURRENT: Final = 3
#: After the listener restarts: time for the proxy to see its pooled connections close.
_SETTLE: Final = 0.05


@dataclass(frozen=True, slots=True)
class Check:
    """One row: the faults the upstream gets, how the client probes, and what "passed on as
    is" means for it (``frame`` with ``code``, as the client would see it)."""

    id: str
    fault: str
    faults: tuple[Fault, ...]
    probe: Probe
    frame: Literal["RST_STREAM", "GOAWAY", "FIN", "RST"] | None = None
    code: int | None = None


def checks(time_scale: float = 1.0) -> list[Check]:
    """The rows, in order. The faults hold unscaled durations (the chaos server scales them,
    and the probes scale their waits, by the same ``time_scale``); the texts say the real
    ones."""
    idle, stall = IDLE_AFTER * time_scale, STALL * time_scale

    def before_response(code: int) -> Check:
        name = code_name(code)
        return Check(f"rst_{name.lower()}", f"RST_STREAM {name} before the response",
                     (RstStream(code=code, at="request_headers",
                                when=Trigger(path="/echo")),), "get", "RST_STREAM", code)

    return [
        Check("baseline", "none (baseline: GET /echo)", (), "get"),
        *(before_response(code) for code in (REFUSED_STREAM, CANCEL, INTERNAL_ERROR,
                                              ENHANCE_YOUR_CALM, HTTP_1_1_REQUIRED)),
        Check("rst_mid_response", "RST_STREAM INTERNAL_ERROR after 16 KiB of the body",
              (RstStream(code=INTERNAL_ERROR, at="response_body", after_bytes=16384,
                         when=Trigger(path="/bytes/*")),), "download", "RST_STREAM",
              INTERNAL_ERROR),
        Check("goaway_graceful", "GOAWAY NO_ERROR, graceful (the request is processed)",
              (GoAway(mode="graceful", code=NO_ERROR, at="request_headers",
                      when=Trigger(path="/echo")),), "get", "GOAWAY", NO_ERROR),
        Check("goaway_abrupt", "GOAWAY INTERNAL_ERROR, last_stream_id below the request "
                               "(abrupt: it is dropped)",
              (GoAway(mode="abrupt", code=INTERNAL_ERROR, at="request_headers",
                      when=Trigger(path="/echo")),), "get", "GOAWAY", INTERNAL_ERROR),
        Check("idle_fin", f"idle connection closed by FIN after {idle:.2g} s",
              (IdleTimeout(after=IDLE_AFTER, action="fin"),), "idle", "FIN"),
        Check("idle_rst", f"idle connection closed by TCP RST after {idle:.2g} s",
              (IdleTimeout(after=IDLE_AFTER, action="rst"),), "idle", "RST"),
        Check("stream_limit", f"MAX_CONCURRENT_STREAMS 1, then {CONCURRENT} requests at "
                              "once",
              (MaxConcurrentStreams(limit=1),), "concurrent", "RST_STREAM", REFUSED_STREAM),
        Check("flow_stall", f"no WINDOW_UPDATE for {stall:.2g} s during a "
                            f"{UPLOAD // 1024} KiB upload",
              (FlowControl(withhold_updates=STALL, when=Trigger(path="/echo",
                                                                method="POST")),),
              "upload"),
        Check("reset_after_app", "RST_STREAM INTERNAL_ERROR after the app ran "
                                 "(POST /orders: written)",
              (RstStream(code=INTERNAL_ERROR, at="after_app",
                         when=Trigger(method="POST", path="/orders")),), "order",
              "RST_STREAM", INTERNAL_ERROR),
    ]


@dataclass(frozen=True, slots=True)
class MiddleboxOptions:
    """Where the proxy is, where its upstream must be, and the bounds."""

    via: str
    upstream_port: int
    insecure: bool = False
    ca_file: str | None = None
    row_timeout: float = 10.0
    time_scale: float = 1.0
    only: tuple[str, ...] = ()


@dataclass(slots=True)
class Outcome:
    """What the client saw of one request."""

    status: int | None = None
    reset: str | None = None
    reset_by: Literal["proxy", "h2guard"] | None = None
    unprocessed: bool = False
    cut_off: bool = False
    timed_out: bool = False
    body_bytes: int = 0
    content_length: int | None = None
    end_stream: bool = False  # the proxy's END_STREAM arrived (even on a short body)
    seconds: float | None = None

    @property
    def truncated(self) -> bool:
        """The proxy ended the stream cleanly but short of its own content-length: what a
        client that does not check the length takes for a whole response."""
        return (self.end_stream and self.content_length is not None
                and self.body_bytes < self.content_length)

    @property
    def ok(self) -> bool:
        return (self.status is not None and 200 <= self.status < 400 and self.reset is None
                and not (self.unprocessed or self.cut_off or self.timed_out or self.truncated))

    def text(self) -> str:
        if self.timed_out:
            head = f"{_status(self.status)} then nothing" if self.status else "nothing"
            return f"{head} (timeout)"
        parts = []
        if self.status is not None:
            parts.append(_status(self.status))
        if self.truncated:
            parts.append(f"END_STREAM after {self.body_bytes} of {self.content_length} "
                         "body bytes (truncated)")
            if self.reset_by == "h2guard":
                return ", then ".join(parts)  # h2guard's own reset says only the same
        if self.reset is not None:
            who = "" if self.reset_by == "proxy" else " (by h2guard)"
            parts.append(f"RST_STREAM {self.reset}{who}")
        if self.unprocessed:
            parts.append("refused by GOAWAY (unprocessed)")
        if self.cut_off:
            parts.append("connection closed before the response ended")
        return ", then ".join(parts) if parts else "nothing"

    def to_json(self) -> dict[str, object]:
        return {"status": self.status, "reset": self.reset, "reset_by": self.reset_by,
                "unprocessed": self.unprocessed, "cut_off": self.cut_off,
                "timed_out": self.timed_out, "body_bytes": self.body_bytes,
                "content_length": self.content_length, "end_stream": self.end_stream,
                "truncated": self.truncated,
                "seconds": None if self.seconds is None else round(self.seconds, 3)}


@dataclass(slots=True)
class Row:
    """One line of the report. :meth:`to_json` keys are stable."""

    check: Check
    verdict: Verdict = "error"
    upstream_did: str = ""
    client_saw: str = ""
    note: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    client_goaway: str | None = None
    client_connection: str = "open"
    upstream_faults: list[dict[str, object]] = field(default_factory=list)
    upstream_requests: int = 0
    upstream_connections: int = 0
    upstream_protocols: list[str] = field(default_factory=list)
    ledger_writes: int | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.check.id,
            "fault": self.check.fault,
            "upstream_did": self.upstream_did,
            "client_saw": self.client_saw,
            "verdict": self.verdict,
            "note": self.note,
            "client": [o.to_json() for o in self.outcomes],
            "client_requests": len(self.outcomes),
            "client_goaway": self.client_goaway,
            "client_connection": self.client_connection,
            "upstream_faults": self.upstream_faults,
            "upstream_requests": self.upstream_requests,
            "upstream_connections": self.upstream_connections,
            "upstream_protocols": self.upstream_protocols,
            "ledger_writes": self.ledger_writes,
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------ running


async def run_middlebox(options: MiddleboxOptions, *,
                        on_row: Callable[[Row], None] | None = None) -> list[Row]:
    """Run every check through the proxy; ``on_row`` hears each row as it is finished.

    Raises :class:`DoctorError` when the run cannot start: a bad option, the upstream port
    taken, or a proxy that cannot be reached at all (the baseline request fails to connect).
    """
    target = _via_target(options)
    if options.row_timeout <= 0:
        raise DoctorError("--row-timeout must be above 0")
    if options.time_scale <= 0:
        raise DoctorError("--time-scale must be above 0")
    selected = checks(options.time_scale)
    if options.only:
        known = {c.id for c in selected}
        unknown = [name for name in options.only if name not in known]
        if unknown:
            raise DoctorError(f"--only {','.join(unknown)}: no such check (known: "
                              f"{', '.join(c.id for c in selected)})")
        selected = [c for c in selected if c.id in options.only or c.id == "baseline"]
    rows: list[Row] = []
    async with contextlib.AsyncExitStack() as stack:
        try:
            server = await stack.enter_async_context(
                serve(h2c=True, port=options.upstream_port, time_scale=options.time_scale))
        except OSError as exc:
            raise DoctorError(f"127.0.0.1:{options.upstream_port}: cannot listen for the "
                              f"proxy's upstream: {exc.strerror or exc} (is something else "
                              "on that port?)") from None
        for check in selected:
            row = await _run_row(server, target, check, options,
                                 restart=check is not selected[0])
            if check.id == "baseline" and row.verdict == "error":
                raise DoctorError(f"the proxy at {options.via} cannot be reached: "
                                  f"{row.client_saw}")
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _via_target(options: MiddleboxOptions) -> Target:
    via = options.via
    if "://" not in via:
        raise DoctorError(f"--via {via!r}: give the scheme: https:// (h2 over TLS) or "
                          "http:// (h2c, prior knowledge)")
    target = parse_target(via, h2c=via.lower().startswith("http://"))
    if target.path not in ("", "/"):
        raise DoctorError(f"--via {via!r}: give no path: the requests use the chaos server's "
                          "own paths (/echo, /orders, ...), which the proxy must forward as is")
    if not 1 <= options.upstream_port <= 65535:
        raise DoctorError(f"--upstream-port {options.upstream_port}: a port is 1..65535")
    if target.port == options.upstream_port and target.host in ("127.0.0.1", "localhost"):
        raise DoctorError("--via and --upstream-port are the same address: the proxy "
                          "listens on one port and forwards to another")
    return target


async def _restart(server: ChaosServer) -> None:
    """Close every upstream connection and listen again on the same port: the proxy's pooled
    connections go (it sees them close while idle) and the next row starts on new ones."""
    await server.stop()
    try:
        await server.start()
    except OSError as exc:
        raise DoctorError(f"127.0.0.1:{server.config.port}: the upstream port was taken "
                          f"between two rows: {exc.strerror or exc}") from None
    await asyncio.sleep(_SETTLE)


async def _run_row(server: ChaosServer, target: Target, check: Check,
                   options: MiddleboxOptions, *, restart: bool) -> Row:
    row = Row(check)
    server.faults.clear()
    if restart:
        await _restart(server)
    seq = server.events.last_seq
    requests = server.requests
    for fault in check.faults:
        server.faults.add(fault)
    probe = _Probe(target, options, check)
    started = time.monotonic()
    try:
        async with asyncio.timeout(options.row_timeout):
            await probe.run()
    except TimeoutError:
        probe.timed_out = True
    except DoctorError as exc:
        probe.close()
        row.client_saw = str(exc)
        row.seconds = time.monotonic() - started
        server.faults.clear()
        return row
    except BaseException:
        probe.close()
        raise
    row.seconds = time.monotonic() - started
    server.faults.clear()
    _observe_client(row, probe)  # before closing: our own close is not the proxy's doing
    probe.close()
    await asyncio.sleep(0)  # the upstream's side of a close is in already-queued callbacks
    _observe_upstream(row, server, seq, requests, probe)
    _judge(row, probe)
    return row


class _Probe:
    """The client's side of one row: requests through the proxy, on one fresh connection."""

    def __init__(self, target: Target, options: MiddleboxOptions, check: Check) -> None:
        self.target = target
        self.options = options
        self.check = check
        self.conn: DoctorConnection | None = None  # the newest; all of them in conns
        self.conns: list[DoctorConnection] = []
        self.exchanges: list[Exchange] = []
        self.request_id = f"doctor-{uuid.uuid4().hex[:12]}"
        self.scale = options.time_scale
        self.timed_out = False

    async def _open(self) -> DoctorConnection:
        conn = await DoctorConnection.open(self.target, insecure=self.options.insecure,
                                           ca_file=self.options.ca_file,
                                           timeout=self.options.row_timeout, max_frames=2000)
        self.conn = conn
        self.conns.append(conn)
        return conn

    def _send(self, conn: DoctorConnection, method: str, path: str,
              body: bytes | None = None) -> Exchange:
        ex = conn.request(method, path, headers=[("x-request-id", self.request_id)],
                          body=body)
        self.exchanges.append(ex)
        return ex

    async def run(self) -> None:
        conn = await self._open()
        forever = 3600.0  # the row's own timeout bounds every wait here
        probe = self.check.probe
        if probe in ("get", "order", "upload", "download"):
            method, path, body = {
                "get": ("GET", "/echo", None),
                "order": ("POST", "/orders", b'{"sku": "doctor"}'),
                "upload": ("POST", "/echo", bytes(UPLOAD)),
                "download": ("GET", f"/bytes/{DOWNLOAD}", None),
            }[probe]
            await conn.response(self._send(conn, method, path, body), forever)
        elif probe == "idle":
            await conn.response(self._send(conn, "GET", "/echo"), forever)
            # idle long enough for the upstream's timer (plus scheduling slack) to fire
            await asyncio.sleep(IDLE_AFTER * self.scale * 1.5 + 0.2)
            if conn.closed is not None or conn.goaway is not None:
                conn = await self._open()  # the proxy dropped us: ask again on a new one
            await conn.response(self._send(conn, "GET", "/echo"), forever)
        elif probe == "concurrent":
            # one request first, so the proxy has the upstream's SETTINGS (the limit) before
            # the burst: the row is about honouring the limit, not about the race before it
            await conn.response(self._send(conn, "GET", "/echo"), forever)
            ms = max(50, int(SLOW_MS * self.scale))
            sent = [self._send(conn, "GET", f"/delay/{ms}") for _ in range(CONCURRENT)]
            await asyncio.gather(*(conn.response(ex, forever) for ex in sent))
        # let a GOAWAY or close that follows the last response arrive
        await conn.wait_closed(0.05)

    def close(self) -> None:
        for conn in self.conns:
            conn.abort()

    def outcomes(self) -> list[Outcome]:
        out = []
        for ex in self.exchanges:
            o = Outcome(status=ex.status, body_bytes=ex.body_bytes,
                        content_length=_content_length(ex),
                        end_stream=ex.end_stream_received or self._end_stream_frame(ex))
            if ex.reset_code is not None and ex.reset_code >= 0:
                o.reset = code_name(ex.reset_code)
                o.reset_by = "proxy" if ex.reset_by_peer else "h2guard"
            o.unprocessed = ex.unprocessed
            finished = ex.done.is_set()
            if not finished:
                o.timed_out = self.timed_out
            elif o.reset is None and not o.unprocessed and not o.end_stream:
                o.cut_off = True
            if ex.ended_at is not None:
                o.seconds = ex.ended_at - ex.sent_at
            out.append(o)
        return out


    def _end_stream_frame(self, ex: Exchange) -> bool:
        """Whether the proxy sent END_STREAM on the exchange's stream: h2 may have rejected
        the stream (a body short of its content-length) before reporting its end."""
        return any(f.direction == "recv" and f.stream_id == ex.stream_id
                   and "END_STREAM" in f.flags for conn in self.conns
                   if ex in conn.exchanges.values() for f in conn.frames)


def _content_length(ex: Exchange) -> int | None:
    for name, value in ex.headers:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


def _observe_client(row: Row, probe: _Probe) -> None:
    """What the client saw in this row: each request's outcome, and its connection's end."""
    row.outcomes = probe.outcomes()
    conn = probe.conns[0] if probe.conns else None  # the one that saw the fault
    if conn is not None:
        if conn.goaway is not None:
            row.client_goaway = code_name(conn.goaway.error_code)
        if conn.closed is not None:
            row.client_connection = "rst" if conn.closed.transport == "rst" else (
                "goaway" if conn.goaway is not None else "fin")
        elif conn.goaway is not None:
            row.client_connection = "goaway"


def _observe_upstream(row: Row, server: ChaosServer, seq: int, requests: int,
                      probe: _Probe) -> None:
    """What the upstream did in this row: its fault events, requests, connections, writes."""
    events = server.events.since(seq)
    faults = [dict(e.data) for e in events if e.name == "chaos.fault"]
    opened = [e for e in events if e.name == "chaos.connection.opened"]
    row.upstream_faults = [{k: v for k, v in f.items()
                            if k in ("kind", "code", "moment", "action", "mode", "stream",
                                     "connection", "reason", "seconds", "last_stream_id")}
                           for f in faults]
    row.upstream_requests = server.requests - requests
    row.upstream_connections = len(opened)
    row.upstream_protocols = sorted({str(e.data.get("protocol", "?")) for e in opened})
    if row.check.probe == "order":
        row.ledger_writes = sum(1 for e in server.ledger.effects()
                                if e.request_id == probe.request_id)


def _describe_fault(f: dict[str, object]) -> str:
    kind, code, moment = f.get("kind"), f.get("code"), f.get("moment")
    if kind == "rst_stream":
        when = {"request_headers": "on arrival", "request_end": "after the request body",
                "after_app": "after the app ran", "response_headers": "after the headers",
                "response_body": "mid-body"}.get(str(moment), str(moment))
        return f"RST_STREAM {code} {when}"
    if kind == "goaway":
        if f.get("reason") is not None:
            return "REFUSED_STREAM after its GOAWAY"
        return f"GOAWAY {code} ({f.get('mode', '?')}, last_stream_id={f.get('last_stream_id')})"
    if kind == "idle_timeout":
        how = {"fin": "FIN", "rst": "TCP RST", "goaway": f"GOAWAY {code}"}.get(
            str(f.get("action")), str(f.get("action")))
        return f"closed an idle connection by {how}"
    if kind == "max_concurrent_streams":
        return "REFUSED_STREAM over MAX_CONCURRENT_STREAMS"
    if kind == "flow_control":
        seconds = f.get("seconds")
        held = f"{seconds:.2g} s" if isinstance(seconds, float) else "a while"
        return f"withheld WINDOW_UPDATE for {held}"
    return f"{kind} {code or ''}".strip()


def _judge(row: Row, probe: _Probe) -> None:
    """Fill in upstream_did, client_saw, verdict and note from what was observed."""
    check = row.check
    said: dict[str, int] = {}
    for f in row.upstream_faults:
        text = _describe_fault(f)
        said[text] = said.get(text, 0) + 1
    if check.probe == "concurrent" and "h2" in row.upstream_protocols:
        said = {"advertised MAX_CONCURRENT_STREAMS 1": 1, **said}
    fired = bool(row.upstream_faults) or bool(said)
    parts = [text if n == 1 else f"{text} ({n}x)" for text, n in said.items()]
    tally = (f"{row.upstream_requests} request{'s' * (row.upstream_requests != 1)} on "
             f"{row.upstream_connections} new connection"
             f"{'s' * (row.upstream_connections != 1)}")
    if row.upstream_protocols:
        tally += f" ({', '.join(row.upstream_protocols)})"
    parts.append(tally)
    if row.ledger_writes is not None:
        parts.append(f"ledger: {row.ledger_writes} write{'s' * (row.ledger_writes != 1)}")
    row.upstream_did = "; ".join(parts)

    outcomes = row.outcomes
    if check.probe == "concurrent" and len(outcomes) > 1:
        saw = f"{outcomes[0].text()}, then at once: {_tally(outcomes[1:])}"
        timed = outcomes[1:]
    else:
        saw = ", then ".join(o.text() for o in outcomes)
        timed = outcomes if check.probe == "upload" else []
    if timed and all(o.seconds is not None for o in timed):
        saw += f" (after {max(o.seconds or 0.0 for o in timed):.1f} s)"
    if row.client_goaway is not None:
        saw += f"; GOAWAY {row.client_goaway}"
    if row.client_connection in ("fin", "rst"):
        saw += f"; connection closed ({'TCP RST' if row.client_connection == 'rst' else 'FIN'})"
    row.client_saw = saw or "nothing"

    attempts = row.upstream_requests + sum(
        1 for f in row.upstream_faults if f.get("kind") == "max_concurrent_streams")
    writes = row.ledger_writes or 0
    if any(o.timed_out for o in outcomes) or probe.timed_out:
        row.verdict = "timeout"
    elif check.id == "baseline":
        row.verdict = "ok" if outcomes and all(o.ok for o in outcomes) else "broken"
    elif not fired:
        row.verdict = "not injected"
    elif attempts > len(outcomes) or writes > 1:
        row.verdict = "retried"
    elif _passed_on(row):
        row.verdict = "passed on"
    elif outcomes and all(o.ok for o in outcomes):
        row.verdict = "swallowed"
    else:
        row.verdict = "translated"
    row.note = _note(row, attempts, writes)


def _tally(outcomes: Sequence[Outcome]) -> str:
    """``200 OK x2, RST_STREAM REFUSED_STREAM`` (first-seen order)."""
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.text()] = counts.get(o.text(), 0) + 1
    return ", ".join(text if n == 1 else f"{n} x {text}" for text, n in counts.items())


def _passed_on(row: Row) -> bool:
    check = row.check
    if check.frame == "RST_STREAM":
        name = code_name(check.code or 0)
        return any(o.reset == name and o.reset_by == "proxy" for o in row.outcomes)
    if check.frame == "GOAWAY":
        return row.client_goaway == code_name(check.code or 0)
    if check.frame == "FIN":
        return row.client_connection == "fin"
    if check.frame == "RST":
        return row.client_connection == "rst"
    return False


def _note(row: Row, attempts: int, writes: int) -> str:
    check = row.check
    notes = []
    if row.verdict == "not injected":
        if row.upstream_protocols and "h2" not in row.upstream_protocols:
            notes.append("the proxy spoke HTTP/1.1 upstream: HTTP/2 faults do not apply")
        elif check.probe == "idle":
            notes.append("the proxy closed (or never kept) its idle upstream connection "
                         "before the upstream's timer")
        elif row.upstream_requests == 0:
            notes.append("no request reached the upstream")
    if writes >= 1 and any(o.reset == "REFUSED_STREAM" or o.unprocessed
                           for o in row.outcomes):
        notes.append(f"the upstream ran the request (ledger: {writes} write"
                     f"{'s' * (writes != 1)}) yet the client was told it was not processed: "
                     "a client that resends on that writes twice")
    if any(o.truncated for o in row.outcomes):
        notes.append("the proxy ended a short body with END_STREAM, as if complete: a client "
                     "that does not check content-length takes a truncated response for a "
                     "whole one")
    if writes > 1:
        notes.append(f"the proxy replayed a request the upstream had run: {writes} writes")
    elif row.verdict == "retried":
        notes.append(f"{attempts} upstream attempts for {len(row.outcomes)} client "
                     f"request{'s' * (len(row.outcomes) != 1)}")
    return "; ".join(notes)


def _status(code: int | None) -> str:
    if code is None:
        return "no status"
    try:
        return f"{code} {http.HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


# ------------------------------------------------------------------------------------ output


def render_table(rows: Sequence[Row], console: Console) -> None:
    """The report as a Rich table, then the notes under it."""
    table = Table(title="What the proxy did with each upstream failure", show_lines=False)
    for name, style in (("fault", ""), ("upstream did", ""), ("client saw", ""),
                        ("verdict", "bold")):
        table.add_column(name, style=style, overflow="fold")
    colours = {"ok": "green", "passed on": "cyan", "translated": "yellow", "retried": "magenta",
               "swallowed": "blue", "timeout": "red", "broken": "red", "error": "red",
               "not injected": "dim"}
    for row in rows:
        verdict = escape(row.verdict)
        table.add_row(escape(row.check.fault), escape(row.upstream_did),
                      escape(row.client_saw),
                      f"[{colours.get(row.verdict, 'white')}]{verdict}[/]")
    console.print(table)
    for row in rows:
        if row.note:
            console.print(f"- {escape(row.check.id)}: {escape(row.note)}", soft_wrap=True,
                          highlight=False)


# ------------------------------------------------------------------------------------ CLI

_err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr (never a traceback), and the exit code to leave with."""
    _err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``middlebox`` to the doctor group."""

    @app.command("middlebox")
    def middlebox(
        via: Annotated[str, typer.Option(
            "--via", help="The proxy's URL: https://host:port (h2 over TLS, ALPN) or "
                          "http://host:port (h2c, prior knowledge).", show_default=False)],
        upstream_port: Annotated[int, typer.Option(
            "--upstream-port", help="h2guard serves the proxy's upstream on 127.0.0.1:PORT "
                                    "(h2c and HTTP/1.1): configure the proxy to forward "
                                    "there.", show_default=False)],
        insecure: Annotated[bool, typer.Option(
            "--insecure", "-k", help="Do not verify the proxy's TLS certificate.")] = False,
        ca_file: Annotated[str | None, typer.Option(
            help="Trust this CA bundle (PEM) for the proxy's certificate.")] = None,
        as_json: Annotated[bool, typer.Option(
            "--json", help="A JSON list of rows (stable keys: id, fault, upstream_did, "
                           "client_saw, verdict, note, client, upstream_requests, ...).")]
        = False,
        row_timeout: Annotated[float, typer.Option(
            help="Seconds each row may take; a proxy that hangs gives 'timeout' for it.")]
        = 10.0,
        time_scale: Annotated[float, typer.Option(
            help=f"Multiply the rows' durations (idle {IDLE_AFTER:g} s, stall {STALL:g} s, "
                 f"slow requests {SLOW_MS} ms): 0.3 runs the table faster.")] = 1.0,
        only: Annotated[str | None, typer.Option(
            help="Comma-separated check ids to run (the baseline always runs): "
                 + ", ".join(c.id for c in checks()) + ".")] = None,
    ) -> None:
        """Check what a proxy does with each upstream HTTP/2 failure.

        h2guard serves the chaos server on 127.0.0.1:UPSTREAM_PORT as the proxy's upstream
        (cleartext HTTP/2, and HTTP/1.1 on the same port), sends requests through the proxy
        (--via), injects one upstream fault per row (RST_STREAM of each notable code, GOAWAY
        graceful and abrupt, idle close by FIN and by RST, a stream limit of 1, a flow-control
        stall, a reset after POST /orders ran) and reports what the client on the far side
        saw. Verdicts: passed on (same frame and code), translated (a 502/503/504, another
        RST_STREAM code, REFUSED_STREAM, a GOAWAY), retried (more upstream attempts than client
        requests), swallowed (a normal 200), timeout, not injected (the fault never reached
        the upstream, e.g. a proxy that speaks HTTP/1.1 upstream).

        The proxy must forward paths as they are (/echo, /orders, /bytes/N, /delay/MS) to
        127.0.0.1:UPSTREAM_PORT, over HTTP/2 for the faults to apply: nginx
        'grpc_pass grpc://127.0.0.1:9000;' (proxy_pass speaks HTTP/1.1), HAProxy
        'server s1 127.0.0.1:9000 proto h2'. Then, e.g.:
        h2guard doctor middlebox --via https://127.0.0.1:8443 --upstream-port 9000 -k
        The upstream's listener restarts between rows, so each row starts on new upstream
        connections.

        Exit code 0: the table was produced (whatever the verdicts); 1: the baseline request
        did not get a normal response; 2: the run could not start (bad option, upstream port
        taken, proxy unreachable), one line on stderr.
        """
        options = MiddleboxOptions(
            via=via, upstream_port=upstream_port, insecure=insecure, ca_file=ca_file,
            row_timeout=row_timeout, time_scale=time_scale,
            only=tuple(s.strip() for s in (only or "").split(",") if s.strip()))
        console = Console()
        progress = None if as_json else _err
        try:
            rows = asyncio.run(run_middlebox(options, on_row=None if progress is None else (
                lambda row: progress.print(f"[dim]{escape(row.check.id)}: "
                                           f"{escape(row.verdict)}[/]", highlight=False))))
        except DoctorError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        if as_json:
            print(json.dumps([row.to_json() for row in rows], indent=2))
        else:
            render_table(rows, console)
        baseline = next((r for r in rows if r.check.id == "baseline"), None)
        raise typer.Exit(1 if baseline is not None and baseline.verdict != "ok" else 0)

