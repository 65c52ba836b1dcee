"""Scoreboard cells from records and the server's ledger: the definitions, checked by hand."""

from __future__ import annotations

from typing import Any

import pytest

from h2guard.bench.metrics import cell, normalise_error, percentile
from h2guard.bench.report import cell_style, render_table, verdict
from h2guard.bench.scenarios import BenchRequest

T0 = 1_000_000.0
PLAN = [[BenchRequest("r1", "POST", "/orders", 8), BenchRequest("r2", "POST", "/orders", 8)],
        [BenchRequest("r3", "GET", "/echo"), BenchRequest("r4", "POST", "/orders", 8)]]


def rec(rid: str, start: float, end: float, status: int | None = 201,
        error: str | None = None) -> dict[str, Any]:
    return {"id": rid, "status": status, "error": error, "start": T0 + start, "end": T0 + end,
            "bytes": 10}


def test_a_cell_counts_success_duplicates_attempts_and_latency() -> None:
    records = [rec("r1", 0.0, 0.010), rec("r2", 0.0, 0.030),
               rec("r3", 1.0, 1.020, status=None,
                   error="RemoteProtocolError: <StreamReset stream_id:7, error_code:7>"),
               rec("r4", 1.0, 1.040, status=503), rec("r1", 5.0, 5.0)]  # a repeat is ignored
    host = {"attempts": {"r1": 1, "r2": 3, "r3": 2, "other": 9},
            "effects": {"r1": 1, "r2": 2, "other": 5},
            "faults": [[T0 + 0.005, "rst_stream REFUSED_STREAM"]]}
    c = cell(client="x", scenario="s", plan=PLAN, records=records, host=host, started=T0,
             elapsed=1.1)
    assert (c["requests"], c["succeeded"], c["failed"]) == (4, 2, 2)
    assert c["success_rate"] == 0.5
    assert c["duplicates"] == 1 and c["effects"] == 3 and c["posts"] == 3
    assert c["attempts_per_request"] == 1.5  # (1 + 3 + 2 + 0) / 4; ids not planned ignored
    assert c["p50_ms"] == pytest.approx(20.0) and c["p99_ms"] == pytest.approx(29.8)
    # busy time: wave one 0.03 s, wave two 0.04 s -> 2 successes / 0.07 s
    assert c["throughput_rps"] == pytest.approx(28.6, abs=0.1)
    assert c["errors"] == [
        {"text": "RemoteProtocolError: <StreamReset stream_id:N, error_code:7>", "count": 1},
        {"text": "HTTP 503", "count": 1}]
    assert c["timeline"]["faults"] == [[0.005, "rst_stream REFUSED_STREAM"]]
    assert [m[0] for m in c["timeline"]["errors"]] == [1.02, 1.04]
    assert c["timeline"]["waves"] == [0.0, 1.0]
    assert c["latencies_ms"] == sorted(c["latencies_ms"]) and len(c["latencies_ms"]) == 4


def test_requests_the_client_never_reported_are_failures() -> None:
    c = cell(client="x", scenario="s", plan=PLAN, records=[rec("r1", 0, 0.01)], host={},
             started=T0, elapsed=3.0, problem="driver exited 1")
    assert c["succeeded"] == 1 and c["failed"] == 3 and c["success_rate"] == 0.25
    assert c["errors"][0] == {"text": "no outcome reported by the client", "count": 3}
    assert c["attempts_per_request"] == 0.0 and c["problem"] == "driver exited 1"
    empty = cell(client="x", scenario="s", plan=PLAN, records=[], host={}, started=T0,
                 elapsed=0.0)
    assert empty["p50_ms"] is None and empty["throughput_rps"] == 0.0


def test_latency_lists_are_bounded() -> None:
    plan = [[BenchRequest(f"r{i}", "GET", "/echo") for i in range(1000)]]
    records = [rec(f"r{i}", 0, i / 1000) for i in range(1000)]
    c = cell(client="x", scenario="s", plan=plan, records=records, host={}, started=T0,
             elapsed=1.0)
    assert len(c["latencies_ms"]) == 400
    assert c["latencies_ms"][0] == 0.0 and c["latencies_ms"][-1] == 999.0


