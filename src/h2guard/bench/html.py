"""The bench result as one self-contained HTML page: the scoreboard grid and a chart per scenario.

:func:`render_html` turns the result document the runner writes (``h2guard.bench/1``, the
dict ``--json`` prints) into a single HTML5 file that works offline: inline CSS, inline SVG
drawn here by hand, no script, no font, no image and no URL to fetch. Every string that comes
from the result is escaped (error texts quote frames such as ``<StreamReset ...>``), and every
list in it may be empty or missing: the page then says "no data" where a chart would be.

Colours follow one rule everywhere: green means every logical request succeeded and nothing was
applied twice, amber at least 95 %, red below; magenta marks a duplicate side effect (a POST
the server's ledger applied more than once), the worst outcome whatever the success rate.
"""

from __future__ import annotations

import html
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["cell_outcome", "percent", "render_html", "success_rate"]

OK_RATE = 1.0
WARN_RATE = 0.95

# Outcome colours (the screenshot test looks for these exact values).
COLOURS = {
    "ok": "#c9edd5",
    "warn": "#ffe6a3",
    "bad": "#f9c9c9",
    "dup": "#c026d3",
    "na": "#e9ecf0",
    "dot": "#3567d4",
    "error": "#d62728",
    "p50": "#1b1f24",
    "p99": "#e07000",
}

# Injected fault kinds (the first word of a timeline fault text) and their marks' colours.
# Red is kept for client errors and magenta for duplicates.
FAULT_COLOURS = {
    "max_concurrent_streams": "#f28e2b",
    "refused_stream": "#f28e2b",
    "goaway": "#4e79a7",
    "rst_stream": "#9c6ade",
    "idle_timeout": "#17a3b8",
    "max_age": "#8c6d31",
    "stall": "#b5a000",
    "flow_control": "#b5a000",
    "delay": "#7f7f7f",
    "close": "#2f4b7c",
}
_SPARE_COLOURS = ("#59a14f", "#76b7b2", "#edc948", "#9d7660", "#5f6b7a", "#b07aa1", "#86bcb6")

_TIMES = "\u00d7"
_NBSP = "\u00a0"
_FONT = ('system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
         '"Noto Sans", "Liberation Sans", sans-serif')
_MONO = 'ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, Consolas, monospace'


# ---------------------------------------------------------------------------------------------
# Reading the document defensively


