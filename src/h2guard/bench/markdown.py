"""The bench result as the README's scoreboard: a Markdown table, the clients that did not run,
where the figures come from, and the verdict.

:func:`render_markdown` is pure (the same result gives the same text, byte for byte), so
``scripts/scoreboard_readme.py --check`` can tell whether README.md is current;
:func:`replace_section` puts that text between the README's two markers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from h2guard.bench.html import cell_outcome, percent, success_rate

__all__ = ["MARK_END", "MARK_START", "MarkersMissing", "render_markdown", "replace_section"]

MARK_START = "<!-- scoreboard:start -->"
MARK_END = "<!-- scoreboard:end -->"

MARKS = {"ok": "✅", "warn": "⚠️", "bad": "❌"}


class MarkersMissing(ValueError):
    """The README does not have exactly one start marker followed by one end marker."""


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return int(value) if math.isfinite(value) else 0


def _maps(value: object) -> list[Mapping[str, Any]]:
    if not isinstance(value, list | tuple):
        return []
    return [item for item in value if isinstance(item, Mapping)]


def _md(text: object) -> str:
    """Inline Markdown text that renders as written: one line, table-safe, no HTML."""
    flat = " ".join(_text(text).split())
    flat = flat.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    flat = re.sub(r"([\\`*\[\]|#~])", r"\\\1", flat)
    # an underscore inside a word (x86_64, max_age) is never emphasis: leave it readable
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", flat)


def _machine(result: Mapping[str, Any]) -> str:
    machine = result.get("machine")
    if not isinstance(machine, Mapping):
        return "an unknown machine"
    python = " ".join(x for x in (_text(machine.get("implementation")) or "Python",
                                  _text(machine.get("python"))) if x)
    bits = [python]
    if machine.get("platform"):
        bits.append(f"on {_text(machine.get('platform'))}")
    cpus = machine.get("cpus")
    if isinstance(cpus, int) and not isinstance(cpus, bool):
        bits.append(f"({cpus} CPU{'' if cpus == 1 else 's'})")
    return " ".join(bits)


def _cell(cell: Mapping[str, Any] | None) -> str:
    if cell is None:
        return "—"
    dups = _int(cell.get("duplicates"))
    # a POST applied twice is the worst outcome, whatever the success rate
    mark = MARKS["bad"] if dups > 0 else MARKS[cell_outcome(cell)]
    text = f"{mark} {percent(success_rate(cell))}"
    if dups > 0:
        text += f" · **{dups} dup**"
    if _text(cell.get("problem")):
        text += " †"
    return text


def render_markdown(result: Mapping[str, Any]) -> str:
    """The scoreboard section of the README (without the markers), ending in a newline."""
    scenarios = [s for s in _maps(result.get("scenarios")) if _text(s.get("name"))]
    clients = [c for c in _maps(result.get("clients")) if _text(c.get("name"))]
    cells = {(_text(c.get("client")), _text(c.get("scenario"))): c
             for c in _maps(result.get("cells"))}
    running = [c for c in clients if c.get("available") is not False]
    missing = [c for c in clients if c.get("available") is False]
    lines: list[str] = []
    if running and scenarios:
        lines.append("| client | " + " | ".join(f"`{_text(s.get('name')).replace('`', '')}`"
                                                for s in scenarios) + " |")
        lines.append("| --- |" + " :-: |" * len(scenarios))
        for client in running:
            name = _text(client.get("name"))
            label = _md(_text(client.get("title")) or name)
            language = _text(client.get("language"))
            if language:
                label += f" ({_md(language)})"
            row = [_cell(cells.get((name, _text(s.get("name"))))) for s in scenarios]
            lines.append(f"| {label} | " + " | ".join(row) + " |")
        lines.append("")
        lines.append("✅ every request succeeded, nothing applied twice · ⚠️ at least 95% "
                     "succeeded · ❌ below 95%, or **dup**: POSTs the server's ledger applied "
                     "more than once (the worst outcome) · — not run")
    else:
        lines.append("_No client ran: this result has no cells._")
    problems = []
    for client in running:
        for scenario in scenarios:
            cell = cells.get((_text(client.get("name")), _text(scenario.get("name"))))
            if cell is not None and _text(cell.get("problem")):
                problems.append(f"{_md(_text(client.get('title')) or client.get('name'))} in "
                                f"`{_text(scenario.get('name')).replace('`', '')}`: "
                                f"{_md(cell.get('problem'))}")
    if problems:
        lines.append("")
        lines.extend(f"† {p}" + ("  " if i < len(problems) - 1 else "")
                     for i, p in enumerate(problems))
    if missing:
        lines.append("")
        lines.append("Not run here (not installed on the machine that ran the bench):")
        lines.append("")
        for client in missing:
            title = _md(_text(client.get("title")) or client.get("name"))
            reason = _md(_text(client.get("reason")) or "not available")
            lines.append(f"- {title}: {reason}")
    command = "h2guard bench --quick --json" if result.get("quick") else "h2guard bench --json"
    created = _md(_text(result.get("created")) or "an unknown date")
    lines.append("")
    lines.append(f"generated by scripts/scoreboard_readme.py from `{command}` on {created}, "
                 f"{_md(_machine(result))}")
    verdict = _text(result.get("verdict")).strip()
    if verdict:
        lines.append("")
        lines.append(_md(verdict))
    return "\n".join(lines) + "\n"


def replace_section(readme: str, section: str) -> str:
    """``readme`` with everything between the two markers replaced by ``section``.

    The markers stay; the text outside them is kept byte for byte. Raises
    :class:`MarkersMissing` unless there is exactly one start marker, then one end marker."""
    starts, ends = readme.count(MARK_START), readme.count(MARK_END)
    if starts != 1 or ends != 1:
        raise MarkersMissing(
            f"expected one {MARK_START!r} and one {MARK_END!r} line, found {starts} and {ends}")
    head, rest = readme.split(MARK_START, 1)
    if MARK_END not in rest:
        raise MarkersMissing(f"{MARK_END!r} comes before {MARK_START!r}")
    _old, tail = rest.split(MARK_END, 1)
    body = section if section.endswith("\n") else section + "\n"
    return f"{head}{MARK_START}\n{body}{MARK_END}{tail}"
