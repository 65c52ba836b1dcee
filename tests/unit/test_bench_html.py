"""The bench HTML report: well-formed, self-contained, escaped, and the grid classes right."""

from __future__ import annotations

import copy
import re
from collections import Counter
from html.parser import HTMLParser
from typing import Any

import pytest

from h2guard.bench.html import cell_outcome, percent, render_html, success_rate

NASTY = "<script>alert(\"x\")</script> & 'quoted' </td></table> ]]> --> <!--"
RESET = ("RemoteProtocolError: <StreamReset stream_id:7, error_code:ErrorCodes.REFUSED_STREAM, "
         "remote_reset:True>")

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}


def _cell(client: str, scenario: str, **over: Any) -> dict[str, Any]:
    cell: dict[str, Any] = {
        "client": client, "scenario": scenario, "requests": 60, "succeeded": 60, "failed": 0,
        "success_rate": 1.0, "duplicates": 0, "effects": 40, "posts": 40,
        "p50_ms": 12.5, "p99_ms": 240.0, "attempts_per_request": 1.0, "throughput_rps": 410.2,
        "errors": [], "latencies_ms": [1.2, 3.4, 12.5, 12.6, 30.0, 240.0],
        "failed_latencies_ms": [],
        "timeline": {"duration_s": 2.7,
                     "faults": [[0.12, "max_concurrent_streams REFUSED_STREAM"],
                                [0.5, "goaway NO_ERROR"], [0.9, NASTY]],
                     "errors": [], "waves": [0.0, 1.1, 2.2]},
        "elapsed_s": 3.1, "problem": None,
    }
    cell.update(over)
    return cell


def make_result() -> dict[str, Any]:
    scenarios = [
        {"name": "refused-burst", "title": "REFUSED_STREAM burst", "kind": "targeted",
         "description": "Streams refused in a burst & <b>more</b>.",
         "source": "RFC 9113 section 5.1.2 and https://example.invalid/ (text, not a link)",
         "workload": {"requests": 60, "concurrency": 20, "waves": 3, "gap_s": 0.5,
                      "methods": {"POST": 40, "GET": 20}}},
        {"name": "empty", "title": "Nothing measured", "kind": "middlebox",
         "description": "", "source": "", "workload": {}},
        {"name": "weird <name>", "title": NASTY, "kind": NASTY, "description": NASTY,
         "source": NASTY, "workload": {"requests": 1, "methods": {NASTY: 1}}},
    ]
    clients = [
        {"name": "h2guard", "title": "h2guard.AsyncClient", "language": "Python",
         "version": "0.4.0", "available": True, "reason": None},
        {"name": "httpx", "title": "httpx <HTTP/2>", "language": "Python", "version": "0.28",
         "available": True, "reason": None},
        {"name": "naive", "title": "httpx-naive-retry", "language": "Python", "version": None,
         "available": True, "reason": None},
        {"name": "okhttp", "title": "OkHttp 3 (HTTP/2)", "language": "Java", "version": None,
         "available": False, "reason": "libokhttp-java not installed: <make peers> & retry"},
    ]
    cells = [
        _cell("h2guard", "refused-burst"),
        _cell("httpx", "refused-burst", succeeded=51, failed=9, success_rate=0.85,
              errors=[{"text": RESET, "count": 7}, {"text": NASTY, "count": 2}],
              failed_latencies_ms=[3.4, 240.0],
              timeline={"duration_s": 2.5, "faults": [[0.1, "rst_stream REFUSED_STREAM"]],
                        "errors": [[0.13, RESET], [0.2, NASTY]], "waves": [0.0]}),
        _cell("naive", "refused-burst", duplicates=2, effects=42, attempts_per_request=1.15,
              success_rate=1.0),
        # success 0, every latency null, every list empty, a problem
        _cell("h2guard", "weird <name>", succeeded=0, failed=60, success_rate=0.0,
              p50_ms=None, p99_ms=None, attempts_per_request=None, throughput_rps=0.0,
              errors=[], latencies_ms=[], failed_latencies_ms=[],
              timeline={"duration_s": None, "faults": [], "errors": [], "waves": []},
              problem=f"driver exited 1 before reporting 12 of 60 requests {NASTY}"),
        _cell("httpx", "weird <name>", success_rate=0.96, duplicates=1, timeline={}),
        # naive has no cell for "weird <name>"; no client has a cell for "empty"
    ]
    return {
        "version": "h2guard.bench/1", "h2guard_version": "0.4.0",
        "created": "2026-12-01T14:40:00Z", "quick": True, "elapsed_s": 95.2,
        "machine": {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "cpus": 2,
                    "implementation": "CPython"},
        "scenarios": scenarios, "clients": clients, "cells": cells,
        "verdict": f"h2guard lost nothing; {NASTY}",
    }