def _e(value: object) -> str:
    """Escape any value for element text and (double- or single-quoted) attribute values."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: object) -> int:
    number = _num(value)
    return int(number) if number is not None else 0


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _map(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _maps(value: object) -> list[Mapping[str, Any]]:
    return [item for item in _list(value) if isinstance(item, Mapping)]


def _numbers(value: object) -> list[float]:
    return [n for n in (_num(v) for v in _list(value)) if n is not None]


def _events(value: object) -> list[tuple[float, str]]:
    """``[[seconds, text], ...]`` pairs, malformed entries dropped."""
    events = []
    for item in _list(value):
        if isinstance(item, list | tuple) and item:
            t = _num(item[0])
            if t is not None:
                events.append((t, _text(item[1]) if len(item) > 1 else ""))
    return events


def success_rate(cell: Mapping[str, Any]) -> float | None:
    """The cell's success rate in 0..1 (from ``succeeded / requests`` if the rate is missing),
    or None when nothing was measured."""
    rate = _num(cell.get("success_rate"))
    if rate is None:
        requests = _int(cell.get("requests"))
        if requests > 0:
            rate = _int(cell.get("succeeded")) / requests
    return None if rate is None else min(max(rate, 0.0), 1.0)


def cell_outcome(cell: Mapping[str, Any]) -> str:
    """``"ok"``, ``"warn"`` or ``"bad"``: the background of a cell.

    ok is 100 % success and no duplicate; warn at least 95 % (a cell at 100 % whose POSTs were
    applied twice is not ok); bad below, or when nothing was measured. Duplicates add the
    separate ``dup`` marker on top of this."""
    rate = success_rate(cell)
    if rate is None:
        return "bad"
    if rate >= OK_RATE and _int(cell.get("duplicates")) == 0:
        return "ok"
    return "warn" if rate >= WARN_RATE else "bad"


# ---------------------------------------------------------------------------------------------
# Number formatting


def _c(x: float) -> str:
    """An SVG coordinate, one decimal at most."""
    s = f"{x:.1f}"
    if s.endswith(".0"):
        s = s[:-2]
    return "0" if s == "-0" else s


def percent(rate: float | None) -> str:
    """``"100%"``, ``"98.3%"``, ``"85%"``: rounded down, so only a perfect cell says 100%."""
    if rate is None:
        return "—"
    if rate >= 1.0:
        return "100%"
    tenths = math.floor(rate * 1000 + 1e-9) / 10  # never round 99.96 % up to "100%"
    return f"{tenths:.0f}%" if tenths == int(tenths) else f"{tenths:.1f}%"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value:.2f} ms"
    if value < 10:
        return f"{value:.1f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    if value < 10_000:
        return f"{value / 1000:.2f} s"
    return f"{value / 1000:.1f} s"


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 60:
        return f"{value:.1f} s"
    minutes, secs = divmod(round(value), 60)
    return f"{minutes} min {secs:02d} s"


def _fixed(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _rps(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.0f}/s" if value >= 100 else f"{value:.1f}/s"


def _attr_number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def _slugs(names: Iterable[str]) -> dict[str, str]:
    """A unique, id-safe slug per scenario name (a safe name is kept as it is)."""
    used: set[str] = set()
    slugs: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "scenario"
        slug, n = base, 2
        while slug in used:
            slug, n = f"{base}-{n}", n + 1
        used.add(slug)
        slugs[name] = slug
    return slugs


# ---------------------------------------------------------------------------------------------
# The model the page is drawn from


class _Report:
    def __init__(self, result: Mapping[str, Any]) -> None:
        self.result = result
        self.scenarios = [s for s in _maps(result.get("scenarios")) if _text(s.get("name"))]
        self.clients = [c for c in _maps(result.get("clients")) if _text(c.get("name"))]
        self.cells: dict[tuple[str, str], Mapping[str, Any]] = {}
        for cell in _maps(result.get("cells")):
            self.cells[(_text(cell.get("client")), _text(cell.get("scenario")))] = cell
        known = {_text(c.get("name")) for c in self.clients}
        for client, _scenario in self.cells:  # a cell of a client the list forgot: show it
            if client not in known:
                known.add(client)
                self.clients.append({"name": client, "title": client, "available": True})
        known_s = {_text(s.get("name")) for s in self.scenarios}
        for _client, scenario in self.cells:
            if scenario not in known_s:
                known_s.add(scenario)
                self.scenarios.append({"name": scenario, "title": scenario})
        self.slugs = _slugs(_text(s.get("name")) for s in self.scenarios)

    @staticmethod
    def available(client: Mapping[str, Any]) -> bool:
        return client.get("available") is not False

    @property
    def running(self) -> list[Mapping[str, Any]]:
        return [c for c in self.clients if self.available(c)]

    def cell(self, client: str, scenario: str) -> Mapping[str, Any] | None:
        return self.cells.get((client, scenario))


def _wbr(text: str) -> str:
    """Escaped, with a line-break opportunity after each ``_`` and ``/`` (narrow columns)."""
    return re.sub(r"([_/])", r"\1<wbr>", _e(text))


def _client_label(client: Mapping[str, Any]) -> str:
    return _text(client.get("title")) or _text(client.get("name"))


def _scenario_label(scenario: Mapping[str, Any]) -> str:
    return _text(scenario.get("title")) or _text(scenario.get("name"))


# ---------------------------------------------------------------------------------------------
# Page


_CSS = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #5b6470; --line: #d9dee4;
  --bg: #f5f6f8; --card: #ffffff; --ok: %(ok)s; --warn: %(warn)s; --bad: %(bad)s;
  --dup: %(dup)s; --na: %(na)s; --ok-ink: #0c5a2b; --warn-ink: #6a4a00; --bad-ink: #8d1a1a; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%%; }
body { margin: 0; background: var(--bg); color: var(--ink); font: 15px/1.5 %(font)s; }
main { max-width: 1400px; margin: 0 auto; padding: 28px 24px 40px; }
h1 { font-size: 28px; line-height: 1.2; margin: 0 0 6px; letter-spacing: -0.01em; }
h2 { font-size: 20px; margin: 0 0 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #2d333b; }
p { margin: 6px 0; }
code, .mono { font-family: %(mono)s; font-size: 0.88em; }
.meta { color: var(--muted); font-size: 14px; display: flex; flex-wrap: wrap; gap: 4px 18px;
  margin: 0; padding: 0; list-style: none; }
.meta b { color: var(--ink); font-weight: 600; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px;
  font-weight: 600; background: #e3e8ef; color: #36404c; vertical-align: 2px; }
.tag.quick { background: #fff0c2; color: #6a4a00; }
.tag.full { background: #d7ecff; color: #0b4a80; }
.verdict { margin: 16px 0 0; padding: 12px 16px; background: var(--card);
  border-left: 4px solid #3567d4; border-radius: 6px; box-shadow: 0 1px 2px rgba(0,0,0,.06);
  max-width: 1100px; }
.card { background: var(--card); border-radius: 10px; padding: 18px 20px 20px; margin: 22px 0;
  box-shadow: 0 1px 3px rgba(16,24,40,.08), 0 1px 2px rgba(16,24,40,.04); }
.scroll { overflow-x: auto; }
table.board { border-collapse: separate; border-spacing: 3px; margin: 6px 0 4px; width: 100%%;
  table-layout: fixed; min-width: 720px; }
.board col.c-client { width: 172px; }
.board th { font-weight: 600; font-size: 12px; color: #36404c; vertical-align: bottom;
  padding: 2px 4px 6px; text-align: center; }
.board th.corner { text-align: left; color: var(--muted); font-weight: 500; }
.board thead a { color: inherit; text-decoration: none; }
.board thead a:hover { text-decoration: underline; }
.board .kind { display: block; font-weight: 500; color: var(--muted); font-size: 10.5px; }
.board tbody th { text-align: left; font-size: 13px; padding: 2px 8px 2px 2px;
  vertical-align: middle; overflow-wrap: anywhere; }
.board tbody th small { display: block; font-weight: 400; color: var(--muted); font-size: 11px; }
.board td { position: relative; text-align: center; border-radius: 6px; padding: 6px 3px 5px;
  line-height: 1.25; }
.board thead th { overflow-wrap: break-word; }
.board .nw { white-space: nowrap; }
table.dense td .pct { font-size: 17px; }
table.dense th { font-size: 11px; }
.board td .pct { display: block; font-size: 19px; font-weight: 700;
  font-variant-numeric: tabular-nums; }
.board td .sub { display: block; font-size: 10.5px; font-variant-numeric: tabular-nums;
  opacity: .85; }
.cell-ok, .tot-ok, .pill-ok, .sw-ok { background: var(--ok); color: var(--ok-ink); }
.cell-warn, .tot-warn, .pill-warn, .sw-warn { background: var(--warn); color: var(--warn-ink); }
.cell-bad, .tot-bad, .pill-bad, .sw-bad { background: var(--bad); color: var(--bad-ink); }
td.cell-dup, td.tot-dup { box-shadow: inset 0 0 0 3px var(--dup); }
.dupb { display: inline-block; background: var(--dup); color: #fff; border-radius: 999px;
  padding: 0 6px; font-weight: 700; font-size: 10.5px; }
.probb { position: absolute; top: 3px; right: 4px; width: 15px; height: 15px; line-height: 15px;
  border-radius: 50%%; background: #5b6470; color: #fff; font-size: 10px; font-weight: 700; }
td.cell-none, td.cell-na { background: var(--na); color: #5b6470; }
td.cell-na { text-align: left; padding-left: 12px; font-size: 13px; }
tr.row-na th { color: #7a838f; }
.board td.total { border-left: 2px solid #fff; }
.board th.totalh { border-left: 2px solid transparent; }
.legend { display: flex; flex-wrap: wrap; gap: 6px 18px; font-size: 12.5px; color: var(--muted);
  margin: 10px 0 0; padding: 0; list-style: none; }
.legend li { display: flex; align-items: center; gap: 6px; }
.sw { display: inline-block; width: 16px; height: 16px; border-radius: 4px; }
.sw-dup { background: #fff; box-shadow: inset 0 0 0 3px var(--dup); }
nav.toc { font-size: 13px; margin-top: 12px; color: var(--muted); }
nav.toc a { color: #2452b5; text-decoration: none; margin-right: 12px; white-space: nowrap; }
.scenario-head { display: flex; flex-wrap: wrap; align-items: baseline; gap: 4px 12px; }
.scenario-head code { color: var(--muted); }
.source { color: var(--muted); font-size: 13.5px; }
.workload { font-size: 13.5px; }
.problem { background: #fff4e5; border: 1px solid #f3c98b; border-radius: 6px;
  padding: 6px 10px; font-size: 13.5px; margin: 8px 0; }
table.data { border-collapse: collapse; font-size: 13px; width: 100%%; margin-top: 4px; }
.data th, .data td { text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid #edf0f3;
  vertical-align: top; }
table.results { width: auto; min-width: 60%%; }
.results th, .results td { padding-right: 26px; }
.data th { font-weight: 600; color: #36404c; border-bottom: 1px solid var(--line); }
.data td.n, .data th.n { text-align: right; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.data td.err { font-family: %(mono)s; font-size: 12px; word-break: break-word; }
.pill { display: inline-block; border-radius: 999px; padding: 0 8px; font-weight: 600; }
.pill-dup { background: var(--dup); color: #fff; }
.none { color: var(--muted); font-size: 13px; font-style: italic; }
figure { margin: 14px 0 0; }
figcaption { font-size: 13px; color: var(--muted); margin-bottom: 4px; }
svg.chart { display: block; width: 100%%; height: auto; max-width: 1300px; }
svg.chart text { font-family: %(font)s; }
footer { color: var(--muted); font-size: 13px; margin-top: 30px; border-top: 1px solid var(--line);
  padding-top: 14px; }
footer dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 8px 0; }
footer dt { font-weight: 600; color: #36404c; }
footer dd { margin: 0; }
@media (max-width: 700px) { main { padding: 16px 10px; } h1 { font-size: 22px; }
  .card { padding: 12px; } }
@media print { body { background: #fff; } .card { box-shadow: none; border: 1px solid #ddd; } }
""".strip()


