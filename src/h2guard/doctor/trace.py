"""``h2guard doctor trace URL``: one request, every frame both ways as it happens.

Why a tracer of our own when ``nghttp -v`` exists: a reset is usually reported by a client as a
bare "stream error" with the evidence gone, and what one needs to see is the exact frame (type,
flags, stream, error code by name, SETTINGS by name) and *when* it came, relative to the
request. So this command drives one :class:`~h2guard.doctor.connection.DoctorConnection` (the
wire core in the client role, recording independently of h2's state machine) and prints each
:class:`~h2guard.wire.trace.TracedFrame` the moment it is sent or received, in the tracer's own
one-line (or ``--json``: one object per line) form, then one summary line: status, bytes, how
the stream ended and how the connection did.

Traces get pasted into tickets, so credentials are redacted by default: the values of
``authorization``, ``proxy-authorization``, ``cookie`` and ``set-cookie`` headers, in both
directions, read ``<redacted>`` unless ``--show-secrets``. (The tracer already cuts long values
at 60 characters; redaction hides the rest.)

Every wait is bounded by ``--timeout`` for the whole command: connecting, the TLS handshake, the
server's SETTINGS, the response, and a short linger afterwards to catch a GOAWAY or a close
that follows the response. Failures to talk HTTP/2 at all are one line on stderr, exit code 2.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Final

import typer
from rich.console import Console
from rich.markup import escape

from h2guard.codes import code_name
from h2guard.doctor.connection import (
    DoctorConnection,
    DoctorError,
    Exchange,
    parse_target,
)
from h2guard.wire.trace import TracedFrame

__all__ = ["MAX_UPLOAD", "REDACTED", "SECRET_HEADERS", "TraceOptions", "TraceResult",
           "parse_data", "parse_header", "redact", "register", "run_trace"]

#: Header names whose values are credentials (RFC 9110 §11.6.2, §11.7.2; RFC 6265).
SECRET_HEADERS: Final = frozenset({"authorization", "proxy-authorization", "cookie",
                                   "set-cookie"})
REDACTED: Final = "<redacted>"
#: Largest request body ``-d`` accepts: a trace shows frames, it is not an upload tool, and the
#: body is held in memory whole.
MAX_UPLOAD: Final = 64 * 1024 * 1024
#: After the stream ends, how long to wait for what usually follows: the close after a
#: GOAWAY, a GOAWAY after a reset (a server shedding load), anything at all after a response.
_LINGER_AFTER_GOAWAY: Final = 1.0
_LINGER_AFTER_RESET: Final = 0.25
_LINGER: Final = 0.1


@dataclass(frozen=True, slots=True)
class TraceOptions:
    """What to send, and how. ``method=None``: GET, or POST when there is a body."""

    url: str
    method: str | None = None
    data: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    h2c: bool = False
    insecure: bool = False
    ca_file: str | None = None
    as_json: bool = False
    show_secrets: bool = False
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class TraceResult:
    """The outcome of one trace: ``complete`` when a whole response arrived (any status)."""

    complete: bool
    summary: dict[str, object]
    line: str


def redact(frame: TracedFrame) -> TracedFrame:
    """The frame with credential header values replaced by ``<redacted>``; others unchanged."""
    headers = frame.details.get("headers")
    if not isinstance(headers, list | tuple):
        return frame
    changed = False
    shown: list[object] = []
    for pair in headers:
        if (isinstance(pair, list | tuple) and len(pair) == 2
                and str(pair[0]).lower() in SECRET_HEADERS):
            shown.append((pair[0], REDACTED))
            changed = True
        else:
            shown.append(pair)
    if not changed:
        return frame
    return dataclasses.replace(frame, details={**frame.details, "headers": shown})


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``('name', 'value')``; anything else is a one-line DoctorError."""
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value:
        raise DoctorError(f"-H {text!r}: expected 'Name: value'")
    return name.lower(), value.strip()


def parse_data(text: str) -> bytes:
    """``-d`` as curl reads it: ``@file`` (``@-``: standard input) or the text itself."""
    if not text.startswith("@"):
        data = text.encode()
    elif text == "@-":
        data = sys.stdin.buffer.read(MAX_UPLOAD + 1)
    else:
        path = Path(text[1:])
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_UPLOAD + 1)
        except OSError as exc:
            raise DoctorError(f"-d {text}: cannot read {path}: "
                              f"{exc.strerror or exc}") from None
    if len(data) > MAX_UPLOAD:
        raise DoctorError(f"-d {text}: larger than {MAX_UPLOAD // (1024 * 1024)} MiB "
                          "(a trace shows frames; it is not an upload tool)")
    return data


