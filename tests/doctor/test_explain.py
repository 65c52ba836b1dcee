"""``h2guard doctor explain``: code resolution, the traps, unknown text, --json, stdin, --log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from h2guard.cli import app
from h2guard.codes import ERROR_CODES
from h2guard.doctor.explain import (
    MAX_LINE,
    PATTERNS,
    Explanation,
    explain,
    resolve_code,
    summarise,
)

runner = CliRunner()
JSON_KEYS = {"frame", "code", "code_value", "sender", "causes", "fixes", "matched"}


def _explain(text: str, **kwargs: str) -> Explanation:
    found = explain(text, **kwargs)
    assert found is not None, text
    return found


def _run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, ["doctor", "explain", *args], input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        result.exception)
    return result.exit_code, result.stdout, result.stderr


# --- the table itself ----------------------------------------------------------------------


def test_patterns_are_well_formed() -> None:
    names = set()
    for p in PATTERNS:
        assert p.frame in {"RST_STREAM", "GOAWAY", "TCP", "timeout", "local"}, p.name
        assert p.sender in {"server", "proxy/load balancer", "client itself", "unknown"}
        assert p.code is None or p.code in {c.name for c in ERROR_CODES.values()}, p.name
        assert p.what, p.name
        re.compile(p.regex)
        assert (p.program, p.name) not in names, f"duplicate {p.program}: {p.name}"
        names.add((p.program, p.name))


# --- codes as names, numbers and prose -----------------------------------------------------


@pytest.mark.parametrize(("token", "value"), [
    ("REFUSED_STREAM", 7), ("refused_stream", 7), ("ErrorCodes.REFUSED_STREAM", 7),
    ("NGHTTP2_REFUSED_STREAM", 7), ("'PROTOCOL_ERROR'", 1), ("HTTP11_REQUIRED", 13),
    ("7", 7), ("07", 7), ("0x7", 7), ("0xd", 13), ("Error: 42", 42),
    ("unknown error code 0x2a", 42), ("Stream not processed", 7), ("Not an error", 0),
    ("Use HTTP/1.1 for request", 13),
    ("refused stream before processing any application logic", 7),
    ("detected excessive load generating behavior (b\"too_many_resets\")", 11),
    ("4294967295", 0xFFFFFFFF), ("4294967296", None), ("unknown", None), ("", None),
    ("(unknown error)", None),
])
def test_resolve_code(token: str, value: int | None) -> None:
    assert resolve_code(token) == value


@pytest.mark.parametrize("text", [
    "stream error: stream ID 1; unknown error code 0xdeadbeef; received from peer",
    "curl: (92) HTTP/2 stream 1 was not closed cleanly: unknown (err 3735928559)",
    "System.Net.Http.HttpProtocolException: The HTTP/2 server reset the stream. HTTP/2 "
    "error code '(unknown error)' (0xdeadbeef).",
])
def test_unknown_32_bit_codes_are_treated_like_internal_error(text: str) -> None:
    found = _explain(text)
    assert found.code == "UNKNOWN(0xdeadbeef)"
    assert found.code_value == 0xDEADBEEF
    assert any("treated like INTERNAL_ERROR" in c for c in found.causes)
    assert "an upstream or app crash mid-response" in found.causes  # INTERNAL_ERROR's


def test_a_code_number_beats_the_printed_name() -> None:
    # curl prints both; the number is exact even where the name is "unknown"
    assert _explain("HTTP/2 stream 1 was not closed cleanly: unknown (err 7)").code == (
        "REFUSED_STREAM")


# --- the traps -----------------------------------------------------------------------------


def test_okhttp_refused_stream_may_be_synthesised_from_a_goaway() -> None:
    found = _explain("okhttp3.internal.http2.StreamResetException: stream was reset: "
                     "REFUSED_STREAM")
    assert found.frame == "RST_STREAM" and found.code == "REFUSED_STREAM"
    assert "last_stream_id" in found.causes[0] and "without any RST_STREAM" in found.causes[0]


def test_okhttp_cancel_is_the_clients_own() -> None:
    found = _explain("okhttp3.internal.http2.StreamResetException: stream was reset: CANCEL")
    assert found.sender == "client itself"


@pytest.mark.parametrize("text", [
    "java.io.IOException: too many concurrent streams",
    "h2.exceptions.TooManyStreamsError: Max outbound streams is 100, 100 open",
    "httpcore.RemoteProtocolError: Max outbound streams is 4, 4 open",
])
def test_local_limits_in_remote_looking_errors_say_nothing_was_sent(text: str) -> None:
    found = _explain(text)
    assert (found.frame, found.sender, found.code) == ("local", "client itself", None)
    assert any("safe" in f for f in found.fixes)


def test_h2_remote_reset_false_is_a_local_reset() -> None:
    remote = _explain("<StreamReset stream_id:1, error_code:1, remote_reset:True>")
    local = _explain("<StreamReset stream_id:1, error_code:1, remote_reset:False>")
    assert remote.sender == "server"
    assert local.sender == "client itself" and local.frame == "RST_STREAM"
    assert "sent by this client" in local.causes[0]


def test_go_resets_a_stream_itself_when_the_response_is_invalid() -> None:
    found = _explain("stream error: stream ID 1; PROTOCOL_ERROR; invalid header field "
                     "value for \"x\"")
    assert found.sender == "client itself"
    assert _explain("stream error: stream ID 1; PROTOCOL_ERROR; received from peer").sender == (
        "server")


@pytest.mark.parametrize("text", [
    "Uncaught (in promise) AbortError: signal is aborted without reason",
    "AbortError: The user aborted a request.",
    "DOMException [AbortError]: This operation was aborted",
])
def test_a_browser_fetch_abort_is_a_cancel_sent_by_the_client(text: str) -> None:
    found = _explain(text)
    assert (found.frame, found.code, found.sender) == ("RST_STREAM", "CANCEL", "client itself")


def test_grpc_explains_its_status_mapping() -> None:
    go = _explain("rpc error: code = Unavailable desc = stream terminated by RST_STREAM with "
                  "error code: REFUSED_STREAM")
    assert any("into status UNAVAILABLE" in c for c in go.causes)
    core = _explain('status = StatusCode.INTERNAL details = "Received RST_STREAM with error '
                    'code 2"')
    assert core.code == "INTERNAL_ERROR"
    assert any("into status INTERNAL" in c for c in core.causes)
    cancel = _explain("rpc error: code = Canceled desc = stream terminated by RST_STREAM with "
                      "error code: CANCEL")
    assert any("DEADLINE_EXCEEDED" in c for c in cancel.causes)


def test_refused_stream_behind_haproxy_is_not_proof_of_no_processing() -> None:
    text = "stream error: stream ID 9; REFUSED_STREAM; received from peer"
    plain = _explain(text)
    assert "resend on another or a new connection: always safe" in plain.fixes
    assert any("haproxy" in c for c in plain.causes[1:])  # mentioned, but not ranked first
    behind = _explain(text, behind="haproxy")
    assert "haproxy" in behind.causes[0] and "FINDINGS" in behind.causes[0]
    assert "trust_refused_stream=False" in behind.fixes[0]
    logged = _explain("haproxy[881]: ... " + text)
    assert "haproxy" in logged.causes[0]


def test_haproxy_sh_says_the_client_saw_refused_stream() -> None:
    found = _explain("haproxy[1]: 10.0.1.2:3 [06/Feb/2009:12:14:14.655] fe be/s1 10/0/30/69/"
                     "109 502 204 - - SH-- 1/1/1/1/0 0/0 \"POST / HTTP/2.0\"")
    assert found.frame == "TCP" and "REFUSED_STREAM" in found.causes[0]


def test_go_cannot_retry_explains_the_inner_error() -> None:
    found = _explain("http2: Transport: cannot retry err [http2: client connection lost] "
                     "after Request.Body was written; define Request.GetBody to avoid this "
                     "error")
    assert (found.frame, found.sender) == ("timeout", "client itself")
    assert "inner: Go x/net/http2, client_connection_lost" in found.pattern
    assert any("GetBody" in f for f in found.fixes)


def test_specific_shapes_win_over_the_wrappers_around_them() -> None:
    dotnet = _explain("System.IO.IOException: The request was aborted.\n ---> "
                      "System.Net.Http.HttpProtocolException: The HTTP/2 server reset the "
                      "stream. HTTP/2 error code 'ENHANCE_YOUR_CALM' (0xb).")
    assert (dotnet.pattern, dotnet.code) == ("server_reset_stream", "ENHANCE_YOUR_CALM")
    undici = _explain("[cause]: SocketError: HTTP/2: \"GOAWAY\" frame received with code 0 "
                      "{ code: 'UND_ERR_SOCKET' }")
    assert (undici.frame, undici.code) == ("GOAWAY", "NO_ERROR")


# --- unknown text --------------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "hello world", "HTTP/1.1 200 OK", "java.lang.NullPointerException", "UR", "SD",
    "2024/05/02 10:00:01 [notice] 1#1: signal process started",
])
def test_unknown_text_is_not_guessed(text: str) -> None:
    assert explain(text) is None


def test_cli_unknown_text_exits_1_and_says_so() -> None:
    code, out, _ = _run("the printer is on fire")
    assert code == 1
    assert out.startswith("Not recognised")


def test_cli_unknown_text_json_has_the_same_keys_all_null() -> None:
    code, out, _ = _run("--json", "the printer is on fire")
    assert code == 1
    data = json.loads(out)
    assert set(data) == JSON_KEYS and data["frame"] is None and data["matched"] is None


# --- output --------------------------------------------------------------------------------


def test_cli_json_keys() -> None:
    code, out, _ = _run("--json", "curl: (92) HTTP/2 stream 1 was not closed cleanly: "
                                  "INTERNAL_ERROR (err 2)")
    assert code == 0
    data = json.loads(out)
    assert set(data) == JSON_KEYS
    assert (data["frame"], data["code"], data["sender"]) == ("RST_STREAM", "INTERNAL_ERROR",
                                                              "server")
    assert data["causes"] and data["fixes"]
    assert data["matched"]["program"] == "curl"
    assert data["matched"]["pattern"] == "stream_not_closed_cleanly"


def test_cli_human_output_has_the_four_sections() -> None:
    code, out, _ = _run("java.io.IOException: Received RST_STREAM: Stream not processed")
    assert code == 0
    for heading in ("What happened", "Who sent it", "Likely causes", "What to do",
                    "RST_STREAM REFUSED_STREAM", "Java HttpClient"):
        assert heading in out


def test_cli_stdin_reads_one_multi_line_message() -> None:
    trace = ("Exception in thread \"main\" java.io.IOException: Received RST_STREAM: "
             "Stream not processed\n\tat java.net.http/jdk.internal.net.http.HttpClientImpl"
             ".send(HttpClientImpl.java:586)\n\tat Main.main(Main.java:12)\n")
    code, out, _ = _run("--json", "-", stdin=trace)
    assert code == 0
    assert json.loads(out)["code"] == "REFUSED_STREAM"


def test_cli_help_teaches_with_examples() -> None:
    code, out, _ = _run("--help")
    assert code == 0
    for needle in ("Examples", "--log", "--json", "--behind", "doctor explain -"):
        assert needle in out


@pytest.mark.parametrize(("args", "message"), [
    ((), "nothing to explain"),
    (("text", "--log", "x.log"), "not both"),
    (("   ",), "empty"),
])
def test_cli_bad_input_is_one_line_exit_2(args: tuple[str, ...], message: str) -> None:
    code, out, err = _run(*args)
    assert code == 2
    assert message in err and "Traceback" not in err + out
    assert len(err.strip().splitlines()) == 1


def test_cli_missing_log_is_one_line_exit_2(tmp_path: Path) -> None:
    code, out, err = _run("--log", str(tmp_path / "nope.log"))
    assert code == 2
    assert "no such file" in err and "Traceback" not in err + out
    code, _, err = _run("--log", str(tmp_path))
    assert code == 2 and "directory" in err


# --- logs ----------------------------------------------------------------------------------

LOG_LINES = [
    # nginx error log, two in the same minute
    "2024/05/02 10:00:01 [info] 31#31: *1 client canceled stream 7 while sending request to "
    "upstream, client: 10.0.0.5",
    "2024/05/02 10:00:40 [error] 31#31: *2 upstream prematurely closed connection while "
    "reading response header from upstream, client: 10.0.0.5",
    "2024/05/02 10:00:41 [notice] 31#31: signal process started",  # not recognised
    # an application log with ISO timestamps
    "2024-05-02T10:01:02.123Z ERROR okhttp3.internal.http2.StreamResetException: stream was "
    "reset: REFUSED_STREAM",
    "2024-05-02T10:01:59Z WARN stream error: stream ID 3; REFUSED_STREAM; received from peer",
    # haproxy, common-log timestamp in brackets
    "May  2 10:02:11 lb1 haproxy[881]: 10.0.0.5:40112 [02/May/2024:10:02:11.101] fe be/s2 "
    "0/0/1/12/240 200 1452 - - SD-- 8/8/3/1/0 0/0 \"GET /r HTTP/2.0\"",
    # no timestamp at all
    "java.io.IOException: too many concurrent streams",
    "",
]


def _write_log(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_summarise_counts_by_program_frame_code_cause_and_minute() -> None:
    s = summarise(LOG_LINES)
    assert (s.lines, s.matched, s.unmatched) == (8, 6, 2)
    assert s.by_program == {"nginx": 2, "OkHttp": 1, "Go x/net/http2": 1, "HAProxy": 1,
                            "Java HttpClient": 1}
    assert s.by_frame == {"RST_STREAM": 3, "TCP": 2, "local": 1}
    assert s.by_code == {"CANCEL": 1, "REFUSED_STREAM": 2, "(no code)": 3}
    assert s.by_minute == {"2024-05-02T10:00": 2, "2024-05-02T10:01": 2,
                           "2024-05-02T10:02": 1}
    assert sum(s.by_cause.values()) == 6


def test_summarise_caps_the_number_of_minutes() -> None:
    lines = [f"2024-05-02T10:0{i}:00Z http2: client connection lost" for i in range(5)]
    s = summarise(lines, max_buckets=2)
    assert len(s.by_minute) == 2 and s.dropped_minutes == 3 and s.matched == 5


def test_summarise_cuts_long_lines() -> None:
    s = summarise(["x" * (MAX_LINE + 10) + " unexpected EOF", "unexpected EOF"])
    assert s.truncated == 1 and s.matched == 1  # the match beyond the cut is not seen


def test_cli_log_json(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "app.log", LOG_LINES)
    code, out, _ = _run("--log", str(log), "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["lines"], data["matched"], data["unmatched"]) == (8, 6, 2)
    assert data["by_minute"]["2024-05-02T10:00"] == 2
    assert data["by_frame"]["RST_STREAM"] == 3
    assert set(data) >= {"by_program", "by_frame", "by_code", "by_cause", "by_minute"}


def test_cli_log_table(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "app.log", LOG_LINES)
    code, out, _ = _run("--log", str(log))
    assert code == 0
    for needle in ("8 lines, 6 recognised", "By program", "By frame", "By code", "By cause",
                   "Per minute", "2024-05-02T10:01"):
        assert needle in out


def test_cli_log_with_a_huge_line_stays_bounded(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("w", encoding="utf-8") as f:
        f.write("A" * (3 * 1024 * 1024) + " unexpected EOF\n")  # one 3 MiB line
        f.write("unexpected EOF\n")
    code, out, _ = _run("--log", str(log), "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["lines"], data["matched"], data["truncated_lines"]) == (2, 1, 1)


def test_cli_log_from_stdin() -> None:
    code, out, _ = _run("--log", "-", "--json", stdin="\n".join(LOG_LINES))
    assert code == 0
    assert json.loads(out)["matched"] == 6


def test_cli_log_without_anything_recognised_exits_1(tmp_path: Path) -> None:
    log = _write_log(tmp_path / "quiet.log", ["all good", "still fine"])
    code, out, _ = _run("--log", str(log))
    assert code == 1
    assert "Nothing in this log was recognised" in out
    assert "no timestamps found" in out


@pytest.mark.parametrize(("text", "frame", "code"), [
    ("h2: received RST_STREAM on stream 3, error code 0x2", "RST_STREAM", "INTERNAL_ERROR"),
    ("proxy: sent GOAWAY last_stream_id=9 code=11", "GOAWAY", "ENHANCE_YOUR_CALM"),
    ("RST_STREAM(stream=5, NGHTTP2_CANCEL)", "RST_STREAM", "CANCEL"),
])
def test_generic_mentions_with_a_code(text: str, frame: str, code: str) -> None:
    found = _explain(text)
    assert (found.program, found.frame, found.code, found.sender) == (
        "generic", frame, code, "unknown")


def test_cli_stdin_with_undecodable_bytes_is_no_traceback() -> None:
    result = runner.invoke(app, ["doctor", "explain", "-"],
                           input=b"\xff\xfe garbage \x80 unexpected EOF\n")
    assert result.exit_code == 0, result.output
    assert "TCP" in result.stdout
    result = runner.invoke(app, ["doctor", "explain", "--log", "-"],
                           input=b"\xff\n2024-05-02T10:00:00Z unexpected EOF \x80\n")
    assert result.exit_code == 0, result.output


def test_cli_json_unknown_code_is_null_with_its_value() -> None:
    """--json says ``code`` is the RFC 9113 name or null; an unknown code keeps its number."""
    code, out, _ = _run("--json", "http2: server sent GOAWAY and closed the connection; "
                                  "LastStreamID=1, ErrCode=unknown error code 0x2a, debug=\"\"")
    assert code == 0
    data = json.loads(out)
    assert data["code"] is None and data["code_value"] == 0x2A and data["frame"] == "GOAWAY"