def render_html(result: Mapping[str, Any]) -> str:
    """The whole page: scoreboard grid, then per scenario its latency and timeline charts and
    its errors. Self-contained (no URL of any kind) and rendered without JavaScript."""
    report = _Report(result)
    css = _CSS % {**COLOURS, "font": _FONT, "mono": _MONO}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="color-scheme" content="light">',
        "<title>h2guard resilience scoreboard</title>",
        f"<style>\n{css}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        _header(result),
        _board(report),
    ]
    parts.extend(_scenario_section(report, scenario) for scenario in report.scenarios)
    parts.append(_footer(result))
    parts.extend(["</main>", "</body>", "</html>", ""])
    return "\n".join(parts)


def _header(result: Mapping[str, Any]) -> str:
    machine = _map(result.get("machine"))
    impl = _text(machine.get("implementation")) or "Python"
    python = _text(machine.get("python"))
    machine_bits = [f"{impl} {python}".strip()]
    if machine.get("platform"):
        machine_bits.append(_text(machine.get("platform")))
    cpus = _num(machine.get("cpus"))
    if cpus is not None:
        machine_bits.append(f"{cpus:.0f} CPU" + ("" if cpus == 1 else "s"))
    quick = result.get("quick")
    mode = ('<span class="tag quick">quick run</span>' if quick
            else '<span class="tag full">full run</span>')
    items = [
        f"<li>{mode}</li>",
        f"<li>created <b>{_e(result.get('created') or '—')}</b></li>",
        f"<li>elapsed <b>{_e(_seconds(_num(result.get('elapsed_s'))))}</b></li>",
        f"<li>machine <b>{_e(' · '.join(machine_bits))}</b></li>",
        f"<li>h2guard <b>{_e(result.get('h2guard_version') or '—')}</b></li>",
    ]
    verdict = _text(result.get("verdict")).strip()
    verdict_html = (f'<p class="verdict">{_e(verdict)}</p>' if verdict
                    else '<p class="verdict none">no verdict in this result</p>')
    return ("<header>\n<h1>h2guard resilience scoreboard</h1>\n"
            f'<ul class="meta">{"".join(items)}</ul>\n{verdict_html}\n</header>')


# ---------------------------------------------------------------------------------------------
# The scoreboard grid


def _cell_tooltip(client: str, scenario: str, cell: Mapping[str, Any]) -> str:
    rate = success_rate(cell)
    lines = [f"{client} {_TIMES} {scenario}",
             f"{_int(cell.get('succeeded'))} of {_int(cell.get('requests'))} succeeded "
             f"({percent(rate)})"]
    dups = _int(cell.get("duplicates"))
    effects, posts = _num(cell.get("effects")), _num(cell.get("posts"))
    ledger = ""
    if effects is not None and posts is not None:
        ledger = f" ({effects:.0f} effects for {posts:.0f} POSTs)"
    lines.append(f"{dups} duplicate side effect{'' if dups == 1 else 's'}{ledger}")
    lines.append(f"p50 {_ms(_num(cell.get('p50_ms')))} · p99 {_ms(_num(cell.get('p99_ms')))}")
    lines.append(f"{_fixed(_num(cell.get('attempts_per_request')))} attempts per request · "
                 f"{_rps(_num(cell.get('throughput_rps')))}")
    problem = _text(cell.get("problem"))
    if problem:
        lines.append(f"problem: {problem}")
    errors = _maps(cell.get("errors"))
    if errors:
        lines.append("leading errors:")
        lines.extend(f"  {_int(err.get('count'))}{_TIMES} {_text(err.get('text'))}"
                     for err in errors)
    return "\n".join(lines)


def _board_cell(client: Mapping[str, Any], scenario: Mapping[str, Any],
                cell: Mapping[str, Any] | None) -> str:
    cname, sname = _text(client.get("name")), _text(scenario.get("name"))
    data = f'data-client="{_e(cname)}" data-scenario="{_e(sname)}"'
    if cell is None:
        return (f'<td class="cell-none" {data} data-success="" title="not run">'
                '<span class="pct">—</span><span class="sub">not run</span></td>')
    outcome = cell_outcome(cell)
    rate = success_rate(cell)
    dups = _int(cell.get("duplicates"))
    classes = [f"cell-{outcome}"] + (["cell-dup"] if dups > 0 else [])
    problem = _text(cell.get("problem"))
    if problem:
        classes.append("cell-problem")
    tip = _cell_tooltip(_client_label(client), _scenario_label(scenario), cell)
    dup_html = (f'<span class="dupb">{dups}{_NBSP}dup</span>' if dups > 0
                else f'<span class="nw">0{_NBSP}dup</span>')
    attempts = _num(cell.get("attempts_per_request"))
    att = (f'<span class="nw">{attempts:.2f}{_TIMES} ·</span> ' if attempts is not None else "")
    badge = '<span class="probb">!</span>' if problem else ""
    p99 = _ms(_num(cell.get("p99_ms"))).replace(" ", _NBSP)
    return (f'<td class="{" ".join(classes)}" {data} data-success="{_attr_number(rate)}" '
            f'data-duplicates="{dups}" title="{_e(tip)}">{badge}'
            f'<span class="pct">{_e(percent(rate))}</span>'
            f'<span class="sub">p99{_NBSP}{_e(p99)}</span>'
            f'<span class="sub">{att}{dup_html}</span></td>')