@pytest.mark.parametrize(("raw", "normal"), [
    ("RemoteProtocolError: <StreamReset stream_id:13, error_code:7, remote_reset:True>",
     "RemoteProtocolError: <StreamReset stream_id:N, error_code:7, remote_reset:True>"),
    ("h2.exceptions.TooManyStreamsError: Max outbound streams is 8, 8 open",
     "h2.exceptions.TooManyStreamsError: Max outbound streams is 8, 8 open"),
    ("ConnectError: 127.0.0.1:40123 refused after 1.5 s", "ConnectError: ADDR refused after N s"),
    ('Post "https://[::1]:4431/orders": stream error: stream ID 31; REFUSED_STREAM',
     'Post "https://ADDR/orders": stream error: stream ID N; REFUSED_STREAM'),
    ("line one\n   line two", "line one line two"),
])
def test_error_texts_are_grouped_without_their_ids(raw: str, normal: str) -> None:
    assert normalise_error(raw) == normal
    assert len(normalise_error("x" * 500)) == 160


def test_why_h2guard_gave_up_survives_the_shortening() -> None:
    text = ("StreamResetError: The server refused the stream (stream 31) with REFUSED_STREAM "
            "before processing it; it is safe to resend on another connection, for any method. "
            "Not retried: the retry budget for https://127.0.0.1:4431 is spent (retries may "
            "add at most 10% to the load): the server looks overloaded.")
    short = normalise_error(text)
    assert len(short) <= 160 and short.startswith("StreamResetError: The server refused")
    assert " Not retried: the retry budget for https://ADDR is spent" in short


def test_percentile() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([1.0, 2.0], 0.99) == pytest.approx(1.99)


def _result(cells: list[dict[str, Any]]) -> dict[str, Any]:
    return {"scenarios": [{"name": "a"}, {"name": "b"}],
            "clients": [{"name": "h2guard", "available": True},
                        {"name": "httpx", "available": True},
                        {"name": "go", "available": False, "reason": "go not found"}],
            "cells": cells}


def _c(client: str, scenario: str, ok: int, total: int = 10, dups: int = 0,
       error: str = "boom") -> dict[str, Any]:
    return {"client": client, "scenario": scenario, "requests": total, "succeeded": ok,
            "failed": total - ok, "success_rate": ok / total, "duplicates": dups,
            "errors": [{"text": error, "count": total - ok}] if ok < total else []}


def test_the_verdict_names_the_clean_the_lossy_and_the_duplicators() -> None:
    result = _result([_c("h2guard", "a", 10), _c("h2guard", "b", 10),
                      _c("httpx", "a", 4, error="RemoteProtocolError: reset"),
                      _c("httpx", "b", 10, dups=3)])
    text = verdict(result)
    assert text.startswith("h2guard was clean")
    assert "httpx lost 6 of 20 (a 40%" in text and "RemoteProtocolError: reset" in text
    assert "httpx 3 (b)" in text
    assert "go" not in text.split("Lost")[0].replace("good", "")
    assert verdict(_result([])) .startswith("No cell ran")
    worse = verdict(_result([_c("h2guard", "a", 9), _c("httpx", "a", 10)]))
    assert "h2guard itself is not clean" in worse and worse.startswith("httpx was clean")


def test_cell_styles_put_duplicates_above_everything() -> None:
    assert cell_style(_c("x", "a", 10)) == "ok"
    assert cell_style(_c("x", "a", 96, 100)) == "warn"
    assert cell_style(_c("x", "a", 5)) == "bad"
    assert cell_style(_c("x", "a", 10, dups=1)) == "dup"


def test_the_rich_table_has_a_row_per_available_client() -> None:
    import io

    from rich.console import Console

    result = _result([_c("h2guard", "a", 10), _c("httpx", "a", 4, dups=2)])
    out = io.StringIO()
    Console(file=out, width=120).print(render_table(result))
    text = out.getvalue()
    assert "h2guard" in text and "httpx" in text and "go" not in text.split("\n", 3)[-1]
    assert "40%" in text and "2x2" in text and "100%" in text
