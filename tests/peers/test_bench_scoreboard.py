"""The scoreboard against real clients in other languages: the facts the bench must reproduce
(Java's HttpClient fails above the server's stream limit, without even sending; Node's http2
never retries a refused stream), every driver reports every request, and h2guard is clean in
the same cells."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from h2guard.bench import drivers
from h2guard.bench.report import verdict
from h2guard.bench.runner import run_bench
from h2guard.bench.scenarios import select_scenarios

pytestmark = [pytest.mark.peers, pytest.mark.timeout(300)]

EXTERNAL = ("go", "java", "node", "curl")
SCENARIOS = ["stream-limit", "refused-burst", "request-cap"]


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    missing = [drivers.probe(n) for n in EXTERNAL]
    missing = [i for i in missing if not i.available]
    if missing:
        pytest.skip("PEER MISSING: " + "; ".join(f"{i.name}: {i.reason}" for i in missing))
    result = asyncio.run(run_bench(scenarios=select_scenarios(SCENARIOS, quick=True),
                                   clients=["h2guard", *EXTERNAL], quick=True))
    result["verdict"] = verdict(result)
    return result


def _cell(result: dict[str, Any], client: str, scenario: str) -> dict[str, Any]:
    (found,) = [c for c in result["cells"]
                if c["client"] == client and c["scenario"] == scenario]
    return found


def test_every_driver_ran_and_reported_every_request(board: dict[str, Any]) -> None:
    assert {c["name"] for c in board["clients"] if c["available"]} == {"h2guard", *EXTERNAL}
    assert len(board["cells"]) == 5 * len(SCENARIOS)
    for c in board["cells"]:
        assert c["problem"] is None, (c["client"], c["scenario"], c["problem"])
        texts = [e["text"] for e in c["errors"]]
        assert "no outcome reported by the client" not in texts, c["client"]


def test_java_fails_above_the_stream_limit_without_sending(board: dict[str, Any]) -> None:
    c = _cell(board, "java", "stream-limit")
    assert c["failed"] > 0
    assert any("too many concurrent streams" in e["text"] for e in c["errors"]), c["errors"]
    # those requests never reached the server: fewer arrivals than logical requests
    assert c["attempts_per_request"] < 1.0
    assert "java lost" in board["verdict"]


def test_node_does_not_retry_refused_streams(board: dict[str, Any]) -> None:
    c = _cell(board, "node", "refused-burst")
    assert c["failed"] > 0
    assert any("REFUSED_STREAM" in e["text"] for e in c["errors"]), c["errors"]
    assert c["attempts_per_request"] == 1.0


def test_go_and_curl_retry_refused_streams(board: dict[str, Any]) -> None:
    for client in ("go", "curl"):
        c = _cell(board, client, "refused-burst")
        assert c["success_rate"] == 1.0, (client, c["errors"])
        assert c["attempts_per_request"] > 1.0, client  # the refusals were resent


def test_h2guard_is_clean_where_the_others_are_not(board: dict[str, Any]) -> None:
    for scenario in SCENARIOS:
        c = _cell(board, "h2guard", scenario)
        assert c["success_rate"] == 1.0 and c["duplicates"] == 0, (scenario, c["errors"])