def _total_cell(cells: Sequence[Mapping[str, Any]]) -> str:
    requests = sum(_int(c.get("requests")) for c in cells)
    succeeded = sum(_int(c.get("succeeded")) for c in cells)
    dups = sum(_int(c.get("duplicates")) for c in cells)
    if not cells or requests <= 0:
        return ('<td class="total cell-none" title="nothing measured">'
                '<span class="pct">—</span></td>')
    total = {"requests": requests, "succeeded": succeeded, "duplicates": dups}
    outcome = cell_outcome(total)
    classes = ["total", f"tot-{outcome}"] + (["tot-dup"] if dups > 0 else [])
    dup_html = f'<span class="dupb">{dups}{_NBSP}dup</span>' if dups > 0 else f"0{_NBSP}dup"
    tip = f"all scenarios: {succeeded} of {requests} requests succeeded, {dups} duplicates"
    return (f'<td class="{" ".join(classes)}" title="{_e(tip)}">'
            f'<span class="pct">{_e(percent(succeeded / requests))}</span>'
            f'<span class="sub">{succeeded}/{requests}</span>'
            f'<span class="sub">{dup_html}</span></td>')


def _board(report: _Report) -> str:
    head = ['<th class="corner" scope="col">client \\ scenario</th>']
    for scenario in report.scenarios:
        sname = _text(scenario.get("name"))
        kind = _text(scenario.get("kind"))
        tip = f"{sname}: {_text(scenario.get('description'))}".strip(": ")
        kind_html = f'<span class="kind">{_e(kind)}</span>' if kind else ""
        head.append(f'<th scope="col" title="{_e(tip)}"><a href="#scenario-{report.slugs[sname]}">'
                    f"{_wbr(_scenario_label(scenario))}</a>{kind_html}</th>")
    head.append('<th class="totalh" scope="col">all</th>')
    rows = []
    for client in report.clients:
        cname = _text(client.get("name"))
        detail = " · ".join(x for x in (_text(client.get("language")),
                                        _text(client.get("version"))) if x)
        label = (f'<th scope="row" title="{_e(cname)}">{_e(_client_label(client))}'
                 f"{f'<small>{_e(detail)}</small>' if detail else ''}</th>")
        if not report.available(client):
            reason = _text(client.get("reason")) or "not available"
            span = len(report.scenarios) + 1
            rows.append(f'<tr class="row-na">{label}<td class="cell-na" colspan="{span}" '
                        f'data-client="{_e(cname)}" title="{_e(reason)}">'
                        f"not available: {_e(reason)}</td></tr>")
            continue
        tds = []
        cells = []
        for scenario in report.scenarios:
            cell = report.cell(cname, _text(scenario.get("name")))
            if cell is not None:
                cells.append(cell)
            tds.append(_board_cell(client, scenario, cell))
        tds.append(_total_cell(cells))
        rows.append(f"<tr>{label}{''.join(tds)}</tr>")
    if not report.clients or not report.scenarios:
        table = '<p class="none">no data: this result has no clients or no scenarios.</p>'
    else:
        n = len(report.scenarios) + 1
        dense = " dense" if n > 9 else ""
        table = (f'<div class="scroll"><table class="board{dense}" id="scoreboard" '
                 f'style="max-width:{172 + 128 * n}px">\n'
                 f'<colgroup><col class="c-client"><col span="{n}"></colgroup>\n'
                 f"<thead><tr>{''.join(head)}</tr></thead>\n<tbody>\n"
                 + "\n".join(rows) + "\n</tbody></table></div>")
    legend = (
        '<ul class="legend">'
        '<li><span class="sw sw-ok"></span>100% succeeded, no duplicate</li>'
        '<li><span class="sw sw-warn"></span>at least 95% succeeded</li>'
        '<li><span class="sw sw-bad"></span>below 95%</li>'
        '<li><span class="sw sw-dup"></span>duplicate side effect: a POST applied more than once'
        " (the worst outcome)</li>"
        '<li><span class="sw" style="background:var(--na)"></span>client not available</li>'
        f"<li>small print: p99 latency · attempts per request (1.15{_TIMES} = 15% sent again) · "
        "duplicates</li>"
        "</ul>")
    toc = ""
    if report.scenarios:
        links = "".join(f'<a href="#scenario-{report.slugs[_text(s.get("name"))]}">'
                        f"{_e(_scenario_label(s))}</a>" for s in report.scenarios)
        toc = f'<nav class="toc">scenarios: {links}</nav>'
    return (f'<section class="card" aria-labelledby="board-h">\n<h2 id="board-h">Scoreboard</h2>\n'
            f"{table}\n{legend}\n{toc}\n</section>")


# ---------------------------------------------------------------------------------------------
# Per scenario


def _bytes(size: float) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size:.0f} B"