async def run_trace(options: TraceOptions, *, write: Callable[[str], None]) -> TraceResult:
    """Trace one request, calling ``write`` with one line per frame as it happens, then with
    the summary line. Raises :class:`DoctorError` when HTTP/2 could not be spoken at all."""
    if options.timeout <= 0:
        raise DoctorError("--timeout must be above 0")
    target = parse_target(options.url, h2c=options.h2c)
    if not target.tls and not options.h2c:
        raise DoctorError(f"{options.url}: http:// is cleartext: pass --h2c to speak HTTP/2 "
                          "with prior knowledge, or use https://")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + options.timeout

    def left() -> float:
        return max(0.0, deadline - loop.time())

    def on_frame(frame: TracedFrame) -> None:
        shown = frame if options.show_secrets else redact(frame)
        if options.as_json:
            obj = shown.to_json()
            if isinstance(obj["t"], float):
                obj["t"] = round(obj["t"], 6)  # microseconds: the clock says no more
            write(json.dumps(obj))
        else:
            write(shown.line())

    conn = await DoctorConnection.open(target, insecure=options.insecure,
                                       ca_file=options.ca_file, timeout=options.timeout,
                                       on_frame=on_frame)
    closed_by_us = False
    try:
        method = options.method or ("POST" if options.data is not None else "GET")
        ex = conn.request(method, target.path, headers=options.headers, body=options.data)
        timed_out = False
        try:
            await conn.response(ex, left())
        except TimeoutError:
            timed_out = True
        if conn.closed is None and not timed_out:
            if ex.unprocessed or conn.goaway is not None:
                linger = _LINGER_AFTER_GOAWAY
            elif ex.reset_code is not None and ex.reset_by_peer:
                linger = _LINGER_AFTER_RESET
            else:
                linger = _LINGER
            await conn.wait_closed(min(linger, left()))
        if conn.closed is None:
            closed_by_us = True
            conn.close()
    except BaseException:  # cancelled (Ctrl-C): do not leave the socket behind
        conn.abort()
        raise
    summary = _summary(conn, ex, timed_out=timed_out, closed_by_us=closed_by_us,
                       timeout=options.timeout)
    line = _summary_line(summary)
    write(json.dumps({"summary": summary}) if options.as_json else line)
    return TraceResult(summary["stream"] == "end_stream", summary, line)


def _summary(conn: DoctorConnection, ex: Exchange, *, timed_out: bool, closed_by_us: bool,
             timeout: float) -> dict[str, object]:
    """The facts of the summary line, with stable keys (the ``--json`` summary object)."""
    sid = ex.stream_id
    if ex.reset_code == -1:
        stream, text = "not_sent", f"stream {sid} could not be opened (the connection refused it)"
    elif ex.reset_code is not None:
        who = "the server" if ex.reset_by_peer else "h2guard"
        stream = "reset"
        text = f"stream {sid} reset by {who}: RST_STREAM {_code(ex.reset_code)}"
    elif ex.unprocessed:
        stream = "unprocessed"
        last = conn.goaway.last_stream_id if conn.goaway else "?"
        text = (f"stream {sid} not processed: GOAWAY last_stream_id={last} is below it "
                "(safe to send again)")
    elif timed_out:
        stream = "timeout"
        text = (f"stream {sid}: no response within {timeout:g} s" if ex.status is None
                else f"stream {sid}: response not finished within {timeout:g} s")
    elif ex.status is not None and ex.end_stream_received:
        stream, text = "end_stream", f"stream {sid} ended with END_STREAM"
    else:
        stream = "cut_off"
        text = f"stream {sid} cut off: the connection ended before the response did"
    closed = conn.closed
    goaway = conn.goaway
    how = closed.how if closed is not None else "open"
    parts: list[str] = []
    if goaway is not None:
        debug = f' debug="{goaway.debug.decode(errors="replace")[:80]}"' if goaway.debug else ""
        parts.append(f"the server sent GOAWAY {_code(goaway.error_code)} last_stream_id="
                     f"{goaway.last_stream_id}{debug}")
    if conn.failure is not None and conn.failure.local:
        parts.append(f"h2guard saw a protocol error ({conn.failure.message}) and sent GOAWAY "
                     f"{_code(conn.failure.error_code)}")
    if closed_by_us:
        parts.append("open until h2guard closed it (GOAWAY NO_ERROR)")
    elif closed is not None:
        parts.append("the server reset it (TCP RST)" if closed.transport == "rst"
                     else "the server closed it (FIN)")
    recv = [f for f in conn.frames if f.direction == "recv"]
    sent = [f for f in conn.frames if f.direction == "send"]
    return {
        "status": ex.status,
        "body_bytes": ex.body_bytes,
        "body_sent": ex.body_sent,
        "frames_received": len(recv),
        "frames_sent": len(sent),
        "bytes_received": sum(9 + f.length for f in recv),
        "bytes_sent": sum(9 + f.length for f in sent),
        "seconds": round((ex.ended_at if ex.ended_at is not None else conn.now()) - ex.sent_at,
                         6),
        "stream_id": sid,
        "stream": stream,
        "reset_code": code_name(ex.reset_code) if ex.reset_code not in (None, -1) else None,
        "reset_by": (("server" if ex.reset_by_peer else "h2guard")
                     if ex.reset_code not in (None, -1) else None),
        "connection": "goaway" if goaway is not None else how,
        "closed_by": "h2guard" if closed_by_us else ("server" if closed is not None else None),
        "goaway_code": code_name(goaway.error_code) if goaway is not None else None,
        "goaway_last_stream_id": goaway.last_stream_id if goaway is not None else None,
        "alpn": conn.alpn or ("h2c" if not conn.target.tls else None),
        "tls_version": conn.tls_version,
        "stream_text": text,
        "connection_text": "; ".join(parts) or "open",
    }


