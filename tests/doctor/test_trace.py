"""``h2guard doctor trace`` against the chaos server: every frame as it happens, resets and
GOAWAYs by name, redaction, JSON lines, bounded time, one-line failures.

Most tests call :func:`run_trace` in the test's own event loop (the chaos server runs there
too); the command-line tests run the real ``python -m h2guard doctor trace`` in a child
process, bounded, to check what a person sees: exit codes and a single error line.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from h2guard.chaos import serve
from h2guard.chaos.model import GoAway, RstStream, Scenario, Trigger
from h2guard.doctor.connection import DoctorError
from h2guard.doctor.trace import (
    REDACTED,
    TraceOptions,
    TraceResult,
    parse_header,
    redact,
    run_trace,
)
from h2guard.wire.trace import TracedFrame

pytestmark = pytest.mark.timeout(60)

REFUSED_STREAM, INTERNAL_ERROR = 0x7, 0x2
PY = sys.executable
SRC = str(Path(__file__).resolve().parents[2] / "src")
ENV = {**os.environ, "COLUMNS": "300", "PYTHONPATH": SRC}
ENV.pop("FORCE_COLOR", None)


async def _trace(url: str, **options: object) -> tuple[TraceResult, list[str]]:
    lines: list[str] = []
    result = await run_trace(TraceOptions(url=url, **options), write=lines.append)  # type: ignore[arg-type]
    return result, lines


def _frames(lines: list[str]) -> list[str]:
    return [line for line in lines if not line.startswith("summary:")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "h2guard", "doctor", "trace", *args], capture_output=True,
                          text=True, timeout=30, env=ENV,
                          input=stdin.decode() if stdin is not None else None)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# ------------------------------------------------------------------------------------ frames


async def test_h2c_trace_shows_every_frame_both_ways_then_a_summary() -> None:
    async with serve(h2c=True) as server:
        result, lines = await _trace(f"{server.url}/echo", h2c=True)
    frames = _frames(lines)
    # the client's preface SETTINGS, the server's, both ACKs, the request, the response, and
    # the GOAWAY NO_ERROR we close with: each one line with a relative timestamp
    assert frames[0].split()[1:3] == ["send", "SETTINGS"]
    assert all(line.startswith("+") and line.split()[0].endswith("s") for line in frames)
    kinds = [" ".join(line.split()[1:4]) for line in frames]
    for expected in ("send SETTINGS stream=0", "recv SETTINGS stream=0",
                     "send HEADERS stream=1", "recv HEADERS stream=1", "recv DATA stream=1",
                     "send GOAWAY stream=0"):
        assert expected in kinds, lines
    request = next(line for line in frames if " send HEADERS stream=1 " in line)
    assert "flags=END_STREAM,END_HEADERS" in request and ":method=GET" in request
    assert ":path=/echo" in request
    settings = next(line for line in frames if " recv SETTINGS stream=0" in line
                    and "ACK" not in line)
    assert "MAX_CONCURRENT_STREAMS=100" in settings and "INITIAL_WINDOW_SIZE=" in settings
    assert any(" recv HEADERS stream=1 " in line and ":status=200" in line for line in frames)
    assert any(" recv DATA stream=1 flags=END_STREAM " in line for line in frames)
    assert frames[-1].endswith("send GOAWAY stream=0 last_stream_id=0 error=NO_ERROR (0x0)")
    times = [float(line.split()[0][:-1]) for line in frames]
    assert times == sorted(times)
    summary = lines[-1]
    assert summary.startswith("summary: status 200, ")
    assert "stream 1 ended with END_STREAM" in summary
    assert summary.endswith("connection: open until h2guard closed it (GOAWAY NO_ERROR)")
    assert result.complete and result.summary["status"] == 200
    assert result.summary["body_bytes"] > 0 and result.summary["alpn"] == "h2c"


async def test_frames_are_written_as_they_happen() -> None:
    """The request line is out long before a slow response arrives: nothing is batched."""
    stamps: list[tuple[float, str]] = []
    async with serve(h2c=True) as server:
        await run_trace(TraceOptions(url=f"{server.url}/delay/400", h2c=True),
                        write=lambda line: stamps.append((time.monotonic(), line)))
    sent = next(t for t, line in stamps if " send HEADERS stream=1 " in line)
    answered = next(t for t, line in stamps if " recv HEADERS stream=1 " in line)
    assert answered - sent >= 0.3, stamps


async def test_tls_trace_with_the_chaos_ca_file() -> None:
    async with serve() as server:
        assert server.ca_file is not None
        result, lines = await _trace(f"{server.url}/echo", ca_file=server.ca_file)
        with pytest.raises(DoctorError, match="not trusted"):
            await _trace(f"{server.url}/echo")
    assert result.complete and result.summary["status"] == 200
    assert result.summary["alpn"] == "h2"
    assert str(result.summary["tls_version"]).startswith("TLSv1.")
    assert any(" recv HEADERS stream=1 " in line and ":status=200" in line for line in lines)
    assert any(":scheme=https" in line for line in lines)


async def test_a_reset_shows_as_rst_stream_with_its_code_name() -> None:
    scenario = Scenario(faults=(RstStream(code=REFUSED_STREAM, at="request_headers",
                                          when=Trigger(path="/echo")),))
    async with serve(scenario, h2c=True) as server:
        result, lines = await _trace(f"{server.url}/echo", h2c=True)
    assert any(line.endswith("recv RST_STREAM stream=1 error=REFUSED_STREAM (0x7)")
               for line in lines), lines
    assert not result.complete
    assert result.summary["stream"] == "reset"
    assert result.summary["reset_code"] == "REFUSED_STREAM"
    assert result.summary["reset_by"] == "server"
    assert "stream 1 reset by the server: RST_STREAM REFUSED_STREAM (0x7)" in lines[-1]


async def test_an_abrupt_goaway_shows_the_frame_and_the_unprocessed_stream() -> None:
    scenario = Scenario(faults=(GoAway(mode="abrupt", code=INTERNAL_ERROR, debug=b"bye",
                                       at="request_headers"),))
    async with serve(scenario, h2c=True) as server:
        result, lines = await _trace(f"{server.url}/echo", h2c=True)
    goaway = [line for line in lines if " recv GOAWAY " in line]
    assert len(goaway) == 1, lines
    assert goaway[0].endswith('recv GOAWAY stream=0 last_stream_id=0 error=INTERNAL_ERROR '
                              '(0x2) debug="bye"')
    assert not result.complete
    assert result.summary["stream"] == "unprocessed"
    assert result.summary["connection"] == "goaway"
    assert result.summary["goaway_code"] == "INTERNAL_ERROR"
    assert "not processed: GOAWAY last_stream_id=0 is below it" in lines[-1]
    assert "the server sent GOAWAY INTERNAL_ERROR (0x2) last_stream_id=0" in lines[-1]


async def test_a_graceful_goaway_then_the_response_then_fin() -> None:
    scenario = Scenario(faults=(GoAway(mode="graceful", at="request_headers"),))
    async with serve(scenario, h2c=True) as server:
        result, lines = await _trace(f"{server.url}/echo", h2c=True)
    names = [line.split()[1:3] for line in _frames(lines)]
    assert names.index(["recv", "GOAWAY"]) < names.index(["recv", "DATA"])
    assert any(line.endswith("recv GOAWAY stream=0 last_stream_id=1 error=NO_ERROR (0x0)")
               for line in lines)
    assert result.complete and result.summary["status"] == 200
    assert result.summary["closed_by"] == "server"
    assert lines[-1].endswith("connection: the server sent GOAWAY NO_ERROR (0x0) "
                              "last_stream_id=1; the server closed it (FIN)")


# ------------------------------------------------------------------------------------ secrets


SECRETS = (("Authorization", "Bearer s3cret-token"), ("Proxy-Authorization", "Basic cHJveHk="),
           ("Cookie", "session=abc123"), ("X-Trace", "visible"))


async def test_credentials_are_redacted_unless_show_secrets() -> None:
    async with serve(h2c=True) as server:
        hidden, hidden_lines = await _trace(f"{server.url}/echo", h2c=True,
                                            headers=tuple(parse_header(f"{k}: {v}")
                                                          for k, v in SECRETS))
        _, json_lines = await _trace(f"{server.url}/echo", h2c=True, as_json=True,
                                     headers=tuple(parse_header(f"{k}: {v}")
                                                   for k, v in SECRETS))
        _, shown_lines = await _trace(f"{server.url}/echo", h2c=True, show_secrets=True,
                                      headers=tuple(parse_header(f"{k}: {v}")
                                                    for k, v in SECRETS))
    assert hidden.complete
    text, js, shown = "\n".join(hidden_lines), "\n".join(json_lines), "\n".join(shown_lines)
    for _, value in SECRETS[:3]:
        assert value not in text and value.split()[-1] not in text
        assert value.split()[-1] not in js
    request = next(line for line in hidden_lines if " send HEADERS stream=1 " in line)
    assert (f"authorization={REDACTED} proxy-authorization={REDACTED} cookie={REDACTED} "
            "x-trace=visible") in request
    headers = next(json.loads(line)["headers"] for line in json_lines
                   if '"HEADERS"' in line and '"send"' in line)
    assert ["cookie", REDACTED] in headers and ["x-trace", "visible"] in headers
    assert 'authorization="Bearer s3cret-token"' in shown
    assert "cookie=session=abc123" in shown


def test_set_cookie_from_the_server_is_redacted_too() -> None:
    frame = TracedFrame("recv", "HEADERS", 1, ("END_HEADERS",), 0, {
        "headers": [(":status", "200"), ("Set-Cookie", "id=42; HttpOnly"),
                    ("content-type", "text/plain")]})
    shown = redact(frame)
    assert shown.details["headers"] == [(":status", "200"), ("Set-Cookie", REDACTED),
                                        ("content-type", "text/plain")]
    assert "id=42" not in shown.line() and "id=42" not in json.dumps(shown.to_json())
    assert frame.details["headers"][1] == ("Set-Cookie", "id=42; HttpOnly")  # not mutated
    plain = TracedFrame("recv", "DATA", 1, (), 5)
    assert redact(plain) is plain


# ------------------------------------------------------------------------------------ json


async def test_json_lines_each_parse_and_end_with_the_summary() -> None:
    async with serve(h2c=True) as server:
        result, lines = await _trace(f"{server.url}/echo", h2c=True, as_json=True,
                                     data=b"hello", method="POST")
    objects = [json.loads(line) for line in lines]
    frames, summary = objects[:-1], objects[-1]
    assert all({"t", "dir", "type", "stream", "flags", "length"} <= set(f) for f in frames)
    assert [f["t"] for f in frames] == sorted(f["t"] for f in frames)
    assert any(f["dir"] == "send" and f["type"] == "DATA" and f["length"] == 5
               and f["flags"] == ["END_STREAM"] for f in frames)
    assert any(f["dir"] == "recv" and f["type"] == "HEADERS"
               and [":status", "200"] in f["headers"] for f in frames)
    assert set(summary) == {"summary"}
    assert summary["summary"]["status"] == 200
    assert summary["summary"]["body_sent"] == 5 and summary["summary"]["body_bytes"] == 5
    assert summary["summary"]["stream"] == "end_stream"
    assert result.summary == summary["summary"]


# ------------------------------------------------------------------------------------ bounds


async def test_a_slow_response_is_bounded_by_timeout() -> None:
    async with serve(h2c=True) as server:
        start = time.monotonic()
        result, lines = await _trace(f"{server.url}/delay/5000", h2c=True, timeout=0.5)
        took = time.monotonic() - start
    assert took < 1.5
    assert not result.complete and result.summary["stream"] == "timeout"
    assert "no response within 0.5 s" in lines[-1]


async def test_a_large_upload_follows_the_peers_windows() -> None:
    """A body above the 64 KiB initial window goes out as WINDOW_UPDATEs arrive."""
    body = bytes(200_000)
    async with serve(h2c=True) as server:
        result, lines = await _trace(f"{server.url}/echo", h2c=True, data=body)
    assert result.complete and result.summary["body_sent"] == len(body)
    assert result.summary["body_bytes"] == len(body)  # POST /echo echoes it
    assert any(" recv WINDOW_UPDATE " in line for line in lines)


# ------------------------------------------------------------------------------------ the CLI


def test_cli_refused_connection_is_one_line_and_exit_2() -> None:
    proc = _cli("--h2c", f"http://127.0.0.1:{_free_port()}/echo", "--timeout", "5")
    line = _one_error_line(proc)
    assert "connection refused" in line
    assert proc.stdout == ""


def test_cli_option_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    assert "expected 'Name: value'" in _one_error_line(
        _cli("--h2c", "http://127.0.0.1:1/", "-H", "no colon here"))
    assert "cannot read" in _one_error_line(
        _cli("--h2c", "http://127.0.0.1:1/", "-d", f"@{tmp_path}/missing"))
    assert "pass --h2c" in _one_error_line(_cli("http://127.0.0.1:1/"))
    assert "--timeout must be above 0" in _one_error_line(
        _cli("--h2c", "http://127.0.0.1:1/", "--timeout", "0"))


async def test_cli_end_to_end_data_from_a_file_and_exit_codes(tmp_path: Path) -> None:
    upload = tmp_path / "body.json"
    upload.write_bytes(b'{"sku": 7}')
    scenario = Scenario(faults=(RstStream(code=INTERNAL_ERROR, at="request_headers",
                                          when=Trigger(path="/reset-me")),))
    async with serve(scenario, h2c=True) as server:
        ok, reset = await asyncio.gather(
            asyncio.to_thread(_cli, "--h2c", f"{server.url}/echo", "-d", f"@{upload}",
                              "-H", "content-type: application/json"),
            asyncio.to_thread(_cli, "--h2c", f"{server.url}/reset-me"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr == ""
    out = ok.stdout.splitlines()
    assert any(" send HEADERS stream=1 " in line and ":method=POST" in line
               and "content-type=application/json" in line and "content-length=10" in line
               for line in out)
    assert any(" send DATA stream=1 flags=END_STREAM length=10" in line for line in out)
    assert out[-1].startswith("summary: status 200, 10 body bytes received, 10 sent")
    assert reset.returncode == 1, reset.stderr
    assert any(line.endswith("recv RST_STREAM stream=1 error=INTERNAL_ERROR (0x2)")
               for line in reset.stdout.splitlines())
    assert "Traceback" not in reset.stderr