def _workload(workload: Mapping[str, Any]) -> str:
    bits = []
    requests = _num(workload.get("requests"))
    methods = _map(workload.get("methods"))
    split = ", ".join(f"{_int(n)} {_text(m)}" for m, n in methods.items())
    if requests is not None:
        bits.append(f"{requests:.0f} requests" + (f" ({split})" if split else ""))
    elif split:
        bits.append(split)
    concurrency = _num(workload.get("concurrency"))
    if concurrency is not None:
        bits.append(f"concurrency {concurrency:.0f}")
    waves = _num(workload.get("waves"))
    if waves is not None:
        gap = _num(workload.get("gap_s"))
        gap_text = f", {gap:g} s apart" if gap is not None and waves > 1 else ""
        bits.append(f"{waves:.0f} wave{'' if waves == 1 else 's'}{gap_text}")
    mix = workload.get("mix")
    if isinstance(mix, list) and mix:
        kinds = []
        for entry in mix:
            m = _map(entry)
            size = _num(m.get("body_size"))
            body = f" with {_bytes(size)} body" if size else ""
            weight = _num(m.get("weight"))
            share = f" x{weight:.0f}" if weight is not None and weight != 1 else ""
            kinds.append(f"{_text(m.get('method'))} {_text(m.get('path'))}{body}{share}")
        bits.append("mix: " + ", ".join(kinds))
    known = {"requests", "methods", "concurrency", "waves", "gap_s", "mix"}
    bits.extend(f"{_text(k)} {_text(v)}" for k, v in workload.items() if k not in known)
    return " · ".join(bits) if bits else "not described"


def _scenario_section(report: _Report, scenario: Mapping[str, Any]) -> str:
    sname = _text(scenario.get("name"))
    slug = report.slugs[sname]
    kind = _text(scenario.get("kind"))
    out = [f'<section class="card scenario" id="scenario-{slug}">',
           '<div class="scenario-head">'
           f"<h2>{_e(_scenario_label(scenario))}</h2><code>{_e(sname)}</code>"
           + (f'<span class="tag">{_e(kind)}</span>' if kind else "") + "</div>"]
    description = _text(scenario.get("description"))
    if description:
        out.append(f"<p>{_e(description)}</p>")
    source = _text(scenario.get("source"))
    if source:
        out.append(f'<p class="source">Where the numbers come from: {_e(source)}</p>')
    out.append(f'<p class="workload"><b>Workload:</b> '
               f"{_e(_workload(_map(scenario.get('workload'))))}</p>")
    lanes = []
    for client in report.running:
        cname = _text(client.get("name"))
        lanes.append((client, report.cell(cname, sname)))
    for client, cell in lanes:
        problem = _text(cell.get("problem")) if cell is not None else ""
        if problem:
            out.append(f'<p class="problem"><b>{_e(_client_label(client))}:</b> {_e(problem)}</p>')
    out.append(_results_table(lanes))
    out.append('<figure><figcaption>Latency of every request (log scale; ok requests as dots, '
               "failed ones as red crosses; black bar p50, orange bar p99)</figcaption>"
               f"{_latency_chart(slug, lanes)}</figure>")
    out.append("<figure><figcaption>Timeline of each client's run: what the server injected "
               "(above the line), when a request failed (below), wave starts (dashed)"
               f"</figcaption>{_timeline_chart(slug, lanes)}</figure>")
    out.append(_errors_table(lanes))
    out.append("</section>")
    return "\n".join(out)