def _summary_line(s: dict[str, object]) -> str:
    status = f"status {s['status']}" if s["status"] is not None else "no status"
    return (f"summary: {status}, {s['body_bytes']} body bytes received, {s['body_sent']} sent, "
            f"{s['seconds']:.3f} s; {s['stream_text']}; connection: {s['connection_text']}")


def _code(code: int) -> str:
    name = code_name(code)
    return name if name.startswith("UNKNOWN") else f"{name} (0x{code:x})"


# ------------------------------------------------------------------------------------ CLI

_err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """One line on stderr (never a traceback), and the exit code to leave with."""
    _err.print(f"[red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
    return typer.Exit(code)


class _Out:
    """Writes each line at once (a trace is read as it happens, often through a pipe); a
    closed pipe (``| head``) stops the output, not the command."""

    def __init__(self) -> None:
        self.broken = False

    def __call__(self, line: str) -> None:
        if self.broken:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            self.broken = True


def register(app: typer.Typer) -> None:
    """Add ``trace`` to the doctor group."""

    @app.command("trace")
    def trace(
        url: Annotated[str, typer.Argument(
            help="https://host[:port]/path (TLS, ALPN h2), or http://... with --h2c.")],
        method: Annotated[str | None, typer.Option(
            "-X", "--request", help="Method (default GET, or POST with -d).")] = None,
        data: Annotated[str | None, typer.Option(
            "-d", "--data", help="Request body: text, @file, or @- for standard input "
                                 f"(at most {MAX_UPLOAD // (1024 * 1024)} MiB).")] = None,
        header: Annotated[list[str] | None, typer.Option(
            "-H", "--header", help="Extra request header 'Name: value' (repeatable).")]
        = None,
        h2c: Annotated[bool, typer.Option(
            "--h2c", help="Cleartext HTTP/2 with prior knowledge (for http:// URLs).")]
        = False,
        insecure: Annotated[bool, typer.Option(
            "--insecure", "-k", help="Do not verify the server's TLS certificate.")] = False,
        ca_file: Annotated[Path | None, typer.Option(
            help="Trust this CA bundle (PEM), e.g. a chaos server's ca.pem.")] = None,
        as_json: Annotated[bool, typer.Option(
            "--json", help="One JSON object per frame (JSON lines), then {\"summary\": ...}.")]
        = False,
        show_secrets: Annotated[bool, typer.Option(
            "--show-secrets", help="Show Authorization, Proxy-Authorization, Cookie and "
                                   "Set-Cookie values instead of <redacted>.")] = False,
        timeout: Annotated[float, typer.Option(
            help="Seconds for the whole trace: connect, TLS, response, linger.")] = 10.0,
    ) -> None:
        """Send one request and print every HTTP/2 frame both ways as it happens.

        One line per frame (like nghttp -v): time since the connection started, send/recv,
        type, stream, flags, then what the frame says: headers, error codes and SETTINGS by
        name, GOAWAY's last_stream_id. A summary line ends it: status, bytes, how the stream
        ended (END_STREAM, RST_STREAM and its code, refused by GOAWAY, cut off) and how the
        connection did. Credential headers (Authorization, Proxy-Authorization, Cookie,
        Set-Cookie) read <redacted> unless --show-secrets.

        Exit code 0: a whole response arrived (any status); 1: the stream did not complete
        (reset, refused, cut off, timeout: the trace shows why); 2: no HTTP/2 conversation
        (refused connection, TLS failure, not HTTP/2, bad option), one line on stderr.
        """
        try:
            options = TraceOptions(
                url=url, method=method.upper() if method else None,
                data=parse_data(data) if data is not None else None,
                headers=tuple(parse_header(h) for h in header or ()), h2c=h2c,
                insecure=insecure, ca_file=str(ca_file) if ca_file else None,
                as_json=as_json, show_secrets=show_secrets, timeout=timeout)
            result = asyncio.run(run_trace(options, write=_Out()))
        except DoctorError as exc:
            raise _fail(str(exc)) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        raise typer.Exit(0 if result.complete else 1)
