"""``h2guard bench`` with the Python clients on the quick scenarios: the scoreboard tells the
known facts (raw httpx loses requests to request caps, refusals and stale connections; a blind
retry writes POSTs twice; h2guard loses nothing and writes nothing twice), and the command
line behaves."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from h2guard.bench.clients import PYTHON_CLIENTS
from h2guard.bench.report import verdict
from h2guard.bench.runner import run_bench
from h2guard.bench.scenarios import select_scenarios

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    result = asyncio.run(run_bench(scenarios=select_scenarios([], quick=True),
                                   clients=list(PYTHON_CLIENTS), quick=True))
    result["verdict"] = verdict(result)
    return result


def _cell(result: dict[str, Any], client: str, scenario: str) -> dict[str, Any]:
    (found,) = [c for c in result["cells"]
                if c["client"] == client and c["scenario"] == scenario]
    return found


def test_the_document_has_every_field_the_format_promises(quick: dict[str, Any]) -> None:
    assert quick["version"] == "h2guard.bench/1" and quick["quick"] is True
    assert {"python", "platform", "cpus"} <= set(quick["machine"])
    assert [s["name"] for s in quick["scenarios"]] == [
        "refused-burst", "stream-limit", "request-cap", "stale-fin", "reset-after-app",
        "process-above"]
    assert [c["name"] for c in quick["clients"]] == list(PYTHON_CLIENTS)
    assert len(quick["cells"]) == len(PYTHON_CLIENTS) * 6
    for c in quick["cells"]:
        for key in ("client", "scenario", "success_rate", "duplicates", "p50_ms", "p99_ms",
                    "attempts_per_request", "throughput_rps", "errors"):
            assert key in c
        assert 0.0 <= c["success_rate"] <= 1.0 and isinstance(c["duplicates"], int)
        assert c["problem"] is None, c
        assert all(set(e) == {"text", "count"} for e in c["errors"])
    json.dumps(quick)  # all of it is JSON


def test_h2guard_loses_nothing_and_writes_nothing_twice(quick: dict[str, Any]) -> None:
    for scenario in quick["scenarios"]:
        c = _cell(quick, "h2guard", scenario["name"])
        assert c["success_rate"] == 1.0 and c["duplicates"] == 0, c["errors"]
    assert quick["verdict"].startswith("h2guard")


@pytest.mark.parametrize("scenario", ["request-cap", "refused-burst", "stale-fin"])
def test_raw_httpx_loses_requests(quick: dict[str, Any], scenario: str) -> None:
    c = _cell(quick, "httpx", scenario)
    assert c["failed"] > 0 and c["errors"]


def test_a_blind_retry_writes_posts_twice(quick: dict[str, Any]) -> None:
    c = _cell(quick, "httpx-naive-retry", "reset-after-app")
    assert c["duplicates"] > 0
    assert c["effects"] > c["posts"]  # the ledger saw more orders than logical POSTs
    assert "httpx-naive-retry" in quick["verdict"].split("twice")[-1]


def test_refusals_show_up_as_attempts(quick: dict[str, Any]) -> None:
    # a refused stream is an attempt the server saw: h2guard's resends are counted
    assert _cell(quick, "h2guard", "refused-burst")["attempts_per_request"] > 1.0
    assert _cell(quick, "httpx", "refused-burst")["attempts_per_request"] == 1.0


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "h2guard", "bench", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_the_command_writes_json_and_html(tmp_path: Path) -> None:
    out = _cli("-s", "reset-after-app", "-c", "h2guard", "-c", "httpx-naive-retry",
               "--json", str(tmp_path / "r" / "b.json"), "--html", str(tmp_path / "b.html"))
    assert out.returncode == 0, out.stderr
    doc = json.loads((tmp_path / "r" / "b.json").read_text())
    assert {c["client"] for c in doc["cells"]} == {"h2guard", "httpx-naive-retry"}
    assert doc["verdict"].startswith("h2guard was clean")
    assert doc["verdict"][:60] in " ".join(out.stdout.split())  # the verdict is printed
    html = (tmp_path / "b.html").read_text()
    assert 'id="scoreboard"' in html and "HTML report:" in out.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["-c", "lynx"], "unknown client 'lynx'"),
    (["-s", "request-cpa"], "did you mean 'request-cap'"),
    (["--scenario-file", "/nonexistent.toml"], "cannot read"),
    (["--timeout", "0"], "--timeout"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    out = _cli(*args, timeout=30)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_list_shows_scenarios_and_which_clients_run_here() -> None:
    out = _cli("--list", "--quick", timeout=30)
    assert out.returncode == 0
    for name in ("refused-burst", "process-above", "h2guard", "java", "curl"):
        assert name in out.stdout