def _results_table(lanes: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]]) -> str:
    if not lanes:
        return '<p class="none">no client ran this scenario.</p>'
    rows = []
    for client, cell in lanes:
        name = _e(_client_label(client))
        if cell is None:
            rows.append(f'<tr><td>{name}</td><td colspan="7" class="none">not run</td></tr>')
            continue
        rate = success_rate(cell)
        dups = _int(cell.get("duplicates"))
        pill = f'<span class="pill pill-{cell_outcome(cell)}">{_e(percent(rate))}</span>'
        dup = (f'<span class="pill pill-dup">{dups}</span>' if dups > 0 else "0")
        effects, posts = _num(cell.get("effects")), _num(cell.get("posts"))
        ledger = (f" <span class=\"none\">({effects:.0f} effects / {posts:.0f} POSTs)</span>"
                  if effects is not None and posts is not None else "")
        rows.append(
            f"<tr><td>{name}</td>"
            f'<td class="n">{pill} {_int(cell.get("succeeded"))}/{_int(cell.get("requests"))}</td>'
            f'<td class="n">{dup}{ledger}</td>'
            f'<td class="n">{_e(_ms(_num(cell.get("p50_ms"))))}</td>'
            f'<td class="n">{_e(_ms(_num(cell.get("p99_ms"))))}</td>'
            f'<td class="n">{_e(_fixed(_num(cell.get("attempts_per_request"))))}</td>'
            f'<td class="n">{_e(_rps(_num(cell.get("throughput_rps"))))}</td>'
            f'<td class="n">{_e(_seconds(_num(cell.get("elapsed_s"))))}</td></tr>')
    return ('<table class="data results"><thead><tr><th>client</th><th class="n">success</th>'
            '<th class="n">duplicates</th><th class="n">p50</th><th class="n">p99</th>'
            '<th class="n">attempts/request</th><th class="n">throughput</th>'
            '<th class="n">elapsed</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _errors_table(lanes: Sequence[tuple[Mapping[str, Any], Mapping[str, Any] | None]]) -> str:
    rows = []
    for client, cell in lanes:
        if cell is None:
            continue
        for err in _maps(cell.get("errors")):
            rows.append(f"<tr><td>{_e(_client_label(client))}</td>"
                        f'<td class="err">{_e(err.get("text"))}</td>'
                        f'<td class="n">{_int(err.get("count"))}</td></tr>')
    ran = [cell for _client, cell in lanes if cell is not None]
    if not ran:
        empty = "no client ran this scenario."
    elif all((success_rate(cell) or 0.0) >= 1.0 for cell in ran):
        empty = "no errors: every request of every client succeeded."
    else:
        empty = "requests failed, but no error text was reported."
    body = (f'<p class="none">{empty}</p>' if not rows else
            '<table class="data errors"><thead><tr><th>client</th><th>error</th>'
            '<th class="n">count</th></tr></thead><tbody>' + "".join(rows) + "</tbody></table>")
    return f"<h3>Leading errors</h3>{body}"


# ---------------------------------------------------------------------------------------------
# SVG charts

_Lane = tuple[Mapping[str, Any], Mapping[str, Any] | None, list[float], list[float],
              float | None, float | None]
_W = 1100.0          # viewBox width of every chart
_LEFT = 180.0        # client names
_LANE = 30.0


def _svg_open(chart_id: str, height: float, label: str) -> str:
    return (f'<svg class="chart" id="{_e(chart_id)}" viewBox="0 0 {_c(_W)} {_c(height)}" '
            f'role="img" aria-label="{_e(label)}">')


def _no_data(chart_id: str, label: str, message: str = "no data") -> str:
    return (_svg_open(chart_id, 60, label)
            + f'<rect x="0" y="0" width="{_c(_W)}" height="60" rx="6" fill="#f3f5f8"/>'
            f'<text x="{_c(_W / 2)}" y="35" text-anchor="middle" font-size="14" '
            f'fill="#5b6470">{_e(message)}</text></svg>')


def _lane_label(y: float, client: Mapping[str, Any]) -> str:
    label = _client_label(client)
    if len(label) > 26:
        label = label[:25] + "…"
    return (f'<text x="{_c(_LEFT - 10)}" y="{_c(y + _LANE / 2 + 4)}" text-anchor="end" '
            f'font-size="12.5" fill="#1b1f24">{_e(label)}</text>')


def _log_ticks(lo_dec: int, hi_dec: int) -> list[tuple[float, bool]]:
    """Tick values between ``10**lo_dec`` and ``10**hi_dec``: (value, labelled)."""
    span = hi_dec - lo_dec
    ticks = []
    for d in range(lo_dec, hi_dec + 1):
        for m in (1, 2, 5):
            if d == hi_dec and m > 1:
                break
            labelled = m == 1 or span <= 3
            ticks.append((m * 10.0**d, labelled))
    return ticks


def _ms_tick(value: float) -> str:
    if value >= 1000:
        return f"{value / 1000:g} s"
    if value >= 1:
        return f"{value:g} ms"
    return f"{value:.2g} ms"


def _ok_latencies(all_ms: list[float], failed_ms: list[float]) -> list[float]:
    """``all_ms`` minus the failed ones (a multiset difference, to 0.01 ms)."""
    failed = Counter(round(v, 2) for v in failed_ms)
    ok = []
    for v in all_ms:
        key = round(v, 2)
        if failed[key] > 0:
            failed[key] -= 1
        else:
            ok.append(v)
    return ok


def _latency_chart(slug: str, lanes: Sequence[tuple[Mapping[str, Any],
                                                     Mapping[str, Any] | None]]) -> str:
    chart_id = f"latency-{slug}"
    label = "latency distribution per client"
    values: list[float] = []
    lane_data: list[_Lane] = []
    for client, cell in lanes:
        if cell is None:
            lane_data.append((client, None, [], [], None, None))
            continue
        all_ms = _numbers(cell.get("latencies_ms"))
        failed = _numbers(cell.get("failed_latencies_ms"))
        p50, p99 = _num(cell.get("p50_ms")), _num(cell.get("p99_ms"))
        ok = _ok_latencies(all_ms, failed)
        lane_data.append((client, cell, ok, failed, p50, p99))
        values.extend(all_ms)
        values.extend(failed)
        values.extend(v for v in (p50, p99) if v is not None)
    positive = [v for v in values if v > 0]
    if not lanes or not positive:
        return _no_data(chart_id, label)
    floor_ms = 0.01
    lo = max(min(positive), floor_ms)
    hi = max(max(positive), lo)
    lo_dec = math.floor(math.log10(lo))
    hi_dec = math.ceil(math.log10(hi))
    if hi_dec <= lo_dec:
        hi_dec = lo_dec + 1
    top = 30.0
    plot_l, plot_r = _LEFT, _W - 190.0
    height = top + _LANE * len(lanes) + 34.0
    bottom = top + _LANE * len(lanes)

    def x_of(v: float) -> float:
        v = max(v, 10.0**lo_dec)
        frac = (math.log10(v) - lo_dec) / (hi_dec - lo_dec)
        return plot_l + frac * (plot_r - plot_l)

    out = [_svg_open(chart_id, height, label)]
    # legend
    lx = plot_l
    out.append(f'<g font-size="12" fill="#5b6470">'
               f'<circle cx="{_c(lx + 4)}" cy="12" r="3.5" fill="{COLOURS["dot"]}"/>'
               f'<text x="{_c(lx + 12)}" y="16">request</text>'
               f'<path d="M{_c(lx + 78)} 8l8 8m0-8l-8 8" stroke="{COLOURS["error"]}" '
               f'stroke-width="1.8"/><text x="{_c(lx + 92)}" y="16">failed request</text>'
               f'<line x1="{_c(lx + 200)}" y1="5" x2="{_c(lx + 200)}" y2="19" '
               f'stroke="{COLOURS["p50"]}" stroke-width="3"/>'
               f'<text x="{_c(lx + 207)}" y="16">p50</text>'
               f'<line x1="{_c(lx + 245)}" y1="5" x2="{_c(lx + 245)}" y2="19" '
               f'stroke="{COLOURS["p99"]}" stroke-width="3"/>'
               f'<text x="{_c(lx + 252)}" y="16">p99</text>'
               f'<rect x="{_c(lx + 290)}" y="6" width="22" height="12" fill="#1b1f24" '
               f'fill-opacity=".07" stroke="#8a94a0" stroke-width=".8"/>'
               f'<text x="{_c(lx + 318)}" y="16">p50 to p99</text></g>')
    # lanes
    for i, (client, _cell, _ok, _failed, _p50, _p99) in enumerate(lane_data):
        y = top + i * _LANE
        fill = "#f6f7f9" if i % 2 == 0 else "#ffffff"
        out.append(f'<rect x="{_c(plot_l)}" y="{_c(y)}" width="{_c(plot_r - plot_l)}" '
                   f'height="{_c(_LANE)}" fill="{fill}"/>')
        out.append(_lane_label(y, client))
    # grid and axis
    grid, labels = [], []
    for value, labelled in _log_ticks(lo_dec, hi_dec):
        x = x_of(value)
        major = value == 10.0 ** round(math.log10(value))
        grid.append(f'<line x1="{_c(x)}" y1="{_c(top)}" x2="{_c(x)}" y2="{_c(bottom + 4)}" '
                    f'stroke="{"#c3cad3" if major else "#e3e7ec"}" stroke-width="1"/>')
        if labelled:
            labels.append(f'<text x="{_c(x)}" y="{_c(bottom + 18)}" text-anchor="middle" '
                          f'font-size="11.5" fill="#5b6470">{_e(_ms_tick(value))}</text>')
    out.extend(grid)
    out.append(f'<line x1="{_c(plot_l)}" y1="{_c(bottom)}" x2="{_c(plot_r)}" y2="{_c(bottom)}" '
               'stroke="#8a94a0" stroke-width="1"/>')
    out.extend(labels)
    # data
    for i, (client, cell, ok, failed, p50, p99) in enumerate(lane_data):
        y = top + i * _LANE
        mid = y + _LANE / 2
        stats_x = plot_r + 12
        if cell is None:
            out.append(f'<text x="{_c(plot_l + 8)}" y="{_c(mid + 4)}" font-size="12" '
                       'fill="#7a838f">not run</text>')
            continue
        if not ok and not failed:
            out.append(f'<text x="{_c(plot_l + 8)}" y="{_c(mid + 4)}" font-size="12" '
                       'fill="#7a838f">no data</text>')
        if p50 is not None and p99 is not None and p99 > 0:
            x1, x2 = x_of(max(p50, 1e-9)), x_of(p99)
            out.append(f'<rect x="{_c(min(x1, x2))}" y="{_c(y + 5)}" '
                       f'width="{_c(max(abs(x2 - x1), 1.0))}" height="{_c(_LANE - 10)}" '
                       'fill="#1b1f24" fill-opacity=".07" stroke="#8a94a0" stroke-width=".8"/>')
        tip = (f"{_client_label(client)}: {len(ok) + len(failed)} latencies drawn, "
               f"{len(failed)} failed; p50 {_ms(p50)}, p99 {_ms(p99)}")
        out.append(f"<g><title>{_e(tip)}</title>")
        # ok requests as dots (zero-length round-capped segments), jittered across the lane
        dots = _marks_path(((x_of(v), mid + ((j * 0.6180339887) % 1.0 - 0.5) * (_LANE - 12))
                            for j, v in enumerate(ok)), "h0", (0, 0))
        if dots:
            out.append(f'<path d="{dots}" stroke="{COLOURS["dot"]}" stroke-opacity=".6" '
                       'stroke-width="4.5" stroke-linecap="round" fill="none"/>')
        crosses = _marks_path(
            ((x_of(v) - 3, mid - 3 + ((j * 0.6180339887 + 0.3) % 1.0 - 0.5) * (_LANE - 14))
             for j, v in enumerate(failed)), "l6 6m0-6l-6 6", (0, 60))
        if crosses:
            out.append(f'<path d="{crosses}" stroke="{COLOURS["error"]}" '
                       'stroke-width="1.6" fill="none"/>')
        out.append("</g>")
        for mark, colour in ((p50, COLOURS["p50"]), (p99, COLOURS["p99"])):
            if mark is not None:
                xm = x_of(max(mark, 1e-9))
                out.append(f'<line x1="{_c(xm)}" y1="{_c(y + 3)}" x2="{_c(xm)}" '
                           f'y2="{_c(y + _LANE - 3)}" stroke="{colour}" stroke-width="3"/>')
        stats = f"p50 {_ms(p50)} · p99 {_ms(p99)}" if p50 is not None else "no success"
        out.append(f'<text x="{_c(stats_x)}" y="{_c(mid + 4)}" font-size="12" '
                   f'fill="#36404c">{_e(stats)}</text>')
    out.append("</svg>")
    return "".join(out)


def _tenths(n: int) -> str:
    """``n`` tenths as the shortest SVG number: 123 -> "12.3", 5 -> ".5", -20 -> "-2"."""
    sign = "-" if n < 0 else ""
    q, r = divmod(abs(n), 10)
    if r == 0:
        return f"{sign}{q}"
    return f"{sign}{q}.{r}" if q else f"{sign}.{r}"


def _marks_path(points: Iterable[tuple[float, float]], glyph: str,
                glyph_end: tuple[int, int]) -> str:
    """Path data drawing ``glyph`` (relative commands) at each point, to a tenth of a unit.

    Relative moves between the points keep the data short; a point already drawn is skipped.
    ``glyph_end`` is where the glyph leaves the pen, in tenths, relative to where it began."""
    out: list[str] = []
    seen: set[tuple[int, int]] = set()
    pen: tuple[int, int] | None = None
    for x, y in points:
        px, py = round(x * 10), round(y * 10)
        if (px, py) in seen:
            continue
        seen.add((px, py))
        if pen is None:
            out.append(f"M{_tenths(px)} {_tenths(py)}")
        else:
            dx, dy = _tenths(px - pen[0]), _tenths(py - pen[1])
            out.append(f"m{dx}{dy}" if dy.startswith("-") else f"m{dx} {dy}")
        out.append(glyph)
        pen = (px + glyph_end[0], py + glyph_end[1])
    return "".join(out)


def _nice_step(span: float, target: int = 10) -> float:
    raw = span / max(target, 1)
    if raw <= 0:
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def _fault_kind(text: str) -> str:
    words = text.split()
    return words[0] if words else "fault"


def _fault_colour(kind: str) -> str:
    colour = FAULT_COLOURS.get(kind.lower())
    if colour is None:
        colour = _SPARE_COLOURS[sum(kind.encode()) % len(_SPARE_COLOURS)]
    return colour


def _timeline_chart(slug: str, lanes: Sequence[tuple[Mapping[str, Any],
                                                      Mapping[str, Any] | None]]) -> str:
    chart_id = f"timeline-{slug}"
    label = "timeline of injected faults and client errors per client"
    lane_data = []
    end = 0.0
    kinds: dict[str, str] = {}
    any_data = False
    for client, cell in lanes:
        timeline = _map(cell.get("timeline")) if cell is not None else {}
        faults = _events(timeline.get("faults"))
        errors = _events(timeline.get("errors"))
        waves = _numbers(timeline.get("waves"))
        duration = _num(timeline.get("duration_s"))
        for _t, text in faults:
            kind = _fault_kind(text)
            kinds.setdefault(kind, _fault_colour(kind))
        times = [t for t, _ in faults] + [t for t, _ in errors] + waves
        times += [duration] if duration is not None else []
        if times:
            any_data = True
            end = max(end, *times)
        lane_data.append((client, cell, faults, errors, waves, duration))
    if not lanes or not any_data:
        return _no_data(chart_id, label)
    end = max(end, 0.001)
    step = _nice_step(end)
    axis_end = math.ceil(end / step - 1e-9) * step
    plot_l, plot_r = _LEFT, _W - 24.0
    # legend rows: fault kinds, then client error and wave start
    legend_items = [(kind, colour, "fault") for kind, colour in sorted(kinds.items())]
    legend_items += [("client error", COLOURS["error"], "error"), ("wave start", "#6b7683", "wave")]
    legend, lx, ly = [], plot_l, 14.0
    for text, colour, what in legend_items:
        width = 30 + 6.6 * len(text)
        if lx + width > _W - 10 and lx > plot_l:
            lx, ly = plot_l, ly + 18
        if what == "wave":
            legend.append(f'<line x1="{_c(lx + 5)}" y1="{_c(ly - 10)}" x2="{_c(lx + 5)}" '
                          f'y2="{_c(ly + 3)}" stroke="{colour}" stroke-dasharray="3 2"/>')
        else:
            legend.append(f'<rect x="{_c(lx)}" y="{_c(ly - 9)}" width="10" height="10" rx="2" '
                          f'fill="{colour}"/>')
        legend.append(f'<text x="{_c(lx + 15)}" y="{_c(ly)}" font-size="12" '
                      f'fill="#5b6470">{_e(text)}</text>')
        lx += width
    top = ly + 14
    bottom = top + _LANE * len(lanes)
    height = bottom + 34

    def x_of(t: float) -> float:
        return plot_l + min(max(t, 0.0), axis_end) / axis_end * (plot_r - plot_l)

    out = [_svg_open(chart_id, height, label), f'<g>{"".join(legend)}</g>']
    ticks = []
    n_ticks = round(axis_end / step)
    for k in range(n_ticks + 1):
        t = k * step
        x = x_of(t)
        ticks.append(f'<line x1="{_c(x)}" y1="{_c(top)}" x2="{_c(x)}" y2="{_c(bottom + 4)}" '
                     'stroke="#e3e7ec"/>')
        ticks.append(f'<text x="{_c(x)}" y="{_c(bottom + 18)}" text-anchor="middle" '
                     f'font-size="11.5" fill="#5b6470">{t:g} s</text>')
    for i, (client, cell, faults, errors, waves, duration) in enumerate(lane_data):
        y = top + i * _LANE
        mid = y + _LANE / 2
        out.append(_lane_label(y, client))
        out.append(f'<rect x="{_c(plot_l)}" y="{_c(y + 2)}" width="{_c(plot_r - plot_l)}" '
                   f'height="{_c(_LANE - 4)}" fill="#fafbfc"/>')
        if cell is None:
            out.append(f'<text x="{_c(plot_l + 8)}" y="{_c(mid + 4)}" font-size="12" '
                       'fill="#7a838f">not run</text>')
            continue
        span_end = duration if duration is not None else max(
            [t for t, _ in faults] + [t for t, _ in errors] + waves, default=0.0)
        out.append(f'<rect x="{_c(plot_l)}" y="{_c(y + 2)}" '
                   f'width="{_c(max(x_of(span_end) - plot_l, 0.5))}" height="{_c(_LANE - 4)}" '
                   'fill="#eef1f5"/>')
        out.append(f'<line x1="{_c(plot_l)}" y1="{_c(mid)}" x2="{_c(x_of(span_end))}" '
                   f'y2="{_c(mid)}" stroke="#c3cad3"/>')
        for t in waves:
            out.append(f'<line x1="{_c(x_of(t))}" y1="{_c(y + 2)}" x2="{_c(x_of(t))}" '
                       f'y2="{_c(y + _LANE - 2)}" stroke="#6b7683" stroke-width="1.3" '
                       'stroke-dasharray="3 2"/>')
        # one path per fault kind, ticks in the upper half; errors below; whole units (a
        # stroke is 2 wide) so hundreds of events stay a few kilobytes
        tick = int(_LANE / 2 - 5)
        by_kind: dict[str, list[float]] = {}
        for t, text in faults:
            by_kind.setdefault(_fault_kind(text), []).append(round(x_of(t)))
        for kind, xs in by_kind.items():
            d = _marks_path(((x, y + 4) for x in sorted(xs)), f"v{tick}", (0, tick * 10))
            out.append(f'<path d="{d}" stroke="{kinds[kind]}" stroke-width="2" fill="none"/>')
        if errors:
            d = _marks_path(((x, mid + 1) for x in sorted(round(x_of(t)) for t, _ in errors)),
                            f"v{tick}", (0, tick * 10))
            out.append(f'<path d="{d}" stroke="{COLOURS["error"]}" stroke-width="2" '
                       'fill="none"/>')
        if not faults and not errors:
            out.append(f'<text x="{_c(plot_l + 8)}" y="{_c(mid - 3)}" font-size="11" '
                       'fill="#7a838f">no fault injected, no error</text>')
        fault_counts = Counter(text for _t, text in faults)
        summary = "; ".join(f"{n}{_TIMES} {text}" for text, n in fault_counts.most_common(6))
        tip = (f"{_client_label(client)}: {len(faults)} faults injected"
               + (f" ({summary})" if summary else "")
               + f", {len(errors)} client errors, {len(waves)} waves, "
               f"{_seconds(duration)}")
        out.append(f'<rect x="{_c(plot_l)}" y="{_c(y)}" width="{_c(plot_r - plot_l)}" '
                   f'height="{_c(_LANE)}" fill="transparent"><title>{_e(tip)}</title></rect>')
    out.extend(ticks)
    out.append(f'<line x1="{_c(plot_l)}" y1="{_c(bottom)}" x2="{_c(plot_r)}" y2="{_c(bottom)}" '
               'stroke="#8a94a0"/>')
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------


def _footer(result: Mapping[str, Any]) -> str:
    version = _text(result.get("version")) or "unknown format"
    return (
        "<footer>\n<dl>"
        "<dt>success</dt><dd>2xx responses / logical requests. A logical request is one call "
        "the program made; the retries a client does on its own do not count again.</dd>"
        "<dt>duplicates</dt><dd>logical POSTs the server applied more than once, counted from "
        "the server's side-effect ledger (not from what the client believes).</dd>"
        "<dt>attempts</dt><dd>request arrivals the server saw per logical request: 1.00 means "
        "no request was sent twice, more means retries reached the server.</dd>"
        "<dt>p50 / p99</dt><dd>latency of the successful requests, start of the logical request "
        "to its response, retries included.</dd>"
        "<dt>throughput</dt><dd>successful requests per second the client was busy.</dd>"
        "<dt>colours</dt><dd>green: 100% and no duplicate; amber: at least 95%; red: below; "
        "magenta frame: a duplicate side effect, whatever the success rate.</dd>"
        "</dl>\n"
        f"<p>Generated by <code>h2guard bench</code> ({_e(version)}). This page is self-contained "
        "and works offline.</p>\n</footer>")