class Page(HTMLParser):
    """Collects tags, attributes and text, and checks that every element is closed in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.problems: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "style":
            self._in_style = True
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        (self.styles if self._in_style else self.text).append(data)

    def by_id(self) -> dict[str, tuple[str, dict[str, str | None]]]:
        ids: dict[str, tuple[str, dict[str, str | None]]] = {}
        for tag, attrs in self.tags:
            if attrs.get("id"):
                assert attrs["id"] not in ids, f"duplicate id {attrs['id']}"
                ids[str(attrs["id"])] = (tag, attrs)
        return ids


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def page_text() -> str:
    return render_html(make_result())


@pytest.fixture(scope="module")
def page(page_text: str) -> Page:
    return parse(page_text)


def test_well_formed_html5(page_text: str, page: Page) -> None:
    assert page_text.startswith("<!DOCTYPE html>")
    assert not page.problems, page.problems[:5]
    assert page.stack == [], page.stack
    assert "h2guard resilience scoreboard" in "".join(page.text)


def test_self_contained_no_url_no_script(page_text: str, page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag not in {"script", "link", "img", "iframe", "object", "embed"}, tag
        for name, value in attrs.items():
            value = value or ""
            assert name != "src", (tag, attrs)
            assert not name.startswith("on"), (tag, name)
            assert "http:" not in value and "https:" not in value, (tag, name, value)
            assert not value.lstrip().startswith("//"), (tag, name, value)
            if name in {"href", "xlink:href"}:
                assert value.startswith("#"), (tag, value)
    css = "".join(page.styles)
    assert "url(" not in css and "@import" not in css and "@font-face" not in css
    assert "xmlns" not in page_text
    # the only URL in the file is the one in a source's visible text
    assert len(re.findall(r"https?://", page_text)) == 1


def test_nasty_strings_are_escaped(page_text: str, page: Page) -> None:
    assert "<script" not in page_text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page_text
    text = "".join(page.text)
    assert NASTY in text                     # the text is shown, unescaped by the parser
    assert RESET in text
    titles = [str(a.get("title")) for _t, a in page.tags if a.get("title")]
    assert any(NASTY in t for t in titles)   # leading errors in the tooltips, intact
    assert any(RESET in t for t in titles)


def test_scoreboard_grid_classes(page: Page) -> None:
    ids = page.by_id()
    assert ids["scoreboard"][0] == "table"
    cells = {(a["data-client"], a["data-scenario"]): a for t, a in page.tags
             if t == "td" and "data-scenario" in a}
    # available clients x scenarios, the unavailable one not among them
    assert set(cells) == {(c, s) for c in ("h2guard", "httpx", "naive")
                          for s in ("refused-burst", "empty", "weird <name>")}

    def classes(client: str, scenario: str) -> set[str]:
        return set(str(cells[(client, scenario)]["class"]).split())

    assert classes("h2guard", "refused-burst") == {"cell-ok"}
    assert cells[("h2guard", "refused-burst")]["data-success"] == "1"
    assert classes("httpx", "refused-burst") == {"cell-bad"}
    assert cells[("httpx", "refused-burst")]["data-success"] == "0.85"
    # a duplicate write is never green, whatever the success rate, and it is marked
    assert classes("naive", "refused-burst") == {"cell-warn", "cell-dup"}
    assert classes("httpx", "weird <name>") == {"cell-warn", "cell-dup"}
    assert classes("h2guard", "weird <name>") == {"cell-bad", "cell-problem"}
    assert cells[("h2guard", "weird <name>")]["data-success"] == "0"
    assert classes("naive", "weird <name>") == {"cell-none"}
    assert classes("h2guard", "empty") == {"cell-none"}
    assert "REFUSED_STREAM" in str(cells[("httpx", "refused-burst")]["title"])
    # the unavailable client: a grey row with its reason
    na = [a for t, a in page.tags if t == "td" and a.get("data-client") == "okhttp"]
    assert len(na) == 1 and na[0]["class"] == "cell-na"
    assert "libokhttp-java not installed: <make peers> & retry" in "".join(page.text)


def test_one_latency_and_one_timeline_chart_per_scenario(page: Page, page_text: str) -> None:
    ids = page.by_id()
    charts = sorted(i for i, (tag, _a) in ids.items() if tag == "svg")
    assert charts == sorted(["latency-refused-burst", "timeline-refused-burst",
                             "latency-empty", "timeline-empty",
                             "latency-weird-name", "timeline-weird-name"])
    assert "scenario-weird-name" in ids and "scenario-refused-burst" in ids
    assert "no data" in page_text
    # links in the grid header lead to the sections
    hrefs = {a["href"] for t, a in page.tags if t == "a"}
    assert {"#scenario-refused-burst", "#scenario-empty", "#scenario-weird-name"} <= hrefs


def _svg_children(page_text: str, chart_id: str) -> Counter[str]:
    body = page_text.split(f'id="{chart_id}"', 1)[1].split("</svg>", 1)[0]
    return Counter(re.findall(r"<(\w+)", body))


def test_charts_draw_marks(page_text: str) -> None:
    latency = _svg_children(page_text, "latency-refused-burst")
    assert latency["line"] >= 6 and latency["path"] >= 3 and latency["circle"] >= 1
    timeline = _svg_children(page_text, "timeline-refused-burst")
    assert timeline["path"] >= 3 and timeline["line"] >= 3
    # the fault kinds of this scenario in its legend, each with its own colour
    body = page_text.split('id="timeline-refused-burst"', 1)[1].split("</svg>", 1)[0]
    for kind in ("max_concurrent_streams", "goaway", "rst_stream", "client error"):
        assert f">{kind}</text>" in body
    empty = _svg_children(page_text, "latency-empty")
    assert empty["path"] == 0 and empty["circle"] == 0


def test_errors_table_and_header(page: Page) -> None:
    text = "".join(page.text)
    assert "2026-12-01T14:40:00Z" in text and "quick run" in text
    assert "CPython 3.11.7" in text and "Linux-6.1-x86_64" in text and "2 CPUs" in text
    assert f"h2guard lost nothing; {NASTY}" in text
    assert "driver exited 1 before reporting 12 of 60 requests" in text
    assert "logical requests" in text and "ledger" in text and "arrivals" in text
    rows = [a for t, a in page.tags if t == "table" and "errors" in str(a.get("class"))]
    assert len(rows) == 1  # only refused-burst has errors


def test_empty_and_malformed_documents_render() -> None:
    results: list[dict[str, Any]] = [
        {},
        {"scenarios": [], "clients": [], "cells": []},
        {"scenarios": None, "clients": "x", "cells": [None, 3, {"client": "a"}],
         "machine": None, "verdict": None},
        {"scenarios": [{"name": "s"}], "clients": [{"name": "c"}],
         "cells": [{"client": "c", "scenario": "s", "latencies_ms": ["x", None, -1, 0],
                    "p50_ms": float("nan"), "p99_ms": float("inf"), "success_rate": True,
                    "timeline": {"faults": [[None, "x"], "bad", [0.1]], "errors": None,
                                 "waves": "x", "duration_s": -1},
                    "errors": [None, {"text": None}]}]},
    ]
    for result in results:
        page = parse(render_html(result))
        assert not page.problems and page.stack == []


def test_outcome_rules() -> None:
    assert cell_outcome({"success_rate": 1.0, "duplicates": 0}) == "ok"
    assert cell_outcome({"success_rate": 1.0, "duplicates": 3}) == "warn"
    assert cell_outcome({"success_rate": 0.95, "duplicates": 0}) == "warn"
    assert cell_outcome({"success_rate": 0.9499, "duplicates": 0}) == "bad"
    assert cell_outcome({"success_rate": None, "requests": 0}) == "bad"
    assert success_rate({"success_rate": None, "requests": 4, "succeeded": 3}) == 0.75
    assert percent(0.9996) == "99.9%" and percent(1.0) == "100%" and percent(0.29) == "29%"
    assert percent(None) == "—"


def test_full_result_stays_small() -> None:
    base = make_result()
    template = base["cells"][1]
    scenarios = [dict(base["scenarios"][0], name=f"scenario-{i}") for i in range(16)]
    clients = [dict(base["clients"][1], name=f"client-{i}") for i in range(9)]
    lat = sorted(0.5 + (i * 7.3) % 900 for i in range(400))
    cells = []
    for c in clients:
        for s in scenarios:
            cell = copy.deepcopy(template)
            cell.update(client=c["name"], scenario=s["name"], latencies_ms=lat,
                        failed_latencies_ms=lat[::2],
                        errors=[{"text": RESET + str(k), "count": 9 - k} for k in range(5)],
                        timeline={"duration_s": 30.0,
                                  "faults": [[i * 0.06, f"kind{i % 4} X"] for i in range(500)],
                                  "errors": [[i * 0.059, RESET] for i in range(500)],
                                  "waves": [0.0, 10.0, 20.0]})
            cells.append(cell)
    text = render_html(dict(base, scenarios=scenarios, clients=clients, cells=cells))
    size = len(text.encode())
    assert size < 3_000_000, size
    assert text.count('<svg class="chart"') == 32
